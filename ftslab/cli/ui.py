"""What the command line shows on stderr while it works: one-line errors, the status line of a
session, the progress line of a long report.

Everything here writes to stderr only (``quiet_stdout`` only points a closed pipe's stdout
at /dev/null); data (tables, events) goes to stdout elsewhere.
"""
from __future__ import annotations

import os
import sys


def err(msg: str) -> None:
    # diagnostics must never cost a recording: a closed or full stderr is ignored
    try:
        sys.stderr.write(f"ftslab: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


class Status:
    """One status line on stderr: rewritten in place on a terminal, every 5 s otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.width = 0

    def __call__(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        try:
            self._show(text)
        except (OSError, ValueError):
            self.enabled = False  # stderr is gone (closed pipe, full disk): stop trying

    def _show(self, text: str) -> None:
        import time
        if self.tty:
            pad = " " * max(0, self.width - len(text))
            sys.stderr.write(f"\rftslab: {text}{pad}")
            self.width = len(text)
            sys.stderr.flush()
        elif time.monotonic() - self.last >= 5:
            self.last = time.monotonic()
            sys.stderr.write(f"ftslab: {text}\n")

    def done(self) -> None:
        if self.enabled and self.tty and self.width:
            try:
                sys.stderr.write("\n")
            except (OSError, ValueError):
                pass
            self.width = 0


class ProgressLine:
    """A progress bar on stderr for a report that takes long: only on a terminal, only
    once FTSLAB_PROGRESS_AFTER seconds (default 1) have passed, redrawn by a thread
    every 0.2 s while the work runs, erased when it ends (stdout is never touched)."""

    def __init__(self):
        from ftslab.progress import Progress
        self.progress = Progress()
        try:
            self.after = float(os.environ.get("FTSLAB_PROGRESS_AFTER", "1"))
        except ValueError:
            self.after = 1.0
        self.width = 0
        self._thread = None
        if sys.stderr.isatty():
            import threading
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="ftslab-progress",
                                            daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            self._draw()
            if self._stop.wait(0.2):
                return

    def _draw(self):
        text, frac, el = self.progress.snapshot()
        if el >= self.after:
            n = int(frac * 24)
            line = f"ftslab: [{'#' * n}{'.' * (24 - n)}] {frac:4.0%} {el:5.1f}s  {text}"
            try:
                sys.stderr.write("\r" + line.ljust(self.width))
                sys.stderr.flush()
            except (OSError, ValueError):
                self.after = float("inf")  # stderr is gone: stop drawing
                return
            self.width = max(self.width, len(line))

    def close(self):
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        if self.width:
            try:
                sys.stderr.write("\r" + " " * self.width + "\r")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass


def quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
