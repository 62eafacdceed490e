"""What the guest tests expect of each Debian kernel, and independent ways to read it.

Used inside the guest only (by the tests beside it and by capture_fixtures.py).  The
readers here do not use ftslab: pahole and bpftool (Debian's dwarves and bpftool, from
the host's tree) and plain reads of /proc and tracefs, so that what ftslab derives can
be checked against them.  Every expectation was measured on the kernel it names
(see tests/fixtures/<kernel>/README.md).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["KERNEL", "TRACEFS", "EXPECT", "kallsyms_text_counts", "filter_functions",
           "pahole_members", "BtfRaw", "ftslab_leftovers", "tool"]

#: Short name of the guest kernel ("6.1", "6.12"); None on the host.
KERNEL = os.environ.get("FTSLAB_GUEST_KERNEL")
TRACEFS = Path("/sys/kernel/tracing")

_COMMON = {
    # offsetof(struct kmem_cache, ...) in bytes: identical in Debian's 6.1 and 6.12
    "offsets": {"name": 96, "size": 24, "object_size": 28},
    # setxattr(2) copies the value with vmemdup_user() -> kvmalloc(): one kmalloc of
    # exactly the value's length from the kvmalloc path, per call
    "setxattr_caller": "vmemdup_user",
}

EXPECT = {
    "6.1": dict(_COMMON, **{
        "symbols": ["__kmalloc", "__kmalloc_node", "kmalloc_trace", "kmalloc_node_trace",
                    "kmalloc_large", "kmalloc_large_node", "__kmalloc_node_track_caller",
                    "kmem_cache_alloc", "kmem_cache_alloc_node", "kmem_cache_alloc_lru",
                    "__alloc_pages"],
        "absent": ["__kmalloc_noprof", "__kmalloc_cache_noprof", "kmem_cache_alloc_noprof",
                   "__alloc_pages_noprof", "kmalloc"],
        "setxattr_function": "__kmalloc_node",
        "kmem_cache_alloc_has_name": False,
        "readme_arg_n": True,
        "readme_btf_args": False,
        "prototypes": {
            "__kmalloc": ["size", "flags"],
            "__kmalloc_node": ["size", "flags", "node"],
            "kmalloc_trace": ["s", "gfpflags", "size"],
            "kmalloc_node_trace": ["s", "gfpflags", "node", "size"],
            "__kmalloc_node_track_caller": ["size", "flags", "node", "caller"],
            "kmem_cache_alloc": ["s", "gfpflags"],
            "kmem_cache_alloc_lru": ["s", "lru", "gfpflags"],
            "__alloc_pages": ["gfp", "order", "preferred_nid", "nodemask"],
        },
    }),
    "6.12": dict(_COMMON, **{
        "symbols": ["__kmalloc_noprof", "__kmalloc_node_noprof", "__kmalloc_cache_noprof",
                    "__kmalloc_cache_node_noprof", "__kmalloc_large_noprof",
                    "__kmalloc_large_node_noprof", "__kmalloc_node_track_caller_noprof",
                    "kmem_cache_alloc_noprof", "kmem_cache_alloc_node_noprof",
                    "kmem_cache_alloc_lru_noprof", "__alloc_pages_noprof"],
        "absent": ["__kmalloc", "__kmalloc_node", "kmalloc_trace", "kmalloc_large",
                   "kmem_cache_alloc", "__alloc_pages", "kmalloc"],
        "setxattr_function": "__kmalloc_node_noprof",
        "kmem_cache_alloc_has_name": False,
        "readme_arg_n": True,
        "readme_btf_args": True,
        # CONFIG_SLAB_BUCKETS=y in Debian's 6.12: `kmem_buckets *b` is the 2nd argument
        "prototypes": {
            "__kmalloc_noprof": ["size", "flags"],
            "__kmalloc_node_noprof": ["size", "b", "flags", "node"],
            "__kmalloc_cache_noprof": ["s", "gfpflags", "size"],
            "__kmalloc_cache_node_noprof": ["s", "gfpflags", "node", "size"],
            "__kmalloc_node_track_caller_noprof": ["size", "b", "flags", "node", "caller"],
            "kmem_cache_alloc_noprof": ["s", "gfpflags"],
            "kmem_cache_alloc_lru_noprof": ["s", "lru", "gfpflags"],
            "__alloc_pages_noprof": ["gfp", "order", "preferred_nid", "nodemask"],
        },
    }),
}


def tool(name: str) -> str | None:
    """A host tool as the guest sees it (Debian puts bpftool in /usr/sbin)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def kallsyms_text_counts() -> dict[str, int]:
    """Text symbols of /proc/kallsyms (kernel and modules) -> how often each is listed."""
    out: dict[str, int] = {}
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("t", "T"):
                out[parts[2]] = out.get(parts[2], 0) + 1
    return out


def filter_functions() -> set[str]:
    """Names in available_filter_functions (module suffix dropped)."""
    with open(TRACEFS / "available_filter_functions") as f:
        return {line.split()[0] for line in f if line.strip()}


_PAHOLE_MEMBER = re.compile(r"\s\**(\w+)(?:\[\d*\])?;\s+/\*\s+(\d+)\s+(\d+)\s+\*/")


def pahole_members(text: str) -> dict[str, tuple[int, int]]:
    """pahole -C STRUCT output -> {member: (offset, size)} (bytes, top level only)."""
    out = {}
    for line in text.splitlines():
        if line.startswith("\t") and not line.startswith("\t\t"):
            m = _PAHOLE_MEMBER.search(line)
            if m:
                out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


class BtfRaw:
    """Function prototypes and struct members from ``bpftool btf dump ... format raw``."""

    _HEAD = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
    _ATTR = re.compile(r"(\w+)=(\S+)")
    _MEMBER = re.compile(r"^\s+'([^']*)' type_id=(\d+)(?: bits_offset=(\d+))?")

    def __init__(self, text: str):
        self.types: dict[int, tuple[str, str, dict, list]] = {}
        self.funcs: dict[str, int] = {}
        self.structs: dict[str, int] = {}
        cur = None
        for line in text.splitlines():
            m = self._HEAD.match(line)
            if m:
                tid, kind, name = int(m.group(1)), m.group(2), m.group(3)
                attrs = dict(self._ATTR.findall(m.group(4)))
                cur = (kind, name, attrs, [])
                self.types[tid] = cur
                if kind == "FUNC":
                    self.funcs.setdefault(name, tid)
                elif kind == "STRUCT":
                    self.structs.setdefault(name, tid)
                continue
            mm = self._MEMBER.match(line)
            if mm and cur is not None:
                cur[3].append((mm.group(1), int(mm.group(2)),
                               int(mm.group(3)) if mm.group(3) else None))

    @classmethod
    def from_kernel(cls) -> "BtfRaw":
        cp = subprocess.run([tool("bpftool") or "bpftool", "btf", "dump", "file",
                             "/sys/kernel/btf/vmlinux", "format", "raw"],
                            capture_output=True, text=True, timeout=300, check=True)
        return cls(cp.stdout)

    def type_name(self, tid: int) -> str:
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
        if kind in ("STRUCT", "UNION", "ENUM"):
            return f"{kind.lower()} {name}"
        if kind == "FUNC_PROTO":
            return "func_proto"
        return name

    def prototype(self, func: str) -> list[tuple[str, str]] | None:
        """[(parameter name, type)] of FUNC, None if BTF has no such function."""
        tid = self.funcs.get(func)
        if tid is None:
            return None
        proto = self.types[int(self.types[tid][2]["type_id"])]
        return [(name, self.type_name(t)) for name, t, _ in proto[3]]

    def member_offsets(self, struct: str) -> dict[str, int]:
        """{member: byte offset} of a struct (non-bitfield members)."""
        kind, _name, _attrs, members = self.types[self.structs[struct]]
        return {n: bits // 8 for n, _t, bits in members if bits is not None}


def ftslab_leftovers() -> dict[str, list[str]]:
    """Everything in tracefs that ftslab could have made (it names all of it ftslab_*)."""
    out: dict[str, list[str]] = {}
    for f in ("kprobe_events", "dynamic_events"):
        try:
            text = (TRACEFS / f).read_text()
        except OSError:
            text = ""
        out[f] = [l for l in text.splitlines() if "ftslab" in l]
    out["instances"] = sorted(n for n in os.listdir(TRACEFS / "instances") if "ftslab" in n)
    out["events"] = sorted(n for n in os.listdir(TRACEFS / "events") if "ftslab" in n)
    return {k: v for k, v in out.items() if v}
