"""A worker that drops ICMP (IPv4 protocol 1) and forwards everything else unchanged.

Use it in a pipeline file:

    [workers]
    function = "examples/drop_icmp.py:drop_icmp"

``keep_mask`` is the vectorized test on a whole batch: packet bytes as rows of
a 2-D uint8 array and their lengths; it returns True for every packet to keep.
"""

from __future__ import annotations

import numpy as np

from ixypipe.protocols import ETH_HEADER_LEN, ETH_TYPE_OFF

ETHERTYPE_IPV4 = 0x0800
IPPROTO_ICMP = 1
IPV4_PROTO_OFF = ETH_HEADER_LEN + 9


def keep_mask(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """False for IPv4 ICMP packets, True for all others."""
    ethertype = (data[:, ETH_TYPE_OFF].astype(np.uint16) << 8) | data[:, ETH_TYPE_OFF + 1]
    icmp = (ethertype == ETHERTYPE_IPV4) & (data[:, IPV4_PROTO_OFF] == IPPROTO_ICMP)
    return ~(icmp & (lengths > IPV4_PROTO_OFF))


def drop_icmp(batch) -> np.ndarray:
    """The worker function: keep every packet that is not ICMP (reads only the header bytes it needs)."""
    return keep_mask(batch.field(0, IPV4_PROTO_OFF + 1), batch.lengths)
