"""Kernel stacks folded for flame graphs.

Pure: one ``(comm;outermost;...;innermost, weight)`` pair per distinct comm and stack,
from the stacks a recording stored (trace/stackrefs.py); drawing the graph is left to
flame-graph tools.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ftslab.analysis.analysed import analysis_of
from ftslab.analysis.frames import STACK_SEP, NO_STACK
from ftslab.analysis.grouping import group_by_keys, rows_of, select
from ftslab.dataset import Dataset
from ftslab.errors import UsageError

__all__ = ["folded_stacks"]


def folded_stacks(ds: Dataset, weight: str = "bytes", events: Sequence[str] | None = None,
                  layer: str | tuple[str, ...] = "slab",
                  live: bool = False) -> list[tuple[str, int]]:
    """Brendan Gregg's folded stacks of the allocations: ``(comm;outermost;...;innermost,
    weight)`` per distinct (comm, stack), heaviest first; ``weight`` is ``bytes``
    (bytes_alloc) or ``count``.  Allocations without a stack are folded as
    ``comm;(no stack recorded)`` so that the total is the report's.  ``live``: only
    the allocations still live at the end (see live_allocations)."""
    if weight not in ("bytes", "count"):
        raise UsageError(f"unknown weight {weight!r}", "use bytes or count")
    if not ds.stacks:
        raise UsageError("this recording holds no kernel stacks",
                         hint="record them with: ftslab record --stacks")
    an = analysis_of(ds)
    frames = select(an, events, layer)
    if not frames or sum(fr.n for fr in frames) == 0:
        return []
    labels, codes, m, gid = group_by_keys(an, frames, ("comm", "stack"))
    w = m["bytes_alloc"] if weight == "bytes" else m["count"]
    if live:
        rows = rows_of(an, frames)
        w = (np.rint(np.bincount(gid[rows.live], rows.bytes_alloc[rows.live], w.shape[0]))
             .astype(np.int64) if weight == "bytes" else m["live"])
    out = []
    for g in np.flatnonzero(w > 0).tolist():
        comm = str(labels[0][int(codes[0][g])]).replace(";", ":").replace(" ", "_")
        label = labels[1][int(codes[1][g])]
        # the stack key's label is the frames, innermost first: fold them root first
        chain = [NO_STACK] if label == NO_STACK else label.split(STACK_SEP)[::-1]
        out.append((";".join([comm] + [f.replace(";", ":") for f in chain]), int(w[g])))
    out.sort(key=lambda x: (-x[1], x[0]))
    return out
