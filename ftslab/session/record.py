"""``record``: a session whose pages go to spool files and end as a trace.dat, with the
settle window for late frees, the slab counters and the kallsyms it needs.

Setup, the session loop and teardown are run.run_session's, the page copying
spooler.py's, the spool's files trace/spool.py's and the trace.dat bytes
trace/tracedat_write.py's.  No event is decoded while recording.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ftslab import testhook
from ftslab.version import __version__
from ftslab.errors import FtslabError, OutputError, TracefsUnavailable
from ftslab.events import FREES_BUFFER
from ftslab.kernel.procfs import read_slab_aliases
from ftslab.kernel.tracefs import Tracefs
from ftslab.trace.cpustats import CpuStats
from ftslab.kernel.undo import STOP_SIGNALS
from ftslab.session.engine import cleanup_error, INSTANCE_REMOVED, Session, TRACEFS_UNMOUNTED
from ftslab.session.options import SessionOptions, RecordResult
from ftslab.session.run import run_session
from ftslab.session.signals import stop_requested, stop_signals_raise
from ftslab.session.spooler import Spooler, Spoolers
from ftslab.kernel.procfs import read_kallsyms

__all__ = ["record"]


def record(tracefs: Tracefs, opts: SessionOptions, warn: Callable[[str], None],
           status: Callable[[str, bool], None]) -> RecordResult | None:
    """Run one recording into ``opts.output``.  Returns None if nothing was started."""
    # From the first step to the last, a stop signal is only noted: run_session acts on
    # it (before tracing started: nothing recorded, exit 128+N; after: the recording
    # ends and is written), and no signal can fall between the session's end and the
    # final write, where the default handler would kill ftslab with its spool unwritten.
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    stop_requested.clear()
    stop_signals_raise(False)
    try:
        return _record(tracefs, opts, warn, status)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _record(tracefs: Tracefs, opts: SessionOptions, warn: Callable[[str], None],
            status: Callable[[str, bool], None]) -> RecordResult | None:
    from ftslab.trace import spool
    from ftslab.trace.formats import parse_header_page
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
        spoolers: list[Spooler] = []

        def make_reader(session):
            meta["trace_clock"] = session.instance.read("trace_clock").strip()
            _describe_spool(tracefs, session, spool_dir, out_path, header_page_text,
                            header_event_text, page_size, meta, warn)
            spoolers.append(Spooler(session.instance, session.cpus, spool_dir, page_size))
            spoolers[0].tick = lambda: spool.save_cmdlines(
                spool_dir, _read_optional(tracefs, "saved_cmdlines"))
            if session.free_instance is None:
                return spoolers[0]
            try:
                fdir = spool_dir / FREES_BUFFER
                fdir.mkdir(mode=0o700)
                spoolers.append(Spooler(session.free_instance, session.cpus, fdir,
                                         page_size))
            except BaseException:
                spoolers[0].close()
                raise
            return Spoolers(spoolers)

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
        testhook.pause("write", lambda: bool(stop_requested))
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


def _read_optional(tracefs: Tracefs, rel: str) -> str:
    try:
        return tracefs.read(rel)
    except FtslabError:
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
    from ftslab.trace import spool
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
    }, read_kallsyms(), warn)


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


def _write_recording(tracefs: Tracefs, session: Session, out_path: Path, spooler: Spooler,
                     header_page_text: str, header_event_text: str, meta: dict,
                     stats: list[CpuStats], frees_spooler: Spooler | None = None) -> int:
    from ftslab.trace.tracedat_layout import TraceDat
    from ftslab.trace.tracedat_write import write_tracedat
    event_formats = _formats_by_system(session)
    ftrace_formats = _ftrace_formats(tracefs)
    opt = lambda rel: _read_or_empty(tracefs, rel)  # noqa: E731
    u = os.uname()
    td = TraceDat(
        version=7, little_endian=sys.byteorder == "little", long_size=8,
        page_size=os.sysconf("SC_PAGE_SIZE"), compression="zstd",
        header_page=header_page_text, header_event=header_event_text,
        ftrace_formats=ftrace_formats, event_formats=event_formats,
        kallsyms=read_kallsyms(), printk_formats=opt("printk_formats"),
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

