"""``blobfs.core.extract``: every file written out from one ordered pass over the data blob.

Real archives made by ``create_blob`` (raw, zstd, chunked and v1 entries, empty files), read
through a local file source or a real HTTP range server; small ``range_size`` values force
files across several ranges and pieces of one file into different workers. Faults: bytes
changed in the data blob (in a small file, in a late chunk, in a v1 file spanning ranges), a
source failing mid-way, a symlink or a directory in the way; each must fail cleanly with no
temporary file and no unverified file left.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest

from blobfs.core import (
    BlobFile,
    Compression,
    Entry,
    ExtractReport,
    FileSource,
    create_blob,
    encode_index,
    extract,
    open_file,
)
from blobfs.core.http import HttpSource
from blobfs.errors import HashMismatch, IntegrityError, SourceError
from tests._servers import Fault, RangeServer, RequestRecord
from tests._trees import write_tree

MTIME_NS = 1_700_000_000_123_456_789
KiB, MiB = 1 << 10, 1 << 20


def _tree(root: Path) -> dict[str, bytes]:
    """Small files in several directories, empty files, a compressible chunked file, a random
    chunked file and a file that is stored v1 (no chunk table) below the chunk size."""
    seed = hashlib.sha256(b"extract").digest()
    files: dict[str, bytes] = {
        f"d{i % 5}/s{i:03d}.txt": (f"file {i}\n" * (i * 7 + 1)).encode() for i in range(120)
    }
    files["empty/one"] = b""
    files["empty/two"] = b""
    files["big/text.log"] = (seed * 40_000)[: 3 * MiB + 5]  # zstd, chunked (1 MiB chunks)
    files["big/random.bin"] = os.urandom(2 * MiB + 123)  # incompressible: raw, chunked
    files["mid/v1.bin"] = os.urandom(700 * KiB)  # under the chunk size: a v1 entry
    files["dup/a.txt"] = files["dup/b.txt"] = b"same bytes\n" * 100
    write_tree(root, files, mtime_ns=MTIME_NS, exec_every=3)
    return files


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, bytes]]:
    """(source tree, archive directory, files), the archive zstd-compressed."""
    base = tmp_path_factory.mktemp("extract")
    files = _tree(base / "src")
    create_blob(base / "src", base / "arch", compression=Compression.ZSTD).close()
    return base / "src", base / "arch", files


def _open(arch: Path) -> BlobFile:
    return open_file(arch / "index.blob", arch / "data.blob")


def _check(dest: Path, src: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        got, want = dest / name, src / name
        assert got.read_bytes() == data, name
        assert stat.S_IMODE(got.stat().st_mode) == stat.S_IMODE(want.stat().st_mode), name
        assert got.stat().st_mtime_ns == want.stat().st_mtime_ns, name
    assert not list(dest.rglob(".blobfs-*"))


@pytest.mark.parametrize(
    ("range_size", "workers"), [(16 * MiB, 4), (256 * KiB, 4), (64 * KiB, 3), (64 * KiB, 1)]
)
def test_extracts_everything_verified_with_modes_and_times(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path, range_size: int, workers: int
) -> None:
    src, arch, files = made
    with _open(arch) as ar:
        entries = list(ar.walk(""))
        assert any(e.chunked and e.compression == Compression.ZSTD for e in entries)
        assert any(e.chunked and e.compression == Compression.NONE for e in entries)
        assert any(not e.chunked and e.size > 256 * KiB for e in entries)
        done: list[int] = []
        report = extract(
            entries,
            ar.source,
            tmp_path,
            workers=workers,
            range_size=range_size,
            progress=done.append,
        )
    assert sorted(e.path for e in report.written) == sorted(files)
    assert report.skipped == []
    assert sum(done) == report.written_bytes == sum(len(d) for d in files.values())
    _check(tmp_path, src, files)


def test_few_large_range_requests_over_http(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path, range_server: RangeServer
) -> None:
    """Over HTTP, the data blob is read in ranges of ``range_size`` in blob order (about
    size / range_size requests), not one request per file."""
    src, arch, files = made
    data = (arch / "data.blob").read_bytes()
    range_server.put("data", data)
    with (
        _open(arch) as local,
        HttpSource(range_server.url("data"), size=len(data), source_id="x") as source,
    ):
        report = extract(local.walk(""), source, tmp_path, range_size=512 * KiB)
    assert len(report.written) == len(files)
    requests = range_server.stats.requests_for("data")
    assert requests <= len(data) // (512 * KiB) + 2, requests
    assert range_server.stats.bytes_sent_for("data") <= len(data) + 64 * KiB
    _check(tmp_path, src, files)


def _corrupt(arch: Path, tmp: Path, path: str, at: int = 0) -> Path:
    """A copy of ``arch`` whose data blob has one byte of ``path``'s payload flipped (the
    payload byte ``at``, counted from its start)."""
    out = tmp / "bad"
    out.mkdir()
    (out / "index.blob").write_bytes((arch / "index.blob").read_bytes())
    with _open(arch) as ar:
        e = ar.entry(path)
    raw = bytearray((arch / "data.blob").read_bytes())
    raw[e.data_offset + at] ^= 0xFF
    (out / "data.blob").write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize(
    ("victim", "at"),
    [
        ("d3/s058.txt", 0),  # a small file among many in one range
        ("big/random.bin", 2 * MiB + 50),  # the last chunk of a raw chunked file
        ("mid/v1.bin", 600 * KiB),  # a v1 file across several ranges: caught at its end
    ],
)
def test_changed_bytes_fail_cleanly(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path, victim: str, at: int
) -> None:
    _, arch, _ = made
    bad = _corrupt(arch, tmp_path, victim, at)
    dest = tmp_path / "dest"
    dest.mkdir()
    with _open(bad) as ar, pytest.raises(IntegrityError) as info:
        extract(ar.walk(""), ar.source, dest, range_size=128 * KiB)
    assert victim in str(info.value)  # a hash mismatch, or a zstd stream that does not decode
    assert not (dest / victim).exists()
    assert not list(dest.rglob(".blobfs-*"))


def test_a_failing_source_stops_the_extraction_and_cleans_up(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path, range_server: RangeServer
) -> None:
    """The server answers 404 for the ranges after the first of the last file's payload (it
    spans several ranges): the error is the source's, no temporary file stays, the files
    before were written, and only verified files were renamed into place."""
    _, arch, files = made
    data = (arch / "data.blob").read_bytes()
    range_server.put("data", data)
    with _open(arch) as local:
        last = max((e for e in local.walk("") if e.data_size), key=lambda e: e.data_offset)
    assert last.path == "mid/v1.bin"

    def hook(record: RequestRecord) -> Fault | None:
        rng = record.range or ""
        start = int(rng.removeprefix("bytes=").split("-")[0] or 0)
        return Fault("status", status=404) if start > last.data_offset else None

    range_server.faults.hook("data", hook)
    with (
        _open(arch) as local,
        HttpSource(range_server.url("data"), size=len(data), source_id="x", retries=0) as source,
        pytest.raises(SourceError),
    ):
        extract(local.walk(""), source, tmp_path, range_size=256 * KiB)
    assert not list(tmp_path.rglob(".blobfs-*"))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == len(files) - 1  # all but the last one
    for p in written:
        assert p.read_bytes() == files[p.relative_to(tmp_path).as_posix()]


def test_existing_files_are_skipped_unless_forced(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    _, arch, files = made
    (tmp_path / "d0").mkdir()
    (tmp_path / "d0" / "s000.txt").write_bytes(b"mine")
    with _open(arch) as ar:
        report = extract(ar.walk(""), ar.source, tmp_path)
        assert [e.path for e in report.skipped] == ["d0/s000.txt"]
        assert len(report.written) == len(files) - 1
        assert (tmp_path / "d0" / "s000.txt").read_bytes() == b"mine"
        again = extract(ar.walk(""), ar.source, tmp_path, force=True, preserve=False)
    assert len(again.written) == len(files)
    assert (tmp_path / "d0" / "s000.txt").read_bytes() == files["d0/s000.txt"]
    # preserve=False: default permissions, not the archived ones.
    assert stat.S_IMODE((tmp_path / "d0" / "s000.txt").stat().st_mode) == 0o644 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_symlinks_and_directories_in_the_way(
    made: tuple[Path, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    _, arch, _ = made
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d1").symlink_to(outside)
    with _open(arch) as ar:
        with pytest.raises(OSError, match="symlink") as info:
            extract(ar.walk(""), ar.source, dest)
        assert info.value.errno == errno.ELOOP
        assert not list(outside.iterdir())  # nothing written through the link
        (dest / "d1").unlink()
        (dest / "mid" / "v1.bin").mkdir(parents=True)
        with pytest.raises(IsADirectoryError, match="is a directory"):
            extract(ar.walk(""), ar.source, dest, force=True)
    # Both were refused before any file was written.
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_an_empty_file_must_match_its_hash(tmp_path: Path) -> None:
    """A zero-length entry still carries a hash; a wrong one fails (nothing is fetched)."""
    empty = hashlib.sha256(b"").digest()
    entries = [
        Entry("ok", 0, 0, 0, empty, 0o600, 0, 0, MTIME_NS, Compression.NONE),
        Entry("bad", 0, 0, 0, b"\x01" * 32, 0o600, 0, 0, MTIME_NS, Compression.NONE),
    ]
    encode_index(entries, data_size=0, data_hash=empty)  # a valid index says so
    (tmp_path / "data.blob").write_bytes(b"")
    dest = tmp_path / "dest"
    dest.mkdir()
    with FileSource(tmp_path / "data.blob") as source, pytest.raises(HashMismatch, match="bad"):
        extract(entries, source, dest)
    assert not (dest / "bad").exists()
    assert not list(dest.rglob(".blobfs-*"))


def test_report_counts() -> None:
    e = Entry("a", 0, 3, 5, b"\0" * 32, 0o644, 0, 0, 0, Compression.ZSTD)
    assert ExtractReport([e, e]).written_bytes == 10
