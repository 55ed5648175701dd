"""Running as a service: the ready line, sd_notify (READY / STATUS / WATCHDOG / STOPPING), -q, the systemd unit."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from ixypipe.pipeline.service import Notifier, ready_line
from tests.support.runs import FWD, IXYPIPE, REPO, intervals_of, summary_of
from tests.support.system import needs_hugepages, needs_root, needs_tool

CEILING = 120          # seconds: generous, the machine is shared
UNIT = REPO / "docs" / "ixypipe.service"
VENV_SCRIPT = "/opt/ixypipe/venv/bin/ixypipe"     # docs/deploy.md: the venv's script by its full path


def _listener(kind: str, tmp_path: Path) -> tuple[socket.socket, str]:
    """A unix datagram socket standing in for systemd's: (socket, the $NOTIFY_SOCKET value naming it)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        return sock, path
    name = f"ixypipe-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    return sock, "@" + name


def _messages(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifier_sends_one_datagram_per_call(kind, tmp_path):
    sock, address = _listener(kind, tmp_path)
    with sock:
        n = Notifier({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_every == 2.0
        n.ready("ready: 5 stages forwarding on p0, p1 (pipeline fwd)")
        n.watchdog()
        n.watchdog()                           # within the interval: not sent again
        n.stopping("SIGINT")
        n.close()
        assert _messages(sock) == ["READY=1\nSTATUS=ready: 5 stages forwarding on p0, p1 (pipeline fwd)",
                                   "WATCHDOG=1", "STOPPING=1\nSTATUS=stopping: SIGINT"]


def test_notifier_outside_systemd_and_for_another_pid():
    quiet = Notifier({})
    assert not quiet.enabled
    quiet.ready("x")                           # no socket: nothing happens, nothing raises
    quiet.watchdog()
    other = Notifier({"NOTIFY_SOCKET": "@nobody-listens", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_every is None        # the watchdog is another process's
    other.ready("x")                           # nobody listens: logged at debug, not raised
    other.close()
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "nonsense"}).watchdog_every is None


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*IXYPIPE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, **(env or {})})


@needs_root
@needs_hugepages
@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_systemd_notifications_across_a_run_stopped_by_sigint(kind, tmp_path):
    sock, address = _listener(kind, tmp_path)
    with sock:
        proc = _start(["run", str(FWD)], {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
        lines = []
        try:
            deadline = time.monotonic() + CEILING
            while not any(line.startswith("stages: ") for line in lines):      # the first whole figure
                assert time.monotonic() < deadline, f"no figures: {lines}"
                line = proc.stdout.readline()
                assert line or proc.poll() is None, f"exited {proc.returncode}: {proc.stderr.read()}"
                lines.append(line)
            sock.settimeout(CEILING)
            got = [sock.recv(4096).decode()]
            while not any("WATCHDOG=1" in m for m in got):       # a datagram each 0.2 s while it runs
                got.append(sock.recv(4096).decode())
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=CEILING)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        got += _messages(sock)
    assert proc.returncode == 0, err
    ready = ready_line("fwd", 5, ["p0", "p1"])
    assert got[0] == f"READY=1\nSTATUS={ready}"
    first_watchdog = got.index("WATCHDOG=1")
    stopping = [i for i, m in enumerate(got) if m.startswith("STOPPING=1\n")]
    assert stopping == [len(got) - 1] and got[-1] == "STOPPING=1\nSTATUS=stopping: SIGINT"
    assert 0 < first_watchdog < stopping[0]
    statuses = [m for m in got[1:-1] if m != "WATCHDOG=1"]
    assert statuses and all(re.fullmatch(r"STATUS=forwarding: RX [\d.]+ [kM]?pps, TX [\d.]+ [kM]?pps", m)
                            for m in statuses), statuses
    text = "".join(lines) + out
    assert text.count("ready: ") == 1
    assert text.index(f"{ready}\n") < text.index("[p0] RX: ")      # before the first per-second figure
    assert "accounting OK" in out


@needs_root
@needs_hugepages
def test_quiet_prints_warnings_the_ready_line_and_the_summary_only():
    res = subprocess.run([*IXYPIPE, "-q", "run", str(FWD), "--duration", "3"], capture_output=True, text=True,
                         timeout=CEILING, cwd=REPO)
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == ready_line("fwd", 5, ["p0", "p1"]) and out[1] == "== accounting =="
    assert out[-1].startswith("accounting OK")      # (a busy machine may add why the sinks lost some)
    assert not [line for line in out if line.startswith(("[p0]", "[p1]", "stages: ", "counters: "))]
    assert not [line for line in res.stderr.splitlines() if line.startswith("INFO ")], res.stderr


@needs_root
@needs_hugepages
def test_quiet_json_has_the_ready_object_and_the_summary_only():
    res = subprocess.run([*IXYPIPE, "run", str(FWD), "--duration", "3", "--json", "-q"], capture_output=True,
                         text=True, timeout=CEILING, cwd=REPO)
    assert res.returncode == 0, res.stderr
    docs = [line for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(docs) == 2 and intervals_of(res.stdout) == []
    ready = json.loads(docs[0])
    assert ready["type"] == "ready" and ready["pipeline"] == "fwd" and list(ready["ports"]) == ["p0", "p1"]
    assert ready["ports"]["p0"] == {"driver": "sim"} and len(ready["stages"]) == 5
    assert ready["stages"]["worker-0"]["role"] == "worker" and ready["stages"]["worker-0"]["cpu"] >= 0
    s = summary_of(res.stdout)
    assert s["ok"] is True and s["received"] > 0


@needs_root
@needs_hugepages
def test_default_run_says_little_before_the_first_figure():
    res = subprocess.run([*IXYPIPE, "run", str(FWD), "--duration", "2"], capture_output=True, text=True,
                         timeout=CEILING, cwd=REPO)
    assert res.returncode == 0, res.stderr
    info = [line for line in res.stderr.splitlines() if line.startswith("INFO ")]
    chatter = [line for line in info if "reset 82599" in line or re.search(r"port p\d: sim .* up$", line)]
    assert chatter == [], info
    assert sum("link up at 10000 Mbit/s" in line for line in info) == 2      # what a user needs stays


@needs_tool("systemd-analyze", apt="systemd")
def test_the_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) (.*)$", text, re.M)
    assert exec_start and exec_start.group(1) == VENV_SCRIPT and exec_start.group(2).startswith("-q run ")
    for line in ("Type=notify", "Restart=on-failure", "KillMode=control-group", "LimitMEMLOCK=infinity",
                 "User=ixypipe"):
        assert re.search(rf"^{line}$", text, re.M), line
    assert re.search(r"^WatchdogSec=\d+s$", text, re.M) and re.search(r"^CPUAffinity=[\d,-]+$", text, re.M)
    script = tmp_path / "ixypipe"            # verify wants an executable where ExecStart points
    shutil.copy(Path("/bin/true"), script)
    unit = tmp_path / "ixypipe.service"
    unit.write_text(text.replace(VENV_SCRIPT, str(script)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr == "" and res.stdout == "", res.stderr + res.stdout
    bad = tmp_path / "bad.service"                 # the check can fail: a misspelt key is reported
    bad.write_text(unit.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartt=always"))
    res = subprocess.run(["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'Restartt'" in res.stderr
