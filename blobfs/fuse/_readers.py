"""The open files of one inode: a few archive file objects shared by every handle on it.

The kernel sends READ requests for one file concurrently: its readahead issues several ranges
of a sequential stream at once, and several processes (or threads) may read the same file. An
:class:`~blobfs.core.ArchiveFile` serves one request at a time and detects a sequential reader
by its position, so :class:`Readers` keeps up to ``limit`` of them per inode and routes
each request:

1. a request starting where a reader's last assigned request ends joins that reader's queue
   (a FIFO lock), so a stream stays on one reader, in order, and keeps its readahead window
   even when the kernel sends the next range before the previous one was answered;
2. otherwise an idle reader takes it (seeking), or a new one when fewer than ``limit`` exist;
3. otherwise the reader with the shortest queue.

v1 entries (no chunk table) are verified whole on first read and then served from memory (or
the file object's spool), so they get one reader: a second would fetch and verify the file again.

Each request costs at most one worker-thread hop: a read the file object can answer from memory
(its kept chunk, finished readahead, a loaded v1 file: most requests of a sequential stream) is
answered on the event loop (:meth:`~blobfs.core.ArchiveFile.read_ready`); any other runs the
whole read algorithm in one worker thread (content-cache lookups, fetches, waiting for
readahead, decoding and verification), instead of one hop per step. Small files of a local
archive are read on the event loop itself (see :data:`INLINE_MAX`).

Concurrency: event-loop thread only (trio). Reads of one reader are serialised by its lock;
reads of different readers run concurrently.
"""

from __future__ import annotations

from typing import Final

import trio

from ..core import Archive, ArchiveFile, Entry, FileSource
from ..core._decode import Buffer

__all__ = ["READERS_PER_FILE", "Readers"]

INLINE_MAX: Final = 64 << 10
"""A file of a local archive up to this size (content and payload) is read and verified on the
event loop itself: a ``pread`` of the page cache and SHA-256 of 64 KiB take tens of
microseconds, less than the hop to a worker thread they would otherwise pay (and a program
reading many small files pays it per file)."""

READERS_PER_FILE: Final = 4
"""File objects per open inode: four random readers of one file proceed in parallel (each
fetch is one range request, so four keep the network busy), and a chunked reader holds at most
about 40 MiB of readahead, so this bounds the memory one file can take."""


class _Reader:
    __slots__ = ("file", "lock", "queued", "tail")

    def __init__(self) -> None:
        self.file: ArchiveFile | None = None  # opened on first use
        self.lock = trio.Lock()
        self.tail = -1  # where the last request given to this reader ends
        self.queued = 0  # requests given to it and not finished


class Readers:
    """The file objects serving one inode (see the module docstring); shared by all handles
    open on it, closed when the last one is released."""

    __slots__ = ("_archive", "_inline", "_readers", "entry", "limit", "refs")

    def __init__(self, archive: Archive, entry: Entry, limit: int = READERS_PER_FILE) -> None:
        self._archive = archive
        self.entry = entry
        self.limit = limit if entry.chunked else 1
        self._inline = (
            isinstance(archive.source, FileSource)
            and not entry.chunked
            and max(entry.original_size, entry.data_size) <= INLINE_MAX
        )
        self._readers: list[_Reader] = []
        self.refs = 0

    def _pick(self, offset: int) -> _Reader:
        readers = self._readers
        for r in readers:
            if r.tail == offset:
                return r
        for r in readers:
            if not r.queued:
                return r
        if len(readers) < self.limit:
            r = _Reader()
            readers.append(r)
            return r
        return min(readers, key=lambda r: r.queued)

    async def read(self, offset: int, size: int) -> Buffer:
        """Up to ``size`` verified bytes at ``offset`` (the caller clamps to the file size): a
        ``bytes`` or a read-only view of content the file object holds (no copy)."""
        r = self._pick(offset)
        r.tail = offset + size
        r.queued += 1
        try:
            async with r.lock:
                f = r.file
                if f is None:
                    f = r.file = self._archive.open_entry(self.entry)  # no I/O until read
                if f.tell() != offset:
                    f.seek(offset)
                data = f.read_ready(size)
                if data is not None:
                    return data
                if self._inline:
                    return f.read_buffer(size)
                return await trio.to_thread.run_sync(f.read_buffer, size)
        finally:
            r.queued -= 1

    async def aclose(self) -> None:
        """Close every file object, waiting for reads in progress to finish first."""
        readers, self._readers = self._readers, []
        for r in readers:
            async with r.lock:
                f, r.file = r.file, None
                if f is not None:
                    f.close()
