"""A last-in-first-out undo stack for kernel state ftslab creates.

Every successful tracefs write that changes state pushes its undo right away.  Unwinding
runs every step even when earlier ones fail: a failure is reported through ``warn`` and
the next step still runs.  Signals are held off while a write and the push of its undo
happen, so a Ctrl-C can never fall between the two.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable

__all__ = ["UndoStack", "signals_deferred", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


@contextlib.contextmanager
def signals_deferred():
    """Block the stop signals for the duration; pending ones arrive on exit."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class UndoStack:
    def __init__(self, warn: Callable[[str], None] | None = None):
        self._steps: list[tuple[str, Callable[[], None]]] = []
        self._warn = warn or (lambda msg: None)
        self.failures: list[str] = []

    def push(self, what: str, undo: Callable[[], None]) -> None:
        self._steps.append((what, undo))

    def __len__(self) -> int:
        return len(self._steps)

    def describe(self) -> list[str]:
        """The pending undo steps, in the order they would run."""
        return [what for what, _ in reversed(self._steps)]

    def unwind(self) -> list[str]:
        """Run every step, newest first.  Returns the failures (also passed to warn)."""
        with signals_deferred():
            while self._steps:
                what, fn = self._steps.pop()
                try:
                    fn()
                except Exception as exc:  # every step must run: report and go on
                    msg = f"cleanup step failed: {what}: {exc}"
                    self.failures.append(msg)
                    self._warn(msg)
        return list(self.failures)
