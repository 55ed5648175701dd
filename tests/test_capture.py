"""ixypipe capture (issue 27, item 10): copies of a running pipeline's frames of one port in a pcap file.

The mirror ring's two copies (numpy, the reference, and the compiled one inside the RX/TX passes) are held to
each other; then ``ixypipe run pipelines/fwd.toml`` runs on software 82599 ports and captures of it are read
back and checked frame by frame against the generator's format (magic, generator, flow, sequence, checksum,
the worker's touch on TX), while the run's accounting stays exact; and every way a capture can be refused,
and a capture killed with SIGKILL, which must not leave its stage copying.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ixypipe.memory.arena import Arena, RegionSize
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.pcapfile import read_pcap
from ixypipe.pipeline import mirror, mirror_jit, stagetable
from ixypipe.pipeline.plan import build_plan
from ixypipe.pipeline.planinfo import read_plan_info
from ixypipe.pipeline.running import choose_pipeline
from ixypipe.sim.payload import SIM_MAGIC, SIM_PAYLOAD_OFF, SIM_REC_CSUM, SIM_REC_LEN, SIM_TOUCH_OFF
from ixypipe.sim.traffic import payload_checksum
from ixypipe.sim.world import GEN_MAC_PREFIX
from tests.support.outputschema import validated
from tests.support.runs import FWD, IXYPIPE, REPO, check_sinks, summary_of, variant
from tests.support.system import needs_hugepages

CEILING = 180            # seconds: generous, for a machine the whole team shares
FLOWS = 8                # fwd.toml's generators


def small_plan():
    return build_plan("demo", "", "", [PortSpec("p0", "sim"), PortSpec("p1", "sim")], [1, 0], workers=1,
                      batch_size=32, ring_size=64, buffers_per_queue=64, worker_function="touch",
                      worker_per_packet=False, worker_base_dir=".", distribute="flow")


def mirrored_arena(make_arena):
    """An arena with packet buffers and the mirror region of small_plan (blocks: rx-p0, rx-p1, tx-p0, tx-p1)."""
    arena = make_arena(16 << 20, "never")
    bufs = PacketBuffers.create(arena, 128, 256)
    plan = small_plan()
    mirror.create(arena, plan, bufs.max_data)
    return arena, bufs, plan


def frames_in(bufs, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(bufs.count)[:n].astype(np.uint32)
    bufs.data[idx] = rng.integers(0, 256, (n, bufs.max_data), dtype=np.uint8)
    bufs.length[idx] = rng.integers(1, bufs.max_data + 1, n)
    return idx


def test_the_compiled_copy_fills_the_ring_as_the_numpy_copy_and_counts_what_finds_it_full(make_arena):
    if not mirror_jit.AVAILABLE:
        pytest.skip("numba cannot load here: the compiled copy is off")
    arena, bufs, plan = mirrored_arena(make_arena)
    assert [s.name for s in mirror.tapped(plan.stages)] == ["rx-p0-q0", "rx-p1-q0", "tx-p0-q0", "tx-p1-q0"]
    numpy_tap = mirror.Tap.of(arena, plan.stages, plan.stages[0], bufs)         # block 0
    compiled_tap = mirror.Tap.of(arena, plan.stages, plan.stages[1], bufs)      # block 1
    worker_tap = mirror.Tap.of(arena, plan.stages, plan.stages[2], bufs)
    assert plan.stages[2].role == "worker" and worker_tap.length.shape == (1,)     # idle: no block of its own
    slots = len(numpy_tap.length)
    idx = frames_in(bufs, 100, seed=1)
    numpy_tap.copy(idx)                                  # nobody asked: nothing copied, nothing counted
    assert not mirror_jit.wanted(compiled_tap.compiled)
    assert mirror.counts(arena, 0) == mirror.counts(arena, 1) == (0, 0)
    for k in (0, 1):
        mirror.claim(arena, k, os.getpid())
    assert mirror_jit.wanted(compiled_tap.compiled)
    before = time.time_ns()
    for start in range(0, slots + 40, 100):             # batches of 100 until the ring is full and 40 more
        batch = np.resize(idx, min(100, slots + 40 - start))
        numpy_tap.copy(batch)
        mirror_jit.copy(compiled_tap.compiled, batch, len(batch))
    assert mirror.counts(arena, 0) == mirror.counts(arena, 1) == (slots, 40)
    got0, got1 = mirror.take(arena, 0), mirror.take(arena, 1)
    assert len(got0[0]) == len(got1[0]) == slots
    want = np.resize(idx, slots)
    assert got0[0].tolist() == got1[0].tolist() == bufs.length[want].tolist()
    for row, b in zip(got1[2], want, strict=True):      # the compiled copy's bytes are the frames'
        assert row[:bufs.length[b]].tobytes() == bufs.data[b, :bufs.length[b]].tobytes()
    assert all(row[:n].tobytes() == other[:n].tobytes() for row, other, n in zip(got0[2], got1[2], got0[0],
                                                                                 strict=True))
    for stamps in (got0[1], got1[1]):
        assert before <= stamps[0] and (np.diff(stamps) >= 0).all() and stamps[-1] <= time.time_ns()
    numpy_tap.copy(idx[:10])                            # room again: the next batch goes in after the taken ones
    assert mirror.counts(arena, 0) == (slots + 10, 40) and mirror.take(arena, 0)[0].tolist() == \
        bufs.length[idx[:10]].tolist()
    mirror.release(arena, 0, os.getpid())
    numpy_tap.copy(idx)
    assert mirror.counts(arena, 0) == (slots + 10, 40)    # released: copies stop


def test_reap_clears_the_request_of_a_capture_that_is_gone(make_arena):
    arena, _, _ = mirrored_arena(make_arena)
    mirror.claim(arena, 1, 4242)
    mirror.claim(arena, 3, os.getpid())
    assert mirror.reap(arena, lambda pid: pid == os.getpid()) == [4242]
    assert [int(mirror.control(arena, k)[mirror.C_REQUEST]) for k in range(4)] == [0, 0, 0, os.getpid()]
    assert mirror.reap(arena, lambda pid: True) == []


def test_frames_of_two_rings_go_out_in_time_order_even_when_one_is_published_late(tmp_path):
    """--direction both: a frame stays with the capture until MERGE_HOLD_S old, so an earlier one another
    stage publishes late still goes out before it; a capture's lock refuses a second capture of the rings."""
    from ixypipe.ops.capture import MERGE_HOLD_S, Capture, CaptureError
    from ixypipe.pipeline.planinfo import write_plan_info
    from ixypipe.pipeline.running import RunningPipeline

    plan = small_plan()
    regions = [*PacketBuffers.arena_regions(64, 256), *mirror.arena_regions(plan, 192), RegionSize(64 * 1024),
               RegionSize(64 * 1024)]
    size, control = Arena.split_size_for(regions)
    arena = Arena.create(size, hugepages_mode="never", tag="pkt", control_size=control)   # as a supervisor's
    try:
        bufs = PacketBuffers.create(arena, 64, 256)
        mirror.create(arena, plan, bufs.max_data)
        write_plan_info(arena, plan)
        target = RunningPipeline(arena.path, os.getpid(), "demo")
        with Capture(target, "p0", "both") as cap:
            assert cap.stage_names == ["rx-p0-q0", "tx-p0-q0"]
            with pytest.raises(CaptureError, match="port p0 .rx-p0-q0. of pipeline demo is being captured by"):
                Capture(target, "p0", "rx")
            cap.start()
            rx, tx = (mirror.Tap.of(arena, plan.stages, s, bufs) for s in plan.stages if s.name in cap.stage_names)
            bufs.write_packet(0, b"A" * 60)
            bufs.write_packet(1, b"B" * 70)
            bufs.write_packet(2, b"C" * 80)
            rx.copy(np.array([0], np.uint32))                        # A, stamped now
            now = int(rx.stamp[0])
            lengths, _, _ = cap.take(None)
            assert len(lengths) == 0                                 # A waits for earlier frames of tx
            tx.copy(np.array([1], np.uint32))
            tx.stamp[0] = now - 1000                                 # B: stamped before A, published after
            rx.copy(np.array([2], np.uint32))
            rx.stamp[1] = now - int(10 * MERGE_HOLD_S * 1e9)        # C: long ago (as if the ring were slow)
            lengths, stamps, rows = cap.take(None)
            assert lengths.tolist() == [80]                          # C is old enough; A and B wait
            lengths, stamps, rows = cap.take(None, final=True)       # the end: all that waits, in time order
            assert lengths.tolist() == [70, 60] and stamps.tolist() == [now - 1000, now]
            assert rows[0, :70].tobytes() == b"B" * 70 and rows[1, :60].tobytes() == b"A" * 60
        assert int(mirror.control(arena, 0)[mirror.C_REQUEST]) == 0     # closed: requests withdrawn
        with Capture(target, "p0", "rx"):                            # and the lock let go
            pass
    finally:
        arena.destroy()


# ---- against a running pipeline ---------------------------------------------------------------------

def ixypipe(*args: str, timeout: float = CEILING) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


class Running:
    """``ixypipe run PIPELINE --json`` with stdout in a file (a pipe nobody reads would fill up)."""

    def __init__(self, pipeline: Path, tmp_path: Path):
        self.out_path = tmp_path / "run.out"
        self.out = open(self.out_path, "w")                 # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*IXYPIPE, "run", str(pipeline), "--json"], stdout=self.out,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + CEILING
        while '"type": "interval"' not in self.out_path.read_text():     # traffic flowed for an interval
            assert self.proc.poll() is None, \
                f"the run ended early: {self.out_path.read_text()} {self.proc.stderr.read()}"
            assert time.monotonic() < deadline, "no stats interval"
            time.sleep(0.2)
        self.pid = self.proc.pid

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=CEILING)
        self.out.close()
        assert self.proc.returncode == 0, err
        return summary_of(self.out_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


@pytest.fixture
def fwd(tmp_path):
    runs = []

    def start(path: Path | None = None, **replace: str) -> Running:
        path = path or variant(tmp_path, **replace)
        runs.append(Running(path, tmp_path))
        runs[-1].file = path
        return runs[-1]

    yield start
    for r in runs:
        r.kill()


def generator_frames(path: Path, gen: int, touched: bool) -> np.ndarray:
    """The frames of a capture file, checked as frames of generator ``gen`` (the sim port ``gen``'s) of
    fwd.toml: 60 bytes, its source MAC, the record's magic, generator, a flow of 8, the payload checksum,
    the worker's touch of byte 1 (or not), and each flow's sequence numbers rising.  Returns the times."""
    f = read_pcap(path)
    assert f.linktype == 1 and f.nanosecond and len(f)
    assert (f.caplen == 60).all() and (f.origlen == 60).all()
    frames = np.stack([np.frombuffer(f.packet(i), np.uint8) for i in range(len(f))])
    assert (frames[:, 6:12] == np.frombuffer(GEN_MAC_PREFIX + bytes((gen,)), np.uint8)).all()
    rec = frames[:, SIM_PAYLOAD_OFF:SIM_PAYLOAD_OFF + SIM_REC_LEN].copy()
    assert (rec[:, 0:2].view("<u2")[:, 0] == SIM_MAGIC).all()
    assert (rec[:, 2:4].view("<u2")[:, 0] == gen).all()
    flow = rec[:, 4:6].view("<u2")[:, 0]
    seq = rec[:, 6:14].view("<u8")[:, 0]
    assert (flow < FLOWS).all()
    assert (payload_checksum(frames) == rec[:, SIM_REC_CSUM:SIM_REC_CSUM + 4].view("<u4")[:, 0]).all()
    for fl in np.unique(flow):
        assert (np.diff(seq[flow == fl].astype(np.int64)) > 0).all(), f"flow {fl} out of order"
    # the generator's byte 1 is the port's MAC's; the worker (touch) adds one before TX
    base = frames[:, SIM_TOUCH_OFF] - (1 if touched else 0)
    assert (base == base[0]).all()
    return f.ts_ns


def capture(*args: str) -> dict:
    res = ixypipe("capture", *args, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    docs = validated(res.stdout)
    assert [d["type"] for d in docs] == ["capture"]
    return docs[0]


@needs_hugepages
@pytest.mark.parametrize("hot_path", ["numba", "numpy"])
def test_capture_writes_the_generators_frames_and_the_run_stays_exact(fwd, hot_path, tmp_path):
    """RX of p0 (frames from p0's generator as they arrive) and TX of p1 (the same frames, touched by the
    worker), 100 each, on the compiled passes and on the reference ones; the run's accounting stays exact."""
    run = fwd(driver=f'"sim"\nhot_path = "{hot_path}"')
    rx = capture(str(run.pid), "--port", "p0", "--count", "100", "-w", str(tmp_path / "rx.pcap"))
    assert (rx["captured"], rx["port"], rx["direction"], rx["stages"], rx["stop_reason"]) == (
        100, "p0", "rx", ["rx-p0-q0"], "100 frames")
    assert rx["pipeline"] == "fwd" and rx["pid"] == run.pid and rx["bytes"] == 6000
    assert rx["per_stage"]["rx-p0-q0"] >= 100 and rx["dropped"] >= 0
    stamps = generator_frames(tmp_path / "rx.pcap", gen=0, touched=False)
    assert len(stamps) == 100 and (np.diff(stamps) >= 0).all() and stamps[-1] > stamps[0]
    assert abs(stamps[0] / 1e9 - time.time()) < CEILING            # wall-clock times, as pcap's
    tx = capture(str(run.pid), "--port", "p1", "--direction", "tx", "--count", "100", "-w",
                 str(tmp_path / "tx.pcap"))
    assert (tx["captured"], tx["stages"]) == (100, ["tx-p1-q0"])
    assert len(generator_frames(tmp_path / "tx.pcap", gen=0, touched=True)) == 100     # p0's, touched
    s = run.stop()
    assert s["ok"] and s["in_flight"] == 0 and s["transmitted"] == s["received"] > 0
    check_sinks(s)                        # every frame sent was received by a sink, intact, in order, touched


@needs_hugepages
def test_capture_refuses_what_it_cannot_do_and_a_killed_capture_stops_its_stage(fwd, tmp_path):
    name = f"capture-test-{os.getpid()}"                  # other pipelines named fwd may run beside this one
    path = tmp_path / "named.toml"
    path.write_text(FWD.read_text().replace('name = "fwd"', f'name = "{name}"', 1))
    run = fwd(path)
    pid = str(run.pid)
    out = str(tmp_path / "x.pcap")
    res = ixypipe("capture", "no-such-pipeline", "--port", "p0", "-w", out)
    assert res.returncode == 1 and "no running pipeline has pid or name 'no-such-pipeline'" in res.stderr
    res = ixypipe("capture", pid, "--port", "p9", "-w", out)
    assert res.returncode == 2 and f"pipeline {name} has no port 'p9'; its ports: p0, p1" in res.stderr
    res = ixypipe("capture", pid, "--port", "p0", "-w", str(tmp_path / "no-dir" / "x.pcap"))
    assert res.returncode == 2 and f"directory {tmp_path / 'no-dir'} for pcap file" in res.stderr
    res = ixypipe("capture", pid, "--port", "p0", "-w", str(tmp_path), "--json")
    assert res.returncode == 2 and "Invalid value for '-w'" in validated(res.stdout)[0]["message"]
    assert not Path(out).exists()

    both = capture(str(run.file), "--port", "p0", "--direction", "both", "--count", "400", "-w",
                   str(tmp_path / "b.pcap"))                        # the pipeline named by its file
    assert both["captured"] == 400 and both["stages"] == ["rx-p0-q0", "tx-p0-q0"] and both["pid"] == run.pid
    f = read_pcap(tmp_path / "b.pcap")
    gens = np.array([f.packet(i)[11] for i in range(len(f))])     # source MAC's last byte: the generator
    assert set(gens.tolist()) <= {0, 1}
    assert (np.diff(f.ts_ns) >= 0).all()                           # one time order over both rings

    first = subprocess.Popen([*IXYPIPE, "capture", pid, "--port", "p0", "--timeout", "600", "-w",
                              str(tmp_path / "killed.pcap")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=REPO)
    arena = None
    try:
        assert first.stderr.readline().startswith("capturing frames of port p0 (rx: rx-p0-q0)")   # it holds p0
        arena = Arena.attach(choose_pipeline(pid).path, read_only=True)
        info = read_plan_info(arena)
        k = mirror.blocks_of(arena, [_Stage(s) for s in info["stages"]])["rx-p0-q0"]
        ctl = mirror.control(arena, k)
        wait_until(lambda: ctl[mirror.C_REQUEST] == first.pid, "the capture's request")
        res = ixypipe("capture", pid, "--port", "p0", "-w", out)
        assert res.returncode == 1, res.stderr
        assert f"port p0 (rx-p0-q0) of pipeline {name} is being captured by pid {first.pid}" in res.stderr
        wait_until(lambda: (tmp_path / "killed.pcap").stat().st_size > 24 or first.poll() is not None,
                   "frames in the killed capture's file")
        assert first.poll() is None, first.communicate()
        first.kill()                                                # SIGKILL: no clean-up of its own
        first.wait()
        wait_until(lambda: ctl[mirror.C_REQUEST] == 0, "the supervisor clearing the dead capture's request")
        rows = stagetable.table(arena)
        row = next(s["row"] for s in info["stages"] if s["name"] == "rx-p0-q0")
        copied, packets = mirror.counts(arena, k)[0], int(rows[row]["packets_in"])
        wait_until(lambda: int(rows[row]["packets_in"]) > packets + 10_000, "traffic after the clear")
        assert mirror.counts(arena, k)[0] == copied                 # the stage copies no more
        generator_frames(tmp_path / "killed.pcap", gen=0, touched=False)   # what it wrote stays readable
        again = capture(pid, "--port", "p0", "--count", "10", "-w", out)   # the port is free again
        assert again["captured"] == 10
        ctrl_c = subprocess.Popen([*IXYPIPE, "capture", pid, "--port", "p0", "-w", out, "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        wait_until(lambda: ctl[mirror.C_REQUEST] == ctrl_c.pid, "the request of the capture to interrupt")
        wait_until(lambda: Path(out).stat().st_size > 24 or ctrl_c.poll() is not None, "frames in the file")
        assert ctrl_c.poll() is None, ctrl_c.communicate()
        ctrl_c.send_signal(signal.SIGINT)
        stdout, stderr = ctrl_c.communicate(timeout=CEILING)
        assert ctrl_c.returncode == 0, stderr
        done = validated(stdout)[0]
        assert done["stop_reason"] == "interrupted" and done["captured"] == len(read_pcap(out)) > 0
        assert ctl[mirror.C_REQUEST] == 0                               # it withdrew its request itself
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if arena is not None:
            arena.close()
    s = run.stop()
    assert s["ok"] and s["in_flight"] == 0 and s["transmitted"] == s["received"] > 0
    check_sinks(s)


class _Stage:
    def __init__(self, d: dict):
        self.__dict__.update(d)


def wait_until(cond, what: str, ceiling: float = CEILING) -> None:
    deadline = time.monotonic() + ceiling
    while not cond():
        assert time.monotonic() < deadline, f"no {what} within {ceiling} s"
        time.sleep(0.05)

