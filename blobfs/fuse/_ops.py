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
from typing import Final

import pyfuse3
from pyfuse3 import FUSEError

from ._fs import BLOCK_SIZE, ArchiveFS, Attr

__all__ = ["TIMEOUT", "Operations", "entry_attributes"]

TIMEOUT: Final = 86400.0
"""Seconds the kernel may trust an entry or attributes (a day: nothing ever changes; a remount
is a new superblock with fresh caches)."""

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


class _BareEntry:
    """The answer for a child given by name and inode number only (``ArchiveFS.readdir``): a
    readdir entry whose node id is 0, which the kernel takes as "no attributes" (it makes no
    inode and caches nothing for it; a later stat looks the name up) while the directory entry
    keeps the file's inode number and type (``d_ino``, ``d_type``: all ``find -type f`` needs).

    pyfuse3 sets the node id and ``st_ino`` together, so the node id (the first field of the
    ``fuse_entry_param`` in an ``EntryAttributes``) is cleared in place through ctypes, once the
    layout has been checked on a probe object (:meth:`make`; None when it differs, and then
    every child is answered with its attributes). One object serves every entry:
    ``readdir_reply`` copies it into the reply at once, and readdir never awaits in between.
    """

    __slots__ = ("entry", "nodeid")

    def __init__(self, entry: pyfuse3.EntryAttributes, nodeid: ctypes.c_uint64) -> None:
        self.entry = entry
        self.nodeid = nodeid

    @classmethod
    def make(cls) -> _BareEntry | None:
        e = _EntryAttributes()
        head = object.__basicsize__  # the fuse_entry_param follows the object header
        if type(e).__basicsize__ < head + 40:
            return None
        e.st_ino = 0x0123456789ABCDEF  # sets fuse_param.ino and fuse_param.attr.st_ino
        e.generation = 0x1122334455667788
        word = ctypes.c_uint64.from_address
        at = id(e) + head
        # ino, generation, then struct stat (st_dev, st_ino, ...): where libfuse takes the node
        # id, and d_ino from st_ino.
        if (word(at).value, word(at + 8).value, word(at + 24).value) != (
            0x0123456789ABCDEF,
            0x1122334455667788,
            0x0123456789ABCDEF,
        ):
            return None
        nodeid = word(at)
        nodeid.value = 0
        if e.st_ino != 0:  # the getter reads the node id
            return None
        e.generation = 0
        e.st_mode = stat.S_IFREG | 0o444
        return cls(e, nodeid)

    def __call__(self, ino: int) -> pyfuse3.EntryAttributes:
        e = self.entry
        e.st_ino = ino
        self.nodeid.value = 0
        return e


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
        self._bare = _BareEntry.make()
        fs.bare_files = self._bare is not None

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
        reply, convert, bare = pyfuse3.readdir_reply, entry_attributes, self._bare
        try:
            for name, attr, next_id in self.fs.readdir(fh, start_id):
                if isinstance(attr, int):
                    assert bare is not None  # the fs gives bare files only when it may
                    entry = bare(attr)
                else:
                    entry = convert(attr)
                if not reply(token, name, entry, next_id):
                    break
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
