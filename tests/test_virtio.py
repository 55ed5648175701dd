"""The virtio driver against the software virtio-net device, stepped in-process (sleep = world.step).

Every test runs on both transports (legacy, modern) and both hot paths of the driver and the device (the
numpy references and the numba kernels)."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import virtio_jit
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.device import DeviceError, DeviceStats, LinkState, PortSpec
from ixypipe.nic.virtio import VirtioDevice
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.world import SimPortConfig, SimWorld

POOL = 2048
RING = 256


class Rig:
    """An arena, packet buffers, a mempool per port and a SimWorld of virtio ports; cleans up everything."""

    def __init__(self, arena, ports: list[SimPortConfig], hot_path: str):
        self.arena = arena
        self.hot_path = hot_path
        self.bufs = PacketBuffers.create(arena, POOL * len(ports))
        self.pools = [Mempool.create(arena, self.bufs, f"pool{i}", i * POOL, POOL, i) for i in range(len(ports))]
        self.home = Homing.to_pools(self.bufs, self.pools)
        self.world = SimWorld(ports, arena, hot_path=hot_path)
        self.devices: list[VirtioDevice] = []

    def spec(self, name: str, **options) -> PortSpec:
        return PortSpec(name, "sim", self.world.addresses[name], rx_ring_size=RING, tx_ring_size=RING,
                        options={"hot_path": self.hot_path, **options})

    def open(self, name: str, **options) -> VirtioDevice:
        i = self.world.names.index(name)
        dev = VirtioDevice.open(self.spec(name, **options), self.arena, self.bufs, [self.pools[i]], tx_done=self.home,
                                sysfs_root=str(self.world.sysfs_root), sleep=lambda s: self.world.step())
        self.devices.append(dev)
        return dev

    def packets(self, frames: list[bytes], pool: int = 0) -> np.ndarray:
        idx = self.pools[pool].alloc_exact(len(frames))
        for i, f in zip(idx, frames, strict=True):
            self.bufs.write_packet(int(i), f)
        return idx

    def close(self) -> None:
        for dev in self.devices:
            dev.close()
        self.world.close()


NO_NUMBA = pytest.mark.skipif(not virtio_jit.AVAILABLE, reason="numba is not installed (the compiled hot path is "
                                                                "optional)")
VARIANTS = [pytest.param((t, h), id=f"{t}-{h}", marks=[NO_NUMBA] if h == "numba" else [])
            for t in ("legacy", "modern") for h in ("numpy", "numba")]


@pytest.fixture(params=VARIANTS)
def rig(make_arena, request):
    transport, hot_path = request.param
    made = []

    def build(ports=None) -> Rig:
        ports = ports or [SimPortConfig("p0", device="virtio", transport=transport)]
        for p in ports:
            p.transport = transport
        r = Rig(make_arena(48 << 20), ports, hot_path)
        made.append(r)
        return r

    yield build
    for r in made:
        r.close()


def random_frames(rng, n, lo=60, hi=1514) -> list[bytes]:
    return [rng.integers(0, 256, int(rng.integers(lo, hi + 1)), dtype=np.uint8).tobytes() for _ in range(n)]


def receive_all(r: Rig, dev: VirtioDevice, want: int) -> list[bytes]:
    out = np.zeros(64, np.uint32)
    got: list[bytes] = []
    for _ in range(1000):
        n = dev.rx_batch(0, out)
        got += [r.bufs.packet(int(i)).tobytes() for i in out[:n]]
        r.pools[0].free(out[:n].copy())
        if len(got) >= want:
            break
        r.world.step()
    return got


def test_init_negotiates_features_and_reads_mac_and_link(rig):
    r = rig()
    dev = r.open("p0")
    port = r.world.ports["p0"]
    layout = V.F_VERSION_1 if port.transport == "modern" else V.F_ANY_LAYOUT
    assert dev.features == V.bit(layout) | V.bit(V.F_MAC) | V.bit(V.F_STATUS) | V.bit(V.F_MRG_RXBUF)
    assert port.features == dev.features
    assert dev.mac == port.mac
    assert dev.link_state() == LinkState(True, 10000)
    assert port.queues[0].live and port.queues[1].live
    assert not port.faults


def test_received_frames_arrive_byte_exact(rig):
    r = rig()
    dev = r.open("p0")
    frames = random_frames(np.random.default_rng(1), 100)
    assert r.world.ports["p0"].receive(PacketBatch.from_frames(frames)) == 100
    assert receive_all(r, dev, 100) == frames
    stats = dev.read_stats()
    assert (stats.rx_packets, stats.rx_bytes) == (100, sum(map(len, frames)))


def test_transmitted_frames_reach_the_wire_byte_exact(rig):
    r = rig()
    dev = r.open("p0")
    wire: list[bytes] = []
    r.world.ports["p0"].wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
    frames = random_frames(np.random.default_rng(2), 100)
    idx = r.packets(frames)
    assert dev.tx_batch(0, idx) == 100
    r.world.step()
    assert wire == frames
    assert dev.tx_drain(0, timeout=5) == 0
    assert r.pools[0].available() == POOL - RING
    assert dev.read_stats() == DeviceStats(tx_packets=100, tx_bytes=sum(map(len, frames)))


def test_a_long_frame_after_short_ones_goes_out_byte_exact_and_in_order(rig):
    """The compiled TX walk gathers into rows as wide as the widest frame so far (128 bytes at first): a longer
    frame makes it stop, widen the rows and go on (no fault), so one batch of mixed lengths leaves in order."""
    r = rig()
    dev = r.open("p0")
    wire: list[bytes] = []
    r.world.ports["p0"].wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in (60, 127, 128, 129, 1514, 60, 700, 1514)]
    assert dev.tx_batch(0, r.packets(frames)) == len(frames)
    r.world.step()
    assert wire == frames
    assert not r.world.faults


def test_without_mrg_rxbuf_the_legacy_header_is_ten_bytes(rig):
    r = rig()
    dev = r.open("p0", mrg_rxbuf=False)
    port = r.world.ports["p0"]
    assert not dev.features & V.bit(V.F_MRG_RXBUF)
    hdr = 10 if port.transport == "legacy" else 12           # VERSION_1 always has num_buffers
    assert int(dev._rx[0].state[V.QSTATE_HDR_LEN]) == hdr
    frames = random_frames(np.random.default_rng(3), 10)
    port.receive(PacketBatch.from_frames(frames))
    assert receive_all(r, dev, 10) == frames


# ---- the device's strict faults: each stops the queue and names what was wrong ----------------------------

def tx_with(r: Rig, dev: VirtioDevice, n: int = 3):
    """Post ``n`` frames without letting the device see them yet; returns (queue, wire, frames)."""
    wire: list[bytes] = []
    r.world.ports["p0"].wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
    frames = [bytes([j + 1]) * 60 for j in range(n)]
    assert dev.tx_batch(0, r.packets(frames)) == n
    return dev._tx[0], wire, frames


def only_fault(r: Rig) -> str:
    faults = r.world.faults
    assert len(faults) == 1, faults
    return str(faults[0])


def check_tx_stopped_after_first(r: Rig, txq, wire, frames) -> None:
    """The frame before the bad entry went out, nothing after it; the queue is stopped."""
    assert wire == frames[:1]
    assert int(txq.used_hdr[1]) == 1
    port = r.world.ports["p0"]
    assert not port.queues[1].live
    r.world.step()
    assert wire == frames[:1]


@pytest.mark.parametrize("corrupt, message", [
    (lambda q, d: q.desc.__setitem__((d, 0), 1 << 45),
     "tx queue 1 descriptor 1 address 0x200000000000: buffer [0x200000000000, +72) of descriptor 1 is outside "
     "registered memory"),
    (lambda q, d: q.desc.__setitem__((d, 1), q.desc[d, 1] | np.uint64((V.DESC_F_NEXT << 32) | (d << 48))),
     "tx queue 1 descriptor 1 address 0x0: the descriptor chain from 1 loops (longer than the 256-entry ring)"),
    (lambda q, d: q.avail.__setitem__(2 + 1, 300),
     "tx queue 1 descriptor 300 address 0x0: available entry 1 names descriptor 300, past the 256-entry ring"),
    (lambda q, d: q.desc.__setitem__((d, 1), q.desc[d, 1] | np.uint64((V.DESC_F_NEXT << 32) | (999 << 48))),
     "descriptor 1's next is 999, past the 256-entry ring"),
    (lambda q, d: q.desc.__setitem__((d, 1), q.desc[d, 1] | np.uint64(V.DESC_F_INDIRECT << 32)),
     "descriptor 1 is INDIRECT, but RING_INDIRECT_DESC was not negotiated"),
    (lambda q, d: q.desc.__setitem__((d, 1), q.desc[d, 1] | np.uint64(V.DESC_F_WRITE << 32)),
     "descriptor 1 is device-writable (WRITE) in a transmit chain"),
    (lambda q, d: q.desc.__setitem__((d, 1), np.uint64(5)),
     "the chain at 1 carries a -7-byte frame after the header; a frame is 1..9018 bytes"),
], ids=["outside", "loop", "head_past_ring", "next_past_ring", "indirect", "writable", "short"])
def test_tx_faults_stop_the_queue_and_name_the_descriptor(rig, corrupt, message):
    r = rig()
    dev = r.open("p0")
    txq, wire, frames = tx_with(r, dev)
    corrupt(txq, int(txq.avail[2 + 1]))
    r.world.step()
    assert message in only_fault(r)
    assert only_fault(r).startswith("port p0 tx queue 1 ")
    check_tx_stopped_after_first(r, txq, wire, frames)


@pytest.mark.parametrize("byte, value, message", [
    (V.NET_HDR_FLAGS, V.NET_HDR_F_NEEDS_CSUM,
     "the virtio_net_hdr of the chain at 1 asks for NEEDS_CSUM, but CSUM was not negotiated"),
    (V.NET_HDR_GSO_TYPE, 1, "the virtio_net_hdr of the chain at 1 asks for segmentation (gso_type 1), but no "
                            "HOST_TSO/UFO feature was negotiated"),
], ids=["csum", "gso"])
def test_tx_header_asking_for_offloads_not_negotiated_is_a_fault(rig, byte, value, message):
    r = rig()
    dev = r.open("p0")
    txq, wire, frames = tx_with(r, dev)
    b = int(txq.slot_buf[int(txq.avail[2 + 1])])
    hdr_len = int(txq.state[V.QSTATE_HDR_LEN])
    r.bufs.raw[b, 64 - hdr_len + byte] = value          # the header the driver zeroed, as a buggy driver sets it
    r.world.step()
    assert message in only_fault(r)
    check_tx_stopped_after_first(r, txq, wire, frames)


def test_avail_index_running_ahead_of_the_ring_is_a_fault(rig):
    r = rig()
    dev = r.open("p0")
    txq = dev._tx[0]
    txq.avail[1] = RING + 1
    r.world.step()
    assert only_fault(r).startswith("port p0 tx queue 1 address 0x")
    assert f"avail.idx {RING + 1} is {RING + 1} entries ahead of the device's 0: more than the 256-entry ring" \
        in only_fault(r)


@pytest.mark.parametrize("what", ["readable", "too_small"])
def test_rx_faults_stop_the_queue(rig, what):
    r = rig()
    dev = r.open("p0")
    rxq = dev._rx[0]
    port = r.world.ports["p0"]
    d = int(rxq.avail[2 + 1])
    if what == "readable":
        rxq.desc[d, 1] = rxq.desc[d, 1] & ~np.uint64(V.DESC_F_WRITE << 32)
        message = f"rx queue 0 descriptor {d} address {int(rxq.desc[d, 0]):#x}: descriptor {d} is device-readable " \
                  "(no WRITE) in a receive chain"
    else:
        rxq.desc[d, 1] = (rxq.desc[d, 1] & ~np.uint64(0xFFFFFFFF)) | np.uint64(40)
        message = f"rx queue 0 descriptor {d} address 0x0: the chain at {d} holds 40 bytes, too few for the " \
                  "12-byte header and a 60-byte frame (frames are not split over buffers)"
    frames = [bytes([j + 1]) * 60 for j in range(3)]
    assert port.receive(PacketBatch.from_frames(frames)) == 1
    assert message in only_fault(r)
    assert port.rx_missed == 2 and not port.queues[0].live
    assert receive_all(r, dev, 1) == frames[:1]


def test_features_the_device_does_not_offer_are_refused(rig, monkeypatch):
    from ixypipe.nic import virtio
    r = rig()
    real = virtio.negotiate_features

    def greedy(t, name, mrg_rxbuf, pairs):
        features = real(t, name, mrg_rxbuf, pairs) | V.bit(V.F_CSUM)
        t.set_driver_features(features)
        return features

    monkeypatch.setattr(virtio, "negotiate_features", greedy)
    with pytest.raises(DeviceError) as info:
        r.open("p0")
    if r.world.ports["p0"].transport == "modern":
        assert "the device refused the features" in str(info.value) and "CSUM" in str(info.value)
    else:
        assert "the device reports status 0x47 (FAILED or NEEDS_RESET) after DRIVER_OK" in str(info.value)
    assert only_fault(r) == "port p0 config: the driver accepted features the device does not offer: CSUM"
    assert r.pools[0].available() == POOL           # the failed open gave its RX buffers back


def test_a_ring_outside_the_drivers_memory_is_a_fault(rig, monkeypatch):
    from ixypipe.nic import virtio
    r = rig()
    real = virtio.setup_queue

    def misplaced(t, name, index, q):
        if index == 1:
            q.dma_addr += 1 << 40
        real(t, name, index, q)

    monkeypatch.setattr(virtio, "setup_queue", misplaced)
    dev = r.open("p0")
    txq = dev._tx[0]
    assert only_fault(r) == (f"port p0 tx queue 1 address {txq.dma_addr:#x}: the descriptor table at "
                             f"{txq.dma_addr:#x} is outside registered memory")
    assert not r.world.ports["p0"].queues[1].live and r.world.ports["p0"].queues[0].live
    dev.close()


# ---- the driver's bookkeeping --------------------------------------------------------------------------

def test_seventy_thousand_packets_wrap_the_u16_indices_and_lose_no_buffer(rig):
    r = rig([SimPortConfig("p0", device="virtio"), SimPortConfig("p1", device="virtio", cable_to="p0")])
    tx, rx = r.open("p0"), r.open("p1")
    total, sent, got = 70_000, 0, 0
    out = np.zeros(128, np.uint32)
    seen = np.zeros(total, bool)
    while got < total:
        if sent < total:
            idx = r.pools[0].alloc(min(128, total - sent))
            r.bufs.length[idx] = 64
            r.bufs.data[idx, :4] = (sent + np.arange(len(idx), dtype="<u4")).view(np.uint8).reshape(-1, 4)
            posted = tx.tx_batch(0, idx)
            r.pools[0].free(idx[posted:])
            sent += posted
        r.world.step()
        n = rx.rx_batch(0, out)
        seq = r.bufs.data[out[:n], :4].copy().view("<u4").ravel()
        assert (seq == got + np.arange(n)).all()          # in order, none lost, none twice
        seen[seq] = True
        r.pools[1].free(out[:n].copy())
        got += n
    assert seen.all()
    assert tx.tx_drain(0, timeout=5) == 0
    assert int(tx._tx[0].avail[1]) == total % 65536 and int(rx._rx[0].used_hdr[1]) == total % 65536
    assert r.pools[0].available() == POOL - RING and r.pools[1].available() == POOL - RING
    assert tx.read_stats().tx_packets == rx.read_stats().rx_packets == total
    assert r.world.faults == []


def test_tx_refuses_bad_buffers_before_posting_any(rig):
    r = rig()
    dev = r.open("p0")
    idx = r.packets([b"x" * 60] * 3)
    r.bufs.length[idx[1]] = 0
    with pytest.raises(DeviceError, match=rf"p0 TX queue 0: buffer {idx[1]} has length 0; a packet must be "
                                          r"1\.\.1984 bytes"):
        dev.tx_batch(0, idx)
    with pytest.raises(DeviceError, match=r"p0 TX queue 0: buffer index 99999 is out of range \(the arena has "
                                          r"2048 packet buffers\)"):
        dev.tx_batch(0, np.array([99999], np.uint32))
    assert dev.tx_pending(0) == 0 and int(dev._tx[0].avail[1]) == 0


def test_a_full_tx_queue_takes_what_fits_and_the_rest_stays_the_callers(rig):
    r = rig()
    dev = r.open("p0")
    idx = r.packets([b"y" * 60] * (RING + 10))
    assert dev.tx_batch(0, idx) == RING
    assert dev.tx_pending(0) == RING and dev.tx_posted(0) == RING
    r.world.step()
    assert dev.tx_batch(0, idx[RING:]) == 10           # the device finished the first ring: cleaned, room again
    assert dev.tx_drain(0, timeout=5) == 0


def test_rx_waits_when_the_mempool_is_empty(rig):
    r = rig()
    dev = r.open("p0")
    port = r.world.ports["p0"]
    taken = r.pools[0].alloc(r.pools[0].available())
    frames = [bytes([i]) * 60 for i in range(5)]
    assert port.receive(PacketBatch.from_frames(frames)) == 5
    out = np.zeros(8, np.uint32)
    assert dev.rx_batch(0, out) == 0                   # no fresh buffer to swap in: the frames wait
    r.pools[0].free(taken)
    assert receive_all(r, dev, 5) == frames


def test_attach_takes_over_the_queues(rig):
    r = rig()
    opened = r.open("p0")
    port = r.world.ports["p0"]
    spec = r.spec("p0")
    stage = VirtioDevice.attach(spec, r.arena, r.bufs, {0: r.pools[0]}, tx_done=r.home,
                                sysfs_root=str(r.world.sysfs_root))
    try:
        frames = random_frames(np.random.default_rng(4), 20)
        port.receive(PacketBatch.from_frames(frames))
        assert receive_all(r, stage, 20) == frames
        assert stage.mac == opened.mac and stage.read_stats().rx_packets == 20
        with pytest.raises(DeviceError, match="resource busy"):
            VirtioDevice.open(spec, r.arena, r.bufs, [r.pools[0]], sysfs_root=str(r.world.sysfs_root))
    finally:
        stage.close()


def test_a_port_without_tx_done_does_not_transmit(rig):
    r = rig()
    i = 0
    dev = VirtioDevice.open(r.spec("p0"), r.arena, r.bufs, [r.pools[i]], sysfs_root=str(r.world.sysfs_root),
                            sleep=lambda s: r.world.step())
    r.devices.append(dev)
    with pytest.raises(DeviceError, match="opened without tx_done"):
        dev.tx_batch(0, r.packets([b"z" * 60]))


def test_reset_stats_starts_the_counts_again(rig):
    r = rig()
    dev = r.open("p0")
    r.world.ports["p0"].receive(PacketBatch.from_frames([b"a" * 100] * 4))
    assert len(receive_all(r, dev, 4)) == 4
    assert dev.read_stats() == DeviceStats(rx_packets=4, rx_bytes=400)
    dev.reset_stats()
    assert dev.read_stats() == DeviceStats()


def test_closing_the_port_resets_the_device(rig):
    r = rig()
    dev = r.open("p0")
    port = r.world.ports["p0"]
    r.devices.remove(dev)
    dev.close()
    r.world.step()
    assert not port.queues[0].live and not port.queues[1].live
    assert port.receive(PacketBatch.from_frames([b"b" * 60])) == 0 and port.rx_missed == 1


# ---- several queue pairs (MQ) ------------------------------------------------------------------------------

def test_queue_pairs_spread_flows_over_rx_queues_and_each_tx_queue_transmits(rig):
    from ixypipe.sim.traffic import Generator

    r = rig()
    transport = r.world.ports["p0"].transport
    r.close()
    pairs = 4
    arena = r.arena
    bufs = PacketBuffers.create(arena, POOL * pairs, name="mq")
    pools = [Mempool.create(arena, bufs, f"mq{i}", i * POOL, POOL, i) for i in range(pairs)]
    world = SimWorld([SimPortConfig("p0", device="virtio", transport=transport, queue_pairs=pairs)], arena,
                     hot_path=r.hot_path)
    spec = PortSpec("p0", "sim", world.addresses["p0"], rx_queues=pairs, tx_queues=pairs, rx_ring_size=RING,
                    tx_ring_size=RING, options={"hot_path": r.hot_path})
    dev = VirtioDevice.open(spec, arena, bufs, pools, tx_done=Homing.to_pools(bufs, pools),
                            sysfs_root=str(world.sysfs_root), sleep=lambda s: world.step())
    try:
        port = world.ports["p0"]
        assert dev.features & V.bit(V.F_MQ) and dev.features & V.bit(V.F_CTRL_VQ)
        assert port.pairs == pairs and all(q.live for q in port.queues)
        gen = Generator(0, 60, 16, 0, 0, b"\x02" * 6, port.mac)
        batch = gen.make(400)
        flows = (np.arange(400) % 16)
        assert port.receive(batch) == 400
        out = np.zeros(512, np.uint32)
        where = {}
        frames = {}
        for q in range(pairs):
            n = dev.rx_batch(q, out)
            for i in out[:n]:
                f = bufs.packet(int(i)).tobytes()
                frames[f] = q
            pools[q].free(out[:n].copy())
        assert len(frames) == 400                                    # every frame arrived, each once
        for k in range(400):
            q = frames[batch.frame(k)]
            assert where.setdefault(int(flows[k]), q) == q           # a flow always reaches the same queue
        assert sorted(set(where.values())) == list(range(pairs))     # and the flows use every queue
        wire: list[bytes] = []
        port.wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
        for q in range(pairs):
            idx = pools[q].alloc(2)
            for j, i in enumerate(idx):
                bufs.write_packet(int(i), bytes([q, j]) * 30)
            assert dev.tx_batch(q, idx) == 2
        world.step()
        assert sorted(wire) == sorted(bytes([q, j]) * 30 for q in range(pairs) for j in range(2))
        assert world.faults == []
    finally:
        dev.close()
        world.close()


def test_a_queue_pair_beyond_pair_zero_without_mq_is_a_fault(rig, monkeypatch):
    from ixypipe.nic import virtio
    r = rig()
    transport = r.world.ports["p0"].transport
    r.close()
    world = SimWorld([SimPortConfig("p0", device="virtio", transport=transport, queue_pairs=2)], r.arena,
                     hot_path=r.hot_path)
    r.world = world
    real = virtio.driver_ok
    extra = []

    def with_queue_two(t, name):           # a buggy driver: one pair negotiated, a second pair's RX queue enabled
        q = virtio.VirtioQueue(r.arena, "extra", RING, True, tx=False)
        extra.append(q)
        virtio.setup_queue(t, name, 2, q)
        real(t, name)

    monkeypatch.setattr(virtio, "driver_ok", with_queue_two)
    dev = r.open("p0")
    assert not dev.features & V.bit(V.F_MQ)
    assert only_fault(r) == (f"port p0 rx queue 2 address {extra[0].dma_addr:#x}: virtqueue 2 is enabled, but MQ "
                             "was not negotiated (without it only queues 0 and 1, and the control queue 2, exist)")
    assert world.ports["p0"].queues[0].live and not world.ports["p0"].queues[2].live


def test_a_stage_that_attached_notifies_when_the_device_asks_for_it(rig):
    r = rig()
    opened = r.open("p0")
    port = r.world.ports["p0"]
    stage = VirtioDevice.attach(r.spec("p0"), r.arena, r.bufs, None, tx_done=r.home,
                                sysfs_root=str(r.world.sysfs_root))
    try:
        bar = port.bar
        where = (V.LEGACY_QUEUE_NOTIFY if port.transport == "legacy"
                 else V.SIM_NOTIFY_OFF + 1 * V.SIM_NOTIFY_MULTIPLIER)      # the sim's queue_notify_off is the index
        bar[where:where + 2] = 0xFF
        assert stage.tx_batch(0, r.packets([b"n" * 60])) == 1
        assert bar[where:where + 2].view("<u2")[0] == 0xFFFF          # NO_NOTIFY set: no notification
        port.queues[1].used_hdr[0] = 0                                 # the device wants notifications now
        assert stage.tx_batch(0, r.packets([b"m" * 60])) == 1
        assert bar[where:where + 2].view("<u2")[0] == 1                # TX queue 1 notified
    finally:
        stage.close()
    assert opened.tx_drain(0, timeout=5) == 0                          # both frames went out and home
    assert r.pools[0].available() == POOL - RING


def test_a_debug_pool_sees_every_buffer_the_rx_kernel_pops(rig):
    # the kernel pops fresh buffers off the pool's stack itself; a debug pool must learn of them, or it calls
    # their free, once they come back around the ring, a double free
    r = rig()
    r.pools[0] = Mempool.attach(r.arena, r.bufs, "pool0", debug=True)
    dev = r.open("p0")
    frames = [bytes([k % 251]) * 60 for k in range(3 * RING)]
    for k in range(0, len(frames), 100):
        r.world.ports["p0"].receive(PacketBatch.from_frames(frames[k:k + 100]))
        assert receive_all(r, dev, len(frames[k:k + 100])) == frames[k:k + 100]    # each batch freed once
    assert r.pools[0].available() == POOL - RING
    # the pool counts what sits in the descriptors as taken: freeing one (as the supervisor's reclaim of a dead
    # RX stage does) is no double free
    r.pools[0].free(dev.rx_held(0))


# ---- descriptor chains (a foreign driver may split header and frame): gathered and scattered exactly ------------

def test_a_tx_chain_is_gathered_header_first_then_the_frame(rig):
    r = rig()
    dev = r.open("p0")
    wire: list[bytes] = []
    r.world.ports["p0"].wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
    txq = dev._tx[0]
    hdr = int(txq.state[V.QSTATE_HDR_LEN])
    frame = bytes(range(100))
    b = r.pools[0].alloc_exact(3)
    r.bufs.data[b[0], :hdr] = 0                              # the header alone
    r.bufs.data[b[1], :30] = np.frombuffer(frame[:30], np.uint8)
    r.bufs.data[b[2], :70] = np.frombuffer(frame[30:], np.uint8)
    nxt = np.uint64(V.DESC_F_NEXT << V.DESC_FLAGS_SHIFT)
    txq.desc[5] = (r.bufs.data_phys[b[0]], np.uint64(hdr) | nxt | np.uint64(9 << V.DESC_NEXT_SHIFT))
    txq.desc[9] = (r.bufs.data_phys[b[1]], np.uint64(30) | nxt | np.uint64(7 << V.DESC_NEXT_SHIFT))
    txq.desc[7] = (r.bufs.data_phys[b[2]], np.uint64(70))
    txq.avail[2] = 5
    txq.avail[1] = 1
    r.world.step()
    assert wire == [frame]
    assert txq.used_hdr[1] == 1 and tuple(txq.used_ring[0]) == (5, 0)
    assert r.world.faults == []


def test_an_rx_chain_is_filled_header_first_then_the_frame(rig):
    r = rig()
    dev = r.open("p0")
    rxq = dev._rx[0]
    hdr = int(rxq.state[V.QSTATE_HDR_LEN])
    nxt = np.uint64(V.DESC_F_NEXT << V.DESC_FLAGS_SHIFT)
    write = np.uint64(V.DESC_F_WRITE << V.DESC_FLAGS_SHIFT)
    bufs = [int(rxq.slot_buf[d]) for d in (0, 1, 2)]
    rxq.desc[0, 1] = np.uint64(20) | write | nxt | np.uint64(1 << V.DESC_NEXT_SHIFT)
    rxq.desc[1, 1] = np.uint64(20) | write | nxt | np.uint64(2 << V.DESC_NEXT_SHIFT)
    frame = bytes(range(100, 200))
    assert r.world.ports["p0"].receive(PacketBatch.from_frames([frame])) == 1
    assert rxq.used_hdr[1] == 1 and tuple(rxq.used_ring[0]) == (0, hdr + 100)
    image = b"".join(r.bufs.raw[bufs[k], 64 - hdr:64 - hdr + n].tobytes() for k, n in ((0, 20), (1, 20), (2, 100)))
    expect_hdr = bytes(hdr) if hdr == V.NET_HDR_LEN else bytes(10) + b"\x01\x00"     # num_buffers 1
    assert image[:hdr + 100] == expect_hdr + frame
    assert r.world.faults == []


# ---- the compiled stage loops' queue kernels (virtio_jit.rx_queue / tx_queue) and their kicks ----------------

@NO_NUMBA
@pytest.mark.parametrize("transport", ["legacy", "modern"])
def test_compiled_queue_kernels_move_frames_and_kick_a_device_that_asks(make_arena, transport):
    """What the compiled stage loops call: frames byte-exact both ways, the cleaned buffers in ``freed``, and
    once the device clears USED_F_NO_NOTIFY, a kick per batch through the transport's own register (the queue
    index in queue_notify of resource0, or a store to the modern notify structure)."""
    r = Rig(make_arena(48 << 20), [SimPortConfig("p0", device="virtio", transport=transport)], "numba")
    try:
        dev = r.open("p0")
        port = r.world.ports["p0"]
        rx_kernel, rx_record = dev.compiled_rx(0)
        tx_kernel, tx_record, freed, handing, slot = dev.compiled_tx(0)
        assert (rx_kernel, tx_kernel, handing[slot]) == (virtio_jit.rx_queue, virtio_jit.tx_queue, 0)
        wire: list[bytes] = []
        port.wire_out.append(lambda b: wire.extend(b.frame(i) for i in range(len(b))))
        frames = random_frames(np.random.default_rng(7), 40)
        idx = r.packets(frames)
        assert tx_kernel(tx_record, idx) == (40, 0)
        r.world.step()
        assert wire == frames
        assert tx_kernel(tx_record, idx[:0]) == (0, 40)           # the used entries come back, buffers in freed
        assert sorted(freed[:40].tolist()) == sorted(idx.tolist()) and handing[slot] == 40
        assert port.receive(PacketBatch.from_frames(frames[:30])) == 30
        out = np.zeros(32, np.uint32)
        assert rx_kernel(rx_record, out) == 30
        assert [r.bufs.packet(int(i)).tobytes() for i in out[:30]] == frames[:30]
        rxq, txq = dev._rx[0], dev._tx[0]
        assert rxq.kick[V.KICK_WANTED] == txq.kick[V.KICK_WANTED] == 0     # the device polls: NO_NOTIFY
        # a device that wants notifications: every batch kicks, through the register the transport names
        port.queues[0].used_hdr[0] = port.queues[1].used_hdr[0] = 0
        assert tx_kernel(tx_record, r.packets(frames[:5])) == (5, 0)
        assert txq.kick[V.KICK_WANTED] == 1
        if transport == "legacy":
            assert int(port.regs[V.LEGACY_QUEUE_NOTIFY:V.LEGACY_QUEUE_NOTIFY + 2].view("<u2")[0]) == 1
        else:
            notify = port.bar[V.SIM_NOTIFY_OFF:V.SIM_NOTIFY_OFF + 16].view("<u2")
            assert int(notify[V.SIM_NOTIFY_MULTIPLIER // 2]) == 1       # queue 1's cell: offset 1 x multiplier
        assert port.receive(PacketBatch.from_frames(frames[:3])) == 3
        assert rx_kernel(rx_record, out) == 3
        assert rxq.kick[V.KICK_WANTED] == 1
        assert not port.faults
    finally:
        r.close()


@NO_NUMBA
def test_compiled_kick_writes_one_to_an_eventfd_and_counts_what_it_cannot_send():
    """The vhost-user kick (KICK_EVENTFD) adds 1 to the eventfd per kick; KICK_NONE only counts; a device that
    sets USED_F_NO_NOTIFY gets nothing."""
    import os

    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        kick = np.zeros(V.KICK_WORDS, np.int64)
        kick[V.KICK_MODE], kick[V.KICK_FD], kick[V.KICK_ONE] = V.KICK_EVENTFD, fd, 1
        cell = np.zeros(1, np.uint16)
        used_hdr = np.zeros(2, np.uint16)
        virtio_jit._notify(used_hdr, kick, cell)
        virtio_jit._notify(used_hdr, kick, cell)
        assert os.eventfd_read(fd) == 2 and kick[V.KICK_WANTED] == 2
        used_hdr[0] = V.USED_F_NO_NOTIFY
        virtio_jit._notify(used_hdr, kick, cell)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
        kick[V.KICK_MODE] = V.KICK_NONE
        used_hdr[0] = 0
        virtio_jit._notify(used_hdr, kick, cell)
        assert kick[V.KICK_WANTED] == 3
        with pytest.raises(BlockingIOError):
            os.eventfd_read(fd)
    finally:
        os.close(fd)


@NO_NUMBA
def test_compiled_rx_reports_a_bad_used_entry_as_rx_batch_raises_it(make_arena):
    """The compiled loop's RUN_DEVICE path: rx_queue returns RX_ERROR without taking anything, and rx_batch
    (which the RX stage then calls) raises the driver's message."""
    r = Rig(make_arena(48 << 20), [SimPortConfig("p0", device="virtio", transport="modern")], "numba")
    try:
        dev = r.open("p0")
        rx_kernel, rx_record = dev.compiled_rx(0)
        rxq = dev._rx[0]
        rxq.used_ring[0] = (999, 72)              # as a broken device would publish it
        rxq.used_hdr[1] = 1
        out = np.zeros(32, np.uint32)
        assert rx_kernel(rx_record, out) == virtio_jit.RX_ERROR
        assert int(rxq.state[V.QSTATE_LAST_USED]) == 0 and rxq.kick[V.KICK_WANTED] == 0
        with pytest.raises(DeviceError, match=r"p0 RX queue 0: used entry 0 names descriptor 999, past the ring"):
            dev.rx_batch(0, out)
    finally:
        r.close()


@NO_NUMBA
def test_no_compiled_kernels_for_the_numpy_path_or_a_port_that_does_not_transmit(make_arena):
    r = Rig(make_arena(48 << 20), [SimPortConfig("p0", device="virtio", transport="legacy"),
                                   SimPortConfig("p1", device="virtio", transport="legacy")], "numpy")
    try:
        dev = r.open("p0")                        # the rig's hot_path: numpy
        assert dev.compiled_rx(0) is None and dev.compiled_tx(0) is None
        spec = r.spec("p1", hot_path="numba")
        quiet = VirtioDevice.open(spec, r.arena, r.bufs, [r.pools[1]], tx_done=None,
                                  sysfs_root=str(r.world.sysfs_root), sleep=lambda s: r.world.step())
        r.devices.append(quiet)
        assert quiet.compiled_tx(0) is None       # without tx_done it does not transmit (Device contract)
        assert quiet.compiled_rx(0)[0] is virtio_jit.rx_queue
    finally:
        r.close()
