"""Moving ring-buffer pages out of the kernel: ``os.splice`` from each CPU's
trace_pipe_raw into spool files, one thread per CPU, with no decoding on the way (no
copy through Python: this is what keeps a recording lossless at ~1 M events/s on 2 CPUs).

It opens only the instance's trace_pipe_raw files (through ``Instance.raw_open``) and its
own spool files; what the spool holds besides the pages is trace/spool.py's.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable

from ftslab.errors import OutputError
from ftslab.kernel.tracefs import Instance


PIPE_BYTES = 1 << 20


def splice_pipe() -> tuple[int, int]:
    """A non-blocking pipe of PIPE_BYTES to splice trace_pipe_raw pages through."""
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
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


class Spooler:
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
                    n = os.splice(src, w, PIPE_BYTES, flags=os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE)
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


class Spoolers:
    """The spoolers of a session with a frees instance, pumped as one."""

    def __init__(self, parts: list[Spooler]):
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
