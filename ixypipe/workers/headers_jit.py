"""Optional compiled header parser: every layer of every packet in one numba loop.

Fills the same fields as the numpy parser in ixypipe.workers.headers (which
is the reference: tests check the two agree field by field), grouped by
dtype into a few (fields, n) matrices so a batch costs six allocations and
one call.  Used when numba is installed (the ``fast`` extra) unless
``IXYPIPE_HEADERS=numpy``; the numpy path serves without it.  Reads are
clipped to the buffer exactly as the numpy path clips them.
"""

from __future__ import annotations

import os

import numpy as np

from ixypipe import jitcache
from ixypipe.protocols import (
    ETH_HEADER_LEN,
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_QINQ,
    ETHERTYPE_VLAN,
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
)

numba = jitcache.load_numba()         # None: the numpy path serves (jitcache warns once, with the cause)

AVAILABLE = numba is not None and os.environ.get("IXYPIPE_HEADERS", "") != "numpy"

# rows of the output matrices, by dtype
BOOLS = ("eth_valid", "v4_valid", "v4_mf", "v4_csum_ok", "v6_valid", "v6_ext_ok", "v6_frag", "v6_mf",
         "first", "tcp", "udp", "sctp", "icmp")
U8S = ("vlans", "v4_ttl", "v4_proto", "v6_hop", "v6_nh", "l4_proto", "icmp_type", "icmp_code")
U16S = ("tci0", "tci1", "type", "v4_total_len", "v4_frag_off", "v6_payload_len", "v6_frag_off", "sport", "dport",
        "tcp_flags")
U32S = ("v4_src", "v4_dst")
I64S = ("l3", "v4_header_len", "v6_l4", "l4_off")
B, U8, U16, U32, I64 = ({name: k for k, name in enumerate(group)} for group in (BOOLS, U8S, U16S, U32S, I64S))


def _jit(fn):
    return jitcache.njit(__file__, nogil=True)(fn) if numba is not None else fn


@_jit
def _byte(flat, p, off, last):
    return np.int64(flat[p + min(off, last)])


@_jit
def _word(flat, p, off, last):
    return (np.int64(flat[p + min(off, last)]) << 8) | np.int64(flat[p + min(off + 1, last)])


def _kernel(flat, base, lengths, limit, b, u8, u16, u32, i64, addr):
    last = limit - 1
    for i in range(base.shape[0]):
        p = base[i]
        n = min(lengths[i], limit)

        if n < ETH_HEADER_LEN:
            i64[0, i] = ETH_HEADER_LEN
            u8[5, i] = NO_L4
            continue
        b[0, i] = True
        etype = _word(flat, p, ETH_TYPE_OFF, last)
        off = ETH_HEADER_LEN
        tags = 0
        while tags < VLAN_MAX_TAGS and (etype == ETHERTYPE_VLAN or etype == ETHERTYPE_QINQ) \
                and n >= off + VLAN_TAG_LEN:
            u16[tags, i] = _word(flat, p, off, last)
            etype = _word(flat, p, off + 2, last)
            off += VLAN_TAG_LEN
            tags += 1
        u8[0, i] = tags
        u16[2, i] = etype
        i64[0, i] = off
        l3 = off
        v4 = False
        six = False
        proto = NO_L4
        l4 = 0
        frag_offset = 0
        if etype == ETHERTYPE_IPV4 and n >= l3 + IPV4_HEADER_LEN:
            b0 = _byte(flat, p, l3, last)
            hl = (b0 & 0x0F) * 4
            total = _word(flat, p, l3 + IP4_TOTAL_LEN, last)
            if b0 >> 4 == IP4_VERSION and hl >= IP4_MIN_IHL * 4 and n >= l3 + hl and total >= hl:
                v4 = True
                b[1, i] = True
                i64[1, i] = hl
                u16[3, i] = total
                u8[1, i] = _byte(flat, p, l3 + IP4_TTL, last)
                proto = _byte(flat, p, l3 + IP4_PROTO, last)
                u8[2, i] = proto
                u32[0, i] = (_word(flat, p, l3 + IP4_SRC, last) << 16) | _word(flat, p, l3 + IP4_SRC + 2, last)
                u32[1, i] = (_word(flat, p, l3 + IP4_DST, last) << 16) | _word(flat, p, l3 + IP4_DST + 2, last)
                fw = _word(flat, p, l3 + IP4_FRAG, last)
                frag_offset = fw & IP4_FRAG_MASK
                u16[4, i] = frag_offset
                b[2, i] = (fw & IP4_MF) != 0
                s = 0
                for k in range(0, hl, 2):
                    s += _word(flat, p, l3 + k, last)
                s = (s & 0xFFFF) + (s >> 16)
                s = (s & 0xFFFF) + (s >> 16)
                b[3, i] = s == 0xFFFF
                l4 = l3 + hl
        elif etype == ETHERTYPE_IPV6 and n >= l3 + IPV6_HEADER_LEN and _byte(flat, p, l3, last) >> 4 == IP6_VERSION:
            b[4, i] = True
            u16[5, i] = _word(flat, p, l3 + IP6_PAYLOAD_LEN, last)
            u8[3, i] = _byte(flat, p, l3 + IP6_HOP_LIMIT, last)
            for k in range(IP6_ADDR_LEN):
                addr[0, i, k] = _byte(flat, p, l3 + IP6_SRC + k, last)
                addr[1, i, k] = _byte(flat, p, l3 + IP6_DST + k, last)
            nh = _byte(flat, p, l3 + IP6_NEXT_HEADER, last)
            off = l3 + IPV6_HEADER_LEN
            chain = True
            later = False
            frag = False
            fw = 0
            for _ in range(IP6_MAX_EXT_HEADERS + 1):
                if later or not (nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_FRAGMENT
                                 or nh == IPPROTO_DSTOPTS):
                    break
                size = IP6_FRAG_HEADER_LEN if nh == IPPROTO_FRAGMENT else (_byte(flat, p, off + 1, last) + 1) * IP6_EXT_UNIT
                if n < off + max(size, 2):
                    chain = False
                    break
                if nh == IPPROTO_FRAGMENT:
                    fw = _word(flat, p, off + IP6_FRAG_OFF, last)
                    frag = True
                    later = (fw >> 3) != 0
                nh = _byte(flat, p, off, last)
                off += size
            if chain and not later and (nh == IPPROTO_HOPOPTS or nh == IPPROTO_ROUTING or nh == IPPROTO_FRAGMENT
                                        or nh == IPPROTO_DSTOPTS):
                chain = False
            if chain:
                six = True
                b[5, i] = True
                b[6, i] = frag
                u8[4, i] = nh
                frag_offset = fw >> 3
                u16[6, i] = frag_offset
                b[7, i] = (fw & 1) != 0
                i64[2, i] = off
                proto = nh
                l4 = off
        u8[5, i] = proto
        i64[3, i] = l4
        if not (v4 or six) or frag_offset != 0:
            continue
        b[8, i] = True
        has_ports = False
        if proto == IPPROTO_TCP and n >= l4 + TCP_HEADER_LEN:
            doff = (_byte(flat, p, l4 + TCP_DATA_OFF, last) >> 4) * 4
            if doff >= TCP_HEADER_LEN and n >= l4 + doff:
                b[9, i] = True
                has_ports = True
                u16[9, i] = _word(flat, p, l4 + TCP_DATA_OFF, last) & TCP_FLAGS_MASK
        elif proto == IPPROTO_UDP and n >= l4 + UDP_HEADER_LEN:
            b[10, i] = True
            has_ports = True
        elif proto == IPPROTO_SCTP and n >= l4 + SCTP_HEADER_LEN:
            b[11, i] = True
            has_ports = True
        elif (v4 and proto == IPPROTO_ICMP and n >= l4 + ICMP_HEADER_LEN) or \
                (six and proto == IPPROTO_ICMPV6 and n >= l4 + ICMPV6_HEADER_LEN):
            b[12, i] = True
            u8[6, i] = _byte(flat, p, l4, last)
            u8[7, i] = _byte(flat, p, l4 + 1, last)
        if has_ports:
            u16[7, i] = _word(flat, p, l4 + L4_SPORT, last)
            u16[8, i] = _word(flat, p, l4 + L4_DPORT, last)


kernel = _jit(_kernel)


def parse_all(flat: np.ndarray, base: np.ndarray, lengths: np.ndarray, limit: int):
    """Run the kernel: (bools, u8, u16, u32, i64, addresses) matrices, one row per field."""
    out = matrices(len(base))
    kernel(flat, base, lengths, limit, *out)
    return out


@_jit
def matrices(n):
    """Zeroed (bools, u8, u16, u32, i64, addresses) matrices for ``n`` packets."""
    return (np.zeros((len(BOOLS), n), np.bool_), np.zeros((len(U8S), n), np.uint8),
            np.zeros((len(U16S), n), np.uint16), np.zeros((len(U32S), n), np.uint32),
            np.zeros((len(I64S), n), np.int64), np.zeros((2, n, IP6_ADDR_LEN), np.uint8))


@_jit
def parse_into(flat, idx, n, length, stride, headroom, limit, base, lengths, b, u8, u16, u32, i64, addr):
    """The headers of packet buffers ``idx[:n]`` (buffer k's packet at ``flat[k * stride + headroom:]``,
    ``length[k]`` bytes, cut to ``limit``) into columns 0..n-1 of the matrices, cleared first (a compiled
    worker's pass reuses its matrices); ``base`` and ``lengths`` (at least n each) get each packet's offset in
    ``flat`` and its cut length."""
    for i in range(n):
        base[i] = np.int64(idx[i]) * stride + headroom
        lengths[i] = min(np.int64(length[idx[i]]), limit)
    b[:, :n] = False
    u8[:, :n] = 0
    u16[:, :n] = 0
    u32[:, :n] = 0
    i64[:, :n] = 0
    addr[:, :n, :] = 0
    kernel(flat, base[:n], lengths[:n], limit, b, u8, u16, u32, i64, addr)


@_jit
def parse_buffers(flat, idx, length, stride, headroom, limit):
    """parse_into for a batch's indices, into new matrices: (base, lengths, *matrices) in one call.  A worker's
    lone packet pays one call for what were a dozen numpy calls, each 10-40 us with the caches cold after a
    sleep."""
    n = idx.shape[0]
    base = np.empty(n, np.int64)
    lengths = np.empty(n, np.int64)
    b, u8, u16, u32, i64, addr = matrices(n)
    parse_into(flat, idx, n, length, stride, headroom, limit, base, lengths, b, u8, u16, u32, i64, addr)
    return base, lengths, b, u8, u16, u32, i64, addr
