"""Which Device class serves which ``driver`` name, and how to open or attach one.

``sim`` ports are software 82599s driven by the real ixgbe driver: the only
difference from ``ixgbe`` is the sysfs root where the port's device tree
lives (the simulator's fake tree instead of /sys).
"""

from __future__ import annotations

import importlib

from ixypipe.nic.device import Device, DeviceError, PortSpec, TxDone

DRIVERS = {
    "ixgbe": ("ixypipe.nic.ixgbe", "IxgbeDevice"),
    "sim": ("ixypipe.nic.ixgbe", "IxgbeDevice"),
    "af_packet": ("ixypipe.nic.af_packet", "AfPacketDevice"),
    "pcap": ("ixypipe.nic.pcap", "PcapDevice"),
}


def device_class(driver: str) -> type[Device]:
    if driver not in DRIVERS:
        raise DeviceError(f"unknown driver {driver!r}; known: {', '.join(DRIVERS)}")
    module, name = DRIVERS[driver]
    return getattr(importlib.import_module(module), name)


def arena_regions(spec: PortSpec) -> list:
    """What opening ``spec`` carves from the device arena (see Device.arena_regions)."""
    return device_class(spec.driver).arena_regions(spec)


def _extra(spec: PortSpec, sysfs_root: str | None) -> dict:
    return {"sysfs_root": sysfs_root or "/sys"} if spec.driver in ("ixgbe", "sim") else {}


def open_port(spec: PortSpec, device_arena, bufs, rx_pools, tx_done: TxDone | None = None,
              sysfs_root: str | None = None) -> Device:
    """Open and fully initialise a port (the supervisor, once)."""
    return device_class(spec.driver).open(spec, device_arena, bufs, rx_pools, tx_done=tx_done,
                                          **_extra(spec, sysfs_root))


def attach_port(spec: PortSpec, device_arena, bufs, rx_pools, tx_done: TxDone | None = None,
                sysfs_root: str | None = None) -> Device:
    """Attach to an opened port without re-initialising it (a stage process)."""
    return device_class(spec.driver).attach(spec, device_arena, bufs, rx_pools, tx_done=tx_done,
                                            **_extra(spec, sysfs_root))
