"""The mount's file system without a kernel: ``blobfs.fuse._fs`` and the pyfuse3 adapter.

Every handler of :class:`ArchiveFS` runs against real archives made by ``create_blob`` (chunked
and v1 entries, zstd and raw); the adapter (``_ops.Operations``) is called directly, so its
errno mapping is checked for every kind of error. Real mounts are in tests/test_mount.py.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyfuse3
import pytest
import trio
import trio.testing

from blobfs.core import (
    Archive,
    BlobFile,
    BytesSource,
    Compression,
    Index,
    create_blob,
    open_file,
)
from blobfs.core._decode import Buffer
from blobfs.core.cache import MemoryCache
from blobfs.errors import (
    BlobfsError,
    FileTooLarge,
    HashMismatch,
    HttpError,
    IntegrityError,
    InvalidPath,
    IsADirectory,
    MountError,
    NotADirectory,
    NotFound,
    SourceError,
)
from blobfs.fuse import SourceInfo
from blobfs.fuse._errno import FsError, errno_for
from blobfs.fuse._fs import DIR_MODE, MAX_READ, ArchiveFS, Attr
from blobfs.fuse._inodes import ROOT_INO
from blobfs.fuse._ops import TIMEOUT, Operations
from blobfs.fuse._options import parse_options

CTX = cast(pyfuse3.RequestContext, None)
"""The handlers ignore their request context (the kernel checks permissions)."""

BIG = 300_000  # > 4 chunks of 64 KiB


def _tree(root: Path) -> dict[str, bytes]:
    rng = random.Random(5)
    files = {
        "a.txt": b"hello\n",
        "a-b/f": b"dash",
        "a/x": b"x" * 10,
        "a/b/c/deep.txt": b"deep\n",
        "dir/big.bin": rng.randbytes(BIG),
        "dir/sub/small.txt": b"small",
        "empty.txt": b"",
        "space name.txt": b"spaces",
        "\u00fcn\u00efc\u00f8d\u00e9.txt": b"unicode",
        "modes/script.sh": b"#!/bin/sh\n",
        "modes/secret": b"secret",
        "modes/setuid": b"suid",
    }
    for i in range(100):
        files[f"many/f{i:03d}"] = b"%d" % i
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(root / "modes/script.sh", 0o755)
    os.chmod(root / "modes/secret", 0o600)
    os.chmod(root / "modes/setuid", 0o4755)
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path_factory.mktemp("tree")
    return root, _tree(root)


@pytest.fixture(scope="module", params=["chunked-zstd", "v1-raw"])
def archive_dir(
    request: pytest.FixtureRequest,
    tree: tuple[Path, dict[str, bytes]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "chunked-zstd":
        create_blob(tree[0], out, compression=Compression.ZSTD, chunk_size=64 << 10).close()
    else:
        create_blob(tree[0], out, compression=Compression.NONE, chunk_size=0).close()
    return out


@pytest.fixture
def archive(archive_dir: Path) -> Iterator[BlobFile]:
    with open_file(archive_dir / "index.blob", archive_dir / "data.blob") as a:
        yield a


@pytest.fixture
def fs(archive: Archive) -> ArchiveFS:
    return ArchiveFS(archive, SourceInfo("reg.example/team/data:v1", "sha256:" + "ab" * 32))


def _walk(fs: ArchiveFS, ino: int = ROOT_INO, prefix: str = "") -> dict[str, Attr]:
    """Every path below ``ino`` with its attributes, through opendir/readdir/lookup."""
    out: dict[str, Attr] = {}
    fh = fs.opendir(ino)
    try:
        for name, attr, _ in list(fs.readdir(fh, 0)):
            if name in (b".", b".."):
                continue
            path = prefix + name.decode()
            assert fs.lookup(ino, name) == attr
            out[path] = attr
            if stat.S_ISDIR(attr.mode):
                out.update(_walk(fs, attr.ino, path + "/"))
    finally:
        fs.releasedir(fh)
    return out


# ------------------------------------------------------------------------------------- index


def test_index_positions(archive: Archive) -> None:
    index = archive.index
    paths = list(index.paths())
    for i, p in enumerate(paths):
        raw = p.encode()
        assert index.position(raw) == i
        assert index.path_at(i) == raw
        assert index.entry_at(i).path == p
    assert index.position(b"dir") is None
    assert index.position(b"") is None
    first = index.first_below(b"dir")
    assert first is not None
    assert paths[first] == "dir/big.bin"
    assert index.first_below(b"") == 0
    assert index.first_below(b"a.txt") is None
    assert index.first_below(b"nope") is None
    names, positions, dirs = index.children(b"")
    assert names == sorted(names)
    assert [n for n, d in zip(names, dirs, strict=True) if d] == [
        b"a",
        b"a-b",
        b"dir",
        b"many",
        b"modes",
    ]
    assert [e.path for e in index.entries_at([positions[names.index(b"a.txt")]])] == ["a.txt"]
    with pytest.raises(NotADirectory):
        index.children(b"a.txt")
    with pytest.raises(NotFound):
        index.children(b"nope")
    with pytest.raises(IndexError):
        index.path_at(len(index))


# ------------------------------------------------------------------------------------- metadata


def test_walk_sees_every_file_with_archived_attributes(
    fs: ArchiveFS, tree: tuple[Path, dict[str, bytes]]
) -> None:
    files = tree[1]
    seen = _walk(fs)
    assert {p for p, a in seen.items() if stat.S_ISREG(a.mode)} == set(files)
    for path, data in files.items():
        a = seen[path]
        src = os.stat(tree[0] / path)
        assert a.size == len(data)
        assert a.blocks == (len(data) + 511) // 512
        assert a.nlink == 1
        assert a.mtime_ns == 1_700_000_000_123_456_789
        assert (a.uid, a.gid) == (src.st_uid, src.st_gid)
        assert stat.S_IMODE(a.mode) == stat.S_IMODE(src.st_mode) & 0o777  # no set-uid
    assert stat.S_IMODE(seen["modes/setuid"].mode) == 0o755
    assert stat.S_IMODE(seen["modes/secret"].mode) == 0o600
    # Directories: synthesized, 0o555, 2 + subdirectories links, mtime of their first file.
    assert seen["a"].mode == stat.S_IFDIR | DIR_MODE
    assert seen["a"].nlink == 3  # a/b
    assert seen["a/b/c"].nlink == 2
    assert seen["many"].nlink == 2
    assert seen["a"].mtime_ns == 1_700_000_000_123_456_789
    root = fs.getattr(ROOT_INO)
    assert root.ino == ROOT_INO
    assert root.nlink == 2 + 5
    # Inode numbers are unique.
    inos = [a.ino for a in seen.values()] + [ROOT_INO]
    assert len(set(inos)) == len(inos)


def test_inode_numbers_are_stable_across_mounts(archive_dir: Path, fs: ArchiveFS) -> None:
    first = _walk(fs)
    with open_file(archive_dir / "index.blob", archive_dir / "data.blob") as again:
        other = ArchiveFS(again, SourceInfo("x"))
        assert _walk(other) == first
        # Any inode the kernel remembers resolves without a lookup first (NFS-style).
        for attr in first.values():
            assert other.getattr(attr.ino) == attr


def test_forged_inodes_are_stale(fs: ArchiveFS) -> None:
    index = fs.archive.index
    n = len(index)
    a_txt = index.position(b"a.txt")  # one component: no directory above it
    a_x = index.position(b"a/x")  # below "a", but not a's first file
    assert a_txt is not None
    assert a_x is not None
    for ino in (0, n + 2, (1 << 33) | a_txt, (1 << 33) | a_x, (1 << 33) | n, 9 << 33, 1 << 62):
        with pytest.raises(FsError) as info:
            fs.getattr(ino)
        assert info.value.errno == errno.ESTALE


def test_lookup_answers(fs: ArchiveFS) -> None:
    assert fs.lookup(ROOT_INO, b"missing") is None
    assert fs.lookup(ROOT_INO, b"a/x") is None  # a name, not a path
    assert fs.lookup(ROOT_INO, b"") == fs.getattr(ROOT_INO)
    assert fs.lookup(ROOT_INO, b".") == fs.getattr(ROOT_INO)
    assert fs.lookup(ROOT_INO, b"..") == fs.getattr(ROOT_INO)
    a = fs.lookup(ROOT_INO, b"a")
    assert a is not None
    b = fs.lookup(a.ino, b"b")
    assert b is not None
    assert fs.lookup(b.ino, b"..") == a
    assert fs.lookup(ROOT_INO, "\u00fcn\u00efc\u00f8d\u00e9.txt".encode()) is not None
    assert fs.lookup(ROOT_INO, b"\xff\xfe") is None  # not UTF-8: not in any archive
    f = fs.lookup(ROOT_INO, b"a.txt")
    assert f is not None
    with pytest.raises(FsError) as info:
        fs.lookup(f.ino, b"x")
    assert info.value.errno == errno.ENOTDIR


def test_readdir_offsets_survive_concurrent_listing(fs: ArchiveFS) -> None:
    many = fs.lookup(ROOT_INO, b"many")
    assert many is not None
    fh1 = fs.opendir(many.ino)
    full = list(fs.readdir(fh1, 0))
    names = [n for n, _, _ in full]
    assert names[:2] == [b".", b".."]
    assert names[2:] == sorted(names[2:])
    assert len(names) == 102
    assert [off for _, _, off in full] == list(range(1, 103))
    # Resuming from any offset gives exactly the rest, from this handle or another one,
    # while a second listing of the same directory is half way through.
    fh2 = fs.opendir(many.ino)
    it2 = fs.readdir(fh2, 0)
    part = [next(it2) for _ in range(37)]
    for off in (0, 1, 2, 3, 50, 101, 102, 500):
        assert list(fs.readdir(fh1, off)) == full[off:]
    assert part + list(fs.readdir(fh2, part[-1][2])) == full
    fs.releasedir(fh1)
    fs.releasedir(fh2)
    with pytest.raises(FsError) as info:
        list(fs.readdir(fh1, 0))
    assert info.value.errno == errno.EBADF
    f = fs.lookup(ROOT_INO, b"a.txt")
    assert f is not None
    with pytest.raises(FsError) as info:
        fs.opendir(f.ino)
    assert info.value.errno == errno.ENOTDIR


def test_statfs_from_the_index(fs: ArchiveFS) -> None:
    s = fs.statfs()
    index = fs.archive.index
    assert s.blocks * s.frsize >= index.data_size > (s.blocks - 1) * s.frsize
    assert s.files == len(index) + index.dir_count + 1


def test_owner_and_umask_options(archive: Archive) -> None:
    fs = ArchiveFS(archive, SourceInfo("x"), uid=1234, gid=5678, umask=0o027)
    for attr in [*_walk(fs).values(), fs.getattr(ROOT_INO)]:
        assert (attr.uid, attr.gid) == (1234, 5678)
        assert stat.S_IMODE(attr.mode) & 0o027 == 0
    d = fs.lookup(ROOT_INO, b"dir")
    assert d is not None
    assert stat.S_IMODE(d.mode) == 0o550


# ------------------------------------------------------------------------------------- xattrs


def test_xattrs(fs: ArchiveFS, tree: tuple[Path, dict[str, bytes]]) -> None:
    import hashlib

    f = fs.lookup(ROOT_INO, b"a.txt")
    d = fs.lookup(ROOT_INO, b"dir")
    assert f is not None
    assert d is not None
    digest = fs.getxattr(f.ino, b"user.blobfs.digest")
    assert digest == b"sha256:" + hashlib.sha256(b"hello\n").hexdigest().encode()
    source = b"reg.example/team/data:v1@sha256:" + b"ab" * 32
    assert fs.getxattr(f.ino, b"user.blobfs.source") == source
    assert fs.getxattr(ROOT_INO, b"user.blobfs.source") == source
    stats = json.loads(fs.getxattr(ROOT_INO, b"user.blobfs.stats"))
    assert stats["reference"] == "reg.example/team/data:v1"
    assert stats["files"] == len(tree[1])
    assert stats["errors"] == 0
    assert fs.listxattr(ROOT_INO) == [b"user.blobfs.source", b"user.blobfs.stats"]
    assert fs.listxattr(f.ino) == [b"user.blobfs.source", b"user.blobfs.digest"]
    assert fs.listxattr(d.ino) == [b"user.blobfs.source"]
    for ino, name, code in (
        (d.ino, b"user.blobfs.digest", errno.ENODATA),
        (f.ino, b"user.blobfs.stats", errno.ENODATA),
        (f.ino, b"user.other", errno.ENODATA),
        # Other namespaces are not supported at all (ls -l then stops asking).
        (f.ino, b"security.selinux", errno.EOPNOTSUPP),
        (ROOT_INO, b"system.posix_acl_access", errno.EOPNOTSUPP),
        (ROOT_INO, b"trusted.x", errno.EOPNOTSUPP),
        (ROOT_INO, b"", errno.EOPNOTSUPP),
    ):
        with pytest.raises(FsError) as info:
            fs.getxattr(ino, name)
        assert info.value.errno == code


# ------------------------------------------------------------------------------------- reads


def _ino(fs: ArchiveFS, path: str) -> int:
    ino = ROOT_INO
    for part in path.split("/"):
        attr = fs.lookup(ino, part.encode())
        assert attr is not None, path
        ino = attr.ino
    return ino


def test_open_refuses_writes_and_directories(fs: ArchiveFS) -> None:
    ino = _ino(fs, "a.txt")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(FsError) as info:
            fs.open(ino, flags)
        assert info.value.errno == errno.EROFS
    with pytest.raises(FsError) as info:
        fs.open(_ino(fs, "dir"), os.O_RDONLY)
    assert info.value.errno == errno.EISDIR


@pytest.mark.trio
async def test_reads_have_pread_semantics(
    fs: ArchiveFS, tree: tuple[Path, dict[str, bytes]]
) -> None:
    files = tree[1]
    rng = random.Random(7)
    for path, data in files.items():
        fh = fs.open(_ino(fs, path), os.O_RDONLY)
        assert await fs.read(fh, 0, len(data) + 10) == data
        for _ in range(5):
            off = rng.randrange(0, len(data) + 3)
            size = rng.choice([1, 3, 4095, 4097, 131072, 999_999])
            assert await fs.read(fh, off, size) == data[off : off + size]
        assert await fs.read(fh, len(data), 10) == b""
        assert await fs.read(fh, len(data) + 12345, 10) == b""
        assert await fs.read(fh, 0, 0) == b""
        with pytest.raises(FsError) as info:
            await fs.read(fh, -1, 10)
        assert info.value.errno == errno.EINVAL
        await fs.release(fh)
        with pytest.raises(FsError) as info:
            await fs.read(fh, 0, 1)
        assert info.value.errno == errno.EBADF
    big = fs.open(_ino(fs, "dir/big.bin"), os.O_RDONLY)
    assert len(await fs.read(big, 0, 1 << 40)) == min(BIG, MAX_READ)
    await fs.release(big)
    stats = json.loads(fs.getxattr(ROOT_INO, b"user.blobfs.stats"))
    assert stats["opens"] == len(files) + 1
    assert stats["bytes_read"] > 0


@pytest.mark.trio
async def test_many_concurrent_readers_get_the_right_bytes(
    fs: ArchiveFS, tree: tuple[Path, dict[str, bytes]]
) -> None:
    """Interleaved sequential streams (kernel readahead sends the next range before the last
    is answered) and random readers of the same file, over several handles, all at once."""
    data = tree[1]["dir/big.bin"]
    ino = _ino(fs, "dir/big.bin")
    handles = [fs.open(ino, os.O_RDONLY) for _ in range(3)]
    wrong: list[tuple[int, int]] = []

    async def check(fh: int, off: int, size: int) -> None:
        if await fs.read(fh, off, size) != data[off : off + size]:
            wrong.append((off, size))

    rng = random.Random(11)
    async with trio.open_nursery() as nursery:
        for fh in handles:
            for off in range(0, BIG, 16384):  # a stream, all requests in flight at once
                nursery.start_soon(check, fh, off, 16384)
        for _ in range(100):
            off = rng.randrange(BIG)
            nursery.start_soon(check, rng.choice(handles), off, rng.randrange(1, 70000))
    assert wrong == []
    for fh in handles:
        await fs.release(fh)
    assert fs._open == {}
    await fs.aclose()


def _tamper(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"y")


@pytest.mark.trio
async def test_tampered_content_is_eio_for_that_file_only(
    tree: tuple[Path, dict[str, bytes]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "arch"
    create_blob(tree[0], out, compression=Compression.NONE, chunk_size=64 << 10).close()
    index = Index((out / "index.blob").read_bytes())
    _tamper(out / "data.blob", index.entry("a/x").data_offset)
    with open_file(out / "index.blob", out / "data.blob") as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        fh = fs.open(_ino(fs, "a/x"), os.O_RDONLY)
        with pytest.raises(IntegrityError) as info:
            await fs.read(fh, 0, 100)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="blobfs.fuse"):
            assert fs.failed(info.value, "read", fh=fh) == errno.EIO
        [record] = caplog.records
        assert "/a/x" in record.getMessage()
        assert "hash mismatch" in record.getMessage()
        assert record.exc_info is None  # an expected failure: one line, no traceback
        other = fs.open(_ino(fs, "a.txt"), os.O_RDONLY)
        assert await fs.read(other, 0, 100) == b"hello\n"
        big = fs.open(_ino(fs, "dir/big.bin"), os.O_RDONLY)
        assert await fs.read(big, 100_000, 10) == tree[1]["dir/big.bin"][100_000:100_010]
        assert json.loads(fs.getxattr(ROOT_INO, b"user.blobfs.stats"))["errors"] == 1
        await fs.aclose()


# ------------------------------------------------------------------------------------- errnos


@pytest.mark.parametrize(
    ("exc", "code", "logged"),
    [
        (NotFound("p", "gone"), errno.ENOENT, False),
        (NotADirectory("p", "file"), errno.ENOTDIR, False),
        (IsADirectory("p", "dir"), errno.EISDIR, False),
        (InvalidPath("p", "bad"), errno.ENOENT, False),
        (FsError(errno.EROFS), errno.EROFS, False),
        (FsError(errno.ENODATA), errno.ENODATA, False),
        (HashMismatch("p", "aa", "bb"), errno.EIO, True),
        (IntegrityError("p", "short"), errno.EIO, True),
        (SourceError("disk gone"), errno.EIO, True),
        (HttpError("http://r/b", "timed out", attempts=6), errno.EIO, True),
        (FileTooLarge("p", 10, 5), errno.EFBIG, True),
        (BlobfsError("other"), errno.EIO, True),
    ],
)
def test_errno_table(
    exc: BaseException, code: int, logged: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="blobfs.fuse"):
        assert errno_for(exc, "read", lambda: "/some/path") == code
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == int(logged)
    if logged:
        assert errors[0].getMessage().startswith("/some/path: read failed: ")
        assert errors[0].exc_info is None


def test_unexpected_errors_are_eio_with_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="blobfs.fuse"):
        assert errno_for(KeyError("bug"), "getattr", lambda: "/x") == errno.EIO
    [record] = caplog.records
    assert record.exc_info is not None
    assert "unexpected" in record.getMessage()


# ------------------------------------------------------------------------------------- adapter


async def _fuse_errno(coro: Any) -> int:
    with pytest.raises(pyfuse3.FUSEError) as info:
        await coro
    return int(info.value.errno)


@pytest.mark.trio
async def test_adapter_converts_answers(fs: ArchiveFS) -> None:
    ops = Operations(fs)
    e = await ops.lookup(ROOT_INO, b"a.txt", CTX)
    assert e.st_ino == _ino(fs, "a.txt")
    assert e.st_size == 6
    assert e.entry_timeout == TIMEOUT
    assert e.attr_timeout == TIMEOUT
    assert e.st_mtime_ns == e.st_atime_ns == e.st_ctime_ns == 1_700_000_000_123_456_789
    neg = await ops.lookup(ROOT_INO, b"nope", CTX)
    assert neg.st_ino == 0
    assert neg.entry_timeout == TIMEOUT
    root = await ops.getattr(ROOT_INO, CTX)
    assert stat.S_ISDIR(root.st_mode)
    info = await ops.open(e.st_ino, os.O_RDONLY, CTX)
    assert info.keep_cache
    assert not info.direct_io
    assert await ops.read(info.fh, 1, 3) == b"ell"
    await ops.release(info.fh)
    s = await ops.statfs(CTX)
    assert s.f_bfree == 0
    assert s.f_files == fs.statfs().files
    assert await ops.getxattr(ROOT_INO, b"user.blobfs.source", CTX) == fs.getxattr(
        ROOT_INO, b"user.blobfs.source"
    )
    assert list(await ops.listxattr(ROOT_INO, CTX)) == fs.listxattr(ROOT_INO)
    await ops.forget([(e.st_ino, 5)])
    assert (await ops.getattr(e.st_ino, CTX)).st_ino == e.st_ino


@pytest.mark.trio
async def test_adapter_readdir_stops_when_the_buffer_is_full(
    fs: ArchiveFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: list[tuple[bytes, int, int]] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        replies.append((name, attr.st_ino, next_id))
        return len(replies) % 10 != 0  # room for ten entries per call

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    ops = Operations(fs)
    fh = await ops.opendir(_ino(fs, "many"), CTX)
    token = cast(pyfuse3.ReaddirToken, None)
    start = 0
    names: list[bytes] = []
    while True:
        before = len(replies)
        await ops.readdir(fh, start, token)
        got = replies[before:]
        if not got:
            break
        # The entry that did not fit is sent again by the next call (its offset is reused).
        accepted = got if len(got) < 10 else got[:-1]
        names += [n for n, _, _ in accepted]
        start = accepted[-1][2]
        if len(got) < 10:
            break
    await ops.releasedir(fh)
    assert names == [b".", b".."] + [b"f%03d" % i for i in range(100)]


@pytest.mark.trio
async def test_adapter_errnos(fs: ArchiveFS, caplog: pytest.LogCaptureFixture) -> None:
    ops = Operations(fs)
    file_ino = _ino(fs, "a.txt")
    dir_ino = _ino(fs, "dir")
    assert await _fuse_errno(ops.getattr(1 << 62, CTX)) == errno.ESTALE
    assert await _fuse_errno(ops.lookup(file_ino, b"x", CTX)) == errno.ENOTDIR
    assert await _fuse_errno(ops.opendir(file_ino, CTX)) == errno.ENOTDIR
    assert await _fuse_errno(ops.open(dir_ino, os.O_RDONLY, CTX)) == errno.EISDIR
    assert await _fuse_errno(ops.open(file_ino, os.O_RDWR, CTX)) == errno.EROFS
    assert await _fuse_errno(ops.read(999, 0, 1)) == errno.EBADF
    assert await _fuse_errno(ops.readdir(999, 0, cast(pyfuse3.ReaddirToken, None))) == errno.EBADF
    assert await _fuse_errno(ops.getxattr(dir_ino, b"user.nope", CTX)) == errno.ENODATA
    assert await _fuse_errno(ops.readlink(file_ino, CTX)) == errno.EINVAL
    writes = [
        ops.setattr(file_ino, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX),
        ops.mknod(ROOT_INO, b"n", 0o644, 0, CTX),
        ops.mkdir(ROOT_INO, b"d", 0o755, CTX),
        ops.unlink(ROOT_INO, b"a.txt", CTX),
        ops.rmdir(ROOT_INO, b"dir", CTX),
        ops.symlink(ROOT_INO, b"l", b"a.txt", CTX),
        ops.rename(ROOT_INO, b"a.txt", ROOT_INO, b"b.txt", 0, CTX),
        ops.link(file_ino, ROOT_INO, b"h", CTX),
        ops.write(1, 0, b"x"),
        ops.create(ROOT_INO, b"c", 0o644, os.O_WRONLY, CTX),
        ops.setxattr(file_ino, b"user.x", b"1", CTX),
        ops.removexattr(file_ino, b"user.x", CTX),
    ]
    for coro in writes:
        assert await _fuse_errno(coro) == errno.EROFS
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.trio
async def test_adapter_survives_unexpected_exceptions(
    fs: ArchiveFS, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ops = Operations(fs)

    def broken(*args: object) -> Any:
        raise ZeroDivisionError("a bug")

    for name in ("getattr", "lookup", "opendir", "open", "statfs", "getxattr", "listxattr"):
        monkeypatch.setattr(fs, name, broken)

    async def broken_read(*args: object) -> bytes:
        raise RuntimeError("a bug in the read path")

    monkeypatch.setattr(fs, "read", broken_read)
    with caplog.at_level(logging.ERROR, logger="blobfs.fuse"):
        calls = [
            ops.getattr(ROOT_INO, CTX),
            ops.lookup(ROOT_INO, b"a.txt", CTX),
            ops.opendir(ROOT_INO, CTX),
            ops.open(2, os.O_RDONLY, CTX),
            ops.read(1, 0, 10),
            ops.statfs(CTX),
            ops.getxattr(ROOT_INO, b"user.blobfs.source", CTX),
            ops.listxattr(ROOT_INO, CTX),
        ]
        for coro in calls:
            assert await _fuse_errno(coro) == errno.EIO
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == len(calls)
    assert fs.stats.errors == len(calls)


# ------------------------------------------------------------------------------------- options


def test_options_parse_and_refuse() -> None:
    o = parse_options(["uid=0,gid=0,umask=022", "cache_size=2G,cache_dir=/tmp/c", "allow_other"])
    assert (o.uid, o.gid, o.umask, o.cache_size, o.cache_dir, o.allow_other) == (
        0,
        0,
        0o022,
        2 << 30,
        "/tmp/c",
        True,
    )
    # What mount(8) and mount.fuse3 pass along is accepted; the mount stays ro,nodev,nosuid.
    o = parse_options(
        ["rw,dev,suid,exec,_netdev,nofail,defaults,noauto,x-systemd.automount,user,noatime"],
        helper=True,
    )
    assert o.kernel_options("ref,with,commas") >= {"ro", "nodev", "nosuid"}
    assert "rw" not in o.kernel_options("r")
    assert "dev" not in o.kernel_options("r")
    assert "fsname=ref_with_commas" in o.kernel_options("ref,with,commas")
    assert parse_options(["noexec"]).noexec
    assert parse_options(["uid=root"]).uid == 0
    assert parse_options(["log_level=DEBUG,debug,offline"]).log_level == "debug"
    for bad, words in [
        (["rw"], "read-only"),
        (["frobnicate"], "unknown mount option"),
        (["uid=nosuchuser-xyz"], "no such user"),
        (["umask=999"], "octal"),
        (["cache_size=lots"], "not a size"),
        (["log_level=loud"], "log_level"),
        (["uid"], "needs a value"),
        (["allow_other=1"], "takes no value"),
    ]:
        with pytest.raises(MountError, match=words):
            parse_options(bad)


class _Requests(BytesSource):
    """An in-memory data blob (not a local file, like a registry's) counting its reads."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.requests = 0

    def read_at(self, offset: int, length: int) -> bytes:
        self.requests += 1
        return super().read_at(offset, length)


@pytest.mark.trio
async def test_reading_files_in_order_loads_the_next_ones_in_batches(
    archive_dir: Path, tree: tuple[Path, dict[str, bytes]]
) -> None:
    index = (archive_dir / "index.blob").read_bytes()
    src = _Requests((archive_dir / "data.blob").read_bytes())
    with Archive(index, src, cache=MemoryCache()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))

        async def cat(path: str) -> bytes:
            fh = fs.open(_ino(fs, path), os.O_RDONLY)
            try:
                return bytes(await fs.read(fh, 0, 1 << 20))
            finally:
                await fs.release(fh)

        # One file read alone (even twice) fetches just that file.
        for _ in range(2):
            assert await cat("many/f050") == b"50"
        assert src.requests == 1
        # A program reading the directory in order: a few requests for 100 files.
        src.requests = 0
        for i in range(100):
            assert await cat(f"many/f{i:03d}") == b"%d" % i
        assert src.requests <= 5
        # ... and on into the next directories, in archive order, every byte right.
        for path in sorted(p for p in tree[1] if not p.startswith(("many/", "a"))):
            assert await cat(path) == tree[1][path]
    assert src.requests <= 12


async def _until_loaded(archive: Archive, path: str) -> None:
    """Wait (at most 5 s) until loading ahead holds the verified content of ``path``."""
    entry = archive.index.entry(path)
    with trio.fail_after(5):
        while not archive._scan.ready(entry):  # noqa: ASYNC110 (set by a pool thread)
            await trio.sleep(0.001)


@pytest.mark.trio
async def test_opening_a_file_loaded_ahead_stores_it_in_the_page_cache(
    archive_dir: Path, tree: tuple[Path, dict[str, bytes]]
) -> None:
    """A file whose verified content loading ahead holds is handed to the kernel's page cache
    when it is opened (``push``), and counts as read for loading ahead: the program's reads
    are answered by the kernel, so no read reports it. Not while another handle of the file is
    open (a read in progress holds its pages locked), not for an ``O_DIRECT`` open (its reads
    bypass the page cache), not twice, and never again once the kernel has no such call."""
    files = tree[1]
    index = (archive_dir / "index.blob").read_bytes()
    src = _Requests((archive_dir / "data.blob").read_bytes())
    pushed: dict[int, bytes] = {}
    fail: list[OSError] = []

    def push(ino: int, data: Buffer) -> None:
        if fail:
            raise fail[0]
        assert ino not in pushed
        pushed[ino] = bytes(data)

    with Archive(index, src, cache=MemoryCache()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"), push=push)

        async def cat(path: str, *, wait: bool = True, flags: int = os.O_RDONLY) -> None:
            if wait:
                await _until_loaded(archive, path)
            before = fs.stats.pushes
            fh = fs.open(_ino(fs, path), flags)
            try:
                if fs.stats.pushes == before:  # else the kernel answers from its page cache
                    assert bytes(await fs.read(fh, 0, 1 << 20)) == files[path]
            finally:
                await fs.release(fh)

        names = [f"many/f{i:03d}" for i in range(100)]
        early = fs.open(_ino(fs, names[90]), os.O_RDONLY)  # before anything is loaded
        for name in names[:2]:  # nothing loaded ahead yet: read through the daemon
            await cat(name, wait=False)
        for name in names[2:89]:
            await cat(name)
        await cat(names[89], flags=os.O_RDONLY | os.O_DIRECT)  # bypasses the page cache
        # Open already: its content stays with loading ahead, for the reads of that handle.
        await _until_loaded(archive, names[90])
        await cat(names[90], wait=False)
        await fs.release(early)
        assert _ino(fs, names[90]) not in pushed

        assert {_ino(fs, n): files[n] for n in names[2:89]} == pushed
        assert fs.stats.pushes == 87
        assert fs.stats.bytes_pushed == sum(len(files[n]) for n in names[2:89])
        assert fs.stats.reads == 4
        assert src.requests <= 8  # the opens kept the scan going: batches, not files

        # Read again (the kernel asking for pages back): loaded ahead once more, but what went
        # to the kernel whole before (pushed, or read up to its end) is not pushed again.
        for name in names[:2]:
            await cat(name, wait=False)
        for name in names[2:7]:
            await cat(name)  # loaded, and read through the daemon: push() would fail the test
        assert fs.stats.pushes == 87
        assert fs.stats.reads == 11

        # A kernel without the call: the file is read the ordinary way, and pushing stops.
        fail.append(OSError(errno.ENOSYS, "not supported"))
        await cat(names[91])
        fail.clear()
        await cat(names[92])
        assert fs.stats.pushes == 87
        assert fs.stats.reads == 13


@pytest.mark.trio
async def test_an_empty_archive_mounts_as_an_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    create_blob(tmp_path / "src", tmp_path / "out").close()
    with open_file(tmp_path / "out/index.blob", tmp_path / "out/data.blob") as archive:
        fs = ArchiveFS(archive, SourceInfo("empty"))
        root = fs.getattr(ROOT_INO)
        assert stat.S_ISDIR(root.mode)
        assert root.nlink == 2
        fh = fs.opendir(ROOT_INO)
        assert [n for n, _, _ in fs.readdir(fh, 0)] == [b".", b".."]
        assert fs.lookup(ROOT_INO, b"x") is None
        assert fs.statfs().files == 1
        assert json.loads(fs.getxattr(ROOT_INO, b"user.blobfs.stats"))["files"] == 0


def test_counting_source_and_cache(archive_dir: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from blobfs.core import FileSource
    from blobfs.core.cache import MemoryCache
    from blobfs.fuse._counting import CountingCache, CountingSource, FetchCounter

    src = FetchCounter().wrap(FileSource(archive_dir / "data.blob"))
    assert isinstance(src, CountingSource)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: src.read_at(i, 10), range(200)))
    assert src.stats.source_requests == 200
    assert src.stats.source_bytes == 2000
    src.close()
    cache = CountingCache(MemoryCache())
    assert cache.get(b"\x01" * 32) is None
    cache.put(b"\x01" * 32, io.BytesIO(b"data"))
    f = cache.get(b"\x01" * 32)
    assert f is not None
    f.close()
    assert (cache.hits, cache.misses) == (1, 1)


def test_stops_outside_the_serving_loop_are_noted_and_stop_the_daemon_before_it_mounts(
    tmp_path: Path, fs: ArchiveFS
) -> None:
    """Between the set-up and the serving loop (and after it, while the cache is written),
    SIGTERM and SIGINT are noted instead of killing the process, SIGHUP is ignored; a stop noted
    before the loop's own receiver took over makes it stop without mounting; trio's teardown
    ignores them. The handlers that were there before come back."""
    import signal

    from blobfs.fuse._daemon import _Daemon, _StopsNoted
    from blobfs.fuse._options import MountOptions

    before = signal.getsignal(signal.SIGTERM)
    stops = _StopsNoted()
    stops.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stops.received == [signal.SIGTERM]
        mnt = tmp_path / "mnt"
        mnt.mkdir()
        daemon = _Daemon(fs, os.fspath(mnt), MountOptions(), None, None, None, stops)
        with pytest.raises(MountError, match=r"SIGTERM before .* was mounted"):
            trio.run(daemon.run)
        assert not os.path.ismount(mnt)
        # Ignored from the moment trio's receiver let go, through trio's teardown (whose
        # wakeup socket a handled signal would write to once closed); mount() notes them again.
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        stops.install()
        assert signal.getsignal(signal.SIGTERM) == stops._note
    finally:
        stops.restore()
    assert signal.getsignal(signal.SIGTERM) == before
