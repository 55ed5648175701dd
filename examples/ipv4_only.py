"""A worker that forwards IPv4 and drops every other EtherType (ARP, IPv6, LLDP, VLAN-tagged frames ...).

Use it in a pipeline file:

    [workers]
    function = "examples/ipv4_only.py:ipv4_only"

The whole batch is judged at once: ``batch.ethertype()`` reads bytes 12-13
of every packet into one uint16 array, and the returned boolean mask keeps
the packets where it is True.  Dropped packets are counted by the pipeline
under the reason "worker"; the named counter "not_ipv4" shows up in the
stats as well.
"""

from __future__ import annotations

import numpy as np

from ixypipe.protocols import ETHERTYPE_IPV4


def ipv4_only(batch) -> np.ndarray:
    keep = batch.ethertype() == ETHERTYPE_IPV4
    batch.count("not_ipv4", int(batch.n - keep.sum()))
    return keep
