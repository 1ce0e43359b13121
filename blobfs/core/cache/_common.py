"""Small pieces the cache implementations share (no I/O, no third-party imports)."""

from __future__ import annotations

from typing import Final

__all__ = ["COPY_CHUNK", "DIGEST_SIZE", "check_digest"]

DIGEST_SIZE: Final = 32
"""Content-cache keys are raw SHA-256 digests."""

COPY_CHUNK: Final = 1 << 20
"""``put`` reads the caller's file in 1 MiB pieces: few calls, bounded memory."""


def check_digest(digest: bytes) -> bytes:
    """Return ``digest`` as ``bytes``; ``ValueError`` unless it is 32 raw bytes.

    A hex string or a truncated digest is a caller bug; failing loudly beats caching under a key
    nothing will ever look up.
    """
    if isinstance(digest, bytes | bytearray | memoryview) and len(digest) == DIGEST_SIZE:
        return bytes(digest)
    what = type(digest).__name__
    if isinstance(digest, bytes | bytearray | memoryview | str):
        what += f" of length {len(digest)}"
    raise ValueError(f"cache key must be a raw {DIGEST_SIZE}-byte SHA-256 digest, got {what}")
