"""Idle back-off for polling loops that may share a CPU.

A stage that found nothing to do spins a little (the next batch is usually
microseconds away), then gives the CPU away with sched_yield, then sleeps in
short, growing naps.  Any work resets it.  On isolated CPUs (``spin_only``)
it never sleeps, as a DPDK lcore would.  On a CPU shared with other stages
(``shared``) it naps at once: measured on two cores with six polling
processes, spinning and yielding there halved the pipeline's throughput,
because the CPU a stage burns waiting is the CPU its neighbour needs.
"""

from __future__ import annotations

import os
import time

SPIN_LOOPS = 64         # empty polls before yielding
YIELD_LOOPS = 256       # yields before sleeping
MIN_NAP = 20e-6          # seconds
MAX_NAP = 200e-6         # short enough that a 512-entry RX ring does not overflow at ~2 Mpps


class Backoff:
    __slots__ = ("idle", "nap", "spin_only", "spin", "yields")

    def __init__(self, spin_only: bool = False, shared: bool = False):
        self.idle = 0
        self.nap = MIN_NAP
        self.spin_only = spin_only
        self.spin = 0 if shared else SPIN_LOOPS
        self.yields = 0 if shared else YIELD_LOOPS

    def work(self) -> None:
        self.idle = 0
        self.nap = MIN_NAP

    def wait(self) -> None:
        """Called after a loop that did nothing."""
        self.idle += 1
        if self.idle < self.spin or self.spin_only:
            return
        if self.idle < self.spin + self.yields:
            os.sched_yield()
            return
        time.sleep(self.nap)
        self.nap = min(self.nap * 2, MAX_NAP)
