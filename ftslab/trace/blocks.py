"""Decoding a CPU's pages block by block (``decode_blocks``), on this process and a forked
helper at once, into growing columns (``ColumnSink``).

Pure over the pages it is given (bytes or ``zstd_pages.CompressedPages``): the helper is
decode_helper.py's, and the results never depend on it.
"""
from __future__ import annotations

import struct
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ftslab.dataset import EventColumns, join_str_columns, str_column
from ftslab.trace import decode_helper as forked
from ftslab.trace.columns import decode_columns
from ftslab.trace.formats import EventFormat, HeaderEvent, HeaderPage
from ftslab.trace import pages
from ftslab.trace.pages import page_size_of, missed_spans, PageWalk

__all__ = ["decode_blocks", "ColumnSink"]


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
    arrays).  A CPU's pages are bytes, or a zstd_pages.CompressedPages (``len()``,
    ``read(start, end)``, ``whole()``: decompressed a block at a time).  Nothing per
    event outlives its block but the columns, and each block's gathers stay within 8 MiB
    of pages (cache hits, not misses).  A CPU with kernel stacks (event ``stack_id``)
    ends it: they pair across blocks, so that CPU and those after it are left to the
    caller, decoded whole (fewer walks than CPUs come back, and ``sink`` holds the CPUs
    before it only).  ``each_block(cpu, pages)`` is told the pages of a CPU done so far
    after each block.

    ``share``: decode blocks in a forked child process too (see decode_helper.py), the
    columns still added in block order; None: when there are blocks enough and a
    second CPU to run it on.  The walk holds the GIL, so threads would not help."""
    psize = page_size_of(hp, he, page_size, little_endian)
    # the pages of a CPU: bytes, or kept compressed (CompressedPages: read(start, end))
    views = [data if hasattr(data, "whole") else memoryview(data) for _cpu, data in cpus]
    items = [(c, first, min(pages.BLOCK_PAGES, len(v) // psize - first))
             for c, v in enumerate(views)
             for first in range(0, len(v) // psize, pages.BLOCK_PAGES)]
    if share is None:
        share = len(items) >= _SHARE_MIN_BLOCKS and forked.usable_cpus() > 1
    ts_at = hp.timestamp_offset
    ts_of = struct.Struct("<Q" if little_endian else ">Q").unpack_from

    def block(k: int):
        c, first, count = items[k]
        cpu, v = cpus[c][0], views[c]
        start, end = first * psize, (first + count) * psize
        blk = v[start:end] if isinstance(v, memoryview) else v.read(start, end)
        part = pages.walk_all(blk, cpu, hp, he, psize, count)
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
