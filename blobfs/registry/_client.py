"""The synchronous OCI registry client of blobfs: :class:`Registry`, a facade over its parts.

Push, pull (lazy, range requests), fetch, inspect, tag, list tags, referrers and attached
artifacts of blobfs archives in any OCI distribution registry, over one pooled
``httpx.Client``. Manifests are kept as the exact raw bytes received or built; every blob
fetched is checked against its digest before use; uploads stream from files and never hold a
blob in memory. The parts, each a class :class:`Registry` inherits from:

- :mod:`._transport`: settings, URLs, requests with retries and caps, mirrors, manifest GETs;
- :mod:`._upload`: blob uploads, manifest puts, ``push``;
- :mod:`._reads`: ``fetch``, ``inspect``, ``pull``, the registry caches, the policy hook;
- :mod:`._artifacts`: ``tag``, ``list_tags``, ``referrers``, ``fetch_manifest_bytes``,
  ``fetch_blob``, ``attach``.

There is no asynchronous twin: the metadata calls are a handful per pull, which async callers
run in a worker thread; a pulled archive's data reads are asynchronous already (``aread_at``).
"""

from __future__ import annotations

from ._artifacts import Artifacts
from ._policy_hook import ManifestPolicy
from ._reads import Inspection, RemoteArchive
from ._transport import ReferenceLike
from ._upload import UploadProgress

__all__ = ["Inspection", "ReferenceLike", "Registry", "RemoteArchive", "UploadProgress"]


class Registry(Artifacts):
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
    - ``chunk_size``: blobs up to this size are uploaded in one PUT from memory; larger ones
      are streamed from their file in one PATCH (default 8 MiB).
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
      digest mismatch) falls through to the next one, then to the registry itself; for API
      calls mirrors get one attempt each (no retries: the upstream is the fallback). Pushes,
      tag and referrers always go to the registry itself. Digests are verified whoever served
      the content. A pulled archive's data reads fail over the same way while it is open,
      after the data source's own retries (a mirror that dies is skipped for 30 s, see
      :mod:`blobfs.registry._failover`).
    - ``ca_file``: a PEM bundle of CA certificates to verify registry TLS certificates
      against (instead of the system's), for the API client and the data-blob clients of
      pulled archives; not used with ``client`` (whose TLS settings stay its own) except for
      pulled archives. A missing or unreadable file raises :class:`OSError` at construction.
    - ``policy``: a :class:`~blobfs.registry.ManifestPolicy` evaluated by :meth:`fetch` (so by
      :meth:`pull` and :meth:`inspect`) once the manifest digest is verified and before any
      index is fetched or used, on cache hits and offline too; its
      :class:`~blobfs.errors.PolicyViolation` propagates unchanged.

    HTTP(S) proxies from the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) are
    honoured by the clients this class creates (httpx ``trust_env``).

    References are parsed references (``registry``, ``repository``, ``tag``, ``digest``) or
    strings (parsed with :meth:`blobfs.registry._reference.Reference.parse`).

    Every body read is size-capped (manifests and referrers indexes: 4 MiB; index blobs:
    ``max_index_size``; error answers: 64 KiB), redirects are followed at most 5 hops.

    Errors: 404 → :class:`~blobfs.errors.RegistryNotFound`; other failures
    :class:`~blobfs.errors.RegistryError` naming the reference, the URL (query redacted) and
    status; malformed manifests :class:`~blobfs.errors.InvalidManifest`; content that does not
    match its digest :class:`~blobfs.errors.DigestMismatch`.

    Thread safety: methods may be called from several threads at once (one pooled client).
    """

    @property
    def policy(self) -> ManifestPolicy | None:
        """The trust policy :meth:`fetch` evaluates (None: none)."""
        return self._policy

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
