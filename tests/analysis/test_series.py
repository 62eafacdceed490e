"""report --interval (time series) and --plot, over the hand-built Dataset of test_report
and a real capture."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ftslab.analysis import grouping
from ftslab.analysis import live as live_mod
from ftslab.analysis import series
from ftslab.errors import UsageError
from ftslab.trace.loader import load

from conftest import run_ftslab
from test_build import synthetic

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


@pytest.mark.parametrize("text,ns", [("1s", 10**9), ("250ms", 250 * 10**6), ("2", 2 * 10**9),
                                     ("100us", 100_000), ("0.5s", 5 * 10**8), ("1m", 60 * 10**9),
                                     ("10ns", 10)])
def test_parse_interval(text, ns):
    assert series.parse_interval(text) == ns


@pytest.mark.parametrize("text", ["", "s", "-1s", "0", "1h", "1 s s", "abc"])
def test_parse_interval_rejects(text):
    with pytest.raises(UsageError):
        series.parse_interval(text)


def test_series_by_cache_hand_numbers():
    # events span 50..1400 ns; 500 ns intervals: [50,550) [550,1050) [1050,1400]
    t = series.interval_series(synthetic(), ("cache",), 500, top=None)
    rows = {(r["t_s"], r["cache"]): r for r in t.rows}
    assert len(t.rows) == 3 * 7                       # every interval has every key
    # kmalloc-64: #1 (ts 100, freed at 210) and #2 (ts 200, never freed), 64 B each
    assert rows[(0.0, "kmalloc-64")] == dict(t_s=0.0, cache="kmalloc-64", count=2,
                                             bytes_alloc=128, bytes_per_s=256_000_000,
                                             frees=1, outstanding=64)
    assert rows[(5e-07, "kmalloc-64")]["count"] == 0
    assert rows[(5e-07, "kmalloc-64")]["outstanding"] == 64
    # kmalloc-32: P1 allocated again at 900, in the second interval
    assert rows[(5e-07, "kmalloc-32")]["count"] == 1
    assert rows[(0.0, "kmalloc-32")]["outstanding"] == 0
    # kmalloc-128 (#3, ts 300) freed at 600: allocated in the first, freed in the second
    assert rows[(0.0, "kmalloc-128")]["outstanding"] == 128
    assert rows[(5e-07, "kmalloc-128")]["frees"] == 1
    assert rows[(5e-07, "kmalloc-128")]["outstanding"] == 0
    # the series and the live report agree at the end
    last = {c: r for (ts, c), r in rows.items() if ts == 1e-06}
    live = {r["cache"]: r["live_bytes"] for r in live_mod.live_allocations(synthetic(),
                                                                         ("cache",)).rows}
    assert {c: r["outstanding"] for c, r in last.items() if r["outstanding"]} == live


def test_series_top_and_order():
    t = series.interval_series(synthetic(), ("cache",), 500, top=2)
    assert [r["cache"] for r in t.rows[:2]] == ["(large kmalloc)", "kmalloc-8k"]
    assert "the top 2 of 7 keys" in t.note


def test_series_of_a_real_capture_sums_to_the_report():
    ds = load(FIX / "ftslab-open200.dat")
    t = series.interval_series(ds, ("cache",), series.parse_interval("5ms"), top=None)
    plain = {r["cache"]: r for r in grouping.group_allocations(ds, ("cache",),
                                                             _layer="slab").rows}
    for cache, r in plain.items():
        rows = [x for x in t.rows if x["cache"] == cache]
        assert sum(x["count"] for x in rows) == r["count"]
        assert sum(x["bytes_alloc"] for x in rows) == r["bytes_alloc"]
        assert sum(x["frees"] for x in rows) == r["frees"]
        assert rows[-1]["outstanding"] == sum(
            y["live_bytes"] for y in live_mod.live_allocations(ds, ("cache",)).rows
            if y["cache"] == cache)


def test_cli_interval_csv_json_and_plot(tmp_path):
    src = str(FIX / "ftslab-open200.dat")
    r = run_ftslab("report", src, "--interval", "10ms", "--format", "csv", check=True)
    lines = r.stdout.splitlines()
    assert lines[0] == "t_s,cache,count,bytes_alloc,bytes_per_s,frees,outstanding"
    r = run_ftslab("report", src, "--interval", "10ms", "--by", "comm", "--format", "json",
                   check=True)
    doc = json.loads(r.stdout)
    assert doc["by"] == ["comm"] and "interval_by_comm" in doc["tables"]
    png = tmp_path / "series.png"
    r = run_ftslab("report", src, "--plot", png, "--interval", "5ms", "--top", "4")
    assert r.returncode == 0 and f"wrote {png}" in r.stderr, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image
    img = matplotlib.image.imread(str(png))
    assert img.shape[0] >= 400 and img.shape[1] >= 600
    # a drawing with lines in it, not a blank canvas
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20
    r = run_ftslab("report", src, "--interval", "1s", "--live")
    assert r.returncode == 2 and "give one of them" in r.stderr and not r.stdout
    r = run_ftslab("report", src, "--interval", "soon")
    assert r.returncode == 2 and "--interval 'soon'" in r.stderr
    assert "Traceback" not in r.stderr
