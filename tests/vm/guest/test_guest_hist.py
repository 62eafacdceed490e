"""serve's hist path on the guest kernel: HistSource's triggers in a private instance,
their counts against the ring buffer of the same instance, their removal, and what
``ftslab reset`` does with the triggers of a killed process.

The guests have CONFIG_HIST_TRIGGERS: a kernel without it fails here (every guest test
runs with FTSLAB_KERNEL_TESTS=1).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest

from ftslab.kernel.hist import hist_support, serve_specs
from ftslab.kernel.tracefs import Tracefs
from ftslab.kernel.undo import UndoStack
from ftslab.session.histsource import HistSource
from ftslab.trace.histtext import Comm, parse_hist

from .conftest import ROOT, ftslab_run
from .vmfacts import eventfd_caller

N = 300

EVENTFDS = ("import os, sys\n"
            "sys.stdin.readline()\n"
            f"fds = [os.eventfd(0) for _ in range({N})]\n")

_LINE = re.compile(r"-(\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\].*? (kmalloc|kmem_cache_alloc): .*"
                   r"bytes_alloc=(\d+)")


@pytest.fixture
def session():
    tfs = Tracefs.locate()
    ok, why = hist_support(tfs)
    assert ok, why
    undo = UndoStack()
    inst = tfs.instance_create(f"ftslab_{os.getpid()}_hist")
    undo.push("rmdir", inst.destroy)
    try:
        yield tfs, inst, undo
    finally:
        assert undo.unwind() == []


def _hist_lines(inst, system, name):
    return [l for l in inst.event_triggers(system, name) if l.startswith("hist:")]


def test_hist_counts_equal_the_ring_buffer(session):
    """A child opens N eventfds; what the comm tables (keyed by pid) counted for its pid
    equals, exactly, the kmalloc and kmem_cache_alloc events of that pid in the ring
    buffer of the same instance, both enabled over the child's whole life."""
    tfs, inst, undo = session
    specs = serve_specs(tfs)
    src = HistSource(inst, specs)
    inst.buffer_size_kb_set(4096)
    src.install(undo)
    for ev in ("kmalloc", "kmem_cache_alloc"):
        inst.event_enable("kmem", ev)
        undo.push(f"disable {ev}", lambda ev=ev: inst.event_enable("kmem", ev, False))
    inst.trace_clear()
    src.read()  # the baseline
    child = subprocess.Popen([sys.executable, "-c", EVENTFDS], stdin=subprocess.PIPE,
                             text=True)
    child.communicate("go\n", timeout=120)
    assert child.returncode == 0
    inst.tracing_on(False)  # the ring buffer stops here; the tables keep counting
    delta = src.read()
    for cpu in range(os.cpu_count() or 1):
        st = inst.cpu_stats(cpu)
        assert st.lost == 0, st

    ring: dict[str, list[int]] = {"kmalloc": [0, 0], "kmem_cache_alloc": [0, 0]}
    for line in inst.read("trace").splitlines():
        m = _LINE.search(line)
        if m and int(m.group(1)) == child.pid:
            ring[m.group(2)][0] += 1
            ring[m.group(2)][1] += int(m.group(3))
    for ev in ("kmalloc", "kmem_cache_alloc"):
        (comm_table,) = [t for t in parse_hist(inst.event_hist_read("kmem", ev))
                         if t.keys == ("common_pid.execname",)]
        mine = [(k["common_pid"], v) for k, v in comm_table.entries
                if k["common_pid"].pid == child.pid]
        assert len(mine) == 1, (ev, mine)
        comm, v = mine[0]
        assert isinstance(comm, Comm)
        assert (v["hitcount"], v["bytes_alloc"]) == tuple(ring[ev]), ev
        assert comm_table.dropped == 0
    # eventfd(2) kmallocs one eventfd_ctx per call, in do_eventfd (or the syscall it is
    # inlined into: read from /proc/kallsyms)
    kmalloc_ring = ring["kmalloc"][0]
    assert kmalloc_ring >= N
    site = eventfd_caller() + "+"
    eventfd = {k: v for k, v in delta.by["callsite"].items() if k.startswith(site)}
    assert eventfd and sum(n for n, _b in eventfd.values()) >= N, delta.by["callsite"]
    # the child's comm (saved at its first allocation, before exec) has all of its
    assert any(n >= kmalloc_ring for n, _b in delta.by["comm"].values())
    assert set(delta.by) == {s.family for s in specs}
    assert delta.dropped == 0 and delta.hits > 0


def test_removal_leaves_no_hist_line(session):
    tfs, inst, undo = session
    specs = serve_specs(tfs)
    inner = UndoStack()
    HistSource(inst, specs).install(inner)
    events = {(s.system, s.name) for s in specs}
    assert all(_hist_lines(inst, *ev) for ev in events)
    assert inner.unwind() == []
    assert not any(_hist_lines(inst, *ev) for ev in events)
    # and the event's probe is gone with them (enable reads "0", not "0*")
    assert inst.read("events/kmem/kmalloc/enable").strip() == "0"


def test_clear_empties_a_table(session):
    tfs, inst, undo = session
    order = [s for s in serve_specs(tfs) if s.family == "order"]
    src = HistSource(inst, order, clear_fraction=0.0)  # clear after every read
    src.install(undo)
    subprocess.run([sys.executable, "-c", "b = [bytearray(1 << 20) for _ in range(8)]"],
                   check=True)
    d = src.read()
    assert d.cleared and sum(n for n, _b in d.by["order"].values()) > 0
    (t,) = parse_hist(inst.event_hist_read("kmem", "mm_page_alloc"))
    # a few allocations may come between the clear and this read, never the old total
    assert sum(v["hitcount"] for _k, v in t.entries) < sum(n for n, _b in d.by["order"].values())


KILLED = ("import os, sys\n"
          "from ftslab.kernel.tracefs import Tracefs\n"
          "from ftslab.kernel.hist import serve_specs\n"
          "from ftslab.kernel.undo import UndoStack\n"
          "from ftslab.session.histsource import HistSource\n"
          "tfs = Tracefs.locate()\n"
          "inst = tfs.instance_create(f'ftslab_{os.getpid()}')\n"
          "HistSource(inst, serve_specs(tfs)).install(UndoStack())\n"
          "print(inst.name, flush=True)\n"
          "sys.stdin.readline()\n")


def test_reset_removes_what_a_killed_process_left():
    tfs = Tracefs.locate()
    top_before = tfs.read("events/kmem/kmalloc/trigger")
    p = subprocess.Popen([sys.executable, "-c", KILLED], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    name = p.stdout.readline().strip()
    try:
        assert name == f"ftslab_{p.pid}"
        assert _hist_lines(tfs.instance(name), "kmem", "kmalloc")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    assert name in tfs.instances()
    r = ftslab_run("reset")
    assert r.returncode == 0, r.stderr
    assert name not in tfs.instances()
    assert tfs.read("events/kmem/kmalloc/trigger") == top_before
    # nothing holds the kmalloc tracepoint any more
    assert tfs.read("events/kmem/kmalloc/enable").strip() == "0"


def test_doctor_says_serve_gets_hist_triggers():
    r = ftslab_run("doctor")
    line = next((l for l in r.stdout.splitlines() if l.startswith("serve ")), None)
    assert line is not None, r.stdout
    assert "hist triggers with --no-live (the kernel has hist triggers" in line, line
    fmt = Tracefs.locate().event_format("kmem", "kmem_cache_alloc")
    assert ("no name field" in line) == (" name;" not in fmt), line
