"""The ixgbe driver: an Intel 82599 driven from user space through its BAR0 (ixy's ixgbe.c).

Owns the device's bring-up (the datasheet's 4.6.3-4.6.8 init sequence, in
ixy's order, one small function per step), the RX and TX descriptor rings
and the batch hot paths.  Rings and all per-queue software state (next RX
descriptor, TX clean index and tail, and for every descriptor the index of
the packet buffer sitting in it) live in named regions of the device arena
(``ixgbe.<port>.rxq<q>.*`` / ``.txq<q>.*``), so the supervisor can open and
initialise a port and a stage process can :meth:`IxgbeDevice.attach` and
carry on.  ``rx_batch`` and ``tx_batch`` call one kernel per batch that
walks the descriptors and rings the doorbell (RDT/TDT) once; the numpy
kernels (``ixgbe_numpy.py``) and the numba ones (``ixgbe_jit.py``) take the
same arguments, so each queue binds one of them when the port is opened or
attached (``hot_path`` "auto", "numpy" or "numba" chooses).  Buffers whose
transmission completed go to ``tx_done`` (see device.py); a
:class:`~ixypipe.memory.homing.Homing` gets the index range the kernel found.
Register names are used as ``R.NAME`` from registers.py.

Simulated I/O addresses: a DMA arena on the /dev/shm fallback has no
physical addresses, only SIM_IOVA_BASE + offset.  A real 82599 would DMA
to those at random, so ``open`` refuses such an arena unless the port is a
software 82599: ``spec.driver == "sim"`` or an explicit ``allow_iova=True``.
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np

from ixypipe import layout as Q
from ixypipe.memory import hugepages
from ixypipe.memory.arena import Arena, ArenaError, RegionSize
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ixgbe_jit, ixgbe_numpy, pci, vfio
from ixypipe.nic import registers as R
from ixypipe.nic.device import (
    Device,
    DeviceError,
    DeviceStats,
    LinkState,
    PortSpec,
    TxDone,
    check_rx_pools,
    choose_hot_path,
    format_mac,
)
from ixypipe.protocols import ETH_MIN_FRAME

log = logging.getLogger(__name__)

PACKET_BUFFERS = 8             # RXPBSIZE/TXPBSIZE registers: the 82599 has 8 packet buffers
# Seconds of polling for each init handshake.  Silicon answers in microseconds to milliseconds (ixy
# waits without limit); the software 82599 answers at its next step, which a loaded machine can
# delay by seconds (a 1 s reset wait failed about 1 start in 15), so each wait has a wide margin
# and its error names the register, the bits and the time waited.
INIT_WAIT_TIMEOUT = 30.0
RESET_TIMEOUT = INIT_WAIT_TIMEOUT       # CTRL.RST/LNK_RST to self-clear
EEPROM_TIMEOUT = INIT_WAIT_TIMEOUT      # EEC.ARD
DMA_INIT_TIMEOUT = INIT_WAIT_TIMEOUT    # RDRXCTL.DMAIDONE
QUEUE_ENABLE_TIMEOUT = INIT_WAIT_TIMEOUT  # RXDCTL/TXDCTL.ENABLE
LINK_TIMEOUT = INIT_WAIT_TIMEOUT        # LINKS.UP after auto-negotiation (ixy gives up after 10 s)
RESET_SETTLE = 0.01            # ixy waits 10 ms after the reset before touching registers
LINK_POLL_INTERVAL = 0.1       # ixy polls LINKS every 100 ms
DRAIN_POLL_INTERVAL = 0.001
_NOTHING = np.empty(0, np.uint32)      # tx_burst with nothing to post only cleans


# ---- per-queue state in the device arena ------------------------------------------------

class _Queue:
    """One descriptor ring, its buffer-index array and its state words, all arena views."""

    def __init__(self, arena: Arena, prefix: str, entries: int, create: bool, regs: np.ndarray):
        self.prefix = prefix
        self.entries = entries
        self.mask = entries - 1
        desc_size, slots_size, state_size = self.arena_regions(entries)
        desc = _region(arena, f"{prefix}.desc", desc_size, create)
        slots = _region(arena, f"{prefix}.bufs", slots_size, create)
        state = _region(arena, f"{prefix}.state", state_size, create)
        self.desc_region = desc
        self.desc8 = arena.view(desc, np.uint8).reshape(entries, R.DESC_SIZE)
        self.desc64 = self.desc8.view("<u8")             # what the kernels see: two u64 words each
        self.dma_addr = int(arena.phys(desc.offset))
        self.slot_buf = arena.view(slots, np.uint32)     # buffer index held by descriptor i
        self.state = arena.view(state, np.uint64)
        self.regs = regs
        self.burst = None                                # the hot-path kernel bound to this queue
        if create:
            self.state[:] = 0
            self.state[Q.QSTATE_ENTRIES] = entries
        elif int(self.state[Q.QSTATE_ENTRIES]) != entries:
            raise DeviceError(f"{prefix}: the arena's ring has {int(self.state[Q.QSTATE_ENTRIES])} entries, "
                              f"the port spec says {entries}")

    @staticmethod
    def arena_regions(entries: int) -> list[RegionSize]:
        """The descriptor ring (in one page: physically contiguous), the buffer-index array, the state words."""
        return [RegionSize(entries * R.DESC_SIZE, align=R.RING_ALIGN, within_page=True),
                RegionSize(entries * 4, align=64), RegionSize(Q.QSTATE_WORDS * 8, align=64)]


def _region(arena: Arena, name: str, need: RegionSize, create: bool):
    found = arena.find(name)
    if found is not None:
        if found.size != need.size:
            raise DeviceError(f"arena region {name!r} is {found.size} bytes, expected {need.size}: "
                              "the port was opened with another ring size")
        return found
    if not create:
        raise DeviceError(f"arena {arena.name} has no region {name!r}: open the port (IxgbeDevice.open) "
                          "before attaching to it")
    try:
        return arena.alloc(name, need.size, align=need.align, within_page=need.within_page)
    except ArenaError as exc:
        raise DeviceError(str(exc)) from exc


class RxQueue(_Queue):
    def __init__(self, arena, prefix, entries, create, pool: Mempool | None, regs: np.ndarray, queue: int):
        super().__init__(arena, prefix, entries, create, regs)
        self.pool = pool
        self.rdt = R.RDT(queue) >> 2
        self.bad = np.zeros(1, np.int64)                     # rx_burst: where it found trouble
        self.filled = False                                  # open() put pool buffers in every slot

    def bind(self, kernels, bufs: PacketBuffers, data_addr: np.ndarray) -> None:
        """Bind ``kernels.rx_burst`` to this queue's arrays: ``self.burst(out)`` receives.

        ``data_addr``: each buffer's DMA address (physical, or its IOVA under VFIO)."""
        if self.pool is not None:
            stack, top = self.pool.free_stack()
            self.record = (self.desc64, self.slot_buf, self.state, bufs.length, data_addr, stack, top, self.regs,
                           self.rdt, self.bad)
            self.burst = functools.partial(kernels.rx_burst, *self.record)


class TxQueue(_Queue):
    def __init__(self, arena, prefix, entries, create, regs: np.ndarray, queue: int):
        super().__init__(arena, prefix, entries, create, regs)
        # Clean in batches of 32 like ixy; a ring smaller than 64 never holds 32 outstanding
        # descriptors (one slot stays free), so there the batch is half the ring.
        self.clean_batch = min(R.TX_CLEAN_BATCH, entries // 2)
        self.tdt = R.TDT(queue) >> 2
        self.freed = np.empty(entries, np.uint32)            # tx_burst: buffers it cleaned
        self.lohi = np.zeros(2, np.int64)                    # ... and their smallest and largest index
        self.error = np.zeros(2, np.int64)                   # ... and what was wrong with a buffer, where

    def bind(self, kernels, bufs: PacketBuffers, data_addr: np.ndarray) -> None:
        """Bind ``kernels.tx_burst`` to this queue's arrays: ``self.burst(bufs)`` cleans and posts."""
        self.record = (self.desc64, self.slot_buf, self.state, bufs.length, data_addr, self.regs, self.tdt,
                       self.clean_batch, self.freed, self.lohi, self.error, bufs.max_data)
        self.burst = functools.partial(kernels.tx_burst, *self.record)


# ---- init steps, in ixy's order (datasheet section in each comment) ------------------------

# 4.6.3.1 Interrupts During Initialization
def disable_interrupts(bar: pci.Bar) -> None:
    # this driver polls; an interrupt nobody acknowledges would only cost PCIe bandwidth
    bar.write(R.EIMS, 0)
    bar.write(R.EIMC, R.EIMC_ALL)
    bar.read(R.EICR)                      # reading clears causes already latched


# 4.6.3.2 Global Reset and General Configuration
def global_reset(bar: pci.Bar, sleep) -> None:
    bar.write(R.CTRL, R.CTRL_RST_MASK)
    bar.wait_clear(R.CTRL, R.CTRL_RST_MASK, "CTRL.RST/LNK_RST to self-clear after the global reset",
                   RESET_TIMEOUT, sleep)
    sleep(RESET_SETTLE)                 # the datasheet asks for 10 ms before the next register access


# RAL(0)/RAH(0): the MAC address the EEPROM auto-read loaded (bytes 0..3 in RAL, 4..5 in RAH)
def read_mac(bar: pci.Bar) -> bytes:
    low, high = bar.read(R.RAL(0)), bar.read(R.RAH(0))
    return low.to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little")


# 4.6.3 Initialization Sequence: wait for EEPROM auto-read completion
def wait_eeprom_auto_read(bar: pci.Bar, sleep) -> None:
    bar.wait_set(R.EEC, R.EEC_ARD, "EEC.ARD (EEPROM auto-read done)", EEPROM_TIMEOUT, sleep)


# 4.6.3 Initialization Sequence: wait for DMA initialization done
def wait_dma_init(bar: pci.Bar, sleep) -> None:
    bar.wait_set(R.RDRXCTL, R.RDRXCTL_DMAIDONE, "RDRXCTL.DMAIDONE (DMA init done)", DMA_INIT_TIMEOUT, sleep)


# 4.6.4 Link Setup and Auto-Negotiation
def init_link(bar: pci.Bar) -> None:
    # 10G serial link mode with the XAUI PMA/PMD, then restart auto-negotiation; the link is
    # awaited at the very end so the queues are set up while it trains
    bar.write(R.AUTOC, (bar.read(R.AUTOC) & ~R.AUTOC_LMS_MASK) | R.AUTOC_LMS_10G_SERIAL)
    bar.write(R.AUTOC, (bar.read(R.AUTOC) & ~R.AUTOC_10G_PMA_PMD_MASK) | R.AUTOC_10G_XAUI)
    bar.set_flags(R.AUTOC, R.AUTOC_AN_RESTART)


# 4.6.5 Statistical Counters
def reset_statistics(bar: pci.Bar) -> None:
    # the counters clear on read: reading each once starts them from zero
    for reg in (R.GPRC, R.GPTC, R.GORCL, R.GORCH, R.GOTCL, R.GOTCH, R.RUC, R.ROC):
        bar.read(reg)


# 4.6.7 Receive Initialization
def init_rx(bar: pci.Bar, queues: list[RxQueue]) -> tuple[int, int, int]:
    """Returns (bytes a buffer holds, BSIZEPKT in KB, MFS) as programmed (zeros without a mempool)."""
    bar.clear_flags(R.RXCTRL, R.RXCTRL_RXEN)            # no reception while the queues are being set up
    # all of the 512 KB RX packet buffer would go to buffer 0 without DCB; ixy sets 128 KB
    bar.write(R.RXPBSIZE(0), R.RXPBSIZE_128KB)
    for i in range(1, PACKET_BUFFERS):
        bar.write(R.RXPBSIZE(i), 0)
    # strip the CRC: the 4 FCS bytes are of no use to software and would count in lengths
    bar.set_flags(R.HLREG0, R.HLREG0_RXCRCSTRP)
    bar.set_flags(R.RDRXCTL, R.RDRXCTL_CRCSTRIP)
    bar.set_flags(R.FCTRL, R.FCTRL_BAM)                 # accept broadcast
    max_data = min((rxq.pool.bufs.max_data for rxq in queues if rxq.pool is not None), default=None)
    kb, mfs = R.rx_frame_limits(max_data) if max_data is not None else (0, 0)
    for q, rxq in enumerate(queues):
        init_rx_queue(bar, q, rxq, kb)
    if mfs:
        # the max frame size keeps every frame inside a buffer's data area (rx_frame_limits); JUMBOEN makes
        # the MAC use it, in either direction from its built-in 1518 bytes (Linux's ixgbe does the same)
        bar.set_flags(R.HLREG0, R.HLREG0_JUMBOEN)
        mfs_field = R.MAXFRS_MFS_MASK << R.MAXFRS_MFS_SHIFT        # bits 15:0 are reserved: kept as read
        bar.write(R.MAXFRS, (bar.read(R.MAXFRS) & ~mfs_field) | mfs << R.MAXFRS_MFS_SHIFT)
    if len(queues) > 1:
        init_rss(bar, len(queues))
    # "last sentence" of 4.6.7: no-snoop disable, the 82599 must snoop the CPU caches
    bar.set_flags(R.CTRL_EXT, R.CTRL_EXT_NS_DIS)
    for q in range(len(queues)):
        # reserved bit that comes out of reset as 1; the datasheet says software must write 0
        bar.clear_flags(R.DCA_RXCTRL(q), R.DCA_RXCTRL_RESERVED_BIT12)
    bar.set_flags(R.RXCTRL, R.RXCTRL_RXEN)
    return max_data or 0, kb, mfs


# 4.6.7 Receive Initialization, per queue
def init_rx_queue(bar: pci.Bar, q: int, rxq: RxQueue, bsizepkt_kb: int) -> None:
    # advanced descriptors, one buffer per packet, of the size rx_frame_limits chose (0: keep the default)
    value = (bar.read(R.SRRCTL(q)) & ~R.SRRCTL_DESCTYPE_MASK) | R.SRRCTL_DESCTYPE_ADV_ONEBUF
    if bsizepkt_kb:
        value = (value & ~R.SRRCTL_BSIZEPKT_MASK) | bsizepkt_kb
    bar.write(R.SRRCTL(q), value)
    # with no free descriptor drop the packet (and count it) instead of blocking the other queues
    bar.set_flags(R.SRRCTL(q), R.SRRCTL_DROP_EN)
    rxq.desc8[:] = R.DESC_FILL_BYTE                   # ixy: garbage, not zeros, until the queue starts
    bar.write(R.RDBAL(q), rxq.dma_addr & 0xFFFFFFFF)
    bar.write(R.RDBAH(q), rxq.dma_addr >> 32)
    bar.write(R.RDLEN(q), rxq.entries * R.DESC_SIZE)
    bar.write(R.RDH(q), 0)
    bar.write(R.RDT(q), 0)


# 7.1.2.8 Receive-Side Scaling
def init_rss(bar: pci.Bar, n_queues: int) -> None:
    # the Toeplitz hash of IPv4 addresses and TCP/UDP ports picks one of 128 RETA entries;
    # entry j names queue j mod n, so flows spread evenly and each flow stays on one queue
    for i in range(R.RSSRK_REGISTERS):
        word = R.RSS_DEFAULT_KEY[4 * i:4 * i + 4]
        bar.write(R.RSSRK(i), int.from_bytes(word, "little"))
    per = R.RETA_ENTRIES_PER_REGISTER
    for i in range(R.RETA_ENTRIES // per):
        entries = [(per * i + k) % n_queues for k in range(per)]
        bar.write(R.RETA(i), int.from_bytes(bytes(entries), "little"))
    bar.write(R.MRQC, R.MRQC_RSSEN | R.RSS_FIELDS_IPV4)


# 4.6.8 Transmit Initialization
def init_tx(bar: pci.Bar, queues: list[TxQueue]) -> None:
    # the MAC appends the CRC and pads short frames to 64 bytes
    bar.set_flags(R.HLREG0, R.HLREG0_TXCRCEN | R.HLREG0_TXPADEN)
    bar.write(R.TXPBSIZE(0), R.TXPBSIZE_40KB)
    for i in range(1, PACKET_BUFFERS):
        bar.write(R.TXPBSIZE(i), 0)
    bar.write(R.DTXMXSZRQ, R.DTXMXSZRQ_MAX)             # required when DCB is off
    bar.clear_flags(R.RTTDCS, R.RTTDCS_ARBDIS)          # the TX arbiter must run for any queue to send
    for q, txq in enumerate(queues):
        init_tx_queue(bar, q, txq)
    bar.write(R.DMATXCTL, R.DMATXCTL_TE)


# 4.6.8 Transmit Initialization, per queue
def init_tx_queue(bar: pci.Bar, q: int, txq: TxQueue) -> None:
    txq.desc8[:] = R.DESC_FILL_BYTE
    bar.write(R.TDBAL(q), txq.dma_addr & 0xFFFFFFFF)
    bar.write(R.TDBAH(q), txq.dma_addr >> 32)
    bar.write(R.TDLEN(q), txq.entries * R.DESC_SIZE)
    # descriptor prefetch/host/write-back thresholds as ixy sets them (from DPDK) for throughput
    thresholds = ((R.TXDCTL_THRESH_MASK << R.TXDCTL_PTHRESH_SHIFT) | (R.TXDCTL_THRESH_MASK << R.TXDCTL_HTHRESH_SHIFT)
                  | (R.TXDCTL_THRESH_MASK << R.TXDCTL_WTHRESH_SHIFT))
    value = bar.read(R.TXDCTL(q)) & ~thresholds
    value |= ((R.TXDCTL_PTHRESH_IXY << R.TXDCTL_PTHRESH_SHIFT) | (R.TXDCTL_HTHRESH_IXY << R.TXDCTL_HTHRESH_SHIFT)
              | (R.TXDCTL_WTHRESH_IXY << R.TXDCTL_WTHRESH_SHIFT))
    bar.write(R.TXDCTL(q), value)


# 4.6.7 Receive Initialization: enabling a queue
def start_rx_queue(bar: pci.Bar, q: int, rxq: RxQueue, data_phys: np.ndarray, sleep) -> None:
    idx = rxq.pool.alloc_exact(rxq.entries)
    rxq.slot_buf[:] = idx
    rxq.filled = True
    rxq.desc64[:, 0] = data_phys[idx]                 # the NIC writes the frame at buffer + headroom
    rxq.desc64[:, 1] = 0                               # no header split; also clears DD of every slot
    rxq.state[Q.QSTATE_RX_NEXT] = 0
    bar.set_flags(R.RXDCTL(q), R.RXDCTL_ENABLE)
    bar.wait_set(R.RXDCTL(q), R.RXDCTL_ENABLE, f"RXDCTL({q}).ENABLE (RX queue {q} start)",
                 QUEUE_ENABLE_TIMEOUT, sleep)
    # Every descriptor holds a buffer, but the device gets all of them but one: RDT == RDH
    # means "ring empty" to the 82599, so handing over the whole ring would hand over nothing.
    bar.write(R.RDH(q), 0)
    bar.write(R.RDT(q), rxq.entries - 1)


# 4.6.8 Transmit Initialization: enabling a queue
def start_tx_queue(bar: pci.Bar, q: int, txq: TxQueue, sleep) -> None:
    txq.state[Q.QSTATE_TX_CLEAN] = 0
    txq.state[Q.QSTATE_TX_TAIL] = 0
    bar.write(R.TDH(q), 0)
    bar.write(R.TDT(q), 0)
    bar.set_flags(R.TXDCTL(q), R.TXDCTL_ENABLE)
    bar.wait_set(R.TXDCTL(q), R.TXDCTL_ENABLE, f"TXDCTL({q}).ENABLE (TX queue {q} start)",
                 QUEUE_ENABLE_TIMEOUT, sleep)


# 8.2.3.7.1 Filter Control Register: unicast and multicast promiscuous
def set_promiscuous(bar: pci.Bar, on: bool) -> None:
    if on:
        bar.set_flags(R.FCTRL, R.FCTRL_PROMISC)
    else:
        bar.clear_flags(R.FCTRL, R.FCTRL_PROMISC)


# LINKS: link up and the negotiated speed
def read_link(bar: pci.Bar) -> LinkState:
    links = bar.read(R.LINKS)
    if not links & R.LINKS_UP:
        return LinkState(False, 0)
    return LinkState(True, R.LINK_SPEED_MBIT.get(links & R.LINKS_SPEED_MASK, 0))


# 4.6.4 Link Setup: auto-negotiation started in init_link finishes here
def wait_for_link(bar: pci.Bar, timeout: float, sleep) -> LinkState:
    bar.wait_set(R.LINKS, R.LINKS_UP, "LINKS.UP (link up after auto-negotiation)", timeout, sleep,
                 interval=LINK_POLL_INTERVAL)
    return read_link(bar)


# ---- the device -------------------------------------------------------------------------

def check_spec(spec: PortSpec) -> None:
    where = f"port {spec.name!r}"
    if not 1 <= spec.rx_queues <= R.RSS_MAX_QUEUES:
        raise DeviceError(f"{where}: rx_queues must be 1..{R.RSS_MAX_QUEUES} (RSS spreads over at most "
                          f"{R.RSS_MAX_QUEUES} queues), got {spec.rx_queues}")
    if not 1 <= spec.tx_queues <= R.MAX_TX_QUEUES:
        raise DeviceError(f"{where}: tx_queues must be 1..{R.MAX_TX_QUEUES}, got {spec.tx_queues}")
    for key in ("rx_ring_size", "tx_ring_size"):
        n = getattr(spec, key)
        if not R.MIN_RING_ENTRIES <= n <= R.MAX_RING_ENTRIES or n & (n - 1):
            raise DeviceError(f"{where}: {key} must be a power of two from {R.MIN_RING_ENTRIES} to "
                              f"{R.MAX_RING_ENTRIES}, got {n}")


class IxgbeDevice(Device):
    driver_name = "ixgbe"
    min_rx_frame = ETH_MIN_FRAME     # an 82599 discards undersized frames (it counts them in RUC): one found
                                     # in a descriptor all the same is a bad packet

    def __init__(self, spec: PortSpec, bar: pci.Bar, arena: Arena, bufs: PacketBuffers,
                 rx_pools: dict[int, Mempool], tx_done: TxDone | None, create: bool, sleep, owner: bool,
                 hot_path: str | None = None):
        super().__init__(spec, tx_done)
        check_spec(spec)
        self.compiled = choose_hot_path(spec, hot_path, ixgbe_jit.AVAILABLE)
        self.bar = bar
        self.arena = arena
        self.bufs = bufs
        self.sleep = sleep
        self.owner = owner
        # a Homing takes the cleaned batch's index range the kernel already found
        self._home_range = tx_done.send_range if isinstance(tx_done, Homing) else None
        # VFIO: descriptors carry IOVAs of the opener's mappings (vfio.py), not physical addresses
        self._vfio = spec.options.get("vfio")
        self._data_addr = vfio.data_iova(self._vfio, bufs) if self._vfio else bufs.data_phys
        regs = bar.regs
        base = f"ixgbe.{spec.name}"
        self._rx = [RxQueue(arena, f"{base}.rxq{q}", spec.rx_ring_size, create, rx_pools.get(q), regs, q)
                    for q in range(spec.rx_queues)]
        self._tx = [TxQueue(arena, f"{base}.txq{q}", spec.tx_ring_size, create, regs, q)
                    for q in range(spec.tx_queues)]
        kernels = ixgbe_jit if self.compiled else ixgbe_numpy     # chosen once, bound per queue
        for q in self._rx + self._tx:
            q.bind(kernels, bufs, self._data_addr)
            if self._vfio:
                q.dma_addr = vfio.iova_base(self._vfio, arena) + q.desc_region.offset
        self.session: vfio.VfioSession | None = None     # the opener's VFIO container, group and device
        self._totals = DeviceStats()
        self._mac = read_mac(bar)

    # ---- life cycle ---------------------------------------------------------------------
    @classmethod
    def arena_regions(cls, spec: PortSpec) -> list[RegionSize]:
        return ([r for _ in range(spec.rx_queues) for r in _Queue.arena_regions(spec.rx_ring_size)]
                + [r for _ in range(spec.tx_queues) for r in _Queue.arena_regions(spec.tx_ring_size)])

    @classmethod
    def open(cls, spec: PortSpec, arena: Arena, bufs: PacketBuffers, rx_pools: list[Mempool],
             tx_done: TxDone | None = None, sysfs_root: str = "/sys", sleep=time.sleep,
             link_timeout: float = LINK_TIMEOUT, allow_iova: bool | None = None,
             trace: list | None = None, hot_path: str | None = None) -> IxgbeDevice:
        """Take the 82599 at spec.address, reset and initialise it, fill the RX rings, wait for link.

        ``trace``: a list that receives every register write (offset, value) in order.
        ``hot_path``: "auto" (numba when installed), "numpy" or "numba"; default spec.options.
        """
        check_spec(spec)
        choose_hot_path(spec, hot_path, ixgbe_jit.AVAILABLE)
        simulated = spec.driver == "sim" if allow_iova is None else allow_iova
        spec.options.pop("vfio", None)
        use_vfio = vfio.choose(vfio.check_mode(spec.options, spec.name), spec.address, sysfs_root)
        check_rx_pools(spec, rx_pools, advice=" (ixy uses at least 4096)")
        if not use_vfio:
            for what, a in (("device", arena), ("packet", bufs.arena)):
                if not a.physical:
                    raise DeviceError(f"port {spec.name!r}: the {what} arena {a.name} was made without physical "
                                      "addresses (for VFIO ports only); use iommu = \"vfio\" or an arena "
                                      "made with physical=True")
        if not simulated and not use_vfio:
            for what, a in (("device", arena), ("packet", bufs.arena)):
                if not a.hugepages:
                    raise DeviceError(
                        f"port {spec.name!r}: the {what} arena {a.name} is not on hugepages, so it has "
                        "simulated I/O addresses, not physical ones; a real 82599 would DMA to random "
                        "memory. Run as root with hugepages (" + hugepages.reserve_advice(512)
                        + ") or use a sim port")
        session = vfio.open_vfio(spec.address, sysfs_root) if use_vfio else None
        bar = session.bar if session else pci.open_device(spec.address, sysfs_root, require_root=not simulated)
        bar.trace = trace
        dev = None
        try:
            if session:     # the spec carries the device fd and IOVAs to the stage processes
                spec.options["vfio"] = vfio.VfioAttach(session.handoff(), vfio.map_arenas(session, arena, bufs))
            dev = cls(spec, bar, arena, bufs, dict(enumerate(rx_pools)), tx_done, create=True,
                      sleep=sleep, owner=True, hot_path=hot_path)
            dev.session = session
            dev.reset_and_init(link_timeout)
        except BaseException:
            if dev is not None:
                dev._return_ring_buffers()
            bar.close()
            if session:
                session.close()
                spec.options.pop("vfio", None)
            raise
        bar.trace = None
        if not session:
            pci.share(bar)      # initialised: stage processes may attach now (VFIO: they get the device fd)
        return dev

    @classmethod
    def attach(cls, spec: PortSpec, arena: Arena, bufs: PacketBuffers, rx_pools: dict[int, Mempool] | None,
               tx_done: TxDone | None = None, sysfs_root: str = "/sys", sleep=time.sleep,
               hot_path: str | None = None) -> IxgbeDevice:
        """Map the BAR of a port another process opened and find its rings in the arena (no reset)."""
        check_spec(spec)
        for q in rx_pools or {}:
            if not 0 <= q < spec.rx_queues:
                raise DeviceError(f"port {spec.name!r} has RX queues 0..{spec.rx_queues - 1}, no queue {q}")
        handoff = spec.options.get("vfio")
        bar = vfio.attach_bar(handoff, spec.address) if handoff else pci.attach_device(spec.address, sysfs_root)
        try:
            return cls(spec, bar, arena, bufs, dict(rx_pools or {}), tx_done, create=False, sleep=sleep,
                       owner=False, hot_path=hot_path)
        except BaseException:
            bar.close()
            raise

    def reset_and_init(self, link_timeout: float) -> None:
        """ixy's reset_and_init: datasheet 4.6.3 to 4.6.8, then start queues, promisc, link."""
        bar, sleep = self.bar, self.sleep
        disable_interrupts(bar)
        global_reset(bar, sleep)
        disable_interrupts(bar)             # the reset turned the defaults back on
        self._mac = read_mac(bar)
        log.debug("%s: reset 82599 %s, MAC %s", self.name, self.spec.address, format_mac(self._mac))
        wait_eeprom_auto_read(bar, sleep)
        wait_dma_init(bar, sleep)
        init_link(bar)
        reset_statistics(bar)
        max_data, kb, mfs = init_rx(bar, self._rx)
        if mfs:
            log.debug("%s: RX buffers hold %d bytes: BSIZEPKT %d KB, max frame %d bytes with FCS (%d without, %d "
                      "with an 802.1Q tag); longer frames are dropped as too_long", self.name, max_data, kb, mfs,
                      mfs - R.OCTETS_FCS_LEN, mfs - R.OCTETS_FCS_LEN + R.MFS_VLAN_EXTRA)
        init_tx(bar, self._tx)
        for q, rxq in enumerate(self._rx):
            start_rx_queue(bar, q, rxq, self._data_addr, sleep)
        for q, txq in enumerate(self._tx):
            start_tx_queue(bar, q, txq, sleep)
        set_promiscuous(bar, self.spec.promiscuous)
        if link_timeout > 0:
            link = wait_for_link(bar, link_timeout, sleep)
            log.info("%s: link up at %d Mbit/s", self.name, link.speed_mbit)
        self._totals = DeviceStats()

    def _return_ring_buffers(self) -> None:
        """A failed open gives the buffers it put in the RX rings back to their pools."""
        if self.bar is not None:
            self.bar.clear_flags(R.RXCTRL, R.RXCTRL_RXEN)
        for rxq in self._rx:
            if rxq.filled:
                rxq.pool.free(rxq.slot_buf.copy())
                rxq.filled = False

    def close(self) -> None:
        """Unmap the BAR.  The opener also stops reception so the NIC writes no more into buffers."""
        if self.bar is None:
            return
        if self.owner:
            self.bar.clear_flags(R.RXCTRL, R.RXCTRL_RXEN)
        for q in self._rx + self._tx:
            q.regs = q.burst = None        # no view of the BAR may outlive its mapping
        self._rx, self._tx = [], []
        self.bar.close()
        self.bar = None
        if self.session is not None:     # unmap the DMA memory, close device, group, container
            self.session.close()
            self.session = None

    # ---- receive ------------------------------------------------------------------------
    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        rxq = self._rx_queue(queue)
        got = rxq.burst(out)
        if got < 0:
            raise self._no_eop(queue, int(rxq.bad[0]))
        if got and rxq.pool.debug:          # the kernel popped from the free stack: tell the pool
            rxq.pool.note_popped(rxq.slot_buf[(int(rxq.state[Q.QSTATE_RX_NEXT]) - got + np.arange(got)) & rxq.mask])
        return got

    def _no_eop(self, queue: int, descriptor: int) -> DeviceError:
        return DeviceError(f"{self.name} RX queue {queue}: descriptor {descriptor} holds a frame without EOP "
                           "(multi-buffer frames are not supported)")

    def _rx_queue(self, queue: int) -> RxQueue:
        try:
            rxq = self._rx[queue]
        except (IndexError, TypeError):
            raise DeviceError(f"{self.name}: no RX queue {queue} (the port has {len(self._rx)})") from None
        if rxq.pool is None:
            raise DeviceError(f"{self.name}: RX queue {queue} was attached without its mempool")
        return rxq

    def compiled_rx(self, queue: int):
        rxq = self._rx_queue(queue)
        if not self.compiled or rxq.pool.debug:      # a debug pool learns of pops through rx_batch only
            return None
        return ixgbe_jit.rx_queue, rxq.record

    def compiled_tx(self, queue: int):
        txq = self._tx_queue(queue)
        if not self.compiled or self.tx_done is None:
            return None
        return ixgbe_jit.tx_queue, txq.record, txq.freed, txq.state, Q.QSTATE_TX_HANDING

    def rx_held(self, queue: int) -> np.ndarray:
        """Buffer indices sitting in the RX descriptors of ``queue`` (every slot holds one)."""
        return self._rx[queue].slot_buf.copy()

    # ---- transmit -----------------------------------------------------------------------
    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        txq = self._tx_queue(queue)
        if self.tx_done is None:
            self.check_tx_done(queue)
        posted, cleaned = txq.burst(bufs)
        self._hand_back(txq, cleaned)
        if posted < 0:
            kind, position = int(txq.error[0]), int(txq.error[1])
            if kind == ixgbe_numpy.TX_BAD_INDEX:
                raise self._bad_index(queue, int(bufs[position]))
            raise self._bad_length(queue, bufs, position)
        return posted

    def _hand_back(self, txq: TxQueue, cleaned: int) -> None:
        """The kernel cleaned ``cleaned`` descriptors: their buffers (txq.freed) go to tx_done."""
        if not cleaned:
            return
        if self._home_range is not None:
            lo, hi = txq.lohi.tolist()
            self._home_range(txq.freed[:cleaned], lo, hi)
        else:
            self.tx_done(txq.freed[:cleaned].copy())
        txq.state[Q.QSTATE_TX_HANDING] = 0

    def _bad_index(self, queue: int, index: int) -> DeviceError:
        return DeviceError(f"{self.name} TX queue {queue}: buffer index {index} is out of range "
                           f"(the arena has {self.bufs.count} packet buffers)")

    def _bad_length(self, queue: int, idx: np.ndarray, position: int) -> DeviceError:
        return DeviceError(f"{self.name} TX queue {queue}: buffer {int(idx[position])} has length "
                           f"{int(self.bufs.length[idx[position]])}; a packet must be 1..{self.bufs.max_data} "
                           "bytes")

    def _tx_queue(self, queue: int) -> TxQueue:
        try:
            return self._tx[queue]
        except (IndexError, TypeError):
            raise DeviceError(f"{self.name}: no TX queue {queue} (the port has {len(self._tx)})") from None

    def tx_pending(self, queue: int) -> int:
        """Descriptors posted and not yet cleaned (their buffers are still the NIC's)."""
        txq = self._tx_queue(queue)
        return (int(txq.state[Q.QSTATE_TX_TAIL]) - int(txq.state[Q.QSTATE_TX_CLEAN])) & txq.mask

    def tx_posted(self, queue: int) -> int | None:
        """Descriptors posted on the queue since it was set up (by whichever process posted them)."""
        return int(self._tx_queue(queue).state[Q.QSTATE_TX_POSTED])

    def tx_sent_in_hand(self, queue: int) -> int:
        """Buffers the queue's last clean took off the ring that its process has not handed home yet."""
        return int(self._tx_queue(queue).state[Q.QSTATE_TX_HANDING])

    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        """Wait until every posted descriptor is done and its buffer handed to tx_done.

        Returns how many are still pending when ``timeout`` ran out (0 = drained).
        """
        txq = self._tx_queue(queue)
        polls = max(1, int(timeout / DRAIN_POLL_INTERVAL))
        for attempt in range(polls + 1):
            pending = self.tx_pending(queue)
            if pending == 0:
                return 0
            self.check_tx_done(queue)
            self._hand_back(txq, txq.burst(_NOTHING)[1])      # whole clean batches
            clean, tail = int(txq.state[Q.QSTATE_TX_CLEAN]), int(txq.state[Q.QSTATE_TX_TAIL])
            pending = (tail - clean) & txq.mask
            if pending == 0:
                return 0
            # the rest is less than a clean batch: done when the last posted descriptor is
            if (int(txq.desc64[(tail - 1) & txq.mask, 1]) >> R.TXD_WORD2_STATUS_SHIFT) & R.TXD_STAT_DD:
                ixgbe_numpy.collect(txq.slot_buf, txq.state, txq.freed, txq.lohi, clean, pending)
                self._hand_back(txq, pending)
                return 0
            if attempt < polls:
                self.sleep(DRAIN_POLL_INTERVAL)
        log.warning("%s TX queue %d: %d descriptors still pending after %g s (TDH %d, TDT %d)", self.name,
                    queue, pending, timeout, self.bar.read(R.TDH(queue)), self.bar.read(R.TDT(queue)))
        return pending

    # ---- control ------------------------------------------------------------------------
    def read_stats(self) -> DeviceStats:
        bar = self.bar
        rx_packets, tx_packets = bar.read(R.GPRC), bar.read(R.GPTC)
        rx_bytes = bar.read(R.GORCL) + (bar.read(R.GORCH) << 32)
        tx_bytes = bar.read(R.GOTCL) + (bar.read(R.GOTCH) << 32)
        dropped = sum(bar.read(R.MPC(i)) for i in range(PACKET_BUFFERS))
        dropped += sum(bar.read(R.QPRDC(q)) for q in range(min(self.spec.rx_queues, R.QPRDC_QUEUES)))
        too_long = bar.read(R.ROC)          # longer than the max frame size init_rx set: dropped by the MAC
        runts = bar.read(R.RUC)             # shorter than 64 bytes with FCS: dropped by the MAC
        self._totals = self._totals + DeviceStats(rx_packets, tx_packets, rx_bytes, tx_bytes, dropped, 0, too_long,
                                                  runts)
        return DeviceStats(**vars(self._totals))

    def reset_stats(self) -> None:
        self.read_stats()
        self._totals = DeviceStats()

    def set_promisc(self, on: bool) -> None:
        set_promiscuous(self.bar, on)

    def link_state(self) -> LinkState:
        return read_link(self.bar)

    @property
    def mac(self) -> bytes:
        return self._mac

    @property
    def num_rx_queues(self) -> int:
        return len(self._rx) if self.bar is not None else self.spec.rx_queues

    @property
    def num_tx_queues(self) -> int:
        return len(self._tx) if self.bar is not None else self.spec.tx_queues


__all__ = ["IxgbeDevice", "RxQueue", "TxQueue"]
