"""SPSC ring of uint32 buffer indices in the shared arena (after Snabb's link).

One producer process, one consumer process, no lock.  The region holds the
capacity, then the producer's index (``head``) and the consumer's index
(``tail``) on cache lines of their own, then the slots.  Both indices run
free (they are never wrapped; a slot is ``index & mask``), so full is
``head - tail == capacity`` and empty is ``head == tail``.  Each side keeps
a private cached copy of the other side's index and rereads the shared one
only when the cached value says full (producer) or empty (consumer).

Why the order of stores is safe: the producer writes the slots, then
publishes ``head``; the consumer reads ``head``, then the slots, then
publishes ``tail``.  x86 is TSO: stores become visible in program order and
loads are not reordered with older loads, so a consumer that sees the new
``head`` sees the slots written before it.  On Arm a store-release of
``head`` (or a ``dmb ishst`` before it) and a load-acquire of ``head`` on the
consumer side would be needed: see ``_publish_head`` and ``_publish_tail``.
"""

from __future__ import annotations

import numpy as np

from ixypipe.layout import (
    RING_CAPACITY_OFF,
    RING_HEAD_OFF,
    RING_SLOT_DTYPE,
    RING_SLOTS_OFFSET,
    RING_TAIL_OFF,
)
from ixypipe.memory.arena import Arena

_HEAD = RING_HEAD_OFF // 8
_TAIL = RING_TAIL_OFF // 8
_CAP = RING_CAPACITY_OFF // 8


class RingError(ValueError):
    """A bad ring size or a ring that is not there."""


class Ring:
    """One end (or both, in tests and benchmarks) of an SPSC ring."""

    def __init__(self, arena: Arena, name: str):
        region = arena.region(name)
        self.name = name
        ctl = memoryview(arena.mm)[region.offset:region.offset + RING_SLOTS_OFFSET]
        self._ctl = ctl.cast("Q")          # plain Python ints: faster than numpy scalars
        self.capacity = self._ctl[_CAP]
        self._mask = self.capacity - 1
        start = region.offset + RING_SLOTS_OFFSET
        self._slots = arena.buf[start:start + self.capacity * RING_SLOT_DTYPE.itemsize].view(RING_SLOT_DTYPE)
        self._head = self._ctl[_HEAD]       # producer's own index
        self._tail = self._ctl[_TAIL]       # consumer's own index
        self._cached_tail = self._tail      # producer's copy of the consumer's index
        self._cached_head = self._head      # consumer's copy of the producer's index

    @staticmethod
    def region_size(capacity: int) -> int:
        return RING_SLOTS_OFFSET + capacity * RING_SLOT_DTYPE.itemsize

    @classmethod
    def create(cls, arena: Arena, name: str, capacity: int) -> Ring:
        if capacity < 2 or capacity & (capacity - 1) or capacity > 1 << 30:
            raise RingError(f"ring {name!r}: capacity must be a power of two from 2 to 2^30, got {capacity}")
        region = arena.alloc(name, cls.region_size(capacity), align=64)
        ctl = memoryview(arena.mm)[region.offset:region.offset + RING_SLOTS_OFFSET].cast("Q")
        ctl[_HEAD] = 0
        ctl[_TAIL] = 0
        ctl[_CAP] = capacity
        ctl.release()
        return cls(arena, name)

    @classmethod
    def attach(cls, arena: Arena, name: str) -> Ring:
        return cls(arena, name)

    def close(self) -> None:
        self._ctl.release()
        self._slots = None

    # ---- state (either side) ---------------------------------------------
    def count(self) -> int:
        """Entries in the ring now (exact only when neither side is moving)."""
        return self._ctl[_HEAD] - self._ctl[_TAIL]

    def empty(self) -> bool:
        return self._ctl[_HEAD] == self._ctl[_TAIL]

    def full(self) -> bool:
        return self._ctl[_HEAD] - self._ctl[_TAIL] == self.capacity

    # ---- producer ---------------------------------------------------------
    def enqueue(self, items: np.ndarray) -> int:
        """Push as many of ``items`` (uint32) as fit; returns how many went in."""
        n = len(items)
        head = self._head
        room = self.capacity - (head - self._cached_tail)
        if room < n:
            self._cached_tail = self._ctl[_TAIL]
            room = self.capacity - (head - self._cached_tail)
            if room < n:
                n = room
                if n == 0:
                    return 0
        i = head & self._mask
        first = self.capacity - i
        if first >= n:
            self._slots[i:i + n] = items[:n]
        else:
            self._slots[i:] = items[:first]
            self._slots[:n - first] = items[first:n]
        self._publish_head(head + n)
        return n

    def _publish_head(self, head: int) -> None:
        # Arm: store-release here (dmb ishst before the store); x86 TSO needs nothing.
        self._head = head
        self._ctl[_HEAD] = head

    # ---- consumer ---------------------------------------------------------
    def dequeue(self, out: np.ndarray) -> int:
        """Take up to ``len(out)`` entries into ``out``; returns how many."""
        n = len(out)
        tail = self._tail
        avail = self._cached_head - tail
        if avail < n:
            self._cached_head = self._ctl[_HEAD]   # Arm: load-acquire here
            avail = self._cached_head - tail
            if avail < n:
                n = avail
                if n == 0:
                    return 0
        i = tail & self._mask
        first = self.capacity - i
        if first >= n:
            out[:n] = self._slots[i:i + n]
        else:
            out[:first] = self._slots[i:]
            out[first:n] = self._slots[:n - first]
        self._publish_tail(tail + n)
        return n

    def _publish_tail(self, tail: int) -> None:
        # Arm: the slot loads above must complete before this store (store-release).
        self._tail = tail
        self._ctl[_TAIL] = tail
