"""Reading a live instance's pages: the formats that decode them and one raw page at a time.
Shared by stream and top.

It reads the header files through the session's ``Tracefs`` and pages from the raw fds it
is handed; it writes nothing to the kernel.
"""
from __future__ import annotations
from ftslab.trace.formats import parse_format
from ftslab.trace.formats import parse_header_event
from ftslab.trace.formats import parse_header_page
import os

__all__ = ["live_formats", "read_raw_page"]


def live_formats(session) -> tuple:
    """(header_page, header_event, page size, formats by event id) of a live session:
    what decoding its raw pages needs."""
    tracefs = session.tracefs
    hp = parse_header_page(tracefs.read("events/header_page"))
    he = parse_header_event(tracefs.read("events/header_event"))
    fmts = {}
    for (system, _name), text in session.formats.items():
        f = parse_format(text, system)
        fmts[f.id] = f
    return hp, he, hp.data_offset + hp.data_size, fmts


def read_raw_page(fd: int, page_size: int) -> bytes | None:
    """One page (or the part the writer has filled) from a non-blocking trace_pipe_raw;
    None when there is nothing to read now."""
    try:
        page = os.read(fd, page_size)
    except BlockingIOError:
        return None
    return page or None
