"""``ftslab record``: a recording of a command or of the whole system into a trace.dat.

Options and their logic only: the session is session/record.py's.
"""
from __future__ import annotations

import click

from ftslab.cli.options import capture_options, DEFAULT_SETTLE, frees_option, session_options, tracefs
from ftslab.cli.ui import err, Status


@click.command(context_settings={"ignore_unknown_options": False},
             epilog="Examples:\n\n\b\n  ftslab record -o run.dat -- ./workload args\n"
                    "  ftslab record -d 10 --comm nginx\n  ftslab record -e kmem:kmalloc "
                    "--min-size 4096 -d 5")
@click.option("-o", "--output", default="ftslab.dat", show_default=True, metavar="FILE",
              help="Recording to write (a trace-cmd trace.dat v7 file).")
@capture_options
@click.option("--stacks", is_flag=True,
              help="Also record the kernel stack of every allocation (the stacktrace "
                   "trigger; costs the kernel an unwind per allocation): report --by "
                   "stack, --format folded.")
@frees_option
@click.option("--settle", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="After the allocations stop (COMMAND exited, -d, Ctrl-C), go on "
                   "recording frees for SECONDS, so that deferred frees (RCU, workqueues, "
                   "I/O completion) of what was allocated are seen. 0: off. [default: "
                   f"{DEFAULT_SETTLE:g}]")
def record(output, events, duration, pids, comm, min_size, cache, filters, buffer_kb,
           system_wide, dry_run, tracefs_path, kprobes, cache_name_offset, kprobe_families,
           kprobe_symbols, command, stacks, frees, settle):
    """Record allocations into a trace.dat file, until COMMAND exits, -d SECONDS pass or
    Ctrl-C.

    With a COMMAND, only it and its children are recorded (kernel-side pid filter with
    event-fork) unless -a is given.
    """
    from ftslab.session import dryrun
    from ftslab.session import record
    opts = session_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                           system_wide, command, output, kprobes, cache_name_offset,
                           kprobe_families, kprobe_symbols)
    opts.stacks = stacks
    opts.system_frees = frees == "all"
    opts.settle = DEFAULT_SETTLE if settle is None else settle
    tfs = tracefs(tracefs_path)
    if dry_run:
        dryrun.print_dry_run(tfs, opts, err, click.echo,
                              "splice per_cpu/cpuN/trace_pipe_raw pages into spool files")
        return
    status = Status(True)
    try:
        res = record.record(tfs, opts, err, status)
    finally:
        status.done()
    if res is None:
        err("nothing was recorded")
        return
    how = f" (stopped by {res.interrupted_by})" if res.interrupted_by else ""
    frees = res.frees_events_estimate
    err(f"recorded {res.events_estimate + (frees or 0):,} events in {res.duration:.1f}s{how}, "
         f"lost {res.lost:,}; wrote {res.output} ({res.bytes_written / 1e6:.1f} MB)"
         + (f"; {frees:,} of the events are frees from every context" if frees else ""))
    if res.lost:
        err(f"WARNING: {res.lost:,} events were lost: raise -b (now {buffer_kb} KiB per CPU) "
             "or narrow the events/filters")
    if res.child_status not in (None, 0):
        err(f"command exited with status {res.child_status}")
