"""Pipeline files: TOML read with tomllib and validated into frozen dataclasses.

This module owns the pipeline file format (README "Pipeline files"): its
tables, keys, defaults and limits, and the checks that run before anything
is mapped: types and ranges, unknown keys (the error lists the allowed ones),
port names and ``forward_to`` links, driver-specific keys, mempool sizing,
CPU ids against this machine, and the worker function (imported and checked
here, so a typo is caught at once).  Every problem is a ConfigError whose
text names the file, the key path (``ports[1].driver``), the line where it
can be found, and what is allowed.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ixypipe.layout import MIN_BUF_SIZE, PKTBUF_HEADROOM
from ixypipe.nic.device import PortSpec
from ixypipe.nic.vfio import IOMMU_MODES
from ixypipe.sim.payload import SIM_MAX_FRAME, SIM_MIN_FRAME
from ixypipe.sim.traffic import SINK_MODES

if TYPE_CHECKING:
    from ixypipe.sim.world import SimPortConfig

# ---- schema limits --------------------------------------------------------------------------
DRIVERS = ("sim", "ixgbe", "af_packet", "pcap")
HUGEPAGE_MODES = ("auto", "require", "never")
STAGE_DEATH_POLICIES = ("stop", "restart")
# how an idle stage waits: auto = spin on CPUs the pipeline has to itself (isolated), wake otherwise
IDLE_MODES = ("auto", "spin", "wake", "nap")
DISTRIBUTIONS = ("flow", "round-robin")
PCAP_MODES = ("read", "write")
CPU_ROLES = ("rx", "workers", "tx", "sim")
BATCH_SIZE_RANGE = (1, 4096)
RING_SIZE_RANGE = (64, 65536)             # SPSC ring capacity, power of two
BUFFER_SIZE_RANGE = (MIN_BUF_SIZE, 16384)  # packet buffer, power of two (64 bytes of it are header)
BUFFERS_PER_QUEUE_MAX = 1 << 20
QUEUES_RANGE = (1, 16)
DESC_RING_RANGE = (8, 4096)               # descriptors per NIC ring, power of two
PROCESSES_RANGE = (1, 64)
FLOWS_RANGE = (1, 65535)                  # the simulator's generator numbers flows in a u16
PORT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,15}")
PCI_ADDRESS_RE = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
INTERFACE_RE = re.compile(r"[^/\s]{1,15}")     # Linux IFNAMSIZ - 1, no slash or blank

DEFAULT_BATCH_SIZE = 32
DEFAULT_RING_SIZE = 1024
DEFAULT_BUFFER_SIZE = 2048
DEFAULT_BUFFERS_PER_QUEUE = 4096
DEFAULT_DESC_RING = 512
DEFAULT_STATS_INTERVAL = 1.0
STALL_TIMEOUT_RANGE = (0.5, 600.0)        # seconds; well above the longest wait of an idle stage (0.1 s)
DEFAULT_STALL_TIMEOUT = 2.0
MAX_RESTARTS_RANGE = (0, 1000)            # worker restarts per stage within a minute
DEFAULT_MAX_RESTARTS = 5


class ConfigError(ValueError):
    """A pipeline file cannot be used; str() names the file, key, line and what is allowed."""

    def __init__(self, file: str, key: str, message: str, line: int | None = None):
        self.file, self.key, self.line, self.message = file, key, line, message
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

    def to_spec(self) -> PortSpec:
        """The driver's view of this port: address = pci / interface / path, extras in options."""
        options: dict[str, Any] = {}
        if self.driver == "pcap":
            options = {"mode": self.pcap_mode, "loop": self.pcap_loop, "rate_mpps": self.pcap_rate_mpps}
        elif self.driver == "af_packet":
            options = dict(self.af_packet_options)
        elif self.driver in ("ixgbe", "sim"):
            options = {"iommu": self.iommu}
        address = {"ixgbe": self.pci, "sim": self.pci, "af_packet": self.interface, "pcap": self.path}[self.driver]
        return PortSpec(self.name, self.driver, address, self.rx_queues, self.tx_queues, self.rx_ring_size,
                        self.tx_ring_size, self.promiscuous, options)

    def to_sim_config(self) -> SimPortConfig:
        """The simulator's view of this ``sim`` port: its wire's generator and sink."""
        from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SinkConfig

        g, s = self.generator, self.sink
        return SimPortConfig(
            name=self.name, pci_address=self.pci or None, iommu=self.iommu != "none",
            generator=GeneratorConfig(packet_size=g.packet_size, rate_pps=g.rate_mpps * 1e6, flows=g.flows,
                                      count=g.count) if g else None,
            sink=SinkConfig(mode=s.mode, expect_touch=s.expect_touch, pcap=s.pcap or None) if s else None)


@dataclass(frozen=True)
class WorkersConfig:
    function: str = "touch"
    processes: int = 1
    distribute: str = "flow"
    per_packet: bool = False
    options: dict = field(default_factory=dict)     # [workers.options]: handed to the worker as ctx.options


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
        full = f"{key}.{name}"
        value = table.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(full, f"must be a whole number{_range(lo, hi)}, got {_show(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi) or (
                power_of_two and (value <= 0 or value & (value - 1))):
            what = "a power of two" if power_of_two else "a whole number"
            raise self.fail(full, f"must be {what}{_range(lo, hi)}, got {value}")
        return value

    def number(self, table: dict, name: str, key: str, default: float, lo: float, lo_open: bool = False) -> float:
        full = f"{key}.{name}"
        value = table.get(name, default)
        bound = f"> {lo:g}" if lo_open else f">= {lo:g}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(full, f"must be a number {bound}, got {_show(value)}")
        if value != value or value in (float("inf"), float("-inf")) or value < lo or (lo_open and value == lo):
            raise self.fail(full, f"must be a number {bound}, got {value!r}")
        return float(value)

    def boolean(self, table: dict, name: str, key: str, default: bool) -> bool:
        value = table.get(name, default)
        if not isinstance(value, bool):
            raise self.fail(f"{key}.{name}", f"must be true or false, got {_show(value)}")
        return value

    def string(self, table: dict, name: str, key: str, default: str, choices: tuple[str, ...] = ()) -> str:
        full = f"{key}.{name}"
        value = table.get(name, default)
        if choices and value not in choices:
            raise self.fail(full, f"must be one of {_choices(choices)}, got {_show(value)}")
        if not isinstance(value, str):
            raise self.fail(full, f"must be a string, got {_show(value)}")
        return value


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" from {lo} to {hi}"
    if lo is not None:
        return f" >= {lo}"
    return ""


# ---- the tables -----------------------------------------------------------------------------
PIPELINE_KEYS = ("name", "batch_size", "ring_size", "buffer_size", "buffers_per_queue", "hugepages",
                 "on_stage_death", "stats_interval", "idle", "stall_timeout", "max_restarts")
PORT_COMMON_KEYS = ("name", "driver", "rx_queues", "tx_queues", "rx_ring_size", "tx_ring_size", "promiscuous",
                    "forward_to")
PORT_DRIVER_KEYS = {
    "sim": ("pci", "generator", "sink", "iommu"),
    "ixgbe": ("pci", "iommu"),
    "af_packet": ("interface", "qdisc_bypass", "fanout_defrag"),
    "pcap": ("path", "mode", "loop", "rate_mpps"),
}
GENERATOR_KEYS = ("packet_size", "rate_mpps", "flows", "count")
SINK_KEYS = ("mode", "expect_touch", "pcap", "verify")
WORKERS_KEYS = ("function", "processes", "distribute", "per_packet", "options")
STATS_KEYS = ("interval", "json")
TOP_KEYS = ("pipeline", "ports", "workers", "cpus", "stats")


def load_pipeline(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a pipeline file."""
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, "", "no such pipeline file") from None
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read the pipeline file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text (byte {exc.start}): a pipeline file is TOML") from None
    return parse_pipeline(text, path)


def parse_pipeline(text: str, path: str | os.PathLike) -> PipelineConfig:
    """Validate the TOML ``text`` of the pipeline file at ``path`` (relative paths resolve against its directory)."""
    file = str(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
    r = _Reader(file, text)
    r.only(doc, "", TOP_KEYS, " (top-level tables)")
    base_dir = Path(path).resolve().parent

    pl = r.table(doc, "pipeline", "pipeline", PIPELINE_KEYS)
    name = r.string(pl, "name", "pipeline", Path(path).stem)
    if not name:
        raise r.fail("pipeline.name", "must not be empty")
    batch_size = r.integer(pl, "batch_size", "pipeline", DEFAULT_BATCH_SIZE, *BATCH_SIZE_RANGE)
    ring_size = r.integer(pl, "ring_size", "pipeline", DEFAULT_RING_SIZE, *RING_SIZE_RANGE, power_of_two=True)
    if ring_size < batch_size:
        raise r.fail("pipeline.ring_size", f"must hold at least one batch (batch_size {batch_size}), "
                                           f"got {ring_size}")
    buffer_size = r.integer(pl, "buffer_size", "pipeline", DEFAULT_BUFFER_SIZE, *BUFFER_SIZE_RANGE,
                            power_of_two=True)
    hugepages = r.string(pl, "hugepages", "pipeline", "auto", HUGEPAGE_MODES)
    on_stage_death = r.string(pl, "on_stage_death", "pipeline", "stop", STAGE_DEATH_POLICIES)
    idle = r.string(pl, "idle", "pipeline", "auto", IDLE_MODES)
    stall_timeout = r.number(pl, "stall_timeout", "pipeline", DEFAULT_STALL_TIMEOUT, 0.0, lo_open=True)
    if not STALL_TIMEOUT_RANGE[0] <= stall_timeout <= STALL_TIMEOUT_RANGE[1]:
        raise r.fail("pipeline.stall_timeout", f"must be a number from {STALL_TIMEOUT_RANGE[0]:g} to "
                                               f"{STALL_TIMEOUT_RANGE[1]:g} (seconds), got {stall_timeout:g}")
    max_restarts = r.integer(pl, "max_restarts", "pipeline", DEFAULT_MAX_RESTARTS, *MAX_RESTARTS_RANGE)

    ports = _ports(r, doc, buffer_size, base_dir)

    per_queue_needed, why = _buffers_needed(ports, batch_size)
    bpq = r.integer(pl, "buffers_per_queue", "pipeline", max(DEFAULT_BUFFERS_PER_QUEUE, per_queue_needed), 1,
                    BUFFERS_PER_QUEUE_MAX)
    if bpq < per_queue_needed:
        raise r.fail("pipeline.buffers_per_queue",
                     f"must be at least {per_queue_needed} ({why}) so a full RX ring, a full TX ring and "
                     f"two batches in flight never empty the mempool, got {bpq}")

    workers = _workers(r, doc, base_dir)
    cpus = _cpus(r, doc)

    st = r.table(doc, "stats", "stats", STATS_KEYS)
    interval = r.number(pl, "stats_interval", "pipeline", DEFAULT_STATS_INTERVAL, 0.0, lo_open=True)
    if "interval" in st:
        if "stats_interval" in pl and r.number(st, "interval", "stats", 1.0, 0.0, lo_open=True) != interval:
            raise r.fail("stats.interval", f"disagrees with pipeline.stats_interval ({interval:g}); "
                                           "give the interval once")
        interval = r.number(st, "interval", "stats", DEFAULT_STATS_INTERVAL, 0.0, lo_open=True)
    stats = StatsConfig(interval, r.boolean(st, "json", "stats", False))

    return PipelineConfig(file, name, batch_size, ring_size, buffer_size, bpq, hugepages, on_stage_death,
                          ports, workers, cpus, stats, idle, stall_timeout, max_restarts)


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
    ports: list[PortConfig] = []
    first_seen: dict[str, int] = {}
    for i, p in enumerate(raw):
        key = f"ports[{i}]"
        if "name" not in p:
            raise r.fail(key, "missing required key name (the port's name, [A-Za-z0-9_-]{1,15})")
        name = r.string(p, "name", key, "")
        if not PORT_NAME_RE.fullmatch(name):
            raise r.fail(f"{key}.name", f"must be 1 to 15 of A-Z a-z 0-9 _ -, got {name!r}")
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
            raise r.fail(key, f"must name a port of this file, one of {_choices(names)}, got {target!r}")
        resolved.append(_replace(p, forward_to=target))
    return resolved


def _replace(p: PortConfig, **changes) -> PortConfig:
    from dataclasses import replace
    return replace(p, **changes)


def _port(r: _Reader, p: dict, key: str, name: str, driver: str, buffer_size: int, base_dir: Path) -> PortConfig:
    rx_queues = r.integer(p, "rx_queues", key, 1, *QUEUES_RANGE)
    tx_queues = r.integer(p, "tx_queues", key, 1, *QUEUES_RANGE)
    rx_ring = r.integer(p, "rx_ring_size", key, DEFAULT_DESC_RING, *DESC_RING_RANGE, power_of_two=True)
    tx_ring = r.integer(p, "tx_ring_size", key, DEFAULT_DESC_RING, *DESC_RING_RANGE, power_of_two=True)
    promiscuous = r.boolean(p, "promiscuous", key, True)
    forward_to = r.string(p, "forward_to", key, "")
    fields: dict[str, Any] = {}
    if driver in ("ixgbe", "sim"):
        if driver == "ixgbe" and "pci" not in p:
            raise r.fail(key, "missing required key pci for an 'ixgbe' port (its PCI address, "
                              "\"DDDD:BB:DD.F\", e.g. \"0000:03:00.0\")")
        pci = r.string(p, "pci", key, "")
        if pci and not PCI_ADDRESS_RE.fullmatch(pci):
            raise r.fail(f"{key}.pci", f"must be a PCI address \"DDDD:BB:DD.F\" (hex), e.g. \"0000:03:00.0\", "
                                       f"got {pci!r}")
        fields["pci"] = pci.lower()
        fields["iommu"] = r.string(p, "iommu", key, "none", IOMMU_MODES)
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
                                             f"or blanks, got {interface!r}")
        fields["interface"] = interface
        fields["af_packet_options"] = {k: r.boolean(p, k, key, False) for k in ("qdisc_bypass", "fanout_defrag")
                                       if k in p}
    elif driver == "pcap":
        if "path" not in p:
            raise r.fail(key, "missing required key path for a 'pcap' port (the pcap file, relative to "
                              "the pipeline file's directory)")
        mode = r.string(p, "mode", key, "read", PCAP_MODES)
        fields["path"] = _file(r, p, "path", key, base_dir, must_exist=mode == "read")
        fields["pcap_mode"] = mode
        fields["pcap_loop"] = r.integer(p, "loop", key, 1, 0)
        fields["pcap_rate_mpps"] = r.number(p, "rate_mpps", key, 0.0, 0.0)
        if rx_queues != 1 or tx_queues != 1:
            bad = "rx_queues" if rx_queues != 1 else "tx_queues"
            raise r.fail(f"{key}.{bad}", f"a 'pcap' port has exactly one RX and one TX queue, "
                                         f"got {rx_queues if bad == 'rx_queues' else tx_queues}")
    return PortConfig(name, driver, rx_queues=rx_queues, tx_queues=tx_queues, rx_ring_size=rx_ring,
                      tx_ring_size=tx_ring, promiscuous=promiscuous, forward_to=forward_to, **fields)


def _file(r: _Reader, table: dict, name: str, key: str, base_dir: Path, must_exist: bool) -> str:
    raw = r.string(table, name, key, "")
    if not raw:
        raise r.fail(f"{key}.{name}", "must be a file path, got an empty string")
    path = Path(raw) if Path(raw).is_absolute() else base_dir / raw
    if must_exist and not path.is_file():
        raise r.fail(f"{key}.{name}", f"no such file {str(path)!r} (relative paths start at {str(base_dir)!r})")
    if not must_exist and not path.parent.is_dir():
        raise r.fail(f"{key}.{name}", f"directory {str(path.parent)!r} does not exist")
    return str(path)


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
    biggest = min(SIM_MAX_FRAME, buffer_size - PKTBUF_HEADROOM)
    size = r.integer(g, "packet_size", key, 60, SIM_MIN_FRAME, biggest)
    return GeneratorSpec(size, r.number(g, "rate_mpps", key, 0.0, 0.0), r.integer(g, "flows", key, 4, *FLOWS_RANGE),
                         r.integer(g, "count", key, 0, 0))


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
    function = r.string(w, "function", "workers", "touch")
    processes = r.integer(w, "processes", "workers", 1, *PROCESSES_RANGE)
    distribute = r.string(w, "distribute", "workers", "flow", DISTRIBUTIONS)
    per_packet = r.boolean(w, "per_packet", "workers", False)
    options = w.get("options", {})
    if not isinstance(options, dict):
        raise r.fail("workers.options", f"must be a table ([workers.options]), got {_show(options)}")
    from ixypipe.workers.loader import WorkerLoadError, check_worker

    try:
        check_worker(function, base_dir)       # reads the source, never imports it (no side effects here)
    except WorkerLoadError as exc:
        raise r.fail("workers.function", str(exc)) from None
    return WorkersConfig(function, processes, distribute, per_packet, dict(options))


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
            usable = usable if usable is not None else available_cpus()
            if cpu not in usable:
                raise r.fail(f"{key}[{i}]", f"CPU {cpu} is not available on this machine; available CPUs: "
                                            f"{', '.join(map(str, usable))}")
        lists[role] = list(value)
    return CpuConfig(**lists)


__all__ = ["ConfigError", "PipelineConfig", "PortConfig", "GeneratorSpec", "SinkSpec", "WorkersConfig",
           "CpuConfig", "StatsConfig", "load_pipeline", "parse_pipeline", "key_lines", "DRIVERS"]
