"""Finds the pipelines running on this host by their shared stats.

A running pipeline's supervisor owns a packet arena, a file named
``ixypipe-<pid>-pkt-<hex>`` in /dev/shm or a hugetlbfs mount, holding the
stage table and the ``plan.json`` region.  This module lists such files
whose owner process is alive and whose plan can be read, picks one by pid
or pipeline name for ``ixypipe top``, and tells which CPUs the stages of
running pipelines hold (so automatic placement can avoid them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from ixypipe.layout import ARENA_CONTROL_SUFFIX, ARENA_PREFIX
from ixypipe.memory import hugepages
from ixypipe.memory.arena import SHM_DIR, Arena, ArenaError, owner_pid_of
from ixypipe.pipeline.planinfo import PlanInfoError, read_plan_info

PACKET_ARENA_TAG = "pkt"


class NoPipelineError(Exception):
    """No running pipeline matches; the message says where it looked and what it found."""


@dataclass(frozen=True)
class RunningPipeline:
    path: Path
    pid: int
    name: str

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, {self.path})"


def search_directories() -> list[Path]:
    return [SHM_DIR, *hugepages.hugetlbfs_mounts()]


def owner_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def is_packet_arena(name: str) -> bool:
    pid = owner_pid_of(name)
    return (pid is not None and name.startswith(f"{ARENA_PREFIX}{pid}-{PACKET_ARENA_TAG}-")
            and not name.endswith(ARENA_CONTROL_SUFFIX))


def find_pipelines(directories: list[Path] | None = None) -> list[RunningPipeline]:
    """Every packet arena whose owner is alive and whose plan is readable, oldest pid first."""
    found = []
    for d in directories if directories is not None else search_directories():
        try:
            entries = sorted(Path(d).iterdir())
        except OSError:
            continue
        for entry in entries:
            if not is_packet_arena(entry.name) or not owner_alive(owner_pid_of(entry.name)):
                continue
            try:
                arena = Arena.attach(entry, read_only=True)
            except ArenaError:
                continue            # being made or being removed
            try:
                info = read_plan_info(arena)
            except PlanInfoError:
                continue
            finally:
                arena.close()
            found.append(RunningPipeline(entry, owner_pid_of(entry.name), info.get("name", "?")))
    return sorted(found, key=lambda p: p.pid)


def held_cpus(exclude_pid: int | None = None, directories: list[Path] | None = None) -> dict[int, list[str]]:
    """CPU -> the stages of running pipelines pinned there ("<pipeline>/<stage>"), this supervisor's left out."""
    from ixypipe.pipeline import stagetable

    held: dict[int, list[str]] = {}
    for p in find_pipelines(directories):
        if p.pid == exclude_pid:
            continue
        try:
            arena = Arena.attach(p.path, read_only=True)
        except ArenaError:
            continue
        try:
            info = read_plan_info(arena)
            rows = stagetable.table(arena).copy()
        except (PlanInfoError, ArenaError):
            continue
        finally:
            arena.close()
        for stage in info.get("stages", []):
            row = rows[stage["row"]] if 0 <= stage.get("row", -1) < len(rows) else None
            if row is None or int(row["pid"]) <= 0 or not owner_alive(int(row["pid"])):
                continue
            cpu = int(row["cpu"])
            if cpu >= 0:
                held.setdefault(cpu, []).append(f"{p.name}[{p.pid}]/{stage['name']}")
    return held


def holders_text(stages: list[str]) -> str:
    """["fwd[12]/rx-p0-q0", "fwd[12]/worker-0", "b[40]/tx-a-q0"] -> "fwd[12] (2 stages), b[40] (1 stage)"."""
    per: dict[str, int] = {}
    for s in stages:
        pipeline = s.rsplit("/", 1)[0]
        per[pipeline] = per.get(pipeline, 0) + 1
    return ", ".join(f"{k} ({n} stage{'s' if n > 1 else ''})" for k, n in per.items())


def choose_pipeline(which: str | None, directories: list[Path] | None = None) -> RunningPipeline:
    """The one running pipeline ``which`` names (a supervisor pid or a pipeline name; None: the only one)."""
    dirs = directories if directories is not None else search_directories()
    running = find_pipelines(dirs)
    where = ", ".join(str(d) for d in dirs)
    if not running:
        raise NoPipelineError(f"no running pipeline found (looked for {ARENA_PREFIX}<pid>-{PACKET_ARENA_TAG}-* "
                              f"arenas with a live owner in {where}); start one with "
                              "'ixypipe run pipelines/fwd.toml'")
    listing = "; ".join(p.describe() for p in running)
    if which is None:
        if len(running) > 1:
            raise NoPipelineError(f"{len(running)} pipelines are running, name one by pid or name: {listing}")
        return running[0]
    matches = [p for p in running if (which.isdigit() and p.pid == int(which)) or p.name == which]
    if not matches:
        raise NoPipelineError(f"no running pipeline has pid or name {which!r}; running: {listing}")
    if len(matches) > 1:
        raise NoPipelineError(f"{len(matches)} running pipelines are named {which!r}, name one by pid: {listing}")
    return matches[0]
