"""End-to-end Mpps of the multi-process pipeline and the CPU each process spends per forwarded packet.

All runs use pipelines/fwd.toml's set-up: two software 82599 ports driven by
the ixgbe driver, traffic both ways, every packet touched and verified by
the sinks.

1. Saturation (always): ``ixypipe run`` with both generators at rate 0 (they
   fill whatever RX descriptors are free, so nothing is lost by
   construction), 1 and 2 workers.  While it runs, every process of the
   pipeline (the model ``ixypipe-sim``, each stage, the supervisor) is sampled
   with psutil at each stats line; CPU ns per forwarded packet is each
   process's CPU time between the first sample after the warm-up and the
   last one, over the packets forwarded (both directions) in between.  That
   figure is stable on a shared machine; the wall Mpps beside it is not.
2. ``--lossless``: the same pipeline with generators fixed at 90 %, 75 %,
   60 % and 50 % of the saturated rate until a run whose NICs miss nothing
   after the first second; the sinks must see every packet in order.
3. ``--ixy-fwd``: ixy-fwd (ixypipe.ops.forwarder.Forwarder) in one process, model in another.

    python3 bench/pipeline_bench.py [--seconds 6] [--batch 1024] [--workers 1,2] [--lossless] [--ixy-fwd]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ixypipe.pipeline.config import parse_pipeline
from ixypipe.pipeline.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
FWD = REPO / "pipelines" / "fwd.toml"
LOSSLESS_STEPS = (0.9, 0.75, 0.6, 0.5)
WARMUP_LINES = 1            # stats lines (seconds) after the first forwarded packet before the window opens
STARTUP_SECONDS = 4         # time given to start up (imports, device set-up) before traffic flows


def cpu_sample(root: psutil.Process) -> dict[int, tuple[str, float]]:
    """(name, user+system CPU seconds) of the supervisor and every process under it."""
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            out[p.pid] = (p.name(), t.user + t.system)
        except psutil.Error:
            pass
    return out


def saturated(workers: int, batch: int, seconds: float) -> dict:
    """One saturated ``ixypipe run`` in a subprocess; CPU per forwarded packet of each of its processes."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=FWD.parent, prefix=".bench-") as f:
        f.write(pipeline_text(workers, batch, 0.0))
        f.flush()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", f.name, "--duration",
                                 str(seconds + WARMUP_LINES + STARTUP_SECONDS), "--json"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        root = psutil.Process(proc.pid)
        samples, forwarded, batches, summary = [], [], [], None
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            if d["type"] == "summary":
                summary = d
                continue
            if d.get("type") != "interval":          # the ready object comes before the first interval
                continue
            samples.append((time.perf_counter(), cpu_sample(root)))
            forwarded.append(sum(p["tx_packets"] for p in d["ports"].values()))    # running totals
            batches.append({name: s["batches"] for name, s in d.get("stages", {}).items()})    # this interval
        proc.wait()
    flowing = next((i for i, n in enumerate(forwarded) if n > 0), len(forwarded))
    start = flowing + WARMUP_LINES
    if start >= len(samples) - 1:
        raise SystemExit(f"the pipeline printed {len(samples)} stats lines, traffic from line {flowing} "
                         f"(exit {proc.returncode}): too short to measure")
    (t0, first), (t1, last) = samples[start], samples[-1]
    packets = forwarded[-1] - forwarded[start]
    per_process = {}
    for pid, (name, cpu) in last.items():
        if pid in first:
            per_process[name] = per_process.get(name, 0.0) + cpu - first[pid][1]
    stage_batches: dict[str, int] = {}
    for interval in batches[start + 1:]:
        for name, n in interval.items():
            stage_batches[name] = stage_batches.get(name, 0) + n
    return {"mpps": packets / (t1 - t0) / 1e6, "packets": packets, "batches": stage_batches,
            "ns": {name: cpu / max(packets, 1) * 1e9 for name, cpu in per_process.items()},
            "ok": proc.returncode == 0 and summary is not None and summary["ok"],
            "problems": (summary or {}).get("problems", []) or [f"exit {proc.returncode}"],
            "sink": {k: sum(c[k] for c in summary["sim"].values()) for k in
                     ("sink_received", "sink_lost", "sink_reordered", "sink_corrupt")} if summary else {}}


def pipeline_text(workers: int, batch: int, rate_mpps_per_port: float) -> str:
    text = FWD.read_text()
    text = re.sub(r"^processes = .*$", f"processes = {workers}", text, flags=re.M)
    if not batch:                                       # fwd.toml's batch and sizes as they are
        return re.sub(r"^rate_mpps = .*$", f"rate_mpps = {rate_mpps_per_port}", text, flags=re.M)
    text = re.sub(r"^batch_size = .*$", f"batch_size = {batch}", text, flags=re.M)
    # rings between stages hold at least two batches, the NIC's TX ring a batch, and the mempool the RX ring,
    # a TX ring and two batches
    ring = max(1024, 1 << (2 * batch - 1).bit_length())
    text = re.sub(r"^ring_size = .*$", f"ring_size = {ring}", text, flags=re.M)
    rx_ring = max(int(v) for v in re.findall(r"^rx_ring_size = (\d+)", text, flags=re.M))
    tx_ring = max(int(v) for v in re.findall(r"^tx_ring_size = (\d+)", text, flags=re.M))
    if tx_ring < batch:
        tx_ring = min(4096, 1 << (batch - 1).bit_length())
        text = re.sub(r"^tx_ring_size = \d+", f"tx_ring_size = {tx_ring}", text, flags=re.M)
    buffers = max(8192, rx_ring + tx_ring + 2 * ring)
    text = re.sub(r"^buffers_per_queue = .*$", f"buffers_per_queue = {buffers}", text, flags=re.M)
    return re.sub(r"^rate_mpps = .*$", f"rate_mpps = {rate_mpps_per_port}", text, flags=re.M)


def run_pipeline(workers: int, batch: int, rate: float, seconds: float) -> dict:
    cfg = parse_pipeline(pipeline_text(workers, batch, rate), FWD)
    out = io.StringIO()
    result = Supervisor(cfg, duration=seconds + 1, json_lines=True, out=out).run()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    intervals = [d for d in lines if d["type"] == "interval"][1:]     # the first second warms up
    summary = next(d for d in lines if d["type"] == "summary")
    mpps = [sum(p["tx_mpps"] for p in d["ports"].values()) for d in intervals]
    missed_after_warmup = sum(p.get("rx_missed", 0) for d in intervals for p in d["ports"].values())
    return {"mpps": sum(mpps) / len(mpps) if mpps else 0.0, "ok": result.exit_code == 0 and summary["ok"],
            "missed": missed_after_warmup,
            "reordered": sum(c["sink_reordered"] for c in summary["sim"].values()),
            "sink_lost": sum(c["sink_lost"] for c in summary["sim"].values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=0, help="batch size, rings sized to it (default: fwd.toml's)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--lossless", action="store_true", help="also search the highest rate without NIC misses")
    ap.add_argument("--ixy-fwd", action="store_true", help="also run the single-process ixy-fwd")
    args = ap.parse_args()
    batch = args.batch or parse_pipeline(FWD.read_text(), FWD).batch_size
    print(f"pipelines/fwd.toml saturated, 60-byte frames, batch {batch}, about {args.seconds:g} s measured "
          f"from {WARMUP_LINES} s after traffic starts; CPU ns per forwarded packet (both directions) per process")
    for workers in (int(w) for w in args.workers.split(",")):
        r = saturated(workers, args.batch, args.seconds)
        model = sum(ns for name, ns in r["ns"].items() if name.startswith("ixypipe-sim"))
        total = sum(r["ns"].values())
        stages = ", ".join(f"{name} {ns:.0f}" for name, ns in sorted(r["ns"].items()) if ns >= 1)
        print(f"  {workers} worker{'s' if workers > 1 else ''}: {r['mpps']:.3f} Mpps wall, {r['packets']:,} packets; "
              f"CPU ns/packet: all {total:.0f} (= {1e3 / total if total else 0:.2f} Mpps per CPU), model {model:.0f}"
              f"{'' if r['ok'] else ', NOT OK: ' + '; '.join(map(str, r['problems']))}")
        print(f"      {stages}")
        roles = [name.split("-")[0] for name in r["batches"]]      # the packets are shared by the stages of a role
        per_batch = ", ".join(f"{name} {r['packets'] / roles.count(name.split('-')[0]) / n:.0f}"
                              for name, n in sorted(r["batches"].items()) if n)
        print(f"      packets per batch: {per_batch}")
        print(f"      sinks: {r['sink']}")
        if args.lossless:
            tried = []
            for share in LOSSLESS_STEPS:
                rate = round(r["mpps"] * share / 2, 3)          # per port: both ports generate
                held = run_pipeline(workers, args.batch, rate, args.seconds)
                tried.append(f"{rate * 2:.3f}: {held['missed']:,}{'' if held['ok'] else ' (accounting BROKEN)'}"
                             f"{' (reordered)' if held['reordered'] else ''}")
                if held["missed"] == 0:
                    break
            print(f"      offered Mpps: NIC misses after the first second: {', '.join(tried)}")
    if args.ixy_fwd:
        sys.path.insert(0, str(Path(__file__).parent))
        from driver_bench import forwarder_mpps

        fwd = forwarder_mpps([batch], args.seconds, "auto", None)[batch]
        print(f"  ixy-fwd, one process: {fwd:.3f} Mpps wall")


if __name__ == "__main__":
    main()
