"""How fast the software 82599 runs: generate+RX and TX+sink, numpy and compiled paths side by side.

Only the model's time is counted (``world.step()``), as CPU time of this
process (``time.process_time``, stable on a shared machine) and as wall
time; the "driver" side is a minimal vectorized stand-in that hands every
used descriptor straight back.  Directions:

* ``gen+rx``: the generator's frames DMAed into RX buffers, written back.
* ``tx+verify``: posted TX descriptors read, frames to a verifying sink.
* ``tx+count``: the same into a sink that only counts (no verification).

Run: ``python bench/sim_bench.py [--seconds 1] [--ring 1024] [--sizes 60,512,1514] [--paths numpy,numba]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.nic import registers as R
from ixypipe.sim.world import GeneratorConfig, SimPortConfig, SimWorld, SinkConfig

BUF = 2048
HEADROOM = 64


def setup(arena: Arena, world: SimWorld, ring: int):
    p = world.ports["p0"]
    p.config[R.PCI_CFG_COMMAND] |= R.PCI_COMMAND_BUS_MASTER
    rx = arena.alloc("rx", ring * R.DESC_SIZE, within_page=True)
    tx = arena.alloc("tx", ring * R.DESC_SIZE, within_page=True)
    bufs = arena.alloc("bufs", 2 * ring * BUF, align=BUF)
    offsets = bufs.offset + np.arange(2 * ring, dtype=np.int64) * BUF + HEADROOM
    addrs = arena.phys(offsets.astype(np.uint64))
    for ring_region, bal, bah, length in ((rx, R.RDBAL(0), R.RDBAH(0), R.RDLEN(0)),
                                          (tx, R.TDBAL(0), R.TDBAH(0), R.TDLEN(0))):
        base = int(arena.phys(ring_region.offset))
        p.set_reg(bal, base & 0xFFFFFFFF)
        p.set_reg(bah, base >> 32)
        p.set_reg(length, ring * R.DESC_SIZE)
    p.set_reg(R.SRRCTL(0), R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN)
    rxd = arena.view(rx, R.RX_DESC_READ_DTYPE)
    rxd["pkt_addr"] = addrs[:ring]
    rxd["hdr_addr"] = 0
    txd = arena.view(tx, R.TX_DESC_READ_DTYPE)
    txd["buffer_addr"] = addrs[ring:]
    p.set_reg(R.RXDCTL(0), R.RXDCTL_ENABLE)
    p.set_reg(R.TXDCTL(0), R.TXDCTL_ENABLE)
    p.set_reg(R.RXCTRL, R.RXCTRL_RXEN)
    p.set_reg(R.DMATXCTL, R.DMATXCTL_TE)
    world.step()
    return p, rxd, txd, addrs, offsets


class Clock:
    """CPU and wall time spent inside ``world.step()``."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def step(self, world: SimWorld) -> None:
        c0, w0 = time.process_time(), time.perf_counter()
        world.step()
        self.cpu += time.process_time() - c0
        self.wall += time.perf_counter() - w0


def bench_rx(seconds: float, ring: int, size: int, hot_path: str) -> tuple[int, Clock]:
    with Arena.create(4 * ring * BUF + (8 << 20), tag="simbench") as arena:
        world = SimWorld([SimPortConfig("p0", generator=GeneratorConfig(packet_size=size, flows=64))], arena,
                         hot_path=hot_path)
        try:
            p, rxd, _, addrs, _ = setup(arena, world, ring)
            p.set_reg(R.RDT(0), ring - 1)
            world.start_traffic()
            clock, start = Clock(), time.perf_counter()
            while time.perf_counter() - start < seconds:
                clock.step(world)
                head = p.reg(R.RDH(0))          # the driver takes everything and refills
                rxd["pkt_addr"] = addrs[:ring]
                p.set_reg(R.RDT(0), (head - 1) % ring)
            return world.counters()["p0"].rx_delivered, clock
        finally:
            world.close()


def bench_tx(seconds: float, ring: int, size: int, hot_path: str, verify: bool) -> tuple[int, Clock]:
    with Arena.create(4 * ring * BUF + (8 << 20), tag="simbench") as arena:
        world = SimWorld([SimPortConfig("p0", generator=GeneratorConfig(packet_size=size, flows=64),
                                        sink=SinkConfig(mode="verify" if verify else "count"))], arena,
                          hot_path=hot_path)
        try:
            p, _, txd, _, offsets = setup(arena, world, ring)
            gen = world.generators["p0"]
            frames = gen.make(ring)
            gen.commit(ring)
            arena.buf[offsets[ring:, None] + np.arange(size)] = frames.data
            txd["cmd_type_len"] = R.TXD_CMD_DATA | size
            clock, start = Clock(), time.perf_counter()
            sink = world.sinks["p0"]
            while time.perf_counter() - start < seconds:
                p.set_reg(R.TDT(0), (p.reg(R.TDH(0)) - 1) % ring)     # post everything but one slot
                clock.step(world)
                if verify:                               # the same frames again: not "reordered"
                    sink.top[:] = 0
                    sink._top_sum = sink._verified = 0
            c = world.counters()["p0"]
            assert c.sink_corrupt == 0 and c.sink_received == c.tx_sent, c
            return c.tx_sent, clock
        finally:
            world.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--ring", type=int, default=1024)
    ap.add_argument("--sizes", default="60,512,1514")
    ap.add_argument("--paths", default="numpy,numba")
    args = ap.parse_args()
    paths = args.paths.split(",")
    for path in paths:                  # compile (or load the cache) outside the measurement
        bench_rx(0.05, args.ring, 60, path)
        bench_tx(0.05, args.ring, 60, path, True)
    print(f"software 82599, {args.ring}-entry rings, {args.seconds:g} s per run, model time only "
          f"(CPU ns/packet from this process's CPU clock; wall Mpps move with other load)")
    print(f"{'size':>5} {'direction':<10} " + " ".join(f"{p + ' ns/pkt':>14} {p + ' Mpps':>12}" for p in paths)
          + ("   speed-up (CPU)" if len(paths) == 2 else ""))
    for size in (int(s) for s in args.sizes.split(",")):
        for direction in ("gen+rx", "tx+verify", "tx+count"):
            cells, ns = [], []
            for path in paths:
                if direction == "gen+rx":
                    n, clock = bench_rx(args.seconds, args.ring, size, path)
                else:
                    n, clock = bench_tx(args.seconds, args.ring, size, path, direction == "tx+verify")
                ns.append(clock.cpu / n * 1e9)
                cells.append(f"{ns[-1]:>14.0f} {n / clock.wall / 1e6:>12.2f}")
            ratio = f"   {ns[0] / ns[1]:>6.1f}x" if len(ns) == 2 else ""
            print(f"{size:>5} {direction:<10} " + " ".join(cells) + ratio, flush=True)


if __name__ == "__main__":
    main()
