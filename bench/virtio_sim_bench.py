"""How fast the software virtio-net device forwards, and what the virtio driver costs, numpy and numba side by side.

Two software virtio-net ports cabled to each other, both driven by the real
virtio driver in this process: the driver posts a batch on p0's TX queue,
the device (``world.step()``) gathers it from the TX virtqueue onto the wire
and scatters it into p1's RX virtqueue, the driver receives it on p1 and
sends the buffers home.  Counted separately, as CPU time of this process
(``time.process_time_ns``, stable on a shared machine): the device's steps
(one TX walk and one RX walk per frame: what "forwards" costs the device)
and the driver's rx_batch + tx_batch calls.  The same frames go through
every variant; the last lines print the device's Mpps per core.

Run: ``python bench/virtio_sim_bench.py [--seconds 2] [--batch 32] [--size 60] [--transport modern]
[--paths numpy,numba]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.device import PortSpec
from ixypipe.nic.virtio import VirtioDevice
from ixypipe.sim.world import SimPortConfig, SimWorld

RING = 1024
POOL = 8192


def run(path: str, transport: str, seconds: float, batch: int, size: int) -> tuple[int, int, int]:
    """(packets, device CPU ns, driver CPU ns) forwarding p0 TX -> wire -> p1 RX for ``seconds``."""
    arena = Arena.create(64 << 20, tag="vbench")
    world = None
    devices = []
    try:
        bufs = PacketBuffers.create(arena, 2 * POOL)
        pools = [Mempool.create(arena, bufs, f"pool{i}", i * POOL, POOL, i) for i in range(2)]
        home = Homing.to_pools(bufs, pools)
        world = SimWorld([SimPortConfig(n, device="virtio", transport=transport, queue_size=RING,
                                        cable_to="p1" if n == "p0" else None) for n in ("p0", "p1")],
                         arena, hot_path=path)
        for i, name in enumerate(("p0", "p1")):
            spec = PortSpec(name, "sim", world.addresses[name], rx_ring_size=RING, tx_ring_size=RING,
                            options={"hot_path": path})
            devices.append(VirtioDevice.open(spec, arena, bufs, [pools[i]], tx_done=home,
                                             sysfs_root=str(world.sysfs_root), sleep=lambda s: world.step()))
        tx, rx = devices
        frame = (np.arange(size) % 251).astype(np.uint8).tobytes()
        out = np.zeros(batch, np.uint32)
        packets = dev_ns = drv_ns = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(64):
                idx = pools[0].alloc(batch)
                bufs.length[idx] = size
                bufs.data[idx, :size] = np.frombuffer(frame, np.uint8)
                t0 = time.process_time_ns()
                posted = tx.tx_batch(0, idx)
                t1 = time.process_time_ns()
                world.step()
                t2 = time.process_time_ns()
                got = rx.rx_batch(0, out)
                t3 = time.process_time_ns()
                pools[1].free(out[:got].copy())
                if posted < len(idx):
                    pools[0].free(idx[posted:])
                packets += got
                dev_ns += t2 - t1
                drv_ns += (t1 - t0) + (t3 - t2)
        assert world.faults == [], world.faults
        return packets, dev_ns, drv_ns
    finally:
        for d in devices:
            d.close()
        if world is not None:
            world.close()
        arena.destroy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--transport", default="modern", choices=("legacy", "modern"))
    ap.add_argument("--paths", default="numpy,numba")
    args = ap.parse_args()
    print(f"virtio-net: p0 TX -> device -> p1 RX, {args.size}-byte frames, batch {args.batch}, "
          f"{args.transport} transport, {args.seconds:g} s each (CPU time of this process)")
    print(f"{'path':8} {'packets':>10} {'device ns/pkt':>14} {'device Mpps/core':>17} {'driver ns/pkt':>14}")
    for path in args.paths.split(","):
        run(path, args.transport, 0.2, args.batch, args.size)         # compile / warm caches first
        n, dev, drv = run(path, args.transport, args.seconds, args.batch, args.size)
        print(f"{path:8} {n:>10,} {dev / n:>14.1f} {1e3 * n / dev:>17.2f} {drv / n:>14.1f}")


if __name__ == "__main__":
    main()
