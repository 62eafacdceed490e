"""Readers of /proc and /sys outside tracefs: kallsyms, the slab caches and their merges,
the online CPUs, and the probe context a kprobe plan needs (kallsyms, BTF, the kprobe
blacklist, with tracefs's README and available_filter_functions read through Tracefs).

Read only: nothing here writes to the kernel (``provoke_allocations`` only makes this
process allocate).  Lockdown is read by tracefs.read_lockdown, the slab counters of a
recording by slabsample.py; what is read is parsed by kprobes.py and btf.py.
"""
from __future__ import annotations

import os

from ftslab.errors import FtslabError
from ftslab.kernel.tracefs import read_text_file, Tracefs

__all__ = [
    "online_cpus", "read_probe_context", "read_slab_names",
    "read_slab_aliases", "read_kallsyms", "read_comm"
]


def online_cpus() -> list[int]:
    """CPUs the ring buffer has per_cpu directories for (read from sysfs)."""
    try:
        text = read_text_file("/sys/devices/system/cpu/online").strip()
    except (OSError, FtslabError):
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


def read_kallsyms() -> str:
    try:
        return read_text_file("/proc/kallsyms")
    except (OSError, FtslabError):
        return ""


def read_slab_names() -> set[str]:
    """Names of this kernel's slab caches: /proc/slabinfo and /sys/kernel/slab."""
    names: set[str] = set()
    try:
        for line in read_text_file("/proc/slabinfo").splitlines()[2:]:
            if line.split():
                names.add(line.split()[0])
    except (OSError, FtslabError):
        pass
    try:
        names.update(os.listdir("/sys/kernel/slab"))
    except OSError:
        pass
    return names


#: Where SLUB shows its caches, one entry per name (mm/slub.c, sysfs_slab_add/_alias).
SLAB_SYSFS = "/sys/kernel/slab"


def read_comm(pid: int) -> str:
    """/proc/PID/comm less the newline the kernel ends it with (a task's name may end in
    a space or hold any byte but NUL).  Raises FtslabError when the task is gone."""
    text = read_text_file(f"/proc/{pid}/comm")
    return text[:-1] if text.endswith("\n") else text


def read_slab_aliases(root: str = SLAB_SYSFS) -> dict[str, list[str]]:
    """The caches SLUB merged, from the links in /sys/kernel/slab: every name of a
    merged cache -> all its names, sorted.  A mergeable cache is a directory named by a
    unique id (``:A-0001152``: flags, object size) and each name merged into it is a
    link to that directory; a cache that cannot merge is a directory of its own name,
    which a link may also point to.  A cache with one name is not in the map.  The
    kernel's events and /proc/slabinfo name a merged cache by one of its names only
    (the first created).  Unreadable (no SLUB sysfs, no permission): {}."""
    try:
        entries = os.listdir(root)
    except OSError:
        return {}
    groups: dict[str, set[str]] = {}
    for name in entries:
        try:
            target = os.readlink(os.path.join(root, name))
        except OSError:  # a directory (EINVAL), or gone meanwhile
            continue
        groups.setdefault(os.path.basename(target.rstrip("/")), set()).add(name)
    out: dict[str, list[str]] = {}
    for target, names in groups.items():
        if not target.startswith(":") and os.path.isdir(os.path.join(root, target)):
            names.add(target)  # the links point at a cache's own directory
        if len(names) >= 2:
            merged = sorted(names)
            for n in merged:
                out[n] = merged
    return out


_BTF_CACHE: dict = {}


def provoke_allocations() -> None:
    """Make this process allocate from a few slab caches (a file, a pipe, a socket):
    the kprobe check (engine.Session) needs some kmem_cache_alloc calls to look at."""
    import socket
    for _ in range(3):
        fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
        os.read(fd, 4096)
        os.close(fd)
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        try:
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()
        except OSError:
            pass


def read_probe_context(tracefs: "Tracefs", symbols=None):
    """What kprobes.plan_probes needs to know about the running kernel: kprobe_events,
    the README, kallsyms, and from BTF the kmem_cache offsets and the prototypes of
    ``symbols`` (default: every candidate of events.FAMILY)."""
    from ftslab.kernel import btf as btfmod
    from ftslab.events import FAMILY
    from ftslab.kernel.kprobes import ProbeContext, parse_function_list, parse_kallsyms_text
    kallsyms = parse_kallsyms_text(read_kallsyms())
    if symbols is None:
        symbols = [c for m in FAMILY for c in m.candidates]
    btf_params: dict = {}
    offsets = None
    btf_error = None
    path = "/sys/kernel/btf/vmlinux"
    present = os.path.exists(path)
    if present:
        try:
            if path not in _BTF_CACHE:
                with open(path, "rb") as f:
                    _BTF_CACHE[path] = btfmod.parse(f.read())
            b = _BTF_CACHE[path]
            offsets = btfmod.kmem_cache_offsets(b)
            if offsets is None:
                btf_error = "BTF has no struct kmem_cache with name/size/object_size"
            for sym in symbols:
                if sym in kallsyms:
                    params = b.func_params(sym)
                    if params is not None:
                        btf_params[sym] = [(p.name, p.type_name) for p in params]
        except (OSError, FtslabError) as exc:
            btf_error = f"cannot use {path}: {exc}"
    ftrace = blacklist = None
    try:
        ftrace = parse_function_list(tracefs.read("available_filter_functions")) or None
    except FtslabError:
        pass
    try:
        blacklist = parse_function_list(read_text_file("/sys/kernel/debug/kprobes/blacklist"))
    except (OSError, FtslabError):
        pass
    return ProbeContext(has_kprobe_events=tracefs.has_kprobes(), readme=tracefs.readme(),
                        kallsyms=kallsyms, btf_params=btf_params, btf_offsets=offsets,
                        btf_present=present, btf_error=btf_error, ftrace_functions=ftrace,
                        blacklist=blacklist)
