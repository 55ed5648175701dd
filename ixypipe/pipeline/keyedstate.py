"""The workers' keyed counters (batch.count_by) in the packet arena, and their merge over the workers.

The supervisor carves the ``workers.keyed`` region (one block per worker,
layout.keyed_block_dtype, on pages of its own: a worker is given its own
block writable and no other, stages.attach_packet_arena) and writes each
block's size into its header; the worker counts into it (workers/keyed.py).
:func:`merged` reads every worker's tables and sums them per key: each
table's distinct keys, amounts (updates and total), overflow, and its top
keys by amount (ties: the lower key first).  The stats intervals, the
summary (text and JSON "keyed_counters") and the metrics show that merge.

A block's pages are only used once written (a fresh /dev/shm file is
sparse); reading a table the worker never used touches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ixypipe.layout import KEYED_REGION, KEYED_STATS, PAGE_SIZE, keyed_block_dtype
from ixypipe.memory.arena import Arena, RegionSize
from ixypipe.workers.keyed import TableState, fill_limit, key_text, read_block

TOP_N = 10                 # keys per table in the summary, its JSON and the metrics (bounded cardinality)
TOP_PER_INTERVAL = 3       # keys per table on a per-second text line


def arena_regions(workers: int, tables: int, slots: int) -> list[RegionSize]:
    """The region :func:`create` carves: one block per worker ([] when workers have no keyed tables)."""
    if tables <= 0 or workers <= 0:
        return []
    return [RegionSize(workers * keyed_block_dtype(tables, slots).itemsize, align=PAGE_SIZE)]


def create(arena: Arena, workers: int, tables: int, slots: int) -> None:
    """Carve the region and write each block's size; nothing else is touched (the rest stays zero)."""
    if tables <= 0 or workers <= 0:
        return
    dtype = keyed_block_dtype(tables, slots)
    region = arena.alloc(KEYED_REGION, workers * dtype.itemsize, align=PAGE_SIZE)
    for w in range(workers):
        header = arena.item(region, w, dtype)["header"]
        header["tables"] = tables
        header["slots"] = slots


def block_dtype(arena: Arena, plan) -> np.dtype | None:
    """The dtype of a block of the plan's region, None without one.  From the plan, never from a block's
    header: a worker may write its block, and a size it wrote must not steer what the supervisor reads."""
    if plan.keyed_tables <= 0 or arena.find(KEYED_REGION) is None:
        return None
    return keyed_block_dtype(plan.keyed_tables, plan.keyed_slots)


def block_span(arena: Arena, plan, worker: int) -> tuple[int, int] | None:
    """(offset, size) of worker ``worker``'s block, for Arena.grant_writes; None without a region."""
    dtype = block_dtype(arena, plan)
    if dtype is None:
        return None
    return arena.region(KEYED_REGION).offset + worker * dtype.itemsize, dtype.itemsize


def block(arena: Arena, plan, worker: int) -> np.ndarray | None:
    """Worker ``worker``'s block (a one-item view; writable where granted), None without a region."""
    dtype = block_dtype(arena, plan)
    return None if dtype is None else arena.item(arena.region(KEYED_REGION), worker, dtype)


@dataclass(frozen=True)
class MergedTable:
    """One table summed over the workers."""
    name: str
    keys: int                                   # distinct keys over all workers
    capacity: int                               # keys one worker's table holds
    stats: dict[str, int]                       # KEYED_STATS summed over the workers ("used": per worker, added)
    top: list[tuple[int, int]]                  # (key, amount), largest first
    workers: dict[str, dict[str, int]] = field(default_factory=dict)   # stage -> its own figures
    kind: str = "int"                           # how keys are shown (layout.KEYED_KINDS)

    def as_json(self) -> dict:
        return {"type": "keyed_table", "kind": self.kind, "keys": self.keys, "capacity": self.capacity,
                **{k: v for k, v in self.stats.items() if k != "used"},
                "top": [{"key": k, "key_text": key_text(k, self.kind), "amount": a} for k, a in self.top],
                "workers": self.workers}


def sum_per_key(keys: list[np.ndarray], values: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every key once (sorted) with the sum of its values over the given (keys, values) arrays."""
    if not keys:
        return np.empty(0, np.uint64), np.empty(0, np.uint64)
    k, v = np.concatenate(keys), np.concatenate(values)
    if not len(k):
        return k, v
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    starts = np.flatnonzero(np.concatenate(([True], k[1:] != k[:-1])))
    return k[starts], np.add.reduceat(v, starts)


def top(keys: np.ndarray, values: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The ``n`` keys with the largest values, largest first; a tie goes to the lower key."""
    if not len(keys) or n <= 0:
        return []
    if len(keys) > n:           # the n-th largest value and everything above it, then an exact order
        cut = np.partition(values, len(values) - n)[len(values) - n]
        pick = values >= cut
        keys, values = keys[pick], values[pick]
    order = np.lexsort((keys, ~values))[:n]
    return [(int(keys[i]), int(values[i])) for i in order]


def merge(per_worker: dict[str, list[TableState]], slots: int, n: int = TOP_N) -> dict[str, MergedTable]:
    """Tables of the same name summed per key over the workers (stage name -> its tables), in first-seen order."""
    names: dict[str, list[tuple[str, TableState]]] = {}
    for stage, tables in per_worker.items():
        for t in tables:
            names.setdefault(t.name, []).append((stage, t))
    out = {}
    for name, parts in names.items():
        keys, values = sum_per_key([t.keys for _, t in parts], [t.values for _, t in parts])
        stats = {k: sum(t.stats[k] for _, t in parts) for k in KEYED_STATS}
        out[name] = MergedTable(name, len(keys), fill_limit(slots), stats, top(keys, values, n),
                                {stage: dict(t.stats) for stage, t in parts}, parts[0][1].kind)
    return out


def merged(arena: Arena, plan, n: int = TOP_N) -> dict[str, MergedTable]:
    """Every worker's keyed tables, summed per key ({} when the pipeline has none or nothing was counted)."""
    dtype = block_dtype(arena, plan)
    if dtype is None:
        return {}
    region = arena.region(KEYED_REGION)
    per_worker = {s.name: read_block(arena.item(region, s.worker, dtype)) for s in plan.stages_of("worker")}
    return merge(per_worker, dtype["keys"].shape[1], n)


def as_json(tables: dict[str, MergedTable]) -> dict[str, dict]:
    """The JSON "keyed_counters" object: table name -> its merge."""
    return {name: t.as_json() for name, t in tables.items()}


def text_lines(tables: dict[str, dict], n: int = TOP_N) -> list[str]:
    """A person's lines for the JSON form (:func:`as_json`): per table its figures, then its top keys."""
    lines = []
    for name, t in tables.items():
        over = (f", overflow {t['overflow_updates']:,} updates / {t['overflow_amount']:,} (a worker's table "
                f"holds {t['capacity']:,} keys: raise workers.keyed_slots)") if t["overflow_updates"] else ", overflow 0"
        lines.append(f"keyed {name}: {t['keys']:,} keys, {t['updates']:,} updates, total {t['total']:,}{over}")
        if t["top"][:n]:
            lines.append("  top: " + ", ".join(f"{e['key_text']} {e['amount']:,}" for e in t["top"][:n]))
    return lines
