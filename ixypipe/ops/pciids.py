"""Vendor and device names from the system's PCI id database (``pci.ids``, as lspci and dpdk-devbind use).

Debian ships it in the ``pci.ids`` package (/usr/share/misc/pci.ids;
``hwdata`` puts it in /usr/share/hwdata).  The format: a vendor line is
four hex digits, two spaces and the name; the vendor's device lines follow,
indented by one tab; subsystem lines (two tabs) and the device classes at
the end of the file (lines starting with ``C``) are not needed here.  When
no database is installed, :class:`PciNames` answers None and callers show
the ids alone.  A database is a regular file of at most MAX_PCI_IDS_BYTES
(today's is about 1.5 MB); anything else is a DataFileError.
"""

from __future__ import annotations

import os
from pathlib import Path

from ixypipe.datafile import read_bounded

MAX_PCI_IDS_BYTES = 64 << 20
PCI_IDS_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


def find_pci_ids(paths: tuple[str, ...] = PCI_IDS_PATHS) -> Path | None:
    """The first PCI id database that exists, or None."""
    for p in paths:
        if os.path.isfile(p):
            return Path(p)
    return None


class PciNames:
    """Names of the vendors and devices in one pci.ids file (or none: every lookup answers None)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.vendors: dict[int, str] = {}
        self.devices: dict[tuple[int, int], str] = {}
        if self.path is not None:
            self._parse(read_bounded(self.path, MAX_PCI_IDS_BYTES).decode("utf-8", errors="replace"))

    @classmethod
    def system(cls) -> PciNames:
        return cls(find_pci_ids())

    def _parse(self, text: str) -> None:
        vendor = None
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            if line.startswith("C "):               # the device classes: nothing more about vendors
                break
            if line.startswith("\t\t"):             # subsystem of a device
                continue
            if line.startswith("\t"):
                ident, _, name = line[1:].partition(" ")
                if vendor is not None and _is_id(ident):
                    self.devices[(vendor, int(ident, 16))] = name.strip()
                continue
            ident, _, name = line.partition(" ")
            vendor = int(ident, 16) if _is_id(ident) else None
            if vendor is not None:
                self.vendors[vendor] = name.strip()

    def vendor(self, vendor: int) -> str | None:
        return self.vendors.get(vendor)

    def device(self, vendor: int, device: int) -> str | None:
        return self.devices.get((vendor, device))

    def describe(self, vendor: int, device: int) -> str | None:
        """'Intel Corporation 82599ES 10-Gigabit SFI/SFP+ Network Connection', or None when unknown."""
        v, d = self.vendor(vendor), self.device(vendor, device)
        if v is None and d is None:
            return None
        return f"{v or f'vendor {vendor:04x}'} {d or f'device {device:04x}'}"


def _is_id(text: str) -> bool:
    return len(text) == 4 and all(c in "0123456789abcdefABCDEF" for c in text)
