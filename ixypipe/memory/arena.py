"""The DMA arena: one shared file that every ixypipe process maps.

The supervisor creates it (a hugetlbfs file, MAP_SHARED, mlocked; or a
/dev/shm file on 4 KiB pages when hugepages or root are missing) and carves
named regions from it: descriptor rings, packet buffers, free lists, SPSC
rings, counters.  Other processes attach by path and find regions by name in
the header.  Only offsets cross process boundaries.

Physical addresses come from /proc/self/pagemap, read once by the creator
for every hugepage and stored in the ``arena.phys`` region.  On a fallback
arena there is no physical contiguity, so the arena hands out simulated I/O
addresses (a per-arena window above SIM_IOVA_BASE, plus the offset) that only the
software 82599 accepts.

Every file is created 0600 under an unpredictable name that starts with the
creator's pid (``ixypipe-<pid>-[<tag>-]<64 random bits>``).  The creator
removes it on :meth:`Arena.destroy` or, failing that, at interpreter exit;
files whose creator died anyway are found by :func:`stale_objects` (the pid
is gone, or was reused by a process younger than the file) and removed by
:func:`remove_stale`, which the supervisor and ``ixypipe cleanup`` call.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import mmap
import os
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from ixypipe.layout import (
    ARENA_DATA_OFFSET,
    ARENA_FLAG_HUGEPAGES,
    ARENA_FLAG_NO_PHYS,
    ARENA_HEADER_DTYPE,
    ARENA_MAGIC,
    ARENA_MAX_REGIONS,
    ARENA_MIN_ALIGN,
    ARENA_PHYS_REGION,
    ARENA_PREFIX,
    ARENA_REGION_DTYPE,
    ARENA_REGION_NAME_LEN,
    ARENA_TABLE_OFFSET,
    ARENA_VERSION,
    HUGEPAGE_SHIFT,
    HUGEPAGE_SIZE,
    PAGE_SIZE,
    PAGEMAP_ENTRY_SIZE,
    PAGEMAP_PFN_MASK,
    PAGEMAP_PRESENT,
    SIM_IOVA_BASE,
    SIM_IOVA_SLOTS,
    SIM_IOVA_WINDOW,
)
from ixypipe.memory import hugepages

log = logging.getLogger(__name__)
SHM_DIR = Path("/dev/shm")
_warned_fallback = False
# files this interpreter created and has not removed yet: path -> creator pid
_created: dict[Path, int] = {}
# a pid reused by a process started this long after the file is not its creator
# (a process's start time is only known to a clock tick, boot time to a second)
PID_REUSE_SLACK_S = 2.0
# one u64 physical address per hugepage in the arena.phys region
_PHYS_ENTRY_SIZE = np.dtype(np.uint64).itemsize
# posix_ipc semaphores live in /dev/shm as "sem.<name>"
_SHM_SEM_PREFIX = "sem."


class ArenaError(Exception):
    """The arena cannot be created, attached or carved as asked."""


@dataclass(frozen=True)
class Region:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class RegionSize:
    """What one region asks of an arena: its bytes, alignment, and whether it must sit in one 2 MiB page."""
    size: int
    align: int = ARENA_MIN_ALIGN
    within_page: bool = False

    def worst_case(self) -> int:
        """The most arena bytes carving it can take, padding in front included, wherever it lands."""
        pad = max(self.align, ARENA_MIN_ALIGN) - 1
        if self.within_page:
            pad += self.size - 1        # a region that would cross a page moves to the next one
        return self.size + pad


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _mlock(mm: mmap.mmap, size: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    return libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) == 0


def virt_to_phys(addresses: np.ndarray | list[int], pagemap: str = "/proc/self/pagemap") -> np.ndarray:
    """Physical addresses of mapped virtual addresses via pagemap (needs root).

    The pages must be present (touched and, for DMA, locked).  An entry
    without the present bit or with PFN 0 (what a non-root reader sees)
    is an error, not a silent zero: a DMA to address 0 corrupts memory.
    """
    out = np.empty(len(addresses), dtype=np.uint64)
    with open(pagemap, "rb") as f:
        for i, virt in enumerate(addresses):
            virt = int(virt)
            f.seek((virt // PAGE_SIZE) * PAGEMAP_ENTRY_SIZE)
            (entry,) = struct.unpack("<Q", f.read(PAGEMAP_ENTRY_SIZE))
            pfn = entry & PAGEMAP_PFN_MASK
            if not entry & PAGEMAP_PRESENT or pfn == 0:
                raise ArenaError(
                    f"no physical address for virtual address {virt:#x} (pagemap entry {entry:#x}): "
                    "the page is not present or the reader is not root")
            out[i] = pfn * PAGE_SIZE + virt % PAGE_SIZE
    return out


class Arena:
    """A mapped arena.  Use :meth:`create` or :meth:`attach`, never the constructor."""

    def __init__(self, path: Path, mm: mmap.mmap, created: bool):
        self.path = path
        self.mm = mm
        self.created = created
        self.buf = np.frombuffer(mm, dtype=np.uint8)
        self.header = self.buf[:ARENA_HEADER_DTYPE.itemsize].view(ARENA_HEADER_DTYPE)[0:1]
        table_end = ARENA_TABLE_OFFSET + ARENA_MAX_REGIONS * ARENA_REGION_DTYPE.itemsize
        self.table = self.buf[ARENA_TABLE_OFFSET:table_end].view(ARENA_REGION_DTYPE)
        self._page_phys: np.ndarray | None = None

    # ---- life cycle -------------------------------------------------------
    @classmethod
    def create(cls, size: int, hugepages_mode: str = "auto", directory: str | os.PathLike | None = None,
               tag: str = "", physical: bool = True) -> Arena:
        """Create an arena of at least ``size`` usable bytes.

        ``hugepages_mode``: "auto" (hugepages when root and enough are free,
        else the /dev/shm fallback with one warning), "require" (error when
        hugepages cannot be had) or "never".  ``physical=False``: no device
        will be given a physical address of it (VFIO ports take IOVAs, kernel
        interfaces none), so /proc/self/pagemap is never read and hugepages
        need no root.
        """
        if hugepages_mode not in ("auto", "require", "never"):
            raise ArenaError(f"hugepages mode must be auto, require or never, not {hugepages_mode!r}")
        if size <= 0:
            raise ArenaError(f"arena size must be positive, got {size}")
        use_huge, why_not = False, ""
        if hugepages_mode != "never":
            use_huge, why_not, directory = cls._hugepage_plan(size, directory, physical)
            if not use_huge and hugepages_mode == "require":
                raise ArenaError(f"hugepages required but unavailable: {why_not}")
        if use_huge:
            total = _pages_for(size) * HUGEPAGE_SIZE
            path = Path(directory) / cls._unique_name(tag)
        else:
            global _warned_fallback
            if not _warned_fallback and hugepages_mode == "auto":
                log.warning("no hugepages (%s): using a /dev/shm arena on 4 KiB pages; DMA addresses are "
                            "simulated and only the software 82599 accepts them", why_not)
                _warned_fallback = True
            total = _round_up(ARENA_DATA_OFFSET + size, PAGE_SIZE)
            path = SHM_DIR / cls._unique_name(tag)
            _check_shm_room(total)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            raise ArenaError(f"arena file {path} already exists") from None
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, total)
            mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if use_huge:
                raise ArenaError(f"cannot map {total >> 20} MiB of hugepages at {path}: {exc}; "
                                 + hugepages.reserve_advice(total // HUGEPAGE_SIZE)) from exc
            raise ArenaError(f"cannot map {total} bytes at {path}: {exc}") from exc
        os.close(fd)
        _created[path] = os.getpid()
        arena = cls(path, mm, created=True)
        try:
            arena._init_header(total, use_huge, physical)
        except BaseException:
            arena.destroy()
            raise
        return arena

    @staticmethod
    def size_for(regions: Iterable[RegionSize]) -> int:
        """The ``size`` to :meth:`create` an arena with so that ``regions`` fit, carved in any order.

        Each region counts with its worst-case alignment padding; :meth:`create`
        adds the header, the region table and the physical-address table itself.
        """
        regions = list(regions)
        if len(regions) >= ARENA_MAX_REGIONS:
            raise ArenaError(f"{len(regions)} regions asked for; an arena holds at most {ARENA_MAX_REGIONS - 1} "
                             "besides its physical-address table")
        return sum(r.worst_case() for r in regions)

    @staticmethod
    def _unique_name(tag: str) -> str:
        tag = "".join(c for c in tag if c.isalnum())[:16]
        return f"{ARENA_PREFIX}{os.getpid()}-{tag + '-' if tag else ''}{secrets.token_hex(8)}"

    @staticmethod
    def _hugepage_plan(size: int, directory, physical: bool = True) -> tuple[bool, str, Path | None]:
        why_not, mount = hugepage_shortfall([size], physical, directory)
        return not why_not, why_not, mount

    def _init_header(self, total: int, use_huge: bool, physical: bool = True) -> None:
        if not _mlock(self.mm, total) and use_huge:
            raise ArenaError(f"mlock of the {total >> 20} MiB hugepage arena failed")
        self.buf[:ARENA_DATA_OFFSET] = 0
        h = self.header
        h["size"] = total
        h["version"] = ARENA_VERSION
        h["n_regions"] = 0
        h["next_free"] = ARENA_DATA_OFFSET
        h["flags"] = (ARENA_FLAG_HUGEPAGES if use_huge else 0) | (0 if physical else ARENA_FLAG_NO_PHYS)
        h["owner_pid"] = os.getpid()
        h["iova_base"] = 0 if use_huge else SIM_IOVA_BASE + secrets.randbelow(SIM_IOVA_SLOTS) * SIM_IOVA_WINDOW
        if use_huge and physical:
            n_pages = total // HUGEPAGE_SIZE
            base = self.buf.ctypes.data
            phys = virt_to_phys([base + i * HUGEPAGE_SIZE for i in range(n_pages)])
            region = self.alloc(ARENA_PHYS_REGION, n_pages * _PHYS_ENTRY_SIZE, align=_PHYS_ENTRY_SIZE)
            self.view(region, np.uint64)[:] = phys
        h["magic"] = ARENA_MAGIC   # last: an attacher never sees a half-made header

    @classmethod
    def attach(cls, path: str | os.PathLike) -> Arena:
        """Map an existing arena by its path (its name is ``path``'s last component)."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise ArenaError(f"no arena at {path}") from None
        except PermissionError:
            raise ArenaError(f"no permission to open arena {path} (it is created 0600 by its owner)") from None
        try:
            size = os.fstat(fd).st_size
            if size < ARENA_DATA_OFFSET:
                raise ArenaError(f"{path} is too small ({size} bytes) to be an ixypipe arena")
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        arena = cls(path, mm, created=False)
        if int(arena.header["magic"][0]) != ARENA_MAGIC:
            arena.close()
            raise ArenaError(f"{path} is not an ixypipe arena (bad magic; or its creator has not "
                             "finished making it)")
        version, recorded = int(arena.header["version"][0]), arena.size
        if version != ARENA_VERSION or recorded != size:
            arena.close()
            raise ArenaError(f"{path}: arena version {version} of {recorded} bytes in a {size}-byte file; "
                             f"this ixypipe reads version {ARENA_VERSION}")
        if arena.hugepages:
            _mlock(mm, size)
        return arena

    def close(self) -> None:
        """Unmap (numpy views into the arena must be gone by then)."""
        if self.mm is None:
            return
        self.header = self.table = self.buf = None
        self._page_phys = None
        try:
            self.mm.close()
        except BufferError:
            # a view is still alive somewhere; the mapping goes when it does
            pass
        self.mm = None

    def destroy(self) -> None:
        """Unmap and remove the backing file (the creator does this at exit)."""
        self.close()
        self.path.unlink(missing_ok=True)
        _created.pop(self.path, None)

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc) -> None:
        if self.created:
            self.destroy()
        else:
            self.close()

    # ---- properties -------------------------------------------------------
    @property
    def size(self) -> int:
        return int(self.header["size"][0])

    @property
    def hugepages(self) -> bool:
        return bool(int(self.header["flags"][0]) & ARENA_FLAG_HUGEPAGES)

    @property
    def physical(self) -> bool:
        """Whether devices may be given this arena's physical (or simulated I/O) addresses: False when it was
        made for VFIO ports only (``create(physical=False)``), whose IOVAs need no pagemap."""
        return not int(self.header["flags"][0]) & ARENA_FLAG_NO_PHYS

    @property
    def iova_base(self) -> int:
        """Simulated I/O address of offset 0 on a fallback arena (0 on hugepages)."""
        return int(self.header["iova_base"][0])

    @property
    def name(self) -> str:
        return self.path.name

    # ---- regions ----------------------------------------------------------
    def alloc(self, name: str, size: int, align: int = ARENA_MIN_ALIGN, within_page: bool = False) -> Region:
        """Carve a named region.  Only the creating process adds regions.

        ``within_page``: the region must not cross a 2 MiB page, so it is
        physically contiguous (descriptor rings).
        """
        raw = name.encode()
        if not raw or len(raw) >= ARENA_REGION_NAME_LEN:
            raise ArenaError(f"region name {name!r} must be 1..{ARENA_REGION_NAME_LEN - 1} bytes")
        if size <= 0:
            raise ArenaError(f"region {name!r}: size must be positive, got {size}")
        if align <= 0 or align & (align - 1):
            raise ArenaError(f"region {name!r}: alignment {align} is not a power of two")
        if self.find(name) is not None:
            raise ArenaError(f"region {name!r} already exists in arena {self.name}")
        n = int(self.header["n_regions"][0])
        if n >= ARENA_MAX_REGIONS:
            raise ArenaError(f"arena {self.name} holds at most {ARENA_MAX_REGIONS} regions")
        align = max(align, ARENA_MIN_ALIGN)
        offset = _round_up(int(self.header["next_free"][0]), align)
        if within_page:
            if size > HUGEPAGE_SIZE:
                raise ArenaError(f"region {name!r}: {size} bytes cannot fit one 2 MiB page")
            if offset // HUGEPAGE_SIZE != (offset + size - 1) // HUGEPAGE_SIZE:
                offset = _round_up(offset, HUGEPAGE_SIZE)
        if offset + size > self.size:
            raise ArenaError(f"arena {self.name} is full: region {name!r} needs {size} bytes at offset "
                             f"{offset}, the arena has {self.size}; make the arena larger")
        entry = self.table[n]
        entry["name"] = raw
        entry["offset"] = offset
        entry["size"] = size
        self.header["next_free"] = offset + size
        self.header["n_regions"] = n + 1
        return Region(name, offset, size)

    def find(self, name: str) -> Region | None:
        raw = name.encode()
        n = int(self.header["n_regions"][0])
        for entry in self.table[:n]:
            if bytes(entry["name"]) == raw:
                return Region(name, int(entry["offset"]), int(entry["size"]))
        return None

    def region(self, name: str) -> Region:
        found = self.find(name)
        if found is None:
            raise ArenaError(f"arena {self.name} has no region {name!r}")
        return found

    def regions(self) -> list[Region]:
        n = int(self.header["n_regions"][0])
        return [Region(bytes(e["name"]).decode(), int(e["offset"]), int(e["size"])) for e in self.table[:n]]

    def view(self, region: Region, dtype=np.uint8) -> np.ndarray:
        """A numpy view of a whole region as ``dtype``."""
        dtype = np.dtype(dtype)
        return self.buf[region.offset:region.offset + region.size - region.size % dtype.itemsize].view(dtype)

    # ---- DMA addresses ----------------------------------------------------
    def phys(self, offsets):
        """DMA address(es) of arena offset(s): physical on hugepages, simulated I/O otherwise."""
        offsets = np.asarray(offsets, dtype=np.uint64)
        if not self.hugepages:
            return offsets + np.uint64(self.iova_base)
        if not self.physical:           # made for IOVA-only ports: 0 = no physical address known
            return np.zeros(offsets.shape, np.uint64)
        if self._page_phys is None:
            self._page_phys = self.view(self.region(ARENA_PHYS_REGION), np.uint64)
        pages = offsets >> np.uint64(HUGEPAGE_SHIFT)
        return self._page_phys[pages] + (offsets & np.uint64(HUGEPAGE_SIZE - 1))

    def dma_table(self) -> tuple[np.ndarray, np.ndarray, int]:
        """(sorted physical page bases, their arena offsets, page size) to map DMA addresses back."""
        if not self.hugepages:
            return (np.array([self.iova_base], np.uint64), np.array([0], np.uint64), self.size)
        if not self.physical:           # no physical address reaches it: nothing maps
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64), HUGEPAGE_SIZE
        phys = self.view(self.region(ARENA_PHYS_REGION), np.uint64)
        order = np.argsort(phys, kind="stable")
        return phys[order].copy(), (order.astype(np.uint64) << np.uint64(HUGEPAGE_SHIFT)), HUGEPAGE_SIZE


def hugepage_shortfall(sizes: Iterable[int], physical: bool = True, directory=None,
                       sysfs_root: str | os.PathLike = "/sys", mounts_file: str = "/proc/mounts"
                       ) -> tuple[str, Path | None]:
    """Why arenas of these usable ``sizes`` (made one after another) cannot all be on 2 MiB hugepages here,
    saying how to reserve and mount them ("" when they can), and the hugetlbfs mount they would go to."""
    sizes = list(sizes)
    if physical and os.geteuid() != 0:
        return "not root, so physical addresses cannot be read", None
    mounts = [Path(directory)] if directory else hugepages.hugetlbfs_mounts(mounts_file=mounts_file)
    need = sum(_pages_for(size) for size in sizes)
    if not mounts:
        return "no hugetlbfs mount; " + hugepages.reserve_advice(need), None
    free = hugepages.free_hugepages(sysfs_root=sysfs_root)
    if free < need:
        whose = "the arena needs" if len(sizes) == 1 else f"the {len(sizes)} arenas need"
        return (f"{whose} {need} free 2 MiB hugepages but {free} are free; "
                + hugepages.reserve_advice(hugepages.total_hugepages(sysfs_root=sysfs_root) + need - free)), None
    return "", mounts[0]


def _pages_for(size: int) -> int:
    """Hugepages for ``size`` usable bytes after the header and the arena.phys region."""
    pages = 1
    while True:
        phys_table = _round_up(pages * _PHYS_ENTRY_SIZE, ARENA_MIN_ALIGN)
        need = _round_up(ARENA_DATA_OFFSET + phys_table + size, HUGEPAGE_SIZE) // HUGEPAGE_SIZE
        if need <= pages:
            return pages
        pages = need


def owner_pid_of(name: str) -> int | None:
    """The creator pid encoded in an arena or shm object name, or None."""
    if name.startswith(_SHM_SEM_PREFIX):
        name = name[len(_SHM_SEM_PREFIX):]
    if not name.startswith(ARENA_PREFIX):
        return None
    pid = name[len(ARENA_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def stale_objects(directories: list[Path] | None = None) -> list[Path]:
    """ixypipe files in /dev/shm and hugetlbfs mounts whose owner process is dead.

    The owner is the pid in the name; a live process with that pid that
    started well after the file was made is a reuse of the pid, so the file
    is stale all the same.
    """
    dirs = directories if directories is not None else [SHM_DIR, *hugepages.hugetlbfs_mounts()]
    stale = []
    for d in dirs:
        try:
            entries = list(Path(d).iterdir())
        except OSError:
            continue
        for entry in entries:
            pid = owner_pid_of(entry.name)
            if pid is None:
                continue
            try:
                made = entry.stat().st_ctime
            except OSError:
                continue        # removed meanwhile
            if not _owner_alive(pid, made):
                stale.append(entry)
    return stale


def remove_stale(directories: list[Path] | None = None) -> list[Path]:
    """Remove what :func:`stale_objects` finds and say so; returns the paths removed."""
    removed = []
    for path in stale_objects(directories):
        try:
            path.unlink()
        except OSError as exc:
            log.warning("could not remove stale %s: %s", path, exc)
            continue
        log.warning("removed stale %s (its owner pid %s is gone)", path, owner_pid_of(path.name))
        removed.append(path)
    return removed


def _owner_alive(pid: int, file_made: float) -> bool:
    """Whether process ``pid`` is alive and old enough to have made a file at ``file_made``."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True     # cannot tell: keep the file
    return started <= file_made + PID_REUSE_SLACK_S


def _check_shm_room(total: int) -> None:
    try:
        st = os.statvfs(SHM_DIR)
    except OSError as exc:
        raise ArenaError(f"cannot use {SHM_DIR} for the fallback arena: {exc}") from exc
    free = st.f_bavail * st.f_frsize
    if total > free:
        raise ArenaError(f"the {total >> 20} MiB fallback arena does not fit {SHM_DIR} "
                         f"({free >> 20} MiB free); make the arena smaller or use hugepages")


@atexit.register
def _remove_leftovers() -> None:
    """Remove the files this process created and never destroyed (forked children leave them)."""
    me = os.getpid()
    for path, creator in list(_created.items()):
        if creator == me:
            path.unlink(missing_ok=True)
            del _created[path]
