"""The undo stack (ftslab/kernel/undo.py): last in, first out; every step runs even when an
earlier one fails; each failure is warned once and returned; stop signals that arrive
while it unwinds are held off until it is done, then delivered.  No root needed."""
from __future__ import annotations

import signal
import threading

import pytest

from ftslab.kernel import undo
from ftslab.kernel.undo import UndoStack, defer_signal, signals_deferred


def _fail(exc: Exception):
    def step():
        raise exc
    return step


def test_lifo_order_and_describe():
    ran: list[str] = []
    u = UndoStack()
    for name in ("mkdir instance", "buffer_size_kb", "filter", "enable"):
        u.push(name, lambda name=name: ran.append(name))
    assert len(u) == 4
    assert u.describe() == ["enable", "filter", "buffer_size_kb", "mkdir instance"]
    assert u.unwind() == []
    assert ran == ["enable", "filter", "buffer_size_kb", "mkdir instance"]
    assert len(u) == 0 and u.describe() == []


def test_every_step_runs_when_earlier_ones_fail():
    ran: list[str] = []
    warned: list[str] = []
    u = UndoStack(warned.append)
    u.push("rmdir instance", lambda: ran.append("rmdir"))
    u.push("disable kmalloc", _fail(OSError(16, "Device or resource busy")))
    u.push("clear filter", lambda: ran.append("filter"))
    u.push("remove kprobe", _fail(PermissionError(1, "Operation not permitted")))
    u.push("tracing_on 0", lambda: ran.append("off"))
    failures = u.unwind()
    assert ran == ["off", "filter", "rmdir"]
    # newest first, one each, what and why, passed to warn as they happened
    assert failures == [
        "cleanup step failed: remove kprobe: [Errno 1] Operation not permitted",
        "cleanup step failed: disable kmalloc: [Errno 16] Device or resource busy"]
    assert warned == failures == u.failures
    assert len(u) == 0


def test_a_failing_last_step_still_leaves_nothing_pending():
    u = UndoStack()
    u.push("only", _fail(ValueError("bad")))
    assert u.unwind() == ["cleanup step failed: only: bad"]
    assert len(u) == 0
    ran = []
    u.push("later", lambda: ran.append(1))  # the stack is reusable; steps run once
    u.unwind()
    assert ran == [1] and len(u) == 0


def test_steps_pushed_while_unwinding_run_too():
    """An undo that needs an undo of its own (e.g. re-enabling to disable) pushes it:
    the loop takes it next, nothing is left behind."""
    ran: list[str] = []
    u = UndoStack()
    u.push("first", lambda: ran.append("first"))
    u.push("second", lambda: (ran.append("second"), u.push("nested",
                                                            lambda: ran.append("nested"))))
    u.unwind()
    assert ran == ["second", "nested", "first"]


def _hup_to_this_thread():
    """SIGHUP to this (the main) thread, where ``signals_deferred`` blocks it.  Not
    os.kill(): a process-directed signal may be taken by any other thread of the
    process (numpy's, or one an earlier test left), and Python then runs the handler
    in the main thread whenever it next looks, possibly after the block has ended,
    and once for each signal: the assertions below would race it."""
    signal.pthread_kill(threading.get_ident(), signal.SIGHUP)


@pytest.fixture
def hup_handler():
    """A SIGHUP handler shaped like ftslab's: it asks defer_signal first."""
    acted: list[int] = []

    def handler(signum, frame):
        if defer_signal(signum):
            return
        acted.append(signum)
    old = signal.signal(signal.SIGHUP, handler)
    try:
        yield acted
    finally:
        signal.signal(signal.SIGHUP, old)
        undo._pending.clear()


def test_a_signal_during_unwind_waits_for_the_end(hup_handler):
    order: list[str] = []
    u = UndoStack()
    u.push("a", lambda: order.append("a"))
    u.push("b", lambda: (_hup_to_this_thread(), order.append("b")))
    u.push("c", lambda: order.append("c"))
    u.unwind()
    # every step ran, then the signal arrived, once
    assert order == ["c", "b", "a"]
    assert hup_handler == [signal.SIGHUP]


def test_signals_deferred_nests_and_delivers_on_the_outer_exit(hup_handler):
    with signals_deferred():
        with signals_deferred():
            _hup_to_this_thread()
            _hup_to_this_thread()
        assert hup_handler == []            # the inner exit delivers nothing yet
        assert signal.SIGHUP in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert hup_handler == [signal.SIGHUP]   # standard signals do not queue: once
    assert signal.SIGHUP not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_signal_another_thread_took_is_raised_again_on_the_outer_exit(hup_handler):
    """A process-directed stop signal may land on a thread that does not block it
    (numpy's pool): Python then runs the handler in the main thread, inside the block,
    where defer_signal keeps it; signals_deferred raises it again on the way out.
    Python's part is played here by calling the handler as it would."""
    with signals_deferred():
        with signals_deferred():
            signal.getsignal(signal.SIGHUP)(signal.SIGHUP, None)
            assert undo.signal_deferred()
        assert hup_handler == []
    assert hup_handler == [signal.SIGHUP]
    assert not undo.signal_deferred()


def test_defer_signal_outside_is_false():
    assert defer_signal(signal.SIGINT) is False
    assert not undo.signal_deferred()
