"""What the host offers in hugepages: hugetlbfs mounts and free 2 MiB pages.

Read-only helpers over /proc/mounts and /sys/kernel/mm/hugepages; the
arena asks here where to put its file and whether enough pages are free.
"""

from __future__ import annotations

import os
from pathlib import Path

from ixypipe.layout import HUGEPAGE_SIZE

SYSTEM_POOLS = "kernel/mm/hugepages"          # under the sysfs root: one hugepages-<N>kB directory per size


def hugepage_dir(size: int = HUGEPAGE_SIZE, sysfs_root: str | os.PathLike = "/sys") -> Path:
    return Path(sysfs_root) / SYSTEM_POOLS / f"hugepages-{size // 1024}kB"


def free_hugepages(size: int = HUGEPAGE_SIZE, sysfs_root: str | os.PathLike = "/sys") -> int:
    try:
        return int((hugepage_dir(size, sysfs_root) / "free_hugepages").read_text())
    except OSError:
        return 0


def total_hugepages(size: int = HUGEPAGE_SIZE, sysfs_root: str | os.PathLike = "/sys") -> int:
    try:
        return int((hugepage_dir(size, sysfs_root) / "nr_hugepages").read_text())
    except OSError:
        return 0


def _mount_pagesize(options: str) -> int | None:
    for opt in options.split(","):
        if opt.startswith("pagesize="):
            val = opt.split("=", 1)[1].upper()
            mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(val[-1], 1)
            return int(val.rstrip("KMG")) * mult
    return None


def hugetlbfs_mounts(size: int = HUGEPAGE_SIZE, mounts_file: str = "/proc/mounts") -> list[Path]:
    """Writable hugetlbfs mount points whose page size is ``size``."""
    found = []
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "hugetlbfs":
            continue
        pagesize = _mount_pagesize(parts[3])
        # a mount without pagesize= uses the default size, which is 2 MiB on x86
        if (pagesize or HUGEPAGE_SIZE) == size and os.access(parts[1], os.W_OK):
            found.append(Path(parts[1]))
    return found


def reserve_advice(pages: int) -> str:
    return (f"reserve them with 'ixypipe hugepages --reserve {pages}' and mount hugetlbfs with "
            f"'ixypipe hugepages --mount /mnt/huge' (as root)")


def hugetlbfs_mount_table(mounts_file: str = "/proc/mounts") -> list[tuple[Path, int]]:
    """Every hugetlbfs mount point with its page size in bytes, whatever the size and permissions."""
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return []
    return [(Path(parts[1]), _mount_pagesize(parts[3]) or HUGEPAGE_SIZE)
            for parts in (line.split() for line in lines) if len(parts) >= 4 and parts[2] == "hugetlbfs"]
