"""Wake-ups between stages: a consumer sleeps on its semaphore, a producer posts it only when it sleeps."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import posix_ipc
import pytest

from ixypipe.memory.arena import Arena
from ixypipe.rings import wakeup
from ixypipe.rings.spsc import Ring
from ixypipe.rings.wakeup import Doorbell, Sleeper

ROW = 1
CEILING = 60.0          # seconds: generous, the machine may be busy


@pytest.fixture
def arena(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    wakeup.create(arena, [ROW], 3)
    Ring.create(arena, "r", 64)
    yield arena
    wakeup.unlink(arena, [ROW])


def semaphore_value(arena: Arena) -> int:
    sem = posix_ipc.Semaphore(wakeup.semaphore_name(arena, ROW))
    try:
        return sem.value
    finally:
        sem.close()


def test_a_busy_consumer_costs_its_producer_no_post(arena):
    bell = Doorbell(arena, ROW)
    for _ in range(100):
        bell.ring()
    assert semaphore_value(arena) == 0           # nobody slept: no system call was made
    bell.close()


def test_a_sleeper_that_sees_work_after_raising_its_flag_does_not_block(arena):
    sleeper = Sleeper(arena, ROW)
    start = time.monotonic()
    assert sleeper.sleep(lambda: False, timeout=CEILING) is False
    assert time.monotonic() - start < CEILING / 2
    assert sleeper.wakeups == 0
    sleeper.close()


def test_a_sleeper_times_out_without_a_post(arena):
    sleeper = Sleeper(arena, ROW)
    assert sleeper.sleep(lambda: True, timeout=0.05) is False
    assert sleeper.wakeups == 1
    sleeper.close()


def _consumer(arena_path: str, out) -> None:
    arena = Arena.attach(arena_path)
    ring, sleeper = Ring.attach(arena, "r"), Sleeper(arena, ROW)
    got = np.empty(8, np.uint32)
    woken = sleeper.sleep(ring.empty, timeout=CEILING)
    n = ring.dequeue(got)
    out.put((woken, got[:n].tolist()))


def test_a_producer_wakes_a_sleeping_consumer_in_another_process(arena):
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_consumer, args=(str(arena.path), out))
    proc.start()
    line = wakeup._line(arena, ROW)
    deadline = time.monotonic() + CEILING
    while not line[0] and time.monotonic() < deadline:     # wait until it sleeps
        time.sleep(0.001)
    assert line[0] == 1
    ring, bell = Ring.attach(arena, "r"), Doorbell(arena, ROW)
    assert ring.enqueue(np.array([7, 8, 9], np.uint32)) == 3
    bell.ring()
    assert out.get(timeout=CEILING) == (True, [7, 8, 9])
    proc.join(CEILING)
    assert proc.exitcode == 0
    assert line[0] == 0 and line[1] == 1                  # flag down, one wake-up counted
    line.release()
    bell.close()
