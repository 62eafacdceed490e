"""Events enabled in another buffer too: `record`, `top` and `doctor` say where, and what
it costs, and never touch the other tracer's state.

With a second probe on a tracepoint (another instance, or the top level after
`trace-cmd record -k`) the kernel calls the probes through ``__traceiter_<event>``
instead of a static call and every event costs more (bench/bench_shared_events.py).
The kernel tests make a second prober of their own: an instance named for another tool,
or the top level's kmem:kmalloc switched on and back exactly.  The message itself is
checked without root.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import TRACEFS, popen_ftslab, run_ftslab
import toplevel
from toplevel import write_file
from ftslab.kernel.elsewhere import SHARED_EVENT_COST, enabled_elsewhere_message
from ftslab.kernel.tracefs import EnabledElsewhere, Tracefs, enable_state_has_probe

KMEM = ("kmalloc", "kmem_cache_alloc", "mm_page_alloc", "kfree", "kmem_cache_free",
        "mm_page_free")
ROOT = "/sys/kernel/tracing"


# -- the message (pure) ----------------------------------------------------------------
def _e(event, instance=None, tracing_on=False, state="1", pid=None):
    return EnabledElsewhere(event, instance, state, tracing_on, pid)


def test_no_line_when_nothing_is_shared():
    assert enabled_elsewhere_message([], ROOT) is None


def test_top_level_left_by_trace_cmd():
    msg = enabled_elsewhere_message([_e("kmem:kmalloc"), _e("kmem:kfree")], ROOT)
    assert msg.startswith("kmem:kmalloc, kmem:kfree are also enabled in the top-level "
                          "buffer (tracing off there: left by another tracer, e.g. "
                          "`trace-cmd record -k`): "), msg
    ratio, kernel, date = SHARED_EVENT_COST
    assert f"~{ratio:.2f}x of its speed without it; Linux {kernel}, {date})" in msg
    assert msg.endswith("; if not in use: `echo 0 > /sys/kernel/tracing/events/kmem/enable`")
    assert "\n" not in msg


def test_top_level_tracing_on_is_not_called_left_over():
    msg = enabled_elsewhere_message([_e("kmem:kmalloc", tracing_on=True)], ROOT)
    assert msg.startswith("kmem:kmalloc is also enabled in the top-level buffer: "), msg
    assert "trace-cmd" not in msg


def test_instances_with_the_same_events_share_one_clause():
    found = [_e("kmem:kmalloc", "b_tool"), _e("kmem:kmalloc", "a_tool"),
             _e("kmem:kmalloc")]
    msg = enabled_elsewhere_message(found, ROOT)
    assert msg.startswith("kmem:kmalloc is also enabled in the top-level buffer (tracing "
                          "off there: left by another tracer, e.g. `trace-cmd record -k`), "
                          "instance a_tool and instance b_tool: "), msg
    assert msg.endswith("if not in use: `echo 0 > /sys/kernel/tracing/events/kmem/enable`; "
                        "`echo 0 > /sys/kernel/tracing/instances/a_tool/events/kmem/enable`; "
                        "`echo 0 > /sys/kernel/tracing/instances/b_tool/events/kmem/enable`")


def test_different_events_in_different_places():
    found = [_e("kmem:kfree", "other", tracing_on=True), _e("kmem:kmalloc"),
             _e("kmem:kfree")]
    msg = enabled_elsewhere_message(found, "/t")
    assert msg.startswith("events recorded here are also enabled elsewhere: kmem:kmalloc, "
                          "kmem:kfree in the top-level buffer (tracing off there: left by "
                          "another tracer, e.g. `trace-cmd record -k`); kmem:kfree in "
                          "instance other: "), msg


def test_another_ftslab_session_is_named_and_left_alone():
    msg = enabled_elsewhere_message([_e("kmem:kmalloc", "ftslab_4242", True, pid=4242)], ROOT)
    assert msg.startswith("kmem:kmalloc is also enabled in instance ftslab_4242 (ftslab "
                          "session 4242): "), msg
    assert "echo 0" not in msg and "if not in use" not in msg


def test_enable_states():
    # kernel/trace/trace_events.c event_enable_read: "0"/"1", "*" in soft mode
    assert [enable_state_has_probe(t) for t in ("1\n", "0*\n", "1*\n", "0\n", "")] == \
        [True, True, True, False, False]


def test_lookup_in_a_tree(tmp_path):
    """The lookup's control path on a tracefs-shaped tree (the kernel tests below are the
    proof on the real one): own instance skipped, soft mode counted, unreadable skipped."""
    root = tmp_path / "tracing"

    def enable(prefix: str, event: str, text: str) -> None:
        d = root / prefix / "events" / "kmem" / event
        d.mkdir(parents=True)
        (d / "enable").write_text(text)

    enable("", "kmalloc", "1\n")
    enable("", "kfree", "0\n")
    (root / "tracing_on").write_text("0\n")
    enable("instances/ftslab_1", "kmalloc", "1\n")
    enable("instances/tool", "kfree", "0*\n")
    (root / "instances" / "tool" / "tracing_on").write_text("1\n")
    enable("instances/ftslab_77", "kfree", "1\n")
    (root / "instances" / "empty").mkdir()
    found = Tracefs(root).events_enabled_elsewhere([("kmem", "kmalloc"), ("kmem", "kfree")],
                                                   own="ftslab_1")
    assert found == [EnabledElsewhere("kmem:kmalloc", None, "1", False),
                     EnabledElsewhere("kmem:kfree", "ftslab_77", "1", None, 77),
                     EnabledElsewhere("kmem:kfree", "tool", "0*", True)]


# -- the real kernel -------------------------------------------------------------------
def _instance_state(inst: Path) -> dict[str, str]:
    """What another tool would notice changed in its instance."""
    state = {}
    for rel in ("tracing_on", "buffer_size_kb", "set_event", "set_event_pid", "trace_clock",
                "current_tracer", "events/kmem/enable"):
        state[rel] = (inst / rel).read_text()
    for ev in KMEM:
        for f in ("enable", "filter", "trigger"):
            rel = f"events/kmem/{ev}/{f}"
            state[rel] = (inst / rel).read_text()
    return state


def _kmem_enabled_places() -> dict[str, set[str]]:
    """Place -> kmem events whose probe is on there, read here without ftslab's code:
    ``top`` for the top level, else the instance's name (ftslab's own excluded)."""
    places: dict[str, set[str]] = {}
    dirs = [("top", TRACEFS)] + [(n, TRACEFS / "instances" / n)
                                 for n in os.listdir(TRACEFS / "instances")
                                 if not n.startswith("ftslab_")]
    for place, d in dirs:
        for ev in KMEM:
            try:
                t = (d / "events" / "kmem" / ev / "enable").read_text().strip()
            except OSError:
                continue
            if t == "1" or t.endswith("*"):
                places.setdefault(place, set()).add(f"kmem:{ev}")
    return places


def _shared_lines(stderr: str) -> list[str]:
    """The lines of stderr about events enabled elsewhere, without the "ftslab: "."""
    return [l.removeprefix("ftslab: ") for l in stderr.splitlines() if "also enabled" in l]


@pytest.fixture
def other_instance(toplevel_kmem_off):
    """Another tool's instance with kmem:kmalloc on, tracing off, and a marker line in
    its buffer (ftslab must neither clear nor change any of it)."""
    name = f"othertool_{os.getpid()}"
    with toplevel.other_instance(["kmalloc"], marker=f"marker of {name}") as inst:
        assert inst.name == name
        before = _instance_state(inst)
        yield name, inst
        assert _instance_state(inst) == before
        assert f"marker of {name}" in (inst / "trace").read_text()


@pytest.fixture
def toplevel_kmem_off(kernel):
    """The top level without kmem events (as a fresh boot has it): events another tool
    left on there are switched off for the test and put back exactly afterwards (no
    expansion of the top-level buffer: it already happened when they were enabled)."""
    saved = {}
    for ev in KMEM:
        path = TRACEFS / "events/kmem" / ev / "enable"
        text = path.read_text().strip()
        if text != "0":
            if "*" in text:
                pytest.fail(f"top-level kmem:{ev} is in soft mode ({text}): cannot switch "
                            "it off and restore it exactly")
            saved[path] = text
            write_file(path, "0")
    try:
        yield
    finally:
        for path, text in saved.items():
            write_file(path, text)


def _assert_names(line: str, name: str) -> None:
    """The line names kmem:kmalloc in instance ``name`` and, of the kmem events, only
    what is enabled somewhere (kmem:kfree is recorded here but on nowhere else)."""
    places = _kmem_enabled_places()
    assert places.get(name) == {"kmem:kmalloc"}, places
    if set(places) == {name}:
        assert line.startswith(f"kmem:kmalloc is also enabled in instance {name}: "), line
    else:  # another tool's instance on this machine too: named beside it
        assert f"instance {name}" in line, (places, line)
    everywhere = set().union(*places.values())
    for ev in KMEM:
        assert (f"kmem:{ev}" in line) == (f"kmem:{ev}" in everywhere), (ev, line)


def test_record_names_the_other_instance_and_leaves_it_alone(other_instance, tmp_path):
    name, _inst = other_instance
    cp = run_ftslab("record", "-d", "1", "-o", tmp_path / "r.dat", check=True)
    lines = _shared_lines(cp.stderr)
    assert len(lines) == 1, cp.stderr
    _assert_names(lines[0], name)
    assert f"`echo 0 > {TRACEFS}/instances/{name}/events/kmem/enable`" in lines[0]
    assert f"~{SHARED_EVENT_COST[0]:.2f}x of its speed" in lines[0]


def test_record_without_another_prober_says_nothing(toplevel_kmem_off, tmp_path):
    places = _kmem_enabled_places()
    cp = run_ftslab("record", "-d", "1", "-o", tmp_path / "r.dat", check=True)
    lines = _shared_lines(cp.stderr)
    if not places:
        assert lines == [], cp.stderr
    else:  # someone else's instance on this machine: named, and nothing more
        assert len(lines) == 1 and all(f"instance {p}" in lines[0] for p in places), \
            (places, cp.stderr)
        assert "top-level" not in lines[0]


def test_doctor_shows_the_other_instance(other_instance):
    name, _inst = other_instance
    text = run_ftslab("doctor", check=True).stdout
    line = next(l for l in text.splitlines() if l.startswith("elsewhere"))
    _assert_names(line.split(None, 1)[1], name)
    d = json.loads(run_ftslab("doctor", "--format", "json", check=True).stdout)
    mine = [e for e in d["enabled_elsewhere"] if e["instance"] == name]
    assert mine == [{"event": "kmem:kmalloc", "instance": name, "state": "1",
                     "tracing_on": False, "ftslab_pid": None}], d["enabled_elsewhere"]
    assert f"instance {name}" in d["enabled_elsewhere_message"]


def test_doctor_without_another_prober(toplevel_kmem_off):
    places = _kmem_enabled_places()
    d = json.loads(run_ftslab("doctor", "--format", "json", check=True).stdout)
    assert {e["instance"] for e in d["enabled_elsewhere"]} == set(places)
    text = run_ftslab("doctor", check=True).stdout
    if not places:
        assert d["enabled_elsewhere_message"] is None
        assert "elsewhere     no other buffer has the kmem events enabled" in text


def test_top_batch_names_the_other_instance(other_instance):
    name, _inst = other_instance
    top = popen_ftslab("top", "--batch", "-n", "0.5", "-d", "1", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    try:
        out, err = top.communicate(timeout=120)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
    assert top.returncode == 0, err
    assert out.startswith("ftslab top"), out[:500]
    lines = _shared_lines(err)
    assert len(lines) == 1, err
    _assert_names(lines[0], name)


def test_record_names_the_top_level(toplevel_expanded, toplevel_kmem_off, tmp_path):
    """trace-cmd record -k's leftover, made here: kmem:kmalloc on at the top level with
    tracing off there; both written back exactly (the ``kernel`` fixture checks).
    Enabling an event expands a fresh boot's top-level buffer for good: toplevel_expanded
    does that before ``kernel`` takes its snapshot."""
    enable = TRACEFS / "events/kmem/kmalloc/enable"
    tracing_on = TRACEFS / "tracing_on"
    was_on = tracing_on.read_text().strip()
    assert enable.read_text().strip() == "0"
    write_file(tracing_on, "0")  # first: nothing lands in the top-level buffer
    try:
        write_file(enable, "1")
        try:
            cp = run_ftslab("record", "-d", "1", "-o", tmp_path / "r.dat", check=True)
            assert enable.read_text().strip() == "1"
            assert tracing_on.read_text().strip() == "0"
        finally:
            write_file(enable, "0")
    finally:
        write_file(tracing_on, was_on)
    lines = _shared_lines(cp.stderr)
    assert len(lines) == 1, cp.stderr
    assert "kmem:kmalloc" in lines[0] and ("the top-level buffer (tracing off there: left "
                                           "by another tracer") in lines[0], lines[0]
    assert f"`echo 0 > {TRACEFS}/events/kmem/enable`" in lines[0]
