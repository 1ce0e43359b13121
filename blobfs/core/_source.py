"""Byte sources: where an archive's data blob is read from.

A source is random access by ``(offset, length)`` with a sync and an async form; the archive
reader uses only :class:`ByteSource`, so a network source (HTTP range requests) or a caching
wrapper plugs in without touching the read path. Sources hand out raw, **unverified** bytes:
verification is the reader's job (``blobfs.core._decode``), never the source's.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Protocol, runtime_checkable

from ..errors import SourceError
from ._aio import run_sync_in_thread
from ._closing import Closing

__all__ = ["ByteSource", "BytesSource", "FileSource", "check_range"]


@runtime_checkable
class ByteSource(Protocol):
    """Random-access reads of one immutable byte string (an archive's data blob).

    Contract for implementations:

    - ``size`` is fixed for the lifetime of the source.
    - ``source_id`` names the content, stably across processes (caches key on it):
      ``"sha256:<hex>"`` when the content digest is known, else something that changes whenever
      the content could (path, size and mtime for a file; URL and ETag for HTTP).
    - ``read_at(offset, length)`` returns exactly ``length`` bytes or raises
      :class:`~blobfs.errors.SourceError`; a range outside ``[0, size]`` is an error that names
      offset, length and size. ``aread_at`` is the same for async callers (trio or asyncio) and
      must not block the event loop.
    - Reads may run concurrently from several threads or tasks; ``close()`` must not race them.
    """

    @property
    def size(self) -> int: ...

    @property
    def source_id(self) -> str: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    async def aread_at(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


def check_range(offset: int, length: int, size: int, name: str) -> None:
    """Raise :class:`SourceError` unless ``[offset, offset+length)`` lies inside ``[0, size]``."""
    if offset < 0 or length < 0 or offset + length > size:
        raise SourceError(
            f"{name}: read of {length} bytes at offset {offset} is outside the source "
            f"({size} bytes)"
        )


class FileSource(Closing):
    """A local file read with ``os.pread`` (no shared file position, so reads are thread-safe).

    ``data_hash`` (the raw 32-byte SHA-256 the index records for the data blob) makes
    ``source_id`` content-addressed, ``"sha256:<hex>"``, like the Go reference; without it the id
    is ``"file:<abspath>:<size>:<mtime_ns>"``. The id is a cache key, not a proof: the content is
    verified when read, whatever the id claims.

    Concurrency: ``read_at``/``aread_at`` may be called from any number of threads and tasks at
    once; ``close()`` must be called once reads have finished. The size is taken when the file is
    opened; a file that shrinks later gives :class:`SourceError` on the missing range.
    """

    __slots__ = ("_fd", "_lock", "_path", "_size", "_source_id")

    def __init__(self, path: str | os.PathLike[str], *, data_hash: bytes | None = None) -> None:
        self._path = os.path.abspath(os.fspath(path))
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SourceError(f"{self._path}: cannot open data file: {e.strerror or e}") from e
        try:
            st = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            raise SourceError(f"{self._path}: cannot stat data file: {e.strerror or e}") from e
        self._fd = fd
        self._lock = threading.Lock()
        self._size = st.st_size
        if data_hash:
            self._source_id = "sha256:" + data_hash.hex()
        else:
            self._source_id = f"file:{self._path}:{st.st_size}:{st.st_mtime_ns}"

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    @property
    def source_id(self) -> str:
        return self._source_id

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self._size, self._path)
        fd = self._fd
        if fd < 0:
            raise SourceError(f"{self._path}: read from a closed data file")
        if length == 0:
            return b""
        try:
            data = os.pread(fd, length, offset)
            if len(data) == length:
                return data
            # Short reads happen near 2 GiB (Linux caps one read) and when the file shrank.
            parts = [data]
            got = len(data)
            while got < length:
                more = os.pread(fd, length - got, offset + got)
                if not more:
                    raise SourceError(
                        f"{self._path}: unexpected end of file at byte {offset + got} "
                        f"(expected {self._size} bytes; was the file truncated?)"
                    )
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except OSError as e:
            raise SourceError(
                f"{self._path}: read of {length} bytes at offset {offset} failed: {e.strerror or e}"
            ) from e

    async def aread_at(self, offset: int, length: int) -> bytes:
        return await run_sync_in_thread(self.read_at, offset, length)

    def close(self) -> None:
        """Close the file descriptor; idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileSource({self._path!r}, size={self._size})"


class BytesSource(Closing):
    """An in-memory data blob (tests, small archives, data already fetched).

    ``source_id`` defaults to ``"sha256:<hex>"`` of the content, computed on first use.

    Concurrency: immutable; any number of threads and tasks may read at once. ``aread_at``
    copies in the calling task without a thread hop: a memory copy is cheaper than the hop.
    """

    __slots__ = ("_closed", "_data", "_source_id")

    def __init__(
        self, data: bytes | bytearray | memoryview, *, source_id: str | None = None
    ) -> None:
        self._data = data if isinstance(data, bytes) else bytes(data)
        self._source_id = source_id
        self._closed = False

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def source_id(self) -> str:
        if self._source_id is None:
            self._source_id = "sha256:" + hashlib.sha256(self._data).hexdigest()
        return self._source_id

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(offset, length, len(self._data), "in-memory data blob")
        if self._closed:
            raise SourceError("in-memory data blob: read after close")
        if offset == 0 and length == len(self._data):
            return self._data
        return self._data[offset : offset + length]

    async def aread_at(self, offset: int, length: int) -> bytes:
        return self.read_at(offset, length)

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"BytesSource(size={len(self._data)})"
