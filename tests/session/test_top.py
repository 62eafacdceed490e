"""`ftslab top` without root: TopState, the live aggregation fed interval by interval
(pure), on the hand-built Dataset of test_report cut in two at a known time; and
LiveReader, the reader run_session pumps, on the real pages of 6.18 recordings (its
splice and read paths, the ticks, and the backlog drop)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import ftslab
from ftslab.trace import pages as pages_mod
from ftslab.session import top
from ftslab.trace.formats import parse_header_event, parse_header_page
from ftslab.dataset import Dataset, EventColumns
from ftslab.session.top import TopFrame, TopState, LiveReader

from test_build import synthetic
from test_stream import replay_session, tasks_gone


def time_slice(ds: Dataset, lo: int, hi: int) -> Dataset:
    """The events of ``ds`` with lo <= ts < hi (one interval of a live session)."""
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
    rows = st.feed(time_slice(ds, 0, 250), seconds=2.0)
    assert rows["cache"] == [
        dict(cache="filp", allocs_per_s=0.5, bytes_per_s=96, live=1, live_bytes=192),
        dict(cache="kmalloc-64", allocs_per_s=1.0, bytes_per_s=64, live=1, live_bytes=64)]
    # interval 2 (1 s): the rest; kmem_cache_free Q1 at 260 frees #7 of interval 1
    rows = st.feed(time_slice(ds, 250, 10_000), seconds=1.0)
    by_cache = {r["cache"]: r for r in rows["cache"]}
    assert by_cache["filp"] == dict(cache="filp", allocs_per_s=1.0, bytes_per_s=192, live=1,
                                    live_bytes=192)          # #7 freed, #8 (Q2) live
    assert by_cache["kmalloc-128"]["live"] == 0                 # #3 freed within it
    assert by_cache["kmalloc-64"] == dict(cache="kmalloc-64", allocs_per_s=0.0,
                                          bytes_per_s=0, live=1, live_bytes=64)
    # live at the end, as the whole-recording report has it: P2, P4, P5, P1 again, Q2, Q3
    assert st.live_totals()[0] == 6 and st.events == ds.events
    assert {r["comm"]: (r["live"], r["live_bytes"]) for r in rows["comm"]} == {
        "nginx": (2, 96), "bash": (3, 8576), "<...>": (1, 12288)}


# ------------------------------------------------------------------ the reader, on real pages
# LiveReader as run_session makes it, over a tracefs tree holding a real recording's
# pages (test_stream_decoder.replay_session): trace_pipe_raw is a regular file there,
# which splice moves into the reader's pipe and read() reads, as from the kernel's.

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


@pytest.fixture
def gone_tasks(monkeypatch):
    """The recording's tasks have exited: /proc/PID/comm fails, saved_cmdlines names them."""
    tasks_gone(monkeypatch, top)


def _run_reader(session, splice=True, interval=0.0):
    frames: list[TopFrame] = []
    r = LiveReader(session, interval, frames.append, None, None)  # 0: tick every pump
    try:
        r.can_splice = r.can_splice and splice
        for c in session.cpus:
            r.pump(c)
        if r._worker is not None:
            r._worker.join()
        assert r.error is None
        for c in session.cpus:  # as run_session ends: what is left, then close
            r.flush(c)
    finally:
        r.close()
    assert not r.fds and not r.pipes
    return r, frames


def _pages(td, cpu):
    data, psize = td.cpu_data[cpu], td.buffer_page_size
    return [bytes(data[i:i + psize]) for i in range(0, len(data), psize)]


def _walk_count(td, cpu, pages) -> int:
    hp, he = parse_header_page(td.header_page), parse_header_event(td.header_event)
    return int(pages_mod.walk_pages(b"".join(pages), cpu, hp, he, td.buffer_page_size).ts.size)


@pytest.mark.parametrize("name, splice", [("ftslab-open200.dat", True),
                                          ("tracecmd-v7-none.dat", True),
                                          ("ftslab-open200.dat", False)])
def test_reader_counts_what_the_whole_recording_holds(tmp_path, gone_tasks, name, splice):
    session, td = replay_session(tmp_path, FIX / name)
    r, frames = _run_reader(session, splice)
    ds = ftslab.load(FIX / name)
    assert r.state.events == ds.events > 0
    assert r.dropped == 0 and frames[-1].dropped == 0
    assert r.lost == ds.meta.total_lost == frames[-1].lost
    # live at the end: as one TopState fed the whole recording at once says
    whole = TopState()
    rows = whole.feed(ds, 1.0, None)
    assert r.state.live_totals()[0] == whole.live_totals()[0] == frames[-1].live_objects
    assert r.state.live_totals()[1] == whole.live_totals()[1] == frames[-1].live_bytes
    live = lambda rows_: {x["cache"]: (x["live"], x["live_bytes"]) for x in rows_["cache"]
                          if x["live"]}
    assert live(frames[-1].rows) == live(rows)
    # allocations counted once each, over the frames (rates are rounded to 0.1/s)
    slab = sum(len(c) for (s, n), c in ds.columns.items()
               if n in ("kmalloc", "kmem_cache_alloc"))
    counted = sum(x["allocs_per_s"] * f.interval for f in frames for x in f.rows["cache"])
    slack = sum(0.05 * f.interval * len(f.rows["cache"]) for f in frames) + 1e-6
    assert abs(counted - slab) <= slack


def test_backlog_drops_the_oldest_pages_and_counts_their_events(tmp_path, gone_tasks,
                                                                 monkeypatch):
    """When decoding falls behind, the older half of the waiting pages is set aside
    and its events counted (walked, not decoded): exact, never silent."""
    session, td = replay_session(tmp_path, FIX / "ftslab-open200.dat")
    (cpu,) = session.cpus  # one CPU holds this recording's pages
    # whole pages per splice (the kernel's trace_pipe_raw moves whole pages; a file
    # moves what it is asked for), and every byte waiting is over the limit
    monkeypatch.setattr(top, "PIPE_BYTES", td.buffer_page_size)
    monkeypatch.setattr(top, "BACKLOG_BYTES", 0)
    pages = _pages(td, cpu)
    k = len(pages) // 2
    dropped, kept = _walk_count(td, cpu, pages[:k]), _walk_count(td, cpu, pages[k:])
    r, frames = _run_reader(session)
    assert dropped > 0 and kept > 0
    assert r.dropped == dropped == frames[0].dropped      # the oldest half, counted
    assert r.state.events == kept                          # the newest half, decoded
    assert frames[0].events == kept


def test_a_session_shorter_than_one_interval_still_counts_its_pages(tmp_path, gone_tasks):
    """No tick came while pumping (`top --batch -d 0.5` with the default -n 1): the pages
    collected are decoded at close, in one last frame, not dropped without a word."""
    session, td = replay_session(tmp_path, FIX / "ftslab-open200.dat")
    r, frames = _run_reader(session, interval=3600.0)
    ds = ftslab.load(FIX / "ftslab-open200.dat")
    assert len(frames) == 1
    assert r.state.events == frames[0].events == ds.events > 0
    assert r.dropped == 0 and r.lost == ds.meta.total_lost
