"""Generator frames, the sink's loss/order/corruption/touch checks, pcap output and the Toeplitz hash."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from ixypipe.nic.registers import MRQC_RSS_FIELD_IPV4, MRQC_RSS_FIELD_IPV4_UDP, RSS_DEFAULT_KEY
from ixypipe.pcapfile import PCAP_MAGIC_NSEC, read_pcap
from ixypipe.protocols import ETH_HEADER_LEN
from ixypipe.sim.payload import SIM_CSUM_OFF, SIM_FLOW_OFF, SIM_GEN_OFF, SIM_MAGIC, SIM_MAGIC_OFF, SIM_SEQ_OFF
from ixypipe.sim.rss import Rss
from ixypipe.sim.traffic import SIZE_BUCKET_NAMES, CountSink, Generator, PacketBatch, Sink, TrafficError

SRC = bytes.fromhex("024745000001")
DST = bytes.fromhex("024958530001")


def gen(flows=4, size=60, gen_id=1, count=0):
    return Generator(gen_id, size, flows, count, 0.0, SRC, DST)


def take(g, n):
    b = g.make(n)
    g.commit(n)
    return b


def ones_complement_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def test_generator_frames_are_valid_udp_with_flow_id_sequence_and_checksum():
    g = gen(flows=3, size=128)
    b = take(g, 7)
    assert b.data.shape == (7, 128) and (b.lengths == 128).all()
    for i in range(7):
        f = b.frame(i)
        assert f[:6] == DST and f[6:12] == SRC and f[12:14] == b"\x08\x00"
        assert f[14] == 0x45 and f[23] == 17
        assert struct.unpack("!H", f[16:18])[0] == 128 - ETH_HEADER_LEN
        assert ones_complement_ok(f[14:34])
        assert struct.unpack("!H", f[38:40])[0] == 128 - 34          # UDP length
        assert struct.unpack("<H", f[SIM_MAGIC_OFF:SIM_MAGIC_OFF + 2])[0] == SIM_MAGIC
        assert struct.unpack("<H", f[SIM_GEN_OFF:SIM_GEN_OFF + 2])[0] == 1
        assert struct.unpack("<H", f[SIM_FLOW_OFF:SIM_FLOW_OFF + 2])[0] == i % 3
        assert struct.unpack("<Q", f[SIM_SEQ_OFF:SIM_SEQ_OFF + 8])[0] == i // 3
    # flows differ in source IP and UDP source port, both; a flow keeps its 5-tuple
    tuples = [(b.frame(i)[26:30], b.frame(i)[34:36]) for i in range(7)]
    for i in range(3):
        assert tuples[i] == tuples[i + 3]
        for j in range(i):
            assert tuples[i][0] != tuples[j][0] and tuples[i][1] != tuples[j][1]
        assert tuples[i][0][:2] == bytes((10, 1))                   # 10.<generator id>.x.y
    assert struct.unpack("<Q", take(g, 1).frame(0)[SIM_SEQ_OFF:SIM_SEQ_OFF + 8])[0] == 2


def test_generator_rejects_bad_settings():
    with pytest.raises(TrafficError, match=r"packet size must be 60..9018 bytes without FCS for profile udp"):
        gen(size=9019)
    with pytest.raises(TrafficError, match=r"packet size must be 60..9018 .*got 59"):
        gen(size=59)
    with pytest.raises(TrafficError, match=r"packet size 1515 does not fit a packet buffer: buffers of this size "
                                           r"hold frames up to 1514 bytes"):
        Generator(0, 1515, 1, 0, 0.0, b"\x02" * 6, b"\x04" * 6, max_data=1514)
    with pytest.raises(TrafficError, match="flows must be 1..65535"):
        gen(flows=0)


def test_generator_count_and_rate_limit_what_may_go():
    g = gen(count=10)
    assert g.allowance(64) == 10
    g.commit(10)
    assert g.allowance(64) == 0
    r = Generator(1, 60, 4, 0, 1000.0, SRC, DST)      # 1000 pps
    assert r.allowance(64, now_ns=0) == 0
    assert r.allowance(64, now_ns=5_000_000) == 5     # 5 ms later
    r.commit(5)
    assert r.allowance(64, now_ns=8_000_000) == 3


def sink_for(g, **kw):
    return Sink({g.gen_id: g}, **kw)


def test_sink_accepts_a_clean_stream_and_counts_it():
    g = gen(flows=4)
    s = sink_for(g)
    for _ in range(3):
        s.receive(take(g, 50))
    r = s.result
    assert (r.received, r.received_bytes, r.lost, r.reordered, r.corrupt) == (150, 9000, 0, 0, 0)


def test_sink_counts_loss_exactly():
    g = gen(flows=2)
    b = take(g, 20)
    keep = np.array([i for i in range(20) if i not in (4, 5, 9)])    # flow 0 seq 2, flow 1 seq 2, flow 1 seq 4
    s = sink_for(g)
    s.receive(b.take(keep))
    assert (s.result.received, s.result.lost, s.result.reordered) == (17, 3, 0)


def test_sink_counts_reordering_per_flow_and_a_late_frame_is_no_longer_lost():
    g = gen(flows=2)
    b = take(g, 12)
    order = list(range(12))
    order[2], order[6] = order[6], order[2]          # flow 0 arrives as seq 0, 3, 2, 1, 4, 5
    s = sink_for(g)
    s.receive(b.take(np.array(order[:8])))
    s.receive(b.take(np.array(order[8:])))
    assert (s.result.reordered, s.result.lost, s.result.corrupt) == (2, 0, 0)
    # across batches: a frame older than the flow's top in the previous batch
    s2 = sink_for(g)
    s2.receive(b.take(np.array([0, 1, 4, 5])))
    assert s2.result.lost == 2
    s2.receive(b.take(np.array([2, 3])))
    assert (s2.result.reordered, s2.result.lost) == (2, 0)


def test_sink_detects_corruption_but_not_mac_rewrites():
    g = gen(flows=1, size=200)
    b = take(g, 5)
    b.data[1, 150] ^= 0x01                           # payload bit flip
    b.data[2, SIM_CSUM_OFF] ^= 0xFF                  # checksum field
    b.data[3, 30] ^= 0x80                            # destination IP
    b.data[4, 0:12] = 0xEE                           # both MACs rewritten: fine
    s = sink_for(g)
    s.receive(b)
    assert (s.result.received, s.result.corrupt, s.result.rewritten) == (5, 3, 3)    # the record intact: rewritten
    foreign = PacketBatch.from_frames([bytes(60), bytes(100)])
    s.receive(foreign)
    assert (s.result.corrupt, s.result.rewritten) == (5, 3)                           # not the generator's frames


def test_sink_checks_that_byte_1_was_touched_once():
    g = gen(flows=2)
    b = take(g, 6)
    b.data[[0, 1, 2, 3], 1] += 1
    b.data[4, 1] += 2
    s = sink_for(g, expect_touch=True)
    s.receive(b)
    assert (s.result.untouched, s.result.corrupt) == (2, 0)


def test_sink_handles_mixed_lengths_from_two_generators():
    g1, g2 = gen(flows=2, size=60, gen_id=0), gen(flows=3, size=300, gen_id=1)
    b1, b2 = take(g1, 4), take(g2, 7)
    # g2 flow 0 arrives as seq 0, 2: seq 1 (frame 3) is lost
    frames = [b1.frame(0), b2.frame(0), b1.frame(1), b2.frame(1), b2.frame(6), b1.frame(2)]
    s = Sink({0: g1, 1: g2})
    s.receive(PacketBatch.from_frames(frames))
    assert (s.result.received, s.result.corrupt, s.result.lost, s.result.reordered) == (6, 0, 1, 0)


def test_sink_writes_a_pcap_with_every_frame(tmp_path):
    g = gen(flows=2)
    b = take(g, 3)
    extra = PacketBatch.from_frames([bytes(range(90))])
    path = tmp_path / "out.pcap"
    s = sink_for(g, pcap=str(path))
    s.receive(b)
    s.receive(extra)
    s.close()
    raw = path.read_bytes()
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("<IHHiIII", raw[:24])
    assert (magic, major, minor, linktype) == (PCAP_MAGIC_NSEC, 2, 4, 1)
    pos, got = 24, []
    while pos < len(raw):
        _, _, incl, orig = struct.unpack("<IIII", raw[pos:pos + 16])
        assert incl == orig
        got.append(raw[pos + 16:pos + 16 + incl])
        pos += 16 + incl
    assert got == [b.frame(0), b.frame(1), b.frame(2), bytes(range(90))]


def test_count_sink_counts_any_frames_with_exact_bytes_and_rfc2819_sizes(tmp_path):
    """Frames ixypipe's generator never made (random bytes, any length): counted, none judged."""
    rng = np.random.default_rng(13)
    # frame lengths without FCS at every bucket edge (the bucket is the size with the 4 FCS bytes)
    edges = {"<64": [14, 59], "64": [60], "65-127": [61, 123], "128-255": [124, 251], "256-511": [252, 507],
             "512-1023": [508, 1019], "1024-1518": [1020, 1514], ">1518": [1515, 9000]}
    lengths = [n for ns in edges.values() for n in ns] * 3 + [60] * 100
    rng.shuffle(lengths)
    frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in lengths]
    path = tmp_path / "count.pcap"
    s = CountSink(pcap=str(path))
    for i in range(0, len(frames), 7):                     # batches of mixed sizes
        s.receive(PacketBatch.from_frames(frames[i:i + 7]))
    s.receive(PacketBatch.from_frames([bytes(60)] * 5))     # and one of a single size
    s.close()
    expected = {name: 3 * len(ns) for name, ns in edges.items()}
    expected["64"] += 105
    assert dict(zip(SIZE_BUCKET_NAMES, s.sizes.tolist(), strict=True)) == expected
    assert s.result.received == len(frames) + 5 and s.result.received_bytes == sum(lengths) + 300
    assert (s.result.lost, s.result.reordered, s.result.corrupt, s.result.untouched) == (0, 0, 0, 0)
    assert read_pcap(path).packets() == frames + [bytes(60)] * 5


def test_toeplitz_matches_the_microsoft_rss_verification_vectors():
    # 66.9.149.187:2794 -> 161.142.100.80:1766, from the RSS specification's verification suite
    frame = np.zeros((1, 60), np.uint8)
    frame[0, 12:14] = (0x08, 0x00)
    frame[0, 23] = 17
    frame[0, 26:30] = (66, 9, 149, 187)
    frame[0, 30:34] = (161, 142, 100, 80)
    frame[0, 34:38] = (2794 >> 8, 2794 & 0xFF, 1766 >> 8, 1766 & 0xFF)
    rss = Rss()
    assert rss.hash(frame, MRQC_RSS_FIELD_IPV4_UDP, RSS_DEFAULT_KEY)[0] == 0x51CCC178
    assert rss.hash(frame, MRQC_RSS_FIELD_IPV4, RSS_DEFAULT_KEY)[0] == 0x323E8FC2
    frame[0, 12] = 0x86                              # not IPv4: hash 0
    assert rss.hash(frame, MRQC_RSS_FIELD_IPV4_UDP, RSS_DEFAULT_KEY)[0] == 0


@pytest.mark.parametrize("flows,queues", [(8, 2), (16, 4), (4, 2), (64, 4), (12, 3)])
@pytest.mark.parametrize("gen_id", [0, 1, 2, 7])
def test_generator_flows_spread_evenly_over_rss_queues(flows, queues, gen_id):
    """With the key and RETA the ixgbe driver programs (entry j -> queue j % n), every queue gets
    its share of flows within +-25 % (they differ in address and port, not in lockstep)."""
    g = gen(flows=flows, gen_id=gen_id)
    hashes = Rss().hash(g.templates, MRQC_RSS_FIELD_IPV4 | MRQC_RSS_FIELD_IPV4_UDP, RSS_DEFAULT_KEY)
    reta = np.arange(128, dtype=np.uint8) % queues
    per_queue = np.bincount(Rss.queues(hashes, reta), minlength=queues)
    even = flows / queues
    assert (np.abs(per_queue - even) <= 0.25 * even).all(), per_queue
    ip_port = {(bytes(t[26:30]), bytes(t[34:36])) for t in g.templates}
    assert len(ip_port) == flows


@pytest.mark.parametrize("kind", ["verify", "count"])
def test_a_sink_whose_capture_fails_counts_and_goes_on(tmp_path, kind, caplog):
    gen = Generator(0, 60, 2, 0, 0.0, b"\x02" * 6, b"\x04" * 6)
    sink = Sink({0: gen}, pcap=str(tmp_path / "s.pcap")) if kind == "verify" else CountSink(str(tmp_path / "s.pcap"))
    batch = gen.make(10)
    gen.commit(10)
    sink.receive(batch)
    sink.pcap.writer._file = open("/dev/full", "wb", buffering=0)    # noqa: SIM115 - the disk is full now
    for _ in range(3):
        batch = gen.make(10)
        gen.commit(10)
        sink.receive(batch)
    assert sink.result.received == 40 and sink.result.pcap_failed == 30
    assert len([r for r in caplog.records if "No space left on device" in r.getMessage()]) == 1
    sink.close()
    assert len(read_pcap(tmp_path / "s.pcap")) == 10


PROFILE_CASES = [("udp", None, 100, 4), ("imix", None, 60, 12), ("vlan", 42, 100, 4), ("imix", 9, 60, 24),
                 ("ipv6", None, 120, 4), ("tcp-syn", None, 90, 4)]


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.skipif(
    not __import__("ixypipe.sim.kernels", fromlist=["AVAILABLE"]).AVAILABLE, reason="needs numba: pip install numba"))])
@pytest.mark.parametrize("name, vlan, size, flows", PROFILE_CASES)
def test_the_sink_finds_loss_reordering_and_corruption_in_every_profile(name, vlan, size, flows, compiled):
    from ixypipe.sim.payload import Profile
    from ixypipe.sim.traffic import record_offsets
    g = Generator(3, size, flows, 0, 0.0, SRC, DST, Profile(name, vlan))
    b = take(g, 6 * flows)
    rec = record_offsets(b.data[:, :60] if b.data.shape[1] >= 60 else b.data)
    assert (rec == Profile(name, vlan).record_off).all()
    clean = Sink({3: g}, compiled=compiled)
    clean.receive(b)
    assert (clean.result.received, clean.result.lost, clean.result.reordered, clean.result.corrupt) == (6 * flows, 0, 0, 0)
    order = list(range(6 * flows))
    order[flows], order[2 * flows] = order[2 * flows], order[flows]     # flow 0: seq 0, 2, 1, ...
    del order[3 * flows + 1]                                            # flow 1 loses seq 3
    bad = b.take(np.array(order))
    last = int(bad.lengths[-1])
    bad.data[-1, last - 1] ^= 0x10                                      # the last byte of the last frame
    s = Sink({3: g}, compiled=compiled)
    s.receive(bad)
    assert (s.result.received, s.result.lost, s.result.reordered, s.result.corrupt) == (6 * flows - 1, 1, 1, 1)
    assert (clean.result.rewritten, s.result.rewritten) == (0, 1)      # a generator's frame with a byte changed
    if vlan is not None:                                                # a stripped tag changes the frame
        untagged = b.take(np.arange(flows))
        s2 = Sink({3: g}, compiled=compiled)
        untagged.data[:, 12:-4] = untagged.data[:, 16:].copy()
        untagged.lengths -= 4
        s2.receive(untagged)
        assert s2.result.corrupt == flows
