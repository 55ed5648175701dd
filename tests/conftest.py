"""Shared test set-up: hugepages when root, and arenas that are always removed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ixypipe.memory import hugepages
from ixypipe.memory.arena import Arena

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


HUGEPAGES_UNAVAILABLE = _prepare_hugepages()
needs_hugepages = pytest.mark.skipif(bool(HUGEPAGES_UNAVAILABLE),
                                     reason=f"hugepages unavailable: {HUGEPAGES_UNAVAILABLE}")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def make_arena():
    """make_arena(size, hugepages_mode='auto') -> Arena, destroyed after the test."""
    made = []

    def make(size: int = 16 << 20, hugepages_mode: str = "auto") -> Arena:
        arena = Arena.create(size, hugepages_mode=hugepages_mode, tag="test")
        made.append(arena)
        return arena

    yield make
    for arena in made:
        arena.destroy()


@pytest.fixture
def testbed():
    """Two hosts in network namespaces of their own behind veth pairs; removed even when a test fails."""
    from ixypipe.netns import VethTestbed, namespaces_made

    tb = VethTestbed()
    yield tb
    tb.close()
    assert not [n for n in namespaces_made() if tb.tag in n]
