"""`ftslab serve` on a kernel with hist triggers (run inside the guest).

Both paths, each against a workload whose count is known: N eventfd(2) calls, each one
kmalloc of a struct eventfd_ctx from one call site (in do_eventfd, or the syscall it is
inlined into on a build that inlines it: read from /proc/kallsyms; one per call, nothing
else in the workload calls it; the guest runs nothing else that makes eventfds).

* ``--no-live``: the allocations are counted by the kernel's hist triggers (no event
  reaches user space): the call site's counter grows by exactly N.
* live on (the events path): the N objects held are exactly the call site's live
  objects, and they leave it when the workload closes them.

Each run ends with SIGTERM and must leave nothing in tracefs, triggers included (the
conftest checks instances and probes; here the triggers of the kmem events).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .vmfacts import TRACEFS, eventfd_caller

N = 400
HOLD = r"""
import os, sys, time
fds = [os.eventfd(0) for _ in range(int(sys.argv[1]))]
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
for fd in fds:
    os.close(fd)
open(sys.argv[2] + ".closed", "w").close()
time.sleep(60)
"""


def _start(ftslab_spawn, *args):
    p = ftslab_spawn("serve", "--listen", "127.0.0.1:0", "-n", "1", *args,
                     stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/metrics", line)
    if not m:
        p.kill()
        pytest.fail(f"serve did not start: {line}{p.stderr.read()}")
    return p, int(m.group(1)), line


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _eventfd(samples: dict, name: str) -> float:
    caller = eventfd_caller() + "+"
    got = [v for (n, labels), v in samples.items() if n == name and
           any(k == "call_site" and v_.startswith(caller) for k, v_ in labels)]
    assert len(got) <= 1, got
    return got[0] if got else 0.0


def _wait(port: int, cond, what: str, timeout: float = 240):
    end = time.monotonic() + timeout
    while True:
        s = _scrape(port)
        if cond(s):
            return s
        if time.monotonic() > end:
            pytest.fail(f"{what}: not seen in {timeout:.0f} s")
        time.sleep(0.5)


def _stop(p) -> str:
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return err


def _kmem_triggers() -> dict[str, str]:
    out = {}
    for ev in os.listdir(TRACEFS / "events/kmem"):
        f = TRACEFS / "events/kmem" / ev / "trigger"
        if f.exists():
            text = "\n".join(x for x in f.read_text().splitlines() if not x.startswith("#"))
            if text.strip():
                out[ev] = text
    return out


def _updated(samples: dict) -> float:
    return samples.get(("ftslab_last_update_timestamp_seconds", ()), 0.0)


def test_serve_hist_path_counts_exactly_what_the_kernel_did(ftslab_spawn, tmp_path):
    assert (TRACEFS / "events/kmem/kmalloc/hist").exists(), \
        "this guest kernel has no hist triggers (CONFIG_HIST_TRIGGERS)"
    p, port, line = _start(ftslab_spawn, "--no-live")
    try:
        assert "allocations from hist" in line, line
        s0 = _wait(port, lambda s: _updated(s) > 0, "a first interval")
        assert s0[("ftslab_source_info", (("figure", "allocations"), ("source", "hist")))] == 1
        assert s0[("ftslab_source_info", (("figure", "live"), ("source", "off")))] == 1
        base = _eventfd(s0, "ftslab_callsite_allocations_total")
        # the kernel really holds the triggers, in ftslab's own instance only
        inst = [d for d in os.listdir(TRACEFS / "instances") if d.startswith("ftslab_")]
        assert inst
        trig = (TRACEFS / "instances" / inst[0] / "events/kmem/kmalloc/trigger").read_text()
        assert "hist:" in trig
        ready = tmp_path / "ready"
        hold = subprocess.Popen([sys.executable, "-c", HOLD, str(N), str(ready),
                                 str(tmp_path / "go")])
        try:
            while not ready.exists():
                time.sleep(0.05)
            t_ready = time.time()
            s1 = _wait(port, lambda s: _updated(s) > t_ready + 1.5,
                       "two intervals after the workload")
        finally:
            (tmp_path / "go").touch()
            hold.kill()
            hold.wait()
        assert _eventfd(s1, "ftslab_callsite_allocations_total") - base == N
        assert _eventfd(s1, "ftslab_callsite_allocated_bytes_total") > 0
        assert s1[("ftslab_events_total", ())] > 0
    finally:
        err = _stop(p)
    assert "Traceback" not in err
    assert _kmem_triggers() == {}, "a hist trigger was left behind"


def test_serve_events_path_live_objects_in_the_guest(ftslab_spawn, tmp_path):
    p, port, line = _start(ftslab_spawn)
    try:
        assert "allocations from events" in line and "live objects on" in line, line
        _wait(port, lambda s: _updated(s) > 0, "a first interval")
        ready = tmp_path / "ready"
        hold = subprocess.Popen([sys.executable, "-c", HOLD, str(N), str(ready),
                                 str(tmp_path / "go")])
        try:
            while not ready.exists():
                time.sleep(0.05)
            t_ready = time.time()
            s1 = _wait(port, lambda s: _updated(s) > t_ready + 1.5, "the held eventfds")
            assert _eventfd(s1, "ftslab_callsite_live_objects") == N
            (tmp_path / "go").touch()
            closed = tmp_path / "ready.closed"
            while not closed.exists():
                time.sleep(0.05)
            t_closed = time.time()
            s2 = _wait(port, lambda s: _updated(s) > t_closed + 1.5, "the closed eventfds")
            assert _eventfd(s2, "ftslab_callsite_live_objects") == 0
        finally:
            (tmp_path / "go").touch()
            hold.kill()
            hold.wait()
        assert s2[("ftslab_lost_events_total", ())] == 0
    finally:
        err = _stop(p)
    assert "Traceback" not in err
