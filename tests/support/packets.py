"""Mixed traffic built with scapy, and what scapy dissects from it (the header tests and bench/worker_bench.py).

``corpus()`` is a fixed list of frames: VLAN and QinQ, IPv4 with options, bad
checksums and fragments, IPv6 with every extension header the parser walks,
TCP/UDP/SCTP/ICMP/ICMPv6, ARP, runts, jumbo frames.  ``expected(frame, cut)``
says what each parsed field must be, from scapy's own dissection of the
frame (``cut``: the frame truncated to that many bytes; a layer whose header
no longer fits is invalid and its fields are 0).  Needs scapy (the ``test``
extra); importing this module without it raises ImportError.
"""

from __future__ import annotations

import logging

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6DestUnreach,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    _ICMPv6,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import checksum  # noqa: E402

from ixypipe.protocols import (  # noqa: E402
    ICMP_HEADER_LEN,
    ICMPV6_HEADER_LEN,
    IP6_MAX_EXT_HEADERS,
    IPV6_HEADER_LEN,
    NO_L4,
    SCTP_HEADER_LEN,
    UDP_HEADER_LEN,
)

MAC = dict(dst="02:00:00:00:00:01", src="02:00:00:00:aa:02")
EXT6 = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrFragment, IPv6ExtHdrDestOpt)


def corpus() -> list[bytes]:
    """About 40 frames of mixed traffic (bytes)."""
    e = Ether(**MAC)
    v4 = IP(src="10.0.0.1", dst="192.168.1.2", ttl=64)
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::53", hlim=7)
    pkts = [
        e / v4 / UDP(sport=1234, dport=53) / Raw(b"q" * 20),
        e / v4 / TCP(sport=443, dport=51000, flags="SA") / Raw(b"x" * 10),
        e / v4 / ICMP(type=8, code=0) / Raw(b"ping"),
        e / v4 / SCTP(sport=2905, dport=2905),
        e / Dot1Q(vlan=100, prio=5) / v4 / UDP(sport=53, dport=4000),
        e / Dot1AD(vlan=200) / Dot1Q(vlan=300) / v4 / UDP(sport=5353, dport=53),
        e / Dot1AD(vlan=4095, dei=1) / Dot1Q(vlan=1) / v6 / TCP(dport=22, flags="FPU"),
        e / Dot1Q(vlan=7) / Dot1Q(vlan=8) / Dot1Q(vlan=9) / v4 / UDP(),          # a third tag: not walked
        e / IP(src="1.2.3.4", dst="5.6.7.8", options=[IPOption_NOP()] * 4) / UDP(sport=9, dport=53),
        e / IP(options=[IPOption_RR(routers=["1.1.1.1"] * 9)]) / TCP(sport=1, dport=2, flags="S"),   # IHL 15
        e / IP(chksum=0x1234) / UDP(),                                                              # bad checksum
        e / IP(flags="MF", frag=0, proto=17) / UDP(sport=7, dport=53) / Raw(b"a" * 32),             # first fragment
        e / IP(flags="MF", frag=100, proto=17) / Raw(b"b" * 40),                                    # later fragment
        e / IP(frag=200, proto=6) / Raw(b"c" * 40),                                                 # last fragment
        e / IP(ttl=1) / ICMP(type=11, code=0) / IP() / UDP(),
        e / IP(ttl=0) / TCP(flags="R", dataofs=8, options=[("NOP", None)] * 12),
        e / v6 / UDP(sport=53, dport=53000),
        e / v6 / ICMPv6EchoRequest(),
        e / v6 / ICMPv6DestUnreach(code=4) / IPv6() / UDP(),
        e / v6 / IPv6ExtHdrHopByHop() / UDP(dport=53),
        e / v6 / IPv6ExtHdrRouting(addresses=["2001:db8::2", "2001:db8::3"]) / TCP(dport=80, flags="A"),
        e / v6 / IPv6ExtHdrDestOpt() / SCTP(sport=1, dport=2),
        e / v6 / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrFragment(m=1)
        / IPv6ExtHdrDestOpt() / UDP(sport=11, dport=53),
        e / v6 / IPv6ExtHdrFragment(offset=10, m=1, nh=17) / Raw(b"d" * 24),                       # later fragment
        e / v6 / IPv6ExtHdrFragment(offset=0, m=0) / ICMPv6EchoRequest(),                          # atomic fragment
        e / Dot1Q(vlan=5) / v6 / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(),
        e / v6 / Raw(b"\x00" * 8),                                                                  # next header 59
        e / ARP(),
        e / Dot1Q(vlan=12) / ARP(),
        e / v4 / UDP(sport=1, dport=53) / Raw(b"J" * 8000),                                        # jumbo
        e / v6 / TCP(sport=2, dport=3, flags="SEC") / Raw(b"J" * 8800),                             # jumbo, ECE|CWR
        e / IP(version=5) / UDP(),                                                                  # not IPv4
        e / IP(ihl=4) / UDP(),                                                                      # IHL < 5
        e / IP(len=10) / UDP(),                                                                     # total length < IHL
        e / IPv6(version=4) / UDP(),                                                                # not IPv6
        e / v4 / TCP(dataofs=4),                                                                    # data offset < 5
        e / IP(proto=58) / Raw(b"\x80\x00\x00\x00" * 2),                                            # ICMPv6 over IPv4
        e / IPv6(nh=1) / Raw(b"\x08\x00\x00\x00" * 2),                                              # ICMP over IPv6
    ]
    frames = [bytes(p) for p in pkts]
    frames += [bytes(pkts[0])[:10], bytes(pkts[4])[:16], b"", bytes(pkts[1])[:14 + 20 + 12]]     # runts, cut
    return frames


def _tci(tag) -> int:
    return (tag.prio << 13) | (tag.dei << 12) | tag.vlan


def expected(frame: bytes, cut: int | None = None) -> dict:
    """Every parsed field of ``frame[:cut]`` from scapy's dissection of the whole ``frame``."""
    n = len(frame) if cut is None else cut
    p = Ether(frame) if len(frame) >= 14 else None
    x = dict(eth_valid=False, vlans=0, tci=[0, 0], type=0, l3=14,
             v4=False, header_len=0, total_len=0, ttl=0, v4proto=0, src4=0, dst4=0, frag4=0, mf4=False, csum_ok=False,
             v6=False, hop_limit=0, src6=bytes(16), dst6=bytes(16), ext_ok=False, nh=0, frag6=False, frag6_off=0,
             mf6=False, proto=NO_L4, first=False, tcp=False, udp=False, sctp=False, icmp=False, sport=0, dport=0,
             flags=0, icmp_type=0, icmp_code=0)
    if p is None or n < 14:
        return x
    x["eth_valid"] = True
    x["type"] = p.type
    layer, off = p.payload, 14
    while isinstance(layer, Dot1Q) and x["vlans"] < 2 and n >= off + 4:      # Dot1AD is a Dot1Q
        x["tci"][x["vlans"]] = _tci(layer)
        x["vlans"] += 1
        x["type"] = layer.type
        layer, off = layer.payload, off + 4
    x["l3"] = off
    if isinstance(layer, IP) and x["type"] == 0x0800:
        hl = layer.ihl * 4
        if layer.version == 4 and hl >= 20 and n >= off + hl and layer.len >= hl:
            x.update(v4=True, header_len=hl, total_len=layer.len, ttl=layer.ttl, v4proto=layer.proto,
                     src4=_ip4(layer.src), dst4=_ip4(layer.dst), frag4=layer.frag, mf4=bool(layer.flags.MF),
                     csum_ok=checksum(frame[off:off + hl]) == 0, proto=layer.proto, first=layer.frag == 0)
            _l4(x, layer.payload, off + hl, n, six=False)
    elif isinstance(layer, IPv6) and x["type"] == 0x86DD and layer.version == 6 and n >= off + IPV6_HEADER_LEN:
        x.update(v6=True, hop_limit=layer.hlim, src6=_ip6(layer.src), dst6=_ip6(layer.dst))
        nh, at, ext = layer.nh, off + IPV6_HEADER_LEN, layer.payload
        walked, frag = 0, None
        while nh in (0, 43, 44, 60) and walked <= IP6_MAX_EXT_HEADERS and not (frag and frag.offset):
            size = 8 if nh == 44 else (len(bytes(ext)) - len(bytes(ext.payload)))
            if not isinstance(ext, EXT6) or n < at + max(size, 2):
                return x
            if nh == 44:
                frag = ext
            nh, at, ext, walked = ext.nh, at + size, ext.payload, walked + 1
        if nh in (0, 43, 44, 60) and not (frag and frag.offset):
            return x
        x.update(ext_ok=True, nh=nh, proto=nh, frag6=frag is not None,
                 frag6_off=frag.offset if frag is not None else 0, mf6=bool(frag.m) if frag is not None else False)
        x["first"] = x["frag6_off"] == 0
        _l4(x, ext, at, n, six=True)
    return x


def _l4(x: dict, layer, off: int, n: int, six: bool) -> None:
    x["l4"] = off
    if not x["first"]:
        return
    if isinstance(layer, TCP) and layer.dataofs >= 5 and n >= off + layer.dataofs * 4:
        x.update(tcp=True, sport=layer.sport, dport=layer.dport, flags=int(layer.flags))
    elif isinstance(layer, UDP) and n >= off + UDP_HEADER_LEN:
        x.update(udp=True, sport=layer.sport, dport=layer.dport)
    elif isinstance(layer, SCTP) and n >= off + SCTP_HEADER_LEN:
        x.update(sctp=True, sport=layer.sport, dport=layer.dport)
    elif not six and isinstance(layer, ICMP) and n >= off + ICMP_HEADER_LEN:
        x.update(icmp=True, icmp_type=layer.type, icmp_code=layer.code)
    elif six and isinstance(layer, _ICMPv6) and n >= off + ICMPV6_HEADER_LEN:
        x.update(icmp=True, icmp_type=layer.type, icmp_code=layer.code)


def _ip4(addr: str) -> int:
    a, b, c, d = (int(v) for v in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _ip6(addr: str) -> bytes:
    import socket
    return socket.inet_pton(socket.AF_INET6, addr)


def parsed(h, i: int) -> dict:
    """The same fields from parsed Headers, for packet i."""
    e, v4, v6, t = h.eth, h.ipv4, h.ipv6, h.l4
    return dict(eth_valid=bool(e.valid[i]), vlans=int(e.vlans[i]), tci=e.tci[i].tolist(), type=int(e.type[i]),
                l3=int(e.l3[i]), v4=bool(v4.valid[i]), header_len=int(v4.header_len[i]),
                total_len=int(v4.total_len[i]), ttl=int(v4.ttl[i]), v4proto=int(v4.proto[i]), src4=int(v4.src[i]),
                dst4=int(v4.dst[i]), frag4=int(v4.frag_offset[i]), mf4=bool(v4.more_fragments[i]),
                csum_ok=bool(v4.csum_ok[i]), v6=bool(v6.valid[i]), hop_limit=int(v6.hop_limit[i]),
                src6=v6.src[i].tobytes(), dst6=v6.dst[i].tobytes(), ext_ok=bool(v6.ext_ok[i]),
                nh=int(v6.next_header[i]), frag6=bool(v6.frag[i]), frag6_off=int(v6.frag_offset[i]),
                mf6=bool(v6.more_fragments[i]), proto=int(t.proto[i]), first=bool(t.first[i]), tcp=bool(t.tcp[i]),
                udp=bool(t.udp[i]), sctp=bool(t.sctp[i]), icmp=bool(t.icmp[i]), sport=int(t.sport[i]),
                dport=int(t.dport[i]), flags=int(t.tcp_flags[i]), icmp_type=int(t.icmp_type[i]),
                icmp_code=int(t.icmp_code[i]), **({"l4": int(t.off[i])} if v4.valid[i] or v6.ext_ok[i] else {}))
