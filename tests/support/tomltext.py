"""Writing TOML text from a document (tests that build pipeline files from dicts and mutate them)."""

from __future__ import annotations

import json
import math
import re

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(text: str) -> str:
    """A basic string: JSON's escapes are TOML's, and DEL (which JSON leaves raw, TOML refuses) is escaped too."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def is_table_array(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def to_toml(table: dict, path: tuple[str, ...] = (), array: bool = False, out: list[str] | None = None) -> str:
    """A TOML writer for the documents below: tables as [headers], arrays of tables as [[headers]]."""
    out = [] if out is None else out
    if path:
        name = ".".join(toml_key(k) for k in path)
        out.append(f"[[{name}]]" if array else f"[{name}]")
    for k, v in table.items():
        if not (isinstance(v, dict) or is_table_array(v)):
            out.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in table.items():
        if isinstance(v, dict):
            to_toml(v, (*path, k), False, out)
        elif is_table_array(v):
            for element in v:
                to_toml(element, (*path, k), True, out)
    return "\n".join(out) + "\n"
