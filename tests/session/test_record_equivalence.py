"""The binary decoder and the text parser agree with the kernel, field by field.

One real capture, read twice: first the instance's ``trace`` file (the kernel's own text
rendering, non-consuming), then the raw pages of the same events from trace_pipe_raw.
``options/hash-ptr`` is turned off in our private instance so pointers print unhashed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from ftslab.trace import columns
from ftslab.trace import pages as pages_mod
from ftslab.trace.formats import parse_format, parse_header_event, parse_header_page
from ftslab.trace.kallsyms import Symbolizer
from ftslab.trace.textparse import parse_lines
from ftslab.kernel.tracefs import Tracefs, read_text_file
from ftslab.kernel.procfs import online_cpus

EVENTS = ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
          "mm_page_free")


def _capture(tfs: Tracefs):
    inst = tfs.instance_create(f"ftslab_{os.getpid()}_eq")
    try:
        inst.tracing_on(False)
        inst.buffer_size_kb_set(16384)
        inst.option_set("hash-ptr", False)
        for ev in EVENTS:
            inst.event_enable("kmem", ev)
        inst.trace_clear()
        inst.tracing_on(True)
        subprocess.run([sys.executable, "-c",
                        "import os\nfor i in range(300):\n r,w=os.pipe(); os.close(r); "
                        "os.close(w); os.close(os.open('/dev/null', 0))"], check=True)
        inst.tracing_on(False)
        text = inst.read("trace")
        pages = {}
        hp = parse_header_page(tfs.read("events/header_page"))
        psize = hp.data_offset + hp.data_size
        for cpu in online_cpus():
            fd = inst.raw_open(cpu)
            chunks = []
            try:
                while True:
                    try:
                        b = os.read(fd, psize)
                    except BlockingIOError:
                        break
                    if not b:
                        break
                    chunks.append(b.ljust(psize, b"\0"))
            finally:
                os.close(fd)
            pages[cpu] = b"".join(chunks)
        stats = [inst.cpu_stats(c) for c in online_cpus()]
        return text, pages, stats
    finally:
        for ev in EVENTS:
            try:
                inst.event_enable("kmem", ev, False)
            except Exception:
                pass
        inst.destroy()


def _print_only(fmt) -> set[str]:
    """Names the event's print fmt prints that are no field of its record: values the
    kernel computes for the text (on 6.18, kmalloc's accounted= from gfp_flags, the page
    allocator's page= from pfn), so the raw record cannot have them."""
    m = re.match(r'\s*"((?:[^"\\]|\\.)*)"', fmt.print_fmt)
    assert m, fmt.print_fmt[:200]
    return set(re.findall(r"(\w+)=%", m.group(1))) - {f.name for f in fmt.fields}


def test_raw_decoder_matches_kernel_text(kernel):
    tfs = Tracefs.locate()
    text, pages, stats = _capture(tfs)
    assert sum(s.lost for s in stats) == 0, "buffer overflowed: equivalence needs every event"
    fmts = {}
    for ev in EVENTS:
        f = parse_format(tfs.read(f"events/kmem/{ev}/format"), "kmem")
        fmts[f.id] = f
    hp = parse_header_page(tfs.read("events/header_page"))
    he = parse_header_event(tfs.read("events/header_event"))
    raw = []
    for cpu, data in pages.items():
        walk = pages_mod.walk_pages(data, cpu, hp, he)
        raw.extend(columns.iter_events(data, walk, fmts))
    raw.sort(key=lambda e: (e.ts, e.cpu))
    by_name = {f.name: f for f in fmts.values()}
    print_only = {name: _print_only(f) for name, f in by_name.items()}
    txt = list(parse_lines(text.splitlines(), by_name, strict=True))
    assert len(raw) > 1000
    assert len(txt) == len(raw)
    sym = Symbolizer(read_text_file("/proc/kallsyms"))
    # the text is ordered by timestamp across CPUs, with microsecond resolution; pair
    # each text event with the raw event of the same cpu at the same position
    per_cpu_raw: dict[int, list] = {}
    for e in raw:
        per_cpu_raw.setdefault(e.cpu, []).append(e)
    per_cpu_txt: dict[int, list] = {}
    for e in txt:
        per_cpu_txt.setdefault(e.cpu, []).append(e)
    compared = 0
    for cpu, revs in per_cpu_raw.items():
        tevs = per_cpu_txt.get(cpu, [])
        assert len(tevs) == len(revs), f"cpu {cpu}"
        for r, t in zip(revs, tevs):
            assert t.name == r.name
            assert t.pid == r.pid
            # the kernel prints ns2usecs(ts): rounded to the nearest microsecond
            assert t.ts // 1000 == (r.ts + 500) // 1000, (t, r)
            for key, tv in t.fields.items():
                if key not in r.fields:
                    assert key in print_only[r.name], (r.name, key)
                    continue
                rv = r.fields[key]
                if key == "call_site":
                    assert tv == sym(rv, full=True), (key, tv, rv)
                else:
                    assert tv == rv, (r.name, key, tv, rv)
                compared += 1
    assert compared > 5000
