"""record --stacks while another tracer has the same kmem events enabled.

Users share machines with other tracers: another tool's instance with kmem events on,
or the top level after `trace-cmd record -k` (which leaves its events enabled).  Each
enabled instance is one more probe on the tracepoint, and with more than one the kernel
calls them through the tracepoint's iterator, __traceiter_<event>, instead of a static
call to the only one (Linux commit d25e37d89dd2 "tracepoint: Optimize using
static_call()", v5.10).  That frame then sits in every recorded stack between the
allocator and the probe: the stacks must still fold to the allocation's own frames,
with the counts of test_kernel_stacks.py.

The other tracer here is an instance of our own, named like another tool's (not
ftslab_*, which ftslab would take for its own leftovers), removed at the end.
"""
from __future__ import annotations

import json
import os

import pytest

from conftest import run_ftslab
from test_kernel_stacks import EVENTFDS, N, eventfd_frames

STACK_EVENTS = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")
#: frames of the tracing machinery between an allocator and ftrace's stacktrace trigger,
#: in either form (static call or iterator): none may be left in a folded stack
MACHINERY = ("__traceiter_", "__SCT__", "trace_event_raw_event_", "trace_event_buffer",
             "event_trigger", "stacktrace_trigger", "__trace_stack", "__ftrace_trace_stack")


def _write(path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@pytest.fixture
def other_tracer(kernel):
    """Another tool's instance with ftslab's stack events (and their frees) enabled,
    tracing off, as `trace-cmd record -k` leaves the top level."""
    inst = kernel / "instances" / f"othertool_{os.getpid()}"
    os.mkdir(inst)
    try:
        _write(inst / "tracing_on", "0")
        for ev in STACK_EVENTS + ("kfree", "kmem_cache_free", "mm_page_free"):
            _write(inst / "events" / "kmem" / ev / "enable", "1")
        yield inst
    finally:
        for ev in STACK_EVENTS + ("kfree", "kmem_cache_free", "mm_page_free"):
            try:
                _write(inst / "events" / "kmem" / ev / "enable", "0")
            except OSError:
                pass
        os.rmdir(inst)


def test_stacks_fold_without_the_tracepoint_iterator(other_tracer, tmp_path):
    leaf, site = eventfd_frames()
    out = tmp_path / "stacks.dat"
    cp = run_ftslab("record", "--stacks", "-o", out, "--", *EVENTFDS, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab
    ds = ftslab.load(out)
    assert ds.stacks and ds.meta.extra.get("stacks_unattributed", 0) == 0
    for ev in STACK_EVENTS:
        assert (ds.columns[("kmem", ev)].stack >= 0).all(), ev
    # the premise: with the other probe on, the kernel's stacks do hold the iterator
    raw = {(ds.symbolize(a) or "").split("+")[0] for st in ds.stacks for a in st}
    assert "__traceiter_kmalloc" in raw, sorted(n for n in raw if "trace" in n)
    folded = run_ftslab("report", out, "--format", "folded", "--weight", "count",
                        check=True).stdout
    lines = [line.rsplit(" ", 1) for line in folded.splitlines()]
    weights = {stack: int(w) for stack, w in lines}
    assert len(weights) == len(lines)
    left = sorted({f for s in weights for f in s.split(";") if f.startswith(MACHINERY)})
    assert not left, left
    ctx = [w for s, w in weights.items() if s.endswith(f";{site};{leaf}")]
    assert ctx == [N], [s for s in weights if "eventfd" in s]
    plain = json.loads(run_ftslab("report", out, "--format", "json", "--by", "event",
                                  check=True).stdout)
    slab = sum(r["count"] for r in plain["rows"]
               if r["event"] in ("kmem:kmalloc", "kmem:kmem_cache_alloc"))
    assert sum(weights.values()) == slab
    js = json.loads(run_ftslab("report", out, "--format", "json", "--by", "stack", "--top",
                               "1000", check=True).stdout)
    row = [r for r in js["rows"] if r["stack"].startswith(f"{leaf} <- {site} <- ")]
    assert len(row) == 1 and row[0]["count"] == N, [r["stack"] for r in js["rows"]][:20]
