"""Packet formats: byte offsets and constants of Ethernet II, 802.1Q, IPv4 and UDP headers.

One place for protocol facts (header lengths, field offsets, EtherTypes,
IP protocol numbers) so the generator, the RX stage's flow hash, the
AF_PACKET port and workers read packets the same way.  Offsets without a
VLAN tag and for IPv4 without options unless the name says otherwise.
"""

# --- packet header offsets (Ethernet II + IPv4 without options) -----------------
ETH_DST_OFF = 0
ETH_SRC_OFF = 6
ETH_TYPE_OFF = 12
ETH_HEADER_LEN = 14
ETH_ADDR_LEN = 6
# the flow key the RX stage hashes to keep a flow on one worker:
# IPv4 source and destination address and the first four L4 bytes (the ports)
FLOW_KEY_OFF = ETH_HEADER_LEN + 12
FLOW_KEY_LEN = 12

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
