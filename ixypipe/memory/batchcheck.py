"""Checks over a batch of buffer indices that every stage makes: lengths in bounds and their sum, the index span.

Why one compiled call per check: on an idle pipeline a lone packet finds
each stage's caches cold, and there every numpy call costs 10-40 us (its
dispatch touches many objects), against about 20 us for a whole numba call.
The lengths check of ``pipeline.stages.drop_bad_packets`` was five numpy
calls and the byte count two more, in every RX and TX pass: about a fifth of
a ping's round trip through a pipeline (bench/latency_bench.py).  The numpy
functions are the reference; numba, when installed, serves the same results
(tests hold the two to each other).
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache

try:
    import numba
except ImportError:          # the numpy path serves
    numba = None

COMPILED = numba is not None


def lengths_numpy(length: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """(packets whose length is outside lo..hi, bytes of the packets inside it)."""
    lengths = length[idx]
    good = (lengths >= lo) & (lengths <= hi)
    return len(idx) - int(np.count_nonzero(good)), int(lengths[good].sum())


def span_numpy(idx: np.ndarray) -> tuple[int, int]:
    """(smallest, largest) index of a non-empty batch."""
    return int(idx.min()), int(idx.max())


if COMPILED:
    _jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @_jit
    def lengths_compiled(length, idx, lo, hi):
        bad = total = 0
        for i in idx:
            n = np.int64(length[i])
            if n < lo or n > hi:
                bad += 1
            else:
                total += n
        return bad, total

    @_jit
    def span_compiled(idx):
        first = last = np.int64(idx[0])
        for i in idx:
            v = np.int64(i)
            first = min(first, v)
            last = max(last, v)
        return first, last

    lengths = lengths_compiled
    span = span_compiled
else:
    lengths_compiled = span_compiled = None
    lengths = lengths_numpy
    span = span_numpy


def warm_up(length: np.ndarray) -> None:
    """Load the compiled checks for the arena's length array and uint32 batches (writable, and read-only as
    a worker's ``batch.idx``) now: not with the first packet, and never after a worker dropped privileges."""
    one = np.zeros(1, np.uint32)
    frozen = one.view()
    frozen.flags.writeable = False
    for idx in (one, frozen):
        lengths(length, idx, 1, 1)
        span(idx)
