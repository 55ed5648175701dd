"""The host's network PCI devices as ``ixypipe devices`` lists them (like dpdk-devbind --status).

Reads ``<sysfs>/bus/pci/devices/*``: the ``class``, ``vendor`` and
``device`` files (config space when they are missing), the ``driver``
link, ``driver_override``, ``numa_node`` and the kernel interfaces under
``net/`` (or ``*/net/`` for virtio).  An interface is *up* when IFF_UP is set
in its ``flags``; it *carries routes* when /proc/net/route or
/proc/net/ipv6_route (link-local and multicast left out) name it.  Names
come from the system's pci.ids (ixypipe.ops.pciids) when it is installed.
The roots and the database are parameters so tests use fake trees.
Nothing here writes.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.nic.af_packet_abi import IFF_UP
from ixypipe.nic.pci import PCI_DEVICES_DIR, PciError, read_identity
from ixypipe.nic.registers import (
    IXGBE_82599_DEVICE_IDS,
    IXGBE_82599_VF_IDS,
    PCI_CLASS_NETWORK,
    PCI_VENDOR_INTEL,
)
from ixypipe.nic.virtio_regs import NET_DEVICE_IDS, PCI_VENDOR_VIRTIO
from ixypipe.ops.pciids import PciNames

# drivers that hand the device to user space (ixypipe's own driver needs no kernel driver at all)
USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")
IPV6_LOCAL_PREFIXES = ("fe80", "ff")      # link-local and multicast routes exist on every IPv6 interface
CLASS_SHIFT = 16                          # the class file holds base class, subclass, prog-if


@dataclass
class Interface:
    name: str
    up: bool
    routes: list[str] = field(default_factory=list)    # destinations routed through it

    @property
    def active(self) -> bool:
        return self.up and bool(self.routes)


@dataclass
class NetDevice:
    address: str
    vendor: int
    device: int
    driver: str | None
    interfaces: list[Interface]
    driver_override: str | None = None
    numa_node: int = -1
    name: str | None = None            # "Intel Corporation 82599ES 10-Gigabit ..." from pci.ids, when known

    @property
    def kind(self) -> str:
        """'82599', '82599 VF', 'virtio-net' (the NICs ixypipe drives) or ''."""
        if self.vendor == PCI_VENDOR_VIRTIO and self.device in NET_DEVICE_IDS:
            return "virtio-net"
        if self.vendor != PCI_VENDOR_INTEL:
            return ""
        if self.device in IXGBE_82599_DEVICE_IDS:
            return "82599"
        return "82599 VF" if self.device in IXGBE_82599_VF_IDS else ""

    @property
    def userspace(self) -> bool:
        """No kernel driver owns the device (or one that hands it to user space)."""
        return self.driver is None or self.driver in USERSPACE_DRIVERS

    def as_dict(self) -> dict:
        return {"address": self.address, "vendor": f"{self.vendor:04x}", "device": f"{self.device:04x}",
                "name": self.name, "kind": self.kind or None, "driver": self.driver,
                "driver_override": self.driver_override, "numa_node": self.numa_node,
                "ready_for_ixypipe": self.userspace,
                "interfaces": [{"name": i.name, "up": i.up, "routes": i.routes, "active": i.active}
                               for i in self.interfaces]}

    def line(self) -> str:
        parts = [self.address, f"{self.vendor:04x}:{self.device:04x}"]
        if self.name:
            parts.append(f"'{self.name}'")
        if self.kind:
            parts.append(self.kind if self.kind == "virtio-net" else f"Intel {self.kind}")
        if self.interfaces:
            parts.append("if=" + ",".join(i.name for i in self.interfaces))
        parts.append(f"drv={self.driver or 'none'}")
        if self.driver_override:
            parts.append(f"override={self.driver_override}")
        if self.numa_node >= 0:
            parts.append(f"numa={self.numa_node}")
        if any(i.active for i in self.interfaces):
            parts.append("*Active*")
        return " ".join(parts)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _hex(text: str | None) -> int | None:
    try:
        return int(text, 16) if text else None
    except ValueError:
        return None


def routed_interfaces(proc_root: str | os.PathLike = "/proc") -> dict[str, list[str]]:
    """Interface name -> destinations of the routes through it (IPv4 and global IPv6)."""
    routes: dict[str, list[str]] = {}
    lines = (_read(Path(proc_root) / "net" / "route") or "").splitlines()[1:]
    for line in lines:
        parts = line.split()
        if len(parts) >= 8:
            dest, mask = _hex(parts[1]) or 0, _hex(parts[7]) or 0
            text = ".".join(str(b) for b in dest.to_bytes(4, "little")) + f"/{bin(mask).count('1')}"
            routes.setdefault(parts[0], []).append(text)
    for line in (_read(Path(proc_root) / "net" / "ipv6_route") or "").splitlines():
        parts = line.split()
        if len(parts) >= 10 and not parts[0].startswith(IPV6_LOCAL_PREFIXES) and parts[-1] != "lo":
            text = f"{ipaddress.IPv6Address(int(parts[0], 16)).compressed}/{int(parts[1], 16)}"
            routes.setdefault(parts[-1], []).append(text)
    return routes


def _interfaces(path: Path, routes: dict[str, list[str]]) -> list[Interface]:
    found = []
    for net in sorted([*path.glob("net/*"), *path.glob("*/net/*")]):
        flags = _hex(_read(net / "flags")) or 0
        found.append(Interface(net.name, bool(flags & IFF_UP), routes.get(net.name, [])))
    return found


def read_device(path: Path, routes: dict[str, list[str]] | None = None) -> NetDevice | None:
    """The device at ``path`` if it is a network controller, else None."""
    vendor, device = _hex(_read(path / "vendor")), _hex(_read(path / "device"))
    klass = _hex(_read(path / "class"))
    base_class = klass >> CLASS_SHIFT if klass is not None else None
    if vendor is None or device is None or base_class is None:
        try:
            ident = read_identity(path)
        except PciError:
            return None
        vendor, device, base_class = ident.vendor, ident.device, ident.base_class
    if base_class != PCI_CLASS_NETWORK:
        return None
    link = path / "driver"
    driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
    override = _read(path / "driver_override")
    numa = _read(path / "numa_node")
    return NetDevice(path.name, vendor, device, driver, _interfaces(path, routes or {}),
                     None if override in (None, "", "(null)") else override,
                     int(numa) if numa and numa.lstrip("-").isdigit() else -1)


def list_network_devices(sysfs_root: str | os.PathLike = "/sys", proc_root: str | os.PathLike = "/proc",
                         names: PciNames | None = None) -> list[NetDevice]:
    """The network devices, named from ``names`` (a pci.ids database) when given."""
    routes = routed_interfaces(proc_root)
    devices = []
    try:
        entries = sorted((Path(sysfs_root) / PCI_DEVICES_DIR).iterdir())
    except OSError:
        return devices
    for entry in entries:
        dev = read_device(entry, routes)
        if dev is not None:
            if names is not None:
                dev.name = names.describe(dev.vendor, dev.device)
            devices.append(dev)
    return devices


def status_lines(devices: list[NetDevice]) -> list[str]:
    """Grouped like dpdk-devbind --status: ready for ixypipe first, then those a kernel driver owns."""
    ready = [d for d in devices if d.userspace]
    kernel = [d for d in devices if not d.userspace]
    lines = []
    for title, group in (("Network devices ready for ixypipe (no kernel driver, or "
                          + "/".join(USERSPACE_DRIVERS) + ")", ready),
                         ("Network devices using a kernel driver", kernel)):
        lines += [title, "=" * len(title)]
        lines += [d.line() for d in group] or ["<none>"]
        lines.append("")
    n82599 = sum(1 for d in devices if d.kind == "82599")
    nvirtio = sum(1 for d in devices if d.kind == "virtio-net")
    lines.append(f"{len(devices)} network devices, {n82599} of them Intel 82599, {nvirtio} virtio-net "
                 "(take one with: ixypipe bind ADDRESS)")
    return lines
