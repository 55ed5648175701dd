"""The compiled stage passes (pipeline/breathe_jit.py) and the compiled ring ends (rings/spsc_jit.py), held to the
Python reference: the same indices in the same rings, the same counters in the stage row, the same refusals."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.layout import STAGE_CMD_DRAIN, STAGE_CMD_RUN, STAGE_ROW_DTYPE
from ixypipe.memory.ledger import Ledger
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import breathe
from ixypipe.pipeline import breathe_jit as K
from ixypipe.pipeline.mirror import Tap
from ixypipe.pipeline.stages import flow_worker
from ixypipe.pipeline.stagetable import SLOT
from ixypipe.protocols import FLOW_KEY_LEN, FLOW_KEY_OFF
from ixypipe.rings import spsc_jit
from ixypipe.rings.spsc import Ring

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(not K.AVAILABLE, reason="numba cannot load here: the compiled passes are off")

POOL = 64


@numba.njit
def feed(q, out):
    """A fake NIC queue: hands out src[pos:] (buffers taken from the pool beforehand)."""
    src, pos = q
    n = min(out.shape[0], src.shape[0] - pos[0])
    for i in range(n):
        out[i] = src[pos[0] + i]
    pos[0] += n
    return n


@numba.njit
def wire(q, bufs):
    """A fake NIC transmit queue with room[0] free slots left: logs what it takes, done with it at once."""
    log, logged, room, freed = q
    n = min(bufs.shape[0], room[0])
    for j in range(n):
        log[logged[0] + j] = bufs[j]
        freed[j] = bufs[j]
    logged[0] += n
    room[0] -= n
    return n, n


class Rig:
    def __init__(self, make_arena, out_capacity=(64, 64)):
        self.arena = make_arena(4 << 20, hugepages_mode="never")
        self.bufs = PacketBuffers.create(self.arena, 2 * POOL, 2048)
        self.pool = Mempool.create(self.arena, self.bufs, "pool0", 0, POOL, 0)
        self.returns = [Ring.create(self.arena, "ret", 128)]
        self.outs = [Ring.create(self.arena, f"out{k}", c) for k, c in enumerate(out_capacity)]
        self.words, self.slots = spsc_jit.arena_words(self.arena.buf)
        self.row = np.zeros(STAGE_ROW_DTYPE.itemsize // 8, np.int64)
        self.lent = Ledger(self.bufs.count, [(0, POOL)])

    def frames(self, n, lengths=None, seed=1):
        """``n`` buffers from the pool with random frames (their flow keys differ)."""
        idx = self.pool.alloc(n)
        rng = np.random.default_rng(seed)
        for k, i in enumerate(idx):
            size = 60 if lengths is None else lengths[k]
            self.bufs.data[i, :64] = rng.integers(0, 256, 64, dtype=np.uint8)
            self.bufs.length[i] = size
        return idx

    def params(self, batch=32, mode=K.MODE_FLOW, idle_passes=1, passes=16):
        p = np.zeros(K.PARAM_WORDS, np.int64)
        p[:] = 0
        p[K.P_BATCH], p[K.P_MAX_PASSES], p[K.P_IDLE_PASSES] = batch, passes, idle_passes
        p[K.P_MIN_LEN], p[K.P_MAX_DATA], p[K.P_MODE] = 1, self.bufs.max_data, mode
        return p

    def rx(self, src, params, fresh=True):
        """One run; ``src``: the indices the fake NIC hands out, or (indices, position) to go on where it was."""
        stack, top = self.pool.free_stack()
        if fresh:
            self.parts = np.zeros((len(self.outs), 64), np.uint32)
            self.parts_n = np.zeros(len(self.outs), np.int64)
            self.state = np.zeros(K.STATE_WORDS, np.int64)
        q = src if isinstance(src, tuple) else (src, np.zeros(1, np.int64))
        stage = (self.words, self.slots, self.row, stack, top, self.lent.held, spsc_jit.ring_rows(self.returns),
                 spsc_jit.ring_rows(self.outs), np.zeros((len(self.outs), 2), np.int64), self.bufs.length,
                 self.bufs.data, np.empty(64, np.uint32), np.empty(POOL, np.uint32), self.parts, self.parts_n,
                 self.state, self.tap().compiled)
        return K.loop("rx", feed, cached=False)(q, stage, self.row, params, self.waits(self.returns))

    def tap(self):
        """The stage's mirror tap (pipeline/mirror.py): idle unless a test gave it one."""
        return getattr(self, "mirror", None) or Tap.idle(self.bufs.data, self.bufs.length)

    def waits(self, inputs):
        return breathe._waits(self.words, inputs)

    def counters(self, *names):
        return [int(self.row[SLOT[n]]) for n in names]


def drain(ring: Ring) -> list[int]:
    out = np.zeros(ring.capacity, np.uint32)
    return out[:ring.dequeue(out)].tolist()


def test_compiled_ring_ends_and_python_ring_ends_take_turns_on_one_ring(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    ring = Ring.create(arena, "r", 8)
    words, slots = spsc_jit.arena_words(arena.buf)
    row = spsc_jit.ring_row(ring.offset, ring.capacity)
    assert spsc_jit.push(words, slots, row, np.arange(10, 20, dtype=np.uint32), 0, 10) == 8      # full at 8
    assert drain_n(ring, 3) == [10, 11, 12]
    assert ring.enqueue(np.array([90, 91, 92, 93], np.uint32)) == 3             # room for three: wraps
    dst = np.zeros(16, np.uint32)
    assert spsc_jit.pull(words, slots, row, dst, 2, 16) == 8
    assert dst[2:10].tolist() == [13, 14, 15, 16, 17, 90, 91, 92]
    assert ring.empty() and ring.taken() == 11


def drain_n(ring: Ring, n: int) -> list[int]:
    out = np.zeros(n, np.uint32)
    return out[:ring.dequeue(out)].tolist()


def test_a_garbage_producer_index_never_reads_past_the_slots(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    ring = Ring.create(arena, "r", 8)
    words, slots = spsc_jit.arena_words(arena.buf)
    row = spsc_jit.ring_row(ring.offset, ring.capacity)
    words[row[spsc_jit.RING_HEAD]] = np.uint64(2**40)               # a worker wrote garbage over the head
    dst = np.zeros(64, np.uint32)
    assert spsc_jit.pull(words, slots, row, dst, 0, 64) == 8         # at most a ring, never past it
    words[row[spsc_jit.RING_TAIL]] = np.uint64(2**41)               # the consumer index ahead of the producer's
    assert spsc_jit.pull(words, slots, row, dst, 0, 64) == 0
    assert spsc_jit.push(words, slots, row, dst, 0, 16) == 8       # room is never more than a ring


def test_rx_pass_drops_bad_lengths_home_and_splits_by_the_reference_flow_hash(make_arena):
    r = Rig(make_arena)
    lengths = [60] * 10
    lengths[3], lengths[7] = 0, 4000               # no packet, longer than a buffer
    src = r.frames(10, lengths)
    free_before = r.pool.available()
    code = r.rx(src, r.params())
    assert code == K.RUN_IDLE                       # the second pass found nothing
    good = np.delete(src, [3, 7])
    assert r.counters("packets_in", "packets_out", "drop_bad_packet", "batches", "loops", "idle_loops") == \
        [10, 8, 2, 1, 2, 1]
    assert r.counters("bytes_in") == [8 * 60] and r.counters("last_ring", "last_batch") == [-1, 10]
    assert r.pool.available() == free_before + 2    # the bad ones went home at once
    which = flow_worker(r.bufs, good, 2)
    assert drain(r.outs[0]) == good[which == 0].tolist() and drain(r.outs[1]) == good[which == 1].tolist()
    assert sorted(np.flatnonzero(r.lent.held).tolist()) == sorted(good.tolist())


def test_rx_pass_takes_home_only_what_is_out_and_counts_the_rest_as_bad_index(make_arena):
    r = Rig(make_arena)
    src = r.frames(6)
    r.rx(src, r.params())
    free = r.pool.available()
    r.returns[0].enqueue(np.array([src[0], src[1], src[0], 2 * POOL - 1, 2**32 - 1, src[2]], np.uint32))
    assert r.rx(np.empty(0, np.uint32), r.params()) == K.RUN_IDLE
    assert r.pool.available() == free + 3
    assert r.counters("drop_bad_index") == [3]       # src[0] twice, another pool's buffer, no buffer
    assert sorted(r.pool.free_indices().tolist()).count(int(src[0])) == 1


def test_rx_pass_stalls_with_the_rest_in_order_and_pushes_it_before_pulling_again(make_arena):
    r = Rig(make_arena, out_capacity=(4, 4))
    src = r.frames(10)
    q = (src, np.zeros(1, np.int64))
    assert r.rx(q, r.params(mode=K.MODE_ROUND_ROBIN)) == K.RUN_STALLED
    assert drain(r.outs[0]) == src[:4].tolist() and r.parts_n.tolist() == [6, 0]
    assert r.parts[0, :6].tolist() == src[4:].tolist()     # what did not fit, in order
    assert r.state[K.ST_RR] == 1                           # the next batch goes to the other worker
    assert r.counters("held", "packets_in") == [6, 10]
    # 4 more fit, then a pass that moves nothing is a stall
    assert r.rx(q, r.params(mode=K.MODE_ROUND_ROBIN), fresh=False) == K.RUN_STALLED
    assert drain(r.outs[0]) == src[4:8].tolist() and r.counters("held", "stalls") == [2, 1]
    assert r.rx(q, r.params(mode=K.MODE_ROUND_ROBIN), fresh=False) == K.RUN_IDLE
    assert drain(r.outs[0]) == src[8:].tolist() and r.counters("held", "packets_in") == [0, 10]
    r.outs[0].enqueue(np.arange(4, dtype=np.uint32))       # full again
    r.parts[0, :1], r.parts_n[0] = 7, 1
    assert r.rx(q, r.params(mode=K.MODE_ROUND_ROBIN), fresh=False) == K.RUN_STALLED
    assert r.counters("stalls", "packets_in") == [2, 10]   # and nothing more was pulled


def test_rx_pass_returns_at_a_command_before_pulling(make_arena):
    r = Rig(make_arena)
    r.row[SLOT["command"]] = STAGE_CMD_DRAIN
    src = r.frames(4)
    assert r.rx(src, r.params()) == K.RUN_COMMAND
    assert r.counters("packets_in", "loops") == [0, 1]


class TxRig(Rig):
    def tx(self, room, batch=32):
        if not hasattr(self, "log"):
            self.log = np.zeros(256, np.uint32)
            self.logged = np.zeros(1, np.int64)
            self.ledger = Ledger(self.bufs.count, [(0, POOL)])
            self.pending = np.zeros(32, np.uint32)
            self.state = np.zeros(K.STATE_WORDS, np.int64)
            self.handing = np.ones(1, np.int64)
        freed = np.zeros(256, np.uint32)
        homes = np.concatenate(([0, POOL], spsc_jit.ring_row(self.returns[0].offset, 128)))[None, :]
        stage = (freed, self.handing, 0, self.words, self.slots, self.row, self.ledger.held, self.ledger.ranges,
                 homes, spsc_jit.ring_rows(self.outs[:1]), self.bufs.length, np.empty(64, np.uint32), self.pending,
                 self.state, self.tap().compiled)
        return K.loop("tx", wire, cached=False)((self.log, self.logged, np.array([room]), freed), stage, self.row,
                     self.params(batch=batch), self.waits(self.outs[:1]))


def test_tx_pass_admits_by_the_ledger_checks_lengths_and_sends_home_what_the_nic_finished(make_arena):
    r = TxRig(make_arena)
    a, b, c, d = r.frames(4, [60, 0, 70, 80])
    r.outs[0].enqueue(np.array([a, a, 2 * POOL - 1, b, c, d, 2**32 - 1], np.uint32))
    assert r.tx(room=64) == K.RUN_IDLE
    assert r.log[:r.logged[0]].tolist() == [a, c, d]
    assert r.counters("drop_duplicate", "drop_bad_index", "drop_bad_packet") == [1, 2, 1]
    assert r.counters("packets_in", "packets_out", "bytes_out") == [7, 3, 210]
    assert drain(r.returns[0]) == [b, a, c, d]             # the bad one first, then what went out
    assert not r.ledger.held.any() and r.handing[0] == 0


def test_tx_pass_stalls_on_a_full_nic_ring_keeps_the_rest_and_posts_it_first_later(make_arena):
    r = TxRig(make_arena)
    idx = r.frames(5)
    r.outs[0].enqueue(idx)
    assert r.tx(room=2) == K.RUN_STALLED                      # the retry posted nothing: Python waits
    assert r.pending[:r.state[K.ST_LEFT]].tolist() == idx[2:].tolist()
    assert r.counters("packets_out", "bytes_out", "held", "stalls") == [2, 120, 3, 1]
    assert sorted(np.flatnonzero(r.ledger.held).tolist()) == sorted(idx[2:].tolist())   # still in its hands
    more = r.frames(2, seed=2)
    r.outs[0].enqueue(more)
    assert r.tx(room=64) == K.RUN_IDLE
    assert r.log[:r.logged[0]].tolist() == [*idx.tolist(), *more.tolist()]    # the rest first, in order
    assert r.counters("packets_out", "held") == [7, 0] and not r.ledger.held.any()


def test_flow_keys_of_equal_flows_land_together(make_arena):
    r = Rig(make_arena, out_capacity=(64, 64, 64))
    src = r.frames(12)
    key = bytes(range(FLOW_KEY_LEN))
    for i in src[::2]:
        r.bufs.data[i, FLOW_KEY_OFF:FLOW_KEY_OFF + FLOW_KEY_LEN] = np.frombuffer(key, np.uint8)
    r.rx(src, r.params())
    got = [drain(o) for o in r.outs]
    holders = [k for k, g in enumerate(got) if set(src[::2].tolist()) <= set(g)]
    assert len(holders) == 1 and sum(map(len, got)) == 12


def test_an_idle_compiled_consumer_sleeps_on_its_semaphore_until_a_bell_and_wakes_into_its_next_pass(make_arena):
    """wakeup_jit.sleep and bell on a real wake line and semaphore: the TX loop sleeps (IDLE_SLEEP), a
    producer's bell from another thread posts it, and the packet it brought goes out in the same run."""
    import threading
    import time

    from ixypipe.rings import wakeup, wakeup_jit

    r = TxRig(make_arena)
    wakeup.create(r.arena, [0], 1)
    try:
        line, sem = wakeup.line_word(r.arena, 0), wakeup.semaphore_address(r.arena, 0)
        params = r.params()
        params[K.P_IDLE_MODE], params[K.P_WAIT_MS] = K.IDLE_SLEEP, 1000
        params[K.P_LINE], params[K.P_SEM] = line, sem
        r.row[SLOT["command"]] = STAGE_CMD_RUN                     # what a running stage's row says
        idx = r.frames(3)
        posted = []

        def producer():
            deadline = time.monotonic() + 60
            while not r.words[line + wakeup_jit.WAKE_SLEEPING] and time.monotonic() < deadline:
                time.sleep(0.001)                                   # until the loop sleeps
            r.outs[0].enqueue(idx)
            posted.append(wakeup_jit.bell(r.words, line, sem))

        t = threading.Thread(target=producer)
        t.start()
        r.tx(room=64)           # warm the rig's arrays up (compiles the default run)
        t0 = time.monotonic()
        freed = np.zeros(256, np.uint32)
        homes = np.concatenate(([0, POOL], spsc_jit.ring_row(r.returns[0].offset, 128)))[None, :]
        stage = (freed, r.handing, 0, r.words, r.slots, r.row, r.ledger.held, r.ledger.ranges, homes,
                 spsc_jit.ring_rows(r.outs[:1]), r.bufs.length, np.empty(64, np.uint32), r.pending, r.state,
                 r.tap().compiled)
        params[K.P_MAX_PASSES] = 2       # an empty pass and the sleep, the pass that sends
        code = K.loop("tx", wire, cached=False)((r.log, r.logged, np.array([64]), freed), stage, r.row, params,
                     r.waits(r.outs[:1]))
        t.join()
        assert posted == [True]                                   # it was asleep when the bell rang
        assert r.log[:r.logged[0]].tolist()[-3:] == idx.tolist()  # and sent what woke it, in the same run
        assert code == K.RUN_BUDGET and time.monotonic() - t0 < 5.0
        assert int(r.words[line + wakeup_jit.WAKE_WAKEUPS]) == 1 and not r.words[line + wakeup_jit.WAKE_SLEEPING]
    finally:
        wakeup.unlink(r.arena, [0])


@pytest.mark.parametrize("hot_path", ["numpy", "numba"])
def test_fwd_forwards_every_generated_frame_on_the_compiled_and_the_reference_passes(hot_path, tmp_path):
    """The same finite traffic through fwd.toml with the ports' kernels (and so the stage passes) compiled or
    not: every generated frame is received or counted missed, transmitted, verified and touched at the sink."""
    from tests.support.runs import check_sinks, run, summary_of, variant

    per_port = 20_000
    path = variant(tmp_path, driver=f'"sim"\nhot_path = "{hot_path}"', flows=f"8\ncount = {per_port}")
    res = run([str(path), "--json"], timeout=300)
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["stop_reason"] != "duration"
    missed = sum(s["device_missed"].values())
    assert s["received"] + missed == 2 * per_port and s["transmitted"] == s["received"] and s["in_flight"] == 0
    assert s["sim"]["p0"]["sink_received"] + s["sim"]["p1"]["sink_received"] == s["received"]
    check_sinks(s)


def test_the_compiled_paced_nap_is_proc_pacing_in_nanoseconds():
    """breathe_jit.paced_nap_ns (the compiled loop's naps) against proc.Pacing (the Python passes'), on one
    made-up clock: no rate until a window brought ``want`` packets, then half the time ``want`` takes, capped."""
    from ixypipe.proc import PACE_WINDOW_NS, Pacing

    now = [5_000_000_000]
    ref = Pacing(2048, clock=lambda: now[0], max_nap=100e-6)
    pace = np.zeros(K.PACE_WORDS, np.int64)
    assert K.paced_nap_ns(pace, 0, now[0], 2048, 100_000) == 0
    count = 0
    steps = [(PACE_WINDOW_NS // 4, 100),            # a trickle: no steady rate
             (PACE_WINDOW_NS, 1000),                # still fewer than want in the window
             (PACE_WINDOW_NS, 6000),                # 6000 in 20 ms: 3.33 us each -> half of 2048 = 3.4 ms -> cap
             (PACE_WINDOW_NS, 400_000),             # 50 ns each -> 51.2 us
             (PACE_WINDOW_NS // 2, 10)]             # inside a window: the last rate holds
    got, want = [], []
    for dt, n in steps:
        now[0] += dt
        count += n
        got.append(int(K.paced_nap_ns(pace, count, now[0], 2048, 100_000)))
        want.append(round(ref.nap(count) * 1e9))
    assert got == want == [0, 0, 100_000, 51_200, 51_200]
