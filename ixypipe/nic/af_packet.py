"""AF_PACKET port: a kernel network interface (veth, a NIC with its kernel driver) as an ixypipe port.

Each RX queue is one packet socket with a PACKET_MMAP receive ring in
TPACKET_V2 format, bound to the interface for every protocol and told to
ignore the frames this host sends (PACKET_IGNORE_OUTGOING), so a port never
hears its own transmissions; several RX queues share the traffic through a
PACKET_FANOUT hash group.  ``rx_batch`` finds the run of frames the kernel
handed over (tp_status USER), copies them with one numpy gather into fresh
buffers of the queue's mempool and gives the frames back (with numba, one
compiled walk does both directions' frame work: ``af_packet_jit.py``).  When the mempool
is empty frames stay in the ring and the kernel counts what it cannot store
(tp_drops, read with PACKET_STATISTICS) - the same back-pressure as a NIC.
Each TX queue is a socket with a PACKET_TX_RING: ``tx_batch`` copies a batch
into free frames, marks them SEND_REQUEST and kicks the kernel with one
non-blocking send(); the buffers go to ``tx_done`` at once, since the data
now lives in the ring.  The supervisor's ``open`` checks the interface
(exists, up, root) and holds a promiscuous membership for the port's life;
stage processes ``attach`` and make only the sockets of their own queues.
Counters live in the device arena (region ``afp.<port>``), one line per
queue with a single writer, so the supervisor reads what the stages count.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import secrets
import socket
import time
from pathlib import Path

import numpy as np

from ixypipe.layout import PAGE_SIZE, SOFT_PORT_HEADER_DTYPE, SOFT_PORT_QUEUE_DTYPE
from ixypipe.memory.arena import RegionSize
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import af_packet_jit
from ixypipe.nic.af_packet_abi import (
    ETH_P_ALL,
    IFF_UP,
    PACKET_ADD_MEMBERSHIP,
    PACKET_DROP_MEMBERSHIP,
    PACKET_FANOUT,
    PACKET_FANOUT_FLAG_DEFRAG,
    PACKET_FANOUT_HASH,
    PACKET_FANOUT_TYPE_SHIFT,
    PACKET_IGNORE_OUTGOING,
    PACKET_LOSS,
    PACKET_MR_PROMISC,
    PACKET_MREQ_DTYPE,
    PACKET_QDISC_BYPASS,
    PACKET_RX_RING,
    PACKET_STATISTICS,
    PACKET_TX_RING,
    PACKET_VERSION,
    SOL_PACKET,
    TP_STATUS_AVAILABLE,
    TP_STATUS_KERNEL,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_SENDING,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TP_STATUS_WRONG_FORMAT,
    TPACKET2_HDR_DTYPE,
    TPACKET2_TX_DATA_OFF,
    TPACKET_BLOCK_SIZE,
    TPACKET_REQ_DTYPE,
    TPACKET_STATS_DTYPE,
    TPACKET_V2,
)
from ixypipe.nic.device import Device, DeviceError, DeviceStats, LinkState, PortSpec, TxDone, choose_hot_path
from ixypipe.nic.netns_id import describe_netns
from ixypipe.protocols import ETH_HEADER_LEN, ETH_P_8021Q, VLAN_TAG_LEN

SYS_CLASS_NET = Path("/sys/class/net")
STATS_POLL_SECONDS = 0.2          # how often an RX queue reads the kernel's PACKET_STATISTICS
MAX_QUEUES = 64
OPTIONS = {"qdisc_bypass", "fanout_defrag", "hot_path"}

_HDR = TPACKET2_HDR_DTYPE
_Q = SOFT_PORT_QUEUE_DTYPE
_SLOT = {name: _Q.fields[name][1] // 8 for name in _Q.names if _Q.fields[name][0] == np.dtype("<u8")}

log = logging.getLogger(__name__)


class AfPacketError(DeviceError):
    """An interface cannot be used as an AF_PACKET port; the message says why."""


# ---- the interface, seen through sysfs ----------------------------------------------

def _sys(ifname: str, attr: str) -> str:
    return (SYS_CLASS_NET / ifname / attr).read_text().strip()


def check_interface(ifname: str, port: str = "") -> int:
    """The interface index of ``ifname``; errors when it is missing or down."""
    who = f"port {port}: " if port else ""
    if not ifname:
        raise AfPacketError(f"{who}an af_packet port needs an interface name (interface = \"veth0\")")
    if len(ifname.encode()) >= 16 or "/" in ifname:
        raise AfPacketError(f"{who}{ifname!r} is not a valid interface name (at most 15 bytes, no '/')")
    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        raise AfPacketError(f"{who}no such network interface {ifname!r} in this network namespace "
                            f"({describe_netns()}; `ip link` lists its interfaces, `ixypipe netns status` "
                            "the testbeds and where their interfaces are)") from None
    try:
        flags = int(_sys(ifname, "flags"), 16)
    except (OSError, ValueError):
        flags = IFF_UP      # sysfs of another namespace: the kernel will say more at bind
    if not flags & IFF_UP:
        raise AfPacketError(f"{who}interface {ifname} is down; bring it up with `ip link set {ifname} up`")
    return index


def _packet_socket(ifname: str, port: str) -> socket.socket:
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except PermissionError:
        raise AfPacketError(f"port {port}: opening interface {ifname} needs root (CAP_NET_RAW) for "
                            f"AF_PACKET sockets; run as root (uid is {os.geteuid()})") from None


def _setsockopt(sock: socket.socket, option: int, value, what: str) -> None:
    try:
        sock.setsockopt(SOL_PACKET, option, value)
    except OSError as exc:
        raise AfPacketError(f"setting {what} on a packet socket failed: {exc.strerror}") from exc


def _ring_request(frame_size: int, frames: int) -> tuple[bytes, int, int]:
    """(tpacket_req, frame count, mapped size) for at least ``frames`` frames of ``frame_size``."""
    block = max(TPACKET_BLOCK_SIZE, frame_size)
    per_block = block // frame_size
    blocks = -(-frames // per_block)
    req = np.zeros(1, TPACKET_REQ_DTYPE)
    req[0] = (block, blocks, frame_size, blocks * per_block)
    return req.tobytes(), blocks * per_block, block * blocks


class PacketRing:
    """One mmap'ed TPACKET_V2 ring: frames as rows, header fields as strided views."""

    def __init__(self, sock: socket.socket, option: int, frame_size: int, frames: int, what: str):
        if frame_size % PAGE_SIZE and PAGE_SIZE % frame_size:
            raise AfPacketError(f"ring frame size {frame_size} must divide or be a multiple of {PAGE_SIZE}")
        req, self.count, size = _ring_request(frame_size, frames)
        _setsockopt(sock, option, req, f"a {what} ring of {self.count} x {frame_size}-byte frames")
        self.mm = mmap.mmap(sock.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.frame_size = frame_size
        # frames never straddle a block and blocks are a whole number of frames: evenly spaced rows
        self.frames = np.ndarray((self.count, frame_size), np.uint8, buffer=self.mm)
        self.status = self._field("tp_status")
        self.length = self._field("tp_len")
        self.snaplen = self._field("tp_snaplen")
        self.mac = self._field("tp_mac")
        self.vlan_tci = self._field("tp_vlan_tci")
        self.vlan_tpid = self._field("tp_vlan_tpid")
        self.at = np.zeros(1, np.int64)          # the cursor, in an array: compiled queue kernels move it too

    @property
    def cursor(self) -> int:
        return int(self.at[0])

    def _field(self, name: str) -> np.ndarray:
        dtype, offset = _HDR.fields[name][:2]
        return np.ndarray((self.count,), dtype, buffer=self.mm, offset=offset, strides=(self.frame_size,))

    def window(self, n: int) -> np.ndarray:
        """Frame numbers of the next ``n`` frames from the cursor (wrapping)."""
        w = np.arange(self.cursor, self.cursor + min(n, self.count))
        w[w >= self.count] -= self.count
        return w

    def advance(self, n: int) -> None:
        self.at[0] = (self.at[0] + n) % self.count

    def close(self) -> None:
        self.frames = self.status = self.length = self.snaplen = self.mac = None
        self.vlan_tci = self.vlan_tpid = None
        try:
            self.mm.close()
        except BufferError:
            pass


def _leading(mask: np.ndarray) -> int:
    """Length of the run of True at the start of ``mask``."""
    if mask.all():
        return len(mask)
    return int(mask.argmin())


# ---- counters in the device arena -----------------------------------------------------

class PortCounters:
    """Region ``<driver>.<port>``: a header line and one counter line per RX and TX queue."""

    def __init__(self, arena, region_name: str):
        region = arena.region(region_name)
        base = region.offset
        self.header = arena.buf[base:base + SOFT_PORT_HEADER_DTYPE.itemsize].view(SOFT_PORT_HEADER_DTYPE)
        self.rx_queues = int(self.header["rx_queues"][0])
        self.tx_queues = int(self.header["tx_queues"][0])
        start = base + SOFT_PORT_HEADER_DTYPE.itemsize
        lines = arena.buf[start:start + (self.rx_queues + self.tx_queues) * _Q.itemsize]
        words = memoryview(lines).cast("Q")
        per_line = _Q.itemsize // 8
        self.rx = [words[q * per_line:(q + 1) * per_line] for q in range(self.rx_queues)]
        self.tx = [words[(self.rx_queues + t) * per_line:(self.rx_queues + t + 1) * per_line]
                   for t in range(self.tx_queues)]
        self._table = lines.view(_Q)
        self.words = lines.view(np.uint64).reshape(self.rx_queues + self.tx_queues, per_line)  # compiled kernels' view

    @staticmethod
    def arena_regions(rx_queues: int, tx_queues: int) -> list[RegionSize]:
        return [RegionSize(SOFT_PORT_HEADER_DTYPE.itemsize + (rx_queues + tx_queues) * _Q.itemsize, align=64)]

    @classmethod
    def create(cls, arena, region_name: str, rx_queues: int, tx_queues: int) -> PortCounters:
        (need,) = cls.arena_regions(rx_queues, tx_queues)
        size = need.size
        region = arena.alloc(region_name, size, align=need.align)
        arena.buf[region.offset:region.offset + size] = 0
        header = arena.buf[region.offset:region.offset + SOFT_PORT_HEADER_DTYPE.itemsize].view(
            SOFT_PORT_HEADER_DTYPE)
        header["rx_queues"] = rx_queues
        header["tx_queues"] = tx_queues
        return cls(arena, region_name)

    @classmethod
    def attach(cls, arena, region_name: str, port: str) -> PortCounters:
        if arena.find(region_name) is None:
            raise DeviceError(f"port {port} was not opened in arena {arena.name} (no region {region_name!r}): "
                              "the supervisor opens a port before stages attach to it")
        return cls(arena, region_name)

    @staticmethod
    def add(line: memoryview, field: str, value: int) -> None:
        line[_SLOT[field]] += value

    def stats(self) -> DeviceStats:
        rx, tx = self._table[:self.rx_queues], self._table[self.rx_queues:]
        return DeviceStats(rx_packets=int(rx["packets"].sum()), tx_packets=int(tx["packets"].sum()),
                           rx_bytes=int(rx["bytes"].sum()), tx_bytes=int(tx["bytes"].sum()),
                           rx_dropped=int(rx["dropped"].sum()), tx_dropped=int(tx["dropped"].sum()),
                           rx_too_long=int(rx["truncated"].sum()))

    def close(self) -> None:
        for line in (*self.rx, *self.tx):
            line.release()
        self.rx = self.tx = []
        self._table = self.header = None


# ---- queues -----------------------------------------------------------------------------

class RxQueue:
    """One receive socket and its ring, filling buffers of one mempool."""

    def __init__(self, dev: AfPacketDevice, queue: int, pool: Mempool):
        self.dev, self.queue, self.pool = dev, queue, pool
        self.warned_too_long = False
        bufs = dev.bufs
        self.sock = _packet_socket(dev.ifname, dev.name)
        try:
            _setsockopt(self.sock, PACKET_VERSION, TPACKET_V2, "TPACKET_V2")
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            except OSError as exc:
                raise AfPacketError(f"port {dev.name}: the kernel lacks PACKET_IGNORE_OUTGOING (Linux 4.20+), "
                                    f"so the port would hear its own transmissions: {exc.strerror}") from exc
            self.ring = PacketRing(self.sock, PACKET_RX_RING, bufs.buf_size, dev.spec.rx_ring_size, "receive")
            if dev.spec.promiscuous:
                self.sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, _mreq(dev.ifindex))
            self.sock.bind((dev.ifname, ETH_P_ALL))
            if dev.spec.rx_queues > 1:
                kind = PACKET_FANOUT_HASH | (PACKET_FANOUT_FLAG_DEFRAG if dev.spec.options.get(
                    "fanout_defrag", True) else 0)
                group = int(dev.counters.header["fanout_group"][0])
                arg = np.array(group | (kind << PACKET_FANOUT_TYPE_SHIFT), "<u4").tobytes()   # a C int
                _setsockopt(self.sock, PACKET_FANOUT, arg, f"fanout group {group}")
        except BaseException:
            self.sock.close()
            raise
        self.line = dev.counters.rx[queue]
        self.next_poll = 0.0
        self.cols = np.arange(bufs.max_data)
        self.compiled = dev.compiled
        self.free_stack = pool.free_stack()
        self.result = np.zeros(4, np.int64)
        self.largest = np.zeros(1, np.int64)     # the largest frame dropped as too long so far
        ring, words = self.ring, dev.counters.words[queue]
        # the compiled stage loop's record of this queue (af_packet_jit.rx_queue)
        self.record = (ring.status, ring.length, ring.snaplen, ring.mac, ring.vlan_tci, ring.vlan_tpid, ring.frames,
                       ring.at, bufs.max_data, bufs.data, bufs.length, self.free_stack.stack, self.free_stack.top,
                       self.result, words, self.largest)
        if self.compiled:                  # load the kernel now, not with the first frame
            self._walk_compiled(np.empty(0, np.uint32), 0)

    def housekeeping(self) -> None:
        """What receiving does besides frames: the kernel's drops every STATS_POLL_SECONDS, and once the warning
        about frames too long for a buffer (the compiled stage loop calls it between its runs)."""
        now = time.monotonic()
        if now >= self.next_poll:
            self.poll_kernel_stats()
            self.next_poll = now + STATS_POLL_SECONDS
        if self.largest[0] and not self.warned_too_long:
            self._warn_too_long(int(self.largest[0]), self.dev.bufs.max_data)

    def receive(self, out: np.ndarray) -> int:
        ring = self.ring
        want = min(len(out), self.pool.available())
        self.housekeeping()
        if want <= 0 or not ring.status[ring.cursor] & TP_STATUS_USER:    # an idle poll costs one load
            return 0
        walk = self._walk_compiled if self.compiled else self._walk_numpy
        k, examined, truncated, largest, nbytes = walk(out, want)
        ring.advance(examined)
        if truncated:
            PortCounters.add(self.line, "truncated", truncated)
            self.largest[0] = max(int(self.largest[0]), largest)
            if not self.warned_too_long:
                self._warn_too_long(largest, self.dev.bufs.max_data)
        if k:
            PortCounters.add(self.line, "packets", k)
            PortCounters.add(self.line, "bytes", nbytes)
        return k

    def _walk_numpy(self, out: np.ndarray, want: int) -> tuple[int, int, int, int, int]:
        """Copy the run of ready frames into fresh buffers and give the frames back (the reference path):
        (received, examined, truncated, the largest truncated size, bytes received)."""
        ring, bufs = self.ring, self.dev.bufs
        frames = ring.window(want)
        status = ring.status[frames]
        n = _leading((status & TP_STATUS_USER) != 0)
        if n == 0:
            return 0, 0, 0, 0, 0
        examined = frames = frames[:n]
        status = status[:n]
        lengths = ring.length[frames]
        vlan = (status & TP_STATUS_VLAN_VALID) != 0
        full = lengths + np.where(vlan, VLAN_TAG_LEN, 0)
        good = (ring.snaplen[frames] == lengths) & (full <= bufs.max_data)
        truncated = int(n - good.sum())
        largest = int(full[~good].max()) if truncated else 0
        if truncated:
            frames, lengths, status, vlan = frames[good], lengths[good], status[good], vlan[good]
        k, nbytes = len(frames), 0
        if k:
            idx = self.pool.alloc(k)
            top = int(lengths.max())
            macs = ring.mac[frames]
            m = int(macs[0])
            if (macs == m).all():
                bufs.data[idx, :top] = ring.frames[frames, m:m + top]
            else:
                cols = np.minimum(macs[:, None].astype(np.int64) + self.cols[:top], ring.frame_size - 1)
                bufs.data[idx, :top] = ring.frames[frames[:, None], cols]
            bufs.length[idx] = lengths
            if vlan.any():
                self._insert_vlan_tags(idx[vlan], frames[vlan], status[vlan])
            out[:k] = idx
            nbytes = int(bufs.length[idx].sum())
        ring.status[examined] = TP_STATUS_KERNEL      # give every examined frame back
        return k, n, truncated, largest, nbytes

    def _walk_compiled(self, out: np.ndarray, want: int) -> tuple[int, int, int, int, int]:
        """The same walk as one compiled call (af_packet_jit.rx_frames)."""
        ring, bufs, r = self.ring, self.dev.bufs, self.result
        k = af_packet_jit.rx_frames(ring.status, ring.length, ring.snaplen, ring.mac, ring.vlan_tci,
                                    ring.vlan_tpid, ring.frames, ring.cursor, want, bufs.max_data, bufs.data,
                                    bufs.length, self.free_stack.stack, self.free_stack.top, out, r)
        if k:
            self.pool.note_popped(out[:k])
        res = r.tolist()           # one call, not four numpy scalars (each costs with cold caches)
        return (k, res[af_packet_jit.RX_EXAMINED], res[af_packet_jit.RX_TRUNCATED],
                res[af_packet_jit.RX_LARGEST_TRUNCATED], res[af_packet_jit.RX_BYTES])

    def _warn_too_long(self, size: int, limit: int) -> None:
        """Once per queue: what was dropped and how to stop it (counted as too_long every time)."""
        self.warned_too_long = True
        dev = self.dev.ifname
        log.warning("port %s (%s): dropped a %d-byte frame, longer than a packet buffer holds (%d bytes); "
                    "such frames are counted as too_long. Lower the MTU (ip link set %s mtu 1500), turn off "
                    "receive offloads that merge frames (ethtool -K %s gro off lro off), or raise "
                    "pipeline.buffer_size (a buffer holds buffer_size - 64 bytes)",
                    self.dev.name, dev, size, limit, dev, dev)

    def _insert_vlan_tags(self, idx: np.ndarray, frames: np.ndarray, status: np.ndarray) -> None:
        """Put back the 802.1Q tag the kernel stripped into tp_vlan_tci (rare: a loop is fine)."""
        bufs, ring = self.dev.bufs, self.ring
        tag_at = 2 * 6
        for i, f, st in zip(idx.tolist(), frames.tolist(), status.tolist(), strict=True):
            n = int(bufs.length[i])
            tpid = int(ring.vlan_tpid[f]) if st & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
            row = bufs.data[i]
            row[tag_at + VLAN_TAG_LEN:n + VLAN_TAG_LEN] = row[tag_at:n].copy()
            row[tag_at:tag_at + VLAN_TAG_LEN] = np.frombuffer(
                tpid.to_bytes(2, "big") + int(ring.vlan_tci[f]).to_bytes(2, "big"), np.uint8)
            bufs.length[i] = n + VLAN_TAG_LEN

    def poll_kernel_stats(self) -> None:
        """Add the kernel's drops since the last read (PACKET_STATISTICS clears on read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_DTYPE.itemsize)
        drops = int(np.frombuffer(raw, TPACKET_STATS_DTYPE)[0]["tp_drops"])
        if drops:
            PortCounters.add(self.line, "dropped", drops)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.poll_kernel_stats()
        self.ring.close()
        self.sock.close()
        self.line = None


class TxQueue:
    """One transmit socket and its ring."""

    def __init__(self, dev: AfPacketDevice, queue: int):
        self.dev, self.queue = dev, queue
        self.sock = _packet_socket(dev.ifname, dev.name)
        try:
            _setsockopt(self.sock, PACKET_VERSION, TPACKET_V2, "TPACKET_V2")
            # a frame the kernel cannot send is dropped, not left to block the ring (lengths are checked here)
            _setsockopt(self.sock, PACKET_LOSS, 1, "PACKET_LOSS")
            if dev.spec.options.get("qdisc_bypass", False):
                _setsockopt(self.sock, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS")
            self.ring = PacketRing(self.sock, PACKET_TX_RING, dev.bufs.buf_size, dev.spec.tx_ring_size,
                                   "transmit")
            self.sock.bind((dev.ifname, 0))          # protocol 0: this socket receives nothing
        except BaseException:
            self.sock.close()
            raise
        self.room = self.ring.frame_size - TPACKET2_TX_DATA_OFF
        self.line = dev.counters.tx[queue]
        self.kick = np.zeros(1, np.int64)        # 1: a send() kick is owed (the kernel was busy or refused)
        self.compiled = dev.compiled
        self.result = np.zeros(3, np.int64)
        self.freed = np.empty(self.ring.count, np.uint32)    # a send takes at most a ring of frames
        ring, bufs = self.ring, dev.bufs
        # the compiled stage loop's record of this queue (af_packet_jit.tx_queue)
        self.record = (ring.status, ring.length, ring.frames, ring.at, bufs.length, bufs.data, TPACKET2_TX_DATA_OFF,
                       self.room, self.result, dev.counters.words[dev.counters.rx_queues + queue],
                       self.sock.fileno(), self.freed, self.kick)
        if self.compiled:                  # load the kernel now, not with the first frame
            self._place_compiled(np.empty(0, np.uint32))

    @property
    def kick_pending(self) -> bool:
        return bool(self.kick[0])

    @kick_pending.setter
    def kick_pending(self, owed: bool) -> None:
        self.kick[0] = owed

    def send(self, idx: np.ndarray) -> int:
        if len(idx) == 0:
            return self._kick() if self.kick_pending else 0
        place = self._place_compiled if self.compiled else self._place_numpy
        n, queued, nbytes, dropped = place(idx)
        if n == 0:
            if self.kick_pending:
                self._kick()
            return 0
        self.ring.advance(n)
        if dropped:
            PortCounters.add(self.line, "dropped", dropped)
        if queued:
            PortCounters.add(self.line, "packets", queued)
            PortCounters.add(self.line, "bytes", nbytes)
            self._kick()
        self.dev.tx_done(idx[:n])
        return n

    def _place_numpy(self, idx: np.ndarray) -> tuple[int, int, int, int]:
        """Copy buffers into the run of free frames and mark them SEND_REQUEST (the reference path):
        (buffers taken, frames queued, their bytes, dropped for a bad length)."""
        ring, bufs = self.ring, self.dev.bufs
        frames = ring.window(len(idx))
        status = ring.status[frames]
        n = _leading((status == TP_STATUS_AVAILABLE) | (status == TP_STATUS_WRONG_FORMAT))
        if n == 0:
            return 0, 0, 0, 0
        frames, idx = frames[:n], idx[:n]
        lengths = bufs.length[idx]
        ok = (lengths >= ETH_HEADER_LEN) & (lengths <= self.room)
        sendable = frames[ok]
        k = len(sendable)
        if k:
            top = int(lengths[ok].max())
            ring.frames[sendable, TPACKET2_TX_DATA_OFF:TPACKET2_TX_DATA_OFF + top] = bufs.data[idx[ok], :top]
            ring.length[sendable] = lengths[ok]
            # x86 keeps stores in order, so the kernel sees the data before SEND_REQUEST; on Arm a
            # store barrier (dma_wmb-like) would go here
            ring.status[sendable] = TP_STATUS_SEND_REQUEST
        ring.status[frames[~ok]] = TP_STATUS_AVAILABLE
        return n, k, int(lengths[ok].sum()), n - k

    def _place_compiled(self, idx: np.ndarray) -> tuple[int, int, int, int]:
        """The same as one compiled call (af_packet_jit.tx_frames)."""
        ring, bufs, r = self.ring, self.dev.bufs, self.result
        n = af_packet_jit.tx_frames(ring.status, ring.length, ring.frames, ring.cursor, idx, bufs.length,
                                    bufs.data, TPACKET2_TX_DATA_OFF, self.room, r)
        res = r.tolist()
        return n, res[af_packet_jit.TX_QUEUED], res[af_packet_jit.TX_BYTES], res[af_packet_jit.TX_DROPPED]

    def _kick(self) -> int:
        """One non-blocking send(): the kernel transmits every SEND_REQUEST frame."""
        PortCounters.add(self.line, "kicks", 1)
        try:
            self.sock.send(b"", socket.MSG_DONTWAIT)
            self.kick_pending = False
        except (BlockingIOError, InterruptedError):
            self.kick_pending = True
        except OSError as exc:
            if exc.errno not in (errno.ENOBUFS, errno.ENOMEM, errno.ENETDOWN, errno.ENXIO):
                raise AfPacketError(f"port {self.dev.name}: transmit on {self.dev.ifname} failed: "
                                    f"{exc.strerror}") from exc
            # a frame was dropped by the queueing layer; the rest stay requested for the next kick
            PortCounters.add(self.line, "dropped", 1)
            self.kick_pending = True
        return 0

    def busy(self) -> int:
        """Frames still waiting for or in transmission."""
        s = self.ring.status
        return int(((s == TP_STATUS_SEND_REQUEST) | (s == TP_STATUS_SENDING)).sum())

    def drain(self, timeout: float) -> int:
        """Kick until every requested frame left (or ``timeout``); returns frames still pending."""
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            self._kick()
            time.sleep(0.0005)
        wrong = self.ring.status == TP_STATUS_WRONG_FORMAT
        if wrong.any():
            PortCounters.add(self.line, "dropped", int(wrong.sum()))
            self.ring.status[wrong] = TP_STATUS_AVAILABLE
        return self.busy()

    def close(self) -> None:
        self.ring.close()
        self.sock.close()
        self.line = None


def _mreq(ifindex: int) -> bytes:
    req = np.zeros(1, PACKET_MREQ_DTYPE)
    req[0]["mr_ifindex"] = ifindex
    req[0]["mr_type"] = PACKET_MR_PROMISC
    return req.tobytes()


# ---- the device -------------------------------------------------------------------------

class AfPacketDevice(Device):
    """A kernel interface as a port; ``spec.address`` is the interface name."""

    driver_name = "af_packet"

    def __init__(self, spec: PortSpec, arena, bufs: PacketBuffers, rx_pools: dict[int, Mempool],
                 tx_done: TxDone | None, counters: PortCounters):
        super().__init__(spec, tx_done)
        self.ifname = spec.address
        self.arena = arena
        self.bufs = bufs
        self.rx_pools = rx_pools
        self.counters = counters
        self.compiled = choose_hot_path(spec, None, af_packet_jit.AVAILABLE)
        self.ifindex = check_interface(self.ifname, spec.name)
        self.rxq: dict[int, RxQueue] = {}
        self.txq: dict[int, TxQueue] = {}
        self._control: socket.socket | None = None
        self._promisc = False
        self._baseline = DeviceStats()

    # ---- life cycle -----------------------------------------------------------------
    @staticmethod
    def region_name(spec: PortSpec) -> str:
        return f"afp.{spec.name}"

    @classmethod
    def arena_regions(cls, spec: PortSpec) -> list[RegionSize]:
        return PortCounters.arena_regions(spec.rx_queues, spec.tx_queues)

    @classmethod
    def _check_spec(cls, spec: PortSpec) -> None:
        unknown = set(spec.options) - OPTIONS
        if unknown:
            raise AfPacketError(f"port {spec.name}: unknown af_packet option(s) {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(sorted(OPTIONS))}")
        for what, n in (("rx_queues", spec.rx_queues), ("tx_queues", spec.tx_queues)):
            if not 1 <= n <= MAX_QUEUES:
                raise AfPacketError(f"port {spec.name}: {what} must be 1..{MAX_QUEUES}, got {n}")
        for what, n in (("rx_ring_size", spec.rx_ring_size), ("tx_ring_size", spec.tx_ring_size)):
            if n < 1:
                raise AfPacketError(f"port {spec.name}: {what} must be positive, got {n}")

    @classmethod
    def open(cls, spec: PortSpec, arena, bufs: PacketBuffers, rx_pools, tx_done: TxDone | None = None,
             **_ignored) -> AfPacketDevice:
        """Check the interface, create the port's counters and go promiscuous (the supervisor, once)."""
        cls._check_spec(spec)
        check_interface(spec.address, spec.name)
        _packet_socket(spec.address, spec.name).close()          # root check before anything is made
        counters = PortCounters.create(arena, cls.region_name(spec), spec.rx_queues, spec.tx_queues)
        counters.header["fanout_group"] = 1 + secrets.randbelow(0xFFFE)
        pools = dict(enumerate(rx_pools)) if isinstance(rx_pools, list | tuple) else dict(rx_pools or {})
        dev = cls(spec, arena, bufs, pools, tx_done, counters)
        if spec.promiscuous:
            dev.set_promisc(True)
        return dev

    @classmethod
    def attach(cls, spec: PortSpec, arena, bufs: PacketBuffers, rx_pools, tx_done: TxDone | None = None,
               **_ignored) -> AfPacketDevice:
        """Join an opened port; the RX queues of ``rx_pools`` start receiving at once."""
        cls._check_spec(spec)
        counters = PortCounters.attach(arena, cls.region_name(spec), spec.name)
        pools = dict(enumerate(rx_pools)) if isinstance(rx_pools, list | tuple) else dict(rx_pools or {})
        dev = cls(spec, arena, bufs, pools, tx_done, counters)
        try:
            for q in pools:
                dev._rx_queue(q)
        except BaseException:
            dev.close()
            raise
        return dev

    def close(self) -> None:
        for q in list(self.rxq.values()) + list(self.txq.values()):
            q.close()
        self.rxq, self.txq = {}, {}
        if self._control is not None:
            self._control.close()          # drops the promiscuous membership with it
            self._control = None
        if self.counters is not None:
            self.counters.close()
            self.counters = None

    # ---- queues ---------------------------------------------------------------------
    def _rx_queue(self, q: int) -> RxQueue:
        rxq = self.rxq.get(q)
        if rxq is None:
            if not 0 <= q < self.spec.rx_queues:
                raise AfPacketError(f"port {self.name}: no RX queue {q} (it has {self.spec.rx_queues})")
            if q not in self.rx_pools:
                raise AfPacketError(f"port {self.name}: RX queue {q} has no mempool in this process")
            rxq = self.rxq[q] = RxQueue(self, q, self.rx_pools[q])
        return rxq

    def _tx_queue(self, q: int) -> TxQueue:
        txq = self.txq.get(q)
        if txq is None:
            if not 0 <= q < self.spec.tx_queues:
                raise AfPacketError(f"port {self.name}: no TX queue {q} (it has {self.spec.tx_queues})")
            txq = self.txq[q] = TxQueue(self, q)
        return txq

    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        return self._rx_queue(queue).receive(out)

    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        if self.tx_done is None:
            self.check_tx_done(queue)
        return self._tx_queue(queue).send(np.asarray(bufs, dtype=np.uint32))

    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        """Wait until the queue's ring has sent everything; returns frames still pending."""
        txq = self.txq.get(queue)
        return txq.drain(timeout) if txq is not None else 0

    def compiled_rx(self, queue: int):
        rxq = self._rx_queue(queue)
        if not self.compiled or rxq.pool.debug:      # a debug pool learns of pops through rx_batch only
            return None
        return af_packet_jit.rx_queue, rxq.record

    def compiled_tx(self, queue: int):
        if not self.compiled or self.tx_done is None:
            return None
        txq = self._tx_queue(queue)
        return af_packet_jit.tx_queue, txq.record, txq.freed, np.zeros(1, np.int64), 0   # copied: nothing in hand

    def rx_housekeeping(self, queue: int) -> None:
        self._rx_queue(queue).housekeeping()

    def rx_fd(self, queue: int) -> int | None:
        """The queue's packet socket: poll() reports POLLIN when the kernel put a frame in the RX ring."""
        return self._rx_queue(queue).sock.fileno()

    def rx_held(self, queue: int) -> np.ndarray:
        """Buffers the port holds for RX: none, frames wait in the kernel's ring, not in buffers."""
        return np.empty(0, np.uint32)

    # ---- state ----------------------------------------------------------------------
    def read_stats(self) -> DeviceStats:
        for rxq in self.rxq.values():
            rxq.poll_kernel_stats()
        return self.counters.stats() - self._baseline

    def reset_stats(self) -> None:
        self._baseline = self.read_stats() + self._baseline

    def set_promisc(self, on: bool) -> None:
        if on == self._promisc:
            return
        if self._control is None:
            self._control = _packet_socket(self.ifname, self.name)
        option = PACKET_ADD_MEMBERSHIP if on else PACKET_DROP_MEMBERSHIP
        self._control.setsockopt(SOL_PACKET, option, _mreq(self.ifindex))
        self._promisc = on

    def link_state(self) -> LinkState:
        try:
            oper = _sys(self.ifname, "operstate")
            carrier = _sys(self.ifname, "carrier") == "1"
        except OSError:
            return LinkState(False)
        up = oper == "up" or (oper == "unknown" and carrier)
        try:
            speed = max(0, int(_sys(self.ifname, "speed")))
        except (OSError, ValueError):
            speed = 0
        return LinkState(up, speed if up else 0)

    @property
    def mac(self) -> bytes:
        return bytes.fromhex(_sys(self.ifname, "address").replace(":", ""))
