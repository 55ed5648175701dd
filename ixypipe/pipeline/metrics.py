"""The Prometheus endpoint of ``ixypipe run --metrics-port``: the figures of the latest stats interval.

:class:`MetricsServer` listens (prometheus_client's HTTP server, in a thread
of the supervisor) from before the pipeline is built, so a port in use is
refused first.  Once the pipeline runs, the supervisor's StatsPrinter hands
each interval's figures (report.IntervalFigures: what the per-second lines
and the JSON intervals show) to the observer :meth:`MetricsServer.watch`
returns; it adds what only the metrics show (each stage's CPU seconds, each
forward ring's fill, the software 82599's generator and sink counts), all
read in the supervisor's thread, and stores one :class:`Snapshot`.  A
scrape turns the latest snapshot into metric families (:func:`families`):
it reads no shared memory and counts nothing, so the endpoint always agrees
with the interval of the same ``ixypipe_uptime_seconds`` (the JSON's "elapsed").

Every family has the label ``pipeline``; ports add ``port``, stages
``stage``, rings ``ring``, keyed counters ``table`` (their top keys
``rank`` and ``key``, the key shown by the table's kind: keyedstate.TOP_N
per table, so the series stay few).  Counters end in ``_total``; figures that can go
down (a worker's counters, a sink's "lost") are gauges.  A restarted worker
counts its own loops, batches, packets and CPU from zero (a counter reset);
drops by reason add up over its processes, as in the summary.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import psutil
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ixypipe.layout import DROP_REASONS
from ixypipe.memory.arena import ArenaError
from ixypipe.pipeline.config import DEFAULT_METRICS_ADDRESS, RANGES
from ixypipe.pipeline.report import PORT_DROP_NAMES, IntervalFigures
from ixypipe.rings.spsc import Ring, RingError
from ixypipe.sim.block import SIM_SIZE_FIELDS
from ixypipe.sim.traffic import SIZE_BUCKET_NAMES
from ixypipe.workers.keyed import key_text

log = logging.getLogger(__name__)
PORT_RANGE = (1, RANGES["stats.metrics_port"][1])     # 0 (the file's and the option's default) = no endpoint

# per-stage row fields shown as counters: field -> (metric name, help)
STAGE_COUNTERS = {
    "loops": ("ixypipe_stage_loops_total", "Passes of the stage's loop"),
    "idle_loops": ("ixypipe_stage_idle_loops_total", "Passes that found nothing to do"),
    "batches": ("ixypipe_stage_batches_total", "Batches the stage processed"),
    "stalls": ("ixypipe_stage_stalls_total", "Passes that found an output ring full (back-pressure, no drop)"),
    "packets_in": ("ixypipe_stage_in_packets_total", "Packets the stage took in"),
    "packets_out": ("ixypipe_stage_out_packets_total", "Packets the stage passed on (TX: posted to the port)"),
}
# the software 82599's per-port counts: field -> (metric name, help, counter?)
SIM_FIGURES = {
    "generated": ("ixypipe_sim_generated_packets", "Frames the port's generator sent to its wire", True),
    "gen_bytes": ("ixypipe_sim_generated_bytes", "Bytes the port's generator sent to its wire", True),
    "rx_delivered": ("ixypipe_sim_rx_delivered_packets", "Frames the port delivered to RX descriptors", True),
    "tx_sent": ("ixypipe_sim_tx_sent_packets", "Frames the port sent from TX descriptors", True),
    "tx_bytes": ("ixypipe_sim_tx_sent_bytes", "Bytes the port sent from TX descriptors", True),
    "sink_received": ("ixypipe_sim_sink_received_packets", "Frames the port's sink received", True),
    "sink_bytes": ("ixypipe_sim_sink_received_bytes", "Frame bytes (without FCS) the port's sink received", True),
    "sink_reordered": ("ixypipe_sim_sink_reordered_packets", "Frames the sink found out of flow order", True),
    "sink_corrupt": ("ixypipe_sim_sink_corrupt_packets", "Frames the sink found corrupt", True),
    "sink_untouched": ("ixypipe_sim_sink_untouched_packets", "Frames the sink found not touched by the worker",
                       True),
    "dma_faults": ("ixypipe_sim_dma_faults", "DMA to addresses outside every registered region", True),
    "sink_lost": ("ixypipe_sim_sink_lost_packets",
                  "Sequence numbers below each flow's highest never received (a late frame stops counting)", False),
}
# a keyed table's figures (keyedstate.MergedTable.stats) shown as counters: stat -> (metric name, help)
KEYED_COUNTERS = {
    "updates": ("ixypipe_keyed_updates_total", "Amounts counted into a keyed table (elements of count_by calls)"),
    "total": ("ixypipe_keyed_amount_total", "Sum of the amounts counted into a keyed table"),
    "overflow_updates": ("ixypipe_keyed_overflow_updates_total",
                         "Amounts for keys that did not fit a worker's keyed table (counted in no key)"),
    "overflow_amount": ("ixypipe_keyed_overflow_amount_total", "Sum of the amounts for keys that did not fit"),
}
LATENCY_QUANTILES = {"0.5": "sink_latency_p50_ns", "0.9": "sink_latency_p90_ns", "0.99": "sink_latency_p99_ns",
                     "1": "sink_latency_max_ns"}


class MetricsError(Exception):
    """The endpoint could not be started; the message names the address and port."""


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows: one stats interval's figures and what the metrics add to them."""
    pipeline: str
    figures: IntervalFigures
    stages: list[tuple[str, str, int]]              # (name, role, row) in plan order
    cpu_seconds: dict[str, float]                   # stage -> user + system CPU of its process (alive only)
    rings: dict[str, tuple[int, int]]               # forward ring -> (entries, capacity)
    sim: dict[str, dict[str, int]]                  # software 82599 port -> its counters


def _family(kind, name: str, doc: str, labels: list[str]) -> Metric:
    return kind(name, doc, labels=["pipeline", *labels])


def families(snap: Snapshot) -> list[Metric]:
    """The metric families of one snapshot."""
    f, p = snap.figures, snap.pipeline
    out: list[Metric] = []

    def add(kind, name: str, doc: str, labels: list[str], samples: Iterator[tuple[list[str], float]]) -> None:
        fam = _family(kind, name, doc, labels)
        for values, value in samples:
            fam.add_metric([p, *values], value)
        out.append(fam)

    add(GaugeMetricFamily, "ixypipe_uptime_seconds", "Seconds since the traffic started, at the latest interval "
        "(the JSON interval's elapsed)", [], iter([([], f.elapsed)]))
    for d in ("rx", "tx"):
        for unit in ("packets", "bytes"):
            what = "taken from the port's RX queues" if d == "rx" else "posted to the port's TX queues"
            add(CounterMetricFamily, f"ixypipe_port_{d}_{unit}_total", f"{unit.capitalize()} {what}", ["port"],
                (([port], t[f"{d}_{unit}"]) for port, t in f.ports.items()))
    add(CounterMetricFamily, "ixypipe_port_dropped_packets_total",
        "Frames the port dropped before the pipeline got them, by reason", ["port", "reason"],
        (([port, PORT_DROP_NAMES[k]], n) for port, d in f.port_drops.items() for k, n in d.items()
         if k in PORT_DROP_NAMES))

    add(GaugeMetricFamily, "ixypipe_stage_info", "One per stage: its role and the CPU it is pinned to (-1: none)",
        ["stage", "role", "cpu"], (([name, role, str(int(f.rows[row]["cpu"]))], 1) for name, role, row in snap.stages))
    add(CounterMetricFamily, "ixypipe_stage_cpu_seconds_total", "CPU time (user + system) of the stage's process",
        ["stage"], (([name], snap.cpu_seconds[name]) for name, _, _ in snap.stages if name in snap.cpu_seconds))
    add(GaugeMetricFamily, "ixypipe_stage_idle_ratio", "Share of the stage's loops that found nothing to do in "
        "the latest interval", ["stage"], (([name], f.stages[name]["idle"]) for name, _, _ in snap.stages))
    for field, (name, doc) in STAGE_COUNTERS.items():
        add(CounterMetricFamily, name, doc, ["stage"],
            (([s], int(f.rows[row][field])) for s, _, row in snap.stages))
    add(CounterMetricFamily, "ixypipe_stage_dropped_packets_total", "Packets the stage dropped, by reason",
        ["stage", "reason"], (([s, r], int(f.rows[row][f"drop_{r}"])) for s, _, row in snap.stages
                              for r in DROP_REASONS))
    add(GaugeMetricFamily, "ixypipe_stage_held_buffers", "Buffers the stage holds now (pending outputs)",
        ["stage"], (([s], int(f.rows[row]["held"])) for s, _, row in snap.stages))
    add(GaugeMetricFamily, "ixypipe_stage_resident_memory_bytes", "Resident memory of the stage's process",
        ["stage"], (([s], f.stages[s]["rss_kib"] * 1024) for s, _, _ in snap.stages))
    add(GaugeMetricFamily, "ixypipe_worker_counter", "A worker's named counter (batch.count; may go down)",
        ["stage", "name"], (([s, k], v) for s, c in f.counters.items() for k, v in c.items()))

    keyed = f.keyed
    add(GaugeMetricFamily, "ixypipe_keyed_keys", "Distinct keys of a keyed table (batch.count_by), over the workers",
        ["table"], (([name], t.keys) for name, t in keyed.items()))
    for stat, (metric, doc) in KEYED_COUNTERS.items():
        add(CounterMetricFamily, metric, doc, ["table"], (([name], t.stats[stat]) for name, t in keyed.items()))
    add(GaugeMetricFamily, "ixypipe_keyed_top_amount", "A top key of a keyed table by amount, summed over the "
        "workers (rank 1 = largest)", ["table", "rank", "key"],
        (([name, str(rank), key_text(key, t.kind)], amount) for name, t in keyed.items()
         for rank, (key, amount) in enumerate(t.top, 1)))

    add(GaugeMetricFamily, "ixypipe_ring_entries", "Buffer indices in the forward ring now", ["ring"],
        (([r], n) for r, (n, _) in snap.rings.items()))
    add(GaugeMetricFamily, "ixypipe_ring_fill_ratio", "Share of the forward ring's capacity in use now", ["ring"],
        (([r], n / cap) for r, (n, cap) in snap.rings.items()))

    if snap.sim:
        for field, (name, doc, counter) in SIM_FIGURES.items():
            add(CounterMetricFamily if counter else GaugeMetricFamily, name + ("_total" if counter else ""),
                f"Software 82599: {doc}", ["port"], (([port], c[field]) for port, c in snap.sim.items()))
        add(GaugeMetricFamily, "ixypipe_sim_sink_latency_seconds", "Software 82599: one-way latency from the "
            "generator to the sink, percentiles of the sampled frames (quantile 1: the maximum)",
            ["port", "quantile"], (([port, q], c[field] / 1e9) for port, c in snap.sim.items()
                                   if c["sink_latency_samples"] for q, field in LATENCY_QUANTILES.items()))
        add(CounterMetricFamily, "ixypipe_sim_sink_latency_samples_total", "Software 82599: frames whose "
            "latency the sink sampled", ["port"], (([port], c["sink_latency_samples"]) for port, c in snap.sim.items()))
        add(CounterMetricFamily, "ixypipe_sim_sink_frames_total", "Software 82599: frames a counting sink "
            "received, by size with FCS", ["port", "size"],
            (([port, label], c[field]) for port, c in snap.sim.items()
             for label, field in zip(SIZE_BUCKET_NAMES, SIM_SIZE_FIELDS, strict=True)))
    return out


class _LatestSnapshot(Collector):
    """What a scrape collects: the families of the latest snapshot (none before the first interval)."""

    def __init__(self):
        self.latest: Snapshot | None = None      # replaced whole by the supervisor's thread, read by scrapes

    def collect(self) -> Iterator[Metric]:
        snap = self.latest
        return iter(families(snap) if snap is not None else [])


class MetricsServer:
    """The HTTP endpoint: listening from construction (MetricsError when it cannot) until :meth:`close`."""

    def __init__(self, port: int, address: str = DEFAULT_METRICS_ADDRESS):
        lo, hi = PORT_RANGE
        if not lo <= port <= hi:
            raise MetricsError(f"metrics port {port} is out of range ({lo}..{hi})")
        self.where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.collector = _LatestSnapshot()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self.collector)
        try:
            self._httpd, self._thread = start_http_server(port, addr=address, registry=registry)
        except OSError as exc:
            cause = "address already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            raise MetricsError(f"cannot serve metrics on {self.where}: {cause}") from None
        self._thread.name = "ixypipe-metrics"
        self.port = self._httpd.server_address[1]
        self._failed = False

    def watch(self, plan, arena, sim=None) -> Callable[[IntervalFigures], None]:
        """The observer of a running pipeline's StatsPrinter: each interval's figures become the snapshot."""
        stages = [(s.name, s.role, s.row) for s in plan.stages]
        ring_names = list(plan.forward_rings())

        def observe(figures: IntervalFigures) -> None:
            try:
                self.collector.latest = Snapshot(plan.name, figures, stages, _cpu_seconds(figures, stages),
                                                 _ring_fill(arena, ring_names),
                                                 {k: asdict(c) for k, c in sim.counters().items()} if sim else {})
            except Exception as exc:         # the endpoint must never stop the pipeline
                if not self._failed:
                    log.warning("metrics: the figures of this interval could not be gathered: %s: %s",
                                type(exc).__name__, exc)
                self._failed = True
        return observe

    def close(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = None


def _cpu_seconds(figures: IntervalFigures, stages: list[tuple[str, str, int]]) -> dict[str, float]:
    out = {}
    for name, _, row in stages:
        pid = int(figures.rows[row]["pid"])
        if pid <= 0:
            continue
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
    return out


def _ring_fill(arena, names: list[str]) -> dict[str, tuple[int, int]]:
    fill = {}
    for name in names:
        try:
            ring = Ring.attach(arena, name)
        except (RingError, ArenaError):
            continue
        try:
            fill[name] = (ring.count(), ring.capacity)
        finally:
            ring.close()
    return fill


__all__ = ["MetricsServer", "MetricsError", "Snapshot", "families", "PORT_RANGE"]
