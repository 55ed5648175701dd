"""Address prefixes over a whole batch: ``batch.l3.src_in("10.0.0.0/8")``, IPv4 and IPv6 alike.

:class:`L3` joins the parsed IPv4 and IPv6 layers of a batch (headers.py) into
one view: ``v4`` / ``v6`` masks and :meth:`L3.src_in` / :meth:`L3.dst_in`,
which take one prefix or a list of them ("10.0.0.0/8", "2001:db8::/32", an
``ipaddress`` network, a bare address for a /32 or /128) and return one
boolean per packet.  An IPv4 prefix never matches an IPv6 packet and the
other way round; a packet that is not IP matches nothing.  The test is a
numpy broadcast over (packets x prefixes): no loop over packets.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

import numpy as np

from ixypipe.protocols import IP6_ADDR_LEN
from ixypipe.workers.headers import IPv4, IPv6


class PrefixError(ValueError):
    """Something that is not an address prefix; the message says what."""


@lru_cache(maxsize=256)
def _network(text) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if isinstance(text, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return text
    try:
        return ipaddress.ip_network(text)
    except ValueError as exc:
        if isinstance(text, str) and "has host bits set" in str(exc):
            net = ipaddress.ip_network(text, strict=False)
            raise PrefixError(f"{text!r} has bits set past its prefix length: did you mean '{net}'?") from None
        raise PrefixError(f"{text!r} is not an address prefix such as '10.0.0.0/8' or '2001:db8::/32' "
                          f"({exc})") from None


@lru_cache(maxsize=256)
def compile_prefixes(prefixes: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(IPv4 networks, IPv4 masks) as uint32 and (IPv6 networks, IPv6 masks) as (k, 16) uint8."""
    nets = [_network(p) for p in prefixes]
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    return (np.array([int(n.network_address) for n in v4], np.uint32),
            np.array([int(n.netmask) for n in v4], np.uint32),
            np.array([list(n.network_address.packed) for n in v6], np.uint8).reshape(-1, IP6_ADDR_LEN),
            np.array([list(n.netmask.packed) for n in v6], np.uint8).reshape(-1, IP6_ADDR_LEN))


_ONE = (str, ipaddress.IPv4Network, ipaddress.IPv6Network, ipaddress.IPv4Address, ipaddress.IPv6Address)


def _as_tuple(prefixes) -> tuple:
    if isinstance(prefixes, _ONE):
        return (prefixes,)
    try:
        found = tuple(prefixes)
    except TypeError:
        raise PrefixError(f"a prefix is a string such as '10.0.0.0/8' (or a list of them), got "
                          f"{type(prefixes).__name__}") from None
    if not found:
        raise PrefixError("an empty list of prefixes matches nothing: give at least one")
    for p in found:
        if not isinstance(p, _ONE):
            raise PrefixError(f"a prefix is a string such as '10.0.0.0/8' or an ipaddress network, got {p!r} "
                              f"({type(p).__name__})")
    return found


def in_v4(addrs: np.ndarray, nets: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Which uint32 addresses lie in any of the networks (one broadcast, no packet loop)."""
    if not len(nets):
        return np.zeros(len(addrs), bool)
    return ((addrs[:, None] & masks[None, :]) == nets[None, :]).any(axis=1)


def _halves(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 16) address bytes as two big-endian uint64 columns (high, low)."""
    words = np.ascontiguousarray(rows, np.uint8).view(">u8")
    return words[:, 0], words[:, 1]


def in_v6(rows: np.ndarray, nets: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Which (n, 16) addresses lie in any of the networks (compared as two 64-bit halves)."""
    if not len(nets):
        return np.zeros(len(rows), bool)
    (hi, lo), (nh, nl), (mh, ml) = _halves(rows), _halves(nets), _halves(masks)
    return (((hi[:, None] & mh) == nh) & ((lo[:, None] & ml) == nl)).any(axis=1)


class L3:
    """The network layer of a batch, IPv4 or IPv6: ``v4``, ``v6`` (validity masks), ``src_in``, ``dst_in``."""

    def __init__(self, ipv4: IPv4, ipv6: IPv6):
        self.ipv4, self.ipv6 = ipv4, ipv6

    @property
    def v4(self) -> np.ndarray:
        return self.ipv4.valid

    @property
    def v6(self) -> np.ndarray:
        return self.ipv6.valid

    def src_in(self, prefixes) -> np.ndarray:
        """True where the source address lies in ``prefixes`` (one or a list; IPv4 and IPv6 may be mixed)."""
        return self._within("src", prefixes)

    def dst_in(self, prefixes) -> np.ndarray:
        """True where the destination address lies in ``prefixes``."""
        return self._within("dst", prefixes)

    def _within(self, which: str, prefixes) -> np.ndarray:
        n4, m4, n6, m6 = compile_prefixes(_as_tuple(prefixes))
        hit = np.zeros(len(self.ipv4.valid), bool)
        if len(n4):
            hit |= self.ipv4.valid & in_v4(getattr(self.ipv4, which), n4, m4)
        if len(n6):
            hit |= self.ipv6.valid & in_v6(getattr(self.ipv6, which), n6, m6)
        return hit
