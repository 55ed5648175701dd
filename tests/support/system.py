"""What tests need from the system: root, hugepages (reserved and mounted on first need), tools (skips say
which apt-get install brings a missing one)."""

from __future__ import annotations

import os
import shutil
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


# ---- system tools ------------------------------------------------------------------------------
# tool -> the Debian package that brings it (.ci/apt-packages.txt installs them all for CI)
TOOL_PACKAGES = {"ethtool": "ethtool", "tshark": "tshark", "tcpdump": "tcpdump", "iperf3": "iperf3",
                 "ip": "iproute2", "ping": "iputils-ping"}


def missing_tools(*tools: str, apt: str | None = None) -> str:
    """Why a test cannot run for want of ``tools`` (with the apt-get line that brings them), or ''."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return ""
    packages = [apt] if apt else sorted({TOOL_PACKAGES.get(t, t) for t in missing})
    return f"needs {', '.join(missing)} (not installed): apt-get install {' '.join(packages)}"


def needs_tool(*tools: str, apt: str | None = None) -> pytest.MarkDecorator:
    """Mark: skip with the apt-get line when a tool is missing, e.g. needs_tool("ethtool", apt="ethtool")."""
    why = missing_tools(*tools, apt=apt)
    return pytest.mark.skipif(bool(why), reason=why)


def require_tools(*tools: str, apt: str | None = None) -> None:
    """Inside a fixture or test: skip it when a tool is missing (the reason says how to install it)."""
    why = missing_tools(*tools, apt=apt)
    if why:
        pytest.skip(why)


# the veth testbed of ixypipe.ops.netns runs ip and ethtool
TESTBED_TOOLS = ("ip", "ethtool")
