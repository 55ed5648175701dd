"""The key table (pipeline/keys.py) drives the reference, the choices, the defaults and the allowed keys."""

from pathlib import Path

import pytest

from ixypipe.pipeline import keys
from ixypipe.pipeline.config import ConfigError, parse_pipeline
from ixypipe.pipeline.keydoc import render

REPO = Path(__file__).resolve().parent.parent
BASE = {"pipeline": {}, "ports": [{"name": "p0", "driver": "sim", "generator": {}, "sink": {}},
                                  {"name": "p1", "driver": "af_packet", "interface": "veth0"}],
        "workers": {}, "stats": {}}


def test_the_committed_reference_is_the_generated_one():
    committed = (REPO / "docs" / "pipeline-file.md").read_text()
    assert committed == render(), "run: python -m ixypipe.pipeline.keydoc > docs/pipeline-file.md"


def toml_of(doc: dict) -> str:
    from tests.support.tomltext import to_toml
    return to_toml(doc)


def with_value(path: str, value) -> dict:
    """BASE with ``value`` at the row's ``path`` (a port key on the first port that takes it)."""
    import copy
    doc = copy.deepcopy(BASE)
    parts = path.split(".")
    if parts[0] == "ports":
        row = keys.row(path)
        i = 1 if row.drivers and "sim" not in row.drivers else 0
        table = doc["ports"][i]
        for part in parts[1:-1]:
            table = table[part]
        table[parts[-1]] = value
    else:
        doc[parts[0]][parts[1]] = value
    return doc


CHOICE_ROWS = [k for k in keys.KEYS if k.choices]


@pytest.mark.parametrize("row", CHOICE_ROWS, ids=[k.path for k in CHOICE_ROWS])
def test_a_value_outside_a_rows_choices_is_refused_naming_them(row, tmp_path):
    if row.drivers == ("pcap",):
        pytest.skip("a pcap port needs a capture file; tests/bad_pipelines covers its mode")
    with pytest.raises(ConfigError) as err:
        parse_pipeline(toml_of(with_value(row.path, "bogus")), tmp_path / "p.toml")
    allowed = ", ".join(repr(c) for c in row.choices)
    assert f"must be one of {allowed}, got 'bogus'" in str(err.value), str(err.value)


DEFAULT_ROWS = [k for k in keys.KEYS if k.default is not None and k.type not in (keys.TABLE, keys.TABLES)
                and k.drivers != ("pcap",)]


@pytest.mark.parametrize("row", DEFAULT_ROWS, ids=[k.path for k in DEFAULT_ROWS])
def test_a_rows_default_is_what_a_file_without_the_key_gets(row, tmp_path):
    """Giving the row's default explicitly parses to the same pipeline as leaving the key out."""
    bare = parse_pipeline(toml_of(BASE), tmp_path / "p.toml")
    given = parse_pipeline(toml_of(with_value(row.path, row.default)), tmp_path / "p.toml")
    assert given == bare
    other = parse_pipeline(toml_of(with_value(row.path, other_value(row))), tmp_path / "p.toml")
    assert other != bare, f"{row.path} = {other_value(row)!r} changed nothing"


def other_value(row: keys.Key):
    """A valid value other than the row's default."""
    if row.type == keys.BOOLEAN:
        return not row.default
    if row.choices:
        return next(c for c in row.choices if c != row.default)
    if row.type == keys.STRING:
        return "10.0.0.1" if row.path == "stats.metrics_address" else "touch"
    lo, hi = row.range
    if row.power_of_two:
        return row.default * 2 if row.default * 2 <= hi else row.default // 2
    value = row.default + 1 if row.default + 1 <= hi else lo
    return float(value) if row.type == keys.NUMBER else value


def test_unknown_keys_list_the_rows_of_their_table(tmp_path):
    for path, where in (("pipeline.speed", "pipeline.speed"), ("workers.speed", "workers.speed"),
                        ("stats.speed", "stats.speed")):
        with pytest.raises(ConfigError) as err:
            parse_pipeline(toml_of(with_value(path, 1)), tmp_path / "p.toml")
        table = path.split(".")[0]
        assert f"{where} (line" in str(err.value)
        assert str(err.value).endswith("unknown key; allowed keys: " + ", ".join(keys.names(table)))
