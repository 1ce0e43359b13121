"""Caches: MemoryCache, DiskCache (content) and BlockCache/CachedSource (blocks of a data blob).

Content caches are checked against the ``Cache`` protocol (including a user-written one), for
LRU order, bounds, pruning and races between threads and between processes. The block cache is
checked through a counting source: coalescing, hits, bypass, the short last block, corruption
on disk, eviction, single-flight, error propagation and the async twins.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobfs.core import ByteSource, BytesSource
from blobfs.core.cache import DEFAULT_BLOCK_SIZE, MemoryCache
from blobfs.core.cache import BlockCache as BlockCacheProtocol
from blobfs.core.cache import Cache as CacheProtocol
from blobfs.core.cache._blocks import BLOCK_HEADER_SIZE, HOT_BYTES
from blobfs.core.cache._store import LEDGER_DIRNAME, STALE_TEMP_NS
from blobfs.core.cache.disk import BlockCache, CachedSource, DiskCache
from blobfs.errors import SourceError

ROOT = Path(__file__).resolve().parent.parent
BS = 1024  # small blocks keep the block tests fast; the mechanism does not depend on the size
HDR = BLOCK_HEADER_SIZE


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def blob(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating bytes (a repeating pattern would hide offset mistakes)."""
    return random.Random(seed).randbytes(n)


def backdate(path: str | Path, seconds_ago: float) -> None:
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


class CountingSource(BytesSource):
    """An in-memory source that counts ``read_at`` calls and bytes, optionally slow or failing."""

    def __init__(self, data: bytes, *, source_id: str = "test-blob", delay: float = 0.0) -> None:
        super().__init__(data, source_id=source_id)
        self.calls: list[tuple[int, int]] = []
        self.delay = delay
        self.fail: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.calls)

    def read_at(self, offset: int, length: int) -> bytes:
        with self._lock:
            self.calls.append((offset, length))
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return super().read_at(offset, length)


class DictCache:
    """A user-written content cache: a dict, no limit, no eviction (the seed's Redis example)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.lock = threading.Lock()

    def get(self, digest: bytes) -> BinaryIO | None:
        with self.lock:
            b = self.data.get(digest)
        return None if b is None else io.BytesIO(b)

    def put(self, digest: bytes, f: BinaryIO) -> None:
        b = f.read()
        with self.lock:
            self.data.setdefault(digest, b)

    def delete(self, digest: bytes) -> None:
        with self.lock:
            self.data.pop(digest, None)

    def max_bytes(self) -> int:
        return 0

    def size_bytes(self) -> int:
        with self.lock:
            return sum(map(len, self.data.values()))

    def prune(self, target_bytes: int) -> int:
        freed = 0
        with self.lock:
            while self.data and sum(map(len, self.data.values())) > target_bytes:
                freed += len(self.data.pop(next(iter(self.data))))
        return freed


ContentCacheFactory = Callable[[Path, int], CacheProtocol]


def _memory(tmp: Path, max_bytes: int) -> CacheProtocol:
    return MemoryCache(max_bytes)


def _disk(tmp: Path, max_bytes: int) -> CacheProtocol:
    return DiskCache(tmp / "content", max_bytes=max_bytes)


def _dict(tmp: Path, max_bytes: int) -> CacheProtocol:
    return DictCache()


def read_all(c: CacheProtocol, key: bytes) -> bytes | None:
    f = c.get(key)
    if f is None:
        return None
    with f:
        return f.read()


# --------------------------------------------------------------------------------------------
# The content-cache protocol, three implementations


@pytest.mark.parametrize("make", [_memory, _disk, _dict], ids=["memory", "disk", "user-dict"])
def test_content_cache_protocol(tmp_path: Path, make: ContentCacheFactory) -> None:
    c = make(tmp_path, 0)
    assert isinstance(c, CacheProtocol)
    a, b = blob(3000, 1), b""
    assert c.get(sha(a)) is None
    c.put(sha(a), io.BytesIO(a))
    c.put(sha(b), io.BytesIO(b))
    assert read_all(c, sha(a)) == a
    assert read_all(c, sha(b)) == b  # empty content is content
    assert c.size_bytes() == len(a)
    c.put(sha(a), io.BytesIO(b"not read: the key exists"))
    assert read_all(c, sha(a)) == a
    c.delete(sha(a))
    c.delete(sha(a))  # a missing key is not an error
    assert c.get(sha(a)) is None
    assert c.size_bytes() == 0
    assert c.max_bytes() == 0


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_content_cache_rejects_bad_digests(tmp_path: Path, make: ContentCacheFactory) -> None:
    c = make(tmp_path, 0)
    for bad in (b"short", sha(b"x").hex().encode(), b"", sha(b"x") + b"!"):
        with pytest.raises(ValueError, match="32-byte SHA-256"):
            c.get(bad)
        with pytest.raises(ValueError, match="32-byte SHA-256"):
            c.put(bad, io.BytesIO(b"x"))
        with pytest.raises(ValueError, match="32-byte SHA-256"):
            c.delete(bad)
    with pytest.raises(ValueError, match="max_bytes"):
        make(tmp_path / "neg", -1)


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, n: int | None = -1) -> bytes:
        b = super().read(n)
        self.consumed += len(b)
        return b


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_oversize_content_is_not_stored_and_not_read_to_the_end(
    tmp_path: Path, make: ContentCacheFactory
) -> None:
    limit = 100_000
    c = make(tmp_path, limit)
    exact, over = blob(limit, 1), blob(10 * (1 << 20), 2)
    c.put(sha(exact), io.BytesIO(exact))
    assert read_all(c, sha(exact)) == exact
    reader = CountingReader(over)
    c.put(sha(over), reader)
    assert c.get(sha(over)) is None
    assert reader.consumed <= limit + (1 << 20)  # stopped within one read past the limit
    assert c.size_bytes() == limit
    if isinstance(c, DiskCache):
        assert not list(Path(c.directory).rglob(".tmp-*"))


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_lru_order_a_get_refreshes(tmp_path: Path, make: ContentCacheFactory) -> None:
    entries = [blob(10_000, i) for i in range(4)]
    c = make(tmp_path, 35_000)  # room for three
    for i, e in enumerate(entries[:3]):
        c.put(sha(e), io.BytesIO(e))
        if isinstance(c, DiskCache):  # mtimes a second apart: LRU order by mtime, not by chance
            backdate(c.path(sha(e)), 100 - i)
    assert read_all(c, sha(entries[0])) is not None  # 0 is now the most recently used
    c.put(sha(entries[3]), io.BytesIO(entries[3]))
    assert c.get(sha(entries[1])) is None  # the least recently used went first
    for i in (0, 3):
        assert read_all(c, sha(entries[i])) == entries[i]
    assert c.size_bytes() <= 35_000


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_prune_returns_bytes_freed_oldest_first(tmp_path: Path, make: ContentCacheFactory) -> None:
    c = make(tmp_path, 0)
    entries = [blob(1000 * (i + 1), i) for i in range(5)]
    for i, e in enumerate(entries):
        c.put(sha(e), io.BytesIO(e))
        if isinstance(c, DiskCache):
            backdate(c.path(sha(e)), 100 - i)
    total = sum(map(len, entries))
    assert c.size_bytes() == total
    assert c.prune(total) == 0
    assert c.prune(total - 1) == 1000  # the oldest entry, 1000 bytes
    assert c.get(sha(entries[0])) is None
    assert c.prune(-5) == total - 1000  # a negative target empties the cache
    assert c.size_bytes() == 0


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_max_bytes_bound_holds_under_many_puts(tmp_path: Path, make: ContentCacheFactory) -> None:
    c = make(tmp_path, 50_000)
    for i in range(60):
        e = blob(1000 + 97 * i, i)
        c.put(sha(e), io.BytesIO(e))
        assert c.size_bytes() <= 50_000
    assert c.max_bytes() == 50_000
    if isinstance(c, DiskCache):
        on_disk = sum(p.stat().st_size for p in Path(c.directory).glob("??/*"))
        assert on_disk == c.size_bytes()


@pytest.mark.parametrize("make", [_memory, _disk], ids=["memory", "disk"])
def test_concurrent_puts_of_one_key_from_threads(tmp_path: Path, make: ContentCacheFactory) -> None:
    c = make(tmp_path, 0)
    data = blob(300_000, 7)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def put() -> None:
        try:
            barrier.wait()
            c.put(sha(data), io.BytesIO(data))
            assert read_all(c, sha(data)) == data
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert c.size_bytes() == len(data)  # stored and counted once


# --------------------------------------------------------------------------------------------
# DiskCache specifics


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".tmp-*")]


@pytest.mark.parametrize("how", ["unnamed inode", "no O_TMPFILE", "no /proc link"])
def test_put_bytes_stores_atomically_counts_once_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``put_bytes`` (what the mount stores) links an unnamed O_TMPFILE inode into place, or,
    where the file system or /proc cannot, a temp file: the same result either way."""
    import blobfs.core.cache._store as store

    real_open = os.open
    opened_tmpfile: list[int] = []

    def fake_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            opened_tmpfile.append(flags)
            if how == "no O_TMPFILE":
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, mode)

    def no_proc(fd: int, final: str) -> None:
        raise store._NoProcLink

    monkeypatch.setattr(os, "open", fake_open)
    if how == "no /proc link":
        monkeypatch.setattr(store, "_link_fd", no_proc)
    c = DiskCache(tmp_path / "c", max_bytes=1 << 20)
    items = [blob(1000 + i, i) for i in range(5)]
    c.put_bytes(sha(items[0]), items[0])  # alone: a failing way is given up at once
    tried_first = len(opened_tmpfile)
    assert tried_first >= 1
    barrier = threading.Barrier(4)

    def put_all() -> None:
        barrier.wait()
        for data in items:
            c.put_bytes(sha(data), data)

    threads = [threading.Thread(target=put_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for data in items:
        assert read_all(c, sha(data)) == data
    assert c.size_bytes() == sum(len(d) for d in items)  # each counted once, racers or not
    assert _temp_files(tmp_path / "c") == []
    if how == "unnamed inode":
        assert len(opened_tmpfile) >= tried_first + len(items) - 1  # every other key too
    else:
        assert len(opened_tmpfile) == tried_first  # never tried again
    c.put_bytes(sha(b"x" * (2 << 20)), b"x" * (2 << 20))  # over max_bytes: not stored
    assert c.get(sha(b"x" * (2 << 20))) is None
    c.close()


def test_disk_cache_layout_is_gos(tmp_path: Path) -> None:
    data = b"hello, go"
    key = sha(data)
    DiskCache(tmp_path / "sharded").put(key, io.BytesIO(data))
    assert (tmp_path / "sharded" / key.hex()[:2] / key.hex()).read_bytes() == data
    DiskCache(tmp_path / "flat", shard_len=0).put(key, io.BytesIO(data))
    assert (tmp_path / "flat" / key.hex()).read_bytes() == data
    # An entry written by another tool (Go) in the same layout is found.
    other = b"written by go"
    (tmp_path / "sharded" / sha(other).hex()[:2]).mkdir(exist_ok=True)
    (tmp_path / "sharded" / sha(other).hex()[:2] / sha(other).hex()).write_bytes(other)
    assert read_all(DiskCache(tmp_path / "sharded"), sha(other)) == other
    with pytest.raises(ValueError, match="shard_len"):
        DiskCache(tmp_path / "bad", shard_len=65)


def test_disk_cache_get_returns_a_file_at_zero_and_marks_use(tmp_path: Path) -> None:
    c = DiskCache(tmp_path)
    data = blob(5000)
    c.put(sha(data), io.BytesIO(data))
    backdate(c.path(sha(data)), 3600)
    before = os.stat(c.path(sha(data))).st_mtime
    f = c.get(sha(data))
    assert f is not None
    with f:
        assert f.tell() == 0
        assert f.read() == data
    assert os.stat(c.path(sha(data))).st_mtime > before + 3000


def test_disk_cache_get_does_not_verify(tmp_path: Path) -> None:
    """Documented choice: the reader re-verifies (and deletes), so get does not pay a SHA-256."""
    c = DiskCache(tmp_path)
    data = blob(5000)
    c.put(sha(data), io.BytesIO(data))
    path = Path(c.path(sha(data)))
    damaged = bytearray(data)
    damaged[100] ^= 1
    path.write_bytes(bytes(damaged))
    assert read_all(c, sha(data)) == bytes(damaged)


def test_disk_cache_size_is_shared_and_rebuilt(tmp_path: Path) -> None:
    a = DiskCache(tmp_path, max_bytes=10 << 20)
    b = DiskCache(tmp_path, max_bytes=10 << 20)
    x, y = blob(3000, 1), blob(4000, 2)
    a.put(sha(x), io.BytesIO(x))
    b.put(sha(y), io.BytesIO(y))
    a.close()  # sends a's pending delta
    assert b.size_bytes() == 7000
    assert a.size_bytes() == 7000
    b.close()
    # Without a ledger (first use of a directory Go filled, or deleted) the files are walked.
    shutil.rmtree(tmp_path / LEDGER_DIRNAME)
    assert DiskCache(tmp_path).size_bytes() == 7000


def test_disk_cache_without_a_usable_ledger_counts_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / LEDGER_DIRNAME).write_bytes(b"not a directory")
    with caplog.at_level(logging.WARNING, logger="blobfs.core.cache"):
        c = DiskCache(tmp_path, max_bytes=25_000)
    assert "ledger unavailable" in caplog.text
    for i in range(5):
        e = blob(10_000, i)
        c.put(sha(e), io.BytesIO(e))
        assert c.size_bytes() <= 25_000
    assert read_all(c, sha(blob(10_000, 4))) == blob(10_000, 4)
    assert c.prune(0) > 0
    assert c.size_bytes() == 0


def test_disk_cache_prune_corrects_drift_and_removes_stale_temps(tmp_path: Path) -> None:
    c = DiskCache(tmp_path)
    x = blob(3000)
    c.put(sha(x), io.BytesIO(x))
    os.unlink(c.path(sha(x)))  # deleted behind the cache's back
    stale = Path(c.path(sha(x))).parent / ".tmp-crashed"
    stale.write_bytes(b"partial")
    backdate(stale, STALE_TEMP_NS / 1e9 + 60)
    fresh = Path(c.path(sha(x))).parent / ".tmp-in-progress"
    fresh.write_bytes(b"partial")
    assert c.size_bytes() == 3000
    assert c.prune(1 << 30) == 0
    assert c.size_bytes() == 0
    assert not stale.exists()
    assert fresh.exists()  # a writer may still be working on it


def test_disk_cache_io_errors_never_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    c = DiskCache(tmp_path)
    x = blob(3000)
    shard = Path(c.path(sha(x))).parent
    shard.write_bytes(b"a file where the shard directory should be")
    with caplog.at_level(logging.WARNING, logger="blobfs.core.cache"):
        c.put(sha(x), io.BytesIO(x))  # logged, not raised
    assert "cannot create a cache file" in caplog.text
    assert c.get(sha(x)) is None
    assert c.size_bytes() == 0
    # An entry that cannot be opened (here: a directory in its place) is a miss.
    y = blob(100, 9)
    Path(c.path(sha(y))).parent.mkdir()
    Path(c.path(sha(y))).mkdir()
    assert c.get(sha(y)) is None


def test_disk_cache_errors_from_the_callers_file_propagate(tmp_path: Path) -> None:
    class Boom(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > 0:
                raise OSError("the caller's file failed")
            return super().read(10)

    c = DiskCache(tmp_path)
    with pytest.raises(OSError, match="caller's file"):
        c.put(sha(b"x"), Boom(b"0123456789abcdef"))
    assert c.get(sha(b"x")) is None
    assert not list(tmp_path.rglob(".tmp-*"))


_PROCESS_PUTS = textwrap.dedent(
    """
    import io, hashlib, random, sys
    from blobfs.core.cache.disk import DiskCache
    directory, seed = sys.argv[1], int(sys.argv[2])
    datas = [hashlib.sha256(str(i).encode()).digest() * (2000 + 37 * i) for i in range(40)]
    random.Random(seed).shuffle(datas)
    import os, time
    open(os.path.join(sys.argv[3], f"ready-{seed}"), "w").close()
    while len(os.listdir(sys.argv[3])) < 2:  # start together: the point is to race
        time.sleep(0.001)
    with DiskCache(directory) as c:
        for d in datas:
            key = hashlib.sha256(d).digest()
            c.put(key, io.BytesIO(d))
            f = c.get(key)
            assert f is not None and f.read() == d, "partial or wrong entry"
            f.close()
    """
)


def test_disk_cache_two_processes_put_the_same_keys(tmp_path: Path) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_PUTS, str(tmp_path / "c"), str(seed), str(sync)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    datas = [sha(str(i).encode()) * (2000 + 37 * i) for i in range(40)]
    c = DiskCache(tmp_path / "c")
    for d in datas:
        assert read_all(c, sha(d)) == d
    # Each entry was linked into place once, so the shared total is exact.
    assert c.size_bytes() == sum(map(len, datas))
    assert not list((tmp_path / "c").rglob(".tmp-*"))


# --------------------------------------------------------------------------------------------
# BlockCache and CachedSource


def wrapped(
    tmp: Path,
    data: bytes,
    *,
    max_bytes: int = 0,
    max_blocks_per_read: int = 4,
    delay: float = 0.0,
) -> tuple[BlockCache, CachedSource, CountingSource]:
    cache = BlockCache(tmp / "blocks", max_bytes=max_bytes)
    src = CountingSource(data, delay=delay)
    return cache, cache.wrap(src, block_size=BS, max_blocks_per_read=max_blocks_per_read), src


def block_files(cache: BlockCache) -> list[Path]:
    return sorted(Path(cache.directory).glob("??/" + "?" * 64))


def test_block_cache_protocol_and_wrap_arguments(tmp_path: Path) -> None:
    cache = BlockCache(tmp_path)
    assert isinstance(cache, BlockCacheProtocol)
    assert cache.max_bytes() == 256 << 20
    cs = cache.wrap(BytesSource(b"abc", source_id="id"))
    assert isinstance(cs, ByteSource)
    assert (cs.size, cs.source_id, cs.block_size) == (3, "id", DEFAULT_BLOCK_SIZE)
    with pytest.raises(ValueError, match="block_size"):
        cache.wrap(BytesSource(b"abc", source_id="id"), block_size=0)
    with pytest.raises(ValueError, match="source_id"):
        cache.wrap(BytesSource(b"abc", source_id=""))


def test_block_key_and_file_are_gos_key_with_a_checksummed_payload(tmp_path: Path) -> None:
    data = blob(3 * BS)
    cache, cs, _ = wrapped(tmp_path, data)
    cs.read_at(BS + 5, 10)
    key = hashlib.sha256(b"test-blob" + struct.pack(">QQ", BS, 1)).digest()
    assert cs.block_key(1) == key
    path = Path(cache.directory) / key.hex()[:2] / key.hex()
    raw = path.read_bytes()
    assert raw[HDR:] == data[BS : 2 * BS]
    assert raw[:8] == b"blobfsB\x01"
    assert struct.unpack(">II", raw[8:16]) == (zlib.crc32(data[BS : 2 * BS], zlib.crc32(key)), BS)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 9 * BS),
    ranges=st.lists(st.tuples(st.integers(0, 9 * BS), st.integers(0, 6 * BS)), max_size=6),
    max_blocks=st.sampled_from([0, 1, 4]),
)
def test_reads_return_exactly_the_requested_bytes(
    tmp_path: Path, size: int, ranges: list[tuple[int, int]], max_blocks: int
) -> None:
    # One cache directory for all examples: every read meets a different mix of hits and misses.
    data = blob(size, size)
    cache = BlockCache(tmp_path / "shared", max_bytes=0)
    cs = cache.wrap(
        BytesSource(data, source_id=f"prop-{size}"), block_size=BS, max_blocks_per_read=max_blocks
    )
    for off, n in ranges:
        off = min(off, size)
        n = min(n, size - off)
        assert cs.read_at(off, n) == data[off : off + n]
    with pytest.raises(SourceError, match="outside the source"):
        cs.read_at(size, 1)
    with pytest.raises(SourceError, match="outside the source"):
        cs.read_at(-1, 1)


def test_adjacent_misses_are_coalesced_into_one_source_read(tmp_path: Path) -> None:
    data = blob(10 * BS)
    _, cs, src = wrapped(tmp_path, data)
    assert cs.read_at(BS + 7, 2 * BS) == data[BS + 7 : 3 * BS + 7]  # blocks 1, 2, 3
    assert src.calls == [(BS, 3 * BS)]
    # Block 5 cached; blocks 4 and 6 missing on both sides of it: two reads, not one.
    cs.read_at(5 * BS, 1)
    src.calls.clear()
    assert cs.read_at(4 * BS, 3 * BS) == data[4 * BS : 7 * BS]
    assert src.calls == [(4 * BS, BS), (6 * BS, BS)]
    s = cs.stats
    assert (s.source_requests, s.source_bytes) == (4, 6 * BS)
    assert (s.hits, s.misses) == (1, 6)


def test_second_read_is_served_from_the_cache(tmp_path: Path) -> None:
    data = blob(8 * BS)
    cache, cs, src = wrapped(tmp_path, data)
    assert cs.read_at(0, 4 * BS) == data[: 4 * BS]
    src.calls.clear()
    for off, n in [(0, 4 * BS), (10, 100), (3 * BS - 1, 2)]:
        assert cs.read_at(off, n) == data[off : off + n]
    assert src.calls == []
    # From disk too: a fresh cache object (no memory layer) on the same directory.
    cs2 = BlockCache(cache.directory).wrap(src, block_size=BS)
    assert cs2.read_at(0, 4 * BS) == data[: 4 * BS]
    assert src.calls == []
    assert cs2.stats.hits == 4


def test_large_reads_bypass_the_cache(tmp_path: Path) -> None:
    data = blob(20 * BS)
    cache, cs, src = wrapped(tmp_path, data)
    assert cs.read_at(10, 5 * BS) == data[10 : 10 + 5 * BS]  # spans 6 blocks > 4
    assert src.calls == [(10, 5 * BS)]
    assert cs.stats.bypassed == 1
    assert block_files(cache) == []
    # max_blocks_per_read=0 disables the bypass.
    cs0 = cache.wrap(src, block_size=BS, max_blocks_per_read=0)
    src.calls.clear()
    assert cs0.read_at(10, 5 * BS) == data[10 : 10 + 5 * BS]
    assert src.calls == [(0, 6 * BS)]
    assert len(block_files(cache)) == 6


def test_short_last_block(tmp_path: Path) -> None:
    data = blob(3 * BS + 100)
    cache, cs, src = wrapped(tmp_path, data)
    assert cs.read_at(3 * BS + 50, 50) == data[-50:]
    assert src.calls == [(3 * BS, 100)]
    (f,) = block_files(cache)
    assert f.stat().st_size == HDR + 100
    assert BlockCache(cache.directory).wrap(src, block_size=BS).read_at(3 * BS, 100) == data[-100:]
    assert len(src.calls) == 1


@pytest.mark.parametrize("damage", ["flip", "truncate", "go-format"])
def test_corrupt_block_is_dropped_and_refetched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    data = blob(4 * BS)
    cache, cs, src = wrapped(tmp_path, data)
    cs.read_at(0, 4 * BS)
    path = Path(cache.directory) / cs.block_key(2).hex()[:2] / cs.block_key(2).hex()
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[HDR + 500] ^= 0x40
    elif damage == "truncate":
        del raw[-1]
    else:
        raw = bytearray(raw[HDR:])  # bare bytes, as Go's block cache stores them
    path.write_bytes(bytes(raw))
    src.calls.clear()
    fresh = BlockCache(cache.directory).wrap(src, block_size=BS)  # bypass the memory layer
    with caplog.at_level(logging.WARNING, logger="blobfs.core.cache"):
        assert fresh.read_at(0, 4 * BS) == data
    assert "dropping corrupt block" in caplog.text
    assert src.calls == [(2 * BS, BS)]
    assert fresh.stats.corrupt == 1
    assert path.read_bytes()[HDR:] == data[2 * BS : 3 * BS]  # stored again, intact


def test_eviction_keeps_blocks_under_max_bytes_lru(tmp_path: Path) -> None:
    data = blob(16 * BS)
    per_block = HDR + BS
    cache, cs, src = wrapped(tmp_path, data, max_bytes=10 * per_block)
    for i in range(10):
        cs.read_at(i * BS, 1)
        backdate(block_files_for(cache, cs, i), 100 - i)  # block 0 oldest
    # Use block 0 again through a fresh object, so the disk copy is touched (LRU, not FIFO).
    BlockCache(cache.directory, max_bytes=10 * per_block).wrap(src, block_size=BS).read_at(0, 1)
    cs.read_at(10 * BS, 1)  # over the limit: prune to 10 - 1 - 1 (headroom) = 8 blocks
    assert cache.size_bytes() <= 10 * per_block
    remaining = {p.name for p in block_files(cache)}
    assert cs.block_key(0).hex() in remaining
    assert cs.block_key(1).hex() not in remaining
    assert cs.block_key(10).hex() in remaining
    for i in range(16):
        cs.read_at(i * BS, BS)
        assert cache.size_bytes() <= 10 * per_block
    assert len(block_files(cache)) * per_block == cache.size_bytes()


def block_files_for(cache: BlockCache, cs: CachedSource, i: int) -> Path:
    h = cs.block_key(i).hex()
    return Path(cache.directory) / h[:2] / h


def test_prune_and_invalidate(tmp_path: Path) -> None:
    data = blob(6 * BS)
    cache, cs, src = wrapped(tmp_path, data)
    cs.read_at(0, 4 * BS)
    cs.read_at(4 * BS, 2 * BS)
    assert cache.size_bytes() == 6 * (HDR + BS)
    assert cs.invalidate(BS + 1, BS) == 2  # blocks 1 and 2
    src.calls.clear()
    assert cs.read_at(0, 3 * BS) == data[: 3 * BS]
    assert src.calls == [(BS, 2 * BS)]
    assert cache.prune(0) == 6 * (HDR + BS)
    assert cache.size_bytes() == 0
    src.calls.clear()
    assert cs.read_at(0, BS) == data[:BS]
    assert src.calls == [(0, BS)]


def test_concurrent_readers_of_one_block_share_one_fetch(tmp_path: Path) -> None:
    data = blob(4 * BS)
    _, cs, src = wrapped(tmp_path, data, delay=0.3)
    barrier = threading.Barrier(10)
    results: list[bytes] = []

    def reader(i: int) -> None:
        barrier.wait()
        results.append(cs.read_at(BS + i, 100))

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert src.calls == [(BS, BS)]
    assert sorted(results) == sorted(data[BS + i : BS + i + 100] for i in range(10))
    s = cs.stats
    assert s.source_requests == 1
    assert s.joined + s.hits == 9  # everyone else waited for that fetch (or came after it)


def test_many_threads_random_reads_with_eviction(tmp_path: Path) -> None:
    data = blob(40 * BS)
    cache, cs, _ = wrapped(tmp_path, data, max_bytes=8 * (HDR + BS))
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(300):
                off = rnd.randrange(len(data))
                n = min(rnd.randrange(1, 3 * BS), len(data) - off)
                assert cs.read_at(off, n) == data[off : off + n]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.size_bytes() <= 8 * (HDR + BS)
    assert cache.size_bytes() == len(block_files(cache)) * (HDR + BS)


def test_source_errors_propagate_to_every_waiter_and_nothing_is_cached(tmp_path: Path) -> None:
    data = blob(4 * BS)
    cache, cs, src = wrapped(tmp_path, data, delay=0.2)
    err = SourceError("registry answered 503")
    src.fail = err
    barrier = threading.Barrier(5)
    caught: list[BaseException] = []

    def reader() -> None:
        barrier.wait()
        try:
            cs.read_at(0, 10)
        except BaseException as e:
            caught.append(e)

    threads = [threading.Thread(target=reader) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(caught) == 5
    assert all(e is err for e in caught)  # unchanged, the source's own exception
    assert len(src.calls) == 1
    assert block_files(cache) == []
    src.fail = None
    src.delay = 0
    assert cs.read_at(0, 10) == data[:10]  # recovered: fetched, not a cached failure
    assert len(src.calls) == 2


def test_short_answer_from_a_source_is_a_source_error(tmp_path: Path) -> None:
    class Short(BytesSource):
        def read_at(self, offset: int, length: int) -> bytes:
            return super().read_at(offset, length)[:-1]

    cache = BlockCache(tmp_path)
    cs = cache.wrap(Short(blob(4 * BS), source_id="short"), block_size=BS)
    with pytest.raises(SourceError, match="returned"):
        cs.read_at(0, 10)
    assert block_files(cache) == []


def test_cache_write_and_read_failures_never_fail_a_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = blob(4 * BS)
    cache, cs, src = wrapped(tmp_path, data)
    shard = Path(cache.directory) / cs.block_key(0).hex()[:2]
    shard.write_bytes(b"a file where the shard directory should be")
    with caplog.at_level(logging.WARNING, logger="blobfs.core.cache"):
        assert cs.read_at(0, 10) == data[:10]
    assert "cannot" in caplog.text
    # An unreadable block (a directory in its place) is a miss; storing over it fails quietly.
    d = block_files_for(cache, cs, 1)
    d.parent.mkdir(exist_ok=True)
    d.mkdir()
    fresh = BlockCache(cache.directory).wrap(src, block_size=BS)
    assert fresh.read_at(BS, 10) == data[BS : BS + 10]
    assert fresh.read_at(BS, 10) == data[BS : BS + 10]


def test_memory_layer_is_bounded(tmp_path: Path) -> None:
    bs = 64 << 10
    n = HOT_BYTES // bs + 8
    data = blob(n * bs)
    cache = BlockCache(tmp_path)
    src = CountingSource(data)
    cs = cache.wrap(src, block_size=bs)
    for i in range(n):
        cs.read_at(i * bs, 1)
    hot = cache._store._hot
    assert sum(v.nbytes for v in hot.values()) <= HOT_BYTES
    assert cs.block_key(0) not in hot
    assert cs.block_key(n - 1) in hot
    src.calls.clear()
    cs.read_at(0, 1)  # left the memory layer, still on disk
    assert src.calls == []
    assert cs.stats.hits == 1


@pytest.mark.trio
async def test_aread_at_under_trio(tmp_path: Path) -> None:
    data = blob(8 * BS)
    _, cs, src = wrapped(tmp_path, data, delay=0.1)
    results: dict[int, bytes] = {}

    async def one(i: int) -> None:
        results[i] = await cs.aread_at(i * 100, 3 * BS)

    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(one, i)
    assert results == {i: data[i * 100 : i * 100 + 3 * BS] for i in range(6)}
    assert len(src.calls) <= 4  # concurrent tasks shared fetches: far fewer than 6 x 4 blocks


def test_aread_at_under_asyncio(tmp_path: Path) -> None:
    data = blob(8 * BS)
    _, cs, _src = wrapped(tmp_path, data)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(cs.aread_at(i * BS, BS + 1) for i in range(7)))

    assert asyncio.run(main()) == [data[i * BS : (i + 1) * BS + 1] for i in range(7)]
    assert cs.stats.hits + cs.stats.misses >= 8


_PROCESS_BLOCKS = textwrap.dedent(
    """
    import hashlib, random, sys
    from blobfs.core import BytesSource
    from blobfs.core.cache.disk import BlockCache
    directory, seed = sys.argv[1], int(sys.argv[2])
    data = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(64 * 1024 // 32 * 4))
    import os, time
    open(os.path.join(sys.argv[3], f"ready-{seed}"), "w").close()
    while len(os.listdir(sys.argv[3])) < 2:  # start together: the point is to race
        time.sleep(0.001)
    with BlockCache(directory, max_bytes=0) as cache:
        cs = cache.wrap(BytesSource(data, source_id="shared-blob"), block_size=4096)
        rnd = random.Random(seed)
        for _ in range(400):
            off = rnd.randrange(len(data))
            n = min(rnd.randrange(1, 3 * 4096), len(data) - off)
            assert cs.read_at(off, n) == data[off : off + n], "wrong bytes"
    """
)


def test_block_cache_shared_by_two_processes(tmp_path: Path) -> None:
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_BLOCKS, str(tmp_path / "b"), str(seed), str(sync)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for seed in (1, 2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    data = b"".join(sha(str(i).encode()) for i in range(64 * 1024 // 32 * 4))
    cache = BlockCache(tmp_path / "b", max_bytes=0)
    src = CountingSource(data, source_id="shared-blob")
    cs = cache.wrap(src, block_size=4096, max_blocks_per_read=0)
    files = block_files(cache)
    assert cache.size_bytes() == sum(f.stat().st_size for f in files)
    stored = len(files)
    assert cs.read_at(0, len(data)) == data
    assert cs.stats.hits == stored  # every block either process stored is intact
    assert cs.stats.corrupt == 0
