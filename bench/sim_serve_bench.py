"""How many packets per second the *served* software 82599 produces and absorbs per port, for a foreign driver.

``ixypipe sim serve``'s model runs in its own process (``SimServer`` with no
arenas: it finds the driver's memory through /proc).  The driver is a
separate process with its own hugepage arena: a minimal vectorized stand-in
that touches nothing but the BAR files and its rings, so the model is the
bottleneck as far as one process can make it.  Two measurements:

* ``rx``: port p0 has a generator; the driver hands every used RX
  descriptor straight back.  Result: frames generated and DMAed per second.
* ``fwd``: p0's generator feeds the driver, which posts each received
  buffer, unchanged, on p1's TX ring (zero-copy, in order); p1's TX goes to
  a verifying sink.  Result: p0 produce and p1 absorb (TX DMA + sink
  verification) per second; the sink's verdicts must be clean.

Both are run with the model's numpy and compiled (numba) hot paths
(``IXYPIPE_SIM_HOT_PATH``); beside the wall rates, the model's and the
driver's CPU ns per packet (psutil, each process's own CPU clock) over the
same window.  The machine's CPUs are shared: model and driver each want one,
and the model's idle polling (spin, yield, naps) counts as its CPU too.
Run: ``python bench/sim_serve_bench.py [--seconds 3] [--sizes 60,1514] [--ring 1024] [--paths numpy,numba]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from ixypipe.memory.arena import Arena
from ixypipe.nic import registers as R
from ixypipe.sim.server import GeneratorConfig, SimPortConfig, SimServer, SinkConfig
from ixypipe.sim.sysfs import device_dir, map_file
from ixypipe.sim.world import HOT_PATH_ENV

BUF = 2048
WORD = 4


class Port:
    """One port seen by the stand-in driver: its BAR and config space, mapped like any driver maps them."""

    def __init__(self, root: Path, address: str):
        d = device_dir(root, address)
        self._maps = [map_file(d / "resource0"), map_file(d / "config")]
        self.bar = self._maps[0][1].view(np.uint32)
        config = self._maps[1][1]
        config[R.PCI_CFG_COMMAND] |= R.PCI_COMMAND_BUS_MASTER

    def __getitem__(self, offset: int) -> int:
        return int(self.bar[offset // WORD])

    def __setitem__(self, offset: int, value: int) -> None:
        self.bar[offset // WORD] = value & 0xFFFFFFFF

    def ring(self, bal: int, bah: int, length: int, addr: int, nbytes: int) -> None:
        self[bal], self[bah], self[length] = addr & 0xFFFFFFFF, addr >> 32, nbytes


def driver(root: str, mode: str, addresses: list[str], ring: int) -> None:
    """The stand-in driver process: own arena, rings and buffers; runs until SIGINT."""
    n_bufs = 2 * ring
    arena = Arena.create(2 * ring * 16 + n_bufs * BUF + (4 << 20), hugepages_mode="require", tag="servebench")
    rx_region = arena.alloc("rx", ring * R.DESC_SIZE, align=R.RING_ALIGN, within_page=True)
    tx_region = arena.alloc("tx", ring * R.DESC_SIZE, align=R.RING_ALIGN, within_page=True)
    buf_region = arena.alloc("bufs", n_bufs * BUF, align=BUF)
    addr = arena.phys(buf_region.offset + np.arange(n_bufs, dtype=np.uint64) * BUF)
    rxd = arena.view(rx_region, R.RX_DESC_READ_DTYPE)
    rx_len = rxd.view(R.RX_DESC_WB_DTYPE)["length"]
    txd = arena.view(tx_region, R.TX_DESC_READ_DTYPE)
    src = Port(Path(root), addresses[0])
    dst = Port(Path(root), addresses[-1]) if mode == "fwd" else None
    src.ring(R.RDBAL(0), R.RDBAH(0), R.RDLEN(0), int(arena.phys(rx_region.offset)), ring * R.DESC_SIZE)
    src[R.SRRCTL(0)] = R.SRRCTL_DESCTYPE_ADV_ONEBUF | R.SRRCTL_DROP_EN
    src[R.RXDCTL(0)] = R.RXDCTL_ENABLE
    if dst is not None:
        dst.ring(R.TDBAL(0), R.TDBAH(0), R.TDLEN(0), int(arena.phys(tx_region.offset)), ring * R.DESC_SIZE)
        dst[R.TXDCTL(0)] = R.TXDCTL_ENABLE
        dst[R.DMATXCTL] = R.DMATXCTL_TE
    # frame k (k-th ever received) lives in buffer k % n_bufs, RX slot k % ring, TX slot k % ring: all FIFO
    rx_posted = rx_done = tx_posted = tx_done = 0
    stop: list[int] = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))

    def post_rx(upto: int) -> int:
        k = np.arange(rx_posted, upto)
        slots = k % ring
        rxd["pkt_addr"][slots] = addr[k % n_bufs]
        rxd["hdr_addr"][slots] = 0
        src[R.RDT(0)] = upto % ring
        return upto

    rx_posted = post_rx(ring - 1)
    src[R.RXCTRL] = R.RXCTRL_RXEN
    print("ready", flush=True)
    while not stop:
        rx_done += (src[R.RDH(0)] - rx_done) % ring
        if dst is None:
            tx_posted = tx_done = rx_done           # nothing to send: a received buffer is free at once
        else:
            upto = min(rx_done, tx_done + ring - 1)
            if upto > tx_posted:
                k = np.arange(tx_posted, upto)
                slots = k % ring
                txd["buffer_addr"][slots] = addr[k % n_bufs]
                length = rx_len[k % ring].astype(np.uint32)
                txd["cmd_type_len"][slots] = np.uint32(R.TXD_CMD_DATA) | length
                txd["olinfo_status"][slots] = length << np.uint32(R.TXD_PAYLEN_SHIFT)
                tx_posted = upto
                dst[R.TDT(0)] = tx_posted % ring
            tx_done += (dst[R.TDH(0)] - tx_done) % ring
        # an RX slot is reused only after its previous frame's length went into a TX descriptor
        upto = min(rx_done + ring - 1, tx_done + n_bufs, tx_posted + ring)
        if upto > rx_posted:
            rx_posted = post_rx(upto)
        else:
            time.sleep(0)
    print(json.dumps({"received": rx_done, "sent": tx_done}), flush=True)
    rxd = txd = rx_len = src = dst = None      # views into the arena and the BARs go before it
    arena.destroy()


def measure(mode: str, seconds: float, size: int, ring: int, hot_path: str) -> dict:
    gen = GeneratorConfig(packet_size=size, flows=64)
    ports = [SimPortConfig("p0", generator=gen)]
    if mode == "fwd":
        ports.append(SimPortConfig("p1", sink=SinkConfig()))
    os.environ[HOT_PATH_ENV] = hot_path             # the model process inherits it
    with SimServer(ports, None) as server:
        addrs = [server.addresses[p.name] for p in ports]
        proc = subprocess.Popen([sys.executable, __file__, "--driver", str(server.sysfs_root), mode, str(ring),
                                 *addrs], stdout=subprocess.PIPE, text=True)
        model, drv = psutil.Process(server.pid), psutil.Process(proc.pid)
        try:
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit("the stand-in driver did not start")
            server.start_traffic()
            time.sleep(0.5)                                 # warm up
            before, t0, cpu0 = server.counters(), time.perf_counter(), (cpu(model), cpu(drv))
            time.sleep(seconds)
            after, t1, cpu1 = server.counters(), time.perf_counter(), (cpu(model), cpu(drv))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    dt = t1 - t0
    produced = after["p0"].rx_delivered - before["p0"].rx_delivered
    out = {"produce_pps": produced / dt, "faults": sum(c.dma_faults for c in after.values()),
           "model_ns": (cpu1[0] - cpu0[0]) / max(produced, 1) * 1e9,
           "driver_ns": (cpu1[1] - cpu0[1]) / max(produced, 1) * 1e9}
    if mode == "fwd":
        c = after["p1"]
        out["absorb_pps"] = (c.sink_received - before["p1"].sink_received) / dt
        out["sink"] = {"received": c.sink_received, "lost": c.sink_lost, "reordered": c.sink_reordered,
                       "corrupt": c.sink_corrupt}
    return out


def cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--driver":
        root, mode, ring, *addresses = sys.argv[2:]
        driver(root, mode, addresses, int(ring))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", default="60,1514")
    ap.add_argument("--ring", type=int, default=1024)
    ap.add_argument("--paths", default="numpy,numba")
    args = ap.parse_args()
    print(f"served software 82599, foreign driver process, {args.ring}-entry rings; CPU ns per packet of the "
          "model and of the stand-in driver over the measured window")
    for size in (int(s) for s in args.sizes.split(",")):
        for path in args.paths.split(","):
            rx = measure("rx", args.seconds, size, args.ring, path)
            fwd = measure("fwd", args.seconds, size, args.ring, path)
            print(f"  {size:>4} B {path:<5} generate+RX, driver recycles : {rx['produce_pps'] / 1e6:6.3f} Mpps wall, "
                  f"model {rx['model_ns']:5.0f} ns/pkt, driver {rx['driver_ns']:5.0f} ns/pkt, faults {rx['faults']}")
            print(f"  {size:>4} B {path:<5} generate+RX -> driver -> TX+verify: {fwd['absorb_pps'] / 1e6:6.3f} Mpps "
                  f"wall, model {fwd['model_ns']:5.0f} ns/pkt, driver {fwd['driver_ns']:5.0f} ns/pkt, "
                  f"sink {fwd['sink']}, faults {fwd['faults']}", flush=True)


if __name__ == "__main__":
    main()
