"""Filter expressions (ftslab/kernel/filters.py): what a user types is parsed, checked against the
events' own fields and written back in one canonical form, or refused with a message
that says where.  The fields come from the real 6.18 format files (tests/fixtures/6.18);
the last tests run the filters through Session.plan on a fake tracefs made of those
files, as `record --filter` does.  No root needed."""
from __future__ import annotations

from pathlib import Path

import pytest

from ftslab.events import DEFAULT_EVENTS
from ftslab.session.options import SessionOptions
from ftslab.session.engine import Session
from ftslab.errors import UsageError
from ftslab.kernel.filters import TASK_COMM_LEN, comm_filter, parse_filter, string_literal
from ftslab.trace.formats import parse_format
from ftslab.kernel.tracefs import Tracefs

from conftest import make_fake_tracefs

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


@pytest.fixture(scope="module")
def fmts():
    out = {}
    for p in sorted(FIX.glob("kmem-*.format")):
        f = parse_format(p.read_text(), "kmem")
        out[f.name] = f
    assert len(out) == 6
    return out


def _names(fmt) -> set[str]:
    return {f.name for f in fmt.fields}


# ------------------------------------------------------------------ canonical form

@pytest.mark.parametrize("typed, canonical, fields", [
    ("bytes_req>=4096", "bytes_req >= 4096", {"bytes_req"}),
    ("  bytes_req   >=   4096  ", "bytes_req >= 4096", {"bytes_req"}),
    ("call_site == 0xffffffff81234567", "call_site == 0xffffffff81234567", {"call_site"}),
    ("node == -1", "node == -1", {"node"}),
    ("gfp_flags & 0x400", "gfp_flags & 0x400", {"gfp_flags"}),
    # && binds tighter than ||, and each operand gets its own parentheses
    ("bytes_req > 64 && bytes_alloc < 256 || node == 0",
     "((bytes_req > 64) && (bytes_alloc < 256)) || (node == 0)",
     {"bytes_req", "bytes_alloc", "node"}),
    ("node == 0 || bytes_req > 64 && bytes_alloc < 256",
     "(node == 0) || ((bytes_req > 64) && (bytes_alloc < 256))",
     {"bytes_req", "bytes_alloc", "node"}),
    # parentheses the user typed change the grouping and are kept as such
    ("(node == 0 || bytes_req > 64) && bytes_alloc < 256",
     "((node == 0) || (bytes_req > 64)) && (bytes_alloc < 256)",
     {"bytes_req", "bytes_alloc", "node"}),
    ("((bytes_req == 8))", "bytes_req == 8", {"bytes_req"}),
    ("a == 1 && b == 2 && c == 3", "(a == 1) && (b == 2) && (c == 3)", {"a", "b", "c"}),
    ("!(order > 0)", "!(order > 0)", {"order"}),
    ("!order > 0", "!(order > 0)", {"order"}),
    ("bytes_req == 8 && !(order == 1 || order == 2)",
     "(bytes_req == 8) && (!((order == 1) || (order == 2)))", {"bytes_req", "order"}),
    ('name == "kmalloc-64"', 'name == "kmalloc-64"', {"name"}),
    ('name ~ "kmalloc-*"', 'name ~ "kmalloc-*"', {"name"}),
    ('comm != "kworker/0:1"', 'comm != "kworker/0:1"', {"comm"}),
    ('name == "dentry" || bytes_req >= 4096',
     '(name == "dentry") || (bytes_req >= 4096)', {"name", "bytes_req"}),
])
def test_canonical_form(typed, canonical, fields):
    fx = parse_filter(typed)
    assert fx.text == canonical
    assert fx.fields == frozenset(fields)


def test_canonical_form_is_a_fixed_point():
    """Written back and parsed again, a canonical expression stays what it is: what the
    kernel receives does not depend on how the user spaced or bracketed it."""
    for typed in ("bytes_req > 64 && bytes_alloc < 256 || node == 0",
                  "!(order > 0) && (name == \"filp\" || name ~ \"kmalloc*\")",
                  "a==1||b==2&&!c==3"):
        once = parse_filter(typed).text
        assert parse_filter(once).text == once


@pytest.mark.parametrize("typed, column", [
    ('name == "a"b"', 12),        # a quote cannot end the string early
    ("name == 'filp'", 9),        # single quotes are not strings here
    ('bytes_req >= 1" || 1', 15),  # a stray quote: no second expression smuggled in
    ("bytes_req >= 1 ; echo 1", 16),
    ("bytes_req = 1", 11),
    ("bytes_req == 1.5", 15),
    ("bytes_req == 1 &&", 16),
    ("bytes_req ==", 13),
    ("", 1),
    ('name == "filp" || 1', 16),
])
def test_malformed_is_refused_saying_where(typed, column):
    with pytest.raises(UsageError) as ei:
        parse_filter(typed)
    msg = str(ei.value)
    assert msg.startswith(f"invalid filter {typed!r} at column {column}:")
    assert "\n" not in msg


@pytest.mark.parametrize("value", ['a\\"b', "x)", "a\nb", "x'y", "a;b", "$(id)",
                                   "a`b`"])
def test_string_values_cannot_carry_quotes_or_control_characters(value):
    # as typed inside a quoted string of an otherwise valid expression
    with pytest.raises(UsageError, match="invalid value|invalid filter"):
        parse_filter(f'name == "{value}"')
    with pytest.raises(UsageError, match="invalid `cache`"):
        string_literal(value, "cache")


def test_a_tab_is_refused_not_turned_into_spaces():
    # a comm may hold a tab (prctl PR_SET_NAME): the filter must not match another name
    with pytest.raises(UsageError, match="invalid value"):
        parse_filter('comm == "a\tb"')
    # between the tokens a tab is whitespace like any other
    assert parse_filter("bytes_req\t>=\t64").text == "bytes_req >= 64"
    # and a column counts it as one character
    with pytest.raises(UsageError, match="at column 15:"):
        parse_filter("bytes_req\t== 1.5")


def test_string_literal_limits():
    assert string_literal("kmalloc-rcl-64") == '"kmalloc-rcl-64"'
    assert string_literal("x" * 255) == '"' + "x" * 255 + '"'
    with pytest.raises(UsageError):
        string_literal("x" * 256)
    # "$" would also match before a final newline: the check must not let it through
    with pytest.raises(UsageError):
        string_literal("filp\n")


def test_too_long_and_too_deep_are_refused_cleanly():
    with pytest.raises(UsageError, match="too long"):
        parse_filter("bytes_req == 1 && " * 300 + "bytes_req == 1")
    with pytest.raises(UsageError, match="nested too deeply|invalid filter"):
        parse_filter("(" * 1500 + "bytes_req == 1" + ")" * 1500)


def test_comm_filter():
    fx = comm_filter("nginx")
    assert fx.text == 'comm == "nginx"' and fx.fields == {"comm"}
    assert comm_filter("x" * (TASK_COMM_LEN - 1)).text == f'comm == "{"x" * 15}"'
    with pytest.raises(UsageError) as ei:
        comm_filter("y" * TASK_COMM_LEN)
    assert repr("y" * (TASK_COMM_LEN - 1)) in str(ei.value)  # names what would match
    with pytest.raises(UsageError, match="invalid `comm`"):
        comm_filter('a"b')


# ------------------------------------------------------------------ against real formats

def test_applies_to_follows_the_format_files(fmts):
    size = parse_filter("bytes_req >= 4096")
    have = {n for n, f in fmts.items() if "bytes_req" in _names(f)}
    assert have and have != set(fmts)  # the frees carry no size
    assert {n for n, f in fmts.items() if size.applies_to(f)} == have
    # common fields and comm apply to every event, whatever its own fields
    for expr in ('comm == "sh"', "common_pid == 1", "cpu == 0", "common_preempt_count > 0"):
        assert all(parse_filter(expr).applies_to(f) for f in fmts.values()), expr
    # a compound filter applies where ALL the fields it names exist
    both = parse_filter('name == "filp" && bytes_req > 8')
    expect = {n for n, f in fmts.items() if {"name", "bytes_req"} <= _names(f)}
    assert {n for n, f in fmts.items() if both.applies_to(f)} == expect
    assert not any(parse_filter("no_such_field == 1").applies_to(f) for f in fmts.values())


def _plan(tmp_path, monkeypatch, **opts):
    root = make_fake_tracefs(tmp_path)
    writes = []
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **k: writes.append(a))
    warnings: list[str] = []
    session = Session(Tracefs(root), warnings.append, name="ftslab_999999")
    steps = session.plan(SessionOptions(kprobes="off", **opts))
    assert not writes  # planning writes nothing
    return {s.path.split("/")[-2]: s.value for s in steps if s.path.endswith("/filter")}, \
        warnings


def test_plan_writes_the_canonical_form_to_the_events_that_have_the_fields(
        tmp_path, monkeypatch, fmts):
    typed = "bytes_req>4096||(bytes_alloc>=8192&&gfp_flags&0x400)"
    filters, warnings = _plan(tmp_path, monkeypatch, filters=(typed,))
    have = {n for n, f in fmts.items()
            if {"bytes_req", "bytes_alloc", "gfp_flags"} <= _names(f)}
    assert set(filters) == have
    canon = "(bytes_req > 4096) || ((bytes_alloc >= 8192) && (gfp_flags & 0x400))"
    assert set(filters.values()) == {canon}
    others = sorted(set(fmts) - have)
    assert len(warnings) == 1 and "does not apply" in warnings[0]
    assert all(f"kmem:{n}" in warnings[0] for n in others)


def test_plan_ands_several_filters_with_comm(tmp_path, monkeypatch, fmts):
    filters, _ = _plan(tmp_path, monkeypatch, filters=("bytes_req >= 64", "node == 0"),
                       comm="nginx")
    for name, fmt in fmts.items():
        parts = [p for p, need in (("bytes_req >= 64", "bytes_req"), ("node == 0", "node"))
                 if need in _names(fmt)] + ['comm == "nginx"']
        want = parts[0] if len(parts) == 1 else " && ".join(f"({p})" for p in parts)
        assert filters[name] == want, name


def test_plan_refuses_a_field_no_event_has(tmp_path, monkeypatch, fmts):
    with pytest.raises(UsageError) as ei:
        _plan(tmp_path, monkeypatch, filters=("no_such_field == 1",))
    msg = str(ei.value)
    assert "names a field none of the recorded events has" in msg
    assert all(ev in msg for ev in DEFAULT_EVENTS)
    assert "format" in ei.value.hint
    # a field the allocations have, on the frees alone: refused too
    assert "bytes_req" not in _names(fmts["kfree"])
    with pytest.raises(UsageError, match=r"none of the recorded events has \(kmem:kfree\)"):
        _plan(tmp_path / "b", monkeypatch, filters=("bytes_req > 1",), events=("kmem:kfree",))
