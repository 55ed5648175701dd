"""The SPSC rings and their doorbells as compiled stage loops see them (numba).

The same rings as ``spsc.py`` (that module is the reference and documents
the layout and why the order of stores is safe), addressed the way one
compiled call that runs many stage passes can hold many of them: the arena
as one array of u64 words and one of u32 slots, and each ring as a row of a
small int64 table (:func:`ring_row`: capacity, the word of its producer
index, the word of its consumer index, its first slot).  Each end reads its
own index from the arena every time rather than keeping a private copy, so
a stage can use a ring from compiled code and from ``spsc.Ring`` in turn.

The doorbells and the sleeping side are in wakeup_jit.py.

Compiler ordering: numba gives array arguments no ``noalias``, so the slot
stores stay before the store of the producer index, and the consumer's slot
loads depend on the producer index it read (they are inside the loop it
bounds).
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.layout import RING_CAPACITY_OFF, RING_HEAD_OFF, RING_SLOT_DTYPE, RING_SLOTS_OFFSET, RING_TAIL_OFF

numba = jitcache.load_numba()

AVAILABLE = numba is not None

# the columns of a ring's row (int64): capacity, u64 word of head, u64 word of tail, u32 word of slot 0
RING_CAP, RING_HEAD, RING_TAIL, RING_SLOTS = range(4)
RING_ROW_WORDS = 4


def ring_row(offset: int, capacity: int) -> np.ndarray:
    """The row of the ring whose region starts at arena byte ``offset``."""
    return np.array([capacity, (offset + RING_HEAD_OFF) // 8, (offset + RING_TAIL_OFF) // 8,
                     (offset + RING_SLOTS_OFFSET) // RING_SLOT_DTYPE.itemsize], np.int64)


def ring_rows(rings) -> np.ndarray:
    """The (n, RING_ROW_WORDS) table of ``spsc.Ring`` objects (an (1, 4) row of zeros when there are none)."""
    rows = [ring_row(r.offset, r.capacity) for r in rings]
    return np.stack(rows) if rows else np.zeros((1, RING_ROW_WORDS), np.int64)


def arena_words(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The arena's bytes as (u64 words, u32 slots) for the kernels below."""
    usable = len(buf) // 8 * 8
    return buf[:usable].view(np.uint64), buf[:usable].view(np.uint32)


assert RING_CAPACITY_OFF == 0 and RING_SLOT_DTYPE == np.uint32

push = pull = room = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    @jit
    def push(words, slots, ring, src, start, n):
        """Producer: put src[start:start + n] in the ring ``ring`` (a row); returns how many fit."""
        cap = ring[RING_CAP]
        head = np.int64(words[ring[RING_HEAD]])
        tail = np.int64(words[ring[RING_TAIL]])
        room = min(max(cap - (head - tail), 0), cap)      # a garbage consumer index never makes more room
        n = min(n, room)
        mask = cap - 1
        first = ring[RING_SLOTS]
        for j in range(n):
            slots[first + ((head + j) & mask)] = src[start + j]
        if n:
            words[ring[RING_HEAD]] = np.uint64(head + n)
        return n

    @jit
    def room(words, ring):
        """Producer: how many entries the ring ``ring`` takes now (push's count for a long enough ``src``)."""
        cap = ring[RING_CAP]
        return min(max(cap - (np.int64(words[ring[RING_HEAD]]) - np.int64(words[ring[RING_TAIL]])), 0), cap)

    @jit
    def pull(words, slots, ring, dst, start, want):
        """Consumer: take up to ``want`` entries into dst[start:]; returns how many."""
        cap = ring[RING_CAP]
        tail = np.int64(words[ring[RING_TAIL]])
        head = np.int64(words[ring[RING_HEAD]])
        n = min(min(max(head - tail, 0), cap), want)     # a garbage producer index never reads past the slots
        mask = cap - 1
        first = ring[RING_SLOTS]
        for j in range(n):
            dst[start + j] = slots[first + ((tail + j) & mask)]
        if n:
            words[ring[RING_TAIL]] = np.uint64(tail + n)
        return n
