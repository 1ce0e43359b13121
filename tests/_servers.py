"""Real HTTP/1.1 range servers for tests, with fault injection for what real servers won't do.

A :class:`RangeServer` is a threaded ``http.server`` bound to ``127.0.0.1`` on a free port,
speaking HTTP/1.1 with keep-alive. It serves named in-memory blobs and/or the files under a
directory, with correct single-range support, and records every request.

Usage::

    from tests._servers import Fault, serve_blobs

    with serve_blobs({"blob": data}) as srv:        # or serve_blobs(directory=tmp_path)
        url = srv.url("blob")                        # "http://127.0.0.1:PORT/blob"
        srv.put("other", b"...")                     # add/replace a blob (thread-safe)
        srv.faults.add("blob", Fault("status", status=429, headers={"Retry-After": "0.2"}))
        ...
        srv.stats.requests                           # total requests answered
        srv.stats.bytes_sent                         # total body bytes written to sockets
        srv.stats.requests_for("blob"), srv.stats.bytes_sent_for("blob")
        srv.stats.connections                        # TCP connections accepted
        srv.stats.records                            # [RequestRecord(method, path, range, headers)]

The pytest fixture ``range_server`` (``tests/conftest.py``) yields a fresh, empty server.

Protocol behaviour (no fault queued):

- ``GET``/``HEAD`` without ``Range``: ``200`` with ``Content-Length``, ``ETag``,
  ``Accept-Ranges: bytes``.
- ``Range: bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` (one range): ``206`` with
  ``Content-Range: bytes a-b/size``; ``b`` is clamped to ``size-1``. A range that starts at or
  past the end (any range of a 0-byte blob, ``bytes=-0``) gets ``416`` with
  ``Content-Range: bytes */size``. A malformed or multi-range header is ignored (``200``), as RFC
  9110 allows.
- Unknown path: ``404``. Methods other than GET/HEAD: ``405``.
- Paths are matched without the query string, so ``/blob?sig=x`` serves ``blob``; records keep
  the full path. Keys are normalised: ``"blob"`` and ``"/blob"`` are the same blob.

Faults (:class:`Fault`, queued per path with ``srv.faults.add(path, fault, times=1)``; each
queued fault is consumed by one request to that path, GET or HEAD; ``times=None`` keeps it for
every request until ``srv.faults.clear(path)``; ``srv.faults.hook(path, fn)`` calls
``fn(record) -> Fault | None`` for each request not served by a queued fault):

==========================  ======================================================================
``"truncate"``              normal headers, then ``count`` (default 1) body bytes fewer than
                            ``Content-Length``, then the connection is closed
``"overlong"``              ``Content-Length`` and body carry ``count`` extra bytes (the blob's
                            next bytes, zero-padded past the end); ``Content-Range`` unchanged
``"wrong_content_range"``   correct body, ``Content-Range`` shifted by one byte (or ``headers``
                            may give the exact ``Content-Range`` to send)
``"ignore_range_200"``      ``200`` and the whole blob, whatever the ``Range``
``"status"``                ``status`` (default 503) with ``headers`` (e.g. ``Retry-After``) and
                            a short text body
``"flip_byte"``             normal answer with body byte ``at`` (default 0) XOR 0xFF
``"stall"``                 sleep ``seconds`` (default 5) before the status line, or after ``at``
                            body bytes when ``at`` is set; then answer normally. ``close()``
                            ends a stall early
``"redirect"``              ``status`` (default 302) with ``Location: location``
``"drop"``                  close the connection without answering
==========================  ======================================================================

``headers`` on any fault are added to (or replace) the response headers.

Thread safety: all of ``put``, ``remove``, ``faults`` and ``stats`` may be used from any thread
while requests are served. ``close()`` stops the server, wakes stalled handlers and shuts the
accepted connections down, so a client blocked on this server sees the connection end.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.server
import os
import re
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

__all__ = [
    "Fault",
    "FaultKind",
    "FaultPlan",
    "RangeServer",
    "RequestRecord",
    "ServerStats",
    "serve_blobs",
]

FaultKind = Literal[
    "truncate",
    "overlong",
    "wrong_content_range",
    "ignore_range_200",
    "status",
    "flip_byte",
    "stall",
    "redirect",
    "drop",
]

# Body bytes per socket write. Small enough that a client closing a stream early makes the
# server's next write fail soon (so bytes_sent stays close to what the client consumed, plus
# the kernel's socket buffers), large enough to keep the per-write overhead low.
_WRITE_CHUNK = 256 << 10

# An idle keep-alive connection is closed after this long, so handler threads do not pile up
# when a client forgets its pool. Longer than any test's pause between two reads.
_IDLE_TIMEOUT = 60.0

_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.ASCII)


@dataclass(frozen=True, slots=True)
class Fault:
    """One misbehaviour for one response; see the module docstring for each ``kind``."""

    kind: FaultKind
    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    location: str | None = None
    seconds: float = 5.0
    count: int = 1
    at: int | None = None


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server received it (``headers`` keys are lower-case)."""

    method: str
    path: str
    range: str | None
    headers: Mapping[str, str]
    connection: int
    """Serial number of the TCP connection the request came on (1, 2, ...)."""


class ServerStats:
    """Counters of a :class:`RangeServer`; every method is thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()
        self._bytes: collections.Counter[str] = collections.Counter()
        self._records: list[RequestRecord] = []
        self._connections = 0

    @property
    def requests(self) -> int:
        """Requests received, all paths."""
        with self._lock:
            return sum(self._requests.values())

    @property
    def bytes_sent(self) -> int:
        """Body bytes written to sockets, all paths (headers not counted).

        Counted just before each write, so a client that received bytes sees them counted; a
        write the client cut short (it closed the connection) counts in full.
        """
        with self._lock:
            return sum(self._bytes.values())

    @property
    def connections(self) -> int:
        """TCP connections accepted."""
        with self._lock:
            return self._connections

    @property
    def records(self) -> list[RequestRecord]:
        """A copy of the request log, oldest first."""
        with self._lock:
            return list(self._records)

    def requests_for(self, path: str) -> int:
        with self._lock:
            return self._requests[_key(path)]

    def bytes_sent_for(self, path: str) -> int:
        with self._lock:
            return self._bytes[_key(path)]

    def records_for(self, path: str) -> list[RequestRecord]:
        key = _key(path)
        with self._lock:
            return [r for r in self._records if _key(r.path) == key]

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._bytes.clear()
            self._records.clear()
            self._connections = 0

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests[_key(record.path)] += 1
            self._records.append(record)

    def _sent(self, path: str, n: int) -> None:
        with self._lock:
            self._bytes[_key(path)] += n

    def _connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections


class FaultPlan:
    """Faults to apply to the next requests of each path; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, collections.deque[Fault]] = {}
        self._sticky: dict[str, Fault] = {}
        self._hooks: dict[str, Callable[[RequestRecord], Fault | None]] = {}

    def add(self, path: str, fault: Fault, times: int | None = 1) -> None:
        """Apply ``fault`` to the next ``times`` requests of ``path`` (``None``: all of them)."""
        key = _key(path)
        with self._lock:
            if times is None:
                self._sticky[key] = fault
            else:
                self._queues.setdefault(key, collections.deque()).extend([fault] * times)

    def hook(self, path: str, fn: Callable[[RequestRecord], Fault | None]) -> None:
        """Ask ``fn`` for a fault on each request of ``path`` that no queued fault serves."""
        with self._lock:
            self._hooks[_key(path)] = fn

    def pending(self, path: str) -> int:
        """Queued (not sticky) faults not yet consumed for ``path``."""
        with self._lock:
            return len(self._queues.get(_key(path), ()))

    def clear(self, path: str | None = None) -> None:
        """Drop queued, sticky and hooked faults of ``path`` (all paths when ``None``)."""
        with self._lock:
            if path is None:
                self._queues.clear()
                self._sticky.clear()
                self._hooks.clear()
            else:
                key = _key(path)
                self._queues.pop(key, None)
                self._sticky.pop(key, None)
                self._hooks.pop(key, None)

    def _next(self, record: RequestRecord) -> Fault | None:
        key = _key(record.path)
        with self._lock:
            queue = self._queues.get(key)
            if queue:
                return queue.popleft()
            if key in self._sticky:
                return self._sticky[key]
            hook = self._hooks.get(key)
        # The hook runs outside the lock: it may call back into the plan.
        return hook(record) if hook is not None else None


def _key(path: str) -> str:
    """``"blob"``, ``"/blob"`` and ``"/blob?x=1"`` are all the key ``"/blob"``."""
    path = urllib.parse.urlsplit(path).path if "?" in path or "#" in path else path
    return "/" + urllib.parse.unquote(path).lstrip("/")


@dataclass(frozen=True, slots=True)
class _Content:
    """What a path serves: in-memory bytes, or a file read with ``sendfile``."""

    size: int
    etag: str
    data: bytes | None = None
    file: Path | None = None

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``, zero-padded past the end (for the "overlong" fault)."""
        if self.data is not None:
            chunk = self.data[start:end]
        else:
            assert self.file is not None
            with self.file.open("rb") as f:
                f.seek(start)
                chunk = f.read(max(0, end - start))
        return chunk + b"\0" * (end - start - len(chunk))


class RangeServer(http.server.ThreadingHTTPServer):
    """The test server; build it with :func:`serve_blobs`. See the module docstring."""

    daemon_threads = True
    # Tests start many servers in quick succession on fresh ports; never wait for TIME_WAIT.
    allow_reuse_address = True

    def __init__(
        self, blobs: Mapping[str, bytes] | None = None, directory: Path | None = None
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stats = ServerStats()
        self.faults = FaultPlan()
        self._directory = directory.resolve() if directory is not None else None
        self._blobs_lock = threading.Lock()
        self._blobs: dict[str, _Content] = {}
        for name, data in (blobs or {}).items():
            self.put(name, data)
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._sockets_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- public API ------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return cast("tuple[str, int]", self.server_address)[1]

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "") -> str:
        """Absolute URL of ``path`` on this server (a query string is kept)."""
        return f"{self.origin}/{path.lstrip('/')}"

    def put(self, path: str, data: bytes) -> None:
        """Serve ``data`` at ``path`` (adds or replaces)."""
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        with self._blobs_lock:
            self._blobs[_key(path)] = _Content(size=len(data), etag=etag, data=bytes(data))

    def remove(self, path: str) -> None:
        with self._blobs_lock:
            self._blobs.pop(_key(path), None)

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake stalls, shut accepted connections down; idempotent."""
        if self._closing.is_set():
            return
        self._closing.set()
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        with self._sockets_lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _lookup(self, path: str) -> _Content | None:
        key = _key(path)
        with self._blobs_lock:
            content = self._blobs.get(key)
        if content is not None or self._directory is None:
            return content
        target = (self._directory / key.lstrip("/")).resolve()
        if not target.is_relative_to(self._directory) or not target.is_file():
            return None
        st = target.stat()
        return _Content(size=st.st_size, etag=f'"{st.st_size:x}-{st.st_mtime_ns:x}"', file=target)

    def process_request(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(request, socket.socket):
            with self._sockets_lock:
                self._sockets.add(request)
        super().process_request(request, client_address)

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A client resetting a connection is routine here (early close, timeouts): quiet.
        # Anything else is a bug in this server or a test: let socketserver print it.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        if isinstance(request, socket.socket):
            with self._sockets_lock:
                self._sockets.discard(request)
        super().shutdown_request(request)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = _IDLE_TIMEOUT
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle holds the body
    # back until the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    server: RangeServer
    # Replies go straight to the socket (BaseHTTPRequestHandler's default); headers are
    # buffered by send_header and flushed by end_headers.
    wbufsize = 0

    def setup(self) -> None:
        super().setup()
        self._conn_no = self.server.stats._connection()

    def log_message(self, format: str, *args: object) -> None:
        # Quiet: pytest would show every request on stderr otherwise.
        pass

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _not_allowed(self) -> None:
        self._simple(405, b"method not allowed\n", {"Allow": "GET, HEAD"}, body=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    # -- the one response path -----------------------------------------------------------

    def _serve(self, *, body: bool) -> None:
        srv = self.server
        range_header = self.headers.get("Range")
        record = RequestRecord(
            method=self.command,
            path=self.path,
            range=range_header,
            headers={k.lower(): v for k, v in self.headers.items()},
            connection=self._conn_no,
        )
        srv.stats._record(record)
        fault = srv.faults._next(record)
        extra = dict(fault.headers) if fault is not None else {}

        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault.kind == "stall" and fault.at is None and self._stall(fault.seconds):
                return
            if fault.kind == "status":
                self._simple(fault.status or 503, b"injected fault\n", extra, body=body)
                return
            if fault.kind == "redirect":
                assert fault.location is not None, "a redirect fault needs a location"
                extra["Location"] = fault.location
                self._simple(fault.status or 302, b"", extra, body=body)
                return

        content = srv._lookup(self.path)
        if content is None:
            self._simple(404, b"not found\n", extra, body=body)
            return
        size = content.size
        headers: dict[str, str] = {"ETag": content.etag, "Accept-Ranges": "bytes"}

        span = _parse_range(range_header, size) if range_header else None
        if fault is not None and fault.kind == "ignore_range_200":
            span = None
        if span == "unsatisfiable":
            headers["Content-Range"] = f"bytes */{size}"
            headers.update(extra)
            self._simple(416, b"", headers, body=body)
            return
        if span is None:
            status, start, end = 200, 0, size
        else:
            status, (start, end) = 206, span
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            if fault is not None and fault.kind == "wrong_content_range":
                shift = 1 if end < size else -1
                headers["Content-Range"] = f"bytes {start + shift}-{end - 1 + shift}/{size}"

        send_end = end  # bytes [start, send_end) are the body as sent
        declared = end - start
        kind = fault.kind if fault is not None else None
        if kind == "overlong":
            send_end = end + fault.count  # type: ignore[union-attr]
            declared = send_end - start
        elif kind == "truncate":
            send_end = max(start, end - fault.count)  # type: ignore[union-attr]
        headers["Content-Length"] = str(declared)
        headers.update(extra)

        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not body:
            return
        try:
            if kind in {"flip_byte", "overlong", "stall"} or content.file is None:
                self._send_bytes(content, start, send_end, fault)
            else:
                self._send_file(content, start, send_end)
        except OSError:
            # The client went away (closed a stream early, timed out): normal in these tests.
            self.close_connection = True
            return
        if kind == "truncate":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def _send_bytes(self, content: _Content, start: int, end: int, fault: Fault | None) -> None:
        pos = start
        stall_at: int | None = None
        if fault is not None and fault.kind == "stall" and fault.at is not None:
            stall_at = start + fault.at
        flip_at = (
            start + (fault.at or 0) if fault is not None and fault.kind == "flip_byte" else None
        )
        while pos < end:
            if stall_at is not None and pos == stall_at:
                assert fault is not None
                stall_at = None
                if self._stall(fault.seconds):
                    raise ConnectionAbortedError("server closing")
            stop = min(end, pos + _WRITE_CHUNK)
            if stall_at is not None and pos < stall_at < stop:
                stop = stall_at
            chunk = content.read(pos, stop)
            if flip_at is not None and pos <= flip_at < stop:
                i = flip_at - pos
                chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
            # Counted before the write: a client that got the bytes must already see them
            # counted (a write that fails is counted in full: an over-estimate by one chunk).
            self.server.stats._sent(self.path, len(chunk))
            self.wfile.write(chunk)
            pos = stop

    def _send_file(self, content: _Content, start: int, end: int) -> None:
        assert content.file is not None
        with content.file.open("rb") as f:
            pos = start
            while pos < end:
                # sendfile: zero-copy, so the server is not the bottleneck of throughput checks.
                want = min(end - pos, 16 * _WRITE_CHUNK)
                self.server.stats._sent(self.path, want)  # before: as in _send_bytes
                n = self.connection.sendfile(f, pos, want)
                if n < want:
                    self.server.stats._sent(self.path, n - want)
                if n == 0:
                    raise ConnectionAbortedError("file shrank while being served")
                pos += n

    def _simple(
        self, status: int, payload: bytes, headers: Mapping[str, str], *, body: bool
    ) -> None:
        self.send_response(status)
        merged = {"Content-Type": "text/plain", "Content-Length": str(len(payload)), **headers}
        for name, value in merged.items():
            self.send_header(name, value)
        self.end_headers()
        if body and payload:
            self.server.stats._sent(self.path, len(payload))  # before: as in _send_bytes
            try:
                self.wfile.write(payload)
            except OSError:
                self.close_connection = True

    def _stall(self, seconds: float) -> bool:
        """Sleep ``seconds``; True if the server is closing (the handler should just return)."""
        if self.server._closing.wait(seconds):
            self.close_connection = True
            return True
        return False


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """``(start, end)`` (end exclusive), ``"unsatisfiable"`` (416), or None (ignore: 200)."""
    m = _RANGE_RE.match(header)
    if m is None:
        return None  # malformed or several ranges: RFC 9110 lets a server ignore Range
    first, last = m.group(1), m.group(2)
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size
    start = int(first)
    if last and int(last) < start:
        return None  # invalid range: ignored
    if start >= size:
        return "unsatisfiable"
    end = size if not last else min(size, int(last) + 1)
    return start, end


@contextlib.contextmanager
def serve_blobs(
    blobs: Mapping[str, bytes] | None = None, directory: Path | None = None
) -> Iterator[RangeServer]:
    """Start a :class:`RangeServer` in a background thread; close it on exit."""
    server = RangeServer(blobs, directory).start()
    try:
        yield server
    finally:
        server.close()


if __name__ == "__main__":  # pragma: no cover - manual use: serve a directory
    root = Path(sys.argv[1] if len(sys.argv) > 1 else os.getcwd())
    with serve_blobs(directory=root) as srv:
        print(srv.origin, flush=True)
        threading.Event().wait()
