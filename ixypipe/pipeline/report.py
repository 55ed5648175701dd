"""What a running pipeline says: per-second figures and the final accounting.

StatsPrinter turns deltas of the stage table into ixy-style per-port lines
(``[p0] RX: 1234.56 Mbit/s 1.84 Mpps``; Mbit/s counts 20 bytes of preamble
and inter-frame gap per packet, as ixy does) and one line of per-stage
figures, or JSON lines.  Accounting is computed from plain data once every
stage stopped and the supervisor emptied the rings (the stage table's
counters, what each pool holds, which stages died): it proves that each
packet received was transmitted, dropped for a named reason, or is still
in flight (which must be zero), and that every buffer came home.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil

from ixypipe.jsonout import json_line
from ixypipe.layout import DROP_REASONS
from ixypipe.pipeline import keyedstate, stagetable
from ixypipe.pipeline.hints import lost_note, sink_hints
from ixypipe.sim.block import SIM_SIZE_FIELDS
from ixypipe.sim.traffic import SIZE_BUCKET_NAMES

WIRE_OVERHEAD = 20        # bytes per packet: preamble (8) + inter-frame gap (12)


def mbit(packets: int, nbytes: int, seconds: float) -> float:
    return (nbytes + WIRE_OVERHEAD * packets) * 8 / seconds / 1e6 if seconds > 0 else 0.0


def rss_kib(pid: int) -> int:
    """Resident memory of a stage process, 0 when it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss // 1024 if pid > 0 else 0
    except psutil.Error:
        return 0


def port_totals(plan, table: np.ndarray) -> dict[str, dict[str, int]]:
    """Per port: packets and bytes taken from its RX queues and posted to its TX queues."""
    totals = {name: {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0} for name in plan.port_names}
    for s in plan.stages:
        row = table[s.row]
        if s.role == "rx":
            t = totals[plan.port_names[s.port]]
            t["rx_packets"] += int(row["packets_in"])
            t["rx_bytes"] += int(row["bytes_in"])
        elif s.role == "tx":
            t = totals[plan.port_names[s.port]]
            t["tx_packets"] += int(row["packets_out"])
            t["tx_bytes"] += int(row["bytes_out"])
    return totals


def rate_text(pps: float) -> str:
    """Packets per second for a person: '850 pps', '12.3 kpps', '1.48 Mpps'."""
    if pps >= 1e6:
        return f"{pps / 1e6:.2f} Mpps"
    if pps >= 1e3:
        return f"{pps / 1e3:.1f} kpps"
    return f"{pps:.0f} pps"


def port_drops(devices: dict, sim=None) -> dict[str, dict[str, int]]:
    """Per port, cumulative since start: frames the port dropped before the pipeline got them.

    ``rx_missed``: no free descriptor (NIC) or the kernel's ring was full
    (AF_PACKET); ``rx_too_long``: longer than a packet buffer (an 82599:
    than the max frame size its driver set for the buffers); ``rx_undersize``:
    runts, shorter than 64 bytes with FCS, which an 82599 drops.  A software
    82599's counts come from the model's exact totals (its registers are
    per-interval latches).  The per-second lines, --json intervals and the
    summary all read this one function, so they agree.
    """
    drops = {}
    for dev in devices.values():
        try:
            st = dev.read_stats()
        except Exception:
            continue
        drops[dev.name] = {"rx_missed": int(st.rx_dropped), "rx_too_long": int(st.rx_too_long),
                           "rx_undersize": int(st.rx_undersize)}
    if sim is not None:
        try:
            for name, c in sim.counters().items():
                drops[name] = {"rx_missed": int(c.rx_missed), "rx_too_long": int(c.rx_oversize),
                               "rx_undersize": int(c.rx_undersize)}
        except Exception:
            pass
    return drops


PORT_DROP_NAMES = {"rx_missed": "missed", "rx_too_long": "too_long", "rx_undersize": "runt"}
JSON_NAMES = {"user_counters": "counters"}    # Accounting field -> its name in the JSON summary (docs/json.md)


@dataclass(frozen=True)
class IntervalFigures:
    """What StatsPrinter gathered at the end of one interval, for its observers (pipeline/metrics.py)."""
    elapsed: float                                  # seconds since the traffic started (the JSON's "elapsed")
    ports: dict[str, dict[str, int]]                # port_totals: since start
    port_drops: dict[str, dict[str, int]]           # port_drops: since start
    rows: np.ndarray                                # a copy of the stage table
    stages: dict[str, dict]                         # the JSON interval's stage objects (idle: this interval)
    counters: dict[str, dict[str, int]]             # stage -> the worker's named counters
    keyed: dict = field(default_factory=dict)       # table -> keyedstate.MergedTable: summed over the workers


class StatsPrinter:
    """Per-second figures: ixy-style lines per port, one line of stages, or JSON interval objects."""

    def __init__(self, plan, table, devices, out, json_lines: bool, sim=None, counters=None, publish=None,
                 observe=None, quiet: bool = False, keyed=None):
        self.plan = plan
        self.keyed = keyed                # () -> {table: keyedstate.MergedTable}: the workers' keyed counters
        self.quiet = quiet                # -q: figures go to observers only, nothing is printed
        self.publish = publish            # (port drops) -> None: shows them to observers (ixypipe top)
        self.observe = observe            # (IntervalFigures) -> None: the metrics endpoint (pipeline/metrics.py)
        self.counters = counters          # () -> {stage: {name: value}}: the workers' named counters
        self.last_counters: dict[str, int] = {}
        self.table = table
        self.devices = devices
        self.out = out
        self.json_lines = json_lines
        self.sim = sim
        self.last_rows = table.copy()
        self.last = port_totals(plan, self.last_rows)
        self.last_time = None
        self.last_drops = port_drops(devices, sim)

    def interval(self, elapsed: float) -> None:
        rows = self.table.copy()        # one moment: the compiled stages write their rows as they go
        now_totals = port_totals(self.plan, rows)
        dt = elapsed - (self.last_time or 0.0)
        drops_now = port_drops(self.devices, self.sim)
        if self.publish is not None:
            self.publish(drops_now)
        ports = {}
        for name, t in now_totals.items():
            d = {k: t[k] - self.last[name][k] for k in t}
            ports[name] = {
                "rx_pps": d["rx_packets"] / dt, "rx_mpps": d["rx_packets"] / dt / 1e6,
                "rx_mbit": mbit(d["rx_packets"], d["rx_bytes"], dt),
                "tx_pps": d["tx_packets"] / dt, "tx_mpps": d["tx_packets"] / dt / 1e6,
                "tx_mbit": mbit(d["tx_packets"], d["tx_bytes"], dt),
                "rx_packets": t["rx_packets"], "tx_packets": t["tx_packets"],
            }
            for key, total in drops_now.get(name, {}).items():
                ports[name][key] = total - self.last_drops.get(name, {}).get(key, 0)   # this interval
                ports[name][f"{key}_total"] = total
        self.last_drops = drops_now
        stages = {}
        for s in self.plan.stages:
            new = rows[s.row]
            old = stagetable.interval_base(self.last_rows[s.row], new)     # a restarted worker: its own figures
            stages[s.name] = {
                "cpu": int(new["cpu"]),
                "rss_kib": rss_kib(int(new["pid"])),
                "batches": int(new["batches"] - old["batches"]),
                "idle": stagetable.idle_share(old, new),
                "stalls": int(new["stalls"] - old["stalls"]),
                "drops": {r: int(new[f"drop_{r}"] - old[f"drop_{r}"]) for r in DROP_REASONS
                          if new[f"drop_{r}"] != old[f"drop_{r}"]},                       # this interval
                "drops_total": {r: int(new[f"drop_{r}"]) for r in DROP_REASONS if new[f"drop_{r}"]},
                "held": int(new["held"]),
            }
        per_stage = self.counters() if self.counters is not None else {}
        for name, c in per_stage.items():
            stages[name]["counters"] = c
        total = stagetable.summed(per_stage)
        keyed = self.keyed() if self.keyed is not None else {}
        rates = {k: (v - self.last_counters.get(k, 0)) / dt for k, v in total.items()} if dt > 0 else {}
        self.last_counters = total
        self.last, self.last_rows, self.last_time = now_totals, rows, elapsed
        if self.observe is not None:
            self.observe(IntervalFigures(elapsed, now_totals, drops_now, rows, stages, per_stage, keyed))
        if self.quiet:
            return
        if self.json_lines:
            print(json_line({"type": "interval", "pipeline": self.plan.name, "elapsed": round(elapsed, 3),
                             "ports": ports, "stages": stages, "counters": total, "counter_rates": rates,
                             **({"keyed_counters": keyedstate.as_json(keyed)} if keyed else {})}),
                  file=self.out, flush=True)
            return
        lines = []
        for name, p in ports.items():
            dropped = ", ".join(f"{PORT_DROP_NAMES[k]} {p[k]:,}" for k in PORT_DROP_NAMES if p.get(k))
            lines.append(f"[{name}] RX: {p['rx_mbit']:.2f} Mbit/s {rate_text(p['rx_pps'])}"
                         + (f"  dropped: {dropped}" if dropped else ""))
            lines.append(f"[{name}] TX: {p['tx_mbit']:.2f} Mbit/s {rate_text(p['tx_pps'])}")
        parts = []
        for name, s in stages.items():
            cpu = f"@cpu{s['cpu']}" if s["cpu"] >= 0 else ""
            extra = f" stalls {s['stalls']}" if s["stalls"] else ""
            if s["drops"]:
                extra += " drops " + ", ".join(f"{r} {n:,}" for r, n in s["drops"].items())
            parts.append(f"{name}{cpu} idle {s['idle'] * 100:.0f}%{extra}")
        lines.append("stages: " + " | ".join(parts))
        if total:
            lines.append("counters: " + " | ".join(f"{k} {v:,} (+{rates.get(k, 0):,.0f}/s)" for k, v in total.items()))
        lines += keyedstate.text_lines(keyedstate.as_json(keyed), keyedstate.TOP_PER_INTERVAL)
        print("\n".join(lines), file=self.out, flush=True)


@dataclass(frozen=True)
class PoolCount:
    """One mempool once the pipeline stopped and its rings were emptied."""
    total: int                # buffers it owns
    free: int                 # on its free stack
    in_nic: int               # sitting in its RX queue's descriptors


@dataclass
class Accounting:
    received: int = 0
    transmitted: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    buffers_total: int = 0
    buffers_free: int = 0
    buffers_in_nic: int = 0
    device_missed: dict[str, int] = field(default_factory=dict)     # per port: port_drops' rx_missed
    port_drops: dict[str, dict[str, int]] = field(default_factory=dict)   # per port: rx_missed, rx_too_long, rx_undersize
    ports: dict[str, dict[str, int]] = field(default_factory=dict)
    user_counters: dict[str, int] = field(default_factory=dict)       # summed over workers
    worker_counters: dict[str, dict[str, int]] = field(default_factory=dict)   # per worker stage
    keyed_counters: dict[str, dict] = field(default_factory=dict)   # keyed tables summed over the workers (JSON form)
    restarts: int = 0
    sim: dict | None = None
    sink_modes: dict[str, str] = field(default_factory=dict)     # sim port -> "verify" or "count"
    problems: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)     # what to change when a problem is the worker's design (hints.py)
    stop_reason: str = ""                  # what ended the run (SIGINT, duration 5 s, stage died, ...)
    failures: list[str] = field(default_factory=list)   # stages that died or were killed: the run failed

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def lost_everything(self) -> bool:
        """Packets came in and none went out, and not because the worker chose to drop them: a failed run."""
        return self.received > 0 and self.transmitted == 0 and self.drops.get("worker", 0) < self.received

    @classmethod
    def of(cls, plan, table: np.ndarray, pools: list[PoolCount], stranded: int = 0, died: Iterable[str] = (),
           restarts: int = 0, sim_died: bool = False, port_drops: dict[str, dict[str, int]] | None = None,
           unsent: int = 0, worker_counters: dict[str, dict[str, int]] | None = None,
           orphaned: int = 0, sent_in_hand: int = 0, sent_uncounted: int = 0,
           keyed: dict | None = None) -> Accounting:
        """The accounting of a stopped pipeline, from plain data.

        ``table``: the stage table (counters per stage row of ``plan``);
        ``pools``: what each of ``plan.pools`` holds now that the rings are
        empty; ``stranded``: packets found in forward rings; ``died``: names of
        stages that died; ``restarts``: workers replaced; ``sim_died``: the
        simulator died; ``unsent``: buffers posted to TX descriptors of a NIC that
        died before sending them (counted as transmitted when posted, so taken
        back here); ``orphaned``: packets left in the input rings of stages that
        died (drops with reason stage_died); ``sent_in_hand``: buffers transmitted (and counted so) that a TX
        stage died holding on their way home; ``sent_uncounted``: buffers a TX stage posted (so the NIC sent
        them) and died before counting.  Other buffers missing from the pools are drops with reason
        stage_died when something died, a leak otherwise.
        """
        acc = cls()
        stage_lost = bool(set(died)) or restarts > 0 or sim_died
        rx_rows = [s.row for s in plan.stages_of("rx")]
        tx_rows = [s.row for s in plan.stages_of("tx")]
        acc.received = int(table["packets_in"][rx_rows].sum())
        acc.transmitted = int(table["packets_out"][tx_rows].sum()) - unsent + sent_uncounted
        acc.drops = {r: int(table[f"drop_{r}"].sum()) for r in DROP_REASONS}
        acc.drops["stranded"] = stranded
        acc.drops["stage_died"] += orphaned
        lost = 0
        for pool in pools:
            acc.buffers_total += pool.total
            acc.buffers_free += pool.free
            acc.buffers_in_nic += pool.in_nic
            lost += pool.total - pool.free - pool.in_nic
        lost -= min(sent_in_hand, lost)          # missing, but already counted as transmitted
        # a duplicate index that overwrote another one in a ring lost that buffer (it never comes home: the
        # duplicate drop stands for its packet); one added to a ring stands for no packet received.  So does an
        # index a consumer refused (bad_index: no buffer, another pool's, one already in flight or home)
        dup = acc.drops["duplicate"] + acc.drops["bad_index"]
        overwritten = min(dup, lost)
        lost -= overwritten
        if lost and not stage_lost:
            acc.problems.append(f"{lost} buffers never came home and no stage died: a leak")
        acc.drops["stage_died"] += lost if stage_lost else 0     # stages counted what they held for dead ones
        acc.restarts = restarts
        acc.in_flight = acc.received - acc.transmitted - sum(acc.drops.values()) + (dup - overwritten)
        if acc.in_flight:
            acc.problems.append(f"{acc.in_flight} packets unaccounted for (received {acc.received}, transmitted "
                                f"{acc.transmitted}, dropped {sum(acc.drops.values())})")
        acc.port_drops = {name: dict(d) for name, d in (port_drops or {}).items()}
        acc.device_missed = {name: d.get("rx_missed", 0) for name, d in acc.port_drops.items()}
        acc.ports = port_totals(plan, table)
        acc.worker_counters = dict(worker_counters or {})      # per worker stage: its named counters
        acc.user_counters = stagetable.summed(acc.worker_counters)
        acc.keyed_counters = keyedstate.as_json(keyed or {})     # ``keyed``: keyedstate.merged, table -> merge
        return acc

    def check_sim(self, cfg) -> None:
        """The software ports' sinks must agree with the pipeline's counters."""
        if not self.sim:
            return
        keeps_order = cfg.workers.processes == 1 or cfg.workers.distribute == "flow"
        if not self.failures:           # the NIC side agrees: every frame it delivered, the RX stages took
            for p in cfg.ports:
                c = self.sim.get(p.name) if p.driver == "sim" else None
                c = c if c is None or isinstance(c, dict) else asdict(c)
                taken = self.ports.get(p.name, {}).get("rx_packets")
                if c is not None and taken is not None and c.get("rx_delivered", 0) != taken:
                    self.problems.append(f"port {p.name}: the software 82599 delivered {c.get('rx_delivered'):,} "
                                         f"frames, the RX stages took {self.ports[p.name]['rx_packets']:,}")
        sink_ports = [p for p in cfg.ports if p.driver == "sim" and p.sink is not None]
        for p in sink_ports:
            self.sink_modes[p.name] = p.sink.mode
            c = self.sim.get(p.name)
            if c is None:
                continue
            c = c if isinstance(c, dict) else asdict(c)
            if c.get("sink_received", 0) != self.ports[p.name]["tx_packets"]:
                self.problems.append(f"sink of {p.name} received {c.get('sink_received')} packets, "
                                     f"the pipeline transmitted {self.ports[p.name]['tx_packets']} on it")
            if p.sink.mode == "count":      # any traffic: only how much arrived is checked, never its content
                if c.get("sink_bytes", 0) != self.ports[p.name]["tx_bytes"]:
                    self.problems.append(f"sink of {p.name} received {c.get('sink_bytes')} bytes, "
                                         f"the pipeline transmitted {self.ports[p.name]['tx_bytes']} on it")
                continue
            if c.get("sink_corrupt"):
                self.problems.append(f"sink of {p.name}: {c['sink_corrupt']} corrupt packets")
            if keeps_order and c.get("sink_reordered"):
                self.problems.append(f"sink of {p.name}: {c['sink_reordered']} packets out of flow order")
            if p.sink.expect_touch and c.get("sink_untouched"):
                self.problems.append(f"sink of {p.name}: {c['sink_untouched']} packets not touched by the worker")
            if c.get("dma_faults"):
                self.problems.append(f"port {p.name}: {c['dma_faults']} DMA faults")
        self.hints = sink_hints(cfg, {k: v if isinstance(v, dict) else asdict(v) for k, v in self.sim.items()})

    def as_json(self, sim: dict) -> dict:
        """The JSON summary (docs/json.md): the fields, the summed worker counters as ``counters``."""
        doc = {"type": "summary", "summary": True, "ok": self.ok and not self.failures}
        doc.update((JSON_NAMES.get(k, k), v) for k, v in asdict(self).items() if k != "sim")
        doc["sim"] = sim
        return doc

    def print(self, out, json_lines: bool) -> None:
        sim = {k: (v if isinstance(v, dict) else asdict(v)) for k, v in (self.sim or {}).items()}
        if json_lines:
            print(json_line(self.as_json(sim)), file=out, flush=True)
            return
        dropped = sum(self.drops.values())
        reasons = ", ".join(f"{k} {v:,}" for k, v in self.drops.items() if v) or "none"
        lines = [
            "== accounting ==",
            *(f"FAILED: {f}" for f in self.failures),
            *([f"stopped by   {self.stop_reason}"] if self.stop_reason else []),
            f"received     {self.received:>14,}",
            f"transmitted  {self.transmitted:>14,}",
            f"dropped      {dropped:>14,}   ({reasons})",
            f"in flight    {self.in_flight:>14,}",
            f"buffers      {self.buffers_total:>14,}   ({self.buffers_free:,} free, "
            f"{self.buffers_in_nic:,} in RX descriptors)",
        ]
        at_ports = [f"{port} {PORT_DROP_NAMES[k]} {n:,}" for port, d in self.port_drops.items()
                    for k, n in d.items() if n]
        if at_ports:
            lines.append("dropped at the ports, before the pipeline: " + ", ".join(at_ports))
        if self.user_counters:
            lines.append("worker counters: " + ", ".join(f"{k} {v:,}" for k, v in self.user_counters.items()))
            if len(self.worker_counters) > 1:
                lines += [f"  {stage}: " + ", ".join(f"{k} {v:,}" for k, v in c.items())
                          for stage, c in self.worker_counters.items()]
        lines += keyedstate.text_lines(self.keyed_counters)
        for name, c in sim.items():
            sizes = {label: c.get(f, 0) for label, f in zip(SIZE_BUCKET_NAMES, SIM_SIZE_FIELDS, strict=True)}
            if self.sink_modes.get(name) == "count":     # any traffic, counted by size, never judged
                judged = (f"{c.get('sink_bytes', 0):,} bytes, sizes with FCS "
                          + (" ".join(f"{k}: {v:,}" for k, v in sizes.items() if v) or "none"))
            else:
                judged = (f"lost {c.get('sink_lost', 0):,}, reordered {c.get('sink_reordered', 0):,}, "
                          f"corrupt {c.get('sink_corrupt', 0):,}, untouched {c.get('sink_untouched', 0):,}")
                if c.get("sink_latency_samples"):        # one-way, from the generator (sim/latency.py)
                    judged += (f"; latency p50 {c['sink_latency_p50_ns'] / 1e6:.3f} ms, p99 "
                               f"{c['sink_latency_p99_ns'] / 1e6:.3f} ms, max {c['sink_latency_max_ns'] / 1e6:.3f} ms "
                               f"({c['sink_latency_samples']:,} sampled)")
            lines.append(f"sim {name}: generated {c.get('generated', 0):,}, missed at RX {c.get('rx_missed', 0):,}, "
                         f"sink received {c.get('sink_received', 0):,}, {judged}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"hint: {h}" for h in self.hints]
        lines.append("accounting OK" + lost_note(sim, self.sink_modes) if self.ok else "accounting BROKEN")
        print("\n".join(lines), file=out, flush=True)
