"""tracefs and its instances: the one module that opens tracefs files.

Also here: ``read_text_file``, the reader of whole (pseudo) files that the other kernel
readers (procfs.py, slabsample.py) and the sessions use for /proc and /sys, so that a
refusal is explained by lockdown in one place, and ``read_lockdown`` (``LOCKDOWN_PATH``).
What the files hold is mostly parsed elsewhere (trace/formats.py, trace/cpustats.py,
kprobes.py, lockdown.py, trace/histtext.py for hist files); only kprobe_events lines,
trigger lines and error_log entries are read here.

Objects are named for what they are, verbs say the effect on the kernel (after
libtracefs): ``Tracefs.instance_create`` writes, ``Instance.destroy`` removes,
``read_*`` only read.  Every write goes through ``_write`` with ``os.open``/``os.write``
(O_APPEND unless truncation is the point) so that the kernel's refusal arrives with the
write itself, and is turned into a KernelWriteError carrying what was written, where,
and the kernel's last ``error_log`` entry.

This module never decides policy (which events, which filters): session/engine.py does.
It never touches the top-level buffer's settings: only instances it is handed.
"""
from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ftslab.errors import FtslabError, KernelWriteError, PermissionDenied, TracefsUnavailable, UsageError
from ftslab.pids import pid_alive
from ftslab.trace.cpustats import CpuStats
from ftslab.trace.cpustats import parse_cpu_stats


__all__ = ["read_lockdown", "Tracefs", "Instance", "EnabledElsewhere", "INSTANCE_PREFIX", "read_text_file", "parse_kprobe_events"]


#: Every instance ftslab creates is called ``ftslab_<owner pid>[_<n>]``.
INSTANCE_PREFIX = "ftslab_"


_OWNED = re.compile(r"^ftslab_(\d+)(?:_\w+)?\Z")  # not "$": it allows a final "\n"


_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


#: Where securityfs shows the lockdown level (absent when securityfs is not mounted).
LOCKDOWN_PATH = "/sys/kernel/security/lockdown"


def _denied(message: str, what: str = "tracefs") -> PermissionDenied:
    """A refusal, explained by kernel lockdown when that is the reason (see lockdown.py:
    tracefs itself checks only file modes, so root is refused nothing else)."""
    from ftslab.kernel.lockdown import lockdown_refusal, parse_lockdown
    try:  # not read_text_file: its own refusal would come back here
        fd = os.open(LOCKDOWN_PATH, os.O_RDONLY | os.O_CLOEXEC)
        try:
            text = os.read(fd, 4096).decode("ascii", "replace")
        finally:
            os.close(fd)
    except OSError:
        text = None
    why = lockdown_refusal(parse_lockdown(text), what)
    if why:
        return PermissionDenied(f"{message}: {why}", hint="")
    return PermissionDenied(message)


def read_lockdown() -> str | None:
    """The lockdown line (``none [integrity] confidentiality``), None if no LSM file."""
    try:
        return read_text_file(LOCKDOWN_PATH).strip()
    except (OSError, FtslabError):
        return None


def read_text_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """Read a whole (pseudo) file as text; /proc and tracefs files report size 0."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError as exc:
        raise _denied(f"cannot read {path}: {exc.strerror}") from None
    try:
        chunks = []
        total = 0
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if limit is not None and total >= limit:
                break
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class EnabledElsewhere:
    """An event that another buffer of this tracefs has enabled too (a second probe on
    its tracepoint: see Tracefs.events_enabled_elsewhere)."""

    event: str
    """``system:name``."""
    instance: str | None
    """The instance's name; None for the top-level buffer."""
    state: str
    """What its enable file reads: ``1``, or ``0*``/``1*`` (soft mode: the probe is
    registered, e.g. by an enable_event trigger, whether or not it records)."""
    tracing_on: bool | None
    """That buffer's tracing_on (None: unreadable).  Off, its probe still runs."""
    owner_pid: int | None = None
    """The pid an ``ftslab_<pid>`` instance is named for (another ftslab session)."""


def enable_state_has_probe(text: str) -> bool:
    """Whether an event's ``enable`` file says its tracepoint probe is registered.

    It reads ``0`` or ``1``, with ``*`` after it in soft mode (kernel/trace/
    trace_events.c, event_enable_read): ``0*`` is registered but soft-disabled, which
    costs every event the same as ``1``."""
    t = text.strip()
    return t == "1" or t.endswith("*")


class Tracefs:
    """A mounted tracefs.  Only reads, plus creating/removing ftslab's own instances."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._pin: int | None = None
        """O_PATH descriptor of the mount, taken before the first instance is made: if
        tracefs is unmounted (lazily) under a session, its instance can still be removed
        through it (a detached mount lives on while a descriptor refers to it)."""

    @classmethod
    def locate(cls, path: str | None = None) -> "Tracefs":
        """Find the mounted tracefs (or use ``path``); explain how to mount it if absent."""
        candidates = (path,) if path else _CANDIDATES
        for cand in candidates:
            p = Path(cand)
            try:
                if (p / "events").is_dir() or (p / "instances").is_dir():
                    return cls(p)
            except PermissionError:
                raise _denied(f"permission denied reading {p}") from None
        if os.geteuid() != 0:
            raise PermissionDenied(
                f"tracefs is not readable at {candidates[0]} by this user")
        denied = _denied(f"tracefs at {candidates[0]} is empty or not mounted")
        if denied.hint == "":  # lockdown at boot: the kernel never populates tracefs
            raise denied
        raise TracefsUnavailable(f"tracefs is not mounted at {candidates[0]}")

    # -- reads -------------------------------------------------------------------
    def path(self, rel: str) -> Path:
        return self.root / rel

    def read(self, rel: str) -> str:
        try:
            return read_text_file(self.root / rel)
        except FileNotFoundError:
            raise TracefsUnavailable(f"{self.root / rel} does not exist",
                                     hint="this kernel's tracefs lacks it") from None
        except OSError as exc:
            raise TracefsUnavailable(f"cannot read {self.root / rel}: {exc.strerror}") from None

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def has_kprobes(self) -> bool:
        return self.exists("kprobe_events")

    def event_format(self, system: str, name: str) -> str:
        rel = f"events/{system}/{name}/format"
        if not self.exists(rel):
            raise UsageError(f"no such event {system}:{name} in {self.root}/events",
                           hint="list them with: ls " + str(self.root / "events" / system))
        return self.read(rel)

    def event_exists(self, system: str, name: str) -> bool:
        return self.exists(f"events/{system}/{name}/format")

    def readme(self) -> str:
        try:
            return self.read("README")
        except FtslabError:
            return ""

    # -- kprobe events (global: one kprobe_events file for every instance) ----------
    def kprobe_events(self) -> list[tuple[str, str, str]]:
        """(group, event, symbol) of every kprobe defined, by anyone."""
        if not self.has_kprobes():
            return []
        return parse_kprobe_events(self.read("kprobe_events"))

    def ftslab_probes(self) -> list[tuple[str, str, int]]:
        """(group, event, owner pid) of every probe in a group named for an ftslab
        session (``ftslab_<pid>``)."""
        out = []
        for group, event, _sym in self.kprobe_events():
            m = _OWNED.match(group)
            if m:
                out.append((group, event, int(m.group(1))))
        return out

    def stale_probes(self) -> list[tuple[str, str, int]]:
        return [p for p in self.ftslab_probes() if not pid_alive(p[2])]

    def kprobe_add(self, definition: str) -> None:
        """Append one probe definition (O_APPEND: other probes stay; the kernel's
        refusal and its error_log entry arrive with the write)."""
        self._write("kprobe_events", definition, append=True,
                    hint="the definition and the kernel's reason are above; "
                         "`ftslab doctor` shows what this kernel offers")

    def kprobe_remove(self, group: str, event: str) -> None:
        """Remove one of ftslab's probes (it must be disabled in every instance)."""
        if not _OWNED.match(group):
            raise ValueError(f"refusing to remove a probe not made by ftslab: {group}/{event}")
        if not self.exists(f"events/{group}/{event}"):
            return
        self._write("kprobe_events", f"-:{group}/{event}", append=True,
                    hint="a probe still enabled somewhere cannot be removed (EBUSY)")

    def instances(self) -> list[str]:
        try:
            return sorted(os.listdir(self.root / "instances"))
        except OSError:
            return []

    def ftslab_instances(self) -> list[tuple[str, int]]:
        """(name, owner pid) of every instance named for an ftslab session."""
        out = []
        for name in self.instances():
            m = _OWNED.match(name)
            if m:
                out.append((name, int(m.group(1))))
        return out

    def stale_instances(self) -> list[tuple[str, int]]:
        """ftslab instances whose owner process is gone."""
        return [(name, pid) for name, pid in self.ftslab_instances() if not pid_alive(pid)]

    def events_enabled_elsewhere(self, events, own: str | None = None
                                 ) -> list[EnabledElsewhere]:
        """Where else each of ``events`` ((system, name) pairs) is enabled: the top-level
        buffer and every instance but ``own`` (this session's).  Only reads.

        Each is a second probe on the tracepoint: the kernel then calls its probes
        through ``__traceiter_<event>`` instead of a static call, and every event costs
        more.  Other users of a tracepoint are not visible here: perf (perf_event_open
        on a tracepoint) and BPF programs register their probes without any tracefs
        file saying so; finding them means walking every process's fds and asking the
        kernel about each (bpftool's BPF_TASK_FD_QUERY), which this does not do.
        Unreadable files (not root, an instance removed meanwhile) are skipped."""
        def state(rel: str) -> str | None:
            try:
                return read_text_file(self.root / rel).strip()
            except (OSError, FtslabError):
                return None

        def on(prefix: str) -> bool | None:
            t = state(f"{prefix}tracing_on")
            return None if t is None else t == "1"

        places: list[tuple[str | None, str]] = [(None, "")]
        places += [(name, f"instances/{name}/") for name in self.instances() if name != own]
        out = []
        for inst, prefix in places:
            tracing = None
            for system, name in events:
                st = state(f"{prefix}events/{system}/{name}/enable")
                if st is None or not enable_state_has_probe(st):
                    continue
                if tracing is None:
                    tracing = on(prefix)
                m = _OWNED.match(inst) if inst else None
                out.append(EnabledElsewhere(f"{system}:{name}", inst, st, tracing,
                                            int(m.group(1)) if m else None))
        return out

    def error_log_last(self, instance: str | None = None) -> str | None:
        """The last entry of error_log (with its caret line), or None."""
        rel = f"instances/{instance}/error_log" if instance else "error_log"
        try:
            text = read_text_file(self.root / rel)
        except (OSError, FtslabError):
            return None
        entries = re.split(r"(?m)^(?=\[\s*\d+\.\d+\])", text)
        entries = [e for e in entries if e.strip()]
        return entries[-1].rstrip("\n") if entries else None

    @staticmethod
    def error_log_brief(entry: str) -> str:
        """One line from an error_log entry: the message, the command, the caret column.

        An entry is ``[ts] where: error: msg`` then ``  Command: text`` then a line with
        ``^`` under the offending character."""
        lines = entry.splitlines()
        head = re.sub(r"^\[\s*\d+\.\d+\]\s*", "", lines[0]).strip() if lines else ""
        cmd_line = next((l for l in lines[1:] if "Command:" in l), None)
        caret_line = next((l for l in lines[1:] if l.strip() == "^"), None)
        if cmd_line is None:
            return head
        start = cmd_line.index("Command:") + len("Command:")
        while start < len(cmd_line) and cmd_line[start] == " ":
            start += 1
        cmd = cmd_line[start:]
        out = f"{head} in {cmd!r}"
        if caret_line is not None:
            col = caret_line.index("^") - start
            if 0 <= col <= len(cmd):
                out += f" at column {col + 1} ({cmd[col:col + 12]!r})" if col < len(cmd) \
                    else " at its end"
        return out

    # -- writes ------------------------------------------------------------------
    def _write(self, rel: str, text: str, append: bool = True, instance: str | None = None,
               hint: str | None = None) -> None:
        path = self.root / rel
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        before = self.error_log_last(instance)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise TracefsUnavailable(f"{path} does not exist") from None
        except PermissionError as exc:
            raise _denied(f"cannot write {path}: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise PermissionDenied(f"cannot write {path}: tracefs is read-only") from None
            raise KernelWriteError(str(path), text, errno.errorcode.get(exc.errno, str(exc.errno)),
                                   None, hint) from None
        try:
            data = text.encode()
            n = os.write(fd, data)
            if n != len(data):
                raise KernelWriteError(str(path), text, "short write", None, hint)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise _denied(f"kernel refused writing {text!r} to {path}: "
                              f"{exc.strerror}",
                              "kprobes" if path.name.endswith("_events") else "tracefs") \
                    from None
            after = self.error_log_last(instance)
            log = self.error_log_brief(after) if after and after != before else None
            raise KernelWriteError(str(path), text, errno.errorcode.get(exc.errno, str(exc.errno)),
                                   log, hint) from None
        finally:
            os.close(fd)

    def instance_create(self, name: str) -> "Instance":
        if not _OWNED.match(name):
            raise ValueError(f"refusing to create an instance not named for ftslab: {name}")
        path = self.root / "instances" / name
        if self._pin is None:
            try:
                self._pin = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                pass  # mkdir below says what is wrong
        try:
            os.mkdir(path)
        except FileExistsError:
            raise KernelWriteError(str(path), "mkdir", "EEXIST", None,
                                   "another ftslab session uses this name; see: ftslab reset") from None
        except PermissionError as exc:
            raise _denied(f"cannot create tracefs instance {path}: {exc.strerror}") from None
        except FileNotFoundError:
            raise TracefsUnavailable(f"{self.root}/instances does not exist",
                                     hint="this kernel has no tracefs instances") from None
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise PermissionDenied(f"cannot create tracefs instance {path}: tracefs is "
                                       f"mounted read-only at {self.root}",
                                       hint="use a read-write tracefs mount") from None
            raise KernelWriteError(str(path), "mkdir", errno.errorcode.get(exc.errno, "?")) from None
        return Instance(self, name)

    def mount_lost(self) -> bool:
        """Whether the tracefs this session set up in was unmounted under it (its path
        now leads elsewhere, or nowhere)."""
        if self._pin is None:
            return False
        try:
            return os.stat(self.root).st_dev != os.fstat(self._pin).st_dev
        except OSError:
            return True

    def _rmdir_pinned(self, rel: str) -> None:
        """rmdir through the mount taken at the first instance_create (see ``_pin``)."""
        if self._pin is None:
            return
        try:
            os.rmdir(rel, dir_fd=self._pin)
        except FileNotFoundError:
            pass

    def instance(self, name: str) -> "Instance":
        return Instance(self, name)


class Instance:
    """A tracefs instance (a private ring buffer with its own event switches)."""

    def __init__(self, tracefs: Tracefs, name: str):
        self.tracefs = tracefs
        self.name = name
        self.rel = f"instances/{name}"

    @property
    def path(self) -> Path:
        return self.tracefs.root / self.rel

    def exists(self) -> bool:
        return self.path.is_dir()

    def destroy(self) -> None:
        """rmdir the instance (the kernel frees its buffer and disables its events).

        EBUSY while any process has one of its files open (rmdir refuses then): retried
        for a second, then explained."""
        for attempt in range(21):
            try:
                try:
                    os.rmdir(self.path)
                except FileNotFoundError:
                    # unmounted under us? the mount pinned at creation still reaches it
                    self.tracefs._rmdir_pinned(self.rel)
                return
            except OSError as exc:
                if exc.errno == errno.EBUSY and attempt < 20:
                    time.sleep(0.05)
                    continue
                if exc.errno == errno.EROFS:
                    raise PermissionDenied(f"cannot remove {self.path}: tracefs is mounted "
                                           f"read-only at {self.tracefs.root}",
                                           hint="use a read-write tracefs mount") from None
                hint = None
                if exc.errno == errno.EBUSY:
                    hint = ("another process has one of its files open (e.g. cat trace_pipe); "
                            "once that process ends: ftslab reset")
                raise KernelWriteError(str(self.path), "rmdir",
                                       errno.errorcode.get(exc.errno, str(exc.errno)),
                                       hint=hint) from None

    def read(self, rel: str) -> str:
        return self.tracefs.read(f"{self.rel}/{rel}")

    def write(self, rel: str, text: str, append: bool = False, hint: str | None = None) -> None:
        self.tracefs._write(f"{self.rel}/{rel}", text, append=append, instance=self.name,
                            hint=hint)

    # -- settings, each returning nothing; callers push their undo ---------------
    def event_enable(self, system: str, name: str, on: bool = True) -> None:
        self.write(f"events/{system}/{name}/enable", "1" if on else "0")

    def event_filter_set(self, system: str, name: str, expr: str) -> None:
        self.write(f"events/{system}/{name}/filter", expr,
                   hint="check the filter's field names against the event's format file")

    def event_filter_clear(self, system: str, name: str) -> None:
        self.write(f"events/{system}/{name}/filter", "0")

    def option_set(self, option: str, on: bool) -> None:
        self.write(f"options/{option}", "1" if on else "0")

    def option_get(self, option: str) -> bool | None:
        try:
            return self.read(f"options/{option}").strip() == "1"
        except FtslabError:
            return None

    def buffer_size_kb_set(self, kb: int) -> None:
        self.write("buffer_size_kb", str(kb),
                   hint="ask for less memory with -b")

    def tracing_on(self, on: bool) -> None:
        self.write("tracing_on", "1" if on else "0")

    def event_pid_set(self, pids: list[int]) -> None:
        self.write("set_event_pid", " ".join(str(p) for p in pids))

    def event_pid_clear(self) -> None:
        self.write("set_event_pid", "")

    def trace_clear(self) -> None:
        self.write("trace", "")

    # -- event triggers (hist triggers among them) ------------------------------------
    def event_trigger_add(self, system: str, name: str, text: str) -> None:
        """Append one trigger to the event's ``trigger`` file.  Always O_APPEND: a
        truncating write removes every trigger of the event first (seen on 6.1, 6.12)."""
        self.write(f"events/{system}/{name}/trigger", text, append=True,
                   hint="the kernel's reason is above; the event's fields are in its "
                        "format file")

    def event_trigger_remove(self, system: str, name: str, text: str) -> None:
        """Remove one trigger: append ``!`` + its text (the kernel accepts, silently, the
        removal of a trigger it does not have)."""
        self.write(f"events/{system}/{name}/trigger", "!" + text, append=True,
                   hint="the trigger text must match the one that was written")

    def event_triggers(self, system: str, name: str) -> list[str]:
        """The triggers on the event, as the kernel lists them (comments left out)."""
        return [line for line in self.read(f"events/{system}/{name}/trigger").splitlines()
                if line.strip() and not line.startswith("#")]

    def event_hist_read(self, system: str, name: str) -> str:
        """The event's ``hist`` file: one table per hist trigger on it
        (trace/histtext.py parses it)."""
        rel = f"events/{system}/{name}/hist"
        if not self.tracefs.exists(f"{self.rel}/{rel}"):
            raise TracefsUnavailable(f"{self.path / rel} does not exist",
                                     hint="this kernel has no hist triggers "
                                          "(CONFIG_HIST_TRIGGERS unset), or no such event")
        return self.read(rel)

    def cpu_stats(self, cpu: int) -> CpuStats:
        return parse_cpu_stats(cpu, self.read(f"per_cpu/cpu{cpu}/stats"))

    def raw_open(self, cpu: int, nonblock: bool = True) -> int:
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0)
        path = self.path / f"per_cpu/cpu{cpu}/trace_pipe_raw"
        try:
            return os.open(path, flags)
        except OSError as exc:
            raise TracefsUnavailable(f"cannot open {path}: {exc.strerror}") from None


_KPROBE_LINE = re.compile(r"^([pr])\d*:([^/\s]+)/(\S+)\s+(\S+)")


def parse_kprobe_events(text: str) -> list[tuple[str, str, str]]:
    """(group, event, probed symbol) of each line of kprobe_events."""
    out = []
    for line in text.splitlines():
        m = _KPROBE_LINE.match(line.strip())
        if m:
            out.append((m.group(2), m.group(3), m.group(4)))
    return out
