"""The arena: files, permissions, names, regions, sharing across processes, DMA addresses."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ixypipe.layout import (
    ARENA_DATA_OFFSET,
    ARENA_MIN_ALIGN,
    ARENA_PREFIX,
    HUGEPAGE_SIZE,
    PAGE_SIZE,
    PAGEMAP_PRESENT,
    SIM_IOVA_BASE,
    SIM_IOVA_WINDOW,
)
from ixypipe.memory import arena as arena_mod
from ixypipe.memory import hugepages
from ixypipe.memory.arena import Arena, ArenaError, virt_to_phys
from ixypipe.memory.pktbuf import PacketBuffers
from tests.support.system import needs_hugepages, needs_root

MODES = [pytest.param("never", id="shm"), pytest.param("require", id="hugepages")]


@pytest.fixture
def mode(request):
    """The arena's hugepages mode; "require" prepares hugepages first (or skips)."""
    if request.param == "require":
        request.getfixturevalue("hugepages_ready")
    return request.param


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_file_is_0600_named_after_pid_and_removed_by_destroy(make_arena, mode):
    arena = make_arena(1 << 20, mode)
    st = os.stat(arena.path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert arena.name.startswith(f"{ARENA_PREFIX}{os.getpid()}-test-")
    assert arena.path.parent == (Path("/dev/shm") if mode == "never" else hugepages.hugetlbfs_mounts()[0])
    assert arena.hugepages == (mode == "require")
    arena.destroy()
    assert not arena.path.exists()


def test_names_carry_64_random_bits():
    names = [Arena._unique_name("x") for _ in range(200)]
    assert len(set(names)) == 200
    prefix = f"{ARENA_PREFIX}{os.getpid()}-x-"
    tokens = [n[len(prefix):] for n in names if n.startswith(prefix)]
    assert len(tokens) == 200
    assert all(len(t) == 16 and int(t, 16) >= 0 for t in tokens)
    # the tag is reduced to at most 16 alphanumerics, so it cannot add path separators
    assert Arena._unique_name("../../etc/passwd").startswith(f"{ARENA_PREFIX}{os.getpid()}-etcpasswd-")


def _child_reads_and_answers(path: str, conn) -> None:
    arena = Arena.attach(path)
    region = arena.region("shared")
    view = arena.view(region)
    conn.send(bytes(view[:16]))
    view[16:32] = np.frombuffer(b"answer from kid!", np.uint8)
    del view
    arena.close()


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_second_process_attaching_sees_the_first_ones_bytes(make_arena, mode):
    arena = make_arena(1 << 20, mode)
    region = arena.alloc("shared", 4096)
    arena.view(region)[:16] = np.frombuffer(b"hello from papa!", np.uint8)
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child_reads_and_answers, args=(str(arena.path), child_end))
    child.start()
    try:
        assert parent_end.poll(30), "the child sent nothing"
        assert parent_end.recv() == b"hello from papa!"
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert bytes(arena.view(region)[16:32]) == b"answer from kid!"


@needs_hugepages
def test_two_buffers_in_one_hugepage_differ_in_physical_address_by_their_offset(make_arena):
    arena = make_arena(4 << 20, "require")
    bufs = PacketBuffers.create(arena, 64, 2048)
    first, other = 3, 40
    off_first = bufs.offset + first * bufs.buf_size
    off_other = bufs.offset + other * bufs.buf_size
    assert off_first // HUGEPAGE_SIZE == off_other // HUGEPAGE_SIZE
    assert int(bufs.phys[other]) - int(bufs.phys[first]) == (other - first) * 2048
    # and the addresses are the kernel's: read them from pagemap independently
    base = arena.buf.ctypes.data
    from_pagemap = virt_to_phys([base + off_first, base + off_other])
    assert [int(x) for x in from_pagemap] == [int(bufs.phys[first]), int(bufs.phys[other])]
    assert int(bufs.data_phys[first]) == int(bufs.phys[first]) + 64
    # hugepages are physically contiguous, so the page's start is 2 MiB aligned
    assert int(bufs.phys[first]) % HUGEPAGE_SIZE == off_first % HUGEPAGE_SIZE


@needs_hugepages
def test_dma_table_maps_physical_addresses_back_to_offsets(make_arena):
    arena = make_arena(6 << 20, "require")
    bases, offsets, page = arena.dma_table()
    assert page == HUGEPAGE_SIZE
    assert len(bases) == arena.size // HUGEPAGE_SIZE
    assert list(bases) == sorted(bases)
    for phys, off in zip(bases, offsets, strict=True):
        assert int(arena.phys(int(off))) == int(phys)
        assert int(phys) % HUGEPAGE_SIZE == 0


def test_virt_to_phys_reads_pfn_bits_0_to_54_and_needs_the_present_bit(tmp_path):
    pagemap = tmp_path / "pagemap"
    entries = np.zeros(8, np.uint64)
    entries[2] = PAGEMAP_PRESENT | (0xF << 55) | 0x12345   # soft-dirty, exclusive... bits must be ignored
    entries[3] = 0x12345                                   # PFN but not present (swapped or not faulted)
    entries[4] = PAGEMAP_PRESENT                           # present but PFN hidden (not root)
    pagemap.write_bytes(entries.tobytes())
    got = virt_to_phys([2 * PAGE_SIZE + 0x123], pagemap=str(pagemap))
    assert int(got[0]) == 0x12345 * PAGE_SIZE + 0x123
    for page in (3, 4):
        with pytest.raises(ArenaError, match="not present or the reader is not root"):
            virt_to_phys([page * PAGE_SIZE], pagemap=str(pagemap))


@pytest.mark.alone                  # other tests take and give back hugepages
@needs_root
def test_arena_bigger_than_free_hugepages_says_how_to_reserve_more():
    too_big = (hugepages.free_hugepages() + 1) * HUGEPAGE_SIZE
    with pytest.raises(ArenaError) as err:
        Arena.create(too_big, hugepages_mode="require", tag="test")
    text = str(err.value)
    assert "hugepages required but unavailable" in text
    more = hugepages.total_hugepages() + arena_mod._pages_for(too_big) - hugepages.free_hugepages()
    assert f"reserve them with 'ixypipe hugepages --reserve {more}'" in text
    assert "mount hugetlbfs with 'ixypipe hugepages --mount /mnt/huge'" in text


def test_fallback_warns_exactly_once_and_gives_simulated_addresses(monkeypatch, caplog, make_arena):
    monkeypatch.setattr(arena_mod, "_warned_fallback", False)
    monkeypatch.setattr(hugepages, "free_hugepages", lambda size=HUGEPAGE_SIZE, sysfs_root="/sys": 0)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with caplog.at_level(logging.WARNING, logger="ixypipe.memory.arena"):
        arenas = [make_arena(1 << 20, "auto") for _ in range(3)]
    warnings = [r.getMessage() for r in caplog.records if "/dev/shm arena on 4 KiB pages" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "simulated" in warnings[0] and "'ixypipe hugepages --reserve " in warnings[0]
    arena = arenas[0]
    assert not arena.hugepages and arena.path.parent == Path("/dev/shm")
    region = arena.alloc("r", 4096)
    assert int(arena.phys(region.offset + 5)) == arena.iova_base + region.offset + 5
    # each fallback arena has its own I/O window, so one device can map several
    assert arena.iova_base >= SIM_IOVA_BASE and (arena.iova_base - SIM_IOVA_BASE) % SIM_IOVA_WINDOW == 0
    assert len({a.iova_base for a in arenas}) == len(arenas)


def test_region_name_clash_and_bad_names_and_sizes_are_refused(make_arena):
    arena = make_arena(1 << 20, "never")
    arena.alloc("rx0.ring", 4096)
    with pytest.raises(ArenaError, match=r"region 'rx0.ring' already exists in arena ixypipe-"):
        arena.alloc("rx0.ring", 128)
    with pytest.raises(ArenaError, match=r"must be 1..47 bytes"):
        arena.alloc("", 128)
    with pytest.raises(ArenaError, match=r"must be 1..47 bytes"):
        arena.alloc("x" * 48, 128)
    with pytest.raises(ArenaError, match=r"size must be positive, got 0"):
        arena.alloc("zero", 0)
    with pytest.raises(ArenaError, match=r"alignment 96 is not a power of two"):
        arena.alloc("odd", 128, align=96)
    with pytest.raises(ArenaError, match=r"is full: region 'huge' needs 4194304 bytes"):
        arena.alloc("huge", 4 << 20)
    assert [r.name for r in arena.regions()] == ["rx0.ring"]


def test_bad_arena_arguments_are_refused():
    with pytest.raises(ArenaError, match="hugepages mode must be auto, require or never, not 'sometimes'"):
        Arena.create(1 << 20, hugepages_mode="sometimes")
    with pytest.raises(ArenaError, match="arena size must be positive, got 0"):
        Arena.create(0)


def test_every_region_is_at_least_128_byte_aligned(make_arena):
    arena = make_arena(1 << 20, "never")
    offsets = [arena.alloc(f"r{i}", 1 + 37 * i, align=align).offset
               for i, align in enumerate([1, 2, 8, 64, 128, 1])]
    assert all(off % ARENA_MIN_ALIGN == 0 for off in offsets), offsets
    big = arena.alloc("page", 10, align=PAGE_SIZE)
    assert big.offset % PAGE_SIZE == 0
    assert arena.region("page") == big
    assert arena.find("nope") is None
    with pytest.raises(ArenaError, match="has no region 'nope'"):
        arena.region("nope")


def test_within_page_regions_never_cross_a_2mib_page(make_arena):
    arena = make_arena(8 << 20, "never")
    start = arena.alloc("pad", 100).offset
    # leave 1000 bytes before the next 2 MiB boundary
    filler = HUGEPAGE_SIZE - (start + 100) % HUGEPAGE_SIZE - 1000
    arena.alloc("filler", filler)
    ring = arena.alloc("desc", 8192, within_page=True)
    assert ring.offset % HUGEPAGE_SIZE == 0
    assert ring.offset // HUGEPAGE_SIZE == (ring.offset + ring.size - 1) // HUGEPAGE_SIZE
    small = arena.alloc("fits", 512, within_page=True)
    assert small.offset == ring.offset + 8192     # fits in the same page: no skip
    with pytest.raises(ArenaError, match="cannot fit one 2 MiB page"):
        arena.alloc("too_big", HUGEPAGE_SIZE + 1, within_page=True)


def test_attach_errors_name_the_problem(tmp_path, make_arena):
    with pytest.raises(ArenaError, match="no arena at"):
        Arena.attach(tmp_path / "missing")
    small = tmp_path / "small"
    small.write_bytes(b"x" * 100)
    with pytest.raises(ArenaError, match="too small"):
        Arena.attach(small)
    junk = tmp_path / "junk"
    junk.write_bytes(bytes(1 << 16))
    with pytest.raises(ArenaError, match="not an ixypipe arena"):
        Arena.attach(junk)
    arena = make_arena(1 << 20, "never")
    with Arena.attach(arena.path) as other:
        assert other.size == arena.size and not other.created
    assert arena.path.exists()      # an attacher's exit does not remove the file


def test_an_arena_never_destroyed_is_removed_when_its_creator_exits():
    code = ("from ixypipe.memory.arena import Arena\n"
            "a = Arena.create(1 << 20, hugepages_mode='never', tag='leak')\n"
            "print(a.path, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    path = Path(out.stdout.strip())
    assert path.name.startswith(ARENA_PREFIX)
    assert not path.exists()


@pytest.mark.parametrize("mode", MODES, indirect=True)
def test_usable_size_is_at_least_what_was_asked(make_arena, mode):
    # the header plus this fills whole 2 MiB pages exactly; arena.phys must not eat into it
    asked = HUGEPAGE_SIZE - ARENA_DATA_OFFSET
    arena = make_arena(asked, mode)
    region = arena.alloc("all", asked)
    assert region.offset + region.size <= arena.size


def test_an_arena_file_name_clash_is_refused(make_arena, monkeypatch):
    arena = make_arena(1 << 20, "never")
    monkeypatch.setattr(Arena, "_unique_name", staticmethod(lambda tag: arena.name))
    with pytest.raises(ArenaError, match=f"arena file /dev/shm/{arena.name} already exists"):
        Arena.create(1 << 20, hugepages_mode="never")
    with Arena.attach(arena.path) as first:       # the first one is untouched
        assert first.size == arena.size


def test_an_arena_for_vfio_ports_has_no_physical_addresses(make_arena, hugepages_ready):
    """physical=False: hugepages without a pagemap read; phys() and the DMA table say there is nothing."""
    arena = Arena.create(4 << 20, hugepages_mode="require", tag="test", physical=False)
    try:
        assert arena.hugepages and not arena.physical
        assert arena.find("arena.phys") is None
        assert arena.phys([0, 4096]).tolist() == [0, 0]
        bases, offsets, _ = arena.dma_table()
        assert len(bases) == 0 and len(offsets) == 0
        assert Arena.attach(arena.path).physical is False
    finally:
        arena.destroy()
    assert make_arena(1 << 20, "never").physical
