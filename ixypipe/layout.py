"""Every size and byte offset of ixypipe's shared-memory layouts, in one place.

The arena header, the packet-buffer header (ixy's pkt_buf) and the SPSC ring
control block are described here and nowhere else; the modules that read or
write them import these names. 82599 registers and descriptor bits live in
``ixypipe.nic.registers``.
"""

import numpy as np

# --- pages and cache lines -------------------------------------------------
PAGE_SIZE = 4096
HUGEPAGE_SIZE = 2 * 1024 * 1024
HUGEPAGE_SHIFT = 21
CACHE_LINE = 64

# --- the arena -------------------------------------------------------------
# One shared file (hugetlbfs, or /dev/shm as fallback).  It begins with a
# header that names every region, so a process that attaches finds them by
# name: only offsets ever cross a process boundary, never pointers.
ARENA_MAGIC = 0x3145504950595849  # b"IXYPIPE1" read as little-endian u64
ARENA_VERSION = 1
ARENA_PREFIX = "ixypipe-"           # file names: ixypipe-<owner pid>-<random hex>
ARENA_MAX_REGIONS = 256
ARENA_REGION_NAME_LEN = 48
ARENA_MIN_ALIGN = 128               # RDBAL/TDBAL need 128-byte aligned rings

ARENA_HEADER_DTYPE = np.dtype([
    ("magic", "<u8"),
    ("version", "<u4"),
    ("n_regions", "<u4"),
    ("size", "<u8"),
    ("next_free", "<u8"),       # bump allocator: regions are only ever added
    ("flags", "<u4"),
    ("owner_pid", "<u4"),
    ("iova_base", "<u8"),       # fallback arenas: simulated I/O address of offset 0
    ("pad", "u1", (24,)),
])
ARENA_REGION_DTYPE = np.dtype([
    ("name", f"S{ARENA_REGION_NAME_LEN}"),
    ("offset", "<u8"),
    ("size", "<u8"),
])
ARENA_TABLE_OFFSET = ARENA_HEADER_DTYPE.itemsize                          # 64
ARENA_DATA_OFFSET = PAGE_SIZE * (
    (ARENA_TABLE_OFFSET + ARENA_MAX_REGIONS * ARENA_REGION_DTYPE.itemsize + PAGE_SIZE - 1) // PAGE_SIZE)
ARENA_FLAG_HUGEPAGES = 0x1      # backed by hugetlbfs: physical addresses are real
# Name of the region holding the physical address of every hugepage of the
# arena, filled by the creator (root) so attaching processes need no pagemap.
ARENA_PHYS_REGION = "arena.phys"

# On the fallback arena (4 KiB pages, no physical contiguity) DMA addresses
# are simulated I/O addresses: this base plus the arena offset.  Only the
# software 82599 accepts them; the real ixgbe driver refuses such an arena.
SIM_IOVA_BASE = 0x7E00_0000_0000
# Each fallback arena gets its own window above the base (a random slot),
# so two arenas mapped by one device never share an I/O address.
SIM_IOVA_WINDOW = 1 << 36           # 64 GiB: the largest fallback arena
SIM_IOVA_SLOTS = 4096

# --- /proc/self/pagemap ----------------------------------------------------
PAGEMAP_ENTRY_SIZE = 8
PAGEMAP_PFN_MASK = (1 << 55) - 1    # bits 0-54: page frame number
PAGEMAP_PRESENT = 1 << 63

# --- packet buffers (ixy's pkt_buf) ----------------------------------------
# Each buffer starts with a 64-byte header; the packet data follows at
# PKTBUF_HEADROOM, which is also where the NIC DMAs (pkt_addr = phys + 64).
DEFAULT_BUF_SIZE = 2048
MIN_BUF_SIZE = 256
PKTBUF_HEADROOM = 64
PKTBUF_PHYS_OFF = 0        # u64 physical (or simulated I/O) address of the buffer
PKTBUF_POOL_OFF = 8        # u32 id of the mempool that owns the buffer
PKTBUF_INDEX_OFF = 12      # u32 global buffer index
PKTBUF_LEN_OFF = 16        # u32 bytes of packet data
# The largest packet a buffer holds is buf_size - PKTBUF_HEADROOM (1984 at 2048).

# --- mempool free list -----------------------------------------------------
# Region "<pool>.free": a control cache line, then the free stack of buffer
# indices (u32), then one state byte per buffer used by the debug mode.
MEMPOOL_CTL_DTYPE = np.dtype([
    ("top", "<u8"),            # number of indices on the free stack
    ("first", "<u4"),          # global index of the pool's first buffer
    ("count", "<u4"),
    ("pool_id", "<u4"),
    ("owner_pid", "<u4"),
    ("pad", "u1", (40,)),
])
MEMPOOL_STACK_OFFSET = CACHE_LINE
BUF_STATE_IN_USE = 0
BUF_STATE_FREE = 1

# --- SPSC ring --------------------------------------------------------------
# Three cache lines of control then the slots.  The producer writes only its
# line, the consumer only its own, so the two never false-share.
RING_CAPACITY_OFF = 0          # u64, power of two
RING_HEAD_OFF = CACHE_LINE     # u64 free-running count of slots produced
RING_TAIL_OFF = 2 * CACHE_LINE  # u64 free-running count of slots consumed
RING_SLOTS_OFFSET = 3 * CACHE_LINE
RING_SLOT_DTYPE = np.dtype("<u4")

# --- pipeline stage control and counters --------------------------------------
# Region "stages": one row per stage process.  The supervisor writes only
# ``command``; the stage writes every other field (single writer per field).
STAGE_CMD_RUN = 1
STAGE_CMD_DRAIN = 2          # finish what is in hand, flush outputs, exit
STAGE_STATE_STARTING = 0
STAGE_STATE_RUNNING = 1
STAGE_STATE_DRAINING = 2
STAGE_STATE_DONE = 3         # exited cleanly after a drain
STAGE_USER_COUNTERS = 8      # worker-defined counters (Batch.count), names in "stage_names"
STAGE_NAME_LEN = 16
STAGE_ROW_DTYPE = np.dtype([
    ("command", "<i8"),
    ("pad0", "u1", (56,)),           # the supervisor's field on a cache line of its own
    ("state", "<i8"),
    ("pid", "<i8"),
    ("cpu", "<i8"),
    ("heartbeat_ns", "<i8"),
    ("loops", "<i8"),
    ("idle_loops", "<i8"),
    ("batches", "<i8"),
    ("packets_in", "<i8"),
    ("bytes_in", "<i8"),
    ("packets_out", "<i8"),
    ("bytes_out", "<i8"),
    ("held", "<i8"),                 # buffers the stage holds right now (pending outputs)
    ("stalls", "<i8"),               # loops that found an output ring full (back-pressure, no drop)
    ("drop_worker", "<i8"),          # verdict DROP from the worker function
    ("drop_worker_error", "<i8"),    # the worker function raised
    ("drop_bad_packet", "<i8"),      # length 0 or larger than a buffer
    ("drop_no_route", "<i8"),        # verdict names a port that does not exist
    ("user", "<i8", (STAGE_USER_COUNTERS,)),
    ("user_names", f"S{STAGE_NAME_LEN}", (STAGE_USER_COUNTERS,)),
])
DROP_REASONS = ("worker", "worker_error", "bad_packet", "no_route")

# --- packet header offsets (Ethernet II + IPv4 without options) -----------------
ETH_DST_OFF = 0
ETH_SRC_OFF = 6
ETH_TYPE_OFF = 12
ETH_HEADER_LEN = 14
ETH_ADDR_LEN = 6
# the flow key the RX stage hashes to keep a flow on one worker:
# IPv4 source and destination address and the first four L4 bytes (the ports)
FLOW_KEY_OFF = ETH_HEADER_LEN + 12
FLOW_KEY_LEN = 12

# --- simulated traffic (software 82599 generator and sink) ------------------------
# Generated frames are Ethernet II / IPv4 (no options) / UDP; the UDP payload
# starts with a little-endian record the sink checks: magic, generator id,
# flow id, sequence number, checksum.  The smallest frame (60 bytes, no FCS)
# holds exactly the headers and this record.
IPV4_HEADER_LEN = 20
IPV4_TOTAL_LEN_OFF = ETH_HEADER_LEN + 2
IPV4_TTL_OFF = ETH_HEADER_LEN + 8
IPV4_PROTO_OFF = ETH_HEADER_LEN + 9
IPV4_CSUM_OFF = ETH_HEADER_LEN + 10
IPV4_SRC_OFF = ETH_HEADER_LEN + 12
IPV4_DST_OFF = ETH_HEADER_LEN + 16
UDP_OFF = ETH_HEADER_LEN + IPV4_HEADER_LEN
UDP_HEADER_LEN = 8
UDP_LEN_OFF = UDP_OFF + 4
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17
SIM_PAYLOAD_OFF = UDP_OFF + UDP_HEADER_LEN          # 42
SIM_MAGIC = 0x1C5E
SIM_MAGIC_OFF = SIM_PAYLOAD_OFF                     # u16
SIM_GEN_OFF = SIM_PAYLOAD_OFF + 2                   # u16 generator id
SIM_FLOW_OFF = SIM_PAYLOAD_OFF + 4                  # u16 flow id
SIM_SEQ_OFF = SIM_PAYLOAD_OFF + 6                   # u64 sequence number within the flow
SIM_CSUM_OFF = SIM_PAYLOAD_OFF + 14                 # u32 checksum of bytes ETH_HEADER_LEN.. (this field excluded)
SIM_MIN_FRAME = SIM_PAYLOAD_OFF + 18                # 60
SIM_MAX_FRAME = 1514                                # without FCS
SIM_TOUCH_OFF = 1                                   # the byte ixy-fwd increments

# --- Linux AF_PACKET ABI (linux/if_packet.h, linux/if_ether.h, linux/if.h) ------
# Used by ixypipe.nic.af_packet: PACKET_MMAP rings in TPACKET_V2 format.
SOL_PACKET = 263
ETH_P_ALL = 0x0003
ETH_P_8021Q = 0x8100
VLAN_TAG_LEN = 4
IFF_UP = 0x1
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_FANOUT_TYPE_SHIFT = 16
TPACKET_V2 = 1
TPACKET_ALIGNMENT = 16
# tp_status of an RX frame
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
# tp_status of a TX frame
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 0x1
TP_STATUS_SENDING = 0x2
TP_STATUS_WRONG_FORMAT = 0x4
TPACKET2_HDR_DTYPE = np.dtype([          # struct tpacket2_hdr, 32 bytes
    ("tp_status", "<u4"),
    ("tp_len", "<u4"),
    ("tp_snaplen", "<u4"),
    ("tp_mac", "<u2"),
    ("tp_net", "<u2"),
    ("tp_sec", "<u4"),
    ("tp_nsec", "<u4"),
    ("tp_vlan_tci", "<u2"),
    ("tp_vlan_tpid", "<u2"),
    ("tp_padding", "u1", (4,)),
])
TPACKET_REQ_DTYPE = np.dtype([("tp_block_size", "<u4"), ("tp_block_nr", "<u4"),
                              ("tp_frame_size", "<u4"), ("tp_frame_nr", "<u4")])
TPACKET_STATS_DTYPE = np.dtype([("tp_packets", "<u4"), ("tp_drops", "<u4")])
PACKET_MREQ_DTYPE = np.dtype([("mr_ifindex", "<i4"), ("mr_type", "<u2"), ("mr_alen", "<u2"),
                              ("mr_address", "u1", (8,))])
SOCKADDR_LL_SIZE = 20
# TX frames carry their data right after the aligned header (TPACKET2_HDRLEN - sizeof(sockaddr_ll))
TPACKET2_TX_DATA_OFF = (TPACKET2_HDR_DTYPE.itemsize + TPACKET_ALIGNMENT - 1) // TPACKET_ALIGNMENT * TPACKET_ALIGNMENT
TPACKET_BLOCK_SIZE = 64 * PAGE_SIZE      # frames are grouped in blocks of this many bytes

# --- software ports' counters in the device arena (af_packet, pcap) -------------
# Region "<driver>.<port>": a header line, then one counter line per RX queue,
# then one per TX queue.  Each line has a single writer (that queue's stage).
SOFT_PORT_HEADER_DTYPE = np.dtype([
    ("rx_queues", "<u4"),
    ("tx_queues", "<u4"),
    ("fanout_group", "<u4"),     # af_packet: PACKET_FANOUT group joining the RX queues' sockets
    ("flags", "<u4"),
    ("replays_done", "<u8"),     # pcap source: complete passes over the file
    ("pad", "u1", (40,)),
])
SOFT_PORT_QUEUE_DTYPE = np.dtype([
    ("packets", "<u8"),
    ("bytes", "<u8"),
    ("dropped", "<u8"),          # RX: the kernel's tp_drops (ring full); TX: frames the kernel refused
    ("truncated", "<u8"),        # RX: frames longer than a buffer (dropped); pcap: records over a buffer
    ("kicks", "<u8"),            # TX: send() calls
    ("pad", "u1", (24,)),
])

# --- classic pcap files (wiretap's libpcap format) -------------------------------
PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
PCAP_VERSION = (2, 4)
PCAP_DEFAULT_SNAPLEN = 262144
LINKTYPE_ETHERNET = 1
PCAP_GLOBAL_HEADER_DTYPE = np.dtype([
    ("magic", "u4"), ("version_major", "u2"), ("version_minor", "u2"),
    ("thiszone", "i4"), ("sigfigs", "u4"), ("snaplen", "u4"), ("network", "u4"),
])                                       # 24 bytes; byte order given by how the magic reads
PCAP_RECORD_DTYPE = np.dtype([("ts_sec", "u4"), ("ts_frac", "u4"), ("incl_len", "u4"), ("orig_len", "u4")])
# The simulator's shared block (file "<sim root>/counters"): a control row the
# server writes (command, traffic) and the model process answers (pid,
# heartbeat), then one row of int64 counters per simulated port.
SIM_CMD_RUN = 0
SIM_CMD_STOP = 1
SIM_CONTROL_DTYPE = np.dtype([
    ("command", "<i8"),
    ("traffic", "<i8"),          # 1 = generators send, 0 = paused
    ("pid", "<i8"),
    ("heartbeat_ns", "<i8"),
    ("steps", "<i8"),
    ("pad", "u1", (24,)),
])
SIM_COUNTER_FIELDS = ("generated", "gen_bytes", "rx_delivered", "rx_missed", "tx_sent", "tx_bytes",
                      "sink_received", "sink_lost", "sink_reordered", "sink_corrupt", "sink_untouched",
                      "dma_faults")
SIM_COUNTERS_DTYPE = np.dtype([(name, "<i8") for name in SIM_COUNTER_FIELDS])

# --- the running pipeline's plan, for observers such as 'ixypipe top' ------------------
# Region "plan.json" of the packet arena: a u64 byte count, then that many bytes of
# UTF-8 JSON; the writer zeroes the count, writes the text, then sets the count.
PLAN_INFO_REGION = "plan.json"
PLAN_INFO_SIZE = 64 * 1024
PLAN_INFO_LEN_DTYPE = np.dtype("<u8")
PLAN_INFO_TEXT_OFF = 8
