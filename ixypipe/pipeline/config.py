"""Pipeline files: TOML read with tomllib and validated into frozen dataclasses.

This module owns the pipeline file format (README "Pipeline files"): its
tables, keys, defaults and limits, and the checks that run before anything
is mapped: the file itself (a regular file of at most 1 MiB, looked at
before it is opened), nesting depth, types and the ranges of every number
(one table, RANGES), printable bounded names and strings, unknown keys (the
error lists the allowed ones), port names and ``forward_to`` links,
driver-specific keys, colliding PCI addresses, input and output files,
mempool sizing, CPU ids against this machine, and the worker function
(checked from its source here; check_worker_imports imports it in a child).
Every problem is a ConfigError whose text names the file, the key path
(``ports[1].driver``), the line where it can be found, and what is allowed,
with anything taken from the file escaped and cut short.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ixypipe import privilege
from ixypipe.datafile import kernel_filesystem
from ixypipe.layout import MIN_BUF_SIZE, PKTBUF_HEADROOM
from ixypipe.nic.device import HOT_PATHS, PortSpec
from ixypipe.nic.registers import MFS_VLAN_EXTRA, OCTETS_FCS_LEN, rx_frame_limits
from ixypipe.nic.vfio import IOMMU_MODES
from ixypipe.nic.virtio_pci import TRANSPORTS as VIRTIO_TRANSPORTS
from ixypipe.nic.virtio_regs import MAX_QUEUE_PAIRS
from ixypipe.pcapfile import file_kind
from ixypipe.sim.payload import (
    DEFAULT_VID,
    PROFILES,
    SIM_MAX_FRAME,
    SIM_MIN_FRAME,
    VID_RANGE,
    Profile,
    ProfileError,
)
from ixypipe.sim.traffic import SINK_MODES

if TYPE_CHECKING:
    from ixypipe.sim.world import SimPortConfig

# ---- schema limits --------------------------------------------------------------------------
DRIVERS = ("sim", "ixgbe", "virtio", "vhost-user", "af_packet", "pcap")
VHOST_USER_MODES = ("client",)         # server mode is not done yet
SIM_DEVICES = ("82599", "virtio")          # what a sim port's device is (ixypipe.sim.world)
HUGEPAGE_MODES = ("auto", "require", "never")
STAGE_DEATH_POLICIES = ("stop", "restart")
# how an idle stage waits: auto = spin on CPUs the pipeline has to itself (isolated), wake otherwise
IDLE_MODES = ("auto", "spin", "wake", "nap")
DISTRIBUTIONS = ("flow", "round-robin")
PCAP_MODES = ("read", "write")
CPU_ROLES = ("rx", "workers", "tx", "sim")
# Every number a pipeline file may give: key -> (lowest, highest), both allowed.  README "Pipeline
# files" shows these ranges beside each key; tests/test_hostile_files.py tries both ends and beyond.
LINE_RATE_MPPS = 14.88          # 10 GbE with 64-byte frames: faster than any 82599 port can take them
RANGES: dict[str, tuple[float, float]] = {
    "pipeline.batch_size": (1, 4096),
    "pipeline.ring_size": (64, 65536),              # SPSC ring capacity, power of two
    "pipeline.buffer_size": (MIN_BUF_SIZE, 16384),  # packet buffer, power of two (64 bytes of it are header)
    "pipeline.buffers_per_queue": (1, 1 << 20),     # and at least what the rings can hold (see below)
    "pipeline.stats_interval": (0.1, 3600.0),       # seconds
    "pipeline.stall_timeout": (0.5, 600.0),         # seconds; well above the longest wait of an idle stage (0.1 s)
    "pipeline.max_restarts": (0, 1000),             # worker restarts per stage within a minute
    "stats.interval": (0.1, 3600.0),
    "stats.metrics_port": (0, 65535),               # TCP port of the Prometheus endpoint, 0 = none
    "ports.rx_queues": (1, 16),
    "ports.tx_queues": (1, 16),
    "ports.rx_ring_size": (8, 4096),                # descriptors per NIC ring, power of two
    "ports.tx_ring_size": (8, 4096),
    "ports.loop": (0, 1_000_000),                   # pcap replays, 0 = forever
    "ports.rate_mpps": (0.0, LINE_RATE_MPPS),       # pcap replay pace, 0 = as fast as possible
    "ports.generator.packet_size": (SIM_MIN_FRAME, SIM_MAX_FRAME),   # and at most buffer_size - 64
    "ports.generator.rate_mpps": (0.0, LINE_RATE_MPPS),              # 0 = as fast as the RX ring takes
    "ports.generator.flows": (1, 65535),            # the simulator's generator numbers flows in a u16
    "ports.generator.count": (0, 10**12),           # 0 = unlimited; 10**12 is 19 h at line rate
    "workers.processes": (1, 64),
    "workers.import_timeout": (1.0, 600.0),         # seconds for the worker's module to import
    "workers.setup_timeout": (1.0, 3600.0),         # seconds a worker stage may take to import and run setup()
}
MAX_PORTS = 32                  # [[ports]] tables (DPDK's default RTE_MAX_ETHPORTS)
MAX_FILE_BYTES = 1 << 20        # a pipeline file is a few kB; this bounds what a hostile path can make us read
MAX_DEPTH = 16                  # tables and arrays nested in a pipeline file (the schema needs 4)
MAX_NAME = 64                   # characters in the pipeline's name (it reaches terminals and process names)
DEFAULT_METRICS_ADDRESS = "127.0.0.1"   # where the metrics endpoint listens unless told otherwise
MAX_PATH = 4096                 # characters in a path (Linux PATH_MAX)
NAME_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_NAME}}}")      # printable ASCII: no escapes, NUL or newlines
PORT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,15}")
PCI_ADDRESS_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
INTERFACE_RE = re.compile(r"[^/\s]{1,15}")     # Linux IFNAMSIZ - 1, no slash or blank

DEFAULT_BATCH_SIZE = 32
DEFAULT_RING_SIZE = 1024
DEFAULT_BUFFER_SIZE = 2048
DEFAULT_BUFFERS_PER_QUEUE = 4096
DEFAULT_DESC_RING = 512
DEFAULT_STATS_INTERVAL = 1.0
DEFAULT_IMPORT_TIMEOUT = 10.0
DEFAULT_SETUP_TIMEOUT = 30.0
DEFAULT_STALL_TIMEOUT = 2.0
DEFAULT_MAX_RESTARTS = 5


def printable(text: str, limit: int = 80) -> str:
    """``text`` safe to print: anything but printable ASCII escaped (\\x1b, \\n, \\u202e), cut to ``limit``."""
    head = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    cut = len(text) > limit or len(head) > limit
    return f"{head[:limit]}... ({len(text)} characters)" if cut else head


class ConfigError(ValueError):
    """A pipeline file cannot be used; str() names the file, key, line and what is allowed."""

    def __init__(self, file: str, key: str, message: str, line: int | None = None):
        key = printable(key)                 # an unknown key is the file's text: never raw to a terminal
        file = printable(file, MAX_PATH)
        self.file, self.key, self.line, self.message = file, key, line, message
        self.details = ""                    # more for -v (the traceback of a worker's failed import)
        where = f" (line {line})" if line else ""
        super().__init__(f"{file}: {key}{where}: {message}" if key else f"{file}{where}: {message}")


# ---- the validated pipeline -----------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorSpec:
    """Traffic a simulated port's wire delivers (sim ports only)."""
    packet_size: int = 60
    rate_mpps: float = 0.0          # 0 = as fast as the RX ring takes it
    flows: int = 4
    count: int = 0                  # 0 = unlimited
    profile: str = "udp"            # sim.payload.PROFILES
    vlan: int | None = None         # 802.1Q VID of every frame


@dataclass(frozen=True)
class SinkSpec:
    """What takes the frames a simulated port transmits (sim ports only)."""
    mode: str = "verify"            # "verify": ixypipe's generator frames; "count": any frames
    expect_touch: bool = False
    pcap: str = ""                  # absolute path, "" = no capture

    @property
    def verify(self) -> bool:
        return self.mode == "verify"


@dataclass(frozen=True)
class PortConfig:
    name: str
    driver: str
    pci: str = ""                   # ixgbe (required), sim (optional: the simulator assigns one)
    interface: str = ""             # af_packet
    path: str = ""                  # pcap: absolute path (relative ones are resolved against the file)
    rx_queues: int = 1
    tx_queues: int = 1
    rx_ring_size: int = DEFAULT_DESC_RING
    tx_ring_size: int = DEFAULT_DESC_RING
    promiscuous: bool = True
    forward_to: str = ""            # port name; always filled in after validation
    generator: GeneratorSpec | None = None
    sink: SinkSpec | None = None
    pcap_mode: str = "read"
    pcap_loop: int = 1
    pcap_rate_mpps: float = 0.0
    af_packet_options: dict = field(default_factory=dict)   # qdisc_bypass, fanout_defrag when given
    iommu: str = "none"             # ixgbe, sim: "vfio", "none" (physical addresses) or "auto"
    hot_path: str = "auto"          # ixgbe, sim, af_packet: the driver's RX/TX kernels, "auto" (numba when installed),
                                    # "numpy" or "numba"
    share: bool = False             # ixgbe, af_packet: run beside other pipelines on this device on purpose
    device: str = "82599"           # sim: the software device, "82599" or "virtio" (then driven by the virtio driver)
    transport: str = "auto"         # virtio, sim virtio: "legacy", "modern" or "auto" (a sim device: modern)
    mrg_rxbuf: bool = True          # virtio, sim virtio, vhost-user: negotiate MRG_RXBUF when offered (12-byte header)
    socket: str = ""                # vhost-user: the backend's unix socket (absolute; relative ones from the file)
    vhost_mode: str = "client"      # vhost-user: "client" (the backend listens)

    def to_spec(self) -> PortSpec:
        """The driver's view of this port: address = pci / interface / path, extras in options."""
        options: dict[str, Any] = {}
        if self.driver == "pcap":
            options = {"mode": self.pcap_mode, "loop": self.pcap_loop, "rate_mpps": self.pcap_rate_mpps}
        elif self.driver == "af_packet":
            options = {**self.af_packet_options, "hot_path": self.hot_path}
        elif self.driver in ("ixgbe", "sim"):
            options = {"iommu": self.iommu, "hot_path": self.hot_path}
        if self.driver == "virtio" or self.device == "virtio":
            options = {"device": "virtio", "transport": self.transport, "mrg_rxbuf": self.mrg_rxbuf,
                       "hot_path": self.hot_path}
        elif self.driver == "vhost-user":
            options = {"mode": self.vhost_mode, "mrg_rxbuf": self.mrg_rxbuf, "hot_path": self.hot_path}
        address = {"ixgbe": self.pci, "sim": self.pci, "virtio": self.pci, "vhost-user": self.socket,
                   "af_packet": self.interface, "pcap": self.path}[self.driver]
        return PortSpec(self.name, self.driver, address, self.rx_queues, self.tx_queues, self.rx_ring_size,
                        self.tx_ring_size, self.promiscuous, options)

    def to_sim_config(self) -> SimPortConfig:
        """The simulator's view of this ``sim`` port: its wire's generator and sink."""
        from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SinkConfig

        g, s = self.generator, self.sink
        return SimPortConfig(
            name=self.name, pci_address=self.pci or None, iommu=self.iommu != "none", device=self.device,
            transport="legacy" if self.transport == "legacy" else "modern",
            queue_size=max(self.rx_ring_size, self.tx_ring_size), queue_pairs=self.rx_queues,
            generator=GeneratorConfig(packet_size=g.packet_size, rate_pps=g.rate_mpps * 1e6, flows=g.flows,
                                      count=g.count, profile=g.profile, vlan=g.vlan) if g else None,
            sink=SinkConfig(mode=s.mode, expect_touch=s.expect_touch, pcap=s.pcap or None) if s else None)


@dataclass(frozen=True)
class WorkersConfig:
    function: str = "forward"       # no [workers]: a bump in the wire, frames leave as they came
    processes: int = 1
    distribute: str = "flow"
    per_packet: bool = False
    options: dict = field(default_factory=dict)     # [workers.options]: handed to the worker as ctx.options
    import_timeout: float = DEFAULT_IMPORT_TIMEOUT  # seconds the worker's module may take to import
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT    # ... and a worker stage its import and setup() (else: stuck)
    line: int | None = field(default=None, compare=False)   # of workers.function, for errors found later


@dataclass(frozen=True)
class CpuConfig:
    rx: list[int] | None = None
    workers: list[int] | None = None
    tx: list[int] | None = None
    sim: list[int] | None = None


@dataclass(frozen=True)
class StatsConfig:
    interval: float = DEFAULT_STATS_INTERVAL
    json: bool = False
    metrics_port: int = 0                           # the Prometheus endpoint (pipeline/metrics.py), 0 = none
    metrics_address: str = DEFAULT_METRICS_ADDRESS


@dataclass(frozen=True)
class PipelineConfig:
    path: str
    name: str
    batch_size: int
    ring_size: int
    buffer_size: int
    buffers_per_queue: int
    hugepages: str
    on_stage_death: str
    ports: list[PortConfig]
    workers: WorkersConfig
    cpus: CpuConfig
    stats: StatsConfig
    idle: str = "auto"
    worker_user: str = ""        # whom the workers become ("": nobody when run as root, else the caller)
    stall_timeout: float = DEFAULT_STALL_TIMEOUT   # seconds without a heartbeat before a stage counts as hung
    max_restarts: int = DEFAULT_MAX_RESTARTS       # on_stage_death = "restart": per stage and minute

    @property
    def base_dir(self) -> Path:
        """Where relative paths in the file (worker files, pcap files) are resolved."""
        return Path(self.path).resolve().parent


# ---- where keys are in the text -------------------------------------------------------------
_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY_RE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_dotted(key: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)]


def _open_brackets(value: str) -> int:
    """Net '[' minus ']' outside strings and comments (to skip multi-line arrays)."""
    depth, quote = 0, ""
    for ch in value:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return depth


def key_lines(text: str) -> dict[str, int]:
    """Map key paths ("ports[1].driver", "ports[0].generator") to their 1-based line numbers.

    A light scan, not a parser: it only has to find where tomllib already
    accepted a key, for error messages.
    """
    lines: dict[str, int] = {}
    arrays: dict[str, int] = {}           # array-of-tables path -> index of its last element
    prefix = ""
    depth = 0
    in_string = ""
    for no, line in enumerate(text.splitlines(), 1):
        if in_string:
            if in_string in line:
                in_string = ""
            continue
        if depth > 0:
            depth += _open_brackets(line)
            continue
        header = _HEADER_RE.match(line)
        if header and not _KEY_RE.match(line):
            parts = _split_dotted(header.group(2))
            resolved = ""
            for i, part in enumerate(parts):
                plain = f"{resolved}.{part}" if resolved else part
                if i == len(parts) - 1 and header.group(1) == "[[":
                    arrays[plain] = arrays.get(plain, -1) + 1
                resolved = f"{plain}[{arrays[plain]}]" if plain in arrays else plain
            prefix = resolved
            lines.setdefault(prefix, no)
            continue
        key = _KEY_RE.match(line)
        if key:
            path = ".".join([prefix, *_split_dotted(key.group(1))] if prefix else _split_dotted(key.group(1)))
            lines.setdefault(path, no)
            value = line[key.end():]
            for q in ('"""', "'''"):
                if value.count(q) == 1:
                    in_string = q
            depth = max(0, _open_brackets(value))
    return lines


# ---- reading typed values -------------------------------------------------------------------
def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return printable(repr(value))
    return repr(value)


def _choices(values) -> str:
    return ", ".join(repr(v) for v in values)


class _Reader:
    """Validation context: the file name, the key lines and helpers that raise ConfigError."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.lines = key_lines(text)

    def line_of(self, key: str) -> int | None:
        path = key
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return None

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.file, key, message, self.line_of(key))

    def table(self, doc: dict, name: str, key: str, allowed: tuple[str, ...]) -> dict:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table ([{key}]), got {_show(value)}")
        self.only(value, key, allowed)
        return value

    def only(self, table: dict, key: str, allowed: tuple[str, ...], why: str = "") -> None:
        for k in table:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key{why}; allowed keys: {', '.join(allowed)}")

    def integer(self, table: dict, name: str, key: str, default: int, lo: int | None = None,
                hi: int | None = None, power_of_two: bool = False) -> int:
        """A whole number within ``lo``..``hi``, by default the key's range in RANGES."""
        full = f"{key}.{name}"
        lo, hi = _limits(full, lo, hi)
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(full, f"must be a whole number{_range(lo, hi)}, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (
                power_of_two and (value <= 0 or value & (value - 1))):
            what = "a power of two" if power_of_two else "a whole number"
            raise self.fail(full, f"must be {what}{_range(lo, hi)}, got {_show(value)}")
        return value

    def number(self, table: dict, name: str, key: str, default: float, lo: float | None = None,
               lo_open: bool = False, hi: float | None = None) -> float:
        """A finite number within ``lo``..``hi`` (above ``lo`` when ``lo_open``), by default the key's range."""
        full = f"{key}.{name}"
        lo, hi = _limits(full, lo, hi)
        value = table.get(name, default)
        bound = (f"> {lo:g}" if lo_open else f">= {lo:g}") if hi is None else (
            f"from {lo:g} to {hi:g}" if not lo_open else f"> {lo:g} and <= {hi:g}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(full, f"must be a number {bound}, got {_show(value)}")
        if (value != value or value in (float("inf"), float("-inf")) or value < lo or (lo_open and value == lo)
                or (hi is not None and value > hi)):
            raise self.fail(full, f"must be a number {bound}, got {_show(value)}")
        return float(value)

    def boolean(self, table: dict, name: str, key: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", f"must be true or false, got {_show(value)}")
        return value

    def string(self, table: dict, name: str, key: str, default: str, choices: tuple[str, ...] = (),
               limit: int = MAX_PATH) -> str:
        full = f"{key}.{name}"
        value = table.get(name, default)
        if choices and value not in choices:
            raise self.fail(full, f"must be one of {_choices(choices)}, got {_show(value)}")
        if not isinstance(value, str):
            raise self.fail(full, f"must be a string, got {_show(value)}")
        if len(value) > limit or not value.isprintable():
            raise self.fail(full, f"must be at most {limit} printable characters (no control characters, "
                                  f"NUL or newlines), got {_show(value)}")
        return value


def _limits(full_key: str, lo, hi) -> tuple:
    """``lo`` and ``hi`` where given, else the range RANGES documents for this key ("ports[1].x" -> "ports.x")."""
    documented = RANGES.get(re.sub(r"\[\d+\]", "", full_key), (None, None))
    return (documented[0] if lo is None else lo), (documented[1] if hi is None else hi)


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


# ---- the tables -----------------------------------------------------------------------------
PIPELINE_KEYS = ("name", "batch_size", "ring_size", "buffer_size", "buffers_per_queue", "hugepages",
                 "on_stage_death", "stats_interval", "idle", "worker_user", "stall_timeout", "max_restarts")
PORT_COMMON_KEYS = ("name", "driver", "rx_queues", "tx_queues", "rx_ring_size", "tx_ring_size", "promiscuous",
                    "forward_to")
PORT_DRIVER_KEYS = {
    "sim": ("pci", "generator", "sink", "iommu", "hot_path", "device", "transport", "mrg_rxbuf"),
    "ixgbe": ("pci", "iommu", "hot_path", "share"),
    "virtio": ("pci", "transport", "mrg_rxbuf", "hot_path"),
    "vhost-user": ("socket", "mode", "mrg_rxbuf", "hot_path"),
    "af_packet": ("interface", "qdisc_bypass", "fanout_defrag", "hot_path", "share"),
    "pcap": ("path", "mode", "loop", "rate_mpps"),
}
GENERATOR_KEYS = ("packet_size", "rate_mpps", "flows", "count", "profile", "vlan")
SINK_KEYS = ("mode", "expect_touch", "pcap", "verify")
WORKERS_KEYS = ("function", "processes", "distribute", "per_packet", "options", "import_timeout", "setup_timeout")
STATS_KEYS = ("interval", "json", "metrics_port", "metrics_address")
TOP_KEYS = ("pipeline", "ports", "workers", "cpus", "stats")


def load_pipeline(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a pipeline file."""
    return parse_pipeline(read_pipeline_file(path), path)




def _regular_file_problem(st: os.stat_result) -> str:
    """Why a file with this stat cannot be a pipeline file, "" when it can."""
    if not stat.S_ISREG(st.st_mode):
        return f"is {file_kind(st.st_mode)}; a pipeline file must be a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return f"is {st.st_size} bytes; a pipeline file is at most {MAX_FILE_BYTES} bytes (1 MiB)"
    return ""


def read_pipeline_file(path: str | os.PathLike) -> str:
    """The text of a pipeline file: a regular file of at most MAX_FILE_BYTES, UTF-8.

    It is looked at (stat) before it is opened, so a FIFO, a device such as
    /dev/zero or a directory is refused instead of blocking or filling memory;
    the open file is checked again (it may have been swapped) and read with a cap.
    """
    file = str(path)
    try:
        problem = _regular_file_problem(os.stat(path))
        fd = -1 if problem else os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(file, "", "no such pipeline file") from None
    except ValueError as exc:               # an embedded NUL byte
        raise ConfigError(file, "", f"not a usable path: {exc}") from None
    except OSError as exc:
        why = "a loop of symbolic links" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise ConfigError(file, "", f"cannot read the pipeline file: {why}") from None
    if problem:
        raise ConfigError(file, "", problem)
    kernel_fs = kernel_filesystem(path)
    if kernel_fs is not None:
        os.close(fd)
        raise ConfigError(file, "", f"is on {kernel_fs} (a kernel interface); a pipeline file must be a regular file")
    chunks, size = [], 0
    try:
        problem = _regular_file_problem(os.fstat(fd))           # swapped since the stat?
        while size <= MAX_FILE_BYTES and not problem:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the pipeline file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if problem:
        raise ConfigError(file, "", problem)
    if size > MAX_FILE_BYTES:
        raise ConfigError(file, "", f"grew beyond {MAX_FILE_BYTES} bytes while being read; a pipeline file is "
                                    "at most 1 MiB")
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text (byte {exc.start}): a pipeline file is TOML") from None
    if "\x00" in text:
        raise ConfigError(file, "", f"contains a NUL byte (byte {raw.index(0)}): a pipeline file is TOML text")
    return text


def _depth_problem(doc: dict) -> str:
    """The first key path nested deeper than MAX_DEPTH tables or arrays, "" when none is (no recursion)."""
    todo: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while todo:
        value, key, depth = todo.pop()
        if depth > MAX_DEPTH:
            return key
        if isinstance(value, dict):
            todo.extend((v, f"{key}.{k}" if key else str(k), depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            todo.extend((v, f"{key}[{i}]", depth + 1) for i, v in enumerate(value))
    return ""


def _deep_line(text: str) -> int | None:
    """The first line where brackets open deeper than MAX_DEPTH (a rough count, for the message only)."""
    depth = 0
    for no, line in enumerate(text.splitlines(), 1):
        depth = max(0, depth + _open_brackets(line))
        if depth > MAX_DEPTH:
            return no
    return None


def parse_pipeline(text: str, path: str | os.PathLike) -> PipelineConfig:
    """Validate the TOML ``text`` of the pipeline file at ``path`` (relative paths resolve against its directory)."""
    file = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    except RecursionError:          # tomllib parses nested arrays and inline tables recursively
        raise ConfigError(file, "", f"arrays or inline tables nested too deeply (a pipeline file nests at "
                                    f"most {MAX_DEPTH} levels)", _deep_line(text)) from None
    r = _Reader(file, text)
    deep = _depth_problem(doc)
    if deep:
        raise r.fail(deep, f"nested too deeply (a pipeline file nests at most {MAX_DEPTH} levels of tables "
                           "and arrays)")
    r.only(doc, "", TOP_KEYS, " (top-level tables)")
    base_dir = Path(path).resolve().parent

    pl = r.table(doc, "pipeline", "pipeline", PIPELINE_KEYS)
    default_name = "".join(c if NAME_RE.fullmatch(c) else "_" for c in Path(path).stem[:MAX_NAME]) or "pipeline"
    name = r.string(pl, "name", "pipeline", default_name, limit=MAX_NAME)
    if not NAME_RE.fullmatch(name):
        raise r.fail("pipeline.name", f"must be 1 to {MAX_NAME} printable ASCII characters (no control "
                                      f"characters or escapes), got {_show(name)}")
    batch_size = r.integer(pl, "batch_size", "pipeline", DEFAULT_BATCH_SIZE)
    ring_size = r.integer(pl, "ring_size", "pipeline", DEFAULT_RING_SIZE, power_of_two=True)
    if ring_size < batch_size:
        raise r.fail("pipeline.ring_size", f"must hold at least one batch (batch_size {batch_size}), "
                                           f"got {ring_size}")
    buffer_size = r.integer(pl, "buffer_size", "pipeline", DEFAULT_BUFFER_SIZE, power_of_two=True)
    hugepages = r.string(pl, "hugepages", "pipeline", "auto", HUGEPAGE_MODES)
    on_stage_death = r.string(pl, "on_stage_death", "pipeline", "stop", STAGE_DEATH_POLICIES)
    idle = r.string(pl, "idle", "pipeline", "auto", IDLE_MODES)
    worker_user = r.string(pl, "worker_user", "pipeline", "")
    why = privilege.check_switch(worker_user) if worker_user or "worker_user" not in pl else "must not be empty"
    if why:
        raise r.fail("pipeline.worker_user", f"{why}; give the user name or uid the workers run as "
                                             f"(default {privilege.DEFAULT_WORKER_USER} when run as root)")
    stall_timeout = r.number(pl, "stall_timeout", "pipeline", DEFAULT_STALL_TIMEOUT)
    max_restarts = r.integer(pl, "max_restarts", "pipeline", DEFAULT_MAX_RESTARTS)

    ports = _ports(r, doc, buffer_size, base_dir)

    per_queue_needed, why = _buffers_needed(ports, batch_size)
    bpq = r.integer(pl, "buffers_per_queue", "pipeline", max(DEFAULT_BUFFERS_PER_QUEUE, per_queue_needed))
    if bpq < per_queue_needed:
        raise r.fail("pipeline.buffers_per_queue",
                     f"must be at least {per_queue_needed} ({why}) so a full RX ring, a full TX ring and "
                     f"two batches in flight never empty the mempool, got {bpq}")
    _check_memory(r, ports, bpq, buffer_size)

    workers = _workers(r, doc, base_dir)
    cpus = _cpus(r, doc)

    st = r.table(doc, "stats", "stats", STATS_KEYS)
    interval = r.number(pl, "stats_interval", "pipeline", DEFAULT_STATS_INTERVAL)
    if "interval" in st:
        if "stats_interval" in pl and r.number(st, "interval", "stats", 1.0) != interval:
            raise r.fail("stats.interval", f"disagrees with pipeline.stats_interval ({interval:g}); "
                                           "give the interval once")
        interval = r.number(st, "interval", "stats", DEFAULT_STATS_INTERVAL)
    stats = StatsConfig(interval, r.boolean(st, "json", "stats", False),
                        r.integer(st, "metrics_port", "stats", 0),
                        r.string(st, "metrics_address", "stats", DEFAULT_METRICS_ADDRESS, limit=MAX_NAME))

    return PipelineConfig(file, name, batch_size, ring_size, buffer_size, bpq, hugepages, on_stage_death,
                          ports, workers, cpus, stats, idle, worker_user,
                          stall_timeout, max_restarts)


def _check_memory(r: _Reader, ports: list[PortConfig], bpq: int, buffer_size: int) -> None:
    """The mempools (one per RX queue) must fit this machine's memory: found now, not when the arena is made."""
    import psutil

    queues = sum(p.rx_queues for p in ports)
    need, have = queues * bpq * buffer_size, psutil.virtual_memory().total
    if need > have:
        raise r.fail("pipeline.buffers_per_queue",
                     f"{queues} RX queues x {bpq} buffers x {buffer_size} bytes = {need >> 20} MiB of packet "
                     f"buffers, more than this machine's {have >> 20} MiB of memory")


def _buffers_needed(ports: list[PortConfig], batch_size: int) -> tuple[int, str]:
    """Smallest mempool per RX queue: its RX ring, the largest TX ring it may fill, two batches."""
    tx_max = max(p.tx_ring_size for p in ports)
    worst = max(ports, key=lambda p: p.rx_ring_size)
    need = worst.rx_ring_size + tx_max + 2 * batch_size
    return need, (f"port {worst.name!r}: rx_ring_size {worst.rx_ring_size} + largest tx_ring_size {tx_max} "
                  f"+ 2 x batch_size {batch_size}")


def _ports(r: _Reader, doc: dict, buffer_size: int, base_dir: Path) -> list[PortConfig]:
    raw = doc.get("ports")
    if raw is None:
        raise r.fail("ports", "no ports: add at least one [[ports]] table with a name and a driver")
    if not isinstance(raw, list) or not raw or not all(isinstance(p, dict) for p in raw):
        raise r.fail("ports", "must be an array of tables ([[ports]] ... ) with at least one port, "
                              f"got {_show(raw)}")
    if len(raw) > MAX_PORTS:
        raise r.fail(f"ports[{MAX_PORTS}]", f"at most {MAX_PORTS} ports, got {len(raw)}")
    ports: list[PortConfig] = []
    first_seen: dict[str, int] = {}
    for i, p in enumerate(raw):
        key = f"ports[{i}]"
        if "name" not in p:
            raise r.fail(key, "missing required key name (the port's name, [A-Za-z0-9_-]{1,15})")
        name = r.string(p, "name", key, "")
        if not PORT_NAME_RE.fullmatch(name):
            raise r.fail(f"{key}.name", f"must be 1 to 15 of A-Z a-z 0-9 _ -, got {_show(name)}")
        if name in first_seen:
            raise r.fail(f"{key}.name", f"duplicate port name {name!r} (already ports[{first_seen[name]}]); "
                                        "port names must be unique")
        first_seen[name] = i
        if "driver" not in p:
            raise r.fail(key, f"missing required key driver (one of {_choices(DRIVERS)})")
        driver = r.string(p, "driver", key, "", DRIVERS)
        allowed = PORT_COMMON_KEYS + PORT_DRIVER_KEYS[driver]
        r.only(p, key, allowed, f" for a {driver!r} port")
        ports.append(_port(r, p, key, name, driver, buffer_size, base_dir))
    _check_pci_addresses(r, ports)
    _check_outputs(r, ports)

    names = [p.name for p in ports]
    resolved = []
    for i, p in enumerate(ports):
        key = f"ports[{i}].forward_to"
        target = p.forward_to
        if not target:
            if len(ports) == 1:
                target = p.name
            elif len(ports) == 2:
                target = names[1 - i]
            else:
                raise r.fail(f"ports[{i}]", f"missing forward_to: with {len(ports)} ports say where packets "
                                            f"received on {p.name!r} go (one of {_choices(names)})")
        elif target not in names:
            raise r.fail(key, f"must name a port of this file, one of {_choices(names)}, got {_show(target)}")
        resolved.append(_replace(p, forward_to=target))
    return resolved


def _check_pci_addresses(r: _Reader, ports: list[PortConfig]) -> None:
    """No two ports drive the same PCI function: given addresses, and the simulator's defaults for sim ports
    without one (sim ports live in the simulator's own sysfs tree, ixgbe ports in the machine's)."""
    from ixypipe.sim.sysfs import default_address

    seen: dict[tuple[bool, str], tuple[int, bool]] = {}
    sim_index = 0
    for i, p in enumerate(ports):
        if p.driver not in ("sim", "ixgbe", "virtio"):
            continue
        given = bool(p.pci)
        address = p.pci
        if p.driver == "sim":
            address = p.pci or default_address(sim_index)
            sim_index += 1
        where = (p.driver == "sim", address)
        if where in seen:
            j, j_given = seen[where]
            how = "" if j_given else ", the simulator's default for a sim port without pci"
            mine = "" if given else " (the simulator's default for this sim port without pci)"
            raise r.fail(f"ports[{i}].pci" if given else f"ports[{i}]",
                         f"PCI address {address}{mine} is also the address of port {ports[j].name!r} "
                         f"(ports[{j}]{how}); ports {ports[j].name!r} and {p.name!r} need different addresses")
        seen[where] = (i, given)


def _check_outputs(r: _Reader, ports: list[PortConfig]) -> None:
    """A file is written by at most one port, and never one that a port reads, nor the pipeline file."""
    used: dict[str, str] = {os.path.realpath(r.file): "the pipeline file itself (read)"}
    for i, p in enumerate(ports):
        files = []
        if p.driver == "pcap":
            files.append((f"ports[{i}].path", p.path, p.pcap_mode == "write"))
        if p.sink is not None and p.sink.pcap:
            files.append((f"ports[{i}].sink.pcap", p.sink.pcap, True))
        for key, path, writes in files:
            real = os.path.realpath(path)
            if real in used and (writes or used[real].endswith("(written)")):
                raise r.fail(key, f"{printable(repr(path), MAX_PATH)} is also {used[real]}; a file written "
                                  "by one port cannot be read or written by another")
            used.setdefault(real, f"{key} ({'written' if writes else 'read'})")


def _replace(p: PortConfig, **changes) -> PortConfig:
    from dataclasses import replace
    return replace(p, **changes)


def _port(r: _Reader, p: dict, key: str, name: str, driver: str, buffer_size: int, base_dir: Path) -> PortConfig:
    rx_queues = r.integer(p, "rx_queues", key, 1)
    tx_queues = r.integer(p, "tx_queues", key, 1)
    rx_ring = r.integer(p, "rx_ring_size", key, DEFAULT_DESC_RING, power_of_two=True)
    tx_ring = r.integer(p, "tx_ring_size", key, DEFAULT_DESC_RING, power_of_two=True)
    promiscuous = r.boolean(p, "promiscuous", key, True)
    forward_to = r.string(p, "forward_to", key, "")
    fields: dict[str, Any] = {}
    if driver in ("ixgbe", "sim", "virtio"):
        if driver != "sim" and "pci" not in p:
            raise r.fail(key, f"missing required key pci for an {driver!r} port (its PCI address, "
                              "\"DDDD:BB:DD.F\", e.g. \"0000:03:00.0\")")
        pci = r.string(p, "pci", key, "")
        if pci and not PCI_ADDRESS_RE.fullmatch(pci):
            raise r.fail(f"{key}.pci", f"must be a PCI address \"DDDD:BB:DD.F\" (hex), e.g. \"0000:03:00.0\", "
                                       f"got {_show(pci)}")
        fields["pci"] = pci.lower()
        if driver != "virtio":
            fields["iommu"] = r.string(p, "iommu", key, "none", IOMMU_MODES)
        fields["hot_path"] = r.string(p, "hot_path", key, "auto", HOT_PATHS)
    if driver == "sim":
        fields["device"] = r.string(p, "device", key, "82599", SIM_DEVICES)
    if driver == "virtio" or fields.get("device") == "virtio":
        _virtio(r, p, key, fields, rx_queues, tx_queues, rx_ring, tx_ring)
    elif driver == "vhost-user":
        _vhost_user(r, p, key, fields, base_dir, rx_queues, tx_queues)
    elif "transport" in p or "mrg_rxbuf" in p:
        bad = "transport" if "transport" in p else "mrg_rxbuf"
        raise r.fail(f"{key}.{bad}", "only for a virtio port (driver = \"virtio\", or a sim port with "
                                     "device = \"virtio\")")
    if driver in ("ixgbe", "af_packet"):
        fields["share"] = r.boolean(p, "share", key, False)
    if driver == "sim":
        fields["generator"] = _generator(r, p, f"{key}.generator", buffer_size)
        fields["sink"] = _sink(r, p, f"{key}.sink", base_dir)
    elif driver == "af_packet":
        if "interface" not in p:
            raise r.fail(key, "missing required key interface for an 'af_packet' port (a kernel "
                              "interface name, e.g. \"veth0\")")
        interface = r.string(p, "interface", key, "")
        if not INTERFACE_RE.fullmatch(interface):
            raise r.fail(f"{key}.interface", f"must be an interface name of 1 to 15 characters without '/' "
                                             f"or blanks, got {_show(interface)}")
        fields["interface"] = interface
        fields["af_packet_options"] = {k: r.boolean(p, k, key, False) for k in ("qdisc_bypass", "fanout_defrag")
                                       if k in p}
        fields["hot_path"] = r.string(p, "hot_path", key, "auto", HOT_PATHS)
    elif driver == "pcap":
        if "path" not in p:
            raise r.fail(key, "missing required key path for a 'pcap' port (the pcap file, relative to "
                              "the pipeline file's directory)")
        mode = r.string(p, "mode", key, "read", PCAP_MODES)
        fields["path"] = _file(r, p, "path", key, base_dir, must_exist=mode == "read")
        if mode == "read":
            _capture(r, f"{key}.path", fields["path"], read=True)
        fields["pcap_mode"] = mode
        fields["pcap_loop"] = r.integer(p, "loop", key, 1)
        fields["pcap_rate_mpps"] = r.number(p, "rate_mpps", key, 0.0)
        if rx_queues != 1 or tx_queues != 1:
            bad = "rx_queues" if rx_queues != 1 else "tx_queues"
            raise r.fail(f"{key}.{bad}", f"a 'pcap' port has exactly one RX and one TX queue, "
                                         f"got {rx_queues if bad == 'rx_queues' else tx_queues}")
    return PortConfig(name, driver, rx_queues=rx_queues, tx_queues=tx_queues, rx_ring_size=rx_ring,
                      tx_ring_size=tx_ring, promiscuous=promiscuous, forward_to=forward_to, **fields)


def _virtio(r: _Reader, p: dict, key: str, fields: dict, rx_queues: int, tx_queues: int, rx_ring: int,
            tx_ring: int) -> None:
    """A virtio port's keys: transport, mrg_rxbuf; queues in pairs; a software one has no IOMMU."""
    fields["transport"] = r.string(p, "transport", key, "auto", VIRTIO_TRANSPORTS)
    fields["mrg_rxbuf"] = r.boolean(p, "mrg_rxbuf", key, True)
    if rx_queues != tx_queues or rx_queues > MAX_QUEUE_PAIRS:
        raise r.fail(f"{key}.tx_queues", f"a virtio port's queues come in pairs (MQ): rx_queues and tx_queues must "
                                         f"be equal, at most {MAX_QUEUE_PAIRS}; got {rx_queues} and {tx_queues}")
    if fields.get("iommu", "none") != "none":
        raise r.fail(f"{key}.iommu", "a software virtio-net device has no simulated IOMMU")
    if fields["transport"] == "legacy" and rx_ring != tx_ring:
        raise r.fail(f"{key}.tx_ring_size", f"a legacy virtio device has one queue size: rx_ring_size "
                                            f"({rx_ring}) and tx_ring_size ({tx_ring}) must be equal")


def _vhost_user(r: _Reader, p: dict, key: str, fields: dict, base_dir: Path, rx_queues: int, tx_queues: int) -> None:
    """A vhost-user port: its socket (the backend may create it later), client mode, one queue pair."""
    if "socket" not in p:
        raise r.fail(key, "missing required key socket for a 'vhost-user' port (the backend's unix socket, e.g. "
                          "\"/tmp/vhost-user0.sock\")")
    raw = r.string(p, "socket", key, "")
    if not raw:
        raise r.fail(f"{key}.socket", "must be a socket path, got an empty string")
    fields["socket"] = str(Path(raw) if Path(raw).is_absolute() else base_dir / raw)
    fields["vhost_mode"] = r.string(p, "mode", key, "client", VHOST_USER_MODES)
    fields["mrg_rxbuf"] = r.boolean(p, "mrg_rxbuf", key, True)
    fields["hot_path"] = r.string(p, "hot_path", key, "auto", HOT_PATHS)
    if rx_queues != 1 or tx_queues != 1:
        bad = "rx_queues" if rx_queues != 1 else "tx_queues"
        raise r.fail(f"{key}.{bad}", f"a 'vhost-user' port has one queue pair so far, got "
                                     f"{rx_queues if bad == 'rx_queues' else tx_queues}")


def _file(r: _Reader, table: dict, name: str, key: str, base_dir: Path, must_exist: bool) -> str:
    """An input file (``must_exist``: a regular file) or an output file (pcapfile.check_output), as a full path."""
    full = f"{key}.{name}"
    raw = r.string(table, name, key, "")
    if not raw:
        raise r.fail(full, "must be a file path, got an empty string")
    path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
    if must_exist:
        try:
            st = path.stat()
        except OSError as exc:
            why = "" if exc.errno == errno.ENOENT else f": {exc.strerror}"
            raise r.fail(full, f"no such file {printable(repr(str(path)), MAX_PATH)}{why} (relative paths "
                               f"start at {printable(repr(str(base_dir)), MAX_PATH)})") from None
        if not stat.S_ISREG(st.st_mode):
            raise r.fail(full, f"{printable(str(path), MAX_PATH)} is {file_kind(st.st_mode)}; an input must be a "
                               "regular file")
    else:
        _capture(r, full, str(path), read=False)
    return str(path)


def _capture(r: _Reader, key: str, path: str, read: bool) -> None:
    """A pcap file to replay (pcap or pcapng of Ethernet frames) or a path a capture can be written to."""
    from ixypipe.pcapfile import PcapError, check_input, check_output, read_pcap

    try:
        if read:
            check_input(path)
            read_pcap(path, allow_cut=True)     # every record: a corrupt field is this error, not a stage's death
        else:
            check_output(path)
    except PcapError as exc:
        raise r.fail(key, str(exc)) from None


def _subtable(r: _Reader, p: dict, name: str, key: str, allowed: tuple[str, ...]) -> dict | None:
    if name not in p:
        return None
    value = p[name]
    if not isinstance(value, dict):
        raise r.fail(key, f"must be a table ([{key.split('[')[0]}.{name}]), got {_show(value)}")
    r.only(value, key, allowed)
    return value


def _generator(r: _Reader, p: dict, key: str, buffer_size: int) -> GeneratorSpec | None:
    g = _subtable(r, p, "generator", key, GENERATOR_KEYS)
    if g is None:
        return None
    name = r.string(g, "profile", key, "udp", PROFILES)
    vlan = r.integer(g, "vlan", key, DEFAULT_VID, *VID_RANGE) if "vlan" in g else None
    profile = Profile(name, vlan)
    size = r.integer(g, "packet_size", key, profile.default_size, profile.min_size, profile.max_size)
    flows = r.integer(g, "flows", key, profile.default_flows or 4)
    try:
        sizes = profile.sizes(size, buffer_size - PKTBUF_HEADROOM)
    except ProfileError as exc:
        raise r.fail(f"{key}.packet_size", f"{exc} ([pipeline] buffer_size = {buffer_size})") from None
    # the generator feeds a software 82599, whose driver sets a max frame size that keeps every frame in
    # a buffer (registers.rx_frame_limits): it would drop longer ones as too_long, every one of them
    mfs = rx_frame_limits(buffer_size - PKTBUF_HEADROOM)[1]
    longest = mfs - OCTETS_FCS_LEN + (MFS_VLAN_EXTRA if profile.tag_len else 0)
    if max(sizes) > longest:
        raise r.fail(f"{key}.packet_size", f"packet size {max(sizes)} is longer than the port takes: with "
                     f"{buffer_size}-byte buffers its 82599 driver sets a max frame size of {mfs} bytes with FCS "
                     f"({mfs - OCTETS_FCS_LEN} without, {mfs - OCTETS_FCS_LEN + MFS_VLAN_EXTRA} with an 802.1Q "
                     f"tag) and the NIC drops longer frames; a larger buffer_size makes room ([pipeline] "
                     f"buffer_size = {buffer_size})")
    try:
        profile.check_flows(flows)
    except ProfileError as exc:
        raise r.fail(f"{key}.flows", str(exc)) from None
    return GeneratorSpec(size, r.number(g, "rate_mpps", key, 0.0), flows, r.integer(g, "count", key, 0),
                         name, profile.vlan)


def _sink(r: _Reader, p: dict, key: str, base_dir: Path) -> SinkSpec | None:
    s = _subtable(r, p, "sink", key, SINK_KEYS)
    if s is None:
        return None
    pcap = _file(r, s, "pcap", key, base_dir, must_exist=False) if s.get("pcap", "") != "" else ""
    if "verify" in s and "mode" in s:
        raise r.fail(f"{key}.verify", "give mode or the older verify = true/false, not both")
    if "verify" in s:           # the older spelling: verify = false is a counting sink
        mode = "verify" if r.boolean(s, "verify", key, True) else "count"
    else:
        mode = r.string(s, "mode", key, "verify", SINK_MODES)
    expect_touch = r.boolean(s, "expect_touch", key, False)
    if expect_touch and mode != "verify":
        raise r.fail(f"{key}.expect_touch", f"needs mode = 'verify' (a {mode!r} sink does not look inside "
                                            "frames), got mode = " + repr(mode))
    return SinkSpec(mode, expect_touch, pcap)


def _workers(r: _Reader, doc: dict, base_dir: Path) -> WorkersConfig:
    w = r.table(doc, "workers", "workers", WORKERS_KEYS)
    function = r.string(w, "function", "workers", "forward")
    processes = r.integer(w, "processes", "workers", 1)
    distribute = r.string(w, "distribute", "workers", "flow", DISTRIBUTIONS)
    per_packet = r.boolean(w, "per_packet", "workers", False)
    options = w.get("options", {})
    if not isinstance(options, dict):
        raise r.fail("workers.options", f"must be a table ([workers.options]), got {_show(options)}")
    import_timeout = r.number(w, "import_timeout", "workers", DEFAULT_IMPORT_TIMEOUT)
    setup_timeout = r.number(w, "setup_timeout", "workers", DEFAULT_SETUP_TIMEOUT)
    from ixypipe.workers.loader import WorkerLoadError, check_worker

    try:
        check_worker(function, base_dir)       # reads the source, never imports it (no side effects here)
    except WorkerLoadError as exc:
        raise r.fail("workers.function", printable(str(exc), MAX_PATH)) from None
    return WorkersConfig(function, processes, distribute, per_packet, dict(options), import_timeout,
                         setup_timeout, r.line_of("workers.function"))


def check_worker_imports(cfg: PipelineConfig) -> None:
    """Import the worker's module in a child with the file's time limit (loader.probe); ConfigError if that fails.

    ``ixypipe run`` calls this at --check and before anything of a run is
    created: a module that raises or never finishes importing is a bad
    pipeline (exit 2), not a stage that dies or hangs.
    """
    from ixypipe.workers.loader import WorkerLoadError, probe

    w = cfg.workers
    try:
        probe(w.function, cfg.base_dir, w.per_packet, w.import_timeout, cfg.worker_user)
    except WorkerLoadError as exc:
        err = ConfigError(cfg.path, "workers.function", printable(str(exc), MAX_PATH), w.line)
        err.details = exc.details
        raise err from None


def check_plan_fits(cfg: PipelineConfig) -> None:
    """ConfigError unless the stages, rings and pools the file asks for fit the two arenas' region tables.

    Every number may be within its range while their product is not (16 queues
    on each of 32 ports and 64 worker processes want thousands of rings), so
    ``ixypipe run`` plans the pipeline at --check and before it creates
    anything, and says which keys make it too big.
    """
    from ixypipe.layout import ARENA_MAX_REGIONS
    from ixypipe.memory.arena import Arena, ArenaError
    from ixypipe.pipeline.plan import plan_from_config
    from ixypipe.pipeline.supervisor import device_arena_regions, packet_arena_regions

    plan = plan_from_config(cfg)
    for what, regions in (("packet", packet_arena_regions(plan, cfg.buffer_size)),
                          ("device", device_arena_regions(plan))):
        try:
            Arena.size_for(regions)
        except ArenaError:
            raise ConfigError(cfg.path, "workers.processes", f"{len(plan.stages)} stages with {len(plan.rings)} "
                              f"rings and {len(plan.pools)} mempools need {len(regions)} regions of the {what} "
                              f"arena, more than the {ARENA_MAX_REGIONS - 1} it holds; use fewer worker processes "
                              "or ports[].rx_queues / tx_queues") from None


def available_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0))


def _cpus(r: _Reader, doc: dict) -> CpuConfig:
    c = r.table(doc, "cpus", "cpus", CPU_ROLES)
    lists: dict[str, list[int] | None] = {}
    usable = None
    for role in CPU_ROLES:
        key = f"cpus.{role}"
        value = c.get(role)
        if value is None:
            lists[role] = None
            continue
        if not isinstance(value, list) or not value:
            raise r.fail(key, f"must be a non-empty list of CPU ids (e.g. [2, 3]) or left out for automatic "
                              f"placement, got {_show(value)}")
        for i, cpu in enumerate(value):
            if isinstance(cpu, bool) or not isinstance(cpu, int):
                raise r.fail(f"{key}[{i}]", f"must be a CPU id (a whole number), got {_show(cpu)}")
            if cpu in value[:i]:
                raise r.fail(f"{key}[{i}]", f"CPU {cpu} is listed twice")
            usable = usable if usable is not None else available_cpus()
            if cpu not in usable:
                raise r.fail(f"{key}[{i}]", f"CPU {cpu} is not available on this machine; available CPUs: "
                                            f"{', '.join(map(str, usable))}")
        lists[role] = list(value)
    return CpuConfig(**lists)


__all__ = ["ConfigError", "PipelineConfig", "PortConfig", "GeneratorSpec", "SinkSpec", "WorkersConfig",
           "CpuConfig", "StatsConfig", "load_pipeline", "parse_pipeline", "key_lines", "DRIVERS", "RANGES",
           "read_pipeline_file", "check_worker_imports", "check_plan_fits"]
