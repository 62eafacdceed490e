"""ftslab.kernel.btf: the BTF reader, on hand-built blobs and on the running kernel's vmlinux BTF.

Synthetic blobs are built here with struct.pack (no BTF blob is committed).  The kernel
tests read /sys/kernel/btf/vmlinux and compare with what bpftool and pahole read there
(and /proc/kallsyms, the kernel's config): nothing of one kernel build is written here.
They skip when the BTF or the tools are missing, unless FTSLAB_KERNEL_TESTS=1 turns the
skip into a failure.
"""
from __future__ import annotations

import os
import struct
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftslab.kernel.btf import BtfError, Member, Param, kmem_cache_offsets, parse
from ftslab.errors import BadInput, EXIT_INPUT
from kernel_oracle import (VMLINUX, BtfRaw, kallsyms_text_counts, kernel_config,
                           pahole_members, unavailable)

INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC = 9, 10, 11, 12, 13, 14, 15
FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 16, 17, 18, 19


# --------------------------------------------------------------------------- builder

class Blob:
    """Builds a BTF blob word by word, as btf.rst describes it."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types: list[list[int]] = []

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, kind, name="", ref=0, vlen=0, kflag=0, extra=()) -> int:
        info = (kflag << 31) | (kind << 24) | vlen
        self.types.append([self.s(name), info, ref, *[w & 0xFFFFFFFF for w in extra]])
        return len(self.types)

    def int_(self, name, size, bits=None, signed=False, bit_off=0) -> int:
        bits = size * 8 if bits is None else bits
        return self.add(INT, name, size, extra=[(int(signed) << 24) | (bit_off << 16) | bits])

    def struct(self, name, size, members, kflag=0, kind=STRUCT) -> int:
        extra = []
        for mname, mtype, off in members:
            extra += [self.s(mname), mtype, off]
        return self.add(kind, name, size, vlen=len(members), kflag=kflag, extra=extra)

    def proto(self, ret, params) -> int:
        extra = []
        for pname, ptype in params:
            extra += [self.s(pname), ptype]
        return self.add(FUNC_PROTO, "", ret, vlen=len(params), extra=extra)

    def build(self, order="<", hdr_len=24, gap=0, layout: bytes = b"") -> bytes:
        words = [w for t in self.types for w in t]
        types = struct.pack(f"{order}{len(words)}I", *words)
        strings = bytes(self.strings)
        type_off = gap
        str_off = type_off + len(types)
        layout_off = str_off + len(strings) + (-len(strings) % 4)
        hdr = struct.pack(order + "HBBI4I", 0xEB9F, 1, 0, hdr_len, type_off, len(types),
                          str_off, len(strings))
        if hdr_len >= 32:
            hdr += struct.pack(order + "2I", layout_off if layout else 0, len(layout))
        hdr = hdr.ljust(hdr_len, b"\0")
        body = bytes(gap) + types + strings
        if layout:
            body = body.ljust(layout_off, b"\0") + layout
        return hdr + body


def sample() -> tuple[Blob, dict[str, int]]:
    """Every kind, a forward declaration and an empty record before the full struct,
    bitfields both ways, an anonymous union, a function with unnamed and variadic
    parameters."""
    b = Blob()
    t = {}
    t["int"] = b.int_("int", 4, signed=True)
    t["uint"] = b.int_("unsigned int", 4)
    t["char"] = b.int_("char", 1)
    t["long"] = b.int_("long int", 8, signed=True)
    t["fwd"] = b.add(FWD, "thing")
    t["empty"] = b.struct("thing", 0, [])
    t["const_char"] = b.add(CONST, "", t["char"])
    t["str"] = b.add(PTR, "", t["const_char"])
    t["anon_union"] = b.struct("", 8, [("u_int", t["int"], 0), ("u_ptr", t["str"], 0)],
                               kind=UNION)
    t["thing"] = b.struct("thing", 24, [
        ("a", t["int"], 0),
        ("flag", t["uint"], (1 << 24) | 32),     # unsigned int flag:1
        ("mode", t["uint"], (3 << 24) | 33),     # unsigned int mode:3
        ("", t["uint"], (4 << 24) | 36),         # unsigned int :4 (padding)
        ("", t["anon_union"], 64),
        ("name", t["str"], 128),
    ], kflag=1)
    t["gfp_t"] = b.add(TYPEDEF, "gfp_t", t["uint"])
    t["thing_ptr"] = b.add(PTR, "", t["thing"])
    t["proto"] = b.proto(t["int"], [("", t["thing_ptr"]), ("flags", t["gfp_t"]), ("", 0)])
    t["func"] = b.add(FUNC, "do_thing", t["proto"])
    t["char16"] = b.add(ARRAY, extra=[t["char"], t["int"], 16])
    t["u3"] = b.int_("unsigned int", 4, bits=3)
    t["u4_at2"] = b.int_("unsigned int", 4, bits=4, bit_off=2)
    t["old"] = b.struct("old", 24, [
        ("x", t["u3"], 5), ("arr", t["char16"], 32), ("y", t["u4_at2"], 64 * 2),
        ("z", t["uint"], 160)])
    t["int6"] = b.add(ARRAY, extra=[t["int"], t["int"], 6])
    t["int5x6"] = b.add(ARRAY, extra=[t["int6"], t["int"], 5])
    t["p_int6"] = b.add(PTR, "", t["int6"])
    t["p_proto"] = b.add(PTR, "", t["proto"])
    t["vol"] = b.add(VOLATILE, "", t["int"])
    t["char_ptr"] = b.add(PTR, "", t["char"])
    t["restrict"] = b.add(RESTRICT, "", t["char_ptr"])
    t["const_ptr"] = b.add(CONST, "", t["char_ptr"])
    t["enum"] = b.add(ENUM, "color", 4, vlen=2, extra=[b.s("RED"), 0, b.s("BLUE"), -1])
    t["enum64"] = b.add(ENUM64, "big", 8, vlen=1, extra=[b.s("HUGE"), 1, 2])
    t["float"] = b.add(FLOAT, "double", 8)
    t["var"] = b.add(VAR, "counter", t["int"], extra=[1])
    t["datasec"] = b.add(DATASEC, ".data", 4, vlen=1, extra=[t["var"], 0, 4])
    t["decl_tag"] = b.add(DECL_TAG, "user", t["thing"], extra=[-1])
    t["rcu"] = b.add(TYPE_TAG, "rcu", t["thing"])
    t["rcu_ptr"] = b.add(PTR, "", t["rcu"])
    t["void_ptr"] = b.add(PTR, "", 0)
    t["fwd_union"] = b.add(FWD, "maybe", kflag=1)
    t["p_fwd_union"] = b.add(PTR, "", t["fwd_union"])
    t["union"] = b.struct("uthing", 4, [("i", t["int"], 0)], kind=UNION)
    t["kmem_cache"] = b.struct("kmem_cache", 64, [
        ("size", t["uint"], 32 * 8), ("object_size", t["uint"], 36 * 8),
        ("name", t["str"], 104 * 8)])
    t["varargs_only"] = b.proto(0, [("fmt", t["str"]), ("", 0)])
    t["printk"] = b.add(FUNC, "printk", t["varargs_only"])
    return b, t


@pytest.fixture(params=["<", ">"], ids=["little", "big"])
def order(request):
    return request.param


def check_sample(btf, t):
    members = btf.struct_members("thing")
    assert members is not None
    assert list(members) == ["a", "flag", "mode", "u_int", "u_ptr", "name"]
    assert members["a"] == Member("a", 0, 0, 0, "int", 4)
    assert members["flag"] == Member("flag", 4, 32, 1, "unsigned int", 4)
    assert members["mode"] == Member("mode", 4, 33, 3, "unsigned int", 4)
    # anonymous union members reached as thing.u_int, at the union's offset
    assert members["u_int"] == Member("u_int", 8, 64, 0, "int", 4)
    assert members["u_ptr"] == Member("u_ptr", 8, 64, 0, "const char *", 8)
    assert members["name"] == Member("name", 16, 128, 0, "const char *", 8)
    assert btf.struct_size("thing") == 24

    old = btf.struct_members("old")
    # no kind_flag: a bitfield is an INT narrower than its size, BTF_INT_OFFSET added
    assert old["x"] == Member("x", 0, 5, 3, "unsigned int", 4)
    assert old["arr"] == Member("arr", 4, 32, 0, "char[16]", 16)
    assert old["y"] == Member("y", 16, 130, 4, "unsigned int", 4)
    assert old["z"] == Member("z", 20, 160, 0, "unsigned int", 4)

    assert btf.func_params("do_thing") == [Param("", "struct thing *"),
                                           Param("flags", "gfp_t"), Param("", "...")]
    assert btf.func_params("printk") == [Param("fmt", "const char *"), Param("", "...")]
    assert btf.func_params("thing") is None       # a struct, not a function
    assert btf.func_params("nope") is None
    assert btf.struct_members("nope") is None
    assert btf.struct_size("nope") is None
    assert btf.struct_members("uthing") is None   # a union, not a struct
    assert btf.struct_members("") is None
    assert btf.struct_members("thing\0") is None

    spell = btf.type_name
    expected = {
        0: "void", t["int"]: "int", t["uint"]: "unsigned int", t["str"]: "const char *",
        t["thing"]: "struct thing", t["thing_ptr"]: "struct thing *",
        t["fwd"]: "struct thing", t["gfp_t"]: "gfp_t", t["char16"]: "char[16]",
        t["int5x6"]: "int[5][6]", t["p_int6"]: "int (*)[6]", t["p_proto"]: "func_proto *",
        t["proto"]: "func_proto", t["vol"]: "volatile int",
        t["restrict"]: "char *restrict", t["const_ptr"]: "char *const",
        t["enum"]: "enum color", t["enum64"]: "enum big", t["float"]: "double",
        t["anon_union"]: "union {...}", t["rcu_ptr"]: "struct thing *",
        t["void_ptr"]: "void *", t["p_fwd_union"]: "union maybe *",
        t["union"]: "union uthing", t["func"]: "do_thing",
    }
    assert {k: spell(k) for k in expected} == expected
    assert kmem_cache_offsets(btf) == {"name": 104, "size": 32, "object_size": 36}
    assert len(btf) == len(t)


def test_sample_blob_both_byte_orders(order):
    b, t = sample()
    btf = parse(b.build(order))
    assert btf.big_endian == (order == ">")
    check_sample(btf, t)


@pytest.mark.parametrize("hdr_len,gap", [(24, 0), (24, 12), (26, 0), (32, 0), (40, 4)])
def test_header_length_and_section_offsets_are_honoured(hdr_len, gap):
    # hdr_len > 24 (a newer header) and type_off > 0: sections are found relative to
    # the end of the header, not at fixed places.
    b, t = sample()
    check_sample(parse(b.build("<", hdr_len=hdr_len, gap=gap)), t)
    check_sample(parse(bytearray(b.build(">", hdr_len=hdr_len, gap=gap))), t)


def test_first_struct_with_members_wins():
    b = Blob()
    i = b.int_("int", 4)
    b.struct("dup", 0, [])
    b.struct("dup", 8, [("first", i, 0)])
    b.struct("dup", 4, [("second", i, 0)])
    btf = parse(b.build())
    assert list(btf.struct_members("dup")) == ["first"]
    assert btf.struct_size("dup") == 8
    only_decl = Blob()
    only_decl.struct("empty", 0, [])
    assert parse(only_decl.build()).struct_members("empty") == {}


def test_name_may_point_into_the_tail_of_another_string():
    # Nothing forbids a name offset in the middle of a string; "cache" is found there.
    b = Blob()
    b.int_("int", 4)
    b.struct("kmem_cache", 4, [("x", 1, 0)])
    off = b.types[-1][0] + len("kmem_")
    b.types.append([off, STRUCT << 24, 4])
    btf = parse(b.build())
    assert btf.struct_size("cache") == 4
    assert btf.type_name(3) == "struct cache"


def test_kmem_cache_offsets_none_when_a_member_is_missing():
    b = Blob()
    u = b.int_("unsigned int", 4)
    b.struct("kmem_cache", 8, [("size", u, 0), ("object_size", u, 32)])
    assert kmem_cache_offsets(parse(b.build())) is None
    assert kmem_cache_offsets(parse(Blob().build())) is None


def test_layout_section_lets_unknown_kinds_be_skipped():
    # A newer kernel can describe each kind's record size in a layout section; a kind
    # unknown here is then stepped over instead of stopping the whole read.
    b, t = sample()
    b.types.insert(3, [0, (25 << 24) | 2, 0, 7, 8, 9])     # kind 25: 1 word + 2 x 1
    layout = bytearray(4 * 26)
    layout[4 * 25:4 * 25 + 4] = struct.pack("<BBH", 4, 4, 0)
    with pytest.raises(BtfError, match="kind 25"):
        parse(b.build())
    btf = parse(b.build(hdr_len=32, layout=bytes(layout)))
    assert btf.struct_members("thing")["name"].offset == 16
    assert len(btf) == len(t) + 1


def _blob_with(*types: list[int], strings=b"\0a\0") -> bytes:
    words = [w for tt in types for w in tt]
    ts = struct.pack(f"<{len(words)}I", *words)
    return struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, len(ts), len(ts), len(strings)) \
        + ts + strings


@pytest.mark.parametrize("data,message", [
    (b"", "shorter than a header"),
    (b"\x9f\xeb\x01\x00", "shorter than a header"),
    (b"\x7fELF" + bytes(40), "not BTF: magic"),
    (struct.pack("<HBBI4I", 0xEB9F, 2, 0, 24, 0, 0, 0, 1) + b"\0", "version 2"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 16, 0, 0, 0, 1) + b"\0", "header length 16"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 999, 0, 0, 0, 1) + b"\0", "header length 999"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 12, 12, 1) + bytes(5), "type section"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 0, 0, 100) + b"\0", "string section"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 2, 2, 1) + bytes(3), "multiple of 4"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 0, 0, 2) + b"a\0", "NUL"),
    (struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, 0, 0, 0), "NUL"),
    (_blob_with([0, 20 << 24, 0]), "kind 20, unknown"),
    (_blob_with([0, 0, 0]), "kind 0, unknown"),
    (_blob_with([0, (STRUCT << 24) | 2, 4, 0, 0, 0]), "ends inside type \\[1\\]"),
    (_blob_with([0, INT << 24, 4]), "ends inside type \\[1\\]"),
    (_blob_with([0, INT << 24, 4, 32, 0]), "ends inside type \\[2\\]"),
    ("not bytes", "expected BTF bytes"),
])
def test_damaged_blobs_raise_one_clear_error(data, message):
    with pytest.raises(BtfError, match=message) as exc:
        parse(data)
    assert "\n" not in str(exc.value)
    assert isinstance(exc.value, BadInput) and exc.value.exit_code == EXIT_INPUT


def test_damage_found_on_lookup_is_a_btf_error():
    b = Blob()
    i = b.int_("int", 4)
    b.struct("bad_ref", 4, [("x", 99, 0)])                 # member type out of range
    b.struct("bad_name", 4, [(0, i, 0)])
    b.types[-1][3] = 10_000                                 # member name offset
    loop = b.add(TYPEDEF, "loop", 0)
    b.types[-1][2] = loop                                   # typedef loop -> loop
    b.struct("uses_loop", 4, [("l", loop, 0)])
    ptr_loop = b.add(PTR, "", 0)
    b.types[-1][2] = ptr_loop                               # pointer to itself
    b.struct("selfish", 4, [("", 0, 0)])
    b.types[-1][4] = len(b.types)                           # anonymous member: itself
    b.add(FUNC, "not_a_proto", i)
    bad_utf8 = len(b.strings)
    b.strings += b"\xff\xfe\0"
    b.struct("utf", 4, [("", i, 0)])
    b.types[-1][3] = bad_utf8
    btf = parse(b.build())
    for call, arg, message in [
        (btf.struct_members, "bad_ref", "type id 99 is out of range"),
        (btf.struct_members, "bad_name", "outside the string section"),
        (btf.type_name, ptr_loop, "a loop"),
        (btf.struct_members, "uses_loop", "a loop"),
        (btf.struct_members, "selfish", "a loop"),
        (btf.func_params, "not_a_proto", "FUNC_PROTO"),
        (btf.struct_members, "utf", "not UTF-8"),
        (btf.type_name, 10_000, "out of range"),
        (btf.type_name, -1, "out of range"),
    ]:
        with pytest.raises(BtfError, match=message):
            call(arg)


# --------------------------------------------------------------------------- fuzzing

def exercise(btf) -> None:
    """Call every entry point; anything but BtfError escapes and fails the test."""
    for call in (lambda: [btf.type_name(i) for i in range(len(btf) + 1)],
                 lambda: btf.struct_members("thing"), lambda: btf.struct_members("old"),
                 lambda: btf.struct_size("kmem_cache"), lambda: kmem_cache_offsets(btf),
                 lambda: btf.func_params("do_thing"), lambda: btf.func_params("printk"),
                 lambda: btf.struct_members("task_struct"),
                 lambda: btf.func_params("__kmalloc_noprof")):
        try:
            call()
        except BtfError:
            pass


def try_parse(data: bytes) -> None:
    try:
        btf = parse(data)
    except BtfError:
        return
    exercise(btf)


SAMPLE_LE = sample()[0].build("<")
# with a layout section (one struct btf_layout per kind 0..19) to fuzz that path too
LAYOUT = b"".join(struct.pack(">BBH", 4 * a, 4 * e, 0) for a, e in
                  [(0, 0), (1, 0), (0, 0), (3, 0), (0, 3), (0, 3), (0, 2), (0, 0), (0, 0),
                   (0, 0), (0, 0), (0, 0), (0, 0), (0, 2), (1, 0), (0, 3), (0, 0), (1, 0),
                   (0, 0), (0, 3)])
SAMPLE_BE = sample()[0].build(">", hdr_len=32, layout=LAYOUT)
FUZZ = settings(max_examples=int(os.environ.get("BTF_FUZZ_N", 150)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    try_parse(data)
    try_parse(SAMPLE_LE[:24] + data)     # a valid header in front of garbage


@FUZZ
@given(st.sampled_from([SAMPLE_LE, SAMPLE_BE]), st.data())
def test_fuzz_truncations_and_bit_flips_of_sample(blob, data):
    cut = data.draw(st.integers(0, len(blob)))
    try_parse(blob[:cut])
    flips = data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=6))
    mutated = bytearray(blob)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    try_parse(bytes(mutated))


# --------------------------------------------------------------------------- real kernel
#
# Every expected value below is what the running kernel says through another route
# than ftslab's reader (tests/kernel_oracle.py: bpftool's and pahole's own BTF parsers,
# /proc/kallsyms, the kernel's configuration): no size, offset, type id or prototype of
# one build is written here.

@pytest.fixture(scope="module")
def vmlinux_bytes() -> bytes:
    try:
        return VMLINUX.read_bytes()
    except OSError as exc:
        unavailable(f"cannot read {VMLINUX}: {exc.strerror}")


@pytest.fixture(scope="module")
def vmlinux(vmlinux_bytes):
    return parse(vmlinux_bytes)


@pytest.fixture(scope="module")
def bpftool_btf() -> BtfRaw:
    """The same BTF as bpftool reads it."""
    return BtfRaw.from_file(VMLINUX)


def _prefix_blob(real: bytes, ntypes: int) -> bytes:
    """A valid blob of the first ``ntypes`` records of the real one (all its strings)."""
    hdr_len, type_off, _tl, str_off, str_len = struct.unpack_from("<I4I", real, 4)
    types = real[hdr_len + type_off:]
    words = array("I", types[:len(types) // 4 * 4])
    pos = 0
    for _ in range(ntypes):
        kind, vlen = (words[pos + 1] >> 24) & 0x1F, words[pos + 1] & 0xFFFF
        pos += 3 + {INT: 1, ARRAY: 3, VAR: 1, DECL_TAG: 1}.get(kind, 0) + vlen * {
            STRUCT: 3, UNION: 3, ENUM: 2, FUNC_PROTO: 2, DATASEC: 3, ENUM64: 3}.get(kind, 0)
    strings = real[hdr_len + str_off:hdr_len + str_off + str_len]
    return struct.pack("<HBBI4I", 0xEB9F, 1, 0, 24, 0, pos * 4, pos * 4, len(strings)) \
        + types[:pos * 4] + strings


@pytest.fixture(scope="module")
def real_prefix(vmlinux_bytes) -> bytes:
    assert vmlinux_bytes[:2] == b"\x9f\xeb", "fuzz prefix builder assumes little-endian"
    return _prefix_blob(vmlinux_bytes, 300)


#: bpftool kinds whose spelling is the record's own name (or "struct NAME") in both
_SPELLED_ALIKE = ("INT", "TYPEDEF", "FLOAT", "STRUCT", "UNION", "ENUM", "FUNC")


def _bpftool_spelling(raw: BtfRaw, tid: int) -> str | None:
    kind, name, _attrs, _m = raw.types[tid]
    if kind not in _SPELLED_ALIKE or name == "(anon)":
        return None
    return raw.type_name(tid)


def test_real_prefix_is_valid(real_prefix, bpftool_btf):
    """The first 300 records, cut out of the kernel's blob, are read as bpftool reads
    the whole: the same record under each type id."""
    btf = parse(real_prefix)
    assert len(btf) == 300
    want = {i: sp for i in range(1, 301) if (sp := _bpftool_spelling(bpftool_btf, i))}
    assert len(want) > 30, "bpftool named too few of the first 300 types to compare"
    assert {i: btf.type_name(i) for i in want} == want


@settings(max_examples=int(os.environ.get("BTF_FUZZ_N", 60)), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_truncations_and_bit_flips_of_real_prefix(real_prefix, data):
    # flips land in the header and the type records (the string section is large and
    # damage there only changes names)
    end = struct.unpack_from("<I", real_prefix, 12)[0] + 24
    try_parse(real_prefix[:data.draw(st.integers(0, end))])
    flips = data.draw(st.lists(st.integers(0, end * 8 - 1), min_size=1, max_size=6))
    mutated = bytearray(real_prefix)
    for bit in flips:
        mutated[bit // 8] ^= 1 << (bit % 8)
    try_parse(bytes(mutated))


def _kallsyms_text() -> set[str]:
    try:
        return set(kallsyms_text_counts())
    except OSError as exc:
        unavailable(f"cannot read /proc/kallsyms: {exc.strerror}")


def _family_candidates() -> list[str]:
    from ftslab.events import FAMILY
    return [c for m in FAMILY for c in m.candidates]


@pytest.mark.kernel
def test_kmem_cache_offsets_on_this_kernel(vmlinux, bpftool_btf):
    """offsetof/sizeof as bpftool reads the same BTF, and the member ftslab's probes
    dereference is a pointer to the name string there too."""
    offsets = kmem_cache_offsets(vmlinux)
    assert offsets is not None
    theirs = bpftool_btf.members("kmem_cache")
    assert offsets == {k: theirs[k][0] // 8 for k in ("name", "size", "object_size")}
    assert all(theirs[k][1] == 0 for k in ("name", "size", "object_size"))  # not bitfields
    assert vmlinux.struct_size("kmem_cache") == bpftool_btf.struct_size("kmem_cache")
    name_type = bpftool_btf.type_name(theirs["name"][2])
    assert name_type == "const char *"  # what `+0(+OFF(s)):string` relies on
    assert vmlinux.struct_members("kmem_cache")["name"].type_name == name_type


@pytest.mark.kernel
def test_kmem_cache_matches_pahole_and_bpftool(vmlinux, bpftool_btf):
    members = vmlinux.struct_members("kmem_cache")
    for field in ("name", "size", "object_size"):
        assert field in members
    theirs = pahole_members("kmem_cache")
    ours = {n: (m.offset, m.size) for n, m in members.items() if n in theirs}
    assert ours == theirs
    bits = bpftool_btf.members("kmem_cache")
    assert {n: (m.bit_offset, m.bitfield_size) for n, m in members.items()
            if n in bits} == {n: v[:2] for n, v in bits.items()}


@pytest.mark.kernel
def test_bitfields_match_bpftool(vmlinux, bpftool_btf):
    # task_struct: bitfields (kind_flag), anonymous structs and unions
    theirs = bpftool_btf.members("task_struct")
    ours = vmlinux.struct_members("task_struct")
    assert any(bf for _off, bf, _t in theirs.values())
    for name, (bits, bitfield, type_id) in theirs.items():
        assert (ours[name].bit_offset, ours[name].bitfield_size) == (bits, bitfield), name
        assert ours[name].type_name == vmlinux.type_name(type_id)


@pytest.mark.kernel
def test_kmalloc_family_params(vmlinux, bpftool_btf):
    """Every kmalloc-family function this kernel has (ftslab's catalogue of names, read
    against /proc/kallsyms): ftslab's prototype is bpftool's, and the `kmem_buckets *`
    argument is there exactly when the kernel was built with CONFIG_SLAB_BUCKETS."""
    syms = _kallsyms_text()
    present = [fn for fn in _family_candidates() if fn in syms]
    assert present, "no function of ftslab's kmalloc-family catalogue in /proc/kallsyms"
    compared = 0
    for fn in present:
        params = vmlinux.func_params(fn)
        theirs = bpftool_btf.prototype(fn)
        assert (params is None) == (theirs is None), fn
        if params is None:
            continue
        assert [(p.name, p.type_name) for p in params] == theirs, fn
        compared += 1
    assert compared, f"none of {present} has a BTF prototype"
    from ftslab.events import FAMILY
    node = [fn for m in FAMILY if m.family == "kmalloc_node" for fn in m.candidates
            if fn in present]
    if node:
        config = kernel_config()
        if config is None:
            unavailable("the kernel publishes no configuration (/proc/config.gz, "
                        "/boot/config-RELEASE)")
        has_b = any(t == "kmem_buckets *" for _n, t in bpftool_btf.prototype(node[0]) or [])
        assert has_b == (config.get("CONFIG_SLAB_BUCKETS") == "y"), node[0]
        assert any(p.type_name == "kmem_buckets *" for p in vmlinux.func_params(node[0])) \
            == has_b


@pytest.mark.kernel
def test_every_type_spelled_and_byte_swapped_copy_reads_the_same(vmlinux_bytes, vmlinux,
                                                                 bpftool_btf):
    # Every record spelled once; then the blob converted to big-endian (header and type
    # section are 32-bit words; strings are bytes and stay as they are) must read the same.
    names = [vmlinux.type_name(i) for i in range(len(vmlinux) + 1)]
    assert names[0] == "void" and len(vmlinux) == len(bpftool_btf)
    hdr_len, type_off, type_len = struct.unpack_from("<3I", vmlinux_bytes, 4)

    def swap(raw: bytes) -> bytes:
        words = array("I", raw)
        words.byteswap()
        return words.tobytes()

    start = hdr_len + type_off
    swapped = (struct.pack(">H", 0xEB9F) + vmlinux_bytes[2:4] + swap(vmlinux_bytes[4:24])
               + vmlinux_bytes[24:start] + swap(vmlinux_bytes[start:start + type_len])
               + vmlinux_bytes[start + type_len:])
    big = parse(swapped)
    assert big.big_endian and not vmlinux.big_endian
    assert len(big) == len(vmlinux)
    assert big.struct_members("kmem_cache") == vmlinux.struct_members("kmem_cache")
    syms = _kallsyms_text()
    fn = next(c for c in _family_candidates() if c in syms)
    assert big.func_params(fn) == vmlinux.func_params(fn) is not None
    assert [big.type_name(i) for i in range(0, len(big) + 1, 97)] == names[::97]
