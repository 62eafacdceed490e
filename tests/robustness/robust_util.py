"""Helpers of the robustness suite: run ftslab as a separate process, hold it at a
named point (ftslab/testhook.py), look for what it left, and log figures.

Figures: when FTSLAB_ROBUSTNESS_FIGURES names a file, every test appends JSON lines to
it (runs killed by signal and phase, leftovers found, fuzz cases, faults injected);
tests/robustness/figures.py sums them up for the README.
"""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRACEFS = Path(os.environ.get("FTSLAB_TRACEFS", "/sys/kernel/tracing"))


def figure(kind: str, **fields) -> None:
    path = os.environ.get("FTSLAB_ROBUSTNESS_FIGURES")
    if not path:
        return
    with open(path, "a") as f:
        f.write(json.dumps({"kind": kind, **fields}) + "\n")


def env_for(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["FTSLAB_RUN_DIR"] = str(tmp_path / "run")  # this test's registry of spools
    env.pop("FTSLAB_TEST_PAUSE", None)
    env.pop("FTSLAB_TEST_PAUSE_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ftslab_argv(*args) -> list[str]:
    return [sys.executable, "-m", "ftslab", *map(str, args)]


def run(tmp_path: Path, *args, timeout: float = 120, input=None, **extra_env
        ) -> subprocess.CompletedProcess:
    return subprocess.run(ftslab_argv(*args), capture_output=True, text=True,
                          timeout=timeout, input=input, env=env_for(tmp_path, **extra_env))


def spawn(tmp_path: Path, *args, pause: str | None = None, stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, **extra_env) -> tuple[subprocess.Popen, Path]:
    """Start ftslab; with ``pause`` it holds at that point (see wait_paused)."""
    marker = tmp_path / f"paused-{time.monotonic_ns()}"
    env = env_for(tmp_path, **extra_env)
    if pause is not None:
        env["FTSLAB_TEST_PAUSE"] = pause
        env["FTSLAB_TEST_PAUSE_FILE"] = str(marker)
    p = subprocess.Popen(ftslab_argv(*args), stdout=stdout, stderr=stderr, env=env,
                         text=True)
    return p, marker


def wait_paused(p: subprocess.Popen, marker: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if p.poll() is not None:
            out, err = p.communicate()
            raise AssertionError(f"ftslab ended (rc {p.returncode}) before its pause: {err}")
        if time.monotonic() > deadline:
            p.kill()
            raise AssertionError("ftslab never reached its pause point")
        time.sleep(0.01)


def instances_of(pid: int) -> list[str]:
    try:
        names = os.listdir(TRACEFS / "instances")
    except OSError:
        return []
    return [n for n in names if n == f"ftslab_{pid}" or n.startswith(f"ftslab_{pid}_")]


def ftslab_instances() -> list[str]:
    try:
        return sorted(n for n in os.listdir(TRACEFS / "instances") if n.startswith("ftslab_"))
    except OSError:
        return []


def ftslab_probes() -> list[str]:
    """ftslab kprobe events (none can exist on a kernel without kprobes)."""
    try:
        text = (TRACEFS / "kprobe_events").read_text()
    except OSError:
        return []
    return [l for l in text.splitlines() if ":ftslab_" in l]


def enabled_toplevel_events() -> list[str]:
    try:
        return (TRACEFS / "set_event").read_text().split()
    except OSError:
        return []


def spools_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if ".ftslab-spool-" in p.name)


class Allocations:
    """A background thread that makes the kernel allocate (opens /dev/null), so that a
    whole-system recording of a fraction of a second has events in it."""

    def __init__(self, per_second: int = 2000):
        self.period = 1.0 / per_second
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            for _ in range(20):
                os.close(os.open("/dev/null", os.O_RDONLY))
            time.sleep(self.period * 20)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join()


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# -- what a cut recording must still hold (the fuzz tests' oracles) ----------------------

#: an event line of a kernel text trace: "comm-pid [cpu] flags ts: event: ..." (a loss
#: marker "CPU:N [LOST M EVENTS]" and comments are not events)
EVENT_LINE = re.compile(r"^\s*.+-\d+\s+(\(\s*[\d-]+\)\s+)?\[\d+\]\s.*?\d+\.\d+: (\w+): ")


def text_event_names(lines: list[str]) -> list[str | None]:
    """For each line of a text trace, the name of the event it holds, or None."""
    out = []
    for line in lines:
        m = EVENT_LINE.match(line)
        out.append(m.group(2) if m else None)
    return out


def page_event_counts(td, cpu: int, pages: bytes) -> list[int]:
    """Events of known formats on each whole page of one CPU's raw pages, each page
    walked alone (a page's timestamps are relative to its own header)."""
    from ftslab.trace import pages as pages_mod
    from ftslab.trace.formats import parse_header_event, parse_header_page
    from ftslab.trace.loader import formats_of
    hp, he = parse_header_page(td.header_page), parse_header_event(td.header_event)
    known = set(formats_of(td))
    ps = td.buffer_page_size
    out = []
    for i in range(len(pages) // ps):
        walk = pages_mod.walk_pages(pages[i * ps:(i + 1) * ps], cpu, hp, he, ps)
        out.append(0 if walk.ids is None else sum(1 for e in walk.ids.tolist() if e in known))
    return out


def v6_page_cuts(path: Path) -> list[tuple[int, int]]:
    """(cut offset, events a load of the first ``offset`` bytes must hold) for an
    uncompressed v6 trace.dat: each CPU's pages lie one after the other in the file,
    and a cut keeps the whole pages before it.  Cuts at every page boundary, and one
    byte into every page."""
    from ftslab.trace.tracedat_read import read_tracedat
    td = read_tracedat(path)
    assert td.version == 6 and td.compression is None, path
    data = path.read_bytes()
    ps = td.buffer_page_size
    regions = []
    for cpu, pages in sorted(td.cpu_data.items()):
        at = data.find(pages[:ps])
        assert at >= 0 and data[at:at + len(pages)] == pages, (path, cpu)
        regions.append((at, page_event_counts(td, cpu, pages)))
    regions.sort()
    cuts = []
    for k, (at, counts) in enumerate(regions):
        before = sum(sum(c) for _a, c in regions[:k])
        for i in range(len(counts) + 1):
            whole = before + sum(counts[:i])
            cuts.append((at + i * ps, whole))
            if i < len(counts):
                cuts.append((at + i * ps + 1, whole))
    return cuts
