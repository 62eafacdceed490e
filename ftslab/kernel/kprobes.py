"""Kprobe events on the kmalloc family, kmem_cache_alloc and the page allocator.

Pure: this module decides *which* probes to write and *what* they say, from facts
about the running kernel that procfs.py reads (``ProbeContext``).  It opens no file.

How a probe is chosen (``plan_probes``), per family member (``FAMILY``):

1. **Symbol.** The first candidate name that /proc/kallsyms lists exactly once as a
   text symbol.  Names changed across kernels (see ``FAMILY``); compiler clones
   (``foo.isra.0``, ``foo.constprop.0``) are never used: IPA-SRA/constprop change a
   clone's arguments, so the fetch args would read the wrong registers.
2. **Arguments.** Which argument holds the cache, size, gfp flags, node, order or
   caller, read from the kernel's own BTF prototype of that function (parameter types
   and names: ``struct kmem_cache *`` is the cache, ``gfp_t`` the flags, ...).  Without
   BTF, ``KNOWN_PROTOTYPES`` (prototypes per kernel version, from the kernel sources)
   are used, and members whose layout depends on the kernel's configuration are probed
   for their size only.
3. **Fetch args.** ``$argN`` where the kernel's tracefs README offers it, else the
   x86-64 argument registers (other architectures without ``$argN``: refused, untested).
   The call site is ``$stack0:symbol`` (the return address, at function entry), or the
   function's own ``caller`` argument when it has one (``*_track_caller``).
4. **Cache name and object size** through the ``struct kmem_cache *`` argument:
   ``name=+0(+OFF(ARG)):string`` (the member is a ``const char *``: read the pointer at
   +OFF, then the string it points to; ``+OFF(ARG):string`` would print the pointer's
   bytes) and ``objsize=+OFF2(ARG):u32``.  OFF/OFF2 come from BTF, else from the user
   (``--cache-name-offset``), else ``DEFAULT_NAME_OFFSET`` as a last resort; whatever the
   source, the first names captured are checked against the kernel's caches before a
   recording starts (``check_cache_names``).

Event names: ``kp_<symbol>`` in the group ``ftslab_<pid>`` (the session's instance name),
so trace lines (which show the event name without its group) never read ``kmalloc:``
like the tracepoint, and leftovers of a dead session carry its owner's pid.
"""
from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field

from ftslab.errors import UsageError
from ftslab.events import BULK_FREE_PREFIX, bulk_free_slot_fields, BULK_FREE_SLOTS, BULK_FREE_SYMBOL, event_name, FAMILY, FamilyMember


__all__ = ["KNOWN_PROTOTYPES", "ProbeContext", "Offsets", "Probe", "ProbePlan", "plan_probes", "roles_from_params", "parse_kallsyms_text", "arg_style", "check_cache_names", "DEFAULT_NAME_OFFSET", "btf_args_supported", "validate_symbol", "cache_names_in_trace", "parse_function_list"]


_BULK_FIRST = 32


_BULK_MORE = 120


#: offsetof(struct kmem_cache, name) on a 6.6-era SLUB kernel (x86-64): used only when
#: there is no BTF and the user gave no --cache-name-offset, and then verified.
DEFAULT_NAME_OFFSET = 96


X86_64_ARG_REGS = ("%di", "%si", "%dx", "%cx", "%r8", "%r9")


_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}\Z")  # not "$": it allows a final "\n"


_CLONE = re.compile(r"\.(isra|constprop|part|cold|lto_priv|localalias)\.?\d*")


#: The running kernel's BTF decides the argument positions; this table is the fallback.
#: Prototypes by symbol (parameter names and types in order), for kernels without BTF.
#: ``None`` marks a parameter whose presence depends on the kernel configuration: after
#: it, positions are unknown, so only the parameters before it are fetched.
KNOWN_PROTOTYPES: dict[str, tuple[tuple[str, str] | None, ...]] = {
    # v6.1 .. v6.9 (mm/slab_common.c, mm/slub.c)
    "__kmalloc": (("size", "size_t"), ("flags", "gfp_t")),
    "__kmalloc_node": (("size", "size_t"), ("flags", "gfp_t"), ("node", "int")),
    "kmalloc_trace": (("s", "struct kmem_cache *"), ("gfpflags", "gfp_t"),
                      ("size", "size_t")),
    "kmalloc_node_trace": (("s", "struct kmem_cache *"), ("gfpflags", "gfp_t"),
                           ("node", "int"), ("size", "size_t")),
    "kmem_cache_alloc_trace": (("s", "struct kmem_cache *"), ("gfpflags", "gfp_t"),
                               ("size", "size_t")),
    "kmalloc_large": (("size", "size_t"), ("flags", "gfp_t")),
    "kmalloc_large_node": (("size", "size_t"), ("flags", "gfp_t"), ("node", "int")),
    "__kmalloc_node_track_caller": (("size", "size_t"), ("flags", "gfp_t"), ("node", "int"),
                                    ("caller", "long unsigned int")),
    "kmem_cache_alloc": (("s", "struct kmem_cache *"), ("gfpflags", "gfp_t")),
    "kmem_cache_alloc_node": (("s", "struct kmem_cache *"), ("gfpflags", "gfp_t"),
                              ("node", "int")),
    "kmem_cache_alloc_lru": (("s", "struct kmem_cache *"), ("lru", "struct list_lru *"),
                             ("gfpflags", "gfp_t")),
    "__alloc_pages": (("gfp", "gfp_t"), ("order", "unsigned int"),
                      ("preferred_nid", "int"), ("nodemask", "nodemask_t *")),
    "kmalloc_slab": (("size", "size_t"), ("flags", "gfp_t")),
    # the same in 6.1 and 6.12 (mm/slub.c) and 6.18 (its BTF)
    "kmem_cache_free_bulk": (("s", "struct kmem_cache *"), ("size", "size_t"),
                             ("p", "void **")),
    # v6.11+: SLAB_BUCKETS adds `b` (None: maybe there; commit 67f2df3b82d0, see FAMILY);
    # the other *_noprof functions (and their v6.11 renames) kept their v6.1
    # prototypes: aliased below
    "__kmalloc_node_noprof": (("size", "size_t"), None, ("flags", "gfp_t"), ("node", "int")),
    "__kmalloc_node_track_caller_noprof": (("size", "size_t"), None, ("flags", "gfp_t"),
                                           ("node", "int"), ("caller", "long unsigned int")),
}

KNOWN_PROTOTYPES.update({new: KNOWN_PROTOTYPES[old] for new, old in (
    ("__kmalloc_noprof", "__kmalloc"),
    ("__kmalloc_cache_noprof", "kmalloc_trace"), ("kmalloc_trace_noprof", "kmalloc_trace"),
    ("__kmalloc_cache_node_noprof", "kmalloc_node_trace"),
    ("kmalloc_node_trace_noprof", "kmalloc_node_trace"),
    ("__kmalloc_large_noprof", "kmalloc_large"), ("kmalloc_large_noprof", "kmalloc_large"),
    ("__kmalloc_large_node_noprof", "kmalloc_large_node"),
    ("kmalloc_large_node_noprof", "kmalloc_large_node"),
    ("kmem_cache_alloc_noprof", "kmem_cache_alloc"),
    ("kmem_cache_alloc_node_noprof", "kmem_cache_alloc_node"),
    ("kmem_cache_alloc_lru_noprof", "kmem_cache_alloc_lru"),
    ("__alloc_pages_noprof", "__alloc_pages"))})


#: role -> (probe field name, kprobe fetch type)
_FIELDS = {"size": ("size", "u64"), "gfp": ("gfp", "x32"), "node": ("node", "s32"),
           "order": ("order", "u32")}


def _role(name: str, type_name: str) -> str | None:
    t = " ".join(type_name.split())
    if t in ("struct kmem_cache *", "struct kmem_cache*"):
        return "cache"
    if t == "gfp_t":
        return "gfp"
    if name == "size" and t in ("size_t", "long unsigned int", "unsigned long"):
        return "size"
    if name in ("node", "nid", "preferred_nid") and t == "int":
        return "node"
    if name == "order" and t == "unsigned int":
        return "order"
    if name == "caller" and t in ("long unsigned int", "unsigned long"):
        return "caller"
    if t in ("void **", "void**"):
        return "ptrs"
    return None


def roles_from_params(params) -> dict[str, int]:
    """{role: 1-based argument position} from (name, type) pairs; a ``None`` entry (a
    parameter that may or may not exist) stops the scan: later positions are unknown."""
    roles: dict[str, int] = {}
    for pos, p in enumerate(params, 1):
        if p is None:
            break
        role = _role(p[0], p[1])
        if role and role not in roles:
            roles[role] = pos
    return roles


@dataclass(frozen=True)
class Offsets:
    """Where ``struct kmem_cache`` keeps the name pointer and the object size."""

    name: int
    object_size: int | None
    size: int | None
    source: str
    """``btf``, ``user`` (--cache-name-offset) or ``default``."""


@dataclass
class ProbeContext:
    """Facts about the running kernel, read by procfs.py (``read_probe_context``)."""

    has_kprobe_events: bool
    readme: str
    kallsyms: dict[str, int]
    """Text symbol name -> how many times it is listed."""
    btf_params: dict[str, list[tuple[str, str]] | None]
    """Symbol -> BTF prototype (name, type) pairs; absent key: not looked up/no BTF."""
    btf_offsets: dict[str, int] | None
    btf_present: bool
    machine: str = field(default_factory=platform.machine)
    btf_error: str | None = None
    ftrace_functions: set[str] | None = None
    """available_filter_functions (None: absent or empty, e.g. no function tracer)."""
    blacklist: set[str] | None = None
    """Symbols of /sys/kernel/debug/kprobes/blacklist (None: debugfs not readable)."""


@dataclass(frozen=True)
class Probe:
    family: str
    symbol: str
    event: str
    group: str
    layer: str
    args: tuple[tuple[str, str], ...]
    """(field name, fetch spec) in definition order."""
    roles: dict
    prototype_source: str
    """``btf`` or ``table``."""
    ftrace: bool | None = None
    """In available_filter_functions: the kprobe rides on ftrace (cheaper than an int3
    breakpoint).  None: the kernel does not list them."""
    filter: str | None = None
    """Kernel-side filter the probe needs to record only what it is for (the bulk free
    probes past the first: ``cnt > <first slot>``)."""

    @property
    def definition(self) -> str:
        args = " ".join(f"{n}={spec}" for n, spec in self.args)
        return f"p:{self.group}/{self.event} {self.symbol}" + (f" {args}" if args else "")

    @property
    def removal(self) -> str:
        return f"-:{self.group}/{self.event}"

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.args)


@dataclass
class ProbePlan:
    probes: list[Probe]
    skipped: list[tuple[str, str]]
    """(family, why) for members not probed."""
    style: str
    """``$arg`` or ``regs``."""
    offsets: Offsets | None
    notes: list[str]
    bulk_frees: list[Probe] = field(default_factory=list)
    """Probes on kmem_cache_free_bulk (frees no tracepoint reports): layer ``free_bulk``."""

    @property
    def all_probes(self) -> list[Probe]:
        """The allocation probes, then the bulk free probes: everything to define."""
        return self.probes + self.bulk_frees


def parse_kallsyms_text(text: str) -> dict[str, int]:
    """Text (t/T) symbols of /proc/kallsyms (module symbols too) -> count."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] in ("t", "T"):
            out[parts[2]] = out.get(parts[2], 0) + 1
    return out


def parse_function_list(text: str) -> set[str]:
    """Names of available_filter_functions / kprobes/blacklist lines (the last field
    that is not a ``[module]``: ``name``, ``name [mod]``, ``0xa-0xb\tname``)."""
    out = set()
    for line in text.splitlines():
        parts = [p for p in line.split() if not p.startswith("[")]
        if parts:
            out.add(parts[-1] if "-" in parts[0] and parts[0].startswith("0x")
                    else parts[0])
    return out


def arg_style(readme: str, machine: str) -> str:
    """``$arg`` when the kernel's README lists ``$arg<N>`` fetch args, else ``regs`` on
    x86-64; anything else cannot be probed with known-good fetch args."""
    if "$arg<N>" in readme:
        return "$arg"
    if machine in ("x86_64", "amd64"):
        return "regs"
    raise UsageError(f"this kernel's kprobes offer no $argN and ftslab knows the argument "
                     f"registers of x86-64 only (this machine: {machine})",
                     hint="record with --kprobes off (tracepoints only)")


def btf_args_supported(readme: str) -> bool:
    """6.6+ kernels with BTF-typed fetch args list ``<argname>`` in the README.  (BTF
    args came with commit b576e09701c7 ("tracing/probes: Support function parameters if
    BTF is available") (in v6.5); the commit that added the README line was not
    identified.)"""
    return "<argname>" in readme


def _ref(pos: int, style: str) -> str:
    if style == "$arg":
        return f"$arg{pos}"
    if pos > len(X86_64_ARG_REGS):
        raise ValueError(f"argument {pos} is not passed in a register")
    return X86_64_ARG_REGS[pos - 1]


def validate_symbol(symbol: str) -> str:
    """A kernel symbol as it may appear in a probe definition: nothing else can ride
    along (no spaces, no newline, no second definition)."""
    if not _SYMBOL.match(symbol):
        raise UsageError(f"not a kernel symbol name: {symbol!r}",
                         hint="letters, digits, '_' and '.', as in /proc/kallsyms")
    return symbol


def plan_probes(ctx: ProbeContext, group: str, *, name_offset: int | None = None,
                families: tuple[str, ...] | None = None,
                extra_symbols: tuple[str, ...] = (), bulk_frees: bool = False) -> ProbePlan:
    """Choose the probes for this kernel.  ``families``: family names to probe (default:
    every default member); ``extra_symbols``: symbols to probe as they are (their
    prototype from BTF, else size-less), for functions outside the family table;
    ``bulk_frees``: also probe kmem_cache_free_bulk (``ProbePlan.bulk_frees``)."""
    style = arg_style(ctx.readme, ctx.machine)
    notes: list[str] = []
    if ctx.machine not in ("x86_64", "amd64"):
        notes.append(f"kprobe fetch args are tested on x86-64 only (this machine: "
                     f"{ctx.machine})")
    # offsets of struct kmem_cache
    if name_offset is not None:
        if not 0 <= name_offset < 4096 or name_offset % 8:
            raise UsageError(f"--cache-name-offset {name_offset}: expected a multiple of 8 "
                             "below 4096 (offsetof(struct kmem_cache, name))")
        offsets = Offsets(name_offset, None, None, "user")
    elif ctx.btf_offsets:
        offsets = Offsets(ctx.btf_offsets["name"], ctx.btf_offsets.get("object_size"),
                          ctx.btf_offsets.get("size"), "btf")
    else:
        offsets = Offsets(DEFAULT_NAME_OFFSET, None, None, "default")
        why = ctx.btf_error or "no BTF at /sys/kernel/btf/vmlinux"
        notes.append(f"cache name offset {DEFAULT_NAME_OFFSET} is a default ({why}); it is "
                     "verified against this kernel's caches before recording")
    wanted = set(families) if families is not None else None
    if wanted is not None:
        unknown = wanted - {m.family for m in FAMILY}
        if unknown:
            raise UsageError(f"unknown kprobe family {', '.join(sorted(unknown))}",
                             hint="one of " + ", ".join(m.family for m in FAMILY))
    members = [m for m in FAMILY
               if (m.family in wanted if wanted is not None else m.default)]
    members += [FamilyMember(validate_symbol(s), (s,)) for s in extra_symbols]
    probes: list[Probe] = []
    skipped: list[tuple[str, str]] = []
    seen_symbols: set[str] = set()
    for m in members:
        sym, why = _pick_symbol(m, ctx.kallsyms)
        if sym is None:
            skipped.append((m.family, why))
            continue
        if sym in seen_symbols:
            continue
        seen_symbols.add(sym)
        if ctx.blacklist is not None and sym in ctx.blacklist:
            skipped.append((m.family, f"{sym} is on the kernel's kprobe blacklist"))
            continue
        ftrace = None if not ctx.ftrace_functions else sym in ctx.ftrace_functions
        params = ctx.btf_params.get(sym) if ctx.btf_params else None
        if params is not None:
            roles = roles_from_params(params)
            source = "btf"
        elif sym in KNOWN_PROTOTYPES:
            roles = roles_from_params(KNOWN_PROTOTYPES[sym])
            source = "table"
            if None in KNOWN_PROTOTYPES[sym]:
                notes.append(f"{sym}: without BTF its argument layout depends on the kernel "
                             "configuration: only the arguments before that are fetched")
        else:
            roles = {}
            source = "none"
            notes.append(f"{sym}: no prototype known (no BTF): probed without arguments")
        try:
            args = _fetch_args(roles, style, offsets, m.layer)
        except ValueError as exc:
            skipped.append((m.family, str(exc)))
            continue
        probes.append(Probe(m.family, sym, event_name(sym), group, m.layer, tuple(args),
                            roles, source, ftrace))
    bulk: list[Probe] = []
    if bulk_frees:
        bulk, why = _plan_bulk_frees(ctx, group, style)
        if why:
            skipped.append(("free_bulk", why))
    return ProbePlan(probes, skipped, style, offsets, notes, bulk)


def _plan_bulk_frees(ctx: ProbeContext, group: str, style: str
                     ) -> tuple[list[Probe], str]:
    """Probes on kmem_cache_free_bulk that name every object it frees: ``cnt`` (its
    ``size`` argument) and pointer slots ``p<i>`` = the i-th entry of its array.  Slots
    at or past ``cnt`` hold whatever follows the array: the analysis ignores them.  The
    first probe fetches slots 0..31, each further one 120 more and records only calls
    with ``cnt`` above its first slot (the kernel reads the fields before it applies
    the filter; a read past mapped memory is a fault the fetch survives).
    Returns (probes, why not) -- no probes and a reason when the kernel lacks it."""
    sym = BULK_FREE_SYMBOL
    n = ctx.kallsyms.get(sym, 0)
    if n != 1:
        return [], (f"{sym} is listed {n} times in /proc/kallsyms (ambiguous)" if n else
                    f"{sym} is not in /proc/kallsyms")
    if ctx.blacklist is not None and sym in ctx.blacklist:
        return [], f"{sym} is on the kernel's kprobe blacklist"
    params = ctx.btf_params.get(sym) if ctx.btf_params else None
    source = "btf" if params is not None else "table"
    roles = roles_from_params(params if params is not None else KNOWN_PROTOTYPES[sym])
    if "size" not in roles or "ptrs" not in roles:
        return [], (f"{sym}: no size_t size and void **p arguments in its prototype "
                    f"({source})")
    cnt = ("cnt", f"{_ref(roles['size'], style)}:u64")
    arr = _ref(roles["ptrs"], style)
    ftrace = None if not ctx.ftrace_functions else sym in ctx.ftrace_functions
    out = []
    first, stop = 0, _BULK_FIRST
    while first < BULK_FREE_SLOTS:
        slots = tuple((f, f"+{8 * i}({arr}):x64")
                      for i, f in zip(range(first, stop), bulk_free_slot_fields(first, stop)))
        event = (BULK_FREE_PREFIX + sym + (f"_{first}" if first else ""))[:63]
        out.append(Probe("free_bulk", sym, event, group, "free_bulk", (cnt,) + slots,
                         roles, source, ftrace, filter=f"cnt > {first}" if first else None))
        first, stop = stop, min(stop + _BULK_MORE, BULK_FREE_SLOTS)
    return out, ""


def _pick_symbol(m: FamilyMember, kallsyms: dict[str, int]) -> tuple[str | None, str]:
    clones = []
    for cand in m.candidates:
        n = kallsyms.get(cand, 0)
        if n == 1:
            return cand, ""
        if n > 1:
            return None, f"{cand} is listed {n} times in /proc/kallsyms (ambiguous)"
        clones += [s for s in kallsyms if s.startswith(cand + ".") and _CLONE.match(
            s[len(cand):])]
    if clones:
        return None, (f"only compiler clones exist ({', '.join(sorted(clones)[:3])}): "
                      "their arguments differ from the source prototype")
    return None, "not in /proc/kallsyms (" + ", ".join(m.candidates) + ")"


def _fetch_args(roles: dict[str, int], style: str, offsets: Offsets,
                layer: str) -> list[tuple[str, str]]:
    args: list[tuple[str, str]] = []
    if "size" in roles:
        args.append(("size", f"{_ref(roles['size'], style)}:u64"))
    if "cache" in roles:
        c = _ref(roles["cache"], style)
        args.append(("name", f"+0(+{offsets.name}({c})):string"))
        if offsets.object_size is not None:
            args.append(("objsize", f"+{offsets.object_size}({c}):u32"))
    for role in ("order", "gfp", "node"):
        if role in roles:
            fname, ftype = _FIELDS[role]
            args.append((fname, f"{_ref(roles[role], style)}:{ftype}"))
    if "caller" in roles:
        args.append(("caller", f"{_ref(roles['caller'], style)}:symbol"))
    else:
        args.append(("caller", "$stack0:symbol"))
    return args


def check_cache_names(names, known: set[str]) -> tuple[int, list[str]]:
    """(how many names were checked, the ones that are not caches of this kernel).
    ``known``: /proc/slabinfo names and /sys/kernel/slab entries."""
    checked = 0
    bad: list[str] = []
    for n in names:
        checked += 1
        if n not in known and n not in bad:
            bad.append(n)
    return checked, bad


_TRACE_NAME = re.compile(r'\bname=(?:"([^"\n]*)"|(\S+))')


def cache_names_in_trace(text: str, events: set[str]) -> list[str]:
    """Cache names of the ``events`` in a tracefs ``trace`` text (``name="filp"``; a
    string the kernel could not read prints ``name=(fault)``)."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.search(r"\s(\w+): \(", line)
        if not m or m.group(1) not in events:
            continue
        n = _TRACE_NAME.search(line, m.end())
        if n:
            out.append(n.group(1) if n.group(1) is not None else n.group(2))
    return out
