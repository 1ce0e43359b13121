"""The floor the mount benchmarks are measured against: the least a pyfuse3 file system can do.

``python -m tests._floor_fs INDEX MOUNTPOINT`` mounts, in the foreground until it is unmounted, a
read-only file system with the tree of the archive index ``INDEX`` (the same paths,
directories and sizes) whose files hold bytes served straight from memory: no network, no
verification, no cache, one ``bytes`` buffer shared by every file (views of it, never copies).
It is mounted and tuned as ``blobfs mount`` is (the same kernel options, long entry and
attribute timeouts, ``keep_cache``, the mount's readahead and background-request limits) and
lists directories as blobfs does (files as bare entries, ``blobfs/fuse/_entries.py``), so a
benchmark running the same program over both shows what is left once everything blobfs adds
is taken away (``tests/bench_mount.py``).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pyfuse3
import trio

from blobfs.core import Index
from blobfs.fuse._entries import Attr, pack
from blobfs.fuse._ops import _EntryWriter
from blobfs.fuse._options import DEFAULT_MAX_BACKGROUND, DEFAULT_READ_AHEAD_KB, MountOptions
from blobfs.fuse._sysfs import tune_mount

_PATTERN = 1 << 20
_CONTENT = os.urandom(2 * _PATTERN)  # a read at offset o gets bytes from o % _PATTERN on
_TIMEOUT = 86400.0


class FloorFS(pyfuse3.Operations):
    """Directories and files of an index; file contents from memory (see the module)."""

    def __init__(self, index: Index) -> None:
        super().__init__()
        self._view = memoryview(_CONTENT)
        # inode -> (mode, size); directories: inode -> [(name, inode), ...] in name order
        self._attrs: dict[int, tuple[int, int]] = {pyfuse3.ROOT_INODE: (stat.S_IFDIR | 0o555, 0)}
        self._children: dict[int, list[tuple[bytes, int]]] = {pyfuse3.ROOT_INODE: []}
        self._lookup: dict[tuple[int, bytes], int] = {}
        self._entries: dict[int, pyfuse3.EntryAttributes] = {}  # made once, answered often
        dirs: dict[str, int] = {"": pyfuse3.ROOT_INODE}
        for entry in index.walk():
            parent = pyfuse3.ROOT_INODE
            parts = entry.path.split("/")
            for depth in range(len(parts) - 1):
                sub = "/".join(parts[: depth + 1])
                if sub not in dirs:
                    dirs[sub] = self._add(parent, parts[depth], stat.S_IFDIR | 0o555, 0)
                    self._children[dirs[sub]] = []
                parent = dirs[sub]
            self._add(parent, parts[-1], stat.S_IFREG | 0o444, entry.original_size)
        for ino in self._attrs:  # every answer made before mounting: requests only look up
            self._entry(ino)
        # Listings as blobfs answers them: files as bare entries (no inode made in the kernel
        # for them, _entries.py), each reply a record copied into one EntryAttributes.
        self._writer = _EntryWriter.make()
        self._records = {ino: self._record(ino) for ino in self._attrs}

    def _record(self, ino: int) -> bytes:
        mode, size = self._attrs[ino]
        attr = Attr(ino, mode, 2 if stat.S_ISDIR(mode) else 1, 0, 0, size, -(-size // 512), 0)
        return pack(attr, nodeid=None if stat.S_ISDIR(mode) else 0)

    def _add(self, parent: int, name: str, mode: int, size: int) -> int:
        ino = len(self._attrs) + pyfuse3.ROOT_INODE
        self._attrs[ino] = (mode, size)
        self._children[parent].append((name.encode(), ino))
        self._lookup[(parent, name.encode())] = ino
        return ino

    def _entry(self, ino: int) -> pyfuse3.EntryAttributes:
        e = self._entries.get(ino)
        if e is None:
            e = self._entries[ino] = self._make_entry(ino)
        return e

    def _make_entry(self, ino: int) -> pyfuse3.EntryAttributes:
        mode, size = self._attrs[ino]
        e = pyfuse3.EntryAttributes()
        e.st_ino = ino
        e.st_mode = mode
        e.st_size = size
        e.st_nlink = 2 if stat.S_ISDIR(mode) else 1
        e.st_blksize = 4096
        e.st_blocks = -(-size // 512)
        e.entry_timeout = e.attr_timeout = _TIMEOUT
        return e

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ino = self._lookup.get((parent_inode, name))
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._entry(ino)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        children, writer = self._children[fh], self._writer
        for i in range(start_id, len(children)):
            name, ino = children[i]
            if writer is None:
                entry = self._entry(ino)
            else:
                writer.view[:] = self._records[ino]
                entry = writer.entry
            if not pyfuse3.readdir_reply(token, name, entry, i + 1):
                return

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> memoryview:  # type: ignore[override]
        n = max(0, min(size, self._attrs[fh][1] - off))
        start = off % _PATTERN
        return self._view[start : start + min(n, _PATTERN)]

    async def release(self, fh: int) -> None:
        return None


async def _serve(mountpoint: str) -> None:
    tune_mount(mountpoint, DEFAULT_READ_AHEAD_KB, DEFAULT_MAX_BACKGROUND)
    await pyfuse3.main(min_tasks=1, max_tasks=128)


def main(argv: list[str]) -> int:
    index_path, mountpoint = argv
    fs = FloorFS(Index(Path(index_path).read_bytes()))
    pyfuse3.init(fs, mountpoint, MountOptions().kernel_options("blobfs-floor"))
    try:
        trio.run(_serve, mountpoint)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
