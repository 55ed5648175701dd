"""``ixypipe top [PIPELINE]``: a live per-port and per-stage view of a running pipeline."""

from __future__ import annotations

import click


@click.command()
@click.argument("pipeline", required=False, metavar="[PID|NAME]")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, metavar="SECONDS",
              help="Seconds between refreshes.")
@click.option("-n", "--iterations", type=click.IntRange(min=1), metavar="N",
              help="Stop after N refreshes (default: until q or Ctrl-C).")
@click.option("--list", "list_only", is_flag=True, help="Only list the running pipelines.")
def command(pipeline: str | None, interval: float, iterations: int | None, list_only: bool) -> None:
    """Watch a running pipeline: Mpps, Mbit/s, ring fill, idle share, drops, CPU.

    \b
    Attaches to the pipeline started by 'ixypipe run' (found by its shared
    stage table; name it by supervisor pid or pipeline name when several
    run) and refreshes once per interval:
      ports   RX/TX Mpps and Mbit/s (20 bytes of preamble and gap per packet)
      stages  CPU, state, Mpps in/out, share of idle loops, CPU%, drops by reason
      rings   entries waiting in each forward ring
    Press q or Ctrl-C to quit; top also ends when the pipeline does.
    Without a terminal it prints plain frames (use -n to stop).
    """
    from ixypipe.memory.arena import ArenaError
    from ixypipe.ops.screen import run_screen
    from ixypipe.ops.top import Observer
    from ixypipe.pipeline.planinfo import PlanInfoError
    from ixypipe.pipeline.running import NoPipelineError, choose_pipeline, find_pipelines

    if list_only:
        running = find_pipelines()
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
        reason = run_screen(obs, interval=interval, iterations=iterations)
    if reason == "pipeline ended":
        click.echo(f"pipeline {target.name} (pid {target.pid}) has ended")
