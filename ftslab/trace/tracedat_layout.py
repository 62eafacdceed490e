"""The trace.dat v7 layout, as trace-cmd's own writer and reader use it: the magic, the
option ids, the section ids and their parsers, and the parsed file (``TraceDat``).

Shared by tracedat_read.py and tracedat_write.py.  No file I/O: the parsers take bytes
and raise ``Bad``/``Eof`` on anything malformed, which the reader turns into ``BadInput``.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable


__all__ = ["TraceDat", "FTSLAB_SECTION_ID", "PAGES_PER_CHUNK"]


MAGIC = b"\x17\x08\x44tracing"


# Option / section ids, trace-cmd.dat.v7(5) "OPTIONS SECTION".
OPT_DONE = 0


OPT_DATE = 1


OPT_CPUSTAT = 2


OPT_BUFFER = 3


OPT_TRACECLOCK = 4


OPT_UNAME = 5


OPT_CPUCOUNT = 8


OPT_VERSION = 9


OPT_STRINGS = 15


OPT_HEADER_INFO = 16


OPT_FTRACE_EVENTS = 17


OPT_EVENT_FORMATS = 18


OPT_KALLSYMS = 19


OPT_PRINTK = 20


OPT_CMDLINES = 21


OPT_BUFFER_TEXT = 22


KNOWN_SECTION_IDS = frozenset(range(0, 26))


#: Section id of ftslab's metadata ("FT").  trace-cmd never reads it: it finds its own
#: sections through the option offsets, and its one sequential walk over the sections
#: (read_metadata_strings() in trace-input.c, looking for STRINGS) skips any other id by
#: the size in the section header.  An *option* with an unknown id would instead make
#: ``trace-cmd report`` print "unknown option N".
FTSLAB_SECTION_ID = 0x4654


SEC_FTSLAB = FTSLAB_SECTION_ID


FTSLAB_FORMAT = "ftslab-tracedat"


SEC_FL_COMPRESS = 1


#: Ring-buffer pages per compressed chunk: trace-cmd's PAGES_IN_CHUNK (trace-output.c).
#: Its reader decompresses a whole chunk to return one page, so bigger chunks would make
#: ``trace-cmd report`` slower for a few percent of file size.
PAGES_PER_CHUNK = 10


# Decompression never produces more than this many bytes per byte of input file (plus a
# fixed allowance): a lying size field or a compression bomb cannot exhaust memory.
DECOMPRESS_BUDGET_FIXED = 256 << 20


DECOMPRESS_BUDGET_PER_BYTE = 1024


ZSTD_PIECE = 1 << 20


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


class Eof(Exception):
    """Internal: a read ran past the end of the bytes it was given."""


class Bad(Exception):
    """Internal: bytes that do not follow the format; the reader adds the path."""


class Cur:
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
            raise Eof()
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def _num(self, fmt: str, n: int) -> int:
        if n > self.end - self.pos:
            raise Eof()
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
            raise Eof()
        s = self.buf[self.pos:i]
        self.pos = i + 1
        return s


def decode_text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def opt_text(b: bytes) -> str:
    """An option's NUL-terminated string; everything from the first NUL on is padding."""
    i = b.find(b"\0")
    return decode_text(b if i < 0 else b[:i])


def parse_header_info(c: Cur) -> tuple[str, str]:
    if c.take(12) != b"header_page\0":
        raise Bad("header info does not start with 'header_page'")
    page = decode_text(c.take(c.u64()))
    if c.take(13) != b"header_event\0":
        raise Bad("header info has no 'header_event' after 'header_page'")
    event = decode_text(c.take(c.u64()))
    return page, event


def parse_ftrace(c: Cur) -> list[str]:
    # Each entry takes at least 8 bytes, so a lying count ends at the data's end.
    return [decode_text(c.take(c.u64())) for _ in range(c.u32())]


def parse_events(c: Cur) -> dict[str, list[str]]:
    systems: dict[str, list[str]] = {}
    for _ in range(c.u32()):
        name = decode_text(c.cstr())
        texts = [decode_text(c.take(c.u64())) for _ in range(c.u32())]
        systems.setdefault(name, []).extend(texts)
    return systems


def parse_sized4(c: Cur) -> str:
    return decode_text(c.take(c.u32()))


def parse_sized8(c: Cur) -> str:
    return decode_text(c.take(c.u64()))


SECTION_NAMES = {
    OPT_HEADER_INFO: "header info", OPT_FTRACE_EVENTS: "ftrace event formats",
    OPT_EVENT_FORMATS: "event formats", OPT_KALLSYMS: "kallsyms",
    OPT_PRINTK: "printk formats", OPT_CMDLINES: "saved command lines",
}


SECTION_PARSERS: dict[int, Callable[[Cur], object]] = {
    OPT_HEADER_INFO: parse_header_info, OPT_FTRACE_EVENTS: parse_ftrace,
    OPT_EVENT_FORMATS: parse_events, OPT_KALLSYMS: parse_sized4,
    OPT_PRINTK: parse_sized4, OPT_CMDLINES: parse_sized8,
}


@dataclass
class Section:
    id: int
    flags: int
    desc: int
    offset: int       # of the section header
    data: int         # first byte after the header
    size: int         # as declared
    complete: bool    # the whole declared size is inside the file


@dataclass
class BufferIndex:
    name: str
    offset: int                         # of the BUFFER section header
    clock: str
    page_size: int
    cpus: list[tuple[int, int, int]]    # (cpu, file offset, size in file)
    latency: bool = False
