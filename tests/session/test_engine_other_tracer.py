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

import pytest

from toplevel import other_instance
from test_record_stacks import eventfd_frames, folded_with_exact_counts, record_eventfd_stacks

STACK_EVENTS = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc")
#: frames of the tracing machinery between an allocator and ftrace's stacktrace trigger,
#: in either form (static call or iterator): none may be left in a folded stack
MACHINERY = ("__traceiter_", "__SCT__", "trace_event_raw_event_", "trace_event_buffer",
             "event_trigger", "stacktrace_trigger", "__trace_stack", "__ftrace_trace_stack")


@pytest.fixture
def other_tracer(kernel):
    """Another tool's instance with ftslab's stack events (and their frees) enabled,
    tracing off, as `trace-cmd record -k` leaves the top level."""
    with other_instance(STACK_EVENTS + ("kfree", "kmem_cache_free", "mm_page_free")) as inst:
        yield inst


def test_stacks_fold_without_the_tracepoint_iterator(other_tracer, tmp_path):
    leaf, site = eventfd_frames()
    out, ds = record_eventfd_stacks(tmp_path)
    # the premise: with the other probe on, the kernel's stacks do hold the iterator
    raw = {(ds.symbolize(a) or "").split("+")[0] for st in ds.stacks for a in st}
    assert "__traceiter_kmalloc" in raw, sorted(n for n in raw if "trace" in n)
    _folded, weights = folded_with_exact_counts(out, leaf, site)
    left = sorted({f for s in weights for f in s.split(";") if f.startswith(MACHINERY)})
    assert not left, left
