"""Permissions and lockdown: not root, root without capabilities, a read-only tracefs
mount, and kernel lockdown (the real level of this kernel, read from a private
securityfs mount; 'confidentiality' simulated, since a level can only be raised and
this host would keep it until reboot).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from robust_util import TRACEFS, env_for, figure, ftslab_argv, instances_of, run
from conftest import as_nobody, make_fake_tracefs

from ftslab.kernel.lockdown import lockdown_refusal, parse_lockdown

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"


@pytest.mark.parametrize("argv", [["record", "-d", "1", "-o", "/tmp/ftslab-nobody.dat"],
                                  ["stream", "-d", "1"], ["record", "--dry-run"],
                                  ["reset"]])
def test_not_root_is_one_clear_line(kernel, argv):
    code, err = as_nobody(argv)
    assert code == 3, (argv, code, err)
    assert "Traceback" not in err and err.count("ftslab: error:") == 1, err
    assert "root" in err, err
    assert not os.path.exists("/tmp/ftslab-nobody.dat")
    assert not [p for p in Path("/tmp").glob("ftslab-nobody.dat.ftslab-spool-*")]
    figure("fault", what=f"not root: {' '.join(argv[:1])}", exit=3)


def test_root_without_capabilities_records(kernel, tmp_path):
    """tracefs checks file modes, not capabilities: root with an empty capability set
    (no CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE) owns the files and records."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "util-linux setpriv is needed (.ci/run installs it)"
    out = tmp_path / "nocap.dat"
    cp = subprocess.run([setpriv, "--bounding-set=-all", "--inh-caps=-all", *ftslab_argv(
        "record", "-o", out, "-d", "0.3")], capture_output=True, text=True,
        env=env_for(tmp_path), timeout=60)
    assert cp.returncode == 0, cp.stderr
    import ftslab
    ftslab.load(out)
    figure("fault", what="root without capabilities (setpriv): works", exit=0)


@pytest.fixture
def ro_tracefs(tmp_path):
    """tracefs mounted read-only at a private path (the ro flag is the mount's: the
    system's /sys/kernel/tracing stays read-write)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tracefs", "-o", "ro", "nodev", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("cmd", [["record", "-d", "1"], ["stream", "-d", "1"]])
def test_read_only_tracefs(kernel, tmp_path, ro_tracefs, cmd):
    cp = run(tmp_path, *cmd, "-o" if cmd[0] == "record" else "--format",
             tmp_path / "ro.dat" if cmd[0] == "record" else "json", "--tracefs", ro_tracefs)
    assert cp.returncode == 3, cp.stderr
    assert "Traceback" not in cp.stderr and cp.stderr.count("ftslab: error:") == 1
    assert "mounted read-only" in cp.stderr, cp.stderr
    assert not list(tmp_path.glob("ro.dat*"))
    figure("fault", what=f"read-only tracefs: {cmd[0]}", exit=3)


def test_reset_on_read_only_tracefs(kernel, tmp_path, ro_tracefs):
    stale = TRACEFS / "instances" / "ftslab_99999999"  # pid_max is at most 2^22
    stale.mkdir()
    try:
        cp = run(tmp_path, "reset", "--tracefs", ro_tracefs)
        assert cp.returncode == 3, cp.stderr
        assert "mounted read-only" in cp.stderr and "Traceback" not in cp.stderr
        assert stale.is_dir()
        cp = run(tmp_path, "reset")  # through the read-write mount
        assert cp.returncode == 0 and "removed ftslab_99999999" in cp.stderr, cp.stderr
    finally:
        if stale.is_dir():
            stale.rmdir()


# -- lockdown --------------------------------------------------------------------------

def test_parse_lockdown():
    assert parse_lockdown("none [integrity] confidentiality\n") == "integrity"
    assert parse_lockdown("[none] integrity confidentiality") == "none"
    assert parse_lockdown("none integrity [confidentiality]") == "confidentiality"
    for bad in (None, "", "none integrity confidentiality", "[bogus]", "[]", "[[x]]"):
        assert parse_lockdown(bad) is None
    assert lockdown_refusal("integrity") is None and lockdown_refusal("none") is None
    assert lockdown_refusal(None) is None
    msg = lockdown_refusal("confidentiality", "kprobes")
    assert "confidentiality" in msg and "kprobe events" in msg


def test_this_kernels_lockdown_level_is_read_and_recording_works(kernel, tmp_path):
    """The level read from this kernel's own securityfs (mounted at a private path:
    this machine does not mount it at /sys/kernel/security).  The whole suite records
    under it: on this VM it is 'integrity', which must not stop ftslab."""
    mnt = tmp_path / "securityfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "securityfs", "none", str(mnt)], check=True)
    try:
        text = (mnt / "lockdown").read_text()
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    level = parse_lockdown(text)
    assert level in ("none", "integrity"), text  # confidentiality: no tracefs, no suite
    cp = run(tmp_path, "record", "-o", tmp_path / "l.dat", "-d", "0.3")
    assert cp.returncode == 0, cp.stderr
    figure("fault", what=f"lockdown {level} (real): record works", exit=0)


@pytest.fixture
def fake_tracefs(tmp_path):
    return make_fake_tracefs(tmp_path)


@pytest.fixture
def confidentiality(tmp_path, monkeypatch):
    f = tmp_path / "lockdown"
    f.write_text("none integrity [confidentiality]\n")
    import ftslab.kernel.tracefs
    monkeypatch.setattr(ftslab.kernel.tracefs, "LOCKDOWN_PATH", str(f))


class _RefusingOs:
    """os for ftslab.kernel.tracefs where opening anything under ``root`` fails with EPERM, as
    the kernel's tracing_check_open_get_tr() does under lockdown=confidentiality."""

    def __init__(self, real, root: Path):
        self._real, self.root = real, str(root)

    def __getattr__(self, name):
        return getattr(self._real, name)

    def open(self, path, *a, **k):
        if str(path).startswith(self.root):
            raise PermissionError(1, "Operation not permitted")
        return self._real.open(path, *a, **k)

    def mkdir(self, path, *a, **k):
        if str(path).startswith(self.root):
            raise PermissionError(1, "Operation not permitted")
        return self._real.mkdir(path, *a, **k)


@pytest.mark.parametrize("argv", [["record", "-d", "1"], ["stream", "-d", "1"]])
def test_confidentiality_lockdown_is_named(root, fake_tracefs, confidentiality, monkeypatch,
                                          capsys, tmp_path, argv):
    # root: the message for root is what is checked
    import ftslab.cli
    import ftslab.kernel.tracefs
    monkeypatch.setattr(ftslab.kernel.tracefs, "os", _RefusingOs(os, fake_tracefs))
    monkeypatch.chdir(tmp_path)
    code = ftslab.cli.entry.main([*argv, "--tracefs", str(fake_tracefs), "--kprobes", "off"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "locked down to 'confidentiality'" in err and "Traceback" not in err, err
    assert "run ftslab as root" not in err  # root it is: the hint would mislead
    assert not list(tmp_path.glob("ftslab.dat*"))
    figure("fault", what=f"lockdown confidentiality (simulated EPERM): {argv[0]}", exit=3)


def test_confidentiality_at_boot_leaves_tracefs_empty(root, tmp_path, confidentiality):
    """Locked down at boot, the kernel never populates tracefs (tracing_init_dentry()):
    an empty mount is explained by lockdown, not as 'not mounted' (the message for root
    is what is checked)."""
    from ftslab.errors import PermissionDenied
    from ftslab.kernel.tracefs import Tracefs
    empty = tmp_path / "tracing"
    empty.mkdir()
    with pytest.raises(PermissionDenied, match="locked down to 'confidentiality'"):
        Tracefs.locate(str(empty))


def test_no_lockdown_file_means_the_usual_messages(tmp_path, monkeypatch):
    import ftslab.kernel.tracefs
    from ftslab.errors import TracefsUnavailable, PermissionDenied
    monkeypatch.setattr(ftslab.kernel.tracefs, "LOCKDOWN_PATH", str(tmp_path / "absent"))
    empty = tmp_path / "tracing"
    empty.mkdir()
    with pytest.raises(TracefsUnavailable if os.geteuid() == 0 else PermissionDenied):
        ftslab.kernel.tracefs.Tracefs.locate(str(empty))
    assert instances_of(0) == []
