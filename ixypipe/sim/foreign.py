"""A foreign driver process's DMA memory, found through /proc: the model's IOMMU for any driver.

A driver that knows nothing of ixypipe allocates its descriptor rings and
packet buffers itself, in hugetlbfs memory (named files, files unlinked at
once, or MAP_HUGETLB), and writes the physical addresses its own pagemap
gives into the descriptors.  This module finds that memory as root:

* the driver: every process that maps a served port's register file
  (matched by device and inode in ``/proc/PID/maps``, so a bind mount in
  another mount namespace is found too) or holds it open (``/proc/PID/fd``:
  a legacy virtio I/O BAR is read and written, not mapped); :func:`pids_mapping`;
* its hugepage mappings: lines of ``/proc/PID/maps`` on a hugetlbfs mount
  of *that process's* mount table (``/proc/PID/mountinfo``) or on the
  kernel's internal one (``/anon_hugepage``); :func:`hugepage_mappings`;
* their physical pages: ``/proc/PID/pagemap``, one read per mapping;
  :func:`physical_pages`;
* access: the ``/proc/PID/map_files/<start>-<end>`` entry of each mapping
  opened and mmapped MAP_SHARED at the mapping's file offset (this works
  for unlinked hugetlbfs files too); :class:`ForeignRegion`.

:class:`ForeignDma` is a :class:`~ixypipe.sim.dma.DmaSpace` built from
those regions instead of ixypipe arenas.  It starts empty and re-reads the
driver's mappings whenever an address does not resolve (the driver may map
more memory at any time), so a descriptor outside the driver's DMA memory
is still a fault, reported by the model, and never a stray write.  When
the driver processes are all gone, :meth:`ForeignDma.driver_left` says so
and :meth:`ForeignDma.release` unmaps everything (the hugepages go back);
a lookup that finds no driver process at all raises :class:`DriverLeft`
(a dead driver's queue on memory the model never saw), and the world
resets the ports for the next driver instead of reporting a fault.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ixypipe.layout import HUGEPAGE_SIZE, PAGE_SIZE, PAGEMAP_ENTRY_SIZE, PAGEMAP_PFN_MASK, PAGEMAP_PRESENT
from ixypipe.memory.hugepages import _mount_pagesize
from ixypipe.sim.dma import DmaSpace

log = logging.getLogger(__name__)
PROC = Path("/proc")
ANON_HUGEPAGE_PATH = "/anon_hugepage"       # how MAP_HUGETLB mappings are named in /proc/PID/maps
MOUNTINFO_SEPARATOR = "-"


class ForeignMemoryError(Exception):
    """A foreign process's memory cannot be read (not root, process gone, no such mapping)."""


class DriverLeft(Exception):
    """A DMA lookup found no driver process any more: whatever the device still does is a dead
    driver's set-up (a queue it enabled on memory the model never saw); the caller resets the ports."""


@dataclass(frozen=True)
class HugeMapping:
    """One hugepage mapping of a process, as /proc/PID/maps shows it."""
    pid: int
    start: int
    end: int
    file_offset: int
    device: tuple[int, int]       # (major, minor) of the file's filesystem
    inode: int
    path: str
    page_size: int

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def key(self) -> tuple:
        return (self.pid, self.start, self.end, self.file_offset, self.device, self.inode)


def _parse_maps_line(line: str) -> tuple[int, int, str, int, tuple[int, int], int, str] | None:
    parts = line.split(maxsplit=5)
    if len(parts) < 5:
        return None
    start, end = (int(x, 16) for x in parts[0].split("-"))
    major, minor = (int(x, 16) for x in parts[3].split(":"))
    return start, end, parts[1], int(parts[2], 16), (major, minor), int(parts[4]), (
        parts[5].rstrip("\n") if len(parts) > 5 else "")


def hugetlbfs_devices(pid: int) -> dict[tuple[int, int], int]:
    """(major, minor) -> page size of every hugetlbfs mount in the mount namespace of ``pid``."""
    try:
        lines = (PROC / str(pid) / "mountinfo").read_text().splitlines()
    except OSError as exc:
        raise ForeignMemoryError(f"cannot read the mount table of process {pid}: {exc}") from None
    devices = {}
    for line in lines:
        fields = line.split()
        if MOUNTINFO_SEPARATOR not in fields:
            continue
        tail = fields[fields.index(MOUNTINFO_SEPARATOR) + 1:]
        if len(tail) >= 3 and tail[0] == "hugetlbfs":
            major, minor = (int(x) for x in fields[2].split(":"))
            devices[(major, minor)] = _mount_pagesize(tail[2]) or HUGEPAGE_SIZE
    return devices


def hugepage_mappings(pid: int) -> list[HugeMapping]:
    """The shared, read-write hugepage mappings of process ``pid`` (its possible DMA memory)."""
    devices = hugetlbfs_devices(pid)
    try:
        lines = (PROC / str(pid) / "maps").read_text().splitlines()
    except OSError as exc:
        raise ForeignMemoryError(f"cannot read the memory map of process {pid}: {exc}") from None
    found = []
    for line in lines:
        parsed = _parse_maps_line(line)
        if parsed is None:
            continue
        start, end, perms, offset, dev, inode, path = parsed
        if not perms.startswith("rw") or inode == 0:
            continue
        if dev in devices:
            page_size = devices[dev]
        elif path.startswith(ANON_HUGEPAGE_PATH):
            page_size = HUGEPAGE_SIZE
        else:
            continue
        found.append(HugeMapping(pid, start, end, offset, dev, inode, path, page_size))
    return found


def physical_pages(mapping: HugeMapping) -> np.ndarray:
    """Physical base of every hugepage of ``mapping`` (0 where the page is not present)."""
    first = mapping.start // PAGE_SIZE
    count = mapping.size // PAGE_SIZE
    try:
        with open(PROC / str(mapping.pid) / "pagemap", "rb") as f:
            f.seek(first * PAGEMAP_ENTRY_SIZE)
            raw = f.read(count * PAGEMAP_ENTRY_SIZE)
    except OSError as exc:
        raise ForeignMemoryError(f"cannot read the pagemap of process {mapping.pid}: {exc}") from None
    entries = np.frombuffer(raw, "<u8")[::mapping.page_size // PAGE_SIZE]
    pfn = entries & np.uint64(PAGEMAP_PFN_MASK)
    present = (entries & np.uint64(PAGEMAP_PRESENT)) != 0
    return np.where(present & (pfn != 0), pfn * np.uint64(PAGE_SIZE), np.uint64(0))


class ForeignRegion:
    """One hugepage mapping of the driver, mapped here too; duck-types what DmaSpace needs of an Arena."""

    def __init__(self, mapping: HugeMapping, phys: np.ndarray):
        self.mapping = mapping
        self.name = f"pid {mapping.pid} {mapping.start:#x}-{mapping.end:#x} {mapping.path}"
        link = PROC / str(mapping.pid) / "map_files" / f"{mapping.start:x}-{mapping.end:x}"
        try:
            fd = os.open(link, os.O_RDWR)
        except OSError as exc:
            raise ForeignMemoryError(f"cannot open {link} (needs root): {exc}") from None
        try:
            self._mm = mmap.mmap(fd, mapping.size, flags=mmap.MAP_SHARED,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=mapping.file_offset)
        finally:
            os.close(fd)
        self.buf = np.frombuffer(self._mm, np.uint8)
        self.phys = phys
        self.usable = phys != 0

    def dma_table(self) -> tuple[np.ndarray, np.ndarray, int]:
        pages = np.flatnonzero(self.usable)
        offsets = pages.astype(np.uint64) * np.uint64(self.mapping.page_size)
        return self.phys[pages], offsets, self.mapping.page_size

    def close(self) -> None:
        self.buf = None
        try:
            self._mm.close()
        except BufferError:
            pass        # a view still lives (a ring the model latched): it holds the mmap, unmapped when it goes


def _file_id(path: Path) -> tuple[tuple[int, int], int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino


def _maps_file(pid: int, files: set) -> bool:
    try:
        text = (PROC / str(pid) / "maps").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        parsed = _parse_maps_line(line)
        if parsed is not None and (parsed[4], parsed[5]) in files:
            return True
    return False


def _holds_file(pid: int, files: set) -> bool:
    """``pid`` has one of ``files`` open (a legacy virtio I/O BAR is read and written, never mapped)."""
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:
        return False
    return any(_file_id(fd) in files for fd in fds)


def pids_mapping(paths: list[Path], exclude: set[int] | frozenset = frozenset(),
                 candidates: list[int] | None = None) -> list[int]:
    """Processes (other than ``exclude``) that have any of ``paths`` mapped or open, by device and inode."""
    files = {fid for fid in (_file_id(p) for p in paths) if fid is not None}
    if not files:
        return []
    if candidates is None:
        candidates = sorted(int(e.name) for e in PROC.iterdir() if e.name.isdigit())
    return [pid for pid in candidates if pid not in exclude and (_maps_file(pid, files) or _holds_file(pid, files))]


class ForeignDma(DmaSpace):
    """The DMA space of whatever processes map ``bar_files``: their hugepage memory, re-read on a miss."""

    def __init__(self, bar_files: list[Path], exclude_pids: set[int] | None = None):
        self.bar_files = [Path(p) for p in bar_files]
        self.exclude = set(exclude_pids if exclude_pids is not None else {os.getpid()})
        self.driver_pids: list[int] = []
        self._regions: dict[tuple, ForeignRegion] = {}
        self.refreshes = 0
        super().__init__([])

    def resolve(self, addr, length):
        """As DmaSpace.resolve, re-reading the driver's memory on a miss; raises DriverLeft when that
        finds no driver process at all (the table is then empty and nothing can resolve)."""
        if len(self.base):
            ok, owner, offset = super().resolve(addr, length)
            if ok.all() or not self.refresh():
                return ok, owner, offset
        else:
            self.refresh()
        if not self.driver_pids:
            raise DriverLeft("no process maps a served BAR any more (the driver left or died)")
        if not len(self.base):          # a driver without hugepage memory: no address can resolve
            n = np.shape(addr)[0] if np.ndim(addr) else 1
            return np.zeros(n, bool), np.zeros(n, np.int64), np.zeros(n, np.int64)
        return super().resolve(addr, length)

    def after_miss(self) -> bool:
        """A compiled walk's miss: re-read, and raise DriverLeft when no driver process is left."""
        changed = self.refresh()
        if not self.driver_pids:
            raise DriverLeft("no process maps a served BAR any more (the driver left or died)")
        return changed

    def refresh(self) -> bool:
        """Re-read the driver's processes and hugepage mappings; True when the DMA table changed."""
        self.refreshes += 1
        pids = pids_mapping(self.bar_files, self.exclude)     # all of /proc (a few ms): a miss is rare
        mappings = []
        for pid in pids:
            try:
                mappings += hugepage_mappings(pid)
            except ForeignMemoryError as exc:
                log.warning("driver process %d: %s", pid, exc)
        keys = [m.key for m in mappings]
        phys = {}
        for m in mappings:
            try:
                phys[m.key] = physical_pages(m)
            except ForeignMemoryError as exc:
                log.warning("%s", exc)
        known = {k: r for k, r in self._regions.items() if k in phys and np.array_equal(r.phys, phys[k])}
        if pids == self.driver_pids and known.keys() == set(k for k in keys if k in phys):
            return False
        if pids != self.driver_pids:
            log.info("driver process(es) %s map the served BAR(s)", pids or "none")
        self.driver_pids = pids
        regions = {}
        seen = np.zeros(0, np.uint64)
        for m in mappings:
            if m.key not in phys:
                continue
            region = known.get(m.key)
            if region is None:
                try:
                    region = ForeignRegion(m, phys[m.key].copy())
                except ForeignMemoryError as exc:
                    log.warning("%s", exc)
                    continue
            # one physical page mapped twice (two processes, one file) is registered once
            region.usable = (region.phys != 0) & ~np.isin(region.phys, seen)
            seen = np.concatenate([seen, region.phys[region.usable]])
            regions[m.key] = region
        gone = [r for k, r in self._regions.items() if k not in regions]
        self._regions = regions
        DmaSpace.__init__(self, list(regions.values()))
        for region in gone:     # a ring view still on it keeps the mapping until the view goes
            region.close()
        log.info("DMA space: %d hugepage mapping(s), %d MiB, of driver process(es) %s", len(regions),
                 int(self.size.sum()) >> 20, pids)
        return True

    def driver_left(self) -> bool:
        """True when processes were driving the port and none of them maps a served BAR any more."""
        if not self.driver_pids:
            return False
        return not pids_mapping(self.bar_files, self.exclude, self.driver_pids)

    def release(self) -> None:
        """Forget the driver and unmap its memory (call after the model dropped its ring views)."""
        self.driver_pids = []
        regions = list(self._regions.values())
        self._regions = {}
        DmaSpace.__init__(self, [])
        for region in regions:
            region.close()

    def close(self) -> None:
        self.release()
