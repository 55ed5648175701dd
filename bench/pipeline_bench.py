"""End-to-end Mpps of the multi-process pipeline and the CPU each process spends per forwarded packet.

All runs use pipelines/fwd.toml's set-up: two software 82599 ports driven by
the ixgbe driver, traffic both ways, every packet touched and verified by
the sinks.

1. Saturation (always): ``ixypipe run`` with both generators at rate 0 (they
   fill whatever RX descriptors are free, so nothing is lost by
   construction), 1 and 2 workers, at each batch size of ``--batches``
   (rings and mempools sized to it).  While it runs, every process of the
   pipeline (the model ``ixypipe-sim``, each stage, the supervisor) is sampled
   with psutil at each stats line; CPU ns per forwarded packet is each
   process's CPU time between the first sample after the warm-up and the
   last one, over the packets forwarded (both directions) in between.  That
   figure is stable on a shared machine; the wall Mpps beside it is not.
   Then, per worker count, the CPU per packet of each stage (RX, TX,
   worker: all processes of the stage over every forwarded packet, since
   each packet passes one of each) at every batch size, and the ratio of
   the smallest batch's figure to the largest's; then a sizing table: what
   the stages cost per packet and so in cores per Mpps, for a worker whose
   own function costs ``--worker-costs`` ns per packet on top of the
   built-in touch worker's (``--markdown``: that table as markdown).
2. ``--lossless``: the same pipeline with generators fixed at 90 %, 75 %,
   60 % and 50 % of the saturated rate until a run whose NICs miss nothing
   after the first second; the sinks must see every packet in order.
3. ``--ixy-fwd``: ixy-fwd (ixypipe.ops.forwarder.Forwarder) in one process, model in another.
4. ``--capture rx|tx|both``: each saturated run again with ``ixypipe capture`` of port p0 in that
   direction running beside it from the first stats line to the end (into a temporary file): the CPU
   per packet of p0's capturing stages against p1's and against the run without, and what the capture
   wrote and dropped.

    python3 bench/pipeline_bench.py [--seconds 6] [--batches 32,256,2048] [--workers 1,2] [--lossless] [--ixy-fwd]
                                    [--worker-costs 0,100,500,1000] [--markdown]
    python3 bench/pipeline_bench.py --seconds 3 --workers 1         # about a minute
    python3 bench/pipeline_bench.py --seconds 5 --workers 1 --batches 32 --capture both
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
ROLES = ("rx", "tx", "worker")
ROLE_RE = re.compile(r"^(?:ixy-)?(rx|tx|worker)-")   # stage names (rx-p0-q0) and their processes' (ixy-rx-p0-q0)


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


def saturated(workers: int, batch: int, seconds: float, capture: str | None = None) -> dict:
    """One saturated ``ixypipe run`` in a subprocess; CPU per forwarded packet of each of its processes.
    ``capture``: a direction of port p0 that ``ixypipe capture`` copies meanwhile (its own CPU not counted)."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", dir=FWD.parent, prefix=".bench-") as f:
        f.write(pipeline_text(workers, batch, 0.0))
        f.flush()
        env = dict(os.environ, PYTHONPATH=str(REPO))
        proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", f.name, "--duration",
                                 str(seconds + WARMUP_LINES + STARTUP_SECONDS), "--json"], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        root = psutil.Process(proc.pid)
        samples, forwarded, batches, summary = [], [], [], None
        capturing, captured = None, None
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
            if capture and capturing is None and forwarded[-1] > 0:
                out = tempfile.NamedTemporaryFile(suffix=".pcap", prefix="ixypipe-bench-")   # noqa: SIM115
                capturing = (out, subprocess.Popen(
                    [sys.executable, "-m", "ixypipe", "capture", str(proc.pid), "-p", "p0", "--direction",
                     capture, "-w", out.name, "--json"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, text=True))
        proc.wait()
        if capturing is not None:
            out, cap = capturing
            text, _ = cap.communicate(timeout=120)          # it ends with the pipeline
            captured = next((json.loads(x) for x in text.splitlines() if x.startswith("{")), None)
            out.close()
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
            "ok": proc.returncode == 0 and summary is not None and summary["ok"], "capture": captured,
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


def stage_ns(ns: dict[str, float]) -> dict[str, float]:
    """CPU ns per forwarded packet of each stage role: the sum over its processes (each packet passes one)."""
    out: dict[str, float] = {}
    for name, v in ns.items():
        m = ROLE_RE.match(name)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + v
    return out


def cores_per_mpps(stages: dict[str, float], worker_cost_ns: float) -> float:
    """CPUs a pipeline needs per Mpps: every packet costs each stage's ns plus the worker's own function."""
    return (sum(stages.get(role, 0.0) for role in ROLES) + worker_cost_ns) / 1e3


def print_run(workers: int, batch: int, r: dict) -> None:
    model = sum(ns for name, ns in r["ns"].items() if name.startswith("ixypipe-sim"))
    total = sum(r["ns"].values())
    stages = ", ".join(f"{name} {ns:.0f}" for name, ns in sorted(r["ns"].items()) if ns >= 1)
    print(f"  batch {batch}, {workers} worker{'s' if workers > 1 else ''}: {r['mpps']:.3f} Mpps wall, "
          f"{r['packets']:,} packets; CPU ns/packet: all {total:.0f} (= {1e3 / total if total else 0:.2f} Mpps "
          f"per CPU), model {model:.0f}{'' if r['ok'] else ', NOT OK: ' + '; '.join(map(str, r['problems']))}")
    print(f"      {stages}")
    roles = [name.split("-")[0] for name in r["batches"]]      # the packets are shared by the stages of a role
    per_batch = ", ".join(f"{name} {r['packets'] / roles.count(name.split('-')[0]) / n:.0f}"
                          for name, n in sorted(r["batches"].items()) if n)
    print(f"      packets per batch: {per_batch}")
    print(f"      sinks: {r['sink']}")


def print_capture(direction: str, batch: int, plain: dict, mirrored: dict) -> None:
    """p0's RX/TX stage CPU per forwarded packet without and with a capture of p0 (``direction``); p1's
    stages beside them as the control."""
    c = mirrored["capture"] or {}
    print(f"  batch {batch}, capture of p0 {direction}: {c.get('captured', 0):,} frames written, "
          f"{c.get('dropped', 0):,} copies dropped (mirror ring full), stopped: {c.get('stop_reason', '?')}; "
          f"{plain['mpps']:.3f} -> {mirrored['mpps']:.3f} Mpps wall")
    for name in sorted(n for n in plain["ns"] if ROLE_RE.match(n) and not n.startswith(("worker", "ixy-worker"))):
        print(f"      {name:<16} CPU ns/packet {plain['ns'][name]:7.1f} without, "
              f"{mirrored['ns'].get(name, 0.0):7.1f} with the capture")


def fmt_ns(stages: dict[str, float], role: str) -> str:
    return f"{stages[role]:.0f}" if role in stages else "-"


def print_stages(workers: int, runs: dict[int, dict]) -> None:
    """Per-stage CPU ns per packet at each batch size beside the wall rate; smallest batch over largest."""
    print(f"\nstage CPU ns per forwarded packet, {workers} worker{'s' if workers > 1 else ''} "
          "(all processes of a stage, from their own CPU clocks):")
    print(f"  {'batch':>6} {'Mpps wall':>10} {'RX':>7} {'TX':>7} {'worker':>7} {'stages':>7}")
    for batch, r in sorted(runs.items()):
        st = stage_ns(r["ns"])
        print(f"  {batch:>6} {r['mpps']:>10.3f} {fmt_ns(st, 'rx'):>7} {fmt_ns(st, 'tx'):>7} "
              f"{fmt_ns(st, 'worker'):>7} {sum(st.values()):>7.0f}")
    if len(runs) > 1:
        small, large = min(runs), max(runs)
        a, b = stage_ns(runs[small]["ns"]), stage_ns(runs[large]["ns"])
        ratios = ", ".join(f"{role.upper() if role != 'worker' else role} {a[role] / b[role]:.2f}"
                           for role in ROLES if a.get(role) and b.get(role))
        print(f"  batch {small} / batch {large}: {ratios} (issue #25's target: <= 1.5 each)")


def sizing_rows(runs: dict[int, dict], costs: list[float]) -> tuple[list[str], list[list[str]]]:
    head = ["batch", "RX ns", "TX ns", "worker ns", *(f"cores/Mpps W={c:g}" for c in costs)]
    rows = []
    for batch, r in sorted(runs.items()):
        st = stage_ns(r["ns"])
        rows.append([str(batch), fmt_ns(st, "rx"), fmt_ns(st, "tx"), fmt_ns(st, "worker"),
                     *(f"{cores_per_mpps(st, c):.2f}" for c in costs)])
    return head, rows


def print_sizing(workers: int, runs: dict[int, dict], costs: list[float], markdown: bool) -> None:
    """CPU ns per packet per stage and cores per Mpps for a worker function costing each of ``costs``."""
    head, rows = sizing_rows(runs, costs)
    note = (f"CPU ns per packet of each stage (saturated fwd.toml, {workers} worker process running the built-in "
            "touch, software 82599 ports; the model's own CPU left out: a NIC does that work). W is what a worker "
            "function costs per packet on top of that: cores per Mpps = (RX + TX + worker + W) / 1000, and one "
            "worker process carries at most 1000 / (worker + W) Mpps (more worker processes spread that share).")
    if markdown:
        print(f"\n{note}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---:" for _ in head) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    print(f"\nsizing: {note}")
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--batches", default="32,256,2048",
                    help="batch sizes, each a saturated run with rings sized to it (0: fwd.toml's as it is)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--worker-costs", default="0,100,500,1000",
                    help="ns per packet of a worker function, for the sizing table's cores per Mpps")
    ap.add_argument("--markdown", action="store_true", help="print the sizing table as markdown")
    ap.add_argument("--lossless", action="store_true", help="also search the highest rate without NIC misses")
    ap.add_argument("--ixy-fwd", action="store_true", help="also run the single-process ixy-fwd")
    ap.add_argument("--capture", choices=("rx", "tx", "both"),
                    help="also each run with 'ixypipe capture' of p0 in this direction beside it")
    args = ap.parse_args()
    try:
        asked = [int(b) for b in args.batches.split(",")]
        worker_counts = [int(w) for w in args.workers.split(",")]
        costs = [float(c) for c in args.worker_costs.split(",")]
    except ValueError as e:
        ap.error(f"--batches, --workers and --worker-costs are comma-separated numbers: {e}")
    if any(b < 0 for b in asked) or any(w < 1 for w in worker_counts):
        ap.error("batch sizes must be >= 0 (0: fwd.toml's) and worker counts >= 1")
    default_batch = parse_pipeline(FWD.read_text(), FWD).batch_size
    print(f"pipelines/fwd.toml saturated, 60-byte frames, about {args.seconds:g} s measured "
          f"from {WARMUP_LINES} s after traffic starts; CPU ns per forwarded packet (both directions) per process")
    measured: dict[int, dict[int, dict]] = {}
    for workers in worker_counts:
        for asked_batch in asked:
            batch = asked_batch or default_batch
            r = saturated(workers, asked_batch, args.seconds)
            measured.setdefault(workers, {})[batch] = r
            print_run(workers, batch, r)
            if args.capture:
                print_capture(args.capture, batch, r, saturated(workers, asked_batch, args.seconds, args.capture))
            if args.lossless:
                tried = []
                for share in LOSSLESS_STEPS:
                    rate = round(r["mpps"] * share / 2, 3)          # per port: both ports generate
                    held = run_pipeline(workers, asked_batch, rate, args.seconds)
                    tried.append(f"{rate * 2:.3f}: {held['missed']:,}"
                                 f"{'' if held['ok'] else ' (accounting BROKEN)'}"
                                 f"{' (reordered)' if held['reordered'] else ''}")
                    if held["missed"] == 0:
                        break
                print(f"      offered Mpps: NIC misses after the first second: {', '.join(tried)}")
    for workers, runs in measured.items():
        print_stages(workers, runs)
    first = worker_counts[0]
    print_sizing(first, measured[first], costs, args.markdown)
    if args.ixy_fwd:
        sys.path.insert(0, str(Path(__file__).parent))
        from driver_bench import forwarder_mpps

        batches = sorted({b or default_batch for b in asked})
        fwd = forwarder_mpps(batches, args.seconds, "auto", None)
        for batch in batches:
            print(f"  ixy-fwd, one process, batch {batch}: {fwd[batch]:.3f} Mpps wall")


if __name__ == "__main__":
    main()
