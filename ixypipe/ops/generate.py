"""The traffic generator alone, onto one port: ``ixypipe gen``.

Builds a small DMA arena, one mempool and one port through the ordinary
Device drivers (a software 82599 whose wire ends in the simulator's
verifying sink, an AF_PACKET interface, or a pcap file written like a
capture), and transmits the frames of ixypipe.sim.traffic's Generator:
a profile's frames (IPv4/UDP, IMIX, 802.1Q-tagged, IPv6/UDP, TCP SYN, runts;
see ``sim.payload.Profile``), shaped like a user's traffic (addresses,
ports, protocols: ``sim.shape``) or replayed from a capture
(``sim.replay``), one template per flow, sequence numbers and checksums
written per batch with numpy.  Buffers are 2 KB, or the power of
two that holds the largest frame (jumbo frames up to 9018 bytes).  The generator's rate credit paces it; frames
TX refuses are made again with the same sequence numbers, so nothing is
skipped.  Runs end after ``count`` packets, ``duration`` seconds or a stop
request (Ctrl-C); :meth:`GenSession.close` releases port, simulator and arena.
A rate the loop could not keep is reported with what it reached and what
bound it (:func:`shortfall`): the port (TX refused frames) or the CPU (rate
credit lost because the loop was not making frames fast enough).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ixypipe.layout import DEFAULT_BUF_SIZE, PKTBUF_HEADROOM
from ixypipe.memory.arena import Arena
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ports
from ixypipe.nic.device import DeviceError, PortSpec
from ixypipe.pipeline.report import rate_text
from ixypipe.sim.payload import Profile
from ixypipe.sim.replay import template_frames
from ixypipe.sim.shape import FlowShape
from ixypipe.sim.traffic import MAX_FLOWS, Generator

TARGETS = ("sim", "af_packet", "pcap")
PORT_NAME = "gen"
POOL_SIZE = 4096                 # buffers: the TX ring plus the batch in hand, with room
RING_SIZE = 512
IDLE_SLEEP = 50e-6               # seconds to wait for rate credit or TX room
SINK_TIMEOUT = 5.0               # seconds for the software 82599's sink to see every frame
SHORTFALL = 0.95                 # a rate reached below this share of the one asked is reported
TICK = 1.0                       # seconds between the per-second figures
BROADCAST = bytes.fromhex("ffffffffffff")


class GenError(ValueError):
    """The generator cannot run on that port; the message says why."""


def shortfall(asked_pps: float, reached_pps: float, tx_full: int, credit_lost: float) -> str:
    """"asked 100.0 kpps, reached 33.1 kpps (33 %): bound by ..." when a rate was asked and not kept, else "".

    What bound it, from what the loop saw: TX refusing frames (the port), else the CPU: the loop made
    frames as fast as this process could (rate credit it could not use in time expired)."""
    if asked_pps <= 0 or reached_pps >= SHORTFALL * asked_pps:
        return ""
    if tx_full:
        why = f"the port: it refused frames {tx_full} times (TX ring full)"
    else:
        expired = f", {credit_lost:.0f} packets of rate credit expired unused" if credit_lost >= 1 else ""
        why = (f"the CPU: this process made frames as fast as it could{expired} (a larger --batch or a less "
               "busy machine helps)")
    pct = 100 * reached_pps / asked_pps
    return (f"asked {rate_text(asked_pps)}, reached {rate_text(reached_pps)} "
            f"({pct:.0f} %): bound by {why}" if pct >= 1 else
            f"asked {rate_text(asked_pps)}, reached {rate_text(reached_pps)} ({pct:.2g} %): bound by {why}")


@dataclass
class GenTick:
    """One interval's figures (the per-second lines)."""
    seconds: float
    packets: int
    nbytes: int
    asked_pps: float
    tx_full: int                   # in this interval
    credit_lost: float             # in this interval

    @property
    def pps(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0

    def line(self, name: str) -> str:
        short = shortfall(self.asked_pps, self.pps, self.tx_full, self.credit_lost)
        return (f"[{name}] {rate_text(self.pps)}, {self.nbytes * 8 / self.seconds / 1e6:.1f} Mbit/s"
                + (f"; {short}" if short else ""))


@dataclass
class GenResult:
    sent: int
    bytes: int
    seconds: float
    stop_reason: str
    sink: dict[str, int] = field(default_factory=dict)   # sim only: what the verifying sink saw
    asked_pps: float = 0.0
    tx_full: int = 0               # times TX took fewer frames than offered
    credit_lost: float = 0.0       # packets of rate credit that expired before the loop used them

    @property
    def mpps(self) -> float:
        return self.sent / self.seconds / 1e6 if self.seconds > 0 else 0.0

    @property
    def shortfall(self) -> str:
        return shortfall(self.asked_pps, self.mpps * 1e6, self.tx_full, self.credit_lost)

    def as_json(self) -> dict:
        """The figures of ``ixypipe gen --json`` (docs/json.md)."""
        return {"sent": self.sent, "bytes": self.bytes, "seconds": round(self.seconds, 6),
                "pps": self.sent / self.seconds if self.seconds > 0 else 0.0, "stop_reason": self.stop_reason,
                "sink": dict(self.sink) or None}

    def summary(self) -> list[str]:
        lines = [f"sent {self.sent} packets ({self.bytes} bytes) in {self.seconds:.2f} s, "
                 f"{rate_text(self.mpps * 1e6)}; stopped by {self.stop_reason}"]
        if self.shortfall:
            lines.append(f"rate: {self.shortfall}")
        if self.sink:
            s = self.sink
            lines.append(f"sink: received {s['sink_received']} of {self.sent}, lost {s['sink_lost']}, "
                         f"reordered {s['sink_reordered']}, corrupt {s['sink_corrupt']}")
        return lines


class GenSession:
    """One port with its arena and pool, ready to transmit a generator's frames."""

    def __init__(self, target: str, where: str = "", packet_size: int = 60, flows: int = 1, hugepages: str = "auto",
                 dst_mac: bytes = BROADCAST, profile: Profile | None = None, shape: FlowShape | None = None,
                 template: str | None = None):
        """``shape``: the flows' addresses, ports and protocols; ``template``: a pcap file whose frames the
        flows replay (ReplayError when it cannot serve)."""
        if target not in TARGETS:
            raise GenError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
        if target != "sim" and not where:
            raise GenError(f"target {target} needs {'an interface' if target == 'af_packet' else 'a file'} name")
        self.target = target
        self.dst_mac = dst_mac
        self.packet_size, self.flows = packet_size, flows
        self.profile = profile or Profile()
        self.shape, self.template = shape, template
        self.frames = template_frames(template, MAX_FLOWS) if template else None
        widest = self._generator(0, 0.0, BROADCAST).packet_size                # bad sizes
        buf_size = DEFAULT_BUF_SIZE                                            # fail before anything is made
        while buf_size - PKTBUF_HEADROOM < widest:
            buf_size *= 2
        self.server = None
        self.dev = None
        options = {"mode": "write"} if target == "pcap" else {}
        spec = PortSpec(PORT_NAME, target, where, rx_ring_size=RING_SIZE, tx_ring_size=RING_SIZE,
                        promiscuous=False, options=options)
        regions = [*PacketBuffers.arena_regions(POOL_SIZE, buf_size), *Mempool.arena_regions(POOL_SIZE),
                   *ports.arena_regions(spec)]
        self.arena = Arena.create(Arena.size_for(regions), hugepages_mode=hugepages, tag="gen")
        try:
            self.bufs = PacketBuffers.create(self.arena, POOL_SIZE, buf_size)
            self.pool = Mempool.create(self.arena, self.bufs, "gen.pool", 0, POOL_SIZE, 0)
            self._open(spec)
        except BaseException:
            self.close()
            raise

    def _open(self, spec: PortSpec) -> None:
        root = None
        if self.target == "sim":
            from ixypipe.sim.launch import start_sim
            from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SinkConfig

            # the port's own generator never starts; it only tells the sink what our frames look like
            silent = GeneratorConfig(packet_size=self.packet_size, flows=self.flows, profile=self.profile.name,
                                     vlan=self.profile.vlan, shape=self.shape, template=self.template)
            sim = start_sim([SimPortConfig(PORT_NAME, generator=silent, sink=SinkConfig())], [spec],
                            [self.arena.path])
            self.server, root = sim.server, sim.sysfs_roots[PORT_NAME]
        where = spec.address
        try:
            self.dev = ports.open_port(spec, self.arena, self.bufs, [self.pool], tx_done=self.pool.free,
                                       sysfs_root=root)
        except DeviceError as exc:
            raise GenError(f"{self.target} port {where}: {exc}") from exc

    def generator(self, count: int = 0, rate_mpps: float = 0.0) -> Generator:
        """Generator 0 (the id the simulator's sink expects) with this session's size and flows."""
        return self._generator(count, rate_mpps, self.dev.mac)

    def _generator(self, count: int, rate_mpps: float, src_mac: bytes) -> Generator:
        return Generator(0, self.packet_size, self.flows, count, rate_mpps * 1e6, src_mac, self.dst_mac,
                         self.profile, shape=self.shape, template=self.frames)

    def run(self, gen: Generator, batch: int = 64, duration: float | None = None,
            progress: Callable[[int], object] | None = None, stop: Callable[[], bool] = lambda: False,
            tick: Callable[[GenTick], object] | None = None) -> GenResult:
        """Transmit until the generator's count is sent, ``duration`` passed or ``stop()`` is true;
        ``tick`` gets each second's figures."""
        dev, bufs, pool = self.dev, self.bufs, self.pool
        sent_bytes = tx_full = 0
        start = time.monotonic()
        last = (start, 0, 0, 0, 0.0)        # time, packets, bytes, tx_full, credit lost at the last tick
        reason = "count" if gen.count else "ctrl-c"
        while True:
            now = time.monotonic()
            if tick is not None and now - last[0] >= TICK:
                tick(GenTick(now - last[0], gen.sent - last[1], sent_bytes - last[2], gen.rate_pps,
                             tx_full - last[3], gen.credit_lost - last[4]))
                last = (now, gen.sent, sent_bytes, tx_full, gen.credit_lost)
            if gen.remaining() == 0:
                break
            if stop():
                reason = "ctrl-c"
                break
            if duration is not None and time.monotonic() - start >= duration:
                reason = f"duration {duration:g} s"
                break
            n = gen.allowance(batch)
            idx = pool.alloc(n) if n else np.empty(0, np.uint32)
            if len(idx) == 0:
                time.sleep(IDLE_SLEEP)
                continue
            frames = gen.make(len(idx))
            bufs.data[idx, :frames.data.shape[1]] = frames.data
            bufs.length[idx] = frames.lengths
            sent = dev.tx_batch(0, idx)
            sent_bytes += int(frames.lengths[:sent].sum())
            gen.commit(sent)
            if sent < len(idx):
                pool.free(idx[sent:])
                tx_full += 1
                time.sleep(IDLE_SLEEP)
            if sent and progress is not None:
                progress(sent)
        dev.tx_drain(0, 2.0)
        seconds = time.monotonic() - start
        result = GenResult(gen.sent, sent_bytes, seconds, reason, asked_pps=gen.rate_pps, tx_full=tx_full,
                           credit_lost=gen.credit_lost)
        if self.server is not None:
            result.sink = self._sink_verdict(gen.sent)
        return result

    def _sink_verdict(self, sent: int) -> dict[str, int]:
        deadline = time.monotonic() + SINK_TIMEOUT
        while time.monotonic() < deadline and self.server.counters()[PORT_NAME].sink_received < sent:
            time.sleep(0.01)
        c = self.server.counters()[PORT_NAME]
        return {k: getattr(c, k) for k in ("tx_sent", "sink_received", "sink_lost", "sink_reordered", "sink_corrupt")}

    def close(self) -> None:
        if self.dev is not None:
            self.dev.close()
            self.dev = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.arena is not None:
            self.arena.destroy()
            self.arena = None
