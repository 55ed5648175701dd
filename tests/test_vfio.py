"""The VFIO path (nic/vfio.py) against the stand-in kernel, and the software 82599's IOMMU mode.

The stand-in (tests/support/vfio_kernel.py) decodes the structs with its own
layouts from linux/vfio.h and answers as the kernel does; the model
translates every descriptor address through the MAP_DMA mappings.
"""

from __future__ import annotations

import errno
import os
import struct

import numpy as np
import pytest

from ixypipe.memory import arena as arena_mod
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import registers as R
from ixypipe.nic import vfio
from ixypipe.nic import vfio_abi as A
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.sim import iommu, sysfs
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig
from tests.support.vfio_kernel import StandInKernel

STAND_IN = "tests.support.vfio_kernel:StandInKernel"
ADDR = "0000:5e:00.0"
GROUP = sysfs.iommu_group_of(0)
POOL = 2048
NEVER = 1 << 62


@pytest.fixture
def tree(tmp_path):
    sysfs.create_device(tmp_path, ADDR, iommu_group=GROUP)
    return tmp_path


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setenv(vfio.KERNEL_ENV, STAND_IN)


def test_ioctl_numbers_and_struct_layouts_are_the_kernels():
    # _IO(';', 100 + n): type 0x3b in bits 8..15, no size, no direction
    assert (A.VFIO_GET_API_VERSION, A.VFIO_CHECK_EXTENSION, A.VFIO_SET_IOMMU) == (0x3B64, 0x3B65, 0x3B66)
    assert (A.VFIO_GROUP_GET_STATUS, A.VFIO_GROUP_SET_CONTAINER, A.VFIO_GROUP_GET_DEVICE_FD) == (0x3B67, 0x3B68, 0x3B6A)
    assert (A.VFIO_DEVICE_GET_INFO, A.VFIO_DEVICE_GET_REGION_INFO) == (0x3B6B, 0x3B6C)
    assert (A.VFIO_IOMMU_MAP_DMA, A.VFIO_IOMMU_UNMAP_DMA) == (0x3B71, 0x3B72)
    assert (A.VFIO_API_VERSION, A.VFIO_TYPE1_IOMMU) == (0, 1)
    assert (A.VFIO_PCI_BAR0_REGION_INDEX, A.VFIO_PCI_CONFIG_REGION_INDEX) == (0, 7)
    sizes = [d.itemsize for d in (A.GROUP_STATUS, A.DEVICE_INFO, A.REGION_INFO, A.DMA_MAP, A.DMA_UNMAP)]
    assert sizes == [8, 24, 32, 32, 24]
    raw = A.pack(A.DMA_MAP, flags=3, vaddr=0x1122334455667788, iova=0x10_0000, size=0x20_0000)
    assert bytes(raw) == struct.pack("<IIQQQ", 32, 3, 0x1122334455667788, 0x10_0000, 0x20_0000)
    raw = A.pack(A.REGION_INFO, index=7)
    assert bytes(raw) == struct.pack("<IIIIQQ", 32, 0, 7, 0, 0, 0)


def test_open_goes_through_the_kernels_steps_and_closes_in_reverse(tree, make_arena):
    k = StandInKernel()
    s = vfio.open_vfio(ADDR, tree, kernel=k)
    ioctls = [req for what, req in k.calls if what == "ioctl"]
    assert ioctls == [A.VFIO_GET_API_VERSION, A.VFIO_CHECK_EXTENSION, A.VFIO_GROUP_GET_STATUS,
                      A.VFIO_GROUP_SET_CONTAINER, A.VFIO_SET_IOMMU, A.VFIO_GROUP_GET_DEVICE_FD,
                      A.VFIO_DEVICE_GET_INFO, A.VFIO_DEVICE_GET_REGION_INFO, A.VFIO_DEVICE_GET_REGION_INFO]
    assert (s.group, s.config.offset, s.config.size) == (GROUP, 7 << 40, 256)
    d = sysfs.device_dir(tree, ADDR)
    (command,) = struct.unpack_from("<H", (d / "config").read_bytes(), R.PCI_CFG_COMMAND)
    assert command & R.PCI_COMMAND_BUS_MASTER              # set through the device fd's config region
    s.bar.write(R.RDT(0), 0x1234)                           # BAR0 through the device fd is resource0
    with open(d / "resource0", "rb") as f:
        f.seek(R.RDT(0))
        assert struct.unpack("<I", f.read(4))[0] == 0x1234

    a = make_arena(4 << 20, hugepages_mode="never")
    iova = s.map_buffer(a.buf)
    assert iova == a.buf.ctypes.data                        # IOVA = the virtual address, as ixy does
    table = iommu.table_path(tree, GROUP)
    assert [(m["iova"], m["size"], m["pid"]) for m in iommu.live_mappings(table)] == [
        (iova, a.buf.nbytes, os.getpid())]
    with pytest.raises(vfio.VfioError, match="VFIO_IOMMU_MAP_DMA .* File exists"):
        s.map_buffer(a.buf)                                 # an overlapping mapping: EEXIST
    k.calls.clear()
    s.close()
    assert [w for w, _ in k.calls] == ["ioctl", "close", "close", "close"]   # UNMAP_DMA, device, group, container
    assert k.calls[0][1] == A.VFIO_IOMMU_UNMAP_DMA
    assert iommu.live_mappings(table) == []
    assert (s.container_fd, s.group_fd, s.device_fd, s.bar) == (-1, -1, -1, None)


def test_the_stand_in_refuses_what_the_kernel_refuses(tree):
    k = StandInKernel()
    s = vfio.open_vfio(ADDR, tree, kernel=k)
    short = bytearray(struct.pack("<II", 4, 0))             # argsz smaller than struct vfio_group_status
    with pytest.raises(OSError) as e:
        k.ioctl(s.group_fd, A.VFIO_GROUP_GET_STATUS, short)
    assert e.value.errno == errno.EINVAL
    for request, dtype in ((A.VFIO_DEVICE_GET_REGION_INFO, A.REGION_INFO), (A.VFIO_DEVICE_GET_INFO, A.DEVICE_INFO)):
        arg = A.pack(dtype)
        struct.pack_into("<I", arg, 0, 12)
        with pytest.raises(OSError) as e:
            k.ioctl(s.device_fd, request, arg)
        assert e.value.errno == errno.EINVAL
    bad_index = A.pack(A.REGION_INFO, index=A.VFIO_PCI_NUM_REGIONS)
    with pytest.raises(OSError) as e:
        k.ioctl(s.device_fd, A.VFIO_DEVICE_GET_REGION_INFO, bad_index)
    assert e.value.errno == errno.EINVAL
    unaligned = A.pack(A.DMA_MAP, flags=3, vaddr=0x1000, iova=0x1001, size=0x1000)
    with pytest.raises(OSError) as e:
        k.ioctl(s.container_fd, A.VFIO_IOMMU_MAP_DMA, unaligned)
    assert e.value.errno == errno.EINVAL
    unmapped = A.pack(A.DMA_MAP, flags=3, vaddr=0x1000, iova=0x1000, size=0x1000)   # page 1 is never mapped
    with pytest.raises(OSError) as e:
        k.ioctl(s.container_fd, A.VFIO_IOMMU_MAP_DMA, unmapped)
    assert e.value.errno == errno.EFAULT
    # the group is held: a second driver gets EBUSY, named in the message
    with pytest.raises(vfio.VfioError, match=rf"cannot open VFIO group .*/dev/vfio/{GROUP}: Device or resource "
                                             "busy; another process holds the group"):
        vfio.open_vfio(ADDR, tree, kernel=StandInKernel())
    s.close()
    vfio.open_vfio(ADDR, tree, kernel=StandInKernel()).close()     # released: it opens again


def test_set_up_errors_name_the_step_and_the_fix(tmp_path):
    plain = "0000:5e:00.1"
    sysfs.create_device(tmp_path, plain)
    with pytest.raises(vfio.VfioError, match=r"has no IOMMU group .*the IOMMU is off .*intel_iommu=on or amd_iommu=on"):
        vfio.open_vfio(plain, tmp_path, kernel=StandInKernel())
    sysfs.create_device(tmp_path, ADDR, iommu_group=GROUP)
    # a second device in the same group, still on its kernel driver: the group is not viable
    other = "0000:5e:00.2"
    sysfs.create_device(tmp_path, other)
    (tmp_path / "kernel/iommu_groups" / str(GROUP) / "devices" / other).symlink_to(sysfs.device_dir(tmp_path, other))
    drivers = tmp_path / "bus/pci/drivers/ixgbe"
    drivers.mkdir(parents=True)
    d = sysfs.device_dir(tmp_path, other)
    import shutil
    shutil.rmtree(d / "driver")
    (d / "driver").symlink_to(drivers)
    with pytest.raises(vfio.VfioError, match=rf"IOMMU group {GROUP} is not viable.*holds {other}"):
        vfio.open_vfio(ADDR, tmp_path, kernel=StandInKernel())
    (tmp_path / "dev/vfio" / str(GROUP)).unlink()
    with pytest.raises(vfio.VfioError, match=r"No such file or directory; bind the device to vfio-pci first "
                                             rf"\(ixypipe bind {ADDR} --vfio\)"):
        vfio.open_vfio(ADDR, tmp_path, kernel=StandInKernel())
    # the real kernel on a node that is no VFIO container: ENOTTY, said plainly
    (tmp_path / "dev/vfio" / str(GROUP)).touch()
    with pytest.raises(vfio.VfioError, match="VFIO_GET_API_VERSION failed: Inappropriate ioctl for device"):
        vfio.open_vfio(ADDR, tmp_path, kernel=vfio.OsKernel())


def test_auto_takes_vfio_only_for_a_device_in_a_group_on_vfio_pci(tmp_path):
    sysfs.create_device(tmp_path, ADDR, iommu_group=GROUP)
    sysfs.create_device(tmp_path, "0000:5e:00.1")
    assert vfio.choose("auto", ADDR, tmp_path) is True
    assert vfio.choose("auto", "0000:5e:00.1", tmp_path) is False
    assert vfio.choose("none", ADDR, tmp_path) is False
    assert vfio.choose("vfio", "0000:5e:00.1", tmp_path) is True
    with pytest.raises(vfio.VfioError, match="iommu must be one of vfio, none, auto, got 'on'"):
        vfio.choose("on", ADDR, tmp_path)


# ---- the driver and the model's IOMMU mode, in-process ---------------------------------------

class Rig:
    def __init__(self, make_arena, ports):
        self.dev_arena = make_arena(8 << 20, hugepages_mode="never")
        self.arena = make_arena(16 << 20, hugepages_mode="never")
        self.bufs = PacketBuffers.create(self.arena, POOL * len(ports))
        self.pools = [Mempool.create(self.arena, self.bufs, f"pool{i}", i * POOL, POOL, i) for i in range(len(ports))]
        self.world = SimWorld(ports, [self.arena, self.dev_arena], stats_period_ns=NEVER)
        self.devices = []

    def open(self, name: str, iommu_mode: str = "vfio") -> IxgbeDevice:
        i = self.world.names.index(name)
        spec = PortSpec(name, "sim", self.world.addresses[name], rx_ring_size=256, tx_ring_size=256,
                        options={"iommu": iommu_mode, "hot_path": "numpy"})
        dev = IxgbeDevice.open(spec, self.dev_arena, self.bufs, [self.pools[i]],
                               tx_done=Homing.to_pools(self.bufs, self.pools),
                               sysfs_root=str(self.world.sysfs_root), sleep=lambda s: self.world.step())
        self.devices.append(dev)
        return dev

    def close(self):
        for d in self.devices:
            d.close()
        self.world.close()


@pytest.fixture
def rig(make_arena, stand_in):
    made = []

    def build(ports):
        r = Rig(make_arena, ports)
        made.append(r)
        return r
    yield build
    for r in made:
        r.close()


def test_driver_forwards_through_vfio_with_iovas_and_no_physical_addresses(rig, monkeypatch):
    def no_pagemap(*a, **k):
        raise AssertionError("the VFIO path read pagemap")
    monkeypatch.setattr(arena_mod, "virt_to_phys", no_pagemap)
    r = rig([SimPortConfig("p0", generator=GeneratorConfig(packet_size=128, count=3000),
                           sink=SinkConfig(), iommu=True)])
    dev = r.open("p0")
    assert dev.session is not None and dev.session.group == GROUP
    # descriptors carry IOVAs: the opener's virtual addresses of the packet buffers
    rx_desc = r.dev_arena.view(r.dev_arena.region("ixgbe.p0.rxq0.desc"), R.RX_DESC_READ_DTYPE)
    lo = r.arena.buf.ctypes.data
    assert ((rx_desc["pkt_addr"] >= lo) & (rx_desc["pkt_addr"] < lo + r.arena.size)).all()
    assert r.world.ports["p0"].reg(R.RDBAL(0)) | r.world.ports["p0"].reg(R.RDBAH(0)) << 32 == (
        r.dev_arena.buf.ctypes.data + r.dev_arena.region("ixgbe.p0.rxq0.desc").offset)
    r.world.start_traffic()
    out = np.zeros(64, np.uint32)
    for _ in range(400):
        r.world.step()
        n = dev.rx_batch(0, out)
        assert dev.tx_batch(0, out[:n]) == n
    assert dev.tx_drain(0, timeout=0.1) == 0
    c = r.world.counters()["p0"]
    assert (c.generated, c.sink_received, c.sink_lost, c.sink_corrupt, c.dma_faults) == (3000, 3000, 0, 0, 0)
    table = iommu.table_path(r.world.sysfs_root, GROUP)
    dev_map, pkt_map = sorted(iommu.live_mappings(table), key=lambda m: m["iova"] != r.dev_arena.buf.ctypes.data)
    assert (dev_map["iova"], dev_map["size"]) == (r.dev_arena.buf.ctypes.data, r.dev_arena.buf.nbytes)
    # of the packet arena only the packet buffers: its rings, mempools and stage table stay out of reach
    first = lo + r.bufs.offset
    assert pkt_map["iova"] == first - first % vfio.DMA_PAGE
    assert pkt_map["iova"] + pkt_map["size"] >= first + r.bufs.count * r.bufs.buf_size > pkt_map["iova"]
    # (to the IOMMU's 4 KiB granularity: the arena's header page and everything past the mapped pages)
    end = pkt_map["iova"] + pkt_map["size"]
    assert r.world.ports["p0"].dma.resolve([lo, end, pkt_map["iova"] - 1], [1, 1, 1])[0].tolist() == [False] * 3
    dev.close()
    assert iommu.live_mappings(table) == []                  # unmapped on close


def test_an_address_outside_the_mapped_iovas_is_an_iommu_fault(rig):
    r = rig([SimPortConfig("p0", iommu=True)])
    dev = r.open("p0")
    port = r.world.ports["p0"]
    rx_desc = r.dev_arena.view(r.dev_arena.region("ixgbe.p0.rxq0.desc"), R.RX_DESC_READ_DTYPE)
    # a page past both arenas: memory the driver process may well have, but never mapped for DMA
    outside = max(a.buf.ctypes.data + a.buf.nbytes for a in (r.arena, r.dev_arena)) + 0x1000
    rx_desc["pkt_addr"][3] = outside
    assert port.receive(PacketBatch.from_frames([b"\x07" * 60] * 5)) == 3
    (fault,) = r.world.faults
    assert (fault.direction, fault.descriptor, fault.address) == ("rx", 3, outside)
    assert fault.reason.endswith("is not mapped for DMA by the driver (IOMMU fault)")
    assert r.world.counters()["p0"].dma_faults == 1
    # the driver unmaps its packet memory: the device may not touch it any more
    m = next(m for m in dev.session.mappings if m.vaddr != r.dev_arena.buf.ctypes.data)
    dev.session.unmap_dma(m)
    idx = r.pools[0].alloc_exact(2)
    for i in idx:
        r.bufs.write_packet(int(i), b"\x01" * 60)
    wire = []
    port.wire_out.append(wire.append)
    assert dev.tx_batch(0, idx) == 2
    r.world.step()
    assert wire == []
    fault = r.world.faults[-1]
    assert (fault.direction, fault.descriptor) == ("tx", 0)
    assert "IOMMU fault" in fault.reason


def test_auto_picks_vfio_for_a_port_behind_the_iommu_and_physical_addresses_otherwise(rig):
    r = rig([SimPortConfig("p0", iommu=True), SimPortConfig("p1")])
    assert r.open("p0", "auto").session is not None
    plain = r.open("p1", "auto")
    assert plain.session is None and "vfio" not in plain.spec.options


def test_the_iommu_finds_memory_it_was_not_given_through_proc(tree, make_arena):
    """A driver's memory the model knows nothing of: found through /proc/PID/maps of the mapping process."""
    s = vfio.open_vfio(ADDR, tree, kernel=StandInKernel())
    private = make_arena(4 << 20, hugepages_mode="never")
    private.buf[private.size - 100:private.size - 90] = np.arange(10, dtype=np.uint8)
    iova = s.map_buffer(private.buf)
    space = iommu.IommuDma(iommu.table_path(tree, GROUP))       # no arenas registered
    try:
        ok, owner, offset = space.resolve([iova + private.size - 100, iova + private.size], [10, 1])
        assert ok.tolist() == [True, False]                     # one byte past the mapping: a fault
        got = space.read(owner[:1], offset[:1], np.array([10]))
        assert got.data[0].tolist() == list(range(10))
        space.write(owner[:1], offset[:1], PacketBatch.from_frames([bytes([9] * 10)]))
        assert private.buf[private.size - 100:private.size - 90].tolist() == [9] * 10
        s.close()                                               # UNMAP_DMA: the device loses it at once
        assert space.resolve([iova], [1])[0].tolist() == [False]
    finally:
        space.close()
        s.close()
