"""The Linux AF_PACKET ABI the af_packet port uses: socket options, TPACKET_V2 frame headers, status bits.

Facts from linux/if_packet.h, linux/if_ether.h and linux/if.h.
"""

import numpy as np

from ixypipe.layout import PAGE_SIZE

# --- Linux AF_PACKET ABI (linux/if_packet.h, linux/if_ether.h, linux/if.h) ------
# Used by ixypipe.nic.af_packet: PACKET_MMAP rings in TPACKET_V2 format.
SOL_PACKET = 263
ETH_P_ALL = 0x0003
IFF_UP = 0x1
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_LOSS = 14
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
PACKET_FANOUT_TYPE_SHIFT = 16
TPACKET_V2 = 1
TPACKET_ALIGNMENT = 16
# tp_status of an RX frame
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 0x1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
# tp_status of a TX frame
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 0x1
TP_STATUS_SENDING = 0x2
TP_STATUS_WRONG_FORMAT = 0x4
TPACKET2_HDR_DTYPE = np.dtype([          # struct tpacket2_hdr, 32 bytes
    ("tp_status", "<u4"),
    ("tp_len", "<u4"),
    ("tp_snaplen", "<u4"),
    ("tp_mac", "<u2"),
    ("tp_net", "<u2"),
    ("tp_sec", "<u4"),
    ("tp_nsec", "<u4"),
    ("tp_vlan_tci", "<u2"),
    ("tp_vlan_tpid", "<u2"),
    ("tp_padding", "u1", (4,)),
])
TPACKET_REQ_DTYPE = np.dtype([("tp_block_size", "<u4"), ("tp_block_nr", "<u4"),
                              ("tp_frame_size", "<u4"), ("tp_frame_nr", "<u4")])
TPACKET_STATS_DTYPE = np.dtype([("tp_packets", "<u4"), ("tp_drops", "<u4")])
PACKET_MREQ_DTYPE = np.dtype([("mr_ifindex", "<i4"), ("mr_type", "<u2"), ("mr_alen", "<u2"),
                              ("mr_address", "u1", (8,))])
SOCKADDR_LL_SIZE = 20
# TX frames carry their data right after the aligned header (TPACKET2_HDRLEN - sizeof(sockaddr_ll))
TPACKET2_TX_DATA_OFF = (TPACKET2_HDR_DTYPE.itemsize + TPACKET_ALIGNMENT - 1) // TPACKET_ALIGNMENT * TPACKET_ALIGNMENT
TPACKET_BLOCK_SIZE = 64 * PAGE_SIZE      # frames are grouped in blocks of this many bytes
