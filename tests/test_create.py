"""Archive creation (``create`` / ``create_blob``): layout, compression choices, chunk tables,
skipped entries, limits, change detection, atomic output, bounded memory, round trips.

Archives are read back two ways: by hand (``Index`` + zstandard, independent of the reader) and
through ``create_blob``'s :class:`BlobFile` (``read_file``, ``verify``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import stat
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobfs.core import (
    ChangeDetection,
    Compression,
    CreateProgress,
    CreateResult,
    Entry,
    Index,
    SkippedPath,
    _create_engine,
    create,
    create_blob,
    default_skip_compression,
)
from blobfs.errors import CreateError, FileChanged, TooManyFiles

KiB = 1 << 10
MiB = 1 << 20
CHUNK = 64 * KiB


# ------------------------------------------------------------------------------------ helpers


def text(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of compressible text."""
    line = b"".join(b"line %d of seed %d: the quick brown fox\n" % (i, seed) for i in range(64))
    return (line * (n // len(line) + 1))[:n]


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


class Sink:
    """A writer that is not seekable (forces the spool path) and records what it got."""

    def __init__(self, max_write: int = 0) -> None:
        self.parts: list[bytes] = []
        self.max_write = max_write

    def write(self, data: bytes) -> int:
        n = len(data) if not self.max_write else min(len(data), self.max_write)
        self.parts.append(bytes(data[:n]))
        return n

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class NullWriter:
    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def build(src: Path, **options: object) -> tuple[bytes, bytes, CreateResult]:
    ix, dx = io.BytesIO(), io.BytesIO()
    result = create(src, ix, dx, **options)  # type: ignore[arg-type]
    return ix.getvalue(), dx.getvalue(), result


def payload(e: Entry, data: bytes) -> bytes:
    return data[e.data_offset : e.data_offset + e.data_size]


def decode(e: Entry, data: bytes) -> bytes:
    raw = payload(e, data)
    if e.compression == Compression.ZSTD:
        # Across frames: a chunked payload is several frames; decompress() stops after one.
        obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        raw = obj.decompress(raw)
    assert len(raw) == e.original_size
    return raw


def read_back(index: bytes, data: bytes) -> dict[str, bytes]:
    """Every file of an archive, checked by hand: layout, hashes, chunk tables."""
    idx = Index(index)
    assert idx.data_size == len(data)
    assert idx.data_hash == hashlib.sha256(data).digest()
    out: dict[str, bytes] = {}
    offset = 0
    for e in idx:
        assert e.data_offset == offset, "payloads are back to back, in index order"
        offset += e.data_size
        content = decode(e, data)
        assert hashlib.sha256(content).digest() == e.hash
        if e.chunked:
            for k in range(e.num_chunks):
                lo, hi = e.chunk_bounds(k)
                assert hashlib.sha256(content[lo:hi]).digest() == e.chunk_hash(k)
        out[e.path] = content
    assert offset == len(data)
    return out


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_tree(
        tmp_path / "src",
        {
            "hello.txt": b"hello world\n",
            "docs/readme.md": text(5000),
            "docs/deep/er/notes.txt": text(3000, 1),
            "bin/random.bin": os.urandom(20 * KiB),
            "big/text.log": text(CHUNK * 5 // 2, 2),
            "empty": b"",
        },
    )


@pytest.fixture
def after_open(monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[str], None]]:
    """Register ``{path: action}`` run right after that file is opened, before it is read."""
    actions: dict[str, Callable[[str], None]] = {}

    def hook(path: str, fd: int) -> None:
        if path in actions:
            actions[path](path)

    monkeypatch.setattr(_create_engine, "_test_after_open", hook)
    return actions


# --------------------------------------------------------------------------- layout, order


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.ZSTD])
def test_round_trip(src: Path, compression: Compression) -> None:
    index, data, result = build(src, compression=compression, chunk_size=CHUNK)
    files = read_back(index, data)
    expected = {
        p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()
    }
    assert files == expected
    assert result.file_count == len(expected)
    assert result.data_size == len(data)
    assert result.data_hash == hashlib.sha256(data).digest()
    assert result.index_size == len(index)
    assert result.skipped == ()


def test_metadata_from_the_opened_file(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"x" * 10, "b": b"y"})
    os.chmod(src / "a", 0o4751)  # setuid is dropped, permission bits kept
    os.utime(src / "a", ns=(1, -1_500_000_000))  # before the epoch
    index, _, _ = build(src)
    e = Index(index).entry("a")
    st_a = os.stat(src / "a")
    assert e.mode == 0o751
    assert (e.uid, e.gid) == (st_a.st_uid, st_a.st_gid)
    assert e.mtime_ns == -1_500_000_000
    assert e.original_size == 10


def test_bytewise_order_of_full_paths(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a/x": b"1", "a/y": b"2", "a-b": b"3", "a.txt": b"4"})
    index, data, _ = build(src)
    idx = Index(index)
    assert list(idx.paths()) == ["a-b", "a.txt", "a/x", "a/y"]
    assert idx.sorted_on_wire
    assert [payload(e, data) for e in idx] == [b"3", b"4", b"1", b"2"]


def test_deterministic(src: Path) -> None:
    for compression in Compression:
        first = build(src, compression=compression, chunk_size=CHUNK)
        second = build(src, compression=compression, chunk_size=CHUNK)
        assert first[:2] == second[:2]


def test_seekable_and_stream_writers_give_the_same_bytes(tmp_path: Path) -> None:
    # BytesIO takes big payloads in place (rolled back when zstd does not shrink); a stream
    # writer goes through a spool. Same bytes either way, also with short writes.
    src = make_tree(
        tmp_path / "src",
        {"a.txt": text(3 * CHUNK), "b.bin": os.urandom(3 * CHUNK), "c.txt": text(100)},
    )
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=CHUNK)
    ix, dx = Sink(), Sink(max_write=1000)
    create(src, ix, dx, compression=Compression.ZSTD, chunk_size=CHUNK)
    assert (ix.getvalue(), dx.getvalue()) == (index, data)
    with open(tmp_path / "i", "wb") as fi, open(tmp_path / "d", "wb") as fd:
        create(src, fi, fd, compression=Compression.ZSTD, chunk_size=CHUNK)
    assert ((tmp_path / "i").read_bytes(), (tmp_path / "d").read_bytes()) == (index, data)
    idx = Index(index)
    assert idx.entry("a.txt").compression == Compression.ZSTD
    assert idx.entry("b.bin").compression == Compression.NONE
    read_back(index, data)


def test_empty_source(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    index, data, result = build(tmp_path / "src")
    assert data == b""
    assert result.data_hash == hashlib.sha256(b"").digest()
    assert len(Index(index)) == 0


def test_hard_links_are_independent_copies(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"same"})
    os.link(src / "a", src / "b")
    index, data, _ = build(src)
    assert read_back(index, data) == {"a": b"same", "b": b"same"}


def test_same_entries_as_the_go_reference(tmp_path: Path) -> None:
    # Rebuild the tree the Go reference archived (tests/fixtures/reference-v1) and archive it
    # again: same files, metadata and hashes, in bytewise order; zstd wherever Go's shrank.
    fixtures = Path(__file__).parent / "fixtures" / "reference-v1"
    go = Index((fixtures / "mixed-none" / "index.blob").read_bytes())
    go_data = (fixtures / "mixed-none" / "data.blob").read_bytes()
    src = tmp_path / "src"
    for e in go:
        make_tree(src, {e.path: decode(e, go_data)})
        os.chmod(src / e.path, e.mode)
        os.utime(src / e.path, ns=(e.mtime_ns, e.mtime_ns))

    def meta(entries: Iterable[Entry]) -> list[tuple[str, int, bytes, int, int]]:
        return [(e.path, e.original_size, e.hash, e.mode, e.mtime_ns) for e in entries]

    index, data, _ = build(src, chunk_size=0)
    assert meta(Index(index)) == sorted(meta(go), key=lambda m: m[0].encode())
    read_back(index, data)
    go_zstd = Index((fixtures / "mixed-zstd" / "index.blob").read_bytes())
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=0)
    for e in Index(index):
        g = go_zstd.entry(e.path)
        shrank = g.compression == Compression.ZSTD and g.data_size < g.original_size
        assert (e.compression == Compression.ZSTD) == shrank, e.path
    read_back(index, data)


# ------------------------------------------------------------------------------ compression


def test_default_skip_compression_predicate() -> None:
    skip = default_skip_compression(1024)
    assert skip("small.txt", 1023)
    assert not skip("big.txt", 1024)
    assert skip("photo.PNG", 1 << 20)  # lower-cased
    assert skip("a.tar.gz", 1 << 20)  # last extension only, as Go's filepath.Ext
    assert skip(".png", 1 << 20)  # Go: Ext(".png") == ".png"
    assert not skip("a.tar", 1 << 20)
    assert not skip("dir.png/file", 1 << 20)  # extension of the last element only
    assert not skip("noext", 1 << 20)
    assert not default_skip_compression(0)("tiny", 1)


def test_default_skips_in_create(tmp_path: Path) -> None:
    src = make_tree(
        tmp_path / "src",
        {"small.txt": text(500), "pic.png": text(10_000), "doc.txt": text(10_000), "e": b""},
    )
    index, data, _ = build(src, compression=Compression.ZSTD)
    idx = Index(index)
    assert idx.entry("small.txt").compression == Compression.NONE
    assert idx.entry("pic.png").compression == Compression.NONE
    assert idx.entry("doc.txt").compression == Compression.ZSTD
    assert idx.entry("e").compression == Compression.NONE
    assert idx.entry("e").data_size == 0
    read_back(index, data)


def test_custom_skip_predicates(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a.keep": text(5000), "b.txt": text(5000), "c": b"a" * 200})
    seen: list[tuple[str, int]] = []

    def keep(path: str, size: int) -> bool:
        seen.append((path, size))
        return path.endswith(".keep")

    index, data, _ = build(src, compression=Compression.ZSTD, skip_compression=[keep])
    idx = Index(index)
    assert idx.entry("a.keep").compression == Compression.NONE
    assert idx.entry("b.txt").compression == Compression.ZSTD
    assert idx.entry("c").compression == Compression.ZSTD  # no size rule without the default
    assert ("b.txt", 5000) in seen
    read_back(index, data)
    index, _, _ = build(src, compression=Compression.NONE, skip_compression=[keep])
    assert all(e.compression == Compression.NONE for e in Index(index))


@pytest.mark.parametrize("size", [10 * KiB, 5 * MiB])
@pytest.mark.parametrize("chunk_size", [0, CHUNK])
def test_stored_raw_when_zstd_does_not_shrink(tmp_path: Path, size: int, chunk_size: int) -> None:
    # 10 KiB: in memory; 5 MiB: streamed (chunked, or one frame without chunks), then re-read.
    noise = os.urandom(size)
    src = make_tree(tmp_path / "src", {"noise": noise, "z-after": text(4000)})
    index, data, _ = build(
        src, compression=Compression.ZSTD, skip_compression=(), chunk_size=chunk_size
    )
    e = Index(index).entry("noise")
    assert e.compression == Compression.NONE
    assert e.data_size == e.original_size == size
    assert e.frame_offsets == ()
    assert e.chunked == (chunk_size != 0 and size > chunk_size)
    assert read_back(index, data)["noise"] == noise


def test_zstd_level_changes_output(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": text(200_000)})
    fast = build(src, compression=Compression.ZSTD, zstd_level=1)[1]
    strong = build(src, compression=Compression.ZSTD, zstd_level=19)[1]
    assert len(strong) < len(fast)


def test_large_file_without_chunk_table_is_one_frame(tmp_path: Path) -> None:
    content = text(5 * MiB)  # over the in-memory limit: streamed through compressobj
    src = make_tree(tmp_path / "src", {"big": content})
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=0)
    e = Index(index).entry("big")
    assert not e.chunked
    assert Index(index).features == 0
    frame = payload(e, data)
    assert zstandard.get_frame_parameters(frame).content_size == len(content)
    assert zstandard.ZstdDecompressor().decompress(frame) == content


# ------------------------------------------------------------------------------ chunk tables


def test_zstd_chunk_table(tmp_path: Path) -> None:
    content = text(CHUNK * 5 // 2)
    src = make_tree(tmp_path / "src", {"f": content, "one-chunk": text(CHUNK)})
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=CHUNK)
    idx = Index(index)
    assert idx.features & 1
    assert not idx.entry("one-chunk").chunked  # at most one chunk: no table
    e = idx.entry("f")
    assert e.compression == Compression.ZSTD
    assert e.chunk_size == CHUNK
    assert e.num_chunks == 3
    assert len(e.frame_offsets) == 3
    assert e.frame_offsets[0] == 0
    whole = payload(e, data)
    for k in range(3):
        lo, hi = e.chunk_bounds(k)
        assert e.chunk_hash(k) == hashlib.sha256(content[lo:hi]).digest()
        off, length = e.chunk_payload(k)
        frame = data[off : off + length]
        # Each frame is independent and carries its content size: plain decompress() works.
        assert zstandard.get_frame_parameters(frame).content_size == hi - lo
        assert zstandard.ZstdDecompressor().decompress(frame) == content[lo:hi]
    assert decode(e, data) == content  # and the whole payload is one multi-frame stream
    assert len(whole) == e.data_size


def test_raw_chunk_table(tmp_path: Path) -> None:
    content = text(CHUNK * 5 // 2)
    src = make_tree(tmp_path / "src", {"f": content})
    index, data, _ = build(src, compression=Compression.NONE, chunk_size=CHUNK)
    e = Index(index).entry("f")
    assert (e.compression, e.chunk_size, e.num_chunks, e.frame_offsets) == (
        Compression.NONE,
        CHUNK,
        3,
        (),
    )
    for k in range(3):
        lo, hi = e.chunk_bounds(k)
        off, length = e.chunk_payload(k)
        assert data[off : off + length] == content[lo:hi]
        assert e.chunk_hash(k) == hashlib.sha256(content[lo:hi]).digest()


def test_chunk_size_zero_writes_plain_v1(src: Path) -> None:
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=0)
    idx = Index(index)
    assert idx.features == 0
    assert not any(e.chunked for e in idx)
    read_back(index, data)


@pytest.mark.parametrize("bad", [1, 3, 32 * KiB, 100_000, 128 * MiB, -CHUNK])
def test_bad_chunk_size(src: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        build(src, chunk_size=bad)


@pytest.mark.parametrize("bad", [0, -1, 23])
def test_bad_zstd_level(src: Path, bad: int) -> None:
    with pytest.raises(ValueError, match="zstd_level"):
        build(src, zstd_level=bad)


# ------------------------------------------------------------------------- skipped entries


def test_special_entries_are_skipped_and_reported(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"dir/file": b"x", "target": b"t"})
    (src / "file-link").symlink_to("target")
    (src / "dir-link").symlink_to("dir")
    (src / "dangling").symlink_to("nowhere")
    (src / "empty" / "nested").mkdir(parents=True)
    (src / "void").mkdir()
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(src / "sock"))
        expected = {
            SkippedPath("dangling", "symlink"),
            SkippedPath("dir-link", "symlink"),
            SkippedPath("empty/nested", "empty directory"),
            SkippedPath("fifo", "fifo"),
            SkippedPath("file-link", "symlink"),
            SkippedPath("sock", "socket"),
            SkippedPath("void", "empty directory"),
        }
        try:
            os.mknod(src / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            expected.add(SkippedPath("null", "device"))
        except PermissionError:
            pass  # not root: no device test
        index, data, result = build(src)
    finally:
        sock.close()
    assert set(result.skipped) == expected
    assert [s.path for s in result.skipped] == sorted(s.path for s in expected)
    assert read_back(index, data) == {"dir/file": b"x", "target": b"t"}


def test_non_utf8_names_are_skipped(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"ok": b"1"})
    root = os.fsencode(src)
    with open(os.path.join(root, b"bad\xff"), "wb") as f:
        f.write(b"2")
    os.mkdir(os.path.join(root, b"dir\xfe"))
    with open(os.path.join(root, b"dir\xfe", b"inner"), "wb") as f:
        f.write(b"3")
    index, data, result = build(src)
    assert read_back(index, data) == {"ok": b"1"}
    assert result.skipped == (
        SkippedPath(os.fsdecode(b"bad\xff"), "invalid name (not UTF-8)"),
        SkippedPath(os.fsdecode(b"dir\xfe"), "invalid name (not UTF-8)"),
    )


def test_unusual_but_valid_names(tmp_path: Path) -> None:
    files = {"sp ace": b"1", "new\nline": b"2", "back\\slash": b"3", "é/ü€": b"4", "-.": b"5"}
    src = make_tree(tmp_path / "src", files)
    assert read_back(*build(src)[:2]) == files


# ----------------------------------------------------------------------------------- limits


def test_max_files_boundary(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {f"f{i}": b"x" for i in range(5)})
    assert build(src, max_files=5)[2].file_count == 5
    ix, dx = io.BytesIO(), io.BytesIO()
    with pytest.raises(TooManyFiles, match=r"more than 4 .*max_files=4"):
        create(src, ix, dx, max_files=4)
    assert ix.getvalue() == dx.getvalue() == b""  # checked before anything is written
    assert build(src, max_files=-1)[2].file_count == 5
    assert build(src, max_files=0)[2].file_count == 5  # 0 = the default, 200 000


def test_max_files_counts_regular_files_only(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "b": b"2"})
    (src / "link").symlink_to("a")
    (src / "empty").mkdir()
    assert build(src, max_files=2)[2].file_count == 2


# -------------------------------------------------------------------------- change detection


def replace_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def on_progress(path: str, action: Callable[[], object]) -> Callable[[CreateProgress], None]:
    """Run ``action`` when progress names ``path``: just before that file is opened."""

    def progress(p: CreateProgress) -> None:
        if p.stage == "writing" and p.path == path:
            action()

    return progress


@pytest.mark.parametrize("size", [100, 3 * CHUNK])
def test_strict_detects_a_replaced_file(tmp_path: Path, size: int) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "b": text(size), "c": b"3"})
    progress = on_progress("b", lambda: replace_file(src / "b", text(size, 9)))
    with pytest.raises(FileChanged, match=r"b \(replaced by another file\)") as info:
        build(src, change_detection=ChangeDetection.STRICT, progress=progress, chunk_size=CHUNK)
    assert info.value.path == "b"
    # Without strict detection the new content is archived (consistently hashed).
    index, data, _ = build(src, progress=progress, chunk_size=CHUNK)
    assert read_back(index, data)["b"] == text(size, 9)


@pytest.mark.parametrize("size", [5000, 3 * CHUNK, 5 * MiB])
@pytest.mark.parametrize("mode", list(ChangeDetection))
@pytest.mark.parametrize("compression", list(Compression))
def test_a_shrinking_file_is_an_error(
    tmp_path: Path,
    after_open: dict[str, Callable[[str], None]],
    size: int,
    mode: ChangeDetection,
    compression: Compression,
) -> None:
    src = make_tree(tmp_path / "src", {"f": text(size)})
    after_open["f"] = lambda _: os.truncate(src / "f", size // 2)
    with pytest.raises(FileChanged, match=r"f \(file shrank"):
        build(src, change_detection=mode, chunk_size=CHUNK, compression=compression)
    # Also without a chunk table (5 MiB streams through one zstd frame).
    (src / "f").write_bytes(text(size))
    with pytest.raises(FileChanged, match=r"f \(file shrank"):
        build(src, change_detection=mode, chunk_size=0, compression=compression)


@pytest.mark.parametrize("size", [5000, 3 * CHUNK])
def test_a_growing_file(
    tmp_path: Path, after_open: dict[str, Callable[[str], None]], size: int
) -> None:
    content = text(size)
    src = make_tree(tmp_path / "src", {"f": content})

    def grow(_: str) -> None:
        with open(src / "f", "ab") as f:
            f.write(b"more")

    after_open["f"] = grow
    # Like Go: the first fstat-size bytes are archived...
    index, data, _ = build(src, chunk_size=CHUNK)
    assert read_back(index, data)["f"] == content
    # ...unless strict detection notices the size change.
    (src / "f").write_bytes(content)
    with pytest.raises(FileChanged, match="size changed"):
        build(src, chunk_size=CHUNK, change_detection=ChangeDetection.STRICT)


@pytest.mark.parametrize("size", [5000, 3 * CHUNK])
def test_strict_detects_mtime_and_mode_changes(
    tmp_path: Path, after_open: dict[str, Callable[[str], None]], size: int
) -> None:
    src = make_tree(tmp_path / "src", {"f": text(size)})
    strict = ChangeDetection.STRICT
    after_open["f"] = lambda _: os.utime(src / "f", ns=(0, time.time_ns() + 10**9))
    with pytest.raises(FileChanged, match="modification time changed"):
        build(src, change_detection=strict, chunk_size=CHUNK)
    build(src, chunk_size=CHUNK)  # not checked without strict detection
    after_open["f"] = lambda _: os.chmod(src / "f", 0o600)
    with pytest.raises(FileChanged, match="mode changed"):
        build(src, change_detection=strict, chunk_size=CHUNK)


def test_a_file_that_grew_past_the_walk_size(tmp_path: Path) -> None:
    # Small at the walk, 3 chunks at open: streamed with a chunk table, all of it archived.
    src = make_tree(tmp_path / "src", {"a": b"1", "f": b"tiny"})
    big = text(3 * CHUNK)
    progress = on_progress("f", lambda: (src / "f").write_bytes(big))
    for mode in ChangeDetection:
        index, data, _ = build(src, progress=progress, chunk_size=CHUNK, change_detection=mode)
        assert read_back(index, data)["f"] == big
        assert Index(index).entry("f").num_chunks == 3
        (src / "f").write_bytes(b"tiny")


def test_content_changed_before_the_raw_re_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # zstd did not shrink the file, so it is read again raw; new bytes (same size) on the second
    # read would not match the hash of the first: an error, never a corrupt entry.
    src = make_tree(tmp_path / "src", {"noise": os.urandom(3 * CHUNK)})
    real_lseek = os.lseek

    def lseek(fd: int, pos: int, how: int) -> int:
        with open(src / "noise", "r+b") as f:
            f.write(b"changed")
        return real_lseek(fd, pos, how)

    monkeypatch.setattr(os, "lseek", lseek)
    with pytest.raises(FileChanged, match="content changed between two reads"):
        build(src, compression=Compression.ZSTD, chunk_size=CHUNK)


def test_a_vanished_file_is_an_error(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "b": b"2"})
    with pytest.raises(FileChanged, match=r"b \(file disappeared\)"):
        build(src, progress=on_progress("b", lambda: os.unlink(src / "b")))


def test_a_file_replaced_by_a_symlink(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "b": b"2"})

    def swap() -> None:
        os.unlink(src / "b")
        os.symlink("a", src / "b")

    index, data, result = build(src, progress=on_progress("b", swap))
    assert read_back(index, data) == {"a": b"1"}  # skipped, as Go does (O_NOFOLLOW)
    assert result.skipped == (SkippedPath("b", "symlink"),)
    os.unlink(src / "b")
    (src / "b").write_bytes(b"2")
    with pytest.raises(FileChanged, match="symbolic link"):
        build(src, progress=on_progress("b", swap), change_detection=ChangeDetection.STRICT)


def test_a_directory_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "outside", {"f": b"secret"})
    src = make_tree(tmp_path / "src", {"a": b"1", "d/f": b"inside"})

    def swap() -> None:
        os.rename(src / "d", tmp_path / "moved")
        os.symlink(outside, src / "d")

    with pytest.raises(FileChanged, match="directory removed or replaced"):
        build(src, progress=on_progress("d/f", swap))


# --------------------------------------------------------------------------------- errors


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CreateError, match="does not exist"):
        build(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CreateError, match="not a directory"):
        build(tmp_path / "file")


def test_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "secret": b"2", "z": b"3"})
    real_open = os.open

    def deny(path: str | bytes, flags: int, mode: int = 0o777, **kw: int | None) -> int:
        if path == b"secret":  # as if chmod 000 while not root
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(CreateError, match="cannot open secret: Permission denied"):
        build(src)


def test_unreadable_directory_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_tree(tmp_path / "src", {"a": b"1", "locked/f": b"2"})
    real_open = os.open

    def deny(path: str | bytes, flags: int, mode: int = 0o777, **kw: int | None) -> int:
        if path in ("locked", b"locked"):  # as if chmod 000 while not root
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(os, "open", deny)
    with pytest.raises(CreateError, match="cannot open directory locked: Permission denied"):
        build(src)


def test_writer_errors_become_create_errors(src: Path) -> None:
    class Broken:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CreateError, match=r"data blob failed: .*No space left"):
        create(src, io.BytesIO(), Broken())
    with pytest.raises(CreateError, match="index failed"):
        create(src, Broken(), io.BytesIO())


def test_progress_exception_aborts(src: Path) -> None:
    def boom(p: CreateProgress) -> None:
        if p.path == "docs/readme.md":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(src, progress=boom)


# -------------------------------------------------------------------------------- progress


def test_progress_reports(src: Path) -> None:
    reports: list[CreateProgress] = []
    index, _, result = build(src, progress=reports.append, chunk_size=CHUNK)
    paths = list(Index(index).paths())
    total = sum(e.original_size for e in Index(index))
    assert reports[0] == CreateProgress("enumerating", 0, 0, 0, 0, "")
    writing = reports[1:]
    assert [r.path for r in writing] == [*paths, ""]
    assert all(r.stage == "writing" and r.files_total == len(paths) for r in writing)
    assert all(r.bytes_total == total for r in writing)
    assert [r.files_done for r in writing] == sorted(r.files_done for r in writing)
    assert writing[-1].files_done == result.file_count
    assert writing[-1].bytes_done == total


# ------------------------------------------------------------------------------ create_blob


def test_create_blob(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "nested"
    with create_blob(
        src, dest, index_name="i.idx", data_name="d.dat", compression=Compression.ZSTD
    ) as archive:
        assert sorted(p.name for p in dest.iterdir()) == ["d.dat", "i.idx"]
        assert archive.read_file("docs/readme.md") == text(5000)
        assert archive.read_file("big/text.log") == text(CHUNK * 5 // 2, 2)
        report = archive.verify()
        assert report.failures == ()
        assert report.data_error is None
    index, data, _ = build(src, compression=Compression.ZSTD)
    assert (dest / "i.idx").read_bytes() == index
    assert (dest / "d.dat").read_bytes() == data
    assert stat.S_IMODE(os.stat(dest).st_mode) & 0o027 == 0


def test_create_blob_failure_keeps_the_old_archive(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    create_blob(src, dest).close()
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def fail(p: CreateProgress) -> None:
        if p.path == "docs/readme.md":
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        create_blob(src, dest, compression=Compression.ZSTD, progress=fail)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before  # no temp files either


def test_create_blob_too_many_files_leaves_nothing(src: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    with pytest.raises(TooManyFiles):
        create_blob(src, dest, max_files=2)
    assert list(dest.iterdir()) == []


def test_create_blob_argument_errors(src: Path, tmp_path: Path) -> None:
    with pytest.raises(CreateError, match="inside the source"):
        create_blob(src, src / "archive")
    with pytest.raises(CreateError, match="does not exist"):
        create_blob(tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    for bad in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError, match="plain file name"):
            create_blob(src, tmp_path / "out", index_name=bad)
    with pytest.raises(ValueError, match="both"):
        create_blob(src, tmp_path / "out", index_name="x", data_name="x")


# ------------------------------------------------------------------------------- resources


def test_large_sparse_file_in_bounded_memory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "zeros", "wb") as f:
        f.truncate(300 * MiB)
    for compression in Compression:
        out = NullWriter()
        tracemalloc.start()
        try:
            result = create(src, NullWriter(), out, compression=compression)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.file_count == 1
        assert peak < 64 * MiB, f"{compression.name}: peak {peak / MiB:.1f} MiB"
        if compression == Compression.NONE:
            assert out.size == 300 * MiB
        else:
            assert out.size < MiB


def test_no_descriptor_leaks(src: Path) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    build(src, compression=Compression.ZSTD, chunk_size=CHUNK)
    with pytest.raises(FileChanged):
        build(
            src,
            progress=on_progress("docs/readme.md", lambda: os.unlink(src / "hello.txt")),
            change_detection=ChangeDetection.STRICT,
        )
    assert fds() == before


def test_many_files_many_directories(tmp_path: Path) -> None:
    # More files than a batch, in several directories: exercises read-ahead and the
    # directory descriptor hand-over between batches.
    files = {f"d{i % 7}/s{i % 3}/f{i:04}": text(i % 300, i) for i in range(700)}
    files.update({f"d{i}/big": text(CHUNK + i, i) for i in range(3)})
    src = make_tree(tmp_path / "src", files)
    index, data, _ = build(src, compression=Compression.ZSTD, chunk_size=CHUNK)
    assert read_back(index, data) == files


# ------------------------------------------------------------------------------ properties

_names = st.text(alphabet="ab-. é€_", min_size=1, max_size=4).filter(lambda s: s not in {".", ".."})
_contents = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=40), st.integers(0, 4000)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=st.dictionaries(
        st.lists(_names, min_size=1, max_size=3).map("/".join), _contents, max_size=12
    ),
    compression=st.sampled_from(list(Compression)),
)
def test_random_trees_round_trip(tree: dict[str, bytes], compression: Compression) -> None:
    # Drop paths that are also a directory of another path ("a" and "a/b").
    files = {p: d for p, d in tree.items() if not any(q.startswith(p + "/") for q in tree)}
    with tempfile.TemporaryDirectory() as tmp:
        src = make_tree(Path(tmp), files)
        index, data, result = build(src, compression=compression, chunk_size=CHUNK)
        assert read_back(index, data) == files
        assert result.file_count == len(files)
        assert list(Index(index).paths()) == sorted(files, key=lambda p: p.encode())
