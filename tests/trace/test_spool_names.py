"""`ftslab report OUT` when OUT is missing but a session writing it left a spool
(OUT.ftslab-spool-PID/): the error names that spool, whether its owner is dead with
pages, dead before any page, or still recording.  (The real SIGKILL case runs in
test_kernel_record.py.)"""
from __future__ import annotations

import subprocess
import sys

import pytest

from ftslab.errors import BadInput
from ftslab.trace.loader import load


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _spool(tmp_path, pid, page_bytes=0):
    d = tmp_path / f"run.dat.ftslab-spool-{pid}"
    d.mkdir()
    (d / "cpu0.raw").write_bytes(b"\0" * page_bytes)
    return d


def _error(path) -> BadInput:
    with pytest.raises(BadInput) as ei:
        load(path)
    return ei.value


def test_no_spool_says_record_one(tmp_path):
    e = _error(tmp_path / "run.dat")
    assert "no such file" in str(e) and "ftslab record" in e.hint


def test_dead_session_without_pages_is_named(tmp_path):
    pid = _dead_pid()
    spool = _spool(tmp_path, pid)
    e = _error(tmp_path / "run.dat")
    assert str(spool) in str(e) and f"session {pid}" in str(e)
    assert "before it saved any event" in str(e) and "ftslab reset" in e.hint


def test_dead_session_with_pages_points_to_report_and_recover(tmp_path):
    pid = _dead_pid()
    spool = _spool(tmp_path, pid, 4096)
    e = _error(tmp_path / "run.dat")
    assert str(spool) in str(e) and "died and left what it captured" in str(e)
    assert f"ftslab recover {spool}" in e.hint


def test_live_session_is_still_recording(tmp_path):
    import os
    spool = _spool(tmp_path, os.getpid())
    e = _error(tmp_path / "run.dat")
    assert "is recording it" in str(e) and str(spool) in str(e)
