"""ixypipe top: the plan region, finding pipelines, the figures, and the live screen under a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ixypipe.layout import PLAN_INFO_REGION, STAGE_STATE_RUNNING
from ixypipe.memory.arena import SHM_DIR, Arena
from ixypipe.nic.device import PortSpec
from ixypipe.ops.top import Observer, Sample, compute_view, render
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.plan import build_plan
from ixypipe.pipeline.planinfo import PlanInfoError, read_plan_info, write_plan_info
from ixypipe.pipeline.running import NoPipelineError, choose_pipeline, find_pipelines
from ixypipe.rings.spsc import Ring

REPO = Path(__file__).resolve().parent.parent


def small_plan():
    return build_plan("demo", "", "", [PortSpec("p0", "sim"), PortSpec("p1", "sim")], [1, 0], workers=1,
                      batch_size=32, ring_size=64, buffers_per_queue=64, worker_function="touch",
                      worker_per_packet=False, worker_base_dir=".", distribute="flow")


@pytest.fixture
def pipeline_arena():
    """A packet arena laid out as a supervisor's (stage table, forward rings, plan), in /dev/shm."""
    arena = Arena.create(1 << 20, hugepages_mode="never", tag="pkt")
    plan = small_plan()
    stagetable.create(arena, len(plan.stages))
    for name in plan.forward_rings():
        Ring.create(arena, name, 64)
    write_plan_info(arena, plan)
    yield arena, plan
    arena.destroy()


def test_plan_info_round_trip_and_cpu_update(make_arena):
    arena = make_arena(1 << 20, "never")
    plan = small_plan()
    write_plan_info(arena, plan, pid=4242)
    info = read_plan_info(arena)
    assert info["name"] == "demo" and info["pid"] == 4242 and info["ports"] == ["p0", "p1"]
    assert [(s["name"], s["role"], s["row"], s["port"], s["cpu"]) for s in info["stages"]] == [
        ("rx-p0-q0", "rx", 0, 0, -1), ("rx-p1-q0", "rx", 1, 1, -1), ("worker-0", "worker", 2, -1, -1),
        ("tx-p0-q0", "tx", 3, 0, -1), ("tx-p1-q0", "tx", 4, 1, -1)]
    assert info["rings"] == ["rx-p0-q0>w0", "rx-p1-q0>w0", "w0>tx-p0-q0", "w0>tx-p1-q0"]
    for i, s in enumerate(plan.stages):
        s.cpu = i % 2
    write_plan_info(arena, plan, pid=4242)          # after placement: same region, new CPUs
    assert [s["cpu"] for s in read_plan_info(arena)["stages"]] == [0, 1, 0, 1, 0]
    assert [r.name for r in arena.regions()].count(PLAN_INFO_REGION) == 1


def test_plan_info_errors_name_the_problem(make_arena):
    arena = make_arena(1 << 20, "never")
    with pytest.raises(PlanInfoError, match=f"has no {PLAN_INFO_REGION} region"):
        read_plan_info(arena)
    write_plan_info(arena, small_plan())
    region = arena.region(PLAN_INFO_REGION)
    arena.view(region)[:8].view("<u8")[0] = region.size * 2
    with pytest.raises(PlanInfoError, match=f"claims {region.size * 2} bytes of JSON"):
        read_plan_info(arena)
    plan = small_plan()
    plan.name = "x" * 70000
    with pytest.raises(PlanInfoError, match="more than the 65528 the plan.json region holds"):
        write_plan_info(arena, plan)


def test_find_and_choose_by_pid_and_name(pipeline_arena):
    arena, _ = pipeline_arena
    found = [p for p in find_pipelines([SHM_DIR]) if p.path == arena.path]
    assert [(p.pid, p.name) for p in found] == [(os.getpid(), "demo")]
    assert choose_pipeline(str(os.getpid()), [SHM_DIR]).path == arena.path
    with pytest.raises(NoPipelineError, match="no running pipeline has pid or name 'nosuch'; running: .*demo"):
        choose_pipeline("nosuch", [SHM_DIR])


def test_no_pipeline_message(tmp_path):
    with pytest.raises(NoPipelineError, match=re.escape(f"with a live owner in {tmp_path}); start one with 'ixypipe run")):
        choose_pipeline(None, [tmp_path])


def test_view_rates_drops_ring_fill_exact(pipeline_arena):
    arena, plan = pipeline_arena
    table = stagetable.table(arena)
    with Observer(arena.path) as obs:
        counters = stagetable.CounterWriter(arena, 2)              # the worker's named counters
        counters.publish({"dns dropped": 10})
        before = obs.sample()
        long_name = "udp packets seen by this worker on any port of the pipeline"
        counters.publish({"dns dropped": 30, long_name: 4})
        rx0, worker, tx1 = table[0:1], table[2:3], table[4:5]
        rx0["packets_in"] += 2_000_000
        rx0["bytes_in"] += 2_000_000 * 60
        rx0["loops"] += 100
        rx0["idle_loops"] += 25
        tx1["packets_out"] += 1_000_000
        tx1["bytes_out"] += 1_000_000 * 1500
        worker["drop_no_route"] += 7
        worker["state"] = STAGE_STATE_RUNNING
        worker["cpu"] = 1
        Ring.attach(arena, "rx-p0-q0>w0").enqueue(np.arange(16, dtype=np.uint32))
        after = obs.sample()
        before = Sample(0.0, before.rows, before.ring_fill, before.cpu_percent, before.counters)
        after = Sample(2.0, after.rows, after.ring_fill, {"worker-0": 37.0}, after.counters)
        view = compute_view(obs, before, after)
    p0, p1 = view.ports
    assert (p0.rx_mpps, p0.rx_mbit, p0.rx_packets) == (1.0, (120e6 + 40e6) * 8 / 2 / 1e6, 2_000_000)
    assert (p1.tx_mpps, p1.tx_mbit, p0.tx_mpps) == (0.5, (1500e6 + 20e6) * 8 / 2 / 1e6, 0.0)
    stages = {s.name: s for s in view.stages}
    assert stages["rx-p0-q0"].idle == 0.25 and stages["rx-p0-q0"].in_mpps == 1.0
    assert stages["worker-0"].drops == {"no_route": 7} and stages["worker-0"].state == "running"
    assert stages["worker-0"].cpu_percent == 37.0 and stages["worker-0"].cpu == 1
    assert view.drops == {"worker": 0, "worker_error": 0, "bad_packet": 0, "no_route": 7, "stage_died": 0}
    assert view.rings[0] == ("rx-p0-q0>w0", 16, 64)
    text = "\n".join(render(view))
    assert "p0          1.000     640.00    0.000       0.00      2000000            0" in text
    assert "worker-0    worker   1 running     0.000    0.000 100%   37%  no_route=7" in text
    assert "rx-p0-q0>w0                  16/64   25%" in text
    assert view.counters == {"dns dropped": (30, 10.0), long_name: (4, 2.0)}
    assert f"dns dropped{' ' * 39}{30:>16}{10:>14}" in text and f"{long_name}\n{' ' * 50}{4:>16}{2:>14}" in text
    assert all(len(line) <= 80 for line in render(view, 80))


# ---- the real thing under a pseudo-terminal --------------------------------------------------

def _read_until(fd: int, needles: list[bytes], timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(n in seen for n in needles):
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break           # the child closed the terminal
    return seen


def _top_under_pty(pid: int) -> tuple[int, int]:
    """Start 'ixypipe top PID' with a pseudo-terminal as its controlling terminal."""
    child, fd = pty.fork()
    if child == 0:
        os.chdir(REPO)          # run this tree's ixypipe, whatever is installed
        os.execvp(sys.executable, [sys.executable, "-m", "ixypipe", "top", str(pid), "--interval", "0.5"])
    return child, fd


def _wait_exit(child: int, fd: int, timeout: float = 10.0) -> tuple[int, bytes]:
    rest = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rest += _read_until(fd, [b"\x00never"], 0.2)
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            os.close(fd)
            return os.waitstatus_to_exitcode(status), rest
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os.close(fd)
    raise AssertionError(f"ixypipe top did not exit; it printed {rest[-500:]!r}")


@pytest.fixture
def running_fwd():
    proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", str(REPO / "pipelines" / "fwd.toml"),
                             "--duration", "120"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:     # up, and packets flowing
            found = [p for p in find_pipelines() if p.pid == proc.pid]
            if found:
                with Observer(found[0].path) as obs:
                    if obs.sample().rows["packets_in"].sum() > 0:
                        break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the pipeline did not come up: {proc.stderr.read().decode()[-2000:]}")
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stderr.close()


def test_top_live_quits_on_q_ctrl_c_and_pipeline_end(running_fwd):
    pid = running_fwd.pid
    # q: a frame with both ports, every stage and real traffic, then a clean exit
    child, fd = _top_under_pty(pid)
    shown = _read_until(fd, [b"rx-p0-q0", b"tx-p1-q0", b"w0>tx-p1-q0", b"drops by reason"], 30)
    assert f"pipeline fwd (pid {pid})".encode() in shown, shown[-2000:]
    lines = shown.replace(b"\x1b[K", b"").decode(errors="replace").splitlines()
    port_rows = {ln.split()[0]: ln.split() for ln in lines if ln.split()[:1] in (["p0"], ["p1"])}
    assert set(port_rows) == {"p0", "p1"}
    assert all(int(row[5]) > 0 for row in port_rows.values()), port_rows    # RX packets counted
    assert shown.startswith(b"\x1b[?1049h")                                     # alternate screen
    os.write(fd, b"q")
    code, rest = _wait_exit(child, fd)
    assert code == 0 and rest.endswith(b"\x1b[?25h\x1b[?1049l")                # terminal restored

    # Ctrl-C typed on the terminal
    child, fd = _top_under_pty(pid)
    _read_until(fd, [b"drops by reason"], 30)
    os.write(fd, b"\x03")
    code, rest = _wait_exit(child, fd)
    assert code == 0 and b"Traceback" not in rest and rest.endswith(b"\x1b[?1049l")

    # the pipeline stops: top says so and exits by itself
    child, fd = _top_under_pty(pid)
    _read_until(fd, [b"drops by reason"], 30)
    running_fwd.send_signal(signal.SIGINT)
    code, rest = _wait_exit(child, fd, timeout=60)
    assert code == 0 and f"pipeline fwd (pid {pid}) has ended".encode() in rest
    assert running_fwd.wait(60) == 0
