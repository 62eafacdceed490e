"""Reader of the kernel's BTF type information (``/sys/kernel/btf/vmlinux``).

Answers the few questions ftslab asks of the running kernel's types: where a struct's
members are (``struct kmem_cache``'s ``name``, ``size``, ``object_size`` for kprobe fetch
args), and what a function's parameters are called.  Written from the format described
in the kernel's Documentation/bpf/btf.rst and include/uapi/linux/btf.h.

Pure: takes the blob as bytes and never opens a file.  Every failure is a ``BtfError``
(a ``ParseError``, exit code 6): callers may hand this module any bytes at all, and must
not meet an IndexError, struct.error, RecursionError or a hang.

Cost: ``parse()`` walks the type section once to find where each record starts (records
are variable-length, so that cannot be skipped); names are decoded only for what is
looked up.  About 0.05 s for the 5.5 MB, 127k-type blob of a 6.18 kernel, then
about 1 ms per lookup.
"""
from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ftslab.errors import ParseError


__all__ = ["BtfError", "Member", "Param", "Btf", "parse", "kmem_cache_offsets"]


class BtfError(ParseError):
    """BTF that cannot be read: not BTF, truncated, damaged, or using a kind of record
    this reader does not know."""


@dataclass(frozen=True)
class Member:
    """One member of a struct, as the C expression ``s->name`` reaches it."""

    name: str
    offset: int
    """Bytes from the start of the struct (``bit_offset // 8``)."""
    bit_offset: int
    """Bits from the start of the struct."""
    bitfield_size: int
    """Width in bits of a bitfield member; 0 for an ordinary member."""
    type_name: str
    """C spelling of the member's type ("unsigned int", "const char *")."""
    size: int | None
    """Bytes of the member's type (of the base type for a bitfield); None when BTF gives
    no size (void, a function, a struct that is only declared)."""


@dataclass(frozen=True)
class Param:
    """One parameter of a function."""

    name: str
    """"" when BTF has no name for it (and for the ``...`` of a variadic function)."""
    type_name: str
    """C spelling of the parameter's type; "..." for variable arguments."""


# Kinds (btf.rst section 2.2).  Kind 0 is not a record kind: type id 0 is void.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8


VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15


FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


_KIND_NAMES = {
    INT: "INT", PTR: "PTR", ARRAY: "ARRAY", STRUCT: "STRUCT", UNION: "UNION",
    ENUM: "ENUM", FWD: "FWD", TYPEDEF: "TYPEDEF", VOLATILE: "VOLATILE", CONST: "CONST",
    RESTRICT: "RESTRICT", FUNC: "FUNC", FUNC_PROTO: "FUNC_PROTO", VAR: "VAR",
    DATASEC: "DATASEC", FLOAT: "FLOAT", DECL_TAG: "DECL_TAG", TYPE_TAG: "TYPE_TAG",
    ENUM64: "ENUM64",
}


# What follows the 12-byte struct btf_type, in 4-byte words: (fixed words, words per
# vlen element).  INT: one u32 of encoding/offset/bits; ARRAY: struct btf_array;
# STRUCT/UNION: btf_member; ENUM: btf_enum; FUNC_PROTO: btf_param; VAR: btf_var;
# DATASEC: btf_var_secinfo; DECL_TAG: btf_decl_tag; ENUM64: btf_enum64.
_TRAILER = {
    INT: (1, 0), PTR: (0, 0), ARRAY: (3, 0), STRUCT: (0, 3), UNION: (0, 3),
    ENUM: (0, 2), FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0),
    RESTRICT: (0, 0), FUNC: (0, 0), FUNC_PROTO: (0, 2), VAR: (1, 0), DATASEC: (0, 3),
    FLOAT: (0, 0), DECL_TAG: (1, 0), TYPE_TAG: (0, 0), ENUM64: (0, 3),
}


# info word: vlen in bits 0-15 and kind in bits 24-28 up to 6.x; the kernel's uapi
# header widened them to bits 0-23 and 24-30 when it added the layout section (the
# bits were unused, i.e. zero, before), so the wider masks read every version.
# (Kernel commit not identified: A. Maguire's bpf-next series "Add kind layout to BTF",
# v8 posted in Dec 2025; the uapi header with layout_off/layout_len was seen.)
_VLEN_MASK = 0xFFFFFF


_KIND_MASK = 0x7F


_NKINDS = _KIND_MASK + 1


_HDR_BASE = 24      # magic..str_len: the header every BTF version has


_HDR_LAYOUT = 32    # ... then layout_off, layout_len (the layout section; commit above)


#: Longest chain of typedefs/qualifiers/pointers/arrays followed, and deepest nesting
#: of anonymous struct members flattened.  Real kernel types stay far below; a loop in
#: damaged data hits it instead of recursing forever.
_MAX_DEPTH = 64


_ANON = "{...}"


_BIG_HOST = struct.pack("=I", 1) == struct.pack(">I", 1)


def _word_array(raw: bytes, swap: bool) -> array:
    words = array("I")      # unsigned int: 32 bits on every platform Linux runs on
    words.frombytes(raw)
    if swap:
        words.byteswap()
    return words


class Btf:
    """The types of one BTF blob.  Build it with :func:`parse`."""

    def __init__(self, words: array, starts: array, strings: bytes, big_endian: bool):
        self._w = words
        self._starts = starts        # starts[i]: word index of type id i+1
        self._str = strings
        self._big_endian = big_endian
        self._index: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        """Number of types (the highest type id)."""
        return len(self._starts)

    @property
    def big_endian(self) -> bool:
        return self._big_endian

    # ------------------------------------------------------------------ raw records

    def _pos(self, tid: int) -> int:
        if not 0 < tid <= len(self._starts):
            raise BtfError(f"type id {tid} is out of range 1..{len(self._starts)}"
                           " (damaged BTF, or a module's BTF read without vmlinux)")
        return self._starts[tid - 1]

    def _kind(self, tid: int) -> int:
        return (self._w[self._pos(tid) + 1] >> 24) & _KIND_MASK

    def _string(self, off: int) -> str:
        end = self._str.find(b"\0", off) if off < len(self._str) else -1
        if end < 0:
            raise BtfError(f"name offset {off} is outside the string section"
                           f" ({len(self._str)} bytes)")
        try:
            return self._str[off:end].decode("utf-8")
        except UnicodeDecodeError:
            raise BtfError(f"name at string offset {off} is not UTF-8") from None

    def _name(self, tid: int) -> str:
        return self._string(self._w[self._pos(tid)])

    def _ids_named(self, name: str, kind: int) -> list[int]:
        """Type ids of ``kind`` whose name is ``name``, lowest first."""
        key = name.encode("utf-8", "surrogatepass")
        if not key or b"\0" in key:
            return []
        # Find the name in the string table first: a name offset may point anywhere,
        # even into the tail of a longer string, so every place where name+NUL occurs
        # is a candidate.  Only types with one of those offsets can have the name.
        key += b"\0"
        offs = []
        at = self._str.find(key)
        while at >= 0:
            offs.append(at)
            at = self._str.find(key, at + 1)
        if not offs:
            return []
        ids, name_offs = self._kind_index(kind)
        return [int(i) for i in ids[np.isin(name_offs, offs)]]

    def _kind_index(self, kind: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids of all types of ``kind`` and their name offsets, built on first use."""
        if kind not in self._index:
            words = np.frombuffer(self._w, dtype=np.uint32)
            starts = np.frombuffer(self._starts, dtype=np.uint32).astype(np.intp)
            match = ((words[starts + 1] >> 24) & _KIND_MASK) == kind
            self._index[kind] = (np.flatnonzero(match) + 1, words[starts[match]])
        return self._index[kind]

    def _skip_tags(self, tid: int, typedefs: bool = False) -> int:
        """Follow qualifiers and type tags (and typedefs if asked) to the type below."""
        passthrough = (CONST, VOLATILE, RESTRICT, TYPE_TAG) + ((TYPEDEF,) if typedefs else ())
        for _ in range(_MAX_DEPTH):
            if tid == 0 or self._kind(tid) not in passthrough:
                return tid
            tid = self._w[self._pos(tid) + 2]
        raise BtfError(f"type chain at [{tid}] is longer than {_MAX_DEPTH} (a loop?)")

    # ------------------------------------------------------------------ sizes

    @cached_property
    def _pointer_size(self) -> int | None:
        # BTF does not record the size of a pointer.  Linux is LP64 or ILP32 on every
        # architecture, so a pointer is as wide as long: take the size of BTF's long.
        for name in ("long unsigned int", "long int", "unsigned long", "long"):
            ids = self._ids_named(name, INT)
            if ids:
                return self._w[self._pos(ids[0]) + 2]
        return None

    def _size(self, tid: int, depth: int = 0) -> int | None:
        if depth > _MAX_DEPTH:
            raise BtfError(f"type [{tid}] nests deeper than {_MAX_DEPTH} (a loop?)")
        tid = self._skip_tags(tid, typedefs=True)
        if tid == 0:
            return None
        pos = self._pos(tid)
        kind = (self._w[pos + 1] >> 24) & _KIND_MASK
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return self._w[pos + 2]
        if kind == PTR:
            return self._pointer_size
        if kind == ARRAY:
            elem = self._size(self._w[pos + 3], depth + 1)
            return None if elem is None else elem * self._w[pos + 5]
        return None     # FWD, FUNC, FUNC_PROTO, VAR, DECL_TAG: no size of their own

    # ------------------------------------------------------------------ C spelling

    def type_name(self, type_id: int) -> str:
        """C spelling of a type: "struct kmem_cache *", "unsigned int", "gfp_t",
        "const char *", "char *const", "int[4]", "int (*)[4]".  A pointer to a function
        is "func_proto *"; an anonymous struct is "struct {...}".  Type tags
        (``__rcu``, ``__user`` as BTF records them) are left out."""
        return self._decl(type_id, "", 0)

    def _decl(self, tid: int, inner: str, depth: int) -> str:
        # Builds the C declarator from the outside in, as C reads it: ``inner`` is what
        # has been spelled so far around the (empty) name.
        if depth > _MAX_DEPTH:
            raise BtfError(f"type [{tid}] nests deeper than {_MAX_DEPTH} (a loop?)")
        if tid == 0:
            return _join("void", inner)
        pos = self._pos(tid)
        info = self._w[pos + 1]
        kind = (info >> 24) & _KIND_MASK
        ref = self._w[pos + 2]
        if kind == PTR:
            target = self._skip_tags(ref)
            star = "*" + inner
            if target and self._kind(target) == ARRAY:
                star = f"({star})"
            return self._decl(ref, star, depth + 1)
        if kind == ARRAY:
            return self._decl(self._w[pos + 3], f"{inner}[{self._w[pos + 5]}]", depth + 1)
        if kind in (CONST, VOLATILE, RESTRICT):
            word = {CONST: "const", VOLATILE: "volatile", RESTRICT: "restrict"}[kind]
            below = self._skip_tags(ref)
            if below and self._kind(below) == PTR:
                # qualifies the pointer itself: char *const
                return self._decl(ref, word + (" " + inner if inner else ""), depth + 1)
            return word + " " + self._decl(ref, inner, depth + 1)
        if kind == TYPE_TAG:
            return self._decl(ref, inner, depth + 1)
        if kind == FUNC_PROTO:
            return _join("func_proto", inner)
        name = self._string(self._w[pos])
        if kind in (STRUCT, UNION, FWD):
            word = "union" if kind == UNION or (kind == FWD and info >> 31) else "struct"
            return _join(f"{word} {name or _ANON}", inner)
        if kind in (ENUM, ENUM64):
            return _join(f"enum {name or _ANON}", inner)
        return _join(name or "(anon)", inner)  # INT, FLOAT, TYPEDEF, and non-types

    # ------------------------------------------------------------------ lookups

    def _struct_id(self, name: str) -> int | None:
        ids = self._ids_named(name, STRUCT)
        if not ids:
            return None
        # One name can have several records: an empty declaration-only record, and in
        # vmlinux even two different structs of one name from different files (6.18
        # has 14 such names, e.g. two "struct console" of 280 and 40 bytes).  The first
        # one with members wins.
        for tid in ids:
            if self._w[self._pos(tid) + 1] & _VLEN_MASK:
                return tid
        return ids[0]

    def struct_size(self, name: str) -> int | None:
        """``sizeof(struct name)`` in bytes, or None if there is no such struct."""
        tid = self._struct_id(name)
        return None if tid is None else self._w[self._pos(tid) + 2]

    def struct_members(self, name: str) -> dict[str, Member] | None:
        """Members of ``struct name`` (not a union), in declaration order, or None if
        there is no such struct.  Members of anonymous struct/union members are listed
        under their own names with offsets from the outer struct, as ``s->x`` reaches
        them in C; unnamed bitfield padding is left out."""
        tid = self._struct_id(name)
        if tid is None:
            return None
        out: dict[str, Member] = {}
        self._members(tid, 0, out, 0)
        return out

    def _members(self, tid: int, base_bits: int, out: dict[str, Member], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise BtfError(f"anonymous members nest deeper than {_MAX_DEPTH} (a loop?)")
        w = self._w
        pos = self._pos(tid)
        info = w[pos + 1]
        kflag = info >> 31
        for i in range(info & _VLEN_MASK):
            at = pos + 3 + 3 * i
            name_off, mtype, moff = w[at], w[at + 1], w[at + 2]
            if kflag:
                # btf.rst 2.2.4: kind_flag set: bitfield size in the top 8 bits,
                # bit offset in the low 24.
                bits, bitfield = moff & 0xFFFFFF, moff >> 24
            else:
                bits, bitfield = moff, 0
                base = self._skip_tags(mtype, typedefs=True)
                if base and self._kind(base) == INT:
                    # Without kind_flag a bitfield is an INT whose bit count is less
                    # than its size, and that may start BTF_INT_OFFSET bits further.
                    bpos = self._pos(base)
                    enc = w[bpos + 3]
                    nbits, ioff = enc & 0xFF, (enc >> 16) & 0xFF
                    if ioff or nbits != 8 * w[bpos + 2]:
                        bits, bitfield = bits + ioff, nbits
            bits += base_bits
            mname = self._string(name_off)
            if not mname:
                inner = self._skip_tags(mtype, typedefs=True)
                if inner and self._kind(inner) in (STRUCT, UNION):
                    self._members(inner, bits, out, depth + 1)
                continue    # else unnamed bitfield padding: nothing to reach
            if mname not in out:
                out[mname] = Member(name=mname, offset=bits // 8, bit_offset=bits,
                                    bitfield_size=bitfield,
                                    type_name=self._decl(mtype, "", 0),
                                    size=self._size(mtype))

    def func_params(self, name: str) -> list[Param] | None:
        """Parameters of the function ``name`` in order, or None if BTF has no such
        function.  Names may be ""; a variadic function ends with Param("", "...").
        If several functions share the name (static functions in different files),
        the first is used."""
        ids = self._ids_named(name, FUNC)
        if not ids:
            return None
        w = self._w
        proto = w[self._pos(ids[0]) + 2]
        if self._kind(proto) != FUNC_PROTO:
            raise BtfError(f"function {name!r} [{ids[0]}] does not refer to a FUNC_PROTO")
        pos = self._pos(proto)
        vlen = w[pos + 1] & _VLEN_MASK
        params = []
        for i in range(vlen):
            name_off, ptype = w[pos + 3 + 2 * i], w[pos + 4 + 2 * i]
            if ptype == 0 and name_off == 0 and i == vlen - 1:
                params.append(Param(name="", type_name="..."))
            else:
                params.append(Param(name=self._string(name_off),
                                    type_name=self._decl(ptype, "", 0)))
        return params


def _join(base: str, inner: str) -> str:
    if not inner:
        return base
    return base + inner if inner.startswith("[") else f"{base} {inner}"


def parse(data: bytes) -> Btf:
    """Read a BTF blob (the bytes of ``/sys/kernel/btf/vmlinux``), of either byte order."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BtfError(f"expected BTF bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise BtfError(f"BTF blob of {len(data)} bytes is shorter than a header")
    # The magic 0xeB9F reads back only in the byte order the blob was written in.
    if struct.unpack_from("<H", data)[0] == 0xEB9F:
        order, big = "<", False
    elif struct.unpack_from(">H", data)[0] == 0xEB9F:
        order, big = ">", True
    else:
        raise BtfError(f"not BTF: magic is 0x{data[0]:02x}{data[1]:02x}, not eB9F")
    version, _flags, hdr_len = struct.unpack_from(order + "BBI", data, 2)
    if version != 1:
        raise BtfError(f"BTF version {version} is not known (only 1)")
    if not _HDR_BASE <= hdr_len <= len(data):
        raise BtfError(f"BTF header length {hdr_len} is not valid for a blob of"
                       f" {len(data)} bytes")
    type_off, type_len, str_off, str_len = struct.unpack_from(order + "4I", data, 8)
    layout_off = layout_len = 0
    if hdr_len >= _HDR_LAYOUT:
        layout_off, layout_len = struct.unpack_from(order + "2I", data, 24)
    # Header fields past those are ignored: they can only describe sections this
    # reader does not use; the type and string sections stay where they are said to be.

    def section(what: str, off: int, length: int) -> bytes:
        start = hdr_len + off
        if start + length > len(data):
            raise BtfError(f"BTF {what} section ({length} bytes at {start}) runs past the"
                           f" end of the {len(data)}-byte blob (truncated?)")
        return data[start:start + length]

    types = section("type", type_off, type_len)
    strings = section("string", str_off, str_len)
    if type_len % 4:
        raise BtfError(f"BTF type section length {type_len} is not a multiple of 4")
    if not strings or strings[0] != 0 or strings[-1] != 0:
        raise BtfError("BTF string section does not start and end with a NUL byte")

    trailer = [_TRAILER.get(k) for k in range(_NKINDS)]
    if layout_len:
        _add_layout(trailer, section("layout", layout_off, layout_len), order)

    words = _word_array(types, swap=big != _BIG_HOST)
    return Btf(words, _scan(words, trailer), strings, big)


def _add_layout(trailer: list, raw: bytes, order: str) -> None:
    # Kernels with the layout section (commit not identified: see _VLEN_MASK) may
    # describe each kind's record size in it
    # (struct btf_layout: u8 info_sz, u8 elem_sz, u16 flags, one per kind from 0), so
    # that a reader can step over kinds it does not know.  Used only for those: the
    # sizes of the known kinds come from the documented format.
    if len(raw) % 4:
        raise BtfError(f"BTF layout section length {len(raw)} is not a multiple of 4")
    for kind in range(min(len(raw) // 4, _NKINDS)):
        info_sz, elem_sz, _flags = struct.unpack_from(order + "BBH", raw, 4 * kind)
        if kind == 0 or trailer[kind] is not None:
            continue
        if info_sz % 4 or elem_sz % 4:
            raise BtfError(f"BTF layout of kind {kind} has sizes {info_sz}/{elem_sz},"
                           " not multiples of 4")
        trailer[kind] = (info_sz // 4, elem_sz // 4)


def _scan(words: array, trailer: list) -> array:
    """Word index at which each type record starts, for ids 1, 2, ..."""
    starts = array("I")
    append = starts.append
    fixed = [t[0] if t else -1 for t in trailer]
    per = [t[1] if t else 0 for t in trailer]
    n = len(words)
    pos = 0
    while pos + 3 <= n:
        info = words[pos + 1]
        kind = (info >> 24) & _KIND_MASK
        extra = fixed[kind]
        if extra < 0:
            raise BtfError(f"type [{len(starts) + 1}] has kind {kind}, unknown to this"
                           " reader (known: 1..19; is the kernel newer than ftslab?)")
        append(pos)
        pos += 3 + extra + (info & _VLEN_MASK) * per[kind]
    if pos != n:
        # pos > n: the last record runs past the end; pos < n: a partial record header
        inside = len(starts) + (pos < n)
        raise BtfError(f"BTF type section ends inside type [{inside}]"
                       " (truncated or damaged)")
    return starts


def kmem_cache_offsets(btf: Btf) -> dict[str, int] | None:
    """Byte offsets of ``name``, ``size`` and ``object_size`` in ``struct kmem_cache``
    (for kprobe fetch args such as ``+0(+104(%di)):string``), or None if the struct or
    any of those members is missing (or is a bitfield)."""
    members = btf.struct_members("kmem_cache")
    if members is None:
        return None
    out = {}
    for field in ("name", "size", "object_size"):
        m = members.get(field)
        if m is None or m.bitfield_size:
            return None
        out[field] = m.offset
    return out
