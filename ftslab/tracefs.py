"""All kernel I/O of ftslab: the one module that opens tracefs, /proc and /sys files.

Objects are named for what they are, verbs say the effect on the kernel (after
libtracefs): ``Tracefs.instance_create`` writes, ``Instance.destroy`` removes,
``read_*`` only read.  Every write goes through ``_write`` with ``os.open``/``os.write``
(O_APPEND unless truncation is the point) so that the kernel's refusal arrives with the
write itself, and is turned into a KernelWriteError carrying what was written, where,
and the kernel's last ``error_log`` entry.

This module never decides policy (which events, which filters): capture.py does.
It never touches the top-level buffer's settings: only instances it is handed.
"""
from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import (FtslabError, KernelWriteError, PermissionDenied,
                     TracefsUnavailable, UsageError)

__all__ = ["Tracefs", "Instance", "CpuStats", "INSTANCE_PREFIX",
           "read_text_file", "pid_alive", "parse_cpu_stats", "online_cpus"]

#: Every instance ftslab creates is called ``ftslab_<owner pid>[_<n>]``.
INSTANCE_PREFIX = "ftslab_"
_OWNED = re.compile(r"^ftslab_(\d+)(?:_\w+)?$")

_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def read_text_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """Read a whole (pseudo) file as text; /proc and tracefs files report size 0."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError as exc:
        raise PermissionDenied(f"cannot read {path}: {exc.strerror}") from None
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


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def online_cpus() -> list[int]:
    """CPUs the ring buffer has per_cpu directories for (read from sysfs)."""
    try:
        text = read_text_file("/sys/devices/system/cpu/online").strip()
    except (OSError, FtslabError):
        return list(range(os.cpu_count() or 1))
    cpus: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus.extend(range(int(a), int(b) + 1))
        elif part:
            cpus.append(int(part))
    return cpus


@dataclass(frozen=True)
class CpuStats:
    """A per_cpu/cpuN/stats snapshot (event counts)."""

    cpu: int
    entries: int
    overrun: int
    """Events overwritten before they were read (overwrite mode)."""
    commit_overrun: int
    dropped: int
    """Events dropped because the buffer was full (overwrite off)."""
    read: int
    text: str

    @property
    def lost(self) -> int:
        return self.overrun + self.commit_overrun + self.dropped


def parse_cpu_stats(cpu: int, text: str) -> CpuStats:
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        val = val.strip()
        if val.isdigit():
            vals[key.strip()] = int(val)
    return CpuStats(cpu=cpu, entries=vals.get("entries", 0), overrun=vals.get("overrun", 0),
                    commit_overrun=vals.get("commit overrun", 0),
                    dropped=vals.get("dropped events", 0), read=vals.get("read events", 0),
                    text=text)


class Tracefs:
    """A mounted tracefs.  Only reads, plus creating/removing ftslab's own instances."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

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
                raise PermissionDenied(f"permission denied reading {p}") from None
        if os.geteuid() != 0:
            raise PermissionDenied(
                f"tracefs is not readable at {candidates[0]} by this user")
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
            raise PermissionDenied(f"cannot write {path}: {exc.strerror}") from None
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
                raise PermissionDenied(f"kernel refused writing {text!r} to {path}: "
                                       f"{exc.strerror}") from None
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
        try:
            os.mkdir(path)
        except FileExistsError:
            raise KernelWriteError(str(path), "mkdir", "EEXIST", None,
                                   "another ftslab session uses this name; see: ftslab reset") from None
        except PermissionError as exc:
            raise PermissionDenied(f"cannot create tracefs instance {path}: {exc.strerror}") from None
        except FileNotFoundError:
            raise TracefsUnavailable(f"{self.root}/instances does not exist",
                                     hint="this kernel has no tracefs instances") from None
        except OSError as exc:
            raise KernelWriteError(str(path), "mkdir", errno.errorcode.get(exc.errno, "?")) from None
        return Instance(self, name)

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
        """rmdir the instance (the kernel frees its buffer and disables its events)."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise KernelWriteError(str(self.path), "rmdir",
                                   errno.errorcode.get(exc.errno, str(exc.errno))) from None

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

    def cpu_stats(self, cpu: int) -> CpuStats:
        return parse_cpu_stats(cpu, self.read(f"per_cpu/cpu{cpu}/stats"))

    def raw_open(self, cpu: int, nonblock: bool = True) -> int:
        flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if nonblock else 0)
        path = self.path / f"per_cpu/cpu{cpu}/trace_pipe_raw"
        try:
            return os.open(path, flags)
        except OSError as exc:
            raise TracefsUnavailable(f"cannot open {path}: {exc.strerror}") from None
