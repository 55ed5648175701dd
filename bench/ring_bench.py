"""SPSC ring throughput: across two pinned processes beside the same ring in one process.

For each burst size the script pushes uint32 indices through a ring in the
shared arena twice: once with producer and consumer in this process (enqueue
then dequeue, one after the other), once with a producer child process and
this process as the consumer, pinned to different CPUs when there are two or
more.  The child attaches the arena by its path like every stage does.  The
consumer only counts what it dequeues (as a stage's loop would before doing
its work) and checks that the last burst holds the last indices sent; the
exact sequence is proven by tests/test_ring.py.  The table gives Mpps for
both and their ratio.

    python3 bench/ring_bench.py [--bursts 1,8,32,256] [--seconds 1.0] [--ring-size 4096] [--json]
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time

import click
import numpy as np

from ixypipe.memory.arena import Arena
from ixypipe.rings.spsc import Ring

CALIBRATE_SECONDS = 0.05


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def same_process(ring: Ring, burst: int, seconds: float) -> float:
    """Mpps of enqueue + dequeue of ``burst`` indices in one process."""
    items = np.arange(burst, dtype=np.uint32)
    out = np.empty(burst, np.uint32)
    enqueue, dequeue = ring.enqueue, ring.dequeue
    rounds, done, start = 1024, 0, time.perf_counter()
    while True:
        for _ in range(rounds):
            enqueue(items)
            dequeue(out)
        done += rounds
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    if not np.array_equal(out, items):
        raise SystemExit(f"same-process ring returned {out[:8]}..., expected {items[:8]}...")
    return done * burst / elapsed / 1e6


def _producer(path: str, ring_name: str, burst: int, total: int, cpu: int | None, start) -> None:
    _pin(cpu)
    arena = Arena.attach(path)
    ring = Ring.attach(arena, ring_name)
    batches = np.arange(total, dtype=np.uint32).reshape(-1, burst)
    enqueue = ring.enqueue
    start.wait()
    for batch in batches:
        sent = enqueue(batch)
        while sent < burst:
            sent += enqueue(batch[sent:])
    ring.close()
    del batches, batch
    arena.close()


def cross_process(arena: Arena, ring_name: str, burst: int, total: int, cpus: tuple[int | None, int | None]
                  ) -> float:
    """Mpps of ``total`` indices from a producer process to this one; checks the sequence."""
    ctx = mp.get_context("fork")
    start = ctx.Event()
    child = ctx.Process(target=_producer, args=(str(arena.path), ring_name, burst, total, cpus[0], start),
                        daemon=True)
    child.start()
    ring = Ring.attach(arena, ring_name)
    out = np.empty(burst, np.uint32)
    dequeue = ring.dequeue
    got = last = 0
    try:
        start.set()
        t0 = time.perf_counter()
        while got < total:
            n = dequeue(out)
            if n:
                got += n
                last = n
        elapsed = time.perf_counter() - t0
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()
    ring.close()
    if child.exitcode != 0:
        raise SystemExit(f"producer exited with {child.exitcode}")
    if got != total or int(out[last - 1]) != total - 1:
        raise SystemExit(f"burst {burst}: got {got} of {total} indices, the last one {int(out[last - 1])}")
    return total / elapsed / 1e6


@click.command()
@click.option("--bursts", default="1,8,32,256", help="Comma-separated burst sizes.")
@click.option("--seconds", default=1.0, type=float, help="Rough time per measurement.")
@click.option("--ring-size", default=4096, type=int, help="Ring capacity (power of two).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def main(bursts: str, seconds: float, ring_size: int, as_json: bool) -> None:
    sizes = [int(b) for b in bursts.split(",")]
    cpus = _cpus()
    pinned = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    saved_affinity = os.sched_getaffinity(0)
    rows = []
    backing = ""
    rings = [r for _ in range(2 * len(sizes)) for r in Ring.arena_regions(ring_size)]   # local and cross per size
    with Arena.create(Arena.size_for(rings), tag="bench") as arena:
        try:
            backing = "hugepages" if arena.hugepages else "/dev/shm"
            _pin(pinned[1])
            for k, burst in enumerate(sizes):
                if burst > ring_size:
                    raise click.BadParameter(f"burst {burst} is larger than the ring ({ring_size})")
                local = Ring.create(arena, f"local{k}", ring_size)
                same = same_process(local, burst, seconds)
                local.close()
                name = f"cross{k}"
                Ring.create(arena, name, ring_size).close()
                # size the cross-process run so it takes about ``seconds`` at the same-process rate
                total = max(burst * 64, int(same * 1e6 * seconds) // burst * burst)
                total = min(total, (1 << 32) // burst * burst)
                cross = cross_process(arena, name, burst, total, pinned)
                rows.append({"burst": burst, "same_process_mpps": round(same, 2),
                             "cross_process_mpps": round(cross, 2), "ratio": round(cross / same, 2)})
        finally:
            os.sched_setaffinity(0, saved_affinity)
    if as_json:
        print(json.dumps({"cpus": pinned, "ring_size": ring_size, "results": rows}))
        return
    where = f"CPUs {pinned[0]} -> {pinned[1]}" if pinned[0] is not None else "unpinned (1 CPU)"
    print(f"SPSC ring, {ring_size} slots, arena on {backing}, "
          f"producer -> consumer on {where}, Python {sys.version.split()[0]}")
    print(f"{'burst':>6} {'same-process Mpps':>18} {'cross-process Mpps':>19} {'cross/same':>11}")
    for r in rows:
        print(f"{r['burst']:>6} {r['same_process_mpps']:>18.2f} {r['cross_process_mpps']:>19.2f} "
              f"{r['ratio']:>11.2f}")


if __name__ == "__main__":
    main()
