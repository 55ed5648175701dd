"""The least a bump in the wire built of Python stage processes can cost: the floor under ixypipe's latency.

Five processes as in bridge-veth.toml (RX per port, one worker, TX per
port), each doing only what any such pipeline must: RX blocks in poll() on a
packet socket and copies the frame into shared memory, then posts the
worker's semaphore; the worker wakes, copies the frame into the other
port's slot and posts that TX process; TX wakes and send()s it.  No rings,
buffers, counters or checks, one frame in flight per direction (so only for
lone packets: pings at a low rate).  Run beside ixypipe by
bench/latency_bench.py: the RTT this gets on a machine is a floor for any
pipeline whose stages are Python processes there, and the gap between the
two is what ixypipe's own work per stage costs.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import select
import socket

import posix_ipc

from ixypipe.nic.af_packet_abi import ETH_P_ALL, PACKET_IGNORE_OUTGOING, SOL_PACKET

SLOT = 4096                      # one frame and its length word per hand-off
WAIT_SECONDS = 0.1               # every block is bounded, as the pipeline's


def _rx(ifname: str, slot: memoryview, post: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    sock.bind((ifname, 0))
    bell = posix_ipc.Semaphore(post)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        poller.poll(WAIT_SECONDS * 1000)
        try:
            n = sock.recv_into(slot[8:], SLOT - 8, socket.MSG_DONTWAIT)
        except BlockingIOError:
            continue
        slot[:8] = n.to_bytes(8, "little")
        bell.release()


def _worker(slots_in: list[memoryview], slots_out: list[memoryview], wait: str, posts: list[str]) -> None:
    me = posix_ipc.Semaphore(wait)
    bells = [posix_ipc.Semaphore(p) for p in posts]
    while True:
        try:
            me.acquire(WAIT_SECONDS)
        except posix_ipc.BusyError:
            continue
        for src, dst, bell in zip(slots_in, slots_out, bells, strict=True):
            n = int.from_bytes(src[:8], "little")
            if n:
                dst[8:8 + n] = src[8:8 + n]
                dst[:8] = src[:8]
                src[:8] = bytes(8)
                bell.release()


def _tx(ifname: str, slot: memoryview, wait: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    me = posix_ipc.Semaphore(wait)
    while True:
        try:
            me.acquire(WAIT_SECONDS)
        except posix_ipc.BusyError:
            continue
        n = int.from_bytes(slot[:8], "little")
        if n:
            sock.send(slot[8:8 + n])
            slot[:8] = bytes(8)


class PythonFloor:
    """The five processes between interfaces ``a`` and ``b``; ``close`` ends them and removes the semaphores."""

    def __init__(self, a: str, b: str):
        tag = f"/ixyfloor-{os.getpid()}"
        self.sems = {k: f"{tag}-{k}" for k in ("worker", "tx-a", "tx-b")}
        for name in self.sems.values():
            posix_ipc.Semaphore(name, posix_ipc.O_CREAT, initial_value=0).close()
        self.shm = mmap.mmap(-1, 4 * SLOT)            # shared with the forked children
        rx_a, rx_b, to_b, to_a = (memoryview(self.shm)[i * SLOT:(i + 1) * SLOT] for i in range(4))
        ctx = multiprocessing.get_context("fork")
        self.procs = [ctx.Process(target=_rx, args=(a, rx_a, self.sems["worker"]), daemon=True),
                      ctx.Process(target=_rx, args=(b, rx_b, self.sems["worker"]), daemon=True),
                      ctx.Process(target=_worker, args=([rx_a, rx_b], [to_b, to_a], self.sems["worker"],
                                                        [self.sems["tx-b"], self.sems["tx-a"]]), daemon=True),
                      ctx.Process(target=_tx, args=(b, to_b, self.sems["tx-b"]), daemon=True),
                      ctx.Process(target=_tx, args=(a, to_a, self.sems["tx-a"]), daemon=True)]
        for p in self.procs:
            p.start()

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.join()
        for name in self.sems.values():
            try:
                posix_ipc.unlink_semaphore(name)
            except posix_ipc.ExistentialError:
                pass
