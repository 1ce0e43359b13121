"""Reading ahead across files (``blobfs/core/_scan.py``) and the content cache's write-behind.

A program opening files in archive order gets the next files loaded in batches, with few range
requests, every file verified; a bad file fails only its own read; memory stays bounded. The
write-behind queue answers lookups before the disk has the content, and stores everything on
close.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest
import trio

from blobfs.core import Archive, BytesSource, Index
from blobfs.core._content import ContentCache
from blobfs.core._scan import AHEAD_BYTES, BATCH_BYTES, FIRST_BATCH_BYTES, STREAMS
from blobfs.errors import IntegrityError
from tests.test_archive_cache import (
    Built,
    CountingSource,
    DictCache,
    FaultySource,
    build,
    compressible,
    incompressible,
)

KiB = 1 << 10


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """600 files of 1-40 KiB in six directories (about 12 MiB), a chunked file in between."""
    files = {
        f"d{i // 100}/f{i:04d}": (incompressible if i % 3 else compressible)(
            KiB + (i * 7919) % (40 * KiB), i
        )
        for i in range(600)
    }
    files["d2/zz-chunked.bin"] = incompressible(300_000, 7)  # chunked: read on its own
    files["d3/empty"] = b""
    return build(tmp_path_factory.mktemp("scan"), files)


def paths(built: Built) -> list[str]:
    """Every file in index (archive) order."""
    return [e.path for e in Index(built.index)]


def read_in_order(archive: Archive, names: list[str], built: Built) -> None:
    """Open, note and read each file, as the mount does for ``find | xargs cat``."""
    index = archive.index
    for name in names:
        pos = index.position(name.encode())
        assert pos is not None
        archive.note_open(pos)
        with archive.open(name) as f:
            assert f.read() == built.contents[name], name


def test_reading_in_order_loads_ahead_in_batches(tree: Built) -> None:
    archive, src = tree.archive(DictCache())
    with archive:
        read_in_order(archive, paths(tree), tree)
    data_size = sum(e.data_size for e in Index(tree.index))
    assert src.bytes_read == data_size  # every byte once: no file fetched twice
    # One request per batch (up to 8 MiB) plus a few single files and the chunked file.
    assert len(src.reads) <= data_size // BATCH_BYTES + 12, src.reads


def test_one_file_alone_fetches_itself_only(tree: Built) -> None:
    archive, src = tree.archive(DictCache())
    with archive:
        names = paths(tree)
        read_in_order(archive, [names[10]], tree)
        read_in_order(archive, [names[10]], tree)  # again: the content cache
        read_in_order(archive, [names[300]], tree)  # far away: another file alone
    index = Index(tree.index)
    assert src.bytes_read == index.entry(names[10]).data_size + index.entry(names[300]).data_size


def test_without_a_content_cache_too(tree: Built) -> None:
    archive, src = tree.archive()
    with archive:
        read_in_order(archive, paths(tree)[:200], tree)
    assert len(src.reads) <= 8


def test_skipping_files_keeps_the_stream(tree: Built) -> None:
    """``find -name`` style: every third file is read; the stream goes on."""
    archive, src = tree.archive(DictCache())
    with archive:
        read_in_order(archive, paths(tree)[::3], tree)
    assert len(src.reads) <= 10


def test_a_bad_file_fails_only_its_own_read(tree: Built) -> None:
    index = Index(tree.index)
    names = paths(tree)
    bad = index.entry(names[150])
    src = FaultySource(BytesSource(tree.data), (bad.data_offset + 5, bad.data_offset + 6))
    src.corrupt = True
    with Archive(tree.index, src, cache=DictCache()) as archive:
        read_in_order(archive, names[:150], tree)
        archive.note_open(150)
        with (
            archive.open(names[150]) as f,
            pytest.raises(IntegrityError, match=re.escape(bad.path)),
        ):
            f.read()
        read_in_order(archive, names[151:], tree)


def test_a_failing_batch_leaves_reading_to_the_files(tree: Built) -> None:
    index = Index(tree.index)
    names = paths(tree)
    first = index.entry(names[0]).data_offset
    end = index.entry(names[99]).data_offset
    src = FaultySource(BytesSource(tree.data), (first, end))  # SourceError for these bytes
    with Archive(tree.index, src, cache=DictCache()) as archive:
        for name in names[:99]:
            archive.note_open(index.position(name.encode()) or 0)
            with archive.open(name) as f, pytest.raises(Exception, match="injected failure"):
                f.read()
        read_in_order(archive, names[99:], tree)


def test_memory_is_bounded_when_files_are_opened_but_not_read(tree: Built) -> None:
    archive, src = tree.archive(DictCache())
    scan = archive._scan
    with archive:
        for pos in range(len(archive.index)):
            archive.note_open(pos)
            batches = {id(b): b for b in scan._by_hash.values()}.values()
            held = sum(len(v) for b in batches for v in b.results.values())
            assert held <= STREAMS * (AHEAD_BYTES + BATCH_BYTES)
        # Opened, never read: nothing kept in memory, and loading ahead pauses (a batch was
        # passed without a read: the kernel's page cache answers, or nobody reads).
        assert len(scan._by_hash) < len(archive.index) // 2
        assert scan._streams[-1].paused_until > 0
    assert src.bytes_read <= sum(e.data_size for e in Index(tree.index))


def test_stray_reads_among_cached_files_load_little(tree: Built) -> None:
    """The mount notes a file at its first read, and the kernel's page cache answers most
    files of a tree read again: only a few reads come, some of them close enough together to
    look like a scan. Each such pair may load one small batch, never the megabytes a real
    scan keeps ahead (it did: a quarter of the daemon's time in a hot ``find | xargs cat``)."""
    archive, src = tree.archive(DictCache())
    names = paths(tree)
    picked = [names[i] for i in (100, 104, 300, 306, 500, 505)]
    with archive:
        for name in picked:
            read_in_order(archive, [name], tree)
    own = sum(archive.index.entry(n).data_size for n in picked)
    assert src.bytes_read <= 3 * FIRST_BATCH_BYTES + own


def test_a_scan_ramps_up_once_its_files_are_taken(tree: Built) -> None:
    """The other side: a program reading in order takes files from the first batch, and the
    stream then keeps the full amount ahead in big batches (few requests)."""
    archive, src = tree.archive(DictCache())
    scan = archive._scan
    names = paths(tree)[:120]
    with archive:
        read_in_order(archive, names[:4], tree)
        stream = scan._streams[-1]
        assert stream.proven
        assert sum(b.size for b in stream.batches) > FIRST_BATCH_BYTES
        read_in_order(archive, names[4:], tree)
    assert len(src.reads) <= 6


def test_parallel_streams_of_different_directories(tree: Built) -> None:
    archive, src = tree.archive(DictCache())
    names = paths(tree)
    a, b = names[:100], names[300:400]
    with archive:
        for x, y in zip(a, b, strict=True):
            read_in_order(archive, [x, y], tree)
    assert len(src.reads) <= 12


@pytest.mark.trio
async def test_async_readers_wait_for_the_batch(tree: Built) -> None:
    archive, src = tree.archive(DictCache())
    names = paths(tree)[:200]
    with archive:
        for name in names:
            archive.note_open(archive.index.position(name.encode()) or 0)
            async with await archive.aopen(name) as f:
                assert await f.read() == tree.contents[name]
    assert len(src.reads) <= 8


def test_close_drops_what_is_loading(tree: Built) -> None:
    archive, _ = tree.archive(DictCache())
    archive.note_open(0)
    archive.note_open(1)
    archive.close()
    assert archive._scan._by_hash == {}
    read_in_order(archive, paths(tree)[:3], tree)  # reads go on, without reading ahead


# ------------------------------------------------------------------------------ write-behind


class SlowCache(DictCache):
    """A content cache whose puts wait for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def put(self, digest: bytes, f: BinaryIO) -> None:
        assert self.gate.wait(10)
        super().put(digest, f)


def test_write_behind_answers_before_the_disk_has_it() -> None:
    import hashlib

    inner = SlowCache()
    cache = ContentCache(inner)
    cache.write_behind(max_pending=100 * KiB)
    items = [bytes([i]) * (30 * KiB) for i in range(3)]
    for data in items:
        cache.put_bytes(hashlib.sha256(data).digest(), data)  # returns at once: queued
    assert inner.data == {}
    for data in items:  # pending content is found (and is what was put)
        d = hashlib.sha256(data).digest()
        assert cache.get_bytes(d, len(data), "x") == data
        assert cache.has(d)
        out = io.BytesIO()
        assert cache.copy_verified(d, len(data), "x", out.write)
        assert out.getvalue() == data
    # A full queue does not make put_bytes wait: what does not fit is not cached.
    more = b"m" * (30 * KiB)
    cache.put_bytes(hashlib.sha256(more).digest(), more)
    assert cache.dropped == 1
    assert cache.get_bytes(hashlib.sha256(more).digest(), len(more), "x") is None
    inner.gate.set()
    cache.stop_write_behind()
    assert len(inner.data) == 3
    cache.put_bytes(hashlib.sha256(b"late").digest(), b"late")  # after: stored right away
    assert len(inner.data) == 4


def test_write_behind_counts_the_buffers_views_keep_alive() -> None:
    """Views are queued without copies, each buffer counted once, whole (what the queue keeps
    alive), however many views of it wait."""
    import hashlib

    inner = SlowCache()
    cache = ContentCache(inner)
    cache.write_behind(max_pending=100 * KiB)
    group = memoryview(bytes(range(256)) * 360)  # ~90 KiB, like a readahead group's buffer
    pieces = [group[i * 30 * KiB : (i + 1) * 30 * KiB] for i in range(3)]
    cache.put_bytes(hashlib.sha256(pieces[0]).digest(), pieces[0])  # 30 KiB: counts 90
    other = b"o" * (20 * KiB)  # 90 + 20 KiB exceed the bound: not queued
    cache.put_bytes(hashlib.sha256(other).digest(), other)
    assert cache.dropped == 1
    for piece in pieces[1:]:  # more views of the same buffer cost nothing more
        cache.put_bytes(hashlib.sha256(piece).digest(), piece)
    assert cache.dropped == 1
    inner.gate.set()
    cache.flush()
    for piece in pieces:
        assert inner.data[hashlib.sha256(piece).digest()] == bytes(piece)
    cache.put_bytes(hashlib.sha256(other).digest(), other)  # the queue is empty again
    cache.stop_write_behind()
    assert cache.dropped == 1
    assert inner.data[hashlib.sha256(other).digest()] == other


class PacedCache(DictCache):
    """A content cache whose every put takes ``delay`` seconds (a disk slower than reads)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def put(self, digest: bytes, f: BinaryIO) -> None:
        time.sleep(self.delay)
        super().put(digest, f)


def test_loaders_ahead_wait_for_a_slow_disk_instead_of_dropping() -> None:
    """``wait``: a queue over half its bound makes the put wait while the writer makes progress
    (memory stays bounded, nothing is left out), where a put without it drops."""
    inner = PacedCache(0.02)
    cache = ContentCache(inner)
    cache.write_behind(max_pending=64 * KiB)
    items = [bytes([i]) * (30 * KiB) for i in range(12)]  # 360 KiB through a 64 KiB queue
    highest = 0
    for data in items:
        cache.put_bytes(hashlib.sha256(data).digest(), data, wait=1.0)
        highest = max(highest, cache._pending_bytes)
    assert cache.dropped == 0
    assert highest <= 32 * KiB  # waiting puts keep the queue at half its bound
    cache.flush()
    assert len(inner.data) == len(items)
    burst = [bytes([100 + i]) * (30 * KiB) for i in range(12)]
    for data in burst:  # the reader's own puts never wait
        cache.put_bytes(hashlib.sha256(data).digest(), data)
    assert cache.dropped > 0
    cache.stop_write_behind()


def test_a_stuck_writer_makes_waiting_puts_drop_once_patience_ran_out() -> None:
    inner = SlowCache()  # stuck until the gate opens
    cache = ContentCache(inner)
    cache.write_behind(max_pending=64 * KiB)
    first, second, third = (bytes([i]) * (40 * KiB) for i in range(3))
    cache.put_bytes(hashlib.sha256(first).digest(), first, wait=0.2)  # queued
    t0 = time.monotonic()
    cache.put_bytes(hashlib.sha256(second).digest(), second, wait=0.2)
    waited = time.monotonic() - t0
    assert 0.15 <= waited < 5
    assert cache.dropped == 1
    t0 = time.monotonic()  # still stuck: the next put does not wait again
    cache.put_bytes(hashlib.sha256(third).digest(), third, wait=0.2)
    assert time.monotonic() - t0 < 0.1
    assert cache.dropped == 2
    inner.gate.set()
    cache.stop_write_behind()
    assert list(inner.data) == [hashlib.sha256(first).digest()]


def test_archive_close_stores_what_is_queued(tmp_path: Path, tree: Built) -> None:
    from blobfs.core.cache.disk import DiskCache

    with DiskCache(tmp_path / "c") as disk:
        archive = Archive(tree.index, BytesSource(tree.data), cache=disk)
        archive.write_cache_behind()
        names = paths(tree)[:50]
        read_in_order(archive, names, tree)
        archive.close()
        index = Index(tree.index)
        for name in names:
            f = disk.get(index.entry(name).hash)
            assert f is not None, name
            with f:
                assert f.read() == tree.contents[name]


@pytest.mark.trio
async def test_mount_style_reads_with_write_behind(tree: Built) -> None:
    """The mount's combination: write-behind, ``note_open``, reads from worker threads."""
    cache = DictCache()
    src = CountingSource(BytesSource(tree.data))
    with Archive(tree.index, src, cache=cache) as archive:
        archive.write_cache_behind()
        for name in paths(tree):
            archive.note_open(archive.index.position(name.encode()) or 0)
            f = archive.open(name)
            data = f.read_ready(-1)
            if data is None:
                data = await trio.to_thread.run_sync(f.read, -1)
            f.close()
            assert data == tree.contents[name]
    assert len(cache.data) >= 600


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_get_many_reads_entries_into_one_buffer_and_verifies_each(
    tmp_path: Path, damage: str
) -> None:
    """Entries found on disk (together at least a MiB) come back as read-only views of one
    buffer, each verified on its own: a damaged entry is None and deleted, its neighbours are
    served."""
    import hashlib

    from blobfs.core.cache.disk import DiskCache

    items = [os.urandom(512 * KiB) for _ in range(3)]
    digests = [hashlib.sha256(x).digest() for x in items]
    with DiskCache(tmp_path / "c") as disk:
        for d, x in zip(digests, items, strict=True):
            disk.put_bytes(d, x)
        good = items[1]
        bad = {
            "flip": good[:9] + bytes([good[9] ^ 1]) + good[10:],
            "truncate": good[:-1],
            "extend": good + b"x",
        }[damage]
        Path(disk.path(digests[1])).write_bytes(bad)
        cache = ContentCache(disk)
        seen: list[int] = []
        got = cache.get_many(
            [
                (d, len(x), f"f{i}", "content")
                for i, (d, x) in enumerate(zip(digests, items, strict=True))
            ],
            lambda i, _: seen.append(i),
        )
        assert seen == [0, 1, 2]
        assert got[1] is None
        assert not Path(disk.path(digests[1])).exists()  # deleted: the next read refetches
        for i in (0, 2):
            view = got[i]
            assert isinstance(view, memoryview)
            assert view.readonly
            assert bytes(view) == items[i]
        assert isinstance(got[0], memoryview)
        assert isinstance(got[2], memoryview)
        assert got[0].obj is got[2].obj  # one buffer
