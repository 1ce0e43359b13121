"""Large response bodies read straight from the connection's socket into one buffer.

httpx hands a body over in pieces, and on its way through httpcore and h11 each piece is copied
five times in Python code that holds the GIL (the socket read, h11's receive buffer, two slices,
httpcore's ``bytes()``), then the source joins the pieces (a sixth copy). For an 8-16 MiB range
that cost about 1.5 ms of CPU per MiB (measured: a cold mount read spent more on it than on
SHA-256), and threads waiting for the GIL behind those copies delayed every other read.

:func:`read_raw_body` takes a body of at least :data:`RAW_MIN` bytes whose length is known
(Content-Length, no transfer coding) another way: the first piece through httpx as usual (what
h11 had buffered with the headers), the rest with ``recv_into`` into one buffer (the kernel's
copy, without the GIL), and then it tells h11 the body was consumed (its Content-Length reader's
remaining count), so the connection returns to the pool and is reused as usual.

This relies on httpcore 1.0 and h11 0.14-0.16 internals. Every step is checked, and anything
unexpected (HTTP/2, a TLS-in-TLS proxy stream, another httpcore) makes it return None before a
byte was taken (the caller then reads the body the ordinary way); once bytes were taken, a
surprise only costs the connection (it is closed instead of reused), never the data.

Concurrency: one call per response, in the thread that reads it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Final

import httpx

__all__ = ["RAW_MIN", "read_raw_body"]

RAW_MIN: Final = 1 << 20
"""Bodies from this size on are read raw: below it the copies cost little, and the ordinary path
keeps its exact behaviour for small reads."""

RECV_MAX: Final = 4 << 20
"""Most bytes asked of one ``recv_into`` (it returns what the socket holds, usually less)."""

_CHAIN: Final = ("_stream", "_httpcore_stream", "_connection")
"""Attributes leading from an httpx response stream to httpcore's HTTP/1.1 connection."""


def _sync_stream_type() -> type | None:
    try:
        from httpcore._backends.sync import SyncStream
    except ImportError:  # httpcore changed: never read raw
        return None
    return SyncStream


_SYNC_STREAM = _sync_stream_type()


def _h11_connection(response: httpx.Response, stream: object) -> object | None:
    """httpcore's ``HTTP11Connection`` serving ``response`` (the one whose network stream is
    ``stream``), found through the response's stream wrappers, or None."""
    obj: object = response.stream
    for _ in range(8):
        if getattr(obj, "_network_stream", None) is stream and hasattr(obj, "_h11_state"):
            return obj
        for name in _CHAIN:
            nxt = getattr(obj, name, None)
            if nxt is not None:
                obj = nxt
                break
        else:
            return None
    return None


def _content_length_reader(conn: object, remaining: int, *, drained: bool) -> object | None:
    """h11's reader of the body, if it is a Content-Length reader expecting ``remaining`` more
    bytes (and, if ``drained``, nothing left in h11's buffer: the state this module may take
    over from)."""
    h11_conn = getattr(conn, "_h11_state", None)
    reader = getattr(h11_conn, "_reader", None)
    buffered = getattr(h11_conn, "_receive_buffer", None)
    if type(reader).__name__ != "ContentLengthReader" or buffered is None:
        return None
    if getattr(reader, "_remaining", None) != remaining:
        return None
    try:
        if drained and len(buffered) != 0:
            return None
    except TypeError:
        return None
    return reader


def read_raw_body(
    response: httpx.Response,
    buf: bytearray | memoryview,
    timeout: float | None,
    progress: Callable[[int], object] | None = None,
) -> bool:
    """Fill ``buf`` with the whole body of ``response`` (its Content-Length must be
    ``len(buf)``), read as the module docstring says; False if it cannot be read that way
    (nothing was consumed then: read it the ordinary way). ``progress(n)`` is called as the
    first ``n`` bytes of ``buf`` are in (never written again by this call).

    Raises ``httpx.ReadTimeout``/``ReadError``/``RemoteProtocolError`` as httpx would for a
    stalled, failed, truncated or overlong body (the connection is then closed with the
    response).
    """
    length = len(buf)
    if _SYNC_STREAM is None or length < RAW_MIN:
        return False
    if response.headers.get("content-length", "").strip() != str(length):
        return False
    if "transfer-encoding" in response.headers or response.http_version != "HTTP/1.1":
        return False
    stream = response.extensions.get("network_stream")
    if type(stream) is not _SYNC_STREAM:
        return False
    sock = stream.get_extra_info("socket")  # type: ignore[attr-defined]
    conn = _h11_connection(response, stream)
    if not isinstance(sock, socket.socket) or conn is None:
        return False
    if _content_length_reader(conn, length, drained=False) is None:
        return False
    view = memoryview(buf)
    pieces = response.iter_raw()
    pos = 0
    # The first piece through httpx: h11 hands over everything it buffered with the headers (or
    # reads once), so its buffer is empty afterwards.
    for first in pieces:
        if len(first) > length:
            raise httpx.RemoteProtocolError("body longer than its Content-Length")
        view[: len(first)] = first
        pos = len(first)
        if progress is not None:
            progress(pos)
        break
    reader = _content_length_reader(conn, length - pos, drained=True)
    if reader is None:
        # Not the state we can take over from: the rest the ordinary way, into the buffer.
        for piece in pieces:
            if pos + len(piece) > length:
                raise httpx.RemoteProtocolError("body longer than its Content-Length")
            view[pos : pos + len(piece)] = piece
            pos += len(piece)
            if progress is not None:
                progress(pos)
        if pos != length:
            raise httpx.RemoteProtocolError(f"body ended after {pos} of {length} bytes")
        return True
    try:
        sock.settimeout(timeout)
        while pos < length:
            n = sock.recv_into(view[pos:], min(length - pos, RECV_MAX))
            if n == 0:
                raise httpx.RemoteProtocolError(
                    f"peer closed connection after {pos} of {length} body bytes"
                )
            pos += n
            if progress is not None:
                progress(pos)
    except TimeoutError as e:
        raise httpx.ReadTimeout(str(e) or "timed out reading the body") from e
    except OSError as e:
        raise httpx.ReadError(str(e)) from e
    # The body is in: let h11 see its end, so the connection goes back to the pool.
    reader._remaining = 0  # type: ignore[attr-defined]
    next(pieces, None)  # h11's EndOfMessage: the stream ends here
    return True
