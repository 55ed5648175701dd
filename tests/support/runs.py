"""Running ``ixypipe run`` as a user does, and reading what it prints (shared by the end-to-end tests)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from ixypipe.layout import ARENA_PREFIX
from ixypipe.memory import hugepages
from tests.support.outputschema import validated

REPO = Path(__file__).resolve().parent.parent.parent
FWD = REPO / "pipelines" / "fwd.toml"
IXYPIPE = [sys.executable, "-m", "ixypipe"]


def leftovers(pid: int) -> list[Path]:
    """Arena files created by process ``pid`` that are still there."""
    dirs = [Path("/dev/shm"), *hugepages.hugetlbfs_mounts()]
    return [f for d in dirs for f in d.glob(f"{ARENA_PREFIX}{pid}-*")]


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, "run", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def json_objects(stdout: str) -> list[dict]:
    """The JSON objects of ``run --json``'s stdout, each checked against the output schema (outputschema.py)."""
    return validated("\n".join(line for line in stdout.splitlines() if line.startswith("{")))


def summary_of(stdout: str) -> dict:
    summaries = [d for d in json_objects(stdout) if d["type"] == "summary"]
    assert summaries, f"no JSON summary in:\n{stdout}"
    return summaries[-1]


def intervals_of(stdout: str) -> list[dict]:
    return [d for d in json_objects(stdout) if d["type"] == "interval"]


def variant(tmp_path: Path, pipeline_keys: dict[str, str] | None = None, **replace: str) -> Path:
    """fwd.toml with some lines replaced (key = value lines, matched by key) and ``pipeline_keys`` added to
    its [pipeline] table."""
    text = FWD.read_text()
    for key, value in replace.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n, key
    added = "".join(f"{key} = {value}\n" for key, value in (pipeline_keys or {}).items())
    text = text.replace("[pipeline]\n", f"[pipeline]\n{added}", 1)
    path = tmp_path / "pipeline.toml"
    path.write_text(text)
    return path


def check_sinks(s: dict, expect_touch: bool = True) -> None:
    for port in ("p0", "p1"):
        sim = s["sim"][port]
        assert sim["sink_received"] == s["ports"][port]["tx_packets"]
        assert sim["sink_corrupt"] == 0
        assert sim["sink_reordered"] == 0
        if expect_touch:
            assert sim["sink_untouched"] == 0


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([*IXYPIPE, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def wait_for_stats(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the first per-second figures (a JSON interval, or a ``[p0]`` line): traffic has flowed for an
    interval.  The ready line comes before any packet, so it does not count."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if (line.startswith("{") and '"type": "interval"' in line) or line.startswith("[p0]"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.returncode} {proc.stderr.read()}")
    raise AssertionError("no stats line")
