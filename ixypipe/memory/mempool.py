"""Mempool: the free list of one contiguous range of packet buffers.

A mempool is owned by exactly one process at a time (the RX process of its
queue), so its free stack needs no lock.  The stack lives in the arena
(region ``<name>.free``) so ownership can pass from the supervisor, which
fills the descriptor rings at start, to the stage process, and so the
supervisor can count free buffers after a crash.  Alloc and free work on
whole batches of indices with numpy.  ``debug=True`` keeps a state byte per
buffer and rejects double frees and foreign indices.  :meth:`Mempool.free_stack`
hands the stack itself to a driver's hot path (its contract is written there).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from ixypipe.layout import BUF_STATE_FREE, BUF_STATE_IN_USE, MEMPOOL_CTL_DTYPE, MEMPOOL_STACK_OFFSET
from ixypipe.memory.arena import Arena, RegionSize
from ixypipe.memory.pktbuf import BufferError, PacketBuffers


class MempoolError(BufferError):
    """Exhaustion, a double free or a foreign buffer."""


class FreeStack(NamedTuple):
    """A pool's free stack as raw arena views: the contract of a compiled (or kernel) pop.

    ``stack[:top[0]]`` are the free buffer indices, the next one to pop on top
    (``stack[top[0] - 1]``).  A kernel pops ``k`` buffers by reading
    ``stack[top - k:top]`` from the top down and then storing ``top - k`` in
    ``top[0]`` (what :meth:`Mempool.alloc` does).  Only the pool's owner may pop,
    and a pool in debug mode learns of the pops through :meth:`Mempool.note_popped`.
    """
    stack: np.ndarray        # uint32[count]
    top: np.ndarray          # uint64[1]: how many are free


class Mempool:
    """One pool's free stack.  Use :meth:`create` (supervisor) or :meth:`attach` (its owner)."""

    def __init__(self, arena: Arena, bufs: PacketBuffers, name: str, debug: bool = False):
        self.arena = arena
        self.bufs = bufs
        self.name = name
        self.debug = debug
        region = arena.region(name + ".free")
        self._ctl = arena.buf[region.offset:region.offset + MEMPOOL_CTL_DTYPE.itemsize].view(
            MEMPOOL_CTL_DTYPE)
        self.first = int(self._ctl["first"][0])
        self.count = int(self._ctl["count"][0])
        self.pool_id = int(self._ctl["pool_id"][0])
        start = region.offset + MEMPOOL_STACK_OFFSET
        self._stack = arena.buf[start:start + 4 * self.count].view(np.uint32)
        self._state = arena.buf[start + 4 * self.count:start + 5 * self.count]
        # the stack top is kept in a u64 view of the control line
        self._top = arena.buf[region.offset:region.offset + 8].view(np.uint64)
        if debug:
            self._sync_states()

    def _sync_states(self) -> None:
        """Rebuild the per-buffer state bytes from the free stack.

        A pool used without ``debug`` does not keep them, so a process that
        turns debug on (at create or attach) starts from the truth.
        """
        self._state[:] = BUF_STATE_IN_USE
        self._state[self._stack[:self.available()].astype(np.int64) - self.first] = BUF_STATE_FREE

    @staticmethod
    def region_size(count: int) -> int:
        return MEMPOOL_STACK_OFFSET + 5 * count

    @classmethod
    def arena_regions(cls, count: int) -> list[RegionSize]:
        """The region :meth:`create` carves for a pool of ``count`` buffers (its free stack)."""
        return [RegionSize(cls.region_size(count))]

    @classmethod
    def create(cls, arena: Arena, bufs: PacketBuffers, name: str, first: int, count: int,
               pool_id: int, debug: bool = False) -> Mempool:
        """A pool of buffers ``first .. first+count-1``, all free."""
        if count <= 0 or first < 0 or first + count > bufs.count:
            raise MempoolError(f"mempool {name!r}: buffers {first}..{first + count - 1} are outside the "
                               f"arena's {bufs.count} packet buffers")
        region = arena.alloc(name + ".free", cls.region_size(count), align=64)
        ctl = arena.buf[region.offset:region.offset + MEMPOOL_CTL_DTYPE.itemsize].view(MEMPOOL_CTL_DTYPE)
        ctl["first"], ctl["count"], ctl["pool_id"], ctl["owner_pid"] = first, count, pool_id, os.getpid()
        pool = cls(arena, bufs, name, debug)
        bufs.pool_id[first:first + count] = pool_id
        # popped from the top, so store descending: the first allocation returns first, first+1, ...
        pool._stack[:] = np.arange(first + count - 1, first - 1, -1, dtype=np.uint32)
        pool._state[:] = BUF_STATE_FREE
        pool._top[0] = count
        return pool

    @classmethod
    def attach(cls, arena: Arena, bufs: PacketBuffers, name: str, debug: bool = False,
               take_ownership: bool = True) -> Mempool:
        pool = cls(arena, bufs, name, debug)
        if take_ownership:
            pool._ctl["owner_pid"] = os.getpid()
        return pool

    @property
    def owner_pid(self) -> int:
        return int(self._ctl["owner_pid"][0])

    def available(self) -> int:
        return int(self._top[0])

    def in_use(self) -> int:
        return self.count - self.available()

    def free_stack(self) -> FreeStack:
        """The free stack and its top as arena views, for a hot path that pops by itself (see FreeStack)."""
        return FreeStack(self._stack, self._top)

    def note_popped(self, idx: np.ndarray) -> None:
        """A hot path popped ``idx`` through :meth:`free_stack`: a debug pool marks them in use."""
        if self.debug:
            self._check_owner()
            self._state[np.asarray(idx).astype(np.int64) - self.first] = BUF_STATE_IN_USE

    def alloc(self, n: int) -> np.ndarray:
        """Up to ``n`` free buffer indices (fewer when the pool runs low), as a new array."""
        if n < 0:
            raise MempoolError(f"mempool {self.name!r}: cannot allocate {n} buffers")
        if self.debug:
            self._check_owner()
        top = int(self._top[0])
        k = n if n < top else top
        out = self._stack[top - k:top][::-1].copy()
        self._top[0] = top - k
        if self.debug:
            self._state[out.astype(np.int64) - self.first] = BUF_STATE_IN_USE
        return out

    def alloc_exact(self, n: int) -> np.ndarray:
        """Exactly ``n`` buffer indices, or MempoolError when fewer are free."""
        if n > self.available():
            raise MempoolError(f"mempool {self.name!r} exhausted: {n} buffers asked, "
                               f"{self.available()} of {self.count} free")
        return self.alloc(n)

    def free(self, idx: np.ndarray) -> None:
        """Return buffers to the pool; they must belong to it."""
        k = len(idx)
        if k == 0:
            return
        top = int(self._top[0])
        if self.debug:
            self._check_free(idx)
        elif top + k > self.count:
            raise MempoolError(f"mempool {self.name!r}: freeing {k} buffers would overfill it "
                               f"({top} of {self.count} already free): a double free")
        self._stack[top:top + k] = idx
        self._top[0] = top + k

    def _check_owner(self) -> None:
        if self.owner_pid != os.getpid():
            raise MempoolError(f"mempool {self.name!r} is owned by pid {self.owner_pid}, "
                               f"not by this process ({os.getpid()})")

    def _check_free(self, idx: np.ndarray) -> None:
        self._check_owner()
        idx = np.asarray(idx)
        local = idx.astype(np.int64) - self.first
        foreign = (local < 0) | (local >= self.count)
        if foreign.any():
            bad = int(idx[foreign][0])
            raise MempoolError(f"buffer {bad} does not belong to mempool {self.name!r} "
                               f"(buffers {self.first}..{self.first + self.count - 1})")
        uniq, counts = np.unique(local, return_counts=True)
        if (counts > 1).any() or (self._state[uniq] == BUF_STATE_FREE).any():
            again = uniq[(counts > 1) | (self._state[uniq] == BUF_STATE_FREE)][0]
            raise MempoolError(f"double free of buffer {int(again) + self.first} in mempool {self.name!r}")
        self._state[local] = BUF_STATE_FREE

    def free_indices(self) -> np.ndarray:
        """A copy of the free stack (for the supervisor's accounting)."""
        return self._stack[:self.available()].copy()
