"""The mount's metadata path without a kernel: the index's attribute columns, listings made in
bulk, and the pyfuse3 form of attributes.

``Index.attributes`` reads mode, owner, group, size and mtime from the entry tables without
decoding entries, a block of positions at a time; ``ArchiveFS`` makes a listing's attributes
from them a page at a time, and a single node's from ``Index.attributes_at``. Both must say
exactly what the decoded entries say, for any index a writer may produce.
"""

from __future__ import annotations

import ctypes
import hashlib
import stat
import struct
from pathlib import Path
from typing import cast

import numpy as np
import pyfuse3
import pytest

from blobfs.core import Archive, BytesSource, Compression, Entry, Index, encode_index
from blobfs.fuse import SourceInfo
from blobfs.fuse import _entries as entries
from blobfs.fuse import _fs as fs_module
from blobfs.fuse import _ops as ops_module
from blobfs.fuse import _records as records_module
from blobfs.fuse._fs import DIR_MODE, SIZE_MAX, ArchiveFS, Attr
from blobfs.fuse._inodes import ROOT_INO
from blobfs.fuse._ops import TIMEOUT, Operations, entry_attributes

CTX = cast(pyfuse3.RequestContext, None)
DIGEST = hashlib.sha256(b"data").digest()
DATA_SIZE = 1 << 20
HUGE = (1 << 64) - 1
"""A size no file has; zstd entries may claim it (a 0-byte payload), so the columns must keep
all 64 bits."""


def _entry(path: str, i: int, **kw: object) -> Entry:
    fields: dict[str, object] = {
        "path": path,
        "data_offset": 0,
        "data_size": 0,
        "original_size": 0,
        "hash": hashlib.sha256(path.encode()).digest(),
        "mode": 0o644,
        "uid": 1000 + i % 3,
        "gid": 2000 + i % 5,
        "mtime_ns": 1_700_000_000_000_000_000 + i,
        "compression": Compression.NONE,
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def _mixed_entries() -> list[Entry]:
    """Entries whose tables use different vtables (zero fields are left out by the writer,
    zstd and chunked entries have more fields), with extreme values."""
    return [
        _entry("a/b/c/deep", 0, mode=0o755, original_size=5, data_size=5),
        _entry("a/x", 1, uid=0, gid=0, mode=0, mtime_ns=-1_500_000_000),  # before 1970
        _entry("a-b", 2, original_size=9, data_size=4, compression=Compression.ZSTD),
        _entry("a.txt", 3, original_size=HUGE, compression=Compression.ZSTD),
        _entry(
            "big",
            4,
            original_size=200_000,
            data_size=200_000,
            chunk_size=65536,
            chunk_hashes=bytes(32) * 4,
        ),
        _entry("z/y", 5, mode=0o600, uid=(1 << 32) - 1, gid=(1 << 32) - 2),
    ]


def _check_columns(index: Index, positions: list[int]) -> None:
    cols = index.attributes(positions)
    entries = index.entries_at(positions) if positions else []
    assert cols.mode.tolist() == [e.mode for e in entries]
    assert cols.uid.tolist() == [e.uid for e in entries]
    assert cols.gid.tolist() == [e.gid for e in entries]
    assert cols.size.tolist() == [e.original_size for e in entries]
    assert cols.mtime_ns.tolist() == [e.mtime_ns for e in entries]
    for p, e in zip(positions, entries, strict=True):
        assert index.attributes_at(p) == (e.mode, e.uid, e.gid, e.original_size, e.mtime_ns)


def test_attribute_columns_match_the_decoded_entries() -> None:
    index = Index(encode_index(_mixed_entries(), data_size=DATA_SIZE, data_hash=DIGEST))
    n = len(index)
    _check_columns(index, list(range(n)))
    _check_columns(index, [n - 1, 0, 3, 3, 1])  # any order, repeats: rows in the order asked
    _check_columns(index, [])
    assert index.attributes(np.arange(n, dtype=np.int64)).size.dtype == np.uint64


def test_attribute_columns_in_go_order() -> None:
    """An index whose vector is not bytewise sorted (Go's writer): positions are sorted order,
    and the columns follow them, not the wire order."""
    entries = _mixed_entries()
    raw = bytearray(encode_index(entries, data_size=DATA_SIZE, data_hash=DIGEST))
    root = struct.unpack_from("<I", raw, 0)[0]
    vt = root - struct.unpack_from("<i", raw, root)[0]
    field = struct.unpack_from("<H", raw, vt + 4 + 2 * 2)[0]  # Index slot 2: entries
    vec = root + field + struct.unpack_from("<I", raw, root + field)[0]
    count = struct.unpack_from("<I", raw, vec)[0]
    # Reverse the vector of offsets (each is relative to its own slot, so recompute them).
    slots = [vec + 4 + 4 * k for k in range(count)]
    tables = [s + struct.unpack_from("<I", raw, s)[0] for s in slots]
    for s, t in zip(slots, reversed(tables), strict=True):
        struct.pack_into("<I", raw, s, t - s)
    index = Index(bytes(raw))
    assert not index.sorted_on_wire
    _check_columns(index, list(range(len(index))))


def test_attribute_columns_across_blocks() -> None:
    """More files than one block of columns (16,384): blocks filled on demand, in any order,
    by a call spanning several of them or by single positions."""
    n = 40_000
    entries = [
        _entry(
            f"d{i // 1000:02d}/f{i:05d}",
            i,
            original_size=i * 7,
            data_size=i % 7,
            compression=Compression.ZSTD,
        )
        for i in range(n)
    ]
    index = Index(encode_index(entries, data_size=DATA_SIZE, data_hash=DIGEST))
    assert index.attributes_at(n - 1)[3] == (n - 1) * 7  # the last block first, alone
    _check_columns(index, [5, 39_999, 20_000, 16_383, 16_384])
    _check_columns(index, list(range(0, n, 97)))
    for lo, hi in ((0, 0), (0, n), (16_000, 16_400), (39_999, 40_000)):
        run = index.attributes_range(lo, hi)
        every = index.attributes(list(range(lo, hi)))
        for field in run._fields:
            assert getattr(run, field).tolist() == getattr(every, field).tolist()
    for lo, hi in ((-1, 3), (5, n + 1), (7, 6)):
        with pytest.raises(IndexError):
            index.attributes_range(lo, hi)
    for bad in ([-1], [n], [0, n]):
        with pytest.raises(IndexError):
            index.attributes(bad)
    for i in (-1, n):
        with pytest.raises(IndexError):
            index.attributes_at(i)


def test_subdirectory_counts() -> None:
    paths = ["a/b/c/f", "a/b/g", "a/d/h", "a/i", "e", "j/k"]
    index = Index(
        encode_index([_entry(p, 0) for p in paths], data_size=DATA_SIZE, data_hash=DIGEST)
    )
    counts = {d: index.subdir_count(d) for d in (b"", b"a", b"a/b", b"a/b/c", b"a/d", b"j")}
    assert counts == {b"": 2, b"a": 2, b"a/b": 1, b"a/b/c": 0, b"a/d": 0, b"j": 0}
    assert index.subdir_count(b"e") == 0  # a file
    assert index.subdir_count(b"nope") == 0


# ---------------------------------------------------------------------------- listings


def _archive(entries: list[Entry]) -> Archive:
    index = encode_index(entries, data_size=DATA_SIZE, data_hash=DIGEST)
    return Archive(index, BytesSource(bytes(DATA_SIZE)))


def _tree_entries() -> list[Entry]:
    """One directory mixing files and subdirectories whose name order differs from path order
    (``"s-1" < "s.txt" < "s/..."``), more children than a page, and nested directories."""
    names = [f"top/f{i:03d}" for i in range(40)]
    names += [f"top/s{i:02d}/x" for i in range(12)]
    names += ["top/s-1", "top/s.txt", "top/s/deep/er/file", "top/s/z", "top/t/u"]
    names += ["root-file", "w/v"]
    names += [f"w/leaf/g{i:02d}" for i in range(20)]  # files only: one run of positions
    return [
        _entry(
            p,
            i,
            mode=0o640 if i % 2 else 0o755,
            original_size=i * 1000 + 1,
            data_size=1,
            compression=Compression.ZSTD,
        )
        for i, p in enumerate(sorted(names))
    ]


def _entries(fs: ArchiveFS, ino: int) -> dict[bytes, Attr | int]:
    fh = fs.opendir(ino)
    try:
        return {name: attr for name, attr, _ in fs.readdir(fh, 0)}
    finally:
        fs.releasedir(fh)


def _listing(fs: ArchiveFS, ino: int) -> dict[bytes, Attr]:
    """The listing of ``ino`` with the attributes of every child."""
    out = {}
    for name, attr in _entries(fs, ino).items():
        assert isinstance(attr, Attr), name
        out[name] = attr
    return out


@pytest.mark.parametrize("few", [0, 1000], ids=["numpy-pages", "row-by-row"])
@pytest.mark.parametrize(
    ("uid", "gid", "umask"), [(None, None, None), (7, 8, 0o027), (0, None, 0o777)]
)
def test_listing_attributes_equal_single_node_attributes(
    monkeypatch: pytest.MonkeyPatch, few: int, uid: int | None, gid: int | None, umask: int | None
) -> None:
    """The bulk paths (pages of 7 here, made with numpy or row by row, runs of files from
    blocks of 6) and the single-node path (``getattr`` of an inode nobody listed) agree on
    every field, with and without the owner/umask options."""
    monkeypatch.setattr(fs_module, "READDIR_PAGE", 7)
    monkeypatch.setattr(records_module, "_FEW", few)
    monkeypatch.setattr(records_module, "FILE_BLOCK", 6)  # runs of files across blocks
    entries = _tree_entries()
    by_path = {e.path: e for e in entries}
    with _archive(entries) as archive:
        listed = ArchiveFS(archive, SourceInfo("x"), uid=uid, gid=gid, umask=umask)
        single = ArchiveFS(archive, SourceInfo("x"), uid=uid, gid=gid, umask=umask)
        todo = [(ROOT_INO, "")]
        checked = 0
        while todo:
            ino, prefix = todo.pop()
            for name, attr in _listing(listed, ino).items():
                if name in (b".", b".."):
                    continue
                path = prefix + name.decode()
                assert single.getattr(attr.ino) == attr, path
                owner = by_path.get(path) or next(
                    e for e in entries if e.path.startswith(path + "/")
                )  # a directory shows its first file's owner and mtime
                assert attr.uid == (owner.uid if uid is None else uid)
                assert attr.gid == (owner.gid if gid is None else gid)
                assert attr.mtime_ns == owner.mtime_ns
                keep = 0o777 & ~(umask or 0)
                if stat.S_ISDIR(attr.mode):
                    assert attr.mode == stat.S_IFDIR | (DIR_MODE & keep)
                    subdirs = {
                        e.path[len(path) + 1 :].split("/")[0]
                        for e in entries
                        if e.path.startswith(path + "/") and "/" in e.path[len(path) + 1 :]
                    }
                    assert attr.nlink == 2 + len(subdirs), path
                    assert (attr.size, attr.blocks) == (0, 0)
                    todo.append((attr.ino, path + "/"))
                else:
                    e = by_path[path]
                    assert attr.mode == stat.S_IFREG | (e.mode & keep)
                    assert (attr.nlink, attr.size) == (1, e.original_size)
                    assert attr.blocks == (e.original_size + 511) // 512
                checked += 1
        assert checked == len(entries) + archive.index.dir_count
        top = _listing(listed, _lookup(listed, "top"))
        names = [n for n in top if n not in (b".", b"..")]
        assert names == sorted(names)
        assert len(names) > 7 * 3  # several pages


def _lookup(fs: ArchiveFS, path: str) -> int:
    ino = ROOT_INO
    for part in path.split("/"):
        attr = fs.lookup(ino, part.encode())
        assert attr is not None
        ino = attr.ino
    return ino


@pytest.mark.parametrize("few", [0, 1000], ids=["numpy-pages", "row-by-row"])
def test_a_size_past_off_t_shows_as_the_largest_off_t(
    monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """``st_size`` is signed: a zstd entry may claim up to 2**64 - 1 bytes (a hostile index);
    stat shows 2**63 - 1 (no overflow in the listing, the adapter or the kernel)."""
    monkeypatch.setattr(records_module, "_FEW", few)
    entries = [_entry(n, 0, original_size=HUGE, compression=Compression.ZSTD) for n in "ab"]
    with _archive(entries) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        listed = _listing(fs, ROOT_INO)[b"a"]
        assert listed.size == SIZE_MAX
        assert listed.blocks == (SIZE_MAX + 511) // 512
        assert fs.getattr(listed.ino) == listed
        single = fs.lookup(ROOT_INO, b"b")
        assert single is not None
        assert single.size == SIZE_MAX
        assert entry_attributes(single).st_size == SIZE_MAX


def test_dot_entries_and_the_root() -> None:
    with _archive(_tree_entries()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        top = _lookup(fs, "top/s")
        listing = _listing(fs, top)
        assert listing[b"."] == fs.getattr(top)
        assert listing[b".."] == fs.getattr(_lookup(fs, "top"))
        root = _listing(fs, ROOT_INO)
        assert root[b"."] == root[b".."] == fs.getattr(ROOT_INO)
        assert fs.getattr(ROOT_INO).nlink == 2 + 2  # top, w
        assert fs.getattr(_lookup(fs, "w")).nlink == 2 + 1  # leaf


def test_a_listed_subdirectory_opens_without_searching_the_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Directories seen in their parent's listing keep their node and parent: a walk opening
    them next makes no search of the index, and their listings (``..`` included) are the same
    as on a file system that found them by searching."""
    with _archive(_tree_entries()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        fresh = ArchiveFS(archive, SourceInfo("x"))
        top = _lookup(fs, "top")
        subdirs = {
            name: attr.ino
            for name, attr in _listing(fs, top).items()
            if stat.S_ISDIR(attr.mode) and name not in (b".", b"..")
        }
        assert len(subdirs) > 10
        want = {name: _listing(fresh, ino) for name, ino in subdirs.items()}

        def no_search(*args: object) -> None:
            raise AssertionError("the index was searched")

        monkeypatch.setattr(type(archive.index), "first_below", no_search)
        monkeypatch.setattr(type(archive.index), "path_at", no_search)
        for name, ino in subdirs.items():
            assert _listing(fs, ino) == want[name]


# ---------------------------------------------------------------------------- pyfuse3 form


@pytest.mark.parametrize(
    "attr",
    [
        Attr(2, stat.S_IFREG | 0o644, 1, 0, 0, 0, 0, 0),
        Attr(5, stat.S_IFREG | 0o600, 1, 1000, 1001, 12_345, 25, 1_700_000_000_123_456_789),
        Attr(1 << 40, stat.S_IFDIR | 0o555, 7, (1 << 32) - 1, 3, 0, 0, -1_500_000_001),
        Attr(9, stat.S_IFREG, 1, 0, 5, SIZE_MAX, 1 << 54, 1),
    ],
)
def test_entry_attributes_carry_every_field(attr: Attr) -> None:
    """Fields left at pyfuse3's defaults are not set: what the kernel gets is still all of
    them."""
    e = entry_attributes(attr)
    got = (
        e.st_ino,
        e.st_mode,
        e.st_nlink,
        e.st_uid,
        e.st_gid,
        e.st_size,
        e.st_blocks,
        e.st_mtime_ns,
    )
    assert got == tuple(attr)
    assert e.st_atime_ns == e.st_ctime_ns == attr.mtime_ns
    assert e.st_blksize == fs_module.BLOCK_SIZE
    assert (e.entry_timeout, e.attr_timeout) == (TIMEOUT, TIMEOUT)
    assert (e.generation, e.st_rdev) == (0, 0)
    assert isinstance(cast(object, e), pyfuse3.EntryAttributes)


_ATTRS = [
    Attr(2, stat.S_IFREG | 0o644, 1, 0, 0, 0, 0, 0),
    Attr(5, stat.S_IFREG | 0o600, 1, 1000, 1001, 12_345, 25, 1_700_000_000_123_456_789),
    Attr(1 << 40, stat.S_IFDIR | 0o555, 7, (1 << 32) - 1, 3, 0, 0, -1_500_000_001),
    Attr(9, stat.S_IFREG, 1, 0, 5, SIZE_MAX, 1 << 54, 1),
]


def _struct_of(e: pyfuse3.EntryAttributes) -> bytes:
    """The ``fuse_entry_param`` libfuse copies out of ``e`` (after the object header)."""
    return ctypes.string_at(id(e) + object.__basicsize__, entries.ENTRY_SIZE)


@pytest.mark.parametrize("attr", _ATTRS)
def test_records_are_the_struct_pyfuse3_fills(attr: Attr) -> None:
    """A record is byte for byte what pyfuse3 makes of the same fields, packed row by row or
    in columns, and reads back as the same attributes (a time before 1970 included)."""
    record = entries.pack(attr)
    assert record == _struct_of(entry_attributes(attr))
    assert entries.unpack(record) == (attr.ino, attr)
    assert entries.unpack(entries.pack(attr, nodeid=0)) == (0, attr)
    columns = entries.pack_columns(
        [attr.ino, attr.ino + 1],
        np.array([attr.mode] * 2, dtype=np.uint32),
        attr.nlink,
        attr.uid,
        np.array([attr.gid] * 2, dtype=np.uint32),
        np.array([attr.size] * 2, dtype=np.uint64),
        np.array([attr.blocks] * 2, dtype=np.uint64),
        np.array([attr.mtime_ns] * 2, dtype=np.int64),
    ).tobytes()
    assert columns == record + entries.pack(attr._replace(ino=attr.ino + 1))


def test_bare_records_keep_inode_and_type_only_for_files() -> None:
    nodeid, attr = entries.unpack(entries.BARE_FILE)
    assert (nodeid, attr.ino, stat.S_IFMT(attr.mode)) == (0, 0, stat.S_IFREG)
    word = entries.INO_WORD * 8
    assert entries.pack(attr._replace(ino=7))[word : word + 8] == (7).to_bytes(8, "little")
    full = b"".join(map(entries.pack, _ATTRS[1:3]))
    bare = entries.bare_records(full, [False, True])
    assert entries.unpack(bare, 0) == (0, _ATTRS[1])
    assert entries.unpack(bare, entries.ENTRY_SIZE) == (_ATTRS[2].ino, _ATTRS[2])


@pytest.mark.trio
@pytest.mark.parametrize("writer", [True, False], ids=["records", "fields-one-by-one"])
async def test_adapter_sends_each_child_the_struct_of_its_attributes(
    monkeypatch: pytest.MonkeyPatch, writer: bool
) -> None:
    """Through the one reused ``EntryAttributes``, every child of a listing (pages of numpy
    records and row by row) reaches ``readdir_reply`` as the struct ``entry_attributes``
    makes of its attributes; so does it where the layout check fails (an object per child,
    and never a bare file)."""
    sent: list[tuple[bytes, bytes, int]] = []

    def reply(token: object, name: bytes, e: pyfuse3.EntryAttributes, next_id: int) -> bool:
        sent.append((name, _struct_of(e), next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    monkeypatch.setattr(fs_module, "READDIR_PAGE", 7)
    if not writer:
        monkeypatch.setattr(ops_module._EntryWriter, "make", classmethod(lambda cls: None))
    with _archive(_tree_entries()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        ops = Operations(fs)
        assert fs.bare_files == writer
        fs.bare_files = False
        for path in ("top", "w/leaf", "top/s"):
            ino = _lookup(fs, path)
            want = _listing(ArchiveFS(archive, SourceInfo("x")), ino)
            sent.clear()
            fh = await ops.opendir(ino, CTX)
            await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
            await ops.releasedir(fh)
            assert [n for n, _, _ in sent] == list(want)
            assert [o for _, _, o in sent] == list(range(1, len(want) + 1))
            for name, raw, _ in sent:
                assert raw == _struct_of(entry_attributes(want[name])), (path, name)


def test_listing_attributes_of_a_real_archive(tmp_path: Path) -> None:
    """``create_blob`` output (its own vtables) lists with the attributes of the files."""
    from blobfs.core import create_blob, open_file

    src = tmp_path / "src"
    (src / "d/e").mkdir(parents=True)
    (src / "d/a").write_bytes(b"abc")
    (src / "d/e/b").write_bytes(b"x" * 1000)
    (src / "c").write_bytes(b"")
    (src / "d/a").chmod(0o604)
    create_blob(src, tmp_path / "arch", compression=Compression.ZSTD).close()
    with open_file(tmp_path / "arch/index.blob", tmp_path / "arch/data.blob") as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        d = _listing(fs, _lookup(fs, "d"))
        assert d[b"a"].size == 3
        assert stat.S_IMODE(d[b"a"].mode) == 0o604
        assert d[b"a"].mtime_ns == (src / "d/a").stat().st_mtime_ns
        assert stat.S_ISDIR(d[b"e"].mode)
        assert d[b"e"].nlink == 2
        assert fs.getattr(ROOT_INO).nlink == 3


# ---------------------------------------------------------------------------- bare files


def test_bare_listings_give_files_by_inode_until_a_file_is_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``bare_files``, small directories list their files as inode numbers (what
    ``find`` needs), directories with attributes; the first lookup of a file ends that."""
    with _archive(_tree_entries()) as archive:
        full = ArchiveFS(archive, SourceInfo("x"))
        fs = ArchiveFS(archive, SourceInfo("x"))
        assert not fs.bare_files  # off unless the adapter can answer bare entries
        fs.bare_files = True
        top = _lookup(fs, "top")  # directories only: no file looked up
        assert fs.bare_files
        bare, want = _entries(fs, top), _listing(full, top)
        assert list(bare) == list(want)
        for name, got in bare.items():
            attr = want[name]
            if stat.S_ISDIR(attr.mode):
                assert got == attr
            else:
                assert got == attr.ino  # an int: the file's inode number only
        # A big directory is listed with attributes (a stat of all would cost a lookup each).
        monkeypatch.setattr(fs_module, "BARE_MAX", 10)
        assert _listing(fs, top) == want
        monkeypatch.undo()
        # A file looked up by name: from now on, every listing carries attributes.
        assert isinstance(_entries(fs, _lookup(fs, "w/leaf"))[b"g00"], int)
        _lookup(fs, "w/leaf/g03")
        assert not fs.bare_files
        assert _listing(fs, _lookup(fs, "w/leaf")) == _listing(full, _lookup(full, "w/leaf"))
        assert _listing(fs, top) == want


@pytest.mark.trio
async def test_adapter_answers_bare_files_without_a_node_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bare file goes to the kernel with node id 0 (no inode made, nothing cached) and its
    real inode number and type in the directory entry; a directory with its attributes."""
    replies: list[tuple[bytes, int, int, int, int]] = []

    def reply(token: object, name: bytes, e: pyfuse3.EntryAttributes, next_id: int) -> bool:
        # What libfuse copies: node id (= the st_ino getter) and attr.st_ino (d_ino, 24 bytes
        # into the fuse_entry_param that follows the object header).
        d_ino = ctypes.c_uint64.from_address(id(e) + object.__basicsize__ + 24).value
        replies.append((name, e.st_ino, d_ino, e.st_mode, e.st_size))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    with _archive(_tree_entries()) as archive:
        fs = ArchiveFS(archive, SourceInfo("x"))
        full = ArchiveFS(archive, SourceInfo("x"))
        ops = Operations(fs)
        assert fs.bare_files  # this pyfuse3's EntryAttributes has the layout checked for
        # top mixes files and subdirectories; w/leaf is a run of files (one shared record).
        for path in ("w/leaf", "top"):
            ino = _lookup(fs, path)
            want = _listing(full, ino)
            replies.clear()
            fh = await ops.opendir(ino, CTX)
            await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
            await ops.releasedir(fh)
            assert [r[0] for r in replies] == list(want)
            for name, node_id, d_ino, mode, _ in replies:
                attr = want[name]
                assert d_ino == attr.ino
                assert stat.S_IFMT(mode) == stat.S_IFMT(attr.mode)
                if stat.S_ISDIR(attr.mode) or name in (b".", b".."):
                    assert node_id == attr.ino
                else:
                    assert node_id == 0
        top = _lookup(fs, "top")
        # Once a file was looked up, files carry their attributes (and a node id) again.
        await ops.lookup(top, b"f000", CTX)
        replies.clear()
        fh = await ops.opendir(top, CTX)
        await ops.readdir(fh, 0, cast(pyfuse3.ReaddirToken, None))
        await ops.releasedir(fh)
        assert [(r[0], r[1], r[4]) for r in replies] == [
            (n, a.ino, a.size) for n, a in want.items()
        ]
