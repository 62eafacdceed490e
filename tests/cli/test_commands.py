"""The command line (ftslab/admin.py) without root: argument handling, exit codes (README
"Exit codes"), `report` on the real recordings of tests/fixtures/6.18 in every format,
`record`/`stream --dry-run` against a fake tracefs (conftest.make_fake_tracefs),
`stream` on real pages, `reset`, `recover` and `probes`.

Most calls go through ``ftslab.cli.entry.main`` in this process (what the console script
runs); a few run ``python -m ftslab`` as a user would, to see the whole of stderr.
A bad input must give one line, ``ftslab: error: ...``, the documented code, and no
traceback.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import ftslab
from ftslab.cli import admin
from ftslab.cli import ui
from ftslab import errors
from ftslab.cli.entry import main

from conftest import ROOT, make_fake_tracefs, run_ftslab

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
OPEN200 = FIX / "ftslab-open200.dat"
STACKS = FIX / "ftslab-stacks-eventfd300.dat"
TRACE_DATS = ["ftslab-open200.dat", "ftslab-stacks-eventfd300.dat", "tracecmd-v6.dat",
              "tracecmd-v7-none.dat", "tracecmd-v7-zstd.dat", "tracecmd-v7-zstd-2buffers.dat"]


@pytest.fixture(autouse=True)
def _no_process_wide_malloc_settings(monkeypatch):
    # report asks glibc to keep freed memory for the rest of the process (it exits
    # after one report); this process goes on running tests
    from ftslab.trace import prefault
    monkeypatch.setattr(prefault, "keep_freed_memory", lambda: False)
    # the running kernel's tracefs must never be reached from here
    monkeypatch.setenv("FTSLAB_TRACEFS", "/nonexistent-tracefs")


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def one_error(err: str, *needles: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("ftslab: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def usage_error(err: str, option: str) -> None:
    assert "Traceback" not in err
    assert re.search(rf"^Error: .*{re.escape(option)}", err, re.M), err


# ------------------------------------------------------------------ help, version, codes

def test_help_lists_the_readme_exit_codes(capsys):
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Exit codes"):]
    table = table[:table.index("\n## ", 5)]
    documented = set(re.findall(r"^\| (\d+|128\+N) \|", table, re.M))
    assert documented == {str(c) for c in errors.EXIT_CODES}
    code, out, err = run(capsys, "--help")
    assert code == 0
    for c, text in errors.EXIT_CODES.items():
        assert re.search(rf"^\s+{re.escape(str(c))}\s+{re.escape(text[:30])}", out, re.M), c
    for command in ("record", "report", "stream", "top", "doctor", "probes", "reset",
                    "recover"):
        assert re.search(rf"^\s+{command}\s", out, re.M), command


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"ftslab, version {ftslab.__version__}"


@pytest.mark.parametrize("args, option", [
    (["report"], "Missing argument"),
    (["report", OPEN200, "--by", "nope"], "--by"),
    (["report", OPEN200, "--top", "0"], "--top"),
    (["report", OPEN200, "--format", "xml"], "--format"),
    (["report", OPEN200, "--sort", "size"], "--sort"),
    (["record", "-b", "2"], "--buffer-kb"),
    (["record", "-d", "0"], "--duration"),
    (["record", "-p", "0"], "--pid"),
    (["record", "--kprobes", "maybe"], "--kprobes"),
    (["stream", "--format", "csv"], "--format"),
    (["top", "-n", "0.01"], "--interval"),
    (["top", "--by", "pid"], "--by"),
    (["nosuchcommand"], "No such command"),
    (["report", OPEN200, "--no-such-option"], "No such option"),
])
def test_click_refusals_exit_2(capsys, args, option):
    code, out, err = run(capsys, *args)
    assert code == errors.EXIT_USAGE and out == ""
    usage_error(err, option)


# ------------------------------------------------------------------ report

def _events(path) -> int:
    return ftslab.load(path).events


@pytest.mark.parametrize("name", TRACE_DATS)
def test_report_every_format_on_every_recording(capsys, name):
    path = FIX / name
    code, out, err = run(capsys, "report", path, "--format", "json")
    assert code == 0, err
    js = json.loads(out)
    assert js["events"] == _events(path) > 0
    assert js["truncated"] is False and js["lost"] == 0
    main_rows = js["rows"]
    code, out, err = run(capsys, "report", path, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["cache"] for r in rows] == [r["cache"] for r in main_rows]
    assert [int(r["count"]) for r in rows] == [r["count"] for r in main_rows]
    code, out, err = run(capsys, "report", path)
    assert code == 0, err
    for r in main_rows[:3]:  # the table shows the same rows
        assert re.search(rf"^\s*{re.escape(r['cache'])}\s", out, re.M), r["cache"]


def test_report_counts_are_the_recordings(capsys):
    """The rows of --by event are the allocation events ftslab.read sees."""
    allocs = Counter(e.name for e in ftslab.read(OPEN200)
                     if e.name in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc"))
    code, out, err = run(capsys, "report", OPEN200, "--by", "event", "--format", "json",
                         "--top", "1000")
    assert code == 0, err
    got = {r["event"]: r["count"] for r in json.loads(out)["rows"]}
    assert {k.split(":")[-1]: v for k, v in got.items()} == dict(allocs)


@pytest.mark.parametrize("by", [("comm",), ("pid",), ("callsite",), ("comm", "cache"),
                                ("cache", "callsite"), ("pid", "comm", "cache"),
                                ("event", "cache")])
def test_report_by_combinations_partition_the_same_allocations(capsys, by):
    args = [a for k in by for a in ("--by", k)]
    code, out, err = run(capsys, "report", OPEN200, *args, "--format", "csv", "--top",
                         "100000")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:len(by)] == list(by)
    keys = [tuple(r[k] for k in by) for r in rows]
    assert len(keys) == len(set(keys))  # one row per distinct key
    # the same allocations as one key alone (event: pages too; the others: slab)
    ref = "event" if "event" in by else "cache"
    code, out2, _ = run(capsys, "report", OPEN200, "--by", ref, "--format", "csv",
                        "--top", "100000")
    total = sum(int(r["count"]) for r in csv.DictReader(io.StringIO(out2)))
    assert sum(int(r["count"]) for r in rows) == total > 0


def test_report_by_order_and_gfp(capsys):
    pages = Counter(e.fields["order"] for e in ftslab.read(OPEN200)
                    if e.name == "mm_page_alloc")
    code, out, err = run(capsys, "report", OPEN200, "--by", "order", "--format", "json",
                         "--top", "100")
    assert code == 0, err
    js = json.loads(out)
    got = Counter()
    for t in js["tables"].values():
        if "order" in [c["name"] for c in t["columns"]]:
            for r in t["rows"]:
                got[int(r["order"])] += r["count"]
    assert got == pages
    code, out, err = run(capsys, "report", OPEN200, "--by", "gfp", "--format", "csv")
    assert code == 0, err
    assert out.splitlines()[0].startswith("gfp,")
    assert "GFP_KERNEL" in out  # names from the recording's own __print_flags


def test_report_several_files_as_tables(capsys):
    code, out, err = run(capsys, "report", OPEN200, FIX / "tracecmd-v6.dat")
    assert code == 0, err
    assert [ln for ln in out.splitlines() if ln.startswith("== ")] == [
        f"== {OPEN200}", f"== {FIX / 'tracecmd-v6.dat'}"]


def test_report_a_text_trace(capsys):
    code, out, err = run(capsys, "report", FIX / "kmem-trace.txt", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["events"] > 0


def test_report_buffer_of_a_two_buffer_file(capsys):
    path = FIX / "tracecmd-v7-zstd-2buffers.dat"
    code, out, err = run(capsys, "report", path, "--buffer", "ftslab_tdtest_8619",
                         "--by", "event", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["events"] == ftslab.load(path, buffer="ftslab_tdtest_8619").events
    code, out, err = run(capsys, "report", path, "--buffer", "nosuch")
    assert code == errors.EXIT_INPUT and out == ""
    one_error(err, "no buffer named 'nosuch'")


def test_report_live_and_interval(capsys):
    code, out, err = run(capsys, "report", OPEN200, "--live", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert rows and all(r["live"] > 0 for r in rows)
    code, out, err = run(capsys, "report", OPEN200, "--interval", "10ms", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0])[:2] == ["t_s", "cache"]
    assert len({r["t_s"] for r in rows}) > 1


def test_report_folded_stacks(capsys):
    allocs = sum(1 for e in ftslab.read(STACKS) if e.name in ("kmalloc", "kmem_cache_alloc"))
    code, out, err = run(capsys, "report", STACKS, "--format", "folded", "--weight", "count")
    assert code == 0, err
    lines = out.splitlines()
    assert all(re.fullmatch(r"[^ ;]+(;[^ ;]+)+ \d+", ln) for ln in lines), lines[:3]
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in lines) == allocs
    code, out, err = run(capsys, "report", STACKS, "--format", "folded")
    by_bytes = sum(int(ln.rsplit(" ", 1)[1]) for ln in out.splitlines())
    want = sum(e.fields["bytes_alloc"] for e in ftslab.read(STACKS)
               if e.name in ("kmalloc", "kmem_cache_alloc"))
    assert code == 0 and by_bytes == want


def test_report_plot_writes_a_png(capsys, tmp_path):
    png = tmp_path / "series.png"
    code, out, err = run(capsys, "report", OPEN200, "--plot", png, "--format", "json")
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"ftslab: wrote {png}" in err
    assert json.loads(out)["tables"]  # the series, as data too


@pytest.mark.parametrize("args, code, needles", [
    (["/nonexistent/run.dat"], errors.EXIT_INPUT, ["no such file", "ftslab record"]),
    ([FIX / "kmem-kfree.format"], errors.EXIT_INPUT, ["neither a trace.dat file nor"]),
    ([OPEN200, OPEN200, "--format", "json"], errors.EXIT_USAGE, ["one file at a time"]),
    ([OPEN200, "--interval", "abc"], errors.EXIT_USAGE, ["--interval 'abc'"]),
    ([OPEN200, "--interval", "0s"], errors.EXIT_USAGE, ["more than 0"]),
    ([OPEN200, "--format", "folded"], errors.EXIT_USAGE, ["holds no kernel stacks"]),
    ([STACKS, "--format", "folded", "--by", "cache"], errors.EXIT_USAGE, ["drop --by"]),
    ([STACKS, "--format", "folded", "--interval", "1s"], errors.EXIT_USAGE,
     ["give one of them"]),
    ([OPEN200, "--plot", "x.png", "--format", "folded"], errors.EXIT_USAGE,
     ["not folded stacks"]),
    ([OPEN200, OPEN200, "--plot", "x.png"], errors.EXIT_USAGE, ["one recording"]),
    ([OPEN200, "--plot", "/nonexistent-dir/x.png"], errors.EXIT_IO, ["cannot write"]),
])
def test_report_refusals(capsys, args, code, needles):
    got, out, err = run(capsys, "report", *args)
    assert got == code
    one_error(err, *needles)
    assert out == "" or args[-1] == "/nonexistent-dir/x.png"


def test_strict_truncated_lost_and_clean(capsys, tmp_path):
    # clean: 0
    assert run(capsys, "report", OPEN200, "--strict")[0] == 0
    # events lost (trace_pipe said LOST): 10
    code, out, err = run(capsys, "report", FIX / "kmem-trace_pipe-lost.txt", "--strict")
    assert code == errors.EXIT_LOST and out == ""
    lost = ftslab.load(FIX / "kmem-trace_pipe-lost.txt").meta.total_lost
    one_error(err, f"{lost} events were lost")
    # without --strict the same file is reported, with a warning
    code, out, err = run(capsys, "report", FIX / "kmem-trace_pipe-lost.txt")
    assert code == 0 and f"WARNING: {lost} events were LOST" in out
    # truncated: the recording cut inside its ring-buffer data: 9
    data = OPEN200.read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(data[:len(data) - 20_000])  # inside the ring-buffer data, at its end
    code, out, err = run(capsys, "report", cut, "--strict")
    assert code == errors.EXIT_TRUNCATED and out == ""
    one_error(err, f"{cut} is truncated")
    code, out, err = run(capsys, "report", cut, "--format", "json")
    assert code == 0 and json.loads(out)["truncated"] is True
    assert 0 < json.loads(out)["events"] < _events(OPEN200)


def test_strict_on_a_spool_is_truncated(capsys, tmp_path):
    from test_spool import _dead_pid, make_spool
    d, _td = make_spool(tmp_path, _dead_pid())
    code, out, err = run(capsys, "report", d, "--strict")
    assert code == errors.EXIT_TRUNCATED
    one_error(err, "is truncated", "ended without writing its recording")
    code, out, err = run(capsys, "report", d, "--format", "json")
    assert code == 0 and json.loads(out)["events"] == _events(OPEN200)


def test_report_to_a_closed_pipe_is_quiet():
    """`ftslab report ... | head -1`: no BrokenPipe traceback, exit 0."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "ftslab", "report", str(OPEN200), "--by",
                          "callsite", "--top", "10000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0 and first
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_a_user_sees_one_line_and_no_traceback(tmp_path):
    cp = run_ftslab("report", tmp_path / "missing.dat")
    assert cp.returncode == errors.EXIT_INPUT and cp.stdout == ""
    one_error(cp.stderr, "no such file")
    bad = tmp_path / "garbage.dat"
    bad.write_bytes(b"\x17\x08\x44tracing6\0" + os.urandom(4000))
    cp = run_ftslab("report", bad)
    assert cp.returncode == errors.EXIT_INPUT
    one_error(cp.stderr)


# ------------------------------------------------------------------ record / stream --dry-run

@pytest.fixture
def fake(tmp_path):
    root = make_fake_tracefs(tmp_path)
    return root


def _tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_record_dry_run_prints_the_writes_and_makes_none(capsys, fake):
    before = _tree(fake)
    code, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run", "--kprobes", "off",
                         "-b", "1024", "--filter", "bytes_req>=4096||bytes_alloc>8192",
                         "--", "true")
    assert code == 0, err
    assert _tree(fake) == before
    name = f"ftslab_{os.getpid()}"
    inst = fake / "instances" / name
    lines = out.splitlines()
    assert lines[0] == f"mkdir {inst}    # create private instance"
    assert f"echo '1024' > {inst}/buffer_size_kb    # per-CPU buffer size (KiB)" in lines
    assert f"echo '$COMMAND_PID' > {inst}/set_event_pid    # trace only these tasks" in lines
    canon = "(bytes_req >= 4096) || (bytes_alloc > 8192)"
    fmts = {p.parent.name: p.read_text() for p in (fake / "events/kmem").glob("*/format")}
    has = sorted(n for n, t in fmts.items() if "bytes_req;" in t and "bytes_alloc;" in t)
    filtered = sorted(re.findall(rf"^echo '{re.escape(canon)}' > {re.escape(str(inst))}"
                                 r"/events/kmem/(\w+)/filter", out, re.M))
    assert filtered == has and has
    enabled = re.findall(rf"^echo '1' > {re.escape(str(inst))}/events/(\w+)/(\w+)/enable",
                         out, re.M)
    from ftslab.events import DEFAULT_EVENTS
    from ftslab.events import free_source
    frees = sorted(e for e in DEFAULT_EVENTS if free_source(*e.split(":")))
    assert sorted(f"{s}:{e}" for s, e in enabled) == sorted(set(DEFAULT_EVENTS) - set(frees))
    # the command's frees are recorded for the whole system, in a second instance
    finst = fake / "instances" / f"{name}_frees"
    fenabled = re.findall(rf"^echo '1' > {re.escape(str(finst))}/events/(\w+)/(\w+)/enable"
                          r"    # enable \S+ \(every context\)$", out, re.M)
    assert sorted(f"{s}:{e}" for s, e in fenabled) == frees and frees
    assert not re.search(rf"{re.escape(str(finst))}/(set_event_(notrace_)?pid|.*/filter)", out)
    starts = [ln for ln in lines if ln.endswith("/tracing_on    # start")]
    assert starts == [f"echo '1' > {finst}/tracing_on    # start",
                      f"echo '1' > {inst}/tracing_on    # start"]   # frees first
    assert lines[-2] == (f"# at the end: echo '0' > {inst}/tracing_on, then 1s more of "
                         "frees (settle)")
    assert lines[-1].startswith("# then: splice per_cpu/cpuN/trace_pipe_raw pages")


def test_record_dry_run_with_frees_traced_keeps_one_instance(capsys, fake):
    code, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run", "--kprobes", "off",
                         "--frees", "traced", "--settle", "0", "--", "true")
    assert code == 0, err
    inst = fake / "instances" / f"ftslab_{os.getpid()}"
    assert f"{inst}_frees" not in out and "(settle)" not in out
    from ftslab.events import DEFAULT_EVENTS
    enabled = re.findall(rf"^echo '1' > {re.escape(str(inst))}/events/(\w+)/(\w+)/enable",
                         out, re.M)
    assert sorted(f"{s}:{e}" for s, e in enabled) == sorted(DEFAULT_EVENTS)


def test_stream_dry_run(capsys, fake):
    code, out, err = run(capsys, "stream", "--tracefs", fake, "--dry-run", "--kprobes", "off",
                         "-e", "kmem:kmalloc", "--comm", "nginx")
    assert code == 0, err
    inst = fake / "instances" / f"ftslab_{os.getpid()}"
    assert f"echo 'comm == \"nginx\"' > {inst}/events/kmem/kmalloc/filter" in out
    assert out.splitlines()[-1].startswith("# then: read and decode per_cpu/cpuN/")


def test_dry_run_without_kprobes_on_a_kernel_without_them(capsys, fake):
    code, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run", "--kprobes", "on")
    assert code == errors.EXIT_UNSUPPORTED and out == ""
    one_error(err, "has no kprobes")
    code, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run")  # auto
    assert code == 0 and "has no kprobes" in err and "kprobe_events" not in out


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("args, code, needles", [
    (["-e", "kmem:nope"], errors.EXIT_USAGE, ["no such event kmem:nope"]),
    (["-e", "bad event"], errors.EXIT_USAGE, ["invalid event 'bad event'"]),
    (["--filter", "bytes_req =="], errors.EXIT_USAGE, ["invalid filter"]),
    (["--filter", "nosuchfield == 1"], errors.EXIT_USAGE, ["names a field none"]),
    (["--comm", "a_name_longer_than_15"], errors.EXIT_USAGE, ["longer than the kernel keeps"]),
    (["--cache", 'a"b'], errors.EXIT_USAGE, ["invalid --cache"]),
    (["-d", "nan"], errors.EXIT_USAGE, ["-d nan"]),
    (["-d", "inf"], errors.EXIT_USAGE, ["-d inf"]),
    (["-a", "-p", "1"], errors.EXIT_USAGE, ["give one of them"]),
    (["-p", "1", "--", "true"], errors.EXIT_USAGE, ["not both"]),
    (["--kprobes", "only", "-e", "kmem:kmalloc"], errors.EXIT_USAGE, ["drop -e"]),
    (["--kprobes", "off", "--kprobe-symbol", "x"], errors.EXIT_USAGE, ["--kprobes off"]),
])
def test_record_refusals(capsys, fake, args, code, needles):
    kprobes = [] if "--kprobes" in args else ["--kprobes", "off"]
    got, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run", *kprobes, *args)
    assert got == code and out == ""
    lines = [ln for ln in err.splitlines() if ln.startswith("ftslab: error: ")]
    assert len(lines) == 1 and "Traceback" not in err
    assert all(n in lines[0] for n in needles), lines[0]


def test_record_pid_that_does_not_exist(capsys, fake):
    pid = _dead_pid()
    code, out, err = run(capsys, "record", "--tracefs", fake, "--dry-run", "-p", pid)
    assert code == errors.EXIT_USAGE
    one_error(err, f"-p {pid}: no such process")


@pytest.mark.parametrize("command", ["record", "stream", "reset", "probes"])
def test_no_tracefs_is_exit_4(capsys, tmp_path, command):
    code, out, err = run(capsys, command, "--tracefs", tmp_path / "nothing")
    assert out == ""
    if os.geteuid() == 0:
        assert code == errors.EXIT_TRACEFS
        one_error(err, "tracefs is not mounted", "mount -t tracefs")
    else:  # another user cannot tell absent from unreadable
        assert code == errors.EXIT_PERMISSION
        one_error(err, "tracefs is not readable")


# ------------------------------------------------------------------ stream on real pages

def _replayed_stream(monkeypatch, tmp_path, recording):
    """Run `stream`'s reader on a recording's pages: run_session is replaced by one that
    hands stream's reader a session over those pages (test_stream_decoder), then flushes
    and closes it as run_session does after tracing stops."""
    from ftslab.kernel import undo as undo_mod
    from ftslab.session import stream
    from ftslab.session.run import RunResult
    from test_stream import no_stop, replay_session, tasks_gone
    session, _td = replay_session(tmp_path / "replay", recording)
    session.undo = undo_mod.UndoStack()
    tasks_gone(monkeypatch, stream)
    no_stop(monkeypatch)

    def run_session(tracefs, opts, warn, status, make_reader, meta):
        reader = make_reader(session)
        try:
            for c in session.cpus:
                reader.flush(c)
        finally:
            reader.close()
        status("done", True)
        return RunResult(session, [], None, 0.5, None, True)
    monkeypatch.setattr(stream, "run_session", run_session)


@pytest.mark.parametrize("fmt", ["json", "text", "seed"])
def test_stream_prints_every_event_of_real_pages(capsys, monkeypatch, tmp_path, fake, fmt):
    _replayed_stream(monkeypatch, tmp_path, OPEN200)
    events = list(ftslab.read(OPEN200))
    code, out, err = run(capsys, "stream", "--tracefs", fake, "--kprobes", "off",
                         "--format", fmt)
    assert code == 0, err
    lines = out.splitlines()
    if fmt == "json":
        objs = [json.loads(ln) for ln in lines]
        assert Counter(o["event"] for o in objs) == Counter(f"kmem:{e.name}" for e in events)
        assert sorted(o["ts"] for o in objs) == sorted(e.ts for e in events)
    elif fmt == "text":
        assert len(lines) == len(events)
        assert Counter(ln.split(": ", 1)[1].split()[0] for ln in lines) == \
            Counter(f"kmem:{e.name}" for e in events)
    else:
        from ftslab.cli.render import event_to_seed
        assert lines == [s for s in (event_to_seed(e) for e in _page_order(events))
                         if s is not None]
    assert f"streamed {len(events):,} events" in err and "lost 0" in err


def test_stream_warns_of_records_it_could_not_decode(capsys, monkeypatch, tmp_path, fake):
    from test_loader_fields import _with_short_records
    path, cut = _with_short_records(tmp_path, [3, 12])
    _replayed_stream(monkeypatch, tmp_path, path)
    code, out, err = run(capsys, "stream", "--tracefs", fake, "--kprobes", "off",
                         "--format", "json")
    assert code == 0, err
    assert len(out.splitlines()) == len(list(ftslab.read(path)))
    assert "WARNING: 2 pages or records could not be decoded and were not shown" in err


def _page_order(events):
    """stream's order: CPU by CPU, in the order of each CPU's pages."""
    return [e for c in sorted({e.cpu for e in events}) for e in events if e.cpu == c]


def test_stream_into_a_closed_pipe_stops_quietly(capsys, monkeypatch, tmp_path, fake):
    _replayed_stream(monkeypatch, tmp_path, OPEN200)

    class Closed(io.StringIO):
        def write(self, s):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Closed())
    monkeypatch.setattr(ui, "quiet_stdout", lambda: None)
    code = main(["stream", "--tracefs", str(fake), "--kprobes", "off"])
    err = capsys.readouterr().err
    assert code == 0 and "(output closed)" in err and "Traceback" not in err


# ------------------------------------------------------------------ reset, recover, probes

def test_reset_removes_dead_sessions_only(capsys, monkeypatch, tmp_path, fake):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTSLAB_RUN_DIR", str(tmp_path / "run"))
    dead = _dead_pid()
    (fake / "instances" / f"ftslab_{dead}").mkdir()
    (fake / "instances" / f"ftslab_{os.getpid()}").mkdir()
    (fake / "instances" / "someone_else").mkdir()
    empty = tmp_path / f"run.dat.ftslab-spool-{dead}"
    empty.mkdir()
    full = tmp_path / f"other.dat.ftslab-spool-{dead}"
    full.mkdir()
    (full / "cpu0.raw").write_bytes(b"\0" * 4096)
    code, out, err = run(capsys, "reset", "--tracefs", fake)
    assert code == 0, err
    assert sorted(os.listdir(fake / "instances")) == sorted([f"ftslab_{os.getpid()}",
                                                            "someone_else"])
    assert f"removed ftslab_{dead}" in err
    assert f"keeping ftslab_{os.getpid()}: its owner (pid {os.getpid()}) is still running" \
        in err
    assert "removed 1 stale instance(s) and 0 stale kprobe(s)" in err
    assert not empty.exists() and full.is_dir()
    assert f"ftslab recover {full.resolve()}" in err
    code, out, err = run(capsys, "reset", "--tracefs", fake, "--all-ftslab")
    assert code == 0 and os.listdir(fake / "instances") == ["someone_else"]


def test_recover_through_the_cli(capsys, tmp_path):
    from test_spool import make_spool
    d, _td = make_spool(tmp_path, _dead_pid())
    code, out, err = run(capsys, "recover", d)
    assert code == 0, err
    out_file = tmp_path / "run.dat"
    assert f"wrote {out_file}" in err and not d.exists()
    assert _events(out_file) == _events(OPEN200)
    code, out, err = run(capsys, "recover", tmp_path / "nothing")
    assert code == errors.EXIT_INPUT
    one_error(err, "is not a spool directory")
    code, out, err = run(capsys, "report", out_file, "--strict")
    assert code == errors.EXIT_TRUNCATED


def test_probes_on_a_kernel_without_kprobes(capsys, fake):
    code, out, err = run(capsys, "probes", "--tracefs", fake)
    assert code == 0, err
    assert "ftslab: note: this kernel has no kprobes" in err
    group = f"ftslab_{os.getpid()}"
    echo = [ln for ln in out.splitlines() if ln.startswith("echo ")]
    assert echo and all(re.fullmatch(rf"echo 'p:{group}/kp_\w+ \w+( \S+)*' >> "
                                     rf"{re.escape(str(fake))}/kprobe_events", ln)
                        for ln in echo), echo
    assert out.splitlines()[-1].startswith(f"# on exit, after disabling them: echo "
                                           f"'-:{group}/EVENT'")
    code, out, err = run(capsys, "probes", "--tracefs", fake, "--kprobe-family", "nosuch")
    assert code == errors.EXIT_USAGE and out == ""
    errs = [ln for ln in err.splitlines() if ln.startswith("ftslab: error: ")]
    assert len(errs) == 1 and "unknown kprobe family nosuch" in errs[0]


def test_doctor_without_tracefs(capsys, tmp_path):
    code, out, err = run(capsys, "doctor", "--tracefs", tmp_path / "nothing", "--format",
                         "json")
    d = json.loads(out)
    assert d["ok"] is False and d["problems"]
    assert code in (errors.EXIT_TRACEFS, errors.EXIT_PERMISSION)
    one_error(err, "recording cannot work here")


# ------------------------------------------------------------------ top --batch on real pages

def _replayed_top(monkeypatch, tmp_path, recording):
    """top's reader on a recording's pages (as _replayed_stream): pumped until its worker
    has made a frame of everything (polled, with a deadline), then flushed and closed."""
    import time
    from ftslab.kernel import undo as undo_mod
    from ftslab.session import top
    from ftslab.session.run import RunResult
    from test_stream import replay_session, tasks_gone
    session, _td = replay_session(tmp_path / "replay", recording)
    session.undo = undo_mod.UndoStack()
    tasks_gone(monkeypatch, top)

    def run_session(tracefs, opts, warn, status, make_reader, meta):
        reader = make_reader(session)
        try:
            deadline = time.monotonic() + 120
            while reader._worker is None and time.monotonic() < deadline:
                for c in session.cpus:
                    reader.pump(c)  # a tick once -n has passed since the reader began
                time.sleep(0.01)
            assert reader._worker is not None, "no tick within 120 s"
            reader._worker.join()
            for c in session.cpus:
                reader.flush(c)
        finally:
            reader.close()
        return RunResult(session, [], None, 0.5, None, True)
    monkeypatch.setattr(top, "run_session", run_session)


def test_top_batch_frames_on_real_pages(capsys, monkeypatch, tmp_path, fake):
    from ftslab.cli.render import human_bytes
    from ftslab.session.top import TopState
    from ftslab.kernel.procfs import read_slab_aliases
    _replayed_top(monkeypatch, tmp_path, OPEN200)
    code, out, err = run(capsys, "top", "--tracefs", fake, "--batch", "-n", "0.1")
    assert code == 0, err
    frame = out.split("\n\n")[0].splitlines()
    assert re.match(r"ftslab top +\d+\.\d+s +[\d,]+ events/s +live [\d,]+ objects .* lost 0$",
                    frame[0]), frame[0]
    assert frame[1].split() == ["CACHE", "ALLOCS/S", "BYTES/S", "LIVE", "LIVE", "BYTES"]
    # what is live at the end of the recording, by cache, as TopState says of it whole
    whole = TopState()
    ds = ftslab.load(OPEN200)
    # top names merged caches as the running kernel merged them (read when it starts)
    ds.meta.extra["slab_aliases"] = read_slab_aliases()
    rows = whole.feed(ds, 1.0, 20)["cache"]
    held = re.escape(human_bytes(whole.live_totals()[1]))
    assert re.search(rf" live {whole.live_totals()[0]:,} objects {held}  lost 0$", frame[0]), frame[0]
    # the label, then ALLOCS/S, BYTES/S (n unit), LIVE, LIVE BYTES (n unit); a merged
    # cache's label is never cut (it may be longer than its 40 columns)
    cells = [re.fullmatch(r"(.+?) +([\d,]+ +\S+ \S+ +[\d,]+ +\S+ \S+)", ln)
             for ln in frame[2:]]
    shown = {m.group(1): " " + m.group(2) for m in cells}
    assert set(shown) == {r["cache"] for r in rows}
    for r in rows:
        assert re.search(rf" {r['live']:>10,} +{re.escape(human_bytes(r['live_bytes']))}$",
                         shown[r["cache"]]), (r, shown[r["cache"]])
    assert re.search(r"^ftslab: top ran \d+\.\ds; lost 0 events$", err, re.M), err


def test_top_refusals(capsys, fake):
    code, out, err = run(capsys, "top", "--tracefs", fake, "--batch", "-p", _dead_pid())
    assert code == errors.EXIT_USAGE and out == ""
    one_error(err, "no such process")
    code, out, err = run(capsys, "top", "--tracefs", fake, "--batch", "--filter", "x ==")
    assert code == errors.EXIT_USAGE
    one_error(err, "invalid filter")
