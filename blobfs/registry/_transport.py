"""The request side of :class:`~blobfs.registry.Registry`: URLs, retries, deadlines, mirrors.

:class:`Transport` holds a registry client's settings and its pooled ``httpx.Client`` and sends
every API request: retried on 408/429/5xx and connection errors with exponential backoff
(``Retry-After`` obeyed up to :data:`MAX_RETRY_AFTER`), bodies read under a size cap, errors
translated into :class:`~blobfs.errors.RegistryError` naming what, where (query redacted) and
the status. Reads may go through mirrors first (:meth:`Transport.read`). Manifest GETs by tag
or digest (digest verified) and tag resolution live here too, since every part uses them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

import httpx

from ..core._http_proto import cert_failure
from ..core._tls import default_context
from ..errors import DigestMismatch, RegistryError, RegistryNotFound
from ._manifest import DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2, OCI_INDEX, OCI_MANIFEST, digest_of
from ._mirrors import MirrorSpec, normalize_mirrors
from ._policy_hook import ManifestPolicy
from ._reference import Reference, scheme_for
from .cache import RegistryCaches

__all__ = ["ReferenceLike", "Transport", "parse_ref", "redact"]

log = logging.getLogger(__name__)

T = TypeVar("T")

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
"""Longest ``Retry-After`` honoured; a longer one is cut to this (the call fails after its
retries rather than hanging for the server's whole wish)."""

DEFAULT_CHUNK_SIZE = 8 << 20
"""Largest blob uploaded in one monolithic PUT from memory (configs, most indexes); larger blobs
are streamed from their file in one PATCH (``_upload.py``), so memory stays bounded whatever
the blob's size."""

MAX_MANIFEST_SIZE = 4 << 20
"""Largest manifest or referrers index read (the limit registries themselves apply): a hostile
registry cannot make us buffer an endless body."""

MAX_REDIRECTS = 5
"""Redirect hops followed by one request (blob GETs may be sent to storage once); a loop
becomes a RegistryError after this many."""

_MAX_ERROR_BODY = 64 << 10
"""Bytes of an error answer read for its message (registries send a few hundred)."""

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""Statuses worth retrying: the server may succeed a moment later."""

MANIFEST_ACCEPT = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST))
"""Accept list of manifest GETs: the OCI manifest, plus what we must recognise to reject
clearly (a registry answers 404 rather than a type not accepted)."""


class ReferenceLike(Protocol):
    """What the client needs of a parsed reference (:class:`~blobfs.registry.Reference`).

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


def parse_ref(ref: ReferenceLike | str, default_tag: str | None = None) -> Reference:
    """``ref`` as a :class:`Reference` (strings parsed; other reference objects copied)."""
    if isinstance(ref, Reference):
        return ref
    if isinstance(ref, str):
        return Reference.parse(ref, default_tag=default_tag)
    return Reference(ref.registry, ref.repository, ref.tag, ref.digest)


def redact(url: httpx.URL | str) -> str:
    """The URL without query string or user info (upload locations carry state tokens)."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, userinfo=b"")) + ("?…" if u.query else "")


def rebase(url: httpx.URL, base: str, upstream: str) -> str:
    """``url`` (under ``upstream``) moved under ``base`` (the same path relative to it)."""
    text = str(url)
    return base + text[len(upstream) :] if text.startswith(upstream) else text


def unreachable(exc: RegistryError) -> bool:
    """True when ``exc`` says the registry could not be reached or could not answer (connection
    errors, 5xx after the retries) — as opposed to an answer (404, 401, bad content)."""
    if exc.status is not None:
        return exc.status >= 500
    return isinstance(exc.__context__, httpx.TransportError)


def transient(exc: RegistryError) -> bool:
    """True when a moment may cure ``exc``: a retryable status or a network failure (the
    TransportError is the context of the RegistryError raised from it), except a TLS
    certificate that failed verification."""
    if exc.status in RETRY_STATUS:
        return True
    cause = exc.__context__
    return isinstance(cause, httpx.TransportError) and cert_failure(cause) is None


def retry_delay(backoff: float, attempt: int, retry_after: str | None) -> float:
    """Seconds to wait before retry ``attempt + 1``: ``backoff * 2**attempt``, or the server's
    ``Retry-After`` in seconds (an HTTP date or garbage is ignored) capped at
    :data:`MAX_RETRY_AFTER`."""
    delay = backoff * (1 << attempt)
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            asked = float(retry_after)
            if asked == asked:  # not NaN
                delay = max(0.0, min(asked, MAX_RETRY_AFTER))
    return delay


class Transport:
    """Settings and requests of a registry client; see :class:`~blobfs.registry.Registry`
    for the meaning of each argument (``chunk_size`` is for uploads, ``policy`` for fetches:
    every setting is taken here, once). Thread-safe (one pooled ``httpx.Client``)."""

    def __init__(
        self,
        *,
        auth: httpx.Auth | None = None,
        plain_http: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        client: httpx.Client | None = None,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        insecure_hosts: Collection[str] = (),
        caches: RegistryCaches | None = None,
        offline: bool = False,
        mirrors: Mapping[str, Sequence[MirrorSpec]] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        policy: ManifestPolicy | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
        self._chunk_size = chunk_size
        self._policy = policy
        self._auth = auth
        self._plain_http = plain_http
        self._insecure_hosts = tuple(insecure_hosts)
        self._timeout = timeout
        self._retries = retries
        self._backoff = backoff
        # One context for the API client and every pulled archive's client; without a CA file
        # it loads httpx's default bundle at the first TLS handshake (see _tls.py: building it
        # per client dominated a cold read).
        self._verify: ssl.SSLContext = default_context()
        if ca_file is not None:
            # Read now: a missing bundle is an error here, not at the first HTTPS request.
            self._verify = ssl.create_default_context(cafile=os.fspath(ca_file))
        self._owns_client = client is None
        # trust_env (the default) keeps HTTP(S)_PROXY/NO_PROXY honoured.
        self._client = (
            client
            if client is not None
            else httpx.Client(
                timeout=timeout,
                trust_env=True,
                verify=self._verify,
                max_redirects=MAX_REDIRECTS,
            )
        )
        self._caches = caches
        self._offline = offline
        self._mirrors = normalize_mirrors(mirrors, plain_http, self._insecure_hosts)

    @property
    def caches(self) -> RegistryCaches | None:
        """The registry caches in use (None: none)."""
        return self._caches

    @property
    def offline(self) -> bool:
        return self._offline

    def close(self) -> None:
        """Close the client made by this registry (not one passed in). Pulled archives keep
        working: each owns its own connection pool."""
        if self._owns_client:
            self._client.close()

    # ------------------------------------------------------------------ URLs

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
                log.info("%s: mirror %s failed (%s); trying the next", what, redact(base), exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def blob_url(self, ref: ReferenceLike | str, digest: str) -> str:
        """The URL of blob ``digest`` in ``ref``'s repository."""
        return f"{self._base(parse_ref(ref))}/blobs/{digest}"

    # ------------------------------------------------------------------ requests

    def _send(
        self,
        what: str,
        method: str,
        url: httpx.URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | Iterable[bytes] | None = None,
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
                if cert_failure(exc) is not None:  # never retried (see cert_failure)
                    raise RegistryError(
                        f"{what}: {redact(url)}: {type(exc).__name__}: {exc}"
                    ) from None
                if last:
                    raise RegistryError(
                        f"{what}: {redact(url)}: {type(exc).__name__}: {exc}"
                        + (f", after {attempts} attempts" if attempts > 1 else "")
                    ) from None
                self._sleep(attempt, None)
                continue
            except httpx.TooManyRedirects:
                raise RegistryError(
                    f"{what}: {redact(url)}: more than {MAX_REDIRECTS} redirects (a loop?)"
                ) from None
            except httpx.RequestError as exc:  # bad URLs and the like: not worth a retry
                raise RegistryError(f"{what}: {redact(url)}: {type(exc).__name__}") from None
            if r.status_code in ok or r.status_code in allow:
                return r
            if r.status_code in RETRY_STATUS and not last:
                log.log(
                    logging.WARNING if attempt else logging.INFO,
                    "%s: HTTP %d, retrying (attempt %d of %d)",
                    what,
                    r.status_code,
                    attempt + 2,
                    attempts,
                )
                self._sleep(attempt, r.headers.get("Retry-After"))
                continue
            raise self._error(what, url, r, attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        time.sleep(retry_delay(self._backoff, attempt, retry_after))

    @staticmethod
    def _error(
        what: str, url: httpx.URL | str, r: httpx.Response, attempts: int = 1
    ) -> RegistryError:
        detail = ""
        with contextlib.suppress(Exception):
            errors = json.loads(r.content).get("errors") or []
            detail = "; ".join(
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
            )
        text = f"{what}: {r.request.method} {redact(url)}: HTTP {r.status_code}"
        if detail:
            text += f" ({detail[:200]})"
        if attempts > 1:
            text += f", after {attempts} attempts"
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
        """GET with a body of at most ``limit`` bytes (longer → RegistryError), retried.

        The cap holds whatever the server claims: a ``Content-Length`` over it fails before
        the body, an endless or lying body fails as soon as it passes the cap.
        """
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
                    # An error body is read only for its message, and only so far: a hostile
                    # server's endless error body must not hang us either.
                    for piece in r.iter_bytes():
                        body.extend(piece[: _MAX_ERROR_BODY - len(body)])
                        if len(body) >= _MAX_ERROR_BODY:
                            break
                    kept = [
                        (k, v)
                        for k, v in r.headers.multi_items()
                        if k.lower() not in ("content-encoding", "content-length")
                    ]
                    return httpx.Response(
                        r.status_code, headers=kept, content=bytes(body), request=r.request
                    )
                declared = r.headers.get("Content-Length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise RegistryError(
                        f"{what}: {redact(url)} is {declared} bytes, "
                        f"over the limit of {limit} bytes"
                    )
                for piece in r.iter_bytes():
                    body.extend(piece)
                    if len(body) > limit:
                        raise RegistryError(
                            f"{what}: {redact(url)} is over the limit of {limit} bytes"
                        )
                return r

        r = self._with_retries(what, url, call, (200,), allow, retry)
        return r, bytes(body)

    # ------------------------------------------------------------------ manifests

    def _get_manifest_raw(
        self,
        ref: ReferenceLike,
        what: str,
        base: str | None = None,
        retry: bool = True,
        accept: str = MANIFEST_ACCEPT,
        limit: int = MAX_MANIFEST_SIZE,
    ) -> tuple[bytes, str, str | None]:
        """Raw bytes, Content-Type and Docker-Content-Digest of ``ref``'s manifest; the digest
        is verified against ``@digest`` when given, else against the header when present.
        ``base``: the repository URL to ask (default: the registry itself)."""
        target = ref.digest or ref.tag
        if not target:
            raise ValueError(f"{what}: the reference needs a tag or a digest")
        url = f"{base or self._base(ref)}/manifests/{target}"
        r, raw = self._get_limited(what, url, limit, {"Accept": accept}, retry=retry)
        actual = digest_of(raw)
        header = r.headers.get("Docker-Content-Digest")
        expected = ref.digest or (header if header and header.startswith("sha256:") else None)
        if expected is not None and actual != expected:
            raise DigestMismatch(f"{what}: manifest", expected, actual)
        ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
        return raw, ctype, header

    def _resolve(self, ref: ReferenceLike) -> str:
        """The digest of ``ref``'s manifest (HEAD, falling back to a verified GET)."""
        if ref.digest:
            return ref.digest
        url = f"{self._base(ref)}/manifests/{ref.tag}"
        r = self._send(str(ref), "HEAD", url, headers={"Accept": MANIFEST_ACCEPT})
        header = r.headers.get("Docker-Content-Digest")
        if header and header.startswith("sha256:"):
            return str(header)
        raw, _, _ = self._get_manifest_raw(ref, str(ref))
        return digest_of(raw)

    def resolve(self, ref: ReferenceLike | str) -> str:
        """The manifest digest ``ref``'s tag points at (``ref``'s own digest when given)."""
        return self._resolve(parse_ref(ref))
