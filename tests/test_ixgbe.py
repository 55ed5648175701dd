"""The ixgbe driver against the software 82599, stepped in-process (sleep = world.step)."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ixgbe_jit
from ixypipe.nic import registers as R
from ixypipe.nic.device import DeviceError, DeviceStats, LinkState, PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.nic.pci import PciError
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig

POOL = 2048
NEVER = 1 << 62          # stats latch period: tests latch by hand


class Rig:
    """An arena, packet buffers, one mempool per RX queue and a SimWorld; cleans up everything."""

    def __init__(self, arena, ports: list[SimPortConfig], rx_queues: int = 1, ring: int = 512,
                 hot_path: str = "numpy"):
        self.arena = arena
        self.hot_path = hot_path
        self.rx_queues = rx_queues
        self.ring = ring
        n_pools = len(ports) * rx_queues
        self.bufs = PacketBuffers.create(arena, POOL * n_pools)
        self.pools = [Mempool.create(arena, self.bufs, f"pool{i}", i * POOL, POOL, i) for i in range(n_pools)]
        self.home = Homing.to_pools(self.bufs, self.pools)     # every port's tx_done
        self.world = SimWorld(ports, arena, stats_period_ns=NEVER)
        self.devices: list[IxgbeDevice] = []

    def spec(self, name: str) -> PortSpec:
        return PortSpec(name, "sim", self.world.addresses[name], rx_queues=self.rx_queues,
                        rx_ring_size=self.ring, tx_ring_size=self.ring)

    def open(self, name: str, **kwargs) -> IxgbeDevice:
        i = self.world.names.index(name)
        pools = self.pools[i * self.rx_queues:(i + 1) * self.rx_queues]
        kwargs.setdefault("hot_path", self.hot_path)
        kwargs.setdefault("tx_done", self.home)
        dev = IxgbeDevice.open(self.spec(name), self.arena, self.bufs, pools,
                               sysfs_root=str(self.world.sysfs_root), sleep=lambda s: self.world.step(), **kwargs)
        self.devices.append(dev)
        assert dev.compiled == (kwargs["hot_path"] == "numba")
        return dev

    def packets(self, n: int, fill: bytes, pool: int = 0) -> np.ndarray:
        """``n`` buffers taken from a pool, each holding a 60-byte packet of ``fill``."""
        idx = self.pools[pool].alloc_exact(n)
        for i in idx:
            self.bufs.write_packet(int(i), fill * 60)
        return idx

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        self.world.close()


HOT_PATHS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not ixgbe_jit.AVAILABLE, reason="numba is not installed (the compiled hot path is optional)"))]


@pytest.fixture(params=HOT_PATHS)
def rig(make_arena, request):
    """Every test runs on both hot paths: the numpy reference and the numba kernels."""
    made = []

    def build(ports=None, **kwargs) -> Rig:
        r = Rig(make_arena(48 << 20), ports or [SimPortConfig("p0")], hot_path=request.param, **kwargs)
        made.append(r)
        return r

    yield build
    for r in made:
        r.close()


def random_frames(rng, n, lo=60, hi=1514) -> list[bytes]:
    return [rng.integers(0, 256, int(rng.integers(lo, hi + 1)), dtype=np.uint8).tobytes() for _ in range(n)]


def test_init_writes_registers_in_ixys_order(rig):
    r = rig()
    trace = []
    dev = r.open("p0", trace=trace)
    ring_rx = r.arena.region("ixgbe.p0.rxq0.desc")
    ring_tx = r.arena.region("ixgbe.p0.txq0.desc")
    expected = (
        [R.EIMS, R.EIMC, R.CTRL, R.EIMS, R.EIMC]                     # 4.6.3.1, 4.6.3.2, 4.6.3.1 again
        + [R.AUTOC, R.AUTOC, R.AUTOC]                                # 4.6.4 LMS, PMA/PMD, AN restart
        + [R.RXCTRL] + [R.RXPBSIZE(i) for i in range(8)] + [R.HLREG0, R.RDRXCTL, R.FCTRL]   # 4.6.7
        + [R.SRRCTL(0), R.SRRCTL(0), R.RDBAL(0), R.RDBAH(0), R.RDLEN(0), R.RDH(0), R.RDT(0)]
        + [R.HLREG0, R.MAXFRS]                                       # frames no longer than a buffer holds
        + [R.CTRL_EXT, R.DCA_RXCTRL(0), R.RXCTRL]
        + [R.HLREG0] + [R.TXPBSIZE(i) for i in range(8)] + [R.DTXMXSZRQ, R.RTTDCS]     # 4.6.8
        + [R.TDBAL(0), R.TDBAH(0), R.TDLEN(0), R.TXDCTL(0), R.DMATXCTL]
        + [R.RXDCTL(0), R.RDH(0), R.RDT(0)]                          # start RX queue
        + [R.TDH(0), R.TDT(0), R.TXDCTL(0)]                          # start TX queue
        + [R.FCTRL]                                                  # promiscuous
    )
    assert [off for off, _ in trace] == expected
    writes = dict(trace)          # last value written to each register
    assert trace[2] == (R.CTRL, R.CTRL_RST_MASK)
    assert writes[R.RDBAL(0)] | writes[R.RDBAH(0)] << 32 == int(r.arena.phys(ring_rx.offset))
    assert writes[R.TDBAL(0)] | writes[R.TDBAH(0)] << 32 == int(r.arena.phys(ring_tx.offset))
    assert writes[R.RDLEN(0)] == writes[R.TDLEN(0)] == 512 * 16
    assert writes[R.RDT(0)] == 511                                   # all but one descriptor to the NIC
    assert writes[R.SRRCTL(0)] & (R.SRRCTL_DESCTYPE_MASK | R.SRRCTL_DROP_EN | R.SRRCTL_BSIZEPKT_MASK) == (
        R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN | 2)        # 2 KB buffers for 2048-byte pkt_bufs ...
    assert writes[R.MAXFRS] == 1984 << 16 and writes[R.HLREG0] & R.HLREG0_JUMBOEN   # ... no frame past 1984 bytes
    assert writes[R.DCA_RXCTRL(0)] & R.DCA_RXCTRL_RESERVED_BIT12 == 0
    assert writes[R.TXDCTL(0)] == R.TXDCTL_ENABLE | 36 | 8 << 8 | 4 << 16
    assert writes[R.DMATXCTL] == R.DMATXCTL_TE
    assert writes[R.FCTRL] & (R.FCTRL_PROMISC | R.FCTRL_BAM) == R.FCTRL_PROMISC | R.FCTRL_BAM
    assert writes[R.AUTOC] & R.AUTOC_LMS_MASK == R.AUTOC_LMS_10G_SERIAL
    assert dev.mac == r.world.ports["p0"].mac
    assert (dev.num_rx_queues, dev.num_tx_queues) == (1, 1)
    dev.set_promisc(False)
    assert r.world.ports["p0"].reg(R.FCTRL) & (R.FCTRL_PROMISC | R.FCTRL_BAM) == R.FCTRL_BAM
    dev.set_promisc(True)
    assert r.world.ports["p0"].reg(R.FCTRL) & R.FCTRL_PROMISC == R.FCTRL_PROMISC


def test_link_comes_up_and_missing_link_is_a_clear_error(rig):
    r = rig()
    dev = r.open("p0")
    assert dev.link_state() == LinkState(True, 10000)
    dev.close()

    def no_cable(seconds):
        r.world.step()
        r.world.ports["p0"].set_reg(R.LINKS, 0)
    free = r.pools[0].available()
    with pytest.raises(PciError, match=r"timeout after 0.5 s waiting for LINKS.UP"):
        IxgbeDevice.open(r.spec("p0"), r.arena, r.bufs, [r.pools[0]], sysfs_root=str(r.world.sysfs_root),
                         sleep=no_cable, link_timeout=0.5)
    assert r.pools[0].available() == free == POOL - 512    # the failed open gave its ring buffers back


@pytest.mark.parametrize("stuck, what", [
    ("reset", "CTRL.RST/LNK_RST to self-clear after the global reset"),
    ("eeprom", "EEC.ARD (EEPROM auto-read done)"),
    ("dma_init", "RDRXCTL.DMAIDONE (DMA init done)"),
    ("rx_enable", "RXDCTL(0).ENABLE (RX queue 0 start)"),
    ("tx_enable", "TXDCTL(0).ENABLE (TX queue 0 start)"),
    ("link", "LINKS.UP (link up after auto-negotiation)"),
])
def test_every_init_wait_has_a_wide_margin_and_names_what_it_waited_for(rig, monkeypatch, stuck, what):
    """A device that never answers one handshake: the driver polls for 30 s (counted in the sleeps it asks
    for, so no test time passes), then says which register and bits it waited for and for how long."""
    from ixypipe.nic import ixgbe, pci
    r = rig()
    port = r.world.ports["p0"]
    slept = []
    never = {"eeprom": (R.EEC, R.EEC_ARD), "dma_init": (R.RDRXCTL, R.RDRXCTL_DMAIDONE), "link": (R.LINKS, R.LINKS_UP)}

    def sleep(seconds):
        slept.append(seconds)
        if stuck != "reset":                     # the model never runs: CTRL.RST stays set
            r.world.step()
        if stuck in never:
            reg, bit = never[stuck]
            port.set_reg(reg, port.reg(reg) & ~bit)
    if stuck.endswith("_enable"):                # the model cannot trap reads: a BAR that drops the ENABLE bit
        ctl, bit = (R.RXDCTL(0), R.RXDCTL_ENABLE) if stuck == "rx_enable" else (R.TXDCTL(0), R.TXDCTL_ENABLE)
        write = pci.Bar.write
        monkeypatch.setattr(pci.Bar, "write", lambda bar, off, value: write(bar, off, value & ~bit if off == ctl
                                                                           else value))
    with pytest.raises(PciError) as err:
        IxgbeDevice.open(r.spec("p0"), r.arena, r.bufs, [r.pools[0]], sysfs_root=str(r.world.sysfs_root),
                         sleep=sleep)
    assert f"{r.world.addresses['p0']}: timeout after 30 s waiting for {what} (register " in str(err.value)
    assert ixgbe.INIT_WAIT_TIMEOUT == ixgbe.LINK_TIMEOUT == 30.0
    assert 29.99 < sum(slept) < 30.5      # the whole margin was polled for (plus the few polls of earlier steps)
    assert r.pools[0].available() == POOL                # the failed open gave its ring buffers back


def test_received_frames_arrive_byte_exact(rig):
    r = rig()
    dev = r.open("p0")
    rng = np.random.default_rng(1)
    frames = random_frames(rng, 300)
    assert r.world.ports["p0"].receive(PacketBatch.from_frames(frames)) == 300
    got, out = [], np.zeros(64, np.uint32)
    while (n := dev.rx_batch(0, out)):
        got += [bytes(r.bufs.packet(int(i))) for i in out[:n]]
    assert got == frames
    assert r.pools[0].available() == POOL - 512 - 300
    # RDT stays one behind the next descriptor to read
    assert r.world.ports["p0"].reg(R.RDT(0)) == 299


def test_transmitted_frames_reach_the_wire_byte_exact(rig):
    r = rig()
    dev = r.open("p0")
    wire = []
    r.world.ports["p0"].wire_out.append(wire.append)
    rng = np.random.default_rng(2)
    frames = random_frames(rng, 100)
    idx = r.pools[0].alloc_exact(100)
    for i, f in zip(idx, frames, strict=True):
        r.bufs.write_packet(int(i), f)
    assert dev.tx_batch(0, idx) == 100
    assert dev.tx_pending(0) == 100
    r.world.step()
    assert [b.frame(i) for b in wire for i in range(len(b))] == frames
    desc = r.arena.view(r.arena.region("ixgbe.p0.txq0.desc"), R.TX_DESC_READ_DTYPE)
    assert desc["buffer_addr"][5] == r.bufs.data_phys[idx[5]]
    assert dev.tx_drain(0, timeout=0.1) == 0
    assert dev.tx_pending(0) == 0
    assert r.pools[0].available() == POOL - 512          # every TX buffer went home


def test_a_million_packets_wrap_the_ring_and_lose_no_buffer(rig):
    r = rig()
    dev = r.open("p0")
    port = r.world.ports["p0"]
    seen = []
    port.wire_out.append(lambda b: seen.append(b.data[:, :4].copy().view("<u4")[:, 0]))
    batch, total = 256, 1_000_000
    frames = np.zeros((batch, 64), np.uint8)
    out = np.zeros(batch, np.uint32)
    sent = 0
    while sent < total:
        k = min(batch, total - sent)
        frames[:k, :4] = (sent + np.arange(k, dtype=np.uint32)).view(np.uint8).reshape(k, 4)
        assert port.receive(PacketBatch(frames[:k], np.full(k, 64, np.int64))) == k
        n = dev.rx_batch(0, out)
        assert n == k
        assert dev.tx_batch(0, out[:n]) == n
        r.world.step()
        sent += k
    assert dev.tx_drain(0, timeout=0.1) == 0
    order = np.concatenate(seen)
    assert len(order) == total and (order == np.arange(total, dtype=np.uint32)).all()
    held = dev.rx_held(0)
    free = r.pools[0].free_indices()
    everything = np.concatenate((held, free))
    assert len(everything) == POOL and len(np.unique(everything)) == POOL
    assert port.rx_missed == 0 and not r.world.faults


def test_full_rx_ring_counts_drops(rig):
    r = rig(ring=64)
    dev = r.open("p0")
    port = r.world.ports["p0"]
    frames = [bytes([i]) * 60 for i in range(100)]
    assert port.receive(PacketBatch.from_frames(frames)) == 63      # one descriptor stays the driver's
    port.latch_stats()
    stats = dev.read_stats()
    assert (stats.rx_packets, stats.rx_dropped, stats.rx_bytes) == (63, 37, 63 * 64)   # octets with FCS
    out = np.zeros(100, np.uint32)
    assert dev.rx_batch(0, out) == 63
    assert [bytes(r.bufs.packet(int(i)))[:1] for i in out[:63]] == [bytes([i]) for i in range(63)]
    assert port.receive(PacketBatch.from_frames(frames[:10])) == 10  # room again after the refill
    port.latch_stats()
    assert dev.read_stats().rx_dropped == 37                         # accumulated, not doubled
    dev.reset_stats()
    port.latch_stats()          # the model's counters hold an interval until the next latch
    assert dev.read_stats() == DeviceStats()
    idx = out[:5].copy()
    assert dev.tx_batch(0, idx) == 5
    r.world.step()
    port.latch_stats()
    assert dev.read_stats() == DeviceStats(rx_packets=0, tx_packets=5, rx_bytes=0, tx_bytes=5 * 64)


@pytest.mark.parametrize("buf_size, kb, mfs", [(256, 1, 192), (1024, 1, 960), (2048, 2, 1984), (4096, 3, 3072),
                                              (8192, 7, 7168), (16384, 15, 15360)])
def test_rx_buffer_size_and_max_frame_keep_every_frame_inside_a_buffer(buf_size, kb, mfs):
    max_data = buf_size - 64
    assert R.rx_frame_limits(max_data) == (kb, mfs)
    # the longest frame the MAC takes (802.1Q-tagged: MFS + 4, less the stripped FCS) fits the buffer's data
    # and one descriptor's buffer, and a standard 1514-byte frame with a tag fits whenever the buffer holds it
    assert mfs <= max_data and mfs <= kb * 1024
    assert mfs >= min(1518, max_data) - (0 if kb * 1024 >= 1518 else 1518)


def test_frames_longer_than_a_buffer_holds_are_dropped_as_too_long_and_never_overrun(rig):
    r = rig(ring=64)
    dev = r.open("p0")
    port = r.world.ports["p0"]
    assert port.max_frame() == 1980 and r.bufs.max_data == 1984
    tagged = bytes(12) + b"\x81\x00\x00\x07"                          # an 802.1Q tag may add 4 bytes
    frames = [bytes([1]) * 1980, bytes([2]) * 1981, bytes([3]) * 2000, (tagged + bytes([4]) * 1984)[:1984],
              (tagged + bytes([5]) * 1985)[:1985], bytes([6]) * 1514, bytes([7]) * 60]
    r.bufs.data[dev.rx_held(0)] = 0xEE                               # every buffer the NIC may write into
    headers = r.bufs.raw[:, :16].copy()                              # address, pool, index of every buffer
    assert port.receive(PacketBatch.from_frames(frames)) == 4
    out = np.zeros(16, np.uint32)
    assert dev.rx_batch(0, out) == 4
    got = [bytes(r.bufs.packet(int(i))) for i in out[:4]]
    assert got == [frames[0], frames[3], frames[5], frames[6]]
    # nothing was written past a frame: the rest of each buffer (and so the next buffer's header) is untouched
    for i, frame in zip(out[:4], got, strict=True):
        assert (r.bufs.data[int(i), len(frame):] == 0xEE).all()
    assert (r.bufs.raw[:, :16] == headers).all()                     # a 2000-byte frame would clobber 16 bytes
    port.latch_stats()
    stats = dev.read_stats()
    assert (stats.rx_packets, stats.rx_too_long, stats.rx_dropped) == (4, 3, 0)
    assert port.rx_oversize == 3 and port.faults == []


def test_rx_waits_when_the_mempool_is_empty(rig):
    r = rig(ring=64)
    dev = r.open("p0")
    hoard = r.pools[0].alloc(POOL)
    r.world.ports["p0"].receive(PacketBatch.from_frames([b"\x01" * 60] * 10))
    out = np.zeros(32, np.uint32)
    assert dev.rx_batch(0, out) == 0                                  # no fresh buffer: nothing taken
    r.pools[0].free(hoard[:4])
    assert dev.rx_batch(0, out) == 4
    r.pools[0].free(hoard[4:])
    assert dev.rx_batch(0, out) == 6


def test_corrupted_descriptor_address_is_a_dma_fault(rig):
    r = rig()
    dev = r.open("p0")
    port = r.world.ports["p0"]
    rx_desc = r.arena.view(r.arena.region("ixgbe.p0.rxq0.desc"), R.RX_DESC_READ_DTYPE)
    rx_desc["pkt_addr"][2] = 0xDEAD_0000_0000
    assert port.receive(PacketBatch.from_frames([b"\x07" * 60] * 5)) == 2
    (fault,) = r.world.faults
    assert (fault.direction, fault.queue, fault.descriptor, fault.address) == ("rx", 0, 2, 0xDEAD_0000_0000)
    assert "outside registered memory" in fault.reason
    assert r.world.counters()["p0"].dma_faults == 1

    idx = r.packets(3, b"\x01")
    wire = []
    port.wire_out.append(wire.append)
    assert dev.tx_batch(0, idx) == 3
    tx_desc = r.arena.view(r.arena.region("ixgbe.p0.txq0.desc"), R.TX_DESC_READ_DTYPE)
    tx_desc["buffer_addr"][1] = 0x1000
    r.world.step()
    assert sum(len(b) for b in wire) == 1                             # nothing past the bad one
    fault = r.world.faults[-1]
    assert (fault.direction, fault.descriptor, fault.address) == ("tx", 1, 0x1000)
    assert dev.tx_drain(0, timeout=0.01) == 3                         # the queue stopped: not done


def test_rss_spreads_flows_over_queues(rig):
    r = rig(ports=[SimPortConfig("p0", generator=GeneratorConfig(flows=64, count=2000))], rx_queues=4)
    dev = r.open("p0")
    r.world.start_traffic()
    out = np.zeros(128, np.uint32)
    per_queue = {q: [] for q in range(4)}
    for _ in range(200):
        r.world.step()
        for q in range(4):
            n = dev.rx_batch(q, out)
            per_queue[q] += [bytes(r.bufs.packet(int(i))) for i in out[:n]]
            r.pools[q].free(out[:n].copy())
    assert sum(len(v) for v in per_queue.values()) == 2000
    assert all(len(v) > 100 for v in per_queue.values())
    flow_of = {q: {f[46:48] for f in frames} for q, frames in per_queue.items()}   # SIM_FLOW_OFF
    for a in range(4):
        for b in range(a + 1, 4):
            assert not flow_of[a] & flow_of[b]                          # a flow stays on one queue
    assert r.world.ports["p0"].reg(R.MRQC) & R.MRQC_RSSEN
    assert dev.num_rx_queues == 4


def test_attach_takes_over_the_queues(rig):
    r = rig()
    opener = r.open("p0")
    port = r.world.ports["p0"]
    port.receive(PacketBatch.from_frames([b"\x01" * 60] * 10))
    out = np.zeros(8, np.uint32)
    assert opener.rx_batch(0, out) == 8
    stage = IxgbeDevice.attach(r.spec("p0"), r.arena, r.bufs, {0: r.pools[0]}, tx_done=r.home,
                               sysfs_root=str(r.world.sysfs_root), hot_path=r.hot_path)
    r.devices.append(stage)
    port.receive(PacketBatch.from_frames([b"\x02" * 60] * 5))
    got = np.zeros(16, np.uint32)
    assert stage.rx_batch(0, got) == 7                                # 2 left by the opener + 5 new
    assert [int(r.bufs.packet(int(i))[0]) for i in got[:7]] == [1, 1, 2, 2, 2, 2, 2]
    assert stage.tx_batch(0, np.concatenate((out, got[:7]))) == 15
    r.world.step()
    assert stage.tx_drain(0, timeout=0.01) == 0
    assert port.tx_sent == 15
    with pytest.raises(PciError, match="resource busy"):
        IxgbeDevice.open(r.spec("p0"), r.arena, r.bufs, [r.pools[0]], sysfs_root=str(r.world.sysfs_root))
    tx_only = IxgbeDevice.attach(r.spec("p0"), r.arena, r.bufs, None, sysfs_root=str(r.world.sysfs_root))
    r.devices.append(tx_only)
    with pytest.raises(DeviceError, match="RX queue 0 was attached without its mempool"):
        tx_only.rx_batch(0, out)


def test_generated_traffic_loops_back_to_the_sink_intact(rig):
    r = rig(ports=[SimPortConfig("p0", generator=GeneratorConfig(packet_size=128, count=3000),
                                 sink=SinkConfig())])
    dev = r.open("p0")
    r.world.start_traffic()
    out = np.zeros(64, np.uint32)
    for _ in range(400):
        r.world.step()
        n = dev.rx_batch(0, out)
        assert dev.tx_batch(0, out[:n]) == n
    assert dev.tx_drain(0, timeout=0.1) == 0
    c = r.world.counters()["p0"]
    assert (c.generated, c.sink_received, c.sink_lost, c.sink_corrupt, c.sink_reordered) == (3000, 3000, 0, 0, 0)


def test_generated_frames_longer_than_the_max_frame_size_are_dropped_by_the_mac(rig):
    r = rig(ports=[SimPortConfig("p0", generator=GeneratorConfig(profile="imix", flows=12, count=1200),
                                 sink=SinkConfig())])
    dev = r.open("p0")
    port = r.world.ports["p0"]
    port.set_reg(R.MAXFRS, 1000 << R.MAXFRS_MFS_SHIFT)     # as a driver with smaller buffers would: 996 bytes
    r.world.start_traffic()
    out = np.zeros(64, np.uint32)
    for _ in range(400):
        r.world.step()
        n = dev.rx_batch(0, out)
        assert (r.bufs.length[out[:n]] <= 996).all()
        assert dev.tx_batch(0, out[:n]) == n
    assert dev.tx_drain(0, timeout=0.1) == 0
    c = r.world.counters()["p0"]
    # IMIX: one flow in 12 sends 1514-byte frames, all dropped at the MAC; the 60- and 590-byte ones arrive
    assert (c.generated, c.rx_oversize, c.rx_delivered, c.rx_missed) == (1200, 100, 1100, 0)
    assert (c.sink_received, c.sink_corrupt, c.sink_reordered, c.dma_faults) == (1100, 0, 0, 0)
    port.latch_stats()
    assert dev.read_stats().rx_too_long == 100


def test_runts_are_dropped_by_the_nic_and_counted_in_ruc(rig):
    r = rig(ports=[SimPortConfig("p0", generator=GeneratorConfig(profile="runt", packet_size=42, count=500))])
    dev = r.open("p0")
    port = r.world.ports["p0"]
    # from the cable: shorter than 64 bytes with FCS (60 without) is a runt; 60 is the smallest good frame
    frames = [bytes([1]) * 14, bytes([2]) * 59, bytes([3]) * 60, bytes([4]) * 42, bytes([5]) * 61]
    assert port.receive(PacketBatch.from_frames(frames)) == 2
    out = np.zeros(64, np.uint32)
    assert dev.rx_batch(0, out) == 2
    assert [bytes(r.bufs.packet(int(i))) for i in out[:2]] == [frames[2], frames[4]]
    # from the generator (the compiled path stamps straight into the buffers): none reaches a descriptor
    r.world.start_traffic()
    for _ in range(50):
        r.world.step()
        assert dev.rx_batch(0, out) == 0
    c = r.world.counters()["p0"]
    assert (c.generated, c.rx_undersize, c.rx_delivered, c.rx_missed, c.dma_faults) == (500, 503, 2, 0, 0)
    port.latch_stats()
    stats = dev.read_stats()
    assert (stats.rx_undersize, stats.rx_packets, stats.rx_too_long, stats.rx_dropped) == (503, 2, 0, 0)


def test_bad_specs_and_arenas_are_refused(rig, make_arena):
    r = rig()
    root = str(r.world.sysfs_root)
    spec = r.spec("p0")
    spec.rx_ring_size = 1000
    with pytest.raises(DeviceError, match="rx_ring_size must be a power of two from 8 to 4096, got 1000"):
        IxgbeDevice.open(spec, r.arena, r.bufs, [r.pools[0]], sysfs_root=root)
    with pytest.raises(DeviceError, match="1 RX queues need 1 mempools, got 2"):
        IxgbeDevice.open(r.spec("p0"), r.arena, r.bufs, r.pools[:1] * 2, sysfs_root=root)
    shm = make_arena(1 << 20, hugepages_mode="never")
    real = r.spec("p0")
    real.driver = "ixgbe"
    with pytest.raises(DeviceError, match=f"the device arena {shm.name} is not on hugepages"):
        IxgbeDevice.open(real, shm, r.bufs, [r.pools[0]], sysfs_root=root)
    with pytest.raises(DeviceError, match="has no region 'ixgbe.p0.rxq0.desc': open the port"):
        IxgbeDevice.attach(r.spec("p0"), shm, r.bufs, None, sysfs_root=root)


def test_tx_refuses_bad_lengths_and_keeps_one_slot_free(rig):
    r = rig(ring=16)
    dev = r.open("p0")
    idx = r.packets(20, b"\x05")
    r.bufs.length[idx[3]] = 0
    with pytest.raises(DeviceError, match=f"buffer {int(idx[3])} has length 0; a packet must be 1..1984 bytes"):
        dev.tx_batch(0, idx)
    r.bufs.length[idx[3]] = 60
    assert dev.tx_batch(0, idx) == 15                                 # 16 entries, one stays free
    assert dev.tx_batch(0, idx[15:]) == 0
    r.world.step()
    free_before = r.pools[0].available()
    r.bufs.length[idx[16]] = 5000
    with pytest.raises(DeviceError, match=f"buffer {int(idx[16])} has length 5000"):
        dev.tx_batch(0, idx[15:])
    assert r.pools[0].available() == free_before + 8                  # what was cleaned still went home
    r.bufs.length[idx[16]] = 60
    assert dev.tx_batch(0, idx[15:]) == 5                             # cleaned 8 (half the ring), posted 5


def test_rx_refuses_a_frame_without_eop(rig):
    r = rig()
    dev = r.open("p0")
    r.world.ports["p0"].receive(PacketBatch.from_frames([b"\x01" * 60] * 3))
    status = r.arena.view(r.arena.region("ixgbe.p0.rxq0.desc"), R.RX_DESC_WB_DTYPE)["status_error"]
    status[1] = R.RXD_STAT_DD                                         # DD without EOP
    out = np.zeros(8, np.uint32)
    with pytest.raises(DeviceError, match="p0 RX queue 0: descriptor 1 holds a frame without EOP"):
        dev.rx_batch(0, out)


def test_tx_done_homing_sends_buffers_home_to_each_pool(rig):
    r = rig(ports=[SimPortConfig("p0"), SimPortConfig("p1")], ring=64)
    dev = r.open("p0")                                                 # tx_done: a Homing of both pools
    r.open("p1")
    mine, theirs = r.pools[0].alloc_exact(20), r.pools[1].alloc_exact(12)
    mixed = np.empty(32, np.uint32)
    mixed[0::2][:16], mixed[1::2][:16] = mine[:16], np.concatenate((theirs, mine[16:]))
    for i in mixed:
        r.bufs.write_packet(int(i), b"\x02" * 60)
    assert dev.tx_batch(0, mixed) == 32
    r.world.step()
    assert dev.tx_drain(0, timeout=0.01) == 0
    assert r.pools[0].available() == POOL - 64 and r.pools[1].available() == POOL - 64


def test_the_queue_state_shows_buffers_posted_and_buffers_cleaned_but_not_yet_home(rig):
    # A TX stage that dies after the driver posted a batch and before it counted it, or between the clean and
    # handing the buffers home, leaves the supervisor to read from the shared queue state what it did.
    r = rig(ring=64)
    dev = r.open("p0")
    first = r.packets(32, b"\x02")
    assert dev.tx_posted(0) == 0
    assert dev.tx_batch(0, first) == 32
    r.world.step()                                          # the NIC sent them: DD on every descriptor
    assert dev.tx_sent_in_hand(0) == 0 and dev.tx_posted(0) == 32
    txq = dev._tx[0]
    second = r.packets(8, b"\x03")
    free_before = r.pools[0].available()
    assert txq.burst(second) == (8, 32)                     # the driver's step without the hand-back after it
    assert sorted(txq.freed[:32].tolist()) == sorted(first.tolist())
    assert dev.tx_sent_in_hand(0) == 32 and r.pools[0].available() == free_before
    assert dev.tx_posted(0) == 40
    dev._hand_back(txq, 32)
    assert dev.tx_sent_in_hand(0) == 0 and r.pools[0].available() == free_before + 32


@pytest.mark.skipif(not ixgbe_jit.AVAILABLE, reason="numba is not installed")
def test_both_hot_paths_leave_identical_rings(make_arena):
    """The same traffic through a numpy port and a numba port: same descriptors, buffers and state."""
    arena = make_arena(48 << 20)
    r = Rig(arena, [SimPortConfig("p0"), SimPortConfig("p1")], ring=64)
    try:
        devs = [r.open("p0", hot_path="numpy"), r.open("p1", hot_path="numba")]
        rng = np.random.default_rng(5)
        out = np.zeros(48, np.uint32)
        for _ in range(40):
            frames = random_frames(rng, int(rng.integers(1, 48)), 60, 200)
            for name, dev in zip(("p0", "p1"), devs, strict=True):
                pool = r.pools[r.world.names.index(name)]
                r.world.ports[name].receive(PacketBatch.from_frames(frames))
                n = dev.rx_batch(0, out)
                even = out[:n][::2].copy()
                sent = dev.tx_batch(0, even)
                pool.free(np.concatenate((out[:n][1::2], even[sent:])))   # odd ones and what TX refused
            r.world.step()
        rings = {}
        for name in ("p0", "p1"):
            pool_first = r.pools[r.world.names.index(name)].first
            rings[name] = [r.arena.view(r.arena.region(f"ixgbe.{name}.{q}.{part}")).copy()
                           for q in ("rxq0", "txq0") for part in ("state", "bufs")]
            rings[name][1] = rings[name][1].view(np.uint32) - pool_first   # buffer indices relative to the pool
            rings[name][3] = rings[name][3].view(np.uint32) - pool_first
        for a, b in zip(rings["p0"], rings["p1"], strict=True):
            assert (a == b).all()
        assert r.pools[0].available() == r.pools[1].available()
    finally:
        r.close()


def test_hot_path_choice(monkeypatch):
    from ixypipe.nic.device import choose_hot_path as choose

    def choose_hot_path(spec, hot_path):
        return choose(spec, hot_path, ixgbe_jit.AVAILABLE)

    spec = PortSpec("p0", "sim", options={"hot_path": "numpy"})
    assert choose_hot_path(spec, None) is False
    if ixgbe_jit.AVAILABLE:
        assert choose_hot_path(spec, "numba") is True
        assert choose_hot_path(PortSpec("p0", "sim"), None) is True         # auto takes numba
    with pytest.raises(DeviceError, match="hot_path must be one of auto, numpy, numba, got 'cuda'"):
        choose_hot_path(spec, "cuda")
    monkeypatch.setattr(ixgbe_jit, "AVAILABLE", False)
    assert choose_hot_path(PortSpec("p0", "sim"), None) is False            # auto falls back to numpy
    with pytest.raises(DeviceError, match=r"hot_path numba needs the numba package \(pip install numba\)"):
        choose_hot_path(spec, "numba")


def test_tx_refuses_an_index_outside_the_buffers(rig):
    r = rig(ring=16)
    dev = r.open("p0")
    idx = r.packets(3, b"\x05")
    bad = np.array([idx[0], r.bufs.count + 7, idx[1]], np.uint32)
    with pytest.raises(DeviceError, match=f"p0 TX queue 0: buffer index {r.bufs.count + 7} is out of range "
                                          f"\\(the arena has {r.bufs.count} packet buffers\\)"):
        dev.tx_batch(0, bad)
    assert dev.tx_pending(0) == 0                                     # nothing was posted
    assert dev.tx_batch(0, idx) == 3
