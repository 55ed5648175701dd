"""pcap ports: a file as a port, either a traffic source replaying it or a sink recording to it.

``mode = "read"`` (the default): the RX queue replays the file's packets
(pcap or pcapng, Ethernet link type only) in order into buffers of its
mempool - as fast as the pipeline takes them, or paced at ``rate_mpps`` -
``loop`` times (0: forever), then reports nothing more and sets the
SOURCE_DONE flag in its counters' header, which the supervisor reads to end a
run whose sources are all finite; when the pipeline stops, the supervisor
pauses the replay (``pause_source``), so the RX stage's drain finds the port
idle at once.  Records longer than a buffer are skipped
and counted as truncated.  A file that ends inside a record (cut short)
replays the packets before the cut, with one warning saying how many and
where.  A batch is copied with one numpy gather from the loaded file.
What the pipeline sends to a reading port is discarded and counted as
``tx_dropped``.

``mode = "write"``: the supervisor's ``open`` checks the path (a regular
file or none yet, in a writable directory) and creates the file (header
only); the TX stage appends every batch it transmits, with the time of
writing as timestamp, one write(2) per batch with no user-space buffer, so
tcpdump and tshark read a running capture.  A write that fails (disk full)
is logged once and its frames counted as ``tx_dropped``; the stage goes on.
Its RX queue never receives anything.

``spec.address`` is the file's path.  Counters live in the device arena
(region ``pcap.<port>``, the same layout as af_packet's) so the supervisor
sees what the stages counted.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ixypipe.layout import SOFT_PORT_CMD_PAUSE, SOFT_PORT_FLAG_SOURCE_DONE
from ixypipe.memory.arena import RegionSize
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.af_packet import PortCounters
from ixypipe.nic.device import Device, DeviceError, DeviceStats, LinkState, PortSpec, TxDone
from ixypipe.pcapfile import PcapError, PcapWriter, check_input, check_output, read_pcap, require_ethernet

log = logging.getLogger(__name__)
MODES = ("read", "write")
OPTIONS = {"mode", "loop", "rate_mpps", "nanosecond"}
PCAP_MAC = bytes.fromhex("020000000000")     # a file has no address: a locally administered zero


class PcapPortError(DeviceError):
    """A pcap port's file or options are unusable; the message says which."""


def _options(spec: PortSpec) -> tuple[str, int, float]:
    opts = spec.options
    unknown = set(opts) - OPTIONS
    if unknown:
        raise PcapPortError(f"port {spec.name}: unknown pcap option(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(OPTIONS))}")
    mode = opts.get("mode", "read")
    if mode not in MODES:
        raise PcapPortError(f"port {spec.name}: pcap mode must be one of {', '.join(MODES)}, got {mode!r}")
    loop = opts.get("loop", 1)
    if isinstance(loop, bool) or not isinstance(loop, int) or loop < 0:
        raise PcapPortError(f"port {spec.name}: pcap loop must be a whole number >= 0 (0 = forever), got {loop!r}")
    rate = opts.get("rate_mpps", 0.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
        raise PcapPortError(f"port {spec.name}: pcap rate_mpps must be >= 0 (0 = as fast as possible), "
                            f"got {rate!r}")
    if not spec.address:
        raise PcapPortError(f"port {spec.name}: a pcap port needs a file path (path = \"in.pcap\")")
    if spec.rx_queues != 1 or spec.tx_queues != 1:
        raise PcapPortError(f"port {spec.name}: a pcap port has exactly one RX and one TX queue, "
                            f"got {spec.rx_queues} RX / {spec.tx_queues} TX")
    return mode, loop, float(rate)


class Replay:
    """The read position in a loaded file, pacing and looping."""

    def __init__(self, path: Path, max_data: int, loop: int, rate_mpps: float, port: str):
        try:
            pcap = read_pcap(path, allow_cut=True)
            require_ethernet(path, pcap.linktype)
        except PcapError as exc:
            raise PcapPortError(f"port {port}: {exc}") from None
        if pcap.cut_at is not None:        # once per load: the stage goes on with the whole packets
            log.warning("port %s: %s; the replay stops there", port, pcap.cut_message())
        fits = pcap.caplen <= max_data
        self.oversize = int((~fits).sum())
        # one padded array so a batch is one gather that never reads past the end
        self.raw = np.concatenate([pcap.raw, np.zeros(max_data, np.uint8)])
        self.offsets = pcap.offsets[fits]
        self.caplen = pcap.caplen[fits]
        self.cols = np.arange(max_data)
        self.loop = loop
        self.rate_pps = rate_mpps * 1e6
        self.pos = 0
        self.passes = 0
        self.sent = 0
        self.started: float | None = None

    @property
    def finished(self) -> bool:
        return (self.loop and self.passes >= self.loop) or len(self.offsets) == 0

    def budget(self, want: int) -> int:
        if self.finished:
            return 0
        want = min(want, len(self.offsets) - self.pos)
        if self.rate_pps:
            now = time.monotonic()
            if self.started is None:
                self.started = now
            want = min(want, int((now - self.started) * self.rate_pps) - self.sent + 1)
        return max(want, 0)

    def fill(self, bufs: PacketBuffers, idx: np.ndarray) -> None:
        n = len(idx)
        sel = slice(self.pos, self.pos + n)
        lengths = self.caplen[sel]
        top = int(lengths.max())
        bufs.data[idx, :top] = self.raw[self.offsets[sel][:, None] + self.cols[:top]]
        bufs.length[idx] = lengths
        self.pos += n
        self.sent += n
        if self.pos == len(self.offsets):
            self.pos = 0
            self.passes += 1


class PcapDevice(Device):
    """A pcap file as a port; ``spec.address`` is its path."""

    driver_name = "pcap"

    def __init__(self, spec: PortSpec, bufs: PacketBuffers, rx_pools: dict[int, Mempool],
                 tx_done: TxDone | None, counters: PortCounters):
        super().__init__(spec, tx_done)
        self.mode, self.loop, self.rate_mpps = _options(spec)
        self.path = Path(spec.address)
        self.bufs = bufs
        self.rx_pools = rx_pools
        self.counters = counters
        self.replay: Replay | None = None
        self.writer: PcapWriter | None = None
        self.write_failed = 0              # frames this process could not write
        self._baseline = DeviceStats()

    @staticmethod
    def region_name(spec: PortSpec) -> str:
        return f"pcap.{spec.name}"

    @classmethod
    def arena_regions(cls, spec: PortSpec) -> list[RegionSize]:
        return PortCounters.arena_regions(1, 1)       # one file: one RX and one TX queue

    @classmethod
    def open(cls, spec: PortSpec, arena, bufs: PacketBuffers, rx_pools, tx_done: TxDone | None = None,
             **_ignored) -> PcapDevice:
        """Check the file (read) or create it with its header (write); make the port's counters."""
        mode, _, _ = _options(spec)
        path = Path(spec.address)
        try:
            if mode == "read":
                if check_input(path).format == "pcapng":     # interfaces may be described further on
                    require_ethernet(path, read_pcap(path, allow_cut=True).linktype)
            else:
                check_output(path)
                PcapWriter(path, nanosecond=bool(spec.options.get("nanosecond", True))).close()
        except PcapError as exc:
            raise PcapPortError(f"port {spec.name}: {exc}") from None
        counters = PortCounters.create(arena, cls.region_name(spec), 1, 1)
        return cls(spec, bufs, _pool_dict(rx_pools), tx_done, counters)

    @classmethod
    def attach(cls, spec: PortSpec, arena, bufs: PacketBuffers, rx_pools, tx_done: TxDone | None = None,
               **_ignored) -> PcapDevice:
        counters = PortCounters.attach(arena, cls.region_name(spec), spec.name)
        dev = cls(spec, bufs, _pool_dict(rx_pools), tx_done, counters)
        if dev.mode == "read" and dev.rx_pools:
            dev._load()
        return dev

    def _load(self) -> Replay:
        if self.replay is None:
            self.replay = Replay(self.path, self.bufs.max_data, self.loop, self.rate_mpps, self.name)
        return self.replay

    def _open_writer(self) -> PcapWriter:
        if self.writer is None:
            try:
                self.writer = PcapWriter(self.path, append=True, live=True)
            except PcapError as exc:
                raise PcapPortError(f"port {self.name}: {exc}") from None
        return self.writer

    @property
    def finished(self) -> bool:
        """A reading port has replayed its file ``loop`` times (never for loop = 0)."""
        return self.mode == "read" and self._load().finished

    def source_finished(self) -> bool:
        """What the RX stage published: the replay is over (read by the supervisor, which loads no file)."""
        return bool(int(self.counters.header["flags"][0]) & SOFT_PORT_FLAG_SOURCE_DONE)

    def pause_source(self) -> None:
        """(In the supervisor) the replay stops where it is: an endless one would keep the RX stage's drain
        busy until its deadline (RX_DRAIN_BUSY_MAX, 5 s) on every stop."""
        self.counters.header["commands"] |= SOFT_PORT_CMD_PAUSE

    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        if self.mode != "read" or int(self.counters.header["commands"][0]) & SOFT_PORT_CMD_PAUSE:
            return 0
        if queue != 0 or 0 not in self.rx_pools:
            raise PcapPortError(f"port {self.name}: RX queue {queue} has no mempool in this process")
        replay, pool = self._load(), self.rx_pools[0]
        n = replay.budget(min(len(out), pool.available()))
        if n == 0:
            if replay.finished and not self.source_finished():
                self.counters.header["replays_done"] = replay.passes
                self.counters.header["flags"] |= SOFT_PORT_FLAG_SOURCE_DONE
            return 0
        idx = pool.alloc(n)
        passes = replay.passes
        replay.fill(self.bufs, idx)
        out[:n] = idx
        line = self.counters.rx[0]
        PortCounters.add(line, "packets", n)
        PortCounters.add(line, "bytes", int(self.bufs.length[idx].sum()))
        if replay.passes != passes:
            self.counters.header["replays_done"] = replay.passes
            if replay.oversize:
                PortCounters.add(line, "truncated", replay.oversize)
        return n

    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        idx = np.asarray(bufs, dtype=np.uint32)
        if queue != 0:
            raise PcapPortError(f"port {self.name}: no TX queue {queue} (a pcap port has one)")
        self.check_tx_done(queue)
        n = len(idx)
        if n == 0:
            return 0
        line = self.counters.tx[0]
        if self.mode == "write":
            lengths = self.bufs.length[idx]
            top = int(lengths.max())
            try:
                self._open_writer().write_batch(self.bufs.data[idx, :top], lengths)
                PortCounters.add(line, "packets", n)
                PortCounters.add(line, "bytes", int(lengths.sum()))
            except OSError as exc:          # disk full, file system gone: count, tell once, go on
                if not self.write_failed:
                    log.error("port %s: cannot write to %s: %s; frames sent to it are counted as dropped",
                              self.name, self.path, exc.strerror or exc)
                self.write_failed += n
                PortCounters.add(line, "dropped", n)
        else:
            PortCounters.add(line, "dropped", n)
        self.tx_done(idx)
        return n

    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        """Buffers went to tx_done as they were written: only the file needs flushing."""
        if self.writer is not None:
            self.writer.flush()
        return 0

    def rx_held(self, queue: int) -> np.ndarray:
        """None: a replayed packet is copied into a fresh buffer when it is received."""
        return np.empty(0, np.uint32)

    def read_stats(self) -> DeviceStats:
        return self.counters.stats() - self._baseline

    def reset_stats(self) -> None:
        self._baseline = self.read_stats() + self._baseline

    def set_promisc(self, on: bool) -> None:
        pass

    def link_state(self) -> LinkState:
        return LinkState(True, 0)

    @property
    def mac(self) -> bytes:
        return PCAP_MAC

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.replay = None
        if self.counters is not None:
            self.counters.close()
            self.counters = None


def _pool_dict(rx_pools) -> dict[int, Mempool]:
    if isinstance(rx_pools, list | tuple):
        return dict(enumerate(rx_pools))
    return dict(rx_pools or {})
