"""``--dry-run``: the exact tracefs writes a session would make, and its probe plan, in words.

It prints the plan of ``engine.Session.plan`` and never applies it: nothing is written
to tracefs.
"""
from __future__ import annotations

from typing import Callable

from ftslab.kernel.tracefs import Tracefs
from ftslab.session.engine import report_stale, Session
from ftslab.session.options import SessionOptions

__all__ = ["print_dry_run"]


def print_dry_run(tracefs: Tracefs, opts: SessionOptions, warn, out: Callable[[str], None],
                  reader: str) -> None:
    """Print every tracefs write a session would make, without making any."""
    report_stale(tracefs, warn)
    session = Session(tracefs, warn)
    steps = session.plan(opts, child_pid=0 if opts.command and not opts.system_wide else None)
    plan = session.probe_plan
    if plan is not None:
        for line in describe_probe_plan(plan):
            out(f"# {line}")
    for st in steps:
        if st.path.endswith("set_event_pid") and opts.command:
            st.value = st.value.replace("0", "$COMMAND_PID")
        if st.kind == "kprobe":
            out(f"echo {st.value!r} >> {tracefs.root / st.path}    # {st.what}")
        elif st.kind == "verify":
            out(f"# {st.what}: enable those probes alone, allocate, read `trace`, "
                "compare with /proc/slabinfo, disable, clear")
        elif st.value is None:
            out(f"mkdir {tracefs.root / st.path}    # {st.what}")
        else:
            out(f"echo {st.value!r} > {tracefs.root / st.path}    # {st.what}")
    names = ([session.free_instance_name] if session.free_events else []) + [session.name]
    for name in names:
        out(f"echo '' > {tracefs.root}/instances/{name}/trace    # empty the buffer")
    for name in names:
        out(f"echo '1' > {tracefs.root}/instances/{name}/tracing_on    # start")
    if opts.settle > 0:
        stop = (f"echo '0' > {tracefs.root}/instances/{session.name}/tracing_on"
                if session.free_events else
                "echo '0' > each allocation event's enable")
        out(f"# at the end: {stop}, then {opts.settle:g}s more of frees (settle)")
    out(f"# then: {reader}; on exit every write above is undone in reverse order "
        "and the instance removed")


def describe_probe_plan(plan) -> list[str]:
    """Human lines: each probe's family, symbol and where its argument layout came from,
    the struct kmem_cache offsets and their source, and what was not probed and why."""
    out = []
    off = plan.offsets
    if off is not None:
        src = {"btf": "from this kernel's BTF (/sys/kernel/btf/vmlinux)",
               "user": "given with --cache-name-offset",
               "default": "DEFAULT, no BTF: verified before recording"}[off.source]
        extra = (f", object_size at +{off.object_size}" if off.object_size is not None else
                 ", object_size: unknown (not fetched)")
        out.append(f"struct kmem_cache: name at +{off.name}{extra} -- {src}")
    out.append("fetch args: " + ("$argN (listed in this kernel's tracefs README)"
                                 if plan.style == "$arg" else "x86-64 registers"))
    for pr in plan.probes:
        where = {"btf": "prototype from BTF", "table": "prototype from ftslab's table "
                 "(no BTF)", "none": "no prototype: no arguments"}[pr.prototype_source]
        roles = ", ".join(f"{r}=arg{n}" for r, n in sorted(pr.roles.items(),
                                                           key=lambda x: x[1]))
        out.append(f"{pr.family}: {pr.symbol} ({where}{': ' + roles if roles else ''})")
    if plan.bulk_frees:
        first = plan.bulk_frees[0]
        n = sum(len(p.fields) - 1 for p in plan.bulk_frees)
        out.append(f"free_bulk: {first.symbol} ({len(plan.bulk_frees)} probes, the first "
                   f"{n} pointers of each call; frees without a kmem free event)")
    for fam, why in plan.skipped:
        out.append(f"{fam}: not probed: {why}")
    return out
