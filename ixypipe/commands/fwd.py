"""``ixypipe fwd``: ixy-fwd, one process forwarding between two ports, on real 82599s or simulated ones.

Builds the DMA arena, one mempool per port and the two ports (ixgbe by
default; ``--driver virtio`` for virtio-net functions, ``--driver
vhost-user`` for two vhost-user sockets; with ``--sim`` the software 82599
or, ``--driver virtio``, the software virtio-net device), runs
:class:`ixypipe.ops.forwarder.Forwarder` until --duration, --packets or Ctrl-C, drains,
and (with --sim) judges what the software 82599's verifying sinks saw: every
packet generated on one port must arrive at the other port's sink with byte
1 incremented, or be explained by a drop counter (missed at RX, refused by TX).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time

import click

from ixypipe.commands.options import PPS, Count, Seconds, emit_json, wants_json
from ixypipe.layout import DEFAULT_BUF_SIZE
from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import DeviceError, PortSpec
from ixypipe.nic.registers import DEFAULT_RING_ENTRIES, MAX_RING_ENTRIES
from ixypipe.ops.forwarder import Forwarder, mbit_per_s
from ixypipe.sim.traffic import MAX_FLOWS

MIN_POOL = 4096                 # ixy: at least 4096 buffers per RX queue
DRAIN_TIMEOUT = 5.0
DRAIN_SETTLE = 0.05             # counters unchanged this long: the wires are empty
PORT_NAMES = ("p0", "p1")
DRIVERS = ("ixgbe", "virtio", "vhost-user")


@click.command()
@click.argument("addresses", nargs=-1, metavar="[PCI_A PCI_B | SOCKET_A SOCKET_B]")
@click.option("--sim", is_flag=True, help="Forward between two software 82599s (software virtio-net devices with "
              "--driver virtio) with traffic generators and verifying sinks instead of real NICs.")
@click.option("--driver", type=click.Choice(DRIVERS), default="ixgbe", show_default=True,
              help="The ports' driver: 82599s, virtio-net functions (PCI addresses), or vhost-user frontends "
                   "(the backends' socket paths, e.g. DPDK's net_vhost).")
@click.option("--transport", type=click.Choice(["legacy", "modern"]), default="modern", show_default=True,
              help="--sim --driver virtio: the software device's virtio-PCI transport.")
@click.option("--duration", type=Seconds(min=0, min_open=True), metavar="SECONDS",
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--packets", type=Count(min=1), metavar="N",
              help="Stop once N packets were received (both ports together).")
@click.option("--batch", type=click.IntRange(1, MAX_RING_ENTRIES), default=32, show_default=True,
              help="Packets per rx_batch/tx_batch call.")
@click.option("--ring", type=int, default=DEFAULT_RING_ENTRIES, show_default=True,
              help="Descriptors per RX and TX ring (power of two, 8..4096).")
@click.option("--rate", type=PPS, default=0.0, show_default=True,
              help="--sim: each generator's rate in packets per second, k/M suffixes accepted (300k, 1.5M); "
                   "0: as fast as the RX ring takes, no loss.")
@click.option("--packet-size", type=int, default=60, show_default=True, help="--sim: frame size without FCS.")
@click.option("--flows", type=click.IntRange(1, MAX_FLOWS), default=4, show_default=True,
              help="--sim: flows per generator.")
@click.option("--no-touch", is_flag=True, help="Do not increment byte 1 of each packet.")
@click.option("--hugepages", type=click.Choice(["auto", "require", "never"]), default=None,
              help="Arena backing (default: auto with --sim, require on real NICs).")
def command(addresses, sim, driver, transport, duration, packets, batch, ring, rate, packet_size, flows, no_touch,
            hugepages):
    """Forward between two ports in one process, like ixy-fwd.

    \b
    Every packet received on one port gets its second byte incremented and
    is sent out of the other port; what TX has no room for is dropped.
    Once a second, per port:
      [p0] RX: 9876.54 Mbit/s 14.70 Mpps
      [p0] TX: 9876.54 Mbit/s 14.70 Mpps

    \b
    Examples:
      ixypipe fwd --sim --duration 5           two simulated 82599s
      ixypipe fwd --sim --driver virtio        two software virtio-net devices
      ixypipe fwd 0000:03:00.0 0000:03:00.1    two real 82599s (root, hugepages)
      ixypipe fwd --driver vhost-user /tmp/a.sock /tmp/b.sock
                                               two vhost-user backends
    """
    as_json = wants_json()
    say = (lambda text: None) if as_json else click.echo       # --json: objects only, on stdout
    what = "socket paths" if driver == "vhost-user" else "PCI addresses"
    if sim == bool(addresses):
        raise click.UsageError(f"give two {what}, or --sim (and no addresses)")
    if addresses and len(addresses) != 2:
        raise click.UsageError(f"the forwarder needs exactly two {what}, got {len(addresses)}")
    if sim and driver == "vhost-user":
        raise click.UsageError("--sim simulates 82599s or virtio-net functions (--driver virtio), not vhost-user "
                               "backends")
    if ring < 8 or ring > MAX_RING_ENTRIES or ring & (ring - 1):
        raise click.BadParameter(f"must be a power of two from 8 to {MAX_RING_ENTRIES}, got {ring}",
                                 param_hint="'--ring'")
    if sim:
        from ixypipe.sim.payload import Profile, ProfileError
        try:
            Profile().sizes(packet_size)
        except ProfileError as exc:
            raise click.BadParameter(str(exc), param_hint="'--packet-size'") from None
    mode = hugepages or ("auto" if sim else "require")
    pool_size = max(MIN_POOL, 2 * ring)
    from ixypipe.nic import ports

    options = {"device": "virtio", "transport": transport} if sim and driver == "virtio" else {}
    specs = [PortSpec(name, "sim" if sim else driver, addr, rx_ring_size=ring, tx_ring_size=ring,
                      options=dict(options))
             for name, addr in zip(PORT_NAMES, addresses or ("", ""), strict=True)]
    try:
        regions = [*PacketBuffers.arena_regions(2 * pool_size, DEFAULT_BUF_SIZE),
                   *(r for _ in PORT_NAMES for r in Mempool.arena_regions(pool_size)),
                   *(r for spec in specs for r in ports.arena_regions(spec))]
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint="'--ring'") from None
    with contextlib.ExitStack() as stack:
        if not sim and driver != "vhost-user":    # a running pipeline's NIC is not reset under it
            claim_devices(stack, specs)
        try:
            arena = Arena.create(Arena.size_for(regions), hugepages_mode=mode, tag="fwd")
        except Exception as exc:
            raise click.ClickException(f"cannot create the DMA arena: {exc}") from exc
        stack.callback(arena.destroy)
        bufs = PacketBuffers.create(arena, 2 * pool_size, DEFAULT_BUF_SIZE)
        pools = [Mempool.create(arena, bufs, f"fwd.{name}", i * pool_size, pool_size, i)
                 for i, name in enumerate(PORT_NAMES)]
        server = None
        roots = dict.fromkeys(PORT_NAMES, "/sys")
        if sim:
            running = start_sim(stack, arena, specs, packet_size, flows, rate, touch=not no_touch,
                                virtio=transport if driver == "virtio" else None)
            server, roots = running.server, running.sysfs_roots

        home = Homing.to_pools(bufs, pools)       # either port transmits buffers of both pools
        devs = []
        for spec, pool in zip(specs, pools, strict=True):
            try:
                dev = ports.open_port(spec, arena, bufs, [pool], tx_done=home, sysfs_root=roots[spec.name])
            except DeviceError as exc:
                raise click.ClickException(f"port {spec.name} ({spec.address}): {exc}") from exc
            stack.callback(dev.close)
            devs.append(dev)
            say(f"[{spec.name}] {spec.address} up, {dev.link_state().speed_mbit} Mbit/s")
        fwd = Forwarder(devs[0], devs[1], batch=batch, touch=not no_touch)
        if server is not None:
            server.start_traffic()
        result = fwd.run(duration=duration, packets=packets, out=None if as_json else click.echo,
                         figures=(lambda deltas, seconds, elapsed: emit_json(interval_json(fwd, deltas, seconds,
                                                                                           elapsed)))
                         if as_json else None)
        if server is None:
            fwd.drain()
            if as_json:
                emit_json(summary_json(fwd, result, None, []))
            return
        server.pause_traffic()
        drain_sim(fwd, server)
        counters = server.stop()
        problems = judge(fwd, counters, say)
        if as_json:
            emit_json(summary_json(fwd, result, counters, problems))
    if problems:
        sys.exit(1)


def interval_json(fwd: Forwarder, deltas: dict, seconds: float, elapsed: float) -> dict:
    """One ``fwd_interval`` object: per port, the interval's rates and the packets since the start."""
    ports = {}
    for i, name in enumerate(fwd.names):
        d = deltas[name]
        ports[name] = {"rx_pps": d.rx_packets / seconds, "rx_mbit": mbit_per_s(d.rx_packets, d.rx_bytes, seconds),
                       "tx_pps": d.tx_packets / seconds, "tx_mbit": mbit_per_s(d.tx_packets, d.tx_bytes, seconds),
                       "rx_packets": fwd.received[i], "tx_packets": fwd.transmitted[i]}
    return {"type": "fwd_interval", "elapsed": round(elapsed, 3), "ports": ports}


def summary_json(fwd: Forwarder, result, counters: dict | None, problems: list[str]) -> dict:
    """The ``fwd_summary`` object: per port what it received, transmitted and refused at TX (after the drain),
    with --sim the software 82599's counters of that port, and the problems judge() found."""
    ports = {name: {"rx_packets": fwd.received[i], "tx_packets": fwd.transmitted[i], "tx_dropped": fwd.dropped[i],
                    **({"sim": dataclasses.asdict(counters[name])} if counters else {})}
             for i, name in enumerate(fwd.names)}
    return {"type": "fwd_summary", "ok": not problems, "stop_reason": result.stop_reason,
            "seconds": round(result.seconds, 6), "ports": ports, "problems": problems}


def start_sim(stack: contextlib.ExitStack, arena: Arena, specs: list[PortSpec], packet_size: int, flows: int,
              rate_pps: float, touch: bool, virtio: str | None = None):
    """``virtio``: the transport of software virtio-net devices (their queues as large as the ports' rings);
    None: software 82599s."""
    from ixypipe.sim.launch import start_sim as launch
    from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SinkConfig

    device = {"device": "virtio", "transport": virtio, "queue_size": specs[0].rx_ring_size} if virtio else {}
    ports = [SimPortConfig(name, generator=GeneratorConfig(packet_size=packet_size, rate_pps=rate_pps,
                                                           flows=flows),
                           sink=SinkConfig(expect_touch=touch), **device) for name in PORT_NAMES]
    try:
        # The model process starts ignoring SIGINT, so Ctrl-C stops only the forwarder, which then
        # drains the wires and asks the model for its verdict.
        running = launch(ports, specs, [arena.path], ignore_sigint=True)
    except ValueError as exc:
        raise click.ClickException(f"simulated ports: {exc}") from exc
    stack.callback(running.server.stop)
    return running


def claim_devices(stack: contextlib.ExitStack, specs: list[PortSpec]) -> None:
    """Hold both PCI devices while forwarding (ixypipe.pipeline.claims), refused when a pipeline uses one."""
    from types import SimpleNamespace

    from ixypipe.pipeline import claims

    for spec in specs:
        port = SimpleNamespace(name=spec.name, driver=spec.driver, pci=spec.address.lower(), share=False)
        try:
            held = claims.claim(port, "ixypipe fwd", "(the command line)", how_to_share="Stop it first")
        except claims.ClaimError as exc:
            raise click.ClickException(str(exc)) from None
        stack.callback(claims.release, [held])


def drain_sim(fwd: Forwarder, server) -> None:
    """Forward until every frame the model delivered was taken and every posted one went out."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    settled_at = None
    while time.monotonic() < deadline:
        fwd.forward_once(0)
        fwd.forward_once(1)
        c = server.counters()
        done = all(c[name].rx_delivered == fwd.received[i] and c[name].tx_sent == fwd.transmitted[i]
                   for i, name in enumerate(PORT_NAMES))
        if not done:
            settled_at = None
        elif settled_at is None:
            settled_at = time.monotonic()
        elif time.monotonic() - settled_at >= DRAIN_SETTLE:
            break
    for dev in fwd.devs:
        dev.tx_drain(0, max(0.1, deadline - time.monotonic()))


def judge(fwd: Forwarder, counters: dict, out) -> list[str]:
    """Each sink's verdict; a list of problems (empty: every packet accounted for)."""
    problems = []
    for src, dst in ((0, 1), (1, 0)):
        s, d = PORT_NAMES[src], PORT_NAMES[dst]
        cs, cd = counters[s], counters[d]
        at_mac = cs.rx_undersize + cs.rx_oversize        # runts and frames over the max frame size
        explained = cs.rx_missed + at_mac + fwd.dropped[dst]
        unaccounted = cs.generated - cd.sink_received - explained
        mac = f", dropped by {s}'s MAC (runt {cs.rx_undersize}, too_long {cs.rx_oversize})" if at_mac else ""
        out(f"[{d}] sink: received {cd.sink_received} of {cs.generated} generated at {s}; "
            f"missed at {s} RX {cs.rx_missed}{mac}, dropped at {d} TX {fwd.dropped[dst]}; "
            f"lost {cd.sink_lost}, reordered {cd.sink_reordered}, corrupt {cd.sink_corrupt}, "
            f"untouched {cd.sink_untouched}")
        if unaccounted:
            problems.append(f"{s} -> {d}: {unaccounted} packets neither arrived nor were counted as dropped")
        if cd.sink_lost > explained:
            problems.append(f"{s} -> {d}: the sink saw {cd.sink_lost} lost, drop counters explain {explained}")
        for what in ("sink_corrupt", "sink_untouched", "sink_reordered"):
            if getattr(cd, what):
                problems.append(f"{s} -> {d}: {getattr(cd, what)} packets {what.removeprefix('sink_')}")
        if cs.dma_faults:
            problems.append(f"{s}: {cs.dma_faults} DMA faults")
    for p in problems:
        out(f"FAIL: {p}")
    if not problems:
        out("OK: every packet arrived intact or is counted as dropped")
    return problems
