"""virtio-net constants: PCI identity, status and feature bits, register offsets, ring and header layout.

Every offset, bit and size the virtio driver (nic/virtio*.py) and the
software virtio-net device (sim/virtio_*.py) use lives here, named as in the
OASIS virtio 1.x specification (section numbers in the comments).  Nothing
here does anything.
"""

from __future__ import annotations

# ---- 4.1.2 PCI Device Discovery ----------------------------------------------------------------
PCI_VENDOR_VIRTIO = 0x1AF4
DEVICE_ID_NET_TRANSITIONAL = 0x1000         # legacy/transitional network device (subsystem device id 1)
DEVICE_ID_NET_MODERN = 0x1041               # 0x1040 + device type 1 (network)
NET_DEVICE_IDS = (DEVICE_ID_NET_TRANSITIONAL, DEVICE_ID_NET_MODERN)
PCI_CFG_SUBSYS_VENDOR = 0x2C
PCI_CFG_SUBSYS_DEVICE = 0x2E
VIRTIO_ID_NET = 1                           # 5 Device Types: the transitional device's subsystem device id

# ---- 2.1 Device Status Field -------------------------------------------------------------------
STATUS_ACKNOWLEDGE = 1
STATUS_DRIVER = 2
STATUS_DRIVER_OK = 4
STATUS_FEATURES_OK = 8
STATUS_NEEDS_RESET = 64
STATUS_FAILED = 128

# ---- 5.1.3 Feature bits (net) and 6 Reserved Feature Bits ------------------------------------------
F_CSUM = 0
F_GUEST_CSUM = 1
F_MAC = 5
F_GUEST_TSO4 = 7
F_HOST_TSO4 = 11
F_MRG_RXBUF = 15
F_STATUS = 16
F_CTRL_VQ = 17
F_MQ = 22
F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
F_RING_INDIRECT_DESC = 28
F_RING_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34
FEATURE_NAMES = {F_CSUM: "CSUM", F_GUEST_CSUM: "GUEST_CSUM", F_MAC: "MAC", F_GUEST_TSO4: "GUEST_TSO4",
                 F_HOST_TSO4: "HOST_TSO4", F_MRG_RXBUF: "MRG_RXBUF", F_STATUS: "STATUS", F_CTRL_VQ: "CTRL_VQ",
                 F_MQ: "MQ", F_NOTIFY_ON_EMPTY: "NOTIFY_ON_EMPTY", F_ANY_LAYOUT: "ANY_LAYOUT",
                 F_RING_INDIRECT_DESC: "RING_INDIRECT_DESC", F_RING_EVENT_IDX: "RING_EVENT_IDX",
                 F_VERSION_1: "VERSION_1", F_ACCESS_PLATFORM: "ACCESS_PLATFORM", F_RING_PACKED: "RING_PACKED"}


def bit(feature: int) -> int:
    return 1 << feature


def feature_names(features: int) -> str:
    return ", ".join(FEATURE_NAMES.get(b, str(b)) for b in range(64) if features >> b & 1) or "none"


# ---- 4.1.4.8 Legacy Interfaces: the I/O BAR0 ------------------------------------------------------
LEGACY_DEVICE_FEATURES = 0x00               # u32, bits 0..31
LEGACY_DRIVER_FEATURES = 0x04               # u32
LEGACY_QUEUE_PFN = 0x08                     # u32: physical address >> 12 of the selected queue
LEGACY_QUEUE_SIZE = 0x0C                    # u16, read-only: the device decides
LEGACY_QUEUE_SELECT = 0x0E                  # u16
LEGACY_QUEUE_NOTIFY = 0x10                  # u16: the queue index
LEGACY_STATUS = 0x12                        # u8
LEGACY_ISR = 0x13                           # u8, read clears
LEGACY_DEVICE_CONFIG = 0x14                 # device config without MSI-X (0x18 with it)
LEGACY_PFN_SHIFT = 12
LEGACY_ALIGN = 4096                         # the used ring starts at the next 4096-byte boundary

# ---- 4.1.4 Virtio Structure PCI Capabilities ------------------------------------------------------
PCI_CFG_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CFG_CAP_PTR = 0x34
PCI_CAP_ID_VNDR = 0x09
CAP_NEXT = 1                                # u8
CAP_LEN = 2                                 # u8
CAP_CFG_TYPE = 3                            # u8
CAP_BAR = 4                                 # u8
CAP_OFFSET = 8                              # u32
CAP_LENGTH = 12                             # u32
CAP_NOTIFY_MULTIPLIER = 16                  # u32, notify capability only
CAP_SIZE = 16
NOTIFY_CAP_SIZE = 20
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE, CFG_PCI = 1, 2, 3, 4, 5
CFG_TYPE_NAMES = {CFG_COMMON: "common", CFG_NOTIFY: "notify", CFG_ISR: "ISR", CFG_DEVICE: "device"}
PCI_BARS = 6

# 4.1.4.3 Common configuration structure layout
COMMON_DFSELECT = 0x00                      # u32 device_feature_select
COMMON_DF = 0x04                            # u32 device_feature
COMMON_GFSELECT = 0x08                      # u32 driver_feature_select
COMMON_GF = 0x0C                            # u32 driver_feature
COMMON_MSIX = 0x10                          # u16
COMMON_NUMQ = 0x12                          # u16 num_queues
COMMON_STATUS = 0x14                        # u8 device_status
COMMON_CFGGEN = 0x15                        # u8 config_generation
COMMON_Q_SELECT = 0x16                      # u16
COMMON_Q_SIZE = 0x18                        # u16 (the driver may lower it)
COMMON_Q_MSIX = 0x1A                        # u16
COMMON_Q_ENABLE = 0x1C                      # u16
COMMON_Q_NOFF = 0x1E                        # u16 queue_notify_off
COMMON_Q_DESC = 0x20                        # u64
COMMON_Q_AVAIL = 0x28                       # u64 queue_driver
COMMON_Q_USED = 0x30                        # u64 queue_device
COMMON_SIZE = 0x38

# ---- 5.1.4 Device configuration layout (net) -------------------------------------------------------
NET_CFG_MAC = 0                             # u8[6], with F_MAC
NET_CFG_STATUS = 6                          # u16, with F_STATUS
NET_CFG_MAX_PAIRS = 8                       # u16, with F_MQ
NET_CFG_SIZE = 10
NET_S_LINK_UP = 1
NET_S_ANNOUNCE = 2

# ---- 2.7 Split Virtqueues ---------------------------------------------------------------------------
DESC_SIZE = 16                              # addr u64, len u32, flags u16, next u16
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
DESC_LEN_SHIFT = 0                          # in the descriptor's second u64 word
DESC_FLAGS_SHIFT = 32
DESC_NEXT_SHIFT = 48
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1
RING_HEADER = 4                             # flags u16, idx u16 (avail and used)
USED_ELEM_SIZE = 8                          # id u32, len u32
MAX_QUEUE_SIZE = 32768
MIN_QUEUE_SIZE = 2


def avail_offset(size: int) -> int:
    """Where the available ring starts in a legacy-layout virtqueue block (right after the descriptors)."""
    return size * DESC_SIZE


def used_offset(size: int) -> int:
    """Where the used ring starts: after the available ring (flags, idx, ring, used_event), 4096-aligned."""
    avail_end = avail_offset(size) + RING_HEADER + 2 * size + 2
    return (avail_end + LEGACY_ALIGN - 1) // LEGACY_ALIGN * LEGACY_ALIGN


def vring_bytes(size: int) -> int:
    """One virtqueue in the legacy layout (also valid for modern: each part is aligned enough)."""
    return used_offset(size) + RING_HEADER + USED_ELEM_SIZE * size + 2


# ---- 5.1.6 Device Operation: the virtio_net_hdr before every frame -----------------------------------
NET_HDR_LEN = 10                            # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
NET_HDR_MRG_LEN = 12                        # + num_buffers u16 (MRG_RXBUF or VERSION_1)
NET_HDR_FLAGS = 0                           # u8
NET_HDR_GSO_TYPE = 1                        # u8
NET_HDR_NUM_BUFFERS = 10                    # u16
NET_HDR_F_NEEDS_CSUM = 1
NET_HDR_GSO_NONE = 0


def net_hdr_len(features: int) -> int:
    return NET_HDR_MRG_LEN if features & (bit(F_MRG_RXBUF) | bit(F_VERSION_1)) else NET_HDR_LEN


# ---- 5.1.6.5 Control Virtqueue: struct virtio_net_ctrl {class u8, command u8, data[], ack u8} ----------
CTRL_HDR_LEN = 2
CTRL_NET_MQ = 4                             # class
CTRL_MQ_VQ_PAIRS_SET = 0                    # command; data: virtqueue_pairs u16
CTRL_OK = 0
CTRL_ERR = 1
CTRL_TIMEOUT = 30.0                         # seconds the driver waits for the device to answer a command
MAX_QUEUE_PAIRS = 16                        # what this driver drives (the spec allows 0x8000)

# ---- queue indices (5.1.2) --------------------------------------------------------------------------
def rx_queue_index(pair: int) -> int:
    return 2 * pair


def tx_queue_index(pair: int) -> int:
    return 2 * pair + 1


def ctrl_queue_index(max_pairs: int, features: int) -> int:
    """The control virtqueue comes after the device's queue pairs: 2 * max_virtqueue_pairs with MQ, else 2."""
    return 2 * max_pairs if features & bit(F_MQ) else 2


# ---- the driver's per-queue state words in the arena (its own layout, not the spec's) ---------------
QSTATE_LAST_USED = 0        # used ring entries consumed so far (free-running, mod 2**16)
QSTATE_AVAIL = 1            # avail.idx as the driver last published it (free-running, mod 2**16)
QSTATE_FREE_TOP = 2         # TX: descriptors on the free stack
QSTATE_HANDING = 3          # TX: buffers cleaned but not yet handed home
QSTATE_POSTED = 4           # TX: buffers posted since the queue was set up
QSTATE_ENTRIES = 5          # descriptors in the ring
QSTATE_HDR_LEN = 6          # bytes of virtio_net_hdr before every frame
QSTATE_NOTIFY = 7           # the queue's index | its notify offset << 16 (modern: in the notify structure)
QSTATE_PACKETS = 8          # packets received / posted for transmission (the driver's statistics)
QSTATE_BYTES = 9            # ... and their frame bytes (without the virtio_net_hdr)
QSTATE_WORDS = 16

# ---- how compiled code notifies a queue (virtio_jit's kick words, the driver's own layout) ---------------
KICK_NONE = 0               # this process cannot notify (a vhost-user stage process): kicks wanted are counted
KICK_STORE = 1              # modern PCI: a 16-bit store of the queue index at its notify address (a mapped BAR)
KICK_PWRITE = 2             # legacy PCI: pwrite() of the queue index to queue_notify in resource0
KICK_EVENTFD = 3            # vhost-user: write() of 1 to the queue's kick eventfd
KICK_MODE, KICK_FD, KICK_VALUE, KICK_OFFSET, KICK_ONE, KICK_WANTED = range(6)   # int64 words
KICK_WORDS = 6
TX_CLEAN_BATCH = 32

# ---- the software device: its PCI resources and the step counter of its model ------------------------
SIM_LEGACY_BAR_SIZE = 256                   # resource0: the legacy registers, then the device config
SIM_MODERN_BAR = 4                          # resource4: every modern structure, as QEMU lays them out
SIM_MODERN_BAR_SIZE = 0x4000
SIM_COMMON_OFF = 0x0000
SIM_ISR_OFF = 0x1000
SIM_DEVICE_OFF = 0x2000
SIM_NOTIFY_OFF = 0x3000
SIM_NOTIFY_MULTIPLIER = 4
# The model cannot trap register writes, only see their latest values; registers multiplexed by a select
# register (queue and feature selects) therefore need one model step between selections.  The model counts
# its steps here (u32) and a driver opening a software device (spec.driver "sim") waits for two after such a
# write (VirtioPci.settle); on silicon the same place is the status read that flushes posted writes.
# A software device's directory carries SIM_MARKER (real sysfs never does), so any driver process finds it.
SIM_MARKER = "ixypipe-sim-virtio"
SIM_LEGACY_STEPS = 0x80                     # in resource0
SIM_MODERN_STEPS = 0x3F00                   # in resource4
SIM_CAP_START = 0x40                        # the first capability in config space
SIM_DEFAULT_QUEUE_SIZE = 256
