"""Reading a data blob over HTTP with range requests: :class:`HttpSource`.

The Python twin of the Go reference's ``core/http.NewSource``, hardened where that one is not:
every request has a deadline, failures are retried with backoff (honouring ``Retry-After``),
every response is checked against the range asked for (status, ``Content-Range``, length), a
server that ignores ``Range`` is coped with (without downloading the rest of the blob), and
redirects to blob storage are followed without sending credentials to another origin.

The protocol decisions live in ``blobfs/core/_http_proto.py`` (sans-IO); this module only drives
them with httpx, once synchronously and once asynchronously.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Self, TypeVar, cast

import anyio
import httpcore
import httpx
import sniffio

from ..errors import SourceError
from ._aio import checkpoint
from ._closing import AsyncClosing, Closing
from ._http_proto import (
    BodyCollector,
    Done,
    Exchange,
    ProbeExchange,
    ProbeResult,
    Problem,
    ReadExchange,
    Request,
    Settings,
    SharedState,
    Take,
    redact_url,
)
from ._http_raw import read_raw_body
from ._source import check_range
from ._steps import Progress, WritableBuffer
from ._tls import default_context

__all__ = ["HttpSource"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Default deadline for connecting, for each socket read and write, and for waiting for a pooled
# connection. Long enough for a slow registry's first byte; short enough that a dead peer turns
# into a retry (and then an error) instead of a hung read.
DEFAULT_TIMEOUT = 30.0

# Retries after the first attempt. With the default backoff this rides out a few seconds of
# errors (a registry restart, a rate-limit burst) before the read fails.
DEFAULT_RETRIES = 5

# Connections per client. A few parallel 8-16 MiB ranges saturate a link (see FIELD-NOTES:
# 4 connections beat 1 and 8); 8 leaves room for small random reads next to a sequential one.
DEFAULT_MAX_CONNECTIONS = 8

# Base of the exponential backoff, in seconds (first retry waits up to this, then 2x, 4x, ...).
DEFAULT_BACKOFF = 0.1

# Most bytes one socket read of the source's own HTTP/1.1 connections asks for (httpcore's
# default is 64 KiB). Every socket read costs Python work under the GIL (h11 parsing, httpcore's
# and httpx's generators, one body piece). Reading 1 GiB in 8 MiB ranges over loopback on two
# cores, 1 MiB reads cut the client's CPU from ~2.5 s to ~1.2 s and lifted a bare HttpSource
# from ~410 to ~650 MB/s (one thread), a cold sequential read through an Archive from ~310 to
# ~500 MB/s. A read returns what the socket holds, so it costs at most this much memory per
# connection while it runs.
READ_SIZE = 1 << 20


def _http11_types() -> tuple[type, ...]:
    """httpcore's HTTP/1.1 connection classes, if they still read ``READ_NUM_BYTES`` per read."""
    found = (
        getattr(httpcore, "HTTP11Connection", None),
        getattr(httpcore, "AsyncHTTP11Connection", None),
    )
    return tuple(
        t
        for t in found
        if isinstance(t, type) and isinstance(getattr(t, "READ_NUM_BYTES", None), int)
    )


_HTTP11_TYPES = _http11_types()


def _big_reads(pool: object) -> None:
    """Give the HTTP/1.1 connections of one httpcore pool :data:`READ_SIZE` socket reads.

    httpcore 1.0 reads ``self.READ_NUM_BYTES`` (a class attribute) per socket read of an
    HTTP/1.1 connection, which an ``HTTPConnection`` holds as ``_connection`` once connected.
    The larger size is set on each connection *instance*, so other httpx clients in the process
    keep the default. These are httpcore internals: every step is checked, and if any of them
    changes, connections simply keep httpcore's behaviour (never an error).
    """
    if not _HTTP11_TYPES:
        return
    try:
        connections = list(getattr(pool, "connections", ()))
    except Exception:  # a pool that changed shape: keep the defaults
        return
    for conn in connections:
        inner = getattr(conn, "_connection", None)
        if not isinstance(inner, _HTTP11_TYPES):
            continue  # not connected yet, HTTP/2, or httpcore changed
        own = getattr(inner, "__dict__", None)
        if own is None or "READ_NUM_BYTES" in own:
            continue  # tuned already, or cannot be
        if getattr(inner, "READ_NUM_BYTES", READ_SIZE) < READ_SIZE:
            own["READ_NUM_BYTES"] = READ_SIZE  # an instance attribute: shadows the class's


class _Transport(httpx.HTTPTransport):
    """httpx's transport, with :data:`READ_SIZE` socket reads (see :func:`_big_reads`)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        # The connection that served this request exists now; its body is not read yet.
        _big_reads(getattr(self, "_pool", None))
        return response


class _AsyncTransport(httpx.AsyncHTTPTransport):
    """The async :class:`_Transport`."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        _big_reads(getattr(self, "_pool", None))
        return response


def _loop_token() -> object:
    """The running event loop (asyncio) or trio run (trio): what an AsyncClient is bound to."""
    if sniffio.current_async_library() == "trio":
        import trio  # imported lazily: asyncio users need not pay for it

        return trio.lowlevel.current_trio_token()
    import asyncio  # here only: trio programs (the mount) never load it

    return asyncio.get_running_loop()


class HttpSource(Closing, AsyncClosing):
    """A :class:`~blobfs.core.ByteSource` over HTTP range requests to one URL.

    ``HttpSource(url)`` learns the size with one ``GET Range: bytes=0-0`` (synchronously;
    ``await HttpSource.aconnect(url)`` does it asynchronously); pass ``size=`` to skip the probe.
    A server that answers the probe with 200 ignores ranges: reads still work, each streaming the
    blob from its start up to the range's end (``ranges_supported`` is then False).

    ``source_id`` defaults to ``"url:<url>|etag:<etag>"`` when the probe saw an ETag, else
    ``"url:<url>|size:<size>"`` (as the Go reference); pass one (``"sha256:<hex>"`` for a
    registry blob) to make caches content-addressed.

    Requests carry ``headers``, ``Accept-Encoding: identity`` and ``Range``. Redirects are followed
    (at most 5 hops); ``Authorization``, ``Cookie`` and ``Proxy-Authorization`` (from ``headers``
    or from a given client's defaults and auth) go only to the origin (scheme, host, port) of
    ``url``. The final target of a redirect is remembered and later reads go there directly; if it
    answers 401/403/404/410 (an expired presigned URL) the read resolves it again from ``url``
    once.

    Failures: connection errors, timeouts and HTTP 408/429/500/502/503/504 are retried up to
    ``retries`` times with full-jitter exponential backoff from ``backoff`` seconds (capped at
    10 s; a ``Retry-After`` up to 30 s is obeyed); a malformed answer (wrong ``Content-Range``,
    short or overlong body) at most twice. An answer that does not match the range asked for is
    never used; the content itself is verified by the archive reader, not here (ByteSource
    contract). The final failure is an :class:`~blobfs.errors.HttpError` naming the URL (query
    string redacted), the status and the attempts; a range outside the blob is a
    :class:`~blobfs.errors.SourceError` raised before any request.

    ``read_into(offset, buffer)`` fills a caller's ``bytearray`` instead of returning bytes: a
    large body then goes from the socket into it without the copies of the ordinary path
    (``_http_raw.py``), which costs about a fifth of the CPU.

    Concurrency: ``read_at`` may be called from any number of threads at once (one pooled
    ``httpx.Client``). ``aread_at`` may be called from any number of tasks at once, all in ONE
    event loop (trio or asyncio): its ``httpx.AsyncClient`` is created on first use and bound to
    that loop; a call from another loop raises RuntimeError. Each side has at most
    ``max_connections`` requests in flight (also with a client passed in); further reads wait
    for a slot without a deadline of their own, since every request in flight is bounded by its
    deadlines. Sync and async reads may be mixed. ``close()``/``aclose()`` must not race reads.
    Clients passed in are used as they are (their limits, proxies, TLS settings; the source
    sets the deadline of each request) and are never closed by the source.

    Resources: ``close()`` closes the sync client the source created; ``aclose()`` closes both
    (use ``async with`` or ``aclose()`` when the async side was used: an open async client
    cannot be closed from sync code, and ``close()`` then only drops it, with a warning).
    """

    __slots__ = (
        "_async_client",
        "_async_loop",
        "_async_slots",
        "_client",
        "_client_lock",
        "_closed",
        "_etag",
        "_max_connections",
        "_owns_async",
        "_owns_sync",
        "_ranges_supported",
        "_settings",
        "_size",
        "_slots",
        "_source_id",
        "_state",
        "_timeout",
        "_url",
    )

    def __init__(
        self,
        url: str,
        *,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
        source_id: str | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self._setup(url, headers, client, async_client, timeout, retries, max_connections, backoff)
        if size is None:
            try:
                probe = self._run_sync(ProbeExchange(self._settings, self._state))
            except BaseException:
                self.close()
                raise
            self._finish(probe.size, probe, source_id)
        else:
            self._finish(size, None, source_id)

    @classmethod
    async def aconnect(
        cls,
        url: str,
        *,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
        source_id: str | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        # A per-request deadline, not one for the whole call (which ASYNC109 is about).
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
        retries: int = DEFAULT_RETRIES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        backoff: float = DEFAULT_BACKOFF,
    ) -> Self:
        """Like the constructor, with the size probe (if any) done asynchronously."""
        self = cls.__new__(cls)
        self._setup(url, headers, client, async_client, timeout, retries, max_connections, backoff)
        if size is None:
            try:
                probe = await self._run_async(ProbeExchange(self._settings, self._state))
            except BaseException:
                await self.aclose()
                raise
            self._finish(probe.size, probe, source_id)
        else:
            await checkpoint()
            self._finish(size, None, source_id)
        return self

    def _setup(
        self,
        url: str,
        headers: Mapping[str, str] | None,
        client: httpx.Client | None,
        async_client: httpx.AsyncClient | None,
        timeout: float,
        retries: int,
        max_connections: int,
        backoff: float,
    ) -> None:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            raise ValueError(f"invalid URL: {e}") from e
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an absolute http(s) URL: {redact_url(url)!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections!r}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0, got {backoff!r}")
        self._url = url
        self._settings = Settings(
            url=parsed,
            display_url=redact_url(parsed),
            headers=httpx.Headers(dict(headers or {})),
            retries=retries,
            backoff=backoff,
        )
        self._state = SharedState()
        self._timeout = httpx.Timeout(timeout)
        self._max_connections = max_connections
        self._client = client
        self._owns_sync = client is None
        self._async_client = async_client
        self._owns_async = async_client is None
        self._async_loop: object | None = None
        # At most max_connections requests in flight per side, also with a client passed in.
        # Waiting for a slot has no deadline of its own: every holder is bounded by its
        # request deadlines. The gate also keeps requests from queueing inside httpcore 1.0.9's
        # pool, which can close a connection it already handed to a queued request
        # (encode/httpcore#1110: a spurious ReadError, or a hang until the read deadline).
        self._slots = threading.BoundedSemaphore(max_connections)
        self._async_slots: anyio.Semaphore | None = None
        self._client_lock = threading.Lock()
        self._closed = False
        self._size = 0
        self._etag: str | None = None
        self._ranges_supported: bool | None = None
        self._source_id = ""

    def _finish(self, size: int, probe: ProbeResult | None, source_id: str | None) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size!r}")
        self._size = size
        if probe is not None:
            self._etag = probe.etag
            self._ranges_supported = probe.ranges_supported
        if source_id is not None:
            self._source_id = source_id
        elif self._etag:
            self._source_id = f"url:{self._url}|etag:{self._etag}"
        else:
            self._source_id = f"url:{self._url}|size:{size}"

    # -- properties --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL as given (it may carry credentials in its query string: do not log it)."""
        return self._url

    @property
    def size(self) -> int:
        return self._size

    @property
    def source_id(self) -> str:
        return self._source_id

    @property
    def etag(self) -> str | None:
        """The ETag the size probe saw (None without a probe or when the server sent none)."""
        return self._etag

    @property
    def ranges_supported(self) -> bool | None:
        """False if the probe got 200 (ranges ignored), True if 206/416, None without a probe."""
        return self._ranges_supported

    @property
    def closed(self) -> bool:
        return self._closed

    # -- reads -------------------------------------------------------------------------------

    def read_at(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset``; thread-safe. See the class docstring."""
        check_range(offset, length, self._size, self._settings.display_url)
        self._check_open()
        if length == 0:
            return b""
        return self._run_sync(ReadExchange(self._settings, self._state, offset, length, self._size))

    def read_into(
        self, offset: int, buffer: WritableBuffer, progress: Progress | None = None
    ) -> None:
        """Fill ``buffer`` (writable) with the ``len(buffer)`` bytes at ``offset``; as
        ``read_at``. ``progress(n)`` is called, in this thread, whenever more of the buffer is
        in: its first ``n`` bytes are final then, even if the body fails later (a retry asks
        for the rest only), so a caller may use them at once (verify and hand on chunks while
        the rest arrives)."""
        length = len(buffer)
        check_range(offset, length, self._size, self._settings.display_url)
        self._check_open()
        if length:
            ex = ReadExchange(self._settings, self._state, offset, length, self._size)
            self._run_sync(ex, _Fill(memoryview(buffer).cast("B"), progress))

    async def aread_at(self, offset: int, length: int) -> bytes:
        """``read_at`` for trio or asyncio tasks (one event loop per source)."""
        check_range(offset, length, self._size, self._settings.display_url)
        self._check_open()
        if length == 0:
            await checkpoint()
            return b""
        return await self._run_async(
            ReadExchange(self._settings, self._state, offset, length, self._size)
        )

    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(f"{self._settings.display_url}: read from a closed HTTP source")

    # -- the two drivers: I/O only, every decision is the exchange's --------------------------

    def _run_sync(self, ex: Exchange[T], fill: _Fill | None = None) -> T:
        client = self._sync_client()
        while True:
            into = None if fill is None else fill.resume(ex)
            req = ex.request()
            try:
                # A slot per request in flight (see _slots in _setup): no request ever queues
                # inside httpcore's pool, where a queued request can lose its connection.
                with self._slots:
                    response = client.send(
                        _build(client, req, self._timeout),
                        stream=True,
                        follow_redirects=False,
                        auth=httpx.USE_CLIENT_DEFAULT if req.same_origin else None,
                    )
                    try:
                        step = ex.on_head(response.status_code, response.headers)
                        if isinstance(step, Done):
                            return step.value
                        if not isinstance(step, Take):  # FOLLOW: the exchange holds the new URL
                            continue
                        body = BodyCollector(step, into)
                        if (
                            fill is not None
                            and into is not None
                            and step.exact
                            and not step.skip
                            and read_raw_body(response, into, self._timeout.read, fill.filled)
                        ):
                            body.filled(len(into))  # straight from the socket (_http_raw.py)
                        else:
                            for chunk in response.iter_raw():
                                stop = body.feed(chunk)
                                if fill is not None:
                                    fill.filled(body.kept)
                                if stop:
                                    break
                        return ex.on_body(body)
                    finally:
                        # Closing mid-body drops the connection rather than draining a blob.
                        response.close()
            except httpx.TransportError as e:
                if fill is not None and fill.complete:
                    return cast(T, b"")  # every byte is in (the failure came after the body)
                delay = ex.failed(ex.transport_problem(e))
            except Problem as p:
                if fill is not None and fill.complete:
                    return cast(T, b"")
                delay = ex.failed(p)
            if delay > 0:
                time.sleep(delay)

    async def _run_async(self, ex: Exchange[T]) -> T:
        client, slots = self._get_async_client()
        while True:
            req = ex.request()
            try:
                async with slots:  # as in _run_sync
                    response = await client.send(
                        _build(client, req, self._timeout),
                        stream=True,
                        follow_redirects=False,
                        auth=httpx.USE_CLIENT_DEFAULT if req.same_origin else None,
                    )
                    try:
                        step = ex.on_head(response.status_code, response.headers)
                        if isinstance(step, Done):
                            return step.value
                        if not isinstance(step, Take):
                            continue
                        body = BodyCollector(step)
                        async for chunk in response.aiter_raw():
                            if body.feed(chunk):
                                break
                        return ex.on_body(body)
                    finally:
                        await response.aclose()
            except httpx.TransportError as e:
                delay = ex.failed(ex.transport_problem(e))
            except Problem as p:
                delay = ex.failed(p)
            if delay > 0:
                await anyio.sleep(delay)

    # -- clients -----------------------------------------------------------------------------

    def _limits(self) -> httpx.Limits:
        n = self._max_connections
        return httpx.Limits(max_connections=n, max_keepalive_connections=n)

    def _sync_client(self) -> httpx.Client:
        client = self._client
        if client is not None:
            return client
        with self._client_lock:
            if self._client is None:
                self._check_open()
                limits = self._limits()
                self._client = httpx.Client(
                    timeout=self._timeout,
                    limits=limits,  # still used for proxies from the environment
                    transport=_Transport(limits=limits, verify=default_context()),
                    follow_redirects=False,
                )
            return self._client

    def _get_async_client(self) -> tuple[httpx.AsyncClient, anyio.Semaphore]:
        token = _loop_token()
        if self._async_loop is None:
            self._async_loop = token
            self._async_slots = anyio.Semaphore(self._max_connections)
        elif self._async_loop is not token:
            raise RuntimeError(
                f"HttpSource({self._settings.display_url!r}) is used from a second event loop; "
                "its async side belongs to the loop that first used it"
            )
        if self._async_client is None:
            self._check_open()
            limits = self._limits()
            self._async_client = httpx.AsyncClient(
                timeout=self._timeout,
                limits=limits,
                transport=_AsyncTransport(limits=limits, verify=default_context()),
                follow_redirects=False,
            )
        assert self._async_slots is not None
        return self._async_client, self._async_slots

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the sync client this source created; idempotent. See the class docstring."""
        self._closed = True
        with self._client_lock:
            client, owns = self._client, self._owns_sync
            if owns:
                self._client = None
        if owns and client is not None:
            client.close()
        if self._owns_async and self._async_client is not None:
            if not self._async_client.is_closed:
                log.warning(
                    "%s: HttpSource.close() cannot close its async client; use aclose()",
                    self._settings.display_url,
                )
            self._async_client = None

    async def aclose(self) -> None:
        """Close both clients this source created; idempotent."""
        async_client = self._async_client if self._owns_async else None
        self._async_client = None if self._owns_async else self._async_client
        try:
            if async_client is not None:
                await async_client.aclose()
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"HttpSource({self._settings.display_url!r}, size={self._size})"


class _Fill:
    """A caller's buffer being filled by :meth:`HttpSource.read_into`: how much of it is final
    (reported through ``progress``), so that every attempt after a failure asks for the rest
    only and never writes the bytes already reported again."""

    __slots__ = ("_attempt_base", "_progress", "done", "view")

    def __init__(self, view: memoryview, progress: Callable[[int], object] | None) -> None:
        self.view = view
        self.done = 0  # bytes final
        self._attempt_base = 0  # where the current attempt writes from
        self._progress = progress

    @property
    def complete(self) -> bool:
        return self.done == len(self.view)

    def resume(self, ex: Exchange[T]) -> memoryview:
        """The part of the buffer the next attempt fills (its exchange advanced past the rest)."""
        if self.done > self._attempt_base:
            advance = getattr(ex, "advance", None)
            if advance is None:  # not a range read: cannot continue, so nothing was reported
                raise RuntimeError("partial body of an exchange that cannot resume")
            advance(self.done - self._attempt_base)
            self._attempt_base = self.done
        return self.view[self.done :]

    def filled(self, n: int) -> None:
        """The current attempt has put ``n`` bytes in (capped: an overlong body's extra byte
        only counts)."""
        done = self._attempt_base + min(n, len(self.view) - self._attempt_base)
        if done > self.done:
            self.done = done
            if self._progress is not None:
                self._progress(done)


def _build(
    client: httpx.Client | httpx.AsyncClient, req: Request, timeout: httpx.Timeout
) -> httpx.Request:
    """The httpx request for ``req``; credential headers the client added are removed again."""
    request = client.build_request("GET", req.url, headers=req.headers, timeout=timeout)
    for name in req.strip:
        # build_request merged the client's default headers and cookies back in.
        request.headers.pop(name, None)
    return request
