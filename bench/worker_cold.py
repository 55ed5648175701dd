"""What a Python worker function costs per lone packet on this machine, alone: the floor under the Python row.

A ping through a pipeline with a Python worker crosses the worker twice
(echo request and reply), each time as a batch of one after ~20 ms of
nothing.  This process does exactly that part and nothing else: every
``interval`` seconds it wakes from a sleep, builds the Batch over one ICMP
echo frame in packet buffers (as the worker stage does), calls the function
and turns what it returned into verdicts (pipeline/stages.verdicts), and
times that on its own clock.  No rings, no wake-up by another process, no
routing.  bench/latency_bench.py runs it beside the pipeline rows, in pairs
as a ping meets the worker (the reply ~0.15 ms after the request): a pair's
median is what the Python row cannot lose to anything ixypipe does.

    python3 bench/worker_cold.py examples/dns_guard.py:dns_guard --calls 200
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from ixypipe.pipeline.stages import verdicts
from ixypipe.workers.api import Batch
from ixypipe.workers.loader import load_worker

# a 98-byte ICMP echo request between two hosts of the veth testbed (what `ping` sends)
ECHO = bytes.fromhex("02000000000202000000000108004500005400004000400126a20a4d00010a4d0002"
                     "0800000012340001") + bytes(56)


def cold_calls(function: str, calls: int, interval: float, reply_after: float = 0.0) -> np.ndarray:
    """Seconds per call of ``function`` (file.py:name) on a one-frame batch, one call every ``interval``;
    with ``reply_after``, calls come in pairs, the second that long after the first (a ping's reply)."""
    fn = load_worker(function)
    batch = Batch.from_frames([ECHO])                  # the buffers: made once, as a stage's arena is
    bufs, idx = batch.bufs, batch.idx.copy()
    verdicts(batch, fn(batch), 1)                      # once untimed: a stage's warm-up loads the parser too
    took = np.empty(calls)
    for i in range(calls):
        time.sleep(reply_after if reply_after and i % 2 else interval)
        t0 = time.perf_counter()
        b = Batch(bufs, idx, 0, 1, ["p0", "p1"], {})
        verdicts(b, fn(b), 1)
        took[i] = time.perf_counter() - t0
    return took


@click.command()
@click.argument("function")
@click.option("--calls", default=200, show_default=True, help="calls, one per interval")
@click.option("--interval", default=0.02, show_default=True, help="seconds between calls (latency_bench's pings)")
@click.option("--reply-after", default=0.0, show_default=True,
              help="seconds: calls in pairs, the second this long after the first (a ping's echo reply)")
@click.option("--json", "as_json", is_flag=True, help="the times (ms) as one JSON list")
def main(function: str, calls: int, interval: float, reply_after: float, as_json: bool) -> None:
    took = cold_calls(function, calls, interval, reply_after) * 1e3
    if as_json:
        print(json.dumps([round(float(t), 4) for t in took]))
        return
    print(f"{function}: one-frame batch every {interval * 1e3:g} ms: p50 {np.median(took):.3f} ms, "
          f"p90 {np.percentile(took, 90):.3f} ms, min {took.min():.3f} ms ({calls} calls)")


if __name__ == "__main__":
    main()
