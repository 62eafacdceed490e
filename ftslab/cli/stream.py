"""``ftslab stream``: events as they come, one line or one JSON object each, for pipelines.

Options and output only: the session is session/stream.py's, the line formats render.py's
(the kallsyms it symbolizes with is read here).
"""
from __future__ import annotations

import sys

import click

from ftslab.cli.options import capture_options, session_options, tracefs
from ftslab.cli.ui import err, quiet_stdout
from ftslab.errors import FtslabError, OutputError


@click.command(epilog="Examples:\n\n\b\n  ftslab stream --format json -d 5 | jq .bytes_req\n"
                    "  ftslab stream --format seed -- ./a.out")
@click.option("--format", "fmt", type=click.Choice(["json", "text", "seed"]), default="text",
              show_default=True)
@capture_options
def stream(fmt, events, duration, pids, comm, min_size, cache, filters, buffer_kb,
           system_wide, dry_run, tracefs_path, kprobes, cache_name_offset, kprobe_families,
           kprobe_symbols, command):
    """Print allocations live, one line per event (json: one object per line)."""
    from ftslab.session import dryrun
    from ftslab.session import engine
    from ftslab.session import signals
    from ftslab.cli import render
    from ftslab.trace.kallsyms import Symbolizer
    from ftslab.session.stream import DRAIN_S, stream as run_stream
    from ftslab.kernel.tracefs import read_text_file
    opts = session_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                           system_wide, command, None, kprobes, cache_name_offset,
                           kprobe_families, kprobe_symbols)
    opts.status = False
    opts.bulk_frees = False  # it prints allocations: nothing here pairs frees
    opts.command_stdout_to_stderr = True  # stdout carries the events
    tfs = tracefs(tracefs_path)
    if dry_run:
        dryrun.print_dry_run(tfs, opts, err, click.echo,
                              "read and decode per_cpu/cpuN/trace_pipe_raw pages live")
        return
    try:
        sym = Symbolizer(read_text_file("/proc/kallsyms"))
    except FtslabError:
        sym = None
    sym = sym if sym else None
    out = sys.stdout
    closed: list = []
    failed: list = []

    if fmt == "json":
        line_of = lambda ev: render.event_to_json(ev, sym)
    elif fmt == "seed":
        # the module's lines came from its kprobes: with kprobe events in the session,
        # the tracepoints' lines for the same allocations would print everything twice
        kp = kprobes in ("on", "only") or (kprobes == "auto" and tfs.has_kprobes())
        from ftslab.events import is_probe_event
        line_of = ((lambda ev: render.event_to_seed(ev) if is_probe_event(ev.system, ev.name)
                    else None) if kp else render.event_to_seed)
    else:
        namer = _gfp_namer(tfs)
        line_of = lambda ev: render.event_to_text(ev, sym, namer)

    def sink(ev):
        if closed:
            return
        line = line_of(ev)
        if line is None:
            return
        try:
            out.write(line + "\n")
        except BrokenPipeError:
            closed.append(True)
            signals.request_stop()
        except OSError as exc:  # e.g. stdout on a full disk
            failed.append(exc)
            closed.append(True)
            signals.request_stop()

    def flushing_status(text, final):
        if not closed:
            try:
                out.flush()
            except BrokenPipeError:
                closed.append(True)
                signals.request_stop()
            except OSError as exc:
                failed.append(exc)
                closed.append(True)
                signals.request_stop()

    run, n, lost, unread, undecodable = run_stream(tfs, opts, err, flushing_status, sink)
    try:
        out.flush()
    except BrokenPipeError:
        closed.append(True)
    except OSError as exc:
        failed.append(exc)
        closed.append(True)
    if closed:
        quiet_stdout()  # stdout is gone: keep Python from complaining about it at exit
    err(f"streamed {n:,} events in {run.duration:.1f}s, lost {lost:,}"
         + (f", not shown {unread:,}" if unread else "")
         + (" (output closed)" if closed else ""))
    if unread and not closed:
        err(f"WARNING: the stream fell behind: {unread:,} events recorded before the end "
             f"were still in the buffer after {DRAIN_S:g}s of draining and were not shown "
             "(use ftslab record, which keeps every event)")
    if lost:
        err(f"WARNING: {lost:,} events were lost (stream cannot keep up at this rate: "
             "use ftslab record, which is lossless)")
    if undecodable:
        err(f"WARNING: {undecodable:,} pages or records could not be decoded and were "
             "not shown")
    if failed:
        raise OutputError(f"cannot write the events to stdout: {failed[0].strerror}")
    incomplete = engine.cleanup_error(run.session, f"streamed {n:,} events")
    if incomplete is not None:
        raise incomplete
    if run.interrupted_by in (engine.TRACEFS_UNMOUNTED, engine.INSTANCE_REMOVED):
        from ftslab.errors import TracefsUnavailable
        raise TracefsUnavailable(f"{run.interrupted_by} while streaming: the events before "
                                 "were printed", hint="")


def _gfp_namer(tfs):
    """gfp_flags -> names, with each event's own __print_flags table (read once)."""
    from ftslab.trace import gfp
    from ftslab.trace.formats import parse_format
    tables: dict = {}

    def name(ev, value: int) -> str:
        key = (ev.system, ev.name)
        if key not in tables:
            try:
                fmt = parse_format(tfs.event_format(ev.system, ev.name), ev.system)
                tables[key] = gfp.flag_table(fmt.print_fmt) or None
            except FtslabError:
                tables[key] = None
        table = tables[key]
        return gfp.format_flags(value, table) if table else f"{value:#x}"
    return name
