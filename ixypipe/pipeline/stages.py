"""The stage processes: RX per queue, workers, TX per queue.

Each stage is one process started by the supervisor with the PipelinePlan
and its own stage name.  Every loop "breathes" as Snabb's engine does: take
back what came home, push what is pending, pull a batch, process it, count.
A stage that finds an output ring full keeps the rest of its batch and
pulls nothing new until it is out (back-pressure reaches the NIC, which
counts a miss), so no packet is dropped between stages for lack of room.

Who touches what:
* RX owns its queue's descriptor ring and mempool; buffers come home to it
  through return rings.
* Workers map only the packet arena: never the BAR or a descriptor ring; and of
  it only what they write is writable (``attach_packet_arena``).
* TX owns its queue's descriptor ring and sends completed buffers home.
"""

from __future__ import annotations

import errno
import functools
import logging
import operator
import os
import select
import sys
import time
import traceback

import numpy as np

from ixypipe import privilege
from ixypipe.layout import (
    STAGE_CMD_ABANDON,
    STAGE_CMD_DRAIN,
    STAGE_COUNTERS_DTYPE,
    STAGE_COUNTERS_REGION,
    STAGE_PHASE_IMPORT,
    STAGE_PHASE_SETUP,
    STAGE_ROW_DTYPE,
    STAGE_STATE_DEAD,
    STAGE_STATE_DONE,
    STAGE_STATE_DRAINING,
    STAGE_STATE_RUNNING,
    WAKE_LINE_DTYPE,
    WAKE_REGION,
)
from ixypipe.memory import batchcheck
from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing, HomingError
from ixypipe.memory.ledger import Ledger
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import DEFAULT_NAME as PACKET_BUFFERS
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import DeviceError
from ixypipe.pipeline import breathe, forkserver, keyedstate, leftovers, mirror, stagetable
from ixypipe.pipeline import breathe_jit as K
from ixypipe.pipeline.breathe import RX_WAIT_MS, WAKE_TIMEOUT
from ixypipe.pipeline.plan import PipelinePlan, StagePlan
from ixypipe.pipeline.stagetable import PROCESS_FIELDS, SLOT, StageRow
from ixypipe.proc import (
    Backoff,
    Pacing,
    die_with_parent,
    ignore_stop_signals,
    set_process_name,
    set_timer_slack,
    setup_logging,
)
from ixypipe.protocols import FLOW_HASH_MIX, FLOW_KEY_LEN, FLOW_KEY_OFF
from ixypipe.rings.spsc import Ring
from ixypipe.rings.wakeup import Doorbell, Sleeper
from ixypipe.workers.confine import confine

log = logging.getLogger(__name__)
PUBLISH_EVERY = 64            # idle loops between counter publications
FLOW_MIX = np.uint32(FLOW_HASH_MIX)
LIGHT_BATCH_DIVISOR = 8      # on shared CPUs, a poll that got < batch/8 packets still naps
STAGE_TIMER_SLACK_NS = 1000
STAGE_MAX_NAP = 100e-6       # a paced nap on a shared CPU lasts at most this (the latency one stage adds)
TX_DRAIN_SECONDS = 2.0       # at most this long waiting for the NIC to finish posted descriptors
RX_DRAIN_BUSY_MAX = 5.0       # seconds of pulling after a drain is asked, when a paused source still delivers
RX_DRAIN_IDLE_POLLS = 100     # empty polls that prove the NIC ring is empty
PAUSED_SOURCES = ("sim", "pcap")   # port drivers whose traffic the supervisor pauses before it asks RX to drain
VERDICT_MAX = int(np.iinfo(np.int16).max)   # verdicts are int16: a wider value is clamped here (no route)
_HEARTBEAT, _LAST_BATCH, _LAST_RING, _BATCH_NO = (SLOT[f] for f in ("heartbeat", "last_batch", "last_ring",
                                                                     "batch_no"))
_PROCESS_SLOTS = [SLOT[f] for f in PROCESS_FIELDS]
_BAD_INDEX, _WORKER_ERROR = SLOT["drop_bad_index"], SLOT["drop_worker_error"]


class Outbox:
    """What a stage still has to push into each output ring.

    Rings the consumer's doorbell when idle stages wake rather than nap.  A
    consumer that died (the supervisor marks its row) is pushed to no more:
    what is pending for it goes to ``discard`` and counts as ``stage_died``.
    """

    def __init__(self, rings: list[Ring], doorbells: list[Doorbell] | None = None,
                 consumer_dead=None, discard=None):
        self.rings = rings
        self.doorbells = doorbells
        self.consumer_dead = consumer_dead      # k -> True once ring k's consumer is gone
        self.discard = discard                  # idx -> None: send buffers home, count them
        self.pending = [np.empty(0, np.uint32) for _ in rings]
        self.held = 0

    def put(self, k: int, idx: np.ndarray) -> None:
        """Push ``idx`` into ring ``k``; what does not fit waits behind what already waits for that ring.

        A worker puts one batch per input ring in a pass, so a second batch can find ring ``k`` with
        packets pending: it queues behind them (order kept, nothing overwritten, ``held`` exact).
        """
        if len(self.pending[k]):
            self.pending[k] = np.concatenate((self.pending[k], idx))
            self.held += len(idx)
            return
        sent = self.rings[k].enqueue(idx)
        if sent and self.doorbells:
            self.doorbells[k].ring()
        if sent < len(idx):
            self.pending[k] = idx[sent:].copy()
            self.held += len(idx) - sent

    def keep(self, k: int, idx: np.ndarray) -> None:
        """``idx`` did not fit into ring ``k`` (a compiled pass stalled): it waits for the next flush."""
        self.pending[k] = np.concatenate((self.pending[k], idx)) if len(self.pending[k]) else idx
        self.held += len(idx)

    def flush(self) -> bool:
        """Push what is pending; True when nothing is left."""
        for k, rest in enumerate(self.pending):
            if len(rest):
                sent = self.rings[k].enqueue(rest)
                if sent and self.doorbells:
                    self.doorbells[k].ring()
                elif not sent and self.consumer_dead is not None and self.consumer_dead(k):
                    self.discard(rest)
                    sent = len(rest)
                self.pending[k] = rest[sent:]
                self.held -= sent
        return self.held == 0

    def any_dead(self, rings=None) -> bool:
        """Whether the consumer of one of ``rings`` (indices; all by default) is gone (a worker waiting for its
        replacement, a TX stage)."""
        rings = range(len(self.rings)) if rings is None else rings
        return self.consumer_dead is not None and any(self.consumer_dead(k) for k in rings)


def attach_packet_arena(plan: PipelinePlan, me: StagePlan) -> Arena:
    """The packet arena as a stage maps it: RX and TX read-write; a worker read-only but for what it writes
    (memory/arena.py's two-file arena): the packet buffers, its stage-table row, counter block, keyed-counter
    block and wake line,
    the wake lines of the stages it feeds (its doorbells clear their flags) and the rings it is an end of.
    The rest (mempools, other rings and rows, the plan, the arena's header and tables) it cannot write: a
    write through any route faults in the worker alone."""
    if me.role != "worker":
        return Arena.attach(plan.packet_arena)
    arena = Arena.attach(plan.packet_arena, read_only=True)

    def whole(name: str) -> tuple[int, int]:
        region = arena.region(name)
        return region.offset, region.size

    def item(name: str, row: int, size: int) -> tuple[int, int]:
        return arena.region(name).offset + row * size, size

    rings = [*me.in_rings, *me.out_ring_of.values(), *me.home_rings.values()]
    spans = [whole(PACKET_BUFFERS), *(whole(r) for r in rings), item(stagetable.REGION, me.row, STAGE_ROW_DTYPE.itemsize),
             item(STAGE_COUNTERS_REGION, me.row, STAGE_COUNTERS_DTYPE.itemsize)]
    keyed = keyedstate.block_span(arena, plan, me.worker)
    if keyed is not None:
        spans.append(keyed)
    if arena.find(WAKE_REGION) is not None:
        rows = {me.row, *(plan.consumer_row(r) for r in me.out_ring_of.values())}
        spans += [item(WAKE_REGION, row, WAKE_LINE_DTYPE.itemsize) for row in sorted(rows)]
    arena.grant_writes(spans)
    return arena


class Stage:
    """What every stage process has: the packet arena, its row, its counters."""

    def __init__(self, plan: PipelinePlan, me: StagePlan):
        self.plan = plan
        self.me = me
        self.arena = attach_packet_arena(plan, me)
        self.bufs = PacketBuffers.attach(self.arena)
        batchcheck.warm_up(self.bufs.length)
        self.row = StageRow(self.arena, me.row)
        self.tap = mirror.Tap.of(self.arena, plan.stages, me, self.bufs)    # RX, TX: copies for a capture
        self.slots = self.row.slots          # the heartbeat and batch marks: one memoryview store each
        self.backoff = Backoff(plan.idle == "spin", plan.shared_cpus)
        self.batch = plan.batch_size
        # on shared CPUs a napping stage lets a trickle build up to a batch; waking stages never wait
        self.light = max(1, plan.batch_size // LIGHT_BATCH_DIVISOR) if plan.shared_cpus and plan.idle == "nap" else 0
        wakes = plan.idle == "wake"
        self.sleeper = Sleeper(self.arena, me.row) if wakes and me.role in ("worker", "tx") else None
        self.pacing = None           # shared CPUs: set by the loop, which knows its input's capacity
        self.rx_poll = None          # "wake" mode RX: a select.poll on the port's file descriptor, if it has one
        self.refused_noted = False    # RX: the warning about indices a return ring gave back that were not out
        self.loops = self.idle = self.batches = 0
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = self.stalls = 0

    def ring(self, name: str) -> Ring:
        return Ring.attach(self.arena, name)

    def outbox(self, names: list[str], send_home) -> Outbox:
        """Output rings, with their consumers' doorbells ("wake" mode) and what to do if a consumer dies."""
        rows = [self.plan.consumer_row(n) for n in names]
        bells = [Doorbell(self.arena, r) for r in rows] if self.plan.idle == "wake" else None
        table = stagetable.table(self.arena)

        def dead(k: int) -> bool:      # died, or left early because its device is gone
            return int(table[rows[k]]["state"]) in (STAGE_STATE_DEAD, STAGE_STATE_DONE)

        def discard(idx: np.ndarray) -> None:
            send_home(idx)
            self.row.add("drop_stage_died", len(idx))

        return Outbox([self.ring(n) for n in names], bells, dead, discard)

    def homing(self, ledger: Ledger | None = None) -> Homing:
        """Buffers go home through the return ring of the pool that owns them (it holds a whole pool); with a
        ``ledger``, each buffer sent home is forgotten in it."""
        rings = {pool: self.ring(r) for pool, r in self.me.home_rings.items()}
        homes = {pool: ring.enqueue if ledger is None else ledger.forgetting(ring.enqueue)
                 for pool, ring in rings.items()}
        return Homing(self.bufs, homes,
                      {p.pool_id: (p.first, p.count) for p in self.plan.pools if p.pool_id in rings})

    def draining(self) -> bool:
        return self.row["command"] >= STAGE_CMD_DRAIN

    def device_gone(self) -> bool:
        return self.row["command"] == STAGE_CMD_ABANDON

    def producers_left(self) -> bool:
        """Whether every stage that feeds this one's input rings has left its loop or died: only then does an
        empty input stay empty.  A drain does not always go in data-flow order: a producer blocked on this
        stage's full ring is watched on with this stage's role, and still pushes while this one drains."""
        table = stagetable.table(self.arena)
        return all(int(table[row]["state"]) >= STAGE_STATE_DRAINING for row in self._producer_rows)

    @functools.cached_property
    def _producer_rows(self) -> list[int]:
        return [self.plan.producer(r).row for r in self.me.in_rings]

    def publish(self, held: int = 0) -> None:
        row = self.row
        row["loops"] = self.loops
        row["idle_loops"] = self.idle
        row["batches"] = self.batches
        row["packets_in"] = self.packets_in
        row["bytes_in"] = self.bytes_in
        row["packets_out"] = self.packets_out
        row["bytes_out"] = self.bytes_out
        row["held"] = held
        row["stalls"] = self.stalls

    def absorb(self) -> None:
        """Take this process's counters back from its row, where a compiled run (breathe_jit.py) counted."""
        slots = self.slots
        (self.loops, self.idle, self.batches, self.packets_in, self.bytes_in, self.packets_out, self.bytes_out,
         self.stalls) = (slots[_PROCESS_SLOTS[k]] for k in range(len(PROCESS_FIELDS)))

    def took(self, ring: int, n: int) -> None:
        """A batch of ``n`` was taken from in_rings[ring] (-1: the NIC queue): what a hung stage was holding."""
        self.batches += 1
        slots = self.slots
        slots[_LAST_BATCH] = n
        slots[_LAST_RING] = ring
        slots[_BATCH_NO] = self.batches

    def tick(self, worked: bool, held: int = 0, moved: int = 0, still_idle=None) -> None:
        """End of one loop: count it, publish counters, wait when idle.

        Idle waiting by the pipeline's ``idle`` mode: "spin" never sleeps;
        "wake" lets a stage that can block (a ring consumer, ``still_idle``
        given, sleeps on its semaphore until a producer rings; an RX stage
        whose port has a file descriptor blocks in poll()) block at once, with
        no sched_yield first: on a CPU shared with a busy process a yield hands
        it the rest of its time slice (milliseconds), while a sleeper that is
        woken runs at once; a lone packet is picked up at once and an idle
        stage costs nothing.
        Everything else waits in ``wait``: a nap paced by the input's rate,
        else the back-off ladder (spin, yield, short naps).  In "nap" mode on a shared CPU a
        loop that moved only a trickle naps too: a batch builds up, which
        saves the per-batch cost the stage's CPU neighbours pay for.
        The heartbeat is stored first, every loop; every wait below is
        bounded (WAKE_TIMEOUT, RX_WAIT_MS, a nap), so it moves while idle too.
        """
        self.loops += 1
        self.slots[_HEARTBEAT] = self.loops
        if worked:
            self.publish(held)
            if moved and moved < self.light:
                self.wait()
            else:
                self.backoff.work()
            return
        self.idle += 1
        if self.idle % PUBLISH_EVERY == 0:
            self.publish(held)
        self.rest(held, still_idle)

    def rest(self, held: int = 0, still_idle=None) -> None:
        """The wait after a loop that found nothing to do (see tick)."""
        sleeps = self.sleeper is not None and still_idle is not None
        polls = self.rx_poll is not None and not self.draining()     # draining: count empty polls quickly
        if held or not (sleeps or polls):
            self.wait()
        elif sleeps:
            self.publish(held)
            self.sleeper.sleep(still_idle, WAKE_TIMEOUT)
        else:
            self.publish(held)
            self.rx_poll.poll(RX_WAIT_MS)

    def pace(self, capacity: int) -> None:
        """On shared CPUs, nap by the input's rate (proc.Pacing): a quarter of the input ring (``capacity``)
        builds up between polls, or STAGE_MAX_NAP's worth if that comes first.  Not a batch: the compiled
        passes take what built up in batches, so what a wake-up costs is spread over as many packets at
        batch 32 as at 2048, and the nap's cap bounds the latency a stage adds."""
        if self.plan.shared_cpus and self.plan.idle != "spin":
            self.pacing = Pacing(max(self.batch, capacity // 2), max_nap=STAGE_MAX_NAP)

    def wait(self) -> None:
        """One idle wait: a paced nap when a rate is known and no drain is asked, else the back-off ladder."""
        nap = self.pacing.nap(self.packets_in) if self.pacing is not None else 0.0
        if nap > 0.0 and not self.draining():
            time.sleep(nap)
        else:
            self.backoff.wait()


# ---- the compiled passes -------------------------------------------------------------

def breathe_compiled(st: Stage, passes, still_idle=None) -> int:
    """One run of a stage's compiled passes (pipeline/breathe.py), then what Python decides: the run counted
    in the row, so the stage takes its counters back, and an idle run is followed by the idle wait (tick's)."""
    code = passes.run()
    st.absorb()
    if code == K.RUN_IDLE:
        if not passes.waits_itself:      # else it slept or polled in compiled code, and the time ran out
            st.rest(0, still_idle)
    elif code == K.RUN_LIGHT:
        st.wait()
    else:
        st.backoff.work()
    return code


# ---- RX -----------------------------------------------------------------------------

def run_rx(st: Stage, device, pool: Mempool) -> None:
    me, plan, bufs = st.me, st.plan, st.bufs
    returns = [st.ring(r) for r in me.in_rings]
    lent = Ledger(bufs.count, [(pool.first, pool.count)])        # what is out with the workers and TX
    outbox = st.outbox(me.out_rings, lent.forgetting(pool.free))
    n_workers = len(outbox.rings)
    fd = device.rx_fd(me.queue) if plan.idle == "wake" else None
    if fd is not None:                                     # the kernel wakes us when a frame arrives
        st.rx_poll = select.poll()
        st.rx_poll.register(fd, select.POLLIN)
    st.pace(plan.ports[me.port].rx_ring_size)
    got = np.empty(max(st.batch, 1), np.uint32)
    home = np.empty(pool.count, np.uint32)
    rr = 0
    idle_polls, drain_deadline = 0, None
    # asked to drain, RX takes what a paused source (the software 82599's generators, a file replay) already
    # put in the NIC ring and carries it through, so the model's count of delivered frames matches to the
    # frame.  From any other source (a wire, an interface) it takes nothing more: what is still in the NIC
    # ring was never received (the NIC counted it; the pipeline's accounting does not), and the stop does not
    # wait on traffic that never ends
    drains_nic = plan.ports[me.port].driver in PAUSED_SOURCES
    fast = breathe.bind_rx(st, device, pool, lent, outbox, returns, plan.distribute)   # loads its kernel now
    st.row["state"] = STAGE_STATE_RUNNING
    dead = False      # a worker died: until it is replaced Python's passes discard what goes to it (a compiled
    while True:       # run would nap on its full ring, one batch per run for the workers still there)
        if fast is not None:
            dead = dead and outbox.any_dead()
            if not outbox.held and not st.draining() and not dead:      # the compiled passes
                code = breathe_compiled(st, fast)
                if code == K.RUN_STALLED and outbox.any_dead(fast.waiting()):
                    fast.hand_over(outbox)          # Python's Outbox discards what waits for a dead worker
                    dead = True
                elif code == K.RUN_STALLED:
                    st.wait()                       # a worker's ring is full: back-pressure
                elif code == K.RUN_DEVICE:
                    device.rx_batch(me.queue, got)  # the driver's own call raises its error with its words
                device.rx_housekeeping(me.queue)
                note_refused(st, pool)
                continue
            fast.hand_over(outbox)       # Python's passes go on (a drain, a dead worker): nothing stays compiled
        worked, moved = False, 0
        for ring in returns:                               # 1. buffers come home
            n = ring.dequeue(home)
            if n:
                take_home(st, lent, pool, home[:n])
                worked = True
        if outbox.held:                                    # 2. push what is pending
            if not outbox.flush():
                st.stalls += 1
        elif drain_deadline is None or time.monotonic() < drain_deadline:   # 3. pull a batch from the NIC
            n = moved = device.rx_batch(me.queue, got)
            if n:
                worked = True
                st.packets_in += n
                st.row["packets_in"] = st.packets_in   # at once: the accounting must see it even if we die now
                st.took(-1, n)
                idx = got[:n].copy()
                idx, nbytes = drop_bad_packets(st, bufs, idx, pool.free, device.min_rx_frame)
                lent.take(idx)                             # the driver's own indices: all of them are lent
                st.tap.copy(idx)                           # while a capture asks (pipeline/mirror.py)
                st.bytes_in += nbytes
                rr = distribute(plan.distribute, bufs, idx, outbox, n_workers, rr)
                st.packets_out += len(idx)
        st.tick(worked, outbox.held, moved)
        if st.draining():
            # a paused source: stop pulling once the NIC ring stayed empty for a while, or after
            # RX_DRAIN_BUSY_MAX if it still delivers (a pause the model never confirmed), then hand on what
            # is in hand.  Loops blocked on a full output ring (a worker still starting after a restart)
            # neither poll nor count: the NIC ring may still hold frames.  Any other source: no more pulls
            if drain_deadline is None and not drains_nic:
                drain_deadline = 0.0
            if outbox.held:
                continue
            if drain_deadline is None:
                drain_deadline = time.monotonic() + RX_DRAIN_BUSY_MAX
            idle_polls = 0 if worked else idle_polls + 1
            if idle_polls > RX_DRAIN_IDLE_POLLS:
                drain_deadline = 0.0
            if time.monotonic() >= drain_deadline:
                if drain_deadline:
                    log.warning("port %s queue %d still delivered frames %g s into the drain: no more taken",
                                plan.port_names[me.port], me.queue, RX_DRAIN_BUSY_MAX)
                break
    st.row["state"] = STAGE_STATE_DRAINING         # out of the loop: no heartbeat from here on


def take_home(st: Stage, lent: Ledger, pool: Mempool, idx: np.ndarray) -> None:
    """Buffers back from a return ring go on the free list, but only those this RX queue lent out and did not
    get back yet: a second return of one (or no buffer of its pool) is refused and counted as ``bad_index``,
    never a second free-list entry."""
    back, refused = lent.give_back(idx)
    pool.free(back)
    if refused:
        st.row.add("drop_bad_index", refused)
        note_refused(st, pool)


def note_refused(st: Stage, pool: Mempool) -> None:
    """Say once that a return ring gave back indices that were not out (the Python and the compiled passes
    count them in the row's ``bad_index``)."""
    if st.row["drop_bad_index"] and not st.refused_noted:
        st.refused_noted = True
        log.warning("%s: refused %d buffer indices from a return ring that are not out from pool %s "
                    "(returned twice, or not its buffers): counted as bad_index", st.me.name,
                    st.row["drop_bad_index"], pool.name)


def drop_bad_packets(st: Stage, bufs: PacketBuffers, idx: np.ndarray, send_home,
                     min_len: int = 1) -> tuple[np.ndarray, int]:
    """Packets shorter than ``min_len`` (0, or a runt from a NIC) or longer than a buffer go home, counted
    as ``bad_packet`` (RX: from the wire; TX: whatever a worker wrote into the lengths), so a bad length
    never reaches a descriptor.  Returns the good packets and their bytes (one check: memory/batchcheck.py)."""
    bad, nbytes = batchcheck.lengths(bufs.length, idx, min_len, bufs.max_data)
    if not bad:
        return idx, nbytes
    lengths = bufs.length[idx]
    outside = (lengths < min_len) | (lengths > bufs.max_data)
    send_home(idx[outside])
    st.row.add("drop_bad_packet", bad)
    return idx[~outside], nbytes


def distribute(mode: str, bufs: PacketBuffers, idx: np.ndarray, outbox: Outbox, n: int, rr: int) -> int:
    """Hand a batch to the workers: all to one, round-robin by batch, or by flow hash."""
    if len(idx) == 0:
        return rr
    if n == 1:
        outbox.put(0, idx)
        return rr
    if mode == "round-robin":
        outbox.put(rr, idx)
        return (rr + 1) % n
    which = flow_worker(bufs, idx, n)
    for w in range(n):
        part = idx[which == w]
        if len(part):
            outbox.put(w, part)
    return rr


def flow_worker(bufs: PacketBuffers, idx: np.ndarray, n: int) -> np.ndarray:
    """Worker number per packet from a hash of its flow key: one flow always goes to one worker."""
    # an index array and a slice: a third of the time of two index arrays (58 -> 20 ns/packet at 2048)
    key = bufs.data[idx, FLOW_KEY_OFF:FLOW_KEY_OFF + FLOW_KEY_LEN].view("<u4")     # (n, 3) words
    h = (key[:, 0] ^ key[:, 1] ^ key[:, 2]) * FLOW_MIX
    return (h >> np.uint32(16)) % np.uint32(n)


# ---- worker -------------------------------------------------------------------------

def run_worker(st: Stage) -> None:
    """The worker loop, after start_worker loaded the user's worker (batch function, optional setup/teardown)."""
    from ixypipe.pipeline.stagetable import CounterWriter
    from ixypipe.workers import keyed
    from ixypipe.workers.api import (  # user API
        DROP,
        Batch,
        WorkerContext,
        WorkerResultError,
        merge_state,
        refused_counts,
    )
    from ixypipe.workers.builtin_jit import COMPILED

    me, plan, bufs = st.me, st.plan, st.bufs
    for header in (bufs.pool_id, bufs.index):      # which pool owns a buffer is not the worker's to change
        header.flags.writeable = False
    inputs = [st.ring(r) for r in me.in_rings]
    st.pace(min(r.capacity for r in inputs))
    out_ports = sorted(me.out_ring_of)
    homing = st.homing()
    outbox = st.outbox([me.out_ring_of[p] for p in out_ports], homing.send)
    slot_of_port = [out_ports.index(p) if p in out_ports else -1 for p in range(len(plan.ports))]   # port -> ring
    ctx = WorkerContext(me.worker, sum(s.role == "worker" for s in plan.stages), plan.port_names,
                        dict(getattr(plan, "worker_options", {})), base_dir=plan.worker_base_dir)
    counters = ctx.counters
    published = CounterWriter(st.arena, me.row)
    block = keyedstate.block(st.arena, plan, me.worker)
    ctx.keyed = keyed.KeyedTables(block) if block is not None else keyed.refusing()   # batch.count_by's tables
    none = np.empty(0, np.uint32)
    none.flags.writeable = False        # as the batches' indices are: numba compiles a read-only array apart
    _ = Batch(bufs, none, 0, 0, plan.port_names, {}).l4     # warm up: the compiled parser loads now, not at a packet
    passes = breathe.prepare_worker(st, outbox, inputs, [plan.forward_to[p] for p in me.in_ports], slot_of_port)
    if passes is not None and plan.worker_function in COMPILED:     # a built-in: compiled (and cached) while the
        passes.bind(COMPILED[plan.worker_function])                 # stage may still write numba's cache
    fast = []                               # a compiled worker's passes, compiled before the stage runs

    def bind(worker) -> None:
        fast.append(passes.bind(worker.compiled) if passes is not None else None)

    keyed.warm_up()                                                          # ... and the keyed-counter kernel
    worker = start_worker(st, ctx, bind)    # unprivileged from here on; a failure stops the stage with its traceback
    errors = ErrorLog(me.name, worker.where)
    fn = worker.process
    fast = fast[0]
    if fast is not None:
        log.debug("the worker function runs compiled (%s)", worker.where)
    got = np.empty(st.batch, np.uint32)

    def still_idle() -> bool:
        return not st.draining() and all(r.empty() for r in inputs)

    while True:
        if fast is not None and not outbox.held and not st.draining():      # the compiled passes
            code = breathe_worker(st, fast, homing, errors, counters, still_idle)
            if counters:
                published.publish(counters)
            if code == K.RUN_STALLED and outbox.any_dead(fast.waiting()):
                fast.hand_over(outbox)    # a TX stage died (none is replaced): Python's passes go on, and
                fast = None               # discard what is routed to it, not a compiled run napping on its ring
            elif code == K.RUN_STALLED:
                st.wait()
            continue
        if fast is not None:                         # what compiled passes could not push yet: the drain's now
            fast.hand_over(outbox)
        worked = False
        if outbox.held:
            if not outbox.flush():
                st.stalls += 1
        else:
            for k, (ring, in_port) in enumerate(zip(inputs, me.in_ports, strict=True)):
                n = ring.dequeue(got)
                if not n:
                    continue
                worked = True
                st.took(k, n)
                st.packets_in += n
                idx = screen_input(st, got[:n], bufs.count, errors)     # private: what is routed
                if not len(idx):
                    continue
                shown = idx.copy()                          # what the function sees: it may not change it
                shown.flags.writeable = False
                batch = Batch(bufs, shown, in_port, plan.forward_to[in_port], plan.port_names, counters, ctx)
                try:
                    out = verdicts(batch, fn(batch), len(idx))
                except BaseException as exc:               # user code (SystemExit too): drop the batch, go on
                    # a wrong return value is the function's error, not verdicts()'s: name the function
                    errors.record(exc, returned=isinstance(exc, WorkerResultError) and _raised_in(exc, verdicts))
                    st.row.add("drop_worker_error", len(idx))
                    homing.send(idx)
                    continue
                idx, out = keep_unchanged(st, idx, batch, shown, out, homing, errors)
                if len(idx):
                    route(st, idx, out, DROP, slot_of_port, outbox, homing)
            if counters:
                published.publish(counters)
        st.tick(worked, outbox.held, still_idle=still_idle)
        if (st.draining() and not worked and not outbox.held and st.producers_left()     # then the inputs: a
                and all(r.empty() for r in inputs)):         # producer's last push comes before it leaves its loop
            break
    st.row["state"] = STAGE_STATE_DRAINING
    if worker.teardown is not None:
        try:
            merge_state(ctx, worker.teardown(ctx))       # a dict it returns: its own state, summed over workers
        except BaseException as exc:       # SystemExit too: the stage still ends as drained
            log.error("%s: teardown(ctx) raised:\n%s", me.name, "".join(traceback.format_exception(exc)).rstrip())
    published.publish(counters)
    errors.summary()
    refused = refused_counts()
    if refused:
        log.warning("%s: %d counter updates were refused: the worker's counter block was full", me.name, refused)


def breathe_worker(st: Stage, fast, homing: Homing, errors: ErrorLog, counters: dict, still_idle) -> int | None:
    """One run of a compiled worker's passes (breathe.WorkerPasses), then what Python does: the function's
    counts go to the named counters, and an exception it raised drops the batch it held (``worker_error``),
    logged once by kind as a Python worker's.  Returns the run's code: a stalled run (a full TX ring: the
    passes keep what it did not take; on shared CPUs they nap until half the ring is free) is the caller's."""
    slots = st.slots
    bad_before, changed_before = slots[_BAD_INDEX], slots[_WORKER_ERROR]
    try:
        code = breathe_compiled(st, fast, still_idle)
        if slots[_WORKER_ERROR] > changed_before:     # the run's only worker_error: a changed index
            errors.note("changed batch.idx", f"{st.me.name}: the compiled worker function at {errors.where} "
                        "changed idx; a packet whose index was changed is dropped (reason worker_error), repeats "
                        "are counted")
    except Exception as exc:                        # raised in the worker's compiled function
        st.absorb()
        idx = fast.in_hand()
        errors.note(type(exc).__name__, f"{st.me.name}: the compiled worker function at {errors.where} "
                    f"raised {type(exc).__name__}: {exc}; the batch is dropped (reason worker_error), repeats are "
                    "counted")
        st.row.add("drop_worker_error", len(idx))
        homing.send(idx)
        code = None
    if code == K.RUN_HOME:
        raise HomingError(f"{st.me.name}: a buffer sent home found no home or a full return ring "
                          "(a buffer freed twice)")
    if fast.compiled.counters:
        for name, value in fast.counters().items():
            if value or name not in counters:
                counters[name] = counters.get(name, 0) + value
        fast.counts[:] = 0
    if slots[_BAD_INDEX] > bad_before:
        errors.note("bad input index", f"{st.me.name}: an index from an input ring is no buffer (the arena has "
                    f"{st.bufs.count}): refused, counted as bad_index; repeats are counted")
    return code


def screen_input(st: Stage, idx: np.ndarray, count: int, errors: ErrorLog) -> np.ndarray:
    """A worker's input batch without indices past the arena's ``count`` buffers (a corrupted ring): those are
    no packet, counted as ``bad_index`` and sent nowhere.  Returns ``idx`` itself when all are buffers."""
    lo, hi = batchcheck.span(idx)
    if hi < count:
        return idx
    bad = idx >= count
    st.row.add("drop_bad_index", int(bad.sum()))
    errors.note("bad input index", f"{st.me.name}: index {int(idx[bad][0])} from an input ring is no buffer "
                f"(the arena has {count}): refused, counted as bad_index; repeats are counted")
    return idx[~bad]


def keep_unchanged(st: Stage, idx: np.ndarray, batch, shown: np.ndarray, out, homing: Homing,
                   errors: ErrorLog) -> tuple[np.ndarray, np.ndarray | int]:
    """The packets whose index the worker's function left as it was shown, with their verdicts.

    ``batch.idx`` is read-only, but the function may make it writable (or replace it): an index it changed
    (to a buffer it was not given, another packet's, or no buffer at all) is never routed.  The packet given
    at that position goes home, counted as ``worker_error``; the check is one compiled pass
    (batchcheck.changed) over the private copy ``idx`` and what the function saw, ``shown``.
    """
    replaced = batch.idx is not shown
    if not replaced and not batchcheck.changed(idx, shown):
        return idx, out
    moved = np.ones(len(idx), bool) if replaced else idx != shown
    k = int(moved.sum())
    homing.send(idx[moved])
    st.row.add("drop_worker_error", k)
    pos = int(np.argmax(moved))
    what = ("replaced batch.idx" if replaced else
            f"changed batch.idx (position {pos}: {int(shown[pos])} instead of buffer {int(idx[pos])})")
    errors.note("changed batch.idx", f"{st.me.name}: the worker function {what}; a packet whose index was "
                "changed is dropped (reason worker_error), repeats are counted")
    if k == len(idx):
        return idx[:0], out
    return idx[~moved], out if isinstance(out, int) else out[~moved]


def start_worker(st: Stage, ctx, prepare=None):
    """Everything before the worker's loop that runs the user's code, in this order: the privilege drop and
    the fork guard (workers/confine.py), the import, setup(ctx), then ``prepare(worker)`` (a compiled worker's
    passes compile).  Until it is done the row's state stays "starting" and its phase says which (the
    supervisor's start-up watch names a worker stuck in one)."""
    from ixypipe.workers.loader import load

    plan = st.plan
    confine(plan.worker_function, plan.worker_base_dir, plan.worker_user, note_fork=fork_noter(st))
    st.row["phase"] = STAGE_PHASE_IMPORT
    worker = load(plan.worker_function, plan.worker_base_dir, per_packet=plan.worker_per_packet)
    st.row["phase"] = STAGE_PHASE_SETUP
    if worker.setup is not None:
        worker.setup(ctx)
    if prepare is not None:
        prepare(worker)
    st.row["phase"] = 0
    st.row["state"] = STAGE_STATE_RUNNING
    return worker


def _raised_in(exc: BaseException, fn) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].name == fn.__name__ and frames[-1].filename == fn.__code__.co_filename


def verdicts(batch, keep, n: int | None = None) -> np.ndarray | int:
    """The batch's verdicts: an array with one per packet, or one port index for every packet when the
    function left them all at the default (it never asked for ``batch.out``: no array is made).

    ``n``: the packets in the batch (the worker loop's own count: ``batch.n`` is the function's to change).
    Anything that is not a verdict raises WorkerResultError; what is returned is an int16 array of ``n``
    (verdict_array) or an int in -2..VERDICT_MAX, so routing it cannot fail."""
    n = batch.n if n is None else n
    fixed = not batch.verdicts_set()         # every packet at default_out: no verdict array unless one drops
    if fixed:
        default = min(max(operator.index(batch.default_out), -2), VERDICT_MAX)
        if keep is None:
            return default
    from ixypipe.workers.api import DROP, WorkerResultError

    if not fixed:
        out = batch.out
        if not isinstance(out, np.ndarray) or out.dtype.kind not in "iu" or out.shape != (n,):
            raise WorkerResultError(f"batch.out must stay an integer array of {n} verdicts (a port index or "
                                    f"DROP), got {type(out).__name__} {getattr(out, 'dtype', '')} "
                                    f"{getattr(out, 'shape', '')}", about="batch.out")
        out = verdict_array(out)
        if keep is None:
            return out
    mask = np.asarray(keep)
    if mask.dtype != np.bool_ or mask.shape != (n,):
        raise WorkerResultError(f"a worker returns None or a boolean mask of {n} packets, "
                                f"got {type(keep).__name__} {getattr(mask, 'shape', '')}")
    if fixed:
        # count_nonzero, not mask.all(): a ufunc reduction costs twice as much on a lone packet with cold caches
        return default if np.count_nonzero(mask) == n else np.where(mask, np.int16(default), np.int16(DROP))
    return np.where(mask, out, np.int16(DROP))


def verdict_array(out: np.ndarray) -> np.ndarray:
    """An integer verdict array of any width as int16: a value past int16 (no port has such an index) becomes
    VERDICT_MAX, one below DROP becomes DROP - 1, so both stay "no route", never wrap into a port or DROP."""
    if out.dtype == np.int16:
        return out
    wide = out.astype(np.int64) if out.dtype.kind == "i" else np.minimum(out, VERDICT_MAX).astype(np.int64)
    return np.clip(wide, -2, VERDICT_MAX).astype(np.int16)


def route(st: Stage, idx: np.ndarray, out: np.ndarray | int, drop: int, slot_of_port: list[int],
          outbox: Outbox, homing: Homing) -> None:
    """Send each packet where its verdict says (``out``: one per packet, or one for all): a TX ring, or
    home when dropped."""
    if isinstance(out, int):
        first = out
        same = True
        if not 0 <= first < len(slot_of_port):
            out = np.full(len(idx), first, np.int16)
    else:
        first = int(out[0])
        same = np.count_nonzero(out == first) == len(out)
    if same and 0 <= first < len(slot_of_port):
        outbox.put(slot_of_port[first], idx)
        st.packets_out += len(idx)
        return
    dropped = out == drop
    k = np.count_nonzero(dropped)
    if k:
        homing.send(idx[dropped])
        st.row.add("drop_worker", k)
    bad = ~dropped & ((out < 0) | (out >= len(slot_of_port)))
    k = np.count_nonzero(bad)
    if k:
        homing.send(idx[bad])
        st.row.add("drop_no_route", k)
    live = ~(dropped | bad)
    for port in np.unique(out[live]):
        part = idx[live & (out == port)]
        outbox.put(slot_of_port[int(port)], part)
        st.packets_out += len(part)


_LIBRARY_DIRS = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
                 os.path.dirname(os.path.abspath(np.__file__)) + os.sep)


class ErrorLog:
    """Logs the first error of each kind with its traceback, then counts repeats of that kind.

    A kind is the exception type and the file and line of the worker's code it was raised at (for a wrong
    return value: the worker function's file and line), never the message, which
    changes with the batch size or the data.  Repeats are logged as counts, at most
    every REPEAT_LOG_SECONDS, and once more at the end.  A traceback longer than
    MAX_TRACEBACK_CHARS (a huge message) is cut.
    """

    REPEAT_LOG_SECONDS = 1.0
    MAX_TRACEBACK_CHARS = 8000

    def __init__(self, stage: str, where: str = "", clock=time.monotonic):
        self.stage = stage
        self.where = where          # the worker function's "file:line"
        self.clock = clock
        self.seen: dict[tuple[str, str], int] = {}          # kind -> times seen
        self.logged: dict[tuple[str, str], int] = {}        # kind -> times seen when last reported
        self.last_log = 0.0

    def kind(self, exc: BaseException, returned: bool = False) -> tuple[str, str]:
        """(exception type, where): the file and line it was raised at, or the function that returned it."""
        if returned:
            return type(exc).__name__, f"{getattr(exc, 'about', 'the return value')} of {self.where}"
        frames = traceback.extract_tb(exc.__traceback__)
        # the innermost frame of the worker's own code: a CounterLimitError raised inside batch.count
        # is the line that called batch.count (numpy's and ixypipe's frames are not the user's to fix)
        own = [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)] or frames
        return type(exc).__name__, f"{own[-1].filename}:{own[-1].lineno}" if own else "?"

    def record(self, exc: BaseException, returned: bool = False) -> None:
        key = self.kind(exc, returned)
        if key not in self.seen:
            self.seen[key] = self.logged[key] = 1
            self.last_log = self.clock()
            if returned:
                log.error("%s: the worker function at %s returned something that is not a verdict; the batch is "
                          "dropped (reason worker_error), repeats are counted:\n%s: %s",
                          self.stage, self.where, type(exc).__name__, exc)
            else:
                text = "".join(traceback.format_exception(exc)).rstrip()
                if len(text) > self.MAX_TRACEBACK_CHARS:
                    text = f"{text[:self.MAX_TRACEBACK_CHARS]}... ({len(text):,} characters, cut)"
                log.error("%s: the worker function raised at %s; the batch is dropped (reason worker_error), "
                          "repeats are counted:\n%s", self.stage, key[1], text)
            return
        self._repeat(key)

    def note(self, kind: str, message: str) -> None:
        """A problem that is no exception (what the worker did to its batch): ``message`` is logged the first
        time ``kind`` is seen, repeats are counted like an error's."""
        key = (kind, self.where)
        if key not in self.seen:
            self.seen[key] = self.logged[key] = 1
            log.warning("%s", message)
            return
        self._repeat(key)

    def _repeat(self, key: tuple[str, str]) -> None:
        """Count a kind seen before; report the repeats at most every REPEAT_LOG_SECONDS."""
        self.seen[key] += 1
        now = self.clock()
        if now - self.last_log >= self.REPEAT_LOG_SECONDS:
            self.last_log = now
            self.log_repeats()

    def log_repeats(self) -> None:
        for key, count in self.seen.items():
            if count > self.logged[key]:
                log.error("%s: %s (%s) repeated %d times so far (%d since the last report)",
                          self.stage, key[0], key[1], count - 1, count - self.logged[key])
                self.logged[key] = count

    def summary(self) -> None:
        self.log_repeats()


# ---- TX -----------------------------------------------------------------------------

def run_tx(st: Stage, device, homing: Homing, ledger: Ledger) -> None:
    """``homing`` sends buffers home and forgets them in ``ledger`` (both from tx_ledger), which holds every
    buffer this queue took and has not sent home yet."""
    me, bufs, plan = st.me, st.bufs, st.plan
    inputs = [st.ring(r) for r in me.in_rings]
    st.pace(min(r.capacity for r in inputs))
    got = np.empty(st.batch, np.uint32)
    pending = np.empty(0, np.uint32)
    fast = breathe.bind_tx(st, device, ledger, inputs)     # loads its kernel now
    st.row["state"] = STAGE_STATE_RUNNING

    def still_idle() -> bool:
        return not st.draining() and all(r.empty() for r in inputs)

    while True:
        if fast is not None:
            if not len(pending) and not st.draining():   # the compiled passes
                code = breathe_compiled(st, fast, still_idle)
                if code == K.RUN_STALLED:
                    st.wait()                       # the NIC ring is full
                if code == K.RUN_DEVICE:
                    value = int(fast.state[K.ST_VALUE])
                    raise DeviceError(f"{me.name}: transmit on port {plan.port_names[me.port]} failed: " + (
                        os.strerror(-value) if -value in errno.errorcode else f"driver error {value}"))
                if code == K.RUN_HOME:
                    raise HomingError(f"{me.name}: a buffer sent home found no home or a full return ring "
                                      "(a buffer freed twice)")
                continue
            if fast.state[K.ST_LEFT]:    # Python's passes go on (a drain, a gone port): nothing stays compiled
                pending = np.concatenate((pending, fast.hand_over()))
        worked = False
        if len(pending) and st.device_gone():             # nothing will ever take them
            homing.send(pending)
            st.row.add("drop_stage_died", len(pending))
            pending = pending[:0]
        if len(pending):                                   # the NIC ring was full: retry first
            sent = device.tx_batch(me.queue, pending)
            if sent:
                count_sent(st, bufs, pending[:sent])
                worked = True
            else:
                st.stalls += 1
            pending = pending[sent:]
        else:
            for k, ring in enumerate(inputs):
                n = ring.dequeue(got)
                if not n:
                    continue
                worked = True
                st.took(k, n)
                st.packets_in += n
                idx = admit(st, ledger, got[:n].copy())      # never post a foreign, unknown or held buffer
                if st.device_gone():                       # the NIC died: these can never go out
                    homing.send(idx)
                    st.row.add("drop_stage_died", len(idx))
                    continue
                idx, nbytes = drop_bad_packets(st, bufs, idx, homing.send)   # a worker's bug never kills TX
                st.tap.copy(idx)                           # while a capture asks (pipeline/mirror.py)
                n = len(idx)
                sent = device.tx_batch(me.queue, idx)
                count_sent(st, bufs, idx[:sent], nbytes if sent == n else None)
                if sent < n:
                    pending = idx[sent:]
                    break
        st.tick(worked, len(pending), still_idle=still_idle)
        if (st.draining() and not worked and not len(pending) and st.producers_left()
                and all(r.empty() for r in inputs)):
            break
    st.row["state"] = STAGE_STATE_DRAINING
    if not st.device_gone():
        device.tx_drain(me.queue, timeout=TX_DRAIN_SECONDS)


def tx_ledger(st: Stage) -> tuple[Ledger, Homing]:
    """A TX queue's ledger of the buffers in its hands (memory/ledger.py), of the pools it sends home to, and
    its Homing, which forgets each buffer it sends home (the device's tx_done, drops, a gone device)."""
    ledger = Ledger(st.bufs.count, [(p.first, p.count) for p in st.plan.pools if p.pool_id in st.me.home_rings])
    return ledger, st.homing(ledger)


def admit(st: Stage, ledger: Ledger, idx: np.ndarray) -> np.ndarray:
    """What a TX queue may post of a batch from a ring: buffers of the pools it sends home to that it does not
    hold already (posted, pending, or earlier in the batch).  An index past the pools counts as ``bad_index``,
    one it holds as ``duplicate``; neither goes anywhere (they are not buffers this queue may touch).

    Checked where a bad index would do harm, before the descriptors: the rings live in shared memory and a
    worker runs user code, so a TX stage's input is the last point where a corrupted ring (or a buggy stage
    upstream) shows.  One buffer sent twice would go home twice, a double free that puts it in two places;
    an index past the arena would make the compiled TX path read outside the buffers.
    """
    good, outside, again = ledger.take(idx)
    if outside:
        st.row.add("drop_bad_index", outside)
    if again:
        st.row.add("drop_duplicate", again)
    return good


def count_sent(st: Stage, bufs: PacketBuffers, idx: np.ndarray, nbytes: int | None = None) -> None:
    """``idx`` went out (``nbytes``: their bytes, when the caller already has them)."""
    st.packets_out += len(idx)
    st.row["packets_out"] = st.packets_out     # at once, as RX does with packets_in
    st.bytes_out += int(bufs.length[idx].sum()) if nbytes is None else nbytes


# ---- process entry ------------------------------------------------------------------

def stage_main(plan: PipelinePlan, stage_name: str, log_level: int = logging.INFO,
               parent: int | None = None) -> None:
    """Entry point of a stage process (forked by the supervisor's fork server, pipeline/forkserver.py)."""
    ignore_stop_signals()        # Ctrl-C, a group's SIGTERM/SIGHUP: the supervisor stops the stages in order
    if parent is not None:
        die_with_parent(forkserver.expected_parent(parent))
        leftovers.mark_stage(parent, stage_name)      # what the stage starts carries the run's mark
    setup_logging(log_level, f"%(levelname)s {stage_name}: %(message)s")
    me = next(s for s in plan.stages if s.name == stage_name)
    set_process_name(f"ixy-{me.name}")
    set_timer_slack(STAGE_TIMER_SLACK_NS)
    if me.cpu is not None:
        os.sched_setaffinity(0, {me.cpu})
    log.debug("pid %d on CPU %s, idle mode %s", os.getpid(), me.cpu if me.cpu is not None else "any", plan.idle)
    st = Stage(plan, me)
    st.row["pid"] = os.getpid()
    st.row["cpu"] = me.cpu if me.cpu is not None else -1
    try:
        if me.role == "worker":
            run_worker(st)
        else:
            run_device_stage(st)
    except BaseException:        # SystemExit or KeyboardInterrupt from a worker's import or setup() too
        log.error("stage failed:\n%s", traceback.format_exc().rstrip())
        st.publish()
        leave(3)
    st.publish()
    st.row["state"] = STAGE_STATE_DONE
    leave(0)


def fork_noter(st: Stage):
    """What a child the worker's code forks (os.fork, multiprocessing's "fork") does before it leaves with
    FORKED_CHILD_EXIT (workers/confine.py guard_forks): it notes itself in the stage's row for the supervisor.

    The worker goes on (fork() returned a pid whose child exited at once): nothing shared was touched, so
    the run is intact and only reported.  fork+exec (subprocess) does not run these hooks and is allowed:
    the new program does not inherit the mappings.
    """
    slots, forks, pid = st.slots, SLOT["forks"], SLOT["fork_pid"]

    def note() -> None:
        slots[pid] = os.getpid()
        slots[forks] += 1

    return note


def leave(code: int) -> None:
    """Exit at once once the final counts are written: no interpreter teardown (its garbage collection
    of numba and numpy objects costs a stage ~0.4 s of CPU, which a busy machine turns into seconds)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_device_stage(st: Stage) -> None:
    from ixypipe.nic.ports import attach_port

    me, plan = st.me, st.plan
    spec = plan.ports[me.port]
    dev_arena = Arena.attach(plan.device_arena)
    root = plan.sysfs_roots.get(spec.name)
    if me.role == "rx":
        pool_plan = plan.pools[me.pool_id]
        pool = Mempool.attach(st.arena, st.bufs, pool_plan.name)
        device = attach_port(spec, dev_arena, st.bufs, {me.queue: pool}, sysfs_root=root)
        device.rx_batch(me.queue, np.empty(0, np.uint32))    # warm up (a compiled hot path loads now)
        privilege.drop_capabilities()                        # keeps the user (privilege.py)
        run_rx(st, device, pool)
    else:
        ledger, homing = tx_ledger(st)
        device = attach_port(spec, dev_arena, st.bufs, None, tx_done=homing, sysfs_root=root)
        device.tx_batch(me.queue, np.empty(0, np.uint32))    # warm up, as for RX
        privilege.drop_capabilities()                        # keeps the user (privilege.py)
        run_tx(st, device, homing, ledger)
    device.close()
