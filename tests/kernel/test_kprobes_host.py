"""The kprobe options on the running kernel, whichever it is.

Without kprobes (this project's 6.18 machines): `--kprobes on` fails with one clear line
(exit 8), `auto` says so once and records the tracepoints, `doctor` tells what the kernel
has and what would be probed.  With kprobes (Debian's 6.1 and 6.12, where tests/vm runs
this file inside QEMU guests): `on` and `auto` record the probes.  Each test checks the
behaviour of the kernel it runs on, so neither case is skipped.  Every kernel fact the
tests compare with (offsets, symbols, tracepoint fields) is read from the running
kernel by another route than ftslab's (tests/kernel_oracle.py).
"""
from __future__ import annotations

import json
import os
import re

import pytest

from conftest import TRACEFS, run_ftslab
from kernel_oracle import BtfRaw, family_symbols, kallsyms_text_counts


@pytest.fixture
def kprobes(kernel) -> bool:
    """Whether this kernel has kprobe events (kprobe_events in tracefs)."""
    return (TRACEFS / "kprobe_events").is_file()


def _probe_events(recording) -> dict[str, int]:
    rep = run_ftslab("report", recording, "--format", "json", check=True)
    per_event = json.loads(rep.stdout)["summary"]["per_event"]
    assert sum(per_event.values()) > 0, per_event
    return {k: v for k, v in per_event.items() if k.startswith("ftslab_")}


def _format_fields(event: str) -> list[str]:
    """Field names of a kmem tracepoint, as its format file lists them (common_* left out)."""
    text = (TRACEFS / "events/kmem" / event / "format").read_text()
    names = [m.group(1) for m in re.finditer(r"field:[^;]*?(\w+)(?:\[\d*\])?;", text)]
    return [n for n in names if not n.startswith("common_")]


def _kmem_cache_offsets() -> dict[str, int]:
    off = BtfRaw.from_file().member_offsets("kmem_cache")
    return {k: off[k] for k in ("name", "size", "object_size")}


def _tracefs_state() -> dict:
    kp = TRACEFS / "kprobe_events"
    return {"kprobe_events": kp.read_text() if kp.is_file() else None,
            "instances": sorted(os.listdir(TRACEFS / "instances")),
            "events": sorted(os.listdir(TRACEFS / "events"))}


def test_kprobes_on(kprobes, tmp_path):
    out = tmp_path / "x.dat"
    cp = run_ftslab("record", "--kprobes", "on", "-o", out, "--", "sh", "-c", "ls / >/dev/null")
    if not kprobes:
        assert cp.returncode == 8, cp.stderr
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1 and "no kprobes" in lines[0] and "Traceback" not in cp.stderr
        assert "--kprobes auto or off" in lines[0]
        assert not out.exists()
    else:
        assert cp.returncode == 0, cp.stderr
        assert _probe_events(out), "a recording with --kprobes on holds no probe event"


def test_kprobes_auto_and_off(kprobes, tmp_path):
    out = tmp_path / "x.dat"
    cp = run_ftslab("record", "-o", out, "--", "sh", "-c", "ls / >/dev/null")
    assert cp.returncode == 0, cp.stderr
    said = [l for l in cp.stderr.splitlines() if "no kprobes" in l]
    if not kprobes:
        # said once, and the tracepoints recorded
        assert len(said) == 1, cp.stderr
        assert not _probe_events(out)
    else:
        assert not said, cp.stderr
        assert _probe_events(out), "--kprobes auto recorded no probe event on a kernel " \
                                   "with kprobes"
    # --kprobes off: not a word about kprobes, and none recorded
    cp = run_ftslab("record", "--kprobes", "off", "-o", out, "--", "true")
    assert cp.returncode == 0, cp.stderr
    assert "kprobe" not in cp.stderr.replace(str(out), "OUT"), cp.stderr
    assert not _probe_events(out)


def test_doctor_on_this_kernel(kprobes):
    cp = run_ftslab("doctor", "--format", "json")
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    assert d["ok"] and d["root"] and d["tracefs"] == str(TRACEFS)
    assert d["kprobes"] is kprobes
    for ev in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc"):
        assert d["tracepoints"][f"kmem:{ev}"] == _format_fields(ev), ev
    # the plan is shown even without kprobes: this kernel's symbols and BTF offsets
    for key, value in _kmem_cache_offsets().items():
        assert d["offsets"][key] == {"value": value, "source": "btf"}, key
    from ftslab.events import FAMILY
    present = family_symbols({m.family: m.candidates for m in FAMILY},
                             kallsyms_text_counts())
    assert d["probes"], d["skipped"]
    for p in d["probes"]:
        assert p["symbol"] == present[p["family"]][0], (p, present[p["family"]])
    text = run_ftslab("doctor")
    assert text.returncode == 0
    assert ("kprobes       yes" if kprobes else "kprobes       NO") in text.stdout
    strict = run_ftslab("doctor", "--kprobes", "on")
    if kprobes:
        assert strict.returncode == 0, strict.stderr
    else:
        assert strict.returncode == 8 and "no kprobes" in strict.stderr


def test_probes_dry_run_writes_nothing(kprobes):
    before = _tracefs_state()
    cp = run_ftslab("probes", "--dry-run")
    assert cp.returncode == 0, cp.stderr
    defs = [l for l in cp.stdout.splitlines() if l.startswith("echo 'p:ftslab_")]
    doctor = json.loads(run_ftslab("doctor", "--format", "json", check=True).stdout)
    assert len(defs) == len(doctor["probes"]) > 0, cp.stdout
    off = _kmem_cache_offsets()
    cache = [l for l in defs if " name=" in l]
    assert cache, "no probe reads a cache name"
    for line in cache:
        assert re.search(rf"name=\+0\(\+{off['name']}\((\$arg\d|%\w+)\)\):string "
                         rf"objsize=\+{off['object_size']}\(\1\):u32", line), line
    assert "from this kernel's BTF" in cp.stdout
    assert ("would refuse" in cp.stderr) is not kprobes, cp.stderr
    assert _tracefs_state() == before
