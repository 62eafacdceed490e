"""Aggregations over a decoded recording: who allocates, how much, and what is wasted.

Role: turn a ``records.Dataset`` into ``Table`` objects (plain rows of dicts) that
``render.py`` prints as text, JSON or CSV.  This module is pure: it opens no file, touches
no kernel interface and prints nothing.  It never invents a value: a field an event does
not carry is reported as unknown (``"?"``) or not applicable (``None``), never guessed.

Speed: every per-event step is a numpy operation.  Python loops run only over *distinct*
values (call sites, pids, caches, gfp words, groups), so a 10 M event recording reports
in a few seconds.

What the numbers mean
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
``ALLOC_SOURCES`` / ``FREE_SOURCES`` saying which field holds what; nothing else changes.
"""
from __future__ import annotations

import functools
import math
import re
import weakref
from dataclasses import dataclass, replace as _replace
from fnmatch import fnmatchcase
from typing import Callable, Sequence

import numpy as np

from .errors import FtslabError, ParseError, UsageError
from .kprobes import FAMILY, function_of_event, is_probe_event
from .merged import merged_name, note_merged, slab_aliases
from .progress import NO_PROGRESS, Part, Progress
from .records import Dataset, EventColumns

__all__ = [
    "GROUP_KEYS", "SORT_KEYS", "AllocSource", "FreeSource", "ALLOC_SOURCES", "FREE_SOURCES",
    "pair_frees", "fields_read", "live_allocations", "loss_horizon", "folded_stacks", "NO_STACK",
    "interval_series", "parse_interval", "warnings_of",
    "alloc_source", "free_source", "event_label", "Column", "Table", "Report", "SlabInfo",
    "group_allocations", "size_histogram", "fragmentation", "pages_by_order",
    "SlabinfoSnapshot", "parse_slabinfo", "slabinfo_diff", "summary", "build_report", "loss_warning",
    "default_source", "SOURCES",
    "kmalloc_size_class", "normalize_call_site",
]

GROUP_KEYS = ("comm", "pid", "cache", "callsite", "event", "order", "gfp", "function",
              "stack")
SOURCES = ("tracepoint", "kprobe")
#: layers of each source: allocations of one layer are counted once per source
_PAGE_LAYERS = ("page", "kprobe_page")
SORT_KEYS = ("bytes", "count", "waste")

UNKNOWN_COMM = "<...>"
UNKNOWN_CACHE = "?"
LARGE_KMALLOC = "(large kmalloc)"
ZERO_SIZE = "(kmalloc(0): ZERO_SIZE_PTR)"


# ----------------------------------------------------------------------------------------
# Event sources: the one place that says how to read each event type
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AllocSource:
    """How to read one allocation event type.  Field names are the kernel's; every one is
    optional and is read only if the event's columns actually have it."""

    system: str
    """Event system, an fnmatch pattern (``"kmem"``, ``"ftslab_*"`` for kprobe groups)."""
    name: str
    """Event name, an fnmatch pattern."""
    layer: str
    """``"slab"`` or ``"page"``: allocations are matched with frees of the same layer."""
    bytes_req: str | None = None
    """Field with the requested size in bytes."""
    bytes_alloc: str | None = None
    """Field with the size actually handed out, bytes (absent: taken as ``bytes_req``
    and the table says waste is not measured for this event)."""
    cache: str | None = None
    """Field with the cache name (a string)."""
    size_class: bool = False
    """The cache key is the kmalloc size class of ``bytes_alloc``."""
    call_site: str | None = None
    """Field with the caller address (int) or ``sym+0xoff/0xsize`` text."""
    ptr: str | None = None
    """Field matched against a ``FreeSource.ptr`` of the same layer (address or pfn)."""
    order: str | None = None
    """Page order field: bytes = page_size << order (pages layer)."""
    gfp: str | None = None
    """Field with the gfp_t flag word (int) or its rendered text."""
    seed_tag: str = ""
    """Tag of the line in the seed-module format (``kmalloc`` -> ``[kmalloc]: ...``);
    empty: the event name."""


@dataclass(frozen=True)
class FreeSource:
    """How to read one free event type."""

    system: str
    name: str
    layer: str
    ptr: str
    """Field naming what is freed (address or pfn)."""
    count: str | None = None
    """A bulk free (one event, many objects): the field with how many objects it frees;
    they are named by the fields ``p0``, ``p1``, ... that the event has (bulkfree.py)."""
    cache: str | None = None
    """Field with the cache name (read by reconcile.py: frees of older objects)."""


#: First match wins.  Kprobe sources go here too, e.g.
#: ``AllocSource("ftslab_*", "kmalloc*", "slab", bytes_req="size", call_site="caller")``.
ALLOC_SOURCES: tuple[AllocSource, ...] = (
    # ftslab's kprobe events (kprobes.py): group ftslab_<pid>, event kp_<symbol>.  They
    # see the same allocations as the tracepoints: reports keep them in layers of their
    # own ("kprobe", "kprobe_page") and never add the two sources up.
    AllocSource("ftslab_*", "kp_*alloc_pages*", "kprobe_page", order="order",
                call_site="caller", gfp="gfp"),
    AllocSource("ftslab_*", "kp_*", "kprobe", bytes_req="size", bytes_alloc="objsize",
                cache="name", call_site="caller", gfp="gfp", size_class=True),
    AllocSource("kmem", "kmalloc", "slab", bytes_req="bytes_req", bytes_alloc="bytes_alloc",
                size_class=True, call_site="call_site", ptr="ptr", gfp="gfp_flags"),
    AllocSource("kmem", "kmem_cache_alloc", "slab", bytes_req="bytes_req",
                bytes_alloc="bytes_alloc", cache="name", call_site="call_site", ptr="ptr",
                gfp="gfp_flags"),
    AllocSource("kmem", "mm_page_alloc", "page", order="order", ptr="pfn", gfp="gfp_flags"),
)

FREE_SOURCES: tuple[FreeSource, ...] = (
    FreeSource("kmem", "kfree", "slab", "ptr"),
    # Since 6.x kmem_cache_free() and kfree() accept each other's objects, so both free
    # kinds match both allocation kinds: they share the "slab" layer.
    FreeSource("kmem", "kmem_cache_free", "slab", "ptr", cache="name"),
    FreeSource("kmem", "mm_page_free", "page", "pfn"),
    # Folio batches are freed without mm_page_free; the batched event carries the pfn.
    FreeSource("kmem", "mm_page_free_batched", "page", "pfn"),
    # kprobes on kmem_cache_free_bulk (kprobes.py, BULK_FREE_PREFIX): frees that no kmem
    # event reports (the maple tree, kfree_rcu()'s batches)
    FreeSource("ftslab_*", "kpf_*", "slab", "p0", count="cnt"),
)


def _spec_for(specs, system: str, name: str):
    for src in specs:
        # A text trace without format files does not show the system ("" here): the
        # name alone decides, which is why kprobes get names that cannot collide.
        if (not system or fnmatchcase(system, src.system)) and fnmatchcase(name, src.name):
            return src
    return None


def alloc_source(system: str, name: str) -> AllocSource | None:
    """The spec for an allocation event, or None if it is not an allocation."""
    return _spec_for(ALLOC_SOURCES, system, name)


def free_source(system: str, name: str) -> FreeSource | None:
    """The spec for a free event, or None."""
    return _spec_for(FREE_SOURCES, system, name)


def fields_read(system: str, name: str, gfp: bool = True) -> tuple[str, ...]:
    """The fields of an event type that reports read (for load(fields=...)): those its
    AllocSource or FreeSource names, nothing for other types.  ``gfp``: the gfp flags
    too; only a report grouped by them reads them (on 10 M events: 45 MB and two
    gathers a block less without)."""
    src = alloc_source(system, name)
    if src is not None:
        names = (src.bytes_req, src.bytes_alloc, src.cache, src.call_site, src.ptr,
                 src.order, src.gfp if gfp else None)
    else:
        fsrc = free_source(system, name)
        names = (fsrc.ptr, fsrc.cache) if fsrc is not None else ()
        if fsrc is not None and fsrc.count is not None:
            from .bulkfree import slot_fields
            names = (fsrc.count,) + slot_fields()
    return tuple(n for n in names if n)


def event_label(system: str, name: str) -> str:
    """``kmem:kmalloc``; just ``kmalloc`` when the system is unknown (text input)."""
    return f"{system}:{name}" if system else name


# ----------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    """Key of the value in each row dict (also the CSV header and JSON key)."""
    title: str
    """Header in the text table."""
    unit: str = ""
    """``"bytes"``, ``"count"``, ``"ns"``, ``"%"`` or ``""`` (a label)."""
    quiet_if_zero: bool = False
    """The text table leaves the column out when every row is 0 (CSV/JSON never do:
    their columns are the same for every input)."""


@dataclass
class Table:
    name: str
    """Stable machine name (``"by_cache"``, ``"histogram"``, ...): JSON key."""
    title: str
    columns: list[Column]
    rows: list[dict]
    """One dict per row, keyed by ``Column.name``; ints are exact, ``None`` = n/a."""
    note: str = ""
    bar: str | None = None
    """Name of a count column the text renderer draws as an ASCII bar (histograms)."""


@dataclass
class Report:
    summary: dict
    tables: list[Table]
    warnings: list[str]
    """Loss warning first (if any), then truncation, then the rest."""
    by: tuple[str, ...] = ()
    sort: str = "bytes"
    main: str = ""
    """Name of the main table (its rows are JSON ``rows`` and the CSV output)."""

    def __post_init__(self):
        for t in self.tables:  # wherever a merged cache is named, say what A|B means
            note_merged(t)

    def table(self, name: str) -> Table | None:
        for t in self.tables:
            if t.name == name:
                return t
        return None


_KEY_COLUMNS = {
    "comm": Column("comm", "COMM"),
    "pid": Column("pid", "PID"),
    "cache": Column("cache", "CACHE"),
    "callsite": Column("callsite", "CALL SITE"),
    "event": Column("event", "EVENT"),
    "order": Column("order", "ORDER"),
    "gfp": Column("gfp", "GFP FLAGS"),
    "function": Column("function", "FUNCTION"),
    "stack": Column("stack", "KERNEL STACK (innermost first)"),
}

_METRIC_COLUMNS = [
    Column("count", "ALLOCS", "count"),
    Column("bytes_req", "REQUESTED", "bytes"),
    Column("bytes_alloc", "ALLOCATED", "bytes"),
    Column("waste", "WASTE", "bytes"),
    Column("frees", "FREES", "count"),
    Column("live", "LIVE", "count"),
]
_FAILED_COLUMN = Column("failed", "FAILED", "count", quiet_if_zero=True)


# ----------------------------------------------------------------------------------------
# Small vectorised helpers
# ----------------------------------------------------------------------------------------

def _factorize(arr: np.ndarray) -> tuple[np.ndarray, list]:
    """(codes, uniques): ``uniques[codes] == arr``.  Cheap for few distinct values."""
    n = arr.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), []
    if getattr(arr, "codes", None) is not None:  # a StrColumn: the decoder grouped it
        return arr.codes.astype(np.int64), list(arr.labels)
    if arr.dtype == object:
        # dict.fromkeys/map run in C: no Python bytecode per event, ~0.6 s per 10 M.
        uniq = list(dict.fromkeys(arr.tolist()))
        lut = {v: i for i, v in enumerate(uniq)}
        codes = np.fromiter(map(lut.__getitem__, arr.tolist()), dtype=np.int64, count=n)
        return codes, uniq
    if arr.dtype.kind in "iub" and n > 100_000:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi < 1 << 22:  # pids, orders, sizes: a lookup table beats sorting
            present = np.bincount(arr, minlength=hi + 1) > 0
            uniq = np.flatnonzero(present)
            lut = np.zeros(hi + 1, np.int64)
            lut[uniq] = np.arange(uniq.shape[0])
            return lut[arr], uniq.tolist()
        # Addresses: few distinct values in a huge range.  Learn them from a sample and
        # add the ones the sample missed; searchsorted is far cheaper than np.unique.
        uniq = np.unique(arr[:65536])
        for _ in range(2):
            idx = np.searchsorted(uniq, arr)
            np.minimum(idx, uniq.shape[0] - 1, out=idx)
            missing = uniq[idx] != arr
            if not missing.any():
                return idx.astype(np.int64, copy=False), uniq.tolist()
            extra = arr[missing]
            if extra.shape[0] > n // 8:
                break
            uniq = np.union1d(uniq, np.unique(extra))
    uniq, codes = np.unique(arr, return_inverse=True)
    return codes.reshape(-1).astype(np.int64, copy=False), uniq.tolist()


def _merge_labels(codes: np.ndarray, labels: list) -> tuple[np.ndarray, list]:
    """Merge codes whose labels are equal (two pids with one comm, ...)."""
    uniq = list(dict.fromkeys(labels))
    if len(uniq) == len(labels):
        return codes, labels
    pos = {v: i for i, v in enumerate(uniq)}
    lut = np.array([pos[v] for v in labels], dtype=np.int64)
    return lut[codes], uniq


def _as_u64(col: np.ndarray) -> np.ndarray:
    if col.dtype == np.uint64:
        return col
    if col.dtype == np.int64:
        return col.view(np.uint64)  # -1 (failed pfn) becomes 0xffffffffffffffff
    return _as_i64(col).view(np.uint64)


def _as_i64(col: np.ndarray) -> np.ndarray:
    if col.dtype == np.int64:
        return col
    if col.dtype == np.uint64:
        return col.view(np.int64)  # the same as astype (wraps), without a copy
    if col.dtype != object:
        return col.astype(np.int64)
    # a text trace read without formats: numbers as the lines printed them, or not
    out = np.empty(len(col), dtype=np.int64)
    for i, v in enumerate(col):
        if type(v) is int and -(1 << 63) <= v < (1 << 64):
            out[i] = v if v < (1 << 63) else v - (1 << 64)
            continue
        try:
            out[i] = int(str(v), 0)
        except (ValueError, OverflowError):
            bad = sum(1 for x in col if type(x) is not int)
            raise ParseError(f"{bad} event(s) carry {v!r} where a number belongs (e.g. a "
                             "size or page order): the input is damaged") from None
    return out


_NULL_TEXT = {"(null)", "null", "0", "00000000", "0000000000000000", "0x0"}


def _ptr_keys(col: np.ndarray) -> np.ndarray:
    """Pointer/pfn column as uint64 keys comparable across event types."""
    if col.dtype != object:
        return _as_u64(col)
    # Text traces: hashed %p values are hex text, consistent within one boot.
    codes, uniq = _factorize(col)
    vals = []
    for s in uniq:
        s = str(s).strip()
        try:
            v = 0 if s in _NULL_TEXT else int(s, 16)
        except ValueError:
            v = 0
        vals.append(v if 0 <= v < (1 << 64) else 0)  # unreadable: never matched, never live
    return np.array(vals, dtype=np.uint64)[codes]


_CALL_SITE_SIZE = re.compile(r"^(\S+?\+0x[0-9a-fA-F]+)/0x[0-9a-fA-F]+(.*)$")


def normalize_call_site(text: str) -> str:
    """``alloc_pipe_info+0x2a/0x1c0`` -> ``alloc_pipe_info+0x2a`` (module suffix kept)."""
    m = _CALL_SITE_SIZE.match(text.strip())
    return m.group(1) + m.group(2) if m else text.strip()


def kmalloc_size_class(bytes_alloc: int, page_size: int = 4096) -> str:
    """Cache name of a kmalloc size, spelled as the kernel does (mm/slab_common.c
    kmalloc_info[]: ``kmalloc-96``, ``kmalloc-1k``); beyond KMALLOC_MAX_CACHE_SIZE
    (2 pages with SLUB) kmalloc uses the page allocator."""
    if bytes_alloc > 2 * page_size:
        return LARGE_KMALLOC
    if bytes_alloc >= 1024 and bytes_alloc % 1024 == 0:
        return f"kmalloc-{bytes_alloc // 1024}k"
    return f"kmalloc-{bytes_alloc}"


#: kmalloc size classes (mm/slab_common.c kmalloc_info[], SLUB with 8-byte minimum)
_KMALLOC_CLASSES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)


def kmalloc_round_up(size: int, page_size: int = 4096) -> int:
    """The kmalloc class a request of ``size`` bytes is served from (a request above
    2 pages is a large kmalloc: returned unchanged)."""
    if size > 2 * page_size:
        return size
    for c in _KMALLOC_CLASSES:
        if size <= c:
            return c
    return size


def kmalloc_round_up_array(sizes: np.ndarray, page_size: int = 4096) -> np.ndarray:
    """kmalloc_round_up over an array; above 2 pages, whole pages of the power-of-two
    order the page allocator hands out (PAGE_SIZE << get_order(size))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    classes = np.array(_KMALLOC_CLASSES, dtype=np.int64)
    idx = np.searchsorted(classes, np.maximum(sizes, 1))
    small = classes[np.minimum(idx, len(classes) - 1)]
    pages = np.maximum((sizes + page_size - 1) // page_size, 1)
    order = np.ceil(np.log2(pages.astype(np.float64))).astype(np.int64)
    large = np.left_shift(np.int64(page_size), order)
    out = np.where(sizes > 2 * page_size, large, small)
    return np.where(sizes == 0, 0, out)


def _label_order(label) -> tuple:
    """Sort key for mixed labels: numbers numerically, then text, None last."""
    if label is None:
        return (2, 0, "")
    if isinstance(label, (int, float)):
        return (0, label, "")
    return (1, 0, str(label))


# ----------------------------------------------------------------------------------------
# Per-event-type frames and the once-per-dataset analysis
# ----------------------------------------------------------------------------------------

class _Frame:
    """One allocation event type, read through its AllocSource."""

    def __init__(self, src: AllocSource, cols: EventColumns, page_size: int):
        self.src = src
        self.cols = cols
        self.event = event_label(cols.system, cols.name)
        f = cols.fields
        self.n = n = len(cols)
        self.ts = _as_u64(cols.ts)
        self.notes: list[str] = []
        ok = np.ones(n, dtype=bool)
        if src.layer in _PAGE_LAYERS and src.order and src.order in f:
            order = _as_i64(f[src.order])
            breq = np.left_shift(np.int64(page_size), order)
            balloc = breq
        else:
            breq = _as_i64(f[src.bytes_req]) if src.bytes_req and src.bytes_req in f else None
            balloc = (_as_i64(f[src.bytes_alloc])
                      if src.bytes_alloc and src.bytes_alloc in f else None)
            if breq is None and balloc is None:
                breq = balloc = np.zeros(n, np.int64)
                self.notes.append(f"{self.event} carries no size field: bytes not counted")
            elif balloc is None and src.layer == "kprobe" and src.size_class:
                # __kmalloc*(size) kprobes: the kmalloc class the request is served from
                balloc = kmalloc_round_up_array(breq, page_size)
            elif balloc is None:
                balloc = breq
                self.notes.append(f"{self.event} has no allocated-size field: "
                                  "its waste is not measured")
            elif breq is None:
                breq = balloc
        self.ptr = None
        matchable = np.zeros(n, dtype=bool)
        if src.ptr and src.ptr in f:
            self.ptr = _ptr_keys(f[src.ptr])
            if src.layer == "page":
                # pfn -1 = failed.  The text print fmt shows -1 as pfn=0 (and pfn 0 is
                # never handed out: it is firmware-reserved on x86, not RAM elsewhere).
                ok &= (self.ptr != np.uint64(0xFFFFFFFFFFFFFFFF)) & (self.ptr != 0)
                matchable = ok.copy()
            else:
                ok &= self.ptr != 0  # kmalloc() returned NULL
                # ZERO_OR_NULL_PTR(): <= 16 is kmalloc(0)'s ZERO_SIZE_PTR, not memory.
                matchable = self.ptr > np.uint64(16)
        self.ok = ok
        self.matchable = matchable
        # every allocation succeeded (the common case): the sizes as they are
        every = bool(ok.all())
        self.bytes_req = breq if every else np.where(ok, breq, 0)
        self.bytes_alloc = balloc if every else np.where(ok, balloc, 0)
        self.freed = np.zeros(n, dtype=bool)
        self._free_ts: np.ndarray | None = None
        self._free_of: tuple | None = None  # what free_ts is computed from, until asked
        self.nested = np.zeros(n, dtype=bool)
        self._keys: dict[str, tuple[np.ndarray, list]] = {}

    def const(self, label) -> tuple[np.ndarray, list]:
        return np.zeros(self.n, np.int64), [label]

    @property
    def free_ts(self) -> np.ndarray | None:
        """uint64 timestamp of the free of each freed allocation (0 where not freed);
        None when the event type is never matched.  Computed when first asked (only
        --live and --interval read it): on 10 M events, 130 MB the other reports
        never touch."""
        if self._free_of is not None:
            ridx, times = self._free_of
            self._free_of = None
            self._free_ts = np.zeros(self.n, np.uint64)
            if times is not None:
                at = np.zeros(ridx.shape[0], np.uint64)
                hit = ridx >= 0
                at[hit] = times.all[ridx[hit]]
                self._free_ts[self.matchable] = at
        return self._free_ts

    def drop_nested(self, mask: np.ndarray) -> None:
        """Events that are the inner half of one allocation (see _Analysis): neither
        an allocation nor a failure of their own."""
        self.nested = mask
        self.ok = self.ok & ~mask
        self.matchable = self.matchable & ~mask
        self.bytes_req = np.where(self.ok, self.bytes_req, 0)
        self.bytes_alloc = np.where(self.ok, self.bytes_alloc, 0)


class _FreeTimes:
    """The times of the frees that free matching used (pointers > 16), in the order
    _match_frees gave them: joined only when a free_ts is asked for."""

    def __init__(self, frees: list[tuple], real: list[np.ndarray]):
        self._parts = [(t, r) for (t, _k, _s), r in zip(frees, real)]

    @functools.cached_property
    def all(self) -> np.ndarray:
        return np.concatenate([t[r] for t, r in self._parts])


def pair_frees(ak: np.ndarray, at: np.ndarray, fk: np.ndarray, ft: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pair allocations (pointer ``ak``, time ``at``) with frees (``fk``, ``ft``): an
    allocation is freed when the next event on its pointer is a free.  Returns (freed,
    one bool per allocation; the index of that free in ``fk``, -1 where not freed).
    An allocation sorts before a free with the same timestamp: an object allocated and
    freed within one clock tick (text traces: 1 us) is then seen as freed.  A free of a
    pointer <= 16 (kfree(NULL), ZERO_SIZE_PTR: traced too) frees nothing."""
    na = ak.shape[0]
    real = np.flatnonzero(fk > np.uint64(16))
    owned = [np.concatenate([ak, fk[real]]), np.concatenate([at, ft[real]])]
    freed, ridx = _pair_owned(owned, na)
    fidx = np.full(na, -1, np.int64)
    fidx[freed] = real[ridx[freed]]
    return freed, fidx


def _pair_owned(owned: list, na: int) -> tuple[np.ndarray, np.ndarray]:
    """pair_frees of ``owned`` = [pointers, times] of the allocations (the first
    ``na``) then of the frees (pointers > 16 only), arrays this function owns: the
    list is emptied, so that each array is dropped as soon as it has been used (on
    10 M events they are 170 MB).  Returns (freed, the index among the frees of each
    one's free, -1 where not freed)."""
    keys, ts = owned
    owned.clear()
    n = keys.shape[0]
    freed = np.zeros(na, dtype=bool)
    ridx = np.full(na, -1, np.int64)
    if na == 0 or n == na:
        return freed, ridx
    order, rank_bits = _time_ranks(keys, ts)
    if order is None:
        _pair_lexsorted(keys, ts, na, freed, ridx)
        return freed, ridx
    del ts
    packed = keys
    del keys
    _sort_in_two_threads(packed)
    # events in (pointer, time) order: an allocation is freed when the next event is a
    # free of the same pointer (the pointer bits of two neighbours are equal); a slice
    # at a time, so that no temporary is as long as the events
    rank_mask = np.uint64((1 << rank_bits) - 1)
    idx = np.empty(n, order.dtype)
    same = np.empty(n - 1, dtype=bool)

    def neighbours(lo: int, hi: int) -> None:
        for at in range(lo, hi, _RANK_STEP):
            end = min(at + _RANK_STEP, hi)
            if at < n - 1:
                stop = min(end, n - 1)
                x = packed[at:stop] ^ packed[at + 1:stop + 1]
                np.less(x, np.uint64(1 << rank_bits), out=same[at:stop])
                del x
            idx[at:end] = order[packed[at:end] & rank_mask]
    _in_two_halves(neighbours, n)
    del order, packed
    is_alloc = idx < na
    hit = is_alloc[:-1] & ~is_alloc[1:] & same
    fpos = np.flatnonzero(hit)
    freed[idx[fpos]] = True
    ridx[idx[fpos]] = idx[fpos + 1] - na
    return freed, ridx


_RANK_STEP = 1 << 20


def _compress_into(mask: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out[:] = a[mask], without a temporary when the types agree (line numbers of
    text input are int64: converted)."""
    if a.dtype == out.dtype:
        np.compress(mask, a, out=out)
    else:
        out[:] = a[mask]


def _time_ranks(keys: np.ndarray, ts: np.ndarray):
    """Pack each event's (pointer, rank in time) into ``keys`` (overwritten: it is
    _pair_owned's own), so that one plain sort orders the events by pointer, then
    time: returns (the events in time order, the rank bits), or (None, 0) with
    ``keys`` as it was when the pointers span too many bits (then a lexsort does it).
    Events come in a few runs sorted by time (per CPU, per type): their time order is
    a cheap merge.  Equal times keep allocations first (they come first in ``ts``)."""
    n = keys.shape[0]
    lo = keys.min()
    keys -= lo
    align = int(np.bitwise_or.reduce(keys))
    shift = (align & -align).bit_length() - 1 if align else 0
    rank_bits = max(n - 1, 1).bit_length()
    if (int(keys.max()) >> shift).bit_length() + rank_bits > 64:
        keys += lo
        return None, 0
    order = np.argsort(ts, kind="stable")
    if n < 1 << 31:
        order = order.astype(np.int32)
    keys >>= np.uint64(shift)
    keys <<= np.uint64(rank_bits)

    def ranks(lo: int, hi: int) -> None:  # each event's rank in time, a slice at a time
        for at in range(lo, hi, _RANK_STEP):
            end = min(at + _RANK_STEP, hi)
            keys[order[at:end]] |= np.arange(at, end, dtype=np.uint64)
    _in_two_halves(ranks, n)
    return order, rank_bits


def _in_two_halves(step: Callable[[int, int], None], n: int) -> None:
    """step(0, h) and step(h, n) at once in two threads (their writes are disjoint):
    numpy's gathers and scatters let the GIL go, and the analysis otherwise runs on
    one CPU.  Random scatters over 11 M events: 0.52 s -> 0.25 s."""
    if n < 2 * _RANK_STEP:
        step(0, n)
        return
    h = (n // 2 + _RANK_STEP - 1) // _RANK_STEP * _RANK_STEP
    _run_parallel([lambda: step(0, h), lambda: step(h, n)])


def _sort_in_two_threads(a: np.ndarray) -> None:
    """Sort ``a`` in place: its halves at once in two threads (numpy sorts without the
    GIL), then a merge of the two sorted runs."""
    if a.shape[0] < 1 << 20:
        a.sort()
        return
    half = a.shape[0] // 2
    _run_parallel([a[:half].sort, a[half:].sort])
    a.sort(kind="stable")  # timsort: two runs, one merge


def _pair_lexsorted(keys, ts, na, freed, ridx) -> None:
    """_pair_owned for pointers that do not pack into one word with their time rank."""
    kind = np.ones(keys.shape[0], np.uint8)
    kind[:na] = 0
    if int(ts.max()) < 1 << 62:
        order = np.lexsort((ts * np.uint64(2) + kind, keys))
    else:
        order = np.lexsort((kind, ts, keys))
    sk = keys[order]
    skind = kind[order]
    hit = np.zeros(order.shape[0], dtype=bool)
    hit[:-1] = (skind[:-1] == 0) & (skind[1:] == 1) & (sk[1:] == sk[:-1])
    fpos = np.flatnonzero(hit)
    freed[order[fpos]] = True
    ridx[order[fpos]] = order[fpos + 1] - na


def _run_parallel(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` at once in threads (numpy releases the GIL in its loops)."""
    if len(jobs) == 1:
        jobs[0]()
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(jobs)) as ex:
        for f in [ex.submit(j) for j in jobs]:
            f.result()


class _Analysis:
    """Everything derived once per Dataset: frames, free matching, key codes.
    Holds no reference to the Dataset itself (it is cached beside it)."""

    def __init__(self, ds: Dataset, progress: Progress = NO_PROGRESS, pair: bool = True):
        self.page_size = int(ds.meta.extra.get("page_size", 4096) or 4096)
        self.cmdlines = dict(ds.meta.cmdlines)
        self.formats = ds.formats
        self.symbolize = ds.symbolize
        self.stacks = ds.stacks
        self.aliases = slab_aliases(ds.meta.extra)
        """Merged caches (merged.slab_aliases): name -> all the cache's names."""
        self._frame_names: dict[int, str] = {}
        self._stack_frames: dict[int, tuple[str, ...]] = {}
        self.frames: list[_Frame] = []
        frees: dict[str, list[tuple]] = {}
        self.frees = frees
        """layer -> [(ts, pointer keys, seq)] of each free event type."""
        self.bulk_unnamed = 0
        """Objects freed by bulk free events past the pointers they recorded: freed,
        but not seen which (never paired)."""
        self._probed = {function_of_event(n) for (s, n), c in ds.columns.items()
                        if is_probe_event(s, n) and len(c)}
        todo = sorted(ds.columns.items())
        for i, ((system, name), cols) in enumerate(todo):
            progress.stage(f"decoding {system}:{name} ({len(cols):,} events)",
                           0.5 * i / max(len(todo), 1))
            src = alloc_source(system, name)
            if src is not None:
                fr = _Frame(src, cols, self.page_size)
                self.frames.append(fr)
                self._nested_calls(fr)
                continue
            fsrc = free_source(system, name)
            if fsrc is not None and fsrc.count is not None:
                if fsrc.count in cols.fields and len(cols):
                    from .bulkfree import expand_bulk_frees
                    got = expand_bulk_frees(cols.fields, _as_u64(cols.ts), cols.seq,
                                            fsrc.count)
                    self.bulk_unnamed += got.unnamed
                    frees.setdefault(fsrc.layer, []).append(
                        (got.ts, _ptr_keys(got.ptrs), got.seq))
                continue
            if fsrc is not None and fsrc.ptr in cols.fields and len(cols):
                keys = _ptr_keys(cols.fields[fsrc.ptr])
                frees.setdefault(fsrc.layer, []).append(
                    (_as_u64(cols.ts), keys, cols.seq))
        progress.stage("pairing allocations with frees", 0.5)
        for layer in ({f.src.layer for f in self.frames} if pair else ()):
            self._match_frees([f for f in self.frames if f.src.layer == layer],
                              frees.get(layer, []))
        self._global: dict[str, dict] = {}
        self._rows: dict[tuple, "_Rows"] = {}
        self._groups: dict[tuple, tuple] = {}

    def _nested_calls(self, fr: _Frame) -> None:
        """One allocation, two events: on 6.10+ kernels __do_kmalloc_node() calls the
        exported __kmalloc_large_node_noprof() for a large request, and both trace it
        (kmem:kmalloc twice, same ptr; and a kprobe on each function fires; the kernel
        commit that made it so was not identified).  An event
        whose call site is inside a kmalloc-family entry point is that inner half:
        the outer function's event counts the allocation, the inner one is dropped."""
        if not (fr.src.call_site and fr.src.call_site in fr.cols.fields) or not fr.n:
            return
        if fr.src.layer == "kprobe":
            # only when the outer function was probed too: its event counts this one
            family = self._probed
        else:  # both halves are kmem:kmalloc events
            family = {c for m in FAMILY if m.layer == "slab" for c in m.candidates}
        if not family:
            return
        codes, labels = self.local_key(fr, "callsite")
        inner = np.array([isinstance(lab, str) and lab.split("+")[0] in family
                          for lab in labels], dtype=bool)
        if inner.any():
            fr.drop_nested(inner[codes])

    @staticmethod
    def _match_frees(frames: list[_Frame], frees: list[tuple]):
        """Mark each allocation whose next event on the same pointer is a free."""
        frames = [f for f in frames if f.ptr is not None]
        for f in frames:
            f._free_of = (None, None)  # matched: free_ts all 0 unless paired below
        if not frames or not frees:
            return
        # text input orders events by line (finer than its microsecond timestamps):
        # a pointer freed and allocated again within one microsecond is common
        # (getname/putname), and only the line order says which came first
        by_seq = all(f.cols.seq is not None for f in frames) and \
            all(seq is not None for _, _, seq in frees)
        # pair_frees' arrays, built in place: allocations, then frees of pointers > 16
        # (the others free nothing)
        real = [k > np.uint64(16) for _, k, _ in frees]
        na = sum(int(f.matchable.sum()) for f in frames)
        n = na + sum(int(r.sum()) for r in real)
        keys = np.empty(n, np.uint64)
        ts = np.empty(n, np.uint64)
        at = 0
        for f in frames:
            m = int(f.matchable.sum())
            np.compress(f.matchable, f.ptr, out=keys[at:at + m])
            _compress_into(f.matchable, f.cols.seq if by_seq else f.ts, ts[at:at + m])
            at += m
        for (t, k, seq), r in zip(frees, real):
            m = int(r.sum())
            np.compress(r, k, out=keys[at:at + m])
            _compress_into(r, seq if by_seq else t, ts[at:at + m])
            at += m
        owned = [keys, ts]
        del keys, ts
        freed, ridx = _pair_owned(owned, na)
        times = _FreeTimes(frees, real)
        start = 0
        for f in frames:
            m = int(f.matchable.sum())
            f.freed[f.matchable] = freed[start:start + m]
            f._free_of = (ridx[start:start + m], times)
            start += m

    # -- keys ---------------------------------------------------------------------------

    def local_key(self, frame: _Frame, key: str) -> tuple[np.ndarray, list]:
        """(codes, labels) of ``key`` for one frame; labels are distinct."""
        got = frame._keys.get(key)
        if got is None:
            got = self._compute_key(frame, key)
            if key == "cache" and self.aliases:  # a merged cache: by all its names
                got = _merge_labels(got[0], [merged_name(x, self.aliases) for x in got[1]])
            frame._keys[key] = got
        return got

    def _compute_key(self, fr: _Frame, key: str) -> tuple[np.ndarray, list]:
        src, f = fr.src, fr.cols.fields
        if key == "event":
            return fr.const(fr.event)
        if key in ("pid", "comm"):
            codes, pids = _factorize(_as_i64(fr.cols.pid))
            pids = [int(p) for p in pids]
            if key == "pid":
                return codes, pids
            return _merge_labels(codes, [self.cmdlines.get(p, UNKNOWN_COMM) for p in pids])
        if key == "cache":
            if src.cache and src.cache in f:
                codes, names = _factorize(f[src.cache])
                return _merge_labels(codes, [str(x) if str(x) else UNKNOWN_CACHE
                                             for x in names])
            if src.size_class and src.bytes_alloc and src.bytes_alloc in f:
                codes, sizes = _factorize(_as_i64(f[src.bytes_alloc]))
                return _merge_labels(codes, [kmalloc_size_class(int(s), self.page_size)
                                             for s in sizes])
            if src.size_class and src.layer == "kprobe" and src.bytes_req in f:
                # __kmalloc(size) kprobes: the class the request rounds up to
                codes, sizes = _factorize(_as_i64(f[src.bytes_req]))
                return _merge_labels(codes, [kmalloc_size_class(
                    kmalloc_round_up(int(s), self.page_size), self.page_size) if s else
                    ZERO_SIZE for s in sizes])
            return fr.const(None if src.layer in _PAGE_LAYERS else UNKNOWN_CACHE)
        if key == "callsite":
            if not (src.call_site and src.call_site in f):
                return fr.const(None)
            col = f[src.call_site]
            codes, sites = _factorize(col)
            if col.dtype == object:
                labels = [normalize_call_site(str(s)) for s in sites]
            else:
                labels = [self._symbol(int(a)) for a in sites]
            return _merge_labels(codes, labels)
        if key == "function":
            if is_probe_event(fr.cols.system, fr.cols.name):
                return fr.const(function_of_event(fr.cols.name))
            return fr.const(fr.event)
        if key == "order":
            if src.layer in _PAGE_LAYERS and src.order and src.order in f:
                codes, orders = _factorize(_as_i64(f[src.order]))
                return codes, [int(o) for o in orders]
            return fr.const(None)
        if key == "gfp":
            if not (src.gfp and src.gfp in f):
                return fr.const(None)
            col = f[src.gfp]
            codes, words = _factorize(col)
            if col.dtype == object:
                return _merge_labels(codes, [str(w) for w in words])
            fmt = self._gfp_formatter(fr.cols.system, fr.cols.name, src.gfp)
            return _merge_labels(codes, [fmt(int(w)) for w in words])
        if key == "stack":
            if fr.cols.stack is None:
                return fr.const(NO_STACK)
            codes, sids = _factorize(fr.cols.stack)
            return _merge_labels(codes, [_STACK_SEP.join(self.stack_frames(int(i)))
                                         if i >= 0 else NO_STACK for i in sids])
        raise UsageError(f"unknown group key {key!r}", f"use one of {', '.join(GROUP_KEYS)}")

    def stack_frames(self, sid: int) -> tuple[str, ...]:
        """Function names of stack ``sid``, innermost first, without the tracing
        machinery that recorded it (the tracepoint's or kprobe's own frames)."""
        got = self._stack_frames.get(sid)
        if got is None:
            names = [self._frame(a) for a in self.stacks[sid]]
            k = 0
            while k < len(names) - 1 and names[k].startswith(_TRACING_FRAMES):
                k += 1
            got = self._stack_frames[sid] = tuple(names[k:])
        return got

    def _frame(self, addr: int) -> str:
        name = self._frame_names.get(addr)
        if name is None:
            name = self._symbol(addr).split("+", 1)[0]  # flame graphs merge by function
            self._frame_names[addr] = name
        return name

    def _symbol(self, addr: int) -> str:
        addr &= 0xFFFFFFFFFFFFFFFF
        sym = self.symbolize(addr) if self.symbolize is not None else None
        return sym if sym else f"0x{addr:x}"

    def _gfp_formatter(self, system: str, name: str, fieldname: str) -> Callable[[int], str]:
        def hexfmt(v: int) -> str:
            return f"0x{v & 0xFFFFFFFFFFFFFFFF:x}"
        fmt = self.formats.get((system, name)) if self.formats else None
        if system.startswith("ftslab_") and self.formats:
            # a kprobe prints gfp as hex: name the bits with a kmem tracepoint's table
            for k in (("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc")):
                if k in self.formats:
                    fmt, fieldname = self.formats[k], "gfp_flags"
                    break
        if fmt is None:
            return hexfmt
        try:
            from . import gfp as _gfp  # written in parallel; absent -> hex
            table = _gfp.flag_table(fmt.print_fmt, field=fieldname)
        except (ImportError, AttributeError, NotImplementedError, FtslabError, ValueError):
            return hexfmt
        if not table:
            return hexfmt

        def flagfmt(v: int) -> str:
            try:
                return _gfp.format_flags(v, table)
            except (NotImplementedError, FtslabError, ValueError):
                return hexfmt(v)
        return flagfmt

    def global_key(self, frames: list[_Frame], key: str) -> tuple[list[np.ndarray], list]:
        """Per-frame codes in one label space shared by ``frames``."""
        space: dict = {}
        out = []
        for fr in frames:
            codes, labels = self.local_key(fr, key)
            lut = np.array([space.setdefault(lab, len(space)) for lab in labels],
                           dtype=np.int64)
            out.append(lut[codes] if labels else codes)
        return out, list(space)


_CACHE: dict[int, tuple[tuple, _Analysis]] = {}


def _fingerprint(ds: Dataset) -> tuple:
    return (tuple((k, id(c), len(c)) for k, c in sorted(ds.columns.items())),
            id(ds.symbolize), ds.meta.extra.get("page_size", 4096))


def _analysis(ds: Dataset, progress: Progress = NO_PROGRESS) -> _Analysis:
    """The analysis of ``ds``, computed once: build_report asks for many tables, and
    free matching (a sort of all allocations and frees) is the expensive part."""
    key = id(ds)
    fp = _fingerprint(ds)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1]
    an = _Analysis(ds, progress)
    if hit is None:
        weakref.finalize(ds, _CACHE.pop, key, None)  # drop it with the Dataset
    _CACHE[key] = (fp, an)
    return an


def _select(an: _Analysis, events: Sequence[str] | None,
            layer: str | tuple[str, ...] | None = None) -> list[_Frame]:
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

def _check_by(by: Sequence[str]) -> tuple[str, ...]:
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


def _check_sort(sort: str) -> None:
    if sort not in SORT_KEYS:
        raise UsageError(f"unknown sort key {sort!r}", f"use one of {', '.join(SORT_KEYS)}")


class _Rows:
    """The per-row inputs of every grouped table over one set of frames, built once:
    build_report groups the same frames by cache, call site and comm, twice over.
    Rebuilding them per table allocated ~100 bytes per event each time, and on a
    10 M-event recording fresh memory (the kernel zeroing it) cost more than the sums."""

    def __init__(self, frames: list[_Frame]):
        def cat(attr):
            arrs = [getattr(fr, attr) for fr in frames]
            return arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
        self.n = sum(fr.n for fr in frames)
        ok, freed = cat("ok"), cat("freed")
        # bincount weighs in float64: convert once (sizes are far below 2**53)
        self.bytes_req = cat("bytes_req").astype(np.float64)
        self.bytes_alloc = cat("bytes_alloc").astype(np.float64)
        # the boolean metrics as the (usually few) rows where they differ from the bulk
        self.not_ok = np.flatnonzero(~ok)
        self.failed = np.flatnonzero(~ok & ~cat("nested"))
        self.not_freed = np.flatnonzero(~freed)  # frees = all rows - these
        self.live = np.flatnonzero(ok & ~freed & cat("matchable"))
        self.codes: dict[str, tuple[np.ndarray, list]] = {}
        self._frames = frames
        self._cat = cat

    @functools.cached_property
    def ts(self) -> np.ndarray:
        """Allocation timestamps (--live, --interval need them; the counts do not)."""
        return self._cat("ts")

    @functools.cached_property
    def free_ts(self) -> np.ndarray:
        """The time of each row's free, 0 where not freed (or never matched)."""
        return np.concatenate([f.free_ts if f.free_ts is not None else
                               np.zeros(f.n, np.uint64) for f in self._frames])

    @functools.cached_property
    def ok_rows(self) -> np.ndarray:
        """Rows of successful allocations."""
        return np.flatnonzero(self._cat("ok"))

    @functools.cached_property
    def held(self) -> np.ndarray:
        """Rows of successful allocations that free matching can pair."""
        return np.flatnonzero(self._cat("ok") & self._cat("matchable"))


def _rows(an: _Analysis, frames: list[_Frame]) -> _Rows:
    key = tuple(id(fr) for fr in frames)
    got = an._rows.get(key)
    if got is None:
        got = an._rows[key] = _Rows(frames)
    return got


def _label_ranks(key_labels: list, group_codes: list, pick=slice(None)) -> list:
    """Per key, each picked group's rank in the key's label order (the sort's last
    tiebreak, so that equal rows come out in a stable, readable order)."""
    ranks = []
    for labels, codes in zip(key_labels, group_codes):
        order = sorted(range(len(labels)), key=lambda i: _label_order(labels[i]))
        rank = np.empty(max(len(labels), 1), np.int64)
        rank[order] = np.arange(len(order))
        ranks.append(rank[codes[pick]])
    return ranks


def _count(gid: np.ndarray, rows: np.ndarray, ngroups: int) -> np.ndarray:
    return np.bincount(gid[rows], minlength=ngroups).astype(np.int64)


def _group(an: _Analysis, frames: list[_Frame], by: tuple[str, ...]):
    """Group rows of ``frames`` by ``by``: (per-key label lists, per-key codes of each
    group, metric arrays per group, each row's group).  Computed once per analysis
    (the default report groups by cache and by call site twice: allocations, then
    waste); callers only read what it returns."""
    key = (tuple(id(fr) for fr in frames), tuple(by))
    got = an._groups.get(key)
    if got is None:
        got = an._groups[key] = _group_rows(an, frames, tuple(by))
    return got


def _group_rows(an: _Analysis, frames: list[_Frame], by: tuple[str, ...]):
    rows = _rows(an, frames)
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


def _span(ds: Dataset) -> tuple[int, int] | None:
    """(first, last) timestamp of all events, None without events."""
    lo = hi = None
    for c in ds.columns.values():
        if len(c):
            ts = _as_u64(c.ts)
            lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
            hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
    return None if lo is None else (lo, hi)


def loss_horizon(ds: Dataset) -> int | None:
    """The timestamp after which no event is known to be lost: None without loss; the
    recording's end when some loss has no known time (its live counts are all unsure)."""
    if not ds.meta.total_lost:
        return None
    span = _span(ds)
    end = span[1] if span else 0
    horizon = 0
    for loss in ds.meta.lost:
        if not loss.spans:
            return end
        horizon = max(horizon, max(b for _a, b in loss.spans))
    return horizon


def _loss_note(ds: Dataset, lo: int) -> str:
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
    by = _check_by(by)
    an = _analysis(ds)
    frames = [fr for fr in _select(an, events, _layer) if fr.free_ts is not None and fr.n]
    name = name or ("live_by_" + "_".join(by) if by else "live")
    title = title or ("Live (not freed) allocations by " + ", ".join(by) if by
                      else "Live (not freed) allocations")
    columns = [_KEY_COLUMNS[k] for k in by] + list(_LIVE_COLUMNS)
    span = _span(ds)
    if not frames or span is None:
        return Table(name, title, columns, [], note="no allocation events with a pointer "
                     "(kprobe events carry none: --live needs the tracepoints)")
    lo, hi = span
    key_labels, group_codes, m, gid = _group(an, frames, by)
    rows_in = _rows(an, frames)
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
    ranks = _label_ranks(key_labels, group_codes, pick)
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
        notes.append(_loss_note(ds, lo))
    layers = {fr.src.layer for fr in frames}
    if not any(len(c) for (sy, nm), c in ds.columns.items()
               if (fs := free_source(sy, nm)) is not None and fs.layer in layers):
        notes.insert(0, "the recording has no free events (recorded with -e and without "
                        "the frees?): nothing is seen freed, so every allocation is live")
    return Table(name, title, columns, out, note="; ".join(notes))


NO_STACK = "(no stack recorded)"
_STACK_SEP = " <- "  # between the frames of a --by stack label (no symbol holds it)
#: Leading (innermost) frames of a recorded stack that belong to the tracing machinery,
#: not to the allocation.  A tracepoint calls its probes through a static call while it
#: has one probe: the call goes straight to trace_event_raw_event_<event>.  With a second
#: probe on it (another instance or the top level with the same event enabled, e.g.
#: after `trace-cmd record -k`; perf; BPF) the static call targets the iterator
#: __traceiter_<event>, which loops over the probes, and that frame sits between the
#: allocator and trace_event_raw_event_<event> (seen on 6.18).  __SCT__tp_func_<event> is
#: the static call's trampoline, a frame only where the call is not patched inline.
_TRACING_FRAMES = ("trace_event_raw_event_", "perf_trace_", "trace_event_buffer",
                   "__traceiter_", "__SCT__",
                   "event_triggers", "event_trigger", "stacktrace_trigger", "__trace_stack",
                   "__ftrace_trace_stack", "ftrace_", "__ftrace", "arch_ftrace", "kprobe",
                   "__kprobe", "aggr_pre_handler", "opt_pre_handler", "optimized_callback",
                   "kprobe_dispatcher", "kprobe_perf_func", "kprobe_trace_func",
                   "__kprobe_trace_func", "trace_")


def folded_stacks(ds: Dataset, weight: str = "bytes", events: Sequence[str] | None = None,
                  layer: str | tuple[str, ...] = "slab",
                  live: bool = False) -> list[tuple[str, int]]:
    """Brendan Gregg's folded stacks of the allocations: ``(comm;outermost;...;innermost,
    weight)`` per distinct (comm, stack), heaviest first; ``weight`` is ``bytes``
    (bytes_alloc) or ``count``.  Allocations without a stack are folded as
    ``comm;(no stack recorded)`` so that the total is the report's.  ``live``: only
    the allocations still live at the end (see live_allocations)."""
    if weight not in ("bytes", "count"):
        raise UsageError(f"unknown weight {weight!r}", "use bytes or count")
    if not ds.stacks:
        raise UsageError("this recording holds no kernel stacks",
                         hint="record them with: ftslab record --stacks")
    an = _analysis(ds)
    frames = _select(an, events, layer)
    if not frames or sum(fr.n for fr in frames) == 0:
        return []
    labels, codes, m, gid = _group(an, frames, ("comm", "stack"))
    w = m["bytes_alloc"] if weight == "bytes" else m["count"]
    if live:
        rows = _rows(an, frames)
        w = (np.rint(np.bincount(gid[rows.live], rows.bytes_alloc[rows.live], w.shape[0]))
             .astype(np.int64) if weight == "bytes" else m["live"])
    out = []
    for g in np.flatnonzero(w > 0).tolist():
        comm = str(labels[0][int(codes[0][g])]).replace(";", ":").replace(" ", "_")
        label = labels[1][int(codes[1][g])]
        # the stack key's label is the frames, innermost first: fold them root first
        chain = [NO_STACK] if label == NO_STACK else label.split(_STACK_SEP)[::-1]
        out.append((";".join([comm] + [f.replace(";", ":") for f in chain]), int(w[g])))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out


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
    by = _check_by(by)
    an = _analysis(ds)
    frames = [fr for fr in _select(an, events, _layer) if fr.n]
    name = "interval_by_" + "_".join(by)
    title = f"Allocations per {interval_ns / 1e9:g} s by " + ", ".join(by)
    columns = [_T_COLUMN] + [_KEY_COLUMNS[k] for k in by] + _SERIES_COLUMNS
    span = _span(ds)
    if not frames or span is None:
        return Table(name, title, columns, [], note="no allocation events")
    lo, hi = span
    key_labels, group_codes, m, gid = _group(an, frames, by)
    rows_in = _rows(an, frames)
    ts, fts = rows_in.ts, rows_in.free_ts
    nb = int((hi - lo) // interval_ns) + 1
    ng = m["count"].shape[0]
    ranks = _label_ranks(key_labels, group_codes)
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


def _without_pairing(t: Table) -> Table:
    """Kprobe events carry no pointer: frees/live cannot be known, so not shown."""
    for r in t.rows:
        for k in ("frees", "live"):
            if k in r:
                r[k] = None
    return t


def _layer_note(frames: list[_Frame]) -> str:
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
    by = _check_by(by)
    _check_sort(sort)
    if top is not None and top < 0:
        raise UsageError(f"`top` must be >= 0, not {top}", params=("top",))
    an = _analysis(ds)
    frames = _select(an, events, _layer)
    name = name or ("by_" + "_".join(by) if by else "total")
    title = title or ("Allocations by " + ", ".join(by) if by else "Allocations")
    columns = [_KEY_COLUMNS[k] for k in by] + list(_METRIC_COLUMNS)
    if not frames or sum(fr.n for fr in frames) == 0:
        return Table(name, title, columns, [], note="no allocation events")
    key_labels, group_codes, m, _gid = _group(an, frames, by)
    primary = {"bytes": "bytes_alloc", "count": "count", "waste": "waste"}[sort]
    tiebreak = [m[k] for k in ("bytes_alloc", "count", "waste") if k != primary]
    ranks = _label_ranks(key_labels, group_codes)
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
    columns.insert(len(by) + 1, _FAILED_COLUMN)
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
            Column("bytes_alloc", "BYTES", "bytes"), _FAILED_COLUMN,
            Column("frees", "FREES", "count"), Column("live", "LIVE", "count")]
    rows = [{"order": r["order"], "count": r["count"], "bytes_alloc": r["bytes_alloc"],
             "failed": r["failed"], "frees": r["frees"], "live": r["live"]} for r in t.rows]
    rows.sort(key=lambda r: _label_order(r["order"]))
    return Table(t.name, t.title, cols, rows, note="" if rows else "no page allocations")


def size_histogram(ds: Dataset, events: Sequence[str] | None = None,
                   layer: str | None = "slab") -> Table:
    """Requested sizes (bytes_req) in power-of-two buckets ``[lo, hi)``; bucket ``[0, 1)``
    holds zero-byte requests.  Rows run contiguously from the smallest to the largest
    non-empty bucket.  Default: slab events (page sizes are powers of two anyway)."""
    an = _analysis(ds)
    frames = _select(an, events, layer if events is None else None)
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


# ----------------------------------------------------------------------------------------
# /proc/slabinfo
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlabInfo:
    """One line of /proc/slabinfo (version 2.1)."""

    name: str
    active_objs: int
    num_objs: int
    objsize: int
    """Bytes per object, including metadata and padding (the cache's ``size``)."""
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int


class SlabinfoSnapshot(dict):
    """``dict[str, SlabInfo]`` plus ``malformed``: lines that could not be read."""

    malformed: int = 0


def parse_slabinfo(text: str) -> dict[str, SlabInfo]:
    """Parse /proc/slabinfo text.  Raises ParseError if the header is not
    ``slabinfo - version: 2.x``; a malformed cache line is skipped and counted in the
    returned mapping's ``malformed`` attribute, never guessed."""
    lines = text.splitlines()
    head = lines[0].strip() if lines else ""
    if not re.fullmatch(r"slabinfo - version: 2\.\d+", head):
        raise ParseError(f"not /proc/slabinfo text: first line is {head[:60]!r}",
                         "expected 'slabinfo - version: 2.1'")
    out = SlabinfoSnapshot()
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            # name 5 numbers ':' tunables 3 numbers ':' slabdata 3 numbers
            if len(parts) != 16 or parts[6] != ":" or parts[11] != ":" or \
                    parts[7] != "tunables" or parts[12] != "slabdata":
                raise ValueError(line)
            nums = [int(x) for x in parts[1:6]]
            slabs = [int(x) for x in parts[13:16]]
        except ValueError:
            out.malformed += 1
            continue
        out[parts[0]] = SlabInfo(parts[0], nums[0], nums[1], nums[2], nums[3], nums[4],
                                 slabs[0], slabs[1])
    return out


def slabinfo_diff(ds: Dataset) -> Table:
    """Caches whose active or total object count changed between the /proc/slabinfo
    snapshots taken at start and end of the recording, by |delta_bytes| (= change of
    num_objs * objsize, bytes).  A cache present in one snapshot only counts as 0 in the
    other.  Empty (with a note) when a snapshot is missing."""
    cols = [Column("cache", "CACHE"), Column("objsize", "OBJSIZE", "bytes"),
            Column("active_before", "ACTIVE BEFORE", "count"),
            Column("active_after", "ACTIVE AFTER", "count"),
            Column("delta_active", "DELTA ACTIVE", "count"),
            Column("num_before", "TOTAL BEFORE", "count"),
            Column("num_after", "TOTAL AFTER", "count"),
            Column("delta_bytes", "DELTA BYTES", "bytes")]
    title = "Slab caches that changed (/proc/slabinfo, start -> end)"
    if not ds.meta.slabinfo_start or not ds.meta.slabinfo_end:
        return Table("slabinfo_diff", title, cols, [], note="no slabinfo snapshots")
    before = parse_slabinfo(ds.meta.slabinfo_start)
    after = parse_slabinfo(ds.meta.slabinfo_end)
    aliases = slab_aliases(ds.meta.extra)
    rows = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        ab, aa = (b.active_objs if b else 0), (a.active_objs if a else 0)
        nb, na = (b.num_objs if b else 0), (a.num_objs if a else 0)
        if ab == aa and nb == na:
            continue
        size = (a or b).objsize
        rows.append({"cache": merged_name(name, aliases), "objsize": size, "active_before": ab,
                     "active_after": aa, "delta_active": aa - ab, "num_before": nb,
                     "num_after": na, "delta_bytes": (na - nb) * size})
    rows.sort(key=lambda r: (-abs(r["delta_bytes"]), -abs(r["delta_active"]), r["cache"]))
    bad = getattr(before, "malformed", 0) + getattr(after, "malformed", 0)
    note = f"{bad} malformed slabinfo lines skipped" if bad else ""
    return Table("slabinfo_diff", title, cols, rows, note=note)


# ----------------------------------------------------------------------------------------
# Summary and the whole report
# ----------------------------------------------------------------------------------------

def summary(ds: Dataset) -> dict:
    """Totals of a recording: events, per_event counts, duration_s (last - first
    timestamp, seconds), lost, truncated, unparsed, source, kernel."""
    per_event = {event_label(s, n): len(c) for (s, n), c in sorted(ds.columns.items())}
    lo, hi = _span(ds) or (None, None)
    # only nanosecond clocks give seconds; counters (x86-tsc, counter, uptime) do not
    clock = str(ds.meta.extra.get("trace_clock", "") or "")
    ns_clock = clock in NS_CLOCKS or clock == ""
    return {
        "events": ds.events,
        "per_event": per_event,
        "duration_s": ((hi - lo) / 1e9 if lo is not None else 0.0) if ns_clock else None,
        "lost": ds.meta.total_lost,
        "truncated": bool(ds.meta.truncated),
        "unparsed": ds.meta.unparsed,
        "source": ds.meta.source,
        "kernel": ds.meta.kernel,
        **({"frees": frees_summary(ds)} if frees_scope(ds) != "unknown" else {}),
    }


def frees_scope(ds: Dataset) -> str:
    """Which frees a recording holds: ``system`` (every context: a whole-system
    recording, or record --frees all), ``filtered`` (only those of the traced tasks or
    filters: LIVE is an upper bound), ``none`` (no free event recorded) or ``unknown``
    (not recorded by ftslab, or by an ftslab older than the distinction)."""
    scope = ds.meta.extra.get("frees_scope")
    if scope in ("system", "filtered", "none"):
        return scope
    if isinstance(ds.meta.extra.get("tracefs_writes"), list):
        # an older ftslab: frees in the allocations' instance, under its task limits
        # and filters, and set_event_notrace_pid
        return "filtered"
    return "unknown"


def frees_summary(ds: Dataset) -> dict:
    """What the report header says of the frees: their scope, the settle window after
    the allocations stopped, how many free events were recorded and how many freed an
    allocation of the recording (the others freed objects allocated before it, or by
    tasks it did not trace: counted here, never shown as data)."""
    an = _analysis(ds)
    frees = sum(len(c) for (s, n), c in ds.columns.items() if free_source(s, n) is not None)
    matched = sum(int(fr.freed.sum()) for fr in an.frames
                  if fr.src.layer in ("slab", "page"))
    settle = ds.meta.extra.get("settle_s")
    return {"scope": frees_scope(ds),
            "settle_s": float(settle) if isinstance(settle, (int, float)) else 0.0,
            "recorded": frees, "matched": matched, "unmatched": max(frees - matched, 0),
            "lost": int(ds.meta.extra.get("frees_lost", 0) or 0)}


#: what --frees traced / an older recording's LIVE means
UPPER_BOUND_NOTE = ("LIVE is an upper bound: this recording's frees were recorded with "
                    "its allocations (record --frees traced, or an ftslab before --frees), "
                    "under its task limits and filters and without those that "
                    "interrupted ftslab, so what an RCU callback, an interrupt, a "
                    "workqueue or another task freed can show as live (record with "
                    "--frees all, the default, to see every free)")


#: trace clocks whose timestamps are nanoseconds (Documentation/trace/ftrace.rst)
NS_CLOCKS = frozenset({"local", "global", "perf", "mono", "mono_raw", "boot", "tai"})


def loss_warning(lost: int) -> str:
    return (f"WARNING: {lost} events were LOST during recording; counts below are lower "
            "bounds, and FREES/LIVE cannot be trusted (a lost free shows as live)")


def _warnings(ds: Dataset, an: _Analysis) -> list[str]:
    out = []
    if ds.meta.total_lost > 0:
        out.append(loss_warning(ds.meta.total_lost))
    if ds.meta.truncated:
        detail = f" ({ds.meta.truncated_detail})" if ds.meta.truncated_detail else ""
        out.append(f"WARNING: the recording is truncated{detail}; "
                   "only the part before the cut is reported")
    if ds.meta.unparsed:
        out.append(f"WARNING: {ds.meta.unparsed} lines/events could not be decoded "
                   "and were skipped")
    if not any(fr.n for fr in an.frames):
        out.append("WARNING: no allocation events in this recording")
    others = ds.meta.extra.get("other_buffers") or []
    if others:
        shown = ds.meta.extra.get("buffer", "")
        out.append(f"note: the file also holds buffer(s) {', '.join(map(repr, others))}; "
                   f"this report is of {'the top-level buffer' if not shown else repr(shown)}"
                   " (pick one with --buffer NAME)")
    if frees_scope(ds) == "filtered" and any(fr.freed.size for fr in an.frames):
        out.append("WARNING: " + UPPER_BOUND_NOTE)
    if ds.meta.extra.get("frees_missing"):
        out.append("WARNING: the recording's buffer of frees is missing: nothing is seen "
                   "freed, and LIVE counts every allocation")
    clock = str(ds.meta.extra.get("trace_clock", "") or "")
    if clock and clock not in NS_CLOCKS:
        out.append(f"note: the trace clock is {clock!r}: timestamps are its ticks, not "
                   "nanoseconds, and no duration is given")
    nested = {}
    for fr in an.frames:
        k = int(fr.nested.sum())
        if k:
            nested[fr.event] = nested.get(fr.event, 0) + k
    if nested:
        out.append("note: " + ", ".join(f"{n} {e}" for e, n in sorted(nested.items()))
                   + " event(s) came from inside another kmalloc-family function (the "
                   "kernel traces such a large kmalloc twice): each allocation is counted "
                   "once")
    orphans = int(ds.meta.extra.get("stacks_unattributed", 0) or 0)
    if orphans:
        out.append(f"note: {orphans} kernel stack(s) could not be paired with their "
                   "allocation (it was lost, or the stack came without it): they are not "
                   "counted; allocations whose stack was lost show as "
                   f"{NO_STACK!r}")
    kprobe_names = any(fr.src.layer == "kprobe" and fr.src.cache in fr.cols.fields
                       for fr in an.frames)
    for fr in an.frames:
        if fr.src.layer in ("kprobe", "kprobe_page"):
            continue  # a probed function without a cache argument: no name to expect
        if fr.src.cache and fr.src.cache not in fr.cols.fields and fr.n:
            out.append(f"note: {fr.event} has no {fr.src.cache!r} field on this kernel: "
                       f"its cache is shown as {UNKNOWN_CACHE!r}"
                       + (" (the kprobe events name it: see the kprobe tables, or "
                          "--source kprobe)" if kprobe_names else ""))
    return out


def warnings_of(ds: Dataset) -> list[str]:
    """What every report of ``ds`` says first: loss, truncation, notes (as
    Report.warnings); for outputs that are not a Report (folded stacks)."""
    return _warnings(ds, _analysis(ds))


def _layers(source: str, page: bool) -> str:
    if source == "kprobe":
        return "kprobe_page" if page else "kprobe"
    return "page" if page else "slab"


def default_source(ds: Dataset) -> str:
    """Tracepoints when the recording has any tracepoint allocation, else kprobes."""
    an = _analysis(ds)
    if _select(an, None, ("slab", "page")) or not _select(an, None, ("kprobe", "kprobe_page")):
        return "tracepoint"
    return "kprobe"


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
    by = _check_by(by)
    _check_sort(sort)
    if source is not None and source not in SOURCES:
        raise UsageError(f"unknown source {source!r}", f"use one of {', '.join(SOURCES)}")
    an = _analysis(ds, Part(progress, 0.0, 0.6))
    progress.stage("grouping", 0.6)
    has_kprobes = bool(_select(an, None, ("kprobe", "kprobe_page")))
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
        layer = _layers(src, "order" in keys)
        if "event" in keys or "function" in keys:
            layer = (_layers(src, False), _layers(src, True))
        tables.append(interval_series(ds, keys, interval_ns, top, events, _layer=layer))
        if keys == ("cache",) and src == "tracepoint":
            from .reconcile import add_kernel_series
            add_kernel_series(tables[0], ds, (_span(ds) or (0, 0))[0], interval_ns)
        return _reconciled(ds, Report(summary(ds), tables, _warnings(ds, an), by=keys,
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
            if _select(an, None, "page"):
                tables.append(live_allocations(ds, ("order",), top, events, _layer="page",
                                               name="live_pages_by_order",
                                               title="Live (not freed) pages by order"))
        return _reconciled(ds, Report(summary(ds), tables, _warnings(ds, an), by=by,
                                      sort="live", main=tables[0].name), not by)
    if by:
        # Page allocations include the pages behind slabs: mixing the layers in one
        # table counts memory twice.  --by event keeps every event on rows of its own;
        # --by order is the page layer alone; every other key is the slab layer.
        # --by function is each probed function on rows of its own.
        if "event" in by or "function" in by:
            layer = (_layers(src, False), _layers(src, True))
        else:
            layer = _layers(src, "order" in by)
        table = group_allocations(ds, by, sort, top, events, _layer=layer)
        if layer == _layers(src, False) and _select(an, events, _layers(src, True)):
            table.note = "; ".join(x for x in (table.note, "page allocations are not in "
                                               "this table (see --by order)") if x)
        if has_kprobes and src == "tracepoint" and "event" not in by:
            table.note = "; ".join(x for x in (table.note, "tracepoint events only "
                                               "(kprobe view: --source kprobe)") if x)
        tables.append(table)
        main = tables[0].name
    else:
        slab, page = _layers(src, False), _layers(src, True)
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
        if _select(an, None, page):
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
            _without_pairing(t)
            t.note = "; ".join(x for x in (t.note, _KPROBE_NOTE) if x)
    if hist:
        tables.append(size_histogram(ds, events, _layers(src, False)))
    return _reconciled(ds, Report(summary(ds), tables, _warnings(ds, an), by=by, sort=sort,
                                  main=main), not by and src == "tracepoint")


def _reconciled(ds: Dataset, rep: Report, table: bool) -> Report:
    """``rep`` with the check of LIVE against /proc/slabinfo (reconcile.py): its warning
    line when the kernel's counters contradict a cache's LIVE, and with ``table`` its
    table (after the slabinfo diff, or last)."""
    if not (ds.meta.slabinfo_start and ds.meta.slabinfo_end) or not any(
            s == "kmem" and n in ("kmalloc", "kmem_cache_alloc") and len(c)
            for (s, n), c in ds.columns.items()):
        return rep
    from .reconcile import allocinfo_diff, check_caches, reconcile_table, reconcile_warning
    checks, facts = check_caches(ds)
    line = reconcile_warning(checks)
    if line:
        rep.warnings.append(line)
    if table and checks:
        at = [i + 1 for i, t in enumerate(rep.tables) if t.name == "slabinfo_diff"]
        t = reconcile_table(ds, checks, facts)
        span = _span(ds)
        if ds.meta.lost and span is not None:
            # its LIVE column is LIVE too: where the events were lost, and what that means
            t = _replace(t, note="; ".join(x for x in (t.note,
                                                                 _loss_note(ds, span[0])) if x))
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
