"""ftslab.trace.textparse: real 6.18 text captures, line variants, and fuzzing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ftslab.errors import FtslabError, ParseError
from ftslab.trace.formats import parse_format
from ftslab.dataset import Event, Loss
from ftslab.trace.textparse import TextParser, parse_lines, parse_text

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
EVENTS = ["kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
          "mm_page_free"]
TRACES = ["kmem-trace.txt", "kmem-trace-tgid-noirq.txt", "kmem-trace_pipe-lost.txt",
          "kmem-trace-overwrite.txt"]


@pytest.fixture(scope="module")
def formats():
    return {e: parse_format((FIX / f"kmem-{e}.format").read_text(), "kmem") for e in EVENTS}


def text(name: str) -> str:
    return (FIX / name).read_text()


def event_lines(name: str) -> list[str]:
    """The capture's event lines, picked by a rule independent of the parser."""
    return [ln for ln in text(name).splitlines()
            if ln.strip() and not ln.startswith("#") and not ln.startswith("CPU:")]


@pytest.mark.parametrize("name", TRACES)
@pytest.mark.parametrize("with_formats", [True, False])
def test_every_event_line_is_an_event(name, with_formats, formats):
    parser = TextParser(formats if with_formats else None)
    events = list(parser.parse(text(name).splitlines()))
    assert len(events) == len(event_lines(name))
    assert parser.unparsed == 0 and parser.fallback == 0
    assert {e.name for e in events} <= set(EVENTS)
    assert all(e.system == ("kmem" if with_formats else "") for e in events)
    # timestamps: microsecond text -> ns, and the buffer is read in time order
    assert all(e.ts % 1000 == 0 for e in events)
    assert [e.ts for e in events] == sorted(e.ts for e in events)


def by_ts(events, ts, name):
    (ev,) = [e for e in events if e.ts == ts and e.name == name]
    return ev


def test_known_lines_field_by_field(formats):
    events = list(parse_lines(text("kmem-trace.txt").splitlines(), formats))
    # ftslab_capture.-3838    [000] .....   237.278835: kmalloc: call_site=eventfs_set_attr+
    # 0x10d/0x140 ptr=00000000bc1b2fbd bytes_req=60 bytes_alloc=64
    # gfp_flags=GFP_NOFS|__GFP_ZERO node=-1 accounted=false
    ev = by_ts(events, 237_278_835_000, "kmalloc")
    assert (ev.cpu, ev.pid, ev.comm, ev.system) == (0, 3838, "ftslab_capture.", "kmem")
    assert ev.fields == {"call_site": "eventfs_set_attr+0x10d/0x140", "ptr": 0xbc1b2fbd,
                         "bytes_req": 60, "bytes_alloc": 64,
                         "gfp_flags": 0xc40 | 0x100, "node": -1, "accounted": 0}
    # 237.279052: kmem_cache_alloc: call_site=alloc_empty_file+0x3c/0x110
    # ptr=00000000c21d0f13 name=filp bytes_req=184 bytes_alloc=192 gfp_flags=GFP_KERNEL
    # node=-1 accounted=true
    ev = by_ts(events, 237_279_052_000, "kmem_cache_alloc")
    assert ev.fields == {"call_site": "alloc_empty_file+0x3c/0x110", "ptr": 0xc21d0f13,
                         "name": "filp", "bytes_req": 184, "bytes_alloc": 192,
                         "gfp_flags": 0xcc0, "node": -1, "accounted": 1}
    # 237.279841: mm_page_alloc: page=00000000eea25c97 pfn=0x144cfb order=0 migratetype=0
    # gfp_flags=GFP_KERNEL_ACCOUNT|__GFP_ZERO|__GFP_COMP
    ev = by_ts(events, 237_279_841_000, "mm_page_alloc")
    assert ev.fields == {"page": 0xeea25c97, "pfn": 0x144cfb, "order": 0, "migratetype": 0,
                         "gfp_flags": 0x400cc0 | 0x100 | 0x40000}


def test_without_formats_values_stay_as_printed():
    events = list(parse_lines(text("kmem-trace.txt").splitlines()))
    ev = by_ts(events, 237_278_835_000, "kmalloc")
    assert ev.fields == {"call_site": "eventfs_set_attr+0x10d/0x140", "ptr": 0xbc1b2fbd,
                         "bytes_req": 60, "bytes_alloc": 64,
                         "gfp_flags": "GFP_NOFS|__GFP_ZERO", "node": -1,
                         "accounted": "false"}
    ev = by_ts(events, 237_279_841_000, "mm_page_alloc")
    assert ev.fields["pfn"] == 0x144cfb and ev.fields["page"] == 0xeea25c97


def test_tgid_and_no_irq_info(formats):
    parser = TextParser(formats)
    events = list(parser.parse(text("kmem-trace-tgid-noirq.txt").splitlines()))
    # ftslab_capture.-3844    (   3844) [001]    237.341037: kmem_cache_alloc:
    # call_site=__d_alloc+0x2d/0x230 ptr=00000000746ae410 name=dentry ...
    ev = [e for e in events if e.fields.get("call_site") == "__d_alloc+0x2d/0x230"][0]
    assert (ev.pid, ev.cpu, ev.ts, ev.comm) == (3844, 1, 237_341_037_000, "ftslab_capture.")
    assert ev.fields["name"] == "dentry" and ev.fields["ptr"] == 0x746ae410
    assert parser.tgids[3844] == 3844
    assert parser.metadata().extra["tgids"][3844] == 3844


def test_trace_pipe_lost_lines(formats):
    ds = parse_text(text("kmem-trace_pipe-lost.txt"), formats)
    assert ds.meta.lost == [Loss(cpu=0, lost=1057), Loss(cpu=1, lost=802)]
    assert ds.meta.total_lost == 1859
    assert ds.meta.source == "text" and ds.meta.unparsed == 0


def test_overwritten_buffer(formats):
    ds = parse_text(text("kmem-trace-overwrite.txt"), formats)
    assert ds.meta.extra["buffer_started"] == [1]
    assert ds.meta.extra["entries_written"] == 501031
    # the header is the only sign of the overwrite, and it is not per CPU
    assert ds.meta.lost == [Loss(cpu=-1, lost=501031 - 48438)]
    kfree = ds.columns[("kmem", "kfree")]
    assert 0 in kfree.fields["ptr"]  # kfree(NULL) prints ptr=0000000000000000


def test_dataset_columns(formats):
    ds = parse_text(text("kmem-trace.txt"), formats)
    assert ds.events == len(event_lines("kmem-trace.txt"))
    assert set(ds.formats) == {("kmem", e) for e in EVENTS}
    km = ds.columns[("kmem", "kmalloc")]
    assert km.ts.dtype == np.uint64 and km.cpu.dtype == np.int32 and km.pid.dtype == np.int32
    assert km.fields["bytes_req"].dtype == np.uint64
    assert km.fields["node"].dtype == np.int64
    assert km.fields["gfp_flags"].dtype == np.uint64
    assert km.fields["call_site"].dtype == object
    assert len(km) == sum(" kmalloc: " in ln for ln in event_lines("kmem-trace.txt"))
    kc = ds.columns[("kmem", "kmem_cache_alloc")]
    assert set(kc.fields["name"]) >= {"filp", "dentry", "names_cache"}
    assert ds.meta.cmdlines[3838] == "ftslab_capture."
    assert ds.meta.extra["cpus"] == 2

    plain = parse_text(text("kmem-trace.txt").splitlines())
    assert ("", "kmalloc") in plain.columns and plain.formats == {}
    assert plain.columns[("", "kmalloc")].fields["gfp_flags"].dtype == object


LINE = ("          <idle>-0       [001] d.h2.  1234.567890: kmalloc: "
        "call_site=alloc_pipe_info+0x2a/0x1c0 ptr=00000000c0ffee12 bytes_req=64 "
        "bytes_alloc=64 gfp_flags=GFP_KERNEL_ACCOUNT node=-1 accounted=true")


def test_brief_line(formats):
    ev = TextParser(formats).parse_line(LINE)
    assert (ev.comm, ev.pid, ev.cpu, ev.ts) == ("<idle>", 0, 1, 1_234_567_890_000)
    assert ev.fields["gfp_flags"] == 0x400cc0 and ev.fields["accounted"] == 1
    assert ev.fields["ptr"] == 0xc0ffee12


@pytest.mark.parametrize("line, comm, pid, ts", [
    # comm with blanks and dashes: the pid is the last -NNN before [CPU]
    (" my-prog x-12-34   [000] .....   1.000001: kfree: call_site=a+0x1/0x2 ptr=0000000000000001",
     "my-prog x-12", 34, 1_000_001_000),
    ("           <...>-77     (-------) [001] d..1.     5.5: kfree: call_site=a+0x1/0x2 "
     "ptr=0000000000000001", "<...>", 77, 5_500_000_000),
    # old kernels: 4-character irq-info column; counter clock: bare count
    ("  bash-9 [000] d.h1 123456789: kfree: call_site=a+0x1/0x2 ptr=0000000000000001",
     "bash", 9, 123456789),
    # trace-cmd style nanoseconds
    ("  bash-9 [000] 7.123456789: kfree: call_site=a+0x1/0x2 ptr=0000000000000001",
     "bash", 9, 7_123_456_789),
])
def test_line_variants(line, comm, pid, ts, formats):
    parser = TextParser(formats)
    ev = parser.parse_line(line)
    assert (ev.comm, ev.pid, ev.ts) == (comm, pid, ts)
    assert ev.fields == {"call_site": "a+0x1/0x2", "ptr": 1}
    assert ("<...>" in parser.cmdlines.values()) is False


def test_kprobe_lines():
    kp = parse_format(
        "name: kmalloc\nID: 2011\nformat:\n"
        "\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;\n"
        "\tfield:u64 size;\toffset:16;\tsize:8;\tsigned:0;\n"
        "\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:1;\n\n"
        'print fmt: "(%lx) size=%Lu name=\\"%s\\"", REC->__probe_ip, REC->size, '
        "__get_str(name)\n", "ftslab_1")
    kr = parse_format(
        "name: kmalloc_ret\nID: 2012\nformat:\n"
        "\tfield:unsigned long __probe_func;\toffset:8;\tsize:8;\tsigned:0;\n"
        "\tfield:unsigned long __probe_ret_ip;\toffset:16;\tsize:8;\tsigned:0;\n"
        "\tfield:u64 ptr;\toffset:24;\tsize:8;\tsigned:0;\n\n"
        'print fmt: "(%lx <- %lx) ptr=0x%Lx", REC->__probe_func, REC->__probe_ret_ip, '
        "REC->ptr\n", "ftslab_1")
    parser = TextParser({"kmalloc": kp, ("ftslab_1", "kmalloc_ret"): kr})
    ev = parser.parse_line("  cat-5 [001] d..1. 10.000001: kmalloc: (__kmalloc+0x0/0x150) "
                           'size=64 name="kmalloc-64 x"')
    assert ev.system == "ftslab_1"
    assert ev.fields == {"__probe_ip": "__kmalloc+0x0/0x150", "size": 64,
                         "name": "kmalloc-64 x"}
    ev = parser.parse_line("  cat-5 [001] d..1. 10.000002: kmalloc_ret: "
                           "(alloc_pipe_info+0x2a/0x1c0 <- __kmalloc) ptr=0xffff888100a3c000")
    assert ev.fields == {"__probe_ret_ip": "alloc_pipe_info+0x2a/0x1c0",
                         "__probe_func": "__kmalloc", "ptr": 0xffff888100a3c000}
    assert parser.fallback == 0
    # without formats the same lines split generically
    ev = TextParser().parse_line("  cat-5 [001] d..1. 10.000002: kmalloc_ret: "
                                 "(alloc_pipe_info+0x2a/0x1c0 <- __kmalloc) ptr=0xffff888100a3c000")
    assert ev.fields == {"__probe_ret_ip": "alloc_pipe_info+0x2a/0x1c0",
                         "__probe_func": "__kmalloc", "ptr": 0xffff888100a3c000}


def test_other_kernel_text_falls_back(formats):
    # a kmalloc line of a kernel whose print fmt differs (6.1: no "accounted")
    parser = TextParser(formats)
    ev = parser.parse_line("  cat-5 [001] ..... 10.000001: kmalloc: call_site=f+0x1/0x2 "
                           "ptr=00000000000000ff bytes_req=8 bytes_alloc=8 "
                           "gfp_flags=GFP_KERNEL node=-1")
    assert parser.fallback == 1
    assert ev.fields == {"call_site": "f+0x1/0x2", "ptr": 0xff, "bytes_req": 8,
                         "bytes_alloc": 8, "gfp_flags": 0xcc0, "node": -1}


def test_unparsed_counted_and_strict(formats):
    lines = ["# tracer: nop", "", "garbage here", LINE, "  => __kmalloc_noprof+0x1/0x2",
             "##### CPU 1 buffer started ####"]
    parser = TextParser(formats)
    events = list(parser.parse(lines))
    assert len(events) == 1 and parser.unparsed == 2
    assert parser.unparsed_samples[0] == (3, "garbage here")
    assert parser.metadata().unparsed == 2
    ds = parse_text("\n".join(lines), formats)
    assert ds.meta.unparsed == 2 and ds.events == 1
    with pytest.raises(ParseError, match="line 3"):
        list(parse_lines(lines, formats, strict=True))
    with pytest.raises(ParseError):
        parse_text(lines, formats, strict=True)


@pytest.mark.parametrize("bad", [[b"bytes line"], [None], 42])
def test_non_text_input(bad):
    with pytest.raises(ParseError):
        parse_text(bad)


def test_bad_formats_argument():
    with pytest.raises(ParseError):
        TextParser({"kmalloc": "not a format"})


def test_event_is_frozen(formats):
    ev = TextParser(formats).parse_line(LINE)
    assert isinstance(ev, Event)
    with pytest.raises(AttributeError):
        ev.pid = 1  # type: ignore[misc]


# ------------------------------------------------------------------------- fuzzing

REAL = event_lines("kmem-trace.txt")[:200] + event_lines("kmem-trace-tgid-noirq.txt")[:50]
PIECES = st.sampled_from(["-", "[", "]", "(", ")", " ", ":", "=", "0x", "1", "-1",
                          "GFP_KERNEL", "|", "kmalloc", "99999999999999999999999", ".",
                          "\t", "\r", "\x00", "#", "CPU:1 [LOST 9 EVENTS]", "\u0663", "<...>"])


@st.composite
def mutated_line(draw):
    line = draw(st.sampled_from(REAL))
    pos = draw(st.integers(0, len(line)))
    cut = draw(st.integers(0, 12))
    return line[:pos] + draw(PIECES | st.text(max_size=8)) + line[pos + cut:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=120), mutated_line()), max_size=8),
       st.booleans())
def test_fuzz_only_ftslab_errors(lines, strict):
    fmts = {e: parse_format((FIX / f"kmem-{e}.format").read_text(), "kmem") for e in EVENTS}
    for f in (fmts, None):
        try:
            ds = parse_text(lines, f, strict=strict)
        except FtslabError:
            assert strict
            continue
        assert ds.events + ds.meta.unparsed <= len(lines)
        try:
            parse_text("\n".join(lines), f)
        except FtslabError:
            pytest.fail("non-strict parse_text raised")
