"""What `ftslab serve` exports, without root: the bounded counter families (monotonic
under churn, OTHER, include/exclude), the live table (pairing across intervals, one
object per address, eviction, forgetting names), the leak signal, and ServeState fed
a real 6.18 recording in slices, checked against the whole-recording report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import ftslab
from ftslab.analysis.counters import (KEYS, OTHER, CounterFamily, LabelFilter, LeakSignal,
                                      LiveTable, ServeState)
from ftslab.analysis.live import live_allocations

from test_top import time_slice

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


# ------------------------------------------------------------------ counter families
def test_family_limit_and_other():
    fam = CounterFamily(limit=2)
    fam.add({"a": (5, 500), "b": (3, 300), "c": (1, 100)})
    rows = {lab: (n, b) for lab, n, b in fam.rows()}
    assert rows == {"a": (5, 500), "b": (3, 300), OTHER: (1, 100)}
    assert fam.other_labels == 1
    assert fam.total() == (9, 900)


def test_family_newcomer_takes_over_and_counts_move_to_other():
    fam = CounterFamily(limit=1)
    fam.add({"old": (1, 10)})
    fam.add({}, seconds=10 * CounterFamily.TAU)   # old has gone quiet for long
    fam.add({"new": (2, 1000)})
    rows = {lab: (n, b) for lab, n, b in fam.rows()}
    assert rows == {"new": (2, 1000), OTHER: (1, 10)}   # old's count kept, in OTHER


def test_family_no_churn_between_equals():
    fam = CounterFamily(limit=1)
    fam.add({"a": (1, 100)})
    fam.add({"a": (1, 100), "b": (1, 120)})   # not TAKEOVER times busier: stays in OTHER
    assert [lab for lab, _n, _b in fam.rows()] == ["a", OTHER]


def test_family_burst_does_not_evict_a_steady_series():
    """A label busy all along keeps its series through another's one-tick burst smaller
    than what it did over the last minutes; a sustained busier label does take over."""
    fam = CounterFamily(limit=1)
    for _ in range(60):
        fam.add({"steady": (10, 1000)})
    fam.add({"steady": (10, 1000), "burst": (50, 20_000)})
    assert [lab for lab, _n, _b in fam.rows()] == ["steady", OTHER]
    for _ in range(200):
        fam.add({"steady": (10, 1000), "burst": (50, 20_000)})
    assert [lab for lab, _n, _b in fam.rows()][0] == "burst"
    assert fam.total() == (60 * 10 + 201 * 60, 60 * 1000 + 201 * 21_000)


def test_family_candidates_are_bounded():
    fam = CounterFamily(limit=2)
    for i in range(5000):
        fam.add({f"comm{i}": (1, 1 + i % 7)})
    assert len(fam.series) == 2
    assert len(fam.score) <= 2 + CounterFamily.CANDIDATES * 2
    assert fam.total()[0] == 5000


def test_family_filter_folds_into_other():
    fam = CounterFamily(limit=5, keep=LabelFilter(include=["^kmalloc-"], exclude=["-8k$"]))
    fam.add({"kmalloc-64": (1, 64), "kmalloc-8k": (1, 8192), "filp": (2, 384)})
    rows = {lab: (n, b) for lab, n, b in fam.rows()}
    assert rows == {"kmalloc-64": (1, 64), OTHER: (3, 8576)}


def test_family_never_uses_other_as_a_label():
    fam = CounterFamily(limit=5)
    fam.add({OTHER: (1, 1), "x": (1, 1)})
    assert dict((lab, n) for lab, n, _b in fam.rows()) == {"x": 1, OTHER: 1}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abcdefghij"),
                                st.tuples(st.integers(0, 50), st.integers(0, 5000)),
                                max_size=10), max_size=30),
       st.integers(1, 4))
def test_family_series_never_go_backwards(intervals, limit):
    """What Prometheus needs of a counter: every series it has seen only grows while it
    exists, and the sum over the family is every allocation counted."""
    fam = CounterFamily(limit)
    seen: dict[str, tuple[int, int]] = {}
    prev: dict[str, tuple[int, int]] = {}
    total = [0, 0]
    for inc in intervals:
        fam.add(inc)
        total[0] += sum(n for n, _b in inc.values())
        total[1] += sum(b for _n, b in inc.values())
        rows = fam.rows()
        assert len(rows) <= limit + 1
        now = {lab: (n, b) for lab, n, b in rows}
        for lab, (n, b) in now.items():
            if lab in seen and lab == OTHER:
                assert n >= seen[lab][0] and b >= seen[lab][1]
            elif lab in seen:
                # a label that kept its series grew; one that came back started anew
                assert (n >= seen[lab][0] and b >= seen[lab][1]) or lab not in prev
        assert fam.total() == tuple(total)
        prev = now
        seen.update(now)


# ------------------------------------------------------------------ the live table
def _keys(labels_per_row):
    out = {}
    for k in KEYS:
        labels = sorted(set(labels_per_row))
        codes = np.array([labels.index(x) for x in labels_per_row], np.int64)
        out[k] = (codes, labels)
    return out


def _u(*xs):
    return np.array(xs, np.uint64)


def test_live_pairs_across_intervals_and_one_object_per_address():
    t = LiveTable(live_max=100)
    t.update(_u(0x1000, 0x2000), _u(10, 20), np.array([64, 128]), _keys(["a", "b"]),
             _u(), _u())
    assert t.by("cache") == {"a": (1, 64), "b": (1, 128)}
    # next interval: 0x1000 freed; 0x2000 allocated again with no free seen (a bulk
    # free): the older row goes, counted
    t.update(_u(0x2000), _u(40), np.array([96]), _keys(["c"]), _u(0x1000), _u(30))
    assert t.by("cache") == {"c": (1, 96)}
    assert (t.freed, t.unseen_frees, len(t)) == (1, 1, 1)


def test_live_free_before_alloc_frees_nothing():
    t = LiveTable(live_max=100)
    t.update(_u(0x1000), _u(50), np.array([64]), _keys(["a"]), _u(0x1000), _u(40))
    assert len(t) == 1 and t.freed == 0


def test_live_evicts_oldest_past_the_bound():
    t = LiveTable(live_max=10)
    times = [50, 10, 40, 20, 30, 60, 70, 80, 90, 100, 110]
    t.update(np.array([(i + 1) << 12 for i in range(11)], np.uint64), _u(*times),
             np.ones(11, np.int64), _keys([f"l{x}" for x in times]), _u(), _u())
    # past 10 rows: the oldest go until 9 (EVICT_TO) are left
    assert t.evicted == 2 and len(t) == 9
    assert sorted(t.by("cache")) == sorted(f"l{x}" for x in times if x not in (10, 20))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(st.booleans(), st.integers(1, 12)), max_size=25),
                min_size=1, max_size=8))
def test_live_table_is_the_event_by_event_truth(intervals):
    """The table fed interval by interval holds what replaying every event in time order
    holds: an allocation makes its address live (an older live row on it was freed
    unseen), a free of a live address frees it."""
    t = LiveTable(live_max=10_000)
    model: dict[int, tuple[int, str]] = {}
    freed = unseen = 0
    clock = 0
    for events in intervals:
        ap, at, ab, al, fp, ft = [], [], [], [], [], []
        for is_alloc, slot in events:
            clock += 1
            ptr = slot << 12
            if is_alloc:
                lab = f"c{clock % 3}"
                ap.append(ptr); at.append(clock); ab.append(clock); al.append(lab)
                if ptr in model:
                    unseen += 1
                model[ptr] = (clock, lab)
            else:
                fp.append(ptr); ft.append(clock)
                if ptr in model:
                    freed += 1
                    del model[ptr]
        t.update(np.array(ap, np.uint64), np.array(at, np.uint64), np.array(ab, np.int64),
                 _keys(al) if al else {k: (np.zeros(0, np.int64), []) for k in KEYS},
                 np.array(fp, np.uint64), np.array(ft, np.uint64))
        assert dict(zip(t.ptr.tolist(), t.ts.tolist())) == {p: c for p, (c, _l) in model.items()}
        want: dict[str, tuple[int, int]] = {}
        for _p, (c, lab) in model.items():
            n, b = want.get(lab, (0, 0))
            want[lab] = (n + 1, b + c)
        assert t.by("cache") == want
        assert (t.freed, t.unseen_frees) == (freed, unseen)
        assert np.all(t.ptr[1:] > t.ptr[:-1])   # kept in pointer order


def test_live_forgets_unused_names():
    t = LiveTable(live_max=10)
    for i in range(5000):
        t.update(_u(0x1000), _u(2 * i + 1), np.array([8]), _keys([f"comm{i}"]),
                 _u(0x1000), _u(2 * i + 2))
    assert len(t) == 0
    assert len(t.names["comm"].names) <= 4096 + 4
    t.update(_u(0x2000), _u(99999), np.array([8]), _keys(["last"]), _u(), _u())
    assert t.by("comm") == {"last": (1, 8)}


# ------------------------------------------------------------------ the leak signal
def test_leak_signal_counts_growth_holds_on_loss_resets_on_fall():
    s = LeakSignal()
    for b in (100, 200, 300):
        s.step({"x": (1, b)}, lossy=False)
    assert s.streak["x"] == 2
    s.step({"x": (1, 900)}, lossy=True)      # grew, but events were lost: held
    assert s.streak["x"] == 2
    s.step({"x": (1, 950)}, lossy=False)
    assert s.streak["x"] == 3
    s.step({"x": (1, 950)}, lossy=False)     # flat: the streak ends
    assert s.streak["x"] == 0
    s.step({}, lossy=False)                  # nothing live: forgotten
    assert "x" not in s.streak


def test_state_leak_windows():
    state = ServeState(limit=5, leak_window=10.0)
    t = state.table
    for i in range(4):
        t.update(_u(0x1000 * (i + 1)), _u(i), np.array([64]), _keys(["grow"]), _u(), _u())
        state.end_interval(now=10.0 * i)
    snap = state.snapshot(0.0)
    assert dict(snap.growth["cache"]) == {"grow": 3}   # 4 windows, 3 growths


# ------------------------------------------------------------------ a real recording, in slices
@pytest.mark.parametrize("name", ["ftslab-open200.dat", "ftslab-eventfd300-samples.dat"])
def test_state_fed_in_slices_agrees_with_the_whole_recording(name):
    ds = ftslab.load(FIX / name)
    ts = np.concatenate([c.ts for c in ds.columns.values() if len(c.ts)])
    cuts = np.linspace(int(ts.min()), int(ts.max()) + 1, 6).astype(np.uint64)
    state = ServeState(limit=1000)
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        state.feed(time_slice(ds, int(lo), int(hi)))
    snap = state.snapshot(0.0)
    assert state.events == ds.events
    # allocations per cache: every slab allocation event of the recording, once; the
    # caches of kmem_cache_alloc counted from its raw name column
    raw = {}
    total = 0
    for c in ds.columns.values():
        if c.system == "kmem" and c.name in ("kmalloc", "kmem_cache_alloc"):
            ok = np.asarray(c.fields["ptr"]).astype(np.uint64) != 0
            total += int(ok.sum())
            if c.name == "kmem_cache_alloc" and "name" in c.fields:
                for nm in np.asarray(c.fields["name"])[ok]:
                    raw[str(nm)] = raw.get(str(nm), 0) + 1
    counted = {lab: n for lab, n, _b in snap.allocs["cache"]}
    assert sum(counted.values()) == total > 0
    assert raw, "this kernel's kmem_cache_alloc has a name field"
    for cache, n in raw.items():
        assert counted.get(cache, 0) >= n, cache
    assert sum(n for lab, n, _b in snap.allocs["callsite"]) == total
    assert sum(n for lab, n, _b in snap.allocs["comm"]) == total
    whole = {r["cache"]: r for r in live_allocations(ds, ["cache"]).rows}
    # live per cache: as the report pairs the whole recording, except the rows of an
    # address allocated again with no free between (counted apart)
    live = {lab: n for lab, n, _b in snap.live["cache"]}
    report_live = sum(r["live"] for r in whole.values())
    assert sum(live.values()) + state.table.unseen_frees == report_live
    for cache, r in whole.items():
        assert live.get(cache, 0) <= r["live"], cache
