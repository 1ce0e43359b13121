"""Cache interfaces: the content cache and the block cache.

Two caches sit on the read path (ARCHITECTURE.md section 3):

- the **content cache** (:class:`Cache`) holds *verified, uncompressed* content keyed by its
  SHA-256: whole files of entries without a chunk table, and single chunks of chunked entries.
  Keys are content digests, so nothing goes stale and identical content is stored once across
  archives. The reader puts only bytes it has verified, and verifies again what it reads back
  (a corrupted entry is deleted and refetched, never served).
- the **block cache** (:class:`BlockCache`) holds fixed-size blocks of the *raw data blob*,
  keyed by ``source_id`` + block size + block number. It wraps a byte source
  (:meth:`BlockCache.wrap`); what it returns is still unverified payload, which the reader
  verifies like any other source's bytes.

Caches only ever help: a cache read error counts as a miss, a cache write error is logged, and
neither fails a read.

Implementations: :class:`~blobfs.core.cache.MemoryCache` (in-process LRU),
:class:`~blobfs.core.cache.disk.DiskCache` and :class:`~blobfs.core.cache.disk.BlockCache`
(on disk, shared by processes).
"""

from __future__ import annotations

from typing import BinaryIO, Protocol, runtime_checkable

from .._source import ByteSource

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_BLOCKS_PER_READ",
    "BlockCache",
    "Cache",
    "MemoryCache",
]

DEFAULT_BLOCK_SIZE = 64 << 10
"""64 KiB blocks, as the reference: small enough that a random 4 KiB read fetches little, and
large enough that a block costs one file of reasonable size on disk."""

DEFAULT_MAX_BLOCKS_PER_READ = 4
"""A read spanning more blocks than this bypasses the block cache (the reference's default):
large sequential reads are served by range requests and the content cache instead."""


@runtime_checkable
class Cache(Protocol):
    """Content cache: verified content keyed by its raw 32-byte SHA-256 (the seed's six calls).

    - ``get(digest)`` returns a readable binary file positioned at 0, or ``None`` when absent.
      The caller closes it. The content is *not trusted*: the reader re-verifies it.
    - ``put(digest, f)`` stores everything ``f`` yields until EOF (the caller closes ``f``).
      Storing a key that exists is a no-op; content larger than ``max_bytes()`` is not stored.
    - ``delete(digest)``: a missing key is not an error.
    - ``max_bytes()``: the configured limit, 0 = unlimited. ``size_bytes()``: current size.
    - ``prune(target_bytes)``: remove least-recently-used entries until the size is at most
      ``target_bytes``; returns the bytes freed.

    Implementations must be safe to call from several threads at once.
    """

    def get(self, digest: bytes) -> BinaryIO | None: ...

    def put(self, digest: bytes, f: BinaryIO) -> None: ...

    def delete(self, digest: bytes) -> None: ...

    def max_bytes(self) -> int: ...

    def size_bytes(self) -> int: ...

    def prune(self, target_bytes: int) -> int: ...


@runtime_checkable
class BlockCache(Protocol):
    """Block cache of raw data-blob bytes; :meth:`wrap` returns a caching :class:`ByteSource`.

    ``wrap(source, block_size=DEFAULT_BLOCK_SIZE, max_blocks_per_read=DEFAULT_MAX_BLOCKS_PER_READ)``
    raises ``ValueError`` for a block size that is not positive or a source without a
    ``source_id``. ``max_blocks_per_read <= 0`` disables the bypass.
    """

    def wrap(
        self,
        source: ByteSource,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_blocks_per_read: int = DEFAULT_MAX_BLOCKS_PER_READ,
    ) -> ByteSource: ...

    def max_bytes(self) -> int: ...

    def size_bytes(self) -> int: ...

    def prune(self, target_bytes: int) -> int: ...


# At the end: _memory needs nothing from here, and disk (which imports this module's constants)
# is not imported at all, so `import blobfs.core.cache` stays free of sqlite3 and diskcache.
from ._memory import MemoryCache as MemoryCache  # noqa: E402
