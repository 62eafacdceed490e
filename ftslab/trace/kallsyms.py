"""Symbolize kernel addresses from a /proc/kallsyms text captured at record time.

Pure: takes the text, never reads /proc itself.  ``Symbolizer(addr)`` gives
``"sym+0xoff"`` like the kernel's ``%pS`` without the ``/0xsize`` part; ``full=True``
adds ``/0xsize`` (size = distance to the next symbol, as the kernel computes it).
"""
from __future__ import annotations

import numpy as np


__all__ = ["Symbolizer"]


class Symbolizer:
    def __init__(self, text: str):
        # /proc/kallsyms has ~100k+ lines; only a few dozen addresses are ever looked up,
        # so the table is parsed with numpy and names are cut out only on a hit
        # a recording's texts are read with surrogateescape: keep its bytes as they were
        raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)
        self._raw = raw
        self._memo: dict[tuple[int, bool], str | None] = {}
        buf = np.frombuffer(raw, dtype=np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.concatenate(([0], nl + 1))
        ends = np.concatenate((nl, [buf.size]))
        keep = ends - starts > 19
        starts, ends = starts[keep], ends[keep]
        width = 16
        ok = np.zeros(starts.size, dtype=bool)
        if starts.size:
            ok = buf[np.minimum(starts + width, buf.size - 1)] == 32
        starts, ends = starts[ok], ends[ok]
        addrs = np.zeros(starts.size, dtype=np.uint64)
        if starts.size:
            digits = buf[starts[:, None] + np.arange(width)]
            val = np.where(digits <= 57, digits - 48, (digits | 32) - 87).astype(np.uint64)
            if ((val > 15).any()):
                good = (val <= 15).all(axis=1)
                val, starts, ends = val[good], starts[good], ends[good]
            for j in range(width):
                addrs = (addrs << np.uint64(4)) | val[:, j] if j else val[:, 0].copy()
        nz = addrs != 0  # kptr_restrict hides addresses as zeros: nothing to learn
        addrs, starts, ends = addrs[nz], starts[nz], ends[nz]
        # first line at an address wins (aliases at one address are the same code)
        order = np.argsort(addrs, kind="stable")
        addrs, starts, ends = addrs[order], starts[order], ends[order]
        first = np.concatenate(([True], addrs[1:] != addrs[:-1])) if addrs.size else addrs
        self._addrs = addrs[first] if addrs.size else addrs
        self._starts = starts[first] if addrs.size else starts
        self._ends = ends[first] if addrs.size else ends

    def __bool__(self) -> bool:
        return bool(self._addrs.size)

    def _name(self, i: int) -> str:
        """The symbol's name, with `` [module]`` for module code as ``%pS`` prints it."""
        line = self._raw[int(self._starts[i]):int(self._ends[i])].decode("utf-8", "replace")
        parts = line.split()
        name = parts[2] if len(parts) > 2 else "?"
        if len(parts) > 3 and parts[3].startswith("["):
            return f"{name} {parts[3]}"
        return name

    def lookup(self, addr: int) -> tuple[str, int, int] | None:
        """(name, offset, size) of the symbol containing addr, or None."""
        i = int(np.searchsorted(self._addrs, np.uint64(int(addr)), side="right")) - 1
        if i < 0 or i + 1 >= self._addrs.size:
            return None
        start = int(self._addrs[i])
        return self._name(i), int(addr) - start, int(self._addrs[i + 1]) - start

    def __call__(self, addr: int, full: bool = False) -> str | None:
        # a stream asks for the same few thousand call sites again and again: the
        # binary search and the name cut cost more than the rest of a JSON line
        memo = self._memo
        key = (addr, full)
        if key in memo:
            return memo[key]
        hit = self.lookup(addr)
        if hit is None:
            text = None
        else:
            name, off, size = hit
            name, _, module = name.partition(" ")
            text = f"{name}+{off:#x}/{size:#x}" if full else f"{name}+{off:#x}"
            text = f"{text} {module}" if module else text
        if len(memo) >= 1 << 16:
            memo.clear()
        memo[key] = text
        return text
