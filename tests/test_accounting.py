"""The final accounting as a function of plain data (stage-table counters, pool counts, deaths, restarts),
and the shutdown step that empties the rings before it."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ixypipe.layout import RING_HEAD_OFF, STAGE_ROW_DTYPE
from ixypipe.memory.arena import Arena
from ixypipe.memory.ledger import Ledger
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.pipeline.plan import build_plan
from ixypipe.pipeline.reclaim import reclaim_rings
from ixypipe.pipeline.report import Accounting, PoolCount
from ixypipe.pipeline.stages import admit, take_home
from ixypipe.pipeline.supervisor import packet_arena_regions
from ixypipe.rings.spsc import Ring

POOL = 64


def plan():
    """rx-p0-q0 (row 0), rx-p1-q0 (1), worker-0 (2), tx-p0-q0 (3), tx-p1-q0 (4); two pools of 64 buffers."""
    return build_plan("demo", "", "", [PortSpec("p0", "sim"), PortSpec("p1", "sim")], [1, 0], workers=1,
                      batch_size=32, ring_size=64, buffers_per_queue=POOL, worker_function="touch",
                      worker_per_packet=False, worker_base_dir=".", distribute="flow")


def table(received=(600, 400), transmitted=(500, 470), worker_drops=10, bad_packets=5, errors=3, no_route=2):
    t = np.zeros(5, STAGE_ROW_DTYPE)
    t["packets_in"][[0, 1]] = received
    t["bytes_in"][[0, 1]] = [60 * n for n in received]
    t["packets_out"][[3, 4]] = transmitted
    t["bytes_out"][[3, 4]] = [64 * n for n in transmitted]
    t["drop_bad_packet"][0] = bad_packets
    t["drop_worker"][2] = worker_drops
    t["drop_worker_error"][2] = errors
    t["drop_no_route"][2] = no_route
    return t


HOME = [PoolCount(POOL, 40, 24), PoolCount(POOL, 10, 54)]       # every buffer free or in an RX descriptor


def test_every_packet_and_buffer_accounted_for_is_ok():
    p = plan()
    assert [(s.name, s.row) for s in p.stages] == [("rx-p0-q0", 0), ("rx-p1-q0", 1), ("worker-0", 2),
                                                   ("tx-p0-q0", 3), ("tx-p1-q0", 4)]
    acc = Accounting.of(p, table(), HOME, stranded=10,
                        port_drops={"p0": {"rx_missed": 7, "rx_too_long": 2}, "p1": {"rx_missed": 0, "rx_too_long": 0}},
                        worker_counters={"worker-0": {"seen": 980}})
    assert (acc.received, acc.transmitted, acc.in_flight) == (1000, 970, 0)
    assert acc.drops == {"worker": 10, "worker_error": 3, "bad_packet": 5, "no_route": 2, "stranded": 10,
                         "stage_died": 0, "duplicate": 0, "bad_index": 0}
    assert (acc.buffers_total, acc.buffers_free, acc.buffers_in_nic) == (128, 50, 78)
    assert acc.ports == {"p0": {"rx_packets": 600, "rx_bytes": 36000, "tx_packets": 500, "tx_bytes": 32000},
                         "p1": {"rx_packets": 400, "rx_bytes": 24000, "tx_packets": 470, "tx_bytes": 30080}}
    assert acc.user_counters == {"seen": 980}
    assert acc.device_missed == {"p0": 7, "p1": 0}
    assert acc.problems == [] and acc.ok
    out = io.StringIO()
    acc.print(out, json_lines=False)
    assert out.getvalue().splitlines() == [
        "== accounting ==",
        "received              1,000",
        "transmitted             970",
        "dropped                  30   (worker 10, worker_error 3, bad_packet 5, no_route 2, stranded 10)",
        "in flight                 0",
        "buffers                 128   (50 free, 78 in RX descriptors)",
        "dropped at the ports, before the pipeline: p0 missed 7, p0 too_long 2",
        "worker counters: seen 980",
        "accounting OK",
    ]


def test_buffers_missing_without_a_death_are_a_leak():
    # 3 buffers are neither free nor in a descriptor, and the 3 packets in them are nowhere
    acc = Accounting.of(plan(), table(received=(603, 400)), [PoolCount(POOL, 37, 24), HOME[1]], stranded=10)
    assert acc.drops["stage_died"] == 0
    assert acc.in_flight == 3
    assert acc.problems == ["3 buffers never came home and no stage died: a leak",
                            "3 packets unaccounted for (received 1003, transmitted 970, dropped 30)"]
    assert not acc.ok


def test_buffers_a_dead_stage_held_are_dropped_with_reason_stage_died():
    pools = [PoolCount(POOL, 37, 24), HOME[1]]
    acc = Accounting.of(plan(), table(received=(603, 400)), pools, stranded=10, died=["worker-0"])
    assert acc.drops["stage_died"] == 3 and acc.in_flight == 0 and acc.ok
    # a restarted worker, or a dead simulator, lose buffers the same way
    for cause in ({"restarts": 1}, {"sim_died": True}):
        acc = Accounting.of(plan(), table(received=(603, 400)), pools, stranded=10, **cause)
        assert acc.drops["stage_died"] == 3 and acc.in_flight == 0 and acc.ok, cause
    assert Accounting.of(plan(), table(received=(603, 400)), pools, stranded=10, restarts=1).restarts == 1


def test_sent_buffers_a_dead_tx_stage_held_on_their_way_home_are_not_counted_twice():
    # tx-p1-q0 died holding 5 buffers it had sent (counted in its 475 transmitted) and 3 it had not posted yet:
    # 8 are missing from the pools, and only the 3 are lost with it
    pools = [PoolCount(POOL, 32, 24), HOME[1]]
    t = table(received=(608, 400), transmitted=(500, 475))
    acc = Accounting.of(plan(), t, pools, stranded=10, died=["tx-p1-q0"], sent_in_hand=5)
    assert (acc.transmitted, acc.drops["stage_died"], acc.in_flight) == (975, 3, 0) and acc.ok
    before = Accounting.of(plan(), t, pools, stranded=10, died=["tx-p1-q0"])        # what it was: -5 in flight
    assert (before.drops["stage_died"], before.in_flight) == (8, -5) and not before.ok


def test_packets_a_dead_tx_stage_posted_and_did_not_count_are_transmitted():
    # tx-p1-q0 posted 4 more than its 466 counted, then died; the NIC sent them and they came home
    t = table(transmitted=(500, 466))
    acc = Accounting.of(plan(), t, HOME, stranded=10, died=["tx-p1-q0"], sent_uncounted=4)
    assert (acc.transmitted, acc.drops["stage_died"], acc.in_flight) == (970, 0, 0) and acc.ok


def test_in_flight_is_received_minus_transmitted_minus_every_drop():
    acc = Accounting.of(plan(), table(transmitted=(500, 460)), HOME, stranded=4)
    assert acc.in_flight == 1000 - 960 - (10 + 3 + 5 + 2) - 4 == 16
    assert acc.problems == ["16 packets unaccounted for (received 1000, transmitted 960, dropped 24)"]
    # more out than in is just as wrong
    acc = Accounting.of(plan(), table(transmitted=(500, 490)), HOME, stranded=10)
    assert acc.in_flight == -20 and not acc.ok


def test_reclaim_counts_packets_in_forward_rings_as_stranded_and_sends_every_buffer_home():
    p = plan()
    with Arena.create(Arena.size_for(packet_arena_regions(p, 2048)), hugepages_mode="never", tag="test") as arena:
        bufs = PacketBuffers.create(arena, p.buffer_count)
        pools = [Mempool.create(arena, bufs, pp.name, pp.first, pp.count, pp.pool_id) for pp in p.pools]
        for ring in p.rings:
            Ring.create(arena, ring.name, ring.capacity)
        a, b = pools[0].alloc(5), pools[1].alloc(7)
        Ring.attach(arena, "rx-p0-q0>w0").enqueue(a[:3])          # forward: packets on their way
        Ring.attach(arena, "w0>tx-p1-q0").enqueue(b[:4])          # forward
        Ring.attach(arena, "tx-p1-q0>pool0").enqueue(a[3:])       # return: buffers going home
        Ring.attach(arena, "w0>pool1").enqueue(b[4:])            # return
        assert reclaim_rings(p, arena, pools, bufs) == 3 + 4
        assert [pool.available() for pool in pools] == [POOL, POOL]
        assert all(Ring.attach(arena, r).empty() for r in p.ring_names())


def test_each_ring_has_one_producer_and_one_consumer_whose_rows_a_drain_checks():
    """A worker or TX stage leaves its drain only once the producers of its input rings left their loops
    (Stage.producers_left): their rows come from the plan, for forward and return rings alike."""
    p = plan()
    assert [(p.producer(r).row, p.consumer_row(r)) for r in ("rx-p0-q0>w0", "rx-p1-q0>w0", "w0>tx-p0-q0",
                                                              "w0>tx-p1-q0", "tx-p1-q0>pool0", "w0>pool1")] \
        == [(0, 2), (1, 2), (2, 3), (2, 4), (4, 0), (2, 1)]
    with pytest.raises(KeyError, match="no stage produces into ring 'nowhere'"):
        p.producer("nowhere")


class Row(dict):
    def add(self, field, n):
        self[field] = self.get(field, 0) + n

    def __getitem__(self, field):
        return self.get(field, 0)


def fake_stage():
    return type("St", (), {"row": Row(), "refused_noted": False, "me": type("Me", (), {"name": "rx-p0-q0"})()})()


def test_a_duplicate_index_is_dropped_once_and_explains_the_buffer_it_overwrote():
    st = fake_stage()
    ledger = Ledger(16, [(0, 10)])
    idx = np.array([7, 3, 7, 9, 3, 7], np.uint32)
    assert admit(st, ledger, idx).tolist() == [7, 3, 9]          # the first of each, in order
    assert st.row == {"drop_duplicate": 3}
    clean = np.array([1, 2, 4], np.uint32)
    assert admit(st, ledger, clean) is clean and st.row == {"drop_duplicate": 3}
    # a ring slot overwritten with another index: that buffer never comes home, the duplicate drop is its packet
    t = table(transmitted=(500, 469))
    t["drop_duplicate"][3] = 1
    acc = Accounting.of(plan(), t, [PoolCount(POOL, 39, 24), HOME[1]], stranded=10)
    assert acc.ok and acc.in_flight == 0 and acc.drops["duplicate"] == 1 and acc.drops["stage_died"] == 0
    # an index added to a ring stands for no packet received: the buffers are all home
    t = table(transmitted=(500, 470))
    t["drop_duplicate"][3] = 1
    acc = Accounting.of(plan(), t, HOME, stranded=10)
    assert acc.ok and acc.in_flight == 0


def test_a_run_that_lost_every_packet_is_a_failure_unless_the_worker_dropped_them():
    assert Accounting(received=10, transmitted=0, drops={"worker_error": 10}).lost_everything
    assert Accounting(received=10, transmitted=0, drops={"stage_died": 4, "worker": 6}).lost_everything
    assert not Accounting(received=10, transmitted=0, drops={"worker": 10}).lost_everything    # a filter's choice
    assert not Accounting(received=10, transmitted=1, drops={"worker_error": 9}).lost_everything
    assert not Accounting(received=0, transmitted=0).lost_everything


def test_duplicates_are_found_in_small_and_large_batches():
    for n in (2, 64, 65, 4096):
        st = fake_stage()
        idx = np.arange(1000, 1000 + n, dtype=np.uint32)
        assert admit(st, Ledger(1000 + n, [(1000, n)]), idx) is idx and st.row == {}
        idx[-1] = idx[0]
        assert admit(st, Ledger(1000 + n, [(1000, n)]), idx).tolist() == list(range(1000, 1000 + n - 1))
        assert st.row == {"drop_duplicate": 1}


def test_tx_refuses_what_is_no_buffer_of_its_pools_and_what_it_holds_until_it_went_home():
    st = fake_stage()
    ledger = Ledger(2 * POOL, [(0, POOL)])                 # a TX queue that sends home to pool 0 only
    sent = admit(st, ledger, np.array([5, 2**32 - 1, POOL + 3, 6], np.uint32))
    assert sent.tolist() == [5, 6] and st.row == {"drop_bad_index": 2}       # no buffer; pool 1's buffer
    assert admit(st, ledger, np.array([6, 7], np.uint32)).tolist() == [7]    # 6 is still in its hands
    assert st.row == {"drop_bad_index": 2, "drop_duplicate": 1}
    home = []
    ledger.forgetting(home.extend)(np.array([5, 6], np.uint32))             # sent, went home: forgotten
    assert home == [5, 6] and ledger.holding() == 1
    assert admit(st, ledger, np.array([6, 5], np.uint32)).tolist() == [6, 5]  # reused: taken again


def test_rx_takes_a_buffer_home_once_and_refuses_a_second_return(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    bufs = PacketBuffers.create(arena, 2 * POOL)
    pool = Mempool.create(arena, bufs, "pool0", 0, POOL, 0)
    lent = Ledger(bufs.count, [(pool.first, pool.count)])
    out = pool.alloc(8)
    lent.take(out)
    st = fake_stage()
    take_home(st, lent, pool, out[:4])
    assert pool.available() == POOL - 4 and st.row == {}
    take_home(st, lent, pool, np.array([out[0], out[5], POOL + 1, 2**32 - 1, out[5]], np.uint32))
    assert pool.available() == POOL - 3                     # only out[5]: out[0] is home, the rest no buffer of it
    assert st.row == {"drop_bad_index": 4}
    assert sorted(pool.free_indices().tolist()).count(int(out[0])) == 1       # never a second free-list entry


def corrupted_pipeline(arena, p):
    bufs = PacketBuffers.create(arena, p.buffer_count)
    pools = [Mempool.create(arena, bufs, pp.name, pp.first, pp.count, pp.pool_id) for pp in p.pools]
    for ring in p.rings:
        Ring.create(arena, ring.name, ring.capacity)
    return bufs, pools


def test_reclaim_names_the_stage_and_ring_a_corruption_came_from_and_still_sends_the_rest_home():
    p = plan()
    with Arena.create(Arena.size_for(packet_arena_regions(p, 2048)), hugepages_mode="never", tag="test") as arena:
        bufs, pools = corrupted_pipeline(arena, p)
        a, b = pools[0].alloc(5), pools[1].alloc(7)
        Ring.attach(arena, "w0>tx-p0-q0").enqueue(np.array([a[0], 2**32 - 1, a[1]], np.uint32))
        Ring.attach(arena, "w0>tx-p1-q0").enqueue(np.array([b[0], b[0], b[1]], np.uint32))
        Ring.attach(arena, "tx-p1-q0>pool1").enqueue(b[2:])
        free_one = pools[0].alloc(1)
        pools[0].free(free_one)
        Ring.attach(arena, "tx-p0-q0>pool0").enqueue(np.array([a[2], free_one[0]], np.uint32))
        failures: list[str] = []
        assert reclaim_rings(p, arena, pools, bufs, failures) == 2 + 2       # the real ones in forward rings
        assert failures == [
            "stage worker-0 corrupted ring w0>tx-p0-q0: index 4294967295 out of range (the arena has 128 buffers)",
            f"stage worker-0 corrupted ring w0>tx-p1-q0: buffer {b[0]} is not out of its pool (free already, "
            "in a NIC ring, or twice in the rings)",
            f"stage tx-p0-q0 corrupted ring tx-p0-q0>pool0: buffer {free_one[0]} is not out of its pool (free "
            "already, in a NIC ring, or twice in the rings)"]
        assert [pool.available() for pool in pools] == [POOL - 2, POOL]      # a[3], a[4] were never in a ring
        assert sorted(pools[0].free_indices().tolist()) == sorted(set(pools[0].free_indices().tolist()))


def test_reclaim_does_not_read_a_ring_whose_indices_are_garbage():
    p = plan()
    with Arena.create(Arena.size_for(packet_arena_regions(p, 2048)), hugepages_mode="never", tag="test") as arena:
        bufs, pools = corrupted_pipeline(arena, p)
        a = pools[0].alloc(3)
        ring = Ring.attach(arena, "w0>tx-p0-q0")
        ring.enqueue(a)
        ring._ctl[RING_HEAD_OFF // 8] = 2**63 + 5     # the producer's index, as a stage could scribble it
        out = np.empty(4096, np.uint32)
        assert ring.dequeue(out) == ring.capacity    # a consumer never reads past the ring
        assert ring.count() == ring.capacity
        failures: list[str] = []
        assert reclaim_rings(p, arena, pools, bufs, failures) == 0
        assert failures == [f"stage worker-0 corrupted ring w0>tx-p0-q0: producer index {2**63 + 5} and consumer "
                            f"index 64 are {2**63 + 5 - 64} apart (capacity 64); its entries were not read"]
        assert pools[0].available() == POOL - 3
