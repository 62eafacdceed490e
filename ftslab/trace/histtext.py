"""The text of a hist trigger's ``hist`` file, parsed into tables.

An event's ``hist`` file (kernel/trace/trace_events_hist.c, hist_show) prints one
histogram per hist trigger on the event, each as::

    # event histogram
    #
    # trigger info: hist:keys=call_site.sym-offset:vals=hitcount,bytes_alloc:sort=...
    #

    { call_site: [ffffffffa49108f9] proc_reg_open+0x89/0x190 [mod] } hitcount: 1  bytes_alloc: 40
    { common_pid: sh              [       190] } hitcount:         88  bytes_alloc: ...
    { call_site: [ffffffffbb710621] proc_alloc_inode , bytes_alloc:        704 } hitcount: 1

    Totals:
        Hits: 49343
        Entries: 56
        Dropped: 0

A line grammar, driven by the trigger info line: its ``keys=`` say which names the
entry line holds, in which order, and with which modifier (``.sym``, ``.sym-offset``,
``.execname``, ``.hex``), so a key value is split at the next ``, <name>: `` and read by
its modifier.  Values after ``}`` are ``name: integer`` pairs.

Pure: text in, dataclasses out.  It never opens a file, and never invents a value: an
entry line it cannot read is kept in ``unreadable`` (``strict`` makes it a ParseError).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ftslab.errors import ParseError

__all__ = ["Sym", "Comm", "HistTable", "parse_hist", "parse_trigger_keys"]


class Sym(NamedTuple):
    """A ``.sym`` or ``.sym-offset`` key: ``[ffffffff81234567] kmalloc_trace+0x2a/0x40``."""

    address: int
    """The key's value (a kernel text address, as the kernel stored it)."""
    text: str
    """What the kernel printed for it: the symbol (``.sym``), or ``symbol+off/size``
    (``.sym-offset``), with `` [module]`` after it for module text."""


class Comm(NamedTuple):
    """A ``common_pid.execname`` key: ``bash            [      1234]``."""

    comm: str
    """The comm the kernel saved when the pid's entry was made (``<...>`` when it had
    none); trailing blanks are the kernel's padding and are dropped."""
    pid: int
    """The key's value: the pid (a thread id)."""


@dataclass
class HistTable:
    """One histogram of a ``hist`` file."""

    trigger: str
    """The trigger info line, as the kernel completed it (``...:sort=hitcount:size=2048
    [active]``)."""
    keys: tuple[str, ...]
    """The key fields as written in the trigger (``call_site.sym``, ``common_pid.execname``)."""
    entries: list[tuple[dict, dict]] = field(default_factory=list)
    """(keys, values) of each entry line: keys by field name without its modifier
    (``call_site``) holding an int, a str, a Sym or a Comm; values by name
    (``hitcount``, ``bytes_alloc``) holding ints."""
    hits: int | None = None
    """``Totals: Hits``: events the trigger saw, read at the end of the print (so
    possibly a few more than the entries add up to: events keep coming meanwhile)."""
    entry_count: int | None = None
    """``Totals: Entries``: the entries in the table."""
    dropped: int | None = None
    """``Totals: Dropped``: events refused because the table was full (a new key and no
    free entry): counted nowhere else."""
    unreadable: list[str] = field(default_factory=list)
    """Entry lines that did not follow the grammar (kept verbatim, never guessed at)."""


_TRIGGER_INFO = re.compile(r"^#\s*trigger info:\s*(.*\S)\s*$")
_TOTAL = re.compile(r"^\s+(Hits|Entries|Dropped):\s*(\d+)\s*$")
_VALUE = re.compile(r"([A-Za-z_][\w.$]*):\s*(-?\d+)")
_SYM = re.compile(r"^\[([0-9a-fA-F]+)\]\s(.*?)\s*$")
_COMM = re.compile(r"^(.*?)\s*\[\s*(\d+)\]\s*$")


def parse_trigger_keys(trigger: str) -> tuple[str, ...]:
    """The ``keys=`` (or ``key=``) fields of a hist trigger text, modifiers kept."""
    for part in trigger.split()[0].split(":") if trigger.strip() else ():
        name, _, value = part.partition("=")
        if name in ("keys", "key"):
            return tuple(k for k in value.split(",") if k)
    return ()


def _key_value(spec: str, text: str):
    mod = spec.partition(".")[2]
    if mod in ("sym", "sym-offset"):
        m = _SYM.match(text)
        if not m:
            raise ValueError(text)
        return Sym(int(m.group(1), 16), m.group(2))
    if mod == "execname":
        m = _COMM.match(text)
        if not m:
            raise ValueError(text)
        return Comm(m.group(1), int(m.group(2)))
    if mod == "hex":
        return int(text.strip(), 16)
    if mod:  # .log2, .buckets, .syscall, .usecs ...: not read here
        raise ValueError(text)
    t = text.strip()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    return text.rstrip(" ")  # the kernel pads strings to a column


def _entry(line: str, keys: tuple[str, ...]) -> tuple[dict, dict]:
    close = line.rfind("}")
    if not line.startswith("{ ") or close < 0 or not keys:
        raise ValueError(line)
    inner, rest = line[2:close], line[close + 1:]
    if inner.endswith(" "):
        inner = inner[:-1]
    names = [k.partition(".")[0] for k in keys]
    out_keys: dict = {}
    pos = 0
    for i, (spec, name) in enumerate(zip(keys, names)):
        head = f"{name}: "
        if not inner.startswith(head, pos):
            raise ValueError(line)
        start = pos + len(head)
        if i + 1 < len(names):
            end = inner.find(f", {names[i + 1]}: ", start)
            if end < 0:
                raise ValueError(line)
        else:
            end = len(inner)
        out_keys[name] = _key_value(spec, inner[start:end])
        pos = end + 2
    values = {m.group(1): int(m.group(2)) for m in _VALUE.finditer(rest)}
    if not values:
        raise ValueError(line)
    return out_keys, values


def parse_hist(text: str, strict: bool = False) -> list[HistTable]:
    """Every histogram of a ``hist`` file's text, in the order printed."""
    tables: list[HistTable] = []
    cur: HistTable | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _TRIGGER_INFO.match(line)
        if m:
            cur = HistTable(m.group(1), parse_trigger_keys(m.group(1)))
            tables.append(cur)
            continue
        if line.startswith("#") or line.strip() == "Totals:":
            continue
        if cur is None:
            if strict:
                raise ParseError(f"hist text: a line before any trigger info: {line!r}")
            continue
        t = _TOTAL.match(line)
        if t:
            n = int(t.group(2))
            if t.group(1) == "Hits":
                cur.hits = n
            elif t.group(1) == "Entries":
                cur.entry_count = n
            else:
                cur.dropped = n
            continue
        try:
            cur.entries.append(_entry(line, cur.keys))
        except ValueError:
            if strict:
                raise ParseError(f"hist text: cannot read entry line {line!r}",
                                 hint="a key modifier this parser does not know?") from None
            cur.unreadable.append(line)
    return tables
