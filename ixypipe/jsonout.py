"""The one shape of every ``--json`` object: JSON Lines, each object with ``type`` and ``time``.

Every command that prints JSON builds its objects with :func:`json_object`
(or prints them with :func:`json_line`), so each one says what it is
(``type``, described in docs/schema/ixypipe-output.schema.json) and when it
was made (``time``: Unix time in seconds, a float), and goes out as one line.
The other conventions (ports and stages as objects keyed by name, worker
counters as ``counters``, seconds since the start as ``elapsed``) are
written down in docs/json.md.
"""

from __future__ import annotations

import json
import time


def json_object(kind: str, **fields) -> dict:
    """``{"type": kind, "time": <now>, **fields}``."""
    return {"type": kind, "time": round(time.time(), 6), **fields}


def json_line(obj: dict) -> str:
    """``obj`` as one line of JSON, stamped with ``time`` (now) when it has none; ``type`` must be there."""
    if "type" not in obj:
        raise ValueError(f"a JSON output object needs a 'type': {sorted(obj)}")
    if "time" not in obj:
        obj = {"type": obj["type"], "time": round(time.time(), 6), **obj}
    return json.dumps(obj)
