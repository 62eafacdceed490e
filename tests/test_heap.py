"""heap.py: the report process's memory policy (glibc keeps what is freed; the
analysis's memory faulted in ahead).  Process-wide settings: each case runs in a
fresh interpreter."""
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

_CASE = r"""
import json, sys
import numpy as np
from ftslab import heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

keep, size = sys.argv[1] == "keep", 256 << 20
kept = heap.keep_freed_memory() if keep else False
before = rss()
done = heap.prefault(size)
after_prefault = rss()
a = np.ones(200 << 20, np.uint8)   # written: every page of it faulted now
after_array = rss()
print(json.dumps({"kept": kept, "done": done, "prefault": after_prefault - before,
                  "array": after_array - after_prefault}))
"""


def _run(mode: str) -> dict:
    r = subprocess.run([sys.executable, "-c", _CASE, mode], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_prefaulted_memory_is_what_the_next_arrays_get():
    got = _run("keep")
    assert got["kept"] and got["done"]
    # the 256 MiB were faulted in and kept by glibc after the free ...
    assert got["prefault"] > 200 << 20
    # ... so the 200 MiB array written next lands on them: no new memory
    assert got["array"] < 16 << 20


def test_prefault_does_nothing_unless_freed_memory_is_kept():
    got = _run("plain")
    assert not got["done"] and got["prefault"] < 16 << 20
    assert got["array"] > 190 << 20   # the array's pages are new ones
