"""HttpSource against a real threaded HTTP/1.1 server (tests/_servers.py), faults included.

Assertions look at the wire as well as the result: request counts, body bytes sent, TCP
connections accepted, headers each server received. Backoff is shrunk (``backoff=0.001``) so
retry storms take milliseconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import trio

from blobfs.core import ByteSource
from blobfs.core import http as http_module
from blobfs.core._http_proto import MALFORMED_RETRIES
from blobfs.core._http_wire import (
    BodyCollector,
    Problem,
    Take,
    backoff_delay,
    parse_content_range,
    parse_retry_after,
    redact_url,
)
from blobfs.core.http import READ_SIZE, HttpSource, _big_reads
from blobfs.errors import HttpError, SourceError
from tests._servers import Fault, RangeServer, serve_blobs

BLOB = random.Random(1).randbytes(1 << 20)
FAST = 0.001  # backoff base for tests: retries without waiting


@pytest.fixture
def srv(range_server: RangeServer) -> RangeServer:
    range_server.put("blob", BLOB)
    range_server.put("empty", b"")
    return range_server


@pytest.fixture
def other() -> Iterator[RangeServer]:
    """A second server: another origin (port) for redirects."""
    with serve_blobs({"blob": BLOB}) as server:
        yield server


def open_source(srv: RangeServer, path: str = "blob", **kwargs: object) -> HttpSource:
    kwargs.setdefault("backoff", FAST)
    return HttpSource(srv.url(path), **kwargs)  # type: ignore[arg-type]


class CountingTransport(httpx.BaseTransport):
    """Counts response body bytes the client actually pulled from the network."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.body_bytes = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        stream = response.stream
        assert isinstance(stream, httpx.SyncByteStream)
        inner: httpx.SyncByteStream = stream  # keeps the narrowed type inside the class below
        outer = self

        class Counted(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:
                    outer.body_bytes += len(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()

        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=Counted(),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.inner.close()


# ---------------------------------------------------------------------------- probe and identity


def test_probe_learns_size_etag_and_range_support(srv: RangeServer) -> None:
    with open_source(srv) as src:
        assert isinstance(src, ByteSource)
        assert src.size == len(BLOB)
        assert src.ranges_supported is True
        assert src.etag is not None
        assert src.source_id == f"url:{srv.url('blob')}|etag:{src.etag}"
    (probe,) = srv.stats.records
    assert probe.method == "GET"
    assert probe.range == "bytes=0-0"
    assert probe.headers["accept-encoding"] == "identity"


def test_given_size_skips_the_probe_and_given_id_wins(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        assert srv.stats.requests == 0
        assert src.source_id == f"url:{srv.url('blob')}|size:{len(BLOB)}"
        assert src.ranges_supported is None
        assert src.read_at(10, 5) == BLOB[10:15]
    with open_source(srv, source_id="sha256:" + "ab" * 32) as src:
        assert src.source_id == "sha256:" + "ab" * 32


def test_plain_http_never_loads_a_ca_bundle(
    srv: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building httpx's default TLS context parses the whole CA bundle (~50 ms): a source on an
    ``http://`` URL must not pay for it (it did at its first read, the first read of a mount).
    Its clients' context loads the bundle at the first TLS handshake only
    (``test_registry_tls.py`` has the HTTPS side)."""
    import certifi

    def no_bundle() -> str:
        raise AssertionError("the CA bundle was loaded for plain HTTP")

    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setattr(certifi, "where", no_bundle)
    with open_source(srv) as src:
        assert src.read_at(3, 100) == BLOB[3:103]


def test_empty_blob(srv: RangeServer) -> None:
    with open_source(srv, "empty") as src:
        assert src.size == 0
        assert src.ranges_supported is True
        assert src.read_at(0, 0) == b""
        with pytest.raises(SourceError, match="outside"):
            src.read_at(0, 1)
    assert srv.stats.requests == 1  # the probe only (416 bytes */0)


def test_missing_blob_fails_at_once(srv: RangeServer) -> None:
    with pytest.raises(HttpError, match="not found") as info:
        open_source(srv, "nope")
    assert info.value.status == 404
    assert info.value.attempts == 1
    assert srv.stats.requests == 1


def test_serves_files_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.bin").write_bytes(BLOB)
    with serve_blobs(directory=tmp_path) as server, open_source(server, "sub/data.bin") as src:
        assert src.size == len(BLOB)
        assert src.read_at(len(BLOB) - 7, 7) == BLOB[-7:]
        assert hashlib.sha256(src.read_at(0, len(BLOB))).digest() == hashlib.sha256(BLOB).digest()


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 1), (0, len(BLOB)), (len(BLOB) - 1, 1), (12345, 65536), (len(BLOB) // 2, 1)],
)
def test_reads_at_boundaries(srv: RangeServer, offset: int, length: int) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        assert src.read_at(offset, length) == BLOB[offset : offset + length]
    (record,) = srv.stats.records
    assert record.range == f"bytes={offset}-{offset + length - 1}"
    assert srv.stats.bytes_sent == length


@pytest.mark.parametrize(("offset", "length"), [(len(BLOB), 1), (-1, 1), (0, -1), (1, len(BLOB))])
def test_out_of_range_fails_without_a_request(srv: RangeServer, offset: int, length: int) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        with pytest.raises(SourceError, match="outside"):
            src.read_at(offset, length)
        assert src.read_at(len(BLOB), 0) == b""
    assert srv.stats.requests == 0


def test_closed_source_refuses_reads_and_keeps_passed_clients(srv: RangeServer) -> None:
    with httpx.Client() as client:
        src = open_source(srv, client=client)
        src.close()
        src.close()  # idempotent
        assert src.closed
        with pytest.raises(SourceError, match="closed"):
            src.read_at(0, 1)
        assert not client.is_closed  # not ours to close
        assert client.get(srv.url("blob"), headers={"Range": "bytes=0-0"}).status_code == 206


# --------------------------------------------------------------------- servers that ignore ranges


def test_200_to_a_read_streams_only_up_to_the_range() -> None:
    big = random.Random(2).randbytes(32 << 20)
    transport = CountingTransport()
    with (
        serve_blobs({"big": big}) as server,
        httpx.Client(transport=transport) as client,
        open_source(server, "big", size=len(big), client=client) as src,
    ):
        server.faults.add("big", Fault("ignore_range_200"))
        assert src.read_at(100, 10) == big[100:110]
        # The client stopped after ~110 bytes (one network chunk); the server managed to push
        # only what fits in socket buffers before the connection was dropped, not 32 MiB.
        assert transport.body_bytes <= 256 << 10
        assert server.stats.bytes_sent_for("big") < len(big) // 4
        # The dropped connection is replaced; the next read is an ordinary 206.
        assert src.read_at(len(big) - 3, 3) == big[-3:]


def test_probe_answered_200_means_ranges_unsupported(srv: RangeServer) -> None:
    srv.faults.add("blob", Fault("ignore_range_200"), times=None)
    with open_source(srv) as src:
        assert src.size == len(BLOB)
        assert src.ranges_supported is False
        assert src.read_at(5000, 100) == BLOB[5000:5100]
        assert src.read_at(0, len(BLOB)) == BLOB
    assert srv.stats.requests == 3


def test_200_with_a_different_length_is_never_used(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.put("blob", BLOB[:-1])  # the blob changed under us
        srv.faults.add("blob", Fault("ignore_range_200"), times=None)
        with pytest.raises(HttpError, match="Content-Length"):
            src.read_at(0, 10)
    assert srv.stats.requests == MALFORMED_RETRIES + 1


# ----------------------------------------------------------------------------- malformed answers


def test_truncated_body_is_retried(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("truncate", count=100), times=2)
        assert src.read_at(1000, 50_000) == BLOB[1000:51_000]
    assert srv.stats.requests == 3


def test_persistent_truncation_is_an_error(srv: RangeServer) -> None:
    srv.faults.add("blob", Fault("truncate"), times=None)
    with open_source(srv, size=len(BLOB), retries=3) as src, pytest.raises(HttpError) as info:
        src.read_at(0, 1000)
    assert info.value.attempts == 4
    assert "peer closed connection" in str(info.value)
    assert srv.stats.requests == 4


@pytest.mark.parametrize("kind", ["overlong", "wrong_content_range"])
def test_malformed_answer_retried_then_error_never_wrong_data(
    srv: RangeServer, kind: Fault
) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault(kind), times=1)  # type: ignore[arg-type]
        assert src.read_at(300, 200) == BLOB[300:500]
        srv.faults.add("blob", Fault(kind), times=None)  # type: ignore[arg-type]
        with pytest.raises(HttpError, match=r"Content-(Range|Length)"):
            src.read_at(300, 200)
    # 2 for the first read, then 1 + MALFORMED_RETRIES: a lying server is not asked forever.
    assert srv.stats.requests == 2 + 1 + MALFORMED_RETRIES


def test_overlong_chunked_body_is_capped(srv: RangeServer) -> None:
    """Without a Content-Length the collector itself stops one byte past the range."""

    def handler(request: httpx.Request) -> httpx.Response:
        def body() -> Iterator[bytes]:
            yield BLOB[:10]
            yield BLOB[10:1000]  # the source must stop reading here
            raise AssertionError("read past the cap")

        return httpx.Response(
            206,
            headers={"Content-Range": f"bytes 0-9/{len(BLOB)}"},
            content=body(),
        )

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        HttpSource("http://x.test/b", size=len(BLOB), client=client, retries=0) as src,
        pytest.raises(HttpError, match="longer than the 10 bytes"),
    ):
        src.read_at(0, 10)


def test_content_encoding_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"
        return httpx.Response(
            206,
            headers={"Content-Range": "bytes 0-3/100", "Content-Encoding": "gzip"},
            stream=httpx.ByteStream(b"abcd"),
        )

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as client,
        HttpSource("http://x.test/b", size=100, client=client) as src,
        pytest.raises(HttpError, match="Content-Encoding 'gzip'"),
    ):
        src.read_at(0, 4)


def test_corrupt_bytes_pass_through_unverified(srv: RangeServer) -> None:
    """A flipped byte is invisible to HTTP: the source hands out raw bytes, the archive reader
    verifies them (ByteSource contract). The length and range checks still hold."""
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("flip_byte", at=2))
        data = src.read_at(100, 5)
    assert data == BLOB[100:102] + bytes([BLOB[102] ^ 0xFF]) + BLOB[103:105]


def test_blob_that_shrank_is_an_error(srv: RangeServer) -> None:
    with open_source(srv) as src:
        srv.put("blob", BLOB[:1000])
        with pytest.raises(HttpError, match="not satisfiable") as info:
            src.read_at(5000, 10)
        assert info.value.status == 416
        assert srv.stats.requests == 2  # no retry: the answer is definite
        with pytest.raises(HttpError, match="now 1000 bytes"):
            src.read_at(0, 10)


# --------------------------------------------------------------------- statuses and deadlines


def test_retry_after_is_honoured(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("status", status=429, headers={"Retry-After": "0.2"}))
        start = time.monotonic()
        assert src.read_at(0, 100) == BLOB[:100]
        assert time.monotonic() - start >= 0.2
    assert srv.stats.requests == 2


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_transient_statuses_are_retried(srv: RangeServer, status: int) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("status", status=status), times=2)
        assert src.read_at(7, 7) == BLOB[7:14]
    assert srv.stats.requests == 3


def test_503_storm_exhausts_retries(srv: RangeServer) -> None:
    srv.faults.add("blob", Fault("status", status=503), times=None)
    with open_source(srv, size=len(BLOB), retries=4) as src, pytest.raises(HttpError) as info:
        src.read_at(0, 10)
    error = info.value
    assert (error.status, error.attempts) == (503, 5)
    assert srv.url("blob") in str(error)
    assert "HTTP 503" in str(error)
    assert "5 attempts" in str(error)
    assert srv.stats.requests == 5


def test_other_statuses_fail_at_once(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("status", status=403))
        with pytest.raises(HttpError, match="forbidden") as info:
            src.read_at(0, 10)
    assert info.value.status == 403
    assert srv.stats.requests == 1


def test_dropped_connection_is_retried(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB)) as src:
        srv.faults.add("blob", Fault("drop"), times=2)
        assert src.read_at(0, 10) == BLOB[:10]
    assert srv.stats.requests == 3


def test_stall_past_the_deadline_is_retried(srv: RangeServer) -> None:
    with open_source(srv, size=len(BLOB), timeout=0.3) as src:
        srv.faults.add("blob", Fault("stall", seconds=5))
        start = time.monotonic()
        assert src.read_at(0, 10) == BLOB[:10]
        assert 0.3 <= time.monotonic() - start < 3
    with open_source(srv, size=len(BLOB), timeout=0.3, retries=2) as src:
        srv.faults.add("blob", Fault("stall", seconds=5, at=1000), times=None)
        with pytest.raises(HttpError, match="timed out") as info:
            src.read_at(0, 100_000)  # stalls mid-body, every time
    assert info.value.attempts == 3


def test_errors_redact_query_strings_and_never_show_headers(srv: RangeServer) -> None:
    srv.faults.add("blob", Fault("status", status=500), times=None)
    url = srv.url("blob?X-Amz-Signature=s3cr3t")
    with (
        HttpSource(
            url, size=10, retries=1, backoff=FAST, headers={"Authorization": "Bearer t0ken"}
        ) as src,
        pytest.raises(HttpError) as info,
    ):
        src.read_at(0, 10)
    message = str(info.value)
    assert "s3cr3t" not in message
    assert "t0ken" not in message
    assert info.value.url == srv.url("blob") + "?…"
    assert srv.stats.records[0].headers["authorization"] == "Bearer t0ken"


# ------------------------------------------------------------------------------------- redirects

SECRETS = {"Authorization": "Bearer t0ken", "Cookie": "c=1", "Proxy-Authorization": "Basic eA=="}


def test_redirect_keeps_credentials_on_the_origin(srv: RangeServer, other: RangeServer) -> None:
    srv.faults.add("blob", Fault("redirect", location=other.url("blob?sig=1")), times=None)
    with open_source(srv, headers=SECRETS) as src:
        assert src.size == len(BLOB)
        assert src.read_at(100, 100) == BLOB[100:200]
        assert src.read_at(200, 100) == BLOB[200:300]
    # The origin saw the credentials once (the probe); later reads went straight to the target.
    (first,) = srv.stats.records
    assert first.headers["authorization"] == "Bearer t0ken"
    assert first.headers["cookie"] == "c=1"
    assert other.stats.requests == 3
    for record in other.stats.records:
        assert record.path == "/blob?sig=1"
        assert not {"authorization", "cookie", "proxy-authorization"} & set(record.headers)
        assert record.range is not None


def test_redirect_strips_credentials_a_passed_client_adds(
    srv: RangeServer, other: RangeServer
) -> None:
    srv.faults.add("blob", Fault("redirect", location=other.url("blob")), times=None)
    with (
        httpx.Client(
            headers={"Authorization": "Bearer client"},
            cookies={"session": "x"},
            auth=httpx.BasicAuth("u", "p"),
        ) as client,
        open_source(srv, client=client) as src,
    ):
        assert src.read_at(0, 4) == BLOB[:4]
    assert "authorization" in srv.stats.records[0].headers
    for record in other.stats.records:
        assert "authorization" not in record.headers
        assert "cookie" not in record.headers


def test_expired_redirect_is_resolved_again(srv: RangeServer, other: RangeServer) -> None:
    srv.faults.add("blob", Fault("redirect", location=other.url("blob?sig=1")), times=None)
    with open_source(srv) as src:
        other.faults.add("blob", Fault("status", status=403))  # the signature expired
        assert src.read_at(0, 10) == BLOB[:10]
        assert srv.stats.requests == 2  # probe, re-resolution
        assert other.stats.requests == 3  # probe, the 403, the read
        # A target that keeps refusing is resolved once per read, then reported.
        other.faults.add("blob", Fault("status", status=403), times=None)
        with pytest.raises(HttpError, match="redirected to") as info:
            src.read_at(0, 10)
    assert info.value.status == 403
    assert srv.stats.requests == 3
    assert "sig=1" not in str(info.value)


def test_redirect_loop_is_an_error(srv: RangeServer) -> None:
    srv.faults.add("blob", Fault("redirect", location="/blob"), times=None)
    with pytest.raises(HttpError, match="more than 5 redirects"):
        open_source(srv)
    assert srv.stats.requests == 6


def test_relative_redirect_is_followed(srv: RangeServer) -> None:
    srv.put("real", BLOB)
    srv.faults.add("blob", Fault("redirect", status=307, location="real"))
    with open_source(srv) as src:
        assert src.read_at(0, 3) == BLOB[:3]
    assert [r.path for r in srv.stats.records] == ["/blob", "/real", "/real"]


# ---------------------------------------------------------------------- pooling and concurrency


def test_keep_alive_reuses_one_connection(srv: RangeServer) -> None:
    with open_source(srv) as src:
        for i in range(50):
            assert src.read_at(i * 4096, 4096) == BLOB[i * 4096 : (i + 1) * 4096]
    assert srv.stats.requests == 51
    assert srv.stats.connections == 1
    assert srv.stats.bytes_sent == 1 + 50 * 4096


@pytest.mark.trio
async def test_concurrent_reads_under_trio(srv: RangeServer) -> None:
    async with await HttpSource.aconnect(srv.url("blob"), max_connections=4) as src:
        results: dict[int, bytes] = {}

        async def read(i: int) -> None:
            results[i] = await src.aread_at(i * 50_000, 50_000)

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(read, i)
        assert all(results[i] == BLOB[i * 50_000 : (i + 1) * 50_000] for i in range(20))
        assert await src.aread_at(0, 0) == b""
    assert srv.stats.requests == 21
    assert srv.stats.connections <= 4
    assert srv.stats.bytes_sent == 1 + 20 * 50_000


@pytest.mark.trio
async def test_async_retries_and_redirects_under_trio(srv: RangeServer, other: RangeServer) -> None:
    srv.faults.add("blob", Fault("redirect", location=other.url("blob")), times=None)
    async with await HttpSource.aconnect(srv.url("blob"), headers=SECRETS, backoff=FAST) as src:
        other.faults.add("blob", Fault("status", status=429, headers={"Retry-After": "0.1"}))
        start = trio.current_time()
        assert await src.aread_at(10, 10) == BLOB[10:20]
        assert trio.current_time() - start >= 0.1
    assert other.stats.requests == 3  # probe, 429, read
    assert not any("authorization" in r.headers for r in other.stats.records)


def test_concurrent_reads_under_asyncio(srv: RangeServer) -> None:
    async def main() -> list[bytes]:
        async with await HttpSource.aconnect(srv.url("blob"), max_connections=4) as src:
            return await asyncio.gather(*(src.aread_at(i * 50_000, 50_000) for i in range(20)))

    results = asyncio.run(main())
    assert results == [BLOB[i * 50_000 : (i + 1) * 50_000] for i in range(20)]
    assert srv.stats.requests == 21
    assert srv.stats.connections <= 4


def test_threads_share_the_sync_pool(srv: RangeServer) -> None:
    import concurrent.futures

    with (
        open_source(srv, max_connections=3) as src,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        chunks = list(pool.map(lambda i: src.read_at(i * 10_000, 10_000), range(100)))
    assert b"".join(chunks) == BLOB[:1_000_000]
    # No retries (httpcore's pool race is kept away by the source's own gate) and no more
    # connections than allowed.
    assert srv.stats.requests == 101
    assert srv.stats.connections <= 3


def test_async_side_belongs_to_one_loop(srv: RangeServer) -> None:
    async def other_loop(src: HttpSource) -> bytes:
        return await src.aread_at(0, 5)

    async def main() -> None:
        async with await HttpSource.aconnect(srv.url("blob")) as src:
            assert await src.aread_at(0, 5) == BLOB[:5]
            with pytest.raises(RuntimeError, match="second event loop"):
                await asyncio.to_thread(asyncio.run, other_loop(src))
        assert src.closed

    asyncio.run(main())


# ----------------------------------------------------------------------------- sans-IO helpers


def test_parse_content_range() -> None:
    assert parse_content_range("bytes 0-9/100") == (0, 9, 100)
    assert parse_content_range("bytes 5-5/*") == (5, 5, None)
    assert parse_content_range("bytes */0") == (None, None, 0)
    for bad in [None, "", "bytes 0-9", "items 0-9/10", "bytes a-9/10", "bytes 0-9/x"]:
        assert parse_content_range(bad) is None


def test_parse_retry_after() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("99999") == 30.0  # capped
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=1445412480.0) == 5.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(0)
    assert all(0 <= backoff_delay(1, 0.1, rng) <= 0.1 for _ in range(100))
    assert all(0 <= backoff_delay(4, 0.1, rng) <= 0.8 for _ in range(100))
    assert all(backoff_delay(30, 0.1, rng) <= 10.0 for _ in range(100))


def test_redact_url() -> None:
    assert redact_url("https://u:pw@h.test:8443/a/b?sig=x") == "https://…@h.test:8443/a/b?…"
    assert redact_url("http://h.test/a") == "http://h.test/a"


def test_body_collector_skips_takes_and_caps() -> None:
    c = BodyCollector(Take(skip=5, take=4, exact=False))
    assert not c.feed(b"abc")
    assert not c.feed(b"defg")
    assert c.feed(b"hijklmn")
    assert c.result() == b"fghi"
    exact = BodyCollector(Take(skip=0, take=3, exact=True))
    assert exact.feed(b"abcdef")  # one byte past: stop
    with pytest.raises(Problem, match="longer"):
        exact.result()
    short = BodyCollector(Take(skip=0, take=3, exact=True))
    short.feed(b"ab")
    with pytest.raises(Problem, match="after 2 of 3"):
        short.result()


def test_constructor_validates_arguments() -> None:
    with pytest.raises(ValueError, match="absolute"):
        HttpSource("ftp://h/x", size=1)
    with pytest.raises(ValueError, match="absolute"):
        HttpSource("/relative", size=1)
    with pytest.raises(ValueError, match="timeout"):
        HttpSource("http://h/x", size=1, timeout=0)
    with pytest.raises(ValueError, match="size"):
        HttpSource("http://h/x", size=-1)


def test_probe_failure_closes_the_client(srv: RangeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[httpx.Client] = []

    class Recording(httpx.Client):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    monkeypatch.setattr(httpx, "Client", Recording)
    srv.faults.add("blob", Fault("status", status=503), times=None)
    with pytest.raises(HttpError, match="size probe"):
        open_source(srv, retries=1)
    (client,) = made
    assert client.is_closed


# ------------------------------------------------------------------------- socket read size


def test_own_connections_read_big_chunks_and_others_keep_the_default(
    srv: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from httpcore._backends.sync import SyncStream

    asked: list[int] = []
    read = SyncStream.read

    def spy(self: SyncStream, max_bytes: int, timeout: float | None = None) -> bytes:
        asked.append(max_bytes)
        return read(self, max_bytes, timeout)

    monkeypatch.setattr(SyncStream, "read", spy)
    with open_source(srv) as src:
        src.read_at(0, 100)  # the first answer tunes the connection...
        asked.clear()
        assert src.read_at(0, len(BLOB)) == BLOB  # ...so this one reads in big pieces
    assert set(asked) == {READ_SIZE}

    # Nothing leaks to other clients: the class attribute, a fresh client, a client passed in.
    assert httpcore.HTTP11Connection.READ_NUM_BYTES == 64 * 1024
    with httpx.Client() as fresh, open_source(srv, client=fresh) as given:
        asked.clear()
        assert fresh.get(srv.url("blob")).content == BLOB
        assert given.read_at(0, len(BLOB)) == BLOB
    assert set(asked) == {64 * 1024}


@pytest.mark.trio
async def test_async_connections_read_big_chunks(srv: RangeServer) -> None:
    async with await HttpSource.aconnect(srv.url("blob")) as src:
        assert await src.aread_at(0, len(BLOB)) == BLOB
        client = src._async_client
        assert client is not None
        connections = client._transport._pool.connections  # type: ignore[attr-defined]
        assert [c._connection.READ_NUM_BYTES for c in connections] == [READ_SIZE]
        assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == 64 * 1024


def test_read_size_tuning_falls_back_when_httpcore_changes(
    srv: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Slotted:
        __slots__ = ("READ_NUM_BYTES",)

        def __init__(self) -> None:
            self.READ_NUM_BYTES = 1

    class Conn:
        def __init__(self, inner: object) -> None:
            self._connection = inner

    class BadPool:
        @property
        def connections(self) -> list[object]:
            raise RuntimeError("changed")

    # Pools or connections of another shape are left alone, never an error.
    for pool in (None, object(), BadPool()):
        _big_reads(pool)
    monkeypatch.setattr(http_module, "_HTTP11_TYPES", (Slotted,))
    slotted = Slotted()
    _big_reads(type("Pool", (), {"connections": [Conn(slotted), Conn(None), object()]})())
    assert slotted.READ_NUM_BYTES == 1
    # Without the classes it knows, the source reads with httpcore's defaults.
    monkeypatch.setattr(http_module, "_HTTP11_TYPES", ())
    with open_source(srv) as src:
        assert src.read_at(0, len(BLOB)) == BLOB
        client = src._client
        assert client is not None
        connections = client._transport._pool.connections  # type: ignore[attr-defined]
        assert [c._connection.READ_NUM_BYTES for c in connections] == [64 * 1024]
