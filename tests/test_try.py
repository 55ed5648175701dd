"""The offline loop: Batch.from_frames / from_pcap, ``ixypipe try``, prefix helpers, per_packet fields.

Frames are built with scapy; the prefix helpers are checked against Python's
ipaddress module on random addresses (hypothesis); ``ixypipe try`` runs as a
user runs it (``python -m ixypipe``) and its lines are compared exactly but for
the time spent.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from ixypipe.pcapfile import read_pcap  # noqa: E402
from ixypipe.pipeline.offline import run_frames  # noqa: E402
from ixypipe.pipeline.stages import verdicts  # noqa: E402
from ixypipe.workers.api import DROP, Batch, per_packet  # noqa: E402
from ixypipe.workers.loader import load  # noqa: E402
from ixypipe.workers.prefix import PrefixError  # noqa: E402
from tests.support.runs import summary_of  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
E = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:aa:02")


def mix() -> list[bytes]:
    """IPv4 DNS query, VLAN-tagged IPv6 DNS query, IPv4 TCP, VLAN IPv4 DNS answer, ARP."""
    return [bytes(p) for p in (
        E / IP(src="10.1.2.3", dst="192.0.2.1") / UDP(sport=5000, dport=53) / Raw(b"q" * 12),
        E / Dot1Q(vlan=7) / IPv6(src="2001:db8::1", dst="2001:db8::53") / UDP(sport=4000, dport=53),
        E / IP(src="192.0.2.9", dst="10.0.0.1") / TCP(sport=80, dport=4444),
        E / Dot1Q(vlan=8) / IP(src="10.9.9.9", dst="192.0.2.1") / UDP(sport=53, dport=5000),
        E / ARP(psrc="10.0.0.1", pdst="10.0.0.2"),
    )]


def no_private_arena_files() -> list[str]:
    return [f for f in os.listdir("/dev/shm") if f"{os.getpid()}-private" in f]


def test_from_frames_runs_dns_guard_as_the_worker_stage_does():
    worker = load("examples/dns_guard.py:dns_guard", REPO)
    batch = Batch.from_frames(mix())
    out = verdicts(batch, worker.process(batch))
    assert out.tolist() == [DROP, DROP, 1, DROP, 1]
    assert batch.counters == {"dns_dropped": 3}
    assert batch.port_names == ["in", "out"] and batch.in_port == 0 and batch.default_out == 1
    assert batch.frames() == mix()
    assert no_private_arena_files() == []                # the private arena's file is gone at once


def test_from_pcap_reads_the_capture_and_refuses_a_bad_one(tmp_path):
    wrpcap(str(tmp_path / "mix.pcap"), [Ether(f) for f in mix()])
    batch = Batch.from_pcap(tmp_path / "mix.pcap", port_names=["a", "b", "c"], in_port=2)
    assert batch.n == 5 and batch.frames() == mix() and batch.default_out == 0
    assert batch.l4.dport.tolist() == [53, 53, 4444, 5000, 0]
    (tmp_path / "bad.pcap").write_bytes(b"not a capture at all, no")
    with pytest.raises(ValueError, match="bad.pcap"):
        Batch.from_pcap(tmp_path / "bad.pcap")


def test_from_frames_takes_jumbo_frames_and_refuses_a_wrong_port():
    jumbo = bytes(E / IP() / UDP() / Raw(b"j" * 8000))
    batch = Batch.from_frames([jumbo])
    assert batch.bufs.buf_size == 8192 and batch.frames() == [jumbo]
    with pytest.raises(ValueError) as info:
        Batch.from_frames(mix(), in_port=2)
    assert str(info.value) == "in_port 2 is not one of the 2 ports (in, out)"


# ---- prefixes -------------------------------------------------------------------------------------

def test_src_in_and_dst_in_on_a_mixed_batch():
    l3 = Batch.from_frames(mix()).l3
    assert l3.src_in("10.0.0.0/8").tolist() == [True, False, False, True, False]
    assert l3.dst_in("10.0.0.0/8").tolist() == [False, False, True, False, False]
    assert l3.src_in("2001:db8::/32").tolist() == [False, True, False, False, False]
    assert l3.src_in(["10.9.0.0/16", "2001:db8::1"]).tolist() == [False, True, False, True, False]
    assert l3.dst_in(ipaddress.ip_address("10.0.0.1")).tolist() == [False, False, True, False, False]
    assert l3.v4.tolist() == [True, False, True, True, False] and l3.v6.tolist() == [False, True, False, False, False]
    assert (~l3.src_in("0.0.0.0/0")).tolist() == [False, True, False, False, True]    # not IPv4 -> not in


@pytest.mark.parametrize("prefix,message", [
    ("10.1.0.0/8", "'10.1.0.0/8' has bits set past its prefix length: did you mean '10.0.0.0/8'?"),
    ("10.0.0.0/33", "'10.0.0.0/33' is not an address prefix such as '10.0.0.0/8' or '2001:db8::/32' "
                    "('10.0.0.0/33' does not appear to be an IPv4 or IPv6 network)"),
    ([], "an empty list of prefixes matches nothing: give at least one"),
    (8, "a prefix is a string such as '10.0.0.0/8' (or a list of them), got int"),
    (["10.0.0.0/8", 167772160], "a prefix is a string such as '10.0.0.0/8' or an ipaddress network, got "
                                "167772160 (int)"),
    ("2001:db8::1/129", "'2001:db8::1/129' is not an address prefix such as '10.0.0.0/8' or '2001:db8::/32' "
                        "('2001:db8::1/129' does not appear to be an IPv4 or IPv6 network)"),
])
def test_bad_prefixes_are_refused_with_what_was_wrong(prefix, message):
    with pytest.raises(PrefixError) as info:
        Batch.from_frames(mix()).l3.src_in(prefix)
    assert str(info.value) == message


v4_addrs = st.integers(0, 2**32 - 1)
v6_addrs = st.integers(0, 2**128 - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(v4_addrs, v4_addrs), min_size=1, max_size=8),
       st.lists(st.tuples(v6_addrs, v6_addrs), min_size=1, max_size=8),
       st.lists(st.one_of(st.tuples(st.just(4), v4_addrs, st.integers(0, 32)),
                          st.tuples(st.just(6), v6_addrs, st.integers(0, 128))), max_size=4),
       st.integers(0, 32), st.integers(0, 128))
def test_prefix_helpers_agree_with_ipaddress(pairs4, pairs6, random_prefixes, bits4, bits6):
    nets = [ipaddress.IPv4Network((a, bits), strict=False) if v == 4 else ipaddress.IPv6Network((a, bits), strict=False)
            for v, a, bits in random_prefixes]
    nets += [ipaddress.IPv4Network((pairs4[0][0], bits4), strict=False),      # some packets are inside
             ipaddress.IPv6Network((pairs6[-1][1], bits6), strict=False)]
    frames = [bytes(E / IP(src=str(ipaddress.IPv4Address(s)), dst=str(ipaddress.IPv4Address(d))) / UDP())
              for s, d in pairs4]
    frames += [bytes(E / Dot1Q(vlan=3) / IPv6(src=str(ipaddress.IPv6Address(s)), dst=str(ipaddress.IPv6Address(d))))
               for s, d in pairs6]
    addrs = [(ipaddress.IPv4Address(s), ipaddress.IPv4Address(d)) for s, d in pairs4]
    addrs += [(ipaddress.IPv6Address(s), ipaddress.IPv6Address(d)) for s, d in pairs6]
    l3 = Batch.from_frames(frames).l3
    for which, pos in (("src", 0), ("dst", 1)):
        want = [any(pair[pos] in n for n in nets if n.version == pair[pos].version) for pair in addrs]
        assert getattr(l3, f"{which}_in")([str(n) for n in nets]).tolist() == want
        assert getattr(l3, f"{which}_in")(nets).tolist() == want               # ipaddress networks too


# ---- per_packet -------------------------------------------------------------------------------------

def test_per_packet_with_fields_sees_vlan_and_ipv6():
    seen = []

    @per_packet
    def dns(pkt, f):
        seen.append((f.vlan, f.ip, str(f.src) if f.src else None, f.proto, f.sport, f.dport, f.payload_off,
                     len(pkt)))
        return f.dport != 53 and f.sport != 53

    batch = Batch.from_frames(mix())
    assert verdicts(batch, dns(batch)).tolist() == [DROP, DROP, 1, DROP, 1]
    assert seen == [(None, 4, "10.1.2.3", 17, 5000, 53, 42, 54), (7, 6, "2001:db8::1", 17, 4000, 53, 66, 66),
                    (None, 4, "192.0.2.9", 6, 80, 4444, 54, 54), (8, 4, "10.9.9.9", 17, 53, 5000, 46, 46),
                    (None, None, None, None, None, None, None, 42)]


def test_per_packet_with_one_argument_still_gets_bytes_only():
    got = []

    @per_packet
    def first_byte(pkt):
        got.append(type(pkt).__name__)
        return pkt[12] == 0x08

    batch = Batch.from_frames(mix())
    assert first_byte(batch).tolist() == [True, False, True, False, True]
    assert got == ["ndarray"] * 5


# ---- run_frames and ixypipe try ---------------------------------------------------------------------

ROUTER = '''
def setup(ctx):
    ctx.state["mac"] = ctx.options.get("mac", "02:00:00:00:00:99")

def route(batch):
    batch.set_dst_mac(batch.ctx.state["mac"])
    batch.decrement_ttl()
    batch.count("seen", batch.n)
    batch.send("dmz", batch.l3.dst_in("10.0.0.0/8"))
    return ~batch.l3.src_in(["10.0.0.0/8", "2001:db8::/32"])

def teardown(ctx):
    ctx.count("teardowns")
'''


def run_try(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ixypipe", "try", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_ixypipe_try_prints_verdicts_rewrites_and_counters(tmp_path):
    (tmp_path / "router.py").write_text(ROUTER)
    wrpcap(str(tmp_path / "mix.pcap"), [Ether(f) for f in mix()])
    done = run_try(tmp_path, "router.py:route", "mix.pcap", "--ports", "lan,wan,dmz", "--options",
                   'mac="02:00:00:00:00:77"')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:-1] == [
        "router.py:route on 5 frames of mix.pcap, in on 'lan', verdicts start at 'wan'",
        "   1    54 B  IPv4 10.1.2.3:5000 > 192.0.2.1:53 UDP            DROP  "
        "rewrote bytes 5 (dst MAC), 22 (IPv4 TTL), 24 (IPv4 checksum)",
        "   2    66 B  VLAN 7 IPv6 [2001:db8::1]:4000 > [2001:db8::53]:53 UDP DROP  "
        "rewrote bytes 5 (dst MAC), 25 (IPv6 hop limit)",
        "   3    54 B  IPv4 192.0.2.9:80 > 10.0.0.1:4444 TCP            dmz  "
        "rewrote bytes 5 (dst MAC), 22 (IPv4 TTL), 24 (IPv4 checksum)",
        "   4    46 B  VLAN 8 IPv4 10.9.9.9:53 > 192.0.2.1:5000 UDP     DROP  "
        "rewrote bytes 5 (dst MAC), 26 (IPv4 TTL), 28 (IPv4 checksum)",
        "   5    42 B  EtherType 0x0806                                 wan  rewrote byte 5 (dst MAC)",
        "counters: seen=5, teardowns=1",
    ]
    assert re.fullmatch(r"5 packets: 1 to wan, 1 to dmz, 3 DROP; \d+\.\d\d ms in the worker function", lines[-1])


def test_ixypipe_try_json_and_a_worker_that_raises(tmp_path):
    (tmp_path / "bad.py").write_text("def bad(batch):\n    return 1 / 0\n")
    wrpcap(str(tmp_path / "mix.pcap"), [Ether(f) for f in mix()])
    done = run_try(tmp_path, "bad.py:bad", "mix.pcap", "--batch-size", "2", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["type"] == "try" and got["verdicts"] == {"worker_error": 5} and got["counters"] == {}
    assert got["port_names"] == ["in", "out"] and got["port_in"] == "in"
    assert [p["verdict"] for p in got["packets"]] == ["worker_error"] * 5
    assert got["errors"] == [f"packets {a}-{b}: ZeroDivisionError: division by zero (at {tmp_path}/bad.py:2)"
                             for a, b in ((1, 2), (3, 4), (5, 5))]


@pytest.mark.parametrize("args,message", [
    (("nothere.py:f", "mix.pcap"), "worker nothere.py:f: no worker file"),
    (("touch", "nothere.pcap"), "nothere.pcap"),
    (("touch", "mix.pcap", "--port-in", "x"), "--port-in 'x' is not one of the ports (in, out)"),
    (("touch", "mix.pcap", "--options", "novalue"), "--options 'novalue': give key=value"),
    (("hooks.py:f", "mix.pcap"), "worker hooks.py:f: setup(ctx) raised KeyError: 'acl' (at "),
    (("hooks.py:f", "mix.pcap", "--options", "acl=1"), "worker hooks.py:f: teardown(ctx) raised ZeroDivisionError"),
])
def test_ixypipe_try_names_what_was_wrong(tmp_path, args, message):
    (tmp_path / "hooks.py").write_text("def setup(ctx):\n    ctx.options['acl']\n\ndef f(batch):\n    pass\n\n"
                                       "def teardown(ctx):\n    1 / 0\n")
    wrpcap(str(tmp_path / "mix.pcap"), [Ether(f) for f in mix()])
    done = run_try(tmp_path, *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_run_frames_matches_batches_of_one_and_many():
    worker = load("examples/dns_guard.py:dns_guard", REPO)
    whole = run_frames(worker, mix(), ["in", "out"])
    ones = run_frames(worker, mix(), ["in", "out"], batch_size=1)
    assert [p.verdict for p in whole.packets] == [p.verdict for p in ones.packets] == \
        ["DROP", "DROP", "out", "DROP", "out"]
    assert whole.counters == ones.counters == {"dns_dropped": 3}
    assert np.all([p.changes == [] for p in whole.packets])


PIPELINE = """[pipeline]
name = "tryloop"
batch_size = 32
buffers_per_queue = 2048
hugepages = "never"

[[ports]]
name = "in"
driver = "pcap"
path = "in.pcap"
loop = 1
forward_to = "out"

[[ports]]
name = "out"
driver = "pcap"
path = "out.pcap"
mode = "write"
forward_to = "in"

[workers]
function = "router.py:route"

[workers.options]
mac = "02:00:00:00:00:77"
"""


def test_try_says_what_the_pipeline_does_with_the_same_worker_and_capture(tmp_path):
    """The same worker file, options and capture: ``ixypipe run`` writes exactly the frames try says go
    out (rewritten as try shows them), and counts what try counts."""
    (tmp_path / "router.py").write_text(ROUTER.replace('"dmz"', '"in"'))
    frames = mix() * 3
    wrpcap(str(tmp_path / "in.pcap"), [Ether(f) for f in frames])
    (tmp_path / "p.toml").write_text(PIPELINE)
    done = subprocess.run([sys.executable, "-m", "ixypipe", "run", "p.toml", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    s = summary_of(done.stdout)
    tried = run_frames(load("router.py:route", tmp_path), frames, ["in", "out"],
                       options={"mac": "02:00:00:00:00:77"}, base_dir=str(tmp_path))
    assert [p.verdict for p in tried.packets] == ["DROP", "DROP", "in", "DROP", "out"] * 3
    assert read_pcap(tmp_path / "out.pcap").packets() == [p.data for p in tried.packets if p.verdict == "out"]
    assert s["drops"]["worker"] == tried.tally()["DROP"] == 9
    assert s["ports"]["in"]["tx_packets"] == tried.tally()["in"] == 3
    assert s["counters"] == tried.counters == {"seen": 15, "teardowns": 1}


def test_the_readme_walk_through_filters_dns_for_10_0_0_0_8(tmp_path):
    """The README's "Try a worker offline" section: its worker, tried on a VLAN + IPv6 + IPv4 mix, and the
    lines its sed command changes in pipelines/fwd.toml are there."""
    section = (REPO / "README.md").read_text().split("## Try a worker offline", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "dns_filter.py").write_text(code)
    wrpcap(str(tmp_path / "dns.pcap"), [Ether(f) for f in mix()])
    done = run_try(tmp_path, "dns_filter.py:dns_filter", "dns.pcap", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert [p["verdict"] for p in got["packets"]] == ["out", "DROP", "out", "out", "out"]
    assert got["counters"] == {"dns_refused": 1}
    fwd = (REPO / "pipelines" / "fwd.toml").read_text().splitlines()
    assert sum(line.startswith('function = "touch"') for line in fwd) == 1
    assert sum(line.startswith("expect_touch = true") for line in fwd) == 2
    assert "ixypipe try dns_filter.py:dns_filter dns.pcap" in section


def test_ixypipe_try_per_packet_gets_fields(tmp_path):
    (tmp_path / "pp.py").write_text("def dns(pkt, f):\n    return f.dport != 53\n")
    wrpcap(str(tmp_path / "mix.pcap"), [Ether(f) for f in mix()])
    done = run_try(tmp_path, "pp.py:dns", "mix.pcap", "--per-packet", "--json")
    assert done.returncode == 0, done.stderr
    assert [p["verdict"] for p in json.loads(done.stdout)["packets"]] == ["DROP", "DROP", "out", "out", "out"]
