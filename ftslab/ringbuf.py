"""Decode ftrace ring-buffer pages (what per_cpu/cpuN/trace_pipe_raw gives) into events.

The page and event-header layouts come from ``events/header_page`` and
``events/header_event`` (formats.HeaderPage / HeaderEvent); each event's fields from its
``format`` file (formats.EventFormat).  Pure functions over bytes: no file is opened here.

Two outputs from one walk over the pages:
- ``decode_columns``: numpy columns per event type (fast; reports use it);
- ``iter_events``: ``records.Event`` objects in time order (API and ``stream``).

Layout facts used (kernel/trace/ring_buffer.c, stable since 2.6.3x; 5.10 made
TIME_STAMP absolute; kernel commits not identified):
- page: u64 timestamp, long commit (bytes of data; bit 31 = events were missed before
  this page, bit 30 = their count is stored after the data), then data.
- event header: u32 with type_len (low 5 bits on little-endian) and time_delta (27 bits).
  type_len 1..28: data of type_len*4 bytes follows; 0: a u32 length (counting itself)
  then data; 29 padding (time_delta 0: rest of page unused); 30 time extend
  (delta = array[0] << 27 | time_delta); 31 absolute time stamp (same encoding,
  top 5 bits kept from the running time).
"""
from __future__ import annotations

import struct
from types import MappingProxyType
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import forked
from .errors import ParseError
from .formats import EventFormat, Field, HeaderEvent, HeaderPage
from .records import Event, EventColumns, LazyFields, join_str_columns, str_column

__all__ = ["PageWalk", "walk_pages", "decode_blocks", "ColumnSink", "decode_columns", "iter_events", "decode_event",
           "missed_spans", "pair_stacks", "stack_rows", "stack_refs", "stack_column",
           "MISSED_EVENTS", "MISSED_STORED"]

MISSED_EVENTS = 1 << 31
MISSED_STORED = 1 << 30
_TS_MSB = 0xF8 << 56       # bits an absolute TIME_STAMP event does not carry
_BLOCK_PAGES = 2048
_MAX_STRING = 256          # longest string field we gather in columns (cache names are < 64)


@dataclass
class PageWalk:
    """Where the data events of one CPU's pages are, without decoding their fields."""

    cpu: int
    ts: np.ndarray = None
    """uint64 absolute timestamps (ns) of data events, in ring-buffer order."""
    off: np.ndarray = None
    """int64 byte offsets of each event's payload (common_type first) in the CPU's data."""
    ids: np.ndarray = None
    """int64 event type id (common_type) of each event."""
    lens: np.ndarray = None
    """int64 payload length of each event in bytes."""
    pages: int = 0
    missed: int = 0
    """Events the kernel said were lost (counted where the page stores the number)."""
    missed_unknown: int = 0
    """Pages flagged 'events missed' without a stored count."""
    bad_pages: int = 0
    """Pages whose header or events did not make sense (skipped, counted)."""
    short_records: int = 0
    """Data events shorter than their event's format says (only a damaged page has
    any): left out of the decoded events and counted here, by decode_columns or
    iter_events, whichever decodes this walk (each sets it, never adds to it: a walk
    decoded twice counts its records once)."""
    missed_spans: tuple = ()
    """(after_ns, before_ns, count) per page flagged 'events missed': the events were
    lost after the previous page's timestamp (0: before the first page) and before this
    page's; count 0 when the page does not store it.  Filled by load (missed_spans())
    and by decode_blocks."""

    def add_counts(self, other: "PageWalk") -> None:
        """Add the page, loss and short-record counters of a walk of more pages of the
        same CPU."""
        for k in ("pages", "missed", "missed_unknown", "bad_pages", "short_records"):
            setattr(self, k, getattr(self, k) + getattr(other, k))


def _check_layout(hp: HeaderPage, he: HeaderEvent) -> None:
    if hp.timestamp_size != 8 or hp.commit_size not in (4, 8) or hp.data_offset <= 0:
        raise ParseError(f"unsupported ring-buffer page header layout: {hp}")
    # the header's words lie before the data, on word boundaries (a damaged header_page
    # could point the walkers anywhere)
    if (hp.timestamp_offset % 4 or hp.commit_offset % 4 or hp.data_offset % 4
            or hp.timestamp_offset + hp.timestamp_size > hp.data_offset
            or hp.commit_offset + hp.commit_size > hp.data_offset):
        raise ParseError(f"ring-buffer page header fields overlap its data: {hp}")
    if he.type_len_bits != 5 or he.time_delta_bits != 27:
        raise ParseError(f"unsupported ring-buffer event header layout: {he}")


def _page_size(hp: HeaderPage, he: HeaderEvent, page_size: int | None,
               little_endian: bool) -> int:
    """The size of one ring-buffer page, once the headers say pages can be walked."""
    _check_layout(hp, he)
    if not little_endian:
        raise ParseError("big-endian ring buffers are not supported")
    psize = page_size or (hp.data_offset + hp.data_size)
    if psize % 4 or psize <= hp.data_offset + 8:
        raise ParseError(f"bad ring-buffer page size {psize}")
    return psize


def walk_pages(data: bytes | memoryview, cpu: int, hp: HeaderPage, he: HeaderEvent,
               page_size: int | None = None, little_endian: bool = True) -> PageWalk:
    """Walk every page of one CPU's raw data and locate its data events.

    Many pages are walked in lockstep with numpy (one step = the next event of every
    page), so the Python-level cost is per step, not per event.  Small inputs (live
    streaming, a page at a time) use the plain loop, which is cheaper there; both give
    identical results (tests compare them on real captures).
    """
    psize = _page_size(hp, he, page_size, little_endian)
    return _walk_all(data, cpu, hp, he, psize, len(data) // psize)


def missed_spans(data: bytes | memoryview, hp: HeaderPage, page_size: int | None = None,
                 before: int | None = 0) -> tuple:
    """Where (in time) one CPU lost events: see PageWalk.missed_spans.  Apart from
    walk_pages, which live readers call page by page: only whole recordings need it.
    ``before``: the timestamp of the page before ``data``'s first (0: there is none)."""
    psize = page_size or (hp.data_offset + hp.data_size)
    n_pages = len(data) // psize
    if not n_pages:
        return ()
    words = np.frombuffer(data, dtype="<u4", count=n_pages * (psize // 4)).reshape(n_pages, -1)
    commit_raw = words[:, hp.commit_offset // 4].astype(np.int64)
    commit = commit_raw & ~(MISSED_EVENTS | MISSED_STORED) & 0xFFFFFFFF
    max_data = psize - hp.data_offset
    flagged = np.flatnonzero(((commit_raw & MISSED_EVENTS) != 0) & (commit <= max_data)
                             & (commit % 4 == 0))
    if not flagged.size:
        return ()
    t0 = hp.timestamp_offset // 4
    page_ts = words[:, t0].astype(np.uint64) | (words[:, t0 + 1].astype(np.uint64)
                                                << np.uint64(32))
    out = []
    for p in flagged.tolist():
        n = 0
        c = int(commit[p])
        if commit_raw[p] & MISSED_STORED and c + 8 <= max_data:
            i = hp.data_offset // 4 + c // 4
            n = int(words[p, i]) | (int(words[p, i + 1]) << 32)
        out.append((int(page_ts[p - 1]) if p else before, int(page_ts[p]), n))
    return tuple(out)


def _walk_all(data, cpu, hp, he, psize, n_pages) -> PageWalk:
    if n_pages < 8:
        return _walk_loop(data, cpu, hp, he, psize, n_pages)
    if n_pages <= _BLOCK_PAGES:
        return _walk_vectorized(data, cpu, hp, he, psize, n_pages)
    # walk in blocks that stay in the CPU caches: each step touches every page of the
    # block, and 2048 pages (8 MiB) measured fastest here (4x faster than one block)
    mv = memoryview(data)
    parts = []
    for first in range(0, n_pages, _BLOCK_PAGES):
        count = min(_BLOCK_PAGES, n_pages - first)
        part = _walk_vectorized(mv[first * psize:(first + count) * psize], cpu, hp, he,
                                psize, count)
        part.off += first * psize
        parts.append(part)
    w = PageWalk(cpu=cpu)
    for k in ("ts", "off", "ids", "lens"):
        setattr(w, k, np.concatenate([getattr(x, k) for x in parts]))
    for x in parts:
        w.add_counts(x)
    return w


def decode_blocks(cpus: Sequence[tuple[int, object]], hp: HeaderPage,
                  he: HeaderEvent, page_size: int | None,
                  formats_by_id: Mapping[int, EventFormat],
                  fields: Callable[[str, str], Iterable[str]], sink: "ColumnSink",
                  stack_id: int | None = None,
                  each_block: Callable[[int, int], None] | None = None,
                  little_endian: bool = True, share: bool | None = None) -> list[PageWalk]:
    """walk_pages + decode_columns of the CPUs ``cpus`` ((cpu, its pages), in order), a
    block of pages at a time, decoding only the fields ``fields(system, name)`` names
    into ``sink``; returns each CPU's walk counters and loss spans (no per-event
    arrays).  A CPU's pages are bytes, or a tracedat.CompressedPages (``len()``,
    ``read(start, end)``, ``whole()``: decompressed a block at a time).  Nothing per
    event outlives its block but the columns, and each block's gathers stay within 8 MiB
    of pages (cache hits, not misses).  A CPU with kernel stacks (event ``stack_id``)
    ends it: they pair across blocks, so that CPU and those after it are left to the
    caller, decoded whole (fewer walks than CPUs come back, and ``sink`` holds the CPUs
    before it only).  ``each_block(cpu, pages)`` is told the pages of a CPU done so far
    after each block.

    ``share``: decode blocks in a forked child process too (see forked.py), the
    columns still added in block order; None: when there are blocks enough and a
    second CPU to run it on.  The walk holds the GIL, so threads would not help."""
    psize = _page_size(hp, he, page_size, little_endian)
    # the pages of a CPU: bytes, or kept compressed (CompressedPages: read(start, end))
    views = [data if hasattr(data, "whole") else memoryview(data) for _cpu, data in cpus]
    items = [(c, first, min(_BLOCK_PAGES, len(v) // psize - first))
             for c, v in enumerate(views)
             for first in range(0, len(v) // psize, _BLOCK_PAGES)]
    if share is None:
        share = len(items) >= _SHARE_MIN_BLOCKS and forked.usable_cpus() > 1
    ts_at = hp.timestamp_offset
    ts_of = struct.Struct("<Q" if little_endian else ">Q").unpack_from

    def block(k: int):
        c, first, count = items[k]
        cpu, v = cpus[c][0], views[c]
        start, end = first * psize, (first + count) * psize
        blk = v[start:end] if isinstance(v, memoryview) else v.read(start, end)
        part = _walk_all(blk, cpu, hp, he, psize, count)
        if stack_id is not None and (part.ids == stack_id).any():
            return None
        cols = decode_columns(blk, part, formats_by_id, fields=fields)
        part.ts = part.off = part.ids = part.lens = None
        # losses: spans whose page is the block's first start at the page before it,
        # which the previous block knows (None until then)
        if part.missed or part.missed_unknown:
            part.missed_spans = missed_spans(blk, hp, psize, None)
        return part, count, cols, ts_of(blk, (count - 1) * psize + ts_at)[0]

    walks = [PageWalk(cpu=cpu) for cpu, _data in cpus]
    mark, at = sink.mark(), 0  # the CPU being added, and the sink before it
    last_ts = 0                # timestamp of the last page of the block before
    for k, got in forked.in_order(block, len(items), share, _plain, _unplain):
        c, first, _count = items[k]
        if c != at:
            mark, at = sink.mark(), c
        if got is None:
            sink.rollback(mark)
            return walks[:c]
        part, count, cols, end_ts = got
        walks[c].add_counts(part)
        if part.missed_spans:
            before = last_ts if first else 0
            walks[c].missed_spans += tuple((before if a is None else a, b, n)
                                           for a, b, n in part.missed_spans)
        last_ts = end_ts
        sink.add(cols, count)
        if each_block is not None:
            each_block(cpus[c][0], first + count)
    return walks


# decode_blocks shares a CPU's blocks with a forked child from this many blocks (32 MiB
# of pages) on: below it, the fork costs more than it saves
_SHARE_MIN_BLOCKS = 4


def _plain(got):
    """A block's result (see decode_blocks) as the forked child sends it: columns as
    plain arrays and lists, string columns as (codes, labels), not millions of str
    objects to pickle."""
    if got is None:
        return None
    part, count, cols, end_ts = got
    plain = []
    for key, c in cols.items():
        flds = {n: (("str", a.codes, a.labels) if getattr(a, "codes", None) is not None
                    else a) for n, a in c.fields.items()}
        plain.append((key, c.ts, c.cpu, c.pid, flds))
    return part, count, plain, end_ts


def _unplain(got):
    """_plain() undone.  The arrays view the child's results, which must not stay
    alive: ColumnSink copies them, and the string codes it keeps are copied here."""
    if got is None:
        return None
    part, count, plain, end_ts = got
    cols = {}
    for (system, name), ts, cpu, pid, flds in plain:
        fields = {n: (str_column(np.array(v[1], np.int32), v[2]) if isinstance(v, tuple)
                      else v) for n, v in flds.items()}
        cols[(system, name)] = EventColumns(system=system, name=name, ts=ts, cpu=cpu,
                                            pid=pid, fields=fields)
    return part, count, cols, end_ts


class _Growing:
    """One column built by appending: an array that grows by half again when full (the
    tail it has not used yet is never touched, so costs no memory); strings (object
    arrays) as a list of parts."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.parts: list | None = [] if dtype == object else None
        self.buf: np.ndarray | None = None
        self.n = 0

    def append(self, a: np.ndarray, expect: int = 0) -> None:
        """Add ``a``; ``expect``: how long the column will likely get."""
        if self.parts is not None:
            self.parts.append(a)
            self.n += a.shape[0]
            return
        need = self.n + a.shape[0]
        if self.buf is None or need > self.buf.shape[0]:
            cap = max(need, expect, 1 << 16,
                      0 if self.buf is None else self.buf.shape[0] * 3 // 2)
            grown = np.empty(cap, self.dtype)
            if self.n:
                grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:need] = a
        self.n = need

    def truncate(self, n: int) -> None:
        if self.parts is not None:
            while self.n > n:
                self.n -= self.parts.pop().shape[0]
        self.n = n

    def array(self) -> np.ndarray:
        if self.parts is not None:
            return join_str_columns(self.parts)
        return self.buf[:self.n] if self.buf is not None else np.zeros(0, self.dtype)


class ColumnSink:
    """The columns of every event type, filled a block at a time (decode_blocks) in
    place, instead of joining per-block pieces at the end (which needs them twice)."""

    _BASE = ("ts", "cpu", "pid")

    def __init__(self, pages: int = 0):
        # (system, name) -> (ts/cpu/pid columns, field columns)
        self._types: dict[tuple[str, str], tuple[dict[str, _Growing],
                                                 dict[str, _Growing]]] = {}
        self.pages = pages
        """How many pages will be added in all (0: unknown)."""
        self._done = 0

    def add(self, cols: dict[tuple[str, str], EventColumns], pages: int = 0) -> None:
        """Add one block's columns (of ``pages`` pages).  Each column is sized at once
        for the events its type will have at the rate of the pages so far, plus a
        quarter: a column grows (a copy) only when the rate rises by more than that,
        and the part of the estimate never used is never touched."""
        self._done += pages
        for key, c in cols.items():
            got = self._types.get(key)
            if got is None:
                got = self._types[key] = (
                    {n: _Growing(getattr(c, n).dtype) for n in self._BASE},
                    {n: _Growing(a.dtype) for n, a in c.fields.items()})
            base, flds = got
            n_now = base["ts"].n + len(c)
            expect = (n_now * self.pages * 5 // (4 * self._done)
                      if self.pages > self._done > 0 else 0)
            for n, g in base.items():
                g.append(getattr(c, n), expect)
            for n, g in flds.items():
                g.append(c.fields[n], expect)

    def mark(self) -> dict:
        return {key: tuple({n: g.n for n, g in part.items()} for part in parts)
                for key, parts in self._types.items()}

    def rollback(self, mark: dict) -> None:
        """Back to ``mark()``: what was added since is dropped."""
        for key in list(self._types):
            if key not in mark:
                del self._types[key]
                continue
            for part, lengths in zip(self._types[key], mark[key]):
                for n, g in part.items():
                    g.truncate(lengths[n])

    def columns(self) -> dict[tuple[str, str], EventColumns]:
        out = {}
        for (system, name), (base, flds) in self._types.items():
            if base["ts"].n:
                out[(system, name)] = EventColumns(
                    system=system, name=name, **{n: g.array() for n, g in base.items()},
                    fields={n: g.array() for n, g in flds.items()})
        self._types.clear()
        return out


def _walk_loop(data, cpu, hp, he, psize, n_pages) -> PageWalk:
    mv = memoryview(data)
    usable = n_pages * psize
    words = mv[:usable].cast("B").cast("I") if usable else memoryview(b"").cast("I")
    ts_out, off_out, id_out, len_out = [], [], [], []
    ts_append, off_append, id_append, len_append = (ts_out.append, off_out.append,
                                                    id_out.append, len_out.append)
    w = PageWalk(cpu=cpu)
    pw = psize // 4
    dw0 = hp.data_offset // 4
    max_data = psize - hp.data_offset
    commit_word = hp.commit_offset // 4
    pad, ext, stamp, dmax = he.padding, he.time_extend, he.time_stamp, he.data_max_type_len
    for p in range(n_pages):
        base = p * pw
        ts = words[base] | (words[base + 1] << 32)
        commit_raw = words[base + commit_word]
        flags = commit_raw & (MISSED_EVENTS | MISSED_STORED)
        commit = commit_raw & ~(MISSED_EVENTS | MISSED_STORED) & 0xFFFFFFFF
        if commit > max_data or commit % 4:
            w.bad_pages += 1
            continue
        w.pages += 1
        if flags & MISSED_EVENTS:
            if flags & MISSED_STORED and commit + 8 <= max_data:
                i = base + dw0 + commit // 4
                w.missed += words[i] | (words[i + 1] << 32)
            else:
                w.missed_unknown += 1
        i = base + dw0
        end = i + commit // 4
        while i < end:
            hdr = words[i]
            tl = hdr & 31
            if tl and tl <= dmax:
                ts += hdr >> 5
                id_append(words[i + 1] & 0xFFFF)
                ts_append(ts)
                off_append((i + 1) * 4)
                len_append(tl * 4)
                i += 1 + tl
            elif tl == 0:
                if i + 1 >= end:
                    w.bad_pages += 1
                    break
                ln = words[i + 1]
                if ln < 8 or ln % 4 or i + 1 + ln // 4 > end:
                    w.bad_pages += 1
                    break
                ts += hdr >> 5
                id_append(words[i + 2] & 0xFFFF)
                ts_append(ts)
                off_append((i + 2) * 4)
                len_append(ln - 4)
                i += 1 + ln // 4
            elif tl == ext:
                if i + 1 >= end:
                    w.bad_pages += 1
                    break
                ts += (words[i + 1] << 27) | (hdr >> 5)
                i += 2
            elif tl == stamp:
                if i + 1 >= end:
                    w.bad_pages += 1
                    break
                ts = ((words[i + 1] << 27) | (hdr >> 5)) | (ts & _TS_MSB)
                i += 2
            elif tl == pad:
                if (hdr >> 5) == 0:
                    break  # the rest of the page is unused
                if i + 1 >= end:
                    break
                ln = words[i + 1]
                if ln < 4 or ln % 4:
                    w.bad_pages += 1
                    break
                i += 1 + ln // 4
            else:  # unknown type_len: its length is unknown, skip the page's rest
                w.bad_pages += 1
                break
    w.ts = np.array(ts_out, dtype=np.uint64)
    w.off = np.array(off_out, dtype=np.int64)
    w.ids = np.array(id_out, dtype=np.int64)
    w.lens = np.array(len_out, dtype=np.int64)
    return w


def _walk_vectorized(data, cpu, hp, he, psize, n_pages) -> PageWalk:
    w = PageWalk(cpu=cpu)
    pw = psize // 4
    words = np.frombuffer(data, dtype="<u4", count=n_pages * pw).reshape(n_pages, pw)
    flat = words.reshape(-1)
    dw0 = hp.data_offset // 4
    max_data = psize - hp.data_offset
    commit_raw = words[:, hp.commit_offset // 4].astype(np.int64)
    commit = commit_raw & ~(MISSED_EVENTS | MISSED_STORED) & 0xFFFFFFFF
    good = (commit <= max_data) & (commit % 4 == 0)
    w.bad_pages += int((~good).sum())
    w.pages = int(good.sum())
    missed_flag = good & ((commit_raw & MISSED_EVENTS) != 0)
    stored = missed_flag & ((commit_raw & MISSED_STORED) != 0) & (commit + 8 <= max_data)
    if stored.any():
        rows = np.nonzero(stored)[0]
        col = dw0 + commit[rows] // 4
        lo = words[rows, col].astype(np.uint64)
        hi = words[rows, col + 1].astype(np.uint64)
        w.missed = int((lo | (hi << np.uint64(32))).sum())
    w.missed_unknown = int((missed_flag & ~stored).sum())
    # state of the pages still being walked, kept compact (finished pages drop out)
    live = np.nonzero(good & (commit > 0))[0]
    a_page = live
    a_pos = live * pw + dw0                      # flat word index of the next item
    a_end = live * pw + dw0 + commit[live] // 4  # flat word index past the data
    a_ts = (words[live, 0].astype(np.uint64) |
            (words[live, 1].astype(np.uint64) << np.uint64(32)))
    a_rank = np.zeros(live.size, dtype=np.int64)  # events found so far in the page
    pad, ext, stamp, dmax = he.padding, he.time_extend, he.time_stamp, he.data_max_type_len
    msb = np.uint64(_TS_MSB)
    s27 = np.uint64(27)
    last = flat.size - 1
    ev_page, ev_rank, ev_word, ev_ts, ev_len = [], [], [], [], []
    bad = np.zeros(n_pages, dtype=bool)
    while a_page.size:
        hdr = flat[a_pos]
        tl = hdr & 31
        if tl.min() > 0 and tl.max() <= dmax:
            # the common step: every page's next item is a small data event (each
            # operation here is on every page still walked: fewer is faster)
            a_ts = a_ts + (hdr >> 5)
            word = a_pos + 1
            ev_page.append(a_page); ev_rank.append(a_rank); ev_word.append(word)
            ev_ts.append(a_ts); ev_len.append(tl)
            a_rank = a_rank + 1
            a_pos = word + tl
            done = None
        else:
            tl = tl.astype(np.int64)
            m = (tl > 0) & (tl <= dmax)
            delta = (hdr >> 5).astype(np.uint64)
            has_next = a_pos + 1 < a_end
            nxt = flat[np.minimum(a_pos + 1, last)].astype(np.uint64)
            ln = nxt.astype(np.int64)
            t = a_ts
            step = np.where(m, 1 + tl, 0)
            t = np.where(m, t + delta, t)
            okl = (tl == 0) & has_next & (ln >= 8) & (ln % 4 == 0) & (a_pos + 1 + ln // 4 <= a_end)
            t = np.where(okl, t + delta, t)
            step = np.where(okl, 1 + ln // 4, step)
            ev = m | okl
            if ev.any():
                ev_page.append(a_page[ev]); ev_rank.append(a_rank[ev])
                ev_word.append(np.where(m, a_pos + 1, a_pos + 2)[ev])
                ev_ts.append(t[ev]); ev_len.append(np.where(m, tl, (ln - 4) >> 2)[ev])
            me = (tl == ext) & has_next
            t = np.where(me, t + ((nxt << s27) | delta), t)
            ms = (tl == stamp) & has_next
            t = np.where(ms, ((nxt << s27) | delta) | (t & msb), t)
            step = np.where(me | ms, 2, step)
            padok = (ln >= 4) & (ln % 4 == 0)
            mp = (tl == pad) & (delta != 0) & has_next
            step = np.where(mp & padok, 1 + ln // 4, step)
            bad_m = ((tl == 0) & ~okl) | (((tl == ext) | (tl == stamp)) & ~has_next) \
                | (mp & ~padok) | ((tl > dmax) & (tl != pad) & (tl != ext) & (tl != stamp))
            bad[a_page[bad_m]] = True
            a_ts = t
            a_rank = a_rank + ev
            a_pos = a_pos + step
            done = (step == 0) | bad_m
        keep = a_pos < a_end
        if done is not None:
            keep &= ~done
        if not keep.all():
            a_page, a_pos, a_end, a_ts, a_rank = (a_page[keep], a_pos[keep], a_end[keep],
                                                  a_ts[keep], a_rank[keep])
    w.bad_pages += int(bad.sum())
    if ev_page:
        page = np.concatenate(ev_page)
        rank = np.concatenate(ev_rank)
        # place each event by (page, rank in page): a scatter, not a sort
        counts = np.bincount(page, minlength=n_pages)
        start = np.cumsum(counts) - counts
        dest = start[page] + rank
        n = page.size
        word = np.empty(n, np.int64)
        word[dest] = np.concatenate(ev_word)
        w.ts = np.empty(n, np.uint64)
        w.ts[dest] = np.concatenate(ev_ts)
        w.lens = np.empty(n, np.int64)
        w.lens[dest] = np.concatenate(ev_len)  # in words
        w.lens <<= 2
        w.off = word * 4
        w.ids = (flat[word] & 0xFFFF).astype(np.int64)
    else:
        w.ts = np.zeros(0, np.uint64)
        w.off = w.ids = w.lens = np.zeros(0, np.int64)
    return w


# -- kernel stacks (the stacktrace trigger) ---------------------------------------------

_CONTEXT_FLAGS = 0x08 | 0x10 | 0x40  # TRACE_FLAG_HARDIRQ | SOFTIRQ | NMI (common_flags)


def pair_stacks(data: bytes | memoryview, walk: PageWalk, stack_id: int,
                open_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which event each kernel_stack event of one CPU belongs to: (event positions,
    stack positions) in the walk, pairwise.

    A conditional stacktrace trigger writes the stack while its event is reserved
    but not yet committed, so the stack follows its event; an interrupt in between
    nests its own event and stack inside the pair.  Events of ``open_ids`` open a
    bracket and stacks close the innermost open one: each stack is matched to the
    last event before it at its own nesting depth.  A pair must also agree on the pid
    and the interrupt context (common_flags); stacks that match nothing (their event
    lost, or never recorded) are left out, and counted by the caller."""
    ids = walk.ids
    if ids is None or not ids.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    is_stack = ids == stack_id
    is_open = np.isin(ids, np.fromiter(open_ids, np.int64))
    pos = np.flatnonzero(is_stack | is_open)
    if not pos.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    closing = is_stack[pos]
    # the usual case, a stack right after its event, needs no sort: such a pair is an
    # innermost bracket, and taking it out leaves the rest's nesting as it was
    adj = np.flatnonzero(~closing[:-1] & closing[1:])
    ev0, st0 = pos[adj], pos[adj + 1]
    rest = np.ones(pos.size, bool)
    rest[adj] = rest[adj + 1] = False
    pos, closing = pos[rest], closing[rest]
    step = np.where(closing, -1, 1)
    depth = np.cumsum(step)
    level = np.where(closing, depth + 1, depth)  # a stack's level: the depth before it
    order = np.lexsort((pos, level))
    so, sl, sc = pos[order], level[order], closing[order]
    m = np.flatnonzero(sc[1:] & ~sc[:-1] & (sl[1:] == sl[:-1]))
    ev = np.concatenate([ev0, so[m]])
    st = np.concatenate([st0, so[m + 1]])
    if ev.size:
        v = _Views(data)
        offs = walk.off
        same = ((_gather_int(v, offs[ev] + 4, 4, True) == _gather_int(v, offs[st] + 4, 4, True))
                & ((_gather_int(v, offs[ev] + 2, 1, False) & _CONTEXT_FLAGS)
                   == (_gather_int(v, offs[st] + 2, 1, False) & _CONTEXT_FLAGS)))
        ev, st = ev[same], st[same]
    return ev, st


def stack_refs(data: bytes | memoryview, walk: PageWalk, stack_pos: np.ndarray,
               fmt: EventFormat) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset of the first return address, number of entries) of each
    kernel_stack event at ``stack_pos``.  The format's ``caller`` array is declared with
    a fixed size, but the kernel writes ``size`` entries (the event's length says how
    many fit)."""
    size_f, caller_f = fmt.field("size"), fmt.field("caller")
    if not stack_pos.size or size_f is None or caller_f is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    offs = walk.off[stack_pos]
    room = (walk.lens[stack_pos] - caller_f.offset) // 8
    n = np.minimum(_gather_int(_Views(data), offs + size_f.offset, 4, True).astype(np.int64),
                   room)
    return offs + caller_f.offset, np.maximum(n, 0)


def stack_column(data: bytes | memoryview, starts: np.ndarray, n: np.ndarray,
                 j: int) -> np.ndarray:
    """Entry ``j`` (0 = innermost) of each stack, 0 where the stack is shorter."""
    out = np.zeros(starts.shape[0], np.uint64)
    has = n > j
    if has.any():
        out[has] = _gather_int(_Views(data), starts[has] + 8 * j, 8, False)
    return out


def stack_rows(data: bytes | memoryview, walk: PageWalk, stack_pos: np.ndarray,
               fmt: EventFormat) -> np.ndarray:
    """(n, depth) uint64 return addresses of the kernel_stack events at ``stack_pos``,
    innermost first, zero past each stack's end (see stack_refs)."""
    starts, n = stack_refs(data, walk, stack_pos, fmt)
    if not starts.size:
        return np.zeros((0, 1), np.uint64)
    depth = max(int(n.max()), 1)
    return np.stack([stack_column(data, starts, n, j) for j in range(depth)], axis=1)


# -- field extraction ------------------------------------------------------------------

def _int_dtype(size: int, signed: bool):
    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[size] if signed else \
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size]


class _Views:
    """The same bytes seen as u8 / u32 arrays, for cheap aligned gathers."""

    def __init__(self, data):
        self.u8 = np.frombuffer(data, dtype=np.uint8)
        n4 = self.u8.size // 4
        self.u32 = np.frombuffer(data, dtype="<u4", count=n4)


# Columns are built in slices of this many rows so that temporaries stay small (and are
# reused by malloc) instead of faulting in fresh memory for each step: page faults, not
# arithmetic, dominated the decode of a 10 M-event recording here.
_CHUNK = 1 << 18


def _word_gather(v: "_Views", wi: np.ndarray, size: int) -> np.ndarray:
    """The 4- or 8-byte little-endian values at word indexes ``wi`` (unsigned): one
    word gather, or two (``wi`` is changed then)."""
    lo = v.u32[wi]
    if size == 4:
        return lo
    wi += 1
    hi = v.u32[wi].astype(np.uint64)
    hi <<= np.uint64(32)
    hi |= lo
    return hi


def _gather_int(v: "_Views", offs: np.ndarray, size: int, signed: bool) -> np.ndarray:
    dtype = np.dtype(_int_dtype(size, signed)).newbyteorder("<")
    n = offs.size
    out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    # payloads start on 4-byte boundaries, so most fields are word-aligned: two word
    # gathers instead of eight byte gathers
    aligned = (size in (4, 8) and not (offs % 4).any()
               and int(offs.max()) + size <= v.u32.size * 4)
    for i in range(0, n, _CHUNK):
        o = offs[i:i + _CHUNK]
        dst = out[i:i + _CHUNK]
        if aligned:
            dst.view(np.uint32 if size == 4 else np.uint64)[:] = _word_gather(v, o >> 2,
                                                                              size)
        else:
            idx = o[:, None] + np.arange(size, dtype=np.int64)
            np.minimum(idx, v.u8.size - 1, out=idx)
            dst[:] = np.ascontiguousarray(v.u8[idx]).view(dtype).ravel()
    return out


# _STR_MASK[k]: the low k bytes of a u64 word
_STR_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], np.uint64)


def _string_bytes(v: "_Views", starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width / 8) u64 rows of the ``width`` bytes from each start (byte gathers;
    past the data's end, its last byte again)."""
    idx = starts[:, None] + np.arange(width, dtype=np.int64)
    np.minimum(idx, v.u8.size - 1, out=idx)
    return np.ascontiguousarray(v.u8[idx]).view("<u8")


def _string_rows(v: "_Views", starts: np.ndarray, lens: np.ndarray, w8: int) -> np.ndarray:
    """(n, w8) u64 rows holding each string's bytes, zero past its length."""
    width = w8 * 8
    n = starts.size
    # the strings of one field usually start at one offset within their events, so at
    # one byte within a word: each row is then one copy of whole words from a window
    # view (no n x width index to build), shifted by that byte
    r = int(starts[0]) & 3 if n else 0
    nw = (width + r + 3) // 4
    if n and v.u32.size >= nw and not ((starts & 3) != r).any():
        words = starts >> 2
        win = np.lib.stride_tricks.as_strided(v.u32, shape=(v.u32.size - nw + 1, nw),
                                              strides=(4, 4), writeable=False)
        fits = words + nw <= v.u32.size  # all but strings in the data's last bytes
        if fits.all():
            q = np.ascontiguousarray(win[words].view(np.uint8)[:, r:r + width]).view("<u8")
        else:
            q = np.empty((n, w8), np.uint64)
            q[fits] = win[words[fits]].view(np.uint8)[:, r:r + width].view("<u8")
            q[~fits] = _string_bytes(v, starts[~fits], width)
    else:
        q = _string_bytes(v, starts, width)
    # keep only each string's own bytes (the rest belongs to other fields/events)
    for j in range(w8):
        valid = lens - 8 * j
        np.clip(valid, 0, 8, out=valid)
        q[:, j] &= _STR_MASK[valid]
    return q


def _second_hash_agrees(h2: np.ndarray, first: np.ndarray, inv: np.ndarray) -> bool:
    return bool(np.array_equal(h2[first][inv], h2))


def _gather_strings(v: "_Views", starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Strings at buf[starts:starts+lens] (NUL-terminated within), as an object array.

    Few distinct strings (cache names) among many events: each row is hashed to one
    u64, the distinct hashes give one representative row each; a second, independent
    hash of every row must agree with its representative's (else: exact comparison)."""
    n = starts.size
    if n == 0:
        return np.zeros(0, dtype=object)
    lens = np.clip(lens, 0, _MAX_STRING)
    width = int(lens.max())
    if width <= 0:
        return np.full(n, "", dtype=object)
    w8 = (width + 7) // 8
    # two independent 64-bit hashes per row in one pass; rows with the same first hash
    # must have the same second one, or the rows are compared exactly
    h = np.empty(n, dtype=np.uint64)
    h2 = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, n, _CHUNK):
            q = _string_rows(v, starts[i:i + _CHUNK], lens[i:i + _CHUNK], w8)
            hc = np.zeros(q.shape[0], dtype=np.uint64)
            hd = np.full(q.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
            for j in range(w8):
                hc *= np.uint64(0x100000001B3)
                hc ^= q[:, j]
                hd ^= q[:, j]
                hd *= np.uint64(0xFF51AFD7ED558CCD)
                hd ^= hd >> np.uint64(29)
            h[i:i + _CHUNK] = hc
            h2[i:i + _CHUNK] = hd
    _uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    reps = _string_rows(v, starts[first], lens[first], w8)
    if _second_hash_agrees(h2, first, inv):
        texts = [r.tobytes() for r in reps]
    else:  # a hash collision: do it exactly (slow, never seen in practice)
        q = _string_rows(v, starts, lens, w8)
        fixed = np.ascontiguousarray(q).view(f"S{w8 * 8}").ravel()
        uniq, inv = np.unique(fixed, return_inverse=True)
        texts = [bytes(u) for u in uniq]
        inv = inv.ravel()
    return str_column(inv, [t.split(b"\0", 1)[0].decode("utf-8", "replace") for t in texts])


def _record_size(fmt: EventFormat) -> int:
    """Bytes a record of ``fmt`` needs to hold every field its format names.  Neither
    decoder decodes a shorter record (a damaged page: a flipped bit in its length): the
    fields that fit would make an event the kernel never wrote.  It is counted instead,
    in PageWalk.short_records."""
    return max((f.offset + f.size for f in fmt.fields + fmt.common_fields), default=0)


def _decodable(f: Field) -> bool:
    if f.data_loc or f.rel_loc:
        return True
    if f.array_len is not None:
        return f.is_string
    return f.size in (1, 2, 4, 8)


class _Rows:
    """The payload offsets of one event type's rows, and what every field gather from
    them needs, computed once per type instead of once per field: their word indexes
    (payloads start on 4-byte boundaries) and the largest offset."""

    __slots__ = ("offs", "words", "last")

    def __init__(self, offs: np.ndarray):
        self.offs = offs
        self.last = int(offs.max()) if offs.size else 0
        # whole-CPU decodes go a slice at a time (_gather_int): this is for blocks
        self.words = (offs >> 2 if 0 < offs.size <= _CHUNK and not (offs & 3).any()
                      else None)


def _gather_field(v: "_Views", rows: _Rows, delta: int, size: int, signed: bool
                  ) -> np.ndarray:
    """_gather_int(v, rows.offs + delta, size, signed), with one or two word gathers
    when the field lies on word boundaries (most do)."""
    if (rows.words is None or size not in (4, 8) or delta % 4
            or rows.last + delta + size > v.u32.size * 4):
        return _gather_int(v, rows.offs + delta, size, signed)
    got = _word_gather(v, rows.words + (delta >> 2), size)
    return got.view(_int_dtype(size, True)) if signed else got


def _field_column(buf: "_Views", rows: _Rows, lens: np.ndarray, f: Field) -> np.ndarray:
    offs = rows.offs
    if f.data_loc or f.rel_loc:
        loc = _gather_field(buf, rows, f.offset, 4, False).astype(np.int64)
        start = loc & 0xFFFF
        if f.rel_loc:
            start = start + f.offset + 4
        ln = loc >> 16
        ok = start + ln <= lens
        ln = np.where(ok, ln, 0)
        return _gather_strings(buf, offs + np.where(ok, start, 0), ln)
    if f.array_len is not None:
        if f.is_string:
            return _gather_strings(buf, offs + f.offset, np.full(offs.size, f.size, np.int64))
        return None  # numeric arrays are not needed by any report; left out, not guessed
    if f.size in (1, 2, 4, 8):
        return _gather_field(buf, rows, f.offset, f.size, f.signed)
    return None


def decode_columns(data: bytes | memoryview, walk: PageWalk,
                   formats_by_id: Mapping[int, EventFormat],
                   stack: np.ndarray | None = None,
                   fields: Callable[[str, str], Iterable[str]] | None = None
                   ) -> dict[tuple[str, str], EventColumns]:
    """Decode the events found by ``walk_pages`` into columns, one set per event type.
    ``stack``: per walk event, its stack code (see EventColumns.stack), or None.
    Fields are decoded on first access (from ``data``, kept alive for it); with
    ``fields(system, name)``, the fields it names are decoded now into a dict and the
    others never: the columns then hold no reference to ``data``."""
    out: dict[tuple[str, str], EventColumns] = {}
    if walk.ts is None or walk.ts.size == 0:
        return out
    buf = _Views(data)
    ids, offs, lens, ts = walk.ids, walk.off, walk.lens, walk.ts
    short = 0
    # ids are 16 bits (common_type): a count per id finds the types present at once
    for eid in np.flatnonzero(np.bincount(ids, minlength=1)):
        fmt = formats_by_id.get(int(eid))
        if fmt is None:
            continue
        sel = ids == eid
        o, ln = offs[sel], lens[sel]
        good = ln >= _record_size(fmt)
        st = stack[sel] if stack is not None else None
        if not good.all():
            short += int(good.size - np.count_nonzero(good))
            o, ln = o[good], ln[good]
            sel_ts = ts[sel][good]
            st = st[good] if st is not None else None
        else:
            sel_ts = ts[sel]
        rows = _Rows(o)
        pidf = fmt.field("common_pid")
        pid = (_gather_field(buf, rows, pidf.offset, pidf.size, True).astype(np.int32)
               if pidf and pidf.size in (1, 2, 4, 8)  # a damaged format can say any size
               else np.full(o.size, -1, np.int32))
        decodable = {f.name: f for f in fmt.fields if _decodable(f)}
        if fields is not None:
            cols = {n: _field_column(buf, rows, ln, decodable[n])
                    for n in fields(fmt.system, fmt.name) if n in decodable}
        else:
            cols = LazyFields(decodable, lambda name, rows=rows, ln=ln, d=decodable:
                              _field_column(buf, rows, ln, d[name]))
        out[(fmt.system, fmt.name)] = EventColumns(
            system=fmt.system, name=fmt.name, ts=sel_ts, cpu=np.full(o.size, walk.cpu, np.int32),
            pid=pid, fields=cols, stack=st)
    walk.short_records = short
    return out


def merge_columns(parts: Iterable[dict[tuple[str, str], EventColumns]]
                  ) -> dict[tuple[str, str], EventColumns]:
    """Concatenate per-CPU columns of the same event type.

    Rows stay grouped by CPU, each CPU in time order: nothing that aggregates needs a
    global time order, and sorting 10 M rows costs more than the rest of a report
    (code that needs it sorts by ``ts``)."""
    acc: dict[tuple[str, str], list[EventColumns]] = {}
    for part in parts:
        for key, cols in part.items():
            acc.setdefault(key, []).append(cols)
    out = {}
    for key, lst in acc.items():
        if len(lst) == 1:
            out[key] = lst[0]
            continue
        names = set(lst[0].fields)
        for c in lst[1:]:
            names &= set(c.fields)
        names = [n for n in lst[0].fields if n in names]
        if all(type(c.fields) is dict for c in lst):
            # decoded already (load(fields=...)): join them now, each CPU's column
            # dropped as soon as it is copied
            fields = {n: np.concatenate([c.fields.pop(n) for c in lst]) for n in names}
        else:
            fields = LazyFields(names, lambda n, lst=lst:
                                np.concatenate([c.fields[n] for c in lst]))
        out[key] = EventColumns(
            system=lst[0].system, name=lst[0].name,
            ts=np.concatenate([c.ts for c in lst]),
            cpu=np.concatenate([c.cpu for c in lst]),
            pid=np.concatenate([c.pid for c in lst]),
            stack=(np.concatenate([c.stack if c.stack is not None
                                   else np.full(len(c), -1, np.int32) for c in lst])
                   if any(c.stack is not None for c in lst) else None),
            fields=fields)
    return out


# -- one event at a time (stream, API) ------------------------------------------------

_STRUCT = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
           (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


_U32 = struct.Struct("<I")


class _EventDecoder:
    """One event format compiled for decoding payloads one at a time: what the format
    says about each field (offset, struct, string or not) is worked out once per format,
    not once per event (stream and read() decode every event through it)."""

    def __init__(self, fmt: EventFormat):
        self.size = _record_size(fmt)
        """A shorter payload is not decoded (see _record_size): the caller checks."""
        pidf = fmt.field("common_pid")
        # as decode_columns reads it: signed, kept to 32 bits; -1 when the format gives
        # it a size no integer has (a damaged format)
        self.pid_unpack = (struct.Struct("<" + _STRUCT[(pidf.size, True)]).unpack_from
                           if pidf is not None and (pidf.size, True) in _STRUCT else None)
        self.pid_offset = pidf.offset if pidf is not None else None
        # (name, offset, end, unpacker or None for a string, data_loc kind) in format order
        self.plan = []
        for f in fmt.fields:
            end = f.offset + f.size
            if f.data_loc or f.rel_loc:
                self.plan.append((f.name, f.offset, end, None, "rel" if f.rel_loc else "loc"))
            elif f.array_len is not None:
                if f.is_string:
                    self.plan.append((f.name, f.offset, end, None, "array"))
            elif (f.size, f.signed) in _STRUCT:
                self.plan.append((f.name, f.offset, end,
                                  struct.Struct("<" + _STRUCT[(f.size, f.signed)]).unpack_from,
                                  None))

    def __call__(self, payload: bytes | memoryview) -> tuple[int, dict]:
        """(pid, fields) of a payload of at least ``self.size`` bytes."""
        n = len(payload)
        if self.pid_unpack is not None:
            pid = self.pid_unpack(payload, self.pid_offset)[0]
            if not -0x80000000 <= pid <= 0x7FFFFFFF:  # an 8-byte pid, as int32 keeps it
                pid = (pid + 0x80000000) % 0x100000000 - 0x80000000
        else:
            pid = -1
        fields: dict[str, int | str] = {}
        for name, off, end, unpack, kind in self.plan:
            if unpack is not None:
                fields[name] = unpack(payload, off)[0]
                continue
            if kind == "array":
                raw = bytes(payload[off:end])
            else:
                loc = _U32.unpack_from(payload, off)[0]
                start, ln = loc & 0xFFFF, loc >> 16
                if kind == "rel":
                    start += end
                raw = bytes(payload[start:start + ln]) if start + ln <= n else b""
            fields[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return pid, fields


def decode_event(payload: bytes | memoryview, fmt: EventFormat) -> tuple[int, dict]:
    """(pid, fields) of one event's payload; ParseError when it is shorter than its
    format says."""
    dec = _EventDecoder(fmt)
    if len(payload) < dec.size:
        raise ParseError(f"{fmt.system}:{fmt.name}: a record of {len(payload)} bytes, "
                         f"its format needs {dec.size}")
    return dec(payload)


def iter_events(data: bytes | memoryview, walk: PageWalk, formats_by_id: Mapping[int, EventFormat],
                comm_of=None, decoders: dict | None = None) -> Iterator[Event]:
    """Events of one CPU, in order, as ``Event`` objects.  ``decoders`` (event id ->
    compiled decoder) can be kept by a caller that decodes page after page.  Records
    shorter than their format are left out and counted in ``walk.short_records`` (as
    decode_columns does), as they are met."""
    mv = memoryview(data)
    comm_of = comm_of or (lambda pid: "<...>")
    if decoders is None:
        decoders = {}
    short = walk.short_records = 0
    for ts, off, eid, ln in zip(walk.ts.tolist(), walk.off.tolist(), walk.ids.tolist(),
                                walk.lens.tolist()):
        fmt = formats_by_id.get(eid)
        if fmt is None:
            continue
        dec = decoders.get(eid)
        if dec is None:
            dec = decoders[eid] = _EventDecoder(fmt)
        if ln < dec.size:
            short += 1
            walk.short_records = short
            continue
        pid, fields = dec(mv[off:off + ln])
        yield Event(ts=ts, cpu=walk.cpu, pid=pid, comm=comm_of(pid), system=fmt.system,
                    name=fmt.name, fields=MappingProxyType(fields))
