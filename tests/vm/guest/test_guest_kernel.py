"""Facts about the guest kernel that ftslab's kprobe path relies on, read without ftslab.

If one of these fails, the kernel changed (a new Debian upload): the expectation in
vmfacts.py and the fixtures in tests/fixtures/<kernel>/ need a look before ftslab does.
"""
from __future__ import annotations

import subprocess

import pytest

from .vmfacts import TRACEFS, BtfRaw, filter_functions, kallsyms_text_counts, pahole_members, tool


def test_tracefs_has_kprobe_and_dynamic_events():
    assert (TRACEFS / "kprobe_events").is_file()
    assert (TRACEFS / "dynamic_events").is_file()
    assert (TRACEFS / "error_log").is_file()
    assert (TRACEFS / "instances").is_dir()


def test_readme_fetch_arg_support(expect):
    readme = (TRACEFS / "README").read_text()
    assert ("$arg<N>" in readme) == expect["readme_arg_n"]
    # BTF-typed args (<argname>[->field...]) came with CONFIG_PROBE_EVENTS_BTF_ARGS (v6.6)
    assert ("<argname>" in readme) == expect["readme_btf_args"]
    assert "$stack<index>" in readme and "$retval" in readme


def test_kmalloc_family_symbols(expect):
    """Each expected symbol is one text symbol in kallsyms and ftrace-able; the names of
    other kernel generations are absent (there is no out-of-line `kmalloc` at all)."""
    syms = kallsyms_text_counts()
    aff = filter_functions()
    for s in expect["symbols"]:
        assert syms.get(s) == 1, f"{s}: listed {syms.get(s, 0)} times in /proc/kallsyms"
        assert s in aff, f"{s} not in available_filter_functions"
    present = [s for s in expect["absent"] if s in syms]
    assert not present, f"names of another kernel generation present: {present}"


def test_kmem_tracepoint_fields(expect):
    """Whether kmem:kmem_cache_alloc carries the cache name (6.18 does; these do not)."""
    fmt = (TRACEFS / "events/kmem/kmem_cache_alloc/format").read_text()
    has_name = "char[] name;" in fmt or " name;" in fmt
    assert has_name == expect["kmem_cache_alloc_has_name"], fmt
    for ev in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
               "mm_page_free"):
        assert (TRACEFS / f"events/kmem/{ev}/format").is_file(), ev


def test_btf_present():
    assert (TRACEFS.parent / "btf/vmlinux").stat().st_size > 1_000_000


def test_pahole_kmem_cache_offsets(expect):
    pahole = tool("pahole")
    if not pahole:
        pytest.skip("pahole not installed (Debian package dwarves)")
    cp = subprocess.run([pahole, "-C", "kmem_cache", "/sys/kernel/btf/vmlinux"],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    members = pahole_members(cp.stdout)
    got = {k: members[k][0] for k in ("name", "size", "object_size")}
    assert got == expect["offsets"], cp.stdout


@pytest.fixture(scope="module")
def btf_raw():
    if not tool("bpftool"):
        pytest.skip("bpftool not installed")
    return BtfRaw.from_kernel()


def test_bpftool_kmem_cache_offsets(btf_raw, expect):
    off = btf_raw.member_offsets("kmem_cache")
    assert {k: off[k] for k in ("name", "size", "object_size")} == expect["offsets"]


def test_prototypes_argument_order(btf_raw, expect):
    """Parameter names in order: on 6.12 CONFIG_SLAB_BUCKETS puts `kmem_buckets *b`
    second in __kmalloc_node_noprof and __kmalloc_node_track_caller_noprof."""
    got = {f: [n for n, _t in (btf_raw.prototype(f) or [])] for f in expect["prototypes"]}
    assert got == expect["prototypes"]
    for f in expect["prototypes"]:
        for name, typ in btf_raw.prototype(f):
            if name == "s":
                assert typ == "struct kmem_cache *", (f, typ)
            if name == "b":
                assert typ == "kmem_buckets *", (f, typ)
