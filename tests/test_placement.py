"""CPU placement on fake sysfs trees (isolated CPUs, hyper-thread siblings, NUMA nodes) and on this machine's /sys."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from ixypipe.pipeline.placement import (
    CpuTopology,
    PlacementError,
    StageDemand,
    parse_cpu_list,
    pin,
    plan_placement,
    read_topology,
)

FWD_STAGES = [StageDemand("rx-p0-q0", "rx"), StageDemand("rx-p1-q0", "rx"), StageDemand("worker-0", "worker"),
              StageDemand("tx-p0-q0", "tx"), StageDemand("tx-p1-q0", "tx")]
SIM = StageDemand("sim", "sim")


def fake_sysfs(root: Path, cpus: str, isolated: str = "", siblings: list[str] | None = None,
               nodes: list[str] | None = None) -> Path:
    """A /sys with only what read_topology reads: online, isolated, thread siblings, NUMA node cpulists."""
    cpu_dir = root / "devices" / "system" / "cpu"
    cpu_dir.mkdir(parents=True)
    (cpu_dir / "online").write_text(cpus + "\n")
    (cpu_dir / "isolated").write_text(isolated + "\n")
    for group in siblings or [str(c) for c in parse_cpu_list(cpus)]:
        for cpu in parse_cpu_list(group):
            topo = cpu_dir / f"cpu{cpu}" / "topology"
            topo.mkdir(parents=True)
            (topo / "thread_siblings_list").write_text(group + "\n")
    for n, cpulist in enumerate(nodes or []):
        node = root / "devices" / "system" / "node" / f"node{n}"
        node.mkdir(parents=True)
        (node / "cpulist").write_text(cpulist + "\n")
    return root


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpu_list("") == [] and parse_cpu_list("\n") == [] and parse_cpu_list("5") == [5]
    with pytest.raises(ValueError, match=r"^'0-x' is not a CPU list such as '0-3,8,10-11'$"):
        parse_cpu_list("0-x")
    with pytest.raises(ValueError, match=r"^'4-2' is not a CPU list such as '0-3,8,10-11' \(bad range '4-2'\)$"):
        parse_cpu_list("4-2")


def test_read_topology_from_a_fake_tree(tmp_path):
    root = fake_sysfs(tmp_path, "0-7", isolated="2-3,6-7", siblings=["0,4", "1,5", "2,6", "3,7"],
                      nodes=["0-1,4-5", "2-3,6-7"])
    topo = read_topology(root)
    assert topo.cpus == list(range(8))
    assert topo.isolated == {2, 3, 6, 7}
    assert topo.siblings[0] == {4} and topo.siblings[7] == {3}
    assert topo.numa_node == {0: 0, 1: 0, 4: 0, 5: 0, 2: 1, 3: 1, 6: 1, 7: 1}


def test_isolated_cpus_are_used_first_and_the_simulator_gets_a_spare_one(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-5", isolated="1-3"))
    p = plan_placement([StageDemand("rx", "rx"), StageDemand("worker-0", "worker"), StageDemand("tx", "tx"), SIM],
                       topo)
    assert p.cpu_of == {"rx": 1, "worker-0": 2, "tx": 3, "sim": 5}
    assert p.oversubscribed is False and p.warnings == []


def test_hyper_thread_siblings_are_kept_apart_until_every_core_has_a_stage(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-3", siblings=["0,2", "1,3"]))
    p = plan_placement([StageDemand("a", "rx"), StageDemand("b", "worker")], topo)
    assert p.cpu_of == {"a": 0, "b": 1}                       # two cores, not CPU 0 and its sibling 2
    p = plan_placement([StageDemand(n, "worker") for n in "abcd"], topo)
    assert p.cpu_of == {"a": 0, "b": 1, "c": 2, "d": 3} and not p.oversubscribed


def test_a_stage_stays_on_its_nics_numa_node(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-7", nodes=["0-3", "4-7"]))
    p = plan_placement([StageDemand("rx-far", "rx", numa_node=1), StageDemand("tx-far", "tx", numa_node=1),
                        StageDemand("rx-near", "rx", numa_node=0), StageDemand("rx-nowhere", "rx", numa_node=5)],
                       topo)
    assert p.cpu_of == {"rx-far": 4, "tx-far": 5, "rx-near": 0, "rx-nowhere": 1}


def test_two_cpus_give_the_simulator_one_shared_with_the_worker(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-1"))
    p = plan_placement([*FWD_STAGES, SIM], topo)
    assert p.cpu_of == {"rx-p0-q0": 0, "rx-p1-q0": 0, "worker-0": 1, "tx-p0-q0": 0, "tx-p1-q0": 0, "sim": 1}
    assert p.oversubscribed is True
    assert p.warnings == ["6 polling stages share 2 CPUs: stages back off when idle (spin, sched_yield, sleep); "
                          "isolate CPUs (isolcpus=, nohz_full=) for full speed"]


def test_workers_join_the_simulator_only_when_the_other_cpus_run_out(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-5"))
    p = plan_placement([*FWD_STAGES, SIM], topo)
    assert p.cpu_of["sim"] not in {cpu for name, cpu in p.cpu_of.items() if name != "sim"}
    assert p.oversubscribed is False
    two_workers = [s for s in FWD_STAGES if s.role != "worker"] + [StageDemand(f"worker-{i}", "worker")
                                                                  for i in range(2)]
    p = plan_placement([*two_workers, SIM], read_topology(fake_sysfs(tmp_path / "two", "0-1")))
    assert p.cpu_of == {"rx-p0-q0": 0, "rx-p1-q0": 0, "tx-p0-q0": 0, "tx-p1-q0": 0, "worker-0": 1, "worker-1": 1,
                        "sim": 1}


def test_one_cpu_is_shared_by_everything_including_the_simulator(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0"))
    p = plan_placement([StageDemand("rx", "rx"), SIM], topo)
    assert p.cpu_of == {"rx": 0, "sim": 0}
    assert p.warnings[0].startswith("2 polling stages share 1 CPUs:")


def test_stages_spread_round_robin_when_there_are_more_than_cpus(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-2"))
    p = plan_placement([StageDemand(f"s{i}", "worker") for i in range(7)], topo)
    assert [p.cpu_of[f"s{i}"] for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert p.warnings[0].startswith("7 polling stages share 3 CPUs:")


def test_explicit_lists_are_used_in_turn_per_role(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-7", isolated="6-7"))
    demands = [StageDemand("rx-a", "rx"), StageDemand("rx-b", "rx"), *[StageDemand(f"w{i}", "worker") for i in range(3)],
               StageDemand("tx-a", "tx"), SIM]
    p = plan_placement(demands, topo, {"rx": [3], "worker": [4, 5], "tx": None, "sim": [0]})
    assert p.cpu_of == {"rx-a": 3, "rx-b": 3, "w0": 4, "w1": 5, "w2": 4, "tx-a": 6, "sim": 0}
    assert p.oversubscribed and p.warnings[0].startswith("4 polling stages share 2 CPUs:")


def test_explicit_cpus_leave_the_automatic_ones_room(tmp_path):
    # rx pinned by hand to CPU 1: the simulator takes the CPU nobody asked for, the rest share
    topo = read_topology(fake_sysfs(tmp_path, "0-1"))
    p = plan_placement([StageDemand("rx", "rx"), StageDemand("w", "worker"), StageDemand("tx", "tx"), SIM], topo,
                       {"rx": [1]})
    assert p.cpu_of == {"rx": 1, "sim": 0, "w": 1, "tx": 1}


def test_a_bad_explicit_cpu_is_refused(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, "0-3"))
    with pytest.raises(PlacementError) as info:
        plan_placement([StageDemand("rx-p0-q0", "rx"), StageDemand("worker-0", "worker")], topo, {"worker": [9]})
    assert str(info.value) == "CPU 9 (for worker-0) is not usable here; CPUs: 0, 1, 2, 3"


def test_read_topology_of_this_machine():
    topo = read_topology()
    allowed = os.sched_getaffinity(0)
    online = parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())
    assert topo.cpus == [c for c in online if c in allowed]
    assert set(topo.siblings) == set(topo.cpus)
    assert all(cpu not in sib for cpu, sib in topo.siblings.items())
    assert topo.isolated == set(parse_cpu_list(Path("/sys/devices/system/cpu/isolated").read_text()))
    if Path("/sys/devices/system/node/node0").is_dir():
        assert set(topo.cpus) <= set(topo.numa_node)
    p = plan_placement([*FWD_STAGES, SIM], topo)
    assert set(p.cpu_of.values()) <= set(topo.cpus) and set(p.cpu_of) == {d.name for d in [*FWD_STAGES, SIM]}


def test_pin_moves_a_process_and_refuses_a_missing_cpu():
    child = subprocess.Popen(["sleep", "30"])
    try:
        cpu = max(os.sched_getaffinity(0))
        pin(child.pid, cpu)
        assert psutil.Process(child.pid).cpu_affinity() == [cpu]
        with pytest.raises(PlacementError, match=rf"^cannot pin pid {child.pid} to CPU 4095: "):
            pin(child.pid, 4095)
    finally:
        child.kill()
        child.wait()
    with pytest.raises(PlacementError, match=rf"^cannot pin pid {child.pid} to CPU 0: "):
        pin(child.pid, 0)


def test_topology_dataclass_defaults():
    topo = CpuTopology(cpus=[0, 1])
    assert plan_placement([StageDemand("a", "rx"), StageDemand("b", "tx")], topo).cpu_of == {"a": 0, "b": 1}


# ---- ixypipe cores ------------------------------------------------------------------------------
FWD = Path(__file__).resolve().parent.parent / "pipelines" / "fwd.toml"


def cores(*args: str):
    from click.testing import CliRunner

    from ixypipe.cli import main

    return CliRunner().invoke(main, ["cores", "--interval", "0", *args])


def test_cpu_list_text():
    from ixypipe.commands.cores import cpu_list_text

    assert cpu_list_text([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8" and cpu_list_text([]) == "" and cpu_list_text({3}) == "3"


def test_cores_shows_the_placement_run_would_choose_on_isolated_cpus(tmp_path):
    root = fake_sysfs(tmp_path, "0-3", isolated="2-3")
    res = cores("--sysfs-root", str(root), str(FWD))
    assert res.exit_code == 0, res.output
    assert "CPUs usable here: 0-3 (4); isolated: 2-3" in res.output
    assert "\n   2     2     -       yes         -" in res.output
    lines = [line.split() for line in res.output.split("Placement for")[1].splitlines()[1:7]]
    assert lines == [["rx-p0-q0", "rx", "CPU", "2", "(isolated)"], ["rx-p1-q0", "rx", "CPU", "3", "(isolated)"],
                     ["worker-0", "worker", "CPU", "0"], ["tx-p0-q0", "tx", "CPU", "2", "(isolated)"],
                     ["tx-p1-q0", "tx", "CPU", "3", "(isolated)"], ["sim", "sim", "CPU", "1"]]
    assert "warning: 4 polling stages share 2 CPUs: stages back off when idle" in res.output
    assert "isolcpus" not in res.output.split("warning:")[0] and "No CPU is isolated" not in res.output


def test_cores_advises_isolcpus_when_nothing_is_isolated(tmp_path):
    res = cores("--sysfs-root", str(fake_sysfs(tmp_path / "a", "0-3", siblings=["0,2", "1,3"], nodes=["0-3"])))
    assert res.exit_code == 0, res.output
    assert "isolated: none" in res.output and "Placement for" not in res.output
    assert "To give the data plane CPUs 1,3 of its own (keeping core 0 for the system), add " \
           "'isolcpus=1,3 nohz_full=1,3 rcu_nocbs=1,3' to the kernel command line" in res.output
    res = cores("--sysfs-root", str(fake_sysfs(tmp_path / "b", "0")))
    assert "with a single CPU there is none to spare" in res.output


def test_cores_json_on_this_machine():
    res = cores("--json", str(FWD))
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["type"] == "cores"
    topo = read_topology()
    assert [c["cpu"] for c in out["cpus"]] == topo.cpus
    assert all(0.0 <= c["busy_percent"] <= 100.0 for c in out["cpus"])
    assert set(out["placement"]) == {"rx-p0-q0", "rx-p1-q0", "worker-0", "tx-p0-q0", "tx-p1-q0", "sim"}
    # other pipelines running on this machine (tests, helpers) hold CPUs; the command reports which, and its
    # placement is exactly the one for those holders, whether there are none or some
    held = {c["cpu"]: c["held_by"] for c in out["cpus"] if c["held_by"]}
    assert all(re.fullmatch(r"[^/]+\[\d+\]/[\w-]+", h) for holders in held.values() for h in holders), held
    assert out["placement"] == plan_placement([*FWD_STAGES, SIM], topo, held=held).cpu_of
    assert bool(out["advice"]) == (not topo.isolated)


def test_cores_names_a_bad_pipeline_file():
    bad = Path(__file__).resolve().parent / "bad_pipelines" / "processes_zero.toml"
    res = cores(str(bad))
    assert res.exit_code == 2
    assert f"error: {bad}: workers.processes (line 18): must be a whole number from 1 to 64, got 0" in res.output


def test_cpus_held_by_other_pipelines_are_used_last():
    topo = CpuTopology(cpus=[0, 1, 2, 3])
    held = {0: ["fwd[10]/rx-p0-q0", "fwd[10]/worker-0"], 1: ["fwd[10]/tx-p0-q0"]}
    p = plan_placement([StageDemand("rx-a-q0", "rx"), StageDemand("worker-0", "worker")], topo, held=held)
    assert sorted(p.cpu_of.values()) == [2, 3]
    assert not p.oversubscribed and p.warnings == []
    # with every CPU held, the least held one is shared, and that is said
    p = plan_placement(FWD_STAGES[:1], CpuTopology(cpus=[0, 1]), held=held)
    assert p.cpu_of == {"rx-p0-q0": 1} and p.oversubscribed
    assert p.warnings[-1] == "CPU 1 is shared with running pipelines: fwd[10] (1 stage)"


def test_a_running_pipeline_holds_its_stage_cpus_and_cores_shows_them(tmp_path):
    from ixypipe.pipeline.running import held_cpus
    from tests.support.runs import FWD, IXYPIPE, REPO, start, wait_for_stats

    proc = start([str(FWD), "--json"])
    try:
        wait_for_stats(proc)
        mine = {cpu: [s for s in stages if s.startswith(f"fwd[{proc.pid}]/")] for cpu, stages in held_cpus().items()}
        names = sorted(s.rsplit("/", 1)[1] for stages in mine.values() for s in stages)
        assert names == ["rx-p0-q0", "rx-p1-q0", "tx-p0-q0", "tx-p1-q0", "worker-0"]
        for cpu, stages in mine.items():
            assert cpu in os.sched_getaffinity(0) or not stages
        res = subprocess.run([*IXYPIPE, "cores", "--json", "--interval", "0"], capture_output=True, text=True,
                             cwd=REPO, timeout=60)
        doc = json.loads(res.stdout)
        shown = sorted(s.rsplit("/", 1)[1] for c in doc["cpus"] for s in c["held_by"] if f"[{proc.pid}]" in s)
        assert shown == names
    finally:
        proc.send_signal(2)
        proc.communicate(timeout=120)
