"""Reading the kernel's own slab counters while recording: /proc/slabinfo sampled each
second, the SLUB parameters that bound its per-CPU slack, and /proc/allocinfo.

Role: the kernel I/O behind ``analysis/reconcile.py`` (which is pure).  It reads procfs/sysfs
files and returns plain, JSON-ready values for the recording's metadata; it never
writes to the kernel and never touches tracefs (the trace clock comes in as text read
by the caller from the instance's ``per_cpu/cpuN/stats``).

Why the samples carry the trace clock read from ``stats``: the events are stamped with
the instance's trace clock (``local`` by default: sched_clock, which user space cannot
read), and ``per_cpu/cpuN/stats`` prints that clock's current value as ``now ts:``
(``ring_buffer_time_stamp()``, microseconds).  Reading it beside /proc/slabinfo puts
each sample on the events' own time axis, with no event written into the recording (a
``trace_marker`` write would also work, but would add ``ftrace:print`` events that every
reader would then have to set aside).
"""
from __future__ import annotations

import os
import re
import time
from typing import Callable

from ftslab.errors import FtslabError
from ftslab.kernel.tracefs import read_text_file


__all__ = [
    "read_slabinfo", "read_allocinfo", "read_slab_params", "clock_now_ns", "SlabSampler",
    "SAMPLE_PERIOD_S"
]


#: seconds between two /proc/slabinfo samples while recording
SAMPLE_PERIOD_S = 1.0


_SLAB_SYSFS = "/sys/kernel/slab"


def read_slabinfo() -> str:
    """/proc/slabinfo text, "" when unreadable (not root, no SLUB debugfs...)."""
    try:
        return read_text_file("/proc/slabinfo")
    except (OSError, FtslabError):
        return ""


def read_allocinfo() -> str:
    """/proc/allocinfo text (CONFIG_MEM_ALLOC_PROFILING, since commit 22d407b164ff ("lib:
    add allocation tagging support for memory allocation profiling") (in v6.10)), ""
    where the kernel has none."""
    try:
        return read_text_file("/proc/allocinfo")
    except (OSError, FtslabError):
        return ""


def _active_counts(text: str) -> dict[str, int]:
    """name -> active_objs of /proc/slabinfo text (lines that do not read are left out:
    the full parser, trace/slabinfo.parse_slabinfo, counts them for the start/end snapshots)."""
    out = {}
    for line in text.splitlines()[2:]:
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def read_slab_params(names, root: str = _SLAB_SYSFS) -> dict:
    """What bounds the objects SLUB counts as active while they are free, per cache of
    ``names`` (as /proc/slabinfo names them; a merged cache's name is a link to the
    merged directory): ``{"caches": {name: [objs_per_slab, cpu_partial,
    sheaf_capacity]}, "cpus": online CPUs, "nodes": memory nodes}``.  A file a kernel
    lacks reads as 0 (``sheaf_capacity`` appeared with the per-CPU sheaves, commit
    2d517aa09bbc ("slab: add opt-in caching layer of percpu sheaves") (in v6.18);
    ``cpu_partial`` is absent without CONFIG_SLUB_CPU_PARTIAL)."""
    caches = {}
    for name in names:
        vals = []
        for f in ("objs_per_slab", "cpu_partial", "sheaf_capacity"):
            try:
                with open(f"{root}/{name}/{f}") as fh:
                    vals.append(int(fh.read().split()[0]))
            except (OSError, ValueError, IndexError):
                vals.append(0)
        if vals[0]:
            caches[name] = vals
    try:
        nodes = sum(1 for d in os.listdir("/sys/devices/system/node")
                    if re.fullmatch(r"node\d+", d)) or 1
    except OSError:
        nodes = 1
    return {"caches": caches, "cpus": os.cpu_count() or 1, "nodes": nodes}


_NOW_TS = re.compile(r"^now ts:\s*(\d+)(?:\.(\d{1,9}))?\s*$", re.M)


def clock_now_ns(stats_text: str) -> int | None:
    """The trace clock's current value from a ``per_cpu/cpuN/stats`` text: nanoseconds
    for the nanosecond clocks (printed as seconds.microseconds), the raw count for
    counter clocks (printed as an integer); None when the line is missing."""
    m = _NOW_TS.search(stats_text)
    if not m:
        return None
    if m.group(2) is None:
        return int(m.group(1))
    frac = m.group(2)
    return int(m.group(1)) * 1_000_000_000 + int(frac.ljust(9, "0"))


class SlabSampler(dict):
    """/proc/slabinfo each ``period`` seconds, kept compactly: per cache only the active
    object counts that changed since the previous sample.

    It is its own metadata value (a dict, JSON-ready at every moment, so that a
    recording cut short still writes): ``{"period_s", "t": [trace clock per sample],
    "active": {cache: [sample index, active objects, index, active, ...]}, "read_ms":
    time spent reading}``; each cache's first pair is at its first sample.

    ``clock``: returns the ``stats`` text whose ``now ts`` stamps a sample (read just
    before and just after /proc/slabinfo; the sample's time is their midpoint)."""

    def __init__(self, clock: Callable[[], str], period: float = SAMPLE_PERIOD_S,
                 read: Callable[[], str] = read_slabinfo):
        super().__init__(period_s=period, t=[], active={}, read_ms=0.0)
        self._clock = clock
        self._read = read
        self._next = float("-inf")
        self._last: dict[str, int] = {}

    def tick(self, now: float) -> None:
        """Take a sample if ``period`` has passed since the last (``now``: monotonic s)."""
        if now < self._next:
            return
        self._next = now + self["period_s"]
        t0 = time.perf_counter()
        try:
            before = clock_now_ns(self._clock())
            text = self._read()
            after = clock_now_ns(self._clock())
        except FtslabError:
            return  # the instance is going away: the loop ends on that by itself
        self["read_ms"] = round(self["read_ms"] + (time.perf_counter() - t0) * 1e3, 3)
        if before is None or after is None or not text:
            return
        i = len(self["t"])
        self["t"].append((before + after) // 2)
        active = self["active"]
        for name, n in _active_counts(text).items():
            if self._last.get(name) != n:
                self._last[name] = n
                active.setdefault(name, []).extend((i, n))
