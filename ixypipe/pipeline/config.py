"""Pipeline files: TOML read with tomllib and validated into frozen dataclasses.

This module reads the pipeline file format (docs/pipeline-file.md) whose
keys, types, defaults, ranges and choices are the rows of pipeline/keys.py
(_Reader.value checks a value as its row says), and runs the checks that go
beyond one key before anything is mapped: the file itself (a regular file of
at most 1 MiB, looked at before it is opened), nesting depth, printable
bounded names and strings, unknown keys (the error lists the allowed ones,
from the table), port names and ``forward_to`` links,
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
from ixypipe.layout import KEYED_BLOCK_MAX, KEYED_SLOT_BYTES, PKTBUF_HEADROOM
from ixypipe.nic.device import PortSpec
from ixypipe.nic.registers import MFS_VLAN_EXTRA, OCTETS_FCS_LEN, rx_frame_limits
from ixypipe.nic.virtio_pci import TRANSPORTS as VIRTIO_TRANSPORTS
from ixypipe.nic.virtio_regs import MAX_QUEUE_PAIRS
from ixypipe.pcapfile import file_kind
from ixypipe.pipeline import keys
from ixypipe.pipeline.keys import (
    DEFAULT_METRICS_ADDRESS,
    DRIVERS,
    MAX_NAME,
    MAX_PATH,
    SIM_DEVICES,
    VHOST_USER_MODES,
)
from ixypipe.sim.payload import Profile, ProfileError
from ixypipe.sim.replay import replayed_length
from ixypipe.sim.shape import SHAPE_FIELDS, FlowShape, ShapeError

if TYPE_CHECKING:
    from ixypipe.sim.world import SimPortConfig

# ---- schema limits --------------------------------------------------------------------------
# Every key's type, default, range and choices are rows of pipeline/keys.py; the names below are drawn
# from that table for the code and tests that use them.
RANGES: dict[str, tuple[float, float]] = keys.ranges()     # every number: key -> (lowest, highest)
CPU_ROLES = keys.names("cpus")
MAX_PORTS = 32                  # [[ports]] tables (DPDK's default RTE_MAX_ETHPORTS)
MAX_FILE_BYTES = 1 << 20        # a pipeline file is a few kB; this bounds what a hostile path can make us read
MAX_DEPTH = 16                  # tables and arrays nested in a pipeline file (the schema needs 4)
NAME_RE = re.compile(rf"[\x20-\x7e]{{1,{MAX_NAME}}}")      # printable ASCII: no escapes, NUL or newlines
PORT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,15}")
PCI_ADDRESS_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
INTERFACE_RE = re.compile(r"[^/\s]{1,15}")     # Linux IFNAMSIZ - 1, no slash or blank

DEFAULT_BATCH_SIZE = keys.default("pipeline.batch_size")
DEFAULT_RING_SIZE = keys.default("pipeline.ring_size")
DEFAULT_BUFFER_SIZE = keys.default("pipeline.buffer_size")
DEFAULT_BUFFERS_PER_QUEUE = keys.default("pipeline.buffers_per_queue")
DEFAULT_DESC_RING = keys.default("ports.rx_ring_size")
DEFAULT_STATS_INTERVAL = keys.default("stats.interval")
DEFAULT_IMPORT_TIMEOUT = keys.default("workers.import_timeout")
DEFAULT_SETUP_TIMEOUT = keys.default("workers.setup_timeout")
DEFAULT_STALL_TIMEOUT = keys.default("pipeline.stall_timeout")
DEFAULT_MAX_RESTARTS = keys.default("pipeline.max_restarts")
DEFAULT_KEYED_TABLES = keys.default("workers.keyed_tables")
DEFAULT_KEYED_SLOTS = keys.default("workers.keyed_slots")


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
    rate_mpps: float = keys.default("ports.generator.rate_mpps")
    flows: int = 4
    count: int = keys.default("ports.generator.count")
    profile: str = keys.default("ports.generator.profile")
    vlan: int | None = None         # 802.1Q VID of every frame
    shape: FlowShape | None = None  # src, dst, sport, dport, protocol / mix, seed (keys.py)
    template: str = ""              # absolute path of a pcap file the flows replay, "" = none


@dataclass(frozen=True)
class SinkSpec:
    """What takes the frames a simulated port transmits (sim ports only)."""
    mode: str = keys.default("ports.sink.mode")
    expect_touch: bool = keys.default("ports.sink.expect_touch")
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
    rx_queues: int = keys.default("ports.rx_queues")
    tx_queues: int = keys.default("ports.tx_queues")
    rx_ring_size: int = keys.default("ports.rx_ring_size")
    tx_ring_size: int = keys.default("ports.tx_ring_size")
    promiscuous: bool = keys.default("ports.promiscuous")
    forward_to: str = ""            # port name; always filled in after validation
    generator: GeneratorSpec | None = None
    sink: SinkSpec | None = None
    pcap_mode: str = keys.default("ports.mode")
    pcap_loop: int = keys.default("ports.loop")
    pcap_rate_mpps: float = keys.default("ports.rate_mpps")
    af_packet_options: dict = field(default_factory=dict)   # qdisc_bypass, fanout_defrag when given
    iommu: str = keys.default("ports.iommu")
    hot_path: str = keys.default("ports.hot_path")
    share: bool = keys.default("ports.share")
    device: str = "82599"           # sim: the software device, "82599" or "virtio" (then driven by the virtio driver)
    transport: str = "auto"         # virtio, sim virtio: "legacy", "modern" or "auto" (a sim device: modern)
    mrg_rxbuf: bool = True          # virtio, sim virtio, vhost-user: negotiate MRG_RXBUF when offered (12-byte header)
    socket: str = ""                # vhost-user: the backend's unix socket (absolute; relative ones from the file)
    vhost_mode: str = "client"      # vhost-user: "client" (the backend listens) or "server" (ixypipe listens)
    connect_timeout: float = keys.CONNECT_TIMEOUT   # vhost-user: seconds to reach the backend when the run starts

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
            options = {"mode": self.vhost_mode, "mrg_rxbuf": self.mrg_rxbuf, "hot_path": self.hot_path,
                       "connect_timeout": self.connect_timeout}
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
                                      count=g.count, profile=g.profile, vlan=g.vlan, shape=g.shape,
                                      template=g.template or None) if g else None,
            sink=SinkConfig(mode=s.mode, expect_touch=s.expect_touch, pcap=s.pcap or None) if s else None)


@dataclass(frozen=True)
class WorkersConfig:
    function: str = keys.default("workers.function")
    processes: int = keys.default("workers.processes")
    distribute: str = keys.default("workers.distribute")
    per_packet: bool = keys.default("workers.per_packet")
    options: dict = field(default_factory=dict)     # [workers.options]: handed to the worker as ctx.options
    import_timeout: float = DEFAULT_IMPORT_TIMEOUT  # seconds the worker's module may take to import
    setup_timeout: float = DEFAULT_SETUP_TIMEOUT    # ... and a worker stage its import and setup() (else: stuck)
    line: int | None = field(default=None, compare=False)   # of workers.function, for errors found later
    keyed_tables: int = DEFAULT_KEYED_TABLES        # keyed tables (batch.count_by) per worker
    keyed_slots: int = DEFAULT_KEYED_SLOTS          # slots per keyed table (a power of two)


@dataclass(frozen=True)
class CpuConfig:
    rx: list[int] | None = None
    workers: list[int] | None = None
    tx: list[int] | None = None
    sim: list[int] | None = None


@dataclass(frozen=True)
class StatsConfig:
    interval: float = DEFAULT_STATS_INTERVAL
    json: bool = keys.default("stats.json")
    metrics_port: int = keys.default("stats.metrics_port")   # the Prometheus endpoint (pipeline/metrics.py), 0 = none
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
    idle: str = keys.default("pipeline.idle")
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

    def value(self, table: dict, name: str, key: str, default: Any = keys.ROW_DEFAULT, lo: int | None = None,
              hi: int | None = None) -> Any:
        """``table[name]`` checked as its row in pipeline/keys.py says (type, range, power of two, choices),
        or the row's default when absent; ``default``, ``lo`` and ``hi`` where this file computes them."""
        k = keys.row(f"{key}.{name}")
        d = k.default if default is keys.ROW_DEFAULT else default
        if k.type == keys.INTEGER:
            return self.integer(table, name, key, d, lo, hi, k.power_of_two)
        if k.type == keys.NUMBER:
            return self.number(table, name, key, d, lo, hi=hi)
        if k.type == keys.BOOLEAN:
            return self.boolean(table, name, key, d)
        if k.type == keys.STRING:
            return self.string(table, name, key, "" if d is None else d, k.choices, k.limit)
        raise TypeError(f"{k.path} is a {k.type}, not a single value")

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
# the keys each table takes, in the order the errors list them (rows of pipeline/keys.py)
PIPELINE_KEYS = keys.names("pipeline")
PORT_COMMON_KEYS = keys.names("ports")
PORT_DRIVER_KEYS = {driver: keys.names("ports", driver) for driver in DRIVERS}
GENERATOR_KEYS = keys.names("ports.generator")
SINK_KEYS = keys.names("ports.sink")
WORKERS_KEYS = keys.names("workers")
STATS_KEYS = keys.names("stats")
TOP_KEYS = keys.names("")


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
    name = r.value(pl, "name", "pipeline", default_name)
    if not NAME_RE.fullmatch(name):
        raise r.fail("pipeline.name", f"must be 1 to {MAX_NAME} printable ASCII characters (no control "
                                      f"characters or escapes), got {_show(name)}")
    batch_size = r.value(pl, "batch_size", "pipeline")
    ring_size = r.value(pl, "ring_size", "pipeline")
    if ring_size < batch_size:
        raise r.fail("pipeline.ring_size", f"must hold at least one batch (batch_size {batch_size}), "
                                           f"got {ring_size}")
    buffer_size = r.value(pl, "buffer_size", "pipeline")
    hugepages = r.value(pl, "hugepages", "pipeline")
    on_stage_death = r.value(pl, "on_stage_death", "pipeline")
    idle = r.value(pl, "idle", "pipeline")
    worker_user = r.value(pl, "worker_user", "pipeline")
    why = privilege.check_switch(worker_user) if worker_user or "worker_user" not in pl else "must not be empty"
    if why:
        raise r.fail("pipeline.worker_user", f"{why}; give the user name or uid the workers run as "
                                             f"(default {privilege.DEFAULT_WORKER_USER} when run as root)")
    stall_timeout = r.value(pl, "stall_timeout", "pipeline")
    max_restarts = r.value(pl, "max_restarts", "pipeline")

    ports = _ports(r, doc, buffer_size, base_dir)

    per_queue_needed, why = _buffers_needed(ports, batch_size)
    bpq = r.value(pl, "buffers_per_queue", "pipeline", max(DEFAULT_BUFFERS_PER_QUEUE, per_queue_needed))
    if bpq < per_queue_needed:
        raise r.fail("pipeline.buffers_per_queue",
                     f"must be at least {per_queue_needed} ({why}) so a full RX ring, a full TX ring and "
                     f"two batches in flight never empty the mempool, got {bpq}")
    _check_memory(r, ports, bpq, buffer_size)

    workers = _workers(r, doc, base_dir)
    cpus = _cpus(r, doc)

    st = r.table(doc, "stats", "stats", STATS_KEYS)
    interval = r.value(pl, "stats_interval", "pipeline")
    if "interval" in st:
        if "stats_interval" in pl and r.value(st, "interval", "stats") != interval:
            raise r.fail("stats.interval", f"disagrees with pipeline.stats_interval ({interval:g}); "
                                           "give the interval once")
        interval = r.value(st, "interval", "stats")
    stats = StatsConfig(interval, r.value(st, "json", "stats"), r.value(st, "metrics_port", "stats"),
                        r.value(st, "metrics_address", "stats"))

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
        name = r.value(p, "name", key)
        if not PORT_NAME_RE.fullmatch(name):
            raise r.fail(f"{key}.name", f"must be 1 to 15 of A-Z a-z 0-9 _ -, got {_show(name)}")
        if name in first_seen:
            raise r.fail(f"{key}.name", f"duplicate port name {name!r} (already ports[{first_seen[name]}]); "
                                        "port names must be unique")
        first_seen[name] = i
        if "driver" not in p:
            raise r.fail(key, f"missing required key driver (one of {_choices(DRIVERS)})")
        driver = r.value(p, "driver", key)
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
    rx_queues = r.value(p, "rx_queues", key)
    tx_queues = r.value(p, "tx_queues", key)
    rx_ring = r.value(p, "rx_ring_size", key)
    tx_ring = r.value(p, "tx_ring_size", key)
    promiscuous = r.value(p, "promiscuous", key)
    forward_to = r.value(p, "forward_to", key)
    fields: dict[str, Any] = {}
    if driver in ("ixgbe", "sim", "virtio"):
        if driver != "sim" and "pci" not in p:
            raise r.fail(key, f"missing required key pci for an {driver!r} port (its PCI address, "
                              "\"DDDD:BB:DD.F\", e.g. \"0000:03:00.0\")")
        pci = r.value(p, "pci", key)
        if pci and not PCI_ADDRESS_RE.fullmatch(pci):
            raise r.fail(f"{key}.pci", f"must be a PCI address \"DDDD:BB:DD.F\" (hex), e.g. \"0000:03:00.0\", "
                                       f"got {_show(pci)}")
        fields["pci"] = pci.lower()
        if driver != "virtio":
            fields["iommu"] = r.value(p, "iommu", key)
        fields["hot_path"] = r.value(p, "hot_path", key)
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
        fields["share"] = r.value(p, "share", key)
    if driver == "sim":
        fields["generator"] = _generator(r, p, f"{key}.generator", buffer_size, base_dir)
        fields["sink"] = _sink(r, p, f"{key}.sink", base_dir)
    elif driver == "af_packet":
        if "interface" not in p:
            raise r.fail(key, "missing required key interface for an 'af_packet' port (a kernel "
                              "interface name, e.g. \"veth0\")")
        interface = r.value(p, "interface", key)
        if not INTERFACE_RE.fullmatch(interface):
            raise r.fail(f"{key}.interface", f"must be an interface name of 1 to 15 characters without '/' "
                                             f"or blanks, got {_show(interface)}")
        fields["interface"] = interface
        fields["af_packet_options"] = {k: r.value(p, k, key, False) for k in ("qdisc_bypass", "fanout_defrag")
                                       if k in p}
        fields["hot_path"] = r.value(p, "hot_path", key)
    elif driver == "pcap":
        if "path" not in p:
            raise r.fail(key, "missing required key path for a 'pcap' port (the pcap file, relative to "
                              "the pipeline file's directory)")
        mode = r.value(p, "mode", key)
        fields["path"] = _file(r, p, "path", key, base_dir, must_exist=mode == "read")
        if mode == "read":
            _capture(r, f"{key}.path", fields["path"], read=True)
        fields["pcap_mode"] = mode
        fields["pcap_loop"] = r.value(p, "loop", key)
        fields["pcap_rate_mpps"] = r.value(p, "rate_mpps", key)
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
    """A vhost-user port: its socket (the backend may create it later), client or server mode, one queue pair."""
    if "socket" not in p:
        raise r.fail(key, "missing required key socket for a 'vhost-user' port (the backend's unix socket, e.g. "
                          "\"/tmp/vhost-user0.sock\")")
    raw = r.string(p, "socket", key, "")
    if not raw:
        raise r.fail(f"{key}.socket", "must be a socket path, got an empty string")
    fields["socket"] = str(Path(raw) if Path(raw).is_absolute() else base_dir / raw)
    fields["vhost_mode"] = r.string(p, "mode", key, "client", VHOST_USER_MODES)
    fields["connect_timeout"] = r.value(p, "connect_timeout", key, keys.CONNECT_TIMEOUT)
    fields["mrg_rxbuf"] = r.boolean(p, "mrg_rxbuf", key, True)
    fields["hot_path"] = r.value(p, "hot_path", key)
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


def _generator(r: _Reader, p: dict, key: str, buffer_size: int, base_dir: Path) -> GeneratorSpec | None:
    g = _subtable(r, p, "generator", key, GENERATOR_KEYS)
    if g is None:
        return None
    name = r.value(g, "profile", key)
    vlan = r.value(g, "vlan", key) if "vlan" in g else None
    profile = Profile(name, vlan)
    shape, template, frames = _generator_shape(r, g, key, profile, base_dir)
    least = shape.min_size(profile) if shape.given and not profile.runt else profile.min_size
    size = r.value(g, "packet_size", key, max(least, profile.default_size), least, profile.max_size)
    flows = r.value(g, "flows", key, len(frames) if frames else profile.default_flows or 4)
    try:
        sizes = (tuple(replayed_length(len(f)) for f in frames) if frames else
                 profile.sizes(size, buffer_size - PKTBUF_HEADROOM, least))
        if frames and max(sizes) > buffer_size - PKTBUF_HEADROOM:
            raise ProfileError(f"template frames with the record appended are up to {max(sizes)} bytes, more "
                               f"than a packet buffer holds ({buffer_size - PKTBUF_HEADROOM})")
    except ProfileError as exc:
        raise r.fail(f"{key}.template" if frames else f"{key}.packet_size",
                     f"{exc} ([pipeline] buffer_size = {buffer_size})") from None
    # the generator feeds a software 82599, whose driver sets a max frame size that keeps every frame in
    # a buffer (registers.rx_frame_limits): it would drop longer ones as too_long, every one of them
    mfs = rx_frame_limits(buffer_size - PKTBUF_HEADROOM)[1]
    longest = mfs - OCTETS_FCS_LEN + (MFS_VLAN_EXTRA if profile.tag_len else 0)
    if max(sizes) > longest:
        raise r.fail(f"{key}.template" if frames else f"{key}.packet_size",
                     f"packet size {max(sizes)} is longer than the port takes: with "
                     f"{buffer_size}-byte buffers its 82599 driver sets a max frame size of {mfs} bytes with FCS "
                     f"({mfs - OCTETS_FCS_LEN} without, {mfs - OCTETS_FCS_LEN + MFS_VLAN_EXTRA} with an 802.1Q "
                     f"tag) and the NIC drops longer frames; a larger buffer_size makes room ([pipeline] "
                     f"buffer_size = {buffer_size})")
    try:
        profile.check_flows(flows)
    except ProfileError as exc:
        raise r.fail(f"{key}.flows", str(exc)) from None
    return GeneratorSpec(size, r.value(g, "rate_mpps", key), flows, r.value(g, "count", key), name, profile.vlan,
                         shape if shape.given else None, template)


def _generator_shape(r: _Reader, g: dict, key: str, profile: Profile, base_dir: Path):
    """(FlowShape, template path, template frames) of a [ports.generator] table (keys.py's shaping rows)."""
    from ixypipe.sim.replay import ReplayError, template_frames
    from ixypipe.sim.traffic import MAX_FLOWS

    try:
        seed = r.value(g, "seed", key, 0)
        shape = FlowShape.parse(**{k: g[k] for k in SHAPE_FIELDS if k in g}, seed=seed)
        shape.check_profile(profile)
    except ShapeError as exc:
        raise r.fail(f"{key}.{exc.field}", str(exc)) from None
    if "template" not in g:
        return shape, "", []
    clash = [k for k in ("packet_size", "profile", "vlan", "protocol", "mix") if k in g]
    if clash:
        raise r.fail(f"{key}.{clash[0]}", "a template's frames keep their own sizes, tags and protocols; with "
                                          "template give rate_mpps, flows, count, src, dst, sport, dport, seed")
    path = _file(r, g, "template", key, base_dir, must_exist=True)
    try:
        frames = template_frames(path, MAX_FLOWS)
    except ReplayError as exc:
        raise r.fail(f"{key}.template", printable(str(exc), MAX_PATH)) from None
    return shape, path, frames


def _sink(r: _Reader, p: dict, key: str, base_dir: Path) -> SinkSpec | None:
    s = _subtable(r, p, "sink", key, SINK_KEYS)
    if s is None:
        return None
    pcap = _file(r, s, "pcap", key, base_dir, must_exist=False) if s.get("pcap", "") != "" else ""
    if "verify" in s and "mode" in s:
        raise r.fail(f"{key}.verify", "give mode or the older verify = true/false, not both")
    if "verify" in s:           # the older spelling: verify = false is a counting sink
        mode = "verify" if r.value(s, "verify", key) else "count"
    else:
        mode = r.value(s, "mode", key)
    expect_touch = r.value(s, "expect_touch", key)
    if expect_touch and mode != "verify":
        raise r.fail(f"{key}.expect_touch", f"needs mode = 'verify' (a {mode!r} sink does not look inside "
                                            "frames), got mode = " + repr(mode))
    return SinkSpec(mode, expect_touch, pcap)


def _workers(r: _Reader, doc: dict, base_dir: Path) -> WorkersConfig:
    w = r.table(doc, "workers", "workers", WORKERS_KEYS)
    function = r.value(w, "function", "workers")
    processes = r.value(w, "processes", "workers")
    distribute = r.value(w, "distribute", "workers")
    per_packet = r.value(w, "per_packet", "workers")
    options = w.get("options", {})
    if not isinstance(options, dict):
        raise r.fail("workers.options", f"must be a table ([workers.options]), got {_show(options)}")
    import_timeout = r.value(w, "import_timeout", "workers")
    setup_timeout = r.value(w, "setup_timeout", "workers")
    from ixypipe.workers.loader import WorkerLoadError, check_worker

    try:
        check_worker(function, base_dir)       # reads the source, never imports it (no side effects here)
    except WorkerLoadError as exc:
        raise r.fail("workers.function", printable(str(exc), MAX_PATH)) from None
    keyed_tables = r.value(w, "keyed_tables", "workers")
    keyed_slots = r.value(w, "keyed_slots", "workers")
    if keyed_tables * keyed_slots * KEYED_SLOT_BYTES > KEYED_BLOCK_MAX:
        raise r.fail("workers.keyed_slots", f"{keyed_tables} tables (workers.keyed_tables) of {keyed_slots} slots of "
                                            f"{KEYED_SLOT_BYTES} bytes take {keyed_tables * keyed_slots * KEYED_SLOT_BYTES >> 20:,} "
                                            f"MiB per worker, more than the {KEYED_BLOCK_MAX >> 20:,} MiB allowed: "
                                            "fewer tables or slots")
    return WorkersConfig(function, processes, distribute, per_packet, dict(options), import_timeout,
                         setup_timeout, r.line_of("workers.function"), keyed_tables, keyed_slots)


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
    check_keyed_fits(cfg, plan)


def check_keyed_fits(cfg: PipelineConfig, plan, shm_free=None) -> None:
    """ConfigError when the workers' keyed tables (pipeline/keyedstate.py) cannot fit /dev/shm, where the
    packet arena's control file lives (``shm_free``: its free bytes; read from the file system if None)."""
    from ixypipe.memory.arena import SHM_DIR
    from ixypipe.pipeline.keyedstate import arena_regions

    need = sum(r.size for r in arena_regions(cfg.workers.processes, plan.keyed_tables, plan.keyed_slots))
    if not need:
        return
    if shm_free is None:
        st = os.statvfs(SHM_DIR)
        shm_free = st.f_bavail * st.f_frsize
    if need > shm_free:
        raise ConfigError(cfg.path, "workers.keyed_slots",
                          f"{cfg.workers.processes} workers x {plan.keyed_tables} keyed tables (workers.keyed_tables) "
                          f"of {plan.keyed_slots} slots need {need >> 20:,} MiB of {SHM_DIR}, which has "
                          f"{shm_free >> 20:,} MiB free: fewer tables or slots (keyed_tables = 0: none)")


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
