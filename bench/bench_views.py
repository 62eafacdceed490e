#!/usr/bin/env python3
"""`ftslab report --live` and `--format folded` against the plain report, same file.

Records bench/workload.c system-wide with kernel stacks (ftslab record --stacks -a)
until the file holds at least --events events (allocations and frees; the kernel_stack
events come on top), then runs, in turn, the plain default report, `report --live` and
`report --format folded`, output to /dev/null, --runs times each (alternating, so that
all see the same machine).  Prints per variant the median and best wall time, the
median CPU and the peak memory, and each variant's median as a ratio of the plain
report's (the target for --live and folded: within 1.5x).

Usage: sudo python3 bench/bench_views.py [--events 10000000] [--runs 3] [--file F]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_record import ROOT, build_workload, ftslab_cmd  # noqa: E402
from bench_report import events_in, measured, stats_line, stats_of  # noqa: E402

VARIANTS = {"plain": [], "live": ["--live"], "folded": ["--format", "folded"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--file", type=Path, help="a recording made with record --stacks")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-views-"))
    try:
        f = args.file
        if f is None:
            if os.geteuid() != 0:
                sys.exit("bench: recording needs root (or give --file)")
            wl = build_workload(tmp)
            f, secs = tmp / "stacks.dat", 20.0
            for _ in range(4):  # lengthen the workload until the file is big enough
                subprocess.run(ftslab_cmd("record", "--stacks", "-a", "-b", "65536", "-o",
                                          str(f), "--", str(wl), str(secs)),
                               check=True, capture_output=True, env=env)
                n = events_in(f, env)
                if n >= args.events:
                    break
                secs *= args.events / max(n, 1) * 1.1
        n = events_in(f, env)
        runs: dict[str, list] = {k: [] for k in VARIANTS}
        for _ in range(args.runs):
            for name, extra in VARIANTS.items():
                runs[name].append(measured(ftslab_cmd("report", str(f), *extra), env))
        out = {"file": str(f), "events": n, "bytes": f.stat().st_size}
        for name, rs in runs.items():
            bad = [r for r in rs if r[3] != 0]
            if bad:
                sys.exit(f"bench: report {' '.join(VARIANTS[name])} failed (exit {bad[0][3]})")
            out[name] = stats_of(rs)
        plain = out["plain"]["wall_median_s"]
        print(f"{f.name}: {n:,} events, {out['bytes'] / 1e6:.1f} MB")
        for name in VARIANTS:
            r = out[name]
            r["ratio_to_plain"] = r["wall_median_s"] / plain
            print(f"{stats_line(name, r)}  {r['ratio_to_plain']:.2f}x plain")
        if args.json:
            print(json.dumps(out, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
