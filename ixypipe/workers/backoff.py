"""Idle back-off for polling loops that may share a CPU.

A stage that found nothing to do spins a little (the next batch is usually
microseconds away), then gives the CPU away with sched_yield, then sleeps in
short, growing naps.  Any work resets it.  On isolated CPUs (``spin_only``)
it never sleeps, as a DPDK lcore would.
"""

from __future__ import annotations

import os
import time

SPIN_LOOPS = 64          # empty polls before yielding
YIELD_LOOPS = 256        # yields before sleeping
MIN_NAP = 20e-6          # seconds
MAX_NAP = 200e-6         # short enough that a 512-entry RX ring does not overflow at ~2 Mpps


class Backoff:
    __slots__ = ("idle", "nap", "spin_only")

    def __init__(self, spin_only: bool = False):
        self.idle = 0
        self.nap = MIN_NAP
        self.spin_only = spin_only

    def work(self) -> None:
        self.idle = 0
        self.nap = MIN_NAP

    def wait(self) -> None:
        """Called after a loop that did nothing."""
        self.idle += 1
        if self.idle < SPIN_LOOPS or self.spin_only:
            return
        if self.idle < SPIN_LOOPS + YIELD_LOOPS:
            os.sched_yield()
            return
        time.sleep(self.nap)
        self.nap = min(self.nap * 2, MAX_NAP)
