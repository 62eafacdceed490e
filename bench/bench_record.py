#!/usr/bin/env python3
"""ftslab record/report against trace-cmd record/report, same workload, same run.

Runs bench/workload.c (pipe/open/socket syscall loop, ~1 M kmem events/s here) for
SECONDS under: nothing (baseline), `ftslab record -a`, `trace-cmd record -d -k`, each
recording the six default kmem events system-wide with the same per-CPU buffer.  Prints
for each: events captured, lost, reader CPU seconds (user+sys of the recorder process
tree), workload slowdown vs baseline, file bytes; then `ftslab report` vs
`trace-cmd report` wall time on the same file.  Figures are ratios against trace-cmd
measured in this run; absolute numbers depend on the machine.

Usage: sudo python3 bench/bench_record.py [--seconds 5] [--buffer-kb 8192] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from toplevel import restore_toplevel, toplevel_state  # noqa: E402
EVENTS = ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:mm_page_alloc", "kmem:kfree",
          "kmem:kmem_cache_free", "kmem:mm_page_free"]


def build_workload(tmp: Path) -> Path:
    exe = tmp / "workload"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / "workload.c")], check=True)
    return exe


def run_measured(argv, env=None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run argv; return (result, wall seconds, CPU seconds of its process tree)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if cp.returncode != 0:
        sys.exit(f"{argv[0]} failed ({cp.returncode}): {cp.stderr[-2000:]}")
    return cp, wall, cpu


def iterations(out: str) -> int:
    m = re.search(r"iterations (\d+)", out)
    return int(m.group(1)) if m else 0


def ftslab_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ftslab", *args]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--buffer-kb", type=int, default=8192)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--keep", action="store_true", help="keep the recordings")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    tc = shutil.which("trace-cmd")
    if not tc:
        sys.exit("bench: trace-cmd is not installed (apt-get install trace-cmd)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-"))
    wl = build_workload(tmp)
    secs = str(args.seconds)

    # baseline (twice, keep the better: the VM is noisy)
    base = max(iterations(run_measured([str(wl), secs])[0].stdout) for _ in range(2))

    results = {}
    # ftslab record, whole system while the workload runs
    f_out = tmp / "ftslab.dat"
    cp, wall, cpu = run_measured(ftslab_cmd("record", "-a", "-b", str(args.buffer_kb), "-o",
                                            str(f_out), "--", str(wl), secs), env=env)
    f_rep = json.loads(run_measured(ftslab_cmd("report", str(f_out), "--format", "json"),
                                    env=env)[0].stdout)
    # the recorder's CPU minus the workload's own: the workload's CPU is its wall time
    # on one core (it never sleeps)
    results["ftslab"] = dict(iterations=iterations(cp.stdout), events=f_rep["events"],
                             lost=f_rep["lost"], cpu_total=cpu, file_bytes=f_out.stat().st_size)

    # trace-cmd record, same events, same buffer
    t_out = tmp / "tracecmd.dat"
    argv = [tc, "record", "-d", "-k", "-b", str(args.buffer_kb), "-o", str(t_out)]
    for e in EVENTS:
        argv += ["-e", e]
    top = toplevel_state()
    try:
        cp, wall, cpu = run_measured(argv + ["--", str(wl), secs])
    finally:
        restore_toplevel(top)  # trace-cmd -k leaves tracing_on=0 and its events enabled
    t_rep = json.loads(run_measured(ftslab_cmd("report", str(t_out), "--format", "json"),
                                    env=env)[0].stdout)
    results["trace-cmd"] = dict(iterations=iterations(cp.stdout), events=t_rep["events"],
                                lost=t_rep["lost"], cpu_total=cpu,
                                file_bytes=t_out.stat().st_size)

    # workload CPU ~= its runtime (a busy loop on one CPU): subtract to get the reader's
    for r in results.values():
        r["reader_cpu_s"] = max(0.0, r["cpu_total"] - args.seconds)
        r["slowdown"] = base / r["iterations"] if r["iterations"] else float("inf")
        r["reader_us_per_event"] = r["reader_cpu_s"] / r["events"] * 1e6 if r["events"] else 0
        r["bytes_per_event"] = r["file_bytes"] / r["events"] if r["events"] else 0

    # report speed on the same file (trace-cmd's own recording)
    _, f_wall, _ = run_measured(ftslab_cmd("report", str(t_out), "--format", "json"), env=env)
    _, t_wall, _ = run_measured([tc, "report", str(t_out)])
    _, f_wall2, _ = run_measured(ftslab_cmd("report", str(f_out), "--format", "json"), env=env)
    _, t_wall2, _ = run_measured([tc, "report", str(f_out)])

    print(f"workload: {args.seconds:g} s of pipe/open/socket loop; baseline {base:,} iterations;"
          f" buffer {args.buffer_kb} KiB/CPU")
    print(f"{'':12}{'events':>12}{'lost':>8}{'reader CPU s':>14}{'µs/event':>10}"
          f"{'slowdown':>10}{'file MB':>9}{'B/event':>9}")
    for name, r in results.items():
        print(f"{name:12}{r['events']:>12,}{r['lost']:>8,}{r['reader_cpu_s']:>14.2f}"
              f"{r['reader_us_per_event']:>10.3f}{r['slowdown']:>9.2f}x"
              f"{r['file_bytes'] / 1e6:>9.1f}{r['bytes_per_event']:>9.2f}")
    fr, tr = results["ftslab"], results["trace-cmd"]
    print(f"ratios ftslab/trace-cmd: reader CPU per event "
          f"{fr['reader_us_per_event'] / tr['reader_us_per_event']:.2f}x, bytes per event "
          f"{fr['bytes_per_event'] / tr['bytes_per_event']:.2f}x" if tr["events"] and
          tr["reader_us_per_event"] else "ratios: trace-cmd recorded nothing")
    print(f"report on trace-cmd's file ({t_rep['events']:,} events): ftslab {f_wall:.2f} s, "
          f"trace-cmd {t_wall:.2f} s -> ftslab {t_wall / f_wall:.1f}x faster")
    print(f"report on ftslab's file ({f_rep['events']:,} events): ftslab {f_wall2:.2f} s, "
          f"trace-cmd {t_wall2:.2f} s -> ftslab {t_wall2 / f_wall2:.1f}x faster")
    if args.json:
        print(json.dumps(dict(results=results, baseline_iterations=base,
                              report_s=dict(ftslab_on_tc=f_wall, tc_on_tc=t_wall,
                                            ftslab_on_ftslab=f_wall2, tc_on_ftslab=t_wall2)),
                         indent=1))
    if args.keep:
        print(f"recordings kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
