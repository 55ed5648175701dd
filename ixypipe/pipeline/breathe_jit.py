"""The compiled stage passes: RX and TX "breathe" in numba, many passes per call from Python.

Each stage pass (``rx_breathe``, ``tx_breathe``) is ixy-fwd's ``forward()``
with the pipeline's rings around it: buffers come home, pull a batch, check
it, push it on, count.  One call of the loop they share (``run``: the
heartbeat, the supervisor's command, idle counting, a budget of passes)
runs passes until one of the RUN_* reasons below and returns it, so the interpreter runs once per idle period, back-pressure
episode, command or RUN_BUDGET passes, never once per batch.  Python
(pipeline/stages.py) keeps what it must do: the idle policy (sleep on
the semaphore, poll a socket, nap), commands and the drain, logging, and
back-pressure (a stalled pass hands what did not fit to the stage's
Outbox, whose Python loop stays the reference path).

What a pass touches, all in the packet arena or the stage's own memory:

* the rings, as rows of a table (rings/spsc_jit.py: ``push``, ``pull``,
  ``bell`` for the doorbell of a consumer that sleeps);
* the stage's row of the stage table as int64 words (the counters Stage.publish
  writes, the heartbeat, the command);
* RX: the driver's compiled receive (``rx_kernel(q, out)``: the NIC queue
  refills itself from the pool's free stack), the pool's free stack (buffers
  home), and the private ledger of buffers lent out (memory/ledger.py);
* TX: the driver's compiled transmit (``tx_kernel(q, bufs)`` -> (posted,
  cleaned) with the cleaned buffers in ``freed``), the private ledger of
  buffers it holds and the return rings of the pools it sends home to;
* RX and TX, while a capture asks: the stage's mirror ring (mirror_jit.py: a copy of each frame taken,
  never its buffer);
* worker (``worker_breathe``): the worker's compiled function (workers/compiled.py,
  called per batch with the batch's arrays), the TX rings of the verdicts'
  ports, the return rings for drops.

Every check of the Python passes is made here too, counted in the same row
fields: an index a return ring gives back that is not out (``bad_index``),
a length outside 1..max_data (``bad_packet``), an index a TX queue may not
hold (``bad_index``) or holds already (``duplicate``).  The Python passes in
stages.py are the reference; the data-path tests run both.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitborrow, jitcache
from ixypipe.layout import PKTBUF_HEADROOM, STAGE_CMD_DRAIN
from ixypipe.memory import batchcheck
from ixypipe.pipeline import mirror_jit
from ixypipe.pipeline.stagetable import SLOT
from ixypipe.proc import MAX_NAP, MIN_NAP, PACE_SHARE, PACE_WINDOW_NS
from ixypipe.protocols import FLOW_HASH_MIX, FLOW_KEY_OFF
from ixypipe.rings import spsc_jit, wakeup_jit
from ixypipe.rings.spsc_jit import RING_ROW_WORDS

numba = jitcache.load_numba()

AVAILABLE = jitborrow.AVAILABLE and spsc_jit.AVAILABLE and wakeup_jit.AVAILABLE and mirror_jit.AVAILABLE

# why a run returned
RUN_MORE = -1         # (a pass's own answer) go on with the next pass
RUN_IDLE = 0          # idle_passes passes in a row found nothing to do
RUN_BUDGET = 1        # max_passes passes ran (Python looks at the world every few milliseconds)
RUN_COMMAND = 2       # the supervisor asked to drain or abandon: Python's loop takes over
RUN_STALLED = 3       # an output (a worker's ring, the NIC ring) took nothing: Python waits; the rest stays here
RUN_LIGHT = 4         # a pass moved fewer than ``light`` packets: Python naps so a batch builds up
RUN_DEVICE = 5        # the driver's kernel reported trouble (its code in state[ST_VALUE]): Python raises
RUN_HOME = 6          # a buffer had no home, or its home was full (a double free): Python raises

# params: what Python decides once per stage
P_BATCH, P_MAX_PASSES, P_IDLE_PASSES, P_LIGHT, P_MIN_LEN, P_MAX_DATA, P_MODE, P_WAKE = range(8)
P_IDLE_MODE, P_WAIT_MS, P_LINE, P_SEM, P_NAP_WANT, P_NAP_MAX = range(8, 14)
PARAM_WORDS = 14
# how the shared loop waits once passes find nothing (params[P_IDLE_MODE])
IDLE_RETURN = 0       # after P_IDLE_PASSES empty passes return RUN_IDLE: Python waits (naps, spin)
IDLE_SLEEP = 1        # a ring consumer: sleep on its semaphore at the first empty pass (wakeup_jit.sleep)
IDLE_POLL = 2         # an RX queue with a file descriptor: poll() it at the first empty pass
IDLE_NAP = 3          # a stage with nothing to block on (an 82599's RX queue): nap (``_wait``) and look again
# params[P_NAP_WANT] > 0 (shared CPUs, not "spin"): a pass that stalled on a full output, or moved fewer than
# ``light`` packets, naps in compiled code (``_wait``) as an IDLE_NAP stage's empty pass does, instead of
# returning for Python's nap; the nap is paced as proc.Pacing's (the reference): about the time
# PACE_SHARE * P_NAP_WANT packets take to arrive, at most P_NAP_MAX ns, else proc.Backoff's ladder of naps
# the run's ``pace`` words: the pacing window's start and count, ps per packet (0: no steady rate), the next
# back-off nap
PACE_SINCE, PACE_COUNT, PACE_PS, PACE_BACKOFF = range(4)
PACE_WORDS = 4
_MIN_NAP_NS, _MAX_NAP_NS = int(MIN_NAP * 1e9), int(MAX_NAP * 1e9)
_PACE_SHARE_PERMILLE = int(PACE_SHARE * 1000)
# state: what lives across runs
ST_RR, ST_VALUE, ST_LEFT = range(3)
STATE_WORDS = 4
# distribution modes
MODE_ONE, MODE_ROUND_ROBIN, MODE_FLOW = range(3)
# a home: [first, end) of the pool's buffers, then the return ring's row
HOME_FIRST, HOME_END, HOME_RING = 0, 1, 2
HOME_WORDS = 2 + RING_ROW_WORDS

_CMD = SLOT["command"]
_HEARTBEAT, _LOOPS, _IDLE, _BATCHES = SLOT["heartbeat"], SLOT["loops"], SLOT["idle_loops"], SLOT["batches"]
_PIN, _BIN, _POUT, _BOUT = SLOT["packets_in"], SLOT["bytes_in"], SLOT["packets_out"], SLOT["bytes_out"]
_LAST_BATCH, _LAST_RING, _BATCH_NO = SLOT["last_batch"], SLOT["last_ring"], SLOT["batch_no"]
_BAD_PACKET, _BAD_INDEX, _DUPLICATE = SLOT["drop_bad_packet"], SLOT["drop_bad_index"], SLOT["drop_duplicate"]
_HELD, _STALLS = SLOT["held"], SLOT["stalls"]

# the kernel each copy of the loop and passes calls (``loop`` fills them in; here so that the names exist)
BREATHE = RX_KERNEL = TX_KERNEL = WORKER_FN = None

if AVAILABLE:
    import numba as _numba

    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    fresh = _numba.njit(nogil=True, boundscheck=False)
    push, pull, room = spsc_jit.push, spsc_jit.pull, spsc_jit.room
    claim, settle = batchcheck.claim_compiled, batchcheck.settle_compiled
    bell = wakeup_jit.bell
    borrowed = jitborrow.borrowed
    _MIX = np.uint64(FLOW_HASH_MIX)
    _LOW32 = np.uint64(0xFFFFFFFF)
    _SHIFT16 = np.uint64(16)

    @jit
    def _as_is(value):
        """``borrowed``'s stand-in in a loop that keeps numba's reference counts (loop(borrow=False))."""
        return value

    @jit
    def _loop_start(row):
        """One more loop: the heartbeat moves; True when a command waits (Python's loop handles it)."""
        loops = row[_LOOPS] + 1
        row[_LOOPS] = loops
        row[_HEARTBEAT] = loops
        return row[_CMD] >= STAGE_CMD_DRAIN

    @jit
    def _took(row, ring, n):
        """A batch of ``n`` from in-ring ``ring`` (-1: the NIC queue): what a hung stage was holding."""
        row[_PIN] += n
        row[_BATCHES] += 1
        row[_LAST_BATCH] = n
        row[_LAST_RING] = ring
        row[_BATCH_NO] += 1

    @jit
    def _push_ring(words, slots, outs, bells, wake, k, parts, parts_n):
        """Push parts[k, :parts_n[k]] into output ``k``, ring its consumer's bell; what did not fit moves to
        the front of parts[k] and stays counted in parts_n[k].  True when all went in."""
        n = parts_n[k]
        sent = push(words, slots, outs[k], parts[k], 0, n)
        if sent and wake:
            bell(words, bells[k, 0], bells[k, 1])
        if sent < n:
            for j in range(n - sent):
                parts[k, j] = parts[k, sent + j]
        parts_n[k] = n - sent
        return sent == n

    @jit
    def _distribute(words, slots, outs, bells, wake, mode, data, idx, n, parts, parts_n, state):
        """Hand idx[:n] to the workers (stages.distribute is the reference); True when every ring took its part."""
        n_out = outs.shape[0]
        if mode == MODE_FLOW and n_out > 1:
            for w in range(n_out):
                parts_n[w] = 0
            for i in range(n):
                b = idx[i]
                h = np.uint64(0)
                for word in range(3):
                    off = FLOW_KEY_OFF + 4 * word
                    h ^= (np.uint64(data[b, off]) | (np.uint64(data[b, off + 1]) << np.uint64(8))
                          | (np.uint64(data[b, off + 2]) << np.uint64(16))
                          | (np.uint64(data[b, off + 3]) << np.uint64(24)))
                w = np.int64(((h * _MIX) & _LOW32) >> _SHIFT16) % n_out
                parts[w, parts_n[w]] = b
                parts_n[w] += 1
            ok = True
            for w in range(n_out):
                if parts_n[w] and not _push_ring(words, slots, outs, bells, wake, w, parts, parts_n):
                    ok = False
            return ok
        k = 0
        if mode == MODE_ROUND_ROBIN and n_out > 1:
            k = state[ST_RR]
            state[ST_RR] = (k + 1) % n_out
        for w in range(n_out):
            parts_n[w] = 0
        for i in range(n):
            parts[k, i] = idx[i]
        parts_n[k] = n
        return _push_ring(words, slots, outs, bells, wake, k, parts, parts_n)

    @jit
    def _send_home(words, slots, homes, held, idx, start, n):
        """Send idx[start:start + n] home through their pools' return rings, forgetting each in the ledger
        ``held``; False when one has no home or its ring is full (a return ring holds a whole pool)."""
        i = start
        end = start + n
        while i < end:
            b = np.int64(idx[i])
            h = -1
            for p in range(homes.shape[0]):
                if homes[p, HOME_FIRST] <= b < homes[p, HOME_END]:
                    h = p
                    break
            if h < 0:
                return False
            j = i
            while j < end and homes[h, HOME_FIRST] <= np.int64(idx[j]) < homes[h, HOME_END]:
                held[idx[j]] = 0
                j += 1
            if push(words, slots, homes[h, HOME_RING:], idx, i, j - i) != j - i:
                return False
            i = j
        return True

    @jit
    def paced_nap_ns(pace, count, now, want, most):
        """proc.Pacing.nap in integers: the nap (ns) for ``count`` packets so far at ``now`` (ns); 0 when no
        steady rate is known (a window of PACE_WINDOW_NS brought fewer than ``want``)."""
        if pace[PACE_SINCE] == 0:                   # the first look starts the first window
            pace[PACE_SINCE] = now
            pace[PACE_COUNT] = count
        elapsed = now - pace[PACE_SINCE]
        if elapsed >= PACE_WINDOW_NS:
            moved = count - pace[PACE_COUNT]
            pace[PACE_PS] = elapsed * 1000 // moved if moved >= want else 0
            pace[PACE_SINCE] = now
            pace[PACE_COUNT] = count
        return min(most, _PACE_SHARE_PERMILLE * want * pace[PACE_PS] // 1_000_000)

    @jit
    def _wait(row, params, pace, ts):
        """A stage's nap in compiled code (IDLE_NAP, a stall, a light pass): paced by the packets it took, else
        the next rung of the back-off ladder (MIN_NAP doubling to MAX_NAP, reset by a pass that moved)."""
        ns = paced_nap_ns(pace, row[_PIN], wakeup_jit.now_ns(ts), params[P_NAP_WANT], params[P_NAP_MAX])
        if ns <= 0:
            ns = max(pace[PACE_BACKOFF], _MIN_NAP_NS)
            pace[PACE_BACKOFF] = min(ns * 2, _MAX_NAP_NS)
        wakeup_jit.nap(ts, ns)

    def _run(q, stage, row, params, waits):
        """The loop every compiled stage shares: heartbeat and command, one pass, the idle policy, a budget.

        ``BREATHE(q, stage, params)`` is one pass of the stage (its driver's or worker's kernel with its record
        ``q``; ``stage``: the stage's arrays) and returns (packets moved, RUN_MORE or why to stop); ``loop``
        makes a copy of this function for each pass and kernel.
        An idle stage waits here, in compiled code, when it can (params[P_IDLE_MODE]): a ring consumer sleeps on
        its semaphore until a producer rings, an RX queue with a file descriptor polls it, an 82599's RX queue
        naps; a wake-up goes straight into the next pass.  On shared CPUs a stalled or light pass naps here too
        (params[P_NAP_WANT]).  ``waits``: (the input rings' table, pollfd int32[2], timespec int64[2], the pace
        words).  A wait that timed out returns RUN_IDLE, so Python looks at the world about every P_WAIT_MS when
        idle; a run whose last pass stalled returns RUN_STALLED (Python looks for a consumer that died)."""
        # the stage's arrays live in its Python objects for the whole call: borrowed, their reference counts
        # are not touched by each pass (jitborrow.py: those atomics were half of a batch-32 RX stage's CPU)
        q, stage, row, params, waits = borrowed((q, stage, row, params, waits))
        words, inputs, fds, ts, pace = waits
        mode = params[P_IDLE_MODE]
        naps = params[P_NAP_WANT] > 0
        empty = 0
        code = RUN_MORE
        for _ in range(params[P_MAX_PASSES]):
            if _loop_start(row):
                return RUN_COMMAND
            moved, code = BREATHE(q, stage, params)
            if code != RUN_MORE:
                if not naps or (code != RUN_STALLED and code != RUN_LIGHT):
                    return code
                _wait(row, params, pace, ts)            # a full output, or a trickle: let some build up
                continue
            if moved:
                empty = 0
                pace[PACE_BACKOFF] = 0
                continue
            row[_IDLE] += 1
            empty += 1
            if mode == IDLE_RETURN:
                if empty >= params[P_IDLE_PASSES]:
                    return RUN_IDLE
            elif mode == IDLE_NAP:
                _wait(row, params, pace, ts)
            else:
                # no sched_yield first: on a CPU shared with a busy process (the software 82599, a neighbour)
                # a yield hands it the rest of its time slice, milliseconds; a sleeper woken by a bell or
                # poll() is scheduled at once
                if mode == IDLE_SLEEP:
                    woken = wakeup_jit.sleep(words, params[P_LINE], params[P_SEM], inputs,
                                             row[_CMD:_CMD + 1], ts, params[P_WAIT_MS])
                else:
                    woken = wakeup_jit.poll(fds, params[P_WAIT_MS])
                if not woken:
                    return RUN_IDLE
                empty = 0
        return RUN_STALLED if code == RUN_STALLED else RUN_BUDGET

    @jit
    def _take_home(words, slots, row, stack, top, lent, returns, home):
        """RX: buffers back from the return rings go on the free stack, only those that are out (the ledger
        ``lent``, memory/ledger.py's give_back): a second return or a foreign index is counted as bad_index,
        never a second entry."""
        moved = 0
        for r in range(returns.shape[0]):
            n = pull(words, slots, returns[r], home, 0, home.shape[0])
            if n:
                back, refused = settle(home[:n], lent, home)       # the ones it may take, at the front
                free = np.int64(top[0])
                for i in range(back):
                    stack[free + i] = home[i]
                top[0] = free + back
                row[_BAD_INDEX] += refused
                moved += n
        return moved

    @jit
    def _flush(words, slots, row, outs, bells, wake, parts, parts_n):
        """Push what waits for full rings; (moved, RUN_MORE), or RUN_STALLED when nothing moved."""
        waiting = parts_n.sum()
        for k in range(outs.shape[0]):
            if parts_n[k]:
                _push_ring(words, slots, outs, bells, wake, k, parts, parts_n)
        left = parts_n.sum()
        row[_HELD] = left
        if left == waiting:
            row[_STALLS] += 1
            return 0, RUN_STALLED
        return waiting - left, RUN_MORE

    @jit
    def _keep_good_lengths(row, stack, top, lent, length, got, n, lo, hi):
        """RX: packets whose length is outside lo..hi go home at once (bad_packet); the rest stay at the front
        of ``got``, lent out.  Returns how many stay."""
        good = nbytes = 0
        free = np.int64(top[0])
        for i in range(n):
            b = got[i]
            size = np.int64(length[b])
            if size < lo or size > hi:
                stack[free] = b
                free += 1
            else:
                got[good] = b
                lent[b] = 1
                nbytes += size
                good += 1
        top[0] = free
        row[_BAD_PACKET] += n - good
        row[_BIN] += nbytes
        row[_POUT] += good
        return good

    def _rx_breathe(q, stage, params):
        """One RX pass: buffers home, push what waits, a batch from the NIC queue, lengths, to the workers."""
        (words, slots, row, stack, top, lent, returns, outs, bells, length, data, got, home, parts, parts_n, state,
         tap) = stage
        wake = params[P_WAKE]
        moved = _take_home(words, slots, row, stack, top, lent, returns, home)            # 1. buffers home
        if parts_n.sum():                                                                  # 2. what waits, first
            pushed, code = _flush(words, slots, row, outs, bells, wake, parts, parts_n)
            return moved + pushed, code
        n = RX_KERNEL(q, got[:params[P_BATCH]])                                           # 3. from the NIC
        if n <= 0:
            state[ST_VALUE] = n
            return moved, RUN_MORE if n == 0 else RUN_DEVICE
        _took(row, -1, n)
        good = _keep_good_lengths(row, stack, top, lent, length, got, n, params[P_MIN_LEN],   # 4. lengths
                                  params[P_MAX_DATA])
        if good and mirror_jit.wanted(tap):                                               # a capture's copies
            mirror_jit.copy(tap, got, good)
        if good and not _distribute(words, slots, outs, bells, wake, params[P_MODE], data, got, good, parts,
                                    parts_n, state):                                      # 5. to the workers
            row[_HELD] = parts_n.sum()
            return moved + n, RUN_STALLED
        return moved + n, RUN_LIGHT if n < params[P_LIGHT] else RUN_MORE

    @jit
    def _admit(row, held, ranges, length, got, n, good, hi):
        """TX: what a queue may post of a batch (memory/ledger.py's take: buffers of its pools it does not hold
        yet, else bad_index or duplicate), with a length in 1..hi (else bad_packet: those move to the front of
        ``got``, held, for home).  Returns (good ones in ``good``, bad-length ones)."""
        taken, outside, again = claim(got[:n], ranges, held, good)
        kept = nbad = 0
        for i in range(taken):
            b = good[i]
            size = np.int64(length[b])
            if size < 1 or size > hi:
                got[nbad] = b
                nbad += 1
            else:
                good[kept] = b
                kept += 1
        row[_BAD_INDEX] += outside
        row[_DUPLICATE] += again
        row[_BAD_PACKET] += nbad
        return kept, nbad

    @jit
    def _posted(words, slots, row, held, homes, length, freed, handing, slot, bufs, n, posted, cleaned, state):
        """TX: what the driver's kernel did with bufs[:n] (posted, cleaned): what the NIC finished goes home,
        what did not fit moves to the front of ``bufs``, counted in state[ST_LEFT].  Returns (posted, RUN_MORE
        or why to stop)."""
        if cleaned:
            if not _send_home(words, slots, homes, held, freed, 0, cleaned):
                return 0, RUN_HOME
            handing[slot] = 0
        if posted < 0:
            state[ST_VALUE] = posted
            return 0, RUN_DEVICE
        nbytes = 0
        for j in range(posted):
            nbytes += np.int64(length[bufs[j]])
        for j in range(n - posted):
            bufs[j] = bufs[posted + j]
        state[ST_LEFT] = n - posted
        row[_HELD] = n - posted
        row[_POUT] += posted
        row[_BOUT] += nbytes
        return posted, RUN_MORE

    def _tx_breathe(q, stage, params):
        """One TX pass: retry what the NIC ring did not take, else a batch from each worker ring, admitted by
        the ledger, lengths checked, posted; what the NIC finished goes home."""
        freed, handing, slot, words, slots, row, held, ranges, homes, inputs, length, got, pending, state, tap = stage
        left = state[ST_LEFT]
        if left:                                                                  # 1. the NIC ring was full
            posted, cleaned = TX_KERNEL(q, pending[:left])
            posted, code = _posted(words, slots, row, held, homes, length, freed, handing, slot, pending, left,
                                   posted, cleaned, state)
            if code == RUN_MORE and not posted:
                row[_STALLS] += 1
                code = RUN_STALLED
            return posted, code
        moved = 0
        for k in range(inputs.shape[0]):
            n = pull(words, slots, inputs[k], got, 0, params[P_BATCH])              # 2. a batch from a worker
            if not n:
                continue
            _took(row, k, n)
            moved += n
            taken, nbad = _admit(row, held, ranges, length, got, n, pending, params[P_MAX_DATA])   # 3. admit
            if nbad and not _send_home(words, slots, homes, held, got, 0, nbad):
                return moved, RUN_HOME
            if taken and mirror_jit.wanted(tap):                                 # a capture's copies
                mirror_jit.copy(tap, pending, taken)
            posted, cleaned = TX_KERNEL(q, pending[:taken])                  # 4. post, finished home
            posted, code = _posted(words, slots, row, held, homes, length, freed, handing, slot, pending, taken,
                                   posted, cleaned, state)
            if code != RUN_MORE or state[ST_LEFT]:
                return moved, code
        return moved, RUN_MORE


# ---- the worker ---------------------------------------------------------------------

# a worker's params, after the common ones: parse headers before each call; buffers in the arena (an index from
# an input ring at or past it is no buffer); the room a full output ring must have again before the passes push
# to it (the loop naps meanwhile: one wait per that many packets, not one per batch)
P_HEADERS, P_BUFFERS, P_ROOM = PARAM_WORDS, PARAM_WORDS + 1, PARAM_WORDS + 2
WORKER_PARAM_WORDS = PARAM_WORDS + 3
ST_CALLING = 3        # packets the worker's function holds (got[:n]): what an exception leaves to Python
assert ST_CALLING < STATE_WORDS
_DROP_WORKER, _WORKER_ERROR, _NO_ROUTE = SLOT["drop_worker"], SLOT["drop_worker_error"], SLOT["drop_no_route"]
VERDICT_DROP = -1     # workers/api.py's DROP


if AVAILABLE:
    from ixypipe.workers import headers_jit

    @jit
    def _push_parts(words, slots, outs, bells, wake, parts, parts_n, row):
        """Push what waits in parts (routed, not yet taken by a TX ring); True when nothing is left.  What is
        left stays there for the next pass or run (Python moves it to its Outbox only for the drain)."""
        ok = True
        for w in range(outs.shape[0]):
            if parts_n[w] and not _push_ring(words, slots, outs, bells, wake, w, parts, parts_n):
                ok = False
        if ok:
            row[_HELD] = 0
        else:
            row[_STALLS] += 1
            row[_HELD] = parts_n.sum()
        return ok

    def _worker_breathe(q, stage, params):
        """One worker pass: push what full TX rings left (once they have room again), else a batch from each
        RX ring, the worker's compiled function ``fn`` over it (workers/compiled.py has its contract), each
        packet to the TX ring of its verdict's port or home.  ``q``: unused (a driver's record elsewhere)."""
        (words, slots, row, inputs, defaults, outs, bells, slot_of_port, homes, held, data, length, flat, got, shown,
         out, gone, h, base, blen, counts, parts, parts_n, state) = stage
        batch, wake, buffers = params[P_BATCH], params[P_WAKE], params[P_BUFFERS]
        if parts_n.any():                                               # what a full TX ring left
            for w in range(outs.shape[0]):
                if parts_n[w] and room(words, outs[w]) < max(parts_n[w], params[P_ROOM]):
                    return 0, RUN_STALLED                               # the loop naps, then looks again
            waiting = parts_n.sum()
            if not _push_parts(words, slots, outs, bells, wake, parts, parts_n, row):
                return 0, RUN_STALLED
            return waiting, RUN_MORE
        moved = 0
        for k in range(inputs.shape[0]):
            n = pull(words, slots, inputs[k], got, 0, batch)            # 1. a batch from an RX stage
            if not n:
                continue
            moved += n
            _took(row, k, n)
            m = 0
            for i in range(n):                                          # 2. no buffer: refused (screen_input)
                if got[i] < buffers:
                    got[m] = got[i]
                    m += 1
            row[_BAD_INDEX] += n - m
            if not m:
                continue
            for i in range(m):                                          # 3. what the function sees
                shown[i] = got[i]
                out[i] = defaults[k]
            if params[P_HEADERS]:
                headers_jit.parse_into(flat, got, m, length, data.strides[0], PKTBUF_HEADROOM, params[P_MAX_DATA],
                                       base, blen, h.bools, h.u8, h.u16, h.u32, h.i64, h.addr)
            state[ST_CALLING] = m
            WORKER_FN(data, length, shown, m, out, h, counts)                  # 4. the worker's function
            state[ST_CALLING] = 0
            for w in range(outs.shape[0]):
                parts_n[w] = 0
            g = dropped = error = lost = routed = 0
            for i in range(m):                                          # 5. by verdict
                b = got[i]
                v = np.int64(out[i])
                if shown[i] != b:                                        # an index it changed: never routed
                    gone[g] = b
                    g += 1
                    error += 1
                elif v == VERDICT_DROP:
                    gone[g] = b
                    g += 1
                    dropped += 1
                elif v < 0 or v >= slot_of_port.shape[0] or slot_of_port[v] < 0:
                    gone[g] = b
                    g += 1
                    lost += 1
                else:
                    w = slot_of_port[v]
                    parts[w, parts_n[w]] = b
                    parts_n[w] += 1
                    routed += 1
            row[_WORKER_ERROR] += error
            row[_DROP_WORKER] += dropped
            row[_NO_ROUTE] += lost
            row[_POUT] += routed
            if g and not _send_home(words, slots, homes, held, gone, 0, g):
                return moved, RUN_HOME
            if not _push_parts(words, slots, outs, bells, wake, parts, parts_n, row):    # 6. on to TX
                return moved, RUN_STALLED
        return moved, RUN_MORE


_BUILT: dict = {}      # (kind, kernel, cached, borrow) -> its loop


def loop(kind: str, kernel, cached: bool = True, borrow: bool = True):
    """The compiled loop of a stage kind ("rx", "tx", "worker") around ``kernel`` (a driver's compiled queue
    kernel, a worker's compiled function): ``loop(...)(q, stage, row, params, waits)``.  ``borrow`` False: the
    passes take the arrays reference-counted, as numba hands them (bench/pass_overhead.py compares).

    numba cannot cache a function that takes a kernel as an argument (its cache keys would hold the
    kernel's dispatcher, which another process fails to load), so each kernel gets its own copy of the pass
    and of ``_run``, with the kernel as a global, named after it so each has its own cache entry.  ``cached``
    False for a user's function or a test's kernel: compiled in the process, never written to the cache."""
    key = (kind, kernel, cached, borrow)
    if key not in _BUILT:
        deco = jit if cached else fresh
        module = getattr(kernel, "__module__", "") or ""
        name = f"{kind}_{module.rpartition('.')[2]}_{getattr(kernel, '__name__', 'kernel')}"
        passes = {"rx": (_rx_breathe, "RX_KERNEL"), "tx": (_tx_breathe, "TX_KERNEL"),
                  "worker": (_worker_breathe, "WORKER_FN")}
        body, slot = passes[kind]
        breathe = deco(_specialised(body, f"{body.__name__}_{name}", {slot: kernel}))
        names = {"BREATHE": breathe} if borrow else {"BREATHE": breathe, "borrowed": _as_is}
        _BUILT[key] = deco(_specialised(_run, f"_run_{name}" + ("" if borrow else "_counted"), names))
    return _BUILT[key]


def _specialised(fn, name: str, names: dict):
    """A copy of the Python function ``fn`` whose globals ``names`` are given, under its own name."""
    import types

    scope = dict(fn.__globals__)
    scope.update(names)
    copy = types.FunctionType(fn.__code__, scope, name, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = name
    copy.__module__ = fn.__module__
    return copy
