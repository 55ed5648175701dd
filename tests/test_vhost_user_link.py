"""The vhost-user port's sockets and link without DPDK: the server socket's rules, and a backend that goes away
and comes back (a scripted backend in a thread that records every message it gets).

tests/test_vhost_user.py runs the same against DPDK testpmd."""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time

import pytest

from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import vhost_user as VU
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.device import PortSpec
from ixypipe.nic.vhost_user_socket import Listener, VhostUserError

FEATURES = V.bit(V.F_VERSION_1) | V.bit(V.F_MRG_RXBUF) | V.bit(V.F_MAC) | V.bit(VU.F_PROTOCOL_FEATURES)
SETUP = [VU.SET_OWNER, VU.GET_FEATURES, VU.SET_FEATURES, VU.SET_MEM_TABLE,
         *[VU.SET_VRING_CALL, VU.SET_VRING_NUM, VU.SET_VRING_BASE, VU.SET_VRING_ADDR, VU.SET_VRING_KICK] * 2]


# ---- the server socket ------------------------------------------------------------------------------------

def test_a_stale_socket_is_removed_the_new_one_is_0600_and_goes_at_close(tmp_path, caplog):
    path = tmp_path / "s.sock"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(str(path))                  # a socket file nobody listens on: what a killed server leaves
    old.close()
    with caplog.at_level(logging.INFO):
        listener = Listener(str(path), "p1")
    assert f"removed the stale socket {path}" in caplog.text
    assert path.is_socket() and path.stat().st_mode & 0o777 == 0o600
    listener.close()
    assert not path.exists()


def test_the_server_socket_refuses_a_file_that_is_no_socket_and_a_socket_someone_listens_on(tmp_path):
    path = tmp_path / "s.sock"
    path.write_text("data")
    with pytest.raises(VhostUserError, match=f"{path} exists and is not a socket; not removed"):
        Listener(str(path))
    assert path.read_text() == "data"
    path.unlink()
    first = Listener(str(path))
    try:
        with pytest.raises(VhostUserError, match=f"another process listens on {path}"):
            Listener(str(path))
    finally:
        first.close()


def test_closing_leaves_a_socket_file_someone_else_made_since(tmp_path):
    path = tmp_path / "s.sock"
    listener = Listener(str(path))
    path.unlink()
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(str(path))
    try:
        listener.close()
        assert path.is_socket()
    finally:
        other.close()


def test_server_mode_waits_with_a_ceiling_and_says_for_what(tmp_path, caplog):
    path = tmp_path / "s.sock"
    with caplog.at_level(logging.INFO), pytest.raises(
            VhostUserError, match=rf"no vhost-user backend connected to {path} within 0.3 s \(server mode: .*client=1"):
        VU.VhostUserTransport(str(path), [], timeout=0.3, mode="server", name="p1")
    assert f"port p1: waiting up to 0.3 s for a vhost-user backend to connect to {path}" in caplog.text
    assert not path.exists()


def test_an_unknown_mode_is_refused(tmp_path):
    with pytest.raises(VhostUserError, match="vhost-user mode must be one of client, server, got 'both'"):
        VU.VhostUserTransport(str(tmp_path / "s.sock"), [], mode="both", name="p1")


# ---- a backend that goes away and comes back ----------------------------------------------------------------

class ScriptedBackend:
    """Listens on ``path`` (the port in client mode connects), answers GET_FEATURES with ``features`` and records
    each connection's messages as (request, payload)."""

    def __init__(self, path: str, features: int):
        self.features = features
        self.connections: list[list[tuple[int, bytes]]] = []
        self.conn: socket.socket | None = None
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conn, messages = conn, []
            self.connections.append(messages)
            while True:
                try:
                    head, ancillary, _, _ = conn.recvmsg(VU.HEADER.size, socket.CMSG_SPACE(4 * 8))
                except OSError:
                    break
                if len(head) < VU.HEADER.size:
                    break
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        for fd in struct.unpack(f"{len(data) // 4}i", data):
                            os.close(fd)
                request, _, size = VU.HEADER.unpack(head)
                payload = conn.recv(size, socket.MSG_WAITALL) if size else b""
                messages.append((request, payload))
                if request == VU.GET_FEATURES:
                    conn.sendall(VU.HEADER.pack(request, VU.FLAG_VERSION | VU.FLAG_REPLY, 8)
                                 + struct.pack("<Q", self.features))
            conn.close()

    def hang_up(self) -> None:
        self.conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def requests(messages) -> list[int]:
    return [r for r, _ in messages]


def bases(messages) -> dict[int, int]:
    return dict(VU.VRING_STATE.unpack(p) for r, p in messages if r == VU.SET_VRING_BASE)


def wait_for(check, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.01)


def test_a_backend_that_comes_back_gets_the_whole_set_up_again_from_the_used_index(make_arena, tmp_path, caplog):
    path = str(tmp_path / "b.sock")
    backend = ScriptedBackend(path, FEATURES)
    arena = make_arena(8 << 20)
    bufs = PacketBuffers.create(arena, 1024)
    pool = Mempool.create(arena, bufs, "pool0", 0, 1024, 0)
    spec = PortSpec("v0", "vhost-user", path, rx_ring_size=64, tx_ring_size=64)
    dev = VU.open_vhost_user(spec, arena, bufs, [pool], tx_done=Homing.to_pools(bufs, [pool]))
    try:
        first = backend.connections[0]
        wait_for(lambda: len(first) == len(SETUP), "the set-up at the backend")
        assert requests(first) == SETUP and bases(first) == {0: 0, 1: 0}
        negotiated = next(p for r, p in first if r == VU.SET_FEATURES)
        assert struct.unpack("<Q", negotiated)[0] == FEATURES & ~V.bit(VU.F_PROTOCOL_FEATURES)
        idx = pool.alloc(5)
        for i in idx:
            bufs.write_packet(int(i), bytes(60))
        assert dev.tx_batch(0, idx) == 5
        dev._tx[0].used_hdr[1] = 3          # as if the backend had sent 3 of them before it went
        with caplog.at_level(logging.WARNING):
            backend.hang_up()
            wait_for(lambda: dev.reconnects == 1, "the reconnection")     # at once: the backend listens on
            assert dev.disconnects == 1 and dev.wait_link_up(0)
        second = backend.connections[1]
        wait_for(lambda: len(second) == len(SETUP), "the set-up at the backend")    # its thread reads on
        assert requests(second) == SETUP
        assert bases(second) == {0: 0, 1: 3}                        # each vring where the backend left it
        assert next(p for r, p in second if r == VU.SET_FEATURES) == negotiated
        assert dev.reconnects == 1 and dev.link_state().up
        assert "link down: the vhost-user backend on" in caplog.text
        assert "TX queue 0: 2 frames posted and not yet taken by the backend" in caplog.text
        assert "link up: reconnected to the vhost-user backend" in caplog.text

        # one that lacks a feature the port runs with is refused (and retried) until a good one comes
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            backend.features = FEATURES & ~V.bit(V.F_MRG_RXBUF)
            backend.hang_up()
            wait_for(lambda: len(backend.connections) >= 4, "two refused attempts")
            assert not dev.link_state().up and dev.reconnecting()
            backend.features = FEATURES
            assert dev.wait_link_up(60)
        assert "connected but the set-up failed: the backend offers" in caplog.text
        assert "without MRG_RXBUF that the port runs with" in caplog.text
        last = backend.connections[-1]
        wait_for(lambda: len(last) == len(SETUP), "the set-up at the backend")
        assert requests(last) == SETUP and dev.reconnects == 2
    finally:
        dev.close()
        backend.close()
