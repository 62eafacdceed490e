"""Kernel stacks (record --stacks): pairing each kernel_stack event with its event,
folding, --by stack -- on hand-built ring-buffer events and on a real 6.18 capture
(tests/fixtures/README.md, "Kernel stacks")."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from ftslab.analysis import build
from ftslab.analysis import frames as frames_mod
from ftslab.analysis import grouping
from ftslab.analysis import stacks
from ftslab.trace import pages
from ftslab.trace import stackrefs
from ftslab.errors import UsageError
from ftslab.trace.formats import parse_format
from ftslab.trace.loader import load

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
REAL = FIX / "ftslab-stacks-eventfd300.dat"
STACK_ID, ALLOC_ID, FREE_ID = 4, 100, 101
HARDIRQ = 0x08

STACK_FORMAT = """name: kernel_stack
ID: 4
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:int size;	offset:8;	size:4;	signed:1;
	field:unsigned long caller[8];	offset:16;	size:64;	signed:0;

print fmt: "\\t=> %ps\\n"
"""


def events(spec):
    """A fake CPU's data and walk from (type id, pid, flags, callers) tuples."""
    data, offs, lens = b"", [], []
    for eid, pid, flags, callers in spec:
        body = struct.pack("<HBBi", eid, flags, 0, pid)
        if eid == STACK_ID:
            body += struct.pack("<ii", len(callers), 0) + b"".join(
                struct.pack("<Q", c) for c in callers)
        else:
            body += b"\0" * 8
        offs.append(len(data))
        lens.append(len(body))
        data += body
    w = pages.PageWalk(cpu=0, ts=np.arange(len(spec), dtype=np.uint64),
                         off=np.array(offs, np.int64),
                         ids=np.array([s[0] for s in spec], np.int64),
                         lens=np.array(lens, np.int64))
    return data, w


def test_each_stack_goes_to_the_event_it_follows():
    data, w = events([(ALLOC_ID, 7, 0, ()), (STACK_ID, 7, 0, (1, 2)),
                      (FREE_ID, 7, 0, ()),
                      (ALLOC_ID, 7, 0, ()), (STACK_ID, 7, 0, (3,))])
    ev, st = stackrefs.pair_stacks(data, w, STACK_ID, {ALLOC_ID})
    assert sorted(zip(ev.tolist(), st.tolist())) == [(0, 1), (3, 4)]


def test_an_interrupt_nested_inside_a_pair_keeps_both_pairs_right():
    # task alloc reserved; an IRQ allocates (and its stack is written) before the task's
    # stack: A_task, A_irq, S_irq, S_task
    data, w = events([(ALLOC_ID, 7, 0, ()), (ALLOC_ID, 0, HARDIRQ, ()),
                      (STACK_ID, 0, HARDIRQ, (9,)), (STACK_ID, 7, 0, (1, 2))])
    ev, st = stackrefs.pair_stacks(data, w, STACK_ID, {ALLOC_ID})
    assert sorted(zip(ev.tolist(), st.tolist())) == [(0, 3), (1, 2)]


def test_a_stack_without_its_event_is_not_given_to_another():
    # an event lost (or filtered) after its stack was written, and a stack whose pid
    # does not match the event before it
    data, w = events([(STACK_ID, 7, 0, (1,)), (ALLOC_ID, 7, 0, ()), (STACK_ID, 7, 0, (2,)),
                      (STACK_ID, 7, 0, (3,)), (ALLOC_ID, 8, 0, ()), (STACK_ID, 9, 0, (4,))])
    ev, st = stackrefs.pair_stacks(data, w, STACK_ID, {ALLOC_ID})
    assert list(zip(ev.tolist(), st.tolist())) == [(1, 2)]


def test_stack_rows_read_size_entries():
    fmt = parse_format(STACK_FORMAT, "ftrace")
    data, w = events([(STACK_ID, 7, 0, (0xA, 0xB, 0xC)), (ALLOC_ID, 7, 0, ()),
                      (STACK_ID, 7, 0, (0xD,))])
    rows = stackrefs.stack_rows(data, w, np.array([0, 2]), fmt)
    assert rows.tolist() == [[0xA, 0xB, 0xC], [0xD, 0, 0]]


def test_real_capture_every_allocation_has_its_stack():
    ds = load(REAL)
    assert ds.meta.extra.get("stacks_unattributed", 0) == 0
    assert len(ds.stacks) == 129
    for key in (("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc")):
        assert (ds.columns[key].stack >= 0).all()
    for key in (("kmem", "kfree"), ("kmem", "kmem_cache_free")):
        assert (ds.columns[key].stack < 0).all()


def test_folded_stacks_of_the_real_capture():
    ds = load(REAL)
    folded = dict(stacks.folded_stacks(ds, "count"))
    assert sum(folded.values()) == 1266 + 2002           # every allocation, once
    eventfd = {k: v for k, v in folded.items() if ";do_eventfd;" in k}
    leaf = {k.rsplit(";", 2)[-2] + ";" + k.rsplit(";", 1)[-1]: v for k, v in eventfd.items()}
    assert leaf["do_eventfd;__kmalloc_cache_noprof"] == 300
    assert leaf["alloc_empty_file;kmem_cache_alloc_noprof"] == 300
    assert leaf["__d_alloc;kmem_cache_alloc_lru_noprof"] == 300
    for stack in folded:
        frames = stack.split(";")
        assert frames[0] == "python3" and frames[1] in (
            "entry_SYSCALL_64_after_hwframe", "asm_exc_page_fault"), stack
        assert not any(f.startswith("trace_event_raw_event_") for f in frames), stack
        assert all(f and " " not in f for f in frames), stack
    by_bytes = stacks.folded_stacks(ds, "bytes")
    assert by_bytes == sorted(by_bytes, key=lambda x: (-x[1], x[0]))
    total = grouping.group_allocations(ds, (), _layer="slab").rows[0]["bytes_alloc"]
    assert sum(w for _s, w in by_bytes) == total


def test_by_stack_table_and_live_fold():
    ds = load(REAL)
    t = grouping.group_allocations(ds, ("stack",), top=None, _layer="slab")
    rows = {r["stack"]: r for r in t.rows}
    row = rows["__kmalloc_cache_noprof <- do_eventfd <- __x64_sys_eventfd2 <- do_syscall_64 "
               "<- entry_SYSCALL_64_after_hwframe"]
    assert row["count"] == 300
    # the eventfds were closed at exit, inside the recording: none of them is live (the
    # slabs made for them still are, with their obj_exts arrays)
    live = dict(stacks.folded_stacks(ds, "count", live=True))
    assert not [k for k in live if k.endswith(("do_eventfd;__kmalloc_cache_noprof",
                                               "alloc_empty_file;kmem_cache_alloc_noprof"))]
    assert any(k.endswith("alloc_slab_obj_exts;__kmalloc_node_noprof") for k in live)


def test_no_stacks_is_one_clear_error():
    with pytest.raises(UsageError, match="no kernel stacks"):
        stacks.folded_stacks(load(FIX / "ftslab-open200.dat"))
    t = grouping.group_allocations(load(FIX / "ftslab-open200.dat"), ("stack",), _layer="slab")
    assert [r["stack"] for r in t.rows] == [frames_mod.NO_STACK]


def test_distinct_stacks_equal_numpys_unique(monkeypatch):
    import importlib
    load_mod = importlib.import_module("ftslab.trace.loader")
    data, w = events([(STACK_ID, 7, 0, c) for c in
                      [(1, 2, 3), (1, 2), (1, 2, 3), (4,), (1, 2), (5, 6, 7, 8), (4,)]])
    fmt = parse_format(STACK_FORMAT, "ftrace")
    pos = np.arange(7)
    refs = [(data,) + stackrefs.stack_refs(data, w, pos[:4], fmt),
            (data,) + stackrefs.stack_refs(data, w, pos[4:], fmt)]
    uniq, inv = load_mod._distinct_stacks(refs)
    rows = stackrefs.stack_rows(data, w, pos, fmt)
    assert np.array_equal(uniq[inv][:, :rows.shape[1]], rows)
    assert uniq.shape[0] == 4
    # a first hash that says every stack is the same: the second disagrees, and the
    # rows themselves are sorted
    real = load_mod._mix
    monkeypatch.setattr(load_mod, "_mix", lambda h, col, k=0: (
        h.__setitem__(slice(None), 0) if k == 0 else real(h, col, k)))
    uniq, inv = load_mod._distinct_stacks(refs)
    assert uniq.shape[0] == 4 and np.array_equal(uniq[inv][:, :rows.shape[1]], rows)


def test_unpaired_stacks_are_said():
    ds = load(REAL)
    assert not any("could not be paired" in w for w in build.build_report(ds).warnings)
    ds.meta.extra["stacks_unattributed"] = 3
    ws = build.build_report(ds).warnings
    assert any(w.startswith("note: 3 kernel stack(s) could not be paired") for w in ws), ws
