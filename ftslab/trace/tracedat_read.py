"""Read trace-cmd ``trace.dat`` files (format versions 6 and 7) into a ``TraceDat``.

The layout follows trace-cmd's own documentation, trace-cmd.dat.v6(5) and
trace-cmd.dat.v7(5); where the documentation is silent, the behaviour of trace-cmd 3.1.6
(lib/trace-cmd/trace-output.c, trace-input.c) was checked, and every such detail is
commented where it is used.

The reader accepts any bytes: whatever is malformed raises ``ftslab.errors.BadInput`` and
nothing else; a file that was cut short (SIGKILL while writing, ``head -c``) returns what
can be read, whole ring-buffer pages only, with ``truncated=True``.  Sizes read from the
file never decide an allocation on their own: every read is bounded by the file size, and
decompression by a budget proportional to it.

The writer is tracedat_write.py, the layout both share (ids, section parsers, ``TraceDat``)
tracedat_layout.py, and the on-demand decompression of page chunks zstd_pages.py.
ftslab's own metadata lives in a section of its own between the file header and the first
section trace-cmd knows about; trace-cmd walks past it by its size (see
``tracedat_layout.SEC_FTSLAB``).

This module does file I/O only on the paths it is given: it never touches tracefs, and it
neither decodes events nor interprets format files (pages.py, columns.py and formats.py
do).
"""
from __future__ import annotations

import io
import json
import mmap
import os
import struct
import zlib

import zstandard

from ftslab.errors import BadInput
from ftslab.trace.tracedat_layout import Bad, BufferIndex, Cur, DECOMPRESS_BUDGET_FIXED, DECOMPRESS_BUDGET_PER_BYTE, Eof, FTSLAB_FORMAT, KNOWN_SECTION_IDS, MAGIC, OPT_BUFFER, OPT_BUFFER_TEXT, OPT_CMDLINES, OPT_CPUCOUNT, OPT_CPUSTAT, OPT_DATE, OPT_DONE, OPT_EVENT_FORMATS, OPT_FTRACE_EVENTS, OPT_HEADER_INFO, OPT_KALLSYMS, OPT_PRINTK, opt_text, OPT_TRACECLOCK, OPT_UNAME, OPT_VERSION, parse_events, parse_ftrace, parse_header_info, parse_sized4, parse_sized8, SEC_FL_COMPRESS, SEC_FTSLAB, Section, SECTION_NAMES, SECTION_PARSERS, decode_text, ZSTD_PIECE, TraceDat
from ftslab.trace.zstd_pages import PARALLEL_MIN_CHUNKS, unzeroed, zstd_chunk, zstd_parallel, CompressedPages

__all__ = ["read_tracedat"]


class Reader:
    want_buffer: str | None = None
    lazy = False

    def __init__(self, path: str, buf):
        self.path = path
        self.buf = buf
        self.n = len(buf)
        self.e = "<"
        self.lost: list[str] = []
        self.budget = DECOMPRESS_BUDGET_FIXED + DECOMPRESS_BUDGET_PER_BYTE * self.n
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
                if usize <= ZSTD_PIECE:
                    # One call for the common case (trace-cmd chunks are 10 pages).
                    try:
                        out = zstd_chunk(self._zstd, data, usize)
                    except ValueError as exc:
                        raise self.bad(f"{where}: {exc}") from None
                    self.budget -= usize
                    return out
                # Read in pieces: the reader allocates what is asked for, and usize is
                # only a claim until the data proves it.
                reader = self._zstd.stream_reader(io.BytesIO(data), read_across_frames=False)
                parts, got = [], 0
                while got <= usize:
                    piece = reader.read(min(ZSTD_PIECE, usize + 1 - got))
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
        if self.n < 10 or buf[:10] != MAGIC:
            raise BadInput(f"{self.path} is not a trace-cmd trace.dat file")
        c = Cur(buf, 10, self.n, "<")
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
        except Eof:
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
    def read_v6(self, c: Cur, td: TraceDat) -> None:
        try:
            td.header_page, td.header_event = parse_header_info(c)
        except Eof:
            raise BadInput(f"{self.path}: trace.dat is cut short inside its header "
                           f"info") from None
        steps = [("ftrace event formats", parse_ftrace, "ftrace_formats"),
                 ("event formats", parse_events, "event_formats"),
                 ("kallsyms", parse_sized4, "kallsyms"),
                 ("printk formats", parse_sized4, "printk_formats"),
                 ("saved command lines", parse_sized8, "cmdlines")]
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
                raise Eof()
            where = "the trace clock"
            clock = opt_text(c.take(c.u64())).strip()
            if not td.trace_clock:
                td.trace_clock = clock
        except Eof:
            self.cut(f"the file ends inside {where} (offset {self.n})")
            return
        for cpu, off, size in index:
            self.raw_cpu(td, cpu, off, size)

    def options_v6(self, c: Cur, td: TraceDat) -> None:
        while True:
            oid = c.u16()
            if oid == OPT_DONE:
                return
            self.option(td, oid, c.take(c.u32()), [])

    def option(self, td: TraceDat, oid: int, data: bytes, buffers: list) -> None:
        """One option: fills td, or the list of buffer indexes (v7)."""
        if oid == OPT_DATE:
            td.date = opt_text(data)
        elif oid == OPT_CPUSTAT:
            text = opt_text(data)
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
        elif oid == OPT_TRACECLOCK:
            td.trace_clock = opt_text(data)
        elif oid == OPT_UNAME:
            td.uname = opt_text(data)
        elif oid == OPT_VERSION:
            td.tracecmd_version = opt_text(data)
        elif oid == OPT_CPUCOUNT and len(data) >= 4:
            td.cpus = struct.unpack_from(self.e + "I", data)[0]
        elif oid in (OPT_BUFFER, OPT_BUFFER_TEXT) and td.version >= 7:
            buffers.append(self.buffer_option(oid, data))
        # v6 BUFFER options describe instance buffers, which are not returned; other
        # options (hooks, time sync, guests...) do not concern ftslab.

    def buffer_option(self, oid: int, data: bytes) -> BufferIndex:
        c = Cur(data, 0, len(data), self.e)
        try:
            offset = c.u64()
            name = decode_text(c.cstr())
            clock = decode_text(c.cstr())
            if oid == OPT_BUFFER_TEXT:
                return BufferIndex(name, offset, clock, 0, [], latency=True)
            page_size = c.u32()
            count = c.u32()
            if count > c.left() // 20:
                raise Eof()
            cpus = [(c.u32(), c.u64(), c.u64()) for _ in range(count)]
        except Eof:
            raise self.bad("a BUFFER option is shorter than its contents") from None
        return BufferIndex(name, offset, clock, page_size, cpus)

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
    def walk(self, pos: int) -> list[Section]:
        """All sections in file order, as trace-cmd's read_metadata_strings() walks them."""
        secs: list[Section] = []
        e = self.e
        while pos < self.n:
            if self.n - pos < 16:
                self.cut(f"the file ends inside a section header at offset {pos}")
                break
            sid, flags, desc, size = struct.unpack_from(e + "HHiQ", self.buf, pos)
            # An unknown id or an options section too small for its DONE option is not a
            # section: e.g. zeros after a BUFFER section whose size was never filled in.
            if (sid not in KNOWN_SECTION_IDS and sid != SEC_FTSLAB) or \
                    (sid == OPT_DONE and size < 14):
                break
            complete = pos + 16 + size <= self.n
            secs.append(Section(sid, flags, desc, pos, pos + 16, size, complete))
            if not complete:
                self.cut(f"the file ends inside the section at offset {pos} (id {sid}, "
                         f"{size} bytes)")
                break
            pos += 16 + size
        return secs

    def section_at(self, offset: int, want: int, what: str) -> Section | None:
        """The section header at ``offset``; None (and a truncation note) if beyond EOF."""
        if offset + 16 > self.n:
            self.cut(f"the {what} section at offset {offset} is beyond the end of the file")
            return None
        sid, flags, desc, size = struct.unpack_from(self.e + "HHiQ", self.buf, offset)
        if sid != want:
            raise self.bad(f"section at offset {offset} has id {sid}, the {what} "
                           f"section (id {want}) was expected")
        sec = Section(sid, flags, desc, offset, offset + 16, size,
                       offset + 16 + size <= self.n)
        if not sec.complete:
            self.cut(f"the file ends inside the {what} section (offset {offset}, "
                     f"{size} bytes)")
        return sec

    def payload(self, sec: Section, what: str) -> bytes:
        """The uncompressed data of a complete, non-flyrecord section."""
        if not sec.flags & SEC_FL_COMPRESS:
            return bytes(self.buf[sec.data:sec.data + sec.size])
        if sec.flags & SEC_FL_COMPRESS and self.comp is None:
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
        by_id: dict[int, Section] = {}
        for s in secs:
            by_id.setdefault(s.id, s)

        # Options: a chain of sections linked by their DONE options.
        offsets: dict[int, int] = {}
        buffers: list[BufferIndex] = []
        seen: set[int] = set()
        nxt = options_start
        while nxt:
            if nxt in seen:
                raise self.bad(f"the options sections form a loop at offset {nxt}")
            seen.add(nxt)
            sec = self.section_at(nxt, OPT_DONE, "options")
            if sec is None:
                break
            nxt = self.options_v7(sec, td, offsets, buffers)
        if not options_start:
            self.cut("the file header does not point to any options (the file was not "
                     "finished)")

        # Metadata sections: where the options say, else where the walk found them.
        for sid, name in SECTION_NAMES.items():
            sec = None
            if sid in offsets:
                sec = self.section_at(offsets[sid], sid, name)
            elif sid in by_id:
                sec = by_id[sid]    # if incomplete, walk() has said so already
            else:
                self.cut(f"the file has no {name} section")
            if sec is None or not sec.complete:
                if sid == OPT_HEADER_INFO:
                    raise BadInput(f"{self.path}: trace.dat has no readable header info "
                                   f"(it is cut short before it)")
                continue
            data = self.payload(sec, name)
            try:
                value = SECTION_PARSERS[sid](Cur(data, 0, len(data), self.e))
            except Eof:
                raise self.bad(f"the {name} section is shorter than its contents") from None
            if sid == OPT_HEADER_INFO:
                td.header_page, td.header_event = value  # type: ignore[misc]
            else:
                setattr(td, {OPT_FTRACE_EVENTS: "ftrace_formats",
                             OPT_EVENT_FORMATS: "event_formats",
                             OPT_KALLSYMS: "kallsyms", OPT_PRINTK: "printk_formats",
                             OPT_CMDLINES: "cmdlines"}[sid], value)

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
            sec = self.section_at(top.offset, OPT_BUFFER, "flyrecord")
            if sec is None:
                return
            if sec.flags & SEC_FL_COMPRESS and self.comp is None:
                raise self.bad("the flyrecord section is marked compressed in an "
                               "uncompressed file")
            if not td.cpus and top.cpus:
                td.cpus = max(cpu for cpu, _, _ in top.cpus) + 1
            for cpu, off, size in top.cpus:
                if sec.flags & SEC_FL_COMPRESS:
                    self.compressed_cpu(td, cpu, off, size, None)
                else:
                    self.raw_cpu(td, cpu, off, size)
        elif OPT_BUFFER in by_id and layout is not None:
            if by_id[OPT_BUFFER].flags & SEC_FL_COMPRESS and self.comp is None:
                raise self.bad("the flyrecord section is marked compressed in an "
                               "uncompressed file")
            self.recover_buffer(td, by_id[OPT_BUFFER], layout)
        elif OPT_BUFFER in by_id:
            self.cut("the index of the ring-buffer data (BUFFER option) is missing; "
                     "the data cannot be assigned to CPUs")

    def options_v7(self, sec: Section, td: TraceDat, offsets: dict[int, int],
                   buffers: list[BufferIndex]) -> int:
        """Parse one options section; returns the offset of the next one (0: none)."""
        if sec.complete:
            data = self.payload(sec, "options")
        else:
            if sec.flags & SEC_FL_COMPRESS:
                return 0
            data = bytes(self.buf[sec.data:self.n])
        c = Cur(data, 0, len(data), self.e)
        try:
            while True:
                oid = c.u16()
                body = c.take(c.u32())
                if oid == OPT_DONE:
                    if len(body) < 8:
                        raise self.bad("the DONE option is shorter than 8 bytes")
                    return struct.unpack_from(self.e + "Q", body)[0]
                if OPT_HEADER_INFO <= oid <= OPT_CMDLINES:
                    if len(body) >= 8:
                        offsets[oid] = struct.unpack_from(self.e + "Q", body)[0]
                else:
                    self.option(td, oid, body, buffers)
        except Eof:
            if sec.complete:
                raise self.bad(f"the options section at offset {sec.offset} has no DONE "
                               f"option") from None
            return 0

    def ftslab_section(self, secs: list[Section], td: TraceDat) -> list | None:
        """ftslab's metadata section: td.ftslab, and the CPU layout for recovery."""
        sec = next((s for s in secs if s.id == SEC_FTSLAB), None)
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
        if not isinstance(obj, dict) or obj.get("format") != FTSLAB_FORMAT:
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
        out = unzeroed(total) if whole_ok and total <= self.budget else None
        parts: list[bytes] = []
        got = 0
        if (out is not None and self.comp == "zstd" and count >= PARALLEL_MIN_CHUNKS
                and zstd_parallel(self.buf, self.e, off + 4, count, out)):
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

    def recover_buffer(self, td: TraceDat, sec: Section, layout: list) -> None:
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
            if sec.flags & SEC_FL_COMPRESS:
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
        reader = Reader(path, buf)
        reader.want_buffer = buffer
        reader.lazy = lazy
        try:
            return reader.read()
        except Bad as exc:
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
