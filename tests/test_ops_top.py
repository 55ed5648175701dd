"""ixypipe top: the plan region, finding pipelines, the figures, and the live screen under a pseudo-terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ixypipe.layout import PLAN_INFO_REGION, STAGE_STATE_RUNNING
from ixypipe.memory.arena import SHM_DIR, Arena
from ixypipe.nic.device import PortSpec
from ixypipe.ops.top import Observer, PortView, Sample, StageView, TopView, compute_view, render, view_json
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.plan import build_plan
from ixypipe.pipeline.planinfo import PlanInfoError, publish_port_drops, read_plan_info, write_plan_info
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


def test_waits_on_out_only_when_the_ring_shown_is_full(pipeline_arena):
    """A worker that found its output full in many loops waits on it only while the level top shows agrees
    (issue #24: "WAITS ON out w2>tx-p0-q0" beside that ring at 0)."""
    arena, plan = pipeline_arena
    table = stagetable.table(arena)
    with Observer(arena.path) as obs:
        table["state"] = STAGE_STATE_RUNNING
        before = obs.sample()
        worker = table[2:3]
        worker["loops"] += 100
        worker["idle_loops"] += 60
        worker["stalls"] += 50                            # half its loops found an output full
        empty = compute_view(obs, before, obs.sample())
        Ring.attach(arena, "w0>tx-p1-q0").enqueue(np.arange(64, dtype=np.uint32))
        full = compute_view(obs, before, obs.sample())
    waits = {s.name: s.waits_on for s in empty.stages}
    assert waits["worker-0"] == ""                        # outputs at 0/64: not "out ..."
    assert {n: f for n, f, _ in empty.rings}["w0>tx-p1-q0"] == 0
    assert {s.name: s.waits_on for s in full.stages}["worker-0"] == "out w0>tx-p1-q0"
    assert {n: f for n, f, _ in full.rings}["w0>tx-p1-q0"] == 64


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


def test_view_rates_drops_waits_ring_fill_exact(pipeline_arena):
    arena, plan = pipeline_arena
    table = stagetable.table(arena)
    with Observer(arena.path) as obs:
        counters = stagetable.CounterWriter(arena, 2)              # the worker's named counters
        counters.publish({"dns dropped": 10})
        table["state"] = STAGE_STATE_RUNNING
        before = obs.sample()
        long_name = "udp packets seen by this worker on any port of the pipeline"
        counters.publish({"dns dropped": 30, long_name: 4})
        publish_port_drops(arena, ["p0", "p1"], {"p0": {"rx_missed": 5, "rx_too_long": 0}})
        rx0, rx1, worker, tx1 = table[0:1], table[1:2], table[2:3], table[4:5]
        rx0["packets_in"] += 2_000_000
        rx0["bytes_in"] += 2_000_000 * 60
        rx0["loops"] += 100
        rx0["idle_loops"] += 25
        rx0["drop_bad_packet"] += 2
        rx1["loops"] += 10
        rx1["idle_loops"] += 10
        table[3:4]["loops"] += 100                                 # tx-p0-q0: a few stalls, mostly no input
        table[3:4]["idle_loops"] += 90
        table[3:4]["stalls"] += 2
        tx1["packets_out"] += 1_000_000
        tx1["bytes_out"] += 1_000_000 * 1500
        tx1["loops"] += 10
        tx1["stalls"] += 3
        worker["drop_no_route"] += 7
        worker["loops"] += 10
        worker["idle_loops"] += 9
        worker["cpu"] = 1
        Ring.attach(arena, "rx-p0-q0>w0").enqueue(np.arange(16, dtype=np.uint32))
        after = obs.sample()
        before = Sample(0.0, before.rows, before.ring_fill, before.cpu_percent, before.counters, before.port_drops)
        after = Sample(2.0, after.rows, after.ring_fill, {"worker-0": 37.0}, after.counters, after.port_drops,
                       [(4242, 1, 99.0)])
        view = compute_view(obs, before, after)
    p0, p1 = view.ports
    assert (p0.rx_pps, p0.rx_mbit, p0.rx_packets) == (1e6, (120e6 + 40e6) * 8 / 2 / 1e6, 2_000_000)
    assert (p1.tx_pps, p1.tx_mbit, p0.tx_pps) == (0.5e6, (1500e6 + 20e6) * 8 / 2 / 1e6, 0.0)
    assert p0.drops == {"missed": 5, "bad_packet": 2} and p1.drops == {}     # the port's and its stages'
    stages = {s.name: s for s in view.stages}
    assert stages["rx-p0-q0"].idle == 0.25 and stages["rx-p0-q0"].in_pps == 1e6
    assert stages["worker-0"].drops == {"no_route": 7} and stages["worker-0"].state == "running"
    assert stages["worker-0"].cpu_percent == 37.0 and stages["worker-0"].cpu == 1
    assert {n: s.waits_on for n, s in stages.items()} == {
        "rx-p0-q0": "", "rx-p1-q0": "NIC p1 RX q0", "worker-0": "in 2 rings", "tx-p0-q0": "in w0>tx-p0-q0",
        "tx-p1-q0": "NIC p1 TX q0"}
    assert view.drops == {"worker": 0, "worker_error": 0, "bad_packet": 2, "no_route": 7, "stage_died": 0,
                          "duplicate": 0, "bad_index": 0}
    assert view.rings[0] == ("rx-p0-q0>w0", 16, 64)
    assert [(n.pid, n.cpu, n.cpu_percent, n.ports) for n in view.nics] == [(4242, 1, 99.0, ["p0", "p1"])]
    assert view.counters == {"dns dropped": (30, 10.0), long_name: (4, 2.0)}
    doc = view_json(view)              # keyed by name, counters and their rates apart, as run's intervals
    assert doc["type"] == "top" and list(doc["ports"]) == ["p0", "p1"] and doc["ports"]["p0"]["rx_pps"] == 1e6
    assert doc["stages"]["worker-0"]["drops"] == {"no_route": 7} and "name" not in doc["stages"]["worker-0"]
    assert doc["rings"]["rx-p0-q0>w0"] == {"entries": 16, "capacity": 64}
    assert doc["counters"] == {"dns dropped": 30, long_name: 4}
    assert doc["counter_rates"] == {"dns dropped": 10.0, long_name: 2.0}
    lines = render(view, 80, 50)
    assert lines[0].startswith(f"ixypipe top - demo (pid {os.getpid()}), up ")
    assert "PORT           RX    Mbit/s         TX    Mbit/s  DROPS since start" in lines
    assert "p0      1.00 Mpps     640.0      0 pps       0.0  missed 5 bad_packet 2" in lines
    assert "p1          0 pps       0.0 500.0 kpps    6080.0  -" in lines
    assert "model     4242   1    99%  p0 p1" in lines
    assert "STAGE    CPU  CPU%  IDLE         IN        OUT  WAITS ON          DROPS" in lines
    assert "rx-p0-q0   0    0%   25%  1.00 Mpps      0 pps  busy              bad_packet 2" in lines
    assert "worker-0   1   37%   90%      0 pps      0 pps  in 2 rings        no_route 7" in lines
    assert "tx-p1-q0   0    0%    0%      0 pps 500.0 kpps  NIC p1 TX q0      -" in lines
    assert "rx-p0-q0>w0          16/64   25%" in lines
    assert "drops since start: bad_packet 2, no_route 7" in lines
    assert f"dns dropped{' ' * 39}{30:>16}{10:>12}" in lines
    assert lines[lines.index(long_name) + 1] == f"{' ' * 50}{4:>16}{2:>12}"
    assert all(len(line) <= 80 for line in lines) and len(lines) <= 50


def test_render_fits_any_size_title_first():
    view = TopView("p" * 60, 1, 1.0, 5.0,
                   [PortView(f"port{i}", "sim", 1e6, 672.0, 1e6, 672.0, 10, 10) for i in range(4)],
                   [StageView(f"worker-{i}", "worker", i, "running", 1e3, 1e3, 0.5, 10.0, {}) for i in range(30)],
                   [(f"rx-port0-q0>w{i}", 1, 1024) for i in range(30)], counters={"c": (1, 1.0)})
    for width, height in ((80, 24), (40, 10), (200, 50), (80, 8)):
        lines = render(view, width, height)
        assert len(lines) <= height and all(len(line) <= width for line in lines)
        assert lines[0].startswith("ixypipe top - ppp"[:width])
        assert any(line.startswith("port0") for line in lines)            # ports first when space is short
    lines = render(view, 80, 24)
    assert "... 14 more stages (a taller terminal shows them)" in lines and not any("RING" in x for x in lines)
    assert len(render(view)) == 1 + 5 + 31 + 1 + 2 + 31 + 5                # no limits: all of it with blanks


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


def start_fwd() -> subprocess.Popen:
    """pipelines/fwd.toml running (up, and packets flowing), in a session of its own."""
    proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", str(REPO / "pipelines" / "fwd.toml"),
                             "--duration", "300"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:     # up, and packets flowing
        found = [p for p in find_pipelines() if p.pid == proc.pid]
        if found:
            with Observer(found[0].path) as obs:
                if obs.sample().rows["packets_in"].sum() > 0:
                    return proc
        time.sleep(0.2)
    stop_fwd(proc)
    raise AssertionError(f"the pipeline did not come up: {proc.stderr.read().decode()[-2000:]}")


def stop_fwd(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    proc.stderr.close()


@pytest.fixture(scope="module")
def fwd_runs():
    """The pipelines the live tests of this module watch: one, shared, unless a test ended it."""
    runs: list[subprocess.Popen] = []
    yield runs
    for proc in runs:
        stop_fwd(proc)


@pytest.fixture
def running_fwd(fwd_runs):
    """A running fwd.toml (the module's shared one; a new one when a test before stopped it)."""
    if not fwd_runs or fwd_runs[-1].poll() is not None:
        fwd_runs.append(start_fwd())
    return fwd_runs[-1]


def _top_in_pty(pid: int, columns: int, rows: int, *args: str) -> tuple[subprocess.Popen, int]:
    """'ixypipe top PID' on a new pseudo-terminal of columns x rows that is its controlling terminal."""
    master, slave = os.openpty()
    _set_size(master, columns, rows)
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm"
    proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "top", str(pid), "--interval", "0.5", *args],
                            stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    return proc, master


def _set_size(fd: int, columns: int, rows: int) -> None:
    """What a terminal window does when resized: the kernel then sends SIGWINCH to the foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


FRAME_LINE = re.compile(rb"\x1b\[(\d+);1H([^\x1b]*)\x1b\[K")


def _frames(shown: bytes) -> list[dict[int, str]]:
    """Each complete frame drawn: row -> text (top draws every line at its own row, then clears the rest)."""
    frames: list[dict[int, str]] = []
    for m in FRAME_LINE.finditer(shown):
        row = int(m.group(1))
        if row == 1:
            frames.append({})
        if frames:
            frames[-1][row] = m.group(2).decode(errors="replace")
    return frames


def _read_frame(fd: int, needles: list[str], timeout: float = 60, columns: int | None = None) -> dict[int, str]:
    """Read until a frame shows every needle (and has a title of ``columns`` characters); that frame."""
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += _read_until(fd, [b"\x00never"], 0.3)
        for frame in reversed(_frames(seen)):
            text = "\n".join(frame.values())
            if all(n in text for n in needles) and (columns is None or len(frame.get(1, "")) == columns):
                return frame
    raise AssertionError(f"no frame with {needles}; last output {seen[-3000:]!r}")


def _assert_fits(frame: dict[int, str], columns: int, rows: int) -> None:
    assert max(frame) <= rows, frame
    assert all(len(line) <= columns for line in frame.values()), [x for x in frame.values() if len(x) > columns]


def test_top_fits_80x24_and_200x50_and_follows_resizes(running_fwd):
    pid = running_fwd.pid
    proc, fd = _top_in_pty(pid, 80, 24)
    try:
        want = ["PORT", "SIM NIC", "STAGE", "RING", "rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0",
                "w0>tx-p1-q0", "drops since start"]
        frame = _read_frame(fd, want)
        _assert_fits(frame, 80, 24)
        assert frame[1].startswith(f"ixypipe top - fwd (pid {pid}), up ")            # the title line is there
        rows = list(frame.values())
        assert [r.split()[0] for r in rows if r.split()[:1] in (["p0"], ["p1"])] == ["p0", "p1"]
        [model] = [r for r in rows if r.startswith("model")]                       # the software NIC's row
        sim = [c for c in psutil.Process(pid).children(recursive=True) if c.name() == "ixypipe-sim"]
        assert [int(model.split()[1])] == [c.pid for c in sim] and model.endswith("p0 p1")
        assert sum(1 for r in rows if r.split()[:1] and r.split()[0].startswith(("rx-", "tx-", "worker-"))
                   and ">" not in r.split()[0]) == 5

        _set_size(fd, 200, 50)                                                    # a bigger window
        frame = _read_frame(fd, want)
        _assert_fits(frame, 200, 50)
        assert frame[1].startswith(f"ixypipe top - fwd (pid {pid})")

        _set_size(fd, 60, 12)                                                     # a small one: it follows
        frame = _read_frame(fd, ["PORT", "p1", "model", "STAGE"], columns=60)     # the title cut at 60
        _assert_fits(frame, 60, 12)
        assert frame[1].startswith("ixypipe top - fwd") and not any(v.startswith("RING") for v in frame.values())
        os.write(fd, b"q")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(fd)


def test_top_once_and_json_for_scripts(running_fwd):
    pid = running_fwd.pid
    res = subprocess.run([sys.executable, "-m", "ixypipe", "top", str(pid), "--once", "--json", "--interval", "0.5"],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    [line] = res.stdout.splitlines()                                              # one object, one interval
    doc = json.loads(line)
    assert doc["type"] == "top" and doc["pipeline"] == "fwd" and doc["pid"] == pid
    assert list(doc["ports"]) == ["p0", "p1"] and all(p["rx_packets"] > 0 for p in doc["ports"].values())
    assert list(doc["stages"]) == ["rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0"]
    assert all({"cpu_percent", "idle", "waits_on", "in_pps", "drops"} <= set(s) for s in doc["stages"].values())
    [nic] = doc["nics"]
    assert nic["ports"] == ["p0", "p1"] and psutil.Process(nic["pid"]).name() == "ixypipe-sim"
    assert set(doc["rings"]) == {"rx-p0-q0>w0", "rx-p1-q0>w0", "w0>tx-p0-q0", "w0>tx-p1-q0"}
    assert all(r["capacity"] > 0 for r in doc["rings"].values())
    text = subprocess.run([sys.executable, "-m", "ixypipe", "top", str(pid), "--once", "--interval", "0.5"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert text.returncode == 0 and text.stdout.startswith(f"ixypipe top - fwd (pid {pid})")
    assert "\x1b" not in text.stdout                                               # no terminal: plain text


def test_top_live_quits_on_q_ctrl_c_and_pipeline_end(running_fwd):
    pid = running_fwd.pid
    # q: a frame with both ports, every stage and real traffic, then a clean exit
    child, fd = _top_under_pty(pid)
    shown = _read_until(fd, [b"rx-p0-q0", b"tx-p1-q0", b"w0>tx-p1-q0", b"drops since start"], 30)
    assert f"fwd (pid {pid})".encode() in shown, shown[-2000:]
    assert shown.startswith(b"\x1b[?1049h")                                     # alternate screen
    os.write(fd, b"q")
    code, rest = _wait_exit(child, fd)
    assert code == 0 and rest.endswith(b"\x1b[?25h\x1b[?1049l")                # terminal restored

    # Ctrl-C typed on the terminal
    child, fd = _top_under_pty(pid)
    _read_until(fd, [b"drops since start"], 30)
    os.write(fd, b"\x03")
    code, rest = _wait_exit(child, fd)
    assert code == 0 and b"Traceback" not in rest and rest.endswith(b"\x1b[?1049l")

    # the pipeline stops: top says so and exits by itself
    child, fd = _top_under_pty(pid)
    _read_until(fd, [b"drops since start"], 30)
    running_fwd.send_signal(signal.SIGINT)
    code, rest = _wait_exit(child, fd, timeout=60)
    assert code == 0 and f"pipeline fwd (pid {pid}) has ended".encode() in rest
    assert running_fwd.wait(60) == 0
