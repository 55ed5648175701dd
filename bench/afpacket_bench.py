"""Packets per second between two veths: through ixypipe's AF_PACKET ports beside the kernel's Linux bridge.

One run builds a testbed (host A and host B in namespaces of their own,
each joined by a veth pair to this namespace; see ixypipe.ops.netns), then
measures the same traffic twice on the same two outer veth ends:

* ixypipe: the AF_PACKET ports on both ends, joined by the single-process
  Forwarder (``--via fwd``, the default) or by ``ixypipe run`` with
  pipelines/bridge-veth.toml (``--via pipeline``, RX / worker / TX processes);
* kernel: a Linux bridge enslaving the two ends.

Host A blasts minimum-size frames (ethertype 0x88b5, addressed to host B,
which counts and discards them) as fast as its own AF_PACKET TX ring goes,
for ``--seconds``; the figure is what host B's interface received, per
second.  The generator and the forwarding share this machine's CPUs, so
read the ratio, not the absolute numbers.

    python3 bench/afpacket_bench.py [--seconds 5] [--size 60] [--via fwd|pipeline] [--json]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic.af_packet import AfPacketDevice
from ixypipe.nic.device import PortSpec
from ixypipe.ops.netns import VethTestbed

REPO = Path(__file__).resolve().parent.parent
ETHERTYPE = 0x88B5
BLAST_BATCH = 256
SETTLE = 0.5              # seconds for the forwarder to be ready before the generator starts


def _arena(count: int, spec: PortSpec) -> tuple[Arena, PacketBuffers, Mempool]:
    regions = [*PacketBuffers.arena_regions(count), *Mempool.arena_regions(count), *AfPacketDevice.arena_regions(spec)]
    arena = Arena.create(Arena.size_for(regions), hugepages_mode="never", tag="bench")
    bufs = PacketBuffers.create(arena, count)
    return arena, bufs, Mempool.create(arena, bufs, "bench", 0, count, 0)


def blast(ifname: str, dst_mac: str, seconds: float, size: int) -> int:
    """Send frames from ``ifname`` for ``seconds`` through an AF_PACKET TX ring; returns how many."""
    spec = PortSpec("gen", "af_packet", ifname, tx_ring_size=4096, promiscuous=False)
    arena, bufs, pool = _arena(BLAST_BATCH, spec)
    try:
        idx = pool.alloc_exact(BLAST_BATCH)
        head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex("020000000001") + ETHERTYPE.to_bytes(2, "big")
        for k, i in enumerate(idx):
            bufs.write_packet(int(i), head + k.to_bytes(4, "big") + bytes(size - len(head) - 4))
        dev = AfPacketDevice.open(spec, arena, bufs, [], tx_done=lambda sent: None)   # the same buffers again
        sent = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            n = dev.tx_batch(0, idx)
            sent += n
            if n < BLAST_BATCH:
                time.sleep(0)
        dev.tx_drain(0, 2.0)
        dev.close()
        return sent
    finally:
        arena.destroy()


def generate(tb: VethTestbed, seconds: float, size: int) -> dict:
    """Blast from host A; what host B received per second."""
    before = tb.b.counter("rx_packets")
    res = tb.a.run([sys.executable, str(Path(__file__).resolve()), "--blast", tb.a.ifname, tb.b.mac,
                    str(seconds), str(size)], timeout=seconds + 60, check=True, cwd=REPO)
    sent = int(res.stdout.split()[-1])
    got = tb.b.counter("rx_packets") - before
    return {"sent": sent, "received": got, "pps": got / seconds, "sent_pps": sent / seconds}


def via_forwarder(tb: VethTestbed, seconds: float, size: int) -> dict:
    from ixypipe.ops.forwarder import Forwarder

    specs = [PortSpec(f"p{k}", "af_packet", port, rx_ring_size=4096, tx_ring_size=4096)
             for k, port in enumerate((tb.port_a, tb.port_b))]
    regions = [*PacketBuffers.arena_regions(8192), *Mempool.arena_regions(4096), *Mempool.arena_regions(4096),
               *(r for spec in specs for r in AfPacketDevice.arena_regions(spec))]
    arena = Arena.create(Arena.size_for(regions), hugepages_mode="never", tag="bench")
    devs = []
    try:
        bufs = PacketBuffers.create(arena, 8192)
        pools = [Mempool.create(arena, bufs, f"p{k}", 4096 * k, 4096, k) for k in (0, 1)]
        home = Homing.to_pools(bufs, pools)

        for k, spec in enumerate(specs):
            devs.append(AfPacketDevice.open(spec, arena, bufs, [pools[k]], tx_done=home))
        out = np.empty(1, np.uint32)
        for d in devs:
            d.rx_batch(0, out)                       # make the RX sockets before traffic starts
        fwd = Forwarder(devs[0], devs[1], batch=64, touch=False)
        gen = tb.a.popen([sys.executable, str(Path(__file__).resolve()), "--blast", tb.a.ifname, tb.b.mac,
                          str(seconds), str(size)], stdout=subprocess.PIPE, text=True, cwd=REPO)
        before = tb.b.counter("rx_packets")
        fwd.run(duration=seconds + 1.0, out=None)
        fwd.drain()
        sent = int(gen.communicate(timeout=60)[0].split()[-1])
        got = tb.b.counter("rx_packets") - before
        return {"sent": sent, "received": got, "pps": got / seconds, "sent_pps": sent / seconds,
                "rx_dropped_by_kernel": devs[0].read_stats().rx_dropped}
    finally:
        for d in devs:
            d.close()
        arena.destroy()


def via_pipeline(tb: VethTestbed, seconds: float, size: int) -> dict:
    text = (REPO / "pipelines" / "bridge-veth.toml").read_text()
    text = text.replace('"veth-a"', f'"{tb.port_a}"').replace('"veth-b"', f'"{tb.port_b}"')
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.toml"
        path.write_text(text)
        run = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", str(path), "--duration",
                                str(seconds + 4.0), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=REPO)
        time.sleep(2.5)                              # stages started and pinned
        try:
            result = generate(tb, seconds, size)
        finally:
            out, err = run.communicate(timeout=60)
        if run.returncode:
            raise click.ClickException(f"ixypipe run failed ({run.returncode}): {err[-2000:]}")
        summary = [json.loads(line) for line in out.splitlines() if line.startswith("{")][-1]
        result["pipeline_ok"] = summary.get("ok")
        return result


def via_bridge(tb: VethTestbed, seconds: float, size: int) -> dict:
    tb.add_bridge()
    try:
        time.sleep(SETTLE)
        return generate(tb, seconds, size)
    finally:
        tb.remove_bridge()


@click.command()
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Traffic time per measurement.")
@click.option("--size", type=click.IntRange(60, 1514), default=60, show_default=True, help="Frame size (no FCS).")
@click.option("--via", type=click.Choice(["fwd", "pipeline"]), default="fwd", show_default=True,
              help="ixypipe as the single-process Forwarder or as `ixypipe run` (RX/worker/TX processes).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--blast", "blast_args", nargs=4, hidden=True, help="internal: IFNAME DST_MAC SECONDS SIZE (runs in host A)")
def main(seconds: float, size: int, via: str, as_json: bool, blast_args: tuple | None) -> None:
    if blast_args:
        ifname, mac, secs, sz = blast_args
        print(blast(ifname, mac, float(secs), int(sz)))
        return
    if os.geteuid() != 0:
        raise click.ClickException("the benchmark makes namespaces and veth pairs: run it as root")
    with VethTestbed() as tb:
        ixy = via_forwarder(tb, seconds, size) if via == "fwd" else via_pipeline(tb, seconds, size)
        kernel = via_bridge(tb, seconds, size)
    ratio = ixy["pps"] / kernel["pps"] if kernel["pps"] else 0.0
    if as_json:
        print(json.dumps({"size": size, "seconds": seconds, "via": via, "ixypipe": ixy, "linux_bridge": kernel,
                          "ratio": ratio}))
        return
    print(f"{size}-byte frames, {seconds:g} s each, host A -> host B through two veths")
    print(f"{'':16}{'received pps':>14}{'offered pps':>14}")
    print(f"{'ixypipe (' + via + ')':16}{ixy['pps']:>14,.0f}{ixy['sent_pps']:>14,.0f}")
    print(f"{'Linux bridge':16}{kernel['pps']:>14,.0f}{kernel['sent_pps']:>14,.0f}")
    print(f"ratio ixypipe / bridge: {ratio:.3f}")


if __name__ == "__main__":
    main()
