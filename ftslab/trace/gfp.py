"""Flag and symbol tables from an event's ``print fmt``, and the kernel's way of printing them.

The kmem events print ``gfp_flags`` through ``__print_flags(REC->gfp_flags, "|", {mask,
"NAME"}, ...)`` where each mask is a C constant expression the compiler already
expanded (``( unsigned long)((( gfp_t)((((1UL))) << (10))) | ...)``).  This module reads
those tables from the text with a small C-expression evaluator (never Python ``eval``),
prints a value the way ``trace_print_flags_seq()`` does, and reads such text back.

Pure functions over text: no file I/O, no tracefs.  The GFP bit values are never
hard-coded: they change between kernels (``__GFP_NO_OBJ_EXT`` is bit 24 on 6.18) and
are always taken from the running kernel's format file.  Every failure is a
``ftslab.errors.ParseError``.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from ftslab.errors import ParseError


__all__ = [
    "FlagTable", "PrintFlags", "flag_table", "symbol_table", "print_flags_spec",
    "format_flags", "parse_flags", "format_symbolic", "parse_symbolic", "eval_c_constant",
    "split_print_fmt"
]


#: (mask, name) pairs in the kernel's table order; order matters when printing.
FlagTable = tuple[tuple[int, str], ...]


_U64 = (1 << 64) - 1


# Bounds that keep a hostile print fmt from costing time or memory.
_MAX_NESTING = 100


_MAX_LITERAL_DIGITS = 24


class PrintFlags(NamedTuple):
    """One ``__print_flags(REC->field, "delim", {mask, "NAME"}, ...)`` call."""

    field: str
    """Field named in the first argument ("" if it is not a plain ``REC->name``)."""
    delim: str
    table: FlagTable


# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<chr>'(?:[^'\\\n]|\\.){1,4}')
  | (?P<num>[0-9][0-9A-Za-z_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>->|<<|>>|&&|\|\||==|!=|<=|>=|[-+*/%&|^~!?:,(){}\[\].<>;=])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL | re.ASCII)


class _Tok(NamedTuple):
    kind: str
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    out = []
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup or "other"
        if kind != "ws":
            out.append(_Tok(kind, m.group(), m.start()))
    return out


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'", "0": "\0"}


def _unquote(tok: _Tok) -> str:
    body = tok.text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body, flags=re.S)


# --------------------------------------------------------------------------- evaluator

# C types that appear in casts inside trace print fmts -> (bits, signed).
_TYPES = {
    "char": (8, True), "signed char": (8, True), "unsigned char": (8, False),
    "short": (16, True), "short int": (16, True), "unsigned short": (16, False),
    "unsigned short int": (16, False),
    "int": (32, True), "signed": (32, True), "signed int": (32, True),
    "unsigned": (32, False), "unsigned int": (32, False),
    "long": (64, True), "long int": (64, True), "signed long": (64, True),
    "unsigned long": (64, False), "unsigned long int": (64, False),
    "long long": (64, True), "unsigned long long": (64, False),
    "u8": (8, False), "u16": (16, False), "u32": (32, False), "u64": (64, False),
    "s8": (8, True), "s16": (16, True), "s32": (32, True), "s64": (64, True),
    "__u8": (8, False), "__u16": (16, False), "__u32": (32, False), "__u64": (64, False),
    "__s8": (8, True), "__s16": (16, True), "__s32": (32, True), "__s64": (64, True),
    "size_t": (64, False), "ssize_t": (64, True), "bool": (8, False), "_Bool": (8, False),
    # __bitwise typedefs of unsigned int in include/linux/types.h
    "gfp_t": (32, False), "slab_flags_t": (32, False), "fmode_t": (32, False),
    "blk_opf_t": (32, False), "vm_fault_t": (32, False), "xa_mark_t": (32, False),
    "vm_flags_t": (64, False), "pgoff_t": (64, False), "phys_addr_t": (64, False),
}


# Qualifiers and sparse annotations that do not change a cast's value.
_TYPE_NOISE = {"const", "volatile", "__force", "__bitwise"}


class _Val(NamedTuple):
    value: int
    bits: int
    signed: bool


def _wrap(value: int, bits: int, signed: bool) -> _Val:
    value &= (1 << bits) - 1
    if signed and value >> (bits - 1):
        value -= 1 << bits
    return _Val(value, bits, signed)


def _promote(v: _Val) -> _Val:
    # Integer promotions: anything narrower than int becomes int.
    return _wrap(v.value, 32, True) if v.bits < 32 else v


def _common(a: _Val, b: _Val) -> tuple[int, bool]:
    a, b = _promote(a), _promote(b)
    if a.bits != b.bits:
        wide = a if a.bits > b.bits else b
        return wide.bits, wide.signed
    return a.bits, a.signed and b.signed


def _literal(tok: _Tok) -> _Val:
    m = re.fullmatch(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)([uUlL]*)", tok.text)
    if not m or len(tok.text) > _MAX_LITERAL_DIGITS:
        raise ParseError(f"bad integer literal {tok.text[:30]!r} at offset {tok.pos}")
    digits, suffix = m.group(1), m.group(2).lower()
    if suffix not in ("", "u", "l", "ul", "lu", "ll", "ull", "llu"):
        raise ParseError(f"bad integer suffix {tok.text[:30]!r} at offset {tok.pos}")
    if digits[:2] in ("0x", "0X"):
        value, decimal = int(digits, 16), False
    elif digits.startswith("0"):
        value, decimal = int(digits, 8), False
    else:
        value, decimal = int(digits), True
    unsigned = "u" in suffix
    # C11 6.4.4.1: the first type in the list that can represent the value.
    candidates = [(32, True), (32, False), (64, True), (64, False)]
    if "l" in suffix:
        candidates = [(64, True), (64, False)]
    if unsigned:
        candidates = [c for c in candidates if not c[1]]
    elif decimal:
        candidates = [c for c in candidates if c[1]] or candidates
    for bits, signed in candidates:
        if value < (1 << (bits - 1 if signed else bits)):
            return _Val(value, bits, signed)
    raise ParseError(f"integer literal {tok.text[:30]!r} does not fit in 64 bits")


class _Parser:
    """Precedence climbing over a token slice; only constant integer expressions."""

    _BINARY = {  # C precedence, higher binds tighter
        "*": 10, "/": 10, "%": 10, "+": 9, "-": 9, "<<": 8, ">>": 8,
        "<": 7, "<=": 7, ">": 7, ">=": 7, "==": 6, "!=": 6,
        "&": 5, "^": 4, "|": 3, "&&": 2, "||": 1,
    }

    def __init__(self, toks: list[_Tok], what: str):
        self.toks = toks
        self.i = 0
        self.depth = 0
        self.what = what

    def fail(self, msg: str) -> ParseError:
        tok = self.toks[self.i] if self.i < len(self.toks) else None
        at = f"{tok.text[:20]!r} (offset {tok.pos})" if tok else "end"
        return ParseError(f"{msg} in {self.what} at {at}")

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str) -> None:
        tok = self.peek()
        if tok is None or tok.text != text:
            raise self.fail(f"expected {text!r}")
        self.i += 1

    def parse(self) -> _Val:
        v = self.expr(0)
        if self.i != len(self.toks):
            raise self.fail("unexpected token")
        return v

    def expr(self, min_prec: int) -> _Val:
        left = self.unary()
        while True:
            tok = self.peek()
            prec = self._BINARY.get(tok.text) if tok and tok.kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            self.i += 1
            right = self.expr(prec + 1)
            left = self.binary(tok.text, left, right)

    def binary(self, op: str, a: _Val, b: _Val) -> _Val:
        if op in ("&&", "||"):
            r = (a.value and b.value) if op == "&&" else (a.value or b.value)
            return _Val(1 if r else 0, 32, True)
        if op in ("<<", ">>"):
            a = _promote(a)
            if not 0 <= b.value < a.bits:
                raise self.fail(f"shift count {b.value} out of range")
            r = a.value << b.value if op == "<<" else a.value >> b.value
            return _wrap(r, a.bits, a.signed)
        bits, signed = _common(a, b)
        x, y = _wrap(a.value, bits, signed).value, _wrap(b.value, bits, signed).value
        if op in ("<", "<=", ">", ">=", "==", "!="):
            r = {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y,
                 "==": x == y, "!=": x != y}[op]
            return _Val(int(r), 32, True)
        if op in ("/", "%"):
            if y == 0:
                raise self.fail("division by zero")
            q = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)  # C truncates
            return _wrap(q if op == "/" else x - q * y, bits, signed)
        r = {"*": x * y, "+": x + y, "-": x - y, "&": x & y, "^": x ^ y, "|": x | y}[op]
        return _wrap(r, bits, signed)

    def cast_type(self) -> tuple[int, bool] | None:
        # "(" identifiers [*] ")" is a cast: no identifier is a valid operand here.
        j = self.i + 1
        words = []
        while j < len(self.toks) and self.toks[j].kind == "ident":
            words.append(self.toks[j].text)
            j += 1
        if not words or j >= len(self.toks):
            return None
        pointer = False
        while j < len(self.toks) and self.toks[j].text == "*":
            pointer, j = True, j + 1
        if j >= len(self.toks) or self.toks[j].text != ")":
            return None
        name = " ".join(w for w in words if w not in _TYPE_NOISE)
        if pointer:
            typ = (64, False)
        elif name in _TYPES:
            typ = _TYPES[name]
        else:
            raise self.fail(f"unknown type {name[:40]!r} in cast")
        self.i = j + 1
        return typ

    def unary(self) -> _Val:
        tok = self.peek()
        if tok is None:
            raise self.fail("expression ends early")
        self.depth += 1
        if self.depth > _MAX_NESTING:
            raise self.fail("expression nested too deeply")
        try:
            if tok.text in ("~", "!", "-", "+") and tok.kind == "op":
                self.i += 1
                v = _promote(self.unary())
                if tok.text == "~":
                    return _wrap(~v.value, v.bits, v.signed)
                if tok.text == "!":
                    return _Val(int(v.value == 0), 32, True)
                if tok.text == "-":
                    return _wrap(-v.value, v.bits, v.signed)
                return v
            if tok.text == "(":
                typ = self.cast_type()
                if typ is not None:
                    v = self.unary()
                    return _wrap(v.value, typ[0], typ[1])
                self.i += 1
                v = self.expr(0)
                self.take(")")
                return v
            if tok.kind == "num":
                self.i += 1
                return _literal(tok)
            raise self.fail("expected a constant")
        finally:
            self.depth -= 1


def eval_c_constant(text: str) -> int:
    """Value of a C integer constant expression as an ``unsigned long`` (0..2**64-1).

    Literals (decimal, hex, octal; U/L/UL/ULL suffixes), casts to integer types,
    unary ``~ ! - +``, and the binary arithmetic, shift, bitwise, comparison and logical
    operators.  Anything else (identifiers, function calls) is a ParseError.
    """
    if not isinstance(text, str):
        raise ParseError(f"expected expression text, got {type(text).__name__}")
    return _eval_tokens(_tokenize(text), "constant expression")


def _eval_tokens(toks: list[_Tok], what: str) -> int:
    if not toks:
        raise ParseError(f"empty {what}")
    try:
        v = _Parser(toks, what).parse()
    except RecursionError:
        raise ParseError(f"{what} nested too deeply") from None
    # struct trace_print_flags.mask is an unsigned long.
    return v.value & _U64


# --------------------------------------------------------------------------- tables

def _split_top(toks: list[_Tok], start: int, stops: set[str],
               allow_end: bool = False) -> tuple[list[_Tok], int]:
    """Tokens from ``start`` up to the first of ``stops`` outside brackets."""
    depth = 0
    i = start
    while i < len(toks):
        t = toks[i].text
        if depth == 0 and t in stops and toks[i].kind == "op":
            return toks[start:i], i
        if t in ("(", "{", "["):
            depth += 1
        elif t in (")", "}", "]"):
            depth -= 1
            if depth < 0:
                break
        i += 1
    if allow_end and depth == 0 and i == len(toks):
        return toks[start:i], i
    raise ParseError(f"unbalanced or unterminated argument at offset "
                     f"{toks[start].pos if start < len(toks) else 'end'}")


def _rec_field(arg: list[_Tok]) -> str:
    """Field named by an argument that is ``REC->name`` (possibly in parens)."""
    texts = [t.text for t in arg if t.text not in ("(", ")")]
    if len(texts) == 3 and texts[0] == "REC" and texts[1] == "->":
        return texts[2]
    return ""


def _mentions(arg: list[_Tok], field: str) -> bool:
    return any(arg[k].text == "REC" and arg[k + 1].text == "->" and arg[k + 2].text == field
               for k in range(len(arg) - 2))


def _is_null(toks: list[_Tok]) -> bool:
    texts = [t.text for t in toks if t.text not in ("(", ")")]
    return texts in (["NULL"], ["0"], ["void", "*", "0"])


def _read_table(toks: list[_Tok], i: int, what: str) -> tuple[FlagTable, int]:
    """Read ``{mask, "NAME"}, ...`` starting at token ``i`` up to the closing ``)``."""
    table: list[tuple[int, str]] = []
    ended = False
    while True:
        if i >= len(toks):
            raise ParseError(f"{what}: table is not closed")
        if toks[i].text == ")":
            return tuple(table), i + 1
        if ended:
            raise ParseError(f"{what}: entries after the terminator at offset {toks[i].pos}")
        if toks[i].text != "{":
            raise ParseError(f"{what}: expected '{{' at offset {toks[i].pos}")
        mask_toks, i = _split_top(toks, i + 1, {","})
        name_toks, i = _split_top(toks, i + 1, {"}"})
        i += 1
        if _is_null(name_toks):
            ended = True  # { 0, ((void *)0) } / { -1, NULL }: the kernel's sentinel
        elif name_toks and all(t.kind == "str" for t in name_toks):
            mask = _eval_tokens(mask_toks, f"{what} mask")
            table.append((mask, "".join(_unquote(t) for t in name_toks)))
        else:
            raise ParseError(f"{what}: entry name is not a string literal")
        if i < len(toks) and toks[i].text == ",":
            i += 1


def _find_calls(print_fmt: str, func: str, field: str | None):
    if not isinstance(print_fmt, str):
        raise ParseError(f"expected print fmt text, got {type(print_fmt).__name__}")
    if field is not None and not isinstance(field, str):
        raise ParseError("field name must be a string")
    toks = _tokenize(print_fmt)
    for i, tok in enumerate(toks):
        if tok.kind != "ident" or tok.text != func:
            continue
        if i + 1 >= len(toks) or toks[i + 1].text != "(":
            continue
        arg, j = _split_top(toks, i + 2, {","})
        if field is not None and not _mentions(arg, field):
            continue
        yield toks, arg, j + 1


def print_flags_spec(print_fmt: str, field: str | None = "gfp_flags") -> PrintFlags:
    """The first ``__print_flags`` call on ``REC->field`` (any field if None)."""
    what = f"__print_flags({'REC->' + field if field else '...'})"
    for toks, arg, i in _find_calls(print_fmt, "__print_flags", field):
        if i >= len(toks) or toks[i].kind != "str":
            raise ParseError(f"{what}: delimiter is not a string literal")
        delim = _unquote(toks[i])
        if i + 1 >= len(toks) or toks[i + 1].text != ",":
            raise ParseError(f"{what}: no flag table after the delimiter")
        table, _ = _read_table(toks, i + 2, what)
        return PrintFlags(_rec_field(arg), delim, table)
    raise ParseError(f"no {what} in print fmt")


def flag_table(print_fmt: str, field: str | None = "gfp_flags") -> FlagTable:
    """(mask, name) pairs of the ``__print_flags`` call on ``REC->field``, in order."""
    return print_flags_spec(print_fmt, field).table


def symbol_table(print_fmt: str, field: str | None = None) -> FlagTable:
    """(value, name) pairs of the ``__print_symbolic`` call on ``REC->field``."""
    what = f"__print_symbolic({'REC->' + field if field else '...'})"
    for toks, _arg, i in _find_calls(print_fmt, "__print_symbolic", field):
        return _read_table(toks, i, what)[0]
    raise ParseError(f"no {what} in print fmt")


def split_print_fmt(print_fmt: str) -> tuple[str, tuple[str, ...]]:
    """Split ``"fmt", arg, arg`` into the unescaped format string and the argument texts
    (each exactly as written, split at top-level commas)."""
    if not isinstance(print_fmt, str):
        raise ParseError(f"expected print fmt text, got {type(print_fmt).__name__}")
    toks = _tokenize(print_fmt)
    i = 0
    parts = []
    while i < len(toks) and toks[i].kind == "str":  # "a" "b" concatenates, as in C
        parts.append(_unquote(toks[i]))
        i += 1
    if not parts:
        raise ParseError(f"print fmt does not start with a string: {print_fmt[:60]!r}")
    args = []
    while i < len(toks):
        if toks[i].text != ",":
            raise ParseError(f"print fmt: expected ',' at offset {toks[i].pos}")
        arg, i = _split_top(toks, i + 1, {","}, allow_end=True)
        if not arg:
            raise ParseError(f"print fmt: empty argument at offset "
                             f"{toks[i].pos if i < len(toks) else len(print_fmt)}")
        args.append(print_fmt[arg[0].pos:arg[-1].pos + len(arg[-1].text)])
    return "".join(parts), tuple(args)


# --------------------------------------------------------------------------- printing

def _check_value(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _U64:
        raise ParseError(f"flag value {value!r} is not an unsigned long")
    return value


def format_flags(value: int, table: FlagTable, delim: str = "|", zero: str = "none") -> str:
    """``value`` as the kernel prints it (``trace_print_flags_seq()``).

    Walks ``table`` in order while bits remain; an entry whose mask bits are all set is
    printed and its bits are cleared; leftover bits follow as ``0x%lx``.  Like the
    kernel, an entry with mask 0 matches whenever bits remain (no table we know has one).
    ``value == 0`` gives ``zero``: the kmem events print ``"none"`` through their own
    ``(REC->gfp_flags) ? __print_flags(...) : "none"``.
    """
    flags = _check_value(value)
    if flags == 0:
        return zero
    parts = []
    for mask, name in table:
        if not flags:
            break
        if flags & mask != mask:
            continue
        parts.append(name)
        flags &= ~mask
    if flags:
        parts.append(f"0x{flags:x}")
    return delim.join(parts)


def parse_flags(text: str, table: FlagTable, delim: str = "|", zero: str = "none") -> int:
    """Inverse of :func:`format_flags`: names are OR-ed, a ``0x..`` part is the remainder."""
    if not isinstance(text, str):
        raise ParseError(f"expected flags text, got {type(text).__name__}")
    if text == zero or text == "":
        return 0
    masks: dict[str, int] = {}
    for mask, name in table:
        masks.setdefault(name, mask)
    value = 0
    for part in text.split(delim) if delim else [text]:
        if part in masks:
            value |= masks[part]
        elif re.fullmatch(r"0x[0-9a-f]{1,16}", part, re.ASCII):
            value |= int(part, 16)
        else:
            raise ParseError(f"unknown flag {part[:40]!r} in {text[:80]!r}")
    return value


def format_symbolic(value: int, table: FlagTable) -> str:
    """``value`` as ``trace_print_symbols_seq()`` prints it: the first exact match, else hex."""
    value = _check_value(value)
    for v, name in table:
        if v == value:
            return name
    return f"0x{value:x}"


def parse_symbolic(text: str, table: FlagTable) -> int:
    """Inverse of :func:`format_symbolic`."""
    if not isinstance(text, str):
        raise ParseError(f"expected symbol text, got {type(text).__name__}")
    for v, name in table:
        if name == text:
            return v
    if re.fullmatch(r"0x[0-9a-f]{1,16}", text, re.ASCII):
        return int(text, 16)
    raise ParseError(f"unknown symbol {text[:40]!r}")
