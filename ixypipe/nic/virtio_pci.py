"""virtio-PCI transports: find a virtio-net function in sysfs and reach its registers, legacy or modern.

Owns everything between a PCI address and the virtio registers the driver
(nic/virtio.py) uses: the identity check (vendor 0x1af4, a network device),
taking the function from the kernel (pci.py's unbind and bus mastering),
and two transports with one interface:

* :class:`LegacyTransport` (virtio 1.x section 4.1.4.8): the I/O BAR0 read
  and written with pread/pwrite on ``resource0``, as ixy does (an I/O BAR
  cannot be mapped).
* :class:`ModernTransport` (4.1.4): the vendor-specific capabilities in
  config space name the BAR, offset and length of the common, notify, ISR
  and device configuration; those BARs' ``resource<N>`` files are mapped.

Registers multiplexed by a select register (queue and feature selects) are
written, then :meth:`settle` is called before the next selection: on
silicon it is the read that flushes posted writes; on the software device
(``simulated``, or its directory has virtio_regs.SIM_MARKER), whose model
sees only the latest value of each register, it also waits until the model
has taken two steps (virtio_regs.SIM_*_STEPS).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ixypipe.nic import pci
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.pci import PciError, PciIdentity
from ixypipe.nic.registers import PCI_CLASS_NETWORK

SETTLE_TIMEOUT = 30.0           # seconds a software device's model may take for two steps (a loaded machine)
TRANSPORTS = ("auto", "legacy", "modern")


def check_virtio_net(address: str, ident: PciIdentity) -> None:
    """Refuse anything that is not a virtio-net function."""
    what = f"PCI device {address} (vendor {ident.vendor:#06x}, device {ident.device:#06x})"
    if ident.vendor != V.PCI_VENDOR_VIRTIO:
        raise PciError(f"{what} is not a virtio device: the vendor is not {V.PCI_VENDOR_VIRTIO:#06x}")
    if ident.device not in V.NET_DEVICE_IDS or ident.base_class != PCI_CLASS_NETWORK:
        raise PciError(f"{what} is a virtio device but not virtio-net (network devices: "
                       f"{', '.join(f'{d:#06x}' for d in V.NET_DEVICE_IDS)}, class 0x02)")


def read_config_space(path: Path) -> bytes:
    try:
        return (path / "config").read_bytes()
    except OSError as exc:
        raise PciError(f"cannot read PCI config space {path / 'config'}: {exc.strerror}") from exc


def virtio_capabilities(config: bytes) -> dict[int, tuple[int, int, int, int]]:
    """The first capability of each virtio cfg_type: {cfg_type: (bar, offset, length, notify multiplier)}."""
    found: dict[int, tuple[int, int, int, int]] = {}
    if len(config) <= V.PCI_CFG_CAP_PTR or not config[V.PCI_CFG_STATUS] & V.PCI_STATUS_CAP_LIST:
        return found
    ptr, seen = config[V.PCI_CFG_CAP_PTR] & ~3, set()
    while ptr and ptr not in seen and ptr + V.CAP_SIZE <= len(config):
        seen.add(ptr)
        if config[ptr] == V.PCI_CAP_ID_VNDR:
            cfg_type, bar = config[ptr + V.CAP_CFG_TYPE], config[ptr + V.CAP_BAR]
            (offset, length) = struct.unpack_from("<II", config, ptr + V.CAP_OFFSET)
            mult = 0
            if cfg_type == V.CFG_NOTIFY and ptr + V.NOTIFY_CAP_SIZE <= len(config):
                (mult,) = struct.unpack_from("<I", config, ptr + V.CAP_NOTIFY_MULTIPLIER)
            if bar < V.PCI_BARS:
                found.setdefault(cfg_type, (bar, offset, length, mult))
        ptr = config[ptr + V.CAP_NEXT] & ~3
    return found


def _lock(fd: int, path: Path, exclusive: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        raise PciError(f"resource busy: PCI device {path.parent.name} is already in use by another ixypipe "
                       f"driver instance (lock on {path} is held)") from None


def _open_resource(path: Path, bar: int) -> int:
    res = path / f"resource{bar}"
    try:
        return os.open(res, os.O_RDWR)
    except FileNotFoundError:
        raise PciError(f"PCI device {path.name} has no BAR{bar} ({res} is missing)") from None
    except OSError as exc:
        raise PciError(f"cannot open {res}: {exc.strerror}") from exc


class Transport:
    """What the driver needs from a virtio-PCI function (see the two subclasses)."""
    kind = "?"

    def __init__(self, path: Path, simulated: bool, sleep: Callable[[float], None]):
        self.path = path
        self.simulated = simulated
        self.sleep = sleep
        self.fds: list[int] = []

    # the registers each transport places differently
    def read(self, where: str, offset: int, size: int) -> int:
        raise NotImplementedError

    def write(self, where: str, offset: int, size: int, value: int) -> None:
        raise NotImplementedError

    def sim_steps(self) -> int:
        raise NotImplementedError

    def settle(self) -> None:
        """Flush posted writes (a status read); on the software device also wait two model steps."""
        self.status()
        if not self.simulated:
            return
        start = self.sim_steps()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while ((self.sim_steps() - start) & 0xFFFFFFFF) < 2:
            if time.monotonic() > deadline:
                raise PciError(f"{self.path.name}: the software virtio device made no progress for "
                               f"{SETTLE_TIMEOUT:g} s (is its model running?)")
            self.sleep(0.0001)

    def status(self) -> int:
        raise NotImplementedError

    def set_status(self, value: int) -> None:
        raise NotImplementedError

    @staticmethod
    def dma_addresses(arena, offsets):
        """What the device is told for these arena offsets: their physical addresses (PCI, no IOMMU)."""
        return arena.phys(offsets)

    def kick_target(self, q: int, offset: int) -> tuple[int, int, int, np.ndarray | None]:
        """How compiled code notifies queue ``q`` (virtio_regs.KICK_*): (mode, fd, file offset, the notify cell
        as a one-element u16 view for a store)."""
        return V.KICK_NONE, -1, 0, None

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def share(self) -> None:
        for fd in self.fds[:1]:
            fcntl.flock(fd, fcntl.LOCK_SH)


class LegacyTransport(Transport):
    """The legacy I/O BAR0 through pread/pwrite on resource0 (4.1.4.8)."""
    kind = "legacy"

    def __init__(self, path: Path, simulated: bool, sleep, exclusive: bool):
        super().__init__(path, simulated, sleep)
        fd = _open_resource(path, 0)
        self.fds.append(fd)
        try:
            _lock(fd, path / "resource0", exclusive)
        except BaseException:
            self.close()
            raise
        self.fd = fd

    def read(self, where: str, offset: int, size: int) -> int:
        base = V.LEGACY_DEVICE_CONFIG if where == "device" else 0
        data = os.pread(self.fd, size, base + offset)
        if len(data) != size:
            raise PciError(f"{self.path.name}: short read of {size} bytes at {base + offset:#x} of resource0")
        return int.from_bytes(data, "little")

    def write(self, where: str, offset: int, size: int, value: int) -> None:
        os.pwrite(self.fd, int(value).to_bytes(size, "little"), offset)

    def sim_steps(self) -> int:
        return self.read("", V.SIM_LEGACY_STEPS, 4)

    def status(self) -> int:
        return self.read("", V.LEGACY_STATUS, 1)

    def set_status(self, value: int) -> None:
        self.write("", V.LEGACY_STATUS, 1, value)

    def device_features(self) -> int:
        return self.read("", V.LEGACY_DEVICE_FEATURES, 4)

    def set_driver_features(self, features: int) -> None:
        if features >> 32:
            raise PciError(f"{self.path.name}: the legacy interface has only feature bits 0..31")
        self.write("", V.LEGACY_DRIVER_FEATURES, 4, features)
        self.settle()

    def queue_max(self, q: int) -> int:
        self.write("", V.LEGACY_QUEUE_SELECT, 2, q)
        self.settle()
        return self.read("", V.LEGACY_QUEUE_SIZE, 2)

    def enable_queue(self, q: int, size: int, desc: int, avail: int, used: int) -> None:
        """Legacy: one block at a 4096-aligned physical address, the device's size, avail and used where
        the legacy layout puts them."""
        if desc % V.LEGACY_ALIGN or avail != desc + V.avail_offset(size) or used != desc + V.used_offset(size):
            raise PciError(f"{self.path.name}: queue {q} is not in the legacy layout at a 4096-aligned address")
        if desc >> (32 + V.LEGACY_PFN_SHIFT):
            raise PciError(f"{self.path.name}: queue {q} at {desc:#x} is above what the legacy interface's 32-bit "
                           "page frame number reaches (16 TiB)")
        self.write("", V.LEGACY_QUEUE_SELECT, 2, q)
        self.settle()
        self.write("", V.LEGACY_QUEUE_PFN, 4, desc >> V.LEGACY_PFN_SHIFT)
        self.settle()

    def notify_offset(self, q: int) -> int:
        return 0                    # legacy: one queue_notify register, written with the queue's index

    def notify(self, q: int, offset: int) -> None:
        self.write("", V.LEGACY_QUEUE_NOTIFY, 2, q)

    def kick_target(self, q: int, offset: int) -> tuple[int, int, int, np.ndarray | None]:
        return V.KICK_PWRITE, self.fd, V.LEGACY_QUEUE_NOTIFY, None

    def num_queues(self) -> int | None:
        return None


class ModernTransport(Transport):
    """The modern structures in memory BARs named by vendor-specific capabilities (4.1.4)."""
    kind = "modern"

    def __init__(self, path: Path, caps: dict, simulated: bool, sleep, exclusive: bool):
        super().__init__(path, simulated, sleep)
        missing = [V.CFG_TYPE_NAMES[t] for t in (V.CFG_COMMON, V.CFG_NOTIFY, V.CFG_DEVICE) if t not in caps]
        if missing:
            raise PciError(f"virtio device {path.name} has no {', '.join(missing)} capability: not a modern "
                           "(virtio 1.x) device; use transport = \"legacy\"")
        self.maps: dict[int, tuple[mmap.mmap, np.ndarray]] = {}
        self.views: dict[str, np.ndarray] = {}
        try:
            for cfg_type in sorted(caps):
                bar, offset, length, _ = caps[cfg_type]
                if bar not in self.maps:
                    self.maps[bar] = self._map(bar, exclusive and not self.maps)
                buf = self.maps[bar][1]
                if offset + length > len(buf):
                    raise PciError(f"{path.name}: the {V.CFG_TYPE_NAMES.get(cfg_type, cfg_type)} capability "
                                   f"[{offset:#x}, +{length:#x}) is outside BAR{bar} ({len(buf)} bytes)")
                self.views[{V.CFG_COMMON: "common", V.CFG_NOTIFY: "notify", V.CFG_ISR: "isr",
                            V.CFG_DEVICE: "device"}.get(cfg_type, str(cfg_type))] = buf[offset:offset + length]
            self.notify_multiplier = caps[V.CFG_NOTIFY][3]
            self.sim_bar = self.maps.get(V.SIM_MODERN_BAR, (None, None))[1] if simulated else None
        except BaseException:
            self.views, self.maps = {}, {}
            self.close()
            raise

    def _map(self, bar: int, exclusive: bool) -> tuple[mmap.mmap, np.ndarray]:
        fd = _open_resource(self.path, bar)
        self.fds.append(fd)
        _lock(fd, self.path / f"resource{bar}", exclusive)
        size = os.fstat(fd).st_size
        try:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.EPERM):
                raise PciError(f"resource busy: cannot map {self.path / f'resource{bar}'} ({exc.strerror})") from exc
            raise PciError(f"cannot map {self.path / f'resource{bar}'}: {exc.strerror}") from exc
        return mm, np.frombuffer(mm, np.uint8)

    def read(self, where: str, offset: int, size: int) -> int:
        view = self.views[where]
        return int(view[offset:offset + size].view(f"<u{size}")[0])

    def write(self, where: str, offset: int, size: int, value: int) -> None:
        self.views[where][offset:offset + size].view(f"<u{size}")[0] = value

    def sim_steps(self) -> int:
        return int(self.sim_bar[V.SIM_MODERN_STEPS:V.SIM_MODERN_STEPS + 4].view("<u4")[0])

    def status(self) -> int:
        return self.read("common", V.COMMON_STATUS, 1)

    def set_status(self, value: int) -> None:
        self.write("common", V.COMMON_STATUS, 1, value)

    def device_features(self) -> int:
        features = 0
        for half in (0, 1):
            self.write("common", V.COMMON_DFSELECT, 4, half)
            self.settle()
            features |= self.read("common", V.COMMON_DF, 4) << (32 * half)
        return features

    def set_driver_features(self, features: int) -> None:
        for half in (0, 1):
            self.write("common", V.COMMON_GFSELECT, 4, half)
            self.settle()
            self.write("common", V.COMMON_GF, 4, (features >> (32 * half)) & 0xFFFFFFFF)
            self.settle()

    def num_queues(self) -> int | None:
        return self.read("common", V.COMMON_NUMQ, 2)

    def queue_max(self, q: int) -> int:
        self.write("common", V.COMMON_Q_SELECT, 2, q)
        self.settle()
        return self.read("common", V.COMMON_Q_SIZE, 2)

    def enable_queue(self, q: int, size: int, desc: int, avail: int, used: int) -> None:
        self.write("common", V.COMMON_Q_SELECT, 2, q)
        self.settle()
        self.write("common", V.COMMON_Q_SIZE, 2, size)
        self.write("common", V.COMMON_Q_DESC, 8, desc)
        self.write("common", V.COMMON_Q_AVAIL, 8, avail)
        self.write("common", V.COMMON_Q_USED, 8, used)
        self.notify_offset(q)
        self.write("common", V.COMMON_Q_ENABLE, 2, 1)
        self.settle()

    def notify_offset(self, q: int) -> int:
        """4.1.4.4: queue_notify_off x notify_off_multiplier, read while queue ``q`` is selected."""
        off = self.read("common", V.COMMON_Q_NOFF, 2) * self.notify_multiplier
        if off + 2 > len(self.views["notify"]):
            raise PciError(f"{self.path.name}: queue {q}'s notify address (offset {off:#x}) is outside the "
                           "notify structure")
        return off

    def notify(self, q: int, offset: int) -> None:
        self.write("notify", offset, 2, q)

    def kick_target(self, q: int, offset: int) -> tuple[int, int, int, np.ndarray | None]:
        return V.KICK_STORE, -1, 0, self.views["notify"][offset:offset + 2].view("<u2")

    def close(self) -> None:
        self.views = {}
        self.sim_bar = None
        for mm, _ in self.maps.values():
            try:
                mm.close()
            except BufferError:
                pass
        self.maps = {}
        super().close()


def open_transport(address: str, sysfs_root: str | os.PathLike, transport: str, simulated: bool,
                   sleep=time.sleep, exclusive: bool = True, require_root: bool = True,
                   geteuid: Callable[[], int] = os.geteuid) -> Transport:
    """Check the function, take it from the kernel (opener only) and open the chosen transport.

    ``transport`` "auto": modern when the device has the virtio capabilities, else legacy."""
    if transport not in TRANSPORTS:
        raise PciError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    address = pci.normalize_address(address)
    if exclusive and require_root and geteuid() != 0:
        raise PciError(f"opening PCI device {address} needs root (unbinding drivers, writing config space, "
                       "reaching its BARs and reading physical addresses are root-only)")
    path = pci.device_dir(address, sysfs_root)
    if not path.is_dir():
        raise PciError(f"no such PCI device {address} (no {path}; `lspci -D` lists the machine's PCI addresses)")
    check_virtio_net(address, pci.read_identity(path))
    simulated = simulated or (path / V.SIM_MARKER).exists()      # served by `ixypipe sim serve`, too
    caps = virtio_capabilities(read_config_space(path))
    modern = transport == "modern" or (transport == "auto" and V.CFG_COMMON in caps)
    if not modern:
        ident = pci.read_identity(path)
        if ident.device != V.DEVICE_ID_NET_TRANSITIONAL:
            raise PciError(f"virtio device {address} (device {ident.device:#06x}) is modern-only: it has no "
                           "legacy interface; use transport = \"modern\" or \"auto\"")
    if exclusive:
        pci.unbind_kernel_driver(path)
        pci.enable_bus_mastering(path)
    if modern:
        return ModernTransport(path, caps, simulated, sleep, exclusive)
    return LegacyTransport(path, simulated, sleep, exclusive)
