"""FileStore: plain files on disk, shared by processes, with an LRU bound. The disk half of
:class:`~blobfs.core.cache.disk.DiskCache` and :class:`~blobfs.core.cache.disk.BlockCache`.

Layout (Go's): ``<dir>/<first shard_len hex digits>/<64 hex digits>``, one file per entry.

- **Insert**: write a temp file ``.tmp-*`` in the shard directory, then ``os.link`` it to its
  final name and unlink the temp. A reader therefore never sees a partial file, and when several
  threads or processes insert the same key at once exactly one link succeeds (the others get
  ``EEXIST`` and drop their copy), so exactly one of them counts the bytes. (``os.replace``
  would also be atomic, but every racer would count its bytes.) Content already in memory
  (:meth:`FileStore.write`) goes into an unnamed ``O_TMPFILE`` inode linked into place through
  ``/proc/self/fd``: one directory change per insert instead of three (the temp's name, the
  link, the unlink); measured 290 against 313 µs per 100 KB entry, most of either being the
  copy into the page cache. Where the file system or ``/proc`` cannot, the temp file is used.
- **LRU order = file mtime**, refreshed on every hit (``os.utime``: about 6 µs, and at most once a
  second per entry). It needs no database write and is visible to every process; Go's own prune
  (oldest mtime first) becomes LRU too on a directory both share. Go never touches on a hit,
  which makes its caches FIFO.
- **Size**: a shared running total in a small ``diskcache.Cache`` (SQLite) in
  ``<dir>/.blobfs-ledger/``, so no process walks the tree on start-up or on a put (Go walks at
  start and counts only its own process's writes). An atomic ``incr`` costs about 72 µs, a put of
  64 KiB about 265 µs, so each process batches its deltas and sends them every
  :data:`FLUSH_BYTES` or :data:`FLUSH_SECONDS`, whichever comes first.
- **Prune** walks the tree (about 9 µs an entry: 37 ms for 4,096 entries), deletes the oldest
  mtimes first and re-bases the shared total on what it found, which also corrects any drift
  (a crash between link and count, a file deleted by another tool). A put that would pass
  ``max_bytes`` prunes down to ``max_bytes`` minus 1/:data:`PRUNE_HEADROOM_DIV` of it, so the
  walk is paid once per 10% of churn, not on every put as in Go. One pruner at a time: a lock
  entry with an expiry in the ledger across processes, a mutex within one.

Nothing is fsynced: an entry torn by a power cut is caught by the verification every reader of
the store performs (content digests, block checksums), dropped and fetched again.

Bounds: within one process the total stays at or under ``max_bytes``. Across processes it can
pass it briefly, by what others have not flushed yet (at most :data:`FLUSH_BYTES` each) and by
what they insert while a prune runs.

Sharing a directory with Go's tools: entries are interchangeable (same names, raw content for
the content cache). Go counts every regular file, the ledger's included, and its prune may
delete the ledger; the next blobfs process then rebuilds it with one walk. Entries Go adds or
deletes are not in the shared total until blobfs's next prune re-bases it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Final

import diskcache

__all__ = ["FLUSH_BYTES", "FLUSH_SECONDS", "PRUNE_HEADROOM_DIV", "FileStore", "write_all"]

logger = logging.getLogger("blobfs.core.cache")

LEDGER_DIRNAME: Final = ".blobfs-ledger"
"""The bookkeeping database, inside the cache directory (a name no entry or shard can take)."""

_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})
"""``open(dir, O_TMPFILE)`` errors meaning the file system (or kernel) has no unnamed files."""


class _NoProcLink(Exception):
    """``/proc/self/fd`` cannot link an unnamed file into place (no ``/proc`` mounted)."""


def _link_fd(fd: int, final: str) -> None:
    """Give the unnamed file open as ``fd`` the name ``final`` (``EEXIST`` when it is taken)."""
    try:
        # A dir fd makes CPython call linkat(..., AT_SYMLINK_FOLLOW): plain link() would link
        # the /proc symlink itself (EXDEV). The path is absolute, so the fd is not used as one.
        os.link(f"/proc/self/fd/{fd}", final, src_dir_fd=fd, follow_symlinks=True)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EXDEV, errno.EPERM, errno.ENOTDIR):
            raise _NoProcLink from e
        raise


TEMP_PREFIX: Final = ".tmp-"
"""Files being written; never entries (entries are 64 hex digits)."""

STALE_TEMP_NS: Final = 3600 * 10**9
"""A temp file untouched for an hour belongs to a crashed writer; a prune walk deletes it."""

TOUCH_INTERVAL_NS: Final = 10**9
"""A hit refreshes an mtime older than this: LRU to the second, no inode write per hit when a
hot entry is read thousands of times a second."""

PRUNE_HEADROOM_DIV: Final = 10
"""An automatic prune frees an extra max_bytes/10, so the O(n) walk runs once per 10% of churn."""

FLUSH_BYTES: Final = 16 << 20
"""Send this process's size delta to the shared total once it reaches 16 MiB (a mount
storing 1 MiB chunks at hundreds of MB/s would otherwise write the database for every chunk;
small caches flush sooner, see ``FileStore``)..."""

FLUSH_SECONDS: Final = 1.0
"""... or once a second: other processes see our inserts soon, and a put rarely pays 72 µs."""

PRUNE_LOCK_TTL: Final = 600.0
"""A pruner that crashed holds the cross-process prune lock at most this long (seconds)."""

LEDGER_TIMEOUT: Final = 1.0
"""SQLite busy timeout (seconds; diskcache's default is 60): bookkeeping must not stall a read.
A busy ledger keeps the delta for the next exchange; only a broken one is given up."""

_LEDGER_ERRORS: Final = (OSError, sqlite3.Error, diskcache.Timeout)
_HEX: Final = frozenset("0123456789abcdef")
_WARN_EVERY_NS: Final = 60 * 10**9
"""Cache I/O failures (a full disk) repeat: warn once a minute per store, the rest at DEBUG."""


class _Ledger:
    """The shared byte total (and the prune lock) in a ``diskcache.Cache``; see the module doc.

    If the database cannot be opened or written the ledger degrades to counting in this process
    only (Go's behaviour), and says so once.
    """

    _TOTAL = "bytes"
    _PRUNE_LOCK = "prune-lock"

    def __init__(self, directory: str, walk_total: Callable[[], int], flush_bytes: int) -> None:
        self._walk_total = walk_total
        self._flush_bytes = flush_bytes
        self._lock = threading.Lock()
        self._pending = 0  # this process's inserts minus deletes, not yet in the shared total
        self._shared = 0  # the shared total as of the last exchange with the database
        self._last_sync = time.monotonic()
        # Methods read self._db once into a local: another thread may degrade it meanwhile.
        self._db: diskcache.Cache | None = None
        db = None
        try:
            db = self._db = diskcache.Cache(
                os.path.join(directory, LEDGER_DIRNAME),
                eviction_policy="none",  # a handful of keys: never cull them
                timeout=LEDGER_TIMEOUT,
                statistics=False,
                tag_index=False,
            )
            total = db.get(self._TOTAL)
            if total is None:
                # First use (or the ledger was deleted): the files are the truth. If processes
                # race here, add() keeps one walk's result; the next prune corrects the rest.
                db.add(self._TOTAL, walk_total())
                total = db.get(self._TOTAL, default=0)
            self._shared = int(total)
        except _LEDGER_ERRORS as e:
            self._degrade(db, e)
            self._shared = walk_total()

    def _degrade(self, db: diskcache.Cache | None, e: BaseException) -> None:
        if db is not None:
            with contextlib.suppress(*_LEDGER_ERRORS):
                db.close()
        if self._db is db:
            self._db = None
            logger.warning("cache size ledger unavailable, counting in this process only: %s", e)

    def estimate(self) -> int:
        """The total as this process knows it (no I/O)."""
        return self._shared + self._pending

    def add(self, delta: int) -> None:
        with self._lock:
            self._pending += delta
            if (
                abs(self._pending) >= self._flush_bytes
                or time.monotonic() - self._last_sync >= FLUSH_SECONDS
            ):
                self._sync_locked()

    def total(self) -> int:
        """The shared total, after sending this process's pending delta (one database call)."""
        with self._lock:
            self._sync_locked()
            return self._shared + self._pending

    def _sync_locked(self) -> None:
        self._last_sync = time.monotonic()
        db = self._db
        if db is None:
            self._shared += self._pending
            self._pending = 0
            return
        try:
            try:
                self._shared = int(db.incr(self._TOTAL, self._pending, default=None))
            except KeyError:
                # The ledger was cleared behind our back: re-base on the files (which already
                # include what is pending here).
                db.add(self._TOTAL, self._walk_total())
                self._shared = int(db.get(self._TOTAL, default=0))
            self._pending = 0
        except diskcache.Timeout:
            logger.debug("cache size ledger busy; keeping a delta of %d bytes", self._pending)
        except _LEDGER_ERRORS as e:
            self._degrade(db, e)
            self._shared += self._pending
            self._pending = 0

    def rebase(self, total: int) -> None:
        """Set the shared total to what a prune walk found (the files are the truth)."""
        with self._lock:
            self._pending = 0
            self._shared = total
            self._last_sync = time.monotonic()
            db = self._db
            if db is not None:
                try:
                    db.set(self._TOTAL, total)
                except diskcache.Timeout:
                    pass  # busy: the next prune re-bases again
                except _LEDGER_ERRORS as e:
                    self._degrade(db, e)

    def acquire_prune_lock(self, blocking: bool) -> str | None:
        """A token if this caller may prune now; ``None`` if another process is (non-blocking)."""
        db = self._db
        if db is None:
            return "local"
        token = secrets.token_hex(8)
        deadline = time.monotonic() + PRUNE_LOCK_TTL
        while True:
            try:
                if db.add(self._PRUNE_LOCK, token, expire=PRUNE_LOCK_TTL):
                    return token
            except diskcache.Timeout:
                pass  # busy: as if another process held the lock
            except _LEDGER_ERRORS as e:
                self._degrade(db, e)
                return "local"
            if not blocking or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def release_prune_lock(self, token: str) -> None:
        db = self._db
        if db is None or token == "local":
            return
        try:
            # retry=True: a lock left behind would stop other processes' pruning until it expires.
            with db.transact(retry=True):
                if db.get(self._PRUNE_LOCK) == token:
                    db.delete(self._PRUNE_LOCK)
        except _LEDGER_ERRORS as e:
            self._degrade(db, e)

    def close(self) -> None:
        with self._lock:
            self._sync_locked()
            db = self._db
            if db is not None:
                with contextlib.suppress(*_LEDGER_ERRORS):
                    db.close()  # diskcache reconnects if the store is used again


class FileStore:
    """Entries as plain files under ``directory``; see the module docstring for the design.

    Keys are 64 lower-case hex digits. Entry content is opaque here: callers write it through
    :meth:`new_temp` / :meth:`commit` and read it through :meth:`path` and :meth:`touch`.

    Concurrency: every method may be called from any number of threads and processes at once.
    I/O errors are logged and reported as "not stored" / "not found", never raised, except from
    the constructor (an unusable cache directory is a configuration error).
    """

    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int, shard_len: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 (0 = unlimited), got {max_bytes}")
        if not 0 <= shard_len <= 64:
            raise ValueError(f"shard_len must be between 0 and 64, got {shard_len}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_bytes = max_bytes
        self._shard_len = shard_len
        self._prefix = os.path.join(self.directory, "")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # Held while making room and linking an entry, and for a whole prune: in one process,
        # "check the total, then add" is atomic, so threads cannot overshoot max_bytes together.
        # Linking takes ~10 µs, so puts barely queue; they do wait for a prune walk.
        self._commit_lock = threading.Lock()
        self._tmpfile = hasattr(os, "O_TMPFILE")  # unnamed inodes until one fails (write())
        self._last_warning_ns: int | None = None
        # Small caches flush sooner, so other processes' view stays within 1/16 of the bound.
        flush = min(FLUSH_BYTES, max(1, max_bytes // 16)) if max_bytes else FLUSH_BYTES
        self._ledger = _Ledger(self.directory, lambda: self._walk()[1], flush)

    # --- paths and reads --------------------------------------------------------------------

    def path(self, hexkey: str) -> str:
        # Plain concatenation: os.path.join costs 2 µs, on every block lookup.
        if self._shard_len:
            return f"{self._prefix}{hexkey[: self._shard_len]}/{hexkey}"
        return self._prefix + hexkey

    def touch(self, fd: int, mtime_ns: int) -> None:
        """Mark the entry open on ``fd`` as used now (LRU), unless that was done under a second
        ago. Best effort: a read-only cache directory still serves hits."""
        now = time.time_ns()
        if now - mtime_ns >= TOUCH_INTERVAL_NS:
            with contextlib.suppress(OSError):
                os.utime(fd)

    def exists(self, hexkey: str) -> bool:
        return os.path.exists(self.path(hexkey))

    # --- writes -----------------------------------------------------------------------------

    def new_temp(self, hexkey: str, *, readable: bool = False) -> tuple[int, str] | None:
        """Open a new temp file next to the entry's final place: ``(fd, path)``, or ``None``
        after logging an I/O error. The caller writes it (and may read it back when
        ``readable``), then :meth:`commit` or :meth:`discard`."""
        final = self.path(hexkey)
        shard = os.path.dirname(final)
        tmp = os.path.join(shard, f"{TEMP_PREFIX}{hexkey[:16]}-{secrets.token_hex(6)}")
        mode = os.O_RDWR if readable else os.O_WRONLY
        flags = mode | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                return os.open(tmp, flags, 0o600), tmp
            except FileNotFoundError:
                os.makedirs(shard, mode=0o700, exist_ok=True)
                return os.open(tmp, flags, 0o600), tmp
        except OSError as e:
            self.warn_io("cannot create a cache file in %s: %s", shard, e)
            return None

    def write(self, hexkey: str, *buffers: bytes | memoryview) -> bool:
        """Store the entry ``hexkey`` made of ``buffers`` (an unnamed ``O_TMPFILE`` inode, or a
        temp file, then linked into place as :meth:`commit` does); True if this call stored it.
        Write errors are logged, never raised."""
        if self._tmpfile:
            stored = self._write_unnamed(hexkey, buffers)
            if stored is not None:
                return stored
        temp = self.new_temp(hexkey)
        if temp is None:
            return False
        fd, tmp = temp
        try:
            try:
                write_all(fd, *buffers)
            finally:
                os.close(fd)
        except OSError as e:
            self.warn_io("cannot write cache file %s: %s", tmp, e)
            self.discard(tmp)
            return False
        return self.commit(hexkey, tmp, sum(len(memoryview(b)) for b in buffers))

    def _write_unnamed(self, hexkey: str, buffers: tuple[bytes | memoryview, ...]) -> bool | None:
        """:meth:`write` through an ``O_TMPFILE`` inode; None (and never again in this store)
        when the file system or ``/proc`` does not allow it, so the caller uses a temp file."""
        size = sum(len(memoryview(b)) for b in buffers)
        if self.max_bytes and size > self.max_bytes:
            return False
        final = self.path(hexkey)
        shard = os.path.dirname(final)
        flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
        try:
            try:
                fd = os.open(shard, flags, 0o600)
            except FileNotFoundError:
                os.makedirs(shard, mode=0o700, exist_ok=True)
                fd = os.open(shard, flags, 0o600)
        except OSError as e:
            if e.errno in _NO_TMPFILE:
                self._tmpfile = False
                return None
            self.warn_io("cannot create a cache file in %s: %s", shard, e)
            return False
        try:
            write_all(fd, *buffers)
            return self._commit_locked_by(hexkey, size, lambda: _link_fd(fd, final))
        except _NoProcLink:
            self._tmpfile = False
            return None
        except OSError as e:
            self.warn_io("cannot write cache file for %s: %s", final, e)
            return False
        finally:
            os.close(fd)

    def discard(self, tmp: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def commit(self, hexkey: str, tmp: str, size: int) -> bool:
        """Make the written temp file (``size`` bytes, closed) the entry ``hexkey``; True if this
        call stored it. Makes room first (LRU); content over ``max_bytes`` is dropped."""
        if self.max_bytes and size > self.max_bytes:
            self.discard(tmp)
            return False
        final = self.path(hexkey)

        def link() -> None:
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                    raise
                os.replace(tmp, final)  # a file system without hard links: still atomic

        try:
            return self._commit_locked_by(hexkey, size, link)
        except OSError as e:
            self.warn_io("cannot store cache entry %s: %s", hexkey, e)
            return False
        finally:
            self.discard(tmp)

    def _commit_locked_by(self, hexkey: str, size: int, link: Callable[[], None]) -> bool:
        """Make room (LRU), then ``link()`` the written content into place as entry ``hexkey``
        and count its ``size``; False when another writer stored it first (same key, same
        content). Errors of ``link`` propagate."""
        with self._commit_lock:
            if self.max_bytes:
                self._make_room_locked(size)
            try:
                link()
            except FileExistsError:
                return False
            self._ledger.add(size)
            return True

    def delete(self, hexkey: str) -> int:
        """Remove the entry; the bytes freed (0 if it was absent or could not be removed)."""
        path = self.path(hexkey)
        with self._commit_lock:  # not in the middle of a prune, which re-bases the total
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return 0
            except OSError as e:
                self.warn_io("cannot delete cache entry %s: %s", path, e)
                return 0
            self._ledger.add(-size)
            return size

    # --- size and pruning -------------------------------------------------------------------

    def size_bytes(self) -> int:
        return max(self._ledger.total(), 0)

    def prune(self, target_bytes: int) -> int:
        """Delete least-recently-used entries until the total is at most ``target_bytes``
        (waiting for a prune running elsewhere); return the bytes freed."""
        with self._commit_lock:
            return self._prune_locked(max(target_bytes, 0), blocking=True)

    def _make_room_locked(self, need: int) -> None:
        limit = self.max_bytes
        if self._ledger.estimate() + need <= limit:
            return
        # Another process may have pruned meanwhile: ask the ledger, not the estimate, before
        # paying for a walk.
        if self._ledger.total() + need <= limit:
            return
        self._prune_locked(max(limit - need - limit // PRUNE_HEADROOM_DIV, 0), blocking=False)

    def _prune_locked(self, target: int, *, blocking: bool) -> int:
        token = self._ledger.acquire_prune_lock(blocking)
        if token is None:
            return 0  # another process is pruning; it will bring the total down
        try:
            entries, total = self._walk()
            remaining = total
            freed = 0
            if total > target:
                entries.sort()  # oldest mtime first; ties broken by path, like Go
                for _mtime, path, size in entries:
                    if remaining <= target:
                        break
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        remaining -= size  # deleted by someone else: gone all the same
                        continue
                    except OSError as e:
                        self.warn_io("cannot delete cache entry %s: %s", path, e)
                        continue
                    remaining -= size
                    freed += size
            self._ledger.rebase(remaining)
            return freed
        finally:
            self._ledger.release_prune_lock(token)

    def _walk(self) -> tuple[list[tuple[int, str, int]], int]:
        """Every entry as ``(mtime_ns, path, size)`` and their total; deletes stale temp files.
        Anything that is not an entry (the ledger, foreign files) is left alone."""
        entries: list[tuple[int, str, int]] = []
        total = 0
        stale_before = time.time_ns() - STALE_TEMP_NS
        if self._shard_len:
            dirs = [
                e.path
                for e in _scan(self.directory)
                if len(e.name) == self._shard_len and _is_hex(e.name) and e.is_dir()
            ]
        else:
            dirs = [self.directory]
        for d in dirs:
            for e in _scan(d):
                name = e.name
                try:
                    if len(name) == 64 and _is_hex(name):
                        st = e.stat(follow_symlinks=False)
                        entries.append((st.st_mtime_ns, e.path, st.st_size))
                        total += st.st_size
                    elif (
                        name.startswith(TEMP_PREFIX)
                        and e.stat(follow_symlinks=False).st_mtime_ns < stale_before
                    ):
                        os.unlink(e.path)
                except OSError:
                    continue  # deleted while we looked
        return entries, total

    # --- misc -------------------------------------------------------------------------------

    def warn_io(self, msg: str, *args: object) -> None:
        now = time.monotonic_ns()
        if self._last_warning_ns is None or now - self._last_warning_ns >= _WARN_EVERY_NS:
            self._last_warning_ns = now
            logger.warning(msg, *args)
        else:
            logger.debug(msg, *args)

    def close(self) -> None:
        """Send this process's pending size delta to the shared total; the store stays usable."""
        self._ledger.close()


def _scan(directory: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except OSError:
        return []


def _is_hex(name: str) -> bool:
    return _HEX.issuperset(name)


def write_all(fd: int, *buffers: bytes | memoryview) -> None:
    """Write every buffer to ``fd`` (``os.writev`` may write less than asked)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        if written == 0 and any(v.nbytes for v in views):
            raise OSError(errno.EIO, "write made no progress")
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
