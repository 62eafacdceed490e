"""ftslab top on the real kernel: batch frames with exact live counts, the interactive
view under a terminal (keys p and q), and a clean tracefs afterwards (``kernel``)."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

from conftest import popen_ftslab

N = 300
HOLDER = [sys.executable, "-c",
          "import os, sys, time\n"
          f"fds = [os.eventfd(0) for _ in range({N})]\n"
          "print('ready', flush=True)\n"
          "time.sleep(60)\n"]


def _frames(text: str) -> list[list[str]]:
    return [f.splitlines() for f in text.split("\n\n") if f.startswith("ftslab top")]


def test_top_batch_counts_the_live_eventfds(kernel, tmp_path):
    top = popen_ftslab("top", "--batch", "--by", "callsite", "-n", "0.5", "-d", "6",
                       "--top", "50", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    holder = None
    try:
        # the first frame says the session is up: only then make the eventfds
        line = top.stdout.readline()
        assert line.startswith("ftslab top"), line + top.stderr.read()
        holder = subprocess.Popen(HOLDER, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "ready"
        out, err = top.communicate(timeout=60)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        if top.poll() is None:
            top.kill()
    assert top.returncode == 0, err
    assert "lost 0 events" in err, err
    last = _frames(line + out)[-1]
    rows = [l for l in last if l.startswith("do_eventfd+")]
    assert len(rows) == 1, last
    cells = rows[0].split()
    live = int(cells[-3].replace(",", ""))   # CALL SITE  ALLOCS/S  BYTES/S  LIVE  LIVE BYTES
    assert live == N, rows[0]
    header = last[0]
    assert "lost 0" in header and "events/s" in header


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while needle not in buf and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break
    return buf


def test_top_interactive_keys_switch_and_quit(kernel, tmp_path):
    master, slave = pty.openpty()
    p = popen_ftslab("top", "-n", "0.5", stdin=slave, stdout=slave, stderr=slave,
                     extra_env={"TERM": "xterm", "COLUMNS": "120", "LINES": "40"})
    os.close(slave)
    try:
        seen = _read_until(master, b"ALLOCS/S", 30)
        assert b"CACHE" in seen, seen[-2000:]
        os.write(master, b"p")
        seen = _read_until(master, b"COMM", 10)
        assert b"COMM" in seen, seen[-2000:]
        t0 = time.monotonic()
        os.write(master, b"q")
        p.wait(timeout=15)
        quit_s = time.monotonic() - t0
        rest = _read_until(master, b"lost", 5)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        os.close(master)
    assert p.returncode == 0, rest[-2000:]
    assert quit_s < 10, quit_s
    assert b"top ran" in rest and b"Traceback" not in rest, rest[-2000:]
