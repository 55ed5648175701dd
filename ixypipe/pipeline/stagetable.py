"""The stage table: one row of control and counters per stage process, in the packet arena.

The supervisor writes a row's ``command``; the stage writes the rest.  A
stage reads and writes its row through a memoryview of int64s, which costs
a few tens of nanoseconds per field, so counters can be published every loop.
Beside the table, one block per row holds the worker's named counters with
their full names (layout.STAGE_COUNTERS_DTYPE): the stage publishes them
with :class:`CounterWriter`, observers read them with :func:`read_counters`.
"""

from __future__ import annotations

import logging
import operator

import numpy as np

from ixypipe.layout import (
    STAGE_COUNTER_NAME_MAX,
    STAGE_COUNTER_NAMES_SIZE,
    STAGE_COUNTER_VALUE_MAX,
    STAGE_COUNTERS_DTYPE,
    STAGE_COUNTERS_MAX,
    STAGE_COUNTERS_REGION,
    STAGE_ROW_DTYPE,
)
from ixypipe.memory.arena import Arena, RegionSize

log = logging.getLogger(__name__)
REGION = "stages"
# int64 slot of each scalar field in a row, for memoryview access
SLOT = {name: STAGE_ROW_DTYPE.fields[name][1] // 8 for name in STAGE_ROW_DTYPE.names
        if STAGE_ROW_DTYPE.fields[name][0] == np.dtype("<i8")}


# the counters a stage process publishes of itself (Stage.publish): a process that takes a row over (a
# restarted worker) counts them from zero; the drop counters of a row add up over its processes
PROCESS_FIELDS = ("loops", "idle_loops", "batches", "packets_in", "bytes_in", "packets_out", "bytes_out", "stalls")


def arena_regions(n: int) -> list[RegionSize]:
    """The regions :func:`create` carves for ``n`` stages: the table, then every stage's counter block."""
    return [RegionSize(n * STAGE_ROW_DTYPE.itemsize, align=64),
            RegionSize(n * STAGE_COUNTERS_DTYPE.itemsize, align=64)]


def create(arena: Arena, n: int) -> np.ndarray:
    rows, blocks = arena_regions(n)
    region = arena.alloc(REGION, rows.size, align=rows.align)
    table = arena.view(region, STAGE_ROW_DTYPE)
    table[:] = np.zeros(1, STAGE_ROW_DTYPE)
    counters = arena.alloc(STAGE_COUNTERS_REGION, blocks.size, align=blocks.align)
    arena.view(counters, np.uint8)[:] = 0
    return table


def table(arena: Arena) -> np.ndarray:
    return arena.view(arena.region(REGION), STAGE_ROW_DTYPE)


class StageRow:
    """Fast access to one row from the stage that owns it."""

    def __init__(self, arena: Arena, row: int):
        off = arena.region(REGION).offset + row * STAGE_ROW_DTYPE.itemsize
        self.slots = memoryview(arena.mm)[off:off + STAGE_ROW_DTYPE.itemsize].cast("B").cast("q")

    def __getitem__(self, field: str) -> int:
        return self.slots[SLOT[field]]

    def __setitem__(self, field: str, value: int) -> None:
        self.slots[SLOT[field]] = value

    def add(self, field: str, value: int) -> None:
        self.slots[SLOT[field]] += value

    def release(self) -> None:
        self.slots.release()


def interval_base(before: np.void, after: np.void) -> np.void:
    """The row to take the figures of the interval that ended with ``after`` from: ``before``, or, when
    another process took the row over in between (a restarted worker: another pid, or fewer loops),
    ``before`` with that process's own counters (PROCESS_FIELDS) at zero, so the new process reports
    its own figures (never an idle share above 100 %)."""
    if after["pid"] == before["pid"] and after["loops"] >= before["loops"]:
        return before
    base = before.copy()
    for name in PROCESS_FIELDS:
        base[name] = 0
    return base


def idle_share(base: np.void, after: np.void) -> float:
    """The share of a stage's loops in the interval from ``base`` (interval_base) to ``after`` that found
    nothing to do, 0..1.  A stage counts a loop, then (when idle) an idle loop: a row read between the two
    can make the idle count of an interval one ahead of its loops, which is no share above 100 %."""
    loops = int(after["loops"] - base["loops"])
    return min(1.0, max(0.0, int(after["idle_loops"] - base["idle_loops"]) / loops)) if loops > 0 else 1.0


def counter_blocks(arena: Arena) -> np.ndarray:
    """Every stage's counter block (layout.STAGE_COUNTERS_DTYPE), a view."""
    return arena.view(arena.region(STAGE_COUNTERS_REGION), STAGE_COUNTERS_DTYPE)


class CounterWriter:
    """Publishes one stage's named counters into its block; the stage is the block's only writer."""

    def __init__(self, arena: Arena, row: int):
        block = arena.item(arena.region(STAGE_COUNTERS_REGION), row, STAGE_COUNTERS_DTYPE)   # the stage's own pages
        self.values = block["values"][0]                    # views into the arena
        self.names = block["names"][0]
        self.count = block["count"]
        self.slot: dict[str, int] = {}
        self.used = 0              # bytes of names written
        self.refused: set = set()  # names and values already reported

    def publish(self, counters: dict[str, int]) -> None:
        """Copy the values in; a name seen for the first time is appended first.

        Batch.count keeps names valid and their number and bytes inside the
        block's limits; a value outside int64's 0..2**63-1 is written clamped.
        A worker that put anything else in the dict itself gets it checked here
        (:meth:`_publish_checked`) rather than a dead stage.
        """
        slot, values = self.slot, self.values
        try:
            for name, value in counters.items():
                k = slot.get(name)
                if k is None:
                    k = self._append(name)
                if 0 <= value <= STAGE_COUNTER_VALUE_MAX:
                    values[k] = value
                else:
                    values[k] = self._clamped(name, value)
        except (TypeError, ValueError, OverflowError, UnicodeError):
            self._publish_checked(counters)

    def _append(self, name: str) -> int:
        raw = name.encode()
        if (len(raw) > STAGE_COUNTER_NAME_MAX or not name.isprintable() or len(self.slot) >= STAGE_COUNTERS_MAX
                or self.used + len(raw) + 1 > STAGE_COUNTER_NAMES_SIZE):
            raise ValueError(name)
        self.names[self.used:self.used + len(raw)] = np.frombuffer(raw, np.uint8)
        self.names[self.used + len(raw)] = 0
        self.used += len(raw) + 1
        k = self.slot[name] = len(self.slot)
        self.values[k] = 0
        self.count[0] = len(self.slot)          # after the name's bytes and its value
        return k

    def _clamped(self, name: str, value: int) -> int:
        clamped = min(max(value, 0), STAGE_COUNTER_VALUE_MAX)
        if name not in self.refused:
            self.refused.add(name)
            log.warning("counter %r is %d, outside 0..2**63-1: shown as %d", name, value, clamped)
        return clamped

    def _publish_checked(self, counters: dict) -> None:
        """The slow path: each entry on its own; a name or value that cannot be published is reported once."""
        for name, value in list(counters.items()):
            try:
                k = self.slot.get(name)
                if k is None:
                    k = self._append(name)
                self.values[k] = self._clamped(name, operator.index(value))
            except (TypeError, ValueError, OverflowError, UnicodeError, AttributeError):
                key = name if isinstance(name, str) else repr(name)
                if key not in self.refused:
                    self.refused.add(key)
                    log.warning("counter %.200r = %.100r cannot be published (a name is printable text of at most "
                                "%d bytes, a value an integer, at most %d names): left out", name, value,
                                STAGE_COUNTER_NAME_MAX, STAGE_COUNTERS_MAX)


def read_counters(block: np.void) -> dict[str, int]:
    """The named counters of one block, in the order the stage first counted them."""
    count = int(block["count"])
    if not count:
        return {}
    names = block["names"].tobytes().split(b"\0")[:count]
    values = block["values"][:count]
    return {name.decode(errors="replace"): int(v) for name, v in zip(names, values, strict=True)}


def stage_counters(arena: Arena, plan) -> dict[str, dict[str, int]]:
    """Stage name -> its named counters, for the stages that have any."""
    blocks = counter_blocks(arena)
    got = {s.name: read_counters(blocks[s.row]) for s in plan.stages}
    return {name: c for name, c in got.items() if c}


def summed(per_stage: dict[str, dict[str, int]]) -> dict[str, int]:
    """Counters added up over stages (a name counted by several workers is one total)."""
    total: dict[str, int] = {}
    for counters in per_stage.values():
        for name, value in counters.items():
            total[name] = total.get(name, 0) + value
    return total
