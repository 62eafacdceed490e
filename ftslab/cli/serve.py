"""``ftslab serve``: who allocates and who holds, as Prometheus/OpenMetrics metrics on an
HTTP endpoint and/or in node_exporter's textfile directory.

Options, and the Snapshot -> metric families translation (prometheus-client's custom
collector; the client writes the text formats and escapes the label values).  The
session and the numbers are session/serve.py's and analysis/counters.py's.
"""
from __future__ import annotations

import os
import platform
import threading

import click

from ftslab.cli.options import frees_option, session_options, tracefs
from ftslab.cli.ui import err
from ftslab.errors import FtslabError, UsageError

__all__ = ["serve", "SnapshotCollector", "METRICS"]


LABEL = {"cache": "cache", "callsite": "call_site", "comm": "comm"}
"""The Prometheus label name of each key."""

TEXTFILE_NAME = "ftslab.prom"

METRICS = {
    # name (without _total): (type, unit, help)
    "ftslab_{k}_allocations": ("counter", "", "Slab allocations per {what} since the "
                               "exporter started (rest summed in <other>)"),
    "ftslab_{k}_allocated_bytes": ("counter", "bytes", "Bytes the slab allocators handed "
                                   "out per {what} (bytes_alloc) since the exporter started"),
    "ftslab_{k}_live_objects": ("gauge", "", "Objects allocated since the exporter started "
                                "and not freed yet, per {what}"),
    "ftslab_{k}_live_bytes": ("gauge", "bytes", "Bytes of those live objects, per {what}"),
    "ftslab_{k}_live_growth_intervals": ("gauge", "", "Leak signal: consecutive leak windows "
                                         "in which the {what}'s live bytes grew"),
}
WHAT = {"cache": "cache", "callsite": "call site", "comm": "command (comm)"}


class SnapshotCollector:
    """prometheus-client collector of the latest Snapshot (swapped whole by the
    session's thread; a scrape reads one consistent snapshot)."""

    def __init__(self, info: dict[str, str], interval: float, leak_window: float):
        self.snap = None
        self.info = info
        self.interval = interval
        self.leak_window = leak_window

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            InfoMetricFamily)
        s = self.snap
        build = InfoMetricFamily("ftslab_build", "ftslab's version and the kernel it runs on")
        build.add_metric([], self.info)
        yield build
        g = GaugeMetricFamily("ftslab_interval_seconds", "How often the figures are updated",
                              unit="seconds")
        g.add_metric([], self.interval)
        yield g
        g = GaugeMetricFamily("ftslab_leak_window_seconds", "The leak signal's window",
                              unit="seconds")
        g.add_metric([], self.leak_window)
        yield g
        if s is None:
            return
        src = InfoMetricFamily("ftslab_source", "Where each figure comes from: events "
                               "(tracepoints decoded in user space), hist (counted by the "
                               "kernel's hist triggers), /proc/slabinfo, off",
                               labels=["figure"])
        for figure, where in sorted(s.sources.items()):
            src.add_metric([figure], {"source": where})
        yield src
        g = GaugeMetricFamily("ftslab_last_update_timestamp_seconds",
                              "When these figures were computed", unit="seconds")
        g.add_metric([], s.time)
        yield g
        for k, rows in s.allocs.items():
            yield from _by_key("ftslab_{k}_allocations", "ftslab_{k}_allocated_bytes", k, rows)
        g = GaugeMetricFamily("ftslab_other_labels", "Distinct label values summed in <other> "
                              "in the last interval (raise --top to see them)", labels=["key"])
        for k, n in s.other_labels.items():
            g.add_metric([LABEL[k]], n)
        yield g
        if s.live is not None:
            for k, rows in s.live.items():
                yield from _by_key("ftslab_{k}_live_objects", "ftslab_{k}_live_bytes", k, rows)
                gg = _keyed("ftslab_{k}_live_growth_intervals", k)
                for label, n in s.growth.get(k, []):
                    gg.add_metric([label], n)
                yield gg
            for name, value, help_ in (
                    ("ftslab_live_objects", s.live_objects,
                     "All objects allocated since the exporter started and not freed yet"),
                    ("ftslab_live_bytes", s.live_bytes, "Their bytes")):
                g = GaugeMetricFamily(name, help_, unit="bytes" if name.endswith("bytes")
                                      else "")
                g.add_metric([], value)
                yield g
            for name, value, help_ in (
                    ("ftslab_live_evicted_objects", s.live_evicted,
                     "Live objects forgotten, oldest first, past --live-max: live figures "
                     "are lower bounds once this is above 0"),
                    ("ftslab_live_unseen_frees", s.live_unseen_frees,
                     "Objects whose address was allocated again with no free seen (freed in "
                     "bulk, kmem_cache_free_bulk/kfree_bulk emit no event, or a lost free): "
                     "no longer counted live")):
                c = CounterMetricFamily(name, help_)
                c.add_metric([], value)
                yield c
        c = CounterMetricFamily("ftslab_page_allocations", "Page allocations by order since "
                                "the exporter started", labels=["order"])
        cb = CounterMetricFamily("ftslab_page_allocated_bytes", "Bytes of those page "
                                 "allocations (page size << order)", labels=["order"],
                                 unit="bytes")
        for order, n, b in s.pages:
            c.add_metric([str(order)], n)
            cb.add_metric([str(order)], b)
        yield c
        yield cb
        for name, value, help_ in (
                ("ftslab_events", s.events, "Events counted (decoded, or counted by the "
                 "kernel's hist triggers)"),
                ("ftslab_lost_events", s.lost, "Events the kernel dropped before ftslab read "
                 "them (ring buffer full): counters are lower bounds, a lost free keeps an "
                 "object live"),
                ("ftslab_dropped_events", s.dropped, "Events ftslab read but did not count "
                 "(decoding fell behind), or the kernel's hist table refused (full)")):
            c = CounterMetricFamily(name, help_)
            c.add_metric([], value)
            yield c
        if s.merged:
            mi = InfoMetricFamily("ftslab_cache_merged", "A cache SLUB merged with others: "
                                  "the events and /proc/slabinfo name it by one name only; "
                                  "names lists all of them (/sys/kernel/slab links)",
                                  labels=["cache"])
            for cache, names in s.merged:
                mi.add_metric([cache], {"names": names})
            yield mi
        if s.slabinfo:
            ga = GaugeMetricFamily("ftslab_slabinfo_active_objects", "The kernel's own count "
                                   "of active objects per cache (/proc/slabinfo active_objs; "
                                   "SLUB counts objects free in per-CPU slabs as active)",
                                   labels=["cache"])
            gt = GaugeMetricFamily("ftslab_slabinfo_objects", "Objects per cache, active or "
                                   "not (/proc/slabinfo num_objs)", labels=["cache"])
            for name, active, total, _size in s.slabinfo:
                ga.add_metric([name], active)
                gt.add_metric([name], total)
            yield ga
            yield gt


def _keyed(template: str, key: str):
    """The family METRICS describes by ``template``, for one key (cache, call site,
    comm), empty."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    kind, unit, help_ = METRICS[template]
    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    return cls(template.format(k=key), help_.format(what=WHAT[key]), labels=[LABEL[key]],
               unit=unit)


def _by_key(count_template: str, bytes_template: str, key: str, rows):
    """Two families (a count, its bytes) from (label, count, bytes) rows."""
    fn, fb = _keyed(count_template, key), _keyed(bytes_template, key)
    for label, n, b in rows:
        fn.add_metric([label], n)
        fb.add_metric([label], b)
    return fn, fb


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT ([v6]:PORT too); raises UsageError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:9464")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


@click.command(epilog="Examples:\n\n\b\n  ftslab serve\n"
                      "  ftslab serve --listen 0.0.0.0:9464 --top 50\n"
                      "  ftslab serve --textfile /var/lib/prometheus/node-exporter\n"
                      "  ftslab serve --no-live --exclude '^kmalloc-'")
@click.option("--listen", metavar="HOST:PORT",
              help="Serve /metrics here (default 127.0.0.1:9464, loopback only; port 0 = "
                   "any free port).  Not started with --textfile alone.")
@click.option("--textfile", "textfile", metavar="DIR",
              type=click.Path(file_okay=False, dir_okay=True),
              help=f"Also write DIR/{TEXTFILE_NAME} each interval (atomically: a new file "
                   "renamed over the old), for node_exporter's textfile collector; "
                   "removed when serve stops.")
@click.option("-n", "--interval", type=click.FloatRange(min=0.2), default=5.0,
              show_default=True, metavar="SECONDS", help="Update the figures every SECONDS.")
@click.option("--top", "limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Series per label (cache, call site, comm); the rest are summed in "
                   "<other>.")
@click.option("--include", multiple=True, metavar="REGEX",
              help="Only label values matching REGEX get a series of their own "
                   "(repeatable; the rest count in <other>).")
@click.option("--exclude", multiple=True, metavar="REGEX",
              help="Label values matching REGEX get no series of their own (repeatable).")
@click.option("--live/--no-live", default=True, show_default=True,
              help="Live objects and the leak signal (needs the free events decoded in "
                   "user space: the dearer path, see README).")
@click.option("--live-max", type=click.IntRange(min=1000), default=1_000_000,
              show_default=True, metavar="OBJECTS",
              help="Most live objects remembered (32 bytes each); past it the oldest are "
                   "forgotten and counted (ftslab_live_evicted_objects_total).")
@click.option("--leak-window", type=click.FloatRange(min=0.2), default=60.0,
              show_default=True, metavar="SECONDS",
              help="The leak signal counts the consecutive windows of SECONDS in which a "
                   "key's live bytes grew.")
@click.option("--source", type=click.Choice(["auto", "hist", "events"]), default="auto",
              show_default=True,
              help="Where allocation counts come from: hist = the kernel's hist triggers "
                   "(rates only, needs --no-live), events = tracepoints decoded here; auto "
                   "= hist where the kernel has it and --no-live, events otherwise.")
@click.option("-d", "--duration", type=click.FloatRange(min=0, min_open=True),
              metavar="SECONDS", help="Stop after SECONDS (default: until SIGTERM/Ctrl-C).")
@click.option("-p", "--pid", "pids", multiple=True, type=click.IntRange(min=1),
              metavar="PID", help="Only this process (and children it forks); repeatable. "
                                  "serve ends when they have all exited.")
@click.option("--comm", metavar="NAME", help="Only tasks whose comm is NAME.")
@click.option("-b", "--buffer-kb", type=click.IntRange(min=4, max=1 << 22), metavar="KB",
              default=8192, show_default=True, help="Ring buffer per CPU, KiB.")
@frees_option
@click.option("--tracefs", "tracefs_path", metavar="DIR", hidden=True, envvar="FTSLAB_TRACEFS")
def serve(listen, textfile, interval, limit, include, exclude, live, live_max, leak_window,
          source, duration, pids, comm, buffer_kb, frees, tracefs_path):
    """Export who allocates and who holds kernel memory as Prometheus/OpenMetrics
    metrics: per cache, call site and command, allocations and bytes (counters), live
    objects and bytes since the exporter started (gauges), the leak signal, page
    allocations by order, lost events, and /proc/slabinfo's own counts beside them.
    Runs until SIGTERM or Ctrl-C and leaves nothing behind in the kernel (exit 0)."""
    import re
    from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
    from ftslab.analysis.counters import LabelFilter, ServeState
    from ftslab.kernel.tracefs import read_text_file
    from ftslab.session.serve import choose_source, serve as run_serve, SERVE_EVENTS
    from ftslab.trace.kallsyms import Symbolizer
    from ftslab.version import __version__
    for flag, pats in (("--include", include), ("--exclude", exclude)):
        for p in pats:
            try:
                re.compile(p)
            except re.error as exc:
                raise UsageError(f"{flag} {p!r}: not a regular expression ({exc})") from None
    if listen is None and textfile is None:
        listen = "127.0.0.1:9464"
    addr = parse_listen(listen) if listen is not None else None
    if textfile is not None:
        if not os.path.isdir(textfile) or not os.access(textfile, os.W_OK | os.X_OK):
            raise UsageError(f"--textfile {textfile}: not a writable directory",
                             hint="create it, or give node_exporter's "
                                  "--collector.textfile.directory")
    opts = session_options(SERVE_EVENTS, duration, pids, comm, None, None, (), buffer_kb,
                           False, (), None, "off")
    opts.status = False
    opts.system_frees = frees == "all"
    tfs = tracefs(tracefs_path)
    src, why = choose_source(tfs, source, live)
    state = ServeState(limit, LabelFilter(include, exclude), live, live_max, leak_window)
    try:
        sym = Symbolizer(read_text_file("/proc/kallsyms"))
    except FtslabError:
        sym = None
    collector = SnapshotCollector({"version": __version__, "kernel": platform.release()},
                                  interval, leak_window)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    path = os.path.join(textfile, TEXTFILE_NAME) if textfile else None
    lock = threading.Lock()

    def publish(snap) -> None:
        collector.snap = snap
        if path is not None:
            with lock:
                try:
                    write_to_textfile(path, registry)
                except OSError as exc:
                    err(f"warning: could not write {path}: {exc.strerror}")

    httpd = None
    if addr is not None:
        try:
            httpd, _thread = start_http_server(addr[1], addr=addr[0], registry=registry)
        except OSError as exc:
            raise UsageError(f"--listen {listen}: cannot listen there ({exc.strerror})",
                             hint="give a free port, or 0 for any") from None
        host, port = httpd.server_address[:2]
        where = f"listening on http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"
    else:
        where = "no HTTP server"
    err(f"ftslab serve: {where}" + (f", writing {path}" if path else "")
        + f"; allocations from {src} ({why}); live objects "
        + ("on" if live else "off") + f"; every {interval:g}s")
    try:
        res = run_serve(tfs, opts, err, interval, state, publish, src, sym or None)
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if path is not None:
            # figures nobody updates must not be scraped as current: the file goes with
            # the exporter (after a SIGKILL it stays: ftslab_last_update_timestamp_seconds
            # then tells how old it is)
            with lock:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    err(f"warning: could not remove {path}: {exc.strerror}")
    run = res.run
    err(f"serve ran {run.duration:.1f}s" + (f", stopped by {run.interrupted_by}"
                                            if run.interrupted_by else "")
        + f"; {state.events:,} events; lost {res.lost:,}"
        + (f", dropped {res.dropped:,}" if res.dropped else ""))
