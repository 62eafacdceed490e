"""Control-path tests of a session's setup and cleanup, on a fake tracefs tree.

The tree is made of the real format files of 6.18 (tests/fixtures/6.18).  Writes are
recorded instead of reaching a kernel, and a refusal is injected at every step in turn:
what was done must be undone, newest first, and the instance removed last.  (The same
paths run against the real kernel in test_kernel_record.py.)
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftslab import errors
from ftslab.session import engine
from ftslab.session import run
from ftslab.session import signals
from ftslab.session.options import SessionOptions
from ftslab.session.engine import Session
from ftslab.errors import KernelWriteError, TracefsUnavailable, UsageError, PermissionDenied
from ftslab.kernel.tracefs import Tracefs
from ftslab.kernel.undo import UndoStack
from conftest import make_fake_tracefs

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
EVENTS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
          "mm_page_free")


@pytest.fixture
def fake_tracefs(tmp_path):
    return make_fake_tracefs(tmp_path)


class _Recorder:
    """Replaces Tracefs._write: logs every write, refuses the Nth."""

    def __init__(self, fail_at: int | None):
        self.fail_at = fail_at
        self.log: list[tuple[str, str]] = []
        self.count = 0

    def __call__(self, tfs, rel, text, append=True, instance=None, hint=None):
        self.count += 1
        if self.count == self.fail_at:
            raise KernelWriteError(str(tfs.root / rel), text, "EINVAL", "injected")
        self.log.append((rel, text))


def _setup(fake_tracefs, monkeypatch, fail_at, **opts):
    rec = _Recorder(fail_at)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **k: rec(self, *a, **k))
    tfs = Tracefs(fake_tracefs)
    warnings: list[str] = []
    session = Session(tfs, warnings.append, name="ftslab_999999")
    steps = session.plan(SessionOptions(**opts), child_pid=4194305)
    return rec, session, steps, warnings


def test_plan_is_every_write_in_order(fake_tracefs, monkeypatch):
    rec, session, steps, _ = _setup(fake_tracefs, monkeypatch, None, comm="nginx",
                                    min_size=64)
    paths = [s.path for s in steps]
    assert paths[0] == "instances/ftslab_999999"
    assert "instances/ftslab_999999/set_event_pid" in paths
    pid_step = steps[paths.index("instances/ftslab_999999/set_event_pid")]
    assert pid_step.value == "4194305"
    f = {s.path.split("/")[-2]: s.value for s in steps if s.path.endswith("/filter")}
    assert f["kmalloc"] == '(comm == "nginx") && (bytes_req >= 64)'
    assert f["kfree"] == 'comm == "nginx"'
    # filters before enables: no unfiltered event ever reaches the buffer
    first_enable = min(i for i, p in enumerate(paths) if p.endswith("/enable"))
    assert all(i < first_enable for i, p in enumerate(paths) if p.endswith("/filter"))


def test_full_setup_then_close_undoes_in_reverse(fake_tracefs, monkeypatch):
    rec, session, steps, _ = _setup(fake_tracefs, monkeypatch, None)
    session.apply(steps)
    inst = fake_tracefs / "instances" / "ftslab_999999"
    assert inst.is_dir()
    done = list(rec.log)
    rec.log.clear()
    assert session.close() == []
    undo = [(s.path, s.undo_value) for s in steps
            if s.value is not None and s.undo_value is not None]
    assert rec.log == list(reversed(undo))
    assert not inst.exists()
    assert len(done) == len([s for s in steps if s.value is not None])


def test_refusal_at_every_step_is_undone(fake_tracefs, monkeypatch):
    _rec, _s, steps, _ = _setup(fake_tracefs, monkeypatch, None, pids=(1,))
    n_writes = len([s for s in steps if s.value is not None])
    for k in range(1, n_writes + 1):
        rec, session, steps, _ = _setup(fake_tracefs, monkeypatch, k, pids=(1,))
        with pytest.raises(KernelWriteError):
            session.apply(steps)
        applied = rec.log[:]
        rec.log.clear()
        session.close()
        writes = [s for s in steps if s.value is not None]
        expected = [(s.path, s.undo_value)
                    for s in writes[:k - 1] if s.undo_value is not None]
        assert rec.log == list(reversed(expected)), k
        assert len(applied) == k - 1
        assert not (fake_tracefs / "instances" / "ftslab_999999").exists(), k


def test_undo_runs_every_step_even_after_a_failure():
    ran, warned = [], []
    u = UndoStack(warned.append)
    u.push("a", lambda: ran.append("a"))
    u.push("b", lambda: (_ for _ in ()).throw(OSError("EBUSY")))
    u.push("c", lambda: ran.append("c"))
    failures = u.unwind()
    assert ran == ["c", "a"]
    assert len(failures) == 1 and "b" in failures[0] and warned == failures
    assert len(u) == 0


def test_interrupt_during_setup_unwinds(fake_tracefs, monkeypatch):
    """A signal that arrives after some writes raises Interrupted; close() undoes them."""
    rec, session, steps, _ = _setup(fake_tracefs, monkeypatch, None)
    real = Tracefs._write

    calls = {"n": 0}

    def interrupting(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise signals.Interrupted(2)
        return real(self, *a, **k)

    monkeypatch.setattr(Tracefs, "_write", interrupting)
    with pytest.raises(signals.Interrupted):
        session.apply(steps)
    session.close()
    assert not (fake_tracefs / "instances" / "ftslab_999999").exists()


def test_unknown_event_is_a_usage_error(fake_tracefs):
    session = Session(Tracefs(fake_tracefs), lambda m: None, name="ftslab_999999")
    with pytest.raises(UsageError, match="no such event kmem:nope"):
        session.plan(SessionOptions(events=("kmem:nope",)))


def test_tracefs_not_mounted(tmp_path):
    empty = tmp_path / "tracing"
    empty.mkdir()
    if os.geteuid() == 0:
        with pytest.raises(TracefsUnavailable, match="not mounted"):
            Tracefs.locate(str(empty))
    else:
        with pytest.raises(PermissionDenied):
            Tracefs.locate(str(empty))


def test_stale_instances_are_named(fake_tracefs):
    # a pid that cannot exist (pid_max is at most 2^22)
    (fake_tracefs / "instances" / "ftslab_99999999").mkdir()
    (fake_tracefs / "instances" / f"ftslab_{os.getpid()}").mkdir()
    (fake_tracefs / "instances" / "someone_else").mkdir()
    tfs = Tracefs(fake_tracefs)
    assert tfs.stale_instances() == [("ftslab_99999999", 99999999)]
    msgs: list[str] = []
    engine.report_stale(tfs, msgs.append)
    assert len(msgs) == 1 and "ftslab_99999999" in msgs[0] and "ftslab reset" in msgs[0]


def test_cache_option_records_only_events_with_a_cache_name(fake_tracefs, monkeypatch):
    rec, session, steps, warnings = _setup(fake_tracefs, monkeypatch, None, cache="filp")
    enabled = {s.path.split("/")[-2] for s in steps if s.path.endswith("/enable")}
    assert enabled == {"kmem_cache_alloc", "kmem_cache_free"}
    assert any("not recording" in w and "kmem:kmalloc" in w for w in warnings)
    assert set(session.formats) == {("kmem", "kmem_cache_alloc"), ("kmem", "kmem_cache_free")}


def test_min_size_filters_pages_by_order(fake_tracefs, monkeypatch):
    _rec, _session, steps, warnings = _setup(fake_tracefs, monkeypatch, None, min_size=16384)
    f = {s.path.split("/")[-2]: s.value for s in steps if s.path.endswith("/filter")}
    assert f["kmalloc"] == "bytes_req >= 16384"
    assert f["mm_page_alloc"] == "order >= 2"  # 4096 << 2 == 16384
    assert "kfree" not in f and any("carry no size" in w for w in warnings)


def test_whole_system_session_excludes_itself(fake_tracefs, monkeypatch):
    (fake_tracefs / "set_event_notrace_pid").write_text("")
    rec = _Recorder(None)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **k: rec(self, *a, **k))
    session = Session(Tracefs(fake_tracefs), lambda m: None, name="ftslab_999999")
    steps = session.plan(SessionOptions())
    st = [s for s in steps if s.path.endswith("set_event_notrace_pid")]
    assert st and st[0].value.split()[0] == str(os.getpid())
    # the kernel matches threads: all of this process's, and the ones started later
    assert set(st[0].value.split()) == set(os.listdir("/proc/self/task"))
    fork = [s for s in steps if s.path.endswith("options/event-fork")]
    assert fork and (fork[0].value, fork[0].undo_value) == ("1", "0")
    assert steps.index(fork[0]) < steps.index(st[0])
    steps = session.plan(SessionOptions(), child_pid=4194305)  # a command: no need
    assert not [s for s in steps if s.path.endswith("set_event_notrace_pid")]


def test_signal_during_setup_is_reported_not_silent(fake_tracefs, monkeypatch):
    """SIGTERM before recording started: everything undone, and an error saying nothing
    was recorded (exit 128+15), never a silent success."""
    import signal as sig
    calls = {"n": 0}

    def refusing(self, rel, text, append=True, instance=None, hint=None):
        calls["n"] += 1
        if calls["n"] == 3:
            signals.stop_requested.append(sig.SIGTERM)
            raise signals.Interrupted(sig.SIGTERM)

    monkeypatch.setattr(Tracefs, "_write", refusing)
    try:
        with pytest.raises(errors.Stopped) as exc:
            run.run_session(Tracefs(fake_tracefs), SessionOptions(), lambda m: None,
                                lambda t, f: None, lambda s: None, {})
    finally:
        signals.stop_requested.clear()  # the stop is this test's, not the next one's
    assert exc.value.exit_code == 128 + 15
    assert "before recording started" in str(exc.value)
    assert not [p for p in (fake_tracefs / "instances").iterdir()]
    assert sig.getsignal(sig.SIGTERM) == sig.SIG_DFL  # the caller's handler is back
