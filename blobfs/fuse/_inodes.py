"""Inode numbers derived from the index: stable across remounts, no table to keep.

The index keeps its files in bytewise path order; a position in that order names a file, and the
position of a directory's first file together with the directory's depth names the directory
(nested directories share a first file, but not a depth). So an inode number is computed from
the index alone, identical on every mount of the same archive, and turned back into a path with
one lookup of the position, whatever the kernel remembers or forgets:

- ``1``: the root;
- ``2 + p``: the file at position ``p`` (``p < 2**32``: an index has at most that many files);
- ``depth << 33 | p`` (``depth >= 1``): the directory made of the first ``depth`` components of
  the path at position ``p``, where ``p`` is the first file below it. Always ``>= 2**33``, so
  never a file's number.

Nothing here allocates per inode: the kernel's ``forget`` needs no bookkeeping, and memory does
not grow with what was looked up.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from itertools import compress
from typing import Final, NamedTuple

from ..core import Index
from ._errno import FsError

__all__ = ["ROOT_INO", "Listing", "Node", "NodeMap"]

ROOT_INO: Final = 1
_FILE_BASE: Final = 2
_DIR_SHIFT: Final = 33
_POS_MASK: Final = (1 << _DIR_SHIFT) - 1


class Node(NamedTuple):
    """A resolved inode: its number, its path (normalised UTF-8 bytes, ``b""`` for the root),
    whether it is a directory, and its position (a file's own, a directory's first file's;
    -1 for the root of an empty archive)."""

    ino: int
    path: bytes
    is_dir: bool
    pos: int

    @property
    def depth(self) -> int:
        return self.path.count(b"/") + 1 if self.path else 0


class NodeMap:
    """Inode numbers <-> index positions and paths (see the module docstring).

    Read-only after construction and cheap per call (a position lookup or a binary search);
    safe from any thread, as the index is.
    """

    __slots__ = ("_count", "_index", "root")

    def __init__(self, index: Index) -> None:
        self._index = index
        self._count = len(index)
        self.root = Node(ROOT_INO, b"", True, 0 if self._count else -1)

    def file_ino(self, pos: int) -> int:
        return _FILE_BASE + pos

    def dir_ino(self, depth: int, first: int) -> int:
        return (depth << _DIR_SHIFT) | first

    def node(self, ino: int) -> Node:
        """The node of inode ``ino``; ``FsError(ESTALE)`` for a number this archive never gave
        out (a kernel handle from another archive's mount, e.g. through NFS)."""
        if ino == ROOT_INO:
            return self.root
        if _FILE_BASE <= ino < _FILE_BASE + self._count:
            pos = ino - _FILE_BASE
            return Node(ino, self._index.path_at(pos), False, pos)
        depth, first = ino >> _DIR_SHIFT, ino & _POS_MASK
        if depth >= 1 and first < self._count:
            parts = self._index.path_at(first).split(b"/", depth)
            if len(parts) > depth:  # the directory is a proper prefix of that path
                path = b"/".join(parts[:depth])
                # The first file below it must be exactly this one, else the number is forged.
                if self._index.first_below(path) == first:
                    return Node(ino, path, True, first)
        raise FsError(errno.ESTALE, f"inode {ino} does not belong to this archive")

    def child(self, parent: Node, name: bytes) -> Node | None:
        """The node named ``name`` in directory ``parent``, or None. ``.`` and ``..`` resolve
        (the kernel asks for them when the mount is exported)."""
        if name == b"." or not name:
            return parent
        if name == b"..":
            return self.parent(parent)
        if b"/" in name or b"\x00" in name:
            return None
        path = parent.path + b"/" + name if parent.path else name
        pos = self._index.position(path)
        if pos is not None:
            return Node(_FILE_BASE + pos, path, False, pos)
        first = self._index.first_below(path)
        if first is None:
            return None
        return Node(self.dir_ino(parent.depth + 1, first), path, True, first)

    def parent(self, node: Node) -> Node:
        """The directory holding ``node`` (the root for the root)."""
        cut = node.path.rfind(b"/")
        if cut < 0:
            return self.root
        path = node.path[:cut]
        # The first file below a node is also below its parent, but the parent's own first file
        # may come earlier.
        first = self._index.first_below(path)
        assert first is not None  # a prefix of an archive path is a directory
        return Node(self.dir_ino(path.count(b"/") + 1, first), path, True, first)

    def children(self, node: Node, page: int) -> Listing:
        """Children of directory ``node``, sorted by name bytes (the listing order), their
        records to be made ``page`` at a time."""
        if node.pos < 0:
            return Listing([], [], [], node, page)
        names, positions, dirs = self._index.children(node.path)
        return Listing(names, positions, dirs, node, page)


class Listing:
    """The children of one directory, sorted by name bytes: parallel lists of names, positions
    and directory flags (about 100 bytes a child), and their directory-entry records once made
    (``_entries.py``: 176 bytes a child), a page of ``page`` children at a time.

    Immutable once built: any number of readers may walk it at once, and a child's place in it
    is the same on every listing of the directory (readdir offsets rely on that).
    """

    __slots__ = (
        "_depth_bits",
        "dirs",
        "dots",
        "names",
        "page",
        "positions",
        "prefix",
        "records",
        "subdirs",
    )

    def __init__(
        self, names: list[bytes], positions: list[int], dirs: list[bool], parent: Node, page: int
    ) -> None:
        self.names = names
        self.positions = positions
        self.dirs = dirs
        self.subdirs = dirs.count(True)
        self.prefix = parent.path + b"/" if parent.path else b""
        """The directory's path with a trailing ``/`` (``b""`` for the root): a child's path is
        ``prefix + name``."""
        self._depth_bits = (parent.depth + 1) << _DIR_SHIFT
        self.page = page
        self.records: list[bytes | None] = [None] * -(-len(names) // page)
        """Per page (children ``p * page ..``): their records once the file system made them
        (``_fs.py``), else None."""
        self.dots: bytes | None = None
        """The records of ``.`` and ``..`` once made."""

    def __len__(self) -> int:
        return len(self.names)

    def ino(self, i: int) -> int:
        """Inode number of child ``i``."""
        p = self.positions[i]
        return self._depth_bits | p if self.dirs[i] else _FILE_BASE + p

    def subdir_nodes(self) -> Iterator[Node]:
        """The nodes of the subdirectories, in listing order."""
        bits, prefix, names, positions = self._depth_bits, self.prefix, self.names, self.positions
        for k in compress(range(len(names)), self.dirs) if self.subdirs else ():
            p = positions[k]
            yield Node(bits | p, prefix + names[k], True, p)

    def inos(self, lo: int, hi: int) -> list[int]:
        """Inode numbers of children ``lo .. hi-1``."""
        bits = self._depth_bits
        return [
            bits | p if d else _FILE_BASE + p
            for p, d in zip(self.positions[lo:hi], self.dirs[lo:hi], strict=True)
        ]
