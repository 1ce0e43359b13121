"""The registry auth flow: anonymous, Basic, and the Bearer token flow, as one ``httpx.Auth``.

Every registry request (API calls and data-blob range requests alike) goes through
:class:`RegistryAuth`. One sans-IO generator (:meth:`RegistryAuth._flow`) drives both the sync and
the async client: it yields requests — the registry request and, when needed, token requests —
and receives their responses; the sync and async wrappers only differ in how they read a token
response's body. Registry response bodies are never read here, so blob downloads stream.

The flow, per request:

* a request that already carries ``Authorization`` is sent untouched;
* once a host is known to want Basic, Basic goes with the first request; once it is known to want
  Bearer and the request's scope can be derived from its path (``/v2/<repo>/{manifests,blobs,
  tags,referrers}/``: ``pull`` for GET/HEAD, ``pull,push`` for POST/PUT/PATCH), a cached or freshly
  fetched token goes with the first request;
* otherwise the request goes anonymously; on 401 (or 403 with ``error="insufficient_scope"``)
  the ``WWW-Authenticate`` challenge is answered: Basic with the store's credentials, or a token
  fetched from the Bearer realm for the challenge's ``service`` and ``scope`` and the request
  resent. A token the registry refuses is dropped from the cache and fetched once more (it may
  have expired early); a fresh token or Basic credentials refused again end in :class:`AuthError`.

Credentials are asked of the store per host and repository (from the request path), so
namespace-scoped entries of ``auth.json`` apply to the repositories under them.

Tokens: GET ``realm?service=..&scope=..`` with Basic credentials when the store has a password
(anonymous otherwise); with an identity token, POST the OAuth2 form ``grant_type=refresh_token``
as docker does. Cached per (realm, service, scope) until ``expires_in`` (default 60 s) minus a
small margin. Concurrent requests needing the same missing token fetch it once (single-flight,
across threads and async tasks alike): the first becomes the leader and fetches, the others wait
for its answer (threads block, tasks sleep in short steps so the leader's task can run). If the
leader fails, each waiter fetches on its own, so every request gets its own precise error.

Secrets (passwords, tokens, ``Authorization`` values) never appear in a log line or a message.
Request bodies must be replayable (bytes) for a request that meets a challenge: send a cheap
request (upload POST, HEAD) before a streaming upload, and the token is then attached up front.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from ..errors import AuthError
from ._challenges import Challenge, canonical_scope, infer_scope, parse_challenges, repository_of
from ._credentials import Credentials, CredentialStore
from ._reference import is_loopback

__all__ = ["Challenge", "RegistryAuth", "parse_challenges"]

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token lives when the server omits ``expires_in`` (the distribution token spec)."""

REFRESH_MARGIN = 10.0
"""Tokens are refreshed this many seconds (at most a tenth of their lifetime) before expiring,
so a request does not leave with a token that expires in flight."""

MAX_TOKEN_RESPONSE = 1 << 20
"""A token answer announcing a larger body is refused (real ones are a few KiB)."""

_MAX_ROUNDS = 4
"""Challenges answered per request: anonymous -> token -> refreshed token, plus one for a scope
upgrade; more means the registry and token server disagree and looping would not help."""

_CLIENT_ID = "blobfs"


def _basic_header(creds: Credentials) -> str:
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _who(creds: Credentials | None) -> str:
    if creds is None:
        return "anonymous access"
    if creds.identity_token is not None and not creds.password:
        return "the identity token"
    return f"user {creds.username!r}"


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float

    def valid(self, now: float) -> bool:
        return now < self.expires_at


_TokenKey = tuple[str, str, str]
"""(realm, service, scope)."""

FLIGHT_WAIT = 120.0
"""Longest wait for another request's token fetch; the leader's own request deadlines end it
far sooner, this only guards against a leader that vanished without a word."""

_POLL = 0.005
"""Seconds between an async waiter's looks at a token fetch in flight: small next to a token
round trip, and the waiting task sleeps (the leader's task runs meanwhile)."""


class _Flight:
    """One token fetch in progress; ``token`` is set (or left None on failure) before ``done``."""

    __slots__ = ("done", "token")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.token: _Token | None = None

    def finish(self, token: _Token | None) -> None:
        self.token = token
        self.done.set()


_Step = tuple[httpx.Request, bool] | _Flight
"""What the flow asks its driver for: send a request (and whether its response body is needed,
the response is sent back), or wait for a token fetch in flight (None is sent back)."""

_Flow = Generator[_Step, httpx.Response | None, None]


class RegistryAuth(httpx.Auth):
    """httpx auth for OCI registries: anonymous, Basic and Bearer tokens with a token cache.

    ``credentials`` resolves per-host credentials (default: none, i.e. anonymous; pass a
    :class:`CredentialStore` to read the docker config). One instance may serve several clients
    and threads, sync and async: the token cache and the host memo are lock-protected.

    Raises :class:`AuthError` from the request when credentials are needed but missing, refused,
    or the token exchange fails; other statuses (403 without insufficient scope, 404) are returned.
    """

    requires_request_body = False
    requires_response_body = False

    def __init__(
        self, credentials: CredentialStore | None = None, *, clock: Any = time.monotonic
    ) -> None:
        self._store = credentials or CredentialStore(docker_config=False, auth_file=False)
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[_TokenKey, _Token] = {}
        self._flights: dict[_TokenKey, _Flight] = {}
        # host -> ("basic",) or ("bearer", realm, service): how the host last challenged us.
        self._hosts: dict[str, tuple[str, ...]] = {}

    # -- httpx entry points --------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                reply: httpx.Response | None = None
                if isinstance(step, _Flight):
                    step.done.wait(FLIGHT_WAIT)
                else:
                    req, need_body = step
                    reply = yield req
                    if need_body:
                        reply.read()
                try:
                    step = flow.send(reply)
                except StopIteration:
                    return
        finally:
            flow.close()  # a leader abandoned mid-fetch releases its waiters

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self._flow(request)
        try:
            step = next(flow)
            while True:
                reply: httpx.Response | None = None
                if isinstance(step, _Flight):
                    deadline = time.monotonic() + FLIGHT_WAIT
                    # The fetch may be a sync thread's, so no anyio.Event can signal it.
                    while not step.done.is_set() and time.monotonic() < deadline:  # noqa: ASYNC110
                        await anyio.sleep(_POLL)
                else:
                    req, need_body = step
                    reply = yield req
                    if need_body:
                        await reply.aread()
                try:
                    step = flow.send(reply)
                except StopIteration:
                    return
        finally:
            flow.close()

    def clear(self) -> None:
        """Forget every cached token and what each host asked for."""
        with self._lock:
            self._tokens.clear()
            self._hosts.clear()

    # -- the sans-IO flow ----------------------------------------------------------------------

    def _flow(self, request: httpx.Request) -> _Flow:
        if "Authorization" in request.headers:
            yield request, False
            return
        host = request.url.netloc.decode("ascii")
        repo = repository_of(request)  # credentials may be per namespace (auth.json keys)
        with self._lock:
            memo = self._hosts.get(host)
        sent_basic = False
        sent_key: _TokenKey | None = None
        sent_token = ""
        fresh: set[_TokenKey] = set()

        if memo is not None and memo[0] == "basic":
            creds = self._store.get(host, repo)
            if creds is not None and creds.has_password:
                request.headers["Authorization"] = _basic_header(creds)
                sent_basic = True
        elif memo is not None and memo[0] == "bearer":
            scope = infer_scope(request)
            if scope is not None:
                key = (memo[1], memo[2], scope)
                token = yield from self._token(host, repo, request, key, fresh)
                request.headers["Authorization"] = f"Bearer {token}"
                sent_key, sent_token = key, token

        response = yield from self._send(request)
        for _ in range(_MAX_ROUNDS):
            challenge = self._challenge(response)
            if challenge is None:
                return
            if challenge.scheme == "basic":
                creds = self._store.get(host, repo)
                if creds is None or not creds.has_password:
                    raise AuthError(
                        host,
                        "the registry requires Basic authentication and no credentials are "
                        "configured for it",
                        status=response.status_code,
                    )
                if sent_basic:
                    self._store.forget(host)
                    raise AuthError(
                        host,
                        f"the registry refused the credentials of {_who(creds)}",
                        status=response.status_code,
                    )
                with self._lock:
                    self._hosts[host] = ("basic",)
                request.headers["Authorization"] = _basic_header(creds)
                sent_basic = True
            else:
                realm = challenge.params.get("realm", "")
                service = challenge.params.get("service", "")
                scope = canonical_scope(challenge.params.get("scope") or infer_scope(request) or "")
                key = (realm, service, scope)
                if key in fresh:
                    raise AuthError(
                        host,
                        f"the registry refused a fresh token for {scope or 'its API'} "
                        f"({_who(self._store.get(host, repo))})",
                        status=response.status_code,
                    )
                if key == sent_key:
                    self._drop(key, sent_token)  # expired or revoked early: fetch a new one
                with self._lock:
                    self._hosts[host] = ("bearer", realm, service)
                token = yield from self._token(host, repo, request, key, fresh)
                request.headers["Authorization"] = f"Bearer {token}"
                sent_key, sent_token = key, token
            response = yield from self._send(request)
        if self._challenge(response) is not None:
            raise AuthError(host, "authentication did not settle", status=response.status_code)

    @staticmethod
    def _challenge(response: httpx.Response) -> Challenge | None:
        """The challenge to answer, or None when the response is final."""
        status = response.status_code
        if status not in (401, 403):
            return None
        challenges = parse_challenges(response.headers.get_list("WWW-Authenticate"))
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if status == 403:
            if bearer is not None and bearer.params.get("error") == "insufficient_scope":
                return bearer
            return None
        if bearer is not None and bearer.params.get("realm"):
            return bearer
        return next((c for c in challenges if c.scheme == "basic"), None)

    def _drop(self, key: _TokenKey, value: str) -> None:
        """Forget the token ``value`` of ``key``, unless another request already replaced it
        (many requests meet the same expiry at once; one new token serves them all)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.value == value:
                del self._tokens[key]

    @staticmethod
    def _send(request: httpx.Request) -> Generator[_Step, httpx.Response | None, httpx.Response]:
        """Have the driver send ``request``; its response."""
        response = yield request, False
        assert response is not None
        return response

    def _token(
        self,
        host: str,
        repo: str | None,
        request: httpx.Request,
        key: _TokenKey,
        fresh: set[_TokenKey],
    ) -> Generator[_Step, httpx.Response | None, str]:
        """A valid token for ``key``: from the cache, from a fetch already in flight for the
        same key, or fetched (yielding the token request)."""
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.valid(self._clock()):
                return cached.value
            flight = self._flights.get(key)
            leading = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leading:
            yield flight  # another request is fetching this very token: wait for it
            if flight.token is not None:
                fresh.add(key)  # as fresh as if fetched here: refused again means refused
                return flight.token.value
            log.debug("a concurrent token fetch failed; fetching on our own")
            flight = _Flight()  # ours alone: nobody waits on it
        token: _Token | None = None
        try:
            realm, _, scope = key
            creds = self._store.get(host, repo)
            token_request = self._token_request(host, request, key, creds)
            log.debug("fetching a registry token from %s for %s", realm, scope or "the API")
            response = yield token_request, True
            assert response is not None
            token = self._parse_token(host, realm, response, creds)
            fresh.add(key)
            return token.value
        finally:
            # Success or not (an error, the request abandoned): the waiters are released.
            with self._lock:
                if token is not None:
                    self._tokens[key] = token
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.finish(token)

    def _token_request(
        self, host: str, request: httpx.Request, key: _TokenKey, creds: Credentials | None
    ) -> httpx.Request:
        realm, service, scope = key
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL:
            raise AuthError(host, "the registry's token realm is not a URL") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise AuthError(host, f"the registry's token realm {realm!r} is not an http(s) URL")
        if (
            creds is not None
            and url.scheme == "http"
            and request.url.scheme == "https"
            and not is_loopback(url.netloc.decode("ascii"))
        ):
            raise AuthError(
                host, f"refusing to send credentials to the plain-HTTP token realm {realm!r}"
            )
        scopes = scope.split() if scope else []
        if creds is not None and creds.identity_token is not None:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": _CLIENT_ID,
                "service": service,
                "scope": " ".join(scopes),
            }
            return httpx.Request("POST", url, data=form)
        if service:
            url = url.copy_add_param("service", service)
        for s in scopes:
            url = url.copy_add_param("scope", s)
        headers = {}
        if creds is not None and creds.has_password:
            headers["Authorization"] = _basic_header(creds)
        return httpx.Request("GET", url, headers=headers)

    def _parse_token(
        self, host: str, realm: str, response: httpx.Response, creds: Credentials | None
    ) -> _Token:
        status = response.status_code
        if status in (401, 403):
            raise AuthError(host, f"the token server {realm} refused {_who(creds)}", status=status)
        if status != 200:
            raise AuthError(host, f"the token server {realm} failed", status=status)
        length = response.headers.get("Content-Length")
        if length is not None and length.isdecimal() and int(length) > MAX_TOKEN_RESPONSE:
            raise AuthError(host, f"the token server {realm} sent an oversized answer")
        try:
            body = response.json()
        except ValueError:
            raise AuthError(host, f"the token server {realm} did not answer JSON") from None
        if not isinstance(body, dict):
            raise AuthError(host, f"the token server {realm} answered no token")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise AuthError(host, f"the token server {realm} answered no token")
        lifetime = body.get("expires_in")
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME
        margin = min(REFRESH_MARGIN, lifetime / 10)
        return _Token(value, self._clock() + lifetime - margin)
