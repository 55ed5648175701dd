"""One-way latency in the software 82599: generator stamps, a sink's samples, the histogram's percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.sim.latency import BUCKETS_PER_OCTAVE, STAMP_SLOTS, EmitTimes, LatencyHistogram
from ixypipe.sim.traffic import Generator, Sink

SRC = bytes.fromhex("024745000001")
DST = bytes.fromhex("024958530001")
WITHIN = 2 ** (0.5 / BUCKETS_PER_OCTAVE) - 1          # a percentile is its bucket's middle: 4.4 % at most off


def test_percentiles_are_within_half_a_bucket_and_the_largest_is_exact():
    h = LatencyHistogram()
    assert h.summary() == (0, 0, 0, 0, 0)
    samples = np.random.default_rng(7).lognormal(np.log(300_000), 0.8, 20_000).astype(np.int64)
    for ns in samples:
        h.add(int(ns))
    samples_, p50, p90, p99, largest = h.summary()
    assert samples_ == 20_000 and largest == samples.max()
    for got, q in ((p50, 50), (p90, 90), (p99, 99)):
        want = np.percentile(samples, q)
        assert abs(got / want - 1) <= WITHIN + 0.01, (q, got, want)
    h.add(0)                                    # a clock that did not move is a 1 ns sample, not an error
    assert h.samples == 20_001


def test_emit_times_remember_the_last_stamp_slots_packet_numbers():
    t = EmitTimes()
    t.stamp(0, 10, 1_000)
    t.stamp(10, 5, 2_000)
    assert [t.of(k) for k in (0, 9, 10, 14)] == [1_000, 1_000, 2_000, 2_000]
    assert t.of(15) is None and t.of(-1) is None                      # not sent yet; never
    t.stamp(15, STAMP_SLOTS - 3, 3_000)                               # wraps the ring: 0..11 are forgotten
    assert t.of(11) is None and t.of(12) == 2_000 and t.of(STAMP_SLOTS + 11) == 3_000
    t.stamp(STAMP_SLOTS + 12, 3 * STAMP_SLOTS, 4_000)                 # more than it holds: the last ones
    assert t.of(4 * STAMP_SLOTS + 11) == 4_000 and t.of(STAMP_SLOTS + 12 + 2 * STAMP_SLOTS - 1) is None


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "numba"])
def test_a_sink_samples_one_frame_per_batch_against_its_generators_stamp(compiled):
    now = [0]
    g = Generator(1, 60, 4, 0, 0.0, SRC, DST)
    s = Sink({1: g}, compiled=compiled, clock=lambda: now[0])
    first = g.make(8)
    g.commit(8, now_ns=1_000_000)
    second = g.make(1)
    g.commit(1, now_ns=1_500_000)
    now[0] = 1_250_000
    s.receive(first)                            # one of the 8 frames sampled: 250 us
    now[0] = 1_520_000
    s.receive(second)                           # 20 us
    assert s.result.received == 9 and s.result.corrupt == 0
    assert s.latency.samples == 2 and s.latency.max_ns == 250_000
    assert abs(s.latency.percentile(50) / 20_000 - 1) <= WITHIN
    bad = g.make(1)
    g.commit(1, now_ns=1_600_000)
    bad.data[0, 20] ^= 0xFF                     # corrupt: counted by the verification, never sampled
    s.receive(bad)
    assert s.result.corrupt == 1 and s.latency.samples == 2
    assert s.latency_summary(now[0], exact=True) == s.latency.summary()
