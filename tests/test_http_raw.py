"""``HttpSource.read_into``: large bodies straight from the socket (``blobfs/core/_http_raw.py``).

Against the real threaded server of tests/_servers.py: the bytes, connection reuse (the raw
read hands the connection back to h11 in a reusable state), and the faults of the ordinary path
(truncated, stalled, dropped, ignored ranges), which must behave exactly as there. Plus the
fallbacks: a transport that is not httpcore's socket stream, a body without Content-Length.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import httpx
import pytest

from blobfs.core import BytesSource
from blobfs.core import http as http_module
from blobfs.core._http_raw import RAW_MIN, read_raw_body
from blobfs.core._steps import read_buffer
from blobfs.core.http import HttpSource
from blobfs.errors import HttpError, SourceError
from tests._servers import Fault, RangeServer

MiB = 1 << 20
BIG = random.Random(7).randbytes(6 * MiB + 123)
FAST = 0.001


@pytest.fixture
def srv(range_server: RangeServer) -> RangeServer:
    range_server.put("big", BIG)
    return range_server


def source(srv: RangeServer, **kwargs: object) -> HttpSource:
    kwargs.setdefault("backoff", FAST)
    return HttpSource(srv.url("big"), size=len(BIG), **kwargs)  # type: ignore[arg-type]


def read(src: HttpSource, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    src.read_into(offset, buf)
    return bytes(buf)


def test_large_reads_are_exact_and_keep_the_connection(
    srv: RangeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []

    def spy(
        response: httpx.Response,
        buf: bytearray | memoryview,
        timeout: float | None,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        taken.append(read_raw_body(response, buf, timeout, progress))
        return taken[-1]

    monkeypatch.setattr(http_module, "read_raw_body", spy)
    with source(srv) as src:
        for offset, length in [(0, 2 * MiB), (5, 3 * MiB + 7), (len(BIG) - MiB, MiB), (3, 100)]:
            assert read(src, offset, length) == BIG[offset : offset + length]
        for i in range(10):  # raw and ordinary reads alternate on the one connection
            assert read(src, i * 1000, RAW_MIN) == BIG[i * 1000 : i * 1000 + RAW_MIN]
            assert src.read_at(i, 10) == BIG[i : i + 10]
    assert srv.stats.connections == 1
    assert srv.stats.requests == 4 + 20
    assert taken == [True] * 3 + [False] + [True] * 10  # 100 bytes: the ordinary way


def test_truncated_body_is_retried_then_an_error(srv: RangeServer) -> None:
    with source(srv) as src:
        srv.faults.add("big", Fault("truncate", count=1000), times=2)
        assert read(src, 10, 2 * MiB) == BIG[10 : 10 + 2 * MiB]
        assert srv.stats.requests == 3
        srv.faults.add("big", Fault("truncate"), times=None)
        with pytest.raises(HttpError, match="peer closed connection"):
            read(src, 0, 2 * MiB)


def test_stalled_body_times_out_and_is_retried(srv: RangeServer) -> None:
    with source(srv, timeout=0.3) as src:
        srv.faults.add("big", Fault("stall", seconds=2, at=MiB + 5), times=1)
        assert read(src, 0, 3 * MiB) == BIG[: 3 * MiB]
    assert srv.stats.requests == 2


@pytest.mark.parametrize("kind", ["drop", "ignore_range_200", "overlong"])
def test_faults_of_the_ordinary_path(srv: RangeServer, kind: str) -> None:
    with source(srv) as src:
        srv.faults.add("big", Fault(kind), times=1)  # type: ignore[arg-type]
        assert read(src, 77, 2 * MiB) == BIG[77 : 77 + 2 * MiB]


def test_body_without_content_length_falls_back() -> None:
    """A chunked body (and a transport that is not httpcore's sockets) is read the ordinary way,
    into the buffer."""

    def handler(request: httpx.Request) -> httpx.Response:
        first, last = request.headers["range"].removeprefix("bytes=").split("-")
        data = BIG[int(first) : int(last) + 1]

        def body() -> Iterator[bytes]:
            for i in range(0, len(data), 100_000):
                yield data[i : i + 100_000]

        headers = {"Content-Range": f"bytes {first}-{last}/{len(BIG)}"}
        return httpx.Response(206, headers=headers, content=body())

    client = httpx.Client(transport=httpx.MockTransport(handler))
    with client, HttpSource("http://h/big", size=len(BIG), client=client) as src:
        assert read(src, 1, 2 * MiB) == BIG[1 : 1 + 2 * MiB]
        with pytest.raises(SourceError):
            src.read_into(len(BIG) - 10, bytearray(11))  # outside the blob: no request


def test_progress_reports_final_bytes_and_retries_continue_after_them(srv: RangeServer) -> None:
    n = 4 * MiB
    buf = bytearray(n)
    reported: list[int] = []
    snapshots: dict[int, bytes] = {}

    def progress(done: int) -> None:
        assert not reported or done > reported[-1]  # only forward
        reported.append(done)
        snapshots[done] = bytes(buf[max(0, done - 1000) : done])  # the last bytes reported

    srv.faults.add("big", Fault("truncate", count=MiB + 3), times=2)
    with source(srv) as src:
        src.read_into(5, buf, progress)
    assert bytes(buf) == BIG[5 : 5 + n]
    assert reported[-1] == n
    for done, tail in snapshots.items():  # what was reported was never changed afterwards
        assert bytes(buf[max(0, done - 1000) : done]) == tail
    # The retries asked for the rest only: the bytes sent add up to about one body.
    ranges = [r.range for r in srv.stats.records]
    assert len(ranges) == 3
    assert ranges[0] == f"bytes=5-{5 + n - 1}"
    assert all(r is not None and not r.startswith("bytes=5-") for r in ranges[1:])
    assert srv.stats.bytes_sent < n + 3 * MiB


def test_progress_through_a_memoryview_and_the_ordinary_path(srv: RangeServer) -> None:
    """A range ignored by the server (200, skip to the offset): progress too, into a view."""
    buf = bytearray(3 * MiB)
    seen: list[int] = []
    srv.faults.add("big", Fault("ignore_range_200"), times=1)
    with source(srv) as src:
        src.read_into(MiB, memoryview(buf)[MiB:], seen.append)
    assert bytes(buf[MiB:]) == BIG[MiB : 3 * MiB]
    assert seen[-1] == 2 * MiB


def test_read_buffer_takes_any_source() -> None:
    data = bytes(range(256)) * 100
    assert read_buffer(BytesSource(data), 10, 1000) == data[10:1010]
