"""The synchronous OCI registry client of blobfs: :class:`Registry`.

Push, pull (lazy, range requests), fetch, inspect, tag, list tags and referrers of blobfs
archives in any OCI distribution registry, over one pooled ``httpx.Client``. Manifests are kept
as the exact raw bytes received or built; every blob fetched is checked against its digest
before use; uploads stream from files in chunks and never hold a blob in memory.

An asynchronous twin is not written yet.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx

from ..core import Archive, Compression, Index, create_blob
from ..core.cache import BlockCache, Cache
from ..core.http import HttpSource
from ..errors import DigestMismatch, InvalidManifest, RegistryError, RegistryNotFound
from ._manifest import (
    DATA_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    EMPTY_CONFIG,
    EMPTY_CONFIG_DIGEST,
    INDEX_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    build_manifest,
    digest_of,
)
from ._mirrors import MirrorSpec, normalize_mirrors
from ._reference import Reference as _Reference
from ._reference import scheme_for
from .cache import RegistryCaches

__all__ = ["Inspection", "ReferenceLike", "Registry", "RemoteArchive"]

log = logging.getLogger(__name__)

T = TypeVar("T")

UploadProgress = Callable[[str, int, int], object]
"""``progress(blob_digest, bytes_done, total)`` of :meth:`Registry.push` uploads."""

DEFAULT_TIMEOUT = 30.0
"""Seconds for connecting and for each socket read/write: a slow registry's first byte fits,
a dead one becomes a retry and then an error instead of a hang."""

DEFAULT_RETRIES = 2
"""Retries after the first attempt on 5xx/429/connection errors (3 attempts in all): rides out
a registry restart or a short rate-limit burst without making a failing call slow."""

DEFAULT_BACKOFF = 0.2
"""First backoff in seconds, doubled per retry (0.2 s, 0.4 s); ``Retry-After`` up to
:data:`MAX_RETRY_AFTER` is obeyed instead."""

MAX_RETRY_AFTER = 10.0
"""Longest ``Retry-After`` honoured; a longer one fails the call rather than hanging it."""

DEFAULT_CHUNK_SIZE = 8 << 20
"""Bytes per PATCH of a chunked upload: large enough that per-request cost is small next to the
transfer, small enough to bound memory (one chunk in flight) and the work lost to a failure."""

MAX_MANIFEST_SIZE = 4 << 20
"""Largest manifest or referrers index read (the limit registries themselves apply): a hostile
registry cannot make us buffer an endless body."""

DEFAULT_MAX_INDEX_SIZE = 64 << 20
"""Largest index blob :meth:`Registry.pull` accepts (about 500,000 entries)."""

DEFAULT_MAX_FILE_SIZE = 256 << 20
"""Default whole-file read limit of pulled archives (as the Go reference)."""

TAGS_PAGE = 1000
"""Tags asked per page of ``/tags/list``; the ``Link`` header drives further pages."""

_MAX_PAGES = 10_000
"""Safety stop for ``Link`` pagination loops (10 million tags)."""

_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth retrying: the server may succeed a moment later."""

_MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST))
"""Accept list of manifest GETs: the OCI manifest, plus what we must recognise to reject
clearly (a registry answers 404 rather than a type not accepted)."""


class ReferenceLike(Protocol):
    """What the client needs of a parsed reference (``blobfs.registry._reference.Reference``).

    ``registry`` is ``host[:port]``; ``tag`` and/or ``digest`` may be None; ``str()`` gives the
    reference back for messages.
    """

    @property
    def registry(self) -> str: ...
    @property
    def repository(self) -> str: ...
    @property
    def tag(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...


def _parse_ref(ref: ReferenceLike | str, default_tag: str | None = None) -> ReferenceLike:
    return _Reference.parse(ref, default_tag=default_tag) if isinstance(ref, str) else ref


def _redact(url: httpx.URL | str) -> str:
    """The URL without query string or user info (upload locations carry state tokens)."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, userinfo=b"")) + ("?…" if u.query else "")


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

    Owns its HTTP source and that source's ``httpx.Client``: :meth:`close` (or ``with``) closes
    both; reads afterwards raise :class:`~blobfs.errors.SourceError`. ``manifest`` and
    ``reference`` say what was pulled, ``data_url`` where the data blob is read from.
    """

    __slots__ = ("data_url", "manifest", "reference")

    def __init__(
        self,
        index: Index,
        source: HttpSource,
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
        self.manifest = manifest
        self.reference = reference
        self.data_url = source.url  # the registry, or the mirror that served the blob


class Registry:
    """A client of OCI distribution registries for blobfs archives (synchronous).

    - ``auth``: an ``httpx.Auth`` (``blobfs.registry.RegistryAuth`` for Basic/Bearer and docker
      credentials) used on every request, including the range requests of pulled archives.
    - ``plain_http``: True = always ``http://``, False = always ``https://``, None (default) =
      ``http://`` only for loopback registries (``localhost``, 127/8, ``::1``) and the hosts in
      ``insecure_hosts`` (``host`` or ``host:port``).
    - ``timeout``: connect/read/write deadline of each request, in seconds.
    - ``client``: an ``httpx.Client`` to use for registry API calls (its TLS settings, proxies;
      ``auth`` is still passed per request when given); not closed by :meth:`close`.
    - ``retries``/``backoff``: 5xx, 408, 429 and connection errors are retried ``retries`` times
      with exponential backoff (manifest/blob GETs, HEADs, manifest PUTs and whole uploads).
    - ``chunk_size``: bytes per PATCH of blob uploads.
    - ``caches``: :class:`~blobfs.registry.cache.RegistryCaches` used by :meth:`fetch`,
      :meth:`pull` and :meth:`inspect`: a tag resolved within the ref-cache TTL is not asked
      again, manifests and indexes found by digest (verified, exact raw bytes) are not
      downloaded; successful downloads fill the caches. When the registry is unreachable
      (connection errors or 5xx after the retries) and the caches can answer, the cached
      answer is served with a WARNING ``registry unreachable: serving <ref> from cache
      (resolved <digest> at <time>)`` (a tag past its TTL is still used, said to be possibly
      stale).
    - ``offline``: never contact the registry for manifests, indexes, tags or pushes: fetch,
      pull and inspect are served from ``caches`` (a miss is a RegistryError); every other
      operation raises RegistryError. A pulled archive's data blob is still read over the
      network (lazily), unless the files read are in the archive's content/block caches.
    - ``mirrors``: registry (``host[:port]`` exactly as in references) → mirrors tried in order
      before it for reads (fetch, pull, inspect, index and data blobs, list_tags): base URLs,
      ``host[:port]`` or ``(location, insecure)`` pairs (see
      :func:`blobfs.registry._mirrors.parse_mirrors`). A mirror serves the same repository
      paths (pull-through cache). Any failure of a mirror (connection error, 5xx, 404, auth,
      digest mismatch) falls through to the next one, then to the registry itself; mirrors get
      one attempt each (no retries: the upstream is the fallback). Pushes, tag and referrers
      always go to the registry itself. Digests are verified whoever served the content.

    - ``ca_file``: a PEM bundle of CA certificates to verify registry TLS certificates
      against (instead of the system's), for the API client and the data-blob clients of
      pulled archives; not used with ``client`` (whose TLS settings stay its own) except for
      pulled archives. A missing or unreadable file raises :class:`OSError` at construction.

    HTTP(S) proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) are
    honoured by the clients this class creates (httpx ``trust_env``).

    References are parsed references (``registry``, ``repository``, ``tag``, ``digest``) or
    strings (parsed with :meth:`blobfs.registry._reference.Reference.parse`).

    Errors: 404 → :class:`~blobfs.errors.RegistryNotFound`; other failures
    :class:`~blobfs.errors.RegistryError` naming the reference, the URL (query redacted) and
    status; malformed manifests :class:`~blobfs.errors.InvalidManifest`; content that does not
    match its digest :class:`~blobfs.errors.DigestMismatch`.

    Thread safety: methods may be called from several threads at once (one pooled client).
    """

    def __init__(
        self,
        *,
        auth: httpx.Auth | None = None,
        plain_http: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.Client | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        insecure_hosts: Collection[str] = (),
        caches: RegistryCaches | None = None,
        offline: bool = False,
        mirrors: Mapping[str, Sequence[MirrorSpec]] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self._auth = auth
        self._plain_http = plain_http
        self._insecure_hosts = tuple(insecure_hosts)
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        self._chunk_size = chunk_size
        self._verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            # Read now: a missing bundle is an error here, not at the first HTTPS request.
            self._verify = ssl.create_default_context(cafile=os.fspath(ca_file))
        self._owns_client = client is None
        # trust_env (the default) keeps HTTP(S)_PROXY/NO_PROXY honoured.
        self._client = (
            client
            if client is not None
            else httpx.Client(timeout=timeout, trust_env=True, verify=self._verify)
        )
        self._caches = caches
        self._offline = offline
        self._mirrors = normalize_mirrors(mirrors, plain_http, self._insecure_hosts)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the client made by this registry (not one passed in). Pulled archives keep
        working: each owns its own connection pool."""
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ URLs and requests

    def _base(self, ref: ReferenceLike) -> str:
        if self._plain_http is None:
            scheme = scheme_for(ref.registry, self._insecure_hosts)
        else:
            scheme = "http" if self._plain_http else "https"
        return f"{scheme}://{ref.registry}/v2/{ref.repository}"

    def _read_bases(self, ref: ReferenceLike) -> list[tuple[str, bool]]:
        """Repository base URLs to read ``ref`` from, in order: its mirrors, then the registry
        itself; each with True for a mirror."""
        mirrors = self._mirrors.get(ref.registry, ())
        return [(f"{m}/v2/{ref.repository}", True) for m in mirrors] + [(self._base(ref), False)]

    def _read(self, ref: ReferenceLike, what: str, op: Callable[[str, bool], T]) -> tuple[T, str]:
        """``op(base, retry)`` on each mirror of ``ref`` (one attempt each), falling through on
        any RegistryError, then on the registry itself (with retries, errors raised). Returns
        the result and the base that served it."""
        for base, is_mirror in self._read_bases(ref):
            if not is_mirror:
                return op(base, True), base
            try:
                return op(base, False), base
            except RegistryError as exc:
                log.info("%s: mirror %s failed (%s); trying the next", what, _redact(base), exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def blob_url(self, ref: ReferenceLike | str, digest: str) -> str:
        """The URL of blob ``digest`` in ``ref``'s repository."""
        return f"{self._base(_parse_ref(ref))}/blobs/{digest}"

    def _send(
        self,
        what: str,
        method: str,
        url: httpx.URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        ok: Sequence[int] = (200,),
        allow: Sequence[int] = (),
        retry: bool = True,
    ) -> httpx.Response:
        """One request with retries; the body is read. Statuses in ``allow`` are returned as
        they are; others outside ``ok`` raise (404 → RegistryNotFound)."""
        return self._with_retries(
            what,
            url,
            lambda: self._client.request(
                method,
                url,
                headers=headers,
                content=content,
                auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
            ),
            ok,
            allow,
            retry,
        )

    def _with_retries(
        self,
        what: str,
        url: httpx.URL | str,
        call: Callable[[], httpx.Response],
        ok: Sequence[int],
        allow: Sequence[int],
        retry: bool,
    ) -> httpx.Response:
        if self._offline:
            raise RegistryError(f"{what}: offline mode: the registry is not contacted")
        attempts = (self._retries + 1) if retry else 1
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                r = call()
            except httpx.TransportError as exc:
                if last:
                    raise RegistryError(
                        f"{what}: {_redact(url)}: {type(exc).__name__}: {exc}"
                        + (f", after {attempts} attempts" if attempts > 1 else "")
                    ) from None
                self._sleep(attempt, None)
                continue
            except httpx.RequestError as exc:  # redirect loops, bad URLs: not worth a retry
                raise RegistryError(f"{what}: {_redact(url)}: {type(exc).__name__}") from None
            if r.status_code in ok or r.status_code in allow:
                return r
            if r.status_code in _RETRY_STATUS and not last:
                self._sleep(attempt, r.headers.get("Retry-After"))
                continue
            raise self._error(what, url, r)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self._backoff * (2**attempt)
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = min(float(retry_after), MAX_RETRY_AFTER)
        time.sleep(delay)

    @staticmethod
    def _error(what: str, url: httpx.URL | str, r: httpx.Response) -> RegistryError:
        detail = ""
        with contextlib.suppress(Exception):
            errors = json.loads(r.content).get("errors") or []
            detail = "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
            )
        text = f"{what}: {r.request.method} {_redact(url)}: HTTP {r.status_code}"
        if detail:
            text += f" ({detail[:200]})"
        if r.status_code == 404:
            return RegistryNotFound(text, status=404)
        return RegistryError(text, status=r.status_code)

    def _get_limited(
        self,
        what: str,
        url: str,
        limit: int,
        headers: Mapping[str, str] | None = None,
        allow: Sequence[int] = (),
        retry: bool = True,
    ) -> tuple[httpx.Response, bytes]:
        """GET with a body of at most ``limit`` bytes (longer → RegistryError), retried."""
        body = bytearray()

        def call() -> httpx.Response:
            # Blob GETs may redirect to blob storage; httpx drops Authorization across origins.
            with self._client.stream(
                "GET",
                url,
                headers=headers,
                follow_redirects=True,
                auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
            ) as r:
                body.clear()
                if r.status_code != 200:
                    r.read()
                    body.extend(r.content)
                    return r
                declared = r.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise RegistryError(
                        f"{what}: {_redact(url)} is {declared} bytes, over the limit of {limit}"
                    )
                for piece in r.iter_bytes():
                    body.extend(piece)
                    if len(body) > limit:
                        raise RegistryError(
                            f"{what}: {_redact(url)} is over the limit of {limit} bytes"
                        )
                return r

        r = self._with_retries(what, url, call, (200,), allow, retry)
        return r, bytes(body)

    # ------------------------------------------------------------------ manifests

    def _get_manifest_raw(
        self, ref: ReferenceLike, what: str, base: str | None = None, retry: bool = True
    ) -> tuple[bytes, str, str | None]:
        """Raw bytes, Content-Type and Docker-Content-Digest of ``ref``'s manifest; the digest
        is verified against ``@digest`` when given, else against the header when present.
        ``base``: the repository URL to ask (default: the registry itself)."""
        target = ref.digest or ref.tag
        if not target:
            raise ValueError(f"{what}: the reference needs a tag or a digest")
        url = f"{base or self._base(ref)}/manifests/{target}"
        r, raw = self._get_limited(
            what, url, MAX_MANIFEST_SIZE, {"Accept": _MANIFEST_ACCEPT}, retry=retry
        )
        actual = digest_of(raw)
        header = r.headers.get("Docker-Content-Digest")
        expected = ref.digest or (header if header and header.startswith("sha256:") else None)
        if expected is not None and actual != expected:
            raise DigestMismatch(f"{what}: manifest", expected, actual)
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
        return raw, ctype, header

    def fetch(self, ref: ReferenceLike | str) -> Manifest:
        """The archive manifest of ``ref`` (tag or digest), raw bytes kept, digest verified.

        The digest is checked against ``@digest`` when the reference has one, else against the
        registry's ``Docker-Content-Digest`` header when present. With ``caches``, a fresh
        tag → digest entry and a cached manifest answer without any request (see the class
        docstring for offline mode and the fallback when the registry is unreachable). Raises
        :class:`~blobfs.errors.RegistryNotFound`, :class:`~blobfs.errors.DigestMismatch`,
        :class:`~blobfs.errors.InvalidManifest` (see :meth:`Manifest.parse`).
        """
        return self._fetch(_parse_ref(ref))[0]

    def _cached_manifest(self, digest: str) -> Manifest | None:
        """The manifest cached under ``digest`` (verified; an unparsable entry is dropped)."""
        if self._caches is None:
            return None
        raw = self._caches.manifests.get(digest)
        if raw is None:
            return None
        try:
            return Manifest.parse(raw)
        except InvalidManifest:
            self._caches.manifests.delete(digest)
            return None

    def _fetch(self, r: ReferenceLike) -> tuple[Manifest, str | None]:
        """The manifest of ``r`` and the repository base URL that served it (None: a cache)."""
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
                    return cached, None
            if self._offline:
                return self._from_cache(r, None), None
        try:
            (raw, ctype, _), base = self._read(
                r, what, lambda b, retry: self._get_manifest_raw(r, what, b, retry)
            )
        except RegistryError as exc:
            if caches is not None and _unreachable(exc):
                return self._from_cache(r, exc), None
            raise
        if ctype in (OCI_INDEX, DOCKER_MANIFEST_LIST):
            raise InvalidManifest(f"{what} is an image index ({ctype}), not an archive manifest")
        try:
            manifest = Manifest.parse(raw)
        except InvalidManifest as exc:
            raise InvalidManifest(f"{what}: {exc}") from None
        if caches is not None:
            caches.manifests.put(manifest.digest, raw)
            if r.tag and not r.digest:
                caches.refs.put(what, manifest.digest)
        return manifest, base

    def _from_cache(self, r: ReferenceLike, cause: RegistryError | None) -> Manifest:
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

    def _fetch_index(self, ref: ReferenceLike, manifest: Manifest, max_index_size: int) -> Index:
        return self._fetch_index_from(ref, manifest, max_index_size)[0]

    def _fetch_index_from(
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

            def get(b: str, retry: bool) -> bytes:
                _, raw = self._get_limited(what, f"{b}/blobs/{desc.digest}", desc.size, retry=retry)
                if len(raw) != desc.size:
                    raise DigestMismatch(what, f"{desc.size} bytes", f"{len(raw)} bytes")
                actual = digest_of(raw)
                if actual != desc.digest:
                    raise DigestMismatch(what, desc.digest, actual)
                return raw

            raw, base = self._read(ref, what, get)
            if self._caches is not None:
                self._caches.indexes.put(desc.digest, raw)
        index = Index(raw)
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

    def inspect(
        self, ref: ReferenceLike | str, *, max_index_size: int = DEFAULT_MAX_INDEX_SIZE
    ) -> Inspection:
        """Manifest and verified index of ``ref`` (no data blob traffic)."""
        r = _parse_ref(ref)
        manifest = self.fetch(r)
        index = self._fetch_index(r, manifest, max_index_size)
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

        The manifest is fetched and verified, the index blob fetched (at most
        ``max_index_size`` bytes, 0 = no limit), its digest verified and its data_hash/data_size
        checked against the data layer before use. The data blob itself is not downloaded:
        files are read (and verified) on demand, through ``cache``/``block_cache`` when given.
        The archive owns its connection pool (``close()`` it; it outlives this registry).
        """
        r = _parse_ref(ref)
        manifest, manifest_base = self._fetch(r)
        index, index_base = self._fetch_index_from(r, manifest, max_index_size)
        data = manifest.data_descriptor
        base = index_base or manifest_base or self._data_base(r, data.digest)
        # trust_env (the default) keeps HTTP(S)_PROXY/NO_PROXY honoured for range reads too.
        http = httpx.Client(
            auth=self._auth, timeout=self._timeout, trust_env=True, verify=self._verify
        )
        try:
            source = HttpSource(
                f"{base}/blobs/{data.digest}",
                size=data.size,
                source_id=data.digest,
                client=http,
                timeout=self._timeout,
            )
            return RemoteArchive(
                index,
                source,
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
                    log.info("%s: mirror %s lacks %s (%s)", ref, _redact(base), digest, exc)
        return bases[-1][0]

    # ------------------------------------------------------------------ push

    def _has_blob(self, ref: ReferenceLike, digest: str, size: int) -> bool:
        url = self.blob_url(ref, digest)
        r = self._send(f"{ref}: blob {digest}", "HEAD", url, ok=(200,), allow=(404,))
        if r.status_code != 200:
            return False
        length = r.headers.get("Content-Length")
        return length is None or not length.isdigit() or int(length) == size

    def _upload(
        self,
        ref: ReferenceLike,
        digest: str,
        size: int,
        opener: Callable[[], contextlib.AbstractContextManager[Any]],
        progress: UploadProgress | None = None,
    ) -> bool:
        """Upload one blob unless the registry has it; True when bytes were sent.

        ``opener`` gives a fresh binary file positioned at 0 (an upload that fails with a
        transient error is restarted from the beginning, up to ``retries`` times).
        ``progress(digest, bytes_done, size)`` is called as the registry accepts bytes (see
        :meth:`push`).
        """
        what = f"{ref}: blob {digest}"
        if self._has_blob(ref, digest, size):
            log.debug("%s: already in the registry, skipped", what)
            if progress is not None:
                progress(digest, size, size)
            return False
        attempts = self._retries + 1
        for attempt in range(attempts):
            try:
                with opener() as f:
                    self._upload_once(ref, what, digest, size, f, progress)
                return True
            except RegistryError as exc:
                # Retry what a moment may cure: a retryable status or a network failure (the
                # TransportError is the context of the RegistryError raised from it).
                transient = exc.status in _RETRY_STATUS or isinstance(
                    exc.__context__, httpx.TransportError
                )
                if not transient or attempt == attempts - 1:
                    raise
                log.info("%s: upload failed (%s), starting again", what, exc)
                self._sleep(attempt, None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _upload_once(
        self,
        ref: ReferenceLike,
        what: str,
        digest: str,
        size: int,
        f: Any,
        progress: UploadProgress | None = None,
    ) -> None:
        start = f"{self._base(ref)}/blobs/uploads/"
        r = self._send(what, "POST", start, ok=(202,), retry=False)
        location = self._location(what, start, r)
        ctype = {"Content-Type": "application/octet-stream"}
        if size <= self._chunk_size:
            body = f.read(size + 1)
            if len(body) != size:
                raise RegistryError(f"{what}: the file is {len(body)} bytes, expected {size}")
            self._send(
                what,
                "PUT",
                location.copy_add_param("digest", digest),
                headers=ctype,
                content=body,
                ok=(201,),
                retry=False,
            )
            if progress is not None:
                progress(digest, size, size)
            return
        sent = 0
        hasher = hashlib.sha256()
        while sent < size:
            chunk = f.read(min(self._chunk_size, size - sent))
            if not chunk:
                raise RegistryError(f"{what}: the file ended after {sent} of {size} bytes")
            hasher.update(chunk)
            headers = {
                **ctype,
                "Content-Range": f"{sent}-{sent + len(chunk) - 1}",
            }
            r = self._send(
                what, "PATCH", location, headers=headers, content=chunk, ok=(202,), retry=False
            )
            location = self._location(what, location, r)
            sent += len(chunk)
            if progress is not None:
                progress(digest, sent, size)
        if f.read(1):
            raise RegistryError(f"{what}: the file is longer than {size} bytes")
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise DigestMismatch(f"{what}: local file", digest, actual)
        self._send(
            what,
            "PUT",
            location.copy_add_param("digest", digest),
            headers={"Content-Length": "0"},
            ok=(201,),
            retry=False,
        )

    @staticmethod
    def _location(what: str, base: httpx.URL | str, r: httpx.Response) -> httpx.URL:
        loc = r.headers.get("Location")
        if not loc:
            raise RegistryError(f"{what}: upload answer without a Location header")
        # httpx's params= would drop the _state query string: keep the URL as given.
        return httpx.URL(str(base)).join(loc)

    def _put_manifest(self, ref: ReferenceLike, target: str, raw: bytes, media_type: str) -> None:
        what = f"{ref.registry}/{ref.repository}:{target}"
        r = self._send(
            what,
            "PUT",
            f"{self._base(ref)}/manifests/{target}",
            headers={"Content-Type": media_type},
            content=raw,
            ok=(201, 200),
        )
        expected = digest_of(raw)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != expected:
            raise DigestMismatch(f"{what}: manifest stored", expected, got)

    def push(
        self,
        ref: ReferenceLike | str,
        src: str | os.PathLike[str],
        *,
        compression: Compression = Compression.ZSTD,
        tags: Sequence[str] = (),
        annotations: Mapping[str, str] | None = None,
        created: str | None = None,
        progress: UploadProgress | None = None,
    ) -> Manifest:
        """Push a directory tree, or a local archive directory, as ``ref`` (which needs a tag).

        ``src`` holding ``index.blob`` and ``data.blob`` is pushed as it is; any other directory
        is archived first (``compression``) into a temporary directory next to nothing else,
        streamed to disk, removed afterwards. Blobs go up in order config, index, data, each
        skipped when the registry already has it (HEAD), the data blob streamed from its file in
        PATCH chunks; then the manifest under ``ref``'s tag, then under each of ``tags`` (the
        same raw bytes). Returns the manifest pushed (``.raw`` exactly as stored).

        ``progress(digest, bytes_done, total)``, when given, is called in the calling thread for
        each blob: after every PATCH chunk the registry accepted (increasing ``bytes_done``),
        and with ``bytes_done == total`` when the blob is complete (or already present). A
        restarted upload (transient error) reports from its first chunk again.
        """
        r = _parse_ref(ref)
        if not r.tag or r.digest:
            raise ValueError(f"push needs a reference with a tag and no digest, got {r}")
        src_path = Path(src)
        index_path, data_path = src_path / "index.blob", src_path / "data.blob"
        if index_path.is_file() and data_path.is_file():
            return self._push_archive(
                r, index_path, data_path, tags, annotations, created, progress
            )
        if not src_path.is_dir():
            raise ValueError(f"{src}: not a directory")
        with tempfile.TemporaryDirectory(prefix="blobfs-push-") as tmp:
            create_blob(src_path, tmp, compression=compression).close()
            return self._push_archive(
                r,
                Path(tmp) / "index.blob",
                Path(tmp) / "data.blob",
                tags,
                annotations,
                created,
                progress,
            )

    def _push_archive(
        self,
        ref: ReferenceLike,
        index_path: Path,
        data_path: Path,
        tags: Sequence[str],
        annotations: Mapping[str, str] | None,
        created: str | None,
        progress: UploadProgress | None = None,
    ) -> Manifest:
        index_raw = index_path.read_bytes()
        index = Index(index_raw)
        data_size = data_path.stat().st_size
        if index.data_hash:
            if index.data_size != data_size:
                raise ValueError(
                    f"{data_path} is {data_size} bytes, the index records {index.data_size}"
                )
            data_digest = "sha256:" + index.data_hash.hex()
        else:
            data_digest = _hash_file(data_path)
        index_desc = Descriptor(INDEX_MEDIA_TYPE, digest_of(index_raw), len(index_raw))
        data_desc = Descriptor(DATA_MEDIA_TYPE, data_digest, data_size)
        raw = build_manifest(index_desc, data_desc, annotations, created=created)
        manifest = Manifest.parse(raw)
        self._upload(
            ref,
            EMPTY_CONFIG_DIGEST,
            len(EMPTY_CONFIG),
            lambda: _bytes_file(EMPTY_CONFIG),
            progress,
        )
        self._upload(
            ref, index_desc.digest, index_desc.size, lambda: _bytes_file(index_raw), progress
        )
        self._upload(ref, data_digest, data_size, lambda: _open_file(data_path), progress)
        assert ref.tag is not None
        for tag in (ref.tag, *tags):
            self._put_manifest(ref, tag, raw, OCI_MANIFEST)
        return manifest

    # ------------------------------------------------------------------ tags, referrers

    def tag(self, ref: ReferenceLike | str, digest: str) -> str:
        """Tag manifest ``digest`` of ``ref``'s repository as ``ref``'s tag; return the digest.

        The exact raw bytes are fetched by digest (verified) and put again under the tag, so
        the digest does not change (checked against the registry's answer). Any manifest type
        may be tagged, not only archives.
        """
        r = _parse_ref(ref)
        if not r.tag:
            raise ValueError(f"tag needs a reference with a tag, got {r}")
        by_digest = _Reference(r.registry, r.repository, None, digest)
        raw, ctype, _ = self._get_manifest_raw(by_digest, f"{r.registry}/{r.repository}@{digest}")
        self._put_manifest(r, r.tag, raw, ctype or OCI_MANIFEST)
        return digest

    def list_tags(self, ref: ReferenceLike | str) -> list[str]:
        """All tags of ``ref``'s repository (tag/digest of ``ref`` ignored), following ``Link``
        pagination. ``ref`` may be a bare ``host/repository``."""
        r = _parse_ref(ref, default_tag="latest")
        what = f"{r.registry}/{r.repository}"
        upstream = self._base(r)
        url: httpx.URL | None = httpx.URL(f"{upstream}/tags/list").copy_add_param(
            "n", str(TAGS_PAGE)
        )
        tags: list[str] = []
        pages = 0
        while url is not None and pages < _MAX_PAGES:
            pages += 1

            def get(b: str, retry: bool, page: httpx.URL = url) -> tuple[httpx.Response, bytes]:
                target = _rebase(page, b, upstream)
                return self._get_limited(what, target, MAX_MANIFEST_SIZE, retry=retry)

            resp, body = self._read(r, what, get)[0]
            try:
                doc = json.loads(body)
                names = doc.get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{what}: malformed tag list") from None
            if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
                raise RegistryError(f"{what}: malformed tag list")
            tags.extend(names)
            nxt = resp.links.get("next", {}).get("url")
            url = url.join(nxt) if nxt else None
        return tags

    def referrers(
        self, ref: ReferenceLike | str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is ``ref``'s manifest.

        Uses the OCI 1.1 referrers API; when the registry lacks it (404), the tag-schema
        fallback (tag ``sha256-<hex>`` holding an image index; none → empty list). Filtered by
        ``artifact_type`` when given (also when the registry ignored the filter).
        """
        r = _parse_ref(ref)
        digest = r.digest or self._resolve(r)
        what = f"{r.registry}/{r.repository}@{digest}: referrers"
        url = httpx.URL(f"{self._base(r)}/referrers/{digest}")
        if artifact_type:
            url = url.copy_add_param("artifactType", artifact_type)
        resp, body = self._get_limited(
            what, str(url), MAX_MANIFEST_SIZE, {"Accept": OCI_INDEX}, allow=(404,)
        )
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if resp.status_code == 404 or ctype != OCI_INDEX:
            fallback = f"{self._base(r)}/manifests/sha256-{digest.removeprefix('sha256:')}"
            resp, body = self._get_limited(
                what, fallback, MAX_MANIFEST_SIZE, {"Accept": OCI_INDEX}, allow=(404,)
            )
            if resp.status_code == 404:
                return []
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError(f"{what}: the referrers index is not JSON") from None
        items = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise RegistryError(f"{what}: the referrers answer is not an image index")
        out = [Descriptor.from_json(m, f"{what}: entry {i}") for i, m in enumerate(items)]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def _resolve(self, ref: ReferenceLike) -> str:
        """The digest of ``ref``'s manifest (HEAD, falling back to a verified GET)."""
        if ref.digest:
            return ref.digest
        url = f"{self._base(ref)}/manifests/{ref.tag}"
        r = self._send(str(ref), "HEAD", url, headers={"Accept": _MANIFEST_ACCEPT})
        header = r.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:"):
            return str(header)
        raw, _, _ = self._get_manifest_raw(ref, str(ref))
        return digest_of(raw)

    def resolve(self, ref: ReferenceLike | str) -> str:
        """The manifest digest ``ref``'s tag points at (``ref``'s own digest when given)."""
        return self._resolve(_parse_ref(ref))


def _rebase(url: httpx.URL, base: str, upstream: str) -> str:
    """``url`` (under ``upstream``) moved under ``base`` (the same path relative to it)."""
    text = str(url)
    return base + text[len(upstream) :] if text.startswith(upstream) else text


def _unreachable(exc: RegistryError) -> bool:
    """True when ``exc`` says the registry could not be reached or could not answer (connection
    errors, 5xx after the retries) — as opposed to an answer (404, 401, bad content)."""
    if exc.status is not None:
        return exc.status >= 500
    return isinstance(exc.__context__, httpx.TransportError)


def _bytes_file(data: bytes) -> contextlib.AbstractContextManager[Any]:
    return io.BytesIO(data)


def _open_file(path: Path) -> contextlib.AbstractContextManager[Any]:
    return open(path, "rb")


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()
