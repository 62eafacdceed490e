"""Allocation and free frames: the columns of a dataset laid out per layer, with labels
factorized and pointers made comparable.

Pure: numpy over a dataset's columns.  It groups nothing and pairs nothing (grouping.py
and pairing.py do), and it never invents a label: what an event does not name keeps the
unknown labels of tables.py.
"""
from __future__ import annotations

import re

import numpy as np

from ftslab.analysis.kmalloc import kmalloc_round_up_array
from ftslab.analysis.tables import PAGE_LAYERS
from ftslab.dataset import EventColumns
from ftslab.errors import ParseError
from ftslab.events import AllocSource, event_label

__all__ = ["NO_STACK", "normalize_call_site"]


# ----------------------------------------------------------------------------------------
# Small vectorised helpers
# ----------------------------------------------------------------------------------------

def factorize(arr: np.ndarray) -> tuple[np.ndarray, list]:
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


def merge_labels(codes: np.ndarray, labels: list) -> tuple[np.ndarray, list]:
    """Merge codes whose labels are equal (two pids with one comm, ...)."""
    uniq = list(dict.fromkeys(labels))
    if len(uniq) == len(labels):
        return codes, labels
    pos = {v: i for i, v in enumerate(uniq)}
    lut = np.array([pos[v] for v in labels], dtype=np.int64)
    return lut[codes], uniq


def as_u64(col: np.ndarray) -> np.ndarray:
    if col.dtype == np.uint64:
        return col
    if col.dtype == np.int64:
        return col.view(np.uint64)  # -1 (failed pfn) becomes 0xffffffffffffffff
    return as_i64(col).view(np.uint64)


def as_i64(col: np.ndarray) -> np.ndarray:
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


def ptr_keys(col: np.ndarray) -> np.ndarray:
    """Pointer/pfn column as uint64 keys comparable across event types."""
    if col.dtype != object:
        return as_u64(col)
    # Text traces: hashed %p values are hex text, consistent within one boot.
    codes, uniq = factorize(col)
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


def label_order(label) -> tuple:
    """Sort key for mixed labels: numbers numerically, then text, None last."""
    if label is None:
        return (2, 0, "")
    if isinstance(label, (int, float)):
        return (0, label, "")
    return (1, 0, str(label))


# ----------------------------------------------------------------------------------------
# Per-event-type frames and the once-per-dataset analysis
# ----------------------------------------------------------------------------------------

class Frame:
    """One allocation event type, read through its AllocSource."""

    def __init__(self, src: AllocSource, cols: EventColumns, page_size: int):
        self.src = src
        self.cols = cols
        self.event = event_label(cols.system, cols.name)
        f = cols.fields
        self.n = n = len(cols)
        self.ts = as_u64(cols.ts)
        self.notes: list[str] = []
        ok = np.ones(n, dtype=bool)
        if src.layer in PAGE_LAYERS and src.order and src.order in f:
            order = as_i64(f[src.order])
            breq = np.left_shift(np.int64(page_size), order)
            balloc = breq
        else:
            breq = as_i64(f[src.bytes_req]) if src.bytes_req and src.bytes_req in f else None
            balloc = (as_i64(f[src.bytes_alloc])
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
            self.ptr = ptr_keys(f[src.ptr])
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
        self.labels_by_key: dict[str, tuple[np.ndarray, list]] = {}

    def const(self, label) -> tuple[np.ndarray, list]:
        return np.zeros(self.n, np.int64), [label]

    def free_times_from(self, ridx: np.ndarray | None, times) -> None:
        """Where ``free_ts`` comes from, computed when first asked: ``ridx``, for each
        matchable allocation, the index of its free in ``times`` (-1: not freed); both
        None: matched, and no free times to give (all 0)."""
        self._free_of = (ridx, times)

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
        """Events that are the inner half of one allocation (see analysed.Analysis): neither
        an allocation nor a failure of their own."""
        self.nested = mask
        self.ok = self.ok & ~mask
        self.matchable = self.matchable & ~mask
        self.bytes_req = np.where(self.ok, self.bytes_req, 0)
        self.bytes_alloc = np.where(self.ok, self.bytes_alloc, 0)


NO_STACK = "(no stack recorded)"


STACK_SEP = " <- "  # between the frames of a --by stack label (no symbol holds it)


#: Leading (innermost) frames of a recorded stack that belong to the tracing machinery,
#: not to the allocation.  A tracepoint calls its probes through a static call while it
#: has one probe: the call goes straight to trace_event_raw_event_<event>.  With a second
#: probe on it (another instance or the top level with the same event enabled, e.g.
#: after `trace-cmd record -k`; perf; BPF) the static call targets the iterator
#: __traceiter_<event>, which loops over the probes, and that frame sits between the
#: allocator and trace_event_raw_event_<event> (seen on 6.18).  __SCT__tp_func_<event> is
#: the static call's trampoline, a frame only where the call is not patched inline.
TRACING_FRAMES = ("trace_event_raw_event_", "perf_trace_", "trace_event_buffer",
                   "__traceiter_", "__SCT__",
                   "event_triggers", "event_trigger", "stacktrace_trigger", "__trace_stack",
                   "__ftrace_trace_stack", "ftrace_", "__ftrace", "arch_ftrace", "kprobe",
                   "__kprobe", "aggr_pre_handler", "opt_pre_handler", "optimized_callback",
                   "kprobe_dispatcher", "kprobe_perf_func", "kprobe_trace_func",
                   "__kprobe_trace_func", "trace_")
