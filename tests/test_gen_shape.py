"""The generator shaped like a user's traffic (networks, ports, protocols per flow; pcap templates), what the
verifying sink makes of it, a DNS filter that now drops what it should on the sim path, and `ixypipe gen`'s
shaping options and rate shortfall report.  Frames are dissected with scapy (the test extra)."""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
from scapy.layers.dns import DNS, DNSQR  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6  # noqa: E402
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.utils import wrpcap  # noqa: E402

from ixypipe.cli import main  # noqa: E402
from ixypipe.ops.generate import GenSession, GenTick, shortfall  # noqa: E402
from ixypipe.pcapfile import read_pcap  # noqa: E402
from ixypipe.pipeline.config import ConfigError, parse_pipeline  # noqa: E402
from ixypipe.sim import kernels  # noqa: E402
from ixypipe.sim.payload import SIM_REC_LEN, Profile  # noqa: E402
from ixypipe.sim.replay import template_frames  # noqa: E402
from ixypipe.sim.shape import FlowShape  # noqa: E402
from ixypipe.sim.traffic import Generator, PacketBatch, Sink  # noqa: E402
from tests.support.runs import summary_of  # noqa: E402

IXYPIPE = [sys.executable, "-m", "ixypipe"]
REPO = Path(__file__).resolve().parent.parent
SRC_MAC, DST_MAC = bytes.fromhex("024745000000"), bytes.fromhex("024958530000")
SINKS = [False, pytest.param(True, marks=pytest.mark.skipif(not kernels.AVAILABLE, reason="numba not installed"))]
SRC = ["10.0.0.0/8", "2001:db8:1::/48"]
DST = ["192.168.1.0/24", "2001:db8::/64"]


def nets(texts):
    return [ipaddress.ip_network(t) for t in texts]


def verify(gen: Generator, batch: PacketBatch, compiled: bool):
    sink = Sink({gen.gen_id: gen}, compiled=compiled)
    sink.receive(batch)
    return sink.result


@pytest.mark.parametrize("compiled", SINKS)
def test_shaped_flows_carry_the_networks_ports_and_protocol_mix_asked_for(compiled):
    shape = FlowShape.parse(src=SRC, dst=DST, sport="1024-65535", dport=[53, 80, 443],
                            mix={"udp": 0.7, "tcp": 0.2, "icmp": 0.1}, seed=1)
    assert shape.min_size(Profile()) == 92                  # IPv6 + TCP + the record: the default packet size
    gen = Generator(0, 92, 20, 0, 0.0, SRC_MAC, DST_MAC, shape=shape)
    batch = gen.make(60)                                    # three packets of each flow
    kinds, versions, dports, by_flow = Counter(), Counter(), Counter(), {}
    for i in range(60):
        pkt = Ether(batch.frame(i))
        ip = pkt[IP] if IP in pkt else pkt[IPv6]
        versions[ip.version] += 1
        assert any(ipaddress.ip_address(ip.src) in n for n in nets(SRC) if n.version == ip.version), ip.src
        assert any(ipaddress.ip_address(ip.dst) in n for n in nets(DST) if n.version == ip.version), ip.dst
        if UDP in pkt or TCP in pkt:
            l4 = pkt[UDP] if UDP in pkt else pkt[TCP]
            kinds["tcp" if TCP in pkt else "udp"] += 1
            assert 1024 <= l4.sport <= 65535 and l4.dport in (53, 80, 443)
            dports[l4.dport] += 1
            if TCP in pkt:
                assert l4.flags == "S"
        else:
            assert (ICMP in pkt and pkt[ICMP].type == 8) or ICMPv6EchoRequest in pkt, pkt.summary()
            kinds["icmp"] += 1
        by_flow.setdefault(i % 20, set()).add((ip.src, ip.dst, pkt.lastlayer().name))
    # exact shares: 14 UDP, 4 TCP, 2 ICMP flows of 20; half the flows to each destination network's version
    assert kinds == {"udp": 14 * 3, "tcp": 4 * 3, "icmp": 2 * 3}
    assert versions == {4: 30, 6: 30}
    assert set(dports) == {53, 80, 443}
    assert all(len(v) == 1 for v in by_flow.values())       # a flow keeps its tuple
    assert len({next(iter(v))[0] for v in by_flow.values()}) == 20      # every flow its own source
    r = verify(gen, batch, compiled)
    assert (r.received, r.corrupt, r.lost, r.reordered) == (60, 0, 0, 0)


def test_draws_are_seeded_and_each_field_draws_on_its_own():
    def templates(**kw):
        return Generator(0, 92, 16, 0, 0.0, SRC_MAC, DST_MAC, shape=FlowShape.parse(**kw)).templates

    a = templates(src=SRC, dst=DST, seed=5)
    assert (a == templates(src=SRC, dst=DST, seed=5)).all()
    assert (a != templates(src=SRC, dst=DST, seed=6)).any()
    # adding ports changes the ports, not the addresses
    b = templates(src=SRC, dst=DST, seed=5, dport="1000-2000")
    for i in range(16):
        pa, pb = Ether(bytes(a[i])), Ether(bytes(b[i]))
        ipa = pa[IP] if IP in pa else pa[IPv6]
        ipb = pb[IP] if IP in pb else pb[IPv6]
        assert (ipa.src, ipa.dst) == (ipb.src, ipb.dst) and pa[UDP].dport == 5000 and 1000 <= pb[UDP].dport <= 2000


def test_a_small_network_never_gives_its_network_or_broadcast_address():
    gen = Generator(0, 60, 200, 0, 0.0, SRC_MAC, DST_MAC, shape=FlowShape.parse(src="192.0.2.0/30", dst="10.1.1.1"))
    sources = {Ether(bytes(t))[IP].src for t in gen.templates}
    dests = {Ether(bytes(t))[IP].dst for t in gen.templates}
    assert sources == {"192.0.2.1", "192.0.2.2"} and dests == {"10.1.1.1"}


def dns_pcap(path: Path) -> list:
    pkts = [Ether() / IP(src="1.2.3.4", dst="8.8.8.8") / UDP(sport=3333, dport=53) / DNS(rd=1, qd=DNSQR(qname="a.example")),
            Ether() / IPv6(src="2001:db8::1", dst="2001:db8::53") / TCP(sport=4444, dport=443, flags="S"),
            Ether() / ARP(psrc="192.0.2.9", pdst="192.0.2.1")]
    wrpcap(str(path), pkts)
    return pkts


def l4_checksum_ok(frame: bytes) -> bool:
    """scapy recomputes the IPv4 header and the UDP/TCP checksum: they must match what the frame carries."""
    pkt = Ether(frame)
    again = pkt.copy()
    for layer in (IP, UDP, TCP):
        if layer in again:
            del again[layer].chksum
    again = Ether(bytes(again))
    return all(pkt[layer].chksum == again[layer].chksum for layer in (IP, UDP, TCP) if layer in pkt)


@pytest.mark.parametrize("compiled", SINKS)
def test_template_frames_are_replayed_with_per_flow_sources_and_ports(tmp_path, compiled):
    pkts = dns_pcap(tmp_path / "t.pcap")
    frames = template_frames(str(tmp_path / "t.pcap"), 100)
    shape = FlowShape.parse(src="198.51.100.0/24", sport="20000-29999")     # IPv4 sources only
    gen = Generator(0, 60, 9, 0, 0.0, SRC_MAC, DST_MAC, shape=shape, template=frames)
    assert gen.trailer and list(gen.flow_lengths[:3]) == [len(bytes(p)) + SIM_REC_LEN for p in pkts[:2]] + [60]
    batch = gen.make(18)
    dns_sources, v6_sports = set(), set()
    for i in range(18):
        frame = batch.frame(i)
        body = Ether(frame[:-SIM_REC_LEN])
        assert body.src == "02:47:45:00:00:00" and body.dst == "02:49:58:53:00:00"
        kind = i % 9 % 3
        if kind == 0:           # the DNS query: source address and port drawn, payload the capture's
            assert ipaddress.ip_address(body[IP].dst) == ipaddress.ip_address("8.8.8.8")
            assert ipaddress.ip_address(body[IP].src) in ipaddress.ip_network("198.51.100.0/24")
            assert 20000 <= body[UDP].sport <= 29999 and body[UDP].dport == 53
            assert bytes(body[DNS]) == bytes(pkts[0][DNS])
            dns_sources.add((body[IP].src, body[UDP].sport))
        elif kind == 1:         # IPv6: no IPv6 network given, the address stays; the port is drawn
            assert (body[IPv6].src, body[TCP].dport) == ("2001:db8::1", 443)
            v6_sports.add(body[TCP].sport)
        else:
            assert bytes(body[ARP]) == bytes(pkts[2][ARP])
        assert l4_checksum_ok(frame[:-SIM_REC_LEN]), body.summary()
    assert len(dns_sources) == 3 and len(v6_sports) == 3     # three flows of each frame, each its own
    r = verify(gen, batch, compiled)
    assert (r.received, r.corrupt, r.lost, r.reordered) == (18, 0, 0, 0)
    # a changed payload byte is caught (the record's checksum covers the replayed frame)
    data = batch.data.copy()
    data[0, 60] ^= 1
    assert verify(gen, PacketBatch(data, batch.lengths), compiled).corrupt == 1


def write_pipeline(tmp_path: Path, p0_generator: str, p1_generator: str) -> Path:
    (tmp_path / "dnsf.py").write_text(
        "def dns_outside(batch):\n"
        "    l4 = batch.l4\n"
        "    dns = l4.udp & (l4.dport == 53) & ~batch.l3.src_in('10.0.0.0/8')\n"
        "    batch.count('dns_dropped', int(dns.sum()))\n"
        "    return ~dns\n")
    text = '[pipeline]\nname = "dnsf"\nhugepages = "never"\nbuffers_per_queue = 2048\n'
    for port, peer, gen in (("p0", "p1", p0_generator), ("p1", "p0", p1_generator)):
        text += (f'\n[[ports]]\nname = "{port}"\ndriver = "sim"\nforward_to = "{peer}"\nrx_ring_size = 512\n'
                 f'tx_ring_size = 512\n\n[ports.generator]\n{gen}\n\n[ports.sink]\nmode = "verify"\n')
    text += '\n[workers]\nfunction = "dnsf.py:dns_outside"\n'
    path = tmp_path / "dnsf.toml"
    path.write_text(text)
    return path


def outside_dns(frames) -> np.ndarray:
    """Which frames a DNS filter for 10.0.0.0/8 drops (UDP to port 53 from outside 10.0.0.0/8), by scapy."""
    inside = ipaddress.ip_network("10.0.0.0/8")
    out = []
    for f in frames:
        pkt = Ether(bytes(f))
        ip = pkt[IP] if IP in pkt else pkt[IPv6] if IPv6 in pkt else None
        out.append(ip is not None and UDP in pkt and pkt[UDP].dport == 53
                   and ipaddress.ip_address(ip.src) not in inside)
    return np.array(out)


def test_a_dns_filter_on_the_sim_path_drops_exactly_the_outside_queries(tmp_path):
    """p0's generator is shaped (sources in and outside 10/8, IPv4 and IPv6, DNS among other ports, a protocol
    mix); p1's replays a capture with its sources varied.  The worker drops UDP to port 53 from outside
    10.0.0.0/8: the drops are exactly the packets of the flows that match, every other frame verifies."""
    dns_pcap(tmp_path / "dns.pcap")
    per_flow = 50
    p0 = ('count = 1000\nflows = 20\nsrc = ["10.0.0.0/8", "198.51.100.0/24", "2001:db8:1::/48"]\n'
          'dst = ["192.168.1.0/24", "2001:db8::/64"]\ndport = [53, 80]\nmix = {udp = 0.8, tcp = 0.2}\nseed = 3')
    p1 = 'count = 600\nflows = 12\ntemplate = "dns.pcap"\nsrc = ["10.0.0.0/8", "203.0.113.0/24"]'
    cfg = parse_pipeline(write_pipeline(tmp_path, p0, p1).read_text(), tmp_path / "dnsf.toml")
    g0 = cfg.ports[0].to_sim_config().generator.make(0, SRC_MAC, DST_MAC)
    g1 = cfg.ports[1].to_sim_config().generator.make(1, SRC_MAC, DST_MAC)
    drop0 = int(outside_dns(g0.templates).sum()) * per_flow
    drop1 = int(outside_dns(g1.templates).sum()) * per_flow
    assert 0 < drop0 < 1000 and 0 < drop1 < 600             # both kinds of flows are there: the test can fail
    res = subprocess.run([*IXYPIPE, "run", str(tmp_path / "dnsf.toml"), "--json"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["stop_reason"] == "all sources finished" and s["ok"]
    assert s["received"] == 1600 and s["drops"]["worker"] == drop0 + drop1
    assert s["counters"]["dns_dropped"] == drop0 + drop1
    assert s["sim"]["p1"]["sink_received"] == 1000 - drop0 and s["sim"]["p0"]["sink_received"] == 600 - drop1
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_corrupt"] == sim["sink_lost"] == sim["sink_reordered"] == 0, sim


TOML = '[[ports]]\nname = "p0"\ndriver = "sim"\n\n[ports.generator]\n{}\n'


@pytest.mark.parametrize("lines, key, message", [
    ('src = "10.0.0.1/8"', "src", "'10.0.0.1/8' has bits set past its prefix length: did you mean '10.0.0.0/8'?"),
    ('dst = ["192.168.1.0/24", 7]', "dst", "must be networks such as '10.0.0.0/8'"),
    ('dport = "80-70"', "dport", "must be ports 0..65535: a port (53), a range ('1024-65535', low to high)"),
    ("sport = 70000", "sport", "got 70000"),
    ('protocol = "sctp"', "protocol", "must be one of 'udp', 'tcp', 'icmp', got 'sctp'"),
    ('protocol = "udp"\nmix = {tcp = 1}', "mix", "give protocol or mix, not both"),
    ("mix = {udp = 0.5, tcp = 0}", "mix", "the weight of tcp must be a number > 0, got 0"),
    ("mix = {udp = 1, quic = 1}", "mix", "protocols must be among 'udp', 'tcp', 'icmp', got 'quic'"),
    ('src = "10.0.0.0/8"\ndst = "2001:db8::/64"', "dst", "src holds IPv4 networks and dst IPv6"),
    ('profile = "ipv6"\nsrc = "10.0.0.0/8"', "src", "profile 'ipv6' makes IPv6 frames, but src holds IPv4"),
    ('profile = "tcp-syn"\nprotocol = "udp"', "protocol", "profile 'tcp-syn' fixes the protocol"),
    ('profile = "runt"\ndport = 53', "dport", "profile 'runt' makes frames cut short"),
    ('packet_size = 60\ndst = "2001:db8::/64"\nprotocol = "tcp"', "packet_size", "from 92 to 9018, got 60"),
    ("seed = -1", "seed", "must be a whole number from 0 to 4294967295, got -1"),
    ('template = "missing.pcap"', "template", "no such file"),
    ('template = "t.pcap"\npacket_size = 100', "packet_size", "a template's frames keep their own sizes"),
])
def test_bad_shaping_keys_are_named_with_their_line(tmp_path, lines, key, message):
    dns_pcap(tmp_path / "t.pcap")
    with pytest.raises(ConfigError) as err:
        parse_pipeline(TOML.format(lines), tmp_path / "p.toml")
    assert err.value.key == f"ports[0].generator.{key}" and err.value.line is not None
    assert message in err.value.message, err.value.message


def test_shaping_defaults_the_packet_size_and_a_template_the_flows(tmp_path):
    dns_pcap(tmp_path / "t.pcap")
    g = parse_pipeline(TOML.format('dst = "2001:db8::/64"\nmix = {udp = 1, tcp = 1}'), tmp_path / "p.toml")
    assert g.ports[0].generator.packet_size == 92
    t = parse_pipeline(TOML.format('template = "t.pcap"'), tmp_path / "p.toml").ports[0].generator
    assert (t.flows, t.template, t.shape) == (3, str(tmp_path / "t.pcap"), None)


def test_gen_writes_shaped_frames_to_a_pcap(tmp_path):
    out = tmp_path / "g.pcap"
    res = CliRunner().invoke(main, ["gen", "--pcap", str(out), "--count", "40", "--flows", "10", "--hugepages",
                                    "never", "--src", "198.51.100.0/24", "--dst", "192.168.1.0/24", "--dport",
                                    "53", "--mix", "udp=0.5,icmp=0.5"])
    assert res.exit_code == 0, res.output
    assert ("generating 60-byte IPv4/UDP frames (src 198.51.100.0/24, dst 192.168.1.0/24, dport 53, mix "
            "udp=0.5,icmp=0.5), 10 flows, as fast as it goes onto pcap") in res.output
    pkts = [Ether(f) for f in read_pcap(out).packets()]
    assert len(pkts) == 40
    assert Counter("udp" if UDP in p else "icmp" if ICMP in p else "?" for p in pkts) == {"udp": 20, "icmp": 20}
    assert all(p[UDP].dport == 53 for p in pkts if UDP in p)


def test_gen_replays_a_template_onto_a_verifying_sim_port(tmp_path):
    dns_pcap(tmp_path / "t.pcap")
    res = CliRunner().invoke(main, ["gen", "--sim", "--count", "60", "--flows", "6", "--template",
                                    str(tmp_path / "t.pcap"), "--src", "203.0.113.0/24", "--hugepages", "never"])
    assert res.exit_code == 0, res.output
    assert f"generating 3 replayed frames of {tmp_path / 't.pcap'}, 6 flows" in res.output
    assert "sink: received 60 of 60, lost 0, reordered 0, corrupt 0" in res.output


@pytest.mark.parametrize("args, message", [
    (["--dport", "99999"], "Invalid value for '--dport': must be ports 0..65535"),
    (["--src", "10.0.0.0/8", "--dst", "2001:db8::/64"], "Invalid value for '--dst': src holds IPv4 networks"),
    (["--mix", "udp=x"], "Invalid value for '--mix': the weight of udp must be a number > 0"),
    (["--protocol", "tcp", "--size", "60"], "Invalid value for '--size': packet size must be 72..9018"),
    (["--template", "/nonexistent.pcap"], "Invalid value for '--template'"),
    (["--template", "{t}", "--size", "100"], "--size does not go with --template"),
])
def test_gen_names_a_bad_shaping_option(tmp_path, args, message):
    dns_pcap(tmp_path / "t.pcap")
    args = [a.format(t=tmp_path / "t.pcap") for a in args]
    res = CliRunner().invoke(main, ["gen", "--sim", "--hugepages", "never", *args])
    assert res.exit_code == 2 and message in res.output, res.output


def test_shortfall_says_what_was_asked_reached_and_what_bound_it():
    assert shortfall(100e3, 33.1e3, 5, 0.0) == ("asked 100.0 kpps, reached 33.1 kpps (33 %): bound by the port: it "
                                                "refused frames 5 times (TX ring full)")
    assert shortfall(100e3, 33.1e3, 0, 1234.0).startswith(
        "asked 100.0 kpps, reached 33.1 kpps (33 %): bound by the CPU: this process made frames as fast as it "
        "could, 1234 packets of rate credit expired unused")
    assert shortfall(100e3, 96e3, 3, 10.0) == "" and shortfall(0.0, 5.0, 3, 0.0) == ""    # kept, or no rate
    line = GenTick(1.0, 33100, 33100 * 60, 100e3, 0, 500.0).line("sim")
    assert line.startswith("[sim] 33.1 kpps, 15.9 Mbit/s; asked 100.0 kpps, reached 33.1 kpps (33 %): bound by the CPU")


def test_a_rate_beyond_any_port_is_reported_as_missed(tmp_path):
    """10 Gpps cannot be made by one process: the summary says how much was reached instead of staying silent."""
    res = CliRunner().invoke(main, ["gen", "--pcap", str(tmp_path / "o.pcap"), "--count", "20000", "--rate",
                                    "10000M", "--hugepages", "never"])
    assert res.exit_code == 0, res.output
    assert re.search(r"^rate: asked 10000\.00 Mpps, reached [\d.]+ [kM]?pps \([\d.e-]+ %\): bound by the CPU: this "
                     r"process made frames as fast as it could", res.output, re.M), res.output


def test_a_port_that_refuses_frames_is_named_as_the_bound(tmp_path):
    """TX takes one frame of every batch: the loop sees the port refuse and says so, per second and at the end."""
    session = GenSession("pcap", str(tmp_path / "o.pcap"), hugepages="never")
    try:
        real = session.dev.tx_batch
        session.dev.tx_batch = lambda q, idx: real(q, idx[:1])
        ticks = []
        result = session.run(session.generator(count=3000, rate_mpps=10000.0), batch=32, tick=ticks.append)
    finally:
        session.close()
    assert result.sent == 3000 and result.tx_full >= 3000 // 32
    assert result.shortfall.startswith("asked 10000.00 Mpps, reached ") and result.shortfall.endswith(
        f"bound by the port: it refused frames {result.tx_full} times (TX ring full)")
    assert f"rate: {result.shortfall}" in result.summary()
    assert all("bound by the port" in t.line("o") for t in ticks if t.packets)
