"""Worker speed: the full L2-L4 header parse of a batch, and each example worker, beside dpkt and scapy.

One batch of mixed traffic (the test corpus: VLAN, QinQ, IPv4 with options
and fragments, IPv6 with extension headers, TCP/UDP/SCTP/ICMP, ARP, runts;
repeated to --batch packets) sits in packet buffers of a /dev/shm arena, as
in a worker.  The script times, in CPU time per packet (time.process_time),
in the same run:

* the header parse of every layer: compiled (numba, when installed) and numpy;
* dpkt and scapy dissecting the same packets one by one, reading the same
  fields (EtherType after the tags, IP addresses, TTL, protocol, ports, flags);
* each example worker (dns_guard, mac_vlan_rewrite, flow_counter, acl,
  router) on the batch, its parse included (a fresh Batch each time).

The issue's target: <= 100 ns per packet for the parse at batch 256, and
>= 50x faster than dpkt.  dpkt and scapy come with the ``test`` extra.

    python3 bench/worker_bench.py [--batch 256] [--seconds 0.5] [--json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))          # tests/support/packets.py builds the corpus

from ixypipe.memory.arena import Arena  # noqa: E402
from ixypipe.memory.pktbuf import PacketBuffers  # noqa: E402
from ixypipe.workers import headers, headers_jit  # noqa: E402
from ixypipe.workers.api import Batch, WorkerContext  # noqa: E402
from ixypipe.workers.loader import load  # noqa: E402

PORTS = ["p0", "p1", "p2"]
TARGET_NS = 100
TARGET_VS_DPKT = 50


def cpu_ns_per_packet(fn, packets: int, seconds: float, setup=None) -> float:
    """CPU ns per packet of ``fn()``, repeated for about ``seconds`` of CPU (``setup()`` untimed)."""
    for _ in range(3):                  # warm up (a compiled kernel loads here)
        if setup:
            setup()
        fn()
    spent, runs = 0.0, 0
    while spent < seconds:
        if setup:
            setup()
        t0 = time.process_time()
        fn()
        spent += time.process_time() - t0
        runs += 1
    return spent / runs / packets * 1e9


def dpkt_parse(frames: list[bytes]):
    import dpkt

    def run():
        for f in frames:
            try:
                eth = dpkt.ethernet.Ethernet(f)
            except (dpkt.UnpackError, dpkt.NeedData):
                continue
            ip = eth.data
            if isinstance(ip, dpkt.ip.IP):
                _ = (eth.type, ip.src, ip.dst, ip.ttl, ip.p, ip.offset, ip.mf, ip.sum)
            elif isinstance(ip, dpkt.ip6.IP6):
                _ = (eth.type, ip.src, ip.dst, ip.hlim, ip.nxt)
            else:
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP | dpkt.sctp.SCTP):
                _ = (l4.sport, l4.dport)
                if isinstance(l4, dpkt.tcp.TCP):
                    _ = l4.flags
            elif isinstance(l4, dpkt.icmp.ICMP | dpkt.icmp6.ICMP6):
                _ = (l4.type, l4.code)
    return run


def scapy_parse(frames: list[bytes]):
    import logging
    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.layers.sctp import SCTP

    def run():
        for f in frames:
            try:
                p = Ether(f)
            except Exception:           # scapy raises on runts shorter than a field it wants
                continue
            ip = p.getlayer(IP) or p.getlayer(IPv6)
            if ip is None:
                continue
            _ = (ip.src, ip.dst)
            for layer in (TCP, UDP, SCTP):
                if layer in p:
                    _ = (p[layer].sport, p[layer].dport)
            if ICMP in p:
                _ = (p[ICMP].type, p[ICMP].code)
    return run


EXAMPLES = [
    ("dns_guard", "examples/dns_guard.py:dns_guard", {}),
    ("mac_vlan_rewrite", "examples/mac_vlan_rewrite.py:rewrite",
     {"src_mac": "02:00:00:00:00:fe", "vlan_map": {"100": 200, "200": 100}}),
    ("flow_counter", "examples/flow_counter.py:FlowCounter", {}),
    ("acl", "examples/acl.py:acl", {"acl": "acl.csv"}),
    ("router", "examples/router.py:route", {"routes": [
        {"prefix": f"10.{k}.0.0/16", "port": PORTS[k % 3], "mac": "02:00:00:00:00:01"} for k in range(200)]
        + [{"prefix": "0.0.0.0/0", "port": "p1", "mac": "02:00:00:00:00:02"},
           {"prefix": "192.168.1.0/24", "port": "p2", "mac": "02:00:00:00:00:03"}]}),
]
ACL_CSV = "action,field,prefix,proto,ports\ndeny,src,10.66.0.0/16,any,any\nallow,dst,192.168.1.0/24,tcp,22\n" \
          "deny,dst,192.168.1.0/24,tcp,1-1023\ndeny,dst,0.0.0.0/0,udp,53\n"


@click.command()
@click.option("--batch", default=256, show_default=True, help="packets per batch")
@click.option("--seconds", default=0.5, show_default=True, help="CPU seconds per measurement")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of the table")
def main(batch: int, seconds: float, as_json: bool) -> None:
    from tests.support.packets import corpus

    mixed = [f for f in corpus() if 0 < len(f) <= 1500]
    frames = (mixed * (batch // len(mixed) + 1))[:batch]
    arena = Arena.create(4 << 20, hugepages_mode="never", tag="bench")
    try:
        bufs = PacketBuffers.create(arena, max(batch, 64) + 8, 2048)
        idx = np.arange(8, 8 + batch, dtype=np.uint32)
        for i, f in zip(idx, frames, strict=True):
            bufs.write_packet(int(i), f)
        saved = bufs.raw[idx].copy()
        flat = bufs.raw.reshape(-1)
        base = idx.astype(np.int64) * bufs.buf_size + (bufs.buf_size - bufs.max_data)
        lengths = bufs.length[idx].astype(np.int64)
        res: dict[str, float] = {}
        if headers_jit.kernel is not None:
            res["parse, compiled (numba)"] = cpu_ns_per_packet(
                lambda: headers.parse(flat, base, lengths, bufs.max_data, True).parse_all(), batch, seconds)
        res["parse, numpy"] = cpu_ns_per_packet(
            lambda: headers.parse(flat, base, lengths, bufs.max_data, False).parse_all(), batch, seconds)
        res["dpkt, one by one"] = cpu_ns_per_packet(dpkt_parse(frames), batch, seconds)
        res["scapy, one by one"] = cpu_ns_per_packet(scapy_parse(frames), batch, min(seconds, 0.3))
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "acl.csv").write_text(ACL_CSV)
            for name, spec, options in EXAMPLES:
                worker = load(spec, REPO)
                ctx = WorkerContext(0, 1, PORTS, options, base_dir=tmp)
                if worker.setup:
                    worker.setup(ctx)

                def restore():
                    bufs.raw[idx] = saved

                def run(worker=worker, ctx=ctx):
                    worker.process(Batch(bufs, idx, 0, 1, PORTS, ctx.counters, ctx))
                res[f"example {name}"] = cpu_ns_per_packet(run, batch, seconds, restore)
    finally:
        arena.destroy()
    parse = res.get("parse, compiled (numba)", res["parse, numpy"])
    ratio = res["dpkt, one by one"] / parse
    summary = {"batch": batch, "ns_per_packet": {k: round(v, 1) for k, v in res.items()},
               "parse_vs_dpkt": round(ratio, 1), "parse_vs_scapy": round(res["scapy, one by one"] / parse, 1),
               "target_parse_ns": TARGET_NS, "target_vs_dpkt": TARGET_VS_DPKT,
               "targets_met": parse <= TARGET_NS and ratio >= TARGET_VS_DPKT}
    if as_json:
        print(json.dumps(summary))
        return
    print(f"{batch} mixed packets per batch, CPU time per packet (process_time), same run")
    for k, v in res.items():
        print(f"  {k:<28} {v:>10,.1f} ns/packet")
    print(f"parse vs dpkt: {ratio:,.1f}x faster, vs scapy: {summary['parse_vs_scapy']:,.0f}x "
          f"(target: <= {TARGET_NS} ns/packet and >= {TARGET_VS_DPKT}x dpkt: "
          f"{'met' if summary['targets_met'] else 'NOT met'})")


if __name__ == "__main__":
    main()
