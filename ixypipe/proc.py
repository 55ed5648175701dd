"""What every long-running ixypipe process does for itself: back off when idle, name itself, die with its parent.

Used by the pipeline's stage processes and by the software 82599's model
process alike.

Idle back-off for polling loops that may share a CPU:

A stage that found nothing to do spins a little (the next batch is usually
microseconds away), then gives the CPU away with sched_yield, then sleeps in
short, growing naps.  Any work resets it.  On isolated CPUs (``spin_only``)
it never sleeps, as a DPDK lcore would.  On a CPU shared with other stages
(``shared``) it naps at once: measured on two cores with six polling
processes, spinning and yielding there halved the pipeline's throughput,
because the CPU a stage burns waiting is the CPU its neighbour needs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

SPIN_LOOPS = 64         # empty polls before yielding
YIELD_LOOPS = 256       # yields before sleeping
MIN_NAP = 20e-6          # seconds
MAX_NAP = 200e-6         # short enough that a 512-entry RX ring does not overflow at ~2 Mpps
PR_SET_PDEATHSIG = 1     # prctl options (linux/prctl.h)
PR_SET_TIMERSLACK = 29
COMM_LEN = 15            # the kernel keeps 15 bytes of a process name


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


def describe_exit(code: int) -> str:
    """A child's exit code as multiprocessing gives it (negative: the signal that killed it), in words."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def set_process_name(name: str) -> None:
    """The name ps, top and psutil show."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(name[:COMM_LEN])
    except OSError:
        pass


def set_timer_slack(ns: int) -> None:
    """Short naps stay short: the default 50 us timer slack would stretch every back-off sleep."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent(parent: int) -> None:
    """A child must not outlive its owner (e.g. kill -9 of the supervisor): the kernel kills it."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:          # the parent died before prctl took effect
        os._exit(1)
