"""A session's kernel state (``Session``): plan the private instance, its events, filters
and kprobes, apply the plan, undo it all.

The session plans every tracefs write first (``plan``: pure, printable by --dry-run),
then applies them one by one, pushing each undo right after its write succeeds; with
kprobes it checks the first cache names they capture before a recording starts.  Also
here: the error a failed cleanup ends with, and the warning about stale instances and
probe groups of dead sessions.

This module moves no pages and decodes nothing: the session loop, stop signals and
teardown are run.py's, the page copying spooler.py's, the trace.dat record.py's.  Kernel
I/O goes through tracefs.py and procfs.py (and /proc/PID/task for a command's threads).
"""
from __future__ import annotations

import os
import time
from typing import Callable

from ftslab import testhook
from ftslab.errors import CleanupIncomplete, FtslabError, PermissionDenied, ProbeVerifyFailed, Unsupported, UsageError
from ftslab.events import FREES_BUFFER
from ftslab.kernel.filters import COMMON as _COMMON_FILTER_FIELDS, cache_filter, comm_filter, FilterExpr, parse_filter
from ftslab.kernel.procfs import online_cpus, read_slab_aliases
from ftslab.kernel.tracefs import EnabledElsewhere, Instance, INSTANCE_PREFIX, Tracefs
from ftslab.kernel.undo import signals_deferred, UndoStack
from ftslab.session.options import parse_event_spec, SessionOptions, Step
from ftslab.kernel.elsewhere import enabled_elsewhere_message


__all__ = ["Session"]


#: ``interrupted_by`` of a session whose tracefs went away under it: the recording is
#: kept, and the command fails afterwards with exit 4 saying so.
TRACEFS_UNMOUNTED = "tracefs unmounted"


INSTANCE_REMOVED = "instance removed"


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

    def plan_kprobes(self, opts: SessionOptions):
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
        from ftslab.kernel.kprobes import plan_probes
        from ftslab.kernel.procfs import read_probe_context
        from ftslab.kernel.tracefs import read_lockdown
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
        from ftslab.events import BULK_FREE_SYMBOL, FAMILY
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

    def plan(self, opts: SessionOptions, child_pid: int | None = None) -> list[Step]:
        from ftslab.trace.formats import parse_format
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
            # whole system: but not ftslab itself (its reads and writes allocate too).
            # The kernel matches the thread, not the process: every thread ftslab has
            # now, and (event-fork) every thread or process it starts later (top's and
            # serve's decoding thread, the HTTP server, the decode helpers); without
            # event-fork a new thread's allocations were recorded (measured: 400 of 400)
            steps.append(Step("do not trace ftslab's threads started later",
                              f"{inst}/options/event-fork", "1", "0"))
            steps.append(Step("do not trace ftslab itself", f"{inst}/set_event_notrace_pid",
                              " ".join(str(t) for t in _own_threads()), ""))
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
        from ftslab.events import alloc_source
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

    def _free_steps(self, opts: SessionOptions, events, parsed, pids, user_filters,
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
        from ftslab.events import free_source
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
                     opts: SessionOptions) -> list[Step]:
        """A ``stacktrace`` trigger on each allocation event.  It is given a condition
        (the event's own filter, or one always true) on purpose: a trigger without one
        runs before the event is filtered (by set_event_pid too) and writes its stack
        first, for events that are then dropped; one with a condition runs on the
        event's record, so the stack follows the event it belongs to
        (include/linux/trace_events.h, trace_trigger_soft_disabled)."""
        from ftslab.events import alloc_source
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
            testhook.pause(f"setup:{i}")
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
        from ftslab.kernel.kprobes import cache_names_in_trace, check_cache_names
        from ftslab.kernel.procfs import provoke_allocations, read_slab_names
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


def _own_threads() -> list[int]:
    """This process's thread ids (the main one first)."""
    me = os.getpid()
    try:
        tids = sorted(int(t) for t in os.listdir("/proc/self/task") if t.isdigit())
    except OSError:
        tids = []
    return [me] + [t for t in tids if t != me]


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
