"""Packet buffers and mempools: layout, exact counts, exhaustion, double frees, bad sizes."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from ixypipe.layout import HUGEPAGE_SIZE, PKTBUF_HEADROOM
from ixypipe.memory.arena import Arena, ArenaError
from ixypipe.memory.mempool import Mempool, MempoolError
from ixypipe.memory.pktbuf import BufferError, PacketBuffers


@pytest.fixture
def bufs(make_arena):
    arena = make_arena(1 << 20, "never")
    return PacketBuffers.create(arena, 64, 2048)


def test_buffer_headers_hold_index_pool_and_address(bufs):
    arena = bufs.arena
    assert bufs.count == 64 and bufs.buf_size == 2048 and bufs.max_data == 2048 - PKTBUF_HEADROOM
    assert bufs.offset % 2048 == 0
    assert list(bufs.index[:4]) == [0, 1, 2, 3]
    assert int(bufs.phys[5]) == arena.iova_base + bufs.offset + 5 * 2048
    assert int(bufs.data_phys[5]) == int(bufs.phys[5]) + PKTBUF_HEADROOM
    # the header in the arena holds the same address, little-endian at offset 0 of the buffer
    raw = bytes(arena.buf[bufs.offset + 5 * 2048:bufs.offset + 5 * 2048 + 8])
    assert int.from_bytes(raw, "little") == int(bufs.phys[5])
    again = PacketBuffers.attach(arena)
    assert np.array_equal(again.phys, bufs.phys) and again.count == 64


def test_packets_are_written_and_read_back_with_their_length(bufs):
    frame = bytes(range(60))
    bufs.write_packet(7, frame)
    assert int(bufs.length[7]) == 60
    assert bytes(bufs.packet(7)) == frame
    assert bytes(bufs.raw[7, PKTBUF_HEADROOM:PKTBUF_HEADROOM + 60]) == frame
    with pytest.raises(BufferError, match="packet of 1985 bytes does not fit a 2048-byte buffer "
                                          r"\(1984 bytes of data\)"):
        bufs.write_packet(7, bytes(1985))
    with pytest.raises(BufferError, match="buffer index 64 is out of range"):
        bufs.write_packet(64, frame)
    with pytest.raises(BufferError, match="buffer index -1 is out of range"):
        bufs.packet(-1)
    with pytest.raises(BufferError, match="buffer index 99 is out of range"):
        bufs.check_indices(np.array([3, 99], np.uint32))


@pytest.mark.parametrize("size", [1000, 128, 3 * 1024, 2 * HUGEPAGE_SIZE])
def test_buffer_sizes_must_be_powers_of_two_within_limits(make_arena, size):
    arena = make_arena(1 << 20, "never")
    with pytest.raises(BufferError, match=f"buffer size must be a power of two from 256 to 2097152 bytes "
                                          rf"\(so none straddles a 2 MiB page\), got {size}"):
        PacketBuffers.create(arena, 8, size)


def test_bad_buffer_counts_and_a_too_small_arena_are_refused(make_arena):
    arena = make_arena(1 << 20, "never")
    with pytest.raises(BufferError, match="buffer count must be 1..4294967295, got 0"):
        PacketBuffers.create(arena, 0)
    with pytest.raises(ArenaError, match="is full: region 'pktbufs' needs 4194304 bytes"):
        PacketBuffers.create(arena, 2048, 2048)
    with pytest.raises(ArenaError, match="has no packet buffers named 'other'"):
        PacketBuffers.attach(arena, "other")


@pytest.mark.parametrize("buf_size", [256, 2048, 16384])
def test_bytes_needed_is_enough(buf_size):
    count = 100
    with Arena.create(PacketBuffers.bytes_needed(count, buf_size), hugepages_mode="never", tag="test") as arena:
        arena.alloc("odd", 8)   # put the allocator off any alignment first
        bufs = PacketBuffers.create(arena, count, buf_size)
        assert bufs.offset + count * buf_size <= arena.size


def test_alloc_hands_out_buffers_in_order_and_counts_exactly(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=16, count=8, pool_id=3)
    assert (pool.available(), pool.in_use()) == (8, 0)
    assert list(bufs.pool_id[16:24]) == [3] * 8 and int(bufs.pool_id[24]) == 0
    got = pool.alloc(3)
    assert list(got) == [16, 17, 18] and got.dtype == np.uint32
    assert (pool.available(), pool.in_use()) == (5, 3)
    pool.free(got[::-1])
    assert pool.available() == 8
    assert sorted(pool.free_indices()) == list(range(16, 24))
    assert list(pool.alloc(2)) == [16, 17]   # last freed (16) comes back first


def test_exhaustion(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=0, count=8, pool_id=0)
    assert len(pool.alloc(5)) == 5
    assert list(pool.alloc(10)) == [5, 6, 7]     # fewer when the pool runs low
    assert len(pool.alloc(1)) == 0
    with pytest.raises(MempoolError, match=r"mempool 'rx0' exhausted: 1 buffers asked, 0 of 8 free"):
        pool.alloc_exact(1)
    with pytest.raises(MempoolError, match="cannot allocate -1 buffers"):
        pool.alloc(-1)


def test_mempool_outside_the_buffers_is_refused(bufs):
    with pytest.raises(MempoolError, match=r"mempool 'p': buffers 60..67 are outside the arena's 64"):
        Mempool.create(bufs.arena, bufs, "p", first=60, count=8, pool_id=0)
    Mempool.create(bufs.arena, bufs, "p", first=0, count=8, pool_id=0)
    with pytest.raises(ArenaError, match="region 'p.free' already exists"):
        Mempool.create(bufs.arena, bufs, "p", first=8, count=8, pool_id=1)


def test_overfilling_a_pool_is_a_double_free_even_without_debug(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=0, count=4, pool_id=0)
    got = pool.alloc(1)
    pool.free(got)
    with pytest.raises(MempoolError, match=r"freeing 1 buffers would overfill it \(4 of 4 already free\): "
                                           "a double free"):
        pool.free(got)
    assert pool.available() == 4


def test_debug_pool_catches_double_free_duplicates_and_foreign_buffers(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=8, count=8, pool_id=1, debug=True)
    got = pool.alloc(4)
    pool.free(got[:1])
    with pytest.raises(MempoolError, match="double free of buffer 8 in mempool 'rx0'"):
        pool.free(got[:1])
    with pytest.raises(MempoolError, match="double free of buffer 9 in mempool 'rx0'"):
        pool.free(np.array([9, 10, 9], np.uint32))
    with pytest.raises(MempoolError, match=r"buffer 3 does not belong to mempool 'rx0' \(buffers 8..15\)"):
        pool.free(np.array([9, 3], np.uint32))
    assert pool.available() == 5     # nothing rejected went back
    pool.free(got[1:])
    assert pool.available() == 8


def test_debug_attach_starts_from_the_true_state(bufs):
    plain = Mempool.create(bufs.arena, bufs, "rx0", first=0, count=8, pool_id=0)
    held = plain.alloc(3)
    debug = Mempool.attach(bufs.arena, bufs, "rx0", debug=True)
    debug.free(held[:1])                  # in use: accepted
    with pytest.raises(MempoolError, match="double free of buffer 5"):
        debug.free(np.array([5], np.uint32))   # never allocated
    assert debug.available() == 6


def _take_pool(path: str) -> None:
    arena = Arena.attach(path)
    bufs = PacketBuffers.attach(arena)
    Mempool.attach(arena, bufs, "rx0")
    del bufs
    arena.close()


def test_debug_pool_refuses_use_by_a_process_that_does_not_own_it(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=0, count=8, pool_id=0, debug=True)
    child = mp.get_context("fork").Process(target=_take_pool, args=(str(bufs.arena.path),))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert pool.owner_pid == child.pid
    with pytest.raises(MempoolError, match=f"mempool 'rx0' is owned by pid {child.pid}, not by this process"):
        pool.alloc(1)
    assert pool.available() == 8


def test_free_stack_is_the_pools_own_stack_for_a_kernel_pop(bufs):
    pool = Mempool.create(bufs.arena, bufs, "rx0", first=8, count=8, pool_id=1, debug=True)
    stack, top = pool.free_stack()
    assert stack.dtype == np.uint32 and top.dtype == np.uint64 and int(top[0]) == 8
    k = 3                                            # pop like a kernel: from the top down, then store top
    popped = stack[int(top[0]) - k:int(top[0])][::-1].copy()
    top[0] -= k
    assert list(popped) == [8, 9, 10] and pool.available() == 5    # the pool sees the pop at once
    pool.note_popped(popped)                         # a debug pool learns which ones are in use
    pool.free(popped[:1])
    with pytest.raises(MempoolError, match="double free of buffer 8"):
        pool.free(popped[:1])
    pool.free(popped[1:])
    assert sorted(pool.free_indices()) == list(range(8, 16))
