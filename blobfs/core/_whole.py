"""Whole-file cache entries for files read front to back: one entry instead of one per chunk.

A chunked file read sequentially from its first byte (``cat``, ``cp``, a loader streaming a
big file) would otherwise leave one content-cache entry per chunk: a GiB is 1,024 files to
create, and reading it back warm means opening and reading 1,024 files scattered over the disk
(measured with 102 MiB: 426 MB/s per chunk file against 638 MB/s from one file, read and
verified in 1 MiB pieces). So the readahead of such a reader (``_prefetch.py``) gives each
verified chunk, in order, to a :class:`WholeFileStream`, which appends it to one entry keyed
by the file's SHA-256 (``entry.hash``: the entry *is* the file's content, so every path that
looks a file up by its hash finds it), committed once the last chunk is in. Readers of a
whole-file entry verify each chunk they take from it against the chunk table
(:meth:`~blobfs.core._content.ContentCache.get_chunks`), so nothing unverified is served.

Nothing the reader read is lost when it stops early, seeks away or skips a chunk: the stream
is abandoned, and the chunks it had written are read back from its temp file and stored as
chunk entries, as they would have been without it; the chunks after that are stored one by
one. (Chunks a streaming window loaded ahead but the reader never took are not stored: its
groups leave storing to the stream.) The appends, the commit and the read-back all run in the
content cache's writer thread (write-behind), so a reader never waits for the disk.

Concurrency: :meth:`WholeFileStream.feed` and :meth:`WholeFileStream.abandon` are called by
the one file object owning the stream (its reads are serialised); :meth:`WholeFileStream.run`
by the writer thread, one operation at a time, in the order they were queued.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING, Protocol

from ._types import Entry

if TYPE_CHECKING:
    from ._content import ContentCache, QueueCredit

__all__ = ["StreamOp", "WholeFileStream"]

logger = logging.getLogger(__name__)


_BROKEN = -1
"""``_stored`` once the temp file is gone (spilled): later chunks are stored one by one."""
_EXISTS = -2
"""``_stored`` when the whole-file entry turned out to exist: later chunks are dropped."""


class StreamOp(enum.Enum):
    APPEND = "append"
    COMMIT = "commit"
    ABORT = "abort"


class _Writer(Protocol):
    """What a cache's ``open_writer`` returns (:class:`~blobfs.core.cache.disk.EntryWriter`)."""

    size: int

    def write(self, data: bytes | memoryview) -> bool: ...
    def read_back(self, offset: int, length: int) -> bytes | None: ...
    def commit(self) -> bool: ...
    def discard(self) -> None: ...


class WholeFileStream:
    """The whole-file entry of ``entry`` being written (see the module docstring)."""

    __slots__ = ("_content", "_next", "_open", "_stored", "_writer", "entry")

    def __init__(self, content: ContentCache, entry: Entry) -> None:
        self._content = content
        self.entry = entry
        self._next = 0  # the chunk to append next (reader side)
        self._open = True  # neither complete nor abandoned (reader side)
        self._writer: _Writer | None = None  # writer side, made on the first append
        self._stored = 0  # chunks appended to the writer (writer side)

    # ------------------------------------------------------------------ the reader's side

    def feed(self, k: int, data: bytes | memoryview, credit: QueueCredit | None = None) -> None:
        """Chunk ``k``, verified, as the reader takes it: appended when it is the next one,
        else stored on its own (and the stream abandoned when chunks would be missing); queued
        against ``credit`` first, the room its readahead group set aside. Never waits and never
        raises."""
        if k < self._next:
            return  # read again (a seek back): appended already
        if (
            self._open
            and k == self._next
            and self._content.queue_stream_op(self, StreamOp.APPEND, data, k, credit)
        ):
            self._next += 1
            if self._next == self.entry.num_chunks:
                self._open = False
                self._content.queue_stream_op(self, StreamOp.COMMIT)
            return
        if self._open:
            why = "the write queue is full" if k == self._next else f"chunk {self._next} skipped"
            logger.debug("%s: whole-file entry abandoned at chunk %d (%s)", self.entry.path, k, why)
        self.abandon()
        self._content.put_bytes(self.entry.chunk_hash(k), data, credit=credit)

    def abandon(self) -> None:
        """No more chunks will come in order: what was appended is stored as chunk entries.
        Idempotent, and a no-op once the last chunk was appended."""
        if self._open:
            self._open = False
            self._content.queue_stream_op(self, StreamOp.ABORT)

    # ------------------------------------------------------------------ the writer's side

    def run(self, op: StreamOp, data: bytes | memoryview | None, k: int) -> None:
        """Carry out one queued operation (the writer thread, or the caller once write-behind
        has stopped). Cache failures are logged by the cache, never raised."""
        if op is StreamOp.APPEND:
            assert data is not None
            self._append(data, k)
        elif op is StreamOp.COMMIT:
            writer, self._writer = self._writer, None
            if writer is not None and self._stored == self.entry.num_chunks:
                writer.commit()
                self._content.found_whole(self.entry.hash)
            elif writer is not None:
                self._spill(writer)
        else:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._spill(writer)

    def _append(self, data: bytes | memoryview, k: int) -> None:
        if self._stored == _EXISTS:
            return
        if self._stored != k:  # an earlier append failed: this one is stored on its own
            self._content.store_now(self.entry.chunk_hash(k), data)
            return
        writer = self._writer
        if writer is None and k == 0:
            writer = self._writer = self._content.open_writer(self.entry.hash)
            if writer is None and self._content.has(self.entry.hash):
                # Stored meanwhile (another mount, another reader): nothing more to write.
                self._stored = _EXISTS
                return
        if writer is None:  # no entry could be started (the disk failed: logged)
            self._content.store_now(self.entry.chunk_hash(k), data)
            return
        if writer.write(data):
            self._stored += 1
            return
        self._writer = None
        self._spill(writer)
        self._content.store_now(self.entry.chunk_hash(k), data)

    def _spill(self, writer: _Writer) -> None:
        """Store the chunks written so far as chunk entries, then delete the temp file."""
        try:
            entry = self.entry
            for j in range(self._stored):
                lo, hi = entry.chunk_bounds(j)
                data = writer.read_back(lo, hi - lo)
                if data is None:
                    logger.debug("%s: chunk %d could not be read back", entry.path, j)
                    continue
                self._content.store_now(entry.chunk_hash(j), data)
        finally:
            self._stored = _BROKEN
            writer.discard()
