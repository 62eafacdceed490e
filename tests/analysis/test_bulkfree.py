"""Bulk frees (kprobes on kmem_cache_free_bulk, kprobes.py / bulkfree.py): one event
frees ``cnt`` objects named by its pointer slots; analysed.py pairs each with its
allocation.  The events here are written as the kernel prints them (a text trace);
tests/vm/guest/test_guest_bulkfree.py records real ones."""
from __future__ import annotations

import numpy as np
import pytest

from ftslab import events
from ftslab.analysis import analysed
from ftslab.analysis import live
from ftslab.analysis.bulkfree import expand_bulk_frees, unseen_free_reason
from ftslab.events import BULK_FREE_SLOTS
from ftslab.kernel.kprobes import plan_probes
from ftslab.trace.loader import load

from test_kprobes import _session, ctx_61, fake_kprobe_tracefs  # noqa: F401 (fixture)

A = "      prog-100   [000] .....   1.{us:06d}: kmem_cache_alloc: call_site=mas_alloc_nodes+0x1a/0x300 ptr={ptr:016x} name=maple_node bytes_req=256 bytes_alloc=256 gfp_flags=GFP_KERNEL node=-1 accounted=false\n"  # noqa: E501
F = "      prog-100   [000] .....   1.{us:06d}: kpf_kmem_cache_free_bulk: (kmem_cache_free_bulk+0x4/0x20) cnt={cnt} {slots}\n"  # noqa: E501
K = "      prog-100   [000] .....   1.{us:06d}: kmem_cache_free: call_site=mt_free_rcu+0x1a/0x30 ptr={ptr:016x} name=maple_node\n"  # noqa: E501
BASE = 0xffff888100001000


def _trace(tmp_path, lines):
    p = tmp_path / "bulk.txt"
    p.write_text("# tracer: nop\n#\n" + "".join(lines))
    return p


def _slots(ptrs):
    return " ".join(f"p{i}=0x{p:x}" for i, p in enumerate(ptrs))


def _maple_live(path):
    t = live.live_allocations(load(path), ("cache",))
    return {r["cache"]: r["live"] for r in t.rows}.get("maple_node", 0)


def test_a_bulk_free_frees_the_objects_its_count_names_and_no_more(tmp_path):
    ptrs = [BASE + 0x100 * i for i in range(5)]
    lines = [A.format(us=i, ptr=p) for i, p in enumerate(ptrs)]
    # cnt=2: slots 2 and 3 hold what followed the array (here: live objects' addresses)
    lines.append(F.format(us=10, cnt=2, slots=_slots(ptrs[:4])))
    lines.append(K.format(us=11, ptr=ptrs[4]))       # a per-object free beside it
    path = _trace(tmp_path, lines)
    assert _maple_live(path) == 2                    # ptrs[2], ptrs[3]: never freed
    an = analysed.Analysis(load(path))
    (fr,) = [f for f in an.frames if f.src.layer == "slab"]
    assert fr.freed.tolist() == [True, True, False, False, True]
    assert an.bulk_unnamed == 0


def test_without_the_bulk_free_source_the_same_trace_shows_them_live(tmp_path, monkeypatch):
    # the mutation the guest test guards against, in miniature: drop the bulk source
    ptrs = [BASE + 0x100 * i for i in range(3)]
    lines = [A.format(us=i, ptr=p) for i, p in enumerate(ptrs)]
    lines.append(F.format(us=10, cnt=3, slots=_slots(ptrs)))
    path = _trace(tmp_path, lines)
    assert _maple_live(path) == 0
    monkeypatch.setattr(events, "FREE_SOURCES", tuple(
        s for s in events.FREE_SOURCES if s.count is None))
    assert _maple_live(path) == 3


def test_an_object_freed_in_bulk_and_allocated_again_is_live_once(tmp_path):
    p = BASE
    lines = [A.format(us=1, ptr=p), F.format(us=2, cnt=1, slots=_slots([p])),
             A.format(us=3, ptr=p)]
    assert _maple_live(_trace(tmp_path, lines)) == 1


def test_objects_past_the_last_slot_are_counted_not_named():
    cnt = np.array([3, BULK_FREE_SLOTS + 7], np.int64)
    fields = {"cnt": cnt, "p0": np.array([11, 21], np.uint64),
              "p1": np.array([12, 22], np.uint64), "p2": np.array([13, 23], np.uint64),
              "p3": np.array([14, 24], np.uint64)}
    got = expand_bulk_frees(fields, np.array([5, 6], np.uint64), None, "cnt")
    assert sorted(got.ptrs.tolist()) == [11, 12, 13, 21, 22, 23, 24]
    assert got.unnamed == 7
    # a later probe's type (no slot 0) does not count the unseen objects again
    later = expand_bulk_frees({"cnt": cnt, "p4": np.array([0, 25], np.uint64)},
                              np.array([5, 6], np.uint64), None, "cnt")
    assert later.ptrs.tolist() == [25] and later.unnamed == 0


def test_the_plan_covers_every_slot_once_and_filters_the_later_probes():
    ctx = ctx_61()
    ctx.kallsyms["kmem_cache_free_bulk"] = 1
    plan = plan_probes(ctx, "ftslab_1", bulk_frees=True)
    seen = []
    for pr in plan.bulk_frees:
        assert pr.event.startswith("kpf_") and pr.layer == "free_bulk"
        assert pr.args[0] == ("cnt", "$arg2:u64")
        assert len(pr.args) <= 128                    # MAX_TRACE_ARGS
        slots = [int(n[1:]) for n, _ in pr.args[1:]]
        for (n, spec), i in zip(pr.args[1:], slots):
            assert spec == f"+{8 * i}($arg3):x64"
        assert pr.filter == (f"cnt > {slots[0]}" if slots[0] else None)
        assert len(pr.definition) < 4096              # one kprobe_events write
        seen += slots
    assert seen == list(range(BULK_FREE_SLOTS))
    assert plan.all_probes == plan.probes + plan.bulk_frees
    assert not any(p.event.startswith("kpf_") for p in plan.probes)


def test_no_bulk_free_probe_where_the_kernel_lacks_the_function():
    plan = plan_probes(ctx_61(), "ftslab_1", bulk_frees=True)
    assert plan.bulk_frees == []
    assert ("free_bulk", "kmem_cache_free_bulk is not in /proc/kallsyms") in plan.skipped
    assert plan_probes(ctx_61(), "ftslab_1").skipped == [
        s for s in plan.skipped if s[0] != "free_bulk"]


@pytest.mark.parametrize("name", ["kpf_kmem_cache_free_bulk", "kpf_kmem_cache_free_bulk_32"])
def test_bulk_free_events_are_frees_not_allocations(name):
    assert events.alloc_source("ftslab_1", name) is None
    src = events.free_source("ftslab_1", name)
    assert src is not None and src.count == "cnt" and src.layer == "slab"
    fields = events.fields_read("ftslab_1", name)
    assert fields[0] == "cnt" and "p0" in fields and f"p{BULK_FREE_SLOTS - 1}" in fields


def test_a_session_defines_filters_enables_and_removes_the_bulk_free_probes(
        fake_kprobe_tracefs, monkeypatch):
    def ctx(tfs, symbols=None):
        c = ctx_61(btf_offsets={"name": 96, "size": 24, "object_size": 28},
                   btf_present=True)
        c.kallsyms["kmem_cache_free_bulk"] = 1
        return c
    monkeypatch.setattr("ftslab.kernel.procfs.read_probe_context", ctx)
    k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch)
    plan = s.probe_plan
    assert len(plan.bulk_frees) == 5
    defs = [st.value for st in steps if st.kind == "kprobe"]
    assert [p.definition for p in plan.bulk_frees] == defs[-5:]
    inst = "instances/ftslab_999999/events/ftslab_999999"
    filt = {st.path: st.value for st in steps if st.path.endswith("/filter")}
    for pr in plan.bulk_frees:
        assert filt.get(f"{inst}/{pr.event}/filter") == pr.filter   # None: no filter
        assert any(st.path == f"{inst}/{pr.event}/enable" and st.value == "1"
                   for st in steps)
    s.apply(steps)
    assert ("ftslab_999999", "kpf_kmem_cache_free_bulk_392") in s.formats
    s.close()
    assert not (fake_kprobe_tracefs / "events/ftslab_999999").exists()
    # off: the same session without them
    k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch, bulk_frees=False)
    assert s.probe_plan.bulk_frees == []
    assert not any("kpf_" in (st.value or "") for st in steps)


def test_unseen_free_reasons_follow_the_measured_paths():
    # 6.18 host: maple_node has sheaves (sheaf_capacity 32): unseen even with kprobes
    assert unseen_free_reason("maple_node", sheaf_capacity=32, bulk_probed=True)[1] is True
    assert unseen_free_reason("vm_area_struct", sheaf_capacity=32)[1] is False
    # 6.1/6.12 (no sheaf_capacity file): bulk frees, seen only with the kprobes
    assert unseen_free_reason("maple_node")[1] is True
    assert unseen_free_reason("maple_node", bulk_probed=True) is None
    assert unseen_free_reason("kmalloc-256") == (
        "objects freed with kfree_rcu() leave in batches (kfree_bulk), which no "
        "tracepoint reports", False)
    assert unseen_free_reason("kmalloc-256", bulk_probed=True) is None
    assert unseen_free_reason("task_struct") is None
    assert unseen_free_reason("dentry", sheaf_capacity=0) is None
