"""``ixypipe sim serve``: software 82599 (or virtio-net) ports for any user-space driver process, in any language.

Starts N simulated ports in a model process and prints, for each, the PCI
address it answers to and the fake sysfs device directory that holds it
(config, resource0, driver/unbind, vendor/device/class).  A driver sees
them without any change when run in a mount namespace that bind-mounts the
served ``bus/pci/devices`` over ``/sys/bus/pci/devices`` (the command for
that is printed).  The model finds the driver's DMA memory by itself
through /proc (sim/foreign.py).  Each port is wired to a generator and/or
a sink (verifying ixypipe's own frames, or counting any frames; either may
also write a pcap file) or cabled to another served port; counters are
printed once a second and at the end (Ctrl-C, SIGTERM, SIGHUP or ``--duration``),
and the served tree is removed on the way out.  It exits 1 when a DMA
fault was reported or the model process died (the cause is printed).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path

import click

from ixypipe.commands.options import PPS, Count, Seconds, emit_json, wants_json
from ixypipe.datafile import kernel_filesystem
from ixypipe.pcapfile import PcapError, check_output
from ixypipe.pipeline.report import rate_text
from ixypipe.proc import handled_stop_signals
from ixypipe.sim.server import GeneratorConfig, PortCounters, SimPortConfig, SimServer, SinkConfig
from ixypipe.sim.sysfs import device_dir
from ixypipe.sim.virtio_model import TRANSPORTS as VIRTIO_TRANSPORTS
from ixypipe.sim.world import SIM_DEVICES

WIRE_KINDS = ("gen", "sink", "count", "pcap", "none")
WIRE_HELP = "gen, sink, count, pcap=FILE, none"
RATE_FIELDS = ("generated", "rx_delivered", "tx_sent", "sink_received")     # --json intervals: these per second


class WiringError(click.BadParameter):
    pass


def parse_wiring(specs: tuple[str, ...], n_ports: int) -> dict[int, dict]:
    """``I-J`` cables ports I and J; ``I:KIND+KIND...`` with kinds ``gen`` (generator), ``sink`` (a
    verifying sink), ``count`` (a counting sink, any traffic), ``pcap=FILE`` (the sink also writes FILE;
    alone, a counting sink), or ``I:none``.  Unnamed ports get gen+sink."""
    wiring: dict[int, dict] = {}

    def port_index(text: str, spec: str) -> int:
        if not text.strip().isdigit() or not 0 <= int(text) < n_ports:
            raise WiringError(f"{spec!r}: port index {text!r} is not 0..{n_ports - 1}", param_hint="'--wire'")
        i = int(text)
        if i in wiring:
            raise WiringError(f"{spec!r}: port {i} is already wired ({wiring[i]})", param_hint="'--wire'")
        return i

    for spec in specs:
        if "-" in spec and ":" not in spec:
            a, b = (port_index(x, spec) for x in spec.split("-", 1))
            if a == b:
                raise WiringError(f"{spec!r}: a cable needs two different ports", param_hint="'--wire'")
            wiring[a] = {"cable": b}
            wiring[b] = {"cable": a}
            continue
        if ":" not in spec:
            raise WiringError(f"{spec!r}: expected I-J (cable) or I:KIND[+KIND...] with kinds {WIRE_HELP}",
                              param_hint="'--wire'")
        index, kinds = spec.split(":", 1)
        i = port_index(index, spec)
        entry: dict = {}
        for part in kinds.split("+"):
            kind, _, value = part.partition("=")
            if kind not in WIRE_KINDS or (kind == "pcap") != bool(value):
                raise WiringError(f"{spec!r}: {part!r} is not one of {WIRE_HELP}", param_hint="'--wire'")
            if kind == "pcap":
                try:
                    check_output(value)
                except PcapError as exc:
                    raise WiringError(f"{spec!r}: {exc}", param_hint="'--wire'") from None
            entry[kind] = value or True
        if "none" in entry and len(entry) > 1:
            raise WiringError(f"{spec!r}: 'none' cannot be combined", param_hint="'--wire'")
        if "sink" in entry and "count" in entry:
            raise WiringError(f"{spec!r}: a port has one sink, 'sink' (verify) or 'count'", param_hint="'--wire'")
        wiring[i] = entry
    for i in range(n_ports):
        wiring.setdefault(i, {"gen": True, "sink": True})
    return wiring


def served_root(root: Path) -> None:
    """--root: an empty directory (made if missing) on a real filesystem, not a file, not in /proc or /sys."""
    fs = kernel_filesystem(root)
    if fs is not None:
        raise click.BadParameter(f"{str(root)!r} is on {fs} (a kernel interface); the served tree needs a "
                                 "directory on a real filesystem", param_hint="'--root'")
    try:
        root.mkdir(parents=True, exist_ok=True)
        if any(root.iterdir()):
            raise click.BadParameter(f"{root} is not empty", param_hint="'--root'")
    except FileExistsError:
        raise click.BadParameter(f"{str(root)!r} exists and is not a directory", param_hint="'--root'") from None
    except OSError as exc:
        raise click.BadParameter(f"cannot use {str(root)!r}: {exc.strerror or exc}", param_hint="'--root'") from None


def build_ports(n_ports: int, wiring: dict[int, dict], size: int, rate: float, flows: int, count: int,
                expect_touch: bool, device: str = "82599", transport: str = "modern") -> list[SimPortConfig]:
    ports = []
    for i in range(n_ports):
        w = wiring[i]
        gen = GeneratorConfig(packet_size=size, rate_pps=rate, flows=flows, count=count) if w.get("gen") else None
        sink = None
        if w.get("sink"):
            sink = SinkConfig("verify", expect_touch=expect_touch, pcap=w.get("pcap") or None)
        elif w.get("count") or w.get("pcap"):
            sink = SinkConfig("count", pcap=w.get("pcap") or None)
        cable = f"p{w['cable']}" if "cable" in w else None
        ports.append(SimPortConfig(f"p{i}", generator=gen, sink=sink, cable_to=cable, device=device,
                                   transport=transport))
    return ports


def describe_wiring(port: SimPortConfig) -> str:
    if port.cable_to:
        return f"cable to {port.cable_to}"
    parts = []
    if port.generator:
        g = port.generator
        rate = rate_text(g.rate_pps) if g.rate_pps else "as fast as RX takes"
        shape = f", {g.shape.describe()}" if g.shape is not None and g.shape.given else ""
        what = f"template {g.template}" if g.template else f"{g.packet_size} B"
        parts.append(f"generator -> RX ({what}, {g.flows} {'flow' if g.flows == 1 else 'flows'}{shape}, {rate}"
                     f"{f', {g.count} packets' if g.count else ''})")
    if port.sink:
        kind = "verifying sink" if port.sink.mode == "verify" else "counting sink"
        parts.append(f"TX -> {kind}" + (f" + pcap {port.sink.pcap}" if port.sink.pcap else ""))
    return ", ".join(parts) or "unwired (TX goes nowhere, nothing arrives)"


def counter_line(label: str, c: PortCounters, prev: PortCounters | None, seconds: float,
                 sink_mode: str = "verify") -> str:
    def rate(field: str) -> str:
        if prev is None or seconds <= 0:
            return f"{getattr(c, field)}"
        return rate_text((getattr(c, field) - getattr(prev, field)) / seconds)
    if sink_mode == "count":
        sizes = " ".join(f"{k}: {v}" for k, v in c.sizes().items() if v) or "none"
        judged = f"{c.sink_bytes} bytes; sizes with FCS {sizes}"
    else:
        judged = (f"lost {c.sink_lost}, reordered {c.sink_reordered}, corrupt {c.sink_corrupt}, "
                  f"untouched {c.sink_untouched}")
    at_mac = "".join(f", {name} {n}" for name, n in (("runt", c.rx_undersize), ("too_long", c.rx_oversize)) if n)
    return (f"{label}: gen {rate('generated')}  rx {rate('rx_delivered')} (missed {c.rx_missed}{at_mac})  "
            f"tx {rate('tx_sent')}  sink {rate('sink_received')} ({judged})  dma faults {c.dma_faults}")


def counters_json(c: PortCounters, prev: PortCounters | None = None, seconds: float = 0.0) -> dict:
    """One port's counters (cumulative) for --json, with the interval's rates when ``prev`` is given."""
    doc = dataclasses.asdict(c)
    if prev is not None and seconds > 0:
        doc.update({f"{field}_pps": (getattr(c, field) - getattr(prev, field)) / seconds
                    for field in RATE_FIELDS})
    return doc


def mount_command(root: Path, driver: str) -> str:
    """The shell command that runs ``driver`` with the served tree over /sys/bus/pci/devices."""
    return (f"unshare -m sh -c 'mount --bind {root}/bus/pci/devices /sys/bus/pci/devices && "
            f"exec {driver}'")


@click.group(name="sim")
def sim() -> None:
    """The software 82599 and virtio-net devices."""


@sim.command(name="serve")
@click.option("--ports", "n_ports", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Simulated ports to serve.")
@click.option("--wire", "wires", multiple=True, metavar="SPEC",
              help="I-J: cable ports I and J; I:KIND[+KIND] with gen (generator), sink (verifying sink: "
                   "ixypipe's frames), count (counting sink: any frames, sizes), pcap=FILE (the sink also "
                   "writes FILE; alone a counting sink), or I:none.  Repeatable; unnamed ports get gen+sink.")
@click.option("--size", type=click.IntRange(60, 1514), default=60, show_default=True,
              help="Generated frame size in bytes (without FCS).")
@click.option("--rate", type=PPS, default=0.0, show_default=True,
              help="Packets per second per generator, k/M suffixes accepted (300k, 1.5M); 0 = as fast as the RX "
                   "ring takes them (no loss).")
@click.option("--flows", type=click.IntRange(1, 65535), default=4, show_default=True)
@click.option("--count", type=Count(min=0), default=0, show_default=True,
              help="Packets per generator (0 = unlimited).")
@click.option("--expect-touch", is_flag=True,
              help="Verifying sinks expect byte 1 of every frame incremented by one (as ixy-fwd does).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory for the served tree (default: a new /dev/shm/ixypipe-sim-* directory).")
@click.option("--duration", type=Seconds(min=0), default=None, help="Stop after this many seconds.")
@click.option("--interval", type=Seconds(min=0.1), default=1.0, show_default=True,
              help="Seconds between counter lines.")
@click.option("--device", type=click.Choice(SIM_DEVICES), default="82599", show_default=True,
              help="The device every port is: an Intel 82599, or a virtio-net function (vendor 0x1af4).")
@click.option("--transport", type=click.Choice(VIRTIO_TRANSPORTS), default="modern", show_default=True,
              help="virtio-net: the legacy I/O BAR0 (device 0x1000) or the modern capabilities in BAR4 (0x1041).")
def serve(n_ports: int, wires: tuple[str, ...], size: int, rate: float, flows: int, count: int,
          expect_touch: bool, root: Path | None, duration: float | None, interval: float, device: str,
          transport: str) -> None:
    """Serve N software 82599 (or virtio-net) ports to any user-space driver process until Ctrl-C.

    \b
    Run an unmodified driver against them (as root, in another shell):
      unshare -m sh -c 'mount --bind ROOT/bus/pci/devices /sys/bus/pci/devices && exec DRIVER ADDR...'
    The driver allocates its own rings and buffers in hugepages; the model
    finds them through /proc/<driver pid>.  A DMA address outside them is a
    reported fault, never a write.
    """
    wiring = parse_wiring(wires, n_ports)
    ports = build_ports(n_ports, wiring, size, rate, flows, count, expect_touch, device, transport)
    if root is not None:
        served_root(root)
    modes = {p.name: p.sink.mode if p.sink else "verify" for p in ports}
    server = SimServer(ports, None, root=root)
    stop: list[int] = []
    died = ""
    old = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in handled_stop_signals()}
    as_json = wants_json()
    try:
        server.start()
        served = server.sysfs_root
        addrs = " ".join(server.addresses[p.name] for p in ports)
        if as_json:
            emit_json({"type": "sim_serve", "sysfs_root": str(served),
                       "ports": {p.name: {"address": server.addresses[p.name],
                                          "sysfs": str(device_dir(served, server.addresses[p.name])),
                                          "wiring": describe_wiring(p)} for p in ports},
                       "driver_command": mount_command(served, '<your driver> ' + addrs)})
        for p in [] if as_json else ports:
            addr = server.addresses[p.name]
            click.echo(f"port {p.name}  {addr}  sysfs {device_dir(served, addr)}  {describe_wiring(p)}")
        if not as_json:
            click.echo(f"driver: {mount_command(served, '<your driver> ' + addrs)}")
        click.echo("Ctrl-C stops; counters every "
                   f"{interval:g} s (gen/rx/tx/sink rates, cumulative loss and faults)", err=True)
        server.start_traffic()
        start = last = time.monotonic()
        prev = server.counters()
        while not stop:
            time.sleep(min(0.1, interval))
            if not server.is_alive():
                died = f"the model process (pid {server.pid}) died: {server.death_cause()}"
                break
            now = time.monotonic()
            if now - last >= interval:
                cur = server.counters()
                if as_json:
                    emit_json({"type": "sim_interval", "elapsed": round(now - start, 3),
                               "ports": {name: counters_json(cur[name], prev[name], now - last)
                                         for name in server.names}})
                for name in [] if as_json else server.names:
                    click.echo(counter_line(name, cur[name], prev[name], now - last, modes[name]))
                prev, last = cur, now
            if duration is not None and now - start >= duration:
                break
    finally:
        final = server.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
    faults = any(c.dma_faults for c in final.values())
    if as_json:
        emit_json({"type": "sim_summary", "ok": not died and not faults, "error": died or None,
                   "ports": {name: counters_json(c) for name, c in final.items()}})
    for name, c in [] if as_json else final.items():
        click.echo(counter_line(f"final {name}", c, None, 0, modes[name]))
    if died:
        click.echo(f"error: {died}; the ports are gone", err=True)
        raise SystemExit(1)
    if faults:
        raise SystemExit(1)


command = sim
