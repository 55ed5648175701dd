"""Fake sysfs and procfs trees of network PCI devices, and a fake kernel that reacts to bind writes.

For tests of ``ixypipe devices``, ``bind`` and ``unbind`` that must never
touch the machine's real devices.  :func:`make_tree` lays out
``<root>/sys/bus/pci/devices/<address>/`` (class, vendor, device, config,
driver_override, numa_node, resource0, ``driver`` as a symlink into
``bus/pci/drivers/<name>``, interfaces under ``net/<if>/flags``), the
driver directories with their ``bind``/``unbind`` files, and
``<root>/proc/net/route``.  :class:`FakeKernel` is a SysfsWriter that records
every write and does what Linux does with it: unbind removes the driver
link, bind adds it, drivers_probe binds the override or the device's native
driver when that driver is loaded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from ixypipe.nic.af_packet_abi import IFF_UP
from ixypipe.nic.pci import PCI_DEVICES_DIR
from ixypipe.nic.registers import PCI_CFG_CLASS, PCI_CFG_DEVICE, PCI_CFG_VENDOR
from ixypipe.ops.binding import DRIVERS_PROBE, PCI_DRIVERS_DIR, BindError, SysfsWriter

CONFIG_SIZE = 256
RESOURCE0_SIZE = 4096
NO_OVERRIDE = "(null)"


@dataclass
class FakeDevice:
    address: str
    vendor: int
    device: int
    class_code: int                    # 24 bits: base class, subclass, prog-if
    driver: str | None                 # bound now
    native_driver: str | None = None   # what drivers_probe picks without an override
    interfaces: dict[str, bool] = field(default_factory=dict)   # name -> up
    numa_node: int = 0
    iommu_group: int | None = None     # behind the IOMMU in this group (kernel/iommu_groups/<n>)


@dataclass
class FakeHost:
    sysfs: Path
    proc: Path

    def device_dir(self, address: str) -> Path:
        return self.sysfs / PCI_DEVICES_DIR / address

    def driver_of(self, address: str) -> str | None:
        link = self.device_dir(address) / "driver"
        return link.readlink().name if link.is_symlink() else None


def _link_driver(sysfs: Path, address: str, driver: str) -> None:
    dev = sysfs / PCI_DEVICES_DIR / address
    (dev / "driver").symlink_to(f"../../../../{PCI_DRIVERS_DIR}/{driver}")
    (sysfs / PCI_DRIVERS_DIR / driver / address).symlink_to(f"../../../../{PCI_DEVICES_DIR}/{address}")


def add_driver(sysfs: Path, name: str) -> None:
    d = sysfs / PCI_DRIVERS_DIR / name
    d.mkdir(parents=True, exist_ok=True)
    for f in ("bind", "unbind", "new_id"):
        (d / f).write_text("")


def make_tree(root: Path, devices: list[FakeDevice], drivers: list[str], routes: dict[str, str] | None = None
              ) -> FakeHost:
    """Build the trees under ``root``; ``routes``: interface -> IPv4 destination as 8 hex digits."""
    sysfs, proc = root / "sys", root / "proc"
    (sysfs / PCI_DEVICES_DIR).mkdir(parents=True)
    (sysfs / DRIVERS_PROBE).write_text("")
    for name in drivers:
        add_driver(sysfs, name)
    for d in devices:
        path = sysfs / PCI_DEVICES_DIR / d.address
        path.mkdir()
        (path / "vendor").write_text(f"{d.vendor:#06x}\n")
        (path / "device").write_text(f"{d.device:#06x}\n")
        (path / "class").write_text(f"{d.class_code:#08x}\n")
        config = bytearray(CONFIG_SIZE)
        struct.pack_into("<H", config, PCI_CFG_VENDOR, d.vendor)
        struct.pack_into("<H", config, PCI_CFG_DEVICE, d.device)
        config[PCI_CFG_CLASS] = d.class_code >> 16
        (path / "config").write_bytes(bytes(config))
        (path / "driver_override").write_text(f"{NO_OVERRIDE}\n")
        (path / "numa_node").write_text(f"{d.numa_node}\n")
        (path / "resource0").write_bytes(bytes(RESOURCE0_SIZE))
        (path / "native_driver").write_text(d.native_driver or "")     # the fake kernel's knowledge
        for iface, up in d.interfaces.items():
            (path / "net" / iface).mkdir(parents=True)
            (path / "net" / iface / "flags").write_text(f"{0x1002 | (IFF_UP if up else 0):#x}\n")
        if d.driver:
            add_driver(sysfs, d.driver)
            _link_driver(sysfs, d.address, d.driver)
        if d.iommu_group is not None:
            group = sysfs / "kernel" / "iommu_groups" / str(d.iommu_group)
            (group / "devices").mkdir(parents=True, exist_ok=True)
            (group / "devices" / d.address).symlink_to(f"../../../../{PCI_DEVICES_DIR}/{d.address}")
            (path / "iommu_group").symlink_to(f"../../../../kernel/iommu_groups/{d.iommu_group}")
    (proc / "net").mkdir(parents=True)
    lines = ["Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"]
    for iface, dest in (routes or {}).items():
        lines.append(f"{iface}\t{dest}\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0")
    (proc / "net" / "route").write_text("\n".join(lines) + "\n")
    return FakeHost(sysfs, proc)


class FakeKernel(SysfsWriter):
    """Applies bind, unbind, driver_override and drivers_probe writes to a fake tree, and records them."""

    def __init__(self, host: FakeHost):
        self.host = host
        self.writes: list[tuple[str, str]] = []     # (path relative to the sysfs root, value)

    def write(self, path: Path, value: str) -> None:
        sysfs = self.host.sysfs
        rel = path.relative_to(sysfs)
        self.writes.append((str(rel), value))
        parts = rel.parts
        if str(rel) == DRIVERS_PROBE:
            self._probe(value.strip())
        elif parts[-1] == "driver_override":
            path.write_text(f"{value.strip() or NO_OVERRIDE}\n")
        elif str(rel.parent.parent) == PCI_DRIVERS_DIR and parts[-1] in ("bind", "unbind"):
            driver, address = parts[-2], value.strip()
            dev = self.host.device_dir(address)
            if parts[-1] == "unbind":
                if self.host.driver_of(address) != driver:
                    raise BindError(f"writing {value!r} to {path} failed: No such device")
                (dev / "driver").unlink()
                (sysfs / PCI_DRIVERS_DIR / driver / address).unlink()
            else:
                _link_driver(sysfs, address, driver)
        else:
            path.write_text(value)

    def _probe(self, address: str) -> None:
        dev = self.host.device_dir(address)
        if self.host.driver_of(address) is not None:
            return
        override = (dev / "driver_override").read_text().strip()
        choice = override if override != NO_OVERRIDE else (dev / "native_driver").read_text().strip()
        if choice and (self.host.sysfs / PCI_DRIVERS_DIR / choice).is_dir():
            _link_driver(self.host.sysfs, address, choice)
