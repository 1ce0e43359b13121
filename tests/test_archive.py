"""The verified read path: sources, decoding, Archive, file objects, verify, async twins.

Archives are built here from hand-written payloads and ``encode_index`` (not from ``create``), so
every payload shape the format allows can be tested, including hostile ones.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import trio
import trio.testing
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from blobfs.core import (
    DEFAULT_MAX_FILE_SIZE,
    Archive,
    ArchiveFile,
    BlobFile,
    BytesSource,
    Compression,
    DirInfo,
    Entry,
    FileSource,
    Index,
    VerifyProgress,
    decode_chunks,
    encode_index,
    open_file,
    plan,
)
from blobfs.core._aio import run_sync_in_thread
from blobfs.core._decode import MAX_FETCH, PayloadDecoder
from blobfs.core._file import SPOOL_MEMORY
from blobfs.core._prefetch import GROUP_BYTES
from blobfs.errors import (
    CorruptIndex,
    FileTooLarge,
    HashMismatch,
    IntegrityError,
    IsADirectory,
    NotADirectory,
    NotFound,
    SourceError,
)

CS = 64 << 10  # the smallest chunk size the format allows: many chunks from little data

Kind = Literal["raw", "zstd", "zstd-multi", "chunked-raw", "chunked-zstd"]
KINDS: tuple[Kind, ...] = ("raw", "zstd", "zstd-multi", "chunked-raw", "chunked-zstd")


def sha(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def content_of(n: int, seed: int) -> bytes:
    """Compressible but position-dependent content (a misplaced byte changes the hash)."""
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", bytes(rng.randrange(256) for _ in range(7))]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + str(len(out)).encode()
    return bytes(out[:n])


def zstd_no_size(*parts: bytes) -> bytes:
    """One zstd frame per part, without the content-size header (as Go writes them)."""
    out = b""
    for part in parts:
        cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
        out += cobj.compress(part) + cobj.flush()
    return out


@dataclass
class Spec:
    path: str
    content: bytes
    kind: Kind = "raw"
    chunk_size: int = CS
    payload: bytes | None = None  # override: a hostile or broken payload
    mode: int = 0o644


def payload_of(spec: Spec) -> tuple[bytes, dict[str, object]]:
    """The payload of ``spec`` and the Entry fields describing it."""
    c = spec.content
    if spec.kind == "raw":
        return c, {"compression": Compression.NONE}
    if spec.kind == "zstd":
        return zstandard.ZstdCompressor().compress(c), {"compression": Compression.ZSTD}
    if spec.kind == "zstd-multi":
        half = len(c) // 2
        return zstd_no_size(c[:half], c[half:]), {"compression": Compression.ZSTD}
    cs = spec.chunk_size
    chunks = [c[i : i + cs] for i in range(0, len(c), cs)]
    fields: dict[str, object] = {
        "chunk_size": cs,
        "chunk_hashes": b"".join(sha(ch) for ch in chunks),
    }
    if spec.kind == "chunked-raw":
        return c, {**fields, "compression": Compression.NONE}
    frames = [zstandard.ZstdCompressor().compress(ch) for ch in chunks]
    offsets, pos = [], 0
    for f in frames:
        offsets.append(pos)
        pos += len(f)
    return b"".join(frames), {
        **fields,
        "compression": Compression.ZSTD,
        "frame_offsets": tuple(offsets),
    }


@dataclass
class Built:
    index: bytes
    data: bytes
    entries: dict[str, Entry]
    contents: dict[str, bytes]

    def archive(self, *, max_file_size: int = DEFAULT_MAX_FILE_SIZE) -> Archive:
        return Archive(self.index, BytesSource(self.data), max_file_size=max_file_size)


def build(specs: Iterable[Spec], *, data_size: int | None = None) -> Built:
    entries: dict[str, Entry] = {}
    contents: dict[str, bytes] = {}
    data = bytearray()
    for spec in sorted(specs, key=lambda s: s.path.encode()):
        payload, fields = payload_of(spec)
        if spec.payload is not None:
            payload = spec.payload
        e = Entry(
            path=spec.path,
            data_offset=len(data),
            data_size=len(payload),
            original_size=len(spec.content),
            hash=sha(spec.content),
            mode=spec.mode,
            uid=1000,
            gid=100,
            mtime_ns=1_700_000_000_123_456_789,
            **fields,  # type: ignore[arg-type]
        )
        data += payload
        entries[spec.path] = e
        contents[spec.path] = spec.content
    blob = bytes(data)
    index = encode_index(
        entries.values(),
        data_size=len(blob) if data_size is None else data_size,
        data_hash=sha(blob),
    )
    return Built(index, blob, entries, contents)


def standard_specs() -> list[Spec]:
    return [
        Spec("raw.txt", content_of(5000, 1), "raw"),
        Spec("dir/zstd.txt", content_of(70_000, 2), "zstd"),
        Spec("dir/multi.txt", content_of(50_001, 3), "zstd-multi"),
        Spec("dir/sub/craw.bin", content_of(5 * CS + 123, 4), "chunked-raw"),
        Spec("czstd.bin", content_of(6 * CS + 1, 5), "chunked-zstd"),
        Spec("empty-raw", b"", "raw"),
        Spec("empty-zstd", b"", "zstd", payload=b""),
    ]


@functools.cache
def _standard_built() -> Built:
    return build(standard_specs())


@pytest.fixture
def built() -> Built:
    """The standard archive (built once; tests copy ``data`` before corrupting it)."""
    return _standard_built()


class CountingSource:
    """A ByteSource wrapper that records every read."""

    def __init__(self, inner: BytesSource) -> None:
        self.inner = inner
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def source_id(self) -> str:
        return self.inner.source_id

    def read_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.inner.read_at(offset, length)

    async def aread_at(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return await self.inner.aread_at(offset, length)

    def close(self) -> None:
        self.inner.close()


def read_in_pieces(f: ArchiveFile, sizes: Iterable[int]) -> bytes:
    out = bytearray()
    for n in sizes:
        piece = f.read(n)
        if not piece:
            break
        out += piece
    return bytes(out)


# ---------------------------------------------------------------------------------- sources


def test_bytes_source_reads_and_range_errors() -> None:
    src = BytesSource(b"0123456789")
    assert src.size == 10
    assert src.read_at(2, 3) == b"234"
    assert src.read_at(10, 0) == b""
    assert src.source_id == "sha256:" + hashlib.sha256(b"0123456789").hexdigest()
    assert BytesSource(b"x", source_id="custom").source_id == "custom"
    with pytest.raises(SourceError, match=r"4 bytes at offset 8 .*\(10 bytes\)"):
        src.read_at(8, 4)
    with pytest.raises(SourceError):
        src.read_at(-1, 1)


def test_file_source(tmp_path: Path) -> None:
    p = tmp_path / "data.blob"
    p.write_bytes(b"abcdefgh")
    with FileSource(p) as src:
        st = p.stat()
        assert src.size == 8
        assert src.source_id == f"file:{p}:8:{st.st_mtime_ns}"
        assert src.read_at(3, 4) == b"defg"
        assert src.read_at(0, 0) == b""
        with pytest.raises(SourceError, match=r"2 bytes at offset 7 .*\(8 bytes\)"):
            src.read_at(7, 2)
    assert src.closed
    with pytest.raises(SourceError, match="closed"):
        src.read_at(0, 1)
    with FileSource(p, data_hash=bytes(32)) as src:
        assert src.source_id == "sha256:" + "00" * 32


def test_file_source_errors_become_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=re.escape("missing.blob")):
        FileSource(tmp_path / "missing.blob")
    # A directory opens read-only on Linux, but reading it fails with EISDIR.
    with FileSource(tmp_path) as src, pytest.raises(SourceError, match=re.escape(str(tmp_path))):
        src.read_at(0, 1)
    p = tmp_path / "shrinks.blob"
    p.write_bytes(b"x" * 100)
    with FileSource(p) as src:
        p.write_bytes(b"x" * 10)  # truncated after open
        with pytest.raises(SourceError, match="unexpected end of file"):
            src.read_at(0, 100)


def test_short_read_from_a_source_is_a_source_error(built: Built) -> None:
    class Short(BytesSource):
        def read_at(self, offset: int, length: int) -> bytes:
            return super().read_at(offset, length)[:-1]

    a = Archive(built.index, Short(built.data))
    with pytest.raises(SourceError, match="returned"):
        a.read_file("raw.txt")


# ---------------------------------------------------------------------------------- decoding


def test_plan_covers_only_the_chunks_touched(built: Built) -> None:
    e = built.entries["czstd.bin"]
    p = plan(e, CS - 1, 2)  # the last byte of chunk 0 and the first of chunk 1
    assert (p.first_chunk, p.end_chunk, p.whole) == (0, 2, False)
    assert (p.content_start, p.content_end) == (0, 2 * CS)
    assert p.offset == e.data_offset
    assert p.length == e.frame_offsets[2]
    last = plan(e, e.original_size - 1, 100)
    assert (last.first_chunk, last.end_chunk) == (6, 7)
    assert last.offset + last.length == e.data_offset + e.data_size
    assert plan(e, e.original_size, 10).empty
    v1 = plan(built.entries["dir/zstd.txt"], 100, 1)
    assert v1.whole
    assert (v1.offset, v1.length) == (
        built.entries["dir/zstd.txt"].data_offset,
        built.entries["dir/zstd.txt"].data_size,
    )


@pytest.mark.parametrize("name", ["czstd.bin", "dir/sub/craw.bin"])
def test_decode_chunks_of_a_coalesced_range(built: Built, name: str) -> None:
    e = built.entries[name]
    p = plan(e, 2 * CS + 5, 2 * CS)
    chunks = decode_chunks(e, p.first_chunk, built.data[p.offset : p.offset + p.length])
    assert b"".join(chunks) == built.contents[name][p.content_start : p.content_end]
    assert len(chunks) == 3


def test_decode_chunks_names_the_bad_chunk(built: Built) -> None:
    e = built.entries["dir/sub/craw.bin"]
    p = plan(e, 0, 3 * CS)
    payload = bytearray(built.data[p.offset : p.offset + p.length])
    payload[CS + 7] ^= 1
    with pytest.raises(HashMismatch, match="chunk 1 hash mismatch") as info:
        decode_chunks(e, 0, bytes(payload))
    assert info.value.path == "dir/sub/craw.bin"
    assert info.value.expected == e.chunk_hash(1).hex()


def test_payload_decoder_streams_and_holds_nothing_back() -> None:
    content = content_of(300_000, 9)
    payload = zstd_no_size(content[:1000], content[1000:200_000], content[200_000:])
    out: list[bytes] = []
    dec = PayloadDecoder("f", Compression.ZSTD, len(content), sha(content), sink=out.append)
    for i in range(0, len(payload), 777):
        dec.feed(payload[i : i + 777])
    dec.finish()
    assert b"".join(out) == content


# ---------------------------------------------------------------------------------- reading


SPECS = standard_specs()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.path)
def test_read_file_every_payload_kind(built: Built, spec: Spec) -> None:
    assert built.archive().read_file(spec.path) == spec.content


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.path)
def test_open_read_in_odd_pieces(built: Built, spec: Spec) -> None:
    with built.archive().open(spec.path) as f:
        assert f.readable()
        assert f.seekable()
        assert not f.writable()
        assert f.name == spec.path
        got = read_in_pieces(f, [1, 7, 4093, 65537, 3, 100_000] * 10)
        assert got == spec.content
        assert f.read(10) == b""
        assert f.tell() == len(spec.content)
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        f.read(1)


@pytest.mark.parametrize("name", ["czstd.bin", "dir/sub/craw.bin", "dir/multi.txt"])
def test_random_access_at_chunk_boundaries(built: Built, name: str) -> None:
    content = built.contents[name]
    with built.archive().open(name) as f:
        for k in range(len(content) // CS + 1):
            for start in (k * CS - 1, k * CS, k * CS + 1):
                for n in (1, 2, CS, CS + 2, 3 * CS):
                    if start < 0:
                        continue
                    assert f.seek(start) == start
                    assert f.read(n) == content[start : start + n], (start, n)
        assert f.seek(-10, io.SEEK_END) == len(content) - 10
        assert f.read() == content[-10:]
        f.seek(5)
        assert f.seek(3, io.SEEK_CUR) == 8
        assert f.read(4) == content[8:12]
        f.seek(len(content) + 100)
        assert f.read(5) == b""
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)
        buf = bytearray(10)
        at = min(CS - 3, len(content) - 10)
        f.seek(at)
        assert f.readinto(buf) == 10
        assert bytes(buf) == content[at : at + 10]
        f.seek(0)
        assert f.readall() == content


def test_buffered_reader_over_archive_file(built: Built) -> None:
    with io.BufferedReader(built.archive().open("czstd.bin")) as f:
        assert f.read(CS + 5) == built.contents["czstd.bin"][: CS + 5]


def test_one_chunk_of_a_large_file_reads_one_chunk() -> None:
    size = 64 << 20
    rng = random.Random(64)
    content = rng.randbytes(size)
    b = build([Spec("big.bin", content, "chunked-raw", chunk_size=1 << 20), Spec("x", b"x")])
    src = CountingSource(BytesSource(b.data))
    archive = Archive(b.index, src)
    e = archive.entry("big.bin")
    with archive.open("big.bin") as f:
        f.seek(37 * (1 << 20) + 1000)
        assert f.read(100) == content[37 * (1 << 20) + 1000 :][:100]
        assert src.reads == [e.chunk_payload(37)]
        # Sequential small reads inside the same chunk are served from the kept chunk.
        for _ in range(50):
            f.read(4096)
        assert len(src.reads) == 1
    assert sum(n for _, n in src.reads) == 1 << 20
    # A whole-file read through the file object is coalesced into bounded windows.
    src.reads.clear()
    with archive.open("big.bin") as f:
        assert f.read() == content
    assert all(n <= GROUP_BYTES for _, n in src.reads)
    assert sum(n for _, n in src.reads) == size


def test_large_v1_file_streams_in_bounded_pieces() -> None:
    content = content_of(1000, 21) * (9 * 1024 + 7)  # over MAX_FETCH and over SPOOL_MEMORY
    assert len(content) > max(MAX_FETCH, SPOOL_MEMORY)
    b = build([Spec("big.txt", content, "zstd"), Spec("small", b"s")])
    src = CountingSource(BytesSource(b.data))
    archive = Archive(b.index, src)
    assert archive.verify().ok
    assert src.reads
    assert all(n <= MAX_FETCH for _, n in src.reads)
    src.reads.clear()
    with archive.open("big.txt") as f:
        f.seek(len(content) - 5000)
        assert f.read(5000) == content[-5000:]
        f.seek(3)
        assert f.read(10) == content[3:13]
    assert sum(n for _, n in src.reads) == b.entries["big.txt"].data_size
    with pytest.raises(FileTooLarge):
        archive.read_file("big.txt", max_file_size=1 << 20)
    assert archive.read_file("big.txt", max_file_size=0) == content


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["czstd.bin", "dir/sub/craw.bin", "dir/multi.txt", "raw.txt"]),
    ops=st.lists(st.tuples(st.integers(0, 7 * CS), st.integers(0, 3 * CS)), max_size=8),
)
def test_random_reads_match_the_content(name: str, ops: list[tuple[int, int]]) -> None:
    b = _standard_built()
    content = b.contents[name]
    with b.archive().open(name) as f:
        for pos, n in ops:
            f.seek(pos)
            assert f.read(n) == content[pos : pos + n]
            assert f.tell() == max(pos, min(pos + n, len(content)))


def test_v1_file_is_fetched_once_and_served_from_the_spool(built: Built) -> None:
    src = CountingSource(BytesSource(built.data))
    archive = Archive(built.index, src)
    content = built.contents["dir/zstd.txt"]
    with archive.open("dir/zstd.txt") as f:
        f.seek(60_000)
        assert f.read(100) == content[60_000:60_100]
        f.seek(10)
        assert f.read(5) == content[10:15]
    assert len(src.reads) == 1


def test_metadata_delegates_to_the_index(built: Built) -> None:
    a = built.archive()
    assert len(a) == len(built.entries)
    assert isinstance(a.stat("dir"), DirInfo)
    st = a.stat("raw.txt")
    assert isinstance(st, Entry)
    assert (st.size, st.mode, st.uid, st.gid) == (5000, 0o644, 1000, 100)
    assert [d.name for d in a.listdir("")] == [
        "czstd.bin",
        "dir",
        "empty-raw",
        "empty-zstd",
        "raw.txt",
    ]
    assert [e.path for e in a.walk("dir")] == ["dir/multi.txt", "dir/sub/craw.bin", "dir/zstd.txt"]
    assert a.exists("dir/sub")
    assert a.is_dir("dir/sub")
    assert not a.is_dir("raw.txt")
    assert a.is_file("raw.txt")
    assert a.lookup("nope") is None
    assert not a.exists("nope")
    assert isinstance(a.index, Index)


def test_directory_and_missing_paths(built: Built) -> None:
    a = built.archive()
    with pytest.raises(IsADirectory):
        a.read_file("dir")
    with pytest.raises(IsADirectory):
        a.open("dir/sub")
    with pytest.raises(NotFound):
        a.read_file("dir/nope")
    with pytest.raises(NotFound):
        a.open("nope")
    with pytest.raises(NotADirectory):
        a.listdir("raw.txt")
    with pytest.raises(NotFound):
        a.stat("nope")


def test_max_file_size(built: Built) -> None:
    a = built.archive(max_file_size=6000)
    assert a.read_file("raw.txt") == built.contents["raw.txt"]
    with pytest.raises(FileTooLarge, match=re.escape("dir/zstd.txt")) as info:
        a.read_file("dir/zstd.txt")
    assert (info.value.size, info.value.limit) == (70_000, 6000)
    assert a.read_file("dir/zstd.txt", max_file_size=0) == built.contents["dir/zstd.txt"]
    with pytest.raises(FileTooLarge):
        built.archive().read_file("raw.txt", max_file_size=100)
    # Streaming has no limit.
    with a.open("dir/zstd.txt") as f:
        assert f.read() == built.contents["dir/zstd.txt"]
    with pytest.raises(ValueError, match="max_file_size"):
        built.archive(max_file_size=-1)


# ---------------------------------------------------------------------------------- integrity


def write_archive(tmp_path: Path, b: Built, data: bytes | None = None) -> tuple[Path, Path]:
    ip, dp = tmp_path / "index.blob", tmp_path / "data.blob"
    ip.write_bytes(b.index)
    dp.write_bytes(b.data if data is None else data)
    return ip, dp


def test_corrupted_byte_fails_only_that_file(tmp_path: Path, built: Built) -> None:
    e = built.entries["raw.txt"]
    data = bytearray(built.data)
    data[e.data_offset + 1234] ^= 0x40
    ip, dp = write_archive(tmp_path, built, bytes(data))
    with open_file(ip, dp) as a:
        assert isinstance(a, BlobFile)
        with pytest.raises(HashMismatch, match=re.escape("raw.txt")) as info:
            a.read_file("raw.txt")
        assert info.value.expected == e.hash.hex()
        assert info.value.actual == hashlib.sha256(data[e.data_offset :][:5000]).hexdigest()
        with a.open("raw.txt") as f, pytest.raises(HashMismatch):
            f.read(1)
        for path, content in built.contents.items():
            if path != "raw.txt":
                assert a.read_file(path) == content
        report = a.verify()
    assert not report.ok
    assert [path for path, _ in report.failures] == ["raw.txt"]
    assert "hash mismatch" in report.failures[0][1]
    assert report.data_error is not None
    assert "data_hash" in report.data_error
    assert report.files == len(built.entries)


def test_corrupted_chunk_fails_only_reads_touching_it(built: Built) -> None:
    name = "czstd.bin"
    e = built.entries[name]
    off, n = e.chunk_payload(3)
    data = bytearray(built.data)
    data[off + n // 2] ^= 0xFF
    a = Archive(built.index, BytesSource(bytes(data)))
    content = built.contents[name]
    with a.open(name) as f:
        assert f.read(3 * CS) == content[: 3 * CS]
        with pytest.raises(IntegrityError, match=name):
            f.read(10)
        assert f.tell() == 3 * CS  # position unchanged by the failed read
        f.seek(4 * CS)
        assert f.read(CS) == content[4 * CS : 5 * CS]
    report = a.verify()
    assert [p for p, _ in report.failures] == [name]


def test_raw_chunk_mismatch_is_a_hash_mismatch_naming_the_chunk(built: Built) -> None:
    name = "dir/sub/craw.bin"
    e = built.entries[name]
    data = bytearray(built.data)
    data[e.data_offset + 2 * CS] ^= 1
    a = Archive(built.index, BytesSource(bytes(data)))
    with a.open(name) as f:
        f.seek(2 * CS + 100)
        with pytest.raises(HashMismatch, match="chunk 2") as info:
            f.read(1)
    assert info.value.expected == e.chunk_hash(2).hex()


def test_chunk_table_disagreeing_with_the_file_hash_is_reported() -> None:
    content = content_of(3 * CS, 7)
    b = build([Spec("f", content, "chunked-zstd")])
    e = b.entries["f"]
    lying = e._replace(hash=sha(b"something else"))
    index = encode_index([lying], data_size=len(b.data), data_hash=sha(b.data))
    a = Archive(index, BytesSource(b.data))
    with a.open("f") as f:
        assert f.read() == content  # the chunks themselves are fine
    report = a.verify()
    assert [p for p, _ in report.failures] == ["f"]
    assert report.data_error is None
    with pytest.raises(HashMismatch):
        a.read_file("f")


def test_decompression_bomb_is_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    b = build([Spec("bomb", b"\0" * 1000, "zstd", payload=bomb)])
    a = b.archive()
    with pytest.raises(IntegrityError, match="exceeds original_size"):
        a.read_file("bomb")
    with a.open("bomb") as f, pytest.raises(IntegrityError, match="exceeds original_size"):
        f.read(1)
    assert [p for p, _ in a.verify().failures] == ["bomb"]


def test_chunk_bomb_is_refused() -> None:
    content = content_of(2 * CS, 11)
    b = build([Spec("c", content, "chunked-zstd")])
    e = b.entries["c"]
    bomb = zstd_no_size(b"\0" * (8 << 20))
    data = b.data[: e.frame_offsets[1]] + bomb
    lying = e._replace(data_size=len(data))
    index = encode_index([lying], data_size=len(data), data_hash=sha(data))
    a = Archive(index, BytesSource(data))
    with a.open("c") as f:
        f.seek(CS)
        with pytest.raises(IntegrityError, match="exceeds the length of chunk 1"):
            f.read(1)


def test_truncated_zstd_payload() -> None:
    content = content_of(100_000, 12)
    full = zstandard.ZstdCompressor().compress(content)
    b = build([Spec("t", content, "zstd", payload=full[:-20]), Spec("u", b"after")])
    a = b.archive()
    with pytest.raises(IntegrityError, match="truncated"):
        a.read_file("t")
    assert a.read_file("u") == b"after"
    b2 = build([Spec("g", content, "zstd", payload=b"not zstd at all")])
    with pytest.raises(IntegrityError, match="corrupt zstd payload"):
        b2.archive().read_file("g")


def test_payload_outside_the_source(built: Built) -> None:
    short = built.data[: built.entries["raw.txt"].data_offset + 10]
    a = Archive(built.index, BytesSource(short))
    with pytest.raises(IntegrityError, match="outside the data blob") as info:
        a.read_file("raw.txt")
    assert info.value.path == "raw.txt"
    with a.open("raw.txt") as f, pytest.raises(IntegrityError, match="outside the data blob"):
        f.read(1)
    report = a.verify()
    assert report.data_error is not None
    assert "data_size" in report.data_error
    assert "raw.txt" in [p for p, _ in report.failures]


def test_verify_ok_with_progress(built: Built) -> None:
    seen: list[VerifyProgress] = []
    report = built.archive().verify(progress=seen.append)
    assert report.ok
    assert report.files == len(built.entries)
    assert report.content_bytes == sum(len(c) for c in built.contents.values())
    assert seen[0].phase == "data"
    assert seen[-1] == VerifyProgress("files", len(built.entries), len(built.entries))


def test_empty_archive() -> None:
    b = build([])
    a = b.archive()
    assert a.listdir() == []
    assert a.verify().ok


# ---------------------------------------------------------------------------------- open_file


def test_open_file(tmp_path: Path, built: Built) -> None:
    ip, dp = write_archive(tmp_path, built)
    with open_file(ip, dp, max_file_size=10) as a:
        assert a.data_path == str(dp)
        assert a.source.source_id == "sha256:" + sha(built.data).hex()
        with pytest.raises(FileTooLarge):
            a.read_file("raw.txt")
        assert a.verify().ok
    with pytest.raises(SourceError, match="closed"):
        a.read_file("raw.txt", max_file_size=0)
    with pytest.raises(SourceError, match=re.escape("nope.blob")):
        open_file(tmp_path / "nope.blob", dp)
    with pytest.raises(SourceError, match=re.escape("nope.blob")):
        open_file(ip, tmp_path / "nope.blob")
    (tmp_path / "bad.blob").write_bytes(b"\x01" * 40)
    with pytest.raises(CorruptIndex):
        open_file(tmp_path / "bad.blob", dp)


# ---------------------------------------------------------------------------------- async


async def async_checks(b: Built) -> None:
    a = b.archive()
    for path, content in b.contents.items():
        assert await a.aread_file(path) == content
    name = "czstd.bin"
    content = b.contents[name]
    async with await a.aopen(name) as f:
        assert await f.seek(CS - 2) == CS - 2
        assert await f.read(5) == content[CS - 2 : CS + 3]
        assert f.tell() == CS + 3
        assert await f.seek(-3, io.SEEK_END) == len(content) - 3
        assert await f.read() == content[-3:]
        assert await f.read(1) == b""
    assert f.closed
    with pytest.raises(ValueError, match="closed"):
        await f.read(1)
    async with await a.aopen("dir/multi.txt") as f:
        await f.seek(25_000)
        assert await f.read(10) == b.contents["dir/multi.txt"][25_000:25_010]
    with pytest.raises(IsADirectory):
        await a.aopen("dir")
    with pytest.raises(FileTooLarge):
        await a.aread_file("czstd.bin", max_file_size=10)
    seen: list[VerifyProgress] = []
    report = await a.averify(progress=seen.append)
    assert report.ok
    assert seen
    data = bytearray(b.data)
    data[b.entries["dir/zstd.txt"].data_offset + 20] ^= 0xFF
    bad = Archive(b.index, BytesSource(bytes(data)))
    with pytest.raises(IntegrityError, match=re.escape("dir/zstd.txt")):
        await bad.aread_file("dir/zstd.txt")
    report = await bad.averify()
    assert [p for p, _ in report.failures] == ["dir/zstd.txt"]


@pytest.mark.trio
async def test_async_twins_under_trio(built: Built) -> None:
    await async_checks(built)


def test_async_twins_under_asyncio(built: Built) -> None:
    asyncio.run(async_checks(built))


@pytest.mark.trio
async def test_async_reads_inside_the_kept_chunk_fetch_once(built: Built) -> None:
    src = CountingSource(BytesSource(built.data))
    a = Archive(built.index, src)
    content = built.contents["czstd.bin"]
    async with await a.aopen("czstd.bin") as f:
        await f.seek(CS + 10)
        for i in range(20):
            assert await f.read(100) == content[CS + 10 + 100 * i :][:100]
    assert len(src.reads) == 1
    src.reads.clear()
    async with await a.aopen("raw.txt") as f:
        for i in range(20):
            assert await f.read(100) == built.contents["raw.txt"][100 * i : 100 * (i + 1)]
    assert len(src.reads) == 1


@pytest.mark.trio
async def test_async_file_source_under_trio(tmp_path: Path, built: Built) -> None:
    ip, dp = write_archive(tmp_path, built)
    with open_file(ip, dp) as a:
        assert await a.aread_file("dir/multi.txt") == built.contents["dir/multi.txt"]
        assert (await a.averify()).ok


@pytest.mark.trio
async def test_async_file_is_single_user(built: Built) -> None:
    gate = trio.Event()

    class Slow(BytesSource):
        async def aread_at(self, offset: int, length: int) -> bytes:
            await gate.wait()
            return self.read_at(offset, length)

    a = Archive(built.index, Slow(built.data))
    f = await a.aopen("raw.txt")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(f.read, 10)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RuntimeError, match="another task"):
            await f.read(1)
        gate.set()
    assert f.tell() == 10
    await f.aclose()


@pytest.mark.trio
async def test_cancelled_async_read_leaves_the_file_usable(built: Built) -> None:
    gate = trio.Event()

    class Stalling(BytesSource):
        async def aread_at(self, offset: int, length: int) -> bytes:
            if not gate.is_set():
                await trio.sleep_forever()
            return self.read_at(offset, length)

    a = Archive(built.index, Stalling(built.data))
    async with await a.aopen("dir/zstd.txt") as f:
        with trio.move_on_after(0.05):
            await f.read(10)
        assert f.tell() == 0
        gate.set()
        assert await f.read(10) == built.contents["dir/zstd.txt"][:10]


def test_run_sync_in_thread_waits_for_the_thread_on_asyncio_cancel() -> None:
    import threading

    release = threading.Event()
    finished: list[bool] = []

    def blocking() -> None:
        release.wait(5)
        finished.append(True)

    async def main() -> None:
        task = asyncio.ensure_future(run_sync_in_thread(blocking))
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.sleep(0.02)
        assert not task.done()  # still waiting for the thread, not abandoned
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished == [True]

    asyncio.run(main())


def test_thread_helper_runs_under_trio() -> None:
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> int:
        return await run_sync_in_thread(add, 2, 3)

    assert trio.run(main) == 5
