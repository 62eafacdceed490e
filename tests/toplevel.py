"""Snapshot and restore the top-level tracing buffer's settings; stand in for another
tracer's instance; wait for a session's own instance to trace.

ftslab never changes the top level's settings (the ``kernel`` fixture asserts that);
trace-cmd 3.1.6 on a kernel without function tracing only works as ``record -d -k``,
which leaves its settings behind, so tests and benchmarks that run it put them back
with this.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

TRACEFS = Path(os.environ.get("FTSLAB_TRACEFS", "/sys/kernel/tracing"))

_TOP_FILES = ("tracing_on", "buffer_size_kb", "current_tracer", "set_event", "trace_clock",
              "set_event_pid", "tracing_cpumask", "buffer_percent")


def toplevel_state() -> dict[str, str]:
    """The top-level buffer's settings (ftslab must never change them)."""
    state = {}
    for name in _TOP_FILES:
        try:
            state[name] = (TRACEFS / name).read_text()
        except OSError:
            pass
    opts = TRACEFS / "options"
    if opts.is_dir():
        for o in sorted(os.listdir(opts)):
            try:
                state["options/" + o] = (opts / o).read_text()
            except OSError:
                pass
    return state


def _expanded_size(val: str) -> str:
    """The size a buffer_size_kb text stands for: "7 (expanded: 1408)" -> "1408".

    On a fresh boot the top-level buffer is only allocated at its configured size when a
    tracer first uses it; until then the file shows both figures."""
    if "(expanded:" in val:
        return val.split("(expanded:")[1].strip(" )\n")
    return val.split()[0]


def expand_toplevel_buffer() -> None:
    """Do, before a test's snapshot, the one thing a tool on the top level does that can't
    be put back: allocate the top-level buffer at its configured size.

    trace-cmd on the top level turns "7 (expanded: 1408)" into "1408" and the kernel has
    no way back (the flag is only ever set).  A test that runs such a tool calls this
    first, so its before/after comparison is between like states; every other test keeps
    the unexpanded text and so would catch ftslab expanding the top level."""
    path = TRACEFS / "buffer_size_kb"
    val = path.read_text()
    if "(expanded:" in val:
        write_file(path, _expanded_size(val))


def write_file(path: Path, text: str, append: bool = False) -> None:
    """One write(2) of ``text`` (a tracefs file takes a write as one command)."""
    fd = os.open(path, os.O_WRONLY | (os.O_APPEND if append else os.O_TRUNC))
    try:
        if text:
            os.write(fd, text.encode())
    finally:
        os.close(fd)


def restore_toplevel(state: dict[str, str]) -> None:
    """Put back what another tool (trace-cmd record -d -k) changed on the top level."""
    now = toplevel_state()
    for key, val in state.items():
        if now.get(key) == val:
            continue
        path = TRACEFS / key
        if key == "set_event":
            write_file(path, "")
            for line in val.split():
                write_file(path, line, append=True)
        elif key == "trace_clock":
            clock = val[val.index("[") + 1:val.index("]")] if "[" in val else val.strip()
            write_file(path, clock)
        elif key == "current_tracer" or key == "set_event_pid":
            write_file(path, val.strip())
        elif key == "buffer_size_kb":
            # the size it stands for, never the pre-expansion 7 KB placeholder
            write_file(path, _expanded_size(val))
        else:
            write_file(path, val.strip())


def wait_tracing_on(proc: subprocess.Popen, timeout: float = 60) -> Path:
    """Wait until the ftslab process ``proc`` traces: its instance (``ftslab_<pid>``)
    has events enabled and tracing_on reads 1.  The instance appears well before that:
    the buffers are allocated, the spool fsynced and kallsyms compressed first, which
    takes from milliseconds to seconds on a loaded machine.  (A new instance starts with
    tracing_on at 1 until ftslab turns it off to set up: the events tell that moment
    from the real start, since they are enabled with tracing off.)  Returns the
    instance's directory; fails if ``proc`` ends first or ``timeout`` (a hang guard)
    passes."""
    inst = TRACEFS / "instances" / f"ftslab_{proc.pid}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ((inst / "tracing_on").read_text().strip() == "1"
                    and (inst / "set_event").read_text().strip()):
                return inst
        except OSError:
            pass
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"ftslab ended (rc {proc.returncode}) before tracing: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{inst.name} did not start tracing in {timeout:g} s")
        time.sleep(0.02)


@contextlib.contextmanager
def other_instance(events, marker: str | None = None):
    """Another tool's instance, ``othertool_<pid>`` (not ftslab_*: ftslab would take it
    for its own leftover), with the kmem ``events`` enabled and tracing off, as
    `trace-cmd record -k` leaves the top level; ``marker`` is written into its buffer
    first.  Its events are switched off and it is removed at the end."""
    inst = TRACEFS / "instances" / f"othertool_{os.getpid()}"
    os.mkdir(inst)
    try:
        if marker is not None:
            write_file(inst / "trace_marker", marker + "\n")
        write_file(inst / "tracing_on", "0")
        for ev in events:
            write_file(inst / "events" / "kmem" / ev / "enable", "1")
        yield inst
    finally:
        for ev in events:
            try:
                write_file(inst / "events" / "kmem" / ev / "enable", "0")
            except OSError:
                pass
        os.rmdir(inst)
