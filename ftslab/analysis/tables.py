"""The tables every report is made of (``Column``, ``Table``, ``Report``), the keys they
group by, and the labels used for what the kernel did not name.

Plain data: a ``Table`` holds rows of dicts and its columns' units; it computes nothing
and formats nothing (cli/render.py formats it as text, JSON or CSV).
"""
from __future__ import annotations

from dataclasses import dataclass

from ftslab.analysis.merged import note_merged

__all__ = ["GROUP_KEYS", "SORT_KEYS", "Column", "Table", "Report"]


GROUP_KEYS = ("comm", "pid", "cache", "callsite", "event", "order", "gfp", "function",
              "stack")


#: layers of each source: allocations of one layer are counted once per source
PAGE_LAYERS = ("page", "kprobe_page")


SORT_KEYS = ("bytes", "count", "waste")


UNKNOWN_COMM = "<...>"


UNKNOWN_CACHE = "?"


ZERO_SIZE = "(kmalloc(0): ZERO_SIZE_PTR)"


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


KEY_COLUMNS = {
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


METRIC_COLUMNS = [
    Column("count", "ALLOCS", "count"),
    Column("bytes_req", "REQUESTED", "bytes"),
    Column("bytes_alloc", "ALLOCATED", "bytes"),
    Column("waste", "WASTE", "bytes"),
    Column("frees", "FREES", "count"),
    Column("live", "LIVE", "count"),
]


FAILED_COLUMN = Column("failed", "FAILED", "count", quiet_if_zero=True)
