"""How an RX stage hands packets to workers by flow (pipeline.stages.flow_worker)."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline.stages import FLOW_MIX, flow_worker
from ixypipe.protocols import FLOW_KEY_LEN, FLOW_KEY_OFF


@pytest.fixture
def bufs(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    return PacketBuffers.create(arena, 64, 2048)


def expected_worker(key: bytes, n: int) -> int:
    """The hash written out word by word: the three little-endian words of the key XORed, times FLOW_MIX."""
    words = [int.from_bytes(key[i:i + 4], "little") for i in range(0, FLOW_KEY_LEN, 4)]
    h = (words[0] ^ words[1] ^ words[2]) * int(FLOW_MIX) & 0xFFFFFFFF
    return (h >> 16) % n


def test_a_flow_always_goes_to_the_same_worker_and_the_hash_is_the_documented_one(bufs):
    rng = np.random.default_rng(7)
    keys = [bytes(rng.integers(0, 256, FLOW_KEY_LEN, dtype=np.uint8)) for _ in range(8)]
    flows = rng.integers(0, len(keys), 64)
    for i, f in enumerate(flows):
        frame = bytearray(rng.integers(0, 256, 60, dtype=np.uint8).tobytes())
        frame[FLOW_KEY_OFF:FLOW_KEY_OFF + FLOW_KEY_LEN] = keys[f]
        bufs.write_packet(i, bytes(frame))
    idx = rng.permutation(64).astype(np.uint32)            # buffers in any order
    for n in (2, 3, 4):
        which = flow_worker(bufs, idx, n)
        assert which.tolist() == [expected_worker(keys[flows[i]], n) for i in idx]
    assert len(set(flow_worker(bufs, idx, 2).tolist())) == 2     # eight flows do not all land on one worker
