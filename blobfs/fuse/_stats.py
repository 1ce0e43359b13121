"""What a mount serves and how it is doing: the source it pinned and its counters.

The counters are read through the ``user.blobfs.stats`` xattr of the mount's root (JSON) and by
``blobfs status MOUNTPOINT``. Counting is a few integer additions on the event loop's thread (the
only thread that touches them), so it costs nothing worth measuring.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core import Archive

__all__ = ["MountStats", "SourceInfo"]


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What is mounted: ``reference`` as the user named it (an OCI reference, an archive
    directory, index/data URLs) and ``digest``, the manifest digest the mount pinned (None for
    archives that do not come from a registry)."""

    reference: str
    digest: str | None = None

    @property
    def pinned(self) -> str:
        """``reference@digest`` (just the reference without a digest, or when the reference
        already names that digest)."""
        if self.digest is None or self.reference.endswith("@" + self.digest):
            return self.reference
        return f"{self.reference}@{self.digest}"

    def to_json(self) -> dict[str, str | None]:
        return {"reference": self.reference, "digest": self.digest}


class MountStats:
    """Counters of one mount since it started (event-loop thread only)."""

    __slots__ = (
        "bytes_pushed",
        "bytes_read",
        "errors",
        "lookups",
        "opens",
        "pushes",
        "reads",
        "started",
    )

    def __init__(self) -> None:
        self.started = time.time()
        self.lookups = 0
        self.opens = 0
        self.reads = 0
        self.bytes_read = 0
        self.pushes = 0  # files stored in the kernel's page cache at open (ArchiveFS.open)
        self.bytes_pushed = 0
        self.errors = 0

    def snapshot(
        self, archive: Archive, source: SourceInfo, mountpoint: str | None
    ) -> dict[str, Any]:
        """The JSON document of ``user.blobfs.stats``.

        ``bytes_fetched``/``fetch_requests``: data-blob bytes and requests that reached the
        origin (from the archive's counting source or block cache; null when neither counts,
        as for a local archive). ``cache_hits``/``cache_misses``/``cache_hit_rate``: lookups
        of the content cache when it counts them (mounted registry archives), else of the
        block cache; null without either. ``cache_dropped``: verified content not stored
        because the cache's disk lagged behind the reads (null without a content cache).
        """
        index = archive.index
        fetch = getattr(archive.source, "stats", None)
        cache = archive.cache
        counted = cache if hasattr(cache, "hits") else fetch
        hits = getattr(counted, "hits", None)
        misses = getattr(counted, "misses", None)
        rate = None
        if isinstance(hits, int) and isinstance(misses, int) and hits + misses:
            rate = round(hits / (hits + misses), 4)
        return {
            **source.to_json(),
            "data_digest": "sha256:" + index.data_hash.hex() if index.data_hash else None,
            "mountpoint": mountpoint,
            "pid": os.getpid(),
            "started": round(self.started, 3),
            "uptime_s": round(time.time() - self.started, 3),
            "files": len(index),
            "directories": index.dir_count + 1,
            "data_size": index.data_size or archive.source.size,
            "lookups": self.lookups,
            "opens": self.opens,
            "reads": self.reads,
            "bytes_read": self.bytes_read,
            "pushes": self.pushes,
            "bytes_pushed": self.bytes_pushed,
            "errors": self.errors,
            "bytes_fetched": getattr(fetch, "source_bytes", None),
            "fetch_requests": getattr(fetch, "source_requests", None),
            "cache_hits": hits,
            "cache_misses": misses,
            "cache_hit_rate": rate,
            "cache_dropped": archive.cache_dropped,
        }
