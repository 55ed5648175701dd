"""End-to-end Mpps of the multi-process pipeline, 1 and 2 workers, beside the single-process forwarder.

All three run pipelines/fwd.toml's set-up in the same run: two software
82599 ports driven by the ixgbe driver, traffic both ways, every packet
touched and verified by the sinks.

1. Saturation: generators at rate 0 (they fill whatever RX descriptors are
   free, so nothing is lost by construction) for a few seconds; forwarded
   Mpps is the sum over both directions, from the intervals after the first.
2. No loss below the reported rate: the same pipeline with generators fixed
   at 90 %, 75 %, 60 % and 50 % of the saturated rate, from the top, until a
   run whose NICs miss nothing after the first (warm-up) second; that rate is
   the lossless rate reported, and the sinks must see every packet in order.
3. ixy-fwd (ixypipe.ops.forwarder.Forwarder) in one process, model in another.

    python3 bench/pipeline_bench.py [--seconds 5] [--batch 256]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

from ixypipe.pipeline.config import parse_pipeline
from ixypipe.pipeline.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent
FWD = REPO / "pipelines" / "fwd.toml"
LOSSLESS_STEPS = (0.9, 0.75, 0.6, 0.5)


def pipeline_text(workers: int, batch: int, rate_mpps_per_port: float) -> str:
    text = FWD.read_text()
    text = re.sub(r"^processes = .*$", f"processes = {workers}", text, flags=re.M)
    text = re.sub(r"^batch_size = .*$", f"batch_size = {batch}", text, flags=re.M)
    return re.sub(r"^rate_mpps = .*$", f"rate_mpps = {rate_mpps_per_port}", text, flags=re.M)


def run_pipeline(workers: int, batch: int, rate: float, seconds: float) -> dict:
    cfg = parse_pipeline(pipeline_text(workers, batch, rate), FWD)
    out = io.StringIO()
    result = Supervisor(cfg, duration=seconds + 1, json_lines=True, out=out).run()
    lines = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    intervals = [d for d in lines if not d.get("summary")][1:]     # the first second warms up
    summary = next(d for d in lines if d.get("summary"))
    mpps = [sum(p["tx_mpps"] for p in d["ports"].values()) for d in intervals]
    missed_after_warmup = sum(p.get("rx_missed", 0) for d in intervals for p in d["ports"].values())
    return {"mpps": sum(mpps) / len(mpps) if mpps else 0.0, "ok": result.exit_code == 0 and summary["ok"],
            "missed": missed_after_warmup,
            "reordered": sum(c["sink_reordered"] for c in summary["sim"].values()),
            "sink_lost": sum(c["sink_lost"] for c in summary["sim"].values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    rows = []
    for workers in (1, 2):
        sat = run_pipeline(workers, args.batch, 0.0, args.seconds)
        tried = []
        for share in LOSSLESS_STEPS:
            rate = round(sat["mpps"] * share / 2, 3)          # per port: both ports generate
            held = run_pipeline(workers, args.batch, rate, args.seconds)
            tried.append((rate * 2, held))
            if held["missed"] == 0:
                break
        rows.append((f"pipeline, {workers} worker{'s' if workers > 1 else ''}", sat, tried))
        print(f"  measured {rows[-1][0]}", file=sys.stderr)
    sys.path.insert(0, str(Path(__file__).parent))
    from driver_bench import forwarder_mpps

    fwd = forwarder_mpps([args.batch], args.seconds, "auto", None)[args.batch]
    print(f"end-to-end forwarding, 60-byte frames, batch {args.batch}, {args.seconds:g} s per run, two software "
          f"82599 ports (model in its own process)")
    print(f"{'':26} {'saturated Mpps':>14} {'vs ixy-fwd':>10} | offered Mpps: NIC misses after the first second")
    for name, sat, tried in rows:
        steps = ", ".join(f"{offered:.3f}: {held['missed']:,}{'' if held['ok'] else ' (accounting BROKEN)'}"
                          f"{' (reordered)' if held['reordered'] else ''}" for offered, held in tried)
        print(f"{name:26} {sat['mpps']:>14.3f} {sat['mpps'] / fwd:>10.2f} | {steps}")
    print(f"{'ixy-fwd, one process':26} {fwd:>14.3f} {1.0:>10.2f} |")


if __name__ == "__main__":
    main()
