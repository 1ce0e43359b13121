"""Registry caches of blobfs: tag → digest (with a TTL), manifests and indexes by digest.

Public API::

    caches = RegistryCaches("~/.cache/blobfs/registry")   # refs/, manifests/, indexes/
    reg = Registry(caches=caches)                         # fetch/pull/inspect use them

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
same directory), so concurrent processes see either no entry or a whole one. Sizes are not
bounded (no pruning yet): these entries are small (a manifest is about 1 KiB, an index about
130 bytes per file).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
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


class RefCache:
    """Reference → manifest digest, with a TTL measured from the entry file's mtime.

    ``ttl`` is in seconds; 0 = entries are never fresh (:meth:`get` always misses; the
    registry is always asked) but are still written, for offline fallback.
    """

    def __init__(self, directory: str | os.PathLike[str], ttl: float = DEFAULT_REF_TTL) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0, got {ttl!r}")
        self.directory = Path(directory)
        self.ttl = float(ttl)

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
        return CachedRef(digest, mtime, fresh)

    def get(self, ref: str) -> str | None:
        """The digest of ``ref`` when a fresh entry exists (younger than ``ttl``), else None."""
        entry = self.lookup(ref)
        return entry.digest if entry is not None and entry.fresh else None

    def put(self, ref: str, digest: str) -> None:
        """Record that ``ref`` resolved to ``digest`` now (overwrites; resets the age)."""
        if _hex_of(digest) is None:
            return
        _write_atomic(self.directory, self._path(ref).name, digest.encode("ascii"))

    def delete(self, ref: str) -> None:
        _remove(self._path(ref))


class _DigestCache:
    """Raw bytes by sha256 digest, verified on read."""

    kind = "blob"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

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
        _write_atomic(self.directory, hexd, data)

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

    ``ref_ttl`` is the :class:`RefCache` TTL in seconds (0 = always resolve).
    """

    def __init__(self, root: str | os.PathLike[str], *, ref_ttl: float = DEFAULT_REF_TTL) -> None:
        self.root = Path(root)
        self.refs = RefCache(self.root / "refs", ttl=ref_ttl)
        self.manifests = ManifestCache(self.root / "manifests")
        self.indexes = IndexCache(self.root / "indexes")
