"""``ixypipe hugepages``: show reserved, free and mounted hugepages; --reserve and --mount set them up."""

from __future__ import annotations

import click

from ixypipe.commands.options import Count


@click.command()
@click.option("--reserve", type=Count(min=0), metavar="N",
              help="Reserve N pages of --size (root). 0 releases them.")
@click.option("--mount", "mount_path", type=click.Path(file_okay=False), metavar="PATH",
              help="Mount hugetlbfs of --size pages at PATH, an existing empty directory (root).")
@click.option("--size", default="2M", show_default=True, help="Page size for --reserve and --mount: 2M or 1G.")
@click.option("--node", type=click.IntRange(min=0), help="With --reserve: reserve on this NUMA node only.")
@click.option("--sysfs-root", default="/sys", hidden=True)
@click.option("--mounts-file", default="/proc/mounts", hidden=True)
def command(reserve, mount_path, size, node, sysfs_root, mounts_file) -> None:
    """Show hugepages per size and NUMA node, and the hugetlbfs mounts.

    \b
    Examples:
      ixypipe hugepages                              what is reserved, free, mounted
      ixypipe hugepages --reserve 1024               2 GiB of 2 MiB pages (root)
      ixypipe hugepages --reserve 512 --node 0       on NUMA node 0 only
      ixypipe hugepages --mount /mnt/huge            mount hugetlbfs (root)
      ixypipe hugepages --reserve 4 --size 1G --mount /mnt/huge-1G
    """
    from ixypipe.commands.options import emit_json, wants_json
    from ixypipe.ops.hugepages import (
        HugepageSetupError,
        MountPointError,
        check_mount_point,
        check_reserve,
        format_size,
        mount,
        parse_size,
        status,
        status_lines,
    )
    from ixypipe.ops.hugepages import reserve as do_reserve

    if node is not None and reserve is None:
        raise click.UsageError("--node goes with --reserve")
    try:
        page = parse_size(size)
    except HugepageSetupError as exc:
        raise click.BadParameter(str(exc), param_hint="'--size'") from exc
    for value, check, hint in ((reserve, lambda: check_reserve(reserve, page), "'--reserve'"),
                               (mount_path, lambda: check_mount_point(mount_path), "'--mount'")):
        try:
            if value is not None:
                check()
        except HugepageSetupError as exc:
            raise click.BadParameter(str(exc), param_hint=hint) from None
    said = (lambda text: None) if wants_json() else click.echo
    try:
        if reserve is not None:
            pool = do_reserve(reserve, page, node, sysfs_root=sysfs_root)
            where = "" if node is None else f" on node {node}"
            said(f"reserved {pool.total} {format_size(page)} hugepages{where} ({pool.free} free)")
        if mount_path is not None:
            made = mount(mount_path, page, mounts_file=mounts_file)
            said(f"{'mounted' if made else 'already mounted:'} hugetlbfs pagesize={format_size(page)} "
                       f"at {mount_path}")
    except MountPointError as exc:                # missing or not empty: found out only when mounting
        raise click.BadParameter(str(exc), param_hint="'--mount'") from None
    except HugepageSetupError as exc:
        raise click.ClickException(str(exc)) from exc
    if wants_json():
        emit_json(status(sysfs_root, mounts_file))
        return
    for line in status_lines(sysfs_root, mounts_file):
        click.echo(line)
