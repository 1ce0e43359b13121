"""Writing the FlatBuffers index.

Layout, front to back (every ``uoffset`` points forward as FlatBuffers requires; vtables may sit
anywhere because ``soffset`` is signed)::

    root uoffset | entry vtables (plain, chunked raw, chunked zstd) | index vtable | index table
    | entries vector | data_hash vector | per entry: table, path string, hash, [chunk vectors]

Every scalar of an entry is written, zeros included, so all plain entries share one vtable and
one ``struct`` packs a whole table. Tables start on 8-byte boundaries with their 64-bit fields at
8-byte offsets, and vector lengths on 4-byte boundaries, so a strict FlatBuffers verifier
accepts the buffer.

Entries are written in bytewise order of their UTF-8 path, the only order in which the Go
reference's binary search finds every file. The output depends on nothing but the entries, so
the same tree always gives the same bytes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable
from typing import Final

from ..errors import CorruptIndex
from ._paths import first_bad_path
from ._types import FEATURE_CHUNKS, HASH_SIZE, Compression, Entry

__all__ = ["encode_index"]

# Entry vtables: (vtable bytes, table size). Field offsets per slot 0..12 (0 = absent):
# path 4, data_offset 8, data_size 16, original_size 24, hash 40, mode 44, uid 48, gid 52,
# mtime 32, compression 56 (plain) / 64 (raw chunked) / 68 (zstd chunked), chunk_size 56,
# chunk_hashes 60, frame_offsets 64.
_PLAIN_OFFS: Final = (4, 8, 16, 24, 40, 44, 48, 52, 32, 56)
_RAW_OFFS: Final = (4, 8, 16, 24, 40, 44, 48, 52, 32, 64, 56, 60)
_ZSTD_OFFS: Final = (4, 8, 16, 24, 40, 44, 48, 52, 32, 68, 56, 60, 64)
_PLAIN_TABLE: Final = struct.Struct("<iIQQQqIIIIb7x")  # 64 bytes
_RAW_TABLE: Final = struct.Struct("<iIQQQqIIIIIIb7x")  # 72 bytes
_ZSTD_TABLE: Final = struct.Struct("<iIQQQqIIIIIIIb3x")  # 72 bytes
# Index table: version 4, features 8, data_size 16, entries 24, data_hash 28, hash_algorithm 32.
_INDEX_OFFS: Final = (4, 32, 24, 16, 28, 8)
_INDEX_TABLE: Final = struct.Struct("<iIIIQIIb7x")  # 40 bytes


def _vtable(offs: tuple[int, ...], table_size: int) -> bytes:
    return struct.pack(f"<HH{len(offs)}H", 4 + 2 * len(offs), table_size, *offs)


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


_U32: Final = struct.Struct("<I")
_HASH_LEN: Final = _U32.pack(HASH_SIZE)
_PAD: Final = (b"\0" * 4, b"\0" * 3, b"\0" * 2, b"\0")
"""NUL terminator plus padding after a string of length n, indexed by n % 4."""


def encode_index(entries: Iterable[Entry], *, data_size: int, data_hash: bytes) -> bytes:
    """Serialise ``entries`` (any order; written bytewise-sorted) into index bytes.

    Raises :class:`~blobfs.errors.CorruptIndex` for an invalid or duplicate path, and
    ``ValueError`` for a digest that is not 32 bytes.
    """
    if len(data_hash) != HASH_SIZE:
        raise ValueError("data_hash must be a 32-byte SHA-256 digest")
    items = sorted(((e.path.encode("utf-8"), e) for e in entries), key=lambda pe: pe[0])
    for (p, _), (q, _) in itertools.pairwise(items):
        if p == q:
            raise CorruptIndex(f"duplicate path {p.decode()!r}")
    bad = first_bad_path([p for p, _ in items])
    if bad is not None:
        raise CorruptIndex(f"invalid path {items[bad[0]][0]!r}: {bad[1]}")
    for _, e in items:
        if len(e.hash) != HASH_SIZE:
            raise ValueError(f"{e.path}: hash must be {HASH_SIZE} bytes")
    n = len(items)
    chunked = any(e.chunk_size for _, e in items)

    vt_plain = 4
    vt_raw = vt_plain + len(_vtable(_PLAIN_OFFS, 64))
    vt_zstd = vt_raw + len(_vtable(_RAW_OFFS, 72))
    vt_index = vt_zstd + len(_vtable(_ZSTD_OFFS, 72))
    root = _align(vt_index + len(_vtable(_INDEX_OFFS, 40)), 8)
    vec = root + _INDEX_TABLE.size
    hash_vec = vec + 4 + 4 * n
    pos = _align(hash_vec + 4 + HASH_SIZE, 8)

    body: list[bytes] = []
    tables: list[int] = []
    for p, e in items:
        tables.append(pos)
        # The path string: length, bytes, NUL, padded so the hash vector starts 4-aligned.
        path = _U32.pack(len(p)) + p + _PAD[len(p) & 3]
        digest = _HASH_LEN + e.hash
        mode, comp = e.mode & 0o777, int(e.compression)
        if not e.chunk_size:
            # Children right after the 64-byte table: path at +64, hash after the path.
            table = _PLAIN_TABLE.pack(
                pos - vt_plain, 60, e.data_offset, e.data_size, e.original_size, e.mtime_ns,
                24 + len(path), mode, e.uid, e.gid, comp,
            )  # fmt: skip
            chunk = b""
        else:
            zstd = e.compression == Compression.ZSTD
            hashes = e.chunk_hashes
            ch = struct.pack("<I", len(hashes)) + hashes
            ch += b"\0" * (_align(len(ch), 4) - len(ch))
            after = pos + 72 + len(path) + len(digest) + len(ch)  # where frame offsets go
            pad = (_align(after + 4, 8) - 4) - after  # 8-align the uint64 elements
            fr = e.frame_offsets
            frames = b"\0" * pad + struct.pack(f"<I{len(fr)}Q", len(fr), *fr) if zstd else b""
            at_path, at_hash = pos + 72, pos + 72 + len(path)
            at_chunks = at_hash + len(digest)
            common = (
                at_path - (pos + 4), e.data_offset, e.data_size, e.original_size, e.mtime_ns,
                at_hash - (pos + 40), mode, e.uid, e.gid, e.chunk_size, at_chunks - (pos + 60),
            )  # fmt: skip
            if zstd:
                at_frames = at_chunks + len(ch) + pad
                table = _ZSTD_TABLE.pack(pos - vt_zstd, *common, at_frames - (pos + 64), comp)
            else:
                table = _RAW_TABLE.pack(pos - vt_raw, *common, comp)
            chunk = ch + frames
        record = table + path + digest + chunk
        pad8 = -len(record) & 7
        body.append(record + b"\0" * pad8 if pad8 else record)
        pos += len(record) + pad8

    head = bytearray(struct.pack("<I", root))
    head += _vtable(_PLAIN_OFFS, 64) + _vtable(_RAW_OFFS, 72) + _vtable(_ZSTD_OFFS, 72)
    head += _vtable(_INDEX_OFFS, 40)
    head += b"\0" * (root - len(head))
    head += _INDEX_TABLE.pack(
        root - vt_index,
        1,  # version
        FEATURE_CHUNKS if chunked else 0,
        0,  # padding before the 8-aligned data_size
        data_size,
        vec - (root + 24),
        hash_vec - (root + 28),
        0,  # hash_algorithm: SHA256
    )
    head += struct.pack(f"<I{n}I", n, *(t - (vec + 4 + 4 * i) for i, t in enumerate(tables)))
    head += struct.pack("<I", HASH_SIZE) + data_hash
    head += b"\0" * (_align(len(head), 8) - len(head))
    return bytes(head) + b"".join(body)
