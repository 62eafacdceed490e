#!/usr/bin/env python3
"""What ``ftslab serve`` costs: the workload's slowdown, the exporter's CPU and memory.

Runs bench/workload.c (pipe/open/socket syscall loop) for SECONDS with nothing traced
(the baseline, twice, the better kept), then beside each of: ``ftslab record -a``,
``ftslab serve`` (live objects on, the default), ``ftslab serve --no-live``.  Each ftslab
runs whole-system as a process of its own, started before the workload (the serves
until their first snapshot is published) and stopped with SIGINT after it; a scraper
reads /metrics every second meanwhile, as Prometheus would.  Its CPU (user+sys) and peak
RSS are wait4's for its process (threads and any child included); the workload's
slowdown is the baseline's iterations over its own.  Then one longer serve
(--long-seconds) beside the same workload restarted back to back, its RSS read every
--every seconds with the live objects it holds: memory against uptime.  And each of
the three beside no workload for --idle-seconds: what it costs on a quiet machine.

Usage: sudo python3 bench/bench_serve.py [--seconds 10] [--interval 5]
           [--long-seconds 120] [--every 15] [--json]
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
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_record import ROOT, build_workload, ftslab_cmd, iterations  # noqa: E402

TRACEFS = Path("/sys/kernel/tracing")


class Traced:
    """An ftslab process whose own resource usage is read by wait4 when it ends."""

    def __init__(self, argv: list[str], env: dict):
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.err: list[str] = []
        self.target = None
        self.scrapes = 0
        self._stop = threading.Event()
        self._scraper = None

    def wait_serving(self, timeout: float = 60) -> None:
        """serve: the banner, then the first published snapshot; scrapes every second
        from then on (a thread)."""
        line = ""
        while "ftslab serve: " not in line:
            line = self.proc.stderr.readline()
            if not line:
                sys.exit("bench: serve ended before its banner: " + "".join(self.err))
            self.err.append(line)
        self._drain()
        self.target = re.search(r"listening on http://(\S+?)/metrics", line).group(1)
        deadline = time.monotonic() + timeout
        while "ftslab_lost_events_total" not in self.scrape():
            if time.monotonic() > deadline:
                sys.exit("bench: serve published nothing in time")
            time.sleep(0.1)
        self._scraper = threading.Thread(target=self._scrape_loop, daemon=True)
        self._scraper.start()

    def wait_recording(self, timeout: float = 60) -> None:
        """record: its instance exists (the session is set up)."""
        self._drain()
        deadline = time.monotonic() + timeout
        while not (TRACEFS / "instances" / f"ftslab_{self.proc.pid}").is_dir():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                sys.exit("bench: record did not start: " + "".join(self.err))
            time.sleep(0.05)
        time.sleep(0.5)

    def _drain(self) -> None:
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://{self.target}/metrics", timeout=30) as r:
            self.scrapes += 1
            return r.read().decode()

    def _scrape_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.scrape()
            except OSError:
                pass

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

    def stop(self) -> dict:
        """SIGINT, then wait4: its CPU seconds and peak RSS."""
        self._stop.set()
        if self._scraper:
            self._scraper.join()
        self.proc.send_signal(signal.SIGINT)
        _pid, status, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self.proc.returncode != 0:
            sys.exit(f"bench: {self.proc.args[3:]} exited {self.proc.returncode}: "
                     + "".join(self.err)[-2000:])
        return dict(cpu_s=ru.ru_utime + ru.ru_stime, user_s=ru.ru_utime, sys_s=ru.ru_stime,
                    peak_rss_mb=ru.ru_maxrss / 1024, stderr="".join(self.err))


def workload(wl: Path, secs: float) -> int:
    cp = subprocess.run([str(wl), str(secs)], capture_output=True, text=True, check=True)
    return iterations(cp.stdout)


def lost_of(stderr: str) -> int:
    m = re.search(r"lost ([\d,]+)", stderr)
    return int(m.group(1).replace(",", "")) if m else -1


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--interval", type=float, default=5.0, help="serve's -n")
    ap.add_argument("--buffer-kb", type=int, default=8192)
    ap.add_argument("--long-seconds", type=float, default=120.0)
    ap.add_argument("--every", type=float, default=15.0)
    ap.add_argument("--idle-seconds", type=float, default=30.0,
                    help="serve and record beside no workload (the machine's own events)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-serve-"))
    wl = build_workload(tmp)
    secs = args.seconds
    base = max(workload(wl, secs) for _ in range(2))
    serve = ["serve", "--listen", "127.0.0.1:0", "-n", str(args.interval),
             "-b", str(args.buffer_kb)]
    variants = {
        "record -a": (["record", "-a", "-b", str(args.buffer_kb), "-o", str(tmp / "r.dat")],
                      "wait_recording"),
        "serve (live)": (serve, "wait_serving"),
        "serve --no-live": (serve + ["--no-live"], "wait_serving"),
    }
    results = {"baseline": dict(iterations=base)}
    for name, (argv, ready) in variants.items():
        t = Traced(ftslab_cmd(*argv), env)
        getattr(t, ready)()
        n = workload(wl, secs)
        time.sleep(min(args.interval, 5.0) + 0.5)  # the serves publish its last interval
        r = t.stop()
        r.update(iterations=n, slowdown=base / n if n else float("inf"),
                 lost=lost_of(r.pop("stderr")), scrapes=t.scrapes)
        results[name] = r
        (tmp / "r.dat").unlink(missing_ok=True)

    # beside no workload: what an exporter costs on a machine going about its business
    idle = {}
    for name, (argv, ready) in variants.items():
        t = Traced(ftslab_cmd(*argv), env)
        getattr(t, ready)()
        time.sleep(args.idle_seconds)
        events = metric(t.scrape(), "ftslab_events_total") if ready == "wait_serving" else None
        r = t.stop()
        r.pop("stderr")  # (record's own count is an estimate: only serve's is shown)
        idle[name] = dict(r, events=events)
        (tmp / "r.dat").unlink(missing_ok=True)
    results["idle"] = idle

    # the long run: RSS and live objects against uptime, the workload restarted back to back
    t = Traced(ftslab_cmd(*serve), env)
    t.wait_serving()
    t0 = time.monotonic()
    stop = threading.Event()

    def keep_busy():
        while not stop.is_set():
            workload(wl, min(args.every, 10.0))
    busy = threading.Thread(target=keep_busy, daemon=True)
    busy.start()
    points = []
    while True:
        up = time.monotonic() - t0
        text = t.scrape()
        points.append(dict(uptime_s=round(up, 1), rss_mb=t.rss_kb() / 1024,
                           live_objects=metric(text, "ftslab_live_objects"),
                           evicted=metric(text, "ftslab_live_evicted_objects_total"),
                           events=metric(text, "ftslab_events_total")))
        if up >= args.long_seconds:
            break
        time.sleep(min(args.every, args.long_seconds - up + 0.01))
    stop.set()
    busy.join()
    long = t.stop()
    long["lost"] = lost_of(long.pop("stderr"))
    results["long serve"] = dict(points=points, **long)

    print(f"workload: {secs:g} s of pipe/open/socket loop; baseline {base:,} iterations; "
          f"serve -n {args.interval:g}, scraped every 1 s; buffer {args.buffer_kb} KiB/CPU")
    print(f"{'':18}{'iterations':>12}{'slowdown':>10}{'CPU s':>8}{'(user':>7}{'sys)':>7}"
          f"{'CPU/wl s':>10}{'peak RSS MB':>13}{'lost':>12}")
    for name, r in results.items():
        if name in ("baseline", "long serve", "idle"):
            continue
        print(f"{name:18}{r['iterations']:>12,}{r['slowdown']:>9.2f}x{r['cpu_s']:>8.2f}"
              f"{r['user_s']:>7.2f}{r['sys_s']:>7.2f}{r['cpu_s'] / secs:>10.2f}"
              f"{r['peak_rss_mb']:>13.1f}{r['lost']:>12,}")
    print(f"no workload, {args.idle_seconds:g} s (the machine's own events; CPU includes "
          "start-up):")
    for name, r in idle.items():
        ev = r["events"]
        rate = (f", {ev:,.0f} events ({ev / args.idle_seconds:,.0f}/s)" if ev is not None
                else "")
        print(f"  {name:18} CPU {r['cpu_s']:.2f} s ({r['cpu_s'] / args.idle_seconds:.1%} of a "
              f"core){rate}, peak RSS {r['peak_rss_mb']:.1f} MB")
    print(f"long serve ({args.long_seconds:g} s, workload back to back): CPU "
          f"{long['cpu_s']:.1f} s, peak RSS {long['peak_rss_mb']:.1f} MB, lost {long['lost']:,}")
    print(f"{'uptime s':>10}{'RSS MB':>9}{'live objects':>14}{'evicted':>10}{'events':>14}")
    for p in points:
        print(f"{p['uptime_s']:>10.1f}{p['rss_mb']:>9.1f}{p['live_objects'] or 0:>14,.0f}"
              f"{p['evicted'] or 0:>10,.0f}{p['events'] or 0:>14,.0f}")
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
