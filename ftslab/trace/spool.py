"""The spool directory of a recording, and what is left of it when a session dies.

While ``record`` runs, each CPU's ring-buffer pages go to ``OUT.ftslab-spool-PID/cpuN.raw``
(session/spooler.py).  Before tracing starts, the same directory receives everything needed to
decode those pages without the kernel that wrote them: ``spool.json`` (header_page,
header_event, the event formats, trace clock, CPUs, ftslab's metadata) and
``kallsyms.zst``.  A session killed by SIGKILL, a crash or a power cut therefore leaves
a readable recording: ``ftslab report SPOOL`` reads it up to its last complete page and
says it is truncated; ``ftslab recover SPOOL`` turns it into a trace.dat.

A registry (one symlink per session, named for its pid, in ``/run/ftslab`` or
``$FTSLAB_RUN_DIR``) lets ``ftslab reset`` name the spools of dead sessions wherever
they are; a new session also names those next to its own output.

File I/O here is on spool and registry paths only, never on tracefs: session/record.py
hands in what it read from the kernel.  Reading accepts any bytes: a damaged spool raises
BadInput, nothing else.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import zstandard

from ftslab.errors import BadInput, OutputError, UsageError
from ftslab.pids import pid_alive


__all__ = [
    "SPOOL_INFO", "SPOOL_FORMAT", "spool_dir_for", "spool_owner", "is_spool",
    "spool_has_pages", "describe", "save_cmdlines", "read_spool", "recover",
    "orphans_next_to", "spools_next_to", "registry_add", "registry_remove",
    "registry_orphans", "run_dir"
]


SPOOL_INFO = "spool.json"


SPOOL_FORMAT = "ftslab-spool"


_KALLSYMS = "kallsyms.zst"


_CMDLINES = "saved_cmdlines"


_SUFFIX = ".ftslab-spool-"


_NAME = re.compile(r"^(?P<base>.+)\.ftslab-spool-(?P<pid>\d{1,10})\Z")


_RAW = re.compile(r"^cpu(\d{1,5})\.raw\Z")


_INFO_MAX = 64 << 20        # spool.json: formats and metadata, never this big


_KALLSYMS_MAX = 256 << 20   # decompressed /proc/kallsyms (~5 MB on 6.18)


def spool_dir_for(output: str | os.PathLike, pid: int) -> Path:
    return Path(os.fspath(output) + f"{_SUFFIX}{pid}")


def spool_owner(path: str | os.PathLike) -> int | None:
    """The pid in a spool directory's name, None if the name is not a spool's."""
    m = _NAME.match(Path(path).name)
    return int(m.group("pid")) if m else None


def is_spool(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / SPOOL_INFO).exists() or spool_owner(p) is not None)


def _raw_files(path: Path) -> dict[int, Path]:
    out = {}
    try:
        names = os.listdir(path)
    except OSError:
        return {}
    for name in names:
        m = _RAW.match(name)
        if m:
            out[int(m.group(1))] = path / name
    return out


def spool_has_pages(path: str | os.PathLike) -> bool:
    """Whether any CPU file holds at least one byte of pages."""
    for p in _raw_files(Path(path)).values():
        try:
            if p.stat().st_size > 0:
                return True
        except OSError:
            pass
    return False


# ----------------------------------------------------------------------------- writing

def describe(spool_dir: Path, info: dict, kallsyms: str, warn: Callable[[str], None]) -> None:
    """Write what decoding the spool needs (before any page arrives).  ``spool.json`` is
    required (OutputError if it cannot be written, nothing left behind); kallsyms is
    best effort (without it call sites stay addresses)."""
    body = dict(info, format=SPOOL_FORMAT, version=1)
    data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")
    try:
        _write_atomic(spool_dir / SPOOL_INFO, data, durable=True)
    except OSError as exc:
        raise OutputError(f"cannot write {spool_dir / SPOOL_INFO}: {exc.strerror}",
                          hint="check free space and permissions of the output "
                               "directory") from None
    if kallsyms:
        try:
            z = zstandard.ZstdCompressor(level=1).compress(kallsyms.encode("utf-8",
                                                                           "replace"))
            _write_atomic(spool_dir / _KALLSYMS, z)
        except OSError as exc:
            warn(f"cannot save kallsyms in {spool_dir} ({exc.strerror}): if this session "
                 "dies, its call sites stay addresses")


def _write_atomic(path: Path, data: bytes, durable: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:  # on disk before the first page: a power cut keeps it
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_cmdlines(spool_dir: Path, text: str) -> None:
    """Refresh the pid -> comm table of a running session (best effort)."""
    if text:
        try:
            _write_atomic(spool_dir / _CMDLINES, text.encode("utf-8", "replace"))
        except OSError:
            pass


# ----------------------------------------------------------------------------- reading

def _load_info(path: Path) -> dict:
    f = path / SPOOL_INFO
    try:
        size = f.stat().st_size
        if size > _INFO_MAX:
            raise BadInput(f"{f} is {size} bytes: not a spool description")
        text = f.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise BadInput(f"{path} has no {SPOOL_INFO}: the session ended before tracing "
                       "started (nothing was recorded), or an older ftslab wrote it; its "
                       "raw pages cannot be decoded without the kernel's formats") from None
    except OSError as exc:
        raise BadInput(f"cannot read {f}: {exc.strerror}") from None
    try:
        info = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadInput(f"{f} is not a spool description ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != SPOOL_FORMAT:
        raise BadInput(f"{f} is not a spool description")

    def need(key, typ):
        v = info.get(key)
        if not isinstance(v, typ) or isinstance(v, bool) and typ is not bool:
            raise BadInput(f"{f}: {key!r} is missing or not a {typ.__name__}")
        return v

    need("header_page", str)
    need("header_event", str)
    formats = need("event_formats", dict)
    for system, texts in formats.items():
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadInput(f"{f}: event formats of {system!r} are not texts")
    page = need("buffer_page_size", int)
    if page < 64 or page > (1 << 24) or page & (page - 1):
        raise BadInput(f"{f}: buffer page size {page} is not a power of two")
    cpus = need("cpus", list)
    if not all(type(c) is int and 0 <= c < 65536 for c in cpus):
        raise BadInput(f"{f}: 'cpus' is not a list of CPU numbers")
    for key in ("ftrace_formats",):
        v = info.get(key, [])
        if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
            raise BadInput(f"{f}: {key!r} is not a list of texts")
    for key in ("printk_formats", "cmdlines", "trace_clock", "uname", "output"):
        if not isinstance(info.get(key, ""), str):
            raise BadInput(f"{f}: {key!r} is not a text")
    if not isinstance(info.get("meta", {}), dict):
        raise BadInput(f"{f}: 'meta' is not an object")
    return info


def _kallsyms(path: Path) -> str:
    f = path / _KALLSYMS
    try:
        data = f.read_bytes()
    except OSError:
        return ""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(data)
        out = reader.read(_KALLSYMS_MAX + 1)
    except zstandard.ZstdError:
        return ""
    if len(out) > _KALLSYMS_MAX:
        return ""
    return out.decode("utf-8", "replace")


def _spool_state(path: Path, info: dict) -> tuple[dict[int, int], list[str]]:
    """Whole-page bytes per CPU, and what the truncation detail should say."""
    page = info["buffer_page_size"]
    sizes: dict[int, int] = {}
    notes = []
    for cpu, raw in sorted(_raw_files(path).items()):
        try:
            size = raw.stat().st_size
        except OSError as exc:
            raise BadInput(f"cannot read {raw}: {exc.strerror}") from None
        whole = size - size % page
        sizes[cpu] = whole
        if size != whole:
            notes.append(f"CPU {cpu}: the last {size - whole} bytes (a page cut short) "
                         "were dropped")
    return sizes, notes


def _detail(path: Path, info: dict, notes: list[str]) -> str:
    pid = info.get("pid") if type(info.get("pid")) is int else spool_owner(path)
    who = f"ftslab session {pid}" if pid else "an ftslab session"
    if pid and pid_alive(pid):
        head = (f"read from the spool of {who}, which is still running: a snapshot, "
                "the recording goes on")
    else:
        head = (f"read from the spool of {who}, which ended without writing its recording "
                "(killed, crashed, power lost or disk full): events still in the kernel's "
                "ring buffer or in transit (up to 1 MiB per CPU) at that moment are missing")
    return "; ".join([head] + notes)


def read_spool(path: str | os.PathLike, buffer: str | None = None):
    """A spool directory as a TraceDat (always ``truncated``: a spool is what a session
    left, never a finished recording).  ``buffer``: the pages of a second buffer (the
    frees of the whole system, in the subdirectory of that name) instead of the
    allocations'."""
    from ftslab.trace.tracedat_layout import TraceDat
    path = Path(path)
    info = _load_info(path)
    pages = path
    if buffer:
        if buffer != (info.get("meta") or {}).get("frees_buffer") or \
                not (path / buffer).is_dir():
            raise BadInput(f"{path}: no buffer named {buffer!r} in this spool")
        pages = path / buffer
    sizes, notes = _spool_state(pages, info)
    cpu_data: dict[int, bytes] = {}
    for cpu, raw in sorted(_raw_files(pages).items()):
        n = sizes.get(cpu, 0)
        if not n:
            continue
        try:
            with open(raw, "rb") as f:
                data = f.read(n)
        except OSError as exc:
            raise BadInput(f"cannot read {raw}: {exc.strerror}") from None
        n = len(data) - len(data) % info["buffer_page_size"]  # it may have shrunk
        if n:
            cpu_data[cpu] = data[:n]
    meta = dict(info.get("meta") or {})
    meta["recovered_from"] = str(path)
    cpus = info["cpus"] + list(cpu_data)
    return TraceDat(
        version=7, little_endian=bool(info.get("little_endian", True)),
        long_size=8 if info.get("long_size") not in (4, 8) else info["long_size"],
        page_size=_pow2(info.get("page_size"), 4096), compression=None,
        header_page=info["header_page"], header_event=info["header_event"],
        ftrace_formats=list(info.get("ftrace_formats", [])),
        event_formats={k: list(v) for k, v in info["event_formats"].items()},
        kallsyms=_kallsyms(path), printk_formats=info.get("printk_formats", ""),
        cmdlines=_cmdlines(path, info.get("cmdlines", "")),
        cpus=(max(cpus) + 1) if cpus else 0,
        cpu_data=cpu_data, buffer_page_size=info["buffer_page_size"],
        trace_clock=info.get("trace_clock", ""), uname=info.get("uname", ""),
        tracecmd_version="ftslab spool", ftslab=meta, truncated=True,
        truncated_detail=_detail(path, info, notes), buffer_name=buffer or "")


def _cmdlines(path: Path, at_start: str) -> str:
    """saved_cmdlines at the start, then the last refresh (later lines win)."""
    try:
        with open(path / _CMDLINES, "rb") as f:
            later = f.read(16 << 20).decode("utf-8", "replace")
    except OSError:
        later = ""
    return at_start + ("\n" if at_start and not at_start.endswith("\n") else "") + later


def _pow2(v, default: int) -> int:
    return v if type(v) is int and 64 <= v <= (1 << 24) and not v & (v - 1) else default


def recover(spool: str | os.PathLike, output: str | os.PathLike | None = None
            ) -> tuple[Path, int]:
    """Write the spool of a dead session as a trace.dat (marked truncated, so every
    report says so), then remove the spool.  Returns (output path, bytes written)."""
    from ftslab.trace.tracedat_write import write_tracedat
    spool = Path(spool)
    if not spool.is_dir():
        raise BadInput(f"{spool} is not a spool directory")
    info = _load_info(spool)
    pid = info.get("pid") if type(info.get("pid")) is int else spool_owner(spool)
    if pid and pid != os.getpid() and pid_alive(pid):
        raise UsageError(f"{spool} belongs to ftslab session {pid}, which is still running",
                         hint=f"stop it (kill -INT {pid}) and it writes its recording "
                              "itself; `ftslab report` can read the spool meanwhile")
    if output is None:
        m = _NAME.match(spool.name)
        if not m:
            raise UsageError(f"give the output file with -o (cannot tell it from {spool})")
        output = spool.parent / m.group("base")
    output = Path(output)
    if output.exists():
        raise UsageError(f"{output} exists: give another output file with -o")
    td = read_spool(spool)
    page = td.buffer_page_size
    sources = {}
    for cpu, raw in sorted(_raw_files(spool).items()):
        size = raw.stat().st_size
        if size % page:
            # the dead session's page cut short: never decodable, drop it for good
            os.truncate(raw, size - size % page)
        if size >= page:
            sources[cpu] = raw
    extra = {}
    frees = (td.ftslab or {}).get("frees_buffer")
    if isinstance(frees, str) and frees and (spool / frees).is_dir():
        extra[frees] = {}
        for cpu, raw in sorted(_raw_files(spool / frees).items()):
            size = raw.stat().st_size
            if size % page:
                os.truncate(raw, size - size % page)
            if size >= page:
                extra[frees][cpu] = raw
    td.ftslab = dict(td.ftslab or {}, truncated=td.truncated_detail)
    td.cpu_data = {}
    tmp = None
    try:
        fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp",
                                    dir=output.resolve().parent)
        os.close(fd)
        tmp = Path(name)
        n = write_tracedat(tmp, td, cpu_sources=sources, extra_buffers=extra)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as exc:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {output}: {exc.strerror}; {spool} is kept") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(spool, ignore_errors=True)
    if pid:
        registry_remove(pid)
    return output, n


# ----------------------------------------------------------------------------- finding

def orphans_next_to(output: str | os.PathLike) -> list[tuple[Path, int]]:
    """(spool, owner pid) of every spool of ``output`` whose owner is dead."""
    return [(p, pid) for p, pid, alive in spools_next_to(output) if not alive]


def spools_next_to(output: str | os.PathLike) -> list[tuple[Path, int, bool]]:
    """(spool, owner pid, owner alive) of every spool directory of ``output``."""
    output = Path(output)
    parent = output.parent if str(output.parent) else Path(".")
    out = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in sorted(names):
        m = _NAME.match(name)
        if m and m.group("base") == output.name:
            pid = int(m.group("pid"))
            if (parent / name).is_dir():
                out.append((parent / name, pid, pid_alive(pid)))
    return out


def run_dir() -> Path:
    return Path(os.environ.get("FTSLAB_RUN_DIR") or "/run/ftslab")


def registry_add(pid: int, spool: Path) -> None:
    """Note where session ``pid`` spools (best effort: no registry, no note)."""
    d = run_dir()
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = d / str(pid)
        if link.is_symlink():
            link.unlink()
        os.symlink(os.path.abspath(spool), link)
    except OSError:
        pass


def registry_remove(pid: int) -> None:
    try:
        (run_dir() / str(pid)).unlink()
    except OSError:
        pass


def registry_orphans() -> list[tuple[int, Path]]:
    """(owner pid, spool) of registered sessions that are dead; entries whose spool is
    gone are dropped."""
    d = run_dir()
    out = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid_alive(pid):
            continue
        try:
            target = Path(os.readlink(d / name))
        except OSError:
            continue
        if target.is_dir():
            out.append((pid, target))
        else:
            registry_remove(pid)
    return out
