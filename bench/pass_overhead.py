"""What one compiled stage pass costs beside the packets it moves: the RX pass over a fake NIC queue, with the
stage's arrays borrowed (jitborrow.py: numba's reference counts left alone) and counted (numba's default),
side by side in one process.

A saturated RX stage at ixy's batch of 32 spent about half its CPU in numba's
NRT_incref/NRT_decref (perf), the atomic reference counts a pass adjusted for
each of the ~20 arrays it unpacks, slices and hands on.  This bench isolates
that: the RX loop of pipeline/breathe_jit.py with a compiled stand-in for the
driver's receive (it hands out buffer indices, as rx_burst does from the
descriptors) and output rings it empties between runs, so nothing but the
pass itself is timed: CPU time of this thread per pass and per packet, best
of ``--repeats`` runs of many passes.  ``overhead`` is a pass's cost less
``batch`` times the per-packet cost at the largest batch (what the packets
themselves cost).

    python3 bench/pass_overhead.py --batches 32,256,2048 --workers 1,2
"""

from __future__ import annotations

import time

import click
import numpy as np

from ixypipe.layout import STAGE_ROW_DTYPE
from ixypipe.memory.arena import Arena
from ixypipe.memory.ledger import Ledger
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import breathe
from ixypipe.pipeline import breathe_jit as K
from ixypipe.pipeline.mirror import Tap
from ixypipe.rings import spsc_jit
from ixypipe.rings.spsc import Ring

BUFFERS = 4096
OUT_CAPACITY = 1 << 16
FRAME_LEN = 60

if K.AVAILABLE:
    import numba

    @numba.njit(nogil=True)
    def fake_receive(q, out):
        """The driver's receive, reduced to handing out the next ``len(out)`` buffer indices, round the pool."""
        src, pos = q
        p = pos[0]
        mask = src.shape[0] - 1
        for i in range(out.shape[0]):
            out[i] = src[(p + i) & mask]
        pos[0] = p + out.shape[0]
        return out.shape[0]


class RxRig:
    """One RX stage's arrays in a private arena: a pool, a return ring, ``workers`` output rings."""

    def __init__(self, arena: Arena, batch: int, workers: int):
        self.bufs = bufs = PacketBuffers.create(arena, BUFFERS, 2048)
        pool = Mempool.create(arena, bufs, "pool", 0, BUFFERS, 0)
        returns = [Ring.create(arena, "home", BUFFERS)]
        self.outs = [Ring.create(arena, f"out{k}", OUT_CAPACITY) for k in range(workers)]
        words, slots = spsc_jit.arena_words(arena.buf)
        self.row = np.zeros(STAGE_ROW_DTYPE.itemsize // 8, np.int64)
        self.lent = Ledger(bufs.count, [(0, BUFFERS)])
        bufs.length[:] = FRAME_LEN
        bufs.data[:, :64] = np.random.default_rng(1).integers(0, 256, (BUFFERS, 64), dtype=np.uint8)
        self.passes = OUT_CAPACITY // batch // 2           # every pass's batch fits the output rings
        self.params = np.zeros(K.PARAM_WORDS, np.int64)
        p = self.params
        p[K.P_BATCH], p[K.P_MAX_PASSES], p[K.P_IDLE_PASSES] = batch, self.passes, 1
        p[K.P_MIN_LEN], p[K.P_MAX_DATA], p[K.P_MODE] = 1, bufs.max_data, K.MODE_FLOW
        stack, top = pool.free_stack()
        self.stage = (words, slots, self.row, stack, top, self.lent.held, spsc_jit.ring_rows(returns),
                      spsc_jit.ring_rows(self.outs), np.zeros((workers, 2), np.int64), bufs.length, bufs.data,
                      np.empty(batch, np.uint32), np.empty(BUFFERS, np.uint32), np.zeros((workers, batch), np.uint32),
                      np.zeros(workers, np.int64), np.zeros(K.STATE_WORDS, np.int64),
                      Tap.idle(bufs.data, bufs.length).compiled)
        self.q = (np.arange(BUFFERS, dtype=np.uint32), np.zeros(1, np.int64))
        self.waits = breathe._waits(words, returns)
        self.sink = np.empty(OUT_CAPACITY, np.uint32)

    def ns_per_pass(self, borrow: bool, repeats: int) -> float:
        """Best CPU ns per pass of ``repeats`` runs (the outputs emptied and the ledger cleared between runs)."""
        run = K.loop("rx", fake_receive, cached=False, borrow=borrow)
        best = float("inf")
        for k in range(repeats + 1):                 # the first run compiles
            start = time.thread_time_ns()
            code = run(self.q, self.stage, self.row, self.params, self.waits)
            took = time.thread_time_ns() - start
            assert code == K.RUN_BUDGET, f"a run ended early: code {code}"
            for ring in self.outs:
                ring.dequeue(self.sink)
            self.lent.held[:] = 0
            if k:
                best = min(best, took / self.passes)
        return best


@click.command()
@click.option("--batches", default="32,256,2048", show_default=True, help="batch sizes, comma-separated")
@click.option("--workers", default="1,2", show_default=True, help="output rings (worker stages), comma-separated")
@click.option("--repeats", default=15, show_default=True, help="timed runs per figure (the best is kept)")
def main(batches: str, workers: str, repeats: int) -> None:
    """CPU ns per compiled RX pass and per packet, borrowed and reference-counted arrays side by side."""
    if not K.AVAILABLE:
        raise click.ClickException("numba cannot load here: there are no compiled passes to time")
    sizes = [int(b) for b in batches.split(",")]
    fans = [int(w) for w in workers.split(",")]
    for n_out in fans:
        rows = {}
        for batch in sizes:
            with Arena.create(64 << 20, hugepages_mode="never", tag="pass-overhead") as arena:
                rig = RxRig(arena, batch, n_out)
                rows[batch] = {borrow: rig.ns_per_pass(borrow, repeats) for borrow in (True, False)}
        per_packet = {borrow: rows[max(sizes)][borrow] / max(sizes) for borrow in (True, False)}
        print(f"RX pass, {n_out} output ring(s), fake NIC queue (CPU ns of this thread, best of {repeats}):")
        print("   batch   borrowed ns/pass  ns/pkt  overhead   counted ns/pass  ns/pkt  overhead   counted/borrowed")
        for batch in sizes:
            b, c = rows[batch][True], rows[batch][False]
            print(f"  {batch:6d}   {b:16.0f} {b / batch:7.1f} {b - batch * per_packet[True]:9.0f}   "
                  f"{c:15.0f} {c / batch:7.1f} {c - batch * per_packet[False]:9.0f}   {c / b:16.2f}")


if __name__ == "__main__":
    main()
