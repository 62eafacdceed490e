"""`report --plot` (ftslab/cli/plot.py): the --interval series of a real recording
(tests/fixtures/6.18/ftslab-open200.dat) drawn into a PNG with matplotlib's Agg
backend.  The series is checked against the events themselves (decoded one by one by
ftslab.read), the drawn lines against the series, and the PNG read back.  No root."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import matplotlib  # an optional extra of ftslab, but a test dependency: no skip
import pytest

import ftslab
from ftslab.cli import plot
from ftslab.errors import UsageError
from ftslab.analysis.build import build_report
from ftslab.analysis.series import parse_interval

REC = Path(__file__).resolve().parents[1] / "fixtures" / "6.18" / "ftslab-open200.dat"
SLAB_ALLOCS = ("kmalloc", "kmem_cache_alloc")


@pytest.fixture(scope="module")
def series():
    ds = ftslab.load(REC)
    step = parse_interval("10ms")
    rep = build_report(ds, top=None, interval_ns=step)
    return rep.table(rep.main), step


def test_series_is_what_the_events_say(series):
    t, step = series
    events = list(ftslab.read(REC))
    t0 = min(e.ts for e in events)
    allocs = [e for e in events if e.name in SLAB_ALLOCS and e.fields["ptr"] != 0]
    per_bin = Counter((e.ts - t0) // step for e in allocs)
    bytes_bin = Counter()
    for e in allocs:
        bytes_bin[(e.ts - t0) // step] += e.fields["bytes_alloc"]
    got_n, got_b = Counter(), Counter()
    for r in t.rows:
        b = round(r["t_s"] * 1e9 / step)
        got_n[b] += r["count"]
        got_b[b] += r["bytes_alloc"]
    assert +got_n == per_bin and +got_b == bytes_bin
    nbins = (max(e.ts for e in events) - t0) // step + 1
    keys = {r["cache"] for r in t.rows}
    assert len(t.rows) == nbins * len(keys)  # every interval, every key, zeros too
    # outstanding: what the key allocated minus what of it was freed, so far
    for key in keys:
        rows = [r for r in t.rows if r["cache"] == key]
        held = 0
        for r in rows:
            assert r["frees"] <= r["count"] + held  # cannot free what was not there
            held += r["count"] - r["frees"]
        assert (rows[-1]["outstanding"] == 0) == (held == 0), key


@pytest.fixture
def drawn(series, tmp_path, monkeypatch):
    """Draw the series; keep the figure plot_series closes, to look at its lines."""
    import matplotlib.pyplot as plt
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    t, _step = series
    png = tmp_path / "series.png"
    plot.plot_series(t, str(png), title="open200")
    assert len(figs) == 1
    return t, png, figs[0]


def test_plot_draws_each_key_s_series(drawn):
    t, _png, fig = drawn
    top, bottom = fig.axes
    keys = list(dict.fromkeys(r["cache"] for r in t.rows))
    assert [ln.get_label() for ln in top.get_lines()] == keys
    assert [ln.get_label() for ln in bottom.get_lines()] == keys
    for ln_rate, ln_held, key in zip(top.get_lines(), bottom.get_lines(), keys):
        rows = [r for r in t.rows if r["cache"] == key]
        assert list(ln_rate.get_xdata()) == [r["t_s"] for r in rows]
        assert list(ln_rate.get_ydata()) == [r["bytes_per_s"] for r in rows]
        assert list(ln_held.get_ydata()) == [r["outstanding"] for r in rows]
    assert t.title in fig._suptitle.get_text() and "open200" in fig._suptitle.get_text()


def test_png_reads_back_at_the_figure_s_size_and_not_blank(drawn):
    import matplotlib.image as mpimg
    import numpy as np
    _t, png, fig = drawn
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(png)
    w, h = (fig.get_size_inches() * fig.dpi).round().astype(int)
    assert img.shape[:2] == (h, w)
    rgb = img[..., :3]
    assert (rgb.min(axis=2) < 0.9).mean() > 0.01       # ink, not a white page
    # each panel shows a series in its colour: the first key's rate line in the upper
    # half, the line of the key holding the most at the end in the lower half
    top, bottom = fig.axes

    def rows_in(line):
        c = np.array(matplotlib.colors.to_rgb(line.get_color()))
        return np.flatnonzero((np.abs(rgb - c).max(axis=2) < 0.05).any(axis=1))
    up = rows_in(top.get_lines()[0])
    assert up.size and up.max() < h / 2
    most = max(bottom.get_lines(), key=lambda ln: ln.get_ydata()[-1])
    assert most.get_ydata()[-1] > 0
    low = rows_in(most)
    assert low.size and low.max() > h / 2


def test_empty_series_still_writes_a_png(tmp_path):
    from ftslab.analysis.tables import Table
    empty = Table("interval_by_cache", "nothing", [], [])
    out = tmp_path / "empty.png"
    plot.plot_series(empty, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unwritable_path_raises_oserror_and_leaves_no_figure(series, tmp_path):
    import matplotlib.pyplot as plt
    t, _ = series
    before = plt.get_fignums()
    with pytest.raises(OSError):
        plot.plot_series(t, str(tmp_path / "no" / "such" / "dir.png"))
    assert plt.get_fignums() == before


def test_without_matplotlib_the_error_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(UsageError, match="needs matplotlib") as ei:
        plot.check_available()
    assert "pip install" in ei.value.hint


SAMPLED = REC.parent / "ftslab-eventfd300-samples.dat"


def test_kernel_active_objects_beside_the_traced_ones(tmp_path, monkeypatch):
    """A real recording with /proc/slabinfo sampled each second (a command that opened
    300 eventfds after 1.2 s and kept them open past the end, tests/fixtures/README.md):
    per cache the traced outstanding objects and the kernel's active ones, drawn in a
    third panel, the kernel's dashed, in the same colour as the key."""
    import matplotlib.pyplot as plt
    from ftslab.analysis import reconcile
    ds = ftslab.load(SAMPLED)
    rep = build_report(ds, top=None, interval_ns=parse_interval("1s"))
    t = rep.table(rep.main)
    filp = [r for r in t.rows if r["cache"] == "filp"]
    assert filp[-1]["outstanding_objs"] >= 300
    p = ds.meta.extra["slab_params"]
    c = p["caches"]["filp"]
    slack = reconcile.slab_slack(c[0], c[1], c[2], p["cpus"], p["nodes"])
    assert filp[0]["kernel_delta_active"] == 0
    assert filp[-1]["kernel_delta_active"] >= 300 - slack
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig) or real_close(fig))
    plot.plot_series(t, str(tmp_path / "k.png"))
    third = figs[0].axes[2]
    keys = list(dict.fromkeys(r["cache"] for r in t.rows))
    solid = [ln for ln in third.get_lines() if ln.get_linestyle() == "-"]
    dashed = [ln for ln in third.get_lines() if ln.get_linestyle() == "--"]
    assert len(solid) == len(keys) and len(dashed) >= 1
    k = keys.index("filp")
    assert list(solid[k].get_ydata()) == [r["outstanding_objs"] for r in filp]
    mine = [ln for ln in dashed if ln.get_color() == solid[k].get_color()]
    assert list(mine[0].get_ydata()) == [r["kernel_delta_active"] for r in filp]
