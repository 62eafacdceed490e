"""ftslab.analysis.reconcile: LIVE against /proc/slabinfo, on real 6.18 captures.

The fixtures are /proc/slabinfo read just before and just after one process opened 2,000
eventfds on Linux 6.18 (each: one struct file from ``filp``, one eventfd_ctx from
kmalloc-64), and the SLUB parameters of that kernel's caches (slabsample.read_slab_params;
tests/fixtures/README.md).  The traced side is built by hand: the events such a run
records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ftslab.analysis import reconcile
from ftslab import events
from ftslab.analysis import build
from ftslab.analysis import slabinfo
from ftslab.dataset import Dataset, Metadata
from ftslab.kernel.slabsample import SlabSampler, clock_now_ns

from test_build import cols

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
N = 2000
BEFORE = (FIX / "slabinfo-eventfd2000-before.txt").read_text()
AFTER = (FIX / "slabinfo-eventfd2000-after.txt").read_text()
PARAMS = json.loads((FIX / "slab-params.json").read_text())
FILP0 = 0xFFFF888100000000
CTX0 = 0xFFFF888200000000


def _active(text, name):
    return slabinfo.parse_slabinfo(text)[name].active_objs


def _dataset(n_filp=N, freed=0, old_frees=0, writes=(), params=PARAMS) -> Dataset:
    """n_filp filp and N kmalloc-64 allocations, ``freed`` of the filps freed again,
    and ``old_frees`` kmem_cache_free of filps allocated before the recording."""
    filp = [dict(ts=10 + i, pid=7, call_site=1, ptr=FILP0 + 256 * i, bytes_req=232,
                 bytes_alloc=256, gfp_flags=0, name="filp") for i in range(n_filp)]
    ctx = [dict(ts=10 + i, pid=7, call_site=2, ptr=CTX0 + 64 * i, bytes_req=48,
                bytes_alloc=64, gfp_flags=0, node=-1) for i in range(N)]
    frees = [dict(ts=100_000 + i, pid=7, call_site=3, ptr=FILP0 + 256 * i, name="filp")
             for i in range(freed)]
    frees += [dict(ts=200_000 + i, pid=0, call_site=3, ptr=0xFFFF888300000000 + 256 * i,
                   name="filp") for i in range(old_frees)]
    columns = {("kmem", "kmem_cache_alloc"): cols("kmem", "kmem_cache_alloc", filp),
               ("kmem", "kmalloc"): cols("kmem", "kmalloc", ctx)}
    if frees:
        columns[("kmem", "kmem_cache_free")] = cols("kmem", "kmem_cache_free", frees)
    extra = {"tracefs_writes": list(writes)}
    if params is not None:
        extra["slab_params"] = params
    meta = Metadata(source="synthetic", kernel="6.18", slabinfo_start=BEFORE,
                    slabinfo_end=AFTER, extra=extra)
    return Dataset(meta, columns)


def _rows(ds):
    checks, facts = reconcile.check_caches(ds)
    return {c.cache: c for c in checks}, facts


def test_the_fixture_is_what_it_says():
    # the kernel's own change for the 2,000 eventfds, within the per-CPU slack
    d = _active(AFTER, "filp") - _active(BEFORE, "filp")
    p = PARAMS["caches"]["filp"]
    slack = reconcile.slab_slack(p[0], p[1], p[2], PARAMS["cpus"], PARAMS["nodes"])
    assert abs(d - N) <= slack and 0 < slack < N


def test_kmalloc_variants_are_one_size_class():
    assert reconcile.cache_key("kmalloc-cg-64") == "kmalloc-64"
    assert reconcile.cache_key("dma-kmalloc-8k") == "kmalloc-8k"
    assert reconcile.cache_key("kmalloc-rnd-03-96") == "kmalloc-96"
    assert reconcile.cache_key("kmalloc_buckets") == "kmalloc_buckets"
    assert reconcile.cache_key("filp") == "filp"
    # the real names of this kernel: every variant of kmalloc-64 is summed
    names = [n for n in slabinfo.parse_slabinfo(AFTER) if reconcile.cache_key(n) == "kmalloc-64"]
    assert sorted(names) == ["dma-kmalloc-64", "kmalloc-64", "kmalloc-cg-64", "kmalloc-rcl-64"]


def test_slack_rule():
    # one CPU slab and ceil(2 * cpu_partial / objs) partial slabs per CPU, and sheaves
    assert reconcile.slab_slack(21, 120, 0, 2) == 2 * 21 * (1 + 12)
    assert reconcile.slab_slack(16, 52, 32, 2, 1) == 2 * 16 * (1 + 7) + 32 * (6 + 10)
    assert reconcile.slab_slack(0, 5, 5, 2) == 0


def test_a_whole_system_recording_of_the_eventfds_agrees():
    rows, facts = _rows(_dataset())
    assert facts["scope"] == "system"
    filp = rows["filp"]
    assert (filp.allocs, filp.live, filp.frees_old) == (N, N, 0)
    assert filp.delta_active == _active(AFTER, "filp") - _active(BEFORE, "filp")
    assert filp.verdict == "explained", filp
    ctx = rows["kmalloc-64"]
    assert ctx.live == N and ctx.verdict == "explained", ctx
    assert reconcile.reconcile_warning(list(rows.values())) is None


def test_live_the_kernel_contradicts_is_flagged_with_its_reason():
    # ten times the allocations the kernel saw: 18,000 of them never freed in the trace
    ds = _dataset(n_filp=10 * N)
    rows, _ = _rows(ds)
    filp = rows["filp"]
    assert filp.verdict == "LIVE contradicted"
    assert filp.max_live < filp.live
    assert "kmem_cache_free_bulk" in filp.reason
    line = reconcile.reconcile_warning(list(rows.values()))
    assert line.startswith("WARNING:") and "filp (LIVE 20,000" in line
    # and in the report: the warning line and the table, in JSON too
    rep = build.build_report(ds)
    assert any("contradicts LIVE" in w for w in rep.warnings)
    t = rep.table("reconcile")
    assert t.rows[0]["cache"] == "filp" and t.rows[0]["verdict"] == "LIVE contradicted"
    from ftslab.cli.render import render_json
    js = json.loads(render_json(rep))
    assert js["tables"]["reconcile"]["rows"][0]["reason"] == filp.reason


def test_frees_of_older_objects_raise_the_bound():
    # frees of 1,500 filps allocated before the recording: with them, 1,500 more live
    # filps fit the kernel's change (the kernel's +1,984 = 3,500 new - 1,500 old freed)
    ds = _dataset(n_filp=N + 1500, old_frees=1500)
    rows, _ = _rows(ds)
    assert rows["filp"].frees_old == 1500
    assert rows["filp"].verdict == "explained", rows["filp"]
    assert _rows(_dataset(n_filp=N + 1500))[0]["filp"].verdict == "LIVE contradicted"


def test_the_recording_s_own_word_on_its_frees_wins():
    # a task-limited recording whose frees were recorded system-wide (record --frees all)
    writes = ["/sys/kernel/tracing/instances/ftslab_1/set_event_pid <- 42"]
    ds = _dataset(n_filp=N + 1500, writes=writes)
    ds.meta.extra["frees_scope"] = "system"
    rows, facts = _rows(ds)
    assert facts["scope"] == "system" and rows["filp"].verdict == "LIVE contradicted"


def test_a_task_limited_recording_is_held_to_the_end_count_only():
    writes = ["/sys/kernel/tracing/instances/ftslab_1/set_event_pid <- 42"]
    ds = _dataset(n_filp=N + 1500, writes=writes)
    rows, facts = _rows(ds)
    assert facts["scope"] == "filtered"
    # other tasks' frees are not in the recording: the change says nothing, only the
    # active objects at the end bound LIVE
    assert rows["filp"].verdict == "ok"
    end = _active(AFTER, "filp")
    ds = _dataset(n_filp=end + 1000, writes=writes)
    rows, _ = _rows(ds)
    assert rows["filp"].verdict == "LIVE contradicted"
    assert "were not recorded" in rows["filp"].reason


def test_without_slub_parameters_no_slack_is_invented():
    rows, _ = _rows(_dataset(params=None))
    assert rows["filp"].slack is None and rows["filp"].max_live == _active(AFTER, "filp")
    assert "SLACK unknown" in reconcile.reconcile_table(_dataset(params=None)).note


def test_unpaired_kfree_is_given_to_the_cache_of_its_page():
    ds = _dataset()
    # kfree of older objects: on a page of the recording's kmalloc-64 allocations (that
    # class's), on a page of its filp allocations (filp's), on a page where nothing
    # was allocated (no cache: counted, not guessed)
    kf = [dict(ts=300_000, pid=0, call_site=4, ptr=CTX0 + 4096 + 8),
          dict(ts=300_001, pid=0, call_site=4, ptr=FILP0 + 8192 + 16),
          dict(ts=300_002, pid=0, call_site=4, ptr=0xFFFF888400000040)]
    ds.columns[("kmem", "kfree")] = cols("kmem", "kfree", kf)
    old, unattributed = reconcile._old_frees(ds)
    assert old == {"kmalloc-64": 1, "filp": 1} and unattributed == 1
    # a page where two caches' allocations were seen names neither
    ds.columns[("kmem", "kfree")] = cols("kmem", "kfree", kf + [
        dict(ts=300_003, pid=0, call_site=4, ptr=CTX0 + 8192 + 8)])
    other = dict(ts=5, pid=7, call_site=1, ptr=CTX0 + 8192 + 2048, bytes_req=40,
                 bytes_alloc=40, gfp_flags=0, name="dentry")
    rows = [dict(ts=10 + i, pid=7, call_site=1, ptr=FILP0 + 256 * i, bytes_req=232,
                 bytes_alloc=256, gfp_flags=0, name="filp") for i in range(N)]
    ds.columns[("kmem", "kmem_cache_alloc")] = cols("kmem", "kmem_cache_alloc",
                                                    [other] + rows)
    old, unattributed = reconcile._old_frees(ds)
    assert old == {"kmalloc-64": 1, "filp": 1} and unattributed == 2


def test_clock_from_stats():
    text = "entries: 0\noldest event ts:  9010.824835\nnow ts: 10578.648399\n"
    assert clock_now_ns(text) == 10578_648399000
    assert clock_now_ns("now ts: 123456\n") == 123456
    assert clock_now_ns("entries: 0\n") is None


def test_sampler_keeps_only_changes():
    texts = iter([BEFORE, BEFORE, AFTER])
    clock = iter([f"now ts: {s}.000000\n" for s in (1, 1, 2, 2, 3, 3)])
    s = SlabSampler(lambda: next(clock), period=1.0, read=lambda: next(texts))
    for now in (0.0, 0.5, 1.0, 2.0):
        s.tick(now)
    assert s["t"] == [1_000_000_000, 2_000_000_000, 3_000_000_000]
    filp = s["active"]["filp"]
    assert filp == [0, _active(BEFORE, "filp"), 2, _active(AFTER, "filp")]
    json.dumps(s)  # the metadata value as it is written
    ds = _dataset()
    ds.meta.extra["slabinfo_samples"] = s
    t, series = reconcile.kernel_active_series(ds)
    assert series["filp"].tolist() == [_active(BEFORE, "filp")] * 2 + [_active(AFTER, "filp")]
    k64 = sum(_active(AFTER, n) for n in ("kmalloc-64", "kmalloc-cg-64", "kmalloc-rcl-64",
                                          "dma-kmalloc-64"))
    assert series["kmalloc-64"][-1] == k64


def test_reports_load_the_cache_name_of_frees():
    # without it every kmem_cache_free of an older object would be unattributed
    assert "name" in events.fields_read("kmem", "kmem_cache_free")
    assert events.fields_read("kmem", "kfree") == ("ptr",)


ALLOCINFO = """allocinfo - version: 1.0
#     <size>  <calls> <tag info>
        4096        1 mm/percpu.c:3094 func:setup_first_chunk
      262144       64 fs/file_table.c:215 func:alloc_empty_file
"""


def test_allocinfo_diff_per_call_site():
    ds = _dataset()
    assert reconcile.allocinfo_diff(ds) is None  # kernels without it: no table
    ds.meta.extra["allocinfo_start"] = ALLOCINFO
    ds.meta.extra["allocinfo_end"] = ALLOCINFO.replace("262144       64",
                                                       "524288      128")
    t = reconcile.allocinfo_diff(ds)
    assert t.rows == [{"callsite": "fs/file_table.c:215 func:alloc_empty_file",
                       "delta_bytes": 262144, "delta_calls": 64, "bytes_end": 524288}]
    assert "allocinfo_diff" in [x.name for x in build.build_report(ds).tables]


def test_task_limited_allocations_with_every_free_explain_nothing():
    # record --frees all of a command: the bound from the change holds (every free was
    # seen), but the kernel's change is not the trace's to explain (other tasks allocate)
    writes = ["/sys/kernel/tracing/instances/ftslab_1/set_event_pid <- 42"]
    ds = _dataset(writes=writes)
    ds.meta.extra["frees_scope"] = "system"
    rows, facts = _rows(ds)
    assert rows["filp"].verdict == "ok" and "changed" not in facts
    assert _rows(_dataset())[0]["filp"].verdict == "explained"
