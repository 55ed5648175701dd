"""Multi-queue pipelines (issue #24): the wiring of rx_queues x tx_queues x workers, the worker's output
box when several input rings feed one output ring, the pipeline-level stall watch, and the matrix on sim
ports end to end (a few cases by default; all of it under two CPU hogs with ``-m slow``)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ixypipe.layout import STAGE_STATE_RUNNING, STAGE_STATE_STARTING
from ixypipe.nic.device import PortSpec
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.liveness import FlowWatch
from ixypipe.pipeline.plan import build_plan, unfed_tx_queues
from ixypipe.pipeline.stages import Outbox
from ixypipe.rings.spsc import Ring
from tests.support.runs import check_sinks, run, summary_of, variant

MATRIX = [(rx, tx, w) for rx in (1, 2, 4) for tx in (1, 2) for w in (1, 2, 4)]
DEFAULT_CASES = [(2, 2, 2), (2, 2, 1), (4, 1, 4), (1, 2, 4)]     # the case, tx > workers, fan-in, fan-out


def plan_of(rx: int, tx: int, workers: int, ring_size: int = 64):
    ports = [PortSpec("p0", "sim", rx_queues=rx, tx_queues=tx), PortSpec("p1", "sim", rx_queues=rx, tx_queues=tx)]
    return build_plan("mq", "", "", ports, [1, 0], workers=workers, batch_size=32, ring_size=ring_size,
                      buffers_per_queue=256, worker_function="touch", worker_per_packet=False,
                      worker_base_dir=".", distribute="flow")


# ---- the plan ---------------------------------------------------------------------

@pytest.mark.parametrize(("rx", "tx", "workers"), MATRIX)
def test_plan_feeds_every_tx_stage_and_each_worker_one_queue_per_port(rx, tx, workers):
    plan = plan_of(rx, tx, workers)
    rxs, ws, txs = plan.stages_of("rx"), plan.stages_of("worker"), plan.stages_of("tx")
    assert [s.name for s in rxs] == [f"rx-{p}-q{q}" for p in ("p0", "p1") for q in range(rx)]
    assert [s.name for s in txs] == [f"tx-{p}-q{t}" for p in ("p0", "p1") for t in range(min(tx, workers))]
    assert [s.row for s in plan.stages] == list(range(len(plan.stages)))
    for w in ws:                                    # every RX queue feeds every worker; one TX queue per port
        assert w.in_rings == [f"{r.name}>w{w.worker}" for r in rxs]
        assert w.out_ring_of == {p: f"w{w.worker}>tx-{name}-q{w.worker % tx}" for p, name in enumerate(("p0", "p1"))}
    for t in txs:                                   # no TX stage without an input (run_tx's min() crashed)
        assert t.in_rings == [f"w{w}>{t.name}" for w in range(workers) if w % tx == t.queue]
    feeds = sorted(r for t in txs for r in t.in_rings)
    assert feeds == sorted(r for w in ws for r in w.out_ring_of.values())   # every worker output has a consumer


def test_unfed_tx_queues_are_named():
    ports = [PortSpec("p0", "sim", tx_queues=4), PortSpec("p1", "sim", tx_queues=2)]
    assert unfed_tx_queues(ports, 2) == [
        "port p0: TX queues 2, 3 not used (tx_queues = 4, workers = 2: each worker sends on one TX queue per port)"]
    assert unfed_tx_queues(ports, 1)[1] == ("port p1: TX queue 1 not used (tx_queues = 2, workers = 1: each worker "
                                            "sends on one TX queue per port)")
    assert unfed_tx_queues(ports, 4) == []


def test_check_names_unused_tx_queues_and_says_ok(tmp_path):
    path = variant(tmp_path, processes="1", rx_ring_size="4096\nrx_queues = 2\ntx_queues = 2")
    res = run([str(path), "--check"])
    assert res.returncode == 0, res.stderr
    assert "  stages: rx-p0-q0 rx-p0-q1 rx-p1-q0 rx-p1-q1 worker-0 tx-p0-q0 tx-p1-q0\n" in res.stdout
    assert ("  note: port p0: TX queue 1 not used (tx_queues = 2, workers = 1: each worker sends on one TX "
            "queue per port)\n") in res.stdout
    assert res.stdout.endswith("ok\n")


# ---- the worker's output box ---------------------------------------------------------

def test_outbox_second_batch_for_a_full_ring_waits_behind_the_first(make_arena):
    """Issue #24's stall: a worker puts one batch per input ring in a pass; the second batch for a ring
    that already had packets pending overwrote them (lost buffers) while ``held`` still counted them, so
    flush() never brought it to 0 and the worker stopped pulling for good."""
    arena = make_arena(1 << 20, "never")
    ring = Ring.create(arena, "w0>tx-p0-q0", 8)
    box = Outbox([ring])
    box.put(0, np.arange(0, 6, dtype=np.uint32))
    box.put(0, np.arange(10, 16, dtype=np.uint32))       # 2 fit, 4 pending
    box.put(0, np.arange(20, 23, dtype=np.uint32))       # the ring has room for none: behind the 4
    assert box.held == 7
    out = np.empty(16, np.uint32)
    assert ring.dequeue(out) == 8 and out[:8].tolist() == [0, 1, 2, 3, 4, 5, 10, 11]
    assert box.flush() is True and box.held == 0
    assert ring.dequeue(out) == 7 and out[:7].tolist() == [12, 13, 14, 15, 20, 21, 22]
    box.put(0, np.arange(30, 32, dtype=np.uint32))       # nothing pending: straight in
    assert box.held == 0 and ring.dequeue(out) == 2 and out[:2].tolist() == [30, 31]
    ring.close()


# ---- the pipeline stall watch ----------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def watched(make_arena):
    """A packet arena laid out as a supervisor's for 1 RX queue per port, 1 worker, 1 TX queue per port."""
    arena = make_arena(1 << 20, "never")
    plan = plan_of(1, 1, 1, ring_size=8)
    stagetable.create(arena, len(plan.stages))
    rings = {name: Ring.create(arena, name, 8) for name in plan.forward_rings()}
    table = stagetable.table(arena)
    table["state"] = STAGE_STATE_RUNNING
    clock = Clock()
    watch = FlowWatch(plan, arena, table, 2.0, clock=clock)
    yield plan, table, rings, watch, clock
    watch.close()
    for ring in rings.values():
        ring.close()


def loop(table, clock, seconds: float, missed: dict, watch) -> str:
    """Every stage loops (heartbeats move) for ``seconds`` in steps of the supervisor's check; the last verdict."""
    said = ""
    for _ in range(int(seconds / 0.5)):
        clock.now += 0.5
        table["heartbeat"] += 10
        said = watch.check(missed)
    return said


def test_a_full_ring_its_consumer_never_takes_from_is_a_stall_naming_every_stage(watched):
    plan, table, rings, watch, clock = watched
    worker = plan.stages_of("worker")[0].row
    rings["rx-p0-q0>w0"].enqueue(np.arange(8, dtype=np.uint32))          # full
    table[worker]["held"] = 5                                           # ... and its output is empty
    assert loop(table, clock, 1.5, {"p0": 0, "p1": 0}, watch) == ""     # not yet stall_timeout
    said = loop(table, clock, 1.0, {"p0": 0, "p1": 0}, watch)
    assert said == (
        "pipeline stalled: ring rx-p0-q0>w0 stayed full for 2.0 s, its consumer taking nothing; "
        "rx-p0-q0 waits on the NIC (RX queue 0); rx-p1-q0 waits on the NIC (RX queue 0); "
        "worker-0 holds 5 for outputs that are not full (w0>tx-p0-q0 0/8, w0>tx-p1-q0 0/8): it does not push; "
        "tx-p0-q0 waits on in (every input empty); tx-p1-q0 waits on in (every input empty)")
    assert watch.culprits() == [worker]


def test_a_consumer_that_takes_or_is_pushed_back_or_starved_is_no_stall(watched):
    plan, table, rings, watch, clock = watched
    worker = plan.stages_of("worker")[0].row
    full, out = rings["rx-p0-q0>w0"], rings["w0>tx-p1-q0"]
    full.enqueue(np.arange(8, dtype=np.uint32))
    got = np.empty(1, np.uint32)
    for _ in range(8):                           # the consumer takes one now and then: the ring refills
        loop(table, clock, 0.5, {}, watch)
        full.dequeue(got)
        assert full.enqueue(got) == 1
        assert watch.check({}) == ""
    out.enqueue(np.arange(8, dtype=np.uint32))   # its own output full and packets held: pushed back by a
    table[worker]["held"] = 3                    # TX stage that takes one now and then
    for _ in range(10):
        loop(table, clock, 0.5, {}, watch)
        out.dequeue(got)
        assert out.enqueue(got) == 1
        assert watch.check({}) == ""
    assert loop(table, clock, 2.0, {}, watch).startswith(       # until that TX stage stops taking
        "pipeline stalled: ring w0>tx-p1-q0 stayed full for 2.0 s, its consumer taking nothing; ")
    assert watch.culprits() == [plan.stages_of("tx")[1].row]
    table[worker]["held"] = 0
    out.dequeue(np.empty(8, np.uint32))
    clock.now += 10.0                             # nobody looped (starved): the heartbeat watch's business
    assert watch.check({}) == ""
    table[worker]["batch_no"] = int(table[worker]["batches"]) + 1     # inside a batch (compiling, say)
    assert loop(table, clock, 5.0, {}, watch) == ""
    table[worker]["batch_no"] = table[worker]["batches"]
    table[worker]["state"] = STAGE_STATE_STARTING          # a replacement starting (its heartbeat reset) ...
    table[worker]["heartbeat"] = 0
    assert loop(table, clock, 5.0, {"p0": 0}, watch) == ""
    assert loop(table, clock, 5.0, {"p0": 10_000}, watch) == ""   # ... while the port misses frames
    table[worker]["state"] = STAGE_STATE_RUNNING           # it runs and takes nothing: a stall again
    assert loop(table, clock, 2.0, {"p0": 20_000}, watch).startswith(
        "pipeline stalled: ring rx-p0-q0>w0 stayed full for 2.0 s, its consumer taking nothing, "
        "port p0 missed 10,000 frames while no stage moved a packet for 2.0 s; ")


def test_a_port_missing_frames_while_nothing_moves_is_a_stall(watched):
    plan, table, rings, watch, clock = watched
    assert watch.check({"p0": 100, "p1": 0}) == ""
    table[0]["packets_in"] = 50                                      # moving: fine however much is missed
    assert loop(table, clock, 1.0, {"p0": 200_000, "p1": 0}, watch) == ""
    for step in range(1, 5):                                         # then nothing moves, p0 keeps missing
        clock.now += 0.5
        table["heartbeat"] += 10
        said = watch.check({"p0": 200_000 + 1000 * step, "p1": 0})
    assert said.startswith("pipeline stalled: port p0 missed 4,000 frames while no stage moved a packet "
                           "for 2.5 s; rx-p0-q0 waits on the NIC (RX queue 0);"), said
    table[0]["packets_in"] = 51                                      # moving again
    assert watch.check({"p0": 300_000, "p1": 0}) == ""


# ---- end to end: the matrix on sim ports -----------------------------------------------------------

HOG = "while True: pass"


@pytest.fixture
def cpu_hogs():
    """Two busy loops beside the pipeline (the issue's load), always killed."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(2)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


def multiqueue_pipeline(tmp_path, rx: int, tx: int, workers: int):
    """fwd.toml with rx_queues/tx_queues on both ports, ``workers`` processes, 64 flows (RSS reaches every
    queue) and small batches and rings (an output ring fills often: the stall needed one full)."""
    return variant(tmp_path, {"stall_timeout": "5.0"}, processes=str(workers), flows="64", rate_mpps="0.1",
                   batch_size="256", ring_size="512",
                   rx_ring_size=f"4096\nrx_queues = {rx}\ntx_queues = {tx}")


def run_case(tmp_path, rx: int, tx: int, workers: int, packets: int) -> None:
    res = run([str(multiqueue_pipeline(tmp_path, rx, tx, workers)), "--packets", str(packets), "--json"],
              timeout=600)
    assert "pipeline stalled" not in res.stderr, res.stderr
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True and s["failures"] == [] and s["stop_reason"] == f"{packets} packets"
    assert s["received"] >= packets
    assert s["in_flight"] == 0 and sum(s["drops"].values()) == 0
    assert s["received"] == s["transmitted"]
    assert s["buffers_free"] + s["buffers_in_nic"] == s["buffers_total"]       # no buffer lost on the way
    for port, other in (("p0", "p1"), ("p1", "p0")):        # what one port received went out of the other
        assert s["ports"][port]["rx_packets"] == s["ports"][other]["tx_packets"]
        assert s["sim"][port]["rx_delivered"] == s["ports"][port]["rx_packets"]
    check_sinks(s)                                          # content intact, every flow in order, touched


@pytest.mark.parametrize(("rx", "tx", "workers"), DEFAULT_CASES)
def test_multiqueue_pipeline_forwards_and_accounts(tmp_path, rx, tx, workers):
    run_case(tmp_path, rx, tx, workers, 60_000)


@pytest.mark.slow
@pytest.mark.parametrize(("rx", "tx", "workers"), MATRIX)
def test_multiqueue_matrix_under_two_cpu_hogs(tmp_path, cpu_hogs, rx, tx, workers):
    assert all(h.poll() is None for h in cpu_hogs)
    run_case(tmp_path, rx, tx, workers, 200_000)
    assert all(h.poll() is None for h in cpu_hogs)          # the load stayed for the whole run
