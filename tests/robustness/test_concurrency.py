"""Two sessions at once: two `record`s, a `record` and a `stream`, ftslab next to a
`trace-cmd record` on the top-level buffer.  Each gets every event of a known workload
(N opens of /dev/null by a task with a name of its own: N `filp` allocations), neither
removes the other's objects, and the top-level buffer's settings are the same before
and after ftslab's session.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

from robust_util import TRACEFS, figure, instances_of, spawn

from conftest import need_tool
from toplevel import restore_toplevel, toplevel_state, wait_tracing_on

N = 3000
COMM = "ftslabconc"
WORKLOAD = [sys.executable, "-c",
            "import ctypes, os\n"
            f"ctypes.CDLL(None).prctl(15, b'{COMM}', 0, 0, 0)\n"
            f"for i in range({N}): os.close(os.open('/dev/null', os.O_RDONLY))"]


def _wait_tracing(procs):
    for p in procs:
        wait_tracing_on(p)


def _stop(procs) -> list[str]:
    """End the sessions (the workload is over: they have its events) and their stderr."""
    for p in procs:
        p.send_signal(signal.SIGINT)
    return [p.communicate(timeout=120)[1] for p in procs]


def _children_comms(pid: int) -> list[str]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                comm, rest = f.read().split(" (", 1)[1].rsplit(") ", 1)
            if int(rest.split()[1]) == pid:
                out.append(comm)
        except (OSError, ValueError, IndexError):
            pass
    return out


def _filp_in_recording(tmp_path, path) -> int:
    import ftslab
    return sum(1 for e in ftslab.read(path) if e.name == "kmem_cache_alloc"
               and e.comm == COMM and e.fields.get("name") == "filp")


def _record_args(out):
    return ["record", "-o", out, "--comm", COMM, "-e", "kmem:kmem_cache_alloc"]


def test_two_records_at_once(kernel, tmp_path):
    a, _ = spawn(tmp_path, *_record_args(tmp_path / "a.dat"))
    b, _ = spawn(tmp_path, *_record_args(tmp_path / "b.dat"))
    _wait_tracing([a, b])
    subprocess.run(WORKLOAD, check=True)
    # each sees the other's instance and leaves it alone
    assert instances_of(a.pid) and instances_of(b.pid)
    errs = _stop([a, b])
    assert a.returncode == 0 and b.returncode == 0, errs
    for err in errs:
        assert "lost 0" in err and "stale" not in err, err
    got = [_filp_in_recording(tmp_path, tmp_path / f) for f in ("a.dat", "b.dat")]
    assert got == [N, N], got
    figure("concurrency", what="record + record", events=got)


def test_record_and_stream_at_once(kernel, tmp_path):
    a, _ = spawn(tmp_path, *_record_args(tmp_path / "a.dat"))
    with open(tmp_path / "stream.json", "w") as out:
        b, _ = spawn(tmp_path, "stream", "--format", "json", "--comm", COMM, "-e",
                     "kmem:kmem_cache_alloc", stdout=out)
        _wait_tracing([a, b])
        subprocess.run(WORKLOAD, check=True)
        errs = _stop([a, b])
    assert a.returncode == 0 and b.returncode == 0, errs
    streamed = [json.loads(l) for l in (tmp_path / "stream.json").read_text().splitlines()]
    n_stream = sum(1 for o in streamed if o.get("name") == "filp" or
                   o.get("fields", {}).get("name") == "filp")
    assert "lost 0" in errs[1], errs[1]
    got = [_filp_in_recording(tmp_path, tmp_path / "a.dat"), n_stream]
    assert got == [N, N], (got, streamed[:2])
    figure("concurrency", what="record + stream", events=got)


def test_next_to_tracecmd_on_the_top_level_buffer(toplevel_expanded, kernel, tmp_path):
    """trace-cmd records the top-level buffer (it only works as `record -d -k` on this
    kernel, and leaves its settings behind: put back afterwards).  ftslab's session, from
    start to end, changes nothing of the top level, and both see every event."""
    tc = need_tool("trace-cmd")
    before = toplevel_state()
    tc_out = tmp_path / "tc.dat"
    # its command runs until the end of the test (Ctrl-C: SIGINT to its process group)
    tcp = subprocess.Popen([tc, "record", "-d", "-k", "-e", "kmem:kmem_cache_alloc", "-o",
                            str(tc_out), "sleep", "100000"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                           start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # set up: tracing on, its event enabled, and its command started (trace-cmd
        # starts it once the top level is as it wants it)
        while not ((TRACEFS / "tracing_on").read_text().strip() == "1" and
                   "kmem:kmem_cache_alloc" in (TRACEFS / "set_event").read_text() and
                   "sleep" in _children_comms(tcp.pid)):
            assert tcp.poll() is None, tcp.communicate()
            assert time.monotonic() < deadline, "trace-cmd did not start recording"
            time.sleep(0.05)
        during = toplevel_state()  # trace-cmd's settings
        # the whole system (no --comm: trace-cmd names a pid by its last comm, so the
        # comparison is by pid)
        a, _ = spawn(tmp_path, "record", "-o", tmp_path / "a.dat", "-e",
                     "kmem:kmem_cache_alloc")
        _wait_tracing([a])
        assert toplevel_state() == during  # ftslab's setup did not touch the top level
        w = subprocess.Popen(WORKLOAD)
        assert w.wait() == 0
        err = _stop([a])[0]
        assert a.returncode == 0, err
        assert toplevel_state() == during  # nor did its teardown
        assert tcp.poll() is None, "trace-cmd ended early"
        os.killpg(tcp.pid, signal.SIGINT)
        tcp.communicate(timeout=120)
    finally:
        if tcp.poll() is None:
            os.killpg(tcp.pid, signal.SIGKILL)
            tcp.wait()
        restore_toplevel(before)
    rep = subprocess.run([tc, "report", str(tc_out)], capture_output=True, text=True,
                         timeout=300)
    n_tc = sum(1 for l in rep.stdout.splitlines()
               if re.match(rf"\s*\S+-{w.pid}\s", l) and "name=filp" in l)
    import ftslab
    n_ours = sum(1 for e in ftslab.read(tmp_path / "a.dat")
                 if e.pid == w.pid and e.fields.get("name") == "filp")
    got = [n_ours, n_tc]
    assert n_ours == n_tc and n_ours >= N, got
    figure("concurrency", what="record + trace-cmd record (top-level buffer)", events=got)

