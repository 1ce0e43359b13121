"""File objects over one archive entry: verified random access, sync and async.

Both file classes share :class:`_FileCore`, whose read algorithm is a step generator
(``_steps.py``) run by the sync or the async driver. Access differs by entry kind:

- **chunked entries** (blobfs chunk table): a read fetches the payload of just the chunks it
  touches (one coalesced range per window), verifies each chunk against the table, and keeps the
  last decoded chunk so sequential small reads do not refetch it;
- **v1 entries** (whole-file hash only): the first read streams the whole payload through the
  verifying decoder into a spool (memory up to :data:`SPOOL_MEMORY`, then a temporary file), and
  every read is served from that verified copy. Raw payloads are copied too: the data file could
  change after verification, the spool cannot.

No byte reaches the caller before the hash covering it matched. Streaming reads have no size
limit (``max_file_size`` applies to whole-file reads only).
"""

from __future__ import annotations

import io
import os
import tempfile
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from ._aio import checkpoint
from ._decode import MAX_FETCH, PayloadDecoder, check_extent, decode_chunks, plan, split_range
from ._source import ByteSource
from ._steps import Steps, arun_steps, fetch, run_steps
from ._types import Entry

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["SPOOL_MEMORY", "ArchiveFile", "AsyncArchiveFile"]

SPOOL_MEMORY: Final = 8 << 20
"""A verified v1 file up to 8 MiB stays in memory; a bigger one rolls over to a temporary file, so
streaming a multi-GiB v1 file costs disk, not RAM."""


class _FileCore:
    """Position, caches and the read algorithm shared by the sync and async file objects.

    Not thread-safe: the owning file object serialises calls.
    """

    __slots__ = ("_chunk", "_source_size", "_spool", "closed", "entry", "pos")

    def __init__(self, entry: Entry, source_size: int) -> None:
        self.entry = entry
        self._source_size = source_size
        self.pos = 0
        self.closed = False
        self._chunk: tuple[int, bytes] | None = None  # (index, verified content) of last chunk
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None

    def seek(self, offset: int, whence: int) -> int:
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self.pos + offset
        elif whence == os.SEEK_END:
            pos = self.entry.original_size + offset
        else:
            raise ValueError(f"invalid whence ({whence}; expected SEEK_SET, SEEK_CUR or SEEK_END)")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self.pos = pos
        return pos

    def in_memory(self, size: int) -> bool:
        """Whether a read of ``size`` bytes is served from memory: no fetch, no file I/O."""
        start = self.pos
        end = self.entry.original_size if size < 0 else min(self.entry.original_size, start + size)
        if start >= end:
            return True
        if self.entry.chunked:
            cs = self.entry.chunk_size
            return self._chunk is not None and self._chunk[0] == start // cs == (end - 1) // cs
        # A spool no bigger than SPOOL_MEMORY never rolls over to disk.
        return self._spool is not None and self.entry.original_size <= SPOOL_MEMORY

    def read_steps(self, size: int) -> Steps[bytes]:
        """Read up to ``size`` bytes (all the rest if negative) at the position, and advance."""
        start = self.pos
        end = self.entry.original_size if size < 0 else min(self.entry.original_size, start + size)
        if start >= end:
            return b""
        if self.entry.chunked:
            data = yield from self._read_chunked(start, end)
        else:
            data = yield from self._read_spooled(start, end)
        self.pos = start + len(data)
        return data

    def _read_chunked(self, start: int, end: int) -> Steps[bytes]:
        entry = self.entry
        cs = entry.chunk_size
        parts: list[bytes] = []
        pos = start
        while pos < end:
            k = pos // cs
            if self._chunk is not None and self._chunk[0] == k:
                data = self._chunk[1]
                piece = data[pos - k * cs : end - k * cs]
                parts.append(piece)
                pos += len(piece)
                continue
            # One fetch covers at most MAX_FETCH content bytes (at least one chunk), so a large
            # read is coalesced into big ranges while its memory stays bounded.
            p = plan(entry, pos, min(end - pos, max(MAX_FETCH, cs)))
            check_extent(entry, self._source_size)
            payload = yield from fetch(p.offset, p.length)
            chunks = decode_chunks(entry, p.first_chunk, payload)
            for i, data in enumerate(chunks):
                base = (p.first_chunk + i) * cs
                piece = data[max(pos, base) - base : end - base]
                parts.append(piece)
                pos += len(piece)
            self._chunk = (p.end_chunk - 1, chunks[-1])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_spooled(self, start: int, end: int) -> Steps[bytes]:
        if self._spool is None:
            self._spool = yield from self._load_spool()
        self._spool.seek(start)
        return self._spool.read(end - start)

    def _load_spool(self) -> Steps[tempfile.SpooledTemporaryFile[bytes]]:
        entry = self.entry
        check_extent(entry, self._source_size)
        # Not a with-block: the spool outlives this step; it is closed on error below, else by
        # close().
        spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_MEMORY, prefix="blobfs-"
        )
        try:
            dec = PayloadDecoder.for_entry(entry, sink=spool.write)
            for off, n in split_range(entry.data_offset, entry.data_size):
                dec.feed((yield from fetch(off, n)))
            dec.finish()
        except BaseException:
            # Nothing unverified may be kept: the next read starts over.
            spool.close()
            raise
        return spool

    def close(self) -> None:
        self.closed = True
        self._chunk = None
        if self._spool is not None:
            self._spool.close()
            self._spool = None


class ArchiveFile(io.RawIOBase):
    """A read-only, seekable binary file over one archive entry (see the module docstring).

    ``read(n)`` returns exactly ``min(n, size - position)`` bytes, all verified. Errors:
    :class:`~blobfs.errors.HashMismatch` / :class:`~blobfs.errors.IntegrityError` for bad content,
    :class:`~blobfs.errors.SourceError` when the data source fails; the position does not move
    on an error.

    Concurrency: like any file object, one thread at a time; open the path again for parallel
    readers (file objects are cheap, the archive is shared).
    """

    def __init__(self, entry: Entry, source: ByteSource) -> None:
        super().__init__()
        self._core = _FileCore(entry, source.size)
        self._source = source

    @property
    def name(self) -> str:
        """The archive path of the file."""
        return self._core.entry.path

    @property
    def entry(self) -> Entry:
        return self._core.entry

    @property
    def size(self) -> int:
        return self._core.entry.original_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def read(self, size: int | None = -1, /) -> bytes:
        self._check_open()
        return run_steps(self._core.read_steps(-1 if size is None else size), self._source)

    def readall(self) -> bytes:
        return self.read(-1)

    def read1(self, size: int = -1, /) -> bytes:
        return self.read(size)

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as view, view.cast("B") as out:
            data = self.read(len(out))
            out[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        self._check_open()
        return self._core.seek(offset, whence)

    def tell(self) -> int:
        self._check_open()
        return self._core.pos

    def close(self) -> None:
        # IOBase.close() may run from __del__ during interpreter shutdown: keep this minimal.
        if not self.closed:
            self._core.close()
        super().close()

    def __repr__(self) -> str:
        return f"<ArchiveFile {self.name!r} size={self.size}>"


class AsyncArchiveFile:
    """The async twin of :class:`ArchiveFile`, for trio or asyncio code.

    Same algorithm and guarantees; fetches go through ``source.aread_at`` and decoding and
    hashing run in worker threads, so the event loop keeps serving other tasks.

    Concurrency: one task at a time; a second task calling :meth:`read` or :meth:`seek` while a
    read is in progress gets ``RuntimeError`` (open the path again for parallel readers).
    Cancelling a read leaves the position unchanged.
    """

    def __init__(self, entry: Entry, source: ByteSource) -> None:
        self._core = _FileCore(entry, source.size)
        self._source = source
        self._busy = False

    @property
    def name(self) -> str:
        return self._core.entry.path

    @property
    def entry(self) -> Entry:
        return self._core.entry

    @property
    def size(self) -> int:
        return self._core.entry.original_size

    @property
    def closed(self) -> bool:
        return self._core.closed

    def _enter(self) -> None:
        if self._core.closed:
            raise ValueError("I/O operation on closed file")
        if self._busy:
            raise RuntimeError("another task is already using this file")

    async def read(self, size: int = -1) -> bytes:
        """Up to ``size`` verified bytes from the position (the rest of the file if negative)."""
        self._enter()
        if self._core.in_memory(size):
            # Served from the kept chunk or the in-memory spool: the same algorithm, run here,
            # because a worker-thread hop (tens to hundreds of microseconds) would cost far more
            # than the copy. It cannot fetch, so the sync driver never touches the source.
            await checkpoint()
            self._enter()  # the checkpoint may have let another task in
            if self._core.in_memory(size):
                return run_steps(self._core.read_steps(size), self._source)
        self._busy = True
        try:
            return await arun_steps(self._core.read_steps(size), self._source)
        finally:
            self._busy = False

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._enter()
        return self._core.seek(offset, whence)

    def tell(self) -> int:
        if self._core.closed:
            raise ValueError("I/O operation on closed file")
        return self._core.pos

    async def aclose(self) -> None:
        """Release the cached chunk and the spool; idempotent."""
        if self._busy:
            raise RuntimeError("cannot close a file while a task is reading it")
        self._core.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncArchiveFile {self.name!r} size={self.size}>"
