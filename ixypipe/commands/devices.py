"""``ixypipe devices``: the network PCI devices, their drivers and interfaces, 82599s marked."""

from __future__ import annotations

import click


@click.command()
@click.option("--sysfs-root", default="/sys", hidden=True)
@click.option("--proc-root", default="/proc", hidden=True)
def devices(sysfs_root: str, proc_root: str) -> None:
    """List network PCI devices, like dpdk-devbind --status.

    \b
    Each line: PCI address, vendor:device id, 'Intel 82599' for the NICs
    ixypipe drives, kernel interfaces, the bound driver, NUMA node, and
    *Active* when an interface is up and carries routes.
      0000:03:00.0 8086:10fb Intel 82599 if=eth1 drv=ixgbe numa=0
    Take a device with 'ixypipe bind ADDRESS'; give it back with 'ixypipe unbind ADDRESS'.
    """
    from ixypipe.ops.pcidevs import list_network_devices, status_lines

    for line in status_lines(list_network_devices(sysfs_root, proc_root)):
        click.echo(line)
