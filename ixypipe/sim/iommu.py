"""The software 82599's IOMMU mode: every DMA address is an IOVA the driver mapped with VFIO_IOMMU_MAP_DMA.

A real IOMMU translates each address a device puts on the bus through the
page table the kernel built from the driver's ``VFIO_IOMMU_MAP_DMA`` calls,
and blocks (and reports) an access to an IOVA nobody mapped.  Here the
kernel side (the VFIO stand-in behind ``nic/vfio.py``'s seam) appends each
map and unmap to the group's **IOMMU table**, a small append-only file of
JSON lines (:func:`table_path`, :func:`record_map`, :func:`record_unmap`),
and :class:`IommuDma` is the device side: a
:class:`~ixypipe.sim.dma.DmaSpace` whose regions are the live mappings.

A mapping names the process that made it and its virtual address (what
MAP_DMA carries), so the model finds the memory behind it through
``/proc/PID/maps``: the file and file offset backing that address.  When
the file is an arena the model already maps, that mapping is used; any
other file is opened by its path (or, as root, through
``/proc/PID/map_files`` when it was unlinked) and mapped here.  The table
is re-read when it changed, checked once per resolved batch (one stat),
so an unmap takes effect at the next DMA; an address outside the live
mappings is an IOMMU fault, reported by the model, and nothing is read or
written for it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
from pathlib import Path

import numpy as np

from ixypipe.layout import PAGE_SIZE
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.foreign import PROC, _parse_maps_line

log = logging.getLogger(__name__)
TABLE_DIR = "sim-iommu"


class IommuError(Exception):
    """The memory behind a mapping cannot be found or mapped."""


def table_path(root: str | os.PathLike, group: int) -> Path:
    """The IOMMU table of IOMMU group ``group`` in a simulated machine rooted at ``root``."""
    return Path(root) / TABLE_DIR / f"{group}.dma"


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)            # one whole line per writer
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def record_map(path: Path, pid: int, vaddr: int, iova: int, size: int) -> None:
    _append(path, {"op": "map", "pid": pid, "vaddr": vaddr, "iova": iova, "size": size})


def record_unmap(path: Path, iova: int, size: int) -> None:
    _append(path, {"op": "unmap", "iova": iova, "size": size})


def live_mappings(path: Path) -> list[dict]:
    """The mappings in force after replaying the table (an unmap removes mappings inside its range)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    live: dict[int, dict] = {}
    for line in lines:
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["op"] == "map":
            live[rec["iova"]] = rec
        else:
            lo, hi = rec["iova"], rec["iova"] + rec["size"]
            for iova in [i for i, m in live.items() if lo <= i and i + m["size"] <= hi]:
                del live[iova]
    return sorted(live.values(), key=lambda m: m["iova"])


class _Backing:
    """Where a process's virtual range lives: (file device, inode, path, file offset)."""

    def __init__(self, pid: int, vaddr: int, size: int):
        try:
            lines = (PROC / str(pid) / "maps").read_text().splitlines()
        except OSError as exc:
            raise IommuError(f"cannot read the memory map of process {pid}: {exc}") from None
        for line in lines:
            parsed = _parse_maps_line(line)
            if parsed is None:
                continue
            start, end, _perms, offset, dev, inode, path = parsed
            if start <= vaddr < end:
                if vaddr + size > end or inode == 0:
                    raise IommuError(f"process {pid}: [{vaddr:#x}, +{size:#x}) is not inside one file-backed "
                                     "mapping")
                self.pid, self.start, self.end = pid, start, end
                self.dev, self.inode, self.path = dev, inode, path
                self.file_offset = offset + (vaddr - start)
                return
        raise IommuError(f"process {pid} has nothing mapped at {vaddr:#x}")


class IovaRegion:
    """One live mapping: ``size`` bytes at ``iova``, at ``offset`` of ``buf``; duck-types an Arena for DmaSpace."""

    def __init__(self, name: str, iova: int, size: int, buf: np.ndarray, offset: int, mm: mmap.mmap | None = None):
        self.name, self.iova, self.size = name, iova, size
        self.buf, self.offset, self._mm = buf, offset, mm

    def dma_table(self) -> tuple[np.ndarray, np.ndarray, int]:
        return np.array([self.iova], np.uint64), np.array([self.offset], np.uint64), self.size

    def close(self) -> None:
        self.buf = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass            # a ring view the model latched still holds it; unmapped when it goes


def _file_key(st: os.stat_result) -> tuple:
    return (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino


class IommuDma(DmaSpace):
    """The DMA space of one IOMMU group: the live mappings of its table, re-read when the table changes."""

    outside = "not mapped for DMA by the driver (IOMMU fault)"

    def __init__(self, table: str | os.PathLike, arenas: list | None = None):
        self.table = Path(table)
        self.known_arenas = {}
        for arena in arenas or []:
            self.known_arenas[_file_key(os.stat(arena.path))] = arena
        self._stamp = None
        self._regions: dict[tuple, IovaRegion] = {}
        self.faults_seen = 0
        super().__init__([])
        self.refresh()

    def _table_stamp(self):
        try:
            st = os.stat(self.table)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns, st.st_ino

    def refresh(self) -> bool:
        """Re-read the table if it changed; True when the mappings changed."""
        stamp = self._table_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        regions = {}
        for m in live_mappings(self.table):
            key = (m["pid"], m["vaddr"], m["iova"], m["size"])
            region = self._regions.get(key)
            if region is None:
                try:
                    region = self._region(m)
                except (IommuError, OSError) as exc:
                    log.warning("IOMMU mapping %#x+%#x of process %d: %s", m["iova"], m["size"], m["pid"], exc)
                    continue
            regions[key] = region
        gone = [r for k, r in self._regions.items() if k not in regions]
        self._regions = regions
        DmaSpace.__init__(self, list(regions.values()))
        for region in gone:
            region.close()
        log.info("IOMMU table %s: %d mapping(s), %d KiB", self.table, len(regions), int(self.size.sum()) >> 10)
        return True

    def _region(self, m: dict) -> IovaRegion:
        b = _Backing(m["pid"], m["vaddr"], m["size"])
        name = f"IOVA {m['iova']:#x}+{m['size']:#x} (pid {b.pid} {b.path})"
        arena = self.known_arenas.get((b.dev, b.inode))
        if arena is not None and b.file_offset + m["size"] <= len(arena.buf):
            return IovaRegion(name, m["iova"], m["size"], arena.buf, b.file_offset)
        fd = self._open_backing(b)
        try:
            start = b.file_offset - b.file_offset % PAGE_SIZE
            mm = mmap.mmap(fd, m["size"] + (b.file_offset - start), flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
        finally:
            os.close(fd)
        return IovaRegion(name, m["iova"], m["size"], np.frombuffer(mm, np.uint8), b.file_offset - start, mm)

    @staticmethod
    def _open_backing(b: _Backing) -> int:
        path = b.path.removesuffix(" (deleted)")
        try:
            fd = os.open(path, os.O_RDWR)
            if _file_key(os.fstat(fd)) == (b.dev, b.inode):
                return fd
            os.close(fd)
        except OSError:
            pass
        link = PROC / str(b.pid) / "map_files" / f"{b.start:x}-{b.end:x}"
        try:
            return os.open(link, os.O_RDWR)
        except OSError as exc:
            raise IommuError(f"cannot open the file behind the mapping ({path}, or {link} as root): {exc}") from None

    def kernel_tables(self) -> tuple:
        """As DmaSpace's, after the same one-stat check resolve makes: the compiled walks see an unmap at once
        (and never a region this refresh closed)."""
        self.refresh()
        return super().kernel_tables()

    def resolve(self, addr, length):
        self.refresh()                  # one stat: an unmap or a new map takes effect at once
        if len(self.base) == 0:
            n = len(np.atleast_1d(addr))
            ok, owner, offset = np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64)
        else:
            ok, owner, offset = super().resolve(addr, length)
        if not ok.all():
            self.faults_seen += int((~ok).sum())
        return ok, owner, offset

    def close(self) -> None:
        regions = list(self._regions.values())
        self._regions = {}
        DmaSpace.__init__(self, [])
        for region in regions:
            region.close()
