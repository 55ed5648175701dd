"""Header parsing over a batch, field by field against scapy's dissection (an independent dissector).

A corpus of mixed traffic (VLAN, QinQ, IPv6 extension headers, fragments,
runts, malformed headers, jumbo frames), every frame of it cut at every
length up to 128 bytes, and hypothesis-built packets: each parsed field
equals what scapy dissects, and a layer whose header is cut short or
malformed is False in its mask with zero fields.  The rewrites leave
checksums that scapy recomputes to the same value.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scapy", reason="scapy is a test dependency: pip install -e '.[test]'")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoReply,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import checksum  # noqa: E402

from ixypipe.workers import headers, headers_jit, rewrite  # noqa: E402
from tests.support.packets import MAC, corpus, expected, parsed  # noqa: E402

CUTS_UP_TO = 128
# the numpy parser always; the compiled (numba) one too when numba is installed
PARSERS = [False] + ([True] if headers_jit.kernel is not None else [])


def check_all(frames: list[bytes], cuts: list[int | None]) -> None:
    cut_frames = [f if c is None else f[:c] for f, c in zip(frames, cuts, strict=True)]
    parsers = [headers.from_bytes(cut_frames, compiled=c) for c in PARSERS]
    for i, (frame, cut) in enumerate(zip(frames, cuts, strict=True)):
        want = expected(frame, cut)
        for compiled, h in zip(PARSERS, parsers, strict=True):
            got = parsed(h, i)
            assert got == want, f"{'numba' if compiled else 'numpy'} parser, frame {i} cut at {cut}: " \
                f"{Ether(frame[:cut]).summary() if frame[:cut] else 'empty'}\n" \
                + "\n".join(f"  {k}: parsed {got.get(k)!r}, scapy {want.get(k)!r}"
                            for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k))


def test_both_parsers_give_the_same_types():
    frames = corpus()[:6]
    hs = [headers.from_bytes(frames, compiled=c) for c in PARSERS]
    for layer in ("eth", "ipv4", "ipv6", "l4"):
        fields = set(vars(getattr(hs[0], layer)))
        for h in hs[1:]:       # the compiled layers read each field from a row of their matrices on first use
            compiled = type(getattr(h, layer))
            assert {k for k, v in vars(compiled).items() if isinstance(v, headers._Row)} == fields, layer
            assert isinstance(getattr(h, layer), type(getattr(hs[0], layer))), layer
        for name, value in vars(getattr(hs[0], layer)).items():
            for h in hs[1:]:
                other = getattr(getattr(h, layer), name)
                assert other.dtype == value.dtype and other.shape == value.shape, (layer, name)
                assert (other == value).all(), (layer, name)


def test_headers_of_packet_buffers_equal_the_headers_of_their_bytes():
    """Headers.of_buffers (a worker's batch: buffer indices, the lengths in the buffers' headers) gives what
    parse gives over the same bytes, with either parser; a length past the buffer is cut to it."""
    from ixypipe.layout import PKTBUF_HEADROOM
    from ixypipe.memory.pktbuf import PacketBuffers

    frames = corpus()[:12]
    bufs = PacketBuffers.private(2 * len(frames))
    idx = np.arange(len(frames), dtype=np.uint32)[::-1] * 2 + 1        # out of order, every other buffer
    for i, f in zip(idx, frames, strict=True):
        bufs.write_packet(int(i), f)
    bufs.length[idx[0]] = bufs.max_data + 100                           # a corrupted length: cut to the buffer
    for compiled in PARSERS:
        h = headers.Headers.of_buffers(bufs.flat, idx, bufs.length, bufs.buf_size, PKTBUF_HEADROOM, bufs.max_data,
                                       compiled)
        want = headers.parse(bufs.flat, idx.astype(np.int64) * bufs.buf_size + PKTBUF_HEADROOM,
                             bufs.length[idx].astype(np.int64), bufs.max_data, False)
        assert h.compiled == compiled and h.n == len(frames)
        assert h.base.tolist() == want.base.tolist() and h.lengths.tolist() == want.lengths.tolist()
        assert h.lengths[0] == bufs.max_data
        for layer in ("eth", "ipv4", "ipv6", "l4"):
            for name, value in vars(getattr(want, layer)).items():
                assert (getattr(getattr(h, layer), name) == value).all(), (compiled, layer, name)


def test_every_field_of_the_corpus_equals_scapys():
    frames = corpus()
    check_all(frames, [None] * len(frames))
    h = headers.from_bytes(frames)
    # the corpus covers what it claims: both tag kinds, fragments, each L4, bad checksums, malformed
    assert (h.eth.vlans == 2).sum() >= 3 and (h.eth.vlans == 1).sum() >= 3
    assert h.l4.tcp.sum() >= 4 and h.l4.udp.sum() >= 6 and h.l4.sctp.sum() == 2 and h.l4.icmp.sum() >= 5
    assert (h.ipv4.valid & ~h.ipv4.csum_ok).sum() == 1 and h.ipv6.frag.sum() == 3
    assert (h.ipv4.valid & ~h.l4.first).sum() == 2 and (h.ipv6.ext_ok & ~h.l4.first).sum() == 1


def test_every_truncation_of_the_corpus_is_a_false_mask_not_an_error():
    frames, cuts = [], []
    for f in corpus():
        for cut in range(min(len(f), CUTS_UP_TO)):
            frames.append(f)
            cuts.append(cut)
    check_all(frames, cuts)


def test_reads_stay_inside_the_buffer():
    """A packet whose length field says more than its buffer holds reads nothing past the buffer."""
    frame = bytes(Ether(**MAC) / IPv6() / IPv6ExtHdrHopByHop(len=255) / UDP())
    flat = np.zeros(256, np.uint8)
    flat[:len(frame)] = np.frombuffer(frame, np.uint8)
    flat[128:] = 0xEE                                     # the next buffer: must never be read
    for compiled in PARSERS:
        h = headers.parse(flat[:128], np.array([0]), np.array([5000]), 128, compiled)
        assert h.ipv6.valid[0] and not h.ipv6.ext_ok[0] and h.l4.proto[0] == 255 and not h.l4.udp[0]


# ---- hypothesis: packets built from random choices ------------------------------------------------
@st.composite
def packets(draw):
    p = Ether(**MAC)
    for k in range(draw(st.integers(0, 2))):
        cls = Dot1AD if k == 0 and draw(st.booleans()) else Dot1Q
        p = p / cls(vlan=draw(st.integers(0, 4095)), prio=draw(st.integers(0, 7)), dei=draw(st.integers(0, 1)))
    l3 = draw(st.sampled_from(["ipv4", "ipv6", "arp"]))
    if l3 == "arp":
        return p / ARP()
    if l3 == "ipv4":
        frag = draw(st.sampled_from([0, 0, 0, 1, 185]))
        ip = IP(src=draw(st.ip_addresses(v=4)).exploded, dst=draw(st.ip_addresses(v=4)).exploded,
                ttl=draw(st.integers(0, 255)), frag=frag, flags="MF" if draw(st.booleans()) else 0,
                options=[IPOption_NOP()] * draw(st.sampled_from([0, 0, 4, 8, 40])))
        if draw(st.booleans()):
            ip.chksum = draw(st.integers(0, 0xFFFF))
        p = p / ip
        icmp = ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    else:
        p = p / IPv6(src=draw(st.ip_addresses(v=6)).exploded, dst=draw(st.ip_addresses(v=6)).exploded,
                     hlim=draw(st.integers(0, 255)))
        for ext in draw(st.lists(st.sampled_from(["hop", "rt", "frag", "dst"]), max_size=4)):
            p = p / {"hop": IPv6ExtHdrHopByHop(), "rt": IPv6ExtHdrRouting(addresses=["::1"] * draw(st.integers(0, 3))),
                     "frag": IPv6ExtHdrFragment(offset=draw(st.sampled_from([0, 0, 7])), m=draw(st.integers(0, 1))),
                     "dst": IPv6ExtHdrDestOpt()}[ext]
        icmp = ICMPv6EchoReply(code=draw(st.integers(0, 255)))
    port = st.integers(0, 65535)
    l4 = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "raw"]))
    p = p / {"tcp": lambda: TCP(sport=draw(port), dport=draw(port), flags=draw(st.integers(0, 0x1FF)),
                                options=[("NOP", None)] * draw(st.sampled_from([0, 4, 40]))),
             "udp": lambda: UDP(sport=draw(port), dport=draw(port)),
             "sctp": lambda: SCTP(sport=draw(port), dport=draw(port)),
             "icmp": lambda: icmp, "raw": lambda: Raw(b"r" * 8)}[l4]()
    return p / Raw(b"p" * draw(st.integers(0, 40)))


# 100 random lists of packets by default (hypothesis' own default), 200 more with -m slow
@pytest.mark.parametrize("examples", [100, pytest.param(200, marks=pytest.mark.slow)])
def test_hypothesis_packets_equal_scapys_dissection(examples):
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(packets(), st.one_of(st.none(), st.integers(0, 200))), min_size=1, max_size=8))
    def dissect_alike(cases):
        frames = [bytes(p) for p, _ in cases]
        cuts = [None if c is None else min(c, len(f)) for f, (_, c) in zip(frames, cases, strict=True)]
        check_all(frames, cuts)

    dissect_alike()


# ---- rewrites -----------------------------------------------------------------------------------
def _flat(frames: list[bytes]) -> headers.Headers:
    return headers.from_bytes(frames, stride=256)


def _frames(h: headers.Headers) -> list[bytes]:
    return [h.flat[int(b):int(b) + int(n)].tobytes() for b, n in zip(h.base, h.lengths, strict=True)]


def _l4_csum_right(frame: bytes) -> bool:
    """Scapy recomputes the TCP/UDP and IPv4 checksums and finds the ones in the frame."""
    p = Ether(frame)
    again = p.copy()
    for layer in (IP, TCP, UDP):
        if layer in again:
            if layer is UDP and again[UDP].chksum == 0:
                continue
            del again[layer].chksum
    rebuilt = Ether(bytes(again))
    return all(rebuilt[layer].chksum == p[layer].chksum for layer in (IP, TCP, UDP) if layer in p)


REWRITE_FRAMES = [
    Ether(**MAC) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=64) / TCP(sport=1000, dport=80) / Raw(b"hello"),
    Ether(**MAC) / Dot1Q(vlan=10, prio=3) / IP(src="10.9.8.7", dst="1.1.1.1", ttl=2) / UDP(sport=53, dport=9),
    Ether(**MAC) / IP(src="10.0.0.3", ttl=1) / UDP(sport=5, dport=6, chksum=0),
    Ether(**MAC) / IPv6(hlim=9) / UDP(sport=7, dport=8),
    Ether(**MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=200) / IP(ttl=0) / ICMP(),
    Ether(**MAC) / ARP(),
]


def test_decrement_ttl_updates_the_checksum_and_reports_expired():
    frames = [bytes(p) for p in REWRITE_FRAMES]
    h = _flat(frames)
    expired = rewrite.decrement_ttl(h)
    assert expired.tolist() == [False, False, True, False, True, False]
    out = [Ether(f) for f in _frames(headers.from_bytes(_frames(h)))]
    assert [out[0][IP].ttl, out[1][IP].ttl, out[2][IP].ttl, out[3][IPv6].hlim, out[4][IP].ttl] == [63, 1, 1, 8, 0]
    assert all(checksum(bytes(p[IP])[:p[IP].ihl * 4]) == 0 for p in out if IP in p)
    assert _frames(h)[5] == frames[5]


def test_address_and_port_rewrites_keep_every_checksum_right():
    frames = [bytes(p) for p in REWRITE_FRAMES]
    h = _flat(frames)
    assert rewrite.set_ipv4_address(h, "src", "192.0.2.77").tolist() == [True, True, True, False, True, False]
    h = _flat(_frames(h))
    rewrite.set_ipv4_address(h, "dst", np.array([0xC6336401] * 6, np.uint32), mask=[True, False] * 3)
    h = _flat(_frames(h))
    assert rewrite.set_port(h, "src", 4242).tolist() == [True, True, True, True, False, False]
    h = _flat(_frames(h))
    rewrite.set_port(h, "dst", np.arange(6) + 6000)
    out = _frames(h)
    p = [Ether(f) for f in out]
    assert [p[i][IP].src for i in (0, 1, 2, 4)] == ["192.0.2.77"] * 4
    assert [p[i][IP].dst for i in (0, 2, 4)] == ["198.51.100.1"] * 3 and p[1][IP].dst == "1.1.1.1"
    assert (p[0][TCP].sport, p[0][TCP].dport, p[1][UDP].dport, p[3][UDP].sport, p[3][UDP].dport) == (
        4242, 6000, 6001, 4242, 6003)
    assert p[2][UDP].chksum == 0                   # "no checksum" stays so
    assert all(_l4_csum_right(f) for f in out[:5])
    assert out[5] == frames[5]


def test_vlan_id_rewrite_keeps_pcp_and_touches_only_tagged_frames():
    frames = [bytes(p) for p in REWRITE_FRAMES]
    h = _flat(frames)
    assert rewrite.set_vlan_id(h, 42).tolist() == [False, True, False, False, True, False]
    h = _flat(_frames(h))
    assert rewrite.set_vlan_id(h, 43, tag=1).tolist() == [False, False, False, False, True, False]
    out = [Ether(f) for f in _frames(h)]
    assert (out[1][Dot1Q].vlan, out[1][Dot1Q].prio) == (42, 3)
    assert (out[4][Dot1AD].vlan, out[4].payload.payload.vlan) == (42, 43)
    assert _frames(h)[0] == frames[0]
    with pytest.raises(ValueError, match="^a VLAN id is 0..4095, got 4096$"):
        rewrite.set_vlan_id(h, 4096)


@settings(max_examples=100, deadline=None)
@given(st.lists(packets(), min_size=1, max_size=6), st.ip_addresses(v=4), st.integers(0, 65535))
def test_hypothesis_rewrites_leave_checksums_scapy_agrees_with(pkts, addr, port):
    frames = [bytes(p) for p in pkts]
    frames = [f for f in frames if len(f) <= 256]
    if not frames:
        return
    h = headers.from_bytes(frames, stride=256)
    good = h.ipv4.csum_ok.copy()
    rewrite.decrement_ttl(h)
    h = headers.from_bytes(_frames(h), stride=256)
    rewrite.set_ipv4_address(h, "dst", addr.exploded)
    h = headers.from_bytes(_frames(h), stride=256)
    rewrite.set_port(h, "dst", port)
    h2 = headers.from_bytes(_frames(h), stride=256)
    assert (h2.ipv4.csum_ok == good).all()           # a right checksum stays right
    for i, f in enumerate(_frames(h)):
        if good[i] and h2.l4.first[i] and (h2.l4.tcp[i] or h2.l4.udp[i]):
            assert _l4_csum_right(f)
