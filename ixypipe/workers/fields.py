"""One packet's parsed headers as a small record: what ``@per_packet`` hands a ``handle(pkt, f)`` function.

:func:`packet_fields` turns the batch's parsed header vectors (headers.py:
VLAN tags, IPv4 options and IPv6 extension headers already walked) into
one :class:`PacketFields` per packet, so a per-packet function reads
``f.dport`` and ``f.src`` instead of offsets into raw bytes.  The vectors
are computed for the whole batch at once; only the records are per packet.
``ixypipe try`` prints its one-line packet summaries from the same records.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

import numpy as np

from ixypipe.protocols import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    TCP_DATA_OFF,
    UDP_HEADER_LEN,
)
from ixypipe.workers.headers import Headers

PROTO_NAMES = {IPPROTO_TCP: "TCP", IPPROTO_UDP: "UDP", IPPROTO_SCTP: "SCTP", IPPROTO_ICMP: "ICMP",
               IPPROTO_ICMPV6: "ICMPv6"}


class PacketFields(NamedTuple):
    """A packet's headers; None where the packet has no such layer (or it is cut short)."""

    eth_type: int | None             # EtherType after any VLAN tags (0x0800, 0x86DD, ...)
    vlans: tuple[int, ...]           # VLAN ids, outer first (empty: untagged)
    ip: int | None                   # 4, 6 or None
    src: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    proto: int | None                # IPv4 protocol / IPv6 upper-layer header (17 UDP, 6 TCP, ...)
    sport: int | None                # TCP, UDP, SCTP (first fragment only)
    dport: int | None
    l3_off: int | None               # where the IP header starts
    l4_off: int | None               # where the TCP/UDP/... header starts
    payload_off: int | None          # where the TCP or UDP payload starts (a DNS message, say)

    @property
    def vlan(self) -> int | None:
        """The outer VLAN id, or None."""
        return self.vlans[0] if self.vlans else None

    def summary(self) -> str:
        """One line: 'VLAN 7 IPv4 10.1.2.3:53 > 192.0.2.1:5000 UDP'."""
        tags = "".join(f"VLAN {v} " for v in self.vlans)
        if self.eth_type is None:
            return "not Ethernet (shorter than 14 bytes)"
        if self.ip is None:
            return f"{tags}EtherType 0x{self.eth_type:04x}"

        def end(addr, port):
            text = f"[{addr}]" if self.ip == 6 and port is not None else str(addr)
            return text if port is None else f"{text}:{port}"

        proto = PROTO_NAMES.get(self.proto, f"proto {self.proto}")
        return f"{tags}IPv{self.ip} {end(self.src, self.sport)} > {end(self.dst, self.dport)} {proto}"


def packet_fields(h: Headers) -> list[PacketFields]:
    """One PacketFields per packet of the parsed batch ``h``."""
    eth, v4, v6, l4 = h.eth, h.ipv4, h.ipv6, h.l4
    tcp_words = (h.u8(l4.off + TCP_DATA_OFF) >> np.uint8(4)).astype(np.int64)
    payload = np.where(l4.udp, l4.off + UDP_HEADER_LEN, np.where(l4.tcp, l4.off + tcp_words * 4, -1))
    rows = zip(eth.valid.tolist(), eth.type.tolist(), eth.vlans.tolist(), eth.vlan_id.tolist(), eth.l3.tolist(),
               v4.valid.tolist(), v4.src.tolist(), v4.dst.tolist(), v6.valid.tolist(), l4.proto.tolist(),
               l4.ports.tolist(), l4.sport.tolist(), l4.dport.tolist(), l4.off.tolist(), payload.tolist(),
               strict=True)
    found = []
    for i, (ok, etype, nvlan, vids, l3, is4, s4, d4, is6, proto, ports, sp, dp, l4off, pay) in enumerate(rows):
        if not ok:
            found.append(PacketFields(None, (), None, None, None, None, None, None, None, None, None))
            continue
        if is4:
            ip, src, dst = 4, ipaddress.IPv4Address(s4), ipaddress.IPv4Address(d4)
        elif is6:
            ip, src, dst = 6, ipaddress.IPv6Address(v6.src[i].tobytes()), ipaddress.IPv6Address(v6.dst[i].tobytes())
        else:
            ip = src = dst = None
        found.append(PacketFields(etype, tuple(vids[:nvlan]), ip, src, dst, proto if ip else None,
                                  sp if ports else None, dp if ports else None, l3 if ip else None,
                                  l4off if ip else None, pay if pay >= 0 else None))
    return found
