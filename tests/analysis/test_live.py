"""`report --live`: what is still allocated at the end, over the hand-built Dataset of
test_report (expectations worked out by hand from its docstring) and a real capture."""
from __future__ import annotations

from pathlib import Path

import pytest

from ftslab.cli import render
from ftslab.analysis import analysed
from ftslab.analysis import build
from ftslab.analysis import grouping
from ftslab.analysis import live as live_mod
from ftslab.errors import UsageError
from ftslab.trace.loader import load
from ftslab.dataset import Loss, Metadata

from test_build import synthetic

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
SLAB = ("slab",)


def live_rows(ds, key):
    t = live_mod.live_allocations(ds, (key,))
    return t, {r[key]: r for r in t.rows}


def test_live_by_cache_counts_bytes_and_ages():
    # span of the recording: first event 50 (a kfree), last 1400 (a page free)
    t, r = live_rows(synthetic(), "cache")
    assert [row["cache"] for row in t.rows] == [
        "(large kmalloc)", "kmalloc-8k", "dentry", "filp", "kmalloc-64", "kmalloc-32"]
    # kmalloc-64: #1 freed at 210, #2 (ts 200) never: its free at 50 came before it
    assert r["kmalloc-64"] | {"growth": None} == dict(
        cache="kmalloc-64", live=1, live_bytes=64, unsure=0, count=2, oldest_ns=1200,
        median_age_ns=1200, growth=None)
    assert r["kmalloc-32"]["oldest_ns"] == 500       # P1 allocated again at 900
    assert r["filp"]["live"] == 1 and r["filp"]["count"] == 2 and r["filp"]["oldest_ns"] == 1150
    assert "kmalloc-128" not in r                     # #3 was freed: nothing live
    # filp: #7 (ts 150, bin 1) freed at 260 (bin 2), #8 (ts 250, bin 2) still held
    assert r["filp"]["growth"] == [0] + [192] * 15
    for row in t.rows:                                # the curve ends at what is live
        assert row["growth"][-1] == row["live_bytes"]
        assert len(row["growth"]) == live_mod.LIVE_POINTS


def test_live_by_comm_and_pages():
    _t, r = live_rows(synthetic(), "comm")
    assert r["nginx"]["live"] == 2 and r["nginx"]["live_bytes"] == 64 + 32 + 0
    t = live_mod.live_allocations(synthetic(), ("order",), _layer="page")
    # p1 freed at 1050, p2 freed at 1400, p3 failed, p4 (order 0, ts 1300, bin 14:
    # (1300 - 50) * 16 // 1351) held 100 ns
    assert t.rows == [dict(order=0, live=1, live_bytes=4096, unsure=0, count=2,
                           oldest_ns=100, median_age_ns=100, growth=[0] * 14 + [4096] * 2)]


def test_live_with_lost_events_marks_the_unsure_rows():
    meta = Metadata(source="synthetic", cmdlines={10: "nginx", 20: "bash"},
                    lost=[Loss(0, 5, ((100, 300),))])
    ds = synthetic(meta=meta)
    assert live_mod.loss_horizon(ds) == 300
    t, r = live_rows(ds, "cache")
    # live objects allocated before the last loss (300) may have lost their free
    assert r["kmalloc-64"]["unsure"] == 1 and r["filp"]["unsure"] == 1
    assert r["dentry"]["unsure"] == 0 and r["kmalloc-8k"]["unsure"] == 0
    assert "CPU 0 lost 5 events between 0.000 s and 0.000 s" in t.note
    assert "upper bound" in t.note and "lower bound" in t.note
    # a loss without a known time makes every live row unsure
    ds = synthetic(meta=Metadata(source="synthetic", lost=[Loss(1, 7)]))
    _t, r = live_rows(ds, "cache")
    assert all(row["unsure"] == row["live"] for row in r.values())


def test_live_report_tables_and_rendering():
    rep = build.build_report(synthetic(), live=True)
    assert [t.name for t in rep.tables] == ["live_by_cache", "live_by_callsite",
                                            "live_by_comm", "live_pages_by_order"]
    assert rep.main == "live_by_cache"
    text = "\n".join(render.render_text(rep))
    assert "LIVE BYTES" in text and "MEDIAN AGE" in text and "1.2 us" in text
    assert "UNSURE" not in text                       # no loss: the column stays out
    csv = render.render_csv(rep).splitlines()
    assert csv[0].split(",")[:4] == ["cache", "live", "live_bytes", "unsure"]
    assert csv[1].startswith("(large kmalloc),1,12288,0,1,900,900,")
    one = build.build_report(synthetic(), by=("callsite",), live=True)
    assert [t.name for t in one.tables] == ["live_by_callsite"]


def test_live_refuses_kprobe_only_recordings(monkeypatch):
    ds = synthetic()
    with pytest.raises(UsageError, match="no pointer"):
        build.build_report(ds, live=True, source="kprobe")


def test_free_times_are_the_matching_frees():
    an = analysed.analysis_of(synthetic())
    fr = {f.event: f for f in an.frames}
    km = fr["kmem:kmalloc"]
    assert km.free_ts.tolist() == [210, 0, 600, 0, 0, 0, 0]
    assert fr["kmem:kmem_cache_alloc"].free_ts.tolist() == [260, 0, 0]
    assert fr["kmem:mm_page_alloc"].free_ts.tolist() == [1050, 1400, 0, 0]


def test_live_on_a_real_capture_agrees_with_the_plain_report():
    ds = load(FIX / "ftslab-open200.dat")
    plain = {r["cache"]: r for r in grouping.group_allocations(ds, ("cache",),
                                                             _layer="slab").rows}
    t = live_mod.live_allocations(ds, ("cache",))
    assert t.rows
    for row in t.rows:
        assert row["live"] == plain[row["cache"]]["live"]
        assert row["count"] == plain[row["cache"]]["count"]
        assert 0 < row["median_age_ns"] <= row["oldest_ns"]
        assert row["growth"][-1] == row["live_bytes"]
    assert sum(r["live"] for r in t.rows) == sum(r["live"] for r in plain.values())


def test_live_without_free_events_says_so():
    ds = synthetic()
    del ds.columns[("kmem", "kfree")], ds.columns[("kmem", "kmem_cache_free")]
    t = live_mod.live_allocations(ds, ("cache",))
    assert sum(r["live"] for r in t.rows) == 9       # every successful slab allocation
    assert t.note.startswith("the recording has no free events")
    assert "no free events" not in live_mod.live_allocations(synthetic(), ("cache",)).note
