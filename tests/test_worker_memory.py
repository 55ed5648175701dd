"""Workers cannot corrupt what they do not own (#24): the two-file packet arena, read-only attaches with a few
regions granted writable, headers nobody trusts, and hostile workers in a running pipeline."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import mmap
import os
import re
import shutil
import signal
import stat
import tempfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from support.runs import FWD, leftovers, start, summary_of, variant, wait_for_stats

from ixypipe.layout import (
    ARENA_CONTROL_SUFFIX,
    HUGEPAGE_SIZE,
    PAGE_SIZE,
    PKTBUF_HEADROOM,
    STAGE_COUNTERS_DTYPE,
    STAGE_ROW_DTYPE,
    WAKE_LINE_DTYPE,
    keyed_block_dtype,
)
from ixypipe.memory.arena import SHM_DIR, Arena, ArenaError
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.config import DEFAULT_KEYED_SLOTS, DEFAULT_KEYED_TABLES
from ixypipe.pipeline.planinfo import read_plan_info
from ixypipe.rings.spsc import Ring

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

MODES = ["never", "require"]


@pytest.fixture
def pipeline_arena(request):
    """A two-file arena laid out as the supervisor lays out the packet arena (smaller)."""
    made = []

    def make(mode: str):
        if mode == "require":
            request.getfixturevalue("hugepages_ready")
        size, control = Arena.split_size_for([*PacketBuffers.arena_regions(512, 2048),
                                              *(Mempool.arena_regions(256) * 2), *(Ring.arena_regions(64) * 3),
                                              *stagetable.arena_regions(3)])
        arena = Arena.create(size, hugepages_mode=mode, tag="test", control_size=control)
        made.append(arena)
        bufs = PacketBuffers.create(arena, 512, 2048)
        pools = [Mempool.create(arena, bufs, f"pool{i}", i * 256, 256, i) for i in range(2)]
        rings = [Ring.create(arena, name, 64) for name in ("rx>w0", "w0>tx", "tx>pool0")]
        stagetable.create(arena, 3)
        return arena, bufs, pools, rings

    yield make
    for arena in made:
        arena.destroy()


def _fault_of(child) -> int | None:
    """Run ``child()`` in a forked process; the signal that killed it, or None when it exited 0."""
    pid = os.fork()
    if pid == 0:
        faulthandler.disable()              # the fault is expected: no traceback on stderr
        try:
            child()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status)
    assert os.WEXITSTATUS(status) == 0
    return None


@pytest.mark.parametrize("mode", MODES)
def test_only_packet_buffers_live_in_the_dma_file_and_every_control_region_owns_its_pages(pipeline_arena, mode):
    arena, bufs, pools, rings = pipeline_arena(mode)
    control = SHM_DIR / (arena.name + ARENA_CONTROL_SUFFIX)
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    assert bufs.offset % arena.granule == 0 and bufs.offset + bufs.count * bufs.buf_size <= arena.size
    assert arena.granule == (HUGEPAGE_SIZE if mode == "require" else PAGE_SIZE)
    for name in ("pool0.free", "pool1.free", "rx>w0", "w0>tx", "tx>pool0", "stages", "stages.counters",
                 "pktbufs.meta"):
        region = arena.region(name)
        assert region.offset >= arena.size and region.offset % PAGE_SIZE == 0, name
    regions = sorted(arena.regions(), key=lambda r: r.offset)
    for a, b in zip(regions, regions[1:], strict=False):          # nothing shares a page with the next region
        if a.offset >= arena.size:
            assert b.offset >= -(-(a.offset + a.size) // PAGE_SIZE) * PAGE_SIZE, (a, b)
    # the creator reads and writes through one buffer, offsets running on into the control file
    rings[0].enqueue(np.arange(5, dtype=np.uint32))
    assert rings[0].count() == 5
    arena.destroy()
    assert not control.exists() and not arena.path.exists()


@pytest.mark.parametrize("mode", MODES)
def test_a_read_only_attach_refuses_numpy_writes_and_mprotect(pipeline_arena, mode):
    arena, bufs, pools, rings = pipeline_arena(mode)
    ro = Arena.attach(arena.path, read_only=True)
    try:
        with pytest.raises(ValueError, match="read-only"):
            ro.buf[:64] = 0xFF
        with pytest.raises(ValueError, match="read-only"):
            stagetable.table(ro)["state"] = 7
        with pytest.raises(ValueError, match="read-only"):
            PacketBuffers.attach(ro).data[0, :4] = 1
        # the pages come from descriptors opened read-only: the kernel will not make them writable
        for offset in (0, ro.region("stages").offset, ro.region("pktbufs").offset):
            addr = ro.buf.ctypes.data + offset
            assert _libc.mprotect(addr - addr % PAGE_SIZE, PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE) == -1
            assert ctypes.get_errno() == errno.EACCES
        assert stagetable.table(ro)["state"].tolist() == [0, 0, 0]        # reading works
    finally:
        ro.close()


@pytest.mark.parametrize("mode", MODES)
def test_granted_regions_are_writable_and_a_write_beside_them_kills_only_the_writer(pipeline_arena, mode):
    arena, bufs, pools, rings = pipeline_arena(mode)
    table = stagetable.table(arena)
    ro = Arena.attach(arena.path, read_only=True)
    try:
        row = ro.region("stages").offset + 1 * stagetable.STAGE_ROW_DTYPE.itemsize
        ro.grant_writes([(ro.region(n).offset, ro.region(n).size) for n in ("pktbufs", "rx>w0", "w0>tx")]
                        + [(row, stagetable.STAGE_ROW_DTYPE.itemsize)])
        mine = PacketBuffers.attach(ro)
        mine.data[3, :4] = [1, 2, 3, 4]
        mine.length[3] = 60
        assert bufs.data[3, :4].tolist() == [1, 2, 3, 4] and int(bufs.length[3]) == 60
        Ring.attach(ro, "w0>tx").enqueue(np.array([3], np.uint32))
        assert rings[1].count() == 1
        stagetable.StageRow(ro, 1)["heartbeat"] = 99
        assert int(table[1]["heartbeat"]) == 99

        def through_memoryview(offset):
            return lambda: memoryview(ro.mm)[offset:offset + 8].cast("q").__setitem__(0, -1)

        def through_ctypes(offset):
            return lambda: ctypes.memset(ro.buf.ctypes.data + offset, 0xFF, 8)

        stages, other_ring = ro.region("stages").offset, ro.region("tx>pool0").offset
        free = ro.region("pool0.free").offset
        for write in (through_memoryview(stages), through_ctypes(other_ring), through_ctypes(free),
                      through_ctypes(0), through_memoryview(stages + 2 * stagetable.STAGE_ROW_DTYPE.itemsize)):
            assert _fault_of(write) == signal.SIGSEGV
        assert _fault_of(through_memoryview(row + 8 * stagetable.SLOT["loops"])) is None      # its own row
        assert int(table[1]["loops"]) == -1
        assert int(table[0]["command"]) == int(table[2]["command"]) == 0
        assert rings[2].count() == 0 and pools[0].available() == 256
        assert int(arena.header["magic"][0]) != 0 and arena.region("stages") == ro.region("stages")
    finally:
        ro.close()


@pytest.mark.parametrize("mode", MODES)
def test_compiled_code_writes_a_read_only_attach_only_where_it_was_granted(pipeline_arena, mode):
    """A compiled worker's passes take the arena through compiled_bytes (numba stores into no array numpy marks
    read-only): a store into a granted ring lands, one into another ring kills the writer alone."""
    spsc_jit = pytest.importorskip("ixypipe.rings.spsc_jit")
    if not spsc_jit.AVAILABLE:
        pytest.skip("numba is not installed")
    arena, bufs, pools, rings = pipeline_arena(mode)
    ro = Arena.attach(arena.path, read_only=True)
    try:
        ro.grant_writes([(ro.region("rx>w0").offset, ro.region("rx>w0").size)])
        words, slots = spsc_jit.arena_words(ro.compiled_bytes())
        src = np.arange(7, 10, dtype=np.uint32)
        assert spsc_jit.push(words, slots, spsc_jit.ring_row(rings[0].offset, rings[0].capacity), src, 0, 3) == 3
        got = np.zeros(3, np.uint32)
        assert rings[0].dequeue(got) == 3 and got.tolist() == [7, 8, 9]        # the creator sees them
        other = spsc_jit.ring_row(rings[2].offset, rings[2].capacity)
        assert _fault_of(lambda: spsc_jit.push(words, slots, other, src, 0, 3)) == signal.SIGSEGV
        assert rings[2].count() == 0
        words = slots = None                     # no view may outlive the mapping
    finally:
        ro.close()
    one_file = Arena.create(1 << 20, hugepages_mode="never", tag="test")
    try:
        ro = Arena.attach(one_file.path, read_only=True)
        with pytest.raises(ArenaError, match="is one file attached read-only: compiled code cannot write it"):
            ro.compiled_bytes()
        ro.close()
    finally:
        one_file.destroy()


def test_a_span_that_does_not_own_its_pages_is_not_granted(pipeline_arena):
    arena, *_ = pipeline_arena("never")
    ro = Arena.attach(arena.path, read_only=True)
    try:
        stages = ro.region("stages").offset
        with pytest.raises(ArenaError, match=rf"cannot make \[{stages + 64}, {stages + 128}\) writable alone "
                                             r"\(regions are given writable in whole 4096-byte pages"):
            ro.grant_writes([(stages + 64, 64)])
    finally:
        ro.close()
    one_file = Arena.create(1 << 20, hugepages_mode="never", tag="test")       # no control file
    try:
        ro = Arena.attach(one_file.path, read_only=True)
        with pytest.raises(ArenaError, match="is one file: it cannot make some regions writable"):
            ro.grant_writes([(0, 4096)])
        ro.close()
    finally:
        one_file.destroy()


@pytest.mark.parametrize("mode", MODES)
def test_a_late_attach_takes_dma_addresses_from_the_arena_not_from_headers_a_worker_wrote(pipeline_arena, mode):
    arena, bufs, pools, rings = pipeline_arena(mode)
    expected = bufs.phys.copy()
    assert expected[1] - expected[0] == 2048 and (bufs.data_phys == expected + PKTBUF_HEADROOM).all()
    bufs.raw[:, :PKTBUF_HEADROOM] = 0xFF                 # what a worker can do: the headers share its pages
    later = PacketBuffers.attach(Arena.attach(arena.path))      # a restarted TX stage
    assert (later.phys == expected).all() and (later.data_phys == expected + PKTBUF_HEADROOM).all()
    # and buffers still go home to the pool that owns them by index, whatever pool id the header shows
    taken = pools[1].alloc_exact(5)
    Homing.to_pools(later, pools).send(taken)
    assert pools[1].available() == 256 and pools[0].available() == 256
    later.arena.close()


# ---- hostile workers in a running pipeline ------------------------------------------------------------------

def _run_until(proc, intervals: int = 3) -> tuple[str, str]:
    try:
        wait_for_stats(proc)
        for _ in range(intervals):
            proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=60)
    finally:
        proc.kill()


def _accounted(s: dict) -> None:
    assert s["ok"] and s["in_flight"] == 0 and s["failures"] == [], s
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())


HEADERS = '''
calls = 0

def clobber(batch):
    global calls
    calls += 1
    if calls % 2:                                   # every other batch
        batch.bufs.raw[batch.idx, :64] = 0xff       # phys, pool id, index, length: every byte of every header
        batch.count("clobbered", batch.n)
    else:
        batch.data[batch.idx, 1] += 1
'''


def test_a_worker_writing_0xff_over_its_headers_loses_only_its_packets(tmp_path):
    (tmp_path / "clobber.py").write_text(HEADERS)
    proc = start([str(variant(tmp_path, function='"clobber.py:clobber"')), "--json"])
    out, err = _run_until(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    s = summary_of(out)
    _accounted(s)
    # their lengths read 0xffffffff: TX sent them home (by index range, not by the pool id 0xffffffff) as
    # bad packets; everything else went out, intact
    clobbered = s["worker_counters"]["worker-0"]["clobbered"]
    assert s["drops"] == {**{k: 0 for k in s["drops"]}, "bad_packet": clobbered} and clobbered > 0
    assert s["transmitted"] == s["received"] - clobbered > 0
    for port in ("p0", "p1"):
        assert s["sim"][port]["sink_received"] == s["ports"][port]["tx_packets"]
        assert s["sim"][port]["sink_corrupt"] == s["sim"][port]["sink_untouched"] == 0
    assert s["sim"]["p0"]["dma_faults"] == s["sim"]["p1"]["dma_faults"] == 0
    assert leftovers(proc.pid) == []


BASE = '''
calls = 0

def first_mib(batch):
    global calls
    calls += 1
    base = batch.data.base
    # the buffers and nothing else: the arena's header, tables, rings and stage table are not in it
    if base.size == batch.bufs.count * batch.bufs.buf_size and base.ctypes.data == batch.bufs.raw.ctypes.data:
        batch.count("base_is_the_buffers")
    if calls == 1:
        base[:1 << 20] = 0xff
    batch.data[batch.idx, 1] += 1
'''


def test_the_first_mib_behind_batch_data_base_is_packet_buffers_only(tmp_path):
    (tmp_path / "base.py").write_text(BASE)
    proc = start([str(variant(tmp_path, function='"base.py:first_mib"', expect_touch="false")), "--json"])
    out, err = _run_until(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    s = summary_of(out)
    _accounted(s)
    counters = s["worker_counters"]["worker-0"]
    assert counters["base_is_the_buffers"] > 1
    assert s["transmitted"] > 0 and s["sim"]["p1"]["sink_received"] == s["ports"]["p1"]["tx_packets"] > 0


NUMPY = '''
import numpy as np
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.planinfo import read_plan_info

calls = 0

def numpy_writes(batch):
    global calls
    calls += 1
    arena = batch.bufs.arena
    if calls == 1:
        batch.count("tried", batch.n)
        arena.buf[:1 << 20] = 0xff                  # the arena's first MiB: header, region table
    elif calls == 2:
        batch.count("tried", batch.n)
        stagetable.table(arena)["state"] = 0         # the stage table
    elif calls == 3:
        batch.count("tried", batch.n)
        arena.view(arena.region("tx-p0-q0>pool0"), np.uint32)[:] = 7      # a ring of another stage
    batch.data[batch.idx, 1] += 1
'''


def test_numpy_writes_outside_a_workers_own_regions_are_refused_and_counted(tmp_path):
    (tmp_path / "writes.py").write_text(NUMPY)
    proc = start([str(variant(tmp_path, function='"writes.py:numpy_writes"')), "--json"])
    out, err = _run_until(proc)
    assert proc.returncode == 0, err
    s = summary_of(out)
    _accounted(s)
    assert s["drops"]["worker_error"] == s["worker_counters"]["worker-0"]["tried"] > 0
    # three refused writes, each its own kind (file and line): three tracebacks, numpy's words for each
    assert err.count("Traceback") == err.count("ValueError: assignment destination is read-only") == 3, err
    lines = [n for n, text in enumerate(NUMPY.splitlines(), 1) if "# the" in text or "# a ring" in text]
    assert len(lines) == 3
    for line in lines:
        assert re.search(rf"the worker function raised at \S*writes.py:{line}; the batch is dropped", err), err
    assert s["transmitted"] > 0 and s["restarts"] == 0


CTYPES = '''
import ctypes
import os

MARK = {mark!r}

def raw_write(batch):
    arena = batch.bufs.arena
    if not os.path.exists(MARK):                 # the first worker only: its replacement forwards
        open(MARK, "w").close()
        batch.count("faulting")
        ring = arena.region("tx-p0-q0>pool0").offset
        ctypes.memset(arena.buf.ctypes.data + ring, 0xff, 256)         # another stage's ring
    batch.data[batch.idx, 1] += 1
'''


def test_a_raw_write_into_another_stages_ring_kills_only_the_worker(tmp_path, request):
    # the worker runs as an unprivileged user, who cannot reach tmp_path: a directory it may write in
    marks = Path(tempfile.mkdtemp(prefix="worker-memory-"))
    marks.chmod(0o777)
    request.addfinalizer(lambda: shutil.rmtree(marks, ignore_errors=True))
    (tmp_path / "raw.py").write_text(CTYPES.format(mark=str(marks / "faulted")))
    pipeline = variant(tmp_path, function='"raw.py:raw_write"', on_stage_death='"restart"')
    proc = start([str(pipeline), "--json"])
    out, err = _run_until(proc, intervals=5)
    assert proc.returncode == 0, err
    assert (marks / "faulted").exists()
    assert re.search(r"restarting worker-0 \(it died: killed by SIGSEGV\)", err), err
    s = summary_of(out)
    _accounted(s)
    assert s["restarts"] == 1
    assert s["drops"]["stage_died"] > 0                  # the batch it held when it faulted
    assert s["sim"]["p0"]["sink_received"] == s["ports"]["p0"]["tx_packets"] > 0      # TX p0's ring intact
    assert s["sim"]["p0"]["sink_corrupt"] == s["sim"]["p1"]["sink_corrupt"] == 0
    assert leftovers(proc.pid) == []


def _union(spans) -> list[tuple[int, int]]:
    """Sorted, merged [start, end) intervals (the kernel merges neighbouring mappings alike)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [tuple(m) for m in merged]


def test_a_running_worker_maps_writable_exactly_its_buffers_rings_row_and_wake_lines():
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        [worker] = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "ixy-worker-0"]
        maps = Path(f"/proc/{worker.pid}/maps").read_text().splitlines()
        [path] = {line.split()[-1] for line in maps if re.search(r"/ixypipe-\d+-pkt-[0-9a-f]+$", line)}
        arena = Arena.attach(path, read_only=True)
        control = str(SHM_DIR / (arena.name + ARENA_CONTROL_SUFFIX))
        try:
            info = read_plan_info(arena)
            rows = {s["name"]: s["row"] for s in info["stages"]}
            rings = [r.name for r in arena.regions() if r.name.startswith("w0>") or r.name.endswith(">w0")]
            page = arena.granule

            def whole(name, granule=PAGE_SIZE):
                r = arena.region(name)
                return r.offset, r.offset + -(-r.size // granule) * granule

            def item(name, row, size):
                return arena.region(name).offset + row * size, arena.region(name).offset + (row + 1) * size

            expected = [whole("pktbufs", page), *(whole(r) for r in rings),
                        item("stages", rows["worker-0"], STAGE_ROW_DTYPE.itemsize),
                        item("stages.counters", rows["worker-0"], STAGE_COUNTERS_DTYPE.itemsize),
                        *(item("wake", rows[s], WAKE_LINE_DTYPE.itemsize)
                          for s in ("worker-0", "tx-p0-q0", "tx-p1-q0")),
                        item("workers.keyed", 0, keyed_block_dtype(DEFAULT_KEYED_TABLES, DEFAULT_KEYED_SLOTS).itemsize)]
            writable, seen = [], 0
            for line in maps:
                fields = line.split()
                if len(fields) < 6 or fields[-1] not in (path, control):
                    continue
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                at = int(fields[2], 16) + (arena.size if fields[-1].endswith(ARENA_CONTROL_SUFFIX) else 0)
                seen += hi - lo
                assert fields[1][3] == "s", line                    # shared, never a private copy
                if "w" in fields[1]:
                    writable.append((at, at + hi - lo))
            assert seen == arena.size + arena.control_size          # both files, all of them
            assert _union(writable) == _union(expected)
            assert len(rings) == 6          # from two RX stages, to two TX stages, home to two pools
        finally:
            arena.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    _accounted(summary_of(out))
