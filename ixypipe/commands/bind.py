"""``ixypipe bind ADDR`` / ``ixypipe unbind ADDR``: take a NIC from its kernel driver, and give it back."""

from __future__ import annotations

import click

_common = [
    click.argument("address"),
    click.option("--force", is_flag=True, help="Also for an interface that is up and carries routes, "
                 "a device in use by ixypipe, or a device that is not a network controller."),
    click.option("--sysfs-root", default="/sys", hidden=True),
    click.option("--proc-root", default="/proc", hidden=True),
]


def _with_common(f):
    for decorator in reversed(_common):
        f = decorator(f)
    return f


def _run(action, address: str, driver: str | None, force: bool, sysfs_root: str, proc_root: str) -> None:
    """Do ``action``; print what it said, or with --json one object: the address, its driver now, the message."""
    from ixypipe.commands.options import emit_json, wants_json
    from ixypipe.ops.binding import BindError, driver_of

    try:
        said = action(address, driver=driver, force=force, sysfs_root=sysfs_root, proc_root=proc_root)
    except BindError as exc:
        raise click.ClickException(str(exc)) from exc
    if wants_json():
        full, now = driver_of(address, sysfs_root)
        emit_json({"type": click.get_current_context().info_name, "address": full, "driver": now,
                   "message": said})
        return
    click.echo(said)


@click.command()
@_with_common
@click.option("--vfio", is_flag=True, help="Bind to vfio-pci instead of leaving the device without a driver.")
@click.option("--driver", metavar="NAME", help="Bind to this user-space driver (e.g. uio_pci_generic).")
def bind(address: str, force: bool, sysfs_root: str, proc_root: str, vfio: bool, driver: str | None) -> None:
    """Take the network device at ADDRESS from its kernel driver, for ixypipe (root).

    \b
    ixypipe's 82599 driver maps BAR0 itself and needs no kernel driver;
    --vfio hands the device to vfio-pci instead (refused while the IOMMU
    is off) and reports its IOMMU group, the other devices in it and what
    a user without root needs. Refused when one of the device's interfaces
    is up and carries routes, unless --force.
    Examples:
      ixypipe bind 0000:03:00.0
      ixypipe bind 03:00.1 --vfio
    """
    from ixypipe.ops.binding import take

    if vfio and driver and driver != "vfio-pci":
        raise click.UsageError("--vfio and --driver name different drivers")
    _run(take, address, "vfio-pci" if vfio else driver, force, sysfs_root, proc_root)


@click.command()
@_with_common
@click.option("--driver", metavar="NAME", help="Bind this kernel driver instead of the one the kernel picks.")
def unbind(address: str, force: bool, sysfs_root: str, proc_root: str, driver: str | None) -> None:
    """Give the device at ADDRESS back to its kernel driver (e.g. ixgbe) (root).

    \b
    Detaches vfio-pci (or whatever user-space driver has it), clears the
    driver override and lets the kernel probe. Refused while an ixypipe
    process uses the device, unless --force.
    """
    from ixypipe.ops.binding import give_back

    _run(give_back, address, driver, force, sysfs_root, proc_root)
