"""The DMA arena: one shared file that every ixypipe process maps.

The supervisor creates it (a hugetlbfs file, MAP_SHARED, mlocked; or a
/dev/shm file on 4 KiB pages when hugepages or root are missing) and carves
named regions from it: descriptor rings, packet buffers, free lists, SPSC
rings, counters.  Other processes attach by path and find regions by name in
the header.  Only offsets cross process boundaries.

An arena made with a ``control_size`` (the pipeline's packet arena) is two
files mapped side by side (memory/mapping.py): the first holds the header,
the physical-address table and the DMA regions (packet buffers), each
starting on a page of the file (2 MiB on hugetlbfs); the second, on /dev/shm
with 4 KiB pages, holds every other region (rings, free lists, the stage
table), each on pages of its own.  Offsets run on from the first file into
the second, so nothing that finds a region by name sees the difference.
What it buys: :meth:`Arena.attach` with ``read_only=True`` maps everything
read-only and :meth:`Arena.grant_writes` then maps just the given regions
writable, so a worker process writes its packet buffers, its rings and its
stage-table row and cannot write anything else (mprotect on hugetlbfs works
only in 2 MiB pages, so rings inside the hugepage file could not be
protected one by one).

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
    ARENA_CONTROL_SUFFIX,
    ARENA_DATA_OFFSET,
    ARENA_FLAG_CONTROL,
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
from ixypipe.memory.mapping import Mapping, MappingError

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
    """What one region asks of an arena: its bytes, alignment, whether it must sit in one 2 MiB page, and whether
    a device reads or writes it (in a two-file arena only those go to the first file)."""
    size: int
    align: int = ARENA_MIN_ALIGN
    within_page: bool = False
    dma: bool = False

    def worst_case(self) -> int:
        """The most arena bytes carving it can take, padding in front included, wherever it lands."""
        pad = max(self.align, ARENA_MIN_ALIGN) - 1
        if self.within_page:
            pad += self.size - 1        # a region that would cross a page moves to the next one
        return self.size + pad


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _mlock(buf: np.ndarray, size: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.mlock(ctypes.c_void_p(buf.ctypes.data), ctypes.c_size_t(size)) == 0


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

    def __init__(self, path: Path, mm: mmap.mmap | memoryview, created: bool, mapping: Mapping | None = None,
                 read_only: bool = False):
        self.path = path
        self.mm = mm                    # a two-file arena: a writable memoryview of the whole mapping
        self.created = created
        self.read_only = read_only
        self._mapping = mapping         # a two-file arena's address range (memory/mapping.py)
        self._spans: list[tuple[int, int, np.ndarray]] = []    # what grant_writes made writable: start, end, bytes
        buf = np.frombuffer(mm, dtype=np.uint8)
        if read_only and buf.flags.writeable:
            buf = buf.view()
            buf.flags.writeable = False
        self.buf = buf
        self.header = self.buf[:ARENA_HEADER_DTYPE.itemsize].view(ARENA_HEADER_DTYPE)[0:1]
        table_end = ARENA_TABLE_OFFSET + ARENA_MAX_REGIONS * ARENA_REGION_DTYPE.itemsize
        self.table = self.buf[ARENA_TABLE_OFFSET:table_end].view(ARENA_REGION_DTYPE)
        self._page_phys: np.ndarray | None = None

    # ---- life cycle -------------------------------------------------------
    @classmethod
    def create(cls, size: int, hugepages_mode: str = "auto", directory: str | os.PathLike | None = None,
               tag: str = "", physical: bool = True, control_size: int = 0) -> Arena:
        """Create an arena of at least ``size`` usable bytes.

        ``hugepages_mode``: "auto" (hugepages when root and enough are free,
        else the /dev/shm fallback with one warning), "require" (error when
        hugepages cannot be had) or "never".  ``physical=False``: no device
        will be given a physical address of it (VFIO ports take IOVAs, kernel
        interfaces none), so /proc/self/pagemap is never read and hugepages
        need no root.  ``control_size`` > 0: regions other than DMA ones go to a
        control file of that many bytes on /dev/shm, each on pages of its own
        (module docstring); :meth:`split_size_for` gives both sizes.
        """
        if hugepages_mode not in ("auto", "require", "never"):
            raise ArenaError(f"hugepages mode must be auto, require or never, not {hugepages_mode!r}")
        if size <= 0:
            raise ArenaError(f"arena size must be positive, got {size}")
        if control_size < 0:
            raise ArenaError(f"a control file size cannot be negative, got {control_size}")
        control = control_size > 0
        use_huge, why_not = False, ""
        if hugepages_mode != "never":
            use_huge, why_not, directory = cls._hugepage_plan(cls.planned_size(size, control_size), directory,
                                                              physical)
            if not use_huge and hugepages_mode == "require":
                raise ArenaError(f"hugepages required but unavailable: {why_not}")
        if use_huge:
            # a control arena's first DMA region starts on a page after the header's: one more page
            total = (_pages_for(size) + (1 if control else 0)) * HUGEPAGE_SIZE
            path = Path(directory) / cls._unique_name(tag)
        else:
            global _warned_fallback
            if not _warned_fallback and hugepages_mode == "auto":
                log.warning("no hugepages (%s): using a /dev/shm arena on 4 KiB pages; DMA addresses are "
                            "simulated and only the software 82599 accepts them", why_not)
                _warned_fallback = True
            total = _round_up(ARENA_DATA_OFFSET + size, PAGE_SIZE) + (PAGE_SIZE if control else 0)
            path = SHM_DIR / cls._unique_name(tag)
            _check_shm_room(total)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            raise ArenaError(f"arena file {path} already exists") from None
        mapping, control_size = None, _round_up(control_size, PAGE_SIZE)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, total)
            if control:
                mapping = _map_two(path, fd, total, control_size, use_huge, writable=True, create=True)
                mm = memoryview(mapping.array())
            else:
                mm = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ArenaError) as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if isinstance(exc, ArenaError):
                raise
            if use_huge:
                raise ArenaError(f"cannot map {total >> 20} MiB of hugepages at {path}: {exc}; "
                                 + hugepages.reserve_advice(total // HUGEPAGE_SIZE)) from exc
            raise ArenaError(f"cannot map {total} bytes at {path}: {exc}") from exc
        os.close(fd)
        _created[path] = os.getpid()
        if control:
            _created[_control_path(path)] = os.getpid()
        arena = cls(path, mm, created=True, mapping=mapping)
        try:
            arena._init_header(total, use_huge, physical, control_size)
        except BaseException:
            arena.destroy()
            raise
        return arena

    @classmethod
    def private(cls, size: int, tag: str = "private") -> Arena:
        """An arena only this process maps (no hugepages, no DMA): its /dev/shm file is removed at once, the
        memory goes when the last view of it does.  For batches built in-process (Batch.from_frames)."""
        arena = cls.create(size, hugepages_mode="never", physical=False, tag=tag)
        arena.path.unlink(missing_ok=True)
        _created.pop(arena.path, None)
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
    def split_size_for(regions: Iterable[RegionSize]) -> tuple[int, int]:
        """(``size``, ``control_size``) to :meth:`create` a two-file arena in which ``regions`` fit: the DMA
        ones (``dma`` or ``within_page``) in the first file, the others in the control file, each on whole
        pages of its own."""
        regions = list(regions)
        Arena.size_for(regions)                 # the same limit on their number
        first = [r for r in regions if r.dma or r.within_page]
        control = [r for r in regions if not (r.dma or r.within_page)]
        return (max(sum(r.worst_case() for r in first), 1),
                sum(_round_up(r.size, PAGE_SIZE) + max(r.align - PAGE_SIZE, 0) for r in control) + PAGE_SIZE)

    @staticmethod
    def _unique_name(tag: str) -> str:
        tag = "".join(c for c in tag if c.isalnum())[:16]
        return f"{ARENA_PREFIX}{os.getpid()}-{tag + '-' if tag else ''}{secrets.token_hex(8)}"

    @staticmethod
    def planned_size(size: int, control_size: int = 0) -> int:
        """The usable bytes :meth:`create` asks hugepages for: a control arena's first DMA region starts on
        a page after the header's, one more page."""
        return size + (HUGEPAGE_SIZE if control_size > 0 else 0)

    @staticmethod
    def _hugepage_plan(size: int, directory, physical: bool = True) -> tuple[bool, str, Path | None]:
        why_not, mount = hugepage_shortfall([size], physical, directory)
        return not why_not, why_not, mount

    def _init_header(self, total: int, use_huge: bool, physical: bool = True, control_size: int = 0) -> None:
        if not _mlock(self.buf, total) and use_huge:
            raise ArenaError(f"mlock of the {total >> 20} MiB hugepage arena failed")
        self.buf[:ARENA_DATA_OFFSET] = 0
        h = self.header
        h["size"] = total
        h["version"] = ARENA_VERSION
        h["n_regions"] = 0
        h["next_free"] = ARENA_DATA_OFFSET
        h["flags"] = ((ARENA_FLAG_HUGEPAGES if use_huge else 0) | (0 if physical else ARENA_FLAG_NO_PHYS)
                      | (ARENA_FLAG_CONTROL if control_size else 0))
        h["control_size"] = control_size
        h["control_next"] = total
        h["owner_pid"] = os.getpid()
        h["iova_base"] = 0 if use_huge else SIM_IOVA_BASE + secrets.randbelow(SIM_IOVA_SLOTS) * SIM_IOVA_WINDOW
        if use_huge and physical:
            n_pages = total // HUGEPAGE_SIZE
            base = self.buf.ctypes.data
            phys = virt_to_phys([base + i * HUGEPAGE_SIZE for i in range(n_pages)])
            region = self.alloc(ARENA_PHYS_REGION, n_pages * _PHYS_ENTRY_SIZE, align=_PHYS_ENTRY_SIZE, dma=True)
            self.view(region, np.uint64)[:] = phys
        h["magic"] = ARENA_MAGIC   # last: an attacher never sees a half-made header

    @classmethod
    def attach(cls, path: str | os.PathLike, read_only: bool = False) -> Arena:
        """Map an existing arena by its path (its name is ``path``'s last component).

        ``read_only``: every byte is mapped read-only (from descriptors opened
        read-only, so the protection cannot be lifted with mprotect); an
        observer stops there, a worker then gets its own regions with
        :meth:`grant_writes`.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY if read_only else os.O_RDWR)
        except FileNotFoundError:
            raise ArenaError(f"no arena at {path}") from None
        except PermissionError:
            raise ArenaError(f"no permission to open arena {path} (it is created 0600 by its owner)") from None
        mapping = None
        try:
            size = os.fstat(fd).st_size
            if size < ARENA_DATA_OFFSET:
                raise ArenaError(f"{path} is too small ({size} bytes) to be an ixypipe arena")
            head = np.frombuffer(os.pread(fd, ARENA_HEADER_DTYPE.itemsize, 0), ARENA_HEADER_DTYPE)[0]
            if int(head["magic"]) == ARENA_MAGIC and int(head["flags"]) & ARENA_FLAG_CONTROL:
                mapping = _map_two(path, fd, size, int(head["control_size"]),
                                   bool(int(head["flags"]) & ARENA_FLAG_HUGEPAGES), writable=not read_only)
                mm = memoryview(mapping.array())
            else:
                mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | (0 if read_only else mmap.PROT_WRITE))
        finally:
            os.close(fd)
        arena = cls(path, mm, created=False, mapping=mapping, read_only=read_only)
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
            _mlock(arena.buf, size)
        return arena

    def grant_writes(self, spans: Iterable[tuple[int, int]]) -> None:
        """Map the regions ``spans`` ((offset, size) pairs) of a read-only attached arena writable.

        Only a two-file arena (``create(control_size=...)``) can do this: there every region
        starts on a page of its file and owns its pages, so granting one exposes no
        neighbour; a span that does not start on a page is refused for that reason.
        :meth:`view` serves granted regions from writable arrays that reach no further.
        """
        if not self.read_only:
            return
        if self._mapping is None:
            raise ArenaError(f"arena {self.name} is one file: it cannot make some regions writable and not others")
        fds = {}
        try:
            for offset, size in spans:
                in_control = offset >= self.size
                granule, part_end = (PAGE_SIZE, self.size + self.control_size) if in_control else \
                    (self.granule, self.size)
                if offset % granule or size <= 0 or offset + size > part_end:
                    raise ArenaError(f"arena {self.name}: cannot make [{offset}, {offset + size}) writable alone "
                                     f"(regions are given writable in whole {granule}-byte pages of their own)")
                path = _control_path(self.path) if in_control else self.path
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDWR)
                length = min(_round_up(size, granule), part_end - offset)
                self._mapping.map(offset, length, fds[path], offset - self.size if in_control else offset,
                                  writable=True)
                if self.hugepages and not in_control:
                    self._mapping.mlock(offset, length)
                self._spans.append((offset, offset + size, self._mapping.array(offset, size)))
        except (OSError, MappingError) as exc:
            raise ArenaError(f"arena {self.name}: cannot map a region writable: {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)

    def compiled_bytes(self) -> np.ndarray:
        """The whole arena as one uint8 array that compiled code may store through, addressed by arena offset
        (the stage passes of pipeline/breathe_jit.py, which take the arena as words and slots).

        numba refuses stores into an array numpy marks read-only, so a read-only attach gives this one
        unmarked; its pages keep their protection: a store outside what :meth:`grant_writes` made writable
        faults, as through any other route.  A writable attach gives ``buf`` itself."""
        if not self.read_only:
            return self.buf
        if self._mapping is None:
            raise ArenaError(f"arena {self.name} is one file attached read-only: compiled code cannot write it")
        return np.frombuffer(self.mm, np.uint8)

    def close(self) -> None:
        """Unmap (numpy views into the arena must be gone by then)."""
        if self.mm is None:
            return
        self.header = self.table = self.buf = None
        self._page_phys = None
        self._spans = []
        self._mapping = None             # unmapped once the last view of it is gone
        try:
            if isinstance(self.mm, memoryview):
                self.mm.release()
            else:
                self.mm.close()
        except BufferError:
            # a view is still alive somewhere; the mapping goes when it does
            pass
        self.mm = None

    def destroy(self) -> None:
        """Unmap and remove the backing file (the creator does this at exit)."""
        control = self.has_control
        self.close()
        self.path.unlink(missing_ok=True)
        _created.pop(self.path, None)
        if control:
            _control_path(self.path).unlink(missing_ok=True)
            _created.pop(_control_path(self.path), None)

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
    def has_control(self) -> bool:
        """Whether non-DMA regions live in a control file of their own (``create(control_size=...)``)."""
        return bool(int(self.header["flags"][0]) & ARENA_FLAG_CONTROL) if self.header is not None else False

    @property
    def control_size(self) -> int:
        return int(self.header["control_size"][0])

    @property
    def granule(self) -> int:
        """The page size of the first file: the unit its regions can be mapped in."""
        return HUGEPAGE_SIZE if self.hugepages else PAGE_SIZE

    @property
    def iova_base(self) -> int:
        """Simulated I/O address of offset 0 on a fallback arena (0 on hugepages)."""
        return int(self.header["iova_base"][0])

    @property
    def name(self) -> str:
        return self.path.name

    # ---- regions ----------------------------------------------------------
    def alloc(self, name: str, size: int, align: int = ARENA_MIN_ALIGN, within_page: bool = False,
              dma: bool = False) -> Region:
        """Carve a named region.  Only the creating process adds regions.

        ``within_page``: the region must not cross a 2 MiB page, so it is
        physically contiguous (descriptor rings).  ``dma``: a device reads or
        writes it (packet buffers); in a two-file arena only such regions (and
        ``within_page`` ones) go to the first file, on pages of their own.
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
        in_control = self.has_control and not (dma or within_page)
        # in a two-file arena each region owns its pages: a worker can be given one writable alone.  The
        # physical-address table shares the header's page (no process but the creator writes either)
        granule = 1 if not self.has_control or name == ARENA_PHYS_REGION else \
            PAGE_SIZE if in_control else self.granule
        align = max(align, granule)
        if in_control:
            offset = _round_up(int(self.header["control_next"][0]), align)
            limit = self.size + self.control_size
        else:
            offset = _round_up(int(self.header["next_free"][0]), align)
            limit = self.size
        if within_page:
            if size > HUGEPAGE_SIZE:
                raise ArenaError(f"region {name!r}: {size} bytes cannot fit one 2 MiB page")
            if offset // HUGEPAGE_SIZE != (offset + size - 1) // HUGEPAGE_SIZE:
                offset = _round_up(offset, HUGEPAGE_SIZE)
        if offset + size > limit:
            raise ArenaError(f"arena {self.name} is full: region {name!r} needs {size} bytes at offset "
                             f"{offset}, the arena has {limit}; make the arena larger")
        entry = self.table[n]
        entry["name"] = raw
        entry["offset"] = offset
        entry["size"] = size
        self.header["control_next" if in_control else "next_free"] = _round_up(offset + size, granule)
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
        """A numpy view of a whole region as ``dtype`` (read-only in a read-only arena unless granted)."""
        dtype = np.dtype(dtype)
        size = region.size - region.size % dtype.itemsize
        for start, end, granted in self._spans:
            if start <= region.offset and region.offset + size <= end:
                return granted[region.offset - start:region.offset - start + size].view(dtype)
        return self.buf[region.offset:region.offset + size].view(dtype)

    def item(self, region: Region, i: int, dtype) -> np.ndarray:
        """Item ``i`` of a region that is an array of ``dtype``, as a one-item view (writable where granted)."""
        dtype = np.dtype(dtype)
        if not 0 <= i < region.size // dtype.itemsize:
            raise ArenaError(f"region {region.name!r} has no item {i} of {dtype.itemsize} bytes")
        return self.view(Region(region.name, region.offset + i * dtype.itemsize, dtype.itemsize), dtype)

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


def _control_path(path: Path) -> Path:
    """Where a two-file arena keeps its control regions."""
    return SHM_DIR / (path.name + ARENA_CONTROL_SUFFIX)


def _map_two(path: Path, fd: int, size: int, control_size: int, huge: bool, writable: bool,
             create: bool = False) -> Mapping:
    """Map a two-file arena: ``fd`` (its first file, ``size`` bytes) and then its control file, side by side."""
    control = _control_path(path)
    try:
        if create:
            _check_shm_room(control_size)
            cfd = os.open(control, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        else:
            cfd = os.open(control, os.O_RDWR if writable else os.O_RDONLY)
    except FileExistsError:
        raise ArenaError(f"arena control file {control} already exists") from None
    except FileNotFoundError:
        raise ArenaError(f"arena {path.name} has no control file {control}") from None
    except PermissionError:
        raise ArenaError(f"no permission to open {control} (it is created 0600 by its owner)") from None
    try:
        if create:
            os.fchmod(cfd, 0o600)
            os.ftruncate(cfd, control_size)
        elif os.fstat(cfd).st_size != control_size:
            raise ArenaError(f"{control} has {os.fstat(cfd).st_size} bytes, its arena says {control_size}")
        mapping = Mapping(size + control_size, HUGEPAGE_SIZE if huge else PAGE_SIZE)
        mapping.map(0, size, fd, 0, writable, populate=create)
        mapping.map(size, control_size, cfd, 0, writable)
        return mapping
    except (OSError, MappingError) as exc:
        if create:
            control.unlink(missing_ok=True)
        raise ArenaError(f"cannot map arena {path.name} and its control file: {exc}") from exc
    except BaseException:
        if create:
            control.unlink(missing_ok=True)
        raise
    finally:
        os.close(cfd)


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
