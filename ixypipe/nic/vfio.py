"""The VFIO path to an 82599: container, group, device fd, BAR0 and IOMMU mappings (ixy's vfio mode).

With the IOMMU on and the NIC bound to vfio-pci, a user allowed to open
``/dev/vfio/<group>`` drives the NIC without root: BAR0 is mapped through
the VFIO device fd, bus mastering is set through its config region, and the
DMA memory is registered with the IOMMU (``VFIO_IOMMU_MAP_DMA``) with the
I/O virtual address equal to the opener's virtual address, as ixy does.
Descriptors then carry IOVAs; nothing reads /proc/self/pagemap, and the
IOMMU refuses device DMA anywhere else.  :func:`open_vfio` goes through
the steps in the kernel's order and names the step and the fix when one
fails; :meth:`VfioSession.close` undoes them in reverse.

All kernel calls (open, close, ioctl, mmap, pread, pwrite) go through one
narrow seam, a :class:`Kernel`.  :class:`OsKernel` makes the real system
calls; machines without an IOMMU put a stand-in behind the seam that
answers the same structs (the tests' stand-in; the environment variable
``IXYPIPE_VFIO_KERNEL=module:factory`` selects one in every process of a
pipeline).  A fake sysfs tree (a sysfs root other than /sys) keeps its
device nodes in ``<root>/dev/vfio``; the real one uses ``/dev/vfio``.

Stage processes cannot open the group again (the kernel answers EBUSY), so
the opener hands them the device fd: :class:`PassFd` travels inside the
pickled pipeline plan to processes started by multiprocessing ("spawn", or the
supervisor's fork server, which hands it on; the fd is inherited, like DPDK's secondary processes get theirs from the
primary), and :func:`attach_bar` maps BAR0 through it.
"""

from __future__ import annotations

import errno
import importlib
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ixypipe.layout import PKTBUF_HEADROOM
from ixypipe.nic import pci
from ixypipe.nic import vfio_abi as A
from ixypipe.nic.device import DeviceError
from ixypipe.nic.registers import BAR0_MIN_SIZE, PCI_CFG_COMMAND, PCI_COMMAND_BUS_MASTER

IOMMU_MODES = ("vfio", "none", "auto")
VFIO_DRIVER = "vfio-pci"
KERNEL_ENV = "IXYPIPE_VFIO_KERNEL"
IOMMU_GROUPS_DIR = "kernel/iommu_groups"
DMA_PAGE = 4096                       # MAP_DMA sizes are whole IOMMU pages (4 KiB at least)


class VfioError(DeviceError):
    """A VFIO step failed; the message names the step, the file and what to do."""


# ---- the seam -------------------------------------------------------------------------------

class Kernel:
    """The system calls the VFIO path makes; the real ones by default."""

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags)

    def close(self, fd: int) -> None:
        os.close(fd)

    def ioctl(self, fd: int, request: int, arg: int | bytearray = 0) -> int:
        """The ioctl's return value; a bytearray ``arg`` is passed by pointer and updated in place."""
        import fcntl
        return fcntl.ioctl(fd, request, arg, True) if isinstance(arg, bytearray) else fcntl.ioctl(fd, request, arg)

    def mmap(self, fd: int, length: int, offset: int) -> mmap.mmap:
        return mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)

    def pread(self, fd: int, n: int, offset: int) -> bytes:
        return os.pread(fd, n, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)


OsKernel = Kernel


def default_kernel() -> Kernel:
    """The real kernel, or the stand-in named by IXYPIPE_VFIO_KERNEL ("module:factory")."""
    name = os.environ.get(KERNEL_ENV, "")
    if not name:
        return OsKernel()
    module, _, attr = name.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "Kernel")()
    except (ImportError, AttributeError) as exc:
        raise VfioError(f"{KERNEL_ENV}={name!r} does not name a VFIO kernel stand-in: {exc}") from None


# ---- sysfs ----------------------------------------------------------------------------------

def dev_root(sysfs_root: str | os.PathLike) -> Path:
    """Where the device nodes of a sysfs tree live: /dev for /sys, <root>/dev for a fake tree."""
    return Path("/dev") if str(sysfs_root) == "/sys" else Path(sysfs_root) / "dev"


def iommu_group(address: str, sysfs_root: str | os.PathLike = "/sys") -> int | None:
    """The device's IOMMU group number (its ``iommu_group`` link), None when it has none."""
    link = pci.device_dir(address, sysfs_root) / "iommu_group"
    if not link.is_symlink():
        return None
    name = os.path.basename(os.readlink(link))
    return int(name) if name.isdigit() else None


def group_devices(group: int, sysfs_root: str | os.PathLike = "/sys") -> list[str]:
    """PCI addresses of every device in IOMMU group ``group`` (they go to vfio-pci together)."""
    d = Path(sysfs_root) / IOMMU_GROUPS_DIR / str(group) / "devices"
    return sorted(e.name for e in d.iterdir()) if d.is_dir() else []


def iommu_enabled(sysfs_root: str | os.PathLike = "/sys") -> bool:
    """The kernel's IOMMU is on when /sys/kernel/iommu_groups has entries."""
    d = Path(sysfs_root) / IOMMU_GROUPS_DIR
    return d.is_dir() and any(d.iterdir())


def bound_driver(address: str, sysfs_root: str | os.PathLike = "/sys") -> str | None:
    link = pci.device_dir(address, sysfs_root) / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def choose(mode: str, address: str, sysfs_root: str | os.PathLike = "/sys") -> bool:
    """True for the VFIO path: "vfio", or "auto" when the device has an IOMMU group and is on vfio-pci."""
    if mode not in IOMMU_MODES:
        raise VfioError(f"iommu must be one of {', '.join(IOMMU_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode == "vfio"
    address = pci.normalize_address(address)
    return iommu_group(address, sysfs_root) is not None and bound_driver(address, sysfs_root) == VFIO_DRIVER


# ---- the session ----------------------------------------------------------------------------

@dataclass
class Region:
    index: int
    flags: int
    size: int
    offset: int


@dataclass
class DmaMapping:
    vaddr: int
    iova: int
    size: int


@dataclass
class VfioSession:
    """An opened VFIO device: its fds, BAR0, config region and IOMMU mappings."""
    address: str
    group: int
    kernel: Kernel
    container_fd: int = -1
    group_fd: int = -1
    device_fd: int = -1
    bar: pci.Bar | None = None
    config: Region | None = None
    mappings: list[DmaMapping] = field(default_factory=list)

    def map_dma(self, vaddr: int, size: int, iova: int | None = None) -> int:
        """Register ``size`` bytes at ``vaddr`` with the IOMMU, readable and writable by the device."""
        iova = vaddr if iova is None else iova
        size = -(-size // DMA_PAGE) * DMA_PAGE
        arg = A.pack(A.DMA_MAP, flags=A.VFIO_DMA_MAP_FLAG_READ | A.VFIO_DMA_MAP_FLAG_WRITE, vaddr=vaddr,
                     iova=iova, size=size)
        self._ioctl(self.container_fd, A.VFIO_IOMMU_MAP_DMA, arg, f"VFIO_IOMMU_MAP_DMA of {size} bytes at "
                    f"{vaddr:#x}", {errno.ENOMEM: " (the locked-memory limit is too low: raise it with "
                                     "`ulimit -l` or limits.conf for this user)"})
        self.mappings.append(DmaMapping(vaddr, iova, size))
        return iova

    def unmap_dma(self, mapping: DmaMapping) -> None:
        arg = A.pack(A.DMA_UNMAP, iova=mapping.iova, size=mapping.size)
        self._ioctl(self.container_fd, A.VFIO_IOMMU_UNMAP_DMA, arg, f"VFIO_IOMMU_UNMAP_DMA at {mapping.iova:#x}")
        self.mappings.remove(mapping)

    def map_buffer(self, buf) -> int:
        """Map a numpy array's memory (an arena's whole mapping): returns its IOVA (= its address)."""
        return self.map_dma(int(buf.ctypes.data), int(buf.nbytes))

    def map_part(self, buf, offset: int, size: int) -> int:
        """Map only ``[offset, offset + size)`` of ``buf``, widened to whole IOMMU pages; returns the
        IOVA of ``buf``'s offset 0 (IOVA = virtual address, so offsets keep their meaning)."""
        base = int(buf.ctypes.data)
        start = (offset // DMA_PAGE) * DMA_PAGE
        end = min(-(-(offset + size) // DMA_PAGE) * DMA_PAGE, int(buf.nbytes))
        self.map_dma(base + start, end - start)
        return base

    def handoff(self) -> PassFd:
        return PassFd(self.device_fd)

    def _ioctl(self, fd: int, request: int, arg, what: str, hints: dict | None = None) -> int:
        try:
            return self.kernel.ioctl(fd, request, arg)
        except OSError as exc:
            hint = (hints or {}).get(exc.errno, "")
            raise VfioError(f"{self.address} (IOMMU group {self.group}): {what} failed: "
                            f"{os.strerror(exc.errno)}{hint}") from None

    def close(self) -> None:
        """Unmap the DMA memory, unmap BAR0, then close device, group and container, in that order."""
        errors = []
        for m in list(self.mappings):
            try:
                self.unmap_dma(m)
            except VfioError as exc:
                errors.append(str(exc))
                self.mappings.remove(m)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for name in ("device_fd", "group_fd", "container_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                self.kernel.close(fd)
                setattr(self, name, -1)
        if errors:
            raise VfioError("; ".join(errors))


def open_vfio(address: str, sysfs_root: str | os.PathLike = "/sys", kernel: Kernel | None = None) -> VfioSession:
    """Take the 82599 at ``address`` through VFIO: everything up to a mapped BAR0 with bus mastering on.

    The DMA memory is mapped afterwards with :meth:`VfioSession.map_dma`.
    """
    address = pci.normalize_address(address)
    path = pci.device_dir(address, sysfs_root)
    if not path.is_dir():
        raise VfioError(f"no such PCI device {address} (no {path}; `lspci -D` lists the machine's PCI addresses)")
    pci.check_82599(address, pci.read_identity(path))
    group = iommu_group(address, sysfs_root)
    if group is None:
        off = "" if iommu_enabled(sysfs_root) else (
            ": the IOMMU is off (no entries in /sys/kernel/iommu_groups); boot with intel_iommu=on or "
            "amd_iommu=on")
        raise VfioError(f"{address} has no IOMMU group ({path / 'iommu_group'} is missing){off}")
    kernel = kernel or default_kernel()
    s = VfioSession(address, group, kernel)
    try:
        _open_container(s, dev_root(sysfs_root))
        _open_group(s, dev_root(sysfs_root), sysfs_root)
        _open_device(s)
    except BaseException:
        s.close()
        raise
    return s


def _open_node(s: VfioSession, node: Path, what: str) -> int:
    try:
        return s.kernel.open(str(node), os.O_RDWR)
    except OSError as exc:
        hints = {
            errno.ENOENT: (f"; bind the device to vfio-pci first (ixypipe bind {s.address} --vfio)"
                           if what == "group" else "; load the vfio module (modprobe vfio-pci)"),
            errno.EACCES: f"; give this user the {what} node (chown, or a udev rule for /dev/vfio/*)",
            errno.EPERM: f"; give this user the {what} node (chown, or a udev rule for /dev/vfio/*)",
            errno.EBUSY: "; another process holds the group (another ixypipe, or a VM with this NIC)",
        }
        raise VfioError(f"{s.address}: cannot open VFIO {what} {node}: {os.strerror(exc.errno)}"
                        f"{hints.get(exc.errno, '')}") from None


def _open_container(s: VfioSession, dev: Path) -> None:
    s.container_fd = _open_node(s, dev / "vfio" / "vfio", "container")
    version = s._ioctl(s.container_fd, A.VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION",
                       {errno.ENOTTY: " (not a VFIO container: is the node a VFIO character device?)"})
    if version != A.VFIO_API_VERSION:
        raise VfioError(f"{s.address}: the kernel's VFIO API version is {version}, ixypipe speaks "
                        f"{A.VFIO_API_VERSION}")
    if s._ioctl(s.container_fd, A.VFIO_CHECK_EXTENSION, A.VFIO_TYPE1_IOMMU, "VFIO_CHECK_EXTENSION") <= 0:
        raise VfioError(f"{s.address}: the kernel's VFIO has no type-1 IOMMU (x86 VT-d/AMD-Vi); is the "
                        "IOMMU on (intel_iommu=on / amd_iommu=on)?")


def _open_group(s: VfioSession, dev: Path, sysfs_root) -> None:
    s.group_fd = _open_node(s, dev / "vfio" / str(s.group), "group")
    status = A.pack(A.GROUP_STATUS)
    s._ioctl(s.group_fd, A.VFIO_GROUP_GET_STATUS, status, "VFIO_GROUP_GET_STATUS")
    if not A.unpack(A.GROUP_STATUS, status)["flags"] & A.VFIO_GROUP_FLAGS_VIABLE:
        others = [a for a in group_devices(s.group, sysfs_root) if a != s.address]
        raise VfioError(f"{s.address}: IOMMU group {s.group} is not viable: every device in it must be bound "
                        f"to vfio-pci or have no driver (the group holds {', '.join(others) or 'other devices'}"
                        "; ixypipe bind --vfio each of them)")
    s._ioctl(s.group_fd, A.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("<i", s.container_fd)),
             "VFIO_GROUP_SET_CONTAINER")
    s._ioctl(s.container_fd, A.VFIO_SET_IOMMU, A.VFIO_TYPE1_IOMMU, "VFIO_SET_IOMMU(type 1)")


def _open_device(s: VfioSession) -> None:
    name = bytearray(s.address.encode() + b"\0")
    s.device_fd = s._ioctl(s.group_fd, A.VFIO_GROUP_GET_DEVICE_FD, name, "VFIO_GROUP_GET_DEVICE_FD")
    info = A.pack(A.DEVICE_INFO)
    s._ioctl(s.device_fd, A.VFIO_DEVICE_GET_INFO, info, "VFIO_DEVICE_GET_INFO")
    info = A.unpack(A.DEVICE_INFO, info)
    if not info["flags"] & A.VFIO_DEVICE_FLAGS_PCI or info["num_regions"] <= A.VFIO_PCI_CONFIG_REGION_INDEX:
        raise VfioError(f"{s.address}: the VFIO device is not a vfio-pci device with a config region "
                        f"(flags {int(info['flags']):#x}, {int(info['num_regions'])} regions)")
    s.config = region_info(s.kernel, s.device_fd, A.VFIO_PCI_CONFIG_REGION_INDEX, s.address)
    s.bar = map_bar0(s.kernel, s.device_fd, s.address)
    enable_bus_mastering(s)


def region_info(kernel: Kernel, device_fd: int, index: int, address: str) -> Region:
    arg = A.pack(A.REGION_INFO, index=index)
    try:
        kernel.ioctl(device_fd, A.VFIO_DEVICE_GET_REGION_INFO, arg)
    except OSError as exc:
        raise VfioError(f"{address}: VFIO_DEVICE_GET_REGION_INFO({index}) failed: {os.strerror(exc.errno)}") from None
    r = A.unpack(A.REGION_INFO, arg)
    return Region(int(r["index"]), int(r["flags"]), int(r["size"]), int(r["offset"]))


def map_bar0(kernel: Kernel, device_fd: int, address: str) -> pci.Bar:
    """BAR0 mmapped through the device fd at the offset the kernel reports for region 0."""
    bar = region_info(kernel, device_fd, A.VFIO_PCI_BAR0_REGION_INDEX, address)
    need = A.VFIO_REGION_INFO_FLAG_READ | A.VFIO_REGION_INFO_FLAG_WRITE | A.VFIO_REGION_INFO_FLAG_MMAP
    if bar.flags & need != need:
        raise VfioError(f"{address}: VFIO says BAR0 cannot be mapped read-write (region flags {bar.flags:#x})")
    if bar.size < BAR0_MIN_SIZE:
        raise VfioError(f"{address}: BAR0 is {bar.size} bytes, too small for the 82599's registers "
                        f"({BAR0_MIN_SIZE} bytes)")
    try:
        mm = kernel.mmap(device_fd, bar.size, bar.offset)
    except OSError as exc:
        raise VfioError(f"{address}: cannot mmap BAR0 through the VFIO device fd: {os.strerror(exc.errno)}") from None
    # the Bar owns a duplicate of the device fd, so closing the Bar leaves the session's fd alone
    return pci.Bar(Path(f"vfio:{address}/BAR0"), mm, os.dup(device_fd))


def enable_bus_mastering(s: VfioSession) -> int:
    """Set bus master enable in the command register, through the device fd's config region."""
    at = s.config.offset + PCI_CFG_COMMAND
    try:
        (command,) = struct.unpack("<H", s.kernel.pread(s.device_fd, 2, at))
        command |= PCI_COMMAND_BUS_MASTER
        s.kernel.pwrite(s.device_fd, struct.pack("<H", command), at)
    except (OSError, struct.error) as exc:
        raise VfioError(f"{s.address}: cannot set bus mastering through the VFIO config region: {exc}") from None
    return command


# ---- handing the device to stage processes --------------------------------------------------

class PassFd:
    """An fd that a multiprocessing child ("spawn" or "forkserver") inherits when it is pickled into the
    child's arguments.

    Pickled while a process is being started, the fd is added to the fds the
    child keeps (multiprocessing.reduction.DupFd); pickled any other time
    (e.g. for a log) it arrives as -1, "not passed".
    """

    def __init__(self, fd: int):
        self.fd = fd

    def __reduce__(self):
        from multiprocessing import context, reduction
        if self.fd >= 0 and context.get_spawning_popen() is not None:
            return _passed_fd, (reduction.DupFd(self.fd),)
        return PassFd, (-1,)


def _passed_fd(dup) -> PassFd:
    return PassFd(dup.detach())


@dataclass
class VfioAttach:
    """What a stage process needs to use a VFIO port another process opened (in PortSpec.options)."""
    device: PassFd
    iova: dict[str, int]            # arena path -> IOVA of its offset 0


def attach_bar(handoff: VfioAttach, address: str, kernel: Kernel | None = None) -> pci.Bar:
    if handoff.device.fd < 0:
        raise VfioError(f"{address}: this process was not handed the VFIO device fd (only processes spawned "
                        "by the port's opener get it; the group cannot be opened twice)")
    return map_bar0(kernel or default_kernel(), handoff.device.fd, address)


def check_mode(spec_options: dict, name: str) -> str:
    mode = spec_options.get("iommu", "none")
    if mode not in IOMMU_MODES:
        raise VfioError(f"port {name!r}: iommu must be one of {', '.join(IOMMU_MODES)}, got {mode!r}")
    return mode


__all__ = ["IOMMU_MODES", "Kernel", "OsKernel", "PassFd", "VfioAttach", "VfioError", "VfioSession",
           "attach_bar", "choose", "iommu_enabled", "iommu_group", "group_devices", "open_vfio"]


# ---- the driver's addresses under VFIO ------------------------------------------------------

def iova_base(handoff: VfioAttach, arena) -> int:
    try:
        return handoff.iova[str(arena.path)]
    except KeyError:
        raise VfioError(f"arena {arena.name} is not mapped for DMA through VFIO (only "
                        f"{', '.join(handoff.iova) or 'none'})") from None


def map_arenas(session: VfioSession, device_arena, bufs) -> dict[str, int]:
    """MAP_DMA what the NIC may touch: the device arena (rings, per-queue state) whole, and of the
    packet arena only its packet buffers, so the NIC cannot reach the SPSC rings, mempools or stage
    table beside them.  Returns arena path -> IOVA of its offset 0."""
    iova = {str(device_arena.path): session.map_buffer(device_arena.buf)}
    if bufs.arena is not device_arena:
        iova[str(bufs.arena.path)] = session.map_part(bufs.arena.buf, bufs.offset, bufs.count * bufs.buf_size)
    return iova


def data_iova(handoff: VfioAttach, bufs):
    """The IOVA of every packet buffer's data (ixypipe's data_phys under VFIO)."""
    start = iova_base(handoff, bufs.arena) + bufs.offset + PKTBUF_HEADROOM
    return np.uint64(start) + np.arange(bufs.count, dtype=np.uint64) * np.uint64(bufs.buf_size)
