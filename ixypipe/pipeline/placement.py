"""CPU placement: which CPU each polling stage runs on.

Reads the topology from sysfs (a parameter, so tests use fake trees):
online and isolated CPUs, hyper-thread siblings, NUMA nodes.  Automatic
placement prefers isolated CPUs, spreads stages over physical cores before
doubling up on hyper-thread siblings, and keeps a stage on its NIC's NUMA
node where that is known.  With more stages than CPUs it shares them
round-robin and says so once.  The software 82599 (role "sim") stands in
for hardware that would cost the host nothing, so it gets a CPU of its own
whenever there are at least two.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ixypipe.pipeline.running import holders_text

log = logging.getLogger(__name__)


class PlacementError(Exception):
    """A CPU cannot be used as asked."""


@dataclass
class CpuTopology:
    cpus: list[int]
    isolated: set[int] = field(default_factory=set)
    siblings: dict[int, set[int]] = field(default_factory=dict)
    numa_node: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StageDemand:
    name: str
    role: str                       # "rx" | "worker" | "tx" | "sim"
    numa_node: int | None = None


@dataclass
class Placement:
    cpu_of: dict[str, int]
    oversubscribed: bool
    warnings: list[str]


def parse_cpu_list(text: str) -> list[int]:
    """'0-3,8,10-11' -> [0, 1, 2, 3, 8, 10, 11] (the kernel's cpulist format)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"{text.strip()!r} is not a CPU list such as '0-3,8,10-11'") from None
        if first < 0 or last < first:
            raise ValueError(f"{text.strip()!r} is not a CPU list such as '0-3,8,10-11' (bad range {part!r})")
        cpus.extend(range(first, last + 1))
    return cpus


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def read_topology(sysfs_root: str | os.PathLike = "/sys") -> CpuTopology:
    base = Path(sysfs_root) / "devices" / "system"
    online = parse_cpu_list(_read(base / "cpu" / "online")) or sorted(os.sched_getaffinity(0))
    if str(sysfs_root) == "/sys":
        allowed = os.sched_getaffinity(0)
        online = [c for c in online if c in allowed] or online
    topo = CpuTopology(cpus=online, isolated=set(parse_cpu_list(_read(base / "cpu" / "isolated"))))
    for cpu in online:
        sib = parse_cpu_list(_read(base / "cpu" / f"cpu{cpu}" / "topology" / "thread_siblings_list"))
        topo.siblings[cpu] = set(sib) - {cpu}
    for node_dir in sorted((base / "node").glob("node[0-9]*")):
        node = int(node_dir.name[4:])
        for cpu in parse_cpu_list(_read(node_dir / "cpulist")):
            topo.numa_node[cpu] = node
    return topo


def _preference(topo: CpuTopology) -> list[int]:
    """CPUs in the order automatic placement uses them: isolated first, one thread per core first."""
    first_threads, second_threads, seen_cores = [], [], set()
    for cpu in topo.cpus:
        core = frozenset({cpu} | topo.siblings.get(cpu, set()))
        (second_threads if core in seen_cores else first_threads).append(cpu)
        seen_cores.add(core)
    order = first_threads + second_threads
    return [c for c in order if c in topo.isolated] + [c for c in order if c not in topo.isolated]


def plan_placement(demands: list[StageDemand], topo: CpuTopology,
                   explicit: dict[str, list[int] | None] | None = None,
                   held: dict[int, list[str]] | None = None) -> Placement:
    """A CPU per demand; ``held``: CPU -> stages of other running pipelines there, avoided while others are free."""
    explicit = explicit or {}
    held = {c: names for c, names in (held or {}).items() if c in topo.cpus and names}
    cpu_of: dict[str, int] = {}
    load: dict[int, int] = {c: len(held.get(c, ())) for c in topo.cpus}
    per_role: dict[str, int] = {}
    automatic = []
    for d in demands:
        chosen = explicit.get(d.role)
        if chosen:
            cpu = chosen[per_role.get(d.role, 0) % len(chosen)]
            per_role[d.role] = per_role.get(d.role, 0) + 1
            if cpu not in load:
                raise PlacementError(f"CPU {cpu} (for {d.name}) is not usable here; CPUs: "
                                     f"{', '.join(map(str, topo.cpus))}")
            cpu_of[d.name] = cpu
            load[cpu] += 1
        else:
            automatic.append(d)
    order = _preference(topo)
    worker_cpus = order
    sims = [d for d in automatic if d.role == "sim"]
    if sims and len(order) > len(sims):
        spare = sorted(reversed(order), key=lambda c: load[c])     # least preferred, not taken explicitly
        for d, cpu in zip(sims, spare[:len(sims)], strict=True):
            cpu_of[d.name] = cpu
            load[cpu] += 1
        sim_cpus = {cpu_of[d.name] for d in sims}
        order = [c for c in order if c not in sim_cpus]    # CPUs taken explicitly stay, counted in load
        automatic = [d for d in automatic if d.role != "sim"]
        if len(automatic) > len(order):
            # too few CPUs for a stage each: workers may join the model's CPU, which waits for the stages
            # much of the time, and where a worker touches the frames the model writes and reads back
            # (fwd.toml on 2 CPUs, measured side by side: 0.9 -> 2.6-3.0 Mpps, model 270 -> 190-240 ns/packet)
            worker_cpus = order + sorted(sim_cpus)
    for d in automatic:
        candidates = worker_cpus if d.role == "worker" else order
        if d.numa_node is not None:
            local = [c for c in order if topo.numa_node.get(c) == d.numa_node]
            candidates = local or order
        cpu = min(candidates, key=lambda c: (load[c], candidates.index(c)))
        cpu_of[d.name] = cpu
        load[cpu] += 1
    mine = set(cpu_of.values())
    shared = sorted(c for c in mine if load[c] > 1)       # only CPUs this pipeline uses count
    oversubscribed = bool(shared)
    warnings = []
    if oversubscribed:
        warnings.append(oversubscription_warning(sum(load[c] for c in shared), len(shared)))
    for cpu in sorted(mine & set(held)):
        warnings.append(f"CPU {cpu} is shared with running pipelines: {holders_text(held[cpu])}")
    return Placement(cpu_of, oversubscribed, warnings)


def oversubscription_warning(stages: int, cpus: int) -> str:
    """The one warning given when polling stages share CPUs (the text the issue fixes, word for word)."""
    return (f"{stages} polling stages share {cpus} CPUs: stages back off when idle (spin, sched_yield, sleep); "
            "isolate CPUs (isolcpus=, nohz_full=) for full speed")


def pin(pid: int, cpu: int) -> None:
    try:
        psutil.Process(pid).cpu_affinity([cpu])
    except (psutil.Error, ValueError, OSError) as exc:
        raise PlacementError(f"cannot pin pid {pid} to CPU {cpu}: {exc}") from exc


# ---- the pipeline's side: one demand per stage, written back into the plan ----------------

def stage_demands(plan, with_sim: bool) -> list[StageDemand]:
    """One CPU demand per stage, in start order, plus the simulator process when there is one."""
    demands = [StageDemand(s.name, s.role) for s in plan.stages]
    if with_sim:
        demands.append(StageDemand("sim", "sim"))
    return demands


def explicit_cpus(cfg) -> dict[str, list[int] | None]:
    return {"rx": cfg.cpus.rx, "worker": cfg.cpus.workers, "tx": cfg.cpus.tx, "sim": cfg.cpus.sim}


def place_stages(plan, cfg, sim_pid: int | None = None):
    """Choose a CPU per stage (and for the simulator process), write it into the plan, pin the simulator.

    Stages pin themselves when they start.  CPUs that stages of other running
    pipelines hold are used last.  On CPUs that are isolated and not shared,
    stages spin without backing off, as DPDK lcores do.
    """
    from ixypipe.pipeline.running import held_cpus  # reads arenas: only when placing for real

    topo = read_topology()
    placement = plan_placement(stage_demands(plan, sim_pid is not None), topo, explicit_cpus(cfg),
                               held_cpus(exclude_pid=os.getpid()))
    for s in plan.stages:
        s.cpu = placement.cpu_of.get(s.name)
    if sim_pid is not None and "sim" in placement.cpu_of:
        pin(sim_pid, placement.cpu_of["sim"])
    plan.shared_cpus = placement.oversubscribed
    plan.spin_only = not placement.oversubscribed and all(
        s.cpu in topo.isolated for s in plan.stages if s.cpu is not None)
    idle = getattr(cfg, "idle", "auto")
    plan.idle = ("spin" if plan.spin_only else "wake") if idle == "auto" else idle
    plan.spin_only = plan.idle == "spin"
    log.debug("CPUs: %s (isolated: %s); idle mode %s%s", ",".join(map(str, topo.cpus)),
              ",".join(map(str, sorted(topo.isolated))) or "none", plan.idle,
              ", shared by more stages than CPUs" if plan.shared_cpus else "")
    for name, cpu in placement.cpu_of.items():
        log.debug("%s on CPU %d", name, cpu)
    return placement
