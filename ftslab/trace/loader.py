"""Turn a recording on disk (trace.dat v6/v7, the spool of a session that died, or a text
trace) into records.

``load(path)`` gives a columnar ``Dataset`` for reports; ``read(path)`` yields typed
``Event`` objects in time order for scripts.  The formats are read by tracedat_read.py,
spool.py and textparse.py, the pages decoded by blocks.py, columns.py and stackrefs.py;
here they are put together, with the metadata and the frees buffer.  The only I/O here
is reading the input the user named; it never touches the running kernel.
"""
from __future__ import annotations

import contextlib
import heapq
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ftslab.trace import blocks
from ftslab.trace import columns as columns_mod
from ftslab.trace import pages as pages_mod
from ftslab.trace import stackrefs
from ftslab.dataset import Dataset, Event, Loss, Metadata
from ftslab.errors import BadInput, ParseError
from ftslab.trace.kallsyms import Symbolizer
from ftslab.progress import NO_PROGRESS, Progress
from ftslab.trace.formats import EventFormat, parse_format, parse_header_event, parse_header_page


__all__ = ["load", "read", "load_tracedat", "formats_of", "parse_cmdlines"]


_MAGIC = b"\x17\x08\x44tracing"


def parse_cmdlines(text: str) -> dict[int, str]:
    out = {}
    for line in text.splitlines():
        pid, _, comm = line.strip().partition(" ")
        if pid.isdigit():
            out[int(pid)] = comm
    return out


def formats_of(td) -> dict[int, EventFormat]:
    """Parsed event formats of a TraceDat by event id (unparseable ones skipped)."""
    out = {}
    for system, texts in td.event_formats.items():
        for text in texts:
            try:
                fmt = parse_format(text, system)
            except ParseError:
                continue
            out[fmt.id] = fmt
    return out


def _open_kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(10)
    except FileNotFoundError:
        raise _missing(path) from None
    except IsADirectoryError:
        from ftslab.trace.spool import is_spool
        if is_spool(path):
            return "spool"
        raise BadInput(f"{path} is a directory, not a recording") from None
    except PermissionError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror}") from None
    if head == _MAGIC:
        return "tracedat"
    return "text"


def _missing(path: Path) -> BadInput:
    """No such file: but a session writing it, dead or still running, has a spool."""
    from ftslab.trace.spool import spools_next_to, spool_has_pages
    spools = spools_next_to(path)
    for spool, pid, alive in spools:
        if alive:
            return BadInput(f"{path}: not written yet; ftslab session {pid} is recording it "
                            f"(spool {spool})",
                            hint=f"stop that session (Ctrl-C or kill -INT {pid}) and report "
                                 "again, or read what it has so far with: "
                                 f"ftslab report {spool}")
    for spool, pid, _alive in spools:
        if spool_has_pages(spool):
            return BadInput(f"{path}: no such file; ftslab session {pid}, which was "
                            f"recording it, died and left what it captured in {spool}",
                            hint=f"read it with: ftslab report {spool}  or write the "
                                 f"recording with: ftslab recover {spool}")
    if spools:
        # killed before the first full page reached the disk: its events, if any, are
        # still in its instance's ring buffer, which `reset` removes
        spool, pid, _alive = spools[0]
        return BadInput(f"{path}: no such file; ftslab session {pid}, which was recording "
                        f"it, died before it saved any event: {spool} holds none",
                        hint="clean up with: ftslab reset  (removes that spool and the "
                             "session's leftovers), then record again")
    return BadInput(f"{path}: no such file", hint="record one with: ftslab record")


def _read_any(path: Path, buffer: str | None, lazy: bool = False):
    if Path(path).is_dir():  # a spool directory (what a dead session left)
        from ftslab.trace.spool import read_spool
        return read_spool(path, buffer)
    from ftslab.trace.tracedat_read import read_tracedat
    return read_tracedat(path, buffer, lazy=lazy)


def _headers(td):
    return parse_header_page(td.header_page), parse_header_event(td.header_event)


def _walk_cpu(td, cpu: int, data, hp, he) -> "pages_mod.PageWalk":
    return _with_spans(td, pages_mod.walk_pages(data, cpu, hp, he, td.buffer_page_size,
                                              td.little_endian), data, hp)


def _with_spans(td, walk, data, hp) -> "pages_mod.PageWalk":
    """``walk`` with the time windows of its losses, if it has any."""
    if walk.missed or walk.missed_unknown:
        walk.missed_spans = pages_mod.missed_spans(data, hp, td.buffer_page_size)
    return walk


def load_tracedat(path: Path, buffer: str | None = None, progress: Progress = NO_PROGRESS):
    """(TraceDat, formats by id, [(cpu, data, PageWalk)]): every CPU walked, its data
    kept (read() decodes events one at a time from it)."""
    td = _read_any(path, buffer)
    hp, he = _headers(td)
    fmts = formats_of(td)
    walks = []
    total = sum(len(d) for d in td.cpu_data.values()) or 1
    done = 0
    for cpu, data in sorted(td.cpu_data.items()):
        # reading and decompressing was ~1/4 of a load, walking the pages the rest
        progress.stage(f"walking the pages of CPU {cpu} ({len(data) >> 20} MiB)",
                       0.2 + 0.7 * done / total)
        done += len(data)
        walks.append((cpu, data, _walk_cpu(td, cpu, data, hp, he)))
    return td, fmts, walks


def _meta_from(td, walks) -> Metadata:
    ft = td.ftslab or {}
    # the per_cpu stats ftslab saved are those of the buffer read
    key = "frees_stats_lost" if td.buffer_name and td.buffer_name == ft.get("frees_buffer") \
        else "stats_lost"
    stats_lost = {int(k): int(v) for k, v in (ft.get(key) or {}).items()}
    if not stats_lost and td.cpustats:
        from ftslab.trace.cpustats import parse_cpu_stats
        stats_lost = {cpu: parse_cpu_stats(cpu, text).lost for cpu, text in td.cpustats.items()}
    lost = []
    for cpu, _data, walk in walks:
        # page flags and per_cpu stats count the same losses: take the larger, never add
        n = max(walk.missed, stats_lost.get(cpu, 0))
        if n == 0 and walk.missed_unknown:
            n = walk.missed_unknown  # at least one event per flagged page
        if n:
            lost.append(Loss(cpu, n, tuple((a, b) for a, b, _n in walk.missed_spans)))
    # pages that made no sense and records shorter than their format: neither decoded
    bad = sum(w.bad_pages + w.short_records for _c, _d, w in walks)
    version = f"trace.dat v{td.version}" + (f" ({td.compression})" if td.compression else "")
    if td.tracecmd_version == "ftslab spool":
        version = "ftslab spool (raw pages of an unfinished recording)"
    kernel = ft.get("kernel") or (td.uname.split()[2] if len(td.uname.split()) > 2 else td.uname)
    extra = {k: v for k, v in ft.items() if k not in ("slabinfo_start", "slabinfo_end")}
    extra.setdefault("page_size", td.page_size)
    extra["recorded_by"] = "ftslab" if td.ftslab else (td.tracecmd_version or "trace-cmd")
    extra["buffer"] = td.buffer_name
    extra["other_buffers"] = [b for b in td.buffers if b != td.buffer_name]
    if ft.get("frees_buffer") in extra["other_buffers"] and not td.buffer_name:
        extra["other_buffers"].remove(ft["frees_buffer"])  # load() reads it too
    extra["trace_clock"] = _clock_name(td.trace_clock)
    truncated, detail = td.truncated, td.truncated_detail
    if isinstance(ft.get("truncated"), str) and ft["truncated"]:
        # written by `ftslab recover`: the file is whole, the recording in it is not
        truncated = True
        detail = "; ".join(x for x in (ft["truncated"], detail) if x)
    return Metadata(source=version, kernel=kernel, cmdlines=_cmdlines(td),
                    lost=lost, truncated=truncated, truncated_detail=detail,
                    slabinfo_start=ft.get("slabinfo_start", ""),
                    slabinfo_end=ft.get("slabinfo_end", ""), unparsed=bad, extra=extra)


def _cmdlines(td) -> dict[int, str]:
    cmd = parse_cmdlines(td.cmdlines)
    cmd.setdefault(0, "<idle>")  # as the kernel's own output names pid 0
    return cmd


@contextlib.contextmanager
def _open_text(path: Path):
    """(file, its first 4 KiB) of a text trace; an empty file is no recording."""
    if path.stat().st_size == 0:
        raise BadInput(f"{path} is empty: not a recording")
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(4096)
        f.seek(0)
        yield f, head


def _check_text(path: Path, head: str, events: int, unparsed: int) -> None:
    """No event at all is fine for an empty trace (it has the kernel's header), not for
    any other file."""
    if events == 0 and (unparsed or not ("# tracer:" in head or
                                         "# entries-in-buffer/entries-written:" in head)):
        raise BadInput(f"{path} is neither a trace.dat file nor a text trace"
                       + (f" ({unparsed} lines not understood)" if unparsed else ""))


def _clock_name(text: str) -> str:
    """The selected clock of a trace_clock text ("[local] global ..." -> "local")."""
    if "[" in text and "]" in text:
        return text[text.index("[") + 1:text.index("]")]
    return text.strip()


def load(path: str | os.PathLike,
         formats_hint: dict[str, EventFormat] | Callable[[], dict | None] | None = None,
         buffer: str | None = None, progress: Progress = NO_PROGRESS,
         fields: Callable[[str, str], Iterable[str]] | None = None) -> Dataset:
    """Decode a recording into columns (trace.dat or text trace).  ``buffer`` picks an
    instance buffer of a trace.dat by name (default: the top-level one).  ``progress``
    is told each stage (reading, each CPU's pages) with the fraction of the load done.
    ``formats_hint``: formats to read a text trace with (see parse_text), or a function
    that gives them, called only for a text trace.

    Fields are decoded on first use, from the recording's pages kept in memory.  A
    caller that knows what it reads gives ``fields(system, name)`` -> the field names it
    wants of that event type: those are decoded at once, a block of pages at a time,
    the pages of a zstd trace.dat decompressed only for their block (on a 10 M-event
    recording, 700 MB never held); other fields are then absent from the columns."""
    path = Path(path)
    kind = _open_kind(path)
    if kind == "text":
        from ftslab.trace.textparse import parse_text
        if callable(formats_hint):
            formats_hint = formats_hint()
        with _open_text(path) as (f, head):
            ds = parse_text(f, formats_hint)
        _check_text(path, head, ds.events, ds.meta.unparsed)
        return ds
    ds = _load_buffer(path, buffer, progress, fields)
    frees = frees_buffer_of(ds.meta) if buffer is None else None
    if frees is None:
        return ds
    try:
        fds = _load_buffer(path, frees, progress, fields)
    except BadInput as exc:
        # cut short before the second buffer: the allocations are all there, their
        # frees are not
        ds.meta.truncated = True
        ds.meta.truncated_detail = "; ".join(x for x in (
            ds.meta.truncated_detail, f"the buffer of frees ({frees}) is missing: {exc}") if x)
        ds.meta.extra["frees_missing"] = True
        return ds
    return _with_frees(ds, fds)


def frees_buffer_of(meta: Metadata) -> str | None:
    """The buffer holding the free events of the whole system, which ``load``/``read``
    join to the allocations (record --frees all), or None."""
    name = meta.extra.get("frees_buffer")
    return name if isinstance(name, str) and name else None


def _with_frees(ds: Dataset, fds: Dataset) -> Dataset:
    """The allocations' Dataset with the frees buffer's events joined in; its losses
    count as losses (a lost free makes an object look live)."""
    meta = ds.meta
    flost = sum(x.lost for x in fds.meta.lost)
    meta.lost = list(meta.lost) + list(fds.meta.lost)
    meta.unparsed += fds.meta.unparsed
    meta.extra["frees_lost"] = flost
    meta.extra["frees_events_recorded"] = fds.events
    if fds.meta.truncated and not meta.truncated:
        meta.truncated, meta.truncated_detail = True, fds.meta.truncated_detail
    formats = dict(fds.formats)
    formats.update(ds.formats)
    return Dataset(meta=meta, columns=columns_mod.merge_columns([ds.columns, fds.columns]),
                   formats=formats, symbolize=ds.symbolize, stacks=ds.stacks)


def _load_buffer(path: Path, buffer: str | None, progress: Progress,
                 fields) -> Dataset:
    progress.stage(f"reading {path.name}", 0.0)
    # with ``fields``, pages stay compressed until their block is decoded
    td = _read_any(path, buffer, lazy=fields is not None)
    hp, he = _headers(td)
    fmts = formats_of(td)
    stack_id = _stack_format(td)
    stack_id = stack_id.id if stack_id is not None else None
    parts, walks, with_stacks = [], [], []
    total = sum(len(d) for d in td.cpu_data.values()) or 1
    sink = blocks.ColumnSink(pages=total // td.buffer_page_size)
    order = sorted(td.cpu_data)
    if fields is not None:
        # every CPU's pages in blocks, in one go (one helper process for all)
        where = {}
        at = 0
        for cpu in order:
            where[cpu], at = at, at + len(td.cpu_data[cpu])

        def each_block(cpu, pages):
            progress.stage(f"decoding the pages of CPU {cpu}",
                           0.1 + 0.8 * (where[cpu] + pages * td.buffer_page_size) / total)
        progress.stage("decoding the pages", 0.1)
        done = blocks.decode_blocks([(cpu, td.cpu_data[cpu]) for cpu in order], hp, he,
                                     td.buffer_page_size, fmts, fields, sink, stack_id,
                                     each_block, td.little_endian)
        for cpu, walk in zip(order, done):
            walks.append((cpu, None, walk))  # with its loss spans
            td.cpu_data.pop(cpu)  # its events are columns now: its pages can go
        order = order[len(done):]  # from a CPU with kernel stacks on: decoded whole
    for cpu in order:
        data = td.cpu_data[cpu]
        if hasattr(data, "whole"):  # still compressed (CompressedPages): decoded whole
            data = td.cpu_data[cpu] = data.whole()
        progress.stage(f"decoding the pages of CPU {cpu} ({len(data) >> 20} MiB)",
                       0.1 + 0.8 * (1 - sum(len(td.cpu_data[c]) for c in order
                                            if c >= cpu) / total))
        walk = _walk_cpu(td, cpu, data, hp, he)
        walks.append((cpu, None, walk))
        if with_stacks or (stack_id is not None and (walk.ids == stack_id).any()):
            # stacks are told apart across CPUs: these CPUs are decoded together
            with_stacks.append((cpu, data, walk))
            continue
        parts.append(_decode(data, walk, fmts, None, fields))
        del data
    stacks, unmatched = [], 0
    if with_stacks:
        progress.stage("pairing kernel stacks with their events", 0.9)
        stacks, codes, unmatched = _stacks(td, fmts, with_stacks)
        for (cpu, data, walk), code in zip(with_stacks, codes):
            parts.append(_decode(data, walk, fmts, code, fields))
        with_stacks.clear()
    progress.stage("joining the CPUs", 0.95)
    columns = columns_mod.merge_columns([sink.columns()] + parts)
    del parts
    td.cpu_data.clear()
    meta = _meta_from(td, walks)
    if unmatched:
        meta.extra["stacks_unattributed"] = unmatched
    sym = Symbolizer(td.kallsyms) if td.kallsyms else None
    return Dataset(meta=meta, columns=columns,
                   formats={(f.system, f.name): f for f in fmts.values()},
                   symbolize=sym if sym else None, stacks=stacks)


def _decode(data, walk, fmts, code, fields) -> dict:
    """One CPU's events as columns (its walk's arrays dropped: they are the largest
    thing of a load).  With ``fields``, the fields it names are decoded now and the
    rest never: the columns then hold no reference to ``data``."""
    cols = columns_mod.decode_columns(data, walk, fmts, code, fields)
    walk.ts = walk.off = walk.ids = walk.lens = None
    return cols


def _stack_format(td):
    for text in td.ftrace_formats:
        # only kernel_stack's is parsed (a file holds twenty-odd ftrace formats: parsing
        # them all took ~60 ms of every report)
        head = text.lstrip().partition("\n")[0]
        if head.startswith("name:") and head[5:].strip() != "kernel_stack":
            continue
        try:
            f = parse_format(text, "ftrace")
        except ParseError:
            continue
        if f.name == "kernel_stack":
            return f
    return None


def _stacks(td, fmts, walks) -> tuple[list, list, int]:
    """Kernel stacks (record --stacks): (distinct stacks, per walk a stack code per event
    or None, stacks that belong to no recorded event)."""
    none = [None] * len(walks)
    stack_fmt = _stack_format(td)
    if stack_fmt is None or not any(w.ids is not None and (w.ids == stack_fmt.id).any()
                                    for _c, _d, w in walks):
        return [], none, 0
    wanted = set((td.ftslab or {}).get("stack_events") or ())
    if wanted:
        open_ids = {i for i, f in fmts.items() if f"{f.system}:{f.name}" in wanted}
    else:
        # not ftslab's: the event types whose stacks were recorded are those followed
        # by a stack (most of the time: an interrupt can come in between)
        before, total = {}, {}
        for _c, _d, w in walks:
            nxt = np.flatnonzero(w.ids[1:] == stack_fmt.id)
            for i, n in zip(*np.unique(w.ids[nxt], return_counts=True)):
                before[int(i)] = before.get(int(i), 0) + int(n)
            for i, n in zip(*np.unique(w.ids, return_counts=True)):
                total[int(i)] = total.get(int(i), 0) + int(n)
        open_ids = {i for i, n in before.items() if i != stack_fmt.id and 2 * n >= total[i]}
    pairs, refs, n_stacks = [], [], 0
    for _c, data, w in walks:
        n_stacks += int((w.ids == stack_fmt.id).sum())
        ev, st = stackrefs.pair_stacks(data, w, stack_fmt.id, open_ids)
        pairs.append(ev)
        refs.append((data,) + stackrefs.stack_refs(data, w, st, stack_fmt))
    uniq, inv = _distinct_stacks(refs)
    codes, start = [], 0
    for (_c, _d, w), ev in zip(walks, pairs):
        code = np.full(w.ids.shape[0], -1, np.int32)
        code[ev] = inv[start:start + ev.size]
        start += ev.size
        codes.append(code)
    stacks = [tuple(int(a) for a in row if a) for row in uniq]
    return stacks, codes, n_stacks - int(inv.shape[0])


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


def _mix(h: np.ndarray, col: np.ndarray, k: int = 0) -> None:
    with np.errstate(over="ignore"):
        h ^= col
        h *= _MIX[k]
        h ^= h >> np.uint64(29 + 2 * k)


def _distinct_stacks(refs) -> tuple[np.ndarray, np.ndarray]:
    """The distinct stacks of all CPUs as rows (innermost first, zero-padded) and each
    stack's row.  Two independent hashes are built one stack entry at a time (the rows
    of millions of stacks are never held at once); stacks are grouped by the first and
    the second must agree within each group, else the rows themselves are sorted."""
    depth = max([int(n.max()) for _d, _s, n in refs if n.size] + [1])
    h1s, h2s = [], []
    for data, starts, n in refs:
        h1 = n.astype(np.uint64)
        h2 = h1 + np.uint64(0x5851F42D4C957F2D)
        for j in range(depth):
            col = stackrefs.stack_column(data, starts, n, j)
            _mix(h1, col, 0)
            _mix(h2, col, 1)
        h1s.append(h1)
        h2s.append(h2)
    if not sum(h.size for h in h1s):
        return np.zeros((0, depth), np.uint64), np.zeros(0, np.int32)
    h1, h2 = np.concatenate(h1s), np.concatenate(h2s)
    _keys, first, inv = np.unique(h1, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    if np.array_equal(h2[first][inv], h2):
        bounds = np.cumsum([0] + [h.size for h in h1s])
        uniq = np.zeros((first.size, depth), np.uint64)
        for k, (data, starts, n) in enumerate(refs):
            mine = np.flatnonzero((first >= bounds[k]) & (first < bounds[k + 1]))
            local = first[mine] - bounds[k]
            for j in range(depth):
                uniq[mine, j] = stackrefs.stack_column(data, starts[local], n[local], j)
        return uniq, inv.astype(np.int32)
    # two stacks share the first hash but not the second (never seen): sort the rows
    rows = np.concatenate([np.stack([stackrefs.stack_column(d, s, n, j) for j in range(depth)],
                                    axis=1) for d, s, n in refs])
    uniq, inv = np.unique(rows, axis=0, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int32)


def read(path: str | os.PathLike, buffer: str | None = None) -> Iterator[Event]:
    """Yield every event of a recording as a typed ``Event``, in timestamp order."""
    path = Path(path)
    if _open_kind(path) == "text":
        from ftslab.trace.textparse import TextParser
        parser = TextParser()
        n = 0
        with _open_text(path) as (f, head):
            for ev in parser.parse(f):
                n += 1
                yield ev
        _check_text(path, head, n, parser.unparsed)
        return
    td, fmts, walks = load_tracedat(path, buffer)
    cmd = _cmdlines(td)
    comm_of = lambda pid: cmd.get(pid, "<...>")
    iters = [columns_mod.iter_events(data, walk, fmts, comm_of) for _cpu, data, walk in walks]
    frees = (td.ftslab or {}).get("frees_buffer") if buffer is None else None
    if isinstance(frees, str) and frees and frees in (td.buffers or [frees]):
        # record --frees all: the frees of the whole system, in time order with the rest
        try:
            _ftd, ffmts, fwalks = load_tracedat(path, frees)
        except BadInput:
            fwalks = []  # cut short before it: the allocations are all there
        iters += [columns_mod.iter_events(data, walk, ffmts, comm_of)
                  for _cpu, data, walk in fwalks]
    yield from heapq.merge(*iters, key=lambda e: e.ts)
