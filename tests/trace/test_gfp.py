"""ftslab.trace.gfp: flag tables from real 6.18 print fmts, and the kernel's printing of them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ftslab.trace import gfp
from ftslab.errors import ParseError
from ftslab.trace.formats import parse_format

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
TRACES = ["kmem-trace.txt", "kmem-trace-tgid-noirq.txt", "kmem-trace_pipe-lost.txt",
          "kmem-trace-overwrite.txt"]


def print_fmt(event: str) -> str:
    return parse_format((FIX / f"kmem-{event}.format").read_text()).print_fmt


@pytest.fixture(scope="module")
def table():
    return gfp.flag_table(print_fmt("kmalloc"))


def bit(n: int) -> int:
    return 1 << n


def test_table_values(table):
    masks = dict((name, mask) for mask, name in table)
    # include/linux/gfp_types.h of 6.18: ___GFP_IO bit 6, FS 7, DIRECT_RECLAIM 10,
    # KSWAPD_RECLAIM 11, NOWARN 13, ACCOUNT 22, NO_OBJ_EXT 24.
    assert masks["GFP_KERNEL"] == bit(10) | bit(11) | bit(6) | bit(7) == 0xcc0
    assert masks["GFP_KERNEL_ACCOUNT"] == 0xcc0 | bit(22)
    assert masks["GFP_NOWAIT"] == bit(11) | bit(13)
    assert masks["GFP_ATOMIC"] == bit(5) | bit(11)
    assert masks["__GFP_NO_OBJ_EXT"] == bit(24)
    # GFP_TRANSHUGE_LIGHT = ... & ~__GFP_RECLAIM: the evaluator must get ~ right
    assert masks["GFP_TRANSHUGE_LIGHT"] & (bit(10) | bit(11)) == 0
    assert masks["GFP_TRANSHUGE"] == masks["GFP_TRANSHUGE_LIGHT"] | bit(10)
    assert table[0][1] == "GFP_TRANSHUGE" and table[-1][1] == "__GFP_NO_OBJ_EXT"
    assert len(table) == 38


@pytest.mark.parametrize("event", ["kmem_cache_alloc", "mm_page_alloc"])
def test_same_table_in_every_event(event, table):
    assert gfp.flag_table(print_fmt(event)) == table


def test_spec_and_missing():
    spec = gfp.print_flags_spec(print_fmt("kmalloc"))
    assert spec.field == "gfp_flags" and spec.delim == "|"
    with pytest.raises(ParseError, match="no __print_flags"):
        gfp.flag_table(print_fmt("kfree"))
    with pytest.raises(ParseError):
        gfp.flag_table(print_fmt("kmalloc"), field="order")


def seen_gfp_texts() -> set[str]:
    seen = set()
    for name in TRACES:
        seen |= set(re.findall(r" gfp_flags=(\S+)", (FIX / name).read_text()))
    return seen


def test_real_texts_round_trip(table):
    seen = seen_gfp_texts()
    assert len(seen) >= 10 and "GFP_KERNEL" in seen
    for text in seen:
        value = gfp.parse_flags(text, table)
        assert gfp.format_flags(value, table) == text


def test_format_flags_algorithm(table):
    assert gfp.format_flags(0, table) == "none"
    assert gfp.format_flags(0xcc0, table) == "GFP_KERNEL"
    assert gfp.format_flags(0xcc0 | bit(8), table) == "GFP_KERNEL|__GFP_ZERO"
    assert gfp.format_flags(bit(30), table) == "0x40000000"
    assert gfp.format_flags(0xcc0 | bit(30) | bit(63), table) == "GFP_KERNEL|0x8000000040000000"
    # GFP_NOFS (IO|RECLAIM) is found before GFP_NOIO (RECLAIM): table order wins
    assert gfp.format_flags(bit(6) | bit(10) | bit(11), table) == "GFP_NOFS"
    assert gfp.format_flags(bit(10), table) == "__GFP_DIRECT_RECLAIM"
    assert gfp.parse_flags("GFP_KERNEL|0x40000000", table) == 0xcc0 | bit(30)
    assert gfp.parse_flags("none", table) == 0


def test_format_flags_like_kernel_on_small_tables():
    t = ((0x3, "AB"), (0x1, "A"), (0x4, "C"))
    assert gfp.format_flags(0x7, t, delim=",") == "AB,C"
    assert gfp.format_flags(0x1 | 0x10, t) == "A|0x10"
    # trace_print_flags_seq() has no mask != 0 test: a 0 mask matches while bits remain
    assert gfp.format_flags(0x8, ((0, "ZERO"),)) == "ZERO|0x8"
    assert gfp.format_flags(0, t, zero="") == ""


@pytest.mark.parametrize("text", ["GFP_KERNEL|", "|GFP_KERNEL", "GFP_BOGUS", "0xZZ",
                                  "0x" + "f" * 17, "gfp_kernel", "GFP_KERNEL||__GFP_ZERO"])
def test_parse_flags_rejects(text, table):
    with pytest.raises(ParseError):
        gfp.parse_flags(text, table)


@pytest.mark.parametrize("bad", [-1, 1 << 64, True, "1", None, 1.0])
def test_format_flags_rejects_non_u64(bad, table):
    with pytest.raises(ParseError):
        gfp.format_flags(bad, table)


@pytest.mark.parametrize("expr, value", [
    ("1", 1), ("(( gfp_t)0)", 0), ("((((1UL))) << (10))", 1024), ("0x10 | 0x1", 17),
    ("1UL << 63", 1 << 63), ("~0UL", (1 << 64) - 1), ("~0", (1 << 64) - 1),
    ("( gfp_t)~0", 0xffffffff), ("~(( gfp_t)1)", 0xfffffffe), ("-1", (1 << 64) - 1),
    ("( unsigned long)(( gfp_t)-1)", 0xffffffff), ("010", 8), ("1ULL<<40|3", (1 << 40) | 3),
    ("6 & ~2", 4), ("1 + 2 * 3", 7), ("(2 + 3) << 1", 10), ("7 / 2", 3), ("-7 / 2", (1 << 64) - 3),
    ("1 == 1", 1), ("( __force gfp_t)1u", 1), ("(unsigned char)0x1ff", 0xff),
])
def test_eval_c_constant(expr, value):
    assert gfp.eval_c_constant(expr) == value


@pytest.mark.parametrize("expr", ["", "foo", "1 +", "(((1", "1 << 64", "1U << 32",
                                  "1 << 99999999", "9" * 99, "1/0", "( bogus_t)1",
                                  "1 2", "0x", "1UUL", "\"s\"", "(" * 500 + "1" + ")" * 500,
                                  "1ULL << -1", "18446744073709551616"])
def test_eval_c_constant_rejects(expr):
    with pytest.raises(ParseError):
        gfp.eval_c_constant(expr)


SYMBOLIC = ('"type=%s", __print_symbolic(REC->migratetype, { 0, "Unmovable" }, '
            '{ 1, "Movable" }, { 2, "Reclaimable" }, { -1, NULL })')


def test_symbolic():
    table = gfp.symbol_table(SYMBOLIC, "migratetype")
    assert table == ((0, "Unmovable"), (1, "Movable"), (2, "Reclaimable"))
    assert gfp.format_symbolic(1, table) == "Movable"
    assert gfp.format_symbolic(7, table) == "0x7"
    assert gfp.parse_symbolic("Reclaimable", table) == 2
    assert gfp.parse_symbolic("0x7", table) == 7
    with pytest.raises(ParseError):
        gfp.parse_symbolic("Bogus", table)
    with pytest.raises(ParseError):
        gfp.symbol_table(SYMBOLIC, "order")


def test_split_print_fmt():
    fmt, args = gfp.split_print_fmt(print_fmt("mm_page_alloc"))
    assert fmt == "page=%p pfn=0x%lx order=%d migratetype=%d gfp_flags=%s"
    assert args[1] == "REC->pfn != -1UL ? REC->pfn : 0"
    assert args[2] == "REC->order" and args[4].startswith("(REC->gfp_flags) ? __print_flags(")
    assert gfp.split_print_fmt('"a" "b\\"c"') == ('ab"c', ())
    for bad in ["", "REC->x", '"a" REC', '"a", (b', '"a",']:
        with pytest.raises(ParseError):
            gfp.split_print_fmt(bad)


# ------------------------------------------------------------------------- fuzzing

@settings(max_examples=300, deadline=None)
@given(st.integers(0, (1 << 64) - 1))
def test_fuzz_round_trip_values(value):
    table = gfp.flag_table(print_fmt("kmalloc"))
    text = gfp.format_flags(value, table)
    assert gfp.parse_flags(text, table) == value


def no_other_errors(fn, *args):
    try:
        fn(*args)
    except ParseError:
        pass


C_BITS = st.sampled_from(["(", ")", "1", "1UL", "0x1f", "<<", ">>", "|", "&", "~", "-",
                          "( gfp_t)", "( unsigned long)", "{", "}", ",", '"X"', "64", "/",
                          "0", "((void *)0)", "__print_flags(REC->gfp_flags, \"|\", ",
                          "REC->gfp_flags", " ", "9999999999999999999999", "?", ":"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.lists(C_BITS, max_size=60).map("".join)))
def test_fuzz_expressions_and_tables(text):
    table = ((0xcc0, "GFP_KERNEL"), (0x100, "__GFP_ZERO"))
    no_other_errors(gfp.eval_c_constant, text)
    no_other_errors(gfp.flag_table, text)
    no_other_errors(gfp.flag_table, text, None)
    no_other_errors(gfp.symbol_table, text)
    no_other_errors(gfp.split_print_fmt, text)
    no_other_errors(gfp.parse_flags, text, table)
    no_other_errors(gfp.parse_symbolic, text, table)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_print_fmt(data):
    text = print_fmt("kmalloc")
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 30))
    insert = data.draw(C_BITS | st.text(max_size=10))
    no_other_errors(gfp.flag_table, text[:pos] + insert + text[pos + cut:])
