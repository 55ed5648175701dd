"""Compiled hot paths of the software virtio-net device: the available-ring walks of TX and RX.

Numba kernels that do, descriptor by descriptor, exactly what the numpy
reference in ``virtio_model.py`` (``tx_walk_numpy``, ``rx_walk_numpy``)
does array by array:

* ``tx_walk``: ``count`` available entries from ``last_avail``: each head's
  chain is checked (head and next inside the ring, no loop, no
  device-writable or INDIRECT descriptor without the feature, every buffer
  inside registered memory) and gathered; the first ``hdr_len`` bytes are the
  virtio_net_hdr (NEEDS_CSUM or a gso_type need features the driver did not
  negotiate), the rest is the frame, copied into ``out``; a used entry (head,
  0) per frame and used.idx once.
* ``rx_walk``: frames ``data[:count]`` into the chains of the next available
  entries: header (zero, num_buffers 1 with the 12-byte header) and frame
  scattered over device-writable descriptors; a used entry (head, bytes
  written) per frame and used.idx once.

Each walk stops at the first bad entry and says why in ``info`` (the reason
codes below, then the entry's position, its descriptor, the address; a bad
buffer's length in info[6]): the
caller reports the fault and stops the queue; nothing is used-published for
that entry.  Flags in ``allow``: ALLOW_* bits for what was negotiated.

What a frame costs (``bench/virtio_sim_bench.py``): the run of registered
memory a lone descriptor's buffer lies in is looked for first in the run the
previous buffer was in (a pool's buffers share a 2 MiB page, a binary search
over the runs mispredicts its branches), the frame moves with one libc
``memcpy``, and ``tx_walk``'s rows are as wide as the widest frame seen
(WIDER asks the caller for wider rows), not 9018 bytes apart.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.nic import virtio_regs as V

numba = jitcache.load_numba()
AVAILABLE = numba is not None

OK = 0
BAD_HEAD = 1            # an available entry names a descriptor past the ring
BAD_NEXT = 2            # a descriptor's next is past the ring
LOOP = 3                # a chain longer than the ring: it loops
INDIRECT = 4            # INDIRECT without RING_INDIRECT_DESC
WRONG_DIRECTION = 5     # TX: a device-writable descriptor; RX: a device-readable one
BAD_ADDRESS = 6         # a buffer outside registered memory
NO_CSUM = 7             # TX header asks for NEEDS_CSUM without CSUM
NO_GSO = 8              # TX header asks for segmentation without a HOST_TSO/UFO feature
BAD_LENGTH = 9          # TX frame not 1..SIM_MAX_FRAME bytes
TOO_SMALL = 10          # RX chain cannot hold header and frame
WIDER = 11              # not a fault: TX frame wider than the rows of ``out``; the caller widens them and goes on

ALLOW_INDIRECT = 1
ALLOW_CSUM = 2
ALLOW_GSO = 4

_U32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_S48 = np.uint64(48)
_NEXT, _WRITE, _INDIR = V.DESC_F_NEXT, V.DESC_F_WRITE, V.DESC_F_INDIRECT

tx_walk = rx_walk = None

if AVAILABLE:
    from numba import types

    from ixypipe.sim.kernels import _find

    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    inline = jitcache.njit(__file__, nogil=True, boundscheck=False, inline="always")
    # addresses as integers (array.ctypes.data + offset): the same registers as pointers in the C ABI
    _memcpy = types.ExternalFunction("memcpy", types.uintp(types.uintp, types.uintp, types.uintp))

    @inline
    def _lone(desc, head, writable, base, size, hint):
        """The DMA run of the buffer when ``head`` is a lone, well-formed descriptor inside registered memory
        (the common case, checked without walking a chain), else -1: then _check_chain walks and judges it.
        ``hint``: the run the previous buffer was in (-1: none), tried before the search."""
        if head >= desc.shape[0]:
            return -1
        w1 = desc[head, 1]
        flags = np.int64((w1 >> _S32) & np.uint64(0xFFFF))
        length = np.int64(w1 & _U32)
        if flags & (_NEXT | _INDIR) != 0 or ((flags & _WRITE) != 0) != writable or length <= 0:
            return -1
        addr = np.int64(desc[head, 0])
        if hint >= 0 and base[hint] <= addr and addr + length <= base[hint] + size[hint]:
            return hint
        return _find(base, size, addr, length)

    @jit
    def _check_chain(desc, head, writable, allow, base, size, info, j):
        """Walk the chain from ``head``: returns its total bytes, or -1 with info filled."""
        n = desc.shape[0]
        if head >= n:
            info[0], info[1], info[2], info[3] = BAD_HEAD, j, head, 0
            return -1
        d = head
        total = 0
        for _ in range(n + 1):
            w1 = desc[d, 1]
            flags = np.int64((w1 >> _S32) & np.uint64(0xFFFF))
            length = np.int64(w1 & _U32)
            addr = np.int64(desc[d, 0])
            if flags & _INDIR and not allow & ALLOW_INDIRECT:
                info[0], info[1], info[2], info[3] = INDIRECT, j, d, addr
                return -1
            if ((flags & _WRITE) != 0) != writable:
                info[0], info[1], info[2], info[3] = WRONG_DIRECTION, j, d, addr
                return -1
            if length > 0 and _find(base, size, addr, length) < 0:
                info[0], info[1], info[2], info[3] = BAD_ADDRESS, j, d, addr
                info[6] = length
                return -1
            total += length
            if not flags & _NEXT:
                return total
            nxt = np.int64(w1 >> _S48)
            if nxt >= n:
                info[0], info[1], info[2], info[3] = BAD_NEXT, j, d, nxt
                return -1
            d = nxt
        info[0], info[1], info[2], info[3] = LOOP, j, head, 0
        return -1

    @jit
    def tx_walk(desc, avail, used_hdr, used_ring, last_avail, count, hdr_len, allow, base, size, owner, offset,
                bufs, out, lengths, hb, max_frame, info):
        """``count`` available entries onto the wire batch ``out``; returns how many were good.
        info: [reason, position, descriptor, address, widest frame, bytes (or a bad buffer's length)];
        reason WIDER (info[3]: the frame's length) is no fault: ``out``'s rows are too narrow for that frame."""
        n = desc.shape[0]
        mask = n - 1
        info[0] = OK
        width = 0
        nbytes = 0
        used_idx = np.int64(used_hdr[1])
        maxw = out.shape[1]
        own = -1
        hint = -1
        buf = bufs[0]
        for j in range(count):
            head = np.int64(avail[2 + ((last_avail + j) & mask)])
            lone = _lone(desc, head, False, base, size, hint)
            total = np.int64(desc[head, 1] & _U32) if lone >= 0 else _check_chain(desc, head, False, allow, base,
                                                                                  size, info, j)
            if total < 0:
                break
            frame = total - hdr_len
            if frame < 1 or frame > max_frame:
                info[0], info[1], info[2], info[3] = BAD_LENGTH, j, head, frame
                break
            if frame > maxw:
                info[0], info[1], info[2], info[3] = WIDER, j, head, frame
                break
            d = head
            pos = 0
            if lone >= 0:                   # one descriptor: header, then the frame
                hint = lone
                if owner[lone] != own:
                    own = owner[lone]
                    buf = bufs[own]
                o = np.uint64(offset[lone] + np.int64(desc[head, 0]) - base[lone])
                hb[V.NET_HDR_FLAGS] = buf[o + np.uint64(V.NET_HDR_FLAGS)]         # the header's fields checked
                hb[V.NET_HDR_GSO_TYPE] = buf[o + np.uint64(V.NET_HDR_GSO_TYPE)]
                o += np.uint64(hdr_len)
                _memcpy(out[j].ctypes.data, buf.ctypes.data + o, np.uint64(frame))
            while lone < 0:
                w1 = desc[d, 1]
                length = np.int64(w1 & _U32)
                if length > 0:
                    addr = np.int64(desc[d, 0])
                    run = _find(base, size, addr, length)
                    if owner[run] != own:            # a typed list's item costs: fetched when the arena changes
                        own = owner[run]
                        buf = bufs[own]
                    o = offset[run] + addr - base[run]
                    b = 0
                    while b < length and pos + b < hdr_len:
                        hb[pos + b] = buf[o + b]
                        b += 1
                    dst = pos + b - hdr_len
                    for k in range(length - b):
                        out[j, dst + k] = buf[o + b + k]
                pos += length
                if not (w1 >> _S32) & np.uint64(_NEXT):
                    break
                d = np.int64(w1 >> _S48)
            if hb[0] & V.NET_HDR_F_NEEDS_CSUM and not allow & ALLOW_CSUM:
                info[0], info[1], info[2], info[3] = NO_CSUM, j, head, 0
                break
            if hb[1] != V.NET_HDR_GSO_NONE and not allow & ALLOW_GSO:
                info[0], info[1], info[2], info[3] = NO_GSO, j, head, hb[1]
                break
            lengths[j] = frame
            width = max(width, frame)
            nbytes += frame
            u = (used_idx + j) & mask
            used_ring[u, 0] = head
            used_ring[u, 1] = 0
        good = count if info[0] == OK else info[1]
        if good:
            used_hdr[1] = (used_idx + good) & 0xFFFF       # after the entries (x86: stores in order)
        info[4] = width
        info[5] = nbytes
        return good

    @jit
    def rx_walk(desc, avail, used_hdr, used_ring, last_avail, count, hdr_len, allow, base, size, owner, offset,
                bufs, data, lengths, first, info):
        """Frames ``data[first:first + count]`` into the next ``count`` available chains; returns how many.
        info: [reason, position, descriptor, address, frame length, bytes written (frames only)]."""
        n = desc.shape[0]
        mask = n - 1
        info[0] = OK
        nbytes = 0
        used_idx = np.int64(used_hdr[1])
        good = 0
        own = -1
        hint = -1
        buf = bufs[0]
        for j in range(count):
            head = np.int64(avail[2 + ((last_avail + j) & mask)])
            lone = _lone(desc, head, True, base, size, hint)
            total = np.int64(desc[head, 1] & _U32) if lone >= 0 else _check_chain(desc, head, True, allow, base,
                                                                                 size, info, j)
            if total < 0:
                break
            flen = np.int64(lengths[first + j])
            if total < hdr_len + flen:
                info[0], info[1], info[2], info[3], info[4] = TOO_SMALL, j, head, total, flen
                break
            d = head
            pos = 0
            end = hdr_len + flen
            if lone >= 0:                   # one descriptor: header, then the frame
                hint = lone
                if owner[lone] != own:
                    own = owner[lone]
                    buf = bufs[own]
                o = np.uint64(offset[lone] + np.int64(desc[head, 0]) - base[lone])
                for b in range(np.uint64(hdr_len)):       # unsigned indices: no wrap-around test, so it vectorizes
                    buf[o + b] = 0
                if hdr_len == V.NET_HDR_MRG_LEN:
                    buf[o + np.uint64(V.NET_HDR_NUM_BUFFERS)] = 1
                o += np.uint64(hdr_len)
                if data.strides[1] == 1:
                    _memcpy(buf.ctypes.data + o, data[first + j].ctypes.data, np.uint64(flen))
                else:
                    for b in range(np.uint64(flen)):
                        buf[o + b] = data[first + j, b]
                pos = end
            while pos < end:
                w1 = desc[d, 1]
                length = np.int64(w1 & _U32)
                if length > 0:
                    addr = np.int64(desc[d, 0])
                    run = _find(base, size, addr, length)
                    if owner[run] != own:
                        own = owner[run]
                        buf = bufs[own]
                    o = offset[run] + addr - base[run]
                    b = 0
                    while b < length and pos + b < hdr_len:
                        p = pos + b
                        buf[o + b] = 1 if (p == V.NET_HDR_NUM_BUFFERS and hdr_len == V.NET_HDR_MRG_LEN) else 0
                        b += 1
                    src = pos + b - hdr_len
                    todo = min(length - b, end - pos - b)
                    for k in range(todo):
                        buf[o + b + k] = data[first + j, src + k]
                pos += length
                if not (w1 >> _S32) & np.uint64(_NEXT):
                    break
                d = np.int64(w1 >> _S48)
            u = (used_idx + j) & mask
            used_ring[u, 0] = head
            used_ring[u, 1] = end
            nbytes += flen
            good += 1
        if good:
            used_hdr[1] = (used_idx + good) & 0xFFFF
        info[5] = nbytes
        return good


def warm() -> None:
    """Compile (or load) both walks with the model's argument types."""
    if not AVAILABLE:
        return
    from ixypipe.sim.kernels import typed_buffers
    desc = np.zeros((2, 2), "<u8")
    avail = np.zeros(5, "<u2")
    used_hdr = np.zeros(2, "<u2")
    used_ring = np.zeros((2, 2), "<u4")
    i64 = np.zeros(1, np.int64)
    info = np.zeros(8, np.int64)
    tables = (i64[:0], i64[:0], i64[:0], i64[:0], typed_buffers([]))
    out = np.zeros((1, 64), np.uint8)
    tx_walk(desc, avail, used_hdr, used_ring, 0, 0, 12, 0, *tables, out, i64, np.zeros(16, np.uint8), 64, info)
    rx_walk(desc, avail, used_hdr, used_ring, 0, 0, 12, 0, *tables, out, i64, 0, info)
