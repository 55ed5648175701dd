"""Traffic shaped like a user's: the addresses, ports and protocols of a generator's flows.

A :class:`FlowShape` says where a generator's flows come from and go to:
source and destination networks (IPv4 and IPv6, several of each), source
and destination ports (single ports and ranges), and the protocol or a
weighted mix of UDP, TCP (SYN) and ICMP (echo request; ICMPv6 over IPv6).
Each flow draws its tuple once, when the generator is built, from random
streams seeded with (seed, generator id, field), so a run is reproducible
and a field's draws do not change when another field is given; the
per-packet work stays what it was (copy the flow's template, stamp the
sequence number and the checksum: ``traffic.Generator``).

Lists are spread evenly, not sampled: of 10 flows with ``dport = [53, 80]``
5 go to each (a seeded permutation decides which), and a mix's weights
become exact flow counts (largest remainder), so ``mix = {udp = 0.7, tcp
= 0.3}`` over 10 flows is 7 UDP and 3 TCP flows.  A flow's address is a
random host of the network it was given (neither the network's nor its
broadcast address when the network has more than two); a range gives a
random port in it.  The destination networks decide each flow's IP
version (else the source networks, else the generator's profile), so
``src`` and ``dst`` must hold the same versions.  Fields left out keep the
generator's defaults (``traffic.default_tuples``: from 10.<gen>.x.x or
fd00::<gen>:x, source ports spread for RSS, to 10.255.0.1 or fd00::ff01,
port 5000 for UDP, 80 for TCP).

Values come as TOML gives them or as the command line's text:
``"10.0.0.0/8"``, ``["192.168.1.0/24", "2001:db8::/64"]`` or
``"10.0.0.0/8,2001:db8::/64"``; ports ``53``, ``"1024-65535"``,
``[53, 80, "8000-8080"]`` or ``"53,80,8000-8080"``; ``protocol = "udp"``;
``mix = {udp = 0.7, tcp = 0.2, icmp = 0.1}`` or ``"udp=0.7,tcp=0.2,icmp=0.1"``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import numpy as np

from ixypipe.protocols import (
    ETH_HEADER_LEN,
    IP6_ADDR_LEN,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    TCP_HEADER_LEN,
    UDP_HEADER_LEN,
)
from ixypipe.sim.payload import SIM_REC_LEN

SHAPE_PROTOCOLS = ("udp", "tcp", "icmp")
SHAPE_FIELDS = ("src", "dst", "sport", "dport", "protocol", "mix")
MAX_ITEMS = 256                 # networks or port items in one field
PORT_MAX = 65535
# one random stream per field and purpose, so a field's draws do not depend on which other fields are given
_STREAM = {name: i for i, name in enumerate(("src", "dst", "sport", "dport", "protocol", "src-host", "dst-host",
                                             "src4", "src6", "dst4", "dst6"), 1)}


class ShapeError(ValueError):
    """A shape field that cannot be used; ``field`` names it, the message says what is allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FlowShape:
    """What a generator's flows carry; an empty field keeps the generator's default."""
    src: tuple[Network, ...] = ()
    dst: tuple[Network, ...] = ()
    sport: tuple[tuple[int, int], ...] = ()      # inclusive ranges; a single port is (p, p)
    dport: tuple[tuple[int, int], ...] = ()
    mix: tuple[tuple[str, float], ...] = ()      # (protocol, weight); one entry = one protocol
    seed: int = 0

    @classmethod
    def parse(cls, src=None, dst=None, sport=None, dport=None, protocol=None, mix=None, seed: int = 0) -> FlowShape:
        """A shape from TOML values or command-line text (None: not given); ShapeError names the bad field."""
        if protocol is not None and mix is not None:
            raise ShapeError("mix", "give protocol or mix, not both")
        if protocol is not None:
            if protocol not in SHAPE_PROTOCOLS:
                raise ShapeError("protocol", f"must be one of {', '.join(map(repr, SHAPE_PROTOCOLS))}, "
                                             f"got {_show(protocol)}")
            mixed: tuple = ((protocol, 1.0),)
        else:
            mixed = _mix(mix) if mix is not None else ()
        shape = cls(_networks("src", src), _networks("dst", dst), _ports("sport", sport), _ports("dport", dport),
                    mixed, seed)
        if shape.src and shape.dst and shape.versions(shape.src) != shape.versions(shape.dst):
            raise ShapeError("dst", f"src holds IPv{'/IPv'.join(map(str, shape.versions(shape.src)))} networks and "
                                    f"dst IPv{'/IPv'.join(map(str, shape.versions(shape.dst)))}: a flow's source and "
                                    "destination are of one IP version, so both need networks of the same versions")
        return shape

    @staticmethod
    def versions(networks) -> tuple[int, ...]:
        return tuple(sorted({n.version for n in networks}))

    @property
    def given(self) -> bool:
        return bool(self.src or self.dst or self.sport or self.dport or self.mix)

    @property
    def protocols(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.mix)

    def ip_versions(self, default_v6: bool) -> tuple[int, ...]:
        """The IP versions this shape's flows can have (the profile's when no network is given)."""
        nets = self.dst or self.src
        return self.versions(nets) if nets else ((6,) if default_v6 else (4,))

    def check_profile(self, profile) -> None:
        """ShapeError unless this shape goes with ``profile`` (a payload.Profile): runts take no shape,
        tcp-syn fixes the protocol, ipv6 the IP version."""
        first = next((f for f in ("src", "dst", "sport", "dport", "mix") if getattr(self, f)), None)
        if profile.runt and first:
            raise ShapeError(first, "profile 'runt' makes frames cut short of their headers; it takes no "
                                    f"{'/'.join(SHAPE_FIELDS)}")
        if profile.tcp and self.mix:
            raise ShapeError("mix" if len(self.mix) > 1 else "protocol",
                             "profile 'tcp-syn' fixes the protocol; for a protocol or a mix use profile 'udp' "
                             "(or 'imix', 'vlan') with protocol = 'tcp' or mix")
        if profile.ipv6:
            for field in ("src", "dst"):
                v4 = [str(n) for n in getattr(self, field) if n.version == 4]
                if v4:
                    raise ShapeError(field, f"profile 'ipv6' makes IPv6 frames, but {field} holds IPv4 network "
                                            f"{v4[0]}; the networks choose the IP version by themselves with "
                                            "profile 'udp'")

    def min_size(self, profile) -> int:
        """The smallest frame that holds the largest layout this shape's flows can have with ``profile``
        (headers and the 18-byte record), without FCS."""
        versions = self.ip_versions(profile.ipv6)
        tcp = "tcp" in self.protocols if self.mix else profile.tcp
        return (ETH_HEADER_LEN + profile.tag_len + (IPV6_HEADER_LEN if 6 in versions else IPV4_HEADER_LEN)
                + (TCP_HEADER_LEN if tcp else UDP_HEADER_LEN) + SIM_REC_LEN)

    def describe(self) -> str:
        """A short text for the gen command's first line ("" without a shape)."""
        parts = []
        for name, value in (("src", self.src), ("dst", self.dst)):
            if value:
                parts.append(f"{name} {','.join(map(str, value))}")
        for name, value in (("sport", self.sport), ("dport", self.dport)):
            if value:
                parts.append(f"{name} {','.join(str(a) if a == b else f'{a}-{b}' for a, b in value)}")
        if len(self.mix) == 1:
            parts.append(self.mix[0][0])
        elif self.mix:
            total = sum(w for _, w in self.mix)
            parts.append("mix " + ",".join(f"{n}={w / total:.2g}" for n, w in self.mix))
        return ", ".join(parts)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _items(field: str, value) -> list:
    """A list from a list, or from one value (a string split at commas)."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    if not items or len(items) > MAX_ITEMS:
        raise ShapeError(field, f"must hold 1 to {MAX_ITEMS} items, got {len(items)}")
    return items


def _networks(field: str, value) -> tuple[Network, ...]:
    if value is None:
        return ()
    out = []
    for item in _items(field, value):
        if not isinstance(item, str) or not item:
            raise ShapeError(field, f"must be networks such as '10.0.0.0/8' or '2001:db8::/64' (a string or a list "
                                    f"of strings), got {_show(item)}")
        try:
            out.append(ipaddress.ip_network(item))
        except ValueError as exc:
            if "has host bits set" in str(exc):
                net = ipaddress.ip_network(item, strict=False)
                raise ShapeError(field, f"{item!r} has bits set past its prefix length: did you mean '{net}'?") \
                    from None
            raise ShapeError(field, f"{_show(item)} is not a network such as '10.0.0.0/8' or '2001:db8::/64'") \
                from None
    return tuple(out)


def _ports(field: str, value) -> tuple[tuple[int, int], ...]:
    if value is None:
        return ()
    out = []
    for item in _items(field, value):
        lo = hi = None
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str):
            a, dash, b = item.partition("-")
            if a.strip().isdigit() and (not dash or b.strip().isdigit()):
                lo, hi = int(a), int(b) if dash else int(a)
        if lo is None or not 0 <= lo <= hi <= PORT_MAX:
            raise ShapeError(field, f"must be ports 0..{PORT_MAX}: a port (53), a range ('1024-65535', low to high) "
                                    f"or a list of them ([53, '8000-8080']), got {_show(item)}")
        out.append((lo, hi))
    return tuple(out)


def _mix(value) -> tuple[tuple[str, float], ...]:
    if isinstance(value, str):
        pairs = []
        for item in _items("mix", value):
            name, eq, weight = item.partition("=")
            try:
                pairs.append((name.strip(), float(weight) if eq else None))
            except ValueError:
                pairs.append((name.strip(), weight))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise ShapeError("mix", f"must be a table of protocol weights such as {{udp = 0.7, tcp = 0.2, icmp = 0.1}}, "
                                f"got {_show(value)}")
    if not pairs:
        raise ShapeError("mix", "must name at least one protocol")
    out = []
    for name, weight in pairs:
        if name not in SHAPE_PROTOCOLS:
            raise ShapeError("mix", f"protocols must be among {', '.join(map(repr, SHAPE_PROTOCOLS))}, "
                                    f"got {_show(name)}")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 < weight < float("inf"):
            raise ShapeError("mix", f"the weight of {name} must be a number > 0, got {_show(weight)}")
        if name in (n for n, _ in out):
            raise ShapeError("mix", f"{name} is given twice")
        out.append((name, float(weight)))
    return tuple(out)


# ---- drawing the flows' tuples -------------------------------------------------------------
@dataclass
class FlowTuples:
    """Per flow: IPv6 or not, the IP protocol number, source and destination address (16 bytes; an IPv4
    address in the first 4), source port (ICMP: the echo identifier) and destination port."""
    v6: np.ndarray          # (flows,) bool
    proto: np.ndarray       # (flows,) uint8: IPPROTO_UDP, IPPROTO_TCP, IPPROTO_ICMP or IPPROTO_ICMPV6
    src: np.ndarray         # (flows, 16) uint8
    dst: np.ndarray         # (flows, 16) uint8
    sport: np.ndarray       # (flows,) uint16
    dport: np.ndarray       # (flows,) uint16

    def __len__(self) -> int:
        return len(self.v6)


def field_rng(shape: FlowShape, gen_id: int, field: str) -> np.random.Generator:
    return np.random.default_rng([shape.seed, gen_id, _STREAM[field]])


def spread(rng: np.random.Generator, n: int, weights) -> np.ndarray:
    """Item index for each of ``n`` flows: exact counts by largest remainder of the weights, in seeded order."""
    w = np.asarray(weights, np.float64)
    share = w / w.sum() * n
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[:n - int(counts.sum())]] += 1
    return rng.permutation(np.repeat(np.arange(len(w)), counts))


def draw_hosts(rng: np.random.Generator, networks, pick: np.ndarray) -> np.ndarray:
    """(len(pick), 16) addresses: a random host of ``networks[pick[i]]`` for each row."""
    out = np.zeros((len(pick), IP6_ADDR_LEN), np.uint8)
    for k, net in enumerate(networks):
        rows = np.flatnonzero(pick == k)
        if not len(rows):
            continue
        width = 4 if net.version == 4 else IP6_ADDR_LEN
        base = np.frombuffer(net.network_address.packed, np.uint8)
        host = np.frombuffer((int(net.hostmask)).to_bytes(width, "big"), np.uint8)
        addr = base | (rng.integers(0, 256, (len(rows), width), dtype=np.uint8) & host)
        if net.num_addresses > 2:       # not the network's own address nor its broadcast
            while True:
                edge = ((addr & host) == 0).all(axis=1) | ((addr & host) == host).all(axis=1)
                if not edge.any():
                    break
                addr[edge] = base | (rng.integers(0, 256, (int(edge.sum()), width), dtype=np.uint8) & host)
        out[rows, :width] = addr
    return out


def draw_ports(rng: np.random.Generator, ranges, n: int) -> np.ndarray:
    pick = spread(rng, n, [1.0] * len(ranges))
    lo = np.array([a for a, _ in ranges], np.int64)[pick]
    hi = np.array([b for _, b in ranges], np.int64)[pick]
    return (lo + rng.integers(0, hi - lo + 1)).astype(np.uint16)


def shape_tuples(shape: FlowShape, gen_id: int, flows: int, default_v6: bool, default_proto: int,
                 defaults) -> FlowTuples:
    """The flows' tuples: the shape's fields drawn in, the rest ``defaults(v6, proto)`` (the generator's own
    tuples for flows of those IP versions and protocols: ``traffic.default_tuples``)."""
    n = flows
    if shape.mix:
        names = np.array([m for m, _ in shape.mix])[spread(field_rng(shape, gen_id, "protocol"), n,
                                                            [w for _, w in shape.mix])]
    else:
        names = np.full(n, "tcp" if default_proto == IPPROTO_TCP else "udp")
    # the IP version of each flow: its destination network's, else its source network's, else the profile's
    lead = "dst" if shape.dst else "src" if shape.src else None
    picks: dict[str, np.ndarray] = {}
    v6 = np.full(n, default_v6, bool)
    if lead is not None:
        nets = getattr(shape, lead)
        picks[lead] = spread(field_rng(shape, gen_id, lead), n, [1.0] * len(nets))
        v6 = np.array([nets[i].version == 6 for i in picks[lead]], bool)
    proto = np.where(names == "tcp", IPPROTO_TCP, np.where(names == "udp", IPPROTO_UDP,
                     np.where(v6, IPPROTO_ICMPV6, IPPROTO_ICMP))).astype(np.uint8)
    out = defaults(v6, proto)
    for field in ("src", "dst"):
        nets = getattr(shape, field)
        if not nets:
            continue
        if field not in picks:              # the follower: spread each version's flows over its networks
            pick = np.zeros(n, np.int64)
            rng = field_rng(shape, gen_id, field)
            for version in (4, 6):
                rows = np.flatnonzero(v6 == (version == 6))
                own = [i for i, net in enumerate(nets) if net.version == version]
                if len(rows):
                    pick[rows] = np.array(own)[spread(rng, len(rows), [1.0] * len(own))]
            picks[field] = pick
        setattr(out, field, draw_hosts(field_rng(shape, gen_id, f"{field}-host"), nets, picks[field]))
    for field in ("sport", "dport"):
        ranges = getattr(shape, field)
        if ranges:
            setattr(out, field, draw_ports(field_rng(shape, gen_id, field), ranges, n))
    return out
