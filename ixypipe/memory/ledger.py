"""A stage's private ledger of the buffers it holds or lent out: what it refuses to take twice.

Rings live in the arena every process maps, and a worker runs user code, so
an index a stage reads from a ring is a claim, not a fact.  Each consumer
that could do harm with a bad one keeps a byte per buffer in its own memory
(never shared, so nothing but the stage writes it):

* a TX queue ``take``s every index before it reaches a descriptor: a buffer
  of a pool it does not send home to, no buffer at all (an index past the
  arena), or one already in its hands (posted, pending, or twice in the batch)
  is refused; a buffer leaves the ledger when it goes home (``release``);
* an RX queue ``take``s what it hands to the workers and ``give_back``s what
  comes home through its return rings: a buffer that is not out (home
  already: a double return) or not its own is refused, so the free list never
  gets a second entry for one buffer.

Refused indices are counted by the caller (``bad_index``) and sent nowhere:
they are not buffers this stage may touch.  The checks are one compiled pass
(memory/batchcheck.py: ``claim``, ``settle``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ixypipe.memory import batchcheck


class Ledger:
    """Which of the arena's ``count`` buffers this stage holds; it may hold buffers of ``ranges``
    ((first, count) per pool) only."""

    def __init__(self, count: int, ranges: Iterable[tuple[int, int]]):
        self.held = np.zeros(count, np.uint8)
        rows = [(int(first), int(first) + int(n)) for first, n in ranges]
        self.ranges = np.array(rows or [(0, 0)], np.int64).reshape(-1, 2)
        self._good = np.empty(0, np.uint32)

    def _scratch(self, n: int) -> np.ndarray:
        if len(self._good) < n:
            self._good = np.empty(max(n, 2 * len(self._good)), np.uint32)
        return self._good

    def take(self, idx: np.ndarray) -> tuple[np.ndarray, int, int]:
        """(the indices it may hold now, in order; how many were no buffer of its pools; how many it held
        already or saw twice).  The first array is ``idx`` itself when all were taken."""
        good = self._scratch(len(idx))
        taken, outside, again = batchcheck.claim(idx, self.ranges, self.held, good)
        if taken == len(idx):
            return idx, 0, 0
        return good[:taken].copy(), outside, again

    def give_back(self, idx: np.ndarray) -> tuple[np.ndarray, int]:
        """(the indices it held, now released, in order; how many it did not hold).  ``idx`` itself when
        all were held."""
        good = self._scratch(len(idx))
        back, refused = batchcheck.settle(idx, self.held, good)
        if not refused:
            return idx, 0
        return good[:back].copy(), refused

    def release(self, idx: np.ndarray) -> None:
        """Buffers it knows it held (its own bookkeeping, not a ring) left: forget them."""
        if len(idx):
            batchcheck.settle(idx, self.held, self._scratch(len(idx)))

    def forgetting(self, home):
        """``home`` (a Homing's home: takes an index array) that first forgets the buffers in this ledger."""
        release = self.release

        def forget_then_send(idx: np.ndarray):
            release(idx)
            return home(idx)

        return forget_then_send

    def holding(self) -> int:
        return int(np.count_nonzero(self.held))

