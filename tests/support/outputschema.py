"""Checking ``--json`` output against docs/schema/ixypipe-output.schema.json with the jsonschema library."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator

SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "docs" / "schema" / "ixypipe-output.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(doc: dict) -> list[str]:
    """Where ``doc`` breaks the schema ("ports/p0: 'rx_pps' is a required property"), [] when it fits."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
            for e in sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def validated(stdout: str) -> list[dict]:
    """Every line of ``stdout`` as a JSON object that fits the schema (an AssertionError names the first that
    does not, or a line that is not JSON: with --json, stdout holds nothing else)."""
    docs = []
    for n, line in enumerate(stdout.splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {n} of --json output is not JSON: {line!r}") from None
        found = problems(doc)
        assert not found, f"line {n} ({doc.get('type')!r}) breaks the schema: {found}\n{line[:2000]}"
        docs.append(doc)
    return docs
