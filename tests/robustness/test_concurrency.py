"""Two sessions at once: two `record`s, a `record` and a `stream`, ftslab next to a
`trace-cmd record` on the top-level buffer.  Each gets every event of a known workload
(N opens of /dev/null by a task with a name of its own: N `filp` allocations), neither
removes the other's objects, and the top-level buffer's settings are the same before
and after ftslab's session.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

from robust_util import TRACEFS, figure, instances_of, spawn

from conftest import need_tool
from toplevel import restore_toplevel, toplevel_state

N = 3000
COMM = "ftslabconc"
WORKLOAD = [sys.executable, "-c",
            "import ctypes, os\n"
            f"ctypes.CDLL(None).prctl(15, b'{COMM}', 0, 0, 0)\n"
            f"for i in range({N}): os.close(os.open('/dev/null', os.O_RDONLY))"]


def _wait_instances(procs, timeout=30):
    deadline = time.monotonic() + timeout
    while not all(instances_of(p.pid) for p in procs):
        assert time.monotonic() < deadline, "sessions did not start"
        for p in procs:
            assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    time.sleep(0.3)  # tracing_on comes right after the instance's setup


def _filp_in_recording(tmp_path, path) -> int:
    import ftslab
    return sum(1 for e in ftslab.read(path) if e.name == "kmem_cache_alloc"
               and e.comm == COMM and e.fields.get("name") == "filp")


def _record_args(out):
    return ["record", "-o", out, "--comm", COMM, "-e", "kmem:kmem_cache_alloc", "-d", "6"]


def test_two_records_at_once(kernel, tmp_path):
    a, _ = spawn(tmp_path, *_record_args(tmp_path / "a.dat"))
    b, _ = spawn(tmp_path, *_record_args(tmp_path / "b.dat"))
    _wait_instances([a, b])
    subprocess.run(WORKLOAD, check=True)
    # each sees the other's instance and leaves it alone
    assert instances_of(a.pid) and instances_of(b.pid)
    errs = [p.communicate(timeout=60)[1] for p in (a, b)]
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
                     "kmem:kmem_cache_alloc", "-d", "6", stdout=out)
        _wait_instances([a, b])
        subprocess.run(WORKLOAD, check=True)
        errs = [p.communicate(timeout=60)[1] for p in (a, b)]
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
    tcp = subprocess.Popen([tc, "record", "-d", "-k", "-e", "kmem:kmem_cache_alloc", "-o",
                            str(tc_out), "sleep", "10"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not ((TRACEFS / "tracing_on").read_text().strip() == "1" and
                   "kmem:kmem_cache_alloc" in (TRACEFS / "set_event").read_text()):
            assert time.monotonic() < deadline and tcp.poll() is None, tcp.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        during = toplevel_state()  # trace-cmd's settings
        # the whole system (no --comm: trace-cmd names a pid by its last comm, so the
        # comparison is by pid)
        a, _ = spawn(tmp_path, "record", "-o", tmp_path / "a.dat", "-e",
                     "kmem:kmem_cache_alloc", "-d", "6")
        _wait_instances([a])
        assert toplevel_state() == during  # ftslab's setup did not touch the top level
        w = subprocess.Popen(WORKLOAD)
        assert w.wait() == 0
        _o, err = a.communicate(timeout=60)
        assert a.returncode == 0, err
        assert toplevel_state() == during  # nor did its teardown
        assert tcp.poll() is None, "trace-cmd ended early"
        tcp.send_signal(signal.SIGINT)
        tcp.communicate(timeout=120)
    finally:
        if tcp.poll() is None:
            tcp.kill()
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

