"""End-to-end tests on the real kernel: record, report, stream, cleanup, interop.

Each runs ftslab as a separate process, as a user would, and checks what the kernel
produced.  The ``kernel`` fixture fails (under FTSLAB_KERNEL_TESTS=1) or skips without
root/tracefs, and asserts no ftslab instance is left afterwards.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (as_nobody, ftslab_leftovers, need_tool, popen_ftslab, run_ftslab,
                      run_tracecmd)
from toplevel import wait_tracing_on

N_FILES = 2000
OPEN_FILES = [sys.executable, "-c",
              f"import os\nfor i in range({N_FILES}): os.close(os.open('/dev/null', os.O_RDONLY))"]


def _report_json(path, *args):
    cp = run_ftslab("report", path, "--format", "json", *args, check=True)
    return json.loads(cp.stdout)


def test_record_command_finds_its_filp_allocations(kernel, tmp_path):
    out = tmp_path / "run.dat"
    cp = run_ftslab("record", "-o", out, "--", *OPEN_FILES, check=True)
    assert "recorded" in cp.stderr and "lost 0" in cp.stderr, cp.stderr
    rep = _report_json(out, "--by", "cache", "--top", "1000")
    rows = {r["cache"]: r for r in rep["rows"]}
    assert "filp" in rows, sorted(rows)[:20]
    assert rows["filp"]["count"] >= N_FILES
    assert rep["lost"] == 0
    # only the command (and its children) were recorded: every pid's comm is python's
    rep = _report_json(out, "--by", "comm", "--top", "1000")
    comms = {r["comm"] for r in rep["rows"]}
    assert comms <= {"python3", os.path.basename(sys.executable)[:15], "<...>"}, comms


def test_text_report_shows_tables(kernel, tmp_path):
    out = tmp_path / "run.dat"
    run_ftslab("record", "-o", out, "--", *OPEN_FILES, check=True)
    cp = run_ftslab("report", out, check=True)
    assert "filp" in cp.stdout
    assert not cp.stdout.startswith("WARNING")
    cp = run_ftslab("report", out, "--format", "csv", "--by", "callsite", check=True)
    header = cp.stdout.splitlines()[0].split(",")
    assert "callsite" in header and "count" in header and "bytes_alloc" in header


#: pipe(2)'s path down to alloc_pipe_info, which kmallocs the pipe: the compiler may
#: inline any of these into the next, so a call site is in whichever it kept
PIPE_PATH = ("alloc_pipe_info", "get_pipe_inode", "create_pipe_files", "__do_pipe_flags",
             "do_pipe2", "__do_sys_pipe2", "__se_sys_pipe2", "__x64_sys_pipe2")


def _kernel_pipe_sizes() -> tuple[int, int]:
    """(bytes of struct pipe_inode_info, bytes of a new pipe's pipe_buffer array) on the
    running kernel: alloc_pipe_info kzallocs the one and kcallocs one pipe_buffer per
    page of the pipe's capacity.  The struct sizes come from the kernel's BTF, the
    capacity from a fresh pipe's F_GETPIPE_SZ (max_usage pages, the count it made)."""
    from ftslab.kernel import btf
    types = btf.parse(Path("/sys/kernel/btf/vmlinux").read_bytes())
    info, buf = types.struct_size("pipe_inode_info"), types.struct_size("pipe_buffer")
    assert info and buf, (info, buf)
    r, w = os.pipe()
    try:
        pages = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) // os.sysconf("SC_PAGE_SIZE")
    finally:
        os.close(r)
        os.close(w)
    return info, pages * buf


def _pipe_kmallocs(path) -> list:
    """The recording's kmalloc events made on pipe(2)'s path."""
    import ftslab
    sym = ftslab.load(path).symbolize
    return [ev for ev in ftslab.read(path) if ev.name == "kmalloc"
            and (sym(ev.fields["call_site"]) or "").split("+")[0] in PIPE_PATH]


def test_pipe_kmalloc_sizes_are_the_kernels(kernel, tmp_path):
    """Each pipe() kmallocs its struct pipe_inode_info and its pipe_buffer array: the
    sizes recorded are exactly the running kernel's, one of each per pipe."""
    info, bufs = _kernel_pipe_sizes()
    out = tmp_path / "pipe.dat"
    prog = "import os\nfor i in range(500):\n    r, w = os.pipe(); os.close(r); os.close(w)"
    cp = run_ftslab("record", "-o", out, "-e", "kmem:kmalloc", "--", sys.executable, "-c",
                    prog, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    rep = _report_json(out, "--by", "callsite", "--top", "1000")
    pipe_rows = [r for r in rep["rows"] if r["callsite"].split("+")[0] in PIPE_PATH]
    assert sum(r["count"] for r in pipe_rows) >= 2 * 500, [r["callsite"] for r in rep["rows"]]
    from collections import Counter
    sizes = Counter(ev.fields["bytes_req"] for ev in _pipe_kmallocs(out))
    assert set(sizes) == {info, bufs}, (sizes, info, bufs)
    assert sizes[info] == sizes[bufs] >= 500, sizes


def _wait_recording(p: subprocess.Popen) -> str:
    """Wait until `record` (stderr a text pipe) is in its capture loop, and return what
    it wrote to stderr so far.  Tracing is on a little earlier (wait_tracing_on), but a
    stop signal before the loop, e.g. while the COMMAND is being exec'ed, ends the session
    as stopped before it started.  The loop's first status line is printed at once."""
    wait_tracing_on(p)
    seen = ""
    while True:
        line = p.stderr.readline()
        assert line, seen + p.communicate()[1]
        seen += line
        if line.startswith("ftslab: recording "):
            return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_mid_record_keeps_data_and_cleans_up(kernel, tmp_path, sig):
    out = tmp_path / "sig.dat"
    p = popen_ftslab("record", "-o", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     text=True)
    _wait_recording(p)
    p.send_signal(sig)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert f"stopped by {sig.name}" in err, err
    assert not ftslab_leftovers()
    rep = _report_json(out)
    assert rep["events"] > 0


def test_tracecmd_reads_ftslab_recording(kernel, tmp_path):
    tc = need_tool("trace-cmd")
    out = tmp_path / "run.dat"
    run_ftslab("record", "-o", out, "-e", "kmem:kmalloc", "-e", "kmem:kmem_cache_alloc", "--",
               *OPEN_FILES, check=True)
    cp = subprocess.run([tc, "report", str(out)], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert "unknown option" not in cp.stderr and "ailed" not in cp.stderr, cp.stderr
    lines = [l for l in cp.stdout.splitlines()
             if " kmalloc: " in l or " kmem_cache_alloc: " in l]
    rep = _report_json(out, "--by", "event")
    assert len(lines) == rep["events"]
    assert any("name=filp" in l for l in lines)


def test_ftslab_reads_tracecmd_recording(toplevel_expanded, kernel, tmp_path):
    tc = need_tool("trace-cmd")
    out = tmp_path / "tc.dat"
    cp = run_tracecmd([tc, "record", "-d", "-k", "-e", "kmem:kmalloc", "-e",
                       "kmem:kmem_cache_alloc", "-o", str(out), "--", *OPEN_FILES])
    assert cp.returncode == 0, cp.stderr
    tc_rep = subprocess.run([tc, "report", str(out)], capture_output=True, text=True,
                            timeout=120)
    n_tc = sum(1 for l in tc_rep.stdout.splitlines()
               if " kmalloc: " in l or " kmem_cache_alloc: " in l)
    rep = _report_json(out, "--by", "cache", "--top", "1000")
    assert rep["events"] == n_tc
    filp = [r for r in rep["rows"] if r["cache"] == "filp"]
    assert filp and filp[0]["count"] >= N_FILES
    # per-cache counts and bytes equal what trace-cmd's own decoder printed
    from collections import Counter
    tc_count, tc_bytes = Counter(), Counter()
    for line in tc_rep.stdout.splitlines():
        m = re.search(r" kmem_cache_alloc: .*name=(\S+) bytes_req=(\d+) bytes_alloc=(\d+)", line)
        if m:
            tc_count[m.group(1)] += 1
            tc_bytes[m.group(1)] += int(m.group(3))
    ours = _report_json(out, "--by", "cache", "--top", "100000", "--sort", "count")
    got_count = {r["cache"]: r["count"] + r["failed"] for r in ours["rows"]
                 if not r["cache"].startswith(("kmalloc-", "(large"))}
    got_bytes = {r["cache"]: r["bytes_alloc"] for r in ours["rows"]
                 if not r["cache"].startswith(("kmalloc-", "(large"))}
    assert got_count == dict(tc_count)
    assert got_bytes == dict(tc_bytes)


def test_stream_json_into_head_ends_cleanly(kernel):
    p = popen_ftslab("stream", "--format", "json", "-d", "30",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = subprocess.Popen(["head", "-n", "5"], stdin=p.stdout, stdout=subprocess.PIPE,
                            text=True)
    p.stdout.close()
    # make some allocations happen
    for _ in range(200):
        os.close(os.open("/dev/null", os.O_RDONLY))
    got, _ = head.communicate(timeout=60)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 0, err
    lines = got.splitlines()
    assert len(lines) == 5
    for line in lines:
        obj = json.loads(line)
        assert {"ts", "cpu", "pid", "comm", "event"} <= set(obj)
    assert "Traceback" not in err
    assert not ftslab_leftovers()


def test_stream_seed_format_for_a_command(kernel):
    cp = run_ftslab("stream", "--format", "seed", "-e", "kmem:kmem_cache_alloc", "--",
                    *OPEN_FILES, check=True)
    lines = cp.stdout.splitlines()
    filp = [l for l in lines if l.endswith("in cache 'filp'")]
    assert len(filp) >= N_FILES, lines[:5]
    assert filp[0].startswith("[kmem_cache_alloc]: Process '")
    assert " allocated " in filp[0] and " bytes in cache " in filp[0]


def test_unknown_event_is_one_clear_line(kernel):
    cp = run_ftslab("record", "-e", "kmem:no_such_event", "-d", "1")
    assert cp.returncode == 2
    assert cp.stderr.count("\n") == 1 and "no such event kmem:no_such_event" in cp.stderr
    assert "Traceback" not in cp.stderr


def test_bad_filter_refused_before_the_kernel(kernel):
    cp = run_ftslab("record", "--filter", 'bytes_req >= 1" || 1', "-d", "1")
    assert cp.returncode == 2 and "invalid filter" in cp.stderr
    cp = run_ftslab("record", "--comm", 'a"b', "-d", "1")
    assert cp.returncode == 2 and "invalid --comm" in cp.stderr


def test_kernel_refusal_mid_setup_is_explained_and_undone(kernel, tmp_path):
    """`name` is a string field of kmem_cache_alloc: the kernel refuses `name > 5` after
    the instance, buffer size and earlier filters were set up.  Everything is undone."""
    out = tmp_path / "x.dat"
    cp = run_ftslab("record", "--filter", "name > 5", "-d", "1", "-o", out)
    assert cp.returncode == 5, cp.stderr
    err = cp.stderr.strip().splitlines()[-1]
    assert "kernel refused writing 'name > 5'" in err and "kmem_cache_alloc/filter" in err
    assert "error_log: event filter parse error: error: Expecting string field" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert not ftslab_leftovers()


def test_filter_on_no_recorded_event_is_refused_before_the_kernel(kernel):
    cp = run_ftslab("record", "--filter", "no_such_field == 1", "-d", "1")
    assert cp.returncode == 2 and "names a field none of the recorded events has" in cp.stderr


def test_kernel_side_comm_and_size_filters(kernel, tmp_path):
    """A pipe kmallocs two sizes (see _kernel_pipe_sizes): --min-size the larger keeps
    every allocation of that size and drops every one of the smaller."""
    small, large = sorted(_kernel_pipe_sizes())
    assert small < large, "this kernel's pipe allocations cannot tell a size filter"
    out = tmp_path / "f.dat"
    prog = ("import ctypes, os\nctypes.CDLL(None).prctl(15, b'ftslabfilt', 0, 0, 0)\n"
            "for i in range(300):\n r, w = os.pipe(); os.close(r); os.close(w)")
    p = popen_ftslab("record", "-o", out, "--comm", "ftslabfilt", "--min-size", large, "-e",
                     "kmem:kmalloc", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_tracing_on(p)
    subprocess.run([sys.executable, "-c", prog], check=True)
    p.send_signal(signal.SIGINT)  # the workload is over: every event of it was recorded
    _o, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "lost 0" in err, err
    import ftslab
    evs = list(ftslab.read(out))
    assert {e.comm for e in evs} == {"ftslabfilt"}, err
    assert min(e.fields["bytes_req"] for e in evs) >= large
    assert [e.fields["bytes_req"] for e in _pipe_kmallocs(out)] == [large] * 300


def test_pid_option_records_that_process(kernel, tmp_path):
    out = tmp_path / "p.dat"
    prog = ("import os, sys, time\nsys.stdin.readline()\n"
            "for i in range(500): os.close(os.open('/dev/null', 0))\n")
    target = subprocess.Popen([sys.executable, "-c", prog], stdin=subprocess.PIPE, text=True)
    p = popen_ftslab("record", "-o", out, "-p", target.pid, "-e", "kmem:kmem_cache_alloc",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_tracing_on(p)
    target.communicate("go\n", timeout=60)
    _o, err = p.communicate(timeout=60)  # ends by itself when the process is gone
    assert p.returncode == 0, err
    import ftslab
    evs = list(ftslab.read(out))
    assert {e.pid for e in evs} == {target.pid}
    assert sum(1 for e in evs if e.fields.get("name") == "filp") >= 500


def test_lost_events_are_never_hidden(kernel, tmp_path):
    """A 4 KiB buffer cannot hold a burst: the loss shows in the summary, the recording
    and as the first line of every report."""
    out = tmp_path / "lost.dat"
    cp = run_ftslab("record", "-b", "4", "-o", out, "--", *OPEN_FILES)
    assert cp.returncode == 0, cp.stderr
    m = re.search(r"lost ([\d,]+)", cp.stderr)
    assert m and int(m.group(1).replace(",", "")) > 0, cp.stderr
    assert "WARNING" in cp.stderr
    rep = run_ftslab("report", out, check=True)
    assert rep.stdout.splitlines()[0].startswith("WARNING"), rep.stdout[:300]
    assert "LOST" in rep.stdout.splitlines()[0]
    js = json.loads(run_ftslab("report", out, "--format", "json", check=True).stdout)
    assert js["lost"] > 0
    assert run_ftslab("report", out, "--strict").returncode == 10


def test_stream_text_format(kernel):
    cp = run_ftslab("stream", "--format", "text", "-e", "kmem:kmalloc", "--", *OPEN_FILES,
                    check=True)
    lines = cp.stdout.splitlines()
    assert lines and all("kmem:kmalloc" in l or "kmalloc" in l for l in lines)
    assert "streamed" in cp.stderr


def test_not_root_is_one_clear_line(kernel):
    for argv in (["record", "-d", "1", "-o", "/tmp/ftslab-nobody.dat"],
                 ["stream", "-d", "1"], ["record", "--dry-run"]):
        code, err = as_nobody(argv)
        assert code == 3, (argv, code, err)
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert "root" in err, err
    assert not os.path.exists("/tmp/ftslab-nobody.dat")


def test_truncated_recording_reports_what_is_readable(kernel, tmp_path):
    out = tmp_path / "run.dat"
    run_ftslab("record", "-o", out, "--", *OPEN_FILES, check=True)
    data = out.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    cp = run_ftslab("report", cut, "--format", "json")
    assert cp.returncode == 0, cp.stderr
    rep = json.loads(cp.stdout)
    assert rep["truncated"] is True
    assert "truncated" in cp.stderr.lower()
    cp = run_ftslab("report", cut, "--strict")
    assert cp.returncode == 9 and "Traceback" not in cp.stderr


def test_missing_and_non_recording_inputs(tmp_path):
    cp = run_ftslab("report", tmp_path / "nope.dat")
    assert cp.returncode == 6 and "no such file" in cp.stderr
    assert "record one with: ftslab record" in cp.stderr
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(4096))
    cp = run_ftslab("report", junk)
    assert cp.returncode == 6 and "Traceback" not in cp.stderr, cp.stderr


def test_sigkill_leftover_is_named_and_reset_removes_it(kernel, tmp_path):
    out = tmp_path / "k.dat"
    p = popen_ftslab("record", "-o", out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    name = f"ftslab_{p.pid}"
    wait_tracing_on(p)
    p.kill()
    p.communicate(timeout=30)
    assert name in ftslab_leftovers(), "SIGKILL cannot clean up: the instance must remain"
    spool = tmp_path / f"k.dat.ftslab-spool-{p.pid}"
    assert spool.is_dir()
    try:
        # `report OUT` names the spool the killed session left, whatever it holds
        cp = run_ftslab("report", out)
        assert cp.returncode == 6 and str(spool) in cp.stderr, cp.stderr
        assert "record one with" not in cp.stderr and "Traceback" not in cp.stderr
        # a new session names the leftover on stderr (and leaves it alone)
        cp = run_ftslab("record", "--dry-run")
        assert name in cp.stderr and "ftslab reset" in cp.stderr
        assert name in ftslab_leftovers()
        cp = run_ftslab("reset", check=True)
        assert f"removed {name}" in cp.stderr
        assert name not in ftslab_leftovers()
    finally:
        if name in ftslab_leftovers():
            os.rmdir(f"/sys/kernel/tracing/instances/{name}")


def test_reset_keeps_running_sessions(kernel, tmp_path):
    p = popen_ftslab("record", "-o", tmp_path / "r.dat", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    name = f"ftslab_{p.pid}"
    _wait_recording(p)  # recording (not only set up): a signal now ends it with exit 0
    cp = run_ftslab("reset", check=True)
    assert f"keeping {name}" in cp.stderr and name in ftslab_leftovers()
    p.send_signal(signal.SIGINT)
    _o, err = p.communicate(timeout=60)
    assert p.returncode == 0, err


def test_disk_full_stops_cleanly_and_keeps_the_pages(kernel, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        prog = ("import os\nfor i in range(20000): os.close(os.open('/dev/null', 0))")
        cp = run_ftslab("record", "-o", mnt / "x.dat", "--", sys.executable, "-c", prog)
        assert cp.returncode == 7, cp.stderr
        last = cp.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and "raw pages are kept in" in last
        assert "Traceback" not in cp.stderr
        spools = [p for p in mnt.iterdir() if ".ftslab-spool-" in p.name]
        assert len(spools) == 1
        raws = list(spools[0].glob("cpu*.raw"))
        assert raws and all(p.stat().st_size % 4096 == 0 for p in raws)
        assert sum(p.stat().st_size for p in raws) > 0
        assert not (mnt / "x.dat").exists()
        # the spool describes itself: it reads as a (truncated) recording
        rep = run_ftslab("report", spools[0], "--format", "json", check=True)
        assert json.loads(rep.stdout)["truncated"] is True
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_sigterm_ends_the_recorded_command_too(kernel, tmp_path):
    out = tmp_path / "t.dat"
    p = popen_ftslab("record", "-o", out, "--", "sleep", "30", stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    err = _wait_recording(p)
    p.send_signal(signal.SIGTERM)
    err += p.communicate(timeout=60)[1]
    assert p.returncode == 0, err
    assert "stopped by SIGTERM" in err and "command exited with status -15" in err, err
    assert not ftslab_leftovers()


# -- regressions found in review ------------------------------------------------------

def test_stream_text_stops_on_time_and_on_sigint(kernel, tmp_path):
    """A stream of the whole system has no end of its own: only -d or a signal ends it
    (the timeouts only guard against a hang), and it says so on its last line."""
    ending = re.compile(r"^ftslab: streamed [\d,]+ events in (\d+\.\d)s, lost [\d,]+")
    with open(tmp_path / "o.txt", "w") as out:
        p = popen_ftslab("stream", "-d", "1", stdout=out, stderr=subprocess.PIPE, text=True)
        _o, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    m = ending.match(err.strip().splitlines()[-1])
    assert m and float(m.group(1)) >= 1.0, err   # it ran its second, then ended by itself
    with open(tmp_path / "o2.txt", "w") as out:
        p = popen_ftslab("stream", stdout=out, stderr=subprocess.PIPE, text=True)
        wait_tracing_on(p)
        p.send_signal(signal.SIGINT)
        _o, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert ending.match(err.strip().splitlines()[-1]), err
    assert not ftslab_leftovers()


@pytest.mark.parametrize("flags", [(), ("-a",)], ids=["default", "-a"])
def test_whole_system_recording_leaves_ftslab_itself_out(kernel, tmp_path, flags):
    """Without a COMMAND or -p the whole system is recorded; -a says so again and, as in
    perf and trace-cmd, is accepted (it was refused without a COMMAND)."""
    out = tmp_path / "sys.dat"
    p = popen_ftslab("record", *flags, "-o", out, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
    wait_tracing_on(p)
    for _ in range(200):
        os.close(os.open("/dev/null", os.O_RDONLY))
    p.send_signal(signal.SIGINT)
    _o, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    import ftslab
    from ftslab.events import alloc_source
    evs = list(ftslab.read(out))
    pids = {e.pid for e in evs if alloc_source(e.system, e.name)}
    # (its frees are recorded, in every context: those that interrupt ftslab would be
    # lost otherwise; ftslab's own free nothing the recording holds)
    assert p.pid not in pids and os.getpid() in pids


def _slabinfo_name(cache: str) -> str:
    """The name under which the report's slabinfo table shows the objects of CACHE.
    SLUB merges caches of one object size and compatible flags: the merged cache is a
    directory such as /sys/kernel/slab/:0000096 and each name merged into it a link to
    it; /proc/slabinfo lists it under one of those names (the first created), and the
    report adds the others: ``listed|other|...``."""
    slab = Path("/sys/kernel/slab")
    listed = {line.split()[0] for line in Path("/proc/slabinfo").read_text().splitlines()[2:]}
    if not (slab / cache).is_symlink():
        assert cache in listed, cache
        return cache
    target = (slab / cache).resolve()
    names = sorted(n for n in os.listdir(slab)
                   if (slab / n).is_symlink() and (slab / n).resolve() == target)
    shown = [n for n in names if n in listed]
    assert len(shown) == 1, (cache, target.name, names)
    return "|".join(shown + [n for n in names if n != shown[0]]) if len(names) > 1 else shown[0]


def test_slabinfo_diff_is_not_ftslabs_own_instance(kernel, tmp_path):
    """An instance costs one trace_event_file object per event of the kernel (and a
    tracefs inode per file looked up): the snapshots are taken with the instance up, so
    that does not show as a change.  trace_event_file may be merged into another cache,
    whose name is then the one slabinfo shows: that cache may change a little with the
    rest of the system, never by an instance's worth of events."""
    per_instance = sum(1 for _ in Path("/sys/kernel/tracing/events").glob("*/*/enable"))
    out = tmp_path / "z.dat"
    run_ftslab("record", "-o", out, "-d", "0.5", "--comm", "nosuchcomm", check=True)
    rep = _report_json(out)
    rows = {r["cache"]: r for r in rep["tables"]["slabinfo_diff"]["rows"]}
    assert _slabinfo_name("tracefs_inode_cache") not in rows
    files = rows.get(_slabinfo_name("trace_event_file"))
    assert files is None or abs(files["delta_active"]) < per_instance // 2, (files,
                                                                             per_instance)


def test_exec_failure_leaves_nothing(kernel, tmp_path):
    out = tmp_path / "b.dat"
    cp = run_ftslab("record", "-o", out, "--", "/nonexistent/cmd")
    assert cp.returncode == 2 and "cannot run '/nonexistent/cmd'" in cp.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_into_head_exits_zero(kernel):
    fix = Path(__file__).resolve().parents[1] / "fixtures" / "6.18" / "ftslab-open200.dat"
    for fmt in ("table", "csv", "json"):
        sh = subprocess.run(
            ["bash", "-c", f"set -o pipefail; PYTHONPATH={Path(__file__).resolve().parents[1].parent} "
                           f"{sys.executable} -m ftslab report {fix} --format {fmt} --top 1000 "
                           "| head -1 > /dev/null"], capture_output=True, text=True)
        assert sh.returncode == 0, (fmt, sh.stderr)


def test_bad_numbers_and_pids_are_usage_errors(kernel):
    assert run_ftslab("record", "-p", "99999999", "-d", "1").returncode == 2
    assert run_ftslab("record", "-d", "nan").returncode == 2
    assert run_ftslab("stream", "-p", "99999999", "-d", "1").returncode == 2
    cp = run_ftslab("record", "-a", "-p", str(os.getpid()), "-d", "1")
    assert cp.returncode == 2 and "give one of them" in cp.stderr, cp.stderr


def test_stream_keeps_the_commands_output_off_stdout(kernel):
    cp = run_ftslab("stream", "--format", "json", "-e", "kmem:kmalloc", "--", "echo",
                    "hello-from-command", check=True)
    for line in cp.stdout.splitlines():
        json.loads(line)
    assert "hello-from-command" in cp.stderr


# -- regressions found in the robustness review -----------------------------------

def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                # pid (comm) state ppid ...: comm may hold spaces and parentheses
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return out


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie: its parent died and nobody reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_command_never_runs_if_ftslab_dies_during_setup(kernel, tmp_path):
    """SIGKILL while setting up (held there by FTSLAB_TEST_PAUSE_AT): the held
    command must not run untraced afterwards."""
    marker = tmp_path / "ran"
    # the hook holds setup after mkdir and tracing_on=0, before the buffer size
    p = popen_ftslab("record", "-o", tmp_path / "k.dat", "--", "sh", "-c",
                     f"echo RAN > {marker}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                     extra_env={"FTSLAB_TEST_PAUSE_AT": "2"})
    deadline = time.monotonic() + 60
    name = f"ftslab_{p.pid}"
    while name not in ftslab_leftovers():
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        time.sleep(0.01)
    held = _children(p.pid)  # the command, forked before setup and held at its gate
    assert len(held) == 1, held
    p.kill()
    p.communicate(timeout=30)
    try:
        # the gate closed with ftslab: the held command ends, without running (had it
        # run, `echo` would have written the marker before it ended)
        while _alive(held[0]):
            assert time.monotonic() < deadline, f"the held command {held[0]} is still there"
            time.sleep(0.01)
        assert not marker.exists(), "the command ran although ftslab died before tracing"
    finally:
        if name in ftslab_leftovers():
            run_ftslab("reset", check=True)


def test_duration_does_not_wait_for_a_longer_command(kernel, tmp_path):
    """-d ends the recording while the command goes on: ftslab says so and leaves it
    running.  The command never ends by itself, so waiting for it would hang (the
    timeout guards that)."""
    out = tmp_path / "w.dat"
    pidfile = tmp_path / "cmd.pid"
    cmd = ["sh", "-c", f'echo $$ > {pidfile}; exec sleep 100000']
    try:
        with open(tmp_path / "err.txt", "w") as err:
            p = popen_ftslab("record", "-o", out, "-d", "1", "--", *cmd,
                             stdout=subprocess.DEVNULL, stderr=err)
            assert p.wait(timeout=120) == 0
        text = (tmp_path / "err.txt").read_text()
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text().endswith("\n"):
            assert time.monotonic() < deadline, text  # it runs on, maybe not yet that far
            time.sleep(0.01)
        cmd_pid = int(pidfile.read_text())
        assert f"the command (pid {cmd_pid}) is still running" in text, text
        assert "recording ended after -d" in text and _alive(cmd_pid), text
        assert re.search(r"recorded [\d,]+ events in \d+\.\ds, lost 0", text), text
        assert out.exists()
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_closed_or_full_stderr_does_not_cost_the_recording(kernel, tmp_path):
    out = tmp_path / "e.dat"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1].parent))
    for redirect in ("2>&-", "2>/dev/full"):
        out.unlink(missing_ok=True)
        cp = subprocess.run(["bash", "-c", f"{sys.executable} -m ftslab record -o {out} -d 0.5 "
                             f"{redirect}"], env=env, timeout=60)
        assert cp.returncode == 0 and out.exists(), redirect


def test_full_stdout_is_an_output_error(kernel):
    fix = Path(__file__).resolve().parents[1] / "fixtures" / "6.18" / "ftslab-open200.dat"
    with open("/dev/full", "w") as full:
        cp = subprocess.run(
            [sys.executable, "-m", "ftslab", "report", str(fix)], stdout=full,
            stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1].parent)))
    assert cp.returncode == 7 and "No space left" in cp.stderr and "Traceback" not in cp.stderr


def test_temp_file_is_not_a_predictable_path(kernel, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "out.dat.tmp").symlink_to(victim)
    run_ftslab("record", "-o", tmp_path / "out.dat", "-d", "0.3", check=True)
    assert victim.read_text() == "precious"
    assert (tmp_path / "out.dat").is_file() and not (tmp_path / "out.dat").is_symlink()


def test_stream_that_falls_behind_still_ends_on_time(kernel, tmp_path):
    """A consumer slower than the events (here: a pipe read 4 KiB per 20 ms) leaves a
    backlog in the buffer at -d.  The stream drains it for at most DRAIN_S, says how many
    events it did not show, and ends (it used to print the whole backlog: at this pace,
    minutes of it, which the hang guard's timeout would catch too)."""
    import threading
    load = subprocess.Popen([sys.executable, "-c",
                             "import os\nwhile True:\n"
                             "    os.close(os.open('/dev/null', os.O_RDONLY))"])
    try:
        p = popen_ftslab("stream", "--format", "json", "-e", "kmem:kmem_cache_alloc", "-d", "3",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = []

        def slow_reader():
            while True:
                b = p.stdout.read1(4096)
                if not b:
                    return
                got.append(len(b))
                time.sleep(0.02)

        t = threading.Thread(target=slow_reader, daemon=True)
        t.start()
        p.wait(timeout=120)
        err = p.stderr.read().decode()
        t.join(timeout=60)
    finally:
        load.kill()
        load.wait()
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    m = re.search(r"streamed ([\d,]+) events .*, not shown ([\d,]+)", err)
    assert m and int(m.group(2).replace(",", "")) > 0, err
    assert "the stream fell behind" in err, err
    assert not t.is_alive() and sum(got) > 0
    assert not ftslab_leftovers()
