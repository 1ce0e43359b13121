"""Reading the FlatBuffers index in place.

The index is untrusted input: :class:`Index` validates every offset, length and path when it is
opened, then answers lookups straight from the bytes. Nothing is kept per entry but three
``uint32`` positions (table, path start, path end), in bytewise path order, so a 1,000,000-entry
index costs 12 MB beside its own bytes and a lookup is one binary search.

Validation is vectorised with numpy in batches of :data:`_BATCH` entries (so temporary memory
stays small whatever the index size); only the path checks that need Python (ordering,
duplicates, directory prefixes) run per entry, and they run over plain ``bytes`` slices.

Go's writer emits directory-walk order, not bytewise order (FORMAT.md "Order"): when the vector
is not sorted, a permutation into bytewise order is built once at open.
"""

from __future__ import annotations

import bisect
import functools
import mmap
import operator
import struct
from collections.abc import Callable, Iterator
from itertools import pairwise, repeat
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import CorruptIndex, IsADirectory, NotADirectory, NotFound
from ._paths import first_bad_path, normalize_path
from ._types import (
    CHUNK_SIZE_MAX,
    CHUNK_SIZE_MIN,
    FEATURE_CHUNKS,
    HASH_SIZE,
    Compression,
    DirEntry,
    DirInfo,
    Entry,
)

__all__ = ["Index"]

_BATCH: Final = 1 << 16
"""Entries validated per numpy batch: 64 Ki entries keep each temporary array under 1 MB."""

_SAMPLE: Final = 64
"""Every 64th path is kept as bytes for the first level of a lookup: 1/64 of an object per
entry (16 K small objects for 1 M entries) buys a binary search that is mostly in C."""

_VTABLE_CACHE_MAX: Final = 4096

_LIST_WINDOW: Final = 1024
"""Paths examined together by ``listdir`` between two subdirectories."""

_WALK_BATCH: Final = 4096
"""Entries decoded together by ``walk``: large enough to amortise numpy, small enough to keep
a partial walk cheap."""

_ENTRY_NEW: Final = functools.partial(tuple.__new__, Entry)
_DIRENTRY_NEW: Final = functools.partial(tuple.__new__, DirEntry)
_FIRST: Final = operator.itemgetter(0)
"""Distinct vtables remembered for decoding; writers share a handful, a hostile index may not."""

# Entry slots (FORMAT.md section 2) and the inline size of each field.
_E_PATH, _E_DATA_OFFSET, _E_DATA_SIZE, _E_ORIGINAL_SIZE, _E_HASH = 0, 1, 2, 3, 4
_E_MODE, _E_UID, _E_GID, _E_MTIME, _E_COMPRESSION = 5, 6, 7, 8, 9
_E_CHUNK_SIZE, _E_CHUNK_HASHES, _E_FRAME_OFFSETS = 10, 11, 12
_E_SLOTS: Final = 13
_E_FIELD_SIZE: Final = (4, 8, 8, 8, 4, 4, 4, 4, 8, 1, 4, 4, 4)
# struct codes of the scalar slots, None for offsets to strings and vectors.
_E_FIELD_CODE: Final = (None, "Q", "Q", "Q", None, "I", "I", "I", "q", "b", "I", None, None)

_I_VERSION, _I_HASH_ALGORITHM, _I_ENTRIES, _I_DATA_SIZE, _I_DATA_HASH, _I_FEATURES = range(6)

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")

IntArray = npt.NDArray[np.int64]


class _Gather:
    """Little-endian unsigned integers at arbitrary positions of the index, vectorised.

    Well-formed FlatBuffers align every scalar to its size, so the fast path indexes an aligned
    numpy view; a hostile index with unaligned fields takes the byte-by-byte path.
    """

    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.b = np.frombuffer(buf, dtype=np.uint8)
        self.views = {w: np.frombuffer(buf, dtype=f"<u{w}", count=len(buf) // w) for w in (2, 4, 8)}

    def __call__(self, pos: IntArray, width: int) -> npt.NDArray[np.int64]:
        if width > 1 and not (pos % width).any():
            return self.views[width][pos // width].astype(np.int64)
        b = self.b
        out = b[pos].astype(np.uint64)
        for k in range(1, width):
            out |= b[pos + k].astype(np.uint64) << np.uint64(8 * k)
        return out.astype(np.int64)


class _Layout(NamedTuple):
    """Decoding plan shared by every entry table that uses one vtable (see ``Index._layout``)."""

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


class _Reader:
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
        return int(_U16.unpack_from(self.buf, pos)[0])

    def u32(self, pos: int, what: str) -> int:
        self.need(pos, 4, what)
        return int(_U32.unpack_from(self.buf, pos)[0])

    def table_fields(self, table: int, nslots: int, what: str) -> list[int]:
        """Field offsets (0 = absent) of a table, after checking its vtable."""
        self.need(table, 4, what)
        vt = table - _I32.unpack_from(self.buf, table)[0]
        vt_len = self.u16(vt, f"{what} vtable")
        tbl_len = self.u16(vt + 2, f"{what} vtable")
        if vt_len < 4 or vt_len % 2:
            raise CorruptIndex(f"{what} vtable has an invalid length {vt_len}")
        self.need(vt, vt_len, f"{what} vtable")
        self.need(table, tbl_len, what)
        fields = []
        for slot in range(nslots):
            at = 4 + 2 * slot
            fields.append(_U16.unpack_from(self.buf, vt + at)[0] if at < vt_len else 0)
        return fields

    def vector(self, field_pos: int, elem: int, what: str) -> tuple[int, int]:
        """``(start of elements, length)`` of the vector referenced at ``field_pos``."""
        target = field_pos + self.u32(field_pos, what)
        length = self.u32(target, what)
        self.need(target + 4, length * elem, what)
        return target + 4, length


class Index:
    """A validated archive index, read in place.

    Opening validates the whole index; afterwards every method is read-only and safe to call from
    several threads. Paths passed in are normalised (``"/a//b/"`` is ``a/b``; ``""`` is the root).
    """

    __slots__ = (
        "_buf",
        "_count",
        "_data_hash",
        "_data_size",
        "_dir_count",
        "_features",
        "_gather",
        "_key",
        "_pend",
        "_pend_mv",
        "_pstart",
        "_pstart_mv",
        "_samples",
        "_sorted_on_wire",
        "_tpos",
        "_tpos_mv",
        "_vtables",
    )

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        buf: bytes | mmap.mmap = data if isinstance(data, (bytes, mmap.mmap)) else bytes(data)
        self._buf = buf
        self._vtables: dict[int, _Layout] = {}
        r = _Reader(buf)
        if r.size < 8:
            raise CorruptIndex(f"index is too short ({r.size} bytes)")
        root = r.u32(0, "root table offset")
        f = r.table_fields(root, 6, "index table")
        if f[_I_VERSION]:
            r.need(root + f[_I_VERSION], 4, "index version")
            version = r.u32(root + f[_I_VERSION], "index version")
            if version != 1:
                raise CorruptIndex(f"unsupported index version {version} (this reader knows 1)")
        if f[_I_HASH_ALGORITHM]:
            r.need(root + f[_I_HASH_ALGORITHM], 1, "hash algorithm")
            algo = buf[root + f[_I_HASH_ALGORITHM]]
            if algo != 0:
                raise CorruptIndex(f"unsupported hash algorithm {algo} (this reader knows SHA-256)")
        if not f[_I_ENTRIES]:
            raise CorruptIndex("index has no entries vector (a required field)")
        entries_at, count = r.vector(root + f[_I_ENTRIES], 4, "entries vector")
        self._count = count
        self._data_hash = b""
        if f[_I_DATA_HASH]:
            at, n = r.vector(root + f[_I_DATA_HASH], 1, "data_hash vector")
            if n not in (0, HASH_SIZE):
                raise CorruptIndex(f"data_hash is {n} bytes, expected {HASH_SIZE}")
            self._data_hash = bytes(buf[at : at + n])
        self._data_size = 0
        if f[_I_DATA_SIZE]:
            r.need(root + f[_I_DATA_SIZE], 8, "data_size")
            self._data_size = int(struct.unpack_from("<Q", buf, root + f[_I_DATA_SIZE])[0])
        self._features = 0
        if f[_I_FEATURES]:
            self._features = r.u32(root + f[_I_FEATURES], "features")
        self._validate_entries(entries_at, count)

    # ------------------------------------------------------------------ validation

    def _validate_entries(self, entries_at: int, count: int) -> None:
        buf = self._buf
        size = len(buf)
        g = _Gather(buf)
        tpos = np.empty(count, dtype=np.uint32)
        pstart = np.empty(count, dtype=np.uint32)
        pend = np.empty(count, dtype=np.uint32)
        # Whether the vector is in bytewise path order; duplicates are found on the way when it
        # is, after the permutation when it is not.
        in_order = True
        prev = b""
        dirs: set[bytes] = set()
        any_chunked = False
        for lo in range(0, count, _BATCH):
            hi = min(lo + _BATCH, count)
            slot_pos = entries_at + 4 * np.arange(lo, hi, dtype=np.int64)
            t = slot_pos + g(slot_pos, 4)
            self._check(t + 4 <= size, lo, "entry table offset is outside the index")
            vt = t - g(t, 4).astype(np.uint32).view(np.int32).astype(np.int64)
            self._check((vt >= 0) & (vt + 4 <= size), lo, "entry vtable is outside the index")
            fo = self._field_offsets(g, t, vt, lo)
            self._check(fo[_E_PATH] != 0, lo, "entry has no path (a required field)")
            self._check(fo[_E_HASH] != 0, lo, "entry has no hash (a required field)")
            # Path strings.
            sref = t + fo[_E_PATH]
            st = sref + g(sref, 4)
            self._check(st + 4 <= size, lo, "path string is outside the index")
            sa = st + 4
            se = sa + g(st, 4)
            self._check(se <= size, lo, "path string runs past the end of the index")
            # Hash vectors: exactly 32 bytes.
            href = t + fo[_E_HASH]
            h = href + g(href, 4)
            self._check(h + 4 <= size, lo, "hash vector is outside the index")
            hlen = g(h, 4)
            self._check(h + 4 + hlen <= size, lo, "hash vector runs past the end of the index")
            self._check(hlen == HASH_SIZE, lo, "hash is not 32 bytes")
            # Scalars that must make sense: compression, sizes, payload inside the data blob.
            comp = self._scalar(g, t, fo[_E_COMPRESSION], 1)
            self._check(comp <= 1, lo, "unknown compression")
            dsize = self._scalar(g, t, fo[_E_DATA_SIZE], 8).astype(np.uint64)
            osize = self._scalar(g, t, fo[_E_ORIGINAL_SIZE], 8).astype(np.uint64)
            doff = self._scalar(g, t, fo[_E_DATA_OFFSET], 8).astype(np.uint64)
            self._check(
                (comp == 1) | (dsize == osize),
                lo,
                "uncompressed entry has data_size different from original_size",
            )
            if self._data_hash:
                limit = np.uint64(self._data_size)
                self._check(
                    (doff <= limit) & (dsize <= limit - np.minimum(doff, limit)),
                    lo,
                    f"payload lies outside the data blob ({self._data_size} bytes)",
                )
            tpos[lo:hi] = t
            pstart[lo:hi] = sa
            pend[lo:hi] = se
            # Paths: structure, NUL and UTF-8 in C over the whole batch; order and directories
            # in C-level comprehensions.
            paths = [buf[x:y] for x, y in zip(sa.tolist(), se.tolist(), strict=True)]
            self._check_paths(paths, lo)
            if in_order:
                if (lo and paths[0] <= prev) or sorted(paths) != paths:
                    in_order = False
                elif len(set(paths)) != len(paths):
                    dup = next(p for p, q in pairwise(paths) if p == q)
                    raise CorruptIndex(f"duplicate path {dup.decode()!r}")
                prev = paths[-1]
            for parent in {p.rpartition(b"/")[0] for p in paths}:
                while parent and parent not in dirs:
                    dirs.add(parent)
                    parent = parent.rpartition(b"/")[0]
            chunked = (fo[_E_CHUNK_SIZE] != 0) | (fo[_E_CHUNK_HASHES] != 0)
            chunked |= fo[_E_FRAME_OFFSETS] != 0
            if chunked.any():
                any_chunked = True
                for i in np.flatnonzero(chunked).tolist():
                    self._check_chunks(lo + i, int(t[i]))
        if any_chunked and not self._features & FEATURE_CHUNKS:
            raise CorruptIndex("entries carry chunk tables but the chunk feature bit is not set")
        if not in_order:
            key_of = buf.__getitem__
            ps, pe = pstart.tolist(), pend.tolist()
            order = sorted(range(count), key=lambda i: key_of(slice(ps[i], pe[i])))
            del ps, pe
            perm = np.asarray(order, dtype=np.int64)
            del order
            tpos, pstart, pend = tpos[perm], pstart[perm], pend[perm]
            del perm
        self._tpos, self._pstart, self._pend = tpos, pstart, pend
        self._gather = g
        self._tpos_mv = tpos.data
        self._pstart_mv = pstart.data
        self._pend_mv = pend.data
        self._sorted_on_wire = in_order
        self._samples = [
            buf[a:z]
            for a, z in zip(pstart[::_SAMPLE].tolist(), pend[::_SAMPLE].tolist(), strict=True)
        ]
        ps_mv, pe_mv = self._pstart_mv, self._pend_mv

        def key(i: int) -> bytes:
            return buf[ps_mv[i] : pe_mv[i]]

        self._key = key
        if not in_order:
            for i in range(count - 1):
                if self._key(i) == self._key(i + 1):
                    raise CorruptIndex(f"duplicate path {self._key(i).decode()!r}")
        for d in sorted(dirs):
            if self._find(d) is not None:
                raise CorruptIndex(
                    f"path {d.decode()!r} is both a file and a directory prefix of other paths"
                )
        self._dir_count = len(dirs)

    def _field_offsets(self, g: _Gather, t: IntArray, vt: IntArray, base: int) -> list[IntArray]:
        """Offsets of the 13 entry slots for every table of a batch (0 = absent), checked.

        Writers share a handful of vtables among all entries, so each distinct vtable is read
        once and its offsets broadcast, instead of 13 gathers per entry.
        """
        size = len(self._buf)
        uvt, inverse = np.unique(vt, return_inverse=True)
        vt_len = g(uvt, 2)
        ok = (vt_len >= 4) & (vt_len % 2 == 0) & (uvt + vt_len <= size)
        self._check(ok[inverse], base, "entry vtable is malformed")
        tbl_len = g(uvt + 2, 2)[inverse]
        self._check(t + tbl_len <= size, base, "entry table runs past the end of the index")
        fo = []
        for slot in range(_E_SLOTS):
            at = 4 + 2 * slot
            present = vt_len > at
            off = np.where(present, g(np.where(present, uvt + at, 0), 2), 0)[inverse]
            self._check(
                (off == 0) | ((off >= 4) & (off + _E_FIELD_SIZE[slot] <= tbl_len)),
                base,
                f"entry field {slot} lies outside its table",
            )
            fo.append(off)
        return fo

    @staticmethod
    def _scalar(g: _Gather, t: IntArray, off: IntArray, width: int) -> npt.NDArray[np.int64]:
        present = off != 0
        return np.where(present, g(np.where(present, t + off, 0), width), 0)

    def _check(self, ok: npt.NDArray[np.bool_], base: int, problem: str) -> None:
        if not ok.all():
            i = base + int(np.flatnonzero(~ok)[0])
            raise CorruptIndex(f"entry {i}: {problem}")

    def _check_paths(self, paths: list[bytes], base: int) -> None:
        bad = first_bad_path(paths)
        if bad is not None:
            i, problem = bad
            raise CorruptIndex(f"entry {base + i}: invalid path {paths[i]!r}: {problem}")

    def _check_chunks(self, i: int, t: int) -> None:
        e = self._decode(t)
        where = f"entry {i} ({e.path!r})"
        cs = e.chunk_size
        if cs == 0 or cs & (cs - 1) or not CHUNK_SIZE_MIN <= cs <= CHUNK_SIZE_MAX:
            raise CorruptIndex(f"{where}: invalid chunk_size {cs}")
        nchunks = -(-e.original_size // cs)
        if len(e.chunk_hashes) != HASH_SIZE * nchunks:
            have, want = len(e.chunk_hashes), HASH_SIZE * nchunks
            raise CorruptIndex(f"{where}: chunk table has {have} bytes, expected {want}")
        if e.compression == Compression.ZSTD:
            fr = e.frame_offsets
            if len(fr) != nchunks or (fr and fr[0] != 0):
                raise CorruptIndex(f"{where}: frame_offsets do not match the chunk table")
            if any(a >= z for a, z in pairwise(fr)) or (fr and fr[-1] > e.data_size):
                raise CorruptIndex(f"{where}: frame_offsets are not increasing inside the payload")
        elif e.frame_offsets:
            raise CorruptIndex(f"{where}: frame_offsets on an uncompressed entry")

    # ------------------------------------------------------------------ decoding

    def _layout(self, vt: int) -> _Layout:
        """How to decode every entry table that uses the vtable at ``vt``."""
        cached = self._vtables.get(vt)
        if cached is not None:
            return cached
        buf = self._buf
        vt_len = _U16.unpack_from(buf, vt)[0]
        offs = tuple(
            _U16.unpack_from(buf, vt + 4 + 2 * s)[0] if 4 + 2 * s < vt_len else 0
            for s in range(_E_SLOTS)
        )
        present = sorted((o, s) for s, o in enumerate(offs) if o)
        if any(o2 < o1 + _E_FIELD_SIZE[s1] for (o1, s1), (o2, _) in pairwise(present)):
            # Only a hostile index overlaps fields; refuse rather than guess.
            raise CorruptIndex(f"entry vtable at byte {vt} has overlapping fields")
        fmt = "<"
        pos = 0
        for off, slot in present:
            fmt += (f"{off - pos}x" if off > pos else "") + (_E_FIELD_CODE[slot] or "I")
            pos = off + _E_FIELD_SIZE[slot]
        # Unpacked values come in table order, followed by a 0 for absent slots and then the
        # values computed per entry (path, digest, mode, compression, chunk vectors); ``pick``
        # takes them in Entry (= slot) order in one C call.
        where = {slot: k for k, (_, slot) in enumerate(present)}
        zero = len(present)
        computed = {
            _E_PATH: zero + 1,
            _E_HASH: zero + 2,
            _E_MODE: zero + 3,
            _E_COMPRESSION: zero + 4,
            _E_CHUNK_HASHES: zero + 5,
            _E_FRAME_OFFSETS: zero + 6,
        }
        pick = operator.itemgetter(*(computed.get(s, where.get(s, zero)) for s in range(_E_SLOTS)))
        layout = _Layout(
            struct.Struct(fmt),
            pick,
            where.get(_E_HASH, zero),
            where.get(_E_MODE, zero),
            where.get(_E_COMPRESSION, zero),
            offs[_E_HASH],
            offs[_E_CHUNK_HASHES],
            offs[_E_FRAME_OFFSETS],
            offs[_E_PATH],
            where.get(_E_PATH, zero),
            offs,
        )
        if len(self._vtables) < _VTABLE_CACHE_MAX:
            self._vtables[vt] = layout
        return layout

    def _vector_at(self, t: int, off: int, elem: int, what: str) -> tuple[int, int]:
        """``(start, length)`` of the vector referenced by the field at ``t + off``."""
        buf = self._buf
        ref = t + off
        start = ref + _U32.unpack_from(buf, ref)[0]
        if start + 4 > len(buf):
            raise CorruptIndex(f"entry at byte {t}: {what} is outside the index")
        (n,) = _U32.unpack_from(buf, start)
        if start + 4 + n * elem > len(buf):
            raise CorruptIndex(f"entry at byte {t}: {what} runs past the end of the index")
        return start + 4, n

    def _decode(self, t: int, path_at: tuple[int, int] | None = None) -> Entry:
        """The entry whose table is at ``t`` (validated at open). Kept flat: ``walk`` of a
        1,000,000-entry index calls it a million times."""
        buf = self._buf
        vt = t - _I32.unpack_from(buf, t)[0]
        lay = self._vtables.get(vt) or self._layout(vt)
        vals = (*lay.struct.unpack_from(buf, t), 0)
        if path_at is None:
            s = t + lay.path_off + vals[lay.k_path]
            path_at = (s + 4, s + 4 + _U32.unpack_from(buf, s)[0])
        h = t + lay.hash_off + vals[lay.k_hash] + 4
        chunk_hashes = b""
        frames: tuple[int, ...] = ()
        if lay.chunks_off:
            at, n = self._vector_at(t, lay.chunks_off, 1, "chunk_hashes")
            chunk_hashes = bytes(buf[at : at + n])
        if lay.frames_off:
            at, n = self._vector_at(t, lay.frames_off, 8, "frame_offsets")
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

    # ------------------------------------------------------------------ lookups

    def _find(self, raw: bytes) -> int | None:
        """Position in sorted order of the file ``raw``, or None."""
        i = self._lower(raw)
        if i < self._count and self._key(i) == raw:
            return i
        return None

    def _lower(self, raw: bytes, lo: int = 0) -> int:
        """First position in sorted order whose path is >= ``raw`` (at or after ``lo``).

        Two levels: a C bisect over every ``_SAMPLE``-th path (kept as bytes), then a short
        keyed bisect inside one stride, about 6 Python-level key calls instead of 20.
        """
        j = bisect.bisect_left(self._samples, raw)
        start = max(lo, (j - 1) * _SAMPLE + 1 if j else 0)
        end = max(start, min(self._count, j * _SAMPLE))
        return bisect.bisect_left(range(self._count), raw, start, end, key=self._key)

    def _decode_many(self, sel: slice | npt.NDArray[np.int64]) -> list[Entry]:
        """The entries at positions ``sel`` of sorted order (a slice or an index array),
        decoded together.

        The same gathers as validation, then Entry tuples built by ``map``/``zip`` in C: about
        five times cheaper per entry than :meth:`_decode`, which is what keeps ``walk`` of a
        million entries within seconds.
        """
        buf, g = self._buf, self._gather
        t = self._tpos[sel].astype(np.int64)
        if not len(t):
            return []
        vt = t - g(t, 4).astype(np.uint32).view(np.int32).astype(np.int64)
        uvt, inverse = np.unique(vt, return_inverse=True)
        layouts = [self._layout(int(v)) for v in uvt.tolist()]

        def field(slot: int, width: int) -> npt.NDArray[np.int64] | npt.NDArray[np.uint64]:
            off = np.asarray([lay.offs[slot] for lay in layouts], dtype=np.int64)[inverse]
            present = off != 0
            return np.where(present, g(np.where(present, t + off, 0), width), 0)

        hoff = np.asarray([lay.hash_off for lay in layouts], dtype=np.int64)[inverse]
        hpos = (t + hoff + g(t + hoff, 4) + 4).tolist()
        paths = map(
            bytes.decode,
            map(buf.__getitem__, map(slice, self._pstart[sel].tolist(), self._pend[sel].tolist())),
        )
        digests = map(buf.__getitem__, map(slice, hpos, [h + HASH_SIZE for h in hpos]))
        comps = map(_COMPRESSION.__getitem__, field(_E_COMPRESSION, 1).tolist())
        out = list(
            map(
                _ENTRY_NEW,
                zip(
                    paths,
                    field(_E_DATA_OFFSET, 8).tolist(),
                    field(_E_DATA_SIZE, 8).tolist(),
                    field(_E_ORIGINAL_SIZE, 8).tolist(),
                    digests,
                    (field(_E_MODE, 4) & 0o777).tolist(),
                    field(_E_UID, 4).tolist(),
                    field(_E_GID, 4).tolist(),
                    field(_E_MTIME, 8).astype(np.uint64).view(np.int64).tolist(),
                    comps,
                    field(_E_CHUNK_SIZE, 4).tolist(),
                    repeat(b""),
                    repeat(()),
                ),
            )
        )
        if any(lay.chunks_off or lay.frames_off for lay in layouts):
            # Entries with chunk vectors (files over one chunk) are decoded one by one.
            pos = np.arange(self._count)[sel] if isinstance(sel, slice) else sel
            for k in range(len(out)):
                if layouts[inverse[k]].chunks_off or layouts[inverse[k]].frames_off:
                    out[k] = self._entry_at(int(pos[k]))
        return out

    def _entry_at(self, i: int) -> Entry:
        return self._decode(self._tpos_mv[i], (self._pstart_mv[i], self._pend_mv[i]))

    def __len__(self) -> int:
        """Number of files."""
        return self._count

    @property
    def data_hash(self) -> bytes:
        """SHA-256 of the data blob (``b""`` when the index does not record it)."""
        return self._data_hash

    @property
    def data_size(self) -> int:
        return self._data_size

    @property
    def features(self) -> int:
        return self._features

    @property
    def dir_count(self) -> int:
        """Number of directories below the root implied by the paths."""
        return self._dir_count

    @property
    def sorted_on_wire(self) -> bool:
        """Whether the entries vector is in bytewise path order (blobfs writes it so)."""
        return self._sorted_on_wire

    @property
    def raw(self) -> bytes | mmap.mmap:
        """The index bytes, as given."""
        return self._buf

    def lookup(self, path: str) -> Entry | None:
        """The file at ``path``, or ``None`` (also for directories)."""
        norm = normalize_path(path)
        i = self._find(norm.encode("utf-8")) if norm else None
        return None if i is None else self._entry_at(i)

    def is_dir(self, path: str) -> bool:
        norm = normalize_path(path)
        if not norm:
            return True
        prefix = norm.encode("utf-8") + b"/"
        i = self._lower(prefix)
        return i < self._count and self._key(i).startswith(prefix)

    def exists(self, path: str) -> bool:
        return self.lookup(path) is not None or self.is_dir(path)

    def entry(self, path: str) -> Entry:
        """The file at ``path``; :class:`NotFound` or :class:`IsADirectory` otherwise."""
        e = self.lookup(path)
        if e is not None:
            return e
        if self.is_dir(path):
            raise IsADirectory(path, "is a directory")
        raise NotFound(path, "no such file in the archive")

    def stat(self, path: str) -> Entry | DirInfo:
        e = self.lookup(path)
        if e is not None:
            return e
        if self.is_dir(path):
            return DirInfo(normalize_path(path))
        raise NotFound(path, "no such file or directory in the archive")

    def listdir(self, path: str = "") -> list[DirEntry]:
        """Immediate children of directory ``path``, sorted by name (bytewise).

        Cost is per child, not per descendant: a subdirectory's subtree is skipped with one
        search, and the files are decoded together.
        """
        norm = normalize_path(path)
        raw = norm.encode("utf-8")
        prefix = raw + b"/" if norm else b""
        i = self._lower(prefix) if prefix else 0
        end = self._lower(raw + b"0", i) if prefix else self._count
        plen = len(prefix)
        files: list[int] = []
        names: list[bytes] = []
        dirs: list[bytes] = []
        buf = self._buf
        window = 8
        while i < end:
            # A window of paths at once: slices by comprehension, the first subdirectory found
            # by one search in their join, so files cost no Python statement of their own. The
            # window grows over runs of files and shrinks after a subdirectory, so a directory
            # of subdirectories does not slice paths it will skip.
            hi = min(i + window, end)
            starts = (self._pstart[i:hi] + plen).tolist()
            rests = [buf[a:z] for a, z in zip(starts, self._pend[i:hi].tolist(), strict=True)]
            joined = b"\x00".join(rests)
            slash = joined.find(b"/")
            if slash < 0:
                files.extend(range(i, hi))
                names.extend(rests)
                i = hi
                window = min(window * 4, _LIST_WINDOW)
                continue
            k = joined.count(0, 0, slash)
            files.extend(range(i, i + k))
            names.extend(rests[:k])
            name = rests[k][: rests[k].find(b"/")]
            dirs.append(name)
            # Skip the whole subtree: every path below it sorts before prefix+name+"0".
            i = self._lower(prefix + name + b"0", i + k + 1)
            window = 8
        if not files and not dirs and norm:
            if self._find(raw) is not None:
                raise NotADirectory(path, "is a file")
            raise NotFound(path, "no such directory in the archive")
        entries = self._decode_many(np.asarray(files, dtype=np.int64))
        # Sort on the name bytes; the full-path order differs when a name holds a byte < "/".
        keyed = [*zip(names, repeat(False), entries), *zip(dirs, repeat(True), repeat(None))]
        keyed.sort(key=_FIRST)
        return [_DIRENTRY_NEW((n.decode("utf-8"), d, e)) for n, d, e in keyed]

    def walk(self, path: str = "") -> Iterator[Entry]:
        """Every file at or below ``path`` in bytewise path order."""
        norm = normalize_path(path)
        if norm:
            i = self._find(norm.encode("utf-8"))
            if i is not None:
                yield self._entry_at(i)
                return
            prefix = norm.encode("utf-8") + b"/"
            start = self._lower(prefix)
            end = self._lower(norm.encode("utf-8") + b"0")
            if start >= end:
                raise NotFound(path, "no such file or directory in the archive")
        else:
            start, end = 0, self._count
        for lo in range(start, end, _WALK_BATCH):
            yield from self._decode_many(slice(lo, min(lo + _WALK_BATCH, end)))

    def paths(self) -> Iterator[str]:
        """Every file path in bytewise order, without decoding the entries."""
        key = self._key
        for i in range(self._count):
            yield key(i).decode("utf-8")

    def __iter__(self) -> Iterator[Entry]:
        return self.walk()
