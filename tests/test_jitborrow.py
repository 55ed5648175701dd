"""jitborrow.borrowed: the same arrays (data, shape, strides) inside nested tuples, without numba's reference
counts, so writes through them land in the caller's arrays and scalars pass unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe import jitborrow

numba = pytest.importorskip("numba")
pytestmark = pytest.mark.skipif(not jitborrow.AVAILABLE, reason="numba cannot load here")


@numba.njit
def _fill(value):
    (words, (column, scale)), flag = jitborrow.borrowed(value)
    for i in range(column.shape[0]):
        column[i] = i * scale          # a strided view: every write lands in the caller's array
    words[1:3] += 5                    # a slice of a borrowed array is a view too
    return column.shape[0] * 1000 + column.strides[0] + flag


@numba.njit
def _row_counts(table, passes):
    """Many calls that unpack and slice a borrowed tuple, as a stage loop's passes do."""
    t = jitborrow.borrowed(table)
    total = 0
    for _ in range(passes):
        a, b = t
        total += a[:2].sum() + b[1:].sum()
    return total


def test_a_borrowed_tuple_is_the_callers_arrays_and_scalars():
    words = np.zeros(4, np.int64)
    grid = np.zeros((3, 4), np.int64)
    got = _fill(((words, (grid[:, 1], 7)), 3))
    assert grid[:, 1].tolist() == [0, 7, 14] and grid[:, [0, 2, 3]].sum() == 0
    assert words.tolist() == [0, 5, 5, 0]
    assert got == 3 * 1000 + grid.strides[0] + 3


def test_passes_over_borrowed_arrays_read_what_the_caller_wrote():
    a, b = np.arange(4, dtype=np.int64), np.arange(10, 14, dtype=np.int64)
    assert _row_counts((a, b), 1000) == 1000 * (0 + 1 + 11 + 12 + 13)
    b[3] = 0
    assert _row_counts((a, b), 1) == 0 + 1 + 11 + 12
