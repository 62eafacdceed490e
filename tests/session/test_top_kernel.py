"""ftslab top on the real kernel: batch frames with exact live counts, the interactive
view under a terminal (keys p and q), and a clean tracefs afterwards (``kernel``).

The eventfd call site's function is the running kernel's (inlining decides it: see
test_kernel_stacks.eventfd_frames)."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

from conftest import popen_ftslab
from test_record_stacks import eventfd_frames

N = 300
COMM = f"ftslabtop{os.getpid() % 100000}"
# named first, so that a top limited to that name sees its eventfds and nobody else's
HOLDER = [sys.executable, "-c",
          "import ctypes, os, sys, time\n"
          f"ctypes.CDLL(None).prctl(15, b'{COMM}', 0, 0, 0)\n"
          f"fds = [os.eventfd(0) for _ in range({N})]\n"
          "print('ready', flush=True)\n"
          "time.sleep(600)\n"]


class TopRun:
    """``ftslab top --batch ARGS`` on the real kernel, read frame by frame.  Starting it
    waits for the first frame (the session is up); ``until`` reads until the last frame
    satisfies a condition (the hang guard: a minute); ``finish`` stops it with SIGINT
    and reads the rest; ``close`` (a failed test) stops it SIGINT first, so that it
    removes its instances, SIGKILL if it will not end."""

    def __init__(self, *args: str):
        self.proc = popen_ftslab("top", "--batch", *args, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        self.text = self.proc.stdout.readline()
        if not self.text.startswith("ftslab top"):
            self.close()
            raise AssertionError(self.text + self.proc.stderr.read())

    def until(self, cond, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond(self.text):
            assert time.monotonic() < deadline, f"{what}: {self.text[-3000:]}"
            got = self.proc.stdout.readline()
            assert got, self.proc.stderr.read()
            self.text += got

    def finish(self) -> str:
        """Stop it; returns its stderr.  The rest of stdout is read through the same
        buffered file the frames were read with: communicate() reads the pipe's fd and
        skips what readline() had buffered already (a frame's end, its blank line)."""
        self.proc.send_signal(signal.SIGINT)
        self.text += self.proc.stdout.read()
        err = self.proc.stderr.read()
        self.proc.wait(timeout=60)
        assert self.proc.returncode == 0, err
        return err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _frames(text: str) -> list[list[str]]:
    return [f.splitlines() for f in text.split("\n\n") if f.startswith("ftslab top")]


def test_top_batch_counts_the_live_eventfds(kernel, tmp_path):
    """The whole system's top would count any other process's eventfds too: this one is
    limited to the holder's comm, whose N eventfds, made after top started and held
    until it ends, are exactly the live ones at their call site."""
    site = eventfd_frames()[1]
    top = TopRun("--by", "callsite", "-n", "0.5", "--comm", COMM, "--top", "50")
    holder = None
    try:
        # the first frame says the session is up: only then make the eventfds
        holder = subprocess.Popen(HOLDER, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "ready"
        top.until(lambda text: _live(_frames(text)[-1], site) == N, "all eventfds seen")
        err = top.finish()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        top.close()
    assert "lost 0 events" in err, err
    frames = _frames(top.text)
    # never more than the holder's, and all of them to the end
    assert all(_live(f, site) <= N for f in frames), frames
    last = frames[-1]
    assert _live(last, site) == N, last
    header = last[0]
    assert "lost 0" in header and "events/s" in header


def _live(frame: list[str], site: str) -> int:
    """The LIVE column of the call site's row (0 without one)."""
    rows = [l for l in frame if l.startswith(site + "+")]
    assert len(rows) <= 1, frame
    if not rows:
        return 0
    return int(rows[0].split()[-3].replace(",", ""))  # CALL SITE ALLOCS/S BYTES/S LIVE LIVE BYTES


def _read_until(fd: int, needle: bytes | None, timeout: float) -> bytes:
    """Read the terminal until NEEDLE shows (None: until the other side is closed)."""
    buf = b""
    end = time.monotonic() + timeout
    while (needle is None or needle not in buf) and time.monotonic() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every end of the terminal's other side is closed
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_top_interactive_keys_switch_and_quit(kernel, tmp_path):
    master, slave = pty.openpty()
    p = popen_ftslab("top", "-n", "0.5", stdin=slave, stdout=slave, stderr=slave,
                     extra_env={"TERM": "xterm", "COLUMNS": "120", "LINES": "40"})
    os.close(slave)
    try:
        # (the timeouts are hang guards: each read returns as soon as it has its text)
        seen = _read_until(master, b"ALLOCS/S", 60)
        assert b"CACHE" in seen, seen[-2000:]
        os.write(master, b"p")
        seen = _read_until(master, b"COMM", 60)
        assert b"COMM" in seen, seen[-2000:]
        os.write(master, b"q")
        # q ends it, nothing else would: all it writes, up to its last line, then EOF
        rest = _read_until(master, None, 60)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
        os.close(master)
    assert p.returncode == 0, rest[-2000:]
    assert b"top ran" in rest and b"Traceback" not in rest, rest[-2000:]


THREADS = 300
TCOMM = f"ftslabthr{os.getpid() % 100000}"
# named first (its threads inherit the name); makes the threads, says so, waits for a
# line on stdin, joins them all and says so, then stays until killed
JOINER = [sys.executable, "-c",
          "import ctypes, sys, threading, time\n"
          f"ctypes.CDLL(None).prctl(15, b'{TCOMM}', 0, 0, 0)\n"
          "go = threading.Event()\n"
          f"ts = [threading.Thread(target=go.wait) for _ in range({THREADS})]\n"
          "for t in ts: t.start()\n"
          "print('started', flush=True)\n"
          "sys.stdin.readline()\n"
          "go.set()\n"
          "for t in ts: t.join()\n"
          "print('joined', flush=True)\n"
          "time.sleep(600)\n"]


def _live_cache(frame: list[str], cache: str) -> int:
    """The LIVE column of a cache's row (0 without one); a merged cache's row is named
    by all its names, the events' own first."""
    rows = [l for l in frame if l.split()[:1] and l.split()[0].split("|")[0] == cache]
    assert len(rows) <= 1, frame
    return int(rows[0].split()[-3].replace(",", "")) if rows else 0


def test_top_comm_sees_the_joined_threads_freed(kernel, tmp_path):
    """top limited to a comm: the joined threads' task_structs are freed in RCU
    callbacks, in whatever task runs then; top sees those frees (its second instance
    records every context) and their LIVE goes back to 0."""
    top = TopRun("--by", "cache", "-n", "0.5", "--comm", TCOMM, "--top", "200")
    joiner = None
    try:
        joiner = subprocess.Popen(JOINER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        assert joiner.stdout.readline().strip() == "started"
        # every thread alive and seen...
        top.until(lambda t: _live_cache(_frames(t)[-1], "task_struct") >= THREADS,
                  "threads seen")
        joiner.stdin.write("go\n")
        joiner.stdin.flush()
        assert joiner.stdout.readline().strip() == "joined"
        # ...then every one freed, by whoever ran the RCU callbacks
        top.until(lambda t: _live_cache(_frames(t)[-1], "task_struct") == 0, "threads freed")
        err = top.finish()
    finally:
        if joiner is not None:
            joiner.kill()
            joiner.wait()
        top.close()
    assert "lost 0 events" in err, err
