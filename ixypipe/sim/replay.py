"""A capture's frames as a generator's templates (``template = "file.pcap"``), varied per flow.

Flow f replays frame f % N of the file (N frames, at most one per flow).
Its Ethernet addresses become the wire's, as for every generated frame;
where the flow's shape (sim/shape.py) gives ``src``, ``dst``, ``sport`` or
``dport``, that field of the frame is replaced by the flow's draw: an
address in IPv4 or IPv6 frames of the networks' version (802.1Q/802.1ad
tags, IPv4 options and IPv6 extension headers are walked; an IPv6 frame
with a routing header keeps its destination), a port in UDP and TCP
headers (not in fragments after the first).  The IPv4 header checksum and
a UDP or TCP checksum that was set (ICMPv6's too) are updated for the
change (RFC 1624), so every header and payload byte the network function
reads is the capture's or a valid variation of it.

The verifying sink's record goes after the frame as an Ethernet trailer:
frames shorter than 42 bytes are padded with zeros to 42, then the
18-byte record follows, outside the IP datagram (its length fields are
unchanged), so a replayed frame is 18 bytes longer than the captured one.
All this happens once per flow when the generator is built; the packets
themselves are made as every generator's are (template copy, sequence
number and checksum stamped).
"""

from __future__ import annotations

import numpy as np

from ixypipe.pcapfile import PcapError, check_input, read_pcap
from ixypipe.protocols import (
    ETH_ADDR_LEN,
    ETH_DST_OFF,
    ETH_HEADER_LEN,
    ETH_SRC_OFF,
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IP4_CSUM,
    IP4_DST,
    IP4_FRAG,
    IP4_FRAG_MASK,
    IP4_PROTO,
    IP4_SRC,
    IP4_VER_IHL,
    IP6_ADDR_LEN,
    IP6_DST,
    IP6_EXT_HEADERS,
    IP6_EXT_UNIT,
    IP6_FRAG_HEADER_LEN,
    IP6_FRAG_OFF,
    IP6_MAX_EXT_HEADERS,
    IP6_NEXT_HEADER,
    IP6_SRC,
    IPPROTO_FRAGMENT,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV6_HEADER_LEN,
    L4_DPORT,
    L4_SPORT,
    TCP_CSUM,
    TCP_HEADER_LEN,
    UDP_CSUM,
    UDP_HEADER_LEN,
    VLAN_MAX_TAGS,
    VLAN_TAG_LEN,
    VLAN_TAG_TYPES,
)
from ixypipe.sim.payload import (
    SIM_MAGIC,
    SIM_MAX_FRAME,
    SIM_MIN_FRAME,
    SIM_REC_FLOW,
    SIM_REC_GEN,
    SIM_REC_LEN,
    SIM_REC_MAGIC,
)
from ixypipe.sim.shape import FlowShape, draw_hosts, draw_ports, field_rng, spread

TEMPLATE_MIN = SIM_MIN_FRAME - SIM_REC_LEN      # 42: shorter captured frames are padded to this before the record
TEMPLATE_MAX = SIM_MAX_FRAME - SIM_REC_LEN      # the longest captured frame that still takes the record
ICMPV6_CSUM = 2


class ReplayError(ValueError):
    """A capture that cannot serve as templates; the message says why."""


def template_frames(path: str, max_frames: int) -> list[bytes]:
    """The frames of a pcap or pcapng file of Ethernet frames: 1..max_frames of them, none longer than
    TEMPLATE_MAX bytes."""
    try:
        check_input(path)
        frames = read_pcap(path).packets()
    except PcapError as exc:
        raise ReplayError(f"template {exc}") from None
    if not 1 <= len(frames) <= max_frames:
        raise ReplayError(f"template {path} holds {len(frames)} frames; a template holds 1 to {max_frames} "
                          "(one flow each at most)")
    longest = max(len(f) for f in frames)
    if longest > TEMPLATE_MAX:
        raise ReplayError(f"template {path}: a frame of {longest} bytes; with the {SIM_REC_LEN}-byte record appended "
                          f"frames are at most {SIM_MAX_FRAME} bytes, so templates at most {TEMPLATE_MAX}")
    return frames


def replayed_length(frame_len: int) -> int:
    """The length of a captured frame of ``frame_len`` bytes as the generator sends it (record appended)."""
    return max(frame_len, TEMPLATE_MIN) + SIM_REC_LEN


class _Layout:
    """Where a captured frame's fields are (-1: absent), found once per template frame."""

    def __init__(self, frame: bytes):
        self.l3 = self.l4 = self.version = self.proto = -1
        self.dst_ok = True
        n = len(frame)
        off, ethertype = ETH_TYPE_OFF, -1
        if n >= ETH_HEADER_LEN:
            ethertype = int.from_bytes(frame[off:off + 2], "big")
            for _ in range(VLAN_MAX_TAGS):
                if ethertype not in VLAN_TAG_TYPES or n < off + VLAN_TAG_LEN + 2:
                    break
                off += VLAN_TAG_LEN
                ethertype = int.from_bytes(frame[off:off + 2], "big")
        l3 = off + 2
        if ethertype == ETHERTYPE_IPV4 and n >= l3 + 20 and frame[l3 + IP4_VER_IHL] >> 4 == 4:
            ihl = (frame[l3 + IP4_VER_IHL] & 0xF) * 4
            self.l3, self.version, self.proto = l3, 4, frame[l3 + IP4_PROTO]
            first = int.from_bytes(frame[l3 + IP4_FRAG:l3 + IP4_FRAG + 2], "big") & IP4_FRAG_MASK == 0
            if first and ihl >= 20:
                self.l4 = l3 + ihl
        elif ethertype == ETHERTYPE_IPV6 and n >= l3 + IPV6_HEADER_LEN and frame[l3] >> 4 == 6:
            self.l3, self.version = l3, 6
            nh, at = frame[l3 + IP6_NEXT_HEADER], l3 + IPV6_HEADER_LEN
            for _ in range(IP6_MAX_EXT_HEADERS):
                if nh not in IP6_EXT_HEADERS or n < at + 2:
                    break
                if nh == IPPROTO_ROUTING:
                    self.dst_ok = False         # the pseudo-header's destination is the final one
                if nh == IPPROTO_FRAGMENT:
                    if n < at + IP6_FRAG_HEADER_LEN or int.from_bytes(frame[at + IP6_FRAG_OFF:at + IP6_FRAG_OFF + 2],
                                                                      "big") >> 3:
                        nh, at = -1, n              # a later fragment: no L4 header
                        break
                    nh, at = frame[at], at + IP6_FRAG_HEADER_LEN
                else:
                    nh, at = frame[at], at + (frame[at + 1] + 1) * IP6_EXT_UNIT
            self.proto = nh
            if nh not in IP6_EXT_HEADERS and at < n:
                self.l4 = at
        # the L4 checksum to keep right, and whether the ports are there
        self.ports = self.l4 >= 0 and self.proto in (IPPROTO_UDP, IPPROTO_TCP) and n >= self.l4 + (
            TCP_HEADER_LEN if self.proto == IPPROTO_TCP else UDP_HEADER_LEN)
        self.l4_csum = -1
        if self.ports:
            self.l4_csum = self.l4 + (TCP_CSUM if self.proto == IPPROTO_TCP else UDP_CSUM)
        elif self.l4 >= 0 and self.proto == IPPROTO_ICMPV6 and n >= self.l4 + 4:
            self.l4_csum = self.l4 + ICMPV6_CSUM
        if self.l4_csum >= 0 and frame[self.l4_csum] == frame[self.l4_csum + 1] == 0 and self.proto == IPPROTO_UDP:
            self.l4_csum = -1               # UDP over IPv4 without a checksum stays without


def _words(rows: np.ndarray) -> np.ndarray:
    """Sum of the big-endian 16-bit words of each row (an even number of bytes)."""
    r = rows.astype(np.int64)
    return (r[:, 0::2] << 8 | r[:, 1::2]).sum(axis=1)


def _fold(total: np.ndarray) -> np.ndarray:
    while (total >> 16).any():
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _update(t: np.ndarray, at: int, old: np.ndarray, new: np.ndarray, udp: bool = False) -> None:
    """Adjust the checksum at byte ``at`` of every row for ``old`` bytes becoming ``new`` (RFC 1624, eqn. 3)."""
    hc = t[:, at].astype(np.int64) << 8 | t[:, at + 1]
    total = _fold((~hc & 0xFFFF) + _words(~old & 0xFF) + _words(new))
    csum = ~total & 0xFFFF
    if udp:
        csum = np.where(csum == 0, 0xFFFF, csum)        # 0 means "no checksum" in UDP
    t[:, at], t[:, at + 1] = csum >> 8, csum & 0xFF


def replay_templates(frames: list[bytes], flows: int, gen_id: int, shape: FlowShape | None, src_mac: bytes,
                     dst_mac: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(templates, lengths, record offsets) of ``flows`` flows replaying ``frames``: flow f is frame f % N."""
    shape = shape or FlowShape()
    which = np.arange(flows) % len(frames)
    lengths = np.array([replayed_length(len(frames[j])) for j in which], np.int64)
    rec = lengths - SIM_REC_LEN
    t = np.zeros((flows, int(lengths.max())), np.uint8)
    draws = _draws(shape, gen_id, flows)
    for j, frame in enumerate(frames):
        rows = np.flatnonzero(which == j)
        if not len(rows):
            continue
        r = t[rows]
        r[:, :len(frame)] = np.frombuffer(frame, np.uint8)
        _vary(r, _Layout(frame), rows, shape, draws)
        t[rows] = r
    t[:, ETH_DST_OFF:ETH_DST_OFF + ETH_ADDR_LEN] = np.frombuffer(dst_mac, np.uint8)
    t[:, ETH_SRC_OFF:ETH_SRC_OFF + ETH_ADDR_LEN] = np.frombuffer(src_mac, np.uint8)
    rows = np.arange(flows)
    record = np.zeros((flows, SIM_REC_LEN), np.uint8)
    record[:, SIM_REC_MAGIC:SIM_REC_MAGIC + 2] = np.frombuffer(SIM_MAGIC.to_bytes(2, "little"), np.uint8)
    record[:, SIM_REC_GEN:SIM_REC_GEN + 2] = np.frombuffer(gen_id.to_bytes(2, "little"), np.uint8)
    record[:, SIM_REC_FLOW:SIM_REC_FLOW + 2] = rows.astype("<u2").view(np.uint8).reshape(flows, 2)
    t[rows[:, None], rec[:, None] + np.arange(SIM_REC_LEN)] = record
    return t, lengths, rec


def _draws(shape: FlowShape, gen_id: int, flows: int) -> dict[str, dict]:
    """Each flow's draw of each given field, per IP version for addresses: {field: {version or 0: values}}."""
    out: dict[str, dict] = {}
    for field in ("src", "dst"):
        nets = getattr(shape, field)
        out[field] = {}
        for version in (4, 6):
            own = [n for n in nets if n.version == version]
            if own:
                rng = field_rng(shape, gen_id, f"{field}{version}")
                out[field][version] = draw_hosts(rng, own, spread(rng, flows, [1.0] * len(own)))
    for field in ("sport", "dport"):
        ranges = getattr(shape, field)
        out[field] = {0: draw_ports(field_rng(shape, gen_id, field), ranges, flows)} if ranges else {}
    return out


def _vary(r: np.ndarray, lay: _Layout, rows: np.ndarray, shape: FlowShape, draws: dict) -> None:
    """The shape's fields into the rows ``r`` (flows ``rows``) of one captured frame, checksums kept right."""
    if lay.version < 0:
        return
    width = 4 if lay.version == 4 else IP6_ADDR_LEN
    src_off = lay.l3 + (IP4_SRC if lay.version == 4 else IP6_SRC)
    dst_off = lay.l3 + (IP4_DST if lay.version == 4 else IP6_DST)
    pseudo = lay.l4_csum >= 0 and (lay.version == 6 or lay.proto != IPPROTO_ICMP)     # ICMPv4 covers no addresses
    udp = lay.proto == IPPROTO_UDP
    for field, off, ok in (("src", src_off, True), ("dst", dst_off, lay.dst_ok)):
        new = draws[field].get(lay.version)
        if new is None or not ok:
            continue
        new = new[rows, :width]
        old = r[:, off:off + width].copy()
        r[:, off:off + width] = new
        if lay.version == 4:
            _update(r, lay.l3 + IP4_CSUM, old, new)
        if pseudo:
            _update(r, lay.l4_csum, old, new, udp)
    if lay.ports:
        for field, off in (("sport", L4_SPORT), ("dport", L4_DPORT)):
            new = draws[field].get(0)
            if new is None:
                continue
            at = lay.l4 + off
            old = r[:, at:at + 2].copy()
            value = new[rows]
            r[:, at], r[:, at + 1] = value >> 8, value & 0xFF
            if lay.l4_csum >= 0:
                _update(r, lay.l4_csum, old, r[:, at:at + 2], udp)
