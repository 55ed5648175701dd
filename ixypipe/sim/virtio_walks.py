"""The software virtio-net device's walks in numpy: the reference the numba walks (virtio_kernels.py) match.

``tx_walk_numpy`` and ``rx_walk_numpy`` take a batch of available entries at
once and walk their descriptor chains one chain depth per pass (vectorized
over the entries, so a loop runs at most as often as a chain is long), with
the checks and the ``info`` report of ``virtio_kernels.tx_walk``/``rx_walk``
in the same order: the first bad entry stops the walk and nothing is
published for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ixypipe.nic import virtio_regs as V
from ixypipe.sim import virtio_kernels as K
from ixypipe.sim.dma import DmaSpace
from ixypipe.sim.payload import SIM_MAX_FRAME
from ixypipe.sim.traffic import PacketBatch

if TYPE_CHECKING:
    from ixypipe.sim.virtio_model import VirtQueue


def _chains(q: VirtQueue, count: int, writable: bool, allow: int, dma: DmaSpace, info: np.ndarray):
    """Walk the chains of ``count`` available entries, all at once, one chain depth per pass.

    Returns (heads, segments, totals, first_bad): segments is a list of (rows, descriptors, addresses,
    lengths, chain positions) per depth; the first bad entry's reason is in ``info`` (as the kernels')."""
    n = len(q.desc)
    mask = n - 1
    heads = q.avail[2 + ((q.last_avail + np.arange(count)) & mask)].astype(np.int64)
    reason = np.zeros(count, np.int64)
    where = np.zeros((count, 3), np.int64)              # descriptor, address, length of what was wrong
    reason[heads >= n] = K.BAD_HEAD
    where[heads >= n, 0] = heads[heads >= n]
    cur = np.where(heads < n, heads, 0)
    active = heads < n
    totals = np.zeros(count, np.int64)
    segments = []
    for _ in range(n + 1):
        rows = np.flatnonzero(active)
        if not len(rows):
            break
        d = cur[rows]
        w1 = q.desc[d, 1]
        flags = ((w1 >> np.uint64(32)) & np.uint64(0xFFFF)).astype(np.int64)
        length = (w1 & np.uint64(0xFFFFFFFF)).astype(np.int64)
        addr = q.desc[d, 0].astype(np.int64)
        ok, arena, offset = dma.resolve(addr, np.maximum(length, 1))
        bad = np.zeros(len(rows), np.int64)
        bad[~ok & (length > 0)] = K.BAD_ADDRESS
        bad[((flags & V.DESC_F_WRITE) != 0) != writable] = K.WRONG_DIRECTION
        if not allow & K.ALLOW_INDIRECT:
            bad[(flags & V.DESC_F_INDIRECT) != 0] = K.INDIRECT
        nxt = (w1 >> np.uint64(48)).astype(np.int64)
        more = (flags & V.DESC_F_NEXT) != 0
        bad[(bad == 0) & more & (nxt >= n)] = K.BAD_NEXT
        for_next = np.where(bad == K.BAD_NEXT, nxt, addr)
        hit = bad != 0
        reason[rows[hit]] = bad[hit]
        where[rows[hit]] = np.stack([d[hit], for_next[hit], length[hit]], axis=1)
        good = ~hit
        segments.append((rows[good], d[good], arena[good], offset[good], length[good], totals[rows[good]]))
        totals[rows[good]] += length[good]
        active[rows] = good & more
        cur[rows] = np.where(good & more, nxt, 0)
    looping = np.flatnonzero(active)
    reason[looping] = K.LOOP
    where[looping, 0] = heads[looping]
    where[looping, 1] = 0
    return heads, segments, totals, reason, where


def _first_bad(reason: np.ndarray, where: np.ndarray, info: np.ndarray) -> int:
    bad = np.flatnonzero(reason)
    if not len(bad):
        return len(reason)
    j = int(bad[0])
    info[0], info[1], info[2], info[3], info[6] = reason[j], j, where[j, 0], where[j, 1], where[j, 2]
    return j


def tx_walk_numpy(q: VirtQueue, count: int, hdr_len: int, allow: int, dma: DmaSpace, info: np.ndarray):
    """The reference of ``virtio_kernels.tx_walk``: returns (good, PacketBatch of the good frames)."""
    heads, segments, totals, reason, where = _chains(q, count, False, allow, dma, info)
    frame = totals - hdr_len
    short = (reason == 0) & ((frame < 1) | (frame > SIM_MAX_FRAME))
    reason[short] = K.BAD_LENGTH
    where[short, 0], where[short, 1] = heads[short], frame[short]
    width = max(int(totals.max()), hdr_len) if count else hdr_len
    chain = np.zeros((count, width), np.uint8)
    for rows, _d, arena, offset, length, pos in segments:
        some = length > 0
        rows, arena, offset, length, pos = rows[some], arena[some], offset[some], length[some], pos[some]
        if not len(rows):
            continue
        data = dma.read(arena, offset, length).data
        cols = np.arange(data.shape[1])
        mask = cols < length[:, None]
        chain[np.broadcast_to(rows[:, None], mask.shape)[mask], (pos[:, None] + cols)[mask]] = data[mask]
    hdr = chain[:, :hdr_len]
    ok = reason == 0
    csum = ok & ((hdr[:, V.NET_HDR_FLAGS] & V.NET_HDR_F_NEEDS_CSUM) != 0) & (not allow & K.ALLOW_CSUM)
    reason[csum] = K.NO_CSUM
    where[csum, 0], where[csum, 1] = heads[csum], 0
    gso = (reason == 0) & (hdr[:, V.NET_HDR_GSO_TYPE] != V.NET_HDR_GSO_NONE) & (not allow & K.ALLOW_GSO)
    reason[gso] = K.NO_GSO
    where[gso, 0], where[gso, 1] = heads[gso], hdr[gso, V.NET_HDR_GSO_TYPE]
    good = _first_bad(reason, where, info)
    if good:
        n = len(q.desc)
        used = int(q.used_hdr[1])
        slots = (used + np.arange(good)) & (n - 1)
        q.used_ring[slots, 0] = heads[:good]
        q.used_ring[slots, 1] = 0
        q.used_hdr[1] = (used + good) & 0xFFFF
    lengths = frame[:good]
    batch = PacketBatch(chain[:good, hdr_len:hdr_len + (int(lengths.max()) if good else 0)], lengths.copy())
    return good, batch


def rx_walk_numpy(q: VirtQueue, batch: PacketBatch, count: int, hdr_len: int, allow: int, dma: DmaSpace,
                  info: np.ndarray) -> int:
    """The reference of ``virtio_kernels.rx_walk``: frames ``batch[:count]`` into the available chains."""
    heads, segments, totals, reason, where = _chains(q, count, True, allow, dma, info)
    flen = batch.lengths[:count].astype(np.int64)
    small = (reason == 0) & (totals < hdr_len + flen)
    reason[small] = K.TOO_SMALL
    where[small, 0], where[small, 1], where[small, 2] = heads[small], totals[small], 0
    good = _first_bad(reason, where, info)
    if info[0] == K.TOO_SMALL:
        info[4] = flen[good]
    if good == 0:
        return 0
    end = hdr_len + flen[:good]
    image = np.zeros((good, hdr_len + batch.data.shape[1]), np.uint8)      # header + frame, as written
    if hdr_len == V.NET_HDR_MRG_LEN:
        image[:, V.NET_HDR_NUM_BUFFERS] = 1
    image[:, hdr_len:] = batch.data[:good]
    for rows, _d, arena, offset, length, pos in segments:
        keep = rows < good
        rows, arena, offset, length, pos = rows[keep], arena[keep], offset[keep], length[keep], pos[keep]
        take = np.minimum(length, end[rows] - pos)
        some = take > 0
        if not some.any():
            continue
        rows, arena, offset, take, pos = rows[some], arena[some], offset[some], take[some], pos[some]
        width = int(take.max())
        cols = np.minimum(pos[:, None] + np.arange(width), image.shape[1] - 1)
        dma.write(arena, offset, PacketBatch(image[rows[:, None], cols], take))
    n = len(q.desc)
    used = int(q.used_hdr[1])
    slots = (used + np.arange(good)) & (n - 1)
    q.used_ring[slots, 0] = heads[:good]
    q.used_ring[slots, 1] = end
    q.used_hdr[1] = (used + good) & 0xFFFF
    info[5] = int(flen[:good].sum())
    return good
