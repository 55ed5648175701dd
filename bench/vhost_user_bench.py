"""ixypipe's vhost-user driver against DPDK's virtio_user PMD, through the same testpmd vhost backend, in one run.

For each direction one ``dpdk-testpmd`` serves a vhost-user socket (``net_vhost0``) on CPU 0: ``rxonly`` for
the frontends' transmit, ``txonly`` for their receive.  Two frontends take turns on that backend, on CPU 1:

* DPDK: a second testpmd with ``net_virtio_user0`` in ``txonly`` / ``rxonly`` (burst 32, 64-byte frames);
* ixypipe: :class:`~ixypipe.nic.vhost_user.VhostUserDevice` in this process, driven by a numba loop around
  the queue kernels the pipeline's compiled stage loops call (``VirtioDevice.compiled_tx`` / ``compiled_rx``:
  ``virtio_jit.tx_queue`` / ``rx_queue``) at batch 32.  Like testpmd's txonly, the transmit loop writes each
  frame's 42 header bytes before posting it (64-byte frames); the receive loop frees every buffer at once,
  as rxonly does.

CPU time per packet comes from each frontend's own CPU clock of the thread that moves the packets: testpmd's
forwarding lcore (``rte-worker-1``, its schedstat run time over the whole forwarding period, packets from its
final statistics) and the numba loop's thread (``time.thread_time_ns``).  Both count polls that found nothing
(a full TX ring, an empty RX ring) as the loop's cost, so the lines also show each frontend's Mpps, how much
it waited (``idle``: ixypipe's bursts that moved nothing; testpmd txonly's TX-dropped, frames it made that the
full ring refused; testpmd's burst statistics follow) and the backend's own CPU per packet: a frontend's
figure is its own cost only while it is the slower side; when both wait on the backend, the ratio compares
two frontends polling the same backend.  The turns alternate, each round with a fresh backend, and the
figures are the sums over the rounds, so a change in the machine's load hits both frontends alike; every
process of the bench runs at nice -10.

    sudo python3 bench/vhost_user_bench.py [--seconds 2] [--rounds 4] [--batch 32] [--directions tx,rx]

Needs root, 2 MiB hugepages mounted on /mnt/huge and dpdk-testpmd (apt-get install dpdk-dev).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import numba
import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.memory.homing import Homing
from ixypipe.memory.mempool import Mempool
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.nic import virtio_jit
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.device import PortSpec
from ixypipe.nic.vhost_user import open_vhost_user

BACKEND_CPU, FRONTEND_CPU = 0, 1
FRAME = 64                       # testpmd txonly's default frame (--txpkts 64)
HEADERS = 42                     # Ethernet + IPv4 + UDP: what txonly writes into every frame
POOL = 8192
RING = 256                       # testpmd's default ring size for virtio_user (--txd/--rxd 256)
NICE = -10                       # every side of the bench outweighs the machine's other work (CFS weight ~9x)
CHUNK = 20_000                   # loop iterations per call of the numba loop (the clock is read between calls)


# ---- testpmd -----------------------------------------------------------------------------------------

def testpmd(prefix: str, cpu: int, vdev: str, mode: str, log: Path, batch: int) -> subprocess.Popen:
    args = ["nice", "-n", str(NICE), "dpdk-testpmd", "--lcores", f"0@{cpu},1@{cpu}", "--no-pci", "--file-prefix", prefix, "-m", "256",
            "--vdev", vdev]
    args += ["--single-file-segments"] if vdev.startswith("net_virtio_user") else ["--huge-unlink"]
    args += ["--", f"--forward-mode={mode}", "--auto-start", f"--burst={batch}", "--total-num-mbufs=8192",
             "--record-burst-stats"]
    # stdin stays open and silent: testpmd forwards until SIGINT (at "Press enter to exit")
    proc = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
    proc.prefix, proc.log = prefix, log
    return proc


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(Path("/var/run/dpdk") / proc.prefix, ignore_errors=True)
    for f in Path("/mnt/huge").glob(f"{proc.prefix}map_*"):
        f.unlink(missing_ok=True)
    return proc.log.read_text(errors="replace")


def _worker(proc: subprocess.Popen) -> Path:
    for task in Path(f"/proc/{proc.pid}/task").iterdir():
        if (task / "comm").read_text().strip() == "rte-worker-1":
            return task
    raise RuntimeError(f"testpmd {proc.pid} has no rte-worker-1 thread")


def worker_ns(proc: subprocess.Popen) -> int:
    """Run time so far of testpmd's forwarding lcore (its thread rte-worker-1), from schedstat, in ns."""
    return int((_worker(proc) / "schedstat").read_text().split()[0])


def worker_age_ns(proc: subprocess.Popen) -> int:
    """Wall time since testpmd's forwarding lcore started (its thread's start time, 10 ms resolution)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int((_worker(proc) / "stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    return int((float(Path("/proc/uptime").read_text().split()[0]) - start) * 1e9)


def accumulated(out: str, field: str) -> int:
    block = out.rsplit("Accumulated forward statistics for all ports", 1)
    if len(block) != 2:
        raise RuntimeError(f"testpmd printed no final statistics:\n{out[-3000:]}")
    return int(re.search(rf"{field}: (\d+)", block[1]).group(1))


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"testpmd did not create {path}:\n{proc.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)


# ---- ixypipe's loops ---------------------------------------------------------------------------------

_memcpy = numba.types.ExternalFunction("memcpy", numba.types.uintp(numba.types.uintp, numba.types.uintp,
                                                                   numba.types.uintp))


@numba.njit(nogil=True, boundscheck=False)
def tx_loop(rec, stack, top, data, length, template, bufs, iterations, counts):
    """txonly: up to len(bufs) buffers off the pool's stack, headers written, posted; the rest and what the
    backend finished back on the stack.  counts: [posted, bursts that posted nothing]."""
    freed = rec[10]
    for _ in range(iterations):
        t = np.int64(top[0])
        n = min(bufs.shape[0], t)
        for j in range(n):
            b = stack[t - 1 - j]
            bufs[j] = b
            _memcpy(data[b].ctypes.data, template.ctypes.data, template.shape[0])   # as txonly's rte_memcpy
            length[b] = FRAME
        t -= n
        posted, cleaned = virtio_jit.tx_queue(rec, bufs[:n])
        for j in range(posted, n):
            stack[t] = bufs[j]
            t += 1
        for j in range(cleaned):
            stack[t] = freed[j]
            t += 1
        top[0] = t
        counts[0] += posted
        if posted == 0:
            counts[1] += 1


@numba.njit(nogil=True, boundscheck=False)
def rx_loop(rec, stack, top, out, iterations, counts):
    """rxonly: a burst, every buffer straight back on the pool's stack.  counts: [received, empty bursts]."""
    for _ in range(iterations):
        got = virtio_jit.rx_queue(rec, out)
        if got > 0:
            t = np.int64(top[0])
            for j in range(got):
                stack[t + j] = out[j]
            top[0] = t + got
            counts[0] += got
        else:
            counts[1] += 1


def ixypipe_frontend(sock: str, direction: str, seconds: float, batch: int) -> tuple[int, int, int, int]:
    """(packets, thread CPU ns, wall ns, empty bursts) of ixypipe's compiled loop on the vhost-user socket."""
    arena = Arena.create(32 << 20, hugepages_mode="require", tag="vhbench")
    dev = None
    try:
        bufs = PacketBuffers.create(arena, POOL)
        pool = Mempool.create(arena, bufs, "pool0", 0, POOL, 0)
        spec = PortSpec("v0", "vhost-user", sock, rx_ring_size=RING, tx_ring_size=RING, options={"hot_path": "numba"})
        dev = open_vhost_user(spec, arena, bufs, [pool], tx_done=Homing.to_pools(bufs, [pool]))
        stack, top = pool.free_stack()
        counts = np.zeros(2, np.int64)
        if direction == "tx":
            _, rec, *_ = dev.compiled_tx(0)
            template = (np.arange(HEADERS) * 7 % 251).astype(np.uint8)
            run = lambda n: tx_loop(rec, stack, top, bufs.data, bufs.length, template,  # noqa: E731
                                    np.empty(batch, np.uint32), n, counts)
        else:
            _, rec = dev.compiled_rx(0)
            run = lambda n: rx_loop(rec, stack, top, np.empty(batch, np.uint32), n, counts)  # noqa: E731
        run(1)                                            # compiled before the clock starts
        counts[:] = 0
        cpu = 0
        wall0 = time.perf_counter_ns()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.thread_time_ns()
            run(CHUNK)
            cpu += time.thread_time_ns() - t0
        wall = time.perf_counter_ns() - wall0
        q = dev._tx[0] if direction == "tx" else dev._rx[0]
        if q.kick[V.KICK_WANTED]:
            print(f"  (ixypipe kicked the backend {int(q.kick[V.KICK_WANTED])} times)")
        return int(counts[0]), cpu, wall, int(counts[1])
    finally:
        if dev is not None:
            dev.close()
        arena.destroy()


# ---- the run -----------------------------------------------------------------------------------------

def dpdk_frontend(backend, sock: Path, direction: str, seconds: float, batch: int, log: Path, prefix: str):
    """(packets, worker CPU ns, worker wall ns, TX-dropped, its burst statistics) of testpmd's virtio_user."""
    mode = "txonly" if direction == "tx" else "rxonly"
    front = testpmd(prefix, FRONTEND_CPU, f"net_virtio_user0,path={sock},queues=1", mode, log, batch)
    try:
        time.sleep(seconds + 1)            # EAL start-up, then forwarding
        cpu, wall = worker_ns(front), worker_age_ns(front)
    finally:
        out = stop(front)
    packets = accumulated(out, "TX-packets" if direction == "tx" else "RX-packets")
    dropped = accumulated(out, "TX-dropped") if direction == "tx" else 0
    bursts = [line.strip() for line in out.rsplit("Accumulated forward statistics", 1)[0].splitlines()
              if re.match(r"\s*(RX|TX)-bursts", line)]
    return packets, cpu, wall, dropped, bursts[-1:]


def direction_run(direction: str, seconds: float, batch: int, rounds: int, tmp: Path) -> dict:
    """Both frontends in turns (DPDK, then ixypipe) against one backend, a fresh backend each round (testpmd's
    vhost port does not always outlive a frontend that went away): per frontend the sums of (packets, CPU ns,
    wall ns, idle, backend CPU ns), and testpmd's burst statistics of its last round."""
    sums = {"DPDK virtio_user": np.zeros(5, np.int64), "ixypipe vhost-user": np.zeros(5, np.int64)}
    bursts = []
    nice = os.nice(0)
    for r in range(rounds):
        sock = tmp / f"vhu-{direction}-{r}.sock"
        tag = f"vhb{os.getpid()}{direction}{r}"
        backend = testpmd(f"{tag}b", BACKEND_CPU, f"net_vhost0,iface={sock},queues=1",
                          "rxonly" if direction == "tx" else "txonly", tmp / f"backend-{direction}-{r}.log", batch)
        try:
            wait_for(sock, backend)
            b0 = worker_ns(backend)
            *figures, bursts = dpdk_frontend(backend, sock, direction, seconds, batch,
                                             tmp / f"frontend-{direction}-{r}.log", f"{tag}f")
            sums["DPDK virtio_user"] += (*figures, worker_ns(backend) - b0)
            time.sleep(0.5)                        # the backend notices the disconnection
            os.sched_setaffinity(0, {FRONTEND_CPU})
            os.nice(NICE - os.nice(0))
            b0 = worker_ns(backend)
            figures = ixypipe_frontend(str(sock), direction, seconds, batch)
            sums["ixypipe vhost-user"] += (*figures, worker_ns(backend) - b0)
        finally:
            os.nice(nice - os.nice(0))
            os.sched_setaffinity(0, set(range(os.cpu_count())))
            stop(backend)
    return {**{k: v.tolist() for k, v in sums.items()}, "testpmd bursts": bursts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--directions", default="tx,rx")
    ap.add_argument("--rounds", type=int, default=4, help="turns of each frontend (figures are their sums)")
    ap.add_argument("--logs", metavar="DIR", help="keep testpmd's logs (and sockets) in DIR")
    args = ap.parse_args()
    if shutil.which("dpdk-testpmd") is None:
        raise SystemExit("dpdk-testpmd is not installed (apt-get install dpdk-dev)")
    print(f"vhost-user frontends through one testpmd net_vhost backend (CPU {BACKEND_CPU}), frontends on CPU "
          f"{FRONTEND_CPU}, batch {args.batch}, {FRAME}-byte frames, {args.rounds} turns of {args.seconds:g} s each")
    print(f"{'direction':9} {'frontend':19} {'packets':>11} {'Mpps':>6} {'CPU ns/pkt':>10} {'idle':>11} "
          f"{'backend ns/pkt':>14}")
    with tempfile.TemporaryDirectory(prefix="vhbench") as tmp:
        where = Path(args.logs or tmp)
        where.mkdir(parents=True, exist_ok=True)
        for direction in args.directions.split(","):
            res = direction_run(direction, args.seconds, args.batch, args.rounds, where)
            bursts = res.pop("testpmd bursts")
            for name, (packets, cpu, wall, empty, back) in res.items():
                print(f"{direction:9} {name:19} {packets:>11,} {packets / wall * 1e3:>6.2f} "
                      f"{cpu / max(packets, 1):>10.1f} {empty:>11,} {back / max(packets, 1):>14.1f}")
            for line in bursts:
                print(f"{direction:9} (testpmd virtio_user {line})")
            (dp, dc, *_), (ip, ic, *_) = res["DPDK virtio_user"], res["ixypipe vhost-user"]
            print(f"{direction:9} ratio ixypipe / DPDK CPU per packet: {(ic / max(ip, 1)) / (dc / max(dp, 1)):.2f}")


if __name__ == "__main__":
    main()
