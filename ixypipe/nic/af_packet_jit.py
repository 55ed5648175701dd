"""Optional compiled hot path of the AF_PACKET port: the frame walks of receive and send as numba kernels.

Owns two kernels that do what the numpy code of ``RxQueue.receive`` and
``TxQueue.send`` in ``af_packet.py`` does (that code stays the reference and
the tests hold both to the same frames, lengths and counters), frame by
frame instead of array by array.  A lone ping costs the numpy path about
thirty numpy operations per stage, 30-40 us of CPU on this project's 2-CPU
machine; one compiled call does the same in a few microseconds, which is
what a latency through three processes per direction needs.

``rx_frames`` walks the run of frames the kernel handed over (tp_status has
USER) from the cursor, up to ``want``; a frame the kernel cut (snaplen <
len) or that is longer than a buffer with its VLAN tag put back is counted
as truncated and skipped; every other frame gets a buffer popped off the
queue's mempool (``Mempool.free_stack``, as ``Mempool.alloc`` pops), its
bytes from tp_mac on, the 802.1Q tag the kernel stripped put back after the
MAC addresses, and its length.  Every examined frame goes back to the
kernel.  ``tx_frames`` copies buffers into the run of free TX frames from
the cursor and marks them SEND_REQUEST (a length outside [Ethernet header,
frame room] is counted as dropped and its frame stays free).

Ordering: a frame's bytes are read (RX) or written (TX) before its status
word is stored; x86 keeps stores in order and numba gives the arrays no
noalias, so the kernel never sees a status before the data.
"""

from __future__ import annotations

import socket
from errno import EAGAIN, EINTR, ENETDOWN, ENOBUFS, ENOMEM, ENXIO

import numpy as np

from ixypipe import jitcache
from ixypipe.layout import SOFT_PORT_QUEUE_DTYPE
from ixypipe.nic.af_packet_abi import (
    TP_STATUS_AVAILABLE,
    TP_STATUS_KERNEL,
    TP_STATUS_SEND_REQUEST,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    TP_STATUS_WRONG_FORMAT,
)
from ixypipe.protocols import ETH_HEADER_LEN, ETH_P_8021Q, VLAN_TAG_LEN

numba = jitcache.load_numba()         # None: the numpy path serves (jitcache warns once, with the cause)

AVAILABLE = numba is not None

# result slots of rx_frames: frames examined (given back), truncated, the largest truncated size, bytes received
RX_EXAMINED, RX_TRUNCATED, RX_LARGEST_TRUNCATED, RX_BYTES = range(4)
# result slots of tx_frames: frames queued for the kernel, their bytes, frames dropped for a bad length
TX_QUEUED, TX_BYTES, TX_DROPPED = range(3)
# u64 words of a queue's counter line (layout.SOFT_PORT_QUEUE_DTYPE)
Q_PACKETS, Q_BYTES, Q_DROPPED, Q_TRUNCATED, Q_KICKS = (SOFT_PORT_QUEUE_DTYPE.fields[f][1] // 8 for f in (
    "packets", "bytes", "dropped", "truncated", "kicks"))
MSG_DONTWAIT = int(socket.MSG_DONTWAIT)
_MAC_PAIR = 12               # destination + source MAC: where an 802.1Q tag goes back in

rx_frames = tx_frames = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @jit
    def rx_frames(status, length, snaplen, mac, vlan_tci, vlan_tpid, frames, cursor, want, max_data,
                  data, buf_len, stack, top, out, result):
        """Receive up to ``want`` frames into fresh buffers listed in ``out``; returns how many."""
        count = np.int64(status.shape[0])
        free = np.int64(top[0])
        f = np.int64(cursor)
        examined = got = truncated = largest = nbytes = np.int64(0)
        while examined < want:
            st = np.int64(status[f])
            if not st & TP_STATUS_USER:
                break
            n = np.int64(length[f])
            tagged = (st & TP_STATUS_VLAN_VALID) != 0
            full = n + VLAN_TAG_LEN if tagged else n
            if np.int64(snaplen[f]) != n or full > max_data:
                truncated += 1
                largest = max(largest, full)
            else:
                b = np.int64(stack[free - 1 - got])        # pops like Mempool.alloc: from the top
                src = np.int64(mac[f])
                if tagged:
                    tpid = np.int64(vlan_tpid[f]) if st & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
                    tci = np.int64(vlan_tci[f])
                    for j in range(_MAC_PAIR):
                        data[b, j] = frames[f, src + j]
                    data[b, _MAC_PAIR] = tpid >> 8
                    data[b, _MAC_PAIR + 1] = tpid & 0xFF
                    data[b, _MAC_PAIR + 2] = tci >> 8
                    data[b, _MAC_PAIR + 3] = tci & 0xFF
                    for j in range(_MAC_PAIR, n):
                        data[b, j + VLAN_TAG_LEN] = frames[f, src + j]
                else:
                    for j in range(n):
                        data[b, j] = frames[f, src + j]
                buf_len[b] = full
                out[got] = b
                got += 1
                nbytes += full
            status[f] = TP_STATUS_KERNEL                   # give the frame back once it is read
            examined += 1
            f += 1
            if f == count:
                f = 0
        top[0] = free - got
        result[RX_EXAMINED] = examined
        result[RX_TRUNCATED] = truncated
        result[RX_LARGEST_TRUNCATED] = largest
        result[RX_BYTES] = nbytes
        return got

    @jit
    def tx_frames(status, length, frames, cursor, idx, buf_len, data, data_off, room, result):
        """Queue ``idx`` in the free frames from the cursor; returns how many buffers were taken."""
        count = np.int64(status.shape[0])
        f = np.int64(cursor)
        taken = queued = nbytes = dropped = np.int64(0)
        while taken < idx.shape[0]:
            st = np.int64(status[f])
            if st != TP_STATUS_AVAILABLE and st != TP_STATUS_WRONG_FORMAT:
                break
            b = np.int64(idx[taken])
            n = np.int64(buf_len[b])
            if ETH_HEADER_LEN <= n <= room:
                for j in range(n):
                    frames[f, data_off + j] = data[b, j]
                length[f] = n
                status[f] = TP_STATUS_SEND_REQUEST
                queued += 1
                nbytes += n
            else:
                status[f] = TP_STATUS_AVAILABLE
                dropped += 1
            taken += 1
            f += 1
            if f == count:
                f = 0
        result[TX_QUEUED] = queued
        result[TX_BYTES] = nbytes
        result[TX_DROPPED] = dropped
        return taken

    from numba import types
    from numba.core.extending import intrinsic

    _send = types.ExternalFunction("send", types.intp(types.intc, types.voidptr, types.uintp, types.intc))
    _errno = types.ExternalFunction("__errno_location", types.CPointer(types.intc)())

    @intrinsic
    def _null(typingctx):
        def codegen(context, builder, signature, args):
            return context.get_constant_null(types.voidptr)
        return types.voidptr(), codegen

    @jit
    def rx_queue(q, out):
        """RxQueue.receive's frame work over the queue's record ``q`` (RxQueue.record): the compiled stage
        loops' receive.  The kernel's drop counter and the too-long warning stay in Python (housekeeping)."""
        (status, length, snaplen, mac, vlan_tci, vlan_tpid, frames, at, max_data, data, buf_len, stack, top,
         result, line, largest) = q
        want = min(np.int64(out.shape[0]), np.int64(top[0]))
        if want <= 0 or not np.int64(status[at[0]]) & TP_STATUS_USER:      # an idle poll costs one load
            return 0
        k = rx_frames(status, length, snaplen, mac, vlan_tci, vlan_tpid, frames, at[0], want, max_data, data,
                      buf_len, stack, top, out, result)
        at[0] = (at[0] + result[RX_EXAMINED]) % status.shape[0]
        if result[RX_TRUNCATED]:
            line[Q_TRUNCATED] += np.uint64(result[RX_TRUNCATED])
            largest[0] = max(largest[0], result[RX_LARGEST_TRUNCATED])
        if k:
            line[Q_PACKETS] += np.uint64(k)
            line[Q_BYTES] += np.uint64(result[RX_BYTES])
        return k

    @jit
    def _kick(line, fd, kick):
        """One non-blocking send() (TxQueue._kick); 0, or -errno of a failure that is no back-pressure."""
        line[Q_KICKS] += np.uint64(1)
        kick[0] = 0
        if _send(fd, _null(), 0, MSG_DONTWAIT) >= 0:
            return 0
        err = np.int64(_errno()[0])
        if err == EAGAIN or err == EINTR:
            kick[0] = 1
            return 0
        if err == ENOBUFS or err == ENOMEM or err == ENETDOWN or err == ENXIO:
            line[Q_DROPPED] += np.uint64(1)     # the queueing layer dropped a frame; the rest wait for a kick
            kick[0] = 1
            return 0
        return -err

    @jit
    def tx_queue(q, bufs):
        """TxQueue.send over the queue's record ``q`` (TxQueue.record): (taken, taken) - the frames are copies,
        so every buffer taken is done at once and listed in ``freed``; a kick that failed for good returns
        (-errno, taken)."""
        status, length, frames, at, buf_len, data, data_off, room, result, line, fd, freed, kick = q
        n = tx_frames(status, length, frames, at[0], bufs, buf_len, data, data_off, room, result)
        if n == 0:
            return (_kick(line, fd, kick) if kick[0] else 0), 0
        at[0] = (at[0] + n) % status.shape[0]
        line[Q_DROPPED] += np.uint64(result[TX_DROPPED])
        err = 0
        if result[TX_QUEUED]:
            line[Q_PACKETS] += np.uint64(result[TX_QUEUED])
            line[Q_BYTES] += np.uint64(result[TX_BYTES])
            err = _kick(line, fd, kick)
        for j in range(n):
            freed[j] = bufs[j]
        return (err if err else n), n
else:
    rx_queue = tx_queue = None
