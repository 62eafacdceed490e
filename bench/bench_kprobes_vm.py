#!/usr/bin/env python3
"""Overhead of kprobe recording vs tracepoint recording, on Debian's 6.1 and 6.12 kernels
booted under QEMU/TCG (tests/vm/vmrun.py): the kernel this project runs on has no kprobes.

In each guest, bench/workload.c (pipe/open/socket syscall loop) runs SECONDS under:
  baseline          nothing recording
  tracepoints       ftslab record -a --kprobes off   (the six kmem tracepoints)
  kprobes           ftslab record -a --kprobes only  (the kmalloc-family kprobes alone)
  both              ftslab record -a --kprobes on    (tracepoints + kprobes, the default)
  trace-cmd         trace-cmd record of the six kmem tracepoints (the peer, same run)
and prints, for each: workload iterations/s and slowdown vs baseline, events captured,
lost, recorder CPU seconds and CPU per event.  TCG runs code ~5x slower than hardware:
only ratios between these rows mean anything.

Usage (root): python3 bench/bench_kprobes_vm.py [--kernels 6.1,6.12] [--seconds 4] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVENTS = ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:mm_page_alloc", "kmem:kfree",
          "kmem:kmem_cache_free", "kmem:mm_page_free"]


def _measured(argv) -> tuple[subprocess.CompletedProcess, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    cp = subprocess.run(argv, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return cp, wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _rate(out: str) -> float:
    m = re.search(r"iterations (\d+) seconds ([\d.]+)", out)
    return int(m.group(1)) / float(m.group(2)) if m else 0.0


def _spawn(argv, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _reap(p: subprocess.Popen) -> float:
    """Wait for p; its exit code, and the CPU seconds of it and its descendants."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime


def _with_recorder(argv, workload: str, seconds: float, settle: float, tmp: Path) -> dict:
    """Start the recorder, let it set up (``settle`` s: TCG is slow), run the workload
    beside it (not under it), wait for the recorder to end.  CPU: the recorder's own."""
    rec = _spawn(argv, tmp / "rec.log")
    # start the workload only once the recorder records: its instance's tracing_on is
    # 1 (ftslab), or the kmem events are on at the top level (trace-cmd)
    t0 = time.monotonic()
    tfs = Path("/sys/kernel/tracing")
    while time.monotonic() - t0 < settle and rec.poll() is None:
        inst = tfs / "instances" / f"ftslab_{rec.pid}" / "tracing_on"
        try:
            if argv[0] == "trace-cmd":
                on = (tfs / "events/kmem/kmalloc/enable").read_text().strip() == "1"
            else:
                on = inst.read_text().strip() == "1"
        except OSError:
            on = False
        if on:
            break
        time.sleep(0.2)
    else:
        raise SystemExit(f"{argv[:3]}: not recording after {settle:.0f} s: "
                         f"{(tmp / 'rec.log').read_text()[-800:]}")
    wl = _spawn([workload, str(seconds)], tmp / "wl.log")
    _reap(wl)
    time.sleep(0.5)
    rec.send_signal(signal.SIGINT)  # both recorders end cleanly on Ctrl-C
    cpu = _reap(rec)
    return {"rc": rec.returncode, "stderr": (tmp / "rec.log").read_text()[-1500:],
            "rate": _rate((tmp / "wl.log").read_text()), "cpu_with_workload_s": cpu}


def guest(seconds: float, workload: str, out_dir: Path, settle: float = 120.0) -> dict:
    """Runs inside the guest: every mode once, in the same boot."""
    py = [sys.executable, "-m", "ftslab"]
    rows = {}
    cp, wall, wl_cpu = _measured([workload, str(seconds)])
    rows["baseline"] = {"rate": _rate(cp.stdout), "cpu_total_s": wl_cpu}
    dur = seconds + 60.0  # ended by SIGINT once the workload is done
    for mode, kp in (("tracepoints", "off"), ("kprobes", "only"), ("both", "on")):
        dat = out_dir / f"{mode}.dat"
        r = _with_recorder(py + ["record", "-d", str(dur), "--kprobes", kp, "-o", str(dat)],
                           workload, seconds, settle, out_dir)
        if r["rc"] != 0:
            raise SystemExit(f"{mode}: ftslab failed: {r['stderr']}")
        rep = subprocess.run(py + ["report", str(dat), "--format", "json"],
                             capture_output=True, text=True)
        summ = json.loads(rep.stdout)["summary"]
        rows[mode] = {"rate": r["rate"], "events": summ["events"], "lost": summ["lost"],
                      "cpu_total_s": r["cpu_with_workload_s"],
                      "kprobe_events": sum(v for k, v in summ["per_event"].items()
                                           if k.startswith("ftslab_")),
                      "bytes": dat.stat().st_size}
    tc = out_dir / "tc.dat"
    argv = ["trace-cmd", "record", "-q", "-o", str(tc)]
    for e in EVENTS:
        argv += ["-e", e]
    r = _with_recorder(argv + ["sleep", str(dur)], workload, seconds, settle, out_dir)
    if r["rc"] == 0:
        text = subprocess.run(["trace-cmd", "report", "-i", str(tc)], capture_output=True,
                              text=True).stdout
        names = tuple(f" {e.split(':')[1]}: " for e in EVENTS)
        n = sum(1 for line in text.splitlines() if any(x in line for x in names))
        rows["trace-cmd"] = {"rate": r["rate"], "events": n,
                             "cpu_total_s": r["cpu_with_workload_s"],
                             "bytes": tc.stat().st_size}
    else:
        rows["trace-cmd"] = {"error": r["stderr"]}
    return rows


def guest_runs(kernels: list[str], script: Path, seconds: float) -> dict | None:
    """Boot each kernel (tests/vm/vmrun.py) and run ``script --guest`` in it beside a
    static build of workload.c; returns kernel -> {package, rows: the script's
    bench.json}, or None (and says why) when a guest failed."""
    sys.path.insert(0, str(ROOT / "tests" / "vm"))
    import shutil
    import vmrun
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-"))
    exe = tmp / "workload"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(HERE / "workload.c")],
                   check=True)
    results = {}
    for k in kernels:
        # the results share is the one host directory the guest sees at a known path
        rdir = tmp / f"results-{k}"
        rdir.mkdir()
        shutil.copy(exe, rdir / "workload")
        res = vmrun.run(k, f"{sys.executable} {script} --guest --seconds "
                           f"{seconds} --workload \"$FTSLAB_VM_RESULTS/workload\"",
                        timeout=900, results_dir=rdir)
        out = rdir / "bench.json"
        if not res.ok or not out.exists():
            print(f"{k}: {res.describe()}\n{res.output[-3000:]}", file=sys.stderr)
            return None
        results[k] = {"package": res.package, "rows": json.loads(out.read_text())}
    return results


def host(kernels: list[str], seconds: float, as_json: bool) -> int:
    results = guest_runs(kernels, HERE / "bench_kprobes_vm.py", seconds)
    if results is None:
        return 1
    if as_json:
        print(json.dumps(results, indent=1))
        return 0
    for k, r in results.items():
        rows = r["rows"]
        base = rows["baseline"]["rate"]
        print(f"\n{r['package']} under QEMU/TCG, workload {seconds:g} s, whole system")
        print(f"{'mode':<12} {'iter/s':>9} {'slowdown':>8} {'events':>9} {'lost':>6} "
              f"{'rec cpu':>7} {'rec µs/ev':>9} {'wl µs/ev':>8}")
        for mode in ("baseline", "tracepoints", "kprobes", "both", "trace-cmd"):
            x = rows.get(mode, {})
            if "error" in x or not x:
                print(f"{mode:<12} {x.get('error', 'n/a')[:60]}")
                continue
            slow = base / x["rate"] if x.get("rate") else float("nan")
            ev = x.get("events")
            # recorder CPU (its own process tree; the workload ran beside it)
            cpu = x.get("cpu_total_s", 0) if mode != "baseline" else 0.0
            per = (cpu / ev * 1e6) if ev and cpu > 0 else float("nan")
            # what each recorded event cost the workload: extra time per iteration over
            # events per iteration (the tracing cost is paid in the workload's syscalls)
            if mode != "baseline" and ev and x.get("rate"):
                extra = 1 / x["rate"] - 1 / base
                ev_per_iter = ev / (x["rate"] * seconds)
                x["wl_us_per_event"] = extra / ev_per_iter * 1e6
            
            print(f"{mode:<12} {x['rate']:>9.0f} {slow:>7.2f}x {ev if ev is not None else '':>9} "
                  f"{x.get('lost', ''):>6} {cpu:>7.2f} {per:>9.2f} "
                  f"{x.get('wl_us_per_event', float('nan')):>8.2f}")
        tp, kp = rows.get("tracepoints", {}), rows.get("kprobes", {})
        if tp.get("wl_us_per_event") and kp.get("wl_us_per_event"):
            print(f"kprobe/tracepoint cost per event for the workload: "
                  f"{kp['wl_us_per_event'] / tp['wl_us_per_event']:.2f}x; "
                  f"slowdown ratio {base / kp['rate'] / (base / tp['rate']):.2f}x")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="6.1,6.12")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.guest:
        out = Path(os.environ["FTSLAB_VM_RESULTS"])
        rows = guest(a.seconds, a.workload, Path(tempfile.mkdtemp()))
        (out / "bench.json").write_text(json.dumps(rows))
        print(json.dumps(rows, indent=1))
        return 0
    return host(a.kernels.split(","), a.seconds, a.json)


if __name__ == "__main__":
    sys.exit(main())
