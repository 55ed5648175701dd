"""Idle waits of polling loops: paced naps (ixypipe.proc.Pacing, on a clock the test moves) and the back-off ladder."""

from __future__ import annotations

import pytest

from ixypipe import proc
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


def ladder(monkeypatch, backoff, loops: int) -> list:
    """What ``loops`` idle waits of ``backoff`` did, in order: "spin", "yield" or the nap in seconds."""
    done = []
    monkeypatch.setattr(proc.os, "sched_yield", lambda: done.append("yield"))
    monkeypatch.setattr(proc.time, "sleep", done.append)
    for _ in range(loops):
        before = len(done)
        backoff.wait()
        if len(done) == before:
            done.append("spin")
    return done


def test_spin_mode_never_sleeps_and_yields_after_its_spin(monkeypatch):
    # yielding lets a stage sharing the CPU run at once (idle = "spin" on a shared machine); alone it is free
    assert ladder(monkeypatch, proc.Backoff(spin_only=True), 300) == ["spin"] * (proc.SPIN_LOOPS - 1) + \
        ["yield"] * (300 - proc.SPIN_LOOPS + 1)
    assert ladder(monkeypatch, proc.Backoff(spin_only=True, shared=True), 5) == ["yield"] * 5


def test_the_back_off_ladder_spins_yields_then_naps_growing_to_the_longest(monkeypatch):
    b = proc.Backoff()
    steps = ladder(monkeypatch, b, proc.SPIN_LOOPS + proc.YIELD_LOOPS + 6)
    first_nap = proc.SPIN_LOOPS + proc.YIELD_LOOPS - 1
    assert steps[:first_nap] == ["spin"] * (proc.SPIN_LOOPS - 1) + ["yield"] * proc.YIELD_LOOPS
    assert steps[first_nap:] == [20e-6, 40e-6, 80e-6, 160e-6, 200e-6, 200e-6, 200e-6]
    b.work()                                        # any work starts the ladder again
    assert ladder(monkeypatch, b, 1) == ["spin"]
    assert ladder(monkeypatch, proc.Backoff(shared=True), 3) == [20e-6, 40e-6, 80e-6]   # shared CPU: naps at once
