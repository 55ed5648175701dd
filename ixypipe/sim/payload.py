"""The software 82599's own traffic format: what its generator writes and its verifying sink checks.

Generated frames are Ethernet II (optionally with one 802.1Q tag), IPv4
(no options) or IPv6 (no extension headers), then UDP, TCP or an ICMP echo
request; right after the L4 header comes a little-endian record the sink
checks: magic, generator id, flow id, sequence number, checksum (frames
replayed from a capture carry it as a trailer instead: ``sim/replay.py``).  A :class:`Profile`
says which layout and which sizes a generator makes; the sink finds the
record in any of them by walking the headers (:func:`record_offset`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ixypipe.protocols import (
    ETH_HEADER_LEN,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    TCP_HEADER_LEN,
    UDP_HEADER_LEN,
    UDP_OFF,
    VLAN_TAG_LEN,
    VLAN_VID_MASK,
)

# --- the record (offsets relative to its start, which follows the L4 header) ------------
SIM_MAGIC = 0x1C5E
SIM_REC_MAGIC = 0                                   # u16
SIM_REC_GEN = 2                                     # u16 generator id
SIM_REC_FLOW = 4                                    # u16 flow id
SIM_REC_SEQ = 6                                     # u64 sequence number within the flow
SIM_REC_CSUM = 14                                   # u32 checksum of bytes ETH_HEADER_LEN.. (this field excluded)
SIM_REC_LEN = 18
# the plain profile (Ethernet / IPv4 / UDP): the record at byte 42, the smallest frame (60 bytes,
# no FCS) holds exactly the headers and the record
SIM_PAYLOAD_OFF = UDP_OFF + UDP_HEADER_LEN          # 42
SIM_MAGIC_OFF = SIM_PAYLOAD_OFF + SIM_REC_MAGIC
SIM_GEN_OFF = SIM_PAYLOAD_OFF + SIM_REC_GEN
SIM_FLOW_OFF = SIM_PAYLOAD_OFF + SIM_REC_FLOW
SIM_SEQ_OFF = SIM_PAYLOAD_OFF + SIM_REC_SEQ
SIM_CSUM_OFF = SIM_PAYLOAD_OFF + SIM_REC_CSUM
SIM_MIN_FRAME = SIM_PAYLOAD_OFF + SIM_REC_LEN       # 60: also the Ethernet minimum without FCS
SIM_STD_FRAME = 1514                                # the largest frame without a jumbo setting (no FCS)
SIM_MAX_FRAME = 9018                                # jumbo: the largest frame the model carries (no FCS)
SIM_TOUCH_OFF = 1                                   # the byte ixy-fwd increments
SIM_RECORD_MAX_OFF = ETH_HEADER_LEN + VLAN_TAG_LEN + IPV6_HEADER_LEN + TCP_HEADER_LEN   # 78: the deepest record

# --- profiles ---------------------------------------------------------------------------------
PROFILES = ("udp", "imix", "vlan", "ipv6", "tcp-syn", "runt")
# simple IMIX (7:4:1 of 64/594/1518 bytes on the wire with FCS): one size per flow, in this
# 12-flow pattern, so the mix is exact when the flow count is a multiple of 12
IMIX_SIZES = (60, 590, 1514)
IMIX_WEIGHTS = (7, 4, 1)
IMIX_PATTERN = (60, 590, 60, 60, 590, 60, 1514, 60, 590, 60, 60, 590)
assert all(IMIX_PATTERN.count(s) == w for s, w in zip(IMIX_SIZES, IMIX_WEIGHTS, strict=True))
DEFAULT_VID = 100                                   # the vlan profile's tag when none is given
RUNT_SIZE = UDP_OFF + UDP_HEADER_LEN                # 42: the headers alone
VID_RANGE = (1, 4094)                               # 0 is a priority tag, 4095 reserved
TCP_SYN_FLAGS = 0x02


class ProfileError(ValueError):
    """A profile, size or VLAN id that cannot be generated; the message says what is allowed."""


@dataclass(frozen=True)
class Profile:
    """What a generator makes: its name, the 802.1Q VID (or none) and, derived, the layout and sizes."""
    name: str = "udp"
    vlan: int | None = None

    def __post_init__(self):
        if self.name not in PROFILES:
            raise ProfileError(f"profile must be one of {', '.join(PROFILES)}, got {self.name!r}")
        if self.vlan is not None and not VID_RANGE[0] <= self.vlan <= VID_RANGE[1]:
            raise ProfileError(f"VLAN id must be {VID_RANGE[0]}..{VID_RANGE[1]}, got {self.vlan}")
        if self.name == "vlan" and self.vlan is None:
            object.__setattr__(self, "vlan", DEFAULT_VID)

    @property
    def ipv6(self) -> bool:
        return self.name == "ipv6"

    @property
    def tcp(self) -> bool:
        return self.name == "tcp-syn"

    @property
    def runt(self) -> bool:
        return self.name == "runt"

    @property
    def tag_len(self) -> int:
        return VLAN_TAG_LEN if self.vlan is not None else 0

    @property
    def l3_off(self) -> int:
        return ETH_HEADER_LEN + self.tag_len

    @property
    def l4_off(self) -> int:
        return self.l3_off + (IPV6_HEADER_LEN if self.ipv6 else IPV4_HEADER_LEN)

    @property
    def record_off(self) -> int:
        return self.l4_off + (TCP_HEADER_LEN if self.tcp else UDP_HEADER_LEN)

    @property
    def l4_proto(self) -> int:
        return IPPROTO_TCP if self.tcp else IPPROTO_UDP

    @property
    def min_size(self) -> int:
        """The smallest frame of this layout that carries the record (runts: the smallest runt)."""
        return ETH_HEADER_LEN if self.runt else self.record_off + SIM_REC_LEN

    @property
    def max_size(self) -> int:
        return SIM_MIN_FRAME - 1 if self.runt else SIM_MAX_FRAME

    @property
    def default_size(self) -> int:
        return RUNT_SIZE if self.runt else self.min_size

    @property
    def default_flows(self) -> int:
        return len(IMIX_PATTERN) if self.name == "imix" else 0     # 0: the caller's own default

    def describe(self) -> str:
        tag = f", 802.1Q VID {self.vlan}" if self.vlan is not None else ""
        what = {"udp": "IPv4/UDP", "imix": "IPv4/UDP IMIX 7:4:1 of 60/590/1514 bytes", "vlan": "IPv4/UDP",
                "ipv6": "IPv6/UDP", "tcp-syn": "IPv4/TCP SYN", "runt": "runt (IPv4/UDP cut short)"}[self.name]
        return what + tag

    def sizes(self, packet_size: int, max_data: int | None = None, min_size: int | None = None) -> tuple[int, ...]:
        """Frame size of each flow, repeating (one entry unless IMIX); checked against the profile (or
        ``min_size``: a flow shape's largest layout, sim/shape.py) and, when given, the packet buffer's
        data size.  IMIX sizes grow by the tag when tagged."""
        sizes = tuple(s + self.tag_len for s in IMIX_PATTERN) if self.name == "imix" else (packet_size,)
        least = self.min_size if min_size is None else min_size
        for s in set(sizes):
            if not least <= s <= self.max_size:
                limit = f"{least}..{self.max_size}"
                headers = (f"the {self.describe()} headers" if min_size is None else
                           "the headers of the flows' largest layout (IP version and protocol)")
                why = (" (runts are shorter than the 60-byte Ethernet minimum)" if self.runt else
                       f" ({headers} and the {SIM_REC_LEN}-byte record need "
                       f"{least})" if s < least else " (jumbo frames up to 9018)")
                raise ProfileError(f"packet size must be {limit} bytes without FCS for profile {self.name}{why}, "
                                   f"got {s}")
            if max_data is not None and s > max_data:
                raise ProfileError(f"packet size {s} does not fit a packet buffer: buffers of this size hold "
                                   f"frames up to {max_data} bytes; a larger buffer_size (a power of two, "
                                   f"e.g. 16384) makes room for jumbo frames")
        return sizes

    def check_flows(self, flows: int) -> None:
        if self.name == "imix" and flows % len(IMIX_PATTERN):
            raise ProfileError(f"profile imix gives each flow one size, 7:4:1 of 60/590/1514 bytes in a pattern "
                               f"of {len(IMIX_PATTERN)} flows: flows must be a multiple of {len(IMIX_PATTERN)}, "
                               f"got {flows}")


def vlan_tci(vid: int) -> int:
    return vid & VLAN_VID_MASK          # priority 0, DEI 0
