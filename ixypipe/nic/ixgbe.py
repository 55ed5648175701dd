"""The ixgbe driver: an Intel 82599 driven from user space through its BAR0 (ixy's ixgbe.c).

Owns the device's bring-up (the datasheet's 4.6.3-4.6.8 init sequence, in
ixy's order, one small function per step), the RX and TX descriptor rings
and the batch hot paths.  Rings and all per-queue software state (next RX
descriptor, TX clean index and tail, and for every descriptor the index of
the packet buffer sitting in it) live in named regions of the device arena
(``ixgbe.<port>.rxq<q>.*`` / ``.txq<q>.*``), so the supervisor can open and
initialise a port and a stage process can :meth:`IxgbeDevice.attach` and
carry on.  ``rx_batch`` and ``tx_batch`` touch a whole batch with a handful
of numpy operations and ring the doorbell (RDT/TDT) once per batch; when
numba is installed the same steps run as compiled kernels
(``ixgbe_jit.py``; ``hot_path`` "auto", "numpy" or "numba" chooses).

Simulated I/O addresses: a DMA arena on the /dev/shm fallback has no
physical addresses, only SIM_IOVA_BASE + offset.  A real 82599 would DMA
to those at random, so ``open`` refuses such an arena unless the port is a
software 82599: ``spec.driver == "sim"`` or an explicit ``allow_iova=True``.
"""

from __future__ import annotations

import logging
import time
import weakref

import numpy as np

from ixypipe.memory import hugepages
from ixypipe.memory.arena import Arena, ArenaError, RegionSize
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ixgbe_jit, pci, vfio
from ixypipe.nic.device import Device, DeviceError, DeviceStats, LinkState, PortSpec, TxDone, format_mac
from ixypipe.nic.registers import (
    AUTOC,
    AUTOC_10G_PMA_PMD_MASK,
    AUTOC_10G_XAUI,
    AUTOC_AN_RESTART,
    AUTOC_LMS_10G_SERIAL,
    AUTOC_LMS_MASK,
    CTRL,
    CTRL_EXT,
    CTRL_EXT_NS_DIS,
    CTRL_RST_MASK,
    DCA_RXCTRL,
    DCA_RXCTRL_RESERVED_BIT12,
    DESC_FILL_BYTE,
    DESC_SIZE,
    DMATXCTL,
    DMATXCTL_TE,
    DTXMXSZRQ,
    DTXMXSZRQ_MAX,
    EEC,
    EEC_ARD,
    EICR,
    EIMC,
    EIMC_ALL,
    EIMS,
    FCTRL,
    FCTRL_BAM,
    FCTRL_PROMISC,
    GORCH,
    GORCL,
    GOTCH,
    GOTCL,
    GPRC,
    GPTC,
    HLREG0,
    HLREG0_RXCRCSTRP,
    HLREG0_TXCRCEN,
    HLREG0_TXPADEN,
    LINK_SPEED_MBIT,
    LINKS,
    LINKS_SPEED_MASK,
    LINKS_UP,
    MAX_RING_ENTRIES,
    MAX_TX_QUEUES,
    MIN_RING_ENTRIES,
    MPC,
    MRQC,
    MRQC_RSSEN,
    QPRDC,
    QPRDC_QUEUES,
    QSTATE_ENTRIES,
    QSTATE_RX_NEXT,
    QSTATE_TX_CLEAN,
    QSTATE_TX_TAIL,
    QSTATE_WORDS,
    RAH,
    RAL,
    RDBAH,
    RDBAL,
    RDH,
    RDLEN,
    RDRXCTL,
    RDRXCTL_CRCSTRIP,
    RDRXCTL_DMAIDONE,
    RDT,
    RETA,
    RETA_ENTRIES,
    RETA_ENTRIES_PER_REGISTER,
    RING_ALIGN,
    RSS_DEFAULT_KEY,
    RSS_FIELDS_IPV4,
    RSS_MAX_QUEUES,
    RSSRK,
    RSSRK_REGISTERS,
    RTTDCS,
    RTTDCS_ARBDIS,
    RXCTRL,
    RXCTRL_RXEN,
    RXD_LENGTH_HALFWORD,
    RXD_STAT_DD,
    RXD_STAT_EOP,
    RXD_STATUS_BYTE,
    RXDCTL,
    RXDCTL_ENABLE,
    RXPBSIZE,
    RXPBSIZE_128KB,
    SRRCTL,
    SRRCTL_DESCTYPE_ADV_ONEBUF,
    SRRCTL_DESCTYPE_MASK,
    SRRCTL_DROP_EN,
    TDBAH,
    TDBAL,
    TDH,
    TDLEN,
    TDT,
    TX_CLEAN_BATCH,
    TXD_CMD_DATA,
    TXD_CMD_WORD,
    TXD_OLINFO_WORD,
    TXD_PAYLEN_SHIFT,
    TXD_STAT_DD,
    TXD_STATUS_BYTE,
    TXDCTL,
    TXDCTL_ENABLE,
    TXDCTL_HTHRESH_IXY,
    TXDCTL_HTHRESH_SHIFT,
    TXDCTL_PTHRESH_IXY,
    TXDCTL_PTHRESH_SHIFT,
    TXDCTL_THRESH_MASK,
    TXDCTL_WTHRESH_IXY,
    TXDCTL_WTHRESH_SHIFT,
    TXPBSIZE,
    TXPBSIZE_40KB,
)

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
RX_DD_EOP = RXD_STAT_DD | RXD_STAT_EOP


# ---- per-queue state in the device arena ------------------------------------------------

class _Queue:
    """One descriptor ring, its buffer-index array and its state words, all arena views."""

    def __init__(self, arena: Arena, prefix: str, entries: int, create: bool):
        self.prefix = prefix
        self.entries = entries
        self.mask = entries - 1
        desc_size, slots_size, state_size = self.arena_regions(entries)
        desc = _region(arena, f"{prefix}.desc", desc_size, create)
        slots = _region(arena, f"{prefix}.bufs", slots_size, create)
        state = _region(arena, f"{prefix}.state", state_size, create)
        self.desc_region = desc
        self.desc8 = arena.view(desc, np.uint8).reshape(entries, DESC_SIZE)
        self.desc16 = self.desc8.view("<u2")
        self.desc32 = self.desc8.view("<u4")
        self.desc64 = self.desc8.view("<u8")
        self.dma_addr = int(arena.phys(desc.offset))
        self.slot_buf = arena.view(slots, np.uint32)     # buffer index held by descriptor i
        self.state = arena.view(state, np.uint64)
        if create:
            self.state[:] = 0
            self.state[QSTATE_ENTRIES] = entries
        elif int(self.state[QSTATE_ENTRIES]) != entries:
            raise DeviceError(f"{prefix}: the arena's ring has {int(self.state[QSTATE_ENTRIES])} entries, "
                              f"the port spec says {entries}")

    @staticmethod
    def arena_regions(entries: int) -> list[RegionSize]:
        """The descriptor ring (in one page: physically contiguous), the buffer-index array, the state words."""
        return [RegionSize(entries * DESC_SIZE, align=RING_ALIGN, within_page=True),
                RegionSize(entries * 4, align=64), RegionSize(QSTATE_WORDS * 8, align=64)]


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
        super().__init__(arena, prefix, entries, create)
        self.pool = pool
        self.status = self.desc8[:, RXD_STATUS_BYTE]        # low byte of status_error: DD, EOP
        self.length = self.desc16[:, RXD_LENGTH_HALFWORD]
        self.addr = self.desc64[:, 0]                        # pkt_addr (read format)
        self.hdr = self.desc64[:, 1]                         # hdr_addr; writing 0 also clears DD
        self.regs = regs
        self.rdt = RDT(queue) >> 2
        self.bad = np.zeros(1, np.int64)                     # compiled path: where it found trouble
        self.filled = False                                  # open() put pool buffers in every slot
        # the compiled path pops fresh buffers straight off the pool's free stack
        self.stack = pool._stack if pool is not None else None
        self.top = pool._top if pool is not None else None


class TxQueue(_Queue):
    def __init__(self, arena, prefix, entries, create, regs: np.ndarray, queue: int):
        super().__init__(arena, prefix, entries, create)
        self.status = self.desc8[:, TXD_STATUS_BYTE]
        self.addr = self.desc64[:, 0]
        self.cmd = self.desc32[:, TXD_CMD_WORD]
        self.olinfo = self.desc32[:, TXD_OLINFO_WORD]
        # Clean in batches of 32 like ixy; a ring smaller than 64 never holds 32 outstanding
        # descriptors (one slot stays free), so there the batch is half the ring.
        self.clean_batch = min(TX_CLEAN_BATCH, entries // 2)
        self.regs = regs
        self.tdt = TDT(queue) >> 2
        self.freed = np.empty(entries, np.uint32)           # compiled path: buffers it cleaned
        self.lohi = np.zeros(2, np.int64)                    # ... and their smallest and largest index
        self.error = np.zeros(2, np.int64)                   # ... and what was wrong with a buffer, where


# ---- buffers that finished transmitting go home ------------------------------------------

# Every mempool this process has handed to a port, by (packet arena, pool id): like ixy's
# pkt_buf->mempool pointer, a buffer's header names its pool, so any port can free it.
_home_pools: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def register_pools(pools) -> None:
    for pool in pools:
        _home_pools[(str(pool.arena.path), pool.pool_id)] = pool


class FreeToOwners:
    """The default tx_done: free buffers into the mempools that own them.

    Mempools own contiguous index ranges, so when a batch's smallest and
    largest index fall in the range of the pool that took the last batch,
    that pool owns it all and one free() does; otherwise the batch is split
    by each buffer's pool id (bufs.pool_id).
    """

    def __init__(self, bufs: PacketBuffers):
        self.bufs = bufs
        self.arena_key = str(bufs.arena.path)
        self._last: Mempool | None = None

    def __call__(self, idx: np.ndarray) -> None:
        if len(idx):
            self.free_range(idx, int(idx.min()), int(idx.max()))

    def free_range(self, idx: np.ndarray, lo: int, hi: int) -> None:
        """Free ``idx``, whose smallest index is ``lo`` and largest ``hi``."""
        pool = self._last
        if pool is None or lo < pool.first or hi >= pool.first + pool.count:
            pool = self._pool(int(self.bufs.pool_id[lo]), lo)
            if hi >= pool.first + pool.count:
                self._free_mixed(idx)
                return
            self._last = pool
        pool.free(idx)

    def _pool(self, pool_id: int, example: int) -> Mempool:
        pool = _home_pools.get((self.arena_key, pool_id))
        if pool is None:
            raise DeviceError(f"buffer {example} belongs to mempool id {pool_id}, which no port in this "
                              "process knows; pass a tx_done that sends it home")
        return pool

    def _free_mixed(self, idx: np.ndarray) -> None:
        owners = self.bufs.pool_id[idx]
        for pool_id in np.unique(owners):
            group = idx[owners == pool_id]
            self._pool(int(pool_id), int(group[0])).free(group)


def free_to_owners(bufs: PacketBuffers, idx: np.ndarray) -> None:
    """Free buffers into the mempools that own them (see FreeToOwners)."""
    FreeToOwners(bufs)(idx)


# ---- init steps, in ixy's order (datasheet section in each comment) ------------------------

# 4.6.3.1 Interrupts During Initialization
def disable_interrupts(bar: pci.Bar) -> None:
    # this driver polls; an interrupt nobody acknowledges would only cost PCIe bandwidth
    bar.write(EIMS, 0)
    bar.write(EIMC, EIMC_ALL)
    bar.read(EICR)                      # reading clears causes already latched


# 4.6.3.2 Global Reset and General Configuration
def global_reset(bar: pci.Bar, sleep) -> None:
    bar.write(CTRL, CTRL_RST_MASK)
    bar.wait_clear(CTRL, CTRL_RST_MASK, "CTRL.RST/LNK_RST to self-clear after the global reset",
                   RESET_TIMEOUT, sleep)
    sleep(RESET_SETTLE)                 # the datasheet asks for 10 ms before the next register access


def read_mac(bar: pci.Bar) -> bytes:
    low, high = bar.read(RAL(0)), bar.read(RAH(0))
    return low.to_bytes(4, "little") + (high & 0xFFFF).to_bytes(2, "little")


# 4.6.3 Initialization Sequence: wait for EEPROM auto-read completion
def wait_eeprom_auto_read(bar: pci.Bar, sleep) -> None:
    bar.wait_set(EEC, EEC_ARD, "EEC.ARD (EEPROM auto-read done)", EEPROM_TIMEOUT, sleep)


# 4.6.3 Initialization Sequence: wait for DMA initialization done
def wait_dma_init(bar: pci.Bar, sleep) -> None:
    bar.wait_set(RDRXCTL, RDRXCTL_DMAIDONE, "RDRXCTL.DMAIDONE (DMA init done)", DMA_INIT_TIMEOUT, sleep)


# 4.6.4 Link Setup and Auto-Negotiation
def init_link(bar: pci.Bar) -> None:
    # 10G serial link mode with the XAUI PMA/PMD, then restart auto-negotiation; the link is
    # awaited at the very end so the queues are set up while it trains
    bar.write(AUTOC, (bar.read(AUTOC) & ~AUTOC_LMS_MASK) | AUTOC_LMS_10G_SERIAL)
    bar.write(AUTOC, (bar.read(AUTOC) & ~AUTOC_10G_PMA_PMD_MASK) | AUTOC_10G_XAUI)
    bar.set_flags(AUTOC, AUTOC_AN_RESTART)


# 4.6.5 Statistical Counters
def reset_statistics(bar: pci.Bar) -> None:
    # the counters clear on read: reading each once starts them from zero
    for reg in (GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH):
        bar.read(reg)


# 4.6.7 Receive Initialization
def init_rx(bar: pci.Bar, queues: list[RxQueue]) -> None:
    bar.clear_flags(RXCTRL, RXCTRL_RXEN)            # no reception while the queues are being set up
    # all of the 512 KB RX packet buffer would go to buffer 0 without DCB; ixy sets 128 KB
    bar.write(RXPBSIZE(0), RXPBSIZE_128KB)
    for i in range(1, PACKET_BUFFERS):
        bar.write(RXPBSIZE(i), 0)
    # strip the CRC: the 4 FCS bytes are of no use to software and would count in lengths
    bar.set_flags(HLREG0, HLREG0_RXCRCSTRP)
    bar.set_flags(RDRXCTL, RDRXCTL_CRCSTRIP)
    bar.set_flags(FCTRL, FCTRL_BAM)                 # accept broadcast
    for q, rxq in enumerate(queues):
        init_rx_queue(bar, q, rxq)
    if len(queues) > 1:
        init_rss(bar, len(queues))
    # "last sentence" of 4.6.7: no-snoop disable, the 82599 must snoop the CPU caches
    bar.set_flags(CTRL_EXT, CTRL_EXT_NS_DIS)
    for q in range(len(queues)):
        # reserved bit that comes out of reset as 1; the datasheet says software must write 0
        bar.clear_flags(DCA_RXCTRL(q), DCA_RXCTRL_RESERVED_BIT12)
    bar.set_flags(RXCTRL, RXCTRL_RXEN)


# 4.6.7 Receive Initialization, per queue
def init_rx_queue(bar: pci.Bar, q: int, rxq: RxQueue) -> None:
    # advanced descriptors, one buffer per packet; the buffer size stays at its 2 KB default,
    # enough for a 1518-byte frame in the 1984 data bytes of a 2048-byte pkt_buf
    bar.write(SRRCTL(q), (bar.read(SRRCTL(q)) & ~SRRCTL_DESCTYPE_MASK) | SRRCTL_DESCTYPE_ADV_ONEBUF)
    # with no free descriptor drop the packet (and count it) instead of blocking the other queues
    bar.set_flags(SRRCTL(q), SRRCTL_DROP_EN)
    rxq.desc8[:] = DESC_FILL_BYTE                   # ixy: garbage, not zeros, until the queue starts
    bar.write(RDBAL(q), rxq.dma_addr & 0xFFFFFFFF)
    bar.write(RDBAH(q), rxq.dma_addr >> 32)
    bar.write(RDLEN(q), rxq.entries * DESC_SIZE)
    bar.write(RDH(q), 0)
    bar.write(RDT(q), 0)


# 7.1.2.8 Receive-Side Scaling
def init_rss(bar: pci.Bar, n_queues: int) -> None:
    # the Toeplitz hash of IPv4 addresses and TCP/UDP ports picks one of 128 RETA entries;
    # entry j names queue j mod n, so flows spread evenly and each flow stays on one queue
    for i in range(RSSRK_REGISTERS):
        word = RSS_DEFAULT_KEY[4 * i:4 * i + 4]
        bar.write(RSSRK(i), int.from_bytes(word, "little"))
    per = RETA_ENTRIES_PER_REGISTER
    for i in range(RETA_ENTRIES // per):
        entries = [(per * i + k) % n_queues for k in range(per)]
        bar.write(RETA(i), int.from_bytes(bytes(entries), "little"))
    bar.write(MRQC, MRQC_RSSEN | RSS_FIELDS_IPV4)


# 4.6.8 Transmit Initialization
def init_tx(bar: pci.Bar, queues: list[TxQueue]) -> None:
    # the MAC appends the CRC and pads short frames to 64 bytes
    bar.set_flags(HLREG0, HLREG0_TXCRCEN | HLREG0_TXPADEN)
    bar.write(TXPBSIZE(0), TXPBSIZE_40KB)
    for i in range(1, PACKET_BUFFERS):
        bar.write(TXPBSIZE(i), 0)
    bar.write(DTXMXSZRQ, DTXMXSZRQ_MAX)             # required when DCB is off
    bar.clear_flags(RTTDCS, RTTDCS_ARBDIS)          # the TX arbiter must run for any queue to send
    for q, txq in enumerate(queues):
        init_tx_queue(bar, q, txq)
    bar.write(DMATXCTL, DMATXCTL_TE)


# 4.6.8 Transmit Initialization, per queue
def init_tx_queue(bar: pci.Bar, q: int, txq: TxQueue) -> None:
    txq.desc8[:] = DESC_FILL_BYTE
    bar.write(TDBAL(q), txq.dma_addr & 0xFFFFFFFF)
    bar.write(TDBAH(q), txq.dma_addr >> 32)
    bar.write(TDLEN(q), txq.entries * DESC_SIZE)
    # descriptor prefetch/host/write-back thresholds as ixy sets them (from DPDK) for throughput
    thresholds = ((TXDCTL_THRESH_MASK << TXDCTL_PTHRESH_SHIFT) | (TXDCTL_THRESH_MASK << TXDCTL_HTHRESH_SHIFT)
                  | (TXDCTL_THRESH_MASK << TXDCTL_WTHRESH_SHIFT))
    value = bar.read(TXDCTL(q)) & ~thresholds
    value |= ((TXDCTL_PTHRESH_IXY << TXDCTL_PTHRESH_SHIFT) | (TXDCTL_HTHRESH_IXY << TXDCTL_HTHRESH_SHIFT)
              | (TXDCTL_WTHRESH_IXY << TXDCTL_WTHRESH_SHIFT))
    bar.write(TXDCTL(q), value)


# 4.6.7 Receive Initialization: enabling a queue
def start_rx_queue(bar: pci.Bar, q: int, rxq: RxQueue, data_phys: np.ndarray, sleep) -> None:
    idx = rxq.pool.alloc_exact(rxq.entries)
    rxq.slot_buf[:] = idx
    rxq.filled = True
    rxq.addr[:] = data_phys[idx]                    # the NIC writes the frame at buffer + headroom
    rxq.hdr[:] = 0                                  # no header split; also clears DD of every slot
    rxq.state[QSTATE_RX_NEXT] = 0
    bar.set_flags(RXDCTL(q), RXDCTL_ENABLE)
    bar.wait_set(RXDCTL(q), RXDCTL_ENABLE, f"RXDCTL({q}).ENABLE (RX queue {q} start)",
                 QUEUE_ENABLE_TIMEOUT, sleep)
    # Every descriptor holds a buffer, but the device gets all of them but one: RDT == RDH
    # means "ring empty" to the 82599, so handing over the whole ring would hand over nothing.
    bar.write(RDH(q), 0)
    bar.write(RDT(q), rxq.entries - 1)


# 4.6.8 Transmit Initialization: enabling a queue
def start_tx_queue(bar: pci.Bar, q: int, txq: TxQueue, sleep) -> None:
    txq.state[QSTATE_TX_CLEAN] = 0
    txq.state[QSTATE_TX_TAIL] = 0
    bar.write(TDH(q), 0)
    bar.write(TDT(q), 0)
    bar.set_flags(TXDCTL(q), TXDCTL_ENABLE)
    bar.wait_set(TXDCTL(q), TXDCTL_ENABLE, f"TXDCTL({q}).ENABLE (TX queue {q} start)",
                 QUEUE_ENABLE_TIMEOUT, sleep)


# 8.2.3.7.1 Filter Control Register: unicast and multicast promiscuous
def set_promiscuous(bar: pci.Bar, on: bool) -> None:
    if on:
        bar.set_flags(FCTRL, FCTRL_PROMISC)
    else:
        bar.clear_flags(FCTRL, FCTRL_PROMISC)


def read_link(bar: pci.Bar) -> LinkState:
    links = bar.read(LINKS)
    if not links & LINKS_UP:
        return LinkState(False, 0)
    return LinkState(True, LINK_SPEED_MBIT.get(links & LINKS_SPEED_MASK, 0))


# 4.6.4 Link Setup: auto-negotiation started in init_link finishes here
def wait_for_link(bar: pci.Bar, timeout: float, sleep) -> LinkState:
    bar.wait_set(LINKS, LINKS_UP, "LINKS.UP (link up after auto-negotiation)", timeout, sleep,
                 interval=LINK_POLL_INTERVAL)
    return read_link(bar)


# ---- the device -------------------------------------------------------------------------

HOT_PATHS = ("auto", "numpy", "numba")


def choose_hot_path(spec: PortSpec, hot_path: str | None) -> bool:
    """True for the compiled (numba) RX/TX path: "auto" takes it when numba is installed."""
    choice = hot_path or spec.options.get("hot_path", "auto")
    if choice not in HOT_PATHS:
        raise DeviceError(f"port {spec.name!r}: hot_path must be one of {', '.join(HOT_PATHS)}, got {choice!r}")
    if choice == "numba" and not ixgbe_jit.AVAILABLE:
        raise DeviceError(f"port {spec.name!r}: hot_path numba needs the numba package (pip install numba)")
    return choice == "numba" or (choice == "auto" and ixgbe_jit.AVAILABLE)


def check_spec(spec: PortSpec) -> None:
    where = f"port {spec.name!r}"
    if not 1 <= spec.rx_queues <= RSS_MAX_QUEUES:
        raise DeviceError(f"{where}: rx_queues must be 1..{RSS_MAX_QUEUES} (RSS spreads over at most "
                          f"{RSS_MAX_QUEUES} queues), got {spec.rx_queues}")
    if not 1 <= spec.tx_queues <= MAX_TX_QUEUES:
        raise DeviceError(f"{where}: tx_queues must be 1..{MAX_TX_QUEUES}, got {spec.tx_queues}")
    for key in ("rx_ring_size", "tx_ring_size"):
        n = getattr(spec, key)
        if not MIN_RING_ENTRIES <= n <= MAX_RING_ENTRIES or n & (n - 1):
            raise DeviceError(f"{where}: {key} must be a power of two from {MIN_RING_ENTRIES} to "
                              f"{MAX_RING_ENTRIES}, got {n}")


class IxgbeDevice(Device):
    driver_name = "ixgbe"

    def __init__(self, spec: PortSpec, bar: pci.Bar, arena: Arena, bufs: PacketBuffers,
                 rx_pools: dict[int, Mempool], tx_done: TxDone | None, create: bool, sleep, owner: bool,
                 hot_path: str | None = None):
        super().__init__(spec)
        check_spec(spec)
        self.compiled = choose_hot_path(spec, hot_path)
        self.bar = bar
        self.arena = arena
        self.bufs = bufs
        self.sleep = sleep
        self.owner = owner
        # VFIO: descriptors carry IOVAs of the opener's mappings (vfio.py), not physical addresses
        self._vfio = spec.options.get("vfio")
        self._data_phys = vfio.data_iova(self._vfio, bufs) if self._vfio else bufs.data_phys
        self._max_data = bufs.max_data
        register_pools(rx_pools.values())
        self._owner_free = FreeToOwners(bufs) if tx_done is None else None
        self.tx_done: TxDone = tx_done or self._owner_free
        regs = bar.regs
        base = f"ixgbe.{spec.name}"
        self._rx = [RxQueue(arena, f"{base}.rxq{q}", spec.rx_ring_size, create, rx_pools.get(q), regs, q)
                    for q in range(spec.rx_queues)]
        self._tx = [TxQueue(arena, f"{base}.txq{q}", spec.tx_ring_size, create, regs, q)
                    for q in range(spec.tx_queues)]
        if self._vfio:
            for q in self._rx + self._tx:
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
        choose_hot_path(spec, hot_path)
        simulated = spec.driver == "sim" if allow_iova is None else allow_iova
        spec.options.pop("vfio", None)
        use_vfio = vfio.choose(vfio.check_mode(spec.options, spec.name), spec.address, sysfs_root)
        if len(rx_pools) != spec.rx_queues:
            raise DeviceError(f"port {spec.name!r}: {spec.rx_queues} RX queues need {spec.rx_queues} "
                              f"mempools, got {len(rx_pools)}")
        for q, pool in enumerate(rx_pools):
            if pool.available() < spec.rx_ring_size:
                raise DeviceError(f"port {spec.name!r}: mempool {pool.name!r} of RX queue {q} has "
                                  f"{pool.available()} free buffers, the {spec.rx_ring_size}-entry ring "
                                  f"needs {spec.rx_ring_size} (ixy uses at least 4096)")
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
        log.info("%s: reset 82599 %s, MAC %s", self.name, self.spec.address, format_mac(self._mac))
        wait_eeprom_auto_read(bar, sleep)
        wait_dma_init(bar, sleep)
        init_link(bar)
        reset_statistics(bar)
        init_rx(bar, self._rx)
        init_tx(bar, self._tx)
        for q, rxq in enumerate(self._rx):
            start_rx_queue(bar, q, rxq, self._data_phys, sleep)
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
            self.bar.clear_flags(RXCTRL, RXCTRL_RXEN)
        for rxq in self._rx:
            if rxq.filled:
                rxq.pool.free(rxq.slot_buf.copy())
                rxq.filled = False

    def close(self) -> None:
        """Unmap the BAR.  The opener also stops reception so the NIC writes no more into buffers."""
        if self.bar is None:
            return
        if self.owner:
            self.bar.clear_flags(RXCTRL, RXCTRL_RXEN)
        for q in self._rx + self._tx:
            q.regs = None
        self._rx, self._tx = [], []
        self.bar.close()
        self.bar = None
        if self.session is not None:     # unmap the DMA memory, close device, group, container
            self.session.close()
            self.session = None

    # ---- receive ------------------------------------------------------------------------
    def rx_batch(self, queue: int, out: np.ndarray) -> int:
        rxq = self._rx_queue(queue)
        pool = rxq.pool
        if self.compiled and not pool.debug:
            got = ixgbe_jit.rx_burst(rxq.desc64, rxq.slot_buf, rxq.state, out, self.bufs.length,
                                     self._data_phys, rxq.stack, rxq.top, rxq.regs, rxq.rdt, rxq.bad)
            if got < 0:
                raise self._no_eop(queue, int(rxq.bad[0]))
            return got
        want = len(out)
        i = int(rxq.state[QSTATE_RX_NEXT])
        got = 0
        while got < want:                   # two passes at most: up to the ring's end, then from 0
            n = min(want - got, rxq.entries - i)
            # one snapshot of the status bytes: the device keeps writing while we look
            status = rxq.status[i:i + n] & RX_DD_EOP
            ready = status == RX_DD_EOP
            k = int(ready.argmin())         # descriptors are written back in order: a run from i
            if ready[k]:
                k = n
            elif status[k] == RXD_STAT_DD:
                raise self._no_eop(queue, i + k)
            k = min(k, pool.available())    # no fresh buffer, no swap: the frame waits in its slot
            if k == 0:
                break
            taken = rxq.slot_buf[i:i + k]
            out[got:got + k] = taken
            self.bufs.length[taken] = rxq.length[i:i + k]
            fresh = pool.alloc(k)
            rxq.slot_buf[i:i + k] = fresh
            rxq.addr[i:i + k] = self._data_phys[fresh]
            rxq.hdr[i:i + k] = 0            # back to read format: clears DD for the next lap
            got += k
            i = (i + k) & rxq.mask
            if k < n:
                break
        if got:
            rxq.state[QSTATE_RX_NEXT] = i
            # x86 keeps stores in order, so the descriptors are visible before the doorbell;
            # on Arm a dma_wmb() would go right here.
            # RDT stays one behind the next descriptor to read (see start_rx_queue): the slot at
            # i - 1 holds a fresh buffer the device may use only after the next batch.
            rxq.regs[rxq.rdt] = (i - 1) & rxq.mask
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

    def rx_held(self, queue: int) -> np.ndarray:
        """Buffer indices sitting in the RX descriptors of ``queue`` (every slot holds one)."""
        return self._rx[queue].slot_buf.copy()

    # ---- transmit -----------------------------------------------------------------------
    def tx_batch(self, queue: int, bufs: np.ndarray) -> int:
        txq = self._tx_queue(queue)
        if self.compiled:
            return self._tx_batch_compiled(queue, txq, bufs)
        clean, tail = self._tx_clean(txq)
        # one slot stays free: TDT == TDH means "nothing to send", so a full ring would look empty
        free = (clean - tail - 1) & txq.mask
        n = min(len(bufs), free)
        if n == 0:
            return 0
        idx = bufs[:n]
        try:
            lens = self.bufs.length[idx]
        except IndexError:
            raise self._bad_index(queue, int(idx[(idx < 0) | (idx >= self.bufs.count)][0])) from None
        if int((lens - np.uint32(1)).max()) >= self._max_data:   # 0 wraps to the largest u32
            raise self._bad_length(queue, idx, int(np.flatnonzero((lens == 0) | (lens > self._max_data))[0]))
        posted, t = 0, tail
        while posted < n:                   # two passes at most, like RX
            k = min(n - posted, txq.entries - t)
            seg, seg_len = idx[posted:posted + k], lens[posted:posted + k]
            txq.addr[t:t + k] = self._data_phys[seg]
            # advanced data descriptor: EOP (one buffer per packet), IFCS (MAC adds the CRC),
            # RS (report status: write DD back, which is how cleaning finds finished slots)
            txq.cmd[t:t + k] = seg_len | TXD_CMD_DATA
            txq.olinfo[t:t + k] = seg_len << TXD_PAYLEN_SHIFT
            txq.slot_buf[t:t + k] = seg
            posted += k
            t = (t + k) & txq.mask
        txq.state[QSTATE_TX_TAIL] = t
        txq.regs[txq.tdt] = t               # one doorbell per batch (x86: stores stay in order)
        return n

    def _tx_batch_compiled(self, queue: int, txq: TxQueue, bufs: np.ndarray) -> int:
        r = ixgbe_jit.tx_burst(txq.desc64, txq.slot_buf, txq.state, bufs, self.bufs.length, self._data_phys,
                               txq.regs, txq.tdt, txq.clean_batch, txq.freed, txq.lohi, txq.error,
                               self._max_data)
        if r < 0:
            self._hand_back(txq, ixgbe_jit.TX_ERROR - r)
            kind, position = int(txq.error[0]), int(txq.error[1])
            if kind == ixgbe_jit.TX_BAD_INDEX:
                raise self._bad_index(queue, int(bufs[position]))
            raise self._bad_length(queue, bufs, position)
        self._hand_back(txq, r >> 32)
        return r & 0xFFFFFFFF

    def _hand_back(self, txq: TxQueue, cleaned: int) -> None:
        if not cleaned:
            return
        if self._owner_free is not None:     # the default: the kernel already found the index range
            self._owner_free.free_range(txq.freed[:cleaned], int(txq.lohi[0]), int(txq.lohi[1]))
        else:
            self.tx_done(txq.freed[:cleaned].copy())

    def _bad_index(self, queue: int, index: int) -> DeviceError:
        return DeviceError(f"{self.name} TX queue {queue}: buffer index {index} is out of range "
                           f"(the arena has {self.bufs.count} packet buffers)")

    def _bad_length(self, queue: int, idx: np.ndarray, position: int) -> DeviceError:
        return DeviceError(f"{self.name} TX queue {queue}: buffer {int(idx[position])} has length "
                           f"{int(self.bufs.length[idx[position]])}; a packet must be 1..{self._max_data} bytes")

    def _tx_queue(self, queue: int) -> TxQueue:
        try:
            return self._tx[queue]
        except (IndexError, TypeError):
            raise DeviceError(f"{self.name}: no TX queue {queue} (the port has {len(self._tx)})") from None

    def _tx_clean(self, txq: TxQueue) -> tuple[int, int]:
        """Hand back the buffers of completed descriptors, whole clean batches at a time.

        Returns the (clean index, tail) after cleaning.
        """
        clean, tail = int(txq.state[QSTATE_TX_CLEAN]), int(txq.state[QSTATE_TX_TAIL])
        pending = (tail - clean) & txq.mask
        cb = txq.clean_batch
        done = 0
        # The device completes descriptors in order, so the DD bit of the last descriptor of a
        # batch says the whole batch is done; checking one per 32 keeps the loop short.
        while done + cb <= pending and txq.status[(clean + done + cb - 1) & txq.mask] & TXD_STAT_DD:
            done += cb
        if done:
            self._release(txq, clean, done)
        return (clean + done) & txq.mask, tail

    def _release(self, txq: TxQueue, clean: int, count: int) -> None:
        end = clean + count
        if end <= txq.entries:
            freed = txq.slot_buf[clean:end].copy()
        else:
            freed = np.concatenate((txq.slot_buf[clean:], txq.slot_buf[:end - txq.entries]))
        txq.state[QSTATE_TX_CLEAN] = end & txq.mask
        self.tx_done(freed)

    def tx_pending(self, queue: int) -> int:
        """Descriptors posted and not yet cleaned (their buffers are still the NIC's)."""
        txq = self._tx_queue(queue)
        return (int(txq.state[QSTATE_TX_TAIL]) - int(txq.state[QSTATE_TX_CLEAN])) & txq.mask

    def tx_drain(self, queue: int, timeout: float = 1.0) -> int:
        """Wait until every posted descriptor is done and its buffer handed to tx_done.

        Returns how many are still pending when ``timeout`` ran out (0 = drained).
        """
        txq = self._tx_queue(queue)
        polls = max(1, int(timeout / DRAIN_POLL_INTERVAL))
        for attempt in range(polls + 1):
            self._tx_clean(txq)
            clean, tail = int(txq.state[QSTATE_TX_CLEAN]), int(txq.state[QSTATE_TX_TAIL])
            pending = (tail - clean) & txq.mask
            if pending == 0:
                return 0
            # the rest is less than a clean batch: done when the last posted descriptor is
            if txq.status[(tail - 1) & txq.mask] & TXD_STAT_DD:
                self._release(txq, clean, pending)
                return 0
            if attempt < polls:
                self.sleep(DRAIN_POLL_INTERVAL)
        log.warning("%s TX queue %d: %d descriptors still pending after %g s (TDH %d, TDT %d)", self.name,
                    queue, pending, timeout, self.bar.read(TDH(queue)), self.bar.read(TDT(queue)))
        return pending

    # ---- control ------------------------------------------------------------------------
    def read_stats(self) -> DeviceStats:
        bar = self.bar
        rx_packets, tx_packets = bar.read(GPRC), bar.read(GPTC)
        rx_bytes = bar.read(GORCL) + (bar.read(GORCH) << 32)
        tx_bytes = bar.read(GOTCL) + (bar.read(GOTCH) << 32)
        dropped = sum(bar.read(MPC(i)) for i in range(PACKET_BUFFERS))
        dropped += sum(bar.read(QPRDC(q)) for q in range(min(self.spec.rx_queues, QPRDC_QUEUES)))
        self._totals = self._totals + DeviceStats(rx_packets, tx_packets, rx_bytes, tx_bytes, dropped, 0)
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


__all__ = ["FreeToOwners", "IxgbeDevice", "RxQueue", "TxQueue", "free_to_owners", "register_pools"]
