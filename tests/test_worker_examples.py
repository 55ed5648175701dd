"""The example workers on real packet buffers, run as the worker stage runs them: load, setup(ctx), batches, teardown.

Frames are built with scapy (a test dependency) and the results read back
with scapy: verdicts, rewritten fields, checksums, counters, files written
at teardown.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scapy", reason="scapy is a test dependency: pip install -e '.[test]'")

from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop  # noqa: E402
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import checksum  # noqa: E402

from ixypipe.memory.pktbuf import PacketBuffers  # noqa: E402
from ixypipe.pipeline.stages import verdicts  # noqa: E402
from ixypipe.workers.api import DROP, Batch, WorkerContext  # noqa: E402
from ixypipe.workers.loader import load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PORTS = ["p0", "p1", "p2"]
E = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:aa:02")


@pytest.fixture
def bufs(make_arena):
    return PacketBuffers.create(make_arena(2 << 20, hugepages_mode="never"), 128, 2048)


class Runner:
    """One worker as the stage runs it."""

    def __init__(self, bufs, spec: str, options: dict | None = None, base_dir: Path = REPO):
        self.bufs = bufs
        self.worker = load(spec, REPO)
        self.ctx = WorkerContext(0, 1, PORTS, options or {}, base_dir=str(base_dir))
        if self.worker.setup:
            self.worker.setup(self.ctx)

    def run(self, pkts, in_port: int = 0) -> list[int]:
        batch = Batch.from_frames([bytes(p) for p in pkts], in_port, 1, PORTS, ctx=self.ctx, bufs=self.bufs,
                                  first=5)
        self.idx = batch.idx
        out = verdicts(batch, self.worker.process(batch))       # an int: every packet to that port
        return np.broadcast_to(out, (batch.n,)).tolist()

    def frame(self, k: int) -> Ether:
        return Ether(self.bufs.packet(int(self.idx[k])).tobytes())

    def stop(self) -> None:
        if self.worker.teardown:
            self.worker.teardown(self.ctx)


def logic_lines(path: Path, name: str) -> int:
    """Lines of a function's body, without its docstring."""
    fn = next(n for n in ast.parse(path.read_text()).body if getattr(n, "name", None) == name)
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
    return body[-1].end_lineno - body[0].lineno + 1


def test_dns_guard_drops_udp_53_over_ipv4_and_ipv6_tagged_or_not(bufs):
    r = Runner(bufs, "examples/dns_guard.py:dns_guard")
    pkts = [
        E / IP() / UDP(sport=3333, dport=53),                                     # drop
        E / IPv6() / UDP(sport=53, dport=40000),                                  # drop (a reply)
        E / Dot1Q(vlan=10) / IP() / UDP(dport=53),                                # drop
        E / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6() / IPv6ExtHdrHopByHop() / UDP(dport=53),   # drop
        E / IP() / TCP(dport=53),                                                 # DNS over TCP: kept
        E / IP() / UDP(sport=5353, dport=5353),
        E / IP(frag=20, proto=17) / Raw(b"\x00\x35\x00\x35" + b"x" * 20),         # later fragment: no ports
        E / ARP(),
    ]
    assert r.run(pkts) == [DROP, DROP, DROP, DROP, 1, 1, 1, 1]
    assert r.ctx.counters == {"dns_dropped": 4}
    assert logic_lines(REPO / "examples" / "dns_guard.py", "dns_guard") <= 5


def test_mac_vlan_rewriter_maps_ids_keeps_priority_and_sets_the_source_mac(bufs):
    r = Runner(bufs, "examples/mac_vlan_rewrite.py:rewrite",
               {"src_mac": "02:00:00:00:00:fe", "vlan_map": {"100": 200, "7": 4095}})
    pkts = [E / Dot1Q(vlan=100, prio=6) / IP() / UDP(), E / Dot1Q(vlan=101) / IP(),
            E / Dot1AD(vlan=7) / Dot1Q(vlan=100) / IPv6(), E / IP() / TCP()]
    assert r.run(pkts) == [1, 1, 1, 1]
    got = [r.frame(k) for k in range(4)]
    assert all(f.src == "02:00:00:00:00:fe" and f.dst == "02:00:00:00:00:01" for f in got)
    assert (got[0][Dot1Q].vlan, got[0][Dot1Q].prio, got[1][Dot1Q].vlan) == (200, 6, 101)
    assert (got[2][Dot1AD].vlan, got[2].payload.payload.vlan) == (4095, 100)      # only the outer tag is mapped
    assert bytes(got[3])[12:] == bytes(pkts[3])[12:]
    assert r.ctx.counters == {"vlan_rewritten": 2}
    with pytest.raises(ValueError, match="^vlan_map: 5 -> 4096: VLAN ids are 0..4095$"):
        Runner(bufs, "examples/mac_vlan_rewrite.py:rewrite", {"vlan_map": {"5": 4096}})


def test_flow_counter_counts_each_flow_and_writes_its_table_at_teardown(bufs, tmp_path):
    r = Runner(bufs, "examples/flow_counter.py:FlowCounter", {"output": "flows.csv"}, tmp_path)
    a = E / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    b = E / Dot1Q(vlan=3) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2)
    c = E / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=5, dport=6) / Raw(b"x" * 100)
    r.run([a, b, a, c, a])
    r.run([c, b / Raw(b"y" * 50)])
    table = {row[:5]: row[5:] for row in r.worker.process.__self__.table()}
    assert table == {
        ("10.0.0.1", "10.0.0.2", 17, 1, 2): (3, 3 * len(a)),
        ("10.0.0.1", "10.0.0.2", 6, 1, 2): (2, len(b) + len(b / Raw(b"y" * 50))),
        ("2001:db8::1", "2001:db8::2", 17, 5, 6): (2, 2 * len(c)),
    }
    assert r.ctx.counters == {"flows": 3, "flow_packets": 7,
                              "flow_bytes": 3 * len(a) + 2 * len(c) + len(b) + len(b / Raw(b"y" * 50))}
    r.stop()
    rows = list(csv.reader((tmp_path / "flows-0.csv").open()))
    assert rows[0] == ["src", "dst", "proto", "sport", "dport", "packets", "bytes"]
    assert sorted(rows[1:]) == sorted([list(map(str, k + v)) for k, v in table.items()])


def test_acl_from_a_csv_file_first_match_wins(bufs, tmp_path):
    (tmp_path / "acl.csv").write_text("action,field,prefix,proto,ports\n"
                                      "deny,src,10.66.0.0/16,any,any\n"
                                      "allow,dst,192.168.1.0/24,tcp,22\n"
                                      "deny,dst,192.168.1.0/24,tcp,1-1023\n"
                                      "deny,dst,0.0.0.0/0,udp,53\n")
    r = Runner(bufs, "examples/acl.py:acl", {"acl": "acl.csv", "default": "allow"}, tmp_path)
    pkts = [
        E / IP(src="10.66.1.1", dst="192.168.1.5") / TCP(dport=22),    # rule 1 first: deny
        E / IP(src="10.1.1.1", dst="192.168.1.5") / TCP(dport=22),     # allow
        E / IP(src="10.1.1.1", dst="192.168.1.5") / TCP(dport=80),     # deny (1-1023)
        E / IP(src="10.1.1.1", dst="192.168.1.5") / TCP(dport=8080),   # default allow
        E / IP(src="10.1.1.1", dst="8.8.8.8") / UDP(dport=53),         # deny
        E / IP(src="10.1.1.1", dst="192.168.2.1") / TCP(dport=80),     # default allow
        E / IPv6() / UDP(dport=53),                                    # not IPv4: default
    ]
    assert r.run(pkts) == [DROP, 1, DROP, 1, DROP, 1, 1]
    assert r.ctx.counters == {"acl_allowed": 4, "acl_denied": 3}
    (tmp_path / "bad.csv").write_text("deny,src,10.0.0.300/8,any,any\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: 'deny,src,10.0.0.300/8,any,any': "):
        Runner(bufs, "examples/acl.py:acl", {"acl": "bad.csv"}, tmp_path)


ROUTES = [
    {"prefix": "10.0.0.0/8", "port": "p1", "mac": "02:00:00:00:01:01"},
    {"prefix": "10.1.0.0/16", "port": "p2", "mac": "02:00:00:00:02:02"},
    {"prefix": "10.1.2.0/24", "port": "p0", "mac": "02:00:00:00:00:24"},
    {"prefix": "192.0.2.7/32", "port": "p2", "mac": "02:00:00:00:00:32"},
]


def test_router_longest_prefix_ttl_and_checksum(bufs):
    r = Runner(bufs, "examples/router.py:route", {"routes": ROUTES})
    pkts = [
        E / IP(dst="10.9.9.9", ttl=64) / UDP(),          # /8 -> p1
        E / IP(dst="10.1.9.9", ttl=10) / TCP(),          # /16 -> p2
        E / IP(dst="10.1.2.3", ttl=2) / ICMP(),          # /24 -> p0
        E / IP(dst="192.0.2.7", ttl=5) / UDP(),          # /32 -> p2
        E / IP(dst="192.0.2.8", ttl=5) / UDP(),          # no route
        E / IP(dst="10.1.2.3", ttl=1) / UDP(),           # expired
        E / IPv6() / UDP(),                               # not IPv4
    ]
    assert r.run(pkts) == [1, 2, 0, 2, DROP, DROP, DROP]
    got = [r.frame(k) for k in range(7)]
    assert [got[k][IP].ttl for k in range(6)] == [63, 9, 1, 4, 5, 1]
    assert [got[k].dst for k in range(4)] == ["02:00:00:00:01:01", "02:00:00:00:02:02", "02:00:00:00:00:24",
                                              "02:00:00:00:00:32"]
    assert all(checksum(bytes(got[k][IP])[:20]) == 0 for k in range(6))
    assert r.ctx.counters == {"routed": 4, "ttl_expired": 1, "no_route": 1, "not_ipv4": 1}
    with pytest.raises(ValueError, match="^route 10.0.0.0/8: no port 'p9'; ports: p0, p1, p2$"):
        Runner(bufs, "examples/router.py:route", {"routes": [{**ROUTES[0], "port": "p9"}]})


def test_router_lookup_matches_a_brute_force_longest_prefix_match():
    import ipaddress
    import random

    from ixypipe.workers.loader import load_worker
    route_fn = load_worker("examples/router.py:route", REPO)
    module = route_fn.__globals__
    rng = random.Random(7)
    routes = [{"prefix": str(ipaddress.IPv4Network((rng.getrandbits(32), n), strict=False)), "port": "p0",
               "mac": "02:00:00:00:00:00"} for n in [rng.randint(0, 32) for _ in range(300)]]
    ctx = WorkerContext(0, 1, PORTS, {"routes": routes})
    module["setup"](ctx)
    dst = np.array([rng.getrandbits(32) for _ in range(2000)], np.uint32)
    got = module["lookup"](ctx.state["table"], dst)
    nets = [ipaddress.IPv4Network(x["prefix"]) for x in routes]
    for d, g in zip(dst.tolist(), got.tolist(), strict=True):
        matches = [k for k, n in enumerate(nets) if ipaddress.IPv4Address(d) in n]
        best = max((nets[k].prefixlen for k in matches), default=None)
        if best is None:
            assert g == -1
        else:
            assert nets[g].prefixlen == best and ipaddress.IPv4Address(d) in nets[g]


def test_the_readme_worker_drops_dns_rewrites_the_mac_and_counts_flow_bytes_in_ten_lines(bufs, tmp_path):
    import re
    section = (REPO / "README.md").read_text().split("## Writing a worker", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "guard.py").write_text(code)
    assert logic_lines(tmp_path / "guard.py", "guard") <= 10
    r = Runner(bufs, str(tmp_path / "guard.py") + ":guard")
    a = E / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80)
    pkts = [a, E / Dot1Q(vlan=4) / IP() / UDP(dport=53), E / IPv6() / UDP(sport=53), a / Raw(b"x" * 40),
            E / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=5, dport=6)]
    assert r.run(pkts) == [1, DROP, DROP, 1, 1]
    assert all(r.frame(k).src == "02:00:00:00:00:fe" for k in range(5))
    assert r.ctx.counters == {"10.0.0.1:1000 > 10.0.0.2:80 proto 6 bytes": 2 * len(a) + 40,
                              "10.0.0.3:5 > 10.0.0.4:6 proto 17 bytes": len(pkts[4])}
