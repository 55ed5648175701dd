"""The built-in workers as compiled workers (workers/compiled.py): what ``function = "touch"`` runs with numba.

Each is the twin of the Python function of the same name in
ixypipe.workers.builtin, which stays the reference (``function =
"ixypipe.workers.builtin:touch"`` runs it; the tests run both and compare
packets and counters).  ``COMPILED`` is empty without numba: the Python
built-ins serve.
"""

from __future__ import annotations

from ixypipe import jitcache
from ixypipe.protocols import ETH_ADDR_LEN, ETH_DST_OFF, ETH_SRC_OFF
from ixypipe.workers.builtin import TOUCH_BYTE
from ixypipe.workers.compiled import DROP, CompiledWorker

numba = jitcache.load_numba()

COMPILED: dict[str, CompiledWorker] = {}

if numba is not None:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @jit
    def forward(data, lengths, idx, n, out, h, counts):
        pass

    @jit
    def touch(data, lengths, idx, n, out, h, counts):
        for i in range(n):
            data[idx[i], TOUCH_BYTE] += 1

    @jit
    def macswap(data, lengths, idx, n, out, h, counts):
        for i in range(n):
            b = idx[i]
            for k in range(ETH_ADDR_LEN):
                dst = data[b, ETH_DST_OFF + k]
                data[b, ETH_DST_OFF + k] = data[b, ETH_SRC_OFF + k]
                data[b, ETH_SRC_OFF + k] = dst

    @jit
    def drop(data, lengths, idx, n, out, h, counts):
        for i in range(n):
            out[i] = DROP

    @jit
    def count(data, lengths, idx, n, out, h, counts):
        counts[0] += n
        for i in range(n):
            counts[1] += lengths[idx[i]]

    COMPILED.update({
        "forward": CompiledWorker(forward.py_func, kernel=forward),
        "touch": CompiledWorker(touch.py_func, kernel=touch),
        "macswap": CompiledWorker(macswap.py_func, kernel=macswap),
        "drop": CompiledWorker(drop.py_func, kernel=drop),
        "count": CompiledWorker(count.py_func, ("packets", "bytes"), kernel=count),
    })
