"""Mirror rings: the RX and TX stages' copies of the frames they take, for ``ixypipe capture``.

Owns the ``mirror`` region of the packet arena (layout in ixypipe.layout:
MIRROR_*): one block per RX and TX stage, each a control part and a ring of
frame copies with one producer (the stage) and one consumer (a capture).
The supervisor carves it (:func:`arena_regions`, :func:`create`); a stage
holds its block as a :class:`Tap` and copies each batch it takes while a
capture asked (``request`` holds the capture's pid): the bytes, the length
and the time, never the buffer, so the pipeline's accounting does not
change; a batch that finds the ring full is copied as far as it fits and
the rest is counted in ``dropped`` (the data path never waits for a capture).
The numpy copy here is the reference (the Python passes, ``hot_path =
"numpy"``); mirror_jit.py is its compiled twin inside the compiled passes.
A capture (ops/capture.py) claims blocks with :func:`claim`, reads them with
:func:`take` and lets go with :func:`release`; :func:`reap` (the supervisor,
each turn of its watch) clears the request of a capture that died, so a
stage never copies for nobody for long.
"""

from __future__ import annotations

import time

import numpy as np

from ixypipe.layout import (
    MIRROR_BLOCK_BYTES,
    MIRROR_CTL_DTYPE,
    MIRROR_HEADER_DTYPE,
    MIRROR_MIN_SLOTS,
    MIRROR_REGION,
    PAGE_SIZE,
    mirror_block_dtype,
)
from ixypipe.memory.arena import Arena, Region, RegionSize

TAPPED_ROLES = ("rx", "tx")
# int64 word of each control field (the compiled copy and the numpy one index the same words)
WORD = {name: MIRROR_CTL_DTYPE.fields[name][1] // 8 for name in MIRROR_CTL_DTYPE.names
        if MIRROR_CTL_DTYPE.fields[name][0] == np.dtype("<i8")}
C_REQUEST, C_TAIL, C_HEAD, C_COPIED, C_DROPPED = (WORD[n] for n in ("request", "tail", "head", "copied", "dropped"))
CTL_WORDS = MIRROR_CTL_DTYPE.itemsize // 8


def tapped(stages) -> list:
    """The stages that have a block, in block order: the RX and TX stages, in the plan's order (``stages``:
    StagePlans, or the plan region's stages as objects with ``role``)."""
    return [s for s in stages if s.role in TAPPED_ROLES]


def slots_for(snap: int) -> int:
    """Slots of a block: a power of two, about MIRROR_BLOCK_BYTES of copies of ``snap`` bytes."""
    fit = max(MIRROR_BLOCK_BYTES // (snap + 16), MIRROR_MIN_SLOTS)
    return 1 << (fit.bit_length() - 1)


def arena_regions(plan, snap: int) -> list[RegionSize]:
    """The region :func:`create` carves for ``plan`` with buffers holding ``snap`` bytes of data."""
    block = mirror_block_dtype(slots_for(snap), snap)
    return [RegionSize(MIRROR_HEADER_DTYPE.itemsize + len(tapped(plan.stages)) * block.itemsize, align=PAGE_SIZE)]


def create(arena: Arena, plan, snap: int) -> None:
    """The header and every block's control part (the rings are untouched pages until a capture runs)."""
    blocks, slots = len(tapped(plan.stages)), slots_for(snap)
    size = arena_regions(plan, snap)[0].size
    region = arena.alloc(MIRROR_REGION, size, align=PAGE_SIZE)
    header = arena.view(region)[:MIRROR_HEADER_DTYPE.itemsize].view(MIRROR_HEADER_DTYPE)
    header[0] = (blocks, slots, snap)
    for k in range(blocks):
        control(arena, k)[:] = 0


def _layout(arena: Arena) -> tuple[int, int, int, np.dtype, int] | None:
    """(offset of block 0, blocks, slots, block dtype, snap), or None when the arena has no mirror region."""
    region = arena.find(MIRROR_REGION)
    if region is None:
        return None
    header = arena.view(region)[:MIRROR_HEADER_DTYPE.itemsize].view(MIRROR_HEADER_DTYPE)[0]
    blocks, slots, snap = int(header["blocks"]), int(header["slots"]), int(header["snap"])
    return region.offset + MIRROR_HEADER_DTYPE.itemsize, blocks, slots, mirror_block_dtype(slots, snap), snap


def _part(arena: Arena, k: int, name: str) -> np.ndarray:
    """Field ``name`` of block ``k`` as a C-contiguous view of the arena (what the compiled copy takes)."""
    first, blocks, slots, dtype, snap = _layout(arena)
    if not 0 <= k < blocks:
        raise IndexError(f"mirror block {k} of {blocks}")
    off = first + k * dtype.itemsize + dtype.fields[name][1]
    if name == "ctl":
        return arena.view(Region(MIRROR_REGION, off, MIRROR_CTL_DTYPE.itemsize), np.int64)   # writable where granted
    if name == "data":
        return arena.view(Region(MIRROR_REGION, off, slots * snap)).reshape(slots, snap)
    return arena.view(Region(MIRROR_REGION, off, 8 * slots), np.int64)


def control(arena: Arena, k: int) -> np.ndarray:
    """Block ``k``'s control words (C_* index them)."""
    return _part(arena, k, "ctl")


def control_page(arena: Arena, k: int) -> tuple[int, int]:
    """(offset, size) of the page holding block ``k``'s control part: what a capture is given writable."""
    first, _, _, dtype, _ = _layout(arena)
    return first + k * dtype.itemsize, PAGE_SIZE


class Tap:
    """A stage's end of its mirror ring: ``copy`` (numpy) or ``compiled`` (the arrays mirror_jit.copy takes).

    A stage without a block (a worker, an arena without the region) gets an idle tap: its request word is
    its own and stays 0, so it never copies."""

    def __init__(self, ctl: np.ndarray, length: np.ndarray, stamp: np.ndarray, rows: np.ndarray, data: np.ndarray,
                 lengths: np.ndarray):
        self.ctl, self.length, self.stamp, self.rows = ctl, length, stamp, rows
        self.data, self.lengths = data, lengths          # the packet buffers' data and lengths
        self.mask = len(length) - 1
        self.snap = rows.shape[1]
        self.compiled = (ctl, length, stamp, rows, np.zeros(2, np.int64), data, lengths)

    @classmethod
    def of(cls, arena: Arena, stages, me, bufs) -> Tap:
        """The tap of stage ``me`` of ``stages`` (an idle one when it has no block)."""
        names = [s.name for s in tapped(stages)]
        if me.name in names and _layout(arena) is not None:
            k = names.index(me.name)
            return cls(control(arena, k), _part(arena, k, "length"), _part(arena, k, "stamp"), _part(arena, k, "data"),
                       bufs.data, bufs.length)
        return cls.idle(bufs.data, bufs.length)

    @classmethod
    def idle(cls, data: np.ndarray, lengths: np.ndarray) -> Tap:
        slots = np.zeros(1, np.int64)
        return cls(np.zeros(CTL_WORDS, np.int64), slots, slots.copy(), np.zeros((1, 1), np.uint8), data, lengths)

    def copy(self, idx: np.ndarray) -> None:
        """While a capture asks: copy the frames of buffers ``idx`` into the ring, as many as fit; the rest
        are counted as dropped.  mirror_jit.copy does the same in compiled code."""
        ctl = self.ctl
        if not ctl[C_REQUEST] or not len(idx):
            return
        n = len(idx)
        head, tail = int(ctl[C_HEAD]), int(ctl[C_TAIL])
        slots = self.mask + 1
        k = min(n, min(max(slots - (head - tail), 0), slots))    # a garbage tail never makes more room
        if k < n:
            ctl[C_DROPPED] += n - k
        if not k:
            return
        take = idx[:k]
        sizes = self.lengths[take].astype(np.int64)
        width = min(int(sizes.max()), self.snap)
        at = (head + np.arange(k)) & self.mask
        self.rows[at, :width] = self.data[take, :width]
        self.length[at] = sizes
        self.stamp[at] = time.time_ns()
        ctl[C_COPIED] += k
        ctl[C_HEAD] = head + k                           # after the copies: the capture reads up to here


# ---- the capture's end ---------------------------------------------------------------------------

class MirrorError(Exception):
    """A pipeline without mirror rings, or a ring another capture holds; the message says which."""


def blocks_of(arena: Arena, stages) -> dict[str, int]:
    """Stage name -> its block, for the stages of ``stages`` (the plan region's) that have one; an
    arena without the region (a pipeline started by an ixypipe without capture) is a MirrorError."""
    layout = _layout(arena)
    if layout is None:
        raise MirrorError(f"arena {arena.name} has no {MIRROR_REGION} region: the pipeline was started by an "
                          "ixypipe without capture support; restart it to capture")
    return {s.name: k for k, s in enumerate(tapped(stages)) if k < layout[1]}


def claim(arena: Arena, k: int, pid: int) -> tuple[int, int]:
    """Ask block ``k``'s stage to copy for capture ``pid`` (the caller holds the block's lock): the ring is
    emptied first (tail = head).  Returns (copied, dropped) so far, the baseline of what this capture saw."""
    ctl = control(arena, k)
    ctl[C_TAIL] = ctl[C_HEAD]
    ctl[C_REQUEST] = pid
    return int(ctl[C_COPIED]), int(ctl[C_DROPPED])


def release(arena: Arena, k: int, pid: int) -> None:
    """The stage copies no more for capture ``pid`` (a request another capture made since is left alone)."""
    ctl = control(arena, k)
    if ctl[C_REQUEST] == pid:
        ctl[C_REQUEST] = 0


def take(arena: Arena, k: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What block ``k``'s ring holds (at most ``limit`` frames), taken off it: (lengths on the wire, times in
    ns, (n, width) bytes: row i starts with frame i's length of bytes, width the longest frame's)."""
    ctl = control(arena, k)
    head, tail = int(ctl[C_HEAD]), int(ctl[C_TAIL])
    length, stamp, rows = _part(arena, k, "length"), _part(arena, k, "stamp"), _part(arena, k, "data")
    slots = len(length)
    n = min(max(head - tail, 0), slots)
    if limit is not None:
        n = min(n, limit)
    at = (tail + np.arange(n)) & (slots - 1)
    sizes = length[at]
    width = min(int(sizes.max()), rows.shape[1]) if n else 0
    got = sizes, stamp[at], rows[at, :width]                  # fancy indexing: copies, not views
    ctl[C_TAIL] = tail + n                               # after the copies: the stage may fill these slots again
    return got


def counts(arena: Arena, k: int) -> tuple[int, int]:
    """(copied, dropped) of block ``k`` since the pipeline started."""
    ctl = control(arena, k)
    return int(ctl[C_COPIED]), int(ctl[C_DROPPED])


def reap(arena: Arena, alive) -> list[int]:
    """Clear the request of every block whose capture is gone (``alive(pid)`` False): a capture killed
    with SIGKILL leaves its request behind.  Returns the pids cleared.  One vector read when none is on."""
    layout = _layout(arena)
    if layout is None or not layout[1]:
        return []
    first, blocks, _, dtype, _ = layout
    stride = dtype.itemsize // 8
    words = arena.view(Region(MIRROR_REGION, first, blocks * dtype.itemsize), np.int64)
    requests = words[C_REQUEST::stride]
    gone = []
    for k in np.flatnonzero(requests).tolist():
        pid = int(requests[k])
        if not alive(pid):
            words[k * stride + C_REQUEST] = 0
            gone.append(pid)
    return gone
