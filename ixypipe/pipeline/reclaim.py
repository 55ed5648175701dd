"""Emptying the rings once every stage stopped, trusting nothing a stage left in shared memory.

Any stage could have written anything into the arena (a worker runs user
code; a stage may have died half-way), so the supervisor reads the rings as
untrusted input: a ring whose indices are garbage is not read at all, an
entry goes home only if it is a buffer of a pool that is out (not on its
free list, not in a NIC's descriptors) and only once.  Everything else is a
failure line naming the stage that produced into the ring, the ring and what
was wrong ("stage worker-0 corrupted ring w0>tx-p0-q0: index 4294967295 out
of range"); the summary is still printed and nothing here raises.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from ixypipe.memory.homing import Homing
from ixypipe.memory.ledger import Ledger
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline.plan import RING_FORWARD, PipelinePlan
from ixypipe.rings.spsc import Ring


def producer_of(plan: PipelinePlan, ring: str) -> str:
    """The name of the stage that produces into ``ring`` (or "?" for none)."""
    try:
        return plan.producer(ring).name
    except KeyError:
        return "?"


def out_of_pools(bufs: PacketBuffers, pools: list[Mempool], elsewhere: Iterable[np.ndarray] = ()) -> Ledger:
    """A ledger holding every buffer of ``pools`` that is neither free nor ``elsewhere`` (a NIC's descriptors):
    the buffers a ring may bring home."""
    ledger = Ledger(bufs.count, [(p.first, p.count) for p in pools])
    for p in pools:
        ledger.held[p.first:p.first + p.count] = 1
        ledger.release(p.free_indices())       # indices past the arena are ignored, never an IndexError
    for idx in elsewhere:
        ledger.release(np.asarray(idx, np.uint32))
    return ledger


def refused_entry(entries: np.ndarray, good: np.ndarray, count: int) -> str:
    """What is wrong with the first entry of ``entries`` that did not go home (``good`` did)."""
    left = Counter(good.tolist())
    for v in entries.tolist():
        if left[v]:
            left[v] -= 1
            continue
        if v >= count:
            return f"index {v} out of range (the arena has {count} buffers)"
        return f"buffer {v} is not out of its pool (free already, in a NIC ring, or twice in the rings)"
    return "?"


def reclaim_rings(plan: PipelinePlan, arena, pools: list[Mempool], bufs: PacketBuffers,
                  failures: list[str] | None = None, elsewhere: Iterable[np.ndarray] = ()) -> int:
    """After every stage stopped: empty all rings, sending each buffer home once.

    Returns how many packets were stranded in forward rings.  What cannot go
    home is appended to ``failures`` (one line per ring) and left where it is.
    """
    failures = failures if failures is not None else []
    stranded = 0
    home = Homing.to_pools(bufs, pools)
    out = out_of_pools(bufs, pools, elsewhere)
    for r in plan.rings:
        who = producer_of(plan, r.name)
        try:
            ring = Ring.attach(arena, r.name)
        except Exception as exc:
            failures.append(f"stage {who} corrupted ring {r.name}: {exc}")
            continue
        try:
            bad = ring.corrupted()
            if bad:
                failures.append(f"stage {who} corrupted ring {r.name}: {bad}; its entries were not read")
                continue
            entries = np.empty(ring.count(), np.uint32)
            n = ring.dequeue(entries) if len(entries) else 0
            entries = entries[:n]
            good, refused = out.give_back(entries)
            home(good)
            if r.kind == RING_FORWARD:
                stranded += len(good)
            if refused:
                failures.append(f"stage {who} corrupted ring {r.name}: {refused_entry(entries, good, bufs.count)}"
                                + (f" ({refused} entries refused)" if refused > 1 else ""))
        except Exception as exc:               # anything else a corrupted arena makes happen
            failures.append(f"emptying ring {r.name} (produced by stage {who}) failed: {type(exc).__name__}: {exc}")
        finally:
            ring.close()
    return stranded
