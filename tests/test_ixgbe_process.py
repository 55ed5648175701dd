"""A port opened by one process and driven by another: the pipeline's hand-over, against the model process."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from ixypipe.memory.arena import Arena
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ixgbe_jit
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SimServer, SinkConfig

COUNT = 30_000
POOL = 2048


def loop_back(arena_path: str, spec: PortSpec, root: str, hot_path: str, count: int, result) -> None:
    """Stage process: attach, receive ``count`` packets and send each back out of the same port."""
    arena = Arena.attach(arena_path)
    bufs = PacketBuffers.attach(arena)
    pool = Mempool.attach(arena, bufs, "pool0")
    dev = IxgbeDevice.attach(spec, arena, bufs, {0: pool}, tx_done=pool.free, sysfs_root=root, hot_path=hot_path)
    out = np.empty(64, np.uint32)
    got = 0
    pending = np.empty(0, np.uint32)
    while got < count or len(pending):
        if len(pending):
            pending = pending[dev.tx_batch(0, pending):]
            continue
        n = dev.rx_batch(0, out)
        got += n
        pending = out[:n].copy()
    result.put((got, dev.tx_drain(0, 5.0), pool.available()))
    dev.close()
    del out, pending, pool, bufs
    arena.close()


@pytest.mark.parametrize("hot_path", ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not ixgbe_jit.AVAILABLE, reason="numba is not installed"))])
def test_another_process_takes_over_the_queues(make_arena, hot_path):
    arena = make_arena(16 << 20)
    bufs = PacketBuffers.create(arena, POOL)
    pool = Mempool.create(arena, bufs, "pool0", 0, POOL, 0)
    port = SimPortConfig("p0", generator=GeneratorConfig(packet_size=100, flows=4, count=COUNT),
                         sink=SinkConfig())
    with SimServer([port], arena.path) as server:
        spec = PortSpec("p0", "sim", server.addresses["p0"], rx_ring_size=256, tx_ring_size=256)
        dev = IxgbeDevice.open(spec, arena, bufs, [pool], sysfs_root=str(server.sysfs_root), hot_path=hot_path)
        try:
            ctx = multiprocessing.get_context("spawn")
            result = ctx.Queue()
            stage = ctx.Process(target=loop_back, args=(str(arena.path), spec, str(server.sysfs_root), hot_path,
                                                        COUNT, result))
            stage.start()
            server.start_traffic()
            got, pending, free = result.get(timeout=60)
            stage.join(10)
            assert stage.exitcode == 0
            assert (got, pending) == (COUNT, 0)
            # the supervisor's view after the stage left: every buffer home or in an RX descriptor
            held = dev.rx_held(0)
            assert free == pool.available() == POOL - 256
            assert len(np.unique(np.concatenate((held, pool.free_indices())))) == POOL
            c = server.counters()["p0"]
            assert (c.generated, c.sink_received, c.sink_lost, c.sink_corrupt, c.sink_reordered) == (
                COUNT, COUNT, 0, 0, 0)
        finally:
            dev.close()
