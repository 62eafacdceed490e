"""ftslab.analysis.build: aggregations over hand-built Datasets (numbers checked by hand) and over
real 6.18 captures (text trace, /proc/slabinfo snapshots)."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

import ftslab
from ftslab import events as events_mod
from ftslab.analysis import build
from ftslab.analysis import grouping
from ftslab.analysis import kmalloc as kmalloc_mod
from ftslab.analysis import slabinfo
from ftslab.analysis import summary
from ftslab.analysis import tables
from ftslab.errors import ParseError, UsageError
from ftslab.dataset import Dataset, EventColumns, Loss, Metadata

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
U64 = 0xFFFFFFFFFFFFFFFF

A, B, C, D, E = (0xFFFFFFFF81001000, 0xFFFFFFFF81002000, 0xFFFFFFFF81003000,
                 0xFFFFFFFF81004000, 0xFFFFFFFF81005000)
SYMS = {A: "alloc_a+0x10", B: "alloc_b+0x20", C: "alloc_c+0x30", D: "alloc_d+0x40"}
P = [0, 0xFFFF888000001000, 0xFFFF888000002000, 0xFFFF888000003000, 0xFFFF888000004000,
     0xFFFF888000005000]
Q = [0, 0xFFFF888100001000, 0xFFFF888100002000, 0xFFFF888100003000]


def cols(system, name, rows, ints=("ts", "cpu", "pid")):
    """EventColumns from a list of dicts (ts, pid, and the event's fields)."""
    keys = [k for k in rows[0] if k not in ints]
    fields = {}
    for k in keys:
        vals = [r[k] for r in rows]
        if all(isinstance(v, int) for v in vals):
            fields[k] = np.array(vals, dtype=np.int64 if min(vals) < 0 else np.uint64)
        else:
            col = np.empty(len(vals), dtype=object)
            col[:] = vals
            fields[k] = col
    return EventColumns(system, name,
                        ts=np.array([r["ts"] for r in rows], dtype=np.uint64),
                        cpu=np.array([r.get("cpu", 0) for r in rows], dtype=np.int32),
                        pid=np.array([r["pid"] for r in rows], dtype=np.int32),
                        fields=fields)


def km(ts, pid, cs, ptr, req, alloc, gfp=0xCC0):
    return dict(ts=ts, pid=pid, call_site=cs, ptr=ptr, bytes_req=req, bytes_alloc=alloc,
                gfp_flags=gfp, node=-1)


def synthetic(symbolize=True, with_name=True, meta=None) -> Dataset:
    """The worked example every expectation below is computed from by hand.

    kmalloc:  #1 nginx A P1 40/64, #2 nginx A P2 60/64, #3 bash B P3 100/128,
              #4 bash B P4 5000/8192, #5 pid30 C P5 10000/12288 (large),
              #6 pid30 C NULL 64/64 (failed), #10 nginx A P1 (reused) 32/32
    kmem_cache_alloc: #7 nginx D Q1 filp 184/192, #8 bash D Q2 filp 184/192,
              #9 bash E Q3 dentry 192/192
    frees: kfree P2@50 (before its alloc: no match), P1@210 (#1), P3@600 (#3), NULL@700;
           kmem_cache_free Q1@260 (#7), Q1@800 (double free: no match)
    pages: p1 nginx pfn 0x1000 o0 (freed @1050), p2 bash 0x2000 o2 (freed @1400),
           p3 bash pfn -1 o3 (failed), p4 nginx 0x3000 o0
    """
    kmalloc = [km(100, 10, A, P[1], 40, 64), km(200, 10, A, P[2], 60, 64),
               km(300, 20, B, P[3], 100, 128, 0xDC0), km(400, 20, B, P[4], 5000, 8192),
               km(500, 30, C, P[5], 10000, 12288), km(550, 30, C, 0, 64, 64),
               km(900, 10, A, P[1], 32, 32)]
    kca = [km(150, 10, D, Q[1], 184, 192), km(250, 20, D, Q[2], 184, 192),
           km(350, 20, E, Q[3], 192, 192)]
    for r, n in zip(kca, ("filp", "filp", "dentry")):
        if with_name:
            r["name"] = n
    kfree = [dict(ts=50, pid=10, call_site=A, ptr=P[2]),
             dict(ts=210, pid=10, call_site=A, ptr=P[1]),
             dict(ts=600, pid=20, call_site=B, ptr=P[3]),
             dict(ts=700, pid=20, call_site=B, ptr=0)]
    kcf = [dict(ts=260, pid=10, call_site=D, ptr=Q[1], name="filp"),
           dict(ts=800, pid=10, call_site=D, ptr=Q[1], name="filp")]
    pa = [dict(ts=1000, pid=10, pfn=0x1000, order=0, gfp_flags=0xCC0, migratetype=0),
          dict(ts=1100, pid=20, pfn=0x2000, order=2, gfp_flags=0xCC0, migratetype=0),
          dict(ts=1200, pid=20, pfn=U64, order=3, gfp_flags=0xCC0, migratetype=0),
          dict(ts=1300, pid=10, pfn=0x3000, order=0, gfp_flags=0xCC0, migratetype=0)]
    pf = [dict(ts=1050, pid=10, pfn=0x1000, order=0), dict(ts=1400, pid=20, pfn=0x2000, order=2)]
    columns = {("kmem", "kmalloc"): cols("kmem", "kmalloc", kmalloc),
               ("kmem", "kmem_cache_alloc"): cols("kmem", "kmem_cache_alloc", kca),
               ("kmem", "kfree"): cols("kmem", "kfree", kfree),
               ("kmem", "kmem_cache_free"): cols("kmem", "kmem_cache_free", kcf),
               ("kmem", "mm_page_alloc"): cols("kmem", "mm_page_alloc", pa),
               ("kmem", "mm_page_free"): cols("kmem", "mm_page_free", pf)}
    meta = meta or Metadata(source="synthetic", kernel="6.18.44-test",
                            cmdlines={10: "nginx", 20: "bash"})
    return Dataset(meta, columns, symbolize=SYMS.get if symbolize else None)


SLAB = ["kmem:kmalloc", "kmem:kmem_cache_alloc"]


def rows_by(table, key):
    return {r[key]: r for r in table.rows}


# ------------------------------------------------------------------ grouping by each key

def test_by_cache_numbers():
    t = grouping.group_allocations(synthetic(), ["cache"],
                                 events=["kmem:kmalloc", "kmem:kmem_cache_alloc"])
    r = rows_by(t, "cache")
    assert set(r) == {"kmalloc-64", "kmalloc-128", "kmalloc-8k", "(large kmalloc)",
                      "kmalloc-32", "filp", "dentry"}
    assert r["kmalloc-64"] == dict(cache="kmalloc-64", count=2, bytes_req=100, bytes_alloc=128,
                                   waste=28, frees=1, live=1, failed=1)
    assert r["kmalloc-128"] == dict(cache="kmalloc-128", count=1, bytes_req=100, bytes_alloc=128,
                                    waste=28, frees=1, live=0, failed=0)
    assert r["kmalloc-8k"]["waste"] == 3192 and r["kmalloc-8k"]["live"] == 1
    assert r["(large kmalloc)"]["bytes_alloc"] == 12288 and r["(large kmalloc)"]["waste"] == 2288
    # P1 was reused after its free: the second allocation is live, not freed.
    assert r["kmalloc-32"] == dict(cache="kmalloc-32", count=1, bytes_req=32, bytes_alloc=32,
                                   waste=0, frees=0, live=1, failed=0)
    # The second kmem_cache_free of Q1 is a double free: it matches nothing.
    assert r["filp"] == dict(cache="filp", count=2, bytes_req=368, bytes_alloc=384, waste=16,
                             frees=1, live=1, failed=0)
    assert r["dentry"]["live"] == 1 and r["dentry"]["frees"] == 0
    # The failed kmalloc shows up as a FAILED column.
    assert "failed" in [c.name for c in t.columns]


def test_sort_bytes_count_waste():
    ds = synthetic()

    def order(sort):
        return [r["cache"] for r in grouping.group_allocations(ds, ["cache"], sort, events=SLAB).rows]
    by_bytes = order("bytes")
    assert by_bytes == ["(large kmalloc)", "kmalloc-8k", "filp", "dentry", "kmalloc-64",
                        "kmalloc-128", "kmalloc-32"]
    by_count = order("count")
    assert by_count == ["filp", "kmalloc-64", "(large kmalloc)", "kmalloc-8k", "dentry",
                        "kmalloc-128", "kmalloc-32"]
    by_waste = order("waste")
    assert by_waste == ["kmalloc-8k", "(large kmalloc)", "kmalloc-64", "kmalloc-128", "filp",
                        "dentry", "kmalloc-32"]


def test_top_limits_rows_and_says_so():
    t = grouping.group_allocations(synthetic(), ["cache"], top=2, events=["kmem:k*"])
    assert [r["cache"] for r in t.rows] == ["(large kmalloc)", "kmalloc-8k"]
    assert "top 2 of 7" in t.note
    assert grouping.group_allocations(synthetic(), ["cache"], top=0).rows == []


def test_by_comm_and_pid():
    ds = synthetic()
    slab = SLAB
    r = rows_by(grouping.group_allocations(ds, ["comm"], events=slab), "comm")
    assert r["nginx"]["count"] == 4 and r["nginx"]["bytes_alloc"] == 64 + 64 + 32 + 192
    assert r["bash"]["count"] == 4 and r["bash"]["bytes_alloc"] == 128 + 8192 + 192 + 192
    assert r["<...>"]["count"] == 1 and r["<...>"]["failed"] == 1
    p = rows_by(grouping.group_allocations(ds, ["pid"], events=slab), "pid")
    assert set(p) == {10, 20, 30} and p[30]["bytes_alloc"] == 12288


def test_comm_merges_pids():
    meta = Metadata(cmdlines={10: "worker", 20: "worker"})
    t = grouping.group_allocations(synthetic(meta=meta), ["comm"], events=SLAB)
    assert {r["comm"]: r["count"] for r in t.rows} == {"worker": 8, "<...>": 1}


def test_by_callsite_symbolized_once_per_address():
    calls = []

    def sym(addr):
        calls.append(addr)
        return SYMS.get(addr)
    ds = synthetic()
    ds.symbolize = sym
    r = rows_by(grouping.group_allocations(ds, ["callsite"], events=SLAB),
                "callsite")
    assert r["alloc_a+0x10"]["count"] == 3 and r["alloc_a+0x10"]["bytes_req"] == 132
    assert r["alloc_b+0x20"]["waste"] == 28 + 3192
    assert r["alloc_d+0x40"]["count"] == 2
    assert r[f"0x{E:x}"]["count"] == 1          # symbolize gave None
    assert sorted(calls) == sorted(set(calls))   # each address looked up once


def test_by_callsite_without_symbols_is_hex():
    r = rows_by(grouping.group_allocations(synthetic(symbolize=False), ["callsite"]), "callsite")
    assert f"0x{A:x}" in r
    assert None in r  # page allocations have no call site


def test_by_callsite_text_input_drops_size():
    rows = [km(1, 1, "alloc_pipe_info+0x2a/0x1c0", P[1], 8, 8),
            km(2, 1, "alloc_pipe_info+0x2a/0x1c0", P[2], 8, 8),
            km(3, 1, "mod_fn+0x10/0x80 [mymod]", P[3], 8, 8)]
    ds = Dataset(Metadata(), {("kmem", "kmalloc"): cols("kmem", "kmalloc", rows)})
    r = rows_by(grouping.group_allocations(ds, ["callsite"]), "callsite")
    assert r["alloc_pipe_info+0x2a"]["count"] == 2
    # Without format files a text trace has no system: "kmem:kmalloc" still selects it.
    bare = Dataset(Metadata(), {("", "kmalloc"): cols("", "kmalloc", rows)})
    t = grouping.group_allocations(bare, ["event"], events=["kmem:kmalloc"])
    assert [(x["event"], x["count"]) for x in t.rows] == [("kmalloc", 3)]
    assert grouping.group_allocations(bare, ["event"], events=["kmem:kfree"]).rows == []
    assert r["mod_fn+0x10 [mymod]"]["count"] == 1


def test_by_event_and_order():
    ds = synthetic()
    r = rows_by(grouping.group_allocations(ds, ["event"]), "event")
    assert r["kmem:kmalloc"]["count"] == 6 and r["kmem:kmalloc"]["failed"] == 1
    assert r["kmem:kmem_cache_alloc"]["count"] == 3
    pages = r["kmem:mm_page_alloc"]
    assert pages == dict(event="kmem:mm_page_alloc", count=3, bytes_req=24576, bytes_alloc=24576,
                         waste=0, frees=2, live=1, failed=1)
    t = grouping.group_allocations(ds, ["order"])
    o = rows_by(t, "order")
    assert o[0]["count"] == 2 and o[0]["bytes_alloc"] == 8192
    assert o[2]["bytes_alloc"] == 16384 and o[3]["count"] == 0 and o[3]["failed"] == 1
    assert o[None]["count"] == 9  # slab events have no order
    assert "overlap" in t.note      # slab and page layers mixed


def test_by_gfp_hex_without_format():
    r = rows_by(grouping.group_allocations(synthetic(), ["gfp"], events=["kmalloc"]), "gfp")
    assert set(r) == {"0xcc0", "0xdc0"} and r["0xdc0"]["count"] == 1


def test_by_gfp_uses_gfp_module(monkeypatch):
    import ftslab.trace
    fake = types.ModuleType("ftslab.trace.gfp")
    table = ((0xCC0, "GFP_KERNEL"), (0x100, "__GFP_ZERO"))
    fake.flag_table = lambda print_fmt, field="gfp_flags": table
    fake.format_flags = lambda v, table: "|".join(n for m, n in table if v & m == m) or hex(v)
    monkeypatch.setitem(sys.modules, "ftslab.trace.gfp", fake)
    monkeypatch.setattr(ftslab.trace, "gfp", fake, raising=False)
    ds = synthetic()
    ds.formats = {("kmem", "kmalloc"): types.SimpleNamespace(print_fmt="x")}
    r = rows_by(grouping.group_allocations(ds, ["gfp"], events=["kmalloc"]), "gfp")
    assert {k: v["count"] for k, v in r.items()} == {"GFP_KERNEL": 5, "GFP_KERNEL|__GFP_ZERO": 1}
    assert r["GFP_KERNEL"]["failed"] == 1


def test_by_gfp_with_real_format_file():
    from ftslab.trace import gfp as gfp_mod
    text = (FIX / "kmem-kmalloc.format").read_text()
    print_fmt = text.split("print fmt: ", 1)[1].strip()
    ds = synthetic()
    ds.formats = {("kmem", "kmalloc"): types.SimpleNamespace(print_fmt=print_fmt)}
    r = rows_by(grouping.group_allocations(ds, ["gfp"], events=["kmalloc"]), "gfp")
    assert "GFP_KERNEL" in r and r["GFP_KERNEL"]["count"] == 5
    assert gfp_mod.format_flags(0xDC0, gfp_mod.flag_table(print_fmt)) in r


def test_multi_key_grouping():
    t = grouping.group_allocations(synthetic(), ["comm", "cache"], events=SLAB)
    r = {(x["comm"], x["cache"]): x for x in t.rows}
    assert r[("nginx", "kmalloc-64")]["count"] == 2
    assert r[("bash", "filp")]["count"] == 1 and r[("nginx", "filp")]["frees"] == 1
    assert sum(x["count"] for x in t.rows) == 9
    assert [c.name for c in t.columns][:2] == ["comm", "cache"]


def test_every_group_key_is_accepted():
    ds = synthetic()
    for key in tables.GROUP_KEYS:
        t = grouping.group_allocations(ds, [key])
        assert sum(r["count"] for r in t.rows) == 12, key
        assert all(key in r for r in t.rows)
    t = grouping.group_allocations(ds, list(tables.GROUP_KEYS))
    assert sum(r["count"] for r in t.rows) == 12


def test_bad_keys_raise_usage_error():
    with pytest.raises(UsageError):
        grouping.group_allocations(synthetic(), ["size"])
    with pytest.raises(UsageError):
        grouping.group_allocations(synthetic(), ["cache"], sort="name")
    with pytest.raises(UsageError):
        build.build_report(synthetic(), by=("cache", "cache"))


# ------------------------------------------------------------------ frees and live

def test_alloc_and_free_in_same_tick_counts_as_freed():
    rows = [km(5, 1, A, P[1], 8, 8), km(5, 1, A, P[2], 8, 8)]
    frees = [dict(ts=5, pid=1, call_site=A, ptr=P[1])]
    ds = Dataset(Metadata(), {("kmem", "kmalloc"): cols("kmem", "kmalloc", rows),
                              ("kmem", "kfree"): cols("kmem", "kfree", frees)})
    t = grouping.group_allocations(ds, [])
    assert (t.rows[0]["frees"], t.rows[0]["live"]) == (1, 1)


def test_kfree_matches_kmem_cache_alloc_and_zero_size_ptr_is_not_live():
    rows = [km(1, 1, A, Q[1], 8, 8), km(2, 1, A, 0x10, 0, 0)]  # 0x10 = ZERO_SIZE_PTR
    for r in rows:
        r["name"] = "x"
    frees = [dict(ts=3, pid=1, call_site=A, ptr=Q[1]), dict(ts=4, pid=1, call_site=A, ptr=0x10)]
    ds = Dataset(Metadata(), {("kmem", "kmem_cache_alloc"): cols("kmem", "kmem_cache_alloc", rows),
                              ("kmem", "kfree"): cols("kmem", "kfree", frees)})
    row = grouping.group_allocations(ds, []).rows[0]
    assert row["count"] == 2 and row["frees"] == 1 and row["live"] == 0


def test_event_filter_keeps_matching_over_all_events():
    # kfree of P1 at 210 belongs to kmalloc #1 even when only kmalloc rows are shown.
    t = grouping.group_allocations(synthetic(), ["event"], events=["kmem:kmalloc"])
    assert [r["event"] for r in t.rows] == ["kmem:kmalloc"]
    assert t.rows[0]["frees"] == 2 and t.rows[0]["live"] == 4  # #2, #4, #5, #10


# ------------------------------------------------------------------ other tables

def test_fragmentation_by_cache_and_callsite():
    t = grouping.fragmentation(synthetic(), "cache")
    r = rows_by(t, "cache")
    assert [c.name for c in t.columns] == ["cache", "count", "bytes_req", "bytes_alloc", "waste",
                                           "waste_pct"]
    assert r["kmalloc-8k"]["waste"] == 3192
    assert r["kmalloc-8k"]["waste_pct"] == pytest.approx(100 * 3192 / 8192, abs=0.01)  # 38.96
    assert r["kmalloc-64"]["waste_pct"] == pytest.approx(21.875, abs=0.01)           # 28/128
    assert r["filp"]["waste_pct"] == pytest.approx(100 * 16 / 384, abs=0.01)         # 4.17
    assert r["dentry"]["waste_pct"] == 0.0
    assert t.rows[0]["cache"] == "kmalloc-8k"   # sorted by waste
    assert None not in r                        # pages are not part of slab waste
    c = rows_by(grouping.fragmentation(synthetic(), "callsite"), "callsite")
    assert (c["alloc_b+0x20"]["waste"], c["alloc_b+0x20"]["bytes_alloc"]) == (3220, 8320)
    assert c["alloc_a+0x10"]["waste"] == 28
    with pytest.raises(UsageError):
        grouping.fragmentation(synthetic(), "comm")


def test_pages_by_order():
    t = grouping.pages_by_order(synthetic())
    assert [c.name for c in t.columns] == ["order", "count", "bytes_alloc", "failed", "frees",
                                           "live"]
    assert t.rows == [dict(order=0, count=2, bytes_alloc=8192, failed=0, frees=1, live=1),
                      dict(order=2, count=1, bytes_alloc=16384, failed=0, frees=1, live=0),
                      dict(order=3, count=0, bytes_alloc=0, failed=1, frees=0, live=0)]


def test_pages_use_page_size_from_metadata():
    ds = synthetic(meta=Metadata(extra={"page_size": 16384}))
    assert grouping.pages_by_order(ds).rows[0]["bytes_alloc"] == 2 * 16384


def test_histogram_bucket_edges():
    sizes = [0, 1, 7, 8, 4096, 4097]
    rows = [km(i, 1, A, P[1] + 64 * i, s, max(s, 8)) for i, s in enumerate(sizes)]
    ds = Dataset(Metadata(), {("kmem", "kmalloc"): cols("kmem", "kmalloc", rows)})
    t = grouping.size_histogram(ds)
    assert t.bar == "count"
    assert len(t.rows) == 14  # [0,1) .. [4096,8192), contiguous
    by = {r["bucket"]: r for r in t.rows}
    assert by["[0, 1)"]["count"] == 1 and (by["[0, 1)"]["lo"], by["[0, 1)"]["hi"]) == (0, 1)
    assert by["[1, 2)"]["count"] == 1
    assert by["[4, 8)"]["count"] == 1 and by["[4, 8)"]["bytes_req"] == 7
    assert by["[8, 16)"]["count"] == 1
    assert by["[2, 4)"]["count"] == 0
    assert by["[4096, 8192)"]["count"] == 2 and by["[4096, 8192)"]["bytes_req"] == 8193
    assert t.rows[-1]["hi"] == 8192


def test_histogram_empty():
    t = grouping.size_histogram(Dataset(Metadata(), {}))
    assert t.rows == [] and t.note


def test_kmalloc_size_class_names():
    assert kmalloc_mod.kmalloc_size_class(96) == "kmalloc-96"
    assert kmalloc_mod.kmalloc_size_class(1024) == "kmalloc-1k"
    assert kmalloc_mod.kmalloc_size_class(8192) == "kmalloc-8k"
    assert kmalloc_mod.kmalloc_size_class(8193) == "(large kmalloc)"
    assert kmalloc_mod.kmalloc_size_class(16384, page_size=16384) == "kmalloc-16k"


def test_cache_without_name_field_is_unknown():
    ds = synthetic(with_name=False)  # a 6.1 kernel: kmem_cache_alloc has no name
    r = rows_by(grouping.group_allocations(ds, ["cache"], events=["kmem_cache_alloc"]), "cache")
    assert set(r) == {"?"} and r["?"]["count"] == 3
    rep = build.build_report(ds)
    assert any("'name'" in w and "'?'" in w for w in rep.warnings)


def test_kprobe_source_with_size_only(monkeypatch):
    src = events_mod.AllocSource("ftslab_*", "kmalloc_entry", "slab", bytes_req="size",
                             call_site="caller")
    monkeypatch.setattr(events_mod, "ALLOC_SOURCES", events_mod.ALLOC_SOURCES + (src,))
    rows = [dict(ts=1, pid=1, size=100, caller="f+0x1/0x10"),
            dict(ts=2, pid=1, size=50, caller="f+0x1/0x10")]
    key = ("ftslab_99", "kmalloc_entry")
    ds = Dataset(Metadata(), {key: cols(*key, rows)})
    t = grouping.group_allocations(ds, ["callsite", "cache"])
    assert t.rows == [dict(callsite="f+0x1", cache="?", count=2, bytes_req=150, bytes_alloc=150,
                           waste=0, frees=0, live=0, failed=0)]
    assert "waste is not measured" in t.note


# ------------------------------------------------------------------ slabinfo

def test_parse_slabinfo_real_snapshot():
    info = slabinfo.parse_slabinfo((FIX / "slabinfo-before.txt").read_text())
    assert len(info) > 100 and info.malformed == 0
    filp = info["filp"]
    assert (filp.objsize, filp.objperslab, filp.pagesperslab) == (192, 21, 1)
    assert filp.active_objs <= filp.num_objs


def test_parse_slabinfo_counts_malformed_and_rejects_bad_header():
    text = ("slabinfo - version: 2.1\n# name ...\n"
            "filp 10 21 192 21 1 : tunables 0 0 0 : slabdata 1 1 0\n"
            "broken 1 2 three\n")
    info = slabinfo.parse_slabinfo(text)
    assert list(info) == ["filp"] and info.malformed == 1
    with pytest.raises(ParseError):
        slabinfo.parse_slabinfo("Name Active\nfilp 1 2\n")
    with pytest.raises(ParseError):
        slabinfo.parse_slabinfo("")


def test_slabinfo_diff_real_snapshots():
    before = (FIX / "slabinfo-before.txt").read_text()
    after = (FIX / "slabinfo-after.txt").read_text()
    ds = Dataset(Metadata(slabinfo_start=before, slabinfo_end=after), {})
    t = slabinfo.slabinfo_diff(ds)
    b, a = slabinfo.parse_slabinfo(before), slabinfo.parse_slabinfo(after)
    changed = {n for n in set(a) | set(b)
               if (n not in a or n not in b or
                   (a[n].active_objs, a[n].num_objs) != (b[n].active_objs, b[n].num_objs))}
    assert {r["cache"] for r in t.rows} == changed
    r = rows_by(t, "cache")
    # The workload (tests/fixtures/README.md) opened 3000 files, 200 pipes, 100 socketpairs.
    assert r["filp"] == dict(cache="filp", objsize=192, active_before=588, active_after=1197,
                             delta_active=609, num_before=588, num_after=1197,
                             delta_bytes=609 * 192)
    deltas = [abs(x["delta_bytes"]) for x in t.rows]
    assert deltas == sorted(deltas, reverse=True)
    assert t.rows[0]["cache"] == "ext4_inode_cache"
    assert t.rows[0]["delta_bytes"] == (42798 - 39802) * 1128


def test_slabinfo_diff_without_snapshots():
    t = slabinfo.slabinfo_diff(Dataset(Metadata(), {}))
    assert t.rows == [] and "no slabinfo" in t.note


# ------------------------------------------------------------------ summary and report

def test_summary():
    ds = synthetic()
    ds.meta.lost = [Loss(0, 3), Loss(1, 4)]
    ds.meta.unparsed = 2
    s = summary.summary(ds)
    assert s["events"] == 7 + 3 + 4 + 2 + 4 + 2
    assert s["per_event"]["kmem:kmalloc"] == 7 and s["per_event"]["kmem:mm_page_free"] == 2
    assert s["duration_s"] == pytest.approx((1400 - 50) / 1e9)
    assert (s["lost"], s["truncated"], s["unparsed"]) == (7, False, 2)
    assert (s["source"], s["kernel"]) == ("synthetic", "6.18.44-test")


def test_build_report_default_tables():
    ds = synthetic()
    rep = build.build_report(ds)
    assert [t.name for t in rep.tables] == ["by_cache", "by_callsite", "by_comm",
                                            "fragmentation_by_cache",
                                            "fragmentation_by_callsite", "pages_by_order"]
    assert rep.main == "by_cache" and rep.warnings == []
    # The default tables are slab-only: no page rows mixed in.
    assert None not in {r["cache"] for r in rep.table("by_cache").rows}
    ds.meta.slabinfo_start = (FIX / "slabinfo-before.txt").read_text()
    ds.meta.slabinfo_end = (FIX / "slabinfo-after.txt").read_text()
    # the slabinfo diff, then LIVE checked against it (reconcile.py), then the histogram
    assert [t.name for t in build.build_report(ds, hist=True).tables[-3:]] == [
        "slabinfo_diff", "reconcile", "histogram"]


def test_build_report_with_by():
    rep = build.build_report(synthetic(), by=("comm", "event"), sort="count", top=3, hist=True)
    assert [t.name for t in rep.tables] == ["by_comm_event", "histogram"]
    assert rep.main == "by_comm_event" and rep.by == ("comm", "event") and rep.sort == "count"
    assert len(rep.tables[0].rows) == 3


def test_loss_warning_first_then_truncation():
    meta = Metadata(lost=[Loss(0, 5)], truncated=True, truncated_detail="cut at page 3",
                    unparsed=1)
    rep = build.build_report(synthetic(meta=meta))
    assert rep.warnings[0] == ("WARNING: 5 events were LOST during recording; "
                               "counts below are lower bounds, and FREES/LIVE cannot be trusted "
                        "(a lost free shows as live)")
    assert "truncated" in rep.warnings[1] and "cut at page 3" in rep.warnings[1]
    rep = build.build_report(synthetic(meta=Metadata(truncated=True)))
    assert rep.warnings[0].startswith("WARNING: the recording is truncated")


def test_empty_dataset():
    rep = build.build_report(Dataset(Metadata(), {}))
    assert "no allocation events" in rep.warnings[0]
    assert all(t.rows == [] for t in rep.tables)
    assert rep.summary["duration_s"] == 0.0


def test_analysis_is_recomputed_when_columns_change():
    ds = synthetic()
    assert summary.summary(ds)["events"] == 22
    n1 = grouping.group_allocations(ds, ["event"]).rows
    del ds.columns[("kmem", "mm_page_alloc")]
    n2 = grouping.group_allocations(ds, ["event"]).rows
    assert len(n1) == 3 and len(n2) == 2


def test_vectorised_on_a_large_dataset():
    """200k allocations + frees: results equal a plain-Python reference."""
    rng = np.random.default_rng(7)
    n = 200_000
    ptrs = (rng.integers(1, 5000, n).astype(np.uint64) * np.uint64(64)
            + np.uint64(0xFFFF888000000000))
    req = rng.integers(1, 300, n).astype(np.uint64)
    alloc = np.where(req <= 64, 64, np.where(req <= 128, 128, 512)).astype(np.uint64)
    kmc = EventColumns("kmem", "kmalloc", np.arange(0, 2 * n, 2, dtype=np.uint64),
                       np.zeros(n, np.int32), rng.integers(1, 50, n).astype(np.int32),
                       {"ptr": ptrs, "bytes_req": req, "bytes_alloc": alloc,
                        "call_site": np.full(n, A, np.uint64),
                        "gfp_flags": np.full(n, 0xCC0, np.uint64)})
    fidx = np.sort(rng.choice(n, n // 2, replace=False))
    kf = EventColumns("kmem", "kfree", (fidx * 2 + 1).astype(np.uint64), np.zeros(n // 2, np.int32),
                      np.ones(n // 2, np.int32),
                      {"ptr": ptrs[fidx], "call_site": np.full(n // 2, A, np.uint64)})
    ds = Dataset(Metadata(), {("kmem", "kmalloc"): kmc, ("kmem", "kfree"): kf})
    t = grouping.group_allocations(ds, ["cache"])
    # Reference: walk the events in time order.
    events = sorted([(2 * i, 0, int(ptrs[i]), i) for i in range(n)] +
                    [(int(2 * j + 1), 1, int(ptrs[j]), -1) for j in fidx])
    last, freed = {}, set()
    for _, kind, p, i in events:
        if kind == 0:
            last[p] = i
        elif p in last:
            freed.add(last.pop(p))
    cls = {64: "kmalloc-64", 128: "kmalloc-128", 512: "kmalloc-512"}
    ref = {}
    for i in range(n):
        d = ref.setdefault(cls[int(alloc[i])], [0, 0, 0, 0])
        d[0] += 1
        d[1] += int(alloc[i]) - int(req[i])
        d[2] += i in freed
        d[3] += i not in freed
    got = {r["cache"]: [r["count"], r["waste"], r["frees"], r["live"]] for r in t.rows}
    assert got == ref


# ------------------------------------------------------------------ real capture

def _parse_real(name: str):
    from conftest import real_text_dataset
    return real_text_dataset(name)


def test_real_text_capture():
    ds = _parse_real("kmem-trace.txt")
    rep = build.build_report(ds, top=None, hist=True)
    slab_ok = len(ds.columns[("kmem", "kmalloc")]) + len(ds.columns[("kmem", "kmem_cache_alloc")])
    by_cache = rep.table("by_cache")
    assert sum(r["count"] + r["failed"] for r in by_cache.rows) == slab_ok
    for r in by_cache.rows:
        assert r["frees"] + r["live"] <= r["count"] and r["waste"] >= 0
    # Known lines of this capture (see tests/fixtures/README.md).
    caches = rows_by(by_cache, "cache")
    assert caches["filp"]["bytes_req"] == 184 * caches["filp"]["count"]
    assert caches["names_cache"]["bytes_alloc"] == 4096 * caches["names_cache"]["count"]
    sites = {r["callsite"] for r in rep.table("by_callsite").rows}
    assert "alloc_empty_file+0x3c" in sites and not any("/0x" in s for s in sites)
    assert set(rows_by(rep.table("by_comm"), "comm")) <= {"ls", "cat", "ftslab_capture."}
    pages = rep.table("pages_by_order").rows
    assert sum(r["count"] for r in pages) == len(ds.columns[("kmem", "mm_page_alloc")])
    gfp = rows_by(grouping.group_allocations(ds, ["gfp"], events=["kmalloc"]), "gfp")
    assert "GFP_KERNEL" in gfp
    assert sum(r["count"] for r in rep.table("histogram").rows) == slab_ok


def test_real_text_capture_with_lost_events():
    ds = _parse_real("kmem-trace_pipe-lost.txt")
    rep = build.build_report(ds)
    assert rep.warnings[0] == summary.loss_warning(1859)


def test_by_keys_keep_the_layers_apart():
    """Page allocations back slabs: a table mixing them counts memory twice.  --by event
    keeps every event on its own rows, --by order is pages only, other keys slab only."""
    ds = synthetic()
    rep = build.build_report(ds, by=("cache",))
    main = rep.table(rep.main)
    assert None not in {r["cache"] for r in main.rows}
    assert "see --by order" in main.note
    rep = build.build_report(ds, by=("order",))
    assert all(r["order"] is not None for r in rep.table(rep.main).rows)
    rep = build.build_report(ds, by=("event",))
    events = {r["event"] for r in rep.table(rep.main).rows}
    assert "kmem:mm_page_alloc" in events and "kmem:kmalloc" in events


def test_text_input_pairs_frees_by_line_order_within_a_microsecond():
    """getname/putname free a pointer and allocate it again within one microsecond: in a
    text trace only the line order tells which came first."""
    from ftslab.trace.textparse import parse_text
    line = (" cat-42    [000] .....   237.278835: {ev}: call_site={site}+0x1/0x10 "
            "ptr=00000000bc1b2fbd{rest}")
    kmalloc = " bytes_req=60 bytes_alloc=64 gfp_flags=GFP_KERNEL node=-1 accounted=false"
    text = "\n".join([line.format(ev="kmalloc", site="first", rest=kmalloc),
                      line.format(ev="kfree", site="putname", rest=""),
                      line.format(ev="kmalloc", site="second", rest=kmalloc)])
    ds = parse_text(text)
    rows = {r["callsite"]: r for r in grouping.group_allocations(ds, ("callsite",)).rows}
    assert (rows["first+0x1"]["frees"], rows["first+0x1"]["live"]) == (1, 0)
    assert (rows["second+0x1"]["frees"], rows["second+0x1"]["live"]) == (0, 1)


def test_each_grouping_is_computed_once_per_report(monkeypatch):
    # the default report groups by cache and by call site for two tables each
    # (allocations, waste): the second asks the first's grouping
    calls = []
    real = grouping._group_rows
    monkeypatch.setattr(grouping, "_group_rows",
                        lambda an, frames, by: calls.append(by) or real(an, frames, by))
    once = [t.rows for t in build.build_report(synthetic()).tables]
    assert len(calls) == len(set(calls)) and ("cache",) in calls and ("callsite",) in calls
    assert len(once) > len(calls)  # tables that shared a grouping
