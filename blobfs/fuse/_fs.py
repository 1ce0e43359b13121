"""The mounted file system without FUSE: what every request handler of the mount does.

:class:`ArchiveFS` answers in plain Python values (:class:`Attr`, :class:`StatFs`, bytes) and
raises blobfs errors or :class:`~blobfs.fuse._errno.FsError`; ``_ops.py`` converts arguments and
answers for pyfuse3 and maps errors through the one errno table (:meth:`ArchiveFS.failed`). So
every behaviour here is tested without a kernel (tests/test_fuse_fs.py), and the kernel mount
is tested for real on top (tests/test_mount.py).

Semantics (docs/mount.md): read-only; inode numbers stable across remounts (``_inodes.py``);
files show their archived mode bits (``& 0o777``: no set-uid), owners and mtime; directories
are synthesized from the paths: mode ``0o555``, mtime of their first file, link count 2 + their
subdirectories. ``uid``/``gid``/``umask`` options override owners and clear mode bits. Reads
have ``pread`` semantics and return only verified bytes (the archive's async read path: block
cache, content cache, readahead; see ``_readers.py``).

Metadata calls never touch the data blob and run on the event loop (they are index lookups of a
few microseconds; a directory listing costs per child). Concurrency: one event-loop thread
(trio); read() awaits, so many reads proceed at once.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple

from ..core import Archive, Entry, FileSource
from ..core._decode import Buffer
from ._entries import BLOCK_SIZE, ENTRY_SIZE, Attr, Page, pack, unpack
from ._errno import FsError, errno_for
from ._inodes import ROOT_INO, Listing, Node, NodeMap
from ._lru import Lru
from ._readers import Readers
from ._records import SIZE_MAX, PageMaker
from ._stats import MountStats, SourceInfo

__all__ = [
    "BARE_MAX",
    "BLOCK_SIZE",
    "DIR_MODE",
    "MAX_READ",
    "SIZE_MAX",
    "XATTR_DIGEST",
    "XATTR_SOURCE",
    "XATTR_STATS",
    "ArchiveFS",
    "Attr",
    "StatFs",
]

logger = logging.getLogger("blobfs.fuse")

DIR_MODE: Final = 0o555
"""Synthesized directories: everyone may list and traverse, nobody may write (read-only)."""

MAX_READ: Final = 16 << 20
"""Most bytes one read returns. The kernel never asks for more than its max_read (1 MiB at
most); a direct caller asking for more gets a short read, as pread allows."""

ATTR_CACHE: Final = 65536
"""Attributes kept per inode (about 200 bytes each): the hot set of a tree walk, 13 MB."""

LISTING_CACHE_NAMES: Final = 131072
"""Children kept in cached directory listings (about 100 bytes each, and 176 more once listed:
36 MB at most): a listing serves link counts and ``readdir`` pages of one
directory; at least the last one stays."""

READDIR_PAGE: Final = 1024
"""Children whose directory entries are made together: a page costs a few numpy calls plus
well under a microsecond a child, and a directory listed once is listed whole."""

DIR_NODES: Final = 65536
"""Directories whose node is kept once listed by their parent (about 200 bytes each)."""

BARE_MAX: Final = 1024
"""Directories up to this many children may be listed with bare files
(:meth:`ArchiveFS.readdir_pages`):
a program that then stats them all looks up at most this many before listings carry attributes
again. A bigger directory is always listed with them."""

XATTR_DIGEST: Final = b"user.blobfs.digest"
XATTR_SOURCE: Final = b"user.blobfs.source"
XATTR_STATS: Final = b"user.blobfs.stats"

_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_TRUNC


class StatFs(NamedTuple):
    """What ``statfs`` says: sizes in ``frsize`` units, from the index (the data blob's size,
    as squashfs reports its image), nothing free."""

    bsize: int
    frsize: int
    blocks: int
    files: int
    namemax: int


class _DirHandle(NamedTuple):
    node: Node
    listing: Listing


class _FileHandle(NamedTuple):
    node: Node
    readers: Readers


class ArchiveFS:
    """The file system of one archive (see the module docstring).

    ``uid``/``gid`` replace every owner, ``umask`` clears mode bits (None: as archived).
    ``mountpoint`` is only reported (stats). The archive is not closed here: the caller owns it;
    :meth:`aclose` closes the open file objects.

    Every file read from its start is reported to the archive (:meth:`Archive.note_open`): a
    program reading files in archive order (``find | xargs cat``, ``cp -r``) gets the files
    after them loaded in batches ahead of it, a few range requests for many files. Not for
    local archives, whose small files are read on the event loop (``_readers.py``). Reported at
    the first read, not at open: a file the kernel's page cache still holds is opened but never
    read, and loading the files after it would be work nobody uses (a hot ``find | xargs cat``
    spent a quarter of the daemon's time on it).

    ``push(ino, content)`` (the daemon's: ``pyfuse3.notify_store``) stores verified content in
    the kernel's page cache. Opening a file that loading ahead already holds, verified, while
    no handle of it is open, pushes it there before the open is answered (on the event loop: a
    copy of at most a batched file, 4 MiB) and reports the open to the archive: the program's
    reads are then answered by the kernel (``keep_cache``), with no read request (a cold
    ``find | xargs cat`` of 10,000 files took 8.2-9.1 s instead of 10.3-11.4 s without a
    content cache; with one, whose disk writes then set the pace, 13.4-13.8 s instead of
    14.3 s). Only with no handle open: a read in progress holds its pages locked until it is
    answered, and this event loop is the one to answer it. Not for an ``O_DIRECT`` open, whose
    reads bypass the page cache, nor for a file whose whole content already went to the kernel
    (pushed, or read up to its end): a tree read again through the mount is answered by the
    page cache, and a stray read among it (the kernel reads back a page now and then) must not
    set off loading and pushing again what is cached. A push that fails leaves the file to the
    read path (which finds it in the content cache or fetches it again); a kernel without the
    call turns pushing off.
    """

    def __init__(
        self,
        archive: Archive,
        source: SourceInfo,
        *,
        uid: int | None = None,
        gid: int | None = None,
        umask: int | None = None,
        mountpoint: str | None = None,
        push: Callable[[int, Buffer], None] | None = None,
    ) -> None:
        self.archive = archive
        self.source = source
        self.mountpoint = mountpoint
        self.stats = MountStats()
        self._nodes = NodeMap(archive.index)
        self._uid = uid
        self._gid = gid
        self._keep = 0o777 & ~(umask or 0)
        self._dir_mode = stat.S_IFDIR | (DIR_MODE & self._keep)
        self._pages = PageMaker(
            archive.index,
            self._nodes,
            self._row_attr,
            uid=uid,
            gid=gid,
            keep=self._keep,
            dir_mode=self._dir_mode,
        )
        self._attrs: Lru[int, Attr] = Lru(ATTR_CACHE)
        self._listings: Lru[int, Listing] = Lru(LISTING_CACHE_NAMES)
        self._dirs: Lru[int, tuple[Node, int]] = Lru(DIR_NODES)
        """Directories seen in a listing: inode number -> (node, parent's inode number), so
        that opening one, as a tree walk does next, costs no search of the index."""
        self._handles: dict[int, _DirHandle | _FileHandle] = {}
        self._open: dict[int, Readers] = {}  # inode -> readers shared by its file handles
        self._next_fh = 1
        self._scan = not isinstance(archive.source, FileSource)
        self._push = push if self._scan else None
        # One bit per file: its whole content went to the kernel (pushed, or read up to its
        # end), so its pages are probably still cached: not pushed again (see _push_loaded).
        self._in_kernel = bytearray((len(archive.index) + 7) // 8) if self._push else None
        self._source_text = source.pinned.encode("utf-8", "surrogateescape")
        self.bare_files = False
        """Whether listings may give files by name and inode number only (see :meth:`readdir`;
        the adapter turns it on when it can answer so): a program walking the tree by names and
        types (``find``) then costs neither the daemon the files' attributes nor the kernel an
        inode per file. Turned off for good by the first lookup of a file."""

    # ------------------------------------------------------------------ attributes

    def _attr(self, node: Node) -> Attr:
        attr = self._attrs.get(node.ino)
        if attr is None:
            attr = self._node_attr(node)
            self._attrs.put(node.ino, attr)
        return attr

    def _node_attr(self, node: Node) -> Attr:
        """Attributes of one node (:meth:`_fill` makes a listing's, the same, in bulk)."""
        if node.pos < 0:  # the root of an empty archive
            uid = os.getuid() if self._uid is None else self._uid
            gid = os.getgid() if self._gid is None else self._gid
            return Attr(node.ino, self._dir_mode, 2, uid, gid, 0, 0, int(self.stats.started * 1e9))
        return self._row_attr(node.ino, node.pos, node.is_dir, node.path)

    def _row_attr(self, ino: int, pos: int, is_dir: bool, path: bytes) -> Attr:
        """Attributes of the file at position ``pos``, or of directory ``path`` whose first
        file that is (its owner and mtime; 2 + its subdirectories links)."""
        index = self.archive.index
        mode, uid, gid, size, mtime = index.attributes_at(pos)
        uid = uid if self._uid is None else self._uid
        gid = gid if self._gid is None else self._gid
        if is_dir:
            nlink = 2 + index.subdir_count(path)
            return Attr(ino, self._dir_mode, nlink, uid, gid, 0, 0, mtime)
        size = min(size, SIZE_MAX)
        mode = stat.S_IFREG | (mode & self._keep)
        return Attr(ino, mode, 1, uid, gid, size, (size + 511) >> 9, mtime)

    def _listing(self, node: Node) -> Listing:
        listing = self._listings.get(node.ino)
        if listing is None:
            listing = self._nodes.children(node, READDIR_PAGE)
            self._listings.put(node.ino, listing, max(1, len(listing)))
            for child in listing.subdir_nodes():
                self._dirs.put(child.ino, (child, node.ino))
        return listing

    def _dir(self, ino: int) -> Node:
        known = self._dirs.get(ino)
        if known is not None:
            return known[0]
        node = self._nodes.node(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    def _parent_attr(self, node: Node) -> Attr:
        known = self._dirs.get(node.ino)
        if known is not None:
            return self.getattr(known[1])
        return self._attr(self._nodes.parent(node))

    # ------------------------------------------------------------------ metadata

    def lookup(self, parent: int, name: bytes) -> Attr | None:
        """Attributes of ``name`` in directory ``parent``; None when there is no such entry
        (the adapter answers with a cacheable negative entry)."""
        self.stats.lookups += 1
        node = self._nodes.child(self._dir(parent), name)
        if node is None:
            return None
        if not node.is_dir:
            # A program asks for a file by name (stat, open): listings give files with their
            # attributes from now on, so that ls -l, du or a loader statting what it listed do
            # not look each one up.
            self.bare_files = False
        return self._attr(node)

    def getattr(self, ino: int) -> Attr:
        attr = self._attrs.get(ino)
        return attr if attr is not None else self._attr(self._nodes.node(ino))

    def opendir(self, ino: int) -> int:
        node = self._dir(ino)
        return self._new_handle(_DirHandle(node, self._listing(node)))

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Attr | int, int]]:
        """``(name, attributes, next offset)`` from offset ``start`` on: ``.`` and ``..``, then
        the children in name order. An offset is a place in the directory's fixed listing, so
        it stays valid across handles, concurrent listings and remounts.

        A bare file (see :meth:`readdir_pages`) comes as its inode number only (an ``int``
        instead of :class:`Attr`). The same entries as :meth:`readdir_pages`, one by one."""
        for names, records, at, pos, run in self.readdir_pages(fh, start):
            for i, name in enumerate(names, pos + 1):
                if run:
                    yield name, run + i - pos - 1, i
                    continue
                nodeid, attr = unpack(records, at)
                yield name, attr if nodeid else attr.ino, i
                at += ENTRY_SIZE

    def readdir_pages(self, fh: int, start: int) -> Iterator[Page]:
        """The entries from offset ``start`` on, as pages of records
        (:class:`~blobfs.fuse._entries.Page`): an entry's offset is its place (the next one's,
        its place + 1, is what the kernel passes back to continue after it). Offsets as in
        :meth:`readdir`.

        With :attr:`bare_files`, a directory of at most :data:`BARE_MAX` children gives its
        files *bare*, with node id 0: the kernel keeps their names, inode numbers and types
        but makes no inode (a program that stats one looks it up), until a program looks a
        file up by name."""
        h = self._handles.get(fh)
        if not isinstance(h, _DirHandle):
            raise FsError(errno.EBADF)
        node, listing = h
        if start <= 1:
            dots = listing.dots
            if dots is None:
                dots = listing.dots = pack(self._attr(node)) + pack(self._parent_attr(node))
            first = max(start, 0)
            yield Page([b".", b".."][first:], dots, first * ENTRY_SIZE, first, 0)
        n, page = len(listing), listing.page
        bare = self.bare_files and n <= BARE_MAX
        k = max(start, 2) - 2
        while k < n:
            p = k // page
            hi = min(n, p * page + page)
            yield self._pages.page(listing, p, bare, k, hi)
            k = hi

    def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    def statfs(self) -> StatFs:
        index = self.archive.index
        frsize = 4096
        size = index.data_size or self.archive.source.size
        return StatFs(BLOCK_SIZE, frsize, -(-size // frsize), len(index) + index.dir_count + 1, 255)

    # ------------------------------------------------------------------ xattrs

    def listxattr(self, ino: int) -> list[bytes]:
        node = self._nodes.node(ino)
        names = [XATTR_SOURCE]
        if not node.is_dir:
            names.append(XATTR_DIGEST)
        if ino == ROOT_INO:
            names.append(XATTR_STATS)
        return names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        """``user.blobfs.digest`` (a file's ``sha256:<hex>``), ``user.blobfs.source`` (what is
        mounted, ``reference@digest``), ``user.blobfs.stats`` (the root: JSON counters);
        ENODATA for any other ``user.`` name, and ENOTSUP outside the ``user.`` namespace
        (``security.selinux``, ``system.posix_acl_access``): that answer tells programs the
        file system has no such attributes at all, and ``ls -l`` then stops asking for every
        file (coreutils caches it per device), which halves the requests of ``ls -lR``."""
        if not name.startswith(b"user."):
            raise FsError(errno.EOPNOTSUPP)
        node = self._nodes.node(ino)
        if name == XATTR_SOURCE:
            return self._source_text
        if name == XATTR_DIGEST and not node.is_dir:
            return b"sha256:" + self.archive.index.entry_at(node.pos).hash.hex().encode()
        if name == XATTR_STATS and ino == ROOT_INO:
            doc = self.stats.snapshot(self.archive, self.source, self.mountpoint)
            return json.dumps(doc, sort_keys=True).encode()
        raise FsError(errno.ENODATA)

    # ------------------------------------------------------------------ content

    def _new_handle(self, handle: _DirHandle | _FileHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def open(self, ino: int, flags: int) -> int:
        """A handle for reading file ``ino``: EROFS for any write flag, EISDIR for a
        directory. Handles of one inode share its file objects (``_readers.py``)."""
        node = self._nodes.node(ino)
        if flags & _WRITE_FLAGS:
            raise FsError(errno.EROFS)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        readers = self._open.get(ino)
        if readers is None:
            entry = self.archive.index.entry_at(node.pos)
            if (
                self._push is not None
                and not flags & os.O_DIRECT  # its reads bypass the page cache
                and not self._was_in_kernel(node.pos)
            ):
                self._push_loaded(node, entry)
            readers = self._open[ino] = Readers(self.archive, entry)
        readers.refs += 1
        self.stats.opens += 1
        return self._new_handle(_FileHandle(node, readers))

    def _push_loaded(self, node: Node, entry: Entry) -> None:
        """Give the kernel's page cache the content loading ahead holds for this file, if it
        does (see the class docstring); never raises."""
        assert self._push is not None
        data = self.archive.loaded_ahead(entry)
        if data is None:
            return
        try:
            self._push(node.ino, data)
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
                self._push = None
            logger.debug("%s: not stored in the page cache: %s", self.describe(node.ino), e)
            return
        self.archive.note_open(node.pos)  # the kernel answers the reads: no read reports it
        self._mark_in_kernel(node.pos)
        stats = self.stats
        stats.pushes += 1
        stats.bytes_pushed += len(data)

    async def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        """Up to ``size`` bytes at ``offset`` (pread: past the end is ``b""``, reads are
        clamped to the file and to :data:`MAX_READ`), every byte verified: ``bytes`` or a
        read-only view of verified content an open file holds (handed on without a copy)."""
        h = self._handles.get(fh)
        if not isinstance(h, _FileHandle):
            raise FsError(errno.EBADF)
        if offset < 0 or size < 0:
            raise FsError(errno.EINVAL)
        readers = h.readers
        n = min(size, MAX_READ, readers.entry.original_size - offset)
        if n <= 0:
            return b""
        if offset == 0 and self._scan:
            self.archive.note_open(h.node.pos)
        data = await readers.read(offset, n)
        if offset + len(data) == readers.entry.original_size:
            self._mark_in_kernel(h.node.pos)
        stats = self.stats
        stats.reads += 1
        stats.bytes_read += len(data)
        return data

    def _mark_in_kernel(self, pos: int) -> None:
        bits = self._in_kernel
        if bits is not None:
            bits[pos >> 3] |= 1 << (pos & 7)

    def _was_in_kernel(self, pos: int) -> bool:
        bits = self._in_kernel
        return bits is not None and bool(bits[pos >> 3] & (1 << (pos & 7)))

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if not isinstance(h, _FileHandle):
            return
        readers = h.readers
        readers.refs -= 1
        if readers.refs == 0:
            if self._open.get(h.node.ino) is readers:
                del self._open[h.node.ino]
            await readers.aclose()

    async def aclose(self) -> None:
        """Close every open file object (at unmount)."""
        readers, self._open = list(self._open.values()), {}
        self._handles.clear()
        for r in readers:
            await r.aclose()

    # ------------------------------------------------------------------ errors

    def failed(
        self, exc: BaseException, op: str, ino: int | None = None, fh: int | None = None
    ) -> int:
        """The errno answering ``exc`` (``_errno.py``'s table and logging), counting failures
        that are the archive's (EIO and unexpected errors) in the stats."""
        code = errno_for(exc, op, lambda: self.describe(ino, fh))
        if code in (errno.EIO, errno.EFBIG):
            self.stats.errors += 1
        return code

    def describe(self, ino: int | None = None, fh: int | None = None) -> str:
        """``/path`` of an inode or handle, for log lines (never raises)."""
        try:
            if fh is not None:
                h = self._handles.get(fh)
                if h is not None:
                    return "/" + h.node.path.decode("utf-8", "replace")
                return f"<handle {fh}>"
            if ino is not None:
                return "/" + self._nodes.node(ino).path.decode("utf-8", "replace")
        except Exception:
            return f"<inode {ino}>"
        return "/"
