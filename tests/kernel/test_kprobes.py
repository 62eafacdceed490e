"""kprobes.py (pure planning) and the kprobe control path of a session.

The planning tests feed the facts of real kernels: the running kernel's own kallsyms
and BTF (the plan checked against what bpftool and /proc/kallsyms say, nothing of one
build written down; tests/vm runs that test in the 6.1 and 6.12 guests too), and the
6.1 symbol table measured on Debian's kernel (spelled out here from that measurement:
a frozen fact of that capture).  The control-path tests run a whole session's setup and
teardown on a fake tracefs tree whose kprobe_events write creates the event directory
like the kernel does, inject refusals, and check what was undone, in which order.
The same path runs for real on booted 6.1/6.12 kernels in tests/vm.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


from ftslab.session.options import SessionOptions
from ftslab.session.engine import Session
from ftslab.session.dryrun import describe_probe_plan
from ftslab.errors import KernelWriteError, ProbeVerifyFailed, Unsupported, UsageError
from ftslab.events import FAMILY
from ftslab.kernel.kprobes import KNOWN_PROTOTYPES, ProbeContext, cache_names_in_trace, check_cache_names, parse_kallsyms_text, plan_probes, roles_from_params, validate_symbol
from ftslab.kernel.tracefs import parse_kprobe_events
from ftslab.kernel.tracefs import Tracefs
from conftest import make_fake_tracefs
from kernel_oracle import (VMLINUX, BtfRaw, expected_fetch_args, family_symbols,
                           kallsyms_text_counts, kprobe_blacklist, unavailable)

FIX = Path(__file__).resolve().parents[1] / "fixtures"
README_ARG = "fetcharg: (%<register>|$<efield>), @<address>, $stack<index>, $arg<N>,\n"

#: text symbols of Debian's 6.1.0 kernel (measured: kernel-captures/6.1-symbols.tsv)
SYMS_61 = {s: 1 for s in (
    "__kmalloc", "__kmalloc_node", "kmalloc_large", "kmalloc_large_node", "kmalloc_slab",
    "kmalloc_trace", "kmalloc_node_trace", "kmem_cache_alloc", "kmem_cache_alloc_node",
    "kmem_cache_alloc_lru", "__alloc_pages", "__kmalloc_node_track_caller", "kfree")}


def ctx_61(**kw) -> ProbeContext:
    base = dict(has_kprobe_events=True, readme=README_ARG, kallsyms=dict(SYMS_61),
                btf_params={}, btf_offsets=None, btf_present=False, machine="x86_64")
    base.update(kw)
    return ProbeContext(**base)


# ---------------------------------------------------------------------- planning -----

def test_61_without_btf_uses_the_table_and_the_default_offset():
    plan = plan_probes(ctx_61(), "ftslab_1")
    by = {p.family: p for p in plan.probes}
    # the constant-size kmalloc() path of 6.1 (kmalloc_trace: cache, gfp, size)
    kt = by["kmalloc_cache"]
    assert kt.symbol == "kmalloc_trace"
    assert kt.definition == ("p:ftslab_1/kp_kmalloc_trace kmalloc_trace size=$arg3:u64 "
                             "name=+0(+96($arg1)):string gfp=$arg2:x32 caller=$stack0:symbol")
    assert by["kmalloc"].definition == ("p:ftslab_1/kp___kmalloc __kmalloc size=$arg1:u64 "
                                        "gfp=$arg2:x32 caller=$stack0:symbol")
    assert by["kmem_cache_alloc_lru"].roles == {"cache": 1, "gfp": 3}
    assert by["alloc_pages"].definition.endswith(
        "__alloc_pages order=$arg2:u32 gfp=$arg1:x32 node=$arg3:s32 caller=$stack0:symbol")
    # the caller of *_track_caller is its own argument, not the return address
    assert "caller=$arg4:symbol" in by["kmalloc_track_caller"].definition
    assert plan.offsets.source == "default" and plan.offsets.name == 96
    assert any("verified" in n for n in plan.notes)
    # kmalloc_slab is a lookup inside __kmalloc: not probed by default (double count)
    assert "kmalloc_slab" not in by
    assert {p.prototype_source for p in plan.probes} == {"table"}


def test_registers_when_the_kernel_has_no_argN():
    plan = plan_probes(ctx_61(readme="no such thing"), "ftslab_1")
    d = {p.family: p.definition for p in plan.probes}
    assert d["kmalloc_cache"].split()[2:4] == ["size=%dx:u64", "name=+0(+96(%di)):string"]
    with pytest.raises(UsageError, match="x86-64"):
        plan_probes(ctx_61(readme="", machine="aarch64"), "ftslab_1")


def test_user_offset_and_btf_offsets():
    p = plan_probes(ctx_61(), "ftslab_1", name_offset=104)
    assert p.offsets.source == "user"
    assert "name=+0(+104($arg1)):string" in p.probes[2].definition
    with pytest.raises(UsageError):
        plan_probes(ctx_61(), "ftslab_1", name_offset=99)
    b = plan_probes(ctx_61(btf_offsets={"name": 96, "size": 24, "object_size": 28}),
                    "ftslab_1")
    assert b.offsets.source == "btf"
    kca = next(x for x in b.probes if x.family == "kmem_cache_alloc")
    assert kca.args == (("name", "+0(+96($arg1)):string"), ("objsize", "+28($arg1):u32"),
                        ("gfp", "$arg2:x32"), ("caller", "$stack0:symbol"))


def test_btf_prototype_wins_over_the_table():
    # CONFIG_SLAB_BUCKETS puts `b` after size: BTF shows it, positions follow
    params = [("size", "size_t"), ("b", "kmem_buckets *"), ("flags", "gfp_t"),
              ("node", "int")]
    ctx = ctx_61(kallsyms={"__kmalloc_node_noprof": 1}, btf_params={
        "__kmalloc_node_noprof": params})
    p = plan_probes(ctx, "ftslab_1", families=("kmalloc_node",)).probes[0]
    assert p.prototype_source == "btf"
    assert p.roles == {"size": 1, "gfp": 3, "node": 4}
    # without BTF the configuration-dependent argument stops the scan: size only
    p2 = plan_probes(ctx_61(kallsyms={"__kmalloc_node_noprof": 1}), "ftslab_1",
                     families=("kmalloc_node",))
    assert p2.probes[0].roles == {"size": 1}
    assert any("configuration" in n for n in p2.notes)


def test_every_table_prototype_names_its_roles():
    for sym, params in KNOWN_PROTOTYPES.items():
        roles = roles_from_params(params)
        assert "size" in roles or "cache" in roles or "order" in roles, sym
    for m in FAMILY:
        assert all(c in KNOWN_PROTOTYPES for c in m.candidates
                   if not c.startswith("kmem_cache_alloc_trace") and
                   not c.startswith("kmem_cache_alloc_node_trace") and
                   c != "__kmalloc_track_caller"), m.family


def test_clones_and_ambiguous_symbols_are_not_probed():
    ctx = ctx_61(kallsyms={"__kmalloc.isra.0": 1, "kmalloc_trace": 2})
    plan = plan_probes(ctx, "ftslab_1", families=("kmalloc", "kmalloc_cache"))
    assert plan.probes == []
    why = dict(plan.skipped)
    assert "clones" in why["kmalloc"] and "ambiguous" in why["kmalloc_cache"]


def _host_tracefs() -> Tracefs:
    """The running kernel's tracefs, or skip (fail under FTSLAB_KERNEL_TESTS=1): its
    README is readable by root only."""
    root = Path(os.environ.get("FTSLAB_TRACEFS", "/sys/kernel/tracing"))
    if os.geteuid() != 0:
        unavailable("needs root (tracefs is readable by root only)")
    if not (root / "README").is_file():
        unavailable(f"no tracefs at {root}")
    if not VMLINUX.is_file():
        unavailable(f"no BTF at {VMLINUX}")
    return Tracefs(root)


def test_host_kernel_plan_from_its_own_kallsyms_and_btf():
    """The plan for the running kernel (whether or not it can run the probes), against
    what the kernel says through other routes (tests/kernel_oracle.py): symbols from
    /proc/kallsyms read against the catalogue, offsets and prototypes as bpftool reads
    the BTF, the fetch-arg style from the tracefs README."""
    from ftslab.kernel.procfs import read_probe_context
    tfs = _host_tracefs()
    ctx = read_probe_context(tfs)
    plan = plan_probes(ctx, "ftslab_1")
    btf = BtfRaw.from_file()
    off = btf.member_offsets("kmem_cache")
    assert plan.offsets.source == "btf"
    assert (plan.offsets.name, plan.offsets.size, plan.offsets.object_size) == (
        off["name"], off["size"], off["object_size"])
    # symbols: per family of the catalogue, the one name this kernel lists exactly once
    # (a family with a name listed twice is ambiguous: left to the unit tests above)
    syms = kallsyms_text_counts()
    default = {m.family: m.candidates for m in FAMILY if m.default}
    blacklist = kprobe_blacklist()
    compared = {f for f, cands in default.items() if all(syms.get(c, 0) <= 1 for c in cands)}
    expected = {f: present[0] for f, present in family_symbols(default, syms).items()
                if f in compared and present
                and (blacklist is None or present[0] not in blacklist)}
    assert expected, "ftslab's catalogue names none of this kernel's allocation functions"
    assert {p.family: p.symbol for p in plan.probes if p.family in compared} == expected
    # arguments: where this kernel's prototype (bpftool) puts size, cache, gfp, node...
    style = "$arg" if "$arg<N>" in tfs.readme() else "regs"
    assert plan.style == style
    for p in plan.probes:
        theirs = btf.prototype(p.symbol)
        assert theirs is not None, f"{p.symbol}: no BTF prototype (bpftool)"
        assert p.prototype_source == "btf" and ctx.btf_params[p.symbol] == theirs, p.symbol
        want = expected_fetch_args(theirs, style, off)
        args = dict(p.args)
        assert set(args) == set(want), (p.symbol, p.definition)
        for field, spec in want.items():
            ok = args[field].startswith(spec) if spec.endswith(":") else args[field] == spec
            assert ok, f"{p.symbol}: {field}={args[field]!r}, expected {spec!r}"
    lines = describe_probe_plan(plan)
    assert any("from this kernel's BTF" in x for x in lines)


def test_symbol_validation_blocks_injection():
    for bad in ("kfree\np:evil/x kfree", "kfree x=+0(%di):string", "", "a;b", "1abc",
                "x" * 200):
        with pytest.raises(UsageError):
            validate_symbol(bad)
    assert validate_symbol("foo.isra.0") == "foo.isra.0"
    with pytest.raises(UsageError):
        plan_probes(ctx_61(), "ftslab_1", extra_symbols=("kfree\n-:ftslab_2/kp_x",))


def test_parsers():
    assert parse_kallsyms_text("ffff T __kmalloc\nffff t x\nffff d data\nffff T __kmalloc"
                               " [mod]\n") == {"__kmalloc": 2, "x": 1}
    assert parse_kprobe_events("p:ftslab_12/kp___kmalloc __kmalloc size=%di:u64\n"
                               "r10:kprobes/r_x foo\n") == [
        ("ftslab_12", "kp___kmalloc", "__kmalloc"), ("kprobes", "r_x", "foo")]
    text = ("# tracer: nop\n"
            " python3-9 [000] ..... 1.0: kp_kmem_cache_alloc: (kmem_cache_alloc+0x0/0x2b0) "
            'name="filp" objsize=256 gfp=0xcc0 caller=alloc_empty_file+0x4b/0x110\n'
            " python3-9 [000] ..... 1.0: kp_kmem_cache_alloc: (kmem_cache_alloc+0x0/0x2b0) "
            "name=(fault) objsize=0\n"
            ' python3-9 [000] ..... 1.0: kmem_cache_alloc: call_site=x name="vma"\n')
    names = cache_names_in_trace(text, {"kp_kmem_cache_alloc"})
    assert names == ["filp", "(fault)"]
    assert check_cache_names(names, {"filp"}) == (2, ["(fault)"])


# ------------------------------------------------------------- control path -------

#: a real kprobe format file (Debian 6.1, tests/fixtures/6.1): every fake probe gets it
KPROBE_FORMAT = (FIX / "6.1" / "kprobe-kp_kmalloc.format").read_text()


@pytest.fixture
def fake_kprobe_tracefs(tmp_path, monkeypatch):
    root = make_fake_tracefs(tmp_path)
    (root / "kprobe_events").write_text("")
    (root / "README").write_text(README_ARG)
    monkeypatch.setattr("ftslab.kernel.procfs.read_probe_context",
                        lambda tfs, symbols=None: ctx_61(
                            btf_offsets={"name": 96, "size": 24, "object_size": 28},
                            btf_present=True))
    return root


class _Kernel:
    """Stands in for Tracefs._write: logs writes, makes probe event dirs, refuses the
    Nth write."""

    def __init__(self, root: Path, fail_at: int | None = None):
        self.root, self.fail_at, self.count, self.log = root, fail_at, 0, []

    def __call__(self, tfs, rel, text, append=True, instance=None, hint=None):
        self.count += 1
        if self.count == self.fail_at:
            raise KernelWriteError(str(tfs.root / rel), text, "EINVAL",
                                   "Invalid fetch argument in 'x' at column 3", hint)
        self.log.append((rel, text))
        if rel == "kprobe_events":
            kind, _, rest = text.partition(":")
            group, _, event = rest.split()[0].partition("/")
            d = self.root / "events" / group / event
            if kind == "p":
                d.mkdir(parents=True)
                (d / "format").write_text(KPROBE_FORMAT.replace("name: kp_kmalloc\n",
                                                                 f"name: {event}\n", 1))
            elif kind == "-":
                shutil.rmtree(d)
                if not os.listdir(d.parent):
                    d.parent.rmdir()


def _session(root, monkeypatch, fail_at=None, names=("filp", "kmalloc-64"), **opts):
    k = _Kernel(root, fail_at)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **kw: k(self, *a, **kw))
    trace = "".join(f' x-1 [000] ..... 1.0: kp_kmem_cache_alloc: (kmem_cache_alloc+0x0/0x1)'
                    f' name="{n}" objsize=8\n' for n in names)
    real_read = Tracefs.read
    monkeypatch.setattr(Tracefs, "read", lambda self, rel: trace if rel.endswith("/trace")
                        else real_read(self, rel))
    monkeypatch.setattr("ftslab.kernel.procfs.read_slab_names",
                        lambda: {"filp", "kmalloc-64", "vma"})
    warnings: list[str] = []
    s = Session(Tracefs(root), warnings.append, name="ftslab_999999")
    steps = s.plan(SessionOptions(kprobes="on", **opts), child_pid=4194305)
    return k, s, steps, warnings


def test_probe_steps_order_and_undo(fake_kprobe_tracefs, monkeypatch):
    k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch)
    kinds = [st.kind for st in steps]
    first_probe = kinds.index("kprobe")
    verify = kinds.index("verify")
    pid_step = next(i for i, st in enumerate(steps) if st.path.endswith("set_event_pid"))
    # probes exist before they are checked; checked before anything is filtered/enabled
    assert first_probe < verify < pid_step
    s.apply(steps)
    assert (fake_kprobe_tracefs / "events/ftslab_999999").is_dir()
    assert ("ftslab_999999", "kp_kmalloc_trace") in s.formats
    n_applied = len(k.log)
    s.close()
    undo = k.log[n_applied:]
    removals = [i for i, (rel, t) in enumerate(undo) if t.startswith("-:")]
    disables = [i for i, (rel, t) in enumerate(undo)
                if rel.endswith("/enable") and "ftslab_999999" in rel.split("/")[3]
                and t == "0"]
    assert removals and disables and max(disables) < min(removals)
    assert not (fake_kprobe_tracefs / "events/ftslab_999999").exists()
    assert not (fake_kprobe_tracefs / "instances/ftslab_999999").exists()


def test_refusal_at_every_step_leaves_nothing(fake_kprobe_tracefs, monkeypatch):
    _, _, steps, _ = _session(fake_kprobe_tracefs, monkeypatch)
    n = sum(1 for st in steps if st.value is not None) + 12  # + verify's own writes
    for fail_at in range(1, n):
        k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch, fail_at=fail_at)
        with pytest.raises(KernelWriteError):
            s.apply(steps)
        s.close()
        assert not (fake_kprobe_tracefs / "events/ftslab_999999").exists(), fail_at
        assert not (fake_kprobe_tracefs / "instances/ftslab_999999").exists(), fail_at


def test_garbage_cache_names_stop_before_recording(fake_kprobe_tracefs, monkeypatch):
    k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch,
                              names=("filp", "\x90\x11H", "(fault)"))
    with pytest.raises(ProbeVerifyFailed, match="not this kernel's caches") as ei:
        s.apply(steps)
    assert ei.value.exit_code == 11
    assert "`cache_name_offset` N" in str(ei.value)  # the parameter; the CLI: its flag
    from ftslab.cli.entry import in_flag_terms
    assert "with --cache-name-offset N" in in_flag_terms(ei.value)
    s.close()
    assert not (fake_kprobe_tracefs / "events/ftslab_999999").exists()
    # nothing was ever enabled beyond the checked probes
    enabled = [rel for rel, t in k.log if rel.endswith("/enable") and t == "1"]
    assert enabled and all("kmem_cache_alloc" in r or "kmalloc_trace" in r or
                           "kmalloc_node_trace" in r for r in enabled)


def test_no_probe_fired_is_an_error_not_a_pass(fake_kprobe_tracefs, monkeypatch):
    _, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch, names=())
    with pytest.raises(ProbeVerifyFailed, match="no probe"):
        s.apply(steps)
    s.close()


def test_kprobe_filters(fake_kprobe_tracefs, monkeypatch):
    _, _, steps, _ = _session(fake_kprobe_tracefs, monkeypatch, comm="nginx", min_size=64,
                              cache="filp")
    f = {st.path.split("/")[-2]: st.value for st in steps if st.path.endswith("/filter")}
    assert f["kp_kmem_cache_alloc"] == ('(comm == "nginx") && (objsize >= 64) && '
                                        '(name == "filp")')
    assert f["kp_kmalloc_trace"] == ('(comm == "nginx") && (size >= 64) && '
                                     '(name == "filp")')
    enabled = [st.path for st in steps if st.path.endswith("/enable")]
    # --cache: probes without a cache name are not recorded at all
    assert not any("kp___kmalloc/" in p for p in enabled)
    with pytest.raises(UsageError):
        _session(fake_kprobe_tracefs, monkeypatch, cache='x" || 1')


def test_kprobes_on_without_kprobe_events(fake_kprobe_tracefs, monkeypatch):
    (fake_kprobe_tracefs / "kprobe_events").unlink()
    with pytest.raises(Unsupported, match="no kprobes"):
        _session(fake_kprobe_tracefs, monkeypatch)
    warnings: list[str] = []
    s = Session(Tracefs(fake_kprobe_tracefs), warnings.append, name="ftslab_999999")
    steps = s.plan(SessionOptions(kprobes="auto"), child_pid=1)
    assert not any(st.kind for st in steps)
    assert len([w for w in warnings if "no kprobes" in w]) == 1


def test_reset_keeps_live_owners_probes(fake_kprobe_tracefs, monkeypatch, tmp_path):
    """reset removes probes of dead owners only (kprobe_events lists every probe).  Its
    spool clean-up runs in a directory and a registry of this test's own
    (FTSLAB_RUN_DIR, the current directory): a dead session's empty spool in each goes."""
    k = _Kernel(fake_kprobe_tracefs)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **kw: k(self, *a, **kw))
    tfs = Tracefs(fake_kprobe_tracefs)
    dead = 2 ** 22 + 12345  # above pid_max on this machine: never alive
    mine = os.getpid()
    lines = []
    for pid in (dead, mine):
        d = f"p:ftslab_{pid}/kp___kmalloc __kmalloc size=$arg1:u64"
        tfs.kprobe_add(d)
        lines.append(d)
    lines.append("p:kprobes/other __kmalloc")
    (fake_kprobe_tracefs / "kprobe_events").write_text("\n".join(lines) + "\n")
    assert [p[2] for p in tfs.stale_probes()] == [dead]
    cwd, run, elsewhere = tmp_path / "cwd", tmp_path / "run", tmp_path / "elsewhere"
    here_spool = cwd / f"x.dat.ftslab-spool-{dead}"
    registered = elsewhere / f"y.dat.ftslab-spool-{dead + 1}"
    for d in (here_spool, registered, run):
        d.mkdir(parents=True)
    os.symlink(registered, run / str(dead + 1))
    monkeypatch.setenv("FTSLAB_RUN_DIR", str(run))
    monkeypatch.chdir(cwd)
    from ftslab.cli.entry import main
    assert main(["reset", "--tracefs", str(fake_kprobe_tracefs)]) == 0
    removed = [t for rel, t in k.log if t.startswith("-:")]
    assert removed == [f"-:ftslab_{dead}/kp___kmalloc"]
    with pytest.raises(ValueError):
        tfs.kprobe_remove("kprobes", "other")
    assert not here_spool.exists() and not registered.exists()
    assert os.listdir(run) == []


def test_kprobes_only_enables_no_tracepoint(fake_kprobe_tracefs, monkeypatch):
    k = _Kernel(fake_kprobe_tracefs)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **kw: k(self, *a, **kw))
    s = Session(Tracefs(fake_kprobe_tracefs), lambda m: None, name="ftslab_999999")
    steps = s.plan(SessionOptions(kprobes="only", cache="filp"), child_pid=1)
    enabled = [st.path for st in steps if st.path.endswith("/enable")]
    assert enabled and all("/events/ftslab_999999/kp_" in p for p in enabled)
    assert s.formats == {}  # no tracepoint formats: only the probes' once created


def test_blacklist_and_ftrace_list():
    from ftslab.kernel.kprobes import parse_function_list
    assert parse_function_list("0xffffffff81000000-0xffffffff81000010\t__kmalloc\n") == {
        "__kmalloc"}
    assert parse_function_list("kfree\nfoo [bar]\n") == {"kfree", "foo"}
    plan = plan_probes(ctx_61(blacklist={"__kmalloc"}, ftrace_functions={"kmalloc_trace"}),
                       "ftslab_1", families=("kmalloc", "kmalloc_cache", "kmem_cache_alloc"))
    assert dict(plan.skipped)["kmalloc"].endswith("kprobe blacklist")
    ft = {p.symbol: p.ftrace for p in plan.probes}
    assert ft == {"kmalloc_trace": True, "kmem_cache_alloc": False}


def test_an_asked_for_symbol_that_cannot_be_probed_is_an_error(fake_kprobe_tracefs,
                                                               monkeypatch):
    for sym in ("no_such_function", "kfree.isra.0"):
        with pytest.raises(UsageError, match=f"cannot probe {sym}"):
            _session(fake_kprobe_tracefs, monkeypatch, kprobe_symbols=(sym,))


def test_probes_exist_before_the_instance_and_go_after_it(fake_kprobe_tracefs, monkeypatch):
    """Undone newest first, the instance's removal (which disables all that is enabled in
    it) precedes the probes' removal even if a signal cut an enable's undo short."""
    k, s, steps, _ = _session(fake_kprobe_tracefs, monkeypatch)
    kinds = [st.kind or ("mkdir" if st.value is None else "write") for st in steps]
    assert kinds.index("mkdir") > max(i for i, x in enumerate(kinds) if x == "kprobe")
    inst_dir = fake_kprobe_tracefs / "instances/ftslab_999999"
    seen = []
    real = k.__call__

    def spy(tfs, rel, text, *a, **kw):
        if text.startswith("-:"):
            seen.append(inst_dir.exists())
        return real(tfs, rel, text, *a, **kw)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **kw: spy(self, *a, **kw))
    s.apply(steps)
    s.close()
    assert seen and not any(seen)


def test_kprobe_option_combinations_refused_up_front():
    from ftslab.cli.entry import main
    assert main(["record", "--kprobes", "only", "-e", "kmem:kfree", "--dry-run"]) == 2
    assert main(["record", "--kprobes", "off", "--kprobe-symbol", "kfree", "--dry-run"]) == 2


def test_filters_reach_probes_or_are_refused(fake_kprobe_tracefs, monkeypatch):
    _, _, steps, warnings = _session(fake_kprobe_tracefs, monkeypatch,
                                     filters=("gfp_flags & 0x400",))
    said = " ".join(warnings)
    assert "kp_kmalloc_trace" in said and "unfiltered" in said
    k = _Kernel(fake_kprobe_tracefs)
    monkeypatch.setattr(Tracefs, "_write", lambda self, *a, **kw: k(self, *a, **kw))
    s = Session(Tracefs(fake_kprobe_tracefs), lambda m: None, name="ftslab_999999")
    with pytest.raises(UsageError, match="none of the recorded events"):
        s.plan(SessionOptions(kprobes="only", filters=("bytes_req > 100",)), child_pid=1)
    s = Session(Tracefs(fake_kprobe_tracefs), lambda m: None, name="ftslab_999999")
    steps = s.plan(SessionOptions(kprobes="only", filters=("size > 100",)), child_pid=1)
    f = {st.path.split("/")[-2] for st in steps if st.path.endswith("/filter")}
    assert "kp___kmalloc" in f and "kp_kmem_cache_alloc" not in f


def test_inner_probe_counted_when_its_outer_function_was_not_probed():
    from ftslab.analysis.build import build_report
    from ftslab.trace.textparse import parse_text
    line = (" a-1 [000] ..... 1.00000{i}: kp___kmalloc_large_node_noprof: "
            "(__kmalloc_large_node_noprof+0x4/0x100) size=20000 gfp=0xcc0 node=-1 "
            "caller={c}\n")
    text = "".join(line.format(i=i, c=c) for i, c in enumerate(
        ["__kmalloc_node_noprof+0x36b/0x4a0", "__kmalloc_node_noprof+0x36b/0x4a0",
         "foo+0x1/0x10"]))
    rep = build_report(parse_text(text), source="kprobe")
    assert sum(r["count"] for r in rep.table("by_function").rows) == 3
    outer = text + (" a-1 [000] ..... 1.000009: kp___kmalloc_node_noprof: "
                    "(__kmalloc_node_noprof+0x4/0x4a0) size=20000 gfp=0xcc0 node=-1 "
                    "caller=bar+0x1/0x10\n")
    rows = {r["function"]: r["count"] for r in build_report(
        parse_text(outer), source="kprobe").table("by_function").rows}
    assert rows == {"__kmalloc_large_node_noprof": 1, "__kmalloc_node_noprof": 1}
