"""Paced naps of idle polling loops (ixypipe.proc.Pacing), on a clock the test moves."""

from __future__ import annotations

import pytest

from ixypipe.proc import PACE_MAX_NAP, PACE_SHARE, PACE_WINDOW_NS, Pacing


class Clock:
    def __init__(self):
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


def test_no_nap_before_a_window_has_measured_a_rate():
    clock = Clock()
    pacing = Pacing(1024, clock)
    clock.now += PACE_WINDOW_NS - 1
    assert pacing.nap(100_000) == 0.0         # the window is not over yet: the caller's ladder serves


def test_steady_traffic_naps_for_half_the_wanted_units():
    clock = Clock()
    pacing = Pacing(512, clock)
    clock.now += PACE_WINDOW_NS
    units = PACE_WINDOW_NS // 1000            # one unit per microsecond
    nap = pacing.nap(units)
    assert nap == pytest.approx(PACE_SHARE * 512 * 1e-6)
    assert pacing.nap(units) == pytest.approx(nap)        # within the next window the rate stands
    clock.now += PACE_WINDOW_NS
    assert pacing.nap(units + units // 4) == pytest.approx(4 * nap)   # a quarter of the rate: four times longer


def test_a_trickle_or_a_stop_falls_back_to_the_ladder():
    clock = Clock()
    pacing = Pacing(1024, clock)
    clock.now += PACE_WINDOW_NS
    assert pacing.nap(1023) == 0.0            # fewer units than wanted in a whole window: no steady rate
    clock.now += PACE_WINDOW_NS
    assert pacing.nap(1023 + 50_000) > 0.0
    clock.now += PACE_WINDOW_NS
    assert pacing.nap(1023 + 50_000) == 0.0   # traffic stopped: back to the ladder at once


def test_naps_are_capped():
    clock = Clock()
    pacing = Pacing(1 << 20, clock)
    clock.now += PACE_WINDOW_NS
    assert pacing.nap(1 << 20) == PACE_MAX_NAP
