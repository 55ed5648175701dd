"""Starting the software 82599 for a set of ports, and pointing their port specs at it.

The one way the supervisor, ``ixypipe fwd --sim`` and ``ixypipe gen`` start
a simulator: :func:`start_sim` starts a :class:`SimServer` for the
simulated ports over the given arenas, writes each matching PortSpec's PCI
address, and says which sysfs root each port's driver opens it under.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass

from ixypipe.nic.device import PortSpec
from ixypipe.sim.server import SimPortConfig, SimServer


@dataclass
class RunningSim:
    server: SimServer
    addresses: dict[str, str]       # port name -> PCI address the simulator serves it at
    sysfs_roots: dict[str, str]     # port name -> sysfs root to open it with (sysfs_root=)


def start_sim(ports: list[SimPortConfig], specs: Iterable[PortSpec], arena_paths: list[str | os.PathLike],
              ignore_sigint: bool = False, context=None) -> RunningSim:
    """Start a simulator serving ``ports`` whose DMA memory is ``arena_paths``; fill in ``specs``' addresses.

    Specs named like a simulated port get its address; others are left alone.
    ``ignore_sigint``: the model process starts with SIGINT ignored, so a
    Ctrl-C meant for the caller cannot kill it before it ignores SIGINT
    itself (the caller stops it).  Bad port settings raise ValueError before
    anything starts; a failed start leaves nothing behind (SimServerError).  ``context``: see SimServer.
    """
    server = SimServer(ports, [str(p) for p in arena_paths], context=context)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_sigint else None
    try:
        server.start()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    root = str(server.sysfs_root)
    for spec in specs:
        if spec.name in server.addresses:
            spec.address = server.addresses[spec.name]
    return RunningSim(server, dict(server.addresses), {name: root for name in server.names})
