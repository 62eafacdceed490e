"""The event catalogue: which kernel events are allocations and frees, and how to read
each one; the kprobe family of allocation entry points and the names of ftslab's own
probe events; the events a recording enables by default.

Both the recording (session/, kernel/kprobes.py) and the analysis (analysis/) import
this module, so neither imports the other.  Pure data and pure functions: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

__all__ = [
    "slot_fields", "DEFAULT_EVENTS", "FamilyMember", "FAMILY", "EVENT_PREFIX",
    "function_of_event", "is_probe_event", "event_name", "BULK_FREE_SYMBOL",
    "BULK_FREE_PREFIX", "BULK_FREE_SLOTS", "bulk_free_slot_fields", "AllocSource",
    "FreeSource", "ALLOC_SOURCES", "FREE_SOURCES", "fields_read", "alloc_source",
    "free_source", "event_label", "SOURCES"
]


SOURCES = ("tracepoint", "kprobe")


# ----------------------------------------------------------------------------------------
# Event sources: the one place that says how to read each event type
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AllocSource:
    """How to read one allocation event type.  Field names are the kernel's; every one is
    optional and is read only if the event's columns actually have it."""

    system: str
    """Event system, an fnmatch pattern (``"kmem"``, ``"ftslab_*"`` for kprobe groups)."""
    name: str
    """Event name, an fnmatch pattern."""
    layer: str
    """``"slab"`` or ``"page"``: allocations are matched with frees of the same layer."""
    bytes_req: str | None = None
    """Field with the requested size in bytes."""
    bytes_alloc: str | None = None
    """Field with the size actually handed out, bytes (absent: taken as ``bytes_req``
    and the table says waste is not measured for this event)."""
    cache: str | None = None
    """Field with the cache name (a string)."""
    size_class: bool = False
    """The cache key is the kmalloc size class of ``bytes_alloc``."""
    call_site: str | None = None
    """Field with the caller address (int) or ``sym+0xoff/0xsize`` text."""
    ptr: str | None = None
    """Field matched against a ``FreeSource.ptr`` of the same layer (address or pfn)."""
    order: str | None = None
    """Page order field: bytes = page_size << order (pages layer)."""
    gfp: str | None = None
    """Field with the gfp_t flag word (int) or its rendered text."""
    seed_tag: str = ""
    """Tag of the line in the seed-module format (``kmalloc`` -> ``[kmalloc]: ...``);
    empty: the event name."""


@dataclass(frozen=True)
class FreeSource:
    """How to read one free event type."""

    system: str
    name: str
    layer: str
    ptr: str
    """Field naming what is freed (address or pfn)."""
    count: str | None = None
    """A bulk free (one event, many objects): the field with how many objects it frees;
    they are named by the fields ``p0``, ``p1``, ... that the event has (bulkfree.py)."""
    cache: str | None = None
    """Field with the cache name (read by reconcile.py: frees of older objects)."""


#: First match wins.  Kprobe sources go here too, e.g.
#: ``AllocSource("ftslab_*", "kmalloc*", "slab", bytes_req="size", call_site="caller")``.
ALLOC_SOURCES: tuple[AllocSource, ...] = (
    # ftslab's kprobe events (kprobes.py): group ftslab_<pid>, event kp_<symbol>.  They
    # see the same allocations as the tracepoints: reports keep them in layers of their
    # own ("kprobe", "kprobe_page") and never add the two sources up.
    AllocSource("ftslab_*", "kp_*alloc_pages*", "kprobe_page", order="order",
                call_site="caller", gfp="gfp"),
    AllocSource("ftslab_*", "kp_*", "kprobe", bytes_req="size", bytes_alloc="objsize",
                cache="name", call_site="caller", gfp="gfp", size_class=True),
    AllocSource("kmem", "kmalloc", "slab", bytes_req="bytes_req", bytes_alloc="bytes_alloc",
                size_class=True, call_site="call_site", ptr="ptr", gfp="gfp_flags"),
    AllocSource("kmem", "kmem_cache_alloc", "slab", bytes_req="bytes_req",
                bytes_alloc="bytes_alloc", cache="name", call_site="call_site", ptr="ptr",
                gfp="gfp_flags"),
    AllocSource("kmem", "mm_page_alloc", "page", order="order", ptr="pfn", gfp="gfp_flags"),
)


FREE_SOURCES: tuple[FreeSource, ...] = (
    FreeSource("kmem", "kfree", "slab", "ptr"),
    # Since 6.x kmem_cache_free() and kfree() accept each other's objects, so both free
    # kinds match both allocation kinds: they share the "slab" layer.
    FreeSource("kmem", "kmem_cache_free", "slab", "ptr", cache="name"),
    FreeSource("kmem", "mm_page_free", "page", "pfn"),
    # Folio batches are freed without mm_page_free; the batched event carries the pfn.
    FreeSource("kmem", "mm_page_free_batched", "page", "pfn"),
    # kprobes on kmem_cache_free_bulk (kprobes.py, BULK_FREE_PREFIX): frees that no kmem
    # event reports (the maple tree, kfree_rcu()'s batches)
    FreeSource("ftslab_*", "kpf_*", "slab", "p0", count="cnt"),
)


def _spec_for(specs, system: str, name: str):
    for src in specs:
        # A text trace without format files does not show the system ("" here): the
        # name alone decides, which is why kprobes get names that cannot collide.
        if (not system or fnmatchcase(system, src.system)) and fnmatchcase(name, src.name):
            return src
    return None


def alloc_source(system: str, name: str) -> AllocSource | None:
    """The spec for an allocation event, or None if it is not an allocation."""
    return _spec_for(ALLOC_SOURCES, system, name)


def free_source(system: str, name: str) -> FreeSource | None:
    """The spec for a free event, or None."""
    return _spec_for(FREE_SOURCES, system, name)


def fields_read(system: str, name: str, gfp: bool = True) -> tuple[str, ...]:
    """The fields of an event type that reports read (for load(fields=...)): those its
    AllocSource or FreeSource names, nothing for other types.  ``gfp``: the gfp flags
    too; only a report grouped by them reads them (on 10 M events: 45 MB and two
    gathers a block less without)."""
    src = alloc_source(system, name)
    if src is not None:
        names = (src.bytes_req, src.bytes_alloc, src.cache, src.call_site, src.ptr,
                 src.order, src.gfp if gfp else None)
    else:
        fsrc = free_source(system, name)
        names = (fsrc.ptr, fsrc.cache) if fsrc is not None else ()
        if fsrc is not None and fsrc.count is not None:
            names = (fsrc.count,) + slot_fields()
    return tuple(n for n in names if n)


def event_label(system: str, name: str) -> str:
    """``kmem:kmalloc``; just ``kmalloc`` when the system is unknown (text input)."""
    return f"{system}:{name}" if system else name


#: Event name prefix: ``kp_<symbol>``.
EVENT_PREFIX = "kp_"


#: Bulk frees.  kmem_cache_free_bulk(s, size, p) frees the ``size`` objects of the
#: array ``p`` without a kmem:kmem_cache_free or kmem:kfree event; kfree_bulk(size, p)
#: is an inline kmem_cache_free_bulk(NULL, size, p) (include/linux/slab.h, 6.1 to 6.18).
#: Its callers: the maple tree (mt_free_bulk() in mas_destroy() and mt_destroy_walk())
#: and kfree_rcu()'s batched drain (kfree_rcu_work(), kvfree_rcu_bulk() on 6.12), which
#: frees up to a page of pointers at once (KVFREE_BULK_MAX_ENTR: 510 on 6.1 with 4 KiB
#: pages).  docs/bulk-frees.md has the paths per kernel and the measurements.
BULK_FREE_SYMBOL = "kmem_cache_free_bulk"


#: Event name prefix of the bulk free probes: ``kpf_<symbol>[_<first slot>]``.  Not
#: ``kp_``: the analysis takes ``kp_*`` events for allocations (ALLOC_SOURCES).
BULK_FREE_PREFIX = "kpf_"


#: Pointers fetched from the array, in all: one probe fetches the first
#: ``_BULK_FIRST`` (the maple tree frees at most MAPLE_ALLOC_SLOTS - 1 = 30 at once),
#: further probes on the same function ``_BULK_MORE`` each, kernel-filtered on the
#: count so that they record only calls that reach their slots.  A kprobe event has
#: at most MAX_TRACE_ARGS = 128 fetch args (kernel/trace/trace_probe.h, 6.1 and 6.12);
#: the fixed-length array type (``x64[N]``) is capped at MAX_ARRAY_LEN = 64 and ftslab's
#: decoders read scalar fields, so each pointer is a field of its own (``p<i>``).
#: Objects past the last slot are freed unseen: the analysis counts them.
BULK_FREE_SLOTS = 512


@dataclass(frozen=True)
class FamilyMember:
    """One allocation entry point, under the names it had across kernel versions."""

    family: str
    """Stable name shown in reports when the symbol differs by kernel."""
    candidates: tuple[str, ...]
    """Symbols to look for, newest kernels first."""
    layer: str = "slab"
    """``slab`` (kmalloc/kmem_cache) or ``page`` (page allocator)."""
    default: bool = True
    """Probed by default.  Lookups that run *inside* another member are not: counting
    them would count an allocation twice."""
    note: str = ""


#: The kmalloc family, kmem_cache_alloc and the page allocator.  Name history:
#: - v6.1: kmalloc_trace()/kmalloc_node_trace() take the constant-size kmalloc()s
#:   (commit 26a40990ba05 ("mm/sl[au]b: cleanup kmem_cache_alloc[_node]_trace()")
#:   (in v6.1)); before, they were
#:   kmem_cache_alloc_trace()/kmem_cache_alloc_node_trace() (cache, gfp, size).
#: - v6.10: memory allocation profiling renamed the out-of-line functions to *_noprof
#:   (commit 7bd230a26648 ("mm/slab: enable slab allocation tagging for kmalloc and
#:   friends") (in v6.10); __alloc_pages -> __alloc_pages_noprof in the same series).
#: - v6.11: kmalloc_trace_noprof/kmalloc_node_trace_noprof became
#:   __kmalloc_cache_noprof/__kmalloc_cache_node_noprof and kmalloc_large_noprof became
#:   __kmalloc_large_noprof (commit a0a44d9175b3 ("mm, slab: don't wrap internal
#:   functions with alloc_hooks()") (in v6.11); names verified on Debian's 6.12 by
#:   tests/vm), and CONFIG_SLAB_BUCKETS may add a ``kmem_buckets *b`` argument after
#:   ``size`` in __kmalloc_node_noprof / __kmalloc_node_track_caller_noprof (commit
#:   67f2df3b82d0 ("mm/slab: Plumb kmem_buckets into __do_kmalloc_node()") (in v6.11)).
FAMILY: tuple[FamilyMember, ...] = (
    FamilyMember("kmalloc", ("__kmalloc_noprof", "__kmalloc")),
    FamilyMember("kmalloc_node", ("__kmalloc_node_noprof", "__kmalloc_node")),
    FamilyMember("kmalloc_cache", ("__kmalloc_cache_noprof", "kmalloc_trace_noprof",
                                   "kmalloc_trace", "kmem_cache_alloc_trace")),
    FamilyMember("kmalloc_cache_node", ("__kmalloc_cache_node_noprof",
                                        "kmalloc_node_trace_noprof", "kmalloc_node_trace",
                                        "kmem_cache_alloc_node_trace")),
    FamilyMember("kmalloc_large", ("__kmalloc_large_noprof", "kmalloc_large_noprof",
                                   "kmalloc_large")),
    FamilyMember("kmalloc_large_node", ("__kmalloc_large_node_noprof",
                                        "kmalloc_large_node_noprof", "kmalloc_large_node")),
    FamilyMember("kmalloc_track_caller", ("__kmalloc_node_track_caller_noprof",
                                          "__kmalloc_node_track_caller",
                                          "__kmalloc_track_caller")),
    FamilyMember("kmem_cache_alloc", ("kmem_cache_alloc_noprof", "kmem_cache_alloc")),
    FamilyMember("kmem_cache_alloc_node", ("kmem_cache_alloc_node_noprof",
                                           "kmem_cache_alloc_node")),
    FamilyMember("kmem_cache_alloc_lru", ("kmem_cache_alloc_lru_noprof",
                                          "kmem_cache_alloc_lru")),
    FamilyMember("alloc_pages", ("__alloc_pages_noprof", "__alloc_pages"), layer="page"),
    FamilyMember("kmalloc_slab", ("kmalloc_slab",), default=False,
                 note="a size-to-cache lookup called inside __kmalloc*, not an allocation: "
                      "probing it would count those allocations twice"),
)


def event_name(symbol: str) -> str:
    name = EVENT_PREFIX + symbol.replace(".", "_")
    return name[:63]


def bulk_free_slot_fields(first: int, stop: int) -> tuple[str, ...]:
    """Field names of the pointer slots ``first`` .. ``stop - 1``."""
    return tuple(f"p{i}" for i in range(first, stop))


def is_probe_event(system: str, name: str) -> bool:
    """An event made by an ftslab session (its group is ``ftslab_<pid>``; a text trace
    read without format files has no system: the name decides)."""
    return name.startswith(EVENT_PREFIX) and (not system or system.startswith("ftslab_"))


def function_of_event(name: str) -> str:
    """The probed function of a ``kp_<symbol>`` event."""
    return name[len(EVENT_PREFIX):] if name.startswith(EVENT_PREFIX) else name


DEFAULT_EVENTS = ("kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:mm_page_alloc",
                  "kmem:kfree", "kmem:kmem_cache_free", "kmem:mm_page_free")


FREES_BUFFER = "frees"
"""Name of the second buffer of a task-limited recording: the free events of the whole
system (the instance ``<session>_frees``, and the trace.dat buffer of that name)."""


def slot_fields() -> tuple[str, ...]:
    """Every slot field a bulk free event may have (what to decode)."""
    return bulk_free_slot_fields(0, BULK_FREE_SLOTS)
