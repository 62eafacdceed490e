"""Events that another tracer has enabled too: what that costs every event, in words.

Pure: the facts come in as ``tracefs.EnabledElsewhere`` (read by
``Tracefs.events_enabled_elsewhere``); nothing here touches the other tracer's events.
"""
from __future__ import annotations
from ftslab.kernel.tracefs import EnabledElsewhere
import os

__all__ = ["SHARED_EVENT_COST", "enabled_elsewhere_message"]


#: What another probe on the recorded tracepoints costs, from bench/bench_shared_events.py:
#: the workload's speed under ``ftslab record -a`` with the kmem events also enabled in
#: a second instance (tracing off there), as a fraction of its speed without (ratio of
#: the medians of 10 alternating pairs; 0.91 in a run of 8); the kernel and the date.
SHARED_EVENT_COST = (0.89, "6.18.44-fc-v1272", "2026-12-06")


def enabled_elsewhere_message(found: list[EnabledElsewhere], root: str | os.PathLike
                              ) -> str | None:
    """One line saying which events are enabled in which other buffers, what that costs
    and how to turn them off (None when ``found`` is empty).  Pure."""
    if not found:
        return None
    by_place: dict[str | None, list[EnabledElsewhere]] = {}
    for f in found:
        by_place.setdefault(f.instance, []).append(f)
    order = sorted(by_place, key=lambda i: (i is not None, i or ""))
    groups: dict[tuple[str, ...], list[str]] = {}
    for inst in order:
        fs = by_place[inst]
        if inst is None:
            place = "the top-level buffer"
            if fs[0].tracing_on is False:
                place += (" (tracing off there: left by another tracer, e.g. "
                          "`trace-cmd record -k`)")
        elif fs[0].owner_pid is not None:
            place = f"instance {inst} (ftslab session {fs[0].owner_pid})"
        else:
            place = f"instance {inst}"
        groups.setdefault(tuple(dict.fromkeys(f.event for f in fs)), []).append(place)
    parts = []
    for events, places in groups.items():
        where = places[0] if len(places) == 1 else (", ".join(places[:-1]) + " and "
                                                     + places[-1])
        parts.append((", ".join(events), len(events), where))
    if len(parts) == 1:
        names, n, where = parts[0]
        text = f"{names} {'is' if n == 1 else 'are'} also enabled in {where}"
    else:
        text = ("events recorded here are also enabled elsewhere: "
                + "; ".join(f"{names} in {where}" for names, _n, where in parts))
    ratio, kernel, date = SHARED_EVENT_COST
    text += (f": with a second probe on a tracepoint every event costs more (measured: a "
             f"syscall workload under `ftslab record -a` ran at ~{ratio:.2f}x of its speed "
             f"without it; Linux {kernel}, {date})")
    offs = []
    for inst in order:
        fs = by_place[inst]
        if fs[0].owner_pid is not None:
            continue  # another ftslab session's: it ends by itself (or `ftslab reset`)
        base = f"{root}/" + (f"instances/{inst}/" if inst is not None else "")
        for system in dict.fromkeys(f.event.split(":", 1)[0] for f in fs):
            offs.append(f"`echo 0 > {base}events/{system}/enable`")
    if offs:
        text += "; if not in use: " + "; ".join(offs)
    return text
