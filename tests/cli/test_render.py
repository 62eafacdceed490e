"""ftslab.cli.render: text, JSON and CSV from the same Table objects; per-event line formats."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ftslab.cli import render
from ftslab.analysis import build
from ftslab.analysis import summary
from ftslab.dataset import Dataset, Event, EventColumns, Loss, Metadata

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
SITE = 0xFFFFFFFF81234560


def small_dataset(meta: Metadata | None = None) -> Dataset:
    """Three kmallocs by 'nginx' (pid 7): 40/64, 60/64 and 3000/4096 bytes, one freed."""
    n = 3
    kma = EventColumns("kmem", "kmalloc", np.array([10, 20, 30], np.uint64),
                       np.zeros(n, np.int32), np.full(n, 7, np.int32),
                       {"call_site": np.full(n, SITE, np.uint64),
                        "ptr": np.array([0xFFFF888000001000, 0xFFFF888000002000,
                                         0xFFFF888000003000], np.uint64),
                        "bytes_req": np.array([40, 60, 3000], np.uint64),
                        "bytes_alloc": np.array([64, 64, 4096], np.uint64),
                        "gfp_flags": np.full(n, 0xCC0, np.uint64)})
    kf = EventColumns("kmem", "kfree", np.array([25], np.uint64), np.zeros(1, np.int32),
                      np.full(1, 7, np.int32),
                      {"call_site": np.array([SITE], np.uint64),
                       "ptr": np.array([0xFFFF888000001000], np.uint64)})
    meta = meta or Metadata(source="synthetic", kernel="6.18.44", cmdlines={7: "nginx"})
    return Dataset(meta, {("kmem", "kmalloc"): kma, ("kmem", "kfree"): kf},
                   symbolize=lambda a: "do_thing+0x10" if a == SITE else None)


def test_human_bytes():
    assert render.human_bytes(0) == "0 B"
    assert render.human_bytes(1023) == "1023 B"
    assert render.human_bytes(1024) == "1.0 KiB"
    assert render.human_bytes(1258291) == "1.2 MiB"
    assert render.human_bytes(3 << 30) == "3.0 GiB"
    assert render.human_bytes(-2048) == "-2.0 KiB"


def test_text_loss_warning_is_first_line():
    meta = Metadata(cmdlines={7: "nginx"}, lost=[Loss(0, 1200), Loss(1, 34)], truncated=True)
    lines = list(render.render_text(build.build_report(small_dataset(meta))))
    assert lines[0] == ("WARNING: 1234 events were LOST during recording; "
                        "counts below are lower bounds, and FREES/LIVE cannot be trusted "
                        "(a lost free shows as live)")
    assert lines[1].startswith("WARNING: the recording is truncated")
    assert lines[2].startswith("ftslab: 4 events in ")


def test_text_tables_are_aligned_and_human():
    lines = list(render.render_text(build.build_report(small_dataset())))
    assert lines[0].startswith("ftslab: 4 events in 0.000 s (kmem:kfree 1, kmem:kmalloc 3)")
    i = lines.index("Slab allocations by cache")
    header, first, second = lines[i + 1], lines[i + 2], lines[i + 3]
    assert header.split() == ["CACHE", "ALLOCS", "REQUESTED", "ALLOCATED", "WASTE", "FREES",
                              "LIVE"]
    assert first.split() == ["kmalloc-4k", "1", "2.9", "KiB", "4.0", "KiB", "1.1", "KiB", "0", "1"]
    assert second.split() == ["kmalloc-64", "2", "100", "B", "128", "B", "28", "B", "1", "1"]
    assert len(header) == len(first) == len(second)  # right-aligned numbers share an edge
    assert "Slab allocations by call site" in lines
    assert any(line.startswith("do_thing+0x10") for line in lines)


def test_text_histogram_has_bars_and_none_is_dash():
    rep = build.build_report(small_dataset(), by=("order", "event"), hist=True)
    lines = list(render.render_text(rep))
    assert any(line.startswith("-  ") for line in lines)  # order of a slab event: n/a
    h = lines.index("Requested sizes (bytes_req)")
    bars = [line for line in lines[h + 2:] if line.startswith("[")]
    assert bars[0].startswith("[32, 64)") and bars[0].endswith("#" * 40)
    assert bars[-1].startswith("[2048, 4096)") and bars[-1].endswith(" " + "#" * 20)
    assert any(line.startswith("[128, 256)") and not line.endswith("#") for line in bars)


def test_json_schema():
    rep = build.build_report(small_dataset(), hist=True)
    doc = json.loads(render.render_json(rep))
    assert list(doc) == ["ftslab_report", "events", "lost", "truncated", "by", "sort", "rows",
                         "tables", "warnings", "summary"]
    assert doc["ftslab_report"] == 1 and doc["events"] == 4 and doc["lost"] == 0
    assert doc["truncated"] is False and doc["by"] == ["cache"] and doc["sort"] == "bytes"
    assert doc["rows"] == doc["tables"]["by_cache"]["rows"]
    assert doc["rows"][0] == {"cache": "kmalloc-4k", "count": 1, "bytes_req": 3000,
                              "bytes_alloc": 4096, "waste": 1096, "frees": 0, "live": 1,
                              "failed": 0}
    t = doc["tables"]["by_cache"]
    assert set(t) == {"title", "columns", "rows", "note"}
    assert {"name": "bytes_req", "title": "REQUESTED", "unit": "bytes"} in t["columns"]
    assert set(doc["tables"]) == {"by_cache", "by_callsite", "by_comm",
                                  "fragmentation_by_cache", "fragmentation_by_callsite",
                                  "histogram"}
    assert doc["summary"]["per_event"] == {"kmem:kfree": 1, "kmem:kmalloc": 3}
    assert doc["warnings"] == []


def test_json_with_by_and_loss():
    meta = Metadata(lost=[Loss(0, 9)])
    rep = build.build_report(small_dataset(meta), by=("comm", "gfp"), sort="waste", top=5)
    doc = json.loads(render.render_json(rep))
    assert doc["by"] == ["comm", "gfp"] and doc["sort"] == "waste" and doc["lost"] == 9
    assert doc["rows"] == [{"comm": "<...>", "gfp": "0xcc0", "count": 3, "bytes_req": 3100,
                            "bytes_alloc": 4224, "waste": 1124, "frees": 1, "live": 2,
                            "failed": 0}]
    assert doc["warnings"][0].startswith("WARNING: 9 events were LOST")


def test_csv_main_table_exact_integers():
    rep = build.build_report(small_dataset())
    rows = list(csv.reader(io.StringIO(render.render_csv(rep))))
    # the same columns whatever the input: "failed" is there even when it is 0
    assert rows[0] == ["cache", "count", "failed", "bytes_req", "bytes_alloc", "waste",
                       "frees", "live"]
    assert rows[1] == ["kmalloc-4k", "1", "0", "3000", "4096", "1096", "0", "1"]
    assert rows[2] == ["kmalloc-64", "2", "0", "100", "128", "28", "1", "1"]
    text = "\n".join(render.render_text(rep))
    assert "FAILED" not in text  # the text table leaves an all-zero FAILED column out


def test_csv_named_table_and_none_cells():
    rep = build.build_report(small_dataset(), by=("cache", "event", "order"))
    rows = list(csv.reader(io.StringIO(render.render_csv(rep))))
    assert rows[0][:3] == ["cache", "event", "order"] and rows[1][2] == ""  # slab: no order
    frag = render.render_csv(build.build_report(small_dataset()), "fragmentation_by_cache")
    assert frag.splitlines()[0] == "cache,count,bytes_req,bytes_alloc,waste,waste_pct"
    with pytest.raises(KeyError):
        render.render_csv(rep, "nope")


KMALLOC = Event(ts=1234567890123, cpu=1, pid=316, comm="a.out", system="kmem", name="kmalloc",
                fields={"call_site": SITE, "ptr": 0xFFFF888004A0B000, "bytes_req": 4096,
                        "bytes_alloc": 4096, "gfp_flags": 0xCC0, "node": -1})
CACHE_ALLOC = Event(ts=1, cpu=0, pid=316, comm="a.out", system="kmem", name="kmem_cache_alloc",
                    fields={"call_site": SITE, "ptr": 0xFFFF888004A0C000, "name": "vma_lock",
                            "bytes_req": 40, "bytes_alloc": 40, "gfp_flags": 0xCC0, "node": -1})
PAGE = Event(ts=2, cpu=0, pid=316, comm="a.out", system="kmem", name="mm_page_alloc",
             fields={"pfn": 0x1234, "order": 1, "gfp_flags": 0xCC0, "migratetype": 0})


def test_seed_format_exact():
    assert render.event_to_seed(KMALLOC) == \
        "[kmalloc]: Process 'a.out' with PID 316 allocated 4096 bytes"
    assert render.event_to_seed(CACHE_ALLOC) == \
        "[kmem_cache_alloc]: Process 'a.out' with PID 316 allocated 40 bytes in cache 'vma_lock'"
    assert render.event_to_seed(PAGE) == \
        "[mm_page_alloc]: Process 'a.out' with PID 316 allocated 8192 bytes (order 1)"


def test_seed_format_skips_frees_and_failures():
    kfree = Event(1, 0, 1, "x", "kmem", "kfree", {"call_site": SITE, "ptr": 0x1000})
    assert render.event_to_seed(kfree) is None
    failed = Event(1, 0, 1, "x", "kmem", "mm_page_alloc",
                   {"pfn": 0xFFFFFFFFFFFFFFFF, "order": 0, "gfp_flags": 0, "migratetype": 0})
    assert render.event_to_seed(failed) is None
    no_name = Event(1, 0, 5, "sh", "kmem", "kmem_cache_alloc",
                    {"call_site": SITE, "ptr": 0x1000, "bytes_req": 64, "bytes_alloc": 64})
    assert render.event_to_seed(no_name) == \
        "[kmem_cache_alloc]: Process 'sh' with PID 5 allocated 64 bytes in cache '?'"
    # A text trace without format files has no system: the name still decides.
    bare = Event(1, 0, 5, "sh", "", "kmalloc", {"bytes_req": 8, "bytes_alloc": 8})
    assert render.event_to_seed(bare) == "[kmalloc]: Process 'sh' with PID 5 allocated 8 bytes"


def test_event_to_json():
    obj = json.loads(render.event_to_json(KMALLOC, symbolize=lambda a: "do_thing+0x10"))
    assert list(obj)[:5] == ["ts", "cpu", "pid", "comm", "event"]
    assert obj["ts"] == 1234567890123 and obj["event"] == "kmem:kmalloc"
    assert obj["call_site"] == SITE and obj["call_site_sym"] == "do_thing+0x10"
    assert obj["ptr"] == 0xFFFF888004A0B000 and obj["node"] == -1
    plain = json.loads(render.event_to_json(KMALLOC))
    assert "call_site_sym" not in plain
    clash = Event(1, 0, 5, "sh", "ftslab_1", "kmalloc_probe", {"comm": "sh", "size": 8})
    assert json.loads(render.event_to_json(clash))["field_comm"] == "sh"


def test_event_to_text():
    line = render.event_to_text(KMALLOC, symbolize=lambda a: "do_thing+0x10")
    assert line == ("a.out-316 [001] 1234.567890: kmem:kmalloc call_site=do_thing+0x10 "
                    "ptr=0xffff888004a0b000 bytes_req=4096 bytes_alloc=4096 gfp_flags=0xcc0 "
                    "node=-1")
    text_ev = Event(1_500_000, 0, 3, "ls", "kmem", "kfree",
                    {"call_site": "do_thing+0x10/0x80", "ptr": 0})
    assert render.event_to_text(text_ev) == \
        "ls-3 [000] 0.001500: kmem:kfree call_site=do_thing+0x10 ptr=0x0"


def test_render_real_capture_all_formats():
    from conftest import real_text_dataset
    ds = real_text_dataset("kmem-trace.txt")
    rep = build.build_report(ds, hist=True)
    lines = list(render.render_text(rep))
    assert lines[0].startswith("ftslab: 1588 events")
    assert "Page allocations by order" in lines
    doc = json.loads(render.render_json(rep))
    assert doc["events"] == 1588 and doc["rows"] == rep.table("by_cache").rows
    rows = list(csv.reader(io.StringIO(render.render_csv(rep))))
    assert rows[0][0] == "cache" and len(rows) == len(rep.table("by_cache").rows) + 1

    lost = real_text_dataset("kmem-trace_pipe-lost.txt")
    first = next(iter(render.render_text(build.build_report(lost))))
    assert first == summary.loss_warning(1859)
    assert first.startswith("WARNING: 1859 events were LOST during recording; counts below "
                            "are lower bounds")


def test_event_text_names_gfp_flags_with_the_events_table():
    from ftslab.trace import gfp as gfp_mod
    from ftslab.trace.formats import parse_format
    fmt = parse_format((FIX / "kmem-kmalloc.format").read_text(), "kmem")
    table = gfp_mod.flag_table(fmt.print_fmt)
    ev = Event(2_000_000_000, 1, 7, "cat", "kmem", "kmalloc",
               {"bytes_req": 64, "gfp_flags": 0xcc0})
    line = render.event_to_text(ev, gfp=lambda e, v: gfp_mod.format_flags(v, table))
    assert line == "cat-7 [001] 2.000000: kmem:kmalloc bytes_req=64 gfp_flags=GFP_KERNEL"
