#!/usr/bin/env python3
"""A real scrape of ``ftslab serve``, drawn: the picture in README ("serve").

As root on the real kernel: starts ``ftslab serve`` (events path, live on) and a real
Prometheus (Debian's ``prometheus``, on loopback, tests/promserver.py) scraping it every
second, runs a program that leaks eventfds at a steady pace (named ``leaky`` by prctl)
for LEAK seconds, then closes them all and idles, beside bursts of bench/workload.c; then
reads the series back through Prometheus's HTTP API (query_range) and plots them:

1. live objects of the leaking call site and of the ``leaky`` command (what serve said),
   with the count the program itself reports as a dashed line;
2. the leak signal of the ``leaky`` command (consecutive windows of growth);
3. the allocation rates of the five busiest caches (``rate()`` of the counters, the
   five with most allocations over the run).

Usage: ``python3 bench/serve_scrape_plot.py [OUT.png]`` (default docs/serve-scrape.png).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from promserver import PromServer, free_port  # noqa: E402
from bench_record import build_workload  # noqa: E402

LEAK = 40.0      # seconds of leaking
PER_STEP = 100   # eventfds per step
STEP = 1.0       # seconds between steps
AFTER = 20.0     # seconds after the close

LEAKY = r"""
import ctypes, json, os, sys, time
ctypes.CDLL(None).prctl(15, b"leaky", 0, 0, 0)
log = open(sys.argv[1], "w")
fds = []
t0 = time.time()
while time.time() - t0 < float(sys.argv[2]):
    fds += [os.eventfd(0) for _ in range(int(sys.argv[3]))]
    log.write(json.dumps([time.time(), len(fds)]) + "\n"); log.flush()
    time.sleep(float(sys.argv[4]))
for fd in fds:
    os.close(fd)
log.write(json.dumps([time.time(), 0]) + "\n"); log.flush()
time.sleep(float(sys.argv[5]))
"""


def main(out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "ftslab", "serve", "--listen",
                                  f"127.0.0.1:{port}", "-n", "2", "--leak-window", "4"],
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT)
        line = serve.stderr.readline()
        if "listening" not in line:
            serve.kill()
            sys.exit(f"serve did not start: {line}{serve.stderr.read()}")
        wl = build_workload(tmp)
        with PromServer(tmp / "prom", [f"127.0.0.1:{port}"], scrape_interval=1.0) as prom:
            prom.wait_targets_up()
            t0 = time.time()
            # beside the leak, bursts of allocation churn that frees what it allocates:
            # 2 s of bench/workload.c every 15 s
            stop = threading.Event()

            def churn():
                while not stop.wait(13):
                    subprocess.run([str(wl), "2"], stdout=subprocess.DEVNULL)
            th = threading.Thread(target=churn, daemon=True)
            th.start()
            log = tmp / "leaky.log"
            leaky = subprocess.run([sys.executable, "-c", LEAKY, str(log), str(LEAK),
                                    str(PER_STEP), str(STEP), str(AFTER)])
            assert leaky.returncode == 0
            stop.set()
            th.join()
            time.sleep(3)
            t1 = time.time()
            series = {}
            for name, expr in (
                    # a label with nothing live has no series: 0 then
                    ("call site", 'max(ftslab_callsite_live_objects'
                                  '{call_site=~"do_eventfd.*"}) or on() vector(0)'),
                    ("comm leaky", 'ftslab_comm_live_objects{comm="leaky"}'),
                    ("leak signal", 'ftslab_comm_live_growth_intervals{comm="leaky"}'),
                    ("rates", 'rate(ftslab_cache_allocations_total{cache!="<other>"}[5s])')):
                series[name] = prom.query_range(expr, t0, t1, step=1.0)
        serve.terminate()
        serve.communicate(timeout=30)
        truth = [json.loads(x) for x in log.read_text().splitlines()]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ax = axes[0]
    for name in ("call site", "comm leaky"):
        for labels, values in series[name]:
            lab = (labels.get("call_site") or "call site do_eventfd" if name == "call site"
                   else f"comm={labels.get('comm')}")
            ax.plot([t - t0 for t, _v in values], [v for _t, v in values], label=lab)
    ax.step([t - t0 for t, _n in truth], [n for _t, n in truth], "k--", where="post",
            label="eventfds the program holds (its own count)")
    ax.set_ylabel("live objects")
    ax.legend(fontsize=8)
    ax.set_title("ftslab serve, scraped by Prometheus 2.42 every second (Linux "
                 f"{os.uname().release})", fontsize=10)
    ax = axes[1]
    for _labels, values in series["leak signal"]:
        ax.step([t - t0 for t, _v in values], [v for _t, v in values], where="post",
                label="comm=leaky")
    ax.set_ylabel("growth windows\n(leak signal)")
    ax.legend(fontsize=8)
    ax = axes[2]
    # the five caches with the most allocations over the whole run
    busiest = sorted(series["rates"], key=lambda sv: -sum(v for _t, v in sv[1]))[:5]
    for labels, values in busiest:
        ax.plot([t - t0 for t, _v in values], [v for _t, v in values],
                label=labels.get("cache"))
    ax.set_ylabel("allocations/s")
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "serve-scrape.png")
