"""Snapshot and restore the top-level tracing buffer's settings.

ftslab never changes them (the ``kernel`` fixture asserts that); trace-cmd 3.1.6 on a
kernel without function tracing only works as ``record -d -k``, which leaves its
settings behind, so tests and benchmarks that run it put them back with this.
"""
from __future__ import annotations

import os
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


def _write(path: Path, text: str, append: bool = False) -> None:
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
            _write(path, "")
            for line in val.split():
                _write(path, line, append=True)
        elif key == "trace_clock":
            clock = val[val.index("[") + 1:val.index("]")] if "[" in val else val.strip()
            _write(path, clock)
        elif key == "current_tracer" or key == "set_event_pid":
            _write(path, val.strip())
        elif key == "buffer_size_kb":
            _write(path, val.split()[0])
        else:
            _write(path, val.strip())


