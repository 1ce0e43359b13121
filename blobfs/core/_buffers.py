"""Buffers the read path fills: big ones as private anonymous maps with huge pages."""

from __future__ import annotations

import contextlib
import mmap
from typing import Final

__all__ = ["MAPPED_MIN", "new_buffer"]

MAPPED_MIN: Final = 1 << 20
"""Buffers from this size on are anonymous memory maps (:func:`new_buffer`)."""

_PRIVATE_MAP: Final = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS


def new_buffer(length: int) -> memoryview:
    """A writable, zeroed buffer of ``length`` bytes for a loader to fill. From
    :data:`MAPPED_MIN` on it is an anonymous memory map, returned to the system as soon as the
    last view of it is gone: glibc would serve such sizes from its heap once a large block was
    freed (its mmap threshold rises to the largest block freed), and a daemon streaming 8-16 MiB
    buffers would keep their high-water mark resident.

    The map is private and asks for transparent huge pages: ``mmap.mmap(-1, n)`` alone is a
    *shared* map, backed by shmem, whose first touch of each 4 KiB page costs a fault and a
    page-cache insertion (measured: filling 16 MiB took 27 ms that way, 4 ms with private huge
    pages); on a busy read path those faults were a third of the daemon's CPU."""
    if length < MAPPED_MIN:
        return memoryview(bytearray(length))
    m = mmap.mmap(-1, length, flags=_PRIVATE_MAP)
    with contextlib.suppress(AttributeError, OSError):  # no THP (not Linux, or disabled)
        m.madvise(mmap.MADV_HUGEPAGE)
    return memoryview(m)
