"""Tests of ftslab.trace.tracedat_read/_write against real trace-cmd 3.1.6 files captured on 6.18.

Tests that run /usr/bin/trace-cmd (read-only: ``trace-cmd report``) or read live tracefs skip
when those are missing, unless FTSLAB_KERNEL_TESTS=1 turns the skip into a failure.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftslab.errors import BadInput, OutputError
from ftslab.trace.tracedat_layout import FTSLAB_SECTION_ID, TraceDat
from ftslab.trace.tracedat_read import read_tracedat
from ftslab.trace.tracedat_write import write_tracedat

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
KERNEL_TESTS = os.environ.get("FTSLAB_KERNEL_TESTS") == "1"

V7_ZSTD = FIX / "tracecmd-v7-zstd.dat"
V7_NONE = FIX / "tracecmd-v7-none.dat"
V6 = FIX / "tracecmd-v6.dat"
TWO_BUFFERS = FIX / "tracecmd-v7-zstd-2buffers.dat"

# (file, version, compression, events per CPU) -- counts from `trace-cmd report`, see
# fixtures/README.md.
FIXTURES = [
    (V7_ZSTD, 7, "zstd", {0: 2834, 1: 14007}),
    (V7_NONE, 7, None, {0: 5, 1: 2755}),
    (V6, 6, None, {0: 5, 1: 2755}),
    (TWO_BUFFERS, 7, "zstd", {0: 2, 1: 147}),
]
META = {"kernel_release": "6.18.44-fc-v669", "slabinfo_start": "slabinfo - version: 2.1\n",
        "probes": [{"event": "kmem:kmalloc"}], "lost": {"0": 0, "1": 3},
        "argv": ["ftslab", "record", "--", "ls"], "ünïcode": "ok"}


def _unavailable(why: str) -> None:
    if KERNEL_TESTS:
        pytest.fail(f"{why} (FTSLAB_KERNEL_TESTS=1)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def trace_cmd() -> str:
    path = shutil.which("trace-cmd")
    if path is None:
        _unavailable("trace-cmd is not installed")
    return path


def _report(trace_cmd: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([trace_cmd, "report", *args, str(path)], capture_output=True,
                          timeout=60)


def _count_events(pages: bytes, page_size: int) -> int:
    """Data events in little-endian 64-bit ring-buffer pages (kernel ring_buffer.c
    encoding: 5-bit type_len, 29 padding, 30 time extend, 31 absolute time stamp)."""
    n = 0
    for p in range(0, len(pages), page_size):
        commit = struct.unpack_from("<Q", pages, p + 8)[0] & ((1 << 27) - 1)
        pos, end = p + 16, p + 16 + min(commit, page_size - 16)
        while pos + 4 <= end:
            word = struct.unpack_from("<I", pages, pos)[0]
            kind = word & 31
            if kind == 29:
                if word >> 5 == 0:
                    break
                pos += 4 + struct.unpack_from("<I", pages, pos + 4)[0]
            elif kind >= 30:
                pos += 8
            else:
                n += 1
                pos += 4 + (struct.unpack_from("<I", pages, pos + 4)[0] if kind == 0
                            else 4 * kind)
    return n


def _same_content(a: TraceDat, b: TraceDat) -> None:
    for f in ("little_endian", "long_size", "page_size", "header_page", "header_event",
              "ftrace_formats", "event_formats", "kallsyms", "printk_formats", "cmdlines",
              "cpus", "cpu_data", "buffer_page_size", "buffer_name", "trace_clock", "uname",
              "date", "cpustats"):
        assert getattr(a, f) == getattr(b, f), f


# ---------------------------------------------------------------- reading real files


@pytest.mark.parametrize("path,version,compression,events", FIXTURES,
                         ids=[f[0].name for f in FIXTURES])
def test_read_tracecmd_file(path, version, compression, events):
    td = read_tracedat(path)
    assert (td.version, td.compression) == (version, compression)
    assert td.little_endian and td.long_size == 8 and td.page_size == 4096
    assert td.buffer_page_size == 4096 and td.buffer_name == ""
    assert not td.truncated and td.truncated_detail == ""
    assert td.header_page == (FIX / "header_page").read_text()
    assert td.header_event == (FIX / "header_event").read_text()
    assert "kmem" in td.event_formats
    assert any(t.startswith("name: kmalloc\n") for t in td.event_formats["kmem"])
    assert any(t.startswith("name: function\n") for t in td.ftrace_formats)
    assert " T __kmalloc_noprof\n" in td.kallsyms
    assert td.printk_formats.startswith("0x")
    assert all(line.split(" ", 1)[0].isdigit() for line in td.cmdlines.splitlines())
    assert td.cpus == 2 and sorted(td.cpu_data) == sorted(events)
    for cpu, pages in td.cpu_data.items():
        assert len(pages) % td.buffer_page_size == 0
        assert _count_events(pages, td.buffer_page_size) == events[cpu]
    assert td.trace_clock.startswith("[local] global")
    assert td.uname.startswith("Linux ") and "6.18" in td.uname
    assert td.tracecmd_version.startswith("3.1.6")
    assert sorted(td.cpustats) == [0, 1] and td.cpustats[1].startswith("entries: ")
    assert td.ftslab is None


def test_header_texts_equal_live_kernel(toplevel_expanded, kernel, trace_cmd, tmp_path):
    """A trace.dat that trace-cmd writes on this kernel carries the kernel's own
    header_page and header_event texts, and they read back as the kernel has them.
    (The fixtures' texts are those of the build they were captured on: compared with
    the fixture files above, not with whichever kernel runs the tests.)"""
    from conftest import run_tracecmd
    out = tmp_path / "live.dat"
    cp = run_tracecmd([trace_cmd, "record", "-d", "-k", "-e", "kmem:kmalloc", "-o", str(out),
                       "--", "true"], cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    live = Path("/sys/kernel/tracing/events")
    td = read_tracedat(out)
    assert td.header_page == (live / "header_page").read_text()
    assert td.header_event == (live / "header_event").read_text()


def test_two_buffers_returns_top_buffer():
    td = read_tracedat(TWO_BUFFERS)
    assert td.buffer_name == ""
    assert sum(_count_events(b, 4096) for b in td.cpu_data.values()) == 2 + 147


def test_not_a_tracedat(tmp_path):
    for name, data in [("empty", b""), ("text", b"hello world\n" * 10),
                       ("short", b"\x17\x08\x44trac")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(BadInput, match="is not a trace-cmd trace.dat file"):
            read_tracedat(p)
    with pytest.raises(BadInput, match="cannot read"):
        read_tracedat(tmp_path / "missing.dat")
    with pytest.raises(BadInput, match="cannot read"):
        read_tracedat(tmp_path)
    (tmp_path / "v5").write_bytes(b"\x17\x08\x44tracing5\0" + bytes(64))
    with pytest.raises(BadInput, match="version 5 is not supported"):
        read_tracedat(tmp_path / "v5")


# ---------------------------------------------------------------- writing


@pytest.mark.kernel
@pytest.mark.parametrize("compression", ["zstd", None])
@pytest.mark.parametrize("path", [V7_ZSTD, V7_NONE, V6, TWO_BUFFERS],
                         ids=lambda p: p.name)
def test_write_is_read_by_trace_cmd_identically(trace_cmd, tmp_path, path, compression):
    td = read_tracedat(path)
    td.ftslab = META
    out = tmp_path / "out.dat"
    size = write_tracedat(out, td, compression=compression)
    assert size == out.stat().st_size
    theirs, ours = _report(trace_cmd, path), _report(trace_cmd, out)
    assert ours.returncode == 0 and ours.stderr == b""
    if path == TWO_BUFFERS:     # only the top buffer is carried over
        # (trace-cmd pads the lines to the width of the buffer names it shows)
        theirs_lines = [ln.strip() for ln in theirs.stdout.splitlines()
                        if not ln.startswith(b"ftslab_tdtest_")]
        assert [ln.strip() for ln in ours.stdout.splitlines()] == theirs_lines
    else:
        assert ours.stdout == theirs.stdout
    assert ours.stdout.count(b"kmalloc:") > 100

    back = read_tracedat(out)
    _same_content(td, back)
    assert back.version == 7 and back.compression == compression
    assert back.ftslab == META and not back.truncated
    assert back.tracecmd_version.startswith("ftslab ")


@pytest.mark.kernel
@pytest.mark.parametrize("compression", ["zstd", None])
def test_second_buffer_is_written_as_trace_cmd_writes_one(trace_cmd, tmp_path, compression):
    """record --frees all stores the frees as a second buffer: trace-cmd's own
    two-buffer recording, rewritten with extra_buffers, reads back the same, buffer by
    buffer, and trace-cmd prints the same lines for it (both buffers)."""
    td = read_tracedat(TWO_BUFFERS)
    (other,) = [b for b in td.buffers if b]
    inst = read_tracedat(TWO_BUFFERS, other)
    assert inst.cpu_data and inst.buffer_page_size == td.buffer_page_size
    out = tmp_path / "two.dat"
    write_tracedat(out, td, compression=compression,
                   extra_buffers={other: dict(inst.cpu_data)})
    theirs, ours = _report(trace_cmd, TWO_BUFFERS), _report(trace_cmd, out)
    assert ours.returncode == 0 and ours.stderr == b""
    assert ours.stdout == theirs.stdout
    assert ours.stdout.count(other.encode() + b":") > 100
    back = read_tracedat(out)
    assert back.buffers == ["", other] and back.buffer_name == ""
    _same_content(td, back)
    back_inst = read_tracedat(out, other)
    assert back_inst.buffer_name == other
    assert {c: bytes(d) for c, d in back_inst.cpu_data.items()} == \
        {c: bytes(d) for c, d in inst.cpu_data.items()}
    with pytest.raises(BadInput, match="two buffers named"):
        write_tracedat(tmp_path / "dup.dat", td, extra_buffers={"": {}})


@pytest.mark.kernel
def test_report_stat_identical(trace_cmd, tmp_path):
    out = tmp_path / "out.dat"
    write_tracedat(out, read_tracedat(V7_ZSTD))
    theirs, ours = _report(trace_cmd, V7_ZSTD, "--stat"), _report(trace_cmd, out, "--stat")
    assert ours.stderr == b"" and ours.stdout == theirs.stdout
    assert b"entries: 11831" in ours.stdout


@pytest.mark.kernel
def test_buffer_name_shows_in_trace_cmd_report(trace_cmd, tmp_path):
    """trace-cmd prefixes every line of a named buffer with its name: a recording from a
    private instance must be written with buffer_name "" to look like trace-cmd's own."""
    td = read_tracedat(V7_NONE)
    td.buffer_name = "ftslab_1234"
    out = tmp_path / "named.dat"
    write_tracedat(out, td)
    ours = _report(trace_cmd, out)
    assert ours.stderr == b""
    lines = ours.stdout.splitlines()[1:]
    assert lines and all(ln.startswith(b"ftslab_1234:") for ln in lines)
    assert read_tracedat(out).buffer_name == "ftslab_1234"


def test_metadata_section_sits_before_first_options(tmp_path):
    td = read_tracedat(V7_ZSTD)
    td.ftslab = META
    out = tmp_path / "m.dat"
    write_tracedat(out, td)
    data = out.read_bytes()
    zname_end = data.index(b"\0", data.index(b"zstd\0") + 5) + 1
    options = struct.unpack_from("<Q", data, zname_end)[0]
    sid, flags = struct.unpack_from("<HH", data, zname_end + 8)
    assert sid == FTSLAB_SECTION_ID and flags == 1 and zname_end + 8 < options
    assert read_tracedat(out).ftslab == META


def test_metadata_none_and_zlib_and_big_endian(tmp_path):
    td = read_tracedat(V6)
    out = tmp_path / "z.dat"
    write_tracedat(out, td, compression="zlib", level=6)
    back = read_tracedat(out)
    _same_content(td, back)
    assert back.compression == "zlib" and back.ftslab is None
    # Byte order is the file's: numbers of a big-endian file round-trip too.
    be = dataclasses.replace(td, little_endian=False)
    write_tracedat(out, be, compression="zstd")
    back = read_tracedat(out)
    assert not back.little_endian
    _same_content(be, back)


def test_cpu_sources_stream_from_files(tmp_path):
    td = read_tracedat(V7_ZSTD)
    sources = {}
    for cpu, pages in td.cpu_data.items():
        sources[cpu] = tmp_path / f"cpu{cpu}.raw"
        sources[cpu].write_bytes(pages)
    a, b = tmp_path / "a.dat", tmp_path / "b.dat"
    write_tracedat(a, td)
    write_tracedat(b, dataclasses.replace(td, cpu_data={}), cpu_sources=sources)
    assert a.read_bytes() == b.read_bytes()
    mixed = {0: td.cpu_data[0], 1: str(sources[1])}
    write_tracedat(b, td, cpu_sources=mixed)
    assert a.read_bytes() == b.read_bytes()


def test_zstd_size_matches_trace_cmd(tmp_path):
    td = read_tracedat(V7_ZSTD)
    out = tmp_path / "o.dat"
    ours = write_tracedat(out, td)
    events = sum(_count_events(b, 4096) for b in td.cpu_data.values())
    theirs = V7_ZSTD.stat().st_size
    assert ours / events <= theirs / events * 1.02


def test_writer_errors(tmp_path):
    td = read_tracedat(V7_NONE)
    with pytest.raises(OutputError, match="cannot write"):
        write_tracedat(tmp_path / "no" / "such" / "dir.dat", td)
    if os.path.exists("/dev/full"):
        with pytest.raises(OutputError, match="No space left on device"):
            write_tracedat("/dev/full", td)
    with pytest.raises(BadInput, match="not a multiple"):
        write_tracedat(tmp_path / "x.dat", td, cpu_sources={0: b"x" * 100})
    with pytest.raises(BadInput, match="cannot read the pages of CPU 3"):
        write_tracedat(tmp_path / "x.dat", td, cpu_sources={3: tmp_path / "missing"})
    with pytest.raises(BadInput, match="JSON"):
        write_tracedat(tmp_path / "x.dat", dataclasses.replace(td, ftslab={"x": object()}))
    with pytest.raises(BadInput, match="not supported"):
        write_tracedat(tmp_path / "x.dat", td, compression="lz4")
    with pytest.raises(BadInput, match="power of two"):
        write_tracedat(tmp_path / "x.dat", dataclasses.replace(td, buffer_page_size=1000))


# ---------------------------------------------------------------- damaged input


def _own_file(tmp_path: Path, compression: str | None) -> Path:
    td = read_tracedat(V7_ZSTD)
    td.ftslab = META
    out = tmp_path / f"own-{compression}.dat"
    write_tracedat(out, td, compression=compression)
    return out


def _check_cuts(tmp_path: Path, path: Path, cuts: int = 150) -> dict[str, int]:
    data = path.read_bytes()
    full = read_tracedat(path)
    seen = {"bad": 0, "truncated": 0, "pages": 0}
    step = max(1, len(data) // cuts)
    cut_file = tmp_path / "cut.dat"
    for n in list(range(0, len(data), step)) + [len(data) - 1]:
        cut_file.write_bytes(data[:n])
        try:
            td = read_tracedat(cut_file)
        except BadInput:
            seen["bad"] += 1
            continue
        assert td.truncated and td.truncated_detail, n
        seen["truncated"] += 1
        for cpu, pages in td.cpu_data.items():
            assert len(pages) % td.buffer_page_size == 0, n
            assert full.cpu_data[cpu].startswith(pages), n
            seen["pages"] += len(pages) // td.buffer_page_size
    return seen


@pytest.mark.parametrize("path", [V7_ZSTD, V7_NONE, V6, TWO_BUFFERS], ids=lambda p: p.name)
def test_truncated_tracecmd_files(tmp_path, path):
    seen = _check_cuts(tmp_path, path)
    assert seen["truncated"] > seen["bad"]
    if path in (V6,):   # v6 keeps its CPU index before the data: cuts keep pages
        assert seen["pages"] > 0


@pytest.mark.parametrize("compression", ["zstd", None])
def test_truncated_own_files_recover_pages(tmp_path, compression):
    """A file of ours cut inside its ring-buffer data has lost the BUFFER option (it is
    written after the data); the pages are found through ftslab's layout instead."""
    path = _own_file(tmp_path, compression)
    seen = _check_cuts(tmp_path, path)
    assert seen["pages"] > 0
    data = path.read_bytes()
    cut = tmp_path / "half.dat"
    cut.write_bytes(data[:len(data) * 2 // 3])
    td = read_tracedat(cut)
    assert td.truncated and "ftslab's layout" in td.truncated_detail
    assert td.ftslab == META and td.cpu_data[0] == read_tracedat(path).cpu_data[0]


def test_killed_while_writing(tmp_path):
    """SIGKILL during the ring-buffer data leaves the two fields that are filled in at the
    end unset: the BUFFER section's size and the first options' link to the second."""
    path = _own_file(tmp_path, "zstd")
    data = bytearray(path.read_bytes())
    ptr = data.index(b"\0", data.index(b"zstd\0") + 5) + 1
    options1 = struct.unpack_from("<Q", data, ptr)[0]
    size1 = struct.unpack_from("<Q", data, options1 + 8)[0]
    buffer_sec = options1 + 16 + size1
    assert struct.unpack_from("<H", data, buffer_sec)[0] == 3
    struct.pack_into("<Q", data, buffer_sec - 8, 0)      # DONE: no next options
    struct.pack_into("<Q", data, buffer_sec + 8, 0)      # BUFFER section size
    full = read_tracedat(path)
    for keep in (buffer_sec + 100, len(data) * 3 // 4, len(data) - 200):
        p = tmp_path / "killed.dat"
        p.write_bytes(bytes(data[:keep]))
        td = read_tracedat(p)
        assert td.truncated and td.ftslab == META and td.cpus == 2
        for cpu, pages in td.cpu_data.items():
            assert len(pages) % 4096 == 0 and full.cpu_data[cpu].startswith(pages)
    assert td.cpu_data[0] == full.cpu_data[0] and len(td.cpu_data[1]) > 0


def test_lying_sizes_do_not_allocate(tmp_path):
    data = bytearray(_own_file(tmp_path, "zstd").read_bytes())
    start = data.index(b"zstd\0") + 5
    start = data.index(b"\0", start) + 1 + 8        # first section: ftslab's
    struct.pack_into("<I", data, start + 20, 0xFFFFFFF0)   # its uncompressed size
    p = tmp_path / "lie.dat"
    p.write_bytes(bytes(data))
    with pytest.raises(BadInput):
        read_tracedat(p)


_REAL = [p.read_bytes() for p in (V7_ZSTD, TWO_BUFFERS)]


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048), magic=st.booleans())
def test_fuzz_arbitrary_bytes(tmp_path, data, magic):
    p = tmp_path / "fuzz.dat"
    p.write_bytes((b"\x17\x08\x44tracing" if magic else b"") + data)
    try:
        read_tracedat(p)
    except BadInput:
        pass


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(_REAL) - 1),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 7),
                                st.booleans()), min_size=1, max_size=8),
       cut=st.none() | st.floats(0, 1))
def test_fuzz_bit_flips_of_real_file(tmp_path, which, flips, cut):
    data = bytearray(_REAL[which])
    head = 8192     # most structure is in the first pages: aim half the flips there
    for where, bit, early in flips:
        pos = int(where * (head if early else len(data)))
        data[pos] ^= 1 << bit
    if cut is not None:
        data = data[:int(cut * len(data))]
    p = tmp_path / "flip.dat"
    p.write_bytes(bytes(data))
    try:
        td = read_tracedat(p)
    except BadInput:
        return
    for pages in td.cpu_data.values():
        assert len(pages) % td.buffer_page_size == 0


def test_parallel_chunk_decompression_gives_the_same_pages(monkeypatch):
    """Large recordings decompress their chunks in two threads: same bytes as serial."""
    from ftslab.trace import tracedat_read
    from ftslab.trace import zstd_pages
    path = FIX / "tracecmd-v7-zstd.dat"
    # patched where the reader looks them up
    monkeypatch.setattr(tracedat_read, "PARALLEL_MIN_CHUNKS", 10 ** 9)
    serial = tracedat_read.read_tracedat(path)
    monkeypatch.setattr(tracedat_read, "PARALLEL_MIN_CHUNKS", 1)
    calls = []
    real = zstd_pages.zstd_parallel
    monkeypatch.setattr(tracedat_read, "zstd_parallel", lambda *a: calls.append(1) or real(*a))
    parallel = tracedat_read.read_tracedat(path)
    assert calls, "the parallel path was not taken"
    assert serial.cpu_data.keys() == parallel.cpu_data.keys()
    for cpu in serial.cpu_data:
        assert bytes(serial.cpu_data[cpu]) == bytes(parallel.cpu_data[cpu])
