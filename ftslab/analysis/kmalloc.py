"""kmalloc's size classes: which cache a kmalloc of n bytes comes from.

Pure arithmetic on the kernel's size-class rules (mm/slab_common.c): the running
kernel's caches are not read here, and the cg-/rcl-/dma- variants of a class, which an
event cannot tell apart, are one class.
"""
from __future__ import annotations

import numpy as np

__all__ = ["kmalloc_size_class", "LARGE_KMALLOC"]


def kmalloc_size_class(bytes_alloc: int, page_size: int = 4096) -> str:
    """Cache name of a kmalloc size, spelled as the kernel does (mm/slab_common.c
    kmalloc_info[]: ``kmalloc-96``, ``kmalloc-1k``); beyond KMALLOC_MAX_CACHE_SIZE
    (2 pages with SLUB) kmalloc uses the page allocator."""
    if bytes_alloc > 2 * page_size:
        return LARGE_KMALLOC
    if bytes_alloc >= 1024 and bytes_alloc % 1024 == 0:
        return f"kmalloc-{bytes_alloc // 1024}k"
    return f"kmalloc-{bytes_alloc}"


#: kmalloc size classes (mm/slab_common.c kmalloc_info[], SLUB with 8-byte minimum)
_KMALLOC_CLASSES = (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)


def kmalloc_round_up(size: int, page_size: int = 4096) -> int:
    """The kmalloc class a request of ``size`` bytes is served from (a request above
    2 pages is a large kmalloc: returned unchanged)."""
    if size > 2 * page_size:
        return size
    for c in _KMALLOC_CLASSES:
        if size <= c:
            return c
    return size


def kmalloc_round_up_array(sizes: np.ndarray, page_size: int = 4096) -> np.ndarray:
    """kmalloc_round_up over an array; above 2 pages, whole pages of the power-of-two
    order the page allocator hands out (PAGE_SIZE << get_order(size))."""
    sizes = np.asarray(sizes, dtype=np.int64)
    classes = np.array(_KMALLOC_CLASSES, dtype=np.int64)
    idx = np.searchsorted(classes, np.maximum(sizes, 1))
    small = classes[np.minimum(idx, len(classes) - 1)]
    pages = np.maximum((sizes + page_size - 1) // page_size, 1)
    order = np.ceil(np.log2(pages.astype(np.float64))).astype(np.int64)
    large = np.left_shift(np.int64(page_size), order)
    out = np.where(sizes > 2 * page_size, large, small)
    return np.where(sizes == 0, 0, out)


LARGE_KMALLOC = "(large kmalloc)"
