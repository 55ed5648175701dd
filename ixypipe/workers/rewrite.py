"""Header rewrites over a batch, with checksums kept right by incremental updates (RFC 1624).

Each function takes parsed :class:`~ixypipe.workers.headers.Headers`, writes
only packets that have the layer it changes (and, with ``mask``, only those
where the mask is True), and returns the mask of packets it wrote.  A
checksum is updated from the old and new 16-bit words, HC' = ~(~HC + ~m + m'),
never recomputed over the packet.  Changing an IPv4 address or a port also
updates the TCP or UDP checksum (both cover the addresses through the
pseudo-header); a UDP checksum of 0 means "none" over IPv4 and stays 0.
SCTP's CRC32c is not updated, so ports are rewritten on TCP and UDP only.
The parsed headers are stale afterwards: Batch parses again on next use.
"""

from __future__ import annotations

import ipaddress

import numpy as np

from ixypipe.protocols import (
    ETH_HEADER_LEN,
    IP4_CSUM,
    IP4_DST,
    IP4_SRC,
    IP4_TTL,
    IP6_HOP_LIMIT,
    L4_DPORT,
    L4_SPORT,
    TCP_CSUM,
    UDP_CSUM,
    VLAN_TAG_LEN,
    VLAN_VID_MASK,
)
from ixypipe.workers.headers import Headers

U16 = np.uint32(0xFFFF)


def csum_replace(hc: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changed from ``old`` to ``new``."""
    s = (~hc.astype(np.uint32) & U16) + (~old.astype(np.uint32) & U16) + new.astype(np.uint32)
    s = (s & U16) + (s >> np.uint32(16))
    s = (s & U16) + (s >> np.uint32(16))
    return (~s & U16).astype(np.uint16)


def csum_replace32(hc: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    old, new = old.astype(np.uint32), new.astype(np.uint32)
    hc = csum_replace(hc, old >> np.uint32(16), new >> np.uint32(16))
    return csum_replace(hc, old & U16, new & U16)


def _positions(h: Headers, sel: np.ndarray, off: np.ndarray) -> np.ndarray:
    return h.base[sel] + np.minimum(np.broadcast_to(off, sel.shape)[sel], h.limit - 1)


def write_u8(h: Headers, sel: np.ndarray, off: np.ndarray, values) -> None:
    h.flat[_positions(h, sel, off)] = np.broadcast_to(np.asarray(values), sel.shape)[sel].astype(np.uint8)


def write_u16(h: Headers, sel: np.ndarray, off: np.ndarray, values) -> None:
    v = np.broadcast_to(np.asarray(values), sel.shape)[sel].astype(np.uint16)
    pos = _positions(h, sel, off)
    h.flat[pos] = (v >> np.uint16(8)).astype(np.uint8)
    h.flat[pos + 1] = (v & np.uint16(0xFF)).astype(np.uint8)


def write_u32(h: Headers, sel: np.ndarray, off: np.ndarray, values) -> None:
    v = np.broadcast_to(np.asarray(values), sel.shape).astype(np.uint32)
    write_u16(h, sel, off, v >> np.uint32(16))
    write_u16(h, sel, off + 2, v & U16)


def _select(valid: np.ndarray, mask) -> np.ndarray:
    return valid if mask is None else valid & np.broadcast_to(np.asarray(mask, dtype=bool), valid.shape)


def ipv4_address(value) -> np.ndarray | np.uint32:
    """'10.0.0.1', an int, or an array of uint32 (host order) as uint32."""
    if isinstance(value, str):
        try:
            return np.uint32(int(ipaddress.IPv4Address(value)))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IPv4 address: {exc}") from None
    return np.asarray(value).astype(np.uint32)


def set_vlan_id(h: Headers, vid, tag: int = 0, mask=None) -> np.ndarray:
    """Set the VLAN id of tag ``tag`` (0: outer, 1: inner) where there is one; PCP and DEI stay."""
    vid = np.asarray(vid)
    if ((vid < 0) | (vid > VLAN_VID_MASK)).any():
        raise ValueError(f"a VLAN id is 0..{VLAN_VID_MASK}, got {vid[(vid < 0) | (vid > VLAN_VID_MASK)].ravel()[0]}")
    sel = _select(h.eth.vlans > tag, mask)
    tci = h.eth.tci[:, tag]
    new = (tci & np.uint16(~VLAN_VID_MASK & 0xFFFF)) | np.broadcast_to(vid, tci.shape).astype(np.uint16)
    write_u16(h, sel, np.full(h.n, ETH_HEADER_LEN + tag * VLAN_TAG_LEN, np.int64), new)
    return sel


def decrement_ttl(h: Headers, mask=None) -> np.ndarray:
    """TTL (IPv4, checksum updated) or hop limit (IPv6) minus one where it is above 1.

    Returns the packets whose TTL or hop limit was 0 or 1: expired, left unchanged (a router drops them).
    """
    v4, v6 = h.ipv4, h.ipv6
    sel4 = _select(v4.valid, mask)
    sel6 = _select(v6.valid, mask)
    expired = (sel4 & (v4.ttl <= 1)) | (sel6 & (v6.hop_limit <= 1))
    sel4 &= ~expired
    sel6 &= ~expired
    if sel4.any():
        old = (v4.ttl.astype(np.uint32) << np.uint32(8)) | v4.proto       # the TTL shares a word with the protocol
        hc = h.u16(v4.off + IP4_CSUM)
        write_u8(h, sel4, v4.off + IP4_TTL, v4.ttl - np.uint8(1))
        write_u16(h, sel4, v4.off + IP4_CSUM, csum_replace(hc, old, old - np.uint32(0x100)))
    if sel6.any():
        write_u8(h, sel6, v6.off + IP6_HOP_LIMIT, v6.hop_limit - np.uint8(1))
    return expired


def _l4_csum_replace32(h: Headers, sel: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
    """Update the TCP/UDP checksum of ``sel`` for a 32-bit pseudo-header word change."""
    _l4_update(h, sel, lambda hc: csum_replace32(hc, old, new))


def _l4_update(h: Headers, sel: np.ndarray, update) -> None:
    t = h.l4
    for which, csum_off, is_udp in ((t.tcp, TCP_CSUM, False), (t.udp, UDP_CSUM, True)):
        s = sel & which
        if not s.any():
            continue
        hc = h.u16(t.off + csum_off)
        new = update(hc)
        if is_udp:          # 0 is "no checksum" over IPv4: keep it; a computed 0 is sent as 0xFFFF
            s &= hc != 0
            new = np.where(new == 0, np.uint16(0xFFFF), new)
        write_u16(h, s, t.off + csum_off, new)


def set_ipv4_address(h: Headers, which: str, addr, mask=None) -> np.ndarray:
    """Rewrite the IPv4 source (``which="src"``) or destination address; IP and TCP/UDP checksums follow."""
    v4 = h.ipv4
    sel = _select(v4.valid, mask)
    off, old = (IP4_SRC, v4.src) if which == "src" else (IP4_DST, v4.dst)
    new = np.broadcast_to(ipv4_address(addr), old.shape).astype(np.uint32)
    if not sel.any():
        return sel
    _l4_csum_replace32(h, sel, old, new)
    hc = h.u16(v4.off + IP4_CSUM)
    write_u16(h, sel, v4.off + IP4_CSUM, csum_replace32(hc, old, new))
    write_u32(h, sel, v4.off + off, new)
    return sel


def set_port(h: Headers, which: str, port, mask=None) -> np.ndarray:
    """Rewrite the TCP/UDP source (``which="src"``) or destination port; the L4 checksum follows."""
    port = np.asarray(port)
    if ((port < 0) | (port > 0xFFFF)).any():
        raise ValueError(f"a port is 0..65535, got {port[(port < 0) | (port > 0xFFFF)].ravel()[0]}")
    t = h.l4
    sel = _select(t.tcp | t.udp, mask)
    off, old = (L4_SPORT, t.sport) if which == "src" else (L4_DPORT, t.dport)
    new = np.broadcast_to(port, old.shape).astype(np.uint16)
    if not sel.any():
        return sel
    _l4_update(h, sel, lambda hc: csum_replace(hc, old, new))
    write_u16(h, sel, t.off + off, new)
    return sel
