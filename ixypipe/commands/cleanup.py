"""``ixypipe cleanup``: remove shared-memory objects, hugepage files and simulator trees left by dead processes.

An object is stale when the pid in its name (``ixypipe-<pid>-...``) is gone
or belongs to a process younger than the object; the supervisor runs the
same clean-up at every start.  Processes a run left behind when its
supervisor was killed (a worker's children: pipeline/leftovers.py) are
named and killed too.
"""

from __future__ import annotations

from pathlib import Path

import click

from ixypipe.commands.options import emit_json, wants_json
from ixypipe.memory.arena import remove_stale, stale_objects
from ixypipe.pipeline import leftovers
from ixypipe.sim import sysfs as sim_sysfs


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--dir", "directories", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Look only in this directory (repeatable); default: /dev/shm and every hugetlbfs mount.")
def command(dry_run: bool, directories: tuple[Path, ...]) -> None:
    """Remove ixypipe arenas in /dev/shm and hugetlbfs mounts, and software-82599 device trees,
    whose owner process is dead, and processes left running by a run that is gone.

    \b
    --json: one object, {"type": "cleanup", "dry_run": ..., "processes": [killed or to kill],
    "paths": [removed or to remove]}."""
    processes = [leftovers.describe(p) for p in leftovers.orphans()] if dry_run else leftovers.kill_orphans()
    for left in [] if wants_json() else processes:
        click.echo(f"{'would kill' if dry_run else 'killed'} {left.describe()}, left by the run of pid {left.run}")
    dirs = list(directories) or None
    found = stale_objects(dirs) if dry_run else remove_stale(dirs)
    trees = sim_sysfs.stale_roots(*(dirs[:1] if dirs else []))
    for tree in trees:
        if not dry_run:
            sim_sysfs.remove_tree(tree)
    found = [*found, *trees]
    if wants_json():
        emit_json({"type": "cleanup", "dry_run": dry_run,
                   "processes": [{"pid": p.pid, "name": p.name, "stage": p.stage, "run": p.run} for p in processes],
                   "paths": [str(path) for path in found]})
        return
    for path in found:
        click.echo(f"{'would remove' if dry_run else 'removed'} {path}")
    if not found and not processes:
        click.echo("nothing to clean up")
