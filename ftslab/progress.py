"""Where a long-running decode or report is: stage names and a fraction done.

Pure bookkeeping: ``Progress`` holds the current stage; whoever presents it (the CLI's
progress line) reads ``snapshot()``.  Decoding code calls ``stage(text, fraction)`` at
its boundaries and never writes anywhere itself.
"""
from __future__ import annotations

import threading
import time


__all__ = ["Progress", "Part", "NO_PROGRESS"]


class Progress:
    """The stage of one long operation (thread-safe: a presenter thread reads it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text = "starting"
        self._fraction = 0.0
        self.started = time.monotonic()

    def stage(self, text: str, fraction: float) -> None:
        """Now doing ``text``; ``fraction`` (0..1) of the whole is done."""
        with self._lock:
            self._text = text
            self._fraction = min(1.0, max(self._fraction, fraction))

    def snapshot(self) -> tuple[str, float, float]:
        """(stage, fraction done, seconds since start)."""
        with self._lock:
            return self._text, self._fraction, time.monotonic() - self.started


class Part:
    """One step of a longer operation: its fractions 0..1 are ``lo``..``hi`` of the
    whole (a load is the first half of a report, say)."""

    def __init__(self, progress: "Progress | Part", lo: float, hi: float):
        self.progress, self.lo, self.hi = progress, lo, hi

    def stage(self, text: str, fraction: float) -> None:
        self.progress.stage(text, self.lo + (self.hi - self.lo) * fraction)


class _NoProgress(Progress):
    def stage(self, text: str, fraction: float) -> None:
        pass


NO_PROGRESS = _NoProgress()
"""Accepts stages and keeps none (the default for library callers)."""
