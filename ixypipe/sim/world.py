"""The simulated world: software 82599 and virtio-net ports, their fake sysfs trees and the wires between them.

A :class:`SimWorld` owns one :class:`~ixypipe.sim.model.SimPort` (or
:class:`~ixypipe.sim.virtio_model.SimVirtioPort`, ``device = "virtio"``) per
configured port (its BAR0 is the ``resource0`` file of the port's fake
sysfs device), the DMA space of the registered arenas, and the wires: a
generator feeding a port's RX side, a sink taking its TX side (verifying
ixypipe's own frames, or counting any frames), or a cable to another port
(both directions).  ``step()`` makes progress on
everything pending and returns the work done, so tests and benchmarks can
drive it deterministically in-process; the simulator process
(``ixypipe.sim.server``) calls the same ``step()`` in a loop.

Generators send only between ``start_traffic()`` and ``pause_traffic()``
and only into a port whose RX is enabled (RXCTRL.RXEN and a live queue).
At rate 0 a generator sends exactly what the RX rings have room for (no
loss); at a fixed rate it sends on time and a full ring counts as missed.
Counters are published after every step into a ``counters`` array with one
row per port (``SIM_COUNTERS_DTYPE``), which the server shares.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.nic import virtio_regs as V
from ixypipe.pcapfile import PcapError, check_output
from ixypipe.sim import sysfs
from ixypipe.sim.block import SIM_COUNTER_FIELDS, SIM_COUNTERS_DTYPE, SIM_LATENCY_FIELDS, SIM_SIZE_FIELDS
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.foreign import DriverLeft, ForeignDma
from ixypipe.sim.iommu import IommuDma, table_path
from ixypipe.sim.model import STATS_PERIOD_NS, Fault, SimPort
from ixypipe.sim.payload import Profile
from ixypipe.sim.replay import template_frames
from ixypipe.sim.shape import FlowShape
from ixypipe.sim.traffic import MAX_FLOWS, SINK_MODES, SIZE_BUCKET_NAMES, CountSink, Generator, Sink
from ixypipe.sim.virtio_model import TRANSPORTS as VIRTIO_TRANSPORTS
from ixypipe.sim.virtio_model import SimVirtioPort

log = logging.getLogger(__name__)
GEN_BATCH = 2048                # most frames a generator sends per step (a step costs ~25 us besides its frames)
HOT_PATH_ENV = "IXYPIPE_SIM_HOT_PATH"
PORT_MAC_PREFIX = bytes((0x02, 0x49, 0x58, 0x53, 0x00))     # 02:49:58:53:00:<port index> ("IXS")
GEN_MAC_PREFIX = bytes((0x02, 0x47, 0x45, 0x4E, 0x00))      # 02:47:45:4e:00:<generator id> ("GEN")
SIM_DEVICES = ("82599", "virtio")


class SimConfigError(ValueError):
    """A simulated port configuration that cannot be built; the message names the port and key."""


@dataclass
class GeneratorConfig:
    packet_size: int = 60
    rate_pps: float = 0.0           # 0 = as fast as the RX ring takes
    flows: int = 4
    count: int = 0                  # 0 = unlimited
    seed: int = 0                   # reserved: the generated traffic is fully determined by the other fields
    profile: str = "udp"            # payload.PROFILES: udp, imix, vlan, ipv6, tcp-syn, runt
    vlan: int | None = None         # 802.1Q VID of every frame (the vlan profile's default: 100)
    shape: FlowShape | None = None  # the flows' addresses, ports and protocols (sim/shape.py, with its seed)
    template: str | None = None     # a pcap file whose frames the flows replay (sim/replay.py)

    def make(self, gen_id: int, src_mac: bytes, dst_mac: bytes) -> Generator:
        """This generator (ValueError when a setting cannot be generated, ReplayError for the template)."""
        frames = template_frames(self.template, MAX_FLOWS) if self.template else None
        return Generator(gen_id, self.packet_size, self.flows, self.count, self.rate_pps, src_mac, dst_mac,
                         Profile(self.profile, self.vlan), shape=self.shape, template=frames)


@dataclass
class SinkConfig:
    mode: str = "verify"            # "verify": ixypipe's generator frames (loss, order, content); "count": any
    expect_touch: bool = False      # verify: byte 1 of every frame incremented by one, as ixy-fwd does
    pcap: str | None = None         # also append every frame to this pcap file


@dataclass
class SimPortConfig:
    name: str
    pci_address: str | None = None
    mac: bytes | None = None
    generator: GeneratorConfig | None = None
    sink: SinkConfig | None = None
    cable_to: str | None = None
    iommu: bool = False             # behind a simulated IOMMU: VFIO nodes, DMA only through MAP_DMA mappings
    device: str = "82599"           # or "virtio": a software virtio-net function (sim/virtio_model.py)
    transport: str = "legacy"       # virtio: "legacy" (I/O BAR0) or "modern" (capabilities, BAR4)
    queue_size: int = V.SIM_DEFAULT_QUEUE_SIZE      # virtio: entries of each virtqueue (the most a driver may use)
    queue_pairs: int = 1            # virtio: queue pairs offered (more than one: MQ and a control queue)


@dataclass
class PortCounters:
    generated: int = 0
    gen_bytes: int = 0
    rx_delivered: int = 0
    rx_missed: int = 0
    rx_undersize: int = 0           # runts, shorter than 64 bytes with FCS: dropped by the MAC (RUC)
    rx_oversize: int = 0            # longer than the max frame size: dropped by the MAC (ROC)
    tx_sent: int = 0
    tx_bytes: int = 0
    sink_received: int = 0
    sink_lost: int = 0
    sink_reordered: int = 0
    sink_corrupt: int = 0
    sink_untouched: int = 0
    dma_faults: int = 0
    sink_bytes: int = 0             # frame bytes without FCS
    sink_pcap_failed: int = 0       # frames the sink's pcap file could not take (logged once)
    sink_rewritten: int = 0         # of sink_corrupt: the generator's record intact, other bytes changed
    sink_latency_samples: int = 0   # a verifying sink: frames whose one-way latency it sampled (one per batch)
    sink_latency_p50_ns: int = 0    # ... their percentiles, from the generator's RX descriptor to this port's
    sink_latency_p90_ns: int = 0    # wire (sim/latency.py)
    sink_latency_p99_ns: int = 0
    sink_latency_max_ns: int = 0
    sink_size_lt64: int = 0         # sizes with FCS, RFC 2819 buckets (a count sink only)
    sink_size_64: int = 0
    sink_size_65_127: int = 0
    sink_size_128_255: int = 0
    sink_size_256_511: int = 0
    sink_size_512_1023: int = 0
    sink_size_1024_1518: int = 0
    sink_size_gt1518: int = 0

    def sizes(self) -> dict[str, int]:
        """The size histogram by bucket name ("64", "65-127", ...)."""
        return {name: getattr(self, f) for name, f in zip(SIZE_BUCKET_NAMES, SIM_SIZE_FIELDS, strict=True)}


assert tuple(f.name for f in fields(PortCounters)) == SIM_COUNTER_FIELDS


def counters_from(rows: np.ndarray, names: list[str]) -> dict[str, PortCounters]:
    return {name: PortCounters(*(int(v) for v in rows[i].tolist())) for i, name in enumerate(names)}


def validate_ports(ports: list[SimPortConfig]) -> list[SimPortConfig]:
    """Check names, addresses, MACs and wiring; returns the configs with cables made symmetric."""
    if not ports:
        raise SimConfigError("the simulator needs at least one port")
    names = [p.name for p in ports]
    for p in ports:
        if not p.name or names.count(p.name) > 1:
            raise SimConfigError(f"simulated port names must be unique and non-empty, got {names}")
        if p.sink is not None and p.sink.mode not in SINK_MODES:
            raise SimConfigError(f"port {p.name}: sink mode must be one of {', '.join(SINK_MODES)}, "
                                 f"got {p.sink.mode!r}")
        if p.mac is not None and len(p.mac) != 6:
            raise SimConfigError(f"port {p.name}: mac must be 6 bytes, got {len(p.mac)}")
        if p.device not in SIM_DEVICES:
            raise SimConfigError(f"port {p.name}: device must be one of {', '.join(SIM_DEVICES)}, got {p.device!r}")
        if p.device == "virtio" and p.transport not in VIRTIO_TRANSPORTS:
            raise SimConfigError(f"port {p.name}: virtio transport must be one of {', '.join(VIRTIO_TRANSPORTS)}, "
                                 f"got {p.transport!r}")
        if p.device == "virtio" and p.iommu:
            raise SimConfigError(f"port {p.name}: a software virtio-net device has no simulated IOMMU")
        if p.cable_to is not None:
            if p.cable_to not in names or p.cable_to == p.name:
                raise SimConfigError(f"port {p.name}: cable_to {p.cable_to!r} must name another port of {names}")
    by_name = {p.name: p for p in ports}
    for p in ports:
        if p.cable_to is not None:
            peer = by_name[p.cable_to]
            if peer.cable_to not in (None, p.name):
                raise SimConfigError(f"port {p.name}: cable_to {p.cable_to!r}, but {peer.name} is cabled to "
                                     f"{peer.cable_to!r}")
            peer.cable_to = p.name
    for p in ports:
        if p.cable_to is not None and p.generator is not None:
            raise SimConfigError(f"port {p.name}: its wire goes to {p.cable_to} (cable_to), so it cannot also "
                                 "have a generator")
        if p.cable_to is not None and p.sink is not None:
            raise SimConfigError(f"port {p.name}: its wire goes to {p.cable_to} (cable_to), so it cannot also "
                                 "have a sink")
    addresses = [p.pci_address or sysfs.default_address(i) for i, p in enumerate(ports)]
    if len(set(addresses)) != len(addresses):
        raise SimConfigError(f"simulated PCI addresses must be unique, got {addresses}")
    return ports


def bar_file(cfg: SimPortConfig) -> str:
    """The resource file of a port's registers: an 82599's BAR0, a legacy virtio I/O BAR0, modern virtio's BAR4."""
    if cfg.device == "virtio" and cfg.transport == "modern":
        return f"resource{V.SIM_MODERN_BAR}"
    return "resource0"


def create_port_files(root: Path, cfg: SimPortConfig, address: str, index: int) -> sysfs.DeviceFiles:
    """The fake sysfs directory of simulated port ``index``: an 82599's or a virtio-net function's."""
    if cfg.device == "virtio":
        return sysfs.create_virtio_device(root, address, cfg.transport)
    return sysfs.create_device(root, address, iommu_group=sysfs.iommu_group_of(index) if cfg.iommu else None)


class SimWorld:
    """Ports, wires and sysfs trees, stepped in-process (``create=False``: the trees already exist)."""

    def __init__(self, ports: list[SimPortConfig], arena: Arena | list[Arena], root: Path | None = None,
                 create: bool = True, counters: np.ndarray | None = None,
                 stats_period_ns: int = STATS_PERIOD_NS, clock=time.monotonic_ns, foreign: bool = False,
                 hot_path: str | None = None):
        """``foreign``: no arenas (``arena`` is ignored); DMA goes to the hugepage memory of whatever
        process maps the ports' resource0 files, found through /proc (``ixypipe.sim.foreign``)."""
        self.configs = validate_ports(ports)
        self.names = [p.name for p in ports]
        self._own_root = create and root is None
        self.sysfs_root = Path(root) if root is not None else sysfs.make_root()
        self.addresses = {p.name: p.pci_address or sysfs.default_address(i) for i, p in enumerate(ports)}
        if foreign:
            self.dma = ForeignDma([sysfs.device_dir(self.sysfs_root, self.addresses[p.name]) / bar_file(p)
                                   for p in self.configs])
        else:
            self.dma = DmaSpace(arena if isinstance(arena, (list, tuple)) else [arena])
        self.counters_array = counters if counters is not None else np.zeros(len(ports), SIM_COUNTERS_DTYPE)
        self._rows = self.counters_array.view(np.int64).reshape(len(ports), len(SIM_COUNTER_FIELDS))
        self._maps = []
        self._iommus: list[IommuDma] = []
        self.ports: dict[str, SimPort] = {}
        self.generators: dict[str, Generator] = {}
        self.sinks: dict[str, Sink] = {}
        self.traffic = False
        self.clock = clock
        self._gen_bytes = dict.fromkeys(self.names, 0)
        # the model's hot path: numba when installed ("auto"); IXYPIPE_SIM_HOT_PATH reaches model processes
        self.hot_path = hot_path or os.environ.get(HOT_PATH_ENV, "auto")
        try:
            self._build(create, stats_period_ns, clock)
        except BaseException:
            self.close()
            raise

    def _build(self, create: bool, stats_period_ns: int, clock) -> None:
        for i, cfg in enumerate(self.configs):
            addr = self.addresses[cfg.name]
            if cfg.device == "virtio":
                self._build_virtio(cfg, i, addr, create)
                continue
            if create:
                create_port_files(self.sysfs_root, cfg, addr, i)
            dma = self.dma
            if cfg.iommu:       # translated through its group's IOMMU table (ixypipe.sim.iommu)
                dma = IommuDma(table_path(self.sysfs_root, sysfs.iommu_group_of(i)),
                               [] if isinstance(self.dma, ForeignDma) else self.dma.arenas)
                self._iommus.append(dma)
            d = sysfs.device_dir(self.sysfs_root, addr)
            bar_mm, bar = sysfs.map_file(d / "resource0")
            cfg_mm, config = sysfs.map_file(d / "config")
            self._maps += [bar_mm, cfg_mm]
            mac = cfg.mac or PORT_MAC_PREFIX + bytes((i,))
            self.ports[cfg.name] = SimPort(cfg.name, bar.view(np.uint32), mac, dma, config=config,
                                           stats_period_ns=stats_period_ns, clock=clock, hot_path=self.hot_path)
        for i, cfg in enumerate(self.configs):
            g = cfg.generator
            if g is not None:
                try:
                    self.generators[cfg.name] = g.make(i, GEN_MAC_PREFIX + bytes((i & 0xFF,)),
                                                       self.ports[cfg.name].mac)
                except ValueError as exc:
                    raise SimConfigError(f"port {cfg.name}: {exc}") from None
        by_id = {i: self.generators[c.name] for i, c in enumerate(self.configs) if c.name in self.generators}
        for cfg in self.configs:
            port = self.ports[cfg.name]
            if cfg.sink is not None:
                if cfg.sink.pcap:
                    try:
                        check_output(cfg.sink.pcap)
                    except PcapError as exc:
                        raise SimConfigError(f"port {cfg.name}: sink pcap: {exc}") from None
                if cfg.sink.mode == "count":
                    sink = CountSink(cfg.sink.pcap)
                else:
                    sink = Sink(by_id, True, cfg.sink.expect_touch, cfg.sink.pcap, compiled=port.compiled,
                                clock=clock)
                self.sinks[cfg.name] = sink
                port.wire_out.append(sink.receive)
            if cfg.cable_to is not None:
                port.wire_out.append(self.ports[cfg.cable_to].receive)

    def _build_virtio(self, cfg: SimPortConfig, i: int, addr: str, create: bool) -> None:
        """A software virtio-net function at ``addr`` (its tree, its BAR mapped, its model)."""
        d = sysfs.device_dir(self.sysfs_root, addr)
        files = (create_port_files(self.sysfs_root, cfg, addr, i) if create else
                 sysfs.DeviceFiles(addr, d, d / bar_file(cfg), d / "config"))
        bar_mm, bar = sysfs.map_file(files.bar_file)
        cfg_mm, config = sysfs.map_file(files.config_file)
        self._maps += [bar_mm, cfg_mm]
        mac = cfg.mac or PORT_MAC_PREFIX + bytes((i,))
        try:
            self.ports[cfg.name] = SimVirtioPort(cfg.name, cfg.transport, bar, mac, self.dma, config=config,
                                                 queue_size=cfg.queue_size, hot_path=self.hot_path,
                                                 queue_pairs=cfg.queue_pairs)
        except ValueError as exc:
            raise SimConfigError(str(exc)) from None

    # ---- running --------------------------------------------------------------------------
    def start_traffic(self) -> None:
        self.traffic = True

    def pause_traffic(self) -> None:
        self.traffic = False
        for g in self.generators.values():
            g.pause()

    def step(self) -> int:
        """Make progress on everything pending; returns the work done (0 = idle)."""
        work = 0
        try:
            for port in self.ports.values():
                work += port.step()
            if self.traffic:
                for name, gen in self.generators.items():
                    work += self._generate(name, gen)
        except DriverLeft as exc:
            # a lookup (in a queue the dead driver enabled) found no driver: abandon this step, whose
            # DMA went nowhere, and wait for the next driver on fresh ports
            log.warning("%s: ports reset, waiting for the next driver", exc)
            self._reset_for_next_driver()
            work += 1
        if work:
            self.publish()
        return work

    def _generate(self, name: str, gen: Generator) -> int:
        port = self.ports[name]
        if not port.rx_ready():
            gen.pause()
            return 0
        if gen.rate_pps > 0:
            n = gen.allowance(GEN_BATCH)
            if n == 0:
                return 0
            if port.kernels is not None:
                port.receive_generated(gen, n)
                self._gen_bytes[name] += gen.bytes_of_next(n)
                gen.commit(n, self.clock())
                return n
            batch = gen.make(n)
            port.receive(batch)
            gen.commit(n, self.clock())               # after: a step abandoned (DriverLeft) sent nothing
        else:
            free = port.rx_free()
            n = gen.allowance(min(GEN_BATCH, int(free.sum())))
            if n == 0:
                return 0
            if port.kernels is not None:
                n = port.receive_generated(gen, n, free)
                self._gen_bytes[name] += gen.bytes_of_next(n)
                gen.commit(n, self.clock())
                return n
            batch = gen.make(n)
            queues, hashes = port.classify(batch)
            if (queues == queues[0]).all():
                n = min(n, int(free[queues[0]]))
            else:
                for q in np.unique(queues):          # cut where the first queue runs out of descriptors
                    over = np.flatnonzero(queues == q)[free[q]:]
                    if len(over):
                        n = min(n, int(over[0]))
            if n == 0:
                return 0
            if n < len(batch):
                batch, queues, hashes = batch.take(slice(0, n)), queues[:n], hashes[:n]
            port.receive(batch, queues, hashes)
            gen.commit(n, self.clock())
        self._gen_bytes[name] += int(batch.lengths.sum())
        return n

    # ---- results ------------------------------------------------------------------------
    @property
    def faults(self) -> list[Fault]:
        return [f for p in self.ports.values() for f in p.faults]

    def publish(self, exact: bool = False) -> None:
        """Write every port's counters into the counters array (``exact``: latency percentiles of this moment,
        not of up to LATENCY_PUBLISH_NS ago)."""
        now = self.clock()
        for i, name in enumerate(self.names):
            p = self.ports[name]
            gen = self.generators.get(name)
            sink = self.sinks.get(name)
            s = sink.result if sink is not None else None
            row = self._rows[i]
            lat = len(SIM_COUNTER_FIELDS) - len(SIM_SIZE_FIELDS) - len(SIM_LATENCY_FIELDS)   # the latency fields
            row[:lat] = (
                gen.sent if gen else 0, self._gen_bytes[name], p.rx_delivered, p.rx_missed, p.rx_undersize,
                p.rx_oversize, p.tx_sent, p.tx_bytes, s.received if s else 0, s.lost if s else 0, s.reordered if s else 0,
                s.corrupt if s else 0, s.untouched if s else 0, len(p.faults), s.received_bytes if s else 0,
                s.pcap_failed if s else 0, s.rewritten if s else 0)
            row[lat:lat + len(SIM_LATENCY_FIELDS)] = sink.latency_summary(now, exact) if isinstance(sink, Sink) else 0
            row[len(row) - len(SIM_SIZE_FIELDS):] = sink.sizes if sink is not None else 0

    def counters(self) -> dict[str, PortCounters]:
        self.publish(exact=True)
        return counters_from(self._rows, self.names)

    def poll_driver(self) -> bool:
        """Foreign DMA only: when the driver processes are gone, reset every port (dropping its ring
        views) and unmap their memory, so the hugepages go back and the next driver starts clean.
        Returns True when that happened."""
        if not isinstance(self.dma, ForeignDma) or not self.dma.driver_left():
            return False
        log.info("driver process(es) %s left: ports reset, their memory released", self.dma.driver_pids)
        self._reset_for_next_driver()
        return True

    def _reset_for_next_driver(self) -> None:
        for port in self.ports.values():
            port.power_on()
        self.dma.release()

    def link_up(self, name: str) -> bool:
        return self.ports[name].link_is_up()

    def close(self) -> None:
        for name, sink in self.sinks.items():
            try:
                sink.close()
            except OSError as exc:      # its pcap file could not be written: still close the rest
                log.error("port %s: closing the sink: %s", name, exc)
        for port in self.ports.values():
            port.detach()
        self.ports = {}
        if isinstance(self.dma, ForeignDma):
            self.dma.close()
        for iommu in self._iommus:
            iommu.close()
        self._rows = None
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:
                pass            # a numpy view still lives; the mapping goes with it
        self._maps = []
        if self._own_root:
            sysfs.remove_tree(self.sysfs_root)
            self._own_root = False

    def __enter__(self) -> SimWorld:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
