"""Read and write trace-cmd ``trace.dat`` files (format versions 6 and 7).

The layout follows trace-cmd's own documentation, trace-cmd.dat.v6(5) and
trace-cmd.dat.v7(5); where the documentation is silent, the behaviour of trace-cmd 3.1.6
(lib/trace-cmd/trace-output.c, trace-input.c) was checked, and every such detail is
commented where it is used.

The reader accepts any bytes: whatever is malformed raises ``ftslab.errors.BadInput`` and
nothing else; a file that was cut short (SIGKILL while writing, ``head -c``) returns what
can be read, whole ring-buffer pages only, with ``truncated=True``.  Sizes read from the
file never decide an allocation on their own: every read is bounded by the file size, and
decompression by a budget proportional to it.

The writer produces a v7 file (zstd, zlib or uncompressed) that trace-cmd reads silently.
ftslab's own metadata lives in a section of its own between the file header and the first
section trace-cmd knows about; trace-cmd walks past it by its size (see ``_SEC_FTSLAB``).

This module does file I/O only on the paths it is given: it never touches tracefs, and it
neither decodes events nor interprets format files (ringbuf.py and formats.py do).
"""
from __future__ import annotations

import bisect
import io
import itertools
import json
import mmap
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Mapping

import zstandard

from . import __version__
from .errors import BadInput, OutputError

__all__ = ["TraceDat", "read_tracedat", "write_tracedat", "FTSLAB_SECTION_ID",
           "PAGES_PER_CHUNK"]

_MAGIC = b"\x17\x08\x44tracing"

# Option / section ids, trace-cmd.dat.v7(5) "OPTIONS SECTION".
_OPT_DONE = 0
_OPT_DATE = 1
_OPT_CPUSTAT = 2
_OPT_BUFFER = 3
_OPT_TRACECLOCK = 4
_OPT_UNAME = 5
_OPT_CPUCOUNT = 8
_OPT_VERSION = 9
_OPT_STRINGS = 15
_OPT_HEADER_INFO = 16
_OPT_FTRACE_EVENTS = 17
_OPT_EVENT_FORMATS = 18
_OPT_KALLSYMS = 19
_OPT_PRINTK = 20
_OPT_CMDLINES = 21
_OPT_BUFFER_TEXT = 22
_KNOWN_SECTION_IDS = frozenset(range(0, 26))

#: Section id of ftslab's metadata ("FT").  trace-cmd never reads it: it finds its own
#: sections through the option offsets, and its one sequential walk over the sections
#: (read_metadata_strings() in trace-input.c, looking for STRINGS) skips any other id by
#: the size in the section header.  An *option* with an unknown id would instead make
#: ``trace-cmd report`` print "unknown option N".
FTSLAB_SECTION_ID = 0x4654
_SEC_FTSLAB = FTSLAB_SECTION_ID
_FTSLAB_FORMAT = "ftslab-tracedat"

_SEC_FL_COMPRESS = 1

#: Ring-buffer pages per compressed chunk: trace-cmd's PAGES_IN_CHUNK (trace-output.c).
#: Its reader decompresses a whole chunk to return one page, so bigger chunks would make
#: ``trace-cmd report`` slower for a few percent of file size.
PAGES_PER_CHUNK = 10

# Decompression never produces more than this many bytes per byte of input file (plus a
# fixed allowance): a lying size field or a compression bomb cannot exhaust memory.
_DECOMPRESS_BUDGET_FIXED = 256 << 20
_DECOMPRESS_BUDGET_PER_BYTE = 1024
_ZSTD_PIECE = 1 << 20


@dataclass
class TraceDat:
    """The contents of one trace.dat file: metadata texts and the raw ring-buffer pages of
    one buffer.  Texts are decoded as UTF-8 with ``surrogateescape``, so that any byte
    survives a read/write round trip unchanged."""

    version: int
    """File format version: 6 or 7."""
    little_endian: bool
    """Byte order of every number in the file and in the ring-buffer pages."""
    long_size: int
    """Bytes in a C ``long`` of the recording user space (8 on x86_64)."""
    page_size: int
    """Host page size in bytes (file header); CPU data is aligned to it in the file."""
    compression: str | None
    """"zstd", "zlib" or None (v6, or v7 written with "none")."""
    header_page: str
    """Text of events/header_page (layout of a ring-buffer page header)."""
    header_event: str
    """Text of events/header_event (layout of an event header)."""
    ftrace_formats: list[str]
    """Format texts of events/ftrace/*/format, in file order."""
    event_formats: dict[str, list[str]]
    """Event system name -> format texts of its events, in file order."""
    kallsyms: str
    """Text of /proc/kallsyms as saved in the file."""
    printk_formats: str
    """Text of printk_formats."""
    cmdlines: str
    """Text of saved_cmdlines ("pid comm" lines)."""
    cpus: int
    """Number of CPUs of the traced system (CPUCOUNT option; v6: file header)."""
    cpu_data: dict[int, bytes]
    """CPU id -> that CPU's raw ring-buffer pages, uncompressed and concatenated, each
    ``buffer_page_size`` bytes (read_tracedat(lazy=True): a CompressedPages where they
    are zstd chunks).  CPUs without data are absent."""
    buffer_page_size: int
    """Ring-buffer page (sub-buffer) size in bytes: the BUFFER option's page size (v7),
    the file's page size (v6)."""
    buffer_name: str = ""
    """Instance name of the returned buffer; "" is the top-level buffer."""
    buffers: list = field(default_factory=list)
    """Names of every flyrecord buffer in the file (v7), the returned one included."""
    trace_clock: str = ""
    """TRACECLOCK option text (the trace_clock file, e.g. "[local] global ...\\n"), or the
    clock name when the file has no such option."""
    uname: str = ""
    """UNAME option text, e.g. "Linux host 6.18.0 x86_64"."""
    date: str = ""
    """DATE option text: offset of timestamps to time of day, in microseconds ("0x...")."""
    cpustats: dict[int, str] = field(default_factory=dict)
    """CPU id -> text of per_cpu/cpuN/stats at the end of the recording (the CPUSTAT
    option without trace-cmd's "CPU: N" first line)."""
    tracecmd_version: str = ""
    """VERSION option text: the program that wrote the file ("3.1.6 ...", "ftslab 0.1.0")."""
    ftslab: dict | None = None
    """ftslab's own metadata (a JSON object), None if the file has none."""
    truncated: bool = False
    """The file ended early: some data is missing, ``truncated_detail`` says what."""
    truncated_detail: str = ""
    """Sentences saying where the file ended and what was lost; "" when complete."""


# ----------------------------------------------------------------------------- reading


class _Eof(Exception):
    """Internal: a read ran past the end of the bytes it was given."""


class _Bad(Exception):
    """Internal: bytes that do not follow the format; the reader adds the path."""


class _Cur:
    """A bounded cursor over bytes-like data (bytes or an mmap) of a given byte order."""

    __slots__ = ("buf", "pos", "end", "e")

    def __init__(self, buf, pos: int, end: int, e: str):
        self.buf = buf
        self.pos = pos
        self.end = end
        self.e = e

    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or n > self.end - self.pos:
            raise _Eof()
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _num(self, fmt: str, n: int) -> int:
        if n > self.end - self.pos:
            raise _Eof()
        v = struct.unpack_from(self.e + fmt, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u16(self) -> int:
        return self._num("H", 2)

    def u32(self) -> int:
        return self._num("I", 4)

    def u64(self) -> int:
        return self._num("Q", 8)

    def cstr(self) -> bytes:
        i = self.buf.find(b"\0", self.pos, self.end)
        if i < 0:
            raise _Eof()
        s = self.buf[self.pos:i]
        self.pos = i + 1
        return s


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _opt_text(b: bytes) -> str:
    """An option's NUL-terminated string; everything from the first NUL on is padding."""
    i = b.find(b"\0")
    return _text(b if i < 0 else b[:i])


def _parse_header_info(c: _Cur) -> tuple[str, str]:
    if c.take(12) != b"header_page\0":
        raise _Bad("header info does not start with 'header_page'")
    page = _text(c.take(c.u64()))
    if c.take(13) != b"header_event\0":
        raise _Bad("header info has no 'header_event' after 'header_page'")
    event = _text(c.take(c.u64()))
    return page, event


def _parse_ftrace(c: _Cur) -> list[str]:
    # Each entry takes at least 8 bytes, so a lying count ends at the data's end.
    return [_text(c.take(c.u64())) for _ in range(c.u32())]


def _parse_events(c: _Cur) -> dict[str, list[str]]:
    systems: dict[str, list[str]] = {}
    for _ in range(c.u32()):
        name = _text(c.cstr())
        texts = [_text(c.take(c.u64())) for _ in range(c.u32())]
        systems.setdefault(name, []).extend(texts)
    return systems


def _parse_sized4(c: _Cur) -> str:
    return _text(c.take(c.u32()))


def _parse_sized8(c: _Cur) -> str:
    return _text(c.take(c.u64()))


_SECTION_NAMES = {
    _OPT_HEADER_INFO: "header info", _OPT_FTRACE_EVENTS: "ftrace event formats",
    _OPT_EVENT_FORMATS: "event formats", _OPT_KALLSYMS: "kallsyms",
    _OPT_PRINTK: "printk formats", _OPT_CMDLINES: "saved command lines",
}
_SECTION_PARSERS: dict[int, Callable[[_Cur], object]] = {
    _OPT_HEADER_INFO: _parse_header_info, _OPT_FTRACE_EVENTS: _parse_ftrace,
    _OPT_EVENT_FORMATS: _parse_events, _OPT_KALLSYMS: _parse_sized4,
    _OPT_PRINTK: _parse_sized4, _OPT_CMDLINES: _parse_sized8,
}


@dataclass
class _Section:
    id: int
    flags: int
    desc: int
    offset: int       # of the section header
    data: int         # first byte after the header
    size: int         # as declared
    complete: bool    # the whole declared size is inside the file


@dataclass
class _BufferIndex:
    name: str
    offset: int                         # of the BUFFER section header
    clock: str
    page_size: int
    cpus: list[tuple[int, int, int]]    # (cpu, file offset, size in file)
    latency: bool = False


class _Reader:
    want_buffer: str | None = None
    lazy = False

    def __init__(self, path: str, buf):
        self.path = path
        self.buf = buf
        self.n = len(buf)
        self.e = "<"
        self.lost: list[str] = []
        self.budget = _DECOMPRESS_BUDGET_FIXED + _DECOMPRESS_BUDGET_PER_BYTE * self.n
        self.comp: str | None = None
        self._zstd = None
        self.stat_buffer = ""       # the buffer that the CPUSTAT options now describe
        self.cpustats: dict[str, dict[int, str]] = {}

    # -- helpers
    def bad(self, what: str) -> BadInput:
        return BadInput(f"{self.path}: malformed trace.dat: {what}")

    def cut(self, what: str) -> None:
        if what not in self.lost:
            self.lost.append(what)

    def decompress(self, data: bytes, usize: int, where: str) -> bytes:
        """One compressed block (a section, or a chunk of ring-buffer pages)."""
        if usize > self.budget:
            raise self.bad(f"{where}: {usize} uncompressed bytes is more than this file "
                           f"can hold")
        if usize == 0:
            return b""
        try:
            if self.comp == "zstd":
                if self._zstd is None:
                    self._zstd = zstandard.ZstdDecompressor()
                if usize <= _ZSTD_PIECE:
                    # One call for the common case (trace-cmd chunks are 10 pages).
                    try:
                        out = _zstd_chunk(self._zstd, data, usize)
                    except ValueError as exc:
                        raise self.bad(f"{where}: {exc}") from None
                    self.budget -= usize
                    return out
                # Read in pieces: the reader allocates what is asked for, and usize is
                # only a claim until the data proves it.
                reader = self._zstd.stream_reader(io.BytesIO(data), read_across_frames=False)
                parts, got = [], 0
                while got <= usize:
                    piece = reader.read(min(_ZSTD_PIECE, usize + 1 - got))
                    if not piece:
                        break
                    parts.append(piece)
                    got += len(piece)
                out = b"".join(parts)
            else:  # zlib, as trace-cmd's compress2()/uncompress()
                d = zlib.decompressobj()
                out = d.decompress(data, usize + 1)
        except (zstandard.ZstdError, zlib.error) as exc:
            raise self.bad(f"{where}: cannot decompress ({exc})") from None
        if len(out) != usize:
            raise self.bad(f"{where}: decompresses to {len(out)} bytes, header says {usize}")
        self.budget -= usize
        return out

    # -- file header
    def read(self) -> TraceDat:
        buf = self.buf
        if self.n < 10 or buf[:10] != _MAGIC:
            raise BadInput(f"{self.path} is not a trace-cmd trace.dat file")
        c = _Cur(buf, 10, self.n, "<")
        try:
            ver_b = c.cstr()
            if not ver_b.isdigit() or len(ver_b) > 3:
                raise self.bad(f"file version {ver_b[:20]!r} is not a number")
            version = int(ver_b)
            if version not in (6, 7):
                raise BadInput(f"{self.path}: trace.dat version {version} is not supported "
                               f"(only 6 and 7)")
            endian = c.take(1)[0]
            if endian > 1:
                raise self.bad(f"endianness flag {endian} is neither 0 nor 1")
            self.e = c.e = "<" if endian == 0 else ">"
            long_size = c.take(1)[0]
            if long_size not in (4, 8):
                raise self.bad(f"long size {long_size} is neither 4 nor 8")
            page_size = c.u32()
            if page_size < 64 or page_size & (page_size - 1):
                raise self.bad(f"page size {page_size} is not a power of two")
            compression = None
            options_start = 0
            if version >= 7:
                zname = c.cstr()
                c.cstr()  # the compressor's version: any works for its format
                if zname in (b"zstd", b"zlib"):
                    compression = zname.decode()
                elif zname != b"none":
                    raise BadInput(f"{self.path}: compression {zname[:40]!r} is not "
                                   f"supported (zstd, zlib, none)")
                options_start = c.u64()
        except _Eof:
            raise BadInput(f"{self.path}: trace.dat file header is cut short") from None
        self.comp = compression
        td = TraceDat(version=version, little_endian=(self.e == "<"), long_size=long_size,
                      page_size=page_size, compression=compression, header_page="",
                      header_event="", ftrace_formats=[], event_formats={}, kallsyms="",
                      printk_formats="", cmdlines="", cpus=0, cpu_data={},
                      buffer_page_size=page_size)
        if version == 6:
            self.read_v6(c, td)
        else:
            self.read_v7(c.pos, options_start, td)
        td.cpustats = self.cpustats.get(td.buffer_name, {})
        if self.lost:
            td.truncated = True
            td.truncated_detail = "; ".join(self.lost)
        return td

    # -- version 6: one stream of headers, then options and the CPU index
    def read_v6(self, c: _Cur, td: TraceDat) -> None:
        try:
            td.header_page, td.header_event = _parse_header_info(c)
        except _Eof:
            raise BadInput(f"{self.path}: trace.dat is cut short inside its header "
                           f"info") from None
        steps = [("ftrace event formats", _parse_ftrace, "ftrace_formats"),
                 ("event formats", _parse_events, "event_formats"),
                 ("kallsyms", _parse_sized4, "kallsyms"),
                 ("printk formats", _parse_sized4, "printk_formats"),
                 ("saved command lines", _parse_sized8, "cmdlines")]
        try:
            for name, parse, attr in steps:
                where = name
                setattr(td, attr, parse(c))
            where = "the CPU count"
            td.cpus = c.u32()
            where = "the options"
            kind = c.take(10)
            if kind == b"options  \0":
                self.options_v6(c, td)
                kind = c.take(10)
            if kind == b"latency  \0":
                return          # text of the trace file: no ring-buffer pages
            if kind != b"flyrecord\0":
                raise self.bad(f"expected 'flyrecord' at offset {c.pos - 10}, "
                               f"found {kind!r}")
            where = "the CPU data index"
            index = [(cpu, c.u64(), c.u64()) for cpu in range(min(td.cpus, c.left() // 16))]
            if len(index) < td.cpus:
                raise _Eof()
            where = "the trace clock"
            clock = _opt_text(c.take(c.u64())).strip()
            if not td.trace_clock:
                td.trace_clock = clock
        except _Eof:
            self.cut(f"the file ends inside {where} (offset {self.n})")
            return
        for cpu, off, size in index:
            self.raw_cpu(td, cpu, off, size)

    def options_v6(self, c: _Cur, td: TraceDat) -> None:
        while True:
            oid = c.u16()
            if oid == _OPT_DONE:
                return
            self.option(td, oid, c.take(c.u32()), [])

    def option(self, td: TraceDat, oid: int, data: bytes, buffers: list) -> None:
        """One option: fills td, or the list of buffer indexes (v7)."""
        if oid == _OPT_DATE:
            td.date = _opt_text(data)
        elif oid == _OPT_CPUSTAT:
            text = _opt_text(data)
            # trace-cmd record writes the stats of each instance after a CPUSTAT
            # "\nBuffer: NAME\n\n" (trace-record.c), and each CPU's as "CPU: %d\n" + file.
            if text.startswith("\nBuffer: "):
                self.stat_buffer = text[10:].split("\n", 1)[0]
                return
            stats = self.cpustats.setdefault(self.stat_buffer, {})
            cpu = len(stats)
            head, nl, rest = text.partition("\n")
            if nl and head.startswith("CPU: ") and head[5:].isdigit():
                cpu, text = int(head[5:]), rest
            stats[cpu] = text
        elif oid == _OPT_TRACECLOCK:
            td.trace_clock = _opt_text(data)
        elif oid == _OPT_UNAME:
            td.uname = _opt_text(data)
        elif oid == _OPT_VERSION:
            td.tracecmd_version = _opt_text(data)
        elif oid == _OPT_CPUCOUNT and len(data) >= 4:
            td.cpus = struct.unpack_from(self.e + "I", data)[0]
        elif oid in (_OPT_BUFFER, _OPT_BUFFER_TEXT) and td.version >= 7:
            buffers.append(self.buffer_option(oid, data))
        # v6 BUFFER options describe instance buffers, which are not returned; other
        # options (hooks, time sync, guests...) do not concern ftslab.

    def buffer_option(self, oid: int, data: bytes) -> _BufferIndex:
        c = _Cur(data, 0, len(data), self.e)
        try:
            offset = c.u64()
            name = _text(c.cstr())
            clock = _text(c.cstr())
            if oid == _OPT_BUFFER_TEXT:
                return _BufferIndex(name, offset, clock, 0, [], latency=True)
            page_size = c.u32()
            count = c.u32()
            if count > c.left() // 20:
                raise _Eof()
            cpus = [(c.u32(), c.u64(), c.u64()) for _ in range(count)]
        except _Eof:
            raise self.bad("a BUFFER option is shorter than its contents") from None
        return _BufferIndex(name, offset, clock, page_size, cpus)

    def raw_cpu(self, td: TraceDat, cpu: int, off: int, size: int) -> None:
        """Uncompressed pages of one CPU; whole pages only if the file ends inside them."""
        if size == 0:
            return
        if cpu in td.cpu_data:
            raise self.bad(f"CPU {cpu} has more than one block of data")
        end = off + size
        if end > self.n:
            whole = max(0, (self.n - off) // td.buffer_page_size * td.buffer_page_size)
            self.cut(f"CPU {cpu}: {whole} of {size} bytes of ring-buffer pages are in the "
                     f"file")
            end = off + whole
        if end > off:
            td.cpu_data[cpu] = bytes(self.buf[off:end])

    # -- version 7: sections, found through options
    def walk(self, pos: int) -> list[_Section]:
        """All sections in file order, as trace-cmd's read_metadata_strings() walks them."""
        secs: list[_Section] = []
        e = self.e
        while pos < self.n:
            if self.n - pos < 16:
                self.cut(f"the file ends inside a section header at offset {pos}")
                break
            sid, flags, desc, size = struct.unpack_from(e + "HHiQ", self.buf, pos)
            # An unknown id or an options section too small for its DONE option is not a
            # section: e.g. zeros after a BUFFER section whose size was never filled in.
            if (sid not in _KNOWN_SECTION_IDS and sid != _SEC_FTSLAB) or \
                    (sid == _OPT_DONE and size < 14):
                break
            complete = pos + 16 + size <= self.n
            secs.append(_Section(sid, flags, desc, pos, pos + 16, size, complete))
            if not complete:
                self.cut(f"the file ends inside the section at offset {pos} (id {sid}, "
                         f"{size} bytes)")
                break
            pos += 16 + size
        return secs

    def section_at(self, offset: int, want: int, what: str) -> _Section | None:
        """The section header at ``offset``; None (and a truncation note) if beyond EOF."""
        if offset + 16 > self.n:
            self.cut(f"the {what} section at offset {offset} is beyond the end of the file")
            return None
        sid, flags, desc, size = struct.unpack_from(self.e + "HHiQ", self.buf, offset)
        if sid != want:
            raise self.bad(f"section at offset {offset} has id {sid}, the {what} "
                           f"section (id {want}) was expected")
        sec = _Section(sid, flags, desc, offset, offset + 16, size,
                       offset + 16 + size <= self.n)
        if not sec.complete:
            self.cut(f"the file ends inside the {what} section (offset {offset}, "
                     f"{size} bytes)")
        return sec

    def payload(self, sec: _Section, what: str) -> bytes:
        """The uncompressed data of a complete, non-flyrecord section."""
        if not sec.flags & _SEC_FL_COMPRESS:
            return bytes(self.buf[sec.data:sec.data + sec.size])
        if sec.flags & _SEC_FL_COMPRESS and self.comp is None:
            raise self.bad(f"the {what} section is marked compressed in an uncompressed file")
        if sec.size < 8:
            raise self.bad(f"the compressed {what} section is only {sec.size} bytes")
        csize, usize = struct.unpack_from(self.e + "II", self.buf, sec.data)
        if csize > sec.size - 8:
            raise self.bad(f"the {what} section holds {sec.size - 8} compressed bytes, "
                           f"its header says {csize}")
        return self.decompress(self.buf[sec.data + 8:sec.data + 8 + csize], usize,
                               f"the {what} section at offset {sec.offset}")

    def read_v7(self, pos: int, options_start: int, td: TraceDat) -> None:
        secs = self.walk(pos)
        by_id: dict[int, _Section] = {}
        for s in secs:
            by_id.setdefault(s.id, s)

        # Options: a chain of sections linked by their DONE options.
        offsets: dict[int, int] = {}
        buffers: list[_BufferIndex] = []
        seen: set[int] = set()
        nxt = options_start
        while nxt:
            if nxt in seen:
                raise self.bad(f"the options sections form a loop at offset {nxt}")
            seen.add(nxt)
            sec = self.section_at(nxt, _OPT_DONE, "options")
            if sec is None:
                break
            nxt = self.options_v7(sec, td, offsets, buffers)
        if not options_start:
            self.cut("the file header does not point to any options (the file was not "
                     "finished)")

        # Metadata sections: where the options say, else where the walk found them.
        for sid, name in _SECTION_NAMES.items():
            sec = None
            if sid in offsets:
                sec = self.section_at(offsets[sid], sid, name)
            elif sid in by_id:
                sec = by_id[sid]    # if incomplete, walk() has said so already
            else:
                self.cut(f"the file has no {name} section")
            if sec is None or not sec.complete:
                if sid == _OPT_HEADER_INFO:
                    raise BadInput(f"{self.path}: trace.dat has no readable header info "
                                   f"(it is cut short before it)")
                continue
            data = self.payload(sec, name)
            try:
                value = _SECTION_PARSERS[sid](_Cur(data, 0, len(data), self.e))
            except _Eof:
                raise self.bad(f"the {name} section is shorter than its contents") from None
            if sid == _OPT_HEADER_INFO:
                td.header_page, td.header_event = value  # type: ignore[misc]
            else:
                setattr(td, {_OPT_FTRACE_EVENTS: "ftrace_formats",
                             _OPT_EVENT_FORMATS: "event_formats",
                             _OPT_KALLSYMS: "kallsyms", _OPT_PRINTK: "printk_formats",
                             _OPT_CMDLINES: "cmdlines"}[sid], value)

        layout = self.ftslab_section(secs, td)

        td.buffers = [b.name for b in buffers if not b.latency]
        has_data = [b for b in buffers if not b.latency and any(sz for _c, _o, sz in b.cpus)]
        if self.want_buffer is not None:
            top = next((b for b in buffers if b.name == self.want_buffer), None)
            if top is None:
                names = ", ".join(repr(b.name) for b in buffers) or "none"
                raise self.bad(f"no buffer named {self.want_buffer!r} (buffers: {names})")
        else:
            # the top-level buffer, unless it is empty and an instance's is not
            top = next((b for b in buffers if b.name == ""), None)
            if (top is None or top not in has_data) and has_data:
                top = has_data[0]
            if top is None and buffers:
                top = buffers[0]
        if top is not None:
            td.buffer_name = top.name
            if not td.trace_clock:
                td.trace_clock = top.clock
            if top.latency:
                return
            if top.page_size < 64 or top.page_size > (1 << 24) or \
                    top.page_size & (top.page_size - 1):
                raise self.bad(f"buffer page size {top.page_size} is not a power of two")
            td.buffer_page_size = top.page_size
            sec = self.section_at(top.offset, _OPT_BUFFER, "flyrecord")
            if sec is None:
                return
            if sec.flags & _SEC_FL_COMPRESS and self.comp is None:
                raise self.bad("the flyrecord section is marked compressed in an "
                               "uncompressed file")
            if not td.cpus and top.cpus:
                td.cpus = max(cpu for cpu, _, _ in top.cpus) + 1
            for cpu, off, size in top.cpus:
                if sec.flags & _SEC_FL_COMPRESS:
                    self.compressed_cpu(td, cpu, off, size, None)
                else:
                    self.raw_cpu(td, cpu, off, size)
        elif _OPT_BUFFER in by_id and layout is not None:
            if by_id[_OPT_BUFFER].flags & _SEC_FL_COMPRESS and self.comp is None:
                raise self.bad("the flyrecord section is marked compressed in an "
                               "uncompressed file")
            self.recover_buffer(td, by_id[_OPT_BUFFER], layout)
        elif _OPT_BUFFER in by_id:
            self.cut("the index of the ring-buffer data (BUFFER option) is missing; "
                     "the data cannot be assigned to CPUs")

    def options_v7(self, sec: _Section, td: TraceDat, offsets: dict[int, int],
                   buffers: list[_BufferIndex]) -> int:
        """Parse one options section; returns the offset of the next one (0: none)."""
        if sec.complete:
            data = self.payload(sec, "options")
        else:
            if sec.flags & _SEC_FL_COMPRESS:
                return 0
            data = bytes(self.buf[sec.data:self.n])
        c = _Cur(data, 0, len(data), self.e)
        try:
            while True:
                oid = c.u16()
                body = c.take(c.u32())
                if oid == _OPT_DONE:
                    if len(body) < 8:
                        raise self.bad("the DONE option is shorter than 8 bytes")
                    return struct.unpack_from(self.e + "Q", body)[0]
                if _OPT_HEADER_INFO <= oid <= _OPT_CMDLINES:
                    if len(body) >= 8:
                        offsets[oid] = struct.unpack_from(self.e + "Q", body)[0]
                else:
                    self.option(td, oid, body, buffers)
        except _Eof:
            if sec.complete:
                raise self.bad(f"the options section at offset {sec.offset} has no DONE "
                               f"option") from None
            return 0

    def ftslab_section(self, secs: list[_Section], td: TraceDat) -> list | None:
        """ftslab's metadata section: td.ftslab, and the CPU layout for recovery."""
        sec = next((s for s in secs if s.id == _SEC_FTSLAB), None)
        if sec is None:
            return None
        if not sec.complete:
            self.cut("the file ends inside ftslab's metadata section")
            return None
        raw = self.payload(sec, "ftslab metadata")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise self.bad(f"ftslab's metadata section is not JSON ({exc})") from None
        if not isinstance(obj, dict) or obj.get("format") != _FTSLAB_FORMAT:
            raise self.bad("section id 0x4654 is not ftslab's metadata")
        meta = obj.get("metadata")
        td.ftslab = meta if isinstance(meta, dict) else None
        layout = obj.get("cpu_layout")
        if not isinstance(layout, list) or not all(
                isinstance(x, list) and len(x) == 2 and all(type(v) is int and v >= 0
                                                            for v in x) for x in layout):
            return None
        return layout

    def compressed_cpu(self, td: TraceDat, cpu: int, off: int, size: int | None,
                       raw_size: int | None) -> int:
        """Compressed chunks of one CPU at ``off``: 4-byte chunk count, then per chunk
        compressed size, uncompressed size, data (trace-compress.c).  ``size`` (from the
        index) excludes the 4-byte count.  Returns the offset after the last chunk."""
        if size == 0:
            return off
        if cpu in td.cpu_data:
            raise self.bad(f"CPU {cpu} has more than one block of data")
        limit = self.n if size is None else min(self.n, off + 4 + size)
        page = td.buffer_page_size
        if off + 4 > self.n:
            self.cut(f"CPU {cpu}: the file ends before its ring-buffer data")
            return off
        count = struct.unpack_from(self.e + "I", self.buf, off)[0]
        # first pass over the chunk headers only: if they all fit, decompress straight
        # into one buffer of the announced size (no list of chunks, no join: on a
        # 500 MB recording that halves the memory touched)
        pos, total, whole_ok = off + 4, 0, True
        for _ in range(count):
            if pos + 8 > limit:
                whole_ok = False
                break
            csize, usize = struct.unpack_from(self.e + "II", self.buf, pos)
            if pos + 8 + csize > limit:
                whole_ok = False
                break
            total += usize
            pos += 8 + csize
        end_pos = pos
        if (self.lazy and whole_ok and self.comp == "zstd" and count
                and total <= self.budget and (size is None or pos == off + 4 + size)
                and (raw_size is None or total == raw_size)):
            lazy = CompressedPages.of(self, cpu, off + 4, count, end_pos)
            if lazy is not None:
                self.budget -= total
                td.cpu_data[cpu] = lazy
                return end_pos
        out = _unzeroed(total) if whole_ok and total <= self.budget else None
        parts: list[bytes] = []
        got = 0
        if (out is not None and self.comp == "zstd" and count >= _PARALLEL_MIN_CHUNKS
                and _zstd_parallel(self.buf, self.e, off + 4, count, out)):
            # both halves decompressed at once (zstd releases the GIL): same bytes,
            # about half the wall time on a 2-CPU machine
            self.budget -= total
            got, pos, parts = total, end_pos, [out]
            count = 0  # the loop below has nothing left to do
        pos = off + 4 if count else pos
        for i in range(count):
            if pos + 8 > limit:
                break
            csize, usize = struct.unpack_from(self.e + "II", self.buf, pos)
            if pos + 8 + csize > limit:
                break
            chunk = self.decompress(self.buf[pos + 8:pos + 8 + csize], usize,
                                    f"CPU {cpu} chunk {i} at offset {pos}")
            if out is not None and got + len(chunk) <= total:
                out[got:got + len(chunk)] = chunk
            else:
                if out is not None:  # sizes lied: fall back to collecting chunks
                    parts.append(bytes(out[:got]))
                    out = None
                parts.append(chunk)
            got += len(chunk)
            pos += 8 + csize
        else:
            if out is not None and not parts:
                parts = [out[:got]] if got != len(out) else [out]
            if size is not None and pos != off + 4 + size:
                raise self.bad(f"CPU {cpu}: {count} chunks take {pos - off - 4} bytes, the "
                               f"index says {size}")
            if raw_size is not None and got != raw_size:
                raise self.bad(f"CPU {cpu}: {got} bytes of pages, ftslab's layout says "
                               f"{raw_size}")
            if got:
                td.cpu_data[cpu] = parts[0] if len(parts) == 1 else b"".join(parts)
            return pos
        # The chunks stop early: whole chunks are kept, and of them whole pages.
        if limit < self.n:
            raise self.bad(f"CPU {cpu}: its chunks do not fit in the size of its data")
        data = b"".join(parts)
        whole = len(data) // page * page
        total = f"{raw_size}" if raw_size is not None else "an unknown number of"
        self.cut(f"CPU {cpu}: {whole} of {total} bytes of ring-buffer pages are in the file")
        if whole:
            td.cpu_data[cpu] = data[:whole]
        return pos

    def recover_buffer(self, td: TraceDat, sec: _Section, layout: list) -> None:
        """Ring-buffer data of a file written by ftslab that ended before its index: the
        CPU blocks follow each other in the order of ftslab's layout, each at a
        page-aligned offset."""
        self.cut("the index of the ring-buffer data (BUFFER option) is missing; the data "
                 "was found through ftslab's layout")
        align = td.page_size
        pos = sec.data
        for cpu, raw in layout:
            if not raw:
                continue
            pos = (pos + align - 1) // align * align
            if pos >= self.n:
                self.cut(f"CPU {cpu}: 0 of {raw} bytes of ring-buffer pages are in the file")
                continue
            if sec.flags & _SEC_FL_COMPRESS:
                pos = self.compressed_cpu(td, cpu, pos, None, raw)
            else:
                self.raw_cpu(td, cpu, pos, raw)
                pos += raw
        if not td.cpus and layout:
            td.cpus = max(cpu for cpu, _ in layout) + 1


def read_tracedat(path: str | os.PathLike, buffer: str | None = None,
                  lazy: bool = False) -> TraceDat:
    """Read a trace-cmd trace.dat file (format v6 or v7).

    Returns the metadata texts and the uncompressed ring-buffer pages of one buffer:
    ``buffer`` by name (v7; BadInput if there is none of that name), else the top-level
    buffer if it holds data, else the first buffer that does.  A file that ends early is read as far
    as it goes (``truncated`` / ``truncated_detail``).  Raises ``BadInput`` for a file that
    is missing, is not a trace.dat, is damaged, or ends before its header info.

    ``lazy``: a CPU whose pages are whole zstd chunks is left compressed, as a
    CompressedPages in ``cpu_data`` (len() its uncompressed size; read(start, end)
    decompresses a range): a reader that decodes a block of pages at a time then never
    holds them all at once.  A chunk that does not decompress raises BadInput when read.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise BadInput(f"{path} is not a trace-cmd trace.dat file (it is empty)")
            try:
                buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                buf = f.read()      # not mappable (e.g. a pipe): read it once instead
        except OSError as exc:
            raise BadInput(f"cannot read {path}: {exc.strerror}") from None
        reader = _Reader(path, buf)
        reader.want_buffer = buffer
        reader.lazy = lazy
        try:
            return reader.read()
        except _Bad as exc:
            raise reader.bad(str(exc)) from None
        except (struct.error, ValueError, OverflowError, IndexError, MemoryError,
                RecursionError) as exc:
            # The parser checks every size it reads; this is the last line of defence so
            # that damaged input can only ever produce BadInput.
            raise BadInput(f"{path}: malformed trace.dat ({type(exc).__name__}: {exc})") \
                from None
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()


# ----------------------------------------------------------------------------- writing


class _Out:
    """The output file: tracks the offset, turns OSError into OutputError."""

    def __init__(self, path: str):
        self.path = path
        self.pos = 0
        try:
            self.f: BinaryIO = open(path, "wb", buffering=1 << 20)
        except OSError as exc:
            raise self.error(exc) from None

    def error(self, exc: OSError) -> OutputError:
        return OutputError(f"cannot write {self.path}: {exc.strerror or exc}",
                           hint="check free space and permissions of the output directory")

    def write(self, b: bytes) -> None:
        try:
            self.f.write(b)
        except OSError as exc:
            raise self.error(exc) from None
        self.pos += len(b)

    def patch(self, offset: int, b: bytes) -> None:
        try:
            self.f.seek(offset)
            self.f.write(b)
            self.f.seek(self.pos)
        except OSError as exc:
            raise self.error(exc) from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as exc:
            raise self.error(exc) from None


class _Compressor:
    def __init__(self, name: str | None, level: int):
        self.name = name
        if name == "zstd":
            # Frames without the content size, as trace-cmd's zstd context writes them.
            self._z = zstandard.ZstdCompressor(level=level, write_content_size=False)
            self.version = ".".join(map(str, zstandard.ZSTD_VERSION))
        elif name == "zlib":
            self.level = max(0, min(9, level))
            self.version = zlib.ZLIB_VERSION
        elif name is None:
            self.version = ""
        else:
            raise BadInput(f"compression {name!r} is not supported (zstd, zlib or None)")

    def __call__(self, data: bytes) -> bytes:
        if self.name == "zstd":
            return self._z.compress(data)
        return zlib.compress(data, self.level)


class _Strings:
    """Section descriptions: a string's id is its offset in the STRINGS section."""

    def __init__(self):
        self.data = bytearray()
        self.ids: dict[str, int] = {}

    def id(self, s: str) -> int:
        if s not in self.ids:
            self.ids[s] = len(self.data)
            self.data += s.encode("utf-8", "surrogateescape") + b"\0"
        return self.ids[s]


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class _Source:
    """One CPU's pages: bytes, or a file of raw pages read in chunks."""

    def __init__(self, cpu: int, src: str | os.PathLike | bytes):
        self.cpu = cpu
        self.f: BinaryIO | None = None
        self.data = b""
        self.pos = 0
        if isinstance(src, (bytes, bytearray, memoryview)):
            self.data = bytes(src)
            self.size = len(self.data)
        else:
            self.name = os.fspath(src)
            try:
                self.f = open(self.name, "rb")
                self.size = os.fstat(self.f.fileno()).st_size
            except OSError as exc:
                raise BadInput(f"cannot read the pages of CPU {cpu} from {self.name}: "
                               f"{exc.strerror}") from None

    def read(self, n: int) -> bytes:
        if self.f is None:
            b = self.data[self.pos:self.pos + n]
        else:
            try:
                b = self.f.read(n)
            except OSError as exc:
                raise BadInput(f"cannot read the pages of CPU {self.cpu} from "
                               f"{self.name}: {exc.strerror}") from None
        if len(b) != n:
            raise BadInput(f"the pages of CPU {self.cpu} ended after {self.pos + len(b)} of "
                           f"{self.size} bytes (the source changed while it was written)")
        self.pos += n
        return b

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def _check_writable(td: TraceDat) -> None:
    for name in ("page_size", "buffer_page_size"):
        v = getattr(td, name)
        if not isinstance(v, int) or v < 64 or v & (v - 1):
            raise BadInput(f"TraceDat.{name} = {v!r} is not a power of two")
    if td.long_size not in (4, 8):
        raise BadInput(f"TraceDat.long_size = {td.long_size!r} is neither 4 nor 8")


def write_tracedat(path: str | os.PathLike, td: TraceDat,
                   cpu_sources: Mapping[int, str | os.PathLike | bytes] | None = None,
                   compression: str | None = "zstd", level: int = 3,
                   extra_buffers: Mapping[str, Mapping[int, str | os.PathLike | bytes]]
                   | None = None) -> int:
    """Write ``td`` as a trace-cmd v7 trace.dat file; returns the bytes written.

    ``cpu_sources`` (CPU id -> bytes, or the path of a file of raw pages) replaces
    ``td.cpu_data`` and is streamed in chunks of ``PAGES_PER_CHUNK`` pages, so spooled
    recordings of any size are never loaded whole.  ``compression`` is "zstd" (default),
    "zlib" or None (an uncompressed v7 "none" file); ``level`` is the compressor's level.
    ``td.version``, ``td.compression`` and ``td.tracecmd_version`` are not used: the file is
    always v7 and its VERSION option names ftslab.  ``extra_buffers`` (instance name ->
    CPU sources, same page size and clock) are written after ``td``'s buffer as further
    flyrecord buffers, as trace-cmd stores the instances it recorded (``read_tracedat(path,
    buffer=name)`` reads one back).  Raises ``OutputError`` when the file cannot be
    written, ``BadInput`` when ``td`` or a CPU source is unusable.
    """
    path = os.fspath(path)
    _check_writable(td)
    comp = _Compressor(compression, level)
    e = "<" if td.little_endian else ">"
    page = td.buffer_page_size
    chunk = PAGES_PER_CHUNK * page
    compress = compression is not None
    srcs_in = cpu_sources if cpu_sources is not None else td.cpu_data
    buffers: list[tuple[str, list[_Source]]] = []
    for name, srcs in [(td.buffer_name, srcs_in)] + list((extra_buffers or {}).items()):
        if any(name == b for b, _ in buffers):
            raise BadInput(f"two buffers named {name!r}")
        buffers.append((name, []))
        for cpu in sorted(srcs):
            buffers[-1][1].append(_Source(cpu, srcs[cpu]))
    sources = buffers[0][1]
    try:
        for name, srcs in buffers:
            for s in srcs:
                if s.size % page:
                    raise BadInput(f"the pages of CPU {s.cpu}{f' (buffer {name})' if name else ''}"
                                   f" are {s.size} bytes, not a multiple of the ring-buffer "
                                   f"page size {page}")
        try:
            meta = json.dumps({"format": _FTSLAB_FORMAT, "version": 1,
                               "metadata": td.ftslab,
                               "cpu_layout": [[s.cpu, s.size] for s in sources]},
                              ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadInput(f"TraceDat.ftslab cannot be written as JSON: {exc}") from None
        return _write(path, td, buffers, comp, e, chunk, compress, meta)
    finally:
        for _name, srcs in buffers:
            for s in srcs:
                s.close()


def _section(e: str, sid: int, desc: int, body: bytes, comp: _Compressor | None) -> bytes:
    flags = 0
    if comp is not None:
        cdata = comp(body)
        body = struct.pack(e + "II", len(cdata), len(body)) + cdata
        flags = _SEC_FL_COMPRESS
    return struct.pack(e + "HHiQ", sid, flags, desc, len(body)) + body


def _write(path: str, td: TraceDat, buffers: list[tuple[str, list[_Source]]],
           comp: _Compressor, e: str, chunk: int, compress: bool, meta: str) -> int:
    strings = _Strings()
    zc = comp if compress else None

    header = (_MAGIC + b"7\0" + bytes([0 if e == "<" else 1, td.long_size]) +
              struct.pack(e + "I", td.page_size) +
              (comp.name or "none").encode() + b"\0" + comp.version.encode() + b"\0")
    options_ptr = len(header)
    header += b"\0" * 8

    # Everything before the first options section is built in memory (the largest part is
    # kallsyms, a few MB), so that the header can point to the options right away.
    body = bytearray()

    def add(sid: int, desc: str, payload: bytes) -> int:
        offset = len(header) + len(body)
        body.extend(_section(e, sid, strings.id(desc), payload, zc))
        return offset

    add(_SEC_FTSLAB, "ftslab", meta.encode("utf-8", "surrogateescape"))
    hp, he = _bytes(td.header_page), _bytes(td.header_event)
    offsets = {
        _OPT_HEADER_INFO: add(_OPT_HEADER_INFO, "headers",
                              b"header_page\0" + struct.pack(e + "Q", len(hp)) + hp +
                              b"header_event\0" + struct.pack(e + "Q", len(he)) + he),
    }
    fmts = [_bytes(t) for t in td.ftrace_formats]
    offsets[_OPT_FTRACE_EVENTS] = add(
        _OPT_FTRACE_EVENTS, "ftrace events",
        struct.pack(e + "I", len(fmts)) + b"".join(struct.pack(e + "Q", len(t)) + t
                                                  for t in fmts))
    ev = bytearray(struct.pack(e + "I", len(td.event_formats)))
    for system, texts in td.event_formats.items():
        ev += _bytes(system) + b"\0" + struct.pack(e + "I", len(texts))
        for t in map(_bytes, texts):
            ev += struct.pack(e + "Q", len(t)) + t
    offsets[_OPT_EVENT_FORMATS] = add(_OPT_EVENT_FORMATS, "events format", bytes(ev))
    ks, pk, cl = _bytes(td.kallsyms), _bytes(td.printk_formats), _bytes(td.cmdlines)
    offsets[_OPT_KALLSYMS] = add(_OPT_KALLSYMS, "kallsyms", struct.pack(e + "I", len(ks)) + ks)
    offsets[_OPT_PRINTK] = add(_OPT_PRINTK, "printk", struct.pack(e + "I", len(pk)) + pk)
    offsets[_OPT_CMDLINES] = add(_OPT_CMDLINES, "command lines",
                                 struct.pack(e + "Q", len(cl)) + cl)

    def opt(oid: int, data: bytes) -> bytes:
        return struct.pack(e + "HI", oid, len(data)) + data

    def sopt(oid: int, text: str) -> bytes:
        return opt(oid, _bytes(text) + b"\0")

    # First options section: everything but the BUFFER option, which needs the offsets
    # and sizes of the CPU data (trace-cmd orders them the same way).
    o = bytearray()
    for sid in (_OPT_HEADER_INFO, _OPT_FTRACE_EVENTS, _OPT_EVENT_FORMATS, _OPT_KALLSYMS,
                _OPT_PRINTK):
        o += opt(sid, struct.pack(e + "Q", offsets[sid]))
    if td.date:
        o += sopt(_OPT_DATE, td.date)
    if td.trace_clock.strip():
        # trace-cmd takes the clock in use from the "[name]" word of this text
        # (tracecmd_parse_trace_clock()); a bare clock name is written that way.
        text = td.trace_clock if "[" in td.trace_clock else f"[{td.trace_clock.strip()}]"
        o += sopt(_OPT_TRACECLOCK, text)
    if td.uname:
        o += sopt(_OPT_UNAME, td.uname)
    o += sopt(_OPT_VERSION, f"ftslab {__version__}")
    for cpu in sorted(td.cpustats):
        o += sopt(_OPT_CPUSTAT, f"CPU: {cpu}\n{td.cpustats[cpu]}")
    o += opt(_OPT_CMDLINES, struct.pack(e + "Q", offsets[_OPT_CMDLINES]))
    o += opt(_OPT_CPUCOUNT, struct.pack(e + "I", td.cpus))
    options1 = len(header) + len(body)
    done1 = options1 + 16 + len(o) + 6     # where DONE's "next options" offset goes
    o += opt(_OPT_DONE, b"\0" * 8)          # filled in once the second section exists
    body += struct.pack(e + "HHiQ", _OPT_DONE, 0, strings.id("options"), len(o)) + o
    header = header[:options_ptr] + struct.pack(e + "Q", options1) + header[options_ptr + 8:]

    out = _Out(path)
    try:
        out.write(header)
        out.write(bytes(body))
        del body

        # One BUFFER section per buffer: per CPU, page-aligned, the pages raw or in
        # chunks; then, in the second options section, one BUFFER option for each.
        clock = td.trace_clock
        if "[" in clock and "]" in clock.split("[", 1)[1]:
            clock = clock.split("[", 1)[1].split("]", 1)[0]
        clock = clock.strip() or "local"
        o2 = b""
        for name, sources in buffers:
            buf_sec = out.pos
            out.write(struct.pack(e + "HHiQ", _OPT_BUFFER, _SEC_FL_COMPRESS if compress else 0,
                                  strings.id(f"buffer flyrecord {name}"), 0))
            index: list[tuple[int, int, int]] = []
            align = td.page_size
            for s in sources:
                if not s.size:
                    continue
                pad = -out.pos % align
                out.write(b"\0" * pad)
                start = out.pos
                if compress:
                    # The chunk count is known in advance, so it is written once: a file
                    # cut short still says how many chunks to expect.
                    out.write(struct.pack(e + "I", -(-s.size // chunk)))
                    left = s.size
                    while left:
                        raw = s.read(min(chunk, left))
                        left -= len(raw)
                        cdata = comp(raw)
                        out.write(struct.pack(e + "II", len(cdata), len(raw)) + cdata)
                    # trace-cmd's size counts the chunks, not the 4-byte count before them.
                    index.append((s.cpu, start, out.pos - start - 4))
                else:
                    left = s.size
                    while left:
                        raw = s.read(min(chunk, left))
                        left -= len(raw)
                        out.write(raw)
                    index.append((s.cpu, start, s.size))
            out.patch(buf_sec + 8, struct.pack(e + "Q", out.pos - buf_sec - 16))
            b = (struct.pack(e + "Q", buf_sec) + _bytes(name) + b"\0" +
                 _bytes(clock) + b"\0" + struct.pack(e + "II", td.buffer_page_size, len(index)) +
                 b"".join(struct.pack(e + "IQQ", cpu, off, size) for cpu, off, size in index))
            o2 += opt(_OPT_BUFFER, b)

        # Second options section: the BUFFER options, then DONE with no successor.
        o2 += opt(_OPT_DONE, b"\0" * 8)
        options2 = out.pos
        out.write(struct.pack(e + "HHiQ", _OPT_DONE, 0, strings.id("options"), len(o2)) + o2)
        out.patch(done1, struct.pack(e + "Q", options2))

        strings.id("strings")
        out.write(_section(e, _OPT_STRINGS, strings.ids["strings"], bytes(strings.data), zc))
        size = out.pos
    finally:
        out.close()
    return size


_PARALLEL_MIN_CHUNKS = 256


def _zstd_chunk(d, data, usize: int) -> bytes:
    """One zstd frame that must decompress to exactly ``usize`` (<= _ZSTD_PIECE) bytes;
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
    def of(cls, reader: "_Reader", cpu: int, first: int, count: int, end: int
           ) -> "CompressedPages | None":
        """The ``count`` chunks from ``first`` (their headers checked to lie before
        ``end``), or None if one is too large to be decompressed in one piece."""
        heads, pos = [], first
        for _ in range(count):
            csize, usize = struct.unpack_from(reader.e + "II", reader.buf, pos)
            if usize > _ZSTD_PIECE:
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
        out = _unzeroed(self._ends[j] - lo)
        view = memoryview(out)
        d = zstandard.ZstdDecompressor()
        at = 0
        for k in range(i, j + 1):
            pos, csize, usize = self._heads[k]
            if not usize:
                continue
            try:
                chunk = _zstd_chunk(d, self._src[pos:pos + csize], usize)
            except ValueError as exc:
                raise BadInput(f"{self._where(k, pos)}: {exc}") from None
            view[at:at + usize] = chunk
            at += usize
        return view[start - lo:end - lo]

    def whole(self) -> bytearray | memoryview:
        """All of the pages (two threads, as read_tracedat does)."""
        out = _unzeroed(len(self))
        if len(self._heads) >= _PARALLEL_MIN_CHUNKS and \
                _zstd_parallel(self._src, self._e, 0, len(self._heads), out):
            return out
        del out
        return self.read(0, len(self))


def _unzeroed(n: int) -> bytearray:
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
    (heap.populate), else by zeroing it with numpy (which lets the GIL go too).
    Faulting it in chunk by chunk, under the GIL of a slice assignment, serialises the
    two decompression threads."""
    import numpy as np
    from .heap import populate as _populate

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


def _zstd_parallel(buf, endian: str, first: int, count: int, out: bytearray) -> bool:
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
