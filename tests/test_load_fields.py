"""load(fields=...): the columns a report reads, decoded block by block with each CPU's
pages dropped, must equal what the lazy whole-CPU decode gives, on real captures."""
from pathlib import Path

import numpy as np
import pytest

from ftslab import ringbuf
from ftslab.load import load
from ftslab.report import build_report, fields_read
from ftslab.render import render_text

FIX = Path(__file__).parent / "fixtures"
RECORDINGS = sorted(FIX.glob("*/*.dat"))


def _same_columns(a, b, fields):
    assert sorted(a.columns) == sorted(b.columns)
    checked = 0
    for key, ca in a.columns.items():
        cb = b.columns[key]
        assert np.array_equal(ca.ts, cb.ts) and np.array_equal(ca.pid, cb.pid)
        assert np.array_equal(ca.cpu, cb.cpu)
        if ca.stack is None:
            assert cb.stack is None
        else:
            assert np.array_equal(ca.stack, cb.stack)
        want = [n for n in fields(*key) if n in ca.fields]
        assert sorted(cb.fields) == sorted(want)
        for n in want:
            assert ca.fields[n].tolist() == cb.fields[n].tolist(), (key, n)
            checked += len(cb)
    return checked


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("block_pages", [2048, 8])
def test_fields_path_gives_the_lazy_columns(path, block_pages, monkeypatch):
    # 8-page blocks: every recording spans many blocks (events on block edges, a
    # page-order scatter per block, columns joined across blocks and CPUs)
    monkeypatch.setattr(ringbuf, "_BLOCK_PAGES", block_pages)
    lazy = load(path)
    eager = load(path, fields=fields_read)
    assert _same_columns(lazy, eager, fields_read) > 0
    assert eager.meta.lost == lazy.meta.lost
    assert eager.meta.unparsed == lazy.meta.unparsed
    assert eager.stacks == lazy.stacks
    assert eager.meta.extra.get("stacks_unattributed") == lazy.meta.extra.get(
        "stacks_unattributed")
    assert list(render_text(build_report(eager))) == list(render_text(build_report(lazy)))


def test_fields_path_keeps_only_the_named_fields():
    ds = load(FIX / "6.18" / "ftslab-open200.dat", fields=lambda s, n: ("ptr",))
    kc = ds.columns[("kmem", "kmem_cache_alloc")]
    assert list(kc.fields) == ["ptr"] and len(kc.fields["ptr"]) == len(kc)
