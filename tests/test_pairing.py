"""pair_frees against a plain reference: walk the events in time order, a free frees
the outstanding allocation of its pointer (if the pointer's last event was one)."""
import numpy as np
from hypothesis import given, settings, strategies as st

from ftslab import report
from ftslab.report import pair_frees


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


@settings(max_examples=400, deadline=None)
@given(events, events)
def test_pair_frees_matches_the_reference(allocs, frees):
    ak = np.array([p for p, _ in allocs], np.uint64)
    at = np.array([t for _, t in allocs], np.uint64)
    fk = np.array([p for p, _ in frees], np.uint64)
    ft = np.array([t for _, t in frees], np.uint64)
    want_freed, want_fidx = reference(ak, at, fk, ft)
    freed, fidx = pair_frees(ak, at, fk, ft)
    assert freed.tolist() == want_freed.tolist()
    assert fidx.tolist() == want_fidx.tolist()


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
    monkeypatch.setattr(report, "_packed_keys", lambda keys, ts: None)
    freed2, fidx2 = pair_frees(ak, at, fk, ft)
    assert np.array_equal(freed, freed2)
    assert np.array_equal(fidx, fidx2)


def test_pointers_spread_over_the_whole_address_space_take_the_lexsort_path():
    ak = np.array([1 << 63, 17, (1 << 63) + 9], np.uint64)
    at = np.array([1, 2, 3], np.uint64)
    fk = np.array([17, 1 << 63, (1 << 63) + 9], np.uint64)
    ft = np.array([4, 5, 0], np.uint64)
    assert report._packed_keys(np.concatenate([ak, fk]), np.concatenate([at, ft])) is None
    freed, fidx = pair_frees(ak, at, fk, ft)
    assert freed.tolist() == [True, True, False]
    assert fidx.tolist() == [1, 0, -1]
