"""SPSC ring of uint32 buffer indices in the shared arena (after Snabb's link).

One producer process, one consumer process, no lock.  The region holds the
capacity, then the producer's index (``head``) and the consumer's index
(``tail``) on cache lines of their own, then the slots.  Both indices run
free (they are never wrapped; a slot is ``index & mask``), so full is
``head - tail == capacity`` and empty is ``head == tail``.  Each side keeps
a private cached copy of the other side's index and rereads the shared one
only when the cached value says full (producer) or empty (consumer).
Slots are copied through a uint32 memoryview, which costs a third of a
numpy slice assignment per call; other integer inputs fall back to numpy.

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

from ixypipe.layout import RING_CAPACITY_OFF, RING_HEAD_OFF, RING_SLOT_DTYPE, RING_SLOTS_OFFSET, RING_TAIL_OFF
from ixypipe.memory.arena import Arena, Region, RegionSize

_HEAD = RING_HEAD_OFF // 8
_TAIL = RING_TAIL_OFF // 8
_CAP = RING_CAPACITY_OFF // 8
# the memoryview (struct) format of a slot: "I", a native uint32, on x86
_SLOT_FORMAT = memoryview(np.empty(0, RING_SLOT_DTYPE)).format


class RingError(ValueError):
    """A bad ring size or a ring that is not there."""


class Ring:
    """One end (or both, in tests and benchmarks) of an SPSC ring."""

    def __init__(self, arena: Arena, name: str):
        region = arena.region(name)
        self.name = name
        self.offset = region.offset          # where the ring starts in the arena (spsc_jit.ring_row)
        ctl = memoryview(arena.mm)[region.offset:region.offset + RING_SLOTS_OFFSET]
        self._ctl = ctl.cast("Q")          # plain Python ints: faster than numpy scalars
        ctl.release()
        self.capacity = self._ctl[_CAP]
        if self.capacity < 2 or self.capacity & (self.capacity - 1) or \
                region.size < self.region_size(self.capacity):
            self._ctl.release()
            raise RingError(f"region {name!r} of arena {arena.name} is not a ring "
                            f"(capacity {self.capacity}, region of {region.size} bytes)")
        self._mask = self.capacity - 1
        start = region.offset + RING_SLOTS_OFFSET
        end = start + self.capacity * RING_SLOT_DTYPE.itemsize
        # the slots twice: a numpy view (any input dtype, cast on copy) and a
        # memoryview of uint32, whose slice copies cost a third of numpy's
        self._slots = arena.view(Region(name, start, end - start), RING_SLOT_DTYPE)   # writable where granted
        raw = memoryview(arena.mm)[start:end]
        self._slot_mv = raw.cast(_SLOT_FORMAT)
        raw.release()
        # each end reads its own index from the arena (a compiled loop may have moved it: spsc_jit.py) and
        # keeps a copy of the other end's, which is only ever behind the truth, so it never promises too much
        self._cached_tail = self._ctl[_TAIL]      # producer's copy of the consumer's index
        self._cached_head = self._ctl[_HEAD]      # consumer's copy of the producer's index

    @staticmethod
    def region_size(capacity: int) -> int:
        return RING_SLOTS_OFFSET + capacity * RING_SLOT_DTYPE.itemsize

    @classmethod
    def arena_regions(cls, capacity: int) -> list[RegionSize]:
        """The region :meth:`create` carves for a ring of ``capacity`` slots."""
        return [RegionSize(cls.region_size(capacity))]

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
        """Drop this end's views of the arena (the ring itself stays)."""
        if self._slots is None:
            return
        self._ctl.release()
        self._slot_mv.release()
        self._slots = None

    # ---- state (either side) ---------------------------------------------
    def count(self) -> int:
        """Entries in the ring now (exact only when neither side is moving; 0..capacity even when the
        indices were overwritten with garbage: see :meth:`corrupted`)."""
        return min(max(self._ctl[_HEAD] - self._ctl[_TAIL], 0), self.capacity)

    def corrupted(self) -> str | None:
        """What is wrong with the ring's indices (producer behind the consumer, or more than a ring ahead), or
        None."""
        head, tail = self._ctl[_HEAD], self._ctl[_TAIL]
        if not 0 <= head - tail <= self.capacity:
            return f"producer index {head} and consumer index {tail} are {head - tail} apart (capacity " \
                   f"{self.capacity})"
        return None

    def empty(self) -> bool:
        return self._ctl[_HEAD] == self._ctl[_TAIL]

    def full(self) -> bool:
        return self._ctl[_HEAD] - self._ctl[_TAIL] == self.capacity

    def taken(self) -> int:
        """Entries the consumer has taken since the ring was made (its free-running index)."""
        return self._ctl[_TAIL]

    # ---- producer ---------------------------------------------------------
    def enqueue(self, items: np.ndarray) -> int:
        """Push as many of ``items`` (uint32 indices) as fit; returns how many went in.

        Any 1-D sequence of integers is accepted; a uint32 numpy array (or
        memoryview) takes the fast path, anything else is cast by numpy.
        """
        n = len(items)
        head = self._ctl[_HEAD]
        if self.capacity - (head - self._cached_tail) < n:
            # a consumer index written with garbage never makes room for more than a ring
            room = min(max(self.capacity - (head - self._ctl[_TAIL]), 0), self.capacity)
            self._cached_tail = head - self.capacity + room
            if room < n:
                if room <= 0:
                    return 0
                n = room
                items = items[:n]
        i = head & self._mask
        end = i + n
        try:
            src = memoryview(items)
            if end <= self.capacity:
                self._slot_mv[i:end] = src
            else:
                split = self.capacity - i
                self._slot_mv[i:] = src[:split]
                self._slot_mv[:end - self.capacity] = src[split:]
        except (TypeError, ValueError, NotImplementedError):
            self._copy_in(items, i, n)
        self._publish_head(head + n)
        return n

    def _copy_in(self, items, i: int, n: int) -> None:
        """The slow path of enqueue: numpy casts whatever ``items`` is to uint32."""
        if n == 0:
            return
        items = np.asarray(items)
        if items.ndim != 1 or items.dtype.kind not in "iu":
            raise RingError(f"ring {self.name!r}: enqueue takes a 1-D array of integer buffer indices, "
                            f"got {items.ndim}-D {items.dtype}")
        if int(items[:n].min()) < 0 or int(items[:n].max()) > np.iinfo(RING_SLOT_DTYPE).max:
            raise RingError(f"ring {self.name!r}: buffer indices must fit uint32, got "
                            f"{int(items[:n].min())}..{int(items[:n].max())}")
        split = min(n, self.capacity - i)
        self._slots[i:i + split] = items[:split]
        self._slots[:n - split] = items[split:n]

    def _publish_head(self, head: int) -> None:
        # Arm: store-release here (dmb ishst before the store); x86 TSO needs nothing.
        self._ctl[_HEAD] = head

    # ---- consumer ---------------------------------------------------------
    def dequeue(self, out: np.ndarray) -> int:
        """Take up to ``len(out)`` entries into ``out`` (a uint32 array); returns how many."""
        n = len(out)
        tail = self._ctl[_TAIL]
        if self._cached_head - tail < n:
            # Arm: load-acquire of the producer's index here.  One behind the consumer's or more than a ring
            # ahead is garbage: never read past the slots (the entries read are checked by whoever uses them)
            avail = min(max(self._ctl[_HEAD] - tail, 0), self.capacity)
            self._cached_head = tail + avail
            if avail < n:
                if avail <= 0:
                    return 0
                n = avail
        i = tail & self._mask
        end = i + n
        try:
            dst = memoryview(out)
            if end <= self.capacity:
                dst[:n] = self._slot_mv[i:end]
            else:
                split = self.capacity - i
                dst[:split] = self._slot_mv[i:]
                dst[split:n] = self._slot_mv[:end - self.capacity]
        except (TypeError, ValueError, NotImplementedError):
            self._copy_out(out, i, n)
        self._publish_tail(tail + n)
        return n

    def _copy_out(self, out, i: int, n: int) -> None:
        """The slow path of dequeue: numpy casts the uint32 slots into ``out``'s dtype."""
        if not isinstance(out, np.ndarray) or out.ndim != 1:
            raise RingError(f"ring {self.name!r}: dequeue needs a 1-D numpy array to fill, "
                            f"got {type(out).__name__}")
        split = min(n, self.capacity - i)
        out[:split] = self._slots[i:i + split]
        out[split:n] = self._slots[:n - split]

    def _publish_tail(self, tail: int) -> None:
        # Arm: the slot loads above must complete before this store (store-release).
        self._ctl[_TAIL] = tail
