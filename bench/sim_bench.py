"""How fast the software 82599 runs: generate+RX and TX+sink packets per second, in one process.

Only the model's time is counted (``world.step()``); the "driver" side is a
minimal vectorized stand-in that hands every used descriptor straight back.
Run: ``python bench/sim_bench.py [--seconds 2] [--ring 512] [--size 60]``.
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


def bench_rx(seconds: float, ring: int, size: int) -> float:
    with Arena.create(4 * ring * BUF + (8 << 20), tag="simbench") as arena:
        world = SimWorld([SimPortConfig("p0", generator=GeneratorConfig(packet_size=size, flows=64))], arena)
        try:
            p, rxd, _, addrs, _ = setup(arena, world, ring)
            p.set_reg(R.RDT(0), ring - 1)
            world.start_traffic()
            spent, start = 0.0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                t0 = time.perf_counter()
                world.step()
                spent += time.perf_counter() - t0
                head = p.reg(R.RDH(0))          # the driver takes everything and refills
                rxd["pkt_addr"] = addrs[:ring]
                p.set_reg(R.RDT(0), (head - 1) % ring)
            return world.counters()["p0"].rx_delivered / spent
        finally:
            world.close()


def bench_tx(seconds: float, ring: int, size: int) -> float:
    with Arena.create(4 * ring * BUF + (8 << 20), tag="simbench") as arena:
        world = SimWorld([SimPortConfig("p0", generator=GeneratorConfig(packet_size=size, flows=64),
                                        sink=SinkConfig(verify=True))], arena)
        try:
            p, _, txd, _, offsets = setup(arena, world, ring)
            gen = world.generators["p0"]
            frames = gen.make(ring)
            gen.commit(ring)
            arena.buf[offsets[ring:, None] + np.arange(size)] = frames.data
            txd["cmd_type_len"] = R.TXD_CMD_DATA | size
            spent, start, tail = 0.0, time.perf_counter(), 0
            sink = world.sinks["p0"]
            while time.perf_counter() - start < seconds:
                tail = (p.reg(R.TDH(0)) - 1) % ring      # post everything but one slot
                p.set_reg(R.TDT(0), tail)
                t0 = time.perf_counter()
                world.step()
                spent += time.perf_counter() - t0
                sink.top[:] = 0                          # the same frames again: not "reordered"
                sink._top_sum = sink._verified = 0
            c = world.counters()["p0"]
            assert c.sink_corrupt == 0, c
            return c.tx_sent / spent
        finally:
            world.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--ring", type=int, default=512)
    ap.add_argument("--size", type=int, default=60)
    args = ap.parse_args()
    rx = bench_rx(args.seconds, args.ring, args.size)
    tx = bench_tx(args.seconds, args.ring, args.size)
    print(f"software 82599, {args.size}-byte frames, {args.ring}-entry rings (model time only):")
    print(f"  generate + RX DMA + write-back : {rx / 1e6:6.2f} Mpps")
    print(f"  TX DMA + sink verification     : {tx / 1e6:6.2f} Mpps")


if __name__ == "__main__":
    main()
