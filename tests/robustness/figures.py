"""Sum up what the robustness suite logged, for the RELIABILITY figures of docs/reliability.md.

    FTSLAB_KERNEL_TESTS=1 FTSLAB_ROBUSTNESS_FIGURES=/tmp/fig.jsonl \\
        python3 -m pytest -q tests/robustness
    python3 tests/robustness/figures.py /tmp/fig.jsonl
"""
from __future__ import annotations

import json
import sys
from collections import Counter


def main(path: str) -> None:
    rows = [json.loads(l) for l in open(path) if l.strip()]
    kills = [r for r in rows if r["kind"] == "kill"]
    sigkills = [r for r in rows if r["kind"] == "sigkill"]
    print(f"runs signalled (SIGINT/SIGTERM/SIGHUP): {len(kills)}")
    by = Counter((r["cmd"], r["phase"], r["signal"]) for r in kills)
    phases = sorted({p for _c, p, _s in by})
    for cmd in ("record", "stream"):
        for ph in phases:
            n = {s: by[(cmd, ph, s)] for s in ("SIGINT", "SIGTERM", "SIGHUP")}
            if any(n.values()):
                print(f"  {cmd:6} {ph:9} " + "  ".join(f"{s} {v}" for s, v in n.items()))
    print(f"runs killed with SIGKILL: {len(sigkills)}  "
          + ", ".join(f"{c} {n}" for c, n in Counter(r['cmd'] for r in sigkills).items()))
    print(f"  instances left by SIGKILL (expected, then removed by reset): "
          f"{sum(r['instances_left_by_kill'] for r in sigkills)}; spools with pages "
          f"recovered: {sum(r['spools_with_pages'] for r in sigkills)}")
    left = sum(r.get("leftovers", 0) for r in kills + sigkills)
    print(f"leftovers found after the runs (instances, probes, spools, events): {left}")
    fuzz = [r for r in rows if r["kind"] == "fuzz"]
    print(f"fuzz cases: {sum(r['cases'] for r in fuzz)}")
    for r in fuzz:
        extra = {k: v for k, v in r.items() if k not in ("kind", "test", "cases")}
        print(f"  {r['cases']:6}  {r['test']}" + (f"  {extra}" if extra else ""))
    faults = [r for r in rows if r["kind"] == "fault"]
    print(f"faults injected: {sum(r.get('count', 1) for r in faults)}")
    for what, n in Counter(r["what"] for r in faults).items():
        count = sum(r.get("count", 1) for r in faults if r["what"] == what)
        print(f"  {count:5}  {what}")
    for r in rows:
        if r["kind"] in ("concurrency", "lost"):
            print(f"{r['kind']}: {r['what']}: "
                  f"{r.get('events', r.get('lost'))}")


if __name__ == "__main__":
    main(sys.argv[1])
