"""Test hook: hold ftslab at a named point so that robustness tests can signal it there.

``FTSLAB_TEST_PAUSE=POINT`` (e.g. ``setup:3``, ``capture``, ``flush``, ``teardown:0``,
``write``) makes ``pause(POINT)`` write POINT into the file ``FTSLAB_TEST_PAUSE_FILE``
(when set: the test waits for it), then wait up to 30 s, or until the test removes
that file.  The wait also ends when a stop signal arrives: it is raised from the sleep where the caller's handler raises, it
is seen through ``stopped()`` where the handler only notes it, and it is seen pending
where the caller blocks the stop signals (undo steps).  Unset in normal use, where
``pause`` is one dictionary lookup.

Test-only: nothing here changes what ftslab does when the variables are unset.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Callable


__all__ = ["pause"]


_STOP = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE}


def pause(point: str, stopped: Callable[[], bool] | None = None) -> None:
    want = os.environ.get("FTSLAB_TEST_PAUSE")
    if want is None or want != point:
        return
    marker = os.environ.get("FTSLAB_TEST_PAUSE_FILE")
    if marker:
        try:
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            os.write(fd, point.encode())
            os.close(fd)
        except OSError:
            pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if marker and not os.path.exists(marker):
            return  # the test let it go on
        if stopped is not None and stopped():
            return
        if _STOP & signal.sigpending():
            return
        time.sleep(0.01)
