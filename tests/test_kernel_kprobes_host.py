"""The kprobe options on this machine's kernel (6.18, no kprobes): `--kprobes on` fails
with one clear line, `auto` says so once and records the tracepoints, `doctor` tells
what the kernel has and what would be probed.  (The probes themselves run on booted
6.1/6.12 kernels: tests/vm.)"""
from __future__ import annotations

import json

import pytest

from conftest import TRACEFS, run_ftslab


@pytest.fixture
def no_kprobes(kernel):
    if (TRACEFS / "kprobe_events").exists():
        pytest.skip("this kernel has kprobes: the fallback is not reachable here "
                    "(the kprobe path itself is tested in tests/vm)")
    return kernel


def test_kprobes_on_fails_clearly(no_kprobes, tmp_path):
    out = tmp_path / "x.dat"
    cp = run_ftslab("record", "--kprobes", "on", "-d", "0.2", "-o", out)
    assert cp.returncode == 8, cp.stderr
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and "no kprobes" in lines[0] and "Traceback" not in cp.stderr
    assert "--kprobes auto or off" in lines[0]
    assert not out.exists()


def test_auto_falls_back_to_tracepoints(no_kprobes, tmp_path):
    out = tmp_path / "x.dat"
    cp = run_ftslab("record", "-o", out, "--", "sh", "-c", "ls / >/dev/null")
    assert cp.returncode == 0, cp.stderr
    said = [l for l in cp.stderr.splitlines() if "no kprobes" in l]
    assert len(said) == 1, cp.stderr
    rep = run_ftslab("report", out, "--format", "json", check=True)
    data = json.loads(rep.stdout)
    assert data["summary"]["events"] > 0
    assert not any(k.startswith("ftslab_") for k in data["summary"]["per_event"])
    # --kprobes off: not a word about kprobes
    cp = run_ftslab("record", "--kprobes", "off", "-o", out, "--", "true")
    assert cp.returncode == 0 and "kprobe" not in cp.stderr


def test_doctor_on_this_kernel(no_kprobes):
    cp = run_ftslab("doctor", "--format", "json")
    assert cp.returncode == 0, cp.stderr
    d = json.loads(cp.stdout)
    assert d["ok"] and d["root"] and d["tracefs"] == str(TRACEFS)
    assert d["kprobes"] is False
    assert d["tracepoints"]["kmem:kmem_cache_alloc"][:3] == ["call_site", "ptr", "name"]
    # the plan is shown even here: this kernel's symbols and BTF offsets
    assert d["offsets"]["name"] == {"value": 104, "source": "btf"}
    fams = {p["family"]: p["symbol"] for p in d["probes"]}
    assert fams["kmalloc"] == "__kmalloc_noprof"
    text = run_ftslab("doctor")
    assert text.returncode == 0 and "kprobes       NO" in text.stdout
    strict = run_ftslab("doctor", "--kprobes", "on")
    assert strict.returncode == 8 and "no kprobes" in strict.stderr


def test_probes_dry_run_writes_nothing(no_kprobes):
    cp = run_ftslab("probes", "--dry-run")
    assert cp.returncode == 0, cp.stderr
    defs = [l for l in cp.stdout.splitlines() if l.startswith("echo 'p:ftslab_")]
    assert len(defs) >= 8
    assert any("name=+0(+104($arg1)):string objsize=+36($arg1):u32" in l for l in defs)
    assert "from this kernel's BTF" in cp.stdout
    assert "would refuse" in cp.stderr
