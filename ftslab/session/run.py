"""One session from start to end: set up, run the capture loop, undo; shared by record,
stream and top.

Also here: the recorded command (``_GatedChild``: forked, held before exec until tracing is on)
and the slab counters a recording stores.  The reader of the pages is the caller's
(record, stream or top); the plan and its undo are engine.Session's.  Kernel I/O goes
through tracefs.py (``read_text_file`` for /proc/slabinfo) and slabsample.py.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable

from ftslab import testhook
from ftslab.errors import FtslabError, OutputError, Stopped, UsageError
from ftslab.events import FREES_BUFFER
from ftslab.kernel.tracefs import read_text_file, Tracefs
from ftslab.trace.cpustats import CpuStats
from ftslab.pids import pid_alive
from ftslab.kernel.undo import signals_deferred, STOP_SIGNALS
from ftslab.session.engine import INSTANCE_REMOVED, report_stale, Session, TRACEFS_UNMOUNTED
from ftslab.session.options import SessionOptions
from ftslab.session.signals import flag_on_signal, stop_requested, Interrupted, stop_signals_raise

__all__ = ["run_session", "RunResult", "fmt_rate"]


@dataclass
class RunResult:
    session: Session
    stats: list[CpuStats]
    interrupted_by: str | None
    duration: float
    child_status: int | None
    started: bool


def run_session(tracefs: Tracefs, opts: SessionOptions, warn: Callable[[str], None],
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
    if signal.getsignal(signal.SIGTERM) is not flag_on_signal:
        stop_requested.clear()  # (record() notes signals from its start: keep those)
    saved_handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    stop_signals_raise(True)
    try:
        try:
            if stop_requested:  # a stop signal came before setup began
                raise Interrupted(stop_requested[0])
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
                testhook.pause("release", lambda: bool(stop_requested))
                if child is not None:
                    child.release()  # the command execs now, with tracing on
                started = True
            stop_signals_raise(False)
            testhook.pause("capture", lambda: bool(stop_requested))
            if stop_requested:
                interrupted_by = signal.Signals(stop_requested[0]).name
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
            elif child is not None and stop_requested and child.poll() is None:
                # SIGTERM/SIGHUP sent to ftslab end the command too (Ctrl-C reaches it
                # from the terminal by itself)
                sig = stop_requested[0]
                if sig in (signal.SIGTERM, signal.SIGHUP):
                    try:
                        os.kill(child.pid, sig)
                    except ProcessLookupError:
                        pass
            duration = time.monotonic() - t_start
            testhook.pause("flush", lambda: len(stop_requested) > int(interrupted_by
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
            sig = stop_requested[0] if stop_requested else signal.SIGINT
            raise Stopped(f"interrupted by {interrupted_by} before recording started; "
                          "nothing was recorded", exit_code=128 + int(sig))
        return RunResult(session, stats, interrupted_by, duration, child_status, started)
    finally:
        for s, handler in saved_handlers.items():
            signal.signal(s, handler)


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
    n_signals = len(stop_requested)
    with signals_deferred():
        if session.free_instance is not None:
            session.instance.tracing_on(False)
        else:
            for rel in session.alloc_enables:
                session.instance.write(rel, "0")
    last = 0.0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds or len(stop_requested) > n_signals:
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


def _capture_loop(spooler, session: Session, opts: SessionOptions,
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
        if stop_requested:
            return signal.Signals(stop_requested[0]).name
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
            status(f"recording {el:5.1f}s  {ev:,} events ({fmt_rate(ev / el if el else 0)}/s)"
                   f"  {mb:.1f} MB  lost {lost:,}", False)
        if moved < 64 * 1024:
            time.sleep(0.05)


def _start_slab_counters(meta: dict, session: Session) -> None:
    """/proc/allocinfo where the kernel has it, and the sampler of /proc/slabinfo that
    the capture loop ticks (a dict: meta["slabinfo_samples"] is its data)."""
    from ftslab.kernel.slabsample import SlabSampler, read_allocinfo
    text = read_allocinfo()
    if text:
        meta["allocinfo_start"] = text
    cpu, inst = session.cpus[0], session.instance
    meta["slabinfo_samples"] = SlabSampler(lambda: inst.cpu_stats(cpu).text)


def _end_slab_counters(meta: dict) -> None:
    """The SLUB parameters of the caches (reconcile.py bounds the per-CPU slack with
    them) and /proc/allocinfo at the end.  Read with tracing off."""
    from ftslab.trace.slabinfo import parse_slabinfo
    from ftslab.kernel.slabsample import read_allocinfo, read_slab_params
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


def fmt_rate(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"
