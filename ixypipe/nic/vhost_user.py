"""vhost-user frontend: the virtio driver's rings served by a backend process (DPDK's net_vhost, OVS-DPDK, VPP).

Owns the transport that lets :class:`~ixypipe.nic.virtio.VirtioDevice`
drive a vhost-user backend instead of a PCI function (QEMU's
docs/interop/vhost-user.rst): the messages (a 12-byte header: request,
flags with version 1, payload size; file descriptors as SCM_RIGHTS), the
memory table (one region per arena file: the backend maps the same hugepage
files, and addresses in descriptors and rings are this process's virtual
addresses, as DPDK's virtio_user uses them), each vring's size, base,
addresses and kick/call eventfds.  VHOST_USER_F_PROTOCOL_FEATURES is not
negotiated, so a ring runs as soon as its kick descriptor arrives; a backend
that wants notifications gets a write on the kick eventfd.  The backend has
no config space here: the port's MAC is made from the socket path (locally
administered).  Where the socket comes from, in client mode (the backend
listens) or server mode (this process listens, the backend connects), is
vhost_user_socket.py's.

Who holds what.  The process that opens the port (the supervisor; ``ixypipe
fwd``) keeps the socket, the eventfds and a :class:`LinkKeeper` thread
(vhost_user_link.py); stage processes attach with the opener's addresses
(carried in the port spec) and no socket (StageTransport).  The rings and
the driver's per-queue state live in the device arena, shared by all.

When the backend goes away.  The keeper sees the socket close: the link is
down (``link_state``, ``reconnecting``), it logs what each ring holds, and
it reconnects (client: connect() with back-off; server: accept the next
backend).  The stages are not told: a TX stage finds no free descriptor, an
RX stage finds nothing, the pipeline backs up and its input ports count what
they miss, as behind an 82599 whose cable is out; the supervisor does not
call that a stall (Device.reconnecting), and a run stopped meanwhile drops
what waits for the port.  A new connection gets the whole set-up again
(:meth:`VhostUserTransport.restore`): SET_OWNER, the same features (a backend
lacking one is refused), the memory table, and each vring's call, num,
base, addresses and kick.  A restarted backend has no ring state, but the
split ring's state that matters is in our memory: the used index the old
backend last published.  Each vring's base is that used index (what QEMU
does after a backend crash; DPDK's backend also moves itself there when
told otherwise), so the new backend takes the avail entries from there on:
frames posted and not yet used when the old one went, and those posted
while none was there, go out through the new one, and RX descriptors that
were offered stay offered.  Nothing posted is lost; the lost frames are the
ones the pipeline could not take while backed up, counted where it missed
them.  One limit: a backend killed in the middle of a burst may have taken
frames without publishing them used; the next one sends those again.  The
driver's counters and indices go on across the reconnection (no reset).
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
from ixypipe.nic.device import DeviceError, LinkState, PortSpec
from ixypipe.nic.vhost_user_link import LinkKeeper
from ixypipe.nic.vhost_user_socket import (
    CONNECT_TIMEOUT,
    REPLY_TIMEOUT,
    Listener,
    VhostUserError,
    connect,
    try_connect,
)
from ixypipe.nic.virtio import LINK_SPEED_MBIT, VirtioDevice, check_opening, check_spec

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
MODES = ("client", "server")


def _send(sock: socket.socket, request: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
    data = HEADER.pack(request, FLAG_VERSION, len(payload)) + payload
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], ancillary)


def _reply(sock: socket.socket, request: int, size: int) -> bytes:
    got, flags, n = HEADER.unpack(_receive(sock, HEADER.size, request))
    payload = _receive(sock, n, request) if n == size else b""
    if got != request or not flags & FLAG_REPLY or n != size:
        raise VhostUserError(f"the vhost-user backend answered request {request} with request {got}, flags "
                             f"{flags:#x}, {n} bytes (expected a {size}-byte reply)")
    return payload


def _receive(sock: socket.socket, size: int, request: int) -> bytes:
    """Exactly ``size`` bytes of the answer to ``request`` (the socket's timeout is REPLY_TIMEOUT)."""
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except TimeoutError:
            raise VhostUserError(f"the vhost-user backend did not answer request {request} within "
                                 f"{REPLY_TIMEOUT:g} s") from None
        if not chunk:
            raise VhostUserError(f"the vhost-user backend closed the connection instead of answering request "
                                 f"{request}")
        data += chunk
    return data


def made_up_config(path: Path) -> np.ndarray:
    """The net config a vhost-user port has without the backend's: a locally administered unicast MAC made from the
    socket path (the same in every process), link up."""
    digest = hashlib.sha256(str(path).encode()).digest()
    config = np.zeros(V.NET_CFG_SIZE, np.uint8)
    config[:6] = np.frombuffer(bytes([0x02]) + digest[:5], np.uint8)
    config[V.NET_CFG_STATUS] = V.NET_S_LINK_UP
    return config


class VhostUserTransport:
    """What VirtioDevice's init steps need (the PCI transports' interface), over a vhost-user socket.

    It remembers what it told the backend (the negotiated features, each vring's size and addresses, the
    eventfds, which live as long as the transport) so that :meth:`restore` can tell a new backend the same."""
    kind = "modern"                 # VERSION_1 is required, features are confirmed with FEATURES_OK

    def __init__(self, socket_path: str, arenas: list[Arena], sleep=time.sleep, timeout: float = CONNECT_TIMEOUT,
                 mode: str = "client", name: str = ""):
        if mode not in MODES:
            raise VhostUserError(f"port {name!r}: vhost-user mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.path = Path(socket_path)
        self.mode = mode
        self.sleep = sleep
        self.arenas = arenas
        self.bases = {a.name: a.buf.ctypes.data for a in arenas}
        self.listener = Listener(socket_path, name) if mode == "server" else None
        try:
            self.sock = self.listener.accept(timeout) if self.listener else connect(socket_path, timeout, name)
        except BaseException:
            if self.listener:
                self.listener.close()
            raise
        self._status = 0
        self._features = None
        self._negotiated: int | None = None
        self._kicks: dict[int, int] = {}
        self._calls: dict[int, int] = {}
        self._vrings: dict[int, tuple[int, int, int, int]] = {}     # queue -> size, desc, avail, used
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
        self._negotiated = features

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
        self._calls[q], self._kicks[q] = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        self._vrings[q] = (size, desc, avail, used)
        self._send_vring(q, 0)

    def _send_vring(self, q: int, base: int) -> None:
        """One vring's set-up; the kick descriptor last, which starts the ring (no PROTOCOL_FEATURES)."""
        size, desc, avail, used = self._vrings[q]
        _send(self.sock, SET_VRING_CALL, struct.pack("<Q", q), [self._calls[q]])
        _send(self.sock, SET_VRING_NUM, VRING_STATE.pack(q, size))
        _send(self.sock, SET_VRING_BASE, VRING_STATE.pack(q, base))
        _send(self.sock, SET_VRING_ADDR, VRING_ADDR.pack(q, 0, desc, used, avail, 0))
        _send(self.sock, SET_VRING_KICK, struct.pack("<Q", q), [self._kicks[q]])

    def notify_offset(self, q: int) -> int:
        return 0

    def notify(self, q: int, offset: int) -> None:
        os.eventfd_write(self._kicks[q], 1)      # the eventfd outlives connections: safe while the link is down

    def kick_target(self, q: int, offset: int) -> tuple[int, int, int, None]:
        """Compiled code kicks as notify does: a write of 1 to the queue's kick eventfd (virtio_jit)."""
        return V.KICK_EVENTFD, self._kicks[q], 0, None

    def share(self) -> None:
        """One process drives a vhost-user port (see the module docstring)."""

    # ---- connections after the first (vhost_user_link.LinkKeeper) ---------------------------------------
    def drop(self) -> None:
        """The connection is gone (or refused): close our end."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def reconnect_once(self, wait: float) -> socket.socket | None:
        """One attempt at a new connection: connect (client), or accept within ``wait`` seconds (server)."""
        return self.listener.try_accept(wait) if self.listener else try_connect(str(self.path))

    def restore(self, sock: socket.socket, bases: dict[int, int]) -> None:
        """Tell the backend on ``sock`` everything the first one was told; each vring starts at ``bases[q]``."""
        self.sock = sock
        self._features = None
        _send(sock, SET_OWNER)
        offered = self.device_features()
        missing = self._negotiated & ~offered
        if missing:
            raise VhostUserError(f"the backend offers {V.feature_names(offered)}, without "
                                 f"{V.feature_names(missing)} that the port runs with")
        self.set_driver_features(self._negotiated)
        self._send_memory_table()
        for q in self._vrings:
            self._send_vring(q, bases[q])

    def close(self) -> None:
        self.drop()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
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
    """A virtio-net device behind a vhost-user socket (``spec.address``), client or server mode."""
    driver_name = "vhost-user"
    _keeper: LinkKeeper | None = None

    @classmethod
    def open(cls, spec: PortSpec, arena: Arena, bufs, rx_pools: list, tx_done=None, sleep=time.sleep,
             hot_path: str | None = None, **_ignored) -> VhostUserDevice:
        """Reach the backend (connect, or listen and wait for it), set the port up (the memory table, every
        vring) and keep the link (vhost_user_link.py)."""
        check_opening(spec, rx_pools, hot_path)
        if spec.rx_queues != 1:
            raise DeviceError(f"port {spec.name!r}: a vhost-user port has one queue pair so far, got {spec.rx_queues}")
        mode = spec.options.get("mode", "client")
        if mode not in MODES:
            raise DeviceError(f"port {spec.name!r}: vhost-user mode must be one of {', '.join(MODES)}, got {mode!r}")
        t = VhostUserTransport(spec.address, [arena] if bufs.arena is arena else [arena, bufs.arena], sleep,
                               timeout=float(spec.options.get("connect_timeout", CONNECT_TIMEOUT)), mode=mode,
                               name=spec.name)
        dev = cls.start(spec, t, arena, bufs, rx_pools, tx_done, hot_path)
        spec.options["vhost_user_bases"] = dict(t.bases)     # for the stage processes (VhostUserDevice.attach)
        dev._keeper = LinkKeeper(spec.name, t, dev._restore, dev._held)
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

    # ---- the link (the opener's) ------------------------------------------------------------------------
    def _used_indices(self) -> dict[int, int]:
        """Each vring's used index, where a new backend starts (see the module docstring)."""
        rx = {V.rx_queue_index(p): int(q.used_hdr[1]) for p, q in enumerate(self._rx)}
        return rx | {V.tx_queue_index(p): int(q.used_hdr[1]) for p, q in enumerate(self._tx)}

    def _restore(self, sock) -> None:
        self.transport.restore(sock, self._used_indices())

    def _held(self) -> str:
        """What the rings hold now, for the link's log lines."""
        parts = [f"TX queue {p}: {(int(q.avail[1]) - int(q.used_hdr[1])) & 0xFFFF} frames posted and not yet "
                 "taken by the backend" for p, q in enumerate(self._tx)]
        parts += [f"RX queue {p}: {(int(q.used_hdr[1]) - int(q.state[V.QSTATE_LAST_USED])) & 0xFFFF} frames "
                  "received and not yet taken" for p, q in enumerate(self._rx)]
        return "; ".join(parts)

    @property
    def disconnects(self) -> int:
        """Times the backend went away since the port was opened (the opener's count)."""
        return self._keeper.disconnects if self._keeper else 0

    @property
    def reconnects(self) -> int:
        """Times a backend came back and the port ran again."""
        return self._keeper.reconnects if self._keeper else 0

    def wait_link_up(self, timeout: float) -> bool:
        """The opener: wait up to ``timeout`` seconds for the link; True when it is up."""
        return self._keeper.wait_up(timeout) if self._keeper else True

    def link_state(self) -> LinkState:
        if self._keeper is None:
            return super().link_state()
        up = self._keeper.up
        return LinkState(up, LINK_SPEED_MBIT if up else 0)

    def reconnecting(self) -> bool:
        return self._keeper is not None and not self._keeper.up

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()          # first: it uses the transport
            self._keeper = None
        super().close()


def open_vhost_user(spec, arena: Arena, bufs, rx_pools: list, tx_done=None, sleep=time.sleep,
                    hot_path: str | None = None) -> VhostUserDevice:
    """Reach the backend at ``spec.address`` (a socket path) and set the port up like a virtio-net device."""
    return VhostUserDevice.open(spec, arena, bufs, rx_pools, tx_done=tx_done, sleep=sleep, hot_path=hot_path)
