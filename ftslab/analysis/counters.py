"""What ``ftslab serve`` exports, kept with a bounded memory: cumulative allocation
counters per cache, call site and command, live objects since the exporter started, the
leak signal, and page allocations by order.

Pure: fed one interval at a time (a Dataset of decoded events, or the increments the
kernel's hist triggers counted), it answers with a Snapshot, plain data the command line
turns into metrics.  No I/O, no Prometheus here.

Bounds (an exporter runs for months):

* **Series.**  Each label (cache, call site, command) has at most ``limit`` series of its
  own; everything else is summed into ``OTHER``.  A counter series never goes backwards:
  a label that has its own series keeps it while it stays among the busiest (bytes over
  the last minutes); when a label twice as busy takes its place, what it had counted
  moves into ``OTHER`` (which only grows), and the newcomer's series starts from zero
  (a label that comes back starts from zero again: to Prometheus a counter reset, which
  rate() and increase() allow for).  The
  sum over a family's series is always every allocation counted.  Labels that
  ``--include``/``--exclude`` leave out never get a series of their own: they count in
  ``OTHER``.
* **Live objects.**  Every allocation seen and not yet freed is one row (pointer, time,
  bytes, one label id per key: 32 bytes), at most ``live_max`` rows.  Past that, the
  oldest rows are dropped and counted (``evicted``): the live figures are then lower
  bounds, and the snapshot says so.  A pointer allocated again while its older row is
  still live was freed without a free event the exporter saw (``kmem_cache_free_bulk``
  and ``kfree_bulk`` emit none, a lost event, a free before the exporter started): the
  older row goes (``unseen_frees``), since one address holds one object.
* **Label names.**  The names of labels no live row and no series uses any more are
  forgotten (``compact``), so a machine with a million short-lived commands does not
  grow the exporter.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["KEYS", "OTHER", "LabelFilter", "CounterFamily", "LiveTable", "LeakSignal",
           "Snapshot", "Interval", "interval_of", "ServeState"]


KEYS = ("cache", "callsite", "comm")
"""The three labels every slab figure is given by."""

OTHER = "<other>"
"""The label value of what has no series of its own (past --top, or excluded)."""


class LabelFilter:
    """Which label values may have a series of their own: all unless ``include``
    patterns are given (then only those matching one), never those matching an
    ``exclude`` pattern.  Patterns are Python regular expressions, searched."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()):
        self.include = [re.compile(p) for p in include]
        self.exclude = [re.compile(p) for p in exclude]
        self._memo: dict[str, bool] = {}

    def __call__(self, label: str) -> bool:
        got = self._memo.get(label)
        if got is None:
            got = ((not self.include or any(p.search(label) for p in self.include))
                   and not any(p.search(label) for p in self.exclude))
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[label] = got
        return got


class CounterFamily:
    """Monotonic (allocations, bytes) counters per label, at most ``limit`` labels with
    a series of their own and the rest summed in OTHER (see the module docstring).

    Which labels have a series: the busiest by bytes over the last minutes (an
    exponentially decayed sum, time constant TAU seconds), kept for series and for a
    bounded set of candidates.  A candidate takes the place of the least busy series
    only when it has been TAKEOVER times busier: a burst does not churn the series."""

    TAU = 300.0
    """Seconds over which activity is remembered (decay time constant)."""
    TAKEOVER = 2.0
    CANDIDATES = 8
    """Candidates remembered per series slot (the rest are forgotten, least busy first)."""

    def __init__(self, limit: int, keep: LabelFilter | None = None):
        self.limit = limit
        self.keep = keep or LabelFilter()
        self.series: dict[str, list[int]] = {}
        """label -> [allocations, bytes] since the series began"""
        self.score: dict[str, float] = {}
        """label -> recent bytes (decayed), for series and candidates"""
        self.other = [0, 0]
        self.other_labels = 0
        """Distinct labels counted in OTHER in the last add()."""

    def add(self, increments: Mapping[str, tuple[int, int]], seconds: float = 1.0) -> None:
        """``label -> (allocations, bytes)`` counted over the last ``seconds``."""
        import math
        decay = math.exp(-max(seconds, 0.0) / self.TAU)
        for lab in self.score:
            self.score[lab] *= decay
        for label, (_n, b) in increments.items():
            if label in self.series or (self.keep(label) and label != OTHER):
                self.score[label] = self.score.get(label, 0.0) + int(b)
        self._choose()
        folded = 0
        for label, (n, b) in increments.items():
            s = self.series.get(label)
            if s is not None:
                s[0] += int(n)
                s[1] += int(b)
            else:
                folded += 1
                self.other[0] += int(n)
                self.other[1] += int(b)
        self.other_labels = folded
        cap = self.CANDIDATES * self.limit
        if len(self.score) > len(self.series) + cap:
            cands = sorted((v, k) for k, v in self.score.items() if k not in self.series)
            for _v, k in cands[:len(cands) - cap]:
                del self.score[k]

    def _choose(self) -> None:
        cands = sorted(((v, k) for k, v in self.score.items()
                        if k not in self.series and v > 0), reverse=True)
        for v, k in cands:
            if len(self.series) < self.limit:
                self.series[k] = [0, 0]
                continue
            weakest = min(self.series, key=lambda x: self.score.get(x, 0.0))
            if v > self.TAKEOVER * self.score.get(weakest, 0.0):
                out = self.series.pop(weakest)
                self.other[0] += out[0]
                self.other[1] += out[1]
                self.series[k] = [0, 0]
            else:
                break  # the candidates come busiest first: no other one would

    def rows(self) -> list[tuple[str, int, int]]:
        """(label, allocations, bytes): the series, then OTHER once anything is in it."""
        out = [(k, s[0], s[1]) for k, s in self.series.items()]
        if self.other[0] or self.other[1]:
            out.append((OTHER, self.other[0], self.other[1]))
        return out

    def total(self) -> tuple[int, int]:
        return (sum(s[0] for s in self.series.values()) + self.other[0],
                sum(s[1] for s in self.series.values()) + self.other[1])

    def labels(self) -> set[str]:
        return set(self.series)


class Names:
    """Label name <-> small integer id, for one key; ids are reused after compact()."""

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.names: list[str] = []

    def lut(self, labels: Sequence[str]) -> np.ndarray:
        out = np.empty(max(len(labels), 1), np.int32)
        for i, lab in enumerate(labels):
            g = self.ids.get(lab)
            if g is None:
                g = self.ids[lab] = len(self.names)
                self.names.append(lab)
            out[i] = g
        return out

    def compact(self, used: np.ndarray) -> np.ndarray:
        """Forget the names no id in ``used`` refers to; returns ``used`` renumbered."""
        keep = np.unique(used)
        remap = np.full(max(len(self.names), 1), -1, np.int32)
        remap[keep] = np.arange(keep.size, dtype=np.int32)
        self.names = [self.names[i] for i in keep.tolist()]
        self.ids = {n: i for i, n in enumerate(self.names)}
        return remap[used] if used.size else used


class LiveTable:
    """Allocations seen and not yet freed: pointer, time, bytes and one label id per
    key, at most ``live_max`` rows (see the module docstring).

    The rows are kept sorted by pointer, so that an interval costs a sort of its own
    events and a linear pass over the table (a search and a merge), not a sort of the
    table: an exporter's table grows to its bound with uptime, its interval must not
    grow with it."""

    EVICT_TO = 0.9
    """Past live_max, the oldest rows go until this fraction of it is left (the sort
    by time that eviction takes then happens once per many intervals)."""

    def __init__(self, live_max: int):
        self.live_max = live_max
        self.names = {k: Names() for k in KEYS}
        self.ptr = np.zeros(0, np.uint64)
        self.ts = np.zeros(0, np.uint64)
        self.bytes = np.zeros(0, np.int64)
        self.keys = {k: np.zeros(0, np.int32) for k in KEYS}
        self.evicted = 0
        self.unseen_frees = 0
        self.freed = 0

    def __len__(self) -> int:
        return int(self.ptr.size)

    def _take(self, keep: np.ndarray) -> None:
        self.ptr, self.ts, self.bytes = self.ptr[keep], self.ts[keep], self.bytes[keep]
        self.keys = {k: v[keep] for k, v in self.keys.items()}

    def update(self, ptr: np.ndarray, ts: np.ndarray, nbytes: np.ndarray,
               keys: Mapping[str, tuple[np.ndarray, Sequence[str]]],
               free_ptr: np.ndarray, free_ts: np.ndarray) -> None:
        """One interval: its allocations (``keys``: per key, codes into labels) and its
        frees (pointer, time), all later than what the table holds."""
        from ftslab.analysis.pairing import pair_frees
        ptr = ptr.astype(np.uint64)
        ts = ts.astype(np.uint64)
        nbytes = nbytes.astype(np.int64)
        free_ptr = free_ptr.astype(np.uint64)
        free_ts = free_ts.astype(np.uint64)
        real = free_ptr > np.uint64(16)  # kfree(NULL), ZERO_SIZE_PTR free nothing
        free_ptr, free_ts = free_ptr[real], free_ts[real]
        new_keys = {}
        for k in KEYS:
            codes, labels = keys[k]
            new_keys[k] = (self.names[k].lut(labels)[codes] if len(codes)
                           else np.zeros(0, np.int32))
        # 1. the interval's own allocations and frees, paired as the report pairs them
        freed_new = np.zeros(ptr.size, bool)
        if ptr.size and free_ptr.size:
            freed_new, _ = pair_frees(ptr, ts, free_ptr, free_ts)
            self.freed += int(freed_new.sum())
        # 2. the table's rows: the first event of the interval on their pointer decides
        #    (a free: freed; an allocation: freed unseen before it, one address holds
        #    one object)
        if self.ptr.size and (ptr.size or free_ptr.size):
            ev_ptr = np.concatenate([ptr, free_ptr])
            ev_ts = np.concatenate([ts, free_ts])
            order = np.lexsort((ev_ts, ev_ptr))
            sp = ev_ptr[order]
            first = np.ones(sp.size, bool)
            first[1:] = sp[1:] != sp[:-1]
            up = sp[first]
            up_is_free = order[first] >= ptr.size
            # the interval's pointers looked up in the table (not the other way round:
            # an interval has far fewer pointers than a grown table has rows)
            at = np.searchsorted(self.ptr, up)
            at_c = np.minimum(at, self.ptr.size - 1)
            hit = (at < self.ptr.size) & (self.ptr[at_c] == up)
            if hit.any():
                self.freed += int((hit & up_is_free).sum())
                self.unseen_frees += int((hit & ~up_is_free).sum())
                keep = np.ones(self.ptr.size, bool)
                keep[at[hit]] = False
                self._take(keep)
        # 3. the interval's allocations still live: not freed, and not followed by
        #    another allocation on their address (then freed unseen); merged into the
        #    table in pointer order
        superseded = np.zeros(ptr.size, bool)
        if ptr.size:
            order = np.lexsort((ts, ptr))
            ps = ptr[order]
            later = np.zeros(ps.size, bool)
            later[:-1] = ps[1:] == ps[:-1]
            superseded[order[later]] = True
        alive = ~freed_new & ~superseded
        self.unseen_frees += int((superseded & ~freed_new).sum())
        p, t, b = ptr[alive], ts[alive], nbytes[alive]
        kk = {k: v[alive] for k, v in new_keys.items()}
        if p.size:
            o = np.argsort(p, kind="stable")
            p, t, b = p[o], t[o], b[o]
            kk = {k: v[o] for k, v in kk.items()}
            pos = np.searchsorted(self.ptr, p)
            self.ptr = np.insert(self.ptr, pos, p)
            self.ts = np.insert(self.ts, pos, t)
            self.bytes = np.insert(self.bytes, pos, b)
            self.keys = {k: np.insert(self.keys[k], pos, kk[k]) for k in KEYS}
        if self.ptr.size > self.live_max:
            left = int(self.live_max * self.EVICT_TO)
            cut = self.ptr.size - left
            oldest = np.argpartition(self.ts, cut - 1)[:cut] if cut < self.ptr.size \
                else np.arange(self.ptr.size)
            keep = np.ones(self.ptr.size, bool)
            keep[oldest] = False
            self.evicted += cut
            self._take(keep)
        for k in KEYS:
            if len(self.names[k].names) > 4 * max(self.ptr.size, 1) + 4096:
                self.keys[k] = self.names[k].compact(self.keys[k])

    def by(self, key: str) -> dict[str, tuple[int, int]]:
        """label -> (live objects, live bytes)."""
        names = self.names[key].names
        n = len(names)
        if not n or not self.ptr.size:
            return {}
        cnt = np.bincount(self.keys[key], minlength=n)
        byt = np.bincount(self.keys[key], self.bytes.astype(np.float64), n)
        nz = np.flatnonzero(cnt)
        return {names[i]: (int(cnt[i]), int(round(byt[i]))) for i in nz.tolist()}


class LeakSignal:
    """Per label: in how many consecutive windows its live bytes grew.  A window whose
    events were partly lost neither advances nor resets a streak (a lost free looks like
    growth); a label with no live object is forgotten."""

    def __init__(self):
        self.last: dict[str, int] = {}
        self.streak: dict[str, int] = {}

    def step(self, live: Mapping[str, tuple[int, int]], lossy: bool) -> None:
        streak = {}
        for label, (_n, b) in live.items():
            prev = self.last.get(label)
            s = self.streak.get(label, 0)
            if lossy:
                streak[label] = s
            elif prev is not None and b > prev:
                streak[label] = s + 1
            else:
                streak[label] = 0
        self.streak = streak
        self.last = {label: b for label, (_n, b) in live.items()}


@dataclass
class Snapshot:
    """What the exporter shows at one moment (plain data)."""

    time: float
    """When it was taken (seconds, the caller's clock: time.time())."""
    allocs: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)
    """key -> (label, allocations, bytes): cumulative counters."""
    live: dict[str, list[tuple[str, int, int]]] | None = None
    """key -> (label, live objects, live bytes); None when live is off."""
    growth: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """key -> (label, consecutive windows of growth): the leak signal."""
    other_labels: dict[str, int] = field(default_factory=dict)
    """key -> labels summed in OTHER in the last interval."""
    pages: list[tuple[int, int, int]] = field(default_factory=list)
    """(order, allocations, bytes), cumulative."""
    live_objects: int = 0
    live_bytes: int = 0
    live_evicted: int = 0
    live_unseen_frees: int = 0
    events: int = 0
    lost: int = 0
    dropped: int = 0
    intervals: int = 0
    sources: dict[str, str] = field(default_factory=dict)
    """figure -> where it comes from (``events``, ``hist``, ``/proc/slabinfo``, ``off``)."""
    slabinfo: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(cache, active objects, objects, object size), duplicate names summed."""
    merged: list[tuple[str, str]] = field(default_factory=list)
    """(cache, all its names joined by ","): the shown caches SLUB merged with others
    (the kernel names a merged cache by one of its names only)."""


@dataclass
class Interval:
    """What one interval's decoded events say, per key (the input of ServeState and of
    top's TopState)."""

    events: int
    allocs: dict[str, dict[str, list[int]]]
    """key -> label -> [allocations, bytes] of the slab allocations that succeeded."""
    pages: dict[int, list[int]]
    """order -> [allocations, bytes] of the page allocations that succeeded."""
    ptr: np.ndarray
    ts: np.ndarray
    nbytes: np.ndarray
    keys: dict[str, tuple[np.ndarray, list]]
    """The slab allocations that can be freed (pointer, time, bytes, per key codes
    into labels); empty when live was not asked for."""
    free_ptr: np.ndarray
    free_ts: np.ndarray

    def update(self, table: "LiveTable") -> None:
        table.update(self.ptr, self.ts, self.nbytes, self.keys, self.free_ptr, self.free_ts)


def interval_of(ds, live: bool = True) -> Interval:
    """One interval's Dataset, counted per key (analysed.Analysis names the labels: the
    cache by its event field or its kmalloc size class, merged caches by all their names
    when the Dataset carries them, call sites symbolized, comms from its cmdlines)."""
    from ftslab.analysis.analysed import Analysis
    an = Analysis(ds, pair=False)
    inc: dict[str, dict[str, list[int]]] = {k: {} for k in KEYS}
    pages: dict[int, list[int]] = {}
    ptrs, tss, nbytes = [], [], []
    codes: dict[str, list] = {k: [] for k in KEYS}
    for fr in an.frames:
        if not fr.n:
            continue
        if fr.src.layer == "page" and fr.src.order and fr.src.order in fr.cols.fields:
            order = np.asarray(fr.cols.fields[fr.src.order]).astype(np.int64)[fr.ok]
            if order.size:
                cnt = np.bincount(order)
                byt = np.bincount(order, fr.bytes_alloc[fr.ok].astype(np.float64))
                for o in np.flatnonzero(cnt).tolist():
                    s = pages.setdefault(o, [0, 0])
                    s[0] += int(cnt[o])
                    s[1] += int(round(byt[o]))
            continue
        if fr.src.layer != "slab":
            continue
        ok = fr.ok
        held = fr.matchable & ok if (fr.ptr is not None and live) else None
        b = fr.bytes_alloc[ok].astype(np.float64)
        for k in KEYS:
            c, labels = an.local_key(fr, k)
            cnt = np.bincount(c[ok], minlength=len(labels))
            byt = np.bincount(c[ok], b, len(labels))
            for i in np.flatnonzero(cnt).tolist():
                s = inc[k].setdefault(labels[i], [0, 0])
                s[0] += int(cnt[i])
                s[1] += int(round(byt[i]))
            if held is not None:
                codes[k].append((c[held], labels))
        if held is not None:
            ptrs.append(fr.ptr[held])
            tss.append(fr.ts[held])
            nbytes.append(fr.bytes_alloc[held])
    keys = {}
    for k in KEYS:
        # one label space per interval: the frames' codes, offset and concatenated
        labels: list[str] = []
        parts = []
        for c, labs in codes[k]:
            parts.append(c + len(labels))
            labels.extend(labs)
        keys[k] = (np.concatenate(parts) if parts else np.zeros(0, np.int64), labels)
    frees = an.frees.get("slab", []) if live else []

    def cat(xs, dt):
        return np.concatenate(xs) if xs else np.zeros(0, dt)
    return Interval(ds.events, inc, pages, cat(ptrs, np.uint64), cat(tss, np.uint64),
                    cat(nbytes, np.int64), keys,
                    cat([k for _t, k, _s in frees], np.uint64),
                    cat([t for t, _k, _s in frees], np.uint64))


class ServeState:
    """The exporter's aggregation (pure).  Feed it intervals with ``add_allocs`` /
    ``add_pages`` / ``update_live``, close each with ``end_interval``, read ``snapshot``."""

    def __init__(self, limit: int = 20, keep: LabelFilter | None = None, live: bool = True,
                 live_max: int = 1_000_000, leak_window: float = 60.0):
        self.limit = limit
        self.keep = keep or LabelFilter()
        self.families = {k: CounterFamily(limit, self.keep) for k in KEYS}
        self.pages: dict[int, list[int]] = {}
        self.table = LiveTable(live_max) if live else None
        self.leak = {k: LeakSignal() for k in KEYS}
        self.leak_window = leak_window
        self._window_start: float | None = None
        self._window_lost = 0
        self.events = 0
        self.lost = 0
        self.dropped = 0
        self.intervals = 0
        self.sources: dict[str, str] = {}
        self.slabinfo: list[tuple[str, int, int, int]] = []
        self.aliases: dict[str, list[str]] = {}
        """Merged caches: each name -> all names (kernel/procfs.read_slab_aliases)."""

    # -- input ---------------------------------------------------------------------
    def feed(self, ds, seconds: float = 0.0, top=None) -> dict:
        """One interval's decoded events (the raw-page path): the slab allocations
        counted per key, the page allocations per order, and, with live on, the
        allocations and frees paired with what is still outstanding.  Returns {} (the
        signature of LiveReader's state)."""
        iv = interval_of(ds, live=self.table is not None)
        self.events += iv.events
        for k in KEYS:
            self.add_allocs(k, {lab: (n, b) for lab, (n, b) in iv.allocs[k].items()}, seconds)
        self.add_pages({o: (n, b) for o, (n, b) in iv.pages.items()})
        if self.table is not None:
            iv.update(self.table)
        return {}

    def add_allocs(self, key: str, increments: Mapping[str, tuple[int, int]],
                   seconds: float = 1.0) -> None:
        """What ``key``'s labels allocated over the last ``seconds``."""
        self.families[key].add(increments, seconds)

    def add_pages(self, increments: Mapping[int, tuple[int, int]]) -> None:
        for order, (n, b) in increments.items():
            s = self.pages.setdefault(int(order), [0, 0])
            s[0] += int(n)
            s[1] += int(b)

    def update_live(self, *args, **kwargs) -> None:
        """LiveTable.update (no-op when live is off)."""
        if self.table is not None:
            self.table.update(*args, **kwargs)

    def set_slabinfo(self, caches: Iterable[tuple[str, int, int, int]]) -> None:
        summed: dict[str, list[int]] = {}
        for name, active, total, size in caches:
            s = summed.setdefault(name, [0, 0, size])
            s[0] += active
            s[1] += total
        self.slabinfo = [(n, a, t, z) for n, (a, t, z) in summed.items()]

    def end_interval(self, now: float, events: int = 0, lost: int = 0,
                     dropped: int = 0) -> None:
        """Close an interval: ``events`` counted in it, the lost and dropped totals so
        far (cumulative), ``now`` on the caller's monotonic clock."""
        self.events += events
        self.intervals += 1
        lossy_now = lost > self.lost or dropped > self.dropped
        self.lost, self.dropped = max(self.lost, lost), max(self.dropped, dropped)
        first = self._window_start is None
        if first:
            self._window_start = now  # the first interval is the first window's baseline
        self._window_lost += int(lossy_now)
        if self.table is not None and (first or now - self._window_start >= self.leak_window):
            for k in KEYS:
                self.leak[k].step(self.table.by(k), self._window_lost > 0)
            self._window_start, self._window_lost = now, 0

    # -- output --------------------------------------------------------------------
    def live_totals(self) -> tuple[int, int]:
        """(live objects, live bytes); (0, 0) when live is off."""
        if self.table is None:
            return 0, 0
        return len(self.table), int(self.table.bytes.sum())

    def _top(self, rows: dict[str, tuple[int, int]]) -> list[tuple[str, int, int]]:
        """Gauges: the ``limit`` kept labels with most bytes, the rest in OTHER."""
        kept = sorted(((b, n, lab) for lab, (n, b) in rows.items() if self.keep(lab)),
                      reverse=True)
        out = [(lab, n, b) for b, n, lab in kept[:self.limit]]
        shown = {lab for lab, _n, _b in out}
        rest_n = sum(n for lab, (n, _b) in rows.items() if lab not in shown)
        rest_b = sum(b for lab, (_n, b) in rows.items() if lab not in shown)
        if rest_n:
            out.append((OTHER, rest_n, rest_b))
        return out

    def snapshot(self, wall: float) -> Snapshot:
        snap = Snapshot(time=wall, events=self.events, lost=self.lost,
                        dropped=self.dropped, intervals=self.intervals,
                        sources=dict(self.sources))
        for k in KEYS:
            fam = self.families[k]
            snap.allocs[k] = fam.rows()
            snap.other_labels[k] = fam.other_labels
        snap.pages = [(o, s[0], s[1]) for o, s in sorted(self.pages.items())]
        shown_caches = self.families["cache"].labels()
        if self.table is not None:
            t = self.table
            snap.live = {}
            for k in KEYS:
                live = t.by(k)
                snap.live[k] = self._top(live)
                if k == "cache":
                    shown_caches |= {lab for lab, _n, _b in snap.live[k]}
                streak = self.leak[k].streak
                ranked = sorted(((s, live.get(lab, (0, 0))[1], lab)
                                 for lab, s in streak.items() if self.keep(lab)),
                                reverse=True)[:self.limit]
                snap.growth[k] = [(lab, s) for s, _b, lab in ranked]
            snap.live_objects = len(t)
            snap.live_bytes = int(t.bytes.sum())
            snap.live_evicted = t.evicted
            snap.live_unseen_frees = t.unseen_frees
        shown = shown_caches | {lab for lab, _n, _b in snap.allocs["cache"]}
        snap.merged = sorted((c, ",".join(self.aliases[c])) for c in shown
                             if c in self.aliases)
        if self.slabinfo:
            # the kernel's own counts: the busiest caches, and every cache the event
            # figures show, so that the two can be put side by side
            ranked = sorted(self.slabinfo, key=lambda r: -(r[1] * r[3]))
            keep = [r for r in ranked if self.keep(r[0])]
            top = {r[0] for r in keep[:self.limit]} | (shown_caches & {r[0] for r in keep})
            rows = [r for r in self.slabinfo if r[0] in top]
            rest = [r for r in self.slabinfo if r[0] not in top]
            if rest:
                rows.append((OTHER, sum(r[1] for r in rest), sum(r[2] for r in rest), 0))
            snap.slabinfo = rows
        return snap
