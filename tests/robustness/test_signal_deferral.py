"""signals_deferred holds a stop signal off until its block ends, also when another
thread exists (numpy's OpenBLAS pool starts one at import: the kernel then hands the
signal to that thread, which has it unblocked, and Python used to run ftslab's handler in
the main thread at once: between a tracefs write and the push of its undo)."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ftslab.session import signals
from ftslab.kernel.undo import UndoStack, signals_deferred

from robust_util import figure


@pytest.fixture
def raising_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    signals.stop_requested.clear()
    signals.stop_signals_raise(True)
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    signals.stop_requested.clear()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_waits_for_the_end_of_the_block_despite_other_threads(raising_handlers,
                                                                     sig):
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, daemon=True)  # a thread with signals unblocked
    t.start()
    done = []
    try:
        with pytest.raises(signals.Interrupted) as exc:
            with signals_deferred():
                os.kill(os.getpid(), sig)  # to the process: any thread may take it
                deadline = time.monotonic() + 0.3
                while time.monotonic() < deadline:  # plenty of bytecode boundaries
                    done.append(1)
                done.append("end of block")
        assert done[-1] == "end of block"  # the block ran to its end first
        assert exc.value.signum == sig
    finally:
        stop.set()
        t.join()
    figure("fault", what=f"{sig.name} inside signals_deferred with a second thread")


def test_undo_runs_every_step_when_a_signal_arrives_during_unwind(raising_handlers):
    ran = []
    u = UndoStack()
    u.push("a", lambda: ran.append("a"))
    u.push("b", lambda: (os.kill(os.getpid(), signal.SIGTERM), ran.append("b")))
    u.push("c", lambda: ran.append("c"))
    with pytest.raises(signals.Interrupted):
        u.unwind()
    assert ran == ["c", "b", "a"]


def test_nested_blocks_release_only_at_the_outermost(raising_handlers):
    seen = []
    with pytest.raises(signals.Interrupted):
        with signals_deferred():
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
            seen.append("inner done")
            time.sleep(0.05)
            seen.append("outer done")
    assert seen == ["inner done", "outer done"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_command_is_let_go_keeps_the_recording(kernel, tmp_path, sig):
    """Tracing is on and the command is being let go (held there by the test hook) when
    the stop signal comes: the recording has started, so it ends as one stopped by that
    signal, kept (exit 0), never 'nothing was recorded' (exit 128+N)."""
    import json
    import sys

    from robust_util import run, spawn, wait_paused
    out = tmp_path / "release.dat"
    prog = "import os\nfor i in range(100): os.close(os.open('/dev/null', os.O_RDONLY))"
    # --frees traced: the frees of the whole system would fill their buffer while the
    # test hook holds the session (nothing pumps it then)
    p, marker = spawn(tmp_path, "record", "-o", out, "--frees", "traced", "--",
                      sys.executable, "-c", prog, pause="release")
    wait_paused(p, marker)
    p.send_signal(sig)
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert f"stopped by {sig.name}" in err, err
    assert "nothing was recorded" not in err, err
    rep = run(tmp_path, "report", out, "--format", "json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["lost"] == 0
