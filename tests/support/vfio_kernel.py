"""A stand-in for the kernel's VFIO, behind nic/vfio.py's seam, for machines without an IOMMU.

It answers the same requests with the same bytes as Linux's vfio and
vfio_iommu_type1 do, decoding every struct itself from the layouts of
include/uapi/linux/vfio.h (its own struct formats, not the driver's, so a
layout mistake on either side shows): ``argsz`` smaller than the struct the
kernel needs is EINVAL, unknown flags are EINVAL, a second open of a group
is EBUSY, SET_IOMMU before a group is attached is EINVAL, MAP_DMA of an
unaligned or overlapping range is EINVAL / EEXIST, of an address not mapped
in the caller is EFAULT (the stand-in also refuses anonymous memory
with EFAULT, which the kernel would pin: the model can reach only
file-backed memory), UNMAP_DMA writes back the size it unmapped,
region offsets are ``index << 40`` as vfio-pci's are.

The nodes it serves are the plain files a simulated machine's tree holds
(``<root>/dev/vfio/vfio`` and ``<root>/dev/vfio/<group>``, made by
ixypipe.sim.sysfs), opened with a real open(2), so file permissions are
the real kernel's.  A group open holds an exclusive flock (another process
opening the group gets EBUSY).  A device fd is an open file on the
device's ``resource0``, so it can be handed to another process and mmapped
there, and a fresh stand-in in that process knows it again by its
/proc/self/fd link.  MAP_DMA and UNMAP_DMA are also written to the
group's IOMMU table (ixypipe.sim.iommu), which the software 82599's
IOMMU mode translates every descriptor address through.

Select it for every process of a run with
``IXYPIPE_VFIO_KERNEL=tests.support.vfio_kernel:StandInKernel``.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.sim import iommu

TYPE = ord(";") << 8
GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU = TYPE | 100, TYPE | 101, TYPE | 102
GROUP_GET_STATUS, GROUP_SET_CONTAINER, GROUP_UNSET_CONTAINER, GROUP_GET_DEVICE_FD = (
    TYPE | 103, TYPE | 104, TYPE | 105, TYPE | 106)
DEVICE_GET_INFO, DEVICE_GET_REGION_INFO = TYPE | 107, TYPE | 108
IOMMU_MAP_DMA, IOMMU_UNMAP_DMA = TYPE | 113, TYPE | 114

TYPE1, TYPE1V2 = 1, 3
REGION_SHIFT = 40                       # vfio-pci: region index << 40 is its offset in the device fd
NUM_REGIONS, NUM_IRQS = 9, 5
BAR0, CONFIG = 0, 7
CONFIG_SIZE = 256
IOMMU_PAGE = 4096
DRIVER_OK = ("vfio-pci", None)          # a group is viable when each device is on vfio-pci or on no driver

# struct layouts (little-endian, as x86-64 lays them out)
GROUP_STATUS = struct.Struct("<II")                     # argsz, flags
DEVICE_INFO_MIN = struct.Struct("<IIII")                # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")                  # argsz, flags, index, cap_offset, size, offset
DMA_MAP = struct.Struct("<IIQQQ")                       # argsz, flags, vaddr, iova, size
DMA_UNMAP = struct.Struct("<IIQQ")                      # argsz, flags, iova, size


def _fail(code: int):
    raise OSError(code, os.strerror(code))


@dataclass
class Container:
    groups: list = field(default_factory=list)
    iommu: int = 0
    mappings: dict = field(default_factory=dict)       # iova -> (vaddr, size)


@dataclass
class Group:
    root: Path
    number: int
    container: Container | None = None

    def devices(self) -> list[str]:
        d = self.root / "kernel" / "iommu_groups" / str(self.number) / "devices"
        return sorted(e.name for e in d.iterdir()) if d.is_dir() else []

    def viable(self) -> bool:
        for address in self.devices():
            link = self.root / "bus" / "pci" / "devices" / address / "driver"
            driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
            if driver not in DRIVER_OK:
                return False
        return True

    @property
    def table(self) -> Path:
        return iommu.table_path(self.root, self.number)


class StandInKernel:
    """The seam's methods (open, close, ioctl, mmap, pread, pwrite) answered like Linux's VFIO."""

    def __init__(self):
        self.containers: dict[int, Container] = {}
        self.groups: dict[int, Group] = {}
        self.calls: list[tuple[str, int]] = []          # (what, request or 0), for tests of the order

    # ---- files ---------------------------------------------------------------------------
    def open(self, path: str, flags: int) -> int:
        p = Path(path)
        fd = os.open(p, flags)          # the real permission check
        if p.parent.name == "vfio" and p.parent.parent.name == "dev":
            root = p.parent.parent.parent
            if p.name == "vfio":
                self.containers[fd] = Container()
            elif p.name.isdigit():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    _fail(errno.EBUSY)
                self.groups[fd] = Group(root, int(p.name))
        self.calls.append(("open", 0))
        return fd

    def close(self, fd: int) -> None:
        self.calls.append(("close", 0))
        c = self.containers.pop(fd, None)
        if c is not None:
            for g in list(c.groups):
                self._unset(g)
        g = self.groups.pop(fd, None)
        if g is not None and g.container is not None:
            self._unset(g)
        os.close(fd)

    def _device(self, fd: int) -> tuple[Path, str] | None:
        """(tree root, address) when ``fd`` is a device fd (an open resource0 of a device in a group)."""
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return None
        if target.name != "resource0" or not (target.parent / "iommu_group").is_symlink():
            return None
        return target.parents[4], target.parent.name

    # ---- ioctl ---------------------------------------------------------------------------
    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        self.calls.append(("ioctl", request))
        if fd in self.containers:
            return self._container(self.containers[fd], request, arg)
        if fd in self.groups:
            return self._group(self.groups[fd], request, arg)
        dev = self._device(fd)
        if dev is not None:
            return self._device_ioctl(dev, request, arg)
        _fail(errno.ENOTTY)

    def _container(self, c: Container, request: int, arg) -> int:
        if request == GET_API_VERSION:
            return 0
        if request == CHECK_EXTENSION:
            return 1 if arg in (TYPE1, TYPE1V2) else 0
        if request == SET_IOMMU:
            if not c.groups or c.iommu:
                _fail(errno.EINVAL)
            if arg not in (TYPE1, TYPE1V2):
                _fail(errno.ENODEV)
            c.iommu = arg
            return 0
        if request in (IOMMU_MAP_DMA, IOMMU_UNMAP_DMA):
            if not c.iommu:
                _fail(errno.ENOTTY)             # no IOMMU driver behind the container yet
            return self._map(c, arg) if request == IOMMU_MAP_DMA else self._unmap(c, arg)
        _fail(errno.ENOTTY)

    def _map(self, c: Container, buf: bytearray) -> int:
        if len(buf) < 8:
            _fail(errno.EFAULT)
        argsz, flags = struct.unpack_from("<II", buf)
        if argsz < DMA_MAP.size or len(buf) < DMA_MAP.size or flags & ~0x3:
            _fail(errno.EINVAL)
        _, _, vaddr, iova, size = DMA_MAP.unpack_from(buf)
        if size == 0 or (vaddr | iova | size) & (IOMMU_PAGE - 1):
            _fail(errno.EINVAL)
        for other, (_, other_size) in c.mappings.items():
            if iova < other + other_size and other < iova + size:
                _fail(errno.EEXIST)
        try:
            iommu._Backing(os.getpid(), vaddr, size)      # pinning needs the pages mapped in the caller
        except iommu.IommuError:
            _fail(errno.EFAULT)
        c.mappings[iova] = (vaddr, size)
        for g in c.groups:
            iommu.record_map(g.table, os.getpid(), vaddr, iova, size)
        return 0

    def _unmap(self, c: Container, buf: bytearray) -> int:
        argsz, flags = struct.unpack_from("<II", buf)
        if argsz < DMA_UNMAP.size or len(buf) < DMA_UNMAP.size or flags:
            _fail(errno.EINVAL)
        _, _, iova, size = DMA_UNMAP.unpack_from(buf)
        if (iova | size) & (IOMMU_PAGE - 1):
            _fail(errno.EINVAL)
        done = 0
        for start in [s for s, (_, n) in c.mappings.items() if iova <= s and s + n <= iova + size]:
            done += c.mappings.pop(start)[1]
        for g in c.groups:
            iommu.record_unmap(g.table, iova, size)
        struct.pack_into("<Q", buf, 16, done)            # the kernel reports the size it unmapped
        return 0

    def _group(self, g: Group, request: int, arg) -> int:
        if request == GROUP_GET_STATUS:
            argsz, _ = GROUP_STATUS.unpack_from(arg)
            if argsz < GROUP_STATUS.size:
                _fail(errno.EINVAL)
            flags = (1 if g.viable() else 0) | (2 if g.container is not None else 0)
            struct.pack_into("<I", arg, 4, flags)
            return 0
        if request == GROUP_SET_CONTAINER:
            (cfd,) = struct.unpack_from("<i", arg)
            if g.container is not None:
                _fail(errno.EINVAL)
            if cfd not in self.containers:
                _fail(errno.EBADF)
            if not g.viable():
                _fail(errno.EPERM)
            g.container = self.containers[cfd]
            g.container.groups.append(g)
            return 0
        if request == GROUP_UNSET_CONTAINER:
            if g.container is None:
                _fail(errno.EINVAL)
            self._unset(g)
            return 0
        if request == GROUP_GET_DEVICE_FD:
            if g.container is None or not g.container.iommu:
                _fail(errno.EINVAL)
            name = bytes(arg).split(b"\0", 1)[0].decode()
            if name not in g.devices():
                _fail(errno.ENODEV)
            return os.open(g.root / "bus" / "pci" / "devices" / name / "resource0", os.O_RDWR)
        _fail(errno.ENOTTY)

    def _unset(self, g: Group) -> None:
        c = g.container
        c.groups.remove(g)
        g.container = None
        if not c.groups:                # the last group gone: the IOMMU and its mappings go too
            for start, (_, size) in list(c.mappings.items()):
                iommu.record_unmap(g.table, start, size)
            c.mappings.clear()
            c.iommu = 0

    def _device_ioctl(self, dev: tuple[Path, str], request: int, arg) -> int:
        root, address = dev
        if request == DEVICE_GET_INFO:
            argsz, _ = struct.unpack_from("<II", arg)
            if argsz < DEVICE_INFO_MIN.size:
                _fail(errno.EINVAL)
            DEVICE_INFO_MIN.pack_into(arg, 0, argsz, 0x1 | 0x2, NUM_REGIONS, NUM_IRQS)   # RESET | PCI
            return 0
        if request == DEVICE_GET_REGION_INFO:
            argsz, _, index, _ = struct.unpack_from("<IIII", arg)
            if argsz < REGION_INFO.size:
                _fail(errno.EINVAL)
            if index >= NUM_REGIONS:
                _fail(errno.EINVAL)
            d = root / "bus" / "pci" / "devices" / address
            if index == BAR0:
                size, flags = (d / "resource0").stat().st_size, 0x1 | 0x2 | 0x4       # READ | WRITE | MMAP
            elif index == CONFIG:
                size, flags = CONFIG_SIZE, 0x1 | 0x2
            else:
                size, flags = 0, 0
            REGION_INFO.pack_into(arg, 0, argsz, flags, index, 0, size, index << REGION_SHIFT)
            return 0
        _fail(errno.ENOTTY)

    # ---- regions -------------------------------------------------------------------------
    def _region(self, fd: int, offset: int) -> tuple[Path, int, int]:
        dev = self._device(fd)
        if dev is None:
            _fail(errno.EINVAL)
        root, address = dev
        return root / "bus" / "pci" / "devices" / address, offset >> REGION_SHIFT, offset & ((1 << REGION_SHIFT) - 1)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        d, index, within = self._region(fd, offset)
        if index != BAR0 or within + length > (d / "resource0").stat().st_size:
            _fail(errno.EINVAL)
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=within)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        d, index, within = self._region(fd, offset)
        if index == BAR0:
            return os.pread(fd, n, within)
        if index != CONFIG or within + n > CONFIG_SIZE:
            _fail(errno.EINVAL)
        with open(d / "config", "rb") as f:
            f.seek(within)
            return f.read(n)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        d, index, within = self._region(fd, offset)
        if index == BAR0:
            return os.pwrite(fd, data, within)
        if index != CONFIG or within + len(data) > CONFIG_SIZE:
            _fail(errno.EINVAL)
        cfd = os.open(d / "config", os.O_WRONLY)
        try:
            return os.pwrite(cfd, data, within)
        finally:
            os.close(cfd)
