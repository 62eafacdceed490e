"""heap.py: the report process's memory policy (glibc keeps what is freed; the
analysis's memory faulted in ahead).  Process-wide settings: each case runs in a
fresh interpreter.

The sizes are the machine's: prefault() takes at most half of MemAvailable, and other
work on the machine moves that figure, so a case asks for a quarter of it (at most
256 MiB) and every check is in proportion to what was asked."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

_CASE = r"""
import json, sys
import numpy as np
from ftslab.trace import prefault as heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

keep = sys.argv[1] == "keep"
size = min(256 << 20, heap._available() // 4) >> 20 << 20
kept = heap.keep_freed_memory() if keep else False
before = rss()
done = heap.prefault(size)
after_prefault = rss()
a = np.ones(size * 3 // 4, np.uint8)   # written: every page of it faulted now
after_array = rss()
print(json.dumps({"size": size, "kept": kept, "done": done,
                  "prefault": after_prefault - before, "array": after_array - after_prefault}))
"""


def _run(mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _CASE, mode], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["size"] >= 16 << 20, f"too little memory available for the case: {got}"
    return got


def test_prefaulted_memory_is_what_the_next_arrays_get():
    got = _run("keep")
    size = got["size"]
    assert got["kept"] and got["done"]
    # the memory was faulted in and kept by glibc after the free ...
    assert got["prefault"] >= size * 7 // 8, got
    # ... so the array written next (3/4 of it) lands on it: next to no new memory
    assert got["array"] < size // 16, got


def test_prefault_does_nothing_unless_freed_memory_is_kept():
    got = _run("plain")
    size = got["size"]
    assert not got["done"] and got["prefault"] < size // 16, got
    assert got["array"] >= size * 3 // 4 * 7 // 8, got   # the array's pages are new ones
