"""Hostile input: every reader takes arbitrary bytes, ends, stays within bounds, and
raises nothing but ftslab's own error type.

End to end (load -> report -> JSON/text/CSV, and read() event by event) on mutated real
recordings (ftslab's, trace-cmd's v6/v7, text traces, a spool directory); the format
grammar and the ring-buffer decoder with hostile formats and pages; the command-line
values that reach tracefs (--comm, --cache, --filter, kprobe symbols): refused, or
written as exactly one harmless line.

A watchdog (SIGALRM, 10 s per case) turns a hang into a failure; memory is bounded by the
corpus run in test_fuzz_corpus.py, which measures the peak RSS of a child process.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ftslab.cli import render
from ftslab.errors import FtslabError, UsageError
from ftslab.trace.formats import parse_format, parse_header_event, parse_header_page
from ftslab.trace.loader import formats_of, load, read
from ftslab.analysis.build import build_report
from ftslab.trace.tracedat_read import read_tracedat
from ftslab.trace.tracedat_write import write_tracedat
from ftslab.trace import columns
from ftslab.trace import pages as pages_mod

from robust_util import figure, page_event_counts, text_event_names, v6_page_cuts

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
HP = parse_header_page((FIX / "header_page").read_text())
HE = parse_header_event((FIX / "header_event").read_text())
CASES: dict[str, int] = {}


class Hang(BaseException):
    """A reader ran past the watchdog (BaseException: nothing under test may catch it)."""


@contextlib.contextmanager
def watchdog(seconds: float = 10.0):
    def fire(signum, frame):
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    for name, n in sorted(CASES.items()):
        figure("fuzz", test=name, cases=n)


def _rows_of_load(ds) -> dict:
    """(system, name) -> [(ts, cpu, pid, fields)] of a loaded dataset.  A text trace's
    columns are the union of the fields its lines of that event have: a row holds None
    where its line lacks the field, and read() gives that event without it."""
    out = {}
    for key, cols in ds.columns.items():
        names = sorted(cols.fields)
        values = [cols.fields[n] for n in names]
        out[key] = [(int(cols.ts[i]), int(cols.cpu[i]), int(cols.pid[i]),
                     tuple((n, _plain(v[i])) for n, v in zip(names, values)
                           if v[i] is not None))
                    for i in range(len(cols))]
    return out


def _rows_of_read(events) -> dict:
    out: dict = {}
    for ev in events:
        out.setdefault((ev.system, ev.name), []).append(
            (ev.ts, ev.cpu, ev.pid, tuple((n, _plain(ev.fields[n])) for n in sorted(ev.fields))))
    return out


def _plain(v):
    return v if v is None or isinstance(v, str) else int(v)


@dataclass
class Outcome:
    """What the pipeline made of one input."""
    kind: str
    """"ok" (loaded and reported), "refused" (load() and read() raised ftslab's error),
    or "report refused" (loaded, and build_report raised ftslab's error)."""
    events: Counter = field(default_factory=Counter)
    """(system, name) -> events load() decoded."""
    by_cpu: Counter = field(default_factory=Counter)
    """cpu -> events load() decoded."""
    truncated: bool = False
    unparsed: int = 0
    error: str = ""


def _pipeline(path: Path) -> Outcome:
    """Everything a user can do with a file: load, every report format, read().

    load() and read() are two decoders of one recording (columns at once, events one at
    a time): they must accept and refuse the same files, and where both accept, give the
    same events -- each event type, each event's time, CPU, pid and every field."""
    with watchdog():
        try:
            ds = load(path)
        except FtslabError as exc:
            loaded = exc
        else:
            loaded = None
            out = Outcome("ok", Counter({k: len(c) for k, c in ds.columns.items() if len(c)}),
                          Counter(c for cols in ds.columns.values() for c in cols.cpu.tolist()),
                          ds.meta.truncated, ds.meta.unparsed)
            try:
                for by in ((), ("cache", "callsite"), ("event", "order", "gfp", "pid", "comm")):
                    rep = build_report(ds, by=by, hist=True)
                    json.loads(render.render_json(rep))
                    list(render.render_text(rep))
                    render.render_csv(rep)
            except FtslabError as exc:  # e.g. a damaged number where a size belongs
                out.kind, out.error = "report refused", str(exc)
        try:
            events = list(read(path))
        except FtslabError as exc:
            assert loaded is not None, f"load() accepted {path}, read() refused it: {exc}"
            return Outcome("refused", error=str(exc))
        assert loaded is None, f"read() accepted {path}, load() refused it: {loaded}"
        by_load, by_read = _rows_of_load(ds), _rows_of_read(events)
        for key in sorted(set(by_load) | set(by_read)):
            got, want = Counter(by_read.get(key, ())), Counter(by_load.get(key, ()))
            # the same events, each with the same time, CPU, pid and fields (records
            # shorter than their format: dropped by both, counted in unparsed)
            assert not want - got, (key, "load() only:", list(want - got)[:3])
            assert not got - want, (key, "read() only:", list(got - want)[:3])
    return out


# -- the corpus: small real recordings ------------------------------------------------------

def _small_ftslab_recording(tmp: Path) -> Path:
    """ftslab's own fixture, cut to 24 pages and the kallsyms lines its call sites need:
    the same sections and metadata, fast enough to fuzz hundreds of times."""
    td = read_tracedat(FIX / "ftslab-open200.dat")
    td.cpu_data = {cpu: data[:24 * td.buffer_page_size] for cpu, data in td.cpu_data.items()}
    lines = td.kallsyms.splitlines()
    td.kallsyms = "\n".join(lines[:: max(1, len(lines) // 3000)]) + "\n"
    out = tmp / "small-ftslab.dat"
    write_tracedat(out, td)
    return out


_CORPUS: dict[str, bytes] = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """Names of the corpus files (their bytes in _CORPUS: hypothesis prints the
    arguments of a failing example, and megabytes of them help nobody)."""
    if not _CORPUS:
        tmp = tmp_path_factory.mktemp("corpus")
        _CORPUS["ftslab"] = _small_ftslab_recording(tmp).read_bytes()
        for name in ("tracecmd-v6.dat", "tracecmd-v7-none.dat", "tracecmd-v7-zstd.dat",
                     "tracecmd-v7-zstd-2buffers.dat"):
            _CORPUS[name] = (FIX / name).read_bytes()
    return sorted(_CORPUS)


TEXTS = {n: (FIX / n).read_text().splitlines(keepends=True)[:400]
         for n in ("kmem-trace.txt", "kmem-trace-tgid-noirq.txt", "kmem-trace_pipe-lost.txt",
                   "kmem-trace-overwrite.txt")}

#: examples per test (CI: 300; FTSLAB_FUZZ_EXAMPLES=5000 for a deeper hunt by hand)
N_EXAMPLES = int(os.environ.get("FTSLAB_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def _mutate(data: bytearray, draw) -> bytearray:
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "flip", "flip", "cut", "zero", "dup", "ff"]))
        if not data:
            break
        if op == "flip":
            early = draw(st.booleans())  # most structure is in the first pages
            pos = draw(st.integers(0, min(len(data), 8192 if early else len(data)) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        else:
            a = draw(st.integers(0, len(data) - 1))
            n = draw(st.integers(1, 512))
            if op == "zero":
                data[a:a + n] = bytes(len(data[a:a + n]))
            elif op == "ff":
                data[a:a + n] = b"\xff" * len(data[a:a + n])
            else:
                data[a:a] = data[a:a + n]
    return data


@FUZZ
@given(st.data())
def test_fuzz_recordings_end_to_end(corpus, tmp_path, data):
    name = data.draw(st.sampled_from(corpus))
    buf = _mutate(bytearray(_CORPUS[name]), data.draw)
    p = tmp_path / "fuzz.dat"
    p.write_bytes(bytes(buf))
    _pipeline(p)
    _count("trace.dat end to end (mutated real files)")


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from([b"", b"\x17\x08\x44tracing",
                                                  b"\x17\x08\x44tracing7\0",
                                                  b"\x17\x08\x44tracing6\0"]))
def test_fuzz_arbitrary_bytes_end_to_end(tmp_path, data, prefix):
    p = tmp_path / "any.bin"
    p.write_bytes(prefix + data)
    _pipeline(p)
    _count("arbitrary bytes end to end")


@FUZZ
@given(st.data())
def test_fuzz_text_traces_end_to_end(tmp_path, data):
    name = data.draw(st.sampled_from(sorted(TEXTS)))
    lines = list(TEXTS[name])
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["text", "bytes", "dup", "del", "cut"]))
        if op == "text":
            lines[i] = data.draw(st.text(max_size=200)) + "\n"
        elif op == "bytes":
            raw = bytearray(lines[i].encode())
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
            lines[i] = raw.decode("latin-1")
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "del":
            del lines[i]
        else:
            lines[i] = lines[i][:data.draw(st.integers(0, len(lines[i])))]
    p = tmp_path / "t.txt"
    p.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))
    _pipeline(p)
    _count("text traces end to end (mutated real traces)")


# -- what valid and cut inputs must give (not only "nothing but FtslabError") ---------------

#: events in each trace-cmd fixture, as `trace-cmd report` counts them (fixtures/README.md;
#: the same counts test_tracedat.py checks per CPU)
TRACECMD_EVENTS = {"tracecmd-v6.dat": 2760, "tracecmd-v7-none.dat": 2760,
                   "tracecmd-v7-zstd.dat": 16841, "tracecmd-v7-zstd-2buffers.dat": 149}


def _text_expected(lines: list[str]) -> Counter:
    return Counter(n for n in text_event_names(lines) if n)


@pytest.mark.parametrize("name", ["ftslab", *TRACECMD_EVENTS, *sorted(TEXTS)])
def test_reference_inputs_read_whole(corpus, decoded_source, tmp_path, name):
    """The unmutated inputs of the fuzz tests: accepted, whole, every event there."""
    p = tmp_path / name
    if name in TEXTS:
        p.write_text("".join(TEXTS[name]))
        want = sum(_text_expected(TEXTS[name]).values())
    else:
        p.write_bytes(_CORPUS[name])
        if name == "ftslab":
            td = _SOURCE[0]
            want = sum(sum(page_event_counts(td, cpu, pages))
                       for cpu, pages in td.cpu_data.items())
        else:
            want = TRACECMD_EVENTS[name]
    out = _pipeline(p)
    assert out.kind == "ok", out
    assert not out.truncated and out.unparsed == 0, out
    assert want > 0 and sum(out.events.values()) == want, (out.events, want)
    if name in TEXTS:
        assert {n: c for (_s, n), c in out.events.items()} == _text_expected(TEXTS[name])


@FUZZ
@given(st.data())
def test_fuzz_text_traces_valid_edits(tmp_path, data):
    """Edits that leave a valid text trace (lines deleted, duplicated, the end cut at a
    line boundary): accepted, and exactly the events of the lines that are left."""
    name = data.draw(st.sampled_from(sorted(TEXTS)))
    lines = list(TEXTS[name])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["del", "dup", "cut"]))
        if op == "del" and len(lines) > 1:
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "cut" and i > 0:
            lines = lines[:i]
    want = _text_expected(lines)
    p = tmp_path / "t.txt"
    p.write_text("".join(lines))
    out = _pipeline(p)
    if not want and not any(l.startswith(("# tracer:", "# entries-in-buffer/entries-written:"))
                            for l in lines):
        assert out.kind == "refused", out  # no event and no kernel header: not a trace
        return
    assert out.kind == "ok", out
    assert {n: c for (_s, n), c in out.events.items()} == want
    assert not out.truncated and out.unparsed == 0, out
    _count("text traces, valid edits (exact events)")


def test_cut_v6_recording_keeps_the_whole_pages_before_the_cut(tmp_path):
    """A trace.dat v6 cut anywhere in its ring-buffer data: accepted, says truncated, and
    holds exactly the events of the whole pages before the cut (each page's events
    counted on the intact file), the same events as the whole file has."""
    src = FIX / "tracecmd-v6.dat"
    data = src.read_bytes()
    whole = load(src)
    ref = _rows_of_load(whole)
    cuts = sorted(set(v6_page_cuts(src)))
    assert cuts[-1] == (len(data), whole.events)
    p = tmp_path / "cut.dat"
    for cut, want in cuts:
        p.write_bytes(data[:cut])
        out = _pipeline(p)
        assert out.kind == "ok", (cut, out)
        assert out.truncated == (cut < len(data)), (cut, out)
        assert sum(out.events.values()) == want, (cut, out.events, want)
        got = _rows_of_load(load(p))
        for key, rows in got.items():
            assert not Counter(rows) - Counter(ref[key]), (cut, key)
    # cut inside the header info: nothing to read, refused
    for cut in (10, 20, 100):
        p.write_bytes(data[:cut])
        assert _pipeline(p).kind == "refused", cut
    _count("trace.dat v6 cut at every page (exact events)")


def test_cut_v7_recording_is_truncated_and_empty(tmp_path):
    """trace-cmd v7 writes the index of the ring-buffer data (the BUFFER option) after
    the data: a file cut inside the data is accepted as truncated, with no event, and
    says why; cut inside its header it is refused."""
    from ftslab.trace.tracedat_read import read_tracedat
    src = FIX / "tracecmd-v7-none.dat"
    data = src.read_bytes()
    td = read_tracedat(src)
    at = min(data.find(pages[:td.buffer_page_size]) for pages in td.cpu_data.values())
    assert at > 0
    p = tmp_path / "cut.dat"
    for cut in (at, at + 1, at + 5 * td.buffer_page_size, len(data) - 200):
        p.write_bytes(data[:cut])
        out = _pipeline(p)
        assert out.kind == "ok" and out.truncated and not out.events, (cut, out)
        assert "cannot be assigned to CPUs" in load(p).meta.truncated_detail
    for cut in (10, 20):
        p.write_bytes(data[:cut])
        assert _pipeline(p).kind == "refused", cut


# -- formats and the ring-buffer decoder ------------------------------------------------------

_NUM = st.integers(-(1 << 40), 1 << 40).map(str) | st.sampled_from(["0", "1", "8", "4096",
                                                                      "65536", "-1"])


def _mutate_format(text: str, data) -> str:
    """Change numbers (offsets, sizes, ids), words and lines of a real format text."""
    import re
    nums = list(re.finditer(r"\d+", text))
    for _ in range(data.draw(st.integers(1, 5))):
        op = data.draw(st.sampled_from(["num", "num", "num", "char", "line"]))
        if op == "num" and nums:
            m = data.draw(st.sampled_from(nums))
            text = text[:m.start()] + data.draw(_NUM) + text[m.end():]
            nums = list(re.finditer(r"\d+", text))
        elif op == "char" and text:
            i = data.draw(st.integers(0, len(text) - 1))
            text = text[:i] + data.draw(st.characters()) + text[i + 1:]
        elif op == "line":
            ls = text.splitlines()
            if ls:
                del ls[data.draw(st.integers(0, len(ls) - 1))]
            text = "\n".join(ls)
    return text


_SOURCE: list = []


@pytest.fixture(scope="module")
def decoded_source(corpus, tmp_path_factory):
    """The small ftslab recording, read (kept in _SOURCE, and the fixture value is a
    plain name: hypothesis prints fixture values of a failing example)."""
    if not _SOURCE:
        p = tmp_path_factory.mktemp("src") / "small.dat"
        p.write_bytes(_CORPUS["ftslab"])
        _SOURCE.append(read_tracedat(p))
    return "small ftslab recording"


@FUZZ
@given(st.data())
def test_fuzz_hostile_formats_decode_real_pages(decoded_source, data):
    """Formats that lie about offsets and sizes must not make the decoder read out of
    bounds, allocate without bound, or fail with anything but ftslab's error."""
    td = _SOURCE[0]
    texts = [(s, t) for s, ts in td.event_formats.items() for t in ts]
    system, victim = data.draw(st.sampled_from(texts))
    fmts = {}
    try:
        with watchdog():
            bad = parse_format(_mutate_format(victim, data), system)
            fmts = formats_of(td)
            fmts[bad.id] = bad
            hp = parse_header_page(_mutate_format(td.header_page, data)
                                   if data.draw(st.booleans()) else td.header_page)
            for cpu, pages in td.cpu_data.items():
                walk = pages_mod.walk_pages(pages, cpu, hp, HE, td.buffer_page_size)
                cols = columns.decode_columns(pages, walk, fmts)
                assert sum(len(c) for c in cols.values()) <= len(pages) // 4
                for _ev in columns.iter_events(pages, walk, fmts, lambda pid: "x"):
                    pass
    except FtslabError:
        pass
    _count("hostile format files over real pages")


@FUZZ
@given(st.data())
def test_fuzz_pages_decode(decoded_source, data):
    """Bit flips, zeroed and random regions in real pages, decoded with the real formats."""
    td = _SOURCE[0]
    cpu, pages = data.draw(st.sampled_from(sorted(td.cpu_data.items())))
    buf = bytearray(pages[:8 * td.buffer_page_size])
    for _ in range(data.draw(st.integers(1, 30))):
        i = data.draw(st.integers(0, len(buf) - 1))
        if data.draw(st.booleans()):
            buf[i] ^= 1 << data.draw(st.integers(0, 7))
        else:
            n = data.draw(st.integers(1, 64))
            buf[i:i + n] = data.draw(st.binary(min_size=n, max_size=n))[:len(buf) - i]
    fmts = formats_of(td)
    try:
        with watchdog():
            walk = pages_mod.walk_pages(bytes(buf), cpu, HP, HE, td.buffer_page_size)
            cols = columns.decode_columns(bytes(buf), walk, fmts)
            assert sum(len(c) for c in cols.values()) <= len(buf) // 4
            list(columns.iter_events(bytes(buf), walk, fmts, lambda pid: "x"))
    except FtslabError:
        pass
    _count("mutated ring-buffer pages")


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_format_grammar_bytes(raw):
    text = raw.decode("utf-8", "surrogateescape")
    for fn in (lambda t: parse_format(t, "kmem"), parse_header_page, parse_header_event):
        try:
            with watchdog():
                fn(text)
        except FtslabError:
            pass
    _count("format grammar, arbitrary bytes")


# -- a spool directory ----------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c,
                                                                         max_size=4),
                     max_leaves=12)


@pytest.fixture(scope="module")
def spool_template(decoded_source, tmp_path_factory):
    from ftslab.trace import spool
    td = _SOURCE[0]
    d = tmp_path_factory.mktemp("spooltpl") / "run.dat.ftslab-spool-99999999"
    d.mkdir()
    spool.describe(d, {"pid": 99999999, "output": str(d.parent / "run.dat"),
                       "header_page": td.header_page, "header_event": td.header_event,
                       "event_formats": td.event_formats, "ftrace_formats": td.ftrace_formats,
                       "printk_formats": "", "cmdlines": td.cmdlines,
                       "cpus": sorted(td.cpu_data), "buffer_page_size": td.buffer_page_size,
                       "page_size": td.page_size, "trace_clock": "[local] global",
                       "uname": td.uname, "meta": dict(td.ftslab or {})},
                   td.kallsyms[:20000], lambda m: None)
    for cpu, pages in td.cpu_data.items():
        (d / f"cpu{cpu}.raw").write_bytes(pages + b"\x01" * 100)  # a page cut short
    whole = _pipeline(d)
    assert whole.kind == "ok" and whole.truncated, whole  # the page cut short says so
    return d


def test_cut_spool_keeps_the_whole_pages_before_the_cut(spool_template, tmp_path):
    """The spool of a session that died: a CPU's raw pages cut anywhere keep exactly
    the events of its whole pages before the cut, the other CPUs all of theirs."""
    td = _SOURCE[0]
    ps = td.buffer_page_size
    counts = {cpu: page_event_counts(td, cpu, pages) for cpu, pages in td.cpu_data.items()}
    cpu = max(counts, key=lambda c: len(counts[c]))
    others = sum(sum(c) for k, c in counts.items() if k != cpu)
    d = tmp_path / spool_template.name
    for k in sorted({0, 1, 2, len(counts[cpu]) // 2, len(counts[cpu])}):
        for extra in (0, 1, ps // 2):
            if d.exists():
                shutil.rmtree(d)
            shutil.copytree(spool_template, d)
            raw = d / f"cpu{cpu}.raw"
            raw.write_bytes(raw.read_bytes()[:k * ps + extra])
            out = _pipeline(d)
            assert out.kind == "ok" and out.truncated, (k, extra, out)
            assert out.by_cpu[cpu] == sum(counts[cpu][:k]), (k, extra, out.by_cpu)
            assert sum(out.by_cpu.values()) - out.by_cpu[cpu] == others, out.by_cpu


@FUZZ
@given(st.data())
def test_fuzz_spool_directory(spool_template, tmp_path, data):
    d = tmp_path / spool_template.name
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(spool_template, d)
    info = json.loads((d / "spool.json").read_text())
    op = data.draw(st.sampled_from(["value", "value", "delete", "bytes", "raw", "kallsyms"]))
    if op == "value":
        info[data.draw(st.sampled_from(sorted(info)))] = data.draw(_JSON)
        (d / "spool.json").write_text(json.dumps(info))
    elif op == "delete":
        del info[data.draw(st.sampled_from(sorted(info)))]
        (d / "spool.json").write_text(json.dumps(info))
    elif op == "bytes":
        raw = bytearray((d / "spool.json").read_bytes())
        raw = _mutate(raw, data.draw)
        (d / "spool.json").write_bytes(bytes(raw))
    elif op == "kallsyms":
        (d / "kallsyms.zst").write_bytes(data.draw(st.binary(max_size=512)))
    else:
        raw_file = sorted(d.glob("cpu*.raw"))[0]
        raw = _mutate(bytearray(raw_file.read_bytes()), data.draw)
        raw_file.write_bytes(bytes(raw))
    _pipeline(d)
    _count("spool directories (mutated description, pages, kallsyms)")


# -- command-line values that reach tracefs ----------------------------------------------

_HOSTILE = st.text(alphabet=string.printable + "\u00e9\u2028\0", max_size=40) | \
    st.sampled_from(['a" || 1 || "', "x\np:ftslab_1/evil kfree", 'filp" && "', "a;b", "$(id)",
                     "`id`", "x' y", "0\n", '\\"', "name == \"x\"\n", "filp\n",
                     "kmalloc\n", "kfree\n-:ftslab_1/kp_kfree", "__kmalloc_noprof\r"])


@pytest.fixture(scope="module")
def fake_tracefs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfs") / "tracing"
    for ev in ("kmalloc", "kmem_cache_alloc", "kfree", "kmem_cache_free", "mm_page_alloc",
               "mm_page_free"):
        dd = root / "events" / "kmem" / ev
        dd.mkdir(parents=True)
        shutil.copy(FIX / f"kmem-{ev}.format", dd / "format")
    (root / "instances").mkdir()
    return root


def _safe_value(v: str) -> None:
    assert "\n" not in v and "\r" not in v and "\0" not in v, v
    assert v.count('"') % 2 == 0, v


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(comm=st.none() | _HOSTILE, cache=st.none() | _HOSTILE,
       filt=st.none() | _HOSTILE | st.builds(lambda f, o, v: f"{f} {o} {v}",
                                             st.sampled_from(["bytes_req", "name", "comm",
                                                              "order", "x"]),
                                             st.sampled_from(["==", "!=", ">=", "~", "&"]),
                                             _HOSTILE))
def test_fuzz_filters_reach_tracefs_as_one_line(fake_tracefs, comm, cache, filt):
    from ftslab.session.options import SessionOptions
    from ftslab.session.engine import Session
    from ftslab.kernel.tracefs import Tracefs
    s = Session(Tracefs(fake_tracefs), lambda m: None, name="ftslab_999999")
    try:
        steps = s.plan(SessionOptions(comm=comm, cache=cache, kprobes="off",
                                     filters=(filt,) if filt is not None else ()))
    except UsageError:
        _count("--comm/--cache/--filter values")
        return
    for st_ in steps:
        if st_.value is not None:
            _safe_value(st_.value)
    for v in (comm, cache):
        if v is not None:  # accepted: then only as one quoted string
            assert all(c not in v for c in '"\n\\'), v
    _count("--comm/--cache/--filter values")


@settings(max_examples=300, deadline=None, database=None)
@given(sym=_HOSTILE | st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,20}", fullmatch=True))
def test_fuzz_kprobe_symbols_make_one_definition(sym):
    from ftslab.kernel import kprobes as kprobes_mod
    try:
        kprobes_mod.validate_symbol(sym)
    except UsageError:
        _count("kprobe symbol names")
        return
    ctx = kprobes_mod.ProbeContext(has_kprobe_events=True, readme="", kallsyms={sym: 1},
                               btf_params={}, btf_offsets=None, btf_present=False,
                               machine="x86_64")
    try:
        plan = kprobes_mod.plan_probes(ctx, "ftslab_1", families=(), extra_symbols=(sym,))
    except UsageError:
        _count("kprobe symbol names")
        return
    for pr in plan.probes:
        d = pr.definition
        _safe_value(d)
        assert d.startswith("p:ftslab_1/") and d.count("p:") == 1 and ";" not in d, d
        assert d.split()[1] == sym
    _count("kprobe symbol names")
