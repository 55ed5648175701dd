"""Intel 82599 register offsets, bit masks and descriptor layouts.

The one place these numbers live: the ixgbe driver and the software 82599
both import them (and rx_frame_limits, the RX buffer and frame sizes the
driver derives from a packet buffer's size).  Offsets are byte offsets into
BAR0 (every register 32 bits, little-endian); names follow ixy's
ixgbe_type.h and the 82599 datasheet.
"""

import numpy as np

BAR0_SIZE = 512 * 1024
# Every register the driver touches lies below 128 KiB (EEC at 0x10010 is the highest), so a
# resource0 at least this large is accepted even where the BAR is configured smaller than 512 KiB.
BAR0_MIN_SIZE = 128 * 1024

# --- PCI identity (config space) --------------------------------------------
PCI_VENDOR_INTEL = 0x8086
PCI_VENDOR_VIRTIO = 0x1AF4
IXGBE_82599_DEVICE_IDS = frozenset({
    0x10F7, 0x1514, 0x1517, 0x10F8, 0x10F9, 0x10FB, 0x152A, 0x1529,
    0x1507, 0x154D, 0x154A, 0x1558, 0x1557, 0x10FC, 0x151C, 0x154F,
})
IXGBE_82599_VF_IDS = frozenset({0x10ED, 0x152E})
PCI_CLASS_NETWORK = 0x02
PCI_CFG_VENDOR = 0x00       # u16
PCI_CFG_DEVICE = 0x02       # u16
PCI_CFG_COMMAND = 0x04      # u16
PCI_CFG_CLASS = 0x0B        # u8, base class
PCI_COMMAND_MEMORY = 1 << 1
PCI_COMMAND_BUS_MASTER = 1 << 2

# --- general control ---------------------------------------------------------
CTRL = 0x00000
CTRL_LNK_RST = 0x00000008
CTRL_RST = 0x04000000
CTRL_RST_MASK = CTRL_LNK_RST | CTRL_RST
CTRL_EXT = 0x00018
CTRL_EXT_NS_DIS = 0x00010000
EEC = 0x10010
EEC_ARD = 0x00000200

# --- interrupts ----------------------------------------------------------------
EICR = 0x00800
EIAC = 0x00810
EIMS = 0x00880
EIMC = 0x00888
EIMC_ALL = 0xFFFFFFFF


def EITR(i: int) -> int:
    return 0x00820 + 4 * i


# --- receive -------------------------------------------------------------------
def _rx_queue_base(i: int) -> int:
    return 0x01000 + 0x40 * i if i < 64 else 0x0D000 + 0x40 * (i - 64)


def RDBAL(i: int) -> int:
    return _rx_queue_base(i)


def RDBAH(i: int) -> int:
    return _rx_queue_base(i) + 0x04


def RDLEN(i: int) -> int:
    return _rx_queue_base(i) + 0x08


def RDH(i: int) -> int:
    return _rx_queue_base(i) + 0x10


def RDT(i: int) -> int:
    return _rx_queue_base(i) + 0x18


def RXDCTL(i: int) -> int:
    return _rx_queue_base(i) + 0x28


def SRRCTL(i: int) -> int:
    return 0x02100 + 4 * i if i <= 15 else _rx_queue_base(i) + 0x14


def DCA_RXCTRL(i: int) -> int:
    return 0x02200 + 4 * i if i <= 15 else _rx_queue_base(i) + 0x0C


RXDCTL_ENABLE = 0x02000000
SRRCTL_DESCTYPE_MASK = 0x0E000000
SRRCTL_DESCTYPE_ADV_ONEBUF = 0x02000000
SRRCTL_DESCTYPE_LEGACY = 0x00000000
SRRCTL_DROP_EN = 0x10000000
SRRCTL_BSIZEPKT_MASK = 0x0000001F      # packet buffer size in 1 KB units (0 = use RCTL default, 2 KB)
DCA_RXCTRL_RESERVED_BIT12 = 1 << 12    # resets to 1, must be written 0
RDRXCTL = 0x02F00
RDRXCTL_CRCSTRIP = 0x00000002
RDRXCTL_DMAIDONE = 0x00000008
RXCTRL = 0x03000
RXCTRL_RXEN = 0x00000001
FCTRL = 0x05080
FCTRL_MPE = 0x00000100
FCTRL_UPE = 0x00000200
FCTRL_BAM = 0x00000400
FCTRL_PROMISC = FCTRL_MPE | FCTRL_UPE
RXPBSIZE_128KB = 0x00020000


def RXPBSIZE(i: int) -> int:
    return 0x03C00 + 4 * i


def MPC(i: int) -> int:
    return 0x03FA0 + 4 * i


def QPRDC(i: int) -> int:
    """Queue packets received drop count (clear on read), i < 16: with SRRCTL.DROP_EN a packet
    that finds no free descriptor in its queue is dropped and counted here."""
    return 0x01430 + 0x40 * i


QPRDC_QUEUES = 16


def RAL(i: int) -> int:
    return 0x05400 + 8 * i


def RAH(i: int) -> int:
    return 0x05404 + 8 * i


RAH_AV = 0x80000000

# --- receive side scaling (datasheet 7.1.2.8) -----------------------------------
MRQC = 0x05818
MRQC_RSSEN = 0x00000001
MRQC_RSS_FIELD_IPV4 = 0x00020000
MRQC_RSS_FIELD_IPV4_TCP = 0x00010000
MRQC_RSS_FIELD_IPV4_UDP = 0x00400000
RETA_ENTRIES = 128                      # 32 registers x 4 one-byte entries


def RETA(i: int) -> int:
    return 0x05C00 + 4 * i              # i < 32


def RSSRK(i: int) -> int:
    return 0x05C80 + 4 * i              # i < 10: 40-byte Toeplitz key


RSSRK_REGISTERS = 10
RETA_ENTRIES_PER_REGISTER = 4           # one byte per entry, entry 4i+k in byte k of RETA(i)
RSS_MAX_QUEUES = 16                     # a RETA entry names the queue in bits 3:0
RSS_FIELDS_IPV4 = MRQC_RSS_FIELD_IPV4 | MRQC_RSS_FIELD_IPV4_TCP | MRQC_RSS_FIELD_IPV4_UDP
# The 40-byte Toeplitz key from Microsoft's RSS specification, the one most drivers use.
RSS_DEFAULT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa")


# --- transmit -------------------------------------------------------------------
def TDBAL(i: int) -> int:
    return 0x06000 + 0x40 * i


def TDBAH(i: int) -> int:
    return 0x06004 + 0x40 * i


def TDLEN(i: int) -> int:
    return 0x06008 + 0x40 * i


def TDH(i: int) -> int:
    return 0x06010 + 0x40 * i


def TDT(i: int) -> int:
    return 0x06018 + 0x40 * i


def TXDCTL(i: int) -> int:
    return 0x06028 + 0x40 * i


def TXPBSIZE(i: int) -> int:
    return 0x0CC00 + 4 * i


TXDCTL_ENABLE = 0x02000000
TXDCTL_PTHRESH_SHIFT = 0
TXDCTL_HTHRESH_SHIFT = 8
TXDCTL_WTHRESH_SHIFT = 16
TXDCTL_THRESH_MASK = 0x7F
# ixy's TX thresholds: prefetch when fewer than 36 descriptors are cached and at least
# 8 are ready in host memory; write back completed descriptors in groups of 4.
TXDCTL_PTHRESH_IXY = 36
TXDCTL_HTHRESH_IXY = 8
TXDCTL_WTHRESH_IXY = 4
TXPBSIZE_40KB = 0x0000A000
DTXMXSZRQ = 0x08100
DTXMXSZRQ_MAX = 0xFFFF
DMATXCTL = 0x04A80
DMATXCTL_TE = 0x00000001
RTTDCS = 0x04900
RTTDCS_ARBDIS = 0x00000040
HLREG0 = 0x04240
HLREG0_TXCRCEN = 0x00000001
HLREG0_RXCRCSTRP = 0x00000002
HLREG0_JUMBOEN = 0x00000004           # accept frames up to MAXFRS.MFS (else 1518 bytes with FCS)
# Max frame size (datasheet 8.2.3.22.13): MFS in bits 31:16, bytes from the destination address through
# the FCS; an 802.1Q-tagged frame may be 4 bytes longer (the tag is not counted).  MFS counts only with
# HLREG0.JUMBOEN set, else the MAC takes 1518 bytes.  A longer frame is dropped and counted in ROC.
MAXFRS = 0x04268
MAXFRS_MFS_SHIFT = 16
MAXFRS_MFS_MASK = 0xFFFF
MFS_STANDARD = 1518                   # the frame size limit without JUMBOEN, FCS included
MFS_VLAN_EXTRA = 4                    # what an 802.1Q tag may add to MFS
HLREG0_TXPADEN = 0x00000400

# --- link ------------------------------------------------------------------------
AUTOC = 0x042A0
AUTOC_LMS_SHIFT = 13
AUTOC_LMS_MASK = 0x7 << AUTOC_LMS_SHIFT
AUTOC_LMS_10G_SERIAL = 0x3 << AUTOC_LMS_SHIFT
AUTOC_10G_PMA_PMD_MASK = 0x00000180
AUTOC_10G_XAUI = 0x0 << 7
AUTOC_AN_RESTART = 0x00001000
LINKS = 0x042A4
LINKS_UP = 0x40000000
LINKS_SPEED_MASK = 0x30000000
LINKS_SPEED_10G = 0x30000000
LINKS_SPEED_1G = 0x20000000
LINKS_SPEED_100M = 0x10000000
LINK_SPEED_MBIT = {LINKS_SPEED_10G: 10000, LINKS_SPEED_1G: 1000, LINKS_SPEED_100M: 100}

# --- statistics (clear on read) ----------------------------------------------------
GPRC = 0x04074
GPTC = 0x04080
GORCL = 0x04088
GORCH = 0x0408C
GOTCL = 0x04090
GOTCH = 0x04094
RUC = 0x040A4                   # receive undersize count: frames (good FCS) shorter than 64 bytes, dropped
ROC = 0x040A8                   # receive oversize count: frames (good FCS) longer than the max frame size, dropped
OCTETS_FCS_LEN = 4              # the octet counters (GORC, GOTC) count each frame with its 4-byte FCS
STATS_CLEAR_ON_READ = (GPRC, GPTC, GORCL, GORCH, GOTCL, GOTCH, RUC, ROC) + tuple(MPC(i) for i in range(8))

# --- queues and rings ---------------------------------------------------------------
MAX_RX_QUEUES = 128
MAX_TX_QUEUES = 128
MAX_RING_ENTRIES = 4096
MIN_RING_ENTRIES = 8                 # RDLEN/TDLEN: multiple of 128 bytes = 8 descriptors
DEFAULT_RING_ENTRIES = 512
TX_CLEAN_BATCH = 32
DESC_SIZE = 16
RING_ALIGN = 128

# --- descriptors (datasheet 7.1.6 advanced RX, 7.2.3.2.4 advanced TX) -----------------
# One dtype serves both the read and the write-back format: the fields are
# two little-endian u64 words, viewed as u32/u16 where the write-back needs it.
RX_DESC_READ_DTYPE = np.dtype([("pkt_addr", "<u8"), ("hdr_addr", "<u8")])
RX_DESC_WB_DTYPE = np.dtype([
    ("rss_info", "<u8"),          # packet type / RSS hash
    ("status_error", "<u4"),
    ("length", "<u2"),
    ("vlan", "<u2"),
])
RXD_STAT_DD = 0x01
RXD_STAT_EOP = 0x02

TX_DESC_READ_DTYPE = np.dtype([
    ("buffer_addr", "<u8"),
    ("cmd_type_len", "<u4"),
    ("olinfo_status", "<u4"),
])
TX_DESC_WB_DTYPE = np.dtype([("rsvd", "<u8"), ("nxtseq_seed", "<u4"), ("status", "<u4")])
TXD_DTALEN_MASK = 0x0000FFFF
TXD_DTYP_DATA = 0x00300000
TXD_DTYP_MASK = 0x00F00000
TXD_CMD_EOP = 0x01000000
TXD_CMD_IFCS = 0x02000000
TXD_CMD_RS = 0x08000000
TXD_CMD_DEXT = 0x20000000
TXD_CMD_DATA = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_RS | TXD_CMD_DEXT | TXD_DTYP_DATA   # 0x2B300000
TXD_PAYLEN_SHIFT = 14
TXD_STAT_DD = 0x01
# Byte positions inside a 16-byte descriptor, taken from the dtypes above so that the
# driver's flat uint8/uint16/uint32/uint64 views of a ring agree with the datasheet layout.
RXD_STATUS_BYTE = RX_DESC_WB_DTYPE.fields["status_error"][1]            # 8
RXD_LENGTH_HALFWORD = RX_DESC_WB_DTYPE.fields["length"][1] // 2         # 6 (byte 12)
TXD_CMD_WORD = TX_DESC_READ_DTYPE.fields["cmd_type_len"][1] // 4        # 2 (byte 8)
TXD_OLINFO_WORD = TX_DESC_READ_DTYPE.fields["olinfo_status"][1] // 4    # 3 (byte 12)
TXD_STATUS_BYTE = TX_DESC_WB_DTYPE.fields["status"][1]                  # 12
RX_DD_EOP = RXD_STAT_DD | RXD_STAT_EOP     # a received single-buffer frame: done and end of packet
# A descriptor's second u64 word (bytes 8..15) read or written with one access: where its
# fields sit in that word.  RX write-back: status_error in bits 0..31, length in 32..47;
# TX read format: cmd_type_len in bits 0..31, olinfo_status (PAYLEN << 14) in 32..63;
# TX write-back: status in bits 32..63.
DESC_WORD2_BYTE = 8
RXD_WORD2_STATUS_SHIFT = (RXD_STATUS_BYTE - DESC_WORD2_BYTE) * 8                  # 0
RXD_WORD2_LENGTH_SHIFT = (RXD_LENGTH_HALFWORD * 2 - DESC_WORD2_BYTE) * 8          # 32
RXD_LENGTH_MASK = 0xFFFF
TXD_WORD2_OLINFO_SHIFT = (TXD_OLINFO_WORD * 4 - DESC_WORD2_BYTE) * 8              # 32
TXD_WORD2_STATUS_SHIFT = (TXD_STATUS_BYTE - DESC_WORD2_BYTE) * 8                  # 32
DESC_FILL_BYTE = 0xFF      # ixy fills a new ring with 0xFF before handing it to the device

# --- reset values (what the software 82599 restores on CTRL.RST) ---------------------
AUTOC_RESET_VALUE = (0x1 << AUTOC_LMS_SHIFT) | AUTOC_10G_PMA_PMD_MASK   # 1G link mode, not XAUI
SRRCTL_RESET_VALUE = 0x00000402         # BSIZEPKT 2 KB, BSIZEHDR 256 B, legacy descriptors
SRRCTL_BSIZEPKT_UNIT = 1024
SRRCTL_BSIZEPKT_DEFAULT = 2 * SRRCTL_BSIZEPKT_UNIT   # what BSIZEPKT 0 means
SRRCTL_BSIZEPKT_MAX_KB = 16             # the largest RX buffer size the datasheet allows
# The largest standard frame as it lands in a buffer: 1514 bytes with an 802.1Q tag, FCS stripped.  A
# frame longer than BSIZEPKT spans descriptors, which the driver does not take (no multi-buffer frames).
RX_STANDARD_FRAME = 1518
RXPBSIZE_RESET_VALUE = 0x00080000       # 512 KB in packet buffer 0
MAXFRS_RESET_VALUE = MFS_STANDARD << MAXFRS_MFS_SHIFT      # 0x05EE0000: MFS 1518


# --- RX buffer size and max frame size for a packet buffer size (the driver sets them, the
# pipeline checks generator sizes against them) ---------------------------------------------

def rx_frame_limits(max_data: int) -> tuple[int, int]:
    """(SRRCTL.BSIZEPKT in 1 KB units, MAXFRS.MFS) for packet buffers holding ``max_data`` bytes of data.

    The NIC must never write past a buffer's data area, and a frame longer than BSIZEPKT would span
    descriptors, which the ixgbe driver does not take.  BSIZEPKT is max_data rounded down to whole KB,
    unless that is too small for a standard frame (1514 bytes + an 802.1Q tag): 2048-byte buffers hold
    1984 bytes, 1 KB would split every frame over 1024 bytes, so there it is rounded up (2 KB) and the
    bound is the max frame size alone.  MFS then stops every frame (tag included, FCS stripped) at the
    smaller of max_data and BSIZEPKT: 1984 for 2048-byte buffers (untagged frames up to 1980 bytes),
    3072 for 4096-byte ones.  A longer frame is dropped by the MAC and counted in ROC (too_long).
    """
    unit = SRRCTL_BSIZEPKT_UNIT
    kb = max_data // unit
    if kb * unit < RX_STANDARD_FRAME:
        kb = -(-max_data // unit)
    kb = min(kb, SRRCTL_BSIZEPKT_MAX_KB)
    largest = min(max_data, kb * unit)          # bytes one frame may take in a buffer
    return kb, largest + OCTETS_FCS_LEN - MFS_VLAN_EXTRA
