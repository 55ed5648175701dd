"""Wake-ups for ring consumers that share a CPU: a sleeping flag per consumer and its POSIX semaphore.

A consumer (worker or TX stage) that found all its input rings empty for a
while marks itself sleeping in its wake line, looks at its rings once more,
and blocks on its semaphore with a timeout (so stop commands and liveness
still work).  A producer that enqueued into a ring of that consumer reads the
flag and posts the semaphore only when it is set: a busy consumer costs its
producers one load per batch and no system call.

Why both sides fence: the producer stores the ring head and then loads the
flag; the consumer stores the flag and then loads the ring head.  x86 (TSO)
may let each load pass the older store still in the store buffer, and then
both would miss each other (the consumer sleeps on a full ring until its
timeout).  A lock-prefixed instruction is a full fence on x86; acquiring and
releasing an uncontended threading.Lock executes one (about 100 ns), once
per batch on the producer side and once per sleep on the consumer side.
On Arm the same places need a ``dmb ish``.

Semaphores are named after the packet arena (``/<arena name>.wake<row>``),
created 0600 by the supervisor, opened by the stages and unlinked at the
end; ``remove_stale`` in memory/arena.py removes those of dead owners.
"""

from __future__ import annotations

import ctypes
import os
import threading

import numpy as np
import posix_ipc

from ixypipe.layout import WAKE_LINE_DTYPE, WAKE_REGION
from ixypipe.memory.arena import Arena, RegionSize

_fence_lock = threading.Lock()
_SLEEPING = 0           # int64 slot of the flag in a wake line
_WAKEUPS = 1


def fence() -> None:
    """A full memory barrier (see the module docstring)."""
    _fence_lock.acquire()
    _fence_lock.release()


def semaphore_name(arena: Arena, row: int) -> str:
    return f"/{arena.name}.wake{row}"


_libc = ctypes.CDLL(None, use_errno=True)
_libc.sem_open.restype = ctypes.c_void_p
_libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.sem_close.argtypes = [ctypes.c_void_p]


def semaphore_address(arena: Arena, row: int) -> int:
    """The address of consumer ``row``'s semaphore mapped by libc's sem_open, for a compiled producer that posts it
    itself (spsc_jit.bell); the process keeps the mapping until it exits (a stage needs it for its whole life)."""
    address = _libc.sem_open(semaphore_name(arena, row).encode(), 0)
    if not address:            # SEM_FAILED is NULL in glibc's ctypes view
        err = ctypes.get_errno()
        raise OSError(err, f"sem_open {semaphore_name(arena, row)}: {os.strerror(err)}")
    return address


def line_word(arena: Arena, row: int) -> int:
    """The u64 word (of the whole arena) where consumer ``row``'s wake line starts (spsc_jit.bell)."""
    return (arena.region(WAKE_REGION).offset + row * WAKE_LINE_DTYPE.itemsize) // 8


def arena_regions(n: int) -> list[RegionSize]:
    """The region :func:`create` carves for ``n`` stage rows."""
    return [RegionSize(max(n, 1) * WAKE_LINE_DTYPE.itemsize, align=64)]


def create(arena: Arena, rows: list[int], n: int) -> None:
    """The wake lines of ``n`` stage rows and a semaphore for each consumer row in ``rows`` (the supervisor)."""
    (need,) = arena_regions(n)
    region = arena.alloc(WAKE_REGION, need.size, align=need.align)
    arena.view(region, WAKE_LINE_DTYPE)[:] = np.zeros(1, WAKE_LINE_DTYPE)
    for row in rows:
        posix_ipc.Semaphore(semaphore_name(arena, row), posix_ipc.O_CREX, mode=0o600, initial_value=0).close()


def unlink(arena: Arena, rows: list[int]) -> None:
    for row in rows:
        try:
            posix_ipc.unlink_semaphore(semaphore_name(arena, row))
        except posix_ipc.ExistentialError:
            pass


def _line(arena: Arena, row: int) -> memoryview:
    off = arena.region(WAKE_REGION).offset + row * WAKE_LINE_DTYPE.itemsize
    return memoryview(arena.mm)[off:off + WAKE_LINE_DTYPE.itemsize].cast("B").cast("q")


class Doorbell:
    """The producer's handle on one consumer: ring it after enqueueing."""

    def __init__(self, arena: Arena, row: int):
        self._line = _line(arena, row)
        self._sem = posix_ipc.Semaphore(semaphore_name(arena, row))

    def ring(self) -> None:
        fence()
        if self._line[_SLEEPING]:
            self._line[_SLEEPING] = 0
            self._sem.release()

    def close(self) -> None:
        self._line.release()
        self._sem.close()


class Sleeper:
    """The consumer's side: sleep until a producer rings, the timeout passes or the supervisor wakes it."""

    def __init__(self, arena: Arena, row: int):
        self._line = _line(arena, row)
        self._sem = posix_ipc.Semaphore(semaphore_name(arena, row))
        self.wakeups = 0

    def sleep(self, still_idle, timeout: float) -> bool:
        """Block unless ``still_idle()`` turns False after the flag is set; True when woken by a post."""
        self._line[_SLEEPING] = 1
        fence()
        if not still_idle():
            self._line[_SLEEPING] = 0
            return False
        try:
            self._sem.acquire(timeout)
            woken = True
        except posix_ipc.BusyError:
            woken = False
        self._line[_SLEEPING] = 0
        self.wakeups += 1
        self._line[_WAKEUPS] = self.wakeups
        return woken

    def close(self) -> None:
        self._line.release()
        self._sem.close()


def wake(arena: Arena, row: int) -> None:
    """Post a consumer's semaphore whatever its flag says (the supervisor, to deliver a command at once)."""
    try:
        sem = posix_ipc.Semaphore(semaphore_name(arena, row))
    except posix_ipc.ExistentialError:
        return
    sem.release()
    sem.close()
