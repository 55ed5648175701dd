"""A second pipeline is refused an interface or PCI device another running pipeline uses (pipeline.claims).

The reproduction: two bridge-veth pipelines on the same veth pair both
received every frame and both transmitted (ping saw +57 duplicates, TCP fell
from 1.0 to 0.28 Gbit/s).  Now the second one stops at start, naming the
first, unless its file says ``share = true``; the claim goes with the first
however it ends (kill -9 too).  Sim ports are private to their run: two
fwd.toml runs side by side are fine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ixypipe.pipeline import claims
from ixypipe.pipeline.config import ConfigError, PortConfig, load_pipeline
from tests.support.runs import FWD, IXYPIPE, REPO, summary_of
from tests.support.system import needs_root, needs_tool
from tests.test_kernel_traffic import RunningPipeline, ping, ping_loss, pipeline_file


def nic(name: str, pci: str = "0000:03:00.0", share: bool = False) -> PortConfig:
    return PortConfig(name, "ixgbe", pci=pci, share=share)


# ---- the claims themselves (PCI addresses: nothing on the machine is touched) -------------------------------

def test_a_second_claim_on_a_pci_device_is_refused_naming_the_first(tmp_path):
    first = claims.claim(nic("p0"), "first", "/x/first.toml", tmp_path)
    try:
        with pytest.raises(claims.ClaimError) as err:
            claims.claim(nic("q"), "second", "/x/second.toml", tmp_path)
        assert str(err.value) == (
            f"port q: PCI device 0000:03:00.0 is in use by pipeline 'first' (pid {os.getpid()}, /x/first.toml, "
            "port p0); two pipelines on one device both receive every frame and both transmit. Stop the other "
            "one, or say share = true in port q to share it on purpose")
        other = claims.claim(nic("r", pci="0000:03:00.1"), "second", "/x/second.toml", tmp_path)  # another device
        claims.release([other])
    finally:
        claims.release([first])
    assert list(tmp_path.iterdir()) == []          # the last holder removed the file
    again = claims.claim(nic("q"), "second", "/x/second.toml", tmp_path)
    claims.release([again])


def test_sharing_ports_share_and_an_exclusive_one_is_refused_naming_every_holder(tmp_path):
    a = claims.claim(nic("a", share=True), "one", "/one.toml", tmp_path)
    b = claims.claim(nic("b", share=True), "two", "/two.toml", tmp_path)
    try:
        assert a.fd is not None and b.fd is not None
        with pytest.raises(claims.ClaimError, match=r"is in use by pipeline 'one' \(pid \d+, /one.toml, port a\), "
                                                    r"pipeline 'two' \(pid \d+, /two.toml, port b\);"):
            claims.claim(nic("c"), "three", "/three.toml", tmp_path)
        claims.release([a])
        assert [p.name for p in tmp_path.iterdir()] == ["ixypipe-port-pci-0000:03:00.0"]   # b still holds it
    finally:
        claims.release([a, b])
    assert list(tmp_path.iterdir()) == []


def test_a_sharing_port_joins_an_exclusive_holder_with_a_warning(tmp_path, caplog):
    first = claims.claim(nic("a"), "one", "/one.toml", tmp_path)
    try:
        joined = claims.claim(nic("b", share=True), "two", "/two.toml", tmp_path)
        assert joined.fd is None
        assert "port b: PCI device 0000:03:00.0 is also used by pipeline 'one'" in caplog.text
        claims.release([joined])
        assert len(list(tmp_path.iterdir())) == 1
    finally:
        claims.release([first])


def test_a_dead_holders_line_is_not_named(tmp_path):
    path = tmp_path / "ixypipe-port-pci-0000:03:00.0"
    dead = subprocess.Popen(["true"])
    dead.wait()
    path.write_text(json.dumps({"pid": dead.pid, "pipeline": "gone"}) + "\n")
    held = claims.claim(nic("a", share=True), "live", "/live.toml", tmp_path)
    try:
        assert [h["pipeline"] for h in claims.holders(path)] == ["live"]
    finally:
        claims.release([held])


def test_sim_ports_and_unknown_interfaces_claim_nothing():
    assert claims.device_of(PortConfig("s", "sim")) is None
    assert claims.device_of(PortConfig("s", "sim", pci="0000:03:00.0")) is None
    assert claims.device_of(PortConfig("i", "af_packet", interface="ixynosuch0")) is None


def test_share_is_a_boolean_of_af_packet_and_ixgbe_ports_only(tmp_path):
    def load(port: str) -> PortConfig:
        path = tmp_path / "p.toml"
        path.write_text(f'[pipeline]\nname = "s"\n[[ports]]\nname = "a"\n{port}\n[[ports]]\nname = "b"\n'
                        'driver = "sim"\n')
        return load_pipeline(path).ports[0]

    assert load('driver = "af_packet"\ninterface = "lo"\nshare = true').share is True
    assert load('driver = "ixgbe"\npci = "0000:03:00.0"').share is False
    with pytest.raises(ConfigError, match=r"ports\[0\]\.share .*must be true or false"):
        load('driver = "af_packet"\ninterface = "lo"\nshare = "yes"')
    with pytest.raises(ConfigError, match=r"ports\[0\]\.share \(line 6\): unknown key for a 'sim' port"):
        load('driver = "sim"\nshare = true')


# ---- two pipelines on one veth pair -----------------------------------------------------------------------

def run_once(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, "run", str(path), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def second(tmp_path: Path, testbed, share: bool = False) -> Path:
    """Another file of bridge-veth.toml on the same testbed (share = true in both ports if ``share``)."""
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    path = pipeline_file(directory, testbed)
    if share:
        path.write_text(path.read_text().replace('driver = "af_packet"\n', 'driver = "af_packet"\nshare = true\n'))
    return path


@needs_root
@needs_tool("ping")
def test_a_second_pipeline_on_the_same_veths_is_refused_naming_the_first(testbed, tmp_path):
    first = RunningPipeline(pipeline_file(tmp_path, testbed))
    try:
        who = (f"pipeline 'bridge-veth' (pid {first.proc.pid}, {tmp_path / 'pipeline.toml'}, port a)")
        res = run_once(second(tmp_path, testbed), "--duration", "2", "--json")
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert f"port a: interface {testbed.port_a} is in use by {who}" in res.stdout + res.stderr
        check = run_once(second(tmp_path, testbed), "--check")
        assert check.returncode == 1 and f"FAILED  port a: in use: interface {testbed.port_a} is in use by " \
                                          f"{who}; stop it, or say share = true in port a" in check.stdout
        # the first one still bridges alone: every ping answered once, no duplicates
        sent, got, out = ping_loss(ping(testbed))
        assert (sent, got) == (20, 20) and "DUP!" not in out, out
        # share = true: it starts beside the first, saying whose interface it joins
        shared = run_once(second(tmp_path, testbed, share=True), "--duration", "2", "--json")
        assert shared.returncode == 0, shared.stderr
        assert f"port a: interface {testbed.port_a} is also used by {who}, which does not share it" in shared.stderr
        assert summary_of(shared.stdout)["ok"] is True
    finally:
        summary, err = first.stop_and_wait()
    assert first.proc.returncode == 0 and summary["ok"] is True, err
    # stopped: the interfaces are free again, and no claim file is left
    after = run_once(second(tmp_path, testbed), "--duration", "1", "--json")
    assert after.returncode == 0 and summary_of(after.stdout)["ok"] is True, after.stderr
    assert not [p for p in claims.CLAIM_DIR.glob(f"{claims.CLAIM_PREFIX}*")
                if p.name.endswith(f"-if{_index(testbed.port_a)}")]


def _index(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/ifindex").read_text())


@needs_root
def test_the_claim_goes_with_a_pipeline_killed_with_sigkill(testbed, tmp_path):
    first = RunningPipeline(pipeline_file(tmp_path, testbed))
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=60)
    deadline = time.monotonic() + 60               # its stages follow it (parent-death signal)
    res = None
    while time.monotonic() < deadline:
        res = run_once(second(tmp_path, testbed), "--duration", "1", "--json")
        if res.returncode == 0:
            break
        assert "is in use by" not in res.stdout + res.stderr, res.stdout + res.stderr
        time.sleep(1)
    assert res is not None and res.returncode == 0 and summary_of(res.stdout)["ok"] is True, res.stderr


def test_two_sim_pipelines_run_side_by_side():
    """Sim ports (even with the same pci address in the file) are private to their run: no claim."""
    first = RunningPipeline(FWD)
    try:
        res = run_once(FWD, "--packets", "2000", "--json")
        assert res.returncode == 0 and summary_of(res.stdout)["ok"] is True, (res.stdout[-3000:], res.stderr[-2000:])
        assert "in use" not in res.stderr
        assert first.proc.poll() is None                     # both ran at once
    finally:
        summary, err = first.stop_and_wait()
    assert first.proc.returncode == 0 and summary["ok"] is True, err


def test_a_plan_region_outside_its_arena_is_a_plan_info_error_not_a_crash(make_arena):
    """Seen while testing the claims: a pipeline's start (placement looks at the running ones) crashed with
    IndexError on an arena whose plan region lay past its mapping (one of another layout, from another
    checkout's run); such an arena is skipped like one being made."""
    from ixypipe.layout import PLAN_INFO_REGION, PLAN_INFO_SIZE
    from ixypipe.pipeline.planinfo import PlanInfoError, read_plan_info

    arena = make_arena(1 << 20, hugepages_mode="never")
    arena.alloc(PLAN_INFO_REGION, PLAN_INFO_SIZE)
    entry = next(e for e in arena.table if bytes(e["name"]) == PLAN_INFO_REGION.encode())
    entry["offset"] = arena.size + 4096
    with pytest.raises(PlanInfoError, match=r"region of arena .* is cut short \(0 bytes\)"):
        read_plan_info(arena)


def test_ixypipe_fwd_is_refused_a_pci_device_a_pipeline_uses():
    """ixypipe fwd on real addresses resets both NICs: not one a running pipeline holds; the claim it took on
    the first one goes back when the second is refused."""
    from click.testing import CliRunner

    from ixypipe.cli import main

    a, b = "0000:fe:1f.6", "0000:fe:1f.7"          # addresses no test or machine here uses
    held = claims.claim(nic("n1", pci=b), "bridge", "/b.toml")
    try:
        res = CliRunner().invoke(main, ["fwd", a, b, "--duration", "1"])
        assert res.exit_code == 1, res.output
        assert (f"port p1: PCI device {b} is in use by pipeline 'bridge' (pid {os.getpid()}, /b.toml, port n1); two "
                "pipelines on one device both receive every frame and both transmit. Stop it first") in res.output
        assert not (claims.CLAIM_DIR / f"{claims.CLAIM_PREFIX}pci-{a}").exists()
    finally:
        claims.release([held])
    assert not (claims.CLAIM_DIR / f"{claims.CLAIM_PREFIX}pci-{b}").exists()
