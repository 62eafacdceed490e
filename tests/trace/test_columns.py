"""Event columns and per-event decoding (ftslab/trace/columns.py) on real recordings: counts
match trace-cmd's, strings and numbers are read exactly, short records are counted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ftslab.trace import columns
from ftslab.trace import pages as pages_mod
from ftslab.errors import FtslabError
from ftslab.trace.formats import parse_header_event, parse_header_page
from ftslab.trace.loader import load, read
from ftslab.trace.tracedat_read import read_tracedat

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
DATS = sorted(FIX.glob("*.dat"))
HP = parse_header_page((FIX / "header_page").read_text())
HE = parse_header_event((FIX / "header_event").read_text())

# counts from `trace-cmd report` (tests/fixtures/README.md)
OPEN200 = {"kfree": 1342, "kmalloc": 939, "kmem_cache_alloc": 1681, "kmem_cache_free": 1982,
           "mm_page_alloc": 1863, "mm_page_free": 2960}


def test_columns_count_like_tracecmd():
    ds = load(FIX / "ftslab-open200.dat")
    counts = {name: len(c) for (_s, name), c in ds.columns.items()}
    assert counts == OPEN200
    assert ds.meta.total_lost == 0 and not ds.meta.truncated
    kca = ds.columns[("kmem", "kmem_cache_alloc")]
    assert "filp" in set(kca.fields["name"])
    assert (kca.fields["bytes_alloc"] >= kca.fields["bytes_req"]).all()


def test_events_api_matches_columns():
    evs = list(read(FIX / "ftslab-open200.dat"))
    assert len(evs) == sum(OPEN200.values())
    assert all(a.ts <= b.ts for a, b in zip(evs, evs[1:]))
    ds = load(FIX / "ftslab-open200.dat")
    kmalloc = [e for e in evs if e.name == "kmalloc"]
    col = ds.columns[("kmem", "kmalloc")]
    assert [e.fields["bytes_req"] for e in kmalloc] == col.fields["bytes_req"].tolist()
    assert [e.fields["call_site"] for e in kmalloc] == col.fields["call_site"].tolist()
    assert {e.comm for e in evs} - {"<...>"}, "comms come from saved_cmdlines"


def test_tracecmd_file_decodes_with_its_counts():
    # tracecmd-v7-zstd.dat: 2834 + 14007 kmem:kmalloc events (README)
    ds = load(FIX / "tracecmd-v7-zstd.dat")
    assert ds.events == 2834 + 14007
    cpus = ds.columns[("kmem", "kmalloc")].cpu
    assert (cpus == 0).sum() == 2834 and (cpus == 1).sum() == 14007


def test_several_buffers_are_named_and_selectable():
    """trace-cmd -B records an instance beside the top-level buffer: the report says the
    file holds it, and --buffer reads it."""
    from ftslab.analysis.build import build_report
    path = FIX / "tracecmd-v7-zstd-2buffers.dat"
    ds = load(path)
    assert ds.meta.extra["other_buffers"] == ["ftslab_tdtest_8619"]
    assert any("ftslab_tdtest_8619" in w and "--buffer" in w
               for w in build_report(ds).warnings)
    inst = load(path, buffer="ftslab_tdtest_8619")
    assert {n for (_s, n) in inst.columns} == {"kfree"}
    assert sum(len(c) for c in inst.columns.values()) == 268  # README: 268 kfree
    assert len(list(read(path, buffer="ftslab_tdtest_8619"))) == 268
    with pytest.raises(FtslabError, match="no buffer named"):
        load(path, buffer="nope")


def test_events_are_immutable_and_hashable():
    ev = next(iter(read(FIX / "ftslab-open200.dat")))
    with pytest.raises(TypeError):
        ev.fields["ptr"] = 1  # type: ignore[index]
    assert hash(ev) == hash(ev)


def test_pid_zero_is_idle():
    ds = load(FIX / "ftslab-open200.dat")
    assert ds.meta.cmdlines[0] == "<idle>"


def test_module_symbols_carry_their_module_like_pS():
    from ftslab.trace.kallsyms import Symbolizer
    s = Symbolizer("ffffffff81000000 T a\nffffffff81000100 T b\n"
                   "ffffffffc0000000 t modfn\t[mymod]\nffffffffc0000040 t modg\t[mymod]\n")
    assert s(0xffffffffc0000010) == "modfn+0x10 [mymod]"
    assert s(0xffffffffc0000010, full=True) == "modfn+0x10/0x40 [mymod]"
    assert s(0xffffffff81000010, full=True) == "a+0x10/0x100"


@pytest.mark.parametrize("collide", [False, True], ids=["hashed", "exact-fallback"])
def test_string_columns_are_exact(monkeypatch, collide):
    """Cache names are gathered by hashing each row; whatever the hashes say, every
    string comes out exactly (the exact path is forced for the second run)."""
    import random
    if collide:
        monkeypatch.setattr(columns, "_second_hash_agrees", lambda *a: False)
    rnd = random.Random(7)
    names = ["kmalloc-192", "kmalloc-1k", "kmalloc-1k\0junk", "filp", "", "x" * 40,
             "kmalloc-rcl-192", "\xe9t\xe9"] + [f"c{i}" for i in range(50)]
    buf, starts, lens, want = bytearray(), [], [], []
    for _ in range(5000):
        s = rnd.choice(names).encode()
        while len(buf) % 4:
            buf += b"\xff"
        starts.append(len(buf))
        lens.append(len(s) + 1)
        buf += s + b"\0"
        want.append(s.split(b"\0")[0].decode())
    buf += b"\xff" * 64
    got = columns._gather_strings(columns.Views(bytes(buf)), np.array(starts, np.int64),
                                  np.array(lens, np.int64))
    assert got.tolist() == want


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("signed", [False, True])
def test_word_gathers_read_what_byte_gathers_read(size, signed):
    """decode_columns' word-gather path (_gather_field) against the general gather,
    on fields at every offset of 4-byte aligned payloads, near the end of the data too."""
    rng = np.random.default_rng(size * 2 + signed)
    data = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    v = columns.Views(data)
    offs = np.sort(rng.integers(0, (4096 - 24) // 4, 500)) * 4
    offs[-1] = 4096 - 16  # the last field ends at the last byte
    rows = columns._Rows(offs)
    assert rows.words is not None
    for delta in range(0, 16 - size + 1):
        want = columns.gather_int(v, offs + delta, size, signed)
        got = columns._gather_field(v, rows, delta, size, signed)
        assert got.dtype.itemsize == size and (got.dtype.kind == "i") == signed
        assert got.tolist() == want.tolist(), delta


@pytest.mark.parametrize("at_the_end", [False, True])
@pytest.mark.parametrize("residue", [0, 1, 2, 3, None])
def test_string_rows_hold_each_strings_bytes_and_zeros(residue, at_the_end):
    """_string_rows (one word-window copy per row when the strings start at one byte
    within a word, else byte gathers) against the bytes themselves, up to the data's
    last byte."""
    rng = np.random.default_rng(7 if residue is None else residue)
    data = rng.integers(1, 256, 2048, dtype=np.uint8).tobytes()
    v = columns.Views(data)
    w8 = 3
    lens = rng.integers(0, w8 * 8 + 1, 300)
    if residue is None:
        starts = rng.integers(0, 2048 - 24, 300)
    else:
        starts = rng.integers(0, (2048 - 24) // 4, 300) * 4 + residue
    if at_the_end:  # strings that end at the data's last byte, whose rows reach past it
        lens[-2:] = [5, 9] if residue is None else [4 - residue, 8 - residue]
        starts[-2:] = 2048 - lens[-2:]
    q = columns._string_rows(v, starts, lens, w8)
    assert q.shape == (300, w8)
    for row, s, n in zip(q, starts, lens):
        assert row.tobytes() == data[s:s + n] + bytes(w8 * 8 - n)


def cut_records_short(data: bytes, cpu: int, psize: int, fmts, pages) -> tuple[bytes, list]:
    """``data``, one CPU's pages of a real recording, with one record cut short in each
    page of ``pages``: the page's middle event of a known format whose header holds its
    length (type_len), made the largest multiple of 4 bytes shorter than its format's
    fields need.  The bytes after it move up and the page's commit shrinks by as much,
    so the page walks as before, that record short.  Returns the new data and the
    (cpu, ts, system, name) of each record cut."""
    raw = bytearray(data)
    walk = pages_mod._walk_loop(data, cpu, HP, HE, psize, len(data) // psize)
    cut = []
    for p in pages:
        at = p * psize
        cands = []
        for i in np.flatnonzero((walk.off >= at) & (walk.off < at + psize)).tolist():
            fmt = fmts.get(int(walk.ids[i]))
            off, ln = int(walk.off[i]), int(walk.lens[i])
            hdr = int.from_bytes(raw[off - 4:off], "little")
            if fmt is None or not 1 <= hdr & 31 <= HE.data_max_type_len or (hdr & 31) * 4 != ln:
                continue
            need = max(f.offset + f.size for f in fmt.fields + fmt.common_fields)
            short = (need - 1) // 4 * 4
            if 4 <= short < ln:
                cands.append((i, off, ln, hdr, short, fmt))
        assert cands, f"page {p}: no record to cut"
        i, off, ln, hdr, short, fmt = cands[len(cands) // 2]
        d = ln - short
        raw[off - 4:off] = ((hdr & ~31) | short // 4).to_bytes(4, "little")
        raw[at:at + psize] = raw[at:off + short] + raw[off + ln:at + psize] + bytes(d)
        c = HP.commit_offset
        commit = int.from_bytes(raw[at + c:at + c + HP.commit_size], "little")
        raw[at + c:at + c + HP.commit_size] = (commit - d).to_bytes(HP.commit_size, "little")
        cut.append((cpu, int(walk.ts[i]), fmt.system, fmt.name))
    return bytes(raw), cut


def test_a_record_shorter_than_its_format_is_dropped_and_counted_by_both_decoders():
    """One real page with one record cut short (issue 16): decode_columns (load) and
    iter_events (read, stream) both leave it out, the page's other events are decoded
    alike, and both count it in the walk."""
    from ftslab.trace.loader import formats_of
    td = read_tracedat(FIX / "ftslab-open200.dat")
    fmts = formats_of(td)
    cpu, data = max(td.cpu_data.items(), key=lambda kv: len(kv[1]))
    psize = td.buffer_page_size
    p = len(data) // psize // 2
    page = bytes(data[p * psize:(p + 1) * psize])
    bad, [cut] = cut_records_short(page, cpu, psize, fmts, [0])

    def rows(page):
        walk = pages_mod.walk_pages(page, cpu, HP, HE, psize)
        assert walk.bad_pages == 0
        evs = [(e.ts, e.system, e.name, e.pid, dict(e.fields))
               for e in columns.iter_events(page, walk, fmts)]
        by_events = walk.short_records
        cols = columns.decode_columns(page, walk, fmts)
        by_cols = [(int(c.ts[k]), s, n, int(c.pid[k]),
                    {f: (v[k] if isinstance(v[k], str) else int(v[k]))
                     for f, v in ((f, c.fields[f]) for f in c.fields)})
                   for (s, n), c in cols.items() for k in range(len(c))]
        assert sorted(by_cols, key=repr) == sorted(evs, key=repr)
        return evs, by_events, walk.short_records

    whole, n_ev, n_col = rows(page)
    assert (n_ev, n_col) == (0, 0)
    got, n_ev, n_col = rows(bad)
    assert (n_ev, n_col) == (1, 1)
    assert got == [e for e in whole if (cpu,) + e[:3] != cut]
    assert len(got) == len(whole) - 1


def test_decode_event_refuses_a_payload_shorter_than_its_format():
    from ftslab.errors import ParseError
    from ftslab.trace.loader import formats_of
    td = read_tracedat(FIX / "ftslab-open200.dat")
    fmts = formats_of(td)
    cpu, data = next(iter(td.cpu_data.items()))
    walk = pages_mod.walk_pages(data[:4096], cpu, HP, HE, 4096)
    off, ln, eid = int(walk.off[0]), int(walk.lens[0]), int(walk.ids[0])
    fmt = fmts[eid]
    need = max(f.offset + f.size for f in fmt.fields + fmt.common_fields)
    pid, fields = columns.decode_event(data[off:off + ln], fmt)
    # every field but numeric arrays (which no report reads)
    assert set(fields) == {f.name for f in fmt.fields if f.array_len is None or f.is_string}
    with pytest.raises(ParseError, match=f"its format needs {need}"):
        columns.decode_event(data[off:off + need - 1], fmt)


@pytest.mark.parametrize("size", ["2", "8", "5"])
def test_both_decoders_read_common_pid_alike_whatever_size_the_format_says(size):
    """A damaged format can give common_pid any size: decode_columns and iter_events
    read the same pid from it (-1 where no integer has that size)."""
    from ftslab.trace.formats import parse_format
    from ftslab.trace.loader import formats_of
    td = read_tracedat(FIX / "ftslab-open200.dat")
    fmts = formats_of(td)
    pid_line = "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;"
    for system, texts in td.event_formats.items():
        for text in texts:
            assert pid_line in text
            f = parse_format(text.replace(pid_line, pid_line.replace("size:4", f"size:{size}")),
                             system)
            fmts[f.id] = f
    cpu, data = max(td.cpu_data.items(), key=lambda kv: len(kv[1]))
    walk = pages_mod.walk_pages(data, cpu, HP, HE, td.buffer_page_size)
    by_events = sorted((e.ts, e.name, e.pid) for e in columns.iter_events(data, walk, fmts))
    cols = columns.decode_columns(data, walk, fmts)
    by_cols = sorted((int(t), n, int(p)) for (_s, n), c in cols.items()
                     for t, p in zip(c.ts, c.pid))
    assert len(by_events) > 1000 and by_events == by_cols
    pids = {p for _t, _n, p in by_cols}
    assert (pids == {-1}) == (size == "5")

