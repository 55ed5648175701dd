"""The ixgbe driver's hot path in numpy: the reference RX and TX kernels and their contract.

``rx_burst`` and ``tx_burst`` here and in ``ixgbe_jit.py`` (numba) take the
same arguments, in the same order, and leave the rings, the mempool and the
queue state in the same condition, so the driver binds one pair per queue
(``functools.partial`` over the queue's arrays) and calls ``burst(out)`` /
``burst(bufs)``.  These work array by array (a handful of numpy operations
per batch, at most two passes when the batch wraps around the ring end); the
numba ones work descriptor by descriptor.

Contract (all arrays are arena views or the queue's own scratch arrays):

* ``rx_burst(desc, slot_buf, state, buf_len, data_phys, stack, top, regs, rdt_index, bad, out)``:
  takes the run of descriptors with DD and EOP from ``state[QSTATE_RX_NEXT]``,
  at most ``len(out)`` and at most as many as the pool has free; their buffer
  indices go to ``out``, their lengths to ``buf_len``; each slot gets a buffer
  popped from the pool's free stack (``stack``/``top``, see
  ``Mempool.free_stack``) and goes back to read format; RDT is written once.
  Returns how many, or RX_ERROR_NO_EOP with ``bad[0]`` = the descriptor that
  has DD without EOP.
* ``tx_burst(desc, slot_buf, state, buf_len, data_phys, regs, tdt_index, clean_batch, freed, lohi,
  error, max_data, bufs)``: first cleans whole batches of ``clean_batch``
  descriptors whose last one has DD (their buffers to ``freed``, smallest
  and largest index to ``lohi``), then posts as many of ``bufs`` as fit (one
  slot stays free) and writes TDT once.  Returns ``(posted, cleaned)``; a
  bad buffer posts nothing and returns ``(TX_ERROR, cleaned)`` with
  (TX_BAD_*, its position in ``bufs``) in ``error``.

Descriptor fields are read and written through the descriptors' u64 words
(``desc`` is the ring as uint64[entries, 2]); offsets come from registers.py.
"""

from __future__ import annotations

import numpy as np

from ixypipe import layout as Q
from ixypipe.nic import registers as R

RX_ERROR_NO_EOP = -1       # rx_burst: a descriptor has DD without EOP (multi-buffer frame)
TX_ERROR = -1              # tx_burst's posted: a bad buffer; what and where in its ``error`` array
TX_BAD_LENGTH = 1          # the buffer's length is 0 or larger than a buffer holds
TX_BAD_INDEX = 2           # the buffer index is outside the packet buffers

assert R.RXD_WORD2_STATUS_SHIFT == 0, "rx_burst reads status_error as the low bits of the second word"
_RX_DD_EOP = np.uint64(R.RX_DD_EOP)
_RX_DD = R.RXD_STAT_DD
_RX_LENGTH = R.RXD_LENGTH_HALFWORD
_RX_NEXT = Q.QSTATE_RX_NEXT
_TX_CLEAN, _TX_TAIL, _TX_HANDING, _TX_POSTED = (Q.QSTATE_TX_CLEAN, Q.QSTATE_TX_TAIL, Q.QSTATE_TX_HANDING,
                                              Q.QSTATE_TX_POSTED)
_TX_DD_IN_WORD = R.TXD_STAT_DD << R.TXD_WORD2_STATUS_SHIFT    # DD as a bit of the second word
_TX_CMD = np.uint64(R.TXD_CMD_DATA)
# (len | CMD) | (len << PAYLEN) in one multiply: length and command bits never overlap
_TX_LEN_TWICE = np.uint64(1 + (1 << (R.TXD_WORD2_OLINFO_SHIFT + R.TXD_PAYLEN_SHIFT)))


def rx_burst(desc, slot_buf, state, buf_len, data_phys, stack, top, regs, rdt_index, bad, out):
    """Receive into ``out``; returns how many (or RX_ERROR_NO_EOP with bad[0] = descriptor)."""
    entries = len(desc)
    mask = entries - 1
    i = int(state[_RX_NEXT])
    free = int(top[0])
    want = len(out)
    got = 0
    while got < want:                   # two passes at most: up to the ring's end, then from 0
        n = min(want - got, entries - i)
        # one snapshot of the status bits (status_error is the low half of the second word): the
        # device keeps writing while we look
        status = desc[i:i + n, 1] & _RX_DD_EOP
        ready = status == _RX_DD_EOP
        k = int(ready.argmin())         # descriptors are written back in order: a run from i
        if ready[k]:
            k = n
        elif status[k] == _RX_DD:
            bad[0] = i + k
            return RX_ERROR_NO_EOP
        k = min(k, free - got)          # no fresh buffer, no swap: the frame waits in its slot
        if k == 0:
            break
        end = i + k
        taken = slot_buf[i:end]
        out[got:got + k] = taken
        buf_len[taken] = desc[i:end].view(np.uint16)[:, _RX_LENGTH]
        fresh = stack[free - got - k:free - got][::-1]      # pops like Mempool.alloc: from the top
        slot_buf[i:end] = fresh
        desc[i:end, 0] = data_phys[fresh]
        desc[i:end, 1] = 0              # back to read format: clears DD for the next lap
        got += k
        i = end & mask
        if k < n:
            break
    if got:
        top[0] = free - got
        state[_RX_NEXT] = i
        # x86 keeps stores in order, so the descriptors are visible before the doorbell;
        # on Arm a dma_wmb() would go right here.
        # RDT stays one behind the next descriptor to read (see start_rx_queue): the slot at
        # i - 1 holds a fresh buffer the device may use only after the next batch.
        regs[rdt_index] = (i - 1) & mask
    return got


def tx_burst(desc, slot_buf, state, buf_len, data_phys, regs, tdt_index, clean_batch, freed, lohi, error,
             max_data, bufs):
    """Clean, then post ``bufs``; returns (posted, cleaned), posted TX_ERROR for a bad buffer."""
    entries = len(desc)
    mask = entries - 1
    clean, tail = int(state[_TX_CLEAN]), int(state[_TX_TAIL])
    pending = (tail - clean) & mask
    cleaned = 0
    # The device completes descriptors in order, so the DD bit of the last descriptor of a
    # batch says the whole batch is done; checking one per 32 keeps the loop short.
    while cleaned + clean_batch <= pending and desc.item((clean + cleaned + clean_batch - 1) & mask, 1) & _TX_DD_IN_WORD:
        cleaned += clean_batch
    if cleaned:
        collect(slot_buf, state, freed, lohi, clean, cleaned)
        clean = (clean + cleaned) & mask
    # one slot stays free: TDT == TDH means "nothing to send", so a full ring would look empty
    n = min(len(bufs), (clean - tail - 1) & mask)
    if n == 0:
        return 0, cleaned
    idx = bufs[:n]
    try:
        if idx.dtype.kind == "i" and int(idx.min()) < 0:
            raise IndexError
        lens = buf_len[idx]
    except IndexError:
        error[0], error[1] = TX_BAD_INDEX, int(np.flatnonzero((idx < 0) | (idx >= len(buf_len)))[0])
        return TX_ERROR, cleaned
    if int((lens - np.uint32(1)).max()) >= max_data:       # 0 wraps to the largest u32
        error[0], error[1] = TX_BAD_LENGTH, int(np.flatnonzero((lens == 0) | (lens > max_data))[0])
        return TX_ERROR, cleaned
    end = tail + n
    if end <= entries:                  # one pass, or two when the batch wraps around the ring end
        parts = ((tail, end, idx, lens),)
    else:
        k = entries - tail
        parts = ((tail, entries, idx[:k], lens[:k]), (0, end - entries, idx[k:], lens[k:]))
    for start, stop, seg, seg_len in parts:
        desc[start:stop, 0] = data_phys[seg]
        # advanced data descriptor: EOP (one buffer per packet), IFCS (MAC adds the CRC),
        # RS (report status: write DD back, which is how cleaning finds finished slots)
        desc[start:stop, 1] = (seg_len * _TX_LEN_TWICE) | _TX_CMD
        slot_buf[start:stop] = seg
    tail = end & mask
    state[_TX_TAIL] = tail
    regs[tdt_index] = tail              # one doorbell per batch (x86: stores stay in order)
    state[_TX_POSTED] += n
    return n, cleaned


def collect(slot_buf, state, freed, lohi, clean: int, count: int) -> None:
    """Move the ``count`` buffers from descriptor ``clean`` on to ``freed`` and mark them cleaned."""
    entries = len(slot_buf)
    end = clean + count
    done = freed[:count]
    if end <= entries:
        done[:] = slot_buf[clean:end]
    else:
        done[:entries - clean] = slot_buf[clean:]
        done[entries - clean:] = slot_buf[:end - entries]
    lohi[0] = done.min()
    lohi[1] = done.max()
    state[_TX_CLEAN] = end & (entries - 1)
    state[_TX_HANDING] = count              # until the caller handed them home (IxgbeDevice._hand_back)
