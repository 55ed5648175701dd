"""Which running pipeline uses which kernel interface or PCI device: one flock'd file per device.

Two pipelines on one interface both receive every frame and both transmit
(a ping saw 57 duplicates, TCP fell from 1.0 to 0.28 Gbit/s), so a port whose
interface (af_packet: the interface index in this network namespace) or PCI
device (ixgbe) another running pipeline uses is refused at start, naming that
pipeline.  Each such port holds a lock on ``/dev/shm/ixypipe-port-<device>``
for the run's life: exclusive, or shared when the file says ``share = true``.
The kernel releases it when the supervisor ends however it ends (kill -9
too), so a dead pipeline never blocks the next one.  The file holds one JSON
line per holder (pid, pipeline, file, port); readers skip dead pids.

A sharing port joins a device that another pipeline holds exclusively too
(the file says so on purpose), with a warning naming that pipeline; it then
holds no lock, so a third pipeline is checked against the first only.  Sim
ports (private to their run) and pcap files have no claims.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from ixypipe.nic.netns_id import netns_inode
from ixypipe.pipeline.running import owner_alive

log = logging.getLogger(__name__)

CLAIM_DIR = Path("/dev/shm")
CLAIM_PREFIX = "ixypipe-port-"       # not "ixypipe-<pid>-": ixypipe cleanup leaves these to the kernel's locks


class ClaimError(Exception):
    """A port's device is in use by another running pipeline that this one may not share it with."""


@dataclass
class Claim:
    port: str
    what: str              # "interface veth0", "PCI device 0000:03:00.0"
    path: Path
    fd: int | None         # None: joined an exclusive holder on purpose (share = true), holding nothing


def device_of(port) -> tuple[str, str] | None:
    """(file key, words) of the device ``port`` (a PortConfig) uses, or None when no other run can use it."""
    if port.driver == "af_packet":
        try:
            index = socket.if_nametoindex(port.interface)
        except OSError:
            return None              # opening the port says the interface is missing
        return f"net{netns_inode()}-if{index}", f"interface {port.interface}"
    if port.driver in ("ixgbe", "virtio"):
        return f"pci-{port.pci}", f"PCI device {port.pci}"
    return None


def holders(path: Path) -> list[dict]:
    """The live holders written in a claim file (one JSON object per line), oldest first."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            h = json.loads(line)
        except ValueError:
            continue
        if isinstance(h, dict) and isinstance(h.get("pid"), int) and owner_alive(h["pid"]):
            found.append(h)
    return found


def describe(found: list[dict]) -> str:
    if not found:
        return "another running pipeline (it did not say which)"
    return ", ".join(f"pipeline {h.get('pipeline', '?')!r} (pid {h['pid']}, {h.get('file', '?')}, port "
                     f"{h.get('port', '?')})" for h in found)


def _open(path: Path) -> int:
    """The claim file, made if missing (never O_CREAT on another user's file in sticky /dev/shm)."""
    while True:
        try:
            return os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o666)         # every user's pipeline writes its line
        return fd


def claim(port, pipeline: str, file: str, directory: Path = CLAIM_DIR, how_to_share: str = "") -> Claim | None:
    """Hold ``port``'s device for this process's life; ClaimError naming the holder when another has it
    (ending with ``how_to_share``, by default: say share = true in the port)."""
    device = device_of(port)
    if device is None:
        return None
    key, what = device
    path = directory / f"{CLAIM_PREFIX}{key}"
    share = getattr(port, "share", False)
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if share else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            others = holders(path)
            if share:
                log.warning("port %s: %s is also used by %s, which does not share it; joining it as "
                            "share = true says", port.name, what, describe(others))
                return Claim(port.name, what, path, None)
            hint = how_to_share or f"Stop the other one, or say share = true in port {port.name} to share it on purpose"
            raise ClaimError(f"port {port.name}: {what} is in use by {describe(others)}; two pipelines on one "
                             f"device both receive every frame and both transmit. {hint}") from None
        try:
            same = os.fstat(fd).st_ino == path.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)                 # its last holder removed the file meanwhile: take the new one
    if not share:
        os.ftruncate(fd, 0)          # lines of holders that are gone
    os.write(fd, (json.dumps({"pid": os.getpid(), "pipeline": pipeline, "file": file, "port": port.name,
                              "share": share}) + "\n").encode())
    return Claim(port.name, what, path, fd)


def claim_ports(cfg) -> list[Claim]:
    """Every port's claim for the validated ``cfg``; on a refusal none is kept and ClaimError says why."""
    held: list[Claim] = []
    mine: set[str] = set()           # two ports of this pipeline on one device: one claim
    try:
        for p in cfg.ports:
            device = device_of(p)
            if device is None or device[0] in mine:
                continue
            mine.add(device[0])
            c = claim(p, cfg.name, str(cfg.path))
            if c is not None:
                held.append(c)
    except BaseException:
        release(held)
        raise
    return held


def release(claims: list[Claim]) -> None:
    """Give the devices back; the last holder of a file removes it."""
    for c in claims:
        if c.fd is None:
            continue
        try:
            fcntl.flock(c.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)      # alone on it: remove, then let go
            c.path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(c.fd)
            c.fd = None


def in_use(port) -> str:
    """For --check: who holds ``port``'s device so that this port could not start, or ""."""
    device = device_of(port)
    if device is None:
        return ""
    path = CLAIM_DIR / f"{CLAIM_PREFIX}{device[0]}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if getattr(port, "share", False) else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return "" if getattr(port, "share", False) else f"{device[1]} is in use by {describe(holders(path))}"
    finally:
        os.close(fd)
    return ""
