"""A bad block that came from the network is dropped from the block cache and read again."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from blobfs.core import Archive, Compression, Index, create_blob
from blobfs.core.cache.disk import BlockCache
from blobfs.core.http import HttpSource
from blobfs.errors import IntegrityError
from tests._servers import Fault, RangeServer

SMALL = b"0123456789abcdef" * 512  # 8 KiB, v1 entry
BIG = bytes(range(256)) * 12288  # 3 MiB, chunked


@pytest.fixture
def served(range_server: RangeServer, tmp_path: Path) -> tuple[RangeServer, Index]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.bin").write_bytes(SMALL)
    (src / "big.bin").write_bytes(BIG)
    # 64 KiB chunks: a chunk read spans at most two blocks, so it goes through the block cache
    # (larger reads bypass it, and a mismatch there is the origin's answer, reported at once).
    create_blob(src, tmp_path / "arch", compression=Compression.NONE, chunk_size=64 << 10).close()
    range_server.put("data.blob", (tmp_path / "arch/data.blob").read_bytes())
    return range_server, Index((tmp_path / "arch/index.blob").read_bytes())


@contextmanager
def _archive(srv: RangeServer, index: Index, cache_dir: Path) -> Iterator[Archive]:
    with (
        HttpSource(srv.url("data.blob"), size=index.data_size, backoff=0.001) as source,
        BlockCache(cache_dir) as blocks,
        Archive(index, source, block_cache=blocks, readahead=False) as ar,
    ):
        yield ar


def test_one_bad_answer_is_dropped_and_refetched(
    served: tuple[RangeServer, Index], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv, index = served
    srv.faults.add("data.blob", Fault("flip_byte", at=100), times=1)
    with _archive(srv, index, tmp_path / "blocks") as ar, caplog.at_level(logging.WARNING):
        assert ar.read_file("small.bin") == SMALL
        assert "reading it again from the source" in caplog.text
        fetched = srv.stats.requests_for("data.blob")
        assert ar.read_file("small.bin") == SMALL  # now served by the (clean) block cache
        assert srv.stats.requests_for("data.blob") == fetched


def test_random_read_of_a_chunk_recovers_too(
    served: tuple[RangeServer, Index], tmp_path: Path
) -> None:
    srv, index = served
    with _archive(srv, index, tmp_path / "blocks") as ar, ar.open("big.bin") as f:
        srv.faults.add("data.blob", Fault("flip_byte", at=7), times=1)
        f.seek(1 << 20)
        assert f.read(1000) == BIG[1 << 20 : (1 << 20) + 1000]


def test_a_lying_origin_fails_and_leaves_the_cache_clean(
    served: tuple[RangeServer, Index], tmp_path: Path
) -> None:
    srv, index = served
    srv.faults.add("data.blob", Fault("flip_byte", at=100), times=None)
    with _archive(srv, index, tmp_path / "blocks") as ar:
        with pytest.raises(IntegrityError, match=r"small\.bin"):
            ar.read_file("small.bin")
        srv.faults.clear("data.blob")
        assert ar.read_file("small.bin") == SMALL
