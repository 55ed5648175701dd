"""Header parsing over a whole batch: Ethernet/VLAN, IPv4, IPv6 with extension headers, TCP/UDP/SCTP/ICMP.

:func:`parse` reads the headers of every packet of a batch with numpy, one
pass per layer, and keeps per packet the offset of each layer (so a write
lands in the right place) and a validity mask per layer.  A truncated or
malformed header is a False in its mask and zeros in its fields, never an
exception: every byte read is clipped to the packet buffer, and a field
only counts where the packet's length covers it.  Layers are computed on
first use (``h.l4`` parses L2 and L3 first) and kept.  With numba
installed, the compiled kernel of ixypipe.workers.headers_jit parses all
layers at once (the numpy code here is the reference it is tested
against): a worker's batch (:meth:`Headers.of_buffers`) in the one call
that makes its headers, and each field is a row of the kernel's matrices,
made when first read.

Packets are addressed in one flat uint8 array: packet i's byte k is
``flat[base[i] + k]`` for ``k < lengths[i]``; ``limit`` is the bytes a
buffer holds past ``base`` (reads are clipped to it).  The worker's Batch
passes its arena buffers this way; tests and benchmarks pass bytes.

Field values are host-order integers: ports and EtherTypes uint16, IPv4
addresses uint32 (``0x0A000001`` is 10.0.0.1), IPv6 addresses (n, 16) rows.
Setters for the common rewrites live in :mod:`ixypipe.workers.rewrite`.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from ixypipe.protocols import (
    ETH_HEADER_LEN,
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ICMP_HEADER_LEN,
    ICMPV6_HEADER_LEN,
    IP4_DST,
    IP4_FRAG,
    IP4_FRAG_MASK,
    IP4_MF,
    IP4_MIN_IHL,
    IP4_PROTO,
    IP4_SRC,
    IP4_TOTAL_LEN,
    IP4_TTL,
    IP4_VER_IHL,
    IP4_VERSION,
    IP6_ADDR_LEN,
    IP6_DST,
    IP6_EXT_UNIT,
    IP6_FRAG_HEADER_LEN,
    IP6_FRAG_OFF,
    IP6_HOP_LIMIT,
    IP6_MAX_EXT_HEADERS,
    IP6_NEXT_HEADER,
    IP6_PAYLOAD_LEN,
    IP6_SRC,
    IP6_VERSION,
    IPPROTO_DSTOPTS,
    IPPROTO_FRAGMENT,
    IPPROTO_HOPOPTS,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_ROUTING,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    L4_DPORT,
    L4_SPORT,
    NO_L4,
    SCTP_HEADER_LEN,
    TCP_DATA_OFF,
    TCP_FLAGS_MASK,
    TCP_HEADER_LEN,
    UDP_HEADER_LEN,
    VLAN_MAX_TAGS,
    VLAN_TAG_LEN,
    VLAN_TAG_TYPES,
    VLAN_VID_MASK,
)
from ixypipe.workers import headers_jit

_IP4_WORDS = np.arange(30, dtype=np.int64)           # an IPv4 header has at most 60 bytes: 30 words


class Eth:
    """Ethernet and up to two VLAN tags."""

    valid: np.ndarray       # the 14-byte Ethernet header is there
    vlans: np.ndarray       # tags walked (0, 1, 2), uint8
    tci: np.ndarray         # (n, 2) tag control fields, outer first; 0 where absent
    type: np.ndarray        # EtherType after the tags (0x8100 when a tag was cut short), uint16
    l3: np.ndarray          # offset of the L3 header, int64

    @property
    def vlan_id(self) -> np.ndarray:
        """(n, 2) VLAN ids, outer first (0 where there is no tag)."""
        return self.tci & np.uint16(VLAN_VID_MASK)


class IPv4:
    valid: np.ndarray       # version 4, IHL >= 5, total length >= IHL, the whole header present
    off: np.ndarray         # offset of the IPv4 header (the L3 offset)
    header_len: np.ndarray  # bytes (IHL * 4)
    total_len: np.ndarray
    ttl: np.ndarray
    proto: np.ndarray
    src: np.ndarray         # uint32, host order
    dst: np.ndarray
    frag_offset: np.ndarray  # in 8-byte units
    more_fragments: np.ndarray
    csum_ok: np.ndarray     # the header checksum verifies (False where not valid)


class IPv6:
    valid: np.ndarray       # version 6 and the 40-byte header present
    off: np.ndarray
    payload_len: np.ndarray
    hop_limit: np.ndarray
    src: np.ndarray         # (n, 16) uint8
    dst: np.ndarray
    ext_ok: np.ndarray      # valid, and the extension-header chain is complete (walked to an upper layer)
    next_header: np.ndarray  # the upper-layer protocol after the extension headers
    frag: np.ndarray        # has a fragment header (and the chain is complete)
    frag_offset: np.ndarray
    more_fragments: np.ndarray
    l4: np.ndarray          # offset of the upper-layer header


class L4:
    proto: np.ndarray       # IPv4 protocol or IPv6 upper-layer next header; NO_L4 (255) without IP
    off: np.ndarray         # offset of the L4 header
    first: np.ndarray       # an IP packet that is not a non-first fragment (it carries the L4 header)
    tcp: np.ndarray         # masks: the whole header present on a first fragment
    udp: np.ndarray
    sctp: np.ndarray
    icmp: np.ndarray        # ICMP over IPv4 or ICMPv6 over IPv6
    sport: np.ndarray       # TCP/UDP/SCTP, 0 elsewhere
    dport: np.ndarray
    tcp_flags: np.ndarray   # NS and the 8 flag bits (FIN 0x01 ... CWR 0x80, NS 0x100)
    icmp_type: np.ndarray
    icmp_code: np.ndarray

    @property
    def ports(self) -> np.ndarray:
        """TCP, UDP or SCTP: the packets that have ports."""
        return self.tcp | self.udp | self.sctp


# ---- the layers from the compiled parser: each field a row of its matrices, made on first use ----------------
_BOOL, _U8, _U16, _U32, _I64, _ADDR = range(6)          # the matrices, in headers_jit.parse_all's order
_B, _8, _16, _32, _64 = headers_jit.B, headers_jit.U8, headers_jit.U16, headers_jit.U32, headers_jit.I64


class _Row:
    """A field of a layer from the compiled parser: row ``row`` of matrix ``k``, a view made when first read and
    then kept in the layer (a function that reads three fields makes three views, not forty)."""

    def __init__(self, k: int, row, transposed: bool = False):
        self.k, self.row, self.transposed = k, row, transposed

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        value = layer.matrices[self.k][self.row]
        if self.transposed:
            value = value.T
        layer.__dict__[self.name] = value            # an instance attribute from now on: this is not called again
        return value


def _compiled(layer: type, rows: dict) -> type:
    """``layer``'s class for the compiled parser: the same fields, each a _Row."""
    def __init__(self, matrices: tuple) -> None:
        self.matrices = matrices

    return type(layer.__name__, (layer,), {"__init__": __init__, "__doc__": layer.__doc__,
                                           **{name: _Row(*spec) for name, spec in rows.items()}})


_CompiledEth = _compiled(Eth, {
    "valid": (_BOOL, _B["eth_valid"]), "vlans": (_U8, _8["vlans"]),
    "tci": (_U16, slice(_16["tci0"], _16["tci1"] + 1), True), "type": (_U16, _16["type"]), "l3": (_I64, _64["l3"])})
_CompiledIPv4 = _compiled(IPv4, {
    "valid": (_BOOL, _B["v4_valid"]), "off": (_I64, _64["l3"]), "header_len": (_I64, _64["v4_header_len"]),
    "total_len": (_U16, _16["v4_total_len"]), "ttl": (_U8, _8["v4_ttl"]), "proto": (_U8, _8["v4_proto"]),
    "src": (_U32, _32["v4_src"]), "dst": (_U32, _32["v4_dst"]), "frag_offset": (_U16, _16["v4_frag_off"]),
    "more_fragments": (_BOOL, _B["v4_mf"]), "csum_ok": (_BOOL, _B["v4_csum_ok"])})
_CompiledIPv6 = _compiled(IPv6, {
    "valid": (_BOOL, _B["v6_valid"]), "off": (_I64, _64["l3"]), "payload_len": (_U16, _16["v6_payload_len"]),
    "hop_limit": (_U8, _8["v6_hop"]), "src": (_ADDR, 0), "dst": (_ADDR, 1), "ext_ok": (_BOOL, _B["v6_ext_ok"]),
    "next_header": (_U8, _8["v6_nh"]), "frag": (_BOOL, _B["v6_frag"]), "frag_offset": (_U16, _16["v6_frag_off"]),
    "more_fragments": (_BOOL, _B["v6_mf"]), "l4": (_I64, _64["v6_l4"])})
_CompiledL4 = _compiled(L4, {
    "proto": (_U8, _8["l4_proto"]), "off": (_I64, _64["l4_off"]), "first": (_BOOL, _B["first"]),
    "tcp": (_BOOL, _B["tcp"]), "udp": (_BOOL, _B["udp"]), "sctp": (_BOOL, _B["sctp"]), "icmp": (_BOOL, _B["icmp"]),
    "sport": (_U16, _16["sport"]), "dport": (_U16, _16["dport"]), "tcp_flags": (_U16, _16["tcp_flags"]),
    "icmp_type": (_U8, _8["icmp_type"]), "icmp_code": (_U8, _8["icmp_code"])})


def _compiled_layers(matrices: tuple) -> tuple[Eth, IPv4, IPv6, L4]:
    """Every layer over the compiled parser's matrices (headers_jit.parse_all's order)."""
    return _CompiledEth(matrices), _CompiledIPv4(matrices), _CompiledIPv6(matrices), _CompiledL4(matrices)


class Headers:
    """The parsed headers of one batch; each layer is parsed on first use, then kept."""

    def __init__(self, flat: np.ndarray, base: np.ndarray, lengths: np.ndarray, limit: int,
                 compiled: bool | None = None):
        self.compiled = headers_jit.AVAILABLE if compiled is None else compiled
        if self.compiled and headers_jit.kernel is None:
            raise RuntimeError("the compiled header parser needs numba (pip install numba, the 'fast' extra)")
        self.flat = flat
        self.base = np.asarray(base, np.int64)
        self.limit = int(limit)
        self.lengths = np.minimum(np.asarray(lengths, np.int64), self.limit)    # a length past the buffer: cut
        self.n = len(self.base)

    @classmethod
    def of_buffers(cls, flat: np.ndarray, idx: np.ndarray, length: np.ndarray, stride: int, headroom: int,
                   limit: int, compiled: bool | None = None) -> Headers:
        """The headers of packet buffers ``idx`` (a worker's batch): buffer k's packet starts at ``flat[k * stride
        + headroom]`` and has ``length[k]`` bytes.  The compiled parser reads every layer in this one call."""
        if not (headers_jit.AVAILABLE if compiled is None else compiled):
            return cls(flat, idx.astype(np.int64) * stride + headroom, length[idx], limit, False)
        h = cls.__new__(cls)
        h.compiled, h.flat, h.limit, h.n = True, flat, int(limit), len(idx)
        h.base, h.lengths, *m = headers_jit.parse_buffers(flat, idx, length, stride, headroom, h.limit)
        h.eth, h.ipv4, h.ipv6, h.l4 = _compiled_layers(tuple(m))          # parsed: set, not made on first use
        return h

    # ---- reading bytes at per-packet offsets, never past a buffer ------------------------
    def pos(self, off) -> np.ndarray:
        """Flat positions of byte ``off`` (per packet) of every packet, clipped to its buffer."""
        return self.base + np.minimum(off, self.limit - 1)          # offsets are never negative

    def u8(self, off) -> np.ndarray:
        return self.flat[self.pos(off)]

    def u16(self, off) -> np.ndarray:
        return (self.u8(off).astype(np.uint16) << np.uint16(8)) | self.u8(np.asarray(off) + 1)

    def u32(self, off) -> np.ndarray:
        return (self.u16(off).astype(np.uint32) << np.uint32(16)) | self.u16(np.asarray(off) + 2)

    def rows(self, off, size: int) -> np.ndarray:
        """(n, size) bytes starting at ``off`` of every packet."""
        at = np.minimum(np.asarray(off, np.int64)[..., None] + np.arange(size), self.limit - 1)
        return self.flat[self.base[:, None] + at]

    def has(self, end) -> np.ndarray:
        """The packets whose length covers bytes up to ``end`` (exclusive)."""
        return self.lengths >= end

    # ---- layers ---------------------------------------------------------------------------
    @cached_property
    def eth(self) -> Eth:
        return self._jit_layers[0] if self.compiled else self._eth()

    @cached_property
    def ipv4(self) -> IPv4:
        return self._jit_layers[1] if self.compiled else self._ipv4()

    @cached_property
    def ipv6(self) -> IPv6:
        return self._jit_layers[2] if self.compiled else self._ipv6()

    @cached_property
    def l4(self) -> L4:
        return self._jit_layers[3] if self.compiled else self._l4()

    @cached_property
    def _jit_layers(self) -> tuple[Eth, IPv4, IPv6, L4]:
        """All layers from one run of the compiled kernel; a field is a row of its matrices, made on first use."""
        return _compiled_layers(headers_jit.parse_all(self.flat, self.base, self.lengths, self.limit))

    # ---- the numpy parser, one pass per layer (the reference) ---------------------------------------
    def _eth(self) -> Eth:
        e = Eth()
        e.valid = self.has(ETH_HEADER_LEN)
        etype = np.where(e.valid, self.u16(ETH_TYPE_OFF), 0).astype(np.uint16)
        off = np.full(self.n, ETH_HEADER_LEN, np.int64)
        e.vlans = np.zeros(self.n, np.uint8)
        e.tci = np.zeros((self.n, VLAN_MAX_TAGS), np.uint16)
        for k in range(VLAN_MAX_TAGS):
            tagged = np.isin(etype, VLAN_TAG_TYPES) & self.has(off + VLAN_TAG_LEN)
            if not tagged.any():
                break
            e.tci[:, k] = np.where(tagged, self.u16(off), 0)
            etype = np.where(tagged, self.u16(off + 2), etype).astype(np.uint16)
            off = np.where(tagged, off + VLAN_TAG_LEN, off)
            e.vlans += tagged
        e.type, e.l3 = etype, off
        return e

    def _ipv4(self) -> IPv4:
        eth, ip = self.eth, IPv4()
        l3 = ip.off = eth.l3
        b0 = self.u8(l3 + IP4_VER_IHL)
        ip.header_len = (b0 & 0x0F).astype(np.int64) * 4
        ip.total_len = self.u16(l3 + IP4_TOTAL_LEN)
        ok = ((eth.type == ETHERTYPE_IPV4) & self.has(l3 + IPV4_HEADER_LEN) & (b0 >> 4 == IP4_VERSION)
              & (ip.header_len >= IP4_MIN_IHL * 4) & self.has(l3 + ip.header_len) & (ip.total_len >= ip.header_len))
        ip.valid = ok
        ip.header_len = np.where(ok, ip.header_len, 0)
        ip.total_len = np.where(ok, ip.total_len, 0).astype(np.uint16)
        ip.ttl = np.where(ok, self.u8(l3 + IP4_TTL), 0).astype(np.uint8)
        ip.proto = np.where(ok, self.u8(l3 + IP4_PROTO), 0).astype(np.uint8)
        ip.src = np.where(ok, self.u32(l3 + IP4_SRC), 0).astype(np.uint32)
        ip.dst = np.where(ok, self.u32(l3 + IP4_DST), 0).astype(np.uint32)
        frag = np.where(ok, self.u16(l3 + IP4_FRAG), 0).astype(np.uint16)
        ip.frag_offset = frag & np.uint16(IP4_FRAG_MASK)
        ip.more_fragments = (frag & np.uint16(IP4_MF)) != 0
        # the one's complement sum over the header's words is 0xFFFF when the checksum is right
        words = self.rows(l3, 60).astype(np.uint32)
        words = (words[:, 0::2] << np.uint32(8)) | words[:, 1::2]
        words[_IP4_WORDS[None, :] * 2 >= ip.header_len[:, None]] = 0
        total = words.sum(axis=1, dtype=np.uint32)
        total = (total & np.uint32(0xFFFF)) + (total >> np.uint32(16))
        total = (total & np.uint32(0xFFFF)) + (total >> np.uint32(16))
        ip.csum_ok = ok & (total == 0xFFFF)
        return ip

    def _ipv6(self) -> IPv6:
        eth, ip = self.eth, IPv6()
        l3 = ip.off = eth.l3
        ok = ip.valid = ((eth.type == ETHERTYPE_IPV6) & self.has(l3 + IPV6_HEADER_LEN)
                         & (self.u8(l3) >> 4 == IP6_VERSION))
        ip.payload_len = np.where(ok, self.u16(l3 + IP6_PAYLOAD_LEN), 0).astype(np.uint16)
        ip.hop_limit = np.where(ok, self.u8(l3 + IP6_HOP_LIMIT), 0).astype(np.uint8)
        if ok.any():
            ip.src = np.where(ok[:, None], self.rows(l3 + IP6_SRC, IP6_ADDR_LEN), 0).astype(np.uint8)
            ip.dst = np.where(ok[:, None], self.rows(l3 + IP6_DST, IP6_ADDR_LEN), 0).astype(np.uint8)
        else:
            ip.src = ip.dst = np.zeros((self.n, IP6_ADDR_LEN), np.uint8)
        nh = np.where(ok, self.u8(l3 + IP6_NEXT_HEADER), 0).astype(np.uint8)
        off = l3 + IPV6_HEADER_LEN
        chain = ok.copy()
        ip.frag = np.zeros(self.n, bool)
        frag_word = np.zeros(self.n, np.uint16)
        later = np.zeros(self.n, bool)                  # after a non-first fragment's header: data, not headers
        for _ in range(IP6_MAX_EXT_HEADERS + 1):
            ext = chain & ~later & ((nh == IPPROTO_HOPOPTS) | (nh == IPPROTO_ROUTING) | (nh == IPPROTO_FRAGMENT)
                           | (nh == IPPROTO_DSTOPTS))
            if not ext.any():
                break
            is_frag = ext & (nh == IPPROTO_FRAGMENT)
            size = np.where(is_frag, IP6_FRAG_HEADER_LEN, (self.u8(off + 1).astype(np.int64) + 1) * IP6_EXT_UNIT)
            cut = ext & ~self.has(off + np.maximum(size, 2))
            chain &= ~cut
            ext &= ~cut
            frag_word = np.where(is_frag & ext, self.u16(off + IP6_FRAG_OFF), frag_word).astype(np.uint16)
            ip.frag |= is_frag & ext
            later |= is_frag & ext & (frag_word >> np.uint16(3) != 0)
            nh = np.where(ext, self.u8(off), nh).astype(np.uint8)
            off = np.where(ext, off + size, off)
        else:                                            # still in the chain after the most we walk
            chain &= later | ~np.isin(nh, (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS))
        ip.ext_ok = chain
        ip.frag &= chain
        ip.next_header = np.where(chain, nh, 0).astype(np.uint8)
        ip.frag_offset = np.where(chain, frag_word >> np.uint16(3), 0).astype(np.uint16)
        ip.more_fragments = chain & ((frag_word & np.uint16(1)) != 0)
        ip.l4 = np.where(chain, off, 0)
        return ip

    def _l4(self) -> L4:
        v4, v6, t = self.ipv4, self.ipv6, L4()
        six = v6.ext_ok
        t.proto = np.where(v4.valid, v4.proto, np.where(six, v6.next_header, NO_L4)).astype(np.uint8)
        t.off = np.where(v4.valid, v4.off + v4.header_len, np.where(six, v6.l4, 0))
        frag_offset = np.where(v4.valid, v4.frag_offset, v6.frag_offset)
        t.first = (v4.valid | six) & (frag_offset == 0)
        off, p, first = t.off, t.proto, t.first
        doff = (self.u8(off + TCP_DATA_OFF) >> 4).astype(np.int64) * 4
        t.tcp = first & (p == IPPROTO_TCP) & self.has(off + TCP_HEADER_LEN) & (doff >= TCP_HEADER_LEN) \
            & self.has(off + doff)
        t.udp = first & (p == IPPROTO_UDP) & self.has(off + UDP_HEADER_LEN)
        t.sctp = first & (p == IPPROTO_SCTP) & self.has(off + SCTP_HEADER_LEN)
        t.icmp = first & ((v4.valid & (p == IPPROTO_ICMP) & self.has(off + ICMP_HEADER_LEN))
                          | (six & (p == IPPROTO_ICMPV6) & self.has(off + ICMPV6_HEADER_LEN)))
        ports = t.tcp | t.udp | t.sctp
        t.sport = np.where(ports, self.u16(off + L4_SPORT), 0).astype(np.uint16)
        t.dport = np.where(ports, self.u16(off + L4_DPORT), 0).astype(np.uint16)
        t.tcp_flags = np.where(t.tcp, self.u16(off + TCP_DATA_OFF) & np.uint16(TCP_FLAGS_MASK), 0).astype(np.uint16)
        t.icmp_type = np.where(t.icmp, self.u8(off), 0).astype(np.uint8)
        t.icmp_code = np.where(t.icmp, self.u8(off + 1), 0).astype(np.uint8)
        return t

    def parse_all(self) -> Headers:
        """Parse every layer now (benchmarks; workers let each layer parse on first use)."""
        _ = self.l4
        return self


def parse(flat: np.ndarray, base, lengths, limit: int, compiled: bool | None = None) -> Headers:
    """The headers of packets ``flat[base[i]:base[i] + lengths[i]]`` (reads clipped to ``limit`` bytes).

    ``compiled``: True for the numba kernel, False for numpy, None for numba when installed.
    """
    return Headers(flat, base, lengths, limit, compiled)


def from_bytes(packets: list[bytes], stride: int | None = None, compiled: bool | None = None) -> Headers:
    """Headers of packets given as bytes: laid out ``stride`` bytes apart in one array (tests, benchmarks)."""
    stride = stride or max([len(p) for p in packets] + [1])
    flat = np.zeros(len(packets) * stride, np.uint8)
    for i, p in enumerate(packets):
        flat[i * stride:i * stride + len(p)] = np.frombuffer(p, np.uint8)
    base = np.arange(len(packets), dtype=np.int64) * stride
    return parse(flat, base, [len(p) for p in packets], stride, compiled)
