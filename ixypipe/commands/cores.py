"""``ixypipe cores [PIPELINE]``: the CPUs the data plane can use, and where ``ixypipe run`` would put each stage.

Shows the topology placement works from (online CPUs this process may use,
isolated CPUs, hyper-thread siblings, NUMA nodes) with how busy each CPU is
right now (psutil), then, for a pipeline file, the CPU each stage process
and the software 82599 would get, with the same demands and explicit
``[cpus]`` lists as ``ixypipe run``.  When no CPU is isolated it says which
kernel parameters (isolcpus=, nohz_full=, rcu_nocbs=) would set some aside.
"""

from __future__ import annotations

from pathlib import Path

import click
import psutil

from ixypipe.commands.options import Seconds
from ixypipe.pipeline.placement import CpuTopology, Placement, plan_placement, read_topology

BUSY_PERCENT = 50.0          # a CPU this busy already has work: a polling stage there runs at half speed


def cpu_list_text(cpus) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the kernel's cpulist format, as isolcpus= takes it)."""
    cpus = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        parts.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(parts)


def core_of(topo: CpuTopology, cpu: int) -> int:
    """A core is named by its lowest hyper-thread."""
    return min({cpu} | topo.siblings.get(cpu, set()))


def isolation_advice(topo: CpuTopology) -> str:
    """What to put on the kernel command line when nothing is isolated ('' when something is)."""
    if topo.isolated & set(topo.cpus):
        return ""
    if len(topo.cpus) < 2:
        return ("No CPU is isolated, and with a single CPU there is none to spare: every stage shares it with "
                "the kernel and the other processes (they back off when idle).")
    housekeeping = {topo.cpus[0]} | topo.siblings.get(topo.cpus[0], set())
    spare = [c for c in topo.cpus if c not in housekeeping] or topo.cpus[1:]
    cpus = cpu_list_text(spare)
    which = f"CPU {cpus}" if len(spare) == 1 else f"CPUs {cpus}"
    return (f"No CPU is isolated: the stages share their CPUs with the kernel and other processes. To give the "
            f"data plane {which} of its own (keeping core {core_of(topo, topo.cpus[0])} for the system), "
            f"add 'isolcpus={cpus} nohz_full={cpus} rcu_nocbs={cpus}' to the kernel command line "
            f"(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot); ixypipe run places "
            f"stages on isolated CPUs first.")


def pipeline_placement(pipeline: str, topo: CpuTopology,
                       held: dict[int, list[str]]) -> tuple[list[tuple[str, str]], Placement]:
    """(stage name, role) in start order and the placement ixypipe run would choose for them."""
    from ixypipe.pipeline.config import load_pipeline
    from ixypipe.pipeline.placement import explicit_cpus, stage_demands
    from ixypipe.pipeline.plan import plan_from_config

    cfg = load_pipeline(pipeline)
    demands = stage_demands(plan_from_config(cfg), any(p.driver == "sim" for p in cfg.ports))
    return [(d.name, d.role) for d in demands], plan_placement(demands, topo, explicit_cpus(cfg), held)


@click.command()
@click.argument("pipeline", required=False, type=click.Path(dir_okay=False))
@click.option("--interval", type=Seconds(min=0), default=0.5, show_default=True, metavar="SECONDS",
              help="How long to measure how busy each CPU is (0: since the last call, i.e. not measured).")
@click.option("--sysfs-root", default="/sys", show_default=True, hidden=True,
              help="Read the topology from this tree (tests).")
def cores(pipeline: str | None, interval: float, sysfs_root: str) -> None:
    """Show the CPU topology and where `ixypipe run PIPELINE` would place its stages.

    \b
    Automatic placement prefers isolated CPUs (isolcpus=), puts stages on
    separate physical cores before using hyper-thread siblings, keeps a
    stage on its NIC's NUMA node, uses CPUs that stages of other running
    pipelines hold ("held by") last, and gives the software 82599 a CPU of
    its own when there are two or more.  A [cpus] table in the pipeline file
    overrides it per role (rx, workers, tx, sim).

    \b
    Examples:
      ixypipe cores
      ixypipe cores pipelines/fwd.toml
      ixypipe cores pipelines/fwd.toml --json
    """
    from ixypipe.commands.options import CommandError, emit_json, wants_json
    from ixypipe.pipeline.config import ConfigError
    from ixypipe.pipeline.placement import PlacementError
    from ixypipe.pipeline.running import held_cpus, holders_text

    topo = read_topology(sysfs_root)
    held = held_cpus() if sysfs_root == "/sys" else {}
    percent = psutil.cpu_percent(interval=interval or None, percpu=True)
    busy = {c: float(percent[c]) if c < len(percent) else 0.0 for c in topo.cpus}
    stages: list[tuple[str, str]] = []
    placement = None
    if pipeline:
        try:
            stages, placement = pipeline_placement(pipeline, topo, held)
        except (ConfigError, PlacementError) as exc:
            raise CommandError(str(exc), 2) from exc
    advice = isolation_advice(topo)
    notes = list(placement.warnings) if placement else []
    if placement:
        for cpu in sorted({c for c in placement.cpu_of.values() if busy.get(c, 0.0) >= BUSY_PERCENT}):
            notes.append(f"CPU {cpu} is {busy[cpu]:.0f}% busy already: stages placed there get what is left "
                         f"(pin them elsewhere with a [cpus] table)")
    if wants_json():
        emit_json({
            "type": "cores",
            "cpus": [{"cpu": c, "core": core_of(topo, c), "numa_node": topo.numa_node.get(c),
                      "isolated": c in topo.isolated, "siblings": sorted(topo.siblings.get(c, set())),
                      "busy_percent": busy[c], "held_by": held.get(c, [])} for c in topo.cpus],
            "isolated": sorted(topo.isolated),
            "placement": dict(placement.cpu_of) if placement else None,
            "oversubscribed": placement.oversubscribed if placement else None,
            "warnings": notes,
            "advice": advice,
        })
        return
    click.echo(f"CPUs usable here: {cpu_list_text(topo.cpus)} ({len(topo.cpus)}); isolated: "
               f"{cpu_list_text(topo.isolated) or 'none'}")
    click.echo(f"{'CPU':>4} {'core':>5} {'NUMA':>5} {'isolated':>9} {'siblings':>9} {'busy':>6}  held by")
    for c in topo.cpus:
        node = topo.numa_node.get(c)
        sib = cpu_list_text(topo.siblings.get(c, set())) or "-"
        flag = "  busy" if busy[c] >= BUSY_PERCENT else ""
        holders = holders_text(held.get(c, [])) or "-"
        click.echo(f"{c:>4} {core_of(topo, c):>5} {'-' if node is None else node:>5} "
                   f"{'yes' if c in topo.isolated else 'no':>9} {sib:>9} {busy[c]:>5.0f}%  {holders}{flag}")
    if placement:
        click.echo(f"\nPlacement for {Path(pipeline)}:")
        width = max(len(n) for n, _ in stages)
        for name, role in stages:
            cpu = placement.cpu_of[name]
            click.echo(f"  {name:<{width}}  {role:<6}  CPU {cpu}{'  (isolated)' if cpu in topo.isolated else ''}")
    for note in notes:
        click.echo(f"warning: {note}")
    if advice:
        click.echo(f"\n{advice}")
