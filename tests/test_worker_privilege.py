"""Workers run the user's code without privilege: another user, no capability, no_new_privs.

Started as root, a worker stage drops to ``nobody`` (or ``worker_user``)
once it has mapped the packet arena, before it imports the user's module; the
RX and TX stages keep root's uid but no capability (see ixypipe/privilege.py
for what they need).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ixypipe.pipeline.config import ConfigError, parse_pipeline
from ixypipe.privilege import DEFAULT_WORKER_USER, lookup, status
from tests.support.runs import FWD, IXYPIPE, REPO, check_sinks, summary_of, wait_for_stats
from tests.support.system import needs_root

ALL_ZERO = "0000000000000000"


def test_a_worker_user_that_does_not_exist_is_named(tmp_path):
    text = FWD.read_text().replace('name = "fwd"', 'name = "fwd"\nworker_user = "no-such-user-ixy"')
    with pytest.raises(ConfigError, match=r"pipeline.worker_user \(line \d+\): no user 'no-such-user-ixy' on this "
                                          r"machine \(see /etc/passwd\); give the user name or uid"):
        parse_pipeline(text, tmp_path / "p.toml")
    with pytest.raises(ConfigError, match=r"pipeline.worker_user \(line \d+\): must not be empty"):
        parse_pipeline(text.replace("no-such-user-ixy", ""), tmp_path / "p.toml")
    assert parse_pipeline(text.replace("no-such-user-ixy", "0"), tmp_path / "p.toml").worker_user == "0"


def test_switching_to_another_user_without_root_is_refused_at_load(tmp_path, monkeypatch):
    text = FWD.read_text().replace('name = "fwd"', 'name = "fwd"\nworker_user = "nobody"')
    monkeypatch.setattr(os, "geteuid", lambda: 4321)          # an ordinary user
    with pytest.raises(ConfigError, match=r"pipeline.worker_user \(line \d+\): switching the workers to user "
                                          r"'nobody' needs root \(ixypipe runs as uid 4321\)"):
        parse_pipeline(text, tmp_path / "p.toml")
    assert parse_pipeline(FWD.read_text(), tmp_path / "p.toml").worker_user == ""      # default: stay the user


DROP = '''
import ctypes, json, os, sys
from ixypipe import privilege
from ixypipe.proc import die_with_parent

die_with_parent(os.getppid())
kept = open(sys.argv[1], "rb")             # opened before the drop: stays readable
privilege.drop_worker(sys.argv[2])
out = {"status": privilege.status(), "resuid": os.getresuid(), "resgid": os.getresgid(),
       "groups": os.getgroups(), "kept": kept.read().decode()}
for what, call in [("setuid0", lambda: os.setuid(0)), ("reopen", lambda: open(sys.argv[1], "rb")),
                   ("setgroups", lambda: os.setgroups([0]))]:
    try:
        call()
        out[what] = "allowed"
    except PermissionError as exc:
        out[what] = exc.strerror
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(privilege.PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
out["pdeathsig"] = sig.value
print(json.dumps(out))
'''


def drop_privileges_in_a_child(tmp_path, worker_user: str) -> dict:
    """Run DROP in a fresh process holding a root-only file open; what it saw, as a dict."""
    secret = tmp_path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)
    res = subprocess.run([sys.executable, "-c", DROP, str(secret), worker_user], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@needs_root
def test_dropping_leaves_a_process_no_uid_no_capability_and_no_way_back(tmp_path):
    out = drop_privileges_in_a_child(tmp_path, "")
    nobody = lookup(DEFAULT_WORKER_USER)
    assert out["resuid"] == [nobody.uid] * 3 and out["resgid"] == [nobody.gid] * 3 and out["groups"] == []
    st = out["status"]
    assert st["Uid"].split() == [str(nobody.uid)] * 4 and st["Groups"] == ""
    assert {k: st[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == dict.fromkeys(
        ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), ALL_ZERO)
    assert st["NoNewPrivs"] == "1"
    assert out["kept"] == "root only"                       # what was open before stays usable
    assert out["setuid0"] == out["setgroups"] == "Operation not permitted"
    assert out["reopen"] == "Permission denied"             # a root-only file, opened again after the drop
    assert out["pdeathsig"] == 9                            # re-armed after the credential change


@needs_root
def test_worker_user_root_keeps_the_old_privileges(tmp_path):
    out = drop_privileges_in_a_child(tmp_path, "root")
    assert out["resuid"] == [0, 0, 0] and out["reopen"] == "allowed"
    assert out["status"]["CapEff"] != ALL_ZERO and out["status"]["NoNewPrivs"] == "1"


# ---- in a running pipeline --------------------------------------------------------------------------
PROBE = '''
"""Tries, once it runs, what the worker process may still open: the simulated NIC's BAR and /dev/mem."""
import os
import signal
from pathlib import Path

import psutil

SHM = Path("/dev/shm")


def _probe(ctx, what, path):
    try:
        with open(path, "r+b"):
            ctx.count(f"{what} opened")
    except PermissionError:
        ctx.count(f"{what} denied")
    except FileNotFoundError:
        ctx.count(f"{what} missing")


def setup(ctx):
    # the software 82599's sysfs tree of this run: /dev/shm/ixypipe-sim-<supervisor pid>-* (the supervisor is
    # an ancestor: the worker is forked by its fork server)
    ancestors = {p.pid for p in psutil.Process().parents()}
    roots = [SHM / n for n in os.listdir(SHM) if n.startswith("ixypipe-sim-") and int(n.split("-")[2]) in ancestors]
    ctx.count("sim trees", len(roots))
    for root in roots:
        for address in ("0000:5e:00.0", "0000:5e:00.1"):
            _probe(ctx, "resource0", root / "bus" / "pci" / "devices" / address / "resource0")
    _probe(ctx, "dev_mem", "/dev/mem")
    ctx.count("uid", os.getuid())


def touch(batch):
    batch.data[batch.idx, 1] += 1
'''


def start(tmp_path, worker_user: str | None) -> subprocess.Popen:
    (tmp_path / "probe.py").write_text(PROBE)
    text = FWD.read_text().replace('function = "touch"', 'function = "probe.py:touch"')
    if worker_user is not None:
        text = text.replace('name = "fwd"', f'name = "fwd"\nworker_user = "{worker_user}"')
    (tmp_path / "p.toml").write_text(text)
    return subprocess.Popen([*IXYPIPE, "run", str(tmp_path / "p.toml"), "--duration", "120", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def stage_status(proc: subprocess.Popen) -> dict[str, dict]:
    """/proc/PID/status of each stage once all five have dropped what they drop (no_new_privs is set last)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            stages = {p.name(): p.pid for p in psutil.Process(proc.pid).children(recursive=True)
                      if p.name().startswith("ixy-")}
            seen = {name: status(pid) for name, pid in stages.items()}
        except (psutil.Error, OSError):
            seen = {}
        if len(seen) == 5 and all(st["NoNewPrivs"] == "1" for st in seen.values()):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"the stages never all ran (exit {proc.poll()})")


@needs_root
@pytest.mark.parametrize("worker_user", [None, "root"], ids=["default", "root-opt-out"])
def test_a_running_worker_is_unprivileged_and_cannot_open_the_bar(tmp_path, worker_user):
    proc = start(tmp_path, worker_user)
    try:
        seen = stage_status(proc)
        wait_for_stats(proc)                    # a second of traffic through the probed worker
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    s = summary_of(out)
    assert s["ok"] is True and s["failures"] == [] and s["in_flight"] == 0
    assert s["received"] > 1000 and s["received"] == s["transmitted"] + sum(s["drops"].values())
    check_sinks(s)
    counters = s["worker_counters"]["worker-0"]
    worker = seen.pop("ixy-worker-0")
    assert counters["sim trees"] == 1
    if worker_user is None:
        nobody = lookup(DEFAULT_WORKER_USER)
        assert worker["Uid"].split() == [str(nobody.uid)] * 4 and counters["uid"] == nobody.uid
        assert worker["CapEff"] == worker["CapPrm"] == worker["CapBnd"] == ALL_ZERO
        assert worker["NoNewPrivs"] == "1"
        # the BAR of both ports, served by the software 82599, is out of the worker's reach
        assert counters["resource0 denied"] == 2 and "resource0 opened" not in counters
        # /dev/mem needs CAP_SYS_RAWIO whatever its mode (absent in containers: then "missing")
        assert counters.get("dev_mem denied", 0) + counters.get("dev_mem missing", 0) == 1
    else:                                   # the control: the same probe as root opens both BARs
        assert worker["Uid"].split()[0] == "0" and worker["CapEff"] != ALL_ZERO
        assert counters["resource0 opened"] == 2 and counters.get("uid", 0) == 0
    # RX and TX stages keep the pipeline's user (root here): the BAR and arenas they mapped are its;
    # they lose every capability and cannot gain one
    assert sorted(seen) == ["ixy-rx-p0-q0", "ixy-rx-p1-q0", "ixy-tx-p0-q0", "ixy-tx-p1-q0"]
    for st in seen.values():
        assert st["Uid"].split()[0] == "0" and st["NoNewPrivs"] == "1"
        assert st["CapEff"] == st["CapPrm"] == st["CapBnd"] == st["CapInh"] == ALL_ZERO


# ---- an example worker that writes a file: where its user can -------------------------------------------

FLOW_COUNTER = REPO / "examples" / "flow_counter.toml"
FLOW_TABLE = Path("/tmp/ixypipe-flows-0.csv")      # what the example's pipeline file names, for worker 0


def test_the_flow_counter_example_runs_as_its_file_says_and_its_worker_writes_the_table():
    FLOW_TABLE.unlink(missing_ok=True)
    try:
        res = subprocess.run([*IXYPIPE, "run", str(FLOW_COUNTER), "--json"], capture_output=True, text=True,
                             timeout=240, cwd=REPO)
        assert res.returncode == 0, res.stderr
        s = summary_of(res.stdout)
        assert s["ok"] and s["stop_reason"] == "all sources finished"
        assert s["received"] == s["transmitted"] == 20000 and sum(s["drops"].values()) == 0
        assert s["counters"] == {"flows": 16, "flow_packets": 20000, "flow_bytes": 10000 * 60 + 10000 * 128}
        # the worker wrote it after dropping to its user (nobody when the test runs as root)
        assert FLOW_TABLE.stat().st_uid == (lookup(DEFAULT_WORKER_USER).uid if os.geteuid() == 0 else os.geteuid())
        rows = list(csv.reader(FLOW_TABLE.open()))
        assert rows[0] == ["src", "dst", "proto", "sport", "dport", "packets", "bytes"]
        assert len(rows) == 17 and {(r[1], r[2], r[4], r[5]) for r in rows[1:]} == {("10.255.0.1", "17", "5000", "1250")}
        assert sorted(int(r[6]) for r in rows[1:]) == [1250 * 60] * 8 + [1250 * 128] * 8
    finally:
        FLOW_TABLE.unlink(missing_ok=True)


@needs_root
def test_a_worker_that_cannot_write_its_output_says_which_file_and_which_user(tmp_path):
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    text = FLOW_COUNTER.read_text()
    text = re.sub(r'^function = .*$', f'function = "{REPO / "examples" / "flow_counter.py"}:FlowCounter"', text,
                  flags=re.M)
    text = re.sub(r'^output = .*$', f'output = "{private / "flows.csv"}"', text, flags=re.M)
    (tmp_path / "p.toml").write_text(text)
    res = subprocess.run([*IXYPIPE, "run", str(tmp_path / "p.toml")], capture_output=True, text=True, timeout=240,
                         cwd=REPO)
    assert res.returncode == 1
    nobody = lookup(DEFAULT_WORKER_USER)
    assert (f"PermissionError: flow_counter: cannot write {private / 'flows-0.csv'}: Permission denied; this worker "
            f"runs as user {nobody.name!r} (uid {nobody.uid}), set by [pipeline] worker_user (nobody when ixypipe "
            "runs as root)") in res.stderr
    assert "error: stage worker-0" in res.stderr and not (private / "flows-0.csv").exists()
