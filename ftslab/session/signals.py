"""How a session stops: the stop signals, the flag they set, and the exception they raise
where setup must unwind.

SIGINT/SIGTERM/SIGHUP/SIGPIPE end a recording cleanly (what was captured is kept);
during setup they unwind what was done.  Which signals they are is kernel/undo.py's
(``STOP_SIGNALS``), which also holds them off around a write and the push of its undo.
"""
from __future__ import annotations

import signal

from ftslab.kernel.undo import defer_signal, STOP_SIGNALS

__all__ = ["Interrupted", "stop_signals_raise", "request_stop"]


class Interrupted(BaseException):
    """A stop signal arrived (BaseException: no `except Exception` may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


stop_requested: list[int] = []


def _raise_on_signal(signum, frame):
    if defer_signal(signum):  # inside signals_deferred: raised again at its end
        return
    stop_requested.append(signum)
    raise Interrupted(signum)


def flag_on_signal(signum, frame):
    if defer_signal(signum):
        return
    stop_requested.append(signum)


def request_stop(reason: int = signal.SIGPIPE) -> None:
    """Ask a running capture loop to end (e.g. its consumer closed the pipe)."""
    stop_requested.append(reason)


def stop_signals_raise(raise_: bool) -> None:
    """Stop signals either raise Interrupted (setup) or only set a flag (capture loop)."""
    for s in STOP_SIGNALS:
        signal.signal(s, _raise_on_signal if raise_ else flag_on_signal)
