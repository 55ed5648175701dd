"""Round-trip latency through ixypipe's bridge-veth pipeline beside a Linux bridge, and what an idle pipeline costs.

One run builds a testbed (host A and host B in namespaces of their own, each
joined by a veth pair to this namespace; see ixypipe.ops.netns) and measures,
on the same two outer veth ends, one after the other:

* ``bridge``: the kernel's Linux bridge enslaving the two ends;
* ``python floor``: five Python processes that hand a lone frame on with the
  least work any Python stage pipeline must do (bench/python_floor.py): no
  pipeline of Python stage processes gets below it on this machine (low rate
  only: it holds one frame per direction);
* ``ixypipe idle=<mode>``: ``ixypipe run`` with pipelines/bridge-veth.toml
  (AF_PACKET ports, RX / worker / TX processes) in each idle mode asked for
  (``wake``: consumers sleep on semaphores, RX blocks in poll(); ``nap``:
  every idle stage naps; ``spin``: nobody sleeps).

For each: ping RTT percentiles at a low rate (``--pings`` pings, 20 ms apart)
and at a high rate (the same pings while host A floods host B with UDP from
iperf3 at ``--load-mbit``), and for the pipelines the CPU time all of its
processes used while idle (no traffic) over ``--idle-seconds``, as a share of
one CPU.

Then the same pipelines between the software 82599's ports
(``sim ports idle=<mode>``: pipelines/fwd.toml with its generators
at ``--sim-rates``): one-way latency from p0's generator to p1's sink, on
the model's clock (ixypipe.sim.latency: one frame sampled per batch the sink
receives).  It includes the model's own polling, which a NIC does not add.

Every figure is from the same run on the same machine, so read them side by
side; other load on the machine moves them all.

    python3 bench/latency_bench.py [--modes wake,nap] [--pings 200] [--load-mbit 200] [--json]

Needs root, iputils-ping and iperf3 (apt-get install iputils-ping iperf3).
"""

from __future__ import annotations

import json
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np
import psutil

from ixypipe.ops.netns import VethTestbed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_floor import PythonFloor  # noqa: E402  (bench/ is not a package)

REPO = Path(__file__).resolve().parent.parent
BRIDGE_VETH = REPO / "pipelines" / "bridge-veth.toml"
FWD = REPO / "pipelines" / "fwd.toml"
SIM_SECONDS = 5.0
PING_INTERVAL = 0.02
START_TIMEOUT = 60.0
RTT_RE = re.compile(r"time=([\d.]+) ms")


def ping_rtts(tb: VethTestbed, count: int) -> np.ndarray:
    """RTTs in ms of ``count`` pings from host A to host B (lost ones left out)."""
    res = tb.a.run(["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "1", tb.b.ip],
                   timeout=count * PING_INTERVAL + 30, check=False)
    return np.array([float(m) for m in RTT_RE.findall(res.stdout)])


def with_load(tb: VethTestbed, mbit: int, count: int) -> np.ndarray:
    """Ping while iperf3 sends UDP from A to B at ``mbit`` Mbit/s."""
    server = tb.b.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    seconds = int(count * PING_INTERVAL + 3)
    client = tb.a.popen(["iperf3", "-c", tb.b.ip, "-u", "-b", f"{mbit}M", "-t", str(seconds), "-l", "1400"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        return ping_rtts(tb, count)
    finally:
        for p in (client, server):
            p.kill()
            p.wait()


def percentiles(rtts: np.ndarray, sent: int) -> dict:
    if len(rtts) == 0:
        return {"sent": sent, "received": 0}
    p50, p90, p99 = np.percentile(rtts, [50, 90, 99])
    return {"sent": sent, "received": len(rtts), "avg_ms": round(float(rtts.mean()), 4),
            "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "max_ms": round(float(rtts.max()), 4)}


class Pipeline:
    """``ixypipe run`` of bridge-veth.toml on the testbed's ends in one idle mode."""

    def __init__(self, tb: VethTestbed, mode: str, tmp: Path):
        text = BRIDGE_VETH.read_text()
        text = text.replace('interface = "veth-a"', f'interface = "{tb.port_a}"')
        text = text.replace('interface = "veth-b"', f'interface = "{tb.port_b}"')
        text = text.replace("[pipeline]\n", f'[pipeline]\nidle = "{mode}"\n', 1)
        path = tmp / f"bridge-veth-{mode}.toml"
        path.write_text(text)
        self.proc = subprocess.Popen([sys.executable, "-m", "ixypipe", "run", str(path), "--json"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready and self.proc.stdout.readline().startswith("{"):
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise SystemExit(f"ixypipe did not start: {self.proc.stderr.read()}")

    def processes(self) -> list[psutil.Process]:
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def idle_cpu(self, seconds: float) -> float:
        """CPU seconds per second (1.0 = one whole CPU) all processes of the pipeline used with no traffic."""
        procs = self.processes()
        before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        time.sleep(seconds)
        after = sum(p.cpu_times().user + p.cpu_times().system for p in procs if p.is_running())
        return (after - before) / seconds

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def measure(tb: VethTestbed, pings: int, load_mbit: int | None) -> dict:
    """Low rate, and high rate unless ``load_mbit`` is None."""
    tb.a.run(["ping", "-n", "-c", "3", "-i", "0.1", "-W", "1", tb.b.ip], check=False)   # ARP, warm caches
    got = {"low_rate": percentiles(ping_rtts(tb, pings), pings)}
    if load_mbit is not None:
        got["high_rate"] = percentiles(with_load(tb, load_mbit, pings), pings)
    return got


def sim_latency(mode: str, rate_mpps: float, tmp: Path) -> dict:
    """fwd.toml on the software ports, both generators at ``rate_mpps``: the latency p1's sink sampled, in ms."""
    text = re.sub(r"^rate_mpps = [\d.]+", f"rate_mpps = {rate_mpps}", FWD.read_text(), flags=re.M)
    text = text.replace("[pipeline]\n", f'[pipeline]\nidle = "{mode}"\n', 1)
    path = tmp / f"fwd-{mode}-{rate_mpps}.toml"
    path.write_text(text)
    res = subprocess.run([sys.executable, "-m", "ixypipe", "run", str(path), "--duration", str(SIM_SECONDS), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=SIM_SECONDS + 120)
    summaries = [d for d in (json.loads(line) for line in res.stdout.splitlines() if line.startswith("{"))
                 if d["type"] == "summary"]
    if res.returncode != 0 or not summaries:
        raise SystemExit(f"ixypipe run {path.name} failed: {res.stderr[-2000:]}")
    c = summaries[-1]["sim"]["p1"]
    ms = {q: round(c[f"sink_latency_{q}_ns"] / 1e6, 4) for q in ("p50", "p90", "p99", "max")}
    return {"rate_mpps": rate_mpps, "samples": c["sink_latency_samples"], "received": c["sink_received"],
            **{f"{q}_ms": v for q, v in ms.items()}}


@click.command()
@click.option("--modes", default="wake,nap", show_default=True, help="idle modes of the pipeline to measure")
@click.option("--pings", default=200, show_default=True, help="pings per measurement (20 ms apart)")
@click.option("--load-mbit", default=200, show_default=True, help="UDP load beside the pings at the high rate")
@click.option("--idle-seconds", default=5.0, show_default=True, help="how long idle CPU is measured")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="measure the Python floor (bench/python_floor.py) beside the pipeline")
@click.option("--sim-rates", default="0.001,0.3", show_default=True,
              help="generator rates (Mpps per port) for the latency between software 82599 ports; '' skips it")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def main(modes: str, pings: int, load_mbit: int, idle_seconds: float, floor: bool, sim_rates: str,
         as_json: bool) -> None:
    for tool in ("ping", "iperf3", "ethtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install iputils-ping iperf3 ethtool")
    results = {}
    with VethTestbed() as tb, tempfile.TemporaryDirectory() as tmp:
        tb.add_bridge()
        results["linux bridge"] = measure(tb, pings, load_mbit)
        tb.remove_bridge()
        if floor:
            f = PythonFloor(tb.port_a, tb.port_b)
            try:
                results["python floor"] = measure(tb, pings, None)
            finally:
                f.close()
        for mode in modes.split(","):
            p = Pipeline(tb, mode, Path(tmp))
            try:
                results[f"ixypipe idle={mode}"] = measure(tb, pings, load_mbit)
                time.sleep(1.0)
                results[f"ixypipe idle={mode}"]["idle_cpu"] = round(p.idle_cpu(idle_seconds), 4)
            finally:
                p.stop()
        sim = {f"sim ports idle={mode}": [sim_latency(mode, float(r), Path(tmp)) for r in sim_rates.split(",")
                                                  if r.strip()]
               for mode in modes.split(",")} if sim_rates.strip() else {}
    if as_json:
        print(json.dumps({**results, "sim_one_way": sim}))
        return
    base = results["linux bridge"]["low_rate"].get("avg_ms")
    print(f"{'path':<22} {'rate':<9} {'avg ms':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} "
          f"{'lost':>5} {'x bridge':>9} {'idle CPU':>9}")
    for name, r in results.items():
        for rate in ("low_rate", "high_rate"):
            if rate not in r:
                continue
            m = r[rate]
            if not m.get("received"):
                print(f"{name:<22} {rate:<9} every ping lost")
                continue
            ratio = m["avg_ms"] / base if base else float("nan")
            idle = f"{r['idle_cpu'] * 100:.1f}%" if "idle_cpu" in r and rate == "low_rate" else ""
            print(f"{name:<22} {rate:<9} {m['avg_ms']:>8.3f} {m['p50_ms']:>8.3f} {m['p90_ms']:>8.3f} "
                  f"{m['p99_ms']:>8.3f} {m['max_ms']:>8.3f} {m['sent'] - m['received']:>5} {ratio:>9.1f} {idle:>9}")
    print(f"high rate: pings while iperf3 sends {load_mbit} Mbit/s of UDP A->B; "
          "idle CPU: all processes of the pipeline with no traffic, share of one CPU")
    if sim:
        print(f"\n{'one way, sim ports':<22} {'Mpps/port':>9} {'p50 ms':>8} {'p90':>8} {'p99':>8} {'max':>8} {'samples':>8}")
        for name, rows in sim.items():
            for m in rows:
                print(f"{name:<22} {m['rate_mpps']:>9g} {m['p50_ms']:>8.3f} {m['p90_ms']:>8.3f} {m['p99_ms']:>8.3f} "
                      f"{m['max_ms']:>8.3f} {m['samples']:>8,}")
        print("sim ports: pipelines/fwd.toml, both directions at the rate; p0's generator to p1's sink, "
              "one frame sampled per batch the sink received")


if __name__ == "__main__":
    main()
