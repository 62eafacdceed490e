"""Merged slab caches on the running kernel: a command allocates N objects from a cache SLUB
merged with others, and the report names that cache by all its names and counts N.

Which cache is merged, and into which name, is read from this kernel's /sys/kernel/slab
(here, independently of ftslab's reader): the first of a few workloads whose cache is
merged is used; on a kernel that merged none of them (slab_nomerge) the expectation is the
cache's own name, as the tree says.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import run_ftslab
from test_top_kernel import TopRun

N = 437
SLAB = Path("/sys/kernel/slab")

_SOCKETS = ("import os, socket\nss = [socket.socket(socket.{family}, socket.{kind}) "
            f"for _ in range({N})]\n")
#: cache -> a program that allocates exactly N objects of it (sk_alloc -> sk_prot_alloc:
#: one object of the protocol's cache per socket; net/unix/af_unix.c, net/ipv4/udp.c)
WORKLOADS = {
    "UNIX": _SOCKETS.format(family="AF_UNIX", kind="SOCK_DGRAM"),
    "UNIX-STREAM": _SOCKETS.format(family="AF_UNIX", kind="SOCK_STREAM"),
    "UDP": _SOCKETS.format(family="AF_INET", kind="SOCK_DGRAM"),
}


def _merged_names(cache: str) -> list[str]:
    """All the names of CACHE's cache, from the links of /sys/kernel/slab, checked
    against the kernel's own count (the ``aliases`` file of the merged directory)."""
    if not (SLAB / cache).is_symlink():
        return [cache]
    target = (SLAB / cache).resolve()
    names = sorted(n for n in os.listdir(SLAB)
                   if (SLAB / n).is_symlink() and (SLAB / n).resolve() == target)
    assert len(names) == int((target / "aliases").read_text()) + 1, (cache, names)
    return names


def _expected_label(cache: str) -> tuple[str, list[str]]:
    """(the name the report must give CACHE's objects, all its names): the name
    /proc/slabinfo lists (the one the events carry) first, then the others sorted."""
    names = _merged_names(cache)
    listed = {ln.split()[0] for ln in Path("/proc/slabinfo").read_text().splitlines()[2:]}
    shown = [n for n in names if n in listed]
    assert len(shown) == 1, (cache, names, shown)
    return "|".join(shown + [n for n in names if n != shown[0]]), names


def _pick() -> str:
    for cache in WORKLOADS:
        if (SLAB / cache).exists() and len(_merged_names(cache)) > 1:
            return cache
    return "UNIX"  # nothing merged (slab_nomerge?): its own name is then right


def _rows(path, *args) -> dict[str, dict]:
    cp = run_ftslab("report", path, "--format", "json", "--by", "cache", "--top", "100000",
                    *args, check=True)
    return {r["cache"]: r for r in json.loads(cp.stdout)["rows"]}


def test_a_merged_cache_is_named_by_all_its_names_and_counted_exactly(kernel, tmp_path):
    cache = _pick()
    label, names = _expected_label(cache)
    prog = [sys.executable, "-c", WORKLOADS[cache]]
    out = tmp_path / "merged.dat"
    cp = run_ftslab("record", "-o", out, "--", *prog, check=True)
    assert "lost 0" in cp.stderr, cp.stderr
    rows = _rows(out)
    assert label in rows, (label, sorted(rows))
    assert rows[label]["count"] == N, rows[label]
    if len(names) > 1:  # no row names the merged cache by one of its names alone
        assert not set(names) & set(rows), sorted(rows)
    text = run_ftslab("report", out, check=True).stdout
    assert label in text
    slabinfo = json.loads(run_ftslab("report", out, "--format", "json",
                                     check=True).stdout)["tables"]["slabinfo_diff"]["rows"]
    assert not set(names) & {r["cache"] for r in slabinfo} or len(names) == 1
    # --cache NAME records the merged cache whichever of its names is given
    for name in sorted({cache, label.split("|")[0]}):
        out = tmp_path / f"only-{name}.dat"
        run_ftslab("record", "-o", out, "--cache", name, "--", *prog, check=True)
        assert {k: r["count"] for k, r in _rows(out).items()} == {label: N}, name


COMM = f"ftslabmrg{os.getpid() % 100000}"
_ROW = re.compile(r"(.+?) +[\d,]+ +\S+ \S+ +([\d,]+) +\S+ \S+")


def _top_rows(frame: str) -> dict[str, int]:
    """cache label -> LIVE of one `top --batch` frame."""
    out = {}
    for line in frame.splitlines()[2:]:
        m = _ROW.fullmatch(line)
        assert m, line
        out[m.group(1)] = int(m.group(2).replace(",", ""))
    return out


def test_top_names_a_merged_cache_by_all_its_names(kernel):
    """top limited to a holder's comm (renamed first, so that its fork is not in it):
    the N objects it makes and holds are the live ones of the merged cache's row."""
    cache = _pick()
    label, names = _expected_label(cache)
    holder_prog = ("import ctypes, time\n"
                   f"ctypes.CDLL(None).prctl(15, b'{COMM}', 0, 0, 0)\n"
                   + WORKLOADS[cache] + "print('ready', flush=True)\ntime.sleep(600)\n")
    top = TopRun("--by", "cache", "-n", "0.5", "--comm", COMM, "--top", "100")
    holder = None
    try:
        holder = subprocess.Popen([sys.executable, "-c", holder_prog], stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout.readline().strip() == "ready"
        top.until(lambda text: _top_rows(text.split("\n\n")[-2] if "\n\n" in text
                                         else "").get(label) == N, f"{N} {label}")
        text = top.text
        top.finish()
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
        top.close()
    rows = _top_rows(text.split("\n\n")[-2])
    assert rows[label] == N, rows
    if len(names) > 1:
        assert not set(names) & set(rows), rows
