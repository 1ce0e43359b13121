"""Writing the FlatBuffers index.

The layout is built front to back, parents before children, so every ``uoffset`` points forward
as FlatBuffers requires; vtables sit before the tables that use them (``soffset`` is signed).
Every scalar of an entry is written, including zeros, so all plain entries share one vtable;
chunked entries share a second (raw) or third (zstd) one. Tables start on 8-byte boundaries and
their 64-bit fields sit at 8-byte offsets, so the buffer passes a strict FlatBuffers verifier.

Entries are written in bytewise order of their UTF-8 path, the only order in which the Go
reference's binary search finds every file. The output depends on nothing but the entries, so
the same tree always gives the same bytes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable

from ..errors import CorruptIndex
from ._paths import path_problem
from ._types import FEATURE_CHUNKS, HASH_SIZE, Compression, Entry

__all__ = ["encode_index"]

# Entry table layout: (slot, offset in table, struct code). Offset 0 holds the vtable soffset.
_PLAIN = (
    (0, 4, "I"),  # path (uoffset)
    (1, 8, "Q"),  # data_offset
    (2, 16, "Q"),  # data_size
    (3, 24, "Q"),  # original_size
    (8, 32, "q"),  # mtime_ns
    (4, 40, "I"),  # hash (uoffset)
    (5, 44, "I"),  # mode
    (6, 48, "I"),  # uid
    (7, 52, "I"),  # gid
    (9, 56, "b"),  # compression
)
_CHUNKED_RAW = (*_PLAIN[:-1], (10, 56, "I"), (11, 60, "I"), (9, 64, "b"))
_CHUNKED_ZSTD = (*_PLAIN[:-1], (10, 56, "I"), (11, 60, "I"), (12, 64, "I"), (9, 68, "b"))


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def _vtable(layout: tuple[tuple[int, int, str], ...]) -> tuple[bytes, int]:
    nslots = max(slot for slot, _, _ in layout) + 1
    table_size = _align(max(off + struct.calcsize(code) for _, off, code in layout), 4)
    offs = [0] * nslots
    for slot, off, _ in layout:
        offs[slot] = off
    return struct.pack(f"<HH{nslots}H", 4 + 2 * nslots, table_size, *offs), table_size


class _Buf:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def put(self, b: bytes) -> int:
        at = self.size
        self.parts.append(b)
        self.size += len(b)
        return at

    def pad(self, a: int) -> None:
        n = _align(self.size, a) - self.size
        if n:
            self.put(b"\0" * n)


def encode_index(entries: Iterable[Entry], *, data_size: int, data_hash: bytes) -> bytes:
    """Serialise ``entries`` (any order; written bytewise-sorted) into index bytes."""
    if len(data_hash) != HASH_SIZE:
        raise ValueError("data_hash must be a 32-byte SHA-256 digest")
    items = sorted(((e.path.encode("utf-8"), e) for e in entries), key=lambda pe: pe[0])
    for (p, _), (q, _) in itertools.pairwise(items):
        if p == q:
            raise CorruptIndex(f"duplicate path {p.decode()!r}")
    for p, e in items:
        problem = path_problem(p)
        if problem is not None:
            raise CorruptIndex(f"invalid path {p!r}: {problem}")
        if len(e.hash) != HASH_SIZE:
            raise ValueError(f"{e.path}: hash must be {HASH_SIZE} bytes")
    chunked = any(e.chunk_size for _, e in items)

    out = _Buf()
    out.put(b"\0" * 4)  # root uoffset, patched below
    # Index table: version, hash_algorithm, entries, data_size, data_hash, features.
    index_layout = (
        (0, 4, "I"),
        (5, 8, "I"),
        (3, 16, "Q"),
        (2, 24, "I"),
        (4, 28, "I"),
        (1, 32, "b"),
    )
    ivt, isize = _vtable(index_layout)
    vtables = {}
    for name, layout in (("plain", _PLAIN), ("raw", _CHUNKED_RAW), ("zstd", _CHUNKED_ZSTD)):
        vt_bytes, tsize = _vtable(layout)
        vtables[name] = (out.put(vt_bytes), tsize, layout)
    ivt_at = out.put(ivt)
    out.pad(8)
    root = out.size
    # The index table's reference fields are patched once their targets are placed.
    index_table = bytearray(_align(isize, 8))
    index_part = len(out.parts)
    out.put(bytes(index_table))  # replaced once the reference targets are known
    entries_vec = out.size
    n = len(items)
    out.put(struct.pack("<I", n))
    slots_at = out.size
    out.put(b"\0" * (4 * n))  # patched below
    hash_vec = out.put(struct.pack("<I", HASH_SIZE) + data_hash)
    table_pos: list[int] = []
    for p, e in items:
        kind = ("zstd" if e.compression == Compression.ZSTD else "raw") if e.chunk_size else "plain"
        vt_at, tsize, layout = vtables[kind]
        out.pad(8)
        t = out.size
        table_pos.append(t)
        table = bytearray(_align(tsize, 8))
        struct.pack_into("<i", table, 0, t - vt_at)
        # Children follow the table: path string, hash, chunk table, frame offsets.
        after = t + len(table)
        child = bytearray()

        def place(blob: bytes, align: int, _after: int = after, _child: bytearray = child) -> int:
            # Vectors put their 4-byte length just before element 0; align the elements.
            pos = _after + len(_child)
            pad = (_align(pos + 4, max(align, 4)) - 4) - pos
            _child.extend(b"\0" * pad)
            at = _after + len(_child)
            _child.extend(blob)
            return at

        refs = {
            0: place(struct.pack("<I", len(p)) + p + b"\0", 1),
            4: place(struct.pack("<I", HASH_SIZE) + e.hash, 1),
        }
        if e.chunk_size:
            refs[11] = place(struct.pack("<I", len(e.chunk_hashes)) + e.chunk_hashes, 1)
            if kind == "zstd":
                fr = e.frame_offsets
                refs[12] = place(struct.pack(f"<I{len(fr)}Q", len(fr), *fr), 8)
        values = {
            1: e.data_offset,
            2: e.data_size,
            3: e.original_size,
            5: e.mode & 0o777,
            6: e.uid,
            7: e.gid,
            8: e.mtime_ns,
            9: int(e.compression),
            10: e.chunk_size,
        }
        for slot, off, code in layout:
            if slot in refs:
                struct.pack_into("<I", table, off, refs[slot] - (t + off))
            else:
                struct.pack_into("<" + code, table, off, values[slot])
        out.put(bytes(table))
        out.put(bytes(child))
    out.pad(4)
    slots = bytearray(4 * n)
    for i, t in enumerate(table_pos):
        struct.pack_into("<I", slots, 4 * i, t - (slots_at + 4 * i))
    struct.pack_into("<i", index_table, 0, root - ivt_at)
    struct.pack_into("<I", index_table, 4, 1)  # version
    struct.pack_into("<I", index_table, 8, FEATURE_CHUNKS if chunked else 0)
    struct.pack_into("<Q", index_table, 16, data_size)
    struct.pack_into("<I", index_table, 24, entries_vec - (root + 24))
    struct.pack_into("<I", index_table, 28, hash_vec - (root + 28))
    struct.pack_into("<b", index_table, 32, 0)  # hash_algorithm SHA256
    out.parts[index_part] = bytes(index_table)
    data = bytearray(b"".join(out.parts))
    struct.pack_into("<I", data, 0, root)
    data[slots_at : slots_at + 4 * n] = slots
    return bytes(data)
