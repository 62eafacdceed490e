"""LIVE checked against the kernel's own counters: traced allocations and frees per slab
cache, against the change of the cache's active objects in /proc/slabinfo.

Role: pure functions over a ``dataset.Dataset`` (its events, the /proc/slabinfo texts
taken at start and end, the per-second samples and the SLUB parameters that
``kernel/slabsample.py`` stored at record time).  No file, no kernel interface, no printing.

The rule, per cache C (kmalloc size classes sum the kernel's kmalloc-, kmalloc-cg-,
kmalloc-rcl-, kmalloc-rnd-NN- and dma-kmalloc- caches of that size, which the events
cannot tell apart):

- A = traced allocations into C; F_new = their frees seen in the recording;
  LIVE = A - F_new (the report's own numbers).
- F_old = traced frees in the recording of C's objects allocated *before* it (frees
  that pair with no traced allocation).  ``kmem:kmem_cache_free`` names its cache;
  ``kmem:kfree`` does not: an unpaired kfree is given to the cache of the allocations
  seen on the same 4 KiB page (a slab page holds one cache's objects), else it is
  *unattributed*.
- The kernel: Δactive = active_objs(end) - active_objs(start).  Every object handed
  out is active, so Δactive = A_all - F_all + Δslack, where A_all/F_all are *all*
  allocations/frees of C in the window and Δslack the change of the free objects SLUB
  still counts as active (free objects on the per-CPU slab and per-CPU partial slabs,
  and objects held in per-CPU sheaves and the node's barn: /proc/slabinfo subtracts
  only the free objects of the node partial lists).  Hence
  LIVE_all = A_all - F_new_all = Δactive + F_old_all - Δslack.
- SLACK bounds |Δslack|, from the running kernel's /sys/kernel/slab/C:
  cpus x objs_per_slab x (1 + ceil(2 x cpu_partial / objs_per_slab))   (the CPU slab and
  the per-CPU partial slabs; mm/slub.c slub_set_cpu_partial() turns cpu_partial
  objects into that many slabs) + sheaf_capacity x (3 x cpus + 10 x nodes) (per CPU the
  main, spare and rcu_free sheaves; a barn keeps up to MAX_FULL_SHEAVES = 10 full
  sheaves per node; sheaves came with commit 2d517aa09bbc ("slab: add opt-in caching
  layer of percpu sheaves") (in v6.18), sheaf_capacity is 0 or absent before).
- Bounds on the LIVE a recording may claim (each LIVE object is one of them):
  1. always: LIVE <= active_objs(end) + SLACK (slack only for the few ms between the
     end of tracing and the read of /proc/slabinfo);
  2. when every free of the window was recorded (a whole-system recording, or frees
     recorded system-wide): LIVE <= Δactive + F_old + SLACK, and for a kmalloc class
     + the unattributed kfrees (they may be that class's old objects).
  A cache whose LIVE exceeds its bound is flagged, with the reason: frees the
  recording could not see (task-limited: RCU callbacks, interrupts, other tasks), frees
  no tracepoint reports (kmem_cache_free_bulk / kfree_bulk), or lost events.
- For a whole-system recording, each cache's EXPECTED change A - F_new - F_old is set
  beside Δactive: it is *explained* when |Δactive - EXPECTED| <= SLACK.

Limits: an object allocated before the recording and freed by kfree() on a page where
no allocation was seen is unattributed (counted, never guessed); a kmem cache the
kernel merged into another is counted under the name /proc/slabinfo shows; without
the SLUB parameters (recordings made before they were stored) bound 2 is not applied
and bound 1 has no slack.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from ftslab.analysis.grouping import group_allocations
from ftslab.analysis.kmalloc import kmalloc_size_class
from ftslab.analysis.pairing import pair_frees
from ftslab.trace.slabinfo import parse_slabinfo
from ftslab.analysis.tables import Column, Table, UNKNOWN_CACHE, ZERO_SIZE
from ftslab.analysis.kmalloc import LARGE_KMALLOC
from ftslab.dataset import Dataset


__all__ = [
    "CacheCheck", "check_caches", "reconcile_table", "reconcile_warning", "free_scope",
    "cache_key", "slab_slack", "kernel_active_series", "add_kernel_series",
    "allocinfo_diff", "parse_allocinfo", "MAX_FULL_SHEAVES"
]


#: mm/slub.c (Linux 6.18): full sheaves a node's barn keeps at most
MAX_FULL_SHEAVES = 10


_KMALLOC = re.compile(r"^(?:dma-)?kmalloc-(?:cg-|rcl-|rnd-\d+-)?(\d+k?)$")


def cache_key(name: str) -> str:
    """The name reconciliation uses: a kmalloc variant (kmalloc-cg-64, dma-kmalloc-64,
    kmalloc-rnd-03-64) -> its size class (kmalloc-64); any other name unchanged."""
    m = _KMALLOC.match(name)
    return f"kmalloc-{m.group(1)}" if m else name


def slab_slack(objs_per_slab: int, cpu_partial: int, sheaf_capacity: int, cpus: int,
               nodes: int = 1) -> int:
    """Most free objects SLUB can count as active in one cache (see the module doc)."""
    if objs_per_slab <= 0:
        return 0
    partial_slabs = math.ceil(2 * cpu_partial / objs_per_slab) if cpu_partial > 0 else 0
    return (cpus * objs_per_slab * (1 + partial_slabs)
            + sheaf_capacity * (3 * cpus + MAX_FULL_SHEAVES * nodes))


def free_scope(ds: Dataset) -> str:
    """Whose frees the recording holds, in summary.frees_scope's words: ``"system"``
    (every task and context: a whole-system recording, or frees recorded system-wide
    beside a task-limited one), ``"filtered"`` (only the traced tasks' own, or filtered),
    ``"none"`` (no free event recorded) or ``"unknown"`` (not recorded by ftslab).
    ``meta.extra["frees_scope"]`` says it where the recording wrote it; older ftslab
    recordings are read from their tracefs writes (set_event_pid, a filter on a free
    event)."""
    said = ds.meta.extra.get("frees_scope")
    if said in ("system", "filtered", "none"):
        return said
    writes = ds.meta.extra.get("tracefs_writes")
    if writes is None:
        return "unknown"
    for w in writes:
        path = str(w).split(" <- ")[0]
        if path.endswith("/set_event_pid"):
            return "filtered"
        if re.search(r"/events/kmem/(kfree|kmem_cache_free)/filter$", path):
            return "filtered"
    return "system"


@dataclass(frozen=True)
class CacheCheck:
    """One cache's traced counts beside the kernel's."""

    cache: str
    """Cache name (kmalloc variants summed in their size class)."""
    allocs: int
    """Traced allocations (objects)."""
    frees: int
    """Frees of those allocations seen in the recording (objects)."""
    live: int
    """allocs - frees: what the report calls LIVE (objects)."""
    frees_old: int
    """Traced frees of objects allocated before the recording (objects)."""
    active_start: int
    active_end: int
    delta_active: int
    """active_end - active_start (objects, /proc/slabinfo)."""
    slack: int | None
    """Most free objects SLUB counts as active in this cache; None when unknown."""
    expected: int
    """allocs - frees - frees_old: the change the trace predicts (objects)."""
    max_live: int
    """The most LIVE the kernel's counters allow (objects)."""
    verdict: str
    """``"ok"``, ``"LIVE contradicted"``; for a whole-system recording also whether the
    change is explained (``"explained"``, ``"not explained"``)."""
    reason: str


class _Labels:
    """Cache labels as small integer codes (numpy work on codes, never on strings)."""

    def __init__(self):
        self.names: list = []
        self._code: dict = {}

    def codes(self, labels: list) -> np.ndarray:
        out = np.empty(len(labels), np.int64)
        for i, name in enumerate(labels):
            c = self._code.get(name)
            if c is None:
                c = self._code[name] = len(self.names)
                self.names.append(name)
            out[i] = c
        return out


def _slab_columns(ds: Dataset, lab: _Labels):
    """(pointer keys, times, cache codes of ``lab``) of the slab allocation events and
    of the free events (code of None: a free that names no cache)."""
    from ftslab.analysis.frames import factorize, ptr_keys
    page_size = int(ds.meta.extra.get("page_size", 4096) or 4096)
    allocs, frees = [], []
    for (system, name), c in ds.columns.items():
        if system not in ("kmem", "") or not len(c) or "ptr" not in c.fields:
            continue
        f = c.fields
        if name == "kmalloc" and "bytes_alloc" in f:
            codes, uniq = factorize(np.asarray(f["bytes_alloc"], dtype=np.int64))
            labels = [kmalloc_size_class(int(u), page_size) for u in uniq]
        elif name in ("kmem_cache_alloc", "kmem_cache_free", "kfree"):
            if "name" in f:
                codes, labels = factorize(f["name"])
            else:
                codes, labels = np.zeros(len(c), np.int64), [
                    UNKNOWN_CACHE if name == "kmem_cache_alloc" else None]
        else:
            continue
        row = (ptr_keys(f["ptr"]), np.asarray(c.ts, dtype=np.uint64),
               lab.codes(labels)[codes])
        (allocs if name in ("kmalloc", "kmem_cache_alloc") else frees).append(row)
    return allocs, frees


def _old_frees(ds: Dataset) -> tuple[dict[str, int], int]:
    """Traced frees that pair with no traced allocation, per cache key, and how many of
    them could not be given a cache."""
    lab = _Labels()
    allocs, frees = _slab_columns(ds, lab)
    if not frees:
        return {}, 0

    def cat(parts, i, dtype):
        return np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, dtype)
    ak, at, acode = cat(allocs, 0, np.uint64), cat(allocs, 1, np.uint64), cat(allocs, 2, np.int64)
    fk, ft, fcode = cat(frees, 0, np.uint64), cat(frees, 1, np.uint64), cat(frees, 2, np.int64)
    real = ak > np.uint64(16)
    ak, at, acode = ak[real], at[real], acode[real]
    _freed, fidx = pair_frees(ak, at, fk, ft)
    unpaired = fk > np.uint64(16)
    unpaired[fidx[fidx >= 0]] = False
    unnamed = np.array([n is None for n in lab.names], dtype=bool)
    skip = np.array([n in (LARGE_KMALLOC, UNKNOWN_CACHE, ZERO_SIZE) for n in lab.names],
                    dtype=bool)
    out: dict[str, int] = {}

    def add(codes: np.ndarray) -> int:
        """Count frees by cache code; returns how many name no slab cache."""
        left = 0
        for code, n in zip(*np.unique(codes, return_counts=True)):
            if skip[code]:
                left += int(n)
                continue
            key = cache_key(str(lab.names[int(code)]))
            out[key] = out.get(key, 0) + int(n)
        return left
    named = unpaired & ~unnamed[fcode]
    unattributed = add(fcode[named])
    rest = np.flatnonzero(unpaired & unnamed[fcode])
    if not rest.size:
        return out, unattributed
    if ds.meta.source.startswith("text") or not ak.size:
        return out, unattributed + int(rest.size)  # hashed pointers: no page to go by
    # a slab page holds one cache's objects: the page of an unpaired kfree names its
    # cache when the recording saw allocations of exactly one cache on that page
    pages = ak >> np.uint64(12)
    order = np.lexsort((acode, pages))
    sp, sc = pages[order], acode[order]
    first = np.ones(sp.size, dtype=bool)
    first[1:] = sp[1:] != sp[:-1]
    starts = np.flatnonzero(first)
    ends = np.append(starts[1:], sp.size) - 1
    one = sc[starts] == sc[ends]  # sorted by code within a page: one cache on it
    upages, ucode = sp[starts][one], sc[starts][one]
    fp = fk[rest] >> np.uint64(12)
    hit = np.zeros(fp.size, dtype=bool)
    pos = np.zeros(fp.size, dtype=np.int64)
    if upages.size:
        pos = np.minimum(np.searchsorted(upages, fp), upages.size - 1)
        hit = upages[pos] == fp
    unattributed += int((~hit).sum()) + add(ucode[pos[hit]])
    return out, unattributed


def _slack_of(ds: Dataset, names: list[str]) -> int | None:
    params = ds.meta.extra.get("slab_params") or {}
    caches = params.get("caches") or {}
    if not caches:
        return None
    total = 0
    for n in names:
        p = caches.get(n)
        if p is None:
            return None
        total += slab_slack(int(p[0]), int(p[1]), int(p[2]), int(params.get("cpus", 1)),
                            int(params.get("nodes", 1)))
    return total


def _kernel_names(snapshot) -> dict[str, list[str]]:
    """cache key -> the /proc/slabinfo names summed under it."""
    out: dict[str, list[str]] = {}
    for name in snapshot:
        out.setdefault(cache_key(name), []).append(name)
    return out


def check_caches(ds: Dataset) -> tuple[list[CacheCheck], dict]:
    """Each cache with traced slab allocations or frees, checked against /proc/slabinfo
    (module doc: the rule).  Returns (checks, facts): facts holds ``scope``
    (free_scope), ``unattributed`` (unpaired kfrees of no known cache), ``lost``, and
    for whole-system recordings ``explained``/``changed`` (caches whose active objects
    changed by more than their slack, and how many of them the trace explains),
    ``sum_abs_delta`` and ``sum_abs_residual`` (objects, over every changed cache).
    Empty when either slabinfo snapshot is missing."""
    facts = {"scope": free_scope(ds), "unattributed": 0, "lost": ds.meta.total_lost}
    if not ds.meta.slabinfo_start or not ds.meta.slabinfo_end:
        return [], facts
    before, after = parse_slabinfo(ds.meta.slabinfo_start), parse_slabinfo(ds.meta.slabinfo_end)
    names = _kernel_names({**before, **after})
    traced: dict[str, list[int]] = {}
    for r in group_allocations(ds, ("cache",), "count", None, None, _layer="slab").rows:
        c = r["cache"]
        if c in (UNKNOWN_CACHE, LARGE_KMALLOC, ZERO_SIZE) or r["live"] is None:
            continue
        t = traced.setdefault(cache_key(c), [0, 0, 0])
        t[0] += r["count"]
        t[1] += r["frees"]
        t[2] += r["live"]
    old, unattributed = _old_frees(ds)
    facts["unattributed"] = unattributed
    scope = facts["scope"]
    complete = scope == "system"
    out = []
    keys = set(traced) | set(old)
    # every allocation recorded too (no task limit, no filter on them): then each
    # cache's change is the trace's to explain
    paths = [str(w).split(" <- ")[0] for w in ds.meta.extra.get("tracefs_writes") or ()]
    whole = complete and not any(
        p.endswith("/set_event_pid") or re.search(
            r"/events/kmem/(kmalloc|kmem_cache_alloc)/filter$", p) for p in paths)
    if whole:
        keys |= {k for k, ns in names.items()
                 if sum(before[n].active_objs if n in before else 0 for n in ns)
                 != sum(after[n].active_objs if n in after else 0 for n in ns)}
    changed = explained = 0
    sum_delta = sum_resid = 0
    for key in sorted(keys):
        ns = names.get(key)
        if not ns:
            continue  # not a cache /proc/slabinfo lists (a name seen only in events)
        a_s = sum(before[n].active_objs for n in ns if n in before)
        a_e = sum(after[n].active_objs for n in ns if n in after)
        allocs, frees, live = traced.get(key, (0, 0, 0))
        f_old = old.get(key, 0)
        delta = a_e - a_s
        slack = _slack_of(ds, ns)
        s = slack or 0
        expected = allocs - frees - f_old
        max_live = a_e + s
        bound = "the cache's active objects at the end"
        if complete and slack is not None:
            extra = unattributed if key.startswith("kmalloc-") else 0
            by_delta = delta + f_old + extra + s
            if by_delta < max_live:
                max_live, bound = by_delta, ("the change of its active objects plus the "
                                             "frees of older objects seen")
        reasons = []
        if live > max_live:
            verdict = "LIVE contradicted"
            reasons.append(f"LIVE {live:,} > {max_live:,}, the most {bound} allow")
            if scope == "none":
                reasons.append("the recording holds no free events")
            elif scope != "system":
                reasons.append("frees in other tasks and contexts (RCU callbacks, "
                               "interrupts, workqueues) were not recorded")
            else:
                reasons.append("frees no kmem tracepoint reports: kmem_cache_free_bulk/"
                               "kfree_bulk")
            if ds.meta.total_lost:
                reasons.append("events were lost (a lost free shows as live)")
        else:
            verdict = "ok"
        if whole:
            resid = delta - expected
            if abs(delta) > s or abs(resid) > s:
                changed += 1
                sum_delta += abs(delta)
                sum_resid += max(abs(resid) - s, 0)
                if abs(resid) <= s:
                    explained += 1
            if verdict == "ok" and slack is not None:
                verdict = "explained" if abs(resid) <= s else "not explained"
                if verdict == "not explained":
                    reasons.append(f"the kernel's change differs from the traced one by "
                                   f"{resid:+,} (slack {s:,})")
        out.append(CacheCheck(key, allocs, frees, live, f_old, a_s, a_e, delta, slack,
                              expected, max_live, verdict, "; ".join(reasons)))
    if whole:
        facts.update(changed=changed, explained=explained, sum_abs_delta=sum_delta,
                     sum_abs_residual=sum_resid)
    return out, facts


_COLUMNS = [Column("cache", "CACHE"), Column("allocs", "ALLOCS", "count"),
            Column("frees", "FREES", "count"), Column("live", "LIVE", "count"),
            Column("frees_old", "FREES OF OLDER", "count"),
            Column("active_start", "ACTIVE START", "count"),
            Column("active_end", "ACTIVE END", "count"),
            Column("delta_active", "DELTA ACTIVE", "count"),
            Column("expected", "TRACED DELTA", "count"),
            Column("slack", "SLACK", "count"),
            Column("max_live", "MAX LIVE", "count"),
            Column("verdict", "CHECK"), Column("reason", "WHY")]


def reconcile_table(ds: Dataset, checks=None, facts=None, top: int | None = 20) -> Table:
    """The checks as a table: contradicted caches first, then by |DELTA ACTIVE|."""
    if checks is None:
        checks, facts = check_caches(ds)
    title = "LIVE checked against /proc/slabinfo (objects; kmalloc variants by size class)"
    rows = [{c.name: getattr(k, c.name) for c in _COLUMNS} for k in checks]
    rank = {"LIVE contradicted": 0, "not explained": 1}
    rows.sort(key=lambda r: (rank.get(r["verdict"], 2), -abs(r["live"] - r["delta_active"])
                             if r["verdict"] == "LIVE contradicted" else 0,
                             -abs(r["delta_active"]), r["cache"]))
    flagged = sum(r["verdict"] == "LIVE contradicted" for r in rows)
    if top is not None and len(rows) > top:
        rows = rows[:max(top, flagged)]
    notes = [_scope_note(facts)]
    if facts.get("unattributed"):
        notes.append(f"{facts['unattributed']:,} frees of older objects named no cache "
                     "(kfree on a page with no allocation seen): allowed to any kmalloc class")
    if any(k.slack is None for k in checks):
        notes.append("no SLUB parameters in this recording: SLACK unknown (0), only "
                     "LIVE <= ACTIVE END is checked")
    if "changed" in facts:
        notes.append(explained_line(facts))
    return Table("reconcile", title, list(_COLUMNS), rows, note="; ".join(notes))


def _scope_note(facts: dict) -> str:
    return {"system": "frees recorded from every task and context",
            "filtered": "frees recorded only for the recorded tasks (or filtered): only "
                        "LIVE <= ACTIVE END + SLACK can be checked",
            "none": "no free event recorded: only LIVE <= ACTIVE END + SLACK is checked",
            }.get(facts.get("scope"), "who recorded the frees is unknown: only LIVE <= "
                  "ACTIVE END + SLACK is checked")


def explained_line(facts: dict) -> str:
    """How much of the kernel's change a whole-system trace explains, in one line."""
    return (f"the trace explains the change of {facts['explained']} of the "
            f"{facts['changed']} caches whose active objects or traced balance moved by "
            f"more than their slack (their changes: {facts['sum_abs_delta']:,} objects; "
            f"the kernel's and the trace's differ by {facts['sum_abs_residual']:,} beyond "
            "the slack)")


def reconcile_warning(checks: list[CacheCheck]) -> str | None:
    """One warning line naming the caches whose LIVE the kernel contradicts."""
    bad = [k for k in checks if k.verdict == "LIVE contradicted"]
    if not bad:
        return None
    bad.sort(key=lambda k: -(k.live - k.max_live))
    shown = ", ".join(f"{k.cache} (LIVE {k.live:,}, active {k.delta_active:+,})"
                      for k in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    return (f"WARNING: /proc/slabinfo contradicts LIVE for {len(bad)} cache(s): {shown}{more}"
            f" -- {bad[0].reason.split('; ', 1)[-1]}; see the table 'reconcile'")


# ----------------------------------------------------------------------------------------
# The kernel's active objects during the recording (slabsample.SlabSampler's data)
# ----------------------------------------------------------------------------------------

def kernel_active_series(ds: Dataset) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sample times in the trace clock, cache key -> active objects at each sample),
    kmalloc variants summed; empty when the recording has no samples."""
    s = ds.meta.extra.get("slabinfo_samples") or {}
    t = np.asarray(s.get("t") or [], dtype=np.uint64)
    out: dict[str, np.ndarray] = {}
    for name, flat in (s.get("active") or {}).items():
        idx, val = np.asarray(flat[0::2], np.int64), np.asarray(flat[1::2], np.int64)
        if not idx.size:
            continue
        # each value holds from its sample until the next change; before the cache's
        # first sample it had none (created during the recording)
        at = np.searchsorted(idx, np.arange(t.size), side="right") - 1
        series = np.where(at >= 0, val[np.maximum(at, 0)], 0)
        key = cache_key(name)
        out[key] = out[key] + series if key in out else series
    return t, out


def add_kernel_series(table: Table, ds: Dataset, lo: int, interval_ns: int) -> Table:
    """Add to an interval series by cache (series.interval_series) the traced
    ``outstanding_objs`` (allocations minus their frees so far) and the kernel's
    ``kernel_delta_active`` (the cache's active objects at the last sample at or before
    the interval's end, minus those at the first sample), both in objects: the two
    lines ``--plot`` draws side by side.  ``lo``: the series' first event (trace clock).
    Without samples the table is left as it is."""
    t, series = kernel_active_series(ds)
    if not t.size or not table.rows or "cache" not in table.rows[0]:
        return table
    table.columns += [Column("outstanding_objs", "OUTSTANDING OBJS", "count"),
                      Column("kernel_delta_active", "KERNEL DELTA ACTIVE", "count")]
    held: dict[str, int] = {}
    for r in table.rows:
        c = r["cache"]
        if r.get("frees") is None:
            r["outstanding_objs"] = None
        else:
            held[c] = held.get(c, 0) + r["count"] - r["frees"]
            r["outstanding_objs"] = held[c]
        vals = series.get(cache_key(str(c)))
        end = lo + int(round(r["t_s"] * 1e9)) + interval_ns
        i = int(np.searchsorted(t, np.uint64(max(end, 0)), side="right")) - 1
        r["kernel_delta_active"] = (int(vals[i] - vals[0]) if vals is not None and i >= 0
                                    else None)
    n = t.size
    table.note = "; ".join(x for x in (table.note, f"KERNEL DELTA ACTIVE: /proc/slabinfo "
                                       f"sampled {n} time(s), change since the first "
                                       "sample (kmalloc variants by size class)") if x)
    return table


# ----------------------------------------------------------------------------------------
# /proc/allocinfo (CONFIG_MEM_ALLOC_PROFILING, since commit 22d407b164ff ("lib: add
# allocation tagging support for memory allocation profiling") (in v6.10))
# ----------------------------------------------------------------------------------------

def parse_allocinfo(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/allocinfo`` text -> {call site tag ("mm/slub.c:2345 func:kmalloc_..."):
    (bytes, calls)}; lines that do not start with two numbers are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            out[parts[2].strip()] = (int(parts[0]), int(parts[1]))
    return out


def allocinfo_diff(ds: Dataset, top: int | None = 20) -> Table | None:
    """Call sites whose memory changed between the /proc/allocinfo texts taken at start
    and end (bytes and live allocations, as the kernel's allocation profiling counts
    them); None when the recording has no such texts."""
    a, b = ds.meta.extra.get("allocinfo_start"), ds.meta.extra.get("allocinfo_end")
    if not a or not b:
        return None
    before, after = parse_allocinfo(a), parse_allocinfo(b)
    rows = []
    for tag in set(before) | set(after):
        (b0, c0), (b1, c1) = before.get(tag, (0, 0)), after.get(tag, (0, 0))
        if (b0, c0) != (b1, c1):
            rows.append({"callsite": tag, "delta_bytes": b1 - b0, "delta_calls": c1 - c0,
                         "bytes_end": b1})
    rows.sort(key=lambda r: (-abs(r["delta_bytes"]), r["callsite"]))
    cols = [Column("callsite", "CALL SITE (allocinfo tag)"),
            Column("delta_bytes", "DELTA BYTES", "bytes"),
            Column("delta_calls", "DELTA LIVE ALLOCS", "count"),
            Column("bytes_end", "BYTES AT END", "bytes")]
    return Table("allocinfo_diff", "Memory per call site (/proc/allocinfo, start -> end)",
                 cols, rows[:top] if top is not None else rows)
