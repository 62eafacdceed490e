"""The spool a `record` session leaves when it dies (ftslab/trace/spool.py), built from a real
recording: its formats, headers, kallsyms and raw pages (tests/fixtures/6.18/
ftslab-open200.dat) laid out as capture.py lays them out (spool.describe, then
cpuN.raw).  Read back, recovered into a trace.dat, cut mid-page, damaged; the registry
of sessions.  No root needed.  (The real SIGKILL runs in test_kernel_record.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ftslab
from ftslab.trace import spool
from ftslab.errors import BadInput, UsageError
from ftslab.trace.tracedat_read import read_tracedat

from conftest import need_tool

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
REC = FIX / "ftslab-open200.dat"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def make_spool(tmp_path: Path, pid: int, base: str = "run.dat", cut: int = 0,
               kallsyms: bool = True) -> tuple[Path, object]:
    """The spool session ``pid`` would have left writing ``base`` (``cut`` bytes short
    on every CPU file: a page it was writing when it died)."""
    td = read_tracedat(REC)
    d = spool.spool_dir_for(tmp_path / base, pid)
    d.mkdir()
    warned: list[str] = []
    spool.describe(d, {
        "pid": pid, "output": str(tmp_path / base),
        "header_page": td.header_page, "header_event": td.header_event,
        "event_formats": td.event_formats, "ftrace_formats": td.ftrace_formats,
        "printk_formats": td.printk_formats, "cmdlines": td.cmdlines,
        "cpus": sorted(td.cpu_data), "buffer_page_size": td.buffer_page_size,
        "page_size": td.page_size, "little_endian": td.little_endian,
        "long_size": td.long_size, "trace_clock": td.trace_clock, "uname": td.uname,
        "meta": dict(td.ftslab or {}),
    }, td.kallsyms if kallsyms else "", warned.append)
    assert not warned
    for cpu, data in td.cpu_data.items():
        data = bytes(data)
        (d / f"cpu{cpu}.raw").write_bytes(data[:len(data) - cut] if cut else data)
    return d, td


def _events(path, **kw):
    return [(e.ts, e.cpu, e.pid, e.comm, e.name, dict(e.fields))
            for e in ftslab.read(path, **kw)]


@pytest.fixture(scope="module")
def original():
    return _events(REC)


# ------------------------------------------------------------------ names

def test_spool_names(tmp_path):
    d = spool.spool_dir_for(tmp_path / "out" / "run.dat", 4242)
    assert d == tmp_path / "out" / "run.dat.ftslab-spool-4242"
    assert spool.spool_owner(d) == 4242
    assert spool.spool_owner("a.b.ftslab-spool-7") == 7
    for name in ("run.dat", "run.dat.ftslab-spool-", "run.dat.ftslab-spool-12x",
                 ".ftslab-spool-12", "run.dat.ftslab-spool-12\n",
                 "run.dat.ftslab-spool-12345678901"):
        assert spool.spool_owner(name) is None, name
    assert not spool.is_spool(d)  # not there
    d.parent.mkdir()
    d.mkdir()
    assert spool.is_spool(d) and not spool.spool_has_pages(d)
    (d / "cpu0.raw").write_bytes(b"")
    (d / "notcpu.raw").write_bytes(b"x")
    assert not spool.spool_has_pages(d)
    (d / "cpu3.raw").write_bytes(b"\0")
    assert spool.spool_has_pages(d)
    other = tmp_path / "plain"
    other.mkdir()
    assert not spool.is_spool(other)
    (other / spool.SPOOL_INFO).write_text("{}")
    assert spool.is_spool(other)  # any directory with a description


def test_spools_next_to_tell_dead_from_alive(tmp_path):
    dead = _dead_pid()
    (tmp_path / f"run.dat.ftslab-spool-{dead}").mkdir()
    (tmp_path / f"run.dat.ftslab-spool-{os.getpid()}").mkdir()
    (tmp_path / f"other.dat.ftslab-spool-{dead}").mkdir()
    (tmp_path / f"run.dat.ftslab-spool-{dead + 1}").write_text("a file, not a spool")
    found = spool.spools_next_to(tmp_path / "run.dat")
    assert sorted((p.name, pid, alive) for p, pid, alive in found) == sorted([
        (f"run.dat.ftslab-spool-{dead}", dead, False),
        (f"run.dat.ftslab-spool-{os.getpid()}", os.getpid(), True)])
    assert spool.orphans_next_to(tmp_path / "run.dat") == [
        (tmp_path / f"run.dat.ftslab-spool-{dead}", dead)]


# ------------------------------------------------------------------ read back, recover

def test_a_spool_reads_as_the_recording_it_would_have_been(tmp_path, original):
    pid = _dead_pid()
    d, td = make_spool(tmp_path, pid)
    got = spool.read_spool(d)
    assert got.truncated and f"session {pid}" in got.truncated_detail
    assert "ended without writing its recording" in got.truncated_detail
    assert {c: bytes(v) for c, v in got.cpu_data.items()} == \
        {c: bytes(v) for c, v in td.cpu_data.items()}
    assert got.ftslab["recovered_from"] == str(d)
    assert _events(d) == original
    ds = ftslab.load(d)
    assert ds.meta.truncated and ds.events == len(original)
    # call sites are named from the spool's kallsyms, as from the recording's
    ref = ftslab.load(REC)
    cs = next(e for e in ftslab.read(REC) if "call_site" in e.fields).fields["call_site"]
    assert ds.symbolize(cs) == ref.symbolize(cs) is not None


def test_a_live_sessions_spool_is_a_snapshot(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        d, _td = make_spool(tmp_path, owner.pid)
        assert "still running" in spool.read_spool(d).truncated_detail
        with pytest.raises(UsageError, match=f"session {owner.pid}, which is still running"):
            spool.recover(d)
        assert d.is_dir() and not (tmp_path / "run.dat").exists()
    finally:
        owner.stdin.close()
        owner.wait()


def test_recover_writes_a_trace_dat_and_removes_the_spool(tmp_path, original, monkeypatch):
    monkeypatch.setenv("FTSLAB_RUN_DIR", str(tmp_path / "run"))
    pid = _dead_pid()
    d, _td = make_spool(tmp_path, pid)
    spool.registry_add(pid, d)
    assert (tmp_path / "run" / str(pid)).is_symlink()
    out, n = spool.recover(d)
    assert out == tmp_path / "run.dat" and n == out.stat().st_size > 0
    assert not d.exists() and not (tmp_path / "run" / str(pid)).exists()
    assert _events(out) == original
    ds = ftslab.load(out)
    assert ds.meta.truncated  # every report says so
    assert "ended without writing its recording" in ds.meta.truncated_detail


def test_trace_cmd_reads_a_recovered_spool(tmp_path, original):
    tc = need_tool("trace-cmd")
    d, _td = make_spool(tmp_path, _dead_pid())
    out, _n = spool.recover(d)
    cp = subprocess.run([tc, "report", str(out)], capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 0, cp.stderr
    lines = [ln for ln in cp.stdout.splitlines() if not ln.startswith("cpus=")]
    assert len(lines) == len(original)
    names = {}
    for ln in lines:
        ev = ln.split(": ", 2)[1] if ln.count(": ") >= 2 else ""
        names[ev] = names.get(ev, 0) + 1
    want = {}
    for e in original:
        want[e[4]] = want.get(e[4], 0) + 1
    assert names == want


def test_recover_refuses_to_overwrite_and_needs_a_name(tmp_path):
    pid = _dead_pid()
    d, _td = make_spool(tmp_path, pid)
    (tmp_path / "run.dat").write_text("keep me")
    with pytest.raises(UsageError, match="exists"):
        spool.recover(d)
    assert (tmp_path / "run.dat").read_text() == "keep me" and d.is_dir()
    renamed = tmp_path / "somewhere"
    d.rename(renamed)
    with pytest.raises(UsageError, match="give the output file with -o"):
        spool.recover(renamed)
    out, _n = spool.recover(renamed, tmp_path / "other.dat")
    assert out == tmp_path / "other.dat" and not renamed.exists()
    with pytest.raises(BadInput, match="not a spool directory"):
        spool.recover(tmp_path / "nothing-here")


def test_a_page_cut_short_is_dropped_and_said(tmp_path, original):
    pid = _dead_pid()
    d, td = make_spool(tmp_path, pid, cut=100)
    psize = td.buffer_page_size
    got = spool.read_spool(d)
    for cpu, data in td.cpu_data.items():
        whole = (len(data) - 100) // psize * psize
        assert bytes(got.cpu_data[cpu]) == bytes(data[:whole])
        assert f"CPU {cpu}: the last {psize - 100} bytes (a page cut short) were " \
               "dropped" in got.truncated_detail
    # the events are those of the whole pages: a prefix of each CPU's
    events = _events(d)
    assert 0 < len(events) < len(original)
    for cpu in td.cpu_data:
        mine = [e for e in events if e[1] == cpu]
        assert mine == [e for e in original if e[1] == cpu][:len(mine)]
    out, _n = spool.recover(d)
    assert _events(out) == events


def test_without_kallsyms_call_sites_stay_addresses(tmp_path, original):
    d, _td = make_spool(tmp_path, _dead_pid(), kallsyms=False)
    ds = ftslab.load(d)
    assert ds.events == len(original)
    assert not ds.symbolize or ds.symbolize(next(
        e for e in ftslab.read(REC) if "call_site" in e.fields).fields["call_site"]) is None


# ------------------------------------------------------------------ damage

def _describe(d: Path) -> dict:
    return json.loads((d / spool.SPOOL_INFO).read_text())


@pytest.mark.parametrize("change, message", [
    (lambda i: i.pop("header_page"), "'header_page' is missing"),
    (lambda i: i.update(format="something else"), "is not a spool description"),
    (lambda i: i.update(buffer_page_size=4095), "not a power of two"),
    (lambda i: i.update(buffer_page_size=True), "'buffer_page_size' is missing or not"),
    (lambda i: i.update(cpus=[0, -1]), "'cpus' is not a list of CPU numbers"),
    (lambda i: i.update(event_formats={"kmem": "text"}), "are not texts"),
    (lambda i: i.update(meta=[]), "'meta' is not an object"),
    (lambda i: i.update(trace_clock=5), "'trace_clock' is not a text"),
])
def test_a_damaged_description_is_bad_input(tmp_path, change, message):
    d, _td = make_spool(tmp_path, _dead_pid())
    info = _describe(d)
    change(info)
    (d / spool.SPOOL_INFO).write_text(json.dumps(info))
    with pytest.raises(BadInput, match=message):
        spool.read_spool(d)


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b"\xff\xfe", b"null"])
def test_an_unreadable_description_is_bad_input(tmp_path, content):
    d, _td = make_spool(tmp_path, _dead_pid())
    (d / spool.SPOOL_INFO).write_bytes(content)
    with pytest.raises(BadInput, match="not a spool description"):
        spool.read_spool(d)


def test_no_description_says_why(tmp_path):
    d, _td = make_spool(tmp_path, _dead_pid())
    (d / spool.SPOOL_INFO).unlink()
    with pytest.raises(BadInput, match="ended before tracing started"):
        spool.read_spool(d)


def test_a_damaged_kallsyms_only_loses_the_names(tmp_path, original):
    d, _td = make_spool(tmp_path, _dead_pid())
    (d / "kallsyms.zst").write_bytes(b"not zstd")
    assert _events(d) == original


# ------------------------------------------------------------------ registry

def test_registry_names_dead_sessions_only(tmp_path, monkeypatch):
    monkeypatch.setenv("FTSLAB_RUN_DIR", str(tmp_path / "run"))
    assert spool.run_dir() == tmp_path / "run"
    assert spool.registry_orphans() == []           # no registry yet: nothing, no error
    dead, gone = _dead_pid(), _dead_pid()
    d_dead = tmp_path / "a"
    d_dead.mkdir()
    d_live = tmp_path / "b"
    d_live.mkdir()
    spool.registry_add(dead, d_dead)
    spool.registry_add(os.getpid(), d_live)
    spool.registry_add(gone, tmp_path / "never-made")
    spool.registry_add(dead, d_dead)                # again: replaced, not an error
    (tmp_path / "run" / "notes").write_text("not a pid")
    assert spool.registry_orphans() == [(dead, d_dead)]
    # the entry of a dead session whose spool is gone was dropped on the way
    assert not (tmp_path / "run" / str(gone)).is_symlink()
    assert (tmp_path / "run" / str(os.getpid())).is_symlink()
    spool.registry_remove(os.getpid())
    spool.registry_remove(os.getpid())              # twice: no error
    assert sorted(os.listdir(tmp_path / "run")) == sorted([str(dead), "notes"])
