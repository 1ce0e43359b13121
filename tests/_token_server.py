"""A tiny Bearer token server for docker-registry's ``auth.token`` mode, on loopback.

Usage::

    with TokenServer(tmp_path, users={"user": "pass"}) as ts:
        with local_registry(tmp_path, token=ts) as reg:
            ...
        ts.requests        # every token request: method, params, user

It signs ES256 JWTs with a self-signed P-256 certificate written to ``ts.cert_path`` (the
registry's ``rootcertbundle``) and sent in the ``x5c`` header. A known user (Basic password, or
a refresh token from ``refresh_tokens`` via the OAuth2 POST form) is granted every scope it asks
for; anonymous requests get a token with no access; a wrong password gets 401.
``expires_in`` sets token lifetimes; ``expired = True`` issues tokens whose ``exp`` lies beyond
the registry's 60 s leeway in the past while still announcing ``expires_in``; ``delay`` holds
each grant back that many seconds.
"""

from __future__ import annotations

import base64
import datetime
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

__all__ = ["TokenRequest", "TokenServer"]

SERVICE = "blobfs-test-registry"
ISSUER = "blobfs-test-token-server"
REGISTRY_LEEWAY = 60
"""Seconds past ``exp`` distribution 2.8 still accepts a token (registry/auth/token)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class TokenRequest:
    method: str
    params: dict[str, list[str]]
    user: str | None
    """The authenticated user, None for anonymous requests."""
    scopes: list[str] = field(default_factory=list)


class TokenServer:
    def __init__(
        self,
        workdir: Path,
        *,
        users: dict[str, str] | None = None,
        refresh_tokens: dict[str, str] | None = None,
        expires_in: int = 300,
    ) -> None:
        self.users = dict(users or {})
        self.refresh_tokens = dict(refresh_tokens or {})
        self.expires_in = expires_in
        self.expired = False
        self.delay = 0.0
        """Seconds each token answer waits before it is sent (to overlap concurrent requests)."""
        self.real_lifetime: float | None = None
        """When set, tokens the registry accepts for only about this many seconds (their
        ``exp`` is placed that far beyond the registry's 60 s leeway), whatever ``expires_in``
        announces: a client's cached token then expires under it."""
        self.service = SERVICE
        self.issuer = ISSUER
        self.requests: list[TokenRequest] = []
        self.issued: list[str] = []
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blobfs test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = workdir / "token-signer.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    @property
    def hits(self) -> int:
        with self._lock:
            return len(self.requests)

    def _sign(self, user: str | None, scopes: list[str]) -> str:
        access = []
        if user is not None:
            for scope in scopes:
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        exp = now - 120 if self.expired else now + self.expires_in
        if self.real_lifetime is not None and not self.expired:
            exp = now - REGISTRY_LEEWAY + int(self.real_lifetime)
        claims = {
            "iss": self.issuer,
            "sub": user or "",
            "aud": self.service,
            "exp": exp,
            "nbf": now - 600,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode("ascii")]}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(
            self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        )
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _grant(self, method: str, params: dict[str, list[str]], user: str | None) -> None:
                scopes = [s for value in params.get("scope", []) for s in value.split()]
                with server._lock:
                    server.requests.append(TokenRequest(method, params, user, scopes))
                if server.delay:
                    time.sleep(server.delay)
                token = server._sign(user, scopes)
                with server._lock:
                    server.issued.append(token)
                self._answer(
                    200,
                    {"token": token, "access_token": token, "expires_in": server.expires_in},
                )

            def do_GET(self) -> None:
                params = parse_qs(urlsplit(self.path).query)
                header = self.headers.get("Authorization")
                user = None
                if header is not None:
                    scheme, _, value = header.partition(" ")
                    try:
                        name, _, password = base64.b64decode(value).decode().partition(":")
                    except ValueError:
                        name, password = "", ""
                    if scheme.lower() != "basic" or server.users.get(name) != password:
                        with server._lock:
                            server.requests.append(TokenRequest("GET", params, None))
                        self._answer(401, {"details": "bad credentials"})
                        return
                    user = name
                self._grant("GET", params, user)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                params = parse_qs(self.rfile.read(length).decode())
                refresh = params.get("refresh_token", [""])[0]
                user = server.refresh_tokens.get(refresh)
                if params.get("grant_type") != ["refresh_token"] or user is None:
                    with server._lock:
                        server.requests.append(TokenRequest("POST", params, None))
                    self._answer(401, {"error": "invalid_grant"})
                    return
                self._grant("POST", params, user)

        return Handler
