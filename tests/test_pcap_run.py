"""pcap ports as a user runs them: finite replays end the run by themselves, bad files are refused
at --check and at start, a cut file ends its replay with one message, a running capture is readable,
and a capture that cannot be written fails the run instead of killing a process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ixypipe.pcapfile import PcapWriter, read_pcap
from tests.support.runs import FWD, summary_of

IXYPIPE = [sys.executable, "-m", "ixypipe"]
REPO = Path(__file__).resolve().parent.parent
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark not installed: apt-get install tshark")


def ixypipe(*args, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def sample(path: Path, n: int, seed: int = 5) -> list[bytes]:
    rng = np.random.default_rng(seed)
    pkts = [rng.integers(0, 256, int(s), dtype=np.uint8).tobytes() for s in rng.integers(60, 1515, n)]
    with PcapWriter(path) as w:
        w.write_batch(pkts)
    return pkts


def replay_pipeline(tmp_path: Path, source: str, loop: int, out: str = "out.pcap", rate: float = 0.0) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(
        '[pipeline]\nname = "replay"\nbatch_size = 32\nbuffers_per_queue = 2048\nhugepages = "never"\n\n'
        f'[[ports]]\nname = "in"\ndriver = "pcap"\npath = "{source}"\nloop = {loop}\nrate_mpps = {rate}\n'
        'forward_to = "out"\n\n'
        f'[[ports]]\nname = "out"\ndriver = "pcap"\npath = "{out}"\nmode = "write"\nforward_to = "in"\n\n'
        '[workers]\nfunction = "forward"\n')
    return path


def pcapng_of(src: Path, dst: Path) -> None:
    """The same packets as pcapng, big-endian, with a block type ixypipe does not know in the middle."""
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack(">II", btype, 12 + len(body)) + body + struct.pack(">I", 12 + len(body))
    out = block(0x0A0D0D0A, struct.pack(">IHHq", 0x1A2B3C4D, 1, 0, -1)) + block(1, struct.pack(">HHI", 1, 0, 0))
    for i, p in enumerate(read_pcap(src).packets()):
        out += block(6, struct.pack(">IIIII", 0, 0, i, len(p), len(p)) + p)
        if i == 3:
            out += block(0x0BAD, b"a custom block")
    dst.write_bytes(out)


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_finite_replay_ends_the_run_by_itself_with_exact_counts(tmp_path, fmt):
    pkts = sample(tmp_path / "in.pcap", 37)
    if fmt == "pcapng":
        pcapng_of(tmp_path / "in.pcap", tmp_path / "in.pcapng")
    res = ixypipe("run", replay_pipeline(tmp_path, f"in.{fmt}", loop=4), "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["stop_reason"] == "all sources finished"
    assert s["received"] == s["transmitted"] == 4 * 37
    assert s["ports"]["out"]["tx_packets"] == 4 * 37
    assert read_pcap(tmp_path / "out.pcap").packets() == pkts * 4
    text = ixypipe("run", replay_pipeline(tmp_path, f"in.{fmt}", loop=2))
    assert text.returncode == 0, text.stderr
    assert "stopped by   all sources finished" in text.stdout and "accounting OK" in text.stdout


def test_finite_sim_generators_end_the_run_with_exact_counts(tmp_path):
    text = FWD.read_text().replace("rate_mpps = 0.3", "rate_mpps = 0.0\ncount = 5000")
    path = tmp_path / "fwd.toml"
    path.write_text(text)
    res = ixypipe("run", path, "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["stop_reason"] == "all sources finished"
    assert s["received"] == s["transmitted"] == 10_000
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["generated"] == 5000 and sim["sink_received"] == 5000
        assert sim["sink_lost"] == sim["sink_corrupt"] == sim["sink_reordered"] == 0


def test_an_endless_source_keeps_the_run_going(tmp_path):
    sample(tmp_path / "in.pcap", 5)
    res = ixypipe("run", replay_pipeline(tmp_path, "in.pcap", loop=0), "--duration", 2, "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["stop_reason"] == "duration 2 s" and s["received"] == s["transmitted"] > 5     # past one pass


def test_a_cut_file_replays_its_whole_packets_with_one_message(tmp_path):
    pkts = sample(tmp_path / "in.pcap", 20)
    raw = (tmp_path / "in.pcap").read_bytes()
    cut = 24 + sum(16 + len(p) for p in pkts[:12])
    (tmp_path / "in.pcap").write_bytes(raw[:cut + 30])          # inside record 12
    res = ixypipe("run", replay_pipeline(tmp_path, "in.pcap", loop=3), "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["received"] == s["transmitted"] == 36
    assert read_pcap(tmp_path / "out.pcap").packets() == pkts[:12] * 3
    msgs = [line for line in res.stderr.splitlines() if "cut short" in line]
    assert len(msgs) == 1, res.stderr
    assert f"ends inside the record at byte {cut}; 12 whole packets read before it" in msgs[0]
    check = ixypipe("run", replay_pipeline(tmp_path, "in.pcap", loop=3), "--check")
    assert check.returncode == 0 and f"at byte {cut}; 12 whole packets" in check.stderr


def bad_input(tmp_path: Path, kind: str) -> tuple[str, str]:
    """(path for the pipeline file, what the error must say)."""
    if kind == "linux_sll":
        PcapWriter(tmp_path / "sll.pcap", linktype=113).close()
        return "sll.pcap", r"link type 113 \(LINUX_SLL\) is not Ethernet"
    if kind == "junk":
        (tmp_path / "junk.pcap").write_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return "junk.pcap", "is neither a pcap nor a pcapng file"
    if kind == "directory":
        (tmp_path / "d.pcap").mkdir()
        return "d.pcap", "no such file|is a directory"
    if kind == "fifo":
        os.mkfifo(tmp_path / "f.pcap")
        return "f.pcap", "no such file|not a regular file|an input must be a regular file"
    if kind == "short":
        (tmp_path / "s.pcap").write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")
        return "s.pcap", r"too short \(6 bytes\)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["linux_sll", "junk", "directory", "fifo", "short"])
@pytest.mark.parametrize("how", ["--check", "run"])
def test_bad_inputs_exit_2_naming_the_key(tmp_path, kind, how):
    source, message = bad_input(tmp_path, kind)
    args = ["run", replay_pipeline(tmp_path, source, loop=1)] + (["--check"] if how == "--check" else [])
    res = ixypipe(*args, timeout=60)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "ports[0].path" in res.stderr and "Traceback" not in res.stderr
    assert re.search(message, res.stderr), res.stderr


@pytest.mark.parametrize("where", ["port", "sink"])
@pytest.mark.parametrize("target", ["directory", "/dev/full", "missing dir"])
def test_unwritable_outputs_exit_2_naming_the_key(tmp_path, where, target):
    out = {"directory": str(tmp_path), "/dev/full": "/dev/full", "missing dir": str(tmp_path / "no" / "x.pcap")}[target]
    if where == "port":
        sample(tmp_path / "in.pcap", 3)
        path, key = replay_pipeline(tmp_path, "in.pcap", loop=1, out=out), "ports[1].path"
    else:
        path, key = tmp_path / "fwd.toml", "ports[0].sink.pcap"
        path.write_text(FWD.read_text().replace("verify = true\nexpect_touch = true",
                                                f'verify = true\nexpect_touch = true\npcap = "{out}"', 1))
    for args in (["--check"], ["--duration", "1"]):
        res = ixypipe("run", path, *args, timeout=60)
        assert res.returncode == 2, (res.stdout, res.stderr)
        assert key in res.stderr and "Traceback" not in res.stderr, res.stderr


@needs_tshark
@pytest.mark.parametrize("where", ["port", "sink"])
def test_tshark_reads_a_running_capture(tmp_path, where):
    if where == "port":
        sample(tmp_path / "in.pcap", 10)
        path, out = replay_pipeline(tmp_path, "in.pcap", loop=0, rate=0.001), tmp_path / "out.pcap"
    else:                               # the software 82599's sink writing what p0 transmits
        path, out = tmp_path / "fwd.toml", tmp_path / "sink.pcap"
        path.write_text(FWD.read_text().replace("rate_mpps = 0.3", "rate_mpps = 0.001").replace(
            "verify = true\nexpect_touch = true", f'verify = true\nexpect_touch = true\npcap = "{out}"', 1))
    proc = subprocess.Popen([*IXYPIPE, "run", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size <= 24):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert out.stat().st_size > 24, "nothing was written while the pipeline ran"
        res = subprocess.run(["tshark", "-r", str(out)], capture_output=True, text=True, timeout=60)
        frames = [line for line in res.stdout.splitlines() if line.strip()]
        assert len(frames) > 0, res.stderr
        assert proc.poll() is None          # read while it runs
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by   SIGINT" in stdout


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: a capture on it runs out of space (root only; skipped where mount is refused)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs: sudo python3 -m pytest ...")
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                         text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("where", ["port", "sink"])
def test_a_full_disk_under_a_capture_fails_the_run_and_kills_nothing(tmp_path, small_disk, where):
    if where == "port":
        sample(tmp_path / "in.pcap", 20)
        path = replay_pipeline(tmp_path, "in.pcap", loop=0, out=str(small_disk / "out.pcap"))
        name = "out"
    else:
        path = tmp_path / "fwd.toml"
        path.write_text(FWD.read_text().replace("verify = true\nexpect_touch = true",
                                                f'verify = true\nexpect_touch = true\npcap = "{small_disk / "s.pcap"}"',
                                                1))
        name = "p0"
    res = ixypipe("run", path, "--duration", 2, "--json")      # the 256 KiB fill within milliseconds
    assert res.returncode == 1, res.stderr
    s = summary_of(res.stdout)
    assert s["in_flight"] == 0 and not any("died" in f for f in s["failures"]), s["failures"]
    [failure] = s["failures"]
    assert re.fullmatch(rf"port {name}: [\d,]+ frames could not be written to {small_disk}/\w+\.pcap "
                        r"\(the error is logged above\)", failure), failure
    assert len(re.findall("No space left on device", res.stderr)) == 1, res.stderr
