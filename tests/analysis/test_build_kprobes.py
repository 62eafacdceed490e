"""Reports of a real kprobe recording: `ftslab record --kprobes on` on Debian's 6.12
kernel booted under QEMU (tests/fixtures/6.12/ftslab-kprobes.dat: `ls /usr; cat
/etc/hostname` with the kmem tracepoints and the kmalloc-family kprobes).

What is checked: the kprobe events decode (sizes, cache names, call sites), reports never
add kprobe and tracepoint counts up, the kernel's double trace of a large kmalloc is
counted once in both sources, and trace-cmd reads the file too."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import ftslab
from conftest import need_tool
from ftslab.dataset import Dataset
from ftslab.cli.render import event_to_json, event_to_seed
from ftslab.analysis.build import build_report
from ftslab.analysis.grouping import group_allocations

DAT = Path(__file__).resolve().parents[1] / "fixtures" / "6.12" / "ftslab-kprobes.dat"


@pytest.fixture(scope="module")
def ds():
    return ftslab.load(DAT)


def _kp(ds, func):
    return next(c for (s, n), c in ds.columns.items()
                if s.startswith("ftslab_") and n == f"kp_{func}")


def test_kprobe_fields_decode(ds):
    kca = _kp(ds, "kmem_cache_alloc_noprof")
    names = set(kca.fields["name"].tolist())
    # real 6.12 caches, read through +0(+96($arg1)):string
    assert {"names_cache", "vm_area_struct", "filp"} <= names
    assert all(isinstance(n, str) and n and "(fault)" not in n for n in names)
    # objsize from +28($arg1):u32: names_cache objects are PATH_MAX bytes
    by_name = dict(zip(kca.fields["name"].tolist(), kca.fields["objsize"].tolist()))
    assert by_name["names_cache"] == 4096
    km = _kp(ds, "__kmalloc_cache_noprof")
    # a kmalloc-N cache holds requests of at most N bytes
    for name, size, obj in zip(km.fields["name"].tolist(), km.fields["size"].tolist(),
                               km.fields["objsize"].tolist()):
        assert name.startswith("kmalloc-") and 0 < size <= obj, (name, size, obj)


def test_every_probe_event_is_also_a_tracepoint_event(ds):
    """Same allocations, two sources: per-layer counts agree within what one of them
    cannot see (kmem:kmalloc covers every kmalloc-family function)."""
    rep = build_report(ds)
    fn = {r["function"]: r["count"] for r in rep.table("by_function").rows}
    kmalloc_probes = sum(v for k, v in fn.items() if "kmalloc" in k)
    tp = len(ds.columns[("kmem", "kmalloc")]) - 1  # minus the inner half of the double
    # kmalloc(0) returns ZERO_SIZE_PTR before the tracepoint: only the kprobe sees it
    zero = int((_kp(ds, "__kmalloc_noprof").fields["size"] == 0).sum())
    assert zero > 0
    assert kmalloc_probes - zero == tp
    kca_probes = sum(v for k, v in fn.items() if k.startswith("kmem_cache_alloc"))
    assert kca_probes == len(ds.columns[("kmem", "kmem_cache_alloc")])
    assert fn["__alloc_pages_noprof"] == len(ds.columns[("kmem", "mm_page_alloc")])


def test_sources_are_never_added_up(ds):
    with_kp = build_report(ds)
    tp_only = Dataset(columns={k: c for k, c in ds.columns.items() if k[0] == "kmem"},
                      meta=ds.meta, formats=ds.formats, symbolize=ds.symbolize)
    without = build_report(tp_only)
    for name in ("by_cache", "by_callsite", "by_comm", "pages_by_order"):
        assert with_kp.table(name).rows == without.table(name).rows, name
    kp = build_report(ds, source="kprobe", top=None)
    assert kp.main == "by_function"
    total_kp = sum(r["count"] for r in kp.table("by_cache").rows)
    total_tp = sum(r["count"] for r in build_report(tp_only, top=None).table(
        "by_cache").rows)
    zero = int((_kp(ds, "__kmalloc_noprof").fields["size"] == 0).sum())
    # the same slab allocations seen by each source, counted once in each
    assert total_kp - zero == total_tp
    kp_caches = {r["cache"] for r in kp.table("by_cache").rows}
    assert "names_cache" in kp_caches and "kmalloc-8" in kp_caches
    zrow = next(r for r in kp.table("by_cache").rows if r["cache"].startswith("(kmalloc(0)"))
    assert zrow["count"] == zero and zrow["bytes_req"] == 0
    t = group_allocations(ds, ("function",), top=None, _layer=("kprobe", "kprobe_page"))
    assert all(not r["function"].startswith("kp_") for r in t.rows)


def test_large_kmalloc_double_trace_counted_once(ds):
    """6.12 traces a large kvmalloc twice (inner __kmalloc_large_node_noprof, outer
    __do_kmalloc_node): one allocation, one row, freed once."""
    km = ds.columns[("kmem", "kmalloc")]
    ptrs = km.fields["ptr"]
    vals, counts = np.unique(ptrs[km.fields["bytes_req"] > 8192], return_counts=True)
    assert (counts == 2).any()  # the kernel really emitted two events for one pointer
    rep = build_report(ds, top=None)
    large = next(r for r in rep.table("by_cache").rows if r["cache"] == "(large kmalloc)")
    assert large["count"] == 1 and large["frees"] == 1 and large["live"] == 0
    assert any("counted once" in w for w in rep.warnings)
    fn = {r["function"]: r["count"] for r in rep.table("by_function").rows}
    assert fn.get("__kmalloc_large_node_noprof", 0) == 0


def test_json_and_seed_lines_of_kprobe_events(ds):
    evs = [e for e in ftslab.read(DAT) if e.name.startswith("kp_")]
    kca = next(e for e in evs if e.name == "kp_kmem_cache_alloc_noprof")
    obj = json.loads(event_to_json(kca, ds.symbolize))
    assert obj["function"] == "kmem_cache_alloc_noprof"
    assert obj["caller_sym"] and "+0x" in obj["caller_sym"]
    seed = event_to_seed(kca)
    assert seed.startswith(f"[kmem_cache_alloc_noprof]: Process '{kca.comm}' with PID "
                           f"{kca.pid} allocated {kca.fields['objsize']} bytes in cache "
                           f"'{kca.fields['name']}'")
    km = next(e for e in evs if e.name == "kp___kmalloc_noprof")
    assert event_to_seed(km) == (f"[__kmalloc_noprof]: Process '{km.comm}' with PID "
                                 f"{km.pid} allocated {km.fields['size']} bytes")


def test_trace_cmd_reads_the_kprobe_recording(ds):
    trace_cmd = need_tool("trace-cmd")  # skips without it, fails under FTSLAB_KERNEL_TESTS=1
    cp = subprocess.run([trace_cmd, "report", "-i", str(DAT)], capture_output=True,
                        text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr[-500:]
    n = sum(1 for line in cp.stdout.splitlines() if " kp_kmem_cache_alloc_noprof:" in line)
    assert n == len(_kp(ds, "kmem_cache_alloc_noprof"))
    assert 'name=names_cache' in cp.stdout or 'name="names_cache"' in cp.stdout
