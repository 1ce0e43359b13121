"""The pyfuse3 adapter: each handler converts arguments, makes one call into ``_fs.py``, converts
the answer (STYLE.md rule 2).

Only :class:`pyfuse3.FUSEError` leaves a handler (rule 3): every other exception is turned into
an errno by :meth:`ArchiveFS.failed` (the one table, ``_errno.py``), which logs what deserves
it; an unexpected exception is logged with its traceback and answered EIO, and the daemon keeps
serving. ``trio.Cancelled`` (a BaseException) passes through: it only happens at shutdown.

The data is immutable, so the kernel may cache everything for long: entries and attributes for
:data:`TIMEOUT`, negative lookups too (Python's import machinery and shells probe many names
that are not there), and file pages across opens (``keep_cache``).
"""

from __future__ import annotations

import ctypes
import errno
import stat
from collections.abc import Sequence
from itertools import count
from typing import Final

import pyfuse3
from pyfuse3 import FUSEError

from ._entries import BLOCK_SIZE, ENTRY_SIZE, INO_WORD, TIMEOUT, Attr, pack
from ._fs import ArchiveFS

__all__ = ["TIMEOUT", "Operations", "entry_attributes"]

_EntryAttributes: Final = pyfuse3.EntryAttributes


def entry_attributes(attr: Attr) -> pyfuse3.EntryAttributes:
    """The pyfuse3 form of ``attr`` with the long timeouts.

    A listing converts every child (``readdir`` answers with attributes), so fields already at
    pyfuse3's defaults (zero generation, rdev, owner and group; one link) are left alone: each
    attribute set is a Python call, and this halves the cost of a conversion.
    """
    ino, mode, nlink, uid, gid, size, blocks, mtime = attr
    e = _EntryAttributes()
    e.st_ino = ino
    e.entry_timeout = TIMEOUT
    e.attr_timeout = TIMEOUT
    e.st_mode = mode
    if nlink != 1:
        e.st_nlink = nlink
    if uid:
        e.st_uid = uid
    if gid:
        e.st_gid = gid
    e.st_size = size
    e.st_blksize = BLOCK_SIZE
    e.st_blocks = blocks
    e.st_atime_ns = mtime
    e.st_mtime_ns = mtime
    e.st_ctime_ns = mtime
    return e


class _EntryWriter:
    """One ``EntryAttributes`` whose ``fuse_entry_param`` is overwritten with a record of
    ``_entries.py`` for each child of a listing: ``readdir_reply`` copies it into the reply at
    once, and readdir never awaits in between, so one object serves every entry (0.1 µs a
    child instead of 2 µs for a new object and its fields set one by one).

    The struct follows the object header; :meth:`make` checks on probe values that a record
    packed here equals the struct pyfuse3 fills from the same fields (``entry_attributes``),
    and that a record written in reads back through pyfuse3's getters. None when this
    pyfuse3 or platform lays it out differently: then every child gets its own object.
    """

    __slots__ = ("entry", "view", "words")

    def __init__(self, entry: pyfuse3.EntryAttributes, view: memoryview) -> None:
        self.entry = entry
        self.view = view
        self.words = view.cast("Q")
        """The record as 64-bit words (``words[INO_WORD]``: the inode number)."""

    @classmethod
    def make(cls) -> _EntryWriter | None:
        e = _EntryAttributes()
        head = object.__basicsize__  # the fuse_entry_param follows the object header
        if type(e).__basicsize__ < head + ENTRY_SIZE:
            return None
        view = memoryview((ctypes.c_char * ENTRY_SIZE).from_address(id(e) + head)).cast("B")
        probes = (
            Attr(0x123456789, stat.S_IFREG | 0o640, 1, 1001, 1002, 12_345, 25, -1_500_000_001),
            Attr(5 << 33, stat.S_IFDIR | 0o555, 7, (1 << 32) - 1, 3, 0, 0, 17 * 10**17 + 7),
        )
        for probe in probes:
            theirs = entry_attributes(probe)
            want = bytes(memoryview((ctypes.c_char * ENTRY_SIZE).from_address(id(theirs) + head)))
            if pack(probe) != want:
                return None
            view[:] = pack(probe, nodeid=0)
            if (e.st_ino, e.st_mode, e.st_nlink, e.st_size, e.st_mtime_ns, e.entry_timeout) != (
                0,
                probe.mode,
                probe.nlink,
                probe.size,
                probe.mtime_ns,
                TIMEOUT,
            ):
                return None
        return cls(e, view)


def _negative_entry() -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = 0  # "no such entry", cached for entry_timeout
    e.entry_timeout = TIMEOUT
    return e


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers over an :class:`ArchiveFS` (see the module docstring)."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: ArchiveFS) -> None:
        super().__init__()
        self.fs = fs
        self._writer = _EntryWriter.make()
        fs.bare_files = self._writer is not None

    def _fail(
        self, e: Exception, op: str, ino: int | None = None, fh: int | None = None
    ) -> FUSEError:
        return FUSEError(self.fs.failed(e, op, ino, fh))

    # ------------------------------------------------------------------ metadata

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            attr = self.fs.lookup(parent_inode, name)
        except Exception as e:
            raise self._fail(e, "lookup", parent_inode) from None
        return _negative_entry() if attr is None else entry_attributes(attr)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """Nothing to do: inode numbers are computed, not allocated (``_inodes.py``)."""

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return entry_attributes(self.fs.getattr(inode))
        except Exception as e:
            raise self._fail(e, "getattr", inode) from None

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        try:
            return self.fs.opendir(inode)
        except Exception as e:
            raise self._fail(e, "opendir", inode) from None

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # Fills the kernel's buffer: entries go until readdir_reply says the next one does not
        # fit (the kernel asks again from that entry's offset).
        reply, writer = pyfuse3.readdir_reply, self._writer
        try:
            if writer is None:
                for name, attr, next_id in self.fs.readdir(fh, start_id):
                    assert isinstance(attr, Attr)  # the fs lists bare files only with a writer
                    if not reply(token, name, entry_attributes(attr), next_id):
                        return
                return
            entry, view, words = writer.entry, writer.view, writer.words
            for names, records, first, pos, run in self.fs.readdir_pages(fh, start_id):
                if run:  # bare files: one record, their inode numbers
                    view[:] = records[first : first + ENTRY_SIZE]
                    for name, next_id, ino in zip(names, count(pos + 1), count(run)):
                        words[INO_WORD] = ino
                        if not reply(token, name, entry, next_id):
                            return
                    continue
                for name, next_id, at in zip(names, count(pos + 1), count(first, ENTRY_SIZE)):
                    view[:] = records[at : at + ENTRY_SIZE]
                    if not reply(token, name, entry, next_id):
                        return
        except Exception as e:
            raise self._fail(e, "readdir", fh=fh) from None

    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        try:
            s = self.fs.statfs()
        except Exception as e:
            raise self._fail(e, "statfs") from None
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.bsize
        out.f_frsize = s.frsize
        out.f_blocks = s.blocks
        out.f_bfree = out.f_bavail = 0
        out.f_files = s.files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = s.namemax
        return out

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.fs.getxattr(inode, name)
        except Exception as e:
            raise self._fail(e, "getxattr", inode) from None

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        try:
            return self.fs.listxattr(inode)
        except Exception as e:
            raise self._fail(e, "listxattr", inode) from None

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        raise FUSEError(errno.EINVAL)  # archives hold regular files only

    # ------------------------------------------------------------------ content

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        try:
            fh = self.fs.open(inode, flags)
        except Exception as e:
            raise self._fail(e, "open", inode) from None
        # keep_cache: the kernel's pages of this file stay valid across opens (immutable).
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    # pyfuse3 takes any contiguous buffer (PyObject_GetBuffer in handlers.pxi), not only the
    # bytes its signature says: a view of verified content goes to the kernel without a copy.
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        try:
            return await self.fs.read(fh, off, size)
        except Exception as e:
            raise self._fail(e, "read", fh=fh) from None

    async def release(self, fh: int) -> None:
        try:
            await self.fs.release(fh)
        except Exception as e:
            raise self._fail(e, "release", fh=fh) from None

    # ------------------------------------------------------------------ writes: read-only
    # The mount is "ro", so the kernel refuses these itself; answering EROFS here too keeps
    # the file system read-only whatever the mount flags say.

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FUSEError(errno.EROFS)

    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise FUSEError(errno.EROFS)

    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise FUSEError(errno.EROFS)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise FUSEError(errno.EROFS)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise FUSEError(errno.EROFS)

    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise FUSEError(errno.EROFS)
