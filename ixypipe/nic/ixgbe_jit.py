"""Optional compiled hot path of the ixgbe driver: rx_batch and tx_batch as numba kernels.

Owns two kernels that do exactly what the numpy kernels in ``ixgbe_numpy.py``
do, with the same arguments (the contract is written there), descriptor by
descriptor instead of array by array, so a batch of 32 costs one call
instead of twenty numpy operations.  ``rx_burst`` walks the run of
descriptors with DD set, hands out their buffers, pops a fresh buffer from
the queue's mempool for each slot and writes RDT once; ``tx_burst`` cleans
whole batches whose last descriptor has DD set (collecting their buffers for
tx_done), then posts advanced data descriptors and writes TDT once.  Each
descriptor's second 64-bit word is read with one load, so its status and
length come from the same write-back.  Used when numba is installed
(``pip install numba``) unless the port asks for ``hot_path="numpy"``; the
numpy path stays the reference and both are tested against the software
82599.  Both pop buffers straight off the mempool's free stack
(``Mempool.free_stack``, the compiled path's contract with the pool).

Ordering: numba gives array arguments no ``noalias``, so LLVM keeps the
descriptor stores before the doorbell store; x86 keeps them in order on the
bus (on Arm a dma_wmb() would go before each doorbell).
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.nic import registers as R
from ixypipe.nic.ixgbe_numpy import RX_ERROR_NO_EOP, TX_BAD_INDEX, TX_BAD_LENGTH, TX_ERROR

numba = jitcache.load_numba()         # None: the numpy path serves (jitcache warns once, with the cause)

AVAILABLE = numba is not None

# numba mixes int64 and uint64 into float64, so descriptor-word arithmetic uses uint64 constants
# and indices are int64 throughout.
_RX_STATUS_SHIFT = np.uint64(R.RXD_WORD2_STATUS_SHIFT)
_RX_LENGTH_SHIFT = np.uint64(R.RXD_WORD2_LENGTH_SHIFT)
_RX_LENGTH_MASK = np.uint64(R.RXD_LENGTH_MASK)
_RX_DD_EOP = np.uint64(R.RX_DD_EOP)
_RX_DD = np.uint64(R.RXD_STAT_DD)
_TX_STATUS_SHIFT = np.uint64(R.TXD_WORD2_STATUS_SHIFT)
_TX_DD = np.uint64(R.TXD_STAT_DD)
_TX_CMD = np.uint64(R.TXD_CMD_DATA)
_TX_OLINFO_SHIFT = np.uint64(R.TXD_WORD2_OLINFO_SHIFT + R.TXD_PAYLEN_SHIFT)
_ZERO = np.uint64(0)
_TX_CLEAN, _TX_TAIL, _TX_HANDING, _TX_POSTED = (R.QSTATE_TX_CLEAN, R.QSTATE_TX_TAIL, R.QSTATE_TX_HANDING,
                                              R.QSTATE_TX_POSTED)

rx_burst = tx_burst = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @jit
    def rx_burst(desc, slot_buf, state, buf_len, data_phys, stack, top, regs, rdt_index, bad, out):
        """Receive into ``out``; returns how many (or RX_ERROR_NO_EOP with bad[0] = descriptor)."""
        mask = np.int64(desc.shape[0] - 1)
        i = np.int64(state[0])
        free = np.int64(top[0])
        want = np.int64(out.shape[0])
        got = np.int64(0)
        while got < want and got < free:
            word = desc[i, 1]
            status = (word >> _RX_STATUS_SHIFT) & _RX_DD_EOP
            if status != _RX_DD_EOP:
                if status == _RX_DD:
                    bad[0] = i
                    return RX_ERROR_NO_EOP
                break
            b = slot_buf[i]
            out[got] = b
            buf_len[b] = (word >> _RX_LENGTH_SHIFT) & _RX_LENGTH_MASK
            fresh = stack[free - 1 - got]             # pops like Mempool.alloc: from the top
            slot_buf[i] = fresh
            desc[i, 0] = data_phys[fresh]
            desc[i, 1] = _ZERO                        # read format again; clears DD
            got += 1
            i = (i + 1) & mask
        if got:
            top[0] = free - got
            state[0] = i
            regs[rdt_index] = (i - 1) & mask          # one behind the next to read (see ixgbe.py)
        return got

    @jit
    def tx_burst(desc, slot_buf, state, buf_len, data_phys, regs, tdt_index, clean_batch, freed, lohi,
                 error, max_data, bufs):
        """Clean, then post ``bufs``; returns posted | cleaned << 32.

        The cleaned buffers are ``freed[:cleaned]``, their smallest and largest index in ``lohi``
        (so the caller can see at once whether one mempool owns them all).  A bad buffer posts
        nothing and returns TX_ERROR - cleaned, with (TX_BAD_*, its position in bufs) in ``error``.
        """
        mask = np.int64(desc.shape[0] - 1)
        clean = np.int64(state[_TX_CLEAN])
        tail = np.int64(state[_TX_TAIL])
        cleaned = np.int64(0)
        lo = np.int64(0xFFFFFFFF)
        hi = np.int64(-1)
        while ((tail - clean) & mask) >= clean_batch:
            last = (clean + clean_batch - 1) & mask
            if (desc[last, 1] >> _TX_STATUS_SHIFT) & _TX_DD == _ZERO:
                break
            for j in range(clean_batch):
                b = np.int64(slot_buf[(clean + j) & mask])
                freed[cleaned] = b
                lo = min(lo, b)
                hi = max(hi, b)
                cleaned += 1
            clean = (clean + clean_batch) & mask
        state[_TX_CLEAN] = clean
        if cleaned:
            state[_TX_HANDING] = cleaned       # until the caller handed them home (IxgbeDevice._hand_back)
        lohi[0] = lo
        lohi[1] = hi
        n = min(np.int64(bufs.shape[0]), (clean - tail - 1) & mask)     # one slot stays free
        count = np.int64(buf_len.shape[0])
        for j in range(n):
            b = np.int64(bufs[j])
            if b < 0 or b >= count:
                error[0] = TX_BAD_INDEX
            elif buf_len[b] == 0 or np.int64(buf_len[b]) > max_data:
                error[0] = TX_BAD_LENGTH
            else:
                continue
            error[1] = j      # nothing posted; what was cleaned is in state already: the caller hands it back
            return TX_ERROR - cleaned
        for j in range(n):
            b = bufs[j]
            length = np.uint64(buf_len[b])
            desc[tail, 0] = data_phys[b]
            desc[tail, 1] = (length | _TX_CMD) | (length << _TX_OLINFO_SHIFT)
            slot_buf[tail] = b
            tail = (tail + 1) & mask
        if n:
            state[_TX_TAIL] = tail
            regs[tdt_index] = tail
            state[_TX_POSTED] += n
        return n | (cleaned << 32)

    @jit
    def rx_queue(q, out):
        """rx_burst over one queue's record ``q`` (RxQueue.record): the compiled stage loops' receive."""
        return rx_burst(*q, out)

    @jit
    def tx_queue(q, bufs):
        """tx_burst over one queue's record ``q`` (TxQueue.record): (posted, cleaned), the cleaned buffers in
        the record's ``freed``; posted < 0 is tx_burst's error (TX_ERROR - cleaned)."""
        r = tx_burst(*q, bufs)
        if r < 0:
            return r, TX_ERROR - r
        return r & 0xFFFFFFFF, r >> 32
else:
    rx_queue = tx_queue = None
