"""``ixypipe top [PIPELINE]``: a live per-port and per-stage view of a running pipeline."""

from __future__ import annotations

import click

from ixypipe.commands.options import Count, Seconds


@click.command()
@click.argument("pipeline", required=False, metavar="[PID|NAME]")
@click.option("--interval", type=Seconds(min=0.1), default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds between refreshes.")
@click.option("-n", "--iterations", type=Count(min=1), metavar="N",
              help="Stop after N refreshes (default: until q or Ctrl-C).")
@click.option("--once", is_flag=True, help="One frame (rates over one interval), then exit: for scripts.")
@click.option("--list", "list_only", is_flag=True, help="Only list the running pipelines.")
def command(pipeline: str | None, interval: float, iterations: int | None, once: bool, list_only: bool) -> None:
    """Watch a running pipeline: pps, Mbit/s, drops, CPU, what each stage waits on.

    \b
    Attaches to the pipeline started by 'ixypipe run' (found by its shared
    stage table; name it by supervisor pid or pipeline name when several
    run) and refreshes once per interval, fitted to the terminal (80x24 and
    up, resizes followed):
      ports    RX/TX pps and Mbit/s (20 bytes of preamble and gap per
               packet), drops by reason since start
      sim nic  the software 82599's model process: its CPU and CPU share
      stages   CPU, CPU%, idle share, pps in/out, the ring or NIC queue it
               waits on (an empty input, or a full output), drops by reason
      counters the workers' named counters, summed, with a rate
      rings    entries waiting in each forward ring
    Press q or Ctrl-C to quit; top also ends when the pipeline does.
    Without a terminal it prints plain frames (-n N or --once to stop);
    --json prints one JSON object per interval (rates in pps).
    """
    from ixypipe.commands.options import emit_json, wants_json
    from ixypipe.memory.arena import ArenaError
    from ixypipe.ops.screen import run_screen
    from ixypipe.ops.top import Observer
    from ixypipe.pipeline.planinfo import PlanInfoError
    from ixypipe.pipeline.running import NoPipelineError, choose_pipeline, find_pipelines

    if list_only:
        running = find_pipelines()
        if wants_json():
            emit_json({"type": "pipelines", "pipelines": [{"pid": p.pid, "name": p.name, "arena": str(p.path)}
                                                          for p in running]})
            return
        for p in running:
            click.echo(p.describe())
        if not running:
            click.echo("no running pipeline")
        return
    try:
        target = choose_pipeline(pipeline)
        obs = Observer(target.path)
    except (NoPipelineError, ArenaError, PlanInfoError) as exc:
        raise click.ClickException(str(exc)) from exc
    with obs:
        reason = run_screen(obs, interval=interval, iterations=1 if once else iterations, as_json=wants_json())
    if reason == "pipeline ended":
        if wants_json():
            emit_json({"type": "ended", "pipeline": target.name, "pid": target.pid})
        else:
            click.echo(f"pipeline {target.name} (pid {target.pid}) has ended")
