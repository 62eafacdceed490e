"""load(fields=...): the columns a report reads, decoded block by block with each CPU's
pages dropped, must equal what the lazy whole-CPU decode gives, on real captures."""
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ftslab.trace import decode_helper
from ftslab.trace import blocks as blocks_mod
from ftslab.trace import pages as pages_mod
from ftslab.trace.loader import load, read
from ftslab.analysis.build import build_report
from ftslab.events import fields_read
from ftslab.cli.render import render_text

FIX = Path(__file__).resolve().parents[1] / "fixtures"
RECORDINGS = sorted(FIX.glob("*/*.dat"))


def _same_columns(a, b, fields):
    assert sorted(a.columns) == sorted(b.columns)
    checked = 0
    for key, ca in a.columns.items():
        cb = b.columns[key]
        assert np.array_equal(ca.ts, cb.ts) and np.array_equal(ca.pid, cb.pid)
        assert np.array_equal(ca.cpu, cb.cpu)
        if ca.stack is None:
            assert cb.stack is None
        else:
            assert np.array_equal(ca.stack, cb.stack)
        want = [n for n in fields(*key) if n in ca.fields]
        assert sorted(cb.fields) == sorted(want)
        for n in want:
            assert ca.fields[n].tolist() == cb.fields[n].tolist(), (key, n)
            checked += len(cb)
    return checked


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: f"{p.parent.name}/{p.name}")
@pytest.mark.parametrize("block_pages,shared", [(2048, False), (8, False), (8, True)],
                         ids=["2048", "8", "8-forked"])
def test_fields_path_gives_the_lazy_columns(path, block_pages, shared, monkeypatch):
    # 8-page blocks: every recording spans many blocks (events on block edges, a
    # page-order scatter per block, columns joined across blocks and CPUs); forked:
    # blocks shared with a child process (decode_helper.py), whatever their number
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", block_pages)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 2 if shared else 1 << 30)
    monkeypatch.setattr(decode_helper, "usable_cpus", lambda: 2)
    lazy = load(path)
    eager = load(path, fields=fields_read)
    assert _same_columns(lazy, eager, fields_read) > 0
    assert eager.meta.lost == lazy.meta.lost
    assert eager.meta.unparsed == lazy.meta.unparsed
    assert eager.stacks == lazy.stacks
    assert eager.meta.extra.get("stacks_unattributed") == lazy.meta.extra.get(
        "stacks_unattributed")
    assert list(render_text(build_report(eager))) == list(render_text(build_report(lazy)))


def test_fields_path_keeps_only_the_named_fields():
    ds = load(FIX / "6.18" / "ftslab-open200.dat", fields=lambda s, n: ("ptr",))
    kc = ds.columns[("kmem", "kmem_cache_alloc")]
    assert list(kc.fields) == ["ptr"] and len(kc.fields["ptr"]) == len(kc)


def _cols(system, name, ts, ptrs, names=None):
    from ftslab.dataset import EventColumns
    fields = {"ptr": np.array(ptrs, np.uint64)}
    if names is not None:
        fields["name"] = np.array(names, dtype=object)
    n = len(ts)
    return {(system, name): EventColumns(system=system, name=name,
                                         ts=np.array(ts, np.uint64),
                                         cpu=np.zeros(n, np.int32),
                                         pid=np.arange(n, dtype=np.int32), fields=fields)}


def test_column_sink_grows_in_place_and_rolls_back_a_cpu():
    sink = blocks_mod.ColumnSink()
    ts = list(range(100_000))
    sink.add(_cols("kmem", "kfree", ts, ts))  # past the first capacity: it grows
    sink.add(_cols("kmem", "kmem_cache_alloc", [5, 6], [7, 8], ["a", "b"]))
    mark = sink.mark()
    sink.add(_cols("kmem", "kfree", [1, 2], [3, 4]))
    sink.add(_cols("kmem", "kmem_cache_alloc", [9], [10], ["c"]))
    sink.add(_cols("kmem", "mm_page_alloc", [11], [12]))
    sink.rollback(mark)  # that CPU turned out to hold kernel stacks: decoded otherwise
    sink.add(_cols("kmem", "kfree", [100_000], [100_000]))
    cols = sink.columns()
    assert sorted(cols) == [("kmem", "kfree"), ("kmem", "kmem_cache_alloc")]
    kf = cols[("kmem", "kfree")]
    assert kf.ts.tolist() == list(range(100_001))
    assert kf.fields["ptr"].tolist() == list(range(100_001))
    assert kf.pid.tolist() == list(range(100_000)) + [0]
    kc = cols[("kmem", "kmem_cache_alloc")]
    assert kc.fields["name"].tolist() == ["a", "b"] and kc.ts.tolist() == [5, 6]


def test_string_columns_keep_their_distinct_values_through_joins():
    from ftslab.dataset import StrColumn, join_str_columns, str_column
    from ftslab.analysis.frames import factorize
    a = str_column(np.array([1, 0, 1, 2]), ["dentry", "filp", "dentry"])  # a repeat
    assert a.tolist() == ["filp", "dentry", "filp", "dentry"] and a.labels == ["dentry", "filp"]
    b = str_column(np.array([0, 0, 1]), ["vma_lock", "filp"])
    j = join_str_columns([a, b])
    assert isinstance(j, StrColumn)
    assert j.tolist() == a.tolist() + b.tolist()
    assert [j.labels[c] for c in j.codes] == j.tolist() and len(set(j.labels)) == 3
    codes, labels = factorize(j)
    assert [labels[c] for c in codes] == j.tolist()
    plain = j[np.array([True, False, True, True, False, False, True])]
    assert getattr(plain, "codes", None) is None  # a selection is a plain object array
    codes, labels = factorize(plain)
    assert [labels[c] for c in codes] == plain.tolist()
    # a part without codes: a plain join, same values
    assert join_str_columns([a, np.array(["x"], dtype=object)]).tolist() == a.tolist() + ["x"]


def test_real_cache_names_come_grouped():
    ds = load(FIX / "6.18" / "ftslab-open200.dat", fields=fields_read)
    names = ds.columns[("kmem", "kmem_cache_alloc")].fields["name"]
    assert names.codes is not None and len(set(names.labels)) == len(names.labels)
    assert [names.labels[c] for c in names.codes] == names.tolist()
    assert "filp" in names.labels


def test_the_block_decoder_tells_its_progress_block_by_block(monkeypatch):
    from ftslab.progress import Progress
    seen = []

    class Spy(Progress):
        def stage(self, text, fraction):
            seen.append((text, fraction))
            super().stage(text, fraction)

    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    load(FIX / "6.18" / "ftslab-open200.dat", fields=fields_read, progress=Spy())
    decoding = [f for t, f in seen if t.startswith("decoding the pages of CPU")]
    assert len(decoding) > 4  # one per 8-page block, not one per CPU
    assert decoding == sorted(decoding) and 0.1 <= decoding[0] and decoding[-1] <= 0.9


def test_big_endian_pages_are_refused_by_the_block_decoder_too(tmp_path):
    import dataclasses
    from ftslab.errors import FtslabError
    from ftslab.trace.tracedat_read import read_tracedat
    from ftslab.trace.tracedat_write import write_tracedat
    td = read_tracedat(FIX / "6.18" / "tracecmd-v7-zstd.dat")
    be = tmp_path / "be.dat"
    write_tracedat(be, dataclasses.replace(td, little_endian=False))
    for fields in (None, fields_read):
        with pytest.raises(FtslabError, match="big-endian"):
            load(be, fields=fields)


def _child_alive() -> bool:
    """Whether this process has a child that has not exited (a zombie is not)."""
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as f:
            for pid in f.read().split():
                try:
                    with open(f"/proc/{pid}/stat") as st:
                        if st.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                            return True
                except OSError:
                    pass
    return False


def _child_takes_blocks(monkeypatch) -> list:
    """From now on, decode_blocks shares its blocks with a forked child that decodes
    three of them at least: the parent waits (bounded) while its child lives and has
    walked fewer, so that the child's share does not depend on scheduling.  Returns
    the list the results the parent gets from the child are added to."""
    walk = pages_mod.walk_all
    parent, child_walks = os.getpid(), os.memfd_create("child-walks")

    def slow_walk(*a):
        if os.getpid() != parent:
            os.write(child_walks, b"x")
        else:
            deadline = time.monotonic() + 120  # a hang guard, not a measure
            while (os.fstat(child_walks).st_size < 3 and time.monotonic() < deadline
                   and _child_alive()):
                time.sleep(0.001)
        return walk(*a)
    monkeypatch.setattr(pages_mod, "walk_all", slow_walk)
    from_child = []
    child_load = decode_helper._Child._load
    monkeypatch.setattr(decode_helper._Child, "_load",
                        lambda self, *a: from_child.append(a) or child_load(self, *a))
    monkeypatch.setattr(decode_helper, "usable_cpus", lambda: 2)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 2)
    return from_child


def test_blocks_decoded_by_the_forked_child_land_in_block_order(monkeypatch):
    """The child really decodes blocks (each block slowed so that both processes take
    some), and the columns are the one-process columns: same rows, same order."""
    path = FIX / "6.18" / "ftslab-open200.dat"
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    monkeypatch.setattr(decode_helper, "usable_cpus", lambda: 2)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 1 << 30)
    alone = load(path, fields=fields_read)
    from_child = _child_takes_blocks(monkeypatch)
    shared = load(path, fields=fields_read)
    assert len(from_child) > 2
    assert _same_columns(alone, shared, fields_read) > 0
    assert shared.meta.lost == alone.meta.lost
    assert list(render_text(build_report(shared))) == list(render_text(build_report(alone)))


def test_the_default_report_leaves_gfp_out_and_by_gfp_reads_it():
    # only --by gfp shows the gfp flags: the default report does not decode them (45 MB
    # on 10 M events), and gives the same report as with them
    from functools import partial
    from conftest import run_ftslab
    path = FIX / "6.18" / "ftslab-open200.dat"
    without = load(path, fields=partial(fields_read, gfp=False))
    full = load(path, fields=fields_read)
    assert "gfp_flags" in full.columns[("kmem", "kmalloc")].fields
    assert all("gfp_flags" not in c.fields for c in without.columns.values())
    assert list(render_text(build_report(without))) == list(render_text(build_report(full)))
    r = run_ftslab("report", "--by", "gfp", str(path))
    assert r.returncode == 0, r.stderr
    assert "GFP_KERNEL|__GFP_ZERO" in r.stdout


def _with_losses(tmp_path, pages: dict[int, int | None]) -> Path:
    """ftslab-open200.dat with pages of its CPU flagged 'events missed' (page -> the
    count stored after its data, or None: not stored), written again (zstd)."""
    import dataclasses
    from ftslab.trace.tracedat_read import read_tracedat
    from ftslab.trace.tracedat_write import write_tracedat
    td = read_tracedat(FIX / "6.18" / "ftslab-open200.dat")
    cpu, data = next(iter(td.cpu_data.items()))
    raw = bytearray(data)
    for p, count in pages.items():
        at = p * 4096
        commit = int.from_bytes(raw[at + 8:at + 16], "little") & 0xFFFFF
        flags = pages_mod.MISSED_EVENTS
        if count is not None:
            assert 16 + commit + 8 <= 4096
            raw[at + 16 + commit:at + 24 + commit] = count.to_bytes(8, "little")
            flags |= pages_mod.MISSED_STORED
        raw[at + 8:at + 16] = (commit | flags).to_bytes(8, "little")
    out = tmp_path / "lossy.dat"
    write_tracedat(out, dataclasses.replace(td, cpu_data={cpu: bytes(raw)}))
    return out


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "forked"])
def test_loss_spans_found_block_by_block_are_the_whole_cpu_ones(tmp_path, monkeypatch,
                                                                shared):
    # losses at a block's first page (its span starts at the page before, in the
    # block before), inside a block, and at the CPU's first page (span from 0)
    path = _with_losses(tmp_path, {0: None, 8: 17, 9: None, 16: None, 20: 5})
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 2 if shared else 1 << 30)
    monkeypatch.setattr(decode_helper, "usable_cpus", lambda: 2)
    whole = load(path)
    blocks = load(path, fields=fields_read)
    assert [len(x.spans) for x in whole.meta.lost] == [5]
    assert whole.meta.lost[0].lost >= 17 + 5
    assert whole.meta.lost[0].spans[0][0] == 0 and whole.meta.lost[0].spans[1][0] > 0
    assert blocks.meta.lost == whole.meta.lost


def test_pages_stay_compressed_until_their_block_is_read():
    from ftslab.trace.zstd_pages import CompressedPages
    from ftslab.trace.tracedat_read import read_tracedat
    for path in RECORDINGS:
        eager = read_tracedat(path)
        lazy = read_tracedat(path, lazy=True)
        assert sorted(eager.cpu_data) == sorted(lazy.cpu_data)
        for cpu, want in eager.cpu_data.items():
            got = lazy.cpu_data[cpu]
            if eager.compression != "zstd":
                assert got is not None and bytes(got) == bytes(want)
                continue
            assert isinstance(got, CompressedPages) and len(got) == len(want)
            n = len(want)
            # ranges inside one chunk, across chunk edges, the whole, past the end
            for a, b in [(0, 1), (4096, 8192), (40960 - 100, 40960 + 100), (0, n),
                         (n - 5000, n + 999), (n, n + 10), (12345, 123456)]:
                assert bytes(got.read(a, b)) == bytes(want)[a:b], (path, a, b)
            assert bytes(got.whole()) == bytes(want)


def test_a_chunk_that_does_not_decompress_is_one_clear_error(tmp_path):
    from ftslab.errors import BadInput
    from ftslab.trace.tracedat_read import read_tracedat
    src = FIX / "6.18" / "tracecmd-v7-zstd.dat"
    raw = bytearray(src.read_bytes())
    lazy = read_tracedat(src, lazy=True)
    pages = lazy.cpu_data[1]
    # damage the middle of chunk 10's compressed data, in the file
    pos, csize, _usize = pages._heads[10]
    at = raw.find(bytes(pages._src[pos:pos + csize]))
    assert at > 0
    raw[at + csize // 2:at + csize // 2 + 8] = b"\xff" * 8
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(raw))
    with pytest.raises(BadInput) as eager:
        read_tracedat(bad)
    with pytest.raises(BadInput) as blocks:
        load(bad, fields=fields_read)
    assert "CPU 1 chunk 10" in str(blocks.value)
    assert str(blocks.value) == str(eager.value)
    r = __import__("conftest").run_ftslab("report", str(bad))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "CPU 1 chunk 10" in r.stderr and len(r.stderr.strip().splitlines()) <= 2


def test_formats_hint_is_read_only_for_a_text_trace():
    # the CLI's hint is the running kernel's formats (tracefs reads): a trace.dat
    # carries its own, so the hint is asked for only when a text trace is loaded
    from ftslab.trace.loader import load as load_any
    asked = []

    def hint():
        asked.append(1)
        return None
    load_any(FIX / "6.18" / "ftslab-open200.dat", formats_hint=hint)
    assert asked == []
    ds = load_any(FIX / "6.18" / "kmem-trace.txt", formats_hint=hint)
    assert asked == [1] and ds.events > 0


def test_only_the_kernel_stack_format_of_the_ftrace_ones_is_parsed(monkeypatch):
    import importlib
    L = importlib.import_module("ftslab.trace.loader")
    parsed = []
    real = L.parse_format
    monkeypatch.setattr(L, "parse_format",
                        lambda text, system: parsed.append(system) or real(text, system))
    from ftslab.trace.tracedat_read import read_tracedat
    td = read_tracedat(FIX / "6.18" / "ftslab-stacks-eventfd300.dat")
    assert len(td.ftrace_formats) > 5
    f = L._stack_format(td)
    assert f is not None and f.name == "kernel_stack"
    assert parsed == ["ftrace"]


# -- records shorter than their format (issue 16) --------------------------------------

OPEN200 = FIX / "6.18" / "ftslab-open200.dat"


def _with_short_records(tmp_path, pages) -> tuple[Path, list]:
    """ftslab-open200.dat with one record cut short in each page of ``pages`` of its
    largest CPU (test_ringbuf.cut_records_short), the other CPUs as they are."""
    import dataclasses
    from ftslab.trace.loader import formats_of
    from ftslab.trace.tracedat_read import read_tracedat
    from ftslab.trace.tracedat_write import write_tracedat
    from test_columns import cut_records_short
    td = read_tracedat(OPEN200)
    cpu = max(td.cpu_data, key=lambda c: len(td.cpu_data[c]))
    n_pages = len(td.cpu_data[cpu]) // td.buffer_page_size
    data, cut = cut_records_short(td.cpu_data[cpu], cpu, td.buffer_page_size,
                                  formats_of(td), [p % n_pages for p in pages])
    out = tmp_path / "short.dat"
    write_tracedat(out, dataclasses.replace(td, cpu_data={**td.cpu_data, cpu: data}))
    return out, cut


def _rows(ds) -> Counter:
    """Every row of a dataset: (system, name, ts, cpu, pid, its fields)."""
    out = Counter()
    for (system, name), c in ds.columns.items():
        names = sorted(c.fields)
        values = [c.fields[n].tolist() for n in names]
        for k in range(len(c)):
            out[(system, name, int(c.ts[k]), int(c.cpu[k]), int(c.pid[k]),
                 tuple((n, v[k]) for n, v in zip(names, values)))] += 1
    return out


def _rows_read(events, ds) -> Counter:
    """read()'s events as _rows gives ``ds``'s (only the fields ``ds`` decoded)."""
    out = Counter()
    for e in events:
        cols = ds.columns.get((e.system, e.name))
        names = sorted(cols.fields) if cols is not None else sorted(e.fields)
        out[(e.system, e.name, e.ts, e.cpu, e.pid,
             tuple((n, e.fields[n]) for n in names))] += 1
    return out


def _without(rows: Counter, cut) -> Counter:
    left = Counter({r: n for r, n in rows.items() if (r[3], r[2], r[0], r[1]) not in cut})
    assert rows.total() - left.total() == len(cut)  # each cut record is one row
    return left


@pytest.mark.parametrize("fields", [None, fields_read], ids=["whole", "blocks"])
def test_a_record_shorter_than_its_format_is_dropped_and_counted(tmp_path, monkeypatch,
                                                                 fields):
    """load() (whole CPUs, or 8-page blocks in one process), read() and the report
    agree on a recording with one record cut short: it is no event, the others are
    all there as they were, and it is counted in unparsed."""
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 1 << 30)
    path, cut = _with_short_records(tmp_path, [12])
    whole = load(OPEN200, fields=fields)
    got = load(path, fields=fields)
    assert (whole.meta.unparsed, got.meta.unparsed) == (0, 1)
    assert _rows(got) == _without(_rows(whole), cut)
    assert _rows_read(read(path), got) == _rows(got)
    rep = build_report(got)
    assert "WARNING: 1 lines/events could not be decoded" in " ".join(rep.warnings)


def test_short_records_decoded_by_the_forked_child_are_counted(tmp_path, monkeypatch):
    """The two-process block path: the child's blocks' short records come back with
    its results (one record cut in the first page of every 8-page block)."""
    monkeypatch.setattr(pages_mod, "BLOCK_PAGES", 8)
    monkeypatch.setattr(blocks_mod, "_SHARE_MIN_BLOCKS", 1 << 30)
    from ftslab.trace.tracedat_read import read_tracedat
    td = read_tracedat(OPEN200)
    n_pages = max(len(d) for d in td.cpu_data.values()) // td.buffer_page_size
    path, cut = _with_short_records(tmp_path, range(0, n_pages, 8))
    assert len(cut) >= 4
    alone = load(path, fields=fields_read)
    from_child = _child_takes_blocks(monkeypatch)
    shared = load(path, fields=fields_read)
    assert len(from_child) > 2
    assert alone.meta.unparsed == shared.meta.unparsed == len(cut)
    assert _rows(shared) == _rows(alone) == _without(_rows(load(OPEN200, fields=fields_read)),
                                                     cut)


def test_strict_fails_on_a_record_shorter_than_its_format(tmp_path):
    from conftest import run_ftslab
    from ftslab.errors import EXIT_INPUT
    path, _cut = _with_short_records(tmp_path, [12])
    r = run_ftslab("report", path)
    assert r.returncode == 0, r.stderr
    assert "WARNING: 1 lines/events could not be decoded" in r.stdout + r.stderr
    r = run_ftslab("report", "--strict", path)
    assert r.returncode == EXIT_INPUT, (r.returncode, r.stderr)
    assert "1 lines, pages or records could not be decoded" in r.stderr
    assert "Traceback" not in r.stderr
    assert run_ftslab("report", "--strict", OPEN200).returncode == 0
