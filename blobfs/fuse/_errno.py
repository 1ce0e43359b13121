"""The one table from exceptions to errno values, and the logging policy that goes with it.

Every handler of the mount answers a failure through :func:`errno_for`: ordinary answers
(no such name, a write on a read-only file system, an unknown xattr) are returned quietly;
failures of the archive (content that does not verify, a data source that failed after its
retries) are logged once at ERROR, naming the path and the cause; anything unexpected is logged
with its traceback. Whatever happens, the caller gets an errno and the daemon stays up (STYLE.md
rule 3: only ``FUSEError`` may leave a pyfuse3 handler).

The FUSE-free core (``_fs.py``) raises blobfs's own errors (``blobfs.errors``) where the archive
speaks, and :class:`FsError` for answers that only a file system gives (EROFS, EBADF, ENODATA,
EINVAL), so this module needs no pyfuse3.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Final

from ..errors import (
    BlobfsError,
    FileTooLarge,
    IntegrityError,
    InvalidPath,
    IsADirectory,
    NotADirectory,
    NotFound,
    SourceError,
)

__all__ = ["ERRNO_TABLE", "FsError", "errno_for"]

logger = logging.getLogger("blobfs.fuse")


class FsError(Exception):
    """A file-system answer with its errno (EROFS for a write, EBADF for an unknown handle,
    ENODATA for an unknown xattr, ...). Expected, never logged above DEBUG."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


QUIET: Final = 0
"""Severity: an ordinary answer (the caller asked for something that is not there)."""
LOUD: Final = 1
"""Severity: the archive failed to deliver; one ERROR line naming the path and the cause."""

ERRNO_TABLE: Final[tuple[tuple[type[BaseException], int, int], ...]] = (
    # Order matters: the first matching class wins, so subclasses come before their bases.
    (NotFound, errno.ENOENT, QUIET),
    (NotADirectory, errno.ENOTDIR, QUIET),
    (IsADirectory, errno.EISDIR, QUIET),
    # A name that cannot be an archive path (".." as a component, bad UTF-8): no such entry.
    (InvalidPath, errno.ENOENT, QUIET),
    (IntegrityError, errno.EIO, LOUD),
    (SourceError, errno.EIO, LOUD),  # HttpError included: retries are exhausted by now
    (FileTooLarge, errno.EFBIG, LOUD),
    (BlobfsError, errno.EIO, LOUD),
)
"""``(exception class, errno, severity)``; :class:`FsError` carries its own errno (QUIET) and
anything not listed is unexpected: EIO, logged with its traceback."""


def errno_for(exc: BaseException, op: str, where: Callable[[], str]) -> int:
    """The errno answering ``exc`` raised by handler ``op``, logged by the policy above.

    ``where`` names the target (an archive path) and is called only when something is logged.
    """
    if isinstance(exc, FsError):
        return exc.errno
    for cls, code, severity in ERRNO_TABLE:
        if isinstance(exc, cls):
            if severity == LOUD:
                logger.error("%s: %s failed: %s", where(), op, exc)
            return code
    # A bug, or a failure nobody translated: keep the traceback, keep the daemon.
    logger.error("%s: %s failed with an unexpected error", where(), op, exc_info=exc)
    return errno.EIO
