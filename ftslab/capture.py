"""Recording sessions: set up a private instance, copy its ring buffer out, undo it all.

The session plans every tracefs write first (``plan``: pure, printable by --dry-run),
then applies them one by one, pushing each undo right after its write succeeds.  The
capture itself moves whole ring-buffer pages with ``os.splice`` from
per_cpu/cpuN/trace_pipe_raw into per-CPU spool files (no decoding, no copy through
Python: this is what keeps it lossless at ~1 M events/s on 2 CPUs), then the spool
files become a trace.dat (tracedat.py).

Signals: SIGINT/SIGTERM/SIGHUP/SIGPIPE end a recording cleanly (what was captured is
kept); during setup they unwind what was done.  Kernel I/O goes through tracefs.py only.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import tempfile
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__, _testhook
from .errors import (CleanupIncomplete, FtslabError, OutputError, PermissionDenied,
                     ProbeVerifyFailed, Stopped, TracefsUnavailable, Unsupported, UsageError)
from .filters import _COMMON as _COMMON_FILTER_FIELDS
from .filters import FilterExpr, cache_filter, comm_filter, parse_filter
from .tracefs import (INSTANCE_PREFIX, CpuStats, EnabledElsewhere, Instance, Tracefs,
                      online_cpus, pid_alive, read_slab_aliases, read_text_file)
from .undo import STOP_SIGNALS, UndoStack, defer_signal, signals_deferred

__all__ = ["DEFAULT_EVENTS", "RecordOptions", "Step", "Session", "Interrupted",
           "parse_event_spec", "stop_signals_raise", "RecordResult", "record",
           "run_session", "RunResult", "print_dry_run", "request_stop",
           "SHARED_EVENT_COST", "enabled_elsewhere_message"]

DEFAULT_EVENTS = ("kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:mm_page_alloc",
                  "kmem:kfree", "kmem:kmem_cache_free", "kmem:mm_page_free")
_PIPE_BYTES = 1 << 20

FREES_BUFFER = "frees"
"""Name of the second buffer of a task-limited recording: the free events of the whole
system (the instance ``<session>_frees``, and the trace.dat buffer of that name)."""

#: ``interrupted_by`` of a session whose tracefs went away under it: the recording is
#: kept, and the command fails afterwards with exit 4 saying so.
TRACEFS_UNMOUNTED = "tracefs unmounted"
INSTANCE_REMOVED = "instance removed"


#: What another probe on the recorded tracepoints costs, from bench/bench_shared_events.py:
#: the workload's speed under ``ftslab record -a`` with the kmem events also enabled in
#: a second instance (tracing off there), as a fraction of its speed without (ratio of
#: the medians of 10 alternating pairs; 0.91 in a run of 8); the kernel and the date.
SHARED_EVENT_COST = (0.89, "6.18.44-fc-v1272", "2026-12-06")


def enabled_elsewhere_message(found: list[EnabledElsewhere], root: str | os.PathLike
                              ) -> str | None:
    """One line saying which events are enabled in which other buffers, what that costs
    and how to turn them off (None when ``found`` is empty).  Pure."""
    if not found:
        return None
    by_place: dict[str | None, list[EnabledElsewhere]] = {}
    for f in found:
        by_place.setdefault(f.instance, []).append(f)
    order = sorted(by_place, key=lambda i: (i is not None, i or ""))
    groups: dict[tuple[str, ...], list[str]] = {}
    for inst in order:
        fs = by_place[inst]
        if inst is None:
            place = "the top-level buffer"
            if fs[0].tracing_on is False:
                place += (" (tracing off there: left by another tracer, e.g. "
                          "`trace-cmd record -k`)")
        elif fs[0].owner_pid is not None:
            place = f"instance {inst} (ftslab session {fs[0].owner_pid})"
        else:
            place = f"instance {inst}"
        groups.setdefault(tuple(dict.fromkeys(f.event for f in fs)), []).append(place)
    parts = []
    for events, places in groups.items():
        where = places[0] if len(places) == 1 else (", ".join(places[:-1]) + " and "
                                                     + places[-1])
        parts.append((", ".join(events), len(events), where))
    if len(parts) == 1:
        names, n, where = parts[0]
        text = f"{names} {'is' if n == 1 else 'are'} also enabled in {where}"
    else:
        text = ("events recorded here are also enabled elsewhere: "
                + "; ".join(f"{names} in {where}" for names, _n, where in parts))
    ratio, kernel, date = SHARED_EVENT_COST
    text += (f": with a second probe on a tracepoint every event costs more (measured: a "
             f"syscall workload under `ftslab record -a` ran at ~{ratio:.2f}x of its speed "
             f"without it; Linux {kernel}, {date})")
    offs = []
    for inst in order:
        fs = by_place[inst]
        if fs[0].owner_pid is not None:
            continue  # another ftslab session's: it ends by itself (or `ftslab reset`)
        base = f"{root}/" + (f"instances/{inst}/" if inst is not None else "")
        for system in dict.fromkeys(f.event.split(":", 1)[0] for f in fs):
            offs.append(f"`echo 0 > {base}events/{system}/enable`")
    if offs:
        text += "; if not in use: " + "; ".join(offs)
    return text


class Interrupted(BaseException):
    """A stop signal arrived (BaseException: no `except Exception` may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_stop_requested: list[int] = []


def _raise_on_signal(signum, frame):
    if defer_signal(signum):  # inside signals_deferred: raised again at its end
        return
    _stop_requested.append(signum)
    raise Interrupted(signum)


def _flag_on_signal(signum, frame):
    if defer_signal(signum):
        return
    _stop_requested.append(signum)


def request_stop(reason: int = signal.SIGPIPE) -> None:
    """Ask a running capture loop to end (e.g. its consumer closed the pipe)."""
    _stop_requested.append(reason)


def stop_signals_raise(raise_: bool) -> None:
    """Stop signals either raise Interrupted (setup) or only set a flag (capture loop)."""
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_on_signal if raise_ else _flag_on_signal)


def parse_event_spec(spec: str) -> tuple[str, str]:
    sysname, sep, name = spec.partition(":")
    if not sep:
        sysname, name = "kmem", spec
    if not (sysname.replace("_", "").isalnum() and name.replace("_", "").isalnum()):
        raise UsageError(f"invalid event {spec!r}: expected SYSTEM:EVENT, e.g. kmem:kmalloc")
    return sysname, name


@dataclass
class RecordOptions:
    events: tuple[str, ...] = DEFAULT_EVENTS
    duration: float | None = None
    output: Path = Path("ftslab.dat")
    pids: tuple[int, ...] = ()
    comm: str | None = None
    buffer_kb: int = 8192
    command: tuple[str, ...] = ()
    system_wide: bool = False
    filters: tuple[str, ...] = ()
    min_size: int | None = None
    cache: str | None = None
    status: bool = True
    command_stdout_to_stderr: bool = False
    """stream: the command's output must not mix with the data on stdout."""
    kprobes: str = "auto"
    """``on``: kprobe events on the kmalloc family too (error if the kernel has none);
    ``auto``: where the kernel has kprobe_events; ``off``: tracepoints only; ``only``:
    kprobe events and no tracepoints."""
    cache_name_offset: int | None = None
    """offsetof(struct kmem_cache, name) given by the user (default: from BTF)."""
    kprobe_families: tuple[str, ...] | None = None
    """Family members to probe (kprobes.FAMILY names); None: the default set."""
    kprobe_symbols: tuple[str, ...] = ()
    """Extra functions to probe as they are."""
    bulk_frees: bool = True
    """Where kprobes are used with the tracepoints: probe kmem_cache_free_bulk too, so
    that objects freed in bulk (no kmem free event) are seen freed."""
    stacks: bool = False
    """Record the kernel stack of every allocation event (the ``stacktrace`` trigger)."""
    system_frees: bool = False
    """Record the free events in a second instance, for the whole system and in every
    context, so that an object the recorded tasks allocated and something else freed
    (an RCU callback, an interrupt, a workqueue, another task) is seen freed.  False:
    frees in the same instance as the allocations, as its task limits and filters let
    them through (LIVE of a task-limited recording is then an upper bound)."""
    settle: float = 0.0
    """Seconds the free events keep being recorded after the allocations stop (the
    command exited, -d ran out, a stop signal): deferred frees (RCU, workqueues, I/O
    completion) of what was allocated are then seen."""


@dataclass
class Step:
    """One planned tracefs change."""

    what: str
    path: str
    """Relative to the tracefs root."""
    value: str | None
    """What is written (None: mkdir)."""
    undo_value: str | None = None
    """What undoes it (None with value None: rmdir)."""
    hint: str | None = None
    """What to tell the user if the kernel refuses it."""
    kind: str = ""
    """``""``: a write into the instance (or mkdir when value is None); ``kprobe``: a
    definition appended to the global kprobe_events; ``verify``: check that the cache
    names the probes read are this kernel's (no write of its own)."""
    params: tuple[str, ...] = ()
    """The parameters the hint names (errors.FtslabError.params)."""


@dataclass
class RecordResult:
    output: Path
    events_estimate: int
    lost: int
    duration: float
    bytes_written: int
    stats: list[CpuStats]
    interrupted_by: str | None
    child_status: int | None
    frees_events_estimate: int | None = None
    """Events of the frees instance (None: the session had none)."""


class Session:
    """One ftslab session: an instance named for this process and everything done in it."""

    def __init__(self, tracefs: Tracefs, warn: Callable[[str], None], name: str | None = None):
        self.tracefs = tracefs
        self.warn = warn
        self.name = name or f"{INSTANCE_PREFIX}{os.getpid()}"
        self.undo = UndoStack(warn)
        self.instance: Instance | None = None
        self.free_instance: Instance | None = None
        """The instance recording the free events of the whole system (system_frees),
        None when the session has one instance."""
        self.free_events: list[tuple[str, str]] = []
        """The free events recorded in ``free_instance``."""
        self.alloc_enables: list[str] = []
        """Instance-relative enable files of the allocation events (settle turns them
        off when the session has one instance)."""
        self.frees_scope = "none"
        """Which frees the recording holds: ``system`` (every context), ``filtered``
        (in the allocations' instance, as its task limits, filters and
        set_event_notrace_pid let them through: LIVE is an upper bound), or ``none``
        (no free event recorded)."""
        self.cpus = online_cpus()
        self.formats: dict[tuple[str, str], str] = {}
        """(system, event) -> format text of every event the session records."""
        self.probe_plan = None
        """kprobes.ProbePlan when kprobe events are part of the session."""
        self.stack_events: list[str] = []
        """``system:event`` of the events whose kernel stacks are recorded (--stacks)."""
        self._probes_planned = False

    def plan_kprobes(self, opts: RecordOptions):
        """Decide the kprobe events (once per session): None when there are none."""
        if self._probes_planned:
            return self.probe_plan
        self._probes_planned = True
        mode = "on" if opts.kprobes == "only" else opts.kprobes
        if mode == "off":
            return None
        if mode not in ("on", "auto"):
            raise UsageError(f"`kprobes` {mode!r}: expected auto, on, only or off",
                             params=("kprobes",))
        from .kprobes import plan_probes
        from .tracefs import read_lockdown, read_probe_context
        lockdown = read_lockdown()
        if lockdown and "[confidentiality]" in lockdown:
            msg = ("kernel lockdown is 'confidentiality': the kernel refuses kprobe events "
                   "(and tracefs)")
            if mode == "on":
                raise PermissionDenied(msg, hint="boot with lockdown=integrity or none")
            self.warn(msg + "; recording tracepoints only")
            return None
        if not self.tracefs.has_kprobes():
            msg = (f"this kernel has no kprobes ({self.tracefs.root}/kprobe_events is absent: "
                   "CONFIG_KPROBES/CONFIG_KPROBE_EVENTS unset)")
            if mode == "on":
                raise Unsupported(msg, hint="use `kprobes` auto or off to record the kmem "
                                            "tracepoints only", params=("kprobes",))
            self.warn(msg + "; recording the kmem tracepoints only")
            return None
        from .kprobes import BULK_FREE_SYMBOL, FAMILY
        ctx = read_probe_context(self.tracefs, [c for m in FAMILY for c in m.candidates]
                                 + list(opts.kprobe_symbols) + [BULK_FREE_SYMBOL])
        # bulk frees pair with the tracepoints' allocations (kprobes have no pointer)
        plan = plan_probes(ctx, self.name, name_offset=opts.cache_name_offset,
                           families=opts.kprobe_families, extra_symbols=opts.kprobe_symbols,
                           bulk_frees=opts.bulk_frees and opts.kprobes != "only")
        for note in plan.notes:
            self.warn(note)
        asked = set(opts.kprobe_symbols) | set(opts.kprobe_families or ())
        refused = [(f, why) for f, why in plan.skipped if f in asked]
        if refused:
            raise UsageError("cannot probe " + "; ".join(f"{f}: {why}" for f, why in refused),
                             hint="`ftslab doctor` lists what this kernel can probe")
        if not plan.probes:
            why = "; ".join(f"{f}: {w}" for f, w in plan.skipped)
            if mode == "on":
                raise Unsupported(f"no kmalloc-family function could be probed ({why})")
            self.warn(f"no kmalloc-family function could be probed ({why}); "
                      "recording tracepoints only")
            return None
        self.probe_plan = plan
        return plan

    # -- planning (pure apart from reading format files) ------------------------
    def resolve_events(self, specs) -> list[tuple[str, str]]:
        out = []
        for spec in specs:
            sysname, name = parse_event_spec(spec)
            text = self.tracefs.event_format(sysname, name)
            self.formats[(sysname, name)] = text
            out.append((sysname, name))
        return out

    def plan(self, opts: RecordOptions, child_pid: int | None = None) -> list[Step]:
        from .formats import parse_format
        events = self.resolve_events(opts.events if opts.kprobes != "only" else ())
        inst = f"instances/{self.name}"
        probe_plan = self.plan_kprobes(opts)
        probes = probe_plan.all_probes if probe_plan else []
        # The probes are defined BEFORE the instance exists: undone newest first, the
        # instance's removal (which disables everything enabled in it) then always comes
        # before the probes' removal, whatever enable undo a signal may have cut short.
        steps = [Step(f"kprobe on {pr.symbol} ({pr.family})", "kprobe_events",
                      pr.definition, pr.removal, kind="kprobe") for pr in probes]
        steps += [Step("create private instance", inst, None, None),
                  Step("tracing off while setting up", f"{inst}/tracing_on", "0"),
                  Step("per-CPU buffer size (KiB)", f"{inst}/buffer_size_kb",
                       str(opts.buffer_kb),
                       hint="the kernel could not allocate that much: ask for less with "
                            "`buffer_kb`", params=("buffer_kb",))]
        if any("name" in pr.fields for pr in probes):
            off = probe_plan.offsets
            steps.append(Step(f"check the cache names read at offset {off.name} "
                              f"({off.source}) are this kernel's", "", None, kind="verify"))
        pids = list(opts.pids)
        if child_pid is not None:
            pids.append(child_pid)
        if pids:
            expanded = []
            for pid in pids:
                expanded.extend(_threads_of(pid) or [pid])
            steps.append(Step("follow children of traced tasks", f"{inst}/options/event-fork",
                              "1", "0"))
            steps.append(Step("trace only these tasks", f"{inst}/set_event_pid",
                              " ".join(str(p) for p in sorted(set(expanded))), ""))
        elif self.tracefs.exists("set_event_notrace_pid"):
            # whole system: but not ftslab itself (its reads and writes allocate too)
            steps.append(Step("do not trace ftslab itself", f"{inst}/set_event_notrace_pid",
                              str(os.getpid()), ""))
        user_filters: list[FilterExpr] = [parse_filter(f) for f in opts.filters]
        if opts.comm:
            user_filters.append(comm_filter(opts.comm))
        parsed = {ev: parse_format(self.formats[ev], ev[0]) for ev in events}
        if opts.cache is not None and events:
            # only events that carry a cache name can say which cache they are about
            keep = [ev for ev in events if parsed[ev].field("name") is not None]
            dropped = [f"{a}:{b}" for a, b in events if (a, b) not in keep]
            if not keep:
                raise UsageError(f"`cache`: none of the events has a cache name field on "
                                 f"this kernel ({', '.join(dropped)})", params=("cache",))
            if dropped:
                self.warn(f"--cache {opts.cache}: not recording {', '.join(dropped)} "
                          "(no cache name in those events)")
            events = keep
            for ev in list(self.formats):
                if ev not in events:
                    del self.formats[ev]
        aliases = read_slab_aliases() if opts.cache is not None else {}  # merged caches
        steps += self._free_steps(opts, events, parsed, pids, user_filters, aliases)
        unfiltered: dict[str, list[str]] = {}
        no_size: list[str] = []
        page_size = os.sysconf("SC_PAGE_SIZE")
        for sysname, name in events:
            if (sysname, name) in self.free_events:
                continue  # recorded in the frees instance (_free_steps)
            fmt = parsed[(sysname, name)]
            parts = []
            for fx in user_filters:
                if fx.applies_to(fmt):
                    parts.append(fx.text)
                else:
                    # a filter naming fields this event lacks cannot apply to it
                    unfiltered.setdefault(fx.text, []).append(f"{sysname}:{name}")
            names = {f.name for f in fmt.fields}
            if opts.min_size is not None:
                if "bytes_req" in names:
                    parts.append(f"bytes_req >= {int(opts.min_size)}")
                elif "order" in names and "pfn" in names:
                    # a page allocation of order k is page_size << k bytes
                    order = 0
                    while (page_size << order) < opts.min_size:
                        order += 1
                    if order:
                        parts.append(f"order >= {order}")
                else:
                    no_size.append(f"{sysname}:{name}")
            if opts.cache is not None and "name" in names:
                parts.append(cache_filter(opts.cache, aliases))
            if parts:
                expr = " && ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
                steps.append(Step(f"kernel-side filter for {sysname}:{name}",
                                  f"{inst}/events/{sysname}/{name}/filter", expr, "0"))
        finst = f"instances/{self.free_instance_name}"
        # bulk free probes are recorded with the other frees, in every context
        moved = [pr for pr in probes if pr.layer == "free_bulk" and self.free_events]
        for pr in probes:
            parts = [pr.filter] if pr.filter else []
            names = set(pr.fields)
            if pr in moved:
                if opts.cache is not None and "name" in names:
                    parts.append(cache_filter(opts.cache, aliases))
                if parts:
                    expr = " && ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
                    steps.append(Step(f"kernel-side filter for kprobe {pr.symbol} ({pr.event})",
                                      f"{finst}/events/{pr.group}/{pr.event}/filter", expr,
                                      "0"))
                continue
            for fx in user_filters:
                if fx.fields <= (names | _COMMON_FILTER_FIELDS):
                    parts.append(fx.text)
                else:
                    unfiltered.setdefault(fx.text, []).append(f"{pr.group}:{pr.event}")
            if opts.min_size is not None and not names & {"size", "objsize", "order"}:
                no_size.append(f"{pr.group}:{pr.event}")
            if opts.min_size is not None:
                if "size" in names:
                    parts.append(f"size >= {int(opts.min_size)}")
                elif "objsize" in names:
                    parts.append(f"objsize >= {int(opts.min_size)}")
                elif "order" in names:
                    order = 0
                    while (page_size << order) < opts.min_size:
                        order += 1
                    if order:
                        parts.append(f"order >= {order}")
            if opts.cache is not None:
                if "name" not in names:
                    continue  # not recorded: see the enables below
                parts.append(cache_filter(opts.cache, aliases))
            if parts:
                expr = " && ".join(f"({p})" for p in parts) if len(parts) > 1 else parts[0]
                steps.append(Step(f"kernel-side filter for kprobe {pr.symbol}",
                                  f"{inst}/events/{pr.group}/{pr.event}/filter", expr, "0"))
        n_recorded = len(events) + sum(1 for pr in probes
                                       if opts.cache is None or "name" in pr.fields)
        n_recorded -= len(self.free_events) + len(moved)
        for text, evs in unfiltered.items():
            if len(evs) >= n_recorded:
                raise UsageError(f"filter {text!r} names a field none of the recorded events "
                                 f"has ({', '.join(evs)})",
                                 hint="see the fields in events/<system>/<event>/format "
                                      "(kprobe events: size, name, objsize, gfp, node, "
                                      "order, caller)")
            self.warn(f"filter {text!r} does not apply to {', '.join(evs)} (no such field "
                      "there): those events are recorded unfiltered by it")
        if no_size:
            self.warn(f"--min-size: {', '.join(no_size)} carry no size; recorded unfiltered")
        if opts.stacks:
            steps += self._stack_steps(inst, events,
                                       [p for p in probes if p.layer != "free_bulk"], steps, opts)
        from .report import alloc_source
        self.alloc_enables = []
        for pr in probes:
            if opts.cache is not None and "name" not in pr.fields:
                continue
            if pr in moved:
                continue  # enabled below, with the frees
            steps.append(Step(f"enable kprobe {pr.group}:{pr.event}",
                              f"{inst}/events/{pr.group}/{pr.event}/enable", "1", "0"))
            if pr.layer != "free_bulk":
                self.alloc_enables.append(f"events/{pr.group}/{pr.event}/enable")
        for sysname, name in events:
            if (sysname, name) in self.free_events:
                continue
            steps.append(Step(f"enable {sysname}:{name}",
                              f"{inst}/events/{sysname}/{name}/enable", "1", "0"))
            if alloc_source(sysname, name) is not None:
                self.alloc_enables.append(f"events/{sysname}/{name}/enable")
        for sysname, name in self.free_events:
            steps.append(Step(f"enable {sysname}:{name} (every context)",
                              f"{finst}/events/{sysname}/{name}/enable", "1", "0"))
        for pr in moved:
            if opts.cache is not None and "name" not in pr.fields:
                continue
            steps.append(Step(f"enable kprobe {pr.group}:{pr.event} (every context)",
                              f"{finst}/events/{pr.group}/{pr.event}/enable", "1", "0"))
        return steps

    @property
    def free_instance_name(self) -> str:
        return f"{self.name}_{FREES_BUFFER}"

    def _free_steps(self, opts: RecordOptions, events, parsed, pids, user_filters,
                    aliases) -> list[Step]:
        """Where the free events go.  A recording limited to tasks (``pids``, ``comm``,
        a filter that applies to a free event) would see only the frees those tasks
        make: an object its tasks allocated and an RCU callback, an interrupt, a
        workqueue or another task freed would look held for ever.  A whole-system
        recording misses some too: ``set_event_notrace_pid`` (ftslab not tracing
        itself) drops every event on a CPU while ftslab is its current task, the frees
        of RCU callbacks and I/O completions that interrupt ftslab included.  With
        ``system_frees`` the free events are recorded in a second instance, for the
        whole system and every context, ftslab's own frees included (they free
        nothing recorded: counted as unmatched); the allocations stay limited."""
        from .report import free_source
        frees = [ev for ev in events if free_source(*ev) is not None]
        limited = bool(pids) or bool(opts.comm) or any(
            fx.applies_to(parsed[ev]) for fx in user_filters for ev in frees)
        self.free_events = list(frees) if opts.system_frees else []
        # in the allocations' instance, frees are limited as they are, and lose those
        # that interrupt ftslab (set_event_notrace_pid) when it is whole-system
        self.frees_scope = ("none" if not frees else
                            "system" if self.free_events else "filtered")
        if limited and not self.free_events:
            self.warn("--frees traced: only the frees of the recorded tasks are recorded; "
                      "LIVE will be an upper bound")
        if not self.free_events:
            return []
        finst = f"instances/{self.free_instance_name}"
        out = [Step("create a private instance for the frees of the whole system", finst,
                    None, None),
               Step("tracing off while setting up", f"{finst}/tracing_on", "0"),
               Step("per-CPU buffer size (KiB)", f"{finst}/buffer_size_kb",
                    str(opts.buffer_kb),
                    hint="the kernel could not allocate that much: ask for less with "
                         "`buffer_kb`, or record the frees in one instance "
                         "(`system_frees=False`)", params=("buffer_kb", "system_frees=False"))]
        for sysname, name in self.free_events:
            if opts.cache is not None and parsed[(sysname, name)].field("name") is not None:
                out.append(Step(f"kernel-side filter for {sysname}:{name}",
                                f"{finst}/events/{sysname}/{name}/filter",
                                cache_filter(opts.cache, aliases), "0"))
        return out

    def _stack_steps(self, inst: str, events, probes, steps: list[Step],
                     opts: RecordOptions) -> list[Step]:
        """A ``stacktrace`` trigger on each allocation event.  It is given a condition
        (the event's own filter, or one always true) on purpose: a trigger without one
        runs before the event is filtered (by set_event_pid too) and writes its stack
        first, for events that are then dropped; one with a condition runs on the
        event's record, so the stack follows the event it belongs to
        (include/linux/trace_events.h, trace_trigger_soft_disabled)."""
        from .report import alloc_source
        if not self.tracefs.exists("events/ftrace/kernel_stack/format"):
            raise UsageError("`stacks`: this kernel cannot record stacks "
                             "(no events/ftrace/kernel_stack: CONFIG_STACKTRACE is off)",
                             params=("stacks",))
        filters = {st.path: st.value for st in steps if st.path.endswith("/filter")}
        targets = [(f"{sysname}:{name}", f"{inst}/events/{sysname}/{name}")
                   for sysname, name in events if alloc_source(sysname, name) is not None]
        targets += [(f"{pr.group}:{pr.event}", f"{inst}/events/{pr.group}/{pr.event}")
                    for pr in probes if opts.cache is None or "name" in pr.fields]
        out = []
        for label, base in targets:
            cond = filters.get(f"{base}/filter") or "common_pid >= 0"
            out.append(Step(f"kernel stack of each {label} event", f"{base}/trigger",
                            f"stacktrace if {cond}", "!stacktrace",
                            hint="the kernel refused the stacktrace trigger: record "
                                 "without `stacks`", params=("stacks",)))
        if not out:
            raise UsageError("`stacks`: none of the recorded events is an allocation",
                             params=("stacks",))
        self.stack_events = [label for label, _ in targets]
        return out

    def warn_enabled_elsewhere(self) -> list[EnabledElsewhere]:
        """Say (one line) which of the session's tracepoints another buffer has enabled
        too: every event then costs more (SHARED_EVENT_COST).  Only reads: the other
        tracer's state is its own."""
        events = [ev for ev in self.formats if self.probe_plan is None or
                  ev[0] not in {p.group for p in self.probe_plan.probes}]
        found = self.tracefs.events_enabled_elsewhere(events, own=self.name)
        msg = enabled_elsewhere_message(found, self.tracefs.root)
        if msg:
            self.warn(msg)
        return found

    # -- applying ----------------------------------------------------------------
    def apply(self, steps: list[Step]) -> None:
        # Test hook (robustness tests kill ftslab at a known point of setup): with
        # FTSLAB_TEST_PAUSE_AT=k, sleep before step k.  Unset in normal use.
        pause_at = os.environ.get("FTSLAB_TEST_PAUSE_AT")
        for i, step in enumerate(steps):
            if pause_at is not None and pause_at.isdigit() and i == int(pause_at):
                time.sleep(30)
            _testhook.pause(f"setup:{i}")
            if step.kind == "verify":
                self._verify_cache_names()
                continue
            with signals_deferred():
                if step.kind == "kprobe":
                    self._define_probe(step)
                    continue
                _, name, *rest = step.path.split("/", 2)
                if step.value is None:
                    inst = self.tracefs.instance_create(name)
                    if name == self.name:
                        self.instance = inst
                    else:
                        self.free_instance = inst
                    self.undo.push(f"rmdir {inst.path}", inst.destroy)
                    continue
                inst = self.instance if name == self.name else self.free_instance
                rel = rest[0]
                try:
                    inst.write(rel, step.value, hint=step.hint)
                except FtslabError as exc:
                    if step.hint and exc.hint == step.hint:
                        exc.params = step.params  # what the hint names
                    raise
                if step.undo_value is not None:
                    undo_value = step.undo_value
                    self.undo.push(f"write {undo_value!r} to {step.path}",
                                   lambda r=rel, v=undo_value, i=inst: i.exists() and i.write(r, v))

    def close(self) -> list[str]:
        return self.undo.unwind()

    def _define_probe(self, step: Step) -> None:
        pr = next(p for p in self.probe_plan.all_probes if p.definition == step.value)
        self.tracefs.kprobe_add(pr.definition)
        tfs = self.tracefs
        # undone after the enables above it on the stack: a probe is removed only once
        # disabled (removing an enabled probe fails with EBUSY)
        self.undo.push(f"remove kprobe {pr.group}/{pr.event}",
                       lambda g=pr.group, e=pr.event: tfs.kprobe_remove(g, e))
        self.formats[(pr.group, pr.event)] = tfs.event_format(pr.group, pr.event)

    def _verify_cache_names(self) -> None:
        """Enable the probes that read a cache name, make the kernel allocate, and check
        every name captured is one of this kernel's caches: a wrong offset reads garbage
        (or "(fault)"), and nothing is recorded then."""
        from .kprobes import cache_names_in_trace, check_cache_names
        from .tracefs import provoke_allocations, read_slab_names
        plan = self.probe_plan
        probes = [p for p in plan.probes if "name" in p.fields]
        inst = self.instance
        enabled = []
        try:
            for p in probes:
                with signals_deferred():  # no signal between the enable and its record
                    inst.event_enable(p.group, p.event, True)
                    enabled.append(p)
            inst.trace_clear()
            inst.tracing_on(True)
            provoke_allocations()
            inst.tracing_on(False)
            text = inst.read("trace")
        finally:
            with signals_deferred():  # every disable runs, a second signal or not
                if inst.exists():
                    inst.tracing_on(False)
                    for p in reversed(enabled):
                        inst.event_enable(p.group, p.event, False)
                    inst.trace_clear()
        names = cache_names_in_trace(text, {p.event for p in probes})
        known = read_slab_names()
        checked, bad = check_cache_names(names, known)
        if bad:
            known = read_slab_names()  # a cache created meanwhile
            checked, bad = check_cache_names(names, known)
        off = plan.offsets
        where = f"offset {off.name} of struct kmem_cache ({off.source})"
        if checked == 0:
            raise ProbeVerifyFailed(
                f"could not check the cache names read at {where}: no probe on "
                f"{', '.join(p.symbol for p in probes)} fired while ftslab allocated",
                hint="run `ftslab doctor`; `kprobes` off records tracepoints only",
                params=("kprobes",))
        if bad:
            shown = ", ".join(repr(b) for b in bad[:4])
            raise ProbeVerifyFailed(
                f"the cache names read at {where} are not this kernel's caches "
                f"({len(bad)} of {checked}, e.g. {shown}); nothing was recorded",
                hint="give offsetof(struct kmem_cache, name) with `cache_name_offset` N "
                     "(pahole -C kmem_cache), or record with `kprobes` off",
                params=("cache_name_offset", "kprobes"))
        self.warn(f"kprobes: {len(plan.probes)} functions probed in group {self.name}; "
                  f"cache names read at {where}: {checked} checked, all real")


def _threads_of(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def cleanup_error(session: Session, done: str) -> CleanupIncomplete | None:
    """The error to end with when some undo step failed (each was warned about)."""
    failures = session.undo.failures
    if not failures:
        return None
    return CleanupIncomplete(
        f"{done}, but {len(failures)} cleanup step(s) failed, the first: {failures[0]}",
        hint="the warnings above say what is left; `ftslab reset` removes it once "
             "nothing holds it")


def report_stale(tracefs: Tracefs, warn: Callable[[str], None]) -> None:
    for name, pid in tracefs.stale_instances():
        warn(f"stale tracefs instance {name} left by dead ftslab process {pid} "
             "(remove it with: ftslab reset)")
    groups: dict[str, int] = {}
    for group, _event, pid in tracefs.stale_probes():
        groups[group] = groups.get(group, 0) + 1
    for group, n in sorted(groups.items()):
        warn(f"stale kprobe group {group} ({n} probe{'s' if n != 1 else ''}) left by dead "
             f"ftslab process {group.split('_')[1]} (remove it with: ftslab reset)")


def splice_pipe() -> tuple[int, int]:
    """A non-blocking pipe of _PIPE_BYTES to splice trace_pipe_raw pages through."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
    except OSError:
        pass  # a smaller pipe only means more splice calls
    return r, w


def close_quietly(fds) -> None:
    """Close every fd; one that is already gone is not an error on the way out."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Spooler:
    """Moves whole pages from each CPU's trace_pipe_raw into a spool file, by splice."""

    def __init__(self, instance: Instance, cpus: list[int], spool_dir: Path, page_size: int):
        self.page_size = page_size
        self.cpus = cpus
        self.fds: dict[int, int] = {}
        self.pipes: dict[int, tuple[int, int]] = {}
        self.files: dict[int, int] = {}
        self.paths: dict[int, Path] = {}
        self.bytes: dict[int, int] = {c: 0 for c in cpus}
        self.can_splice = hasattr(os, "splice")
        self.tick: Callable[[], None] | None = None
        """Called every 2 s or so while pages move (record: refresh the spool's
        saved_cmdlines, so that a recording recovered after a SIGKILL has comms)."""
        self._tick_at = 0.0
        try:
            for c in cpus:
                self.fds[c] = instance.raw_open(c)
                self.pipes[c] = splice_pipe()
                p = spool_dir / f"cpu{c}.raw"
                self.paths[c] = p
                self.files[c] = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                        0o600)
        except BaseException:
            self.close()  # an open trace_pipe_raw keeps the instance busy (rmdir: EBUSY)
            raise

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    def pump(self, cpu: int) -> int:
        """Move what whole pages are ready; returns bytes moved."""
        if self.tick is not None and cpu == self.cpus[0]:
            now = time.monotonic()
            if now - self._tick_at >= 2.0:
                self._tick_at = now
                self.tick()
        moved = 0
        src = self.fds[cpu]
        r, w = self.pipes[cpu]
        out = self.files[cpu]
        while True:
            if self.can_splice:
                try:
                    n = os.splice(src, w, _PIPE_BYTES, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    if exc.errno in (errno.EINVAL, errno.ENOSYS):
                        self.can_splice = False  # fall back to read()
                        continue
                    raise
                if n <= 0:
                    break
                left = n
                while left:
                    try:
                        k = os.splice(r, out, left, flags=os.SPLICE_F_MOVE)
                    except OSError as exc:
                        raise OutputError(f"cannot write spool file {self.paths[cpu]}: "
                                          f"{exc.strerror}") from None
                    left -= k
                moved += n
            else:
                try:
                    b = os.read(src, self.page_size)
                except BlockingIOError:
                    break
                if not b:
                    break
                self._write_page(cpu, b)
                moved += len(b)
        self.bytes[cpu] += moved
        return moved

    def _write_page(self, cpu: int, b: bytes) -> None:
        if len(b) < self.page_size:
            b = b + bytes(self.page_size - len(b))
        try:
            self._write_all(self.files[cpu], b)
        except OSError as exc:
            raise OutputError(f"cannot write spool file {self.paths[cpu]}: {exc.strerror}") from None

    def flush(self, cpu: int) -> int:
        """After tracing stopped: take the last, partly filled pages with read()."""
        moved = self.pump(cpu)
        src = self.fds[cpu]
        while True:
            try:
                b = os.read(src, self.page_size)
            except BlockingIOError:
                break
            except OSError:
                break
            if not b:
                break
            self._write_page(cpu, b)
            moved += self.page_size
            self.bytes[cpu] += self.page_size
        return moved

    def close(self) -> None:
        close_quietly(list(self.fds.values()) + [x for p in self.pipes.values() for x in p]
                      + list(self.files.values()))
        self.fds.clear()
        self.pipes.clear()
        self.files.clear()


class _Spoolers:
    """The spoolers of a session with a frees instance, pumped as one."""

    def __init__(self, parts: list[_Spooler]):
        self.parts = parts

    @property
    def bytes(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for p in self.parts:
            for c, n in p.bytes.items():
                out[c] = out.get(c, 0) + n
        return out

    def pump(self, cpu: int) -> int:
        return sum(p.pump(cpu) for p in self.parts)

    def flush(self, cpu: int) -> int:
        return sum(p.flush(cpu) for p in self.parts)

    def close(self) -> None:
        for p in self.parts:
            p.close()


def _fmt_rate(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def print_dry_run(tracefs: Tracefs, opts: RecordOptions, warn, out: Callable[[str], None],
                  reader: str) -> None:
    """Print every tracefs write a session would make, without making any."""
    report_stale(tracefs, warn)
    session = Session(tracefs, warn)
    steps = session.plan(opts, child_pid=0 if opts.command and not opts.system_wide else None)
    plan = session.probe_plan
    if plan is not None:
        for line in describe_probe_plan(plan):
            out(f"# {line}")
    for st in steps:
        if st.path.endswith("set_event_pid") and opts.command:
            st.value = st.value.replace("0", "$COMMAND_PID")
        if st.kind == "kprobe":
            out(f"echo {st.value!r} >> {tracefs.root / st.path}    # {st.what}")
        elif st.kind == "verify":
            out(f"# {st.what}: enable those probes alone, allocate, read `trace`, "
                "compare with /proc/slabinfo, disable, clear")
        elif st.value is None:
            out(f"mkdir {tracefs.root / st.path}    # {st.what}")
        else:
            out(f"echo {st.value!r} > {tracefs.root / st.path}    # {st.what}")
    names = ([session.free_instance_name] if session.free_events else []) + [session.name]
    for name in names:
        out(f"echo '' > {tracefs.root}/instances/{name}/trace    # empty the buffer")
    for name in names:
        out(f"echo '1' > {tracefs.root}/instances/{name}/tracing_on    # start")
    if opts.settle > 0:
        stop = (f"echo '0' > {tracefs.root}/instances/{session.name}/tracing_on"
                if session.free_events else
                "echo '0' > each allocation event's enable")
        out(f"# at the end: {stop}, then {opts.settle:g}s more of frees (settle)")
    out(f"# then: {reader}; on exit every write above is undone in reverse order "
        "and the instance removed")


def describe_probe_plan(plan) -> list[str]:
    """Human lines: each probe's family, symbol and where its argument layout came from,
    the struct kmem_cache offsets and their source, and what was not probed and why."""
    out = []
    off = plan.offsets
    if off is not None:
        src = {"btf": "from this kernel's BTF (/sys/kernel/btf/vmlinux)",
               "user": "given with --cache-name-offset",
               "default": "DEFAULT, no BTF: verified before recording"}[off.source]
        extra = (f", object_size at +{off.object_size}" if off.object_size is not None else
                 ", object_size: unknown (not fetched)")
        out.append(f"struct kmem_cache: name at +{off.name}{extra} -- {src}")
    out.append("fetch args: " + ("$argN (listed in this kernel's tracefs README)"
                                 if plan.style == "$arg" else "x86-64 registers"))
    for pr in plan.probes:
        where = {"btf": "prototype from BTF", "table": "prototype from ftslab's table "
                 "(no BTF)", "none": "no prototype: no arguments"}[pr.prototype_source]
        roles = ", ".join(f"{r}=arg{n}" for r, n in sorted(pr.roles.items(),
                                                           key=lambda x: x[1]))
        out.append(f"{pr.family}: {pr.symbol} ({where}{': ' + roles if roles else ''})")
    if plan.bulk_frees:
        first = plan.bulk_frees[0]
        n = sum(len(p.fields) - 1 for p in plan.bulk_frees)
        out.append(f"free_bulk: {first.symbol} ({len(plan.bulk_frees)} probes, the first "
                   f"{n} pointers of each call; frees without a kmem free event)")
    for fam, why in plan.skipped:
        out.append(f"{fam}: not probed: {why}")
    return out


@dataclass
class RunResult:
    session: Session
    stats: list[CpuStats]
    interrupted_by: str | None
    duration: float
    child_status: int | None
    started: bool


def run_session(tracefs: Tracefs, opts: RecordOptions, warn: Callable[[str], None],
                status: Callable[[str, bool], None], make_reader, meta: dict) -> RunResult:
    """Set up the instance, run the command if any, pump ``make_reader(instance, cpus)``
    until the end condition, then stop tracing, flush the reader and undo everything."""
    report_stale(tracefs, warn)
    session = Session(tracefs, warn)
    child: _GatedChild | None = None
    reader = None
    stats: list[CpuStats] = []
    interrupted_by = None
    started = False
    t_start = time.monotonic()
    if signal.getsignal(signal.SIGTERM) is not _flag_on_signal:
        _stop_requested.clear()  # (record() notes signals from its start: keep those)
    saved_handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    stop_signals_raise(True)
    try:
        try:
            if _stop_requested:  # a stop signal came before setup began
                raise Interrupted(_stop_requested[0])
            if opts.command:
                with signals_deferred():  # no signal between the fork and `child =`
                    child = _GatedChild(list(opts.command), opts.command_stdout_to_stderr)
                meta["command"] = list(opts.command)
                meta["child_pid"] = child.pid
            steps = session.plan(opts, child_pid=(child.pid if child and not opts.system_wide
                                                  else None))
            meta["tracefs_writes"] = [f"{s.path} <- {s.value}" for s in steps]
            meta["frees_scope"] = session.frees_scope
            if session.free_events:
                meta["frees_buffer"] = FREES_BUFFER
                meta["frees_events"] = [f"{a}:{b}" for a, b in session.free_events]
            if session.stack_events:
                meta["stack_events"] = list(session.stack_events)
            session.warn_enabled_elsewhere()
            session.apply(steps)
            inst = session.instance
            with signals_deferred():  # the reader's fds must be ours to close
                reader = make_reader(session)
            if "slabinfo_start" in meta:
                # taken now, with the instance set up: its own allocations (an event file
                # per event, the ring buffer) are not the workload's
                meta["slabinfo_start"] = _read_slabinfo()
                _start_slab_counters(meta, session)
            with signals_deferred():
                # the frees first: no allocation is recorded before its free can be
                for i in (session.free_instance, inst):
                    if i is None:
                        continue
                    i.trace_clear()
                    i.tracing_on(True)
                    session.undo.push(f"tracing off in {i.path}",
                                      lambda i=i: i.exists() and i.tracing_on(False))
            t_start = time.monotonic()
            with signals_deferred():
                # tracing is on: from here a stop signal ends a recording that started
                # (kept, exit 0), also while the command is being let go
                _testhook.pause("release", lambda: bool(_stop_requested))
                if child is not None:
                    child.release()  # the command execs now, with tracing on
                started = True
            stop_signals_raise(False)
            _testhook.pause("capture", lambda: bool(_stop_requested))
            if _stop_requested:
                interrupted_by = signal.Signals(_stop_requested[0]).name
            else:
                interrupted_by = _capture_loop(reader, session, opts, child, t_start, status,
                                               meta.get("slabinfo_samples"))
            if interrupted_by in (None, "SIGINT", "SIGTERM", "SIGHUP") and opts.settle > 0:
                meta["settle_s"] = _settle(reader, session, opts.settle, status)
        except Interrupted as exc:
            stop_signals_raise(False)
            interrupted_by = signal.Signals(exc.signum).name
        finally:
            stop_signals_raise(False)
            if child is not None and not child.released:
                child.abort()  # never let it run untraced
            elif child is not None and _stop_requested and child.poll() is None:
                # SIGTERM/SIGHUP sent to ftslab end the command too (Ctrl-C reaches it
                # from the terminal by itself)
                sig = _stop_requested[0]
                if sig in (signal.SIGTERM, signal.SIGHUP):
                    try:
                        os.kill(child.pid, sig)
                    except ProcessLookupError:
                        pass
            duration = time.monotonic() - t_start
            _testhook.pause("flush", lambda: len(_stop_requested) > int(interrupted_by
                                                                          is not None))
            try:
                if session.instance is not None and session.instance.exists():
                    for i in (session.instance, session.free_instance):
                        try:
                            if i is not None and i.exists():
                                i.tracing_on(False)
                        except FtslabError as exc:
                            warn(f"could not stop tracing: {exc}")
                    if "slabinfo_end" in meta:  # before the instance is taken down
                        meta["slabinfo_end"] = _read_slabinfo()
                        _end_slab_counters(meta)
                    if reader is not None:
                        for c in session.cpus:
                            try:
                                reader.flush(c)
                            except (OSError, OutputError) as exc:
                                warn(f"could not save the last pages of CPU {c}: {exc}")
                    for c in session.cpus:
                        try:
                            stats.append(session.instance.cpu_stats(c))
                        except FtslabError:
                            pass
                    if session.free_instance is not None and session.free_instance.exists():
                        fstats = []
                        for c in session.cpus:
                            try:
                                fstats.append(session.free_instance.cpu_stats(c))
                            except FtslabError:
                                pass
                        meta["frees_cpu_stats"] = {str(x.cpu): x.text for x in fstats}
                        meta["frees_stats_lost"] = {str(x.cpu): x.lost for x in fstats}
                        meta["frees_events_estimate"] = sum(x.read + x.entries
                                                            for x in fstats)
                elif session.instance is not None:
                    warn(f"tracefs instance {session.instance.path} vanished while recording; "
                         "keeping what was captured")
            finally:
                if reader is not None:
                    reader.close()
                session.close()
        child_status = None
        if child is not None and child.released:
            if interrupted_by is None and (opts.duration is None or child.poll() is not None):
                child_status = child.wait(block=True)
            else:  # give a signalled command a moment to end; never hang on it
                for _ in range(20 if interrupted_by else 1):
                    child_status = child.poll()
                    if child_status is not None:
                        break
                    time.sleep(0.05)
                if child_status is None:
                    warn(f"the command (pid {child.pid}) is still running; the recording "
                         "ended " + (f"on {interrupted_by}" if interrupted_by else
                                     "after -d"))
        if interrupted_by and not started:
            sig = _stop_requested[0] if _stop_requested else signal.SIGINT
            raise Stopped(f"interrupted by {interrupted_by} before recording started; "
                          "nothing was recorded", exit_code=128 + int(sig))
        return RunResult(session, stats, interrupted_by, duration, child_status, started)
    finally:
        for s, handler in saved_handlers.items():
            signal.signal(s, handler)


def record(tracefs: Tracefs, opts: RecordOptions, warn: Callable[[str], None],
           status: Callable[[str, bool], None]) -> RecordResult | None:
    """Run one recording into ``opts.output``.  Returns None if nothing was started."""
    # From the first step to the last, a stop signal is only noted: run_session acts on
    # it (before tracing started: nothing recorded, exit 128+N; after: the recording
    # ends and is written), and no signal can fall between the session's end and the
    # final write, where the default handler would kill ftslab with its spool unwritten.
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _stop_requested.clear()
    stop_signals_raise(False)
    try:
        return _record(tracefs, opts, warn, status)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _record(tracefs: Tracefs, opts: RecordOptions, warn: Callable[[str], None],
            status: Callable[[str, bool], None]) -> RecordResult | None:
    from . import spool
    from .formats import parse_header_page
    out_path = Path(opts.output)
    try:
        out_dir = out_path.resolve().parent
        if not out_dir.is_dir():
            raise OutputError(f"cannot write {out_path}: directory {out_dir} does not exist")
        if out_path.exists() and out_path.is_dir():
            raise OutputError(f"cannot write {out_path}: it is a directory")
        for orphan, pid in spool.orphans_next_to(out_path):
            if spool.spool_has_pages(orphan):
                warn(f"ftslab session {pid} died while recording {out_path}: what it captured "
                     f"is in {orphan} (read it with: ftslab report {orphan}; write it as a "
                     f"recording with: ftslab recover {orphan})")
        spool_dir = spool.spool_dir_for(out_path, os.getpid())
        spool_dir.mkdir(mode=0o700)
    except OSError as exc:
        raise OutputError(f"cannot write next to {out_path}: {exc.strerror}") from None
    spool.registry_add(os.getpid(), spool_dir)
    try:
        header_page_text = tracefs.read("events/header_page")
        header_event_text = tracefs.read("events/header_event")
        hp = parse_header_page(header_page_text)
        page_size = hp.data_offset + hp.data_size
        meta: dict = {"ftslab_version": __version__, "argv": sys.argv[1:],
                      "events": list(opts.events), "buffer_kb": opts.buffer_kb,
                      "kernel": os.uname().release, "slabinfo_start": "",
                      "slabinfo_end": "", "page_size": os.sysconf("SC_PAGE_SIZE"),
                      "slab_aliases": read_slab_aliases()}
        spoolers: list[_Spooler] = []

        def make_reader(session):
            meta["trace_clock"] = session.instance.read("trace_clock").strip()
            _describe_spool(tracefs, session, spool_dir, out_path, header_page_text,
                            header_event_text, page_size, meta, warn)
            spoolers.append(_Spooler(session.instance, session.cpus, spool_dir, page_size))
            spoolers[0].tick = lambda: spool.save_cmdlines(
                spool_dir, _read_optional(tracefs, "saved_cmdlines"))
            if session.free_instance is None:
                return spoolers[0]
            try:
                fdir = spool_dir / FREES_BUFFER
                fdir.mkdir(mode=0o700)
                spoolers.append(_Spooler(session.free_instance, session.cpus, fdir,
                                         page_size))
            except BaseException:
                spoolers[0].close()
                raise
            return _Spoolers(spoolers)

        try:
            run = run_session(tracefs, opts, warn, status, make_reader, meta)
        except OutputError:
            raise  # the spooled pages are what is left of the recording: keep them
        except BaseException:
            # nothing worth keeping (setup refused, command failed to start, ...)
            shutil.rmtree(spool_dir, ignore_errors=True)
            raise
        if not spoolers:
            return None
        spooler = spoolers[0]
        frees_spooler = spoolers[1] if len(spoolers) > 1 else None
        meta["duration_s"] = run.duration
        meta["interrupted_by"] = run.interrupted_by
        meta["cpu_stats"] = {str(s.cpu): s.text for s in run.stats}
        meta["stats_lost"] = {str(s.cpu): s.lost for s in run.stats}
        # a signal now would leave neither the recording nor a word about the spool:
        # finish the write first (seconds at most; a stop signal is noted and ignored,
        # SIGKILL still works)
        saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        stop_signals_raise(False)
        _testhook.pause("write", lambda: bool(_stop_requested))
        try:
            written = _write_recording(tracefs, run.session, out_path, spooler,
                                       header_page_text, header_event_text, meta, run.stats,
                                       frees_spooler)
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        shutil.rmtree(spool_dir, ignore_errors=True)
        incomplete = cleanup_error(run.session, f"wrote {out_path}")
        if incomplete is not None:
            raise incomplete
        if run.interrupted_by in (TRACEFS_UNMOUNTED, INSTANCE_REMOVED):
            where = (f"tracefs at {tracefs.root} was unmounted"
                     if run.interrupted_by == TRACEFS_UNMOUNTED else
                     f"tracefs instance {run.session.name} was removed by another process")
            raise TracefsUnavailable(
                f"{where} while recording; what was captured until then "
                f"({run.duration:.1f}s) is in {out_path}",
                hint="" if run.session.undo.failures else
                "nothing of this session is left in tracefs")
        return RecordResult(out_path, sum(s.read + s.entries for s in run.stats),
                            sum(s.lost for s in run.stats)
                            + sum((meta.get("frees_stats_lost") or {}).values()),
                            run.duration, written, run.stats,
                            run.interrupted_by, run.child_status,
                            meta.get("frees_events_estimate"))
    finally:
        if spool_dir.exists() and not any(spool_dir.iterdir()):
            spool_dir.rmdir()
        if not spool_dir.exists():
            spool.registry_remove(os.getpid())


class _GatedChild:
    """The command to record, forked now but held before exec until tracing is on."""

    def __init__(self, argv: list[str], stdout_to_stderr: bool = False):
        self.argv = argv
        self.released = False
        self.status: int | None = None
        gate_r, gate_w = os.pipe()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # child: wait at the gate, then exec; never return into ftslab
            try:
                os.close(gate_w)
                os.close(err_r)
                for s in STOP_SIGNALS:
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                # only an explicit "go" lets it run: EOF (ftslab died, even by
                # SIGKILL) or anything else means abort, so it never runs untraced
                if os.read(gate_r, 1) != b"g":
                    os._exit(127)
                os.close(gate_r)
                if stdout_to_stderr:
                    os.dup2(2, 1)
                os.execvp(argv[0], argv)
            except OSError as exc:
                try:
                    os.write(err_w, str(exc.errno).encode())
                except OSError:
                    pass
            finally:
                os._exit(127)
        os.close(gate_r)
        os.close(err_w)
        self.pid = pid
        self._gate = gate_w
        self._err = err_r

    def release(self) -> None:
        os.write(self._gate, b"g")
        os.close(self._gate)
        self.released = True
        data = os.read(self._err, 16)  # EOF when exec succeeded (CLOEXEC)
        os.close(self._err)
        if data:
            self.wait(block=True)
            err = int(data) if data.isdigit() else 0
            raise UsageError(f"cannot run {self.argv[0]!r}: {os.strerror(err)}")

    def abort(self) -> None:
        try:
            os.write(self._gate, b"x")
            os.close(self._gate)
            os.close(self._err)
        except OSError:
            pass
        self.wait(block=True)

    def poll(self) -> int | None:
        return self.wait(block=False)

    def wait(self, block: bool = True) -> int | None:
        if self.status is not None:
            return self.status
        try:
            pid, st = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            self.status = -1
            return self.status
        except Interrupted:
            return None
        if pid == 0:
            return None
        self.status = os.waitstatus_to_exitcode(st)
        return self.status


def _settle(reader, session: Session, seconds: float,
            status: Callable[[str, bool], None]) -> float:
    """Stop recording allocations, go on recording frees for ``seconds``: what the
    recorded tasks allocated and the kernel frees later (after an RCU grace period, in
    a workqueue, at I/O completion) is then seen freed.  A second stop signal, or the
    instance going away, ends it early.  Returns the seconds it lasted."""
    t0 = time.monotonic()
    n_signals = len(_stop_requested)
    with signals_deferred():
        if session.free_instance is not None:
            session.instance.tracing_on(False)
        else:
            for rel in session.alloc_enables:
                session.instance.write(rel, "0")
    last = 0.0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds or len(_stop_requested) > n_signals:
            break
        if not session.instance.exists():
            break
        try:
            for c in session.cpus:
                reader.pump(c)
        except OutputError as exc:
            session.warn(f"stopping: {exc}")
            break
        if now - last >= 0.5:
            last = now
            status(f"settling: recording frees {seconds - (now - t0):4.1f}s more "
                   "(allocations stopped)", False)
        time.sleep(0.05)
    return round(time.monotonic() - t0, 3)


def _capture_loop(spooler, session: Session, opts: RecordOptions,
                  child: "_GatedChild | None", t_start: float,
                  status: Callable[[str, bool], None], sampler=None) -> str | None:
    deadline = t_start + opts.duration if opts.duration else None
    last_status = 0.0
    inst = session.instance
    while True:
        moved = 0
        try:
            for c in session.cpus:
                moved += spooler.pump(c)
        except OutputError as exc:
            # disk full or similar: stop recording, keep what is on disk
            session.warn(f"stopping: {exc}")
            return "write error"
        now = time.monotonic()
        if sampler is not None:
            sampler.tick(now)  # /proc/slabinfo each second (slabsample.SlabSampler)
        if _stop_requested:
            return signal.Signals(_stop_requested[0]).name
        if child is not None and child.poll() is not None:
            return None
        if opts.pids and not opts.command and not any(pid_alive(p) for p in opts.pids):
            return None
        if deadline is not None and now >= deadline:
            return None
        if not inst.exists():
            # unmounted, or removed (only possible while no reader holds it open): end
            # here and keep what was captured; record()/stream say why afterwards
            return TRACEFS_UNMOUNTED if session.tracefs.mount_lost() else INSTANCE_REMOVED
        if opts.status and now - last_status >= 1.0:
            last_status = now
            stats = [inst.cpu_stats(c) for c in session.cpus]
            ev = sum(s.read + s.entries for s in stats)
            lost = sum(s.lost for s in stats)
            el = now - t_start
            mb = sum(spooler.bytes.values()) / 1e6
            status(f"recording {el:5.1f}s  {ev:,} events ({_fmt_rate(ev / el if el else 0)}/s)"
                   f"  {mb:.1f} MB  lost {lost:,}", False)
        if moved < 64 * 1024:
            time.sleep(0.05)


def _read_optional(tracefs: Tracefs, rel: str) -> str:
    try:
        return tracefs.read(rel)
    except FtslabError:
        return ""


def _start_slab_counters(meta: dict, session: Session) -> None:
    """/proc/allocinfo where the kernel has it, and the sampler of /proc/slabinfo that
    the capture loop ticks (a dict: meta["slabinfo_samples"] is its data)."""
    from .slabsample import SlabSampler, read_allocinfo
    text = read_allocinfo()
    if text:
        meta["allocinfo_start"] = text
    cpu, inst = session.cpus[0], session.instance
    meta["slabinfo_samples"] = SlabSampler(lambda: inst.cpu_stats(cpu).text)


def _end_slab_counters(meta: dict) -> None:
    """The SLUB parameters of the caches (reconcile.py bounds the per-CPU slack with
    them) and /proc/allocinfo at the end.  Read with tracing off."""
    from .report import parse_slabinfo
    from .slabsample import read_allocinfo, read_slab_params
    try:
        names = list(parse_slabinfo(meta.get("slabinfo_end") or meta["slabinfo_start"]))
    except (FtslabError, KeyError):
        names = []
    if names:
        meta["slab_params"] = read_slab_params(names)
    if "allocinfo_start" in meta:
        meta["allocinfo_end"] = read_allocinfo()


def _read_slabinfo() -> str:
    try:
        return read_text_file("/proc/slabinfo")
    except (OSError, FtslabError):
        return ""


def _ftrace_formats(tracefs: Tracefs) -> list[str]:
    out = []
    fdir = tracefs.path("events/ftrace")
    if fdir.is_dir():
        for ev in sorted(os.listdir(fdir)):
            try:
                out.append(tracefs.read(f"events/ftrace/{ev}/format"))
            except FtslabError:
                pass
    return out


def _describe_spool(tracefs: Tracefs, session: Session, spool_dir: Path, output: Path,
                    header_page: str, header_event: str, page_size: int, meta: dict,
                    warn: Callable[[str], None]) -> None:
    """Everything decoding the spool needs, written before the first page (spool.py): a
    session that dies by SIGKILL leaves a readable recording."""
    from . import spool
    event_formats = _formats_by_system(session)
    opt = lambda rel: _read_or_empty(tracefs, rel)  # noqa: E731
    u = os.uname()
    spool.describe(spool_dir, {
        "pid": os.getpid(), "output": str(output.resolve()), "started": time.time(),
        "header_page": header_page, "header_event": header_event,
        "event_formats": event_formats, "ftrace_formats": _ftrace_formats(tracefs),
        "printk_formats": opt("printk_formats"), "cmdlines": opt("saved_cmdlines"),
        "cpus": list(session.cpus), "buffer_page_size": page_size,
        "page_size": os.sysconf("SC_PAGE_SIZE"), "little_endian": sys.byteorder == "little",
        "long_size": 8 if sys.maxsize > 2 ** 32 else 4,
        "trace_clock": meta.get("trace_clock", ""),
        "uname": f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine}",
        "meta": {k: v for k, v in meta.items() if k not in ("slabinfo_start", "slabinfo_end")},
    }, _read_kallsyms(), warn)


def _formats_by_system(session: Session) -> dict[str, list[str]]:
    """The session's format texts grouped by event system (as trace.dat stores them)."""
    out: dict[str, list[str]] = {}
    for (sysname, _name), text in session.formats.items():
        out.setdefault(sysname, []).append(text)
    return out


def _read_or_empty(tracefs: Tracefs, rel: str) -> str:
    try:
        return tracefs.read(rel)
    except FtslabError:
        return ""


def _write_recording(tracefs: Tracefs, session: Session, out_path: Path, spooler: _Spooler,
                     header_page_text: str, header_event_text: str, meta: dict,
                     stats: list[CpuStats], frees_spooler: _Spooler | None = None) -> int:
    from .tracedat import TraceDat, write_tracedat
    event_formats = _formats_by_system(session)
    ftrace_formats = _ftrace_formats(tracefs)
    opt = lambda rel: _read_or_empty(tracefs, rel)  # noqa: E731
    u = os.uname()
    td = TraceDat(
        version=7, little_endian=sys.byteorder == "little", long_size=8,
        page_size=os.sysconf("SC_PAGE_SIZE"), compression="zstd",
        header_page=header_page_text, header_event=header_event_text,
        ftrace_formats=ftrace_formats, event_formats=event_formats,
        kallsyms=_read_kallsyms(), printk_formats=opt("printk_formats"),
        cmdlines=opt("saved_cmdlines"), cpus=max(session.cpus) + 1,
        cpu_data={}, buffer_page_size=spooler.page_size, buffer_name="",
        trace_clock=meta.get("trace_clock", ""),
        uname=f"{u.sysname} {u.nodename} {u.release} {u.version} {u.machine}",
        cpustats={s.cpu: s.text for s in stats}, ftslab=meta)
    extra = {}
    if frees_spooler is not None:
        extra[FREES_BUFFER] = {c: frees_spooler.paths[c] for c in session.cpus}
    for path in list(spooler.paths.values()) + [p for b in extra.values() for p in b.values()]:
        size = path.stat().st_size
        if size % spooler.page_size:  # a write cut short (disk full): whole pages only
            os.truncate(path, size - size % spooler.page_size)
    tmp: Path | None = None
    try:
        # a fresh, exclusive temp name (never a predictable path another user could have
        # planted a symlink at), renamed over the output once complete
        fd, name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp",
                                    dir=out_path.resolve().parent)
        os.close(fd)
        tmp = Path(name)
        n = write_tracedat(tmp, td, cpu_sources={c: spooler.paths[c] for c in session.cpus},
                           extra_buffers=extra)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
    except (FtslabError, OSError) as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OutputError(f"could not write {out_path} ({exc}); the captured raw pages are "
                          f"kept in {spooler.paths[session.cpus[0]].parent}",
                          hint="free some space and record again, or copy that directory "
                               "away") from None
    return n


def _read_kallsyms() -> str:
    try:
        return read_text_file("/proc/kallsyms")
    except (OSError, FtslabError):
        return ""
