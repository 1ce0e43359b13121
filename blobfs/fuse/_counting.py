"""Counters on a mount's read path: bytes fetched from the origin, content-cache hits.

A mounted registry archive reads through the content cache only (verified files and chunks),
not the block cache: every byte the mount verifies needs its whole file or chunk anyway, which
the content cache keeps, so blocks would store the same bytes a second time and round small
fetches up to 64 KiB blocks (a cold 23 KB file would cost 64-128 KiB). The counters the block
cache would have kept are kept here instead:

- :class:`FetchCounter` has the shape of a :class:`~blobfs.core.cache.BlockCache` (the archive
  calls its ``wrap``), caches nothing, and wraps the data source in a :class:`CountingSource`,
  whose ``stats`` count the requests and bytes that reached the origin;
- :class:`CountingCache` wraps the content cache and counts lookups that hit or missed.

Both are safe from any thread (readahead and prefetch threads read at once).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import BinaryIO

from ..core import ByteSource
from ..core._steps import Progress, WritableBuffer
from ..core.cache import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BLOCKS_PER_READ, Cache
from ..errors import SourceError

__all__ = ["CountingCache", "CountingSource", "FetchCounter", "FetchStats"]


@dataclass(frozen=True, slots=True)
class FetchStats:
    """What reached the origin (named as in :class:`~blobfs.core.cache.CacheStats`)."""

    source_requests: int
    source_bytes: int


class CountingSource:
    """A :class:`~blobfs.core.ByteSource` passing reads to ``source`` and counting them; owns
    ``source`` (closing this closes it)."""

    __slots__ = ("_bytes", "_lock", "_requests", "source")

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._requests = 0
        self._bytes = 0

    @property
    def size(self) -> int:
        return self.source.size

    @property
    def source_id(self) -> str:
        return self.source.source_id

    @property
    def stats(self) -> FetchStats:
        with self._lock:
            return FetchStats(self._requests, self._bytes)

    def _count(self, n: int) -> None:
        with self._lock:
            self._requests += 1
            self._bytes += n

    def invalidate(self, offset: int, length: int) -> bool:
        """The wrapped source's ``invalidate`` (a failover source moves on), False without."""
        invalidate = getattr(self.source, "invalidate", None)
        return bool(invalidate(offset, length)) if invalidate is not None else False

    def read_at(self, offset: int, length: int) -> bytes:
        data = self.source.read_at(offset, length)
        self._count(len(data))
        return data

    def read_into(
        self, offset: int, buffer: WritableBuffer, progress: Progress | None = None
    ) -> None:
        """The wrapped source's ``read_into`` (or ``read_at``, copied in), counted."""
        read_into = getattr(self.source, "read_into", None)
        if read_into is None:
            data = self.source.read_at(offset, len(buffer))
            if len(data) != len(buffer):
                raise SourceError(
                    f"{self.source_id}: read of {len(buffer)} bytes at offset {offset} "
                    f"returned {len(data)} bytes"
                )
            memoryview(buffer).cast("B")[:] = data
            if progress is not None:
                progress(len(buffer))
        else:
            read_into(offset, buffer, progress)
        self._count(len(buffer))

    async def aread_at(self, offset: int, length: int) -> bytes:
        data = await self.source.aread_at(offset, length)
        self._count(len(data))
        return data

    def close(self) -> None:
        self.source.close()

    def __repr__(self) -> str:
        return f"CountingSource({self.source!r})"


class FetchCounter:
    """Stands where a block cache would (``Archive(block_cache=...)``): wraps the source in a
    :class:`CountingSource` and stores nothing."""

    __slots__ = ()

    def wrap(
        self,
        source: ByteSource,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_blocks_per_read: int = DEFAULT_MAX_BLOCKS_PER_READ,
    ) -> ByteSource:
        return CountingSource(source)

    def max_bytes(self) -> int:
        return 0

    def size_bytes(self) -> int:
        return 0

    def prune(self, target_bytes: int) -> int:
        return 0

    def close(self) -> None:
        """Nothing to close (the source it wrapped is closed with the archive)."""


class CountingCache:
    """A content :class:`~blobfs.core.cache.Cache` that counts lookups (``hits``/``misses``);
    closing it closes the wrapped cache."""

    __slots__ = ("_inner", "_lock", "hits", "misses")

    def __init__(self, inner: Cache) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, digest: bytes) -> BinaryIO | None:
        f = self._inner.get(digest)
        with self._lock:
            if f is None:
                self.misses += 1
            else:
                self.hits += 1
        return f

    def put(self, digest: bytes, f: BinaryIO) -> None:
        self._inner.put(digest, f)

    def put_bytes(self, digest: bytes, data: bytes | memoryview) -> None:
        """The inner cache's ``put_bytes`` when it has one (no copy through a file object)."""
        put_bytes = getattr(self._inner, "put_bytes", None)
        if put_bytes is None:
            self._inner.put(digest, io.BytesIO(data))
        else:
            put_bytes(digest, data)

    def open_writer(self, digest: bytes) -> object | None:
        """The inner cache's ``open_writer`` (entries written in pieces), None without one."""
        open_writer = getattr(self._inner, "open_writer", None)
        return None if open_writer is None else open_writer(digest)

    def delete(self, digest: bytes) -> None:
        self._inner.delete(digest)

    def max_bytes(self) -> int:
        return self._inner.max_bytes()

    def size_bytes(self) -> int:
        return self._inner.size_bytes()

    def prune(self, target_bytes: int) -> int:
        return self._inner.prune(target_bytes)

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"CountingCache({self._inner!r})"
