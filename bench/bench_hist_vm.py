#!/usr/bin/env python3
"""Cost of counting allocations with hist triggers vs recording the events, on Debian's
6.1 and 6.12 kernels booted under QEMU/TCG (tests/vm/vmrun.py): the kernel this project
runs on has no hist triggers.

In each guest, bench/workload.c (pipe/open/socket syscall loop) runs SECONDS under:
  baseline   nothing tracing
  hist       serve's hist triggers (kernel/hist.serve_specs: kmalloc, kmem_cache_alloc,
             mm_page_alloc) in a private instance, read once a second by HistSource
  record     ftslab record -a --kprobes off of the same three events (raw pages)
and prints, for each: workload iterations/s and slowdown vs baseline, events counted or
recorded, lost/dropped, and the reader's CPU seconds.  TCG runs code ~5x slower than
hardware: only ratios between rows of one run mean anything.

Usage (root): python3 bench/bench_hist_vm.py [--kernels 6.1,6.12] [--seconds 4] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EVENTS = ["kmem:kmalloc", "kmem:kmem_cache_alloc", "kmem:mm_page_alloc"]


def _rate(out: str) -> float:
    m = re.search(r"iterations (\d+) seconds ([\d.]+)", out)
    return int(m.group(1)) / float(m.group(2)) if m else 0.0


def _spawn(argv, log: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, **kw)


def _reap(p: subprocess.Popen) -> float:
    """Wait for p; the CPU seconds of it and its descendants."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return ru.ru_utime + ru.ru_stime


def _cpu_of(pid: int) -> float:
    """utime + stime of a live process (s), from /proc/PID/stat."""
    f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def hist_reader() -> int:
    """Runs as its own process in the guest: install serve's triggers, read them every
    second until SIGINT, undo, print the totals as JSON."""
    sys.path.insert(0, str(ROOT))
    from ftslab.kernel.hist import serve_specs
    from ftslab.kernel.tracefs import Tracefs
    from ftslab.kernel.undo import UndoStack
    from ftslab.session.histsource import HistSource
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    tfs = Tracefs.locate()
    undo = UndoStack(warn=lambda m: print(m, file=sys.stderr))
    inst = tfs.instance_create(f"ftslab_{os.getpid()}")
    undo.push("rmdir", inst.destroy)
    hits = dropped = reads = 0
    try:
        src = HistSource(inst, serve_specs(tfs))
        src.install(undo)
        src.read()
        print("ready", flush=True)
        while not stop:
            time.sleep(1.0)
            d = src.read()
            hits, dropped, reads = hits + d.hits, dropped + d.dropped, reads + 1
        d = src.read()
        hits, dropped = hits + d.hits, dropped + d.dropped
    finally:
        undo.unwind()
    print(json.dumps({"events": hits, "dropped": dropped, "reads": reads}), flush=True)
    return 0


def _wait_for(pred, settle: float, what: str, log: Path) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < settle:
        if pred():
            return
        time.sleep(0.2)
    raise SystemExit(f"{what}: not ready after {settle:.0f} s: {log.read_text()[-800:]}")


def guest(seconds: float, workload: str, tmp: Path, rounds: int = 2) -> dict:
    """Every mode ``rounds`` times in one boot, interleaved (TCG's speed drifts)."""
    return {"rounds": [guest_round(seconds, workload, tmp) for _ in range(rounds)]}


def guest_round(seconds: float, workload: str, tmp: Path, settle: float = 120.0) -> dict:
    rows = {}
    wl = _spawn([workload, str(seconds)], tmp / "wl.log")
    _reap(wl)
    rows["baseline"] = {"rate": _rate((tmp / "wl.log").read_text())}

    log = tmp / "hist.log"
    rd = _spawn([sys.executable, str(Path(__file__).resolve()), "--hist-reader"], log)
    _wait_for(lambda: "ready" in log.read_text() or rd.poll() is not None, settle, "hist", log)
    if rd.poll() is not None:
        raise SystemExit(f"hist reader failed: {log.read_text()[-1500:]}")
    c0 = _cpu_of(rd.pid)
    wl = _spawn([workload, str(seconds)], tmp / "wl.log")
    _reap(wl)
    cpu = _cpu_of(rd.pid) - c0
    rows["hist"] = {"rate": _rate((tmp / "wl.log").read_text())}
    rd.send_signal(signal.SIGINT)
    total = _reap(rd)
    last = log.read_text().strip().splitlines()[-1]
    rows["hist"].update(json.loads(last), reader_cpu_s=cpu, reader_cpu_total_s=total)

    dat = tmp / "rec.dat"
    log = tmp / "rec.log"
    argv = [sys.executable, "-m", "ftslab", "record", "-a", "--kprobes", "off", "-d",
            str(seconds + 60), "-o", str(dat)]
    for e in EVENTS:
        argv += ["-e", e]
    rec = _spawn(argv, log, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    inst = Path(f"/sys/kernel/tracing/instances/ftslab_{rec.pid}/tracing_on")

    def recording() -> bool:
        try:
            return inst.read_text().strip() == "1" or rec.poll() is not None
        except OSError:
            return rec.poll() is not None
    _wait_for(recording, settle, "record", log)
    c0 = _cpu_of(rec.pid)
    wl = _spawn([workload, str(seconds)], tmp / "wl.log")
    _reap(wl)
    time.sleep(1.0)  # what the workload made is read now
    cpu = _cpu_of(rec.pid) - c0
    rec.send_signal(signal.SIGINT)
    total = _reap(rec)
    if rec.returncode != 0:
        raise SystemExit(f"record failed: {log.read_text()[-1500:]}")
    rep = subprocess.run([sys.executable, "-m", "ftslab", "report", str(dat), "--format",
                          "json"], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    summ = json.loads(rep.stdout)["summary"]
    rows["record"] = {"rate": _rate((tmp / "wl.log").read_text()), "events": summ["events"],
                      "lost": summ["lost"], "reader_cpu_s": cpu, "reader_cpu_total_s": total,
                      "bytes": dat.stat().st_size}
    return rows


def host(kernels: list[str], seconds: float, as_json: bool) -> int:
    from bench_kprobes_vm import guest_runs
    results = guest_runs(kernels, Path(__file__).resolve(), seconds)
    if results is None:
        return 1
    if as_json:
        print(json.dumps(results, indent=1))
        return 0
    for k, r in results.items():
        print(f"\n{r['package']} under QEMU/TCG, workload {seconds:g} s, whole system, "
              f"events {', '.join(EVENTS)}; reader cpu: during the workload (whole run)")
        print(f"{'round':<5} {'mode':<9} {'iter/s':>9} {'slowdown':>8} {'events':>9} "
              f"{'lost/drop':>9} {'reader cpu s':>18}")
        for i, rows in enumerate(r["rows"]["rounds"]):
            base = rows["baseline"]["rate"]
            for mode in ("baseline", "hist", "record"):
                x = rows[mode]
                slow = base / x["rate"] if x.get("rate") else float("nan")
                loss = x.get("lost", x.get("dropped", ""))
                cpu = (f"{x['reader_cpu_s']:.2f} ({x['reader_cpu_total_s']:.2f})"
                       if "reader_cpu_s" in x else "")
                print(f"{i + 1:<5} {mode:<9} {x['rate']:>9.0f} {slow:>7.2f}x "
                      f"{x.get('events', ''):>9} {loss:>9} {cpu:>18}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="6.1,6.12")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--guest", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--hist-reader", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hist_reader:
        return hist_reader()
    if a.guest:
        out = Path(os.environ["FTSLAB_VM_RESULTS"])
        rows = guest(a.seconds, a.workload, Path(tempfile.mkdtemp()))
        (out / "bench.json").write_text(json.dumps(rows))
        print(json.dumps(rows, indent=1))
        return 0
    return host(a.kernels.split(","), a.seconds, a.json)


if __name__ == "__main__":
    sys.exit(main())
