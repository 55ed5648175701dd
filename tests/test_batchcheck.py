"""The per-batch checks every stage makes (memory/batchcheck.py): numpy reference and compiled kernels agree,
and drop_bad_packets / the lazy verdict array built on them keep their exact results."""

from __future__ import annotations

import numpy as np
import pytest

from ixypipe.memory import batchcheck
from ixypipe.memory.pktbuf import PacketBuffers
from ixypipe.pipeline import stages
from ixypipe.workers.api import DROP, Batch

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
