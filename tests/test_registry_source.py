"""Archives read with range requests from a real OCI registry (docker-registry 2.8)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from blobfs.core import Archive, Compression, Index, create_blob
from blobfs.core.cache import MemoryCache
from blobfs.core.http import HttpSource
from tests._registry import local_registry

FIXTURES = Path(__file__).parent / "fixtures" / "reference-v1"


class Counting(HttpSource):
    """An HttpSource that counts the bytes and reads asked of it."""

    reads = 0
    bytes_read = 0

    def read_at(self, offset: int, length: int) -> bytes:
        data = super().read_at(offset, length)
        self.reads += 1
        self.bytes_read += len(data)
        return data


def test_reference_archive_from_the_registry(tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "mixed-expected.json").read_text())["files"]
    with local_registry(tmp_path) as reg:
        index_digest = reg.push_blob(
            "test/mixed", (FIXTURES / "mixed-zstd/index.blob").read_bytes()
        )
        data_digest = reg.push_blob("test/mixed", (FIXTURES / "mixed-zstd/data.blob").read_bytes())
        with HttpSource(reg.blob_url("test/mixed", index_digest)) as ix:
            raw = ix.read_at(0, ix.size)
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == index_digest
        index = Index(raw)
        assert "sha256:" + index.data_hash.hex() == data_digest
        with (
            HttpSource(reg.blob_url("test/mixed", data_digest)) as data,
            Archive(index, data) as archive,
        ):
            assert data.size == index.data_size
            for f in expected:
                content = archive.read_file(f["path"])
                assert hashlib.sha256(content).hexdigest() == f["sha256"], f["path"]
            assert archive.verify().ok


def test_random_access_reads_only_the_chunks_touched(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = bytes(range(256)) * (40 << 12)  # 40 MiB, 40 chunks of 1 MiB
    (src / "big.bin").write_bytes(big)
    (src / "small.txt").write_bytes(b"hello registry\n")
    create_blob(src, tmp_path / "arch", compression=Compression.ZSTD).close()
    with local_registry(tmp_path) as reg:
        digest = reg.push_blob("test/big", (tmp_path / "arch/data.blob").read_bytes())
        index = Index((tmp_path / "arch/index.blob").read_bytes())
        cache = MemoryCache()
        with (
            Counting(reg.blob_url("test/big", digest), size=index.data_size) as data,
            Archive(index, data, cache=cache, readahead=False) as archive,
        ):
            entry = index.entry("big.bin")
            with archive.open("big.bin") as f:
                f.seek(25 << 20)
                assert f.read(4096) == big[25 << 20 : (25 << 20) + 4096]
            # One chunk's frame, nothing else of the 40 MiB file.
            assert data.reads == 1
            _, length = entry.chunk_payload(25)
            assert data.bytes_read == length
            # A second read of the same range is served by the content cache.
            with archive.open("big.bin") as f:
                f.seek((25 << 20) + 100)
                assert f.read(100) == big[(25 << 20) + 100 : (25 << 20) + 200]
            assert data.reads == 1
            assert archive.read_file("small.txt") == b"hello registry\n"


@pytest.mark.parametrize("name", ["mixed-none", "wide-zstd"])
def test_prefetch_a_directory_in_few_requests(tmp_path: Path, name: str) -> None:
    with local_registry(tmp_path) as reg:
        digest = reg.push_blob("test/p", (FIXTURES / name / "data.blob").read_bytes())
        index = Index((FIXTURES / name / "index.blob").read_bytes())
        top = next(d.name for d in index.listdir("") if d.is_dir)
        with (
            Counting(reg.blob_url("test/p", digest), size=index.data_size) as data,
            Archive(index, data, cache=MemoryCache()) as archive,
        ):
            files = list(index.walk(top))
            assert len(files) > 1
            loaded = archive.prefetch(top)
            assert loaded == len(files)
            requests = data.reads
            assert requests <= 2
            for e in files:
                archive.read_file(e.path)
            assert data.reads == requests  # every file came from the content cache
