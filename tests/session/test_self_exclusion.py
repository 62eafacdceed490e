"""A whole-system live session does not count ftslab's own allocations, from any of its
threads (real kernel).

``set_event_notrace_pid`` matches the thread that is current, not the process: a thread
ftslab starts after setup (top's and serve's decoding thread, serve's HTTP server) was
recorded until the session also set ``options/event-fork``.  Here a thread of this
process, started after setup and named by prctl, makes a few hundred allocations; a
process that is not ftslab's (started before the session, named too) makes as many.
The second must be counted, the first not.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

from ftslab.analysis.counters import ServeState
from ftslab.kernel.tracefs import Tracefs
from ftslab.session.options import SessionOptions
from ftslab.session import signals
from ftslab.session.serve import serve

ALLOCS = 300
PIPES = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.02)
for _ in range(int(sys.argv[3])):
    r, w = os.pipe(); os.close(r); os.close(w)
open(sys.argv[2] + ".done", "w").close()
time.sleep(60)
"""


def _name_thread(name: str) -> None:
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)


def test_own_threads_are_not_counted_other_processes_are(kernel, tmp_path):
    tag = f"{os.getpid() % 100000}"
    own, other = f"fself{tag}", f"fctl{tag}"
    go = tmp_path / "go"
    ctl = subprocess.Popen([sys.executable, "-c", PIPES, other, str(go), str(ALLOCS)])
    done = threading.Event()
    release = threading.Event()
    started: list[threading.Thread] = []

    def work():
        _name_thread(own)
        for _ in range(ALLOCS):
            r, w = os.pipe()
            os.close(r)
            os.close(w)
        go.touch()
        done.set()
        release.wait(30)   # alive until the session ends: /proc/<tid>/comm names it

    after_done = []

    def publish(snap):
        if not started:  # the first interval: setup is long done
            t = threading.Thread(target=work, daemon=True)
            started.append(t)
            t.start()
        elif os.path.exists(f"{go}.done"):
            after_done.append(snap)
            if len(after_done) == 2:  # two intervals read after the control's last pipe
                signals.request_stop(signal.SIGINT)

    state = ServeState(limit=10_000)
    snaps = []
    try:
        def pub(s):
            snaps.append(s)
            publish(s)
        opts = SessionOptions(duration=None, buffer_kb=8192, status=False,
                              system_frees=True)
        opts.duration = 120.0  # a guard: the session stops once both have allocated
        res = serve(Tracefs(str(kernel)), opts, lambda m: None, 0.5, state, pub, "events")
        assert done.is_set(), "the thread of this process never ran"
        assert len(after_done) >= 2, "the control process never finished"
    finally:
        release.set()
        ctl.kill()
        ctl.wait()
        # the stop this test asked for is process-wide: the next session must not see it
        signals.stop_requested.clear()
    assert res.lost == 0 and res.dropped == 0
    comms = {lab: n for lab, n, _b in state.families["comm"].rows()}
    # the control: each pipe() is at least one slab allocation in that process
    assert comms.get(other, 0) >= ALLOCS, sorted(comms.items(), key=lambda x: -x[1])[:15]
    assert own not in comms, comms.get(own)
