"""The pipeline file's keys: one declarative row per key (type, default, range, choices, doc).

This table is the schema.  pipeline/config.py reads every plain value through
it (type, range, power of two, choices, default) and builds the "allowed keys"
lists of its errors from it; pipeline/keydoc.py turns it into
docs/pipeline-file.md.  Adding a key is one row here plus the line in
config.py that puts its value where the pipeline uses it.

A row's ``path`` is the key with the array index left out: ``pipeline.batch_size``,
``ports.rx_queues``, ``ports.generator.flows``.  ``drivers`` says which port
drivers take a ``ports.*`` key (empty: every driver).  A ``default`` of None
means the key has no fixed default: it is required, optional (left out means
"not set"), or computed from other keys, and the row's doc says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ixypipe.layout import KEYED_DEFAULT_SLOTS, KEYED_DEFAULT_TABLES, MIN_BUF_SIZE
from ixypipe.nic.device import HOT_PATHS
from ixypipe.nic.vfio import IOMMU_MODES
from ixypipe.nic.vhost_user_socket import CONNECT_TIMEOUT
from ixypipe.sim.payload import PROFILES, SIM_MAX_FRAME, SIM_MIN_FRAME, VID_RANGE
from ixypipe.sim.traffic import SINK_MODES

DRIVERS = ("sim", "ixgbe", "virtio", "vhost-user", "af_packet", "pcap")
SIM_DEVICES = ("82599", "virtio")        # what a sim port's software device is (ixypipe.sim.world)
VHOST_USER_MODES = ("client", "server")
HUGEPAGE_MODES = ("auto", "require", "never")
STAGE_DEATH_POLICIES = ("stop", "restart")
IDLE_MODES = ("auto", "spin", "wake", "nap")    # auto = spin on CPUs the pipeline has to itself, else wake
DISTRIBUTIONS = ("flow", "round-robin")
PCAP_MODES = ("read", "write")
LINE_RATE_MPPS = 14.88          # 10 GbE with 64-byte frames: faster than any 82599 port can take them
MAX_NAME = 64                   # characters in the pipeline's name (it reaches terminals and process names)
MAX_PATH = 4096                 # characters in a path or other string (Linux PATH_MAX)
DEFAULT_METRICS_ADDRESS = "127.0.0.1"

# the kinds of value a row can hold (keydoc shows them as they are written here)
INTEGER, NUMBER, BOOLEAN, STRING = "integer", "number", "boolean", "string"
TABLE, TABLES, CPU_LIST = "table", "array of tables", "list of CPU ids"
NETWORKS, PORTS, MIX = "network or list of networks", "port, range or list", "table of protocol weights"
ROW_DEFAULT = object()          # "the row's own default" where a reader may be given a computed one


@dataclass(frozen=True)
class Key:
    path: str                           # "pipeline.batch_size"; ports' keys "ports.x", generator "ports.generator.x"
    type: str                           # INTEGER, NUMBER, BOOLEAN, STRING, TABLE, TABLES or CPU_LIST
    default: Any                        # None: required, optional or computed (doc says which)
    doc: str
    range: tuple[float, float] | None = None    # lowest and highest allowed, both included
    choices: tuple[str, ...] = ()
    power_of_two: bool = False
    drivers: tuple[str, ...] = ()       # ports.* keys: the drivers that take it; () = every driver
    limit: int = MAX_PATH               # strings: at most this many characters
    example: Any = None                 # docs: a value to show (commented out) for a key without a default

    @property
    def name(self) -> str:
        return self.path.rsplit(".", 1)[-1]

    @property
    def parent(self) -> str:
        return self.path.rpartition(".")[0]


KEYS: tuple[Key, ...] = (
    # ---- [pipeline] ---------------------------------------------------------------------------------
    Key("pipeline", TABLE, None, "How the whole pipeline runs. Every key has a default; the table may be "
        "left out."),
    Key("pipeline.name", STRING, None, "The pipeline's name in logs, `ixypipe top`, metrics and process "
        "names: 1-64 printable ASCII characters. Default: the file name without `.toml`.", limit=MAX_NAME,
        example="fwd"),
    Key("pipeline.batch_size", INTEGER, 32, "Packets per batch in every stage (Python pays per batch, not "
        "per packet).", range=(1, 4096)),
    Key("pipeline.ring_size", INTEGER, 1024, "Slots of each SPSC ring between stages; at least `batch_size`.",
        range=(64, 65536), power_of_two=True),
    Key("pipeline.buffer_size", INTEGER, 2048, "Bytes of a packet buffer; 64 of them are its header, so a "
        "buffer holds `buffer_size - 64` bytes of packet (16384 for jumbo frames).",
        range=(MIN_BUF_SIZE, 16384), power_of_two=True),
    Key("pipeline.buffers_per_queue", INTEGER, 4096, "Buffers in the mempool of each RX queue: at least the "
        "largest `rx_ring_size` + the largest `tx_ring_size` + 2 x `batch_size` (the default is raised to that "
        "when the rings are bigger), and all mempools together (RX queues x buffers_per_queue x buffer_size) "
        "must fit the machine's memory.", range=(1, 1 << 20)),
    Key("pipeline.hugepages", STRING, "auto", "`auto`: hugetlbfs, else /dev/shm with a warning; `require`: "
        "hugepages or fail (real NICs); `never`: /dev/shm with simulated DMA addresses.",
        choices=HUGEPAGE_MODES),
    Key("pipeline.on_stage_death", STRING, "stop", "`stop`: a dead or hung stage stops the pipeline; "
        "`restart`: a dead or hung worker is replaced (what it held is counted as dropped, reason "
        "`stage_died`).", choices=STAGE_DEATH_POLICIES),
    Key("pipeline.stats_interval", NUMBER, 1.0, "Seconds between stats lines (or give it as `[stats] "
        "interval`).", range=(0.1, 3600.0)),
    Key("pipeline.idle", STRING, "auto", "How an idle stage waits: `spin` never sleeps (isolated CPUs); "
        "`wake`: workers and TX sleep on a semaphore their producer posts, RX blocks in poll() where the port "
        "has a file descriptor, else backs off; `nap`: short sleeps; `auto`: spin on isolated CPUs the "
        "pipeline has to itself, else wake.", choices=IDLE_MODES),
    Key("pipeline.worker_user", STRING, None, "Whom the workers become once set up: a user name or uid. "
        "Default: `nobody` when run as root, else the caller; `root` keeps root "
        "(see [Security](security.md)).", example="nobody"),
    Key("pipeline.stall_timeout", NUMBER, 2.0, "Seconds a stage's heartbeat may stand still before it "
        "counts as hung (stopped by a signal, stuck in user code): it is named, killed, and `on_stage_death` "
        "applies. A worker's first batch gets at least 30 s.", range=(0.5, 600.0)),
    Key("pipeline.max_restarts", INTEGER, 5, "With `on_stage_death = \"restart\"`: restarts of one worker "
        "within a minute (back-off 0.1 s, doubling); one more death stops the run (exit 1).",
        range=(0, 1000)),
    # ---- [[ports]] ----------------------------------------------------------------------------------
    Key("ports", TABLES, None, "One table per port, at most 32; their order gives them their index. "
        "Required: at least one, each with a `name` and a `driver`."),
    Key("ports.name", STRING, None, "Required: 1-15 of `A-Z a-z 0-9 _ -`, unique.", example="p0"),
    Key("ports.driver", STRING, None, "Required: `sim` (a software 82599, or virtio-net device, driven by the "
        "real driver), `ixgbe` (an 82599 bound to ixypipe), `virtio` (a virtio-net PCI function), `vhost-user` "
        "(a vhost-user backend's socket), `af_packet` (a kernel interface), `pcap` (a file).",
        choices=DRIVERS, example="sim"),
    Key("ports.rx_queues", INTEGER, 1, "RX queues (a `pcap` port has exactly one).", range=(1, 16)),
    Key("ports.tx_queues", INTEGER, 1, "TX queues; worker *w* sends on TX queue *w* % tx_queues of each "
        "port, so queues beyond the number of workers are not used (`--check` and the run say so).",
        range=(1, 16)),
    Key("ports.rx_ring_size", INTEGER, 512, "NIC descriptors per RX queue.", range=(8, 4096),
        power_of_two=True),
    Key("ports.tx_ring_size", INTEGER, 512, "NIC descriptors per TX queue.", range=(8, 4096),
        power_of_two=True),
    Key("ports.promiscuous", BOOLEAN, True, "Receive frames for any destination MAC."),
    Key("ports.forward_to", STRING, None, "The port that packets received here go to unless the worker "
        "says otherwise. Default: the port itself with one port, the other one with two; required with "
        "three or more.", example="p1"),
    Key("ports.pci", STRING, None, "The PCI address `DDDD:BB:DD.F` (hex). Required for `ixgbe`; optional "
        "for `sim` (the simulator assigns 0000:5e:00.0, 0000:5e:00.1, 0000:5f:00.0 ... in order). No two "
        "ports of a kind may share one.", drivers=("sim", "ixgbe", "virtio"), example="0000:03:00.0"),
    Key("ports.interface", STRING, None, "Required: the kernel interface's name (1-15 characters, no `/` "
        "or blanks).", drivers=("af_packet",), example="veth0"),
    Key("ports.path", STRING, None, "Required: the pcap file, relative to the pipeline file's directory. "
        "`read`: a regular pcap or pcapng file of Ethernet frames; `write`: a regular file or a new one in a "
        "writable directory (not a directory or a device).", drivers=("pcap",), example="in.pcap"),
    Key("ports.mode", STRING, "read", "`read`: replay the file as received traffic; `write`: record what "
        "the pipeline sends to this port (pcap, nanosecond timestamps).", choices=PCAP_MODES,
        drivers=("pcap",)),
    Key("ports.loop", INTEGER, 1, "Replay the file this many times; 0 = forever.", range=(0, 1_000_000),
        drivers=("pcap",)),
    Key("ports.rate_mpps", NUMBER, 0.0, "Replay pace in million packets per second; 0 = as fast as the "
        "pipeline takes them.", range=(0.0, LINE_RATE_MPPS), drivers=("pcap",)),
    Key("ports.generator", TABLE, None, "Traffic arriving on this port's wire; no table: none.",
        drivers=("sim",)),
    Key("ports.sink", TABLE, None, "What this port transmits ends here; no table: nowhere, not checked.",
        drivers=("sim",)),
    Key("ports.iommu", STRING, "none", "`none`: physical addresses (root, pagemap); `vfio`: through VFIO "
        "and the IOMMU (see [VFIO](vfio.md)); `auto`: VFIO when the device has an IOMMU group and is bound "
        "to vfio-pci.", choices=IOMMU_MODES, drivers=("sim", "ixgbe")),
    Key("ports.qdisc_bypass", BOOLEAN, None, "Send without the kernel's queueing discipline. Default: "
        "false.", drivers=("af_packet",), example=False),
    Key("ports.fanout_defrag", BOOLEAN, None, "Let the kernel reassemble IP fragments in the fanout group. "
        "Default: false.", drivers=("af_packet",), example=False),
    Key("ports.hot_path", STRING, "auto", "The driver's RX/TX loops: `auto` (compiled when numba loads), "
        "`numpy` (the pure path), `numba` (compiled, or an error without numba).", choices=HOT_PATHS,
        drivers=("sim", "ixgbe", "virtio", "vhost-user", "af_packet")),
    Key("ports.share", BOOLEAN, False, "True: run on purpose beside another running pipeline on the same "
        "device; otherwise a port whose interface or PCI device another pipeline uses is refused at start, "
        "naming that pipeline.", drivers=("ixgbe", "af_packet")),
    # virtio-net ports (docs/virtio.md); their values are checked in config.py's _virtio and _vhost_user
    Key("ports.device", STRING, None, "`sim` ports: the software device, `82599` (the default) or `virtio` "
        "(a virtio-net function, driven by the virtio driver).", drivers=("sim",), example="virtio"),
    Key("ports.transport", STRING, None, "virtio-PCI transport: `legacy` (the I/O BAR), `modern` (PCI "
        "capabilities, memory BARs) or `auto` (the default; a sim device: modern).", drivers=("sim", "virtio"),
        example="modern"),
    Key("ports.mrg_rxbuf", BOOLEAN, None, "Negotiate VIRTIO_NET_F_MRG_RXBUF when the device offers it (12-byte "
        "header). Default: true.", drivers=("sim", "virtio", "vhost-user"), example=True),
    Key("ports.socket", STRING, None, "Required for `vhost-user`: the backend's unix socket (relative to the "
        "pipeline file's directory).", drivers=("vhost-user",), example="/tmp/vhost-user.sock"),
    Key("ports.mode", STRING, None, "`vhost-user`: `client` (the backend listens on `socket`; the default) or "
        "`server` (ixypipe listens there, mode 0600, and the backend connects: DPDK's net_vhost with "
        "`client=1`; a stale socket file of this user that nobody listens on is removed first, and the socket "
        "goes when the run ends). Either way a backend that goes away is waited for and reconnected (the link "
        "is down meanwhile, frames queue up behind it), and what was posted to it goes to the next backend.",
        drivers=("vhost-user",), example="client"),
    Key("ports.connect_timeout", NUMBER, None, "`vhost-user`: seconds the port waits for its backend when "
        "the pipeline starts (client: for it to listen on `socket`; server: for it to connect); the start "
        f"fails after that. Default: {CONNECT_TIMEOUT:g}.", range=(0.1, 86400.0), drivers=("vhost-user",),
        example=CONNECT_TIMEOUT),
    # ---- [ports.generator] ---------------------------------------------------------------------------
    Key("ports.generator.packet_size", INTEGER, None, "Frame bytes without FCS, from the profile's "
        "smallest (udp 60, vlan 64, tcp-syn 72, ipv6 80, runt 14..59; the default) and at most "
        "`buffer_size - 64` or what the 82599 takes in such a buffer (2048: 1980, 1984 tagged; 4096: 3068).",
        range=(SIM_MIN_FRAME, SIM_MAX_FRAME), example=60),
    Key("ports.generator.rate_mpps", NUMBER, 0.0, "Million packets per second; 0 = as fast as the RX ring "
        "takes them.", range=(0.0, LINE_RATE_MPPS)),
    Key("ports.generator.flows", INTEGER, None, "Flows (source address and port differ), each "
        "sequence-numbered. Default: 4 (imix: 12; imix takes them in twelves).", range=(1, 65535), example=4),
    Key("ports.generator.count", INTEGER, 0, "Stop after this many packets; 0 = unlimited. When every source "
        "is finite the run ends by itself once they are done.", range=(0, 10**12)),
    Key("ports.generator.profile", STRING, "udp", "`udp` (IPv4/UDP), `imix` (7:4:1 of 60/590/1514 bytes, one "
        "size per flow), `vlan` (802.1Q tag), `ipv6` (IPv6/UDP), `tcp-syn` (IPv4 TCP SYN flood), `runt` "
        "(< 60 bytes, for negative tests: the 82599 drops them).", choices=tuple(PROFILES)),
    Key("ports.generator.vlan", INTEGER, None, "An 802.1Q tag with this VID on every frame of any profile "
        "(profile `vlan`: 100).", range=VID_RANGE, example=100),
    # shaping the flows like a user's traffic (sim/shape.py, sim/replay.py validate the values; docs/generator.md)
    Key("ports.generator.src", NETWORKS, None, "Source networks, IPv4 and IPv6, one or a list: "
        "`\"10.0.0.0/8\"`, `[\"10.0.0.0/8\", \"2001:db8::/64\"]`. Default: 10.<port>.x.x (fd00::<port>:x for "
        "IPv6).", example="10.0.0.0/8"),
    Key("ports.generator.dst", NETWORKS, None, "Destination networks; they decide each flow's IP version (`src` "
        "must hold the same versions). Default: 10.255.0.1 (fd00::ff01).", example="192.168.1.0/24"),
    Key("ports.generator.sport", PORTS, None, "Source ports: `53`, `\"1024-65535\"`, `[53, \"8000-8080\"]`. "
        "Default: spread over the flows (for RSS).", example="1024-65535"),
    Key("ports.generator.dport", PORTS, None, "Destination ports (not for ICMP flows). Default: 5000 (UDP), 80 "
        "(TCP).", example=53),
    Key("ports.generator.protocol", STRING, None, "Every flow's protocol: `udp`, `tcp` (SYN) or `icmp` (echo "
        "request). Default: the profile's.", example="udp"),
    Key("ports.generator.mix", MIX, None, "Protocols by share of the flows, spread evenly: "
        "`{udp = 0.7, tcp = 0.2, icmp = 0.1}`.", example={"udp": 0.7, "tcp": 0.3}),
    Key("ports.generator.seed", INTEGER, None, "Seeds each flow's draw of the fields above: same seed, same "
        "flows. Default: 0.", range=(0, 2**32 - 1), example=7),
    Key("ports.generator.template", STRING, None, "A pcap file whose frames the flows replay (flow f sends "
        "frame f % N), src/dst/ports varied per flow; the sink's record goes in an Ethernet trailer. Not with "
        "packet_size, profile, vlan, protocol or mix.", example="dns.pcap"),
    # ---- [ports.sink] --------------------------------------------------------------------------------
    Key("ports.sink.mode", STRING, "verify", "`verify`: ixypipe's own generator frames, each checked for "
        "magic, checksum, flow order and loss; `count`: any frames (another generator, a pcap replay, a "
        "worker that rewrites headers), counted (packets, bytes, sizes), never judged. Either way the "
        "accounting checks packets == transmitted on the port.", choices=SINK_MODES),
    Key("ports.sink.expect_touch", BOOLEAN, False, "`verify` only: also check that byte 1 was incremented "
        "once (the `touch` worker)."),
    Key("ports.sink.pcap", STRING, "", "Also write what arrives to this pcap file (`\"\"`: no capture): a "
        "regular file or a new one in a writable directory, written by no other port."),
    Key("ports.sink.verify", BOOLEAN, None, "The older spelling of `mode`: true = `verify`, false = "
        "`count` (not together with `mode`).", example=True),
    # ---- [workers] -----------------------------------------------------------------------------------
    Key("workers", TABLE, None, "The function every packet passes through. No table: `forward`."),
    Key("workers.function", STRING, "forward", "A built-in (`forward`: frames unchanged; `touch`, "
        "`macswap`, `drop`, `count`), `package.module:function` on the Python path, or "
        "`path/to/file.py:function` (a function or a class). Its source is checked without importing it; "
        "then `run` (and `--check`) imports it once in a short-lived child (`IXYPIPE_WORKER_CHECK=1` there): "
        "an import that raises or never returns is exit 2. See [the worker API](worker-api.md)."),
    Key("workers.processes", INTEGER, 1, "Worker processes. The rings between them and the RX/TX stages "
        "must fit the arena's 255 regions too (two ports: about 40 workers; `--check` tells).",
        range=(1, 64)),
    Key("workers.distribute", STRING, "flow", "`flow`: a flow (hash of the IPv4 addresses and ports) "
        "always goes to the same worker, so its order is kept; `round-robin`: whole batches in turn.",
        choices=DISTRIBUTIONS),
    Key("workers.per_packet", BOOLEAN, False, "True: the function is `handle(pkt) -> bool`, called once per "
        "packet (the slow path)."),
    Key("workers.options", TABLE, None, "Any table: the worker gets it as `ctx.options` in `setup(ctx)`."),
    Key("workers.import_timeout", NUMBER, 10.0, "Seconds the worker's module may take to import.",
        range=(1.0, 600.0)),
    Key("workers.setup_timeout", NUMBER, 30.0, "Seconds a worker stage may spend importing the module and "
        "in `setup(ctx)`; past that it is named (\"is stuck in setup()\") and `on_stage_death` applies.",
        range=(1.0, 3600.0)),
    Key("workers.keyed_tables", INTEGER, KEYED_DEFAULT_TABLES, "Keyed tables (`batch.count_by`) per worker; a call for one more "
        "is refused (one warning, counted). 0: none. See [keyed counters](keyed-counters.md).", range=(0, 64)),
    Key("workers.keyed_slots", INTEGER, KEYED_DEFAULT_SLOTS, "Slots per keyed table; 3/4 of them hold keys (196,608 by "
        "default), an amount for a key past that is counted as overflow. 16 bytes each of `/dev/shm` per table "
        "and worker, used as they are written; one worker's tables take at most 1 GiB.",
        range=(1 << 10, 1 << 26), power_of_two=True),
    # ---- [cpus] ----------------------------------------------------------------------------------------
    Key("cpus", TABLE, None, "Leave it out (or leave out a role) for automatic placement: isolated CPUs "
        "first, one stage per physical core before hyper-thread siblings, near the NIC's NUMA node, and a CPU "
        "of its own for the software 82599 when there are two or more."),
    Key("cpus.rx", CPU_LIST, None, "CPUs the RX stages take in turn: a non-empty list of distinct CPU ids "
        "of this machine.", example=[2]),
    Key("cpus.workers", CPU_LIST, None, "CPUs the workers take in turn (worker-0 on the first, worker-1 "
        "on the second, ...).", example=[3, 4]),
    Key("cpus.tx", CPU_LIST, None, "CPUs the TX stages take in turn.", example=[5]),
    Key("cpus.sim", CPU_LIST, None, "CPUs of the software 82599's process.", example=[1]),
    # ---- [stats] ---------------------------------------------------------------------------------------
    Key("stats", TABLE, None, "What a run reports while it runs."),
    Key("stats.interval", NUMBER, 1.0, "Seconds between stats lines (must agree with "
        "`pipeline.stats_interval` when both are given).", range=(0.1, 3600.0)),
    Key("stats.json", BOOLEAN, False, "One JSON object per interval and a JSON summary (like `run --json`)."),
    Key("stats.metrics_port", INTEGER, 0, "Serve Prometheus metrics on this TCP port; 0 = none (like "
        "`run --metrics-port`).", range=(0, 65535)),
    Key("stats.metrics_address", STRING, DEFAULT_METRICS_ADDRESS, "Where the metrics endpoint listens "
        "(like `run --metrics-address`).", limit=MAX_NAME),
)

BY_PATH: dict[str, Key] = {}
for _k in KEYS:                  # a path two drivers take with other meanings (ports.mode): the first row here
    BY_PATH.setdefault(_k.path, _k)


def row(path: str) -> Key:
    """The row of ``path`` ("pipeline.batch_size"; an index such as "ports[1].x" may be left in)."""
    return BY_PATH[_plain(path)]


def default(path: str) -> Any:
    return row(path).default


def names(parent: str, driver: str | None = None) -> tuple[str, ...]:
    """The keys a table takes, in the table's order: ``names("pipeline")``, ``names("")`` (the top level).

    For "ports", ``driver=None`` gives the keys every port takes and ``driver="sim"`` those only that
    driver's ports take.
    """
    return tuple(k.name for k in KEYS if k.parent == parent and (
        driver is None and not k.drivers or driver is not None and driver in k.drivers))


def ranges() -> dict[str, tuple[float, float]]:
    """Every number a pipeline file may give: key path -> (lowest, highest), both allowed."""
    return {k.path: k.range for k in KEYS if k.range is not None}


def _plain(path: str) -> str:
    """ "ports[1].generator.flows" -> "ports.generator.flows" """
    out, depth = [], 0
    for ch in path:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)
