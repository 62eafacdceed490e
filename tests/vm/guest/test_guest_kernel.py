"""Facts about the guest kernel that ftslab's kprobe path relies on, read without ftslab.

Each is checked against a second, independent reading of the same kernel (pahole
against bpftool, the README against the kernel's configuration, a tracepoint's format
file against its BTF record): if one of these fails, the kernel or the tools changed,
and the fixtures in tests/fixtures/<kernel>/ may need a look before ftslab does.
"""
from __future__ import annotations

from .vmfacts import (TRACEFS, BtfRaw, filter_functions, kallsyms_text_counts,
                      pahole_members)


def test_tracefs_has_kprobe_and_dynamic_events():
    assert (TRACEFS / "kprobe_events").is_file()
    assert (TRACEFS / "dynamic_events").is_file()
    assert (TRACEFS / "error_log").is_file()
    assert (TRACEFS / "instances").is_dir()


def test_readme_fetch_arg_support(expect):
    """The README offers what the configuration says the kernel was built with:
    $arg<N> with CONFIG_HAVE_FUNCTION_ARG_ACCESS_API, BTF-typed args (<argname>) with
    CONFIG_PROBE_EVENTS_BTF_ARGS (v6.6+)."""
    readme = (TRACEFS / "README").read_text()
    cfg = expect.config
    assert ("$arg<N>" in readme) == (cfg.get("CONFIG_HAVE_FUNCTION_ARG_ACCESS_API") == "y")
    assert ("<argname>" in readme) == (cfg.get("CONFIG_PROBE_EVENTS_BTF_ARGS") == "y")
    assert "$stack<index>" in readme and "$retval" in readme


def test_kmalloc_family_symbols(expect):
    """Each family this kernel has is one text symbol in kallsyms and ftrace-able, and
    no family has names of two kernel generations at once (the catalogue's order would
    then decide which is probed)."""
    from ftslab.events import FAMILY
    syms = kallsyms_text_counts()
    aff = filter_functions()
    assert {"kmalloc", "kmalloc_node", "kmem_cache_alloc"} <= set(expect.symbols), \
        expect.symbols
    for fam, s in expect.symbols.items():
        assert s in aff, f"{s} not in available_filter_functions"
    for m in FAMILY:
        listed = [c for c in m.candidates if c in syms]
        assert len(listed) <= 1, f"{m.family}: {listed} all in /proc/kallsyms"


def test_kmem_tracepoint_fields(expect):
    """Whether kmem:kmem_cache_alloc carries the cache name: the format file says what
    the tracepoint's BTF record struct says."""
    fmt = (TRACEFS / "events/kmem/kmem_cache_alloc/format").read_text()
    has_name = "char[] name;" in fmt or " name;" in fmt
    assert has_name == expect.kmem_cache_alloc_has_name, fmt
    for ev in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
               "mm_page_free"):
        assert (TRACEFS / f"events/kmem/{ev}/format").is_file(), ev


def test_btf_present():
    assert (TRACEFS.parent / "btf/vmlinux").stat().st_size > 1_000_000


def test_pahole_and_bpftool_agree_on_kmem_cache(expect):
    members = pahole_members("kmem_cache")
    assert {k: members[k][0] for k in ("name", "size", "object_size")} == expect.offsets
    assert BtfRaw.from_file().member_offsets("kmem_cache")["name"] == members["name"][0]


def test_prototypes_follow_the_configuration(expect):
    """CONFIG_SLAB_BUCKETS adds `kmem_buckets *b` after size to __kmalloc_node*; the
    cache argument of the cache functions is a `struct kmem_cache *`."""
    node = expect.prototypes[expect.symbols["kmalloc_node"]]
    has_b = ("b", "kmem_buckets *") in node
    assert has_b == (expect.config.get("CONFIG_SLAB_BUCKETS") == "y"), node
    assert node[0] == ("size", "size_t"), node
    for fam in ("kmem_cache_alloc", "kmalloc_cache"):
        if fam in expect.symbols:
            params = expect.prototypes[expect.symbols[fam]]
            assert params[0][1] == "struct kmem_cache *", (fam, params)
