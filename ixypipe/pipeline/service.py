"""Running as a service: the "ready" line, and systemd's notification protocol (sd_notify) for the supervisor.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``, a unix datagram socket
(a path, or an abstract name when it starts with '@'); a service sends it
newline-separated ``KEY=VALUE`` assignments, one datagram each time:
``READY=1`` once traffic can flow, ``STATUS=...`` with the latest figures,
``WATCHDOG=1`` at least every half ``$WATCHDOG_USEC`` while healthy (the
supervisor sends it from its watch loop, so a stalled loop lets systemd's
watchdog fire), ``STOPPING=1`` when a stop begins.  Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op.

The protocol is one ``sendto``; the PyPI packages for it are either
unmaintained (sdnotify, last release 2017) or need libsystemd's headers to
build (systemd-python), so it is written here.
"""

from __future__ import annotations

import logging
import os
import socket
import time

from ixypipe.jsonout import json_line
from ixypipe.pipeline.report import port_totals, rate_text

log = logging.getLogger(__name__)


def ready_line(pipeline: str, stages: int, ports: list[str]) -> str:
    return f"ready: {stages} stages forwarding on {', '.join(ports)} (pipeline {pipeline})"


def ready_object(plan) -> dict:
    """The ready line as JSON: its ports and stages keyed by name, as every JSON object keys them."""
    return {"type": "ready", "pipeline": plan.name,
            "ports": {p.name: {"driver": p.driver} for p in plan.ports},
            "stages": {s.name: {"role": s.role, "cpu": -1 if s.cpu is None else int(s.cpu)} for s in plan.stages}}


def print_ready(out, json_lines: bool, plan) -> None:
    """The one line (or JSON object) that says ``plan``'s pipeline forwards: printed once, before the figures."""
    text = (json_line(ready_object(plan)) if json_lines
            else ready_line(plan.name, len(plan.stages), list(plan.port_names)))
    print(text, file=out, flush=True)


class Notifier:
    """sd_notify to ``$NOTIFY_SOCKET`` (``environ`` for tests); every method does nothing outside systemd.

    A send that fails (the socket went away) is logged once at debug level
    and otherwise ignored: the data plane never stops for its supervisor.
    """

    def __init__(self, environ=None):
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        self.sock = None
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_every = self._watchdog_interval(env)    # seconds, None without a watchdog
        self._next_watchdog = 0.0
        self._failed = False
        self._last = (0, 0, 0.0)          # (rx packets, tx packets, elapsed) at the last figures()

    @staticmethod
    def _watchdog_interval(env) -> float | None:
        """Half of $WATCHDOG_USEC (as sd_watchdog_enabled advises), when it is set for this process."""
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = env.get("WATCHDOG_PID", "")
        if usec <= 0 or (pid and pid != str(os.getpid())):
            return None
        return usec / 2e6

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *assignments: str) -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            if not self._failed:
                log.debug("sd_notify to %s: %s", self.address.replace("\0", "@"), exc)
            self._failed = True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")
        self._next_watchdog = time.monotonic()      # the first WATCHDOG=1 goes with the watch loop's first turn

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def figures(self, plan, table, elapsed: float) -> None:
        """STATUS= with the pipeline's rates since the last call (every stats interval): short, for systemctl."""
        if self.sock is None:
            return
        totals = port_totals(plan, table)
        rx, tx = (sum(t[key] for t in totals.values()) for key in ("rx_packets", "tx_packets"))
        last_rx, last_tx, last_t = self._last
        dt = elapsed - last_t
        if dt > 0:
            self.status(f"forwarding: RX {rate_text((rx - last_rx) / dt)}, TX {rate_text((tx - last_tx) / dt)}")
        self._last = (rx, tx, elapsed)

    def watchdog(self) -> None:
        """Called on every turn of a healthy watch loop: WATCHDOG=1 once per interval."""
        if self.watchdog_every is None or self.sock is None:
            return
        now = time.monotonic()
        if now >= self._next_watchdog:
            self.send("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_every

    def stopping(self, why: str) -> None:
        self.send("STOPPING=1", f"STATUS=stopping: {why}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
