"""Value types shared by the index codec, the writer and the reader."""

from __future__ import annotations

import enum
import stat as _stat
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "CHUNK_SIZE_MAX",
    "CHUNK_SIZE_MIN",
    "DEFAULT_CHUNK_SIZE",
    "FEATURE_CHUNKS",
    "HASH_SIZE",
    "ChangeDetection",
    "Compression",
    "DirEntry",
    "DirInfo",
    "Entry",
]

HASH_SIZE = 32
"""SHA-256 digest length; the only hash algorithm of format v1."""

DEFAULT_CHUNK_SIZE = 1 << 20
"""1 MiB chunks: small enough that a random 4 KiB read fetches little, large enough that the
chunk table costs 32 bytes per MiB (0.003 %) and zstd still compresses well per frame."""

CHUNK_SIZE_MIN = 64 << 10
CHUNK_SIZE_MAX = 64 << 20
FEATURE_CHUNKS = 1
"""Index ``features`` bit 0: some entries carry chunk tables (FORMAT.md section 4)."""


class Compression(enum.IntEnum):
    """Per-entry payload codec (the schema's ``Compression`` enum)."""

    NONE = 0
    ZSTD = 1


class ChangeDetection(enum.Enum):
    """How hard ``create`` checks that files do not change while they are read."""

    NONE = "none"
    STRICT = "strict"


class Entry(NamedTuple):
    """One regular file of an archive, decoded from the index on demand.

    A ``NamedTuple`` rather than a frozen dataclass: walking a 1,000,000-entry index decodes a
    million of these, and a frozen dataclass costs 4 µs to build where a tuple costs 0.2 µs.
    Fields are in the index schema's slot order. ``chunk_hashes`` is the concatenation of
    32-byte SHA-256 digests (empty when the entry has no chunk table); ``frame_offsets`` is empty
    unless the entry is zstd with a chunk table. Use ``entry._replace(...)`` to derive one.
    """

    path: str
    data_offset: int
    data_size: int
    original_size: int
    hash: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    compression: Compression
    chunk_size: int = 0
    chunk_hashes: bytes = b""
    frame_offsets: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def size(self) -> int:
        """Uncompressed size, what ``stat`` reports."""
        return self.original_size

    @property
    def is_dir(self) -> bool:
        return False

    @property
    def st_mode(self) -> int:
        return _stat.S_IFREG | (self.mode & 0o777)

    @property
    def chunked(self) -> bool:
        return self.chunk_size > 0

    @property
    def num_chunks(self) -> int:
        """Number of chunks of the chunk table (0 without one)."""
        return len(self.chunk_hashes) // HASH_SIZE

    def chunk_hash(self, k: int) -> bytes:
        return self.chunk_hashes[k * HASH_SIZE : (k + 1) * HASH_SIZE]

    def chunk_bounds(self, k: int) -> tuple[int, int]:
        """Uncompressed ``[start, end)`` of chunk ``k``."""
        start = k * self.chunk_size
        return start, min(start + self.chunk_size, self.original_size)

    def chunk_payload(self, k: int) -> tuple[int, int]:
        """``(offset, length)`` of chunk ``k``'s payload in the data blob."""
        if self.compression == Compression.ZSTD:
            start = self.frame_offsets[k]
            end = self.frame_offsets[k + 1] if k + 1 < len(self.frame_offsets) else self.data_size
            return self.data_offset + start, end - start
        lo, hi = self.chunk_bounds(k)
        return self.data_offset + lo, hi - lo


@dataclass(frozen=True, slots=True)
class DirInfo:
    """A directory, synthesized from the paths below it (the root is ``""``)."""

    path: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_dir(self) -> bool:
        return True

    @property
    def size(self) -> int:
        return 0

    @property
    def mode(self) -> int:
        return 0o755

    @property
    def st_mode(self) -> int:
        return _stat.S_IFDIR | 0o755


class DirEntry(NamedTuple):
    """One child in a directory listing: a file (``entry`` set) or a subdirectory."""

    name: str
    is_dir: bool
    entry: Entry | None = None
