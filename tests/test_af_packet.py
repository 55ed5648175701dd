"""AF_PACKET ports on veth pairs: exact frames in and out, kernel drop counts, fanout, errors."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import af_packet_jit
from ixypipe.nic.af_packet import AfPacketDevice, AfPacketError
from ixypipe.nic.device import DeviceError, PortSpec
from ixypipe.ops.netns import VethTestbed
from ixypipe.pcapfile import PcapWriter
from tests.support.system import TESTBED_TOOLS, needs_root, needs_tool

pytestmark = needs_root
ETHERTYPE = 0x88B5          # IEEE local experimental: nothing else on the wire uses it
IFF_PROMISC = 0x100
POOL = 2048


@pytest.fixture
def env(make_arena):
    arena = make_arena(16 << 20)
    bufs = PacketBuffers.create(arena, 2 * POOL)
    pools = [Mempool.create(arena, bufs, f"pool{i}", i * POOL, POOL, i) for i in range(2)]
    return arena, bufs, pools, Homing.to_pools(bufs, pools)


@pytest.fixture(params=["numpy", "numba"])
def hot_path(request, monkeypatch):
    """Run a data-path test on both hot paths: the numpy reference and the compiled kernels."""
    if request.param == "numba" and not af_packet_jit.AVAILABLE:
        pytest.skip("the compiled path needs numba: pip install -e '.[fast]'")
    if request.param == "numpy":
        monkeypatch.setattr(af_packet_jit, "AVAILABLE", False)
    return request.param


def frame(seq: int, size: int = 100, dst: str = "02aaaaaaaa02", src: str = "02aaaaaaaa01") -> bytes:
    head = bytes.fromhex(dst) + bytes.fromhex(src) + ETHERTYPE.to_bytes(2, "big")
    body = struct.pack(">I", seq) + bytes((seq + i) & 0xFF for i in range(size - 18))
    return head + body


def write_pcap(path: Path, frames: list[bytes]) -> Path:
    with PcapWriter(path) as w:
        w.write_batch(frames)
    return path


def receive(dev: AfPacketDevice, pool: Mempool, want: int, seconds: float = 5.0, queue: int = 0) -> list[bytes]:
    """Frames of our ethertype received on ``queue``, freeing the buffers."""
    got, out = [], np.empty(64, np.uint32)
    deadline = time.monotonic() + seconds
    while len(got) < want and time.monotonic() < deadline:
        n = dev.rx_batch(queue, out)
        for i in out[:n]:
            pkt = dev.bufs.packet(int(i)).tobytes()
            if pkt[12:14] == ETHERTYPE.to_bytes(2, "big"):
                got.append(pkt)
        pool.free(out[:n].copy())
        if not n:
            time.sleep(0.001)
    return got


def test_frames_from_a_host_arrive_byte_exact(testbed, env, tmp_path, hot_path):
    arena, bufs, pools, home = env
    dev = AfPacketDevice.open(PortSpec("a", "af_packet", testbed.port_a), arena, bufs, [pools[0]], tx_done=home)
    assert dev.compiled == (hot_path == "numba")
    frames = [frame(i, 60 + 13 * i) for i in range(100)]
    dev.rx_batch(0, np.empty(1, np.uint32))          # the RX socket exists before the host sends
    assert testbed.a.send(write_pcap(tmp_path / "f.pcap", frames)) == 100
    assert receive(dev, pools[0], 100) == frames
    s = dev.read_stats()
    assert s.rx_packets >= 100 and s.rx_dropped == 0
    assert pools[0].available() == POOL
    dev.close()


def test_transmitted_frames_arrive_at_the_host_in_order(testbed, env, tmp_path, hot_path):
    arena, bufs, pools, home = env
    spec = PortSpec("b", "af_packet", testbed.port_b, tx_ring_size=128)
    dev = AfPacketDevice.open(spec, arena, bufs, [pools[0]], tx_done=home)
    frames = [frame(i, 60 + (i * 7) % 1400) for i in range(1000)]
    cap = testbed.b.capture(tmp_path / "cap.pcap", 1000, 20, ETHERTYPE)
    idx = pools[0].alloc(1000)
    for i, f in zip(idx, frames, strict=True):
        bufs.write_packet(int(i), f)
    pending, calls = idx, 0
    while len(pending):
        taken = dev.tx_batch(0, pending)
        assert taken <= 128                          # never more than the ring holds
        pending = pending[taken:]
        calls += 1
        if not taken:
            time.sleep(0.0005)
    assert dev.tx_drain(0, timeout=5) == 0
    assert cap.frames() == frames
    assert pools[0].available() == POOL              # every buffer went home through tx_done
    s = dev.read_stats()
    assert (s.tx_packets, s.tx_bytes, s.tx_dropped) == (1000, sum(map(len, frames)), 0)
    assert calls >= 1000 // 128
    dev.close()


def test_a_port_does_not_hear_its_own_transmissions(testbed, env, tmp_path):
    arena, bufs, pools, home = env
    sup = AfPacketDevice.open(PortSpec("b", "af_packet", testbed.port_b), arena, bufs, [pools[0]], tx_done=home)
    rx = AfPacketDevice.attach(PortSpec("b", "af_packet", testbed.port_b), arena, bufs, {0: pools[0]})
    tx = AfPacketDevice.attach(PortSpec("b", "af_packet", testbed.port_b), arena, bufs, None, tx_done=home)
    idx = pools[1].alloc(50)
    for k, i in enumerate(idx):
        bufs.write_packet(int(i), frame(k))
    assert tx.tx_batch(0, idx) == 50
    assert tx.tx_drain(0, 5) == 0
    assert receive(rx, pools[0], 1, seconds=0.5) == []          # none of the 50 came back
    # what the host sends is heard
    testbed.b.send(write_pcap(tmp_path / "f.pcap", [frame(7)]))
    assert receive(rx, pools[0], 1) == [frame(7)]
    s = sup.read_stats()                             # the supervisor's object sees the stages' counts
    assert s.tx_packets == 50 and s.rx_packets >= 1
    for d in (rx, tx, sup):
        d.close()


def test_kernel_drops_are_counted_when_the_ring_is_full(testbed, env, tmp_path, hot_path):
    arena, bufs, pools, home = env
    spec = PortSpec("a", "af_packet", testbed.port_a, rx_ring_size=128)
    sup = AfPacketDevice.open(spec, arena, bufs, [pools[0]])
    rx = AfPacketDevice.attach(spec, arena, bufs, {0: pools[0]})
    testbed.a.send(write_pcap(tmp_path / "f.pcap", [frame(i) for i in range(1000)]))
    time.sleep(0.2)
    got = receive(rx, pools[0], 1000, seconds=1.0)
    assert [int.from_bytes(f[14:18], "big") for f in got] == list(range(128))   # the first 128 fit the ring
    rx.close()                                       # the last PACKET_STATISTICS read happens at close
    s = sup.read_stats()
    assert s.rx_packets == 128
    assert s.rx_dropped == 1000 - 128
    sup.close()


def test_an_empty_mempool_leaves_frames_in_the_ring(testbed, env, tmp_path, hot_path):
    arena, bufs, pools, home = env
    dev = AfPacketDevice.open(PortSpec("a", "af_packet", testbed.port_a), arena, bufs, [pools[0]])
    dev.rx_batch(0, np.empty(1, np.uint32))
    held = pools[0].alloc(POOL - 10)
    frames = [frame(i) for i in range(30)]
    testbed.a.send(write_pcap(tmp_path / "f.pcap", frames))
    time.sleep(0.2)
    out = np.empty(64, np.uint32)
    assert dev.rx_batch(0, out) == 10
    first = [bufs.packet(int(i)).tobytes() for i in out[:10]]
    assert dev.rx_batch(0, out) == 0                 # no buffer: the frames wait
    pools[0].free(out[:10].copy())
    pools[0].free(held)
    assert first + receive(dev, pools[0], 20) == frames
    assert dev.read_stats().rx_dropped == 0
    dev.close()


def test_vlan_tags_survive_reception(testbed, env, tmp_path, hot_path):
    arena, bufs, pools, home = env
    dev = AfPacketDevice.open(PortSpec("a", "af_packet", testbed.port_a), arena, bufs, [pools[0]])
    dev.rx_batch(0, np.empty(1, np.uint32))
    plain = frame(1)
    tagged = plain[:12] + bytes.fromhex("8100a07b") + plain[12:]       # PCP 5, VLAN 123
    testbed.a.send(write_pcap(tmp_path / "f.pcap", [tagged]))
    out = np.empty(8, np.uint32)
    deadline = time.monotonic() + 3
    got = []
    while not got and time.monotonic() < deadline:
        n = dev.rx_batch(0, out)
        got = [bufs.packet(int(i)).tobytes() for i in out[:n]]
    assert got == [tagged]
    dev.close()


@needs_tool(*TESTBED_TOOLS)
def test_frames_longer_than_a_buffer_are_counted_too_long_with_one_warning(env, tmp_path, caplog, hot_path):
    arena, bufs, pools, home = env
    with VethTestbed(mtu=4000) as tb:
        dev = AfPacketDevice.open(PortSpec("a", "af_packet", tb.port_a), arena, bufs, [pools[0]])
        dev.rx_batch(0, np.empty(1, np.uint32))
        tb.a.send(write_pcap(tmp_path / "f.pcap", [frame(1, 3000), frame(2, 200), frame(3, 2500)]))
        assert receive(dev, pools[0], 1) == [frame(2, 200)]
        stats = dev.read_stats()
        assert (stats.rx_too_long, stats.rx_dropped) == (2, 0)
        dev.close()
    warnings = [r.getMessage() for r in caplog.records if "too_long" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"port a ({tb.port_a}): dropped a 3000-byte frame, longer than a packet "
                                  f"buffer holds ({bufs.max_data} bytes)")
    assert f"ip link set {tb.port_a} mtu 1500" in warnings[0] and "pipeline.buffer_size" in warnings[0]


def test_two_rx_queues_share_the_flows_through_fanout(testbed, env, tmp_path):
    arena, bufs, pools, home = env
    spec = PortSpec("a", "af_packet", testbed.port_a, rx_queues=2)
    sup = AfPacketDevice.open(spec, arena, bufs, pools)
    q0 = AfPacketDevice.attach(spec, arena, bufs, {0: pools[0]})
    q1 = AfPacketDevice.attach(spec, arena, bufs, {1: pools[1]})

    def udp(flow: int, seq: int) -> bytes:
        eth = bytes.fromhex("02aaaaaaaa02" "02aaaaaaaa01" "0800")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, seq, 0, 64, 17, 0, bytes([10, 77, 0, 1]),
                         bytes([10, 77, 1, flow]))
        return eth + ip + struct.pack("!HHHH", 1000 + flow, 9, 26, 0) + seq.to_bytes(18, "big")

    frames = [udp(f, s) for s in range(20) for f in range(16)]
    testbed.a.send(write_pcap(tmp_path / "f.pcap", frames))
    got: list[list[bytes]] = [[], []]
    out = np.empty(64, np.uint32)
    deadline = time.monotonic() + 5
    while sum(map(len, got)) < len(frames) and time.monotonic() < deadline:
        for q, (dev, pool) in enumerate(((q0, pools[0]), (q1, pools[1]))):
            n = dev.rx_batch(q, out)
            got[q] += [p for p in (bufs.packet(int(i)).tobytes() for i in out[:n]) if p[12:14] == b"\x08\x00"]
            pool.free(out[:n].copy())
    assert sorted(got[0] + got[1]) == sorted(frames)            # each frame exactly once
    assert got[0] and got[1]                                    # both queues took a share
    for q in (0, 1):                                            # a flow stays on one queue, in order
        flows = {}
        for p in got[q]:
            flows.setdefault(p[33], []).append(int.from_bytes(p[-18:], "big"))
        assert all(seqs == sorted(seqs) for seqs in flows.values())
        assert not set(flows) & {p[33] for p in got[1 - q]}
    for d in (q0, q1, sup):
        d.close()


def flags(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/flags").read_text(), 16)


def test_open_makes_the_interface_promiscuous_until_close(testbed, env):
    arena, bufs, pools, home = env
    assert not flags(testbed.port_a) & IFF_PROMISC
    dev = AfPacketDevice.open(PortSpec("a", "af_packet", testbed.port_a), arena, bufs, [pools[0]])
    assert flags(testbed.port_a) & IFF_PROMISC
    link = dev.link_state()
    assert link.up and link.speed_mbit == 10000
    assert dev.mac == bytes.fromhex(Path(f"/sys/class/net/{testbed.port_a}/address").read_text().strip()
                                    .replace(":", ""))
    dev.set_promisc(False)
    assert not flags(testbed.port_a) & IFF_PROMISC
    dev.set_promisc(True)
    dev.close()
    assert not flags(testbed.port_a) & IFF_PROMISC


def test_missing_and_down_interfaces_are_named(testbed, env):
    arena, bufs, pools, home = env
    with pytest.raises(AfPacketError, match=r"port x: no such network interface 'ixynosuch0'"):
        AfPacketDevice.open(PortSpec("x", "af_packet", "ixynosuch0"), arena, bufs, [pools[0]])
    subprocess.run(["ip", "link", "set", testbed.port_a, "down"], check=True)
    with pytest.raises(AfPacketError, match=rf"interface {testbed.port_a} is down; bring it up with "
                                            rf"`ip link set {testbed.port_a} up`"):
        AfPacketDevice.open(PortSpec("x", "af_packet", testbed.port_a), arena, bufs, [pools[0]])
    with pytest.raises(AfPacketError, match=r"unknown af_packet option\(s\) turbo"):
        AfPacketDevice.open(PortSpec("x", "af_packet", testbed.port_b, options={"turbo": 1}), arena, bufs,
                            [pools[0]])
    with pytest.raises(AfPacketError, match="needs an interface name"):
        AfPacketDevice.open(PortSpec("x", "af_packet", ""), arena, bufs, [pools[0]])
    with pytest.raises(DeviceError, match=r"port y was not opened .*no region 'afp.y'"):
        AfPacketDevice.attach(PortSpec("y", "af_packet", testbed.port_b), arena, bufs, {0: pools[0]})


def test_not_root_is_a_clear_error(testbed):
    code = (
        "import os, sys\n"
        "from ixypipe.nic.af_packet import _packet_socket, AfPacketError\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"try:\n    _packet_socket({testbed.port_a!r}, 'p0')\n"
        "except AfPacketError as e:\n    print(e); sys.exit(0)\n"
        "sys.exit(1)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         cwd="/", env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert res.returncode == 0, res.stderr
    assert (f"port p0: opening interface {testbed.port_a} needs root (CAP_NET_RAW) for AF_PACKET sockets; "
            "run as root (uid is 65534)") in res.stdout
