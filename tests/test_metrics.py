"""The Prometheus endpoint of ``ixypipe run --metrics-port``: what a scrape shows, parsed with prometheus_client's
own parser, agrees with the JSON interval of the same time; it listens only in the supervisor and ends with the
run; a port in use or out of range is refused before anything starts."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict

import numpy as np
import psutil
import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ixypipe.cli import main
from ixypipe.layout import DROP_REASONS, STAGE_ROW_DTYPE
from ixypipe.pipeline.metrics import MetricsError, MetricsServer, Snapshot, _LatestSnapshot
from ixypipe.pipeline.report import IntervalFigures
from ixypipe.sim.world import PortCounters
from tests.support.runs import FWD, IXYPIPE, REPO, leftovers, start, summary_of, variant
from tests.support.shareddir import worker_writable_dir

CEILING = 120            # seconds: a pipeline starting on a busy two-CPU machine, then its first intervals
PORTS = ("p0", "p1")
STAGES = ("rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0")
RINGS = ("rx-p0-q0>w0", "rx-p1-q0>w0", "w0>tx-p0-q0", "w0>tx-p1-q0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted labels without "pipeline": value}; asserts every sample has pipeline="fwd"."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("ixypipe_"), family.name
        for s in family.samples:
            assert s.labels.pop("pipeline") == "fwd", s
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def value(m: dict, metric: str, /, **labels) -> float:
    return m[metric][tuple(sorted(labels.items()))]


# ---- the families of one snapshot, without a pipeline --------------------------------------------------
def snapshot() -> Snapshot:
    rows = np.zeros(len(STAGES), STAGE_ROW_DTYPE)
    for i in range(len(STAGES)):
        rows[i]["cpu"], rows[i]["pid"], rows[i]["loops"], rows[i]["idle_loops"] = i % 2, 0, 1000 + i, 400
        rows[i]["batches"], rows[i]["stalls"], rows[i]["held"] = 50 + i, 3 * i, i
        rows[i]["packets_in"], rows[i]["packets_out"] = 10_000 + i, 9_000 + i
        rows[i]["drop_worker"], rows[i]["drop_bad_index"] = 7 * i, 1
    figures = IntervalFigures(
        elapsed=12.5,
        ports={"p0": {"rx_packets": 10_000, "rx_bytes": 600_000, "tx_packets": 9_004, "tx_bytes": 540_240},
               "p1": {"rx_packets": 10_001, "rx_bytes": 600_060, "tx_packets": 9_003, "tx_bytes": 540_180}},
        port_drops={"p0": {"rx_missed": 5, "rx_too_long": 0, "rx_undersize": 2},
                    "p1": {"rx_missed": 0, "rx_too_long": 1, "rx_undersize": 0}},
        rows=rows,
        stages={name: {"idle": 0.25 * (i % 4), "rss_kib": 1000 + i} for i, name in enumerate(STAGES)},
        counters={"worker-0": {"dns": 42, 'odd "name"\\ é': -3}})
    sim = {"p0": PortCounters(generated=10_005, gen_bytes=600_300, sink_received=9_004, sink_lost=2,
                              sink_latency_samples=10, sink_latency_p50_ns=1_500_000, sink_latency_max_ns=9_000_000,
                              sink_size_64=9_004),
           "p1": PortCounters(generated=10_001)}
    return Snapshot("fwd", figures, [(name, name.split("-")[0], i) for i, name in enumerate(STAGES)],
                    {"worker-0": 1.25}, {"rx-p0-q0>w0": (1024, 4096)}, {k: asdict(c) for k, c in sim.items()})


def test_a_snapshot_scrapes_with_prometheus_names_and_exact_values():
    collector = _LatestSnapshot()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    assert generate_latest(registry) == b""              # before the first interval: nothing, not stale figures
    collector.latest = snapshot()
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for f in families.values():
        assert f.name.startswith("ixypipe_") and f.name == f.name.lower(), f.name
        assert f.type in ("counter", "gauge"), f
        for s in f.samples:
            assert s.labels["pipeline"] == "fwd"
            if f.type == "counter":
                assert s.name == f.name + "_total", s       # counters end in _total
            assert math.isfinite(s.value)
    assert families["ixypipe_worker_counter"].type == "gauge"      # batch.count may add a negative number
    assert families["ixypipe_sim_sink_lost_packets"].type == "gauge"   # a late frame stops counting as lost
    m = {}
    for f in families.values():
        for s in f.samples:
            labels = {k: v for k, v in s.labels.items() if k != "pipeline"}
            m.setdefault(s.name, {})[tuple(sorted(labels.items()))] = s.value
    assert value(m, "ixypipe_uptime_seconds") == 12.5
    assert value(m, "ixypipe_port_rx_packets_total", port="p1") == 10_001
    assert value(m, "ixypipe_port_tx_bytes_total", port="p0") == 540_240
    assert value(m, "ixypipe_port_dropped_packets_total", port="p0", reason="missed") == 5
    assert value(m, "ixypipe_port_dropped_packets_total", port="p0", reason="runt") == 2
    assert value(m, "ixypipe_port_dropped_packets_total", port="p1", reason="too_long") == 1
    assert value(m, "ixypipe_stage_info", stage="worker-0", role="worker", cpu="0") == 1
    assert value(m, "ixypipe_stage_info", stage="tx-p0-q0", role="tx", cpu="1") == 1
    assert m["ixypipe_stage_cpu_seconds_total"] == {(("stage", "worker-0"),): 1.25}   # only processes it could read
    assert value(m, "ixypipe_stage_idle_ratio", stage="tx-p0-q0") == 0.75
    assert value(m, "ixypipe_stage_loops_total", stage="tx-p1-q0") == 1004
    assert value(m, "ixypipe_stage_idle_loops_total", stage="tx-p1-q0") == 400
    assert value(m, "ixypipe_stage_batches_total", stage="worker-0") == 52
    assert value(m, "ixypipe_stage_stalls_total", stage="worker-0") == 6
    assert value(m, "ixypipe_stage_in_packets_total", stage="rx-p1-q0") == 10_001
    assert value(m, "ixypipe_stage_out_packets_total", stage="rx-p1-q0") == 9_001
    assert value(m, "ixypipe_stage_held_buffers", stage="tx-p1-q0") == 4
    assert value(m, "ixypipe_stage_resident_memory_bytes", stage="worker-0") == 1002 * 1024
    assert len(m["ixypipe_stage_dropped_packets_total"]) == len(STAGES) * len(DROP_REASONS)   # zeros too
    assert value(m, "ixypipe_stage_dropped_packets_total", stage="tx-p0-q0", reason="worker") == 21
    assert value(m, "ixypipe_stage_dropped_packets_total", stage="tx-p0-q0", reason="bad_index") == 1
    assert value(m, "ixypipe_worker_counter", stage="worker-0", name="dns") == 42
    assert value(m, "ixypipe_worker_counter", stage="worker-0", name='odd "name"\\ é') == -3   # escaped, intact
    assert value(m, "ixypipe_ring_entries", ring="rx-p0-q0>w0") == 1024
    assert value(m, "ixypipe_ring_fill_ratio", ring="rx-p0-q0>w0") == 0.25
    assert value(m, "ixypipe_sim_generated_packets_total", port="p0") == 10_005
    assert value(m, "ixypipe_sim_sink_received_packets_total", port="p0") == 9_004
    assert value(m, "ixypipe_sim_sink_lost_packets", port="p0") == 2
    assert value(m, "ixypipe_sim_sink_latency_seconds", port="p0", quantile="0.5") == 0.0015
    assert value(m, "ixypipe_sim_sink_latency_seconds", port="p0", quantile="1") == 0.009
    assert ("port", "p1") not in {k for key in m["ixypipe_sim_sink_latency_seconds"] for k in key}   # no samples
    assert value(m, "ixypipe_sim_sink_frames_total", port="p0", size="64") == 9_004


def test_metrics_server_refuses_a_port_out_of_range_and_closes_its_socket():
    with pytest.raises(MetricsError, match=r"metrics port 0 is out of range \(1\.\.65535\)"):
        MetricsServer(0)
    server = MetricsServer(free_port())
    port = server.port
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read() == b""
    server.close()
    server.close()                                       # idempotent
    assert not server._thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)


# ---- a running pipeline ---------------------------------------------------------------------------------
class Lines:
    """The JSON lines a running ``ixypipe run --json`` prints, collected by a thread."""

    def __init__(self, proc):
        self.lines: list[dict] = []
        self.thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def interval_at(self, t: float, proc) -> dict:
        deadline = time.monotonic() + CEILING
        while time.monotonic() < deadline:
            found = [d for d in self.lines if d.get("type") == "interval" and d["elapsed"] == t]
            if found:
                return found[0]
            assert proc.poll() is None, "the run ended"
            time.sleep(0.05)
        raise AssertionError(f"no JSON interval with elapsed = {t}")


def wait_for_traffic(port: int, proc) -> dict:
    deadline = time.monotonic() + CEILING
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited early: {proc.returncode} {proc.stderr.read()}"
        try:
            m = scrape(port)
        except (urllib.error.URLError, ConnectionError):
            m = {}
        # every port received and every stage has worked (and used a measurable slice of CPU): what the
        # checks below take for granted; an early interval on a loaded machine may show one port or stage idle
        if m and all(v > 0 for v in m.get("ixypipe_port_rx_packets_total", {0: 0}).values()) and \
                all(v > 0 for v in m.get("ixypipe_stage_batches_total", {0: 0}).values()) and \
                all(v > 0 for v in m.get("ixypipe_stage_cpu_seconds_total", {0: 0}).values()):
            return m
        time.sleep(0.2)
    raise AssertionError("the scrape never showed packets received")


def test_scrape_of_a_running_pipeline_agrees_with_its_json_interval():
    port = free_port()
    proc = start([str(FWD), "--json", "--metrics-port", str(port), "--duration", "600"])
    try:
        lines = Lines(proc)
        m = wait_for_traffic(port, proc)
        # it listens in the supervisor alone: no stage, fork server or software 82599 holds the socket
        listeners = {c.pid for c in psutil.net_connections("tcp")
                     if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN}
        assert listeners == {proc.pid}
        assert {c.laddr.ip for c in psutil.net_connections("tcp")
                if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}

        # the scrape is the interval of the same t, figure for figure
        interval = lines.interval_at(round(value(m, "ixypipe_uptime_seconds"), 3), proc)
        for p in PORTS:
            ports = interval["ports"][p]
            assert value(m, "ixypipe_port_rx_packets_total", port=p) == ports["rx_packets"] > 0
            assert value(m, "ixypipe_port_tx_packets_total", port=p) == ports["tx_packets"]
            assert value(m, "ixypipe_port_rx_bytes_total", port=p) == 60 * ports["rx_packets"]   # 60-byte frames
            for key, reason in (("rx_missed", "missed"), ("rx_too_long", "too_long"), ("rx_undersize", "runt")):
                assert value(m, "ixypipe_port_dropped_packets_total", port=p, reason=reason) == ports[f"{key}_total"]
            # the model publishes its generators' counts on its own clock: they can trail what RX took
            assert value(m, "ixypipe_sim_generated_packets_total", port=p) > 0
        assert set(interval["stages"]) == set(STAGES)
        for s, st in interval["stages"].items():
            assert value(m, "ixypipe_stage_idle_ratio", stage=s) == st["idle"]
            role = s.split("-")[0]
            assert value(m, "ixypipe_stage_info", stage=s, role=role, cpu=str(st["cpu"])) == 1
            for r in DROP_REASONS:
                assert value(m, "ixypipe_stage_dropped_packets_total", stage=s, reason=r) == \
                    st["drops_total"].get(r, 0)
            assert value(m, "ixypipe_stage_cpu_seconds_total", stage=s) > 0
            assert value(m, "ixypipe_stage_batches_total", stage=s) > 0
        assert value(m, "ixypipe_stage_in_packets_total", stage="rx-p0-q0") == interval["ports"]["p0"]["rx_packets"]
        assert set(m["ixypipe_ring_fill_ratio"]) == {(("ring", r),) for r in RINGS}
        assert all(0 <= v <= 1 for v in m["ixypipe_ring_fill_ratio"].values())
        for p in PORTS:
            assert value(m, "ixypipe_sim_sink_corrupt_packets_total", port=p) == 0

        # a later scrape: a later interval, and no counter went back
        deadline = time.monotonic() + CEILING
        while (later := scrape(port))["ixypipe_uptime_seconds"] == m["ixypipe_uptime_seconds"]:
            assert time.monotonic() < deadline, "no second interval"
            time.sleep(0.2)
        for name, samples in m.items():
            if name.endswith("_total"):
                for labels, v in samples.items():
                    assert later[name][labels] >= v, (name, labels)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=CEILING)
        lines.thread.join(timeout=CEILING)
    finally:
        proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    s = summary_of("\n".join(json.dumps(d) for d in lines.lines))
    assert s["ok"]
    for p in PORTS:
        assert s["ports"][p]["rx_packets"] >= value(later, "ixypipe_port_rx_packets_total", port=p)
    with pytest.raises(urllib.error.URLError):           # the endpoint ended with the run
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)
    assert leftovers(proc.pid) == []


def test_a_workers_counters_scrape_as_its_json_interval_shows_them():
    with worker_writable_dir() as d:                     # the worker (nobody, when root) reads its rules there
        (d / "acl.csv").write_text("action,field,prefix,proto,ports\ndeny,src,192.0.2.0/24,any,any\n")
        path = variant(d, function=f'"{REPO}/examples/acl.py:acl"', expect_touch="false",
                       distribute='"flow"\n[workers.options]\nacl = "acl.csv"')
        port = free_port()
        proc = start([str(path), "--json", "--metrics-port", str(port), "--duration", "600"])
        try:
            lines = Lines(proc)
            m = wait_for_traffic(port, proc)
            interval = lines.interval_at(round(value(m, "ixypipe_uptime_seconds"), 3), proc)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=CEILING)
        finally:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read()
    assert interval["counters"]["acl_allowed"] > 0
    assert m["ixypipe_worker_counter"] == {
        (("name", "acl_allowed"), ("stage", "worker-0")): interval["counters"]["acl_allowed"],
        (("name", "acl_denied"), ("stage", "worker-0")): 0}


def test_a_metrics_port_in_use_is_refused_before_the_pipeline_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = variant(tmp_path, interval=f"1.0\nmetrics_port = {port}")      # the file's [stats] key
        for json_flag in ([], ["--json"]):
            proc = start([str(path), "--duration", "30", *json_flag])
            out, err = proc.communicate(timeout=CEILING)
            assert proc.returncode == 1, (out, err)
            message = f"cannot serve metrics on 127.0.0.1:{port}: address already in use"
            if json_flag:
                doc = json.loads(out)
                assert doc.pop("time") > 0 and doc == {"type": "error", "message": message, "exit_code": 1}
            else:
                assert out == "" and message in err
            assert leftovers(proc.pid) == []


@pytest.mark.parametrize("args, expect", [
    (["--metrics-port", "65536"], "Invalid value for '--metrics-port': 65536 is not in the range 0<=x<=65535"),
    (["--metrics-port", "-1"], "Invalid value for '--metrics-port'"),
    (["--metrics-port", "http"], "Invalid value for '--metrics-port'"),
])
def test_a_bad_metrics_port_option_is_a_usage_error(args, expect):
    res = CliRunner().invoke(main, ["run", str(FWD), "--check", *args])
    assert res.exit_code == 2 and expect in res.output, res.output


@pytest.mark.parametrize("line, expect", [
    ("metrics_port = 65536", "stats.metrics_port"),
    ("metrics_port = -1", "stats.metrics_port"),
    ("metrics_port = \"9100\"", "stats.metrics_port"),
    ("metrics_address = 1", "stats.metrics_address"),
])
def test_a_bad_metrics_key_is_named(tmp_path, line, expect):
    path = variant(tmp_path, interval=f"1.0\n{line}")
    res = CliRunner().invoke(main, ["run", str(path), "--check"])
    assert res.exit_code == 2 and expect in res.output, res.output


def test_help_names_the_metrics_options():
    res = subprocess.run([*IXYPIPE, "run", "--help"], capture_output=True, text=True, cwd=REPO, timeout=CEILING)
    assert res.returncode == 0
    assert "--metrics-port PORT" in res.stdout and "Prometheus" in res.stdout
    assert "--metrics-address ADDRESS" in res.stdout and "127.0.0.1" in res.stdout


def test_check_tries_the_metrics_port():
    port = free_port()
    res = CliRunner().invoke(main, ["run", str(FWD), "--check", "--metrics-port", str(port)])
    assert res.exit_code == 0, res.output
    assert f"ok  metrics: port {port} on 127.0.0.1: free" in res.output
    with socket.socket() as taken:                       # the check closed its socket: the port can be taken
        taken.bind(("127.0.0.1", port))
        taken.listen()
        res = CliRunner().invoke(main, ["run", str(FWD), "--check", "--metrics-port", str(port)])
    assert res.exit_code == 1
    assert (f"FAILED  metrics: port {port} on 127.0.0.1: cannot serve metrics on 127.0.0.1:{port}: "
            "address already in use") in res.output


def test_an_address_not_on_this_host_is_named():
    port = free_port()
    res = CliRunner().invoke(main, ["run", str(FWD), "--check", "--metrics-port", str(port),
                                    "--metrics-address", "192.0.2.1"])        # TEST-NET-1: on no interface here
    assert res.exit_code == 1
    assert f"cannot serve metrics on 192.0.2.1:{port}: Cannot assign requested address" in res.output
