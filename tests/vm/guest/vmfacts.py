"""What the guest tests expect of the guest kernel, read from that kernel.

Used inside the guest only (by the tests beside it and by capture_fixtures.py).  The
harness boots whichever package apt offers (tests/vm/vmrun.py): nothing here is a fact
of one Debian upload.  Each expectation is read in the guest, from the booted kernel,
by another route than ftslab's: offsets and prototypes as bpftool and pahole read
/sys/kernel/btf/vmlinux (Debian's bpftool and dwarves, from the host's tree), symbols
from /proc/kallsyms read against ftslab's catalogue of names (kprobes.FAMILY, taken as
data), the kernel's configuration (/boot/config-RELEASE, put there by the init script),
plain reads of /proc and tracefs (tests/kernel_oracle.py has the readers).

One fact is the kernel's code, not its build: setxattr(2) copies its value with
vmemdup_user() (fs/xattr.c since v2.6.x; both kernels); ``read_facts`` checks the
function is there and out of line, so a kernel that changed it fails clearly here.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

try:
    import kernel_oracle
except ImportError:  # run as a script (capture_fixtures.py): tests/ is not on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import kernel_oracle
from kernel_oracle import (BtfRaw, eventfd_caller, expected_fetch_args,  # noqa: E402
                           kallsyms_text_counts, kernel_config, need_tool, pahole_members,
                           tool)

__all__ = ["KERNEL", "TRACEFS", "Facts", "read_facts", "kallsyms_text_counts",
           "filter_functions", "pahole_members", "BtfRaw", "ftslab_leftovers", "tool",
           "need_tool", "expected_fetch_args", "kernel_config", "eventfd_caller"]

#: Short name of the guest kernel ("6.1", "6.12"); None on the host.
KERNEL = os.environ.get("FTSLAB_GUEST_KERNEL")
TRACEFS = Path("/sys/kernel/tracing")

#: setxattr(2) copies the value with vmemdup_user() -> kvmalloc(): one kmalloc of
#: exactly the value's length per call, from this call site.
SETXATTR_CALLER = "vmemdup_user"


@dataclasses.dataclass(frozen=True)
class Facts:
    """The guest kernel, as it describes itself (units: bytes)."""

    release: str
    """`uname -r`."""
    offsets: dict
    """offsetof(struct kmem_cache, name / size / object_size), as bpftool reads BTF."""
    symbols: dict
    """Family of ftslab's catalogue -> the one candidate name /proc/kallsyms lists once
    (families this kernel has none of are left out)."""
    prototypes: dict
    """Symbol -> [(parameter name, type)] as bpftool reads BTF, for each of ``symbols``."""
    config: dict
    """CONFIG_* -> value."""
    kmem_cache_alloc_has_name: bool
    """Whether kmem:kmem_cache_alloc records the cache name: its BTF record struct
    (trace_event_raw_kmem_cache_alloc) has ``__data_loc_name``."""
    setxattr_function: str
    """The kmalloc function a kvmalloc() of a few KiB calls: the kmalloc_node member of
    the family (kvmalloc_node -> __kmalloc_node[_noprof], v6.1 and v6.12 alike)."""
    setxattr_caller: str = SETXATTR_CALLER


def read_facts() -> Facts:
    """Read every expectation from the running (guest) kernel."""
    from ftslab.events import FAMILY
    btf = BtfRaw.from_file()
    off = btf.member_offsets("kmem_cache")
    syms = kallsyms_text_counts()
    symbols = {}
    for m in FAMILY:
        present = [c for c in m.candidates if syms.get(c) == 1]
        if m.default and present:
            symbols[m.family] = present[0]
    assert syms.get(SETXATTR_CALLER) == 1, (
        f"{SETXATTR_CALLER} is not one text symbol of this kernel: the setxattr workload "
        "of test_guest_ftslab.py needs another look")
    assert "kmalloc_node" in symbols, f"no kmalloc_node function in /proc/kallsyms: {symbols}"
    config = kernel_config()
    assert config, f"no kernel configuration at /boot/config-{os.uname().release}"
    raw = btf.members("trace_event_raw_kmem_cache_alloc")
    return Facts(release=os.uname().release,
                 offsets={k: off[k] for k in ("name", "size", "object_size")},
                 symbols=symbols,
                 prototypes={s: btf.prototype(s) for s in symbols.values()},
                 config=config,
                 kmem_cache_alloc_has_name="__data_loc_name" in raw,
                 setxattr_function=symbols["kmalloc_node"])


def filter_functions() -> set[str]:
    """Names in available_filter_functions (module suffix dropped)."""
    with open(TRACEFS / "available_filter_functions") as f:
        return {line.split()[0] for line in f if line.strip()}


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
