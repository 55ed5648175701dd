"""The user's worker code runs nowhere privileged, leaves nothing behind, and a worker stuck starting is named.

The import check's child and the worker stage drop their privileges and
guard their forks before they import the user's module (workers/confine.py);
whatever a worker's code started that is still running when its stages have
ended is named and killed (pipeline/leftovers.py), also by ``ixypipe cleanup``
after the supervisor was killed; a worker stuck in setup() is named by the
start-up watch, and a stop blames it, not the RX stages waiting on it.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from ixypipe.pipeline.leftovers import run_of
from ixypipe.privilege import DEFAULT_WORKER_USER, lookup
from tests.support.runs import IXYPIPE, REPO, leftovers, run, start, summary_of, variant, wait_for_stats
from tests.support.shareddir import worker_writable_dir
from tests.support.system import needs_root

CEILING = 90.0           # seconds: generous, for a machine busy with other work


@pytest.fixture
def shared_dir():
    """Where worker code (run as nobody) reports what it saw."""
    with worker_writable_dir() as path:
        yield path


def wait_for(what, timeout: float = CEILING):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"never happened within {timeout:g} s")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---- a module that forks when it is imported -----------------------------------------------------------
FORKS_AT_IMPORT = '''
import ctypes, os, sys, time

REPORT = {report!r}
if os.environ.get("IXYPIPE_WORKER_CHECK") == "1":
    where = "check"
else:
    where = "worker"
pid = os.fork()                        # Python's fork: the guard stops the child before it returns here
if pid == 0:
    while True:
        time.sleep(1)
_, status = os.waitpid(pid, 0)
GUARDED = os.waitstatus_to_exitcode(status)
native = ctypes.CDLL(None).fork()      # C's fork: no guard; the child runs on as whatever the parent was
if native == 0:
    with open(f"{{REPORT}}/{{where}}-child.tmp", "w") as f:
        f.write(f"{{os.getpid()}} {{os.getuid()}} {{os.geteuid()}}")
    os.rename(f"{{REPORT}}/{{where}}-child.tmp", f"{{REPORT}}/{{where}}-child")
    while True:
        time.sleep(1)
for _ in range(600):                   # the import goes on once the child has reported
    if os.path.exists(f"{{REPORT}}/{{where}}-child"):
        break
    time.sleep(0.1)


def setup(ctx):
    ctx.count(f"python fork child exit {{GUARDED}}")


def touch(batch):
    batch.data[batch.idx, 1] += 1
'''


def end(proc: subprocess.Popen) -> None:
    """The test's own clean-up: a run killed by a failed assertion leaves its marked processes (they hold its
    pipes); kill them, then reap the run."""
    proc.kill()
    proc.wait(CEILING)
    for p in psutil.process_iter():
        try:
            if run_of(p) == proc.pid:
                p.kill()
        except psutil.Error:
            pass
    proc.communicate(timeout=CEILING)


def child_report(path: Path) -> tuple[int, int, int]:
    return tuple(int(v) for v in path.read_text().split()) if path.exists() and path.read_text() else ()


@needs_root
def test_a_module_that_forks_at_import_runs_its_children_unprivileged_and_the_run_kills_what_is_left(
        tmp_path, shared_dir):
    (tmp_path / "forker.py").write_text(FORKS_AT_IMPORT.format(report=str(shared_dir)))
    nobody = lookup(DEFAULT_WORKER_USER)
    proc = start([str(variant(tmp_path, function='"forker.py:touch"')), "--json"])
    try:
        wait_for_stats(proc)
        # the import check's child imported it first, as nobody; what it forked is gone with its session
        check_pid, check_uid, check_euid = wait_for(lambda: child_report(shared_dir / "check-child"))
        assert (check_uid, check_euid) == (nobody.uid, nobody.uid)
        wait_for(lambda: not alive(check_pid))
        # the worker's native child: nobody, no capability, seen from here
        pid, uid, euid = wait_for(lambda: child_report(shared_dir / "worker-child"))
        child = psutil.Process(pid)
        assert child.uids() == (nobody.uid,) * 3 and (uid, euid) == (nobody.uid, nobody.uid)
        assert child.name() == "ixy-worker-0"
        assert (cap := re.search(r"CapEff:\s*(\w+)", Path(f"/proc/{pid}/status").read_text())) and \
            int(cap[1], 16) == 0
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=CEILING)     # returns: nothing holds its stdout any more
    finally:
        end(proc)
    assert proc.returncode == 1, err
    expected = (f"error: process {pid} (ixy-worker-0, uid {nobody.uid}, started by stage worker-0) was still "
                "running after its stages ended: killed")
    assert expected in err.splitlines(), err
    assert not alive(pid)
    s = summary_of(out)
    assert s["failures"] == [expected.removeprefix("error: ")]
    assert s["in_flight"] == 0 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert s["worker_counters"]["worker-0"] == {"python fork child exit 70": 1}
    assert re.search(r"worker-0 forked \(child pid \d+\); the child was stopped before it could touch a ring "
                     r"\(1 so far\)", err), err
    assert leftovers(proc.pid) == []


@needs_root
def test_the_import_check_imports_as_the_worker_user_and_kills_what_the_module_started(tmp_path, shared_dir):
    (tmp_path / "forker.py").write_text(FORKS_AT_IMPORT.format(report=str(shared_dir)))
    res = run([str(variant(tmp_path, function='"forker.py:touch"')), "--check"], timeout=CEILING)
    assert res.returncode == 0, res.stderr
    assert "ok  workers: forker.py:touch: imports and names a callable" in res.stdout
    pid, uid, euid = child_report(shared_dir / "check-child")
    nobody = lookup(DEFAULT_WORKER_USER)
    assert (uid, euid) == (nobody.uid, nobody.uid)
    wait_for(lambda: not alive(pid), 10)


SLEEPER_CHILD = '''
import ctypes, os, time

def setup(ctx):
    if ctypes.CDLL(None).fork() == 0:
        with open({report!r} + "/child.tmp", "w") as f:
            f.write(f"{{os.getpid()}} {{os.getuid()}} {{os.geteuid()}}")
        os.rename({report!r} + "/child.tmp", {report!r} + "/child")
        while True:
            time.sleep(1)


def touch(batch):
    batch.data[batch.idx, 1] += 1
'''


@needs_root
def test_cleanup_names_and_kills_what_a_killed_run_left(tmp_path, shared_dir):
    (tmp_path / "w.py").write_text(SLEEPER_CHILD.format(report=str(shared_dir)))
    proc = start([str(variant(tmp_path, function='"w.py:touch"')), "--json"])
    try:
        wait_for_stats(proc)
        pid, uid, _ = wait_for(lambda: child_report(shared_dir / "child"))
        proc.kill()                                       # the supervisor dies: nothing of it runs any more
        proc.wait(CEILING)                                # (its pipes stay open: the child holds them)
        time.sleep(1)
        assert alive(pid)                                 # the stages died with it; this one did not
        res = subprocess.run([*IXYPIPE, "cleanup"], capture_output=True, text=True, timeout=CEILING, cwd=REPO)
        assert res.returncode == 0, res.stderr
        assert (f"killed process {pid} (ixy-worker-0, uid {uid}, started by stage worker-0), left by the run of "
                f"pid {proc.pid}") in res.stdout.splitlines(), res.stdout
        wait_for(lambda: not alive(pid), 10)
    finally:
        end(proc)


# ---- a worker stuck starting ----------------------------------------------------------------------------
SLOW_SETUP = '''
import os, time

def setup(ctx):
    time.sleep({seconds})


def touch(batch):
    batch.data[batch.idx, 1] += 1
'''


@pytest.mark.parametrize("policy", ["stop", "restart"])
def test_a_worker_stuck_in_setup_is_named_and_the_policy_applies(tmp_path, policy):
    (tmp_path / "slow.py").write_text(SLOW_SETUP.format(seconds=600))
    text = variant(tmp_path, pipeline_keys={"max_restarts": "1"}, on_stage_death=f'"{policy}"',
                   function='"slow.py:touch"')
    text.write_text(text.read_text().replace("[workers]\n", "[workers]\nsetup_timeout = 3\n"))
    began = time.monotonic()
    proc = start([str(text)])
    try:
        out, err = proc.communicate(timeout=CEILING + 60)
    finally:
        end(proc)
    took = time.monotonic() - began
    print(f"\nsetup() sleeping, setup_timeout 3 s, policy {policy}: exit after {took:.1f} s")
    assert proc.returncode == 1, err
    stuck = r"stage worker-0 \(pid \d+\) is stuck in setup\(\): still there after \d+ s \(workers.setup_timeout = 3\); killed"
    logged = re.findall(rf"^ERROR ixypipe\.pipeline\.supervisor: {stuck}$", err, re.M)
    assert len(logged) == (1 if policy == "stop" else 2), err     # "restart": the replacement is stuck too
    if policy == "restart":
        assert "restarting worker-0 (it was stuck in setup(), killed) in 0.1 s" in err
        assert re.search(r"error: stage worker-0 \(pid \d+\) was stuck in setup\(\), killed; not restarted again: it "
                         r"was restarted 1 times within a minute \(max_restarts = 1\)", err), err
    else:
        assert re.search(rf"^error: {stuck}$", err, re.M), err
    assert "rx-" not in "".join(line for line in err.splitlines() if line.startswith("error:"))
    assert "Traceback" not in err
    assert leftovers(proc.pid) == []


def test_a_slow_setup_delays_the_traffic_and_a_short_run_blames_nobody(tmp_path):
    """--duration 2 with a setup() of 6 s: the traffic starts once every worker is set up (nothing missed
    meanwhile), the run lasts its 2 s, and the stop finds every stage healthy."""
    (tmp_path / "slow.py").write_text(SLOW_SETUP.format(seconds=6))
    proc = start([str(variant(tmp_path, function='"slow.py:touch"')), "--duration", "2", "--json"])
    try:
        out, err = proc.communicate(timeout=CEILING + 60)
    finally:
        end(proc)
    assert proc.returncode == 0, err
    s = summary_of(out)
    assert s["ok"] is True and s["failures"] == [] and s["stop_reason"] == "duration 2 s"
    assert s["received"] > 1000 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert "made no progress" not in err


RESTARTED_SLOW = '''
import os, time

MARK = {mark!r}
calls = 0


def setup(ctx):
    if os.path.exists(MARK):
        time.sleep(600)                  # the replacement never gets out of setup()


def touch(batch):
    global calls
    calls += 1
    if calls == 50:
        open(MARK, "w").close()
        os._exit(3)
    batch.data[batch.idx, 1] += 1
'''


def test_a_stop_blames_the_worker_in_setup_not_the_rx_stages_waiting_on_it(tmp_path, shared_dir):
    (tmp_path / "w.py").write_text(RESTARTED_SLOW.format(mark=str(shared_dir / "died")))
    proc = start([str(variant(tmp_path, on_stage_death='"restart"', function='"w.py:touch"')), "--json"])
    try:
        wait_for_stats(proc)
        wait_for(lambda: (shared_dir / "died").exists())
        time.sleep(3)                    # the RX stages fill the replacement's input rings and hold the rest
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=CEILING)
    finally:
        end(proc)
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(r"error: stage worker-0 made no progress draining for \d+ s "
                                             r"\(still in setup\(\)\): killed", errors[0]), err
    s = summary_of(out)
    assert s["in_flight"] == 0 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert s["drops"]["stage_died"] > 0
    assert leftovers(proc.pid) == []


# ---- the parts, without a pipeline ----------------------------------------------------------------------
def test_the_liveness_watch_names_a_phase_only_once_it_lasted_the_limit():
    import numpy as np

    from ixypipe.layout import STAGE_PHASE_IMPORT, STAGE_PHASE_SETUP, STAGE_ROW_DTYPE, STAGE_STATE_RUNNING
    from ixypipe.pipeline.liveness import Heartbeats

    class Proc:
        def __init__(self, row: int, pid: int):
            self.row, self.process = row, type("P", (), {"pid": pid})()

    table = np.zeros(3, STAGE_ROW_DTYPE)
    table["phase"] = [STAGE_PHASE_IMPORT, STAGE_PHASE_SETUP, 0]     # row 2: starting, no user code yet
    now = [0.0]
    beats = Heartbeats(table, 2.0, clock=lambda: now[0])
    procs = [Proc(0, 100), Proc(1, 101), Proc(2, 102)]
    assert beats.stuck_starting(procs, 30.0) == []
    now[0] = 29.9
    assert beats.stuck_starting(procs, 30.0) == []
    table["phase"][0] = STAGE_PHASE_SETUP            # row 0 got through its import: its setup() counts from now
    assert beats.stuck_starting(procs, 30.0) == []
    now[0] = 30.0
    assert [(p.row, how, still) for p, how, still in beats.stuck_starting(procs, 30.0)] == [(1, "in setup()", 30.0)]
    procs[1] = Proc(1, 201)                          # a replacement took row 1 over: its own time
    table["state"][0] = STAGE_STATE_RUNNING          # row 0 is in its loop: the phase is over, whatever it says
    now[0] = 60.0
    assert beats.stuck_starting(procs, 30.0) == []
    now[0] = 90.0
    assert [(p.row, how) for p, how, _ in beats.stuck_starting(procs, 30.0)] == [(1, "in setup()")]
