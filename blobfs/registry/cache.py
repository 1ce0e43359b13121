"""Registry caches of blobfs: tag → digest (with a TTL), manifests and indexes by digest.

Public API::

    caches = RegistryCaches("~/.cache/blobfs", max_bytes=256 << 20)  # refs/, manifests/, indexes/
    reg = Registry(caches=caches)                         # fetch/pull/inspect use them
    caches.size_bytes(), caches.entry_count(), caches.prune(64 << 20), caches.clear()

- :class:`RefCache` maps a reference string (``host/repo:tag``) to the manifest digest it
  resolved to. One file per reference, named ``sha256hex(str(ref))``, holding the digest
  (``sha256:<64 hex>``, no newline); its mtime is the time of resolution. An entry younger than
  ``ttl`` seconds is *fresh* and served without asking the registry; ``ttl=0`` means never
  fresh (always resolve). Stale entries are kept, not deleted: offline mode may still use them
  (saying they may be stale).
- :class:`ManifestCache` and :class:`IndexCache` hold raw bytes by digest: file ``<hex>``. The
  bytes are exactly those received (never re-serialised: a signature over the manifest stays
  valid) and are verified on every read: content whose sha256 differs from the file name is
  deleted and reported as a miss. No TTL: the content is addressed by its digest.

Everything is best-effort: an unreadable, unwritable or corrupt cache is a miss (logged), never
an error of the operation using it. Writes are atomic (temporary file + ``os.replace`` in the
same directory), so concurrent processes see either no entry or a whole one.

Size: the three caches together hold at most ``max_bytes`` (default :data:`DEFAULT_MAX_BYTES`;
0 = unbounded). Least recently used entries go first: every hit sets the entry file's *access*
time (explicitly, so ``relatime``/``noatime`` mounts do not matter; the modification time keeps
meaning "resolved/stored at"). A process counts what it writes on top of one scan of the
directories; once past ``max_bytes`` it prunes down to :data:`LOW_WATER` of it, so a full cache
is not rescanned on every write. Several processes may prune at once (a vanished file is
skipped); each keeps its own count, so the bound holds within what one process writes between
two of its prunes. An entry larger than ``max_bytes`` is not stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_REF_TTL",
    "CachedRef",
    "IndexCache",
    "ManifestCache",
    "RefCache",
    "RegistryCaches",
]

log = logging.getLogger(__name__)

DEFAULT_REF_TTL = 300.0
"""Seconds a tag → digest mapping is served without asking the registry (5 minutes, as the Go
reference since 1.1.2): a moved ``:latest`` is seen within minutes, while a burst of mounts
resolves once."""

DEFAULT_MAX_BYTES = 256 << 20
"""Bound of the registry caches together: manifests are about 1 KiB and indexes 130 bytes per
file, so 256 MiB holds the metadata of thousands of small archives or four indexes at the
largest size :meth:`Registry.pull` accepts by default (64 MiB)."""

LOW_WATER = 0.8
"""A prune triggered by a write shrinks the caches to this fraction of ``max_bytes``: the next
few writes then fit without another scan."""

_STALE_TEMP = 3600.0
"""Seconds after which a leftover temporary file (a writer that died) is removed by a prune."""

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
"""The only digests cached: the name of a cache file is the hex, so anything else (another
algorithm, path characters) could not be verified or could escape the directory."""

_DIR_MODE = 0o700
"""Cache directories are private: references and manifests may name private repositories."""


@dataclass(frozen=True, slots=True)
class CachedRef:
    """A :class:`RefCache` entry: the digest, when it was resolved (epoch seconds) and whether
    it is still within the TTL."""

    digest: str
    resolved_at: float
    fresh: bool


def _hex_of(digest: str) -> str | None:
    m = _DIGEST.fullmatch(digest)
    return m.group(1) if m else None


def _write_atomic(directory: Path, name: str, data: bytes) -> bool:
    """Write ``directory/name`` atomically; False (logged) when it could not be written."""
    tmp: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, directory / name)
        return True
    except OSError as exc:
        log.warning("registry cache: cannot write %s: %s", directory / name, exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return False


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _touch(path: Path) -> None:
    """Mark ``path`` used now: access time = now, modification time unchanged."""
    with contextlib.suppress(OSError):
        st = path.stat()
        os.utime(path, ns=(time.time_ns(), st.st_mtime_ns))


@dataclass(frozen=True, slots=True)
class _Entry:
    path: Path
    size: int
    used: int
    """Access time in ns: the LRU order."""


class _Budget:
    """The byte bound shared by the three caches of one :class:`RegistryCaches`.

    ``directories`` are scanned once, on the first write, and then the process counts what it
    writes; past ``max_bytes`` it prunes to :data:`LOW_WATER` of it. Thread-safe.
    """

    def __init__(self, directories: tuple[Path, ...], max_bytes: int) -> None:
        self.directories = directories
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._estimate: int | None = None

    def fits(self, size: int) -> bool:
        return self.max_bytes == 0 or size <= self.max_bytes

    def added(self, size: int) -> None:
        """Count ``size`` bytes just written; prune when over the bound."""
        if self.max_bytes == 0:
            return
        with self._lock:
            if self._estimate is None:
                self._estimate = self.size_bytes()  # includes what was just written
            else:
                self._estimate += size
            over = self._estimate > self.max_bytes
        if over:
            self.prune(int(self.max_bytes * LOW_WATER))

    def entries(self) -> list[_Entry]:
        """Every cache entry (temporary and other dot files left out; stale ones removed)."""
        out: list[_Entry] = []
        now = time.time()
        for directory in self.directories:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            for name in names:
                path = directory / name
                try:
                    st = path.stat()
                except OSError:
                    continue
                if name.startswith("."):
                    if name.startswith(".tmp-") and now - st.st_mtime > _STALE_TEMP:
                        _remove(path)
                    continue
                out.append(_Entry(path, st.st_size, st.st_atime_ns))
        return out

    def size_bytes(self) -> int:
        return sum(e.size for e in self.entries())

    def prune(self, target_bytes: int) -> int:
        """Delete least recently used entries until at most ``target_bytes`` remain; return
        the bytes freed."""
        entries = sorted(self.entries(), key=lambda e: e.used)
        total = sum(e.size for e in entries)
        freed = 0
        for e in entries:
            if total <= target_bytes:
                break
            try:
                e.path.unlink()
            except FileNotFoundError:
                pass  # another process pruned it
            except OSError as exc:
                log.warning("registry cache: cannot remove %s: %s", e.path, exc)
                continue
            total -= e.size
            freed += e.size
        with self._lock:
            self._estimate = total
        if freed:
            log.info("registry cache: pruned %d bytes (%d bytes left)", freed, total)
        return freed


class RefCache:
    """Reference → manifest digest, with a TTL measured from the entry file's mtime.

    ``ttl`` is in seconds; 0 = entries are never fresh (:meth:`get` always misses; the
    registry is always asked) but are still written, for offline fallback.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        ttl: float = DEFAULT_REF_TTL,
        *,
        budget: _Budget | None = None,
    ) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0, got {ttl!r}")
        self.directory = Path(directory)
        self.ttl = float(ttl)
        self._budget = budget

    def _path(self, ref: str) -> Path:
        return self.directory / hashlib.sha256(ref.encode()).hexdigest()

    def lookup(self, ref: str) -> CachedRef | None:
        """The entry of ``ref`` whatever its age (None when absent or invalid; an invalid one is
        deleted)."""
        path = self._path(ref)
        try:
            text = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError:
            return None
        digest = text.decode("ascii", "replace")
        if _hex_of(digest) is None:
            log.warning("registry cache: invalid entry %s for %s, deleted", path, ref)
            _remove(path)
            return None
        fresh = self.ttl > 0 and (time.time() - mtime) < self.ttl
        _touch(path)
        return CachedRef(digest, mtime, fresh)

    def get(self, ref: str) -> str | None:
        """The digest of ``ref`` when a fresh entry exists (younger than ``ttl``), else None."""
        entry = self.lookup(ref)
        return entry.digest if entry is not None and entry.fresh else None

    def put(self, ref: str, digest: str) -> None:
        """Record that ``ref`` resolved to ``digest`` now (overwrites; resets the age)."""
        if _hex_of(digest) is None:
            return
        data = digest.encode("ascii")
        if _write_atomic(self.directory, self._path(ref).name, data) and self._budget is not None:
            self._budget.added(len(data))

    def delete(self, ref: str) -> None:
        _remove(self._path(ref))


class _DigestCache:
    """Raw bytes by sha256 digest, verified on read."""

    kind = "blob"

    def __init__(self, directory: str | os.PathLike[str], *, budget: _Budget | None = None) -> None:
        self.directory = Path(directory)
        self._budget = budget

    def get(self, digest: str) -> bytes | None:
        """The exact bytes stored under ``digest``, verified (a corrupt entry is deleted and is
        a miss); None when absent or the digest is not ``sha256:<hex>``."""
        hexd = _hex_of(digest)
        if hexd is None:
            return None
        path = self.directory / hexd
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != hexd:
            log.warning(
                "registry cache: %s %s is corrupt (digest mismatch), deleted", self.kind, digest
            )
            _remove(path)
            return None
        _touch(path)
        return data

    def cached_at(self, digest: str) -> float | None:
        """When the entry of ``digest`` was written (epoch seconds), None when absent."""
        hexd = _hex_of(digest)
        if hexd is None:
            return None
        try:
            return (self.directory / hexd).stat().st_mtime
        except OSError:
            return None

    def put(self, digest: str, data: bytes) -> None:
        """Store ``data`` under ``digest``; ignored (logged) when it does not match."""
        hexd = _hex_of(digest)
        if hexd is None:
            return
        if hashlib.sha256(data).hexdigest() != hexd:
            log.warning("registry cache: refusing %s %s: content does not match", self.kind, digest)
            return
        if self._budget is not None and not self._budget.fits(len(data)):
            log.debug("registry cache: %s %s is larger than the cache bound", self.kind, digest)
            return
        if _write_atomic(self.directory, hexd, data) and self._budget is not None:
            self._budget.added(len(data))

    def delete(self, digest: str) -> None:
        hexd = _hex_of(digest)
        if hexd is not None:
            _remove(self.directory / hexd)


class ManifestCache(_DigestCache):
    """Manifests by digest: the exact raw bytes received, verified on read."""

    kind = "manifest"


class IndexCache(_DigestCache):
    """Index blobs by digest: the exact raw bytes, verified on read."""

    kind = "index"


class RegistryCaches:
    """The three registry caches under one ``root``: ``refs/``, ``manifests/``, ``indexes/``.

    ``ref_ttl`` is the :class:`RefCache` TTL in seconds (0 = always resolve); ``max_bytes``
    bounds the three together (0 = unbounded; see the module docstring).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        ref_ttl: float = DEFAULT_REF_TTL,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes!r}")
        self.root = Path(root)
        self.directories = (self.root / "refs", self.root / "manifests", self.root / "indexes")
        self._budget = _Budget(self.directories, max_bytes)
        self.refs = RefCache(self.directories[0], ttl=ref_ttl, budget=self._budget)
        self.manifests = ManifestCache(self.directories[1], budget=self._budget)
        self.indexes = IndexCache(self.directories[2], budget=self._budget)

    @property
    def max_bytes(self) -> int:
        return self._budget.max_bytes

    def size_bytes(self) -> int:
        """Bytes held by the three caches now (one directory scan)."""
        return self._budget.size_bytes()

    def entry_count(self) -> int:
        return len(self._budget.entries())

    def prune(self, target_bytes: int | None = None) -> int:
        """Drop least recently used entries until at most ``target_bytes`` (default:
        ``max_bytes``; with neither, nothing) remain; return the bytes freed."""
        target = self.max_bytes if target_bytes is None else target_bytes
        if target_bytes is None and target == 0:
            return 0
        return self._budget.prune(target)

    def clear(self) -> int:
        """Drop every entry (also other processes' answers: a later offline read misses);
        return the bytes freed."""
        return self._budget.prune(0)
