"""The ixgbe driver's own cost per packet, RX + TX, at batch 32..256, beside ixy-fwd's Mpps.

Part 1 times only the driver: an in-process software 82599 delivers a batch
into the RX ring and transmits what was posted (untimed); the clock runs
around ``rx_batch`` + ``tx_batch`` alone (refill from the mempool, cleaning
and returning buffers included).  The median over many batches is reported,
so other processes on a shared machine disturb it little; Mpps is what one
core would forward if the driver were all it ran.  Both hot paths are
measured: numpy, and numba when installed.

Part 2 runs the single-process forwarder (:class:`ixypipe.ops.forwarder.Forwarder`)
between two software 82599 ports whose model runs in its own process, for
a few seconds per batch size, and reports forwarded Mpps: the whole system,
which the model's speed bounds.

    python3 bench/driver_bench.py [--batches 32,64,128,256] [--iterations 3000] [--fwd-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import ixgbe_jit
from ixypipe.nic.device import PortSpec
from ixypipe.nic.ixgbe import IxgbeDevice
from ixypipe.ops.forwarder import Forwarder
from ixypipe.sim.traffic import PacketBatch

POOL = 8192
RING = 512
FRAME = 60
WARMUP = 200


def driver_ns_per_packet(arena: Arena, bufs: PacketBuffers, pool: Mempool, batch: int, iterations: int,
                         hot_path: str) -> float:
    """Median nanoseconds of rx_batch + tx_batch per packet, the model stepped outside the clock."""
    from ixypipe.sim.world import SimPortConfig, SimWorld

    with SimWorld([SimPortConfig("b0")], arena) as world:
        spec = PortSpec("b0", "sim", world.addresses["b0"], rx_ring_size=RING, tx_ring_size=RING)
        dev = IxgbeDevice.open(spec, arena, bufs, [pool], tx_done=Homing.to_pools(bufs, [pool]),
                               sysfs_root=str(world.sysfs_root),
                               sleep=lambda s: world.step(), hot_path=hot_path)
        try:
            port = world.ports["b0"]
            frames = PacketBatch(np.zeros((batch, FRAME), np.uint8), np.full(batch, FRAME, np.int64))
            out = np.empty(batch, np.uint32)
            clock = time.perf_counter_ns
            samples = []
            for it in range(WARMUP + iterations):
                port.receive(frames)
                t0 = clock()
                n = dev.rx_batch(0, out)
                sent = dev.tx_batch(0, out[:n])
                t1 = clock()
                if n != batch or sent != batch:
                    raise RuntimeError(f"batch {batch}: received {n}, sent {sent}")
                port.step()
                if it >= WARMUP:
                    samples.append(t1 - t0)
            dev.tx_drain(0, 1.0)
        finally:
            dev.close()
    return statistics.median(samples) / batch


def forwarder_mpps(batches: list[int], seconds: float, hot_path: str, cpu: int | None) -> dict[int, float]:
    """Forwarded Mpps of ixy-fwd between two software 82599s (model in its own process)."""
    from ixypipe.sim.launch import start_sim
    from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SinkConfig

    result = {}
    specs = [PortSpec(n, "sim", rx_ring_size=RING, tx_ring_size=RING) for n in ("p0", "p1")]
    regions = [*PacketBuffers.arena_regions(2 * POOL), *Mempool.arena_regions(POOL), *Mempool.arena_regions(POOL),
               *(r for spec in specs for r in IxgbeDevice.arena_regions(spec))]
    with Arena.create(Arena.size_for(regions), tag="fwdbench") as arena:
        bufs = PacketBuffers.create(arena, 2 * POOL)
        pools = [Mempool.create(arena, bufs, f"fwd{i}", i * POOL, POOL, i) for i in range(2)]
        ports = [SimPortConfig(s.name, generator=GeneratorConfig(packet_size=FRAME, flows=4),
                               sink=SinkConfig(mode="count")) for s in specs]
        sim = start_sim(ports, specs, [arena.path], ignore_sigint=True)   # Ctrl-C is for this process only
        server = sim.server
        devs = []
        home = Homing.to_pools(bufs, pools)
        try:
            if cpu is not None:   # the model process was spawned before: it keeps the other cores
                os.sched_setaffinity(0, {cpu})
            for spec, pool in zip(specs, pools, strict=True):
                devs.append(IxgbeDevice.open(spec, arena, bufs, [pool], tx_done=home,
                                             sysfs_root=sim.sysfs_roots[spec.name],
                                             hot_path=hot_path))
            server.start_traffic()
            for batch in batches:
                fwd = Forwarder(devs[0], devs[1], batch=batch)
                result[batch] = fwd.run(duration=seconds, out=None).mpps
                fwd.drain()
        finally:
            server.stop()
            for dev in devs:
                dev.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--iterations", type=int, default=3000, help="timed batches per batch size")
    ap.add_argument("--fwd-seconds", type=float, default=2.0, help="forwarder run per batch size (0: skip)")
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU (default: the last)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    paths = ["numpy"] + (["numba"] if ixgbe_jit.AVAILABLE else [])

    fwd = forwarder_mpps(batches, args.fwd_seconds, "auto", cpu) if args.fwd_seconds > 0 else {}
    os.sched_setaffinity(0, {cpu})
    driver = {}
    bench_port = PortSpec("b0", "sim", rx_ring_size=RING, tx_ring_size=RING)      # as driver_ns_per_packet opens
    regions = [*PacketBuffers.arena_regions(POOL), *Mempool.arena_regions(POOL), *IxgbeDevice.arena_regions(bench_port)]
    with Arena.create(Arena.size_for(regions), tag="drvbench") as arena:
        bufs = PacketBuffers.create(arena, POOL)
        pool = Mempool.create(arena, bufs, "bench", 0, POOL, 0)
        for path in paths:
            for batch in batches:
                driver[path, batch] = driver_ns_per_packet(arena, bufs, pool, batch, args.iterations, path)

    print(f"ixgbe driver, RX+TX on one core (cpu {cpu}), {FRAME}-byte frames, ring {RING}; median of "
          f"{args.iterations} batches; forwarder with the software 82599 in its own process")
    head = f"{'batch':>5}" + "".join(f" | {p + ' ns/pkt':>13} {p + ' Mpps':>11}" for p in paths)
    print(head + f" | {'ixy-fwd Mpps':>12}")
    for batch in batches:
        row = f"{batch:>5}"
        for path in paths:
            ns = driver[path, batch]
            row += f" | {ns:>13.1f} {1e3 / ns:>11.2f}"
        row += f" | {fwd[batch]:>12.3f}" if batch in fwd else f" | {'-':>12}"
        print(row)
    if not ixgbe_jit.AVAILABLE:
        print("numba is not installed: only the numpy path was measured (pip install numba)")


if __name__ == "__main__":
    main()
