"""Slab caches SLUB merged, named by what they hold.

SLUB merges caches of one object size and compatible flags into one cache, and the kmem
tracepoints and /proc/slabinfo then name it by one of its names only (the first one
created): on Linux 6.18 ``UNIX`` and ``UNIX-STREAM`` are merged into ``signal_cache``, so
unix sockets are counted as ``signal_cache``.  A recording stores the merges it found in
/sys/kernel/slab (kernel/procfs.read_slab_aliases) as its metadata ``slab_aliases``; here a
cache is given all its names, the one its events carry first, then the others sorted:
``signal_cache|UNIX|UNIX-STREAM``.

Role: pure functions over names and that metadata; no I/O.  A recording without the
metadata (older files, trace-cmd's) keeps the names its events carry.
"""
from __future__ import annotations

from typing import Mapping


__all__ = ["SEP", "MERGED_NOTE", "slab_aliases", "merged_name", "names_of", "note_merged"]


SEP = "|"
"""Between the names of a merged cache (no cache name contains it)."""


MERGED_NOTE = ("A|B|...: one cache the kernel merged (SLUB); A is the name its events and "
               "/proc/slabinfo give it, B... the caches merged into it (/sys/kernel/slab)")


def slab_aliases(extra: Mapping | None) -> dict[str, tuple[str, ...]]:
    """The ``slab_aliases`` metadata of a recording (name -> all names of its cache),
    kept only where it is well formed: a list of names that holds the name itself.
    Anything else (absent, damaged) is ignored, never guessed from."""
    raw = extra.get("slab_aliases") if isinstance(extra, Mapping) else None
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    for name, names in raw.items():
        if (isinstance(name, str) and isinstance(names, (list, tuple)) and len(names) >= 2
                and all(isinstance(n, str) and n and SEP not in n for n in names)
                and name in names):
            out[name] = tuple(sorted(set(names)))
    return out


def merged_name(name, aliases: Mapping[str, tuple[str, ...]]):
    """``name`` as the label of its cache: all the cache's names, ``name`` first, then
    the others sorted, joined by SEP; ``name`` itself when it was not merged (and any
    non-string, such as the None of page allocations)."""
    names = aliases.get(name) if isinstance(name, str) else None
    if not names:
        return name
    return SEP.join([name] + [n for n in names if n != name])


def names_of(label: str) -> list[str]:
    """The cache names in a label (merged_name's inverse): the first is the events'."""
    return label.split(SEP)


def note_merged(table, key: str = "cache") -> None:
    """Append MERGED_NOTE to a tables.Table's note when one of its ``key`` cells names a
    merged cache, so that the reader is told what ``A|B`` means where it is shown."""
    if any(isinstance(r.get(key), str) and SEP in r[key] for r in table.rows):
        if MERGED_NOTE not in table.note:
            table.note = "; ".join(x for x in (table.note, MERGED_NOTE) if x)
