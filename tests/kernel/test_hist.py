"""kernel/hist.py: serve's triggers decided from real format files (6.1, 6.12, 6.18
fixtures), ``hist_support`` over fake trees and, as a kernel test, the running kernel."""
from __future__ import annotations

import pytest

from ftslab.kernel.hist import HistSpec, hist_support, read_serve_formats, serve_specs
from ftslab.kernel.tracefs import Tracefs
from ftslab.trace.formats import parse_format

from conftest import FIXTURES, make_fake_tracefs


def _formats(kernel: str) -> dict:
    out = {}
    for ev in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc"):
        text = (FIXTURES / kernel / f"kmem-{ev}.format").read_text()
        out[("kmem", ev)] = parse_format(text, "kmem")
    return out


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_no_cache_name_no_cache_trigger_for_kmem_cache_alloc(kernel):
    specs = serve_specs(_formats(kernel))
    got = {(s.name, s.family): s for s in specs}
    assert ("kmem_cache_alloc", "cache") not in got
    assert got[("kmalloc", "cache")].keys == ("bytes_alloc",)
    assert got[("kmalloc", "callsite")].trigger == \
        "hist:keys=call_site.sym-offset:vals=hitcount,bytes_alloc:size=4096"
    assert got[("kmem_cache_alloc", "comm")].keys == ("common_pid.execname",)
    assert got[("mm_page_alloc", "order")].trigger == "hist:keys=order:vals=hitcount:size=128"


def test_a_name_field_gives_cache_names():
    specs = serve_specs(_formats("6.18"))
    (c,) = [s for s in specs if s.name == "kmem_cache_alloc" and s.family == "cache"]
    assert c.keys == ("name",) and c.vals == ("hitcount", "bytes_alloc")


def test_removal_and_clear_texts():
    s = HistSpec("kmem", "kmalloc", ("bytes_alloc",), ("hitcount", "bytes_req"), 512, "cache")
    assert s.trigger == "hist:keys=bytes_alloc:vals=hitcount,bytes_req:size=512"
    assert s.removal == "!" + s.trigger
    assert s.clear == s.trigger + ":clear"


def test_a_missing_event_leaves_its_triggers_out():
    f = _formats("6.12")
    del f[("kmem", "mm_page_alloc")]
    assert {s.family for s in serve_specs(f)} == {"callsite", "comm", "cache"}


def test_hist_support_from_the_tree(tmp_path):
    root = make_fake_tracefs(tmp_path)
    ok, why = hist_support(Tracefs(root))
    assert not ok and why == ("no hist file under events/kmem/kmalloc: CONFIG_HIST_TRIGGERS "
                              "is not set on this kernel")
    (root / "events/kmem/kmalloc/hist").write_text("")
    assert hist_support(Tracefs(root)) == (
        True, "the kernel has hist triggers (events/kmem/kmalloc/hist)")
    assert len(serve_specs(Tracefs(root))) >= 6


def test_hist_support_of_the_running_kernel(kernel):
    """Whatever kernel runs the tests: the answer follows its kmalloc event's hist file."""
    tfs = Tracefs.locate()
    ok, why = hist_support(tfs)
    has = (tfs.root / "events/kmem/kmalloc/hist").exists()
    assert ok == has
    if not has:
        assert "CONFIG_HIST_TRIGGERS is not set" in why
    assert set(read_serve_formats(tfs)) == {("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc"),
                                            ("kmem", "mm_page_alloc")}
