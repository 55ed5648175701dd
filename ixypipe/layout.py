"""The shared-memory ABI: every size and byte offset of ixypipe's shared-memory layouts, in one place.

The arena header, the packet-buffer header (ixy's pkt_buf), the mempool free
list, the SPSC ring control block, the stage table, the software ports'
counters and the plan region are described here and nowhere else; the
modules that read or write them import these names.  Elsewhere, one place
each: 82599 registers and descriptor bits in ``ixypipe.nic.registers``,
packet header offsets in ``ixypipe.protocols``, the AF_PACKET ABI in
``ixypipe.nic.af_packet_abi``, pcap's format in ``ixypipe.pcapfile``, the
software 82599's payload and control block in ``ixypipe.sim``.
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
    ("control_size", "<u8"),    # ARENA_FLAG_CONTROL: bytes of the control file
    ("control_next", "<u8"),    # ARENA_FLAG_CONTROL: its bump allocator (an arena offset, >= size)
    ("pad", "u1", (8,)),
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
ARENA_FLAG_NO_PHYS = 0x2        # made without a physical-address table (only IOVAs reach a device: VFIO)
# Control regions (rings, free lists, the stage table...) live in a second file on /dev/shm, the arena's
# name plus ARENA_CONTROL_SUFFIX, mapped right after the first one: arena offsets from ``size`` on are
# its bytes.  Each control region starts on a 4 KiB page and owns its pages, so a worker process can be
# given exactly the pages it writes; only DMA regions (packet buffers) stay in the first file.
ARENA_FLAG_CONTROL = 0x4
ARENA_CONTROL_SUFFIX = ".ctl"
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

def page_padded(dtype: np.dtype) -> np.dtype:
    """``dtype`` with its item size rounded up to whole pages: in an array of them each item owns its pages,
    so one item can be mapped writable in a process that sees the others read-only."""
    size = (dtype.itemsize + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    return np.dtype({"names": list(dtype.names), "formats": [dtype.fields[n][0] for n in dtype.names],
                     "offsets": [dtype.fields[n][1] for n in dtype.names], "itemsize": size})


# --- pipeline stage control and counters --------------------------------------
# Region "stages": one row per stage process.  The supervisor writes only
# ``command``; the stage writes every other field (single writer per field).
STAGE_CMD_RUN = 1
STAGE_CMD_DRAIN = 2          # finish what is in hand, flush outputs, exit
STAGE_CMD_ABANDON = 3        # drain, but the device is gone: wait for nothing from it
STAGE_STATE_STARTING = 0
STAGE_STATE_RUNNING = 1
STAGE_STATE_DRAINING = 2
STAGE_STATE_DONE = 3         # exited cleanly after a drain
STAGE_STATE_DEAD = 4         # written by the supervisor once the process is gone: producers stop pushing to it
STAGE_PHASE_IMPORT = 1       # a starting worker imports the user's module
STAGE_PHASE_SETUP = 2        # ... runs its setup(ctx)
STAGE_ROW_DTYPE = page_padded(np.dtype([
    ("command", "<i8"),
    ("pad0", "u1", (56,)),           # the supervisor's field on a cache line of its own
    ("state", "<i8"),
    ("pid", "<i8"),
    ("cpu", "<i8"),
    ("heartbeat", "<i8"),            # loops so far, stored every loop: the supervisor's proof of life
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
    ("drop_stage_died", "<i8"),      # held for a consumer stage that died (the rest: buffers never home)
    ("drop_duplicate", "<i8"),       # TX: an index it holds already (twice in a batch, posted, pending)
    ("drop_bad_index", "<i8"),       # an index a consumer refused: no buffer, another pool's, already in flight/home
    ("last_batch", "<i8"),           # packets in the batch taken last (what a hung stage was holding)
    ("last_ring", "<i8"),            # where it came from: index into the stage's in_rings, -1 = its NIC queue
    ("batch_no", "<i8"),             # batches taken; > ``batches`` while one is being processed
    ("forks", "<i8"),                # children of this (worker) process stopped at fork (written by the child)
    ("fork_pid", "<i8"),             # pid of the last one
    ("phase", "<i8"),                # a starting worker: STAGE_PHASE_IMPORT or _SETUP (user code runs), else 0
]))     # a row per page: a worker may write its own row only
DROP_REASONS = ("worker", "worker_error", "bad_packet", "no_route", "stage_died", "duplicate", "bad_index")

# --- wake-up lines -------------------------------------------------------------
# Region "wake": one cache line per stage row (its own line, so the producers
# that read it do not bounce the stage's counter line).  A consumer that found
# every input empty sets ``sleeping`` and blocks on its POSIX semaphore; a
# producer that enqueued for it posts the semaphore only when it reads
# ``sleeping`` set, so a busy consumer costs its producers no system call.
WAKE_REGION = "wake"
WAKE_LINE_DTYPE = page_padded(np.dtype([
    ("sleeping", "<i8"),
    ("wakeups", "<i8"),       # times the consumer woke from its semaphore
    ("pad", "u1", (48,)),
]))     # a line per page: a worker writes its own and those of the stages it feeds, no other

# Region "stages.counters": one block per stage row of named counters (Batch.count) with
# full names.  The stage is the only writer: it appends a name's UTF-8 bytes and a NUL to
# ``names``, then bumps ``count``; values are written in place.  A reader takes ``count``
# first, so it never sees a name before its bytes.  Past either limit Batch.count raises
# an error naming it (nothing is dropped silently).
STAGE_COUNTERS_MAX = 1024            # named counters per stage
STAGE_COUNTER_NAMES_SIZE = 32 * 1024  # bytes of names per stage (UTF-8, each followed by a NUL)
STAGE_COUNTER_NAME_MAX = 128         # bytes of one name; a longer one is cut at a character boundary
STAGE_COUNTER_VALUE_MAX = 2**63 - 1  # values are int64: a counter is shown clamped to 0..this
STAGE_COUNTERS_REGION = "stages.counters"
STAGE_COUNTERS_DTYPE = page_padded(np.dtype([
    ("count", "<i8"),                # names published
    ("pad", "u1", (56,)),
    ("values", "<i8", (STAGE_COUNTERS_MAX,)),
    ("names", "u1", (STAGE_COUNTER_NAMES_SIZE,)),
]))     # whole pages per block, like the rows

# Region "workers.keyed": one block per worker (by worker number) of keyed counters
# (Batch.count_by): up to ``tables`` named hash tables of ``slots`` slots each, open
# addressing over uint64 keys with linear probing (workers/keyed.py).  A slot is in use
# when its value is not 0 (an amount of 0 is never counted).  The worker is the block's
# only writer: it writes a table's name, then bumps ``count``; a key before its value.
# The supervisor writes ``tables`` and ``slots`` once, before the worker starts.
KEYED_REGION = "workers.keyed"
KEYED_NAME_MAX = 64                  # bytes of a table's name (UTF-8); a longer one is cut at a character
KEYED_FILL_NUM, KEYED_FILL_DEN = 3, 4  # a table takes new keys while under 3/4 full: probes stay short
KEYED_HASH_MUL = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of key * this pick the first slot
KEYED_STATS = ("used", "updates", "total", "overflow_updates", "overflow_amount")
KEYED_STAT = {name: i for i, name in enumerate(KEYED_STATS)}
KEYED_TABLE_DTYPE = np.dtype([
    ("name", "u1", (KEYED_NAME_MAX,)),   # UTF-8, NUL-padded
    ("stats", "<i8", (len(KEYED_STATS),)),   # keys held, amounts counted (count and sum), what did not fit
    ("kind", "u1"),                  # how its keys are shown: an index into KEYED_KINDS
    ("pad", "u1", (23,)),
])
KEYED_KINDS = ("int", "ipv4", "mac", "hex")   # a key as a number, an IPv4 address, a MAC address, 0x...
KEYED_SLOT_BYTES = 16                # a key and its value
KEYED_BLOCK_MAX = 1 << 30            # bytes of one worker's tables (keyed_tables x keyed_slots x 16), at most
KEYED_DEFAULT_TABLES = 4             # tables per worker unless the pipeline file says (workers.keyed_tables)
KEYED_DEFAULT_SLOTS = 1 << 18        # slots per table (workers.keyed_slots): 196,608 keys, 4 MiB
KEYED_HEADER_DTYPE = np.dtype([
    ("count", "<i8"),                # tables in use
    ("tables", "<i8"),               # tables the block holds (the supervisor's)
    ("slots", "<i8"),                # slots per table, a power of two (the supervisor's)
    ("refused", "<i8"),              # count_by calls refused: every table was taken
    ("pad", "u1", (32,)),
])


def keyed_block_dtype(tables: int, slots: int) -> np.dtype:
    """One worker's block of keyed counters: its header, the tables' names and figures, then every table's
    keys and values (``tables`` x ``slots`` each), on whole pages so a worker can be given its own block."""
    return page_padded(np.dtype([
        ("header", KEYED_HEADER_DTYPE),
        ("table", KEYED_TABLE_DTYPE, (max(tables, 1),)),
        ("keys", "<u8", (max(tables, 1), slots)),
        ("values", "<u8", (max(tables, 1), slots)),
    ], align=True))


# --- software ports' counters in the device arena (af_packet, pcap) -------------
# Region "<driver>.<port>": a header line, then one counter line per RX queue,
# then one per TX queue.  Each line has a single writer (that queue's stage).
SOFT_PORT_HEADER_DTYPE = np.dtype([
    ("rx_queues", "<u4"),
    ("tx_queues", "<u4"),
    ("fanout_group", "<u4"),     # af_packet: PACKET_FANOUT group joining the RX queues' sockets
    ("flags", "<u4"),
    ("replays_done", "<u8"),     # pcap source: complete passes over the file
    ("commands", "<u4"),         # written by the supervisor only (SOFT_PORT_CMD_*)
    ("pad", "u1", (36,)),
])
SOFT_PORT_FLAG_SOURCE_DONE = 1   # in "flags": a finite source (pcap replay) has sent everything it will
SOFT_PORT_CMD_PAUSE = 1          # in "commands": the pipeline stops: a source of the port's own sends no more
SOFT_PORT_QUEUE_DTYPE = np.dtype([
    ("packets", "<u8"),
    ("bytes", "<u8"),
    ("dropped", "<u8"),          # RX: the kernel's tp_drops (ring full); TX: frames the kernel refused
    ("truncated", "<u8"),        # RX: frames longer than a buffer (dropped); pcap: records over a buffer
    ("kicks", "<u8"),            # TX: send() calls
    ("pad", "u1", (24,)),
])

# --- the running pipeline's plan, for observers such as 'ixypipe top' ------------------
# Region "plan.json" of the packet arena: a u64 byte count, then that many bytes of
# UTF-8 JSON; the writer zeroes the count, writes the text, then sets the count.
PLAN_INFO_REGION = "plan.json"
PLAN_INFO_SIZE = 64 * 1024
PLAN_INFO_LEN_DTYPE = np.dtype("<u8")
PLAN_INFO_TEXT_OFF = 8
# Region "ports.drops": per port (in the plan's order) what it dropped before the pipeline
# got the frames, cumulative; the supervisor rewrites it at each stats interval (the
# figures its own stats lines print), observers only read it.
PORT_DROPS_REGION = "ports.drops"
PORT_DROPS_MAX_PORTS = 256
PORT_DROPS_DTYPE = np.dtype([
    ("rx_missed", "<i8"),            # no free descriptor (NIC) or the kernel's ring was full (AF_PACKET)
    ("rx_too_long", "<i8"),          # longer than a packet buffer
    ("rx_undersize", "<i8"),         # runts (shorter than 64 bytes with FCS), which an 82599 drops
])

# --- ixgbe driver: per-queue software state in the device arena (not a register: the driver's own) ---
# Region "ixgbe.<port>.rxq<q>.state" / ".txq<q>.state": one cache line of u64 words, so a
# stage process that attaches continues exactly where the opener (or a previous stage) left.
QSTATE_WORDS = 8
QSTATE_RX_NEXT = 0         # RX: next descriptor to read
QSTATE_TX_CLEAN = 0        # TX: first descriptor not yet cleaned
QSTATE_TX_TAIL = 1         # TX: next descriptor to post (= TDT)
QSTATE_ENTRIES = 2         # ring entries, checked on attach
# TX: buffers the last clean took off the ring and not yet handed home.  They were sent and counted: if the TX
# stage dies holding them, the supervisor must not count them again as lost with it (stage_died).
QSTATE_TX_HANDING = 3
# TX: descriptors posted since the queue was set up, counted right after the doorbell.  A TX stage counts what it
# posted only after the driver returns: if it dies in between, the supervisor takes the rest from here.
QSTATE_TX_POSTED = 4

# --- mirror rings: copies of the frames a stage takes, for 'ixypipe capture' ----------------------
# Region "mirror" of the packet arena: a header page, then one block per RX and TX stage (in the plan's
# order of those stages).  A block is a control part and a ring of ``slots`` copies of at most ``snap``
# bytes each.  While ``request`` holds a capture's pid the stage copies every frame it takes into the
# ring (never the buffer: its index stays where the pipeline put it) and counts those that find the ring
# full in ``dropped``; the capture reads from ``tail`` to ``head``.  Single writers: the capture writes
# ``request`` and ``tail`` (the supervisor clears the ``request`` of a capture that died), the stage
# ``head``, ``copied`` and ``dropped``, the supervisor the header once.
MIRROR_REGION = "mirror"
MIRROR_BLOCK_BYTES = 2 << 20         # about this many bytes of ring per RX or TX stage (pages touched only when used)
MIRROR_MIN_SLOTS = 64
MIRROR_HEADER_DTYPE = page_padded(np.dtype([
    ("blocks", "<i8"),
    ("slots", "<i8"),                # per block, a power of two
    ("snap", "<i8"),                 # bytes kept of a frame (the buffers' largest packet)
]))
MIRROR_CTL_DTYPE = np.dtype([
    ("request", "<i8"),              # pid of the capture reading this ring; 0: nobody, the stage copies nothing
    ("tail", "<i8"),                 # slots the capture took (free-running)
    ("pad0", "u1", (48,)),
    ("head", "<i8"),                 # slots the stage filled (free-running)
    ("copied", "<i8"),               # frames copied since the pipeline started
    ("dropped", "<i8"),              # frames not copied because the ring was full (the data path never waits)
    ("pad1", "u1", (40,)),
])


def mirror_block_dtype(slots: int, snap: int) -> np.dtype:
    """One stage's mirror block: its control lines, then per slot the frame's length on the wire, its time
    (ns since the epoch) and its first ``snap`` bytes; whole pages, so a capture is given its control page."""
    return page_padded(np.dtype([
        ("ctl", MIRROR_CTL_DTYPE),
        ("length", "<i8", (slots,)),
        ("stamp", "<i8", (slots,)),
        ("data", "u1", (slots, snap)),
    ]))
