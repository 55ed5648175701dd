"""Leftovers: arenas of a process that was SIGKILLed are found, removed and reported."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from ixypipe.cli import main
from ixypipe.layout import ARENA_PREFIX
from ixypipe.memory import arena as arena_mod
from ixypipe.memory.arena import Arena, owner_pid_of, remove_stale, stale_objects


def _make_arena_and_hang(conn, mode: str) -> None:
    arena = Arena.create(1 << 20, hugepages_mode=mode, tag="victim")
    conn.send(str(arena.path))
    time.sleep(60)


@pytest.fixture
def killed_arena():
    """The path of an arena whose creator was SIGKILLed (removed afterwards if a test left it)."""
    made = []

    def make(mode: str = "never") -> Path:
        ctx = mp.get_context("fork")
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=_make_arena_and_hang, args=(child_end, mode))
        child.start()
        assert parent_end.poll(30), "the child made no arena"
        path = Path(parent_end.recv())
        made.append(path)
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        assert child.exitcode == -signal.SIGKILL
        return path

    yield make
    for path in made:
        path.unlink(missing_ok=True)


@pytest.mark.alone                  # a pipeline starting beside it would remove the stale files it checks
def test_a_killed_process_leaves_its_arena_and_remove_stale_removes_it(killed_arena, make_arena):
    path = killed_arena("never")
    assert path.exists()
    alive = make_arena(1 << 20, "never")
    found = stale_objects([path.parent])
    assert path in found and alive.path not in found
    removed = remove_stale([path.parent])
    assert path in removed and alive.path not in removed
    assert not path.exists() and alive.path.exists()


@pytest.mark.alone                  # a pipeline starting beside it would remove the stale files it checks
def test_ixypipe_cleanup_says_what_it_removes(killed_arena):
    path = killed_arena("auto")           # on hugetlbfs when root, in /dev/shm otherwise
    runner = CliRunner()
    dry = runner.invoke(main, ["cleanup", "--dry-run", "--dir", str(path.parent)])
    assert dry.exit_code == 0, dry.output
    assert f"would remove {path}\n" in dry.output
    assert path.exists()
    done = runner.invoke(main, ["cleanup", "--dir", str(path.parent)])
    assert done.exit_code == 0, done.output
    assert f"removed {path}\n" in done.output
    assert not path.exists()


def test_cleanup_with_nothing_stale_says_so(tmp_path):
    (tmp_path / f"{ARENA_PREFIX}{os.getpid()}-mine").touch()
    (tmp_path / "not-ours").touch()
    result = CliRunner().invoke(main, ["cleanup", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    assert result.output == "nothing to clean up\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{ARENA_PREFIX}{os.getpid()}-mine", "not-ours"])


def test_cleanup_json_lists_then_removes_the_stale_file(tmp_path):
    stale = tmp_path / f"{ARENA_PREFIX}{_dead_pid()}-gone"
    stale.touch()
    (tmp_path / f"{ARENA_PREFIX}{os.getpid()}-mine").touch()
    runner = CliRunner()
    dry = json.loads(runner.invoke(main, ["cleanup", "--dry-run", "--json", "--dir", str(tmp_path)]).output)
    assert (dry["type"], dry["dry_run"], dry["paths"]) == ("cleanup", True, [str(stale)]) and stale.exists()
    done = runner.invoke(main, ["--json", "cleanup", "--dir", str(tmp_path)])
    assert done.exit_code == 0 and done.output.count("\n") == 1, done.output            # one object, no text
    doc = json.loads(done.output)
    assert (doc["dry_run"], doc["paths"]) == (False, [str(stale)]) and not stale.exists()
    assert all({"pid", "name", "stage", "run"} == set(p) for p in doc["processes"])


def _dead_pid() -> int:
    child = mp.get_context("fork").Process(target=os._exit, args=(0,))
    child.start()
    child.join()
    return child.pid


def test_only_ixypipe_names_with_dead_owners_are_stale(tmp_path):
    dead = _dead_pid()
    names = {
        f"{ARENA_PREFIX}{dead}-pkt-0123456789abcdef": True,
        f"sem.{ARENA_PREFIX}{dead}-lock": True,            # a posix_ipc semaphore
        f"{ARENA_PREFIX}{os.getpid()}-dev-0123456789abcdef": False,
        f"{ARENA_PREFIX}notapid-x": False,
        f"other-{dead}-x": False,
    }
    for name in names:
        (tmp_path / name).touch()
    assert sorted(p.name for p in stale_objects([tmp_path])) == sorted(n for n, s in names.items() if s)
    assert owner_pid_of(f"sem.{ARENA_PREFIX}{dead}-lock") == dead
    assert owner_pid_of("other") is None


def test_a_reused_pid_does_not_keep_an_old_file_alive():
    me = psutil.Process()
    started = me.create_time()
    # a file made well before this process started cannot be this process's
    assert not arena_mod._owner_alive(me.pid, started - 10 * arena_mod.PID_REUSE_SLACK_S)
    assert arena_mod._owner_alive(me.pid, time.time())
    assert not arena_mod._owner_alive(_dead_pid(), time.time())
