"""ftslab's kprobe logic against what Debian's 6.1 and 6.12 kernels really said
(tests/fixtures/6.1, tests/fixtures/6.12: captured under QEMU by tests/vm/capture_fixtures.py,
without ftslab code; see their README.md).

- planning from each kernel's own kallsyms, README, BTF prototypes and pahole offsets
  gives the symbols and argument positions those kernels have;
- the kprobe events' raw ring-buffer pages decode to what the kernel printed as text;
- error_log entries of refused definitions are turned into one line with the caret;
- the cache-name check accepts the names those kernels printed.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftslab.trace import columns
from ftslab.trace import pages
from ftslab.trace.formats import parse_format, parse_header_event, parse_header_page
from ftslab.trace.kallsyms import Symbolizer
from ftslab.kernel.kprobes import ProbeContext, cache_names_in_trace, check_cache_names, parse_function_list, parse_kallsyms_text, plan_probes
from ftslab.trace.textparse import parse_lines
from ftslab.kernel.tracefs import Tracefs

FIX = Path(__file__).resolve().parents[1] / "fixtures"
KERNELS = ("6.1", "6.12")


def _prototypes(text: str) -> dict[str, list[tuple[str, str]]]:
    """``name(type a, type b)`` lines -> {name: [(a, type), ...]}."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)\((.*)\)$", line.strip())
        if not m:
            continue
        params = []
        for p in filter(None, (x.strip() for x in m.group(2).split(","))):
            pm = re.match(r"^(.*?)(\w+)$", p)
            params.append((pm.group(2), " ".join(pm.group(1).split())))
        out[m.group(1)] = params
    return out


def _pahole_offsets(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s+.*?\b(\w+);\s+/\*\s+(\d+)\s+\d+\s+\*/", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _ctx(k: str) -> ProbeContext:
    d = FIX / k
    offs = _pahole_offsets((d / "pahole-kmem_cache.txt").read_text())
    return ProbeContext(
        has_kprobe_events=True, readme=(d / "tracefs-README.txt").read_text(),
        kallsyms=parse_kallsyms_text((d / "kallsyms-kmalloc.txt").read_text()),
        btf_params=_prototypes((d / "btf-prototypes.txt").read_text()),
        btf_offsets={k2: offs[k2] for k2 in ("name", "size", "object_size")},
        btf_present=True, machine="x86_64",
        ftrace_functions=parse_function_list(
            (d / "available_filter_functions-kmalloc.txt").read_text()))


EXPECTED = {
    "6.1": {
        "kmalloc": "__kmalloc size=$arg1:u64 gfp=$arg2:x32 caller=$stack0:symbol",
        "kmalloc_cache": "kmalloc_trace size=$arg3:u64 name=+0(+96($arg1)):string "
                         "objsize=+28($arg1):u32 gfp=$arg2:x32 caller=$stack0:symbol",
        "kmalloc_track_caller": "__kmalloc_node_track_caller size=$arg1:u64 gfp=$arg2:x32 "
                                "node=$arg3:s32 caller=$arg4:symbol",
        "kmem_cache_alloc_lru": "kmem_cache_alloc_lru name=+0(+96($arg1)):string "
                                "objsize=+28($arg1):u32 gfp=$arg3:x32 caller=$stack0:symbol",
        "alloc_pages": "__alloc_pages order=$arg2:u32 gfp=$arg1:x32 node=$arg3:s32 "
                       "caller=$stack0:symbol",
    },
    "6.12": {
        "kmalloc": "__kmalloc_noprof size=$arg1:u64 gfp=$arg2:x32 caller=$stack0:symbol",
        # CONFIG_SLAB_BUCKETS: kmem_buckets *b is the second argument
        "kmalloc_node": "__kmalloc_node_noprof size=$arg1:u64 gfp=$arg3:x32 node=$arg4:s32 "
                        "caller=$stack0:symbol",
        "kmalloc_track_caller": "__kmalloc_node_track_caller_noprof size=$arg1:u64 "
                                "gfp=$arg3:x32 node=$arg4:s32 caller=$arg5:symbol",
        "kmalloc_cache": "__kmalloc_cache_noprof size=$arg3:u64 name=+0(+96($arg1)):string "
                         "objsize=+28($arg1):u32 gfp=$arg2:x32 caller=$stack0:symbol",
        "kmem_cache_alloc": "kmem_cache_alloc_noprof name=+0(+96($arg1)):string "
                            "objsize=+28($arg1):u32 gfp=$arg2:x32 caller=$stack0:symbol",
    },
}


@pytest.mark.parametrize("k", KERNELS)
def test_plan_from_the_kernels_own_facts(k):
    plan = plan_probes(_ctx(k), "ftslab_7")
    got = {p.family: p.definition.split(" ", 1)[1] for p in plan.probes}
    for fam, want in EXPECTED[k].items():
        assert got[fam] == want, (k, fam)
    assert (plan.offsets.name, plan.offsets.size, plan.offsets.object_size) == (96, 24, 28)
    assert {p.prototype_source for p in plan.probes} == {"btf"}
    assert all(p.ftrace for p in plan.probes), "every family member is ftrace-able there"
    assert plan.skipped == [] or all(f == "kmalloc_slab" for f, _ in plan.skipped)


def test_the_kernel_accepted_these_definitions():
    """The captured kprobe_events (what the kernel listed back) hold the same fetch-arg
    forms ftslab writes: deref string through the name pointer, u32 object size."""
    for k in KERNELS:
        listed = (FIX / k / "kprobe_events.txt").read_text()
        assert "name=+0(+96(%di)):string objsize=+28(%di):u32" in listed
        assert "caller=$stack0:symbol" in listed


@pytest.mark.parametrize("k", KERNELS)
def test_raw_kprobe_pages_decode_like_the_kernel_text(k):
    d = FIX / k
    fmts = {}
    for p in list(d.glob("kprobe-kp_*.format")) + list(d.glob("kmem-*.format")):
        text = p.read_text()
        system = "kmem" if p.name.startswith("kmem-") else "ftslab"
        f = parse_format(text, system)
        fmts[f.id] = f
    hp = parse_header_page((d / "header_page").read_text())
    he = parse_header_event((d / "header_event").read_text())
    raw = []
    for rawf in sorted(d.glob("kprobe-cpu*.raw")):
        cpu = int(re.search(r"cpu(\d+)", rawf.name).group(1))
        data = rawf.read_bytes()
        walk = pages.walk_pages(data, cpu, hp, he)
        raw.extend(columns.iter_events(data, walk, fmts))
    raw = [e for e in raw if e.name.startswith("kp_") and not e.name.endswith("_ret")]
    assert len(raw) > 50, len(raw)
    by_name = {f.name: f for f in fmts.values()}
    text = (d / "kprobe-trace.txt").read_text().splitlines()
    txt = [e for e in parse_lines(text, by_name) if e.name.startswith("kp_")]
    sym = Symbolizer((d / "kallsyms-callsites.txt").read_text())
    # the text holds the first 600 lines, the raw pages up to 8 per CPU: compare the
    # events both have, matched on (cpu, timestamp in µs, event, pid)
    key = lambda e, ts: (e.cpu, ts, e.name, e.pid)
    tmap = {}
    for e in txt:
        tmap.setdefault(key(e, e.ts // 1000), []).append(e)
    compared = 0
    missing: list = []
    for r in raw:
        cands = tmap.get(key(r, (r.ts + 500) // 1000))
        if not cands:
            continue
        t = cands.pop(0)
        for f, tv in t.fields.items():
            if f == "__probe_ip":
                continue
            rv = r.fields[f]
            if f == "caller":
                # kallsyms-callsites.txt holds only the named functions: their sizes
                # (the "/0x..." part) cannot be derived from it, the rest must agree
                # (module names are not in it either)
                name = sym(rv)
                if name is None:
                    missing.append((tv, hex(rv)))
                    continue
                assert tv.split("/")[0] == name.split(" [")[0], (f, tv, hex(rv))
            else:
                assert tv == rv, (r.name, f, tv, rv)
            compared += 1
    assert compared > 200, compared
    assert len(missing) < compared // 20, missing[:5]  # callers the capture did not list


@pytest.mark.parametrize("k", KERNELS)
def test_cache_names_of_the_capture_are_real(k):
    d = FIX / k
    text = (d / "kprobe-trace.txt").read_text()
    names = cache_names_in_trace(text, {"kp_kmem_cache_alloc", "kp_kmalloc_cache"})
    known = {line.split()[0] for line in (d / "slabinfo.txt").read_text().splitlines()[2:]
             if line.strip()}
    checked, bad = check_cache_names(names, known)
    assert checked > 20 and bad == []
    # and a wrong offset's garbage would not pass
    assert check_cache_names(["\x90\x11", "(fault)"], known)[1] == ["\x90\x11", "(fault)"]


@pytest.mark.parametrize("k", KERNELS)
def test_error_log_entries_become_one_line(k):
    text = (FIX / k / "error_log.txt").read_text()
    blocks = [b for b in text.split("===== ")[1:] if "Command:" in b]
    assert len(blocks) >= 5
    seen = 0
    for b in blocks:
        entry = b[b.index("["):].strip("\n")
        brief = Tracefs.error_log_brief(entry)
        assert "\n" not in brief and "trace_kprobe: error:" in brief
        assert "column" in brief or "at its end" in brief
        seen += 1
    reg = next(b for b in blocks if "bad_reg" in b.split("\n")[0])
    brief = Tracefs.error_log_brief(reg[reg.index("["):])
    assert "Invalid register name" in brief and "'%zz:u64'" in brief
