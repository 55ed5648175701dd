"""Puts each stage process on a CPU: the pipeline's side of ixypipe.workers.placement."""

from __future__ import annotations

from ixypipe.workers.placement import StageDemand, pin, plan_placement, read_topology


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

    Stages pin themselves when they start.  On CPUs that are isolated and not
    shared, stages spin without backing off, as DPDK lcores do.
    """
    topo = read_topology()
    placement = plan_placement(stage_demands(plan, sim_pid is not None), topo, explicit_cpus(cfg))
    for s in plan.stages:
        s.cpu = placement.cpu_of.get(s.name)
    if sim_pid is not None and "sim" in placement.cpu_of:
        pin(sim_pid, placement.cpu_of["sim"])
    plan.shared_cpus = placement.oversubscribed
    plan.spin_only = not placement.oversubscribed and all(
        s.cpu in topo.isolated for s in plan.stages if s.cpu is not None)
    return placement
