"""Low-level FlatBuffers access to index bytes: bounds-checked header reads, vectorised
gathers for validation, and decoding of entry tables into :class:`Entry` values.

Everything here trusts nothing about the bytes except what its caller validated: the header
reader checks every access, the gathers index numpy views, and :class:`EntryDecoder` is used on
tables that validation has accepted.
"""

from __future__ import annotations

import functools
import mmap
import operator
import struct
from collections.abc import Callable
from itertools import pairwise, repeat
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import CorruptIndex
from ._types import HASH_SIZE, Compression, Entry

_VTABLE_CACHE_MAX: Final = 4096
"""Distinct vtables remembered for decoding; writers share a handful, a hostile index may not."""

_ENTRY_NEW: Final = functools.partial(tuple.__new__, Entry)

# Entry slots (FORMAT.md section 2) and the inline size of each field.
E_PATH, E_DATA_OFFSET, E_DATA_SIZE, E_ORIGINAL_SIZE, E_HASH = 0, 1, 2, 3, 4
E_MODE, E_UID, E_GID, E_MTIME, E_COMPRESSION = 5, 6, 7, 8, 9
E_CHUNK_SIZE, E_CHUNK_HASHES, E_FRAME_OFFSETS = 10, 11, 12
E_SLOTS: Final = 13
E_FIELD_SIZE: Final = (4, 8, 8, 8, 4, 4, 4, 4, 8, 1, 4, 4, 4)
# struct codes of the scalar slots, None for offsets to strings and vectors.
E_FIELD_CODE: Final = (None, "Q", "Q", "Q", None, "I", "I", "I", "q", "b", "I", None, None)

I_VERSION, I_HASH_ALGORITHM, I_ENTRIES, I_DATA_SIZE, I_DATA_HASH, I_FEATURES = range(6)

U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
I32 = struct.Struct("<i")


IntArray = npt.NDArray[np.int64]


class Gather:
    """Little-endian unsigned integers at arbitrary positions of the index, vectorised.

    Well-formed FlatBuffers align every scalar to its size, so the fast path indexes an aligned
    numpy view; a hostile index with unaligned fields takes the byte-by-byte path.
    """

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.b = np.frombuffer(buf, dtype=np.uint8)
        self.views = {w: np.frombuffer(buf, dtype=f"<u{w}", count=len(buf) // w) for w in (2, 4, 8)}

    def __call__(self, pos: IntArray, width: int) -> npt.NDArray[np.int64]:
        """Values as int64 for index arithmetic: a uint64 above 2**63 wraps negative, and
        ``.astype(np.uint64)`` restores it exactly."""
        if width > 1 and not (pos % width).any():
            return self.views[width][pos // width].astype(np.int64)
        b = self.b
        out = b[pos].astype(np.uint64)
        for k in range(1, width):
            out |= b[pos + k].astype(np.uint64) << np.uint64(8 * k)
        return out.astype(np.int64)


class Layout(NamedTuple):
    """Decoding plan shared by the entry tables that use one vtable (``EntryDecoder.layout``)."""

    struct: struct.Struct
    pick: Callable[[tuple[object, ...]], tuple[object, ...]]
    k_hash: int
    k_mode: int
    k_comp: int
    hash_off: int
    chunks_off: int
    frames_off: int
    path_off: int
    k_path: int
    offs: tuple[int, ...]


_COMPRESSION: Final = (Compression.NONE, Compression.ZSTD)


class HeaderReader:
    """Bounds-checked scalar access to the index bytes for the header (not per entry)."""

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.buf = buf
        self.size = len(buf)

    def need(self, pos: int, length: int, what: str) -> None:
        if pos < 0 or length < 0 or pos + length > self.size:
            raise CorruptIndex(
                f"{what} at byte {pos} (+{length}) is outside the index ({self.size} bytes)"
            )

    def u16(self, pos: int, what: str) -> int:
        self.need(pos, 2, what)
        return int(U16.unpack_from(self.buf, pos)[0])

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int(U32.unpack_from(self.buf, pos)[0])

    def table_fields(self, table: int, nslots: int, what: str) -> list[int]:
        """Field offsets (0 = absent) of a table, after checking its vtable."""
        self.need(table, 4, what)
        vt = table - I32.unpack_from(self.buf, table)[0]
        vt_len = self.u16(vt, f"{what} vtable")
        tbl_len = self.u16(vt + 2, f"{what} vtable")
        if vt_len < 4 or vt_len % 2:
            raise CorruptIndex(f"{what} vtable has an invalid length {vt_len}")
        self.need(vt, vt_len, f"{what} vtable")
        self.need(table, tbl_len, what)
        fields = []
        for slot in range(nslots):
            at = 4 + 2 * slot
            fields.append(U16.unpack_from(self.buf, vt + at)[0] if at < vt_len else 0)
        return fields

    def vector(self, field_pos: int, elem: int, what: str) -> tuple[int, int]:
        """``(start of elements, length)`` of the vector referenced at ``field_pos``."""
        target = field_pos + self.u32(field_pos, what)
        length = self.u32(target, what)
        self.need(target + 4, length * elem, what)
        return target + 4, length


class EntryDecoder:
    """Decodes validated entry tables; one per index, safe to share between threads."""

    __slots__ = ("buf", "gather", "vtables")

    def __init__(self, buf: bytes | mmap.mmap, gather: Gather) -> None:
        self.buf = buf
        self.gather = gather
        self.vtables: dict[int, Layout] = {}

    def layout(self, vt: int) -> Layout:
        """How to decode every entry table that uses the vtable at ``vt``."""
        cached = self.vtables.get(vt)
        if cached is not None:
            return cached
        buf = self.buf
        vt_len = U16.unpack_from(buf, vt)[0]
        offs = tuple(
            U16.unpack_from(buf, vt + 4 + 2 * s)[0] if 4 + 2 * s < vt_len else 0
            for s in range(E_SLOTS)
        )
        present = sorted((o, s) for s, o in enumerate(offs) if o)
        if any(o2 < o1 + E_FIELD_SIZE[s1] for (o1, s1), (o2, _) in pairwise(present)):
            # Only a hostile index overlaps fields; refuse rather than guess.
            raise CorruptIndex(f"entry vtable at byte {vt} has overlapping fields")
        fmt = "<"
        pos = 0
        for off, slot in present:
            fmt += (f"{off - pos}x" if off > pos else "") + (E_FIELD_CODE[slot] or "I")
            pos = off + E_FIELD_SIZE[slot]
        # Unpacked values come in table order, followed by a 0 for absent slots and then the
        # values computed per entry (path, digest, mode, compression, chunk vectors); ``pick``
        # takes them in Entry (= slot) order in one C call.
        where = {slot: k for k, (_, slot) in enumerate(present)}
        zero = len(present)
        computed = {
            E_PATH: zero + 1,
            E_HASH: zero + 2,
            E_MODE: zero + 3,
            E_COMPRESSION: zero + 4,
            E_CHUNK_HASHES: zero + 5,
            E_FRAME_OFFSETS: zero + 6,
        }
        pick = operator.itemgetter(*(computed.get(s, where.get(s, zero)) for s in range(E_SLOTS)))
        layout = Layout(
            struct.Struct(fmt),
            pick,
            where.get(E_HASH, zero),
            where.get(E_MODE, zero),
            where.get(E_COMPRESSION, zero),
            offs[E_HASH],
            offs[E_CHUNK_HASHES],
            offs[E_FRAME_OFFSETS],
            offs[E_PATH],
            where.get(E_PATH, zero),
            offs,
        )
        if len(self.vtables) < _VTABLE_CACHE_MAX:
            self.vtables[vt] = layout
        return layout

    def vector_at(self, t: int, off: int, elem: int, what: str) -> tuple[int, int]:
        """``(start, length)`` of the vector referenced by the field at ``t + off``."""
        buf = self.buf
        ref = t + off
        start = ref + U32.unpack_from(buf, ref)[0]
        if start + 4 > len(buf):
            raise CorruptIndex(f"entry at byte {t}: {what} is outside the index")
        (n,) = U32.unpack_from(buf, start)
        if start + 4 + n * elem > len(buf):
            raise CorruptIndex(f"entry at byte {t}: {what} runs past the end of the index")
        return start + 4, n

    def decode(self, t: int, path_at: tuple[int, int] | None = None) -> Entry:
        """The entry whose table is at ``t`` (validated at open). Kept flat: ``walk`` of a
        1,000,000-entry index calls it a million times."""
        buf = self.buf
        vt = t - I32.unpack_from(buf, t)[0]
        lay = self.vtables.get(vt) or self.layout(vt)
        vals = (*lay.struct.unpack_from(buf, t), 0)
        if path_at is None:
            s = t + lay.path_off + vals[lay.k_path]
            path_at = (s + 4, s + 4 + U32.unpack_from(buf, s)[0])
        h = t + lay.hash_off + vals[lay.k_hash] + 4
        chunk_hashes = b""
        frames: tuple[int, ...] = ()
        if lay.chunks_off:
            at, n = self.vector_at(t, lay.chunks_off, 1, "chunk_hashes")
            chunk_hashes = bytes(buf[at : at + n])
        if lay.frames_off:
            at, n = self.vector_at(t, lay.frames_off, 8, "frame_offsets")
            frames = struct.unpack_from(f"<{n}Q", buf, at)
        return tuple.__new__(
            Entry,
            lay.pick(
                (
                    *vals,
                    buf[path_at[0] : path_at[1]].decode("utf-8"),
                    bytes(buf[h : h + HASH_SIZE]),
                    vals[lay.k_mode] & 0o777,
                    _COMPRESSION[vals[lay.k_comp]],
                    chunk_hashes,
                    frames,
                )
            ),
        )

    def fields(self, tpos: npt.NDArray[np.uint32] | IntArray) -> Fields:
        """The scalar fields of the entry tables at ``tpos`` (validated), gathered on demand."""
        return Fields(self, tpos.astype(np.int64))

    def attributes(self, tpos: npt.NDArray[np.uint32] | IntArray) -> AttrColumns:
        """What ``stat`` needs of the entry tables at ``tpos``, as numpy columns, without
        decoding the entries (no path, digest or chunk table is read)."""
        f = self.fields(tpos)
        u32 = np.uint32
        return AttrColumns(
            (f.get(E_MODE, 4) & 0o777).astype(u32),
            f.get(E_UID, 4).astype(u32),
            f.get(E_GID, 4).astype(u32),
            f.get(E_ORIGINAL_SIZE, 8).astype(np.uint64),
            f.get(E_MTIME, 8).astype(np.uint64).view(np.int64),
        )

    def decode_many(
        self,
        tpos: npt.NDArray[np.uint32],
        pstart: npt.NDArray[np.uint32],
        pend: npt.NDArray[np.uint32],
    ) -> list[Entry]:
        """The entries whose tables and path bounds are given, decoded together.

        The same gathers as validation, then Entry tuples built by ``map``/``zip`` in C: about
        five times cheaper per entry than :meth:`decode`, which is what keeps ``walk`` of a
        million entries within seconds.
        """
        buf = self.buf
        if not len(tpos):
            return []
        f = self.fields(tpos)
        t = f.t
        hoff = f.offsets(E_HASH)
        hpos = (t + hoff + self.gather(t + hoff, 4) + 4).tolist()
        paths = map(
            bytes.decode,
            map(buf.__getitem__, map(slice, pstart.tolist(), pend.tolist())),
        )
        digests = map(buf.__getitem__, map(slice, hpos, [h + HASH_SIZE for h in hpos]))
        comps = map(_COMPRESSION.__getitem__, f.get(E_COMPRESSION, 1).tolist())
        out = list(
            map(
                _ENTRY_NEW,
                zip(
                    paths,
                    f.get(E_DATA_OFFSET, 8).astype(np.uint64).tolist(),
                    f.get(E_DATA_SIZE, 8).astype(np.uint64).tolist(),
                    f.get(E_ORIGINAL_SIZE, 8).astype(np.uint64).tolist(),
                    digests,
                    (f.get(E_MODE, 4) & 0o777).tolist(),
                    f.get(E_UID, 4).tolist(),
                    f.get(E_GID, 4).tolist(),
                    f.get(E_MTIME, 8).astype(np.uint64).view(np.int64).tolist(),
                    comps,
                    f.get(E_CHUNK_SIZE, 4).tolist(),
                    repeat(b""),
                    repeat(()),
                ),
            )
        )
        if any(lay.chunks_off or lay.frames_off for lay in f.layouts):
            # Entries with chunk vectors (files over one chunk) are decoded one by one.
            for k in range(len(out)):
                lay = f.layout_of(k)
                if lay.chunks_off or lay.frames_off:
                    out[k] = self.decode(int(tpos[k]), (int(pstart[k]), int(pend[k])))
        return out


class AttrColumns(NamedTuple):
    """Per entry, in the order asked for: permission bits (``& 0o777``), owner, group,
    uncompressed size (uint64) and mtime in ns since the epoch (int64)."""

    mode: npt.NDArray[np.uint32]
    uid: npt.NDArray[np.uint32]
    gid: npt.NDArray[np.uint32]
    size: npt.NDArray[np.uint64]
    mtime_ns: IntArray

    def take(self, sel: IntArray | slice) -> AttrColumns:
        """The rows ``sel`` (row numbers, or a slice)."""
        return AttrColumns(
            self.mode[sel], self.uid[sel], self.gid[sel], self.size[sel], self.mtime_ns[sel]
        )


class Fields:
    """Scalar fields of a set of validated entry tables, one vectorised gather per field.

    Writers share a handful of vtables among all entries, so the distinct vtables are read once
    (:meth:`EntryDecoder.layout`) and a field's offset is broadcast from them; with a single
    vtable (the usual case) the offset is one number and a field costs one gather.
    """

    __slots__ = ("gather", "inverse", "layouts", "t")

    def __init__(self, dec: EntryDecoder, t: IntArray) -> None:
        g = self.gather = dec.gather
        self.t = t
        vt = t - g(t, 4).astype(np.uint32).view(np.int32).astype(np.int64)
        first = int(vt[0]) if len(vt) else 0
        if not (vt != first).any():
            self.layouts = [dec.layout(first)] if len(vt) else []
            self.inverse: IntArray | None = None
        else:
            uvt, inverse = np.unique(vt, return_inverse=True)
            self.layouts = [dec.layout(int(v)) for v in uvt.tolist()]
            self.inverse = inverse

    def layout_of(self, k: int) -> Layout:
        """The layout of the ``k``-th table."""
        return self.layouts[0 if self.inverse is None else int(self.inverse[k])]

    def offsets(self, slot: int) -> IntArray | int:
        """Offset of field ``slot`` in each table (0: absent), or one number for all."""
        if self.inverse is None:
            return self.layouts[0].offs[slot] if self.layouts else 0
        return np.asarray([lay.offs[slot] for lay in self.layouts], dtype=np.int64)[self.inverse]

    def get(self, slot: int, width: int) -> IntArray:
        """Field ``slot`` (``width`` bytes, unsigned; absent fields are 0) of every table, as
        int64 (see :class:`Gather` for uint64 values)."""
        t, off = self.t, self.offsets(slot)
        if isinstance(off, int):
            return self.gather(t + off, width) if off else np.zeros(len(t), dtype=np.int64)
        present = off != 0
        return np.where(present, self.gather(np.where(present, t + off, 0), width), 0)
