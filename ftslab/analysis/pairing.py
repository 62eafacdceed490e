"""Pairing allocations with their frees: by pointer, in time order, on two threads where
the data is large.

Pure numpy over pointer keys and timestamps: it knows no event, no cache and no file.
The threads only split sorts and scatters whose writes are disjoint, so the result does
not depend on them.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np

__all__ = ["pair_frees"]


class FreeTimes:
    """The times of the frees that free matching used (pointers > 16), in the order
    _match_frees gave them: joined only when a free_ts is asked for."""

    def __init__(self, frees: list[tuple], real: list[np.ndarray]):
        self._parts = [(t, r) for (t, _k, _s), r in zip(frees, real)]

    @functools.cached_property
    def all(self) -> np.ndarray:
        return np.concatenate([t[r] for t, r in self._parts])


def pair_frees(ak: np.ndarray, at: np.ndarray, fk: np.ndarray, ft: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
    """Pair allocations (pointer ``ak``, time ``at``) with frees (``fk``, ``ft``): an
    allocation is freed when the next event on its pointer is a free.  Returns (freed,
    one bool per allocation; the index of that free in ``fk``, -1 where not freed).
    An allocation sorts before a free with the same timestamp: an object allocated and
    freed within one clock tick (text traces: 1 us) is then seen as freed.  A free of a
    pointer <= 16 (kfree(NULL), ZERO_SIZE_PTR: traced too) frees nothing."""
    na = ak.shape[0]
    real = np.flatnonzero(fk > np.uint64(16))
    owned = [np.concatenate([ak, fk[real]]), np.concatenate([at, ft[real]])]
    freed, ridx = pair_owned(owned, na)
    fidx = np.full(na, -1, np.int64)
    fidx[freed] = real[ridx[freed]]
    return freed, fidx


def pair_owned(owned: list, na: int) -> tuple[np.ndarray, np.ndarray]:
    """pair_frees of ``owned`` = [pointers, times] of the allocations (the first
    ``na``) then of the frees (pointers > 16 only), arrays this function owns: the
    list is emptied, so that each array is dropped as soon as it has been used (on
    10 M events they are 170 MB).  Returns (freed, the index among the frees of each
    one's free, -1 where not freed)."""
    keys, ts = owned
    owned.clear()
    n = keys.shape[0]
    freed = np.zeros(na, dtype=bool)
    ridx = np.full(na, -1, np.int64)
    if na == 0 or n == na:
        return freed, ridx
    order, rank_bits = _time_ranks(keys, ts)
    if order is None:
        _pair_lexsorted(keys, ts, na, freed, ridx)
        return freed, ridx
    del ts
    packed = keys
    del keys
    _sort_in_two_threads(packed)
    # events in (pointer, time) order: an allocation is freed when the next event is a
    # free of the same pointer (the pointer bits of two neighbours are equal); a slice
    # at a time, so that no temporary is as long as the events
    rank_mask = np.uint64((1 << rank_bits) - 1)
    idx = np.empty(n, order.dtype)
    same = np.empty(n - 1, dtype=bool)

    def neighbours(lo: int, hi: int) -> None:
        for at in range(lo, hi, _RANK_STEP):
            end = min(at + _RANK_STEP, hi)
            if at < n - 1:
                stop = min(end, n - 1)
                x = packed[at:stop] ^ packed[at + 1:stop + 1]
                np.less(x, np.uint64(1 << rank_bits), out=same[at:stop])
                del x
            idx[at:end] = order[packed[at:end] & rank_mask]
    _in_two_halves(neighbours, n)
    del order, packed
    is_alloc = idx < na
    hit = is_alloc[:-1] & ~is_alloc[1:] & same
    fpos = np.flatnonzero(hit)
    freed[idx[fpos]] = True
    ridx[idx[fpos]] = idx[fpos + 1] - na
    return freed, ridx


_RANK_STEP = 1 << 20


def compress_into(mask: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out[:] = a[mask], without a temporary when the types agree (line numbers of
    text input are int64: converted)."""
    if a.dtype == out.dtype:
        np.compress(mask, a, out=out)
    else:
        out[:] = a[mask]


def _time_ranks(keys: np.ndarray, ts: np.ndarray):
    """Pack each event's (pointer, rank in time) into ``keys`` (overwritten: it is
    pair_owned's own), so that one plain sort orders the events by pointer, then
    time: returns (the events in time order, the rank bits), or (None, 0) with
    ``keys`` as it was when the pointers span too many bits (then a lexsort does it).
    Events come in a few runs sorted by time (per CPU, per type): their time order is
    a cheap merge.  Equal times keep allocations first (they come first in ``ts``)."""
    n = keys.shape[0]
    lo = keys.min()
    keys -= lo
    align = int(np.bitwise_or.reduce(keys))
    shift = (align & -align).bit_length() - 1 if align else 0
    rank_bits = max(n - 1, 1).bit_length()
    if (int(keys.max()) >> shift).bit_length() + rank_bits > 64:
        keys += lo
        return None, 0
    order = np.argsort(ts, kind="stable")
    if n < 1 << 31:
        order = order.astype(np.int32)
    keys >>= np.uint64(shift)
    keys <<= np.uint64(rank_bits)

    def ranks(lo: int, hi: int) -> None:  # each event's rank in time, a slice at a time
        for at in range(lo, hi, _RANK_STEP):
            end = min(at + _RANK_STEP, hi)
            keys[order[at:end]] |= np.arange(at, end, dtype=np.uint64)
    _in_two_halves(ranks, n)
    return order, rank_bits


def _in_two_halves(step: Callable[[int, int], None], n: int) -> None:
    """step(0, h) and step(h, n) at once in two threads (their writes are disjoint):
    numpy's gathers and scatters let the GIL go, and the analysis otherwise runs on
    one CPU.  Random scatters over 11 M events: 0.52 s -> 0.25 s."""
    if n < 2 * _RANK_STEP:
        step(0, n)
        return
    h = (n // 2 + _RANK_STEP - 1) // _RANK_STEP * _RANK_STEP
    _run_parallel([lambda: step(0, h), lambda: step(h, n)])


def _sort_in_two_threads(a: np.ndarray) -> None:
    """Sort ``a`` in place: its halves at once in two threads (numpy sorts without the
    GIL), then a merge of the two sorted runs."""
    if a.shape[0] < 1 << 20:
        a.sort()
        return
    half = a.shape[0] // 2
    _run_parallel([a[:half].sort, a[half:].sort])
    a.sort(kind="stable")  # timsort: two runs, one merge


def _pair_lexsorted(keys, ts, na, freed, ridx) -> None:
    """pair_owned for pointers that do not pack into one word with their time rank."""
    kind = np.ones(keys.shape[0], np.uint8)
    kind[:na] = 0
    if int(ts.max()) < 1 << 62:
        order = np.lexsort((ts * np.uint64(2) + kind, keys))
    else:
        order = np.lexsort((kind, ts, keys))
    sk = keys[order]
    skind = kind[order]
    hit = np.zeros(order.shape[0], dtype=bool)
    hit[:-1] = (skind[:-1] == 0) & (skind[1:] == 1) & (sk[1:] == sk[:-1])
    fpos = np.flatnonzero(hit)
    freed[order[fpos]] = True
    ridx[order[fpos]] = order[fpos + 1] - na


def _run_parallel(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` at once in threads (numpy releases the GIL in its loops)."""
    if len(jobs) == 1:
        jobs[0]()
        return
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(jobs)) as ex:
        for f in [ex.submit(j) for j in jobs]:
            f.result()
