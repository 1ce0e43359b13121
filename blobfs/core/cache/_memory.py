"""MemoryCache: an in-process LRU content cache."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import BinaryIO

from ._common import COPY_CHUNK, check_digest

__all__ = ["MemoryCache"]


class MemoryCache:
    """Content cache in this process's memory, least-recently-used entries evicted first.

    Implements :class:`~blobfs.core.cache.Cache`. ``max_bytes=0`` means unlimited; otherwise the
    total of stored content never exceeds it: ``put`` evicts least-recently-used entries to make
    room, and content larger than ``max_bytes`` is not stored (``put`` stops reading ``f`` as
    soon as it knows). ``get`` counts as a use and returns an independent ``io.BytesIO``.

    Concurrency: every method may be called from any number of threads at once. One lock guards
    the table; ``put`` reads ``f`` outside it, so a slow caller's file does not stall readers.
    """

    __slots__ = ("_entries", "_lock", "_max_bytes", "_size")

    def __init__(self, max_bytes: int = 0) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 = unlimited), got {max_bytes}")
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, bytes] = OrderedDict()  # oldest use first
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: bytes) -> BinaryIO | None:
        key = check_digest(digest)
        with self._lock:
            data = self._entries.get(key)
            if data is None:
                return None
            self._entries.move_to_end(key)
        return io.BytesIO(data)

    def put(self, digest: bytes, f: BinaryIO) -> None:
        """Store everything ``f`` yields until EOF; exceptions raised by ``f`` propagate."""
        key = check_digest(digest)
        with self._lock:
            if key in self._entries:
                return
        parts: list[bytes] = []
        size = 0
        limit = self._max_bytes
        while chunk := f.read(COPY_CHUNK):
            size += len(chunk)
            if limit and size > limit:
                return  # too big to ever fit: drop what was read, leave the rest unread
            parts.append(chunk)
        data = b"".join(parts)
        with self._lock:
            if key in self._entries:
                return  # another thread stored it meanwhile
            if limit:
                self._evict_locked(limit - size)
            self._entries[key] = data
            self._size += size

    def delete(self, digest: bytes) -> None:
        key = check_digest(digest)
        with self._lock:
            data = self._entries.pop(key, None)
            if data is not None:
                self._size -= len(data)

    def max_bytes(self) -> int:
        return self._max_bytes

    def size_bytes(self) -> int:
        with self._lock:
            return self._size

    def prune(self, target_bytes: int) -> int:
        with self._lock:
            return self._evict_locked(max(target_bytes, 0))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _evict_locked(self, target: int) -> int:
        freed = 0
        while self._size > target and self._entries:
            _, data = self._entries.popitem(last=False)
            self._size -= len(data)
            freed += len(data)
        return freed

    def __repr__(self) -> str:
        return f"MemoryCache(max_bytes={self._max_bytes}, size={self._size})"
