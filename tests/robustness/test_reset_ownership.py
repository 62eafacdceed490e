"""`ftslab reset` removes what dead ftslab sessions left (instances and kprobe groups
named ftslab_<pid>), only those unless --all-ftslab, and never another tool's objects
or a name that only looks like ftslab's.  On a fake tracefs with a kprobe_events file
(this host's kernel has no kprobes); the real-kernel side is in test_kill_campaign.py.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ftslab.session import engine
from ftslab.cli import entry
from ftslab.kernel.tracefs import Tracefs

DEAD_PID = 99999999  # above PID_MAX_LIMIT: no such process can exist


@pytest.fixture
def tree(tmp_path, monkeypatch):
    root = tmp_path / "tracing"
    (root / "events").mkdir(parents=True)
    inst = root / "instances"
    inst.mkdir()
    alive = os.getpid()
    names = [f"ftslab_{DEAD_PID}", f"ftslab_{DEAD_PID}_2", f"ftslab_{alive}", "other_tool",
             "ftslab_x", "ftslab_"]
    for n in names:
        (inst / n).mkdir()
    probes = [f"p:ftslab_{DEAD_PID}/kp_kmalloc __kmalloc", f"p:ftslab_{alive}/kp_kfree kfree",
              "p:kprobes/p_kmalloc_0 __kmalloc", "p:perf_tools/kmalloc __kmalloc"]
    (root / "kprobe_events").write_text("\n".join(probes) + "\n")
    for line in probes:
        g, e = line.split()[0][2:].split("/")
        (root / "events" / g / e).mkdir(parents=True)
    writes: list[str] = []

    def fake_write(self, rel, text, append=True, instance=None, hint=None):
        writes.append(text)
        if text.startswith("-:"):
            g, e = text[2:].split("/")
            (self.root / "events" / g / e).rmdir()
    monkeypatch.setattr(Tracefs, "_write", fake_write)
    monkeypatch.setenv("FTSLAB_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    return root, writes, alive


def _left(root: Path) -> list[str]:
    return sorted(os.listdir(root / "instances"))


def test_reset_removes_only_dead_owners(tree, capsys):
    root, writes, alive = tree
    assert entry.main(["reset", "--tracefs", str(root)]) == 0
    err = capsys.readouterr().err
    assert _left(root) == sorted([f"ftslab_{alive}", "other_tool", "ftslab_x", "ftslab_"])
    assert writes == [f"-:ftslab_{DEAD_PID}/kp_kmalloc"]
    assert f"keeping ftslab_{alive}" in err


def test_reset_all_ftslab_never_touches_other_tools(tree, capsys):
    root, writes, alive = tree
    assert entry.main(["reset", "--all-ftslab", "--tracefs", str(root)]) == 0
    assert _left(root) == sorted(["other_tool", "ftslab_x", "ftslab_"])
    assert sorted(writes) == sorted([f"-:ftslab_{DEAD_PID}/kp_kmalloc",
                                     f"-:ftslab_{alive}/kp_kfree"])


def test_a_new_session_names_the_leftovers(tree):
    root, _writes, _alive = tree
    msgs: list[str] = []
    engine.report_stale(Tracefs(root), msgs.append)
    text = "\n".join(msgs)
    assert f"ftslab_{DEAD_PID}" in text and f"ftslab_{DEAD_PID}_2" in text
    assert "kprobe group" in text and "ftslab reset" in text
    assert "other_tool" not in text and "ftslab_x" not in text


def test_names_that_only_look_like_ftslabs_are_not_owned(tmp_path):
    from ftslab.kernel.tracefs import _OWNED
    for name in ("ftslab_123\n", "ftslab_12 3", "xftslab_1", "ftslab_-1", "ftslab_1/x"):
        assert not _OWNED.match(name), name
    for name in ("ftslab_1", "ftslab_4242_probe"):
        assert _OWNED.match(name), name
