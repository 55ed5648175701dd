"""Hugepage set-up for ``ixypipe hugepages``: what is reserved, free and mounted, and changing it.

Reads the per-size pools in ``<sysfs>/kernel/mm/hugepages/hugepages-<N>kB``
and the per-NUMA-node ones in ``<sysfs>/devices/system/node/node<K>/hugepages``
(the sysfs root is a parameter so tests use a fake tree), and the hugetlbfs
mounts through ixypipe.memory.hugepages.  :func:`reserve` writes
``nr_hugepages`` of one size (system-wide or on one node) and reads it back,
since the kernel may grant fewer pages than asked (then it puts the old
count back: a failed reservation changes nothing); :func:`mount` mounts
hugetlbfs of one page size.  Both need root and say so.  What they are
given is checked first (:func:`check_reserve`: no more memory than the
machine has; :func:`check_mount_point`: an absolute, existing, empty
directory outside /proc and /sys).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from ixypipe.datafile import kernel_filesystem
from ixypipe.layout import HUGEPAGE_SIZE
from ixypipe.memory.hugepages import SYSTEM_POOLS, hugetlbfs_mount_table

NODES = "devices/system/node"
_POOL_RE = re.compile(r"^hugepages-(\d+)kB$")
_NODE_RE = re.compile(r"^node(\d+)$")
_SIZE_RE = re.compile(r"^(\d+)([KMG])?B?$", re.IGNORECASE)
_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class HugepageSetupError(Exception):
    """Hugepages cannot be shown, reserved or mounted; the message says why and what to do."""


class MountPointError(HugepageSetupError):
    """The path given to mount hugetlbfs on is no place for it (not absolute, missing, not empty, in /proc)."""


@dataclass(frozen=True)
class HugepagePool:
    size: int                 # page size in bytes
    node: int | None          # NUMA node, None for the system-wide pool
    total: int                # nr_hugepages: reserved
    free: int
    surplus: int

    @property
    def used(self) -> int:
        return self.total - self.free


def format_size(size: int) -> str:
    for unit in ("G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{size}B"


def parse_size(text: str) -> int:
    """'2M', '2MB', '1G', '2048K' or bytes -> bytes."""
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise HugepageSetupError(f"hugepage size {text!r} is not a size like 2M or 1G")
    return int(match.group(1)) * _UNITS.get((match.group(2) or "").upper(), 1)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _pools_in(directory: Path, node: int | None) -> list[HugepagePool]:
    pools = []
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return pools
    for entry in entries:
        match = _POOL_RE.match(entry.name)
        if match:
            pools.append(HugepagePool(int(match.group(1)) * 1024, node, _read_int(entry / "nr_hugepages"),
                                      _read_int(entry / "free_hugepages"), _read_int(entry / "surplus_hugepages")))
    return pools


def nodes(sysfs_root: str | os.PathLike = "/sys") -> list[int]:
    try:
        found = [int(m.group(1)) for e in (Path(sysfs_root) / NODES).iterdir() if (m := _NODE_RE.match(e.name))]
    except OSError:
        return []
    return sorted(found)


def hugepage_pools(sysfs_root: str | os.PathLike = "/sys") -> list[HugepagePool]:
    """System-wide pools (node None) then each node's, smallest page size first."""
    root = Path(sysfs_root)
    pools = _pools_in(root / SYSTEM_POOLS, None)
    for n in nodes(root):
        pools += _pools_in(root / NODES / f"node{n}" / "hugepages", n)
    return sorted(pools, key=lambda p: (p.size, -1 if p.node is None else p.node))


def status_lines(sysfs_root: str | os.PathLike = "/sys", mounts_file: str = "/proc/mounts") -> list[str]:
    """The table ``ixypipe hugepages`` prints."""
    pools = hugepage_pools(sysfs_root)
    if not pools:
        return [f"this kernel offers no hugepages (no {Path(sysfs_root) / SYSTEM_POOLS})"]
    lines = [f"{'SIZE':<6}{'NODE':<8}{'RESERVED':>10}{'FREE':>10}{'IN USE':>10}{'SURPLUS':>10}"]
    for p in pools:
        where = "all" if p.node is None else str(p.node)
        lines.append(f"{format_size(p.size):<6}{where:<8}{p.total:>10}{p.free:>10}{p.used:>10}{p.surplus:>10}")
    mounts = hugetlbfs_mount_table(mounts_file)
    lines.append("")
    if mounts:
        for path, size in mounts:
            writable = "" if os.access(path, os.W_OK) else " (not writable by you)"
            lines.append(f"mounted: {path} hugetlbfs pagesize={format_size(size)}{writable}")
    else:
        lines.append("mounted: none (ixypipe hugepages --mount /mnt/huge)")
    sizes_mounted = {size for _, size in mounts}
    for size in sorted({p.size for p in pools if p.node is None and p.total > 0} - sizes_mounted):
        lines.append(f"note: {format_size(size)} pages are reserved but no hugetlbfs of that size is mounted")
    return lines


def status(sysfs_root: str | os.PathLike = "/sys", mounts_file: str = "/proc/mounts") -> dict:
    """What status_lines shows, as one JSON-ready object (``ixypipe hugepages --json``)."""
    return {"type": "hugepages",
            "pools": [{"size": p.size, "size_text": format_size(p.size), "node": p.node, "reserved": p.total,
                       "free": p.free, "in_use": p.used, "surplus": p.surplus} for p in hugepage_pools(sysfs_root)],
            "mounts": [{"path": str(path), "page_size": size, "writable": os.access(path, os.W_OK)}
                       for path, size in hugetlbfs_mount_table(mounts_file)]}


def _require_root(what: str, geteuid: Callable[[], int]) -> None:
    if geteuid() != 0:
        raise HugepageSetupError(f"{what} needs root (run it with sudo)")


def pool_file(sysfs_root: str | os.PathLike, size: int, node: int | None) -> Path:
    root = Path(sysfs_root)
    base = root / SYSTEM_POOLS if node is None else root / NODES / f"node{node}" / "hugepages"
    return base / f"hugepages-{size // 1024}kB" / "nr_hugepages"


def check_reserve(count: int, size: int, mem_total: int | None = None) -> None:
    """``count`` pages of ``size`` can be asked for: not negative, not more than the machine's memory."""
    if count < 0:
        raise HugepageSetupError(f"cannot reserve a negative number of hugepages ({count})")
    total = psutil.virtual_memory().total if mem_total is None else mem_total
    if count * size > total:
        raise HugepageSetupError(f"{count} {format_size(size)} hugepages are {count * size} bytes, more than this "
                                 f"machine's memory ({total} bytes: at most {total // size} pages)")


def _write_count(target: Path, count: int) -> None:
    target.write_text(f"{count}\n")


def reserve(count: int, size: int = HUGEPAGE_SIZE, node: int | None = None, sysfs_root: str | os.PathLike = "/sys",
            geteuid: Callable[[], int] = os.geteuid, mem_total: int | None = None,
            write: Callable[[Path, int], None] = _write_count) -> HugepagePool:
    """Set the number of reserved pages of ``size`` (on ``node``, or system-wide); returns the new pool.

    When the kernel grants fewer than ``count`` the previous count is written back and HugepageSetupError
    says what happened.  ``mem_total`` (bytes) and ``write`` (how a count reaches the kernel) are for tests."""
    check_reserve(count, size, mem_total)
    _require_root(f"reserving {format_size(size)} hugepages", geteuid)
    sizes = sorted({p.size for p in hugepage_pools(sysfs_root)})
    if size not in sizes:
        raise HugepageSetupError(f"this machine has no {format_size(size)} hugepages; sizes offered: "
                                 f"{', '.join(format_size(s) for s in sizes) or 'none'}")
    if node is not None and node not in nodes(sysfs_root):
        raise HugepageSetupError(f"there is no NUMA node {node}; nodes: "
                                 f"{', '.join(map(str, nodes(sysfs_root))) or 'none'}")
    target = pool_file(sysfs_root, size, node)
    before = _read_int(target)
    try:
        write(target, count)
    except OSError as exc:
        raise HugepageSetupError(f"cannot reserve hugepages: writing {count} to {target} failed: "
                                 f"{exc.strerror}") from exc
    got = _read_int(target)
    where = "" if node is None else f" on node {node}"
    if got < count:
        try:
            write(target, before)
            back = f"put back to the {_read_int(target)} reserved before"
        except OSError as exc:
            back = f"and putting back the {before} reserved before failed ({exc.strerror}): {got} stay reserved"
        raise HugepageSetupError(f"asked for {count} {format_size(size)} hugepages{where} but the kernel reserved "
                                 f"only {got}, {back}: memory is short or fragmented (reserve early after boot, "
                                 "or on the kernel command line: hugepages=N)")
    pool = [p for p in hugepage_pools(sysfs_root) if p.size == size and p.node == node]
    return pool[0]


def check_mount_point(path: str | os.PathLike) -> Path:
    """A place hugetlbfs may be mounted as written: an absolute path outside /proc, /sys (and the kernel's other
    interface filesystems).  Whether it is an existing empty directory is checked when mounting."""
    text = os.fspath(path)
    if not text or not os.path.isabs(text):
        raise MountPointError(f"mount point {text!r} is not an absolute path (e.g. /mnt/huge)")
    if "\x00" in text:
        raise MountPointError(f"mount point {text!r} contains a NUL byte")
    fs = kernel_filesystem(text)
    if fs is not None:
        raise MountPointError(f"mount point {text!r} is on {fs} (a kernel interface); hugetlbfs goes on a "
                                 "directory of a real filesystem (e.g. /mnt/huge)")
    return Path(os.path.normpath(text))


def _empty_directory(path: Path) -> None:
    try:
        entries = next(os.scandir(path), None) is not None
    except FileNotFoundError:
        raise MountPointError(f"mount point {path} does not exist; make it first (mkdir -p {path})") from None
    except NotADirectoryError:
        raise MountPointError(f"cannot mount hugetlbfs at {path}: it is not a directory") from None
    except OSError as exc:
        raise MountPointError(f"cannot mount hugetlbfs at {path}: {exc.strerror or exc}") from None
    if entries:
        raise MountPointError(f"cannot mount hugetlbfs at {path}: the directory is not empty (a mount would "
                                 "hide what is in it)")


def mount(path: str | os.PathLike, size: int = HUGEPAGE_SIZE, mounts_file: str = "/proc/mounts",
          geteuid: Callable[[], int] = os.geteuid, run=subprocess.run) -> bool:
    """Mount hugetlbfs of page ``size`` at ``path`` (an existing empty directory); False when it already is."""
    path = check_mount_point(path)
    for mounted, mounted_size in hugetlbfs_mount_table(mounts_file):
        if mounted == path:
            if mounted_size == size:
                return False
            raise HugepageSetupError(f"{path} is already a hugetlbfs mount of {format_size(mounted_size)} pages, "
                                     f"not {format_size(size)}; unmount it first (umount {path})")
    _require_root(f"mounting hugetlbfs at {path}", geteuid)
    _empty_directory(path)
    res = run(["mount", "-t", "hugetlbfs", "-o", f"pagesize={format_size(size)}", "nodev", str(path)],
              capture_output=True, text=True)
    if res.returncode:
        raise HugepageSetupError(f"mounting hugetlbfs ({format_size(size)} pages) at {path} failed: "
                                 f"{(res.stderr or res.stdout).strip()}")
    return True
