"""``ixypipe gen``: the traffic generator alone onto one port (software 82599, AF_PACKET or a pcap file)."""

from __future__ import annotations

import re
import signal
import sys

import click

from ixypipe.commands.options import PPS, Count, Seconds, emit_json, wants_json
from ixypipe.sim.payload import PROFILES
from ixypipe.sim.shape import SHAPE_PROTOCOLS

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
@click.option("--profile", type=click.Choice(PROFILES), default="udp", show_default=True,
              help="udp: IPv4/UDP; imix: 7:4:1 of 60/590/1514 bytes (one size per flow, flows in twelves); "
                   "vlan: IPv4/UDP with an 802.1Q tag; ipv6: IPv6/UDP; tcp-syn: IPv4 TCP SYN flood; "
                   "runt: frames under 60 bytes (no sequence record) for negative tests.")
@click.option("--size", type=int, default=None,
              help="Frame size without FCS: the profile's smallest (udp 60, vlan 64, tcp-syn 72, ipv6 80) up to "
                   "9018 (jumbo); runt 14..59 (default 42).  Default: the profile's smallest.")
@click.option("--vlan", type=int, default=None, metavar="VID",
              help="802.1Q tag with this VLAN id (1..4094) on every frame (the vlan profile's default: 100).")
@click.option("--rate", type=PPS, default=0.0, show_default=True,
              help="Packets per second, k/M suffixes accepted (300k, 1.5M); 0 = as fast as the port takes them.")
@click.option("--flows", type=int, default=None,
              help="Flows (source port and address differ per flow).  Default 1, imix 12.")
@click.option("--count", type=Count(min=0), default=0, show_default=True,
              help="Packets to send; 0 = until --duration or Ctrl-C.")
@click.option("--duration", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds.")
@click.option("--batch", type=click.IntRange(1, 512), default=64, show_default=True, help="Frames per tx_batch.")
@click.option("--dst-mac", default="ff:ff:ff:ff:ff:ff", show_default=True, callback=_mac,
              help="Destination MAC address of every frame.")
@click.option("--hugepages", type=click.Choice(["auto", "require", "never"]), default="auto", show_default=True,
              help="Arena backing.")
@click.option("--src", metavar="NETS", help="Source networks, comma-separated (10.0.0.0/8,2001:db8::/64): each flow "
                                           "draws a host of one.")
@click.option("--dst", metavar="NETS", help="Destination networks; they decide each flow's IP version.")
@click.option("--sport", metavar="PORTS", help="Source ports: 53, 1024-65535 or a list (53,8000-8080).")
@click.option("--dport", metavar="PORTS", help="Destination ports, as --sport (not for ICMP flows).")
@click.option("--protocol", type=click.Choice(SHAPE_PROTOCOLS), help="Every flow's protocol (tcp: SYN, icmp: echo).")
@click.option("--mix", metavar="WEIGHTS", help="Protocols by share of the flows: udp=0.7,tcp=0.2,icmp=0.1.")
@click.option("--seed", type=Count(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seeds each flow's draw of --src/--dst/--sport/--dport/--mix.")
@click.option("--template", type=click.Path(dir_okay=False), metavar="FILE.pcap",
              help="Replay this capture's frames (flow f = frame f % N; --src/--dst/ports varied per flow, the "
                   "sink's 18-byte record appended).  Default --flows: its frame count.")
def command(sim, interface, pcap_path, profile, size, vlan, rate, flows, count, duration, batch, dst_mac,
            hugepages, src, dst, sport, dport, protocol, mix, seed, template) -> None:
    """Send generated traffic (IPv4/UDP or another --profile) out of one port.

    \b
    Every frame carries a flow id, a per-flow sequence number and a
    checksum, so a verifying sink (the software 82599's, or 'ixypipe run'
    with a sim port) detects loss, reordering and corruption. Finite runs
    (--count) show a progress bar on a terminal.
    Examples:
      ixypipe gen --sim --count 1000000 --rate 500k
      ixypipe gen --interface veth0 --size 1514 --duration 10
      ixypipe gen --pcap out.pcap --count 1000 --flows 16
      ixypipe gen --pcap imix.pcap --count 1200 --profile imix
      ixypipe gen --sim --profile vlan --vlan 42 --size 128 --count 1000
      ixypipe gen --sim --count 10000 --flows 64 --src 10.0.0.0/8,192.0.2.0/24 \\
          --dst 192.168.1.0/24 --dport 53,80,443 --mix udp=0.7,tcp=0.2,icmp=0.1
      ixypipe gen --pcap out.pcap --template dns.pcap --flows 100 --src 198.51.100.0/24
    """
    from ixypipe.memory.arena import ArenaError
    from ixypipe.ops.generate import GenError, GenSession
    from ixypipe.pipeline.report import rate_text

    as_json = wants_json()
    chosen = [(t, w) for t, w, on in (("sim", "", sim), ("af_packet", interface, interface),
                                      ("pcap", pcap_path, pcap_path)) if on]
    if len(chosen) != 1:
        raise click.UsageError("choose exactly one port: --sim, --interface IFACE or --pcap FILE")
    target, where = chosen[0]
    if pcap_path:
        from ixypipe.pcapfile import PcapError, check_output
        try:
            check_output(pcap_path)
        except PcapError as exc:
            raise click.BadParameter(str(exc), param_hint="'--pcap'") from None
    shape, frames = _shape(src, dst, sport, dport, protocol, mix, seed, template, profile, size, vlan)
    prof, size, flows = _profile(profile, size, vlan, flows, shape, frames)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)   # a simulator process inherits "ignore Ctrl-C"
    try:
        session = GenSession(target, where, size, flows, hugepages, dst_mac, prof, shape, template)
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
        address = where or session.dev.spec.address
        what = address if where else f"software 82599 {address}"
        if frames:
            kinds = f"{len(frames)} replayed {'frame' if len(frames) == 1 else 'frames'} of {template}"
        else:
            kinds = (f"{'IMIX' if profile == 'imix' else f'{size}-byte'} {prof.describe()} frames"
                     + (f" ({shape.describe()})" if shape.given else ""))
        if not as_json:
            click.echo(f"generating {kinds}, {flows} {'flow' if flows == 1 else 'flows'}, "
                       f"{rate_text(rate) if rate else 'as fast as it goes'} onto {target} {what}")
        name = target if target == "sim" else where
        if count and sys.stdout.isatty() and not as_json:
            with click.progressbar(length=count, label="sending", show_pos=True) as bar:
                result = session.run(gen, batch, duration, progress=bar.update, stop=lambda: bool(stopped))
        else:                           # the figures of every second, with a rate it cannot keep
            result = session.run(gen, batch, duration, stop=lambda: bool(stopped),
                                 tick=None if as_json else lambda t: click.echo(t.line(name)))
    finally:
        signal.signal(signal.SIGINT, old)
        session.close()
    if as_json:
        emit_json({"type": "gen", "target": target, "port": address, "profile": profile, "size": size,
                   "flows": flows, "rate_pps": rate, **result.as_json()})
    else:
        for line in result.summary():
            click.echo(line)
    s = result.sink
    if s and prof.runt:                 # runts carry no record: the verifying sink can only call them corrupt
        if s["sink_received"] != result.sent or s["sink_corrupt"] != result.sent:
            raise click.ClickException("the sink did not receive every runt")
        if not as_json:
            click.echo(f"(runts carry no sequence record: the sink counts all {result.sent} as corrupt, as it should)")
    elif s and (s["sink_received"] != result.sent or s["sink_lost"] or s["sink_corrupt"] or s["sink_reordered"]):
        raise click.ClickException("the sink did not receive every frame intact and in order")


def _shape(src, dst, sport, dport, protocol, mix, seed, template, profile, size, vlan):
    """The FlowShape and the template's frames (None), each bad value reported against its flag (exit 2)."""
    from ixypipe.sim.payload import Profile, ProfileError
    from ixypipe.sim.replay import ReplayError, template_frames
    from ixypipe.sim.shape import FlowShape, ShapeError
    from ixypipe.sim.traffic import MAX_FLOWS

    try:
        shape = FlowShape.parse(src, dst, sport, dport, protocol, mix, seed)
        shape.check_profile(Profile(profile, vlan))
    except ShapeError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'--{exc.field}'") from None
    except ProfileError:
        shape = FlowShape()         # _profile reports it against its flag
    if template is None:
        return shape, None
    clash = [flag for flag, given in (("--size", size is not None), ("--profile", profile != "udp"),
                                      ("--vlan", vlan is not None), ("--protocol", protocol), ("--mix", mix)) if given]
    if clash:
        raise click.UsageError(f"{clash[0]} does not go with --template: a template's frames keep their own sizes, "
                               "tags and protocols")
    try:
        return shape, template_frames(template, MAX_FLOWS)
    except ReplayError as exc:
        raise click.BadParameter(str(exc), param_hint="'--template'") from None


def _profile(name: str, size: int | None, vlan: int | None, flows: int | None, shape=None, frames=None):
    """The Profile, frame size and flow count, each bad value reported against its flag (exit 2)."""
    from ixypipe.sim.payload import Profile, ProfileError

    try:
        prof = Profile(name, vlan)
    except ProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--vlan'") from None
    least = shape.min_size(prof) if shape is not None and shape.given and not prof.runt else None
    size = max(prof.default_size, least or 0) if size is None else size
    flows = (len(frames) if frames else prof.default_flows or 1) if flows is None else flows
    if frames:
        return prof, size, flows
    try:
        prof.sizes(size, min_size=least)
    except ProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--size'") from None
    try:
        prof.check_flows(flows)
    except ProfileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--flows'") from None
    return prof, size, flows
