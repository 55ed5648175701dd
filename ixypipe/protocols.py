"""Packet formats: byte offsets and constants of Ethernet II, 802.1Q/802.1ad, IPv4, IPv6, TCP, UDP, SCTP, ICMP.

One place for protocol facts (header lengths, field offsets, EtherTypes,
IP protocol numbers) so the generator, the RX stage's flow hash, the
AF_PACKET port and the workers' header parser read packets the same way.  Offsets without a
VLAN tag and for IPv4 without options unless the name says otherwise.
"""

# --- packet header offsets (Ethernet II + IPv4 without options) -----------------
ETH_DST_OFF = 0
ETH_SRC_OFF = 6
ETH_TYPE_OFF = 12
ETH_HEADER_LEN = 14
ETH_ADDR_LEN = 6
ETH_MIN_FRAME = 60                 # the Ethernet minimum without FCS (64 on the wire); shorter: a runt
# the flow key the RX stage hashes to keep a flow on one worker:
# IPv4 source and destination address and the first four L4 bytes (the ports)
FLOW_KEY_OFF = ETH_HEADER_LEN + 12
FLOW_KEY_LEN = 12
FLOW_HASH_MIX = 0x9E3779B1          # the key's three words XORed, times this (Fibonacci hashing), bits 16+

# --- IPv4 without options, UDP ---------------------------------------------------
IPV4_HEADER_LEN = 20
IPV4_TOTAL_LEN_OFF = ETH_HEADER_LEN + 2
IPV4_TTL_OFF = ETH_HEADER_LEN + 8
IPV4_PROTO_OFF = ETH_HEADER_LEN + 9
IPV4_CSUM_OFF = ETH_HEADER_LEN + 10
IPV4_SRC_OFF = ETH_HEADER_LEN + 12
IPV4_DST_OFF = ETH_HEADER_LEN + 16
UDP_OFF = ETH_HEADER_LEN + IPV4_HEADER_LEN
UDP_HEADER_LEN = 8
UDP_LEN_OFF = UDP_OFF + 4
ETHERTYPE_IPV4 = 0x0800
IPPROTO_UDP = 17

# --- 802.1Q -----------------------------------------------------------------------
ETHERTYPE_VLAN = 0x8100
ETH_P_8021Q = ETHERTYPE_VLAN       # the name linux/if_ether.h gives it
VLAN_TAG_LEN = 4

# --- more EtherTypes and the VLAN tag ----------------------------------------------
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_QINQ = 0x88A8            # 802.1ad service tag (the outer tag of QinQ)
VLAN_TAG_TYPES = (ETHERTYPE_VLAN, ETHERTYPE_QINQ)
VLAN_MAX_TAGS = 2                  # tags the header parser walks (802.1ad outer + 802.1Q inner)
VLAN_TCI_OFF = 0                   # in a tag: TCI (PCP 3 bits, DEI 1 bit, VID 12 bits), then the next type
VLAN_TYPE_OFF = 2
VLAN_VID_MASK = 0x0FFF

# --- IPv4: offsets inside the IPv4 header (add the L3 offset) ------------------------
IP4_VER_IHL = 0
IP4_TOTAL_LEN = 2
IP4_FRAG = 6                       # flags (3 bits) and fragment offset (13 bits, in 8-byte units)
IP4_TTL = 8
IP4_PROTO = 9
IP4_CSUM = 10
IP4_SRC = 12
IP4_DST = 16
IP4_VERSION = 4
IP4_MIN_IHL = 5                    # 32-bit words
IP4_MF = 0x2000                    # "more fragments" in the flags/offset word
IP4_FRAG_MASK = 0x1FFF

# --- IPv6 -------------------------------------------------------------------------------
IPV6_HEADER_LEN = 40
IP6_PAYLOAD_LEN = 4
IP6_NEXT_HEADER = 6
IP6_HOP_LIMIT = 7
IP6_SRC = 8
IP6_DST = 24
IP6_ADDR_LEN = 16
IP6_VERSION = 6
# extension headers the parser walks: (next header, length byte) then (length + 1) * 8 bytes,
# except the fragment header: always 8 bytes, offset (13 bits, 8-byte units) and M flag at byte 2
IPPROTO_HOPOPTS = 0
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_DSTOPTS = 60
IP6_EXT_HEADERS = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS)
IP6_EXT_UNIT = 8
IP6_FRAG_HEADER_LEN = 8
IP6_FRAG_OFF = 2                   # offset (13 bits) << 3 | res (2) | M (1)
IP6_MAX_EXT_HEADERS = 8            # a longer chain counts as malformed

# --- L4 -------------------------------------------------------------------------------
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
L4_SPORT = 0                       # TCP, UDP and SCTP all start with the two ports
L4_DPORT = 2
TCP_HEADER_LEN = 20
TCP_SEQ = 4                        # sequence number (u32)
TCP_DATA_OFF = 12                  # data offset (4 bits, 32-bit words), then NS, then the 8 flag bits
TCP_WINDOW = 14
TCP_FLAGS_MASK = 0x01FF
TCP_CSUM = 16
UDP_LEN = 4                        # inside the UDP header (UDP_LEN_OFF is the untagged IPv4 frame's)
UDP_CSUM = 6
SCTP_HEADER_LEN = 12
ICMP_HEADER_LEN = 8                # type, code, checksum, 4 bytes of rest-of-header
ICMPV6_HEADER_LEN = 4              # type, code, checksum
NO_L4 = 255                        # IANA "reserved": the L4 protocol of a packet without an IP layer
