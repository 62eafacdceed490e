"""/proc/slabinfo as the recording stored it: parsed, and compared before and after.

Pure: the texts come from the recording's metadata (parsed by trace/slabinfo.py); the
running kernel's /proc/slabinfo is never read here (kernel/slabsample.py does that).
"""
from __future__ import annotations


from ftslab.analysis.merged import merged_name, slab_aliases
from ftslab.analysis.tables import Column, Table
from ftslab.dataset import Dataset
from ftslab.trace.slabinfo import parse_slabinfo

__all__ = ["slabinfo_diff"]


def slabinfo_diff(ds: Dataset) -> Table:
    """Caches whose active or total object count changed between the /proc/slabinfo
    snapshots taken at start and end of the recording, by |delta_bytes| (= change of
    num_objs * objsize, bytes).  A cache present in one snapshot only counts as 0 in the
    other.  Empty (with a note) when a snapshot is missing."""
    cols = [Column("cache", "CACHE"), Column("objsize", "OBJSIZE", "bytes"),
            Column("active_before", "ACTIVE BEFORE", "count"),
            Column("active_after", "ACTIVE AFTER", "count"),
            Column("delta_active", "DELTA ACTIVE", "count"),
            Column("num_before", "TOTAL BEFORE", "count"),
            Column("num_after", "TOTAL AFTER", "count"),
            Column("delta_bytes", "DELTA BYTES", "bytes")]
    title = "Slab caches that changed (/proc/slabinfo, start -> end)"
    if not ds.meta.slabinfo_start or not ds.meta.slabinfo_end:
        return Table("slabinfo_diff", title, cols, [], note="no slabinfo snapshots")
    before = parse_slabinfo(ds.meta.slabinfo_start)
    after = parse_slabinfo(ds.meta.slabinfo_end)
    aliases = slab_aliases(ds.meta.extra)
    rows = []
    for name in sorted(set(before) | set(after)):
        b, a = before.get(name), after.get(name)
        ab, aa = (b.active_objs if b else 0), (a.active_objs if a else 0)
        nb, na = (b.num_objs if b else 0), (a.num_objs if a else 0)
        if ab == aa and nb == na:
            continue
        size = (a or b).objsize
        rows.append({"cache": merged_name(name, aliases), "objsize": size, "active_before": ab,
                     "active_after": aa, "delta_active": aa - ab, "num_before": nb,
                     "num_after": na, "delta_bytes": (na - nb) * size})
    rows.sort(key=lambda r: (-abs(r["delta_bytes"]), -abs(r["delta_active"]), r["cache"]))
    bad = getattr(before, "malformed", 0) + getattr(after, "malformed", 0)
    note = f"{bad} malformed slabinfo lines skipped" if bad else ""
    return Table("slabinfo_diff", title, cols, rows, note=note)
