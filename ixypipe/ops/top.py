"""What ``ixypipe top`` shows: a running pipeline's figures from its stage table, rings and processes.

:class:`Observer` attaches a pipeline's packet arena read-only in spirit
(it writes nothing), reads the plan the supervisor left in ``plan.json``,
and takes :class:`Sample` s: a copy of the stage table, each forward ring's
fill and each stage process's CPU share.  :func:`compute_view` turns two
samples into per-port Mpps and Mbit/s (ixy's convention: 20 bytes of
preamble and gap per packet), per-stage rates, idle share (idle loops over
loops), drops by reason, and :func:`render` lays the view out as lines of
text.  The terminal handling lives in ixypipe.ops.screen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil

from ixypipe.layout import (
    DROP_REASONS,
    STAGE_STATE_DONE,
    STAGE_STATE_DRAINING,
    STAGE_STATE_RUNNING,
    STAGE_STATE_STARTING,
)
from ixypipe.memory.arena import Arena
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.planinfo import read_plan_info
from ixypipe.pipeline.report import mbit, port_totals
from ixypipe.pipeline.running import owner_alive
from ixypipe.rings.spsc import Ring

STATE_NAMES = {STAGE_STATE_STARTING: "starting", STAGE_STATE_RUNNING: "running",
               STAGE_STATE_DRAINING: "draining", STAGE_STATE_DONE: "done"}


@dataclass
class Sample:
    monotonic: float
    rows: np.ndarray                       # copy of the stage table
    ring_fill: dict[str, tuple[int, int]]  # ring -> (entries, capacity)
    cpu_percent: dict[str, float]          # stage -> share of one CPU since the last sample, in %
    counters: dict[str, dict[str, int]] = field(default_factory=dict)   # stage -> the worker's named counters


@dataclass
class PortView:
    name: str
    rx_mpps: float
    rx_mbit: float
    tx_mpps: float
    tx_mbit: float
    rx_packets: int
    tx_packets: int


@dataclass
class StageView:
    name: str
    role: str
    cpu: int
    state: str
    in_mpps: float
    out_mpps: float
    idle: float                            # 0..1 of loops that found nothing to do
    cpu_percent: float
    drops: dict[str, int]                  # reason -> packets since start


@dataclass
class TopView:
    pipeline: str
    pid: int
    seconds: float                         # length of the interval the rates cover
    uptime: float
    ports: list[PortView]
    stages: list[StageView]
    rings: list[tuple[str, int, int]]      # (name, entries, capacity)
    drops: dict[str, int] = field(default_factory=dict)   # reason -> all stages, since start
    counters: dict[str, tuple[int, float]] = field(default_factory=dict)   # name -> (sum over workers, per s)


class Observer:
    """One attached pipeline: ``sample()`` as often as wanted, ``close()`` at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.arena = Arena.attach(self.path)
        try:
            self.info = read_plan_info(self.arena)
            self.table = stagetable.table(self.arena)
            self.rings = {name: Ring.attach(self.arena, name) for name in self.info["rings"]}
        except BaseException:
            self.table = None
            self.arena.close()
            raise
        self.plan = SimpleNamespace(port_names=self.info["ports"],
                                    stages=[SimpleNamespace(**s) for s in self.info["stages"]])
        self.pid = int(self.info["pid"])
        self.started = time.monotonic()
        self._procs: dict[int, psutil.Process] = {}

    @property
    def name(self) -> str:
        return self.info["name"]

    def alive(self) -> bool:
        """The supervisor runs and its arena is still there."""
        return self.path.exists() and owner_alive(self.pid)

    def _cpu_percent(self, pid: int) -> float:
        if pid <= 0:
            return 0.0
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)       # the first call only starts the measurement
                return 0.0
            return proc.cpu_percent(None)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0.0

    def sample(self) -> Sample:
        rows = self.table.copy()
        fill = {name: (ring.count(), ring.capacity) for name, ring in self.rings.items()}
        cpu = {s.name: self._cpu_percent(int(rows[s.row]["pid"])) for s in self.plan.stages}
        return Sample(time.monotonic(), rows, fill, cpu, stagetable.stage_counters(self.arena, self.plan))

    def close(self) -> None:
        for ring in self.rings.values():
            ring.close()
        self.rings = {}
        self.table = None
        self.arena.close()

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def compute_view(obs: Observer, before: Sample, after: Sample) -> TopView:
    """Rates over the interval between two samples, counters as of ``after``."""
    dt = max(after.monotonic - before.monotonic, 1e-9)
    old, new = port_totals(obs.plan, before.rows), port_totals(obs.plan, after.rows)
    ports = []
    for name in obs.plan.port_names:
        d = {k: new[name][k] - old[name][k] for k in new[name]}
        ports.append(PortView(name, d["rx_packets"] / dt / 1e6, mbit(d["rx_packets"], d["rx_bytes"], dt),
                              d["tx_packets"] / dt / 1e6, mbit(d["tx_packets"], d["tx_bytes"], dt),
                              new[name]["rx_packets"], new[name]["tx_packets"]))
    stages = []
    totals = dict.fromkeys(DROP_REASONS, 0)
    for s in obs.plan.stages:
        a, b = before.rows[s.row], after.rows[s.row]
        loops = int(b["loops"] - a["loops"])
        drops = {r: int(b[f"drop_{r}"]) for r in DROP_REASONS}
        for r, v in drops.items():
            totals[r] += v
        stages.append(StageView(
            s.name, s.role, int(b["cpu"]), STATE_NAMES.get(int(b["state"]), str(int(b["state"]))),
            int(b["packets_in"] - a["packets_in"]) / dt / 1e6, int(b["packets_out"] - a["packets_out"]) / dt / 1e6,
            int(b["idle_loops"] - a["idle_loops"]) / loops if loops > 0 else 1.0,
            after.cpu_percent.get(s.name, 0.0), {r: v for r, v in drops.items() if v}))
    rings = [(name, fill, cap) for name, (fill, cap) in after.ring_fill.items()]
    then, now = stagetable.summed(before.counters), stagetable.summed(after.counters)
    counters = {k: (v, (v - then.get(k, 0)) / dt) for k, v in now.items()}
    return TopView(obs.name, obs.pid, dt, after.monotonic - obs.started, ports, stages, rings, totals, counters)


def _drops_text(drops: dict[str, int]) -> str:
    return " ".join(f"{r}={v}" for r, v in drops.items()) if drops else "-"


def render(view: TopView, width: int | None = None) -> list[str]:
    """The screen as lines (no terminal codes), cut to ``width`` columns when given; fits 80."""
    lines = [f"ixypipe top: pipeline {view.pipeline} (pid {view.pid}), {view.uptime:.0f} s, "
             f"rates over {view.seconds:.2f} s   q: quit",
             "",
             f"{'PORT':<8}{'RX Mpps':>9}{'RX Mbit/s':>11}{'TX Mpps':>9}{'TX Mbit/s':>11}"
             f"{'RX packets':>13}{'TX packets':>13}"]
    for p in view.ports:
        lines.append(f"{p.name:<8}{p.rx_mpps:>9.3f}{p.rx_mbit:>11.2f}{p.tx_mpps:>9.3f}{p.tx_mbit:>11.2f}"
                     f"{p.rx_packets:>13}{p.tx_packets:>13}")
    lines += ["", f"{'STAGE':<12}{'ROLE':<7}{'CPU':>3} {'STATE':<9}{'IN Mpps':>8}{'OUT Mpps':>9}{'IDLE':>5}"
                  f"{'CPU%':>6}  DROPS"]
    for s in view.stages:
        cpu = str(s.cpu) if s.cpu >= 0 else "-"
        lines.append(f"{s.name:<12}{s.role:<7}{cpu:>3} {s.state:<9}{s.in_mpps:>8.3f}{s.out_mpps:>9.3f}"
                     f"{s.idle * 100:>4.0f}%{s.cpu_percent:>5.0f}%  {_drops_text(s.drops)}")
    lines += ["", f"{'RING':<20}{'FILL':>13}"]
    for name, fill, cap in view.rings:
        lines.append(f"{name:<20}{f'{fill}/{cap}':>13}{fill / cap * 100:>5.0f}%")
    lines += ["", "drops by reason since start: " + ", ".join(f"{r} {v}" for r, v in view.drops.items())]
    if view.counters:
        lines += ["", f"{'WORKER COUNTER':<50}{'VALUE':>16}{'PER S':>14}"]
        for name, (value, rate) in view.counters.items():
            if len(name) > 50:                              # a long name on a line of its own, never cut
                lines.append(name)
                name = ""
            lines.append(f"{name:<50}{value:>16}{rate:>14.0f}")
    return [line[:width] for line in lines] if width else lines
