"""The virtio driver's hot path in numpy: the reference RX and TX kernels over split virtqueues, and their contract.

``rx_burst`` and ``tx_burst`` here and in ``virtio_jit.py`` (numba) take the
same arguments and leave rings, mempool and queue state in the same
condition, so the driver binds one pair per queue (``functools.partial``).
One descriptor carries one packet: the ``hdr_len``-byte virtio_net_hdr sits
in the packet buffer's headroom right before the frame (ANY_LAYOUT, or
VERSION_1), so a descriptor's address is the frame's DMA address minus
``hdr_len``.

Contract (arena views; indices into the rings are free-running u16 as in
the specification, kept in the queue state words of virtio_regs.QSTATE_*):

* ``rx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, buf_len, data_addr, stack, top, bad, out)``:
  takes the used entries from ``state[QSTATE_LAST_USED]`` up to used.idx, at
  most ``len(out)`` and at most as many as the pool has free.  Entry (id,
  len): the buffer in descriptor ``id`` goes to ``out`` with length ``len -
  hdr_len``; the descriptor gets a buffer popped from the pool's free stack
  and goes back on the available ring; avail.idx is written once.  Returns
  how many, or RX_ERROR with ``bad`` = (RX_BAD_*, used index, id, len).
* ``tx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, free_ids, buf_len, data_addr, hdr, freed,
  lohi, error, max_data, bufs)``: first takes every used entry (their buffers
  to ``freed``, descriptors back on the ``free_ids`` stack, smallest and
  largest buffer index to ``lohi``), then posts as many of ``bufs`` as there
  are free descriptors: the header zeroed (``hdr``: the buffers' header bytes,
  (count, hdr_len)), address and length in a descriptor, its id on the
  available ring; avail.idx once.  Returns ``posted | cleaned << 32``; a bad
  buffer posts nothing and returns ``TX_ERROR - cleaned`` with (TX_BAD_*, its
  position in ``bufs``) in ``error``.

Notifications are the caller's (after the kernel, unless the device set
USED_F_NO_NOTIFY): a legacy notify is a write to an I/O BAR, a system call.
"""

from __future__ import annotations

import numpy as np

from ixypipe.nic import virtio_regs as V

RX_ERROR = -1               # rx_burst: the device returned a used entry that cannot be
RX_BAD_ID = 1               # ... its descriptor id is past the ring
RX_BAD_LEN = 2              # ... its length is shorter than the header or longer than a buffer holds
RX_BAD_COUNT = 3            # ... used.idx ran ahead of what was made available
TX_ERROR = -1
TX_BAD_LENGTH = 1
TX_BAD_INDEX = 2

_LAST, _AVAIL, _TOP, _HANDING, _POSTED, _HDR = (V.QSTATE_LAST_USED, V.QSTATE_AVAIL, V.QSTATE_FREE_TOP,
                                                V.QSTATE_HANDING, V.QSTATE_POSTED, V.QSTATE_HDR_LEN)
_PACKETS, _BYTES = V.QSTATE_PACKETS, V.QSTATE_BYTES
_IDX = 1                    # avail[1] / used_hdr[1]: the ring's idx
_RING = 2                   # avail[2:2 + size]: the ring


def rx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, buf_len, data_addr, stack, top, bad, out):
    """Receive into ``out``; returns how many (or RX_ERROR, what in ``bad``)."""
    n = len(desc)
    mask = n - 1
    last = int(state[_LAST])
    ready = (int(used_hdr[_IDX]) - last) & 0xFFFF
    hdr = int(state[_HDR])
    if ready > n:
        bad[:] = (RX_BAD_COUNT, int(used_hdr[_IDX]), ready, 0)
        return RX_ERROR
    free = int(top[0])
    k = min(ready, len(out), free)
    if k == 0:
        return 0
    pos = (last + np.arange(k)) & mask
    ids = used_ring[pos, 0].astype(np.int64)
    lens = used_ring[pos, 1].astype(np.int64) - hdr
    wrong = (ids >= n) | (lens < 0) | (lens > int(desc[0, 1] & 0xFFFFFFFF) - hdr)
    if wrong.any():
        j = int(np.flatnonzero(wrong)[0])
        bad[:] = (RX_BAD_ID if ids[j] >= n else RX_BAD_LEN, (last + j) & 0xFFFF, ids[j], lens[j] + hdr)
        return RX_ERROR
    taken = slot_buf[ids]
    out[:k] = taken
    buf_len[taken] = lens
    fresh = stack[free - k:free][::-1]                  # pops like Mempool.alloc: from the top
    slot_buf[ids] = fresh
    desc[ids, 0] = data_addr[fresh] - np.uint64(hdr)
    a = int(state[_AVAIL])
    avail[_RING + ((a + np.arange(k)) & mask)] = ids
    # x86 keeps stores in order: the ring entries are visible before the index (Arm: a dma_wmb() here)
    avail[_IDX] = (a + k) & 0xFFFF
    state[_AVAIL] = (a + k) & 0xFFFF
    state[_LAST] = (last + k) & 0xFFFF
    state[_PACKETS] += k
    state[_BYTES] += int(lens.sum())
    top[0] = free - k
    return k


def tx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, free_ids, buf_len, data_addr, hdr, freed, lohi,
             error, max_data, bufs):
    """Clean every completed descriptor, then post ``bufs``; returns posted | cleaned << 32 (or TX_ERROR - cleaned)."""
    n = len(desc)
    mask = n - 1
    last = int(state[_LAST])
    done = (int(used_hdr[_IDX]) - last) & 0xFFFF
    top = int(state[_TOP])
    cleaned = min(done, n - top)            # never more than are out (a device that claims more is ignored)
    if cleaned:
        ids = used_ring[(last + np.arange(cleaned)) & mask, 0].astype(np.int64) & mask
        got = freed[:cleaned]
        got[:] = slot_buf[ids]
        lohi[0], lohi[1] = got.min(), got.max()
        free_ids[top:top + cleaned] = ids
        top += cleaned
        state[_TOP] = top
        state[_LAST] = (last + cleaned) & 0xFFFF
        state[_HANDING] = cleaned
    k = min(len(bufs), top)
    if k == 0:
        return cleaned << 32
    idx = bufs[:k]
    try:
        if idx.dtype.kind == "i" and int(idx.min()) < 0:
            raise IndexError
        lens = buf_len[idx]
    except IndexError:
        error[0], error[1] = TX_BAD_INDEX, int(np.flatnonzero((idx < 0) | (idx >= len(buf_len)))[0])
        return TX_ERROR - cleaned
    if int((lens - np.uint32(1)).max()) >= max_data:       # 0 wraps to the largest u32
        error[0], error[1] = TX_BAD_LENGTH, int(np.flatnonzero((lens == 0) | (lens > max_data))[0])
        return TX_ERROR - cleaned
    hlen = int(state[_HDR])
    ids = free_ids[top - k:top][::-1].astype(np.int64)      # pops from the top
    hdr[idx] = 0                                             # no checksum or segmentation offload asked
    desc[ids, 0] = data_addr[idx] - np.uint64(hlen)
    desc[ids, 1] = lens.astype(np.uint64) + np.uint64(hlen)  # flags 0 (device-readable, no NEXT), next 0
    slot_buf[ids] = idx
    a = int(state[_AVAIL])
    avail[_RING + ((a + np.arange(k)) & mask)] = ids
    avail[_IDX] = (a + k) & 0xFFFF                           # one publication per batch (x86: stores in order)
    state[_AVAIL] = (a + k) & 0xFFFF
    state[_TOP] = top - k
    state[_POSTED] += k
    state[_PACKETS] += k
    state[_BYTES] += int(lens.sum())
    return k | (cleaned << 32)
