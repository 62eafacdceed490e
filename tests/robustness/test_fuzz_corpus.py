"""A corpus of truncated and bit-flipped real recordings, read end to end in a child
process that measures itself: every case ends within 20 s (SIGALRM), raises nothing but
ftslab's error type, and the child's peak memory stays bounded (its RSS high-water mark,
and an address-space limit that turns a runaway allocation into a failure instead of a
swap storm).  Beside the random damage, cases built with a known outcome (each source
whole, cut where what remains is known, cut inside its header, empty): each is accepted
or refused as it must be, with exactly the events it must hold.

Sources: a recording made now on this kernel, the spool a SIGKILLed `record` left, and
the fixtures (ftslab's trace.dat, trace-cmd's v6, v7 uncompressed, v7 zstd, two buffers,
and text traces).  Seeded: the same cases on every run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from robust_util import (ROOT, figure, page_event_counts, run, spawn, text_event_names,
                         v6_page_cuts, wait_paused)

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
MAX_RSS_MB = 700
ADDRESS_SPACE_GB = 6

CHILD = r"""
import json, os, random, resource, shutil, signal, sys, time
from pathlib import Path
limit = int(sys.argv[3]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from ftslab.errors import FtslabError
from ftslab.trace.loader import load, read
from ftslab.analysis.build import build_report
from ftslab.cli import render

class Hang(BaseException):
    pass

def fire(*a):
    raise Hang()

signal.signal(signal.SIGALRM, fire)
sources = json.loads(sys.argv[1])
work = Path(sys.argv[2])
rng = random.Random(20261126)
stats = {"cases": 0, "errors": 0, "ok": 0, "max_case_s": 0.0, "by_source": {}}

def pipeline(p):
    ds = load(p)
    for by in ((), ("cache", "callsite"), ("event", "order", "gfp", "comm")):
        rep = build_report(ds, by=by, hist=True)
        render.render_json(rep); list(render.render_text(rep)); render.render_csv(rep)
    n = sum(1 for _ in read(p))
    return {"outcome": "accepted", "events": ds.events, "read_events": n,
            "truncated": ds.meta.truncated}

def variants(data, n):
    size = len(data)
    for _ in range(n // 3):                     # truncated: anywhere, and at page edges
        cut = rng.randrange(size) if rng.random() < 0.6 else \
            max(0, (rng.randrange(size) // 4096) * 4096 + rng.choice((-1, 0, 1)))
        yield "cut", data[:cut]
    for _ in range(n - n // 3):                  # bit flips, zeroed and 0xff runs
        b = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(min(size, 16384) if rng.random() < 0.5 else size)
            op = rng.random()
            if op < 0.7:
                b[i] ^= 1 << rng.randrange(8)
            else:
                k = rng.randint(1, 256)
                b[i:i + k] = (b"\0" if op < 0.85 else b"\xff") * len(b[i:i + k])
        yield "flip", bytes(b)

def run_case(path, src):
    t0 = time.monotonic()
    signal.alarm(20)
    try:
        got = pipeline(path)
        stats["ok"] += 1
    except FtslabError as exc:
        stats["errors"] += 1
        got = {"outcome": "refused", "error": str(exc)[:300]}
    finally:
        signal.alarm(0)
    stats["cases"] += 1
    stats["by_source"][src] = stats["by_source"].get(src, 0) + 1
    stats["max_case_s"] = max(stats["max_case_s"], time.monotonic() - t0)
    return got

# the cases built by the test with a known outcome: each one's result goes back
stats["known"] = [dict(case, got=run_case(Path(case["path"]), case["source"]))
                  for case in json.loads(sys.argv[4])]

for src in sources:
    name, path, n = src["name"], Path(src["path"]), src["n"]
    if path.is_dir():                            # a spool: mutate its pages, its description
        raws = sorted(r for r in path.glob("cpu*.raw") if r.stat().st_size)
        for i in range(n):
            d = work / f"{name}-{i}" / path.name
            shutil.copytree(path, d)
            victim = d / "spool.json" if i % 3 == 0 else raws[i % len(raws)].name
            victim = d / victim
            data = victim.read_bytes()
            kind, mutated = next(variants(data, 3 if i % 2 else 1))
            victim.write_bytes(mutated)
            run_case(d, name)
            shutil.rmtree(d.parent)
        continue
    data = path.read_bytes()
    for kind, mutated in variants(data, n):
        p = work / ("case" + path.suffix)
        p.write_bytes(mutated)
        run_case(p, name)

stats["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(stats))
"""


def _fresh_sources(kernel_root, tmp_path) -> list[dict]:
    """A recording made now, and the spool of a `record` killed by SIGKILL."""
    fresh = tmp_path / "fresh.dat"
    prog = [sys.executable, "-c", "import os\nfor i in range(3000): "
            "os.close(os.open('/dev/null', 0))"]
    cp = run(tmp_path, "record", "-o", fresh, "--", *prog)
    assert cp.returncode == 0, cp.stderr
    killed = tmp_path / "killed.dat"
    p, marker = spawn(tmp_path, "record", "-o", killed, "-b", "512", "--", *prog,
                      pause="write")
    wait_paused(p, marker)
    p.kill()
    p.communicate()
    spools = sorted(tmp_path.glob("killed.dat.ftslab-spool-*"))
    spool = [s for s in spools if any(f.stat().st_size for f in s.glob("cpu*.raw"))][0]
    cp = run(tmp_path, "reset")
    assert cp.returncode == 0, cp.stderr
    return [{"name": "fresh ftslab recording", "path": str(fresh), "n": 120},
            {"name": "spool of a SIGKILLed record", "path": str(spool), "n": 60}]


def _recording_cases(src: Path) -> list[tuple[str, bytes, dict]]:
    """(what, bytes, expected outcome) of a trace.dat: whole, cut at page edges (v6:
    the whole pages before the cut; v7, whose data index follows the data: truncated,
    no event), cut inside its header and empty (refused)."""
    from ftslab.trace.tracedat_read import read_tracedat
    td = read_tracedat(src)
    data = src.read_bytes()
    whole = sum(sum(page_event_counts(td, cpu, pages)) for cpu, pages in td.cpu_data.items())
    assert whole > 0, src
    frees = (td.ftslab or {}).get("frees_buffer")
    if frees:  # record --frees all: load() joins the frees of the whole system
        ftd = read_tracedat(src, frees)
        whole += sum(sum(page_event_counts(ftd, cpu, pages))
                     for cpu, pages in ftd.cpu_data.items())
    out = [("whole", data, {"outcome": "accepted", "events": whole, "truncated": False})]
    if td.version == 6 and td.compression is None:
        cuts = sorted(set(v6_page_cuts(src)))[:-1]
        for cut, n in cuts[::max(1, len(cuts) // 8)]:
            out.append((f"cut at {cut}", data[:cut],
                        {"outcome": "accepted", "events": n, "truncated": True}))
    else:
        for cut in (len(data) // 3, len(data) // 2):
            out.append((f"cut at {cut}", data[:cut],
                        {"outcome": "accepted", "events": 0, "truncated": True}))
    out += [("cut inside the header", data[:20], {"outcome": "refused"}),
            ("empty", b"", {"outcome": "refused"})]
    return out


def _text_cases(src: Path) -> list[tuple[str, bytes, dict]]:
    lines = src.read_text().splitlines(keepends=True)
    names = text_event_names(lines)
    out = []
    for k in (len(lines), len(lines) // 2, len(lines) // 5, 40):
        out.append((f"first {k} lines", "".join(lines[:k]).encode(),
                    {"outcome": "accepted", "events": sum(1 for n in names[:k] if n),
                     "truncated": False}))
    out += [("two lines of garbage", b"no trace here\nnor here\n", {"outcome": "refused"}),
            ("empty", b"", {"outcome": "refused"})]
    return out


def _spool_cases(spool: Path) -> tuple[list[tuple[str, tuple | None, int]], int]:
    """([(what, (cpu, whole pages kept) or None, events)], page size): the killed
    session's spool whole, and with one CPU's pages cut half-way into a page: the
    events of the whole pages left."""
    from ftslab.trace.spool import read_spool
    td = read_spool(spool)
    counts = {cpu: page_event_counts(td, cpu, pages) for cpu, pages in td.cpu_data.items()}
    total = sum(sum(c) for c in counts.values())
    frees = (td.ftslab or {}).get("frees_buffer")
    if frees and (spool / frees).is_dir():  # the frees of the whole system, joined too
        ftd = read_spool(spool, frees)
        total += sum(sum(page_event_counts(ftd, cpu, pages))
                     for cpu, pages in ftd.cpu_data.items())
    cpu = max(counts, key=lambda c: len(counts[c]))
    out = [("whole", None, total)]
    for k in (len(counts[cpu]) // 2, 1):
        out.append((f"cpu{cpu}.raw cut to {k} pages and a half", (cpu, k),
                    total - sum(counts[cpu][k:])))
    return out, td.buffer_page_size


def _known_cases(sources: list[dict], where: Path) -> list[dict]:
    """Cases whose outcome is known from how they were built, for every source."""
    import shutil
    where.mkdir()
    cases = []
    for i, src in enumerate(sources):
        path = Path(src["path"])
        if path.is_dir():
            built, ps = _spool_cases(path)
            for j, (what, cut, n) in enumerate(built):
                d = where / f"{i}-{j}" / path.name
                shutil.copytree(path, d)
                if cut is not None:
                    raw = d / f"cpu{cut[0]}.raw"
                    raw.write_bytes(raw.read_bytes()[:cut[1] * ps + ps // 2])
                cases.append({"source": src["name"], "what": what, "path": str(d),
                              "expect": {"outcome": "accepted", "events": n,
                                         "truncated": True}})
            for j, (what, damage) in enumerate((("spool.json not JSON", b"{"),
                                                ("spool.json empty", b""))):
                d = where / f"{i}-bad{j}" / path.name
                shutil.copytree(path, d)
                (d / "spool.json").write_bytes(damage)
                cases.append({"source": src["name"], "what": what, "path": str(d),
                              "expect": {"outcome": "refused"}})
            continue
        built = _text_cases(path) if path.suffix == ".txt" else _recording_cases(path)
        for j, (what, data, expect) in enumerate(built):
            p = where / f"{i}-{j}{path.suffix}"
            p.write_bytes(data)
            cases.append({"source": src["name"], "what": what, "path": str(p),
                          "expect": expect})
    return cases


def test_corpus_of_damaged_recordings(kernel, tmp_path):
    sources = _fresh_sources(kernel, tmp_path)
    for name, n in (("ftslab-open200.dat", 60), ("tracecmd-v6.dat", 150),
                    ("tracecmd-v7-none.dat", 150), ("tracecmd-v7-zstd.dat", 150),
                    ("tracecmd-v7-zstd-2buffers.dat", 100), ("kmem-trace.txt", 100),
                    ("kmem-trace_pipe-lost.txt", 60)):
        sources.append({"name": name, "path": str(FIX / name), "n": n})
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.monotonic()
    known = _known_cases(sources, tmp_path / "known")
    cp = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sources), str(work),
                         str(ADDRESS_SPACE_GB), json.dumps(known)], capture_output=True,
                        text=True, env=env, timeout=600)
    assert cp.returncode == 0, cp.stderr[-5000:]
    stats = json.loads(cp.stdout.splitlines()[-1])
    assert stats["cases"] == sum(s["n"] for s in sources) + len(known)
    # every case built with a known outcome has it: accepted or refused, truncated or
    # whole, and exactly the events it must hold (a change that refuses every input,
    # or reads nothing of a cut file, fails here)
    wrong = []
    for case in stats["known"]:
        want, got = case["expect"], case["got"]
        if got["outcome"] != want["outcome"] or any(
                got.get(k) != v for k, v in want.items() if k != "outcome"):
            wrong.append((case["source"], case["what"], want, got))
        elif got["outcome"] == "accepted":
            assert got["read_events"] == got["events"], case  # read() agrees with load()
    assert not wrong, wrong[:10]
    mix = Counter(c["expect"]["outcome"] for c in known)
    assert mix["accepted"] >= 3 * len(sources) and mix["refused"] == 2 * len(sources), mix
    assert stats["maxrss_mb"] < MAX_RSS_MB, stats
    # (no limit on max_case_s: the child's 20 s SIGALRM already turns a hang into a
    # failure, and a slower case on a loaded machine is not a bug)
    figure("fuzz", test="corpus: truncated and bit-flipped real recordings (child process)",
           cases=stats["cases"], ok=stats["ok"], errors=stats["errors"],
           known_accepted=mix["accepted"], known_refused=mix["refused"],
           maxrss_mb=round(stats["maxrss_mb"]), max_case_s=round(stats["max_case_s"], 2),
           wall_s=round(time.monotonic() - t0, 1))
