"""File objects over one archive entry: verified random access, sync and async.

Both file classes share :class:`_FileCore`, whose read algorithm is a step generator
(``_steps.py``) run by the sync or the async driver. Access differs by entry kind:

- **chunked entries** (blobfs chunk table): a random read loads just the chunks it touches
  (content-cache hits first, then one coalesced range per run of misses), verifies each chunk
  against the table, and keeps the last chunk so sequential small reads do not reload it. A
  sequential reader gets readahead (``_prefetch.py``): large ranges loaded and verified ahead of
  it in the archive's thread pool, at most ``READAHEAD_BYTES`` per file;
- **v1 entries** (whole-file hash only): the first read loads the verified content, and every
  read is served from it. Content up to :data:`SPOOL_MEMORY` is kept as one ``bytes`` object
  (from a batch loaded ahead by ``_scan.py``, else the content cache, else fetched and decoded
  whole; a read of the whole file returns that object itself, without a copy); bigger content
  goes to a spool (a temporary file), copied from the content cache while being hashed, or
  streamed from the source through the verifying decoder (the next 8 MiB piece fetched in the
  readahead pool while one is decoded) and then offered to the cache. What is served never
  changes after it was verified: it lives in this process's memory or its own spool file, not
  in the data file or a cache file.

No byte reaches the caller before the hash covering it matched. Streaming reads have no size
limit (``max_file_size`` applies to whole-file reads only).
"""

from __future__ import annotations

import io
import os
import tempfile
from concurrent.futures import Future
from typing import TYPE_CHECKING, Final

from ._aio import checkpoint
from ._closing import AsyncClosing
from ._content import ContentCache
from ._decode import MAX_FETCH, Buffer, PayloadDecoder, check_extent
from ._prefetch import Readahead, ReadaheadPool
from ._scan import ScanAhead
from ._source import ByteSource
from ._steps import (
    Steps,
    Wait,
    arun_steps,
    chunk_steps,
    read_whole_steps,
    refetch_once,
    run_steps,
    stream_payload,
)
from ._types import Entry

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

    from .cache import Cache

__all__ = ["SPOOL_MEMORY", "ArchiveFile", "AsyncArchiveFile"]

SPOOL_MEMORY: Final = 8 << 20
"""A verified v1 file up to 8 MiB stays in memory; a bigger one goes to a temporary file, so
streaming a multi-GiB v1 file costs disk, not RAM."""


class _FileCore:
    """Position, kept chunk, spool, readahead window and the read algorithm shared by the sync
    and async file objects.

    Not thread-safe: the owning file object serialises calls.
    """

    __slots__ = (
        "_chunk",
        "_content",
        "_pool",
        "_ra",
        "_scan",
        "_source",
        "_source_size",
        "_spool",
        "closed",
        "entry",
        "pos",
    )

    def __init__(
        self,
        entry: Entry,
        source: ByteSource,
        cache: Cache | None,
        pool: ReadaheadPool | None,
        scan: ScanAhead | None = None,
    ) -> None:
        self.entry = entry
        self._source = source
        self._source_size = source.size
        self._pool = pool
        self._scan = scan
        self._content = ContentCache.of(cache)
        self._ra = (
            Readahead(entry, source, self._content, pool)
            if pool is not None and entry.chunked
            else None
        )
        self.pos = 0
        self.closed = False
        self._chunk: tuple[int, Buffer] | None = None  # (index, verified content) of last chunk
        # v1 entries: the verified content, in memory or (big files) in a spool file
        self._spool: Buffer | tempfile.SpooledTemporaryFile[bytes] | None = None

    @property
    def readahead(self) -> Readahead | None:
        return self._ra

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
            kept = self._chunk[0] if self._chunk is not None else -1
            ra = self._ra
            return all(
                k == kept or (ra is not None and ra.ready(k))
                for k in range(start // cs, (end - 1) // cs + 1)
            )
        if isinstance(self._spool, bytes | memoryview):
            return True
        return self._spool is None and self._scan is not None and self._scan.ready(self.entry)

    def take_scanned(self) -> bool:
        """Make sure content :meth:`in_memory` promised from a finished scan batch is held;
        False when another reader took it first (the read must then go the ordinary way)."""
        if self.entry.chunked or self._spool is not None or self._scan is None:
            return True
        got = self._scan.claim(self.entry)
        if isinstance(got, bytes | memoryview):
            self._spool = got
            return True
        return False

    def read_steps(self, size: int) -> Steps[Buffer]:
        """Read up to ``size`` bytes (all the rest if negative) at the position, and advance.

        A failed read leaves the position and the verified state as they were, so it can run
        again from the origin after a bad cached block was dropped (``refetch_once``).
        """
        return refetch_once(self._source, self.entry, lambda: self._read_once(size))

    def _read_once(self, size: int) -> Steps[Buffer]:
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

    def _read_chunked(self, start: int, end: int) -> Steps[Buffer]:
        entry = self.entry
        cs = entry.chunk_size
        last = (end - 1) // cs
        ra = self._ra
        if ra is not None:
            ra.begin(start, end)
        parts: list[Buffer] = []
        pos = start
        while pos < end:
            k = pos // cs
            data: Buffer | None = None
            if self._chunk is not None and self._chunk[0] == k:
                data = self._chunk[1]
            elif ra is not None and (group := ra.group_for(k)) is not None:
                fut = group.chunks[k - group.first]
                if not fut.done():
                    yield Wait(fut)
                data = ra.take(group, k)
                if data is None:  # the readahead failed: read this chunk the ordinary way
                    chunks = yield from self._load_chunks(k, k + 1)
                    data = chunks[0]
            if data is None:
                # At most MAX_FETCH of content (at least one chunk) per round, so a large read
                # is loaded in big coalesced ranges while its memory stays bounded.
                chunks = yield from self._load_chunks(k, min(last + 1, k + max(1, MAX_FETCH // cs)))
                for chunk in chunks[:-1]:
                    part = chunk[pos - k * cs : end - k * cs]
                    parts.append(part)
                    pos += len(part)
                    k += 1
                data = chunks[-1]
            piece = data[pos - k * cs : end - k * cs]
            parts.append(piece)
            pos += len(piece)
            self._chunk = (k, data)
        if ra is not None:
            ra.finish(pos)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _load_chunks(self, first: int, end: int) -> Steps[list[Buffer]]:
        check_extent(self.entry, self._source_size)
        return (yield from chunk_steps(self.entry, first, end, self._content))

    def _read_spooled(self, start: int, end: int) -> Steps[Buffer]:
        spool = self._spool
        if spool is None:
            spool = self._spool = yield from self._load_whole()
        if isinstance(spool, bytes | memoryview):
            return spool if start == 0 and end >= len(spool) else spool[start:end]
        spool.seek(start)
        return spool.read(end - start)

    def _load_whole(self) -> Steps[Buffer | tempfile.SpooledTemporaryFile[bytes]]:
        entry = self.entry
        scan = self._scan
        if scan is not None:
            got = scan.claim(entry)
            if isinstance(got, Future):  # a batch is loading it: wait rather than fetch again
                yield Wait(got)
                got = scan.claim(entry)
            if isinstance(got, bytes | memoryview):
                return got
        if entry.original_size <= SPOOL_MEMORY:
            return (
                yield from read_whole_steps(
                    entry, self._source_size, self._content, self._pool, self._source
                )
            )
        return (yield from self._load_spool())

    def _new_spool(self) -> tempfile.SpooledTemporaryFile[bytes]:
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY, prefix="blobfs-")

    def _load_spool(self) -> Steps[tempfile.SpooledTemporaryFile[bytes]]:
        entry = self.entry
        check_extent(entry, self._source_size)
        content = self._content
        size = entry.original_size
        if content is not None and size > 0:
            spool = self._new_spool()
            if content.copy_verified(entry.hash, size, entry.path, spool.write):
                return spool
            spool.close()  # a miss, or a corrupt entry (deleted): read the source
        # Not a with-block: the spool outlives this step; it is closed on error below, else by
        # close().
        spool = self._new_spool()
        try:
            dec = PayloadDecoder.for_entry(entry, sink=spool.write)
            yield from stream_payload(entry, dec.feed, self._pool, self._source)
            dec.finish()
        except BaseException:
            # Nothing unverified may be kept: the next read starts over.
            spool.close()
            raise
        if content is not None and content.fits(size):
            spool.seek(0)
            content.put_file(entry.hash, spool)
        return spool

    def close(self) -> None:
        self.closed = True
        self._chunk = None
        if self._ra is not None:
            self._ra.discard()
        spool, self._spool = self._spool, None
        if spool is not None and not isinstance(spool, bytes | memoryview):
            spool.close()


def _as_bytes(data: Buffer) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


class _Described:
    """What both file objects say about the file they read."""

    __slots__ = ()
    _core: _FileCore

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


class ArchiveFile(_Described, io.RawIOBase):
    """A read-only, seekable binary file over one archive entry (see the module docstring).

    ``read(n)`` returns exactly ``min(n, size - position)`` bytes, all verified. Errors:
    :class:`~blobfs.errors.HashMismatch` / :class:`~blobfs.errors.IntegrityError` for bad content,
    :class:`~blobfs.errors.SourceError` when the data source fails; the position does not move
    on an error.

    ``cache`` is the content cache (see the module docstring); ``pool`` is the archive's
    readahead pool (None: no readahead); ``scan`` the archive's loader of files ahead of a
    program reading in order (``_scan.py``). :meth:`Archive.open` passes them.

    Concurrency: like any file object, one thread at a time; open the path again for parallel
    readers (file objects are cheap, the archive is shared). Readahead groups load in the pool's
    threads; :meth:`close` drops them (running ones finish in the background, unused).
    """

    def __init__(
        self,
        entry: Entry,
        source: ByteSource,
        *,
        cache: Cache | None = None,
        pool: ReadaheadPool | None = None,
        scan: ScanAhead | None = None,
    ) -> None:
        super().__init__()
        self._core = _FileCore(entry, source, cache, pool, scan)
        self._source = source

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

    def read(self, size: int | None = -1, /) -> bytes:
        return _as_bytes(self.read_buffer(-1 if size is None else size))

    def read_buffer(self, size: int = -1) -> Buffer:
        """:meth:`read`, answered with ``bytes`` or a read-only ``memoryview`` of verified
        content the file object holds (no copy: what the mount hands the kernel)."""
        self._check_open()
        return run_steps(self._core.read_steps(size), self._source)

    def read_ready(self, size: int = -1) -> Buffer | None:
        """:meth:`read_buffer` if it can be served from memory (the kept chunk, finished
        readahead, content in memory), else None without doing anything: never fetches, waits
        or touches the content cache, so an event loop may call it (the mount answers most
        reads of a sequential stream this way, without a thread hop)."""
        self._check_open()
        core = self._core
        if not core.in_memory(size) or not core.take_scanned():
            return None
        return run_steps(core.read_steps(size), self._source)

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


class AsyncArchiveFile(_Described, AsyncClosing):
    """The async twin of :class:`ArchiveFile`, for trio or asyncio code.

    Same algorithm and guarantees; fetches go through ``source.aread_at`` and decoding and
    hashing run in worker threads, so the event loop keeps serving other tasks.

    ``cache`` and ``pool`` as for :class:`ArchiveFile`: readahead groups load in the pool's
    threads (blocking ``source.read_at``), and a read waiting for one awaits it without holding a
    thread or blocking the loop.

    Concurrency: one task at a time; a second task calling :meth:`read` or :meth:`seek` while a
    read is in progress gets ``RuntimeError`` (open the path again for parallel readers).
    Cancelling a read leaves the position unchanged.
    """

    def __init__(
        self,
        entry: Entry,
        source: ByteSource,
        *,
        cache: Cache | None = None,
        pool: ReadaheadPool | None = None,
        scan: ScanAhead | None = None,
    ) -> None:
        self._core = _FileCore(entry, source, cache, pool, scan)
        self._source = source
        self._busy = False

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
            # Served from the kept chunk, finished readahead groups or the in-memory spool: the
            # same algorithm, run here, because a worker-thread hop (tens to hundreds of
            # microseconds) would cost far more than the copy. It cannot fetch, wait or touch
            # the content cache, so the sync driver never blocks the loop.
            await checkpoint()
            self._enter()  # the checkpoint may have let another task in
            if self._core.in_memory(size) and self._core.take_scanned():
                return _as_bytes(run_steps(self._core.read_steps(size), self._source))
        self._busy = True
        try:
            return _as_bytes(await arun_steps(self._core.read_steps(size), self._source))
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

    def __repr__(self) -> str:
        return f"<AsyncArchiveFile {self.name!r} size={self.size}>"
