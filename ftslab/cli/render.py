"""Presentation: the same ``tables.Table`` objects as text, JSON or CSV, and one-line
formatters for ``ftslab stream``.

Role: formatting only.  Nothing here computes an aggregate, opens a file or prints:
the text renderer yields lines and the others return strings; the CLI writes them.
Text output is for people (``1.2 MiB``); JSON and CSV keep exact integers.

JSON schema (``render_json``), version 1 -- keys appear in this order::

    {
      "ftslab_report": 1,            # schema version; bumped on incompatible change
      "events": 123456,              # events decoded (all types)
      "lost": 0,                     # events the kernel could not deliver
      "truncated": false,            # the recording ended early
      "by": ["cache"],               # the grouping of "rows" (default report: ["cache"])
      "sort": "bytes",               # bytes | count | waste
      "rows": [ {...}, ... ],        # rows of the main table, as in "tables"
      "tables": {
        "<name>": {                  # by_cache, by_callsite, by_comm,
                                     # fragmentation_by_cache, pages_by_order,
                                     # slabinfo_diff, histogram, by_<k1>_<k2>...
          "title": "...",
          "columns": [{"name": "count", "title": "ALLOCS", "unit": "count"}, ...],
          "rows": [{"cache": "kmalloc-64", "count": 12, "failed": 0,
                    "bytes_req": 700, "bytes_alloc": 768, "waste": 68,
                    "frees": 10, "live": 2}, ...],
          "note": ""
        }, ...
      },
      "warnings": ["WARNING: 12 events were LOST during recording; ..."],
      "summary": {"events": N, "per_event": {"kmem:kmalloc": N, ...},
                  "duration_s": 1.5, "lost": N, "truncated": false, "unparsed": N,
                  "source": "...", "kernel": "..."}
    }

Units: every size is an integer number of bytes, every count an integer; ``waste_pct``
is a percentage (float).  A key that does not apply to a row (``order`` of a slab
allocation, ``callsite`` of a page allocation) is ``null``; an unknown cache is ``"?"``;
a cache SLUB merged with others is named by all its names, its events' first, joined by
``|`` (``"signal_cache|UNIX|UNIX-STREAM"``: merged.py) when the recording stored them.

Seed format (``event_to_seed``): the lines of the kernel module ftslab replaces::

    [kmalloc]: Process 'a.out' with PID 316 allocated 4096 bytes
    [kmem_cache_alloc]: Process 'a.out' with PID 316 allocated 40 bytes in cache 'vma_lock'
    [mm_page_alloc]: Process 'a.out' with PID 316 allocated 8192 bytes (order 1)

kmalloc and kmem_cache_alloc print ``bytes_req`` (for a cache: the object size); a page
allocation prints page_size << order.  Frees, failed page allocations and events without
a size field give ``None`` (no line).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Callable, Iterator

from ftslab.analysis.frames import normalize_call_site
from ftslab.analysis.tables import Report, Table
from ftslab.dataset import Event
from ftslab.events import alloc_source, event_label, function_of_event, is_probe_event


__all__ = [
    "render_text", "render_json", "render_csv", "human_bytes", "human_duration",
    "sparkline", "event_to_json", "event_to_text", "event_to_seed", "JSON_SCHEMA_VERSION"
]


JSON_SCHEMA_VERSION = 1


_BAR_WIDTH = 40


_HEX_FIELDS = frozenset({"call_site", "ptr", "pfn", "gfp_flags", "caller", "page"})


# ----------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------

def human_bytes(n: int) -> str:
    """``512 B``, ``1.2 KiB``, ``3.0 MiB`` (binary units, one decimal; sign kept)."""
    sign = "-" if n < 0 else ""
    v = abs(n)
    if v < 1024:
        return f"{sign}{v} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        v /= 1024.0
        if v < 1024 or unit == "PiB":
            return f"{sign}{v:.1f} {unit}"
    raise AssertionError("unreachable")


def human_duration(ns: int) -> str:
    """``850 ns``, ``12.0 us``, ``3.4 ms``, ``2.50 s``, ``4.0 min``."""
    v = abs(ns)
    if v < 1000:
        return f"{ns} ns"
    if v < 1_000_000:
        return f"{ns / 1e3:.1f} us"
    if v < 1_000_000_000:
        return f"{ns / 1e6:.1f} ms"
    if v < 120_000_000_000:
        return f"{ns / 1e9:.2f} s"
    return f"{ns / 60e9:.1f} min"


_SPARK = " ▁▂▃▄▅▆▇█"


def sparkline(values) -> str:
    """One character per value, scaled from 0 (blank) to the largest (a full block)."""
    peak = max(values, default=0)
    if peak <= 0:
        return "".join(_SPARK[0] for _ in values)
    top = len(_SPARK) - 1
    return "".join(_SPARK[max(0, min(top, round(top * v / peak)))] for v in values)


def _cell(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "series" and isinstance(value, list):
        return sparkline(value) + f" {human_bytes(value[-1])}" if value else ""
    if unit == "ns" and isinstance(value, int):
        return human_duration(value)
    if unit == "bytes" and isinstance(value, int):
        return human_bytes(value)
    if unit == "%" and isinstance(value, (int, float)):
        return f"{value:.1f}%"
    return str(value)


def _table_lines(t: Table) -> Iterator[str]:
    yield t.title
    if not t.rows:
        yield f"  ({t.note or 'no rows'})"
        return
    cols = [c for c in t.columns
            if not (c.quiet_if_zero and all(not r.get(c.name) for r in t.rows))]
    # The histogram's lo/hi are in the bucket label already; keep the text narrow.
    if t.bar:
        cols = [c for c in cols if c.name not in ("lo", "hi")]
    header = [c.title for c in cols]
    body = [[_cell(r.get(c.name), c.unit) for c in cols] for r in t.rows]
    if t.bar:
        peak = max((r.get(t.bar) or 0) for r in t.rows) or 1
        header.append("")
        for cells, r in zip(body, t.rows):
            v = r.get(t.bar) or 0
            # Any non-empty bucket gets at least one mark so it is not mistaken for 0.
            cells.append("#" * (max(1, round(_BAR_WIDTH * v / peak)) if v else 0))
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    right = [c.unit not in ("", "series") for c in cols] + ([False] if t.bar else [])

    def fmt(cells):
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)]
        return "  ".join(out).rstrip()

    yield fmt(header)
    for cells in body:
        yield fmt(cells)
    if t.note:
        yield f"  ({t.note})"


def _summary_line(s: dict) -> str:
    per = ", ".join(f"{k} {v}" for k, v in s.get("per_event", {}).items())
    dur = s.get("duration_s", 0.0)
    line = (f"ftslab: {s.get('events', 0)} events in {dur:.3f} s" if dur is not None else
            f"ftslab: {s.get('events', 0)} events")
    if per:
        line += f" ({per})"
    extra = [f"{k} {s[k]}" for k in ("source", "kernel") if s.get(k)]
    if s.get("lost"):
        extra.append(f"lost {s['lost']}")
    if s.get("unparsed"):
        extra.append(f"unparsed {s['unparsed']}")
    if s.get("truncated"):
        extra.append("truncated")
    line += "; " + "; ".join(extra) if extra else ""
    f = s.get("frees")
    if f and f.get("scope") in ("system", "filtered"):
        where = ("from every context" if f["scope"] == "system" else
                 "recorded with the allocations (LIVE is an upper bound)")
        line += (f"\nfrees: {where}; {f.get('recorded', 0)} recorded, "
                 f"{f.get('matched', 0)} freed an allocation of this recording, "
                 f"{f.get('unmatched', 0)} freed older or untraced objects (not counted)")
        if f.get("settle_s"):
            line += (f"; recorded {f['settle_s']:g} s more after the allocations stopped "
                     "(settle): later deferred frees are not seen")
    return line


def render_text(report: Report) -> Iterator[str]:
    """Lines of the text report: warnings first (a loss warning is the very first line),
    then a summary line, then each table (title, aligned columns, note)."""
    yield from report.warnings
    yield _summary_line(report.summary)
    for t in report.tables:
        yield ""
        yield from _table_lines(t)


# ----------------------------------------------------------------------------------------
# JSON and CSV
# ----------------------------------------------------------------------------------------

def _main_table(report: Report) -> Table | None:
    return report.table(report.main) if report.main else (
        report.tables[0] if report.tables else None)


def _table_json(t: Table) -> dict:
    return {"title": t.title,
            "columns": [{"name": c.name, "title": c.title, "unit": c.unit} for c in t.columns],
            "rows": t.rows,
            "note": t.note}


def render_json(report: Report) -> str:
    """The report as one JSON document (schema in the module docstring)."""
    main = _main_table(report)
    s = report.summary
    doc = {
        "ftslab_report": JSON_SCHEMA_VERSION,
        "events": s.get("events", 0),
        "lost": s.get("lost", 0),
        "truncated": bool(s.get("truncated", False)),
        "by": list(report.by) if report.by else (["cache"] if main is not None else []),
        "sort": report.sort,
        "rows": main.rows if main is not None else [],
        "tables": {t.name: _table_json(t) for t in report.tables},
        "warnings": list(report.warnings),
        "summary": s,
    }
    return json.dumps(doc, indent=2)


def _csv_cell(v):
    if v is None:
        return ""
    if isinstance(v, list):  # a series: its points, space-separated
        return " ".join(str(x) for x in v)
    return v


def render_csv(report: Report, table: Table | str | None = None) -> str:
    """One table (default: the main one) as CSV: a header of column names, then rows.
    Exact integers; a not-applicable value is an empty cell."""
    if isinstance(table, str):
        name = table
        table = report.table(name)
        if table is None:
            raise KeyError(name)
    elif table is None:
        table = _main_table(report)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if table is None:
        return ""
    w.writerow([c.name for c in table.columns])
    for r in table.rows:
        w.writerow([_csv_cell(r.get(c.name)) for c in table.columns])
    return buf.getvalue()


# ----------------------------------------------------------------------------------------
# Per-event lines (ftslab stream)
# ----------------------------------------------------------------------------------------

_RESERVED = ("ts", "cpu", "pid", "comm", "event")


def event_to_json(ev: Event, symbolize: Callable[[int], str | None] | None = None) -> str:
    """One JSON object: ts (ns), cpu, pid, comm, event (``"kmem:kmalloc"``), then the
    event's fields by their kernel names (ints stay ints).  A field whose name collides
    with one of those keys is written as ``field_<name>``.  With ``symbolize``, an
    integer ``call_site`` also gets ``call_site_sym`` (``"sym+0xoff"`` or null)."""
    obj = {"ts": ev.ts, "cpu": ev.cpu, "pid": ev.pid, "comm": ev.comm,
           "event": event_label(ev.system, ev.name)}
    for k, v in ev.fields.items():
        obj[f"field_{k}" if k in _RESERVED else k] = v
    for k in ("call_site", "caller"):  # caller: the call site of a kprobe event
        cs = ev.fields.get(k)
        if symbolize is not None and isinstance(cs, int):
            obj[f"{k}_sym"] = symbolize(cs & 0xFFFFFFFFFFFFFFFF)
    if is_probe_event(ev.system, ev.name):
        obj["function"] = function_of_event(ev.name)
    return _JSON.encode(obj)


_JSON = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps makes one per call


def _field_text(k: str, v, symbolize, flags=None) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        if k == "gfp_flags" and flags is not None:
            return flags(v)
        if k in ("call_site", "caller") and symbolize is not None:
            sym = symbolize(v & 0xFFFFFFFFFFFFFFFF)
            if sym:
                return sym
        if k in _HEX_FIELDS:
            return f"0x{v & 0xFFFFFFFFFFFFFFFF:x}"
        return str(v)
    if k == "call_site":
        return normalize_call_site(str(v))
    return str(v)


def event_to_text(ev: Event, symbolize: Callable[[int], str | None] | None = None,
                  gfp: Callable[[Event, int], str] | None = None) -> str:
    """One readable line, shaped like the kernel's trace output::

        a.out-316 [001] 1234.567890: kmem:kmalloc call_site=alloc_pipe_info+0x2a \
            ptr=0xffff888004a0b000 bytes_req=40 ...
    """
    sec, ns = divmod(ev.ts, 1_000_000_000)
    flags = (lambda v: gfp(ev, v)) if gfp is not None else None
    fields = " ".join(f"{k}={_field_text(k, v, symbolize, flags)}" for k, v in ev.fields.items())
    line = (f"{ev.comm}-{ev.pid} [{ev.cpu:03d}] {sec}.{ns // 1000:06d}: "
            f"{event_label(ev.system, ev.name)}")
    return f"{line} {fields}" if fields else line


def event_to_seed(ev: Event, page_size: int = 4096) -> str | None:
    """The event as the seed kernel module printed it (exact strings in the module
    docstring), or None for events it did not print (frees, failed page allocations)."""
    src = alloc_source(ev.system, ev.name)
    if src is None:
        return None
    tag = src.seed_tag or ev.name
    if src.layer in ("kprobe", "kprobe_page"):
        tag = function_of_event(ev.name)  # the probed function, as the module printed
    who = f"[{tag}]: Process '{ev.comm}' with PID {ev.pid} allocated"
    f = ev.fields
    if src.layer in ("page", "kprobe_page"):
        order = f.get(src.order) if src.order else None
        pfn = f.get(src.ptr) if src.ptr else None
        if not isinstance(order, int):
            return None
        if isinstance(pfn, int) and (pfn & 0xFFFFFFFFFFFFFFFF) in (0xFFFFFFFFFFFFFFFF, 0):
            return None  # failed: nothing was allocated (text traces print -1 as 0)
        return f"{who} {page_size << order} bytes (order {order})"
    size = f.get(src.bytes_req) if src.bytes_req else None
    if not isinstance(size, int) and src.bytes_alloc:
        size = f.get(src.bytes_alloc)  # kmem_cache_alloc kprobes: the object size
    if not isinstance(size, int):
        return None
    if src.cache and (src.cache in f or src.layer != "kprobe"):
        cache = f.get(src.cache)
        return f"{who} {size} bytes in cache '{cache if cache else '?'}'"
    return f"{who} {size} bytes"
