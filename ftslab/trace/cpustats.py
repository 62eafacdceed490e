"""Per-CPU ring-buffer statistics (per_cpu/cpuN/stats): parsed from their text, as a
session reads them and as a trace.dat stores them.

Pure: text in, ``CpuStats`` out; reading the stats files is ``Instance.cpu_stats``'s.
"""
from __future__ import annotations
from dataclasses import dataclass

__all__ = ["CpuStats", "parse_cpu_stats"]


@dataclass(frozen=True)
class CpuStats:
    """A per_cpu/cpuN/stats snapshot (event counts)."""

    cpu: int
    entries: int
    overrun: int
    """Events overwritten before they were read (overwrite mode)."""
    commit_overrun: int
    dropped: int
    """Events dropped because the buffer was full (overwrite off)."""
    read: int
    text: str

    @property
    def lost(self) -> int:
        return self.overrun + self.commit_overrun + self.dropped


def parse_cpu_stats(cpu: int, text: str) -> CpuStats:
    vals: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, val = line.partition(":")
        if not sep:
            continue
        val = val.strip()
        if val.isdigit():
            vals[key.strip()] = int(val)
    return CpuStats(cpu=cpu, entries=vals.get("entries", 0), overrun=vals.get("overrun", 0),
                    commit_overrun=vals.get("commit overrun", 0),
                    dropped=vals.get("dropped events", 0), read=vals.get("read events", 0),
                    text=text)
