"""The records (``_entries.py``) of a listing's pages, made in bulk from the index's columns.

Owner and umask options applied, the same values as ``ArchiveFS``'s single-node attributes:

- a run of files (a directory without subdirectories, the usual leaf) is a slice of a *block*
  of :data:`FILE_BLOCK` consecutive files' records made together (a dozen numpy operations) and
  kept: a walk lists a 100-file directory for a slice (~2 µs) instead of making its page
  (~30 µs), and neighbouring small directories share a block;
- a page mixing files and subdirectories is made from the columns of its positions (numpy), or
  row by row when it has at most :data:`_FEW` children (numpy's fixed cost is ~20 µs a page);
- bare pages: a run of files needs no attributes at all (one shared record, ``Page.run``);
  the files of a mixed page get node id 0.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

from ._entries import BARE_FILE, ENTRY_SIZE, Attr, Page, bare_records, pack, pack_columns
from ._inodes import Listing, NodeMap
from ._lru import Lru

if TYPE_CHECKING:
    from ..core import Index
    from ..core._fb import AttrColumns

__all__ = ["FILE_BLOCK", "SIZE_MAX", "PageMaker"]

SIZE_MAX: Final = (1 << 63) - 1
"""Largest size ``stat`` can show (``st_size`` is a signed 64-bit ``off_t``): an index may
claim more for a zstd entry (a hostile one), which then shows this."""

FILE_BLOCK: Final = 4096
"""Files whose records are made together (720 KB, about 1 ms)."""

FILE_BLOCKS: Final = 16
"""Blocks kept (12 MB): a walk in path order uses one at a time."""

_FEW: Final = 16
"""Mixed pages up to this many children are made one by one (about 1 us each), bigger ones
with numpy (some 20 us a page, then a fraction of a microsecond a child)."""

RowAttr = Callable[[int, int, bool, bytes], Attr]
"""``(inode, position, is a directory, path) -> Attr``: one node's attributes."""


class PageMaker:
    """Records of listing pages for one file system (event-loop thread only)."""

    __slots__ = ("_blocks", "_dir_mode", "_gid", "_index", "_keep", "_nodes", "_row", "_uid")

    def __init__(
        self,
        index: Index,
        nodes: NodeMap,
        row_attr: RowAttr,
        *,
        uid: int | None,
        gid: int | None,
        keep: int,
        dir_mode: int,
    ) -> None:
        self._index = index
        self._nodes = nodes
        self._row = row_attr
        self._uid = uid
        self._gid = gid
        self._keep = keep
        self._dir_mode = dir_mode
        self._blocks: Lru[int, npt.NDArray[np.void]] = Lru(FILE_BLOCKS)

    def page(self, listing: Listing, p: int, bare: bool, k: int, hi: int) -> Page:
        """Children ``k .. hi-1`` of ``listing``, in its page ``p``; files bare if ``bare``."""
        names, positions = listing.names[k:hi], listing.positions
        lo = p * listing.page
        end = min(len(listing), lo + listing.page)
        at = (k - lo) * ENTRY_SIZE
        if not listing.subdirs and positions[end - 1] - positions[lo] == end - 1 - lo:
            # Files only, a run of positions (the usual leaf).
            if bare:  # no attributes needed at all
                return Page(names, BARE_FILE, 0, k + 2, self._nodes.file_ino(positions[k]))
            return Page(names, self._run(positions[lo], end - lo), at, k + 2, 0)
        records = listing.records[p]
        if records is None:
            records = listing.records[p] = self._mixed(listing, lo, end)
        if bare and listing.subdirs < len(listing):
            records = bare_records(records, listing.dirs[lo:end])
        return Page(names, records, at, k + 2, 0)

    def _run(self, first: int, n: int) -> bytes:
        """The records of the files at positions ``first .. first+n-1``, from blocks."""
        parts = []
        pos, end = first, first + n
        while pos < end:
            b, at = divmod(pos, FILE_BLOCK)
            block = self._blocks.get(b)
            if block is None:
                block = self._block(b)
                self._blocks.put(b, block)
            take = min(end - pos, len(block) - at)
            parts.append(block[at : at + take].tobytes())
            pos += take
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _block(self, b: int) -> npt.NDArray[np.void]:
        lo = b * FILE_BLOCK
        n = min(len(self._index), lo + FILE_BLOCK) - lo
        cols = self._index.attributes_range(lo, lo + n)
        base = self._nodes.file_ino(lo)
        inos = np.arange(base, base + n, dtype=np.uint64)
        mode = stat.S_IFREG | (cols.mode & self._keep)
        return self._pack(inos, mode, 1, cols, np.minimum(cols.size, np.uint64(SIZE_MAX)))

    def _mixed(self, listing: Listing, k: int, hi: int) -> bytes:
        """The records of children ``k .. hi-1`` of ``listing`` (files and subdirectories)."""
        n = hi - k
        positions = listing.positions[k:hi]
        dirs = listing.dirs[k:hi]
        names = listing.names[k:hi]
        prefix = listing.prefix
        if n <= _FEW:
            row = self._row
            rows = zip(listing.inos(k, hi), positions, dirs, names, strict=True)
            made = (row(i, q, d, prefix + name if d else b"") for i, q, d, name in rows)
            return b"".join(map(pack, made))
        index = self._index
        cols = index.attributes(positions)
        isdir = np.asarray(dirs, dtype=bool)
        mode = np.where(isdir, self._dir_mode, stat.S_IFREG | (cols.mode & self._keep))
        size = np.where(isdir, np.uint64(0), np.minimum(cols.size, np.uint64(SIZE_MAX)))
        sub = index.subdir_count
        nlink = np.array(
            [2 + sub(prefix + name) if d else 1 for name, d in zip(names, dirs, strict=True)],
            dtype=np.uint64,
        )
        return self._pack(listing.inos(k, hi), mode, nlink, cols, size).tobytes()

    def _pack(
        self,
        inos: npt.ArrayLike,
        mode: npt.ArrayLike,
        nlink: npt.ArrayLike,
        cols: AttrColumns,
        size: npt.NDArray[np.uint64],
    ) -> npt.NDArray[np.void]:
        """Records from final modes, link counts and sizes, owners and mtimes from ``cols``."""
        return pack_columns(
            inos,
            mode,
            nlink,
            cols.uid if self._uid is None else self._uid,
            cols.gid if self._gid is None else self._gid,
            size,
            (size + np.uint64(511)) >> np.uint64(9),
            cols.mtime_ns,
        )
