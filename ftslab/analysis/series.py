"""Time series: allocations, frees and outstanding bytes per interval.

Pure: a ``Table`` with one row per interval and key; drawing it is cli/plot.py's, the
kernel's own series beside it (/proc/slabinfo samples) reconcile.py's.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ftslab.analysis.analysed import analysis_of
from ftslab.analysis.grouping import check_by, group_by_keys, label_ranks, rows_of, select
from ftslab.analysis.analysed import time_span
from ftslab.analysis.tables import KEY_COLUMNS, Column, Table
from ftslab.dataset import Dataset
from ftslab.errors import UsageError

__all__ = ["interval_series", "parse_interval"]


_INTERVAL_UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
                   "m": 60_000_000_000, "min": 60_000_000_000}


def parse_interval(text: str) -> int:
    """``1s``, ``250ms``, ``100us``, ``2`` (seconds) -> nanoseconds (> 0)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|ms|s|m|min)?\s*", text or "")
    if not m:
        raise UsageError(f"`interval` {text!r}: give a duration such as 1s, 250ms or 100us",
                         params=("interval",))
    ns = int(round(float(m.group(1)) * _INTERVAL_UNITS[m.group(2) or "s"]))
    if ns <= 0:
        raise UsageError(f"`interval` {text!r}: must be more than 0", params=("interval",))
    return ns


_T_COLUMN = Column("t_s", "TIME (s)", "s")


_SERIES_COLUMNS = [
    Column("count", "ALLOCS", "count"),
    Column("bytes_alloc", "ALLOCATED", "bytes"),
    Column("bytes_per_s", "BYTES/S", "bytes"),
    Column("frees", "FREES", "count"),
    Column("outstanding", "OUTSTANDING", "bytes"),
]


def interval_series(ds: Dataset, by: Sequence[str], interval_ns: int, top: int | None = 20,
                    events: Sequence[str] | None = None, *,
                    _layer: str | tuple[str, ...] = "slab") -> Table:
    """Per interval of ``interval_ns`` and per key (the ``top`` keys by bytes over the
    whole recording): ``t_s`` (start of the interval, seconds from the first event),
    ``count``, ``bytes_alloc`` and ``bytes_per_s`` of the allocations made in it,
    ``frees`` (of this key's allocations, in it) and ``outstanding`` (bytes of this
    key's allocations made so far and not yet freed, at its end).  Rows by interval,
    then by key rank.  Every interval of the recording has a row per key, zeros
    included, so that the series are regular."""
    by = check_by(by)
    an = analysis_of(ds)
    frames = [fr for fr in select(an, events, _layer) if fr.n]
    name = "interval_by_" + "_".join(by)
    title = f"Allocations per {interval_ns / 1e9:g} s by " + ", ".join(by)
    columns = [_T_COLUMN] + [KEY_COLUMNS[k] for k in by] + _SERIES_COLUMNS
    span = time_span(ds)
    if not frames or span is None:
        return Table(name, title, columns, [], note="no allocation events")
    lo, hi = span
    key_labels, group_codes, m, gid = group_by_keys(an, frames, by)
    rows_in = rows_of(an, frames)
    ts, fts = rows_in.ts, rows_in.free_ts
    nb = int((hi - lo) // interval_ns) + 1
    ng = m["count"].shape[0]
    ranks = label_ranks(key_labels, group_codes)
    order = np.lexsort(tuple(reversed(ranks)) + (-m["count"], -m["bytes_alloc"]))
    order = order[m["count"][order] > 0]
    shown = order[:top] if top is not None else order
    slot = np.full(ng, -1, np.int64)
    slot[shown] = np.arange(shown.shape[0])
    k = shown.shape[0]

    def grid(rowsel, when, weights=None):
        s = slot[gid[rowsel]]
        keep = s >= 0
        b = ((when[keep] - np.uint64(lo)) // np.uint64(interval_ns)).astype(np.int64)
        w = None if weights is None else weights[keep]
        return np.bincount(s[keep] * nb + np.minimum(b, nb - 1), w, k * nb).reshape(k, nb)
    okrows = rows_in.ok_rows
    count = grid(okrows, ts[okrows])
    balloc = grid(okrows, ts[okrows], rows_in.bytes_alloc[okrows])
    freed = okrows[fts[okrows] != 0]
    frees = grid(freed, fts[freed])
    fbytes = grid(freed, fts[freed], rows_in.bytes_alloc[freed])
    paired = all(fr.free_ts is not None for fr in frames)
    outstanding = np.cumsum(balloc - fbytes, axis=1)
    sec = interval_ns / 1e9
    last_sec = max((hi - lo) - (nb - 1) * interval_ns, 1000) / 1e9  # the last may be partial
    out = []
    for b in range(nb):
        length = sec if b < nb - 1 else min(sec, last_sec)
        for j, g in enumerate(shown.tolist()):
            row = {"t_s": round(b * sec, 9)}
            row.update({kk: key_labels[i][int(group_codes[i][g])] for i, kk in enumerate(by)})
            row.update(count=int(count[j, b]), bytes_alloc=int(round(balloc[j, b])),
                       bytes_per_s=int(round(balloc[j, b] / length)),
                       frees=int(frees[j, b]) if paired else None,
                       outstanding=int(round(outstanding[j, b])) if paired else None)
            out.append(row)
    notes = [f"{nb} intervals of {sec:g} s from the first event"]
    if top is not None and order.shape[0] > top:
        notes.append(f"the top {top} of {order.shape[0]} keys by bytes")
    if last_sec < sec:
        notes.append(f"the last interval is {last_sec:.3g} s long: its BYTES/S is over that")
    if not paired:
        notes.append("kprobe events carry no pointer: FREES/OUTSTANDING n/a")
    return Table(name, title, columns, out, note="; ".join(notes))
