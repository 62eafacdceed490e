"""Kernel stacks in a recording: the ftrace stack entries that follow an event, paired
with it, and stored once per distinct stack.  Pure: columns in, columns out.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ftslab.trace.columns import gather_int, Views
from ftslab.trace.formats import EventFormat
from ftslab.trace.pages import PageWalk

__all__ = ["pair_stacks", "stack_rows", "stack_refs", "stack_column"]


# -- kernel stacks (the stacktrace trigger) ---------------------------------------------

_CONTEXT_FLAGS = 0x08 | 0x10 | 0x40  # TRACE_FLAG_HARDIRQ | SOFTIRQ | NMI (common_flags)


def pair_stacks(data: bytes | memoryview, walk: PageWalk, stack_id: int,
                open_ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Which event each kernel_stack event of one CPU belongs to: (event positions,
    stack positions) in the walk, pairwise.

    A conditional stacktrace trigger writes the stack while its event is reserved
    but not yet committed, so the stack follows its event; an interrupt in between
    nests its own event and stack inside the pair.  Events of ``open_ids`` open a
    bracket and stacks close the innermost open one: each stack is matched to the
    last event before it at its own nesting depth.  A pair must also agree on the pid
    and the interrupt context (common_flags); stacks that match nothing (their event
    lost, or never recorded) are left out, and counted by the caller."""
    ids = walk.ids
    if ids is None or not ids.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    is_stack = ids == stack_id
    is_open = np.isin(ids, np.fromiter(open_ids, np.int64))
    pos = np.flatnonzero(is_stack | is_open)
    if not pos.size:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    closing = is_stack[pos]
    # the usual case, a stack right after its event, needs no sort: such a pair is an
    # innermost bracket, and taking it out leaves the rest's nesting as it was
    adj = np.flatnonzero(~closing[:-1] & closing[1:])
    ev0, st0 = pos[adj], pos[adj + 1]
    rest = np.ones(pos.size, bool)
    rest[adj] = rest[adj + 1] = False
    pos, closing = pos[rest], closing[rest]
    step = np.where(closing, -1, 1)
    depth = np.cumsum(step)
    level = np.where(closing, depth + 1, depth)  # a stack's level: the depth before it
    order = np.lexsort((pos, level))
    so, sl, sc = pos[order], level[order], closing[order]
    m = np.flatnonzero(sc[1:] & ~sc[:-1] & (sl[1:] == sl[:-1]))
    ev = np.concatenate([ev0, so[m]])
    st = np.concatenate([st0, so[m + 1]])
    if ev.size:
        v = Views(data)
        offs = walk.off
        same = ((gather_int(v, offs[ev] + 4, 4, True) == gather_int(v, offs[st] + 4, 4, True))
                & ((gather_int(v, offs[ev] + 2, 1, False) & _CONTEXT_FLAGS)
                   == (gather_int(v, offs[st] + 2, 1, False) & _CONTEXT_FLAGS)))
        ev, st = ev[same], st[same]
    return ev, st


def stack_refs(data: bytes | memoryview, walk: PageWalk, stack_pos: np.ndarray,
               fmt: EventFormat) -> tuple[np.ndarray, np.ndarray]:
    """(byte offset of the first return address, number of entries) of each
    kernel_stack event at ``stack_pos``.  The format's ``caller`` array is declared with
    a fixed size, but the kernel writes ``size`` entries (the event's length says how
    many fit)."""
    size_f, caller_f = fmt.field("size"), fmt.field("caller")
    if not stack_pos.size or size_f is None or caller_f is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    offs = walk.off[stack_pos]
    room = (walk.lens[stack_pos] - caller_f.offset) // 8
    n = np.minimum(gather_int(Views(data), offs + size_f.offset, 4, True).astype(np.int64),
                   room)
    return offs + caller_f.offset, np.maximum(n, 0)


def stack_column(data: bytes | memoryview, starts: np.ndarray, n: np.ndarray,
                 j: int) -> np.ndarray:
    """Entry ``j`` (0 = innermost) of each stack, 0 where the stack is shorter."""
    out = np.zeros(starts.shape[0], np.uint64)
    has = n > j
    if has.any():
        out[has] = gather_int(Views(data), starts[has] + 8 * j, 8, False)
    return out


def stack_rows(data: bytes | memoryview, walk: PageWalk, stack_pos: np.ndarray,
               fmt: EventFormat) -> np.ndarray:
    """(n, depth) uint64 return addresses of the kernel_stack events at ``stack_pos``,
    innermost first, zero past each stack's end (see stack_refs)."""
    starts, n = stack_refs(data, walk, stack_pos, fmt)
    if not starts.size:
        return np.zeros((0, 1), np.uint64)
    depth = max(int(n.max()), 1)
    return np.stack([stack_column(data, starts, n, j) for j in range(depth)], axis=1)
