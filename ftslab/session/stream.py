"""Live events: decode pages as the kernel hands them over and emit one record each.

Reads each CPU's trace_pipe_raw page by page (read(), not splice: the page must be
decoded here anyway) and passes ``Event`` objects to a sink in per-page batches.  Cross-
CPU order is by page, not strictly by timestamp (as with trace_pipe_raw readers
generally).  Setup, signals and cleanup are run.run_session's.
"""
from __future__ import annotations

import os
import time
from typing import Callable, NamedTuple

from ftslab.trace import columns
from ftslab.trace import pages
from ftslab.dataset import Event
from ftslab.kernel.procfs import read_comm
from ftslab.kernel.tracefs import Tracefs
from ftslab.session.options import SessionOptions
from ftslab.session.run import run_session, RunResult
from ftslab.session.signals import stop_requested
from ftslab.trace.loader import parse_cmdlines
from ftslab.session.livepages import live_formats
from ftslab.session.livepages import read_raw_page


__all__ = ["stream", "StreamResult", "SinkClosed", "PUMP_SLICE_S", "DRAIN_S"]


PUMP_SLICE_S = 0.2
"""Longest one pump() call decodes before returning: the session loop checks -d, signals
and the command between calls, and decoding is slow where the CPU is (TCG guests)."""


DRAIN_S = 2.0
"""After -d or a stop signal: time left to print what is still in the buffer.  A stream
that fell behind would otherwise keep printing for as long as the backlog lasts (minutes
for a full 8 MiB buffer under emulation); what is left is counted and said, never
silently dropped.  When the COMMAND (or every -p process) ended instead, the backlog is
that command's events, which the user asked for: it is printed whole."""


class SinkClosed(Exception):
    """The consumer went away (closed pipe): end the session cleanly."""


class _PageDecoder:
    def __init__(self, session, sink: Callable[[Event], None], duration: float | None = None):
        tracefs = session.tracefs
        self.hp, self.he, self.page_size, self.fmts = live_formats(session)
        self.inst = session.instance
        self.cpus = session.cpus
        self.fds: dict[int, int] = {}
        try:
            for c in self.cpus:
                self.fds[c] = self.inst.raw_open(c)
        except BaseException:
            self.close()  # an open trace_pipe_raw keeps the instance busy
            raise
        self.sink = sink
        self.tracefs = tracefs
        self.comms: dict[int, str] = {0: "<idle>"}
        self.decoders: dict = {}  # event id -> compiled decoder, kept across pages
        self.lost = 0
        self.events = 0
        self.undecodable = 0  # pages and records that made no sense: counted, not shown
        self._comms_at = time.monotonic()
        self.draining = False
        self.drain_until: float | None = None
        # made just before tracing starts: -d has passed once this much time has
        self._made = time.monotonic()
        self._duration = duration

    def _comm(self, pid: int) -> str:
        c = self.comms.get(pid)
        if c is None:
            try:
                c = read_comm(pid) or "<...>"
            except Exception:
                try:
                    self.comms.update(parse_cmdlines(self.tracefs.read("saved_cmdlines")))
                except Exception:
                    pass
                c = self.comms.get(pid, "<...>")
            self.comms[pid] = c
        return c

    def pump(self, cpu: int, max_pages: int = 64) -> int:
        now = time.monotonic()
        if now - self._comms_at > 1.0:
            # a task's comm changes at exec: don't keep a name for long
            self.comms.clear()
            self.comms[0] = "<idle>"
            self._comms_at = now
        moved = 0
        until = now + PUMP_SLICE_S
        if self.drain_until is not None:
            until = min(until, self.drain_until)
        for _ in range(max_pages):
            if self.stopping() or time.monotonic() >= until:
                break
            page = read_raw_page(self.fds[cpu], self.page_size)
            if page is None:
                break
            moved += len(page)
            walk = pages.walk_pages(page.ljust(self.page_size, b"\0"), cpu, self.hp, self.he,
                                      self.page_size)
            self.lost += walk.missed + walk.missed_unknown
            for ev in columns.iter_events(page, walk, self.fmts, self._comm, self.decoders):
                self.events += 1
                self.sink(ev)
            self.undecodable += walk.bad_pages + walk.short_records
        return moved

    def stopping(self) -> bool:
        # a second stop request while draining the last pages ends the drain too
        return len(stop_requested) > (1 if self.draining else 0)

    def flush(self, cpu: int) -> None:
        """After tracing stopped: print what is left (within one DRAIN_S for all CPUs
        when the end was -d or a signal)."""
        self.draining = True
        now = time.monotonic()
        if self.drain_until is None and (stop_requested or (
                self._duration is not None and now - self._made >= self._duration)):
            self.drain_until = now + DRAIN_S
        while (self.drain_until is None or time.monotonic() < self.drain_until) and \
                self.pump(cpu):
            pass

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class StreamResult(NamedTuple):
    run: RunResult
    events: int
    """Events decoded and passed to the sink."""
    lost: int
    """Events the kernel lost (page flags or per-CPU stats, the larger)."""
    unread: int
    """Events still in the buffer when the drain time ran out (the stream fell behind)."""
    undecodable: int = 0
    """Pages and records that could not be decoded (counted, never shown as events)."""


def stream(tracefs: Tracefs, opts: SessionOptions, warn, status, sink: Callable[[Event], None]
           ) -> StreamResult:
    """Run a live session, passing each decoded event to ``sink``."""
    decoders: list[_PageDecoder] = []

    def make_reader(session):
        decoders.append(_PageDecoder(session, sink, opts.duration))
        return decoders[0]

    run = run_session(tracefs, opts, warn, status, make_reader, {})
    if not decoders:
        return StreamResult(run, 0, 0, 0)
    d = decoders[0]
    lost = max(d.lost, sum(s.lost for s in run.stats))
    # per_cpu stats are read after the drain: `entries` is what it did not reach
    unread = sum(s.entries for s in run.stats)
    return StreamResult(run, d.events, lost, unread, d.undecodable)
