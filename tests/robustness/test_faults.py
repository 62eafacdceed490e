"""Faults: disk full, a closed or full stdout, tracefs unmounted or the instance removed
under a running session, a tracefs file held open at teardown, refusals the real kernel
makes (EEXIST for a taken instance name, EBUSY for an instance in use, EINVAL for event
filters ftslab's grammar accepts and the kernel does not), and every kernel write refused
in turn by fault injection (EBUSY, EINVAL, EEXIST, ENOMEM, EPERM: errors this kernel
cannot be made to give at each step).  Each ends in one clear error line, a documented
exit code, and nothing left in tracefs.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys

import pytest

from robust_util import (TRACEFS, Allocations, env_for, figure, ftslab_argv, instances_of,
                         run, spawn, spools_in, wait_paused)

N_OPEN = 20000
BUSY = [sys.executable, "-c", f"import os\nfor i in range({N_OPEN}): "
        "os.close(os.open('/dev/null', 0))"]


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [l for l in err.splitlines() if l.startswith("ftslab: error:")]
    assert len(errors) == 1, err
    return errors[0]


# -- disk full ---------------------------------------------------------------------------

def test_disk_full_keeps_every_whole_page_and_says_where(kernel, tmp_path, small_fs):
    cp = run(tmp_path, "record", "-o", small_fs / "x.dat", "--", *BUSY)
    assert cp.returncode == 7, cp.stderr
    line = _one_error_line(cp.stderr)
    assert "No space left on device" in line and "raw pages are kept in" in line
    assert "stopping:" in cp.stderr  # said when it happened, not only at the end
    assert not (small_fs / "x.dat").exists()
    [spool] = spools_in(small_fs)
    raws = list(spool.glob("cpu*.raw"))
    assert raws and sum(r.stat().st_size for r in raws) > 0
    # what was captured reads as a recording that says it is truncated ...
    rep = run(tmp_path, "report", spool, "--format", "json", "--by", "event")
    assert rep.returncode == 0, rep.stderr
    js = json.loads(rep.stdout)
    assert js["truncated"] is True and js["events"] > 0
    # ... and becomes a trace.dat wherever there is room
    out = tmp_path / "recovered.dat"
    rec = run(tmp_path, "recover", spool, "-o", out)
    assert rec.returncode == 0, rec.stderr
    assert not spool.exists()
    js2 = json.loads(run(tmp_path, "report", out, "--format", "json", "--by", "event").stdout)
    assert js2["events"] == js["events"] and js2["truncated"] is True
    figure("fault", what="ENOSPC while recording (3 MiB tmpfs)", exit=7)


def test_disk_full_before_recording_starts_leaves_nothing(kernel, tmp_path, small_fs):
    # fill the file system: not even the spool description fits
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    cp = run(tmp_path, "record", "-o", small_fs / "x.dat", "-d", "1")
    assert cp.returncode == 7, cp.stderr
    assert "No space left" in _one_error_line(cp.stderr)
    assert [p.name for p in small_fs.iterdir()] == ["filler"]
    figure("fault", what="ENOSPC before recording", exit=7)


def test_stream_into_a_full_disk_is_an_output_error(kernel, tmp_path):
    with open("/dev/full", "w") as full:
        p, _ = spawn(tmp_path, "stream", "--format", "json", "--", *BUSY, stdout=full)
        _o, err = p.communicate(timeout=120)
    assert p.returncode == 7, err
    assert "No space left" in _one_error_line(err)
    assert not instances_of(p.pid)
    figure("fault", what="ENOSPC on stdout (stream > /dev/full)", exit=7)


# -- closed stdout -------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["json", "text", "seed"])
@pytest.mark.parametrize("with_command", [False, True])
def test_stream_into_head_ends_cleanly(kernel, tmp_path, fmt, with_command):
    args = ["stream", "--format", fmt, "-e", "kmem:kmem_cache_alloc"]
    args += ["--", *BUSY] if with_command else ["-d", "30"]
    env = env_for(tmp_path)
    with Allocations():
        sh = subprocess.run(["bash", "-c", "set -o pipefail; " + " ".join(
            f"'{a}'" for a in ftslab_argv(*args)) + " | head -n 3"], capture_output=True,
            text=True, env=env, timeout=120)
    assert sh.returncode == 0, sh.stderr
    assert len(sh.stdout.splitlines()) == 3
    assert "Traceback" not in sh.stderr and "error" not in sh.stderr, sh.stderr
    assert "(output closed)" in sh.stderr
    figure("fault", what=f"closed stdout: stream --format {fmt} | head", exit=0)


# -- tracefs unmounted / instance removed under a session ---------------------------------

@pytest.fixture
def private_tracefs(tmp_path):
    """A second mount of tracefs (the same kernel objects, a path of the test's own), to
    unmount under a session.  /sys/kernel/tracing itself is never unmounted."""
    mnt = tmp_path / "tracefs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("cmd", ["record", "stream"])
def test_tracefs_unmounted_under_a_session(kernel, tmp_path, private_tracefs, cmd):
    out = tmp_path / "u.dat"
    args = (["record", "-o", out] if cmd == "record" else ["stream", "--format", "json"])
    stdout = open(tmp_path / "stdout", "w")
    with Allocations():
        p, marker = spawn(tmp_path, *args, "-d", "20", "--tracefs", private_tracefs,
                          pause="capture", stdout=stdout)
        wait_paused(p, marker)
        name = f"ftslab_{p.pid}"
        assert name in os.listdir(TRACEFS / "instances")  # one tracefs, two mounts
        subprocess.run(["umount", "-l", str(private_tracefs)], check=True)
        marker.unlink()  # capture goes on, and finds its tracefs gone
        _o, err = p.communicate(timeout=60)
    stdout.close()
    assert p.returncode == 4, err
    line = _one_error_line(err)
    assert "unmounted" in line
    assert name not in os.listdir(TRACEFS / "instances")  # removed through its held mount
    if cmd == "record":
        assert "nothing of this session is left in tracefs" in line
        import ftslab
        ftslab.load(out)  # what was captured until then is a whole recording
        assert not spools_in(tmp_path)
    figure("fault", what=f"tracefs lazily unmounted under {cmd}", exit=4)


def test_instance_removed_during_setup(kernel, tmp_path):
    p, marker = spawn(tmp_path, "record", "-o", tmp_path / "r.dat", "-d", "5",
                      pause="setup:4")
    wait_paused(p, marker)
    os.rmdir(TRACEFS / "instances" / f"ftslab_{p.pid}")  # nothing holds it open yet
    marker.unlink()  # let setup go on
    _o, err = p.communicate(timeout=60)
    assert p.returncode == 4, err
    assert "does not exist" in _one_error_line(err)
    assert not instances_of(p.pid) and not spools_in(tmp_path)
    figure("fault", what="instance removed by another process during setup", exit=4)


def test_instance_cannot_be_removed_while_recording(kernel, tmp_path):
    """The kernel refuses rmdir while ftslab reads the instance (EBUSY): another
    process's rmdir or `reset --all-ftslab` fails with a clear error, and the session
    goes on to a complete recording."""
    out = tmp_path / "b.dat"
    with Allocations():
        p, marker = spawn(tmp_path, "record", "-o", out, "-d", "1", pause="capture")
        wait_paused(p, marker)
        name = f"ftslab_{p.pid}"
        with pytest.raises(OSError) as exc:
            os.rmdir(TRACEFS / "instances" / name)
        assert exc.value.errno == errno.EBUSY
        cp = run(tmp_path, "reset", "--all-ftslab")
        assert cp.returncode == 5, cp.stderr
        line = _one_error_line(cp.stderr)
        assert name in line and "EBUSY" in line and "files open" in line
        assert name in os.listdir(TRACEFS / "instances")
        marker.unlink()  # the session goes on, and ends after -d
        _o, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    import ftslab
    ds = ftslab.load(out)
    assert not ds.meta.truncated
    figure("fault", what="rmdir/reset --all-ftslab of a live session's instance (EBUSY)",
           exit=5)


def test_instance_held_open_at_the_end_of_a_recording(kernel, tmp_path):
    out = tmp_path / "h.dat"
    p, marker = spawn(tmp_path, "record", "-o", out, "-d", "0.5", pause="teardown:0")
    wait_paused(p, marker)
    name = f"ftslab_{p.pid}"
    fd = os.open(TRACEFS / "instances" / name / "trace", os.O_RDONLY)
    try:
        p.send_signal(signal.SIGINT)  # ends the pause; the teardown goes on
        _o, err = p.communicate(timeout=60)
    finally:
        os.close(fd)
    assert p.returncode == 5, err
    line = _one_error_line(err)
    assert f"wrote {out}" in line and "cleanup step" in line and "EBUSY" in line, line
    assert "files open" in err
    import ftslab
    assert not ftslab.load(out).meta.truncated  # the recording is whole
    cp = run(tmp_path, "reset")
    assert f"removed {name}" in cp.stderr, cp.stderr
    assert not instances_of(p.pid)
    figure("fault", what="instance file held open at the end (rmdir EBUSY)", exit=5)


def test_name_taken_in_another_pid_namespace_is_eexist(kernel, tmp_path):
    """In a new pid namespace ftslab is pid 1: `ftslab_1` may already exist (another
    container's session).  The kernel refuses the mkdir (EEXIST): ftslab says so, exit 5,
    and the other session's instance is left alone."""
    theirs = TRACEFS / "instances" / "ftslab_1"
    theirs.mkdir()
    try:
        cp = subprocess.run(["unshare", "--pid", "--fork", *ftslab_argv(
            "record", "-o", tmp_path / "n.dat", "-d", "0.2")], capture_output=True,
            text=True, env=env_for(tmp_path), timeout=60)
        assert cp.returncode == 5, cp.stderr
        line = _one_error_line(cp.stderr)
        assert "EEXIST" in line and "ftslab_1" in line
        assert theirs.is_dir()
        assert not spools_in(tmp_path)
    finally:
        theirs.rmdir()
    figure("fault", what="mkdir EEXIST (pid namespace)", exit=5)


# -- filters the kernel refuses (the kernel's own EINVAL and error_log) ------------------

def _kernel_says(root, event: str, text: str) -> tuple[str, str]:
    """(errno name, error_log message) the kernel gives for ``text`` written to the
    filter of ``event``, asked of a scratch instance of the test's own (not named
    ftslab_*: nothing of ftslab's may see it)."""
    inst = root / "instances" / f"ftslabtest_{os.getpid()}"
    inst.mkdir()
    try:
        fd = os.open(inst / "events" / event / "filter", os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            entry = (inst / "error_log").read_text().strip().splitlines()
            head = next(l for l in reversed(entry) if "error:" in l)
            return errno.errorcode[exc.errno], head.rsplit("error:", 1)[1].strip()
        finally:
            os.close(fd)
        raise AssertionError(f"this kernel accepts the filter {text!r} on {event}: "
                             "the test needs one it refuses")
    finally:
        inst.rmdir()


# Each filter passes ftslab's grammar (field OP value) and reaches the kernel, which
# refuses it when it checks the field's type or the value.
REFUSED_FILTERS = [("kmem/kmalloc", "bytes_req ~ 5"),           # glob on a number
                   ("kmem/kmem_cache_alloc", 'name > "x"'),     # order on a string
                   ("kmem/kmalloc", 'bytes_req == "abc"'),      # a string for a number
                   ("kmem/kmalloc", "bytes_req == 99999999999999999999999")]  # > u64


# stream sets its filters as record does: one case of it
FILTER_CASES = [(*f, "record") for f in REFUSED_FILTERS] + [(*REFUSED_FILTERS[0], "stream")]


@pytest.mark.parametrize("event,text,cmd", FILTER_CASES)
def test_filter_the_kernel_refuses(kernel, tmp_path, event, text, cmd):
    """The kernel, not ftslab's grammar, refuses these: ftslab says the errno and the
    kernel's error_log message, exits 5 (README, Exit codes), and leaves nothing: no
    instance (the kernel fixture), no output, no spool, no registry entry."""
    errno_name, message = _kernel_says(kernel, event, text)
    out = tmp_path / "f.dat"
    args = ["-o", out] if cmd == "record" else ["--format", "json"]
    cp = run(tmp_path, cmd, *args, "-d", "5", "--filter", text)
    assert cp.returncode == 5, cp.stderr
    line = _one_error_line(cp.stderr)
    assert errno_name in line and message in line and text in line, (line, message)
    assert f"{event}/filter" in line, line
    assert not out.exists() and not spools_in(tmp_path)
    run_dir = tmp_path / "run"
    assert not run_dir.exists() or not list(run_dir.iterdir()), "registry entry left"
    figure("fault", what=f"kernel refuses filter {text!r} ({cmd})", exit=5)


# -- every kernel write refused in turn, injected (in-process, real kernel) --------------------

class _FailingOs:
    """ftslab.kernel.tracefs's ``os``, with the Nth write (or mkdir) failing with ``err``.

    Kept beside the real refusals above: the kernel cannot be made to refuse each
    setup step with each errno (ENOMEM needs memory pressure, EBUSY a racing tracer),
    and every step's undo must still run when it does."""

    def __init__(self, real, fail_at: int, err: int):
        self._real, self.fail_at, self.err, self.n = real, fail_at, err, 0
        self.armed = True

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _tick(self):
        if not self.armed:
            return
        self.n += 1
        if self.n == self.fail_at:
            raise OSError(self.err, os.strerror(self.err))

    def write(self, fd, data):
        self._tick()
        return self._real.write(fd, data)

    def mkdir(self, path, *a, **k):
        self._tick()
        return self._real.mkdir(path, *a, **k)


ERRNOS = [errno.EBUSY, errno.EINVAL, errno.EEXIST, errno.ENOMEM, errno.EPERM]


def _plan():
    from ftslab.session.options import SessionOptions
    from ftslab.session.engine import Session
    from ftslab.kernel.tracefs import Tracefs
    s = Session(Tracefs(TRACEFS), lambda m: None, name=f"ftslab_{os.getpid()}_fault")
    return s, s.plan(SessionOptions(buffer_kb=64, comm="nosuchcomm", min_size=64))


def test_every_write_refused_in_turn(kernel, monkeypatch):
    from ftslab.kernel import tracefs as tracefs_mod
    from ftslab.errors import KernelWriteError, PermissionDenied
    _s, steps = _plan()
    n_writes = len([s for s in steps if s.kind != "verify"])
    injected = 0
    for k in range(1, n_writes + 1):
        for err in ERRNOS:
            session, steps = _plan()
            fake = _FailingOs(os, k, err)
            monkeypatch.setattr(tracefs_mod, "os", fake)
            try:
                with pytest.raises((KernelWriteError, PermissionDenied)) as exc:
                    session.apply(steps)
            finally:
                fake.armed = False
                failures = session.close()
                monkeypatch.setattr(tracefs_mod, "os", os)
            assert failures == [], failures
            assert not (TRACEFS / "instances" / session.name).exists(), (k, err)
            e = exc.value
            if err == errno.EPERM:
                assert isinstance(e, PermissionDenied) and e.exit_code == 3
            else:
                assert isinstance(e, KernelWriteError) and e.exit_code == 5
                assert errno.errorcode[err] in str(e), str(e)
            injected += 1
    figure("fault", what="tracefs write refused at every setup step (in-process, real "
           "kernel)", count=injected)
