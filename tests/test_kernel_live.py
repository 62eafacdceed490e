"""`report --live` on the real kernel: a process that keeps N eventfds open past the end
of the recording, and one that closes them all first.  eventfd(2) kmallocs one
eventfd_ctx from do_eventfd() per call, so the live count at that call site is exact."""
from __future__ import annotations

import json
import os
import signal
import sys

from conftest import run_ftslab

N = 300
# fork: the child makes the eventfds and outlives the recording (the COMMAND, the parent,
# exits as soon as the child says it is done, which ends the recording)
LEAKER = r"""
import os, sys, time
n, close, pidfile = int(sys.argv[1]), sys.argv[2] == "close", sys.argv[3]
r, w = os.pipe()
if os.fork() == 0:
    os.close(r)
    null = os.open(os.devnull, os.O_RDWR)  # let go of ftslab's pipes: its caller waits
    for fd in (0, 1, 2):                   # for them to close
        os.dup2(null, fd)
    fds = [os.eventfd(0) for _ in range(n)]
    if close:
        for fd in fds:
            os.close(fd)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    os.write(w, b"x")
    time.sleep(120)
    os._exit(0)
os.close(w)
os.read(r, 1)
"""


def _record(tmp_path, mode):
    out = tmp_path / f"{mode}.dat"
    pidfile = tmp_path / f"{mode}.pid"
    try:
        cp = run_ftslab("record", "-o", out, "--", sys.executable, "-c", LEAKER, str(N), mode,
                        str(pidfile), check=True)
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert "lost 0" in cp.stderr, cp.stderr
    return out


def _json(path, *args):
    return json.loads(run_ftslab("report", path, "--format", "json", *args,
                                 check=True).stdout)


def _eventfd_rows(rows):
    return [r for r in rows if str(r["callsite"]).startswith("do_eventfd+")]


def test_live_counts_the_eventfds_still_open(kernel, tmp_path):
    out = _record(tmp_path, "keep")
    rep = _json(out, "--live", "--by", "callsite", "--top", "1000")
    rows = _eventfd_rows(rep["rows"])
    assert len(rows) == 1, [r["callsite"] for r in rep["rows"]]
    row = rows[0]
    assert row["live"] == N and row["count"] == N and row["unsure"] == 0
    assert row["live_bytes"] >= N * 32 and row["live_bytes"] % N == 0
    assert 0 < row["median_age_ns"] <= row["oldest_ns"]
    assert row["growth"][-1] == row["live_bytes"]
    assert rep["tables"]["live_by_callsite"]["columns"][0]["name"] == "callsite"
    # the plain report agrees: N allocations, N live, no frees
    plain = _eventfd_rows(_json(out, "--by", "callsite", "--top", "1000")["rows"])
    assert plain[0]["count"] == N and plain[0]["live"] == N and plain[0]["frees"] == 0
    # the default --live report, as people read it
    text = run_ftslab("report", out, "--live", check=True).stdout
    assert "Live (not freed) slab allocations by call site" in text
    assert any(line.startswith("do_eventfd+") and f" {N} " in line
               for line in text.splitlines()), text


def test_live_is_empty_when_everything_was_freed(kernel, tmp_path):
    out = _record(tmp_path, "close")
    assert _eventfd_rows(_json(out, "--live", "--by", "callsite", "--top", "1000")["rows"]) == []
    plain = _eventfd_rows(_json(out, "--by", "callsite", "--top", "1000")["rows"])
    assert plain[0]["count"] == N and plain[0]["frees"] == N and plain[0]["live"] == 0


TWO_BATCHES = [sys.executable, "-c",
               "import os, time\n"
               f"a = [os.eventfd(0) for _ in range({N})]\n"
               "time.sleep(1.5)\n"
               f"b = [os.eventfd(0) for _ in range({N})]\n"]


def test_interval_series_puts_each_batch_in_its_second(kernel, tmp_path):
    """N eventfds at once, 1.5 s of sleep, N more, all closed at exit: per 1 s interval
    from the first event, N allocations at do_eventfd in the first and in the second,
    none in between, and nothing outstanding at the end."""
    out = tmp_path / "batches.dat"
    cp = run_ftslab("record", "-o", out, "--", *TWO_BATCHES, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    rep = _json(out, "--interval", "1s", "--by", "callsite", "--top", "1000")
    rows = _eventfd_rows(rep["rows"])
    assert [r["t_s"] for r in rows] == [0.0, 1.0], rows
    assert [r["count"] for r in rows] == [N, N]
    assert rows[0]["outstanding"] == rows[0]["bytes_alloc"] > 0   # held through the sleep
    assert rows[1]["frees"] == 2 * N and rows[1]["outstanding"] == 0
