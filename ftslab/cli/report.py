"""``ftslab report``: the tables, flame-graph stacks, series and plots of recordings.

Options, loading (trace/loader.py) and output: the tables are analysis/'s, their text,
JSON and CSV render.py's, the PNG plot.py's.  Of the running kernel it reads only the kmem
event formats, for a text trace, and it writes nothing to it.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ftslab.cli.options import tracefs
from ftslab.cli.ui import err, ProgressLine, quiet_stdout
from ftslab.errors import FtslabError, OutputError, UsageError


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
@click.option("--by", "by", multiple=True,
              type=click.Choice(["comm", "pid", "cache", "callsite", "event", "order", "gfp",
                                 "function", "stack"]),
              help="Group by these keys (repeatable, combinable); function: the probed "
                   "function of kprobe events; stack: the kernel stack (record --stacks).")
@click.option("--source", type=click.Choice(["tracepoint", "kprobe"]), default=None,
              help="Which events the tables count when a recording has both (they see "
                   "the same allocations, so they are never added up). Default: "
                   "tracepoints if present.")
@click.option("--sort", type=click.Choice(["bytes", "count", "waste"]), default="bytes",
              show_default=True)
@click.option("--top", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows per table.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "folded"]),
              default="table", show_default=True,
              help="folded: Brendan Gregg's folded kernel stacks (comm;outer;...;inner "
                   "WEIGHT) for flamegraph.pl, inferno or speedscope; needs record "
                   "--stacks.")
@click.option("--weight", type=click.Choice(["bytes", "count"]), default="bytes",
              show_default=True, help="What --format folded weighs each stack by.")
@click.option("--hist", is_flag=True, help="Add a log2 histogram of requested sizes.")
@click.option("--live", is_flag=True,
              help="What is still allocated at the end of the recording (not freed): "
                   "objects, bytes, age and the outstanding bytes over time, by cache, "
                   "call site and comm (or --by).")
@click.option("--interval", metavar="DURATION",
              help="A time series instead: per interval (1s, 250ms, ...) and key (--by, "
                   "default cache) the allocations, bytes/s, frees and outstanding bytes.")
@click.option("--plot", "plot", metavar="FILE.png", type=click.Path(dir_okay=False),
              help="Draw bytes/s and outstanding bytes per key over time into a PNG "
                   "(needs matplotlib: pip install 'ftslab[plot]'); --interval default 1s.")
@click.option("--strict", is_flag=True,
              help="Fail (exit 9/10/6) on a truncated recording, lost events or "
                   "unreadable lines instead of warning.")
@click.option("--buffer", metavar="NAME", default=None,
              help="Which buffer of a trace.dat with several (trace-cmd -B): its instance "
                   "name; default the top-level one (or the first that has data).")
def report(files, by, sort, top, fmt, hist, strict, buffer, source, live, weight, interval,
           plot):
    """Aggregate a recording: by cache, call site, comm, pid, event, page order, gfp.

    FILES: trace.dat files (ftslab's or trace-cmd's), text traces (what `cat trace`
    printed), or the spool directory a killed `record` left (OUT.ftslab-spool-PID).
    """
    try:
        _report(files, by, sort, top, fmt, hist, strict, buffer, source, live, weight,
                interval, plot)
    except BrokenPipeError:
        quiet_stdout()  # `ftslab report ... | head`: the reader had enough
    except OSError as exc:
        quiet_stdout()
        raise OutputError(f"cannot write the report to stdout: {exc.strerror}") from None


def _live_kmem_formats() -> dict | None:
    """The running kernel's kmem formats, to read a text trace's fields exactly (its gfp
    names back to flag words, its event system).  A text trace from another kernel
    still parses: lines that do not fit fall back to key=value, and are counted."""
    from ftslab.events import DEFAULT_EVENTS
    from ftslab.session.options import parse_event_spec
    from ftslab.trace.formats import parse_format
    try:
        tfs = tracefs(None)
        out = {}
        for spec in DEFAULT_EVENTS:
            system, name = parse_event_spec(spec)
            if tfs.event_exists(system, name):
                out[name] = parse_format(tfs.event_format(system, name), system)
        return out or None
    except FtslabError:
        return None


def _folded(ds, weight: str, source: str | None, live: bool, by) -> list:
    from ftslab.analysis.summary import default_source
    from ftslab.analysis.stacks import folded_stacks
    if by:
        raise UsageError("--format folded folds by comm and stack: drop --by")
    src = source or default_source(ds)
    if live and src == "kprobe":
        raise UsageError("--live pairs allocations with their frees by pointer, and "
                         "kprobe events carry no pointer")
    return folded_stacks(ds, weight, layer="slab" if src == "tracepoint" else "kprobe",
                         live=live)


_ANALYSIS_BYTES_PER_EVENT = 40  # what build_report's analysis grows by (38 on 11 M events)


def _report(files, by, sort, top, fmt, hist, strict, buffer, source=None, live=False,
            weight="bytes", interval=None, plot=None):
    from ftslab.errors import TruncatedRecording, BadInput, EXIT_LOST
    from ftslab.trace.loader import load
    from ftslab.analysis.build import build_report
    from ftslab.events import fields_read
    from ftslab.progress import Part
    from ftslab.cli import render
    if len(files) > 1 and fmt != "table":
        raise UsageError(f"--format {fmt} reports one file at a time (got {len(files)})")
    from ftslab.analysis.series import parse_interval
    interval_ns = parse_interval(interval) if interval is not None else None
    if plot is not None:
        if len(files) > 1:
            raise UsageError(f"--plot draws one recording (got {len(files)})")
        if fmt == "folded":
            raise UsageError("--plot draws the time series, not folded stacks")
        from ftslab.cli.plot import check_available
        check_available()
        if interval_ns is None:
            interval_ns = parse_interval("1s")
    if interval_ns is not None and fmt == "folded":
        raise UsageError("--interval gives a time series; --format folded gives stacks: "
                         "give one of them")
    from ftslab.trace.prefault import keep_freed_memory, prefault
    fields = functools.partial(fields_read, gfp="gfp" in by)
    keep_freed_memory()
    # read only for a text trace (the running kernel's formats: ~75 ms)
    hint = functools.cache(_live_kmem_formats)
    for path in files:
        bar = ProgressLine()
        try:
            ds = load(path, formats_hint=hint, buffer=buffer, fields=fields,
                      progress=Part(bar.progress, 0.0, 0.45))
            if fmt == "folded":
                rep = None
                folded = _folded(ds, weight, source, live, by)
            else:
                # the analysis's arrays, ~40 bytes an event, faulted in ahead
                prefault(ds.events * _ANALYSIS_BYTES_PER_EVENT)
                rep = build_report(ds, by=tuple(by), sort=sort, top=top, hist=hist,
                                   source=source, progress=Part(bar.progress, 0.45, 1.0),
                                   live=live, interval_ns=interval_ns)
        finally:
            bar.close()
        if strict:
            if ds.meta.truncated:
                raise TruncatedRecording(f"{path} is truncated: {ds.meta.truncated_detail}")
            if ds.meta.total_lost:
                e = BadInput(f"{path}: {ds.meta.total_lost} events were lost while recording")
                e.exit_code = EXIT_LOST
                raise e
            if ds.meta.unparsed:
                raise BadInput(f"{path}: {ds.meta.unparsed} lines, pages or records could not "
                               "be decoded")
        if len(files) > 1 and fmt == "table":
            click.echo(f"== {path}")
        out = sys.stdout
        if fmt == "folded":
            for stack, w in folded:
                out.write(f"{stack} {w}\n")
            out.flush()
            from ftslab.analysis.summary import warnings_of
            for w in warnings_of(ds):
                err(w)
            continue
        if plot is not None:
            from ftslab.cli.plot import plot_series
            try:
                plot_series(rep.table(rep.main), plot, title=f"{Path(path).name}")
            except OSError as exc:
                raise OutputError(f"cannot write {plot}: {exc.strerror}") from None
            err(f"wrote {plot}")
        if fmt == "json":
            out.write(render.render_json(rep) + "\n")
        elif fmt == "csv":
            out.write(render.render_csv(rep))
        else:
            for line in render.render_text(rep):
                out.write(line + "\n")
        out.flush()
        if fmt != "table":
            for w in rep.warnings:
                err(w)
