"""vhost-user frontend: the virtio driver's rings served by a backend process (DPDK's net_vhost, OVS-DPDK, VPP).

Owns the transport that lets :class:`~ixypipe.nic.virtio.VirtioDevice`
drive a vhost-user backend instead of a PCI function (QEMU's
docs/interop/vhost-user.rst): the unix socket, its messages (a 12-byte
header: request, flags with version 1, payload size; file descriptors as
SCM_RIGHTS), the memory table (one region per arena file: the backend maps
the same hugepage files, and addresses in descriptors and rings are this
process's virtual addresses, as DPDK's virtio_user uses them), each vring's
size, base, addresses and kick/call eventfds.  VHOST_USER_F_PROTOCOL_FEATURES
is not negotiated, so a ring runs as soon as its kick descriptor arrives; a
backend that wants notifications gets a write on the kick eventfd.  The
backend has no config space here: the port's MAC is made from the socket
path (locally administered) and its link is up while connected.

This is the frontend in client mode.  The process that opens the port keeps
the socket; stage processes attach with the opener's addresses (carried in
the port spec) and no socket.  Not done yet: server mode, reconnection.
"""

from __future__ import annotations

import array
import hashlib
import logging
import os
import socket
import struct
import time
from pathlib import Path

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.device import DeviceError, PortSpec
from ixypipe.nic.virtio import VirtioDevice, check_spec

log = logging.getLogger(__name__)

# ---- the protocol (vhost-user.rst) ------------------------------------------------------------------
GET_FEATURES, SET_FEATURES, SET_OWNER = 1, 2, 3
SET_MEM_TABLE = 5
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL = 12, 13
HEADER = struct.Struct("<III")             # request, flags, size
FLAG_VERSION = 0x1
FLAG_REPLY = 0x4
MAX_REGIONS = 8
REGION = struct.Struct("<QQQQ")            # guest_phys_addr, memory_size, userspace_addr, mmap_offset
VRING_STATE = struct.Struct("<II")         # index, num
VRING_ADDR = struct.Struct("<IIQQQQ")      # index, flags, desc, used, avail, log
F_PROTOCOL_FEATURES = 30
MAX_QUEUE_SIZE = 32768
CONNECT_TIMEOUT = 30.0


class VhostUserError(DeviceError):
    """The backend cannot be reached or answered out of protocol; the message says which and how."""


def _send(sock: socket.socket, request: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
    data = HEADER.pack(request, FLAG_VERSION, len(payload)) + payload
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], ancillary)


def _reply(sock: socket.socket, request: int, size: int) -> bytes:
    head = sock.recv(HEADER.size, socket.MSG_WAITALL)
    if len(head) != HEADER.size:
        raise VhostUserError(f"the vhost-user backend closed the connection instead of answering request {request}")
    got, flags, n = HEADER.unpack(head)
    payload = sock.recv(n, socket.MSG_WAITALL) if n else b""
    if got != request or not flags & FLAG_REPLY or n != size or len(payload) != size:
        raise VhostUserError(f"the vhost-user backend answered request {request} with request {got}, flags "
                             f"{flags:#x}, {n} bytes (expected a {size}-byte reply)")
    return payload


def made_up_config(path: Path) -> np.ndarray:
    """The net config a vhost-user port has without the backend's: a locally administered unicast MAC made from the
    socket path (the same in every process), link up."""
    digest = hashlib.sha256(str(path).encode()).digest()
    config = np.zeros(V.NET_CFG_SIZE, np.uint8)
    config[:6] = np.frombuffer(bytes([0x02]) + digest[:5], np.uint8)
    config[V.NET_CFG_STATUS] = V.NET_S_LINK_UP
    return config


class VhostUserTransport:
    """What VirtioDevice's init steps need (the PCI transports' interface), over a vhost-user socket."""
    kind = "modern"                 # VERSION_1 is required, features are confirmed with FEATURES_OK

    def __init__(self, socket_path: str, arenas: list[Arena], sleep=time.sleep, timeout: float = CONNECT_TIMEOUT):
        self.path = Path(socket_path)
        self.sleep = sleep
        self.arenas = arenas
        self.bases = {a.name: a.buf.ctypes.data for a in arenas}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(socket_path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    self.sock.close()
                    raise VhostUserError(f"no vhost-user backend listens on {socket_path} ({exc.strerror}) after "
                                         f"{timeout:g} s; start it first (e.g. dpdk-testpmd --vdev "
                                         f"'net_vhost0,iface={socket_path}')") from None
                time.sleep(0.05)
        self._status = 0
        self._features = None
        self._kicks: dict[int, int] = {}
        self._calls: dict[int, int] = {}
        self._mem_sent = False
        self._config = made_up_config(self.path)
        _send(self.sock, SET_OWNER)

    # ---- status and features (no device status over vhost-user: kept here) --------------------------------
    def status(self) -> int:
        return self._status

    def set_status(self, value: int) -> None:
        self._status = value

    def settle(self) -> None:
        """Messages are in order on the socket: nothing to wait for."""

    def device_features(self) -> int:
        if self._features is None:
            _send(self.sock, GET_FEATURES)
            (self._features,) = struct.unpack("<Q", _reply(self.sock, GET_FEATURES, 8))
        return self._features & ~V.bit(F_PROTOCOL_FEATURES)

    def set_driver_features(self, features: int) -> None:
        _send(self.sock, SET_FEATURES, struct.pack("<Q", features))

    def read(self, where: str, offset: int, size: int) -> int:
        """The device config this frontend makes up: MAC from the socket path, link up."""
        return int.from_bytes(self._config[offset:offset + size].tobytes(), "little")

    def dma_addresses(self, arena: Arena, offsets):
        """The opener's virtual addresses: the memory table maps them 1:1 (guest_phys_addr = userspace_addr)."""
        return np.asarray(offsets, dtype=np.uint64) + np.uint64(self.bases[arena.name])

    # ---- memory and vrings ------------------------------------------------------------------------------
    def _send_memory_table(self) -> None:
        regions, fds = [], []
        for arena in self.arenas:       # its (first) file: buffers and rings; a control file holds neither
            fd = os.open(arena.path, os.O_RDWR)
            fds.append(fd)
            base = self.bases[arena.name]
            regions.append(REGION.pack(base, os.fstat(fd).st_size, base, 0))
        if len(regions) > MAX_REGIONS:
            raise VhostUserError(f"vhost-user carries at most {MAX_REGIONS} memory regions, got {len(regions)}")
        try:
            _send(self.sock, SET_MEM_TABLE, struct.pack("<II", len(regions), 0) + b"".join(regions), fds)
        finally:
            for fd in fds:
                os.close(fd)
        self._mem_sent = True

    def queue_max(self, q: int) -> int:
        return MAX_QUEUE_SIZE

    def enable_queue(self, q: int, size: int, desc: int, avail: int, used: int) -> None:
        if not self._mem_sent:
            self._send_memory_table()
        call, kick = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        self._calls[q], self._kicks[q] = call, kick
        _send(self.sock, SET_VRING_CALL, struct.pack("<Q", q), [call])
        _send(self.sock, SET_VRING_NUM, VRING_STATE.pack(q, size))
        _send(self.sock, SET_VRING_BASE, VRING_STATE.pack(q, 0))
        _send(self.sock, SET_VRING_ADDR, VRING_ADDR.pack(q, 0, desc, used, avail, 0))
        _send(self.sock, SET_VRING_KICK, struct.pack("<Q", q), [kick])

    def notify_offset(self, q: int) -> int:
        return 0

    def notify(self, q: int, offset: int) -> None:
        os.eventfd_write(self._kicks[q], 1)

    def kick_target(self, q: int, offset: int) -> tuple[int, int, int, None]:
        """Compiled code kicks as notify does: a write of 1 to the queue's kick eventfd (virtio_jit)."""
        return V.KICK_EVENTFD, self._kicks[q], 0, None

    def share(self) -> None:
        """One process drives a vhost-user port (see the module docstring)."""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        for fd in [*self._kicks.values(), *self._calls.values()]:
            os.close(fd)
        self._kicks, self._calls = {}, {}



class StageTransport:
    """What a stage process that attached to a vhost-user port needs: the opener's addresses and config.

    It has no socket and no kick eventfd: a backend that polls (DPDK's net_vhost sets USED_F_NO_NOTIFY) never
    needs one; one that asks for notifications is told once in the log that stage processes cannot give them."""
    kind = "modern"

    def __init__(self, socket_path: str, bases: dict[str, int], sleep=time.sleep):
        self.path = Path(socket_path)
        self.bases = dict(bases)
        self.sleep = sleep
        self._config = made_up_config(self.path)
        self._warned = False

    def read(self, where: str, offset: int, size: int) -> int:
        return int.from_bytes(self._config[offset:offset + size].tobytes(), "little")

    def dma_addresses(self, arena: Arena, offsets):
        try:
            base = self.bases[arena.name]
        except KeyError:
            raise DeviceError(f"vhost-user port on {self.path}: arena {arena.name} is not in its memory table") from None
        return np.asarray(offsets, dtype=np.uint64) + np.uint64(base)

    def notify(self, q: int, offset: int) -> None:
        if not self._warned:
            self._warned = True
            log.warning("vhost-user backend on %s asks for notifications on queue %d; a stage process has no kick "
                        "eventfd, so it relies on the backend polling", self.path, q)

    def set_status(self, value: int) -> None:
        """Only the opener speaks to the backend."""

    def close(self) -> None:
        pass


class VhostUserDevice(VirtioDevice):
    """A virtio-net device behind a vhost-user socket (``spec.address``), client mode."""
    driver_name = "vhost-user"

    @classmethod
    def open(cls, spec: PortSpec, arena: Arena, bufs, rx_pools: list, tx_done=None, sleep=time.sleep,
             hot_path: str | None = None, **_ignored) -> VhostUserDevice:
        """Connect to the backend and set the port up (the memory table, every vring)."""
        check_spec(spec)
        if spec.rx_queues != 1:
            raise DeviceError(f"port {spec.name!r}: a vhost-user port has one queue pair so far, got {spec.rx_queues}")
        if len(rx_pools) != spec.rx_queues:
            raise DeviceError(f"port {spec.name!r}: {spec.rx_queues} RX queues need {spec.rx_queues} mempools, "
                              f"got {len(rx_pools)}")
        if spec.options.get("mode", "client") != "client":
            raise DeviceError(f"port {spec.name!r}: vhost-user mode {spec.options['mode']!r} is not done yet; "
                              "use mode = \"client\" with a backend that listens (e.g. DPDK's net_vhost)")
        t = VhostUserTransport(spec.address, [arena] if bufs.arena is arena else [arena, bufs.arena], sleep)
        dev = None
        try:
            dev = cls(spec, t, arena, bufs, dict(enumerate(rx_pools)), tx_done, create=True, owner=True,
                      hot_path=hot_path)
            dev.init_device(bool(spec.options.get("mrg_rxbuf", True)))
        except BaseException:
            if dev is not None:
                dev._return_ring_buffers()
            t.close()
            raise
        spec.options["vhost_user_bases"] = dict(t.bases)     # for the stage processes (VhostUserDevice.attach)
        return dev

    @classmethod
    def attach(cls, spec: PortSpec, arena: Arena, bufs, rx_pools: dict | None, tx_done=None, sleep=time.sleep,
               hot_path: str | None = None, **_ignored) -> VhostUserDevice:
        """Use the rings another process set up, with its addresses (no socket: the opener keeps it)."""
        check_spec(spec)
        bases = spec.options.get("vhost_user_bases")
        if bases is None:
            raise DeviceError(f"port {spec.name!r}: open the vhost-user port (VhostUserDevice.open) before attaching")
        dev = cls(spec, StageTransport(spec.address, bases, sleep), arena, bufs, dict(rx_pools or {}), tx_done,
                  create=False, owner=False, hot_path=hot_path)
        dev._mac = dev._read_config_mac()
        dev._bind()
        return dev



def open_vhost_user(spec, arena: Arena, bufs, rx_pools: list, tx_done=None, sleep=time.sleep,
                    hot_path: str | None = None) -> VhostUserDevice:
    """Connect to the backend at ``spec.address`` (a socket path) and set the port up like a virtio-net device."""
    return VhostUserDevice.open(spec, arena, bufs, rx_pools, tx_done=tx_done, sleep=sleep, hot_path=hot_path)
