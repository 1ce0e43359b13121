"""Reading the FlatBuffers index in place.

The index is untrusted input: :class:`Index` validates every offset, length and path when it is
opened (``_index_check``), then answers lookups straight from the bytes. Nothing is kept per entry
but three ``uint32`` positions (table, path start, path end), in bytewise path order, so a
1,000,000-entry index costs 12 MB beside its own bytes and a lookup is one binary search.

Go's writer emits directory-walk order, not bytewise order (FORMAT.md "Order"): when the vector
is not sorted, a permutation into bytewise order is built once at open.
"""

from __future__ import annotations

import bisect
import functools
import mmap
import operator
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Final

import numpy as np
import numpy.typing as npt

from ..errors import CorruptIndex, IsADirectory, NotADirectory, NotFound
from ._fb import (
    I_DATA_HASH,
    I_DATA_SIZE,
    I_ENTRIES,
    I_FEATURES,
    I_HASH_ALGORITHM,
    I_VERSION,
    AttrColumns,
    EntryDecoder,
    Gather,
    HeaderReader,
)
from ._index_check import validate_entries
from ._paths import normalize_path
from ._types import HASH_SIZE, DirEntry, DirInfo, Entry

__all__ = ["Index"]

_SAMPLE: Final = 64
"""Every 64th path is kept as bytes for the first level of a lookup: 1/64 of an object per
entry (16 K small objects for 1 M entries) buys a binary search that is mostly in C."""

_LIST_WINDOW: Final = 1024
"""Paths examined together by ``listdir`` between two subdirectories."""

_FIRST_WINDOW: Final = 16
"""Paths examined first, and after each subdirectory (whose subtree is skipped with a search):
a window costs about a microsecond plus a slice per path, so a directory of subdirectories
wastes little on paths it skips, and one of files grows to :data:`_LIST_WINDOW` at once."""

_ONE_WINDOW: Final = 256
"""Paths below a directory up to which ``listdir`` examines them all at once."""

_WALK_BATCH: Final = 1024
"""Entries decoded together by ``walk``: enough to amortise the numpy calls, few enough that a
batch's tuples stay in the CPU caches (1,024 walked a million entries in a median 2.3 s here,
4,096 in 3.0 s and 16,384 in 3.7 s)."""

_ATTR_BLOCK_BITS: Final = 14
"""Attribute columns are gathered 16,384 positions at a time, on first use (about 1 ms each):
a listing then costs a few numpy takes, and an index nobody lists costs nothing."""

_DIRENTRY_NEW: Final = functools.partial(tuple.__new__, DirEntry)
_FIRST: Final = operator.itemgetter(0)


class Index:
    """A validated archive index, read in place.

    Opening validates the whole index; afterwards every method is read-only and safe to call from
    several threads. Paths passed in are normalised (``"/a//b/"`` is ``a/b``; ``""`` is the root).
    """

    __slots__ = (
        "_attr_cols",
        "_attr_done",
        "_attr_rows",
        "_buf",
        "_count",
        "_data_hash",
        "_data_size",
        "_dec",
        "_dir_count",
        "_features",
        "_key",
        "_pend",
        "_pend_mv",
        "_pstart",
        "_pstart_mv",
        "_samples",
        "_sorted_on_wire",
        "_subdirs",
        "_tpos",
        "_tpos_mv",
    )

    def __init__(self, data: bytes | bytearray | memoryview | mmap.mmap) -> None:
        buf: bytes | mmap.mmap = data if isinstance(data, (bytes, mmap.mmap)) else bytes(data)
        self._buf = buf
        r = HeaderReader(buf)
        if r.size < 8:
            raise CorruptIndex(f"index is too short ({r.size} bytes)")
        root = r.u32(0, "root table offset")
        f = r.table_fields(root, 6, "index table")
        if f[I_VERSION]:
            r.need(root + f[I_VERSION], 4, "index version")
            version = r.u32(root + f[I_VERSION], "index version")
            if version != 1:
                raise CorruptIndex(f"unsupported index version {version} (this reader knows 1)")
        if f[I_HASH_ALGORITHM]:
            r.need(root + f[I_HASH_ALGORITHM], 1, "hash algorithm")
            algo = buf[root + f[I_HASH_ALGORITHM]]
            if algo != 0:
                raise CorruptIndex(f"unsupported hash algorithm {algo} (this reader knows SHA-256)")
        if not f[I_ENTRIES]:
            raise CorruptIndex("index has no entries vector (a required field)")
        entries_at, count = r.vector(root + f[I_ENTRIES], 4, "entries vector")
        self._count = count
        self._data_hash = b""
        if f[I_DATA_HASH]:
            at, n = r.vector(root + f[I_DATA_HASH], 1, "data_hash vector")
            if n not in (0, HASH_SIZE):
                raise CorruptIndex(f"data_hash is {n} bytes, expected {HASH_SIZE}")
            self._data_hash = bytes(buf[at : at + n])
        self._data_size = 0
        if f[I_DATA_SIZE]:
            r.need(root + f[I_DATA_SIZE], 8, "data_size")
            self._data_size = int(struct.unpack_from("<Q", buf, root + f[I_DATA_SIZE])[0])
        self._features = 0
        if f[I_FEATURES]:
            self._features = r.u32(root + f[I_FEATURES], "features")
        self._validate_entries(entries_at, count)

    # ------------------------------------------------------------------ validation

    def _validate_entries(self, entries_at: int, count: int) -> None:
        buf = self._buf
        g = Gather(buf)
        self._dec = EntryDecoder(buf, g)
        tpos, pstart, pend, in_order, dirs = validate_entries(
            buf,
            g,
            self._dec,
            entries_at,
            count,
            data_hash=self._data_hash,
            data_size=self._data_size,
            features=self._features,
        )
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
        # Subdirectories per directory (b"" is the root), for link counts: one pass over the
        # directories, which validation found anyway.
        self._subdirs = Counter(d.rpartition(b"/")[0] for d in dirs)
        # Attribute columns, filled a block at a time by attributes(): np.empty only reserves
        # address space, pages are touched (28 bytes a file) as blocks are filled.
        u32 = np.uint32
        self._attr_cols = AttrColumns(
            np.empty(count, u32), np.empty(count, u32), np.empty(count, u32),
            np.empty(count, np.uint64), np.empty(count, np.int64),
        )  # fmt: skip
        # The same as memoryviews: indexing one gives a Python int in ~60 ns (numpy: ~1 us).
        self._attr_rows = tuple(c.data for c in self._attr_cols)
        self._attr_done = bytearray(-(-count >> _ATTR_BLOCK_BITS))

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
        """The entries at positions ``sel`` of sorted order, decoded together."""
        return self._dec.decode_many(self._tpos[sel], self._pstart[sel], self._pend[sel])

    def _entry_at(self, i: int) -> Entry:
        return self._dec.decode(self._tpos_mv[i], (self._pstart_mv[i], self._pend_mv[i]))

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
        files, names, dirs, _ = self._scan(path, norm.encode("utf-8"))
        entries = self._decode_many(np.asarray(files, dtype=np.int64))
        if not dirs:
            # Files alone come in name order already (same prefix, no "/" in a name).
            return list(map(_DIRENTRY_NEW, zip(map(bytes.decode, names), repeat(False), entries)))
        # With subdirectories, full-path order differs from name order where a name holds a
        # byte below "/" ("a-b" < "a.txt" < "a/..."): sort on the name bytes.
        keyed = [*zip(names, repeat(False), entries), *zip(dirs, repeat(True), repeat(None))]
        keyed.sort(key=_FIRST)
        return [_DIRENTRY_NEW((n.decode("utf-8"), d, e)) for n, d, e in keyed]

    def _scan(self, path: str, raw: bytes) -> tuple[list[int], list[bytes], list[bytes], list[int]]:
        """The children of directory ``raw`` (normalised): file positions and names, in order,
        then subdirectory names and the position of each one's first file, in order.
        ``path`` names the directory in errors."""
        prefix = raw + b"/" if raw else b""
        i = self._lower(prefix) if prefix else 0
        end = self._lower(raw + b"0", i) if prefix else self._count
        plen = len(prefix)
        files: list[int] = []
        names: list[bytes] = []
        dirs: list[bytes] = []
        firsts: list[int] = []
        buf = self._buf
        ps, pe = self._pstart_mv, self._pend_mv
        # A small subtree is examined in one window (a leaf directory of up to 256 files: one
        # join and one search), a bigger one starts small in case it is mostly subdirectories.
        window = end - i if end - i <= _ONE_WINDOW else _FIRST_WINDOW
        while i < end:
            # A window of paths at once: slices by comprehension, the first subdirectory found
            # by one search in their join, so files cost no Python statement of their own. The
            # window grows over runs of files and shrinks after a subdirectory, so a directory
            # of subdirectories does not slice paths it will skip.
            hi = min(i + window, end)
            rests = [
                buf[a + plen : z] for a, z in zip(ps[i:hi].tolist(), pe[i:hi].tolist(), strict=True)
            ]
            joined = b"\x00".join(rests)
            slash = joined.find(b"/")
            if slash < 0:
                files.extend(range(i, hi))
                names.extend(rests)
                i = hi
                window = min(window * 16, _LIST_WINDOW)
                continue
            k = joined.count(0, 0, slash)
            files.extend(range(i, i + k))
            names.extend(rests[:k])
            name = rests[k][: rests[k].find(b"/")]
            dirs.append(name)
            firsts.append(i + k)
            # Skip the whole subtree: every path below it sorts before prefix+name+"0".
            i = self._lower(prefix + name + b"0", i + k + 1)
            window = _FIRST_WINDOW
        if not files and not dirs and raw:
            if self._find(raw) is not None:
                raise NotADirectory(path, "is a file")
            raise NotFound(path, "no such directory in the archive")
        return files, names, dirs, firsts

    # ------------------------------------------------------------------ positions
    # A file's position in bytewise path order, and a directory's first file's position, are
    # the same on every open of the same index bytes: the mount derives its inode numbers from
    # them (blobfs.fuse._inodes). Paths here are normalised UTF-8 bytes (b"" is the root).

    def position(self, raw: bytes) -> int | None:
        """Position of the file ``raw`` in bytewise path order, or None."""
        return self._find(raw) if raw else None

    def first_below(self, raw: bytes) -> int | None:
        """Position of the first file below directory ``raw`` (the root: 0), or None when
        ``raw`` is not a directory."""
        if not raw:
            return 0 if self._count else None
        prefix = raw + b"/"
        i = self._lower(prefix)
        return i if i < self._count and self._key(i).startswith(prefix) else None

    def path_at(self, i: int) -> bytes:
        """The path of the file at position ``i`` (``IndexError`` outside ``0 .. len-1``)."""
        if not 0 <= i < self._count:
            raise IndexError(f"position {i} outside 0..{self._count - 1}")
        return self._key(i)

    def entry_at(self, i: int) -> Entry:
        """The file at position ``i`` (``IndexError`` outside ``0 .. len-1``)."""
        if not 0 <= i < self._count:
            raise IndexError(f"position {i} outside 0..{self._count - 1}")
        return self._entry_at(i)

    def subdir_count(self, raw: bytes) -> int:
        """Number of immediate subdirectories of directory ``raw`` (0 for anything else)."""
        return self._subdirs.get(raw, 0)

    def attributes(self, positions: Sequence[int] | npt.NDArray[np.int64]) -> AttrColumns:
        """Mode bits, owner, group, size and mtime of the files at ``positions`` (each in
        ``0 .. len-1``, else ``IndexError``), as numpy columns in the order given.

        Read from the entry tables in place, without decoding entries: the columns of the whole
        index are gathered a block of positions at a time on first use and kept (28 bytes a
        file), so listing a directory costs a few array takes, not a decode per file. Safe
        from several threads: two threads filling the same block write the same values.
        """
        pos = np.asarray(positions, dtype=np.int64)
        if not len(pos):
            return self._attr_cols.take(slice(0, 0))
        first, last = int(pos.min()), int(pos.max())
        if first < 0 or last >= self._count:
            raise IndexError(f"a position outside 0..{self._count - 1}")
        cols = self._attr_cols
        done = self._attr_done
        lo, hi = first >> _ATTR_BLOCK_BITS, last >> _ATTR_BLOCK_BITS
        if lo == hi:
            if not done[lo]:
                self._fill_block(cols, lo)
        else:
            # Not np.unique: it imports numpy.ma (~20 ms) the first time it runs.
            for b in sorted(set((pos >> _ATTR_BLOCK_BITS).tolist())):
                if not done[b]:
                    self._fill_block(cols, b)
        return cols.take(pos)

    def attributes_range(self, lo: int, hi: int) -> AttrColumns:
        """:meth:`attributes` of positions ``lo .. hi-1`` (a directory's files are such a run
        when it has no subdirectories): views of the columns, no index arrays."""
        if not 0 <= lo <= hi <= self._count:
            raise IndexError(f"positions {lo}..{hi - 1} outside 0..{self._count - 1}")
        cols = self._attr_cols
        done = self._attr_done
        for b in range(lo >> _ATTR_BLOCK_BITS, ((hi - 1) >> _ATTR_BLOCK_BITS) + 1 if hi else 0):
            if not done[b]:
                self._fill_block(cols, b)
        return cols.take(slice(lo, hi))

    def attributes_at(self, i: int) -> tuple[int, int, int, int, int]:
        """``(mode bits, uid, gid, size, mtime_ns)`` of the file at position ``i``, as
        :meth:`attributes` (``IndexError`` outside ``0 .. len-1``)."""
        if not 0 <= i < self._count:
            raise IndexError(f"position {i} outside 0..{self._count - 1}")
        b = i >> _ATTR_BLOCK_BITS
        if not self._attr_done[b]:
            self._fill_block(self._attr_cols, b)
        mode, uid, gid, size, mtime = self._attr_rows
        return mode[i], uid[i], gid[i], size[i], mtime[i]

    def _fill_block(self, cols: AttrColumns, b: int) -> None:
        lo = b << _ATTR_BLOCK_BITS
        hi = min(self._count, lo + (1 << _ATTR_BLOCK_BITS))
        got = self._dec.attributes(self._tpos[lo:hi])
        cols.mode[lo:hi] = got.mode
        cols.uid[lo:hi] = got.uid
        cols.gid[lo:hi] = got.gid
        cols.size[lo:hi] = got.size
        cols.mtime_ns[lo:hi] = got.mtime_ns
        self._attr_done[b] = 1  # after the values: a reader seeing the flag sees them

    def entries_at(self, positions: list[int]) -> list[Entry]:
        """The files at ``positions`` (each valid), decoded together."""
        return self._decode_many(np.asarray(positions, dtype=np.int64))

    def children(self, raw: bytes) -> tuple[list[bytes], list[int], list[bool]]:
        """Immediate children of directory ``raw`` sorted by name bytes, without decoding an
        entry: names, positions (a file's own, a subdirectory's first file's) and which are
        directories. :class:`NotFound` / :class:`NotADirectory` as :meth:`listdir`."""
        files, names, dirs, firsts = self._scan(raw.decode("utf-8", "replace"), raw)
        if not dirs:
            return names, files, [False] * len(files)
        keyed = sorted(
            [*zip(names, files, repeat(False)), *zip(dirs, firsts, repeat(True))], key=_FIRST
        )
        return [k[0] for k in keyed], [k[1] for k in keyed], [k[2] for k in keyed]

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
