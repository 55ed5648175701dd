"""``hugepages = "require"`` fails ``ixypipe run --check`` when the run's arenas would not get their hugepages.

It used to pass --check with no hugepages at all and fail only when the
run created its arenas.  The counts come from a fake sysfs tree and mounts
file here (preflight's sysfs_root / mounts_file), so the machine's own
hugepages are never freed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.memory import arena as arena_mod
from ixypipe.memory import hugepages
from ixypipe.pipeline.config import load_pipeline
from ixypipe.pipeline.preflight import preflight
from tests.support.runs import variant
from tests.support.system import needs_root

WHAT = 'hugepages = "require"'


def fake_machine(tmp_path: Path, reserved: int, free: int, mounted: bool = True) -> tuple[str, str]:
    """A sysfs root with one 2 MiB pool and a mounts file (with a hugetlbfs mount or none)."""
    pool = tmp_path / "sys" / "kernel" / "mm" / "hugepages" / "hugepages-2048kB"
    pool.mkdir(parents=True)
    (pool / "nr_hugepages").write_text(f"{reserved}\n")
    (pool / "free_hugepages").write_text(f"{free}\n")
    huge = tmp_path / "huge"
    huge.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\n"
                      + (f"nodev {huge} hugetlbfs rw,relatime,pagesize=2M 0 0\n" if mounted else ""))
    return str(tmp_path / "sys"), str(mounts)


def hugepage_finding(cfg, tmp_path: Path, reserved: int, free: int, mounted: bool = True):
    sysfs, mounts = fake_machine(tmp_path / f"m{reserved}-{free}-{int(mounted)}", reserved, free, mounted)
    found = [f for f in preflight(cfg, sysfs_root=sysfs, mounts_file=mounts) if f.what == WHAT]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def require(tmp_path):
    return load_pipeline(variant(tmp_path, hugepages='"require"'))


@pytest.fixture
def as_root(monkeypatch):
    """The check as root would see it (sim ports want physical addresses, readable by root only)."""
    monkeypatch.setattr(arena_mod.os, "geteuid", lambda: 0)


def test_no_hugepages_fails_the_check_saying_how_to_reserve_them(require, tmp_path, as_root):
    f = hugepage_finding(require, tmp_path, reserved=0, free=0)
    assert not f.ok
    m = re.fullmatch(r"hugepages required but unavailable: the 2 arenas need (\d+) free 2 MiB hugepages but 0 are "
                     r"free; reserve them with 'ixypipe hugepages --reserve (\d+)' and mount hugetlbfs with "
                     r"'ixypipe hugepages --mount /mnt/huge' \(as root\)", f.message)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 2, f.message


def test_exactly_enough_free_pages_pass_and_one_fewer_fails(require, tmp_path, as_root):
    need = int(re.search(r"need (\d+) free", hugepage_finding(require, tmp_path, 0, 0).message).group(1))
    ok = hugepage_finding(require, tmp_path, reserved=need + 10, free=need)
    assert ok.ok and ok.message.endswith(f"fit in the free 2 MiB hugepages at {tmp_path / f'm{need + 10}-{need}-1' / 'huge'}")
    short = hugepage_finding(require, tmp_path, reserved=need + 10, free=need - 1)
    assert not short.ok
    # one more page than is reserved now: the reserved ones in use by others stay theirs
    assert f"need {need} free 2 MiB hugepages but {need - 1} are free; reserve them with " \
           f"'ixypipe hugepages --reserve {need + 11}'" in short.message


def test_without_a_hugetlbfs_mount_the_check_says_to_mount_one(require, tmp_path, as_root):
    f = hugepage_finding(require, tmp_path, reserved=4096, free=4096, mounted=False)
    assert not f.ok and f.message.startswith("hugepages required but unavailable: no hugetlbfs mount; reserve them")
    assert "'ixypipe hugepages --mount /mnt/huge'" in f.message


def test_not_root_fails_the_check_for_ports_that_need_physical_addresses(require, tmp_path, monkeypatch):
    monkeypatch.setattr(arena_mod.os, "geteuid", lambda: 1000)
    f = hugepage_finding(require, tmp_path, reserved=4096, free=4096)
    assert not f.ok
    assert f.message == "hugepages required but unavailable: not root, so physical addresses cannot be read"


def test_auto_and_never_check_no_hugepages(tmp_path):
    sysfs, mounts = fake_machine(tmp_path, 0, 0)
    for mode in ("auto", "never"):
        cfg = load_pipeline(variant(tmp_path, hugepages=f'"{mode}"'))
        assert [f for f in preflight(cfg, sysfs_root=sysfs, mounts_file=mounts) if f.what == WHAT] == []


def check(path: Path):
    return CliRunner().invoke(main, ["run", str(path), "--check"])


def test_run_check_exits_1_when_no_hugepages_are_free(tmp_path, monkeypatch, as_root):
    """The reproduction: the command itself, on a machine whose pool has none free."""
    monkeypatch.setattr(hugepages, "free_hugepages", lambda size=0, sysfs_root="/sys": 0)
    monkeypatch.setattr(hugepages, "hugetlbfs_mounts", lambda size=0, mounts_file="/proc/mounts": [Path("/mnt/huge")])
    res = check(variant(tmp_path, hugepages='"require"'))
    assert res.exit_code == 1, res.output
    assert f"FAILED  {WHAT}: hugepages required but unavailable: the 2 arenas need " in res.output
    assert "'ixypipe hugepages --reserve " in res.output
    assert res.output.rstrip().endswith("1 check failed")


@needs_root
def test_run_check_passes_with_the_machines_hugepages(tmp_path, hugepages_ready):
    res = check(variant(tmp_path, hugepages='"require"'))
    assert res.exit_code == 0, res.output
    assert re.search(rf"ok  {re.escape(WHAT)}: \d+ MiB of arenas fit in the free 2 MiB hugepages at /", res.output)
    assert res.output.rstrip().endswith("ok") and os.geteuid() == 0
