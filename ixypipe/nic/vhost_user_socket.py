"""Where a vhost-user port's connection to its backend comes from: the unix socket, in either mode.

``client``: the backend listens on the path (DPDK's net_vhost by default);
:func:`connect` tries until one does.  ``server``: this process listens
(:class:`Listener`) and the backend connects (net_vhost with ``client=1``,
QEMU's ``-chardev socket,...`` without ``server``).  The listening socket is
created mode 0600 (only its owner and root may connect: a connected backend
is sent the file descriptors of the arena), a stale socket file left by a
process that is gone is removed first (one that another process listens on,
one owned by another user, or something that is no socket is refused), and
the file is removed again when the listener closes, unless something else
replaced it meanwhile.

Both ways of waiting have a ceiling and say what they wait for and where
(every PROGRESS_EVERY seconds while it lasts); both also have a one-attempt
form (:func:`try_connect`, :meth:`Listener.try_accept`) for reconnecting.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import time

from ixypipe.nic.device import DeviceError

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0          # seconds to reach the backend when the port opens (either mode), by default
REPLY_TIMEOUT = 10.0            # seconds a connection's send, receive or connect may block (a backend that hangs)
PROGRESS_EVERY = 5.0            # seconds between "still waiting" lines
RETRY = 0.05                    # seconds between connection attempts while opening


class VhostUserError(DeviceError):
    """The backend cannot be reached or answered out of protocol; the message says which and how."""


def backend_hint(path: str, mode: str) -> str:
    """How to start DPDK's backend for this socket and mode (for messages)."""
    client = ",client=1" if mode == "server" else ""
    return f"e.g. dpdk-testpmd --vdev 'net_vhost0,iface={path}{client}'"


def try_connect(path: str) -> socket.socket | None:
    """One attempt (client mode): a connected socket, or None while no backend listens on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT)      # a listener whose backlog is full makes connect() wait
    try:
        sock.connect(path)
        return sock
    except (FileNotFoundError, ConnectionRefusedError, TimeoutError):
        sock.close()
        return None
    except BaseException:
        sock.close()
        raise


def connect(path: str, timeout: float, name: str = "") -> socket.socket:
    """Connect to the backend listening on ``path``, trying for up to ``timeout`` seconds (client mode)."""
    started = time.monotonic()
    said = started
    while True:
        sock = try_connect(path)
        if sock is not None:
            return sock
        now = time.monotonic()
        if now - started > timeout:
            why = "no such file" if not os.path.exists(path) else "connection refused"
            raise VhostUserError(f"no vhost-user backend listens on {path} ({why}) after {timeout:g} s; start it "
                                 f"first ({backend_hint(path, 'client')})")
        if now - said >= PROGRESS_EVERY:
            said = now
            log.info("%swaiting for a vhost-user backend to listen on %s (%.0f s of %g s)", _who(name), path,
                     now - started, timeout)
        time.sleep(RETRY)


def _who(name: str) -> str:
    return f"port {name}: " if name else ""


class Listener:
    """The listening socket of a port in server mode (see the module docstring)."""

    def __init__(self, path: str, name: str = ""):
        self.path = path
        self.name = name
        remove_stale_socket(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(path)
            os.chmod(path, 0o600)        # before listen(): nobody can connect to it until then
            self.sock.listen(1)
            self.inode = os.stat(path).st_ino
        except OSError as exc:
            self.sock.close()
            raise VhostUserError(f"cannot listen on {path}: {exc.strerror or exc}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    def try_accept(self, wait: float = 0.0) -> socket.socket | None:
        """A backend's connection if one comes within ``wait`` seconds, else None."""
        if not readable([self], wait):
            return None
        conn, _ = self.sock.accept()
        conn.settimeout(REPLY_TIMEOUT)
        return conn

    def accept(self, timeout: float) -> socket.socket:
        """Wait up to ``timeout`` seconds for the backend to connect, saying so while it lasts."""
        started = time.monotonic()
        log.info("%swaiting up to %g s for a vhost-user backend to connect to %s (server mode; %s)", _who(self.name),
                 timeout, self.path, backend_hint(self.path, "server"))
        while True:
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise VhostUserError(f"no vhost-user backend connected to {self.path} within {timeout:g} s (server "
                                     f"mode: ixypipe listens there and the backend connects, "
                                     f"{backend_hint(self.path, 'server')})")
            conn = self.try_accept(min(left, PROGRESS_EVERY))
            if conn is not None:
                return conn
            if time.monotonic() - started < timeout:
                log.info("%sstill waiting for a vhost-user backend to connect to %s (%.0f s of %g s)",
                         _who(self.name), self.path, time.monotonic() - started, timeout)

    def close(self) -> None:
        """Stop listening and remove the socket file, if it is still the one this listener made."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        try:
            if os.stat(self.path).st_ino == self.inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def readable(things: list, wait: float) -> list:
    """Those of ``things`` (objects with fileno()) that poll() finds readable or hung up within ``wait`` s."""
    poller = select.poll()
    by_fd = {thing.fileno(): thing for thing in things}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLPRI)
    return [by_fd[fd] for fd, _ in poller.poll(max(0, int(wait * 1000)))]


def remove_stale_socket(path: str) -> None:
    """Clear ``path`` for a listener: nothing there, or a socket of this user nobody listens on (removed)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise VhostUserError(f"{path} exists and is not a socket; not removed (choose another socket path)")
    if st.st_uid != os.geteuid():
        raise VhostUserError(f"{path} is a socket of uid {st.st_uid}, not this user's; not removed")
    probe = try_connect(path)
    if probe is not None:
        probe.close()
        raise VhostUserError(f"another process listens on {path}; two vhost-user servers cannot share a socket")
    os.unlink(path)
    log.info("removed the stale socket %s (nothing listened on it)", path)
