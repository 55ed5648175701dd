"""Sending buffers home: every buffer back to the pool that owns it, by the pool id in its header.

Like ixy's ``pkt_buf->mempool``, each buffer's header names its pool
(``PacketBuffers.pool_id``), so whoever ends a buffer's trip - a TX queue
that finished sending it, a worker that dropped it, the supervisor emptying
the rings at shutdown - can send it home without knowing where it came
from.  A :class:`Homing` maps each pool id to a *home*: a callable that
takes an index array, such as a Mempool's ``free`` (in the pool's owner) or
the ``enqueue`` of the return ring that leads to the owner (elsewhere).  A
home that returns a count must take every buffer (a return ring holds a
whole pool, so only a double free can fill it).

Batches nearly always come from one pool, so that case costs a bounds check
and one call: given each pool's index range (Mempools own contiguous
ranges), a batch whose smallest and largest index fall in one pool's range
goes there whole.  Only a mixed batch is grouped by pool.  There is no
registry: each Homing holds exactly the homes it was given.

Given ranges, the pool id in a buffer's header is never read: a worker
process can write over headers (they share pages with packet data), and a
buffer sent home by a forged pool id would land in another pool's free list.
Without ranges (one process owning its pools, tests) the headers serve.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from ixypipe.memory import batchcheck
from ixypipe.memory.pktbuf import BufferError, PacketBuffers

Home = Callable[[np.ndarray], "int | None"]


class HomingError(BufferError):
    """A buffer whose pool has no home here, or a home that did not take all it was given."""


class Homing:
    """Sends index arrays home by pool id; call it (or :meth:`send`) with the indices.

    ``homes``: pool id -> home.  ``ranges``: pool id -> (first, count) of the
    pool's buffers, for the one-pool fast path; without it every batch is
    grouped by the pool ids in the buffer headers.
    """

    def __init__(self, bufs: PacketBuffers, homes: Mapping[int, Home],
                 ranges: Mapping[int, tuple[int, int]] | None = None):
        self.bufs = bufs
        self.homes = dict(homes)
        self.ranges = {pid: (int(first), int(first) + int(count)) for pid, (first, count) in (ranges or {}).items()}
        missing = set(self.ranges) - set(self.homes)
        if missing:
            raise HomingError(f"pool ids {sorted(missing)} have an index range but no home")
        # the range, id and home of the pool that took the last batch (lo > end: none yet)
        self._lo, self._end, self._pid, self._home = 1, 0, -1, None
        # the pools by first index: where a buffer belongs, whatever its header says
        by_first = sorted(self.ranges.items(), key=lambda item: item[1][0])
        self._firsts = np.array([first for _, (first, _) in by_first], np.int64)
        self._ends = np.array([end for _, (_, end) in by_first], np.int64)
        self._ids = np.array([pid for pid, _ in by_first], np.int64)

    @classmethod
    def to_pools(cls, bufs: PacketBuffers, pools: Iterable) -> Homing:
        """Home = each Mempool's own free list (the process that owns the pools)."""
        pools = list(pools)
        return cls(bufs, {p.pool_id: p.free for p in pools}, {p.pool_id: (p.first, p.count) for p in pools})

    def __call__(self, idx: np.ndarray) -> None:
        self.send(idx)

    def send(self, idx: np.ndarray) -> None:
        """Send every buffer of ``idx`` home."""
        if len(idx) == 0:
            return
        if self.ranges:
            self.send_range(idx, *batchcheck.span(idx))
        else:
            self._send_grouped(idx)

    def send_range(self, idx: np.ndarray, lo: int, hi: int) -> None:
        """Send ``idx`` home when its smallest index ``lo`` and largest ``hi`` are already known."""
        if self._lo <= lo and hi < self._end:          # the pool of the last batch owns them all
            took = self._home(idx)
            if took is not None and took != len(idx):
                self._short(self._pid, self._home, took, len(idx))
            return
        k = int(np.searchsorted(self._firsts, lo, "right")) - 1
        if k >= 0 and hi < self._ends[k]:
            pid = int(self._ids[k])
            self._lo, self._end, self._pid, self._home = int(self._firsts[k]), int(self._ends[k]), pid, self.homes[pid]
        self._send_grouped(idx)

    def owners(self, idx: np.ndarray) -> np.ndarray:
        """The pool id of each buffer: from the index ranges when given, else from the headers."""
        if not self.ranges:
            return self.bufs.pool_id[idx]
        k = np.searchsorted(self._firsts, idx, "right") - 1
        inside = (k >= 0) & (idx < self._ends[np.maximum(k, 0)])
        if not inside.all():
            pools = ", ".join(f"id {pid} [{first}, {end})" for pid, (first, end) in sorted(self.ranges.items()))
            raise HomingError(f"buffer {int(idx[~inside][0])} is in the index range of no pool with a home here "
                              f"({pools})")
        return self._ids[k]

    def _send_grouped(self, idx: np.ndarray) -> None:
        owners = self.owners(idx)
        first = owners[0]
        if (owners == first).all():
            self._put(int(first), idx)
            return
        for pid in np.unique(owners):
            self._put(int(pid), idx[owners == pid])

    def _put(self, pid: int, idx: np.ndarray) -> None:
        home = self.homes.get(pid)
        if home is None:
            raise HomingError(f"buffer {int(idx[0])} belongs to pool id {pid}, which has no home here "
                              f"(homes for pool ids {sorted(self.homes)})")
        took = home(idx)
        if took is not None and took != len(idx):
            self._short(pid, home, took, len(idx))

    @staticmethod
    def _short(pid: int, home: Home, took: int, n: int) -> None:
        where = getattr(getattr(home, "__self__", None), "name", repr(home))
        raise HomingError(f"the home of pool id {pid} ({where}) took {took} of {n} buffers: "
                          "it holds the whole pool, so a buffer was freed twice")
