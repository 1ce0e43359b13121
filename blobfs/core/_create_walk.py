"""Enumerating a source tree for ``create``, and reopening its files without following links.

Both halves work from a file descriptor of the source root and open every directory and file
relative to its parent with ``O_NOFOLLOW``: a directory swapped for a symlink between the walk and
the read cannot redirect the archiver outside the tree (the twin of Go's ``os.Root``).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass

from ..errors import CreateError, FileChanged, TooManyFiles

__all__ = ["FileRef", "SkippedPath", "TreeOpener", "walk_tree"]

logger = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in for a walked file must not block the open; it changes nothing
# for regular files.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

# Reasons a path is reported in ``CreateResult.skipped``.
SYMLINK = "symlink"
_FIFO = "fifo"
_SOCKET = "socket"
_DEVICE = "device"
_OTHER = "unsupported file type"
_EMPTY_DIR = "empty directory"
_NOT_UTF8 = "invalid name (not UTF-8)"


@dataclass(frozen=True, slots=True)
class SkippedPath:
    """A path of the source tree that is not in the archive, and why.

    ``reason`` is one of ``"symlink"``, ``"fifo"``, ``"socket"``, ``"device"``,
    ``"unsupported file type"``, ``"empty directory"`` (a directory with no entries at all;
    directories are implied by file paths) or ``"invalid name (not UTF-8)"`` (no reader can
    address such a path; a directory with such a name is skipped whole). ``path`` is relative and
    ``/``-separated; undecodable bytes appear as surrogate escapes (``os.fsdecode``).
    """

    path: str
    reason: str


@dataclass(slots=True)  # not frozen: built once per file, and frozen __init__ is 2x slower
class FileRef:
    """A regular file found by the walk: its path and the ``lstat`` identity seen then."""

    raw: bytes
    path: str
    size: int
    dev: int
    ino: int


def _show(raw: bytes) -> str:
    return os.fsdecode(raw)


def _list_dir(fd: int, raw: bytes) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(fd) as it:
            return list(it)
    except OSError as exc:
        where = _show(raw) if raw else "the source directory"
        raise CreateError(f"cannot list {where}: {exc.strerror}") from exc


def walk_tree(root_fd: int, max_files: int) -> tuple[list[FileRef], list[SkippedPath]]:
    """Every regular file below ``root_fd``, sorted bytewise by path, and what was skipped.

    Symlinks are never followed. ``max_files`` < 0 means no limit; the walk stops with
    :class:`TooManyFiles` as soon as the count exceeds it, so nothing is written for a tree that
    is too large and a huge tree is not enumerated in full just to be refused.
    """
    files: list[FileRef] = []
    skipped: list[SkippedPath] = []
    # One frame per directory level being listed: (fd, relative path prefix, entries, next index).
    # Only the current chain of directories is open, so open descriptors grow with depth only.
    root = os.dup(root_fd)
    frames: list[tuple[int, bytes, list[os.DirEntry[str]], list[int]]] = []
    try:
        frames.append((root, b"", _list_dir(root, b""), [0]))
        while frames:
            fd, prefix, entries, pos = frames[-1]
            if pos[0] == len(entries):
                frames.pop()
                os.close(fd)
                continue
            e = entries[pos[0]]
            pos[0] += 1
            name = os.fsencode(e.name)
            raw = prefix + name
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(SkippedPath(_show(raw), _NOT_UTF8))
                continue
            if e.is_dir(follow_symlinks=False):
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    continue  # removed during the walk: it was never there
                except OSError as exc:
                    raise CreateError(
                        f"cannot open directory {_show(raw)}: {exc.strerror}"
                    ) from exc
                try:
                    listing = _list_dir(child, raw)
                except BaseException:
                    os.close(child)
                    raise
                if not listing:
                    os.close(child)
                    skipped.append(SkippedPath(_show(raw), _EMPTY_DIR))
                    continue
                frames.append((child, raw + b"/", listing, [0]))
                continue
            if e.is_symlink():
                skipped.append(SkippedPath(_show(raw), SYMLINK))
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed during the walk
            except OSError as exc:
                raise CreateError(f"cannot stat {_show(raw)}: {exc.strerror}") from exc
            mode = st.st_mode
            if not stat.S_ISREG(mode):
                reason = (
                    SYMLINK
                    if stat.S_ISLNK(mode)
                    else _FIFO
                    if stat.S_ISFIFO(mode)
                    else _SOCKET
                    if stat.S_ISSOCK(mode)
                    else _DEVICE
                    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else _OTHER
                )
                skipped.append(SkippedPath(_show(raw), reason))
                continue
            files.append(FileRef(raw, raw.decode("utf-8"), st.st_size, st.st_dev, st.st_ino))
            if 0 <= max_files < len(files):
                raise TooManyFiles(
                    f"the source tree holds more than {max_files} regular files (max_files="
                    f"{max_files}; stopped counting at {len(files)}); raise max_files or pass a "
                    "negative value for no limit"
                )
    finally:
        for fd, *_ in frames:
            os.close(fd)
    # Bytewise order of the full UTF-8 path: the order of the index and of the data blob.
    files.sort(key=lambda f: f.raw)
    skipped.sort(key=lambda s: os.fsencode(s.path))
    for s in skipped:
        logger.debug("skipping %s (%s)", s.path, s.reason)
    return files, skipped


class TreeOpener:
    """Opens the directories of walked files relative to the root descriptor, level by level.

    Keeps the directory chain of the last file open: files come in bytewise path order, in
    which every directory's subtree is contiguous, so each directory is opened once. A directory
    left behind is *retired*, not closed: jobs still in flight may hold its descriptor; the
    caller closes what :meth:`retire` hands over once those jobs are done. Calling thread only.
    """

    def __init__(self, root_fd: int) -> None:
        self._root = root_fd
        self._names: list[bytes] = []
        self._fds: list[int] = []
        self._retired: list[int] = []
        self._last = b""  # directory part of the last path, the common case's shortcut

    def _truncate(self, depth: int) -> None:
        if depth < len(self._fds):
            self._last = b"\0"  # matches no path: the next parent() walks the chain again
        while len(self._fds) > depth:
            self._retired.append(self._fds.pop())
            self._names.pop()

    def parent(self, raw: bytes) -> tuple[int, bytes]:
        """``(descriptor of the directory holding file raw, file name)``."""
        head, _, name = raw.rpartition(b"/")
        if head == self._last:
            return (self._fds[-1] if self._fds else self._root), name
        dirs = head.split(b"/") if head else []
        keep = 0
        while keep < min(len(dirs), len(self._names)) and self._names[keep] == dirs[keep]:
            keep += 1
        self._truncate(keep)
        for d in dirs[keep:]:
            try:
                fd = os.open(d, _DIR_FLAGS, dir_fd=self._fds[-1] if self._fds else self._root)
            except OSError as exc:
                where = _show(b"/".join([*self._names, d]))
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    raise FileChanged(where, "directory removed or replaced") from exc
                raise CreateError(f"cannot open directory {where}: {exc.strerror}") from exc
            self._names.append(d)
            self._fds.append(fd)
        self._last = head
        return (self._fds[-1] if self._fds else self._root), name

    def retire(self) -> list[int]:
        """Descriptors of directories left since the last call; the caller closes them."""
        out, self._retired = self._retired, []
        return out

    def close(self) -> None:
        """Close every descriptor still held (call once no job uses them)."""
        self._truncate(0)
        for fd in self.retire():
            os.close(fd)
