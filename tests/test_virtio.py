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
from ixypipe.nic.device import DeviceStats, LinkState, PortSpec
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
