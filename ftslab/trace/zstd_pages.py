"""Compressed page chunks of a trace.dat: decompressed on demand, in parallel where there
are many, into memory that is faulted in ahead.

It works only on the trace.dat buffer it is handed.  A chunk must decompress to exactly
the size the file announces: one that does not is ``BadInput``, never a short page.
"""
from __future__ import annotations

import bisect
import itertools
import struct
from typing import Callable

import zstandard

from ftslab.errors import BadInput
from ftslab.trace.tracedat_layout import ZSTD_PIECE


PARALLEL_MIN_CHUNKS = 256


def zstd_chunk(d, data, usize: int) -> bytes:
    """One zstd frame that must decompress to exactly ``usize`` (<= ZSTD_PIECE) bytes;
    ValueError saying what is wrong otherwise."""
    try:
        out = d.decompress(data, max_output_size=usize)
    except zstandard.ZstdError as exc:
        raise ValueError(f"cannot decompress ({exc})") from None
    if len(out) != usize:
        raise ValueError(f"decompresses to {len(out)} bytes, header says {usize}")
    return out


class CompressedPages:
    """One CPU's ring-buffer pages as the zstd chunks of the file (read_tracedat(...,
    lazy=True)): decompressed a range at a time, so a 10 M-event recording never holds
    its 700 MB of pages at once (on a VM, touching fresh memory costs 1-3 s per GB).

    ``len()`` is the size of the pages uncompressed; ``read(start, end)`` returns those
    bytes, decompressing only the chunks that hold them; ``whole()`` all of them."""

    def __init__(self, src: bytes, endian: str, heads: list[tuple[int, int, int]],
                 where: Callable[[int, int], str]):
        self._src = src            # the chunks, headers included (a copy: the file's
        self._e = endian           # mapping is closed when read_tracedat returns)
        self._heads = heads        # (offset in src of the data, compressed, uncompressed)
        self._where = where        # (chunk number, offset) -> text for errors
        self._ends = list(itertools.accumulate(u for _p, _c, u in heads))

    @classmethod
    def of(cls, reader, cpu: int, first: int, count: int, end: int
           ) -> "CompressedPages | None":
        """The ``count`` chunks from ``first`` (their headers checked to lie before
        ``end``), or None if one is too large to be decompressed in one piece."""
        heads, pos = [], first
        for _ in range(count):
            csize, usize = struct.unpack_from(reader.e + "II", reader.buf, pos)
            if usize > ZSTD_PIECE:
                return None
            heads.append((pos + 8 - first, csize, usize))
            pos += 8 + csize
        path = reader.path
        return cls(bytes(reader.buf[first:end]), reader.e, heads,
                   lambda i, at: f"{path}: malformed trace.dat: CPU {cpu} chunk {i} at "
                                 f"offset {first + at - 8}")

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def read(self, start: int, end: int) -> memoryview:
        """Bytes ``start`` to ``end`` of the pages (a fresh buffer: it may outlive the
        next read).  Raises BadInput if a chunk does not decompress to its size."""
        end = min(end, len(self))
        if start >= end:
            return memoryview(b"")
        i = bisect.bisect_right(self._ends, start)
        lo = self._ends[i - 1] if i else 0
        j = bisect.bisect_left(self._ends, end, i)
        out = unzeroed(self._ends[j] - lo)
        view = memoryview(out)
        d = zstandard.ZstdDecompressor()
        at = 0
        for k in range(i, j + 1):
            pos, csize, usize = self._heads[k]
            if not usize:
                continue
            try:
                chunk = zstd_chunk(d, self._src[pos:pos + csize], usize)
            except ValueError as exc:
                raise BadInput(f"{self._where(k, pos)}: {exc}") from None
            view[at:at + usize] = chunk
            at += usize
        return view[start - lo:end - lo]

    def whole(self) -> bytearray | memoryview:
        """All of the pages (two threads, as read_tracedat does)."""
        out = unzeroed(len(self))
        if len(self._heads) >= PARALLEL_MIN_CHUNKS and \
                zstd_parallel(self._src, self._e, 0, len(self._heads), out):
            return out
        del out
        return self.read(0, len(self))


def unzeroed(n: int) -> bytearray:
    """bytearray(n) without zeroing it first: its bytes are decompressed into, and only
    those written are used.  Zeroing 700 MB of fresh memory in one thread, before the
    two decompression threads write it again, was a third of reading a 10 M-event
    recording (CPython's PyByteArray_FromStringAndSize(NULL, n) leaves it as malloc
    gave it; elsewhere, a plain bytearray)."""
    try:
        import ctypes
        make = ctypes.pythonapi.PyByteArray_FromStringAndSize
    except (ImportError, AttributeError, OSError):
        return bytearray(n)
    make.restype = ctypes.py_object
    make.argtypes = [ctypes.c_char_p, ctypes.c_ssize_t]
    return make(None, n)


def _populate_fn(buf: bytearray) -> Callable[[int, int], None]:
    """populate(start, end): fault in buf[start:end] at once, without the GIL
    (prefault.populate), else by zeroing it with numpy (which lets the GIL go too).
    Faulting it in chunk by chunk, under the GIL of a slice assignment, serialises the
    two decompression threads."""
    import numpy as np
    from ftslab.trace.prefault import populate as _populate

    def zero(start: int, end: int) -> None:
        np.frombuffer(buf, np.uint8, end - start, start)[:] = 0
    try:
        import ctypes
        base = ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))
    except (ImportError, AttributeError, OSError, TypeError, ValueError):
        return zero

    def populate(start: int, end: int) -> None:
        if not _populate(base + start, end - start):
            zero(start, end)
    return populate


def zstd_parallel(buf, endian: str, first: int, count: int, out: bytearray) -> bool:
    """Decompress ``count`` chunks starting at ``first`` into ``out`` with two threads.
    Returns False (and the caller decompresses them one by one, with its checks) when
    any chunk does not decompress to exactly its announced size."""
    import concurrent.futures
    jobs = []
    pos, dest = first, 0
    for _ in range(count):
        csize, usize = struct.unpack_from(endian + "II", buf, pos)
        jobs.append((pos + 8, csize, usize, dest))
        pos += 8 + csize
        dest += usize
    if dest != len(out):
        return False
    view = memoryview(out)
    populate = _populate_fn(out)

    def run(part) -> bool:
        d = zstandard.ZstdDecompressor()
        if part:
            populate(part[0][3], part[-1][3] + part[-1][2])
        try:
            for src, csize, usize, at in part:
                if usize == 0:
                    continue
                chunk = d.decompress(buf[src:src + csize], max_output_size=usize)
                if len(chunk) != usize:
                    return False
                view[at:at + usize] = chunk
        except zstandard.ZstdError:
            return False
        return True

    half = len(jobs) // 2
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        return all(ex.map(run, [jobs[:half], jobs[half:]]))
