"""Options shared by the commands that run a session (record, stream, top), and their
translation into ``SessionOptions``.

Click options and their checks, and where tracefs is mounted (``tracefs``): nothing here
writes to the kernel.
"""
from __future__ import annotations

from pathlib import Path

import click

from ftslab.errors import UsageError


#: record --settle's default, seconds: README "What LIVE means" has the measurement.
DEFAULT_SETTLE = 1.0


def tracefs(path: str | None):
    from ftslab.kernel.tracefs import Tracefs
    return Tracefs.locate(path)


def capture_options(f):
    opts = [
        click.option("-e", "--event", "events", multiple=True, metavar="SYS:EVENT",
                     help="Event to record (repeatable). Default: kmem:kmalloc, "
                          "kmem:kmem_cache_alloc, kmem:mm_page_alloc and their frees."),
        click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True),
                     metavar="SECONDS",
                     help="Stop after SECONDS."),
        click.option("-p", "--pid", "pids", multiple=True, type=click.IntRange(min=1),
                     metavar="PID",
                     help="Record only this process (and children it forks); repeatable."),
        click.option("--comm", metavar="NAME",
                     help="Record only tasks whose comm is NAME (kernel-side filter)."),
        click.option("--min-size", type=click.IntRange(min=0), metavar="BYTES",
                     help="Only allocations of at least BYTES requested (kernel-side)."),
        click.option("--cache", metavar="NAME",
                     help="Only slab events of cache NAME (kernel-side, where the event "
                          "has a name field)."),
        click.option("--filter", "filters", multiple=True, metavar="EXPR",
                     help="Kernel event filter, e.g. 'bytes_req >= 4096'; applied to every "
                          "event that has the fields it names (repeatable: ANDed)."),
        click.option("-b", "--buffer-kb", type=click.IntRange(min=4, max=1 << 22),
                     metavar="KB",
                     default=8192, show_default=True, help="Ring buffer per CPU, KiB."),
        click.option("-a", "--all", "system_wide", is_flag=True,
                     help="The whole system (the default without a COMMAND or -p; with a "
                          "COMMAND: every process while it runs, not only the COMMAND)."),
        click.option("--dry-run", is_flag=True,
                     help="Print every tracefs write that would be made, make none."),
        click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True,
                     envvar="FTSLAB_TRACEFS"),
        click.option("--kprobes", type=click.Choice(["auto", "on", "off", "only"]),
                     default="auto", show_default=True,
                     help="Kprobe events on the kmalloc family and kmem_cache_alloc too "
                          "(size, gfp, cache name, call site): auto = where the kernel has "
                          "them, on = required, off = tracepoints only, only = kprobes "
                          "without the tracepoints."),
        click.option("--cache-name-offset", type=click.IntRange(min=0), metavar="N",
                     help="offsetof(struct kmem_cache, name) for kernels without BTF "
                          "(checked against the kernel's caches before recording)."),
        click.option("--kprobe-family", "kprobe_families", multiple=True, metavar="NAME",
                     help="Probe only these family members (see `ftslab doctor`); "
                          "repeatable."),
        click.option("--kprobe-symbol", "kprobe_symbols", multiple=True, metavar="SYM",
                     help="Also probe this kernel function (arguments from BTF); "
                          "repeatable."),
        click.argument("command", nargs=-1, type=click.UNPROCESSED),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


frees_option = click.option(
    "--frees", "frees", type=click.Choice(["all", "traced"]), default="all",
    show_default=True,
    help="all = record the frees of the whole system in every context (a second "
         "instance), so that what the traced tasks allocated and an RCU callback, "
         "interrupt, workqueue or other task freed is seen freed; traced = frees in the "
         "allocations' instance, as -p/--comm/COMMAND limit them (cheaper; LIVE of such "
         "a recording is then an upper bound).")
"""record's and top's --frees."""


def session_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                    system_wide, command, output=None, kprobes="auto", cache_name_offset=None,
                    kprobe_families=(), kprobe_symbols=()):
    import math
    from ftslab.events import DEFAULT_EVENTS
    from ftslab.session.options import SessionOptions
    from ftslab.pids import pid_alive
    if duration is not None and not math.isfinite(duration):
        raise UsageError(f"-d {duration}: give a number of seconds")
    for pid in pids:
        if not pid_alive(pid):
            raise UsageError(f"-p {pid}: no such process")
    # -a without a COMMAND is redundant, not wrong (perf and trace-cmd accept it too)
    if system_wide and pids:
        raise UsageError("-a records the whole system and -p only these processes: "
                         "give one of them")
    if pids and command:
        raise UsageError("give either -p PID or a COMMAND, not both")
    if kprobes == "only" and events:
        raise UsageError("--kprobes only records no tracepoints: drop -e, or use "
                         "--kprobes on to record both")
    if kprobes == "off" and (kprobe_symbols or kprobe_families or
                             cache_name_offset is not None):
        raise UsageError("--kprobe-symbol/--kprobe-family/--cache-name-offset need kprobes: "
                         "not with --kprobes off")
    return SessionOptions(events=tuple(events) or DEFAULT_EVENTS, duration=duration,
                         output=Path(output or "ftslab.dat"), pids=tuple(pids), comm=comm,
                         buffer_kb=buffer_kb, command=tuple(command),
                         system_wide=system_wide, filters=tuple(filters), min_size=min_size,
                         cache=cache, kprobes=kprobes, cache_name_offset=cache_name_offset,
                         kprobe_families=tuple(kprobe_families) or None,
                         kprobe_symbols=tuple(kprobe_symbols))
