"""A corpus of truncated and bit-flipped real recordings, read end to end in a child
process that measures itself: every case ends within 20 s (SIGALRM), raises nothing but
ftslab's error type, and the child's peak memory stays bounded (its RSS high-water mark,
and an address-space limit that turns a runaway allocation into a failure instead of a
swap storm).

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
from pathlib import Path

from robust_util import ROOT, figure, run, spawn, wait_paused

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "6.18"
MAX_RSS_MB = 700
ADDRESS_SPACE_GB = 6

CHILD = r"""
import json, os, random, resource, shutil, signal, sys, time
from pathlib import Path
limit = int(sys.argv[3]) << 30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from ftslab.errors import FtslabError
from ftslab.load import load, read
from ftslab.report import build_report
from ftslab import render

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
    for _ in read(p):
        pass

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
        pipeline(path)
        stats["ok"] += 1
    except FtslabError:
        stats["errors"] += 1
    finally:
        signal.alarm(0)
    stats["cases"] += 1
    stats["by_source"][src] = stats["by_source"].get(src, 0) + 1
    stats["max_case_s"] = max(stats["max_case_s"], time.monotonic() - t0)

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
    cp = subprocess.run([sys.executable, "-c", CHILD, json.dumps(sources), str(work),
                         str(ADDRESS_SPACE_GB)], capture_output=True, text=True, env=env,
                        timeout=600)
    assert cp.returncode == 0, cp.stderr[-5000:]
    stats = json.loads(cp.stdout.splitlines()[-1])
    assert stats["cases"] == sum(s["n"] for s in sources)
    assert stats["maxrss_mb"] < MAX_RSS_MB, stats
    assert stats["max_case_s"] < 20, stats
    figure("fuzz", test="corpus: truncated and bit-flipped real recordings (child process)",
           cases=stats["cases"], ok=stats["ok"], errors=stats["errors"],
           maxrss_mb=round(stats["maxrss_mb"]), max_case_s=round(stats["max_case_s"], 2),
           wall_s=round(time.monotonic() - t0, 1))
