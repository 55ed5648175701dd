"""Built-in workers, usable by name in a pipeline file (``function = "touch"``).

forward  pass every packet on unchanged (a bump in the wire)
touch    ixy-fwd's work: increment byte 1 of every packet (uint8, wraps)
macswap  swap destination and source MAC, as a reflector does
drop     drop every packet
count    forward everything, counting packets and bytes
"""

from __future__ import annotations

import numpy as np

from ixypipe.protocols import ETH_ADDR_LEN, ETH_DST_OFF
from ixypipe.workers.api import Batch

TOUCH_BYTE = 1     # ixy-fwd increments data[1]


def forward(batch: Batch) -> None:
    """Nothing to do: every packet keeps the verdict of its port's forward_to."""


def touch(batch: Batch) -> None:
    batch.data[batch.idx, TOUCH_BYTE] += 1


def macswap(batch: Batch) -> None:
    both = batch.field(ETH_DST_OFF, 2 * ETH_ADDR_LEN)
    batch.set_field(ETH_DST_OFF, np.concatenate((both[:, ETH_ADDR_LEN:], both[:, :ETH_ADDR_LEN]), axis=1))


def drop(batch: Batch) -> None:
    batch.drop()


def count(batch: Batch) -> None:
    batch.count("packets", batch.n)
    batch.count("bytes", int(batch.lengths.sum()))


BUILTINS = {"forward": forward, "touch": touch, "macswap": macswap, "drop": drop, "count": count}
