"""/proc/slabinfo text, as a recording stores it: parsed into one row per cache.

Pure: never reads /proc (kernel/slabsample.py does); a line that does not read is
counted, never guessed.
"""
from __future__ import annotations
from dataclasses import dataclass
from ftslab.errors import ParseError
import re

__all__ = ["SlabInfo", "SlabinfoSnapshot", "parse_slabinfo", "slabinfo_rows"]


# ----------------------------------------------------------------------------------------
# /proc/slabinfo
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SlabInfo:
    """One line of /proc/slabinfo (version 2.1)."""

    name: str
    active_objs: int
    num_objs: int
    objsize: int
    """Bytes per object, including metadata and padding (the cache's ``size``)."""
    objperslab: int
    pagesperslab: int
    active_slabs: int
    num_slabs: int


class SlabinfoSnapshot(dict):
    """``dict[str, SlabInfo]`` plus ``malformed``: lines that could not be read."""

    malformed: int = 0


def slabinfo_rows(text: str) -> tuple[list[SlabInfo], int]:
    """Every cache line of /proc/slabinfo text, duplicate names included (two caches
    may carry one name: the kernel does not forbid it), and the number of malformed
    lines.  Raises ParseError if the header is not ``slabinfo - version: 2.x``."""
    lines = text.splitlines()
    head = lines[0].strip() if lines else ""
    if not re.fullmatch(r"slabinfo - version: 2\.\d+", head):
        raise ParseError(f"not /proc/slabinfo text: first line is {head[:60]!r}",
                         "expected 'slabinfo - version: 2.1'")
    rows: list[SlabInfo] = []
    malformed = 0
    for line in lines[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            # name 5 numbers ':' tunables 3 numbers ':' slabdata 3 numbers
            if len(parts) != 16 or parts[6] != ":" or parts[11] != ":" or \
                    parts[7] != "tunables" or parts[12] != "slabdata":
                raise ValueError(line)
            nums = [int(x) for x in parts[1:6]]
            slabs = [int(x) for x in parts[13:16]]
        except ValueError:
            malformed += 1
            continue
        rows.append(SlabInfo(parts[0], nums[0], nums[1], nums[2], nums[3], nums[4],
                             slabs[0], slabs[1]))
    return rows, malformed


def parse_slabinfo(text: str) -> dict[str, SlabInfo]:
    """Parse /proc/slabinfo text into one row per name (of two caches with one name,
    the later line; ``slabinfo_rows`` keeps both).  Raises ParseError if the header is
    not ``slabinfo - version: 2.x``; a malformed cache line is skipped and counted in
    the returned mapping's ``malformed`` attribute, never guessed."""
    rows, malformed = slabinfo_rows(text)
    out = SlabinfoSnapshot()
    out.malformed = malformed
    for r in rows:
        out[r.name] = r
    return out
