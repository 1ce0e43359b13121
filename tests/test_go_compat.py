"""Indexes written by blobfs, read the way the Go reference reads them.

The Go reader uses flatc-generated accessors (vtable lookups through the FlatBuffers runtime) and
finds files with the generated ``LookupByKey`` binary search. The official ``flatbuffers``
Python runtime implements the same accessors, so reading our output through it (independently
of ``blobfs.core.Index``) shows that any generated reader, Go's included, decodes it; the
binary search below is a line-by-line port of the generated Go code.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import flatbuffers
import pytest
from flatbuffers import number_types as N
from flatbuffers.table import Table

from blobfs.core import Compression, Entry, Index, encode_index

FIXTURES = Path(__file__).parent / "fixtures" / "reference-v1"


def _root(buf: bytes) -> Table:
    return Table(bytearray(buf), flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))


def _entries(buf: bytes) -> tuple[Table, int, int]:
    """(index table, vector location, length) as the generated ``Index.Entries`` sees them."""
    index = _root(buf)
    o = index.Offset(8)  # slot 2: entries
    assert o != 0
    return index, index.Vector(o), index.VectorLen(o)


def _entry(index: Table, vec: int, i: int) -> Table:
    return Table(index.Bytes, index.Indirect(vec + 4 * i))


def _field(t: Table, slot: int, flags: type[N.NumberTypeFlags], default: int = 0) -> int:
    o = t.Offset(4 + 2 * slot)
    return int(t.Get(flags, o + t.Pos)) if o else default


def _path(t: Table) -> bytes:
    return bytes(t.String(t.Offset(4) + t.Pos))


def _hash(t: Table) -> bytes:
    o = t.Offset(12)
    start = t.Vector(o)
    return bytes(t.Bytes[start : start + t.VectorLen(o)])


def go_lookup(buf: bytes, key: bytes) -> Table | None:
    """Port of the generated ``Entry.LookupByKey`` (bytes.Compare binary search)."""
    index, vec, span = _entries(buf)
    start = 0
    while span != 0:
        middle = span // 2
        t = _entry(index, vec, start + middle)
        p = _path(t)
        if p > key:
            span = middle
        elif p < key:
            middle += 1
            start += middle
            span -= middle
        else:
            return t
    return None


AWKWARD = ["a/x", "a/y", "a-b/f", "a.txt", "a b", "b/ü/ß", "c!", "c/d", "Z", "z.tar.gz"]


def _written(paths: list[str]) -> tuple[bytes, list[Entry]]:
    entries = []
    for i, p in enumerate(sorted(paths)):
        entries.append(
            Entry(
                p,
                i * 10,
                10,
                10 if i % 2 else 25,
                hashlib.sha256(p.encode()).digest(),
                0o640,
                i,
                i + 1,
                -i,
                Compression.NONE if i % 2 else Compression.ZSTD,
            )
        )
    return encode_index(entries, data_size=10 * len(paths), data_hash=bytes(32)), entries


def test_generated_accessors_read_every_field() -> None:
    buf, entries = _written(AWKWARD)
    index, vec, n = _entries(buf)
    assert n == len(entries)
    assert _field(index, 0, N.Uint32Flags, 1) == 1  # version
    assert _field(index, 1, N.Int8Flags) == 0  # hash_algorithm
    assert _field(index, 3, N.Uint64Flags) == 10 * len(AWKWARD)  # data_size
    by_path = {e.path.encode(): e for e in entries}
    for i in range(n):
        t = _entry(index, vec, i)
        e = by_path[_path(t)]
        assert _field(t, 1, N.Uint64Flags) == e.data_offset
        assert _field(t, 2, N.Uint64Flags) == e.data_size
        assert _field(t, 3, N.Uint64Flags) == e.original_size
        assert _hash(t) == e.hash
        assert _field(t, 5, N.Uint32Flags) == e.mode
        assert _field(t, 6, N.Uint32Flags) == e.uid
        assert _field(t, 7, N.Uint32Flags) == e.gid
        assert _field(t, 8, N.Int64Flags) == e.mtime_ns
        assert _field(t, 9, N.Int8Flags) == int(e.compression)


def test_go_binary_search_finds_every_file_we_write() -> None:
    buf, entries = _written(AWKWARD)
    for e in entries:
        found = go_lookup(buf, e.path.encode())
        assert found is not None
        assert _path(found) == e.path.encode()
    assert go_lookup(buf, b"a") is None


def test_chunked_entries_keep_v1_fields_intact() -> None:
    chunked = Entry(
        "big",
        0,
        300,
        200_000,
        hashlib.sha256(b"big").digest(),
        0o644,
        0,
        0,
        0,
        Compression.ZSTD,
        65536,
        bytes(32 * 4),
        (0, 100, 200, 250),
    )
    buf = encode_index([chunked], data_size=300, data_hash=bytes(32))
    index, vec, _ = _entries(buf)
    t = _entry(index, vec, 0)
    assert _path(t) == b"big"
    assert _field(t, 2, N.Uint64Flags) == 300
    assert _field(t, 3, N.Uint64Flags) == 200_000
    assert _field(t, 9, N.Int8Flags) == 1
    assert _field(index, 5, N.Uint32Flags) == 1  # features: chunk tables
    # Every uint64 of the buffer that a verifier checks for alignment is 8-aligned.
    o = t.Offset(28)  # frame_offsets vector
    assert t.Vector(o) % 8 == 0
    for slot in (1, 2, 3, 8):
        assert (t.Pos + t.Offset(4 + 2 * slot)) % 8 == 0


@pytest.mark.parametrize("name", ["mixed-none", "mixed-zstd", "mixed-allzstd"])
def test_go_reader_misses_files_we_find(name: str) -> None:
    """The Go writer's walk order defeats its own binary search; ours finds everything."""
    buf = (FIXTURES / name / "index.blob").read_bytes()
    idx = Index(buf)
    missed = sorted(p for p in idx.paths() if go_lookup(buf, p.encode()) is None)
    assert missed == ["a-b/f", "a.txt"]
    assert all(idx.lookup(p) is not None for p in missed)
    # Rewritten by blobfs, the same entries are all found by the Go search.
    rewritten = encode_index(list(idx.walk()), data_size=idx.data_size, data_hash=idx.data_hash)
    assert all(go_lookup(rewritten, p.encode()) is not None for p in idx.paths())
