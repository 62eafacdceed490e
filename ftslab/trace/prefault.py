"""How a report process gets its memory: glibc told to keep what is freed, and memory
faulted in ahead, many pages per call, before the analysis writes it.

On a VM, the first write to a page is the dearest thing a report does: the guest faults
it, and the host, which took freed guest memory back (free page reporting), faults it
again.  numpy faults its arrays one page at a time as its loops first write them, on one
CPU.  ``madvise(MADV_POPULATE_WRITE)`` (commit 4ca9b3859dac ("mm/madvise: introduce
MADV_POPULATE_(READ|WRITE) to prefault page tables") (in v5.14)) faults a whole range in
one call and lets go of the GIL, so two threads can do it at once.

Process-wide settings: only the CLI calls these (never on import).
"""
from __future__ import annotations

import functools
import mmap
import threading


__all__ = ["keep_freed_memory", "populate", "prefault"]


_MADV_POPULATE_WRITE = 23


_TRIM_THRESHOLD = 1 << 30


_kept = False


@functools.lru_cache(maxsize=None)
def _libc():
    import ctypes
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mallopt, libc.madvise, libc.malloc, libc.free  # noqa: B018 (all present?)
    except (OSError, AttributeError):
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def keep_freed_memory() -> bool:
    """Have glibc keep freed memory for reuse instead of giving it back at once.

    A report builds and drops many arrays of one entry per event.  glibc serves each
    large one with a fresh mmap() and unmaps it on free, so the kernel zeroes new pages
    for every one of them: a third of a 10 M-event report's CPU time went to
    clear_page (perf, Linux 6.18 VM).  From the heap, without trimming, freed arrays
    are reused as they are: 8-10 % less wall time, 15-35 % less system time over
    alternating runs (bench/bench_report.py).  The process exits after the report, so
    keeping its peak is harmless.  Returns False (nothing done) without glibc."""
    global _kept
    libc = _libc()
    if libc is None:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    # the report's worker threads (decompression, pairing) would each get an arena of
    # fresh memory: one arena reuses what the main thread freed
    libc.mallopt(M_ARENA_MAX, 1)
    _kept = True
    return True


def populate(address: int, size: int) -> bool:
    """Fault in the whole pages of ``size`` bytes at ``address`` (writable, zeroed if
    fresh) with one madvise call; False if that cannot be done (before v5.14, see the
    module's docstring; without glibc)."""
    libc = _libc()
    page = mmap.PAGESIZE
    lo = (address + page - 1) // page * page
    hi = (address + size) // page * page
    if hi <= lo:
        return True
    return libc is not None and libc.madvise(lo, hi - lo, _MADV_POPULATE_WRITE) == 0


def prefault(size: int) -> bool:
    """Fault ``size`` bytes of heap in, in two threads, and free them: glibc (told by
    keep_freed_memory to keep what is freed) then serves the next large arrays from
    pages that are already there.  Measured before a 11 M-event report's analysis
    (~500 MB of arrays): the analysis went from 2.4-2.7 s to 1.3-1.5 s, the prefault
    itself took 0.16-0.2 s (alternating runs, Linux 6.18 VM).  Capped at half of
    MemAvailable.  Does nothing (False) unless keep_freed_memory() is in effect, or
    where madvise cannot populate."""
    if not _kept or size <= 0:
        return False
    # below the trim threshold: a larger free would go back to the kernel at once
    size = min(size, _available() // 2, _TRIM_THRESHOLD * 3 // 4)
    libc = _libc()
    if libc is None or size < 1 << 20:
        return False
    address = libc.malloc(size)
    if not address:
        return False
    try:
        half = size // 2
        ok = [False, False]

        def run(i: int, at: int, n: int) -> None:
            ok[i] = populate(at, n)
        other = threading.Thread(target=run, args=(1, address + half, size - half),
                                 name="ftslab-prefault")
        other.start()
        run(0, address, half)
        other.join()
        return all(ok)
    finally:
        libc.free(address)


def _available() -> int:
    """MemAvailable in bytes (0 if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
