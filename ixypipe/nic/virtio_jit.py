"""Optional compiled hot path of the virtio driver: rx_burst and tx_burst as numba kernels.

They do exactly what the numpy kernels in ``virtio_numpy.py`` do, with the
same arguments (the contract is written there), entry by entry instead of
array by array, so a batch of 32 costs one call.  Used when numba is
installed unless the port asks for ``hot_path="numpy"``; both are tested
against the software virtio-net device.  numba gives array arguments no
``noalias``, so the ring stores stay before the avail.idx store; x86 keeps
them in order (on Arm a dma_wmb() would go before it).

``rx_queue`` and ``tx_queue`` are the compiled stage loops' kernels
(pipeline/breathe_jit.py, the contract in nic/device.py): a burst over one
queue's record (``VirtioQueue.record``: the burst's arrays, then the queue's
kick words and notify cell), then the notification the Python path makes
through the transport: after a full fence (the avail.idx store before the
load of the used ring's flags, 2.7.13 of the specification), unless the
device set USED_F_NO_NOTIFY, a kick as ``virtio_regs.KICK_*`` says - a
16-bit store to the mapped notify structure (modern PCI), pwrite() to the
I/O BAR (legacy PCI), write() to the kick eventfd (vhost-user) - or, in a
process that cannot notify, only a count (KICK_WANTED) that the driver's
housekeeping reports.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.nic import virtio_regs as V
from ixypipe.nic.virtio_numpy import (
    RX_BAD_COUNT,
    RX_BAD_ID,
    RX_BAD_LEN,
    RX_ERROR,
    TX_BAD_INDEX,
    TX_BAD_LENGTH,
    TX_ERROR,
)

numba = jitcache.load_numba()

AVAILABLE = numba is not None

_LAST, _AVAIL, _TOP, _HANDING, _POSTED, _HDR = (V.QSTATE_LAST_USED, V.QSTATE_AVAIL, V.QSTATE_FREE_TOP,
                                                V.QSTATE_HANDING, V.QSTATE_POSTED, V.QSTATE_HDR_LEN)
_PACKETS, _BYTES = V.QSTATE_PACKETS, V.QSTATE_BYTES
_U32 = np.uint64(0xFFFFFFFF)

rx_burst = tx_burst = rx_queue = tx_queue = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @jit
    def rx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, buf_len, data_addr, stack, top, bad, out):
        """Receive into ``out``; returns how many (or RX_ERROR, what in ``bad``)."""
        n = np.int64(desc.shape[0])
        mask = n - 1
        last = np.int64(state[_LAST])
        used_idx = np.int64(used_hdr[1])
        ready = (used_idx - last) & 0xFFFF
        hdr = np.int64(state[_HDR])
        if ready > n:
            bad[0], bad[1], bad[2], bad[3] = RX_BAD_COUNT, used_idx, ready, 0
            return RX_ERROR
        free = np.int64(top[0])
        k = min(ready, np.int64(out.shape[0]), free)
        room = np.int64(desc[0, 1] & _U32) - hdr
        for j in range(k):
            pos = (last + j) & mask
            d = np.int64(used_ring[pos, 0])
            length = np.int64(used_ring[pos, 1]) - hdr
            if d >= n or length < 0 or length > room:
                bad[0] = RX_BAD_ID if d >= n else RX_BAD_LEN
                bad[1], bad[2], bad[3] = (last + j) & 0xFFFF, d, length + hdr
                return RX_ERROR
        a = np.int64(state[_AVAIL])
        nbytes = np.int64(0)
        for j in range(k):
            pos = (last + j) & mask
            d = np.int64(used_ring[pos, 0])
            b = slot_buf[d]
            out[j] = b
            length = np.int64(used_ring[pos, 1]) - hdr
            buf_len[b] = length
            nbytes += length
            fresh = stack[free - 1 - j]                  # pops like Mempool.alloc: from the top
            slot_buf[d] = fresh
            desc[d, 0] = data_addr[fresh] - np.uint64(hdr)
            avail[2 + ((a + j) & mask)] = d
        if k:
            avail[1] = (a + k) & 0xFFFF
            state[_AVAIL] = (a + k) & 0xFFFF
            state[_LAST] = (last + k) & 0xFFFF
            state[_PACKETS] += k
            state[_BYTES] += nbytes
            top[0] = free - k
        return k

    @jit
    def tx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, free_ids, buf_len, data_addr, hdr, freed,
                 lohi, error, max_data, bufs):
        """Clean every completed descriptor, then post ``bufs``; returns posted | cleaned << 32."""
        n = np.int64(desc.shape[0])
        mask = n - 1
        last = np.int64(state[_LAST])
        done = (np.int64(used_hdr[1]) - last) & 0xFFFF
        top = np.int64(state[_TOP])
        cleaned = min(done, n - top)
        lo = np.int64(0xFFFFFFFF)
        hi = np.int64(-1)
        for j in range(cleaned):
            d = np.int64(used_ring[(last + j) & mask, 0]) & mask
            b = np.int64(slot_buf[d])
            freed[j] = b
            lo = min(lo, b)
            hi = max(hi, b)
            free_ids[top] = d
            top += 1
        if cleaned:
            state[_TOP] = top
            state[_LAST] = (last + cleaned) & 0xFFFF
            state[_HANDING] = cleaned
            lohi[0] = lo
            lohi[1] = hi
        k = min(np.int64(bufs.shape[0]), top)
        count = np.int64(buf_len.shape[0])
        for j in range(k):
            b = np.int64(bufs[j])
            if b < 0 or b >= count:
                error[0] = TX_BAD_INDEX
            elif buf_len[b] == 0 or np.int64(buf_len[b]) > max_data:
                error[0] = TX_BAD_LENGTH
            else:
                continue
            error[1] = j
            return TX_ERROR - cleaned
        hlen = np.int64(state[_HDR])
        a = np.int64(state[_AVAIL])
        nbytes = np.int64(0)
        for j in range(k):
            b = bufs[j]
            nbytes += np.int64(buf_len[b])
            d = np.int64(free_ids[top - 1 - j])
            for i in range(hlen):
                hdr[b, i] = 0
            desc[d, 0] = data_addr[b] - np.uint64(hlen)
            desc[d, 1] = np.uint64(buf_len[b]) + np.uint64(hlen)
            slot_buf[d] = b
            avail[2 + ((a + j) & mask)] = d
        if k:
            avail[1] = (a + k) & 0xFFFF
            state[_AVAIL] = (a + k) & 0xFFFF
            state[_TOP] = top - k
            state[_POSTED] += k
            state[_PACKETS] += k
            state[_BYTES] += nbytes
        return k | (cleaned << 32)

    from numba import types

    from ixypipe.rings.wakeup_jit import fence

    _write = types.ExternalFunction("write", types.intp(types.intc, types.voidptr, types.uintp))
    _pwrite = types.ExternalFunction("pwrite", types.intp(types.intc, types.voidptr, types.uintp, types.int64))
    _NO_NOTIFY = np.uint16(V.USED_F_NO_NOTIFY)

    @jit
    def _notify(used_hdr, kick, cell):
        """After avail.idx moved: kick the device unless it suppresses notifications (2.7.10/2.7.13)."""
        fence()                                           # the avail.idx store is visible before the flags load
        if used_hdr[0] & _NO_NOTIFY:
            return
        kick[V.KICK_WANTED] += 1
        mode = kick[V.KICK_MODE]
        if mode == V.KICK_STORE:
            cell[0] = np.uint16(kick[V.KICK_VALUE])
        elif mode == V.KICK_PWRITE:                       # the queue index: the low two bytes of its word
            _pwrite(kick[V.KICK_FD], kick[V.KICK_VALUE:].ctypes.data, 2, kick[V.KICK_OFFSET])
        elif mode == V.KICK_EVENTFD:                      # eventfd adds the u64 written: 1
            _write(kick[V.KICK_FD], kick[V.KICK_ONE:].ctypes.data, 8)

    @jit
    def rx_queue(q, out):
        """rx_burst over one queue's record ``q`` (VirtioQueue.record), then the kick: the compiled stage loops'
        receive.  A negative return is rx_burst's RX_ERROR (what was wrong in the record's ``bad``)."""
        desc, avail, used_hdr, used_ring, slot_buf, state, buf_len, data_addr, stack, top, bad, kick, cell = q
        got = rx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, buf_len, data_addr, stack, top, bad, out)
        if got > 0:
            _notify(used_hdr, kick, cell)
        return got

    @jit
    def tx_queue(q, bufs):
        """tx_burst over one queue's record ``q`` (VirtioQueue.record), then the kick: (posted, cleaned) with the
        cleaned buffers in the record's ``freed``; posted TX_ERROR: a bad buffer (what and where in ``error``)."""
        (desc, avail, used_hdr, used_ring, slot_buf, state, free_ids, buf_len, data_addr, hdr, freed, lohi, error,
         max_data, kick, cell) = q
        r = tx_burst(desc, avail, used_hdr, used_ring, slot_buf, state, free_ids, buf_len, data_addr, hdr, freed,
                     lohi, error, max_data, bufs)
        if r < 0:
            return np.int64(TX_ERROR), np.int64(TX_ERROR) - r
        posted = r & np.int64(0xFFFFFFFF)
        if posted:
            _notify(used_hdr, kick, cell)
        return posted, r >> 32
