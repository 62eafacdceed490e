"""The whole report of a decoded recording (``build_report``): which tables, in which order.

Role: choose and assemble the tables of a report (the default set, ``by``, ``live``,
``interval_ns``, the histogram, the check against /proc/slabinfo) from the modules that
compute them (grouping.py, live.py, series.py, slabinfo.py, reconcile.py, summary.py),
over the one ``analysed.Analysis`` of a ``dataset.Dataset``; cli/render.py prints the
``Report`` as text, JSON or CSV.  This module computes no aggregate itself: it picks the
tables, their layers and event source, and adds their notes.  Like all of analysis/ it
is pure: it opens no file, touches no kernel interface and prints nothing, and it never
invents a value: a field an event does not carry is reported as unknown (``"?"``) or
not applicable (``None``), never guessed.

Speed: every per-event step is a numpy operation.  Python loops run only over *distinct*
values (call sites, pids, caches, gfp words, groups), so a 10 M event recording reports
in a few seconds.

What the numbers of a report mean
- **Layers.** ``kmem:kmalloc`` / ``kmem:kmem_cache_alloc`` are slab-layer events;
  ``kmem:mm_page_alloc`` is the page layer *below* it: the pages backing new slabs and
  large kmallocs appear there too.  Slab and page bytes therefore overlap; a table that
  mixes the layers says so in its note.  The default report keeps them apart.
- **Cache.** ``kmem_cache_alloc`` carries the cache ``name`` on 6.18 but not on 6.1
  (no ``name`` field: the cache is ``"?"``; kernel commit not identified, seen on
  Debian's 6.1 and on 6.18).  A ``kmalloc`` event names no cache: its
  cache key is the kmalloc *size class* derived from ``bytes_alloc``, spelled like the
  kernel's caches (``kmalloc-64``, ``kmalloc-1k``, ... ``kmalloc-8k``).  The kernel's
  ``kmalloc-cg-*`` / ``kmalloc-rcl-*`` / ``dma-kmalloc-*`` variants of a class cannot be
  told apart from the event, so they are summed in one class.  Above
  KMALLOC_MAX_CACHE_SIZE (2 pages) kmalloc goes to the page allocator:
  ``"(large kmalloc)"``.  Page allocations have no cache (``None``).  A cache SLUB
  merged with others is named by all its names (``signal_cache|UNIX|UNIX-STREAM``,
  merged.py) when the recording stored them (metadata ``slab_aliases``).
- **Failed allocations** (``pfn == -1``, or ``ptr == NULL``) are counted in ``failed``
  and contribute neither to ``count`` nor to bytes.
- **frees / live.** An allocation is *freed* when the next event on the same pointer
  (slab: ``ptr`` of kfree/kmem_cache_free; pages: ``pfn`` of mm_page_free) is a free,
  within the recording.  ``live`` = allocations with a real pointer not freed by the end.
  kmalloc(0) (ZERO_SIZE_PTR) is neither.  Text traces have microsecond timestamps: a
  free and a re-allocation of the same pointer in the same microsecond can be paired
  the wrong way round (the per-group totals stay right when both are in one group).
- Byte sums are exact up to 2**53 bytes (8 PiB) per group (float64 accumulation).

Extending to new event sources (kprobes): add an ``AllocSource`` / ``FreeSource`` to
``ALLOC_SOURCES`` / ``FREE_SOURCES`` (events.py) saying which field holds what; nothing
else changes.
"""
from __future__ import annotations

from dataclasses import replace as _replace
from typing import Sequence

from ftslab.analysis.analysed import analysis_of
from ftslab.analysis.grouping import check_by, check_sort, select, without_pairing, fragmentation, group_allocations, pages_by_order, size_histogram
from ftslab.analysis.live import loss_note, live_allocations
from ftslab.analysis.series import interval_series
from ftslab.analysis.slabinfo import slabinfo_diff
from ftslab.analysis.summary import layers, collect_warnings, default_source, summary
from ftslab.analysis.analysed import time_span
from ftslab.analysis.tables import Report, Table
from ftslab.dataset import Dataset
from ftslab.errors import UsageError
from ftslab.events import SOURCES
from ftslab.progress import NO_PROGRESS, Part, Progress


__all__ = ["build_report"]


def build_report(ds: Dataset, by: Sequence[str] = (), sort: str = "bytes",
                 top: int | None = 20, hist: bool = False,
                 events: Sequence[str] | None = None, source: str | None = None,
                 progress: Progress = NO_PROGRESS, live: bool = False,
                 interval_ns: int | None = None) -> Report:
    """The whole report.  Without ``by``: slab allocations by cache, by call site and by
    comm, slab waste by cache, pages by order, and the slabinfo diff when both snapshots
    exist (main table: by cache); with kprobe events, also the allocations per probed
    function and per cache as the kprobes saw them.  With ``by``: that one grouped table
    (the main table), over all allocation events of ``source`` unless ``events`` narrows
    it.  ``hist`` adds the size histogram in both cases.

    ``source``: ``tracepoint`` or ``kprobe`` (default: tracepoints if the recording has
    any).  Kprobes and tracepoints see the same allocations, so no table adds the two
    sources up: each table is of one source (``--by function`` is always kprobes).
    ``progress`` is told each stage with the fraction of the report done.

    ``live``: what is still allocated at the end instead (live_allocations): by cache,
    call site and comm, and pages by order; with ``by``, by those keys.
    ``interval_ns``: the time series instead (interval_series), by ``by`` (default
    cache)."""
    by = check_by(by)
    check_sort(sort)
    if source is not None and source not in SOURCES:
        raise UsageError(f"unknown source {source!r}", f"use one of {', '.join(SOURCES)}")
    an = analysis_of(ds, Part(progress, 0.0, 0.6))
    progress.stage("grouping", 0.6)
    has_kprobes = bool(select(an, None, ("kprobe", "kprobe_page")))
    src = source or default_source(ds)
    if "function" in by:
        src = "kprobe"
    tables: list[Table] = []
    if interval_ns is not None:
        if live:
            raise UsageError("`interval_ns` and `live`: the series has the outstanding bytes "
                             "at the end of each interval already; give one of them",
                             params=("interval_ns", "live"))
        keys = by or ("cache",)
        layer = layers(src, "order" in keys)
        if "event" in keys or "function" in keys:
            layer = (layers(src, False), layers(src, True))
        tables.append(interval_series(ds, keys, interval_ns, top, events, _layer=layer))
        if keys == ("cache",) and src == "tracepoint":
            from ftslab.analysis.reconcile import add_kernel_series
            add_kernel_series(tables[0], ds, (time_span(ds) or (0, 0))[0], interval_ns)
        return _reconciled(ds, Report(summary(ds), tables, collect_warnings(ds, an), by=keys,
                                      sort="bytes", main=tables[0].name), False)
    if live:
        if src == "kprobe":
            raise UsageError("`live` pairs allocations with their frees by pointer, and "
                             "kprobe events carry no pointer",
                             hint="record the kmem tracepoints (ftslab record without "
                                  "--kprobes only)", params=("live",))
        if by:
            layer = "page" if "order" in by else "slab"
            if "event" in by:
                layer = ("slab", "page")
            tables.append(live_allocations(ds, by, top, events, _layer=layer))
        else:
            for key, title in (("cache", "Live (not freed) slab allocations by cache"),
                               ("callsite", "Live (not freed) slab allocations by call "
                                            "site"),
                               ("comm", "Live (not freed) slab allocations by command")):
                progress.stage(f"live by {key}", 0.6 + 0.1 * len(tables))
                tables.append(live_allocations(ds, (key,), top, events, _layer="slab",
                                               name=f"live_by_{key}", title=title))
            if select(an, None, "page"):
                tables.append(live_allocations(ds, ("order",), top, events, _layer="page",
                                               name="live_pages_by_order",
                                               title="Live (not freed) pages by order"))
        return _reconciled(ds, Report(summary(ds), tables, collect_warnings(ds, an), by=by,
                                      sort="live", main=tables[0].name), not by)
    if by:
        # Page allocations include the pages behind slabs: mixing the layers in one
        # table counts memory twice.  --by event keeps every event on rows of its own;
        # --by order is the page layer alone; every other key is the slab layer.
        # --by function is each probed function on rows of its own.
        if "event" in by or "function" in by:
            layer = (layers(src, False), layers(src, True))
        else:
            layer = layers(src, "order" in by)
        table = group_allocations(ds, by, sort, top, events, _layer=layer)
        if layer == layers(src, False) and select(an, events, layers(src, True)):
            table.note = "; ".join(x for x in (table.note, "page allocations are not in "
                                               "this table (see --by order)") if x)
        if has_kprobes and src == "tracepoint" and "event" not in by:
            table.note = "; ".join(x for x in (table.note, "tracepoint events only "
                                               "(kprobe view: --source kprobe)") if x)
        tables.append(table)
        main = tables[0].name
    else:
        slab, page = layers(src, False), layers(src, True)
        what = "Slab allocations" if src == "tracepoint" else "Slab allocations (kprobes)"
        for key, title in (("cache", f"{what} by cache"),
                           ("callsite", f"{what} by call site"),
                           ("comm", f"{what} by command")):
            progress.stage(f"grouping by {key}", 0.6 + 0.1 * len(tables))
            tables.append(group_allocations(ds, (key,), sort, top, events, _layer=slab,
                                            name=f"by_{key}", title=title))
        main = "by_cache"
        progress.stage("waste and pages", 0.9)
        if src == "tracepoint":
            tables.append(fragmentation(ds, "cache", top, events))
            tables.append(fragmentation(ds, "callsite", top, events))
        if select(an, None, page):
            tables.append(pages_by_order(ds, page))
        if has_kprobes:
            tables.insert(0, group_allocations(
                ds, ("function",), sort, top, events, _layer=("kprobe", "kprobe_page"),
                name="by_function", title="Kprobe events by probed function"))
            if src == "kprobe":
                main = "by_function"
            else:
                tables.append(group_allocations(
                    ds, ("cache",), sort, top, events, _layer="kprobe",
                    name="kprobe_by_cache",
                    title="Slab allocations by cache, as the kprobes saw them"))
        if ds.meta.slabinfo_start and ds.meta.slabinfo_end:
            tables.append(slabinfo_diff(ds))
    for t in tables:
        if t.name in ("by_function", "kprobe_by_cache", "kprobe_pages_by_order") or (
                src == "kprobe" and t.name != "slabinfo_diff"):
            without_pairing(t)
            t.note = "; ".join(x for x in (t.note, _KPROBE_NOTE) if x)
    if hist:
        tables.append(size_histogram(ds, events, layers(src, False)))
    return _reconciled(ds, Report(summary(ds), tables, collect_warnings(ds, an), by=by, sort=sort,
                                  main=main), not by and src == "tracepoint")


def _reconciled(ds: Dataset, rep: Report, table: bool) -> Report:
    """``rep`` with the check of LIVE against /proc/slabinfo (reconcile.py): its warning
    line when the kernel's counters contradict a cache's LIVE, and with ``table`` its
    table (after the slabinfo diff, or last)."""
    if not (ds.meta.slabinfo_start and ds.meta.slabinfo_end) or not any(
            s == "kmem" and n in ("kmalloc", "kmem_cache_alloc") and len(c)
            for (s, n), c in ds.columns.items()):
        return rep
    from ftslab.analysis.reconcile import allocinfo_diff, check_caches, reconcile_table, reconcile_warning
    checks, facts = check_caches(ds)
    line = reconcile_warning(checks)
    if line:
        rep.warnings.append(line)
    if table and checks:
        at = [i + 1 for i, t in enumerate(rep.tables) if t.name == "slabinfo_diff"]
        t = reconcile_table(ds, checks, facts)
        span = time_span(ds)
        if ds.meta.lost and span is not None:
            # its LIVE column is LIVE too: where the events were lost, and what that means
            t = _replace(t, note="; ".join(x for x in (t.note,
                                                                 loss_note(ds, span[0])) if x))
        rep.tables.insert(at[0] if at else len(rep.tables), t)
    alloc = allocinfo_diff(ds) if table else None
    if alloc is not None:
        rep.tables.insert(rep.tables.index(rep.table("reconcile")) + 1
                          if rep.table("reconcile") else len(rep.tables), alloc)
    return rep


_KPROBE_NOTE = ("kprobes: ALLOCS counts calls (kmalloc(0) included, failures unseen); "
                "REQUESTED is the size argument (the object size for kmem_cache_alloc*); "
                "ALLOCATED is the cache's object size, or the kmalloc size class of the "
                "request; frees are not probed (FREES/LIVE: n/a)")
