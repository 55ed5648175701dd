"""Binding an RX or TX stage to its compiled passes (breathe_jit.py): arrays, ring tables and parameters, once.

``RxPasses``/``TxPasses`` gather what the stage already has (its row, rings,
pool, ledger, the driver's compiled queue record) into the arrays the
kernel takes, so a run is one call with no argument built per call.  Each
offers ``run()`` (the reason the run returned, breathe_jit.RUN_*) and hands
what a stalled run left over to the Python side.  ``bind_rx``/``bind_tx``
return None when the stage cannot run compiled (numba missing, a port
without a compiled queue kernel or with ``hot_path = "numpy"``, a debug
pool): the Python passes in stages.py serve then, as the reference.
"""

from __future__ import annotations

import functools

import numpy as np

from ixypipe.layout import STAGE_ROW_DTYPE
from ixypipe.pipeline import breathe_jit as K
from ixypipe.pipeline import stagetable
from ixypipe.rings import spsc_jit, wakeup, wakeup_jit

# a busy run returns to Python after this many passes: at batch 32 about half a millisecond, so commands,
# publication and logging are never late by more than that
RUN_PASSES = 256
# empty passes a run makes before it returns RUN_IDLE: "spin" stays compiled that long, the other idle modes
# hand an idle stage to Python at once (it sleeps, polls or naps)
SPIN_IDLE_PASSES = 64
DISTRIBUTION_MODES = {"round-robin": K.MODE_ROUND_ROBIN, "flow": K.MODE_FLOW}
# the "wake" idle mode (the Python passes in stages.py and the compiled loop alike)
WAKE_TIMEOUT = 0.1           # seconds a sleeping stage waits at most (heartbeat, commands)
RX_WAIT_MS = 50              # an RX stage whose port has a file descriptor polls it this long


def _row_words(st) -> np.ndarray:
    off = st.arena.region(stagetable.REGION).offset + st.me.row * STAGE_ROW_DTYPE.itemsize
    return st.arena.buf[off:off + STAGE_ROW_DTYPE.itemsize].view(np.int64)


def _params(st, light: int, min_len: int, mode: int = K.MODE_ONE, fd: int | None = None) -> np.ndarray:
    """What the kernel needs to know of the stage, once: batch, budget, checks, distribution, the idle policy.

    In "wake" mode a ring consumer sleeps on its semaphore and an RX queue with a file descriptor polls it, in
    compiled code.  A stage whose naps are paced (Stage.pace: shared CPUs, not "spin") naps in compiled code
    with the same pacing: an RX queue with nothing to block on when idle, any stage whose output is full or
    whose pass moved a trickle (``light``, "nap" mode).  Otherwise an idle run returns and Python waits (its
    back-off ladder)."""
    p = np.zeros(K.PARAM_WORDS, np.int64)
    naps = st.pacing is not None
    if naps:
        p[K.P_NAP_WANT] = st.pacing.want
        p[K.P_NAP_MAX] = int(st.pacing.max_nap * 1e9)
    if st.plan.idle == "wake" and (st.me.role != "rx" or fd is not None):
        if st.me.role == "rx":
            p[K.P_IDLE_MODE], p[K.P_WAIT_MS] = K.IDLE_POLL, RX_WAIT_MS
        else:
            p[K.P_IDLE_MODE], p[K.P_WAIT_MS] = K.IDLE_SLEEP, int(WAKE_TIMEOUT * 1000)
            p[K.P_LINE] = wakeup.line_word(st.arena, st.me.row)
            p[K.P_SEM] = wakeup.semaphore_address(st.arena, st.me.row)
    elif naps and st.me.role == "rx":
        p[K.P_IDLE_MODE] = K.IDLE_NAP
    p[K.P_BATCH] = st.batch
    p[K.P_MAX_PASSES] = RUN_PASSES
    p[K.P_IDLE_PASSES] = SPIN_IDLE_PASSES if st.plan.idle == "spin" else 1
    p[K.P_LIGHT] = light
    p[K.P_MIN_LEN] = min_len
    p[K.P_MAX_DATA] = st.bufs.max_data
    p[K.P_MODE] = mode
    p[K.P_WAKE] = st.plan.idle == "wake"
    return p


def _homes(st) -> np.ndarray:
    """One row per pool the stage sends home to: its index range and its return ring."""
    rows = []
    for pool_id, ring_name in sorted(st.me.home_rings.items()):
        pool = st.plan.pools[pool_id]
        ring = st.ring(ring_name)
        rows.append(np.concatenate(([pool.first, pool.first + pool.count],
                                    spsc_jit.ring_row(ring.offset, ring.capacity))))
    return np.stack(rows) if rows else np.zeros((1, K.HOME_WORDS), np.int64)


def _waits(words: np.ndarray, inputs, fd: int | None = None) -> tuple:
    """The shared loop's ``waits``: the arena's words, the rings a sleeper looks at, a pollfd, a timespec, the
    pace of its naps."""
    return (words, spsc_jit.ring_rows(inputs), np.array([-1 if fd is None else fd, wakeup_jit.POLLIN], np.int32),
            np.zeros(2, np.int64), np.zeros(K.PACE_WORDS, np.int64))


def _warm_up(run: functools.partial) -> None:
    """Compile (or load from the cache) the kernel for these arguments now, with a run of no passes: before
    the stage reports running, never with its first packet."""
    params = run.args[-2]
    passes = params[K.P_MAX_PASSES]
    params[K.P_MAX_PASSES] = 0
    try:
        run()
    finally:
        params[K.P_MAX_PASSES] = passes


class _Outputs:
    """What a stage's compiled passes hold for its output rings: ``parts[k, :parts_n[k]]`` waits for ring k."""

    parts: np.ndarray
    parts_n: np.ndarray

    def waiting(self) -> list[int]:
        """The outputs that hold packets a full ring did not take yet."""
        return [k for k, n in enumerate(self.parts_n.tolist()) if n]

    def hand_over(self, outbox) -> None:
        """What waits for full rings goes to the stage's Outbox (Python's passes take over: a drain, a consumer
        that died); the passes forget it."""
        for k in self.waiting():
            outbox.keep(k, self.parts[k, :self.parts_n[k]].copy())
            self.parts_n[k] = 0


class RxPasses(_Outputs):
    """An RX stage's compiled passes: one NIC queue to the workers' rings."""

    def __init__(self, st, kernel, record, pool, lent, outbox, returns, distribute: str, min_len: int,
                 fd: int | None):
        words, slots = spsc_jit.arena_words(st.arena.buf)
        n_out = len(outbox.rings)
        self.parts = np.zeros((n_out, max(st.batch, 1)), np.uint32)
        self.parts_n = np.zeros(n_out, np.int64)
        self.state = np.zeros(K.STATE_WORDS, np.int64)
        rows = [st.plan.consumer_row(r.name) for r in outbox.rings]
        bells = np.array([(wakeup.line_word(st.arena, r), wakeup.semaphore_address(st.arena, r))
                          if st.plan.idle == "wake" else (0, 0) for r in rows], np.int64)
        stack, top = pool.free_stack()
        params = _params(st, st.light, min_len, DISTRIBUTION_MODES.get(distribute, K.MODE_ONE) if n_out > 1
                         else K.MODE_ONE, fd)
        self.waits_itself = params[K.P_IDLE_MODE] != K.IDLE_RETURN
        stage = (words, slots, _row_words(st), stack, top, lent.held, spsc_jit.ring_rows(returns),
                 spsc_jit.ring_rows(outbox.rings), bells, st.bufs.length, st.bufs.data,
                 np.empty(max(st.batch, 1), np.uint32), np.empty(pool.count, np.uint32), self.parts, self.parts_n,
                 self.state, st.tap.compiled)
        self.run = functools.partial(K.loop("rx", kernel), record, stage, stage[2], params,
                                     _waits(words, returns, fd))
        _warm_up(self.run)


class TxPasses:
    """A TX stage's compiled passes: the workers' rings to one NIC queue, finished buffers home."""

    def __init__(self, st, kernel, record, freed, handing, slot, ledger, inputs):
        words, slots = spsc_jit.arena_words(st.arena.buf)
        self.pending = np.empty(max(st.batch, 1), np.uint32)
        self.state = np.zeros(K.STATE_WORDS, np.int64)
        row = _row_words(st)
        stage = (freed, handing, slot, words, slots, row, ledger.held, ledger.ranges, _homes(st),
                 spsc_jit.ring_rows(inputs), st.bufs.length, np.empty(max(st.batch, 1), np.uint32), self.pending,
                 self.state, st.tap.compiled)
        params = _params(st, 0, 1)
        self.waits_itself = params[K.P_IDLE_MODE] != K.IDLE_RETURN
        self.run = functools.partial(K.loop("tx", kernel), record, stage, row, params, _waits(words, inputs))
        _warm_up(self.run)

    def hand_over(self) -> np.ndarray:
        """What the NIC ring did not take yet, for Python's passes (a drain, a port that is gone)."""
        left = self.pending[:int(self.state[K.ST_LEFT])].copy()
        self.state[K.ST_LEFT] = 0
        return left


def bind_rx(st, device, pool, lent, outbox, returns, distribute: str) -> RxPasses | None:
    bound = device.compiled_rx(st.me.queue) if K.AVAILABLE else None
    fd = device.rx_fd(st.me.queue) if st.plan.idle == "wake" else None
    return None if bound is None else RxPasses(st, *bound, pool, lent, outbox, returns, distribute,
                                               device.min_rx_frame, fd)


def bind_tx(st, device, ledger, inputs) -> TxPasses | None:
    bound = device.compiled_tx(st.me.queue) if K.AVAILABLE else None
    return None if bound is None else TxPasses(st, *bound, ledger, inputs)


class WorkerPasses(_Outputs):
    """A worker stage's compiled passes: the RX stages' rings through the worker's compiled function
    (workers/compiled.py) to the TX rings of the verdicts' ports, drops home.

    Made in two steps: the arrays before the worker's code runs (the doorbells' semaphores open while the
    stage is still privileged), then :meth:`bind` to the loaded worker's compiled function, which compiles the
    passes for it.  A worker maps the arena read-only but for its own regions (stages.attach_packet_arena):
    the kernel takes the arena through Arena.compiled_bytes, whose pages keep that protection."""

    def __init__(self, st, outbox, inputs, defaults: list[int], slot_of_port: list[int]):
        whole = st.arena.compiled_bytes()
        words, slots = spsc_jit.arena_words(whole)
        off = st.arena.region(stagetable.REGION).offset + st.me.row * STAGE_ROW_DTYPE.itemsize
        row = whole[off:off + STAGE_ROW_DTYPE.itemsize].view(np.int64)
        self.batch = batch = max(st.batch, 1)
        n_out = len(outbox.rings)
        self.compiled = None
        self.got = np.empty(batch, np.uint32)
        self.parts = np.zeros((n_out, batch), np.uint32)
        self.parts_n = np.zeros(n_out, np.int64)
        self.state = np.zeros(K.STATE_WORDS, np.int64)
        rows = [st.plan.consumer_row(r.name) for r in outbox.rings]
        bells = np.array([(wakeup.line_word(st.arena, r), wakeup.semaphore_address(st.arena, r))
                          if st.plan.idle == "wake" else (0, 0) for r in rows], np.int64)
        self.params = np.zeros(K.WORKER_PARAM_WORDS, np.int64)
        self.params[:K.PARAM_WORDS] = _params(st, 0, 1)
        self.waits_itself = self.params[K.P_IDLE_MODE] != K.IDLE_RETURN
        self.row = row
        self.waits = _waits(words, inputs)
        self.params[K.P_BUFFERS] = st.bufs.count
        # a full TX ring is pushed to again once half of it is free, when the stage naps (not in "spin" mode):
        # one nap per half a ring of packets, not one per batch
        self.params[K.P_ROOM] = min(r.capacity for r in outbox.rings) // 2 if st.plan.idle != "spin" else 0
        self.before = (words, slots, row, spsc_jit.ring_rows(inputs), np.array(defaults, np.int64),
                       spsc_jit.ring_rows(outbox.rings), bells, np.array(slot_of_port, np.int64), _homes(st),
                       np.zeros(st.bufs.count, np.uint8), st.bufs.data, st.bufs.length, st.bufs.flat,
                       self.got, np.empty(batch, np.uint32), np.empty(batch, np.int16), np.empty(batch, np.uint32))

    def bind(self, compiled) -> WorkerPasses | None:
        """Compile (or load) the passes for ``compiled`` (a CompiledWorker); None when there is none."""
        if compiled is None or getattr(compiled.kernel, "py_func", None) is None:
            return None
        if compiled is self.compiled:
            return self
        from ixypipe.workers.compiled import empty_headers

        self.compiled = compiled
        self.counts = np.zeros(len(compiled.counters), np.int64)
        self.params[K.P_HEADERS] = compiled.headers
        stage = (*self.before, empty_headers(self.batch if compiled.headers else 0), np.empty(self.batch, np.int64),
                 np.empty(self.batch, np.int64), self.counts, self.parts, self.parts_n, self.state)
        # a built-in's kernel is ixypipe's: its loop is cached; a user's function's is compiled in the process
        self.run = functools.partial(K.loop("worker", compiled.kernel, compiled.cached), 0, stage, self.row,
                                     self.params, self.waits)
        _warm_up(self.run)
        return self

    def in_hand(self) -> np.ndarray:
        """The batch the worker's function held when it raised (a copy); then nothing is in hand."""
        n = int(self.state[K.ST_CALLING])
        self.state[K.ST_CALLING] = 0
        return self.got[:n].copy()

    def counters(self) -> dict[str, int]:
        return dict(zip(self.compiled.counters, self.counts.tolist(), strict=True))


def prepare_worker(st, outbox, inputs, defaults: list[int], slot_of_port: list[int]) -> WorkerPasses | None:
    """A worker stage's compiled passes, to :meth:`WorkerPasses.bind` once its worker is loaded; None without
    numba."""
    return WorkerPasses(st, outbox, inputs, defaults, slot_of_port) if K.AVAILABLE else None
