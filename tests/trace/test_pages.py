"""The page walk (ftslab/trace/pages.py) on real recordings: both walkers agree, in blocks
too, lost events are counted, and arbitrary bytes raise nothing but ftslab's own errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ftslab.trace import pages as pages_mod
from ftslab.errors import FtslabError
from ftslab.trace.formats import parse_header_event, parse_header_page
from ftslab.trace.tracedat_read import read_tracedat

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
DATS = sorted(FIX.glob("*.dat"))
HP = parse_header_page((FIX / "header_page").read_text())
HE = parse_header_event((FIX / "header_event").read_text())


def _cpu_data():
    for path in DATS:
        td = read_tracedat(path)
        for cpu, data in td.cpu_data.items():
            yield path.name, cpu, data, td.buffer_page_size


@pytest.mark.parametrize("name,cpu,data,psize", list(_cpu_data()),
                         ids=lambda x: x if isinstance(x, str) else None)
def test_vectorized_walk_equals_loop(name, cpu, data, psize):
    n = len(data) // psize
    a = pages_mod._walk_vectorized(data, cpu, HP, HE, psize, n)
    b = pages_mod._walk_loop(data, cpu, HP, HE, psize, n)
    for k in ("ts", "off", "ids", "lens"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert (a.pages, a.missed, a.missed_unknown, a.bad_pages) == \
           (b.pages, b.missed, b.missed_unknown, b.bad_pages)
    assert np.all(np.diff(a.ts.astype(np.int64)) >= 0), "timestamps go backwards in a CPU"


def test_missed_events_flag_is_counted():
    td = read_tracedat(FIX / "ftslab-open200.dat")
    cpu, data = next((c, d) for c, d in td.cpu_data.items() if len(d) >= 4096)
    page = bytearray(data[:4096])
    commit = int.from_bytes(page[8:16], "little")
    page[8:16] = (commit | pages_mod.MISSED_EVENTS).to_bytes(8, "little")
    w = pages_mod.walk_pages(bytes(page), cpu, HP, HE)
    assert w.missed_unknown == 1 and w.missed == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=3 * 4096), st.integers(0, 1))
def test_walk_arbitrary_bytes(data, vec):
    psize = 4096
    n = len(data) // psize
    try:
        if vec and n:
            w = pages_mod._walk_vectorized(data, 0, HP, HE, psize, n)
        else:
            w = pages_mod._walk_loop(data, 0, HP, HE, psize, n)
    except FtslabError:
        return
    assert w.ts.size == w.off.size == w.ids.size == w.lens.size
    assert (w.off + w.lens <= len(data)).all()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_walkers_agree_on_bitflipped_pages(data):
    td = read_tracedat(FIX / "ftslab-open200.dat")
    raw = bytearray(next(iter(td.cpu_data.values()))[: 8 * 4096])
    for _ in range(data.draw(st.integers(1, 20))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    n = len(raw) // 4096
    a = pages_mod._walk_vectorized(bytes(raw), 0, HP, HE, 4096, n)
    b = pages_mod._walk_loop(bytes(raw), 0, HP, HE, 4096, n)
    for k in ("ts", "off", "ids", "lens"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert a.bad_pages == b.bad_pages


def test_blocked_walk_equals_loop(monkeypatch):
    """Large inputs are walked in cache-sized blocks: same result as one plain walk."""
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    td = read_tracedat(FIX / "ftslab-open200.dat")
    for cpu, data in td.cpu_data.items():
        n = len(data) // 4096
        if n <= 8:
            continue
        a = pages_mod.walk_pages(data, cpu, HP, HE, 4096)
        b = pages_mod._walk_loop(data, cpu, HP, HE, 4096, n)
        for k in ("ts", "off", "ids", "lens"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), k
        assert (a.pages, a.bad_pages) == (b.pages, b.bad_pages)
        return
    pytest.fail("no CPU with more than 8 pages in the fixture")
