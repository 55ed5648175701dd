"""PCI access through sysfs: find an 82599, take it from the kernel, map BAR0.

Owns everything between a PCI address and a mapped register file: the
address check, the vendor/device/class check in config space, unbinding the
kernel driver, setting bus mastering in the command register, and the mmap
of ``resource0``.  The sysfs root is a parameter so tests and the software
82599 point it at a fake tree.  The mapped BAR is wrapped in :class:`Bar`,
which reads and writes 32-bit little-endian registers, polls a register with
a timeout (``wait_set``/``wait_clear``) through an injectable ``sleep``, and
can record every register write in order (``trace``) so tests can compare
the init sequence with ixy's.

One process opens a BAR exclusively (an ``flock`` on resource0) while it
initialises the device and then keeps a shared lock; processes that only
attach take a shared lock.  A second exclusive open, from any process, is
refused as "resource busy" instead of silently resetting a NIC in use.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ixypipe.nic.device import DeviceError
from ixypipe.nic.registers import (
    BAR0_MIN_SIZE,
    BAR0_SIZE,
    IXGBE_82599_DEVICE_IDS,
    IXGBE_82599_VF_IDS,
    PCI_CFG_CLASS,
    PCI_CFG_COMMAND,
    PCI_CFG_DEVICE,
    PCI_CFG_VENDOR,
    PCI_CLASS_NETWORK,
    PCI_COMMAND_BUS_MASTER,
    PCI_VENDOR_INTEL,
)

PCI_DEVICES_DIR = "bus/pci/devices"
# domain:bus:device.function, e.g. 0000:03:00.0 (the domain may be left out)
_ADDRESS_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")
DEFAULT_POLL_INTERVAL = 0.01      # ixy polls its wait_set_reg/wait_clear_reg every 10 ms

Sleep = Callable[[float], None]


class PciError(DeviceError):
    """A PCI device cannot be found, identified, taken or mapped."""


def normalize_address(address: str) -> str:
    """``03:00.0`` or ``0000:03:00.0`` -> ``0000:03:00.0``; anything else is an error."""
    match = _ADDRESS_RE.match(address.strip()) if isinstance(address, str) else None
    if not match:
        raise PciError(f"{address!r} is not a PCI address: expected domain:bus:device.function "
                       "like 0000:03:00.0 (see `lspci -D`)")
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def device_dir(address: str, sysfs_root: str | os.PathLike = "/sys") -> Path:
    return Path(sysfs_root) / PCI_DEVICES_DIR / normalize_address(address)


@dataclass(frozen=True)
class PciIdentity:
    vendor: int
    device: int
    base_class: int


def read_identity(path: Path) -> PciIdentity:
    """Vendor, device id and base class from the first bytes of config space."""
    try:
        with open(path / "config", "rb") as f:
            head = f.read(PCI_CFG_CLASS + 1)
    except OSError as exc:
        raise PciError(f"cannot read PCI config space {path / 'config'}: {exc.strerror}") from exc
    if len(head) < PCI_CFG_CLASS + 1:
        raise PciError(f"PCI config space {path / 'config'} is truncated ({len(head)} bytes)")
    (vendor,) = struct.unpack_from("<H", head, PCI_CFG_VENDOR)
    (device,) = struct.unpack_from("<H", head, PCI_CFG_DEVICE)
    return PciIdentity(vendor, device, head[PCI_CFG_CLASS])


def check_82599(address: str, ident: PciIdentity) -> None:
    """Refuse anything that is not an 82599 physical function."""
    what = f"PCI device {address} (vendor {ident.vendor:#06x}, device {ident.device:#06x}, class {ident.base_class:#04x})"
    if ident.base_class != PCI_CLASS_NETWORK:
        raise PciError(f"{what} is not a network controller, so not an Intel 82599")
    if ident.vendor != PCI_VENDOR_INTEL:
        raise PciError(f"{what} is not an Intel 82599: the vendor is not Intel ({PCI_VENDOR_INTEL:#06x})")
    if ident.device in IXGBE_82599_VF_IDS:
        raise PciError(f"{what} is an 82599 virtual function; ixypipe drives only the physical function")
    if ident.device not in IXGBE_82599_DEVICE_IDS:
        raise PciError(f"{what} is an Intel NIC but not an 82599 (known device ids: "
                       f"{', '.join(f'{d:#06x}' for d in sorted(IXGBE_82599_DEVICE_IDS))})")


def unbind_kernel_driver(path: Path) -> str | None:
    """Detach the kernel driver (writes our address to driver/unbind); returns its name or None."""
    driver = path / "driver"
    if not driver.exists():
        return None
    name = driver.resolve().name
    try:
        with open(driver / "unbind", "w") as f:
            f.write(path.name)
    except OSError as exc:
        raise PciError(f"cannot unbind kernel driver {name!r} from {path.name}: {exc.strerror} "
                       f"(writing {driver / 'unbind'})") from exc
    return name


def enable_bus_mastering(path: Path) -> int:
    """Set bus master enable in the command register so the NIC may DMA; returns the new value."""
    try:
        fd = os.open(path / "config", os.O_RDWR)
    except OSError as exc:
        raise PciError(f"cannot open PCI config space {path / 'config'} for writing: {exc.strerror}") from exc
    try:
        (command,) = struct.unpack("<H", os.pread(fd, 2, PCI_CFG_COMMAND))
        command |= PCI_COMMAND_BUS_MASTER
        os.pwrite(fd, struct.pack("<H", command), PCI_CFG_COMMAND)
    finally:
        os.close(fd)
    return command


@dataclass
class Bar:
    """A mapped BAR0: 32-bit register reads, writes, polls, and an optional write trace."""
    path: Path
    mm: mmap.mmap
    fd: int
    regs: np.ndarray = field(init=False)
    trace: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.regs = np.frombuffer(self.mm, dtype="<u4")

    def read(self, offset: int) -> int:
        return int(self.regs[offset >> 2])

    def write(self, offset: int, value: int) -> None:
        if self.trace is not None:
            self.trace.append((offset, value & 0xFFFFFFFF))
        self.regs[offset >> 2] = value & 0xFFFFFFFF

    def set_flags(self, offset: int, flags: int) -> None:
        self.write(offset, self.read(offset) | flags)

    def clear_flags(self, offset: int, flags: int) -> None:
        self.write(offset, self.read(offset) & ~flags)

    def wait(self, offset: int, mask: int, want_set: bool, what: str, timeout: float,
             sleep: Sleep = time.sleep, interval: float = DEFAULT_POLL_INTERVAL) -> None:
        """Poll until (reg & mask) is all set / all clear; after ``timeout`` seconds of polls, raise.

        The number of polls is timeout / interval, not wall-clock time, so a
        test whose ``sleep`` steps a software model instead of sleeping gets
        the same number of chances.
        """
        polls = max(1, int(round(timeout / interval)))
        for attempt in range(polls + 1):
            value = self.read(offset) & mask
            if (value == mask) if want_set else (value == 0):
                return
            if attempt < polls:
                sleep(interval)
        raise PciError(f"{self.path.parent.name}: timeout after {timeout:g} s waiting for {what} "
                       f"(register {offset:#07x} & {mask:#010x} still {'clear' if want_set else 'set'}, "
                       f"reads {self.read(offset):#010x})")

    def wait_set(self, offset: int, mask: int, what: str, timeout: float, sleep: Sleep = time.sleep,
                 interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.wait(offset, mask, True, what, timeout, sleep, interval)

    def wait_clear(self, offset: int, mask: int, what: str, timeout: float, sleep: Sleep = time.sleep,
                   interval: float = DEFAULT_POLL_INTERVAL) -> None:
        self.wait(offset, mask, False, what, timeout, sleep, interval)

    def close(self) -> None:
        """Unmap and drop the lock.  Register views handed out must be gone by then."""
        if self.mm is None:
            return
        self.regs = None
        try:
            self.mm.close()
        except BufferError:
            pass     # a view is still alive; the mapping goes with it
        self.mm = None
        os.close(self.fd)   # closing the descriptor releases the flock


def map_resource0(path: Path, exclusive: bool) -> Bar:
    """mmap BAR0 (``resource0``) read-write and shared, under an exclusive or shared flock."""
    res = path / "resource0"
    try:
        fd = os.open(res, os.O_RDWR)
    except FileNotFoundError:
        raise PciError(f"PCI device {path.name} has no BAR0 ({res} is missing)") from None
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise PciError(f"resource busy: {res} is held by another driver") from exc
        raise PciError(f"cannot open {res}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PciError(f"resource busy: PCI device {path.name} is already in use by another "
                           f"ixypipe driver instance (lock on {res} is held)") from None
        size = os.fstat(fd).st_size
        if size < BAR0_MIN_SIZE:
            raise PciError(f"{res} is {size} bytes: too small for the 82599's registers, which span "
                           f"{BAR0_MIN_SIZE} bytes of its {BAR0_SIZE}-byte BAR0")
        try:
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.EPERM):
                raise PciError(f"resource busy: cannot map {res} ({exc.strerror}); is a kernel driver "
                               "still bound, or the kernel booted with iomem=strict?") from exc
            raise PciError(f"cannot map {res}: {exc.strerror}") from exc
    except BaseException:
        os.close(fd)
        raise
    return Bar(res, mm, fd)


def open_device(address: str, sysfs_root: str | os.PathLike = "/sys", require_root: bool = True,
                geteuid: Callable[[], int] = os.geteuid) -> Bar:
    """Take an 82599 from the kernel and map its BAR0 exclusively (ixy's pci_map_resource).

    Checks, in order: root, the device exists, it is an 82599 PF; then
    unbinds the kernel driver, enables bus mastering and maps resource0.
    ``require_root=False`` is for a software 82599's tree, whose files the
    user owns.  The caller downgrades the lock with :func:`share` after init.
    """
    address = normalize_address(address)
    if require_root and geteuid() != 0:
        raise PciError(f"opening PCI device {address} needs root (unbinding drivers, writing config "
                       "space, mapping resource0 and reading physical addresses are root-only)")
    path = device_dir(address, sysfs_root)
    if not path.is_dir():
        raise PciError(f"no such PCI device {address} (no {path}; `lspci -D` lists the machine's PCI addresses)")
    check_82599(address, read_identity(path))
    unbind_kernel_driver(path)
    enable_bus_mastering(path)
    return map_resource0(path, exclusive=True)


def attach_device(address: str, sysfs_root: str | os.PathLike = "/sys") -> Bar:
    """Map the BAR0 of a device another process opened (shared lock; no unbind, no config writes)."""
    address = normalize_address(address)
    path = device_dir(address, sysfs_root)
    if not path.is_dir():
        raise PciError(f"no such PCI device {address} (no {path})")
    return map_resource0(path, exclusive=False)


def share(bar: Bar) -> None:
    """Turn the opener's exclusive lock into a shared one so stage processes can attach."""
    fcntl.flock(bar.fd, fcntl.LOCK_SH)
