"""The exporter's session: who allocates and who holds, kept up to date for ``ftslab
serve`` one interval at a time.

Two paths feed analysis/counters.ServeState:

* **events**: the kmem tracepoints into the session's private instance, their raw pages
  decoded once per interval (session/top.LiveReader, as ``top`` does).  Needed for the
  live objects (a free is paired with its allocation by pointer) and on kernels without
  hist triggers.
* **hist**: the kernel counts allocations itself in hist triggers on the same events
  (session/histsource.HistSource), read once per interval: nothing per event reaches
  user space.  Rates only: live objects need the events.

Each interval ends with a Snapshot handed to ``publish`` (the command line's metrics);
/proc/slabinfo is read then too, the kernel's own counts beside ours.  Setup, signals
and the undoing of everything (triggers, instance) are run.run_session's.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from ftslab.analysis.counters import ServeState, Snapshot
from ftslab.errors import FtslabError, UsageError
from ftslab.kernel.hist import hist_support, serve_specs
from ftslab.kernel.procfs import read_slab_aliases
from ftslab.kernel.tracefs import Tracefs, read_text_file
from ftslab.session.options import SessionOptions
from ftslab.session.run import run_session, RunResult
from ftslab.session.top import run_live, TopFrame
from ftslab.trace.slabinfo import slabinfo_rows

__all__ = ["SERVE_EVENTS", "choose_source", "serve", "ServeResult"]


SERVE_EVENTS = ("kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:kfree", "kmem:kmem_cache_free",
                "kmem:mm_page_alloc")
"""What the events path records: the slab allocators' tracepoints, their frees, and the
page allocator (by order)."""

RATE_EVENTS = ("kmem:kmalloc", "kmem:kmem_cache_alloc")
"""Without live objects, the frees are not needed: the events path records these and
the page allocations only."""


TICK_BYTES = 8 << 20
"""The events path decodes what it read once per interval, or as soon as this many page
bytes wait: one decoding then holds the columns of at most ~8 MB of pages (a few
hundred thousand events), so memory does not follow the event rate."""


ALIASES_SECONDS = 60.0
"""How often the merged caches are read again from /sys/kernel/slab."""


@dataclasses.dataclass
class ServeResult:
    run: RunResult
    source: str
    lost: int
    dropped: int


def choose_source(tracefs: Tracefs, requested: str, live: bool) -> tuple[str, str]:
    """(``events`` or ``hist``, why).  ``auto``: hist triggers where the kernel has
    them and live objects are off (they need the events); the events otherwise."""
    have, why = hist_support(tracefs)
    if requested == "hist":
        if not have:
            raise UsageError(f"`source` hist: {why}", hint="count from the events instead",
                             params=("source",))
        if live:
            raise UsageError("`source` hist counts allocations in the kernel: live objects "
                             "need the events themselves", hint="turn `live` off, or count "
                             "from the events", params=("source", "live"))
        return "hist", why
    if requested == "events":
        return "events", "asked for (--source events)"
    if have and not live:
        return "hist", why
    if have:
        return "events", "live objects need the events (--no-live: hist triggers)"
    return "events", why


def _slabinfo() -> list[tuple[str, int, int, int]]:
    try:
        rows, _bad = slabinfo_rows(read_text_file("/proc/slabinfo"))
    except FtslabError:
        return []
    return [(r.name, r.active_objs, r.num_objs, r.objsize) for r in rows]


class _HistReader:
    """run.run_session's reader for the hist path: no pages; once per interval the
    triggers' tables are read and their increments counted."""

    def __init__(self, session, state: ServeState, interval: float, end: Callable):
        from ftslab.session.histsource import HistSource
        self.state = state
        self.interval = interval
        self.end = end
        self.cpus = session.cpus
        self.bytes: dict = {}
        specs = serve_specs(session.tracefs)
        if not specs:
            raise UsageError("`source` hist: none of the kmem events has the fields serve "
                             "counts by on this kernel", hint="count from the events",
                             params=("source",))
        self.source = HistSource(session.instance, specs)
        self.source.install(session.undo)
        self.last = time.monotonic()
        self.dropped = 0
        self.lost = 0

    def _tick(self) -> None:
        now = time.monotonic()
        seconds, self.last = now - self.last, now
        delta = self.source.read()
        for key, inc in delta.by.items():
            if key == "order":
                self.state.add_pages(inc)
            else:
                self.state.add_allocs(key, inc, seconds)
        self.dropped += delta.dropped
        self.end(delta.hits, self.lost, self.dropped)

    def pump(self, cpu: int) -> int:
        if cpu == self.cpus[-1] and time.monotonic() - self.last >= self.interval:
            self._tick()
        return 0

    def flush(self, cpu: int) -> None:
        pass

    def close(self) -> None:
        # what was counted since the last interval, read before the triggers go
        try:
            self._tick()
        except FtslabError:
            pass


def serve(tracefs: Tracefs, opts: SessionOptions, warn, interval: float, state: ServeState,
          publish: Callable[[Snapshot], None], source: str, symbolize=None) -> ServeResult:
    """Run the exporter until a stop signal (or ``opts.duration``), publishing a
    Snapshot after every interval.  ``source``: ``events`` or ``hist``
    (choose_source)."""
    state.sources["slabinfo"] = "/proc/slabinfo"
    state.sources["allocations"] = source
    state.sources["live"] = "events" if state.table is not None else "off"

    aliases_read = [None]

    def end(events: int, lost: int, dropped: int) -> None:
        now = time.monotonic()
        if aliases_read[0] is None or now - aliases_read[0] >= ALIASES_SECONDS:
            aliases_read[0] = now  # caches come and go (modules): read again now and then
            state.aliases = read_slab_aliases()
        state.set_slabinfo(_slabinfo())
        state.end_interval(time.monotonic(), events, lost, dropped)
        publish(state.snapshot(time.time()))

    if source == "hist":
        readers: list[_HistReader] = []
        hopts = dataclasses.replace(opts, events=(), kprobes="off", buffer_kb=4,
                                    system_frees=False, stacks=False)

        def make_reader(session):
            readers.append(_HistReader(session, state, interval, end))
            return readers[0]

        run = run_session(tracefs, hopts, warn, lambda text, final: None, make_reader, {})
        r = readers[0] if readers else None
        return ServeResult(run, source, 0, r.dropped if r else 0)

    published = [time.monotonic()]

    def show(frame: TopFrame) -> None:
        # decoded every interval or TICK_BYTES; published every interval
        now = time.monotonic()
        if now - published[0] >= interval * 0.95:
            published[0] = now
            end(0, frame.lost, frame.dropped)

    events = SERVE_EVENTS if state.table is not None else RATE_EVENTS + ("kmem:mm_page_alloc",)
    eopts = dataclasses.replace(opts, events=events, kprobes="off")
    run, r = run_live(tracefs, eopts, warn, interval, show, None, symbolize, state=state,
                      tick_bytes=TICK_BYTES)
    if r is None:
        return ServeResult(run, source, 0, 0)
    return ServeResult(run, source, max(r.lost, sum(s.lost for s in run.stats)), r.dropped)
