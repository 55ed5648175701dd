"""Keyed counters (``batch.count_by(table, keys, n)``): per-key sums in named hash tables of bounded size.

A worker's tables live in its block of the packet arena's ``workers.keyed``
region (layout.keyed_block_dtype: written by that worker alone, read by the
supervisor, which sums every worker's tables per key), or, outside a
pipeline, in private memory of the same layout.  Each table is open
addressing over uint64 keys: the top bits of ``key * KEYED_HASH_MUL`` pick
the first slot, linear probing the next ones; a slot whose value is 0 is
free (an amount of 0 is never counted).  A table takes new keys while it is
under KEYED_FILL_NUM/KEYED_FILL_DEN full; an amount for a key that does not
fit is counted as overflow (updates and amount), never lost silently, and
every amount is in the table's total.

The kernel is ``keyed_jit.count_keys`` (numba) or its numpy twin
:func:`count_keys_numpy` here: both leave the same value for every key and
the same figures (KEYED_STATS), tested so; only where a key sits may differ.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass

import numpy as np

from ixypipe.layout import (
    KEYED_DEFAULT_SLOTS,
    KEYED_DEFAULT_TABLES,
    KEYED_FILL_DEN,
    KEYED_FILL_NUM,
    KEYED_HASH_MUL,
    KEYED_KINDS,
    KEYED_NAME_MAX,
    KEYED_STAT,
    KEYED_STATS,
    keyed_block_dtype,
)
from ixypipe.workers import keyed_jit

log = logging.getLogger(__name__)
DEFAULT_TABLES = KEYED_DEFAULT_TABLES     # outside a pipeline (a pipeline's come from its file)
DEFAULT_SLOTS = KEYED_DEFAULT_SLOTS
_MUL = np.uint64(KEYED_HASH_MUL)
_USED, _UPDATES, _TOTAL, _OVER, _OVER_AMOUNT = (KEYED_STAT[k] for k in
                                                ("used", "updates", "total", "overflow_updates", "overflow_amount"))


class KeyedError(ValueError):
    """Keys or amounts that cannot be counted, or a table name that is none; the message says which."""


def fill_limit(slots: int) -> int:
    """The keys a table of ``slots`` slots holds."""
    return slots * KEYED_FILL_NUM // KEYED_FILL_DEN


def first_slots(keys: np.ndarray, shift: np.uint64) -> np.ndarray:
    """Where each key's probe starts (int64): the top bits of key * KEYED_HASH_MUL."""
    return ((keys * _MUL) >> shift).astype(np.int64)


def count_keys_numpy(table_keys: np.ndarray, table_values: np.ndarray, stats: np.ndarray, keys: np.ndarray,
                     amounts: np.ndarray, shift: np.uint64, limit: int) -> int:
    """The numpy twin of keyed_jit.count_keys (same arguments, same result): array operations per probe step.

    The batch is summed per distinct key first; keys already in the table get their sums; new keys are
    admitted in the order of their first element while the table is under ``limit`` (as the element-wise
    kernel admits them), the rest counted as overflow.  Returns the keys the table holds."""
    live = amounts != 0
    if not live.all():
        keys, amounts = keys[live], amounts[live]
    if not len(keys):
        return int(stats[_USED])
    stats[_UPDATES] += len(keys)
    stats[_TOTAL] += int(amounts.sum(dtype=np.uint64))
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    uniq = sorted_keys[starts]
    sums = np.add.reduceat(amounts[order], starts)
    counts = np.diff(np.append(starts, len(keys)))
    first = order[starts]                         # each key's first element in the batch (stable sort)
    mask = len(table_keys) - 1
    slot = _probe(table_keys, table_values, uniq, first_slots(uniq, shift), mask)
    found = slot >= 0
    table_values[slot[found]] += sums[found]
    new = np.flatnonzero(~found)
    if not len(new):
        return int(stats[_USED])
    new = new[np.argsort(first[new], kind="stable")]
    room = max(limit - int(stats[_USED]), 0)
    over = new[room:]
    if len(over):
        stats[_OVER] += int(counts[over].sum())
        stats[_OVER_AMOUNT] += int(sums[over].sum(dtype=np.uint64))
    new = new[:room]
    _insert(table_keys, table_values, uniq[new], sums[new], first_slots(uniq[new], shift), mask)
    stats[_USED] += len(new)
    return int(stats[_USED])


def _probe(table_keys, table_values, keys, pos, mask: int) -> np.ndarray:
    """The slot of each key in the table, -1 where it is not (its probe reached a free slot)."""
    slot = np.full(len(keys), -1, np.int64)
    pending = np.arange(len(keys))
    pos = pos.copy()
    while len(pending):
        p = pos[pending]
        free = table_values[p] == 0
        hit = ~free & (table_keys[p] == keys[pending])
        slot[pending[hit]] = p[hit]
        go_on = ~free & ~hit
        pending = pending[go_on]
        pos[pending] = (p[go_on] + 1) & mask
    return slot


def _insert(table_keys, table_values, keys, sums, pos, mask: int) -> None:
    """Put new keys (in admission order) into free slots: in rounds, each takes the free slot its probe is
    at, the earliest key winning a slot several reach; the others probe on.  Every key lands on a free slot
    of its own probe sequence, so lookups (_probe, the kernel) find it."""
    pending = np.arange(len(keys))
    pos = pos.copy()
    while len(pending):
        p = pos[pending]
        free = table_values[p] == 0
        at, first = np.unique(p[free], return_index=True)      # the earliest of those at each free slot
        won = np.flatnonzero(free)[first]
        table_keys[at] = keys[pending[won]]
        table_values[at] = sums[pending[won]]
        placed = np.zeros(len(pending), bool)
        placed[won] = True
        rest = ~placed
        pending = pending[rest]
        pos[pending] = (p[rest] + ~free[rest]) & mask           # a lost race retries the slot (now taken)


@dataclass(frozen=True)
class TableState:
    """One table as read: its keys and their values (slot order), and its figures (KEYED_STATS)."""
    name: str
    keys: np.ndarray          # uint64
    values: np.ndarray        # uint64
    stats: dict[str, int]
    kind: str = "int"         # how its keys are shown (KEYED_KINDS, key_text)


def key_text(key: int, kind: str) -> str:
    """A key as a person reads it: ``kind`` "ipv4" 10.0.0.1 (the low 32 bits), "mac" 02:00:00:00:00:01 (the
    low 48 bits), "hex" 0x1f, else the number."""
    if kind == "ipv4":
        return ".".join(str(key >> s & 0xFF) for s in (24, 16, 8, 0))
    if kind == "mac":
        return ":".join(f"{key >> s & 0xFF:02x}" for s in range(40, -8, -8))
    if kind == "hex":
        return f"{key:#x}"
    return str(key)


def private_block(tables: int = DEFAULT_TABLES, slots: int = DEFAULT_SLOTS) -> np.ndarray:
    """A block of this process's own memory with the shared layout (pages are only used once written)."""
    block = np.zeros(1, keyed_block_dtype(tables, slots))
    block["header"]["tables"] = tables
    block["header"]["slots"] = slots
    return block


def table_name(name) -> str:
    """A valid table name: printable, non-empty text, at most KEYED_NAME_MAX bytes of UTF-8 (cut at a
    character boundary)."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise KeyedError(f"a keyed table's name is a non-empty string of printable characters, got {name!r}")
    raw = name.encode()
    return raw[:KEYED_NAME_MAX].decode(errors="ignore") if len(raw) > KEYED_NAME_MAX else name


def key_array(keys) -> np.ndarray:
    """``keys`` as a 1-D uint64 array: integers of any width (a signed one as its 64-bit two's complement)."""
    arr = np.asarray(keys)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.dtype.kind not in "iub" and not (arr.dtype == object and arr.size == 0)):
        raise KeyedError(f"keys are one integer per element (a 1-D integer array such as batch.ipv4.src), got "
                         f"{arr.dtype} of shape {arr.shape}")
    if arr.dtype.kind == "i":
        return arr.astype(np.int64).view(np.uint64)
    return arr.astype(np.uint64)


def amount_array(n, length: int) -> np.ndarray:
    """``n`` (an integer, or one per key) as uint64 amounts, each 0..2**63-1."""
    if n is None or isinstance(n, int | np.integer):
        value = 1 if n is None else operator.index(n)
        if not 0 <= value < 2**63:
            raise KeyedError(f"an amount is an integer from 0 to 2**63-1, got {value}")
        return np.full(length, value, np.uint64)
    arr = np.asarray(n)
    if arr.dtype.kind not in "iu" or arr.shape != (length,):
        raise KeyedError(f"n is an integer or one integer amount per key ({length}), got {arr.dtype} of shape "
                         f"{arr.shape}")
    if arr.dtype.kind == "i" and length and arr.min() < 0:
        raise KeyedError(f"amounts cannot be negative, got {int(arr.min())} for key {int(np.argmin(arr))}")
    return arr.astype(np.uint64)


class KeyedTables:
    """One worker's keyed tables over a block (a view of its arena block, or private_block()); the only writer.

    ``compiled``: use the numba kernel (default: when it loads).  A process that takes over a block (a
    restarted worker) carries on with the tables in it."""

    def __init__(self, block: np.ndarray, compiled: bool | None = None):
        self.block = block
        header = block["header"]
        self.count = header["count"]                  # views into the block
        self.refused = header["refused"]
        self.tables = int(header["tables"][0])
        self.slots = int(header["slots"][0])
        if self.slots <= 0 or self.slots & (self.slots - 1):
            raise KeyedError(f"a keyed block has {self.slots} slots per table: not a power of two")
        self.shift = np.uint64(64 - (self.slots.bit_length() - 1))
        self.limit = fill_limit(self.slots)
        self.names = block["table"]["name"][0]
        self.stats = block["table"]["stats"][0]
        self.kinds = block["table"]["kind"][0]
        self.keys = block["keys"][0]
        self.values = block["values"][0]
        self.compiled = keyed_jit.AVAILABLE if compiled is None else compiled and keyed_jit.AVAILABLE
        self.index = {name: t for t, name in enumerate(_names(self.names, int(self.count[0])))}
        self._warned = False

    def table(self, name: str, kind: str = "int") -> int | None:
        """The number of table ``name``, made on first use (its keys shown as ``kind``); None when every
        table is taken (warned once)."""
        t = self.index.get(name)
        if t is not None:
            return t
        name = table_name(name)
        t = self.index.get(name)
        if t is not None:
            return t
        t = len(self.index)
        if t >= self.tables:
            if not self._warned:
                self._warned = True
                log.warning("keyed table %r would be number %d: a worker has %d (workers.keyed_tables); its "
                            "count_by calls are refused (counted), the packets go on", name, t + 1, self.tables)
            return None
        raw = name.encode()
        self.names[t, :] = 0
        self.names[t, :len(raw)] = np.frombuffer(raw, np.uint8)
        self.kinds[t] = KEYED_KINDS.index(kind)
        self.count[0] = t + 1                        # after the name's bytes
        self.index[name] = t
        return t

    def count_by(self, name: str, keys, n=None, kind: str = "int") -> None:
        if kind not in KEYED_KINDS:
            raise KeyedError(f"kind is one of {', '.join(KEYED_KINDS)} (how the summary shows a key), got {kind!r}")
        keys = key_array(keys)
        amounts = amount_array(n, len(keys))
        t = self.table(name, kind)
        if t is None:
            self.refused[0] += 1
            return
        if not len(keys):
            return
        kernel = keyed_jit.count_keys if self.compiled else count_keys_numpy
        kernel(self.keys[t], self.values[t], self.stats[t], keys, amounts, self.shift, self.limit)

    def read(self) -> list[TableState]:
        return read_block(self.block)


def _names(names: np.ndarray, count: int) -> list[str]:
    return [bytes(names[t]).rstrip(b"\0").decode(errors="replace") for t in range(count)]


def read_block(block: np.ndarray) -> list[TableState]:
    """Every table of a block, as copies (a live block may change while it is read; each value is whole).
    Only the block's shape bounds what is read: its header is the worker's to write."""
    names = block["table"]["name"][0]
    kinds = block["table"]["kind"][0]
    count = min(max(int(block["header"]["count"][0]), 0), len(names))
    out = []
    for t, name in enumerate(_names(names, count)):
        if not name:                               # never made (a name is not empty): a header written over
            continue
        values = block["values"][0][t].copy()      # one pass over a table the worker may be writing: a copy,
        used = np.flatnonzero(values)              # values first (a key is written before its value)
        vals = values[used]
        keys = block["keys"][0][t][used]
        out.append(TableState(name, keys, vals,
                              dict(zip(KEYED_STATS, (int(v) for v in block["table"]["stats"][0][t]), strict=True)),
                              KEYED_KINDS[kinds[t]] if kinds[t] < len(KEYED_KINDS) else "int"))
    return out


def warm_up() -> None:
    """Load (or compile and cache) the kernel now: a worker does so before it runs the user's code."""
    if keyed_jit.AVAILABLE:
        KeyedTables(private_block(1, 1024)).count_by("warm-up", np.zeros(1, np.uint64))


def refusing() -> KeyedTables:
    """Tables for a worker of a pipeline with workers.keyed_tables = 0: every count_by is refused (warned)."""
    return KeyedTables(private_block(0, 1024))
