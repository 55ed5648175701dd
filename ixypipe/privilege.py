"""Dropping a process's privileges: another user, no capabilities, no new privileges.

The worker stages run the user's code.  Once a worker has mapped the packet
arena, opened its wake-up semaphores and loaded ixypipe's compiled kernels,
it needs nothing a plain user lacks, so it becomes one, before it imports
the user's module (workers/confine.py; the import check's child too): started as
root it switches to ``worker_user`` (``nobody`` unless the pipeline file
names another), with no supplementary groups, an empty capability bounding
set, no effective, permitted, inheritable or ambient capabilities, and
``no_new_privs`` set (no set-uid binary or file capability can give any of
it back).  Mappings and file descriptors opened before stay valid, which is
all a worker needs; the BAR (``resource0``), ``/dev/mem``, the device arena
and other users' files are then out of its reach, whatever its code tries.
A kernel numba compiles after the switch stays in memory: the cache
directory belonged to the old user (jitcache.stop_saving).

Started as an ordinary user, a worker stays that user; it still drops
whatever capabilities it was given and sets ``no_new_privs``.  A pipeline
that names ``worker_user = "root"`` keeps its workers root with their
capabilities (the behaviour before this module), ``no_new_privs`` aside.

RX and TX stages keep the pipeline's user but, once their device is
attached and their compiled hot path loaded, drop every capability too and
set ``no_new_privs`` (:func:`drop_capabilities`).  What they use afterwards
was all opened before their loop: the BAR mapping (or the VFIO device fd),
the device and packet arenas and their semaphores, an AF_PACKET socket, a
pcap file.  They keep the user because those objects belong to it (the
arenas are 0600 files of the pipeline's user, the sim's sysfs tree 0700)
and their code is ixypipe's own, not the user's.

Every system call of this module goes through ``_libc`` (prctl, capset,
capget) or ``os`` (setgroups, setresgid, setresuid); the constants come from
linux/prctl.h and linux/capability.h.
"""

from __future__ import annotations

import ctypes
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from ixypipe import jitcache
from ixypipe.proc import die_with_parent

DEFAULT_WORKER_USER = "nobody"       # the workers' user when the pipeline runs as root
ROOT_UID = 0

# linux/prctl.h
PR_GET_PDEATHSIG = 2
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# linux/capability.h
CAP_SETPCAP = 8                      # needed to shrink the bounding set
LINUX_CAPABILITY_VERSION_3 = 0x20080522
LINUX_CAPABILITY_U32S_3 = 2          # version 3 carries 64 capability bits as two 32-bit words
CAP_LAST_CAP_FILE = Path("/proc/sys/kernel/cap_last_cap")
CAP_LAST_CAP_FALLBACK = 63           # every bit a version-3 set can hold

STATUS_FIELDS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")


class PrivilegeError(RuntimeError):
    """A privilege could not be dropped (the process must not go on with it)."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what} failed: {os.strerror(err)}")
    return result


def _prctl(option: int, arg2: int = 0, what: str = "") -> int:
    return _check(_libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                              ctypes.c_ulong(0)), what or f"prctl({option})")


def last_capability() -> int:
    try:
        return int(CAP_LAST_CAP_FILE.read_text())
    except (OSError, ValueError):
        return CAP_LAST_CAP_FALLBACK


def clear_capabilities() -> None:
    """Effective, permitted and inheritable sets to zero (always allowed: it only lowers them)."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * LINUX_CAPABILITY_U32S_3)()
    _check(_libc.capset(ctypes.byref(header), data), "capset (clearing every capability)")


def capabilities() -> int:
    """The effective set of this process, as a 64-bit mask."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * LINUX_CAPABILITY_U32S_3)()
    _check(_libc.capget(ctypes.byref(header), data), "capget")
    return data[0].effective | data[1].effective << 32


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int


def lookup(name: str) -> Identity:
    """The user ``name`` (or a numeric uid); PrivilegeError naming it when there is none."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, ValueError):
        raise PrivilegeError(f"no user {name!r} on this machine (see /etc/passwd)") from None
    return Identity(entry.pw_name, entry.pw_uid, entry.pw_gid)


def worker_identity(configured: str) -> Identity | None:
    """Whom the workers become: ``configured`` if given, else ``nobody`` when root, else nobody else (None)."""
    if configured:
        return lookup(configured)
    if os.geteuid() == ROOT_UID:
        return lookup(DEFAULT_WORKER_USER)
    return None


def check_switch(configured: str) -> str:
    """Why the workers cannot become ``configured`` from here, or ''."""
    try:
        who = worker_identity(configured)
    except PrivilegeError as exc:
        return str(exc)
    if who is not None and os.geteuid() not in (ROOT_UID, who.uid):
        return f"switching the workers to user {who.name!r} needs root (ixypipe runs as uid {os.geteuid()})"
    return ""


def drop_to(who: Identity | None) -> None:
    """Become ``who`` (None: stay this user) with no capabilities and no_new_privs; raises PrivilegeError.

    ``who`` root (``worker_user = "root"``) keeps root and its capabilities.
    Order matters: groups and the bounding set need CAP_SETGID/CAP_SETPCAP,
    so they go before the uid; the uid change (all three ids) empties the
    permitted and effective sets, capset then empties them (and the
    inheritable one) also for a process that keeps its uid.  A credential
    change clears the parent-death signal, so it is set again.
    """
    keep_root = who is not None and who.uid == ROOT_UID
    switch = who is not None and who.uid not in (ROOT_UID, os.geteuid())
    if switch and os.geteuid() != ROOT_UID:
        raise PrivilegeError(f"cannot switch to user {who.name!r}: not root (uid {os.geteuid()})")
    parent = os.getppid()
    deathsig = ctypes.c_int(0)
    _check(_libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(deathsig), 0, 0, 0), "prctl(PR_GET_PDEATHSIG)")
    if not keep_root:
        if switch:
            os.setgroups([])
            os.setresgid(who.gid, who.gid, who.gid)
        if capabilities() & 1 << CAP_SETPCAP:
            for cap in range(last_capability() + 1):
                _prctl(PR_CAPBSET_DROP, cap, f"prctl(PR_CAPBSET_DROP, {cap})")
        try:
            _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clearing the ambient capabilities")
        except PrivilegeError:
            pass                            # kernels before 4.3 have no ambient set: nothing to clear
        if switch:
            os.setresuid(who.uid, who.uid, who.uid)
        clear_capabilities()
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "prctl(PR_SET_NO_NEW_PRIVS)")
    if deathsig.value:
        die_with_parent(parent)
    if not keep_root and (capabilities() != 0 or switch and os.getresuid() != (who.uid,) * 3):
        raise PrivilegeError(f"still privileged after dropping privileges: uids {os.getresuid()}, "
                             f"capabilities {capabilities():#x}")


def drop_capabilities() -> None:
    """What an RX or TX stage does once its device is attached: keep its user, lose every capability."""
    drop_to(None)


def drop_worker(configured: str) -> Identity | None:
    """What a worker stage does before the user's code runs: become its user (see the module docstring);
    returns whom."""
    who = worker_identity(configured)
    if who is not None and who.uid != os.geteuid():
        jitcache.stop_saving()          # the cache directory belongs to the old user now
    drop_to(who)
    return who


def status(pid: int | str = "self") -> dict[str, str]:
    """The credential lines of /proc/PID/status (Uid, CapEff, NoNewPrivs...)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in STATUS_FIELDS:
            out[key] = value.strip()
    return out
