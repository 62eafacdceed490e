"""One dataset, analysed once: its frames, its pairing and its labels, kept per dataset
and reused by every table built from it.

``analysis_of`` keeps the ``Analysis`` beside its ``Dataset`` (dropped with it), since
build_report asks for many tables and pairing frees is the expensive part.  Pure: it
reads no file and prints nothing; the tables themselves are built in grouping.py,
live.py, series.py and stacks.py.
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable

import numpy as np

from ftslab.analysis.frames import as_i64, as_u64, factorize, Frame, merge_labels, ptr_keys, STACK_SEP, TRACING_FRAMES, NO_STACK, normalize_call_site
from ftslab.analysis.kmalloc import kmalloc_round_up, kmalloc_size_class
from ftslab.analysis.merged import merged_name, slab_aliases
from ftslab.analysis.pairing import compress_into, FreeTimes, pair_owned
from ftslab.analysis.tables import PAGE_LAYERS, GROUP_KEYS, UNKNOWN_CACHE, UNKNOWN_COMM, ZERO_SIZE
from ftslab.dataset import Dataset
from ftslab.errors import FtslabError, UsageError
from ftslab.events import alloc_source, FAMILY, free_source, function_of_event, is_probe_event
from ftslab.progress import NO_PROGRESS, Progress

__all__ = ["time_span"]


class Analysis:
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
        self.frames: list[Frame] = []
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
                fr = Frame(src, cols, self.page_size)
                self.frames.append(fr)
                self._nested_calls(fr)
                continue
            fsrc = free_source(system, name)
            if fsrc is not None and fsrc.count is not None:
                if fsrc.count in cols.fields and len(cols):
                    from ftslab.analysis.bulkfree import expand_bulk_frees
                    got = expand_bulk_frees(cols.fields, as_u64(cols.ts), cols.seq,
                                            fsrc.count)
                    self.bulk_unnamed += got.unnamed
                    frees.setdefault(fsrc.layer, []).append(
                        (got.ts, ptr_keys(got.ptrs), got.seq))
                continue
            if fsrc is not None and fsrc.ptr in cols.fields and len(cols):
                keys = ptr_keys(cols.fields[fsrc.ptr])
                frees.setdefault(fsrc.layer, []).append(
                    (as_u64(cols.ts), keys, cols.seq))
        progress.stage("pairing allocations with frees", 0.5)
        for layer in ({f.src.layer for f in self.frames} if pair else ()):
            self._match_frees([f for f in self.frames if f.src.layer == layer],
                              frees.get(layer, []))
        self._global: dict[str, dict] = {}
        self.rows_cache: dict[tuple, "Rows"] = {}
        self.groups_cache: dict[tuple, tuple] = {}

    def _nested_calls(self, fr: Frame) -> None:
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
    def _match_frees(frames: list[Frame], frees: list[tuple]):
        """Mark each allocation whose next event on the same pointer is a free."""
        frames = [f for f in frames if f.ptr is not None]
        for f in frames:
            f.free_times_from(None, None)  # matched: free_ts all 0 unless paired below
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
            compress_into(f.matchable, f.cols.seq if by_seq else f.ts, ts[at:at + m])
            at += m
        for (t, k, seq), r in zip(frees, real):
            m = int(r.sum())
            np.compress(r, k, out=keys[at:at + m])
            compress_into(r, seq if by_seq else t, ts[at:at + m])
            at += m
        owned = [keys, ts]
        del keys, ts
        freed, ridx = pair_owned(owned, na)
        times = FreeTimes(frees, real)
        start = 0
        for f in frames:
            m = int(f.matchable.sum())
            f.freed[f.matchable] = freed[start:start + m]
            f.free_times_from(ridx[start:start + m], times)
            start += m

    # -- keys ---------------------------------------------------------------------------

    def local_key(self, frame: Frame, key: str) -> tuple[np.ndarray, list]:
        """(codes, labels) of ``key`` for one frame; labels are distinct."""
        got = frame.labels_by_key.get(key)
        if got is None:
            got = self._compute_key(frame, key)
            if key == "cache" and self.aliases:  # a merged cache: by all its names
                got = merge_labels(got[0], [merged_name(x, self.aliases) for x in got[1]])
            frame.labels_by_key[key] = got
        return got

    def _compute_key(self, fr: Frame, key: str) -> tuple[np.ndarray, list]:
        src, f = fr.src, fr.cols.fields
        if key == "event":
            return fr.const(fr.event)
        if key in ("pid", "comm"):
            codes, pids = factorize(as_i64(fr.cols.pid))
            pids = [int(p) for p in pids]
            if key == "pid":
                return codes, pids
            return merge_labels(codes, [self.cmdlines.get(p, UNKNOWN_COMM) for p in pids])
        if key == "cache":
            if src.cache and src.cache in f:
                codes, names = factorize(f[src.cache])
                return merge_labels(codes, [str(x) if str(x) else UNKNOWN_CACHE
                                             for x in names])
            if src.size_class and src.bytes_alloc and src.bytes_alloc in f:
                codes, sizes = factorize(as_i64(f[src.bytes_alloc]))
                return merge_labels(codes, [kmalloc_size_class(int(s), self.page_size)
                                             for s in sizes])
            if src.size_class and src.layer == "kprobe" and src.bytes_req in f:
                # __kmalloc(size) kprobes: the class the request rounds up to
                codes, sizes = factorize(as_i64(f[src.bytes_req]))
                return merge_labels(codes, [kmalloc_size_class(
                    kmalloc_round_up(int(s), self.page_size), self.page_size) if s else
                    ZERO_SIZE for s in sizes])
            return fr.const(None if src.layer in PAGE_LAYERS else UNKNOWN_CACHE)
        if key == "callsite":
            if not (src.call_site and src.call_site in f):
                return fr.const(None)
            col = f[src.call_site]
            codes, sites = factorize(col)
            if col.dtype == object:
                labels = [normalize_call_site(str(s)) for s in sites]
            else:
                labels = [self._symbol(int(a)) for a in sites]
            return merge_labels(codes, labels)
        if key == "function":
            if is_probe_event(fr.cols.system, fr.cols.name):
                return fr.const(function_of_event(fr.cols.name))
            return fr.const(fr.event)
        if key == "order":
            if src.layer in PAGE_LAYERS and src.order and src.order in f:
                codes, orders = factorize(as_i64(f[src.order]))
                return codes, [int(o) for o in orders]
            return fr.const(None)
        if key == "gfp":
            if not (src.gfp and src.gfp in f):
                return fr.const(None)
            col = f[src.gfp]
            codes, words = factorize(col)
            if col.dtype == object:
                return merge_labels(codes, [str(w) for w in words])
            fmt = self._gfp_formatter(fr.cols.system, fr.cols.name, src.gfp)
            return merge_labels(codes, [fmt(int(w)) for w in words])
        if key == "stack":
            if fr.cols.stack is None:
                return fr.const(NO_STACK)
            codes, sids = factorize(fr.cols.stack)
            return merge_labels(codes, [STACK_SEP.join(self.stack_frames(int(i)))
                                         if i >= 0 else NO_STACK for i in sids])
        raise UsageError(f"unknown group key {key!r}", f"use one of {', '.join(GROUP_KEYS)}")

    def stack_frames(self, sid: int) -> tuple[str, ...]:
        """Function names of stack ``sid``, innermost first, without the tracing
        machinery that recorded it (the tracepoint's or kprobe's own frames)."""
        got = self._stack_frames.get(sid)
        if got is None:
            names = [self._frame(a) for a in self.stacks[sid]]
            k = 0
            while k < len(names) - 1 and names[k].startswith(TRACING_FRAMES):
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
            from ftslab.trace import gfp as _gfp
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

    def global_key(self, frames: list[Frame], key: str) -> tuple[list[np.ndarray], list]:
        """Per-frame codes in one label space shared by ``frames``."""
        space: dict = {}
        out = []
        for fr in frames:
            codes, labels = self.local_key(fr, key)
            lut = np.array([space.setdefault(lab, len(space)) for lab in labels],
                           dtype=np.int64)
            out.append(lut[codes] if labels else codes)
        return out, list(space)


_CACHE: dict[int, tuple[tuple, Analysis]] = {}


def _fingerprint(ds: Dataset) -> tuple:
    return (tuple((k, id(c), len(c)) for k, c in sorted(ds.columns.items())),
            id(ds.symbolize), ds.meta.extra.get("page_size", 4096))


def analysis_of(ds: Dataset, progress: Progress = NO_PROGRESS) -> Analysis:
    """The analysis of ``ds``, computed once: build_report asks for many tables, and
    free matching (a sort of all allocations and frees) is the expensive part."""
    key = id(ds)
    fp = _fingerprint(ds)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1]
    an = Analysis(ds, progress)
    if hit is None:
        weakref.finalize(ds, _CACHE.pop, key, None)  # drop it with the Dataset
    _CACHE[key] = (fp, an)
    return an


class Rows:
    """The per-row inputs of every grouped table over one set of frames, built once:
    build_report groups the same frames by cache, call site and comm, twice over.
    Rebuilding them per table allocated ~100 bytes per event each time, and on a
    10 M-event recording fresh memory (the kernel zeroing it) cost more than the sums."""

    def __init__(self, frames: list[Frame]):
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


def time_span(ds: Dataset) -> tuple[int, int] | None:
    """(first, last) timestamp of all events, None without events."""
    lo = hi = None
    for c in ds.columns.values():
        if len(c):
            ts = as_u64(c.ts)
            lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
            hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
    return None if lo is None else (lo, hi)
