"""A last-in-first-out undo stack for kernel state ftslab creates.

Every successful tracefs write that changes state pushes its undo right away.  Unwinding
runs every step even when earlier ones fail: a failure is reported through ``warn`` and
the next step still runs.  Signals are held off while a write and the push of its undo
happen, so a Ctrl-C can never fall between the two (``signals_deferred``).
"""
from __future__ import annotations

import contextlib
import signal
from typing import Callable

from ftslab import testhook


__all__ = ["UndoStack", "signals_deferred", "defer_signal", "STOP_SIGNALS"]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


_depth = 0


_pending: list[int] = []


@contextlib.contextmanager
def signals_deferred():
    """Hold the stop signals off for the duration; those that came arrive on exit.

    Blocking them (pthread_sigmask) is not enough on its own: the mask is per thread,
    and a thread that existed before (numpy's OpenBLAS pool starts one at import) takes
    the signal instead, after which Python runs the handler in the main thread at once.
    So ftslab's handlers also ask ``defer_signal`` first, and what it kept is raised again
    here, on the way out."""
    global _depth
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if not _depth and _pending:
            sigs = list(dict.fromkeys(_pending))
            _pending.clear()
            for sig in sigs:
                signal.raise_signal(sig)  # to this thread, now that it takes them again


def defer_signal(signum: int) -> bool:
    """For a signal handler: inside ``signals_deferred``, keep the signal for its end
    (returns True: the handler must do nothing now)."""
    if _depth:
        _pending.append(signum)
        return True
    return False


def signal_deferred() -> bool:
    """Whether a stop signal is being held off (for the test hook)."""
    return bool(_pending)


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
            k = 0
            while self._steps:
                testhook.pause(f"teardown:{k}", signal_deferred)
                k += 1
                what, fn = self._steps.pop()
                try:
                    fn()
                except Exception as exc:  # every step must run: report and go on
                    msg = f"cleanup step failed: {what}: {exc}"
                    self.failures.append(msg)
                    self._warn(msg)
        return list(self.failures)
