"""The measuring instruments of bench/: the native wake-up floor (wake_floor.c) and the benches' arithmetic."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench_module(name: str):
    """bench/<name>.py imported (bench/ is not a package; its modules import each other by name)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def floor():
    wf = bench_module("wake_floor")
    try:
        wf.compiler()
    except wf.NoCompiler as e:
        pytest.skip(f"the wake floor is built with the system C compiler: {e}")
    return wf


def test_wake_floor_two_process_handoff(floor):
    rounds, processes = 20, 2
    trips, hops = floor.wake_floor(processes, rounds, 0.001)
    assert trips.shape == (rounds,)
    assert hops.shape == (rounds * processes,)
    assert (trips > 0).all() and (hops > 0).all()
    # a round trip holds both of its hops: each starts after the round began and the last ends with it
    assert (hops.reshape(rounds, processes).sum(axis=1) <= trips).all()


def test_wake_floor_names_a_bad_process_count(floor):
    with pytest.raises(RuntimeError, match=r"processes must be an integer in 2\.\.64, not 1"):
        floor.wake_floor(1, 5, 0.0)


def test_stage_ns_adds_up_the_processes_of_each_stage():
    pb = bench_module("pipeline_bench")
    ns = {"ixy-rx-p0-q0": 200.0, "ixy-rx-p1-q0": 220.0, "ixy-tx-p0-q0": 150.0, "ixy-tx-p1-q0": 160.0,
          "ixy-worker-0": 300.0, "ixy-worker-1": 40.0, "ixypipe-sim": 250.0, "python3": 4.0}
    stages = pb.stage_ns(ns)
    assert stages == {"rx": 420.0, "tx": 310.0, "worker": 340.0}
    assert pb.cores_per_mpps(stages, 0) == pytest.approx(1.07)
    assert pb.cores_per_mpps(stages, 500) == pytest.approx(1.57)


def test_target_ratios_are_over_bridge_plus_floor_and_testpmd():
    lb = bench_module("latency_bench")
    rows = {lb.BRIDGE: {"low_rate": {"p50_ms": 0.1}}, lb.TESTPMD_ROW: {"low_rate": {"p50_ms": 0.15}},
            lb.WAKE_ROW: {"low_rate": {"p50_ms": 0.2}}, "python floor": {"low_rate": {"p50_ms": 0.8}},
            "ixypipe default idle": {"low_rate": {"p50_ms": 0.6}}, "ixypipe idle=spin": {"low_rate": {"received": 0}},
            lb.PYTHON_WORKER_ROW: {"low_rate": {"p50_ms": 0.9}}}
    assert lb.target_ratios(rows) == {
        "ixypipe default idle": {"p50_ms": 0.6, "target": 1.5, "x_bridge_plus_floor": 2.0, "x_testpmd": 4.0},
        lb.PYTHON_WORKER_ROW: {"p50_ms": 0.9, "target": 2.0, "x_bridge_plus_floor": 3.0, "x_testpmd": 6.0}}
    rows[lb.TESTPMD_ROW] = {"missing": "dpdk-testpmd is not installed"}
    assert lb.target_ratios(rows)["ixypipe default idle"]["x_testpmd"] is None
    rows[lb.WORKER_ALONE_ROW] = {"low_rate": {"p50_ms": 0.3}}        # the function's own cold calls, taken out
    python = lb.target_ratios(rows)[lb.PYTHON_WORKER_ROW]
    assert python["function_alone_ms"] == 0.3 and python["x_bridge_plus_floor_less_function"] == 2.0
