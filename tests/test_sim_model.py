"""The software 82599 stepped in-process, driven by hand-written registers and descriptors."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.nic import registers as R
from ixypipe.sim.payload import SIM_SEQ_OFF
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig

RING = 64
BUF = 2048
HEADROOM = 64


class Rig:
    """One arena with an RX ring, a TX ring and buffers, and a world with the given ports."""

    def __init__(self, arena, ports, rx_queues=1, hot_path=None):
        self.arena = arena
        self.world = SimWorld(ports, arena, hot_path=hot_path)
        self.rx_rings = [arena.alloc(f"rx{q}", RING * R.DESC_SIZE, within_page=True) for q in range(rx_queues)]
        self.tx_ring = arena.alloc("tx", RING * R.DESC_SIZE, within_page=True)
        self.bufs = arena.alloc("bufs", 4 * RING * BUF, align=BUF)

    def port(self, name="p0"):
        return self.world.ports[name]

    def buf_addr(self, i):
        return int(self.arena.phys(self.bufs.offset + i * BUF + HEADROOM))

    def buf_bytes(self, i, n):
        off = self.bufs.offset + i * BUF + HEADROOM
        return bytes(self.arena.buf[off:off + n])

    def rx_desc(self, q=0):
        return self.arena.view(self.rx_rings[q], R.RX_DESC_READ_DTYPE)

    def tx_desc(self):
        return self.arena.view(self.tx_ring, R.TX_DESC_READ_DTYPE)

    def bring_up(self, name="p0", rx_queues=1, srrctl=R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN):
        p = self.port(name)
        p.config[R.PCI_CFG_COMMAND] |= R.PCI_COMMAND_BUS_MASTER
        p.set_reg(R.CTRL, R.CTRL_RST_MASK)
        self.world.step()
        self.world.step()
        p.set_reg(R.AUTOC, p.reg(R.AUTOC) | R.AUTOC_AN_RESTART)
        for q in range(rx_queues):
            base = int(self.arena.phys(self.rx_rings[q].offset))
            p.set_reg(R.RDBAL(q), base & 0xFFFFFFFF)
            p.set_reg(R.RDBAH(q), base >> 32)
            p.set_reg(R.RDLEN(q), RING * R.DESC_SIZE)
            p.set_reg(R.SRRCTL(q), srrctl)
            d = self.rx_desc(q)
            d["pkt_addr"] = [self.buf_addr(q * RING + i) for i in range(RING)]
            d["hdr_addr"] = 0
            p.set_reg(R.RXDCTL(q), R.RXDCTL_ENABLE)
        base = int(self.arena.phys(self.tx_ring.offset))
        p.set_reg(R.TDBAL(0), base & 0xFFFFFFFF)
        p.set_reg(R.TDBAH(0), base >> 32)
        p.set_reg(R.TDLEN(0), RING * R.DESC_SIZE)
        p.set_reg(R.TXDCTL(0), R.TXDCTL_ENABLE)
        p.set_reg(R.RXCTRL, R.RXCTRL_RXEN)
        p.set_reg(R.DMATXCTL, R.DMATXCTL_TE)
        self.world.step()
        return p

    def close(self):
        self.world.close()


@pytest.fixture
def rig(make_arena):
    made = []

    def make(ports=None, rx_queues=1, arena_size=8 << 20, hot_path=None):
        r = Rig(make_arena(arena_size), ports or [SimPortConfig("p0")], rx_queues, hot_path)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def frames(n, size=60, first=0):
    rng = np.random.default_rng(first)
    return [bytes(rng.integers(0, 256, size, dtype=np.uint8)) for _ in range(n)]


def test_reset_self_clears_then_eeprom_and_dma_init_come_up_and_link_needs_an_restart(rig):
    r = rig()
    p = r.port()
    w = r.world
    p.set_reg(R.LINKS, 0)
    p.set_reg(R.SRRCTL(3), 0xFFFF)
    p.set_reg(R.CTRL, R.CTRL_RST | R.CTRL_LNK_RST)
    assert w.step() > 0
    assert p.reg(R.CTRL) & R.CTRL_RST_MASK == 0
    assert p.reg(R.EEC) & R.EEC_ARD == 0
    assert p.reg(R.RDRXCTL) & R.RDRXCTL_DMAIDONE == 0
    assert p.reg(R.SRRCTL(3)) == 0x402
    assert p.reg(R.DCA_RXCTRL(0)) & R.DCA_RXCTRL_RESERVED_BIT12
    assert p.reg(R.DCA_RXCTRL(20)) & R.DCA_RXCTRL_RESERVED_BIT12
    assert p.reg(R.AUTOC) == R.AUTOC_RESET_VALUE
    assert p.reg(R.MAXFRS) == 0x05EE0000            # MFS 1518
    assert p.reg(R.RAL(0)) == int.from_bytes(p.mac[:4], "little")
    assert p.reg(R.RAH(0)) == int.from_bytes(p.mac[4:], "little") | R.RAH_AV
    w.step()
    assert p.reg(R.EEC) & R.EEC_ARD
    assert p.reg(R.RDRXCTL) & R.RDRXCTL_DMAIDONE
    for _ in range(3):
        w.step()
    assert p.reg(R.LINKS) == 0                      # no link without an auto-negotiation restart
    autoc = (p.reg(R.AUTOC) & ~R.AUTOC_LMS_MASK) | R.AUTOC_LMS_10G_SERIAL
    p.set_reg(R.AUTOC, autoc | R.AUTOC_AN_RESTART)
    w.step()
    assert p.reg(R.LINKS) == R.LINKS_UP | R.LINKS_SPEED_10G
    assert p.reg(R.AUTOC) == autoc                  # AN_RESTART self-clears, the rest stays
    assert w.link_up("p0")


def test_rx_writes_exact_bytes_length_eop_dd_and_advances_rdh(rig):
    r = rig()
    p = r.bring_up()
    p.set_reg(R.RDT(0), 10)                         # 10 descriptors for the device
    sent = frames(3, 60) + frames(2, 1514, first=7)
    assert p.receive(PacketBatch.from_frames(sent)) == 5
    wb = r.rx_desc().view(R.RX_DESC_WB_DTYPE)
    for i, f in enumerate(sent):
        assert r.buf_bytes(i, len(f)) == f
        assert wb["length"][i] == len(f)
        assert wb["status_error"][i] == R.RXD_STAT_DD | R.RXD_STAT_EOP
    assert r.buf_bytes(5, 4) == b"\0\0\0\0"          # nothing beyond
    assert wb["status_error"][5] == 0
    assert p.reg(R.RDH(0)) == 5
    c = r.world.counters()["p0"]
    assert (c.rx_delivered, c.rx_missed, c.dma_faults) == (5, 0, 0)
    p.latch_stats()
    assert p.reg(R.GPRC) == 5
    assert p.reg(R.GORCL) == 3 * 64 + 2 * 1518         # the 82599 counts each frame's 4-byte FCS
    p.latch_stats()                                 # the next interval had no traffic
    assert p.reg(R.GPRC) == 0


def test_the_mac_drops_runts_and_frames_over_the_max_frame_size_counting_them_in_ruc_and_roc(rig):
    r = rig()
    p = r.bring_up()
    p.set_reg(R.RDT(0), 30)
    tag = bytes(12) + b"\x81\x00\x00\x64"
    untagged = [bytes([1]) * 1514, bytes([2]) * 1515, bytes([3]) * 59, bytes([4]) * 60, bytes([5]) * 14]
    tagged = [(tag + bytes([6]) * 1514)[:1518], (tag + bytes([7]) * 1515)[:1519]]
    # JUMBOEN clear: 1518 bytes with FCS, 4 more with an 802.1Q tag; shorter than 64 with FCS is a runt
    assert p.receive(PacketBatch.from_frames(untagged + tagged)) == 3
    assert [r.buf_bytes(i, n) for i, n in enumerate((1514, 60, 1518))] == [untagged[0], untagged[3], tagged[0]]
    assert r.buf_bytes(3, 4) == b"\0\0\0\0" and p.reg(R.RDH(0)) == 3        # nothing else was written
    # JUMBOEN set: MAXFRS.MFS counts, below 1518 as well as above
    p.set_reg(R.HLREG0, R.HLREG0_JUMBOEN)
    p.set_reg(R.MAXFRS, 1984 << R.MAXFRS_MFS_SHIFT)
    assert p.max_frame() == 1980
    assert p.receive(PacketBatch.from_frames([bytes(1980), bytes(1981), bytes(2000), bytes(1515)])) == 2
    p.set_reg(R.MAXFRS, 1000 << R.MAXFRS_MFS_SHIFT)
    assert p.receive(PacketBatch.from_frames([bytes(996), bytes(997)])) == 1
    c = r.world.counters()["p0"]
    assert (c.rx_delivered, c.rx_undersize, c.rx_oversize, c.rx_missed, c.dma_faults) == (6, 2, 5, 0, 0)
    p.latch_stats()
    assert (p.reg(R.GPRC), p.reg(R.RUC), p.reg(R.ROC), p.reg(R.MPC(0))) == (6, 2, 5, 0)


def test_ring_full_counts_missed_in_mpc_or_qprdc(rig):
    r = rig()
    p = r.bring_up(srrctl=R.SRRCTL_DESCTYPE_ADV_ONEBUF)     # no DROP_EN: MPC
    p.set_reg(R.RDT(0), 4)
    assert p.receive(PacketBatch.from_frames(frames(7))) == 4
    assert p.reg(R.RDH(0)) == 4
    assert p.receive(PacketBatch.from_frames(frames(2))) == 0    # RDH == RDT: no descriptor
    assert r.world.counters()["p0"].rx_missed == 5
    p.latch_stats()
    assert p.reg(R.MPC(0)) == 5
    p.set_reg(R.SRRCTL(0), R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN)
    p.receive(PacketBatch.from_frames(frames(3)))
    p.latch_stats()
    assert (p.reg(R.MPC(0)), p.reg(R.QPRDC(0))) == (0, 3)
    # the ring wraps: the driver refills the used descriptors and gives back all but one
    r.rx_desc()[:4] = [(r.buf_addr(i), 0) for i in range(4)]
    p.set_reg(R.RDT(0), 3)
    assert p.receive(PacketBatch.from_frames(frames(RING))) == RING - 1
    assert p.reg(R.RDH(0)) == 3


def test_tx_reads_buffers_to_the_sink_byte_exact_and_writes_dd_only_where_rs(rig):
    r = rig([SimPortConfig("p0", sink=SinkConfig(mode="count"))])
    p = r.bring_up()
    got = []
    p.wire_out.append(lambda b: got.extend(b.frame(i) for i in range(len(b))))
    payloads = frames(6, 60) + frames(1, 1000, first=3)
    tx = r.tx_desc()
    for i, f in enumerate(payloads):
        off = r.bufs.offset + i * BUF + HEADROOM
        r.arena.buf[off:off + len(f)] = np.frombuffer(f, np.uint8)
        tx["buffer_addr"][i] = r.buf_addr(i)
        rs = R.TXD_CMD_RS if i in (2, 6) else 0
        tx["cmd_type_len"][i] = (R.TXD_CMD_DATA & ~R.TXD_CMD_RS) | rs | len(f)
        tx["olinfo_status"][i] = len(f) << R.TXD_PAYLEN_SHIFT
    r.world.step()
    assert got == []                                # no doorbell yet
    p.set_reg(R.TDT(0), len(payloads))
    r.world.step()
    assert got == payloads
    status = tx.view(R.TX_DESC_WB_DTYPE)["status"][:len(payloads)]
    dd = [int(s) & R.TXD_STAT_DD for s in status]
    assert dd == [0, 0, 1, 0, 0, 0, 1]
    assert p.reg(R.TDH(0)) == len(payloads)
    c = r.world.counters()["p0"]
    assert (c.tx_sent, c.tx_bytes, c.sink_received) == (7, 6 * 60 + 1000, 7)
    p.latch_stats()
    assert (p.reg(R.GPTC), p.reg(R.GOTCL)) == (7, 6 * 64 + 1004)     # with the FCS


@pytest.mark.parametrize("hot_path", ["numpy", "numba"])
@pytest.mark.parametrize("txpaden", [True, False], ids=["TXPADEN", "no-TXPADEN"])
def test_tx_pads_short_frames_with_zeros_to_60_bytes_when_txpaden_is_set(rig, hot_path, txpaden):
    r = rig([SimPortConfig("p0", sink=SinkConfig(mode="count"))], hot_path=hot_path)
    p = r.bring_up()
    hlreg0 = p.reg(R.HLREG0) & ~R.HLREG0_TXPADEN
    p.set_reg(R.HLREG0, hlreg0 | (R.HLREG0_TXPADEN if txpaden else 0))
    got = []
    p.wire_out.append(lambda b: got.extend(b.frame(i) for i in range(len(b))))
    posted = [b"\x11" * 42, b"\x22" * 1, b"\x33" * 60, b"\x44" * 200]
    tx = r.tx_desc()
    for i, f in enumerate(posted):
        off = r.bufs.offset + i * BUF + HEADROOM
        r.arena.buf[off:off + BUF - HEADROOM] = 0xEE            # what follows a frame in its buffer is not sent
        r.arena.buf[off:off + len(f)] = np.frombuffer(f, np.uint8)
        tx["buffer_addr"][i] = r.buf_addr(i)
        tx["cmd_type_len"][i] = R.TXD_CMD_DATA | len(f)
        tx["olinfo_status"][i] = len(f) << R.TXD_PAYLEN_SHIFT
    p.set_reg(R.TDT(0), len(posted))
    r.world.step()
    if txpaden:
        assert got == [b"\x11" * 42 + bytes(18), b"\x22" + bytes(59), b"\x33" * 60, b"\x44" * 200]
    else:
        assert got == posted
    sizes = [len(f) for f in got]
    c = r.world.counters()["p0"]
    assert (c.tx_sent, c.tx_bytes) == (4, sum(sizes))
    p.latch_stats()
    assert (p.reg(R.GPTC), p.reg(R.GOTCL)) == (4, sum(sizes) + 4 * 4)      # the FCS on each


def test_tx_needs_te_and_a_live_queue(rig):
    r = rig([SimPortConfig("p0", sink=SinkConfig(mode="count"))])
    p = r.bring_up()
    p.set_reg(R.DMATXCTL, 0)
    tx = r.tx_desc()
    tx["buffer_addr"][0] = r.buf_addr(0)
    tx["cmd_type_len"][0] = R.TXD_CMD_DATA | 60
    p.set_reg(R.TDT(0), 1)
    r.world.step()
    assert r.world.counters()["p0"].tx_sent == 0
    p.set_reg(R.DMATXCTL, R.DMATXCTL_TE)
    r.world.step()
    assert r.world.counters()["p0"].tx_sent == 1


def test_rx_dma_outside_the_arena_is_a_fault_that_stops_the_queue(rig):
    r = rig()
    p = r.bring_up()
    d = r.rx_desc()
    bad = int(r.arena.phys(0)) + r.arena.size + (1 << 30)
    if r.arena.hugepages:
        bad = 0x10                                  # physical page 0 is never part of an arena
    d["pkt_addr"][2] = bad
    p.set_reg(R.RDT(0), 8)
    before = bytes(r.arena.buf[:64])
    assert p.receive(PacketBatch.from_frames(frames(5))) == 2
    assert p.reg(R.RDH(0)) == 2                     # stopped at the faulting descriptor
    wb = d.view(R.RX_DESC_WB_DTYPE)
    assert wb["status_error"][2] == 0
    (fault,) = r.world.faults
    assert (fault.port, fault.direction, fault.queue, fault.descriptor, fault.address) == ("p0", "rx", 0, 2, bad)
    assert "outside registered memory" in fault.reason
    assert r.world.counters()["p0"].dma_faults == 1
    assert p.receive(PacketBatch.from_frames(frames(2))) == 0     # the queue stays stopped
    assert bytes(r.arena.buf[:64]) == before


def test_tx_buffer_straddling_the_arena_end_is_a_fault(rig):
    r = rig([SimPortConfig("p0", sink=SinkConfig(mode="count"))])
    p = r.bring_up()
    tx = r.tx_desc()
    last = int(r.arena.phys(r.arena.size - 30))
    tx["buffer_addr"][:2] = [r.buf_addr(0), last]
    tx["cmd_type_len"][:2] = R.TXD_CMD_DATA | 60
    p.set_reg(R.TDT(0), 2)
    r.world.step()
    (fault,) = r.world.faults
    assert (fault.direction, fault.descriptor, fault.address) == ("tx", 1, last)
    c = r.world.counters()["p0"]
    assert (c.tx_sent, c.sink_received, c.dma_faults) == (1, 1, 1)
    assert p.reg(R.TDH(0)) == 1


@pytest.mark.parametrize("cmd, reason", [
    (R.TXD_CMD_DATA & ~R.TXD_CMD_DEXT, "not an advanced data descriptor"),
    (R.TXD_CMD_DATA & ~R.TXD_CMD_EOP, "multi-segment transmit is not modelled"),
])
def test_unsupported_tx_descriptors_are_faults(rig, cmd, reason):
    r = rig([SimPortConfig("p0", sink=SinkConfig(mode="count"))])
    p = r.bring_up()
    tx = r.tx_desc()
    tx["buffer_addr"][0] = r.buf_addr(0)
    tx["cmd_type_len"][0] = cmd | 60
    p.set_reg(R.TDT(0), 1)
    r.world.step()
    (fault,) = r.world.faults
    assert reason in fault.reason
    assert r.world.counters()["p0"].sink_received == 0


def test_legacy_rx_descriptors_are_a_fault_at_queue_enable(rig):
    r = rig()
    r.bring_up(srrctl=R.SRRCTL_RESET_VALUE)
    (fault,) = r.world.faults
    assert fault.direction == "rx" and "not advanced one-buffer" in fault.reason
    assert not r.port().rx_ready()


def test_queue_enable_latches_base_and_disable_stops_it(rig):
    r = rig()
    p = r.bring_up()
    p.set_reg(R.RDT(0), 8)
    p.set_reg(R.RDBAL(0), 0)                        # changing the base after enable has no effect
    assert p.receive(PacketBatch.from_frames(frames(1))) == 1
    p.set_reg(R.RXDCTL(0), 0)
    r.world.step()
    assert not p.rx_ready()
    assert p.receive(PacketBatch.from_frames(frames(1))) == 0
    assert r.world.faults == []


def test_rss_spreads_generator_flows_over_queues_like_the_toeplitz_hash(rig):
    from ixypipe.sim.rss import Rss
    r = rig([SimPortConfig("p0", generator=GeneratorConfig(flows=16, count=48))], rx_queues=4)
    p = r.bring_up(rx_queues=4)
    key = bytes(range(1, 41))
    for i in range(10):
        p.set_reg(R.RSSRK(i), int.from_bytes(key[4 * i:4 * i + 4], "little"))
    reta = [j % 4 for j in range(R.RETA_ENTRIES)]
    for i in range(R.RETA_ENTRIES // 4):
        p.set_reg(R.RETA(i), int.from_bytes(bytes(reta[4 * i:4 * i + 4]), "little"))
    p.set_reg(R.MRQC, R.MRQC_RSSEN | R.MRQC_RSS_FIELD_IPV4 | R.MRQC_RSS_FIELD_IPV4_UDP)
    for q in range(4):
        p.set_reg(R.RDT(q), RING - 1)
    gen = r.world.generators["p0"]
    expected_frames = gen.make(48)
    hashes = Rss().hash(expected_frames.data, R.MRQC_RSS_FIELD_IPV4_UDP, key)
    expect_q = (hashes & 0x7F) % 4
    r.world.start_traffic()
    r.world.step()
    assert r.world.counters()["p0"].rx_delivered == 48
    for q in range(4):
        rows = np.flatnonzero(expect_q == q)
        wb = r.rx_desc(q).view(R.RX_DESC_WB_DTYPE)
        assert p.reg(R.RDH(q)) == len(rows)
        for k, row in enumerate(rows):
            assert r.buf_bytes(q * RING + k, 60) == expected_frames.frame(int(row))
            assert int(wb["rss_info"][k]) >> 32 == int(hashes[row])
    assert len(set(expect_q.tolist())) > 1          # the flows really spread


def test_without_rss_everything_goes_to_queue_0(rig):
    r = rig([SimPortConfig("p0", generator=GeneratorConfig(flows=16, count=20))], rx_queues=2)
    p = r.bring_up(rx_queues=2)
    for q in range(2):
        p.set_reg(R.RDT(q), RING - 1)
    r.world.start_traffic()
    r.world.step()
    assert (p.reg(R.RDH(0)), p.reg(R.RDH(1))) == (20, 0)


def test_generator_at_rate_zero_fills_exactly_the_free_descriptors_without_loss(rig):
    r = rig([SimPortConfig("p0", generator=GeneratorConfig(flows=3))])
    p = r.bring_up()
    r.world.step()
    assert r.world.counters()["p0"].generated == 0     # no traffic before start_traffic()
    r.world.start_traffic()
    p.set_reg(R.RDT(0), 10)
    r.world.step()
    r.world.step()
    c = r.world.counters()["p0"]
    assert (c.generated, c.rx_delivered, c.rx_missed) == (10, 10, 0)
    seqs = [int.from_bytes(r.buf_bytes(i, SIM_SEQ_OFF + 8)[SIM_SEQ_OFF:], "little") for i in range(10)]
    assert seqs == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    r.world.pause_traffic()
    p.set_reg(R.RDT(0), 20)
    r.world.step()
    assert r.world.counters()["p0"].generated == 10


def test_cable_carries_tx_of_one_port_to_rx_of_the_other(rig):
    r = rig([SimPortConfig("a", cable_to="b"), SimPortConfig("b")])
    a = r.bring_up("a")
    b = r.world.ports["b"]
    b.config[R.PCI_CFG_COMMAND] |= R.PCI_COMMAND_BUS_MASTER
    b.set_reg(R.CTRL, R.CTRL_RST_MASK)
    r.world.step()
    # b: RX ring in the second half of the buffers
    base = int(r.arena.phys(r.rx_rings[0].offset))
    tx = r.tx_desc()
    f = frames(1, 100)[0]
    off = r.bufs.offset + 3 * RING * BUF + HEADROOM
    r.arena.buf[off:off + 100] = np.frombuffer(f, np.uint8)
    # a's RX ring is reused as b's RX ring: a has nothing arriving (its wire goes to b)
    a.set_reg(R.RXDCTL(0), 0)
    r.world.step()
    d = r.rx_desc()
    d["pkt_addr"] = [r.buf_addr(RING + i) for i in range(RING)]
    b.set_reg(R.RDBAL(0), base & 0xFFFFFFFF)
    b.set_reg(R.RDBAH(0), base >> 32)
    b.set_reg(R.RDLEN(0), RING * R.DESC_SIZE)
    b.set_reg(R.SRRCTL(0), R.SRRCTL_DESCTYPE_ADV_ONEBUF)
    b.set_reg(R.RXDCTL(0), R.RXDCTL_ENABLE)
    b.set_reg(R.RXCTRL, R.RXCTRL_RXEN)
    b.set_reg(R.RDT(0), 5)
    r.world.step()
    tx["buffer_addr"][0] = int(r.arena.phys(off))
    tx["cmd_type_len"][0] = R.TXD_CMD_DATA | 100
    a.set_reg(R.TDT(0), 1)
    r.world.step()
    assert r.buf_bytes(RING, 100) == f
    assert b.reg(R.RDH(0)) == 1
    c = r.world.counters()
    assert (c["a"].tx_sent, c["b"].rx_delivered) == (1, 1)


def test_bad_wiring_is_rejected_with_the_port_named(make_arena):
    from ixypipe.sim.world import SimConfigError
    arena = make_arena(4 << 20)
    with pytest.raises(SimConfigError, match="port a: cable_to 'zz' must name another port"):
        SimWorld([SimPortConfig("a", cable_to="zz")], arena)
    with pytest.raises(SimConfigError, match="port a: its wire goes to b .* cannot also have a generator"):
        SimWorld([SimPortConfig("a", cable_to="b", generator=GeneratorConfig()), SimPortConfig("b")], arena)
    with pytest.raises(SimConfigError,
                       match="port a: generator packet size must be 60..9018 bytes without FCS for profile udp"):
        SimWorld([SimPortConfig("a", generator=GeneratorConfig(packet_size=59))], arena)


def test_statistics_latch_once_per_period_on_the_model_clock(make_arena):
    now = [0]
    arena = make_arena(4 << 20)
    with SimWorld([SimPortConfig("p0")], arena, stats_period_ns=1000, clock=lambda: now[0]) as world:
        p = world.ports["p0"]
        p.set_reg(R.RXCTRL, 0)                      # RX off: every arriving frame is missed (MPC)
        p.receive(PacketBatch.from_frames(frames(4)))
        world.step()
        assert p.reg(R.MPC(0)) == 0                 # the interval is not over yet
        now[0] = 1000
        world.step()
        assert p.reg(R.MPC(0)) == 4
        p.receive(PacketBatch.from_frames(frames(1)))
        now[0] = 2000
        world.step()
        assert p.reg(R.MPC(0)) == 1                 # a driver adding what it reads each period gets 5
        assert world.counters()["p0"].rx_missed == 5
