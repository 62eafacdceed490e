"""The buffer of frees of a real recording (record --frees all, Linux 6.18): load() and
read() join it to the allocations, the report header counts what it freed, and a
recording whose frees came with its allocations says LIVE is an upper bound.

Fixtures: ``record -o F -- python3 -c '<5 x /bin/true>'`` with the default --frees all
and --settle 1, and the same with --frees traced."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ftslab
from ftslab.analysis.build import build_report
from ftslab.events import free_source
from ftslab.trace.tracedat_read import read_tracedat

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
ALL = FIX / "ftslab-frees-all-true5.dat"
TRACED = FIX / "ftslab-frees-traced-true5.dat"


def _load(path, buffer=None):
    return ftslab.load(path, buffer=buffer)


def test_the_recording_has_two_buffers():
    td = read_tracedat(ALL)
    assert td.buffers == ["", "frees"] and td.ftslab["frees_buffer"] == "frees"
    assert td.ftslab["frees_scope"] == "system"
    assert set(td.ftslab["frees_events"]) == {"kmem:kfree", "kmem:kmem_cache_free",
                                              "kmem:mm_page_free"}


def test_load_joins_the_frees_buffer():
    ds = _load(ALL)
    allocs, frees = _load(ALL, ""), _load(ALL, "frees")
    # the allocations' buffer holds no free event, the frees' nothing else
    assert not [k for k in allocs.columns if free_source(*k)]
    assert frees.columns and all(free_source(*k) for k in frees.columns)
    assert ds.events == allocs.events + frees.events
    assert sorted(ds.columns) == sorted(set(allocs.columns) | set(frees.columns))
    assert "frees" not in ds.meta.extra["other_buffers"]


def test_read_yields_both_buffers_in_time_order():
    evs = list(ftslab.read(ALL))
    assert len(evs) == _load(ALL).events
    ts = [e.ts for e in evs]
    assert ts == sorted(ts)
    names = {e.name for e in evs}
    assert {"kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free"} <= names


def _oracle(path) -> tuple[int, int]:
    """(frees recorded, frees that freed a slab or page allocation of the recording),
    with a dictionary over read(): an allocation is freed by the next free of its
    pointer (pfn for pages)."""
    live_slab, live_page = set(), set()
    frees = matched = 0
    for e in ftslab.read(path):
        f = e.fields
        if e.name in ("kmalloc", "kmem_cache_alloc") and f["ptr"] > 16:
            live_slab.add(f["ptr"])
        elif e.name == "mm_page_alloc" and f["pfn"]:
            live_page.add(f["pfn"])
        elif e.name in ("kfree", "kmem_cache_free"):
            frees += 1
            if f["ptr"] in live_slab:
                live_slab.discard(f["ptr"])
                matched += 1
        elif e.name == "mm_page_free":
            frees += 1
            if f["pfn"] in live_page:
                live_page.discard(f["pfn"])
                matched += 1
    return frees, matched


def test_header_counts_the_frees_that_matched():
    rep = build_report(_load(ALL))
    f = rep.summary["frees"]
    frees, matched = _oracle(ALL)
    assert (f["recorded"], f["matched"]) == (frees, matched)
    assert f["unmatched"] == frees - matched > 0 and matched > 0
    assert f["scope"] == "system" and 0.9 <= f["settle_s"] < 3
    assert not any("upper bound" in w for w in rep.warnings)


def test_frees_traced_says_live_is_an_upper_bound():
    rep = build_report(_load(TRACED))
    assert rep.summary["frees"]["scope"] == "filtered"
    assert any(w.startswith("WARNING: LIVE is an upper bound") for w in rep.warnings)
    assert "frees" not in read_tracedat(TRACED).buffers


def test_cli_header_and_json(tmp_path):
    cp = subprocess.run([sys.executable, "-m", "ftslab", "report", str(ALL)],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    second = cp.stdout.splitlines()[1]
    frees, matched = _oracle(ALL)
    assert second.startswith(f"frees: from every context; {frees} recorded, {matched} freed "
                             "an allocation of this recording")
    assert "after the allocations stopped (settle)" in second
    cp = subprocess.run([sys.executable, "-m", "ftslab", "report", str(ALL), "--format",
                         "json"], capture_output=True, text=True, timeout=120)
    assert json.loads(cp.stdout)["summary"]["frees"]["matched"] == matched


def test_a_file_cut_before_the_frees_says_so(tmp_path):
    """The allocations' buffer comes first in the file: cut inside the frees' data,
    the allocations are recovered, and the report says their frees are missing."""
    from ftslab.trace.tracedat_write import write_tracedat
    td = read_tracedat(ALL)
    frees = read_tracedat(ALL, "frees")
    whole = tmp_path / "whole.dat"
    n = write_tracedat(whole, td, compression=None,
                       extra_buffers={"frees": dict(frees.cpu_data)})
    cut = tmp_path / "cut.dat"
    main_bytes = sum(len(d) for d in td.cpu_data.values())
    cut.write_bytes(whole.read_bytes()[:n - sum(len(d) for d in frees.cpu_data.values()) // 2])
    ds = ftslab.load(cut)
    assert ds.meta.truncated and ds.meta.extra.get("frees_missing")
    assert ds.events == _load(ALL, "").events and main_bytes
    rep = build_report(ds)
    assert any("buffer of frees is missing" in w for w in rep.warnings)
    assert len(list(ftslab.read(cut))) == ds.events
