"""What every long-running ixypipe process does for itself: back off when idle, name itself, die with its
parent, leave stop signals to its owner, set up its logging.

Used by the pipeline's stage processes and by the software 82599's model
process alike.

Idle back-off for polling loops that may share a CPU:

A stage that found nothing to do spins a little (the next batch is usually
microseconds away), then gives the CPU away with sched_yield, then sleeps in
short, growing naps.  Any work resets it.  With ``spin_only`` (idle =
"spin") it never sleeps, as a DPDK lcore would, but still yields after the
spin: alone on an isolated CPU sched_yield returns at once, and where
spinning stages share a CPU the one with work runs after its neighbours'
next poll instead of at the end of a scheduler slice (bridge-veth ping
24 ms -> 0.52 ms on two shared CPUs; fwd.toml 260 kpps with misses ->
its full 300 kpps).  On a CPU shared with other stages
(``shared``) it naps at once: measured on two cores with six polling
processes, spinning and yielding there halved the pipeline's throughput,
because the CPU a stage burns waiting is the CPU its neighbour needs.

Under steady traffic the naps are paced instead (:class:`Pacing`): a
ladder of 20..200 us naps woke a stage ten to twenty times per 2048-packet
batch at 1.4 Mpps, and every wake-up of a process on a shared CPU (a
context switch, a loop of cache-cold Python) cost more CPU than the
batch's own work.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

import psutil

SPIN_LOOPS = 64         # empty polls before yielding
YIELD_LOOPS = 256       # yields before sleeping
MIN_NAP = 20e-6          # seconds
MAX_NAP = 200e-6         # short enough that a 512-entry RX ring does not overflow at ~2 Mpps
PACE_SHARE = 0.5         # a paced nap lasts about the time half of ``want`` takes to arrive
PACE_MAX_NAP = 2e-3      # seconds
PACE_WINDOW_NS = 20_000_000    # the arrival rate is measured over windows at least this long
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
        if self.idle < self.spin:
            return
        if self.spin_only or self.idle < self.spin + self.yields:
            os.sched_yield()            # alone on its CPU this returns at once; else a neighbour runs
            return
        time.sleep(self.nap)
        self.nap = min(self.nap * 2, MAX_NAP)


class Pacing:
    """How long an idle polling loop naps under steady traffic: until about half of ``want`` units arrived.

    The loop passes its running count of units (packets, descriptors); the
    rate is measured over windows of PACE_WINDOW_NS.  A window that brought
    fewer than ``want`` units (start-up, a trickle, traffic that stopped)
    gives 0.0: the caller's back-off ladder serves, as it always did.
    """

    __slots__ = ("want", "clock", "ns_per_unit", "since", "start_count", "max_nap")

    def __init__(self, want: int, clock=time.monotonic_ns, max_nap: float = PACE_MAX_NAP):
        self.want = max(1, want)
        self.clock = clock
        self.max_nap = max_nap
        self.ns_per_unit = 0.0           # 0.0: no steady rate
        self.since = clock()
        self.start_count = 0

    def nap(self, count: int) -> float:
        """Seconds to nap (0.0: no steady rate known), given the running count of units."""
        now = self.clock()
        elapsed = now - self.since
        if elapsed >= PACE_WINDOW_NS:
            moved = count - self.start_count
            self.ns_per_unit = elapsed / moved if moved >= self.want else 0.0
            self.since, self.start_count = now, count
        return min(self.max_nap, PACE_SHARE * self.want * self.ns_per_unit * 1e-9)


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


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)     # what stops a run: Ctrl-C, kill, hang-up


def handled_stop_signals() -> tuple[signal.Signals, ...]:
    """The stop signals an owner (the supervisor, ``sim serve``) acts on: all, but SIGHUP when it started
    ignored (``nohup``: the user asked to outlive the terminal)."""
    return tuple(s for s in STOP_SIGNALS if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN)


def ignore_stop_signals() -> None:
    """A process its owner stops ignores what stops the owner: Ctrl-C, ``timeout``, systemd's stop and
    ``kill -TERM -PGID`` reach every process of the group at once, and the owner, which gets the same
    signal, stops its children in order.  SIGKILL still ends it, and it dies with its owner
    (:func:`die_with_parent`).  Ignored, not handled: no system call of the hot loop is interrupted."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def die_with_parent(parent: int) -> None:
    """A child must not outlive its owner (e.g. kill -9 of the supervisor): the kernel kills it."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:          # the parent died before prctl took effect
        os._exit(1)


def wait_for_answer(conn, pid: int, stall: float, ceiling: float = 600.0, slice_s: float = 0.5) -> bool:
    """Wait until ``conn`` has something to read from child ``pid`` starting up: True when it has.

    A busy machine (or numba compiling kernels on a first run) can hold a start-up for minutes, so
    this waits for progress rather than for a clock: it gives up (False) only when the child used no
    CPU and was not waiting for one for ``stall`` seconds, when it is gone, or after ``ceiling``.
    """
    start = last_move = time.monotonic()
    last_cpu = -1.0
    while not conn.poll(slice_s):
        now = time.monotonic()
        try:
            proc = psutil.Process(pid)
            times, status = proc.cpu_times(), proc.status()
        except psutil.Error:
            return conn.poll(0)                 # gone: an answer (or EOF) it left is still readable
        cpu = times.user + times.system
        if cpu != last_cpu or status == psutil.STATUS_RUNNING:
            last_cpu, last_move = cpu, now      # working, or runnable and waiting for a CPU
        if now - last_move > stall or now - start > ceiling:
            return False
    return True


# ---- logging ------------------------------------------------------------------------

PACKAGE_LOGGER = "ixypipe"          # the parent of every ixypipe module's logger
LIBRARY_LOG_LEVEL = logging.WARNING


def setup_logging(level: int, fmt: str) -> None:
    """Log ixypipe's own records from ``level`` up, every other logger's (numba, user libraries) from
    WARNING up, through one handler on the root logger with format ``fmt``.

    ``-v`` (``level`` DEBUG) is for ixypipe's debug lines: at DEBUG numba's loggers print every
    compiler pass (hundreds of lines per kernel compiled), which would bury them.  A process whose
    logging is already configured (an embedding program, pytest) keeps it, as logging.basicConfig does.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    logging.basicConfig(level=max(level, LIBRARY_LOG_LEVEL), format=fmt)
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def set_log_level(level: int) -> None:
    """ixypipe's own level (``-v`` given after the sub-command: DEBUG); other loggers keep theirs."""
    logging.getLogger(PACKAGE_LOGGER).setLevel(level)


def log_level() -> int:
    """The level ixypipe's own records are logged from in this process: what a child process it starts
    (stages, the software 82599) is given."""
    return logging.getLogger(PACKAGE_LOGGER).getEffectiveLevel()
