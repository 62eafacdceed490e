"""Kernel event filter expressions: validated here, applied by the kernel.

ftslab filters in the kernel (events/<sys>/<ev>/filter), never in Python after the fact.
Whatever a user types (``--filter``, ``--comm``, ``--cache``) is parsed with a small
pyparsing grammar, checked against the event's own fields, and written back in a
canonical form: a crafted value cannot smuggle a second expression, a newline or a
quote into a tracefs write.  Pure: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import pyparsing as pp

from ftslab.errors import UsageError
from ftslab.trace.formats import EventFormat


__all__ = [
    "FilterExpr", "parse_filter", "comm_filter", "cache_filter", "string_literal",
    "TASK_COMM_LEN"
]


TASK_COMM_LEN = 16


#: Fields every event accepts in a filter besides its own (kernel: trace_events_filter.c).
COMMON = {"common_pid", "common_type", "common_flags", "common_preempt_count", "comm",
           "common_comm", "cpu", "common_cpu"}


# \Z, not "$": "$" also matches before a final newline, which would reach the kernel
_SAFE_STRING = re.compile(r"^[\w .:/\-+*?\[\]@#%,=^~]*\Z")


def string_literal(value: str, param: str | None = None) -> str:
    """A double-quoted filter string, refusing characters that could break out of it
    (``param``: the parameter the value was given as, for the error)."""
    if not _SAFE_STRING.match(value) or len(value) > 255:
        what = f"`{param}`" if param else "value"
        raise UsageError(f"invalid {what} {value!r}: only letters, digits and . : / - + * ? "
                         "[ ] @ # % , = ^ ~ _ and spaces are allowed",
                         params=(param,) if param else ())
    return '"' + value + '"'


@dataclass(frozen=True)
class FilterExpr:
    text: str
    """Canonical expression as it will be written to the kernel."""
    fields: frozenset[str]
    """Field names it refers to."""

    def applies_to(self, fmt: EventFormat) -> bool:
        names = {f.name for f in fmt.fields} | COMMON
        return self.fields <= names


def _grammar():
    ident = pp.Word(pp.alphas + "_", pp.alphanums + "_")
    number = pp.Regex(r"-?(0[xX][0-9a-fA-F]+|\d+)")
    string = pp.QuotedString('"', esc_char=None, unquote_results=True)
    op = pp.one_of("== != <= >= < > & ~")
    cmp = pp.Group(ident("field") + op("op") + (number("num") | string("str")))
    expr = pp.infix_notation(cmp, [
        (pp.Literal("!"), 1, pp.OpAssoc.RIGHT),
        (pp.Literal("&&"), 2, pp.OpAssoc.LEFT),
        (pp.Literal("||"), 2, pp.OpAssoc.LEFT),
    ])
    # pyparsing expands tabs before parsing by default: a tab inside a quoted value
    # would reach the kernel as spaces (another string) instead of being refused
    return expr.parse_with_tabs()


_EXPR = _grammar()


def _render(node, fields: set[str]) -> str:
    if isinstance(node, pp.ParseResults) and "field" in node:
        fields.add(node["field"])
        if "num" in node:
            int(node["num"], 0)  # validated by the regex; keeps hex as typed
            return f"{node['field']} {node['op']} {node['num']}"
        return f"{node['field']} {node['op']} {string_literal(node['str'])}"
    items = list(node)
    if len(items) == 2 and items[0] == "!":
        return "!(" + _render(items[1], fields) + ")"
    out = []
    for it in items:
        out.append(it if isinstance(it, str) else "(" + _render(it, fields) + ")")
    return " ".join(out)


def parse_filter(text: str) -> FilterExpr:
    """Parse and canonicalise a filter expression, or raise UsageError saying where."""
    if len(text) > 4096:
        raise UsageError("filter expression too long (4096 characters at most)")
    try:
        res = _EXPR.parse_string(text, parse_all=True)
    except pp.ParseBaseException as exc:
        raise UsageError(f"invalid filter {text!r} at column {exc.column}: "
                         "expected FIELD OP VALUE joined with && || and !") from None
    except RecursionError:
        raise UsageError("filter expression nested too deeply") from None
    fields: set[str] = set()
    canon = _render(res[0], fields)
    return FilterExpr(canon, frozenset(fields))


def comm_filter(comm: str) -> FilterExpr:
    if len(comm) >= TASK_COMM_LEN:
        raise UsageError(f"`comm` {comm!r} is longer than the kernel keeps "
                         f"({TASK_COMM_LEN - 1} characters): use {comm[:TASK_COMM_LEN - 1]!r}",
                         params=("comm",))
    return FilterExpr(f"comm == {string_literal(comm, 'comm')}", frozenset({"comm"}))


def cache_filter(cache: str, aliases: Mapping[str, Sequence[str]] | None = None) -> str:
    """The filter of ``--cache NAME``: the event's ``name`` is NAME or, when SLUB merged
    NAME's cache with others (``aliases``: procfs.read_slab_aliases), any of the merged
    cache's names, since the events carry one of them only (the first one created):
    ``--cache UNIX`` on 6.18 must match events that say ``signal_cache``."""
    string_literal(cache, "cache")  # the user's value is refused as typed, if at all
    names = [n for n in (aliases or {}).get(cache) or () if _SAFE_STRING.match(n)]
    return " || ".join(f"name == {string_literal(n, 'cache')}"
                       for n in (names if cache in names else [cache]))
