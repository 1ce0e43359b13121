"""Whole-file cache entries (``blobfs/core/_whole.py``): a chunked file read front to back is
stored as one content-cache entry keyed by its SHA-256 instead of one entry per chunk; readers
verify each chunk they take from it; a reader stopping early, seeking away or failing loses
nothing (what was written is stored as chunk entries)."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from blobfs.core import Archive, BytesSource, Compression, Index
from blobfs.core._content import ContentCache
from blobfs.core.cache.disk import DiskCache
from tests.test_archive_cache import Built, build, incompressible

MiB = 1 << 20
CHUNKS = 12


@pytest.fixture(scope="module", params=[Compression.ZSTD, Compression.NONE])
def big(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Built:
    """Chunks decoded into their own buffers (zstd) or views of a group's buffer (raw)."""
    return build(
        tmp_path_factory.mktemp("whole"),
        {"big.bin": incompressible(CHUNKS * MiB + 12345, 7), "small.txt": b"tiny\n"},
        chunk_size=MiB,
        compression=request.param,
    )


class Counting(BytesSource):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.fetched = 0
        self.ranges: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        self.fetched += length
        self.ranges.append((offset, length))
        return super().read_at(offset, length)


def entries(disk: DiskCache) -> dict[str, int]:
    """``{hex digest: size}`` of every entry in the cache directory."""
    out = {}
    for shard in Path(disk.directory).iterdir():
        if shard.is_dir() and len(shard.name) == 2:
            for f in shard.iterdir():
                if len(f.name) == 64:
                    out[f.name] = f.stat().st_size
    return out


def read(
    big: Built,
    disk: DiskCache,
    pieces: int | None = None,
    step: int = MiB,
    *,
    catch_up: bool = False,
) -> bytes:
    """Read big.bin from the start in ``step`` pieces (all, or ``pieces`` of them) through an
    archive writing the cache behind, as the mount does; the archive is closed after. With
    ``catch_up``, the writer catches up to the last piece after each one (a disk as fast as
    the reader, whatever the machine's load)."""
    src = Counting(big.data)
    archive = Archive(big.index, src, cache=disk)
    archive.write_cache_behind()
    content = archive._cache
    assert content is not None
    out = []
    with archive, archive.open("big.bin") as f:
        for _ in itertools.count() if pieces is None else range(pieces):
            piece = f.read(step)
            if not piece:
                break
            out.append(piece)
            if catch_up:
                _until_written_but(content, 1)
    return b"".join(out)


def _until_written_but(content: ContentCache, left: int) -> None:
    """Wait until the write-behind queue of ``content`` holds at most ``left`` operations."""
    with content._cond:
        while len(content._queue) > left and content._writing:
            content._cond.wait(1)


def test_a_file_read_front_to_back_is_one_entry_served_warm_without_fetching(
    tmp_path: Path, big: Built
) -> None:
    content = big.contents["big.bin"]
    entry = Index(big.index).entry("big.bin")
    with DiskCache(tmp_path / "c") as disk:
        assert read(big, disk) == content
        assert entries(disk) == {entry.hash.hex(): len(content)}  # one entry, no chunk entries
        with open(disk.path(entry.hash), "rb") as f:
            assert hashlib.sha256(f.read()).digest() == entry.hash
        # Warm: every chunk comes from the whole-file entry, verified; nothing is fetched.
        src = Counting(big.data)
        with Archive(big.index, src, cache=disk) as archive, archive.open("big.bin") as f:
            f.seek(5 * MiB + 7)  # random access is served from it too
            assert f.read(3 * MiB) == content[5 * MiB + 7 : 8 * MiB + 7]
            f.seek(0)
            assert f.read() == content
        assert src.fetched == 0


def test_a_file_of_many_readahead_groups_streams_into_one_entry(tmp_path: Path) -> None:
    """A file longer than the readahead window: every group's buffer waits in the write queue
    while the writer appends it, the next one arrives meanwhile, and the queue's bound must hold
    both (with 16 MiB it did not: the stream broke and 40 per-chunk entries were left, which
    warm reads then read a third slower). The reader lets the writer catch up to its last piece
    after each one, so a disk slower than memory (a busy CI machine) cannot break the stream:
    its lag stays under a group, which is what the bound is for."""
    from blobfs.core._prefetch import GROUP_BYTES, READAHEAD_BYTES

    size = READAHEAD_BYTES + 2 * GROUP_BYTES + 12345
    built = build(
        tmp_path / "src",
        {"big.bin": incompressible(size, 11)},
        chunk_size=MiB,
        compression=Compression.NONE,
    )
    entry = Index(built.index).entry("big.bin")
    with DiskCache(tmp_path / "c") as disk:
        assert read(built, disk, catch_up=True) == built.contents["big.bin"]
        assert entries(disk) == {entry.hash.hex(): size}


def _long_file(tmp_path: Path, compression: Compression) -> tuple[Built, int]:
    """A file of more readahead groups than a window holds, in 1 MiB chunks."""
    from blobfs.core._prefetch import GROUP_BYTES, READAHEAD_BYTES

    size = READAHEAD_BYTES + 2 * GROUP_BYTES + 12345
    built = build(
        tmp_path / "src",
        {"big.bin": incompressible(size, 13)},
        chunk_size=MiB,
        compression=compression,
    )
    return built, size


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
def test_a_disk_slower_than_the_reader_slows_the_readahead_and_caches_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: Compression
) -> None:
    """The cache's disk appends a MiB in 15 ms (70 MB/s) while the reader reads from memory
    as fast as it can: the readahead groups ahead of the reader wait for room in the write
    queue (set aside before they load), so the whole file still streams into one entry and
    nothing is dropped; without that the stream broke and chunks went uncached. The room set
    aside is all given back at the end."""
    from blobfs.core.cache.disk import EntryWriter

    built, size = _long_file(tmp_path, compression)
    entry = Index(built.index).entry("big.bin")
    write = EntryWriter.write

    def slow_write(self: EntryWriter, data: bytes | memoryview) -> bool:
        time.sleep(0.015 * len(data) / MiB)
        return write(self, data)

    monkeypatch.setattr(EntryWriter, "write", slow_write)
    with DiskCache(tmp_path / "c") as disk:
        archive = Archive(built.index, Counting(built.data), cache=disk)
        archive.write_cache_behind()
        content = archive._cache
        assert content is not None
        with archive, archive.open("big.bin") as f:
            assert f.read() == built.contents["big.bin"]
        assert content.dropped == 0
        assert content._pending_bytes == 0  # every credit and pin given back
        assert entries(disk) == {entry.hash.hex(): size}


def test_a_stuck_cache_disk_costs_the_readahead_one_wait_and_no_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache's disk stops answering: a group ahead of the reader waits for room once, for
    the writer's patience, then loading goes on without the cache (content that does not fit
    the queue is dropped), so the read completes with the right bytes, in about one wait."""
    import blobfs.core._prefetch as prefetch
    from blobfs.core.cache.disk import EntryWriter

    built, _ = _long_file(tmp_path, Compression.NONE)
    unstuck = threading.Event()
    write = EntryWriter.write

    def stuck_write(self: EntryWriter, data: bytes | memoryview) -> bool:
        unstuck.wait(30)
        return write(self, data)

    monkeypatch.setattr(EntryWriter, "write", stuck_write)
    monkeypatch.setattr(prefetch, "STORE_PATIENCE", 0.3)
    with DiskCache(tmp_path / "c") as disk:
        archive = Archive(built.index, Counting(built.data), cache=disk)
        archive.write_cache_behind()
        content = archive._cache
        assert content is not None
        try:
            t0 = time.monotonic()
            with archive.open("big.bin") as f:
                assert f.read() == built.contents["big.bin"]
            took = time.monotonic() - t0
            assert content.dropped > 0
        finally:
            unstuck.set()
            archive.close()
        assert took < 5  # the waits end (0.3 s of patience each): no hang
        assert content._pending_bytes == 0


def test_readers_seeking_and_stopping_over_a_slow_disk_give_all_room_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four threads read the same long file through one archive writing behind to a slow
    disk, each reading runs from random places, seeking away and stopping early (windows
    dropped with groups still loading, credits released before or after their loaders set room
    aside): every byte is right, and once the archive is closed no room is left set aside."""
    import random

    from blobfs.core.cache.disk import EntryWriter

    built, size = _long_file(tmp_path, Compression.NONE)
    content = built.contents["big.bin"]
    write = EntryWriter.write

    def slow_write(self: EntryWriter, data: bytes | memoryview) -> bool:
        time.sleep(0.004 * len(data) / MiB)
        return write(self, data)

    monkeypatch.setattr(EntryWriter, "write", slow_write)
    errors: list[BaseException] = []
    with DiskCache(tmp_path / "c") as disk:
        archive = Archive(built.index, Counting(built.data), cache=disk)
        archive.write_cache_behind()
        cache = archive._cache
        assert cache is not None

        def reader(seed: int) -> None:
            rng = random.Random(seed)
            try:
                with archive.open("big.bin") as f:
                    for _ in range(6):
                        at = rng.choice([0, rng.randrange(size)])
                        f.seek(at)
                        for _ in range(rng.randrange(1, 20)):
                            piece = f.read(rng.choice([4096, MiB, 3 * MiB + 17]))
                            assert piece == content[at : at + len(piece)]
                            at += len(piece)
                            if not piece:
                                break
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        archive.close()
        assert not errors
        assert cache._pending_bytes == 0


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_whole_file_entry_is_dropped_and_its_bytes_never_served(
    tmp_path: Path, big: Built, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    content = big.contents["big.bin"]
    entry = Index(big.index).entry("big.bin")
    with DiskCache(tmp_path / "c") as disk:
        read(big, disk)
        path = disk.path(entry.hash)
        raw = bytearray(Path(path).read_bytes())
        if damage == "flip":
            raw[3 * MiB + 100] ^= 1  # inside chunk 3
        else:
            del raw[-1]
        Path(path).write_bytes(raw)
        src = Counting(big.data)
        with (
            caplog.at_level(logging.WARNING, logger="blobfs"),
            Archive(big.index, src, cache=disk) as archive,
            archive.open("big.bin") as f,
        ):
            assert f.read() == content
        assert "is corrupt" in caplog.text
        assert src.fetched > 0  # what the entry could not give was fetched and verified
        assert not os.path.exists(path) or Path(path).read_bytes() == content


@pytest.mark.parametrize("how", ["stop early", "seek away"])
def test_a_reader_leaving_early_loses_nothing(tmp_path: Path, big: Built, how: str) -> None:
    content = big.contents["big.bin"]
    entry = Index(big.index).entry("big.bin")
    with DiskCache(tmp_path / "c") as disk:
        src = Counting(big.data)
        archive = Archive(big.index, src, cache=disk)
        archive.write_cache_behind()
        with archive, archive.open("big.bin") as f:
            assert f.read(MiB) == content[:MiB]
            assert f.read(MiB) == content[MiB : 2 * MiB]
            assert f.read(MiB) == content[2 * MiB : 3 * MiB]
            if how == "seek away":
                f.seek(9 * MiB)
                assert f.read(MiB) == content[9 * MiB : 10 * MiB]
        stored = entries(disk)
        assert entry.hash.hex() not in stored  # no whole-file entry of a partial read
        for k in range(3):  # the chunks the reader took are stored one by one
            assert entry.chunk_hash(k).hex() in stored
        # ... and serve the next reader without fetching them (readahead fetches what follows).
        src2 = Counting(big.data)
        with Archive(big.index, src2, cache=disk) as archive2, archive2.open("big.bin") as f:
            assert f.read(3 * MiB) == content[: 3 * MiB]
        chunk3, _ = entry.chunk_payload(3)
        assert all(offset >= chunk3 for offset, _ in src2.ranges)


def test_a_file_over_half_a_bounded_cache_is_stored_chunk_by_chunk(
    tmp_path: Path, big: Built
) -> None:
    content = big.contents["big.bin"]
    entry = Index(big.index).entry("big.bin")
    with DiskCache(tmp_path / "c", max_bytes=len(content) + MiB) as disk:
        assert read(big, disk) == content
        stored = entries(disk)
        assert entry.hash.hex() not in stored
        assert entry.chunk_hash(0).hex() in stored
        assert entry.chunk_hash(CHUNKS).hex() in stored  # the short last chunk too


def test_without_write_behind_or_a_piecewise_cache_nothing_changes(big: Built) -> None:
    """A user's cache without ``open_writer`` keeps chunk entries (and reads work)."""
    from tests.test_archive_cache import DictCache

    cache = DictCache()
    content = big.contents["big.bin"]
    archive = Archive(big.index, BytesSource(big.data), cache=cache)
    archive.write_cache_behind()
    with archive, archive.open("big.bin") as f:
        assert f.read() == content
    entry = Index(big.index).entry("big.bin")
    assert entry.hash not in cache.data
    assert entry.chunk_hash(0) in cache.data
    assert ContentCache(cache).stream_whole(entry) is None


def test_a_whole_file_entry_stored_meanwhile_is_not_written_again(
    tmp_path: Path, big: Built
) -> None:
    """Another mount (or reader) stores the whole file between this stream's start and its
    first chunk: the stream writes nothing, and no chunk entries either."""
    content = big.contents["big.bin"]
    entry = Index(big.index).entry("big.bin")
    with DiskCache(tmp_path / "c") as disk:
        cache = ContentCache(disk)
        cache.write_behind()
        stream = cache.stream_whole(entry)
        assert stream is not None
        disk.put_bytes(entry.hash, content)
        for k in range(entry.num_chunks):
            lo, hi = entry.chunk_bounds(k)
            stream.feed(k, content[lo:hi])
        cache.stop_write_behind()
        assert entries(disk) == {entry.hash.hex(): len(content)}
