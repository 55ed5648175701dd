"""``ixypipe run PIPELINE.toml``: validate a pipeline file and run it until Ctrl-C, --duration or --packets."""

from __future__ import annotations

import sys

import click


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).")
@click.option("--packets", type=click.IntRange(min=1), metavar="N",
              help="Stop once the RX stages have received N packets.")
@click.option("--json", "json_lines", is_flag=True, default=None,
              help="Print one JSON object per interval and a JSON summary instead of text.")
@click.option("--check", is_flag=True, help="Only validate the pipeline file and print what would run.")
def run(pipeline: str, duration: float | None, packets: int | None, json_lines: bool | None, check: bool) -> None:
    """Run the pipeline described by PIPELINE (a TOML file).

    \b
    One RX process per port queue owns its descriptor ring and mempool and
    hands buffer indices to the worker processes through SPSC rings in the
    shared hugepage arena; workers run your function on batches; one TX
    process per port queue posts them and sends the buffers home.  Every
    second it prints ixy-style per-port figures:

    \b
      [p0] RX: 1523.81 Mbit/s 2.27 Mpps
      [p0] TX: 1523.79 Mbit/s 2.27 Mpps
      stages: rx-p0q0@cpu0 idle 12% | worker-0@cpu1 idle 3% | ...

    \b
    On Ctrl-C or SIGTERM it stops the stages in data-flow order, drains the
    rings, and prints the accounting: received = transmitted + dropped (by
    reason), nothing in flight.  The exit status is 1 when the accounting is
    broken or a stage died, 2 for a bad pipeline file.

    \b
    Examples:
      ixypipe run pipelines/fwd.toml
      ixypipe run pipelines/fwd.toml --duration 10 --json > stats.jsonl
      ixypipe run pipelines/fwd.toml --packets 1000000
    """
    from ixypipe.pipeline.config import ConfigError, load_pipeline

    try:
        cfg = load_pipeline(pipeline)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if check:
        describe(cfg)
        return
    from ixypipe.pipeline.supervisor import Supervisor

    result = Supervisor(cfg, duration=duration, packets=packets, json_lines=json_lines).run()
    sys.exit(result.exit_code)


def describe(cfg) -> None:
    click.echo(f"pipeline {cfg.name}: {cfg.path}")
    for p in cfg.ports:
        where = p.pci or p.interface or p.path or "(assigned)"
        click.echo(f"  port {p.name}: {p.driver} {where}, {p.rx_queues} RX / {p.tx_queues} TX queues, "
                   f"forwards to {p.forward_to or '(the other port)'}")
        if p.driver == "pcap" and p.pcap_mode == "read":
            from ixypipe.pcapfile import read_pcap
            capture = read_pcap(p.path, allow_cut=True)
            click.echo(f"    {capture.format}, {len(capture):,} packets, replayed "
                       f"{p.pcap_loop or 'endless'} time{'s' if p.pcap_loop != 1 else ''}")
            if capture.cut_at is not None:
                click.echo(f"warning: port {p.name}: {capture.cut_message()}; the replay stops there", err=True)
    w = cfg.workers
    click.echo(f"  workers: {w.processes} x {w.function} ({w.distribute}), batch {cfg.batch_size}, "
               f"rings {cfg.ring_size}")
    click.echo("ok")
