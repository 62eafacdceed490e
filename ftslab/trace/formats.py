"""Grammar for tracefs ``format`` files and the ring-buffer header descriptions.

Pure functions over text: no file is opened here.  Everything the decoder knows about
an event's layout comes from these parsed descriptions; nothing is hard-coded.
The grammar is written with pyparsing, one line at a time, so that an error can name
the line it is about.  Every failure is a ``ftslab.errors.ParseError``: callers feed
this module text from damaged recordings and must not meet any other exception.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyparsing as pp

from ftslab.errors import ParseError


__all__ = [
    "Field", "EventFormat", "HeaderPage", "HeaderEvent", "parse_format",
    "parse_header_page", "parse_header_event", "MAX_LAYOUT_BYTES"
]


#: Largest offset or size (bytes) accepted in a layout.  A ring-buffer event cannot be
#: larger than a sub-buffer (at most 1 MiB when buffer_subbuf_size_kb is raised), so a
#: bigger number is damage, not a layout.
MAX_LAYOUT_BYTES = 1 << 20


@dataclass(frozen=True)
class Field:
    name: str
    type: str
    """C type as written, without the field name and array suffix ("unsigned long",
    "const void *", "char", "__data_loc char[]")."""
    offset: int
    """Byte offset in the event record."""
    size: int
    """Bytes occupied in the record (for __data_loc: 4, the locator word)."""
    signed: bool
    data_loc: bool = False
    """``__data_loc``: a u32 at ``offset`` holds (length << 16) | offset-in-record."""
    rel_loc: bool = False
    """``__rel_loc``: like data_loc but the offset is relative to the end of this field."""
    array_len: int | None = None
    """Element count of a fixed array (``char comm[16]`` -> 16), else None.
    0 for a flexible array (``char buf[]``) that runs to the end of the record."""
    signed_given: bool = True
    """False when the file had no ``signed:`` (very old kernels): ``signed`` is then a
    guess from the type name."""

    @property
    def is_string(self) -> bool:
        """A char array or a dynamic char array: decoded as NUL-terminated text."""
        base = self.type.replace("__data_loc", "").replace("__rel_loc", "").strip()
        is_char = base.startswith("char") or base.startswith("const char")
        return is_char and (self.data_loc or self.rel_loc or self.array_len is not None)

    @property
    def is_pointer(self) -> bool:
        return "*" in self.type

    @property
    def is_dynamic(self) -> bool:
        """The value lives elsewhere in the record (``__data_loc`` / ``__rel_loc``)."""
        return self.data_loc or self.rel_loc


@dataclass(frozen=True)
class EventFormat:
    system: str
    name: str
    id: int
    common_fields: tuple[Field, ...]
    fields: tuple[Field, ...]
    print_fmt: str
    """The ``print fmt:`` text as the kernel gave it."""

    def field(self, name: str) -> Field | None:
        for f in self.fields + self.common_fields:
            if f.name == name:
                return f
        return None


@dataclass(frozen=True)
class HeaderPage:
    """Layout of a ring-buffer page header (events/header_page)."""

    timestamp_offset: int
    timestamp_size: int
    commit_offset: int
    commit_size: int
    data_offset: int
    data_size: int
    """Bytes of event data a page can hold; page size = data_offset + data_size."""

    @property
    def page_size(self) -> int:
        """Bytes of one ring-buffer (sub-)page, header included."""
        return self.data_offset + self.data_size


@dataclass(frozen=True)
class HeaderEvent:
    """Layout of the compressed event header (events/header_event)."""

    type_len_bits: int = 5
    time_delta_bits: int = 27
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max_type_len: int = 28


# --------------------------------------------------------------------------- grammar

_SEMI = pp.Suppress(";")


_COLON = pp.Suppress(":")


# A signed integer is accepted by the grammar so that "offset:-8" is reported as a bad
# value ("negative offset") instead of a vague syntax error.  ASCII digits only: int()
# would happily read other scripts' digits.
_INT = pp.Regex(r"-?[0-9]+")


# "field:unsigned long call_site;" -- the declaration is everything up to the ';'.
# header_page writes "field: u64 timestamp;" with a space, and kernels before 2.6.3x
# wrote "field special:" for common fields (kernel commit not identified): both are
# accepted.
_FIELD_LINE = (
    pp.Suppress(pp.Regex(r"field(?:\s+special)?\s*:"))
    + pp.Regex(r"[^;\n]*")("decl") + _SEMI
    + pp.Suppress(pp.Keyword("offset")) + _COLON + _INT("offset") + _SEMI
    + pp.Suppress(pp.Keyword("size")) + _COLON + _INT("size") + _SEMI
    + pp.Optional(pp.Suppress(pp.Keyword("signed")) + _COLON + _INT("signed") + _SEMI)
)


# The declaration itself: type words, then the name, then array dimensions.  Type words
# are taken loosely (any run without blanks or brackets) so that an unusual type
# ("struct foo", "__u8", "typeof(x)") still parses; the name must be a C identifier.
_IDENT_RE = r"[A-Za-z_][A-Za-z0-9_]*"


_DECL_TOKEN = pp.Located(pp.Regex(r"\[[^\]\n]*\]") | pp.Regex(r"[^\s\[\]]+"))


_DECL = pp.OneOrMore(pp.Group(_DECL_TOKEN))


_HEADER_LINE = {
    "name": pp.Suppress(pp.Literal("name") + ":") + pp.Regex(r"\S+")("value"),
    "id": pp.Suppress(pp.Literal("ID") + ":") + _INT("value"),
    "format": pp.Literal("format") + ":",
}


# header_event lines: "type_len    :    5 bits", "padding     : type == 29",
# "data max type_len  == 28".
_HE_BITS = pp.Regex(_IDENT_RE)("key") + _COLON + _INT("value") + pp.Suppress(pp.Keyword("bits"))


_HE_TYPE = (pp.Regex(_IDENT_RE)("key") + _COLON + pp.Suppress(pp.Keyword("type"))
            + pp.Suppress("==") + _INT("value"))


_HE_MAX = (pp.Suppress(pp.Keyword("data") + pp.Keyword("max") + pp.Keyword("type_len"))
           + pp.Suppress("==") + _INT("value"))


# Element sizes of C types, used only to turn a symbolic dimension ("[TASK_COMM_LEN]",
# printed by kernels before commit b3bc8547d3be ("tracing: Have TRACE_DEFINE_ENUM affect
# trace event types as well") (in v5.18)) into an element count from the field's size.
_ELEM_SIZES = {
    "char": 1, "signed char": 1, "unsigned char": 1, "u8": 1, "s8": 1, "__u8": 1,
    "__s8": 1, "bool": 1, "_Bool": 1,
    "short": 2, "unsigned short": 2, "u16": 2, "s16": 2, "__u16": 2, "__s16": 2,
    "int": 4, "unsigned int": 4, "u32": 4, "s32": 4, "__u32": 4, "__s32": 4,
    "pid_t": 4, "gfp_t": 4,
    "long": 8, "unsigned long": 8, "long long": 8, "unsigned long long": 8, "u64": 8,
    "s64": 8, "__u64": 8, "__s64": 8, "size_t": 8, "ssize_t": 8,
}


def _where(lineno: int, line: str) -> str:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return f"line {lineno}: {shown!r}"


def _to_int(text: str, what: str, where: str, lo: int = 0, hi: int = MAX_LAYOUT_BYTES) -> int:
    # Bound the digit count before int(): Python refuses >4300 digits with ValueError.
    if len(text.lstrip("-")) > 20:
        raise ParseError(f"{what} {text[:24]}... is out of range at {where}")
    value = int(text)
    if not lo <= value <= hi:
        raise ParseError(f"{what} {value} is out of range [{lo}, {hi}] at {where}")
    return value


def _parse(expr: pp.ParserElement, line: str, what: str, where: str) -> pp.ParseResults:
    try:
        return expr.parse_string(line, parse_all=True)
    except pp.ParseBaseException as exc:
        raise ParseError(f"malformed {what} at {where} (column {exc.col})") from None
    except RecursionError:
        raise ParseError(f"{what} nested too deeply at {where}") from None


def _guess_signed(ctype: str) -> bool:
    # Only for kernels whose format files lack "signed:" (before v2.6.31; kernel commit
    # not identified).
    words = ctype.replace("*", " * ").split()
    if "*" in words or "unsigned" in words or "bool" in words or "_Bool" in words:
        return False
    if any(w in ("signed", "int", "long", "short", "char", "ssize_t", "pid_t") for w in words):
        return True
    last = words[-1] if words else ""
    return last.startswith(("s", "__s")) and last.lstrip("_s").isdigit()


def _dims_count(dims: list[str], base_type: str, size: int, where: str) -> int | None:
    count = 1
    for d in dims:
        inner = d[1:-1].strip()
        if inner == "":
            # Flexible array member ("char buf[]"): runs to the end of the record.
            return 0
        if inner.isascii() and inner.isdigit():
            count *= _to_int(inner, "array length", where)
        else:
            elem = _ELEM_SIZES.get(" ".join(base_type.replace("const", " ").split()))
            if not elem or size % elem:
                return None
            return size // elem
    return count


def _parse_field(line: str, where: str) -> Field:
    tokens = _parse(_FIELD_LINE, line, "field line", where)
    decl = tokens["decl"].strip()
    offset = _to_int(tokens["offset"], "offset", where)
    size = _to_int(tokens["size"], "size", where)
    if offset + size > MAX_LAYOUT_BYTES:
        raise ParseError(f"field ends at {offset + size}, beyond {MAX_LAYOUT_BYTES} at {where}")
    located = _parse(_DECL, decl, "field declaration", where)
    # Each token is [start, [text], end]; trailing [..] tokens are the name's dimensions.
    parts = [(t[0], t[1][0]) for t in located]
    i = len(parts)
    while i > 0 and parts[i - 1][1].startswith("["):
        i -= 1
    dims = [p[1] for p in parts[i:]]
    if i == 0:
        raise ParseError(f"field declaration has no name at {where}")
    name_start, name = parts[i - 1]
    if not pp.Regex(_IDENT_RE).matches(name, parse_all=True):
        raise ParseError(f"field name {name[:40]!r} is not an identifier at {where}")
    ctype = decl[:name_start].strip()
    if not ctype:
        raise ParseError(f"field {name!r} has no type at {where}")
    words = ctype.split()
    data_loc = "__data_loc" in words
    rel_loc = "__rel_loc" in words
    base = " ".join(w for w in words if w not in ("__data_loc", "__rel_loc"))
    array_len = _dims_count(dims, base, size, where) if dims else None
    if "signed" in tokens:
        signed = _to_int(tokens["signed"], "signed", where, 0, 1) == 1
        given = True
    else:
        signed, given = _guess_signed(base), False
    return Field(name=name, type=ctype, offset=offset, size=size, signed=signed,
                 data_loc=data_loc, rel_loc=rel_loc, array_len=array_len,
                 signed_given=given)


def _lines(text: object) -> list[str]:
    if not isinstance(text, str):
        raise ParseError(f"expected format text, got {type(text).__name__}")
    # Split on "\n" only: str.splitlines() also splits on \x0b, \x1c, U+2028 ..., which
    # would let damage inside a line masquerade as structure.
    return [ln.rstrip("\r") for ln in text.split("\n")]


# --------------------------------------------------------------------------- API

def parse_format(text: str, system: str | None = None) -> EventFormat:
    """Parse an ``events/<system>/<event>/format`` file.

    The file does not name its system: pass it as ``system`` ("" if unknown).
    Common fields are told apart by their ``common_`` prefix, not by the blank line.
    """
    if system is not None and not isinstance(system, str):
        raise ParseError(f"system must be a string, got {type(system).__name__}")
    lines = _lines(text)
    name: str | None = None
    ev_id: int | None = None
    seen_format = False
    print_fmt: str | None = None
    fields: list[Field] = []
    for lineno, line in enumerate(lines, 1):
        where = _where(lineno, line)
        stripped = line.strip()
        if print_fmt is not None:
            if stripped:
                raise ParseError(f"text after print fmt at {where}")
            continue
        if not stripped:
            continue
        if stripped.startswith("print fmt:"):
            if not seen_format:
                raise ParseError(f"print fmt before format: at {where}")
            print_fmt = line.split("print fmt:", 1)[1].strip()
        elif stripped.startswith("field"):
            if not seen_format:
                raise ParseError(f"field line before format: at {where}")
            fields.append(_parse_field(line, where))
        elif stripped.startswith("name"):
            if name is not None:
                raise ParseError(f"second name: at {where}")
            name = _parse(_HEADER_LINE["name"], line, "name line", where)["value"]
        elif stripped.startswith("ID"):
            if ev_id is not None:
                raise ParseError(f"second ID: at {where}")
            tok = _parse(_HEADER_LINE["id"], line, "ID line", where)["value"]
            ev_id = _to_int(tok, "event ID", where, 0, (1 << 32) - 1)
        elif stripped.startswith("format"):
            _parse(_HEADER_LINE["format"], line, "format: line", where)
            if name is None or ev_id is None:
                raise ParseError(f"format: before name: and ID: at {where}")
            seen_format = True
        else:
            raise ParseError(f"unexpected {where}")
    if name is None:
        raise ParseError("format file has no name: line")
    if ev_id is None:
        raise ParseError(f"format of {name!r} has no ID: line")
    if print_fmt is None:
        raise ParseError(f"format of {name!r} has no print fmt: line (truncated?)")
    names = [f.name for f in fields]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ParseError(f"format of {name!r} has duplicate fields {sorted(dup)}")
    common = tuple(f for f in fields if f.name.startswith("common_"))
    own = tuple(f for f in fields if not f.name.startswith("common_"))
    return EventFormat(system=system or "", name=name, id=ev_id, common_fields=common,
                       fields=own, print_fmt=print_fmt)


def parse_header_page(text: str) -> HeaderPage:
    """Parse ``events/header_page``: where a sub-buffer's timestamp, commit and data are.

    The ``overwrite`` line shares the commit word (it is a flag bit in it) and is ignored.
    """
    found: dict[str, Field] = {}
    for lineno, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        f = _parse_field(line, _where(lineno, line))
        found.setdefault(f.name, f)
    missing = [n for n in ("timestamp", "commit", "data") if n not in found]
    if missing:
        raise ParseError(f"header_page lacks {', '.join(missing)}")
    ts, commit, data = found["timestamp"], found["commit"], found["data"]
    for f in (ts, commit):
        if f.size not in (4, 8):
            raise ParseError(f"header_page {f.name} size {f.size} is not 4 or 8")
    if data.size == 0:
        raise ParseError("header_page data size is 0")
    return HeaderPage(timestamp_offset=ts.offset, timestamp_size=ts.size,
                      commit_offset=commit.offset, commit_size=commit.size,
                      data_offset=data.offset, data_size=data.size)


def parse_header_event(text: str) -> HeaderEvent:
    """Parse ``events/header_event``: the bit split of the 32-bit event header and the
    reserved type_len values (padding, time extend, absolute time stamp)."""
    values: dict[str, int] = {}
    for lineno, line in enumerate(_lines(text), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = _where(lineno, line)
        if stripped.startswith("data max"):
            tok = _parse(_HE_MAX, line, "header_event line", where)
            key = "data_max_type_len"
        elif "bits" in stripped:
            tok = _parse(_HE_BITS, line, "header_event line", where)
            key = tok["key"] + "_bits"
        else:
            tok = _parse(_HE_TYPE, line, "header_event line", where)
            key = tok["key"]
        values[key] = _to_int(tok["value"], key, where, 0, 64)
    required = ("type_len_bits", "time_delta_bits", "padding", "time_extend",
                "data_max_type_len")
    missing = [k for k in required if k not in values]
    if missing:
        raise ParseError(f"header_event lacks {', '.join(missing)}")
    if values["type_len_bits"] + values["time_delta_bits"] != 32:
        raise ParseError("header_event: type_len and time_delta bits do not add up to 32")
    top = (1 << values["type_len_bits"]) - 1
    kinds = ["padding", "time_extend", "data_max_type_len"] + (
        ["time_stamp"] if "time_stamp" in values else [])
    for k in kinds:
        if values[k] > top:
            raise ParseError(f"header_event: {k} == {values[k]} does not fit in type_len")
    # A file without a time_stamp line leaves the kernel's enum value in place
    # (RINGBUF_TYPE_TIME_STAMP, the top type_len value).
    return HeaderEvent(type_len_bits=values["type_len_bits"],
                       time_delta_bits=values["time_delta_bits"],
                       padding=values["padding"], time_extend=values["time_extend"],
                       time_stamp=values.get("time_stamp", top),
                       data_max_type_len=values["data_max_type_len"])
