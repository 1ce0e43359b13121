"""Writing files below a destination directory: jailed and atomic (``cp`` and ``pull``).

- **Jailed**: every directory below the destination root is opened with ``O_NOFOLLOW``
  relative to its parent's descriptor (``openat``), so a symlink planted inside the destination
  is never followed, not even by a race; the final name is replaced with ``rename``, which
  replaces a symlink itself rather than writing through it.
- **Atomic**: content goes to ``.blobfs-<hex>`` in the target directory and is renamed over the
  name only by :meth:`PendingFile.commit`, which the caller calls once the content is verified;
  :meth:`PendingFile.abort` removes the temporary file.

Errors are ``OSError`` with the destination path as ``filename``: a symlink in the way
(``ELOOP``), a non-directory where a directory is needed (``ENOTDIR``), a directory where a
file goes (``EISDIR``), and whatever the file system answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Final

__all__ = ["Jail", "PendingFile", "check_parts"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_parts(root: Path, parts: tuple[str, ...]) -> None:
    """Refuse path components that would leave the directory they are looked up in (the index
    never holds them; a caller's own path might)."""
    if not parts or any(p in ("", ".", "..") or "/" in p or "\0" in p for p in parts):
        raise OSError(errno.EINVAL, "not a plain relative path", str(root.joinpath(*parts)))


class Jail:
    """Directory descriptors below one destination root, opened without following symlinks.

    Keeps only the chain of the current directory open (files are visited in path order), so
    an archive with a million directories does not need a million descriptors. One jail is
    single-threaded; several jails (one per thread) may share a root: a directory another jail
    creates meanwhile is simply opened.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._chain: list[tuple[str, int]] = [("", os.open(root, os.O_RDONLY | os.O_DIRECTORY))]

    def close(self) -> None:
        for _, fd in self._chain:
            os.close(fd)
        self._chain.clear()

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def dir_fd(self, parts: tuple[str, ...]) -> int:
        """Descriptor of directory ``root/parts...``, creating missing directories; valid until
        the next call (the chain moves on)."""
        chain = self._chain
        keep = 1
        while keep < len(chain) and keep - 1 < len(parts) and chain[keep][0] == parts[keep - 1]:
            keep += 1
        for _, fd in chain[keep:]:
            os.close(fd)
        del chain[keep:]
        for i in range(keep - 1, len(parts)):
            name = parts[i]
            parent = chain[-1][1]
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                # Another jail on the same root (parallel extraction) may create it first.
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o777, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                shown = str(self.root.joinpath(*parts[: i + 1]))
                if stat.S_ISLNK(os.lstat(name, dir_fd=parent).st_mode):
                    raise OSError(
                        errno.ELOOP, "is a symlink in the destination; refusing to follow it", shown
                    ) from None
                raise OSError(errno.ENOTDIR, "exists and is not a directory", shown) from None
            chain.append((name, fd))
        return chain[-1][1]

    def exists(self, parts: tuple[str, ...]) -> bool:
        """Whether ``root/parts...`` exists as a non-directory (a symlink counts, unfollowed);
        an existing directory there raises ``IsADirectoryError`` (it is never replaced)."""
        check_parts(self.root, parts)
        pfd = self.dir_fd(parts[:-1])
        try:
            st = os.lstat(parts[-1], dir_fd=pfd)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(
                errno.EISDIR,
                "is a directory in the destination; not replaced",
                str(self.root.joinpath(*parts)),
            )
        return True


class PendingFile:
    """A temporary file next to its final name, renamed into place by :meth:`commit`.

    Holds its own descriptors (the file and a duplicate of its directory), so it may be
    written and committed from another thread than the one that created it, after that
    thread's jail moved on. Exactly one of :meth:`commit` or :meth:`abort` ends it; ``abort``
    is idempotent and safe after a failed ``commit``. File-system errors are ``OSError`` naming
    the destination path (not the temporary name).
    """

    __slots__ = ("_dir_fd", "_fd", "_parts", "_root", "_tmp")

    def __init__(self, jail: Jail, parts: tuple[str, ...], *, private: bool) -> None:
        """Create ``.blobfs-<hex>`` in ``root/parts[:-1]`` (mode 0600 when ``private``, for
        content whose archived mode is applied at commit; else 0644 less the umask)."""
        check_parts(jail.root, parts)
        self._root = jail.root
        self._parts = parts
        self._fd = -1
        self._dir_fd = os.dup(jail.dir_fd(parts[:-1]))
        self._tmp = f".blobfs-{secrets.token_hex(8)}"
        try:
            self._fd = os.open(
                self._tmp, _FILE_FLAGS, 0o600 if private else 0o644, dir_fd=self._dir_fd
            )
        except OSError as e:
            self.abort()
            raise self._named(e) from None

    def _named(self, e: OSError) -> OSError:
        """``e`` about the destination path (an error names it, so building it waits)."""
        return OSError(e.errno, e.strerror, str(self._root.joinpath(*self._parts)))

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (unverified content may go here: nothing is visible until commit)."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise self._named(e) from None

    def commit(self, mode: int | None = None, mtime_ns: int | None = None) -> None:
        """Apply ``mode`` (permission bits) and ``mtime_ns`` when given, close, and rename over
        the final name (replacing a file or symlink there)."""
        try:
            if mode is not None:
                os.fchmod(self._fd, mode & 0o777)
            if mtime_ns is not None:
                os.utime(self._fd, ns=(mtime_ns, mtime_ns))
            fd, self._fd = self._fd, -1
            os.close(fd)
            name = self._parts[-1]
            os.replace(self._tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as e:
            self.abort()
            raise self._named(e) from None
        except BaseException:
            self.abort()
            raise
        os.close(self._dir_fd)
        self._dir_fd = -1

    def abort(self) -> None:
        """Close and remove the temporary file; idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        dfd, self._dir_fd = self._dir_fd, -1
        if dfd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp, dir_fd=dfd)
            os.close(dfd)
