"""ixypipe hugepages: pools per size and node, reserve and mount, on fake sysfs trees and this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.memory import hugepages as memhuge
from ixypipe.ops.hugepages import (
    HugepageSetupError,
    hugepage_pools,
    mount,
    parse_size,
    reserve,
    status_lines,
)
from tests.support.system import needs_root


def make_tree(root: Path) -> Path:
    """Two page sizes, two NUMA nodes; 2M: 512 reserved (300 free) split 256/256."""
    def pool(base: Path, kib: int, total: int, free: int, surplus: int = 0) -> None:
        d = base / f"hugepages-{kib}kB"
        d.mkdir(parents=True)
        for name, value in (("nr_hugepages", total), ("free_hugepages", free), ("surplus_hugepages", surplus)):
            (d / name).write_text(f"{value}\n")

    pool(root / "kernel/mm/hugepages", 2048, 512, 300)
    pool(root / "kernel/mm/hugepages", 1048576, 2, 2, 1)
    for n, free in ((0, 100), (1, 200)):
        base = root / f"devices/system/node/node{n}/hugepages"
        pool(base, 2048, 256, free)
        pool(base, 1048576, 1, 1)
    (root / "devices/system/node/online").write_text("0-1\n")
    return root


@pytest.fixture
def tree(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\nnodev /mnt/huge hugetlbfs rw,relatime,pagesize=2M 0 0\n")
    return make_tree(tmp_path / "sys"), mounts


def test_pools_per_size_and_node(tree):
    root, _ = tree
    got = [(p.size, p.node, p.total, p.free, p.used, p.surplus) for p in hugepage_pools(root)]
    assert got == [(2 << 20, None, 512, 300, 212, 0), (2 << 20, 0, 256, 100, 156, 0), (2 << 20, 1, 256, 200, 56, 0),
                   (1 << 30, None, 2, 2, 0, 1), (1 << 30, 0, 1, 1, 0, 0), (1 << 30, 1, 1, 1, 0, 0)]


def test_status_table_and_unmounted_size_note(tree):
    root, mounts = tree
    assert status_lines(root, str(mounts)) == [
        "SIZE  NODE      RESERVED      FREE    IN USE   SURPLUS",
        "2M    all            512       300       212         0",
        "2M    0              256       100       156         0",
        "2M    1              256       200        56         0",
        "1G    all              2         2         0         1",
        "1G    0                1         1         0         0",
        "1G    1                1         1         0         0",
        "",
        "mounted: /mnt/huge hugetlbfs pagesize=2M" + ("" if Path("/mnt/huge").exists() else
                                                       " (not writable by you)"),
        "note: 1G pages are reserved but no hugetlbfs of that size is mounted",
    ]


def test_no_hugepages_at_all(tmp_path):
    assert status_lines(tmp_path, str(tmp_path / "none")) == [
        f"this kernel offers no hugepages (no {tmp_path}/kernel/mm/hugepages)"]


def test_reserve_system_wide_and_per_node(tree):
    root, _ = tree
    pool = reserve(1024, 2 << 20, sysfs_root=root, geteuid=lambda: 0)
    assert (root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "1024\n"
    assert (pool.total, pool.node) == (1024, None)
    reserve(8, 1 << 30, node=1, sysfs_root=root, geteuid=lambda: 0)
    assert (root / "devices/system/node/node1/hugepages/hugepages-1048576kB/nr_hugepages").read_text() == "8\n"
    assert (root / "devices/system/node/node0/hugepages/hugepages-1048576kB/nr_hugepages").read_text() == "1\n"


@pytest.mark.parametrize("kwargs, message", [
    ({"geteuid": lambda: 1000}, r"reserving 2M hugepages needs root \(run it with sudo\)"),
    ({"size": 16 << 10}, "this machine has no 16K hugepages; sizes offered: 2M, 1G"),
    ({"node": 5}, "there is no NUMA node 5; nodes: 0, 1"),
    ({"count": -1}, r"cannot reserve a negative number of hugepages \(-1\)"),
])
def test_reserve_refusals(tree, kwargs, message):
    root, _ = tree
    args = {"count": 4, "size": 2 << 20, "sysfs_root": root, "geteuid": lambda: 0} | kwargs
    with pytest.raises(HugepageSetupError, match=message):
        reserve(**args)


def test_reserve_write_failure_names_the_file(tree):
    root, _ = tree
    target = root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    target.unlink()
    target.mkdir()
    with pytest.raises(HugepageSetupError, match=f"writing 9 to {target} failed: Is a directory"):
        reserve(9, sysfs_root=root, geteuid=lambda: 0)


def test_reserve_beyond_the_machine_is_refused_before_anything_is_written(tree):
    root, _ = tree
    target = root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    with pytest.raises(HugepageSetupError, match=r"99999999999999 2M hugepages are 209715199999997902848 bytes, "
                                                 r"more than this machine's memory \(1073741824 bytes: at most "
                                                 r"512 pages\)"):
        reserve(99999999999999, sysfs_root=root, geteuid=lambda: 0, mem_total=1 << 30)
    assert target.read_text() == "512\n"
    assert reserve(512, sysfs_root=root, geteuid=lambda: 0, mem_total=1 << 30).total == 512   # all of it is fine


def test_fewer_pages_than_asked_are_given_back(tree):
    """The kernel grants what it can (22.5 of 23 GB once): the old count goes back and the error says so."""
    root, _ = tree
    target = root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
    written = []

    def kernel(path: Path, count: int) -> None:         # a kernel with room for 600 pages
        written.append(count)
        path.write_text(f"{min(count, 600)}\n")

    with pytest.raises(HugepageSetupError, match=r"asked for 1000 2M hugepages but the kernel reserved only 600, "
                                                 r"put back to the 512 reserved before: memory is short"):
        reserve(1000, sysfs_root=root, geteuid=lambda: 0, write=kernel)
    assert written == [1000, 512]
    assert target.read_text() == "512\n"


def test_mount_point_must_be_an_absolute_existing_empty_directory_outside_proc_and_sys(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("")
    ran = []
    for where, message in [("", "mount point '' is not an absolute path"),
                           ("huge", "mount point 'huge' is not an absolute path"),
                           ("/proc/xyz", "mount point '/proc/xyz' is on procfs"),
                           ("/proc", "mount point '/proc' is on procfs"),
                           ("/sys/kernel/mm", "mount point '/sys/kernel/mm' is on sysfs"),
                           (str(tmp_path / "missing"), "does not exist; make it first"),
                           (str(tmp_path), "the directory is not empty")]:
        with pytest.raises(HugepageSetupError, match=message):
            mount(where, mounts_file=str(mounts), geteuid=lambda: 0, run=lambda *a, **k: ran.append(a))
    assert ran == [] and not (tmp_path / "missing").exists()


def test_parse_size():
    assert [parse_size(s) for s in ("2M", "2MB", "1G", "2048k", "4096")] == [2 << 20, 2 << 20, 1 << 30, 2 << 20, 4096]
    with pytest.raises(HugepageSetupError, match="hugepage size 'huge' is not a size like 2M or 1G"):
        parse_size("huge")


def test_mount_refusals(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"nodev {tmp_path / 'h'} hugetlbfs rw,pagesize=1G 0 0\n")
    with pytest.raises(HugepageSetupError, match="already a hugetlbfs mount of 1G pages, not 2M; unmount it first"):
        mount(tmp_path / "h", 2 << 20, mounts_file=str(mounts), geteuid=lambda: 0)
    assert mount(tmp_path / "h", 1 << 30, mounts_file=str(mounts), geteuid=lambda: 0) is False
    with pytest.raises(HugepageSetupError, match=f"mounting hugetlbfs at {tmp_path / 'x'} needs root"):
        mount(tmp_path / "x", mounts_file=str(mounts), geteuid=lambda: 1000)
    (tmp_path / "file").write_text("")
    with pytest.raises(HugepageSetupError, match="it is not a directory"):
        mount(tmp_path / "file", mounts_file=str(mounts), geteuid=lambda: 0)


@needs_root
def test_mount_for_real_then_unmount(tmp_path):
    where = tmp_path / "huge"
    where.mkdir()
    try:
        assert mount(where) is True
        assert (where, 2 << 20) in memhuge.hugetlbfs_mount_table()
        assert mount(where) is False                   # already there
    finally:
        subprocess.run(["umount", str(where)], check=False)
    assert (where, 2 << 20) not in memhuge.hugetlbfs_mount_table()


def test_cli_on_fake_tree(tree):
    root, mounts = tree
    runner = CliRunner()
    res = runner.invoke(main, ["hugepages", "--sysfs-root", str(root), "--mounts-file", str(mounts)])
    assert res.exit_code == 0 and "2M    1              256       200        56         0" in res.output
    res = runner.invoke(main, ["hugepages", "--sysfs-root", str(root), "--mounts-file", str(mounts),
                               "--reserve", "64", "--node", "0"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("reserved 64 2M hugepages on node 0 (100 free)\n")
    res = runner.invoke(main, ["hugepages", "--node", "0"])
    assert res.exit_code == 2 and "--node goes with --reserve" in res.output
    res = runner.invoke(main, ["hugepages", "--sysfs-root", str(root), "--reserve", "1", "--size", "4M"])
    assert res.exit_code == 1 and "this machine has no 4M hugepages; sizes offered: 2M, 1G" in res.output


@pytest.mark.parametrize("args, message", [
    (["--reserve", "99999999999999"], "99999999999999 2M hugepages are 209715199999997902848 bytes, more than "
                                      "this machine's memory"),
    (["--reserve", "-1"], "-1 is not in the range 0<=x<="),
    (["--reserve", "1e3"], "'1e3' is not a valid integer"),
    (["--mount", ""], "mount point '' is not an absolute path"),
    (["--mount", "."], "mount point '.' is not an absolute path"),
    (["--mount", "/proc/xyz"], "mount point '/proc/xyz' is on procfs"),
    (["--mount", "/sys/fs"], "mount point '/sys/fs' is on sysfs"),
])
def test_cli_refuses_bad_values_before_touching_anything(args, message, tree):
    """Each is refused by its option (exit 2) before any write or mount (a fake sysfs tree: were a value ever
    taken, this machine's reservation stays as it is)."""
    root, mounts = tree
    res = CliRunner().invoke(main, ["hugepages", "--sysfs-root", str(root), "--mounts-file", str(mounts), *args])
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{args[0]}': {message}" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert (root / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text() == "512\n"


@needs_root
def test_cli_refuses_a_missing_or_non_empty_mount_point(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("x")
    for where, message in [(tmp_path / "missing", f"mount point {tmp_path / 'missing'} does not exist; make it "
                                                  f"first (mkdir -p {tmp_path / 'missing'})"),
                           (tmp_path / "full", f"cannot mount hugetlbfs at {tmp_path / 'full'}: the directory is "
                                               "not empty (a mount would hide what is in it)")]:
        res = CliRunner().invoke(main, ["hugepages", "--mount", str(where)])
        assert res.exit_code == 2, res.output
        assert f"Invalid value for '--mount': {message}" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    assert (tmp_path / "full", 2 << 20) not in memhuge.hugetlbfs_mount_table()


def test_this_machine_read_only():
    lines = status_lines()
    if not hugepage_pools():
        pytest.skip("this kernel offers no hugepages")
    row = next(line for line in lines if line.startswith("2M    all"))
    assert int(row.split()[2]) == memhuge.total_hugepages()
    for path in memhuge.hugetlbfs_mounts():
        assert f"mounted: {path} hugetlbfs pagesize=2M" in lines
