"""The blobfs FUSE mount: the only package that imports pyfuse3.

Public API::

    from blobfs.fuse import mount, parse_options, SourceInfo, unmount
    options = parse_options(["uid=1000,allow_other"])          # MountError when wrong
    status = mount(lambda: open_file("a/index.blob", "a/data.blob"), "/mnt/a",
                   source=SourceInfo("a"), options=options, foreground=True)
    unmount("/mnt/a")                                           # fusermount3 -u

Layout: ``_fs.py`` is the file system without FUSE (tested without a kernel), ``_inodes.py``
its stable inode numbers, ``_readers.py`` the open files, ``_errno.py`` the one errno table,
``_ops.py`` the thin pyfuse3 adapter, ``_daemon.py`` the mount's life (detach, signals,
readiness), ``_options.py`` the ``-o`` options, ``_stats.py`` the counters; helpers:
``_mountpoint.py``, ``_detach.py``, ``_notify.py``, ``_sysfs.py``, ``_log.py``.

:func:`mount` (and with it pyfuse3 and trio) is imported on first use, so commands that only
parse options or unmount start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._mountpoint import is_mounted as is_mounted
from ._mountpoint import unmount as unmount
from ._options import MountOptions as MountOptions
from ._options import parse_options as parse_options
from ._stats import SourceInfo as SourceInfo

if TYPE_CHECKING:
    from ._daemon import mount as mount
    from ._fs import ArchiveFS as ArchiveFS

__all__ = [
    "ArchiveFS",
    "MountOptions",
    "SourceInfo",
    "is_mounted",
    "mount",
    "parse_options",
    "unmount",
]


def __getattr__(name: str) -> Any:
    if name == "mount":
        from ._daemon import mount

        return mount
    if name == "ArchiveFS":
        from ._fs import ArchiveFS

        return ArchiveFS
    raise AttributeError(f"module 'blobfs.fuse' has no attribute {name!r}")
