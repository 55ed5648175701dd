"""Wake-ups from compiled stage loops: the producer's doorbell and the consumer's sleep, as in wakeup.py.

``bell`` is ``wakeup.Doorbell.ring`` and ``sleep`` is ``wakeup.Sleeper.sleep``
in numba, on the same wake lines and the same POSIX semaphores (wakeup.py
explains the protocol and why both sides fence), so a compiled stage and a
Python one wake each other.  The fence is an LLVM ``fence seq_cst`` (a
locked instruction on x86).  What the loops need from the kernel is called
from libc directly: ``sem_post`` and ``sem_timedwait`` on the semaphore
libc's ``sem_open`` mapped (``wakeup.semaphore_address``), ``clock_gettime``,
``nanosleep`` and ``poll`` on a port's file descriptor; a stage that
sleeps or polls in compiled code wakes straight into its next pass, without
the interpreter.
"""

from __future__ import annotations

import select

import numpy as np

from ixypipe import jitcache
from ixypipe.layout import STAGE_CMD_DRAIN
from ixypipe.rings.spsc_jit import RING_HEAD, RING_TAIL

numba = jitcache.load_numba()

AVAILABLE = numba is not None

WAKE_SLEEPING, WAKE_WAKEUPS = 0, 1      # u64 words of a wake line (layout.WAKE_LINE_DTYPE, wakeup.py)
CLOCK_REALTIME = 0                      # sem_timedwait's deadline is on this clock
CLOCK_MONOTONIC = 1                     # what naps are paced by
POLLIN = select.POLLIN
NS = 1_000_000_000

bell = sleep = poll = fence = now_ns = realtime_ns = nap = None

if AVAILABLE:
    from numba import types
    from numba.core.extending import intrinsic

    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    _sem_post = types.ExternalFunction("sem_post", types.intc(types.voidptr))
    _sem_timedwait = types.ExternalFunction("sem_timedwait", types.intc(types.voidptr, types.voidptr))
    _clock_gettime = types.ExternalFunction("clock_gettime", types.intc(types.intc, types.voidptr))
    _poll = types.ExternalFunction("poll", types.intc(types.voidptr, types.uintp, types.intc))
    _nanosleep = types.ExternalFunction("nanosleep", types.intc(types.voidptr, types.voidptr))

    @intrinsic
    def fence(typingctx):
        """A full memory barrier (see wakeup.py for why producers and sleepers need one)."""
        def codegen(context, builder, signature, args):
            builder.fence("seq_cst")
            return context.get_dummy_value()
        return types.void(), codegen

    @intrinsic
    def _pointer(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(types.voidptr))
        return types.voidptr(address), codegen

    @jit
    def bell(words, line_word, sem_address):
        """Wake the consumer whose wake line starts at u64 word ``line_word`` if it sleeps; True if posted."""
        fence()
        if words[line_word + WAKE_SLEEPING] != 0:
            words[line_word + WAKE_SLEEPING] = 0
            _sem_post(_pointer(sem_address))
            return True
        return False

    @jit
    def _all_empty(words, rings):
        for r in range(rings.shape[0]):
            if words[rings[r, RING_HEAD]] != words[rings[r, RING_TAIL]]:
                return False
        return True

    @jit
    def _clock_ns(clock, ts):
        """clock_gettime(``clock``) in nanoseconds; ``ts``: int64[2], scratch for the struct timespec."""
        _clock_gettime(clock, ts.ctypes.data)
        return ts[0] * NS + ts[1]

    @jit
    def _set_timespec(ts, ns):
        """``ts`` (int64[2], a struct timespec) holds ``ns`` nanoseconds."""
        ts[0] = ns // NS
        ts[1] = ns % NS

    @jit
    def sleep(words, line_word, sem_address, inputs, command, ts, ms):
        """Mark the consumer sleeping, look at its input rings (``inputs``, a ring table) and its ``command``
        word (a drain asked) once more, then block on its semaphore for at most ``ms``; True when woken by a post (or when
        there was something after all), False when the time ran out.  ``ts``: int64[2] for the deadline."""
        words[line_word + WAKE_SLEEPING] = 1
        fence()
        if command[0] >= STAGE_CMD_DRAIN or not _all_empty(words, inputs):
            words[line_word + WAKE_SLEEPING] = 0
            return True
        _set_timespec(ts, _clock_ns(CLOCK_REALTIME, ts) + ms * 1_000_000)    # the deadline
        woken = _sem_timedwait(_pointer(sem_address), ts.ctypes.data) == 0
        words[line_word + WAKE_SLEEPING] = 0
        words[line_word + WAKE_WAKEUPS] += np.uint64(1)
        return woken

    @jit
    def poll(fds, ms):
        """poll() one file descriptor for POLLIN (``fds``: int32[2], the fd and the events, as struct
        pollfd); True when it is readable, False when ``ms`` ran out."""
        return _poll(fds.ctypes.data, 1, ms) > 0

    @jit
    def now_ns(ts):
        """CLOCK_MONOTONIC in nanoseconds (``ts``: int64[2], scratch for the struct timespec)."""
        return _clock_ns(CLOCK_MONOTONIC, ts)

    @jit
    def realtime_ns(ts):
        """The wall clock (CLOCK_REALTIME, what pcap stamps count) in ns since the epoch; ``ts``: int64[2]."""
        return _clock_ns(CLOCK_REALTIME, ts)

    @jit
    def nap(ts, ns):
        """Sleep ``ns`` nanoseconds (a signal cuts it short, which is harmless: the caller looks again)."""
        _set_timespec(ts, ns)
        _nanosleep(ts.ctypes.data, 0)
