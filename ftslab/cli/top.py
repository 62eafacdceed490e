"""``ftslab top``: the live table of who allocates and who holds, redrawn each interval.

Options and drawing only: the session and its numbers are session/top.py's (the kallsyms
it symbolizes with is read here).
"""
from __future__ import annotations

import os
import sys

import click

from ftslab.cli.options import frees_option, session_options, tracefs
from ftslab.cli.ui import err
from ftslab.errors import FtslabError


@click.command(epilog="Keys: c cache, s call site, p command, q quit.\n\n"
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
@frees_option
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def top(by, interval, rows, batch, duration, pids, comm, cache, filters, buffer_kb,
        frees, tracefs_path):
    """Live view of the slab allocators: per cache, call site or command, the
    allocations and bytes per second and the live (not yet freed) objects and bytes
    since top started, with the lost-events counter.  Whole system unless -p/--comm."""
    from ftslab.trace.kallsyms import Symbolizer
    from ftslab.session.top import top as run_top
    from ftslab.kernel.tracefs import read_text_file
    from ftslab.session.top import TOP_EVENTS
    opts = session_options(TOP_EVENTS, duration, pids, comm, None, cache, filters, buffer_kb,
                           False, (), None, "off")
    opts.status = False
    opts.system_frees = frees == "all"
    tfs = tracefs(tracefs_path)
    try:
        sym = Symbolizer(read_text_file("/proc/kallsyms"))
    except FtslabError:
        sym = None
    view = _TopView(by, rows, batch or not sys.stdout.isatty())
    try:
        run, _state, lost, dropped = run_top(tfs, opts, err, interval, view.show, rows,
                                             sym or None)
    finally:
        view.close()
    err(f"top ran {run.duration:.1f}s" + (f", stopped by {run.interrupted_by}"
                                           if run.interrupted_by and not view.quit else "")
         + f"; lost {lost:,} events" + (f", dropped {dropped:,} undecoded" if dropped else ""))
    if lost or dropped:
        err(f"WARNING: {lost + dropped:,} events were not counted (lost by the kernel: "
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
            from ftslab.session import signals
            import signal
            while True:
                try:
                    ch = os.read(fd, 1)
                except OSError:
                    return
                if not ch or ch in (b"q", b"Q"):
                    self.quit = True
                    signals.request_stop(signal.SIGINT)
                    return
                key = {b"c": "cache", b"s": "callsite", b"p": "comm"}.get(ch)
                if key:
                    self.by = key
                    if self._last is not None:
                        self.show(self._last)
        threading.Thread(target=read_keys, daemon=True).start()

    def _header(self, f) -> str:
        from ftslab.cli.render import human_bytes
        return (f"ftslab top  {f.elapsed:6.1f}s  {f.rate:,.0f} events/s  live "
                f"{f.live_objects:,} objects {human_bytes(f.live_bytes)}  lost {f.lost:,}"
                + (f"  dropped {f.dropped:,}" if f.dropped else ""))

    def show(self, f) -> None:
        from ftslab.cli.render import human_bytes
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
                from ftslab.session import signals
                signals.request_stop()
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
