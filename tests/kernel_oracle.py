"""What the running kernel says about itself, read without ftslab.

Tests compare what ftslab derives (its BTF reader, its probe plan) against these
readings, so that no test carries a fact of one kernel build: BTF through bpftool and
pahole (other programs, other parsers), /proc/kallsyms, the kernel's configuration
(/proc/config.gz, else /boot/config-RELEASE as Debian installs it).  Nothing here
imports ftslab; ``family_symbols`` takes ftslab's catalogue of names as data.

Used on the host (tests/test_btf.py, tests/test_kprobes.py,
tests/test_kernel_kprobes_host.py) and inside the QEMU guests (tests/vm/guest/).
"""
from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["VMLINUX", "KERNEL_TESTS", "tool", "need_tool", "unavailable", "BtfRaw",
           "pahole_members", "kallsyms_text_counts", "kept_function", "eventfd_caller",
           "kernel_config", "family_symbols",
           "kprobe_blacklist", "expected_fetch_args"]

VMLINUX = Path("/sys/kernel/btf/vmlinux")
KERNEL_TESTS = os.environ.get("FTSLAB_KERNEL_TESTS") == "1"

# Debian puts bpftool in /usr/sbin; a user's PATH may not have it.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


def tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + _SBIN)


def unavailable(why: str) -> None:
    """Skip, or fail under FTSLAB_KERNEL_TESTS=1 (a missing capability is a failure)."""
    import pytest
    if KERNEL_TESTS:
        pytest.fail(f"{why} (FTSLAB_KERNEL_TESTS=1)")
    pytest.skip(why)


def need_tool(name: str, package: str | None = None) -> str:
    path = tool(name)
    if not path:
        unavailable(f"{name} is not installed" + (f" (Debian package {package})"
                                                   if package else ""))
    return path


# -- BTF, as bpftool prints it ------------------------------------------------------------

class BtfRaw:
    """Types of ``bpftool btf dump file FILE format raw``: one ``[id] KIND 'name' k=v``
    line per type, members/parameters on the tab-indented lines below it."""

    _HEAD = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
    _ATTR = re.compile(r"(\w+)=(\S+)")
    _MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+)(?: bits_offset=(\d+))?"
                         r"(?: bitfield_size=(\d+))?")

    def __init__(self, text: str):
        self.types: dict[int, tuple[str, str, dict, list]] = {}
        """id -> (kind, name, attributes, [(member, type id, bit offset, bitfield size)])"""
        self.funcs: dict[str, int] = {}
        self.structs: dict[str, int] = {}
        cur = None
        for line in text.splitlines():
            m = self._HEAD.match(line)
            if m:
                tid, kind, name = int(m.group(1)), m.group(2), m.group(3)
                cur = (kind, name, dict(self._ATTR.findall(m.group(4))), [])
                self.types[tid] = cur
                if kind == "FUNC":
                    self.funcs.setdefault(name, tid)
                elif kind == "STRUCT" and int(cur[2].get("vlen", 0)):
                    self.structs.setdefault(name, tid)  # the first with members
                continue
            mm = self._MEMBER.match(line)
            if mm and cur is not None:
                # an anonymous member or an unnamed parameter: bpftool prints '(anon)'
                name = "" if mm.group(1) == "(anon)" else mm.group(1)
                cur[3].append((name, int(mm.group(2)),
                               int(mm.group(3)) if mm.group(3) else None,
                               int(mm.group(4) or 0)))

    @classmethod
    def from_file(cls, path: str | os.PathLike = VMLINUX) -> "BtfRaw":
        return _btf_raw(str(path))

    def __len__(self) -> int:
        return len(self.types)

    def type_name(self, tid: int) -> str:
        """C spelling of the simple types prototypes use (``const char *``,
        ``struct kmem_cache *``, ``kmem_buckets *``)."""
        if tid == 0:
            return "void"
        kind, name, attrs, _ = self.types[tid]
        inner = int(attrs.get("type_id", 0))
        if kind == "PTR":
            target = self.type_name(inner)
            return target + ("*" if target.endswith("*") else " *")
        if kind == "CONST":
            return "const " + self.type_name(inner)
        if kind in ("VOLATILE", "RESTRICT", "TYPE_TAG"):
            return self.type_name(inner)
        if kind in ("STRUCT", "UNION", "ENUM", "ENUM64", "FWD"):
            word = {"ENUM64": "enum", "FWD": "struct"}.get(kind, kind.lower())
            return f"{word} {name}" if name != "(anon)" else f"{word} {{...}}"
        if kind == "FUNC_PROTO":
            return "func_proto"
        return name

    def prototype(self, func: str) -> list[tuple[str, str]] | None:
        """[(parameter name, type)] of FUNC, None if BTF has no such function."""
        tid = self.funcs.get(func)
        if tid is None:
            return None
        proto = self.types[int(self.types[tid][2]["type_id"])]
        return [(name, self.type_name(t)) for name, t, _b, _f in proto[3]]

    def struct_size(self, struct: str) -> int | None:
        tid = self.structs.get(struct)
        return None if tid is None else int(self.types[tid][2]["size"])

    def members(self, struct: str) -> dict[str, tuple[int, int, int]]:
        """{member: (bit offset, bitfield size, type id)} of the named members at the top
        level of STRUCT (not those inside its anonymous structs and unions)."""
        _kind, _name, _attrs, members = self.types[self.structs[struct]]
        return {n: (bits, bf, t) for n, t, bits, bf in members if n and bits is not None}

    def member_offsets(self, struct: str) -> dict[str, int]:
        """{member: byte offset} of a struct (named top-level members)."""
        return {n: bits // 8 for n, (bits, _bf, _t) in self.members(struct).items()}


@functools.lru_cache(maxsize=2)
def _btf_raw(path: str) -> BtfRaw:
    bpftool = need_tool("bpftool", "bpftool")
    cp = subprocess.run([bpftool, "btf", "dump", "file", path, "format", "raw"],
                        capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0 and cp.stdout, f"bpftool btf dump {path}: {cp.stderr[-500:]}"
    return BtfRaw(cp.stdout)


# -- pahole --------------------------------------------------------------------------------

_PAHOLE_MEMBER = re.compile(r"(?:\(\*)?(\w+)(?:\))?(?:\(.*\))?(?:\[\d*\])*(?::\d+)?;\s*"
                            r"/\*\s*(\d+)(?::\s*\d+)?\s+(\d+)\s*\*/")


def pahole_members(struct: str, path: str | os.PathLike = VMLINUX) -> dict[str, tuple[int, int]]:
    """{member: (byte offset, size)} of STRUCT's top level, from pahole's ``/* off size */``
    comments (pahole -C STRUCT FILE)."""
    pahole = need_tool("pahole", "dwarves")
    cp = subprocess.run([pahole, "-C", struct, str(path)], capture_output=True, text=True,
                        timeout=300)
    out: dict[str, tuple[int, int]] = {}
    for line in cp.stdout.splitlines():
        if not line.startswith("\t") or line.startswith("\t\t"):
            continue
        m = _PAHOLE_MEMBER.search(line)
        if m:
            out.setdefault(m.group(1), (int(m.group(2)), int(m.group(3))))
    assert out, f"pahole -C {struct} printed no members: {cp.stderr[-500:]}"
    return out


# -- kallsyms, config, blacklist -----------------------------------------------------------

def kallsyms_text_counts() -> dict[str, int]:
    """Text symbols of /proc/kallsyms (kernel and modules) -> how often each is listed."""
    out: dict[str, int] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T"):
                out[parts[2]] = out.get(parts[2], 0) + 1
    return out


@functools.lru_cache(maxsize=1)
def _text_symbols() -> frozenset[str]:
    return frozenset(kallsyms_text_counts())


def kept_function(candidates: tuple[str, ...]) -> str:
    """The first of CANDIDATES (a function, then the callers it may be inlined into, or
    a function's names across kernel versions) that the running kernel has as a
    function of its own: one absent from /proc/kallsyms was inlined (or renamed).  A
    compiler clone (``do_eventfd.isra.0``) is that function, under that name."""
    syms = _text_symbols()
    for c in candidates:
        hits = sorted(s for s in syms if s == c or s.startswith(c + "."))
        if hits:
            assert len(hits) == 1, hits
            return hits[0]
    raise AssertionError(f"none of {candidates} in /proc/kallsyms")


def eventfd_caller() -> str:
    """The function holding the call site of eventfd(2)'s kmalloc of its struct
    eventfd_ctx, as this kernel was built: do_eventfd, or the syscall it was inlined
    into (the function part of the kmalloc event's call_site)."""
    return kept_function(("do_eventfd", "__do_sys_eventfd2", "__se_sys_eventfd2",
                          "__x64_sys_eventfd2"))


def kernel_config() -> dict[str, str] | None:
    """CONFIG_* -> value of the running kernel; None when it is not published."""
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode()
    except OSError:
        try:
            text = Path(f"/boot/config-{os.uname().release}").read_text()
        except OSError:
            return None
    return dict(line.split("=", 1) for line in text.splitlines()
                if line.startswith("CONFIG_") and "=" in line)


def kprobe_blacklist() -> set[str] | None:
    """Symbols kprobes refuse (debugfs), None when that list cannot be read."""
    try:
        with open("/sys/kernel/debug/kprobes/blacklist") as f:
            return {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return None


def family_symbols(family: dict[str, tuple[str, ...]], syms: dict[str, int]) -> dict[str, list[str]]:
    """For each family of ftslab's catalogue (family -> candidate names), the candidates
    this kernel lists exactly once as text symbols, in the catalogue's order."""
    return {fam: [c for c in cands if syms.get(c) == 1] for fam, cands in family.items()}


# -- what a probe's fetch args must say, from a prototype -----------------------------------

_REGS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")  # x86-64 argument registers


def expected_fetch_args(params: list[tuple[str, str]], style: str,
                        offsets: dict[str, int]) -> dict[str, str]:
    """field -> fetch arg (or its prefix, ending in ':') a probe of a function with
    PARAMS must carry: positions from the prototype's names and types, the cache
    members at OFFSETS (offsetof in struct kmem_cache)."""
    def ref(pos: int) -> str:
        return f"$arg{pos}" if style == "$arg" else _REGS[pos - 1]

    want: dict[str, str] = {}
    for pos, (name, typ) in enumerate(params, 1):
        t = " ".join(typ.split())
        if name == "size" and t in ("size_t", "long unsigned int"):
            want.setdefault("size", f"{ref(pos)}:u64")
        elif t == "struct kmem_cache *" and "name" not in want:
            want["name"] = f"+0(+{offsets['name']}({ref(pos)})):string"
            want["objsize"] = f"+{offsets['object_size']}({ref(pos)}):u32"
        elif t == "gfp_t":
            want.setdefault("gfp", ref(pos) + ":")
        elif name in ("node", "nid", "preferred_nid") and t == "int":
            want.setdefault("node", ref(pos) + ":")
        elif name == "order" and t == "unsigned int":
            want.setdefault("order", ref(pos) + ":")
        elif name == "caller" and t == "long unsigned int":
            want.setdefault("caller", f"{ref(pos)}:symbol")
    want.setdefault("caller", "$stack0:symbol")
    return want
