"""One software 82599 port: reacts to register writes in BAR0 and does the descriptor DMA.

``SimPort.step()`` looks at the registers the device reacts to and makes
progress on everything pending: CTRL.RST/LNK_RST (registers back to their
reset values, the bits self-clear; one step later EEC.ARD and
RDRXCTL.DMAIDONE come up), AUTOC.AN_RESTART after a reset (self-clears,
LINKS reads up at 10G), RXDCTL/TXDCTL.ENABLE (base and length are latched
and the queue goes live), and TX doorbells (TDT).  Frames arriving from the
wire (``receive``) go to the RX queue RSS picks, into the buffer at the
descriptor's address, with length, EOP and DD written back and RDH
advanced; without a free descriptor they are counted as missed.  Posted TX
descriptors are read, their frames go to the wire, DD is written back
where RS is set and TDH advances.  Nothing is DMAed while the PCI command
register's bus-master bit is clear.

Where the model differs from silicon:

* It cannot trap MMIO reads.  ENABLE in RXDCTL/TXDCTL therefore reads back
  set as soon as the driver wrote it; the model latches RDBAL/RDBAH/RDLEN
  (TDBAL/...) at the first step that sees the bit, which is after the
  driver wrote them, so the driver loses nothing by not waiting.
* Clear-on-read statistics (GPRC, GPTC, GORCL/H, GOTCL/H, MPC(0), ROC,
  RUC): the model counts internally and *latches* every
  ``stats_period_ns`` (1 s in the simulator process, by default): each latch overwrites the registers
  with the counts of the interval just ended.  A driver that reads and
  adds them ixy-style about once per period (ixy-fwd reads once a second)
  sees correct totals; reading twice within one period counts that
  interval twice, and an interval nobody read is lost.  The exact running
  totals are in the simulator's counters block (``PortCounters``).
  Octet counters count every frame with its 4-byte FCS, as silicon does
  (64 for a 60-byte frame), although the simulated wire carries none; the
  running totals (``rx_bytes``/``tx_bytes``) count frame bytes only.  A
  frame without a free descriptor is counted in QPRDC(queue) when that
  queue's SRRCTL.DROP_EN is set (queues < 16), else in MPC(0), as is a
  frame arriving while RX is off or its queue is not live.
* Frame length, as the MAC checks it before any queue: a runt (shorter
  than 64 bytes with FCS, 60 on the model's FCS-less wire) is dropped and
  counted in RUC (``rx_undersize``), a frame longer than the max frame size
  (MAXFRS.MFS with HLREG0.JUMBOEN, else 1518 bytes; FCS included, 4 more
  with an 802.1Q tag) in ROC (``rx_oversize``); nothing is DMAed.  A frame
  within the max frame size but longer than its queue's SRRCTL.BSIZEPKT
  would span descriptors on silicon; that is not modelled and faults the
  queue (below): the ixgbe driver sets MFS so that it cannot happen.
* Faults an IOMMU or the datasheet would flag (a DMA address outside the
  registered memory, a ring that is not inside it, legacy RX descriptors in
  SRRCTL, a TX descriptor without DEXT/DTYP_DATA or without EOP, a frame
  larger than the RX buffer (BSIZEPKT)) are recorded as :class:`Fault`,
  logged, and stop that queue until the driver disables and re-enables it;
  nothing is written for the faulting descriptor.
* TX padding (HLREG0.TXPADEN, which the ixgbe driver sets): a frame posted
  shorter than 60 bytes goes on the wire padded with zeros to 60, and is
  counted at that size, as silicon does; without TXPADEN it goes as posted
  and a cabled peer drops it as a runt.
* No address or VLAN filters, VLAN stripping, offloads, interrupts or flow
  control.

Two implementations of the hot paths (``hot_path``): "numpy" (the
reference, array by array) and "numba" (``sim/kernels.py``: one compiled
walk per queue and batch, including the generator's frames stamped straight
into the RX buffers); "auto" picks numba when it is installed.  Both give
the same frames, descriptors, registers, counters and faults.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ixypipe.nic import registers as R
from ixypipe.protocols import ETH_MIN_FRAME, ETH_TYPE_OFF, ETHERTYPE_VLAN
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.payload import SIM_MAX_FRAME
from ixypipe.sim.rss import Rss
from ixypipe.sim.traffic import Generator, PacketBatch

log = logging.getLogger(__name__)

WORD = 4
MAX_TX_BATCH = 1024          # descriptors handled per queue per step
HOT_PATHS = ("auto", "numpy", "numba")
STATS_PERIOD_NS = 1_000_000_000
RESET_DEFAULTS = (
    [(R.AUTOC, R.AUTOC_RESET_VALUE), (R.RXPBSIZE(0), R.RXPBSIZE_RESET_VALUE),
     (R.TXPBSIZE(0), R.TXPBSIZE_40KB), (R.MAXFRS, R.MAXFRS_RESET_VALUE)]
    + [(R.SRRCTL(i), R.SRRCTL_RESET_VALUE) for i in range(R.MAX_RX_QUEUES)]
    + [(R.DCA_RXCTRL(i), R.DCA_RXCTRL_RESERVED_BIT12) for i in range(R.MAX_RX_QUEUES)]
)


@dataclass(frozen=True)
class Fault:
    """A DMA or descriptor fault: the queue stopped at ``descriptor``."""
    port: str
    direction: str           # "rx" or "tx"
    queue: int
    descriptor: int
    address: int
    reason: str

    def __str__(self) -> str:
        if self.queue < 0:          # not a queue's: the device's configuration (a virtio device's features)
            return f"port {self.port} {self.direction}: {self.reason}"
        where = f" descriptor {self.descriptor}" if self.descriptor >= 0 else ""     # < 0: the ring itself
        return f"port {self.port} {self.direction} queue {self.queue}{where} address {self.address:#x}: {self.reason}"


class _Queue:
    __slots__ = ("index", "live", "faulted", "ring", "n", "head", "wb", "words")

    def __init__(self, index: int):
        self.index = index
        self.live = False
        self.faulted = False
        self.ring = None
        self.wb = None
        self.words = None           # the ring as (n, 2) little-endian u64 words, for the compiled walks
        self.n = 0
        self.head = 0


def _segments(head: int, count: int, n: int) -> list[tuple[slice, slice]]:
    """(ring slice, batch slice) pairs covering ``count`` descriptors from ``head`` (at most two: wrap)."""
    first = min(count, n - head)
    segs = [(slice(head, head + first), slice(0, first))]
    if count > first:
        segs.append((slice(0, count - first), slice(first, count)))
    return segs


def _gather(ring: np.ndarray, head: int, count: int) -> np.ndarray:
    if head + count <= len(ring):
        return ring[head:head + count]
    return np.concatenate([ring[head:], ring[:head + count - len(ring)]])


def _reg_index(offsets) -> np.ndarray:
    return np.asarray(offsets, dtype=np.int64) // WORD


def load_kernels(hot_path: str):
    """The compiled kernels module for ``hot_path``, or None for the numpy path."""
    if hot_path not in HOT_PATHS:
        raise ValueError(f"hot_path must be one of {', '.join(HOT_PATHS)}, got {hot_path!r}")
    if hot_path == "numpy":
        return None
    from ixypipe.sim import kernels
    if not kernels.AVAILABLE:
        if hot_path == "numba":
            raise ValueError("hot_path numba needs the numba package (pip install numba)")
        return None
    kernels.warm()
    return kernels


def _rx_fault_reason(too_large: bool, addr: int, length: int, bsize: int, outside: str) -> str:
    if too_large:
        return (f"frame of {length} bytes is larger than the {bsize}-byte RX buffer "
                "(multi-descriptor receive is not modelled)")
    return f"RX buffer [{addr:#x}, +{length}) is {outside}"


def _tx_fault_reason(well_formed: bool, whole: bool, sized: bool, cmd: int, addr: int, length: int,
                     outside: str) -> str:
    if not well_formed:
        return (f"descriptor cmd_type_len {cmd:#010x} is not an advanced data descriptor "
                "(DEXT and DTYP_DATA required)")
    if not whole:
        return "descriptor without EOP: multi-segment transmit is not modelled"
    if not sized:
        return f"frame length {length} is not 1..{SIM_MAX_FRAME} bytes"
    return f"TX buffer [{addr:#x}, +{length}) is {outside}"


class SimPort:
    """The device behind one BAR0 (``bar``: the mapped register file as uint32)."""

    def __init__(self, name: str, bar: np.ndarray, mac: bytes, dma: DmaSpace,
                 config: np.ndarray | None = None, stats_period_ns: int = STATS_PERIOD_NS,
                 clock: Callable[[], int] = time.monotonic_ns, hot_path: str = "auto"):
        if len(mac) != 6:
            raise ValueError(f"port {name}: MAC must be 6 bytes, got {len(mac)}")
        self.name = name
        self.bar = bar
        self.mac = bytes(mac)
        self.dma = dma
        self.config = config            # PCI config space bytes (bus master check), or None
        self.stats_period_ns = stats_period_ns
        self.clock = clock
        self.rss = Rss()
        self.kernels = load_kernels(hot_path)
        self._info = np.zeros(8, np.int64)          # a compiled walk's report (see sim/kernels.py)
        self._tx_out: tuple[np.ndarray, np.ndarray] | None = None
        self._gen_flows: dict[int, tuple] = {}      # per generator: its flows' queues, hashes, length verdicts
        self._gen_regs = _reg_index([R.MRQC] + [R.RSSRK(i) for i in range(10)]
                                    + [R.RETA(i) for i in range(R.RETA_ENTRIES // 4)] + [R.HLREG0, R.MAXFRS])
        self.wire_out: list[Callable[[PacketBatch], object]] = []
        self.faults: list[Fault] = []
        self.rxq = [_Queue(i) for i in range(R.MAX_RX_QUEUES)]
        self.txq = [_Queue(i) for i in range(R.MAX_TX_QUEUES)]
        self._rxdctl = _reg_index([R.RXDCTL(i) for i in range(R.MAX_RX_QUEUES)])
        self._txdctl = _reg_index([R.TXDCTL(i) for i in range(R.MAX_TX_QUEUES)])
        self._rdt = _reg_index([R.RDT(i) for i in range(R.MAX_RX_QUEUES)])
        self._rdh = _reg_index([R.RDH(i) for i in range(R.MAX_RX_QUEUES)])
        self._tdt = _reg_index([R.TDT(i) for i in range(R.MAX_TX_QUEUES)])
        self._tdh = _reg_index([R.TDH(i) for i in range(R.MAX_TX_QUEUES)])
        self._qprdc_idx = _reg_index([R.QPRDC(i) for i in range(R.QPRDC_QUEUES)])
        self._reta = _reg_index([R.RETA(i) for i in range(R.RETA_ENTRIES // 4)])
        self._rssrk = _reg_index([R.RSSRK(i) for i in range(10)])
        self._defaults = _reg_index([off for off, _ in RESET_DEFAULTS])
        self._default_values = np.array([v for _, v in RESET_DEFAULTS], np.uint32)
        self._live_rx: list[_Queue] = []
        self._live_tx: list[_Queue] = []
        self._ard_pending = False
        self._an_allowed = False
        self._bme_warned = False
        # running totals (exact) and the counts of the current stats interval
        self.rx_delivered = self.rx_bytes = self.rx_missed = 0
        self.rx_undersize = 0                       # shorter than 64 bytes with FCS: dropped by the MAC (RUC)
        self.rx_oversize = 0                        # longer than the max frame size: dropped by the MAC (ROC)
        self.tx_sent = self.tx_bytes = 0
        self._interval = np.zeros(7, np.int64)      # GPRC, GORC, GPTC, GOTC, MPC, ROC, RUC
        self._qprdc = np.zeros(R.QPRDC_QUEUES, np.int64)
        self._next_latch = clock() + stats_period_ns
        self.power_on()

    # ---- registers ----------------------------------------------------------------
    def reg(self, offset: int) -> int:
        return int(self.bar[offset // WORD])

    def set_reg(self, offset: int, value: int) -> None:
        self.bar[offset // WORD] = value & 0xFFFFFFFF

    def _load_defaults(self) -> None:
        self.bar[:] = 0
        self.bar[self._defaults] = self._default_values
        mac = self.mac
        self.set_reg(R.RAL(0), int.from_bytes(mac[:4], "little"))
        self.set_reg(R.RAH(0), int.from_bytes(mac[4:], "little") | R.RAH_AV)
        for q in self.rxq + self.txq:
            q.live = q.faulted = False
            q.ring = q.wb = q.words = None
        self._live_rx, self._live_tx = [], []
        self._rx_seen = np.zeros(R.MAX_RX_QUEUES, bool)     # ENABLE seen set (queue live or faulted)
        self._tx_seen = np.zeros(R.MAX_TX_QUEUES, bool)
        self._interval[:] = 0
        self._qprdc[:] = 0

    def power_on(self) -> None:
        """The state after power-up: defaults, EEPROM read and DMA init done, link down."""
        self._load_defaults()
        self.set_reg(R.EEC, R.EEC_ARD)
        self.set_reg(R.RDRXCTL, R.RDRXCTL_DMAIDONE)
        self._an_allowed = True

    def _reset(self) -> None:
        self._load_defaults()        # also clears CTRL.RST|LNK_RST: the reset is done
        self._ard_pending = True
        self._an_allowed = True

    @property
    def compiled(self) -> bool:
        return self.kernels is not None

    def link_is_up(self) -> bool:
        return bool(self.reg(R.LINKS) & R.LINKS_UP)

    # ---- the step -----------------------------------------------------------------------
    def step(self) -> int:
        """React to what the driver wrote and do pending TX; returns the descriptors handled."""
        bar = self.bar
        if bar[R.CTRL // WORD] & R.CTRL_RST_MASK:
            self._reset()
            return 1
        work = 0
        if self._ard_pending:
            self._ard_pending = False
            bar[R.EEC // WORD] |= R.EEC_ARD
            bar[R.RDRXCTL // WORD] |= R.RDRXCTL_DMAIDONE
            work += 1
        autoc = int(bar[R.AUTOC // WORD])
        if autoc & R.AUTOC_AN_RESTART and self._an_allowed:
            bar[R.AUTOC // WORD] = autoc & ~R.AUTOC_AN_RESTART
            bar[R.LINKS // WORD] = R.LINKS_UP | R.LINKS_SPEED_10G
            work += 1
        k = self.kernels
        if k is None or k.queues_changed(bar, self._rxdctl, R.RXDCTL_ENABLE, self._rx_seen):
            work += self._update_queues(self.rxq, self._rxdctl, R.RXDCTL_ENABLE, self._live_rx, self._enable_rx,
                                        self._rx_seen)
        if k is None or k.queues_changed(bar, self._txdctl, R.TXDCTL_ENABLE, self._tx_seen):
            work += self._update_queues(self.txq, self._txdctl, R.TXDCTL_ENABLE, self._live_tx, self._enable_tx,
                                        self._tx_seen)
        if self._live_tx and bar[R.DMATXCTL // WORD] & R.DMATXCTL_TE and self._bus_master():
            for q in list(self._live_tx):
                work += self._transmit(q)
        now = self.clock()
        if now >= self._next_latch:
            self.latch_stats()
            self._next_latch = now + self.stats_period_ns
        return work

    def _bus_master(self) -> bool:
        if self.config is None:
            return True
        on = bool(int(self.config[R.PCI_CFG_COMMAND]) & R.PCI_COMMAND_BUS_MASTER)
        if not on and not self._bme_warned:
            log.warning("port %s: bus mastering is off in PCI config: the device does no DMA", self.name)
            self._bme_warned = True
        return on

    def _update_queues(self, queues, ctl_idx, enable_bit, live, enable, state) -> int:
        enabled = (self.bar[ctl_idx] & np.uint32(enable_bit)) != 0
        changed = np.flatnonzero(enabled != state)
        state[changed] = enabled[changed]      # a faulted queue stays "seen" until ENABLE is cleared
        for i in changed:
            q = queues[int(i)]
            if enabled[i]:
                enable(q)
                if q.live:
                    live.append(q)
            else:
                q.faulted = False
                if q.live:
                    q.live = False
                    live.remove(q)
        return len(changed)

    def _latch_ring(self, q: _Queue, direction: str, bal: int, bah: int, length_reg: int, dtype) -> bool:
        base = self.reg(bal) | self.reg(bah) << 32
        length = self.reg(length_reg)
        if length == 0 or length % R.RING_ALIGN or length > R.MAX_RING_ENTRIES * R.DESC_SIZE:
            self._fault(q, direction, 0, base, f"ring length {length} bytes is not a nonzero multiple of "
                        f"{R.RING_ALIGN} up to {R.MAX_RING_ENTRIES} descriptors")
            return False
        if base % R.RING_ALIGN:
            self._fault(q, direction, 0, base, f"ring base is not {R.RING_ALIGN}-byte aligned")
            return False
        ring = self.dma.ring(base, length, dtype)
        if ring is None:
            self._fault(q, direction, 0, base, f"descriptor ring of {length} bytes is {self.dma.outside}")
            return False
        q.ring, q.n = ring, length // R.DESC_SIZE
        return True

    def _enable_rx(self, q: _Queue) -> None:
        i = q.index
        srrctl = self.reg(R.SRRCTL(i))
        if srrctl & R.SRRCTL_DESCTYPE_MASK != R.SRRCTL_DESCTYPE_ADV_ONEBUF:
            self._fault(q, "rx", 0, 0, f"SRRCTL descriptor type {srrctl & R.SRRCTL_DESCTYPE_MASK:#x} is not "
                        "advanced one-buffer (legacy and header-split descriptors are not modelled)")
            return
        if not self._latch_ring(q, "rx", R.RDBAL(i), R.RDBAH(i), R.RDLEN(i), R.RX_DESC_READ_DTYPE):
            return
        q.wb = q.ring.view(R.RX_DESC_WB_DTYPE)
        q.words = q.ring.view(np.uint64).reshape(q.n, 2)
        q.head = self.reg(R.RDH(i)) % q.n
        q.live = True

    def _enable_tx(self, q: _Queue) -> None:
        i = q.index
        if not self._latch_ring(q, "tx", R.TDBAL(i), R.TDBAH(i), R.TDLEN(i), R.TX_DESC_READ_DTYPE):
            return
        q.wb = q.ring.view(R.TX_DESC_WB_DTYPE)
        q.words = q.ring.view(np.uint64).reshape(q.n, 2)
        q.head = self.reg(R.TDH(i)) % q.n
        q.live = True

    def _fault(self, q: _Queue, direction: str, descriptor: int, address: int, reason: str) -> None:
        fault = Fault(self.name, direction, q.index, descriptor, address, reason)
        self.faults.append(fault)
        log.error("DMA fault: %s; queue stopped", fault)
        if q.live:
            (self._live_rx if direction == "rx" else self._live_tx).remove(q)
        q.live = False
        q.faulted = True

    # ---- receive ------------------------------------------------------------------------
    def rx_ready(self) -> bool:
        return bool(self.bar[R.RXCTRL // WORD] & R.RXCTRL_RXEN) and bool(self._live_rx)

    def rx_free(self) -> np.ndarray:
        """Free descriptors per RX queue (0 where the queue is not live)."""
        free = np.zeros(R.MAX_RX_QUEUES, np.int64)
        for q in self._live_rx:
            free[q.index] = self._rx_room(q)
        return free

    def _rx_room(self, q: _Queue) -> int:
        bar_head = int(self.bar[self._rdh[q.index]])
        if bar_head != q.head:          # the driver wrote RDH (queue start)
            q.head = bar_head % q.n
        tail = int(self.bar[self._rdt[q.index]]) % q.n
        return (tail - q.head) % q.n

    def classify(self, batch: PacketBatch) -> tuple[np.ndarray, np.ndarray]:
        """(RX queue, RSS hash) of every frame, from MRQC/RSSRK/RETA as they are now."""
        mrqc = self.reg(R.MRQC)
        n = len(batch)
        if not mrqc & R.MRQC_RSSEN or n == 0:
            return np.zeros(n, np.int64), np.zeros(n, np.uint32)
        key = self.bar[self._rssrk].astype("<u4").tobytes()
        hashes = self.rss.hash(batch.data, mrqc, key)
        reta = self.bar[self._reta].astype("<u4").view(np.uint8)
        return self.rss.queues(hashes, reta), hashes

    def receive(self, batch: PacketBatch, queues: np.ndarray | None = None,
                hashes: np.ndarray | None = None) -> int:
        """Frames arriving from the wire; returns how many were delivered (the rest are missed)."""
        errors = self._length_errors(batch.data, batch.lengths)
        if errors is not None:                    # the MAC drops them before any queue sees them
            under, over = errors
            self._length_dropped(int(under.sum()), int(over.sum()))
            keep = np.flatnonzero(~(under | over))
            batch = batch.take(keep)
            if queues is not None:
                queues, hashes = queues[keep], hashes[keep]
        n = len(batch)
        if n == 0:
            return 0
        if not (self.rx_ready() and self._bus_master()):
            self._missed(n)
            return 0
        if queues is None:
            queues, hashes = self.classify(batch)
        if len(self._live_rx) == 1 and (queues == self._live_rx[0].index).all():
            q = self._live_rx[0]
            if self.kernels is not None:
                delivered, _ = self._rx_compiled(q, self.kernels.rx_frames, -1, queues, batch.data,
                                                 batch.lengths, hashes)
            else:
                delivered = self._rx_queue(q, batch, hashes)
            self._missed(n - delivered, q)
            return delivered
        delivered = 0
        for qi in np.unique(queues):
            q = self.rxq[int(qi)]
            live = q.live
            if self.kernels is not None:
                got, rows = (self._rx_compiled(q, self.kernels.rx_frames, int(qi), queues, batch.data,
                                               batch.lengths, hashes) if live else (0, int((queues == qi).sum())))
            else:
                sel = np.flatnonzero(queues == qi)
                got, rows = (self._rx_queue(q, batch.take(sel), hashes[sel]) if live else 0), len(sel)
            self._missed(rows - got, q if live else None)
            delivered += got
        return delivered

    def receive_generated(self, gen: Generator, n: int, free: np.ndarray | None = None) -> int:
        """Compiled path only: the generator's next ``n`` packets, stamped straight into the RX buffers
        (the caller checked ``rx_ready``).  With ``free`` (rate 0: the ``rx_free()`` the caller sized
        ``n`` from) the packets stop where the first queue runs out of descriptors.  Returns how many
        were generated (delivered or missed); the caller commits them."""
        flow_queue, flow_hash, flow_idx, errors, rss_queue, rss_idx = self._generator_flows(gen)
        if free is not None:
            # cut by each frame's RSS queue, also for frames the MAC will drop, as the numpy path does
            if len(rss_idx) == 1:           # every flow lands on one queue
                n = min(n, int(free[rss_idx[0]]))
            else:
                queues = rss_queue[gen.flows_of_next(n)]
                for qi in rss_idx:
                    over = np.flatnonzero(queues == qi)[free[qi]:]
                    if len(over):
                        n = min(n, int(over[0]))
        if n == 0:
            return 0
        dropped = 0
        if errors is not None:
            flows = gen.flows_of_next(n)
            under, over = int(errors[0][flows].sum()), int(errors[1][flows].sum())
            self._length_dropped(under, over)
            dropped = under + over
        if not self._bus_master():
            self._missed(n - dropped)
            return n
        tables = gen.kernel_tables()
        for qi in flow_idx:
            q = self.rxq[int(qi)]
            live = q.live
            if live:
                got, rows = self._rx_compiled(q, self.kernels.gen_rx, q.index, *tables,
                                              gen.sent, gen.flows, n, flow_queue, flow_hash)
            else:
                got, rows = 0, int((flow_queue[gen.flows_of_next(n)] == qi).sum())
            self._missed(rows - got, q if live else None)
        return n

    def _generator_flows(self, gen: Generator) -> tuple:
        """For each of the generator's flows: the RX queue its frames reach (-1 when the MAC drops them for
        their length), its RSS hash, the queues reached, the length verdicts (``_length_errors``: None when
        every flow passes), and its RSS queue and the RSS queues used, dropped frames included.  Recomputed
        when MRQC, RSSRK, RETA, HLREG0 or MAXFRS changed (a flow's 5-tuple and length are fixed, so are its
        queue and verdict)."""
        regs = self.bar[self._gen_regs]
        cached = self._gen_flows.get(id(gen))
        if cached is not None and np.array_equal(cached[0], regs):
            return cached[1:]
        rss_queues, hashes = self.classify(PacketBatch(gen.templates, gen.flow_lengths))
        rss_idx = np.unique(rss_queues)
        errors = self._length_errors(gen.templates, gen.flow_lengths)
        queues, idx = rss_queues, rss_idx
        if errors is not None:
            queues = np.where(errors[0] | errors[1], -1, rss_queues)
            idx = np.unique(queues[queues >= 0])
        entry = (regs, queues, hashes, idx, errors, rss_queues, rss_idx)
        self._gen_flows[id(gen)] = entry
        return entry[1:]

    def _rx_compiled(self, q: _Queue, kernel, *args) -> tuple[int, int]:
        """One compiled RX walk on queue q (retried once the DMA table follows a driver's new memory);
        returns (delivered, frames that were for this queue)."""
        room = self._rx_room(q)
        srrctl = self.reg(R.SRRCTL(q.index))
        bsize = (srrctl & R.SRRCTL_BSIZEPKT_MASK) * R.SRRCTL_BSIZEPKT_UNIT or R.SRRCTL_BSIZEPKT_DEFAULT
        info = self._info
        got = nbytes = 0
        while True:
            good = kernel(q.words, q.head, room - got, got, bsize, *self.dma.kernel_tables(), info, *args)
            got += good
            nbytes += int(info[4])
            q.head = (q.head + good) % q.n
            if info[0] != self.kernels.BAD_ADDRESS or not self.dma.after_miss():
                break
        if got:
            self.bar[self._rdh[q.index]] = q.head
            self.rx_delivered += got
            self.rx_bytes += nbytes
            self._interval[0] += got
            self._interval[1] += nbytes + R.OCTETS_FCS_LEN * got
        if info[0] != self.kernels.OK:
            addr, length = int(info[1]), int(info[3])
            self._fault(q, "rx", q.head, addr,
                        _rx_fault_reason(info[0] == self.kernels.TOO_LARGE, addr, length, bsize,
                                         self.dma.outside))
        return got, int(info[2])

    def max_frame(self) -> int:
        """The longest untagged frame the MAC takes, without FCS (an 802.1Q-tagged one may be 4 bytes
        longer): MAXFRS.MFS with HLREG0.JUMBOEN, else the standard 1518 bytes with FCS."""
        mfs = R.MFS_STANDARD
        if self.reg(R.HLREG0) & R.HLREG0_JUMBOEN:
            mfs = (self.reg(R.MAXFRS) >> R.MAXFRS_MFS_SHIFT) & R.MAXFRS_MFS_MASK
        return mfs - R.OCTETS_FCS_LEN

    def _length_errors(self, data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(undersize, oversize) masks of the frames the MAC drops for their length, or None when it drops
        none.  Undersize: shorter than 64 bytes with FCS (a runt); oversize: longer than the max frame size
        (4 bytes more with an 802.1Q tag).  The common case costs a min(), and a max() only when the batch
        is wider than the max frame (frames are rows of ``data``, so none is longer than its width)."""
        if len(lengths) == 0:
            return None
        longest = self.max_frame()
        if lengths.min() >= ETH_MIN_FRAME and (data.shape[1] <= longest or lengths.max() <= longest):
            return None
        under = lengths < ETH_MIN_FRAME
        over = lengths > longest
        rows = np.flatnonzero(over)
        tagged = (data[rows, ETH_TYPE_OFF].astype(np.int64) << 8 | data[rows, ETH_TYPE_OFF + 1]) == ETHERTYPE_VLAN
        over[rows] = lengths[rows] > longest + np.where(tagged, R.MFS_VLAN_EXTRA, 0)
        return (under, over) if under.any() or over.any() else None

    def _length_dropped(self, under: int, over: int) -> None:
        """Frames the MAC dropped for their length (RUC, ROC): no descriptor, no buffer is touched."""
        self.rx_undersize += under
        self.rx_oversize += over
        self._interval[6] += under
        self._interval[5] += over

    def _missed(self, n: int, q: _Queue | None = None) -> None:
        """Frames dropped: per queue (QPRDC) when its SRRCTL.DROP_EN is set, else in the packet buffer (MPC)."""
        if n == 0:
            return
        self.rx_missed += n
        if q is not None and q.index < R.QPRDC_QUEUES and self.reg(R.SRRCTL(q.index)) & R.SRRCTL_DROP_EN:
            self._qprdc[q.index] += n
        else:
            self._interval[4] += n

    def _rx_queue(self, q: _Queue, batch: PacketBatch, hashes: np.ndarray) -> int:
        take = min(len(batch), self._rx_room(q))
        if take == 0:
            return 0
        addr = _gather(q.ring["pkt_addr"], q.head, take)
        lengths = batch.lengths[:take]
        ok, arena, offset = self.dma.resolve(addr, lengths)
        srrctl = self.reg(R.SRRCTL(q.index))
        bsize = (srrctl & R.SRRCTL_BSIZEPKT_MASK) * R.SRRCTL_BSIZEPKT_UNIT or R.SRRCTL_BSIZEPKT_DEFAULT
        fits = lengths <= bsize
        bad = np.flatnonzero(~(ok & fits))
        good = take if not len(bad) else int(bad[0])
        if good:
            sel = slice(0, good)
            part = batch if good == len(batch) else PacketBatch(batch.data[sel], lengths[sel])
            self.dma.write(arena[sel], offset[sel], part)
            rss_info = hashes[sel].astype(np.uint64) << np.uint64(32)
            wb = q.wb
            for ring_part, part_rows in _segments(q.head, good, q.n):
                wb["rss_info"][ring_part] = rss_info[part_rows]
                wb["length"][ring_part] = lengths[part_rows]
                wb["vlan"][ring_part] = 0
                wb["status_error"][ring_part] = R.RXD_STAT_DD | R.RXD_STAT_EOP   # last: DD publishes the rest
            q.head = (q.head + good) % q.n
            self.bar[self._rdh[q.index]] = q.head
            nbytes = int(lengths[sel].sum())
            self.rx_delivered += good
            self.rx_bytes += nbytes
            self._interval[0] += good
            self._interval[1] += nbytes + R.OCTETS_FCS_LEN * good
        if len(bad):
            d = q.head                  # already advanced past the good ones
            self._fault(q, "rx", d, int(addr[good]),
                        _rx_fault_reason(bool(ok[good]), int(addr[good]), int(lengths[good]), bsize, self.dma.outside))
        return good

    # ---- transmit -----------------------------------------------------------------------
    def _transmit(self, q: _Queue) -> int:
        bar_head = int(self.bar[self._tdh[q.index]])
        if bar_head != q.head:          # the driver wrote TDH (queue start)
            q.head = bar_head % q.n
        tail = int(self.bar[self._tdt[q.index]]) % q.n
        pending = min((tail - q.head) % q.n, MAX_TX_BATCH)
        if pending == 0:
            return 0
        if self.kernels is not None:
            return self._transmit_compiled(q, pending)
        head = q.head
        desc = _gather(q.ring, head, pending)
        cmd = desc["cmd_type_len"]
        lengths = (cmd & R.TXD_DTALEN_MASK).astype(np.int64)
        well_formed = ((cmd & R.TXD_CMD_DEXT) != 0) & ((cmd & R.TXD_DTYP_MASK) == R.TXD_DTYP_DATA)
        whole = (cmd & R.TXD_CMD_EOP) != 0
        sized = (lengths > 0) & (lengths <= SIM_MAX_FRAME)
        ok, arena, offset = self.dma.resolve(desc["buffer_addr"], np.maximum(lengths, 1))
        bad = np.flatnonzero(~(well_formed & whole & sized & ok))
        good = pending if not len(bad) else int(bad[0])
        if good:
            sel = slice(0, good)
            batch = self._pad_short(self.dma.read(arena[sel], offset[sel], lengths[sel]))
            for deliver in self.wire_out:
                deliver(batch)
            rs = (cmd[sel] & R.TXD_CMD_RS) != 0
            status = q.wb["status"]
            for ring_part, part_rows in _segments(head, good, q.n):
                status[ring_part][rs[part_rows]] = R.TXD_STAT_DD
            q.head = (q.head + good) % q.n
            self.bar[self._tdh[q.index]] = q.head
            nbytes = int(batch.lengths.sum())
            self.tx_sent += good
            self.tx_bytes += nbytes
            self._interval[2] += good
            self._interval[3] += nbytes + R.OCTETS_FCS_LEN * good
        if len(bad):
            j = good
            addr = int(desc["buffer_addr"][j])
            self._fault(q, "tx", (head + j) % q.n, addr,
                        _tx_fault_reason(bool(well_formed[j]), bool(whole[j]), bool(sized[j]), int(cmd[j]), addr,
                                         int(lengths[j]), self.dma.outside))
        return good

    def _transmit_compiled(self, q: _Queue, pending: int) -> int:
        if self._tx_out is None:
            self._tx_out = (np.zeros((MAX_TX_BATCH, SIM_MAX_FRAME), np.uint8), np.zeros(MAX_TX_BATCH, np.int64))
        out, lengths = self._tx_out
        k, info = self.kernels, self._info
        pad_to = self._tx_pad_to()
        head = q.head
        good = nbytes = width = 0
        while True:
            got = k.tx_walk(q.words, head + good, pending - good, out[good:], lengths[good:], pad_to,
                            *self.dma.kernel_tables(), info)
            good += got
            nbytes += int(info[5])
            width = max(width, int(info[4]))
            if info[0] != k.BAD_ADDRESS or not self.dma.after_miss():
                break
        if good:
            batch = PacketBatch(out[:good, :width], lengths[:good])
            for deliver in self.wire_out:
                deliver(batch)
            q.head = (head + good) % q.n
            self.bar[self._tdh[q.index]] = q.head
            self.tx_sent += good
            self.tx_bytes += nbytes
            self._interval[2] += good
            self._interval[3] += nbytes + R.OCTETS_FCS_LEN * good
        if info[0] != k.OK:
            reason, cmd, addr = int(info[0]), int(info[2]), int(info[3])
            self._fault(q, "tx", (head + good) % q.n, addr,
                        _tx_fault_reason(reason != k.NOT_DATA, reason != k.NO_EOP, reason != k.BAD_LENGTH, cmd,
                                         addr, cmd & R.TXD_DTALEN_MASK, self.dma.outside))
        return good

    def _tx_pad_to(self) -> int:
        """The length the MAC pads a shorter TX frame to with zeros: the Ethernet minimum with HLREG0.TXPADEN,
        as silicon does, else 0 (frames go as posted)."""
        return ETH_MIN_FRAME if self.reg(R.HLREG0) & R.HLREG0_TXPADEN else 0

    def _pad_short(self, batch: PacketBatch) -> PacketBatch:
        """The frames as the MAC sends them, padded to _tx_pad_to (the numpy path; tx_walk pads as it copies)."""
        pad_to = self._tx_pad_to()
        short = np.flatnonzero(batch.lengths < pad_to)
        if not len(short):
            return batch
        data = batch.data
        if data.shape[1] < pad_to:
            data = np.zeros((len(batch), pad_to), np.uint8)
            data[:, :batch.data.shape[1]] = batch.data
        rows = data[short, :pad_to]
        rows[np.arange(pad_to) >= batch.lengths[short, None]] = 0     # the rest of the buffer is not sent
        data[short, :pad_to] = rows
        return PacketBatch(data, np.maximum(batch.lengths, pad_to))

    def detach(self) -> None:
        """Drop every view of the BAR, config space and descriptor rings (before unmapping them)."""
        for q in self.rxq + self.txq:
            q.ring = q.wb = q.words = None
            q.live = False
        self._live_rx, self._live_tx = [], []
        self.wire_out = []
        self.bar = self.config = None

    # ---- statistics ---------------------------------------------------------------------
    def latch_stats(self) -> None:
        """Publish the interval's counts in the clear-on-read registers (see the module docstring)."""
        gprc, gorc, gptc, gotc, mpc, roc, ruc = (int(v) for v in self._interval)
        self.set_reg(R.GPRC, gprc)
        self.set_reg(R.GORCL, gorc)
        self.set_reg(R.GORCH, gorc >> 32)
        self.set_reg(R.GPTC, gptc)
        self.set_reg(R.GOTCL, gotc)
        self.set_reg(R.GOTCH, gotc >> 32)
        self.set_reg(R.MPC(0), mpc)
        self.set_reg(R.ROC, roc)
        self.set_reg(R.RUC, ruc)
        self.bar[self._qprdc_idx] = self._qprdc.astype(np.uint32)
        self._interval[:] = 0
        self._qprdc[:] = 0
