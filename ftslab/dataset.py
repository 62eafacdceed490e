"""Typed records: what every decoder produces and every report consumes.

Two shapes of the same data:
- ``Event``: one decoded kernel event, frozen, for the Python API and ``stream``.
- ``EventColumns``: all events of one type as numpy columns, for fast reports.
A ``Dataset`` is a whole decoded recording (binary or text) in columnar form plus
the metadata captured with it.  This module does no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np


__all__ = [
    "Event", "EventColumns", "Dataset", "Metadata", "Loss", "LazyFields", "StrColumn",
    "str_column", "join_str_columns"
]


class LazyFields(Mapping):
    """Field name -> column, each decoded on first access (reports read few fields)."""

    def __init__(self, names: Iterable[str], load: Callable[[str], np.ndarray]):
        self._names = list(names)
        self._load = load
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        col = self._cache.get(name)
        if col is None:
            if name not in self._names:
                raise KeyError(name)
            col = self._cache[name] = self._load(name)
        return col

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class StrColumn(np.ndarray):
    """A string column: an object array of ``str`` that also knows its distinct values,
    ``labels`` (distinct) and ``codes`` (``labels[codes[i]] == self[i]``), as the
    decoder found them; reports group by them without hashing every row.  Anything
    derived from it (a slice, a selection) is a plain object array again."""

    codes: np.ndarray | None = None
    labels: list | None = None

    def __array_finalize__(self, obj) -> None:
        self.codes = None
        self.labels = None


def str_column(codes: np.ndarray, labels: list) -> np.ndarray:
    """The StrColumn of ``labels[codes]`` (labels need not be distinct)."""
    uniq = list(dict.fromkeys(labels))
    if len(uniq) != len(labels):
        pos = {v: i for i, v in enumerate(uniq)}
        codes = np.array([pos[v] for v in labels], dtype=np.int32)[codes]
    table = np.empty(len(uniq), dtype=object)
    table[:] = uniq
    out = table[codes].view(StrColumn) if len(uniq) else \
        np.zeros(len(codes), dtype=object).view(StrColumn)
    out.codes = np.asarray(codes, dtype=np.int32)
    out.labels = uniq
    return out


def join_str_columns(parts: list) -> np.ndarray:
    """np.concatenate of string columns, keeping codes and labels when all have them."""
    if not parts or any(getattr(p, "codes", None) is None for p in parts):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=object)
    space: dict = {}
    codes = np.empty(sum(p.shape[0] for p in parts), np.int32)
    at = 0
    for p in parts:
        lut = np.array([space.setdefault(v, len(space)) for v in p.labels], dtype=np.int32)
        codes[at:at + p.shape[0]] = lut[p.codes] if len(lut) else 0
        at += p.shape[0]
    return str_column(codes, list(space))


@dataclass(frozen=True, slots=True)
class Event:
    """One kernel event."""

    ts: int
    """Timestamp in nanoseconds of the trace clock (text input: microsecond resolution)."""
    cpu: int
    """CPU the event was recorded on."""
    pid: int
    """Thread id (common_pid) that was running."""
    comm: str
    """Command name of ``pid`` (from saved_cmdlines / the text line), ``"<...>"`` if unknown."""
    system: str
    """Event system, e.g. ``"kmem"`` or a kprobe group."""
    name: str
    """Event name, e.g. ``"kmalloc"``."""
    fields: Mapping[str, int | str] = field(hash=False)
    """The event's own fields by their kernel names (no ``common_*``), read-only.  Integers for
    numeric fields (bytes for sizes, raw flag words), ``str`` for strings; ``call_site``
    is kept as an integer address when decoded from binary, and as the kernel's
    ``sym+0xoff/0xsize`` text when parsed from a text trace."""

    def __post_init__(self):
        if not isinstance(self.fields, MappingProxyType):
            object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))


@dataclass
class EventColumns:
    """All events of one type, column by column (same row order in every column).

    Decoded from binary, rows are grouped by CPU and in time order within a CPU; sort
    by ``ts`` where a global order matters."""

    system: str
    name: str
    ts: np.ndarray
    """uint64 nanoseconds."""
    cpu: np.ndarray
    """int32 CPU numbers."""
    pid: np.ndarray
    """int32 thread ids."""
    fields: Mapping[str, np.ndarray]
    """Field name -> column (a dict, or LazyFields decoding on first access).  Integer
    fields are integer arrays of the field's size; string fields are object arrays of
    ``str`` (from binary input, StrColumns: they also carry their distinct values)."""

    seq: np.ndarray | None = None
    """int64 position of each event in its input, where that orders events more finely
    than ``ts`` (text traces: the line number, as ``cat trace`` prints in time order but
    with microsecond timestamps).  None for binary input (``ts`` is exact)."""
    stack: np.ndarray | None = None
    """int32 index into ``Dataset.stacks`` of each event's kernel stack, -1 where it has
    none; None when the recording holds no stacks."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(frozen=True)
class Loss:
    """Events the kernel could not deliver, per CPU."""

    cpu: int
    lost: int
    """Events lost (missed-events page flags plus per_cpu stats overrun/dropped)."""
    spans: tuple = ()
    """(after_ns, before_ns) windows the losses fell in, where the pages say (the
    missed-events flags); empty when unknown (counters only, text input)."""


@dataclass
class Metadata:
    """What was captured about the system alongside the events."""

    source: str = ""
    """What was read: ``"trace.dat v7"``, ``"text"``, ..."""
    kernel: str = ""
    """``uname -r`` style release (or the full uname line) of the traced kernel."""
    cmdlines: dict[int, str] = field(default_factory=dict)
    """pid -> comm, from saved_cmdlines (binary) or the lines themselves (text)."""
    lost: list[Loss] = field(default_factory=list)
    truncated: bool = False
    """The input ended early; what was readable was decoded."""
    truncated_detail: str = ""
    slabinfo_start: str = ""
    """/proc/slabinfo text when recording started ("" if unknown)."""
    slabinfo_end: str = ""
    """/proc/slabinfo text when recording ended ("" if unknown)."""
    unparsed: int = 0
    """Lines or events that could not be decoded (counted, never guessed)."""
    extra: dict = field(default_factory=dict)
    """Anything else worth keeping (command line, duration, cpustats text, ...)."""

    @property
    def total_lost(self) -> int:
        return sum(x.lost for x in self.lost)


@dataclass
class Dataset:
    """A decoded recording."""

    meta: Metadata
    columns: dict[tuple[str, str], EventColumns]
    """(system, name) -> columns."""
    formats: dict = field(default_factory=dict)
    """(system, name) -> formats.EventFormat, when the input carried format files."""
    symbolize: object = None
    """callable(int address) -> "sym+0xoff" or None; None when no kallsyms were captured."""
    stacks: list = field(default_factory=list)
    """Distinct kernel stacks (tuples of return addresses, innermost first), indexed by
    ``EventColumns.stack``; empty without ``record --stacks``."""

    @property
    def events(self) -> int:
        return sum(len(c) for c in self.columns.values())
