"""Tests that run INSIDE a Debian kernel booted by tests/vm/vmrun.py.

tests/vm/test_vm_kernels.py boots each kernel and runs this directory there with
FTSLAB_GUEST_KERNEL set to the kernel's short name.  Anywhere else (the host, which has
no kprobes) every test here skips: they define kprobes and would test the wrong kernel.

Each test checks that nothing ftslab-made (a kprobe, a dynamic event, an instance, an
event group) is left in tracefs afterwards.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .vmfacts import KERNEL, TRACEFS, Facts, ftslab_leftovers, read_facts

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session", autouse=True)
def _guest_only():
    # session scope: decided before any module fixture could run ftslab on the host
    if not KERNEL:
        pytest.skip("guest test: runs inside a QEMU guest (tests/vm/test_vm_kernels.py "
                    "sets FTSLAB_GUEST_KERNEL there)")
    _settle_toplevel_buffer_display()


def _settle_toplevel_buffer_display() -> None:
    """On 6.1 the top-level `buffer_size_kb` reads "7 (expanded: 1408)" after boot, and
    the first resize of ANY instance's buffer clears the kernel's global
    ring_buffer_expanded flag, so the top level then reads "7": tests/conftest.py's
    "top-level settings unchanged" check would blame the first test that records.
    Resize a scratch instance once, before the tests (6.12 keeps the flag per buffer
    and is unaffected).  Nothing at the top level is written."""
    scratch = TRACEFS / "instances" / "vmtest_scratch"
    if "expanded" not in (TRACEFS / "buffer_size_kb").read_text():
        return
    scratch.mkdir()
    try:
        fd = os.open(scratch / "buffer_size_kb", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, b"8")
        finally:
            os.close(fd)
    finally:
        scratch.rmdir()


@pytest.fixture(autouse=True)
def _nothing_left(_guest_only):
    before = ftslab_leftovers()
    yield
    after = ftslab_leftovers()
    assert after == before, f"ftslab left this in tracefs: {after}"


@pytest.fixture(scope="session")
def expect(_guest_only) -> Facts:
    """What this kernel says about itself (vmfacts.py: read here, not written down)."""
    return read_facts()


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, **(extra or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ftslab_run(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """ftslab as a user runs it: a separate process (the checkout's package)."""
    return subprocess.run([sys.executable, "-m", "ftslab", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=_env(), **kw)


def ftslab_popen(*args, env: dict | None = None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ftslab", *map(str, args)],
                            env=_env(env), **kw)


@pytest.fixture(scope="session")
def ftslab():
    """Run ftslab: ``ftslab("doctor", "--format", "json")`` -> CompletedProcess."""
    return ftslab_run


@pytest.fixture(scope="session")
def ftslab_spawn():
    return ftslab_popen
