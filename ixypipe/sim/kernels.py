"""Optional compiled hot paths of the software 82599: descriptor walks, generator stamping, sink checks.

Numba kernels that do, descriptor by descriptor, exactly what the numpy
reference in ``model.py``, ``dma.py`` and ``traffic.py`` does array by
array, so a batch costs one call instead of dozens of numpy operations:

* ``gen_rx``: the generator's next ``n`` packets for one RX queue: walks the
  queue's descriptors from its head, checks each buffer address against the
  registered DMA runs (binary search in the sorted run table), copies the
  flow's template into the buffer and stamps the sequence number and the
  payload checksum in place, writes back RSS hash, length, EOP and DD.
* ``rx_frames``: the same for frames from a cable (copied from the peer's TX).
* ``tx_walk``: TDH..TDT: checks each descriptor and its buffer, copies the
  frame into the wire batch, writes DD where RS is set.
* ``sink_verify``: the verifying sink's checks and per-flow order, frame by frame (the record found
  by walking the headers, ``record_offset``, as the numpy sink's ``record_offsets`` does).

Each walk stops at the first bad descriptor and says why in ``info``; the
caller reports the fault (and may retry after a DMA table refresh), so a
fault still stops the queue and nothing is written for that descriptor.
An empty run table resolves nothing: every address is a fault.  Loaded
only when numba is installed (the ``fast`` extra); compiled once and cached.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitborrow, jitcache
from ixypipe.nic import registers as R
from ixypipe.protocols import (
    ETH_HEADER_LEN,
    ETH_TYPE_OFF,
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    ETHERTYPE_VLAN,
    ICMP_ECHO_HEADER_LEN,
    IP4_MIN_IHL,
    IP4_PROTO,
    IP4_VER_IHL,
    IP4_VERSION,
    IP6_NEXT_HEADER,
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_TCP,
    IPPROTO_UDP,
    IPV4_HEADER_LEN,
    IPV6_HEADER_LEN,
    TCP_HEADER_LEN,
    UDP_HEADER_LEN,
    VLAN_TAG_LEN,
)
from ixypipe.sim.payload import (
    SIM_MAGIC,
    SIM_MAX_FRAME,
    SIM_MIN_FRAME,
    SIM_REC_CSUM,
    SIM_REC_FLOW,
    SIM_REC_GEN,
    SIM_REC_LEN,
    SIM_REC_MAGIC,
    SIM_REC_SEQ,
    SIM_TOUCH_OFF,
)

numba = jitcache.load_numba()         # None: the numpy path serves (jitcache warns once, with the cause)

AVAILABLE = numba is not None

# info[0] of a walk that stopped early: why (the numpy reference's reasons, in its order of checks)
OK = 0
BAD_ADDRESS = 1              # buffer outside registered memory
TOO_LARGE = 2                # RX frame larger than the RX buffer
NOT_DATA = 3                 # TX descriptor is not an advanced data descriptor
NO_EOP = 4                   # TX descriptor without EOP
BAD_LENGTH = 5               # TX length not 1..SIM_MAX_FRAME

_U32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_RX_DONE = np.uint64(R.RXD_STAT_DD | R.RXD_STAT_EOP)
_TX_DD_WORD = np.uint64(R.TXD_STAT_DD) << _SHIFT32      # status is bytes 12..15 of the descriptor
_CSUM_MOD = np.int64(1 << 32)

gen_rx = rx_frames = tx_walk = sink_verify = queues_changed = record_offset = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    # the model keeps every array it passes alive for the call, and the typed list its buffers: borrowed,
    # numba's reference counts on them are NULL tests.  It counted ``buf`` twice per frame (a loop-carried
    # list item), and each atomic waited for the frame's stores to lines the other CPU held to drain:
    # perf put 38 % of a saturated fwd.toml model's CPU there
    borrowed = jitborrow.borrowed

    @jit
    def _find(base, size, addr, length):
        """Run holding ``[addr, addr + length)`` entirely, or -1 (np.searchsorted side='right' - 1)."""
        lo, hi = 0, base.shape[0]
        while lo < hi:
            mid = (lo + hi) >> 1
            if base[mid] <= addr:
                lo = mid + 1
            else:
                hi = mid
        run = lo - 1
        if run < 0 or length <= 0 or addr + length > base[run] + size[run]:
            return -1
        return run

    @jit
    def queues_changed(bar, ctl_idx, enable_bit, seen):
        """How many queues' ENABLE bits differ from ``seen`` (0: nothing to do this step)."""
        n = 0
        for i in range(ctl_idx.shape[0]):
            if ((bar[ctl_idx[i]] & enable_bit) != 0) != seen[i]:
                n += 1
        return n

    @jit
    def gen_rx(ring, head, room, skip, bsize, base, size, owner, offset, bufs, info,
               q, templates, tlen, base_csum, weights, rec, sent, flows, n, flow_queue, flow_hash):
        """Packets ``sent .. sent + n`` of the generator that go to queue ``q``, but the first ``skip`` of
        them, into its ring from ``head``; returns how many were written.  Flow f's frame is the first
        ``tlen[f]`` bytes of its template; its record starts at ``rec[f]`` (-1: a runt, nothing to stamp),
        ``weights`` are the payload checksum's per byte position.
        info: [reason, address, frames for q among the n, bad frame's length, bytes written]."""
        ring, base, size, owner, offset, templates, weights = borrowed((ring, base, size, owner, offset, templates,
                                                                        weights))
        nring = ring.shape[0]
        nbytes = 0
        good = 0
        rows = 0
        info[0] = OK
        d = head % nring
        f = sent % flows            # flow and sequence number of packet sent + k, kept incrementally
        seq = sent // flows
        own = -1
        buf = borrowed(bufs[0])
        for _ in range(n):
            if flow_queue[f] == q:
                rows += 1
                if rows > skip and good < room and info[0] == OK:
                    plen = tlen[f]
                    addr = np.int64(ring[d, 0])
                    run = _find(base, size, addr, plen)
                    if run < 0:
                        info[0], info[1], info[3] = BAD_ADDRESS, addr, plen
                    elif plen > bsize:
                        info[0], info[1], info[3] = TOO_LARGE, addr, plen
                    else:
                        if owner[run] != own:
                            own = owner[run]
                            buf = borrowed(bufs[own])
                        o = np.uint64(offset[run] + addr - base[run])
                        for b in range(np.uint64(plen)):      # unsigned indices: no wrap-around test, so it vectorizes
                            buf[o + b] = templates[f, b]
                        if rec[f] >= 0:
                            seq_off = np.uint64(rec[f] + SIM_REC_SEQ)
                            csum_off = np.uint64(rec[f] + SIM_REC_CSUM)
                            delta = np.int64(0)
                            for b in range(8):
                                byte = (seq >> (8 * b)) & 0xFF
                                buf[o + seq_off + np.uint64(b)] = byte
                                delta += byte * weights[seq_off + np.uint64(b)]
                            csum = (base_csum[f] + delta) % _CSUM_MOD
                            for b in range(4):
                                buf[o + csum_off + np.uint64(b)] = (csum >> (8 * b)) & 0xFF
                        ring[d, 0] = np.uint64(flow_hash[f]) << _SHIFT32
                        ring[d, 1] = _RX_DONE | (np.uint64(plen) << _SHIFT32)   # DD with length, vlan 0: one store
                        nbytes += plen
                        good += 1
                        d += 1
                        if d == nring:
                            d = 0
            f += 1
            if f == flows:
                f = 0
                seq += 1
        info[2] = rows
        info[4] = nbytes
        return good

    @jit
    def rx_frames(ring, head, room, skip, bsize, base, size, owner, offset, bufs, info,
                  q, queues, data, lengths, hashes):
        """Frames of a batch whose queue is ``q`` (all when ``q`` < 0), but the first ``skip`` of them,
        into the ring from ``head``; returns how many were written.  info: as for gen_rx."""
        ring, base, size, owner, offset, data = borrowed((ring, base, size, owner, offset, data))
        nring = ring.shape[0]
        good = 0
        rows = 0
        nbytes = 0
        info[0] = OK
        d = head % nring
        own = -1
        buf = borrowed(bufs[0])
        for i in range(lengths.shape[0]):
            if q >= 0 and queues[i] != q:
                continue
            rows += 1
            if rows <= skip or good >= room or info[0] != OK:
                continue
            addr = np.int64(ring[d, 0])
            length = lengths[i]
            run = _find(base, size, addr, length)
            if run < 0:
                info[0], info[1], info[3] = BAD_ADDRESS, addr, length
                continue
            if length > bsize:
                info[0], info[1], info[3] = TOO_LARGE, addr, length
                continue
            if owner[run] != own:
                own = owner[run]
                buf = borrowed(bufs[own])
            o = np.uint64(offset[run] + addr - base[run])
            for b in range(np.uint64(length)):
                buf[o + b] = data[i, b]
            ring[d, 0] = np.uint64(hashes[i]) << _SHIFT32
            ring[d, 1] = _RX_DONE | (np.uint64(length) << _SHIFT32)
            good += 1
            nbytes += length
            d += 1
            if d == nring:
                d = 0
        info[2] = rows
        info[4] = nbytes
        return good

    @jit
    def tx_walk(ring, head, pending, out, lengths, pad_to, base, size, owner, offset, bufs, info):
        """Descriptors ``head ..`` (``pending`` of them) onto the wire batch ``out``; returns how many
        were good.  A frame shorter than ``pad_to`` is padded with zeros to it (HLREG0.TXPADEN; 0: none).
        info: [reason, index of the bad one, its cmd_type_len, its address, widest frame, bytes]."""
        ring, out, base, size, owner, offset = borrowed((ring, out, base, size, owner, offset))
        nring = ring.shape[0]
        info[0] = OK
        width = 0
        nbytes = 0
        d = head % nring
        own = -1
        buf = borrowed(bufs[0])
        for j in range(pending):
            addr = np.int64(ring[d, 0])
            w1 = ring[d, 1]
            cmd = np.int64(w1 & _U32)
            length = cmd & R.TXD_DTALEN_MASK
            reason = OK
            if (cmd & R.TXD_CMD_DEXT) == 0 or (cmd & R.TXD_DTYP_MASK) != R.TXD_DTYP_DATA:
                reason = NOT_DATA
            elif (cmd & R.TXD_CMD_EOP) == 0:
                reason = NO_EOP
            elif length <= 0 or length > SIM_MAX_FRAME:
                reason = BAD_LENGTH
            run = -1
            if reason == OK:
                run = _find(base, size, addr, length)
                if run < 0:
                    reason = BAD_ADDRESS
            if reason != OK:
                info[0], info[1], info[2], info[3] = reason, j, cmd, addr
                info[4], info[5] = width, nbytes
                return j
            if owner[run] != own:
                own = owner[run]
                buf = borrowed(bufs[own])
            o = np.uint64(offset[run] + addr - base[run])
            for b in range(np.uint64(length)):
                out[j, b] = buf[o + b]
            if length < pad_to:
                for b in range(length, pad_to):
                    out[j, b] = 0
                length = pad_to
            lengths[j] = length
            width = max(width, length)
            nbytes += length
            if cmd & R.TXD_CMD_RS:
                ring[d, 1] = (w1 & _U32) | _TX_DD_WORD
            d += 1
            if d == nring:
                d = 0
        info[4], info[5] = width, nbytes
        return pending

    @jit
    def record_offset(row, length):
        """Where the record starts (the sink's record_offsets for one frame), or -1."""
        ethertype = np.int64(row[ETH_TYPE_OFF]) << 8 | np.int64(row[ETH_TYPE_OFF + 1])
        l3 = ETH_HEADER_LEN
        if ethertype == ETHERTYPE_VLAN:
            ethertype = np.int64(row[ETH_TYPE_OFF + VLAN_TAG_LEN]) << 8 | np.int64(row[ETH_TYPE_OFF + VLAN_TAG_LEN + 1])
            l3 += VLAN_TAG_LEN
        if ethertype == ETHERTYPE_IPV4 and row[l3 + IP4_VER_IHL] == (IP4_VERSION << 4 | IP4_MIN_IHL):
            proto = row[l3 + IP4_PROTO]
            l4 = l3 + IPV4_HEADER_LEN
        elif ethertype == ETHERTYPE_IPV6:
            proto = row[l3 + IP6_NEXT_HEADER]
            l4 = l3 + IPV6_HEADER_LEN
        else:
            return -1
        if proto == IPPROTO_UDP:
            rec = l4 + UDP_HEADER_LEN
        elif proto == IPPROTO_TCP:
            rec = l4 + TCP_HEADER_LEN
        elif proto == (IPPROTO_ICMPV6 if ethertype == ETHERTYPE_IPV6 else IPPROTO_ICMP):
            rec = l4 + ICMP_ECHO_HEADER_LEN
        else:
            return -1
        return rec if rec + SIM_REC_LEN <= length else -1

    @jit
    def _known_at(row, rec, gen_known, gen_trailer, trailer):
        """The generator id of the record at ``rec`` when it has the magic and is a known generator's whose
        record sits there (a trailer or not), else -1."""
        magic = np.int64(row[rec + SIM_REC_MAGIC]) | np.int64(row[rec + SIM_REC_MAGIC + 1]) << 8
        gen = np.int64(row[rec + SIM_REC_GEN]) | np.int64(row[rec + SIM_REC_GEN + 1]) << 8
        if magic == SIM_MAGIC and gen < gen_known.shape[0] and gen_known[gen] and gen_trailer[gen] == trailer:
            return gen
        return -1

    @jit
    def sink_verify(data, lengths, gen_known, gen_trailer, flow_size, gen_flows, gen_touch, max_flows, top, weights,
                    expect_touch, probe, res):
        """The verifying sink over a batch.  res += [corrupt, untouched, reordered, top increase, verified];
        res[5:8] = [generator, flow, sequence number + 1] of row ``probe`` when it verified (a latency sample);
        res[8] += the corrupt frames that carry a record of a known generator and flow (rewritten).  A
        generator with ``gen_trailer`` set (a replayed capture) has its record in the frame's last bytes."""
        data, gen_known, gen_trailer, weights = borrowed((data, gen_known, gen_trailer, weights))
        n_gen = gen_known.shape[0]
        trailers = False
        for g in range(n_gen):
            trailers |= gen_trailer[g]
        for i in range(lengths.shape[0]):
            length = lengths[i]
            if length < SIM_MIN_FRAME:
                res[0] += 1
                continue
            row = data[i]
            rec = record_offset(row, length)
            if trailers and (rec < 0 or _known_at(row, rec, gen_known, gen_trailer, False) < 0):
                if _known_at(row, length - SIM_REC_LEN, gen_known, gen_trailer, True) >= 0:
                    rec = length - SIM_REC_LEN
            if rec < 0:
                res[0] += 1
                continue
            magic = np.int64(row[rec + SIM_REC_MAGIC]) | np.int64(row[rec + SIM_REC_MAGIC + 1]) << 8
            gen = np.int64(row[rec + SIM_REC_GEN]) | np.int64(row[rec + SIM_REC_GEN + 1]) << 8
            flow = np.int64(row[rec + SIM_REC_FLOW]) | np.int64(row[rec + SIM_REC_FLOW + 1]) << 8
            ok = magic == SIM_MAGIC and gen < n_gen
            if ok:
                ok = gen_known[gen] and flow < gen_flows[gen]
            ours = ok
            if ok:
                ok = flow_size[gen * max_flows + flow] == length
            if ok:
                total = np.int64(0)
                for p in range(np.uint64(ETH_HEADER_LEN), np.uint64(length)):
                    total += np.int64(row[p]) * weights[p]
                csum = np.int64(0)
                for b in range(4):
                    byte = np.int64(row[rec + SIM_REC_CSUM + b])
                    csum |= byte << (8 * b)
                    total -= byte * weights[rec + SIM_REC_CSUM + b]     # the field is not covered
                ok = total % _CSUM_MOD == csum
            if not ok:
                res[0] += 1
                if ours:
                    res[8] += 1
                continue
            if expect_touch and row[SIM_TOUCH_OFF] != gen_touch[gen]:
                res[1] += 1
            seq1 = np.uint64(1)
            for b in range(8):
                seq1 += np.uint64(row[rec + SIM_REC_SEQ + b]) << np.uint64(8 * b)
            if i == probe:
                res[5], res[6], res[7] = gen, flow, np.int64(seq1)
            key = gen * max_flows + flow
            if seq1 <= top[key]:
                res[2] += 1
            else:
                res[3] += np.int64(seq1 - top[key])
                top[key] = seq1
            res[4] += 1


def typed_buffers(bufs: list[np.ndarray]):
    """The arena buffers as a numba typed list (one empty placeholder when there are none, so the
    kernels keep one signature; an empty run table never indexes it)."""
    out = numba.typed.List()
    for b in bufs or [np.zeros(0, np.uint8)]:
        out.append(b)
    return out


_warm = False


def warm() -> None:
    """Load (or compile) every kernel once, with the argument types the model passes, so a model
    process does not stall on its first packets: a driver waiting for a reset to complete would
    time out.  Called once per process by ``model.load_kernels``."""
    global _warm
    if _warm:
        return
    u64_ring = np.zeros((1, 2), np.uint64)
    i64 = np.zeros(1, np.int64)
    info = np.zeros(9, np.int64)
    tables = (i64[:0], i64[:0], i64[:0], i64[:0], typed_buffers([]))
    frames = np.zeros((1, SIM_MIN_FRAME), np.uint8)
    queues_changed(np.zeros(1, np.uint32), i64[:0], 1, np.zeros(0, bool))
    gen_rx(u64_ring, 0, 0, 0, 0, *tables, info, 0, frames, i64, i64, i64, i64, 0, 1, 0, i64, np.zeros(1, np.uint32))
    wide = np.zeros((2, 2 * SIM_MIN_FRAME), np.uint8)
    for data in (frames, wide[:, :SIM_MIN_FRAME]):          # whole batches and (strided) slices of the TX batch
        rx_frames(u64_ring, 0, 0, 0, 0, *tables, info, -1, i64[:0], data, i64[:0], np.zeros(0, np.uint32))
        sink_verify(data, i64[:0], np.zeros(1, bool), np.zeros(1, bool), i64, i64, np.zeros(1, np.uint8), 1,
                    np.zeros(1, np.uint64), i64, False, -1, info)
    tx_walk(u64_ring, 0, 0, wide, i64, 0, *tables, info)
    _warm = True
