"""Faults while running: dead stages and simulator, raising user code, and who maps what."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.runs import FWD, leftovers, start, summary_of, variant, wait_for_stats


def children_named(pid: int, name: str) -> list[psutil.Process]:
    return [c for c in psutil.Process(pid).children(recursive=True) if c.name() == name]


def stop(proc, sig=signal.SIGINT, timeout=40) -> tuple[str, str]:
    proc.send_signal(sig)
    return proc.communicate(timeout=timeout)


def run_a_few_seconds(pipeline) -> tuple:
    """``ixypipe run PIPELINE --json`` until three stats lines, then Ctrl-C: (process, stdout, stderr)."""
    proc = start([str(pipeline), "--json"])
    try:
        wait_for_stats(proc)
        for _ in range(2):
            proc.stdout.readline()
        out, err = stop(proc)
    finally:
        proc.kill()
    return proc, out, err


def test_restart_policy_replaces_a_killed_worker_and_counts_what_it_held(tmp_path):
    proc = start([str(variant(tmp_path, on_stage_death='"restart"')), "--json"])
    try:
        wait_for_stats(proc)
        [worker] = children_named(proc.pid, "ixy-worker-0")
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        replaced = []
        while time.monotonic() < deadline and not replaced:
            replaced = [w for w in children_named(proc.pid, "ixy-worker-0") if w.pid != worker.pid]
            time.sleep(0.2)
        assert replaced, "no new worker-0"
        for _ in range(3):                                  # a few more intervals with the new worker
            proc.stdout.readline()
        out, err = stop(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert re.search(r"restarting worker-0 \(it died: killed by SIGKILL\)", err), err
    s = summary_of(out)
    assert s["restarts"] == 1
    assert s["ok"] and s["in_flight"] == 0
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    # the sinks saw the traffic keep flowing after the restart
    assert s["sim"]["p0"]["sink_received"] == s["ports"]["p0"]["tx_packets"] > 0
    assert leftovers(proc.pid) == []


def test_killed_simulator_is_reported_and_everything_is_removed():
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        [sim] = children_named(proc.pid, "ixypipe-sim")
        os.kill(sim.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert re.search(rf"the software 82599 \(pid {sim.pid}\) died: killed by SIGKILL", err), err
    assert leftovers(proc.pid) == []
    _, alive = psutil.wait_procs(family, timeout=5)
    assert alive == []


RAISING = '''
calls = 0

def sometimes_raises(batch):
    global calls
    calls += 1
    if calls % 3 == 0:
        raise ValueError("user bug on every third batch")
    batch.data[batch.idx, 1] += 1
'''


def test_worker_exception_drops_the_batch_logs_once_and_keeps_running(tmp_path):
    (tmp_path / "buggy.py").write_text(RAISING)
    pipeline = variant(tmp_path, function='"buggy.py:sometimes_raises"')
    proc, out, err = run_a_few_seconds(pipeline)
    assert proc.returncode == 0, err
    s = summary_of(out)
    assert s["drops"]["worker_error"] > 0
    assert s["ok"] and s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert err.count("Traceback") == 1                                    # one traceback
    assert re.search(r"ValueError \(\S*buggy.py:8\) repeated \d+ times", err), err      # counted by kind
    # what got through was touched; what raised never reached a sink
    assert s["sim"]["p1"]["sink_untouched"] == 0


def test_workers_map_neither_the_bar_nor_the_descriptor_rings():
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        [worker] = children_named(proc.pid, "ixy-worker-0")
        [rx] = children_named(proc.pid, "ixy-rx-p0-q0")
        worker_maps = Path(f"/proc/{worker.pid}/maps").read_text()
        rx_maps = Path(f"/proc/{rx.pid}/maps").read_text()
        out, err = stop(proc)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # the RX stage maps the BAR (resource0) and the device arena with its descriptor rings ...
    assert "resource0" in rx_maps and re.search(r"ixypipe-\d+-dev-", rx_maps)
    # ... the worker only the packet arena
    assert re.search(r"ixypipe-\d+-pkt-", worker_maps)
    assert "resource0" not in worker_maps
    assert not re.search(r"ixypipe-\d+-dev-", worker_maps)


@pytest.mark.alone                  # a pipeline starting beside it would remove the stale files it checks
def test_after_kill_9_of_the_supervisor_nothing_runs_and_cleanup_removes_the_leftovers():
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        stages = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(stages) >= 6
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    _, alive = psutil.wait_procs([psutil.Process(p) for p in stages if psutil.pid_exists(p)], timeout=10)
    assert alive == []                          # stages and simulator die with their supervisor
    left = leftovers(proc.pid)
    assert len(left) == 3                       # the packet arena, its control file and the device arena
    res = subprocess.run([sys.executable, "-m", "ixypipe", "cleanup"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for path in left:
        assert f"removed {path}" in res.stdout
        assert not path.exists()
    assert re.search(rf"removed /dev/shm/ixypipe-sim-{proc.pid}-", res.stdout), res.stdout


HOSTILE = '''
import numpy as np

calls = 0

def hostile(batch):
    global calls
    calls += 1
    kind = calls % 5
    if kind == 1:                                   # lengths no buffer holds: TX drops them, never dies
        batch.bufs.length[batch.idx[:2]] = 60000
    elif kind == 2:                                 # verdicts that are not port numbers
        batch.out = np.full(batch.n, np.nan)
    elif kind == 3:                                 # reorder the buffers: refused
        batch.idx.sort()
    elif kind == 4:                                 # send a buffer to another pool: refused
        batch.bufs.pool_id[batch.idx] = 7
    batch.data[batch.idx, 1] += 1
'''


def test_a_hostile_worker_cannot_kill_a_stage_or_break_the_accounting(tmp_path):
    (tmp_path / "hostile.py").write_text(HOSTILE)
    pipeline = variant(tmp_path, function='"hostile.py:hostile"', expect_touch="false")
    proc, out, err = run_a_few_seconds(pipeline)
    assert proc.returncode == 0, err
    assert "stage failed" not in err
    s = summary_of(out)
    assert s["ok"] and s["in_flight"] == 0 and s["failures"] == []
    assert s["drops"]["bad_packet"] > 0                 # the over-long packets, dropped by TX
    assert s["drops"]["worker_error"] > 0               # the bad verdicts and the refused writes
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert "batch.out must stay an integer array" in err
    assert "read-only" in err                           # numpy's words for the refused writes
