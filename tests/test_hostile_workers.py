"""Issue #24: a buggy worker never takes the pipeline down.  Each reproduction of the issue runs end to end
through ``ixypipe run`` with a worker module written here: no stage dies, the supervisor prints its summary,
and every packet is accounted for exactly (the worker counts what it broke, the summary must agree)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.runs import REPO, summary_of, variant

TRACEBACK = "Traceback (most recent call last)"


def run_worker(tmp_path, source: str, function: str, seconds: int = 4, **replace) -> tuple[dict, str]:
    """fwd.toml with ``function`` from a module written from ``source``, for ``seconds``: (summary, stderr)."""
    (tmp_path / "hostile.py").write_text(source)
    pipeline = variant(tmp_path, function=f'"hostile.py:{function}"', **replace)
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(pipeline), "--duration", str(seconds),
                          "--json"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert "stage failed" not in res.stderr and " died" not in res.stderr, res.stderr
    s = summary_of(res.stdout)
    assert res.returncode == 0, res.stderr
    assert s["ok"] and s["failures"] == [] and s["in_flight"] == 0, s
    assert s["received"] == s["transmitted"] + sum(s["drops"].values()) > 0
    return s, res.stderr


def sinks_clean(s: dict) -> None:
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_received"] == s["ports"][port]["tx_packets"] > 0
        assert sim["sink_corrupt"] == 0 and sim["sink_reordered"] == 0


INDICES = '''
calls = 0
borrowed = None

def indices(batch):
    global calls, borrowed
    calls += 1
    batch.data[batch.idx, 1] += 1
    batch.idx.flags.writeable = True               # the read-only flag is only a flag: the worker lifts it
    kind = calls % 4
    if kind == 1:
        batch.idx[0] = 2**32 - 1                    # no buffer at all (both TX stages died of SIGSEGV)
        batch.count("garbage", 1)
    elif kind == 2 and batch.n > 1:
        batch.idx[1] = batch.idx[0]                 # one buffer twice
        batch.count("duplicated", 1)
    elif kind == 3:
        if borrowed is not None and int(batch.idx[0]) != borrowed:
            batch.count("borrowed", 1)
        if borrowed is not None:
            batch.idx[0] = borrowed                 # a buffer of an earlier batch (in TX, or home again)
        borrowed = int(batch.idx[-1])
'''


def test_indices_a_worker_changes_never_leave_it_and_are_counted_as_worker_errors(tmp_path):
    s, err = run_worker(tmp_path, INDICES, "indices", expect_touch="false")
    c = s["counters"]
    assert c["garbage"] > 0 and c["duplicated"] > 0 and c["borrowed"] > 0
    # the packet given at each changed position went home; nothing else was lost, reordered or sent twice
    assert s["drops"]["worker_error"] == c["garbage"] + c["duplicated"] + c["borrowed"]
    assert s["drops"]["bad_index"] == s["drops"]["duplicate"] == 0          # TX never saw a bad index
    sinks_clean(s)
    assert "the worker function changed batch.idx (position 0: 4294967295 instead of buffer " in err
    assert err.count("the worker function changed batch.idx") == 1          # one warning, then counted
    assert re.search(r"worker-0: changed batch.idx \(\S*hostile.py:5\) repeated \d+ times", err), err
    assert TRACEBACK not in err


VERDICTS = '''
import numpy as np

calls = 0

def verdicts(batch):
    global calls
    calls += 1
    batch.data[batch.idx, 1] += 1
    kind = calls % 9
    keep = np.ones(batch.n, bool)
    if kind == 7:
        batch.default_out = 10**9                            # no port, and past int16
        batch.count("no route", batch.n)
        return None
    if kind == 8 and batch.n > 1:
        batch.count("bad verdicts", batch.n)
        batch.out[:] = 0                                     # verdicts for every packet, then
        batch.n = 1                                          # a mask of the wrong length, however it lies
        return keep[:1]
    if kind == 1:
        batch.out = np.full(batch.n, np.nan)                 # float verdicts
    elif kind == 2:
        batch.out = np.array([1] * batch.n, dtype=object)    # object verdicts
    elif kind == 3:
        batch.out = np.zeros((batch.n, 2), np.int16)         # 2-D
    elif kind == 4:
        batch.out = np.zeros(0, np.int16)                    # empty
    elif kind == 5:
        batch.out = np.full(batch.n, 2**64 - 1, np.uint64)   # no port: must not wrap to DROP (-1)
        batch.count("no route", batch.n)
        return keep
    elif kind in (0, 6, 8):
        return keep if kind == 6 else None
    batch.count("bad verdicts", batch.n)
    return keep                                              # a boolean mask with the bad batch.out
'''


def test_any_batch_out_and_return_value_is_a_counted_drop_never_a_dead_stage(tmp_path):
    s, err = run_worker(tmp_path, VERDICTS, "verdicts", expect_touch="false")
    c = s["counters"]
    assert s["drops"]["worker_error"] == c["bad verdicts"] > 0
    assert s["drops"]["no_route"] == c["no route"] > 0 and s["drops"]["worker"] == 0
    sinks_clean(s)
    assert err.count("batch.out must stay an integer array") == 1           # one warning for each kind
    assert err.count("a worker returns None or a boolean mask of") == 1
    assert TRACEBACK not in err


RAISES = '''
import sys

calls = 0

def raises(batch):
    global calls
    calls += 1
    kind = calls % 5              # an odd cycle: batches from both ports' rings (taken in turn) go out too
    if kind in (1, 2, 3):
        batch.count("raised", batch.n)
    if kind == 1:
        raise KeyboardInterrupt
    if kind == 2:
        raise GeneratorExit
    if kind == 3:
        sys.exit(0)
    batch.data[batch.idx, 1] += 1
'''


def test_base_exceptions_from_user_code_are_caught_and_counted(tmp_path):
    s, err = run_worker(tmp_path, RAISES, "raises")
    assert s["drops"]["worker_error"] == s["counters"]["raised"] > 0
    sinks_clean(s)
    assert s["sim"]["p0"]["sink_untouched"] == 0        # what went out was the untouched-by-error batches
    for kind in ("KeyboardInterrupt", "GeneratorExit", "SystemExit"):
        assert len(re.findall(rf"the worker function raised at \S*hostile.py:\d+; .*\n(?:.*\n)*?{kind}", err)) \
            >= 1, err
        assert err.count(f"\n{kind}") == 1                # one traceback per kind, then counted repeats


COUNTERS = '''
calls = 0

def per_source(batch):
    global calls
    calls += 1
    batch.count("packets", batch.n)
    batch.data[batch.idx, 1] += 1
    for i in range(min(batch.n, 64)):                # a counter per "source": a new name for most packets
        batch.count(f"source {calls}.{i}")
'''


def test_counters_past_the_name_limit_are_refused_and_every_packet_still_goes_out(tmp_path):
    s, err = run_worker(tmp_path, COUNTERS, "per_source")
    c = s["counters"]
    assert len(c) == 1024 and "packets" in c                 # the first 1,023 sources and "packets"
    assert c["packets"] == s["received"] == s["transmitted"] > 1024
    assert sum(s["drops"].values()) == 0
    sinks_clean(s)
    assert err.count("a worker has at most 1024 named counters") == 1
    assert re.search(r"worker-0: \d+ counter updates were refused: the worker's counter block was full", err)


SCRIBBLER = '''
import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.rings.spsc import Ring

PATH = []

def forward(batch):
    if not PATH:
        PATH.append(batch.bufs.arena.path)
    batch.data[batch.idx, 1] += 1


def teardown(ctx):
    # a worker running as root maps the arena again, writable, and writes into the rings it produces into
    arena = Arena.attach(PATH[0])
    Ring.attach(arena, "w0>tx-p0-q0").enqueue(np.array([2**32 - 1, 2**31], np.uint32))   # TX still reads this
    Ring.attach(arena, "w0>pool0").enqueue(np.array([2**32 - 1], np.uint32))            # RX has stopped
'''


def test_a_corrupted_ring_is_refused_by_tx_and_named_by_the_supervisor_which_still_prints_its_summary(tmp_path):
    (tmp_path / "hostile.py").write_text(SCRIBBLER)
    pipeline = variant(tmp_path, {"worker_user": '"root"'}, function='"hostile.py:forward"')
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(pipeline), "--duration", "3", "--json"],
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert TRACEBACK not in res.stderr and "stage failed" not in res.stderr
    s = summary_of(res.stdout)
    buffers = s["buffers_total"]
    failure = (f"stage worker-0 corrupted ring w0>pool0: index 4294967295 out of range (the arena has {buffers} "
               "buffers)")
    assert s["failures"] == [failure] and f"error: {failure}" in res.stderr
    assert s["drops"]["bad_index"] == 2                     # TX refused both, sent neither anywhere
    assert s["in_flight"] == 0 and s["problems"] == []      # the accounting itself is exact
    sinks_clean(s)


SETUP_EXITS = '''
import sys

def setup(ctx):
    sys.exit(0)                                     # ended the stage with exit code 0 and no word of why

def fwd(batch):
    batch.data[batch.idx, 1] += 1
'''


def test_a_setup_that_raises_system_exit_is_named_as_the_stage_failure(tmp_path):
    (tmp_path / "hostile.py").write_text(SETUP_EXITS)
    pipeline = variant(tmp_path, function='"hostile.py:fwd"')
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(pipeline), "--duration", "30"],
                         capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 1, res.stderr
    assert re.search(r"worker-0: stage failed:\n(?:.*\n)*?.*sys\.exit\(0\).*\n(?:.*\n)*?SystemExit: 0\n", res.stderr), res.stderr
    assert "stage worker-0 (pid " in res.stderr and "died: exit code 3" in res.stderr
    assert "died: exit code 0" not in res.stderr
