"""One software virtio-net device: watches its virtio-PCI registers, serves split virtqueues by DMA.

``SimVirtioPort`` offers the interface the world drives (``step``,
``receive``, ``rx_free``, ``rx_ready``, ``classify``, the counters and
``faults``, ``wire_out``) like the software 82599 (model.py), behind one of
two transports: **legacy** (device 0x1000, the I/O BAR0 as ``resource0``) or
**modern** (device 0x1041, the common, notify, ISR and device structures in
BAR4, named by vendor capabilities in config space).  It offers VERSION_1
(modern) or ANY_LAYOUT (legacy), MAC, STATUS and MRG_RXBUF, and with
``queue_pairs`` > 1 MQ and CTRL_VQ: queue 2k receives and 2k+1 transmits for
pair k, the control queue comes last and takes MQ_VQ_PAIRS_SET; frames are
steered to a pair by the Toeplitz hash of their IPv4 5-tuple (the flow
always reaches the same RX queue).  Every virtqueue has ``queue_size``
entries at most.
The device polls, so it sets USED_F_NO_NOTIFY in every used ring and never
raises an interrupt.

``step()`` reacts to the registers (status 0 resets the device, FEATURES_OK
is refused for features it does not offer, DRIVER_OK brings the configured
queues up) and transmits: each available TX chain is gathered, its
virtio_net_hdr checked and its frame put on the wire, then a used entry.
Frames from the wire (``receive``) go into the chains of the RX queue's
available entries, header first (num_buffers 1 with the 12-byte header),
with a used entry (head, bytes written); with no available entry a frame is
missed.

Strict, like the 82599 model: a queue whose rings are not inside the
driver's registered memory, an available entry or a ``next`` past the ring,
a chain that loops, a device-writable descriptor in a TX chain (device-
readable in an RX chain), INDIRECT without negotiating it, a TX header that
asks for checksum or segmentation offload not negotiated, a TX frame not
1..SIM_MAX_FRAME bytes, an RX chain too small for the header and the frame,
and avail.idx running more than the ring ahead are :class:`Fault`\\ s: logged,
recorded, and the queue stops until the device is reset; nothing is
published for the bad entry.  Features accepted that were not offered are a
fault too (modern: FEATURES_OK does not stay set; legacy: DEVICE_NEEDS_RESET).

Where it differs from a device in a machine: it cannot trap register
accesses, only see their latest values.  Registers multiplexed behind a
select (queue_select, the feature selects) are therefore served as a mirror:
each step the model takes the values the driver wrote for the queue it last
showed, and shows the newly selected queue's; a driver must let the model
step between selections (the driver's ``settle``, after the step counter at
virtio_regs.SIM_*_STEPS).  Without MRG_RXBUF a frame is never split over
buffers, with it neither (``num_buffers`` is always 1): a chain too small is
a fault, not a merge.  The control queue knows MQ_VQ_PAIRS_SET only (others
are acked with VIRTIO_NET_ERR).  No interrupts.

Two implementations of the walks (``hot_path``): the numpy reference here
(``tx_walk_numpy``/``rx_walk_numpy``, array by array over the entries and
chain depth, ``sim/virtio_walks.py``) and the numba one
(``sim/virtio_kernels.py``); both give the same frames, rings, counters and
faults.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ixypipe.nic import virtio_regs as V
from ixypipe.nic.registers import (
    PCI_CFG_COMMAND,
    PCI_COMMAND_BUS_MASTER,
    RSS_DEFAULT_KEY,
    RSS_FIELDS_IPV4,
)
from ixypipe.sim import virtio_kernels as K
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.model import HOT_PATHS, Fault
from ixypipe.sim.payload import SIM_MAX_FRAME
from ixypipe.sim.rss import RETA_INDEX_MASK, Rss
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.virtio_walks import rx_walk_numpy, tx_walk_numpy

log = logging.getLogger(__name__)

MAX_TX_BATCH = 1024
TX_ROW_WIDTH = 128          # the compiled TX walk's first row width; rows widen (WIDER) up to SIM_MAX_FRAME
TRANSPORTS = ("legacy", "modern")
OFFERED_COMMON = V.bit(V.F_MAC) | V.bit(V.F_STATUS) | V.bit(V.F_MRG_RXBUF)
OFFERED = {"legacy": OFFERED_COMMON | V.bit(V.F_ANY_LAYOUT), "modern": OFFERED_COMMON | V.bit(V.F_VERSION_1)}
DEVICE_ID = {"legacy": V.DEVICE_ID_NET_TRANSITIONAL, "modern": V.DEVICE_ID_NET_MODERN}

REASONS = {
    K.BAD_HEAD: "available entry {pos} names descriptor {desc}, past the {n}-entry ring",
    K.BAD_NEXT: "descriptor {desc}'s next is {addr}, past the {n}-entry ring",
    K.LOOP: "the descriptor chain from {desc} loops (longer than the {n}-entry ring)",
    K.INDIRECT: "descriptor {desc} is INDIRECT, but RING_INDIRECT_DESC was not negotiated",
    K.BAD_ADDRESS: "buffer [{addr:#x}, +{extra}) of descriptor {desc} is {outside}",
    K.NO_CSUM: "the virtio_net_hdr of the chain at {desc} asks for NEEDS_CSUM, but CSUM was not negotiated",
    K.NO_GSO: "the virtio_net_hdr of the chain at {desc} asks for segmentation (gso_type {addr}), but no "
              "HOST_TSO/UFO feature was negotiated",
    K.BAD_LENGTH: "the chain at {desc} carries a {addr}-byte frame after the header; a frame is 1..{maxf} bytes",
    K.TOO_SMALL: "the chain at {desc} holds {addr} bytes, too few for the {hdr}-byte header and a {extra}-byte "
                 "frame (frames are not split over buffers)",
}
DIRECTION_REASON = {"tx": "descriptor {desc} is device-writable (WRITE) in a transmit chain",
                    "ctrl": "",
                    "rx": "descriptor {desc} is device-readable (no WRITE) in a receive chain"}


def _u(view: np.ndarray, off: int, size: int) -> int:
    return int(view[off:off + size].view(f"<u{size}")[0])


def _put(view: np.ndarray, off: int, size: int, value: int) -> None:
    view[off:off + size].view(f"<u{size}")[0] = value


@dataclass
class VirtQueue:
    index: int
    size: int = 0               # as the driver set it (modern) or the device's (legacy)
    desc_addr: int = 0
    avail_addr: int = 0
    used_addr: int = 0
    enabled: bool = False
    live: bool = False
    faulted: bool = False
    last_avail: int = 0
    desc: np.ndarray | None = None
    avail: np.ndarray | None = None
    used_hdr: np.ndarray | None = None
    used_ring: np.ndarray | None = None

    def drop_views(self) -> None:
        self.desc = self.avail = self.used_hdr = self.used_ring = None
        self.live = False


class SimVirtioPort:
    """The virtio-net device behind one fake PCI function (``bar``: resource0 or resource4 as uint8)."""

    def __init__(self, name: str, transport: str, bar: np.ndarray, mac: bytes, dma: DmaSpace,
                 config: np.ndarray | None = None, queue_size: int = V.SIM_DEFAULT_QUEUE_SIZE, hot_path: str = "auto",
                 queue_pairs: int = 1):
        if transport not in TRANSPORTS:
            raise ValueError(f"port {name}: virtio transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        if hot_path not in HOT_PATHS:
            raise ValueError(f"hot_path must be one of {', '.join(HOT_PATHS)}, got {hot_path!r}")
        if hot_path == "numba" and not K.AVAILABLE:
            raise ValueError("hot_path numba needs the numba package (pip install numba)")
        if not V.MIN_QUEUE_SIZE <= queue_size <= V.MAX_QUEUE_SIZE or queue_size & (queue_size - 1):
            raise ValueError(f"port {name}: virtio queue size must be a power of two from {V.MIN_QUEUE_SIZE} to "
                             f"{V.MAX_QUEUE_SIZE}, got {queue_size}")
        self.name = name
        self.transport = transport
        self.bar = bar
        self.mac = bytes(mac)
        self.dma = dma
        self.config = config
        self.queue_size = queue_size
        self.walks = K if hot_path != "numpy" and K.AVAILABLE else None
        if self.walks is not None:
            K.warm()
        self.kernels = None             # the 82599's compiled generator path (world.py) does not apply
        self.compiled = self.walks is not None
        if not 1 <= queue_pairs <= V.MAX_QUEUE_PAIRS:
            raise ValueError(f"port {name}: virtio queue pairs must be 1..{V.MAX_QUEUE_PAIRS}, got {queue_pairs}")
        self.max_pairs = queue_pairs
        self.offered = OFFERED[transport] | (V.bit(V.F_MQ) | V.bit(V.F_CTRL_VQ) if queue_pairs > 1 else 0)
        self.rss = Rss()
        self.wire_out: list = []
        self.faults: list[Fault] = []
        self.rx_delivered = self.rx_bytes = self.rx_missed = 0
        self.rx_undersize = self.rx_oversize = 0          # virtio-net has no MAC length checks: always 0
        self.tx_sent = self.tx_bytes = 0
        self.steps = 0
        self._info = np.zeros(8, np.int64)
        self._hb = np.zeros(V.NET_HDR_MRG_LEN, np.uint8)
        self._out = None
        if transport == "legacy":
            self.regs = bar[:V.LEGACY_DEVICE_CONFIG]
            self.devcfg = bar[V.LEGACY_DEVICE_CONFIG:V.LEGACY_DEVICE_CONFIG + V.NET_CFG_SIZE]
            self.steps_at = V.SIM_LEGACY_STEPS
        else:
            self.regs = bar[V.SIM_COMMON_OFF:V.SIM_COMMON_OFF + V.COMMON_SIZE]
            self.devcfg = bar[V.SIM_DEVICE_OFF:V.SIM_DEVICE_OFF + V.NET_CFG_SIZE]
            self.steps_at = V.SIM_MODERN_STEPS
        self.power_on()

    # ---- reset and registers ---------------------------------------------------------------
    def power_on(self) -> None:
        """Registers at their reset values, device config (MAC, link up), every queue down."""
        self.bar[:] = 0
        self.devcfg[V.NET_CFG_MAC:V.NET_CFG_MAC + 6] = np.frombuffer(self.mac, np.uint8)
        _put(self.devcfg, V.NET_CFG_STATUS, 2, V.NET_S_LINK_UP)
        _put(self.devcfg, V.NET_CFG_MAX_PAIRS, 2, self.max_pairs)
        self._device_reset()

    def _device_reset(self) -> None:
        """Status 0 written: features, queues and the mirrors back to their reset values."""
        control = 1 if self.offered & V.bit(V.F_CTRL_VQ) else 0
        self.queues = [VirtQueue(i) for i in range(2 * self.max_pairs + control)]
        self.pairs = 1                      # 5.1.6.5.5: queue pair 0 only, until MQ_VQ_PAIRS_SET
        self.features = 0
        self._running = False
        self._features_checked = False
        self._in_reset = True
        self._gf = [0, 0]
        regs = self.regs
        if self.transport == "legacy":
            _put(regs, V.LEGACY_DEVICE_FEATURES, 4, self.offered & 0xFFFFFFFF)
            _put(regs, V.LEGACY_DRIVER_FEATURES, 4, 0)
            _put(regs, V.LEGACY_QUEUE_SELECT, 2, 0)
            self._show_queue(0)
        else:
            for off, size in ((V.COMMON_DFSELECT, 4), (V.COMMON_GFSELECT, 4), (V.COMMON_GF, 4), (V.COMMON_Q_SELECT, 2)):
                _put(regs, off, size, 0)
            _put(regs, V.COMMON_DF, 4, self.offered & 0xFFFFFFFF)
            _put(regs, V.COMMON_NUMQ, 2, len(self.queues))
            self._dfsel = self._gfsel = 0
            self._show_queue(0)
        self._snapshot = regs.tobytes()

    def _show_queue(self, sel: int) -> None:
        """What reads of the per-queue registers return while queue ``sel`` is selected."""
        regs = self.regs
        q = self.queues[sel] if sel < len(self.queues) else None
        self._sel = sel
        if self.transport == "legacy":
            _put(regs, V.LEGACY_QUEUE_SIZE, 2, self.queue_size if q else 0)
            _put(regs, V.LEGACY_QUEUE_PFN, 4, (q.desc_addr >> V.LEGACY_PFN_SHIFT) if q else 0)
            return
        _put(regs, V.COMMON_Q_SIZE, 2, (q.size or self.queue_size) if q else 0)
        _put(regs, V.COMMON_Q_ENABLE, 2, int(q.enabled) if q else 0)
        _put(regs, V.COMMON_Q_NOFF, 2, sel if q else 0)
        for off, value in ((V.COMMON_Q_DESC, q.desc_addr if q else 0), (V.COMMON_Q_AVAIL, q.avail_addr if q else 0),
                           (V.COMMON_Q_USED, q.used_addr if q else 0)):
            _put(regs, off, 8, value)

    def _config_fault(self, reason: str) -> None:
        fault = Fault(self.name, "config", -1, -1, 0, reason)
        self.faults.append(fault)
        log.error("virtio device fault: %s", fault)

    def _control(self) -> int:
        """React to what the driver wrote since the last step (one comparison when nothing changed)."""
        regs = self.regs
        now = regs.tobytes()
        if now == self._snapshot:
            return 0
        status_off = V.LEGACY_STATUS if self.transport == "legacy" else V.COMMON_STATUS
        status = int(regs[status_off])
        if status == 0:
            if not self._in_reset:
                self._device_reset()
            self._snapshot = regs.tobytes()
            return 1
        self._in_reset = False
        if self.transport == "legacy":
            self._legacy_writes()
        else:
            self._modern_writes(status)
        status = int(regs[status_off])
        if status & V.STATUS_DRIVER_OK and not self._running and not status & V.STATUS_NEEDS_RESET:
            self._start(status_off)
        self._snapshot = regs.tobytes()
        return 1

    def _legacy_writes(self) -> None:
        regs = self.regs
        pfn = _u(regs, V.LEGACY_QUEUE_PFN, 4)
        q = self.queues[self._sel] if self._sel < len(self.queues) else None
        if q is not None and pfn != q.desc_addr >> V.LEGACY_PFN_SHIFT and not self._running:
            q.desc_addr = pfn << V.LEGACY_PFN_SHIFT
            q.size = self.queue_size
            q.avail_addr = q.desc_addr + V.avail_offset(q.size)
            q.used_addr = q.desc_addr + V.used_offset(q.size)
            q.enabled = pfn != 0
        sel = _u(regs, V.LEGACY_QUEUE_SELECT, 2)
        if sel != self._sel:
            self._show_queue(sel)
        self.features = _u(regs, V.LEGACY_DRIVER_FEATURES, 4)

    def _modern_writes(self, status: int) -> None:
        regs = self.regs
        gf = _u(regs, V.COMMON_GF, 4)
        if self._gfsel < 2:
            self._gf[self._gfsel] = gf
        gfsel = _u(regs, V.COMMON_GFSELECT, 4)
        if gfsel != self._gfsel:
            self._gfsel = gfsel
            _put(regs, V.COMMON_GF, 4, self._gf[gfsel] if gfsel < 2 else 0)
        dfsel = _u(regs, V.COMMON_DFSELECT, 4)
        if dfsel != self._dfsel:
            self._dfsel = dfsel
            _put(regs, V.COMMON_DF, 4, (self.offered >> (32 * dfsel)) & 0xFFFFFFFF if dfsel < 2 else 0)
        self.features = self._gf[0] | self._gf[1] << 32
        q = self.queues[self._sel] if self._sel < len(self.queues) else None
        if q is not None and not self._running:
            q.size = _u(regs, V.COMMON_Q_SIZE, 2)
            q.desc_addr = _u(regs, V.COMMON_Q_DESC, 8)
            q.avail_addr = _u(regs, V.COMMON_Q_AVAIL, 8)
            q.used_addr = _u(regs, V.COMMON_Q_USED, 8)
            q.enabled = _u(regs, V.COMMON_Q_ENABLE, 2) == 1
        sel = _u(regs, V.COMMON_Q_SELECT, 2)
        if sel != self._sel:
            self._show_queue(sel)
        if status & V.STATUS_FEATURES_OK and not self._features_checked:
            self._features_checked = True
            why = self._features_problem()
            if why:
                regs[V.COMMON_STATUS] = status & ~V.STATUS_FEATURES_OK     # 3.1.1: the device refuses
                self._config_fault(why)

    def _features_problem(self) -> str:
        extra = self.features & ~self.offered
        if extra:
            return f"the driver accepted features the device does not offer: {V.feature_names(extra)}"
        if self.transport == "modern" and not self.features & V.bit(V.F_VERSION_1):
            return "a modern driver must accept VERSION_1"
        return ""

    def _start(self, status_off: int) -> None:
        """DRIVER_OK: the configured queues go live (their rings must be inside registered memory)."""
        why = self._features_problem() if self.transport == "legacy" else ""
        if self.transport == "modern" and not self.regs[status_off] & V.STATUS_FEATURES_OK:
            why = "DRIVER_OK without FEATURES_OK"
        if why:
            self._config_fault(why)
            self.regs[status_off] |= V.STATUS_NEEDS_RESET
            return
        self._running = True
        ctrl = V.ctrl_queue_index(self.max_pairs, self.features) if self.features & V.bit(V.F_CTRL_VQ) else -1
        for q in self.queues:
            if not q.enabled:
                continue
            direction = "ctrl" if q.index == ctrl else "rx" if q.index % 2 == 0 else "tx"
            if q.index >= 2 and q.index != ctrl and not self.features & V.bit(V.F_MQ):
                self._fault(q, direction, -1, q.desc_addr, f"virtqueue {q.index} is enabled, but MQ was not "
                            "negotiated (without it only queues 0 and 1, and the control queue 2, exist)")
                continue
            n = q.size
            if not V.MIN_QUEUE_SIZE <= n <= self.queue_size or n & (n - 1):
                self._fault(q, direction, -1, q.desc_addr, f"queue size {n} is not a power of two up to "
                            f"{self.queue_size}")
                continue
            parts = (self.dma.ring(q.desc_addr, n * V.DESC_SIZE, "<u8"),
                     self.dma.ring(q.avail_addr, V.RING_HEADER + 2 * n + 2, "<u2"),
                     self.dma.ring(q.used_addr, V.RING_HEADER + V.USED_ELEM_SIZE * n, "<u4"))
            for what, part, addr in zip(("descriptor table", "available ring", "used ring"), parts,
                                        (q.desc_addr, q.avail_addr, q.used_addr), strict=True):
                if part is None:
                    self._fault(q, direction, -1, addr, f"the {what} at {addr:#x} is {self.dma.outside}")
                    break
            else:
                q.desc = parts[0].reshape(n, 2)
                q.avail = parts[1]
                q.used_hdr = parts[2][:1].view("<u2")
                q.used_ring = parts[2][1:1 + 2 * n].reshape(n, 2)
                q.used_hdr[0] = V.USED_F_NO_NOTIFY          # a polling device: notifications are not needed
                q.last_avail = 0
                q.live = True

    def _fault(self, q: VirtQueue, direction: str, descriptor: int, address: int, reason: str) -> None:
        fault = Fault(self.name, direction, q.index, descriptor, address, reason)
        self.faults.append(fault)
        log.error("DMA fault: %s; queue stopped", fault)
        q.drop_views()
        q.faulted = True

    def _bus_master(self) -> bool:
        return self.config is None or bool(int(self.config[PCI_CFG_COMMAND]) & PCI_COMMAND_BUS_MASTER)

    # ---- the step -------------------------------------------------------------------------
    def step(self) -> int:
        work = self._control()
        if self._running and self._bus_master():
            for txq in self.queues[1:2 * self.max_pairs:2]:
                if txq.live:
                    work += self._transmit(txq)
            if len(self.queues) > 2 * self.max_pairs and self.queues[-1].live:
                work += self._control_queue(self.queues[-1])
        self.steps += 1
        _put(self.bar, self.steps_at, 4, self.steps & 0xFFFFFFFF)
        return work

    def link_is_up(self) -> bool:
        return bool(_u(self.devcfg, V.NET_CFG_STATUS, 2) & V.NET_S_LINK_UP)

    def _hdr_len(self) -> int:
        return V.net_hdr_len(self.features)

    def _allow(self) -> int:
        f = self.features
        return ((K.ALLOW_INDIRECT if f & V.bit(V.F_RING_INDIRECT_DESC) else 0)
                | (K.ALLOW_CSUM if f & V.bit(V.F_CSUM) else 0) | (K.ALLOW_GSO if f & V.bit(V.F_HOST_TSO4) else 0))

    def _pending(self, q: VirtQueue, direction: str) -> int:
        """Available entries the device has not taken; a driver running ahead by more than the ring faults."""
        ahead = (int(q.avail[1]) - q.last_avail) & 0xFFFF
        if ahead > len(q.desc):
            self._fault(q, direction, -1, q.avail_addr, f"avail.idx {int(q.avail[1])} is {ahead} entries ahead of "
                        f"the device's {q.last_avail}: more than the {len(q.desc)}-entry ring")
            return 0
        return ahead

    def _walk_fault(self, q: VirtQueue, direction: str, info: np.ndarray) -> None:
        reason, pos, desc, addr, extra = (int(v) for v in (info[0], info[1], info[2], info[3], info[6]))
        if reason == K.TOO_SMALL:
            extra = int(info[4])
        template = DIRECTION_REASON[direction] if reason == K.WRONG_DIRECTION else REASONS[reason]
        text = template.format(pos=q.last_avail, desc=desc, addr=addr, extra=extra,
                               n=len(q.desc), outside=self.dma.outside, maxf=SIM_MAX_FRAME, hdr=self._hdr_len())
        self._fault(q, direction, desc, addr if reason in (K.BAD_ADDRESS, K.INDIRECT, K.WRONG_DIRECTION) else 0, text)

    # ---- transmit -------------------------------------------------------------------------
    def _transmit(self, q: VirtQueue) -> int:
        pending = min(self._pending(q, "tx"), MAX_TX_BATCH)
        done = 0
        while pending:
            good = self._transmit_walk(q, pending)
            done += good
            pending -= good
            if self._info[0] == K.WIDER:        # a frame wider than the rows so far: wider rows, go on
                self._widen(int(self._info[3]))
                continue
            # a foreign driver may have mapped more memory since the table was read: read it again, then retry
            if self._info[0] != K.BAD_ADDRESS or not pending or not self.dma.after_miss():
                break
        if self._info[0] != K.OK:
            self._walk_fault(q, "tx", self._info)
        return done

    def _transmit_walk(self, q: VirtQueue, pending: int) -> int:
        info = self._info
        info[:] = 0
        if self.walks is not None:
            if self._out is None:
                self._widen(TX_ROW_WIDTH)
            out, lengths = self._out
            base, size, owner, offset, bufs = self.dma.kernel_tables()
            good = self.walks.tx_walk(q.desc, q.avail, q.used_hdr, q.used_ring, q.last_avail, pending, self._hdr_len(),
                                      self._allow(), base, size, owner, offset, bufs, out, lengths, self._hb,
                                      SIM_MAX_FRAME, info)
            batch = PacketBatch(out[:good, :int(info[4])], lengths[:good].copy()) if good else None
        else:
            good, batch = tx_walk_numpy(q, pending, self._hdr_len(), self._allow(), self.dma, info)
        if good:
            q.last_avail = (q.last_avail + good) & 0xFFFF
            for deliver in self.wire_out:
                deliver(batch)
            self.tx_sent += good
            self.tx_bytes += int(batch.lengths.sum())
        return good

    def _widen(self, frame: int) -> None:
        """Rows for the compiled TX walk at least ``frame`` bytes wide (doubling, at most SIM_MAX_FRAME): frames
        sit close together, so a batch of small ones stays in a few pages."""
        width = TX_ROW_WIDTH if self._out is None else self._out[0].shape[1]
        while width < frame:
            width = min(2 * width, SIM_MAX_FRAME)
        self._out = (np.zeros((MAX_TX_BATCH, width), np.uint8), np.zeros(MAX_TX_BATCH, np.int64))

    # ---- receive --------------------------------------------------------------------------
    def rx_ready(self) -> bool:
        return self._bus_master() and any(q.live for q in self.queues[0:2 * self.pairs:2])

    def rx_free(self) -> np.ndarray:
        """Available entries per RX queue (queue pair k's receiveq), 0 where it is not live."""
        free = np.zeros(self.max_pairs, np.int64)
        for k in range(self.pairs):
            q = self.queues[2 * k]
            if q.live:
                free[k] = self._pending(q, "rx")
        return free

    def classify(self, batch: PacketBatch) -> tuple[np.ndarray, np.ndarray]:
        """The queue pair of every frame (5.1.6.5.5: steered by flow; here the Toeplitz hash of its IPv4 5-tuple
        with the usual key, modulo the pairs in use) and that hash."""
        if self.pairs == 1 or len(batch) == 0:
            return np.zeros(len(batch), np.int64), np.zeros(len(batch), np.uint32)
        hashes = self.rss.hash(batch.data, RSS_FIELDS_IPV4, RSS_DEFAULT_KEY)
        return ((hashes & np.uint32(RETA_INDEX_MASK)) % self.pairs).astype(np.int64), hashes

    def receive(self, batch: PacketBatch, queues=None, hashes=None) -> int:
        """Frames arriving from the wire; returns how many were delivered (the rest are missed)."""
        n = len(batch)
        if n == 0:
            return 0
        if not self.rx_ready():
            self.rx_missed += n
            return 0
        if queues is None:
            queues, hashes = self.classify(batch)
        if self.pairs == 1 or (queues == queues[0]).all():
            return self._receive_queue(self.queues[2 * int(queues[0])], batch)
        return sum(self._receive_queue(self.queues[2 * int(k)], batch.take(np.flatnonzero(queues == k)))
                   for k in np.unique(queues))

    def _receive_queue(self, q: VirtQueue, batch: PacketBatch) -> int:
        n = len(batch)
        if not q.live:
            self.rx_missed += n
            return 0
        take = min(n, self._pending(q, "rx"))
        good = 0
        info = self._info
        info[:] = 0
        while good < take:
            got = self._receive_walk(q, batch, good, take - good)
            good += got
            if info[0] != K.BAD_ADDRESS or good == take or not self.dma.after_miss():
                break
        if info[0] != K.OK:
            self._walk_fault(q, "rx", info)
        self.rx_missed += n - good
        return good

    # ---- the control virtqueue (5.1.6.5): rare, so plain Python over the chain --------------------------------
    def _control_queue(self, q: VirtQueue) -> int:
        pending = self._pending(q, "ctrl")
        for _ in range(pending):
            head = int(q.avail[2 + (q.last_avail & (len(q.desc) - 1))])
            parts = self._ctrl_chain(q, head)
            if parts is None:
                return 1
            readable = b"".join(bytes(self.dma.bufs[a][o:o + n]) for a, o, n, w in parts if not w)
            writable = [(a, o, n) for a, o, n, w in parts if w]
            if len(readable) < V.CTRL_HDR_LEN or not writable:
                self._fault(q, "ctrl", head, 0, "a control command needs a class and command byte and a "
                            "device-writable ack byte")
                return 1
            ack = V.CTRL_ERR
            cls, cmd, data = readable[0], readable[1], readable[V.CTRL_HDR_LEN:]
            if cls == V.CTRL_NET_MQ and cmd == V.CTRL_MQ_VQ_PAIRS_SET and len(data) >= 2:
                want = int.from_bytes(data[:2], "little")
                if self.features & V.bit(V.F_MQ) and 1 <= want <= self.max_pairs:
                    self.pairs = want
                    ack = V.CTRL_OK
                else:
                    log.warning("port %s: MQ_VQ_PAIRS_SET %d refused (MQ %s, at most %d pairs)", self.name, want,
                                "negotiated" if self.features & V.bit(V.F_MQ) else "not negotiated", self.max_pairs)
            a, o, _ = writable[-1]
            self.dma.bufs[a][o] = ack
            used = int(q.used_hdr[1])
            q.used_ring[used & (len(q.desc) - 1)] = (head, 1)
            q.used_hdr[1] = (used + 1) & 0xFFFF
            q.last_avail = (q.last_avail + 1) & 0xFFFF
        return pending

    def _ctrl_chain(self, q: VirtQueue, head: int) -> list | None:
        """(arena, offset, length, device-writable) of each descriptor of the chain at ``head``; None after a fault."""
        n = len(q.desc)
        parts, d = [], head
        for _ in range(n + 1):
            if d >= n:
                self._fault(q, "ctrl", d, 0, f"descriptor {d} is past the {n}-entry ring")
                return None
            w1 = int(q.desc[d, 1])
            addr, length, flags = int(q.desc[d, 0]), w1 & 0xFFFFFFFF, (w1 >> 32) & 0xFFFF
            ok, arena, offset = self.dma.resolve([addr], [max(length, 1)])
            if not ok[0]:
                self._fault(q, "ctrl", d, addr, f"buffer [{addr:#x}, +{length}) of descriptor {d} is "
                            f"{self.dma.outside}")
                return None
            parts.append((int(arena[0]), int(offset[0]), length, bool(flags & V.DESC_F_WRITE)))
            if not flags & V.DESC_F_NEXT:
                return parts
            d = w1 >> 48
        self._fault(q, "ctrl", head, 0, f"the descriptor chain from {head} loops (longer than the {n}-entry ring)")
        return None

    def _receive_walk(self, q: VirtQueue, batch: PacketBatch, first: int, count: int) -> int:
        """Frames ``batch[first:first + count]`` into the RX queue's next available chains."""
        info = self._info
        info[:] = 0
        if self.walks is not None:
            base, size, owner, offset, bufs = self.dma.kernel_tables()
            good = self.walks.rx_walk(q.desc, q.avail, q.used_hdr, q.used_ring, q.last_avail, count,
                                      self._hdr_len(), self._allow(), base, size, owner, offset, bufs,
                                      batch.data, batch.lengths, first, info)
        else:
            part = batch if first == 0 else batch.take(slice(first, first + count))
            good = rx_walk_numpy(q, part, count, self._hdr_len(), self._allow(), self.dma, info)
        if good:
            q.last_avail = (q.last_avail + good) & 0xFFFF
            self.rx_delivered += good
            self.rx_bytes += int(info[5])
        return good

    def detach(self) -> None:
        for q in self.queues:
            q.drop_views()
        self.wire_out = []
        self.bar = self.config = self.regs = self.devcfg = None
