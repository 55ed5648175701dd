"""One-way latency through whatever sits between a simulated port's generator and a sink: a log histogram.

The software 82599 knows when each generated frame went into an RX
descriptor (its generator stamps packet numbers with the model's clock as it
commits them) and when a frame left a TX descriptor for the wire (the sink
receives it in that step).  A sink samples one frame of every batch it
receives, the one its verification reports on: at a low rate that is every
frame, at a high rate one per batch, so the cost is a few microseconds per
batch whatever its size.  What it
measures is what a tester with hardware timestamps (MoonGen) measures
between two ports: RX stage, rings, worker, TX stage, and the model's own
polling, on one clock.

Samples go into buckets of an eighth of an octave (each about 9 % wider than
the one before), so a percentile is exact to within 4.5 %.
"""

from __future__ import annotations

import math

import numpy as np

BUCKETS_PER_OCTAVE = 8
OCTAVES = 36                            # 1 ns .. 2^36 ns (69 s): anything longer lands in the last bucket
BUCKETS = BUCKETS_PER_OCTAVE * OCTAVES
PERCENTILES = (50, 90, 99)
STAMP_SLOTS = 1 << 16                   # packet numbers a generator remembers the emit time of


class LatencyHistogram:
    """Latency samples in nanoseconds; percentiles from the histogram, the largest exactly."""

    __slots__ = ("counts", "samples", "max_ns")

    def __init__(self):
        self.counts = np.zeros(BUCKETS, np.int64)
        self.samples = 0
        self.max_ns = 0

    def add(self, ns: int) -> None:
        ns = max(int(ns), 1)
        self.counts[min(int(math.log2(ns) * BUCKETS_PER_OCTAVE), BUCKETS - 1)] += 1
        self.samples += 1
        self.max_ns = max(self.max_ns, ns)

    def percentile(self, q: float) -> int:
        """The q-th percentile in ns (the geometric middle of its bucket, never above the largest); 0 when empty."""
        if not self.samples:
            return 0
        bucket = int(np.searchsorted(np.cumsum(self.counts), q / 100 * self.samples))
        return min(int(2 ** ((bucket + 0.5) / BUCKETS_PER_OCTAVE)), self.max_ns)

    def summary(self) -> tuple[int, ...]:
        """(samples, p50, p90, p99, max), ns: the counter fields a port publishes."""
        return (self.samples, *(self.percentile(q) for q in PERCENTILES), self.max_ns)


class EmitTimes:
    """When a generator's last STAMP_SLOTS packets went into RX descriptors, by packet number."""

    __slots__ = ("ns", "sent")

    def __init__(self):
        self.ns = np.zeros(STAMP_SLOTS, np.int64)
        self.sent = 0

    def stamp(self, first: int, n: int, now_ns: int) -> None:
        """Packets first .. first + n - 1 entered at ``now_ns``."""
        if n > STAMP_SLOTS:                     # only the last STAMP_SLOTS are remembered
            first, n = first + n - STAMP_SLOTS, STAMP_SLOTS
        start = first % STAMP_SLOTS
        end = start + n
        self.ns[start:min(end, STAMP_SLOTS)] = now_ns
        if end > STAMP_SLOTS:
            self.ns[:end - STAMP_SLOTS] = now_ns
        self.sent = first + n

    def of(self, k: int) -> int | None:
        """When packet k entered, or None when it is not among the last STAMP_SLOTS stamped."""
        if not max(0, self.sent - STAMP_SLOTS) <= k < self.sent:
            return None
        return int(self.ns[k % STAMP_SLOTS])
