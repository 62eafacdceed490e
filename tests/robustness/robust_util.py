"""Helpers of the robustness suite: run ftslab as a separate process, hold it at a
named point (ftslab/_testhook.py), look for what it left, and log figures.

Figures: when FTSLAB_ROBUSTNESS_FIGURES names a file, every test appends JSON lines to
it (runs killed by signal and phase, leftovers found, fuzz cases, faults injected);
tests/robustness/figures.py sums them up for the README.
"""
from __future__ import annotations

import json
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
