"""Receive-side scaling of the software 82599: Toeplitz hash and redirection table.

With MRQC.RSSEN set the device hashes IPv4 source and destination address
and, for UDP (MRQC UDP field) or TCP, the two ports with the 40-byte RSSRK
key, and the low 7 bits of the hash index the 128-entry RETA, whose entry
(bits 3:0) is the RX queue.  The hash is computed for a whole batch with
one 256-entry table per input byte (built when the key changes), so a
batch costs 12 table look-ups and XORs per packet.  Frames that are not
IPv4 (or fields the MRQC does not enable) hash as the datasheet says:
without a usable field set, hash 0, queue RETA[0].
"""

from __future__ import annotations

import numpy as np

from ixypipe.nic.registers import (
    MRQC_RSS_FIELD_IPV4,
    MRQC_RSS_FIELD_IPV4_TCP,
    MRQC_RSS_FIELD_IPV4_UDP,
    RETA_ENTRIES,
)
from ixypipe.protocols import ETH_TYPE_OFF, ETHERTYPE_IPV4, IPPROTO_UDP, IPV4_PROTO_OFF, IPV4_SRC_OFF

RSS_KEY_LEN = 40
RSS_INPUT_LEN = 12            # IPv4 src, dst, L4 src port, dst port
RSS_IP_ONLY_LEN = 8
RETA_INDEX_MASK = RETA_ENTRIES - 1
RETA_QUEUE_MASK = 0x0F
IPPROTO_TCP = 6


def toeplitz_tables(key: bytes) -> np.ndarray:
    """(RSS_INPUT_LEN, 256) uint32: XOR of the key windows selected by each byte value at each position."""
    if len(key) != RSS_KEY_LEN:
        raise ValueError(f"RSS key must be {RSS_KEY_LEN} bytes, got {len(key)}")
    k = int.from_bytes(key, "big")
    total_bits = RSS_KEY_LEN * 8
    # window i = the 32 key bits starting at bit i (bit 0 = most significant of byte 0)
    windows = np.array([(k >> (total_bits - 32 - i)) & 0xFFFFFFFF for i in range(RSS_INPUT_LEN * 8)],
                       dtype=np.uint32)
    values = np.arange(256, dtype=np.uint32)
    tables = np.zeros((RSS_INPUT_LEN, 256), np.uint32)
    for pos in range(RSS_INPUT_LEN):
        for bit in range(8):
            selected = ((values >> np.uint32(7 - bit)) & np.uint32(1)).astype(bool)
            tables[pos, selected] ^= windows[pos * 8 + bit]
    return tables


def toeplitz_hash(tables: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """Hash of each row of an ``(n, k)`` uint8 input matrix (k <= RSS_INPUT_LEN)."""
    out = np.zeros(len(inputs), np.uint32)
    for pos in range(inputs.shape[1]):
        out ^= tables[pos, inputs[:, pos]]
    return out


class Rss:
    """Queue selection from the MRQC, RSSRK and RETA register values."""

    def __init__(self):
        self._key: bytes | None = None
        self._tables: np.ndarray | None = None

    def hash(self, frames: np.ndarray, mrqc: int, key: bytes) -> np.ndarray:
        """RSS hash of each frame of an ``(n, >= 34 + 4)`` byte matrix."""
        if key != self._key:
            self._key, self._tables = key, toeplitz_tables(key)
        n = len(frames)
        hashes = np.zeros(n, np.uint32)
        if frames.shape[1] < IPV4_SRC_OFF + RSS_INPUT_LEN:
            return hashes
        ethertype = (frames[:, ETH_TYPE_OFF].astype(np.uint16) << 8) | frames[:, ETH_TYPE_OFF + 1]
        ipv4 = ethertype == ETHERTYPE_IPV4
        proto = frames[:, IPV4_PROTO_OFF]
        l4 = ipv4 & (((proto == IPPROTO_UDP) & bool(mrqc & MRQC_RSS_FIELD_IPV4_UDP))
                     | ((proto == IPPROTO_TCP) & bool(mrqc & MRQC_RSS_FIELD_IPV4_TCP)))
        ip_only = ipv4 & ~l4 & bool(mrqc & MRQC_RSS_FIELD_IPV4)
        if l4.any():
            hashes[l4] = toeplitz_hash(self._tables, frames[l4, IPV4_SRC_OFF:IPV4_SRC_OFF + RSS_INPUT_LEN])
        if ip_only.any():
            hashes[ip_only] = toeplitz_hash(self._tables,
                                            frames[ip_only, IPV4_SRC_OFF:IPV4_SRC_OFF + RSS_IP_ONLY_LEN])
        return hashes

    @staticmethod
    def queues(hashes: np.ndarray, reta: np.ndarray) -> np.ndarray:
        """RX queue of each hash; ``reta`` is the 128 one-byte RETA entries."""
        return (reta[hashes & np.uint32(RETA_INDEX_MASK)] & RETA_QUEUE_MASK).astype(np.int64)
