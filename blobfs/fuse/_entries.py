"""Directory entries in the binary form a ``readdir`` reply carries them, made in bulk.

pyfuse3 answers every ``readdir`` as readdirplus: per child a name, an offset and a libfuse
``struct fuse_entry_param`` (node id, generation, ``struct stat``, attribute and entry
timeouts), which ``pyfuse3.readdir_reply`` copies out of the ``EntryAttributes`` it is given.
Making an ``EntryAttributes`` per child and setting a dozen fields one Python call each costs
about 2 µs a child, most of what ``ls -lR`` of 100,000 files costs the daemon. Here a listing's
entries are made a page at a time as packed records of exactly that struct (numpy columns, or
``struct`` for a few rows), kept with the listing, and the adapter copies each record into one
``EntryAttributes`` before replying (``_ops.py``, about 0.1 µs a child).

The layout is that of Linux x86-64 (glibc's 144-byte ``struct stat``). The adapter checks at
start that its pyfuse3 lays an ``EntryAttributes`` out the same way (:func:`pack` against the
fields set one by one); where it does not, it sets the fields itself, from :func:`unpack`.

A record whose node id is 0 is a *bare* entry: the kernel makes no inode for it and caches
nothing, but the directory entry keeps its inode number and type (``attr.st_ino``,
``st_mode``), which is all ``find -type f`` needs (``ArchiveFS.readdir_pages``).
"""

from __future__ import annotations

import stat
import struct
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "BARE_FILE",
    "BLOCK_SIZE",
    "ENTRY_DTYPE",
    "ENTRY_SIZE",
    "INO_WORD",
    "TIMEOUT",
    "Attr",
    "Page",
    "bare_records",
    "pack",
    "pack_columns",
    "unpack",
]

BLOCK_SIZE: Final = 128 << 10
"""``st_blksize`` and ``f_bsize``: programs size their reads by it (``cp``, ``cat``), and the
kernel's FUSE requests are 128 KiB by default, so smaller buffers only cost more requests."""

TIMEOUT: Final = 86400.0
"""Seconds the kernel may trust an entry or attributes (a day: nothing ever changes; a remount
is a new superblock with fresh caches)."""

_NS: Final = 1_000_000_000


class Attr(NamedTuple):
    """What ``stat`` says about an inode (atime and ctime are the mtime)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    mtime_ns: int


class Page(NamedTuple):
    """Consecutive entries of a listing: the record of ``names[i]`` is at byte
    ``at + i * ENTRY_SIZE`` of ``records`` and its offset is ``pos + i``; or, when ``run`` is
    not 0, ``names`` are bare files numbered ``run + i``, each the record at ``at`` with that
    inode number (a directory of files listed bare: nothing is made per file)."""

    names: list[bytes]
    records: bytes
    at: int
    pos: int
    run: int


ENTRY_SIZE: Final = 176
"""Bytes of one record: ``sizeof(struct fuse_entry_param)`` on x86-64."""

_FIELDS: Final = (
    # name, format, offset: fuse_entry_param {ino, generation, struct stat attr, attr_timeout,
    # entry_timeout}; struct stat {dev, ino, nlink, mode, uid, gid, pad, rdev, size, blksize,
    # blocks, atim, mtim, ctim, reserved[3]}.
    ("nodeid", "<u8", 0),
    ("generation", "<u8", 8),
    ("dev", "<u8", 16),
    ("ino", "<u8", 24),
    ("nlink", "<u8", 32),
    ("mode", "<u4", 40),
    ("uid", "<u4", 44),
    ("gid", "<u4", 48),
    ("rdev", "<u8", 56),
    ("size", "<i8", 64),
    ("blksize", "<i8", 72),
    ("blocks", "<i8", 80),
    ("atime", "<i8", 88),
    ("atime_ns", "<i8", 96),
    ("mtime", "<i8", 104),
    ("mtime_ns", "<i8", 112),
    ("ctime", "<i8", 120),
    ("ctime_ns", "<i8", 128),
    ("attr_timeout", "<f8", 160),
    ("entry_timeout", "<f8", 168),
)

ENTRY_DTYPE: Final = np.dtype(
    {
        "names": [f[0] for f in _FIELDS],
        "formats": [f[1] for f in _FIELDS],
        "offsets": [f[2] for f in _FIELDS],
        "itemsize": ENTRY_SIZE,
    }
)

# The same record for one row: node id, generation, dev, ino, nlink, mode, uid, gid, (pad),
# rdev, size, blksize, blocks, atime, atime_ns, mtime, mtime_ns, ctime, ctime_ns, (reserved),
# attr_timeout, entry_timeout.
_ROW: Final = struct.Struct("<QQQQQIII4xQqqqqqqqqq24xdd")
assert _ROW.size == ENTRY_SIZE

_RAW: Final = np.dtype(f"V{ENTRY_SIZE}")
"""A record as opaque bytes."""

_WORDS: Final = ENTRY_SIZE // 8
"""A record as 64-bit words: the node id is word 0."""


def pack(attr: Attr, nodeid: int | None = None) -> bytes:
    """The record of ``attr`` (node id: its inode number unless given)."""
    ino, mode, nlink, uid, gid, size, blocks, mtime_ns = attr
    sec, ns = divmod(mtime_ns, _NS)
    return _ROW.pack(
        ino if nodeid is None else nodeid,
        0,
        0,
        ino,
        nlink,
        mode,
        uid,
        gid,
        0,
        size,
        BLOCK_SIZE,
        blocks,
        sec,
        ns,
        sec,
        ns,
        sec,
        ns,
        TIMEOUT,
        TIMEOUT,
    )


def unpack(records: bytes, at: int = 0) -> tuple[int, Attr]:
    """``(node id, attributes)`` of the record at byte offset ``at`` of ``records``."""
    f = _ROW.unpack_from(records, at)
    return f[0], Attr(f[3], f[5], f[4], f[6], f[7], f[9], f[11], f[14] * _NS + f[15])


def pack_columns(
    inos: npt.ArrayLike,
    mode: npt.ArrayLike,
    nlink: npt.ArrayLike,
    uid: npt.ArrayLike,
    gid: npt.ArrayLike,
    size: npt.ArrayLike,
    blocks: npt.ArrayLike,
    mtime_ns: npt.NDArray[np.int64],
) -> npt.NDArray[np.void]:
    """The records of consecutive children, from columns of equal length (a scalar stands for
    a whole column): what :func:`pack` makes of each row, a few array operations for all
    (about 10 µs for 100 children); ``.tobytes()`` gives the records."""
    rec = _blank(_TEMPLATE, len(mtime_ns))
    rec["nodeid"] = inos
    rec["ino"] = inos
    rec["nlink"] = nlink
    rec["mode"] = mode
    rec["uid"] = uid
    rec["gid"] = gid
    rec["size"] = size
    rec["blocks"] = blocks
    sec, ns = np.divmod(mtime_ns, _NS)  # floor, as pyfuse3 splits a time (// and %)
    for field in ("atime", "mtime", "ctime"):
        rec[field] = sec
        rec[field + "_ns"] = ns
    return rec


def bare_records(records: bytes, dirs: list[bool]) -> bytes:
    """``records`` with the node id of every non-directory (``dirs[k]`` false) cleared."""
    words = np.frombuffer(bytearray(records), dtype="<u8").reshape(-1, _WORDS)
    words[~np.array(dirs, dtype=bool), 0] = 0
    return words.tobytes()


def _blank(template: bytes, n: int) -> npt.NDArray[np.void]:
    """``n`` copies of a record, writable (copied as raw bytes: a structured copy would leave
    the bytes between fields, padding and reserved words, undefined)."""
    raw = np.frombuffer(template, dtype=_RAW).repeat(n)
    return raw.view(ENTRY_DTYPE)


_TEMPLATE: Final = pack(Attr(0, 0, 0, 0, 0, 0, 0, 0))
"""The fields every record shares (block size, timeouts); zero elsewhere."""
BARE_FILE: Final = pack(Attr(0, stat.S_IFREG, 1, 0, 0, 0, 0, 0), nodeid=0)
"""The record of a bare file but for its inode number (:attr:`Page.run`)."""
INO_WORD: Final = 3
"""``attr.st_ino`` as the 64-bit word of a record it is."""
