"""Optional compiled keyed counting: one numba loop that adds a batch of (key, amount) pairs to a hash table.

Does what ``count_keys_numpy`` in ixypipe.workers.keyed does (the reference:
tests check the two leave the same counts, figures and overflow), element by
element: look the key up by linear probing from its Fibonacci hash, add the
amount where it is, insert it where the probe found an empty slot while the
table is under its fill limit, else count it as overflow.  Used when numba
loads (jitcache.load_numba); the numpy twin serves without it.
"""

from __future__ import annotations

import numpy as np

from ixypipe import jitcache
from ixypipe.layout import KEYED_HASH_MUL, KEYED_STAT

numba = jitcache.load_numba()         # None: the numpy twin serves

AVAILABLE = numba is not None
_MUL = np.uint64(KEYED_HASH_MUL)
_USED, _UPDATES, _TOTAL, _OVER, _OVER_AMOUNT = (KEYED_STAT[k] for k in
                                                ("used", "updates", "total", "overflow_updates", "overflow_amount"))

count_keys = None

if AVAILABLE:
    jit = jitcache.njit(__file__, nogil=True, boundscheck=False)

    @jit
    def count_keys(table_keys, table_values, stats, keys, amounts, shift, limit):
        """Add ``amounts[i]`` to ``keys[i]``'s value for every i (an amount of 0 is skipped); ``stats`` is the
        table's KEYED_STATS row, ``shift`` = 64 - log2(slots), ``limit`` the keys it may hold."""
        mask = np.int64(table_keys.shape[0] - 1)
        used = stats[_USED]
        for i in range(keys.shape[0]):
            a = amounts[i]
            if a == 0:
                continue
            k = keys[i]
            stats[_UPDATES] += 1
            stats[_TOTAL] += np.int64(a)
            h = np.int64((k * _MUL) >> shift)
            while True:
                v = table_values[h]
                if v == 0:
                    if used >= limit:
                        stats[_OVER] += 1
                        stats[_OVER_AMOUNT] += np.int64(a)
                    else:
                        table_keys[h] = k             # the key first: a reader that sees the value sees it
                        table_values[h] = a
                        used += 1
                        stats[_USED] = used
                    break
                if table_keys[h] == k:
                    table_values[h] = v + a
                    break
                h = (h + 1) & mask
        return used
