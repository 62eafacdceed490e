#!/usr/bin/env python3
"""What recording the frees of the whole system costs a per-command recording.

A busy machine: bench/workload.c (pipe/open/socket syscall loop) runs on one CPU for the
whole bench, in back-to-back slices of --slice seconds, so that its throughput can be
read over any window.  It is not the recorded command, so a per-command recording
traces none of its allocations; with `--frees all` (the default) every free it makes
goes to the second instance (`ftslab_<pid>_frees`) all the same.  A small COMMAND is
recorded per command, in alternating pairs: `ftslab record --frees all -- COMMAND` and
`ftslab record --frees traced -- COMMAND`, both with the same --settle.  Each pair also
runs the command unrecorded, then idles as long as a recording lasts, as a reference.
Per run: the command's wall time, the CPU time of the ftslab process itself (its
children, i.e. the command, excluded), the allocation and free events recorded, lost
events, file size, bytes per event, and the workload's iterations/s while the recording ran (from tracing on to ftslab's exit:
command, settle window and writing the file).  Prints medians and the ratios all/traced
of the medians.  --system-ref adds one `ftslab record -a -d D` (D = the median
allocation window of the `all` runs, same --settle) as the whole-system reference.

Needs root; takes tracefs for its whole run (run it under the kernel lock).

Usage: sudo python3 bench/bench_system_frees.py [--pairs 5] [--settle 1]
           [--command true50|find|both] [--system-ref] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_record import ROOT, build_workload, ftslab_cmd, iterations  # noqa: E402

COMMANDS = {
    "true50": "python3 -c 'import subprocess; "
              "[subprocess.run([\"/bin/true\"]) for _ in range(50)]'",
    "find": "find /usr/lib/python3* -name '*.py'",
}
_TICK = os.sysconf("SC_CLK_TCK")


class Background:
    """The busy machine: the workload pinned to one CPU, restarted every ``slice_s``
    seconds, each slice's (start, end, iterations, its own seconds) kept, so that its
    rate over a window is that of the slices wholly inside the window."""

    def __init__(self, exe: Path, cpu: int, slice_s: float):
        self.argv = [str(exe), str(slice_s)]
        self.cpu = cpu
        self.slices: list[tuple[float, float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            cp = subprocess.run(self.argv, capture_output=True, text=True,
                                preexec_fn=lambda: os.sched_setaffinity(0, {self.cpu}))
            t1 = time.monotonic()
            secs = float(cp.stdout.split()[-1]) if cp.returncode == 0 else 0.0
            self.slices.append((t0, t1, iterations(cp.stdout), secs))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def rate(self, t0: float, t1: float) -> tuple[float, int]:
        """(iterations per second, slices counted) of the slices within [t0, t1]."""
        inside = [s for s in self.slices if s[0] >= t0 and s[1] <= t1]
        secs = sum(s[3] for s in inside)
        return (sum(s[2] for s in inside) / secs if secs else float("nan")), len(inside)

    def wait_past(self, t: float) -> None:
        """Until the slice running at ``t`` has ended."""
        while not any(s[1] >= t for s in self.slices):
            time.sleep(0.02)


def timed(command: str, time_file: Path) -> list[str]:
    """COMMAND under bash's `time` (wall seconds to time_file); its output discarded."""
    return ["bash", "-c", f"TIMEFORMAT=%3R; {{ time {command} >/dev/null 2>&1; }} "
                          f"2>{shlex.quote(str(time_file))}"]


def _proc_times(pid: int) -> tuple[float, float]:
    """(own CPU s, waited-for children's CPU s) of a zombie, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / _TICK, (cutime + cstime) / _TICK


def run_ftslab(args: list[str], env: dict) -> dict:
    """One `ftslab record ...`: the window from tracing on (ftslab's first status line) to
    its exit, its own CPU time and its children's (read from the zombie before reaping),
    and wait4's rusage (ftslab and the command together)."""
    t_spawn = time.monotonic()
    p = subprocess.Popen(ftslab_cmd("record", *args), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env)
    lines: list[tuple[float, str]] = []

    def read_err():
        for line in p.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    th = threading.Thread(target=read_err, daemon=True)
    th.start()
    os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
    t_exit = time.monotonic()
    own, children = _proc_times(p.pid)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    th.join()
    if p.returncode != 0:
        sys.exit(f"ftslab record {' '.join(args)} failed ({p.returncode}): "
                 + "\n".join(l for _, l in lines)[-2000:])
    starts = [t for t, l in lines if l.startswith("ftslab: recording ")]
    return dict(t0=starts[0] if starts else t_spawn, t1=t_exit, spawn_to_exit_s=t_exit - t_spawn,
                ftslab_cpu_s=own, command_cpu_s=children,
                wait4_cpu_s=ru.ru_utime + ru.ru_stime)


def report_summary(path: Path, env: dict) -> dict:
    cp = subprocess.run(ftslab_cmd("report", str(path), "--format", "json"),
                        capture_output=True, text=True, env=env)
    if cp.returncode != 0:
        sys.exit(f"ftslab report {path} failed ({cp.returncode}): {cp.stderr[-2000:]}")
    return json.loads(cp.stdout)["summary"]


def measure(mode: str, command: str, settle: float, tmp: Path, bg: Background,
            env: dict, duration: float | None = None, window: float = 0.0) -> dict:
    """One run.  ``none``: the command unrecorded, then nothing until ``window`` seconds
    have passed (the background's reference over a window as long as a recording's)."""
    out = tmp / f"{mode}.dat"
    tfile = tmp / "time"
    tfile.unlink(missing_ok=True)
    if mode == "none":
        t0 = time.monotonic()
        cp = subprocess.run(timed(command, tfile))
        if cp.returncode != 0:
            sys.exit(f"the command failed alone ({cp.returncode}): {command}")
        time.sleep(max(0.0, t0 + window - time.monotonic()))
        r = dict(t0=t0, t1=time.monotonic())
    else:
        if mode == "system":
            args = ["-a", "-d", f"{duration:.3f}"]
        else:
            args = ["--frees", mode, "--", *timed(command, tfile)]
        r = run_ftslab(["-o", str(out), "--settle", f"{settle:g}", *args], env)
    bg.wait_past(r["t1"])
    r["bg_rate"], r["bg_slices"] = bg.rate(r["t0"], r["t1"])
    r["window_s"] = r["t1"] - r["t0"]
    if tfile.exists():
        r["command_wall_s"] = float(tfile.read_text().split()[-1])
    if mode != "none":
        s = report_summary(out, env)
        fr = s.get("frees", {})
        frees = fr.get("recorded", sum(n for e, n in s["per_event"].items()
                                       if e.endswith("free")))
        r.update(events=s["events"], alloc_events=s["events"] - frees, free_events=frees,
                 frees_matched=fr.get("matched", 0), lost=s["lost"],
                 frees_lost=fr.get("lost", 0), frees_scope=fr.get("scope", "?"),
                 per_event=s["per_event"], duration_s=s["duration_s"],
                 settle_s=fr.get("settle_s", 0.0), file_bytes=out.stat().st_size)
        r["bytes_per_event"] = r["file_bytes"] / r["events"] if r["events"] else 0.0
        out.unlink()
    return r


FIGURES = [  # (key, label, format)
    ("command_wall_s", "command wall s", "{:.3f}"),
    ("window_s", "recording window s", "{:.2f}"),
    ("ftslab_cpu_s", "ftslab CPU s", "{:.2f}"),
    ("alloc_events", "alloc events", "{:,.0f}"),
    ("free_events", "free events", "{:,.0f}"),
    ("frees_matched", "frees matched", "{:,.0f}"),
    ("lost", "lost", "{:,.0f}"),
    ("file_bytes", "file MB", "MB"),
    ("bytes_per_event", "bytes/event", "{:.2f}"),
    ("bg_rate", "background it/s", "{:,.0f}"),
]


PAIRWISE = [("bg_rate", "background it/s"), ("command_wall_s", "command wall"),
            ("ftslab_cpu_s", "ftslab CPU"), ("window_s", "recording window")]


def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]  # nan excluded
    return statistics.median(vals) if vals else None


def fmt(key_fmt: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v / 1e6:.2f}" if key_fmt == "MB" else key_fmt.format(v)


def print_table(name: str, runs: dict[str, list[dict]]) -> dict:
    conds = [c for c in ("none", "traced", "all", "system") if runs.get(c)]
    meds = {c: {k: med(runs[c], k) for k, _, _ in FIGURES} for c in conds}
    print(f"\n{name}: medians of {', '.join(f'{len(runs[c])} {c}' for c in conds)}")
    print(f"{'':22}" + "".join(f"{c:>14}" for c in conds) + f"{'all/traced':>12}")
    for k, label, f in FIGURES:
        row = "".join(f"{fmt(f, meds[c][k]):>14}" for c in conds)
        a, t = meds.get("all", {}).get(k), meds.get("traced", {}).get(k)
        ratio = f"{a / t:.2f}x" if a is not None and t else "-"
        print(f"{label:22}{row}{ratio:>12}")
    pairwise = {}
    for k, label in PAIRWISE:
        rs = [a[k] / t[k] for a, t in zip(runs["all"], runs["traced"]) if t.get(k)]
        if rs:
            pairwise[k] = rs
            print(f"pairwise all/traced, {label}: median {statistics.median(rs):.2f}x "
                  f"(min {min(rs):.2f}x, max {max(rs):.2f}x)")
    extra = [(a["file_bytes"] - t["file_bytes"]) / (a["events"] - t["events"])
             for a, t in zip(runs["all"], runs["traced"]) if a["events"] > t["events"]]
    if extra:
        pairwise["extra_bytes_per_extra_event"] = extra
        print(f"pairwise, file bytes per extra event of all over traced: median "
              f"{statistics.median(extra):.2f} (min {min(extra):.2f}, max {max(extra):.2f})")
    return dict(medians=meds, pairwise=pairwise)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=5, help="alternating pairs (>= 5)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="record --settle SECONDS, the same in both conditions")
    ap.add_argument("--command", choices=[*COMMANDS, "both"], default="both")
    ap.add_argument("--cpu", type=int, default=None,
                    help="CPU of the background workload (default: the last online)")
    ap.add_argument("--slice", type=float, default=0.1,
                    help="seconds per background workload slice")
    ap.add_argument("--system-ref", action="store_true",
                    help="also one `record -a -d D` per command (D = median allocation "
                         "window of the all runs)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root")
    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    tmp = Path(tempfile.mkdtemp(prefix="ftslab-bench-frees-"))
    load_start = Path("/proc/loadavg").read_text().split()[0]
    names = list(COMMANDS) if args.command == "both" else [args.command]
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        wl = build_workload(tmp)
        with Background(wl, cpu, args.slice) as bg:
            measure("all", COMMANDS[names[0]], args.settle, tmp, bg, env)  # warm-up
            for name in names:
                cmd = COMMANDS[name]
                runs: dict[str, list[dict]] = {"none": [], "traced": [], "all": []}
                for i in range(args.pairs):
                    # alternate which goes first, so a drift of the machine's speed
                    # falls on both alike
                    order = ("all", "traced") if i % 2 == 0 else ("traced", "all")
                    for cond in ("none", *order):
                        done = runs["all"] + runs["traced"]
                        window = (statistics.median(r["window_s"] for r in done) if done
                                  else args.settle + 0.4)
                        r = measure(cond, cmd, args.settle, tmp, bg, env, window=window)
                        runs[cond].append(r)
                        print(f"{name} pair {i + 1} {cond:6} command "
                              f"{r.get('command_wall_s', 0):6.3f} s  background "
                              f"{r['bg_rate']:10,.0f} it/s ({r['bg_slices']} slices)"
                              + (f"  ftslab CPU {r['ftslab_cpu_s']:.2f} s  events "
                                 f"{r['alloc_events']:,} + {r['free_events']:,} frees  "
                                 f"{r['file_bytes'] / 1e6:.1f} MB"
                                 if cond != "none" else ""), flush=True)
                if args.system_ref:
                    d = statistics.median(r["duration_s"] - r["settle_s"] for r in runs["all"])
                    r = measure("system", cmd, args.settle, tmp, bg, env, duration=d)
                    runs["system"] = [r]
                    print(f"{name} system -a -d {d:.3f}  background {r['bg_rate']:,.0f} it/s"
                          f"  ftslab CPU {r['ftslab_cpu_s']:.2f} s  events {r['events']:,}",
                          flush=True)
                results[name] = runs
            idle_t = time.monotonic()
            time.sleep(2.0)
            idle_rate, _ = bg.rate(idle_t, time.monotonic())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kernel = os.uname().release
    print(f"\nLinux {kernel}, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs; "
          f"background: bench/workload.c on CPU {cpu} ({args.slice:g} s slices), "
          f"{idle_rate:,.0f} it/s with nothing recorded; {args.pairs} alternating pairs, "
          f"--settle {args.settle:g} in both; load average {load_start} at the start, "
          f"{Path('/proc/loadavg').read_text().split()[0]} at the end")
    medians = {}
    for name, runs in results.items():
        print(f"command: {COMMANDS[name]}")
        medians[name] = print_table(name, runs)
    print("recording window: from tracing on (ftslab's first status line) to ftslab's exit "
          "(command, settle, writing the file); ftslab CPU: the ftslab process alone, the "
          "command excluded; 'none': the command unrecorded, the window padded to a recording's")
    if args.json:
        print(json.dumps(dict(kernel=kernel, date=time.strftime("%Y-%m-%d"),
                              settle=args.settle, pairs=args.pairs, background_cpu=cpu,
                              idle_rate=idle_rate, commands=COMMANDS, figures=medians,
                              runs={n: {c: [{k: v for k, v in r.items() if k not in
                                             ("t0", "t1")} for r in rs]
                                        for c, rs in runs.items()}
                                    for n, runs in results.items()}), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
