"""What ``ixypipe top`` shows: a running pipeline's figures from its stage table, rings and processes.

:class:`Observer` attaches a pipeline's packet arena (it writes nothing),
reads the plan the supervisor left in ``plan.json`` and takes
:class:`Sample` s: a copy of the stage table, each forward ring's fill, the
ports' drops the supervisor publishes each stats interval, and the CPU
share of every stage process and of the software 82599's model process
(a child of the supervisor).  :func:`compute_view` turns two samples into
per-port pps and Mbit/s (ixy's convention: 20 bytes of preamble and gap per
packet) with drops by reason, per-stage rates, CPU, idle share and the ring
(or NIC queue) the stage waits on, and the workers' counters;
:func:`render` lays the view out in a given width and height,
:func:`view_json` as one JSON object.  The terminal lives in ixypipe.ops.screen.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil

from ixypipe.jsonout import json_object
from ixypipe.layout import (
    DROP_REASONS,
    STAGE_STATE_DEAD,
    STAGE_STATE_DONE,
    STAGE_STATE_DRAINING,
    STAGE_STATE_RUNNING,
    STAGE_STATE_STARTING,
)
from ixypipe.memory.arena import Arena
from ixypipe.pipeline import stagetable
from ixypipe.pipeline.planinfo import read_plan_info, read_port_drops
from ixypipe.pipeline.report import PORT_DROP_NAMES, mbit, port_totals, rate_text
from ixypipe.pipeline.running import owner_alive
from ixypipe.rings.spsc import Ring
from ixypipe.sim.server import PROCESS_NAME as SIM_PROCESS_NAME

STATE_NAMES = {STAGE_STATE_STARTING: "starting", STAGE_STATE_RUNNING: "running",
               STAGE_STATE_DRAINING: "draining", STAGE_STATE_DONE: "done", STAGE_STATE_DEAD: "dead"}
IDLE_WAITING = 0.5          # a stage whose input was empty in this share of its loops or more waits for it
STALL_WAITING = 0.05        # ... and one that found an output full in this share (and more often) waits on it
OUT_FULL_SHOWN = 0.5        # ... when that output is at least this full now (else it is pushing again)


@dataclass
class Sample:
    monotonic: float
    rows: np.ndarray                       # copy of the stage table
    ring_fill: dict[str, tuple[int, int]]  # ring -> (entries, capacity)
    cpu_percent: dict[str, float]          # stage -> share of one CPU since the last sample, in %
    counters: dict[str, dict[str, int]] = field(default_factory=dict)   # stage -> the worker's named counters
    port_drops: dict[str, dict[str, int]] = field(default_factory=dict)  # port -> rx_missed, rx_too_long, rx_undersize
    nics: list[tuple[int, int, float]] = field(default_factory=list)    # model processes: (pid, cpu, cpu %)


@dataclass
class PortView:
    name: str
    driver: str
    rx_pps: float
    rx_mbit: float
    tx_pps: float
    tx_mbit: float
    rx_packets: int
    tx_packets: int
    drops: dict[str, int] = field(default_factory=dict)       # reason -> since start (nonzero only)


@dataclass
class StageView:
    name: str
    role: str
    cpu: int
    state: str
    in_pps: float
    out_pps: float
    idle: float                            # 0..1 of loops that found nothing to do
    cpu_percent: float
    drops: dict[str, int]                  # reason -> packets since start
    waits_on: str = ""                     # "in RING", "out RING" (full), "NIC p0 RX", "" (busy)


@dataclass
class NicView:
    """One software 82599 model process: it serves every sim port of the pipeline."""
    pid: int
    cpu: int
    cpu_percent: float
    ports: list[str]


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
    nics: list[NicView] = field(default_factory=list)


class Observer:
    """One attached pipeline: ``sample()`` as often as wanted, ``close()`` at the end."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.arena = Arena.attach(self.path, read_only=True)
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
        self.drivers = self.info.get("drivers", ["?"] * len(self.plan.port_names))
        self.pid = int(self.info["pid"])
        try:
            self.born = psutil.Process(self.pid).create_time()     # the pipeline's age, not top's
        except psutil.Error:
            self.born = time.time()
        self._procs: dict[int, psutil.Process] = {}

    @property
    def name(self) -> str:
        return self.info["name"]

    def alive(self) -> bool:
        """The supervisor runs and its arena is still there."""
        return self.path.exists() and owner_alive(self.pid)

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
            proc.cpu_percent(None)       # the first call only starts the measurement
        return proc

    def _cpu_percent(self, pid: int) -> float:
        if pid <= 0:
            return 0.0
        try:
            return self._proc(pid).cpu_percent(None)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0.0

    def _nics(self) -> list[tuple[int, int, float]]:
        """The supervisor's software-82599 children: (pid, CPU it is on, CPU %)."""
        if "sim" not in self.drivers:
            return []
        try:
            children = [c for c in psutil.Process(self.pid).children(recursive=True) if c.name() == SIM_PROCESS_NAME]
        except psutil.Error:
            return []
        found = []
        for child in children:
            try:
                found.append((child.pid, self._proc(child.pid).cpu_num(), self._cpu_percent(child.pid)))
            except psutil.Error:
                continue
        return found

    def sample(self) -> Sample:
        rows = self.table.copy()
        fill = {name: (ring.count(), ring.capacity) for name, ring in self.rings.items()}
        cpu = {s.name: self._cpu_percent(int(rows[s.row]["pid"])) for s in self.plan.stages}
        return Sample(time.monotonic(), rows, fill, cpu, stagetable.stage_counters(self.arena, self.plan),
                      read_port_drops(self.arena, self.plan.port_names), self._nics())

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


def _waits_on(s, port: str, state: str, idle: float, stall_share: float, fill: dict[str, tuple[int, int]]) -> str:
    """What held the stage back in this interval: a full output, an empty input, or nothing ('').

    A loop that found its output full is also an idle loop, so the input's
    share is what is left of the idle share after the stalls.
    """
    if state != "running":
        return state
    input_share = max(idle - stall_share, 0.0)
    if stall_share >= STALL_WAITING and stall_share >= input_share:
        if s.role == "tx":
            return f"NIC {port} TX q{s.queue}"          # no free TX descriptor
        outs = getattr(s, "out", [])
        if outs:
            share = {r: fill.get(r, (0, 1))[0] / max(fill.get(r, (0, 1))[1], 1) for r in outs}
            fullest = max(outs, key=share.get)
            if share[fullest] >= OUT_FULL_SHOWN:     # named only when the level shown beside it agrees
                return f"out {fullest}"
    if input_share >= IDLE_WAITING:
        if s.role == "rx":
            return f"NIC {port} RX q{s.queue}"           # the port gives nothing
        ins = getattr(s, "in", [])
        if len(ins) == 1:
            return f"in {ins[0]}"
        if ins:
            return f"in {len(ins)} rings"
    return ""


def compute_view(obs: Observer, before: Sample, after: Sample) -> TopView:
    """Rates over the interval between two samples, counters as of ``after``."""
    dt = max(after.monotonic - before.monotonic, 1e-9)
    old, new = port_totals(obs.plan, before.rows), port_totals(obs.plan, after.rows)
    names = obs.plan.port_names
    ports = []
    for i, name in enumerate(names):
        d = {k: new[name][k] - old[name][k] for k in new[name]}
        drops = {PORT_DROP_NAMES.get(k, k): v for k, v in after.port_drops.get(name, {}).items() if v}
        ports.append(PortView(name, obs.drivers[i] if i < len(obs.drivers) else "?",
                              d["rx_packets"] / dt, mbit(d["rx_packets"], d["rx_bytes"], dt),
                              d["tx_packets"] / dt, mbit(d["tx_packets"], d["tx_bytes"], dt),
                              new[name]["rx_packets"], new[name]["tx_packets"], drops))
    stages = []
    totals = dict.fromkeys(DROP_REASONS, 0)
    for s in obs.plan.stages:
        b = after.rows[s.row]
        a = stagetable.interval_base(before.rows[s.row], b)          # a restarted worker: its own figures
        loops = int(b["loops"] - a["loops"])
        idle = stagetable.idle_share(a, b)
        drops = {r: int(b[f"drop_{r}"]) for r in DROP_REASONS}
        for r, v in drops.items():
            totals[r] += v
        drops = {r: v for r, v in drops.items() if v}
        port = names[s.port] if 0 <= s.port < len(names) else ""
        if port:                                    # a port's drops include those of its own RX and TX stages
            for r, v in drops.items():
                ports[s.port].drops[r] = ports[s.port].drops.get(r, 0) + v
        state = STATE_NAMES.get(int(b["state"]), str(int(b["state"])))
        stages.append(StageView(
            s.name, s.role, int(b["cpu"]), state,
            int(b["packets_in"] - a["packets_in"]) / dt, int(b["packets_out"] - a["packets_out"]) / dt,
            idle, after.cpu_percent.get(s.name, 0.0), drops,
            _waits_on(s, port, state, idle, int(b["stalls"] - a["stalls"]) / loops if loops > 0 else 0.0,
                      after.ring_fill)))
    rings = [(name, fill, cap) for name, (fill, cap) in after.ring_fill.items()]
    then, now = stagetable.summed(before.counters), stagetable.summed(after.counters)
    counters = {k: (v, (v - then.get(k, 0)) / dt) for k, v in now.items()}
    sim_ports = [p.name for p in ports if p.driver == "sim"]
    nics = [NicView(pid, cpu, pct, sim_ports) for pid, cpu, pct in after.nics]
    return TopView(obs.name, obs.pid, dt, time.time() - obs.born, ports, stages, rings, totals, counters,
                   nics)


def view_json(view: TopView) -> dict:
    """One interval as a JSON-ready object (``ixypipe top --json``); rates in packets per second.

    Ports, stages and rings are objects keyed by name, and the workers' counters
    ``counters`` (values) beside ``counter_rates`` (per second), as in ``ixypipe run --json``'s
    intervals (docs/json.md)."""
    doc = json_object("top")
    doc.update(asdict(view))
    doc["ports"] = {p.pop("name"): p for p in doc["ports"]}
    doc["stages"] = {s.pop("name"): s for s in doc["stages"]}
    doc["rings"] = {n: {"entries": f, "capacity": c} for n, f, c in view.rings}
    doc["counters"] = {k: v for k, (v, _) in view.counters.items()}
    doc["counter_rates"] = {k: r for k, (_, r) in view.counters.items()}
    return doc


# ---- the screen as lines ---------------------------------------------------------------------

def _drops_text(drops: dict[str, int]) -> str:
    return " ".join(f"{r} {v:,}" for r, v in drops.items()) if drops else "-"


def _blocks(view: TopView, width: int) -> list[tuple[str, list[str], list[str]]]:
    """(what, header lines, rows) per section, in display order."""
    port_w = max([len(p.name) for p in view.ports] + [4]) + 2
    ports = [f"{p.name:<{port_w}}{rate_text(p.rx_pps):>11}{p.rx_mbit:>10.1f}{rate_text(p.tx_pps):>11}"
             f"{p.tx_mbit:>10.1f}  {_drops_text(p.drops)}" for p in view.ports]
    port_head = f"{'PORT':<{port_w}}{'RX':>11}{'Mbit/s':>10}{'TX':>11}{'Mbit/s':>10}  DROPS since start"
    nics = [f"{'model':<{port_w}}{n.pid:>8}{n.cpu:>4}{n.cpu_percent:>6.0f}%  {' '.join(n.ports)}"
            for n in view.nics]
    nic_head = f"{'SIM NIC':<{port_w}}{'PID':>8}{'CPU':>4}{'CPU%':>7}  PORTS"
    stage_w = max([len(s.name) for s in view.stages] + [5]) + 1
    stages = []
    for s in view.stages:
        cpu = str(s.cpu) if s.cpu >= 0 else "-"
        stages.append(f"{s.name:<{stage_w}}{cpu:>3}{s.cpu_percent:>5.0f}%{s.idle * 100:>5.0f}%"
                      f"{rate_text(s.in_pps):>11}{rate_text(s.out_pps):>11}  {s.waits_on or 'busy':<18}"
                      f"{_drops_text(s.drops)}")
    stage_head = (f"{'STAGE':<{stage_w}}{'CPU':>3}{'CPU%':>6}{'IDLE':>6}{'IN':>11}{'OUT':>11}  "
                  f"{'WAITS ON':<18}DROPS")
    ring_w = max([len(n) for n, _, _ in view.rings] + [4]) + 2
    rings = [f"{name:<{ring_w}}{f'{fill}/{cap}':>13}{fill / cap * 100:>5.0f}%" for name, fill, cap in view.rings]
    ring_head = f"{'RING':<{ring_w}}{'FILL':>13}"
    name_w = max(20, min(50, width - 28))
    counters = []
    for name, (value, rate) in view.counters.items():
        if len(name) > name_w:                      # a long name on a line of its own
            counters.append(name)
            name = ""
        counters.append(f"{name:<{name_w}}{value:>16,}{rate:>12,.0f}")
    counter_head = f"{'WORKER COUNTER':<{name_w}}{'VALUE':>16}{'PER S':>12}"
    nonzero = {r: v for r, v in view.drops.items() if v}
    drops = ["drops since start: " + (", ".join(f"{r} {v:,}" for r, v in nonzero.items()) or "none")]
    return [("ports", [port_head], ports), ("sim nics", [nic_head] if nics else [], nics),
            ("stages", [stage_head], stages), ("drops", [], drops),
            ("counters", [counter_head] if counters else [], counters), ("rings", [ring_head], rings)]


# which sections keep their rows first when the terminal is short
PRIORITY = ("ports", "sim nics", "stages", "drops", "counters", "rings")


def render(view: TopView, width: int | None = None, height: int | None = None) -> list[str]:
    """The screen as lines (no terminal codes): every line at most ``width`` columns, at most ``height`` lines.

    The title comes first; when the height is short, sections lose rows in
    reverse order of :data:`PRIORITY` and say how many are not shown.
    """
    title = (f"ixypipe top - {view.pipeline} (pid {view.pid}), up {view.uptime:.0f} s, rates over "
             f"{view.seconds:.1f} s   q: quit")
    blocks = _blocks(view, width or 80)
    budget = (height if height else 1 << 30) - 1
    shown: dict[str, list[str]] = {}
    for what in PRIORITY:
        _, head, rows = next(b for b in blocks if b[0] == what)
        if not rows:
            continue
        if len(head) + len(rows) <= budget:
            shown[what] = head + rows
        elif budget >= len(head) + 1:
            keep = budget - len(head) - 1
            shown[what] = head + rows[:keep] + [f"... {len(rows) - keep} more {what} (a taller terminal shows them)"]
        else:
            continue
        budget -= len(shown[what])
    sections = [shown[what] for what, _, _ in blocks if what in shown]
    lines = [title]
    spare = budget
    for section in sections:
        if spare > 0:                               # a blank line between sections while there is room
            lines.append("")
            spare -= 1
        lines += section
    return [line[:width] for line in lines] if width else lines
