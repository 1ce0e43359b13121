"""The index codec: round trips, lookups in any entry order, and malformed input."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blobfs.core import Compression, DirEntry, DirInfo, Entry, Index, encode_index
from blobfs.errors import CorruptIndex, InvalidPath, IsADirectory, NotADirectory, NotFound

DIGEST = hashlib.sha256(b"data").digest()


def entry(path: str, offset: int = 0, size: int = 0, **kw: object) -> Entry:
    fields: dict[str, object] = {
        "path": path,
        "data_offset": offset,
        "data_size": size,
        "original_size": size,
        "hash": hashlib.sha256(path.encode()).digest(),
        "mode": 0o644,
        "uid": 1000,
        "gid": 1000,
        "mtime_ns": 1_700_000_000_000_000_000,
        "compression": Compression.NONE,
    }
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def build(paths: list[str], sizes: list[int] | None = None) -> bytes:
    sizes = sizes or [10] * len(paths)
    entries, off = [], 0
    for p, n in zip(sorted(paths, key=lambda s: s.encode()), sizes, strict=True):
        entries.append(entry(p, off, n))
        off += n
    return encode_index(entries, data_size=off, data_hash=DIGEST)


TREE = ["a/x", "a/y", "a-b", "a.txt", "b", "c/d/e/f", "c/d/g", "z z/ü"]


def test_round_trip_keeps_every_field() -> None:
    original = [
        entry("dir/file", 0, 5, mode=0o755, uid=7, gid=8, mtime_ns=-5),
        entry("x", 5, 3, original_size=9, compression=Compression.ZSTD),
        entry(
            "big",
            8,
            200_000,
            chunk_size=65536,
            chunk_hashes=bytes(range(32)) * 4,
        ),
    ]
    idx = Index(encode_index(original, data_size=200_008, data_hash=DIGEST))
    assert sorted(idx.walk()) == sorted(original)
    assert idx.data_hash == DIGEST
    assert idx.data_size == 200_008
    assert idx.features & 1
    assert idx.sorted_on_wire


def test_writer_is_deterministic_and_sorts_bytewise() -> None:
    shuffled = TREE[:]
    random.Random(1).shuffle(shuffled)
    a = encode_index([entry(p) for p in shuffled], data_size=0, data_hash=DIGEST)
    b = encode_index([entry(p) for p in TREE], data_size=0, data_hash=DIGEST)
    assert a == b
    assert list(Index(a).paths()) == sorted(TREE, key=str.encode)


def test_lookup_stat_listdir() -> None:
    idx = Index(build(TREE))
    assert len(idx) == len(TREE)
    assert idx.dir_count == 5  # a, c, c/d, c/d/e, "z z"
    e = idx.lookup("/a//x/")
    assert e is not None
    assert e.path == "a/x"
    assert idx.lookup("a") is None
    assert idx.lookup("nope") is None
    assert isinstance(idx.stat("c/d"), DirInfo)
    assert isinstance(idx.stat(""), DirInfo)
    assert idx.stat("b").size == 10
    assert idx.is_dir("c")
    assert idx.is_dir("/")
    assert not idx.is_dir("b")
    names = [(d.name, d.is_dir) for d in idx.listdir("")]
    assert names == [
        ("a", True),
        ("a-b", False),
        ("a.txt", False),
        ("b", False),
        ("c", True),
        ("z z", True),
    ]
    assert [d.name for d in idx.listdir("c/d")] == ["e", "g"]
    listed = idx.listdir("c/d")[1]
    assert isinstance(listed, DirEntry)
    assert listed.entry is not None
    assert listed.entry.path == "c/d/g"
    with pytest.raises(NotADirectory):
        idx.listdir("b")
    with pytest.raises(NotFound):
        idx.listdir("q")
    with pytest.raises(IsADirectory):
        idx.entry("a")
    with pytest.raises(NotFound):
        idx.stat("a/q")
    with pytest.raises(InvalidPath):
        idx.lookup("a/../b")
    assert [e.path for e in idx.walk("c")] == ["c/d/e/f", "c/d/g"]
    assert [e.path for e in idx.walk("b")] == ["b"]


def test_walk_order_vector_is_found_whatever_the_order() -> None:
    """Go writes directory-walk order; every file must still be found."""
    data = bytearray(build(TREE))
    idx = Index(bytes(data))
    # Reverse the entries vector in place: tables stay, the uoffsets are rewritten.
    root = struct.unpack_from("<I", data, 0)[0]
    vt = root - struct.unpack_from("<i", data, root)[0]
    ent_off = struct.unpack_from("<H", data, vt + 4 + 2 * 2)[0]
    vec = root + ent_off + struct.unpack_from("<I", data, root + ent_off)[0]
    n = struct.unpack_from("<I", data, vec)[0]
    targets = [
        vec + 4 + 4 * i + struct.unpack_from("<I", data, vec + 4 + 4 * i)[0] for i in range(n)
    ]
    for i, t in enumerate(reversed(targets)):
        struct.pack_into("<I", data, vec + 4 + 4 * i, t - (vec + 4 + 4 * i))
    rev = Index(bytes(data))
    assert not rev.sorted_on_wire
    assert list(rev.walk()) == list(idx.walk())
    for p in TREE:
        found = rev.lookup(p)
        assert found is not None
        assert found.path == p
    assert rev.listdir("") == idx.listdir("")


def test_large_directory_listing_skips_subtrees() -> None:
    paths = [f"d/f{i:04d}" for i in range(300)] + [f"d/sub{i}/x/y" for i in range(50)]
    paths += ["d/sub0-", "d0"]
    idx = Index(build(paths))
    listing = idx.listdir("d")
    assert len(listing) == 300 + 50 + 1
    assert sum(d.is_dir for d in listing) == 50
    assert [d.name for d in listing] == sorted((d.name for d in listing), key=str.encode)


# ---------------------------------------------------------------- malformed input


def test_rejects_truncated_and_garbage() -> None:
    good = build(TREE)
    for cut in (0, 3, 7, 20, len(good) // 2, len(good) - 1):
        with pytest.raises(CorruptIndex):
            Index(good[:cut])
    rng = random.Random(42)
    for _ in range(200):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        with pytest.raises(CorruptIndex):
            Index(blob)


def test_random_byte_flips_never_crash() -> None:
    """Any single corrupted byte gives a valid index or CorruptIndex, nothing else."""
    good = build(TREE)
    rng = random.Random(7)
    for _ in range(600):
        data = bytearray(good)
        pos = rng.randrange(len(data))
        data[pos] = rng.randrange(256)
        try:
            idx = Index(bytes(data))
        except CorruptIndex:
            continue
        # Whatever was accepted must be usable end to end.
        for e in idx.walk():
            assert idx.lookup(e.path) is not None
        idx.listdir("")


def _index_field(data: bytes, slot: int) -> int:
    root = struct.unpack_from("<I", data, 0)[0]
    vt = root - struct.unpack_from("<i", data, root)[0]
    return int(root + struct.unpack_from("<H", data, vt + 4 + 2 * slot)[0])


def test_huge_entries_vector_is_refused_quickly() -> None:
    data = bytearray(build(TREE))
    ref = _index_field(bytes(data), 2)
    vec = ref + struct.unpack_from("<I", data, ref)[0]
    struct.pack_into("<I", data, vec, 0xFFFFFFF0)
    with pytest.raises(CorruptIndex, match="entries vector"):
        Index(bytes(data))


def test_offsets_out_of_range() -> None:
    data = bytearray(build(TREE))
    ref = _index_field(bytes(data), 2)
    vec = ref + struct.unpack_from("<I", data, ref)[0]
    struct.pack_into("<I", data, vec + 4, 0x7FFFFFF0)
    with pytest.raises(CorruptIndex, match="entry 0"):
        Index(bytes(data))
    data = bytearray(build(TREE))
    struct.pack_into("<I", data, 0, len(data) + 100)
    with pytest.raises(CorruptIndex):
        Index(bytes(data))


def test_bad_version_and_algorithm() -> None:
    data = bytearray(build(TREE))
    struct.pack_into("<I", data, _index_field(bytes(data), 0), 2)
    with pytest.raises(CorruptIndex, match="version 2"):
        Index(bytes(data))
    data = bytearray(build(TREE))
    data[_index_field(bytes(data), 1)] = 3
    with pytest.raises(CorruptIndex, match="hash algorithm"):
        Index(bytes(data))


def _with_raw_path(bad: bytes) -> bytes:
    """An index whose single entry's path bytes are replaced by ``bad`` (same length)."""
    placeholder = "q" * len(bad)
    data = build([placeholder])
    at = data.index(placeholder.encode())
    return data[:at] + bad + data[at + len(bad) :]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b"../x", "'.' or '..'"),
        (b"a/./b", "'.' or '..'"),
        (b".", "'.' or '..'"),
        (b"/abs", "absolute"),
        (b"a//b", "empty"),
        (b"a/", "empty"),
        (b"a\x00b", "NUL"),
        (b"\xff\xfe", "UTF-8"),
    ],
)
def test_invalid_paths_are_named(bad: bytes, problem: str) -> None:
    with pytest.raises(CorruptIndex, match="invalid path") as info:
        Index(_with_raw_path(bad))
    assert problem in str(info.value)
    assert repr(bad) in str(info.value)


def test_empty_path_is_refused() -> None:
    data = bytearray(build(["q"]))
    at = data.index(b"q") - 4
    struct.pack_into("<I", data, at, 0)
    with pytest.raises(CorruptIndex, match="empty path"):
        Index(bytes(data))


def test_duplicates_and_file_dir_collisions() -> None:
    # The writer refuses both, so craft them by renaming a path in place (same length).
    data2 = encode_index([entry("x", 0, 0), entry("y", 0, 0)], data_size=0, data_hash=DIGEST)
    data2 = data2.replace(b"\x01\x00\x00\x00y\x00", b"\x01\x00\x00\x00x\x00")
    with pytest.raises(CorruptIndex, match="duplicate path 'x'"):
        Index(data2)
    data3 = encode_index([entry("a/b", 0, 0), entry("c", 0, 0)], data_size=0, data_hash=DIGEST)
    data3 = data3.replace(b"\x01\x00\x00\x00c\x00", b"\x01\x00\x00\x00a\x00")
    with pytest.raises(CorruptIndex, match="both a file and a directory"):
        Index(data3)


def test_unknown_compression_and_size_lies() -> None:
    with pytest.raises(CorruptIndex, match="unknown compression"):
        Index(encode_index([entry("a", compression=7)], data_size=0, data_hash=DIGEST))
    lying = entry("a", 0, 10, original_size=11)
    with pytest.raises(CorruptIndex, match="data_size different"):
        Index(encode_index([lying], data_size=10, data_hash=DIGEST))
    outside = entry("a", 5, 10)
    with pytest.raises(CorruptIndex, match="outside the data blob"):
        Index(encode_index([outside], data_size=12, data_hash=DIGEST))


def test_chunk_table_must_match_the_size() -> None:
    short = entry("a", 0, 200_000, chunk_size=65536, chunk_hashes=b"\0" * 64)
    with pytest.raises(CorruptIndex, match="chunk table"):
        Index(encode_index([short], data_size=200_000, data_hash=DIGEST))
    odd = entry("a", 0, 200_000, chunk_size=65535, chunk_hashes=b"\0" * 128)
    with pytest.raises(CorruptIndex, match="chunk_size"):
        Index(encode_index([odd], data_size=200_000, data_hash=DIGEST))
    frames = entry(
        "a",
        0,
        100,
        original_size=200_000,
        compression=Compression.ZSTD,
        chunk_size=65536,
        chunk_hashes=b"\0" * 128,
        frame_offsets=(0, 50, 40, 90),
    )
    with pytest.raises(CorruptIndex, match="frame_offsets"):
        Index(encode_index([frames], data_size=100, data_hash=DIGEST))


def test_empty_archive() -> None:
    idx = Index(encode_index([], data_size=0, data_hash=hashlib.sha256().digest()))
    assert len(idx) == 0
    assert idx.listdir("") == []
    assert list(idx.walk()) == []
    with pytest.raises(NotFound):
        idx.listdir("a")


# ---------------------------------------------------------------- properties

names = st.text(alphabet=st.sampled_from(list("ab-. _~é😀/")), min_size=1, max_size=12).filter(
    lambda s: all(c not in ("", ".", "..") for c in s.split("/"))
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sets(names, min_size=0, max_size=40))
def test_any_tree_round_trips(paths: set[str]) -> None:
    # Drop file/directory collisions: a tree cannot hold both "a" and "a/b".
    tree = sorted(paths)
    tree = [p for p in tree if not any(q.startswith(p + "/") for q in tree)]
    idx = Index(build(tree))
    assert sorted(idx.paths()) == sorted(tree)
    for p in tree:
        found = idx.lookup(p)
        assert found is not None
        assert found.path == p
    # listdir of every directory equals the children computed naively.
    dirs = {""} | {p.rsplit("/", 1)[0] for p in tree if "/" in p}
    dirs |= {"/".join(p.split("/")[:k]) for p in tree for k in range(1, p.count("/") + 1)}
    for d in dirs:
        pre = d + "/" if d else ""
        expect = {p[len(pre) :].split("/")[0] for p in tree if p.startswith(pre)}
        assert {c.name for c in idx.listdir(d)} == expect


def test_huge_unsigned_fields_decode_exactly() -> None:
    """uint64 fields above 2**63 (no data_size recorded to bound them) keep their value."""
    big = entry("a", 2**63 + 5, 0, original_size=2**64 - 1, compression=Compression.ZSTD)
    data = bytearray(encode_index([big, entry("b")], data_size=0, data_hash=DIGEST))
    # Drop data_hash from the index table so the payload bound is not checked.
    struct.pack_into("<H", data, _index_vtable(bytes(data)) + 4 + 2 * 4, 0)
    idx = Index(bytes(data))
    assert not idx.data_hash
    walked = next(iter(idx.walk()))
    looked = idx.lookup("a")
    assert looked is not None
    for e in (walked, looked):
        assert e.data_offset == 2**63 + 5
        assert e.original_size == 2**64 - 1


def _index_vtable(data: bytes) -> int:
    root = struct.unpack_from("<I", data, 0)[0]
    return int(root - struct.unpack_from("<i", data, root)[0])
