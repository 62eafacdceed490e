"""ftslab's kprobe path on a real kprobe-capable kernel (run inside the guest).

The workload is a known allocation: setxattr(2) with a value of N bytes copies it with
vmemdup_user() -> kvmalloc(N), i.e. one kmalloc of exactly N bytes in the kmalloc_node
member of the family (__kmalloc_node on 6.1, __kmalloc_node_noprof on 6.12) per call,
from the call site vmemdup_user+off.  Nothing else in the workload asks for N bytes.
The kernel copies the value before the filesystem is asked, so the call need not succeed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from .vmfacts import (TRACEFS, BtfRaw, expected_fetch_args, kallsyms_text_counts,
                      pahole_members)

N = 3000   # bytes per setxattr value
CALLS = 200
WORKLOAD = [sys.executable, "-c",
            "import os, tempfile\n"
            "fd, path = tempfile.mkstemp()\n"
            f"for i in range({CALLS}):\n"
            "    try:\n"
            f"        os.setxattr(path, 'user.ftslab', b'x' * {N})\n"
            "    except OSError:\n"
            "        pass\n"
            "os.unlink(path)\n"]

_SYMBOL = re.compile(r"^[A-Za-z_][\w.]*\+0x[0-9a-f]+(?: \[\w+\])?$")


def _slab_caches() -> dict[str, int]:
    """This kernel's cache names -> object size in bytes (struct kmem_cache.object_size,
    from /sys/kernel/slab/NAME/object_size; -1 where sysfs has no entry).  Names from
    /proc/slabinfo and /sys/kernel/slab (aliases of merged caches too).  Not slabinfo's
    objsize column: SLUB prints s->size there (filp on 6.12: 192, object_size 184)."""
    names = set(os.listdir("/sys/kernel/slab"))
    with open("/proc/slabinfo") as f:
        names.update(line.split()[0] for line in f.read().splitlines()[2:])
    out = {}
    for name in names:
        try:
            with open(f"/sys/kernel/slab/{name}/object_size") as f:
                out[name] = int(f.read())
        except OSError:
            out[name] = -1
    return out


def _tracefs_snapshot() -> dict[str, object]:
    return {"kprobe_events": (TRACEFS / "kprobe_events").read_text(),
            "dynamic_events": (TRACEFS / "dynamic_events").read_text(),
            "instances": sorted(os.listdir(TRACEFS / "instances")),
            "events": sorted(os.listdir(TRACEFS / "events"))}


def _check(cp: subprocess.CompletedProcess, what: str, code: int = 0) -> None:
    assert cp.returncode == code, (f"{what}: exit {cp.returncode} (expected {code})\n"
                                   f"stdout: {cp.stdout[-3000:]}\nstderr: {cp.stderr[-3000:]}")


# -- doctor and probes ------------------------------------------------------------------

@pytest.fixture(scope="module")
def doctor(ftslab) -> dict:
    cp = ftslab("doctor", "--format", "json")
    _check(cp, "ftslab doctor --format json")
    return json.loads(cp.stdout)


def test_doctor_text_exits_0(ftslab, kernel):
    cp = ftslab("doctor")
    _check(cp, "ftslab doctor")
    assert "kprobes" in cp.stdout


def test_doctor_json_contract(doctor, expect):
    assert doctor["kprobes"] is True
    assert doctor["btf"] is True
    assert doctor["ok"] is True, doctor.get("problems")
    assert doctor["arg_style"] in ("$arg", "regs", "btf")
    assert "lockdown" in doctor
    for key in ("name", "object_size", "size"):
        assert doctor["offsets"][key] == {"value": expect.offsets[key], "source": "btf"}
    probes = doctor["probes"]
    assert probes
    for p in probes:
        assert {"family", "symbol", "event", "definition"} <= set(p), p
        assert re.match(rf"p:ftslab_\d+/{re.escape(p['event'])} {re.escape(p['symbol'])}( |$)",
                        p["definition"]), p
    # every kmalloc-family symbol this kernel has is probed
    assert {p["family"]: p["symbol"] for p in probes} == expect.symbols


def test_doctor_offsets_equal_pahole(doctor):
    members = pahole_members("kmem_cache")
    for key in ("name", "object_size", "size"):
        assert doctor["offsets"][key]["value"] == members[key][0], key


def test_doctor_arguments_follow_the_prototype(doctor, expect):
    """Each fetch arg reads the argument the kernel's prototype says, as bpftool reads
    BTF: on 6.12 the `b` (kmem_buckets) argument moves flags and node of
    __kmalloc_node_noprof one place to the right."""
    style = doctor["arg_style"]
    assert style == ("$arg" if "$arg<N>" in (TRACEFS / "README").read_text() else "regs")
    offsets = expect.offsets
    btf = BtfRaw.from_file()
    checked = 0
    for p in doctor["probes"]:
        params = btf.prototype(p["symbol"])
        assert params is not None, f"bpftool finds no prototype of {p['symbol']}"
        fields = dict(a.split("=", 1) for a in p["definition"].split()[2:])
        want = expected_fetch_args(params, style, offsets)
        assert set(fields) == set(want), (p["definition"], want)
        for field, spec in want.items():
            got = fields[field]
            ok = got.startswith(spec) if spec.endswith(":") else got == spec
            assert ok, f"{p['symbol']}: {field}={got!r}, expected {spec!r} ({p['definition']})"
            checked += 1
    assert checked >= 2 * len(doctor["probes"])


def test_probes_dry_run_writes_nothing(ftslab, kernel, doctor):
    before = _tracefs_snapshot()
    cp = ftslab("probes", "--dry-run")
    _check(cp, "ftslab probes --dry-run")
    lines = [l for l in cp.stdout.splitlines() if re.search(r"p:ftslab_\d+/", l)]
    assert len(lines) == len(doctor["probes"]), cp.stdout
    assert all("kprobe_events" in l for l in lines), lines
    cp = ftslab("record", "--dry-run", "--kprobes", "on", "-o", "/tmp/never.dat", "--", "true")
    _check(cp, "ftslab record --dry-run --kprobes on")
    assert len(re.findall(r"p:ftslab_\d+/kp_", cp.stdout)) == len(doctor["probes"]), cp.stdout
    # beside them, the bulk free probes (kprobes.py) where the kernel has the function
    bulk = re.findall(r"p:ftslab_\d+/kpf_\w+ (\S+)", cp.stdout)
    assert set(bulk) == ({"kmem_cache_free_bulk"} if kallsyms_text_counts().get(
        "kmem_cache_free_bulk") == 1 else set()), cp.stdout
    assert _tracefs_snapshot() == before
    assert not os.path.exists("/tmp/never.dat")


# -- a recording with a known allocation ---------------------------------------------------

@pytest.fixture(scope="module")
def recording(ftslab, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "kp.dat"
    cp = ftslab("record", "--kprobes", "on", "-o", out, "--", *WORKLOAD)
    _check(cp, "ftslab record --kprobes on")
    return out, cp


def _kprobe_events(path):
    import ftslab
    return [ev for ev in ftslab.read(path) if ev.system.startswith("ftslab_")]


def test_record_counts_the_known_kmalloc(recording, expect):
    out, cp = recording
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab
    ds = ftslab.load(out)
    evs = _kprobe_events(out)
    assert evs, "no kprobe event in the recording"
    fn = expect.setxattr_function
    hits = [ev for ev in evs if ev.fields.get("size") == N]
    by_fn = Counter(ev.name for ev in hits)
    assert by_fn == {f"kp_{fn}": CALLS}, by_fn
    sites = Counter((ds.symbolize(ev.fields["caller"]) or "?").split("+")[0] for ev in hits)
    assert sites == {expect.setxattr_caller: CALLS}, sites
    # the tracepoint saw the same allocations
    tp = [ev for ev in ftslab.read(out) if (ev.system, ev.name) == ("kmem", "kmalloc")
          and ev.fields.get("bytes_req") == N]
    assert len(tp) == CALLS, len(tp)


def test_report_json_by_function_and_callsite(recording, ftslab, expect):
    out, _ = recording
    cp = ftslab("report", out, "--format", "json", "--source", "kprobe", "--by", "function",
                "--by", "callsite", "--top", "100000")
    _check(cp, "ftslab report --source kprobe --by function --by callsite")
    rep = json.loads(cp.stdout)
    assert rep["lost"] == 0
    rows = rep["rows"]
    assert rows
    ours = [r for r in rows if r["function"] == expect.setxattr_function
            and r["callsite"].startswith(expect.setxattr_caller + "+")]
    assert len(ours) == 1, [(r["function"], r["callsite"]) for r in rows][:40]
    assert ours[0]["count"] >= CALLS and ours[0]["bytes_req"] >= CALLS * N, ours
    bad = [r["callsite"] for r in rows if not _SYMBOL.match(r["callsite"])]
    assert not bad, f"call sites that are not symbol+offset: {bad[:10]}"


def test_cache_names_and_object_sizes_are_the_kernels(recording):
    out, _ = recording
    named = [ev for ev in _kprobe_events(out) if "name" in ev.fields]
    assert named, "no kprobe event carries a cache name"
    caches = _slab_caches()
    names = Counter(ev.fields["name"] for ev in named)
    unknown = [n for n in names if n not in caches]
    assert not unknown, f"cache names that are not this kernel's: {unknown[:10]}"
    wrong = {(ev.fields["name"], ev.fields["objsize"]) for ev in named
             if "objsize" in ev.fields and caches.get(ev.fields["name"], -1) > 0
             and ev.fields["objsize"] != caches[ev.fields["name"]]}
    assert not wrong, f"objsize differs from /sys/kernel/slab/*/object_size: {sorted(wrong)[:10]}"


def test_stream_json_sees_the_known_kmalloc(ftslab, kernel, expect):
    cp = ftslab("stream", "--kprobes", "on", "--format", "json", "--", *WORKLOAD)
    _check(cp, "ftslab stream --kprobes on --format json")
    evs = [json.loads(l) for l in cp.stdout.splitlines()]
    kp = [e for e in evs if e["event"].split(":")[-1].startswith("kp_")]
    assert kp, "no kprobe event streamed"
    hits = [e for e in kp if e.get("size") == N]
    assert Counter(e.get("function") for e in hits) == {expect.setxattr_function: CALLS}
    assert {e["caller_sym"].split("+")[0] for e in hits} == {expect.setxattr_caller}
    caches = _slab_caches()
    unknown = {e["name"] for e in kp if "name" in e} - set(caches)
    assert not unknown, unknown
    assert all(_SYMBOL.match(e["caller_sym"]) for e in kp if "caller_sym" in e)


# -- failures: the kernel's own words, and nothing left behind ---------------------------------

def _blacklisted_symbol() -> str:
    """A text symbol kprobes refuse (the kprobe blacklist, on debugfs)."""
    with open("/sys/kernel/debug/kprobes/blacklist") as f:
        names = [line.split()[-1] for line in f if line.strip()]
    syms = kallsyms_text_counts()
    return "asm_exc_divide_error" if "asm_exc_divide_error" in names else next(
        n for n in names if syms.get(n) == 1)


def _error_log_last() -> str:
    """The message of the newest error_log entry (``[ts] where: error: MESSAGE``)."""
    text = (TRACEFS / "error_log").read_text()
    heads = [l for l in text.splitlines() if re.match(r"^\[\s*\d+\.\d+\]", l)]
    assert heads, "error_log is empty"
    return re.sub(r"^\[\s*\d+\.\d+\]\s*", "", heads[-1]).strip()


def test_refused_definition_shows_error_log(ftslab, kernel, tmp_path):
    """A definition the kernel refuses: ftslab checks the kprobe blacklist when debugfs
    is mounted, so it runs here in a mount namespace without debugfs (as on a system
    that does not mount it): then only the kernel can say no, in error_log.  Exit 5
    (README "Exit codes"), the kernel's own error_log line in the message, nothing left
    (the autouse check)."""
    sym = _blacklisted_symbol()
    out = tmp_path / "bad.dat"
    cmd = [sys.executable, "-m", "ftslab", "record", "--kprobes", "on", "--kprobe-family",
           "kmalloc", "--kprobe-symbol", sym, "-o", str(out), "--", "true"]
    cp = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                         'umount /sys/kernel/debug && exec "$@"', "sh", *cmd],
                        capture_output=True, text=True, timeout=300)
    _check(cp, f"record --kprobe-symbol {sym} (without debugfs)", code=5)
    # the kernel's reason, as error_log has it now, with what was written
    said = _error_log_last()
    assert "Failed to register probe event" in said, said
    assert said in cp.stderr, (said, cp.stderr)
    assert "p:ftslab_" in cp.stderr and sym in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr
    assert not out.exists()


@pytest.mark.parametrize("which", ["unknown", "blacklisted"])
def test_unprobeable_symbol_is_refused_by_name(ftslab, kernel, tmp_path, which):
    """An asked-for symbol ftslab cannot probe (not in kallsyms; on the kprobe blacklist
    read from debugfs) stops the recording before any write, naming it and why."""
    sym = "no_such_function_ftslab" if which == "unknown" else _blacklisted_symbol()
    out = tmp_path / "nosuch.dat"
    cp = ftslab("record", "--kprobes", "on", "--kprobe-symbol", sym, "-o", out, "--", "true")
    assert cp.returncode == 2 and f"cannot probe {sym}" in cp.stderr, cp.stderr
    why = "not in /proc/kallsyms" if which == "unknown" else "kprobe blacklist"
    assert why in cp.stderr and "Traceback" not in cp.stderr, cp.stderr
    assert not out.exists()


def _setup_points() -> dict[str, int]:
    """Setup step indices of a `record --kprobes on -- COMMAND` session on this kernel,
    from ftslab's own plan (the pause hook counts the same steps)."""
    from ftslab.session.options import SessionOptions
    from ftslab.session.engine import Session
    from ftslab.kernel.tracefs import Tracefs
    s = Session(Tracefs(TRACEFS), lambda m: None, name="ftslab_0")
    steps = s.plan(SessionOptions(kprobes="on", command=("true",)), child_pid=os.getpid())
    kinds = [st.kind for st in steps]
    kprobe = [i for i, k in enumerate(kinds) if k == "kprobe"]
    mkdir = next(i for i, st in enumerate(steps) if not st.kind and st.value is None)
    enables = [i for i, st in enumerate(steps)
               if st.path.endswith("/enable") and "/events/ftslab_" in st.path]
    # the probes are defined first, then the instance (its removal disables them first)
    assert kprobe[-1] < mkdir
    return {"one probe defined": kprobe[0] + 1, "all probes defined": kprobe[-1] + 1,
            "instance made": mkdir + 1, "probes being enabled": enables[len(enables) // 2]}


KILLS = [("instance made", signal.SIGTERM), ("one probe defined", signal.SIGINT),
         ("all probes defined", signal.SIGTERM), ("probes being enabled", signal.SIGINT),
         ("capture", signal.SIGTERM)]


@pytest.mark.parametrize("point,sig", KILLS, ids=[f"{p.replace(' ', '_')}-{s.name}"
                                                    for p, s in KILLS])
def test_signal_during_kprobe_setup_cleans_up(ftslab_spawn, kernel, tmp_path, point, sig):
    """Held at a setup step (ftslab/testhook.py) and signalled there: exit 128+N if
    recording had not started (the command never runs), 0 with the data kept if it had
    (the command is stopped with the recording: whether it got to run first is a race);
    either way no probe, event group or instance of it is left."""
    hook = "capture" if point == "capture" else f"setup:{_setup_points()[point]}"
    marker, out, ran = tmp_path / "paused", tmp_path / "k.dat", tmp_path / "ran"
    p = ftslab_spawn("record", "--kprobes", "on", "-o", out, "--", "sh", "-c",
                     f"echo yes > {ran}; sleep 1",
                     env={"FTSLAB_TEST_PAUSE": hook, "FTSLAB_TEST_PAUSE_FILE": str(marker)},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"ftslab never paused at {hook} (exit {p.poll()})"
        group = f"ftslab_{p.pid}"
        probes = [l for l in (TRACEFS / "kprobe_events").read_text().splitlines() if group in l]
        inst_made = (TRACEFS / "instances" / group).is_dir()
        if point == "one probe defined":
            assert len(probes) == 1 and not inst_made, probes
        elif point == "all probes defined":
            assert len(probes) > 1 and not inst_made, probes
        elif point in ("instance made", "probes being enabled"):
            assert len(probes) > 1 and inst_made, probes
        p.send_signal(sig)
        _out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    if point == "capture":
        # recording had started: a clean stop that keeps what was captured
        assert p.returncode == 0, err
        assert f"stopped by {sig.name}" in err, err
        import ftslab
        ftslab.load(out)
    else:
        assert p.returncode == 128 + sig, err
        assert not ran.exists(), "the command ran although recording never started"
        assert "Traceback" not in err, err


def test_real_plan_steps_in_order_and_undone(kernel, monkeypatch):
    """The control-path tests on the host (tests/test_kprobes.py) run this against a
    fake tracefs; here the kernel answers.  Probes defined first, then the instance;
    the cache-name check before anything is filtered or enabled; each write really
    made; undone newest first: every enable off and the instance gone before the first
    probe is removed, and kprobe_events, events/ and instances/ as they were."""
    from ftslab.session.options import SessionOptions
    from ftslab.session.engine import Session
    from ftslab.kernel.tracefs import Tracefs
    before = _tracefs_snapshot()
    log: list[tuple[str, str, bool]] = []
    real_write = Tracefs._write

    def spy(self, rel, text, *a, **kw):
        real_write(self, rel, text, *a, **kw)  # a refusal raises before it is logged
        log.append((rel, text, (TRACEFS / "instances" / s.name).is_dir()))
    monkeypatch.setattr(Tracefs, "_write", spy)
    said: list[str] = []
    s = Session(Tracefs(TRACEFS), said.append)
    steps = s.plan(SessionOptions(kprobes="on"), child_pid=os.getpid())
    kinds = [st.kind or ("mkdir" if st.value is None else "write") for st in steps]
    probes = [i for i, k in enumerate(kinds) if k == "kprobe"]
    pid_step = next(i for i, st in enumerate(steps) if st.path.endswith("/set_event_pid"))
    enables = [i for i, st in enumerate(steps) if st.path.endswith("/enable")]
    assert probes == list(range(len(probes))) and probes, kinds
    assert probes[-1] < kinds.index("mkdir") < kinds.index("verify") < pid_step < enables[0]
    try:
        s.apply(steps)
        group = s.probe_plan.probes[0].group
        listed = [l.split()[0] for l in (TRACEFS / "kprobe_events").read_text().splitlines()
                  if f":{group}/" in l]
        assert sorted(listed) == sorted(f"p:{group}/{p.event}"
                                        for p in s.probe_plan.all_probes)
        for i in enables:
            assert (TRACEFS / steps[i].path).read_text().strip() == "1", steps[i].path
        assert any("all real" in w for w in said), said
        n_applied = len(log)
    finally:
        failures = s.close()
    assert failures == []
    undo = log[n_applied:]
    removals = [i for i, (_rel, t, _inst) in enumerate(undo) if t.startswith("-:")]
    offs = [i for i, (rel, t, _inst) in enumerate(undo) if rel.endswith("/enable") and t == "0"]
    assert len(removals) == len(probes) and offs and max(offs) < min(removals)
    assert not any(inst for _rel, t, inst in undo if t.startswith("-:")), \
        "a probe was removed while the instance still existed"
    # removed newest first
    defined = [t.split()[0][2:] for _rel, t, _i in log[:n_applied] if t.startswith("p:")]
    assert [undo[i][1][2:] for i in removals] == defined[::-1]
    assert _tracefs_snapshot() == before


def test_sigkill_during_kprobe_setup_then_reset_leaves_nothing(ftslab, ftslab_spawn, kernel,
                                                               tmp_path):
    """SIGKILL (no clean-up can run) while the probes are being enabled in the instance:
    what it leaves is found by its owner's pid, and `ftslab reset` removes all of it
    (the instance first, which disables the probes enabled in it: an enabled probe
    cannot be removed; then the probes)."""
    before = _tracefs_snapshot()
    hook = f"setup:{_setup_points()['probes being enabled']}"
    marker, out = tmp_path / "paused", tmp_path / "k.dat"
    p = ftslab_spawn("record", "--kprobes", "on", "-o", out, "--", "true",
                     env={"FTSLAB_TEST_PAUSE": hook, "FTSLAB_TEST_PAUSE_FILE": str(marker)},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), f"ftslab never paused at {hook} (exit {p.poll()})"
        p.kill()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    group = f"ftslab_{p.pid}"
    left = [l for l in (TRACEFS / "kprobe_events").read_text().splitlines()
            if f":{group}/" in l]
    inst = (TRACEFS / "instances" / group).is_dir()
    assert len(left) > 1 and inst, (left, inst)
    on = [e for e in (TRACEFS / "instances" / group / "events" / group).glob("*/enable")
          if e.read_text().strip() == "1"]
    assert on, "no probe was enabled when ftslab was killed"
    # the session's instances: its own, and the one for the frees of the whole system
    # (made before the probes are enabled)
    insts = [d.name for d in (TRACEFS / "instances").iterdir()
             if d.name == group or d.name.startswith(group + "_")]
    assert f"{group}_frees" in insts, insts
    cp = ftslab("reset", cwd=tmp_path)
    _check(cp, "ftslab reset")
    assert f"removed {len(insts)} stale instance(s) and {len(left)} stale kprobe(s)" \
        in cp.stderr, \
        cp.stderr
    assert _tracefs_snapshot() == before
    assert not list(tmp_path.glob("*.ftslab-spool-*")), "reset left the dead session's spool"


# -- stream -d ends on time, even under load (issue 8, item 4) ---------------------------

def test_kprobe_stream_json_ends_on_time_beside_ls(ftslab_spawn, kernel, tmp_path):
    """The acceptance case that once never ended: `ftslab stream --kprobes on --format
    json -d 6` beside `ls -R /usr/lib`.  Under emulation the Python decoder falls far
    behind the kprobe events; -d must still end the stream within 6 s of tracing
    starting plus the drain time (DRAIN_S) and a few seconds, every line printed must be
    whole JSON, and what was not shown is counted, not dropped silently."""
    from ftslab.session.stream import DRAIN_S
    out = tmp_path / "stream.json"
    ls = None
    with open(out, "wb") as f:
        t0 = time.monotonic()
        p = ftslab_spawn("stream", "--kprobes", "on", "--format", "json", "-d", "6",
                         stdout=f, stderr=subprocess.PIPE, text=True)
        try:
            group = f"ftslab_{p.pid}"
            on = TRACEFS / "instances" / group / "tracing_on"
            deadline = time.monotonic() + 180
            while True:  # setup (symbols, BTF, probes, their check) is slow under TCG
                try:
                    if on.read_text().strip() == "1":
                        break
                except OSError:
                    pass
                assert p.poll() is None, p.communicate()[1]
                assert time.monotonic() < deadline, "stream never started tracing"
                time.sleep(0.05)
            t_traced = time.monotonic()
            ls = subprocess.Popen("while :; do ls -R /usr/lib; done", shell=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
            _o, err = p.communicate(timeout=6 + DRAIN_S + 60)
            t_end = time.monotonic()
        finally:
            if ls is not None:
                os.killpg(ls.pid, signal.SIGKILL)
                ls.wait()
            if p.poll() is None:
                p.kill()
                p.communicate()
    setup, ran = t_traced - t0, t_end - t_traced
    sys.stderr.write(f"[stream -d 6 beside ls -R] setup {setup:.1f}s, tracing to exit "
                     f"{ran:.1f}s; {err.strip().splitlines()[-1] if err.strip() else ''}\n")
    _check(subprocess.CompletedProcess(p.args, p.returncode, "", err), "stream -d 6")
    # teardown (disable, remove 11 kprobes) takes ~5 s under single-threaded TCG
    assert ran < 6 + DRAIN_S + 12, f"stream -d 6 took {ran:.1f}s after tracing began\n{err}"
    lines = out.read_text().splitlines()
    evs = [json.loads(l) for l in lines]  # every printed line is whole
    m = re.search(r"streamed ([\d,]+) events in [\d.]+s, lost ([\d,]+)(?:, not shown ([\d,]+))?",
                  err)
    assert m, err
    assert int(m.group(1).replace(",", "")) == len(evs) > 0
    assert any(e["event"].split(":")[-1].startswith("kp_") for e in evs)


# -- kernel stacks ----------------------------------------------------------------------

def test_stacks_on_kprobe_and_tracepoint_events(ftslab, kernel, tmp_path):
    """record --stacks puts a stacktrace trigger on the kprobe events too: each of the
    CALLS setxattr kmallocs has its stack under both sources, through vmemdup_user()."""
    out = tmp_path / "stacks.dat"
    cp = ftslab("record", "--stacks", "--kprobes", "on", "-o", out, "--", *WORKLOAD)
    _check(cp, "ftslab record --stacks --kprobes on")
    assert "lost 0" in cp.stderr, cp.stderr
    import ftslab as api
    ds = api.load(out)
    assert ds.stacks and ds.meta.extra.get("stacks_unattributed", 0) == 0
    for (system, name), cols in ds.columns.items():
        # allocations carry stacks; frees (kmem:kfree, the kpf_ bulk free probes) do not
        if name in ("kmalloc", "kmem_cache_alloc") or (system.startswith("ftslab_")
                                                       and not name.startswith("kpf_")):
            assert cols.stack is not None and (cols.stack >= 0).all(), (system, name)
    for source in ("tracepoint", "kprobe"):
        cp = ftslab("report", out, "--format", "folded", "--weight", "count",
                    "--source", source)
        _check(cp, f"ftslab report --format folded --source {source}")
        ours = [l for l in cp.stdout.splitlines()
                if ";vmemdup_user;" in l and "setxattr" in l]
        assert sum(int(l.rsplit(" ", 1)[1]) for l in ours) == CALLS, (source, ours)
