"""Moving a network device between its kernel driver, no driver (ixypipe's own) and vfio-pci.

``take`` (``ixypipe bind``) detaches the kernel driver so ixypipe's driver
can map BAR0, or with ``driver="vfio-pci"`` hands the device to that driver
(``driver_override`` then ``drivers_probe``, loading the module with
modprobe when missing on the real /sys); for vfio-pci it first checks the
IOMMU is on and afterwards reports the IOMMU group, the other devices in it
and what a user without root needs (:func:`vfio_report`).  ``give_back`` (``ixypipe
unbind``) detaches a user-space driver, clears the override and lets the
kernel probe, so the device's own driver (ixgbe) claims it again, or binds
the driver named.  Both refuse, unless forced, a device that is not a network
controller or whose interface is up and carries routes (it would cut the
host off a network), and ``give_back`` refuses a device an ixypipe process
holds (the flock on resource0).  Every sysfs write goes through a
:class:`SysfsWriter`, so tests substitute a fake kernel; after each change
the driver link is read back and a mismatch is an error.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ixypipe.nic import vfio
from ixypipe.nic.pci import PCI_DEVICES_DIR, PciError, normalize_address
from ixypipe.ops.pcidevs import USERSPACE_DRIVERS, NetDevice, read_device, routed_interfaces

PCI_DRIVERS_DIR = "bus/pci/drivers"
DRIVERS_PROBE = "bus/pci/drivers_probe"
NOIOMMU_PARAMETER = "module/vfio/parameters/enable_unsafe_noiommu_mode"
IOMMU_ON = "boot with intel_iommu=on (Intel VT-d) or amd_iommu=on (AMD-Vi) on the kernel command line"
SETTLE_TIMEOUT = 2.0          # seconds for the kernel to finish a probe
SETTLE_POLL = 0.02


class BindError(Exception):
    """A device cannot be moved; the message says which device, why, and what to do."""


class SysfsWriter:
    """Writes one value to a sysfs file, as the kernel expects (one write call)."""

    def write(self, path: Path, value: str) -> None:
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise BindError(f"writing {value.strip()!r} to {path} failed: {exc.strerror}") from exc


def _device(address: str, sysfs_root: Path, proc_root: str | os.PathLike) -> tuple[str, Path, NetDevice | None]:
    try:
        address = normalize_address(address)
    except PciError as exc:
        raise BindError(str(exc)) from None
    path = sysfs_root / PCI_DEVICES_DIR / address
    if not path.is_dir():
        raise BindError(f"no PCI device {address} (no {path}); 'ixypipe devices' lists the network devices")
    return address, path, read_device(path, routed_interfaces(proc_root))


def _check_safe(address: str, dev: NetDevice | None, force: bool, doing: str) -> None:
    if force:
        return
    if dev is None:
        raise BindError(f"{address} is not a network controller; refusing to {doing} it (--force to insist)")
    for iface in dev.interfaces:
        if iface.active:
            raise BindError(f"interface {iface.name} of {address} is up and carries routes "
                            f"({', '.join(iface.routes)}); taking {address} from {dev.driver} would cut this "
                            f"host off that network. Take the interface down first (ip link set {iface.name} "
                            "down) or use --force")


def current_driver(path: Path) -> str | None:
    link = path / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def driver_of(address: str, sysfs_root: str | os.PathLike = "/sys") -> tuple[str, str | None]:
    """The device's full PCI address and the driver bound to it now (None: no driver)."""
    address = normalize_address(address)
    return address, current_driver(Path(sysfs_root) / PCI_DEVICES_DIR / address)


def _settle(path: Path, want: Callable[[str | None], bool], timeout: float = SETTLE_TIMEOUT) -> str | None:
    deadline = time.monotonic() + timeout
    while True:
        drv = current_driver(path)
        if want(drv) or time.monotonic() >= deadline:
            return drv
        time.sleep(SETTLE_POLL)


def _detach(address: str, path: Path, sysfs_root: Path, writer: SysfsWriter) -> str | None:
    drv = current_driver(path)
    if drv is None:
        return None
    writer.write(sysfs_root / PCI_DRIVERS_DIR / drv / "unbind", address)
    left = _settle(path, lambda d: d is None)
    if left is not None:
        raise BindError(f"{address} is still bound to {left} after writing to its unbind file")
    return drv


def _ensure_driver_loaded(driver: str, sysfs_root: Path, modprobe: Callable[[str], bool]) -> None:
    if (sysfs_root / PCI_DRIVERS_DIR / driver).is_dir():
        return
    if str(sysfs_root) == "/sys" and modprobe(driver) and (sysfs_root / PCI_DRIVERS_DIR / driver).is_dir():
        return
    hint = " (vfio-pci also needs the IOMMU on: intel_iommu=on or amd_iommu=on)" if driver == "vfio-pci" else ""
    raise BindError(f"driver {driver} is not loaded (no {sysfs_root / PCI_DRIVERS_DIR / driver}); "
                    f"load it with 'modprobe {driver}'{hint}")


def _modprobe(driver: str) -> bool:
    try:
        return subprocess.run(["modprobe", driver], capture_output=True).returncode == 0
    except OSError:
        return False


def _probe_into(address: str, path: Path, sysfs_root: Path, writer: SysfsWriter, override: str) -> str | None:
    """Set driver_override (empty clears it), ask the kernel to probe, return the driver it chose."""
    writer.write(path / "driver_override", f"{override}\n")
    writer.write(sysfs_root / DRIVERS_PROBE, address)
    return _settle(path, lambda d: d is not None)


def take(address: str, driver: str | None = None, force: bool = False, sysfs_root: str | os.PathLike = "/sys",
         proc_root: str | os.PathLike = "/proc", writer: SysfsWriter | None = None,
         modprobe: Callable[[str], bool] = _modprobe) -> str:
    """Take the device from its kernel driver (``driver`` None: leave it driverless); returns what was done."""
    root, writer = Path(sysfs_root), writer or SysfsWriter()
    address, path, dev = _device(address, root, proc_root)
    was = current_driver(path)
    _check_safe(address, dev, force, "take")
    if was == driver or (driver is None and was is None):
        same = f"{address} is already {'on ' + driver if driver else 'without a kernel driver'}: nothing to do"
        return same + "\n" + vfio_report(address, root) if driver == vfio.VFIO_DRIVER else same
    if driver == vfio.VFIO_DRIVER:
        check_iommu(address, root)
    if driver is not None:
        _ensure_driver_loaded(driver, root, modprobe)
    _detach(address, path, root, writer)
    if driver is None:
        return f"{address} taken from {was}: no kernel driver now, ready for ixypipe"
    got = _probe_into(address, path, root, writer, driver)
    if got != driver:
        raise BindError(f"{address}: asked for {driver} but {got or 'no driver'} took the device")
    done = f"{address} moved from {was or 'no driver'} to {driver}"
    return done + "\n" + vfio_report(address, root) if driver == vfio.VFIO_DRIVER else done


def noiommu_mode(sysfs_root: Path) -> bool:
    try:
        return (sysfs_root / NOIOMMU_PARAMETER).read_text().strip() in ("Y", "1")
    except OSError:
        return False


def check_iommu(address: str, sysfs_root: Path) -> None:
    """vfio-pci needs the IOMMU (or the unsafe no-IOMMU mode): refuse to bind when it is off."""
    if vfio.iommu_enabled(sysfs_root) or noiommu_mode(sysfs_root):
        return
    raise BindError(f"cannot hand {address} to vfio-pci: the IOMMU is off (no entries in "
                    f"{sysfs_root / vfio.IOMMU_GROUPS_DIR}). To turn it on, {IOMMU_ON} and reboot. "
                    "(vfio.enable_unsafe_noiommu_mode=1 would let vfio-pci bind without an IOMMU, but then the "
                    "NIC may DMA anywhere in memory and the kernel is tainted; ixypipe's VFIO path needs a real "
                    "IOMMU and refuses that mode: use iommu = \"none\" as root instead)")


def vfio_report(address: str, sysfs_root: Path) -> str:
    """The device's IOMMU group, what else is in it, and what a user without root needs."""
    address = normalize_address(address)
    if not vfio.iommu_enabled(sysfs_root):
        if noiommu_mode(sysfs_root):
            return ("WARNING: no IOMMU, vfio is in enable_unsafe_noiommu_mode: the NIC can DMA anywhere in "
                    "memory, nothing is fenced and the kernel is tainted. ixypipe's VFIO path needs a type-1 "
                    f"IOMMU and will refuse this; {IOMMU_ON}, or run with iommu = \"none\" as root")
        return f"the IOMMU is off (no entries in {sysfs_root / vfio.IOMMU_GROUPS_DIR}); {IOMMU_ON}"
    group = vfio.iommu_group(address, sysfs_root)
    if group is None:
        return f"{address} has no IOMMU group although the IOMMU is on: it cannot be used through VFIO"
    node = vfio.dev_root(sysfs_root) / "vfio" / str(group)
    others = [a for a in vfio.group_devices(group, sysfs_root) if a != address]
    lines = [f"IOMMU group {group} ({node}): " + (f"{address} is alone in it" if not others else
             "also holds " + ", ".join(f"{a} ({vfio.bound_driver(a, sysfs_root) or 'no driver'})" for a in others))]
    blocking = [a for a in others if vfio.bound_driver(a, sysfs_root) not in (vfio.VFIO_DRIVER, None)]
    if blocking:
        lines.append("a group goes to VFIO as a whole: until " + ", ".join(blocking) + " are bound to vfio-pci "
                     "(ixypipe bind ADDRESS --vfio) or have no driver, the group is not viable")
    lines.append(f"to run without root: give the user {node} (chown USER {node}, or a udev rule), raise its "
                 "locked-memory limit (ulimit -l) above the pipeline's DMA memory, and set iommu = \"vfio\" "
                 "on the port")
    return "\n".join(lines)


def _held_by_ixypipe(path: Path) -> bool:
    """An ixypipe driver instance holds a lock on resource0."""
    try:
        fd = os.open(path / "resource0", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)        # closing drops our probe lock too
    return False


def give_back(address: str, driver: str | None = None, force: bool = False, sysfs_root: str | os.PathLike = "/sys",
              proc_root: str | os.PathLike = "/proc", writer: SysfsWriter | None = None,
              modprobe: Callable[[str], bool] = _modprobe) -> str:
    """Return the device to its kernel driver (``driver``: bind that one instead); returns what was done."""
    root, writer = Path(sysfs_root), writer or SysfsWriter()
    address, path, dev = _device(address, root, proc_root)
    was = current_driver(path)
    if driver is None and was is not None and was not in USERSPACE_DRIVERS:
        return f"{address} is already on its kernel driver {was}: nothing to do"
    if driver is not None and was == driver:
        return f"{address} is already on {driver}: nothing to do"
    if not force:
        if dev is None:
            raise BindError(f"{address} is not a network controller; refusing to rebind it (--force to insist)")
        if _held_by_ixypipe(path):
            raise BindError(f"{address} is in use by an ixypipe process (its resource0 is locked); stop that "
                            "pipeline first, or use --force")
    if driver is not None:
        _ensure_driver_loaded(driver, root, modprobe)
    _detach(address, path, root, writer)
    got = _probe_into(address, path, root, writer, driver or "")
    if driver is not None and got != driver:
        raise BindError(f"{address}: asked for {driver} but {got or 'no driver'} took the device")
    if got is None:
        raise BindError(f"no kernel driver claimed {address}: load its driver (for an 82599: modprobe ixgbe) "
                        f"and run 'ixypipe unbind {address}' again")
    return f"{address} moved from {was or 'no driver'} back to {got}"
