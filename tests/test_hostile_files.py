"""A generated corpus of hostile pipeline files: each one is exit 2 with a message naming the key or the file's
problem, no traceback, no raw control characters, no hang, nothing left behind.

The corpus is built here from mutations of pipelines/fwd.toml: every numeric key of config.RANGES beyond
each end and of the wrong type, odd and huge names, control characters in strings, unknown keys in every
table, wrong structures, deep nesting, broken TOML and binary garbage, files that are not regular files
(FIFO, /dev/zero, directories, symlink loops), colliding PCI addresses, unusable output files, and worker
modules that raise or never finish importing.  Every case runs through ``ixypipe run --check`` in-process
(click's CliRunner, so the corpus stays cheap), and a sample through a real ``python -m ixypipe run``, with
and without --check, whose leftovers (arena files, processes) are looked for afterwards.
"""

from __future__ import annotations

import copy
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.pcapfile import PcapWriter
from ixypipe.pipeline.config import MAX_DEPTH, MAX_FILE_BYTES, MAX_NAME, RANGES
from tests.support.runs import IXYPIPE, REPO, leftovers
from tests.support.tomltext import to_toml

FWD = REPO / "pipelines" / "fwd.toml"
BASE = tomllib.loads(FWD.read_text())
IN_PROCESS_CEILING = 60          # seconds one --check may take in-process before the case fails (a hang)
SUBPROCESS_CEILING = 120         # seconds for a real `ixypipe run` on a busy machine


@dataclass(frozen=True)
class Case:
    id: str
    expect: str                         # a substring of the error line: the key path or the file's problem
    make: Callable[[Path], str]         # writes the case into the directory, returns the path to run
    also: tuple[str, ...] = ()          # more substrings (e.g. both port names)


CASES: list[Case] = []


def doc() -> dict:
    return copy.deepcopy(BASE)


def text_case(id: str, expect: str, text: str | bytes | Callable[[Path], str | bytes], also=()) -> None:
    def make(d: Path) -> str:
        body = text(d) if callable(text) else text
        path = d / f"{id}.toml"
        path.write_bytes(body.encode() if isinstance(body, str) else body)
        return str(path)
    CASES.append(Case(id, expect, make, tuple(also)))


def doc_case(id: str, expect: str, change: Callable[[dict, Path], None], also=()) -> None:
    def text(d: Path) -> str:
        document = doc()
        change(document, d)
        return to_toml(document)
    text_case(id, expect, text, also)


def path_case(id: str, expect: str, make: Callable[[Path], str]) -> None:
    CASES.append(Case(id, expect, make))


def input_pcap(d: Path) -> str:
    """A valid one-packet pcap file (so only the key under test is wrong)."""
    path = d / "in.pcap"
    if not path.exists():
        with PcapWriter(path) as w:
            w.write(bytes(range(60)))
    return str(path)


# ---- every number of RANGES: beyond each end, and of the wrong type -----------------------------------
def number_key(key: str) -> str:
    """The key path an error names for RANGES' ``key`` set in fwd.toml (ports[1] is a sim port, ports[0] pcap)."""
    parts = key.split(".")
    if parts[0] != "ports":
        return key
    return f"ports[0].{parts[1]}" if parts[1] in ("loop", "rate_mpps") else f"ports[1].{'.'.join(parts[1:])}"


def set_number(document: dict, key: str, value, d: Path) -> None:
    parts = key.split(".")
    if parts[0] == "ports":
        if parts[1] == "generator":
            document["ports"][1]["generator"][parts[2]] = value
        elif parts[1] in ("loop", "rate_mpps"):       # a pcap port's keys
            document["ports"][0] = {"name": "p0", "driver": "pcap", "path": input_pcap(d), "forward_to": "p1",
                                    parts[1]: value}
        else:
            document["ports"][1][parts[1]] = value
    else:
        document.setdefault(parts[0], {})[parts[1]] = value


def out_of_range(lo, hi) -> list:
    if isinstance(lo, float) or isinstance(hi, float):
        below = [lo / 1e9 if lo > 0 else -1e-9, -1e300] + ([0.0] if lo > 0 else [])
        return below + [hi * 1e6, 1e300, float("nan"), float("inf"), float("-inf")]
    return [lo - 1, hi + 1, 2**63 - 1, -(2**63), 1.5]


WRONG_TYPES = ["12", True, [1], {"a": 1}]

for _key, (_lo, _hi) in RANGES.items():
    for _n, _value in enumerate(out_of_range(_lo, _hi) + WRONG_TYPES):
        doc_case(f"number-{_key}-{_n}", f": {number_key(_key)} (line", lambda document, d, k=_key, v=_value:
                 set_number(document, k, v, d))

# ---- names and strings ------------------------------------------------------------------------------------
ODD_STRINGS = {"empty": "", "long": "x" * (MAX_NAME + 1), "huge": "n" * 300_000, "ansi": "\x1b[31mred\x1b[0m",
               "nul": "a\x00b", "newline": "two\nlines", "tab": "t\tab", "del": "x\x7f", "accent": "naïve",
               "bidi": "\u202eevil", "clear": "\x1b[2J\x1b[H", "bell": "\x07"}
for _n, _value in ODD_STRINGS.items():      # a pipeline name is printable ASCII; a port name even less
    doc_case(f"name-pipeline-{_n}", ": pipeline.name", lambda document, d, v=_value:
             document["pipeline"].__setitem__("name", v))
    doc_case(f"name-port-{_n}", ": ports[0].name", lambda document, d, v=_value:
             document["ports"][0].__setitem__("name", v))
doc_case("name-port-16", ": ports[0].name", lambda document, d: document["ports"][0].__setitem__("name", "p" * 16))
for _n, _value in {"ansi": "\x1b[31mx.py:f", "nul": "a\x00.py:f", "huge": "w" * 5000 + ".py:f",
                   "newline": "x.py:f\n", "nocolon": "worker_without_colon", "typo": "tuoch",
                   "missing-file": "no_such_file.py:f", "missing-module": "no_such_module_ixy:f",
                   "not-identifier": "x.py:1f", "empty": ""}.items():
    doc_case(f"function-{_n}", ": workers.function", lambda document, d, v=_value:
             document["workers"].__setitem__("function", v))
for _field, _place in [("driver", lambda x: x["ports"][0]), ("forward_to", lambda x: x["ports"][0]),
                       ("pci", lambda x: x["ports"][0]), ("hugepages", lambda x: x["pipeline"]),
                       ("on_stage_death", lambda x: x["pipeline"]), ("distribute", lambda x: x["workers"])]:
    for _n in ("ansi", "nul", "huge"):
        _key = {"driver": "ports[0].driver", "forward_to": "ports[0].forward_to", "pci": "ports[0].pci",
                "hugepages": "pipeline.hugepages", "on_stage_death": "pipeline.on_stage_death",
                "distribute": "workers.distribute"}[_field]
        doc_case(f"string-{_field}-{_n}", f": {_key}", lambda document, d, f=_field, p=_place, v=ODD_STRINGS[_n]:
                 p(document).__setitem__(f, v))
for _n in ("ansi", "nul", "newline", "long"):
    doc_case(f"string-interface-{_n}", ": ports[1].interface", lambda document, d, v=ODD_STRINGS[_n]:
             document["ports"].__setitem__(1, {"name": "p1", "driver": "af_packet", "interface": v}))
for _n in ("ansi", "nul", "newline", "huge"):
    doc_case(f"string-sink-pcap-{_n}", ": ports[0].sink.pcap", lambda document, d, v=ODD_STRINGS[_n]:
             document["ports"][0]["sink"].__setitem__("pcap", v))

# ---- unknown keys in every table -------------------------------------------------------------------------
TABLES = {"top": (lambda x: x, ""), "pipeline": (lambda x: x["pipeline"], "pipeline."),
          "port": (lambda x: x["ports"][0], "ports[0]."), "generator": (lambda x: x["ports"][0]["generator"],
                                                                          "ports[0].generator."),
          "sink": (lambda x: x["ports"][0]["sink"], "ports[0].sink."), "workers": (lambda x: x["workers"], "workers."),
          "stats": (lambda x: x["stats"], "stats."), "cpus": (lambda x: x.setdefault("cpus", {}), "cpus.")}
for _t, (_get, _prefix) in TABLES.items():
    for _n, _name in {"plain": "speed", "ansi": "\x1b[31mkey", "long": "k" * 10_000, "nul": "a\x00b"}.items():
        _shown = {"plain": "speed", "ansi": "\\x1b[31mkey", "long": "k" * 20, "nul": "a\\x00b"}[_n]
        doc_case(f"unknown-{_t}-{_n}", f": {_prefix}{_shown}", lambda document, d, g=_get, k=_name:
                 g(document).__setitem__(k, 1), also=("unknown key",))

# ---- wrong structures ------------------------------------------------------------------------------------
STRUCTURES = [
    ("pipeline-number", ": pipeline", lambda x: x.__setitem__("pipeline", 5)),
    ("pipeline-array", ": pipeline", lambda x: x.__setitem__("pipeline", [1, 2])),
    ("ports-table", ": ports", lambda x: x.__setitem__("ports", {"name": "p0", "driver": "sim"})),
    ("ports-empty", ": ports", lambda x: x.__setitem__("ports", [])),
    ("ports-numbers", ": ports", lambda x: x.__setitem__("ports", [1, 2])),
    ("ports-missing", ": ports", lambda x: x.pop("ports")),
    ("port-without-name", ": ports[0]", lambda x: x["ports"][0].pop("name")),
    ("port-without-driver", ": ports[1]", lambda x: x["ports"][1].pop("driver")),
    ("port-duplicate-name", ": ports[1].name", lambda x: x["ports"][1].__setitem__("name", "p0")),
    ("workers-string", ": workers", lambda x: x.__setitem__("workers", "touch")),
    ("workers-array", ": workers", lambda x: x.__setitem__("workers", [])),
    ("stats-number", ": stats", lambda x: x.__setitem__("stats", 1)),
    ("cpus-string", ": cpus", lambda x: x.__setitem__("cpus", "all")),
    ("generator-number", ": ports[0].generator", lambda x: x["ports"][0].__setitem__("generator", 5)),
    ("sink-array", ": ports[0].sink", lambda x: x["ports"][0].__setitem__("sink", [1])),
    ("options-number", ": workers.options", lambda x: x["workers"].__setitem__("options", 3)),
    ("cpus-rx-string", ": cpus.rx", lambda x: x.setdefault("cpus", {}).__setitem__("rx", "0")),
    ("cpus-rx-empty", ": cpus.rx", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [])),
    ("cpus-rx-twice", ": cpus.rx[1]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [0, 0])),
    ("cpus-rx-missing", ": cpus.rx[0]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [99999])),
    ("cpus-rx-negative", ": cpus.rx[0]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [-1])),
    ("cpus-rx-bool", ": cpus.rx[0]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [True])),
    ("cpus-rx-float", ": cpus.rx[0]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [1.5])),
    ("cpus-rx-huge", ": cpus.rx[0]", lambda x: x.setdefault("cpus", {}).__setitem__("rx", [2**63 - 1])),
    ("ports-too-many", ": ports[32] (line", lambda x: x.__setitem__("ports", [{"name": f"p{i}", "driver": "sim",
                                                                           "forward_to": "p0"} for i in range(33)])),
    ("ports-thousands", ": ports[32] (line", lambda x: x.__setitem__("ports", [{"name": f"p{i}", "driver": "sim"}
                                                                           for i in range(2000)])),
    ("memory-beyond-the-machine", ": pipeline.buffers_per_queue (line", lambda x: (
        x["pipeline"].update(buffers_per_queue=1 << 20, buffer_size=16384),
        [p.update(rx_queues=16) for p in x["ports"]])),
    ("plan-beyond-the-arena", ": workers.processes", lambda x: (
        x["workers"].update(processes=64), [p.update(rx_queues=16, tx_queues=16) for p in x["ports"]])),
    ("forward-to-missing", ": ports[0].forward_to", lambda x: x["ports"][0].__setitem__("forward_to", "p9")),
    ("sink-mode-and-verify", ": ports[0].sink.verify", lambda x: x["ports"][0]["sink"].__setitem__("mode", "count")),
]
for _n, _expect, _change in STRUCTURES:
    doc_case(f"structure-{_n}", _expect, lambda document, d, c=_change: c(document))


# ---- nesting ----------------------------------------------------------------------------------------------
def nested_dict(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


FWD_TEXT = FWD.read_text()
doc_case("nesting-options-tables", "nested too deeply", lambda document, d:
         document["workers"].__setitem__("options", nested_dict(MAX_DEPTH + 4)))
text_case("nesting-arrays-3000", "nested too deeply", FWD_TEXT.replace(
    "[stats]", "[workers.options]\nx = " + "[" * 3000 + "]" * 3000 + "\n\n[stats]"))
text_case("nesting-inline-tables-3000", "nested too deeply", FWD_TEXT.replace(
    "[stats]", "[workers.options]\nx = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n\n[stats]"))
text_case("nesting-arrays-20", "nested too deeply", FWD_TEXT.replace(
    "[stats]", "[workers.options]\nx = " + "[" * 20 + "]" * 20 + "\n\n[stats]"))
text_case("nesting-dotted-key", "nested too deeply", FWD_TEXT.replace(
    "[stats]", "[workers.options]\n" + ".".join(["a"] * 40) + " = 1\n\n[stats]"))
text_case("nesting-table-header", "nested too deeply", FWD_TEXT.replace(
    "[stats]", "[workers.options." + ".".join(["a"] * 40) + "]\nx = 1\n\n[stats]"))
text_case("nesting-unclosed-arrays", "nested too deeply", 'x = ' + "[" * 100_000)

# ---- broken TOML, garbage, size ---------------------------------------------------------------------------
text_case("toml-table-twice", "not valid TOML", FWD_TEXT.replace("[stats]", "[pipeline]\nname = \"x\"\n[stats]"))
text_case("toml-key-twice", "not valid TOML", FWD_TEXT.replace('name = "fwd"', 'name = "fwd"\nname = "again"'))
text_case("toml-table-after-array", "not valid TOML", FWD_TEXT + '\n[ports]\nname = "x"\n')
text_case("toml-unterminated-string", "not valid TOML", FWD_TEXT.replace('name = "fwd"', 'name = "fwd'))
text_case("toml-unterminated-array", "not valid TOML", FWD_TEXT.replace("[stats]", "x = [1, 2\n[stats]"))
text_case("toml-no-equals", "not valid TOML", FWD_TEXT.replace('name = "fwd"', 'name "fwd"'))
text_case("toml-bom", "not valid TOML", "\ufeff" + FWD_TEXT)
text_case("toml-long-line", "not valid TOML", "a" * 500_000)
text_case("toml-nul-byte", "NUL byte", FWD_TEXT.replace('name = "fwd"', 'name = "f\x00wd"'))
text_case("toml-invalid-utf8", "not UTF-8", FWD_TEXT.encode().replace(b'"fwd"', b'"\xff\xfe"'))
for _seed in range(6):
    _rng = random.Random(_seed)
    _garbage = bytes(_rng.randrange(256) for _ in range(_rng.randrange(1, 4096)))
    text_case(f"garbage-{_seed}", ": ", _garbage)          # not UTF-8, not TOML, or no ports: any clean error
text_case("garbage-elf", ": ", Path(sys.executable).read_bytes()[:MAX_FILE_BYTES])
text_case("empty-file", "ports: no ports", "")
text_case("whitespace-only", "ports: no ports", " \n\t\n" * 1000)
text_case("comments-only", "ports: no ports", "# nothing\n" * 1000)
text_case("size-1MiB-plus-one", f"a pipeline file is at most {MAX_FILE_BYTES} bytes",
          FWD_TEXT + "#" * (MAX_FILE_BYTES + 1 - len(FWD_TEXT.encode())))
text_case("size-10MB", f"a pipeline file is at most {MAX_FILE_BYTES} bytes",
          FWD_TEXT.replace('name = "fwd"', 'name = "' + "n" * 10_000_000 + '"'))
text_case("size-just-under-1MiB", ": pipeline.name", FWD_TEXT.replace(
    'name = "fwd"', 'name = "' + "n" * (MAX_FILE_BYTES - len(FWD_TEXT.encode()) - 10) + '"'))


# ---- what the path points at ------------------------------------------------------------------------------
def fifo(d: Path) -> str:
    os.mkfifo(d / "fifo.toml")
    return str(d / "fifo.toml")


def symlink(d: Path, name: str, target: str) -> str:
    (d / name).symlink_to(target)
    return str(d / name)


def loop(d: Path) -> str:
    (d / "loop-a.toml").symlink_to(d / "loop-b.toml")
    (d / "loop-b.toml").symlink_to(d / "loop-a.toml")
    return str(d / "loop-a.toml")


def unix_socket(d: Path) -> str:
    path = d / "sock.toml"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return str(path)


def directory(d: Path) -> str:
    (d / "dir.toml").mkdir()
    return str(d / "dir.toml")


path_case("file-missing", "no such pipeline file", lambda d: str(d / "missing.toml"))
path_case("file-fifo", "is a FIFO", fifo)
path_case("file-dev-zero", "is a character device", lambda d: "/dev/zero")
path_case("file-dev-null", "is a character device", lambda d: "/dev/null")
path_case("file-dev-urandom", "is a character device", lambda d: "/dev/urandom")
path_case("file-symlink-to-dev-zero", "is a character device", lambda d: symlink(d, "zero.toml", "/dev/zero"))
path_case("file-symlink-loop", "a loop of symbolic links", loop)
path_case("file-symlink-self", "a loop of symbolic links", lambda d: symlink(d, "self.toml", str(d / "self.toml")))
path_case("file-dangling-symlink", "no such pipeline file", lambda d: symlink(d, "dangling.toml", str(d / "nowhere")))
path_case("file-symlink-to-fifo", "is a FIFO", lambda d: symlink(d, "to-fifo.toml", fifo(d)))
path_case("file-socket", "is a socket", unix_socket)
path_case("file-proc-version", "/proc/version: is on procfs (a kernel interface)", lambda d: "/proc/version")
path_case("file-proc-self-mem", "is on procfs (a kernel interface)", lambda d: "/proc/self/mem")
path_case("file-symlink-to-proc", "is on procfs (a kernel interface)", lambda d: symlink(d, "p.toml", "/proc/cpuinfo"))
path_case("file-directory", "directory", directory)
path_case("file-name-too-long", "File name too long", lambda d: str(d / ("n" * 5000 + ".toml")))
path_case("file-under-a-file", "cannot read the pipeline file", lambda d: str(FWD / "x.toml"))
if os.geteuid() != 0:       # root reads anything
    def unreadable(d: Path) -> str:
        (d / "unreadable.toml").write_text(FWD_TEXT)
        (d / "unreadable.toml").chmod(0)
        return str(d / "unreadable.toml")
    path_case("file-unreadable", "Permission denied", unreadable)

# ---- PCI addresses ----------------------------------------------------------------------------------------
BOTH = ("'p0'", "'p1'")
doc_case("pci-same", ": ports[1].pci", lambda x, d: [p.__setitem__("pci", "0000:03:00.0") for p in x["ports"]],
         also=BOTH)
doc_case("pci-default-of-first", ": ports[1].pci", lambda x, d: x["ports"][1].__setitem__("pci", "0000:5e:00.0"),
         also=BOTH)
doc_case("pci-default-upper-case", ": ports[1].pci", lambda x, d:
         x["ports"][1].__setitem__("pci", "0000:5E:00.0"), also=BOTH)
doc_case("pci-default-of-second", ": ports[1] (line", lambda x, d:
         x["ports"][0].__setitem__("pci", "0000:5e:00.1"), also=BOTH)
doc_case("pci-ixgbe-same", ": ports[1].pci", lambda x, d: x.__setitem__("ports", [
    {"name": "p0", "driver": "ixgbe", "pci": "0000:03:00.0"}, {"name": "p1", "driver": "ixgbe",
                                                              "pci": "0000:03:00.0"}]), also=BOTH)


# ---- output and input files --------------------------------------------------------------------------------
def sink_pcap(path: Callable[[Path], str], port: int = 0) -> Callable[[dict, Path], None]:
    return lambda x, d: x["ports"][port]["sink"].__setitem__("pcap", path(d))


def pcap_port(path: Callable[[Path], str], mode: str) -> Callable[[dict, Path], None]:
    return lambda x, d: x["ports"].__setitem__(0, {"name": "p0", "driver": "pcap", "path": path(d), "mode": mode})


def made_dir(d: Path) -> str:
    (d / "out-dir").mkdir(exist_ok=True)
    return str(d / "out-dir")


doc_case("sink-pcap-directory", ": ports[0].sink.pcap", sink_pcap(made_dir), also=("is a directory",))
doc_case("sink-pcap-dev-full", ": ports[0].sink.pcap", sink_pcap(lambda d: "/dev/full"), also=("character device",))
doc_case("sink-pcap-dev-null", ": ports[0].sink.pcap", sink_pcap(lambda d: "/dev/null"))
doc_case("sink-pcap-no-directory", ": ports[0].sink.pcap", sink_pcap(lambda d: "/nonexistent/x.pcap"),
         also=("does not exist",))
doc_case("sink-pcap-fifo", ": ports[0].sink.pcap", sink_pcap(fifo), also=("FIFO",))
doc_case("sink-pcap-twice", ": ports[1].sink.pcap", lambda x, d: [p["sink"].__setitem__("pcap", str(d / "o.pcap"))
                                                                  for p in x["ports"]], also=("is also",))
doc_case("sink-pcap-the-pipeline-file", ": ports[0].sink.pcap", sink_pcap(lambda d: "sink-pcap-the-pipeline-file.toml"),
         also=("the pipeline file itself",))
doc_case("pcap-write-directory", ": ports[0].path", pcap_port(made_dir, "write"))
doc_case("pcap-write-dev-full", ": ports[0].path", pcap_port(lambda d: "/dev/full", "write"))
doc_case("pcap-read-directory", ": ports[0].path", pcap_port(made_dir, "read"))
doc_case("pcap-read-fifo", ": ports[0].path", pcap_port(fifo, "read"))
doc_case("pcap-read-missing", ": ports[0].path", pcap_port(lambda d: str(d / "nope.pcap"), "read"))
doc_case("pcap-read-dev-zero", ": ports[0].path", pcap_port(lambda d: "/dev/zero", "read"))
# files on procfs and sysfs stat as regular files (or sit in a directory that exists): refused by filesystem
for _n, _path in {"proc-self-mem": "/proc/self/mem", "proc-version": "/proc/version",
                  "proc-new": "/proc/ixypipe-new.pcap", "sys-new": "/sys/kernel/ixypipe.pcap"}.items():
    doc_case(f"sink-pcap-{_n}", ": ports[0].sink.pcap", sink_pcap(lambda d, p=_path: p), also=("(a kernel interface",))
    doc_case(f"pcap-write-{_n}", ": ports[0].path", pcap_port(lambda d, p=_path: p, "write"),
             also=("(a kernel interface",))
doc_case("pcap-read-proc-version", ": ports[0].path", pcap_port(lambda d: "/proc/version", "read"),
         also=("'/proc/version' is on procfs",))
doc_case("pcap-read-proc-self-mem", ": ports[0].path", pcap_port(lambda d: "/proc/self/mem", "read"),
         also=("'/proc/self/mem' is on procfs",))


# captures with one corrupt field mid-file: named with the record and byte, never called a cut file
def corrupt_pcap(name: str, change: Callable[[bytearray], None]) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        with PcapWriter(d / f"{name}.pcap", nanosecond=False) as w:
            w.write_batch([bytes([i]) * 60 for i in range(100)])
        raw = bytearray((d / f"{name}.pcap").read_bytes())
        change(raw)
        (d / f"{name}.pcap").write_bytes(raw)
        return str(d / f"{name}.pcap")
    return make


REC60 = 24 + 60 * (16 + 60)          # record 60 of 100 60-byte packets


def set_u32(offset: int, value: int) -> Callable[[bytearray], None]:
    return lambda raw: raw.__setitem__(slice(offset, offset + 4), value.to_bytes(4, "little"))


for _n, _change, _says in [
        ("caplen-2-31", set_u32(REC60 + 8, 1 << 31), f"record 60 at byte {REC60}: incl_len (byte {REC60 + 8}) is "
                                                     f"2147483648, beyond the snap length 262144: a corrupt field"),
        ("caplen-1MiB", set_u32(REC60 + 8, 1 << 20), f"record 60 at byte {REC60}: incl_len (byte {REC60 + 8}) is "
                                                     "1048576, beyond the snap length"),
        ("caplen-bit-flip", set_u32(REC60 + 8, 60 ^ (1 << 22)), f"record 60 at byte {REC60}: incl_len"),
        ("caplen-0", set_u32(REC60 + 8, 0), "a corrupt field"),   # record 61 is then read from packet bytes
        ("ts-usec-too-big", set_u32(REC60 + 4, 1_000_000), f"record 60 at byte {REC60}: ts_usec (byte {REC60 + 4}) "
                                                           "is 1000000, out of range 0..999999"),
        ("snaplen-59", set_u32(16, 59), "record 0 at byte 24: incl_len (byte 32) is 60, beyond the snap length 59")]:
    doc_case(f"pcap-read-corrupt-{_n}", ": ports[0].path", pcap_port(corrupt_pcap(_n, _change), "read"),
             also=(_says,))
doc_case("pcap-write-what-is-read", ": ports[1].path", lambda x, d: x.__setitem__("ports", [
    {"name": "p0", "driver": "pcap", "path": input_pcap(d)},
    {"name": "p1", "driver": "pcap", "path": input_pcap(d), "mode": "write"}]), also=("is also",))


# ---- worker modules that only an import can judge (each costs a child process) ---------------------------
def worker_case(id: str, source: str, expect: str, timeout: float = 10.0, also=()) -> None:
    def change(x: dict, d: Path) -> None:
        (d / f"{id}.py").write_text(source)
        x["workers"].update(function=f"{id}.py:work", import_timeout=timeout)
    doc_case(id, ": workers.function (line", change, also=(expect, *also))


worker_case("worker-raises", "import os\n\nraise RuntimeError('needs a licence key')\n\ndef work(batch):\n    pass\n",
            "RuntimeError: needs a licence key", also=("worker-raises.py:3",))
worker_case("worker-never-imports", "import time\nwhile True:\n    time.sleep(1)\n\ndef work(batch):\n    pass\n",
            "did not finish importing within 1 s", timeout=1)
worker_case("worker-spins-at-import", "while True:\n    pass\n\ndef work(batch):\n    pass\n",
            "did not finish importing within 1 s", timeout=1)
worker_case("worker-exits-at-import", "import os\nos._exit(7)\n\ndef work(batch):\n    pass\n", "exit code 7")
worker_case("worker-missing-import", "import no_such_module_ixy_hostile\n\ndef work(batch):\n    pass\n",
            "ModuleNotFoundError", also=("worker-missing-import.py:1",))
worker_case("worker-syntax-error", "def work(batch)\n    pass\n", "SyntaxError")
worker_case("worker-system-exit", "raise SystemExit(3)\n\ndef work(batch):\n    pass\n", "SystemExit")

IDS = [c.id for c in CASES]
assert len(IDS) == len(set(IDS)), "case ids are unique"


# ---- running them ----------------------------------------------------------------------------------------
def check_output(case: Case, path: str, code: int, out: str, err: str) -> None:
    text = out + err
    assert code == 2, f"{case.id}: exit {code}\n{text[-3000:]}"
    assert "Traceback" not in text, f"{case.id}:\n{text[-3000:]}"
    assert "\x1b" not in text and "\x00" not in text and "\x07" not in text, f"{case.id}: raw control characters"
    lines = [line for line in err.splitlines() if line.startswith(("error: ", "Error: "))]   # ours, click's
    assert len(lines) == 1, f"{case.id}: {err[-3000:]}"
    assert case.expect in lines[0], f"{case.id}: {case.expect!r} not in {lines[0]!r}"
    for more in case.also:
        assert more in lines[0], f"{case.id}: {more!r} not in {lines[0]!r}"
    assert len(text) < 4 * MAX_FILE_BYTES // 1024 + len(path) + 2000, f"{case.id}: {len(text)} characters printed"
    assert "accounting" not in text.lower(), f"{case.id}: a start-up failure prints only the error"


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture
def ceiling():
    """A hang fails the case (SIGALRM) instead of the whole run."""
    def timed_out(signum, frame):
        raise TimeoutError(f"no answer within {IN_PROCESS_CEILING} s")
    old = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(IN_PROCESS_CEILING)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_the_corpus_is_big_and_covers_every_range():
    assert len(CASES) >= 200
    for key in RANGES:
        assert sum(c.id.startswith(f"number-{key}-") for c in CASES) >= 8, key


def test_the_reference_documents_every_range():
    """docs/pipeline-file.md's key tables give each number's range as "lo .. hi"."""
    reference = (REPO / "docs" / "pipeline-file.md").read_text()
    documented = {key: (float(lo), float(hi)) for key, lo, hi in
                  re.findall(r"^\| `([a-z_.]+)` \|.*?\| ([\d.]+) \.\. ([\d.]+)", reference, re.M)}
    assert documented == {key: (float(lo), float(hi)) for key, (lo, hi) in RANGES.items()}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_check_rejects_hostile_file(case, corpus_dir, ceiling):
    d = corpus_dir / case.id
    d.mkdir()
    path = case.make(d)
    result = CliRunner().invoke(main, ["run", path, "--check"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{case.id}: {type(result.exception).__name__}: {result.exception}")
    check_output(case, path, result.exit_code, result.stdout, result.stderr)


# a sample through the real command: every 30th case, with and without --check in turn, and both ways the
# ones that used to hang or crash a run (FIFO, /dev/zero, an import that never returns, colliding PCI, ...)
MUST = {"file-fifo", "file-dev-zero", "worker-never-imports", "worker-raises", "pci-default-of-first",
        "sink-pcap-dev-full", "sink-pcap-directory", "nesting-arrays-3000", "name-pipeline-huge", "name-pipeline-ansi",
        "number-ports.generator.rate_mpps-3", "number-pipeline.stats_interval-0", "file-symlink-loop",
        "sink-pcap-proc-self-mem", "pcap-read-corrupt-caplen-2-31"}
SAMPLE = [(c, check) for i, c in enumerate(CASES) for check in (True, False)
          if c.id in MUST or (i % 30 == 0 and check == (i % 60 == 0))]
# The default run takes MUST both ways and, of the every-30th sample, one case of each error kind MUST has
# none of (an unknown key, a wrong structure, broken TOML); the rest of the sample (out-of-range numbers,
# odd names and strings, a directory: kinds MUST covers, through the same exit-2 path) is marked slow.
# Every case of the corpus goes through --check in-process above.
DEFAULT_TOO = {"unknown-generator-ansi", "structure-stats-number", "toml-unterminated-array"}


def stray_processes(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("IXYPIPE_HOSTILE_TEST") == marker:
                found.append(p)
        except (psutil.Error, OSError):
            pass
    return found


@pytest.mark.parametrize("case, check", [
    pytest.param(c, k, id=f"{c.id}-{'check' if k else 'run'}",
                 marks=() if c.id in MUST or c.id in DEFAULT_TOO else pytest.mark.slow) for c, k in SAMPLE])
def test_real_command_rejects_hostile_file_and_leaves_nothing(case, check, tmp_path):
    path = case.make(tmp_path)
    marker = uuid.uuid4().hex
    args = [*IXYPIPE, "run", path, *(["--check"] if check else ["--duration", "5"])]
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "IXYPIPE_HOSTILE_TEST": marker})
    try:
        out, err = proc.communicate(timeout=SUBPROCESS_CEILING)
    finally:
        proc.kill()
    print(f"{case.id} {'--check' if check else 'run'}: exit {proc.returncode} in "
          f"{time.monotonic() - started:.2f} s")
    check_output(case, path, proc.returncode, out, err)
    assert leftovers(proc.pid) == []
    deadline = time.monotonic() + 30        # a killed child may take a moment to be reaped by init
    while stray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stray_processes(marker) == []


def test_a_failed_import_shows_its_traceback_only_with_v(tmp_path):
    (tmp_path / "w.py").write_text("x = 1\nraise ValueError('bad option')\n\ndef work(batch):\n    pass\n")
    (tmp_path / "p.toml").write_text(FWD_TEXT.replace('function = "touch"', 'function = "w.py:work"'))
    quiet = CliRunner().invoke(main, ["run", str(tmp_path / "p.toml"), "--check"])
    loud = CliRunner().invoke(main, ["-v", "run", str(tmp_path / "p.toml"), "--check"])
    expected = (f"error: {tmp_path / 'p.toml'}: workers.function (line 53): loading {tmp_path / 'w.py'} failed: "
                f"ValueError: bad option (at {tmp_path / 'w.py'}:2)\n")
    assert quiet.exit_code == 2 and quiet.stderr == expected
    assert loud.exit_code == 2 and loud.stderr.startswith(expected)
    assert "Traceback (most recent call last):" in loud.stderr
    assert loud.stderr.rstrip().endswith("ValueError: bad option")


def import_check_child(proc: subprocess.Popen, marker: str) -> list[psutil.Process]:
    """The child ``ixypipe run`` forked to import the worker's module: the one with the command's own command
    line (beside it run the stages' fork server and multiprocessing's resource tracker)."""
    found = []
    try:
        command = psutil.Process(proc.pid).cmdline()
    except psutil.Error:
        return found
    for p in stray_processes(marker):
        try:                        # a short-lived process (a tool the check runs) may be gone by now
            if p.pid != proc.pid and p.cmdline() == command:
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_stopped_while_a_worker_module_imports_leaves_no_process(tmp_path, sig):
    (tmp_path / "w.py").write_text("import time\nwhile True:\n    time.sleep(1)\n\ndef work(batch):\n    pass\n")
    (tmp_path / "p.toml").write_text(FWD_TEXT.replace('function = "touch"', 'function = "w.py:work"\n'
                                                                             'import_timeout = 600'))
    marker = uuid.uuid4().hex
    # started as a script's `cmd &` starts it: with SIGINT ignored, which `ixypipe run` must not keep
    proc = subprocess.Popen([*IXYPIPE, "run", str(tmp_path / "p.toml")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "IXYPIPE_HOSTILE_TEST": marker},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + SUBPROCESS_CEILING       # until the import check's child is there
        child = import_check_child(proc, marker)
        while not child and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            child = import_check_child(proc, marker)
        assert len(child) == 1, f"the import check's child never appeared (exit {proc.poll()})"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=SUBPROCESS_CEILING)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "Traceback" not in err, err
    deadline = time.monotonic() + 30
    while stray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stray_processes(marker) == []
    assert leftovers(proc.pid) == []
