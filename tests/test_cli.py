"""The ixypipe command line as a user types it: --version, -v/--json anywhere, rates in pps with k/M,
usage errors that name the flag (exit 2), errors as JSON, stage names from port names, and --check."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import textwrap
import uuid

import click
import pytest
from click.testing import CliRunner

from ixypipe import __version__
from ixypipe.cli import main
from ixypipe.commands.options import PPS
from ixypipe.nic.netns_id import describe_netns
from tests.support.runs import IXYPIPE, REPO
from tests.support.system import needs_root, needs_tool


def ixypipe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*IXYPIPE, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def pipeline(tmp_path, ports: str, workers: str = "") -> str:
    path = tmp_path / "p.toml"
    path.write_text(textwrap.dedent(ports) + textwrap.dedent(workers))
    return str(path)


TWO_SIM_PORTS = """
    [[ports]]
    name = "a"
    driver = "sim"
    hot_path = "numpy"
    [[ports]]
    name = "b"
    driver = "sim"
    hot_path = "auto"
"""


def test_version():
    res = ixypipe("--version")
    assert (res.returncode, res.stdout) == (0, f"ixypipe {__version__}\n")


@pytest.mark.parametrize("where", ["before", "after"])
def test_json_before_or_after_the_sub_command(where):
    args = ["--json", "hugepages"] if where == "before" else ["hugepages", "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["type"] == "hugepages" and isinstance(doc["pools"], list) and isinstance(doc["mounts"], list)


@pytest.mark.parametrize("args", [["-v", "cores", "--interval", "0"], ["cores", "--interval", "0", "-v"],
                                  ["sim", "serve", "--verbose", "--help"],
                                  ["run", str(REPO / "pipelines" / "fwd.toml"), "--check", "-v"]])
def test_verbose_before_or_after_the_sub_command(args):
    root, own = logging.getLogger(), logging.getLogger("ixypipe")
    saved = root.level, own.level
    root.setLevel(logging.WARNING)
    own.setLevel(logging.NOTSET)
    try:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        assert own.getEffectiveLevel() == logging.DEBUG            # ixypipe's own debug lines
        assert logging.getLogger("numba.core.ssa").getEffectiveLevel() == logging.WARNING   # not numba's
    finally:
        root.setLevel(saved[0])
        own.setLevel(saved[1])


def test_verbose_run_prints_ixypipes_debug_lines_from_every_process_and_none_of_numbas():
    res = ixypipe("-v", "run", str(REPO / "pipelines" / "fwd.toml"), "--duration", "1", timeout=180)
    assert res.returncode == 0, res.stderr
    assert "accounting OK" in res.stdout
    debug = [line for line in res.stderr.splitlines() if "DEBUG" in line]
    stages = ("rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0")
    # the supervisor's placement, each stage process and the software 82599's process say where they run
    assert {f"DEBUG ixypipe.pipeline.placement: {name} on CPU" for name in (*stages, "sim")} <= {
        line.rsplit(" ", 1)[0] for line in debug}
    for name in stages:
        said = [next(line for line in debug if re.fullmatch(rf"DEBUG {name}: pid \d+ on CPU \d+, idle mode wake", line))]
        if name.startswith("worker"):          # fwd.toml's touch runs in the compiled worker loop
            said.append(next(line for line in debug if re.fullmatch(
                rf"DEBUG {name}: the worker function runs compiled \(\S+builtin\.py:\d+\)", line)))
        assert [line for line in debug if line.startswith(f"DEBUG {name}: ")] == said
    assert [line for line in debug if line.startswith("ixypipe-sim: ")] == [
        next(line for line in debug if re.fullmatch(r"ixypipe-sim: DEBUG pid \d+: ports p0, p1, \w+ hot path", line))]
    # numba's loggers stay at WARNING: none of its compiler passes' debug output (hundreds of lines per kernel)
    assert "numba" not in res.stdout + res.stderr
    assert all(line.startswith(("DEBUG ixypipe.", "ixypipe-sim: DEBUG pid ")) or line.startswith(
        tuple(f"DEBUG {name}: " for name in stages)) for line in debug), debug


@pytest.mark.parametrize("text, pps", [("0", 0.0), ("2000", 2000.0), ("300k", 300e3), ("1.5M", 1.5e6),
                                       ("2.5m", 2.5e6), ("10kpps", 10e3), (".5M", 0.5e6)])
def test_rate_accepts_pps_with_k_and_m(text, pps):
    assert PPS.convert(text, None, None) == pps


@pytest.mark.parametrize("text", ["fast", "1.5G", "-1", "1,5M", ""])
def test_a_bad_rate_names_the_flag(text):
    with pytest.raises(click.BadParameter, match="is not a packet rate|is negative"):
        PPS.convert(text, None, None)
    for cmd in (["gen", "--pcap", "x.pcap"], ["sim", "serve"]):
        res = CliRunner().invoke(main, [*cmd, "--rate", text])
        assert res.exit_code == 2 and "Invalid value for '--rate'" in res.output, res.output


def test_every_rate_option_is_pps():
    for cmd in (["gen"], ["sim", "serve"], ["fwd"]):
        res = CliRunner().invoke(main, [*cmd, "--help"])
        assert "--rate PPS" in res.output and "1.5M" in res.output


def test_gen_rate_with_a_suffix_is_paced_and_shown_scaled(tmp_path):
    res = ixypipe("gen", "--pcap", str(tmp_path / "out.pcap"), "--count", "2000", "--rate", "20k")
    assert res.returncode == 0, res.stderr
    assert "generating 60-byte IPv4/UDP frames, 1 flow, 20.0 kpps onto pcap" in res.stdout
    seconds = float(res.stdout.split(" in ")[1].split(" s")[0])
    assert seconds >= 2000 / 20e3 * 0.9                 # paced by the rate the suffix gave


def test_gen_bad_size_is_a_usage_error_naming_the_flag(tmp_path):
    res = ixypipe("gen", "--size", "59", "--pcap", str(tmp_path / "x.pcap"))
    assert res.returncode == 2
    assert "Invalid value for '--size': packet size must be 60..9018 bytes without FCS for profile udp" in res.stderr
    assert "packet_size" not in res.stderr and not (tmp_path / "x.pcap").exists()


@pytest.mark.parametrize("args", [["--json", "gen", "--size", "59", "--pcap", "x.pcap"],
                                  ["gen", "--pcap", "x.pcap", "--size", "59", "--json"]])
def test_usage_errors_as_json(args):
    res = ixypipe(*args)
    assert res.returncode == 2 and res.stderr == ""
    doc = json.loads(res.stdout)
    assert isinstance(doc.pop("time"), float)
    assert doc == {"type": "error", "exit_code": 2,
                                      "message": "Invalid value for '--size': packet size must be 60..9018 "
                                                 "bytes without FCS for profile udp (the IPv4/UDP headers and the "
                                                 "18-byte record need 60), got 59"}


def test_unknown_option_as_json():
    res = ixypipe("cores", "--bogus", "--json")
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["type"] == "error" and doc["message"].startswith("No such option '--bogus'")


def test_bad_pipeline_file_as_json(tmp_path):
    bad = pipeline(tmp_path, """
        [[ports]]
        name = "a"
        driver = "e1000"
    """)
    res = ixypipe("--json", "run", bad, "--check")
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["type"] == "error" and doc["exit_code"] == 2
    assert "ports[0].driver" in doc["message"] and "'e1000'" in doc["message"]
    res = ixypipe("cores", bad, "--json")
    assert res.returncode == 2 and json.loads(res.stdout)["message"] == doc["message"]


def test_check_json_stage_names_from_port_names_and_hot_path(tmp_path):
    res = ixypipe("run", pipeline(tmp_path, TWO_SIM_PORTS), "--check", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["type"] == "check" and doc["ok"] is True
    assert doc["stages"] == {"rx-a-q0": {"role": "rx"}, "rx-b-q0": {"role": "rx"}, "worker-0": {"role": "worker"},
                             "tx-a-q0": {"role": "tx"}, "tx-b-q0": {"role": "tx"}}
    assert list(doc["ports"]) == ["a", "b"] and doc["ports"]["a"]["driver"] == "sim"
    assert doc["checks"] == [{"what": "workers: forward", "ok": True, "message": "imports and names a callable (checked in a child process)"}]
    text = ixypipe("run", pipeline(tmp_path, TWO_SIM_PORTS), "--check")
    assert text.returncode == 0 and "stages: rx-a-q0 rx-b-q0 worker-0 tx-a-q0 tx-b-q0" in text.stdout


def test_hot_path_names_what_it_allows(tmp_path):
    res = ixypipe("run", pipeline(tmp_path, TWO_SIM_PORTS.replace('"auto"', '"fast"')), "--check")
    assert res.returncode == 2
    assert "ports[1].hot_path" in res.stderr and "'auto', 'numpy', 'numba'" in res.stderr and "'fast'" in res.stderr


def test_check_imports_the_worker(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom while importing the worker module')\n"
                                        "def handle(batch):\n    pass\n")
    res = ixypipe("run", pipeline(tmp_path, TWO_SIM_PORTS, """
        [workers]
        function = "broken.py:handle"
    """), "--check", "--json")
    assert res.returncode == 2, res.stdout + res.stderr       # a worker that cannot load is a bad pipeline
    doc = json.loads(res.stdout)
    assert doc["type"] == "error" and doc["exit_code"] == 2
    assert "workers.function (line 12)" in doc["message"]
    assert "RuntimeError: boom while importing the worker module (at " in doc["message"]


def missing_interface(tmp_path) -> tuple[str, str]:
    """A pipeline whose AF_PACKET port names an interface that does not exist, and that name."""
    name = f"ixyno{uuid.uuid4().hex[:8]}"
    return name, pipeline(tmp_path, f"""
        [[ports]]
        name = "a"
        driver = "af_packet"
        interface = "{name}"
    """)


def test_check_names_a_missing_interface(tmp_path):
    name, path = missing_interface(tmp_path)
    res = ixypipe("run", path, "--check")
    assert res.returncode == 1
    assert f"FAILED  port a: interface {name}: port a: no such network interface '{name}' in this network " \
           f"namespace ({describe_netns()}; `ip link` lists its interfaces, `ixypipe netns status` the testbeds " \
           "and where their interfaces are)" in res.stdout
    assert res.stdout.rstrip().endswith("1 check failed")


@needs_root
@needs_tool("ip")
def test_check_sees_an_interface_down_then_up_in_a_namespace(tmp_path):
    """The interface is looked up in the namespace --check runs in (ip netns exec NS ixypipe run --check)."""
    ns = f"ixyc-{uuid.uuid4().hex[:8]}"
    path = pipeline(tmp_path, """
        [[ports]]
        name = "a"
        driver = "af_packet"
        interface = "vcheck0"
    """)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "vcheck0", "type", "veth", "peer", "name", "vcheck1"], check=True)
        check = ["ip", "netns", "exec", ns, *IXYPIPE, "run", path, "--check", "--json"]
        res = subprocess.run(check, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert res.returncode == 1, res.stderr
        iface = json.loads(res.stdout)["checks"][0]
        assert iface == {"what": "port a: interface vcheck0", "ok": False,
                         "message": "port a: interface vcheck0 is down; bring it up with `ip link set vcheck0 up`"}
        subprocess.run(["ip", "-n", ns, "link", "set", "vcheck0", "up"], check=True)
        res = subprocess.run(check, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert res.returncode == 0, res.stdout + res.stderr
        iface = json.loads(res.stdout)["checks"][0]
        assert iface["ok"] and iface["message"].startswith("vcheck0 exists (index ")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_run_that_fails_to_start_reports_json(tmp_path):
    _, path = missing_interface(tmp_path)
    res = ixypipe("run", path, "--json", "--duration", "2")
    assert res.returncode == 1
    [line] = res.stdout.splitlines()
    doc = json.loads(line)
    assert doc["type"] == "error" and doc["exit_code"] == 1 and "port a (af_packet " in doc["message"]


def test_missing_tools_say_which_apt_get_line_brings_them():
    from tests.support.system import missing_tools

    assert missing_tools("sh") == ""
    assert missing_tools("no-such-tool-ixy", apt="ixy-tools") == \
        "needs no-such-tool-ixy (not installed): apt-get install ixy-tools"


@needs_root
def test_a_machine_without_ethtool_skips_the_testbed_tests_with_the_apt_line(tmp_path):
    """As on a fresh Debian machine: no ip or ethtool on PATH, so the veth-testbed tests skip, never error."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(IXYPIPE[0])
    res = subprocess.run([str(bin_dir / "python3"), "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                          "tests/test_af_packet.py", "-k", "byte_exact or too_long"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={"PATH": str(bin_dir), "PYTHONPATH": str(REPO), "HOME": os.environ.get("HOME", "/")})
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 skipped" in res.stdout and "error" not in res.stdout.lower()    # two tests, each on both hot paths
    assert res.stdout.count("needs ip, ethtool (not installed): apt-get install ethtool iproute2") == 2, res.stdout
