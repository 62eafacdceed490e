"""`ftslab doctor` without root: ``diagnose`` over a tracefs tree holding the real 6.18
format files (conftest.make_fake_tracefs), with the probe context of Debian's 6.1 kernel
(its measured symbols, tests/test_kprobes.py), and ``render_text`` of what it found.
The real kernel's doctor runs in tests/test_kernel_kprobes_host.py, test_cli.py and the
guests (tests/vm/guest)."""
from __future__ import annotations

import json
import os

import pytest

from ftslab.kernel import doctor
from ftslab.trace.formats import parse_format

from conftest import FIXTURES, make_fake_tracefs, run_ftslab
from test_kprobes import README_ARG, ctx_61

_61_OFFSETS = {"name": 96, "size": 24, "object_size": 28}  # 6.1's BTF (KERNEL-FACTS.md)


def _fields(event: str) -> list[str]:
    text = (FIXTURES / "6.18" / f"kmem-{event}.format").read_text()
    return [f.name for f in parse_format(text, "kmem").fields]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    root = make_fake_tracefs(tmp_path)
    (root / "README").write_text(README_ARG)
    monkeypatch.setattr("ftslab.kernel.procfs.read_probe_context",
                        lambda tfs, symbols=None: ctx_61(btf_offsets=_61_OFFSETS,
                                                         btf_present=True))
    return root


def test_a_kernel_with_kprobes(tree):
    (tree / "kprobe_events").write_text("")
    d = doctor.diagnose(str(tree))
    assert d["tracefs"] == str(tree) and d["kprobes"] is True
    # every kmem tracepoint with the fields of its format file, in order
    assert d["tracepoints"] == {f"kmem:{e}": _fields(e) for e in doctor.KMEM_TRACEPOINTS}
    assert d["arg_style"] == "$arg"
    assert {k: v["value"] for k, v in d["offsets"].items()} == _61_OFFSETS
    assert {v["source"] for v in d["offsets"].values()} == {"btf"}
    probes = {p["family"]: p for p in d["probes"]}
    assert probes["kmalloc"]["symbol"] == "__kmalloc"
    assert probes["kmalloc_cache"]["definition"].startswith(
        "p:ftslab_" + str(os.getpid()) + "/kp_kmalloc_trace kmalloc_trace size=$arg3:u64 "
        "name=+0(+96($arg1)):string")
    assert d["enabled_elsewhere"] == [] and d["enabled_elsewhere_message"] is None
    assert d["ok"] == (os.geteuid() == 0) and (d["problems"] == []) == d["ok"]
    json.dumps(d)  # the CLI prints it as JSON
    lines = doctor.render_text(d)
    assert "kprobes       yes (kprobe_events)" in lines
    assert "kmem_cache    name         +96 (btf)" in lines
    assert f"tracepoint    kmem:kmalloc{' ' * 10} " + ", ".join(_fields("kmalloc")) in lines
    assert "elsewhere     no other buffer has the kmem events enabled" in lines
    assert any(l.startswith("probe         kmalloc_cache          kmalloc_trace [")
               for l in lines)
    assert lines[-1] == ("verdict       recording can work" if d["ok"] else
                         "verdict       recording cannot work here (see PROBLEM lines)")


def test_no_kprobes_is_a_problem_only_when_asked_for(tree):
    d = doctor.diagnose(str(tree))                 # no kprobe_events in the tree
    assert d["kprobes"] is False
    assert not [p for p in d["problems"] if "kprobes" in p]
    lines = doctor.render_text(d)
    assert any(l.startswith("kprobes       NO: this kernel has no kprobe_events") for l in lines)
    # the plan is still shown, as what ftslab would write on a kernel with kprobes
    assert d["probes"] and any("what ftslab would write" in l for l in lines)
    d = doctor.diagnose(str(tree), kprobes="on")
    assert any("this kernel has no kprobes" in p for p in d["problems"]) and not d["ok"]
    assert any(l.startswith("PROBLEM       this kernel has no kprobes")
               for l in doctor.render_text(d))
    d = doctor.diagnose(str(tree), kprobes="off")
    assert d["probes"] == [] and d["offsets"] is None


def test_an_absent_tracepoint_and_another_buffer_with_the_events(tree):
    (tree / "events/kmem/mm_page_free/format").unlink()
    other = tree / "instances" / "othertool"
    for ev in ("kmalloc", "kfree"):
        (other / "events/kmem" / ev).mkdir(parents=True)
        (other / "events/kmem" / ev / "enable").write_text("1\n")
    (other / "tracing_on").write_text("0\n")
    d = doctor.diagnose(str(tree))
    assert d["tracepoints"]["kmem:mm_page_free"] is None
    assert [e["event"] for e in d["enabled_elsewhere"]] == ["kmem:kmalloc", "kmem:kfree"]
    assert {e["instance"] for e in d["enabled_elsewhere"]} == {"othertool"}
    lines = doctor.render_text(d)
    assert f"tracepoint    kmem:mm_page_free{' ' * 5} ABSENT" in lines
    (line,) = [l for l in lines if l.startswith("elsewhere     ")]
    assert "kmem:kmalloc, kmem:kfree are also enabled in instance othertool" in line
    assert f"echo 0 > {tree}/instances/othertool/events/kmem/enable" in line


def test_no_tracefs(tmp_path):
    empty = tmp_path / "tracing"
    empty.mkdir()
    d = doctor.diagnose(str(empty))
    assert d["tracefs"] is None and not d["ok"] and d["problems"]
    lines = doctor.render_text(d)
    assert "tracefs       NOT FOUND" in lines
    assert not [l for l in lines if l.startswith("elsewhere")]
    assert [l for l in lines if l.startswith("PROBLEM")] == [
        f"PROBLEM       {p}" for p in d["problems"]]


def test_cli_doctor_json_is_diagnose(tree):
    """`ftslab doctor --format json` on the tree prints what diagnose finds (a separate
    process, without the patched probe context: compare what does not depend on it)."""
    cp = run_ftslab("doctor", "--tracefs", tree, "--format", "json")
    got = json.loads(cp.stdout)
    assert got["tracefs"] == str(tree) and got["kprobes"] is False
    assert got["tracepoints"] == {f"kmem:{e}": _fields(e) for e in doctor.KMEM_TRACEPOINTS}
    # no kprobes is no problem with --kprobes auto: only not being root is
    assert cp.returncode == (0 if os.geteuid() == 0 else 3), cp.stderr
    assert got["ok"] == (cp.returncode == 0)


def test_slab_counters_say_when_allocinfo_is_absent(tmp_path):
    from ftslab.kernel.doctor import render_text, slab_counters
    (tmp_path / "slabinfo").write_text("slabinfo - version: 2.1\n")
    d = slab_counters(str(tmp_path))
    assert d == {"slabinfo": True, "allocinfo": False}
    lines = render_text({**doctor_minimal(), **d})
    assert any(ln.startswith("allocinfo     absent (no CONFIG_MEM_ALLOC_PROFILING)")
               for ln in lines), lines
    (tmp_path / "allocinfo").write_text("allocinfo - version: 1.0\n")
    d = slab_counters(str(tmp_path))
    assert d["allocinfo"] is True
    assert any(ln.startswith("allocinfo     yes") for ln in render_text({**doctor_minimal(),
                                                                          **d}))


def doctor_minimal() -> dict:
    return {"kernel": "k", "machine": "m", "root": True, "lockdown": None, "tracefs": None,
            "tracepoints": {}, "kprobes": False, "btf": False, "btf_args": False,
            "arg_style": None, "offsets": None, "probes": [], "skipped": [], "notes": [],
            "problems": [], "ok": True}


def test_serve_path_without_and_with_hist_triggers(tree):
    d = doctor.diagnose(str(tree), kprobes="off")
    assert d["hist_triggers"] is False
    assert d["serve"] == ("raw events into a ring buffer (no hist file under events/kmem/kmalloc: "
                          "CONFIG_HIST_TRIGGERS is not set on this kernel)")
    assert f"serve         {d['serve']}" in doctor.render_text(d)
    (tree / "events/kmem/kmalloc/hist").write_text("")
    d = doctor.diagnose(str(tree), kprobes="off")
    assert d["hist_triggers"] is True and d["serve"].startswith("hist triggers with --no-live")
    assert "no name field" not in d["serve"]  # 6.18's kmem_cache_alloc has one
