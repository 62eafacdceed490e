"""The report's progress bar: on a terminal's stderr once the report has run for
FTSLAB_PROGRESS_AFTER seconds (default 1), erased at the end; never on stdout, never
when stderr is a file or pipe."""
from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from ftslab.progress import NO_PROGRESS, Progress

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "6.18" / "ftslab-open200.dat"


def _report(stderr, after: str) -> tuple[subprocess.CompletedProcess, bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FTSLAB_PROGRESS_AFTER=after)
    return subprocess.run([sys.executable, "-m", "ftslab", "report", str(FIX)],
                          stdout=subprocess.PIPE, stderr=stderr, env=env, timeout=120)


def _on_a_terminal(after: str) -> tuple[subprocess.CompletedProcess, bytes]:
    master, slave = pty.openpty()
    try:
        cp = _report(slave, after)
    finally:
        os.close(slave)
    got = b""
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not b:
            break
        got += b
    os.close(master)
    return cp, got


def test_bar_on_a_terminal_then_erased():
    cp, err = _on_a_terminal("0")
    assert cp.returncode == 0
    assert b"ftslab: [" in err and b"%" in err, err
    last = err.rsplit(b"\r", 1)[-1] if b"\r" in err else err
    assert last.strip() == b"", err  # the line is blanked at the end
    assert b"ftslab: [" not in cp.stdout  # the report itself is untouched
    assert b"Slab allocations by cache" in cp.stdout


def test_no_bar_for_a_short_report_or_off_a_terminal(tmp_path):
    cp, err = _on_a_terminal("60")
    assert cp.returncode == 0 and b"ftslab: [" not in err
    with open(tmp_path / "err", "wb") as f:
        cp = _report(f, "0")
    assert cp.returncode == 0 and b"ftslab: [" not in (tmp_path / "err").read_bytes()


def test_progress_keeps_the_furthest_fraction():
    p = Progress()
    p.stage("a", 0.5)
    p.stage("b", 0.25)  # a later stage never moves the bar back
    text, frac, el = p.snapshot()
    assert (text, frac) == ("b", 0.5) and el >= 0
    NO_PROGRESS.stage("x", 1.0)
    assert NO_PROGRESS.snapshot()[0] == "starting"
