"""Hostile command-line values (#24): NaN, infinities, negative and absurd numbers, and paths that are no data
files, given to every sub-command.  Each is exit 2 with click's "Invalid value for '--option'" and what was
wrong, no traceback, and nothing started or written: the reproductions of the issue (run and gen with
--duration nan never stopped, gen filled the disk; top --interval nan; --packets unbounded; gen --pcap
/proc/version, sim serve --wire 0:pcap=/dev/full and --root /dev/null ended in tracebacks; devices --pci-ids
/dev/zero read until the OOM killer).

The option cases run in-process (click's CliRunner) under a SIGALRM ceiling, each with a bound that stops
the command soon should the value ever be taken (--count, --packets, --check, --once); the ones that only a
real process shows (sim serve, a file not created) run as ``python -m ixypipe``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.commands.options import MAX_COUNT, MAX_RATE_PPS, MAX_SECONDS
from ixypipe.datafile import DataFileError, data_file_problem, kernel_filesystem, read_bounded
from ixypipe.ops.pciids import MAX_PCI_IDS_BYTES
from tests.support.runs import FWD, IXYPIPE, REPO

CEILING = 60                    # seconds one in-process case may take before it fails as a hang
HUGE = str(2 ** 64)
DIGITS_400 = "1" + "0" * 400    # float() of it is inf

NOT_FINITE = "is not a finite number of seconds"
SECONDS_RANGE = f"is not in the range 0<x<={MAX_SECONDS:.1f}"
COUNT_RANGE = f"<=x<={MAX_COUNT}"

# (arguments, the option named, what the message says)
OPTION_CASES = [
    *[(["run", str(FWD), "--check", "--duration", v], "--duration", say) for v, say in [
        ("nan", f"'nan' {NOT_FINITE}"), ("inf", f"'inf' {NOT_FINITE}"), ("-inf", f"'-inf' {NOT_FINITE}"),
        ("NaN", f"'NaN' {NOT_FINITE}"), ("-1", f"-1.0 {SECONDS_RANGE}"), ("0", f"0.0 {SECONDS_RANGE}"),
        ("1e300", f"1e+300 {SECONDS_RANGE}"), (DIGITS_400, NOT_FINITE)]],
    *[(["run", str(FWD), "--check", "--packets", v], "--packets", say) for v, say in [
        ("0", f"0 is not in the range 1{COUNT_RANGE}"), (HUGE, f"{HUGE} is not in the range 1{COUNT_RANGE}"),
        ("-5", "-5 is not in the range"), ("nan", "'nan' is not a valid integer")]],
    *[(["gen", "--pcap", "{tmp}/out.pcap", "--count", "10", "--duration", v], "--duration", f"'{v}' {NOT_FINITE}")
      for v in ("nan", "inf")],
    (["gen", "--pcap", "{tmp}/out.pcap", "--count", HUGE], "--count", f"{HUGE} is not in the range 0{COUNT_RANGE}"),
    (["gen", "--pcap", "{tmp}/out.pcap", "--count", "-1"], "--count", "-1 is not in the range 0"),
    (["gen", "--pcap", "{tmp}/out.pcap", "--count", "10", "--rate", DIGITS_400], "--rate",
     f"is beyond {MAX_RATE_PPS:.0e} packets per second"),
    (["gen", "--pcap", "{tmp}/out.pcap", "--count", "10", "--rate", "nan"], "--rate", "'nan' is not a packet rate"),
    (["gen", "--pcap", "{tmp}/out.pcap", "--count", "10", "--rate", "-1k"], "--rate", "'-1k' is not a packet rate"),
    (["fwd", "--sim", "--packets", "1000", "--duration", "nan"], "--duration", f"'nan' {NOT_FINITE}"),
    (["fwd", "--sim", "--duration", "1", "--packets", HUGE], "--packets", f"{HUGE} is not in the range 1"),
    (["fwd", "--sim", "--duration", "1", "--flows", HUGE], "--flows", f"{HUGE} is not in the range 1<=x<=65535"),
    (["fwd", "--sim", "--duration", "1", "--packet-size", HUGE], "--packet-size",
     f"packet size must be 60..9018 bytes without FCS for profile udp (jumbo frames up to 9018), got {HUGE}"),
    (["fwd", "--sim", "--duration", "1", "--rate", "1e400"], "--rate", "'1e400' is not a packet rate"),
    *[(["top", "--once", "--interval", v], "--interval", say) for v, say in [
        ("nan", f"'nan' {NOT_FINITE}"), ("inf", f"'inf' {NOT_FINITE}"), ("0", "0.0 is not in the range 0.1<=x"),
        ("-1", "-1.0 is not in the range 0.1<=x"), ("1e300", "1e+300 is not in the range 0.1<=x")]],
    (["top", "-n", HUGE], "'-n' / '--iterations'", f"{HUGE} is not in the range 1{COUNT_RANGE}"),
    (["top", "-n", "0"], "'-n' / '--iterations'", "0 is not in the range 1"),
    *[(["cores", "--interval", v], "--interval", say) for v, say in [
        ("nan", f"'nan' {NOT_FINITE}"), ("inf", f"'inf' {NOT_FINITE}"), ("-0.5", "-0.5 is not in the range 0<=x")]],
    # a sysfs root without pools: were the value ever taken, this machine's reservation stays as it is
    (["hugepages", "--sysfs-root", "{tmp}", "--reserve", HUGE], "--reserve",
     f"{HUGE} is not in the range 0{COUNT_RANGE}"),
    (["hugepages", "--sysfs-root", "{tmp}", "--reserve", "99999999999999"], "--reserve",
     "more than this machine's memory"),
    (["hugepages", "--mount", ""], "--mount", "mount point '' is not an absolute path"),
    (["hugepages", "--mount", "/proc/xyz"], "--mount", "mount point '/proc/xyz' is on procfs"),
]

FILE_CASES = [
    (["gen", "--pcap", "/proc/version", "--count", "1"], "--pcap", "'/proc/version' is on procfs (a kernel interface"),
    (["gen", "--pcap", "/proc/self/mem", "--count", "1"], "--pcap", "'/proc/self/mem' is on procfs"),
    (["gen", "--pcap", "/sys/kernel/x.pcap", "--count", "1"], "--pcap", "'/sys/kernel/x.pcap' is on sysfs"),
    (["gen", "--pcap", "/dev/full", "--count", "1"], "--pcap", "'/dev/full' is a character device"),
    (["gen", "--pcap", "{tmp}/fifo", "--count", "1"], "--pcap", "is a FIFO (named pipe)"),
    (["devices", "--pci-ids", "/dev/zero"], "--pci-ids", "'/dev/zero' is a character device; a data file must be a "
                                                         "regular file"),
    (["devices", "--pci-ids", "/proc/version"], "--pci-ids", "'/proc/version' is on procfs"),
    (["devices", "--pci-ids", "{tmp}/fifo"], "--pci-ids", "is a FIFO (named pipe)"),
    (["devices", "--pci-ids", "{tmp}/huge.ids"], "--pci-ids", f"bytes; at most {MAX_PCI_IDS_BYTES} are read"),
    (["devices", "--pci-ids", "{tmp}/missing.ids"], "--pci-ids", "missing.ids' does not exist"),
]


@pytest.fixture
def ceiling():
    """A hang fails the case (SIGALRM) instead of the whole run."""
    def timed_out(signum, frame):
        raise TimeoutError(f"no answer within {CEILING} s")
    old = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(CEILING)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def files(tmp_path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    with open(tmp_path / "huge.ids", "wb") as f:          # sparse: costs no disk
        f.truncate(MAX_PCI_IDS_BYTES + 1)
    return tmp_path


def assert_usage_error(code: int, output: str, option: str, message: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, output
    hint = option if option.startswith("'") else f"'{option}'"          # "'-n' / '--iterations'" as it is
    assert errors[0].startswith(f"Error: Invalid value for {hint}: "), errors[0]
    assert message in errors[0], f"{message!r} not in {errors[0]!r}"


def case_id(case) -> str:
    args = " ".join(a if len(a) < 24 else a[:20] + "..." for a in case[0])
    return args.replace("{tmp}/", "")


@pytest.mark.parametrize("case", OPTION_CASES + FILE_CASES, ids=[case_id(c) for c in OPTION_CASES + FILE_CASES])
def test_a_hostile_value_is_a_usage_error_naming_its_option(case, files, ceiling):
    args, option, message = case
    res = CliRunner().invoke(main, [a.replace("{tmp}", str(files)) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert_usage_error(res.exit_code, res.output, option, message)
    assert not (files / "out.pcap").exists()


def ixypipe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("args, option, message", [
    (["gen", "--pcap", "{tmp}/out.pcap", "--duration", "nan"], "--duration", f"'nan' {NOT_FINITE}"),
    (["top", "--interval", "nan"], "--interval", f"'nan' {NOT_FINITE}"),
    (["devices", "--pci-ids", "/dev/zero"], "--pci-ids", "'/dev/zero' is a character device"),
    (["sim", "serve", "--duration", "nan"], "--duration", f"'nan' {NOT_FINITE}"),
    (["sim", "serve", "--interval", "inf"], "--interval", f"'inf' {NOT_FINITE}"),
    (["sim", "serve", "--count", HUGE], "--count", f"{HUGE} is not in the range 0{COUNT_RANGE}"),
    (["sim", "serve", "--rate", DIGITS_400], "--rate", "packets per second"),
    (["sim", "serve", "--wire", "0:pcap=/dev/full"], "--wire", "'0:pcap=/dev/full': '/dev/full' is a character "
                                                                "device; an output must be a regular file"),
    (["sim", "serve", "--wire", "0:pcap=/proc/self/mem"], "--wire", "'/proc/self/mem' is on procfs"),
    (["sim", "serve", "--wire", "1:pcap={tmp}/fifo"], "--wire", "is a FIFO (named pipe)"),
    (["sim", "serve", "--root", "/dev/null"], "--root", "'/dev/null' exists and is not a directory"),
    (["sim", "serve", "--root", "/proc/xyz"], "--root", "'/proc/xyz' is on procfs (a kernel interface)"),
    (["sim", "serve", "--root", "{tmp}/fifo"], "--root", "exists and is not a directory"),
], ids=lambda v: case_id((v,)) if isinstance(v, list) else None)
def test_the_issue_reproductions_as_real_commands(args, option, message, files):
    """As a user runs them: exit 2 at once (a ceiling, not a clock: these used to never stop or to crash)."""
    res = ixypipe(*[a.replace("{tmp}", str(files)) for a in args])
    assert_usage_error(res.returncode, res.stderr, option, message)
    assert not (files / "out.pcap").exists()
    assert sorted(p.name for p in files.iterdir()) == ["fifo", "huge.ids"]


# ---- the one check of a data file ---------------------------------------------------------------------------
def test_kernel_filesystems_are_told_by_statfs_not_by_name(tmp_path):
    assert kernel_filesystem("/proc/self/mem") == "procfs"
    assert kernel_filesystem("/proc/version") == "procfs"
    assert kernel_filesystem("/proc/no/such/file") == "procfs"          # judged by the nearest existing parent
    assert kernel_filesystem("/sys/kernel/mm") == "sysfs"
    assert kernel_filesystem(tmp_path / "x.pcap") is None
    assert kernel_filesystem("/dev/shm") is None
    (tmp_path / "proc").symlink_to("/proc")
    assert kernel_filesystem(tmp_path / "proc" / "version") == "procfs"  # a link into /proc too


def test_data_file_problem_for_reading_and_writing(tmp_path):
    (tmp_path / "ok").write_bytes(b"x")
    assert data_file_problem(tmp_path / "ok") == "" and data_file_problem(tmp_path / "ok", write=True) == ""
    assert data_file_problem(tmp_path / "new", write=True) == ""
    assert data_file_problem(tmp_path / "new") == f"{str(tmp_path / 'new')!r} does not exist"
    assert data_file_problem("/proc/version") == "'/proc/version' is on procfs (a kernel interface, not a data file)"
    assert data_file_problem("/proc/self/mem", write=True).startswith("'/proc/self/mem' is on procfs")
    assert data_file_problem("/dev/full", write=True) == ("'/dev/full' is a character device; a data file must be a "
                                                          "regular file")
    assert data_file_problem(tmp_path) == f"{str(tmp_path)!r} is a directory; a data file must be a regular file"
    assert "NUL" in data_file_problem("a\x00b") or "null" in data_file_problem("a\x00b")


def test_read_bounded_reads_at_most_its_limit(tmp_path):
    (tmp_path / "f").write_bytes(b"a" * 100)
    assert read_bounded(tmp_path / "f", 100) == b"a" * 100
    with pytest.raises(DataFileError, match=r"'.*f' is 100 bytes; at most 99 are read"):
        read_bounded(tmp_path / "f", 99)
    with pytest.raises(DataFileError, match="'/dev/zero' is a character device"):
        read_bounded("/dev/zero", 1 << 20)
    with pytest.raises(DataFileError, match="'/proc/self/status' is on procfs"):
        read_bounded("/proc/self/status", 1 << 20)
