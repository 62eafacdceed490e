"""The ftslab command line: options, option logic, then one call into the engine.

Errors are caught in exactly one place (``main``) and mapped to the exit codes of
errors.py.  Data goes to stdout; progress, warnings and the summary go to stderr.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import __version__
from .errors import EXIT_CODES, FtslabError, OutputError, UsageError, EXIT_USAGE

__all__ = ["main", "cli"]

#: record --settle's default, seconds: README "What LIVE means" has the measurement.
_DEFAULT_SETTLE = 1.0

_EXIT_HELP = "\n".join(f"  {code:>5}  {text}" for code, text in EXIT_CODES.items())


def _err(msg: str) -> None:
    # diagnostics must never cost a recording: a closed or full stderr is ignored
    try:
        sys.stderr.write(f"ftslab: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


class _Status:
    """One status line on stderr: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def __call__(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        try:
            self._show(text)
        except (OSError, ValueError):
            self.enabled = False  # stderr is gone (closed pipe, full disk): stop trying

    def _show(self, text: str) -> None:
        import time
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            sys.stderr.write(f"\rftslab: {text}{pad}")
            self.width = len(text)
            sys.stderr.flush()
        elif time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            sys.stderr.write(f"ftslab: {text}\n")

    def done(self) -> None:
        if self.enabled and self.tty and self.width:
            try:
                sys.stderr.write("\n")
            except (OSError, ValueError):
                pass
            self.width = 0


class _ProgressLine:
    """A progress bar on stderr for a report that takes long: only on a terminal, only
    once FTSLAB_PROGRESS_AFTER seconds (default 1) have passed, redrawn by a thread
    every 0.2 s while the work runs, erased when it ends (stdout is never touched)."""

    def __init__(self):
        from .progress import Progress
        self.progress = Progress()
        try:
            self.after = float(os.environ.get("FTSLAB_PROGRESS_AFTER", "1"))
        except ValueError:
            self.after = 1.0
        self.width = 0
        self._thread = None
        if sys.stderr.isatty():
            import threading
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="ftslab-progress",
                                            daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            self._draw()
            if self._stop.wait(0.2):
                return

    def _draw(self):
        text, frac, el = self.progress.snapshot()
        if el >= self.after:
            n = int(frac * 24)
            line = f"ftslab: [{'#' * n}{'.' * (24 - n)}] {frac:4.0%} {el:5.1f}s  {text}"
            try:
                sys.stderr.write("\r" + line.ljust(self.width))
                sys.stderr.flush()
            except (OSError, ValueError):
                self.after = float("inf")  # stderr is gone: stop drawing
                return
            self.width = max(self.width, len(line))

    def close(self):
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if self.width:
            try:
                sys.stderr.write("\r" + " " * self.width + "\r")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


def _tracefs(path: str | None):
    from .tracefs import Tracefs
    return Tracefs.locate(path)


def _capture_options(f):
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


_frees_option = click.option(
    "--frees", "frees", type=click.Choice(["all", "traced"]), default="all",
    show_default=True,
    help="all = record the frees of the whole system in every context (a second "
         "instance), so that what the traced tasks allocated and an RCU callback, "
         "interrupt, workqueue or other task freed is seen freed; traced = frees in the "
         "allocations' instance, as -p/--comm/COMMAND limit them (cheaper; LIVE of such "
         "a recording is then an upper bound).")
"""record's and top's --frees."""


def _record_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                    system_wide, command, output=None, kprobes="auto", cache_name_offset=None,
                    kprobe_families=(), kprobe_symbols=()):
    import math
    from .capture import DEFAULT_EVENTS, RecordOptions
    from .tracefs import pid_alive
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
    return RecordOptions(events=tuple(events) or DEFAULT_EVENTS, duration=duration,
                         output=Path(output or "ftslab.dat"), pids=tuple(pids), comm=comm,
                         buffer_kb=buffer_kb, command=tuple(command),
                         system_wide=system_wide, filters=tuple(filters), min_size=min_size,
                         cache=cache, kprobes=kprobes, cache_name_offset=cache_name_offset,
                         kprobe_families=tuple(kprobe_families) or None,
                         kprobe_symbols=tuple(kprobe_symbols))


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit codes:\n\n\b\n" + _EXIT_HELP)
@click.version_option(__version__, prog_name="ftslab")
def cli():
    """Who in the kernel allocates memory: kmalloc, slab caches and pages, from ftrace.

    No eBPF, no kernel module: ftslab drives tracefs from user space, in a private
    instance it removes on exit.  Needs root.
    """


@cli.command(context_settings={"ignore_unknown_options": False},
             epilog="Examples:\n\n\b\n  ftslab record -o run.dat -- ./workload args\n"
                    "  ftslab record -d 10 --comm nginx\n  ftslab record -e kmem:kmalloc "
                    "--min-size 4096 -d 5")
@click.option("-o", "--output", default="ftslab.dat", show_default=True, metavar="FILE",
              help="Recording to write (a trace-cmd trace.dat v7 file).")
@_capture_options
@click.option("--stacks", is_flag=True,
              help="Also record the kernel stack of every allocation (the stacktrace "
                   "trigger; costs the kernel an unwind per allocation): report --by "
                   "stack, --format folded.")
@_frees_option
@click.option("--settle", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="After the allocations stop (COMMAND exited, -d, Ctrl-C), go on "
                   "recording frees for SECONDS, so that deferred frees (RCU, workqueues, "
                   "I/O completion) of what was allocated are seen. 0: off. [default: "
                   f"{_DEFAULT_SETTLE:g}]")
def record(output, events, duration, pids, comm, min_size, cache, filters, buffer_kb,
           system_wide, dry_run, tracefs_path, kprobes, cache_name_offset, kprobe_families,
           kprobe_symbols, command, stacks, frees, settle):
    """Record allocations into a trace.dat file, until COMMAND exits, -d SECONDS pass or
    Ctrl-C.

    With a COMMAND, only it and its children are recorded (kernel-side pid filter with
    event-fork) unless -a is given.
    """
    from . import capture
    opts = _record_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                           system_wide, command, output, kprobes, cache_name_offset,
                           kprobe_families, kprobe_symbols)
    opts.stacks = stacks
    opts.system_frees = frees == "all"
    opts.settle = _DEFAULT_SETTLE if settle is None else settle
    tfs = _tracefs(tracefs_path)
    if dry_run:
        capture.print_dry_run(tfs, opts, _err, click.echo,
                              "splice per_cpu/cpuN/trace_pipe_raw pages into spool files")
        return
    status = _Status(True)
    try:
        res = capture.record(tfs, opts, _err, status)
    finally:
        status.done()
    if res is None:
        _err("nothing was recorded")
        return
    how = f" (stopped by {res.interrupted_by})" if res.interrupted_by else ""
    frees = res.frees_events_estimate
    _err(f"recorded {res.events_estimate + (frees or 0):,} events in {res.duration:.1f}s{how}, "
         f"lost {res.lost:,}; wrote {res.output} ({res.bytes_written / 1e6:.1f} MB)"
         + (f"; {frees:,} of the events are frees from every context" if frees else ""))
    if res.lost:
        _err(f"WARNING: {res.lost:,} events were lost: raise -b (now {buffer_kb} KiB per CPU) "
             "or narrow the events/filters")
    if res.child_status not in (None, 0):
        _err(f"command exited with status {res.child_status}")


@cli.command()
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
        _quiet_stdout()  # `ftslab report ... | head`: the reader had enough
    except OSError as exc:
        _quiet_stdout()
        raise OutputError(f"cannot write the report to stdout: {exc.strerror}") from None


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _live_kmem_formats() -> dict | None:
    """The running kernel's kmem formats, to read a text trace's fields exactly (its gfp
    names back to flag words, its event system).  A text trace from another kernel
    still parses: lines that do not fit fall back to key=value, and are counted."""
    from .capture import DEFAULT_EVENTS, parse_event_spec
    from .formats import parse_format
    try:
        tfs = _tracefs(None)
        out = {}
        for spec in DEFAULT_EVENTS:
            system, name = parse_event_spec(spec)
            if tfs.event_exists(system, name):
                out[name] = parse_format(tfs.event_format(system, name), system)
        return out or None
    except FtslabError:
        return None


def _folded(ds, weight: str, source: str | None, live: bool, by) -> list:
    from .report import default_source, folded_stacks
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
    from .errors import TruncatedRecording, BadInput, EXIT_LOST
    from .load import load
    from .report import build_report, fields_read
    from .progress import Part
    from . import render
    if len(files) > 1 and fmt != "table":
        raise UsageError(f"--format {fmt} reports one file at a time (got {len(files)})")
    from .report import parse_interval
    interval_ns = parse_interval(interval) if interval is not None else None
    if plot is not None:
        if len(files) > 1:
            raise UsageError(f"--plot draws one recording (got {len(files)})")
        if fmt == "folded":
            raise UsageError("--plot draws the time series, not folded stacks")
        from .plot import check_available
        check_available()
        if interval_ns is None:
            interval_ns = parse_interval("1s")
    if interval_ns is not None and fmt == "folded":
        raise UsageError("--interval gives a time series; --format folded gives stacks: "
                         "give one of them")
    from .heap import keep_freed_memory, prefault
    fields = functools.partial(fields_read, gfp="gfp" in by)
    keep_freed_memory()
    # read only for a text trace (the running kernel's formats: ~75 ms)
    hint = functools.cache(_live_kmem_formats)
    for path in files:
        bar = _ProgressLine()
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
            from .report import warnings_of
            for w in warnings_of(ds):
                _err(w)
            continue
        if plot is not None:
            from .plot import plot_series
            try:
                plot_series(rep.table(rep.main), plot, title=f"{Path(path).name}")
            except OSError as exc:
                raise OutputError(f"cannot write {plot}: {exc.strerror}") from None
            _err(f"wrote {plot}")
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
                _err(w)


@cli.command(epilog="Examples:\n\n\b\n  ftslab stream --format json -d 5 | jq .bytes_req\n"
                    "  ftslab stream --format seed -- ./a.out")
@click.option("--format", "fmt", type=click.Choice(["json", "text", "seed"]), default="text",
              show_default=True)
@_capture_options
def stream(fmt, events, duration, pids, comm, min_size, cache, filters, buffer_kb,
           system_wide, dry_run, tracefs_path, kprobes, cache_name_offset, kprobe_families,
           kprobe_symbols, command):
    """Print allocations live, one line per event (json: one object per line)."""
    from . import capture, render
    from .kallsyms import Symbolizer
    from .stream import DRAIN_S, stream as run_stream
    from .tracefs import read_text_file
    opts = _record_options(events, duration, pids, comm, min_size, cache, filters, buffer_kb,
                           system_wide, command, None, kprobes, cache_name_offset,
                           kprobe_families, kprobe_symbols)
    opts.status = False
    opts.bulk_frees = False  # it prints allocations: nothing here pairs frees
    opts.command_stdout_to_stderr = True  # stdout carries the events
    tfs = _tracefs(tracefs_path)
    if dry_run:
        capture.print_dry_run(tfs, opts, _err, click.echo,
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
        from .kprobes import is_probe_event
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
            capture.request_stop()
        except OSError as exc:  # e.g. stdout on a full disk
            failed.append(exc)
            closed.append(True)
            capture.request_stop()

    def flushing_status(text, final):
        if not closed:
            try:
                out.flush()
            except BrokenPipeError:
                closed.append(True)
                capture.request_stop()
            except OSError as exc:
                failed.append(exc)
                closed.append(True)
                capture.request_stop()

    run, n, lost, unread, undecodable = run_stream(tfs, opts, _err, flushing_status, sink)
    try:
        out.flush()
    except BrokenPipeError:
        closed.append(True)
    except OSError as exc:
        failed.append(exc)
        closed.append(True)
    if closed:
        _quiet_stdout()  # stdout is gone: keep Python from complaining about it at exit
    _err(f"streamed {n:,} events in {run.duration:.1f}s, lost {lost:,}"
         + (f", not shown {unread:,}" if unread else "")
         + (" (output closed)" if closed else ""))
    if unread and not closed:
        _err(f"WARNING: the stream fell behind: {unread:,} events recorded before the end "
             f"were still in the buffer after {DRAIN_S:g}s of draining and were not shown "
             "(use ftslab record, which keeps every event)")
    if lost:
        _err(f"WARNING: {lost:,} events were lost (stream cannot keep up at this rate: "
             "use ftslab record, which is lossless)")
    if undecodable:
        _err(f"WARNING: {undecodable:,} pages or records could not be decoded and were "
             "not shown")
    if failed:
        raise OutputError(f"cannot write the events to stdout: {failed[0].strerror}")
    incomplete = capture.cleanup_error(run.session, f"streamed {n:,} events")
    if incomplete is not None:
        raise incomplete
    if run.interrupted_by in (capture.TRACEFS_UNMOUNTED, capture.INSTANCE_REMOVED):
        from .errors import TracefsUnavailable
        raise TracefsUnavailable(f"{run.interrupted_by} while streaming: the events before "
                                 "were printed", hint="")


@cli.command(epilog="Keys: c cache, s call site, p command, q quit.\n\n"
                    "Examples:\n\n\b\n  ftslab top\n  ftslab top --by callsite -p 4242\n"
                    "  ftslab top --batch -d 5 > top.txt")
@click.option("--by", type=click.Choice(["cache", "callsite", "comm"]), default="cache",
              show_default=True, help="What the rows are (switch with c, s, p).")
@click.option("-n", "--interval", type=click.FloatRange(min=0.1), default=1.0,
              show_default=True, metavar="SECONDS", help="Refresh every SECONDS.")
@click.option("--top", "rows", type=click.IntRange(min=1), default=20, show_default=True,
              help="Rows shown.")
@click.option("--batch", is_flag=True,
              help="Plain text frames on stdout, one per refresh (the default when stdout "
                   "is not a terminal).")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Stop after SECONDS (default: until q or Ctrl-C).")
@click.option("-p", "--pid", "pids", multiple=True, type=click.IntRange(min=1),
              metavar="PID", help="Only this process (and children it forks); repeatable.")
@click.option("--comm", metavar="NAME", help="Only tasks whose comm is NAME.")
@click.option("--cache", metavar="NAME", help="Only slab events of cache NAME.")
@click.option("--filter", "filters", multiple=True, metavar="EXPR",
              help="Kernel event filter (as for record).")
@click.option("-b", "--buffer-kb", type=click.IntRange(min=4, max=1 << 22), metavar="KB",
              default=8192, show_default=True, help="Ring buffer per CPU, KiB.")
@_frees_option
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def top(by, interval, rows, batch, duration, pids, comm, cache, filters, buffer_kb,
        frees, tracefs_path):
    """Live view of the slab allocators: per cache, call site or command, the
    allocations and bytes per second and the live (not yet freed) objects and bytes
    since top started, with the lost-events counter.  Whole system unless -p/--comm."""
    from .kallsyms import Symbolizer
    from .top import top as run_top
    from .tracefs import read_text_file
    from .top import TOP_EVENTS
    opts = _record_options(TOP_EVENTS, duration, pids, comm, None, cache, filters, buffer_kb,
                           False, (), None, "off")
    opts.status = False
    opts.system_frees = frees == "all"
    tfs = _tracefs(tracefs_path)
    try:
        sym = Symbolizer(read_text_file("/proc/kallsyms"))
    except FtslabError:
        sym = None
    view = _TopView(by, rows, batch or not sys.stdout.isatty())
    try:
        run, _state, lost, dropped = run_top(tfs, opts, _err, interval, view.show, rows,
                                             sym or None)
    finally:
        view.close()
    _err(f"top ran {run.duration:.1f}s" + (f", stopped by {run.interrupted_by}"
                                           if run.interrupted_by and not view.quit else "")
         + f"; lost {lost:,} events" + (f", dropped {dropped:,} undecoded" if dropped else ""))
    if lost or dropped:
        _err(f"WARNING: {lost + dropped:,} events were not counted (lost by the kernel: "
             f"{lost:,}; read but dropped because decoding fell behind: {dropped:,}): the "
             "rates are lower bounds and a missed free keeps an object live; narrow with "
             "-p/--comm/--cache, or use ftslab record, which keeps every event")


class _TopView:
    """Draws TopFrames: a rich Live table on a terminal (keys c/s/p/q read in cbreak
    mode), or plain text frames."""

    TITLES = {"cache": "CACHE", "callsite": "CALL SITE", "comm": "COMM"}

    def __init__(self, by: str, rows: int, batch: bool):
        self.by, self.rows, self.batch = by, rows, batch
        self.quit = False
        self.live = None
        self._tty = None
        self._last = None
        if not batch:
            from rich.console import Console
            from rich.live import Live
            self.console = Console()
            self.live = Live(console=self.console, auto_refresh=False, screen=True)
            self.live.start()
            self._keys()

    def _keys(self) -> None:
        import threading
        import termios
        import tty
        try:
            fd = sys.stdin.fileno()
            self._tty = (fd, termios.tcgetattr(fd))
            tty.setcbreak(fd)
        except (OSError, ValueError, termios.error):
            self._tty = None
            return

        def read_keys():
            from . import capture
            import signal
            while True:
                try:
                    ch = os.read(fd, 1)
                except OSError:
                    return
                if not ch or ch in (b"q", b"Q"):
                    self.quit = True
                    capture.request_stop(signal.SIGINT)
                    return
                key = {b"c": "cache", b"s": "callsite", b"p": "comm"}.get(ch)
                if key:
                    self.by = key
                    if self._last is not None:
                        self.show(self._last)
        threading.Thread(target=read_keys, daemon=True).start()

    def _header(self, f) -> str:
        from .render import human_bytes
        return (f"ftslab top  {f.elapsed:6.1f}s  {f.rate:,.0f} events/s  live "
                f"{f.live_objects:,} objects {human_bytes(f.live_bytes)}  lost {f.lost:,}"
                + (f"  dropped {f.dropped:,}" if f.dropped else ""))

    def show(self, f) -> None:
        from .render import human_bytes
        self._last = f
        rows = f.rows.get(self.by, [])[:self.rows]
        title = self.TITLES[self.by]
        if self.batch:
            out = [self._header(f), f"{title:<40} {'ALLOCS/S':>10} {'BYTES/S':>12} "
                   f"{'LIVE':>10} {'LIVE BYTES':>12}"]
            for r in rows:
                # a merged cache's names are kept whole (cache|alias|...): cut, it
                # would name only some of what the row counts
                label = str(r[self.by]) if self.by == "cache" else str(r[self.by])[:40]
                out.append(f"{label:<40} {r['allocs_per_s']:>10,.0f} "
                           f"{human_bytes(r['bytes_per_s']):>12} {r['live']:>10,} "
                           f"{human_bytes(r['live_bytes']):>12}")
            try:
                sys.stdout.write("\n".join(out) + "\n\n")
                sys.stdout.flush()
            except BrokenPipeError:
                from . import capture
                capture.request_stop()
            return
        from rich.table import Table
        t = Table(title=self._header(f), caption="c cache  s call site  p command  q quit"
                  + ("  (events lost or dropped: counts are lower bounds)"
                     if f.lost or f.dropped else ""),
                  expand=True)
        t.add_column(title, overflow="fold")
        for name in ("ALLOCS/S", "BYTES/S", "LIVE", "LIVE BYTES"):
            t.add_column(name, justify="right")
        for r in rows:
            t.add_row(str(r[self.by]), f"{r['allocs_per_s']:,.0f}",
                      human_bytes(r["bytes_per_s"]), f"{r['live']:,}",
                      human_bytes(r["live_bytes"]))
        self.live.update(t, refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
        if self._tty is not None:
            import termios
            try:
                termios.tcsetattr(self._tty[0], termios.TCSADRAIN, self._tty[1])
            except (OSError, termios.error):
                pass


def _gfp_namer(tfs):
    """gfp_flags -> names, with each event's own __print_flags table (read once)."""
    from . import gfp
    from .formats import parse_format
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


@cli.command()
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
    from .doctor import diagnose, render_text
    d = diagnose(tracefs_path, kprobes, cache_name_offset)
    if fmt == "json":
        click.echo(json.dumps(d, indent=1, sort_keys=True))
    else:
        for line in render_text(d):
            click.echo(line)
    if not d["ok"]:
        from .errors import PermissionDenied, TracefsUnavailable, Unsupported
        why = "recording cannot work here: " + "; ".join(d["problems"])
        cls = (PermissionDenied if not d["root"] or "lockdown" in why else
               TracefsUnavailable if d["tracefs"] is None else Unsupported)
        raise cls(why, hint="see the PROBLEM lines" if fmt == "text" else None)


@cli.command()
@click.option("--dry-run", is_flag=True, default=True,
              help="Print the writes (the default and only mode: `record` makes them).")
@click.option("--cache-name-offset", type=click.IntRange(min=0), metavar="N")
@click.option("--kprobe-family", "kprobe_families", multiple=True, metavar="NAME")
@click.option("--kprobe-symbol", "kprobe_symbols", multiple=True, metavar="SYM")
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def probes(dry_run, cache_name_offset, kprobe_families, kprobe_symbols, tracefs_path):
    """Print the kprobe definitions a recording would write to kprobe_events, with the
    symbols chosen, the struct kmem_cache offsets and where each came from."""
    from .capture import Session, describe_probe_plan
    from .kprobes import plan_probes
    from .tracefs import read_probe_context
    tfs = _tracefs(tracefs_path)
    session = Session(tfs, _err)
    if not tfs.has_kprobes():
        _err(f"note: this kernel has no kprobes ({tfs.root}/kprobe_events is absent): the "
             "kernel would refuse these writes; `record` falls back to tracepoints")
    plan = plan_probes(read_probe_context(tfs), session.name, name_offset=cache_name_offset,
                       families=tuple(kprobe_families) or None,
                       extra_symbols=tuple(kprobe_symbols))
    for note in plan.notes:
        _err(f"note: {note}")
    for line in describe_probe_plan(plan):
        click.echo(f"# {line}")
    for pr in plan.probes:
        click.echo(f"echo {pr.definition!r} >> {tfs.root}/kprobe_events")
    click.echo(f"# on exit, after disabling them: echo '-:{session.name}/EVENT' >> "
               f"{tfs.root}/kprobe_events for each")


@cli.command()
@click.option("--all-ftslab", is_flag=True,
              help="Also remove instances of ftslab sessions that are still running.")
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def reset(all_ftslab, tracefs_path):
    """Remove tracefs instances and kprobe events left by ftslab sessions that died
    (e.g. SIGKILL).  Only those of dead owners, unless --all-ftslab."""
    from .tracefs import Instance, pid_alive
    tfs = _tracefs(tracefs_path)
    removed = 0
    failed: list[FtslabError] = []
    owners_kept: set[int] = set()
    busy_groups: set[str] = set()
    for name, pid in tfs.ftslab_instances():
        if pid_alive(pid) and not all_ftslab:
            _err(f"keeping {name}: its owner (pid {pid}) is still running")
            owners_kept.add(pid)
            continue
        try:
            Instance(tfs, name).destroy()  # disables its events: its probes can go next
        except FtslabError as exc:
            failed.append(exc)  # the others still go
            busy_groups.add(f"ftslab_{pid}")
            _err(f"could not remove {name}: {exc}")
            continue
        removed += 1
        _err(f"removed {name}")
    probes_removed = 0
    for group, event, pid in tfs.ftslab_probes():
        if pid_alive(pid) and not all_ftslab:
            if pid not in owners_kept:
                _err(f"keeping kprobe {group}/{event}: its owner (pid {pid}) is still "
                     "running")
            continue
        if f"ftslab_{pid}" in busy_groups:
            _err(f"keeping kprobe {group}/{event}: its instance could not be removed "
                 "(still enabled there)")
            continue
        try:
            tfs.kprobe_remove(group, event)
        except FtslabError as exc:
            failed.append(exc)  # the others still go
            _err(f"could not remove kprobe {group}/{event}: {exc}")
            continue
        probes_removed += 1
        _err(f"removed kprobe {group}/{event}")
    _err(f"removed {removed} stale instance(s) and {probes_removed} stale kprobe(s)")
    _reset_spools()
    if failed:
        raise failed[0]


def _reset_spools() -> None:
    """Spools of dead sessions (registered, or in the current directory): empty ones
    (killed before any page arrived) are removed, the others named: they hold data."""
    import shutil
    from . import spool
    found = dict((p.resolve(), pid) for pid, p in spool.registry_orphans())
    try:
        for name in os.listdir("."):
            pid = spool.spool_owner(name)
            if pid is not None and Path(name).is_dir() and not _alive(pid):
                found.setdefault(Path(name).resolve(), pid)
    except OSError:
        pass
    for path, pid in sorted(found.items()):
        if spool.spool_has_pages(path):
            _err(f"kept {path}: what dead ftslab session {pid} captured (read it with: "
                 f"ftslab report {path}; write it as a recording with: ftslab recover "
                 f"{path})")
        else:
            shutil.rmtree(path, ignore_errors=True)
            spool.registry_remove(pid)
            _err(f"removed {path} (session {pid} died before capturing anything)")


def _alive(pid: int) -> bool:
    from .tracefs import pid_alive
    return pid_alive(pid)


@cli.command(epilog="Example:\n\n\b\n  ftslab recover run.dat.ftslab-spool-4242   # writes run.dat")
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
    from . import spool
    out, n = spool.recover(spool_dir, output)
    _err(f"wrote {out} ({n / 1e6:.1f} MB) from {spool_dir}; the recording is truncated "
         f"(see: ftslab report {out})")


def _standard_fds() -> None:
    """Make sure fds 0-2 are open (to /dev/null if they were closed): otherwise the next
    file ftslab opens (a tracefs file, the recording) would become "stderr"."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            got = os.open(os.devnull, os.O_RDWR)
            if got != fd:
                os.dup2(got, fd)
                os.close(got)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


#: The library's errors name a parameter in backquotes (`by`, FtslabError.params); the
#: command line names the flag that sets it (ftslab/errors.py).
FLAG_OF = {"by": "--by", "top": "--top", "interval": "--interval", "interval_ns": "--interval",
           "live": "--live", "comm": "--comm", "cache": "--cache", "kprobes": "--kprobes",
           "stacks": "--stacks", "plot": "--plot", "cache_name_offset": "--cache-name-offset",
           "buffer_kb": "-b", "system_frees=False": "--frees traced"}


def in_flag_terms(exc: FtslabError) -> str:
    """``exc``'s line with each parameter it names (`by`) given as its flag (--by)."""
    text = str(exc)
    for p in exc.params:
        text = text.replace(f"`{p}`", FLAG_OF.get(p, f"`{p}`"), 1)
    return text


def main(argv=None) -> int:
    _standard_fds()
    try:
        cli.main(args=argv, prog_name="ftslab", standalone_mode=False)
        return 0
    except click.exceptions.Abort:
        _err("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code if exc.exit_code else EXIT_USAGE
    except FtslabError as exc:
        _err(f"error: {in_flag_terms(exc)}")
        return exc.exit_code
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BaseException as exc:
        from .capture import Interrupted
        if isinstance(exc, Interrupted):  # a second signal while stopping
            _err(f"interrupted by {exc}")
            return 128 + exc.signum
        raise


if __name__ == "__main__":
    sys.exit(main())
