"""The read side of :class:`~blobfs.registry.Registry`: fetch, inspect, pull, the registry caches.

A manifest is fetched (or taken from the caches), its digest verified, the trust policy asked,
and only then is its index fetched (size-capped, digest verified, ``data_hash``/``data_size``
checked against the data layer). A pulled archive reads the data blob lazily through a
:class:`~blobfs.registry._failover.FailoverSource`: the mirror that served the metadata first,
then the following mirrors, then the registry itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import httpx

from ..core import Archive, Index
from ..core.cache import BlockCache, Cache
from ..core.http import HttpSource
from ..errors import DigestMismatch, InvalidManifest, RegistryError
from ._failover import FailoverSource
from ._manifest import DOCKER_MANIFEST_LIST, OCI_INDEX, Manifest, digest_of
from ._policy_hook import PolicyRequest
from ._reference import Reference
from ._transport import ReferenceLike, Transport, parse_ref, redact, unreachable

if TYPE_CHECKING:
    from ._client import Registry

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "DEFAULT_MAX_INDEX_SIZE",
    "Inspection",
    "Reads",
    "RemoteArchive",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_INDEX_SIZE = 64 << 20
"""Largest index blob :meth:`Registry.pull` accepts (about 500,000 entries)."""

DEFAULT_MAX_FILE_SIZE = 256 << 20
"""Default whole-file read limit of pulled archives (as the Go reference)."""


@dataclass(frozen=True, slots=True)
class Inspection:
    """What :meth:`Registry.inspect` reports: the manifest, the verified index and sizes."""

    reference: str
    manifest: Manifest
    index: Index
    index_size: int
    data_size: int

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def file_count(self) -> int:
        return len(self.index)

    @property
    def total_size(self) -> int:
        """Bytes stored in the registry for this archive (index + data blobs)."""
        return self.index_size + self.data_size


class RemoteArchive(Archive):
    """An :class:`Archive` pulled from a registry: reads the data blob with range requests.

    Owns its data source and that source's ``httpx.Client``: :meth:`close` (or ``with``) closes
    both; reads afterwards raise :class:`~blobfs.errors.SourceError`. ``manifest`` and
    ``reference`` say what was pulled; ``data_url`` is where the data blob is read from now
    (a mirror, or the registry), ``data_urls`` every place it may be read from, in order.
    """

    __slots__ = ("_data", "manifest", "reference")

    def __init__(
        self,
        index: Index,
        source: FailoverSource,
        http_client: httpx.Client,
        manifest: Manifest,
        reference: str,
        *,
        cache: Cache | None,
        block_cache: BlockCache | None,
        max_file_size: int,
    ) -> None:
        super().__init__(
            index, source, cache=cache, block_cache=block_cache, max_file_size=max_file_size
        )
        self.own(http_client)
        self.own(source)  # closed first
        self._data = source
        self.manifest = manifest
        self.reference = reference

    @property
    def data_url(self) -> str:
        return self._data.url

    @property
    def data_urls(self) -> tuple[str, ...]:
        return self._data.urls


class Reads(Transport):
    """fetch, inspect and pull (see the module docstring)."""

    def fetch(self, ref: ReferenceLike | str) -> Manifest:
        """The archive manifest of ``ref`` (tag or digest), raw bytes kept, digest verified.

        The digest is checked against ``@digest`` when the reference has one, else against the
        registry's ``Docker-Content-Digest`` header when present. With ``caches``, a fresh
        tag → digest entry and a cached manifest answer without any request (see the class
        docstring for offline mode and the fallback when the registry is unreachable). The
        ``policy``, if any, is evaluated on every answer, cached or not. Raises
        :class:`~blobfs.errors.RegistryNotFound`, :class:`~blobfs.errors.DigestMismatch`,
        :class:`~blobfs.errors.InvalidManifest` (see :meth:`Manifest.parse`), and the policy's
        :class:`~blobfs.errors.PolicyViolation`.
        """
        return self._fetch(parse_ref(ref))[0]

    def _check_policy(self, r: Reference, manifest: Manifest) -> None:
        if self._policy is not None:
            request = PolicyRequest(
                r, manifest.digest, manifest.raw, manifest, cast("Registry", self)
            )
            self._policy.evaluate(request)

    def _cached_manifest(self, digest: str) -> Manifest | None:
        """The manifest cached under ``digest`` (verified on read). Verified bytes that are
        not an archive manifest (a signature manifest :meth:`fetch_manifest_bytes` cached) are
        the registry's answer too: :class:`InvalidManifest`, and the entry is kept."""
        if self._caches is None:
            return None
        raw = self._caches.manifests.get(digest)
        return None if raw is None else Manifest.parse(raw)

    def _fetch(self, r: Reference) -> tuple[Manifest, str | None]:
        """The manifest of ``r`` (policy accepted) and the repository base URL that served it
        (None: a cache)."""
        what = str(r)
        caches = self._caches
        if caches is not None:
            digest = r.digest
            if digest is None and r.tag:
                digest = caches.refs.get(what)
            if digest is not None:
                cached = self._cached_manifest(digest)
                if cached is not None:
                    log.debug("%s: manifest %s from the cache", what, digest)
                    self._check_policy(r, cached)
                    return cached, None
            if self._offline:
                manifest = self._from_cache(r, None)
                self._check_policy(r, manifest)
                return manifest, None
        try:
            (raw, ctype, _), base = self._read(
                r, what, lambda b, retry: self._get_manifest_raw(r, what, b, retry)
            )
        except RegistryError as exc:
            if caches is not None and unreachable(exc):
                manifest = self._from_cache(r, exc)
                self._check_policy(r, manifest)
                return manifest, None
            raise
        if ctype in (OCI_INDEX, DOCKER_MANIFEST_LIST):
            raise InvalidManifest(f"{what} is an image index ({ctype}), not an archive manifest")
        try:
            manifest = Manifest.parse(raw)
        except InvalidManifest as exc:
            raise InvalidManifest(f"{what}: {exc}") from None
        self._check_policy(r, manifest)
        if caches is not None:
            caches.manifests.put(manifest.digest, raw)
            if r.tag and not r.digest:
                caches.refs.put(what, manifest.digest)
        return manifest, base

    def _from_cache(self, r: Reference, cause: RegistryError | None) -> Manifest:
        """The cached manifest of ``r`` whatever the ref-cache TTL (offline mode, or the
        registry unreachable: ``cause``), logged at WARNING; else the cause (or an offline
        RegistryError) is raised."""
        what = str(r)
        assert self._caches is not None
        digest, when, stale = r.digest, None, False
        if digest is None and r.tag:
            entry = self._caches.refs.lookup(what)
            if entry is not None:
                digest, when, stale = entry.digest, entry.resolved_at, not entry.fresh
        manifest = self._cached_manifest(digest) if digest else None
        if manifest is None or digest is None:
            if cause is not None:
                raise cause
            raise RegistryError(f"{what}: offline mode and the manifest is not in the cache")
        if when is None:
            when = self._caches.manifests.cached_at(digest) or time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
        why = "offline mode" if cause is None else "registry unreachable"
        log.warning(
            "%s: serving %s from cache (resolved %s at %s)%s",
            why,
            what,
            digest,
            stamp,
            "; the tag may be stale (past the cache TTL)" if stale else "",
        )
        return manifest

    def _fetch_index(
        self, ref: ReferenceLike, manifest: Manifest, max_index_size: int
    ) -> tuple[Index, str | None]:
        """The verified index of ``manifest`` and the base URL that served it (None: the
        index cache)."""
        desc = manifest.index_descriptor
        what = f"{ref}: index blob {desc.digest}"
        if max_index_size > 0 and desc.size > max_index_size:
            raise RegistryError(
                f"{what} is {desc.size} bytes, over max_index_size {max_index_size}"
            )
        cached = self._caches.indexes.get(desc.digest) if self._caches is not None else None
        base: str | None = None
        if cached is not None and len(cached) == desc.size:
            raw = cached
        else:
            if self._offline:
                raise RegistryError(f"{what}: offline mode and the index is not in the cache")
            raw, base = self._read(
                ref, what, lambda b, retry: self._get_blob(what, b, desc.digest, desc.size, retry)
            )
        index = Index(raw)  # raises CorruptIndex before anything is cached
        if self._caches is not None and cached is None:
            self._caches.indexes.put(desc.digest, raw)
        data = manifest.data_descriptor
        if index.data_hash:
            hashed = "sha256:" + index.data_hash.hex()
            if hashed != data.digest:
                raise InvalidManifest(
                    f"{ref}: the index's data_hash {hashed} differs from the data layer "
                    f"{data.digest}"
                )
            if index.data_size != data.size:
                raise InvalidManifest(
                    f"{ref}: the index's data_size {index.data_size} differs from the data "
                    f"layer size {data.size}"
                )
        return index, base

    def _get_blob(self, what: str, base: str, digest: str, size: int, retry: bool) -> bytes:
        """Blob ``digest`` of the repository at ``base``: at most ``size`` bytes read, exactly
        ``size`` required, digest verified before it is returned."""
        _, raw = self._get_limited(what, f"{base}/blobs/{digest}", size, retry=retry)
        if len(raw) != size:
            raise DigestMismatch(what, f"{size} bytes", f"{len(raw)} bytes")
        actual = digest_of(raw)
        if actual != digest:
            raise DigestMismatch(what, digest, actual)
        return raw

    def inspect(
        self, ref: ReferenceLike | str, *, max_index_size: int = DEFAULT_MAX_INDEX_SIZE
    ) -> Inspection:
        """Manifest and verified index of ``ref`` (no data blob traffic)."""
        r = parse_ref(ref)
        manifest = self._fetch(r)[0]
        index = self._fetch_index(r, manifest, max_index_size)[0]
        return Inspection(
            str(r),
            manifest,
            index,
            manifest.index_descriptor.size,
            manifest.data_descriptor.size,
        )

    def pull(
        self,
        ref: ReferenceLike | str,
        *,
        max_index_size: int = DEFAULT_MAX_INDEX_SIZE,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
        cache: Cache | None = None,
        block_cache: BlockCache | None = None,
    ) -> RemoteArchive:
        """Open ``ref`` as an archive that reads its data blob lazily with range requests.

        The manifest is fetched and verified (and the policy asked), the index blob fetched (at
        most ``max_index_size`` bytes, 0 = no limit), its digest verified and its
        data_hash/data_size checked against the data layer before use. The data blob itself is
        not downloaded: files are read (and verified) on demand, through ``cache``/
        ``block_cache`` when given, from the place that served the index (or, from the caches,
        the first mirror that has the blob), failing over to the following mirrors and the
        registry itself when it stops answering (see
        :class:`~blobfs.registry._failover.FailoverSource`). The archive owns its connection
        pool (``close()`` it; it outlives this registry).
        """
        r = parse_ref(ref)
        manifest, manifest_base = self._fetch(r)
        index, index_base = self._fetch_index(r, manifest, max_index_size)
        data = manifest.data_descriptor
        base = index_base or manifest_base or self._data_base(r, data.digest)
        bases = [b for b, _ in self._read_bases(r)]
        candidates = bases[bases.index(base) :] if base in bases else bases
        # trust_env (the default) keeps HTTP(S)_PROXY/NO_PROXY honoured for range reads too.
        http = httpx.Client(
            auth=self._auth, timeout=self._timeout, trust_env=True, verify=self._verify
        )
        try:
            sources = []
            # Mirrors get the data source's full retries too: a pull-through cache answers 5xx
            # for a while when it is still filling a blob from upstream.
            for b in candidates:
                sources.append(
                    HttpSource(
                        f"{b}/blobs/{data.digest}",
                        size=data.size,
                        source_id=data.digest,
                        client=http,
                        timeout=self._timeout,
                    )
                )
            return RemoteArchive(
                index,
                FailoverSource(sources),
                http,
                manifest,
                str(r),
                cache=cache,
                block_cache=block_cache,
                max_file_size=max_file_size,
            )
        except BaseException:
            http.close()
            raise

    def _data_base(self, ref: ReferenceLike, digest: str) -> str:
        """Where a pulled archive reads its data blob when manifest and index came from the
        caches: the first mirror answering HEAD 200 for the blob, else the registry itself
        (no request at all without mirrors or in offline mode)."""
        bases = self._read_bases(ref)
        if not self._offline:
            for base, is_mirror in bases:
                if not is_mirror:
                    break
                url = f"{base}/blobs/{digest}"
                try:
                    self._send(f"{ref}: blob {digest}", "HEAD", url, retry=False)
                    return base
                except RegistryError as exc:
                    log.info("%s: mirror %s lacks %s (%s)", ref, redact(base), digest, exc)
        return bases[-1][0]
