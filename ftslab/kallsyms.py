"""Symbolize kernel addresses from a /proc/kallsyms text captured at record time.

Pure: takes the text, never reads /proc itself.  ``Symbolizer(addr)`` gives
``"sym+0xoff"`` like the kernel's ``%pS`` without the ``/0xsize`` part; ``full=True``
adds ``/0xsize`` (size = distance to the next symbol, as the kernel computes it).
"""
from __future__ import annotations

import bisect

__all__ = ["Symbolizer"]


class Symbolizer:
    def __init__(self, text: str):
        entries: dict[int, str] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr == 0:
                continue  # kptr_restrict hides addresses: nothing to learn
            # keep the first name at an address (matches kallsyms lookup order closely
            # enough; aliases at one address are the same code)
            entries.setdefault(addr, parts[2])
        self._addrs = sorted(entries)
        self._names = [entries[a] for a in self._addrs]

    def __bool__(self) -> bool:
        return bool(self._addrs)

    def lookup(self, addr: int) -> tuple[str, int, int] | None:
        """(name, offset, size) of the symbol containing addr, or None."""
        i = bisect.bisect_right(self._addrs, int(addr)) - 1
        if i < 0 or i + 1 >= len(self._addrs):
            return None
        start = self._addrs[i]
        return self._names[i], int(addr) - start, self._addrs[i + 1] - start

    def __call__(self, addr: int, full: bool = False) -> str | None:
        hit = self.lookup(addr)
        if hit is None:
            return None
        name, off, size = hit
        return f"{name}+{off:#x}/{size:#x}" if full else f"{name}+{off:#x}"
