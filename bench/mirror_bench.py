"""What a capture costs the data path per packet: the mirror copy of pipeline/mirror_jit.py and mirror.py alone.

The compiled RX and TX passes call ``mirror_jit.wanted(tap)`` once per batch and, while a capture asks,
``mirror_jit.copy(tap, idx, n)``; everything else in the pass is the same with or without a capture.  This
measures, in a compiled loop over batches of 60-byte frames (CPU time of this process, per packet):

* idle: the request word's load and test (no capture; what every pipeline pays);
* copying: a capture asked and keeps up (the ring's tail follows its head after every batch);
* full: a capture asked and does not keep up (the ring is full: the batch is only counted as dropped);

and the numpy copy of the reference passes (``Tap.copy``) per batch, called from Python.

    python3 bench/mirror_bench.py [--batch 32] [--size 60] [--batches 2000000]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ixypipe import jitcache
from ixypipe.pipeline import mirror, mirror_jit

numba = jitcache.load_numba()


def make_tap(size: int, count: int = 4096, max_data: int = 1984) -> tuple[mirror.Tap, np.ndarray]:
    """A tap over private arrays (a mirror block's shape at 2048-byte buffers) and buffers of ``size``-byte
    frames; returns it and the buffer indices."""
    data = np.random.default_rng(1).integers(0, 256, (count, max_data), dtype=np.uint8)
    lengths = np.full(count, size, np.uint32)
    slots = mirror.slots_for(max_data)
    tap = mirror.Tap(np.zeros(mirror.CTL_WORDS, np.int64), np.zeros(slots, np.int64), np.zeros(slots, np.int64),
                     np.zeros((slots, max_data), np.uint8), data, lengths)
    return tap, np.random.default_rng(2).permutation(count).astype(np.uint32)


if numba is not None:
    @numba.njit(nogil=True)
    def _idle(tap, idx, batch, batches):
        hits = 0
        for b in range(batches):
            if mirror_jit.wanted(tap):
                hits += 1
            idx[b & 7] += np.uint32(0)                  # something the loop cannot drop
        return hits

    @numba.njit(nogil=True)
    def _copying(tap, idx, batch, batches, keep_up):
        ctl = tap[0]
        n_idx = idx.shape[0]
        for b in range(batches):
            start = (b * batch) % (n_idx - batch)
            if mirror_jit.wanted(tap):
                mirror_jit.copy(tap, idx[start:start + batch], batch)
            if keep_up:
                ctl[mirror.C_TAIL] = ctl[mirror.C_HEAD]    # the capture took everything
        return ctl[mirror.C_COPIED]


def per_packet(fn, packets: int) -> float:
    t0 = time.process_time_ns()
    fn()
    return (time.process_time_ns() - t0) / packets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=60, help="frame bytes")
    ap.add_argument("--batches", type=int, default=2_000_000)
    args = ap.parse_args()
    if numba is None:
        raise SystemExit("numba is not available: nothing compiled to measure")
    tap, idx = make_tap(args.size)
    batch, batches = args.batch, args.batches
    packets = batch * batches
    t = tap.compiled
    _idle(t, idx, batch, 10)
    _copying(t, idx, batch, 10, True)                   # compile first
    print(f"mirror copy, batches of {batch} x {args.size}-byte frames, {batches:,} batches, CPU ns per packet "
          f"(pid {os.getpid()}):")
    idle = min(per_packet(lambda: _idle(t, idx, batch, batches), packets) for _ in range(3))
    print(f"  no capture (one load of the request word per batch): {idle:6.2f}")
    tap.ctl[mirror.C_REQUEST] = 1
    copying = min(per_packet(lambda: _copying(t, idx, batch, batches, True), packets) for _ in range(3))
    print(f"  capture keeping up (frames copied):                   {copying:6.2f}")
    tap.ctl[mirror.C_TAIL] = tap.ctl[mirror.C_HEAD] - len(tap.length)      # full
    full = min(per_packet(lambda: _copying(t, idx, batch, batches, False), packets) for _ in range(3))
    print(f"  capture behind (ring full, copies counted as dropped): {full:6.2f}")
    py_batches = max(batches // 100, 1000)

    def numpy_copy():
        for b in range(py_batches):
            start = (b * batch) % (len(idx) - batch)
            tap.copy(idx[start:start + batch])
            tap.ctl[mirror.C_TAIL] = tap.ctl[mirror.C_HEAD]

    tap.ctl[mirror.C_TAIL] = tap.ctl[mirror.C_HEAD]
    numpy_ns = min(per_packet(numpy_copy, batch * py_batches) for _ in range(3))
    tap.ctl[mirror.C_REQUEST] = 0

    def numpy_idle():
        for _ in range(py_batches):
            tap.copy(idx[:batch])

    numpy_idle_ns = min(per_packet(numpy_idle, batch * py_batches) for _ in range(3))
    print(f"  numpy reference passes: {numpy_idle_ns:.1f} without a capture (the call and the test), "
          f"{numpy_ns:.1f} copying")


if __name__ == "__main__":
    main()
