"""stream's page decoder (ftslab/session/stream.py _PageDecoder) on real ring-buffer pages.

The pages are those of real recordings (tests/fixtures/6.18: ftslab's own and
trace-cmd's trace.dat files, which keep each CPU's trace_pipe_raw pages as the kernel
handed them over).  ``replay_session`` lays them out as a tracefs tree in a temp dir:
the recording's header_page/header_event and saved_cmdlines at the root and each CPU's
pages in ``instances/NAME/per_cpu/cpuN/trace_pipe_raw``, a regular file read page by
page as the decoder reads the kernel's.  What the decoder makes of them must be what
``ftslab.read`` decodes from the same file, and the three stream renderings must say
what the events say.  No root needed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

import ftslab
from ftslab.session import signals
from ftslab.kernel import tracefs as tracefs_mod
from ftslab.session import signals
from ftslab.session import stream
from ftslab.trace.formats import parse_format
from ftslab.cli.render import event_to_json, event_to_seed, event_to_text
from ftslab.session.stream import _PageDecoder
from ftslab.trace.tracedat_read import read_tracedat
from ftslab.kernel.tracefs import Instance, Tracefs

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
RECORDINGS = ["ftslab-open200.dat", "tracecmd-v7-none.dat", "tracecmd-v7-zstd.dat",
              "tracecmd-v6.dat"]
# trace-cmd report counts of ftslab-open200.dat, from tests/fixtures/README.md
OPEN200_COUNTS = {"kfree": 1342, "kmalloc": 939, "kmem_cache_alloc": 1681,
                  "kmem_cache_free": 1982, "mm_page_alloc": 1863, "mm_page_free": 2960}
INSTANCE = "ftslab_999999"


def replay_session(tmp_path: Path, recording: Path, cpus=None):
    """(session, TraceDat): a session-shaped object over a tracefs tree holding the
    recording's pages, as stream's and top's readers take it from run_session."""
    td = read_tracedat(recording)
    root = tmp_path / "tracing"
    (root / "events").mkdir(parents=True)
    (root / "events" / "header_page").write_text(td.header_page)
    (root / "events" / "header_event").write_text(td.header_event)
    (root / "saved_cmdlines").write_text(td.cmdlines)
    cpus = sorted(td.cpu_data) if cpus is None else cpus
    for c in cpus:
        d = root / "instances" / INSTANCE / "per_cpu" / f"cpu{c}"
        d.mkdir(parents=True)
        (d / "trace_pipe_raw").write_bytes(bytes(td.cpu_data.get(c, b"")))
    formats = {}
    for system, texts in td.event_formats.items():
        for text in texts:
            f = parse_format(text, system)
            formats[(system, f.name)] = text
    tfs = Tracefs(root)
    return SimpleNamespace(tracefs=tfs, instance=Instance(tfs, INSTANCE), free_instance=None,
                           cpus=cpus, formats=formats), td


def tasks_gone(monkeypatch, module) -> None:
    """The recording's tasks have exited (their pids may be anything on this machine):
    ``module``'s /proc/PID/comm reads fail, as for a task that exited, and the reader
    falls back to saved_cmdlines."""
    from ftslab.errors import FtslabError

    def read_comm(pid):
        raise FtslabError(f"/proc/{pid}/comm: no such process")
    monkeypatch.setattr(module, "read_comm", read_comm)


@pytest.fixture
def no_proc_comm(monkeypatch):
    """stream's decoder with the recording's tasks gone, and no stop requested."""
    tasks_gone(monkeypatch, stream)
    no_stop(monkeypatch)


def no_stop(monkeypatch) -> list:
    """No stop request pending, whatever an earlier test left in capture's list: the
    decoder would drain for DRAIN_S only and stop.  stream.py holds the list under its
    own name: both names get the same new list."""
    fresh: list = []
    monkeypatch.setattr(signals, "stop_requested", fresh)
    monkeypatch.setattr(signals, "stop_requested", fresh)
    return fresh


def _decode_all(session) -> tuple[_PageDecoder, list]:
    got: list = []
    d = _PageDecoder(session, got.append)
    try:
        for c in session.cpus:
            d.flush(c)
    finally:
        d.close()
    return d, got


def _key(ev):
    return (ev.ts, ev.cpu, ev.pid, ev.comm, ev.system, ev.name, dict(ev.fields))


@pytest.mark.parametrize("name", RECORDINGS)
def test_decoder_gives_what_read_gives(tmp_path, no_proc_comm, name):
    session, td = replay_session(tmp_path, FIX / name)
    d, got = _decode_all(session)
    want = list(ftslab.read(FIX / name))
    assert len(got) == len(want) == d.events > 0
    for c in session.cpus:  # per CPU in the order the pages hold them
        assert [_key(e) for e in got if e.cpu == c] == [_key(e) for e in want if e.cpu == c]
    assert d.lost == ftslab.load(FIX / name).meta.total_lost
    assert not d.fds  # closed


def test_decoder_counts_match_trace_cmds(tmp_path, no_proc_comm):
    session, _td = replay_session(tmp_path, FIX / "ftslab-open200.dat")
    _d, got = _decode_all(session)
    counts: dict[str, int] = {}
    for ev in got:
        counts[ev.name] = counts.get(ev.name, 0) + 1
    assert counts == OPEN200_COUNTS
    # comms from saved_cmdlines: the recorded command is there by name
    assert {e.comm for e in got if e.name == "kmalloc"} >= {"python3"}


def test_decoder_reads_a_page_at_a_time_and_stops_at_max_pages(tmp_path, no_proc_comm,
                                                               monkeypatch):
    # one pump() decodes for PUMP_SLICE_S at most: on a loaded machine three pages may
    # take longer, and max_pages is what is checked here
    monkeypatch.setattr(stream, "PUMP_SLICE_S", 3600.0)
    session, td = replay_session(tmp_path, FIX / "ftslab-open200.dat")
    got: list = []
    d = _PageDecoder(session, got.append)
    try:
        cpu = session.cpus[0]
        moved = d.pump(cpu, max_pages=3)
        assert moved == 3 * td.buffer_page_size
        first3 = len(got)
        assert 0 < first3 < d.events + 1
        d.flush(cpu)
        assert d.pump(cpu) == 0  # nothing left: the file is at its end
    finally:
        d.close()
    assert len(got) == sum(OPEN200_COUNTS.values())


def test_comm_of_a_running_task_comes_from_proc(tmp_path):
    import os
    session, _td = replay_session(tmp_path, FIX / "ftslab-open200.dat")
    d = _PageDecoder(session, lambda ev: None)
    try:
        with open(f"/proc/{os.getpid()}/comm") as f:
            assert d._comm(os.getpid()) == f.read().strip()
        assert d._comm(0) == "<idle>"
    finally:
        d.close()


def test_a_missing_cpu_file_closes_what_was_opened(tmp_path):
    from ftslab.errors import TracefsUnavailable
    session, _td = replay_session(tmp_path, FIX / "tracecmd-v7-none.dat")
    shutil.rmtree(session.instance.path / "per_cpu" / f"cpu{session.cpus[-1]}")
    import os
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(TracefsUnavailable, match="trace_pipe_raw"):
        _PageDecoder(session, lambda ev: None)
    assert set(os.listdir("/proc/self/fd")) <= before


# ------------------------------------------------------------------ renderings

_TEXT = re.compile(r"^(?P<comm>.*)-(?P<pid>\d+) \[(?P<cpu>\d{3})\] (?P<s>\d+)\.(?P<us>\d{6}): "
                   r"(?P<sys>\w+):(?P<name>\w+)(?P<rest>( \w+=\S*)*)$")


@pytest.fixture(scope="module")
def open200(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    no_stop(mp)
    real = tracefs_mod.read_text_file
    mp.setattr(tracefs_mod, "read_text_file",
               lambda p, *a, **k: (_ for _ in ()).throw(FileNotFoundError(p))
               if str(p).startswith("/proc/") else real(p, *a, **k))
    try:
        session, _td = replay_session(tmp_path_factory.mktemp("s"),
                                      FIX / "ftslab-open200.dat")
        _d, got = _decode_all(session)
    finally:
        mp.undo()
    return got, ftslab.load(FIX / "ftslab-open200.dat").symbolize, _td.page_size


def test_json_lines_carry_every_field(open200):
    got, sym, _psize = open200
    seen_sym = 0
    for ev in got:
        obj = json.loads(event_to_json(ev, sym))
        assert (obj["ts"], obj["cpu"], obj["pid"], obj["comm"]) == (ev.ts, ev.cpu, ev.pid,
                                                                   ev.comm)
        assert obj["event"] == f"{ev.system}:{ev.name}"
        for k, v in ev.fields.items():
            assert obj[k] == v
        if "call_site" in ev.fields:
            assert obj["call_site_sym"] == sym(ev.fields["call_site"] & (2**64 - 1))
            seen_sym += obj["call_site_sym"] is not None
    assert seen_sym > 0  # the recording's kallsyms name its call sites


def test_text_lines_say_what_the_event_says(open200):
    got, sym, _psize = open200
    for ev in got:
        line = event_to_text(ev, sym)
        m = _TEXT.match(line)
        assert m, line
        assert (m["comm"], int(m["pid"]), int(m["cpu"])) == (ev.comm, ev.pid, ev.cpu)
        assert int(m["s"]) * 10**6 + int(m["us"]) == ev.ts // 1000
        assert (m["sys"], m["name"]) == (ev.system, ev.name)
        pairs = dict(p.split("=", 1) for p in m["rest"].split())
        assert list(pairs) == list(ev.fields)
        if "bytes_req" in ev.fields:
            assert int(pairs["bytes_req"]) == ev.fields["bytes_req"]
        if "call_site" in ev.fields and sym(ev.fields["call_site"]):
            assert pairs["call_site"] == sym(ev.fields["call_site"])


def test_seed_lines_are_the_allocations(open200):
    got, _sym, psize = open200
    lines = [(ev, event_to_seed(ev, psize)) for ev in got]
    printed = [(ev, s) for ev, s in lines if s is not None]
    assert all(ev.name.endswith("alloc") or ev.name == "kmalloc" for ev, _s in printed)
    assert not [ev for ev, s in lines if s is None and ev.name in ("kmalloc",
                                                                   "kmem_cache_alloc")]
    seed = re.compile(r"^\[(\w+)\]: Process '(.*)' with PID (\d+) allocated (\d+) bytes")
    total = 0
    for ev, s in printed:
        m = seed.match(s)
        assert m, s
        assert (m[2], int(m[3])) == (ev.comm, ev.pid)
        total += int(m[4])
    want = sum(ev.fields["bytes_req"] for ev in got
               if ev.name in ("kmalloc", "kmem_cache_alloc"))
    want += sum(psize << ev.fields["order"] for ev in got if ev.name == "mm_page_alloc"
                and ev.fields["pfn"] & (2**64 - 1) not in (0, 2**64 - 1))
    assert total == want > 0


def test_a_record_shorter_than_its_format_is_counted_not_streamed(tmp_path, no_proc_comm):
    """stream decodes as read() does: a record cut short (test_load_fields) is no event,
    and the decoder counts it (the CLI warns with that count)."""
    from test_loader_fields import _with_short_records
    path, cut = _with_short_records(tmp_path, [3, 12])
    session, _td = replay_session(tmp_path, path)
    d, got = _decode_all(session)
    want = list(ftslab.read(path))
    assert len(got) == len(want) == d.events
    assert len(list(ftslab.read(FIX / "ftslab-open200.dat"))) - d.events == len(cut) == 2
    assert d.undecodable == 2
