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


def test_backlog_drops_the_oldest_pages_and_counts_their_events():
    """When decoding falls behind, the older half of the waiting pages is set aside
    and its events counted (walked, not decoded): exact, never silent."""
    import threading
    from pathlib import Path

    from ftslab import ringbuf
    from ftslab.formats import parse_header_event, parse_header_page
    from ftslab.top import _TopReader
    from ftslab.tracedat import read_tracedat

    fix = Path(__file__).resolve().parent / "fixtures" / "6.18"
    td = read_tracedat(fix / "ftslab-open200.dat")
    hp = parse_header_page(td.header_page)
    he = parse_header_event(td.header_event)
    psize = td.buffer_page_size
    r = _TopReader.__new__(_TopReader)
    r.hp, r.he, r.page_size = hp, he, psize
    r.cpus = sorted(td.cpu_data)
    r.pages = {c: [bytes(td.cpu_data[c][i:i + psize])
                   for i in range(0, len(td.cpu_data[c]), psize)] for c in r.cpus}
    r.backlog = sum(len(p) for ps in r.pages.values() for p in ps)
    r.dropped = r.lost = 0
    r.to_drop, r._drop_lock = [], threading.Lock()
    expect = 0
    for c in r.cpus:
        half = r.pages[c][:len(r.pages[c]) // 2]
        if half:
            expect += ringbuf.walk_pages(b"".join(half), c, hp, he, psize).ts.size
    before = r.backlog
    r._drop_oldest()
    assert r.dropped == 0 and r.to_drop                  # counted later, by the worker
    r._count_dropped()
    assert r.dropped == expect > 0
    assert r.backlog == sum(len(p) for ps in r.pages.values() for p in ps) < before
