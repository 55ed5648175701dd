"""End to end: ``ixypipe run`` on simulated 82599 ports, as a user runs it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.runs import (
    FWD,
    REPO,
    check_sinks,
    intervals_of,
    leftovers,
    run,
    start,
    summary_of,
    variant,
    wait_for_stats,
)


def test_fwd_runs_for_a_duration_and_accounts_for_every_packet():
    started = time.monotonic()
    res = run([str(FWD), "--duration", "3", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True
    assert s["received"] > 10_000
    assert s["in_flight"] == 0
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert s["buffers_free"] + s["buffers_in_nic"] == s["buffers_total"]
    # both directions forwarded: what p0 received went out of p1 and the other way round
    assert s["ports"]["p0"]["rx_packets"] > 0 and s["ports"]["p1"]["rx_packets"] > 0
    check_sinks(s)
    for name in ("p0", "p1"):      # each sink sampled the one-way latency from the other port's generator
        c = s["sim"][name]
        assert 0 < c["sink_latency_samples"] <= c["sink_received"]
        assert 0 < c["sink_latency_p50_ns"] <= c["sink_latency_p90_ns"] <= c["sink_latency_p99_ns"] \
            <= c["sink_latency_max_ns"]
    assert len(intervals_of(res.stdout)) >= 2
    assert time.monotonic() - started < 40


def test_run_from_a_directory_holding_another_ixypipe_imports_its_own(tmp_path):
    # the command run where another ixypipe lies in the working directory (a checkout beside an installed copy):
    # the stages' fork server, which starts there as `python -c`, must import the command's own package
    (tmp_path / "ixypipe").symlink_to(REPO / "ixypipe")        # the same code, found under another path
    command = f"import sys; sys.path.insert(0, {str(REPO)!r}); from ixypipe.cli import main; main(prog_name='ixypipe')"
    res = subprocess.run([sys.executable, "-c", command, "run", str(FWD), "--packets", "5000", "--json"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["received"] >= 5000 and s["in_flight"] == 0


def test_fwd_text_output_is_ixy_style():
    res = run([str(FWD), "--duration", "2"])
    assert res.returncode == 0, res.stderr
    rate = r"(\d+ pps|\d+\.\d kpps|\d+\.\d\d Mpps)"        # scaled: 850 pps, 12.3 kpps, 1.48 Mpps
    assert re.search(rf"^\[p0\] RX: \d+\.\d\d Mbit/s {rate}(  dropped: .*)?$", res.stdout, re.M), res.stdout
    assert re.search(rf"^\[p1\] TX: \d+\.\d\d Mbit/s {rate}$", res.stdout, re.M)
    assert "accounting OK" in res.stdout


def test_packets_option_stops_after_n_packets():
    res = run([str(FWD), "--packets", "20000", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["received"] >= 20_000
    check_sinks(s)


def test_two_workers_keep_each_flow_in_order(tmp_path):
    res = run([str(variant(tmp_path, processes="2")), "--duration", "3", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"]
    check_sinks(s)
    batches = {name: 0 for name in ("worker-0", "worker-1")}
    for interval in intervals_of(res.stdout):
        for name in batches:
            batches[name] += interval["stages"][name]["batches"]
    assert all(b > 0 for b in batches.values()), batches


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_accounting(sig):
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    s = summary_of(out)
    assert s["ok"] and s["in_flight"] == 0
    check_sinks(s)
    assert leftovers(proc.pid) == []


@pytest.mark.parametrize("stage", ["worker-0", "rx-p0-q0", "tx-p1-q0", "sim"])
def test_killed_stage_is_named_and_the_rest_stops_cleanly(stage):
    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        process_name = "ixypipe-sim" if stage == "sim" else f"ixy-{stage}"
        victims = [c for c in family if c.name() == process_name]
        assert len(victims) == 1, [c.name() for c in psutil.Process(proc.pid).children(recursive=True)]
        killed_at = time.monotonic()
        os.kill(victims[0].pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=40)
    finally:
        proc.kill()
    took = time.monotonic() - killed_at
    print(f"kill -9 of {stage}: pipeline stopped, accounted and cleaned up in {took:.2f} s")
    assert proc.returncode == 1
    what = "the software 82599" if stage == "sim" else f"stage {stage}"
    died = rf"{what} \(pid {victims[0].pid}\) died: killed by SIGKILL"
    assert re.search(died, err), err
    s = summary_of(out)
    assert s["ok"] is False and re.fullmatch(died, s["failures"][0]), s["failures"]
    assert not any("no progress" in f for f in s["failures"]), s["failures"]   # nobody killed for draining
    # whatever the dead stage held (or the dead NIC had posted) is counted once, not lost silently
    assert s["in_flight"] == 0
    if stage != "rx-p0-q0":      # its producers held buffers for it (an RX stage may die holding none)
        assert s["drops"]["stage_died"] > 0
    assert s["received"] == s["transmitted"] + sum(s["drops"].values())
    assert took < 30
    assert leftovers(proc.pid) == []
    _, alive = psutil.wait_procs(family, timeout=10)     # stages, simulator, resource tracker
    assert alive == []


def test_bad_pipeline_file_exits_2_naming_the_key(tmp_path):
    bad = variant(tmp_path, processes="0")
    res = run([str(bad)])
    assert res.returncode == 2
    assert "workers.processes" in res.stderr
    assert str(bad) in res.stderr or bad.name in res.stderr


def test_fallback_arena_without_hugepages_runs_on_the_software_ports(tmp_path):
    res = run([str(variant(tmp_path, hugepages='"never"')), "--duration", "2", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] and s["received"] > 1000
    check_sinks(s)


def test_count_sinks_are_checked_for_packets_and_bytes(tmp_path):
    """Sinks in mode "count" (here by the older spelling verify = false) take any traffic: the accounting
    checks that they got every transmitted packet and byte, and reports their sizes (60-byte frames: 64 on
    the wire with the FCS)."""
    path = variant(tmp_path, verify="false", expect_touch="false")
    text = path.read_text().replace("verify = false", 'mode = "count"', 1)     # both spellings, one meaning
    path.write_text(text)
    res = run([str(path), "--packets", "20000", "--json"])
    assert res.returncode == 0, res.stderr
    s = summary_of(res.stdout)
    assert s["ok"] is True and s["transmitted"] >= 20_000
    assert s["sink_modes"] == {"p0": "count", "p1": "count"}
    for port in ("p0", "p1"):
        sim, sent = s["sim"][port], s["ports"][port]
        assert sim["sink_received"] == sim["sink_size_64"] == sent["tx_packets"] > 0
        assert sim["sink_bytes"] == sent["tx_bytes"] == 60 * sent["tx_packets"]
        assert sum(v for k, v in sim.items() if k.startswith("sink_size_")) == sim["sink_received"]


def test_accounting_checks_a_count_sink_for_packets_and_bytes_never_for_content(tmp_path):
    import io

    from ixypipe.pipeline.config import parse_pipeline
    from ixypipe.pipeline.report import Accounting
    from ixypipe.sim.world import PortCounters
    cfg = parse_pipeline('[[ports]]\nname = "v"\ndriver = "sim"\nforward_to = "c"\n[ports.sink]\n'
                         '[[ports]]\nname = "c"\ndriver = "sim"\nforward_to = "v"\n[ports.sink]\nmode = "count"\n',
                         tmp_path / "two.toml")
    sent = {"v": {"tx_packets": 10, "tx_bytes": 600}, "c": {"tx_packets": 10, "tx_bytes": 1500}}
    # the count sink got frames no generator made: "corrupt" to a verifying sink, fine for a counting one
    sim = {"v": PortCounters(sink_received=10, sink_bytes=600, sink_corrupt=2, sink_latency_samples=4,
                             sink_latency_p50_ns=412_000, sink_latency_p90_ns=700_000, sink_latency_p99_ns=1_250_000,
                             sink_latency_max_ns=1_300_000),
           "c": PortCounters(sink_received=10, sink_bytes=1500, sink_corrupt=10, sink_size_64=4,
                             sink_size_128_255=6)}
    acc = Accounting(ports=sent, sim=sim)
    acc.check_sim(cfg)
    assert acc.problems == ["sink of v: 2 corrupt packets"]
    assert acc.sink_modes == {"v": "verify", "c": "count"}
    out = io.StringIO()
    acc.print(out, json_lines=False)
    lines = out.getvalue().splitlines()
    assert ("sim v: generated 0, missed at RX 0, sink received 10, lost 0, reordered 0, corrupt 2, untouched 0; "
            "latency p50 0.412 ms, p99 1.250 ms, max 1.300 ms (4 sampled)") in lines
    assert "sim c: generated 0, missed at RX 0, sink received 10, 1,500 bytes, sizes with FCS 64: 4 128-255: 6" \
        in lines
    sim["c"] = PortCounters(sink_received=9, sink_bytes=1400)
    acc = Accounting(ports=sent, sim=sim)
    acc.check_sim(cfg)
    assert acc.problems == ["sink of v: 2 corrupt packets",
                            "sink of c received 9 packets, the pipeline transmitted 10 on it",
                            "sink of c received 1400 bytes, the pipeline transmitted 1500 on it"]


def test_a_start_up_failure_prints_only_its_error_and_leaves_nothing(tmp_path):
    path = tmp_path / "missing-if.toml"
    path.write_text('[[ports]]\nname = "a"\ndriver = "af_packet"\ninterface = "ixynosuch0"\n'
                    '[[ports]]\nname = "b"\ndriver = "af_packet"\ninterface = "ixynosuch1"\n')
    proc = start([str(path), "--json"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "error: port a (af_packet ixynosuch0)" in err, err
    assert "accounting" not in out and '"summary"' not in out, out      # no accounting of a run that never ran
    assert leftovers(proc.pid) == []
