"""Which Device class serves which ``driver`` name, and how to open or attach one.

``sim`` ports are software 82599s driven by the real ixgbe driver, or with
``options["device"] == "virtio"`` software virtio-net functions driven by
the real virtio driver: the only difference from ``ixgbe`` / ``virtio`` is
the sysfs root where the port's device tree lives (the simulator's fake
tree instead of /sys).
"""

from __future__ import annotations

import importlib

from ixypipe.nic.device import Device, DeviceError, PortSpec, TxDone

DRIVERS = {
    "ixgbe": ("ixypipe.nic.ixgbe", "IxgbeDevice"),
    "sim": ("ixypipe.nic.ixgbe", "IxgbeDevice"),
    "virtio": ("ixypipe.nic.virtio", "VirtioDevice"),
    "vhost-user": ("ixypipe.nic.vhost_user", "VhostUserDevice"),
    "af_packet": ("ixypipe.nic.af_packet", "AfPacketDevice"),
    "pcap": ("ixypipe.nic.pcap", "PcapDevice"),
}


def device_class(driver: str) -> type[Device]:
    if driver not in DRIVERS:
        raise DeviceError(f"unknown driver {driver!r}; known: {', '.join(DRIVERS)}")
    module, name = DRIVERS[driver]
    return getattr(importlib.import_module(module), name)


def spec_class(spec: PortSpec) -> type[Device]:
    """The driver of ``spec``: a sim port's device option picks the virtio driver for a software virtio-net."""
    if spec.driver == "sim" and spec.options.get("device") == "virtio":
        return device_class("virtio")
    return device_class(spec.driver)


def arena_regions(spec: PortSpec) -> list:
    """What opening ``spec`` carves from the device arena (see Device.arena_regions)."""
    return spec_class(spec).arena_regions(spec)


def _extra(spec: PortSpec, sysfs_root: str | None) -> dict:
    return {"sysfs_root": sysfs_root or "/sys"} if spec.driver in ("ixgbe", "sim", "virtio") else {}


def open_port(spec: PortSpec, device_arena, bufs, rx_pools, tx_done: TxDone | None = None,
              sysfs_root: str | None = None) -> Device:
    """Open and fully initialise a port (the supervisor, once)."""
    return spec_class(spec).open(spec, device_arena, bufs, rx_pools, tx_done=tx_done,
                                          **_extra(spec, sysfs_root))


def attach_port(spec: PortSpec, device_arena, bufs, rx_pools, tx_done: TxDone | None = None,
                sysfs_root: str | None = None) -> Device:
    """Attach to an opened port without re-initialising it (a stage process)."""
    return spec_class(spec).attach(spec, device_arena, bufs, rx_pools, tx_done=tx_done,
                                            **_extra(spec, sysfs_root))
