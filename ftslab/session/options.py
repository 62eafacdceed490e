"""What a session is asked to do (``SessionOptions``), its planned tracefs writes
(``Step``), and what a recording returns (``RecordResult``).

Plain data and the parsing of event specs: no I/O.  The CLI fills ``SessionOptions``
(cli/options.py); ``engine.Session`` turns them into steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftslab.errors import UsageError
from ftslab.events import DEFAULT_EVENTS
from ftslab.trace.cpustats import CpuStats

__all__ = ["SessionOptions", "Step", "parse_event_spec", "RecordResult"]


def parse_event_spec(spec: str) -> tuple[str, str]:
    sysname, sep, name = spec.partition(":")
    if not sep:
        sysname, name = "kmem", spec
    if not (sysname.replace("_", "").isalnum() and name.replace("_", "").isalnum()):
        raise UsageError(f"invalid event {spec!r}: expected SYSTEM:EVENT, e.g. kmem:kmalloc")
    return sysname, name


@dataclass
class SessionOptions:
    events: tuple[str, ...] = DEFAULT_EVENTS
    duration: float | None = None
    output: Path = Path("ftslab.dat")
    pids: tuple[int, ...] = ()
    comm: str | None = None
    buffer_kb: int = 8192
    command: tuple[str, ...] = ()
    system_wide: bool = False
    filters: tuple[str, ...] = ()
    min_size: int | None = None
    cache: str | None = None
    status: bool = True
    command_stdout_to_stderr: bool = False
    """stream: the command's output must not mix with the data on stdout."""
    kprobes: str = "auto"
    """``on``: kprobe events on the kmalloc family too (error if the kernel has none);
    ``auto``: where the kernel has kprobe_events; ``off``: tracepoints only; ``only``:
    kprobe events and no tracepoints."""
    cache_name_offset: int | None = None
    """offsetof(struct kmem_cache, name) given by the user (default: from BTF)."""
    kprobe_families: tuple[str, ...] | None = None
    """Family members to probe (events.FAMILY names); None: the default set."""
    kprobe_symbols: tuple[str, ...] = ()
    """Extra functions to probe as they are."""
    bulk_frees: bool = True
    """Where kprobes are used with the tracepoints: probe kmem_cache_free_bulk too, so
    that objects freed in bulk (no kmem free event) are seen freed."""
    stacks: bool = False
    """Record the kernel stack of every allocation event (the ``stacktrace`` trigger)."""
    system_frees: bool = False
    """Record the free events in a second instance, for the whole system and in every
    context, so that an object the recorded tasks allocated and something else freed
    (an RCU callback, an interrupt, a workqueue, another task) is seen freed.  False:
    frees in the same instance as the allocations, as its task limits and filters let
    them through (LIVE of a task-limited recording is then an upper bound)."""
    settle: float = 0.0
    """Seconds the free events keep being recorded after the allocations stop (the
    command exited, -d ran out, a stop signal): deferred frees (RCU, workqueues, I/O
    completion) of what was allocated are then seen."""


@dataclass
class Step:
    """One planned tracefs change."""

    what: str
    path: str
    """Relative to the tracefs root."""
    value: str | None
    """What is written (None: mkdir)."""
    undo_value: str | None = None
    """What undoes it (None with value None: rmdir)."""
    hint: str | None = None
    """What to tell the user if the kernel refuses it."""
    kind: str = ""
    """``""``: a write into the instance (or mkdir when value is None); ``kprobe``: a
    definition appended to the global kprobe_events; ``verify``: check that the cache
    names the probes read are this kernel's (no write of its own)."""
    params: tuple[str, ...] = ()
    """The parameters the hint names (errors.FtslabError.params)."""


@dataclass
class RecordResult:
    output: Path
    events_estimate: int
    lost: int
    duration: float
    bytes_written: int
    stats: list[CpuStats]
    interrupted_by: str | None
    child_status: int | None
    frees_events_estimate: int | None = None
    """Events of the frees instance (None: the session had none)."""
