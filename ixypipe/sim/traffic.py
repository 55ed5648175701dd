"""What travels on the simulated wires: packet batches, the traffic generator and the sinks.

A :class:`PacketBatch` is a padded ``(n, max_len)`` byte matrix plus the
lengths.  The :class:`Generator` builds frames of a profile (IPv4/UDP by
default; IMIX sizes, an 802.1Q tag, IPv6/UDP, TCP SYN, runts: see
``payload.Profile``) from one precomputed template per flow; per packet
only the sequence number and the payload checksum change, and both are
written for a whole batch at once.
By default flows differ in the low 16 bits of the source IP *and* the UDP
source port, not in lockstep (see :func:`flow_tuples`), so RSS spreads them
evenly over any number of queues, as real traffic spreads; a flow shape
(``sim/shape.py``) gives them the user's networks, ports and protocols
(UDP, TCP SYN, ICMP echo, IPv4 and IPv6 mixed), and a template
(``sim/replay.py``) replays a capture's frames with the record appended.
The :class:`Sink` checks every frame it receives, vectorized per batch:
it finds the record by walking the headers (any layout a generator makes;
a replaying generator's record is the frame's last 18 bytes), then
magic, generator and flow ids, the flow's frame size, the checksum over everything after the
Ethernet header (so a worker may rewrite MAC addresses), per-flow sequence
order (loss and reordering) and, when asked, that byte 1 was incremented
once as ixy-fwd does.  The :class:`CountSink` takes any traffic (another
driver's generator, a pcap replay): it counts packets, bytes and a size
histogram in RFC 2819 etherStats buckets.  Either can also append what it
receives to a pcap file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ixypipe.nic.registers import RETA_ENTRIES, RSS_DEFAULT_KEY
from ixypipe.pcapfile import PcapWriter
from ixypipe.protocols import (
    ETH_ADDR_LEN,
    ETH_DST_OFF,
    ETH_HEADER_LEN,
    ETH_SRC_OFF,
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    ICMP6_ECHO_REQUEST,
    ICMP_ECHO_HEADER_LEN,
    ICMP_ECHO_ID,
    ICMP_ECHO_REQUEST,
    ICMP_TYPE,
    IP4_CSUM,
    IP4_DST,
    IP4_MIN_IHL,
    IP4_PROTO,
    IP4_SRC,
    IP4_TOTAL_LEN,
    IP4_TTL,
    IP4_VER_IHL,
    IP4_VERSION,
    IP6_ADDR_LEN,
    IP6_DST,
    IP6_HOP_LIMIT,
    IP6_NEXT_HEADER,
    IP6_PAYLOAD_LEN,
    IP6_SRC,
    IP6_VERSION,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    L4_DPORT,
    L4_SPORT,
    TCP_DATA_OFF,
    TCP_HEADER_LEN,
    TCP_SEQ,
    TCP_WINDOW,
    UDP_HEADER_LEN,
    UDP_LEN,
    VLAN_TAG_LEN,
    VLAN_TCI_OFF,
)
from ixypipe.sim.latency import EmitTimes, LatencyHistogram
from ixypipe.sim.payload import (
    SIM_CSUM_OFF,
    SIM_MAGIC,
    SIM_MAX_FRAME,
    SIM_MIN_FRAME,
    SIM_REC_CSUM,
    SIM_REC_FLOW,
    SIM_REC_GEN,
    SIM_REC_LEN,
    SIM_REC_MAGIC,
    SIM_REC_SEQ,
    SIM_TOUCH_OFF,
    TCP_SYN_FLAGS,
    Profile,
    ProfileError,
    vlan_tci,
)
from ixypipe.sim.replay import replay_templates
from ixypipe.sim.rss import toeplitz_tables
from ixypipe.sim.shape import FlowShape, FlowTuples, ShapeError, shape_tuples

log = logging.getLogger(__name__)
MAX_FLOWS = 65535
FLOW_ID_BITS = 16               # flow ids 0..MAX_FLOWS fit; each bit of the id flips one mixing vector
UDP_DST_PORT = 5000
TCP_DST_PORT = 80
TCP_ISN = 0x1C5E0000            # every SYN's sequence number (a flood does not care)
TCP_SYN_WINDOW = 64240
IP_TTL = 64
GEN_DST_IP = bytes((10, 255, 0, 1))
GEN_IP6_PREFIX = bytes.fromhex("fd00" + "00" * 14)       # unique local: fd00::<gen>:<flow bits>
GEN_DST_IP6 = bytes.fromhex("fd00" + "00" * 12 + "ff01")
PLAIN = Profile()
_CSUM_MOD = 1 << 32
SINK_MODES = ("verify", "count")
LATENCY_PUBLISH_NS = 100_000_000    # a verifying sink's latency percentiles are recomputed this often at most
FCS_LEN = 4                     # the frame check sequence the wire adds; frames here are without it
# RFC 2819 etherStatsPkts*Octets: sizes on the wire, FCS included; a bucket holds sizes up to its bound
# (<64: undersize, the model does not pad; >1518: oversize, which the model's TX faults cannot produce)
SIZE_BUCKET_NAMES = ("<64", "64", "65-127", "128-255", "256-511", "512-1023", "1024-1518", ">1518")
SIZE_BUCKET_UPPER = np.array([63, 64, 127, 255, 511, 1023, 1518], np.int64)


class TrafficError(ValueError):
    """A bad generator or sink setting."""


def _checksum_weights() -> np.ndarray:
    """Per-byte-position weights (nonzero, < 2**16) from the L3 header on; the Ethernet header's are 0."""
    pos = np.arange(SIM_MAX_FRAME, dtype=np.uint64)
    w = ((pos * np.uint64(40503) + np.uint64(7919)) % np.uint64(65521) + np.uint64(1)).astype(np.float64)
    w[:ETH_HEADER_LEN] = 0
    return w


CSUM_WEIGHTS = _checksum_weights()


def payload_checksum(frames: np.ndarray, csum_off=SIM_CSUM_OFF) -> np.ndarray:
    """Checksum of each row of an ``(n, length)`` uint8 matrix (all rows one length).

    A position-weighted byte sum mod 2**32 over bytes from the L3 header on
    (a worker may rewrite MAC addresses), the record's checksum field at
    ``csum_off`` (one offset, or one per row) excluded: any single changed
    byte changes it.  Exact in float64 (at most 255 * 65521 * 9018 < 2**53),
    so one BLAS mat-vec.
    """
    length = frames.shape[1]
    sums = frames.astype(np.float64) @ CSUM_WEIGHTS[:length]
    n = len(frames)
    field = np.asarray(csum_off, np.int64)[..., None] + np.arange(4)           # the field's positions
    field = np.broadcast_to(field, (n, 4)) if field.ndim == 1 else field
    inside = field < length
    at = np.where(inside, field, 0)
    sums -= (np.take_along_axis(frames, at, 1).astype(np.float64) * CSUM_WEIGHTS[at] * inside).sum(axis=1)
    return (sums.astype(np.uint64) % np.uint64(_CSUM_MOD)).astype(np.uint32)


@dataclass
class PacketBatch:
    """Frames on a wire: ``data[i, :lengths[i]]`` is frame i (rows may be padded)."""
    data: np.ndarray         # (n, max_len) uint8
    lengths: np.ndarray      # (n,) int64

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, idx) -> PacketBatch:
        return PacketBatch(self.data[idx], self.lengths[idx])

    def frame(self, i: int) -> bytes:
        return bytes(self.data[i, :int(self.lengths[i])])

    def by_length(self):
        """(row indices, (k, length) matrix) for every distinct frame length in the batch."""
        if len(self.lengths) == 0:
            return
        first = int(self.lengths[0])
        if (self.lengths == first).all():
            yield np.arange(len(self.lengths)), self.data[:, :first]
            return
        for length in np.unique(self.lengths):
            rows = np.flatnonzero(self.lengths == length)
            yield rows, self.data[rows, :int(length)]

    @staticmethod
    def from_frames(frames: list[bytes]) -> PacketBatch:
        lengths = np.array([len(f) for f in frames], dtype=np.int64)
        data = np.zeros((len(frames), int(lengths.max()) if len(frames) else 0), np.uint8)
        for i, f in enumerate(frames):
            data[i, :len(f)] = np.frombuffer(f, np.uint8)
        return PacketBatch(data, lengths)


def _ipv4_header_checksum(header: np.ndarray) -> int:
    words = header.astype(np.uint32).reshape(-1, 2)
    total = int((words[:, 0] << 8 | words[:, 1]).sum())
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# The 32 bits a flow varies, as (byte position in the 12-byte RSS input, which is IPv4 src | dst | sport | dport)
_FLOW_FIELD_BYTES = (2, 3, 8, 9)          # source IP bytes 2..3 and the UDP source port
_FLOW_BASE = 0x0001_0400                  # flow 0: 10.<gen>.0.1, source port 1024
_RETA_BITS = RETA_ENTRIES.bit_length() - 1   # the hash bits that pick the RETA entry (7)


def _gf2_rank(vectors) -> int:
    basis = []
    for v in vectors:
        for b in basis:
            v = min(v, v ^ b)
        if v:
            basis.append(v)
    return len(basis)


def _flow_vectors(gen_id: int) -> list[int]:
    """FLOW_ID_BITS linearly independent 32-bit flips of the flow fields.  The Toeplitz hash is
    linear over XOR, so with the standard key (the one drivers program) flipping vector i < 7
    flips exactly hash bit i of the RETA index, and the others leave it alone: flows 0..127
    then take every RETA entry once, which spreads any number of flows evenly over any RETA.
    Each vector is mixed with random hash-neutral flips, so address and port both change."""
    tables = toeplitz_tables(RSS_DEFAULT_KEY)
    reta_mask = (1 << _RETA_BITS) - 1

    def image(v: int) -> int:                 # RETA-index bits of the hash of a flip vector
        h = 0
        for k, pos in enumerate(_FLOW_FIELD_BYTES):
            h ^= int(tables[pos, (v >> (24 - 8 * k)) & 0xFF])
        return h & reta_mask

    # Gaussian elimination over GF(2): preimages of each RETA bit, and the kernel (hash-neutral flips)
    rows = [(1 << (31 - b), image(1 << (31 - b))) for b in range(32)]
    pre, kernel = {}, []
    for v, h in rows:
        for bit, (pv, ph) in pre.items():
            if h >> bit & 1:
                v, h = v ^ pv, h ^ ph
        if h == 0:
            kernel.append(v)
            continue
        top = h.bit_length() - 1
        for bit in list(pre):
            pv, ph = pre[bit]
            if ph >> top & 1:
                pre[bit] = (pv ^ v, ph ^ h)
        pre[top] = (v, h)
    rng = np.random.default_rng(0x1C5E0000 + gen_id)
    while True:
        def neutral() -> int:
            pick = rng.integers(0, 2, len(kernel))
            out = 0
            for k, v in zip(pick, kernel, strict=True):
                out ^= v if k else 0
            return out
        vectors = [pre[i][0] ^ neutral() for i in range(_RETA_BITS)]
        vectors += [neutral() for _ in range(FLOW_ID_BITS - _RETA_BITS)]
        if _gf2_rank(vectors) == FLOW_ID_BITS and all(v >> 16 and v & 0xFFFF for v in vectors):
            return vectors


def flow_tuples(gen_id: int, flows: int) -> tuple[np.ndarray, np.ndarray]:
    """(low 16 bits of the source IP, UDP source port) of each flow: all distinct."""
    flow = np.arange(flows, dtype=np.uint32)
    fields = np.full(flows, _FLOW_BASE, np.uint32)
    for i, v in enumerate(_flow_vectors(gen_id)):
        fields ^= np.where((flow >> i) & 1 != 0, np.uint32(v), np.uint32(0))
    return fields >> 16, fields & 0xFFFF


def default_tuples(gen_id: int, flows: int, v6: np.ndarray, proto: np.ndarray) -> FlowTuples:
    """The generator's own tuples for flows of these IP versions and protocols: from 10.<gen>.x.x (IPv4)
    or fd00::<gen>:x (IPv6) and the source ports of :func:`flow_tuples`, to 10.255.0.1 or fd00::ff01,
    port 5000 (UDP) or 80 (TCP)."""
    ip16, sport = flow_tuples(gen_id, flows)
    src = np.zeros((flows, IP6_ADDR_LEN), np.uint8)
    src[:, :4] = (10, gen_id & 0xFF, 0, 0)
    src[:, 2], src[:, 3] = ip16 >> 8, ip16 & 0xFF
    six = np.frombuffer(GEN_IP6_PREFIX, np.uint8).copy()
    six[IP6_ADDR_LEN - 3] = gen_id & 0xFF
    src[v6] = six
    src[v6, IP6_ADDR_LEN - 2], src[v6, IP6_ADDR_LEN - 1] = ip16[v6] >> 8, ip16[v6] & 0xFF
    dst = np.zeros((flows, IP6_ADDR_LEN), np.uint8)
    dst[:, :4] = np.frombuffer(GEN_DST_IP, np.uint8)
    dst[v6] = np.frombuffer(GEN_DST_IP6, np.uint8)
    dport = np.where(proto == IPPROTO_TCP, TCP_DST_PORT, UDP_DST_PORT).astype(np.uint16)
    return FlowTuples(np.asarray(v6, bool), np.asarray(proto, np.uint8), src, dst, sport.astype(np.uint16), dport)


def profile_tuples(gen_id: int, flows: int, profile: Profile, shape: FlowShape | None = None) -> FlowTuples:
    """Each flow's tuple: the profile's defaults, with the shape's fields (sim/shape.py) drawn in."""
    v6 = np.full(flows, profile.ipv6, bool)
    if shape is None or not shape.given:
        return default_tuples(gen_id, flows, v6, np.full(flows, profile.l4_proto, np.uint8))
    return shape_tuples(shape, gen_id, flows, profile.ipv6, profile.l4_proto,
                        lambda v6, proto: default_tuples(gen_id, flows, v6, proto))


def record_offsets_of(tuples: FlowTuples, tag_len: int) -> np.ndarray:
    """Where each flow's record starts: after its L4 header (UDP 8, TCP 20, ICMP echo 8 bytes)."""
    l4 = ETH_HEADER_LEN + tag_len + np.where(tuples.v6, IPV6_HEADER_LEN, IPV4_HEADER_LEN)
    udp = tuples.proto == IPPROTO_UDP
    return l4 + np.where(tuples.proto == IPPROTO_TCP, TCP_HEADER_LEN, np.where(udp, UDP_HEADER_LEN,
                                                                                 ICMP_ECHO_HEADER_LEN))


def build_templates(gen_id: int, tuples: FlowTuples, lengths: np.ndarray, src_mac: bytes, dst_mac: bytes,
                    vlan: int | None = None, runt: bool = False) -> np.ndarray:
    """One frame per flow, ``lengths[f]`` bytes (padded with zeros to the longest), sequence number 0 and
    checksum not yet set.  A runt is the IPv4/UDP layout cut to its size (no record).  L4 checksums
    are left 0 (the record's checksum guards the content); the IPv4 header checksum is set."""
    flows = len(tuples)
    tag = VLAN_TAG_LEN if vlan is not None else 0
    rec = record_offsets_of(tuples, tag)
    full = max(int(lengths.max()), int(rec.max()) + SIM_REC_LEN)
    t = np.zeros((flows, full), np.uint8)
    t[:, ETH_DST_OFF:ETH_DST_OFF + ETH_ADDR_LEN] = np.frombuffer(dst_mac, np.uint8)
    t[:, ETH_SRC_OFF:ETH_SRC_OFF + ETH_ADDR_LEN] = np.frombuffer(src_mac, np.uint8)
    type_off = ETH_TYPE_OFF
    if vlan is not None:
        _be16(t, type_off, ETHERTYPE_VLAN)
        _be16(t, type_off + 2 + VLAN_TCI_OFF, vlan_tci(vlan))
        type_off += VLAN_TAG_LEN
    l3 = ETH_HEADER_LEN + tag
    size = np.maximum(lengths, rec + SIM_REC_LEN)      # the lengths the headers give (a runt's: uncut)
    for six in (False, True):
        rows = np.flatnonzero(tuples.v6 == six)
        if not len(rows):
            continue
        r = t[rows]
        l4 = l3 + (IPV6_HEADER_LEN if six else IPV4_HEADER_LEN)
        if six:
            _be16(r, type_off, ETHERTYPE_IPV6)
            r[:, l3] = IP6_VERSION << 4
            _be16(r, l3 + IP6_PAYLOAD_LEN, size[rows] - l4)
            r[:, l3 + IP6_NEXT_HEADER] = tuples.proto[rows]
            r[:, l3 + IP6_HOP_LIMIT] = IP_TTL
            r[:, l3 + IP6_SRC:l3 + IP6_SRC + IP6_ADDR_LEN] = tuples.src[rows]
            r[:, l3 + IP6_DST:l3 + IP6_DST + IP6_ADDR_LEN] = tuples.dst[rows]
        else:
            _be16(r, type_off, ETHERTYPE_IPV4)
            r[:, l3 + IP4_VER_IHL] = IP4_VERSION << 4 | IP4_MIN_IHL
            _be16(r, l3 + IP4_TOTAL_LEN, size[rows] - l3)
            r[:, l3 + IP4_TTL] = IP_TTL
            r[:, l3 + IP4_PROTO] = tuples.proto[rows]
            r[:, l3 + IP4_SRC:l3 + IP4_SRC + 4] = tuples.src[rows, :4]
            r[:, l3 + IP4_DST:l3 + IP4_DST + 4] = tuples.dst[rows, :4]
        proto = tuples.proto[rows]
        tcp, udp = proto == IPPROTO_TCP, proto == IPPROTO_UDP
        icmp = ~(tcp | udp)
        _be16(r, l4 + L4_SPORT, np.where(icmp, 0, tuples.sport[rows]))
        _be16(r, l4 + L4_DPORT, np.where(icmp, 0, tuples.dport[rows]))
        if tcp.any():
            r[tcp, l4 + TCP_SEQ:l4 + TCP_SEQ + 4] = np.frombuffer(TCP_ISN.to_bytes(4, "big"), np.uint8)
            r[tcp, l4 + TCP_DATA_OFF] = (TCP_HEADER_LEN // 4) << 4
            r[tcp, l4 + TCP_DATA_OFF + 1] = TCP_SYN_FLAGS
            r[tcp, l4 + TCP_WINDOW] = TCP_SYN_WINDOW >> 8
            r[tcp, l4 + TCP_WINDOW + 1] = TCP_SYN_WINDOW & 0xFF
        if udp.any():
            r[udp, l4 + UDP_LEN] = (size[rows][udp] - l4) >> 8
            r[udp, l4 + UDP_LEN + 1] = (size[rows][udp] - l4) & 0xFF
        if icmp.any():                       # echo request: identifier = the flow's source port, sequence 0
            r[icmp, l4 + ICMP_TYPE] = ICMP6_ECHO_REQUEST if six else ICMP_ECHO_REQUEST
            r[icmp, l4 + ICMP_ECHO_ID] = tuples.sport[rows][icmp] >> 8
            r[icmp, l4 + ICMP_ECHO_ID + 1] = tuples.sport[rows][icmp] & 0xFF
        if not six:
            for i in range(len(rows)):   # once per flow at set-up, not per packet
                csum = _ipv4_header_checksum(r[i, l3:l3 + IPV4_HEADER_LEN])
                r[i, l3 + IP4_CSUM:l3 + IP4_CSUM + 2] = (csum >> 8, csum & 0xFF)
        t[rows] = r
    if not runt:
        rows = np.arange(flows)
        at = rec[:, None] + np.arange(SIM_REC_LEN)
        record = np.zeros((flows, SIM_REC_LEN), np.uint8)
        record[:, SIM_REC_MAGIC:SIM_REC_MAGIC + 2] = np.frombuffer(SIM_MAGIC.to_bytes(2, "little"), np.uint8)
        record[:, SIM_REC_GEN:SIM_REC_GEN + 2] = np.frombuffer(gen_id.to_bytes(2, "little"), np.uint8)
        record[:, SIM_REC_FLOW:SIM_REC_FLOW + 2] = rows.astype("<u2").view(np.uint8).reshape(flows, 2)
        t[rows[:, None], at] = record
    fill = np.arange(full, dtype=np.uint32)
    pad = fill[None, :] >= (rec + SIM_REC_LEN)[:, None]
    t[pad] = np.broadcast_to((fill * 31 + gen_id).astype(np.uint8), t.shape)[pad]
    return t[:, :int(lengths.max())] * (np.arange(int(lengths.max())) < lengths[:, None])


def _be16(t: np.ndarray, off: int, value) -> None:
    """Big-endian 16-bit field at ``off`` of every row: one value, or one per row."""
    value = np.asarray(value, np.uint32)
    t[:, off] = value >> 8
    t[:, off + 1] = value & 0xFF


class Generator:
    """Frames for one wire: packet k goes to flow k % flows with sequence number k // flows.

    Each flow has one frame size (the profile's sizes, repeating over the
    flows: IMIX gives 12 flows 7:4:1 of 60/590/1514 bytes) and one template
    of that size, padded with zeros to the widest.  A ``shape``
    (sim/shape.py) gives the flows the user's addresses, ports and protocols;
    a ``template`` (a capture's frames, sim/replay.py) replays them instead,
    with the record appended as a trailer (``trailer``).  ``flow_rec`` is
    where each flow's record starts (-1 for runts, which carry none)."""

    def __init__(self, gen_id: int, packet_size: int, flows: int, count: int, rate_pps: float,
                 src_mac: bytes, dst_mac: bytes, profile: Profile = PLAIN, max_data: int | None = None,
                 shape: FlowShape | None = None, template: list[bytes] | None = None):
        if not 1 <= flows <= MAX_FLOWS:
            raise TrafficError(f"generator flows must be 1..{MAX_FLOWS}, got {flows}")
        try:
            if shape is not None:
                shape.check_profile(profile)
            if template is None:
                least = shape.min_size(profile) if shape is not None and shape.given and not profile.runt else None
                sizes = profile.sizes(packet_size, max_data, least)
                profile.check_flows(flows)
        except ShapeError as exc:
            raise TrafficError(f"generator {exc.field} {exc}") from None
        except ProfileError as exc:
            raise TrafficError(f"generator {exc}") from None
        if count < 0:
            raise TrafficError(f"generator count must be >= 0 (0 = unlimited), got {count}")
        if rate_pps < 0:
            raise TrafficError(f"generator rate must be >= 0 pps (0 = as fast as the ring takes), got {rate_pps}")
        self.gen_id = gen_id
        self.profile = profile
        self.shape = shape
        self.flows = flows
        self.count = count
        self.rate_pps = rate_pps
        self.trailer = template is not None
        if template is not None:
            self.templates, self.flow_lengths, rec = replay_templates(template, flows, gen_id, shape, src_mac,
                                                                      dst_mac)
            if max_data is not None and int(self.flow_lengths.max()) > max_data:
                raise TrafficError(f"generator template: a frame of {int(self.flow_lengths.max())} bytes with the "
                                   f"record does not fit a packet buffer, which holds {max_data}")
            self.tuples = None
        else:
            self.flow_lengths = np.array([sizes[f % len(sizes)] for f in range(flows)], np.int64)
            self.tuples = profile_tuples(gen_id, flows, profile, shape)
            self.templates = build_templates(gen_id, self.tuples, self.flow_lengths, src_mac, dst_mac, profile.vlan,
                                             profile.runt)
            rec = np.full(flows, -1, np.int64) if profile.runt else record_offsets_of(self.tuples, profile.tag_len)
        self.flow_rec = np.asarray(rec, np.int64)
        self.packet_size = int(self.flow_lengths.max())         # the widest frame
        self._one_size = bool((self.flow_lengths == self.packet_size).all())
        self.base_csum = payload_checksum(self.templates, np.maximum(self.flow_rec, 0) + SIM_REC_CSUM).astype(np.uint64)
        self.touch_byte = int(self.templates[0, SIM_TOUCH_OFF])
        self.sent = 0                     # packets generated so far (= index of the next one)
        self.emitted = EmitTimes()        # when the last ones went into RX descriptors (latency samples)
        self._kernel_tables = None
        self._credit = 0.0
        self._last_ns: int | None = None
        self.credit_lost = 0.0            # packets the rate allowed but the caller did not take in time

    def remaining(self) -> int | None:
        return None if self.count == 0 else self.count - self.sent

    def allowance(self, limit: int, now_ns: int | None = None) -> int:
        """How many packets may go now: rate credit (rate > 0), the count, and ``limit``."""
        n = limit
        if self.rate_pps > 0:
            now_ns = time.monotonic_ns() if now_ns is None else now_ns
            if self._last_ns is not None:
                # credit for at most 10 ms, so a stall is not followed by a huge burst; what is cut off
                # is rate the generator could not keep (credit_lost)
                credit = self._credit + (now_ns - self._last_ns) * 1e-9 * self.rate_pps
                self._credit = min(credit, max(1.0, self.rate_pps * 0.01))
                self.credit_lost += credit - self._credit
            self._last_ns = now_ns
            n = min(n, int(self._credit))
        left = self.remaining()
        return max(0, min(n, left) if left is not None else n)

    def pause(self) -> None:
        self._last_ns = None
        self._credit = 0.0

    def flows_of_next(self, n: int) -> np.ndarray:
        return (self.sent + np.arange(n, dtype=np.int64)) % self.flows

    def bytes_of_next(self, n: int) -> int:
        """Frame bytes of the next ``n`` packets (before :meth:`commit`)."""
        if self._one_size:
            return n * self.packet_size
        return int(self.flow_lengths[self.flows_of_next(n)].sum())

    def make(self, n: int) -> PacketBatch:
        """The next ``n`` frames; :meth:`commit` says how many of them went on the wire."""
        k = self.sent + np.arange(n, dtype=np.uint64)
        flow = (k % np.uint64(self.flows)).astype(np.intp)
        data = self.templates[flow]
        lengths = self.flow_lengths[flow]
        rec = self.flow_rec[flow]
        if self.flow_rec[0] >= 0:
            seq = k // np.uint64(self.flows)
            seq_bytes = seq.astype("<u8").view(np.uint8).reshape(n, 8)
            rows = np.arange(n)[:, None]
            seq_at = rec[:, None] + SIM_REC_SEQ + np.arange(8)
            data[rows, seq_at] = seq_bytes
            delta = (seq_bytes.astype(np.float64) * CSUM_WEIGHTS[seq_at]).sum(axis=1).astype(np.uint64)
            csum = ((self.base_csum[flow] + delta) % np.uint64(_CSUM_MOD)).astype("<u4")
            data[rows, rec[:, None] + SIM_REC_CSUM + np.arange(4)] = csum.view(np.uint8).reshape(n, 4)
        return PacketBatch(data, lengths)

    def commit(self, n: int, now_ns: int | None = None) -> None:
        """``n`` of the next packets went on the wire (into RX descriptors) at ``now_ns``, if given."""
        if now_ns is not None and n:
            self.emitted.stamp(self.sent, n, now_ns)
        self._credit -= n
        self.sent += n

    def kernel_tables(self) -> tuple:
        """(templates, per-flow lengths, base checksums, checksum weights, per-flow record offsets), the
        arguments the compiled RX walk takes before the packet numbers."""
        if self._kernel_tables is None:
            self._kernel_tables = (self.templates, self.flow_lengths, self.base_csum.astype(np.int64),
                                   CSUM_WEIGHTS.astype(np.int64), self.flow_rec)
        return self._kernel_tables


def record_offsets(frames: np.ndarray) -> np.ndarray:
    """Where each frame's record starts, found by walking its headers (an optional 802.1Q tag, IPv4
    without options or IPv6, UDP, TCP without options or ICMP echo); -1 for a layout no generator makes
    (a replayed capture's record is a trailer instead: :meth:`Sink._verify`).
    ``frames`` is at least SIM_MIN_FRAME bytes wide."""
    rows = np.arange(len(frames))
    ethertype = frames[:, ETH_TYPE_OFF].astype(np.int64) << 8 | frames[:, ETH_TYPE_OFF + 1]
    tagged = ethertype == ETHERTYPE_VLAN
    inner = frames[:, ETH_TYPE_OFF + VLAN_TAG_LEN].astype(np.int64) << 8 | frames[:, ETH_TYPE_OFF + VLAN_TAG_LEN + 1]
    ethertype = np.where(tagged, inner, ethertype)
    l3 = ETH_HEADER_LEN + VLAN_TAG_LEN * tagged
    v4, v6 = ethertype == ETHERTYPE_IPV4, ethertype == ETHERTYPE_IPV6
    v4 &= frames[rows, l3 + IP4_VER_IHL] == (IP4_VERSION << 4 | IP4_MIN_IHL)
    proto = np.where(v6, frames[rows, l3 + IP6_NEXT_HEADER], frames[rows, l3 + IP4_PROTO])
    l4 = l3 + np.where(v6, IPV6_HEADER_LEN, IPV4_HEADER_LEN)
    udp, tcp = proto == IPPROTO_UDP, proto == IPPROTO_TCP
    icmp = np.where(v6, proto == IPPROTO_ICMPV6, proto == IPPROTO_ICMP)
    rec = l4 + np.where(tcp, TCP_HEADER_LEN, np.where(udp, UDP_HEADER_LEN, ICMP_ECHO_HEADER_LEN))
    return np.where((v4 | v6) & (udp | tcp | icmp), rec, -1)


@dataclass
class SinkResult:
    received: int = 0
    received_bytes: int = 0
    lost: int = 0
    reordered: int = 0
    corrupt: int = 0
    untouched: int = 0
    pcap_failed: int = 0      # frames the sink's capture file could not take (disk full...)
    rewritten: int = 0        # of the corrupt: a record of a known generator and flow, other bytes changed


class SinkCapture:
    """A sink's copy of what it receives in a pcap file, written live (a running capture is readable);
    a write that fails is logged once and its frames counted, the sink goes on."""

    def __init__(self, path: str, result: SinkResult):
        self.writer = PcapWriter(path, live=True)
        self.result = result

    def write(self, batch: PacketBatch) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write_batch(batch.data, batch.lengths)
        except OSError as exc:
            if not self.result.pcap_failed:
                log.error("sink capture %s: %s; frames are counted, no longer written", self.writer.path,
                          exc.strerror or exc)
            self.result.pcap_failed += len(batch)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass            # the failure was logged and counted when the write failed
            self.writer = None


class Sink:
    """Verifies frames from any of the world's generators (``generators[gen_id]``)."""

    def __init__(self, generators: dict[int, Generator], verify: bool = True, expect_touch: bool = False,
                 pcap: str | None = None, compiled: bool = False, clock=None):
        """``compiled``: verify with the numba kernel (``sim/kernels.py``), the numpy code being the reference;
        ``clock``: the model's clock, to sample the latency from each frame's generator (sim/latency.py)."""
        self.verify = verify
        self.generators = generators
        self.clock = clock
        self.latency = LatencyHistogram()
        self._batches = 0
        self._latency_summary = (0, 0, 0, 0, 0)
        self._summary_at = None
        self._kernel = None
        if compiled:
            from ixypipe.sim.kernels import sink_verify
            self._kernel = sink_verify
            self._weights = CSUM_WEIGHTS.astype(np.int64)
            self._res = np.zeros(9, np.int64)
        self.expect_touch = expect_touch
        self.result = SinkResult()
        n_gen = max(generators, default=-1) + 1
        self.max_flows = max((g.flows for g in generators.values()), default=1)
        self.gen_known = np.zeros(max(n_gen, 1), bool)
        self.gen_flows = np.zeros(max(n_gen, 1), np.int64)
        self.gen_touch = np.zeros(max(n_gen, 1), np.uint8)
        self.gen_trailer = np.zeros(max(n_gen, 1), bool)      # its record is the frame's last bytes (a template)
        for gid, g in generators.items():
            self.gen_trailer[gid] = g.trailer
            self.gen_known[gid] = True
            self.gen_flows[gid] = g.flows
            self.gen_touch[gid] = (g.touch_byte + 1) & 0xFF
        # highest sequence number + 1 seen per (generator, flow); 0 = none yet
        self.top = np.zeros(max(n_gen, 1) * self.max_flows, np.uint64)
        # the frame length each (generator, flow) sends: IMIX flows differ; 0 = no such flow
        self.flow_size = np.zeros(max(n_gen, 1) * self.max_flows, np.int64)
        for gid, g in generators.items():
            self.flow_size[gid * self.max_flows:gid * self.max_flows + g.flows] = g.flow_lengths
        self._top_sum = 0
        self._verified = 0
        self.pcap = SinkCapture(pcap, self.result) if pcap else None
        self.sizes = np.zeros(len(SIZE_BUCKET_NAMES), np.int64)     # a verifying sink leaves them at 0

    def close(self) -> None:
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None

    def receive(self, batch: PacketBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        r = self.result
        r.received += n
        r.received_bytes += int(batch.lengths.sum())
        if self.pcap is not None:
            self.pcap.write(batch)
        if not self.verify:
            return
        # one frame per batch (a different position each batch) is a latency sample if it verifies
        probe = self._batches % n if self.clock is not None else -1
        self._batches += 1
        if self._kernel is not None:
            res = self._res
            res[:] = 0
            self._kernel(batch.data, batch.lengths, self.gen_known, self.gen_trailer, self.flow_size, self.gen_flows,
                         self.gen_touch, self.max_flows, self.top, self._weights, self.expect_touch, probe, res)
            corrupt, untouched, reordered, rise, verified, gen, flow, seq1, rewritten = res.tolist()
            if seq1:
                self._add_latency(gen, flow, seq1 - 1)
            r.corrupt += corrupt
            r.rewritten += rewritten
            r.untouched += untouched
            r.reordered += reordered
            self._top_sum += rise
            self._verified += verified
            r.lost = max(0, self._top_sum - self._verified)
            return
        for rows, frames in batch.by_length():
            self._verify(rows, frames, probe)

    def _add_latency(self, gen_id: int, flow: int, seq: int) -> None:
        """A verified frame's latency since its generator sent it, if the generator still has its time."""
        gen = self.generators[gen_id]
        sent_at = gen.emitted.of(seq * gen.flows + flow)
        if sent_at is not None:
            self.latency.add(self.clock() - sent_at)

    def latency_summary(self, now_ns: int, exact: bool) -> tuple[int, ...]:
        """(samples, p50, p90, p99, max) in ns; recomputed at most every LATENCY_PUBLISH_NS unless ``exact``."""
        if self.latency.samples != self._latency_summary[0] and (
                exact or self._summary_at is None or now_ns - self._summary_at >= LATENCY_PUBLISH_NS):
            self._latency_summary = self.latency.summary()
            self._summary_at = now_ns
        return self._latency_summary

    def _verify(self, rows: np.ndarray, frames: np.ndarray, probe: int = -1) -> None:
        r = self.result
        k, length = frames.shape
        if length < SIM_MIN_FRAME:
            r.corrupt += k
            return
        rec = record_offsets(frames)
        found = (rec >= 0) & (rec + SIM_REC_LEN <= length)
        rec = np.where(found, rec, 0)
        record = np.take_along_axis(frames, rec[:, None] + np.arange(SIM_REC_LEN), 1)
        if self.gen_trailer.any():          # a replayed capture's record is the frame's last 18 bytes
            mine = found & self._known(record, trailer=False)
            tail = np.take_along_axis(frames, np.full((k, 1), length - SIM_REC_LEN) + np.arange(SIM_REC_LEN), 1)
            use_tail = ~mine & self._known(tail, trailer=True)
            rec = np.where(use_tail, length - SIM_REC_LEN, rec)
            record = np.where(use_tail[:, None], tail, record)
            found |= use_tail
        magic = record[:, SIM_REC_MAGIC:SIM_REC_MAGIC + 2].copy().view("<u2")[:, 0]
        gen = record[:, SIM_REC_GEN:SIM_REC_GEN + 2].copy().view("<u2")[:, 0].astype(np.int64)
        flow = record[:, SIM_REC_FLOW:SIM_REC_FLOW + 2].copy().view("<u2")[:, 0].astype(np.int64)
        seq = record[:, SIM_REC_SEQ:SIM_REC_SEQ + 8].copy().view("<u8")[:, 0]
        csum = record[:, SIM_REC_CSUM:SIM_REC_CSUM + 4].copy().view("<u4")[:, 0]
        gen_ok = gen < len(self.gen_known)
        gen_c = np.where(gen_ok, gen, 0)
        ok = found & (magic == SIM_MAGIC) & gen_ok & self.gen_known[gen_c] & (flow < self.gen_flows[gen_c])
        ours = ok.copy()                                   # a generator's record: changed frames are "rewritten"
        ok &= self.flow_size[np.where(ok, gen_c * self.max_flows + flow, 0)] == length
        ok &= payload_checksum(frames, rec + SIM_REC_CSUM) == csum
        r.corrupt += int(k - ok.sum())
        r.rewritten += int((ours & ~ok).sum())
        if self.expect_touch:
            r.untouched += int((ok & (frames[:, SIM_TOUCH_OFF] != self.gen_touch[gen_c])).sum())
        if not ok.any():
            return
        at = np.flatnonzero(rows == probe)                 # the batch's latency sample, if in this group and intact
        if len(at) and ok[at[0]]:
            self._add_latency(int(gen[at[0]]), int(flow[at[0]]), int(seq[at[0]]))
        self._order(gen[ok] * self.max_flows + flow[ok], seq[ok])

    def _known(self, record: np.ndarray, trailer: bool) -> np.ndarray:
        """Rows of ``record`` (k, SIM_REC_LEN) with the magic and a known generator whose record sits
        there (a trailer, or after the L4 header)."""
        magic = record[:, SIM_REC_MAGIC:SIM_REC_MAGIC + 2].copy().view("<u2")[:, 0]
        gen = record[:, SIM_REC_GEN:SIM_REC_GEN + 2].copy().view("<u2")[:, 0].astype(np.int64)
        gen_ok = gen < len(self.gen_known)
        gen_c = np.where(gen_ok, gen, 0)
        return (magic == SIM_MAGIC) & gen_ok & self.gen_known[gen_c] & (self.gen_trailer[gen_c] == trailer)

    def _order(self, key: np.ndarray, seq: np.ndarray) -> None:
        """Reordered = not above its flow's highest sequence so far; lost = sequence numbers
        below each flow's top never received (a late packet stops counting as lost)."""
        order = np.argsort(key, kind="stable")
        key, seq1 = key[order], seq[order] + np.uint64(1)
        shift = np.uint64(40)
        combined = (key.astype(np.uint64) << shift) | seq1
        prior = (key.astype(np.uint64) << shift) | self.top[key]
        running = np.maximum.accumulate(combined)
        prior[1:] = np.maximum(prior[1:], running[:-1])
        self.result.reordered += int((combined <= prior).sum())
        last = np.r_[key[1:] != key[:-1], True]
        ukey, utop = key[last], running[last] & np.uint64((1 << 40) - 1)
        old = self.top[ukey]
        new = np.maximum(old, utop)
        self._top_sum += int((new - old).sum())
        self.top[ukey] = new
        self._verified += len(key)
        self.result.lost = max(0, self._top_sum - self._verified)


class CountSink:
    """Any frames: packets, bytes (without FCS) and sizes on the wire (with FCS) in RFC 2819 buckets."""

    def __init__(self, pcap: str | None = None):
        self.result = SinkResult()
        self.sizes = np.zeros(len(SIZE_BUCKET_NAMES), np.int64)
        self.pcap = SinkCapture(pcap, self.result) if pcap else None

    def receive(self, batch: PacketBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        lengths = batch.lengths
        self.result.received += n
        self.result.received_bytes += int(lengths.sum())
        if lengths[0] == lengths[-1] and (lengths == lengths[0]).all():     # one size: one bucket
            self.sizes[np.searchsorted(SIZE_BUCKET_UPPER, int(lengths[0]) + FCS_LEN)] += n
        else:
            self.sizes += np.bincount(np.searchsorted(SIZE_BUCKET_UPPER, lengths + FCS_LEN),
                                      minlength=len(SIZE_BUCKET_NAMES))
        if self.pcap is not None:
            self.pcap.write(batch)

    def close(self) -> None:
        if self.pcap is not None:
            self.pcap.close()
            self.pcap = None
