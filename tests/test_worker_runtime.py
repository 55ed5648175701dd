"""What the worker stage adds around a worker: named counters without silent limits, errors logged once per
kind, checking a worker without importing it, setup/teardown and classes, and all of it in a running pipeline.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ixypipe.layout import STAGE_COUNTER_NAMES_SIZE, STAGE_COUNTERS_MAX
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.stages import ErrorLog, verdicts
from ixypipe.workers import api
from ixypipe.workers.api import DROP, CounterLimitError, WorkerContext, WorkerResultError, add_count
from ixypipe.workers.loader import WorkerLoadError, check_worker, load

REPO = Path(__file__).resolve().parent.parent


# ---- counters -------------------------------------------------------------------------------------
def test_a_thousand_counters_with_long_names_are_published_whole(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    stagetable.create(arena, 3)
    writer = stagetable.CounterWriter(arena, 1)
    counters: dict[str, int] = {}
    names = [f"tcp flow 10.0.0.{k % 256}:{k} -> 192.168.0.1:443 bytes" for k in range(STAGE_COUNTERS_MAX // 2)]
    for k, name in enumerate(names):
        add_count(counters, name, k)
    writer.publish(counters)
    add_count(counters, "ICMP bytes from 10.0.0.1", 98)
    add_count(counters, "ICMP bytes from 10.0.0.2", 196)     # equal for 16 bytes: two counters all the same
    writer.publish(counters)
    blocks = stagetable.counter_blocks(arena)
    got = stagetable.read_counters(blocks[1])
    assert got == counters and list(got) == list(counters) and len(got) == STAGE_COUNTERS_MAX // 2 + 2
    assert stagetable.read_counters(blocks[0]) == {} == stagetable.read_counters(blocks[2])
    add_count(counters, names[3], 1000)
    writer.publish(counters)
    assert stagetable.read_counters(blocks[1])[names[3]] == 1003


def test_counters_past_the_limits_are_refused_with_one_warning_naming_the_limit(monkeypatch, caplog):
    monkeypatch.setattr(api, "_refused", [0])              # this process's refusals start from none
    counters: dict[str, int] = {}
    for k in range(STAGE_COUNTERS_MAX):
        add_count(counters, f"c{k}", 1)
    add_count(counters, "one more", 1)                      # refused, never raised: the batch goes on
    add_count(counters, "and another", 5)
    assert len(counters) == STAGE_COUNTERS_MAX and "one more" not in counters and "and another" not in counters
    assert [r.getMessage() for r in caplog.records] == [
        f"counter 'one more' would be number {STAGE_COUNTERS_MAX + 1}: a worker has at most {STAGE_COUNTERS_MAX} "
        "named counters (layout.STAGE_COUNTERS_MAX); this and every further new counter name is refused "
        "(counted at the end), the packets go on"]
    assert api.refused_counts() == 2
    add_count(counters, "c5", 1)                              # existing names still count
    assert counters["c5"] == 2
    long_names: dict[str, int] = {}
    for k in range(STAGE_COUNTERS_MAX):
        add_count(long_names, f"{k:04d}" + "x" * 200, 1)
    assert sum(len(n.encode()) + 1 for n in long_names) <= STAGE_COUNTER_NAMES_SIZE < \
        sum(len(n.encode()) + 1 for n in long_names) + 205
    assert api.refused_counts() == 2 + STAGE_COUNTERS_MAX - len(long_names)
    assert len(caplog.records) == 1                           # still the one warning
    for bad in ("", "a\0b", 7, "red\x1b[31m", "two\nlines"):
        with pytest.raises(CounterLimitError, match="^a counter name is a non-empty string of printable characters"):
            add_count({}, bad, 1)


# ---- errors ----------------------------------------------------------------------------------------
def failing(values):
    raise ValueError(f"bad value {values[0]}")          # the same line, a new message every time


def test_one_traceback_per_kind_of_error_then_counted_repeats(caplog):
    caplog.set_level(logging.ERROR)
    now = [0.0]
    errors = ErrorLog("worker-0", "w.py:3", clock=lambda: now[0])
    for k in range(5):
        try:
            failing([k])
        except ValueError as exc:
            errors.record(exc)
    firsts = [r.getMessage() for r in caplog.records]
    assert len(firsts) == 1
    assert f"the worker function raised at {__file__}:" in firsts[0] and "ValueError: bad value 0" in firsts[0]
    assert f'File "{__file__}", line' in firsts[0]                       # the traceback
    now[0] = 11.0
    try:
        failing([9])
    except ValueError as exc:
        errors.record(exc)
    assert caplog.records[-1].getMessage().startswith(f"worker-0: ValueError ({__file__}:")
    assert caplog.records[-1].getMessage().endswith("repeated 5 times so far (5 since the last report)")
    errors.summary()
    assert len(caplog.records) == 2                                      # nothing new to report


class FakeBatch:
    def __init__(self, n):
        self.n = n
        self.out = np.zeros(n, np.int16)

    def verdicts_set(self):
        return True


def test_wrong_return_values_are_one_kind_whatever_the_batch_size(caplog):
    caplog.set_level(logging.ERROR)
    errors = ErrorLog("worker-1", "/x/swap.py:12")
    for n in (3, 7, 256):
        try:
            verdicts(FakeBatch(n), [1] * n)
        except WorkerResultError as exc:
            errors.record(exc, returned=True)
    assert len(caplog.records) == 1
    msg = caplog.records[0].getMessage()
    assert msg.startswith("worker-1: the worker function at /x/swap.py:12 returned something that is not a verdict")
    assert msg.endswith("WorkerResultError: a worker returns None or a boolean mask of 3 packets, got list (3,)")
    errors.summary()
    assert caplog.records[-1].getMessage() == ("worker-1: WorkerResultError (the return value of /x/swap.py:12) "
                                               "repeated 2 times so far (2 since the last report)")


# ---- checking and loading ----------------------------------------------------------------------------
SIDE_EFFECT = "import pathlib\npathlib.Path(__file__).with_suffix('.ran').write_text('imported')\n"


def test_checking_a_worker_never_runs_its_module(tmp_path, monkeypatch):
    (tmp_path / "w.py").write_text(SIDE_EFFECT + "def f(batch):\n    pass\nLIMIT = 64\nfrom os import path as g\n")
    check_worker("w.py:f", tmp_path)
    check_worker("w.py:g", tmp_path)
    (tmp_path / "ixy_check_mod.py").write_text(SIDE_EFFECT + "class W:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check_worker("ixy_check_mod:W")
    assert "ixy_check_mod" not in sys.modules and not list(tmp_path.glob("*.ran"))
    for spec, message in [("w.py:nope", "w.py has no function 'nope'"),
                          ("w.py:LIMIT", "'w.py:LIMIT' names a value of type int, not a function"),
                          ("ixy_check_mod:nope", "ixy_check_mod has no function 'nope'"),
                          ("ixy_no_such_mod:f", "no module 'ixy_no_such_mod' (No module named 'ixy_no_such_mod')"),
                          ("missing.py:f", f"no worker file {tmp_path / 'missing.py'}")]:
        with pytest.raises(WorkerLoadError) as info:
            check_worker(spec, tmp_path)
        assert str(info.value) == message
    (tmp_path / "bad.py").write_text("def f(:\n")
    with pytest.raises(WorkerLoadError, match=rf"^loading {tmp_path / 'bad.py'} failed: SyntaxError: "):
        check_worker("bad.py:f", tmp_path)


def test_load_finds_module_hooks_and_class_methods(tmp_path):
    (tmp_path / "m.py").write_text("def setup(ctx):\n    ctx.state['s'] = 1\n\ndef teardown(ctx):\n    pass\n\n"
                                   "def f(batch):\n    return None\n\nclass C:\n    def setup(self, ctx):\n"
                                   "        self.ctx = ctx\n    def process(self, batch):\n        return 'p'\n\n"
                                   "class D:\n    def __call__(self, batch):\n        return 'c'\n\nclass E:\n    pass\n")
    w = load("m.py:f", tmp_path)
    assert w.process.__name__ == "f" and w.setup.__name__ == "setup" and w.teardown.__name__ == "teardown"
    assert w.where == f"{tmp_path / 'm.py'}:7"
    c = load("m.py:C", tmp_path)
    assert c.process(None) == "p" and c.teardown is None and c.where == f"{tmp_path / 'm.py'}:13"
    ctx = WorkerContext(0, 1, ["p0"])
    c.setup(ctx)
    assert c.process.__self__.ctx is ctx
    assert load("m.py:D", tmp_path).process(None) == "c"
    with pytest.raises(WorkerLoadError, match="^class E has neither a process"):
        load("m.py:E", tmp_path)
    assert load("touch").setup is None


# ---- in a running pipeline --------------------------------------------------------------------------
PIPELINE_WORKER = '''
"""Counts many long-named counters; proves where its module code runs."""
import os
import pathlib

LOG = pathlib.Path(__file__).with_name("events.log")
with LOG.open("a") as f:
    f.write(f"import {os.getpid()} {os.environ.get('IXYPIPE_WORKER_CHECK', '-')}\\n")


def setup(ctx):
    with LOG.open("a") as f:
        f.write(f"setup {ctx.worker}/{ctx.workers} {ctx.options['tag']} {ctx.port_names}\\n")


def teardown(ctx):
    ctx.count("teardown seen")
    with LOG.open("a") as f:
        f.write(f"teardown {ctx.worker} {ctx.counters['udp packets seen by this worker on any port']}\\n")


def work(batch):
    batch.count("udp packets seen by this worker on any port", int(batch.l4.udp.sum()))
    for k in range(11):
        batch.count(f"a rather long counter name number {k}", batch.n)
'''


def test_counters_setup_and_teardown_in_a_running_pipeline(tmp_path):
    (tmp_path / "w.py").write_text(PIPELINE_WORKER)
    text = (REPO / "pipelines" / "fwd.toml").read_text()
    text = text.replace("expect_touch = true", "expect_touch = false").replace("rate_mpps = 0.3", "rate_mpps = 0.05")
    text = text.replace('function = "touch"', 'function = "w.py:work"')
    text = text.replace("[stats]", '[workers.options]\ntag = "hello"\n\n[stats]')
    # setup and teardown write into root's private tmp_path: the workers stay root (see privilege.py)
    text = text.replace('name = "fwd"', 'name = "fwd"\nworker_user = "root"')
    (tmp_path / "p.toml").write_text(text)
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(tmp_path / "p.toml"), "--duration", "4",
                          "--json"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    s = docs[-1]
    assert s["summary"] and s["ok"]
    names = ["udp packets seen by this worker on any port"] + [f"a rather long counter name number {k}"
                                                               for k in range(11)]
    assert list(s["counters"]) == names + ["teardown seen"]
    assert s["counters"][names[0]] == s["received"] > 1000           # the generators send UDP only
    assert all(s["counters"][n] == s["received"] for n in names[1:])
    assert s["counters"]["teardown seen"] == 1
    assert s["worker_counters"] == {"worker-0": s["counters"]}
    live = [d for d in docs if "counters" in d and not d.get("summary")]
    assert live and list(live[-1]["counters"]) == names
    assert any("counters" in st for st in live[-1]["stages"].values())
    events = (tmp_path / "events.log").read_text().splitlines()
    imports = [e for e in events if e.startswith("import")]
    assert len([e for e in imports if e.endswith(" -")]) == 1   # once in the worker process, never in the supervisor
    assert len([e for e in imports if e.endswith(" 1")]) == 1   # and once in run's start-up check (loader.probe)
    assert [e for e in events if e.startswith("setup")] == ["setup 0/1 hello ['p0', 'p1']"]
    assert [e for e in events if e.startswith("teardown")] == [f"teardown 0 {s['received']}"]


def test_the_summary_shows_counters_summed_and_per_worker():
    import io

    from ixypipe.pipeline.report import Accounting
    acc = Accounting(received=10, transmitted=10, user_counters={"dns dropped": 7, "flows": 3},
                     worker_counters={"worker-0": {"dns dropped": 5, "flows": 1},
                                      "worker-1": {"dns dropped": 2, "flows": 2}})
    out = io.StringIO()
    acc.print(out, json_lines=False)
    lines = out.getvalue().splitlines()
    at = lines.index("worker counters: dns dropped 7, flows 3")
    assert lines[at + 1:at + 3] == ["  worker-0: dns dropped 5, flows 1", "  worker-1: dns dropped 2, flows 2"]
    out = io.StringIO()
    acc.print(out, json_lines=True)            # the JSON summary names them as every JSON object does: counters
    doc = json.loads(out.getvalue())
    assert doc["counters"] == {"dns dropped": 7, "flows": 3} and "user_counters" not in doc
    assert doc["worker_counters"]["worker-1"] == {"dns dropped": 2, "flows": 2} and doc["type"] == "summary"


def test_an_error_inside_the_api_is_placed_at_the_workers_line():
    counters: dict[str, int] = {}
    line = sys._getframe().f_lineno + 2
    try:
        add_count(counters, "packets", "many")
    except CounterLimitError as exc:
        assert ErrorLog("worker-0").kind(exc) == ("CounterLimitError", f"{__file__}:{line}")
    else:
        raise AssertionError("no CounterLimitError")


# ---- what a worker does to its batch's indices ----------------------------------------------------------
class Row(dict):
    def add(self, field, n):
        self[field] = self.get(field, 0) + n


def worker_stage():
    return type("St", (), {"row": Row(), "me": type("Me", (), {"name": "worker-0"})()})()


def test_a_changed_index_drops_the_packet_given_there_and_routes_the_rest(caplog):
    from ixypipe.pipeline.stages import keep_unchanged

    caplog.set_level(logging.WARNING)
    st, home, errors = worker_stage(), [], ErrorLog("worker-0", "/x/w.py:3", clock=lambda: 0.0)
    homing = type("H", (), {"send": staticmethod(home.extend)})()
    idx = np.array([10, 11, 12, 13], np.uint32)
    for _ in range(3):
        shown = idx.copy()
        shown.flags.writeable = False
        batch = type("B", (), {"idx": shown})()
        assert keep_unchanged(st, idx, batch, shown, 1, homing, errors) == (idx, 1)    # untouched: as is
        shown.flags.writeable = True
        shown[[0, 2]] = [2**32 - 1, 11]                     # garbage, and another packet's buffer
        kept, out = keep_unchanged(st, idx, batch, shown, np.array([1, 0, DROP, 1], np.int16), homing, errors)
        assert kept.tolist() == [11, 13] and out.tolist() == [0, 1]
    assert home == [10, 12] * 3 and st.row == {"drop_worker_error": 6}
    assert [r.getMessage() for r in caplog.records] == [
        "worker-0: the worker function changed batch.idx (position 0: 4294967295 instead of buffer 10); a packet "
        "whose index was changed is dropped (reason worker_error), repeats are counted"]
    batch = type("B", (), {"idx": np.array([1, 2, 3, 4], np.uint32)})()          # replaced outright
    kept, out = keep_unchanged(st, idx, batch, idx.copy(), 1, homing, errors)
    assert len(kept) == 0 and st.row == {"drop_worker_error": 10} and home[-4:] == idx.tolist()
    errors.summary()
    assert caplog.records[-1].getMessage() == ("worker-0: changed batch.idx (/x/w.py:3) repeated 3 times so far "
                                               "(3 since the last report)")


def test_an_input_index_past_the_arena_is_no_packet(caplog):
    from ixypipe.pipeline.stages import screen_input

    st, errors = worker_stage(), ErrorLog("worker-0", "/x/w.py:3")
    idx = np.array([3, 2**32 - 1, 7, 64], np.uint32)
    assert screen_input(st, idx, 64, errors).tolist() == [3, 7] and st.row == {"drop_bad_index": 2}
    clean = idx[[0, 2]]
    assert screen_input(st, clean, 64, errors) is clean
    assert "index 4294967295 from an input ring is no buffer (the arena has 64)" in caplog.text
