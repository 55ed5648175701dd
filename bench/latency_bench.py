"""Round-trip latency through ixypipe's bridge-veth pipeline beside a Linux bridge, DPDK and the wake-up floor.

One run builds a testbed (host A and host B in namespaces of their own, each
joined by a veth pair to this namespace; see ixypipe.ops.netns) and measures,
on the same two outer veth ends, one after the other (``--rounds`` times):

* ``linux bridge``: the kernel's Linux bridge enslaving the two ends;
* ``dpdk testpmd``: DPDK's testpmd in io forwarding over its AF_PACKET PMD on
  the two ends (``dpdk-testpmd``, Debian: apt-get install -y dpdk-dev; a row
  says so when it is missing), the reference for a user-space data plane on
  the same kernel interfaces;
* ``wake floor``: no network, the native wake-up floor (bench/wake_floor.c,
  built with the system C compiler): a token handed round 7 processes that
  each block in a futex, as many rounds as pings and as far apart: a ping
  through bridge-veth wakes 7 sleepers (ping, then RX, worker, TX each way),
  so no pipeline of sleeping processes gets below bridge + this here; its
  ``one hop`` line is a single wake-up;
* ``python floor``: five Python processes that hand a lone frame on with the
  least work any Python stage pipeline must do (bench/python_floor.py; low
  rate only: it holds one frame per direction);
* ``ixypipe ...``: ``ixypipe run`` with pipelines/bridge-veth.toml (AF_PACKET
  ports, RX / worker / TX processes) in each idle mode asked for
  (``default``: the file as it is; ``wake``: consumers sleep on semaphores,
  RX blocks in poll(); ``nap``: every idle stage naps; ``spin``: nobody
  sleeps).

For each: ping RTT percentiles at a low rate (``--pings`` pings, 20 ms apart),
at a high rate (the same pings while host A floods host B with UDP from
iperf3 at ``--load-mbit``), iperf3 TCP throughput A to B over
``--tcp-seconds``, and for the pipelines the CPU time all of its processes
used while idle (no traffic) over ``--idle-seconds``, as a share of one CPU.
Then, per round, the ratios issue #25's targets are stated in: each ixypipe
row's ping p50 over (bridge p50 + wake floor p50), and over testpmd's p50.

Then the same pipelines between the software 82599's ports
(``sim ports idle=<mode>``: pipelines/fwd.toml with its generators
at ``--sim-rates``): one-way latency from p0's generator to p1's sink, on
the model's clock (ixypipe.sim.latency: one frame sampled per batch the sink
receives).  It includes the model's own polling, which a NIC does not add.

Every figure is from the same run on the same machine, so read them side by
side; other load on the machine moves them all (medians and p90 are the
figures to compare: this machine has multi-ms outliers).

    python3 bench/latency_bench.py [--modes default,spin] [--pings 200] [--rounds 1] [--json]
    python3 bench/latency_bench.py --pings 50 --load-mbit 0 --tcp-seconds 2 --idle-seconds 2 --sim-rates ''
                                                                                # about a minute

Needs root, iputils-ping, iperf3 and ethtool (apt-get install iputils-ping iperf3 ethtool) and a C compiler.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from ixypipe.pipeline.keys import IDLE_MODES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from python_floor import PythonFloor  # noqa: E402  (bench/ is not a package)
from wake_floor import NoCompiler, wake_floor  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BRIDGE_VETH = REPO / "pipelines" / "bridge-veth.toml"
FWD = REPO / "pipelines" / "fwd.toml"
SIM_SECONDS = 5.0
PING_INTERVAL = 0.02
START_TIMEOUT = 60.0
RTT_RE = re.compile(r"time=([\d.]+) ms")
TESTPMD = "dpdk-testpmd"
TESTPMD_INSTALL = "apt-get install -y dpdk-dev"
WAKE_PROCESSES = 7              # the sleepers a ping through bridge-veth wakes: ping, RX, worker, TX each way
BRIDGE, TESTPMD_ROW, WAKE_ROW = "linux bridge", "dpdk testpmd", f"wake floor ({WAKE_PROCESSES} proc)"
DEFAULT_MODE = "default"        # bridge-veth.toml's idle as it is
# a Python worker that parses headers (batch.l4) on every batch: issue #25's second latency target (<= 2x)
PYTHON_WORKER = f"{REPO / 'examples' / 'dns_guard.py'}:dns_guard"
PYTHON_WORKER_ROW = "ixypipe + Python worker"
REPLY_AFTER = 0.00015           # seconds from a ping's request leaving the worker to its reply reaching it
WORKER_ALONE_ROW = "its function alone"       # bench/worker_cold.py: two cold calls per ping, nothing else
FLOOR_TARGET = {PYTHON_WORKER_ROW: 2.0}         # else 1.5


def ping_rtts(tb: VethTestbed, count: int) -> np.ndarray:
    """RTTs in ms of ``count`` pings from host A to host B (lost ones left out)."""
    res = tb.a.run(["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL), "-W", "1", tb.b.ip],
                   timeout=count * PING_INTERVAL + 30, check=False)
    return np.array([float(m) for m in RTT_RE.findall(res.stdout)])


@contextlib.contextmanager
def iperf3_server(tb: VethTestbed):
    """A one-shot iperf3 server on host B for the duration of the block."""
    server = tb.b.popen(["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        yield server
    finally:
        server.kill()
        server.wait()


def with_load(tb: VethTestbed, mbit: int, count: int) -> np.ndarray:
    """Ping while iperf3 sends UDP from A to B at ``mbit`` Mbit/s."""
    seconds = int(count * PING_INTERVAL + 3)
    with iperf3_server(tb):
        client = tb.a.popen(["iperf3", "-c", tb.b.ip, "-u", "-b", f"{mbit}M", "-t", str(seconds), "-l", "1400"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            return ping_rtts(tb, count)
        finally:
            client.kill()
            client.wait()


def tcp_gbit(tb: VethTestbed, seconds: int) -> float | None:
    """iperf3 TCP from A to B for ``seconds``: Gbit/s the receiver got (None when iperf3 failed)."""
    with iperf3_server(tb):
        res = tb.a.run(["iperf3", "-c", tb.b.ip, "-t", str(seconds), "-J"], timeout=seconds + 30, check=False)
    try:
        return round(json.loads(res.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9, 3)
    except (ValueError, KeyError):
        return None


def percentiles(rtts: np.ndarray, sent: int) -> dict:
    if len(rtts) == 0:
        return {"sent": sent, "received": 0}
    p50, p90, p99 = np.percentile(rtts, [50, 90, 99])
    return {"sent": sent, "received": len(rtts), "avg_ms": round(float(rtts.mean()), 4),
            "p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "max_ms": round(float(rtts.max()), 4)}


def wait_reachable(tb: VethTestbed, proc: subprocess.Popen, what: str, log: Path) -> None:
    """Ping until host B answers through ``proc``'s forwarding; SystemExit with its log when it dies or never does."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        if tb.a.run(["ping", "-n", "-c", "1", "-W", "1", tb.b.ip], check=False).returncode == 0:
            return
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    raise SystemExit(f"{what} did not forward within {START_TIMEOUT:g} s (exit {proc.returncode}): "
                     f"{log.read_text()[-2000:]}")


def testpmd_argv(a: str, b: str) -> list[str]:
    """Issue #25's testpmd: io forwarding between interfaces ``a`` and ``b`` over DPDK's AF_PACKET PMD."""
    return [TESTPMD, "-l", "0,1", "--no-huge", "-m", "1024", "--no-pci", f"--file-prefix=ixybench{os.getpid()}",
            f"--vdev=net_af_packet0,iface={a}", f"--vdev=net_af_packet1,iface={b}",
            "--", "--forward-mode=io", "--auto-start", "--total-num-mbufs=16384"]


class Testpmd:
    """dpdk-testpmd forwarding between the testbed's ends until ``stop``; its output goes to ``log``."""

    def __init__(self, tb: VethTestbed, log: Path):
        self.log = log
        with log.open("w") as out:     # stdin stays open: without -i testpmd forwards until enter or SIGINT
            self.proc = subprocess.Popen(testpmd_argv(tb.port_a, tb.port_b), stdin=subprocess.PIPE,
                                         stdout=out, stderr=subprocess.STDOUT)
        wait_reachable(tb, self.proc, TESTPMD, log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


class Pipeline:
    """``ixypipe run`` of bridge-veth.toml on the testbed's ends in one idle mode ("default": the file's)."""

    def __init__(self, tb: VethTestbed, mode: str, tmp: Path, worker: str | None = None):
        text = BRIDGE_VETH.read_text()
        if worker is not None:
            text = text.replace('function = "forward"', f'function = "{worker}"', 1)
        text = text.replace('interface = "veth-a"', f'interface = "{tb.port_a}"')
        text = text.replace('interface = "veth-b"', f'interface = "{tb.port_b}"')
        if mode != DEFAULT_MODE:
            text = text.replace("[pipeline]\n", f'[pipeline]\nidle = "{mode}"\n', 1)
        path = tmp / f"bridge-veth-{mode}{'-worker' if worker else ''}.toml"
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


def pipeline_row(mode: str) -> str:
    return "ixypipe default idle" if mode == DEFAULT_MODE else f"ixypipe idle={mode}"


def measure(tb: VethTestbed, pings: int, load_mbit: int, tcp_seconds: int) -> dict:
    """Low rate; high rate unless ``load_mbit`` is 0; TCP throughput unless ``tcp_seconds`` is 0."""
    tb.a.run(["ping", "-n", "-c", "3", "-i", "0.1", "-W", "1", tb.b.ip], check=False)   # ARP, warm caches
    got = {"low_rate": percentiles(ping_rtts(tb, pings), pings)}
    if load_mbit:
        got["high_rate"] = percentiles(with_load(tb, load_mbit, pings), pings)
    if tcp_seconds:
        got["tcp_gbit"] = tcp_gbit(tb, tcp_seconds)
    return got


def measure_wake_floor(pings: int) -> dict:
    """The wake floor with as many rounds as pings, as far apart: round trips as "low_rate", single hops as "hop"."""
    try:
        trips, hops = wake_floor(WAKE_PROCESSES, pings, PING_INTERVAL)
    except NoCompiler as e:
        return {"missing": str(e)}
    return {"low_rate": percentiles(trips, pings), "hop": percentiles(hops, len(hops))}


def one_round(tb: VethTestbed, modes: list[str], pings: int, load_mbit: int, tcp_seconds: int,
              idle_seconds: float, floor: bool, testpmd: bool, tmp: Path, python_worker: bool = False) -> dict:
    """Every row once, in order, on the same testbed."""
    rows = {}
    tb.add_bridge()
    try:
        rows[BRIDGE] = measure(tb, pings, load_mbit, tcp_seconds)
    finally:
        tb.remove_bridge()
    if testpmd:
        if shutil.which(TESTPMD) is None:
            rows[TESTPMD_ROW] = {"missing": f"{TESTPMD} is not installed ({TESTPMD_INSTALL})"}
        else:
            t = Testpmd(tb, tmp / "testpmd.log")
            try:
                rows[TESTPMD_ROW] = measure(tb, pings, load_mbit, tcp_seconds)
            finally:
                t.stop()
    rows[WAKE_ROW] = measure_wake_floor(pings)
    if floor:
        f = PythonFloor(tb.port_a, tb.port_b)
        try:
            rows["python floor"] = measure(tb, pings, 0, 0)
        finally:
            f.close()
    for mode in modes:
        p = Pipeline(tb, mode, tmp)
        try:
            rows[pipeline_row(mode)] = measure(tb, pings, load_mbit, tcp_seconds)
            if idle_seconds:
                time.sleep(1.0)
                rows[pipeline_row(mode)]["idle_cpu"] = round(p.idle_cpu(idle_seconds), 4)
        finally:
            p.stop()
    if python_worker:                      # the file's idle mode, the worker parsing every batch's headers
        p = Pipeline(tb, DEFAULT_MODE, tmp, PYTHON_WORKER)
        try:
            rows[PYTHON_WORKER_ROW] = measure(tb, pings, 0, 0)
        finally:
            p.stop()
        rows[WORKER_ALONE_ROW] = worker_alone(pings)
    return rows


def worker_alone(pings: int) -> dict:
    """The Python worker's function alone as a ping meets it (bench/worker_cold.py in its own process): a
    one-frame batch 20 ms after the last and its reply REPLY_AFTER later; "low_rate" is per pair."""
    res = subprocess.run([sys.executable, str(REPO / "bench" / "worker_cold.py"), PYTHON_WORKER,
                          "--calls", str(2 * pings), "--interval", str(PING_INTERVAL), "--reply-after", str(REPLY_AFTER),
                          "--json"],
                         capture_output=True, text=True, timeout=pings * PING_INTERVAL + 120, cwd=REPO)
    if res.returncode:
        return {"missing": f"bench/worker_cold.py failed: {res.stderr.strip()[-300:]}"}
    calls = np.array(json.loads(res.stdout))
    return {"low_rate": percentiles(calls[0::2] + calls[1::2], pings)}


def target_ratios(rows: dict) -> dict:
    """Each ixypipe row's low-rate ping p50 over (bridge p50 + wake floor p50) and over testpmd's p50."""
    def p50(name: str) -> float | None:
        return rows.get(name, {}).get("low_rate", {}).get("p50_ms")

    bridge, floor, testpmd = p50(BRIDGE), p50(WAKE_ROW), p50(TESTPMD_ROW)
    out = {}
    for name in rows:
        mine = p50(name) if name.startswith("ixypipe") else None
        if mine is None:
            continue
        out[name] = {"p50_ms": mine, "target": FLOOR_TARGET.get(name, 1.5),
                     "x_bridge_plus_floor": round(mine / (bridge + floor), 2) if bridge and floor else None,
                     "x_testpmd": round(mine / testpmd, 2) if testpmd else None}
    alone = p50(WORKER_ALONE_ROW)
    if PYTHON_WORKER_ROW in out and alone and bridge and floor:     # what is left once the function's own cost is
        left = out[PYTHON_WORKER_ROW]["p50_ms"] - alone             # taken out: ixypipe's part of the Python row
        out[PYTHON_WORKER_ROW]["function_alone_ms"] = alone
        out[PYTHON_WORKER_ROW]["x_bridge_plus_floor_less_function"] = round(left / (bridge + floor), 2)
    return out


def sim_latency(mode: str, rate_mpps: float, tmp: Path) -> dict:
    """fwd.toml on the software ports, both generators at ``rate_mpps``: the latency p1's sink sampled, in ms."""
    text = re.sub(r"^rate_mpps = [\d.]+", f"rate_mpps = {rate_mpps}", FWD.read_text(), flags=re.M)
    if mode != DEFAULT_MODE:
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


LINES = {"low_rate": "ping", "high_rate": "ping+udp", "hop": "one hop"}


def print_round(rows: dict, ratios: dict, load_mbit: int) -> None:
    print(f"{'path':<24} {'what':<9} {'p50 ms':>8} {'p90':>8} {'avg':>8} {'max':>8} {'p99':>8} "
          f"{'lost':>5} {'TCP Gb/s':>9} {'idle CPU':>9}")
    for name, r in rows.items():
        if "missing" in r:
            print(f"{name:<24} not measured: {r['missing']}")
            continue
        for key, label in LINES.items():
            if key not in r:
                continue
            m = r[key]
            if not m.get("received"):
                print(f"{name:<24} {label:<9} every ping lost")
                continue
            if name == WAKE_ROW and key == "low_rate":
                label = f"{WAKE_PROCESSES} wakes"
            tcp = r.get("tcp_gbit") if key == "low_rate" else None
            tcp_text = "" if tcp is None else f"{tcp:.2f}"
            idle = f"{r['idle_cpu'] * 100:.1f}%" if "idle_cpu" in r and key == "low_rate" else ""
            print(f"{name:<24} {label:<9} {m['p50_ms']:>8.3f} {m['p90_ms']:>8.3f} {m['avg_ms']:>8.3f} "
                  f"{m['max_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['sent'] - m['received']:>5} {tcp_text:>9} {idle:>9}")
    for name, q in ratios.items():
        floor = "n/a" if q["x_bridge_plus_floor"] is None else f"{q['x_bridge_plus_floor']:.2f}"
        testpmd = "n/a" if q["x_testpmd"] is None else f"{q['x_testpmd']:.2f}"
        print(f"{name}: ping p50 {q['p50_ms']:.3f} ms = {floor} x (bridge p50 + wake floor p50) "
              f"(target <= {q['target']:g}), {testpmd} x testpmd p50")
        if "function_alone_ms" in q:
            print(f"{name}: less its function's own two cold calls (p50 {q['function_alone_ms']:.3f} ms, "
                  f"bench/worker_cold.py): {q['x_bridge_plus_floor_less_function']:.2f} x (bridge + wake floor)")
    if load_mbit:
        print(f"ping+udp: pings while iperf3 sends {load_mbit} Mbit/s of UDP A->B")
    print("wake floor: a token round 7 futex sleepers, no network (bench/wake_floor.c); "
          "idle CPU: all processes of the pipeline with no traffic, share of one CPU")


@click.command()
@click.option("--modes", default=f"{DEFAULT_MODE},spin", show_default=True,
              help=f"idle modes of the pipeline to measure: {DEFAULT_MODE} (the file's) or {', '.join(IDLE_MODES)}")
@click.option("--pings", default=200, show_default=True, help="pings per measurement (20 ms apart)")
@click.option("--rounds", default=1, show_default=True, help="times every row is measured, in turn")
@click.option("--load-mbit", default=200, show_default=True, help="UDP load beside the pings at the high rate; 0 skips")
@click.option("--tcp-seconds", default=5, show_default=True, help="iperf3 TCP throughput A->B; 0 skips")
@click.option("--idle-seconds", default=5.0, show_default=True, help="how long idle CPU is measured; 0 skips")
@click.option("--floor/--no-floor", default=True, show_default=True,
              help="measure the Python floor (bench/python_floor.py) beside the pipeline")
@click.option("--testpmd/--no-testpmd", default=True, show_default=True,
              help=f"measure DPDK testpmd (when {TESTPMD} is installed)")
@click.option("--sim-rates", default="0.001,0.3", show_default=True,
              help="generator rates (Mpps per port) for the latency between software 82599 ports; '' skips it")
@click.option("--python-worker/--no-python-worker", default=True, show_default=True,
              help="also measure pings with a Python worker that parses headers (examples/dns_guard.py)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object instead of a table")
def main(modes: str, pings: int, rounds: int, load_mbit: int, tcp_seconds: int, idle_seconds: float, floor: bool,
         testpmd: bool, sim_rates: str, python_worker: bool, as_json: bool) -> None:
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for m in mode_list:
        if m != DEFAULT_MODE and m not in IDLE_MODES:
            raise click.BadParameter(f"{m!r} is not an idle mode ({DEFAULT_MODE}, {', '.join(IDLE_MODES)})",
                                     param_hint="--modes")
    if pings < 1 or rounds < 1:
        raise click.BadParameter("--pings and --rounds must be at least 1")
    for tool in ("ping", "iperf3", "ethtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install iputils-ping iperf3 ethtool")
    measured = []
    with VethTestbed() as tb, tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            rows = one_round(tb, mode_list, pings, load_mbit, tcp_seconds, idle_seconds, floor, testpmd, Path(tmp),
                             python_worker)
            measured.append({"rows": rows, "ratios": target_ratios(rows)})
        sim = {f"sim ports idle={mode}": [sim_latency(mode, float(r), Path(tmp)) for r in sim_rates.split(",")
                                          if r.strip()]
               for mode in mode_list} if sim_rates.strip() else {}
    if as_json:
        print(json.dumps({"rounds": measured, "sim_one_way": sim}))
        return
    for i, r in enumerate(measured):
        if rounds > 1:
            print(f"\nround {i + 1} of {rounds}")
        print_round(r["rows"], r["ratios"], load_mbit)
    if sim:
        print(f"\n{'one way, sim ports':<24} {'Mpps/port':>9} {'p50 ms':>8} {'p90':>8} {'p99':>8} {'max':>8} "
              f"{'samples':>8}")
        for name, rows in sim.items():
            for m in rows:
                print(f"{name:<24} {m['rate_mpps']:>9g} {m['p50_ms']:>8.3f} {m['p90_ms']:>8.3f} {m['p99_ms']:>8.3f} "
                      f"{m['max_ms']:>8.3f} {m['samples']:>8,}")
        print("sim ports: pipelines/fwd.toml, both directions at the rate; p0's generator to p1's sink, "
              "one frame sampled per batch the sink received")


if __name__ == "__main__":
    main()
