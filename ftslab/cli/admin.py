"""Housekeeping commands: ``doctor`` (what this kernel allows), ``probes`` (the kprobe
plan), ``reset`` (what a killed ftslab left), ``recover`` (a recording from its spool).

The facts and plans come from kernel/doctor.py, kernel/kprobes.py, session/dryrun.py and
trace/spool.py.  ``reset`` removes only ftslab's own instances and kprobe groups (named
for their owner's pid: a dead one's, or with ``--all`` a running one's too), never another
tool's state, and names the spools that hold data instead of deleting them.
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from ftslab.cli.options import tracefs
from ftslab.cli.ui import err
from ftslab.errors import FtslabError
from ftslab.pids import pid_alive


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@click.option("--kprobes", type=click.Choice(["auto", "on", "off"]), default="auto",
              show_default=True, help="on: fail when the kernel has no kprobes.")
@click.option("--cache-name-offset", type=click.IntRange(min=0), metavar="N")
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def doctor(fmt, kprobes, cache_name_offset, tracefs_path):
    """What this kernel offers and what ftslab will use: tracefs, root, lockdown,
    kprobes, BTF, each kmalloc-family member's symbol and arguments, struct kmem_cache
    offsets and their source, the kmem tracepoints and their fields.

    Exit 0 when recording can work; otherwise 3 (not root, lockdown), 4 (no tracefs) or
    8 (a feature asked for is missing), with the reason.
    """
    import json
    from ftslab.kernel.doctor import diagnose, render_text
    d = diagnose(tracefs_path, kprobes, cache_name_offset)
    if fmt == "json":
        click.echo(json.dumps(d, indent=1, sort_keys=True))
    else:
        for line in render_text(d):
            click.echo(line)
    if not d["ok"]:
        from ftslab.errors import PermissionDenied, TracefsUnavailable, Unsupported
        why = "recording cannot work here: " + "; ".join(d["problems"])
        cls = (PermissionDenied if not d["root"] or "lockdown" in why else
               TracefsUnavailable if d["tracefs"] is None else Unsupported)
        raise cls(why, hint="see the PROBLEM lines" if fmt == "text" else None)


@click.command()
@click.option("--dry-run", is_flag=True, default=True,
              help="Print the writes (the default and only mode: `record` makes them).")
@click.option("--cache-name-offset", type=click.IntRange(min=0), metavar="N")
@click.option("--kprobe-family", "kprobe_families", multiple=True, metavar="NAME")
@click.option("--kprobe-symbol", "kprobe_symbols", multiple=True, metavar="SYM")
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def probes(dry_run, cache_name_offset, kprobe_families, kprobe_symbols, tracefs_path):
    """Print the kprobe definitions a recording would write to kprobe_events, with the
    symbols chosen, the struct kmem_cache offsets and where each came from."""
    from ftslab.session.engine import Session
    from ftslab.session.dryrun import describe_probe_plan
    from ftslab.kernel.kprobes import plan_probes
    from ftslab.kernel.procfs import read_probe_context
    tfs = tracefs(tracefs_path)
    session = Session(tfs, err)
    if not tfs.has_kprobes():
        err(f"note: this kernel has no kprobes ({tfs.root}/kprobe_events is absent): the "
             "kernel would refuse these writes; `record` falls back to tracepoints")
    plan = plan_probes(read_probe_context(tfs), session.name, name_offset=cache_name_offset,
                       families=tuple(kprobe_families) or None,
                       extra_symbols=tuple(kprobe_symbols))
    for note in plan.notes:
        err(f"note: {note}")
    for line in describe_probe_plan(plan):
        click.echo(f"# {line}")
    for pr in plan.probes:
        click.echo(f"echo {pr.definition!r} >> {tfs.root}/kprobe_events")
    click.echo(f"# on exit, after disabling them: echo '-:{session.name}/EVENT' >> "
               f"{tfs.root}/kprobe_events for each")


@click.command()
@click.option("--all-ftslab", is_flag=True,
              help="Also remove instances of ftslab sessions that are still running.")
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def reset(all_ftslab, tracefs_path):
    """Remove tracefs instances and kprobe events left by ftslab sessions that died
    (e.g. SIGKILL).  Only those of dead owners, unless --all-ftslab."""
    from ftslab.kernel.tracefs import Instance
    tfs = tracefs(tracefs_path)
    removed = 0
    failed: list[FtslabError] = []
    owners_kept: set[int] = set()
    busy_groups: set[str] = set()
    for name, pid in tfs.ftslab_instances():
        if pid_alive(pid) and not all_ftslab:
            err(f"keeping {name}: its owner (pid {pid}) is still running")
            owners_kept.add(pid)
            continue
        try:
            Instance(tfs, name).destroy()  # disables its events: its probes can go next
        except FtslabError as exc:
            failed.append(exc)  # the others still go
            busy_groups.add(f"ftslab_{pid}")
            err(f"could not remove {name}: {exc}")
            continue
        removed += 1
        err(f"removed {name}")
    probes_removed = 0
    for group, event, pid in tfs.ftslab_probes():
        if pid_alive(pid) and not all_ftslab:
            if pid not in owners_kept:
                err(f"keeping kprobe {group}/{event}: its owner (pid {pid}) is still "
                     "running")
            continue
        if f"ftslab_{pid}" in busy_groups:
            err(f"keeping kprobe {group}/{event}: its instance could not be removed "
                 "(still enabled there)")
            continue
        try:
            tfs.kprobe_remove(group, event)
        except FtslabError as exc:
            failed.append(exc)  # the others still go
            err(f"could not remove kprobe {group}/{event}: {exc}")
            continue
        probes_removed += 1
        err(f"removed kprobe {group}/{event}")
    err(f"removed {removed} stale instance(s) and {probes_removed} stale kprobe(s)")
    _reset_spools()
    if failed:
        raise failed[0]


def _reset_spools() -> None:
    """Spools of dead sessions (registered, or in the current directory): empty ones
    (killed before any page arrived) are removed, the others named: they hold data."""
    import shutil
    from ftslab.trace import spool
    found = dict((p.resolve(), pid) for pid, p in spool.registry_orphans())
    try:
        for name in os.listdir("."):
            pid = spool.spool_owner(name)
            if pid is not None and Path(name).is_dir() and not pid_alive(pid):
                found.setdefault(Path(name).resolve(), pid)
    except OSError:
        pass
    for path, pid in sorted(found.items()):
        if spool.spool_has_pages(path):
            err(f"kept {path}: what dead ftslab session {pid} captured (read it with: "
                 f"ftslab report {path}; write it as a recording with: ftslab recover "
                 f"{path})")
        else:
            shutil.rmtree(path, ignore_errors=True)
            spool.registry_remove(pid)
            err(f"removed {path} (session {pid} died before capturing anything)")


@click.command(epilog="Example:\n\n\b\n  ftslab recover run.dat.ftslab-spool-4242   # writes run.dat")
@click.argument("spool_dir", type=click.Path(file_okay=False))
@click.option("-o", "--output", metavar="FILE", default=None,
              help="Recording to write (default: the file the dead session was writing).")
def recover(spool_dir, output):
    """Write what a dead `record` session left in its spool directory as a recording.

    A session killed by SIGKILL, a crash or a power cut leaves OUT.ftslab-spool-PID/
    next to its output: the pages it had captured, and what decoding them needs.  The
    recording written is marked truncated (every report says so; --strict exits 9);
    the spool is removed once it is written.
    """
    from ftslab.trace import spool
    out, n = spool.recover(spool_dir, output)
    err(f"wrote {out} ({n / 1e6:.1f} MB) from {spool_dir}; the recording is truncated "
         f"(see: ftslab report {out})")
