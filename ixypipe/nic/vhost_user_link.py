"""The link of a vhost-user port: noticing that the backend went away and bringing the connection back.

One daemon thread per opened port (:class:`LinkKeeper`), in the process
that opened it (the supervisor, ``ixypipe fwd``, a test): only that process
holds the socket.  It sleeps in poll() on the connection (a backend that
did not negotiate PROTOCOL_FEATURES sends nothing unasked, so readable
means closed) and, in server mode, on the listening socket too (a second
backend is refused while one is connected).

When the backend closes the connection (it stopped, was killed, restarts)
the link is down: the keeper logs what each virtqueue held at that moment
(TX frames posted and not yet taken, which stay in the ring for the next
backend) and then reconnects: client mode retries connect() with a
doubling back-off up to BACKOFF_MAX, server mode accepts the next backend,
both saying every STILL_DOWN_EVERY seconds that the link is still down.  A
new connection gets the whole set-up again (transport.restore: owner,
features, memory table, every vring with its kick and call eventfds and
its base) and the link is up.  See vhost_user.py for why nothing posted is
lost on the way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ixypipe.nic.vhost_user_socket import readable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2              # how often the keeper looks at its stop flag
BACKOFF_FIRST = 0.05            # seconds before the first reconnection attempt, doubling ...
BACKOFF_MAX = 1.0               # ... up to this
STILL_DOWN_EVERY = 10.0         # seconds between "still down" lines


class LinkKeeper:
    """Watches one port's connection and restores it (see the module docstring).

    ``transport`` has ``sock`` (the connection, None while down), ``path``, ``listener`` (server mode, else
    None), ``drop()`` and ``reconnect_once(wait)`` (a new connection or None); ``restore(sock)`` sets a new
    connection up (raising when it cannot); ``held()`` says what each virtqueue holds now, for the log."""

    def __init__(self, name: str, transport, restore: Callable, held: Callable[[], str]):
        self.name = name
        self.transport = transport
        self.restore = restore
        self.held = held
        self.listener = transport.listener
        self.disconnects = 0            # times the backend went away
        self.reconnects = 0             # times a backend came back and the port runs again
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vhost-user {name}", daemon=True)
        self._thread.start()

    @property
    def up(self) -> bool:
        return self._up.is_set()

    def wait_up(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    # ---- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._connected():
                    continue
                self._down()
                if self._reconnect():
                    self._up.set()
        except Exception:             # never silently: the port stays down and says why
            self._up.clear()
            log.exception("port %s: the vhost-user link keeper failed; the port stays down", self.name)

    def _connected(self) -> bool:
        """Poll once: False when the backend closed the connection."""
        sock = self.transport.sock
        watch = [sock] + ([self.listener] if self.listener is not None else [])
        ready = readable(watch, POLL_SECONDS)
        if sock in ready:
            try:
                data = sock.recv(4096)
            except OSError:               # ECONNRESET: a backend killed with our messages unread
                data = b""
            if not data:
                return False
            log.warning("port %s: the vhost-user backend sent %d bytes nobody asked for; ignored", self.name,
                        len(data))
        if self.listener is not None and self.listener in ready:
            extra = self.listener.try_accept()
            if extra is not None:
                extra.close()
                log.warning("port %s: a second vhost-user backend connected to %s while one is connected: "
                            "refused", self.name, self.listener.path)
        return True

    def _down(self) -> None:
        self._up.clear()
        self.disconnects += 1
        self.transport.drop()
        log.warning("port %s: link down: the vhost-user backend on %s closed the connection (%s); reconnecting",
                    self.name, self.transport.path, self.held())

    def _reconnect(self) -> bool:
        """Until a backend is back (True) or the port closes (False)."""
        started = time.monotonic()
        said, attempts, backoff = started, 0, BACKOFF_FIRST
        while not self._stop.is_set():
            attempts += 1
            sock = self.transport.reconnect_once(min(backoff, POLL_SECONDS))
            if sock is not None:
                try:
                    self.restore(sock)
                except Exception as exc:          # OSError, VhostUserError (a backend that refuses our features)
                    log.warning("port %s: the vhost-user backend on %s connected but the set-up failed: %s",
                                self.name, self.transport.path, exc)
                    self.transport.drop()
                else:
                    self.reconnects += 1
                    log.warning("port %s: link up: reconnected to the vhost-user backend on %s after %.1f s "
                                "(%d attempts); %s", self.name, self.transport.path, time.monotonic() - started,
                                attempts, self.held())
                    return True
            if self.listener is None:
                self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            now = time.monotonic()
            if now - said >= STILL_DOWN_EVERY:
                said = now
                log.warning("port %s: link still down: no vhost-user backend on %s for %.0f s (%d attempts)",
                            self.name, self.transport.path, now - started, attempts)
        return False
