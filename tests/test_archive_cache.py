"""The content cache and readahead on the archive's read path.

Archives are built with ``create_blob`` and read through a counting source, so every assertion
is about bytes and requests actually made. The dict-backed :class:`DictCache` below is also the
"user-written cache plugs in" case of the seed (its Redis example): the key tests run against it
and against blobfs's own :class:`~blobfs.core.cache.MemoryCache` and
:class:`~blobfs.core.cache.disk.DiskCache`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from blobfs.core import (
    Archive,
    ArchiveFile,
    ByteSource,
    BytesSource,
    Compression,
    FileSource,
    Index,
    create_blob,
    encode_index,
    open_file,
)
from blobfs.core._decode import MAX_FETCH
from blobfs.core._file import SPOOL_MEMORY
from blobfs.core._prefetch import READAHEAD_BYTES
from blobfs.core.cache import Cache, MemoryCache
from blobfs.core.cache.disk import BlockCache, DiskCache
from blobfs.errors import IntegrityError, NotFound, SourceError

MiB = 1 << 20
CS = 64 << 10  # the smallest chunk size: many chunks from little data


# ------------------------------------------------------------------------------ helpers


class DictCache:
    """A content cache in a dict: what a user would write (the seed's Redis example)."""

    def __init__(self) -> None:
        self.data: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.gets = 0
        self.puts = 0

    def get(self, digest: bytes) -> BinaryIO | None:
        with self.lock:
            self.gets += 1
            value = self.data.get(digest)
            if value is None:
                return None
            self.data.move_to_end(digest)
            return io.BytesIO(value)

    def put(self, digest: bytes, f: BinaryIO) -> None:
        value = f.read()
        with self.lock:
            self.puts += 1
            self.data.setdefault(digest, value)

    def delete(self, digest: bytes) -> None:
        with self.lock:
            self.data.pop(digest, None)

    def max_bytes(self) -> int:
        return 0

    def size_bytes(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.data.values())

    def prune(self, target_bytes: int) -> int:
        freed = 0
        with self.lock:
            while self.data and sum(len(v) for v in self.data.values()) > target_bytes:
                _, v = self.data.popitem(last=False)
                freed += len(v)
        return freed


class CountingSource:
    """A ByteSource wrapper recording every read (thread-safe: readahead reads from a pool)."""

    def __init__(self, inner: ByteSource) -> None:
        self.inner = inner
        self.lock = threading.Lock()
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def source_id(self) -> str:
        return self.inner.source_id

    def _count(self, offset: int, length: int) -> None:
        with self.lock:
            self.reads.append((offset, length))

    @property
    def bytes_read(self) -> int:
        with self.lock:
            return sum(n for _, n in self.reads)

    def clear(self) -> None:
        with self.lock:
            self.reads.clear()

    def read_at(self, offset: int, length: int) -> bytes:
        self._count(offset, length)
        return self.inner.read_at(offset, length)

    async def aread_at(self, offset: int, length: int) -> bytes:
        self._count(offset, length)
        return await self.inner.aread_at(offset, length)

    def close(self) -> None:
        self.inner.close()


class FaultySource(CountingSource):
    """Fails (``SourceError``) or corrupts reads overlapping ``[bad_start, bad_end)``."""

    def __init__(self, inner: ByteSource, bad: tuple[int, int], *, corrupt: bool = False) -> None:
        super().__init__(inner)
        self.bad = bad
        self.corrupt = corrupt
        self.faults = 0

    def _fault(self, offset: int, data: bytes) -> bytes:
        lo, hi = self.bad
        if offset < hi and lo < offset + len(data):
            with self.lock:
                self.faults += 1
            if not self.corrupt:
                raise SourceError(f"injected failure at [{lo}, {hi})")
            i = max(lo, offset) - offset
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
        return data

    def read_at(self, offset: int, length: int) -> bytes:
        return self._fault(offset, super().read_at(offset, length))

    async def aread_at(self, offset: int, length: int) -> bytes:
        return self._fault(offset, await super().aread_at(offset, length))


@dataclass
class Built:
    """An archive built by ``create_blob``, held in memory."""

    index: bytes
    data: bytes
    contents: dict[str, bytes]

    def archive(
        self, cache: Cache | None = None, *, readahead: bool = True
    ) -> tuple[Archive, CountingSource]:
        src = CountingSource(BytesSource(self.data))
        return Archive(self.index, src, cache=cache, readahead=readahead), src


def build(
    tmp: Path,
    files: dict[str, bytes],
    *,
    chunk_size: int = CS,
    compression: Compression = Compression.ZSTD,
    unchunked: Collection[str] = (),
) -> Built:
    """An archive of ``files`` made by ``create_blob``; the ``unchunked`` paths get their chunk
    tables dropped from the index, which leaves valid v1 entries (FORMAT.md section 4: the
    payload of a chunked entry is a valid v1 payload), so large v1 files sit next to chunked
    ones."""
    src = tmp / "src"
    for name, content in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    with create_blob(src, tmp / "out", chunk_size=chunk_size, compression=compression) as bf:
        data = Path(bf.data_path).read_bytes()
        index = bf.index
        raw = (tmp / "out" / "index.blob").read_bytes()
        if unchunked:
            entries = [
                e._replace(chunk_size=0, chunk_hashes=b"", frame_offsets=())
                if e.path in unchunked
                else e
                for e in index.walk()
            ]
            raw = encode_index(entries, data_size=index.data_size, data_hash=index.data_hash)
    return Built(raw, data, dict(files))


def compressible(n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(3, 30)) for _ in range(500)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words)
    return bytes(out[:n])


def incompressible(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def read_sequentially(f: ArchiveFile, size: int) -> bytes:
    out = bytearray()
    while piece := f.read(size):
        out += piece
    return bytes(out)


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` (readahead runs in pool threads) until true or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


CacheFactory = Callable[[Path], Cache]

CACHES: dict[str, CacheFactory] = {
    "dict": lambda _: DictCache(),
    "memory": lambda _: MemoryCache(),
    "disk": lambda tmp: DiskCache(tmp / "content-cache"),
}


@pytest.fixture(params=sorted(CACHES))
def any_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Cache:
    """Each content cache implementation: the user-written one and blobfs's own."""
    factory = CACHES[request.param]
    return factory(tmp_path)


# The standard archive: v1 entries (raw and zstd, small and spooled-to-disk) and chunked ones.
STANDARD: dict[str, bytes] = {
    "small.txt": compressible(5000, 1),
    "v1-raw.bin": incompressible(40_000, 2),
    "v1-big.txt": compressible(SPOOL_MEMORY + 300_000, 3),  # rolls the spool over to disk
    "v1-big-raw.bin": incompressible((8 << 20) + 200_000, 13),  # a payload of two pieces
    "chunked.txt": compressible(10 * CS + 17, 4),
    "chunked-raw.bin": incompressible(9 * CS + 1, 5),
}
V1 = ("small.txt", "v1-raw.bin", "v1-big.txt", "v1-big-raw.bin")
CHUNKED = ("chunked.txt", "chunked-raw.bin")


@pytest.fixture(scope="module")
def standard(tmp_path_factory: pytest.TempPathFactory) -> Built:
    built = build(tmp_path_factory.mktemp("standard"), STANDARD, chunk_size=CS, unchunked=V1)
    index = Index(built.index)
    assert all(index.entry(p).chunked for p in CHUNKED)
    assert not any(index.entry(p).chunked for p in V1)
    kinds = {index.entry(p).compression for p in STANDARD}
    assert kinds == {Compression.NONE, Compression.ZSTD}
    return built


# ------------------------------------------------------------------------------ content cache


@pytest.mark.parametrize("path", sorted(STANDARD))
def test_second_read_costs_no_source_bytes(standard: Built, any_cache: Cache, path: str) -> None:
    archive, src = standard.archive(any_cache)
    content = standard.contents[path]
    with archive.open(path) as f:
        assert f.read() == content
    assert src.bytes_read > 0
    src.clear()
    # A new file object, a whole-file read and a random read: all from the cache.
    with archive.open(path) as f:
        f.seek(len(content) // 3)
        assert f.read(1000) == content[len(content) // 3 :][:1000]
    assert archive.read_file(path) == content
    assert src.reads == []


@pytest.mark.parametrize("path", sorted(STANDARD))
def test_read_file_fills_the_cache_for_open(standard: Built, any_cache: Cache, path: str) -> None:
    archive, src = standard.archive(any_cache)
    content = standard.contents[path]
    assert archive.read_file(path) == content
    assert src.bytes_read > 0
    src.clear()
    with archive.open(path) as f:
        assert f.read() == content
    assert src.reads == []


def test_cache_keys_are_content_hashes(standard: Built) -> None:
    cache = DictCache()
    archive, _ = standard.archive(cache)
    for path in STANDARD:
        archive.read_file(path)
    index = Index(standard.index)
    expected: set[bytes] = set()
    for path in STANDARD:
        e = index.entry(path)
        if e.chunked:
            expected.update(e.chunk_hash(k) for k in range(e.num_chunks))
        else:
            expected.add(e.hash)
    assert set(cache.data) == expected
    assert all(sha(v) == k for k, v in cache.data.items())


@pytest.mark.parametrize("path", ["small.txt", "v1-big.txt", "chunked.txt", "chunked-raw.bin"])
@pytest.mark.parametrize("how", ["open", "read_file"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_corrupted_cache_entry_is_deleted_and_refetched(
    standard: Built, caplog: pytest.LogCaptureFixture, path: str, how: str, damage: str
) -> None:
    cache = DictCache()
    archive, src = standard.archive(cache)
    content = standard.contents[path]
    assert archive.read_file(path) == content
    entry = archive.entry(path)
    key = entry.chunk_hash(1) if entry.chunked else entry.hash
    good = cache.data[key]
    if damage == "flip":
        bad = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    elif damage == "truncate":
        bad = good[:-1]
    else:
        bad = good + b"x"
    cache.data[key] = bad
    src.clear()
    with caplog.at_level(logging.WARNING, logger="blobfs"):
        if how == "open":
            with archive.open(path) as f:
                data = f.read()
        else:
            data = archive.read_file(path)
    assert data == content
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert key.hex() in warnings[0].getMessage()
    assert path in warnings[0].getMessage()
    # Refetched from the source (just what the bad entry held), verified, stored again.
    assert src.bytes_read > 0
    if entry.chunked:
        assert src.reads == [entry.chunk_payload(1)]
    assert cache.data[key] == good


def test_cache_failures_never_fail_a_read(
    standard: Built, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(DictCache):
        def get(self, digest: bytes) -> BinaryIO | None:
            raise OSError("cache disk gone")

        def put(self, digest: bytes, f: BinaryIO) -> None:
            raise OSError("cache disk full")

    class BadFile(DictCache):
        def get(self, digest: bytes) -> BinaryIO | None:
            class Failing(io.BytesIO):
                def read(self, size: int | None = -1, /) -> bytes:
                    raise OSError("I/O error")

            return Failing(b"")

    for cache in (Broken(), BadFile()):
        archive, _ = standard.archive(cache)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="blobfs"):
            for _ in range(2):
                for path, content in STANDARD.items():
                    assert archive.read_file(path) == content
                    with archive.open(path) as f:
                        assert f.read() == content
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        if isinstance(cache, Broken):
            # One WARNING per failing operation, the rest at DEBUG: no flood.
            assert len(warnings) == 2
            assert any("get" in w for w in warnings)
            assert any("put" in w for w in warnings)
        else:
            # Each is a (seemingly) cached entry rejected as corrupt: chunks and whole files
            # fail their reads; a chunked file's whole-file entry, its size.
            assert warnings
            assert all("is corrupt" in w for w in warnings)
            assert any("read failed" in w for w in warnings)


def test_only_verified_content_is_stored(standard: Built) -> None:
    cache = DictCache()
    index = Index(standard.index)
    e = index.entry("chunked.txt")
    off, n = e.chunk_payload(3)
    for path in ("chunked.txt", "small.txt"):
        entry = index.entry(path)
        bad_at = off + n // 2 if entry.chunked else entry.data_offset + entry.data_size // 2
        src = FaultySource(BytesSource(standard.data), (bad_at, bad_at + 1), corrupt=True)
        archive = Archive(standard.index, src, cache=cache)
        with pytest.raises(IntegrityError, match=re.escape(path)):
            archive.read_file(path)
        with pytest.raises(IntegrityError, match=re.escape(path)), archive.open(path) as f:
            f.read()
        archive.close()  # readahead may still be storing the chunks after the bad one
        if entry.chunked:
            # Good chunks fetched with the bad one may be stored; the bad one never is.
            assert e.chunk_hash(3) not in cache.data
        else:
            assert entry.hash not in cache.data
    assert all(sha(v) == k for k, v in cache.data.items())


def test_random_access_fetches_only_missing_runs(tmp_path: Path) -> None:
    content = incompressible(16 * CS, 6)
    built = build(tmp_path, {"f.bin": content}, chunk_size=CS)
    cache = DictCache()
    archive, src = built.archive(cache)
    e = archive.entry("f.bin")
    cached = [0, 1, 2, 5, 6, 10, 11, 12, 13, 14, 15]
    for k in cached:
        cache.put(e.chunk_hash(k), io.BytesIO(content[k * CS : (k + 1) * CS]))
    with archive.open("f.bin") as f:
        f.seek(CS + 100)
        assert f.read(12 * CS) == content[CS + 100 :][: 12 * CS]
    # Chunks 3-4 and 7-9 are missing: one fetch per run, exactly their payload.
    run1 = (e.chunk_payload(3)[0], 2 * CS)
    run2 = (e.chunk_payload(7)[0], 3 * CS)
    assert src.reads == [run1, run2]
    # Now everything is cached.
    src.clear()
    assert archive.read_file("f.bin") == content
    assert src.reads == []


def test_identical_file_in_two_archives_shares_entries(tmp_path: Path) -> None:
    shared_v1 = compressible(30_000, 7)
    shared_chunked = incompressible(5 * CS + 3, 8)
    a = build(
        tmp_path / "a",
        {"a-only.txt": compressible(1000, 9), "x/v1.txt": shared_v1, "x/big.bin": shared_chunked},
    )
    b = build(
        tmp_path / "b",
        {"other/v1.txt": shared_v1, "other/big.bin": shared_chunked, "zz.txt": b"b" * 999},
    )
    assert a.data != b.data
    cache = DictCache()
    archive_a, _ = a.archive(cache)
    archive_b, src_b = b.archive(cache)
    assert archive_a.read_file("x/v1.txt") == shared_v1
    with archive_a.open("x/big.bin") as f:
        assert f.read() == shared_chunked
    entries = len(cache.data)
    assert archive_b.read_file("other/v1.txt") == shared_v1
    assert archive_b.read_file("other/big.bin") == shared_chunked
    assert src_b.reads == []
    assert len(cache.data) == entries


def test_verify_reads_the_source_and_ignores_the_cache(standard: Built) -> None:
    cache = DictCache()
    archive, src = standard.archive(cache)
    for path in STANDARD:
        archive.read_file(path)
    src.clear()
    gets, puts = cache.gets, cache.puts
    assert archive.verify().ok
    assert src.bytes_read >= len(standard.data)
    assert (cache.gets, cache.puts) == (gets, puts)
    # A corrupt data blob is reported even though the cache holds good copies of everything.
    data = bytearray(standard.data)
    e = archive.entry("chunked.txt")
    data[e.chunk_payload(2)[0] + 5] ^= 0xFF
    bad = Archive(standard.index, BytesSource(bytes(data)), cache=cache)
    report = bad.verify()
    assert [p for p, _ in report.failures] == ["chunked.txt"]
    assert report.data_error is not None
    # Reads are served from the (verified) cache: the content is right whatever the source.
    assert bad.read_file("chunked.txt") == STANDARD["chunked.txt"]


def test_block_cache_wraps_the_source(tmp_path: Path, standard: Built) -> None:
    wrapped: list[ByteSource] = []

    class Recording:
        def __init__(self) -> None:
            self.inner = BlockCache(tmp_path / "blocks")

        def wrap(
            self, source: ByteSource, *, block_size: int = 1, max_blocks_per_read: int = 1
        ) -> ByteSource:
            s = self.inner.wrap(source)
            wrapped.append(s)
            return s

        def max_bytes(self) -> int:
            return self.inner.max_bytes()

        def size_bytes(self) -> int:
            return self.inner.size_bytes()

        def prune(self, target_bytes: int) -> int:
            return self.inner.prune(target_bytes)

    src = CountingSource(BytesSource(standard.data))
    with Archive(standard.index, src, block_cache=Recording()) as archive:
        assert wrapped == [archive.source]
        with archive.open("chunked.txt") as f:
            f.seek(3 * CS)
            assert f.read(100) == STANDARD["chunked.txt"][3 * CS :][:100]
        first = src.bytes_read
        assert first > 0
        with archive.open("chunked.txt") as f:
            f.seek(3 * CS)
            assert f.read(100) == STANDARD["chunked.txt"][3 * CS :][:100]
        assert src.bytes_read == first  # the second read hit the block cache


def test_archive_close_stops_readahead_but_reads_go_on(standard: Built) -> None:
    archive, _ = standard.archive()
    with archive, archive.open("chunked.txt") as f:
        assert read_sequentially(f, 1000) == STANDARD["chunked.txt"]
    with archive.open("chunked.txt") as f:
        assert read_sequentially(f, 1000) == STANDARD["chunked.txt"]
        ra = f._core.readahead
        assert ra is not None
        assert ra.window is None


# ------------------------------------------------------------------------------ readahead


BIG = 64 * MiB


@pytest.fixture(scope="module", params=["incompressible", "compressible"])
def big(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A 64 MiB file in 1 MiB chunks, stored raw (incompressible) or as zstd frames."""
    gen = incompressible if request.param == "incompressible" else compressible
    content = gen(BIG, 10)
    built = build(tmp_path_factory.mktemp(request.param), {"big.bin": content}, chunk_size=MiB)
    e = Index(built.index).entry("big.bin")
    assert e.chunked
    assert (e.compression == Compression.NONE) == (request.param == "incompressible")
    return built


def check_sequential_fetches(built: Built, src: CountingSource) -> None:
    e = Index(built.index).entry("big.bin")
    reads = list(src.reads)
    assert sum(n for _, n in reads) == e.data_size  # every payload byte once, nothing more
    assert len(reads) <= 10, reads
    if e.compression == Compression.NONE:
        # Small requests only where a window starts (1, 2, 4 MiB: the reader waits for them)
        # and at the end of the file.
        assert sum(n >= 4 * MiB for _, n in reads) >= len(reads) - 4, reads


@pytest.mark.parametrize("read_size", [MiB, 128 << 10])
def test_sequential_read_fetches_large_ranges(big: Built, read_size: int) -> None:
    archive, src = big.archive()
    with archive, archive.open("big.bin") as f:
        assert read_sequentially(f, read_size) == big.contents["big.bin"]
    check_sequential_fetches(big, src)


def test_sequential_read_without_readahead_fetches_chunk_by_chunk(big: Built) -> None:
    archive, src = big.archive(readahead=False)
    with archive.open("big.bin") as f:
        assert read_sequentially(f, MiB) == big.contents["big.bin"]
    assert len(src.reads) == 64


def test_readahead_memory_is_bounded(big: Built) -> None:
    archive, _ = big.archive()
    with archive, archive.open("big.bin") as f:
        ra = f._core.readahead
        assert ra is not None
        for _ in range(40):
            f.read(MiB)
            window = ra.window
            if window is not None:
                first, end = window
                assert (end - first) * MiB <= READAHEAD_BYTES  # the window holds no more


def test_sequential_read_from_the_cache(big: Built, any_cache: Cache) -> None:
    archive, src = big.archive(any_cache)
    with archive:
        with archive.open("big.bin") as f:
            assert read_sequentially(f, MiB) == big.contents["big.bin"]
        src.clear()
        with archive.open("big.bin") as f:
            assert read_sequentially(f, MiB) == big.contents["big.bin"]
        assert src.reads == []


def test_seek_during_readahead_returns_the_right_bytes(big: Built) -> None:
    content = big.contents["big.bin"]
    archive, _ = big.archive()
    with archive, archive.open("big.bin") as f:
        ra = f._core.readahead
        assert ra is not None
        for _ in range(5):
            f.read(MiB)
        assert ra.window is not None  # readahead is running
        for pos, n in [(40 * MiB + 5, 3 * MiB), (2 * MiB - 7, 100), (6 * MiB, MiB), (0, 10)]:
            f.seek(pos)
            assert f.read(n) == content[pos : pos + n]
        assert ra.window is None  # the seeks dropped it
        f.seek(10 * MiB)
        assert read_sequentially(f, 300_000) == content[10 * MiB :]


def test_prefetch_error_for_data_never_read_does_not_fail(big: Built) -> None:
    content = big.contents["big.bin"]
    e = Index(big.index).entry("big.bin")
    bad_at = e.chunk_payload(20)[0] + 10
    for corrupt in (False, True):
        src = FaultySource(BytesSource(big.data), (bad_at, bad_at + 1), corrupt=corrupt)
        with Archive(big.index, src) as archive:
            with archive.open("big.bin") as f:
                for i in range(16):
                    assert f.read(MiB) == content[i * MiB : (i + 1) * MiB]
                # Readahead reached the bad chunk; reading it (only) fails.
                wait_until(lambda: src.faults > 0)  # noqa: B023  # called right here
                f.seek(20 * MiB + 5)
                with pytest.raises(IntegrityError if corrupt else SourceError):
                    f.read(10)
                assert f.tell() == 20 * MiB + 5
                f.seek(21 * MiB)
                assert f.read(MiB) == content[21 * MiB : 22 * MiB]
            # A sequential reader reaching it gets the error too, and only there.
            with archive.open("big.bin") as f:
                got = bytearray()
                for _ in range(20):
                    got += f.read(MiB)
                assert bytes(got) == content[: 20 * MiB]
                with pytest.raises(IntegrityError if corrupt else SourceError):
                    f.read(MiB)


def test_single_large_read_is_pipelined_but_not_read_beyond(big: Built) -> None:
    content = big.contents["big.bin"]
    e = Index(big.index).entry("big.bin")
    archive, src = big.archive()
    with archive, archive.open("big.bin") as f:
        f.seek(3 * MiB)
        assert f.read(20 * MiB) == content[3 * MiB : 23 * MiB]
    first, _ = e.chunk_payload(3)
    last_off, last_n = e.chunk_payload(22)
    assert sum(n for _, n in src.reads) == last_off + last_n - first


# ------------------------------------------------------------------------------ async twins


async def async_checks(big: Built, cache: Cache) -> None:
    content = big.contents["big.bin"]
    archive, src = big.archive(cache)
    with archive:
        async with await archive.aopen("big.bin") as f:
            out = bytearray()
            while piece := await f.read(MiB):
                out += piece
            assert bytes(out) == content
        check_sequential_fetches(big, src)
        src.clear()
        async with await archive.aopen("big.bin") as f:
            for _ in range(5):
                await f.read(MiB)
            for pos, n in [(40 * MiB + 5, 3 * MiB), (2 * MiB - 7, 100)]:
                await f.seek(pos)
                assert await f.read(n) == content[pos : pos + n]
        assert src.reads == []
        assert await archive.aread_file("big.bin", max_file_size=0) == content


@pytest.mark.trio
async def test_async_sequential_read_and_cache_under_trio(big: Built) -> None:
    await async_checks(big, DictCache())


def test_async_sequential_read_and_cache_under_asyncio(big: Built) -> None:
    asyncio.run(async_checks(big, DictCache()))


async def async_prefetch_error_checks(big: Built) -> None:
    content = big.contents["big.bin"]
    e = Index(big.index).entry("big.bin")
    bad_at = e.chunk_payload(20)[0] + 10
    src = FaultySource(BytesSource(big.data), (bad_at, bad_at + 1), corrupt=True)
    with Archive(big.index, src) as archive:
        async with await archive.aopen("big.bin") as f:
            for i in range(16):
                assert await f.read(MiB) == content[i * MiB : (i + 1) * MiB]
            wait_until(lambda: src.faults > 0)
            await f.seek(19 * MiB)
            assert await f.read(MiB) == content[19 * MiB : 20 * MiB]
            with pytest.raises(IntegrityError, match=r"big\.bin"):
                await f.read(MiB)


@pytest.mark.trio
async def test_async_prefetch_error_under_trio(big: Built) -> None:
    await async_prefetch_error_checks(big)


def test_async_prefetch_error_under_asyncio(big: Built) -> None:
    asyncio.run(async_prefetch_error_checks(big))


class Gated(CountingSource):
    """Blocking reads wait for ``gate`` (readahead reads run in pool threads)."""

    def __init__(self, inner: ByteSource) -> None:
        super().__init__(inner)
        self.gate = threading.Event()

    def read_at(self, offset: int, length: int) -> bytes:
        if not self.gate.wait(10):
            raise SourceError("gate timeout")
        return super().read_at(offset, length)


@pytest.mark.trio
async def test_cancelled_wait_for_readahead_leaves_the_file_usable(big: Built) -> None:
    content = big.contents["big.bin"]
    src = Gated(BytesSource(big.data))
    src.gate.set()
    with Archive(big.index, src) as archive:
        async with await archive.aopen("big.bin") as f:
            src.gate.clear()  # readahead groups (a first read at 0 opens a window) now stall
            with trio.move_on_after(0.2) as scope:
                await f.read(MiB)
            assert scope.cancelled_caught  # cancelled promptly while waiting for a group
            assert f.tell() == 0
            src.gate.set()
            assert await f.read(2 * MiB) == content[: 2 * MiB]


def test_cancelled_wait_for_readahead_under_asyncio(big: Built) -> None:
    content = big.contents["big.bin"]

    async def main() -> None:
        src = Gated(BytesSource(big.data))
        src.gate.set()
        with Archive(big.index, src) as archive:
            async with await archive.aopen("big.bin") as f:
                src.gate.clear()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(f.read(MiB), 0.2)
                assert f.tell() == 0
                src.gate.set()
                assert await f.read(2 * MiB) == content[: 2 * MiB]

    asyncio.run(main())


@pytest.mark.trio
async def test_async_random_access_with_half_the_chunks_cached(tmp_path: Path) -> None:
    content = incompressible(16 * CS, 6)
    built = build(tmp_path, {"f.bin": content}, chunk_size=CS)
    cache = DictCache()
    archive, src = built.archive(cache)
    e = archive.entry("f.bin")
    for k in [0, 1, 2, 5, 6, 10, 11, 12, 13, 14, 15]:
        cache.put(e.chunk_hash(k), io.BytesIO(content[k * CS : (k + 1) * CS]))
    async with await archive.aopen("f.bin") as f:
        await f.seek(CS + 100)
        assert await f.read(12 * CS) == content[CS + 100 :][: 12 * CS]
    assert src.reads == [(e.chunk_payload(3)[0], 2 * CS), (e.chunk_payload(7)[0], 3 * CS)]
    v1 = build(tmp_path / "v1", {"a.txt": compressible(50_000, 3)})
    archive, src = v1.archive(cache)
    assert await archive.aread_file("a.txt") == v1.contents["a.txt"]
    async with await archive.aopen("a.txt") as f:
        await f.seek(100)
        assert await f.read(10) == v1.contents["a.txt"][100:110]
    assert len(src.reads) == 1


def test_disk_cache_is_shared_across_archive_objects(tmp_path: Path, standard: Built) -> None:
    archive, _ = standard.archive(DiskCache(tmp_path / "c"))
    for path in STANDARD:
        archive.read_file(path)
    fresh, src = standard.archive(DiskCache(tmp_path / "c"))
    for path, content in STANDARD.items():
        with fresh.open(path) as f:
            assert f.read() == content
    assert src.reads == []
    assert os.listdir(tmp_path / "c")


def test_open_file_takes_both_caches(tmp_path: Path) -> None:
    files = {"a.txt": compressible(3000, 11), "big.bin": incompressible(3 * CS + 5, 12)}
    build(tmp_path, files)
    cache = DictCache()
    out = tmp_path / "out"
    with open_file(
        out / "index.blob", out / "data.blob", cache=cache, block_cache=BlockCache(tmp_path / "b")
    ) as archive:
        assert archive.cache is cache
        assert not isinstance(archive.source, FileSource)  # reads go through the block cache
        for path, content in files.items():
            assert archive.read_file(path) == content
        assert len(cache.data) == 1 + 4  # one v1 file, four chunks
        assert archive.verify().ok


# ------------------------------------------------------------------------------ prefetch


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """1,000 files of 1 KiB in ``small/`` (incompressible and compressible), plus neighbours."""
    files = {
        f"small/f{i:04d}.txt": (incompressible if i % 2 else compressible)(1024, i)
        for i in range(1000)
    }
    files["a-before.bin"] = incompressible(300_000, 1)
    files["small/sub/chunked.bin"] = incompressible(3 * CS + 1, 2)
    files["z-after.bin"] = incompressible(300_000, 3)
    return build(tmp_path_factory.mktemp("small"), files)


def test_prefetch_a_directory_with_one_request(small_dir: Built) -> None:
    cache = DictCache()
    archive, src = small_dir.archive(cache)
    with archive:
        assert archive.prefetch("small") == 1001
        assert len(src.reads) == 1
        first = min(e.data_offset for e in archive.walk("small"))
        assert src.reads[0][0] == first
        assert src.bytes_read == sum(e.data_size for e in archive.walk("small"))
        src.clear()
        for e in archive.walk("small"):
            assert archive.read_file(e.path) == small_dir.contents[e.path]
        assert src.reads == []
        assert archive.prefetch("small") == 0  # all cached: nothing to do
        assert archive.prefetch("small/f0007.txt") == 0
        assert src.reads == []
        with pytest.raises(NotFound):
            archive.prefetch("nope")


def test_prefetch_without_a_cache_does_nothing(small_dir: Built) -> None:
    archive, src = small_dir.archive()
    assert archive.prefetch("small") == 0
    assert src.reads == []
    with pytest.raises(NotFound):
        archive.prefetch("nope")


def test_prefetch_skips_bad_files(small_dir: Built) -> None:
    index = Index(small_dir.index)
    bad = index.entry("small/f0100.txt")
    src = FaultySource(BytesSource(small_dir.data), (bad.data_offset + 3, bad.data_offset + 4))
    src.corrupt = True
    cache = DictCache()
    archive = Archive(small_dir.index, src, cache=cache, readahead=False)
    assert archive.prefetch("small") == 1000
    assert bad.hash not in cache.data
    with pytest.raises(IntegrityError, match=re.escape("small/f0100.txt")):
        archive.read_file("small/f0100.txt")
    # A failed request stores nothing and raises nothing.
    failing = FaultySource(BytesSource(small_dir.data), (0, len(small_dir.data)))
    assert Archive(small_dir.index, failing, cache=DictCache()).prefetch("small") == 0


async def async_prefetch_checks(small_dir: Built) -> None:
    cache = DictCache()
    archive, src = small_dir.archive(cache)
    with archive:
        assert await archive.aprefetch("small") == 1001
        assert len(src.reads) == 1
        src.clear()
        for e in archive.walk("small"):
            assert await archive.aread_file(e.path) == small_dir.contents[e.path]
        assert src.reads == []
    # Without readahead threads, and without a cache.
    archive, src = small_dir.archive(DictCache(), readahead=False)
    assert await archive.aprefetch("") == 1003
    assert len(src.reads) == 1
    assert await small_dir.archive()[0].aprefetch("small") == 0


@pytest.mark.trio
async def test_async_prefetch_under_trio(small_dir: Built) -> None:
    await async_prefetch_checks(small_dir)


def test_async_prefetch_under_asyncio(small_dir: Built) -> None:
    asyncio.run(async_prefetch_checks(small_dir))


# ------------------------------------------------------------------------------ large v1 files


def test_large_v1_file_fetches_ahead_and_reports_errors_in_order(standard: Built) -> None:
    path = "v1-big-raw.bin"
    entry = Index(standard.index).entry(path)
    assert entry.data_size > MAX_FETCH  # several pieces: the next one is fetched ahead
    second = entry.data_offset + MAX_FETCH + 10
    src = FaultySource(BytesSource(standard.data), (second, second + 1))
    with Archive(standard.index, src) as archive:
        with pytest.raises(SourceError, match="injected"):
            archive.read_file(path)
        with pytest.raises(SourceError, match="injected"), archive.open(path) as f:
            f.read(10)
    good, counting = standard.archive()
    with good:
        assert good.read_file(path) == STANDARD[path]
        assert sorted(counting.reads) == [
            (entry.data_offset, MAX_FETCH),
            (entry.data_offset + MAX_FETCH, entry.data_size - MAX_FETCH),
        ]
    assert good.read_file(path) == STANDARD[path]  # closed: no pool, still reads


@pytest.mark.trio
async def test_large_v1_file_async(standard: Built) -> None:
    archive, _ = standard.archive(DictCache())
    with archive:
        path = "v1-big-raw.bin"
        assert await archive.aread_file(path) == STANDARD[path]
        async with await archive.aopen(path) as f:
            await f.seek(MAX_FETCH - 3)
            assert await f.read(6) == STANDARD[path][MAX_FETCH - 3 : MAX_FETCH + 3]
