"""The simulator process: fake sysfs trees, start/stop, live counters, and the real driver against it."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from ixypipe.nic import registers as R
from ixypipe.sim import sysfs
from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SimServer, SimServerError, SinkConfig


def sim_processes() -> list[psutil.Process]:
    """Our simulator children, zombies included (multiprocessing's resource tracker is not one)."""
    return [p for p in psutil.Process().children(recursive=True) if p.name() == "ixypipe-sim"]


def test_start_makes_the_trees_and_a_named_process_and_stop_removes_everything(make_arena):
    arena = make_arena(4 << 20)
    server = SimServer([SimPortConfig("p0", generator=GeneratorConfig()),
                        SimPortConfig("p1", pci_address="0000:07:00.1", sink=SinkConfig())], arena.path)
    server.start()
    try:
        root = server.sysfs_root
        assert server.addresses == {"p0": "0000:5e:00.0", "p1": "0000:07:00.1"}
        assert server.is_alive()
        assert psutil.Process(server.pid).name() == "ixypipe-sim"
        for addr in server.addresses.values():
            d = root / "bus" / "pci" / "devices" / addr
            config = (d / "config").read_bytes()
            assert len(config) >= 64
            assert config[0:2] == b"\x86\x80" and config[2:4] == b"\xfb\x10" and config[0x0B] == 0x02
            assert (d / "resource0").stat().st_size == R.BAR0_SIZE == 512 * 1024
            assert (d / "vendor").read_text() == "0x8086\n"
            assert (d / "device").read_text() == "0x10fb\n"
            assert (d / "class").read_text() == "0x020000\n"
            (d / "driver" / "unbind").write_text(addr)
        # the model process answers: it restores power-on values a driver waits for
        mm, bar = sysfs.map_file(root / "bus/pci/devices/0000:5e:00.0/resource0")
        regs = bar.view(np.uint32)
        try:
            assert regs[R.EEC // 4] & R.EEC_ARD
            regs[R.CTRL // 4] = R.CTRL_RST_MASK
            deadline = time.monotonic() + 5
            while regs[R.CTRL // 4] & R.CTRL_RST_MASK and time.monotonic() < deadline:
                time.sleep(0.001)
            assert regs[R.CTRL // 4] == 0
            assert regs[R.SRRCTL(0) // 4] == R.SRRCTL_RESET_VALUE
        finally:
            del regs, bar
            mm.close()
        assert server.counters()["p1"].sink_received == 0
        pid = server.pid
    finally:
        final = server.stop()
    assert set(final) == {"p0", "p1"}
    assert not root.exists()
    assert not psutil.pid_exists(pid)
    assert sim_processes() == []
    assert not server.is_alive()
    assert server.stop() == final                   # idempotent


def test_a_bad_arena_path_fails_start_with_the_reason_and_leaves_nothing(tmp_path):
    server = SimServer([SimPortConfig("p0")], tmp_path / "no-such-arena", root=tmp_path / "sim")
    with pytest.raises(SimServerError, match="no arena at"):
        server.start()
    assert not (tmp_path / "sim" / "bus").exists()
    assert not (tmp_path / "sim" / "counters").exists()
    assert sim_processes() == []


def test_the_ixgbe_driver_forwards_through_the_simulator_process(make_arena):
    from ixypipe.memory.mempool import Mempool
    from ixypipe.memory.pktbuf import PacketBuffers
    from ixypipe.nic.device import PortSpec
    from ixypipe.nic.ixgbe import IxgbeDevice

    arena = make_arena(24 << 20)
    bufs = PacketBuffers.create(arena, 4096)
    pool = Mempool.create(arena, bufs, "rx0", 0, 4096, pool_id=0)
    count = 3000
    server = SimServer([SimPortConfig("p0", generator=GeneratorConfig(flows=8, count=count),
                                      sink=SinkConfig(expect_touch=True))], [arena.path])
    server.start()
    dev = None
    try:
        spec = PortSpec("p0", "sim", server.addresses["p0"], rx_ring_size=512, tx_ring_size=512)
        dev = IxgbeDevice.open(spec, arena, bufs, [pool], tx_done=pool.free, sysfs_root=str(server.sysfs_root))
        assert dev.link_state().up
        server.start_traffic()
        out = np.zeros(64, np.uint32)
        pending = np.zeros(0, np.uint32)
        deadline = time.monotonic() + 20
        while server.counters()["p0"].sink_received < count and time.monotonic() < deadline:
            n = dev.rx_batch(0, out)
            if n:
                bufs.data[out[:n], 1] += 1          # ixy-fwd's touch
                pending = np.concatenate([pending, out[:n]])
            if len(pending):
                pending = pending[dev.tx_batch(0, pending):]
            else:
                time.sleep(0.0005)
        c = server.counters()["p0"]
    finally:
        if dev is not None:
            dev.close()
        final = server.stop()
    assert (c.generated, c.rx_delivered, c.rx_missed, c.tx_sent) == (count, count, 0, count)
    assert (c.sink_received, c.sink_lost, c.sink_reordered, c.sink_corrupt, c.sink_untouched) == (count, 0, 0, 0, 0)
    assert c.dma_faults == 0
    assert final["p0"].sink_received == count


def test_stale_trees_of_dead_owners_are_found(tmp_path):
    dead = tmp_path / f"{sysfs.SIM_ROOT_PREFIX}999999999-abc"
    alive = tmp_path / f"{sysfs.SIM_ROOT_PREFIX}1-abc"
    dead.mkdir()
    alive.mkdir()
    assert sysfs.stale_roots(Path(tmp_path)) == [dead]


HELPER = """
import os, sys
from ixypipe.memory.arena import Arena
from ixypipe.sim.server import SimPortConfig, SimServer
if __name__ == "__main__":
    arena = Arena.create(4 << 20, hugepages_mode="never", tag="orphan")
    server = SimServer([SimPortConfig("p0")], arena.path)
    server.start()
    print(server.pid, server.sysfs_root, arena.path, flush=True)
    os.kill(os.getpid(), 9)
"""


@pytest.mark.alone                  # a pipeline starting beside it would remove the stale files it checks
def test_the_model_process_exits_when_its_parent_is_killed(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "helper.py"
    script.write_text(HELPER)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    sim_pid, root, arena_path = res.stdout.split()
    try:
        deadline = time.monotonic() + 10
        while psutil.pid_exists(int(sim_pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not psutil.pid_exists(int(sim_pid))
        assert Path(root) in sysfs.stale_roots()    # the next SimServer.start() removes it
    finally:
        sysfs.remove_tree(Path(root))
        Path(arena_path).unlink(missing_ok=True)
