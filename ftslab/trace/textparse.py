"""Read the text a tracefs instance prints (``cat trace`` / ``cat trace_pipe``) into records.

Each event line is split into its context (comm, pid, optional tgid, CPU, optional
irq-info flags, timestamp, event name) and its fields.  When the event's format is
known, its ``print fmt`` is turned into a matcher, so values are split exactly where
the kernel joined them and typed by the conversion that printed them (``%zu`` -> int,
``%p`` -> hashed pointer as int, ``__print_flags`` -> the flag word, ``%pS`` -> the
symbol text as printed).  Without a format, ``key=value`` pairs are split generically.

Pure functions over text: no file I/O, no tracefs.  A line that cannot be read is
counted and skipped (``strict=True`` makes it fatal), never guessed at; a value that
cannot be typed is kept as the text the kernel printed.  Only ``ftslab.errors``
exceptions leave this module.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from ftslab.dataset import Dataset, Event, EventColumns, Loss, Metadata
from ftslab.errors import FtslabError, ParseError
from ftslab.trace import gfp
from ftslab.trace.formats import EventFormat


__all__ = ["TextParser", "parse_lines", "parse_text", "MAX_LINE"]


#: Longer lines are not trace lines (the kernel formats one event into a page-sized
#: trace_seq) and are counted as unparsed without running any regex on them.
MAX_LINE = 1 << 16


_U64 = (1 << 64) - 1


# "  comm-pid  (  tgid) [cpu] flags  secs.usecs: event: rest"
# The comm may hold blanks and dashes: the lazy comm plus the anchored tail makes the
# pid the last "-NNN" before the CPU column.  The tgid column appears with
# options/record-tgid ("(-------)" when unknown); the flags column with options/irq-info
# (4 characters before commit 54357f0c9149 ("tracing: Add migrate-disabled counter to
# tracing output.") (in v5.15), 5 since: the migrate-disable column).  Timestamps are
# "secs.usecs" for nanosecond clocks and a bare count for counter/tsc clocks.
_EVENT_RE = re.compile(r"""
    \s*(?P<comm>.*?)-(?P<pid>[0-9]{1,10})\s+
    (?:\(\s*(?P<tgid>[0-9]{1,10}|-+)\)\s+)?
    \[(?P<cpu>[0-9]{1,6})\]\s+
    (?:(?P<irq>[^\s\[\]]{1,8})\s+)?
    (?P<secs>[0-9]{1,15})(?:\.(?P<frac>[0-9]{1,9}))?:\s+
    (?P<event>[^\s:]{1,128}):(?:\s(?P<rest>.*))?
""", re.VERBOSE | re.ASCII | re.DOTALL)


_LOST_RE = re.compile(r"CPU:([0-9]{1,6}) \[LOST ([0-9]{1,20}) EVENTS\]", re.ASCII)


_STARTED_RE = re.compile(r"##### CPU ([0-9]{1,6}) buffer started ####", re.ASCII)


_ENTRIES_RE = re.compile(
    r"#\s*entries-in-buffer/entries-written:\s*([0-9]{1,20})/([0-9]{1,20})\s+#P:([0-9]{1,6})",
    re.ASCII)


# kprobe lines put "(sym+0x0/0x150)" first, kretprobes "(caller+off/size <- sym)".
_PROBE_RE = re.compile(r"\((?P<at>[^()\s]+)(?: <- (?P<func>[^()\s]+))?\)(?:\s+|$)", re.ASCII)


_KEY_RE = re.compile(r"(?:^|(?<=\s))([A-Za-z_][A-Za-z0-9_]*)=", re.ASCII)


_SYM_RE = re.compile(r"[A-Za-z0-9_.$]+\+0x[0-9a-f]+/0x[0-9a-f]+(?: \[[^\]]+\])?", re.ASCII)


_DEC_RE = re.compile(r"[-+]?[0-9]{1,20}", re.ASCII)


_HEX_RE = re.compile(r"(?:0[xX])?[0-9a-fA-F]{1,16}", re.ASCII)


_HASHED_RE = re.compile(r"[0-9a-f]{16}", re.ASCII)


# printf conversions as the kernel's vsnprintf reads them; "%p" eats every following
# alphanumeric as its extension ("%pS", "%pI4").
_CONV_RE = re.compile(r"""%(?P<flags>[-+ #0]*)(?P<width>\*|[0-9]+)?(?:\.(?P<prec>\*|[0-9]*))?
    (?:hh|h|ll|l|L|q|z|Z|j|t)?(?P<conv>p[A-Za-z0-9]*|[diouxXcs%])""", re.VERBOSE | re.ASCII)


_TERNARY_BOOL_RE = re.compile(r'\?\s*"true"\s*:\s*"false"\s*\)*\s*$')


_TRAILING_STR_RE = re.compile(r':\s*"((?:[^"\\]|\\.)*)"\s*\)*\s*$')


# --------------------------------------------------------------------------- values

def _int_or_text(text: str, pattern: re.Pattern, base: int) -> int | str:
    s = text.strip()
    if pattern.fullmatch(s):
        return int(s, base)
    return text


def _generic_value(key: str, text: str) -> int | str:
    """Type a value without knowing how it was printed; keep the text when unsure."""
    if key == "call_site" or _SYM_RE.fullmatch(text):
        return text  # symbol+offset/size as printed
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]  # a string (kprobe ":string" args print name="filp")
    if _HASHED_RE.fullmatch(text):
        return int(text, 16)  # "%p": 16 hex digits; the kernel never zero-pads %d
    if _DEC_RE.fullmatch(text):
        return int(text, 10)
    if text[:2] in ("0x", "0X") and _HEX_RE.fullmatch(text):
        return int(text, 16)
    return text


_Converter = Callable[[str], "int | str"]


def _converter(conv: str, arg: str) -> _Converter:
    """How to type the text printed by conversion ``conv`` of argument ``arg``."""
    if "__print_flags" in arg:
        try:
            spec = gfp.print_flags_spec(arg, None)
        except FtslabError:
            return str
        m = _TRAILING_STR_RE.search(arg)
        zero = m.group(1) if m else ""

        def flags(text: str) -> int | str:
            try:
                return gfp.parse_flags(text, spec.table, spec.delim, zero)
            except FtslabError:
                return text
        return flags
    if "__print_symbolic" in arg:
        try:
            table = gfp.symbol_table(arg, None)
        except FtslabError:
            return str

        def symbolic(text: str) -> int | str:
            try:
                return gfp.parse_symbolic(text, table)
            except FtslabError:
                return text
        return symbolic
    if _TERNARY_BOOL_RE.search(arg):
        return lambda text: {"true": 1, "false": 0}.get(text, text)
    if conv in ("s", "c"):
        return str
    if conv == "p":
        # Plain %p: the hashed (or, with hash-ptr off, real) address in hex.
        return lambda text: 0 if text == "(null)" else _int_or_text(text, _HEX_RE, 16)
    if conv.startswith("p"):
        return str  # %pS and friends print symbols: kept exactly as printed
    if conv in "di":
        return lambda text: _int_or_text(text, _DEC_RE, 10)
    if conv == "u":
        return lambda text: _int_or_text(text, _DEC_RE, 10)
    if conv in "xX":
        return lambda text: _int_or_text(text, _HEX_RE, 16)
    if conv == "o":
        return lambda text: _int_or_text(text, re.compile(r"[0-7]{1,22}"), 8)
    return str


_PROBE_KEYS = ("__probe_ip", "__probe_func", "__probe_ret_ip")


_GROUP = {
    "d": r" *[-+]?[0-9]+", "i": r" *[-+]?[0-9]+", "u": r" *\+?[0-9]+",
    "x": r" *(?:0[xX])?[0-9a-fA-F]+", "X": r" *(?:0[xX])?[0-9a-fA-F]+", "o": r" *[0-7]+",
}


class _FmtMatcher:
    """A regex built from one event's print fmt, plus a converter per printed key."""

    def __init__(self, fmt: EventFormat):
        text, args = gfp.split_print_fmt(fmt.print_fmt)
        pattern = []
        self.keys: list[str] = []
        self.convs: list[_Converter] = []
        pos = 0
        argi = 0
        for m in _CONV_RE.finditer(text):
            literal = text[pos:m.start()]
            pos = m.end()
            conv = m.group("conv")
            if conv == "%":
                pattern.append(re.escape(literal + "%"))
                continue
            pattern.append(re.escape(literal))
            argi += (m.group("width") == "*") + (m.group("prec") == "*")
            arg = args[argi] if argi < len(args) else ""
            argi += 1
            # "key=%d", "pfn=0x%lx", "name=\"%s\"": the key is the word before the '='.
            key_m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)=(?:0[xX])?[^\sA-Za-z0-9_=]*$",
                              literal, re.ASCII)
            if key_m:
                key = key_m.group(1)
            else:
                rec = re.fullmatch(r"[\s(]*(?:\([^()]*\)\s*)?REC->([A-Za-z_][A-Za-z0-9_]*)[\s)]*",
                                   arg, re.ASCII)
                key = rec.group(1) if rec else f"arg{len(self.keys)}"
            while key in self.keys:
                key += "_"
            if key in _PROBE_KEYS:
                # kprobe text output prints these addresses as sym+off/size, whatever
                # the "%lx" of its print fmt says (print_kprobe_event()).
                group, convert = r"\S*?", str
            else:
                # %pS of a module address ends in " [module]"
                group = _GROUP.get(conv, r" *\S*?(?: \[[^\]\s]+\])?" if conv.startswith("p")
                                   else r".*?")
                convert = _converter(conv, arg)
            pattern.append(f"({group})")
            self.keys.append(key)
            self.convs.append(convert)
        pattern.append(re.escape(text[pos:]))
        if self.keys[:2] == ["__probe_func", "__probe_ret_ip"]:
            # A kretprobe's print fmt is "(%lx <- %lx)", __probe_func, __probe_ret_ip,
            # but print_kretprobe_event() prints the return address first.
            self.keys[:2] = ["__probe_ret_ip", "__probe_func"]
        self.regex = re.compile("".join(pattern), re.DOTALL | re.ASCII)
        self.converters = dict(zip(self.keys, self.convs))

    def match(self, rest: str) -> dict[str, int | str] | None:
        m = self.regex.fullmatch(rest)
        if m is None:
            return None
        return {k: c(v) for k, c, v in zip(self.keys, self.convs, m.groups())}


# --------------------------------------------------------------------------- parser

class TextParser:
    """Stateful reader of trace text: turns lines into Events and keeps the counts.

    After (or while) iterating :meth:`parse`, ``unparsed``, ``lost``, ``cmdlines`` and
    ``extra`` describe what was seen; :meth:`metadata` packs them into a Metadata.
    """

    def __init__(self, formats: Mapping[object, EventFormat] | None = None,
                 strict: bool = False):
        self.strict = strict
        self.formats: dict[str, EventFormat] = {}
        for key, fmt in (formats or {}).items():
            if not isinstance(fmt, EventFormat):
                raise ParseError(f"formats[{key!r}] is not an EventFormat")
            # Keyed by the name the line shows; (system, name) keys are accepted too.
            name = key[1] if isinstance(key, tuple) and len(key) == 2 else key
            self.formats[str(name)] = fmt
        self._matchers: dict[str, _FmtMatcher | None] = {}
        self.lines = 0
        """Lines read (all kinds)."""
        self.events = 0
        """Event lines turned into Events."""
        self.unparsed = 0
        """Non-blank, non-comment lines that were not events, markers or loss reports."""
        self.unparsed_samples: list[tuple[int, str]] = []
        """(line number, text) of the first few unparsed lines, for error messages."""
        self.fallback = 0
        """Events of a known format whose text did not follow its print fmt (split
        generically instead: another kernel's format, or options/fields set)."""
        self.lost: dict[int, int] = {}
        """CPU -> events reported lost by ``CPU:N [LOST M EVENTS]`` lines."""
        self.cmdlines: dict[int, str] = {}
        self.tgids: dict[int, int] = {}
        self.extra: dict = {}

    # -- helpers -------------------------------------------------------------------

    def _matcher(self, name: str) -> _FmtMatcher | None:
        if name not in self._matchers:
            fmt = self.formats.get(name)
            m = None
            if fmt is not None:
                try:
                    m = _FmtMatcher(fmt)
                except (FtslabError, re.error):
                    m = None  # an unreadable print fmt: fields are split generically
            self._matchers[name] = m
        return self._matchers[name]

    def _generic_fields(self, name: str, rest: str) -> dict[str, int | str]:
        fields: dict[str, int | str] = {}
        probe = _PROBE_RE.match(rest)
        if probe:
            if probe.group("func"):
                fields["__probe_ret_ip"] = probe.group("at")
                fields["__probe_func"] = probe.group("func")
            else:
                fields["__probe_ip"] = probe.group("at")
            rest = rest[probe.end():]
        fmt = self.formats.get(name)
        matcher = self._matcher(name)
        if fmt is not None:
            # Split only where a known key starts, so that values with blanks survive.
            known = {f.name for f in fmt.fields} | set(matcher.keys if matcher else ())
            starts = [m for m in _KEY_RE.finditer(rest) if m.group(1) in known]
        else:
            starts = list(_KEY_RE.finditer(rest))
        for k, m in enumerate(starts):
            end = starts[k + 1].start() if k + 1 < len(starts) else len(rest)
            key, value = m.group(1), rest[m.end():end].rstrip()
            conv = matcher.converters.get(key) if matcher else None
            fields[key] = conv(value) if conv else _generic_value(key, value)
        return fields

    def _bad(self, lineno: int, line: str, why: str) -> None:
        self.unparsed += 1
        if len(self.unparsed_samples) < 10:
            self.unparsed_samples.append((lineno, line[:200]))
        if self.strict:
            raise ParseError(f"line {lineno}: {why}: {line[:120]!r}")

    # -- API -----------------------------------------------------------------------

    def parse_line(self, line: str, lineno: int = 0) -> Event | None:
        """One line -> an Event, or None for headers, markers, loss reports and
        unreadable lines (the latter counted in ``unparsed``)."""
        if not isinstance(line, str):
            raise ParseError(f"line {lineno}: expected text, got {type(line).__name__}")
        self.lines += 1
        line = line.rstrip("\r\n")
        stripped = line.strip()
        if not stripped:
            return None
        if len(line) > MAX_LINE:
            self._bad(lineno, line, "line too long for a trace line")
            return None
        if stripped.startswith("#####"):
            m = _STARTED_RE.fullmatch(stripped)
            if m:
                # Printed by `cat trace` when a CPU's buffer begins later than the
                # others' (older events were overwritten).
                self.extra.setdefault("buffer_started", []).append(int(m.group(1)))
                return None
        if stripped.startswith("#"):
            m = _ENTRIES_RE.match(stripped)
            if m:
                self.extra["entries_in_buffer"] = int(m.group(1))
                self.extra["entries_written"] = int(m.group(2))
                self.extra["cpus"] = int(m.group(3))
            return None
        m = _LOST_RE.fullmatch(stripped)
        if m:
            cpu = int(m.group(1))
            self.lost[cpu] = self.lost.get(cpu, 0) + int(m.group(2))
            return None
        m = _EVENT_RE.fullmatch(line)
        if m is None:
            self._bad(lineno, line, "not a trace event line")
            return None
        comm, pid, cpu = m.group("comm"), int(m.group("pid")), int(m.group("cpu"))
        secs, frac = m.group("secs"), m.group("frac")
        ts = int(secs) * 1_000_000_000 + int(frac.ljust(9, "0")) if frac else int(secs)
        if ts > _U64:
            self._bad(lineno, line, "timestamp out of range")
            return None
        name = m.group("event")
        rest = m.group("rest") or ""
        fields = None
        matcher = self._matcher(name)
        if matcher is not None:
            fields = matcher.match(rest)
            if fields is None:
                self.fallback += 1
        if fields is None:
            fields = self._generic_fields(name, rest)
        if comm != "<...>":  # "<...>": the comm was no longer in saved_cmdlines
            self.cmdlines[pid] = comm
        tgid = m.group("tgid")
        if tgid and tgid[0] != "-":
            self.tgids[pid] = int(tgid)
        fmt = self.formats.get(name)
        self.events += 1
        return Event(ts=ts, cpu=cpu, pid=pid, comm=comm, system=fmt.system if fmt else "",
                     name=name, fields=MappingProxyType(fields))  # ours: no copy needed

    def parse(self, lines: Iterable[str]) -> Iterator[Event]:
        """Events from ``lines`` (with or without line ends), in input order."""
        if isinstance(lines, (str, bytes)):
            raise ParseError("parse() wants an iterable of lines; use parse_text() for text")
        try:
            it = iter(lines)
        except TypeError:
            raise ParseError(f"expected lines, got {type(lines).__name__}") from None
        for lineno, line in enumerate(it, 1):
            ev = self.parse_line(line, lineno)
            if ev is not None:
                yield ev

    def metadata(self) -> Metadata:
        extra = dict(self.extra)
        if self.tgids:
            extra["tgids"] = dict(self.tgids)
        if self.fallback:
            extra["fallback_events"] = self.fallback
        lost = [Loss(cpu=c, lost=n) for c, n in sorted(self.lost.items())]
        written, kept = extra.get("entries_written"), extra.get("entries_in_buffer")
        if written is not None and kept is not None and written > kept:
            # `cat trace` of an overwritten buffer: the header is the only trace of the
            # loss, and it is not per CPU.
            lost.append(Loss(cpu=-1, lost=written - kept))
        return Metadata(source="text", cmdlines=dict(self.cmdlines), lost=lost,
                        unparsed=self.unparsed, extra=extra)


def parse_lines(lines: Iterable[str], formats: Mapping[object, EventFormat] | None = None,
                strict: bool = False) -> Iterator[Event]:
    """Events from trace text lines; unreadable lines are skipped (fatal if ``strict``).

    Use :class:`TextParser` directly to see how many lines were skipped.
    """
    return TextParser(formats, strict).parse(lines)


def _column(values: list, signed: bool | None) -> np.ndarray:
    if values and all(type(v) is int for v in values):
        lo, hi = min(values), max(values)
        if signed is None:
            signed = lo < 0
        if signed and -(1 << 63) <= lo and hi < (1 << 63):
            return np.array(values, dtype=np.int64)
        if not signed and lo >= 0 and hi <= _U64:
            return np.array(values, dtype=np.uint64)
    col = np.empty(len(values), dtype=object)
    col[:] = values
    return col


def _columns(system: str, name: str, events: list[Event],
             fmt: EventFormat | None, seq: list[int] | None = None) -> EventColumns:
    keys: dict[str, None] = {}
    for ev in events:
        keys.update(dict.fromkeys(ev.fields))
    fields = {}
    for key in keys:
        f = fmt.field(key) if fmt else None
        fields[key] = _column([ev.fields.get(key) for ev in events], f.signed if f else None)
    return EventColumns(
        system=system, name=name,
        ts=np.array([ev.ts for ev in events], dtype=np.uint64),
        cpu=np.array([ev.cpu for ev in events], dtype=np.int32),
        pid=np.array([ev.pid for ev in events], dtype=np.int32),
        fields=fields,
        seq=np.array(seq, dtype=np.int64) if seq is not None else None)


def parse_text(text_or_lines: str | Iterable[str],
               formats: Mapping[object, EventFormat] | None = None,
               strict: bool = False) -> Dataset:
    """A whole text trace -> Dataset with one EventColumns per (system, name).

    The system is the format's when one is given for the event name, else "" (text
    lines do not show it).
    """
    if isinstance(text_or_lines, str):
        lines: Iterable[str] = text_or_lines.split("\n")
    else:
        lines = text_or_lines
    parser = TextParser(formats, strict)
    groups: dict[tuple[str, str], list[Event]] = {}
    seqs: dict[tuple[str, str], list[int]] = {}
    for i, ev in enumerate(parser.parse(lines)):
        groups.setdefault((ev.system, ev.name), []).append(ev)
        seqs.setdefault((ev.system, ev.name), []).append(i)
    columns = {key: _columns(key[0], key[1], evs, parser.formats.get(key[1]), seqs[key])
               for key, evs in groups.items()}
    known = {(f.system, f.name): f for f in parser.formats.values()}
    return Dataset(meta=parser.metadata(), columns=columns, formats=known)
