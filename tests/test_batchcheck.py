"""The per-batch checks every stage makes (memory/batchcheck.py): numpy reference and compiled kernels agree,
and drop_bad_packets / the lazy verdict array built on them keep their exact results."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory import batchcheck
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import stages
from ixypipe.workers.api import DROP, Batch, WorkerResultError

IMPLS = {"numpy": (batchcheck.lengths_numpy, batchcheck.span_numpy),
         "numba": (batchcheck.lengths_compiled, batchcheck.span_compiled)}


@pytest.fixture(params=list(IMPLS))
def impl(request):
    if request.param == "numba" and not batchcheck.COMPILED:
        pytest.skip("the compiled checks need numba: pip install -e '.[fast]'")
    return IMPLS[request.param]


@pytest.fixture
def bufs(make_arena):
    arena = make_arena(1 << 20, hugepages_mode="never")
    return PacketBuffers.create(arena, 64, 2048)


def test_lengths_counts_what_is_outside_and_sums_what_is_inside(impl, bufs):
    lengths, _ = impl
    bufs.length[:8] = [0, 1, 60, 1514, bufs.max_data, bufs.max_data + 1, 13, 14]
    idx = np.array([7, 0, 2, 5, 3, 4, 6], np.uint32)
    # inside 14..max_data: 14 + 60 + 1514 + max_data; outside: 0, max_data + 1, 13
    assert lengths(bufs.length, idx, 14, bufs.max_data) == (3, 14 + 60 + 1514 + bufs.max_data)
    assert lengths(bufs.length, idx[:0], 14, bufs.max_data) == (0, 0)


def test_the_two_implementations_agree_on_random_batches(bufs):
    if not batchcheck.COMPILED:
        pytest.skip("the compiled checks need numba: pip install -e '.[fast]'")
    rng = np.random.default_rng(7)
    bufs.length[:] = rng.integers(0, bufs.max_data + 50, len(bufs.length))
    for n in (1, 2, 33, 64):
        idx = rng.permutation(64)[:n].astype(np.uint32)
        assert batchcheck.lengths_compiled(bufs.length, idx, 60, bufs.max_data) == \
            batchcheck.lengths_numpy(bufs.length, idx, 60, bufs.max_data)
        assert batchcheck.span_compiled(idx) == batchcheck.span_numpy(idx) == (int(idx.min()), int(idx.max()))


def test_span_of_one_index(impl):
    _, span = impl
    assert span(np.array([41], np.uint32)) == (41, 41)


class Row:
    def __init__(self):
        self.added: dict[str, int] = {}

    def add(self, field: str, value: int) -> None:
        self.added[field] = self.added.get(field, 0) + value


class FakeStage:          # drop_bad_packets needs only the stage's row counters
    def __init__(self):
        self.row = Row()


def test_drop_bad_packets_sends_bad_ones_home_and_returns_the_rest_with_their_bytes(bufs):
    bufs.length[10:15] = [60, 0, 3000, 100, 2]
    home: list[int] = []
    st = FakeStage()
    idx = np.arange(10, 15, dtype=np.uint32)
    good, nbytes = stages.drop_bad_packets(st, bufs, idx, lambda i: home.extend(i.tolist()), min_len=14)
    assert good.tolist() == [10, 13] and nbytes == 160
    assert sorted(home) == [11, 12, 14] and st.row.added == {"drop_bad_packet": 3}
    good, nbytes = stages.drop_bad_packets(st, bufs, idx[[0, 3]], home.append)
    assert good.tolist() == [10, 13] and nbytes == 160 and st.row.added == {"drop_bad_packet": 3}


def test_a_batch_makes_its_verdict_array_only_when_asked(bufs):
    idx = np.arange(4, dtype=np.uint32)
    batch = Batch(bufs, idx, 0, 1, ["a", "b"], {})
    assert not batch.verdicts_set()
    assert stages.verdicts(batch, None) == 1               # every packet to the default port, no array
    assert batch.out.tolist() == [1, 1, 1, 1] and batch.verdicts_set()
    batch.drop([True, False, False, True])
    assert stages.verdicts(batch, None).tolist() == [DROP, 1, 1, DROP]
    fresh = Batch(bufs, idx, 0, 1, ["a", "b"], {})
    assert stages.verdicts(fresh, np.array([True, False, True, True])).tolist() == [1, DROP, 1, 1]


# ---- the checks of indices a stage cannot trust ------------------------------------------------------
UNTRUSTED = {"numpy": (batchcheck.changed_numpy, batchcheck.claim_numpy, batchcheck.settle_numpy),
             "numba": (batchcheck.changed_compiled, batchcheck.claim_compiled, batchcheck.settle_compiled)}


@pytest.fixture(params=list(UNTRUSTED))
def untrusted(request):
    if request.param == "numba" and not batchcheck.COMPILED:
        pytest.skip("the compiled checks need numba: pip install -e '.[fast]'")
    return UNTRUSTED[request.param]


def test_changed_counts_the_positions_a_worker_rewrote(untrusted):
    changed, _, _ = untrusted
    given = np.array([4, 9, 2, 7], np.uint32)
    shown = given.copy()
    assert changed(given, shown) == 0
    shown[[0, 3]] = [2**32 - 1, 9]
    assert changed(given, shown) == 2


def test_claim_takes_buffers_of_its_ranges_once_in_order(untrusted):
    _, claim, _ = untrusted
    held = np.zeros(32, np.uint8)
    held[5] = 1                                              # already in hand
    good = np.empty(8, np.uint32)
    ranges = np.array([[0, 8], [16, 24]], np.int64)
    idx = np.array([3, 9, 5, 17, 3, 2**32 - 1, 23, 40], np.uint32)
    assert claim(idx, ranges, held, good) == (3, 3, 2)      # 3, 17, 23 | 9, 2**32-1, 40 | 5 held, 3 again
    assert good[:3].tolist() == [3, 17, 23]
    assert np.flatnonzero(held).tolist() == [3, 5, 17, 23]


def test_settle_gives_back_what_was_held_once(untrusted):
    _, _, settle = untrusted
    held = np.zeros(16, np.uint8)
    held[[2, 6, 9]] = 1
    good = np.empty(6, np.uint32)
    assert settle(np.array([6, 6, 3, 2**32 - 1, 9, 16], np.uint32), held, good) == (2, 4)
    assert good[:2].tolist() == [6, 9] and np.flatnonzero(held).tolist() == [2]


def test_the_untrusted_checks_agree_on_random_batches():
    if not batchcheck.COMPILED:
        pytest.skip("the compiled checks need numba: pip install -e '.[fast]'")
    rng = np.random.default_rng(11)
    ranges = np.array([[10, 50], [70, 90]], np.int64)
    for n in (1, 7, 64, 300):
        idx = rng.integers(0, 120, n).astype(np.uint32)
        idx[rng.random(n) < 0.05] = 2**32 - 1
        start = (rng.random(120) < 0.3).astype(np.uint8)
        results = []
        for claim, settle in ((batchcheck.claim_numpy, batchcheck.settle_numpy),
                              (batchcheck.claim_compiled, batchcheck.settle_compiled)):
            held, good = start.copy(), np.empty(n, np.uint32)
            taken = claim(idx, ranges, held, good)
            after_claim = (taken, good[:taken[0]].tolist(), held.tolist())
            back = settle(idx, held, good)
            results.append((after_claim, back, good[:back[0]].tolist(), held.tolist()))
        assert results[0] == results[1]


def test_any_integer_verdicts_become_int16_without_wrapping_into_a_port_or_drop(bufs):
    wide = np.array([0, 1, -1, 2**40, -(2**40), 70000], np.int64)
    assert stages.verdict_array(wide).tolist() == [0, 1, DROP, 32767, -2, 32767]
    huge = np.array([1, 2**64 - 1, 65535], np.uint64)
    assert stages.verdict_array(huge).tolist() == [1, 32767, 32767]
    own = np.array([1, DROP], np.int16)
    assert stages.verdict_array(own) is own
    for out in (np.full(3, np.nan), np.array([1, 1, 1], object), np.zeros((3, 2), np.int16), np.zeros(0, np.int16),
                np.ones(3, bool), [1, 1, 1]):
        batch = Batch(bufs, np.arange(3, dtype=np.uint32), 0, 1, ["a", "b"], {})
        batch.out = out
        for keep in (None, np.ones(3, bool)):
            with pytest.raises(WorkerResultError, match="^batch.out must stay an integer array of 3 verdicts"):
                stages.verdicts(batch, keep)
