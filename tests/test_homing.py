"""Sending buffers home by pool id: to mempools or return rings, mixed and one-pool batches, exact counts."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory.homing import Homing, HomingError
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.rings.spsc import Ring

PER_POOL = 64


@pytest.fixture
def pools(make_arena):
    """Three pools of 64 buffers (ids 0, 1, 2) over buffers 0..191; buffers 192..255 belong to none."""
    arena = make_arena(2 << 20, "never")
    bufs = PacketBuffers.create(arena, 256, 2048)
    return bufs, [Mempool.create(arena, bufs, f"pool{i}", i * PER_POOL, PER_POOL, i) for i in range(3)]


def recording(calls: list):
    """Homes that record (pool id, indices) of every call and take everything."""
    return {pid: (lambda idx, pid=pid: calls.append((pid, sorted(int(i) for i in idx)))) for pid in range(3)}


@pytest.mark.parametrize("with_ranges", [True, False])
def test_a_mixed_batch_goes_home_to_each_pool_exactly(pools, with_ranges):
    bufs, (p0, p1, p2) = pools
    taken = [p0.alloc_exact(10), p1.alloc_exact(7), p2.alloc_exact(3)]
    mixed = np.concatenate(taken)
    np.random.default_rng(1).shuffle(mixed)
    homing = Homing.to_pools(bufs, (p0, p1, p2)) if with_ranges else Homing(bufs, {p.pool_id: p.free for p in (p0, p1, p2)})
    homing(mixed[:11])
    homing.send(mixed[11:])
    assert [p.available() for p in (p0, p1, p2)] == [PER_POOL] * 3
    for pool, back in zip((p0, p1, p2), taken, strict=True):
        assert set(back.tolist()) <= set(pool.free_indices().tolist())


def test_each_pool_gets_exactly_its_own_buffers_in_one_call(pools):
    bufs, (p0, p1, p2) = pools
    calls: list = []
    homing = Homing(bufs, recording(calls), {p.pool_id: (p.first, p.count) for p in (p0, p1, p2)})
    a, b, c = p0.alloc_exact(4), p1.alloc_exact(5), p2.alloc_exact(2)
    homing.send(b)                                              # one pool: one call, the batch whole
    assert calls == [(1, sorted(b.tolist()))]
    calls.clear()
    homing.send(np.concatenate((c, a, b[:1])))                  # mixed: one call per pool
    assert sorted(calls) == [(0, sorted(a.tolist())), (1, [int(b[0])]), (2, sorted(c.tolist()))]
    calls.clear()
    homing.send_range(a[1:3], int(a[1:3].min()), int(a[1:3].max()))   # the range already known (a TX kernel)
    homing.send(np.empty(0, np.uint32))                         # nothing: no call
    assert calls == [(0, sorted(a[1:3].tolist()))]


def test_return_rings_as_homes(pools):
    bufs, (p0, p1, _) = pools
    rings = {p.pool_id: Ring.create(bufs.arena, f"home{p.pool_id}", PER_POOL) for p in (p0, p1)}
    homing = Homing(bufs, {pid: r.enqueue for pid, r in rings.items()}, {p.pool_id: (p.first, p.count) for p in (p0, p1)})
    a, b = p0.alloc_exact(9), p1.alloc_exact(6)
    homing.send(np.concatenate((b[:3], a, b[3:])))
    out = np.empty(PER_POOL, np.uint32)
    assert sorted(out[:rings[0].dequeue(out)].tolist()) == sorted(a.tolist())
    assert sorted(out[:rings[1].dequeue(out)].tolist()) == sorted(b.tolist())


def test_a_home_that_takes_less_is_an_error_naming_it(pools):
    bufs, (p0, _, _) = pools
    small = Ring.create(bufs.arena, "small", 4)
    homing = Homing(bufs, {0: small.enqueue})
    with pytest.raises(HomingError, match=r"the home of pool id 0 \(small\) took 4 of 6 buffers: .*freed twice"):
        homing.send(p0.alloc_exact(6))


def test_a_buffer_of_a_pool_without_home_is_named(pools):
    bufs, (p0, p1, p2) = pools
    homing = Homing.to_pools(bufs, (p0, p2))
    stray = p1.alloc_exact(2)
    with pytest.raises(HomingError, match=rf"buffer {int(stray[0])} is in the index range of no pool with a home "
                                          rf"here \(id 0 \[0, {PER_POOL}\), id 2 \[{2 * PER_POOL}, {3 * PER_POOL}\)\)"):
        homing.send(stray)
    assert p0.available() == p2.available() == PER_POOL
    # without ranges the headers name the pool (one process that owns its pools)
    with pytest.raises(HomingError, match=rf"buffer {int(stray[0])} belongs to pool id 1, which has no home here "
                                          r"\(homes for pool ids \[0, 2\]\)"):
        Homing(bufs, {0: p0.free, 2: p2.free}).send(stray)
    with pytest.raises(HomingError, match=r"pool ids \[5\] have an index range but no home"):
        Homing(bufs, {0: p0.free}, {5: (0, 8)})
