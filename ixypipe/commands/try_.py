"""``ixypipe try WORKER FILE.pcap``: run a worker on a capture's frames in this process and show each verdict.

The worker is loaded as the pipeline loads it (``file.py:function``,
``package.module:function`` or a built-in; setup(ctx) and teardown(ctx)
run, ``--options k=v`` fill ctx.options as [workers.options] would) and
called on batches of the capture's frames (pipeline/offline.py).  Per
packet: its number, length, a one-line summary, the verdict (a port name,
DROP, no_route, worker_error) and the bytes the function rewrote, named by
header field; then the counters and one summary line with the time spent
in the function.  Nothing is started, no hugepages or root are needed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from ixypipe.commands.options import CommandError, emit_json, wants_json
from ixypipe.pcapfile import PcapError, read_pcap, require_ethernet
from ixypipe.pipeline import keyedstate
from ixypipe.pipeline.offline import HookError, OfflineRun, run_frames
from ixypipe.workers.api import TRY_PORTS
from ixypipe.workers.loader import WorkerLoadError, load

SUMMARY_WIDTH = 48           # the packet summary column


def option_value(text: str):
    """A --options value as TOML reads it (5, 1.5, true, "x", [1, 2]); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_options(items: tuple[str, ...]) -> dict:
    found = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise CommandError(f"--options {item!r}: give key=value (as a line of [workers.options])")
        found[key.strip()] = option_value(value.strip())
    return found


def render(run: OfflineRun, ports: list[str]) -> list[str]:
    """The lines ``ixypipe try`` prints after its first one."""
    lines = []
    for p in run.packets:
        rewrites = p.rewrites()
        lines.append(f"{p.number:>4} {p.length:>5} B  {p.summary:<{SUMMARY_WIDTH}} {p.verdict}"
                     + (f"  {rewrites}" if rewrites else ""))
    lines += [f"error: {e}" for e in run.errors]
    counters = ", ".join(f"{k}={v}" for k, v in run.counters.items())
    lines.append(f"counters: {counters or 'none'}")
    lines += keyedstate.text_lines(run.keyed)
    tally = run.tally()
    order = [*ports, "DROP", "no_route", "worker_error"]
    parts = [f"{tally[v]} {'to ' + v if v in ports else v}" for v in order if v in tally]
    lines.append(f"{len(run.packets)} packets: {', '.join(parts) or 'none'}; "
                 f"{run.ms:.2f} ms in the worker function")
    return lines


@click.command("try")
@click.argument("worker")
@click.argument("pcap", type=click.Path(dir_okay=False))
@click.option("--ports", default=",".join(TRY_PORTS), show_default=True, metavar="A,B,...",
              help="Port names, in the order the worker's verdicts index them.")
@click.option("--port-in", default=None, metavar="NAME",
              help="The port the frames come in on (default: the first); every verdict starts at the next one.")
@click.option("--options", "options", multiple=True, metavar="KEY=VALUE",
              help="ctx.options for setup(ctx), as [workers.options] (repeatable; values read as TOML).")
@click.option("--per-packet", is_flag=True, help="The function is a handle(pkt[, f]) -> bool (workers.per_packet).")
@click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Frames per call of the function.")
def command(worker: str, pcap: str, ports: str, port_in: str | None, options: tuple[str, ...],
            per_packet: bool, batch_size: int) -> None:
    """Run WORKER on the frames of PCAP in this process and print each packet's verdict and rewrites.

    \b
    WORKER is what [workers] function takes: file.py:function, module:function or a built-in.
      ixypipe try dns_filter.py:dns_filter dns.pcap
      ixypipe try router.py:route in.pcap --ports lan,wan --port-in wan --options gateway=\"10.0.0.1\"
    """
    names = [p.strip() for p in ports.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise CommandError(f"--ports {ports!r}: give distinct, non-empty names separated by commas")
    if port_in is not None and port_in not in names:
        raise CommandError(f"--port-in {port_in!r} is not one of the ports ({', '.join(names)})")
    in_port = names.index(port_in) if port_in is not None else 0
    opts = parse_options(options)
    try:
        capture = read_pcap(pcap)
        require_ethernet(pcap, capture.linktype)
    except (PcapError, OSError) as exc:
        raise CommandError(str(exc)) from None
    try:
        loaded = load(worker, Path.cwd(), per_packet=per_packet)
    except WorkerLoadError as exc:
        raise CommandError(f"worker {worker}: {exc}" + (f" (at {exc.where})" if exc.where else "")) from None
    try:
        run = run_frames(loaded, capture.packets(), names, in_port, None, opts, str(Path.cwd()), batch_size)
    except HookError as exc:
        raise CommandError(f"worker {worker}: {exc}") from None
    if wants_json():
        emit_json({
            "type": "try", "worker": worker, "pcap": pcap, "port_names": names, "port_in": names[in_port],
            "packets": [{"number": p.number, "length": p.length, "summary": p.summary, "verdict": p.verdict,
                         "new_length": p.new_length,
                         "rewrote": [{"first": a, "last": b, "fields": f} for a, b, f in p.changes]}
                        for p in run.packets],
            "errors": run.errors, "counters": run.counters, "keyed_counters": run.keyed, "verdicts": run.tally(),
            "ms": round(run.ms, 3)})
        return
    default_out = names[(in_port + 1) % len(names)]
    click.echo(f"{worker} on {len(run.packets)} frames of {pcap}, in on {names[in_port]!r}, "
               f"verdicts start at {default_out!r}")
    for line in render(run, names):
        click.echo(line)
