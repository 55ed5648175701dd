"""``ixypipe gen``: the traffic generator alone onto one port (software 82599, AF_PACKET or a pcap file)."""

from __future__ import annotations

import re
import signal

import click

from ixypipe.commands.options import PPS

# the generator's own checks name its fields; the user typed these options
OPTION_OF_FIELD = {"packet_size": "--size", "flows": "--flows", "count": "--count", "rate": "--rate"}


def _as_usage_error(exc: ValueError) -> click.ClickException:
    """'generator packet_size must be ...' -> Invalid value for '--size': must be ... (exit 2)."""
    m = re.match(r"generator (\w+) (.*)", str(exc), re.S)
    if m and m.group(1) in OPTION_OF_FIELD:
        return click.BadParameter(m.group(2), param_hint=f"'{OPTION_OF_FIELD[m.group(1)]}'")
    return click.ClickException(str(exc))


def _mac(ctx, param, value: str) -> bytes:
    try:
        mac = bytes.fromhex(value.replace(":", "").replace("-", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise click.BadParameter(f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    return mac


@click.command()
@click.option("--sim", is_flag=True, help="Onto a software 82599 whose wire ends in a verifying sink.")
@click.option("--interface", metavar="IFACE", help="Onto a kernel interface through AF_PACKET (root).")
@click.option("--pcap", "pcap_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Into a pcap file (nanosecond timestamps, as the pcap port writes).")
@click.option("--size", type=int, default=60, show_default=True, help="Frame size without FCS (60..1514).")
@click.option("--rate", type=PPS, default=0.0, show_default=True,
              help="Packets per second, k/M suffixes accepted (300k, 1.5M); 0 = as fast as the port takes them.")
@click.option("--flows", type=int, default=1, show_default=True,
              help="Flows (UDP source port and IPv4 source address differ per flow).")
@click.option("--count", type=click.IntRange(min=0), default=0, show_default=True,
              help="Packets to send; 0 = until --duration or Ctrl-C.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds.")
@click.option("--batch", type=click.IntRange(1, 512), default=64, show_default=True, help="Frames per tx_batch.")
@click.option("--dst-mac", default="ff:ff:ff:ff:ff:ff", show_default=True, callback=_mac,
              help="Destination MAC address of every frame.")
@click.option("--hugepages", type=click.Choice(["auto", "require", "never"]), default="auto", show_default=True,
              help="Arena backing.")
def command(sim, interface, pcap_path, size, rate, flows, count, duration, batch, dst_mac, hugepages) -> None:
    """Send generated Ethernet/IPv4/UDP traffic out of one port.

    \b
    Every frame carries a flow id, a per-flow sequence number and a
    checksum, so a verifying sink (the software 82599's, or 'ixypipe run'
    with a sim port) detects loss, reordering and corruption. Finite runs
    (--count) show a progress bar on a terminal.
    Examples:
      ixypipe gen --sim --count 1000000 --rate 500k
      ixypipe gen --interface veth0 --size 1514 --duration 10
      ixypipe gen --pcap out.pcap --count 1000 --flows 16
    """
    from ixypipe.memory.arena import ArenaError
    from ixypipe.ops.generate import GenError, GenSession
    from ixypipe.pipeline.report import rate_text

    chosen = [(t, w) for t, w, on in (("sim", "", sim), ("af_packet", interface, interface),
                                      ("pcap", pcap_path, pcap_path)) if on]
    if len(chosen) != 1:
        raise click.UsageError("choose exactly one port: --sim, --interface IFACE or --pcap FILE")
    target, where = chosen[0]
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # a simulator process inherits "ignore Ctrl-C"
    try:
        session = GenSession(target, where, size, flows, hugepages, dst_mac)
    except (GenError, ArenaError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:
        raise _as_usage_error(exc) from exc
    finally:
        signal.signal(signal.SIGINT, old)
    stopped: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: stopped.append(signum))
    try:
        gen = session.generator(count, rate / 1e6)
        what = f"{where or 'software 82599 ' + session.dev.spec.address}"
        click.echo(f"generating {size}-byte frames, {flows} flows, "
                   f"{rate_text(rate) if rate else 'as fast as it goes'} onto {target} {what}")
        if count:
            with click.progressbar(length=count, label="sending", show_pos=True) as bar:
                result = session.run(gen, batch, duration, progress=bar.update, stop=lambda: bool(stopped))
        else:
            result = session.run(gen, batch, duration, stop=lambda: bool(stopped))
    finally:
        signal.signal(signal.SIGINT, old)
        session.close()
    for line in result.summary():
        click.echo(line)
    s = result.sink
    if s and (s["sink_received"] != result.sent or s["sink_lost"] or s["sink_corrupt"] or s["sink_reordered"]):
        raise click.ClickException("the sink did not receive every frame intact and in order")
