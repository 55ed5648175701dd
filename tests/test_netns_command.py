"""``ixypipe netns up|down|status``: a two-host testbed that outlives the command, its pipeline file, ping
through ixypipe running in its wire namespace, refusals (a name taken, an unknown name), forgetting a testbed
whose namespaces are gone, and the missing-interface error that says which namespace the process is in.

Every test keeps its state files in a directory of its own (IXYPIPE_NETNS_STATE), so ``down --all`` only
sees the test's own testbeds, and gives its testbeds unique names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from ixypipe.nic.netns_id import describe_netns, netns_name
from ixypipe.ops.netns import VethTestbed, list_namespaces
from tests.support.outputschema import validated
from tests.support.runs import IXYPIPE, REPO, summary_of
from tests.support.system import TESTBED_TOOLS, needs_root, require_tools

STARTUP_TIMEOUT = 120.0


@pytest.fixture
def netns_cmd(tmp_path):
    """``ixypipe netns ...`` with state in tmp_path; whatever a test left up is removed afterwards."""
    require_tools(*TESTBED_TOOLS, "ping")
    env = {**os.environ, "IXYPIPE_NETNS_STATE": str(tmp_path / "state")}

    def cmd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*IXYPIPE, "netns", *args], capture_output=True, text=True, timeout=timeout,
                              cwd=REPO, env=env)

    yield cmd
    cmd("down", "--all")


def unique() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def addresses(netns: str, ifname: str) -> list[str]:
    out = subprocess.run(["ip", "-n", netns, "-o", "-4", "addr", "show", "dev", ifname], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()]


def links(netns: str | None = None) -> list[str]:
    argv = ["ip", *(["-n", netns] if netns else []), "-o", "link"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


@needs_root
def test_up_builds_a_testbed_ixypipe_forwards_ping_through_and_down_removes_it(netns_cmd, tmp_path):
    name = unique()
    res = netns_cmd("up", "--name", name, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    [tb] = validated(res.stdout)                       # fits docs/schema/ixypipe-output.schema.json
    a, b, wire = tb["hosts"]["a"], tb["hosts"]["b"], tb["wire"]
    assert (tb["type"], tb["name"], tb["status"]) == ("netns_up", name, "up")
    assert tb["namespaces"] == [f"ixyn-{name}-a", f"ixyn-{name}-b", f"ixyn-{name}-w"] == [a["netns"], b["netns"],
                                                                                         wire]
    assert set(tb["namespaces"]) <= set(list_namespaces())
    assert addresses(a["netns"], "eth0") == ["10.77.0.1/24"] and addresses(b["netns"], "eth0") == ["10.77.0.2/24"]
    assert {a["outer"], b["outer"]} <= set(links(wire))
    assert not {a["outer"], b["outer"]} & set(links())                 # nothing in the root namespace
    pipeline = Path(tb["pipeline"])
    assert pipeline.parent == tmp_path / "state" and f'interface = "{a["outer"]}"' in pipeline.read_text()
    assert tb["commands"]["ping"] == f"sudo ip netns exec {a['netns']} ping 10.77.0.2"
    assert tb["commands"]["run"] == f'sudo ip netns exec {wire} "$(command -v ixypipe)" run {pipeline}'

    in_wire = ["ip", "netns", "exec", wire, *IXYPIPE, "run", str(pipeline)]
    check = subprocess.run([*in_wire, "--check"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"ok  port a: interface {a['outer']}: {a['outer']} exists" in check.stdout
    run = subprocess.Popen([*in_wire, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=REPO)
    try:
        assert run.stdout.readline().startswith("{"), run.stderr.read()      # the first interval: running
        ping = subprocess.run(["ip", "netns", "exec", a["netns"], "ping", "-n", "-c", "3", "-i", "0.5", "-W", "5",
                               "10.77.0.2"], capture_output=True, text=True, timeout=60)
        assert ping.returncode == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr
        [status] = validated(netns_cmd("status", "--json").stdout)
        assert [(t["name"], t["status"]) for t in status["testbeds"]] == [(name, "up")]
        down = netns_cmd("down", name, "--json")              # SIGTERM: the pipeline stops in order
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert down.returncode == 0, down.stdout + down.stderr
    [doc] = validated(down.stdout)
    assert (doc["type"], doc["removed"], doc["forgotten"]) == ("netns_down", [name], []) and run.pid in doc["stopped"]
    assert run.returncode == 0, err
    summary = summary_of(out)
    assert summary["ports"]["a"]["rx_packets"] >= 3 and summary["ports"]["b"]["rx_packets"] >= 3
    validated(out)                                      # the run in the testbed too: ready, intervals, summary
    assert not set(tb["namespaces"]) & set(list_namespaces())
    assert not pipeline.exists() and not Path(tb["state"]).exists()
    assert json.loads(netns_cmd("status", "--json").stdout)["testbeds"] == []


@needs_root
def test_a_second_up_of_a_name_is_refused_and_down_of_an_unknown_name_is_an_error(netns_cmd):
    name = unique()
    res = netns_cmd("up", "--name", name)
    assert res.returncode == 0, res.stderr
    assert f"testbed {name} is up" in res.stdout and f"host B: namespace ixyn-{name}-b, eth0 10.77.0.2/24" \
        in res.stdout and f"sudo ip netns exec ixyn-{name}-a ping 10.77.0.2" in res.stdout
    again = netns_cmd("up", "--name", name)
    assert again.returncode == 1
    assert again.stderr.startswith(f"error: testbed {name} exists already (") and \
        f"`ixypipe netns down {name}` removes it" in again.stderr
    assert json.loads(netns_cmd("status", "--json").stdout)["testbeds"][0]["status"] == "up"    # untouched

    # the kernel's own bridge between the outer ends, in the wire namespace: A reaches B
    state = json.loads(netns_cmd("status", "--json").stdout)["testbeds"][0]
    VethTestbed.from_state(state).add_bridge()
    ping = subprocess.run(["ip", "netns", "exec", f"ixyn-{name}-a", "ping", "-n", "-c", "1", "-W", "5",
                           "10.77.0.2"], capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0, ping.stdout + ping.stderr

    other = unique()
    res = netns_cmd("down", other)
    assert res.returncode == 1
    assert res.stderr == f"error: no testbed '{other}' (testbeds: {name}; `ixypipe netns status` lists them)\n"
    res = netns_cmd("down")
    assert res.returncode == 2 and "give a testbed's NAME or --all" in res.stderr
    res = netns_cmd("down", name)
    assert res.returncode == 0 and res.stdout.startswith(f"removed testbed {name} (ixyn-{name}-a, "), res.stderr
    assert not [n for n in list_namespaces() if name in n]


@needs_root
def test_a_testbed_whose_namespaces_are_gone_shows_as_gone_and_down_forgets_it(netns_cmd):
    gone, kept = unique(), unique()
    assert netns_cmd("up", "--name", gone).returncode == 0
    assert netns_cmd("up", "--name", kept).returncode == 0
    for suffix in "abw":
        subprocess.run(["ip", "netns", "del", f"ixyn-{gone}-{suffix}"], check=True)
    status = json.loads(netns_cmd("status", "--json").stdout)["testbeds"]
    assert sorted((t["name"], t["status"]) for t in status) == sorted([(gone, "gone"), (kept, "up")])
    res = netns_cmd("down", kept, "--json")                     # removes kept, forgets the gone one
    down = json.loads(res.stdout)
    assert down.pop("time") > 0 and down == {"type": "netns_down", "removed": [kept], "forgotten": [gone], "stopped": []}
    assert json.loads(netns_cmd("status", "--json").stdout)["testbeds"] == []
    assert not [n for n in list_namespaces() if gone in n or kept in n]


def test_a_bad_name_is_refused_before_anything_is_built(netns_cmd):
    res = netns_cmd("up", "--name", "a-b")
    assert res.returncode == 1
    assert res.stderr == "error: testbed name 'a-b': 1-16 letters, digits or '_', starting with a letter or digit\n"


# ---- which namespace the process is in, for the missing-interface error -----------------------

def test_the_namespace_is_named_by_its_inode(tmp_path):
    proc, run_dir = tmp_path / "proc", tmp_path / "netns"
    (proc / "self" / "ns").mkdir(parents=True)
    (proc / "1" / "ns").mkdir(parents=True)
    run_dir.mkdir()
    (proc / "self" / "ns" / "net").write_text("")
    (proc / "1" / "ns" / "net").write_text("")
    (run_dir / "other").write_text("")
    assert netns_name(proc, run_dir) == ""
    assert describe_netns(proc, run_dir).startswith("an unnamed namespace (net:[")
    os.link(proc / "self" / "ns" / "net", run_dir / "ixyn-x-w")          # `ip netns add` bind-mounts the file
    assert describe_netns(proc, run_dir) == "namespace ixyn-x-w"
    (proc / "1" / "ns" / "net").unlink()
    os.link(proc / "self" / "ns" / "net", proc / "1" / "ns" / "net")
    (run_dir / "ixyn-x-w").unlink()
    assert describe_netns(proc, run_dir) == "the root namespace"


@needs_root
def test_a_missing_interface_error_names_the_namespace_of_the_process(netns_cmd):
    name = unique()
    assert netns_cmd("up", "--name", name).returncode == 0
    code = ("from ixypipe.nic.af_packet import check_interface\n"
            "try:\n    check_interface('veth-a', 'a')\nexcept Exception as exc:\n    print(exc)")
    res = subprocess.run(["ip", "netns", "exec", f"ixyn-{name}-w", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert res.stdout == (f"port a: no such network interface 'veth-a' in this network namespace (namespace "
                          f"ixyn-{name}-w; `ip link` lists its interfaces, `ixypipe netns status` the testbeds and "
                          "where their interfaces are)\n"), res.stderr
