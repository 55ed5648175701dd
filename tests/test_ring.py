"""The SPSC ring: exact sequences across processes, wrap-around, full/empty, bad input."""

from __future__ import annotations

import collections
import multiprocessing as mp
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ixypipe.layout import RING_SLOTS_OFFSET
from ixypipe.memory.arena import Arena
from ixypipe.rings.spsc import Ring, RingError

BIG_RUN = 10_000_000
DEADLINE_S = 60


def _bursts(seed: int, n: int) -> np.ndarray:
    """Burst sizes 1..600: half of them small (1..8), to mix per-call and per-slot costs."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < 0.5, rng.integers(1, 9, n), rng.integers(1, 601, n))


def _produce(path: str, name: str, total: int, bursts: list[int]) -> None:
    """Child: push 0..total-1 through the ring in the given bursts (cycled)."""
    arena = Arena.attach(path)
    ring = Ring.attach(arena, name)
    items = np.arange(total, dtype=np.uint32)
    sent, k, deadline = 0, 0, time.monotonic() + DEADLINE_S
    while sent < total:
        burst = bursts[k % len(bursts)]
        k += 1
        sent += ring.enqueue(items[sent:sent + burst])
        if time.monotonic() > deadline:
            raise SystemExit(f"producer stuck at {sent} of {total}")
    ring.close()
    del items
    arena.close()


def _consume(ring: Ring, total: int, bursts: list[int]) -> np.ndarray:
    """Dequeue ``total`` entries in the given bursts (cycled) straight into one array."""
    got = np.full(total, 0xFFFFFFFF, np.uint32)
    done, k, deadline = 0, 0, time.monotonic() + DEADLINE_S
    while done < total:
        burst = min(bursts[k % len(bursts)], total - done)
        k += 1
        done += ring.dequeue(got[done:done + burst])
        if time.monotonic() > deadline:
            raise AssertionError(f"consumer stuck at {done} of {total}")
    return got


def _cross_process(arena: Arena, name: str, capacity: int, total: int, produce: list[int], consume: list[int],
                   context: str) -> np.ndarray:
    ring = Ring.create(arena, name, capacity)
    ctx = mp.get_context(context)
    child = ctx.Process(target=_produce, args=(str(arena.path), name, total, produce))
    child.start()
    try:
        got = _consume(ring, total, consume)
    finally:
        child.join(DEADLINE_S)
        if child.is_alive():
            child.kill()
            child.join()
    assert child.exitcode == 0
    assert ring.empty() and ring.count() == 0
    ring.close()
    return got


def test_ten_million_indices_cross_processes_exactly(make_arena):
    arena = make_arena(1 << 20)
    capacity = 1024
    produce, consume = _bursts(1, 4093).tolist(), _bursts(2, 4091).tolist()
    got = _cross_process(arena, "big", capacity, BIG_RUN, produce, consume, "spawn")
    expected = np.arange(BIG_RUN, dtype=np.uint32)
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, f"first wrong entry at {mismatch[:1]}: {got[mismatch[:5]]}"
    assert BIG_RUN // capacity > 9000     # that many wrap-arounds of the slot index


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(produce=st.lists(st.integers(1, 70), min_size=1, max_size=12),
       consume=st.lists(st.integers(1, 70), min_size=1, max_size=12),
       capacity=st.sampled_from([2, 4, 16, 64]),
       total=st.integers(1, 20_000))
def test_any_burst_sizes_cross_processes_exactly(make_arena, produce, consume, capacity, total):
    arena = make_arena(1 << 20, "never")
    got = _cross_process(arena, "r", capacity, total, produce, consume, "fork")
    assert np.array_equal(got, np.arange(total, dtype=np.uint32))
    arena.destroy()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=60),
       capacity=st.sampled_from([2, 8, 32]))
def test_ring_behaves_like_a_bounded_fifo(make_arena, ops, capacity):
    arena = make_arena(64 << 10, "never")
    producer = Ring.create(arena, "fifo", capacity)
    consumer = Ring.attach(arena, "fifo")
    model: collections.deque[int] = collections.deque()
    next_value = 0
    for is_push, n in ops:
        if is_push:
            items = np.arange(next_value, next_value + n, dtype=np.uint32)
            took = producer.enqueue(items)
            assert took == min(n, capacity - len(model))
            model.extend(range(next_value, next_value + took))
            next_value += took
        else:
            out = np.zeros(n, np.uint32)
            took = consumer.dequeue(out)
            assert took == min(n, len(model))
            assert out[:took].tolist() == [model.popleft() for _ in range(took)]
        assert producer.count() == len(model)
        assert producer.empty() == (not model) and consumer.full() == (len(model) == capacity)
    producer.close()
    consumer.close()
    arena.destroy()


def test_ends_attached_later_continue_where_the_ring_stands(make_arena):
    arena = make_arena(64 << 10, "never")
    first = Ring.create(arena, "r", 8)
    assert first.enqueue(np.arange(6, dtype=np.uint32)) == 6
    out = np.empty(4, np.uint32)
    assert first.dequeue(out) == 4
    first.close()
    producer, consumer = Ring.attach(arena, "r"), Ring.attach(arena, "r")
    assert producer.count() == 2 and producer.capacity == 8
    assert producer.enqueue(np.arange(100, 110, dtype=np.uint32)) == 6     # wraps: 2 + 6 = 8
    assert producer.full()
    got = np.empty(16, np.uint32)
    assert consumer.dequeue(got) == 8
    assert got[:8].tolist() == [4, 5, 100, 101, 102, 103, 104, 105]
    assert consumer.dequeue(got) == 0 and consumer.empty()


def test_other_index_types_are_cast_and_bad_ones_refused(make_arena):
    arena = make_arena(64 << 10, "never")
    ring = Ring.create(arena, "r", 16)
    assert ring.enqueue([7, 8]) == 2                                   # a list
    assert ring.enqueue(np.array([9, 10], np.int64)) == 2              # another integer dtype
    assert ring.enqueue(np.arange(20, dtype=np.uint32)[::5]) == 4     # a strided view: 0 5 10 15
    assert ring.enqueue([]) == 0
    out64 = np.zeros(8, np.int64)
    assert ring.dequeue(out64) == 8
    assert out64.tolist() == [7, 8, 9, 10, 0, 5, 10, 15]
    with pytest.raises(RingError, match=r"enqueue takes a 1-D array of integer buffer indices, got 1-D float64"):
        ring.enqueue(np.array([1.5]))
    with pytest.raises(RingError, match=r"buffer indices must fit uint32, got -1..3"):
        ring.enqueue(np.array([-1, 3], np.int64))
    with pytest.raises(RingError, match="dequeue needs a 1-D numpy array to fill, got list"):
        ring.enqueue([1])
        ring.dequeue([0])
    assert ring.count() == 1    # nothing half-done: the failed dequeue took nothing


@pytest.mark.parametrize("capacity", [0, 1, 3, 100, 1 << 31])
def test_capacity_must_be_a_power_of_two(make_arena, capacity):
    arena = make_arena(64 << 10, "never")
    with pytest.raises(RingError, match=f"ring 'r': capacity must be a power of two from 2 to 2\\^30, "
                                        f"got {capacity}"):
        Ring.create(arena, "r", capacity)
    assert arena.find("r") is None


def test_attaching_something_that_is_not_a_ring_is_refused(make_arena):
    arena = make_arena(64 << 10, "never")
    arena.alloc("junk", 4096)
    with pytest.raises(RingError, match=r"region 'junk' of arena ixypipe-.* is not a ring \(capacity 0"):
        Ring.attach(arena, "junk")
    assert Ring.region_size(64) == RING_SLOTS_OFFSET + 64 * 4


def test_garbage_indices_never_make_either_end_go_past_the_ring(make_arena):
    from ixypipe.layout import RING_HEAD_OFF, RING_TAIL_OFF

    arena = make_arena(1 << 20, hugepages_mode="never")
    ring = Ring.create(arena, "r", 8)
    ring.enqueue(np.arange(3, dtype=np.uint32))
    ring._ctl[RING_HEAD_OFF // 8] = 2**64 - 1                 # the producer's index, scribbled on
    out = np.empty(100, np.uint32)
    assert ring.dequeue(out) == 8 and ring.count() == 8 and ring.corrupted().startswith("producer index")
    ring._ctl[RING_HEAD_OFF // 8] = 0                         # now behind the consumer
    assert ring.dequeue(out) == 0 and ring.count() == 0
    producer = Ring.attach(arena, "r")
    producer._ctl[RING_TAIL_OFF // 8] = 2**40                 # the consumer's index, far ahead of the producer
    assert producer.enqueue(np.arange(100, dtype=np.uint32)) == 8     # at most one ring's worth
