"""Bulk free events: one kprobe event on kmem_cache_free_bulk() frees ``cnt`` objects.

kernel/kprobes.py plans the probes: each event carries ``cnt`` (how many objects the call
frees) and pointer slots ``p<i>``, the i-th entry of the freed array, for the slots that
probe covers.  Slots at or past ``cnt`` hold whatever followed the array in memory and
free nothing.  This module turns such events into one (time, pointer) free per named
object, so that the analysis (analysed.py) pairs them with allocations like any kfree.

Pure: columns in, arrays out.  It reads no file and knows no event name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ftslab.events import BULK_FREE_SLOTS


__all__ = ["BulkFrees", "expand_bulk_frees", "unseen_free_reason"]


_SLOT = re.compile(r"p(\d+)\Z")


@dataclass(frozen=True)
class BulkFrees:
    ts: np.ndarray
    """uint64 time of each freed object (its event's)."""
    ptrs: np.ndarray
    """The freed object's address (the column's own type)."""
    seq: np.ndarray | None
    """Line order of its event (text input), else None."""
    unnamed: int
    """Objects the events freed beyond their recorded slots (freed, pointer unseen)."""


def expand_bulk_frees(fields: Mapping[str, np.ndarray], ts: np.ndarray,
                      seq: np.ndarray | None, count: str) -> BulkFrees:
    """One free per object named by events of one bulk free type: slot ``p<i>`` of an
    event counts where ``i < cnt``.  ``unnamed``: for the type that has slot 0 (the
    first probe, which sees every call), the objects past the last slot any probe
    recorded (``BULK_FREE_SLOTS``)."""
    cnt = np.asarray(fields[count]).astype(np.int64)
    slots = sorted((int(m.group(1)), name) for name in fields
                   if (m := _SLOT.match(name)) is not None)
    pick_t, pick_p, pick_s = [], [], []
    for i, name in slots:
        use = cnt > i
        if not use.any():
            continue
        pick_p.append(np.asarray(fields[name])[use])
        pick_t.append(ts[use])
        if seq is not None:
            pick_s.append(np.asarray(seq)[use])
    unnamed = 0
    if slots and slots[0][0] == 0:
        unnamed = int(np.clip(cnt - BULK_FREE_SLOTS, 0, None).sum())
    if not pick_p:
        empty = np.zeros(0, np.uint64)
        return BulkFrees(empty, empty, None if seq is None else np.zeros(0, np.int64),
                         unnamed)
    return BulkFrees(np.concatenate(pick_t), np.concatenate(pick_p),
                     None if seq is None else np.concatenate(pick_s), unnamed)


def unseen_free_reason(cache: str, *, bulk_probed: bool = False,
                       sheaf_capacity: int | None = None) -> tuple[str, bool] | None:
    """Why a cache's frees may be missing from a recording, for a reconciliation that
    finds its LIVE contradicted by /proc/slabinfo: (reason, certain), or None when no
    known untraced free path applies.  ``bulk_probed``: kmem_cache_free_bulk was
    probed (kpf_ events); ``sheaf_capacity``: /sys/kernel/slab/<cache>/sheaf_capacity
    (None where absent: sheaves came with commit 2d517aa09bbc ("slab: add opt-in caching
    layer of percpu sheaves") (in v6.18)).  The facts: docs/bulk-frees.md."""
    if sheaf_capacity:
        # Since commit ec66e0d59952 ("slab: add sheaf support for batching kfree_rcu()
        # operations") (in v6.18), kfree_rcu() of an object of a cache with sheaves goes
        # into an RCU sheaf and back to the cache in rcu_free_sheaf(): no event, probed
        # or not
        return ("objects freed with kfree_rcu() return to the cache through its percpu "
                "sheaves, which no tracepoint reports", cache == "maple_node")
    if bulk_probed:
        return None
    if cache == "maple_node":
        return ("the maple tree frees nodes in bulk (kmem_cache_free_bulk) or with "
                "kfree_rcu(), which no tracepoint reports", True)
    if cache.startswith(("kmalloc-", "kmalloc-cg-", "kmalloc-rcl-", "dma-kmalloc-")):
        return ("objects freed with kfree_rcu() leave in batches (kfree_bulk), which no "
                "tracepoint reports", False)
    return None
