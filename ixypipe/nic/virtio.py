"""The virtio driver: a virtio-net function driven from user space over split virtqueues (ixy's virtio.c).

Owns the device's bring-up (virtio 1.x section 3.1.1, one small function
per step), the virtqueues and the batch hot paths.  Queue 2k receives and
2k+1 transmits for queue pair k (5.1.2); with several pairs the driver
negotiates MQ and CTRL_VQ and enables them with MQ_VQ_PAIRS_SET on the
control queue (5.1.6.5.5), and each pair is served by its own RX and TX
stage like an 82599's RSS queues.  Each virtqueue (descriptor table,
available ring, used ring, in the legacy layout so both transports take it)
and the driver's per-queue state (buffer index per descriptor, TX's free
descriptor stack, state words with the statistics) live in named regions of
the device arena (``virtio.<port>.rxq<q>.*`` / ``.txq<q>.*``), so the
supervisor opens and initialises a port and a stage process attaches and
carries on.  ``rx_batch`` and ``tx_batch`` call one kernel per batch
(``virtio_numpy.py`` reference or ``virtio_jit.py`` numba: ``hot_path``).

Features: VERSION_1 (modern transport) or ANY_LAYOUT (legacy) are required
(the header shares the frame's descriptor); MAC and STATUS are taken when
offered; MRG_RXBUF when offered unless the port says ``mrg_rxbuf = false``
(with it the header is 12 bytes and the device fills one buffer per frame:
our buffers hold a whole frame); everything else is left off.  Notification
suppression for a polling driver: the available rings carry NO_INTERRUPT,
and the driver notifies only while the device has not set NO_NOTIFY.  The
software device (``spec.driver == "sim"``) has simulated DMA addresses;
``simulated`` also makes the transports wait for its model (virtio_pci.py).
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from ixypipe.layout import PKTBUF_HEADROOM
from ixypipe.memory.arena import Arena, RegionSize
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import virtio_jit, virtio_numpy, virtio_pci
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.device import (
    Device,
    DeviceError,
    DeviceStats,
    LinkState,
    PortSpec,
    TxDone,
    check_rx_pools,
    choose_hot_path,
)
from ixypipe.nic.ixgbe import _region

log = logging.getLogger(__name__)

DRAIN_POLL_INTERVAL = 0.001
STATUS_TIMEOUT = 30.0
LINK_SPEED_MBIT = 10000             # virtio-net reports no speed without SPEED_DUPLEX: ixy says 10G too
_NOTHING = np.empty(0, np.uint32)
CTRL_CMD_BYTES = 64                 # the control command's bytes: class, command, data, and the ack at CTRL_ACK_OFF
CTRL_ACK_OFF = 8


class VirtioQueue:
    """One virtqueue and the driver's state for it, all arena views."""

    def __init__(self, arena: Arena, prefix: str, entries: int, create: bool, tx: bool):
        self.prefix = prefix
        self.entries = entries
        self.mask = entries - 1
        sizes = self.arena_regions(entries, tx)
        names = ("ring", "bufs", "state", "free")[:len(sizes)]
        regions = {n: _region(arena, f"{prefix}.{n}", s, create) for n, s in zip(names, sizes, strict=True)}
        ring = arena.view(regions["ring"], np.uint8)
        self.desc = ring[:V.avail_offset(entries)].view("<u8").reshape(entries, 2)
        self.avail = ring[V.avail_offset(entries):V.avail_offset(entries) + V.RING_HEADER + 2 * entries + 2].view("<u2")
        used = ring[V.used_offset(entries):V.vring_bytes(entries)]
        self.used_hdr = used[:V.RING_HEADER].view("<u2")
        self.used_ring = used[V.RING_HEADER:V.RING_HEADER + V.USED_ELEM_SIZE * entries].view("<u4").reshape(entries, 2)
        self.ring_bytes = ring
        self.ring_offset = regions["ring"].offset
        self.dma_addr = int(arena.phys(self.ring_offset))     # the transport may say otherwise (VirtioDevice)
        self.slot_buf = arena.view(regions["bufs"], np.uint32)
        self.state = arena.view(regions["state"], np.uint64)
        self.free_ids = arena.view(regions["free"], np.uint32) if tx else None
        self.burst = None
        self.record = None                                   # the compiled stage loops' (VirtioDevice._bind)
        self.kick = np.zeros(V.KICK_WORDS, np.int64)         # how compiled code notifies (virtio_jit._notify)
        self.kick_cell = np.zeros(1, np.uint16)
        self.kicks_reported = 0
        if create:
            ring[:] = 0
            self.state[:] = 0
            self.state[V.QSTATE_ENTRIES] = entries
        elif int(self.state[V.QSTATE_ENTRIES]) != entries:
            raise DeviceError(f"{prefix}: the arena's virtqueue has {int(self.state[V.QSTATE_ENTRIES])} entries, "
                              f"the port spec says {entries}")

    @staticmethod
    def arena_regions(entries: int, tx: bool) -> list[RegionSize]:
        """The virtqueue (4096-aligned, in one page: physically contiguous), buffer per descriptor, state
        words, and for TX the free descriptor stack."""
        regions = [RegionSize(V.vring_bytes(entries), align=V.LEGACY_ALIGN, within_page=True),
                   RegionSize(entries * 4, align=64), RegionSize(V.QSTATE_WORDS * 8, align=64)]
        return regions + [RegionSize(entries * 4, align=64)] if tx else regions

    @property
    def avail_addr(self) -> int:
        return self.dma_addr + V.avail_offset(self.entries)

    @property
    def used_addr(self) -> int:
        return self.dma_addr + V.used_offset(self.entries)

    def device_suppresses_notify(self) -> bool:
        return bool(self.used_hdr[0] & V.USED_F_NO_NOTIFY)


# ---- init steps (virtio 1.x 3.1.1 Driver Requirements: Device Initialization) -------------------------

# 3.1.1 steps 1-3: reset, ACKNOWLEDGE, DRIVER
def reset_device(t: virtio_pci.Transport) -> None:
    t.set_status(0)
    t.settle()
    deadline = time.monotonic() + STATUS_TIMEOUT
    while t.status() != 0:           # 4.1.4.3.2: the driver waits until the status reads 0
        if time.monotonic() > deadline:
            raise DeviceError(f"{t.path.name}: the device status still reads {t.status():#04x} "
                              f"{STATUS_TIMEOUT:g} s after the reset")
        t.sleep(0.001)
    t.set_status(V.STATUS_ACKNOWLEDGE)
    t.set_status(V.STATUS_ACKNOWLEDGE | V.STATUS_DRIVER)


# 3.1.1 step 4 and 5.1.3: read the device's features, write the subset this driver uses
def negotiate_features(t: virtio_pci.Transport, name: str, mrg_rxbuf: bool, pairs: int) -> int:
    offered = t.device_features()
    layout = V.bit(V.F_VERSION_1) if t.kind == "modern" else V.bit(V.F_ANY_LAYOUT)
    if not offered & layout:
        need = "VERSION_1" if t.kind == "modern" else "ANY_LAYOUT"
        raise DeviceError(f"port {name!r}: the device does not offer {need} (the driver puts the virtio_net_hdr "
                          f"in the frame's descriptor); it offers {V.feature_names(offered)}")
    want = layout | V.bit(V.F_MAC) | V.bit(V.F_STATUS)
    if mrg_rxbuf:
        want |= V.bit(V.F_MRG_RXBUF)
    if pairs > 1:
        if not offered & V.bit(V.F_MQ):
            raise DeviceError(f"port {name!r}: {pairs} queue pairs need the MQ feature, which the device does "
                              "not offer")
        want |= V.bit(V.F_MQ) | V.bit(V.F_CTRL_VQ)
    features = offered & want
    t.set_driver_features(features)
    return features


# 3.1.1 step 5-6: FEATURES_OK, and the device may refuse (modern only; legacy has no FEATURES_OK)
def confirm_features(t: virtio_pci.Transport, name: str, features: int) -> None:
    if t.kind == "legacy":
        return
    t.set_status(t.status() | V.STATUS_FEATURES_OK)
    t.settle()
    if not t.status() & V.STATUS_FEATURES_OK:
        raise DeviceError(f"port {name!r}: the device refused the features {V.feature_names(features)} "
                          "(FEATURES_OK did not stay set)")


# 3.1.1 step 7 and 4.1.5.1.3 (modern) / 4.1.4.8 (legacy): virtqueue discovery and set-up
def setup_queue(t: virtio_pci.Transport, name: str, index: int, q: VirtioQueue) -> None:
    most = t.queue_max(index)
    if most == 0:
        raise DeviceError(f"port {name!r}: the device has no virtqueue {index}")
    if t.kind == "legacy" and most != q.entries:
        raise DeviceError(f"port {name!r}: the legacy device's virtqueue {index} has {most} entries, the port "
                          f"asks for {q.entries} (legacy devices decide the size: set rx_ring_size and "
                          f"tx_ring_size to {most})")
    if q.entries > most:
        raise DeviceError(f"port {name!r}: virtqueue {index} holds at most {most} entries, the port asks for "
                          f"{q.entries}")
    q.avail[0] = V.AVAIL_F_NO_INTERRUPT          # this driver polls: no interrupts, please
    t.enable_queue(index, q.entries, q.dma_addr, q.avail_addr, q.used_addr)
    q.state[V.QSTATE_NOTIFY] = index | t.notify_offset(index) << 16     # for every process that notifies


# 3.1.1 step 8: DRIVER_OK
def driver_ok(t: virtio_pci.Transport, name: str) -> None:
    t.set_status(t.status() | V.STATUS_DRIVER_OK)
    t.settle()
    status = t.status()
    if status & (V.STATUS_FAILED | V.STATUS_NEEDS_RESET):
        raise DeviceError(f"port {name!r}: the device reports status {status:#04x} (FAILED or NEEDS_RESET) "
                          "after DRIVER_OK")


# 5.1.6.5.5 Automatic receive steering in multiqueue mode: VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET on the control queue
def set_queue_pairs(t: virtio_pci.Transport, name: str, q: VirtioQueue, cmd: np.ndarray, cmd_addr: int,
                    pairs: int) -> None:
    """One command, three descriptors: class and command, the u16 pair count (device-readable), the ack byte."""
    cmd[:] = 0
    cmd[0], cmd[1] = V.CTRL_NET_MQ, V.CTRL_MQ_VQ_PAIRS_SET
    cmd[V.CTRL_HDR_LEN:V.CTRL_HDR_LEN + 2] = np.frombuffer(pairs.to_bytes(2, "little"), np.uint8)
    cmd[CTRL_ACK_OFF] = 0xFF
    next_flag = np.uint64(V.DESC_F_NEXT) << np.uint64(V.DESC_FLAGS_SHIFT)
    q.desc[0] = (cmd_addr, np.uint64(V.CTRL_HDR_LEN) | next_flag | (np.uint64(1) << np.uint64(V.DESC_NEXT_SHIFT)))
    q.desc[1] = (cmd_addr + V.CTRL_HDR_LEN, np.uint64(2) | next_flag | (np.uint64(2) << np.uint64(V.DESC_NEXT_SHIFT)))
    q.desc[2] = (cmd_addr + CTRL_ACK_OFF, np.uint64(1) | (np.uint64(V.DESC_F_WRITE) << np.uint64(V.DESC_FLAGS_SHIFT)))
    used = int(q.used_hdr[1])
    a = int(q.state[V.QSTATE_AVAIL])
    q.avail[2 + (a & q.mask)] = 0
    q.avail[1] = (a + 1) & 0xFFFF
    q.state[V.QSTATE_AVAIL] = (a + 1) & 0xFFFF
    if not q.device_suppresses_notify():
        where = int(q.state[V.QSTATE_NOTIFY])
        t.notify(where & 0xFFFF, where >> 16)
    deadline = time.monotonic() + V.CTRL_TIMEOUT
    while int(q.used_hdr[1]) == used:
        if time.monotonic() > deadline:
            raise DeviceError(f"port {name!r}: the device did not answer MQ_VQ_PAIRS_SET({pairs}) on the control "
                              f"queue within {V.CTRL_TIMEOUT:g} s")
        t.sleep(0.001)
    if cmd[CTRL_ACK_OFF] != V.CTRL_OK:
        raise DeviceError(f"port {name!r}: the device refused MQ_VQ_PAIRS_SET({pairs}) (ack {int(cmd[CTRL_ACK_OFF])})")


def fill_rx(q: VirtioQueue, pool: Mempool, data_addr: np.ndarray, hdr_len: int, max_data: int) -> None:
    """Every descriptor holds a pool buffer (device-writable, header + a whole frame) and is available."""
    idx = pool.alloc_exact(q.entries)
    q.slot_buf[:] = idx
    q.desc[:, 0] = data_addr[idx] - np.uint64(hdr_len)
    q.desc[:, 1] = np.uint64(hdr_len + max_data) | (np.uint64(V.DESC_F_WRITE) << np.uint64(V.DESC_FLAGS_SHIFT))
    q.avail[2:2 + q.entries] = np.arange(q.entries)
    q.avail[1] = q.entries & 0xFFFF
    q.state[V.QSTATE_AVAIL] = q.entries & 0xFFFF


def prepare_tx(q: VirtioQueue) -> None:
    q.free_ids[:] = np.arange(q.entries)[::-1]
    q.state[V.QSTATE_FREE_TOP] = q.entries


def check_spec(spec: PortSpec) -> None:
    where = f"port {spec.name!r}"
    if spec.rx_queues != spec.tx_queues:
        raise DeviceError(f"{where}: virtio queues come in pairs: rx_queues ({spec.rx_queues}) must equal "
                          f"tx_queues ({spec.tx_queues})")
    if not 1 <= spec.rx_queues <= V.MAX_QUEUE_PAIRS:
        raise DeviceError(f"{where}: a virtio port has 1..{V.MAX_QUEUE_PAIRS} queue pairs, got {spec.rx_queues}")
    for key in ("rx_ring_size", "tx_ring_size"):
        n = getattr(spec, key)
        if not V.MIN_QUEUE_SIZE <= n <= V.MAX_QUEUE_SIZE or n & (n - 1):
            raise DeviceError(f"{where}: {key} must be a power of two from {V.MIN_QUEUE_SIZE} to "
                              f"{V.MAX_QUEUE_SIZE}, got {n}")
    transport = spec.options.get("transport", "auto")
    if transport not in virtio_pci.TRANSPORTS:
        raise DeviceError(f"{where}: transport must be one of {', '.join(virtio_pci.TRANSPORTS)}, got {transport!r}")


def check_opening(spec: PortSpec, rx_pools: list[Mempool], hot_path: str | None) -> None:
    """What opening a port needs before anything is touched: a valid spec, a hot path, and one mempool per RX
    queue with a buffer for every descriptor."""
    check_spec(spec)
    choose_hot_path(spec, hot_path, virtio_jit.AVAILABLE)
    check_rx_pools(spec, rx_pools, "virtqueue")


class VirtioDevice(Device):
    driver_name = "virtio"

    def __init__(self, spec: PortSpec, transport: virtio_pci.Transport, arena: Arena, bufs: PacketBuffers,
                 rx_pools: dict[int, Mempool], tx_done: TxDone | None, create: bool, owner: bool,
                 hot_path: str | None = None):
        super().__init__(spec, tx_done)
        check_spec(spec)
        self.compiled = choose_hot_path(spec, hot_path, virtio_jit.AVAILABLE)
        self.transport = transport
        self.arena = arena
        self.bufs = bufs
        self.owner = owner
        self._home_range = tx_done.send_range if isinstance(tx_done, Homing) else None
        base = f"virtio.{spec.name}"
        self._rx = [VirtioQueue(arena, f"{base}.rxq{q}", spec.rx_ring_size, create, tx=False)
                    for q in range(spec.rx_queues)]
        self._tx = [VirtioQueue(arena, f"{base}.txq{q}", spec.tx_ring_size, create, tx=True)
                    for q in range(spec.tx_queues)]
        self._ctrl = None
        if spec.rx_queues > 1:          # MQ: the control queue and the bytes of its one command
            self._ctrl = VirtioQueue(arena, f"{base}.ctrl", spec.rx_ring_size, create, tx=False)
            self._ctrl_cmd = arena.view(_region(arena, f"{base}.ctrl.cmd", RegionSize(CTRL_CMD_BYTES, align=64),
                                                create), np.uint8)
        # what the device is told: physical addresses on PCI, the frontend's addresses over vhost-user
        self._data_addr = transport.dma_addresses(bufs.arena, bufs.offset + np.arange(bufs.count, dtype=np.uint64)
                                                  * np.uint64(bufs.buf_size) + np.uint64(PKTBUF_HEADROOM))
        for q in self._rx + self._tx + ([self._ctrl] if self._ctrl is not None else []):
            q.dma_addr = int(transport.dma_addresses(arena, q.ring_offset))
        if self._ctrl is not None:
            self._ctrl_cmd_addr = int(transport.dma_addresses(arena, arena.find(f"{base}.ctrl.cmd").offset))
        self._pools = rx_pools
        self._bad = np.zeros(4, np.int64)
        self._freed = {q: np.empty(txq.entries, np.uint32) for q, txq in enumerate(self._tx)}
        self._lohi = np.zeros(2, np.int64)
        self._error = np.zeros(2, np.int64)
        self.features = 0
        self._baseline = DeviceStats()
        self._mac = b"\0" * 6

    def _bind(self) -> None:
        """Bind each queue's kernel once the header length is known (open: after negotiation); the compiled
        record is the kernel's arguments and the queue's kick words (virtio_jit.rx_queue/tx_queue)."""
        k = virtio_jit if self.compiled else virtio_numpy
        bufs = self.bufs
        for q, rxq in enumerate(self._rx):
            pool = self._pools.get(q)
            if pool is not None:
                stack, top = pool.free_stack()
                args = (rxq.desc, rxq.avail, rxq.used_hdr, rxq.used_ring, rxq.slot_buf, rxq.state, bufs.length,
                        self._data_addr, stack, top, self._bad)
                rxq.burst = functools.partial(k.rx_burst, *args)
                rxq.record = (*args, rxq.kick, rxq.kick_cell)
        for q, txq in enumerate(self._tx):
            hlen = int(txq.state[V.QSTATE_HDR_LEN])
            hdr = bufs.raw[:, PKTBUF_HEADROOM - hlen:PKTBUF_HEADROOM]
            args = (txq.desc, txq.avail, txq.used_hdr, txq.used_ring, txq.slot_buf, txq.state, txq.free_ids,
                    bufs.length, self._data_addr, hdr, self._freed[q], self._lohi, self._error, bufs.max_data)
            txq.burst = functools.partial(k.tx_burst, *args)
            txq.record = (*args, txq.kick, txq.kick_cell)
        self.refresh_kicks()

    def refresh_kicks(self) -> None:
        """Tell each queue's kick words how this process notifies it (the transport's kick_target; a transport
        without one cannot notify: KICK_NONE).  A transport that made new kick file descriptors (a reconnected
        vhost-user backend) calls this again before it closes the old ones: the words change in place, so a
        compiled loop already bound to the record writes to the new descriptor."""
        target = getattr(self.transport, "kick_target", None)
        for q in self._rx + self._tx:
            where = int(q.state[V.QSTATE_NOTIFY])
            mode, fd, offset, cell = (V.KICK_NONE, -1, 0, None) if target is None else target(where & 0xFFFF,
                                                                                             where >> 16)
            q.kick[V.KICK_MODE], q.kick[V.KICK_FD], q.kick[V.KICK_OFFSET] = mode, fd, offset
            q.kick[V.KICK_VALUE], q.kick[V.KICK_ONE] = where & 0xFFFF, 1
            if cell is not None:
                q.kick_cell = cell
            if q.record is not None and q.record[-1] is not q.kick_cell:
                q.record = (*q.record[:-1], q.kick_cell)

    # ---- life cycle ---------------------------------------------------------------------
    @classmethod
    def arena_regions(cls, spec: PortSpec) -> list[RegionSize]:
        control = (VirtioQueue.arena_regions(spec.rx_ring_size, False) + [RegionSize(CTRL_CMD_BYTES, align=64)]
                   if spec.rx_queues > 1 else [])
        return ([r for _ in range(spec.rx_queues) for r in VirtioQueue.arena_regions(spec.rx_ring_size, False)]
                + [r for _ in range(spec.tx_queues) for r in VirtioQueue.arena_regions(spec.tx_ring_size, True)]
                + control)

    @classmethod
    def open(cls, spec: PortSpec, arena: Arena, bufs: PacketBuffers, rx_pools: list[Mempool],
             tx_done: TxDone | None = None, sysfs_root: str = "/sys", sleep=time.sleep,
             hot_path: str | None = None, **_ignored) -> VirtioDevice:
        """Take the virtio-net function at spec.address, reset and initialise it, fill the RX queues."""
        check_opening(spec, rx_pools, hot_path)
        simulated = spec.driver == "sim"
        for what, a in (("device", arena), ("packet", bufs.arena)):
            if not a.physical or (not simulated and not a.hugepages):
                raise DeviceError(f"port {spec.name!r}: the {what} arena {a.name} has no physical addresses "
                                  "(not on hugepages); a virtio device would DMA to random memory")
        t = virtio_pci.open_transport(spec.address, sysfs_root, spec.options.get("transport", "auto"), simulated,
                                      sleep, exclusive=True, require_root=not simulated)
        dev = cls.start(spec, t, arena, bufs, rx_pools, tx_done, hot_path)
        t.share()
        return dev

    @classmethod
    def start(cls, spec: PortSpec, t, arena: Arena, bufs: PacketBuffers, rx_pools: list[Mempool],
              tx_done: TxDone | None, hot_path: str | None) -> VirtioDevice:
        """Initialise the device behind the transport ``t`` just opened; on failure the RX buffers go back to
        their pools and ``t`` is closed."""
        dev = None
        try:
            dev = cls(spec, t, arena, bufs, dict(enumerate(rx_pools)), tx_done, create=True, owner=True,
                      hot_path=hot_path)
            dev.init_device(bool(spec.options.get("mrg_rxbuf", True)))
        except BaseException:
            if dev is not None:
                dev._return_ring_buffers()
            t.close()
            raise
        return dev

    @classmethod
    def attach(cls, spec: PortSpec, arena: Arena, bufs: PacketBuffers, rx_pools: dict[int, Mempool] | None,
               tx_done: TxDone | None = None, sysfs_root: str = "/sys", sleep=time.sleep,
               hot_path: str | None = None, **_ignored) -> VirtioDevice:
        """Reach the function another process opened and find its virtqueues in the arena (no reset)."""
        check_spec(spec)
        for q in rx_pools or {}:
            if not 0 <= q < spec.rx_queues:
                raise DeviceError(f"port {spec.name!r} has RX queues 0..{spec.rx_queues - 1}, no queue {q}")
        t = virtio_pci.open_transport(spec.address, sysfs_root, spec.options.get("transport", "auto"),
                                      spec.driver == "sim", sleep, exclusive=False)
        try:
            dev = cls(spec, t, arena, bufs, dict(rx_pools or {}), tx_done, create=False, owner=False,
                      hot_path=hot_path)
            dev._mac = bytes(int(b) for b in dev._read_config_mac())
            dev._bind()
            return dev
        except BaseException:
            t.close()
            raise

    def init_device(self, mrg_rxbuf: bool) -> None:
        """3.1.1: reset, negotiate, set up every virtqueue, DRIVER_OK."""
        t, name = self.transport, self.name
        reset_device(t)
        self.features = negotiate_features(t, name, mrg_rxbuf, self.spec.rx_queues)
        confirm_features(t, name, self.features)
        hdr_len = V.net_hdr_len(self.features)
        for q in self._rx + self._tx:
            q.state[V.QSTATE_HDR_LEN] = hdr_len
        for pair, (rxq, txq) in enumerate(zip(self._rx, self._tx, strict=True)):
            fill_rx(rxq, self._pools[pair], self._data_addr, hdr_len, self.bufs.max_data)
            prepare_tx(txq)
            setup_queue(t, name, V.rx_queue_index(pair), rxq)
            setup_queue(t, name, V.tx_queue_index(pair), txq)
        if self._ctrl is not None:
            most = t.read("device", V.NET_CFG_MAX_PAIRS, 2)
            if len(self._rx) > most:
                raise DeviceError(f"port {name!r}: the device has at most {most} queue pairs, the port asks for "
                                  f"{len(self._rx)}")
            setup_queue(t, name, V.ctrl_queue_index(most, self.features), self._ctrl)
        driver_ok(t, name)
        if self._ctrl is not None:
            set_queue_pairs(t, name, self._ctrl, self._ctrl_cmd, self._ctrl_cmd_addr, len(self._rx))
        self._mac = self._read_config_mac()
        self._bind()
        log.debug("%s: virtio-net %s (%s), features %s, header %d bytes", name, self.spec.address, t.kind,
                  V.feature_names(self.features), hdr_len)

    def _read_config_mac(self) -> bytes:
        return bytes(self.transport.read("device", V.NET_CFG_MAC + i, 1) for i in range(6))

    def _return_ring_buffers(self) -> None:
        for q, rxq in enumerate(self._rx):
            pool = self._pools.get(q)
            if pool is not None and rxq.state[V.QSTATE_AVAIL]:
                pool.free(rxq.slot_buf.copy())
                rxq.state[V.QSTATE_AVAIL] = 0

    def close(self) -> None:
        """Close the transport; the opener first resets the device so it writes no more into buffers."""
        if self.transport is None:
            return
        if self.owner:
            self.transport.set_status(0)
        for q in self._rx + self._tx:
            q.burst = q.record = None
            q.kick_cell = np.zeros(1, np.uint16)     # no view of a BAR left: the transport can unmap it
        self._rx, self._tx, self._ctrl, self._ctrl_cmd = [], [], None, None
        self.transport.close()
        self.transport = None

    # ---- receive ------------------------------------------------------------------------
    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        rxq = self._rx_queue(queue)
        got = rxq.burst(out)
        if got < 0:
            raise self._bad_used(queue)
        if got:
            if self._pools[queue].debug:     # the kernel popped fresh buffers into the used entries' descriptors
                last = int(rxq.state[V.QSTATE_LAST_USED])
                ids = rxq.used_ring[(last - got + np.arange(got)) & rxq.mask, 0]
                self._pools[queue].note_popped(rxq.slot_buf[ids])
            if not rxq.device_suppresses_notify():
                self._notify(rxq)
        return got

    def compiled_rx(self, queue: int):
        rxq = self._rx_queue(queue)
        if not self.compiled or self._pools[queue].debug:    # a debug pool learns of pops through rx_batch only
            return None
        return virtio_jit.rx_queue, rxq.record

    def compiled_tx(self, queue: int):
        txq = self._tx_queue(queue)
        if not self.compiled or self.tx_done is None:
            return None
        return virtio_jit.tx_queue, txq.record, self._freed[queue], txq.state, V.QSTATE_HANDING

    def rx_housekeeping(self, queue: int) -> None:
        """Kicks the compiled passes wanted but could not make (this process has no way to notify): the
        transport hears of them, as from rx_batch (a vhost-user stage process logs it once)."""
        q = self._rx[queue]
        if q.kick[V.KICK_MODE] == V.KICK_NONE and q.kick[V.KICK_WANTED] != q.kicks_reported:
            q.kicks_reported = int(q.kick[V.KICK_WANTED])
            self._notify(q)

    def _notify(self, q: VirtioQueue) -> None:
        where = int(q.state[V.QSTATE_NOTIFY])
        self.transport.notify(where & 0xFFFF, where >> 16)

    def _bad_used(self, queue: int) -> DeviceError:
        kind, where, what, length = (int(v) for v in self._bad)
        if kind == virtio_numpy.RX_BAD_COUNT:
            why = f"used.idx {where} is {what} entries ahead of the driver, more than the ring holds"
        elif kind == virtio_numpy.RX_BAD_ID:
            why = f"used entry {where} names descriptor {what}, past the ring"
        else:
            why = f"used entry {where} (descriptor {what}) has length {length}, not a header plus a frame"
        return DeviceError(f"{self.name} RX queue {queue}: {why}")

    def _rx_queue(self, queue: int) -> VirtioQueue:
        try:
            rxq = self._rx[queue]
        except (IndexError, TypeError):
            raise DeviceError(f"{self.name}: no RX queue {queue} (the port has {len(self._rx)})") from None
        if rxq.burst is None:
            raise DeviceError(f"{self.name}: RX queue {queue} was attached without its mempool")
        return rxq

    def rx_held(self, queue: int) -> np.ndarray:
        return self._rx[queue].slot_buf.copy()

    # ---- transmit -----------------------------------------------------------------------
    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        txq = self._tx_queue(queue)
        if self.tx_done is None:
            self.check_tx_done(queue)
        r = txq.burst(bufs)
        if r < 0:
            self._hand_back(queue, virtio_numpy.TX_ERROR - r)
            kind, position = int(self._error[0]), int(self._error[1])
            if kind == virtio_numpy.TX_BAD_INDEX:
                raise DeviceError(f"{self.name} TX queue {queue}: buffer index {int(bufs[position])} is out of "
                                  f"range (the arena has {self.bufs.count} packet buffers)")
            b = int(bufs[position])
            raise DeviceError(f"{self.name} TX queue {queue}: buffer {b} has length {int(self.bufs.length[b])}; a "
                              f"packet must be 1..{self.bufs.max_data} bytes")
        self._hand_back(queue, r >> 32)
        posted = r & 0xFFFFFFFF
        if posted and not txq.device_suppresses_notify():
            self._notify(txq)
        return posted

    def _hand_back(self, queue: int, cleaned: int) -> None:
        if not cleaned:
            return
        freed = self._freed[queue][:cleaned]
        if self._home_range is not None:
            lo, hi = self._lohi.tolist()
            self._home_range(freed, lo, hi)
        else:
            self.tx_done(freed.copy())
        self._tx[queue].state[V.QSTATE_HANDING] = 0

    def _tx_queue(self, queue: int) -> VirtioQueue:
        try:
            return self._tx[queue]
        except (IndexError, TypeError):
            raise DeviceError(f"{self.name}: no TX queue {queue} (the port has {len(self._tx)})") from None

    def tx_pending(self, queue: int) -> int:
        txq = self._tx_queue(queue)
        return txq.entries - int(txq.state[V.QSTATE_FREE_TOP])

    def tx_posted(self, queue: int) -> int | None:
        return int(self._tx_queue(queue).state[V.QSTATE_POSTED])

    def tx_sent_in_hand(self, queue: int) -> int:
        return int(self._tx_queue(queue).state[V.QSTATE_HANDING])

    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        txq = self._tx_queue(queue)
        polls = max(1, int(timeout / DRAIN_POLL_INTERVAL))
        for attempt in range(polls + 1):
            if self.tx_pending(queue) == 0:
                return 0
            self.check_tx_done(queue)
            self._hand_back(queue, txq.burst(_NOTHING) >> 32)
            if self.tx_pending(queue) == 0:
                return 0
            if attempt < polls:
                self.transport.sleep(DRAIN_POLL_INTERVAL)     # (a test steps the software device here)
        pending = self.tx_pending(queue)
        log.warning("%s TX queue %d: %d descriptors still pending after %g s", self.name, queue, pending, timeout)
        return pending

    # ---- control ------------------------------------------------------------------------
    def _counted(self) -> DeviceStats:
        rx = [q.state for q in self._rx]
        tx = [q.state for q in self._tx]
        return DeviceStats(rx_packets=sum(int(s[V.QSTATE_PACKETS]) for s in rx),
                           tx_packets=sum(int(s[V.QSTATE_PACKETS]) for s in tx),
                           rx_bytes=sum(int(s[V.QSTATE_BYTES]) for s in rx),
                           tx_bytes=sum(int(s[V.QSTATE_BYTES]) for s in tx))

    def read_stats(self) -> DeviceStats:
        """The driver's own counts (virtio-net has no statistics registers): frames received, frames posted."""
        return self._counted() - self._baseline

    def reset_stats(self) -> None:
        self._baseline = self._counted()

    def set_promisc(self, on: bool) -> None:
        """Without CTRL_RX a virtio-net device delivers every frame: promiscuous is its only mode."""

    def link_state(self) -> LinkState:
        if not self.features & V.bit(V.F_STATUS) and self.owner:
            return LinkState(True, LINK_SPEED_MBIT)       # 5.1.4: without STATUS the link is assumed up
        up = bool(self.transport.read("device", V.NET_CFG_STATUS, 2) & V.NET_S_LINK_UP)
        return LinkState(up, LINK_SPEED_MBIT if up else 0)

    @property
    def mac(self) -> bytes:
        return self._mac


__all__ = ["VirtioDevice", "VirtioQueue"]
