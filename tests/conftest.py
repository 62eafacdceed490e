"""Shared fixtures.

Kernel tests need root and a mounted tracefs.  Outside CI they skip when those are
missing; with FTSLAB_KERNEL_TESTS=1 (set by .ci/run) a missing capability FAILS.
Every kernel test also checks that nothing of ftslab is left in tracefs afterwards.
Every test that asks for ``kernel``, ``root`` or ``toplevel_expanded`` (directly or
through another fixture) gets the ``kernel`` marker here; tests that read the running
kernel's files without those fixtures carry it by hand.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tests mirror the package's folders; the few helpers one test module takes from another
# (fixtures, fakes, replayed sessions) are found by module name, whatever folder holds them.
_TESTS = Path(__file__).resolve().parent
for _d in ("kernel", "trace", "session", "analysis", "cli", "robustness"):
    if str(_TESTS / _d) not in sys.path:
        sys.path.insert(1, str(_TESTS / _d))

from toplevel import expand_toplevel_buffer, restore_toplevel, toplevel_state  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TRACEFS = Path(os.environ.get("FTSLAB_TRACEFS", "/sys/kernel/tracing"))
KERNEL_TESTS = os.environ.get("FTSLAB_KERNEL_TESTS") == "1"

# The guest suite runs inside the QEMU guests that tests/vm/test_vm_kernels.py boots (it
# sets FTSLAB_GUEST_KERNEL there); on the host it is not collected, rather than skipped.
collect_ignore = [] if os.environ.get("FTSLAB_GUEST_KERNEL") else ["vm/guest"]


def real_text_dataset(name: str):
    """A real 6.18 text capture (tests/fixtures/6.18/NAME) parsed with its format files."""
    from ftslab.trace import formats as formats_mod
    from ftslab.trace import textparse
    fix = FIXTURES / "6.18"
    fmts = {}
    for p in fix.glob("kmem-*.format"):
        f = formats_mod.parse_format(p.read_text(), "kmem")
        fmts[f.name] = f
    return textparse.parse_text((fix / name).read_text(), formats=fmts)


def _kernel_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not (TRACEFS / "events").is_dir():
        return f"tracefs not mounted at {TRACEFS}"
    if not (TRACEFS / "events/kmem/kmalloc").is_dir():
        return "kernel lacks kmem tracepoints"
    return None


def ftslab_leftovers() -> list[str]:
    try:
        names = os.listdir(TRACEFS / "instances")
    except OSError:
        return []
    return sorted(n for n in names if n.startswith("ftslab_"))


def run_tracecmd(argv, **kw) -> subprocess.CompletedProcess:
    """Run trace-cmd and undo what it leaves on the top-level buffer (on this kernel it
    only works with -k, which keeps its settings: tracing_on=0 and its events on)."""
    state = toplevel_state()
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kw)
    finally:
        restore_toplevel(state)


@pytest.fixture
def kernel():
    """Root + tracefs, or skip (fail under FTSLAB_KERNEL_TESTS=1).  Checks afterwards that
    no ftslab instance is left and that the top-level buffer's settings are unchanged."""
    problem = _kernel_problem()
    if problem:
        if KERNEL_TESTS:
            pytest.fail(f"FTSLAB_KERNEL_TESTS=1 but {problem}")
        pytest.skip(problem)
    before = set(ftslab_leftovers())
    top = toplevel_state()
    yield TRACEFS
    left = sorted(set(ftslab_leftovers()) - before)
    assert not left, f"ftslab left tracefs instances behind: {left}"
    changed = {k for k, v in toplevel_state().items() if top.get(k) != v}
    assert not changed, f"top-level tracing settings changed: {sorted(changed)}"


@pytest.fixture
def root():
    """Root (for a check of what root is told, on a fake tracefs), or skip (fail under
    FTSLAB_KERNEL_TESTS=1)."""
    if os.geteuid() != 0:
        if KERNEL_TESTS:
            pytest.fail("FTSLAB_KERNEL_TESTS=1 but not root")
        pytest.skip("needs root")


#: fixtures that make a test a kernel test (the marker follows them through other fixtures)
KERNEL_FIXTURES = frozenset({"kernel", "root", "toplevel_expanded"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if KERNEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture
def toplevel_expanded():
    """For tests that run another tool (trace-cmd) on the top-level buffer: request it
    BEFORE ``kernel`` so the expansion that tool makes on a fresh boot, which cannot be
    undone, happens before ``kernel`` takes its snapshot."""
    if _kernel_problem() is None:
        expand_toplevel_buffer()


def need_tool(name: str) -> str:
    import shutil
    path = shutil.which(name)
    if not path:
        if KERNEL_TESTS:
            pytest.fail(f"FTSLAB_KERNEL_TESTS=1 but {name} is not installed")
        pytest.skip(f"{name} not installed")
    return path


def run_ftslab(*args, check=False, timeout=120, input=None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (a separate process)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cp = subprocess.run([sys.executable, "-m", "ftslab", *map(str, args)], capture_output=True,
                        text=True, timeout=timeout, env=env, input=input, **kw)
    if check and cp.returncode != 0:
        raise AssertionError(f"ftslab {' '.join(map(str, args))} -> {cp.returncode}\n"
                             f"stdout: {cp.stdout[-2000:]}\nstderr: {cp.stderr[-2000:]}")
    return cp


def popen_ftslab(*args, extra_env: dict | None = None, **kw) -> subprocess.Popen:
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "ftslab", *map(str, args)],
                            env=env, **kw)


def as_nobody(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in a forked child that dropped to uid/gid 65534 (nobody).

    Forked rather than exec'ed: this machine's Python lives under /root, which nobody
    cannot read; the parent has already imported everything the CLI needs."""
    import importlib
    import pkgutil
    import ftslab
    for m in pkgutil.walk_packages(ftslab.__path__, "ftslab."):
        if m.name != "ftslab.__main__":
            importlib.import_module(m.name)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.dup2(w, 2)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            code = ftslab.cli.entry.main(argv)
        except BaseException:
            code = 99
        os._exit(code)
    os.close(w)
    err = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        err += b
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err.decode()


def make_fake_tracefs(tmp_path) -> Path:
    """A tracefs tree for control-path tests: the real 6.18 kmem format files and page
    headers, an empty instances/ (writes are intercepted by the tests)."""
    import shutil
    root = tmp_path / "tracing"
    six = FIXTURES / "6.18"
    for ev in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
               "mm_page_free"):
        d = root / "events" / "kmem" / ev
        d.mkdir(parents=True)
        shutil.copy(six / f"kmem-{ev}.format", d / "format")
    shutil.copy(six / "header_page", root / "events" / "header_page")
    shutil.copy(six / "header_event", root / "events" / "header_event")
    (root / "instances").mkdir()
    return root
