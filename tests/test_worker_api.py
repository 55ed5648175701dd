"""The worker API on real packet buffers: Batch, verdicts, the built-ins, per_packet, the examples.

Batches are built on a /dev/shm arena (make_arena with hugepages_mode="never")
exactly as the worker stage builds them.  One end-to-end run of ``ixypipe run``
takes a user worker file that swaps MACs and drops half the flows, and checks
the JSON summary and the frames the sink captured.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pcapfile import read_pcap
from ixypipe.pipeline.stages import verdicts
from ixypipe.protocols import ETHERTYPE_IPV4, UDP_OFF
from ixypipe.sim.world import GEN_MAC_PREFIX, PORT_MAC_PREFIX
from ixypipe.workers import builtin
from ixypipe.workers.api import DROP, PER_PACKET_ATTR, Batch, WorkerResultError, per_packet
from ixypipe.workers.loader import load_worker

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
PORTS = ["p0", "p1", "p2"]
DST = bytes.fromhex("020000000001")
SRC = bytes.fromhex("02000000aa02")


def frame(ethertype: int, size: int = 60, fill: int = 0) -> bytes:
    body = bytes((fill + i) & 0xFF for i in range(size - 14))
    return DST + SRC + ethertype.to_bytes(2, "big") + body


@pytest.fixture
def bufs(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    return PacketBuffers.create(arena, 32, 2048)


def make_batch(bufs: PacketBuffers, frames: list[bytes], in_port: int = 0, default_out: int = 1,
               counters: dict | None = None) -> Batch:
    """Batch.from_frames into the test's buffers from buffer 3 on (not 0: indices are global)."""
    return Batch.from_frames(frames, in_port, default_out, PORTS, counters, bufs=bufs, first=3)


def test_a_new_batch_sends_everything_to_the_default_port(bufs):
    batch = make_batch(bufs, [frame(0x0800)] * 4, default_out=2)
    assert batch.n == 4 and batch.out.tolist() == [2, 2, 2, 2]
    assert verdicts(batch, None) is batch.out


def test_field_reads_copies_and_set_field_writes_every_packet(bufs):
    batch = make_batch(bufs, [frame(0x0800, fill=0), frame(0x0800, fill=100)])
    got = batch.field(14, 3)
    assert got.tolist() == [[0, 1, 2], [100, 101, 102]]
    got[:] = 0                                           # a copy: the packets are unchanged
    assert bufs.packet(3)[14:17].tolist() == [0, 1, 2]
    batch.set_field(14, [7, 8])                          # one value for all packets
    assert batch.field(14, 2).tolist() == [[7, 8], [7, 8]]
    batch.set_field(20, np.array([[1, 2], [3, 4]]))      # one row per packet
    assert bufs.packet(3)[20:22].tolist() == [1, 2] and bufs.packet(4)[20:22].tolist() == [3, 4]


@pytest.mark.parametrize("offset,size,message", [
    (1980, 6, "bytes 1980..1985 are outside a packet buffer's 1984 data bytes"),
    (-1, 2, "bytes -1..0 are outside a packet buffer's 1984 data bytes"),
    (10, 0, "bytes 10..9 are outside a packet buffer's 1984 data bytes"),
])
def test_field_outside_the_buffer_is_refused(bufs, offset, size, message):
    batch = make_batch(bufs, [frame(0x0800)])
    with pytest.raises(ValueError) as info:
        batch.field(offset, size)
    assert str(info.value) == message


def test_mac_helpers_and_ethertype(bufs):
    batch = make_batch(bufs, [frame(0x0800), frame(0x86DD), frame(0x0806)])
    assert batch.dst_mac().tolist() == [list(DST)] * 3
    assert batch.src_mac().tolist() == [list(SRC)] * 3
    assert batch.ethertype().tolist() == [0x0800, 0x86DD, 0x0806]
    assert batch.ethertype().dtype == np.uint16
    batch.set_dst_mac("ff:ff:ff:ff:ff:ff")
    batch.set_src_mac(b"\x02\x11\x22\x33\x44\x55")
    assert bufs.packet(5)[:12].tobytes() == b"\xff" * 6 + bytes.fromhex("021122334455")
    batch.set_src_mac([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 0]])
    assert bufs.packet(4)[6:12].tolist() == [7, 8, 9, 10, 11, 12]
    assert batch.ethertype().tolist() == [0x0800, 0x86DD, 0x0806]   # the header around is untouched


@pytest.mark.parametrize("mac,message", [
    ("02:00:00:00:01", "a MAC address has 6 bytes, got 5"),
    (b"\x01\x02", "a MAC address has 6 bytes, got 2"),
    ("02:zz:00:00:00:01", "'02:zz:00:00:00:01' is not a MAC address (six hex bytes such as '02:00:00:00:00:01')"),
])
def test_bad_mac_addresses_are_refused(bufs, mac, message):
    batch = make_batch(bufs, [frame(0x0800)])
    with pytest.raises(ValueError) as info:
        batch.set_dst_mac(mac)
    assert str(info.value) == message
    assert bufs.packet(3)[:6].tobytes() == DST


def test_lengths_and_set_lengths(bufs):
    batch = make_batch(bufs, [frame(0x0800, 60), frame(0x0800, 128), frame(0x0800, 1514)])
    assert batch.lengths.tolist() == [60, 128, 1514]
    batch.set_lengths([64, 100, 1984])
    assert bufs.length[batch.idx].tolist() == [64, 100, 1984] and batch.lengths.tolist() == [64, 100, 1984]
    batch.set_lengths(70)
    assert batch.lengths.tolist() == [70, 70, 70]
    with pytest.raises(ValueError) as info:
        batch.set_lengths([60, 0, 60])
    assert str(info.value) == "packet 1 of the batch: length 0 is outside 1..1984 (the data a buffer holds)"
    with pytest.raises(ValueError, match=r"^packet 2 of the batch: length 1985 is outside 1\.\.1984"):
        batch.set_lengths([60, 60, 1985])
    assert batch.lengths.tolist() == [70, 70, 70]          # a refused change writes nothing


def test_drop_and_send_by_name_index_and_mask(bufs):
    batch = make_batch(bufs, [frame(0x0800)] * 5)
    batch.send("p2", np.array([True, False, True, False, False]))
    batch.drop(np.array([False, True, False, False, False]))
    batch.send(0, [False, False, False, True, False])
    assert batch.out.tolist() == [2, DROP, 2, 0, 1]
    batch.drop()
    assert batch.out.tolist() == [DROP] * 5
    batch.send("p1")
    assert batch.out.tolist() == [1] * 5
    with pytest.raises(WorkerResultError) as info:
        batch.send("p9")
    assert str(info.value) == "no port named 'p9'; ports: p0, p1, p2"
    with pytest.raises(WorkerResultError) as info:
        batch.send(3)
    assert str(info.value) == "no port 3; ports are 0..2"
    with pytest.raises(WorkerResultError, match="^no port -1; ports are 0..2$"):
        batch.send(-1)


def test_count_adds_to_named_counters(bufs):
    counters: dict[str, int] = {"seen": 5}
    batch = make_batch(bufs, [frame(0x0800)] * 2, counters=counters)
    batch.count("seen")
    batch.count("seen", 3)
    batch.count("bytes", np.int64(120))
    assert counters == {"seen": 9, "bytes": 120} and type(counters["bytes"]) is int


def test_packet_is_a_view_of_exactly_the_packet(bufs):
    batch = make_batch(bufs, [frame(0x0800, 60), frame(0x0800, 90, fill=9)])
    pkt = batch.packet(1)
    assert len(pkt) == 90 and pkt.tobytes() == frame(0x0800, 90, fill=9)
    pkt[20] = 0xEE
    assert bufs.packet(4)[20] == 0xEE


# ---- built-ins ----------------------------------------------------------------------------
def test_touch_increments_byte_1_and_wraps(bufs):
    frames = [bytearray(frame(0x0800)) for _ in range(3)]
    frames[0][1], frames[1][1], frames[2][1] = 0, 254, 255
    batch = make_batch(bufs, [bytes(f) for f in frames])
    builtin.touch(batch)
    assert batch.field(0, 2).tolist() == [[0x02, 1], [0x02, 255], [0x02, 0]]
    assert batch.field(2, 58).tolist() == [list(frame(0x0800)[2:])] * 3     # nothing else changed
    assert batch.out.tolist() == [1, 1, 1]


def test_macswap_swaps_exactly_the_two_addresses(bufs):
    a, b = frame(0x0800, 60, fill=1), frame(0x86DD, 200, fill=50)
    batch = make_batch(bufs, [a, b])
    builtin.macswap(batch)
    assert bufs.packet(3).tobytes() == SRC + DST + a[12:]
    assert bufs.packet(4).tobytes() == SRC + DST + b[12:]
    builtin.macswap(batch)
    assert bufs.packet(3).tobytes() == a and bufs.packet(4).tobytes() == b


def test_drop_forward_and_count(bufs):
    counters: dict[str, int] = {}
    batch = make_batch(bufs, [frame(0x0800, 60), frame(0x0800, 100), frame(0x0800, 1514)], counters=counters)
    before = bufs.data[batch.idx].copy()
    assert builtin.forward(batch) is None and batch.out.tolist() == [1, 1, 1]
    assert builtin.count(batch) is None and counters == {"packets": 3, "bytes": 1674}
    builtin.count(batch)
    assert counters == {"packets": 6, "bytes": 3348}
    assert (bufs.data[batch.idx] == before).all()
    builtin.drop(batch)
    assert verdicts(batch, None).tolist() == [DROP, DROP, DROP]


# ---- verdicts and per_packet --------------------------------------------------------------------
def test_verdicts_applies_a_boolean_mask_over_the_set_verdicts(bufs):
    batch = make_batch(bufs, [frame(0x0800)] * 4)
    batch.send("p2", [False, False, False, True])
    out = verdicts(batch, np.array([True, False, True, True]))
    assert out.tolist() == [1, DROP, 1, 2] and out.dtype == batch.out.dtype
    assert verdicts(batch, [False, True, True, False]).tolist() == [DROP, 1, 1, DROP]


def test_a_mask_over_the_default_port_makes_no_verdict_array_unless_a_packet_is_dropped(bufs):
    """The lone packet of an idle pipeline that a filter keeps costs no numpy array (cold, 10-40 us each)."""
    batch = make_batch(bufs, [frame(0x0800)] * 3)
    assert verdicts(batch, np.array([True, True, True])) == 1 and not batch.verdicts_set()
    out = verdicts(batch, np.array([True, False, True]))
    assert out.tolist() == [1, DROP, 1] and out.dtype == np.int16 and not batch.verdicts_set()


@pytest.mark.parametrize("returned,shown", [
    ([1, 0, 1], "list (3,)"),
    (np.array([1, 0, 1], np.uint8), "ndarray (3,)"),
    (np.array([True, False]), "ndarray (2,)"),
    (True, "bool ()"),
    ("keep", "str ()"),
])
def test_verdicts_rejects_what_is_not_a_boolean_mask_of_the_batch(bufs, returned, shown):
    batch = make_batch(bufs, [frame(0x0800)] * 3)
    with pytest.raises(WorkerResultError) as info:
        verdicts(batch, returned)
    assert str(info.value) == f"a worker returns None or a boolean mask of 3 packets, got {shown}"


def test_per_packet_wrapper_and_decorator(bufs):
    seen = []

    def big(pkt) -> bool:
        seen.append(len(pkt))
        return len(pkt) > 100

    wrapped = per_packet(big)
    assert getattr(wrapped, PER_PACKET_ATTR) is True and wrapped.__wrapped__ is big and wrapped.__name__ == "big"
    assert per_packet(wrapped) is wrapped                      # wrapping twice is a no-op
    batch = make_batch(bufs, [frame(0x0800, 60), frame(0x0800, 200), frame(0x0800, 101)])
    keep = wrapped(batch)
    assert keep.dtype == np.bool_ and keep.tolist() == [False, True, True] and seen == [60, 200, 101]
    assert verdicts(batch, keep).tolist() == [DROP, 1, 1]

    @per_packet
    def mark(pkt) -> int:                                       # truthy values count as True; writes stick
        pkt[0] = 0xAA
        return pkt[12] == 0x86

    batch = make_batch(bufs, [frame(0x0800), frame(0x86DD)])
    assert mark(batch).tolist() == [False, True]
    assert batch.field(0, 1).tolist() == [[0xAA], [0xAA]]
    # the loader wraps a plain handle(pkt) when the file says per_packet, and never wraps twice
    assert load_worker("examples/drop_runts.py:drop_runts", REPO, per_packet=True).__wrapped__.__name__ == "drop_runts"


# ---- examples -----------------------------------------------------------------------------
def test_example_ipv4_only(bufs):
    counters: dict[str, int] = {}
    batch = make_batch(bufs, [frame(0x0800), frame(0x86DD), frame(0x0806), frame(0x0800)], counters=counters)
    fn = load_worker("examples/ipv4_only.py:ipv4_only", REPO)
    assert verdicts(batch, fn(batch)).tolist() == [1, DROP, DROP, 1]
    assert counters == {"not_ipv4": 2}


def test_example_reflector(bufs):
    a = frame(0x0800, 80, fill=3)
    batch = make_batch(bufs, [a, a], in_port=2, default_out=0)
    fn = load_worker("examples/reflector.py:reflect", REPO)
    assert fn(batch) is None
    assert batch.out.tolist() == [2, 2]
    assert bufs.packet(3).tobytes() == SRC + DST + a[12:] == bufs.packet(4).tobytes()


def test_example_drop_runts_and_drop_icmp(bufs):
    batch = make_batch(bufs, [frame(0x0800, 59), frame(0x0800, 60), frame(0x0800, 42)])
    fn = load_worker("examples/drop_runts.py:drop_runts", REPO)
    assert verdicts(batch, fn(batch)).tolist() == [DROP, 1, DROP]
    icmp, udp = bytearray(frame(0x0800)), bytearray(frame(0x0800))
    icmp[14 + 9], udp[14 + 9] = 1, 17
    batch = make_batch(bufs, [bytes(icmp), bytes(udp), frame(0x86DD)])
    fn = load_worker("examples/drop_icmp.py:drop_icmp", REPO)
    assert verdicts(batch, fn(batch)).tolist() == [DROP, 1, 1]


# ---- end to end through `ixypipe run` -----------------------------------------------------------
USER_WORKER = f'''
"""Swap MACs; drop non-IPv4 and every flow with an odd UDP source port."""
import numpy as np

def swap_and_filter(batch):
    dst, src = batch.dst_mac(), batch.src_mac()
    batch.set_dst_mac(src)
    batch.set_src_mac(dst)
    sport = batch.field({UDP_OFF}, 2).astype(np.uint16)
    odd = (sport[:, 1] & 1) == 1
    return (batch.ethertype() == {ETHERTYPE_IPV4}) & ~odd
'''


def test_user_worker_file_runs_in_the_pipeline(tmp_path):
    (tmp_path / "swap.py").write_text(USER_WORKER)
    text = (REPO / "pipelines" / "fwd.toml").read_text()
    text = text.replace("expect_touch = true", "expect_touch = false")
    text = text.replace("rate_mpps = 0.4", "rate_mpps = 0.1")
    text = text.replace('function = "touch"', 'function = "swap.py:swap_and_filter"')
    text = text.replace("verify = true\nexpect_touch = false\n\n[[ports]]",
                        'verify = true\nexpect_touch = false\npcap = "p0-sink.pcap"\n\n[[ports]]', 1)
    assert text.count("expect_touch = false") == 2 and "p0-sink.pcap" in text and "swap.py" in text
    pipeline = tmp_path / "swap.toml"
    pipeline.write_text(text)
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(pipeline), "--duration", "3", "--json"],
                         capture_output=True, text=True, timeout=90, cwd=REPO)
    assert res.returncode == 0, res.stderr
    s = [d for d in (json.loads(line) for line in res.stdout.splitlines() if line.startswith("{"))
         if d.get("summary")][-1]
    assert s["ok"] is True and s["in_flight"] == 0
    assert s["received"] > 10_000
    dropped = s["drops"]["worker"]
    assert sum(s["drops"].values()) == dropped == s["received"] - s["transmitted"]
    assert 0.45 < dropped / s["received"] < 0.55          # 4 of the 8 flows have an odd source port
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_corrupt"] == 0 and sim["sink_reordered"] == 0
        assert sim["sink_received"] == s["ports"][port]["tx_packets"] > 0
    # p0 transmits what p1's generator (id 1) sent, with the addresses swapped, even flows only
    capture = read_pcap(tmp_path / "p0-sink.pcap")
    assert len(capture) == s["sim"]["p0"]["sink_received"]
    frames = np.frombuffer(b"".join(capture.packets()), np.uint8).reshape(len(capture), -1)
    assert (frames[:, :6] == np.frombuffer(GEN_MAC_PREFIX + b"\x01", np.uint8)).all()
    assert (frames[:, 6:12] == np.frombuffer(PORT_MAC_PREFIX + b"\x01", np.uint8)).all()
    assert (frames[:, UDP_OFF + 1] % 2 == 0).all()
    assert len(np.unique(frames[:, UDP_OFF + 1])) == 4
