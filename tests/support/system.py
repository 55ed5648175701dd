"""What tests need from the system: root, hugepages (reserved and mounted on first need), tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ixypipe.memory import hugepages

HUGE_MOUNT = Path("/mnt/huge")
WANT_PAGES = 1024


def _prepare_hugepages() -> str:
    """Reserve 2 MiB pages and mount hugetlbfs when root; returns why not, or ''."""
    if os.geteuid() != 0:
        return "not root"
    if hugepages.total_hugepages() < WANT_PAGES:
        try:
            Path("/proc/sys/vm/nr_hugepages").write_text(str(WANT_PAGES))
        except OSError as exc:
            return f"cannot reserve hugepages: {exc}"
    if not hugepages.hugetlbfs_mounts():
        HUGE_MOUNT.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "hugetlbfs", "nodev", str(HUGE_MOUNT)], capture_output=True, text=True)
        if res.returncode:
            return f"cannot mount hugetlbfs: {res.stderr.strip()}"
    if hugepages.free_hugepages() == 0:
        return "no free hugepages"
    return ""


_why_not: list[str] = []


def hugepages_unavailable() -> str:
    """Prepare hugepages once per test session (when first asked); returns why they cannot be had, or ''."""
    if not _why_not:
        _why_not.append(_prepare_hugepages())
    return _why_not[0]


# A test that needs hugepages asks for the session fixture ``hugepages_ready`` (tests/conftest.py):
# nothing is reserved or mounted at import time, only when such a test runs.
needs_hugepages = pytest.mark.usefixtures("hugepages_ready")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
