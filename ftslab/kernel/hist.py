"""Which hist triggers ``ftslab serve`` puts on the kmem events, on this kernel.

With CONFIG_HIST_TRIGGERS the kernel aggregates events itself: a ``hist:keys=...:vals=...``
trigger on an event keeps a hash table of counts and sums per key, read from the event's
``hist`` file; no event is copied to user space.  This module describes those triggers
(HistSpec: a description, nothing is written) and decides them from the events' format
files, never from a version number.  Writing them is session/histsource.py's, through
tracefs.py; parsing the ``hist`` file is trace/histtext.py's.

What the hist path cannot give:

* live objects (what is allocated and not yet freed): pairing a free with its
  allocation needs each event's pointer, i.e. the events themselves;
* the comm of a pid as it is now: a ``common_pid.execname`` key is the *pid*; the kernel
  saves the comm once, when the pid's entry is made (a shell that forks and execs ``ls``
  is counted under ``sh``, seen on 6.1 and 6.12), and a pid that exited keeps its
  entry under that name;
* cache names for kmem_cache_alloc on kernels whose event has no ``name`` field (Debian
  6.1.0-57 and 6.12.118 have none, the 6.18 kernel here has it: read the format, never
  the version): there only kmalloc's caches are known (its size class follows from
  bytes_alloc);
* anything a full table refused: a key not yet in a table of ``size`` entries is
  dropped, and only counted (``Dropped``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

__all__ = ["HistSpec", "hist_support", "serve_specs", "read_serve_formats", "SERVE_HIST_EVENTS",
           "FAMILIES"]


FAMILIES = ("cache", "callsite", "comm", "order")
"""What a serve trigger counts by: the kmem cache, the call site, the task's comm, and
(page allocator) the page order."""


SERVE_HIST_EVENTS = (("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc"),
                     ("kmem", "mm_page_alloc"))
"""The events serve's hist triggers go on: the slab allocators' two tracepoints and
the page allocator."""


@dataclass(frozen=True)
class HistSpec:
    """One hist trigger: on ``system:name``, counting ``vals`` per ``keys``."""

    system: str
    name: str
    keys: tuple[str, ...]
    """Key fields with their modifier (``call_site.sym-offset``, ``common_pid.execname``)."""
    vals: tuple[str, ...]
    """Summed fields; ``hitcount`` (events per key) is always there."""
    size: int
    """Table entries (the kernel rounds up to a power of two, least 128); a new key
    beyond them is dropped and only counted."""
    family: str = ""
    """What its keys label (one of FAMILIES): how session/histsource.py reads it."""

    @property
    def trigger(self) -> str:
        """The text appended to the event's ``trigger`` file."""
        return f"hist:keys={','.join(self.keys)}:vals={','.join(self.vals)}:size={self.size}"

    @property
    def removal(self) -> str:
        """The text that removes it again (appended: a truncating write would remove
        every trigger of the event, other tools' too)."""
        return "!" + self.trigger

    @property
    def clear(self) -> str:
        """The text that empties its table (counts, sums and Dropped back to 0)."""
        return self.trigger + ":clear"

    @property
    def event(self) -> str:
        return f"{self.system}:{self.name}"


def hist_support(tracefs) -> tuple[bool, str]:
    """(whether this kernel has hist triggers, why / why not), from the kmalloc event's
    ``hist`` file (tracefs: a kernel.tracefs.Tracefs)."""
    if not tracefs.event_exists("kmem", "kmalloc"):
        return False, "no kmem:kmalloc event in this kernel's tracefs"
    if tracefs.exists("events/kmem/kmalloc/hist"):
        return True, "the kernel has hist triggers (events/kmem/kmalloc/hist)"
    return False, ("no hist file under events/kmem/kmalloc: CONFIG_HIST_TRIGGERS is not "
                   "set on this kernel")


def read_serve_formats(tracefs) -> dict:
    """The parsed format files of SERVE_HIST_EVENTS that this kernel has."""
    from ftslab.trace.formats import parse_format
    out = {}
    for system, name in SERVE_HIST_EVENTS:
        if tracefs.event_exists(system, name):
            out[(system, name)] = parse_format(tracefs.event_format(system, name), system)
    return out


CALLSITE_SIZE = 4096
"""Distinct call sites of the whole system: a few hundred to a few thousand."""
COMM_SIZE = 4096
"""The comm tables are keyed by pid: every task that ever allocated holds an entry
(session/histsource.py clears a table that fills)."""
CACHE_SIZE = 512
"""Caches (or kmalloc size classes): a few hundred."""
ORDER_SIZE = 128
"""Page orders: a dozen; 128 is the kernel's least table."""


def serve_specs(formats) -> list[HistSpec]:
    """The triggers serve installs, from the events' formats: a mapping
    ``{(system, name): EventFormat}`` (read_serve_formats), or a Tracefs to read them
    from.  An event missing, or a field it lacks, leaves its trigger out.

    * callsite: ``call_site.sym-offset`` (``.sym`` alone prints the same name for two
      call sites of one function), vals hitcount + bytes_alloc;
    * comm: ``common_pid.execname`` (the kernel keys by pid: see the module docstring),
      vals hitcount + bytes_alloc (+ bytes_req on kmalloc);
    * cache: kmem_cache_alloc by ``name`` where the event has that field; kmalloc by
      ``bytes_alloc`` (its size class names the cache, as analysis/kmalloc.py does),
      vals hitcount + bytes_req;
    * order: mm_page_alloc by ``order``, vals hitcount (bytes = count x page_size << order).
    """
    if not isinstance(formats, Mapping):
        formats = read_serve_formats(formats)

    def has(ev, *fields) -> bool:
        f = formats.get(ev)
        return f is not None and all(f.field(x) is not None for x in fields)

    specs: list[HistSpec] = []
    for ev in (("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc")):
        if not has(ev, "call_site", "bytes_alloc"):
            continue
        system, name = ev
        specs.append(HistSpec(system, name, ("call_site.sym-offset",),
                              ("hitcount", "bytes_alloc"), CALLSITE_SIZE, "callsite"))
        vals = ("hitcount", "bytes_alloc") + (("bytes_req",) if has(ev, "bytes_req") and
                                              name == "kmalloc" else ())
        specs.append(HistSpec(system, name, ("common_pid.execname",), vals, COMM_SIZE, "comm"))
        if name == "kmalloc":
            specs.append(HistSpec(system, name, ("bytes_alloc",),
                                  ("hitcount",) + (("bytes_req",) if has(ev, "bytes_req")
                                                   else ()), CACHE_SIZE, "cache"))
        elif has(ev, "name"):
            specs.append(HistSpec(system, name, ("name",), ("hitcount", "bytes_alloc"),
                                  CACHE_SIZE, "cache"))
    if has(("kmem", "mm_page_alloc"), "order"):
        specs.append(HistSpec("kmem", "mm_page_alloc", ("order",), ("hitcount",),
                              ORDER_SIZE, "order"))
    return specs
