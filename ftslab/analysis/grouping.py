"""Tables grouped by keys (comm, cache, call site, ...): allocations, waste, page orders,
size histograms and fragmentation.

Pure: rows out of an ``analysed.Analysis``, with no I/O and no printing; which of these
tables a report holds is build.py's choice, how they look cli/render.py's.
"""
from __future__ import annotations

import math
from fnmatch import fnmatchcase
from typing import Sequence

import numpy as np

from ftslab.analysis.analysed import Analysis, analysis_of, Rows
from ftslab.analysis.frames import Frame, label_order
from ftslab.analysis.tables import FAILED_COLUMN, KEY_COLUMNS, METRIC_COLUMNS, Column, GROUP_KEYS, SORT_KEYS, Table
from ftslab.dataset import Dataset, EventColumns
from ftslab.errors import UsageError

__all__ = ["group_allocations", "size_histogram", "fragmentation", "pages_by_order"]


def select(an: Analysis, events: Sequence[str] | None,
            layer: str | tuple[str, ...] | None = None) -> list[Frame]:
    layers = (layer,) if isinstance(layer, str) else layer
    out = []
    for fr in an.frames:
        if layers is not None and fr.src.layer not in layers:
            continue
        if events is not None and not any(_event_matches(fr.cols, p) for p in events):
            continue
        out.append(fr)
    return out


def _event_matches(cols: EventColumns, pattern: str) -> bool:
    """``kmem:kmalloc``, ``kmalloc`` and ``kmem:*`` style patterns; a system-less text
    event (system "") is matched on the name part alone."""
    if ":" not in pattern:
        return fnmatchcase(cols.name, pattern)
    system, name = pattern.split(":", 1)
    return (not cols.system or fnmatchcase(cols.system, system)) and fnmatchcase(cols.name, name)


# ----------------------------------------------------------------------------------------
# Grouped allocations
# ----------------------------------------------------------------------------------------

def check_by(by: Sequence[str]) -> tuple[str, ...]:
    if isinstance(by, str):
        by = (by,)
    by = tuple(by)
    for k in by:
        if k not in GROUP_KEYS:
            raise UsageError(f"unknown `by` key {k!r}", f"use one of {', '.join(GROUP_KEYS)}",
                             params=("by",))
    if len(set(by)) != len(by):
        raise UsageError(f"`by` key repeated: {', '.join(by)}", params=("by",))
    return by


def check_sort(sort: str) -> None:
    if sort not in SORT_KEYS:
        raise UsageError(f"unknown sort key {sort!r}", f"use one of {', '.join(SORT_KEYS)}")


def rows_of(an: Analysis, frames: list[Frame]) -> Rows:
    key = tuple(id(fr) for fr in frames)
    got = an.rows_cache.get(key)
    if got is None:
        got = an.rows_cache[key] = Rows(frames)
    return got


def label_ranks(key_labels: list, group_codes: list, pick=slice(None)) -> list:
    """Per key, each picked group's rank in the key's label order (the sort's last
    tiebreak, so that equal rows come out in a stable, readable order)."""
    ranks = []
    for labels, codes in zip(key_labels, group_codes):
        order = sorted(range(len(labels)), key=lambda i: label_order(labels[i]))
        rank = np.empty(max(len(labels), 1), np.int64)
        rank[order] = np.arange(len(order))
        ranks.append(rank[codes[pick]])
    return ranks


def _count(gid: np.ndarray, rows: np.ndarray, ngroups: int) -> np.ndarray:
    return np.bincount(gid[rows], minlength=ngroups).astype(np.int64)


def group_by_keys(an: Analysis, frames: list[Frame], by: tuple[str, ...]):
    """Group rows of ``frames`` by ``by``: (per-key label lists, per-key codes of each
    group, metric arrays per group, each row's group).  Computed once per analysis
    (the default report groups by cache and by call site twice: allocations, then
    waste); callers only read what it returns."""
    key = (tuple(id(fr) for fr in frames), tuple(by))
    got = an.groups_cache.get(key)
    if got is None:
        got = an.groups_cache[key] = _group_rows(an, frames, tuple(by))
    return got


def _group_rows(an: Analysis, frames: list[Frame], by: tuple[str, ...]):
    rows = rows_of(an, frames)
    n = rows.n
    key_codes, key_labels = [], []
    for k in by:
        if k not in rows.codes:
            per_frame, labels = an.global_key(frames, k)
            codes = (per_frame[0] if len(per_frame) == 1 else np.concatenate(per_frame)
                     if per_frame else np.zeros(0, np.int64))
            rows.codes[k] = (codes, labels)
        codes, labels = rows.codes[k]
        key_codes.append(codes)
        key_labels.append(labels)
    cards = [max(len(lab), 1) for lab in key_labels]
    total = math.prod(cards)
    if total < 1 << 62:
        if len(key_codes) == 1:
            combined, strides = key_codes[0], [1]
        else:
            combined = np.zeros(n, np.int64)
            stride = 1
            strides = []
            for codes, card in zip(reversed(key_codes), reversed(cards)):
                combined += codes * stride
                strides.append(stride)
                stride *= card
            strides.reverse()
        if total <= max(4 * n, 1 << 20):
            present = np.bincount(combined, minlength=total) > 0
            gkeys = np.flatnonzero(present)
            if gkeys.shape[0] == total:
                gid = combined  # every combination occurs: the codes are the groups
            else:
                lut = np.zeros(total, np.int64)
                lut[gkeys] = np.arange(gkeys.shape[0])
                gid = lut[combined]
        else:
            gkeys, gid = np.unique(combined, return_inverse=True)
            gid = gid.reshape(-1)
        group_codes = [(gkeys // s) % c for s, c in zip(strides, cards)]
        ng = gkeys.shape[0]
    else:  # astronomically many combinations: let numpy sort the rows
        stacked = np.stack(key_codes, axis=1)
        gk, gid = np.unique(stacked, axis=0, return_inverse=True)
        gid = gid.reshape(-1)
        group_codes = [gk[:, i] for i in range(len(by))]
        ng = gk.shape[0]

    everything = np.bincount(gid, minlength=ng).astype(np.int64)
    count = everything - _count(gid, rows.not_ok, ng)
    metrics = {
        "count": count,
        "failed": _count(gid, rows.failed, ng),
        "bytes_req": np.rint(np.bincount(gid, rows.bytes_req, ng)).astype(np.int64),
        "bytes_alloc": np.rint(np.bincount(gid, rows.bytes_alloc, ng)).astype(np.int64),
        "frees": everything - _count(gid, rows.not_freed, ng),
        "live": _count(gid, rows.live, ng),
    }
    metrics["waste"] = metrics["bytes_alloc"] - metrics["bytes_req"]
    return key_labels, group_codes, metrics, gid


def without_pairing(t: Table) -> Table:
    """Kprobe events carry no pointer: frees/live cannot be known, so not shown."""
    for r in t.rows:
        for k in ("frees", "live"):
            if k in r:
                r[k] = None
    return t


def _layer_note(frames: list[Frame]) -> str:
    notes = list(dict.fromkeys(n for fr in frames for n in fr.notes
                               if fr.src.layer not in ("kprobe", "kprobe_page")))
    layers = {fr.src.layer for fr in frames}
    if layers & {"kprobe", "kprobe_page"} and layers & {"slab", "page"}:
        notes.insert(0, "kprobe and tracepoint rows see the same allocations: do not add "
                        "them up")
    if len(layers) > 1:
        notes.insert(0, "slab and page rows overlap: the page allocator also supplies the "
                        "pages behind slabs and large kmallocs")
    return "; ".join(notes)


def group_allocations(ds: Dataset, by: Sequence[str], sort: str = "bytes",
                      top: int | None = None, events: Sequence[str] | None = None,
                      *, name: str | None = None, title: str | None = None,
                      _layer: str | tuple[str, ...] | None = None) -> Table:
    """Allocations grouped by the ``by`` keys (see GROUP_KEYS), biggest first.

    Each row holds the key fields (named by their --by word) and ``count`` (successful
    allocations), ``failed``, ``bytes_req``, ``bytes_alloc``, ``waste`` (bytes_alloc -
    bytes_req), ``frees`` (of these allocations, within the recording) and ``live``.
    ``sort``: ``bytes`` (bytes_alloc), ``count`` or ``waste``; ties by the other metrics
    and then the key labels.  ``events``: event names or fnmatch patterns
    (``"kmem:kmalloc"``, ``"kmalloc"``, ``"kmem:*"``); default all allocation events.
    """
    by = check_by(by)
    check_sort(sort)
    if top is not None and top < 0:
        raise UsageError(f"`top` must be >= 0, not {top}", params=("top",))
    an = analysis_of(ds)
    frames = select(an, events, _layer)
    name = name or ("by_" + "_".join(by) if by else "total")
    title = title or ("Allocations by " + ", ".join(by) if by else "Allocations")
    columns = [KEY_COLUMNS[k] for k in by] + list(METRIC_COLUMNS)
    if not frames or sum(fr.n for fr in frames) == 0:
        return Table(name, title, columns, [], note="no allocation events")
    key_labels, group_codes, m, _gid = group_by_keys(an, frames, by)
    primary = {"bytes": "bytes_alloc", "count": "count", "waste": "waste"}[sort]
    tiebreak = [m[k] for k in ("bytes_alloc", "count", "waste") if k != primary]
    ranks = label_ranks(key_labels, group_codes)
    # lexsort: last key is primary; negate metrics for descending order.
    order = np.lexsort(tuple(reversed(ranks)) + tuple(-t for t in reversed(tiebreak))
                       + (-m[primary],))
    ngroups = order.shape[0]
    if top is not None:
        order = order[:top]
    rows = []
    for g in order.tolist():
        row = {k: key_labels[i][int(group_codes[i][g])] for i, k in enumerate(by)}
        for k in ("count", "bytes_req", "bytes_alloc", "waste", "frees", "live", "failed"):
            row[k] = int(m[k][g])
        rows.append(row)
    columns.insert(len(by) + 1, FAILED_COLUMN)
    notes = []
    if top is not None and ngroups > top:
        notes.append(f"top {top} of {ngroups} rows by {sort}")
    if _layer_note(frames):
        notes.append(_layer_note(frames))
    return Table(name, title, columns, rows, note="; ".join(notes))


def fragmentation(ds: Dataset, by: str = "cache", top: int | None = None,
                  events: Sequence[str] | None = None) -> Table:
    """Internal fragmentation of slab allocations per cache or call site: ``waste`` =
    bytes_alloc - bytes_req (bytes), ``waste_pct`` = waste as % of bytes_alloc."""
    if by not in ("cache", "callsite"):
        raise UsageError(f"fragmentation is by cache or callsite, not {by!r}")
    t = group_allocations(ds, (by,), sort="waste", top=top, events=events,
                          name=f"fragmentation_by_{by}",
                          title=f"Slab waste by {'cache' if by == 'cache' else 'call site'}",
                          _layer="slab")
    for row in t.rows:
        row["waste_pct"] = (round(100.0 * row["waste"] / row["bytes_alloc"], 2)
                            if row["bytes_alloc"] else 0.0)
    keep = {by, "count", "bytes_req", "bytes_alloc", "waste"}
    t.columns = [c for c in t.columns if c.name in keep] + [Column("waste_pct", "WASTE %", "%")]
    t.rows = [{c.name: r[c.name] for c in t.columns} for r in t.rows]
    return t


def pages_by_order(ds: Dataset, layer: str = "page") -> Table:
    """Page allocations per order: count, bytes (page_size << order each), failed,
    frees and live (pages still allocated at the end), sorted by order."""
    t = group_allocations(ds, ("order",), _layer=layer,
                          name="pages_by_order" if layer == "page" else "kprobe_pages_by_order",
                          title="Page allocations by order" + (
                              "" if layer == "page" else " (kprobes)"))
    cols = [Column("order", "ORDER"), Column("count", "ALLOCS", "count"),
            Column("bytes_alloc", "BYTES", "bytes"), FAILED_COLUMN,
            Column("frees", "FREES", "count"), Column("live", "LIVE", "count")]
    rows = [{"order": r["order"], "count": r["count"], "bytes_alloc": r["bytes_alloc"],
             "failed": r["failed"], "frees": r["frees"], "live": r["live"]} for r in t.rows]
    rows.sort(key=lambda r: label_order(r["order"]))
    return Table(t.name, t.title, cols, rows, note="" if rows else "no page allocations")


def size_histogram(ds: Dataset, events: Sequence[str] | None = None,
                   layer: str | None = "slab") -> Table:
    """Requested sizes (bytes_req) in power-of-two buckets ``[lo, hi)``; bucket ``[0, 1)``
    holds zero-byte requests.  Rows run contiguously from the smallest to the largest
    non-empty bucket.  Default: slab events (page sizes are powers of two anyway)."""
    an = analysis_of(ds)
    frames = select(an, events, layer if events is None else None)
    cols = [Column("bucket", "BYTES"), Column("lo", "LO", "bytes"), Column("hi", "HI", "bytes"),
            Column("count", "ALLOCS", "count"), Column("bytes_req", "REQUESTED", "bytes")]
    sizes = (np.concatenate([fr.bytes_req[fr.ok] for fr in frames]) if frames
             else np.zeros(0, np.int64))
    if sizes.shape[0] == 0:
        return Table("histogram", "Requested sizes", cols, [], note="no allocation events",
                     bar="count")
    sizes = np.maximum(sizes, 0)
    # bucket = bit_length(size): 0 -> 0, 1 -> 1, [2,4) -> 2, ...  frexp is exact below
    # 2**53; the correction handles a float rounding up to the next power of two.
    _, exp = np.frexp(sizes.astype(np.float64))
    exp = exp.astype(np.int64)
    low = np.left_shift(np.int64(1), np.maximum(exp - 1, 0))
    exp = np.where((sizes > 0) & (sizes < low), exp - 1, exp)
    counts = np.bincount(exp)
    sums = np.bincount(exp, weights=sizes.astype(np.float64))
    nz = np.flatnonzero(counts)
    rows = []
    for b in range(int(nz[0]), int(nz[-1]) + 1):
        lo, hi = (0, 1) if b == 0 else (1 << (b - 1), 1 << b)
        rows.append({"bucket": f"[{lo}, {hi})", "lo": lo, "hi": hi,
                     "count": int(counts[b]), "bytes_req": int(round(sums[b]))})
    return Table("histogram", "Requested sizes (bytes_req)", cols, rows, bar="count")
