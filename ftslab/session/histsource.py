"""Allocation counts from the kernel's hist triggers, as increments per read.

HistSource puts serve's hist triggers (kernel/hist.py HistSpec) on the kmem events of a
session's private instance and, on each ``read``, reads every event's ``hist`` file once
(tracefs.py), parses it (trace/histtext.py) and returns what each label gained since the
previous read.  The kernel's tables only grow, and the increments are taken per table
key (a pid, a call-site address, a size) before keys are summed into labels (a comm, a
``symbol+0xoff``), so a label is never lowered by a key that went away.

Counters never go backwards: a key whose count is lower than at the previous read (its
table was cleared: by us, or by anyone writing ``:clear``) counts from zero again, and a
key that vanished just stops adding.

A table that comes near its size is cleared (``<trigger>:clear``) right after it was
read, so that new keys keep finding room (pids come and go: the comm table keyed by pid
fills first).  What happens between that read and the clear is lost uncounted: the
events of a few microseconds, on that one table.  What a full table refuses is counted
by the kernel as ``Dropped``; its increase is reported (HistDelta.dropped).

It writes nothing itself (tracefs.py does) and makes no policy on what to count
(kernel/hist.py does); it never reads the ring buffer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

from ftslab.analysis.frames import normalize_call_site
from ftslab.analysis.kmalloc import kmalloc_size_class
from ftslab.kernel.hist import HistSpec
from ftslab.kernel.undo import UndoStack, signals_deferred
from ftslab.trace.histtext import Comm, HistTable, Sym, parse_hist

__all__ = ["HistDelta", "HistSource", "CLEAR_FRACTION"]


CLEAR_FRACTION = 0.75
"""A table holding this share of its size is cleared after it is read."""


@dataclass
class HistDelta:
    """What the triggers counted since the previous read."""

    by: dict = field(default_factory=dict)
    """``{"cache"|"callsite"|"comm": {label: (allocations, bytes)}, "order": {order:
    (allocations, bytes)}}``; bytes are bytes_alloc sums (order: pages x page size)."""
    dropped: int = 0
    """Events the full tables refused since the previous read (the kernel's Dropped,
    summed over the triggers)."""
    hits: int = 0
    """Events counted since the previous read (each event once: its first trigger)."""
    cleared: list[str] = field(default_factory=list)
    """Triggers (``system:name keys``) whose table was cleared after this read."""
    unreadable: int = 0
    """hist lines that could not be read (not counted)."""


class _State:
    def __init__(self) -> None:
        self.prev: dict = {}
        self.dropped = 0


def _raw_key(keys: dict) -> tuple:
    return tuple(sorted(keys.items()))


def _label(spec: HistSpec, keys: dict, page_size: int):
    field_name = spec.keys[0].partition(".")[0]
    v = keys.get(field_name)
    if spec.family == "callsite":
        return normalize_call_site(v.text) if isinstance(v, Sym) else str(v)
    if spec.family == "comm":
        return v.comm if isinstance(v, Comm) else str(v)
    if spec.family == "cache":
        if field_name == "bytes_alloc":
            return kmalloc_size_class(int(v), page_size)
        return str(v)
    if spec.family == "order":
        return int(v)
    return v


def _bytes(spec: HistSpec, keys: dict, values: dict, page_size: int) -> int:
    n = values.get("hitcount", 0)
    if spec.family == "order":
        return n * (page_size << int(keys["order"]))
    if "bytes_alloc" in values:
        return values["bytes_alloc"]
    if "bytes_alloc" in keys:
        return n * int(keys["bytes_alloc"])
    return 0


class HistSource:
    """serve's hist triggers in one instance (a kernel.tracefs.Instance)."""

    def __init__(self, instance, specs: Sequence[HistSpec], page_size: int | None = None,
                 clear_fraction: float = CLEAR_FRACTION):
        self.instance = instance
        self.specs = list(specs)
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self.clear_fraction = clear_fraction
        self._state = {s: _State() for s in self.specs}
        self.installed: list[HistSpec] = []

    def install(self, undo: UndoStack) -> None:
        """Write each trigger; its removal goes onto ``undo`` right after the write (and
        no stop signal can fall between the two)."""
        inst = self.instance
        for spec in self.specs:
            with signals_deferred():
                inst.event_trigger_add(spec.system, spec.name, spec.trigger)
                self.installed.append(spec)
                undo.push(f"remove hist trigger {spec.trigger!r} from {spec.event} in "
                          f"{inst.name}",
                          lambda s=spec: inst.event_trigger_remove(s.system, s.name,
                                                                   s.trigger))

    def _tables(self) -> dict[HistSpec, HistTable | None]:
        out: dict = {}
        by_event: dict[tuple[str, str], list[HistSpec]] = {}
        for s in self.specs:
            by_event.setdefault((s.system, s.name), []).append(s)
        for (system, name), specs in by_event.items():
            tables = parse_hist(self.instance.event_hist_read(system, name))
            for s in specs:
                want = tuple(s.keys)
                out[s] = next((t for t in tables if t.keys == want
                               and f":vals={','.join(s.vals)}:" in t.trigger), None)
        return out

    def read(self) -> HistDelta:
        """What each label gained since the previous read (the first read: since
        install)."""
        delta = HistDelta(by={s.family: {} for s in self.specs})
        counted_events: set = set()
        for spec, table in self._tables().items():
            if table is None:
                continue
            st = self._state[spec]
            fam = delta.by[spec.family]
            now: dict = {}
            gained_hits = 0
            for keys, values in table.entries:
                rk = _raw_key(keys)
                c = values.get("hitcount", 0)
                b = _bytes(spec, keys, values, self.page_size)
                now[rk] = (c, b)
                pc, pb = st.prev.get(rk, (0, 0))
                if c < pc:  # the table was cleared since: this key counts from 0 again
                    pc, pb = 0, 0
                dc, db = c - pc, max(b - pb, 0)
                if dc or db:
                    label = _label(spec, keys, self.page_size)
                    oc, ob = fam.get(label, (0, 0))
                    fam[label] = (oc + dc, ob + db)
                gained_hits += dc
            st.prev = now
            d = table.dropped or 0
            delta.dropped += d - st.dropped if d >= st.dropped else d
            st.dropped = d
            delta.unreadable += len(table.unreadable)
            if spec.event not in counted_events:
                counted_events.add(spec.event)
                delta.hits += gained_hits
            n = table.entry_count if table.entry_count is not None else len(table.entries)
            if n >= self.clear_fraction * spec.size:
                self.instance.event_trigger_add(spec.system, spec.name, spec.clear)
                st.prev, st.dropped = {}, 0
                delta.cleared.append(f"{spec.event} {','.join(spec.keys)}")
        return delta
