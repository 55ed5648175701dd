"""``ixypipe run PIPELINE.toml``: validate a pipeline file and run it until Ctrl-C, --duration or --packets."""

from __future__ import annotations

import dataclasses
import logging
import signal
import sys

import click

from ixypipe.commands.options import (
    CommandError,
    Count,
    Seconds,
    emit_json,
    set_json,
    wants_json,
    wants_quiet,
)
from ixypipe.proc import log_level


@click.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("--duration", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: run until Ctrl-C or SIGTERM).")
@click.option("--packets", type=Count(min=1), metavar="N",
              help="Stop once the RX stages have received N packets.")
@click.option("--json", is_flag=True, expose_value=False, callback=set_json,
              help="Print one JSON object per interval and a JSON summary instead of text (with --check: "
                   "one JSON object); errors as JSON too.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve Prometheus metrics on this TCP port (/metrics, text format): per-port, per-stage, "
                   "ring, worker-counter and software-82599 figures of the latest stats interval, labelled with "
                   "the pipeline's name.  0 = none (the default, or [stats] metrics_port).")
@click.option("--metrics-address", metavar="ADDRESS",
              help="Address the metrics endpoint listens on (default 127.0.0.1, or [stats] metrics_address; "
                   "0.0.0.0 or :: for every interface).")
@click.option("--check", is_flag=True,
              help="Only validate: the file, and on this machine interfaces, PCI devices and the worker's "
                   "import; print what would run (exit 1 when a check fails).")
def run(pipeline: str, duration: float | None, packets: int | None, metrics_port: int | None,
        metrics_address: str | None, check: bool) -> None:
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
      stages: rx-p0-q0@cpu0 idle 12% | worker-0@cpu1 idle 3% | ...

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
      ixypipe run pipelines/fwd.toml --metrics-port 9101   # curl localhost:9101/metrics
    """
    # Ctrl-C / kill -INT stops a run at every step, as the supervisor's own handler does once it runs: a run
    # started with `&` from a script inherits SIGINT ignored, and would otherwise sit out its checks deaf to it
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if not check:
        from ixypipe.pipeline import forkserver
        forkserver.context()            # the stages' fork server warms up while the file is checked
    from ixypipe.pipeline.config import ConfigError, check_plan_fits, check_worker_imports, load_pipeline

    try:
        cfg = load_pipeline(pipeline)
        check_plan_fits(cfg)
        check_worker_imports(cfg)       # in a child, with a time limit: before anything is created
    except ConfigError as exc:
        shown = f"{exc}\n{exc.details}" if exc.details and verbose() else str(exc)   # -v: the traceback after it
        raise CommandError(shown, 2) from exc
    cfg = with_metrics(cfg, metrics_port, metrics_address)
    if check:
        check_machine(cfg)
        return
    from ixypipe.pipeline.supervisor import Supervisor

    server = serve_metrics(cfg)         # a port in use: refused before anything starts
    try:
        result = Supervisor(cfg, duration=duration, packets=packets, json_lines=True if wants_json() else None,
                            metrics=server, quiet=wants_quiet()).run()
    finally:
        if server is not None:
            server.close()                # the endpoint ends with the run
    if wants_json() and result.accounting is None and result.failures:     # failed before any summary
        emit_json({"type": "error", "message": "; ".join(result.failures), "exit_code": result.exit_code})
    sys.exit(result.exit_code)


def with_metrics(cfg, port: int | None, address: str | None):
    """``cfg`` with the metrics options in place of the file's [stats] metrics_port / metrics_address."""
    stats = dataclasses.replace(cfg.stats, metrics_port=cfg.stats.metrics_port if port is None else port,
                                metrics_address=address or cfg.stats.metrics_address)
    return dataclasses.replace(cfg, stats=stats)


def serve_metrics(cfg):
    """The metrics endpoint ``cfg`` asks for, listening (None for port 0); CommandError when it cannot."""
    if not cfg.stats.metrics_port:
        return None
    from ixypipe.pipeline.metrics import MetricsError, MetricsServer

    try:
        return MetricsServer(cfg.stats.metrics_port, cfg.stats.metrics_address)
    except MetricsError as exc:
        raise CommandError(str(exc), 1) from None


def metrics_finding(cfg):
    """--check: can the metrics endpoint listen where ``cfg`` asks (tried, then closed)?"""
    from ixypipe.pipeline.metrics import MetricsError, MetricsServer
    from ixypipe.pipeline.preflight import Finding

    what = f"metrics: port {cfg.stats.metrics_port} on {cfg.stats.metrics_address}"
    try:
        MetricsServer(cfg.stats.metrics_port, cfg.stats.metrics_address).close()
    except MetricsError as exc:
        return Finding(what, False, str(exc))
    return Finding(what, True, "free: Prometheus can scrape /metrics there while the pipeline runs")


def verbose() -> bool:
    """Was ``ixypipe -v`` given (the group's option, or debug logging however it was turned on)?"""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose")) or log_level() <= logging.DEBUG


def describe_replay(p) -> None:
    """--check of a pcap port that replays: the file's format and packets, and a warning if it is cut."""
    if p.driver != "pcap" or p.pcap_mode != "read":
        return
    from ixypipe.pcapfile import read_pcap

    capture = read_pcap(p.path, allow_cut=True)
    click.echo(f"    {capture.format}, {len(capture):,} packets, replayed "
               f"{p.pcap_loop or 'endless'} time{'s' if p.pcap_loop != 1 else ''}")
    if capture.cut_at is not None:
        click.echo(f"warning: port {p.name}: {capture.cut_message()}; the replay stops there", err=True)


def check_machine(cfg) -> None:
    """--check: what would run, and every check on this machine (ixypipe.pipeline.preflight); exit 1 on a failure."""
    from ixypipe.pipeline.plan import plan_from_config, unfed_tx_queues
    from ixypipe.pipeline.preflight import Finding, preflight

    findings = [*preflight(cfg), Finding(f"workers: {cfg.workers.function}", True,   # check_worker_imports passed
                                         "imports and names a callable (checked in a child process)"),
                *([metrics_finding(cfg)] if cfg.stats.metrics_port else [])]
    failed = [f for f in findings if not f.ok]
    plan = plan_from_config(cfg)
    w = cfg.workers
    if wants_json():
        emit_json({"type": "check", "ok": not failed, "pipeline": cfg.name, "path": str(cfg.path),
                   "ports": {p.name: {"driver": p.driver, "address": p.pci or p.interface or p.path,
                                      "rx_queues": p.rx_queues, "tx_queues": p.tx_queues,
                                      "forward_to": p.forward_to} for p in cfg.ports},
                   "workers": {"function": w.function, "processes": w.processes, "distribute": w.distribute},
                   "batch_size": cfg.batch_size, "ring_size": cfg.ring_size,
                   "stages": {s.name: {"role": s.role} for s in plan.stages},      # not placed yet: no cpu
                   "checks": [f.as_dict() for f in findings]})
    else:
        click.echo(f"pipeline {cfg.name}: {cfg.path}")
        for p in cfg.ports:
            where = p.pci or p.interface or p.path or "(assigned)"
            click.echo(f"  port {p.name}: {p.driver} {where}, {p.rx_queues} RX / {p.tx_queues} TX queues, "
                       f"forwards to {p.forward_to or '(the other port)'}")
            describe_replay(p)
        click.echo(f"  workers: {w.processes} x {w.function} ({w.distribute}), batch {cfg.batch_size}, "
                   f"rings {cfg.ring_size}")
        click.echo(f"  stages: {' '.join(s.name for s in plan.stages)}")
        for line in unfed_tx_queues(plan.ports, w.processes):
            click.echo(f"  note: {line}")
        for f in findings:
            click.echo(f"  {'ok' if f.ok else 'FAILED'}  {f.what}: {f.message}")
        click.echo("ok" if not failed else f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed")
    if failed:
        sys.exit(1)
