"""``ftslab doctor``: what this kernel offers and what ftslab will use.

``diagnose`` gathers the facts (through tracefs.py and procfs.py; this module itself only
tries whether two /proc files open, in ``slab_counters``) into one plain dict, which
``render_text`` prints for people and the CLI dumps as JSON.  It writes nothing to tracefs.
``ok`` is True when a recording can work; ``problems`` says why not.
"""
from __future__ import annotations

import os

from ftslab.errors import FtslabError


__all__ = ["diagnose", "render_text", "serve_path", "KMEM_TRACEPOINTS"]


KMEM_TRACEPOINTS = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc", "kfree",
                    "kmem_cache_free", "mm_page_free")


def diagnose(tracefs_path: str | None = None, kprobes: str = "auto",
             cache_name_offset: int | None = None) -> dict:
    from ftslab.trace.formats import parse_format
    from ftslab.kernel.kprobes import btf_args_supported, plan_probes
    from ftslab.kernel.tracefs import Tracefs
    from ftslab.kernel.procfs import read_probe_context
    from ftslab.kernel.tracefs import read_lockdown
    d: dict = {"kernel": os.uname().release, "machine": os.uname().machine,
               "root": os.geteuid() == 0, "lockdown": read_lockdown(), "tracefs": None,
               "kprobes": False, "btf": os.path.exists("/sys/kernel/btf/vmlinux"),
               "arg_style": None, "btf_args": False, "offsets": None, "probes": [],
               "skipped": [], "notes": [], "tracepoints": {}, "problems": [],
               "enabled_elsewhere": [], "enabled_elsewhere_message": None,
               "hist_triggers": False, "serve": None, "ok": False}
    d.update(slab_counters())
    problems = d["problems"]
    if not d["root"]:
        problems.append("not root: tracefs instances need CAP_SYS_ADMIN (run as root)")
    lock = d["lockdown"] or ""
    if "[confidentiality]" in lock:
        problems.append("lockdown is 'confidentiality': the kernel refuses tracefs and "
                        "kprobes (boot with lockdown=integrity or none)")
    try:
        tfs = Tracefs.locate(tracefs_path)
    except FtslabError as exc:
        problems.append(str(exc))
        return d
    d["tracefs"] = str(tfs.root)
    for name in KMEM_TRACEPOINTS:
        try:
            fmt = parse_format(tfs.event_format("kmem", name), "kmem")
            d["tracepoints"][f"kmem:{name}"] = [f.name for f in fmt.fields]
        except FtslabError:
            d["tracepoints"][f"kmem:{name}"] = None
    # another buffer with these events enabled makes every one of them cost more
    from ftslab.kernel.elsewhere import enabled_elsewhere_message
    present = [("kmem", n) for n in KMEM_TRACEPOINTS if d["tracepoints"][f"kmem:{n}"]]
    found = tfs.events_enabled_elsewhere(present)
    d["enabled_elsewhere"] = [{"event": f.event, "instance": f.instance, "state": f.state,
                               "tracing_on": f.tracing_on, "ftslab_pid": f.owner_pid}
                              for f in found]
    d["enabled_elsewhere_message"] = enabled_elsewhere_message(found, tfs.root)
    if not any(d["tracepoints"].values()):
        problems.append("no kmem tracepoints in this kernel's tracefs")
    if not tfs.exists("instances"):
        problems.append("tracefs has no instances directory (kernel too old)")
    d["hist_triggers"], d["serve"] = serve_path(tfs)
    d["kprobes"] = tfs.has_kprobes()
    readme = tfs.readme()
    d["btf_args"] = btf_args_supported(readme)
    if not d["kprobes"] and kprobes == "on":
        problems.append("this kernel has no kprobes (no kprobe_events: CONFIG_KPROBES or "
                        "CONFIG_KPROBE_EVENTS unset)")
    if kprobes != "off":
        # the plan is shown even without kprobe_events: what would be probed, and why
        ctx = read_probe_context(tfs)
        d["btf"] = ctx.btf_present
        if ctx.btf_error:
            d["notes"].append(ctx.btf_error)
        try:
            plan = plan_probes(ctx, f"ftslab_{os.getpid()}", name_offset=cache_name_offset)
        except FtslabError as exc:
            if d["kprobes"]:
                problems.append(f"kprobes: {exc}")
            else:
                d["notes"].append(f"kprobes: {exc}")
        else:
            d["arg_style"] = plan.style
            off = plan.offsets
            d["offsets"] = {
                "name": {"value": off.name, "source": off.source},
                "object_size": ({"value": off.object_size, "source": off.source}
                                if off.object_size is not None else None),
                "size": ({"value": off.size, "source": off.source}
                         if off.size is not None else None)}
            d["probes"] = [{"family": p.family, "symbol": p.symbol, "event": p.event,
                            "layer": p.layer, "prototype": p.prototype_source,
                            "args": dict(p.roles), "fields": list(p.fields),
                            "ftrace": p.ftrace,
                            "definition": p.definition} for p in plan.probes]
            d["skipped"] = [{"family": f, "why": w} for f, w in plan.skipped]
            d["notes"].extend(plan.notes)
            if not plan.probes and d["kprobes"]:
                problems.append("kprobes: no kmalloc-family function can be probed")
    d["ok"] = not problems
    return d


def serve_path(tfs) -> tuple[bool, str]:
    """(whether the kernel has hist triggers, which path ``serve`` takes and why)."""
    from ftslab.kernel.hist import hist_support, read_serve_formats
    have, why = hist_support(tfs)
    if not have:
        return False, f"raw events into a ring buffer ({why})"
    text = (f"hist triggers with --no-live ({why}): the kernel counts, no event is copied; "
            "raw events with live objects (they need each event)")
    kca = read_serve_formats(tfs).get(("kmem", "kmem_cache_alloc"))
    if kca is not None and kca.field("name") is None:
        text += "; kmem_cache_alloc has no name field: on hist, caches of kmalloc only"
    return True, text


def slab_counters(proc: str = "/proc") -> dict:
    """The kernel's own counters a recording stores to check LIVE against
    (reconcile.py): ``slabinfo`` (/proc/slabinfo readable) and ``allocinfo``
    (/proc/allocinfo: CONFIG_MEM_ALLOC_PROFILING, since commit 22d407b164ff ("lib: add
    allocation tagging support for memory allocation profiling") (in v6.10))."""
    def readable(name: str) -> bool:
        try:
            with open(f"{proc}/{name}", "rb") as f:
                f.read(1)
            return True
        except OSError:
            return False
    return {"slabinfo": readable("slabinfo"), "allocinfo": readable("allocinfo")}


def render_text(d: dict) -> list[str]:
    yes = lambda b: "yes" if b else "no"
    out = [f"kernel        {d['kernel']} ({d['machine']})",
           f"root          {yes(d['root'])}",
           f"lockdown      {d['lockdown'] or 'not available (no lockdown LSM file)'}",
           f"tracefs       {d['tracefs'] or 'NOT FOUND'}"]
    for name, fields in d["tracepoints"].items():
        out.append(f"tracepoint    {name:<22} "
                   + (", ".join(fields) if fields else "ABSENT"))
    if d.get("serve"):
        out.append(f"serve         {d['serve']}")
    if d["tracefs"]:
        out.append("elsewhere     " + (d["enabled_elsewhere_message"] or
                                       "no other buffer has the kmem events enabled"))
    if d["kprobes"]:
        out.append("kprobes       yes (kprobe_events)")
    else:
        out.append("kprobes       NO: this kernel has no kprobe_events (CONFIG_KPROBES unset)"
                   "; ftslab records the kmem tracepoints only")
    if "slabinfo" in d:
        out.append("slabinfo      " + ("yes: stored at start and end and sampled each second; "
                                       "LIVE is checked against it" if d["slabinfo"] else
                                       "NOT READABLE: LIVE cannot be checked against the "
                                       "kernel's counters"))
        out.append("allocinfo     " + ("yes: stored at start and end (per call site bytes and "
                                       "live allocations)" if d["allocinfo"] else
                                       "absent (no CONFIG_MEM_ALLOC_PROFILING): no per-call-site "
                                       "count from the kernel; the check of LIVE is per cache "
                                       "only (/proc/slabinfo)"))
    out.append(f"BTF           {yes(d['btf'])}")
    out.append(f"BTF args      {yes(d['btf_args'])} (typed fetch args in the README)")
    if d["arg_style"]:
        out.append("fetch args    " + ("$argN" if d["arg_style"] == "$arg"
                                       else "x86-64 registers (no $argN)"))
    if d["offsets"]:
        for k, v in d["offsets"].items():
            if v is None:
                out.append(f"kmem_cache    {k:<12} unknown (not fetched)")
            else:
                out.append(f"kmem_cache    {k:<12} +{v['value']} ({v['source']})")
    if d["probes"] and not d["kprobes"]:
        out.append("(the probes below are what ftslab would write on a kernel with kprobes: "
                   "symbols and offsets of THIS kernel)")
    for p in d["probes"]:
        args = ", ".join(f"{r}=arg{n}" for r, n in sorted(p["args"].items(),
                                                          key=lambda x: x[1]))
        via = {True: ", ftrace-based", False: ", int3 (not in available_filter_functions)",
               None: ""}[p.get("ftrace")]
        out.append(f"probe         {p['family']:<22} {p['symbol']} "
                   f"[{p['prototype']}: {args or 'no args'}{via}]")
        out.append(f"                  {p['definition']}")
    for s in d["skipped"]:
        out.append(f"not probed    {s['family']:<22} {s['why']}")
    for n in d["notes"]:
        out.append(f"note          {n}")
    for p in d["problems"]:
        out.append(f"PROBLEM       {p}")
    out.append("verdict       " + ("recording can work" if d["ok"] else
                                   "recording cannot work here (see PROBLEM lines)"))
    return out
