"""record --stacks on the real kernel: every allocation gets its own kernel stack, the
folded output has exact counts, and flamegraph.pl (Debian's copy, from
libdevel-nytprof-perl) draws it.

Which functions show in a stack is the build's choice (inlining, names across
versions): eventfd_frames() reads them from the running kernel's /proc/kallsyms."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import KERNEL_TESTS, need_tool, run_ftslab
from kernel_oracle import eventfd_caller, kept_function

N = 300
EVENTFDS = [sys.executable, "-c", f"import os\nfds = [os.eventfd(0) for _ in range({N})]"]
FLAMEGRAPH = Path("/usr/share/perl5/Devel/NYTProf/flamegraph.pl")


def eventfd_frames() -> tuple[str, str]:
    """(allocator, caller): the innermost two frames, below the tracing machinery, of
    the kmalloc of an eventfd(2)'s struct eventfd_ctx.  do_eventfd() kmallocs that
    constant size, which goes to the kmalloc family's entry for one cache (named by
    kernel version in ftslab's catalogue); do_eventfd itself may be inlined into the
    syscall.  The caller is also the function of the kmalloc event's call_site."""
    from ftslab.events import FAMILY
    cache_entry = next(m for m in FAMILY if m.family == "kmalloc_cache").candidates
    return kept_function(cache_entry), eventfd_caller()


def _flamegraph() -> Path:
    need_tool("perl")
    if not FLAMEGRAPH.exists():
        if KERNEL_TESTS:
            pytest.fail(f"FTSLAB_KERNEL_TESTS=1 but {FLAMEGRAPH} is missing "
                        "(apt-get install libdevel-nytprof-perl)")
        pytest.skip("flamegraph.pl not installed")
    return FLAMEGRAPH


def record_eventfd_stacks(tmp_path):
    """`record --stacks` of the eventfd workload: (the file, its Dataset), every
    allocation with its stack (nothing lost, no stack unattributed)."""
    out = tmp_path / "stacks.dat"
    cp = run_ftslab("record", "--stacks", "-o", out, "--", *EVENTFDS, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab
    ds = ftslab.load(out)
    assert ds.stacks and ds.meta.extra.get("stacks_unattributed", 0) == 0
    for key in (("kmem", "kmalloc"), ("kmem", "kmem_cache_alloc"), ("kmem", "mm_page_alloc")):
        assert (ds.columns[key].stack >= 0).all(), key   # no loss: every one has its stack
    return out, ds


def folded_with_exact_counts(out, leaf: str, site: str) -> tuple[str, dict[str, int]]:
    """`report --format folded --weight count`: (its text, weight per stack), checked:
    one line per distinct stack, the workload's N under its own two frames, the weights
    adding up to the slab allocations the plain report counts; and `--by stack` shows
    the workload's stack once, with its N."""
    folded = run_ftslab("report", out, "--format", "folded", "--weight", "count",
                        check=True).stdout
    lines = [l.rsplit(" ", 1) for l in folded.splitlines()]
    weights = {stack: int(w) for stack, w in lines}
    assert len(weights) == len(lines)                   # one line per distinct stack
    ctx = [w for s, w in weights.items() if s.endswith(f";{site};{leaf}")]
    assert ctx == [N], [s for s in weights if "eventfd" in s]
    plain = run_ftslab("report", out, "--format", "json", "--by", "event", check=True).stdout
    slab = sum(r["count"] for r in json.loads(plain)["rows"]
               if r["event"] in ("kmem:kmalloc", "kmem:kmem_cache_alloc"))
    assert sum(weights.values()) == slab
    # --by stack shows the same stacks, innermost first
    js = json.loads(run_ftslab("report", out, "--format", "json", "--by", "stack", "--top",
                               "1000", check=True).stdout)
    row = [r for r in js["rows"] if r["stack"].startswith(f"{leaf} <- {site} <- ")]
    assert len(row) == 1 and row[0]["count"] == N, [r["stack"] for r in js["rows"]][:20]
    return folded, weights


def test_stacks_fold_with_exact_counts_and_flamegraph_draws_them(kernel, tmp_path):
    leaf, site = eventfd_frames()
    out, _ds = record_eventfd_stacks(tmp_path)
    folded, weights = folded_with_exact_counts(out, leaf, site)
    # a real consumer reads it
    fg = _flamegraph()
    src = tmp_path / "folded.txt"
    src.write_text(folded)
    svg = subprocess.run(["perl", str(fg), "--countname", "allocations", str(src)],
                         capture_output=True, text=True, timeout=120)
    assert svg.returncode == 0, svg.stderr
    assert svg.stdout.startswith("<?xml") and "</svg>" in svg.stdout
    total = sum(w for s, w in weights.items() if f";{site};" in s)
    m = re.search(rf"<title>{re.escape(site)} \(([\d,]+) allocations", svg.stdout)
    assert m and int(m.group(1).replace(",", "")) == total


def test_stacks_dry_run_shows_the_conditional_trigger(kernel, tmp_path):
    cp = run_ftslab("record", "--stacks", "--dry-run", "--min-size", "64", "--", "true",
                    check=True)
    trig = {l.split("/events/")[1].split("/trigger")[0]: l.split("'")[1]
            for l in cp.stdout.splitlines() if "/trigger" in l}
    # the trigger's condition is the event's filter, so that no stack is written for
    # an event the filter then drops; with none, a condition that is always true
    assert trig == {"kmem/kmalloc": "stacktrace if bytes_req >= 64",
                    "kmem/kmem_cache_alloc": "stacktrace if bytes_req >= 64",
                    "kmem/mm_page_alloc": "stacktrace if common_pid >= 0"}, cp.stdout
