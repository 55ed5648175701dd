"""Stage liveness as a user meets it: hung stages (stopped, spinning in user code) found by their heartbeat,
named and stopped or replaced; restarts limited; a run that lost everything fails; a worker that forks.

Times to exit are printed (run with -s to see them); only a generous ceiling is asserted.
"""

from __future__ import annotations

import os
import re
import select
import signal
import time

import psutil
import pytest

from ixypipe.pipeline.liveness import RESTART_BACKOFF, RESTART_WINDOW, Heartbeats, RestartBudget
from tests.support.runs import leftovers, start, summary_of, variant, wait_for_stats
from tests.support.shareddir import worker_writable_dir

CEILING = 10.0           # seconds beyond stall_timeout: generous, for a machine busy with other work


@pytest.fixture
def shared_dir():
    with worker_writable_dir() as path:
        yield path


def children_named(pid: int, name: str) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if c.name() == name]


def balanced(s: dict) -> None:
    """Every packet received is transmitted or dropped for a named reason, and every buffer came home."""
    assert s["in_flight"] == 0 and s["problems"] == [], s
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())


def stderr_until(proc, text: str, deadline: float) -> str:
    """What the run printed on stderr up to and including ``text`` (read from the pipe as it comes)."""
    fd, got = proc.stderr.fileno(), b""
    while text.encode() not in got:
        assert time.monotonic() < deadline and proc.poll() is None, f"{text!r} never came:\n{got[-3000:]}"
        if select.select([fd], [], [], 0.5)[0]:
            got += os.read(fd, 1 << 16)
    return got.decode()


def finish(proc, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()


# ---- hung stages ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stage", "where"), [("worker-0", r"input rx-p\d-q0>w0 \d+/\d+"),
                                              ("rx-p0-q0", r"from NIC queue 0 of p0\)?; input the NIC"),
                                              ("tx-p1-q0", r"from w0>tx-p1-q0\)?; input w0>tx-p1-q0 \d+/\d+; output the NIC")])
def test_a_stopped_stage_is_found_hung_named_killed_and_the_run_stops(tmp_path, stage, where):
    proc = start([str(variant(tmp_path, pipeline_keys={"stall_timeout": "2.0"})), "--json"])
    try:
        wait_for_stats(proc)
        [victim] = children_named(proc.pid, f"ixy-{stage}")
        family = psutil.Process(proc.pid).children(recursive=True)
        stopped = time.monotonic()
        os.kill(victim.pid, signal.SIGSTOP)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - stopped
    finally:
        proc.kill()
    print(f"\nSIGSTOP of {stage} -> ixypipe run exited after {took:.1f} s (stall_timeout 2 s)")
    assert proc.returncode == 1, err
    assert re.search(rf"error: stage {stage} \(pid {victim.pid}\) hung: its heartbeat stood still for \d+\.\d s "
                     rf"\(the process is stopped \(SIGSTOP or a debugger\)\); it was .*{where}.*; killed", err), err
    assert "did not confirm its generators paused" not in err, err      # the stop waited on the model
    assert "made no progress draining" not in err, err                   # or on a stage it killed
    assert took < 2.0 + CEILING, err
    s = summary_of(out)
    assert s["stop_reason"] == "stage hung"
    if not stage.startswith("rx-"):                # an RX stage stopped between batches may hold nothing
        assert s["drops"]["stage_died"] > 0        # what it held and what waited for it in its input rings
    assert s["drops"]["stranded"] == 0
    balanced(s)
    assert leftovers(proc.pid) == []
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []


SPIN = '''
import pathlib

calls = 0

def spin(batch):
    global calls
    calls += 1
    batch.data[batch.idx, 1] += 1
    if calls == 40:
        pathlib.Path(__file__).with_suffix(".spinning").write_text("spinning")
        while True:
            pass
'''


def test_sigterm_with_a_worker_spinning_in_its_function_ends_within_the_stall_timeout(tmp_path):
    (tmp_path / "spin.py").write_text(SPIN)
    pipeline = variant(tmp_path, pipeline_keys={"stall_timeout": "3.0", "worker_user": '"root"'},  # writes tmp_path
                       function='"spin.py:spin"')
    proc = start([str(pipeline), "--json"])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "spin.spinning").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the worker never started spinning"
            time.sleep(0.05)
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - asked
    finally:
        proc.kill()
    print(f"\nSIGTERM with worker-0 spinning -> ixypipe run exited after {took:.1f} s (stall_timeout 3 s)")
    assert proc.returncode == 1, err
    assert re.search(r"error: stage worker-0 \(pid \d+\) hung: its heartbeat stood still for \d+\.\d s \(the process "
                     r"runs without looping: spinning\); it was inside the worker function with a batch of \d+ "
                     r"packets from \S+>w0;", err), err
    assert took < 3.0 + CEILING
    s = summary_of(out)
    assert s["stop_reason"] == "SIGTERM"
    assert s["drops"]["stage_died"] > 0
    balanced(s)
    assert leftovers(proc.pid) == []


def test_a_hung_worker_is_replaced_under_the_restart_policy_and_the_run_goes_on(tmp_path):
    pipeline = variant(tmp_path, pipeline_keys={"stall_timeout": "2.0"}, on_stage_death='"restart"')
    proc = start([str(pipeline), "--json"])
    try:
        wait_for_stats(proc)
        [worker] = children_named(proc.pid, "ixy-worker-0")
        os.kill(worker.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 60
        replaced = []
        while time.monotonic() < deadline and not replaced:
            replaced = [w for w in children_named(proc.pid, "ixy-worker-0") if w.pid != worker.pid]
            time.sleep(0.2)
        assert replaced, "no new worker-0"
        for _ in range(3):                        # a few intervals with the new worker
            proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, (err, out[-3000:])
    assert re.search(r"restarting worker-0 \(it hung \(the process is stopped \(SIGSTOP or a debugger\)\), killed\) "
                     r"in 0\.1 s", err), err
    s = summary_of(out)
    assert s["restarts"] == 1 and s["failures"] == [], (s["restarts"], s["failures"], err[-4000:])
    balanced(s)
    assert s["sim"]["p0"]["sink_received"] == s["ports"]["p0"]["tx_packets"] > 0


# ---- restart limits; a run that lost everything ---------------------------------------------------------
DIES = '''
import os
import pathlib

marker = pathlib.Path(__file__).with_suffix(".started")
if not os.environ.get("IXYPIPE_WORKER_CHECK"):      # run --check's import in a child does not count
    if marker.exists():
        raise ImportError("this worker cannot start twice")
    marker.write_text("started")

def die(batch):
    os._exit(7)
'''


def test_a_worker_that_keeps_dying_is_restarted_with_back_off_then_the_run_stops(tmp_path, shared_dir):
    # the module's code runs as the workers' user: its marker goes where that user may write
    (tmp_path / "dies.py").write_text(DIES.replace('pathlib.Path(__file__).with_suffix(".started")',
                                                   f"pathlib.Path({str(shared_dir / 'dies.started')!r})"))
    pipeline = variant(tmp_path, pipeline_keys={"max_restarts": "2"}, on_stage_death='"restart"',
                       function='"dies.py:die"')
    proc = start([str(pipeline), "--json"])
    out, err = finish(proc)
    assert proc.returncode == 1, err
    assert "restarting worker-0 (it died: exit code 7) in 0.1 s" in err
    assert "restarting worker-0 (it died: exit code 3) in 0.2 s" in err           # the import fails now
    assert err.count("ImportError: this worker cannot start twice") == 2
    assert re.search(r"error: stage worker-0 \(pid \d+\) died: exit code 3; not restarted again: it was restarted 2 "
                     r"times within a minute \(max_restarts = 2\)", err), err
    assert re.search(r"error: every packet was lost: received [\d,]+, transmitted none", err), err
    s = summary_of(out)
    assert s["restarts"] == 2 and s["stop_reason"] == "stage died"
    assert s["transmitted"] == 0 and s["received"] > 0
    balanced(s)
    assert leftovers(proc.pid) == []


RAISES = '''
import time

calls = 0

def varied(batch):
    global calls
    calls += 1
    if calls % 2:
        raise ValueError(f"odd batch {calls} of {batch.n} at {time.time()}")
    raise KeyError(f"even batch {calls}")
'''


def test_errors_are_logged_once_per_kind_then_counted_each_second_and_losing_everything_fails(tmp_path):
    (tmp_path / "raises.py").write_text(RAISES)
    proc = start([str(variant(tmp_path, function='"raises.py:varied"')), "--json"])
    try:
        wait_for_stats(proc)
        began = time.monotonic()
        for _ in range(3):
            proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        seconds = time.monotonic() - began
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.count("Traceback") == 2                    # one per kind, whatever the message
    for kind, line in (("ValueError", 10), ("KeyError", 11)):
        reports = re.findall(rf"{kind} \(\S*raises.py:{line}\) repeated (\d+) times so far", err)
        assert 1 <= len(reports) <= seconds + 4, (kind, len(reports), seconds)
    s = summary_of(out)
    assert re.search(rf"error: every packet was lost: received {s['received']:,}, transmitted none", err), err
    assert s["drops"]["worker_error"] == s["received"] > 0
    balanced(s)


# ---- counters, fork ------------------------------------------------------------------------------------
COUNTS = '''
calls = 0

def counts(batch):
    global calls
    calls += 1
    batch.data[batch.idx, 1] += 1
    batch.count("huge", 2**70)
    batch.count("negative", -5)
    batch.count("\\u00e9" * 100)            # 200 bytes of UTF-8: cut at 128, between two characters
    if calls == 3:
        batch.count("bad\\x1b[31mname")
    if calls == 4:
        batch.count("float", 1.5)
'''


def test_counters_take_any_int_and_names_are_checked_when_first_used(tmp_path):
    (tmp_path / "counts.py").write_text(COUNTS)
    pipeline = variant(tmp_path, function='"counts.py:counts"', expect_touch="false")
    proc = start([str(pipeline), "--json"])
    try:
        wait_for_stats(proc)
        for _ in range(2):
            proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    s = summary_of(out)
    batches = s["counters"]["\u00e9" * 64]
    assert batches > 4
    assert s["counters"] == {"huge": 2**63 - 1, "negative": 0, "\u00e9" * 64: batches}
    assert err.count("counter 'huge' is ") == 1 and "shown as 9223372036854775807" in err
    assert err.count("counter 'negative' is ") == 1
    assert "a counter name is a non-empty string of printable characters, got 'bad\\x1b[31mname'" in err
    assert "counter 'float': a count is an integer, got 1.5 (float)" in err
    assert s["drops"]["worker_error"] > 0                 # batches 3 and 4
    balanced(s)


FORKS = '''
import os

calls = 0

def forks(batch):
    global calls
    calls += 1
    batch.data[batch.idx, 1] += 1
    if calls == 20:
        pid = os.fork()
        if pid == 0:                 # the child would take packets from here on: it must never get here
            while True:
                pass
        _, status = os.waitpid(pid, 0)
        batch.count(f"child exit {os.waitstatus_to_exitcode(status)}")
'''


def test_a_worker_that_forks_gets_its_child_stopped_and_reported(tmp_path):
    (tmp_path / "forks.py").write_text(FORKS)
    proc = start([str(variant(tmp_path, function='"forks.py:forks"')), "--json"])
    try:
        wait_for_stats(proc)
        early = stderr_until(proc, "forked", time.monotonic() + 60)     # the supervisor saw the fork
        family = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
        err = early + err
        err_lines = err.splitlines()
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    [report] = [line for line in err_lines if "forked" in line]
    assert re.search(r"worker-0 forked \(child pid \d+\); the child was stopped before it could touch a ring "
                     r"\(1 so far\): a worker may not fork", report), report
    s = summary_of(out)
    assert s["counters"] == {"child exit 70": 1}     # the worker went on; its child left at once
    assert s["failures"] == []
    balanced(s)
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == []


# ---- the parts, without a pipeline ----------------------------------------------------------------------
class FakeProc:
    def __init__(self, row: int):
        self.row = row
        self.process = type("P", (), {"pid": os.getpid()})()


def test_heartbeats_that_move_or_wait_for_a_first_batch_are_not_hung():
    import numpy as np

    from ixypipe.layout import STAGE_ROW_DTYPE, STAGE_STATE_RUNNING
    table = np.zeros(2, STAGE_ROW_DTYPE)
    table["state"] = STAGE_STATE_RUNNING
    table["heartbeat"] = 5
    table["batches"] = [3, 0]                      # row 1 has not finished a first batch
    now = [0.0]
    beats = Heartbeats(table, 2.0, clock=lambda: now[0])
    procs = [FakeProc(0), FakeProc(1)]
    assert beats.hung(procs) == []
    now[0] = 1.9
    table["heartbeat"][1] = 6
    assert beats.hung(procs) == []
    now[0] = 10.0                                  # row 0 still for 10 s and this process is running: spinning
    assert beats.hung(procs) == []                 # (the first look notes its CPU time)
    sum(range(3_000_000))                          # use some CPU
    now[0] = 10.1
    [(p, how, still)] = beats.hung(procs)
    assert p.row == 0 and how == "the process runs without looping: spinning" and still == 10.1
    table["state"][0] = 2                          # out of its loop (draining): never hung
    assert beats.hung(procs) == []


def test_a_killed_stage_whose_heartbeat_stands_still_is_a_death_to_report_not_a_hang():
    """A SIGKILLed stage can take seconds to be torn down on a busy machine ("disk-sleep" while its memory
    goes, then a zombie): its heartbeat stands still, but it is dying, and _check_deaths names it."""
    import subprocess

    import numpy as np

    from ixypipe.layout import STAGE_ROW_DTYPE, STAGE_STATE_RUNNING
    table = np.zeros(1, STAGE_ROW_DTYPE)
    table["state"], table["heartbeat"], table["batches"] = STAGE_STATE_RUNNING, 5, 3
    now = [0.0]
    beats = Heartbeats(table, 2.0, clock=lambda: now[0])
    child = subprocess.Popen(["sleep", "60"])
    try:
        stage = FakeProc(0)
        stage.process = child
        def until(status):
            deadline = time.monotonic() + 60               # a signal lands when the child next runs
            while psutil.Process(child.pid).status() != status:
                assert time.monotonic() < deadline, status
                time.sleep(0.01)

        os.kill(child.pid, signal.SIGSTOP)
        until(psutil.STATUS_STOPPED)
        assert beats.hung([stage]) == []
        now[0] = 3.0
        [(_, how, _)] = beats.hung([stage])
        assert how == "the process is stopped (SIGSTOP or a debugger)"
        os.kill(child.pid, signal.SIGKILL)                 # a zombie until reaped: dying, not hung
        until(psutil.STATUS_ZOMBIE)
        now[0] = 6.0
        assert beats.hung([stage]) == []
    finally:
        child.kill()
        child.wait()


def test_restart_budget_backs_off_doubling_and_runs_out():
    now = [0.0]
    budget = RestartBudget(3, clock=lambda: now[0])
    delays = []
    for _ in range(4):
        delays.append(budget.delay("worker-0"))
        if delays[-1] is not None:
            budget.restarted("worker-0")
    assert delays == [RESTART_BACKOFF, 2 * RESTART_BACKOFF, 4 * RESTART_BACKOFF, None]
    assert budget.delay("worker-1") == RESTART_BACKOFF          # per stage
    now[0] = RESTART_WINDOW + 1
    assert budget.delay("worker-0") == RESTART_BACKOFF          # a quiet minute later: a fresh budget
