"""The default TLS context of HTTP clients, with its CA bundle loaded at the first handshake.

httpx builds an ``ssl.SSLContext`` for every client it constructs and parses its whole CA bundle
(certifi's ~150 certificates) into it there: about 50 ms each, more on a busy machine. A
:class:`~blobfs.registry.Registry` makes one client for API calls and one per pulled archive,
so a cold read of one file spent most of its time (about 110 of 130 ms, measured against a
loopback registry, which is plain HTTP and never needs a certificate) building contexts; an
:class:`~blobfs.core.http.HttpSource` built its client at its first read, so the first read
of a mount of ``http://`` URLs took 70 ms instead of 10. :func:`default_context` gives a
context, built in microseconds, that loads the bundle httpx would only when a TLS connection
is first made. Registries share one among all their clients; each HTTP source without a client
of its own has one.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any

__all__ = ["default_context"]


class _LazyCAContext(ssl.SSLContext):
    """A client ``SSLContext`` (certificate and host name required) whose CA certificates are
    loaded before the first ``wrap_socket``/``wrap_bio`` (the two ways httpcore and anyio
    start TLS); loading is thread-safe and happens once. Verification is never weaker than
    the eager context's: no handshake starts before the bundle is in."""

    _lock: threading.Lock
    _loaded: bool

    def __new__(cls) -> _LazyCAContext:
        ctx = super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)
        ctx._lock = threading.Lock()
        ctx._loaded = False
        return ctx

    def __init__(self) -> None:
        # PROTOCOL_TLS_CLIENT already means CERT_REQUIRED and check_hostname, as
        # ssl.create_default_context(); the base __init__ takes the protocol, not needed here.
        pass

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            # The bundle httpx's default (verify=True) uses, in the same order.
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)


def default_context() -> ssl.SSLContext:
    """A new default client context (see the module docstring); the environment
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) is read at its first TLS handshake."""
    return _LazyCAContext()
