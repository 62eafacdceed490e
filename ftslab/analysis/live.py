"""LIVE: what a recording's tasks allocated and nothing has freed, by group, with the
horizon before which lost events make it unsure.

Pure: a table out of the pairing of analysed.py; no I/O.  A LIVE count is never
corrected by a guess: where events were lost, the table's note says so instead.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ftslab.analysis.analysed import analysis_of
from ftslab.analysis.grouping import check_by, group_by_keys, label_ranks, rows_of, select
from ftslab.analysis.summary import NS_CLOCKS
from ftslab.analysis.analysed import time_span
from ftslab.analysis.tables import KEY_COLUMNS, Column, Table
from ftslab.dataset import Dataset
from ftslab.events import free_source

__all__ = ["live_allocations", "loss_horizon"]


LIVE_POINTS = 16
"""Points of the outstanding-bytes curve of each --live row (evenly spaced in time)."""


_LIVE_COLUMNS = [
    Column("live", "LIVE", "count"),
    Column("live_bytes", "LIVE BYTES", "bytes"),
    Column("unsure", "UNSURE", "count", quiet_if_zero=True),
    Column("count", "ALLOCS", "count"),
    Column("oldest_ns", "OLDEST", "ns"),
    Column("median_age_ns", "MEDIAN AGE", "ns"),
    Column("growth", "OUTSTANDING BYTES OVER TIME", "series"),
]


def loss_horizon(ds: Dataset) -> int | None:
    """The timestamp after which no event is known to be lost: None without loss; the
    recording's end when some loss has no known time (its live counts are all unsure)."""
    if not ds.meta.total_lost:
        return None
    span = time_span(ds)
    end = span[1] if span else 0
    horizon = 0
    for loss in ds.meta.lost:
        if not loss.spans:
            return end
        horizon = max(horizon, max(b for _a, b in loss.spans))
    return horizon


def loss_note(ds: Dataset, lo: int) -> str:
    parts = []
    for loss in ds.meta.lost:
        where = "CPU ?" if loss.cpu < 0 else f"CPU {loss.cpu}"
        if loss.spans:
            a = min(x for x, _ in loss.spans)
            b = max(y for _, y in loss.spans)
            when = f"between {max(a - lo, 0) / 1e9:.3f} s and {max(b - lo, 0) / 1e9:.3f} s"
        else:
            when = "at an unknown time"
        parts.append(f"{where} lost {loss.lost:,} events {when}")
    return ("; ".join(parts) + ": a lost free shows as live, so LIVE is an upper bound for "
            "the UNSURE rows (allocated before the last loss); a lost allocation is not "
            "seen at all, so memory allocated then is missing (a lower bound)")


def live_allocations(ds: Dataset, by: Sequence[str], top: int | None = None,
                     events: Sequence[str] | None = None, *, name: str | None = None,
                     title: str | None = None,
                     _layer: str | tuple[str, ...] | None = "slab") -> Table:
    """Allocations made during the recording and not freed by its end, grouped by
    ``by``, most bytes first.  Each row: ``live`` (objects), ``live_bytes``
    (bytes_alloc), ``unsure`` (live objects allocated before the last lost event: their
    free may be the lost event), ``count`` (all allocations of the group), ``oldest_ns``
    and ``median_age_ns`` (how long the live ones have been held at the end of the
    recording, ns), ``growth`` (bytes outstanding at LIVE_POINTS evenly spaced times,
    the last one at the end of the recording: of the allocations seen, so it starts
    near 0).  Groups with nothing live are left out."""
    by = check_by(by)
    an = analysis_of(ds)
    frames = [fr for fr in select(an, events, _layer) if fr.free_ts is not None and fr.n]
    name = name or ("live_by_" + "_".join(by) if by else "live")
    title = title or ("Live (not freed) allocations by " + ", ".join(by) if by
                      else "Live (not freed) allocations")
    columns = [KEY_COLUMNS[k] for k in by] + list(_LIVE_COLUMNS)
    span = time_span(ds)
    if not frames or span is None:
        return Table(name, title, columns, [], note="no allocation events with a pointer "
                     "(kprobe events carry none: --live needs the tracepoints)")
    lo, hi = span
    key_labels, group_codes, m, gid = group_by_keys(an, frames, by)
    rows_in = rows_of(an, frames)
    held = rows_in.held
    live_ts, held_ts, held_free = rows_in.ts[rows_in.live], rows_in.ts[held], rows_in.free_ts[held]
    ng = m["count"].shape[0]
    lg = gid[rows_in.live]
    bytes_alloc = rows_in.bytes_alloc
    live_bytes = np.rint(np.bincount(lg, bytes_alloc[rows_in.live], ng)).astype(np.int64)
    horizon = loss_horizon(ds)
    unsure = (np.bincount(lg[live_ts <= np.uint64(horizon)], minlength=ng)
              if horizon is not None else np.zeros(ng, np.int64))
    age = (np.uint64(hi) - live_ts).astype(np.int64)
    # oldest and median age per group: sort the live rows by (group, age)
    order = np.lexsort((age, lg))
    sg, sage = lg[order], age[order]
    first = np.searchsorted(sg, np.arange(ng), "left")
    last = np.searchsorted(sg, np.arange(ng), "right")
    # growth: bytes allocated minus bytes freed, per group and time bin, summed up
    k = LIVE_POINTS
    width = max(hi - lo + 1, 1)

    def bins(t):
        return np.minimum(((t - np.uint64(lo)).astype(np.float64) * k / width)
                          .astype(np.int64), k - 1)
    hg = gid[held]
    hb = bytes_alloc[held]
    grid = np.bincount(hg * k + bins(held_ts), hb, ng * k)
    fmask = held_free != 0
    grid -= np.bincount(hg[fmask] * k + bins(held_free[fmask]), hb[fmask], ng * k)
    curve = np.rint(np.cumsum(grid.reshape(ng, k), axis=1)).astype(np.int64)
    live = m["live"]
    pick = np.flatnonzero(live > 0)
    ranks = label_ranks(key_labels, group_codes, pick)
    sel = pick[np.lexsort(tuple(reversed(ranks)) + (-live[pick], -live_bytes[pick]))]
    shown = sel[:top] if top is not None else sel
    clock = str(ds.meta.extra.get("trace_clock", "") or "")
    ns_clock = clock in NS_CLOCKS or clock == ""
    out = []
    for g in shown.tolist():
        row = {kk: key_labels[i][int(group_codes[i][g])] for i, kk in enumerate(by)}
        a, b = int(first[g]), int(last[g])
        row.update(live=int(live[g]), live_bytes=int(live_bytes[g]), unsure=int(unsure[g]),
                   count=int(m["count"][g]),
                   oldest_ns=int(sage[b - 1]) if ns_clock else None,
                   median_age_ns=int(np.median(sage[a:b])) if ns_clock else None,
                   growth=[int(x) for x in curve[g]])
        out.append(row)
    notes = []
    if top is not None and sel.shape[0] > top:
        notes.append(f"top {top} of {sel.shape[0]} rows by live bytes")
    if not out:
        notes.append("nothing allocated during the recording is still allocated at its end")
    if ns_clock:
        notes.append(f"ages at the end of the recording; the curve has {k} points over "
                     f"{(hi - lo) / 1e9:.3f} s")
    else:
        notes.append(f"the trace clock {clock!r} does not count nanoseconds: no ages; the "
                     f"curve has {k} points over the recording")
    if horizon is not None:
        notes.append(loss_note(ds, lo))
    layers = {fr.src.layer for fr in frames}
    if not any(len(c) for (sy, nm), c in ds.columns.items()
               if (fs := free_source(sy, nm)) is not None and fs.layer in layers):
        notes.insert(0, "the recording has no free events (recorded with -e and without "
                        "the frees?): nothing is seen freed, so every allocation is live")
    return Table(name, title, columns, out, note="; ".join(notes))
