"""Generator profiles as a user runs them: each one through a pipeline into the verifying sink (exact
counts, nothing corrupt), `ixypipe gen` writing each into a pcap file that tshark decodes, and onto a
software 82599 whose sink verifies it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ixypipe.pcapfile import read_pcap
from ixypipe.sim.payload import IMIX_PATTERN
from tests.support.runs import summary_of

IXYPIPE = [sys.executable, "-m", "ixypipe"]
REPO = Path(__file__).resolve().parent.parent
COUNT = 2400                    # per port: a multiple of the IMIX pattern's 12 flows x 2
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark not installed: apt-get install tshark")


def ixypipe(*args, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def pipeline(tmp_path: Path, p0: str, p1: str | None = None, buffer_size: int = 2048) -> Path:
    """ixy-fwd between two software 82599s whose finite generators have the given [ports.generator] lines
    (p1 defaults to p0's); the sinks verify everything and that the worker touched it."""
    text = (f'[pipeline]\nname = "profiles"\nbatch_size = 64\nbuffers_per_queue = 2048\nbuffer_size = {buffer_size}\n'
            'hugepages = "never"\n')
    for port, peer, gen in (("p0", "p1", p0), ("p1", "p0", p1 or p0)):
        text += (f'\n[[ports]]\nname = "{port}"\ndriver = "sim"\nforward_to = "{peer}"\nrx_ring_size = 512\n'
                 f'tx_ring_size = 512\n\n[ports.generator]\nrate_mpps = 0.0\ncount = {COUNT}\n{gen}\n\n'
                 '[ports.sink]\nmode = "verify"\nexpect_touch = true\n')
    text += '\n[workers]\nfunction = "touch"\n'
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


IMIX_BYTES = sum(IMIX_PATTERN) * COUNT // len(IMIX_PATTERN)
PROFILES = {
    "udp": ("flows = 8\npacket_size = 60", 60 * COUNT),
    "imix": ('profile = "imix"\nflows = 24', IMIX_BYTES),
    "vlan": ('profile = "vlan"\nvlan = 42\nflows = 8', 64 * COUNT),
    "imix+vlan": ('profile = "imix"\nvlan = 7', IMIX_BYTES + 4 * COUNT),
    "ipv6": ('profile = "ipv6"\npacket_size = 200\nflows = 3', 200 * COUNT),
    "tcp-syn": ('profile = "tcp-syn"\nflows = 16', 72 * COUNT),
}


# two profiles per run, one on each port's generator: each port's frames are counted and verified at the
# other port's sink, so every profile crosses a pipeline in half as many runs
PAIRS = [("udp", "imix"), ("vlan", "imix+vlan"), ("ipv6", "tcp-syn")]


@pytest.mark.parametrize("pair", PAIRS, ids=["+".join(p) for p in PAIRS])
def test_each_profile_through_a_pipeline_arrives_complete_and_intact(tmp_path, pair):
    res = ixypipe("run", pipeline(tmp_path, PROFILES[pair[0]][0], PROFILES[pair[1]][0]), "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["stop_reason"] == "all sources finished"
    assert s["received"] == s["transmitted"] == 2 * COUNT and sum(s["drops"].values()) == 0
    for port, peer, name in (("p0", "p1", pair[0]), ("p1", "p0", pair[1])):
        nbytes = PROFILES[name][1]
        assert s["sim"][port]["generated"] == s["sim"][peer]["sink_received"] == COUNT, name
        assert s["sim"][port]["gen_bytes"] == nbytes and s["ports"][peer]["tx_bytes"] == nbytes, name
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_lost"] == sim["sink_corrupt"] == sim["sink_reordered"] == sim["sink_untouched"] == 0


def test_jumbo_frames_where_the_buffers_hold_them(tmp_path):
    res = ixypipe("run", pipeline(tmp_path, "packet_size = 9018\nflows = 4", buffer_size=16384), "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["received"] == s["transmitted"] == 2 * COUNT
    for port in ("p0", "p1"):
        assert s["sim"][port]["sink_received"] == COUNT and s["sim"][port]["sink_corrupt"] == 0
        assert s["ports"][port]["tx_bytes"] == 9018 * COUNT
    small = ixypipe("run", pipeline(tmp_path, "packet_size = 9018"), "--check")
    assert small.returncode == 2
    assert ("ports[0].generator.packet_size (line 18): packet size 9018 does not fit a packet buffer: buffers of "
            "this size hold frames up to 1984 bytes") in small.stderr


def test_runts_are_dropped_and_counted_by_the_82599_before_the_pipeline(tmp_path):
    path = pipeline(tmp_path, 'profile = "runt"\npacket_size = 42', "flows = 8")
    res = ixypipe("run", path, "--json")
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["stop_reason"] == "all sources finished"
    # the NIC drops p0's runts (RUC): the pipeline never receives them, and says so per port
    assert s["received"] == s["transmitted"] == COUNT and sum(s["drops"].values()) == 0
    assert s["port_drops"] == {"p0": {"rx_missed": 0, "rx_too_long": 0, "rx_undersize": COUNT},
                               "p1": {"rx_missed": 0, "rx_too_long": 0, "rx_undersize": 0}}
    assert (s["sim"]["p0"]["generated"], s["sim"]["p0"]["rx_undersize"], s["sim"]["p0"]["rx_delivered"]) == (
        COUNT, COUNT, 0)
    assert s["sim"]["p1"]["sink_received"] == 0                  # p0's runts never left
    assert s["sim"]["p0"]["sink_received"] == COUNT and s["sim"]["p0"]["sink_corrupt"] == 0
    text = ixypipe("run", path)
    assert text.returncode == 0, text.stderr
    assert f"dropped at the ports, before the pipeline: p0 runt {COUNT:,}\n" in text.stdout
    assert text.stdout.rstrip().endswith("accounting OK")


# ---- ixypipe gen --------------------------------------------------------------------------------

GEN = {   # profile args -> (frames, tshark's protocol stack of the first frame, sizes)
    "imix": (["--profile", "imix"], 24, "eth:ethertype:ip:udp:data", set(IMIX_PATTERN)),
    "vlan": (["--profile", "vlan", "--vlan", "321", "--size", "128"], 10, "eth:ethertype:vlan:ethertype:ip:udp:data",
             {128}),
    "ipv6": (["--profile", "ipv6"], 10, "eth:ethertype:ipv6:udp:data", {80}),
    "tcp-syn": (["--profile", "tcp-syn", "--size", "100"], 10, "eth:ethertype:ip:tcp", {100}),
    "runt": (["--profile", "runt", "--size", "50"], 10, "eth:ethertype:ip", {50}),
    "jumbo": (["--size", "9018"], 10, "eth:ethertype:ip:udp:data", {9018}),
}


@pytest.mark.parametrize("name", list(GEN))
def test_gen_writes_each_profile_to_a_pcap_file(tmp_path, name):
    args, count, stack, sizes = GEN[name]
    out = tmp_path / f"{name}.pcap"
    res = ixypipe("gen", "--pcap", out, "--count", count, *args, "--hugepages", "never", timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"sent {count} packets" in res.stdout
    cap = read_pcap(out)
    assert len(cap) == count and {int(n) for n in cap.caplen} == sizes
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed: apt-get install tshark (the file itself was checked)")
    fields = ["frame.protocols", "frame.len", "vlan.id", "ipv6.src", "tcp.flags.syn", "tcp.flags.ack"]
    t = subprocess.run(["tshark", "-r", str(out), "-T", "fields", *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True, timeout=60)
    rows = [line.split("\t") for line in t.stdout.splitlines()]
    assert len(rows) == count, t.stderr
    assert rows[0][0].startswith(stack), rows[0]
    assert {int(r[1]) for r in rows} == sizes
    if name == "vlan":
        assert {r[2] for r in rows} == {"321"}
    if name == "ipv6":
        assert all(r[3].startswith("fd00::") for r in rows)
    if name == "tcp-syn":
        assert {(r[4], r[5]) for r in rows} in ({("1", "0")}, {("True", "False")})


# gen --sim takes one path (a software 82599 whose sink verifies) for every profile; by default it runs for
# imix (every size, many flows) and ipv6 (the other L3). vlan and tcp-syn run with -m slow: their frames are
# verified by a sink through a pipeline and decoded by tshark from a pcap file above, by default.
@pytest.mark.parametrize("name", ["imix", pytest.param("vlan", marks=pytest.mark.slow), "ipv6",
                                  pytest.param("tcp-syn", marks=pytest.mark.slow)])
def test_gen_sends_each_profile_to_a_verifying_software_82599(name):
    args = GEN[name][0]
    res = ixypipe("gen", "--sim", "--count", 1200, *args, "--hugepages", "never", timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sink: received 1200 of 1200, lost 0, reordered 0, corrupt 0" in res.stdout


def test_gen_refuses_sizes_a_profile_cannot_make_naming_the_flag():
    res = ixypipe("gen", "--pcap", "/tmp/x.pcap", "--profile", "ipv6", "--size", "60", "--hugepages", "never")
    assert res.returncode == 2
    assert "--size" in res.stderr and "packet size must be 80..9018 bytes without FCS for profile ipv6" in res.stderr
    res = ixypipe("gen", "--pcap", "/tmp/x.pcap", "--vlan", "4095", "--hugepages", "never")
    assert res.returncode == 2 and "--vlan" in res.stderr and "VLAN id must be 1..4094, got 4095" in res.stderr
