"""On-disk caches shared by threads and processes: :class:`DiskCache` (content) and
:class:`BlockCache` (blocks of a data blob, through :meth:`BlockCache.wrap`).

Storage decision, measured on the 2-core development machine (median of 300 operations per run,
two runs, shard directories made beforehand; ``get`` = read the value back entirely; µs)::

                                            64 KiB set / get         1 MiB set / get
    diskcache 5.6, LRU, set(file, read=True)   482-518 / 209-239     2,938-3,652 / 333-342
    diskcache 5.6, LRU, set(bytes)             638-641 / 202-211     6,546-8,144 / 336-349
    diskcache 5.6, no eviction, set(file)      323-740 /  61-71      3,178-3,438 / 197-217
    plain file (temp + rename; open + read)    139-417 /  24         2,795-2,875 / 155-161
    diskcache incr (the shared byte counter)        72
    os.utime (mark an entry used)                  6-9

With its LRU policy diskcache writes the database on every ``get``: a cached 64 KiB block costs
about 220 µs to read, nine times a plain file; add the block checksum and warm block reads
would stay under 250 MB/s, a quarter of the 1 GB/s target. So both caches keep their payload in
**plain files** (``<dir>/<2 hex>/<64 hex>``, Go's layout) and use diskcache for the
**bookkeeping** only: a byte total shared by every process (updated in batches, so a put rarely
pays the 72 µs) and the cross-process prune lock. LRU order is the files' mtime, refreshed on a
hit, which costs no database write and is visible to other processes. Details: ``_store.py``.

Warm reads through :class:`CachedSource` with this design (64 MiB blob, 64 KiB blocks, every
block on disk and none in the memory layer; medians of three runs, this noisy machine):
64 KiB random reads 131-165 µs each (most span two blocks), 4 KiB random reads 63-86 µs,
256 KiB sequential reads 0.76-1.1 GB/s with one thread and 0.82-1.04 GB/s with two; a read
served by the memory layer 8 µs.
With diskcache holding the blocks a 64 KiB block alone would cost 220 µs to get.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO

from .._closing import Closing
from .._source import ByteSource
from . import DEFAULT_BLOCK_SIZE, DEFAULT_MAX_BLOCKS_PER_READ
from ._blocks import BlockStore, CachedSource, CacheStats
from ._common import COPY_CHUNK, check_digest
from ._store import FileStore, write_all

__all__ = [
    "DEFAULT_BLOCK_CACHE_BYTES",
    "BlockCache",
    "CacheStats",
    "CachedSource",
    "DiskCache",
    "EntryWriter",
]

DEFAULT_BLOCK_CACHE_BYTES = 256 << 20
"""256 MiB of blocks: 4,096 blocks of 64 KiB, enough for the random-access working set of a
mounted archive, small next to the content cache that serves sequential reads."""


class DiskCache(Closing):
    """Content cache in a directory: ``<directory>/<shard>/<64 hex digits>``, one plain file per
    entry holding the raw content (Go's layout, so Go's tools can share the directory).

    Implements :class:`~blobfs.core.cache.Cache`:

    - ``get`` opens the file and returns it (the caller closes it) and marks the entry used.
      It does **not** verify the content: that would cost a SHA-256 of the whole entry per read
      (740 µs per MiB here) before the first byte, and the reader verifies what it reads back
      anyway, deleting the entry on a mismatch. A missing or unreadable entry is ``None``.
    - ``put`` streams ``f`` into a temp file, then links it into place: readers never see a
      partial file, concurrent puts of one key (threads or processes) all succeed and store it
      once. Content over ``max_bytes`` is not stored (``put`` stops reading at the limit).
      Cache I/O errors are logged, never raised; exceptions raised by ``f`` itself propagate.
    - Size: ``max_bytes=0`` means unlimited; otherwise a put evicts least-recently-used entries
      (oldest mtime first; a ``get`` refreshes the mtime) to stay under it.
      ``size_bytes()`` is the total shared by every process using the directory.
    - A digest that is not 32 raw bytes is a ``ValueError``.

    Concurrency: all methods may be called from any number of threads, and any number of
    processes may use the same directory at once. ``close()`` (or the context manager) sends
    this process's pending size delta to the shared total; the cache remains usable after it.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, max_bytes: int = 0, shard_len: int = 2
    ) -> None:
        self._files = FileStore(directory, max_bytes=max_bytes, shard_len=shard_len)

    @property
    def directory(self) -> str:
        return self._files.directory

    def path(self, digest: bytes) -> str:
        """Where the entry for ``digest`` lives (whether or not it does)."""
        return self._files.path(check_digest(digest).hex())

    def get(self, digest: bytes) -> BinaryIO | None:
        path = self.path(digest)
        try:
            f = open(path, "rb")  # noqa: SIM115  # the caller owns and closes it
        except FileNotFoundError:
            return None
        except OSError as e:
            self._files.warn_io("cannot open cache entry %s: %s", path, e)
            return None
        with contextlib.suppress(OSError):  # a hit is still a hit
            self._files.touch(f.fileno(), os.fstat(f.fileno()).st_mtime_ns)
        return f

    def put(self, digest: bytes, f: BinaryIO) -> None:
        hexkey = check_digest(digest).hex()
        if self._files.exists(hexkey):
            return
        temp = self._files.new_temp(hexkey)
        if temp is None:
            return
        fd, tmp = temp
        try:
            try:
                size = self._copy(f, fd, tmp)
            finally:
                os.close(fd)
        except BaseException:
            self._files.discard(tmp)
            raise  # from f (the caller's file) or closing the temp file: not a cache I/O error
        if size is None:
            self._files.discard(tmp)
            return
        self._files.commit(hexkey, tmp, size)

    def put_bytes(self, digest: bytes, data: bytes | memoryview) -> None:
        """``put`` of content already in memory: written with one ``writev`` instead of being
        copied through a file object piece by piece (what the read path stores)."""
        hexkey = check_digest(digest).hex()
        limit = self._files.max_bytes
        if (limit and len(data) > limit) or self._files.exists(hexkey):
            return
        self._files.write(hexkey, data)

    def open_writer(self, digest: bytes) -> EntryWriter | None:
        """A writer building the entry ``digest`` piece by piece (the mount stores a file read
        front to back as one entry this way), or None when the entry exists already or no
        temp file could be made (logged). See :class:`EntryWriter`."""
        hexkey = check_digest(digest).hex()
        if self._files.exists(hexkey):
            return None
        temp = self._files.new_temp(hexkey, readable=True)
        return None if temp is None else EntryWriter(self._files, hexkey, *temp)

    def _copy(self, f: BinaryIO, fd: int, tmp: str) -> int | None:
        """Copy ``f`` to ``fd``: the size, or ``None`` when over the limit or the write failed
        (logged). Exceptions raised by ``f`` propagate."""
        limit = self._files.max_bytes
        size = 0
        while chunk := f.read(COPY_CHUNK):
            size += len(chunk)
            if limit and size > limit:
                return None  # cannot fit: stop reading
            try:
                write_all(fd, chunk)
            except OSError as e:
                self._files.warn_io("cannot write cache file %s: %s", tmp, e)
                return None
        return size

    def delete(self, digest: bytes) -> None:
        self._files.delete(check_digest(digest).hex())

    def max_bytes(self) -> int:
        return self._files.max_bytes

    def size_bytes(self) -> int:
        return self._files.size_bytes()

    def prune(self, target_bytes: int) -> int:
        return self._files.prune(target_bytes)

    def close(self) -> None:
        self._files.close()

    def __repr__(self) -> str:
        return f"DiskCache({self.directory!r}, max_bytes={self._files.max_bytes})"


class EntryWriter:
    """An entry of a :class:`DiskCache` being written in pieces: a temp file that becomes the
    entry on :meth:`commit` (readers never see it before), or is deleted on :meth:`discard`.
    Write errors are logged and make :meth:`write` return False; the caller then discards.
    The caller guarantees the content is what the digest names (the read path appends verified
    chunks in order). Not thread-safe: one thread writes, commits or discards."""

    __slots__ = ("_fd", "_files", "_hexkey", "_tmp", "size")

    def __init__(self, files: FileStore, hexkey: str, fd: int, tmp: str) -> None:
        self._files = files
        self._hexkey = hexkey
        self._fd: int | None = fd
        self._tmp = tmp
        self.size = 0  # bytes written so far

    def write(self, data: bytes | memoryview) -> bool:
        """Append ``data``; False (logged) when it could not be written or the writer is done."""
        if self._fd is None:
            return False
        try:
            write_all(self._fd, data)
        except OSError as e:
            self._files.warn_io("cannot write cache file %s: %s", self._tmp, e)
            return False
        self.size += len(data)
        return True

    def read_back(self, offset: int, length: int) -> bytes | None:
        """Bytes written earlier (to store them another way when the entry is abandoned);
        None when they cannot be read. Unverified: whatever is stored from them is checked by
        the cache's readers, like every entry."""
        if self._fd is None:
            return None
        try:
            data = os.pread(self._fd, length, offset)
        except OSError:
            return None
        return data if len(data) == length else None

    def commit(self) -> bool:
        """Make what was written the entry; True if this call stored it."""
        fd, self._fd = self._fd, None
        if fd is None:
            return False
        try:
            os.close(fd)
        except OSError as e:
            self._files.warn_io("cannot write cache file %s: %s", self._tmp, e)
            self._files.discard(self._tmp)
            return False
        return self._files.commit(self._hexkey, self._tmp, self.size)

    def discard(self) -> None:
        """Delete the temp file; idempotent (a no-op after :meth:`commit`)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
            self._files.discard(self._tmp)


class BlockCache(Closing):
    """Block cache in a directory: fixed-size blocks of data blobs, checksummed, LRU-bounded.

    Implements :class:`blobfs.core.cache.BlockCache`. :meth:`wrap` returns a
    :class:`CachedSource` that reads a :class:`~blobfs.core.ByteSource` through this cache.

    - A block's key is SHA-256(``source_id`` ‖ u64be(block_size) ‖ u64be(block number)), Go's
      key; its file ``<directory>/<2 hex>/<64 hex>`` holds a header with a SHA-256 checksum, then
      the raw bytes. Every block read back is checked; a mismatch deletes it (logged at WARNING)
      and the block is fetched again. (Go stores bare bytes and checks only their length: do not
      point a Go block cache at the same directory; each side would drop the other's files.)
    - The most recently used blocks (4 MiB) are also kept, verified, in memory.
    - ``max_bytes`` (0 = unlimited) bounds the files on disk, headers included; storing a block
      evicts least-recently-used blocks as needed. ``size_bytes()`` is shared by all processes.

    Concurrency: all methods and every wrapped source may be used from any number of threads,
    and several processes may share the directory (each insert is atomic; a reader never sees a
    partial block). Concurrent misses of one block in this process share one fetch.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = DEFAULT_BLOCK_CACHE_BYTES,
        shard_len: int = 2,
    ) -> None:
        self._files = FileStore(directory, max_bytes=max_bytes, shard_len=shard_len)
        self._store = BlockStore(self._files)

    @property
    def directory(self) -> str:
        return self._files.directory

    def wrap(
        self,
        source: ByteSource,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_blocks_per_read: int = DEFAULT_MAX_BLOCKS_PER_READ,
    ) -> CachedSource:
        """A caching view of ``source`` (which it then owns: closing it closes ``source``).

        ``ValueError`` for ``block_size <= 0`` or a source without a ``source_id``;
        ``max_blocks_per_read <= 0`` disables the bypass of large reads.
        """
        return CachedSource(
            self._store, source, block_size=block_size, max_blocks_per_read=max_blocks_per_read
        )

    def max_bytes(self) -> int:
        return self._files.max_bytes

    def size_bytes(self) -> int:
        return self._files.size_bytes()

    def prune(self, target_bytes: int) -> int:
        """Delete least-recently-used blocks until at most ``target_bytes`` remain on disk;
        return the bytes freed. The memory layer is emptied too."""
        freed = self._files.prune(target_bytes)
        self._store.forget_hot()
        return freed

    def close(self) -> None:
        """Send this process's pending size delta to the shared total; stays usable."""
        self._files.close()

    def __repr__(self) -> str:
        return f"BlockCache({self.directory!r}, max_bytes={self._files.max_bytes})"
