"""TopState: the live aggregation of `ftslab top`, fed interval by interval (pure), on
the hand-built Dataset of test_report cut in two at a known time."""
from __future__ import annotations

import numpy as np

from ftslab.records import Dataset, EventColumns
from ftslab.top import TopState

from test_report import synthetic


def _cut(ds: Dataset, lo: int, hi: int) -> Dataset:
    cols = {}
    for key, c in ds.columns.items():
        m = (c.ts >= lo) & (c.ts < hi)
        cols[key] = EventColumns(c.system, c.name, ts=c.ts[m], cpu=c.cpu[m], pid=c.pid[m],
                                 fields={k: np.asarray(v)[m] for k, v in c.fields.items()})
    return Dataset(ds.meta, cols, formats=ds.formats, symbolize=ds.symbolize)


def test_live_carries_across_intervals():
    ds = synthetic()
    st = TopState()
    # interval 1 (2 s): ts < 250: kmalloc #1 (P1), #2 (P2), kmem_cache_alloc #7 (Q1);
    # kfree P1 at 210 frees #1, kfree P2 at 50 came before #2: it frees nothing
    rows = st.feed(_cut(ds, 0, 250), seconds=2.0)
    assert rows["cache"] == [
        dict(cache="filp", allocs_per_s=0.5, bytes_per_s=96, live=1, live_bytes=192),
        dict(cache="kmalloc-64", allocs_per_s=1.0, bytes_per_s=64, live=1, live_bytes=64)]
    # interval 2 (1 s): the rest; kmem_cache_free Q1 at 260 frees #7 of interval 1
    rows = st.feed(_cut(ds, 250, 10_000), seconds=1.0)
    by_cache = {r["cache"]: r for r in rows["cache"]}
    assert by_cache["filp"] == dict(cache="filp", allocs_per_s=1.0, bytes_per_s=192, live=1,
                                    live_bytes=192)          # #7 freed, #8 (Q2) live
    assert by_cache["kmalloc-128"]["live"] == 0                 # #3 freed within it
    assert by_cache["kmalloc-64"] == dict(cache="kmalloc-64", allocs_per_s=0.0,
                                          bytes_per_s=0, live=1, live_bytes=64)
    # live at the end, as the whole-recording report has it: P2, P4, P5, P1 again, Q2, Q3
    assert st.ptr.size == 6 and st.events == ds.events
    assert {r["comm"]: (r["live"], r["live_bytes"]) for r in rows["comm"]} == {
        "nginx": (2, 96), "bash": (3, 8576), "<...>": (1, 12288)}
