"""The single-process forwarder between two software 82599 ports, in-process and from the CLI."""

from __future__ import annotations

import re

import numpy as np
import pytest

from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import DeviceStats, PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.ops.forwarder import Forwarder, stats_lines
from ixypipe.sim.traffic import PacketBatch
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig

POOL = 4096


@pytest.fixture
def two_ports(make_arena):
    made = {}

    def build(count: int, ring: int = 512, packet_size: int = 60):
        arena = make_arena(48 << 20)
        bufs = PacketBuffers.create(arena, 2 * POOL)
        pools = [Mempool.create(arena, bufs, f"pool{i}", i * POOL, POOL, i) for i in range(2)]
        ports = [SimPortConfig(name, generator=GeneratorConfig(packet_size=packet_size, flows=8, count=count),
                               sink=SinkConfig(expect_touch=True)) for name in ("p0", "p1")]
        world = SimWorld(ports, arena, stats_period_ns=1 << 62)
        made["world"] = world
        home = Homing.to_pools(bufs, pools)
        devs = []
        for name, pool in zip(("p0", "p1"), pools, strict=True):
            spec = PortSpec(name, "sim", world.addresses[name], rx_ring_size=ring, tx_ring_size=ring)
            devs.append(IxgbeDevice.open(spec, arena, bufs, [pool], tx_done=home, sysfs_root=str(world.sysfs_root),
                                         sleep=lambda s: world.step()))
        made["devs"] = devs
        return world, devs, bufs, pools

    yield build
    for dev in made.get("devs", []):
        dev.close()
    if "world" in made:
        made["world"].close()


def test_forwarding_both_ways_increments_the_second_byte(two_ports):
    world, (a, b), bufs, pools = two_ports(count=20_000)
    fwd = Forwarder(a, b, batch=32, step=world.step)
    world.start_traffic()
    lines = []
    result = fwd.run(packets=40_000, out=lines.append)
    world.pause_traffic()
    fwd.drain()
    c = world.counters()
    for src, dst in (("p0", "p1"), ("p1", "p0")):
        assert c[src].generated == 20_000
        assert c[dst].sink_received == 20_000          # every packet of the other side's generator
        assert (c[dst].sink_lost, c[dst].sink_corrupt, c[dst].sink_untouched, c[dst].sink_reordered) == (0, 0, 0, 0)
    assert fwd.received == [20_000, 20_000] and fwd.transmitted == [20_000, 20_000]
    assert result.stop_reason == "40000 packets"
    assert lines[-3].startswith("forwarded ")
    assert lines[-2] == "[p0] received 20000, transmitted 20000, dropped at TX 0"
    # every buffer is home or in an RX descriptor
    for dev, pool in ((a, pools[0]), (b, pools[1])):
        assert pool.available() + len(dev.rx_held(0)) == POOL


def test_frames_the_82599_drops_for_their_size_are_accounted_for_by_the_verdict(two_ports):
    from ixypipe.commands.fwd import judge
    world, (a, b), _, _ = two_ports(count=500, packet_size=2000)     # longer than a 2048-byte buffer takes
    fwd = Forwarder(a, b, batch=32, step=world.step)
    world.start_traffic()
    for _ in range(200):            # the generators finish; nothing reaches a descriptor to forward
        world.step()
    c = world.counters()
    assert [(c[p].generated, c[p].rx_oversize, c[p].rx_delivered) for p in ("p0", "p1")] == [(500, 500, 0)] * 2
    lines = []
    assert judge(fwd, c, lines.append) == []
    assert lines[0] == ("[p1] sink: received 0 of 500 generated at p0; missed at p0 RX 0, dropped by p0's MAC "
                        "(runt 0, too_long 500), dropped at p1 TX 0; lost 0, reordered 0, corrupt 0, untouched 0")


def test_what_tx_refuses_is_dropped_and_freed(two_ports):
    world, (a, b), bufs, pools = two_ports(count=0, ring=64)
    fwd = Forwarder(a, b, batch=64)                    # the model is not stepped: p1's TX never drains
    frames = [bytes([9, 0]) + bytes(58)] * 63
    world.ports["p0"].receive(PacketBatch.from_frames(frames))
    assert fwd.forward_once(0) == 63
    world.ports["p0"].receive(PacketBatch.from_frames(frames))
    assert fwd.forward_once(0) == 63
    # p1's 64-entry TX ring took 63 (one slot stays free); the second batch found it full
    assert fwd.transmitted == [0, 63] and fwd.dropped == [0, 63]
    assert pools[0].available() == POOL - 64 - 63                   # the 63 refused went home
    assert b.tx_pending(0) == 63
    posted = world.ports["p1"]
    wire = []
    posted.wire_out.append(wire.append)
    world.step()
    assert len(wire) == 1 and (wire[0].data[:, 1] == 1).all() and (wire[0].data[:, 0] == 9).all()


def test_stats_lines_are_ixy_style():
    delta = DeviceStats(rx_packets=14_700_000, rx_bytes=14_700_000 * 64, tx_packets=1_000_000, tx_bytes=60_000_000)
    assert stats_lines("p0", delta, 1.0) == ["[p0] RX: 9878.40 Mbit/s 14.70 Mpps",
                                             "[p0] TX: 640.00 Mbit/s 1.00 Mpps"]
    assert stats_lines("p1", DeviceStats(), 0.0) == ["[p1] RX: 0.00 Mbit/s 0.00 Mpps",
                                                     "[p1] TX: 0.00 Mbit/s 0.00 Mpps"]


def test_touch_wraps_the_byte(two_ports):
    world, (a, b), bufs, pools = two_ports(count=0, ring=64)
    fwd = Forwarder(a, b, batch=8, step=world.step)
    wire = []
    world.ports["p1"].wire_out.append(wire.append)
    world.ports["p0"].receive(PacketBatch.from_frames([bytes([1, 255, 7]) + bytes(57)] * 3))
    assert fwd.forward_once(0) == 3
    world.step()
    frames = np.concatenate([w.data[:, :3] for w in wire])
    assert frames.tolist() == [[1, 0, 7]] * 3


def run_cli(*args, timeout=60):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "ixypipe", "fwd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_forwards_between_two_simulated_ports():
    # 2 s: at least one per-second line; no rate is asserted (a loaded machine forwarded anywhere from 471 to
    # 471,775 packets in 1.5 s)
    res = run_cli("--sim", "--duration", "2", "--batch", "64")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert re.search(r"^\[p0\] RX: \d+\.\d\d Mbit/s \d+\.\d\d Mpps$", out, re.M)
    assert re.search(r"^\[p1\] TX: \d+\.\d\d Mbit/s \d+\.\d\d Mpps$", out, re.M)
    verdicts = re.findall(r"^\[(p\d)\] sink: received (\d+) of (\d+) generated at (p\d); missed at p\d RX (\d+), "
                          r"dropped at p\d TX (\d+); lost \d+, reordered 0, corrupt 0, untouched 0$", out, re.M)
    assert sorted(v[0] for v in verdicts) == ["p0", "p1"]
    for _, received, generated, _, missed, dropped in verdicts:
        assert int(received) > 0
        assert int(received) + int(missed) + int(dropped) == int(generated)
    assert "OK: every packet arrived intact or is counted as dropped" in out


def test_cli_usage_and_missing_nic_errors():
    res = run_cli()
    assert res.returncode == 2 and "give two PCI addresses, or --sim" in res.stderr
    res = run_cli("--sim", "--ring", "100")
    assert res.returncode == 2 and "must be a power of two from 8 to 4096, got 100" in res.stderr
    res = run_cli("0000:fe:1f.7", "0000:fe:1f.6", "--hugepages", "auto")
    assert res.returncode == 1
    assert "port p0 (0000:fe:1f.7): no such PCI device 0000:fe:1f.7" in res.stderr
