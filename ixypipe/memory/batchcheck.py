"""Checks over a batch of buffer indices that every stage makes: lengths in bounds and their sum, the index span,
and the checks of indices a stage cannot trust (a worker's, a ring's): ``changed`` (what a worker's function did
to the indices it was shown), ``claim`` and ``settle`` (a private ledger of the buffers a stage holds or lent out).

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

numba = jitcache.load_numba()         # None: the numpy path serves (jitcache warns once, with the cause)

COMPILED = numba is not None


def lengths_numpy(length: np.ndarray, idx: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """(packets whose length is outside lo..hi, bytes of the packets inside it)."""
    lengths = length[idx]
    good = (lengths >= lo) & (lengths <= hi)
    return len(idx) - int(np.count_nonzero(good)), int(lengths[good].sum())


def span_numpy(idx: np.ndarray) -> tuple[int, int]:
    """(smallest, largest) index of a non-empty batch."""
    return int(idx.min()), int(idx.max())


def changed_numpy(given: np.ndarray, shown: np.ndarray) -> int:
    """Positions where ``shown`` (the indices a worker's function saw) no longer equals ``given``."""
    return int(np.count_nonzero(given != shown))


def claim_numpy(idx: np.ndarray, ranges: np.ndarray, held: np.ndarray, good: np.ndarray) -> tuple[int, int, int]:
    """Take the indices of ``idx`` that are buffers of one of ``ranges`` ((k, 2) int64 rows [first, end)) and not
    ``held`` already (nor earlier in the batch): each is marked in ``held`` and written to ``good`` in order.

    Returns (taken = good[:taken], outside every range, already held or repeated)."""
    v = idx.astype(np.int64)
    inside = np.zeros(len(v), bool)
    for first, end in ranges:
        inside |= (v >= first) & (v < end)
    cand = v[inside]
    first_seen = np.zeros(len(cand), bool)
    first_seen[np.unique(cand, return_index=True)[1]] = True
    ok = first_seen & (held[cand] == 0)
    taken = cand[ok]
    held[taken] = 1
    good[:len(taken)] = taken
    return len(taken), len(v) - len(cand), len(cand) - len(taken)


def settle_numpy(idx: np.ndarray, held: np.ndarray, good: np.ndarray) -> tuple[int, int]:
    """Give back the indices of ``idx`` that are ``held`` (each once): unmarked, written to ``good`` in order.

    Returns (settled = good[:settled], refused: no buffer, not held, or repeated)."""
    v = idx.astype(np.int64)
    inside = v < len(held)
    cand = v[inside]
    first_seen = np.zeros(len(cand), bool)
    first_seen[np.unique(cand, return_index=True)[1]] = True
    ok = first_seen & (held[cand] != 0)
    back = cand[ok]
    held[back] = 0
    good[:len(back)] = back
    return len(back), len(v) - len(back)


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

    @_jit
    def changed_compiled(given, shown):
        k = 0
        for i in range(len(given)):
            if given[i] != shown[i]:
                k += 1
        return k

    @_jit
    def claim_compiled(idx, ranges, held, good):
        taken = outside = again = 0
        for i in idx:
            v = np.int64(i)
            inside = False
            for r in range(ranges.shape[0]):
                if ranges[r, 0] <= v < ranges[r, 1]:
                    inside = True
                    break
            if not inside:
                outside += 1
            elif held[v]:
                again += 1
            else:
                held[v] = 1
                good[taken] = v
                taken += 1
        return taken, outside, again

    @_jit
    def settle_compiled(idx, held, good):
        back = refused = 0
        for i in idx:
            v = np.int64(i)
            if v < len(held) and held[v]:
                held[v] = 0
                good[back] = v
                back += 1
            else:
                refused += 1
        return back, refused

    lengths = lengths_compiled
    span = span_compiled
    changed = changed_compiled
    claim = claim_compiled
    settle = settle_compiled
else:
    lengths_compiled = span_compiled = changed_compiled = claim_compiled = settle_compiled = None
    lengths = lengths_numpy
    span = span_numpy
    changed = changed_numpy
    claim = claim_numpy
    settle = settle_numpy


def warm_up(length: np.ndarray) -> None:
    """Load the compiled checks for the arena's length array and uint32 batches (writable, and read-only as
    a worker's ``batch.idx``) now: not with the first packet, and never after a worker dropped privileges."""
    one = np.zeros(1, np.uint32)
    frozen = one.view()
    frozen.flags.writeable = False
    for idx in (one, frozen):
        lengths(length, idx, 1, 1)
        span(idx)
        changed(one, idx)
    held = np.zeros(1, np.uint8)
    good = np.empty(1, np.uint32)
    claim(one, np.zeros((1, 2), np.int64), held, good)
    settle(one, held, good)
