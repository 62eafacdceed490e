"""ftslab.trace.formats: the grammar of tracefs format files, on real 6.18 files and edge cases."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ftslab.errors import ParseError
from ftslab.trace.formats import MAX_LAYOUT_BYTES, EventFormat, Field, HeaderEvent, HeaderPage, parse_format, parse_header_event, parse_header_page

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
EVENTS = ["kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
          "mm_page_free"]


def read(name: str) -> str:
    return (FIX / name).read_text()


def fmt_text(event: str) -> str:
    return read(f"kmem-{event}.format")


COMMON = [("common_type", "unsigned short", 0, 2, False),
          ("common_flags", "unsigned char", 2, 1, False),
          ("common_preempt_count", "unsigned char", 3, 1, False),
          ("common_pid", "int", 4, 4, True)]

# Copied by hand from the 6.18 files: (name, type, offset, size, signed).
EXPECTED = {
    "kmalloc": (658, [("call_site", "unsigned long", 8, 8, False),
                      ("ptr", "const void *", 16, 8, False),
                      ("bytes_req", "size_t", 24, 8, False),
                      ("bytes_alloc", "size_t", 32, 8, False),
                      ("gfp_flags", "unsigned long", 40, 8, False),
                      ("node", "int", 48, 4, True)]),
    "kmem_cache_alloc": (659, [("call_site", "unsigned long", 8, 8, False),
                               ("ptr", "const void *", 16, 8, False),
                               ("name", "__data_loc char[]", 24, 4, False),
                               ("bytes_req", "size_t", 32, 8, False),
                               ("bytes_alloc", "size_t", 40, 8, False),
                               ("gfp_flags", "unsigned long", 48, 8, False),
                               ("node", "int", 56, 4, True),
                               ("accounted", "bool", 60, 1, False)]),
    "kfree": (657, [("call_site", "unsigned long", 8, 8, False),
                    ("ptr", "const void *", 16, 8, False)]),
    "kmem_cache_free": (656, [("call_site", "unsigned long", 8, 8, False),
                              ("ptr", "const void *", 16, 8, False),
                              ("name", "__data_loc char[]", 24, 4, False)]),
    "mm_page_alloc": (653, [("pfn", "unsigned long", 8, 8, False),
                            ("order", "unsigned int", 16, 4, False),
                            ("gfp_flags", "unsigned long", 24, 8, False),
                            ("migratetype", "int", 32, 4, True)]),
    "mm_page_free": (655, [("pfn", "unsigned long", 8, 8, False),
                           ("order", "unsigned int", 16, 4, False)]),
}


def layout(fields) -> list[tuple]:
    return [(f.name, f.type, f.offset, f.size, f.signed) for f in fields]


@pytest.mark.parametrize("event", EVENTS)
def test_real_format_files(event):
    fmt = parse_format(fmt_text(event), "kmem")
    ev_id, fields = EXPECTED[event]
    assert (fmt.system, fmt.name, fmt.id) == ("kmem", event, ev_id)
    assert layout(fmt.common_fields) == COMMON
    assert layout(fmt.fields) == fields
    raw_print = fmt_text(event).split("print fmt: ", 1)[1].rstrip("\n")
    assert fmt.print_fmt == raw_print
    assert all(f.signed_given for f in fmt.fields + fmt.common_fields)


@pytest.mark.parametrize("event", EVENTS)
def test_real_format_matches_line_oracle(event):
    """An independent, naive reading of every field line agrees with the grammar."""
    text = fmt_text(event)
    oracle = []
    for line in text.splitlines():
        if line.startswith("\tfield:"):
            parts = dict(p.split(":", 1) for p in line.strip().rstrip(";").split(";\t"))
            decl = parts["field"]
            oracle.append((decl.rsplit(" ", 1)[1], int(parts["offset"]),
                           int(parts["size"]), parts["signed"] == "1"))
    fmt = parse_format(text)
    got = [(f.name, f.offset, f.size, f.signed) for f in fmt.common_fields + fmt.fields]
    assert got == oracle
    assert fmt.system == ""


def test_data_loc_and_strings():
    fmt = parse_format(fmt_text("kmem_cache_alloc"))
    name = fmt.field("name")
    assert name.data_loc and not name.rel_loc and name.is_string and name.is_dynamic
    assert name.array_len is None
    ptr = fmt.field("ptr")
    assert ptr.is_pointer and not ptr.is_string
    assert fmt.field("common_pid").signed
    assert fmt.field("nope") is None


def test_header_page():
    hp = parse_header_page(read("header_page"))
    assert hp == HeaderPage(timestamp_offset=0, timestamp_size=8, commit_offset=8,
                            commit_size=8, data_offset=16, data_size=4080)
    assert hp.page_size == 4096


def test_header_event():
    he = parse_header_event(read("header_event"))
    assert he == HeaderEvent(type_len_bits=5, time_delta_bits=27, padding=29,
                             time_extend=30, time_stamp=31, data_max_type_len=28)


KPROBE = """name: kmalloc
ID: 2011
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned long __probe_ip;\toffset:8;\tsize:8;\tsigned:0;
\tfield:u64 size;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:1;

print fmt: "(%lx) size=%Lu name=\\"%s\\"", REC->__probe_ip, REC->size, __get_str(name)
"""


def test_kprobe_format():
    fmt = parse_format(KPROBE, "ftslab_42")
    assert fmt.system == "ftslab_42" and fmt.id == 2011
    assert layout(fmt.fields) == [("__probe_ip", "unsigned long", 8, 8, False),
                                  ("size", "u64", 16, 8, False),
                                  ("name", "__data_loc char[]", 24, 4, True)]
    assert fmt.field("name").is_string
    assert fmt.print_fmt.startswith('"(%lx) size=%Lu name=\\"%s\\""')


def one_field(line: str) -> Field:
    text = f"name: x\nID: 1\nformat:\n{line}\n\nprint fmt: \"\"\n"
    (f,) = parse_format(text).fields
    return f


@pytest.mark.parametrize("line, expect", [
    ("\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;",
     dict(name="comm", type="char", array_len=16, is_string=True)),
    ("\tfield:__u8 saddr[4];\toffset:8;\tsize:4;\tsigned:0;",
     dict(name="saddr", type="__u8", array_len=4, is_string=False)),
    # kernels before v5.18 printed the macro, not its value
    ("\tfield:char prev_comm[TASK_COMM_LEN];\toffset:8;\tsize:16;\tsigned:1;",
     dict(name="prev_comm", type="char", array_len=16, is_string=True)),
    ("\tfield:u32 ids[2][3];\toffset:8;\tsize:24;\tsigned:0;",
     dict(name="ids", type="u32", array_len=6, is_string=False)),
    ("\tfield:char buf[];\toffset:16;\tsize:0;\tsigned:1;",
     dict(name="buf", array_len=0, is_string=True)),
    ("\tfield:__rel_loc char[] msg;\toffset:8;\tsize:4;\tsigned:0;",
     dict(name="msg", type="__rel_loc char[]", rel_loc=True, data_loc=False, is_string=True)),
    ("\tfield:const char * fmt;\toffset:8;\tsize:8;\tsigned:0;",
     dict(name="fmt", type="const char *", is_string=False, is_pointer=True)),
    ("\tfield:unsigned char flags;\toffset:8;\tsize:1;\tsigned:0;",
     dict(type="unsigned char", is_string=False, array_len=None)),
    ("\tfield:struct foo_bar thing;\toffset:8;\tsize:24;\tsigned:0;",
     dict(name="thing", type="struct foo_bar")),
    ("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;",
     dict(name="timestamp", type="u64")),
    ("\tfield special:int common_pid;\toffset:4;\tsize:4;",
     dict(name="common_pid", signed=True, signed_given=False)),
])
def test_field_variants(line, expect):
    text = f"name: x\nID: 1\nformat:\n{line}\n\nprint fmt: \"\"\n"
    fmt = parse_format(text)
    (f,) = fmt.fields + fmt.common_fields
    for key, value in expect.items():
        assert getattr(f, key) == value, key


@pytest.mark.parametrize("decl, signed", [
    ("int pid", True), ("unsigned int x", False), ("long x", True), ("u64 x", False),
    ("s32 x", True), ("const void * p", False), ("bool b", False), ("size_t n", False),
])
def test_missing_signed_is_guessed(decl, signed):
    f = one_field(f"\tfield:{decl};\toffset:8;\tsize:8;")
    assert f.signed is signed and not f.signed_given


BASE = "name: x\nID: 1\nformat:\n"
GOOD = "\tfield:int v;\toffset:8;\tsize:4;\tsigned:1;\n"


@pytest.mark.parametrize("text, words", [
    ("", "no name"),
    ("ID: 1\nformat:\n" + GOOD + 'print fmt: ""', "format: before name"),
    ("name: x\nformat:\n" + GOOD + 'print fmt: ""', "format: before"),
    (BASE + GOOD, "no print fmt"),
    (BASE + "\tfield:int v;\toffset:-8;\tsize:4;\tsigned:1;\n" + 'print fmt: ""', "offset -8"),
    (BASE + f"\tfield:int v;\toffset:{MAX_LAYOUT_BYTES + 1};\tsize:4;\tsigned:1;\n"
     + 'print fmt: ""', "offset"),
    (BASE + f"\tfield:int v;\toffset:{MAX_LAYOUT_BYTES - 2};\tsize:4;\tsigned:1;\n"
     + 'print fmt: ""', "beyond"),
    (BASE + "\tfield:int v;\toffset:8;\tsize:" + "9" * 5000 + ";\tsigned:1;\n"
     + 'print fmt: ""', "size"),
    (BASE + "\tfield:int v;\toffset:8;\tsize:4;\tsigned:2;\n" + 'print fmt: ""', "signed 2"),
    (BASE + "\tfield:int v;\toffset:8;\tsize:4;\tsigned:1;\tjunk\n" + 'print fmt: ""', "field"),
    (BASE + "\tfield:int;\toffset:8;\tsize:4;\tsigned:1;\n" + 'print fmt: ""', "no type"),
    (BASE + "\tfield:int 9v;\toffset:8;\tsize:4;\tsigned:1;\n" + 'print fmt: ""', "identifier"),
    (BASE + GOOD + GOOD + 'print fmt: ""', "duplicate"),
    (BASE + GOOD + "bogus line\n" + 'print fmt: ""', "unexpected"),
    (BASE + GOOD + 'print fmt: ""\nmore', "after print fmt"),
    ("name: x\nID: 99999999999\nformat:\n" + GOOD + 'print fmt: ""', "event ID"),
    ("name: x\nID: \u0661\nformat:\n" + GOOD + 'print fmt: ""', "ID"),
])
def test_malformed_formats(text, words):
    with pytest.raises(ParseError) as exc:
        parse_format(text)
    assert words.split()[0] in str(exc.value)


@pytest.mark.parametrize("bad", [None, b"name: x", 12])
def test_non_text_is_parse_error(bad):
    with pytest.raises(ParseError):
        parse_format(bad)
    with pytest.raises(ParseError):
        parse_header_page(bad)
    with pytest.raises(ParseError):
        parse_header_event(bad)


def test_malformed_headers():
    with pytest.raises(ParseError, match="lacks commit"):
        parse_header_page("\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n"
                          "\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;\n")
    with pytest.raises(ParseError, match="lacks"):
        parse_header_event("\ttype_len    :    5 bits\n")
    with pytest.raises(ParseError, match="add up"):
        parse_header_event(read("header_event").replace("27 bits", "28 bits"))
    with pytest.raises(ParseError):
        parse_header_event(read("header_event").replace("type == 29", "type == 99"))


# ------------------------------------------------------------------------- fuzzing

def only_parse_errors(fn, *args):
    try:
        fn(*args)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text):
    only_parse_errors(parse_format, text)
    only_parse_errors(parse_header_page, text)
    only_parse_errors(parse_header_event, text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(EVENTS + ["header_page", "header_event"]), st.data())
def test_fuzz_mutated_real_files(name, data):
    text = read(name) if name.startswith("header") else fmt_text(name)
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 20))
    insert = data.draw(st.text(max_size=20) | st.sampled_from(
        ["-1", "99999999999999999999999", ";", ":", "\n", "[", "]", "\t", "offset:",
         "1" * 5000, "\u0663", "field:"]))
    mutated = text[:pos] + insert + text[pos + cut:]
    for fn in (parse_format, parse_header_page, parse_header_event):
        only_parse_errors(fn, mutated)


@settings(max_examples=300, deadline=None)
@given(decl=st.text(max_size=40), offset=st.integers(-(1 << 70), 1 << 70),
       size=st.integers(-(1 << 70), 1 << 70), signed=st.one_of(st.none(), st.integers(-3, 3)))
def test_fuzz_field_lines(decl, offset, size, signed):
    line = f"\tfield:{decl};\toffset:{offset};\tsize:{size};"
    if signed is not None:
        line += f"\tsigned:{signed};"
    text = f"name: x\nID: 1\nformat:\n{line}\n\nprint fmt: \"\"\n"
    try:
        fmt = parse_format(text)
    except ParseError:
        return
    (f,) = fmt.fields + fmt.common_fields
    assert 0 <= f.offset and 0 <= f.size and f.offset + f.size <= MAX_LAYOUT_BYTES
    assert isinstance(fmt, EventFormat)
