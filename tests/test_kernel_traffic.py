"""Real kernel traffic through ixypipe as a bump in the wire between two hosts in namespaces of their own.

Host A and host B (ixypipe.ops.netns.VethTestbed) talk through the two outer
veth ends, which only ixypipe joins: ping, a 50 MB TCP transfer checked by
SHA-256, a worker that drops ICMP, and a pcap sink that tshark counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.af_packet import AfPacketDevice
from ixypipe.nic.device import PortSpec
from ixypipe.nic.pcap import PcapDevice
from ixypipe.ops.forwarder import Forwarder
from ixypipe.ops.netns import VethTestbed
from ixypipe.pcapfile import read_pcap
from tests.support.system import needs_root, needs_tool

pytestmark = needs_root
REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
POOL = 4096
TCP_BYTES = 50 * 1000 * 1000
TCP_PORT = 5077

SERVER = """
import hashlib, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(1); srv.settimeout(60)
print("listening", flush=True)
conn, _ = srv.accept(); conn.settimeout(60)
h, n = hashlib.sha256(), 0
while True:
    chunk = conn.recv(1 << 16)
    if not chunk:
        break
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""
CLIENT = """
import socket, sys
data = open(sys.argv[3], "rb").read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(data); s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
"""


class Bump:
    """Two AF_PACKET ports on the testbed's outer ends, joined by the single-process Forwarder."""

    def __init__(self, tb: VethTestbed, filter_fn=None, sink: Path | None = None):
        self.arena = Arena.create(PacketBuffers.bytes_needed(2 * POOL) + (8 << 20), tag="ktest")
        self.bufs = PacketBuffers.create(self.arena, 2 * POOL)
        self.pools = [Mempool.create(self.arena, self.bufs, f"p{k}", k * POOL, POOL, k) for k in (0, 1)]
        self.home = Homing.to_pools(self.bufs, self.pools)
        self.dropped = 0
        self.filter_fn = filter_fn
        a = AfPacketDevice.open(PortSpec("a", "af_packet", tb.port_a, rx_ring_size=1024, tx_ring_size=1024),
                                self.arena, self.bufs, [self.pools[0]], tx_done=self.home)
        if sink is None:
            b = AfPacketDevice.open(PortSpec("b", "af_packet", tb.port_b, rx_ring_size=1024, tx_ring_size=1024),
                                    self.arena, self.bufs, [self.pools[1]], tx_done=self.home)
        else:
            b = PcapDevice.open(PortSpec("b", "pcap", str(sink), options={"mode": "write"}), self.arena,
                                self.bufs, [self.pools[1]], tx_done=self.home)
        self.devs = [a, b]
        for d in self.devs:
            d.rx_batch(0, np.empty(1, np.uint32))          # the RX sockets exist before any traffic
        self.fwd = Forwarder(*(self.filtered(d) if filter_fn else d for d in self.devs), batch=64, touch=False,
                             bufs=self.bufs)

    def filtered(self, dev):
        """``dev`` whose transmit first applies the worker function's keep-mask (as a worker stage would)."""
        bump, tx = self, dev.tx_batch

        def tx_batch(queue, idx):
            keep = bump.filter_fn(bump.bufs.data[idx], bump.bufs.length[idx])
            if not keep.all():
                bump.dropped += int((~keep).sum())
                bump.home(idx[~keep])
            tx(queue, idx[keep])
            return len(idx)

        dev.tx_batch = tx_batch
        return dev

    def forward_while(self, proc: subprocess.Popen, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            self.fwd.run(duration=0.1, out=None)
        self.fwd.drain()

    def close(self) -> None:
        for d in self.devs:
            d.close()
        self.arena.destroy()


@pytest.fixture
def bump(testbed):
    made = []

    def make(**kw) -> Bump:
        made.append(Bump(testbed, **kw))
        return made[-1]

    yield make
    for b in made:
        b.close()


def ping(tb: VethTestbed, count: int = 20) -> subprocess.Popen:
    return tb.a.popen(["ping", "-n", "-c", str(count), "-i", "0.05", "-W", "1", tb.b.ip],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_loss(proc: subprocess.Popen) -> tuple[int, int, str]:
    out = proc.communicate(timeout=30)[0]
    line = next(x for x in out.splitlines() if "packets transmitted" in x)
    sent, got = int(line.split()[0]), int(line.split(",")[1].split()[0])
    return sent, got, out


def tcp_transfer(tb: VethTestbed, bump: Bump | None, tmp_path: Path) -> tuple[str, str, int]:
    """Send 50 MB of random bytes from A to B; (sent digest, received digest, bytes received)."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(TCP_BYTES))
    sent_digest = hashlib.sha256(payload.read_bytes()).hexdigest()
    (tmp_path / "server.py").write_text(SERVER)
    (tmp_path / "client.py").write_text(CLIENT)
    server = tb.b.popen([sys.executable, str(tmp_path / "server.py"), str(TCP_PORT)], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "listening"
    client = tb.a.popen([sys.executable, str(tmp_path / "client.py"), tb.b.ip, str(TCP_PORT), str(payload)],
                        stderr=subprocess.PIPE, text=True)
    if bump is not None:
        bump.forward_while(client, timeout=120)
    assert client.wait(120) == 0, client.stderr.read()
    out = server.communicate(timeout=30)[0].split()
    return sent_digest, out[1], int(out[0])


@needs_tool("ping")
def test_ping_through_ixypipe_loses_nothing(testbed, bump):
    b = bump()
    proc = ping(testbed)
    b.forward_while(proc, timeout=30)
    sent, got, out = ping_loss(proc)
    assert (sent, got) == (20, 20), out
    assert " 0% packet loss" in out
    # every echo request went A -> B and every reply B -> A through the two ports (plus ARP)
    a, bb = (d.read_stats() for d in b.devs)
    assert a.rx_packets >= 20 and bb.tx_packets >= 20 and bb.rx_packets >= 20 and a.tx_packets >= 20
    assert a.rx_dropped == 0 and bb.rx_dropped == 0


@needs_tool("ping")
def test_no_bump_no_traffic(testbed):
    """The hosts reach each other only through ixypipe: without it, ping fails."""
    proc = testbed.a.run(["ping", "-n", "-c", "2", "-i", "0.1", "-W", "1", testbed.b.ip], timeout=30)
    assert "2 packets transmitted, 0 received" in proc.stdout


def test_50_mb_tcp_transfer_arrives_intact(testbed, bump, tmp_path):
    b = bump()
    sent, received, n = tcp_transfer(testbed, b, tmp_path)
    assert n == TCP_BYTES
    assert received == sent
    assert b.devs[0].read_stats().rx_packets > TCP_BYTES // 1500


def load_drop_icmp():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import drop_icmp
    finally:
        sys.path.remove(str(EXAMPLES))
    return drop_icmp


@needs_tool("ping")
def test_dropping_icmp_stops_ping_but_not_tcp(testbed, bump, tmp_path):
    drop_icmp = load_drop_icmp()
    b = bump(filter_fn=drop_icmp.keep_mask)
    proc = ping(testbed, count=5)
    b.forward_while(proc, timeout=30)
    sent, got, out = ping_loss(proc)
    assert (sent, got) == (5, 0), out
    assert b.dropped == 5                              # the five echo requests, nothing else
    sent_digest, received, n = tcp_transfer(testbed, b, tmp_path)
    assert n == TCP_BYTES and received == sent_digest
    assert b.dropped == 5


@needs_tool("tshark")
@needs_tool("ping")
def test_tshark_counts_exactly_what_went_to_the_pcap_sink(testbed, bump, tmp_path):
    sink = tmp_path / "sink.pcap"
    b = bump(sink=sink)
    # B is not connected (its port is the file), so A needs B's address without ARP to send echo requests
    testbed.a.run(["ip", "neigh", "replace", testbed.b.ip, "lladdr", testbed.b.mac, "dev", testbed.a.ifname],
                  check=True)
    proc = ping(testbed, count=10)
    b.forward_while(proc, timeout=30)
    ping_loss(proc)
    sent = b.devs[0].read_stats().rx_packets
    assert b.devs[1].read_stats().tx_packets == sent
    b.devs[1].close()                                 # flushes the file
    res = subprocess.run(["tshark", "-r", str(sink), "-T", "fields", "-e", "frame.len", "-e", "icmp.type"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = [r.split("\t") for r in res.stdout.splitlines()]
    assert len(rows) == sent == len(read_pcap(sink))
    assert sum(1 for r in rows if r[1] == "8") == 10     # the ten echo requests are in it


# ---- the same through `ixypipe run pipelines/bridge-veth.toml` (RX / worker / TX processes) ------------

BRIDGE_VETH = REPO / "pipelines" / "bridge-veth.toml"
STARTUP_TIMEOUT = 60.0


def pipeline_file(tmp_path: Path, tb: VethTestbed, function: str | None = None, sink: Path | None = None) -> Path:
    """bridge-veth.toml on the testbed's interfaces; optionally another worker, or port b a pcap sink."""
    text = BRIDGE_VETH.read_text()
    text = text.replace('interface = "veth-a"', f'interface = "{tb.port_a}"')
    text = text.replace('interface = "veth-b"', f'interface = "{tb.port_b}"')
    if function is not None:
        text, n = re.subn(r'^function = .*$', f'function = "{function}"', text, flags=re.M)
        assert n == 1
    if sink is not None:
        head, rest = text.split("[[ports]]", 1)
        first, rest = rest.split("[[ports]]", 1)
        workers = rest[rest.index("[workers]"):]
        text = (head + "[[ports]]" + first + "[[ports]]\n"
                f'name = "b"\ndriver = "pcap"\npath = "{sink}"\nmode = "write"\nforward_to = "a"\n\n' + workers)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


class RunningPipeline:
    """``ixypipe run FILE --json`` in the background, stopped with SIGINT like a user's Ctrl-C."""

    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", str(path), "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        self.lines: list[str] = []
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:          # the first per-second line: every stage runs
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line)
                if line.startswith("{"):
                    return
            if self.proc.poll() is not None:
                break
        err = self.stop_and_wait()[1]
        raise AssertionError(f"the pipeline did not start: {''.join(self.lines)}\n{err}")

    def stop_and_wait(self) -> tuple[dict | None, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        docs = [json.loads(x) for x in (self.lines + out.splitlines(True)) if x.startswith("{")]
        summaries = [d for d in docs if d.get("summary")]
        return (summaries[-1] if summaries else None), err


@pytest.fixture
def run_pipeline():
    pytest.importorskip("ixypipe.workers.loader", reason="the worker loader is not built yet")
    started: list[RunningPipeline] = []

    def start(path: Path) -> RunningPipeline:
        started.append(RunningPipeline(path))
        return started[-1]

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.stop_and_wait()


@needs_tool("ping")
def test_pipeline_carries_ping_and_50_mb_of_tcp(testbed, run_pipeline, tmp_path):
    p = run_pipeline(pipeline_file(tmp_path, testbed))
    proc = ping(testbed)
    sent, got, out = ping_loss(proc)
    assert (sent, got) == (20, 20), out
    digest, received, n = tcp_transfer(testbed, None, tmp_path)
    assert n == TCP_BYTES and received == digest
    summary, err = p.stop_and_wait()
    assert p.proc.returncode == 0, err
    assert summary["ok"] is True and summary["in_flight"] == 0
    assert summary["ports"]["a"]["rx_packets"] > TCP_BYTES // 1500
    assert summary["received"] == summary["transmitted"] + sum(summary["drops"].values())


@needs_tool("ping")
def test_pipeline_worker_dropping_icmp_stops_ping_not_tcp(testbed, run_pipeline, tmp_path):
    p = run_pipeline(pipeline_file(tmp_path, testbed, function=f"{EXAMPLES / 'drop_icmp.py'}:drop_icmp"))
    sent, got, out = ping_loss(ping(testbed, count=5))
    assert (sent, got) == (5, 0), out
    digest, received, n = tcp_transfer(testbed, None, tmp_path)
    assert n == TCP_BYTES and received == digest
    summary, err = p.stop_and_wait()
    assert p.proc.returncode == 0, err
    assert summary["drops"]["worker"] == 5           # exactly the five echo requests
    assert summary["ok"] is True


@needs_tool("tshark")
@needs_tool("ping")
def test_pipeline_pcap_sink_holds_exactly_what_was_sent(testbed, run_pipeline, tmp_path):
    sink = tmp_path / "sink.pcap"
    p = run_pipeline(pipeline_file(tmp_path, testbed, sink=sink))
    testbed.a.run(["ip", "neigh", "replace", testbed.b.ip, "lladdr", testbed.b.mac, "dev", testbed.a.ifname],
                  check=True)
    ping_loss(ping(testbed, count=10))
    summary, err = p.stop_and_wait()
    assert p.proc.returncode == 0, err
    went = summary["ports"]["b"]["tx_packets"]
    res = subprocess.run(["tshark", "-r", str(sink), "-T", "fields", "-e", "icmp.type"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()
    assert len(rows) == went >= 10
    assert rows.count("8") == 10
