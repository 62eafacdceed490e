"""Event columns out of ring-buffer blocks: each field of each event type gathered into a
numpy column (numbers, strings, stack references), and the per-event decoder that
``ftslab.read`` and ``stream`` use.  Pure: bytes in, arrays and records out.
"""
from __future__ import annotations

import struct
from types import MappingProxyType
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from ftslab.dataset import Event, EventColumns, LazyFields, str_column
from ftslab.errors import ParseError
from ftslab.trace.formats import EventFormat, Field
from ftslab.trace.pages import PageWalk

__all__ = ["decode_columns", "iter_events", "decode_event"]


_MAX_STRING = 256          # longest string field we gather in columns (cache names are < 64)


# -- field extraction ------------------------------------------------------------------

def _int_dtype(size: int, signed: bool):
    return {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[size] if signed else \
        {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[size]


class Views:
    """The same bytes seen as u8 / u32 arrays, for cheap aligned gathers."""

    def __init__(self, data):
        self.u8 = np.frombuffer(data, dtype=np.uint8)
        n4 = self.u8.size // 4
        self.u32 = np.frombuffer(data, dtype="<u4", count=n4)


# Columns are built in slices of this many rows so that temporaries stay small (and are
# reused by malloc) instead of faulting in fresh memory for each step: page faults, not
# arithmetic, dominated the decode of a 10 M-event recording here.
_CHUNK = 1 << 18


def _word_gather(v: "Views", wi: np.ndarray, size: int) -> np.ndarray:
    """The 4- or 8-byte little-endian values at word indexes ``wi`` (unsigned): one
    word gather, or two (``wi`` is changed then)."""
    lo = v.u32[wi]
    if size == 4:
        return lo
    wi += 1
    hi = v.u32[wi].astype(np.uint64)
    hi <<= np.uint64(32)
    hi |= lo
    return hi


def gather_int(v: "Views", offs: np.ndarray, size: int, signed: bool) -> np.ndarray:
    dtype = np.dtype(_int_dtype(size, signed)).newbyteorder("<")
    n = offs.size
    out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    # payloads start on 4-byte boundaries, so most fields are word-aligned: two word
    # gathers instead of eight byte gathers
    aligned = (size in (4, 8) and not (offs % 4).any()
               and int(offs.max()) + size <= v.u32.size * 4)
    for i in range(0, n, _CHUNK):
        o = offs[i:i + _CHUNK]
        dst = out[i:i + _CHUNK]
        if aligned:
            dst.view(np.uint32 if size == 4 else np.uint64)[:] = _word_gather(v, o >> 2,
                                                                              size)
        else:
            idx = o[:, None] + np.arange(size, dtype=np.int64)
            np.minimum(idx, v.u8.size - 1, out=idx)
            dst[:] = np.ascontiguousarray(v.u8[idx]).view(dtype).ravel()
    return out


# _STR_MASK[k]: the low k bytes of a u64 word
_STR_MASK = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], np.uint64)


def _string_bytes(v: "Views", starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width / 8) u64 rows of the ``width`` bytes from each start (byte gathers;
    past the data's end, its last byte again)."""
    idx = starts[:, None] + np.arange(width, dtype=np.int64)
    np.minimum(idx, v.u8.size - 1, out=idx)
    return np.ascontiguousarray(v.u8[idx]).view("<u8")


def _string_rows(v: "Views", starts: np.ndarray, lens: np.ndarray, w8: int) -> np.ndarray:
    """(n, w8) u64 rows holding each string's bytes, zero past its length."""
    width = w8 * 8
    n = starts.size
    # the strings of one field usually start at one offset within their events, so at
    # one byte within a word: each row is then one copy of whole words from a window
    # view (no n x width index to build), shifted by that byte
    r = int(starts[0]) & 3 if n else 0
    nw = (width + r + 3) // 4
    if n and v.u32.size >= nw and not ((starts & 3) != r).any():
        words = starts >> 2
        win = np.lib.stride_tricks.as_strided(v.u32, shape=(v.u32.size - nw + 1, nw),
                                              strides=(4, 4), writeable=False)
        fits = words + nw <= v.u32.size  # all but strings in the data's last bytes
        if fits.all():
            q = np.ascontiguousarray(win[words].view(np.uint8)[:, r:r + width]).view("<u8")
        else:
            q = np.empty((n, w8), np.uint64)
            q[fits] = win[words[fits]].view(np.uint8)[:, r:r + width].view("<u8")
            q[~fits] = _string_bytes(v, starts[~fits], width)
    else:
        q = _string_bytes(v, starts, width)
    # keep only each string's own bytes (the rest belongs to other fields/events)
    for j in range(w8):
        valid = lens - 8 * j
        np.clip(valid, 0, 8, out=valid)
        q[:, j] &= _STR_MASK[valid]
    return q


def _second_hash_agrees(h2: np.ndarray, first: np.ndarray, inv: np.ndarray) -> bool:
    return bool(np.array_equal(h2[first][inv], h2))


def _gather_strings(v: "Views", starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Strings at buf[starts:starts+lens] (NUL-terminated within), as an object array.

    Few distinct strings (cache names) among many events: each row is hashed to one
    u64, the distinct hashes give one representative row each; a second, independent
    hash of every row must agree with its representative's (else: exact comparison)."""
    n = starts.size
    if n == 0:
        return np.zeros(0, dtype=object)
    lens = np.clip(lens, 0, _MAX_STRING)
    width = int(lens.max())
    if width <= 0:
        return np.full(n, "", dtype=object)
    w8 = (width + 7) // 8
    # two independent 64-bit hashes per row in one pass; rows with the same first hash
    # must have the same second one, or the rows are compared exactly
    h = np.empty(n, dtype=np.uint64)
    h2 = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, n, _CHUNK):
            q = _string_rows(v, starts[i:i + _CHUNK], lens[i:i + _CHUNK], w8)
            hc = np.zeros(q.shape[0], dtype=np.uint64)
            hd = np.full(q.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
            for j in range(w8):
                hc *= np.uint64(0x100000001B3)
                hc ^= q[:, j]
                hd ^= q[:, j]
                hd *= np.uint64(0xFF51AFD7ED558CCD)
                hd ^= hd >> np.uint64(29)
            h[i:i + _CHUNK] = hc
            h2[i:i + _CHUNK] = hd
    _uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    reps = _string_rows(v, starts[first], lens[first], w8)
    if _second_hash_agrees(h2, first, inv):
        texts = [r.tobytes() for r in reps]
    else:  # a hash collision: do it exactly (slow, never seen in practice)
        q = _string_rows(v, starts, lens, w8)
        fixed = np.ascontiguousarray(q).view(f"S{w8 * 8}").ravel()
        uniq, inv = np.unique(fixed, return_inverse=True)
        texts = [bytes(u) for u in uniq]
        inv = inv.ravel()
    return str_column(inv, [t.split(b"\0", 1)[0].decode("utf-8", "replace") for t in texts])


def _record_size(fmt: EventFormat) -> int:
    """Bytes a record of ``fmt`` needs to hold every field its format names.  Neither
    decoder decodes a shorter record (a damaged page: a flipped bit in its length): the
    fields that fit would make an event the kernel never wrote.  It is counted instead,
    in PageWalk.short_records."""
    return max((f.offset + f.size for f in fmt.fields + fmt.common_fields), default=0)


def _decodable(f: Field) -> bool:
    if f.data_loc or f.rel_loc:
        return True
    if f.array_len is not None:
        return f.is_string
    return f.size in (1, 2, 4, 8)


class _Rows:
    """The payload offsets of one event type's rows, and what every field gather from
    them needs, computed once per type instead of once per field: their word indexes
    (payloads start on 4-byte boundaries) and the largest offset."""

    __slots__ = ("offs", "words", "last")

    def __init__(self, offs: np.ndarray):
        self.offs = offs
        self.last = int(offs.max()) if offs.size else 0
        # whole-CPU decodes go a slice at a time (gather_int): this is for blocks
        self.words = (offs >> 2 if 0 < offs.size <= _CHUNK and not (offs & 3).any()
                      else None)


def _gather_field(v: "Views", rows: _Rows, delta: int, size: int, signed: bool
                  ) -> np.ndarray:
    """gather_int(v, rows.offs + delta, size, signed), with one or two word gathers
    when the field lies on word boundaries (most do)."""
    if (rows.words is None or size not in (4, 8) or delta % 4
            or rows.last + delta + size > v.u32.size * 4):
        return gather_int(v, rows.offs + delta, size, signed)
    got = _word_gather(v, rows.words + (delta >> 2), size)
    return got.view(_int_dtype(size, True)) if signed else got


def _field_column(buf: "Views", rows: _Rows, lens: np.ndarray, f: Field) -> np.ndarray:
    offs = rows.offs
    if f.data_loc or f.rel_loc:
        loc = _gather_field(buf, rows, f.offset, 4, False).astype(np.int64)
        start = loc & 0xFFFF
        if f.rel_loc:
            start = start + f.offset + 4
        ln = loc >> 16
        ok = start + ln <= lens
        ln = np.where(ok, ln, 0)
        return _gather_strings(buf, offs + np.where(ok, start, 0), ln)
    if f.array_len is not None:
        if f.is_string:
            return _gather_strings(buf, offs + f.offset, np.full(offs.size, f.size, np.int64))
        return None  # numeric arrays are not needed by any report; left out, not guessed
    if f.size in (1, 2, 4, 8):
        return _gather_field(buf, rows, f.offset, f.size, f.signed)
    return None


def decode_columns(data: bytes | memoryview, walk: PageWalk,
                   formats_by_id: Mapping[int, EventFormat],
                   stack: np.ndarray | None = None,
                   fields: Callable[[str, str], Iterable[str]] | None = None
                   ) -> dict[tuple[str, str], EventColumns]:
    """Decode the events found by ``walk_pages`` into columns, one set per event type.
    ``stack``: per walk event, its stack code (see EventColumns.stack), or None.
    Fields are decoded on first access (from ``data``, kept alive for it); with
    ``fields(system, name)``, the fields it names are decoded now into a dict and the
    others never: the columns then hold no reference to ``data``."""
    out: dict[tuple[str, str], EventColumns] = {}
    if walk.ts is None or walk.ts.size == 0:
        return out
    buf = Views(data)
    ids, offs, lens, ts = walk.ids, walk.off, walk.lens, walk.ts
    short = 0
    # ids are 16 bits (common_type): a count per id finds the types present at once
    for eid in np.flatnonzero(np.bincount(ids, minlength=1)):
        fmt = formats_by_id.get(int(eid))
        if fmt is None:
            continue
        sel = ids == eid
        o, ln = offs[sel], lens[sel]
        good = ln >= _record_size(fmt)
        st = stack[sel] if stack is not None else None
        if not good.all():
            short += int(good.size - np.count_nonzero(good))
            o, ln = o[good], ln[good]
            sel_ts = ts[sel][good]
            st = st[good] if st is not None else None
        else:
            sel_ts = ts[sel]
        rows = _Rows(o)
        pidf = fmt.field("common_pid")
        pid = (_gather_field(buf, rows, pidf.offset, pidf.size, True).astype(np.int32)
               if pidf and pidf.size in (1, 2, 4, 8)  # a damaged format can say any size
               else np.full(o.size, -1, np.int32))
        decodable = {f.name: f for f in fmt.fields if _decodable(f)}
        if fields is not None:
            cols = {n: _field_column(buf, rows, ln, decodable[n])
                    for n in fields(fmt.system, fmt.name) if n in decodable}
        else:
            cols = LazyFields(decodable, lambda name, rows=rows, ln=ln, d=decodable:
                              _field_column(buf, rows, ln, d[name]))
        out[(fmt.system, fmt.name)] = EventColumns(
            system=fmt.system, name=fmt.name, ts=sel_ts, cpu=np.full(o.size, walk.cpu, np.int32),
            pid=pid, fields=cols, stack=st)
    walk.short_records = short
    return out


def merge_columns(parts: Iterable[dict[tuple[str, str], EventColumns]]
                  ) -> dict[tuple[str, str], EventColumns]:
    """Concatenate per-CPU columns of the same event type.

    Rows stay grouped by CPU, each CPU in time order: nothing that aggregates needs a
    global time order, and sorting 10 M rows costs more than the rest of a report
    (code that needs it sorts by ``ts``)."""
    acc: dict[tuple[str, str], list[EventColumns]] = {}
    for part in parts:
        for key, cols in part.items():
            acc.setdefault(key, []).append(cols)
    out = {}
    for key, lst in acc.items():
        if len(lst) == 1:
            out[key] = lst[0]
            continue
        names = set(lst[0].fields)
        for c in lst[1:]:
            names &= set(c.fields)
        names = [n for n in lst[0].fields if n in names]
        if all(type(c.fields) is dict for c in lst):
            # decoded already (load(fields=...)): join them now, each CPU's column
            # dropped as soon as it is copied
            fields = {n: np.concatenate([c.fields.pop(n) for c in lst]) for n in names}
        else:
            fields = LazyFields(names, lambda n, lst=lst:
                                np.concatenate([c.fields[n] for c in lst]))
        out[key] = EventColumns(
            system=lst[0].system, name=lst[0].name,
            ts=np.concatenate([c.ts for c in lst]),
            cpu=np.concatenate([c.cpu for c in lst]),
            pid=np.concatenate([c.pid for c in lst]),
            stack=(np.concatenate([c.stack if c.stack is not None
                                   else np.full(len(c), -1, np.int32) for c in lst])
                   if any(c.stack is not None for c in lst) else None),
            fields=fields)
    return out


# -- one event at a time (stream, API) ------------------------------------------------

_STRUCT = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h",
           (4, False): "I", (4, True): "i", (8, False): "Q", (8, True): "q"}


_U32 = struct.Struct("<I")


class _EventDecoder:
    """One event format compiled for decoding payloads one at a time: what the format
    says about each field (offset, struct, string or not) is worked out once per format,
    not once per event (stream and read() decode every event through it)."""

    def __init__(self, fmt: EventFormat):
        self.size = _record_size(fmt)
        """A shorter payload is not decoded (see _record_size): the caller checks."""
        pidf = fmt.field("common_pid")
        # as decode_columns reads it: signed, kept to 32 bits; -1 when the format gives
        # it a size no integer has (a damaged format)
        self.pid_unpack = (struct.Struct("<" + _STRUCT[(pidf.size, True)]).unpack_from
                           if pidf is not None and (pidf.size, True) in _STRUCT else None)
        self.pid_offset = pidf.offset if pidf is not None else None
        # (name, offset, end, unpacker or None for a string, data_loc kind) in format order
        self.plan = []
        for f in fmt.fields:
            end = f.offset + f.size
            if f.data_loc or f.rel_loc:
                self.plan.append((f.name, f.offset, end, None, "rel" if f.rel_loc else "loc"))
            elif f.array_len is not None:
                if f.is_string:
                    self.plan.append((f.name, f.offset, end, None, "array"))
            elif (f.size, f.signed) in _STRUCT:
                self.plan.append((f.name, f.offset, end,
                                  struct.Struct("<" + _STRUCT[(f.size, f.signed)]).unpack_from,
                                  None))

    def __call__(self, payload: bytes | memoryview) -> tuple[int, dict]:
        """(pid, fields) of a payload of at least ``self.size`` bytes."""
        n = len(payload)
        if self.pid_unpack is not None:
            pid = self.pid_unpack(payload, self.pid_offset)[0]
            if not -0x80000000 <= pid <= 0x7FFFFFFF:  # an 8-byte pid, as int32 keeps it
                pid = (pid + 0x80000000) % 0x100000000 - 0x80000000
        else:
            pid = -1
        fields: dict[str, int | str] = {}
        for name, off, end, unpack, kind in self.plan:
            if unpack is not None:
                fields[name] = unpack(payload, off)[0]
                continue
            if kind == "array":
                raw = bytes(payload[off:end])
            else:
                loc = _U32.unpack_from(payload, off)[0]
                start, ln = loc & 0xFFFF, loc >> 16
                if kind == "rel":
                    start += end
                raw = bytes(payload[start:start + ln]) if start + ln <= n else b""
            fields[name] = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        return pid, fields


def decode_event(payload: bytes | memoryview, fmt: EventFormat) -> tuple[int, dict]:
    """(pid, fields) of one event's payload; ParseError when it is shorter than its
    format says."""
    dec = _EventDecoder(fmt)
    if len(payload) < dec.size:
        raise ParseError(f"{fmt.system}:{fmt.name}: a record of {len(payload)} bytes, "
                         f"its format needs {dec.size}")
    return dec(payload)


def iter_events(data: bytes | memoryview, walk: PageWalk, formats_by_id: Mapping[int, EventFormat],
                comm_of=None, decoders: dict | None = None) -> Iterator[Event]:
    """Events of one CPU, in order, as ``Event`` objects.  ``decoders`` (event id ->
    compiled decoder) can be kept by a caller that decodes page after page.  Records
    shorter than their format are left out and counted in ``walk.short_records`` (as
    decode_columns does), as they are met."""
    mv = memoryview(data)
    comm_of = comm_of or (lambda pid: "<...>")
    if decoders is None:
        decoders = {}
    short = walk.short_records = 0
    for ts, off, eid, ln in zip(walk.ts.tolist(), walk.off.tolist(), walk.ids.tolist(),
                                walk.lens.tolist()):
        fmt = formats_by_id.get(eid)
        if fmt is None:
            continue
        dec = decoders.get(eid)
        if dec is None:
            dec = decoders[eid] = _EventDecoder(fmt)
        if ln < dec.size:
            short += 1
            walk.short_records = short
            continue
        pid, fields = dec(mv[off:off + ln])
        yield Event(ts=ts, cpu=walk.cpu, pid=pid, comm=comm_of(pid), system=fmt.system,
                    name=fmt.name, fields=MappingProxyType(fields))
