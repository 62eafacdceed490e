"""LIVE of a recording limited to a command, against a whole-system recording of the same
run: the frees of the command's objects come from every context (RCU callbacks, I/O
completion, other tasks), and a settle window after the command exits sees the deferred
ones.

Each workload runs once, recorded two ways at the same time: an outer ``record -a``
whose COMMAND is an inner ``record -- WORKLOAD``.  The outer recording is the oracle:
it sees every free in the system, for longer (it settles after the inner one ended).
Its live objects are computed here from ``ftslab.read`` events with a dictionary, not
with the report's pairing code; the inner recording's LIVE is what ``report --live``
says.  Cache names are the kernel's (a merged cache is named as its tracepoint names
it, read from /sys/kernel/slab and /proc/slabinfo), never constants of one build."""
from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import ftslab
from conftest import run_ftslab

THREADS = r"""
import sys, threading
go = threading.Event()
ts = [threading.Thread(target=go.wait) for _ in range(int(sys.argv[1]))]
for t in ts:
    t.start()
go.set()
for t in ts:
    t.join()
"""

CHILDREN = r"""
import subprocess, sys
for _ in range(int(sys.argv[1])):
    subprocess.run(["/bin/true"], check=True)
"""


def slabinfo_name(cache: str) -> str:
    """The name the kmem tracepoints give ``cache``: SLUB merges caches of one size and
    flags, and the merged cache keeps the name of the first (the one /proc/slabinfo
    lists); /sys/kernel/slab links every name to it."""
    slab = Path("/sys/kernel/slab")
    target = os.path.realpath(slab / cache)
    listed = {ln.split()[0] for ln in Path("/proc/slabinfo").read_text().splitlines()[2:]}
    if cache in listed:
        return cache
    same = sorted(n for n in os.listdir(slab)
                  if n in listed and os.path.realpath(slab / n) == target)
    assert same, f"{cache}: no /proc/slabinfo name shares its cache ({target})"
    return same[0]


def record_both(tmp_path, *workload, inner=()) -> tuple[Path, Path]:
    """One run of ``workload``: (its own recording, a whole-system recording of it)."""
    inner_out, outer_out = tmp_path / "cmd.dat", tmp_path / "all.dat"
    cp = run_ftslab("record", "-a", "-o", outer_out, "--", sys.executable, "-m", "ftslab",
                    "record", "-o", inner_out, *inner, "--", *workload, check=True,
                    timeout=300)
    assert cp.stderr.count("lost 0;") == 2, cp.stderr
    return inner_out, outer_out


def command_live(path: Path) -> tuple[dict[str, int], dict[str, int], set[int], int, int]:
    """The command's own recording: (LIVE per cache as report --live says, allocations
    per cache, the command's pids, first and last allocation timestamps)."""
    rep = json.loads(run_ftslab("report", path, "--live", "--by", "cache", "--top", "100000",
                                "--format", "json", check=True).stdout)
    # a merged cache's row is named by all its names, the events' own first
    live = {str(r["cache"]).split("|")[0]: int(r["live"]) for r in rep["rows"]}
    allocs: Counter = Counter()
    pids: set[int] = set()
    t0 = t1 = None
    for ev in ftslab.read(path):
        if ev.name == "kmem_cache_alloc":
            allocs[ev.fields["name"]] += 1
        if ev.name in ("kmalloc", "kmem_cache_alloc", "mm_page_alloc"):
            pids.add(ev.pid)
            t0 = ev.ts if t0 is None else t0
            t1 = ev.ts
    assert pids and t0 is not None
    return live, dict(allocs), pids, t0, t1


def oracle_live(path: Path, pids: set[int], t0: int, t1: int) -> Counter:
    """Objects of named caches that ``pids`` allocated between t0 and t1 and nothing
    freed by the end of the whole-system recording."""
    live: dict[int, str] = {}
    for ev in ftslab.read(path):
        f = ev.fields
        if ev.name == "kmem_cache_alloc" and ev.pid in pids and t0 <= ev.ts <= t1:
            live[f["ptr"]] = f["name"]
        elif ev.name in ("kfree", "kmem_cache_free"):
            live.pop(f["ptr"], None)
    return Counter(live.values())


def check_agrees(tmp_path, caches, *workload, expect_allocs: dict[str, int]):
    cmd, whole = record_both(tmp_path, *workload)
    live, allocs, pids, t0, t1 = command_live(cmd)
    truth = oracle_live(whole, pids, t0, t1)
    for cache, n in expect_allocs.items():
        assert allocs.get(cache, 0) >= n, (cache, allocs.get(cache), n)
    got = {c: live.get(c, 0) for c in caches}
    want = {c: truth.get(c, 0) for c in caches}
    assert got == want, f"command's LIVE {got} != whole system's {want}"
    return cmd, got


def test_threads_joined_leave_no_task_struct_or_pid(kernel, tmp_path):
    """The course project's workload: 1000 threads created and joined.  Their
    task_structs and pids are freed in RCU callbacks, while some other task runs."""
    n = 1000
    cmd, got = check_agrees(tmp_path, ["task_struct", "pid"], sys.executable, "-c", THREADS,
                            str(n), expect_allocs={"task_struct": n, "pid": n})
    assert got == {"task_struct": 0, "pid": 0}, got


def test_fifty_children_leave_nothing_held(kernel, tmp_path):
    """A parent running /bin/true 50 times: every child's task_struct, signal struct and
    pid is freed once it is reaped (after an RCU grace period)."""
    n = 50
    signal = slabinfo_name("signal_cache")
    cmd, got = check_agrees(tmp_path, ["task_struct", signal, "pid"], sys.executable, "-c",
                            CHILDREN, str(n), expect_allocs={"task_struct": n, "pid": n,
                                                              signal: n})
    assert got == {"task_struct": 0, signal: 0, "pid": 0}, got


def test_directory_walk_bios_are_seen_freed(kernel, tmp_path):
    """find(1) over a tree not in the page cache: its reads allocate bios, freed at I/O
    completion (an interrupt, whichever task runs then)."""
    Path("/proc/sys/vm/drop_caches").write_text("3")
    cmd, whole = record_both(tmp_path, "find", "/usr/lib", "-name", "*.py")
    live, allocs, pids, t0, t1 = command_live(cmd)
    bios = sorted(c for c in allocs if c.startswith("bio-"))
    assert bios and sum(allocs[c] for c in bios) >= 100, allocs
    truth = oracle_live(whole, pids, t0, t1)
    got = {c: live.get(c, 0) for c in bios}
    assert got == {c: truth.get(c, 0) for c in bios}
    assert got == {c: 0 for c in bios}, got
