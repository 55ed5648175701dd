"""Stopping a run as services and shells do: a signal to the whole process group (``timeout``, systemd's stop,
``kill -TERM -PGID``), a fork server that dies, a supervisor killed outright, restarted workers, and traffic
that cannot be paused.

Times are printed (run with -s to see them); none is asserted.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

import ixypipe
from ixypipe.layout import STAGE_CMD_DRAIN, STAGE_ROW_DTYPE
from ixypipe.memory.arena import Arena, remove_stale
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.forkserver import PROCESS_NAME as FORK_SERVER_NAME
from ixypipe.pipeline.planinfo import read_plan_info
from ixypipe.pipeline.running import find_pipelines
from tests.support.runs import FWD, IXYPIPE, REPO, check_sinks, intervals_of, leftovers, summary_of, variant
from tests.support.system import needs_hugepages, needs_root


def start_in_own_group(argv: list[str], **kw) -> subprocess.Popen:
    """``argv`` as a service manager or a shell job starts it: the leader of its own process group."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True, **kw)


def read_until(stream, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """What ``stream`` (a pipe of ``proc``) printed up to and including the first line matching ``pattern``."""
    fd, got = stream.fileno(), b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern.encode(), got, re.M):
        assert time.monotonic() < deadline, f"{pattern!r} never came:\n{got.decode()[-3000:]}"
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk and proc.poll() is not None:
                other = proc.stderr if stream is proc.stdout else proc.stdout
                raise AssertionError(f"exited ({proc.returncode}) before {pattern!r}:\n{got.decode()[-3000:]}\n"
                                     f"{other.read()[-3000:]}")
            got += chunk
    return got.decode()


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def balanced(s: dict) -> None:
    assert s["ok"] is True and s["problems"] == [] and s["failures"] == [], s
    assert s["in_flight"] == 0 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    if not s["restarts"]:         # every buffer came home (a dead worker's are counted as stage_died drops)
        assert s["buffers_free"] + s["buffers_in_nic"] == s["buffers_total"]


# ---- a signal to the whole process group ------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_a_signal_to_the_process_group_stops_the_run_as_one_to_the_supervisor_does(sig):
    """kill -TERM -PGID (systemd's KillMode=control-group, Ctrl-C in a terminal, a closed terminal's SIGHUP)
    reaches every stage, the fork server and the software 82599 at once: the supervisor alone acts on it."""
    proc = start_in_own_group([*IXYPIPE, "run", str(FWD), "--json"])
    try:
        got = read_until(proc.stdout, r'^\{"type": "interval"', proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        asked = time.monotonic()
        os.killpg(proc.pid, sig)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\nkill -{sig.name} -PGID: ixypipe run exited {proc.returncode} after {time.monotonic() - asked:.2f} s")
    assert proc.returncode == 0, err
    s = summary_of(got + out)
    assert s["stop_reason"] == sig.name
    balanced(s)
    assert s["drops"]["stage_died"] == 0
    check_sinks(s)
    assert "died" not in err and "Traceback" not in err
    assert leftovers(proc.pid) == []
    _, alive = psutil.wait_procs(family, timeout=20)        # stages, fork server, simulator
    assert alive == []


def test_under_nohup_a_hang_up_does_not_stop_the_run():
    """``nohup ixypipe run ...``: SIGHUP ignored from the start stays ignored (the user asked to outlive the
    terminal); SIGTERM still stops the run."""
    proc = start_in_own_group([*IXYPIPE, "run", str(FWD), "--json"],
                              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        got = read_until(proc.stdout, r'^\{"type": "interval"', proc)
        os.killpg(proc.pid, signal.SIGHUP)
        for _ in range(2):                      # it goes on forwarding
            got += read_until(proc.stdout, r'^\{"type": "interval"', proc)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    s = summary_of(got + out)
    assert s["stop_reason"] == "SIGTERM"
    balanced(s)


def test_timeout_stopping_the_run_leaves_the_accounting(tmp_path):
    """GNU timeout signals the command and then its whole process group: ``timeout 8 ixypipe run ...``.  Here
    ``timeout`` is told to stop by SIGTERM once the run forwards (as it does when its time is up: the same two
    signals), so the test does not depend on how long the start takes on a busy machine."""
    proc = start_in_own_group(["timeout", "600", *IXYPIPE, "run", str(FWD)])
    try:
        got = read_until(proc.stdout, r"^\[p1\] TX: ", proc)
        os.kill(proc.pid, signal.SIGTERM)
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err            # timeout passes the command's status on (124 only for its own alarm)
    text = got + out
    assert "accounting OK" in text, text[-3000:]
    assert "stopped by   SIGTERM" in text
    assert re.search(r"^dropped +0 +\(none\)$", text, re.M), text[-3000:]
    assert "died" not in err


# ---- the fork server and the supervisor dying -------------------------------------------------------------
def test_a_killed_fork_server_is_named_as_the_cause():
    proc = start_in_own_group([*IXYPIPE, "run", str(FWD), "--json"])
    try:
        got = read_until(proc.stdout, r'^\{"type": "interval"', proc)
        [server] = [c for c in psutil.Process(proc.pid).children() if c.name() == FORK_SERVER_NAME]
        stages = server.children()
        assert {c.name() for c in stages} >= {"ixy-worker-0", "ixy-rx-p0-q0", "ixy-tx-p1-q0"}
        server.kill()
        out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1
    cause = (f"the stages' fork server (pid {server.pid}) died: killed by SIGKILL; every process it had started "
             "died with it")
    assert f"error: {cause}" in err, err
    s = summary_of(got + out)
    assert s["failures"][0] == cause, s["failures"]
    stage_deaths = s["failures"][1:]
    assert stage_deaths and all(re.fullmatch(r"stage \S+ \(pid \d+\) died with the fork server", f)
                                for f in stage_deaths if f.startswith("stage ")), stage_deaths
    assert "exit code 255" not in err
    assert s["in_flight"] == 0 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert leftovers(proc.pid) == []
    _, alive = psutil.wait_procs(stages, timeout=20)
    assert alive == []


def test_a_killed_supervisor_takes_every_stage_with_it():
    """Stages ignore SIGTERM now; SIGKILL of the supervisor still ends them all (parent-death signals:
    supervisor -> fork server -> stages; the software 82599 leaves when orphaned)."""
    proc = start_in_own_group([*IXYPIPE, "run", str(FWD), "--json"])
    try:
        read_until(proc.stdout, r'^\{"type": "interval"', proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 7, [c.name() for c in family]       # fork server, 5 stages, simulator (+ tracker)
        proc.kill()
        proc.communicate(timeout=60)
        _, alive = psutil.wait_procs(family, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        remove_stale()                         # the arenas of the killed supervisor
    assert alive == [], [(p.pid, p.name()) for p in alive]


# ---- restarted workers ------------------------------------------------------------------------------------
DIES_ONCE = '''
import os
import pathlib

marker = pathlib.Path(__file__).with_suffix(".died")
calls = 0

def touch(batch):
    global calls
    calls += 1
    batch.data[batch.idx, 1] += 1
    if WHEN == "running" and calls == 50 and not marker.exists():
        marker.write_text("died")
        os._exit(9)

def teardown(ctx):
    if WHEN == "draining" and not marker.exists():      # after its loop ended: the stop has begun
        marker.write_text("died")
        os._exit(9)
'''


@pytest.mark.parametrize("when", ["running", "draining"])
def test_under_restart_a_death_while_running_or_while_draining_ends_the_run_alike(tmp_path, when):
    """The same worker file dies once, either while the run forwards or in the drain (its teardown): both runs
    end alike (exit 0, one restart, accounting balanced), and the restarted worker reports its own figures."""
    (tmp_path / "dies.py").write_text(DIES_ONCE.replace("WHEN", repr(when)))
    pipeline = variant(tmp_path, pipeline_keys={"worker_user": '"root"'}, on_stage_death='"restart"',
                       function='"dies.py:touch"')
    proc = start_in_own_group([*IXYPIPE, "run", str(pipeline), "--json"])
    try:
        if when == "running":
            err = read_until(proc.stderr, r"restarting worker-0 \(it died: exit code 9\)", proc)
            got = ""
            for _ in range(3):                 # intervals with the replacement (and the one with the restart)
                got += read_until(proc.stdout, r'^\{"type": "interval"', proc)
        else:
            err = ""
            got = read_until(proc.stdout, r'^\{"type": "interval"', proc)
        os.killpg(proc.pid, signal.SIGTERM)
        out, more = finish(proc)
        err += more
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert (tmp_path / "dies.died").exists()
    assert proc.returncode == 0, err
    assert re.search(r"restarting worker-0 \(it died: exit code 9\) in 0\.1 s", err), err
    s = summary_of(got + out)
    assert s["restarts"] == 1 and s["stop_reason"] == "SIGTERM"
    balanced(s)
    check_sinks(s)
    intervals = intervals_of(got + out)
    assert intervals
    for interval in intervals:
        w = interval["stages"]["worker-0"]
        assert 0.0 <= w["idle"] <= 1.0 and w["batches"] >= 0 and w["stalls"] >= 0, w


def test_a_restarted_row_counts_from_zero_in_the_interval_figures():
    before = np.zeros(1, STAGE_ROW_DTYPE)[0]
    before["pid"], before["loops"], before["idle_loops"], before["batches"], before["drop_worker"] = 100, 9000, 8000, 50, 7
    same = before.copy()
    same["loops"], same["idle_loops"] = 9100, 8050
    assert stagetable.interval_base(before, same) is before
    taken_over = before.copy()                  # a new process: its own 300 loops, 200 idle; drops add up
    taken_over["pid"], taken_over["loops"], taken_over["idle_loops"], taken_over["batches"] = 200, 300, 200, 4
    taken_over["drop_worker"] = 9
    base = stagetable.interval_base(before, taken_over)
    assert (int(base["loops"]), int(base["idle_loops"]), int(base["batches"])) == (0, 0, 0)
    assert int(base["drop_worker"]) == 7 and int(before["loops"]) == 9000       # before itself is untouched
    fewer = before.copy()                       # the same pid number reused, but fewer loops: a new process too
    fewer["loops"], fewer["idle_loops"] = 10, 5
    assert int(stagetable.interval_base(before, fewer)["loops"]) == 0


# ---- traffic that cannot be paused ------------------------------------------------------------------------
HOLDS = '''
import pathlib
import time

hold = pathlib.Path(__file__).with_suffix(".hold")

def touch(batch):
    batch.data[batch.idx, 1] += 1
    while hold.exists():                # the test holds the pipeline back: the rings and the NIC ring fill
        time.sleep(0.01)
'''

SERVED = """
[pipeline]
name = "served"
batch_size = 256
ring_size = 1024
buffers_per_queue = 4096
hugepages = "require"
worker_user = "root"
stall_timeout = 600.0

[[ports]]
name = "p0"
driver = "ixgbe"
pci = "0000:5e:00.0"
forward_to = "p1"
rx_ring_size = 512
tx_ring_size = 512

[[ports]]
name = "p1"
driver = "ixgbe"
pci = "0000:5e:00.1"
forward_to = "p0"
rx_ring_size = 512
tx_ring_size = 512

[workers]
function = "holds.py:touch"
"""


class StageRows:
    """The stage table of the running pipeline of supervisor ``pid``, read as ``ixypipe top`` does."""

    def __init__(self, pid: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (found := [p for p in find_pipelines() if p.pid == pid]):
            assert time.monotonic() < deadline, f"no arena of pipeline {pid}"
            time.sleep(0.1)
        self.arena = Arena.attach(found[0].path)
        self.rows = {s["name"]: s["row"] for s in read_plan_info(self.arena)["stages"]}
        self.table = stagetable.table(self.arena)

    def rx(self, field: str) -> list[int]:
        return [int(self.table[row][field]) for name, row in self.rows.items() if name.startswith("rx-")]

    def wait(self, what: str, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"never: {what}"
            time.sleep(0.02)

    def close(self) -> None:
        self.table = None
        self.arena.close()


@needs_root
@needs_hugepages
def test_a_stop_with_live_traffic_takes_nothing_more_from_the_nics(tmp_path):
    """ixgbe ports on `ixypipe sim serve`'s ports, whose generators nobody pauses: once the supervisor asks the
    RX stages to drain they take no frame more from their NIC (what is still in a NIC ring was never
    received), pass on what they hold, and the run ends with its accounting.  The worker is held back first,
    so every RX stage holds a batch and the NIC rings fill; the number received at the stop is then known
    exactly, and it must be the number in the accounting."""
    env = dict(os.environ, PYTHONPATH=str(Path(ixypipe.__file__).parents[1]))
    serve = subprocess.Popen([*IXYPIPE, "sim", "serve", "--ports", "2", "--rate", "100k", "--expect-touch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    run = rows = None
    hold = tmp_path / "holds.hold"
    try:
        first = serve.stdout.readline()
        assert first.startswith("port p0  0000:5e:00.0  sysfs "), first + serve.stderr.read()
        root = first.split("sysfs ")[1].split("/bus/pci/devices/")[0]
        (tmp_path / "holds.py").write_text(HOLDS)
        (tmp_path / "served.toml").write_text(SERVED)
        run = start_in_own_group(["unshare", "-m", "sh", "-c",
                                  f'mount --bind {root}/bus/pci/devices /sys/bus/pci/devices && exec "$0" "$@"',
                                  *IXYPIPE, "run", str(tmp_path / "served.toml"), "--json"])
        got = read_until(run.stdout, r'^\{"type": "interval"', run)
        rows = StageRows(run.pid)
        hold.write_text("hold")
        rows.wait("every RX stage holds a batch for the held-back worker", lambda: all(n > 0 for n in rows.rx("held")))
        os.killpg(run.pid, signal.SIGTERM)
        rows.wait("the supervisor asks the RX stages to drain",
                  lambda: all(c == STAGE_CMD_DRAIN for c in rows.rx("command")))
        received = sum(rows.rx("packets_in"))
        assert all(n > 0 for n in rows.rx("held"))        # still held back: nothing was taken since
        released = time.monotonic()
        hold.unlink()
        out, err = finish(run)
        took = time.monotonic() - released
    finally:
        hold.unlink(missing_ok=True)
        if rows is not None:
            rows.close()
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)
    print(f"\nSIGTERM to the group with unpausable traffic: ixypipe run exited {took:.2f} s after the worker "
          f"was let go (the stop had been asked before)")
    assert run.returncode == 0, err + out[-3000:]
    s = summary_of(got + out)
    assert s["stop_reason"] == "SIGTERM"
    balanced(s)
    assert s["received"] == received             # not one frame taken from a NIC after the drain was asked
    assert s["drops"]["stage_died"] == 0 and s["transmitted"] == received
    assert "still delivered frames" not in err
