"""Which network namespace this process is in, in words, for error messages about missing interfaces.

A namespace is known by the inode of ``/proc/self/ns/net``.  A named one
(``ip netns add NAME``) is a bind mount of that file under /run/netns, so
its name is found by comparing inodes; the namespace of pid 1 is "the root
namespace" (where pid 1's is unreadable, as in some sandboxes: the inode the
kernel gives the initial namespace, fixed since Linux 6.18).  Only files are
read, no commands run.
"""

from __future__ import annotations

import os
from pathlib import Path

NETNS_RUN_DIR = Path("/run/netns")
INIT_NET_INODE = 0xEFFFFFF9      # PROC_NET_INIT_INO: the initial namespace's inode on recent kernels


def _inode(path: Path | str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def netns_inode(proc: Path = Path("/proc")) -> int | None:
    """The inode that names this process's network namespace (None where /proc does not tell)."""
    return _inode(proc / "self" / "ns" / "net")


def netns_name(proc: Path = Path("/proc"), run_dir: Path = NETNS_RUN_DIR) -> str:
    """The name `ip netns identify` would give, else '' (the root or an unnamed namespace)."""
    mine = netns_inode(proc)
    if mine is None:
        return ""
    try:
        entries = sorted(run_dir.iterdir())
    except OSError:
        return ""
    return next((e.name for e in entries if _inode(e) == mine), "")


def describe_netns(proc: Path = Path("/proc"), run_dir: Path = NETNS_RUN_DIR) -> str:
    """``namespace ixyn-x-w``, ``the root namespace`` or ``an unnamed namespace (net:[4026532...])``."""
    name = netns_name(proc, run_dir)
    if name:
        return f"namespace {name}"
    mine = netns_inode(proc)
    root = _inode(proc / "1" / "ns" / "net") or INIT_NET_INODE
    if mine is not None and mine == root:
        return "the root namespace"
    return f"an unnamed namespace (net:[{mine}])" if mine is not None else "an unknown namespace"
