"""The summary of a recording and its warnings: events, losses, where the frees came from.

Pure: a plain dict and warning lines from a ``Dataset`` and its analysis; printing them
(to stderr) is the CLI's.
"""
from __future__ import annotations

from ftslab.analysis.analysed import Analysis, analysis_of
from ftslab.analysis.frames import NO_STACK
from ftslab.analysis.grouping import select
from ftslab.analysis.tables import UNKNOWN_CACHE
from ftslab.dataset import Dataset
from ftslab.events import event_label, free_source
from ftslab.analysis.analysed import time_span

__all__ = ["warnings_of", "summary", "loss_warning", "default_source"]


# ----------------------------------------------------------------------------------------
# Summary and the whole report
# ----------------------------------------------------------------------------------------

def summary(ds: Dataset) -> dict:
    """Totals of a recording: events, per_event counts, duration_s (last - first
    timestamp, seconds), lost, truncated, unparsed, source, kernel."""
    per_event = {event_label(s, n): len(c) for (s, n), c in sorted(ds.columns.items())}
    lo, hi = time_span(ds) or (None, None)
    # only nanosecond clocks give seconds; counters (x86-tsc, counter, uptime) do not
    clock = str(ds.meta.extra.get("trace_clock", "") or "")
    ns_clock = clock in NS_CLOCKS or clock == ""
    return {
        "events": ds.events,
        "per_event": per_event,
        "duration_s": ((hi - lo) / 1e9 if lo is not None else 0.0) if ns_clock else None,
        "lost": ds.meta.total_lost,
        "truncated": bool(ds.meta.truncated),
        "unparsed": ds.meta.unparsed,
        "source": ds.meta.source,
        "kernel": ds.meta.kernel,
        **({"frees": frees_summary(ds)} if frees_scope(ds) != "unknown" else {}),
    }


def frees_scope(ds: Dataset) -> str:
    """Which frees a recording holds: ``system`` (every context: a whole-system
    recording, or record --frees all), ``filtered`` (only those of the traced tasks or
    filters: LIVE is an upper bound), ``none`` (no free event recorded) or ``unknown``
    (not recorded by ftslab, or by an ftslab older than the distinction)."""
    scope = ds.meta.extra.get("frees_scope")
    if scope in ("system", "filtered", "none"):
        return scope
    if isinstance(ds.meta.extra.get("tracefs_writes"), list):
        # an older ftslab: frees in the allocations' instance, under its task limits
        # and filters, and set_event_notrace_pid
        return "filtered"
    return "unknown"


def frees_summary(ds: Dataset) -> dict:
    """What the report header says of the frees: their scope, the settle window after
    the allocations stopped, how many free events were recorded and how many freed an
    allocation of the recording (the others freed objects allocated before it, or by
    tasks it did not trace: counted here, never shown as data)."""
    an = analysis_of(ds)
    frees = sum(len(c) for (s, n), c in ds.columns.items() if free_source(s, n) is not None)
    matched = sum(int(fr.freed.sum()) for fr in an.frames
                  if fr.src.layer in ("slab", "page"))
    settle = ds.meta.extra.get("settle_s")
    return {"scope": frees_scope(ds),
            "settle_s": float(settle) if isinstance(settle, (int, float)) else 0.0,
            "recorded": frees, "matched": matched, "unmatched": max(frees - matched, 0),
            "lost": int(ds.meta.extra.get("frees_lost", 0) or 0)}


#: what --frees traced / an older recording's LIVE means
UPPER_BOUND_NOTE = ("LIVE is an upper bound: this recording's frees were recorded with "
                    "its allocations (record --frees traced, or an ftslab before --frees), "
                    "under its task limits and filters and without those that "
                    "interrupted ftslab, so what an RCU callback, an interrupt, a "
                    "workqueue or another task freed can show as live (record with "
                    "--frees all, the default, to see every free)")


#: trace clocks whose timestamps are nanoseconds (Documentation/trace/ftrace.rst)
NS_CLOCKS = frozenset({"local", "global", "perf", "mono", "mono_raw", "boot", "tai"})


def loss_warning(lost: int) -> str:
    return (f"WARNING: {lost} events were LOST during recording; counts below are lower "
            "bounds, and FREES/LIVE cannot be trusted (a lost free shows as live)")


def collect_warnings(ds: Dataset, an: Analysis) -> list[str]:
    out = []
    if ds.meta.total_lost > 0:
        out.append(loss_warning(ds.meta.total_lost))
    if ds.meta.truncated:
        detail = f" ({ds.meta.truncated_detail})" if ds.meta.truncated_detail else ""
        out.append(f"WARNING: the recording is truncated{detail}; "
                   "only the part before the cut is reported")
    if ds.meta.unparsed:
        out.append(f"WARNING: {ds.meta.unparsed} lines/events could not be decoded "
                   "and were skipped")
    if not any(fr.n for fr in an.frames):
        out.append("WARNING: no allocation events in this recording")
    others = ds.meta.extra.get("other_buffers") or []
    if others:
        shown = ds.meta.extra.get("buffer", "")
        out.append(f"note: the file also holds buffer(s) {', '.join(map(repr, others))}; "
                   f"this report is of {'the top-level buffer' if not shown else repr(shown)}"
                   " (pick one with --buffer NAME)")
    if frees_scope(ds) == "filtered" and any(fr.freed.size for fr in an.frames):
        out.append("WARNING: " + UPPER_BOUND_NOTE)
    if ds.meta.extra.get("frees_missing"):
        out.append("WARNING: the recording's buffer of frees is missing: nothing is seen "
                   "freed, and LIVE counts every allocation")
    clock = str(ds.meta.extra.get("trace_clock", "") or "")
    if clock and clock not in NS_CLOCKS:
        out.append(f"note: the trace clock is {clock!r}: timestamps are its ticks, not "
                   "nanoseconds, and no duration is given")
    nested = {}
    for fr in an.frames:
        k = int(fr.nested.sum())
        if k:
            nested[fr.event] = nested.get(fr.event, 0) + k
    if nested:
        out.append("note: " + ", ".join(f"{n} {e}" for e, n in sorted(nested.items()))
                   + " event(s) came from inside another kmalloc-family function (the "
                   "kernel traces such a large kmalloc twice): each allocation is counted "
                   "once")
    orphans = int(ds.meta.extra.get("stacks_unattributed", 0) or 0)
    if orphans:
        out.append(f"note: {orphans} kernel stack(s) could not be paired with their "
                   "allocation (it was lost, or the stack came without it): they are not "
                   "counted; allocations whose stack was lost show as "
                   f"{NO_STACK!r}")
    kprobe_names = any(fr.src.layer == "kprobe" and fr.src.cache in fr.cols.fields
                       for fr in an.frames)
    for fr in an.frames:
        if fr.src.layer in ("kprobe", "kprobe_page"):
            continue  # a probed function without a cache argument: no name to expect
        if fr.src.cache and fr.src.cache not in fr.cols.fields and fr.n:
            out.append(f"note: {fr.event} has no {fr.src.cache!r} field on this kernel: "
                       f"its cache is shown as {UNKNOWN_CACHE!r}"
                       + (" (the kprobe events name it: see the kprobe tables, or "
                          "--source kprobe)" if kprobe_names else ""))
    return out


def warnings_of(ds: Dataset) -> list[str]:
    """What every report of ``ds`` says first: loss, truncation, notes (as
    Report.warnings); for outputs that are not a Report (folded stacks)."""
    return collect_warnings(ds, analysis_of(ds))


def layers(source: str, page: bool) -> str:
    if source == "kprobe":
        return "kprobe_page" if page else "kprobe"
    return "page" if page else "slab"


def default_source(ds: Dataset) -> str:
    """Tracepoints when the recording has any tracepoint allocation, else kprobes."""
    an = analysis_of(ds)
    if select(an, None, ("slab", "page")) or not select(an, None, ("kprobe", "kprobe_page")):
        return "tracepoint"
    return "kprobe"
