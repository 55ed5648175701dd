"""``ixypipe capture PIPELINE --port P -w FILE``: copy a running pipeline's frames of one port into a pcap file."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from ixypipe.commands.options import CommandError, Count, Seconds, emit_json, wants_json, wants_quiet

CAPTURE_NICE = 10          # the capture gives way to the data path on a shared CPU: it drops copies, not packets


def _target(pipeline: str | None):
    """The running pipeline PIPELINE names: a supervisor pid, a pipeline name, or the pipeline file it runs."""
    from ixypipe.pipeline.running import NoPipelineError, choose_pipeline

    which = pipeline
    if pipeline is not None and not pipeline.isdigit() and (pipeline.endswith(".toml") or Path(pipeline).is_file()):
        from ixypipe.pipeline.config import ConfigError, load_pipeline
        try:
            which = load_pipeline(pipeline).name
        except ConfigError as exc:
            raise CommandError(str(exc), 2) from exc
    try:
        return choose_pipeline(which)
    except NoPipelineError as exc:
        raise CommandError(str(exc)) from exc


@click.command()
@click.argument("pipeline", required=False, metavar="[PID|NAME|FILE]")
@click.option("-p", "--port", required=True, metavar="PORT", help="The port whose frames to copy (its name).")
@click.option("-w", "--write", "path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="The pcap file to write (created or replaced; nanosecond timestamps).")
@click.option("-c", "--count", type=Count(min=1), metavar="N", help="Stop after N frames (default: Ctrl-C).")
@click.option("--direction", type=click.Choice(["rx", "tx", "both"]), default="rx", show_default=True,
              help="rx: what the port receives (before the workers); tx: what the pipeline sends out of it "
                   "(after them); both, merged by time.")
@click.option("--timeout", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds, however many frames came.")
def command(pipeline: str | None, port: str, path: str, count: int | None, direction: str,
            timeout: float | None) -> None:
    """Copy frames of a running pipeline's port into a pcap file, without stopping it.

    \b
    Like dpdk-pdump: run it beside 'ixypipe run', which goes on as it was.
      ixypipe run pipelines/fwd.toml &
      ixypipe capture fwd --port p0 --count 100 -w p0.pcap
      ixypipe capture pipelines/fwd.toml -p p1 --direction tx --timeout 5 -w p1-out.pcap
      tshark -r p0.pcap
    PIPELINE is the supervisor's pid, the pipeline's name or its file (may
    be left out when one pipeline runs).  While the capture runs, the RX
    (or TX) stages of the port copy every frame they take into a mirror
    ring in shared memory: the bytes, the length and the time, never the
    buffer, so the pipeline's counts stay exact.  A ring the capture cannot
    empty fast enough drops copies, counted as "dropped" in the report; the
    data path never waits.  Without a capture a stage pays one load of a
    flag per batch.  Stops after --count frames, --timeout seconds, Ctrl-C
    or SIGTERM, or when the pipeline ends; one capture per port and
    direction at a time.  It runs at nice 10: on a CPU it shares with the
    pipeline it gives way.  --json prints one "capture" object at the end.
    """
    from ixypipe.ops.capture import Capture, CaptureError
    from ixypipe.pcapfile import PcapError, PcapWriter, check_output

    try:
        check_output(path)
    except PcapError as exc:
        raise CommandError(str(exc), 2) from exc
    target = _target(pipeline)
    try:
        capture = Capture(target, port, direction)
    except CaptureError as exc:
        raise CommandError(str(exc), exc.exit_code) from exc
    quiet = wants_json() or wants_quiet()
    os.nice(CAPTURE_NICE)
    stopped: list[int] = []

    def on_signal(signum, frame) -> None:
        stopped.append(signum)

    saved = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with capture:
            try:
                writer = PcapWriter(path, live=True)         # each batch reaches the file at once
            except PcapError as exc:
                raise CommandError(str(exc), 2) from exc
            if not quiet:
                what = f"{count} frames" if count else "frames"
                click.echo(f"capturing {what} of port {port} ({direction}: {', '.join(capture.stage_names)}) of "
                           f"pipeline {target.name} (pid {target.pid}) into {path}; Ctrl-C stops", err=True)
            try:
                result = capture.run(writer, count, timeout, stop=lambda: bool(stopped),
                                     progress=None if quiet else _progress)
            finally:
                writer.close()
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    if wants_json():
        emit_json(result.to_json())
        return
    if sys.stderr.isatty() and not quiet:
        click.echo("", err=True)
    click.echo(f"{result.captured:,} frames ({result.bytes:,} bytes) of port {port} ({direction}) written to "
               f"{path} in {result.seconds:.1f} s; {result.dropped:,} copies dropped (mirror ring full); "
               f"stopped: {result.stop_reason}")


def _progress(result) -> None:
    line = (f"{result.captured:,} frames captured, {result.dropped:,} copies dropped (mirror ring full), "
            f"{result.seconds:.0f} s")
    if sys.stderr.isatty():
        click.echo(f"\r{line}", err=True, nl=False)
    else:
        click.echo(line, err=True)
