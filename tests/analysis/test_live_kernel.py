"""`report --live` on the real kernel: a process that keeps N eventfds open past the end
of the recording, and one that closes them all first.  eventfd(2) kmallocs one
eventfd_ctx from do_eventfd() per call, so the live count at that call site is exact
(the call site's function as this kernel was built: test_kernel_stacks.eventfd_frames)."""
from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

from conftest import run_ftslab
from test_record_stacks import eventfd_frames
from workloads import EVENTFD_HOLDER

N = 300


def _record(tmp_path, mode):
    out = tmp_path / f"{mode}.dat"
    pidfile = tmp_path / f"{mode}.pid"
    try:
        cp = run_ftslab("record", "-o", out, "--", sys.executable, "-c", EVENTFD_HOLDER,
                        str(N), "0", mode, str(pidfile), check=True)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert "lost 0" in cp.stderr, cp.stderr
    return out


def _json(path, *args):
    return json.loads(run_ftslab("report", path, "--format", "json", *args,
                                 check=True).stdout)


def _eventfd_rows(rows):
    site = eventfd_frames()[1]
    return [r for r in rows if str(r["callsite"]).startswith(site + "+")]


@functools.lru_cache(maxsize=1)
def _eventfd_ctx_size() -> int:
    """sizeof(struct eventfd_ctx), the size do_eventfd() asks kmalloc for (kernel BTF)."""
    from ftslab.kernel import btf
    size = btf.parse(Path("/sys/kernel/btf/vmlinux").read_bytes()).struct_size("eventfd_ctx")
    assert size, "no struct eventfd_ctx in the kernel's BTF"
    return size


def test_live_counts_the_eventfds_still_open(kernel, tmp_path):
    out = _record(tmp_path, "keep")
    rep = _json(out, "--live", "--by", "callsite", "--top", "1000")
    rows = _eventfd_rows(rep["rows"])
    assert len(rows) == 1, [r["callsite"] for r in rep["rows"]]
    row = rows[0]
    assert row["live"] == N and row["count"] == N and row["unsure"] == 0
    assert 0 < row["median_age_ns"] <= row["oldest_ns"]
    assert row["growth"][-1] == row["live_bytes"]
    assert rep["tables"]["live_by_callsite"]["columns"][0]["name"] == "callsite"
    # the plain report agrees: N allocations of the kernel's size, N live, no frees, and
    # every byte of them is live
    plain = _eventfd_rows(_json(out, "--by", "callsite", "--top", "1000")["rows"])
    assert plain[0]["count"] == N and plain[0]["live"] == N and plain[0]["frees"] == 0
    assert plain[0]["bytes_req"] == N * _eventfd_ctx_size()
    assert row["live_bytes"] == plain[0]["bytes_alloc"] >= plain[0]["bytes_req"]
    assert row["live_bytes"] % N == 0
    # the default --live report, as people read it
    text = run_ftslab("report", out, "--live", check=True).stdout
    assert "Live (not freed) slab allocations by call site" in text
    assert any(line.startswith(rows[0]["callsite"]) and f" {N} " in line
               for line in text.splitlines()), text


def test_live_is_empty_when_everything_was_freed(kernel, tmp_path):
    out = _record(tmp_path, "close")
    assert _eventfd_rows(_json(out, "--live", "--by", "callsite", "--top", "1000")["rows"]) == []
    plain = _eventfd_rows(_json(out, "--by", "callsite", "--top", "1000")["rows"])
    assert plain[0]["count"] == N and plain[0]["frees"] == N and plain[0]["live"] == 0


GAP_S = 1.5
TWO_BATCHES = [sys.executable, "-c",
               "import os, time\n"
               f"a = [os.eventfd(0) for _ in range({N})]\n"
               f"time.sleep({GAP_S})\n"
               f"b = [os.eventfd(0) for _ in range({N})]\n"]


def test_interval_series_puts_each_batch_in_its_intervals(kernel, tmp_path):
    """N eventfds at once, GAP_S of sleep, N more, all closed at exit.  Per 100 ms
    interval at their call site: the first N allocations, then at least GAP_S worth of
    intervals with none, holding the first batch's bytes, then the second N; every one
    freed by the end.  (Where a batch falls in time is the machine's business: the
    sleep only guarantees the gap.)"""
    step_s = 0.1
    out = tmp_path / "batches.dat"
    cp = run_ftslab("record", "-o", out, "--", *TWO_BATCHES, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    rep = _json(out, "--interval", "100ms", "--by", "callsite", "--top", "1000")
    rows = _eventfd_rows(rep["rows"])
    assert len({r["callsite"] for r in rows}) == 1, rows[:3]
    # every interval of the recording has a row, in time order
    assert [r["t_s"] for r in rows] == [round(i * step_s, 9) for i in range(len(rows))]
    busy = [i for i, r in enumerate(rows) if r["count"]]
    assert len(busy) >= 2, rows
    # the two batches: a run of intervals for each, the sleep between them
    cut = max(range(1, len(busy)), key=lambda k: busy[k] - busy[k - 1])
    first, second = busy[:cut], busy[cut:]
    assert sum(rows[i]["count"] for i in first) == N, [rows[i] for i in busy]
    assert sum(rows[i]["count"] for i in second) == N, [rows[i] for i in busy]
    gap = rows[first[-1] + 1:second[0]]
    # GAP_S / step_s intervals apart, less one where the boundaries fall, less one for
    # the sleep's clock (CLOCK_MONOTONIC) running a little apart from the trace clock
    assert len(gap) >= round(GAP_S / step_s) - 2, len(gap)
    held = sum(rows[i]["bytes_alloc"] for i in first)
    assert held > 0 and all(r["outstanding"] == held and r["frees"] == 0 for r in gap)
    assert sum(r["frees"] for r in rows) == 2 * N and rows[-1]["outstanding"] == 0
