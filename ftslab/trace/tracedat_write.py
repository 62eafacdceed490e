"""Writing trace.dat v7: the options, the flyrecord sections of each buffer, and the
compressed page chunks.  The bytes are trace-cmd's format: ``trace-cmd report`` reads them.

The file is zstd-, zlib-compressed or uncompressed; ftslab's metadata goes in its own
section (``SEC_FTSLAB``), which trace-cmd walks past silently.  File I/O only on the paths
it is given (the output and the per-CPU page files it copies): never tracefs, and no
event is decoded on the way.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from typing import BinaryIO, Mapping

import zstandard

from ftslab.version import __version__
from ftslab.errors import BadInput, OutputError
from ftslab.trace.tracedat_layout import FTSLAB_FORMAT, MAGIC, OPT_BUFFER, OPT_CMDLINES, OPT_CPUCOUNT, OPT_CPUSTAT, OPT_DATE, OPT_DONE, OPT_EVENT_FORMATS, OPT_FTRACE_EVENTS, OPT_HEADER_INFO, OPT_KALLSYMS, OPT_PRINTK, OPT_STRINGS, OPT_TRACECLOCK, OPT_UNAME, OPT_VERSION, SEC_FL_COMPRESS, SEC_FTSLAB, PAGES_PER_CHUNK, TraceDat

__all__ = ["write_tracedat"]


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
            meta = json.dumps({"format": FTSLAB_FORMAT, "version": 1,
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
        flags = SEC_FL_COMPRESS
    return struct.pack(e + "HHiQ", sid, flags, desc, len(body)) + body


def _write(path: str, td: TraceDat, buffers: list[tuple[str, list[_Source]]],
           comp: _Compressor, e: str, chunk: int, compress: bool, meta: str) -> int:
    strings = _Strings()
    zc = comp if compress else None

    header = (MAGIC + b"7\0" + bytes([0 if e == "<" else 1, td.long_size]) +
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

    add(SEC_FTSLAB, "ftslab", meta.encode("utf-8", "surrogateescape"))
    hp, he = _bytes(td.header_page), _bytes(td.header_event)
    offsets = {
        OPT_HEADER_INFO: add(OPT_HEADER_INFO, "headers",
                              b"header_page\0" + struct.pack(e + "Q", len(hp)) + hp +
                              b"header_event\0" + struct.pack(e + "Q", len(he)) + he),
    }
    fmts = [_bytes(t) for t in td.ftrace_formats]
    offsets[OPT_FTRACE_EVENTS] = add(
        OPT_FTRACE_EVENTS, "ftrace events",
        struct.pack(e + "I", len(fmts)) + b"".join(struct.pack(e + "Q", len(t)) + t
                                                  for t in fmts))
    ev = bytearray(struct.pack(e + "I", len(td.event_formats)))
    for system, texts in td.event_formats.items():
        ev += _bytes(system) + b"\0" + struct.pack(e + "I", len(texts))
        for t in map(_bytes, texts):
            ev += struct.pack(e + "Q", len(t)) + t
    offsets[OPT_EVENT_FORMATS] = add(OPT_EVENT_FORMATS, "events format", bytes(ev))
    ks, pk, cl = _bytes(td.kallsyms), _bytes(td.printk_formats), _bytes(td.cmdlines)
    offsets[OPT_KALLSYMS] = add(OPT_KALLSYMS, "kallsyms", struct.pack(e + "I", len(ks)) + ks)
    offsets[OPT_PRINTK] = add(OPT_PRINTK, "printk", struct.pack(e + "I", len(pk)) + pk)
    offsets[OPT_CMDLINES] = add(OPT_CMDLINES, "command lines",
                                 struct.pack(e + "Q", len(cl)) + cl)

    def opt(oid: int, data: bytes) -> bytes:
        return struct.pack(e + "HI", oid, len(data)) + data

    def sopt(oid: int, text: str) -> bytes:
        return opt(oid, _bytes(text) + b"\0")

    # First options section: everything but the BUFFER option, which needs the offsets
    # and sizes of the CPU data (trace-cmd orders them the same way).
    o = bytearray()
    for sid in (OPT_HEADER_INFO, OPT_FTRACE_EVENTS, OPT_EVENT_FORMATS, OPT_KALLSYMS,
                OPT_PRINTK):
        o += opt(sid, struct.pack(e + "Q", offsets[sid]))
    if td.date:
        o += sopt(OPT_DATE, td.date)
    if td.trace_clock.strip():
        # trace-cmd takes the clock in use from the "[name]" word of this text
        # (tracecmd_parse_trace_clock()); a bare clock name is written that way.
        text = td.trace_clock if "[" in td.trace_clock else f"[{td.trace_clock.strip()}]"
        o += sopt(OPT_TRACECLOCK, text)
    if td.uname:
        o += sopt(OPT_UNAME, td.uname)
    o += sopt(OPT_VERSION, f"ftslab {__version__}")
    for cpu in sorted(td.cpustats):
        o += sopt(OPT_CPUSTAT, f"CPU: {cpu}\n{td.cpustats[cpu]}")
    o += opt(OPT_CMDLINES, struct.pack(e + "Q", offsets[OPT_CMDLINES]))
    o += opt(OPT_CPUCOUNT, struct.pack(e + "I", td.cpus))
    options1 = len(header) + len(body)
    done1 = options1 + 16 + len(o) + 6     # where DONE's "next options" offset goes
    o += opt(OPT_DONE, b"\0" * 8)          # filled in once the second section exists
    body += struct.pack(e + "HHiQ", OPT_DONE, 0, strings.id("options"), len(o)) + o
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
            out.write(struct.pack(e + "HHiQ", OPT_BUFFER, SEC_FL_COMPRESS if compress else 0,
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
            o2 += opt(OPT_BUFFER, b)

        # Second options section: the BUFFER options, then DONE with no successor.
        o2 += opt(OPT_DONE, b"\0" * 8)
        options2 = out.pos
        out.write(struct.pack(e + "HHiQ", OPT_DONE, 0, strings.id("options"), len(o2)) + o2)
        out.patch(done1, struct.pack(e + "Q", options2))

        strings.id("strings")
        out.write(_section(e, OPT_STRINGS, strings.ids["strings"], bytes(strings.data), zc))
        size = out.pos
    finally:
        out.close()
    return size
