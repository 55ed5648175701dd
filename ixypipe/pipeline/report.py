"""What a running pipeline says: per-second figures and the final accounting.

StatsPrinter turns deltas of the stage table into ixy-style per-port lines
(``[p0] RX: 1234.56 Mbit/s 1.84 Mpps``; Mbit/s counts 20 bytes of preamble
and inter-frame gap per packet, as ixy does) and one line of per-stage
figures, or JSON lines.  Accounting is taken after every stage stopped: it
empties the rings, counts every buffer back home, and proves that each
packet received was transmitted, dropped for a named reason, or is still
in flight (which must be zero).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import psutil

from ixypipe.layout import DROP_REASONS
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import stagetable
from ixypipe.rings.spsc import Ring

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


class StatsPrinter:
    def __init__(self, plan, table, devices, out, json_lines: bool, sim=None, counters=None):
        self.plan = plan
        self.counters = counters          # () -> {stage: {name: value}}: the workers' named counters
        self.last_counters: dict[str, int] = {}
        self.table = table
        self.devices = devices
        self.out = out
        self.json_lines = json_lines
        self.sim = sim
        self.last = port_totals(plan, table)
        self.last_rows = table.copy()
        self.last_time = None
        self.last_missed = self._sim_missed()

    def _sim_missed(self) -> dict[str, int]:
        """Packets each software port's RX missed so far (the model's exact count)."""
        if self.sim is None:
            return {}
        try:
            return {name: int(c.rx_missed) for name, c in self.sim.counters().items()}
        except Exception:
            return {}

    def interval(self, elapsed: float) -> None:
        now_totals = port_totals(self.plan, self.table)
        rows = self.table.copy()
        dt = elapsed - (self.last_time or 0.0)
        ports = {}
        for name, t in now_totals.items():
            d = {k: t[k] - self.last[name][k] for k in t}
            ports[name] = {
                "rx_mpps": d["rx_packets"] / dt / 1e6, "rx_mbit": mbit(d["rx_packets"], d["rx_bytes"], dt),
                "tx_mpps": d["tx_packets"] / dt / 1e6, "tx_mbit": mbit(d["tx_packets"], d["tx_bytes"], dt),
                "rx_packets": t["rx_packets"], "tx_packets": t["tx_packets"],
            }
        missed = self._sim_missed()
        for name, m in missed.items():
            ports[name]["rx_missed"] = m - self.last_missed.get(name, 0)
        self.last_missed = missed
        stages = {}
        for s in self.plan.stages:
            new, old = rows[s.row], self.last_rows[s.row]
            loops = int(new["loops"] - old["loops"])
            stages[s.name] = {
                "cpu": int(new["cpu"]),
                "rss_kib": rss_kib(int(new["pid"])),
                "batches": int(new["batches"] - old["batches"]),
                "idle": (int(new["idle_loops"] - old["idle_loops"]) / loops) if loops else 1.0,
                "stalls": int(new["stalls"] - old["stalls"]),
                "drops": {r: int(new[f"drop_{r}"]) for r in DROP_REASONS if new[f"drop_{r}"]},
                "held": int(new["held"]),
            }
        per_stage = self.counters() if self.counters is not None else {}
        for name, c in per_stage.items():
            stages[name]["counters"] = c
        total = stagetable.summed(per_stage)
        rates = {k: (v - self.last_counters.get(k, 0)) / dt for k, v in total.items()} if dt > 0 else {}
        self.last_counters = total
        self.last, self.last_rows, self.last_time = now_totals, rows, elapsed
        if self.json_lines:
            print(json.dumps({"t": round(elapsed, 3), "ports": ports, "stages": stages, "counters": total}),
                  file=self.out, flush=True)
            return
        lines = []
        for name, p in ports.items():
            lines.append(f"[{name}] RX: {p['rx_mbit']:.2f} Mbit/s {p['rx_mpps']:.2f} Mpps")
            lines.append(f"[{name}] TX: {p['tx_mbit']:.2f} Mbit/s {p['tx_mpps']:.2f} Mpps")
        parts = []
        for name, s in stages.items():
            cpu = f"@cpu{s['cpu']}" if s["cpu"] >= 0 else ""
            extra = f" stalls {s['stalls']}" if s["stalls"] else ""
            drops = sum(s["drops"].values())
            extra += f" drops {drops}" if drops else ""
            parts.append(f"{name}{cpu} idle {s['idle'] * 100:.0f}%{extra}")
        lines.append("stages: " + " | ".join(parts))
        if total:
            lines.append("counters: " + " | ".join(f"{k} {v:,} (+{rates.get(k, 0):,.0f}/s)" for k, v in total.items()))
        print("\n".join(lines), file=self.out, flush=True)


@dataclass
class Accounting:
    received: int = 0
    transmitted: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    buffers_total: int = 0
    buffers_free: int = 0
    buffers_in_nic: int = 0
    device_missed: dict[str, int] = field(default_factory=dict)
    ports: dict[str, dict[str, int]] = field(default_factory=dict)
    user_counters: dict[str, int] = field(default_factory=dict)       # summed over workers
    worker_counters: dict[str, dict[str, int]] = field(default_factory=dict)   # per worker stage
    restarts: int = 0
    sim: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @classmethod
    def take(cls, sup) -> Accounting:
        """Count every packet and every buffer once all stages have stopped."""
        plan, table = sup.plan, sup.table
        acc = cls()
        died = {p.row for p in sup.procs if p.died}
        stage_lost = bool(died) or sup.restarts > 0 or sup.sim_died
        for p, dev in sup.devices.items():       # TX stages that died left posted descriptors
            for t in range(plan.ports[p].tx_queues):
                if any(s.role == "tx" and s.port == p and s.queue == t and s.row in died for s in plan.stages):
                    dev.tx_drain(t, timeout=2.0)
        stranded = reclaim_rings(sup)
        rx_rows = [s.row for s in plan.stages_of("rx")]
        tx_rows = [s.row for s in plan.stages_of("tx")]
        acc.received = int(table["packets_in"][rx_rows].sum())
        acc.transmitted = int(table["packets_out"][tx_rows].sum())
        acc.drops = {r: int(table[f"drop_{r}"].sum()) for r in DROP_REASONS}
        acc.drops["stranded"] = stranded
        lost = 0
        for pool_plan, pool in zip(plan.pools, sup.pools, strict=True):
            dev = sup.devices.get(pool_plan.port)
            in_nic = len(dev.rx_held(pool_plan.queue)) if dev is not None else 0
            free = pool.available()
            acc.buffers_total += pool.count
            acc.buffers_free += free
            acc.buffers_in_nic += in_nic
            lost += pool.count - free - in_nic
        if lost and not stage_lost:
            acc.problems.append(f"{lost} buffers never came home and no stage died: a leak")
        acc.drops["stage_died"] = lost if stage_lost else 0
        acc.restarts = sup.restarts
        acc.in_flight = acc.received - acc.transmitted - sum(acc.drops.values())
        if acc.in_flight:
            acc.problems.append(f"{acc.in_flight} packets unaccounted for (received {acc.received}, transmitted "
                                f"{acc.transmitted}, dropped {sum(acc.drops.values())})")
        for dev in sup.devices.values():
            try:
                acc.device_missed[dev.name] = int(dev.read_stats().rx_dropped)
            except Exception:
                pass
        acc.ports = port_totals(plan, table)
        acc.worker_counters = stagetable.stage_counters(sup.arena, plan)
        acc.user_counters = stagetable.summed(acc.worker_counters)
        return acc

    def check_sim(self, cfg) -> None:
        """The software ports' sinks must agree with the pipeline's counters."""
        if not self.sim:
            return
        keeps_order = cfg.workers.processes == 1 or cfg.workers.distribute == "flow"
        sink_ports = [p for p in cfg.ports if p.driver == "sim" and p.sink is not None]
        for p in sink_ports:
            c = self.sim.get(p.name)
            if c is None:
                continue
            c = c if isinstance(c, dict) else asdict(c)
            if c.get("sink_received", 0) != self.ports[p.name]["tx_packets"]:
                self.problems.append(f"sink of {p.name} received {c.get('sink_received')} packets, "
                                     f"the pipeline transmitted {self.ports[p.name]['tx_packets']} on it")
            if c.get("sink_corrupt"):
                self.problems.append(f"sink of {p.name}: {c['sink_corrupt']} corrupt packets")
            if keeps_order and c.get("sink_reordered"):
                self.problems.append(f"sink of {p.name}: {c['sink_reordered']} packets out of flow order")
            if p.sink.expect_touch and c.get("sink_untouched"):
                self.problems.append(f"sink of {p.name}: {c['sink_untouched']} packets not touched by the worker")
            if c.get("dma_faults"):
                self.problems.append(f"port {p.name}: {c['dma_faults']} DMA faults")

    def print(self, out, json_lines: bool) -> None:
        sim = {k: (v if isinstance(v, dict) else asdict(v)) for k, v in (self.sim or {}).items()}
        if json_lines:
            doc = {k: v for k, v in asdict(self).items() if k != "sim"}
            doc.update(summary=True, ok=self.ok, sim=sim)
            print(json.dumps(doc), file=out, flush=True)
            return
        dropped = sum(self.drops.values())
        reasons = ", ".join(f"{k} {v}" for k, v in self.drops.items() if v) or "none"
        lines = [
            "== accounting ==",
            f"received     {self.received:>14,}",
            f"transmitted  {self.transmitted:>14,}",
            f"dropped      {dropped:>14,}   ({reasons})",
            f"in flight    {self.in_flight:>14,}",
            f"buffers      {self.buffers_total:>14,}   ({self.buffers_free:,} free, "
            f"{self.buffers_in_nic:,} in RX descriptors)",
        ]
        if any(self.device_missed.values()):
            lines.append("missed by the NICs (no free descriptor): "
                         + ", ".join(f"{k} {v:,}" for k, v in self.device_missed.items()))
        if self.user_counters:
            lines.append("worker counters: " + ", ".join(f"{k} {v:,}" for k, v in self.user_counters.items()))
            if len(self.worker_counters) > 1:
                lines += [f"  {stage}: " + ", ".join(f"{k} {v:,}" for k, v in c.items())
                          for stage, c in self.worker_counters.items()]
        for name, c in sim.items():
            lines.append(f"sim {name}: generated {c.get('generated', 0):,}, missed at RX {c.get('rx_missed', 0):,}, "
                         f"sink received "
                         f"{c.get('sink_received', 0):,}, lost {c.get('sink_lost', 0):,}, reordered "
                         f"{c.get('sink_reordered', 0):,}, corrupt {c.get('sink_corrupt', 0):,}, untouched "
                         f"{c.get('sink_untouched', 0):,}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines.append("accounting OK" if self.ok else "accounting BROKEN")
        print("\n".join(lines), file=out, flush=True)


def reclaim_rings(sup) -> int:
    """After every stage stopped: empty all rings, sending buffers home.

    Returns how many packets were stranded in forward rings.
    """
    plan, bufs = sup.plan, sup.bufs
    forward = set(plan.forward_rings())
    stranded = 0
    scratch = np.empty(1 << 16, np.uint32)
    for name in plan.ring_names():
        ring = Ring.attach(sup.arena, name)
        while True:
            n = ring.dequeue(scratch)
            if not n:
                break
            if name in forward:
                stranded += n
            send_home(sup.pools, bufs, scratch[:n])
        ring.close()
    return stranded


def send_home(pools: list[Mempool], bufs: PacketBuffers, idx: np.ndarray) -> None:
    owners = bufs.pool_id[idx]
    for pool_id in np.unique(owners):
        pools[int(pool_id)].free(idx[owners == pool_id])
