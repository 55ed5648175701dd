"""One JSON shape (issue 27, item 9): every command prints --json as JSON Lines that fit
docs/schema/ixypipe-output.schema.json, checked line by line with the jsonschema library.

Each command runs as a user types it, in the ways that need no hardware: software 82599 ports, pcap files,
``run --check``, the status commands; bind/unbind (a fake sysfs) are checked in tests/test_ops_devices.py and
``netns up``/``down`` (root, iproute2) in tests/test_netns_command.py with the same helper.
"""

from __future__ import annotations

import signal
import subprocess

import pytest

from ixypipe.cli import COMMANDS
from tests.support.outputschema import SCHEMA, VALIDATOR, problems, validated
from tests.support.runs import FWD, IXYPIPE, REPO, start, variant
from tests.support.system import needs_hugepages

CEILING = 180            # seconds: a generous ceiling for a command on a shared, busy machine

# command line (after "ixypipe", --json added) -> the object types it prints, in order ("interval*": any number)
STANDALONE = {
    "run-check": (["run", str(FWD), "--check"], ["check"]),
    "run-bad-file": (["run", "no-such-pipeline.toml"], ["error"]),
    "gen-pcap": (["gen", "--pcap", "{tmp}/gen.pcap", "--count", "50", "--flows", "4"], ["gen"]),
    "gen-sim": (["gen", "--sim", "--count", "500"], ["gen"]),
    "try": (["try", "touch", "{tmp}/try.pcap"], ["try"]),
    "cleanup": (["cleanup", "--dry-run", "--dir", "{tmp}"], ["cleanup"]),
    "hugepages": (["hugepages"], ["hugepages"]),
    "devices": (["devices"], ["devices"]),
    "cores": (["cores", str(FWD)], ["cores"]),
    "netns-status": (["netns", "status"], ["netns_status"]),
    "top-list": (["top", "--list"], ["pipelines"]),
    "sim-serve": (["sim", "serve", "--duration", "2", "--interval", "0.5", "--count", "100"],
                  ["sim_serve", "sim_interval+", "sim_summary"]),
    "fwd-sim": (["fwd", "--sim", "--duration", "2", "--rate", "20k"], ["fwd_interval+", "fwd_summary"]),
}
COVERED_ELSEWHERE = {"bind": "tests/test_ops_devices.py", "unbind": "tests/test_ops_devices.py",
                     "netns": "tests/test_netns_command.py (up, down)",
                     "capture": "tests/test_capture.py (beside a running pipeline)"}

COUNTING_WORKER = """\
def seen(batch):
    batch.data[batch.idx, 1] += 1          # what fwd.toml's sinks expect (touch)
    batch.count("seen", batch.n)
"""


def ixypipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *args], capture_output=True, text=True, timeout=CEILING, cwd=REPO)


def kinds_match(kinds: list[str], expected: list[str]) -> bool:
    """``kinds`` is ``expected`` with each "name+" standing for one or more of that type."""
    i = 0
    for want in expected:
        name, many = want.rstrip("+"), want.endswith("+")
        if i >= len(kinds) or kinds[i] != name:
            return False
        while many and i + 1 < len(kinds) and kinds[i + 1] == name:
            i += 1
        i += 1
    return i == len(kinds)


def test_the_schema_is_draft_2020_12_and_rejects_the_old_shapes():
    VALIDATOR.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert problems({"type": "error", "time": 1.5, "message": "x", "exit_code": 2}) == []
    assert problems({"message": "x", "exit_code": 2}) == ["(top): 'type' is a required property",
                                                         "(top): 'time' is a required property"]
    # before: "t" beside an ISO "time", top's ports as a list, the summary's "user_counters"
    interval = {"type": "interval", "time": "2026-12-07T03:00:00.000+00:00", "t": 1.0, "pipeline": "fwd",
                "ports": {}, "stages": {}, "counters": {}, "counter_rates": {}}
    found = problems(interval)
    assert any(p.startswith("time: ") for p in found) and any("'t' was unexpected" in p for p in found)
    assert any("'elapsed' is a required property" in p for p in found)
    top = {"type": "top", "time": 1.0, "pipeline": "fwd", "pid": 1, "seconds": 1.0, "uptime": 2.0,
           "ports": [{"name": "p0"}], "stages": {}, "rings": {}, "drops": {}, "counters": {}, "counter_rates": {},
           "nics": []}
    assert problems(top) == ["ports: [{'name': 'p0'}] is not of type 'object'"]
    assert any("'user_counters' was unexpected" in p for p in problems({"type": "summary", "user_counters": {}}))
    assert problems({"type": "bogus", "time": 1.0})[0].startswith("type: 'bogus' is not one of ")


def test_every_command_is_checked_here_or_named_where():
    checked = {args[0] for args, _ in STANDALONE.values()} | set(COVERED_ELSEWHERE)
    assert set(COMMANDS) == checked, set(COMMANDS) ^ checked


@pytest.mark.parametrize("case", sorted(STANDALONE))
def test_a_command_prints_json_lines_that_fit_the_schema(case, tmp_path):
    args, expected = STANDALONE[case]
    if case == "try":                                    # a capture to try the worker on
        assert ixypipe("gen", "--pcap", str(tmp_path / "try.pcap"), "--count", "5").returncode == 0
    res = ixypipe(*(a.format(tmp=tmp_path) for a in args), "--json")
    assert res.returncode == (2 if expected == ["error"] else 0), res.stdout + res.stderr
    docs = validated(res.stdout)
    kinds = [d["type"] for d in docs]
    assert kinds_match(kinds, expected), kinds
    if case == "gen-sim":                                # the verifying sink saw every frame
        assert docs[0]["sent"] == 500 and docs[0]["sink"]["sink_received"] == 500
    if case == "gen-pcap":
        assert (docs[0]["sent"], docs[0]["bytes"], docs[0]["sink"]) == (50, 50 * 60, None)
    if case == "try":
        assert docs[0]["verdicts"] == {"out": 5} and len(docs[0]["packets"]) == 5
    if case == "fwd-sim":
        s = docs[-1]
        p0 = s["ports"]["p0"]                            # what p0 posted, its wire sent and its sink received
        assert s["ok"] and p0["tx_packets"] == p0["sim"]["tx_sent"] == p0["sim"]["sink_received"] > 0
    if case == "run-check":
        assert list(docs[0]["stages"]) == ["rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0"]


@needs_hugepages
def test_run_and_top_key_ports_and_stages_the_same_way(tmp_path):
    """run's ready object, intervals and summary and top's frames, its list and its "ended" object, all
    checked against the schema; the same port and stage names key both, the worker's counter is "counters"."""
    (tmp_path / "seen.py").write_text(COUNTING_WORKER)
    run = start([str(variant(tmp_path, function='"seen.py:seen"')), "--json"])
    watcher = None
    head = []
    try:
        while not head or "seen" not in head[-1].get("counters", {}):   # ready, then figures with the counter
            line = run.stdout.readline()
            assert line, f"the run ended early: {run.wait()} {run.stderr.read()}"
            head += validated(line)
        frame = ixypipe("top", str(run.pid), "--once", "--json", "--interval", "0.5")
        assert frame.returncode == 0, frame.stderr
        listed = ixypipe("--json", "top", "--list")
        watcher = subprocess.Popen([*IXYPIPE, "top", str(run.pid), "--json", "--interval", "0.5"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        assert watcher.stdout.readline()                 # it follows the pipeline: a frame came
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=CEILING)
        assert run.returncode == 0, err
        followed, _ = watcher.communicate(timeout=CEILING)
    finally:
        for proc in (run, watcher):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    docs = head + validated(out)
    kinds = [d["type"] for d in docs]
    assert kinds[0] == "ready" and kinds[-1] == "summary" and set(kinds[1:-1]) == {"interval"}, kinds
    ready, summary = docs[0], docs[-1]
    assert summary["ok"] and summary["received"] > 0 and summary["counters"] == {"seen": summary["received"]}
    intervals = docs[1:-1]
    top = validated(frame.stdout)[0]
    assert top["type"] == "top"
    stage_names = ["rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0"]
    for doc in (ready, top, *intervals):
        assert list(doc["ports"]) == ["p0", "p1"] and list(doc["stages"]) == stage_names
    assert list(summary["ports"]) == ["p0", "p1"] and ready["stages"]["worker-0"]["role"] == "worker"
    assert "seen" in top["counters"] and "seen" in top["counter_rates"]
    assert set(intervals[-1]["stages"]["worker-0"]["counters"]) == set(intervals[-1]["counters"]) == {"seen"}
    assert {"pid": run.pid, "name": "fwd"}.items() <= next(
        p for p in validated(listed.stdout)[0]["pipelines"] if p["pid"] == run.pid).items()
    kinds = [d["type"] for d in validated(followed)]
    assert kinds[-1] == "ended" and set(kinds[:-1]) <= {"top"}
