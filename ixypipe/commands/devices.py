"""``ixypipe devices``: the network PCI devices, their drivers and interfaces, 82599s marked."""

from __future__ import annotations

import click


@click.command()
@click.option("--sysfs-root", default="/sys", hidden=True)
@click.option("--proc-root", default="/proc", hidden=True)
@click.option("--pci-ids", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The PCI id database for names (default: /usr/share/misc/pci.ids or /usr/share/hwdata/pci.ids; "
                   "without one, ids only).")
def devices(sysfs_root: str, proc_root: str, pci_ids: str | None) -> None:
    """List network PCI devices, like dpdk-devbind --status.

    \b
    Each line: PCI address, vendor:device id, the name from the system's
    pci.ids (Debian package pci.ids), 'Intel 82599' or 'virtio-net' for the NICs ixypipe
    drives, kernel interfaces, the bound driver, NUMA node, and *Active*
    when an interface is up and carries routes.  --json: one object.
      0000:03:00.0 8086:10fb 'Intel Corporation 82599ES 10-Gigabit SFI/SFP+
      Network Connection' Intel 82599 if=eth1 drv=ixgbe numa=0
    Take a device with 'ixypipe bind ADDRESS'; give it back with 'ixypipe unbind ADDRESS'.
    """
    from ixypipe.commands.options import emit_json, wants_json
    from ixypipe.datafile import DataFileError
    from ixypipe.ops.pcidevs import list_network_devices, status_lines
    from ixypipe.ops.pciids import PciNames, find_pci_ids

    path = pci_ids or find_pci_ids()
    try:
        names = PciNames(path)
    except DataFileError as exc:
        raise click.BadParameter(str(exc), param_hint="'--pci-ids'") from None
    found = list_network_devices(sysfs_root, proc_root, names)
    if wants_json():
        emit_json({"type": "devices", "pci_ids": str(path) if path else None,
                   "devices": [d.as_dict() for d in found]})
        return
    for line in status_lines(found):
        click.echo(line)
