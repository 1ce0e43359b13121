"""The HTTP range protocol of :class:`~blobfs.core.http.HttpSource`, without any I/O (sans-IO).

Everything that decides something lives here, once: which URL and headers a request carries,
whether a response is acceptable, how many of its body bytes to keep, whether a failure is
retried and after how long, when a redirect target is forgotten. The sync and async drivers in
``blobfs/core/http.py`` only move bytes: they send the :class:`Request` an :class:`Exchange`
asks for, hand back the status and headers, feed the body to a :class:`BodyCollector`, and
sleep for the delay the exchange returns.

One :class:`Exchange` is one logical operation (the size probe, or one ``read_at``): it may take
several HTTP requests (redirect hops, retries, a re-resolution of an expired redirect).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

from ..errors import HttpError
from ._http_wire import (
    BodyCollector,
    Problem,
    Take,
    backoff_delay,
    origin,
    parse_content_range,
    parse_retry_after,
    redact_url,
)

__all__ = [
    "FOLLOW",
    "BodyCollector",
    "Done",
    "Exchange",
    "ProbeExchange",
    "ProbeResult",
    "Problem",
    "ReadExchange",
    "Request",
    "Settings",
    "SharedState",
    "Take",
    "cert_failure",
    "redact_url",
]

# Retry and redirect logs are the public module's: users configure "blobfs.core.http".
log = logging.getLogger("blobfs.core.http")

T = TypeVar("T")


def cert_failure(exc: BaseException | None) -> ssl.SSLCertVerificationError | None:
    """The TLS certificate verification failure behind ``exc`` (httpx wraps httpcore's error,
    which wraps the ``ssl`` one), or None. Such a failure is never retried (here and by the
    registry client): the certificate will not change in a moment, and each attempt costs a
    handshake."""
    for _ in range(8):
        if exc is None or isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


# Statuses that say "try again": request timeout, rate limited, and the 5xx a load balancer or
# an overloaded registry gives while it recovers. Other 4xx/5xx are answers, not accidents.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# Statuses from a remembered redirect target that mean "the target went stale", not "the blob is
# gone": presigned storage URLs expire (S3 says 403, some stores 401 or 404, a CDN 410).
RERESOLVE_STATUSES = frozenset({401, 403, 404, 410})

# Headers that carry credentials: sent only to the origin of the URL the source was given, never
# to a redirect target on another origin (blob storage, a CDN).
SENSITIVE_HEADERS = ("authorization", "cookie", "proxy-authorization")

# Registries send a blob GET through one hop (to storage), sometimes two (storage -> CDN); more
# than this is a loop or a misconfiguration.
MAX_REDIRECTS = 5

# A malformed answer (short or overlong body, wrong Content-Range) usually comes from a flaky
# proxy and is retried, but only this often: a server that keeps lying will not start telling
# the truth, and every retry downloads the range again.
MALFORMED_RETRIES = 2

# Failures up to this attempt are logged at DEBUG (a blip is routine); later ones at WARNING,
# since the read is now visibly slow and an operator may want to know why.
QUIET_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class Settings:
    """The fixed configuration of one source, shared by all its exchanges."""

    url: httpx.URL
    display_url: str
    headers: httpx.Headers
    retries: int
    backoff: float


class SharedState:
    """What exchanges learn and later ones reuse: the resolved redirect target, range support.

    Thread-safe: sync reads from many threads and async reads update it concurrently; every
    access holds a lock (never across I/O).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: httpx.URL | None = None
        self._ranges_ignored_logged = False

    @property
    def target(self) -> httpx.URL | None:
        with self._lock:
            return self._target

    def remember_target(self, url: httpx.URL | None) -> None:
        with self._lock:
            self._target = url

    def forget_target(self, url: httpx.URL) -> None:
        """Forget ``url`` as the target, unless another exchange already replaced it."""
        with self._lock:
            if self._target == url:
                self._target = None

    def note_ranges_ignored(self, display_url: str) -> None:
        """Log once per source that the server answers ranges with the whole blob."""
        with self._lock:
            first = not self._ranges_ignored_logged
            self._ranges_ignored_logged = True
        if first:
            log.warning(
                "%s: the server ignores Range requests; every read streams the blob from its "
                "start (slow for reads far into it)",
                display_url,
            )


@dataclass(frozen=True, slots=True)
class Request:
    """One GET to send: ``strip`` names headers to delete after the client merged its defaults."""

    url: httpx.URL
    headers: httpx.Headers
    strip: tuple[str, ...]
    same_origin: bool
    """False for a redirect target on another origin: send without the client's ``auth``."""


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The exchange finished with ``value`` without needing the body."""

    value: T


class _Follow:
    """Send the next request (a redirect was accepted); the exchange holds the new URL."""

    def __repr__(self) -> str:
        return "FOLLOW"


FOLLOW = _Follow()

Step = Take | Done[T] | _Follow


class Exchange(Generic[T]):
    """One logical operation: requests, redirects, validation, retries. Subclasses validate.

    Driver protocol::

        while True:
            req = ex.request()
            try:
                send req; step = ex.on_head(status, headers)
                if step is FOLLOW: continue
                if isinstance(step, Done): return step.value
                collector = BodyCollector(step); feed body chunks until feed() is True
                return ex.on_body(collector)
            except <transport error> as e:  delay = ex.failed(ex.transport_problem(e))
            except Problem as p:             delay = ex.failed(p)
            sleep(delay)

    Not thread-safe: one exchange is driven by one thread or task.
    """

    def __init__(self, settings: Settings, state: SharedState, what: str) -> None:
        self._settings = settings
        self._state = state
        self._what = what
        target = state.target
        self._url = target if target is not None else settings.url
        self._via_target = target is not None
        self._hops = 0
        self._reresolved = False
        self._attempts = 1
        self._failures = 0
        self._malformed = 0

    # -- requests ----------------------------------------------------------------------------

    def request(self) -> Request:
        same = origin(self._url) == origin(self._settings.url)
        headers = httpx.Headers(self._settings.headers)
        # Ranges must arrive as sent: a transparently gzipped range cannot be cut or verified.
        headers["Accept-Encoding"] = "identity"
        self._add_headers(headers)
        strip: tuple[str, ...] = ()
        if not same:
            for name in SENSITIVE_HEADERS:
                headers.pop(name, None)
            strip = SENSITIVE_HEADERS
        return Request(url=self._url, headers=headers, strip=strip, same_origin=same)

    def _add_headers(self, headers: httpx.Headers) -> None:
        """Add the operation's own headers (Range)."""

    # -- responses ---------------------------------------------------------------------------

    def on_head(self, status: int, headers: Mapping[str, str]) -> Step[T]:
        """Decide on a response from its status and headers; raises :class:`Problem`."""
        if status in (301, 302, 303, 307, 308):
            location = headers.get("location")
            if not location:
                raise Problem("fatal", "redirect without a Location header", status=status)
            self._hops += 1
            if self._hops > MAX_REDIRECTS:
                raise Problem("fatal", f"more than {MAX_REDIRECTS} redirects", status=status)
            try:
                self._url = self._url.join(location)
            except httpx.InvalidURL as e:
                raise Problem("fatal", "redirect to an invalid URL", status=status) from e
            if self._url.scheme not in ("http", "https"):
                raise Problem("fatal", "redirect to a non-HTTP URL", status=status)
            return FOLLOW
        if status in RETRYABLE_STATUSES:
            raise Problem(
                "retry",
                "server busy or failing",
                status=status,
                retry_after=parse_retry_after(headers.get("retry-after")),
            )
        if status in RERESOLVE_STATUSES and self._via_target:
            raise Problem("reresolve", "redirect target refused the request", status=status)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if status in (200, 206) and encoding not in ("", "identity"):
            raise Problem(
                "fatal",
                f"server sent Content-Encoding {encoding!r} despite Accept-Encoding: identity",
                status=status,
            )
        step = self._on_status(status, headers)
        if self._hops:
            # The target answered: later exchanges go straight there (one round trip saved).
            self._state.remember_target(self._url)
        return step

    def _on_status(self, status: int, headers: Mapping[str, str]) -> Step[T]:
        raise NotImplementedError

    def on_body(self, body: BodyCollector) -> T:
        raise NotImplementedError

    def _unexpected(self, status: int) -> Problem:
        reason = {
            401: "unauthorized",
            403: "forbidden",
            404: "not found",
            410: "gone",
        }.get(status, "unexpected status")
        return Problem("fatal", reason, status=status)

    # -- failures ----------------------------------------------------------------------------

    @staticmethod
    def transport_problem(exc: httpx.TransportError) -> Problem:
        """Classify an httpx transport failure (never its message's header values: it has none)."""
        if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
            return Problem("fatal", f"cannot send the request: {exc}")
        if cert_failure(exc) is not None:
            return Problem("fatal", f"{type(exc).__name__}: {exc}")
        if isinstance(exc, httpx.TimeoutException):
            return Problem("retry", f"timed out ({type(exc).__name__})")
        return Problem("retry", f"connection failed ({type(exc).__name__}: {exc})")

    def failed(self, problem: Problem) -> float:
        """Seconds to wait before the next request, or raise the final :class:`HttpError`."""
        if problem.kind == "reresolve" and not self._reresolved:
            # An expired presigned URL: ask the origin for a fresh redirect, at once.
            self._reresolved = True
            self._state.forget_target(self._url)
            log.debug(
                "%s: redirect target answered HTTP %s; resolving again",
                self._settings.display_url,
                problem.status,
            )
            self._attempts += 1
            self._reset_to_origin()
            return 0.0
        if problem.kind in ("retry", "malformed"):
            self._failures += 1
            if problem.kind == "malformed":
                self._malformed += 1
            exhausted = self._failures > self._settings.retries or (
                self._malformed > MALFORMED_RETRIES
            )
            if not exhausted:
                delay = backoff_delay(self._failures, self._settings.backoff)
                if problem.retry_after is not None:
                    delay = max(delay, problem.retry_after)
                level = logging.DEBUG if self._failures <= QUIET_ATTEMPTS else logging.WARNING
                log.log(
                    level,
                    "%s: %s: %s%s; retry %d of %d in %.2f s",
                    self._settings.display_url,
                    self._what,
                    problem.reason,
                    f" (HTTP {problem.status})" if problem.status is not None else "",
                    self._failures,
                    self._settings.retries,
                    delay,
                )
                self._attempts += 1
                self._restart()
                return delay
        raise self._error(problem)

    def _reset_to_origin(self) -> None:
        self._url = self._settings.url
        self._via_target = False
        self._hops = 0

    def _restart(self) -> None:
        """Begin the next attempt: from the remembered target if there is one, else the origin."""
        target = self._state.target
        if target is not None:
            self._url, self._via_target = target, True
        else:
            self._reset_to_origin()
        self._hops = 0

    def _error(self, problem: Problem) -> HttpError:
        message = f"{self._what}: {problem.reason}"
        if self._url != self._settings.url:
            message += f" (redirected to {redact_url(self._url)})"
        return HttpError(
            self._settings.display_url,
            message,
            status=problem.status,
            attempts=self._attempts,
        )


@dataclass(frozen=True, slots=True)
class ProbeResult:
    size: int
    etag: str | None
    ranges_supported: bool


class ProbeExchange(Exchange[ProbeResult]):
    """``GET Range: bytes=0-0``: learns size, ETag and whether the server honours ranges."""

    def __init__(self, settings: Settings, state: SharedState) -> None:
        super().__init__(settings, state, "size probe")
        self._etag: str | None = None
        self._total = 0

    def _add_headers(self, headers: httpx.Headers) -> None:
        headers["Range"] = "bytes=0-0"

    def _on_status(self, status: int, headers: Mapping[str, str]) -> Step[ProbeResult]:
        self._etag = headers.get("etag")
        if status == 206:
            parsed = parse_content_range(headers.get("content-range"))
            if parsed is None or parsed[0] != 0 or parsed[1] != 0 or parsed[2] is None:
                raise Problem(
                    "malformed",
                    f"206 with a bad Content-Range {headers.get('content-range')!r} "
                    "(expected 'bytes 0-0/<size>')",
                    status=status,
                )
            self._total = parsed[2]
            return Take(skip=0, take=1, exact=True)
        if status == 416:
            parsed = parse_content_range(headers.get("content-range"))
            if parsed is not None and parsed[2] == 0:
                return Done(ProbeResult(0, self._etag, True))  # the empty blob
            raise Problem(
                "fatal",
                "416 to 'Range: bytes=0-0' without 'Content-Range: bytes */0'",
                status=status,
            )
        if status == 200:
            length = headers.get("content-length")
            if length is None or not length.strip().isdigit():
                raise Problem(
                    "fatal",
                    "server ignores Range and sends no Content-Length: the size is unknown",
                    status=status,
                )
            self._state.note_ranges_ignored(self._settings.display_url)
            # The body is not read: closing the response drops the connection instead.
            return Done(ProbeResult(int(length), self._etag, False))
        raise self._unexpected(status)

    def on_body(self, body: BodyCollector) -> ProbeResult:
        body.result()  # exactly the one byte asked for, or a malformed answer
        return ProbeResult(self._total, self._etag, True)


class ReadExchange(Exchange[bytes]):
    """``GET Range: bytes=offset-end`` for ``length >= 1`` bytes of a blob of known ``size``."""

    def __init__(
        self, settings: Settings, state: SharedState, offset: int, length: int, size: int
    ) -> None:
        super().__init__(settings, state, f"read of {length} bytes at offset {offset}")
        if length <= 0:
            raise ValueError("a read exchange needs length >= 1")
        self._offset = offset
        self._length = length
        self._size = size

    def advance(self, n: int) -> None:
        """Ask only for what follows the first ``n`` bytes from the next attempt on (a partial
        body kept by the caller: a retry continues it instead of starting over)."""
        if not 0 <= n < self._length:
            raise ValueError(f"cannot skip {n} of {self._length} bytes")
        self._offset += n
        self._length -= n

    def _add_headers(self, headers: httpx.Headers) -> None:
        headers["Range"] = f"bytes={self._offset}-{self._offset + self._length - 1}"

    def _on_status(self, status: int, headers: Mapping[str, str]) -> Step[bytes]:
        offset, length, size = self._offset, self._length, self._size
        if status == 206:
            cr = headers.get("content-range")
            parsed = parse_content_range(cr)
            want = (offset, offset + length - 1)
            if parsed is None or parsed[:2] != want:
                raise Problem(
                    "malformed",
                    f"Content-Range {cr!r} does not match the requested bytes {want[0]}-{want[1]}",
                    status=status,
                )
            if parsed[2] is not None and parsed[2] != size:
                raise Problem(
                    "malformed",
                    f"the blob is now {parsed[2]} bytes, expected {size} (did it change?)",
                    status=status,
                )
            self._check_length(headers, length, status)
            return Take(skip=0, take=length, exact=True)
        if status == 200:
            # The whole blob from byte 0 (a proxy that ignores Range): skip to the offset and
            # stop after the range; never download or hold the rest.
            self._check_length(headers, size, status)
            self._state.note_ranges_ignored(self._settings.display_url)
            return Take(skip=offset, take=length, exact=False)
        if status == 416:
            parsed = parse_content_range(headers.get("content-range"))
            now = f"; the server says it has {parsed[2]} bytes" if parsed and parsed[2] else ""
            raise Problem(
                "fatal",
                f"range not satisfiable (the blob should have {size} bytes{now}; did it shrink?)",
                status=status,
            )
        raise self._unexpected(status)

    def _check_length(self, headers: Mapping[str, str], expected: int, status: int) -> None:
        value = headers.get("content-length")
        if value is None:
            return  # chunked: the body collector checks the length
        if not value.strip().isdigit() or int(value) != expected:
            what = "body" if status == 206 else "blob"
            raise Problem(
                "malformed",
                f"Content-Length {value.strip()!r} for a {what} of {expected} bytes",
                status=status,
            )

    def on_body(self, body: BodyCollector) -> bytes:
        return body.result()
