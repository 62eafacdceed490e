#!/usr/bin/env python3
"""What another probe on the recorded tracepoints costs a workload recorded by ftslab.

Runs bench/workload.c (pipe/open/socket syscall loop) under `ftslab record -a` with the
default kmem events, in alternating pairs: once alone, once with the same six events
also enabled in a second tracefs instance that this bench creates (tracing off there,
as `trace-cmd record -k` leaves the top level) and removes right after that run.  With
a second probe on a tracepoint the kernel calls the probes through
`__traceiter_<event>` instead of a static call.  The figure is the workload's own
iterations per second; prints each condition's median and the ratio of the medians
(shared / alone), which `ftslab record` quotes (capture.SHARED_EVENT_COST).

Refuses to run when the top level or another instance already has kmem events enabled
(both conditions would be shared).  Needs root; takes tracefs for its whole run.

Usage: sudo python3 bench/bench_shared_events.py [--pairs 6] [--seconds 3] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_record import ROOT, EVENTS, build_workload, ftslab_cmd  # noqa: E402

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from ftslab.kernel.tracefs import Tracefs
from toplevel import other_instance  # noqa: E402  (the second prober: kmem on, tracing off)


def run_recorded(wl: Path, secs: float, out: Path, env: dict) -> tuple[float, str]:
    """One `ftslab record -a -- workload`: (workload iterations per second, stderr)."""
    cp = subprocess.run(ftslab_cmd("record", "-a", "-o", str(out), "--", str(wl), str(secs)),
                        capture_output=True, text=True, env=env)
    if cp.returncode != 0:
        sys.exit(f"ftslab record failed ({cp.returncode}): {cp.stderr[-2000:]}")
    m = re.search(r"iterations (\d+) seconds ([\d.]+)", cp.stdout)
    if not m:
        sys.exit(f"no iteration count in the workload's output: {cp.stdout!r}")
    out.unlink(missing_ok=True)
    return int(m.group(1)) / float(m.group(2)), cp.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=6, help="alternating pairs (>= 5)")
    ap.add_argument("--seconds", type=float, default=3.0, help="workload length per run")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    tfs = Tracefs.locate()
    events = [tuple(e.split(":")) for e in EVENTS]
    already = tfs.events_enabled_elsewhere(events)
    if already:
        sys.exit("bench: kmem events are already enabled elsewhere ("
                 + ", ".join(f"{f.event} in {f.instance or 'the top level'}" for f in already)
                 + "): both conditions would be shared")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-shared-"))
    name = f"othertool_{os.getpid()}"  # toplevel.other_instance's name
    kmem = [e.split(":")[1] for e in EVENTS]
    assert {e.split(":")[0] for e in EVENTS} == {"kmem"}
    rates: dict[str, list[float]] = {"alone": [], "shared": []}
    warned = {"alone": 0, "shared": 0}
    try:
        wl = build_workload(tmp)
        run_recorded(wl, 1.0, tmp / "warmup.dat", env)  # page cache, bytecode
        for i in range(args.pairs):
            # alternate which condition goes first, so a drift of the machine's speed
            # falls on both alike
            for cond in (("alone", "shared") if i % 2 == 0 else ("shared", "alone")):
                with (other_instance(kmem) if cond == "shared" else contextlib.nullcontext()):
                    rate, err = run_recorded(wl, args.seconds, tmp / f"{cond}.dat", env)
                rates[cond].append(rate)
                warned[cond] += name in err and "also enabled" in err
                print(f"pair {i + 1} {cond:6} {rate:12,.0f} iterations/s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["shared"] / med["alone"]
    ratios = [s / a for a, s in zip(rates["alone"], rates["shared"])]
    kernel = os.uname().release
    print(f"Linux {kernel}, {time.strftime('%Y-%m-%d')}, {args.pairs} pairs of "
          f"{args.seconds:g} s under `ftslab record -a`")
    print(f"median iterations/s: alone {med['alone']:,.0f}, with the kmem events also "
          f"enabled in another instance {med['shared']:,.0f}")
    print(f"ratio of medians shared/alone: {ratio:.3f} (pairwise: min {min(ratios):.3f}, "
          f"median {statistics.median(ratios):.3f}, max {max(ratios):.3f})")
    print(f"ftslab's warning named the other instance in {warned['shared']}/{args.pairs} "
          f"shared runs and {warned['alone']}/{args.pairs} runs alone")
    if args.json:
        print(json.dumps(dict(kernel=kernel, date=time.strftime("%Y-%m-%d"),
                              seconds=args.seconds, rates=rates, medians=med, ratio=ratio,
                              pairwise=ratios, warned=warned), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
