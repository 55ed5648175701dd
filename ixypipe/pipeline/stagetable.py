"""The stage table: one row of control and counters per stage process, in the packet arena.

The supervisor writes a row's ``command``; the stage writes the rest.  A
stage reads and writes its row through a memoryview of int64s, which costs
a few tens of nanoseconds per field, so counters can be published every loop.
"""

from __future__ import annotations

import numpy as np

from ixypipe.layout import STAGE_NAME_LEN, STAGE_ROW_DTYPE, STAGE_USER_COUNTERS
from ixypipe.memory.arena import Arena, RegionSize

REGION = "stages"
# int64 slot of each scalar field in a row, for memoryview access
SLOT = {name: STAGE_ROW_DTYPE.fields[name][1] // 8 for name in STAGE_ROW_DTYPE.names
        if STAGE_ROW_DTYPE.fields[name][0] == np.dtype("<i8")}
USER_SLOT = STAGE_ROW_DTYPE.fields["user"][1] // 8


def arena_regions(n: int) -> list[RegionSize]:
    """The region :func:`create` carves for ``n`` stages."""
    return [RegionSize(n * STAGE_ROW_DTYPE.itemsize, align=64)]


def create(arena: Arena, n: int) -> np.ndarray:
    (need,) = arena_regions(n)
    region = arena.alloc(REGION, need.size, align=need.align)
    table = arena.view(region, STAGE_ROW_DTYPE)
    table[:] = np.zeros(1, STAGE_ROW_DTYPE)
    return table


def table(arena: Arena) -> np.ndarray:
    return arena.view(arena.region(REGION), STAGE_ROW_DTYPE)


class StageRow:
    """Fast access to one row from the stage that owns it."""

    def __init__(self, arena: Arena, row: int):
        off = arena.region(REGION).offset + row * STAGE_ROW_DTYPE.itemsize
        self.slots = memoryview(arena.mm)[off:off + STAGE_ROW_DTYPE.itemsize].cast("B").cast("q")
        self._names = arena.view(arena.region(REGION), STAGE_ROW_DTYPE)[row:row + 1]["user_names"]
        self._user_index: dict[str, int] = {}

    def __getitem__(self, field: str) -> int:
        return self.slots[SLOT[field]]

    def __setitem__(self, field: str, value: int) -> None:
        self.slots[SLOT[field]] = value

    def add(self, field: str, value: int) -> None:
        self.slots[SLOT[field]] += value

    def publish_user(self, counters: dict[str, int]) -> None:
        """Copy worker-defined counters into the row (the first STAGE_USER_COUNTERS names)."""
        for name, value in counters.items():
            slot = self._user_index.get(name)
            if slot is None:
                if len(self._user_index) >= STAGE_USER_COUNTERS:
                    continue
                slot = self._user_index[name] = len(self._user_index)
                self._names[0, slot] = name.encode()[:STAGE_NAME_LEN]
            self.slots[USER_SLOT + slot] = value

    def release(self) -> None:
        self.slots.release()
        self._names = None


def user_counters(row: np.void) -> dict[str, int]:
    return {bytes(n).decode(): int(v) for n, v in zip(row["user_names"], row["user"], strict=True) if bytes(n)}
