"""Live top: allocations per second and live bytes by cache, call site or command.

Setup, signals and cleanup are run.run_session's, as for ``stream``.  The reader
here does not decode event by event: it collects each CPU's raw pages for one interval
and decodes them all at once with the report's columnar code (columns.decode_columns,
analysed.Analysis), so it keeps up with what ``record`` keeps up with.  Across intervals
it keeps the allocations not yet freed (pointer, time, bytes, keys) as arrays and pairs
each interval's frees with them by pointer, the way the report pairs a whole recording.

What it cannot see it says: events the kernel dropped (page flags and per-CPU stats)
are the LOST counter; frees of objects allocated before top started match nothing and
are not counted as live anything.
"""
from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ftslab.trace import columns as columns_mod
from ftslab.trace import pages as pages_mod
from ftslab.analysis.counters import KEYS, LiveTable, interval_of
from ftslab.dataset import Dataset, Metadata
from ftslab.kernel.procfs import read_comm, read_slab_aliases
from ftslab.kernel.tracefs import Tracefs
from ftslab.session.options import SessionOptions
from ftslab.session.run import run_session, RunResult
from ftslab.session.spooler import PIPE_BYTES, close_quietly, splice_pipe
from ftslab.session.livepages import live_formats, read_raw_page
from ftslab.trace.loader import parse_cmdlines


__all__ = ["TOP_KEYS", "TOP_EVENTS", "TopFrame", "TopState", "LiveReader", "run_live", "top"]


TOP_KEYS = KEYS
"""cache, call site, command: the keys serve counts by too (analysis/counters.py)."""


BACKLOG_BYTES = 256 << 20
"""Most page bytes top holds waiting to be decoded (all CPUs).  When decoding falls
behind the input for long, the oldest pages are dropped: their events are counted
(the pages are walked, not decoded) and shown as DROPPED, never silently."""


TOP_EVENTS = ("kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kfree", "kmem:kmem_cache_free")
"""What top records: the slab allocators' tracepoints (its rows are slab rows)."""


@dataclass
class TopFrame:
    """One refresh: rates over the last interval, live bytes since top started."""

    elapsed: float
    interval: float
    events: int
    """Events decoded since the start."""
    rate: float
    """Events per second over the last interval."""
    lost: int
    """Events the kernel dropped since the start (the reader fell behind, or -b too
    small)."""
    dropped: int
    """Events top read but dropped undecoded (its decoding fell behind: BACKLOG_BYTES)."""
    live_objects: int
    live_bytes: int
    rows: dict[str, list[dict]] = field(default_factory=dict)
    """key -> rows (key label, allocs_per_s, bytes_per_s, live, live_bytes), by
    bytes_per_s then live_bytes."""


class TopState:
    """The aggregation, fed one interval's Dataset at a time (pure: no I/O): rates from
    the interval's allocations, live from analysis/counters.LiveTable (what is still
    outstanding, paired with each interval's frees by pointer; one address holds one
    object)."""

    def __init__(self):
        self.table = LiveTable(live_max=1 << 62)  # top's live set: since it started
        self.seen: dict[str, dict[str, None]] = {k: {} for k in TOP_KEYS}
        """Labels in the order first seen (the tie-break of the rows)."""
        self.events = 0

    def live_totals(self) -> tuple[int, int]:
        """(live objects, live bytes)."""
        return len(self.table), int(self.table.bytes.sum())

    def feed(self, ds: Dataset, seconds: float, top: int | None = 20) -> dict[str, list[dict]]:
        """Aggregate one interval: rates from its allocations; live from the pairing of
        its frees with everything still outstanding."""
        iv = interval_of(ds)
        self.events += iv.events
        iv.update(self.table)
        out = {}
        secs = max(seconds, 1e-6)
        for k in TOP_KEYS:
            rate = iv.allocs[k]
            live = self.table.by(k)
            seen = self.seen[k]
            for lab in list(rate) + list(live):
                seen.setdefault(lab, None)
            rank = {lab: i for i, lab in enumerate(seen)}
            labels = sorted(set(rate) | set(live), key=lambda lab: (
                -rate.get(lab, (0, 0))[1], -live.get(lab, (0, 0))[1],
                -live.get(lab, (0, 0))[0], rank[lab]))
            rows = []
            for lab in labels[:top]:
                n, b = rate.get(lab, (0, 0))
                ln, lb = live.get(lab, (0, 0))
                rows.append({k: lab, "allocs_per_s": round(n / secs, 1),
                             "bytes_per_s": int(round(b / secs)), "live": int(ln),
                             "live_bytes": int(lb)})
            out[k] = rows
            if len(seen) > 4 * (len(rate) + len(live)) + 4096:
                self.seen[k] = {lab: None for lab in seen if lab in rate or lab in live}
        return out


class LiveReader:
    """run.run_session's reader (for top, and for serve with its own ``state``).  The session loop calls pump(): whole pages move
    from trace_pipe_raw into a pipe by splice (as record's spooler does) and out of it
    in large reads.  Once per interval the pages collected go to a worker thread that
    decodes them, feeds TopState and hands a TopFrame to ``show``; pumping goes on
    meanwhile, so the kernel's buffer is drained while numpy decodes."""

    def __init__(self, session, interval: float, show: Callable[[TopFrame], None],
                 top: int | None, symbolize, slab_aliases: dict | None = None,
                 state=None, tick_bytes: int | None = None):
        tracefs = session.tracefs
        self.hp, self.he, self.page_size, self.fmts = live_formats(session)
        self.formats = {(f.system, f.name): f for f in self.fmts.values()}
        self.inst = session.instance
        # with -p/--comm, the frees of the whole system come from a second instance
        self.instances = [self.inst] + ([session.free_instance]
                                        if session.free_instance is not None else [])
        self.cpus = session.cpus
        self.keys = [(k, c) for k in range(len(self.instances)) for c in self.cpus]
        """One page source per instance and CPU: (instance index, cpu)."""
        self.tracefs = tracefs
        self.fds: dict[tuple[int, int], int] = {}
        self.pipes: dict[tuple[int, int], tuple[int, int]] = {}
        self.can_splice = hasattr(os, "splice")
        try:
            for k, c in self.keys:
                self.fds[(k, c)] = self.instances[k].raw_open(c)
                self.pipes[(k, c)] = splice_pipe()
        except BaseException:
            self.close()
            raise
        self.pages: dict[tuple[int, int], list[bytes]] = {key: [] for key in self.keys}
        self.interval = interval
        self.tick_bytes = tick_bytes
        """Decode as soon as this many page bytes wait (and the worker is free), before
        the interval is up: the memory one decoding takes is then bounded whatever the
        event rate (None: once per interval, as top)."""
        self.show = show
        self.top = top
        self.symbolize = symbolize
        self.slab_aliases = slab_aliases or {}
        """Merged caches (procfs.read_slab_aliases): the cache rows name them by all
        their names, as the report does."""
        self.state = state if state is not None else TopState()
        """What each interval's Dataset is fed to: ``feed(ds, seconds, top)`` returns
        the rows of the TopFrame."""
        self.start = self.last = time.monotonic()
        self.lost = 0
        self.comms: dict[int, str] = {0: "<idle>"}
        self._worker: threading.Thread | None = None
        self.error: BaseException | None = None
        self.backlog = 0
        self.dropped = 0
        self.to_drop: list[tuple[int, list[bytes]]] = []
        self._drop_lock = threading.Lock()

    def _read_partial(self, cpu: int) -> int:
        """Pages the writer is still filling (splice moves only full ones)."""
        moved = 0
        for key in self.keys:
            if key[1] != cpu:
                continue
            while True:
                page = read_raw_page(self.fds[key], self.page_size)
                if page is None:
                    break
                moved += len(page)
                self.pages[key].append(page.ljust(self.page_size, b"\0"))
                self.backlog += self.page_size
        return moved

    def _drop_oldest(self) -> None:
        """Set aside the older half of what waits on each CPU: the worker counts its
        events (a walk, no decoding) at its next tick.  Nothing is done to them here:
        the pump must go on moving pages, or the kernel starts losing events too."""
        with self._drop_lock:
            for key in self.keys:
                pages = self.pages[key]
                k = len(pages) // 2
                if k:
                    self.to_drop.append((key[1], pages[:k]))
                    self.pages[key] = pages[k:]
                    self.backlog -= sum(len(p) for p in pages[:k])

    def _count_dropped(self) -> None:
        with self._drop_lock:
            todo, self.to_drop = self.to_drop, []
        for cpu, pages in todo:
            walk = pages_mod.walk_pages(b"".join(pages), cpu, self.hp, self.he, self.page_size)
            self.dropped += int(walk.ts.size)
            self.lost += walk.missed + walk.missed_unknown

    def pump(self, cpu: int) -> int:
        moved = sum(self._pump(key) for key in self.keys if key[1] == cpu)
        if not self.can_splice:
            moved += self._read_partial(cpu)
        if self.backlog > BACKLOG_BYTES:
            self._drop_oldest()
        due = time.monotonic() - self.last >= self.interval or (
            self.tick_bytes is not None and self.backlog >= self.tick_bytes)
        if cpu == self.cpus[-1] and due and (
                self._worker is None or not self._worker.is_alive()):
            if self.error is not None:
                raise self.error
            for c in self.cpus:
                self._read_partial(c)
            now = time.monotonic()
            batch = self.pages
            self.pages = {key: [] for key in self.keys}
            self.backlog = 0
            seconds, self.last = now - self.last, now
            self._worker = threading.Thread(target=self._tick, args=(batch, seconds, now),
                                            daemon=True)
            self._worker.start()
        return moved

    def _pump(self, key: tuple[int, int]) -> int:
        """Whole pages of one instance's CPU, moved by splice."""
        moved = 0
        src = self.fds[key]
        r, w = self.pipes[key]
        while self.can_splice:
            try:
                n = os.splice(src, w, PIPE_BYTES, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS):
                    self.can_splice = False
                    break
                raise
            if n <= 0:
                break
            moved += n
            while n:
                b = os.read(r, n)
                n -= len(b)
                self.pages[key].append(b)
                self.backlog += len(b)
        return moved

    def _cmdlines(self, pids) -> dict[int, str]:
        """The comm of each pid, read afresh each interval (a pid is reused by another
        program; a cache kept for the whole session would name it wrongly and grow
        with every pid the machine ever ran)."""
        self.comms = {0: "<idle>"}
        saved = None
        for pid in pids:
            if pid in self.comms:
                continue
            try:
                self.comms[pid] = read_comm(pid) or "<...>"
                continue
            except Exception:
                pass
            if saved is None:  # the task has exited: the kernel's saved comms, read once
                try:
                    saved = parse_cmdlines(self.tracefs.read("saved_cmdlines"))
                except Exception:
                    saved = {}
            self.comms[pid] = saved.get(pid, "<...>")
        return self.comms

    def _tick(self, batch: dict[tuple[int, int], list[bytes]], seconds: float,
              now: float) -> None:
        try:
            self._count_dropped()
            parts = []
            for (_k, cpu), pages in batch.items():
                if not pages:
                    continue
                data = b"".join(pages)
                walk = pages_mod.walk_pages(data, cpu, self.hp, self.he, self.page_size)
                self.lost += walk.missed + walk.missed_unknown
                parts.append(columns_mod.decode_columns(data, walk, self.fmts))
            columns = columns_mod.merge_columns(parts)
            pids = set()
            for c in columns.values():
                pids.update(np.unique(c.pid).tolist())
            ds = Dataset(Metadata(source="live", cmdlines=dict(self._cmdlines(pids)),
                                  extra={"slab_aliases": self.slab_aliases}),
                         columns, formats=self.formats, symbolize=self.symbolize)
            rows = self.state.feed(ds, seconds, self.top)
            try:
                stats_lost = sum(i.cpu_stats(c).lost for i in self.instances
                                 for c in self.cpus)
            except Exception:
                stats_lost = 0
            self.lost = max(self.lost, stats_lost)
            live_objects, live_bytes = self.state.live_totals()
            self.show(TopFrame(elapsed=now - self.start, interval=seconds,
                               events=self.state.events, rate=ds.events / max(seconds, 1e-6),
                               lost=self.lost, dropped=self.dropped,
                               live_objects=live_objects, live_bytes=live_bytes,
                               rows=rows))
        except BaseException as exc:  # raised again in the session loop
            self.error = exc

    def flush(self, cpu: int) -> None:
        while self.pump(cpu):
            pass
        self._read_partial(cpu)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.join()
        if self.error is None and any(self.pages.values()):
            # the pages collected since the last tick (a session shorter than one
            # interval has no other): decoded and shown, never left uncounted
            now = time.monotonic()
            batch, self.pages, self.backlog = self.pages, {k: [] for k in self.keys}, 0
            seconds, self.last = now - self.last, now
            self._tick(batch, seconds, now)
        self._count_dropped()
        close_quietly(list(self.fds.values()) + [x for p in self.pipes.values() for x in p])
        self.fds.clear()
        self.pipes.clear()


def run_live(tracefs: Tracefs, opts: SessionOptions, warn, interval: float,
             show: Callable[[TopFrame], None], rows: int | None = 20, symbolize=None,
             state=None, slab_aliases: dict | None = None, tick_bytes: int | None = None
             ) -> tuple[RunResult, "LiveReader | None"]:
    """Run a live session whose pages are decoded once per ``interval`` and fed to
    ``state`` (a TopState unless given), calling ``show`` with a TopFrame each time.
    Returns the run and its reader (None when setup failed before it was made)."""
    readers: list[LiveReader] = []

    def make_reader(session):
        readers.append(LiveReader(session, interval, show, rows, symbolize,
                                  slab_aliases, state, tick_bytes))
        return readers[0]

    run = run_session(tracefs, opts, warn, lambda text, final: None, make_reader, {})
    if not readers:
        return run, None
    r = readers[0]
    if r.error is not None:  # raised by the last tick, in close()
        raise r.error
    return run, r


def top(tracefs: Tracefs, opts: SessionOptions, warn, interval: float,
        show: Callable[[TopFrame], None], rows: int | None = 20, symbolize=None
        ) -> tuple[RunResult, TopState | None, int, int]:
    """Run a live session, calling ``show`` with a TopFrame every ``interval`` seconds.
    Returns (the run, the final state, events lost, events dropped undecoded)."""
    aliases = read_slab_aliases()  # merged caches, as they are when top starts
    run, r = run_live(tracefs, opts, warn, interval, show, rows, symbolize,
                      slab_aliases=aliases)
    if r is None:
        return run, None, 0, 0
    return run, r.state, max(r.lost, sum(s.lost for s in run.stats)), r.dropped
