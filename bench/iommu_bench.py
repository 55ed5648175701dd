"""What the software 82599's IOMMU mode costs: RX DMA (resolve + write) through MAP_DMA mappings vs plain.

Both spaces cover the same /dev/shm arena: ``DmaSpace`` by the arena's own
(simulated) I/O addresses, ``IommuDma`` by the IOVA = virtual address the
driver would map with VFIO (the table is written as the VFIO kernel side
writes it).  Each round resolves and writes one batch of frames to random
packet buffers, as the model's RX path does; CPU time per packet from this
process's own clock, side by side in one run.
Run: ``python bench/iommu_bench.py [--seconds 2] [--batch 512] [--size 60]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.sim import iommu
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.traffic import PacketBatch

BUF = 2048
HEADROOM = 64
BUFFERS = 8192


def rounds(space, addrs: np.ndarray, batch: PacketBatch, seconds: float) -> tuple[float, int]:
    rng = np.random.default_rng(1)
    done = 0
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < seconds:
        pick = addrs[rng.integers(0, len(addrs), len(batch))]
        ok, owner, offset = space.resolve(pick, batch.lengths)
        assert ok.all()
        space.write(owner, offset, batch)
        done += len(batch)
    return time.process_time() - cpu0, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=60)
    args = ap.parse_args()
    arena = Arena.create(BUFFERS * BUF + (1 << 20), hugepages_mode="never", tag="bench")
    root = Path(tempfile.mkdtemp(prefix="ixypipe-iommu-bench-"))
    try:
        region = arena.alloc("bufs", BUFFERS * BUF, align=BUF)
        offsets = region.offset + np.arange(BUFFERS, dtype=np.uint64) * np.uint64(BUF) + np.uint64(HEADROOM)
        base = arena.buf.ctypes.data
        table = iommu.table_path(root, 1)
        iommu.record_map(table, os.getpid(), base, base, arena.buf.nbytes)
        plain, mapped = DmaSpace([arena]), iommu.IommuDma(table, [arena])
        frames = PacketBatch.from_frames([bytes([i & 0xFF]) * args.size for i in range(args.batch)])
        results = {}
        for name, space, addrs in (("plain (arena addresses)", plain, arena.phys(offsets)),
                                   ("IOMMU (MAP_DMA IOVAs)", mapped, np.uint64(base) + offsets)):
            cpu, n = rounds(space, addrs, frames, args.seconds)
            results[name] = cpu / n * 1e9
            print(f"{name:26s} {n / cpu / 1e6:6.2f} Mpps per CPU second  {results[name]:7.1f} CPU ns/packet "
                  f"({n} packets, batches of {args.batch} x {args.size} B)")
        a, b = results.values()
        print(f"IOMMU / plain CPU per packet: {b / a:.2f}x")
        mapped.close()
    finally:
        arena.destroy()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
