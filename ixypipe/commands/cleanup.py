"""``ixypipe cleanup``: remove shared-memory objects and hugepage files left by dead processes."""

import click

from ixypipe.memory.arena import remove_stale, stale_objects


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def command(dry_run: bool) -> None:
    """Remove ixypipe arenas in /dev/shm and hugetlbfs mounts whose owner process is dead."""
    found = stale_objects() if dry_run else remove_stale()
    for path in found:
        click.echo(f"{'would remove' if dry_run else 'removed'} {path}")
    if not found:
        click.echo("nothing to clean up")
