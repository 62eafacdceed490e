"""pair_frees against a plain reference: walk the events in time order, a free frees
the outstanding allocation of its pointer (if the pointer's last event was one)."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ftslab.analysis import analysed
from ftslab.analysis import pairing
from ftslab.analysis.pairing import pair_frees


def reference(ak, at, fk, ft):
    events = [(int(t), 0, i, int(k)) for i, (k, t) in enumerate(zip(ak, at))]
    events += [(int(t), 1, j, int(k)) for j, (k, t) in enumerate(zip(fk, ft)) if k > 16]
    events.sort(key=lambda e: (e[0], e[1]))  # allocations first at equal times
    # Python's sort is stable: equal (time, kind) keep their input order, as numpy's
    # stable time order does
    last = {}
    freed = [False] * len(ak)
    fidx = [-1] * len(ak)
    for _t, kind, i, k in events:
        prev = last.get(k)
        if kind == 1 and prev is not None and prev[0] == 0:
            freed[prev[1]] = True
            fidx[prev[1]] = i
        last[k] = (kind, i)
    return np.array(freed, bool), np.array(fidx, np.int64)


ptrs = st.sampled_from([0, 8, 16, 0xffff888000001000, 0xffff888000001040,
                        0xffff888000001080, 0xffff8880ffff0000, 0xffffffffffffffff, 5])
events = st.lists(st.tuples(ptrs, st.integers(0, 20)), max_size=40)


def _agrees_with_the_reference(allocs, frees) -> None:
    args = [np.array([x[i] for x in evs], np.uint64) for evs in (allocs, frees)
            for i in (0, 1)]
    want_freed, want_fidx = reference(*args)
    freed, fidx = pair_frees(*args)
    assert freed.tolist() == want_freed.tolist()
    assert fidx.tolist() == want_fidx.tolist()


@settings(max_examples=400, deadline=None)
@given(events, events)
def test_pair_frees_matches_the_reference(allocs, frees):
    _agrees_with_the_reference(allocs, frees)


@settings(max_examples=200, deadline=None)
@given(events, events)
def test_pair_frees_in_two_halves_of_small_slices_matches_the_reference(allocs, frees):
    # the slice loops (ranks in time, neighbour checks) split in two threads: with
    # slices of 2 events, every case is split, and slices meet anywhere
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pairing, "_RANK_STEP", 2)
        _agrees_with_the_reference(allocs, frees)


def _random_case(n, rng, span):
    ak = (np.uint64(0xffff888000000000) +
          rng.integers(0, span, n).astype(np.uint64) * np.uint64(64))
    fk = (np.uint64(0xffff888000000000) +
          rng.integers(0, span, n).astype(np.uint64) * np.uint64(64))
    at = np.sort(rng.integers(0, 1 << 40, n)).astype(np.uint64)
    ft = np.sort(rng.integers(0, 1 << 40, n)).astype(np.uint64)
    return ak, at, fk, ft


def test_the_packed_path_and_the_lexsort_path_agree_on_two_million_events(monkeypatch):
    # big enough for the two-thread split; the lexsort path is the one pointers that do
    # not pack into 64 bits take
    rng = np.random.default_rng(7)
    ak, at, fk, ft = _random_case(1_100_000, rng, 1 << 16)
    freed, fidx = pair_frees(ak, at, fk, ft)
    assert 0 < freed.sum() < freed.size
    monkeypatch.setattr(pairing, "_time_ranks", lambda keys, ts: (None, 0))
    freed2, fidx2 = pair_frees(ak, at, fk, ft)
    assert np.array_equal(freed, freed2)
    assert np.array_equal(fidx, fidx2)


def test_pointers_spread_over_the_whole_address_space_take_the_lexsort_path():
    ak = np.array([1 << 63, 17, (1 << 63) + 9], np.uint64)
    at = np.array([1, 2, 3], np.uint64)
    fk = np.array([17, 1 << 63, (1 << 63) + 9], np.uint64)
    ft = np.array([4, 5, 0], np.uint64)
    assert pairing._time_ranks(np.concatenate([ak, fk]), np.concatenate([at, ft]))[0] is None
    freed, fidx = pair_frees(ak, at, fk, ft)
    assert freed.tolist() == [True, True, False]
    assert fidx.tolist() == [1, 0, -1]


_FIX = Path(__file__).resolve().parents[1] / "fixtures"
# captures with frees (trace-cmd's fixtures hold kmem:kmalloc only)
CAPTURES = sorted(_FIX.glob("*/ftslab-*.dat")) + sorted(_FIX.glob("*/kmem-trace*.txt"))


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_analysis_pairs_as_pair_frees_does(path):
    """_Analysis builds pair_frees' arrays in place (allocations, then the frees of
    pointers > 16): its frees and free times are pair_frees' own, on real captures,
    binary (times) and text (line order)."""
    from ftslab.trace.loader import load
    ds = load(path)
    an = analysed.Analysis(ds)
    checked = 0
    for layer in {f.src.layer for f in an.frames}:
        frames = [f for f in an.frames if f.src.layer == layer and f.ptr is not None]
        frees = an.frees.get(layer, [])
        if not frames or not frees:
            continue
        by_seq = all(f.cols.seq is not None for f in frames)
        ak = np.concatenate([f.ptr[f.matchable] for f in frames])
        at = np.concatenate([(f.cols.seq if by_seq else f.ts)[f.matchable]
                             for f in frames]).astype(np.uint64)
        fk = np.concatenate([k for _, k, _ in frees])
        ft = np.concatenate([(s if by_seq else t) for t, _, s in frees]).astype(np.uint64)
        f_times = np.concatenate([t for t, _, _ in frees])
        freed, fidx = pair_frees(ak, at, fk, ft)
        got = np.concatenate([f.freed[f.matchable] for f in frames])
        got_ts = np.concatenate([f.free_ts[f.matchable] for f in frames])
        assert np.array_equal(got, freed)
        assert np.array_equal(got_ts[freed], f_times[fidx[freed]])
        assert not got_ts[~freed].any()
        checked += 1
    assert checked