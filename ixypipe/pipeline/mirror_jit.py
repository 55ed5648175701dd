"""The mirror copy in compiled code: mirror.py's ``Tap.copy`` inside the compiled RX and TX passes.

``copy(tap, idx, n)`` takes the tuple ``Tap.compiled`` (the block's control
words, lengths, times and slots, a timespec, the packet buffers' data and
lengths) and copies the frames of idx[:n] into the ring as the numpy copy
does: as many as fit, the rest counted as dropped, one clock read per batch,
the producer index stored after a fence.  The passes call it only when
``wanted(tap)`` (one load of the request word), so a pipeline nobody
captures pays that load per batch and nothing else.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.pipeline.mirror import C_COPIED, C_DROPPED, C_HEAD, C_REQUEST, C_TAIL
from ixypipe.rings import wakeup_jit

numba = jitcache.load_numba()

AVAILABLE = numba is not None and wakeup_jit.AVAILABLE

wanted = copy = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)
    fence, realtime_ns = wakeup_jit.fence, wakeup_jit.realtime_ns

    @jit
    def wanted(tap):
        """A capture asked this stage's ring for copies."""
        return tap[0][C_REQUEST] != 0

    @jit
    def copy(tap, idx, n):
        """Copy the frames of buffers idx[:n] into the ring (mirror.Tap.copy is the reference)."""
        ctl, length, stamp, rows, ts, data, lengths = tap
        slots = length.shape[0]
        head = ctl[C_HEAD]
        room = min(max(slots - (head - ctl[C_TAIL]), 0), slots)
        k = min(n, room)
        if k < n:
            ctl[C_DROPPED] += n - k
        if k == 0:
            return
        now = realtime_ns(ts)
        snap = rows.shape[1]
        mask = slots - 1
        for i in range(k):
            b = idx[i]
            size = np.int64(lengths[b])
            s = (head + i) & mask
            for j in range(min(size, snap)):
                rows[s, j] = data[b, j]
            length[s] = size
            stamp[s] = now
        ctl[C_COPIED] += k
        fence()                         # the slots before the index that publishes them
        ctl[C_HEAD] = head + k
