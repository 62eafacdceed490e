#!/usr/bin/env python3
"""`ftslab report` against `trace-cmd report` on the same >=10 M-event recordings.

Records bench/workload.c system-wide (ftslab record -a, and trace-cmd record -d -k of the
same six kmem events) until each file holds at least --events events, then runs, in
turn, the full default `ftslab report FILE` and `trace-cmd report FILE`, output to
/dev/null, --runs times each (alternating, so that both see the same machine), on both
files.  Prints per tool the median and best wall time, the median CPU (user+sys), the
peak memory (max RSS of the process), and the ratio of the medians.  Figures are ratios
measured in this run; on a VM, first-touch page faults make single runs vary +-40 %.

Usage: sudo python3 bench/bench_report.py [--events 10000000] [--runs 3] [--file F ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_record import EVENTS, ROOT, build_workload, ftslab_cmd  # noqa: E402
from toplevel import restore_toplevel, toplevel_state  # noqa: E402


def measured(argv, env=None) -> tuple[float, float, int, int]:
    """(wall s, user+sys s, max RSS KiB, exit status) of one run, output discarded."""
    t0 = time.monotonic()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(argv, stdout=null, stderr=subprocess.DEVNULL, env=env)
        _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, p.returncode


def stats_of(rs: list[tuple[float, float, int, int]]) -> dict:
    """Median and best wall, median CPU and peak RSS of runs made by measured()."""
    return {"wall_median_s": statistics.median(r[0] for r in rs),
            "wall_best_s": min(r[0] for r in rs),
            "cpu_median_s": statistics.median(r[1] for r in rs),
            "peak_rss_mib": max(r[2] for r in rs) / 1024,
            "walls": [round(r[0], 2) for r in rs]}


def stats_line(name: str, r: dict) -> str:
    """One line of stats_of()'s figures."""
    return (f"  {name:10} wall median {r['wall_median_s']:6.2f} s (best "
            f"{r['wall_best_s']:6.2f}, runs {r['walls']})  CPU {r['cpu_median_s']:6.2f} s"
            f"  peak RSS {r['peak_rss_mib']:7.0f} MiB")


def events_in(path: Path, env) -> int:
    cp = subprocess.run(ftslab_cmd("report", str(path), "--format", "json", "--by", "event"),
                        capture_output=True, text=True, env=env, check=True)
    return json.loads(cp.stdout)["events"]


def record(tool: str, out: Path, wl: Path, secs: float, env) -> None:
    if tool == "ftslab":
        argv = ftslab_cmd("record", "-a", "-b", "65536", "-o", str(out), "--", str(wl),
                          str(secs))
        subprocess.run(argv, check=True, capture_output=True, env=env)
        return
    argv = ["trace-cmd", "record", "-d", "-k", "-b", "65536", "-o", str(out)]
    for e in EVENTS:
        argv += ["-e", e]
    top = toplevel_state()
    try:
        subprocess.run(argv + ["--", str(wl), str(secs)], check=True, capture_output=True)
    finally:
        restore_toplevel(top)  # -k leaves its settings on the top-level buffer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", action="append", default=[], type=Path,
                    help="benchmark these recordings instead of making new ones")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not shutil.which("trace-cmd"):
        sys.exit("bench: trace-cmd is not installed (apt-get install trace-cmd)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # ftslab as pip installs it: its bytecode compiled once (ftslab/__pycache__, which
    # git ignores), not again by every run, as PYTHONDONTWRITEBYTECODE=1 would have it
    # (~0.1 s a run)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "ftslab")],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-report-"))
    files = list(args.file)
    try:
        if not files:
            if os.geteuid() != 0:
                sys.exit("bench: recording needs root (or give --file)")
            wl = build_workload(tmp)
            for tool in ("ftslab", "trace-cmd"):
                out, secs = tmp / f"{tool}.dat", 8.0
                for _ in range(4):  # lengthen the workload until the file is big enough
                    record(tool, out, wl, secs, env)
                    n = events_in(out, env)
                    if n >= args.events:
                        break
                    secs *= args.events / max(n, 1) * 1.1
                files.append(out)
        results = []
        for f in files:
            n = events_in(f, env)
            runs = {"ftslab": [], "trace-cmd": []}
            for _ in range(args.runs):
                runs["ftslab"].append(measured(ftslab_cmd("report", str(f)), env))
                runs["trace-cmd"].append(measured(["trace-cmd", "report", str(f)]))
            row = {"file": str(f), "events": n, "bytes": f.stat().st_size}
            for tool, rs in runs.items():
                bad = [r for r in rs if r[3] != 0]
                if bad:
                    sys.exit(f"bench: {tool} report {f} failed (exit {bad[0][3]})")
                row[tool] = stats_of(rs)
            row["ratio_median"] = (row["trace-cmd"]["wall_median_s"] /
                                   row["ftslab"]["wall_median_s"])
            row["ratio_best"] = row["trace-cmd"]["wall_best_s"] / row["ftslab"]["wall_best_s"]
            results.append(row)
            print(f"{f.name}: {n:,} events, {row['bytes'] / 1e6:.1f} MB")
            for tool in ("ftslab", "trace-cmd"):
                print(stats_line(tool, row[tool]))
            print(f"  ftslab report is {row['ratio_median']:.1f}x faster than trace-cmd "
                  f"report (medians; best runs {row['ratio_best']:.1f}x)")
        if args.json:
            print(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
