"""Keyed counters (workers/keyed.py, pipeline/keyedstate.py): the compiled table and its numpy twin leave the
same counts, figures and overflow as a dict of the same elements would; collisions and a full table are
exact; the merge over workers sums per key and ranks the top keys; teardown(ctx)'s dict is merged."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.layout import KEYED_FILL_DEN, KEYED_FILL_NUM
from ixypipe.pipeline import keyedstate
from ixypipe.workers import keyed, keyed_jit
from ixypipe.workers.api import Batch, WorkerContext, merge_state
from ixypipe.workers.keyed import KeyedError, KeyedTables, fill_limit, first_slots, private_block

KINDS = [False, pytest.param(True, marks=pytest.mark.skipif(not keyed_jit.AVAILABLE, reason="numba not installed"))]


def reference(batches, limit: int) -> tuple[dict[int, int], dict[str, int]]:
    """What a table must hold after ``batches`` of (keys, amounts), element by element, with a dict."""
    held: dict[int, int] = {}
    stats = dict.fromkeys(("used", "updates", "total", "overflow_updates", "overflow_amount"), 0)
    for keys, amounts in batches:
        for k, a in zip(keys.tolist(), amounts.tolist(), strict=True):
            if a == 0:
                continue
            stats["updates"] += 1
            stats["total"] += a
            if k in held:
                held[k] += a
            elif len(held) < limit:
                held[k] = a
            else:
                stats["overflow_updates"] += 1
                stats["overflow_amount"] += a
    stats["used"] = len(held)
    return held, stats


def content(tables: KeyedTables, name: str) -> tuple[dict[int, int], dict[str, int]]:
    (t,) = [t for t in tables.read() if t.name == name]
    return dict(zip(t.keys.tolist(), t.values.tolist(), strict=True)), t.stats


@pytest.mark.parametrize("compiled", KINDS)
@pytest.mark.parametrize("slots, spread, overflows", [(1024, 400, False), (1024, 5000, True),
                                                       (1 << 16, 1 << 40, False)])
def test_the_table_holds_what_a_dict_holds_and_counts_the_overflow(compiled, slots, spread, overflows):
    rng = np.random.default_rng(slots + spread)
    batches = [(rng.integers(0, spread, int(n), dtype=np.uint64), rng.integers(0, 4, int(n)).astype(np.uint64))
               for n in rng.integers(1, 300, 60)]
    t = KeyedTables(private_block(1, slots), compiled=compiled)
    for keys, amounts in batches:
        t.count_by("k", keys, amounts)
    held, stats = content(t, "k")
    want_held, want_stats = reference(batches, fill_limit(slots))
    assert held == want_held
    assert stats == want_stats
    assert (stats["overflow_updates"] > 0) == overflows
    if overflows:
        assert stats["used"] == slots * KEYED_FILL_NUM // KEYED_FILL_DEN


@pytest.mark.skipif(not keyed_jit.AVAILABLE, reason="numba not installed")
def test_compiled_and_numpy_tables_agree_key_for_key_and_figure_for_figure():
    rng = np.random.default_rng(7)
    a = KeyedTables(private_block(2, 4096), compiled=True)
    b = KeyedTables(private_block(2, 4096), compiled=False)
    assert a.compiled and not b.compiled
    for _ in range(200):
        n = int(rng.integers(1, 100))
        keys = rng.integers(0, 10_000, n).astype(np.uint32)           # more keys than fit: overflow on both
        amounts = rng.integers(0, 1500, n)
        for t in (a, b):
            t.count_by("src", keys, amounts)
            t.count_by("packets", keys)
    for name in ("src", "packets"):
        assert content(a, name) == content(b, name)
        assert content(a, name)[1]["overflow_updates"] > 0


@pytest.mark.parametrize("compiled", KINDS)
def test_colliding_keys_probe_on_and_keep_their_own_counts(compiled):
    slots = 1024
    shift = np.uint64(64 - 10)
    candidates = np.arange(200_000, dtype=np.uint64)
    home = first_slots(candidates, shift)
    same = candidates[home == home[0]][:6]                  # six keys whose probes start at one slot
    assert len(same) == 6
    t = KeyedTables(private_block(1, slots), compiled=compiled)
    t.count_by("c", same, np.arange(1, 7))
    t.count_by("c", same[::-1], 10)
    t.count_by("c", same[2:3], 100)
    held, stats = content(t, "c")
    assert held == {int(k): i + 1 + 10 + (100 if i == 2 else 0) for i, k in enumerate(same)}
    assert stats["used"] == 6 and stats["updates"] == 13 and stats["overflow_updates"] == 0
    slots_used = np.flatnonzero(t.values[0])
    assert sorted(slots_used.tolist()) == [(int(home[0]) + i) % slots for i in range(6)]    # a run of six


@pytest.mark.parametrize("compiled", KINDS)
def test_a_full_table_counts_new_keys_as_overflow_and_old_ones_still_count(compiled):
    t = KeyedTables(private_block(1, 1024), compiled=compiled)
    limit = fill_limit(1024)
    t.count_by("f", np.arange(limit + 10), 2)               # ten do not fit
    t.count_by("f", np.array([0, limit + 5, 1]), 5)        # two old ones count, the new one overflows
    held, stats = content(t, "f")
    assert len(held) == limit and held[0] == 7 and held[1] == 7 and limit + 5 not in held
    assert stats == {"used": limit, "updates": limit + 13, "total": 2 * (limit + 10) + 15,
                     "overflow_updates": 11, "overflow_amount": 25}


def test_keys_and_amounts_are_checked_with_a_clear_error():
    t = KeyedTables(private_block(1, 1024))
    with pytest.raises(KeyedError, match=r"one integer per element .* got float64 of shape \(2,\)"):
        t.count_by("x", np.array([1.0, 2.0]))
    with pytest.raises(KeyedError, match=r"got uint8 of shape \(2, 16\)"):
        t.count_by("x", np.zeros((2, 16), np.uint8))
    with pytest.raises(KeyedError, match="amounts cannot be negative, got -3 for key 1"):
        t.count_by("x", [5, 6], np.array([1, -3]))
    with pytest.raises(KeyedError, match=r"one integer amount per key \(2\)"):
        t.count_by("x", [5, 6], [1, 2, 3])
    with pytest.raises(KeyedError, match="non-empty string"):
        t.count_by("", [5])
    t.count_by("x", np.array([-1], np.int8))                 # a signed key: its 64-bit two's complement
    assert content(t, "x")[0] == {2**64 - 1: 1}


def test_a_table_past_the_limit_is_refused_with_one_warning_and_counted(caplog):
    t = KeyedTables(private_block(2, 1024))
    t.count_by("a", [1])
    t.count_by("b", [1])
    t.count_by("c", [1])
    t.count_by("d", [1])
    assert [s.name for s in t.read()] == ["a", "b"]
    assert int(t.refused[0]) == 2
    assert sum("keyed table 'c' would be number 3: a worker has 2 (workers.keyed_tables)" in r.message
               for r in caplog.records) == 1


def test_a_process_taking_a_block_over_carries_on_with_its_tables():
    block = private_block(2, 1024)
    KeyedTables(block).count_by("src", [7, 8], [1, 2])
    again = KeyedTables(block)                               # a restarted worker attaches to its row's block
    again.count_by("src", [8], 5)
    assert content(again, "src")[0] == {7: 1, 8: 7}


def test_the_merge_sums_per_key_over_workers_and_ranks_the_top():
    a, b = KeyedTables(private_block(2, 1024)), KeyedTables(private_block(2, 1024))
    a.count_by("src", [1, 2, 3, 4], [5, 1, 9, 2])
    b.count_by("src", [2, 3, 5], [8, 1, 3])
    b.count_by("dst", [9])
    m = keyedstate.merge({"worker-0": a.read(), "worker-1": b.read()}, 1024, n=3)
    assert list(m) == ["src", "dst"]
    src = m["src"]
    assert src.keys == 5 and src.stats["total"] == 29 and src.stats["updates"] == 7
    assert src.top == [(3, 10), (2, 9), (1, 5)]
    assert src.workers["worker-1"]["used"] == 3
    assert keyedstate.top(np.array([4, 2, 3], np.uint64), np.array([7, 7, 7], np.uint64), 2) == [(2, 7), (3, 7)]
    doc = keyedstate.as_json(m)["src"]
    assert doc["type"] == "keyed_table" and doc["kind"] == "int" and doc["capacity"] == 768
    assert doc["top"][0] == {"key": 3, "key_text": "3", "amount": 10}
    lines = keyedstate.text_lines(keyedstate.as_json(m), 2)
    assert lines[0] == "keyed src: 5 keys, 7 updates, total 29, overflow 0"
    assert lines[1] == "  top: 3 10, 2 9"


def test_batch_count_by_outside_a_pipeline_counts_parsed_addresses():
    from tests.test_keyed_run import frame

    frames = [frame(0x0A000001 + i % 3, 0x0B000001, 1000, 53, 60 + i) for i in range(10)]
    batch = Batch.from_frames(frames)
    v4 = batch.ipv4
    batch.count_by("src", v4.src[v4.valid], batch.lengths[v4.valid])
    (t,) = batch.keyed_tables().read()
    got = dict(zip(t.keys.tolist(), t.values.tolist(), strict=True))
    assert got == {0x0A000001: 60 + 63 + 66 + 69, 0x0A000002: 61 + 64 + 67, 0x0A000003: 62 + 65 + 68}


def test_teardown_state_is_merged_into_counters_and_tables():
    ctx = WorkerContext(0, 1, ["a", "b"])
    merge_state(ctx, {"sessions": 3, "per_port": {53: 4, 80: 1}})
    merge_state(ctx, None)
    assert ctx.counters == {"sessions": 3}
    assert content(ctx.keyed_tables(), "per_port")[0] == {53: 4, 80: 1}
    with pytest.raises(KeyedError, match="returned 'bad': str"):
        merge_state(ctx, {"bad": "x"})
    with pytest.raises(KeyedError, match="got list"):
        merge_state(ctx, [1])


def test_warm_up_and_refusing_tables():
    keyed.warm_up()
    t = keyed.refusing()
    t.count_by("x", [1])
    assert t.read() == [] and int(t.refused[0]) == 1


def test_metrics_show_each_tables_figures_and_its_top_keys_as_bounded_series():
    import dataclasses

    from prometheus_client.parser import text_string_to_metric_families

    from ixypipe.pipeline.metrics import _LatestSnapshot
    from tests.test_metrics import CollectorRegistry, generate_latest, snapshot

    a, b = KeyedTables(private_block(1, 1024)), KeyedTables(private_block(1, 1024))
    a.count_by("src", 0x0A000000 + np.arange(30), np.arange(1, 31), kind="ipv4")   # 30 keys: TOP_N series
    b.count_by("src", 0x0A000000 + np.array([0, 1]), 100, kind="ipv4")
    snap = snapshot()
    snap = dataclasses.replace(snap, figures=dataclasses.replace(
        snap.figures, keyed=keyedstate.merge({"worker-0": a.read(), "worker-1": b.read()}, 1024)))
    collector = _LatestSnapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    collector.latest = snap
    m = {}
    for f in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in f.samples:
            assert s.labels.pop("pipeline") == "fwd"
            m.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    assert m["ixypipe_keyed_keys"] == {(("table", "src"),): 30}
    assert m["ixypipe_keyed_updates_total"] == {(("table", "src"),): 32}
    assert m["ixypipe_keyed_amount_total"] == {(("table", "src"),): sum(range(1, 31)) + 200}
    assert m["ixypipe_keyed_overflow_updates_total"] == {(("table", "src"),): 0}
    top = m["ixypipe_keyed_top_amount"]
    assert len(top) == keyedstate.TOP_N
    assert top[(("key", "10.0.0.1"), ("rank", "1"), ("table", "src"))] == 102
    assert top[(("key", "10.0.0.0"), ("rank", "2"), ("table", "src"))] == 101
    assert top[(("key", "10.0.0.29"), ("rank", "3"), ("table", "src"))] == 30


def test_a_tables_kind_says_how_its_keys_are_shown():
    assert [keyed.key_text(0x0A000102, k) for k in ("int", "ipv4", "hex")] == ["167772418", "10.0.1.2", "0xa000102"]
    assert keyed.key_text(0x020000000001, "mac") == "02:00:00:00:00:01"
    t = KeyedTables(private_block(2, 1024))
    t.count_by("mac", [0x020000000001], kind="mac")
    t.count_by("mac", [0x020000000001], kind="ipv4")          # the first call's kind stays
    assert [(s.name, s.kind) for s in t.read()] == [("mac", "mac")]
    with pytest.raises(KeyedError, match="kind is one of int, ipv4, mac, hex .* got 'ip'"):
        t.count_by("x", [1], kind="ip")
    m = keyedstate.merge({"w": t.read()}, 1024)
    assert keyedstate.text_lines(keyedstate.as_json(m))[1] == "  top: 02:00:00:00:00:01 2"


def test_stats_intervals_show_the_merged_tables_in_text_and_json():
    import io
    import json

    from ixypipe.layout import STAGE_ROW_DTYPE
    from ixypipe.pipeline.report import StatsPrinter
    from tests.test_stats_lines import plan

    a = KeyedTables(private_block(1, 1024))
    a.count_by("src", 0x0A000000 + np.array([1, 1, 2, 3, 4]), kind="ipv4")
    tables = {}
    p = plan()
    table = np.zeros(len(p.stages), STAGE_ROW_DTYPE)
    for json_lines in (False, True):
        out = io.StringIO()
        printer = StatsPrinter(p, table, {}, out, json_lines=json_lines, keyed=lambda: tables)
        printer.interval(1.0)                    # nothing counted yet: no keyed line, no key
        tables.update(keyedstate.merge({"worker-0": a.read()}, 1024))
        printer.interval(2.0)
        first, second = out.getvalue().split("stages: ")[1:] if not json_lines else out.getvalue().splitlines()
        if json_lines:
            assert "keyed_counters" not in json.loads(first)
            assert json.loads(second)["keyed_counters"]["src"]["top"][0] == {"key": 0x0A000001,
                                                                            "key_text": "10.0.0.1", "amount": 2}
        else:
            assert "keyed" not in first
            assert second.splitlines()[1:] == ["keyed src: 4 keys, 5 updates, total 5, overflow 0",
                                               "  top: 10.0.0.1 2, 10.0.0.2 1, 10.0.0.3 1"]
        tables.clear()


PIPELINE = ('[[ports]]\nname = "a"\ndriver = "sim"\nforward_to = "b"\n[[ports]]\nname = "b"\ndriver = "sim"\n'
            'forward_to = "a"\n[workers]\nprocesses = 2\n')


def test_keyed_sizes_are_read_and_bounded_with_errors_naming_the_keys(tmp_path):
    from ixypipe.pipeline.config import ConfigError, check_keyed_fits, parse_pipeline
    from ixypipe.pipeline.plan import plan_from_config

    cfg = parse_pipeline(PIPELINE, tmp_path / "k.toml")
    assert (cfg.workers.keyed_tables, cfg.workers.keyed_slots) == (keyed.DEFAULT_TABLES, keyed.DEFAULT_SLOTS)
    cfg = parse_pipeline(PIPELINE + "keyed_tables = 2\nkeyed_slots = 2048\n", tmp_path / "k.toml")
    plan = plan_from_config(cfg)
    assert (plan.keyed_tables, plan.keyed_slots) == (2, 2048)
    with pytest.raises(ConfigError, match=r"workers.keyed_slots \(line 11\): must be a power of two from 1024 to "
                                          r"67108864, got 3000"):
        parse_pipeline(PIPELINE + "keyed_slots = 3000\n", tmp_path / "k.toml")
    with pytest.raises(ConfigError, match=r"workers.keyed_slots \(line 12\): 64 tables \(workers.keyed_tables\) "
                                          r"of 67108864 slots of 16 bytes take 65,536 MiB per worker, more than "
                                          r"the 1,024 MiB allowed: fewer tables or slots"):
        parse_pipeline(PIPELINE + "keyed_tables = 64\nkeyed_slots = 67108864\n", tmp_path / "k.toml")
    big = parse_pipeline(PIPELINE + "keyed_tables = 16\nkeyed_slots = 4194304\n", tmp_path / "k.toml")
    with pytest.raises(ConfigError, match=r"workers.keyed_slots.*2 workers x 16 keyed tables \(workers.keyed_tables\) "
                                          r"of 4194304 slots need 2,048 MiB of /dev/shm, which has 1,000 MiB free"):
        check_keyed_fits(big, plan_from_config(big), shm_free=1000 << 20)
    check_keyed_fits(big, plan_from_config(big), shm_free=3000 << 20)
    none = parse_pipeline(PIPELINE + "keyed_tables = 0\n", tmp_path / "k.toml")
    check_keyed_fits(none, plan_from_config(none), shm_free=0)        # no region: nothing to fit
