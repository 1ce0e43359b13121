"""The content cache on the read path: verified lookups, best-effort stores.

:class:`ContentCache` wraps any :class:`~blobfs.core.cache.Cache` (ours or a user's) and adds the
read path's rules (ARCHITECTURE.md section 3):

- **Nothing from the cache is trusted.** What ``get`` returns is read back in full and checked
  against the key (size and SHA-256) before any byte of it is used. A mismatch, a wrong size or a
  read error deletes the entry (logged at WARNING) and counts as a miss, so the caller refetches
  from the source and re-verifies there.
- **Caches only help.** An exception from ``get`` is a miss; from ``put``/``delete``/
  ``max_bytes`` it is logged and ignored. The first failure of each operation is logged at
  WARNING, later ones at DEBUG (a full disk must not flood the log).
- **Only verified content goes in**: callers ``put`` after their own verification passed.
- **Write-behind** (:meth:`ContentCache.write_behind`, used by the mount): ``put_bytes`` hands
  the content to one writer thread and returns, so a read answers before its content reached
  the disk; lookups see pending entries (already verified, in memory), so a read right after
  finds what the previous one stored. Pending content is bounded, and content arriving while
  the queue is full is not stored (counted in :attr:`ContentCache.dropped`): a read never
  waits for the cache's disk, which on some file systems creates files at a few hundred a
  second (ext4 without a journal scans recently deleted inodes on every create), far fewer
  than a tree of small files is read. Loaders working *ahead* of the reads (the batches of
  small files, ``_scan.py``) pass ``wait``: they wait, while the queue is over half its bound,
  as long as the writer makes progress, so a disk a little slower than the network slows the
  loading ahead instead of leaving content out of the cache (a 10,000-file tree read lost
  250-1,500 files that way); a writer stuck for ``wait`` seconds makes them drop too.
  Readahead groups of big files are handed out chunk by chunk as the reader takes them, so their
  loaders cannot wait at the put: they set room aside first (:meth:`ContentCache.reserve`, a
  :class:`QueueCredit` held until the reader is done with the group), waiting while the queue is
  full as long as the writer makes progress, and the group's content then always fits (a cold
  read of a GiB on a busy disk left a third of its chunks uncached and its whole-file entry
  unwritten without this). :meth:`ContentCache.stop_write_behind` stores what is pending.

Keys are content digests (the entry's ``hash`` for a whole file, ``chunk_hash(k)`` for a chunk),
so identical content is shared by every archive using the same cache.

Every method does blocking I/O: the async API calls them from worker threads only (they run
inside the read algorithms' CPU steps, see ``_steps.py``), never on the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, BinaryIO, Final, cast

from ._buffers import MAPPED_MIN, new_buffer
from ._decode import Buffer
from ._types import Entry
from ._whole import StreamOp, WholeFileStream

if TYPE_CHECKING:
    from ._whole import _Writer as _EntryWriter
    from .cache import Cache

__all__ = ["STORE_PATIENCE", "ContentCache", "QueueCredit"]

logger = logging.getLogger(__name__)

WRITE_BEHIND_BYTES: Final = 32 << 20
"""Most memory the write-behind queue keeps alive: two readahead groups' buffers, so reads never
wait for the disk while it keeps up (and a file read front to back streams into one whole-file
entry: with 16 MiB, a second group's buffer did not fit and the stream broke, and warm reads of
the per-chunk entries left were a third slower), and the daemon stays under 100 MB when it does
not. A view counts as its whole buffer (once, however many views of it wait): queuing views
instead of copies saved a copy of every byte a cold read fetches (a seventh of the daemon's
CPU). Puts that ``wait`` (loaders ahead of the reads) wait for the queue to be under half of
this: with 32 MiB for everything and no waiting, a 10,000-file tree read peaked at 87-102 MiB
and left 0-522 files uncached; waiting at 16 MiB, 83-97 MiB and 5-26 files, as fast."""

STORE_PATIENCE: Final = 1.0
"""Loaders ahead of the reads (batches of small files, readahead groups) wait for room in the
write queue while its writer finishes something at least this often (seconds): loading ahead
then keeps pace with a slower disk instead of leaving content out of the cache; a writer stuck
longer makes them go on without it (their content may go uncached)."""

_COPY_PIECE: Final = 1 << 20
"""Read size when streaming a cached whole file through SHA-256: big enough that the per-call
overhead vanishes, small enough that a multi-GiB file never sits in memory."""


def _will_need(f: BinaryIO) -> None:
    """Ask the kernel to start reading ``f`` now (best effort: caches need not be files)."""
    # AttributeError: no posix_fadvise (not Linux); OSError/ValueError: not a real file.
    with contextlib.suppress(AttributeError, OSError, ValueError):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)


def _pinned(data: bytes | memoryview) -> tuple[int, int]:
    """``(key, size)`` of the buffer queuing ``data`` keeps alive: a view's whole exporter (a
    readahead group's or a batch's buffer), else ``data`` itself. The key (an ``id``) is stable
    while a queued view keeps the buffer alive."""
    owner = data.obj if isinstance(data, memoryview) else None
    if owner is None:
        return id(data), len(data)
    with memoryview(owner) as whole:
        return id(owner), whole.nbytes


_NO_WHOLE_MAX: Final = 4096
"""Files remembered as having no whole-file entry (so each is not probed for every group)."""

_NO_WHOLE_SECONDS: Final = 5.0
"""How long a file is remembered so: another process (a mount before this one, still writing
its cache at exit) may store the entry meanwhile."""


class _Op:
    """One job of the writer thread: a put (``stream`` None, ``what`` the digest) or an
    operation of a whole-file stream (``what`` the :class:`StreamOp`)."""

    __slots__ = ("data", "k", "stream", "what")

    def __init__(
        self,
        stream: WholeFileStream | None,
        what: bytes | StreamOp,
        data: bytes | memoryview | None,
        k: int,
    ) -> None:
        self.stream = stream
        self.what = what
        self.data = data
        self.k = k


def _fileno(f: BinaryIO) -> int | None:
    """``f``'s file descriptor, or None when it is not a real file (a user's cache)."""
    try:
        return f.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _read_at(f: BinaryIO, fd: int | None, out: memoryview, offset: int) -> int:
    """Fill ``out`` from ``offset`` of ``f`` (``fd`` its descriptor, if any): bytes read."""
    if fd is not None:
        return os.preadv(fd, [out], offset)
    f.seek(offset)
    got = 0
    while got < len(out):
        n = f.readinto(out[got:])  # type: ignore[attr-defined]
        if not n:
            break
        got += n
    return got


def _size_problem(got: int, size: int) -> str:
    have = f"more than {size}" if got > size else str(got)
    return f"{have} bytes, expected {size}"


class QueueCredit:
    """Room in the write-behind queue set aside for one readahead group
    (:meth:`ContentCache.reserve`): the group's content is queued against it instead of against
    the queue's bound, so it never finds the queue full. Released
    (:meth:`ContentCache.release`) once the reader is done with the group; what was not used
    goes back to the queue then."""

    __slots__ = ("closed", "left")

    def __init__(self) -> None:
        self.left = 0  # bytes set aside and not used yet (counted in the queue's bytes)
        self.closed = False  # released: nothing more is set aside for it


class ContentCache:
    """A :class:`~blobfs.core.cache.Cache` with verification, error containment and logging.

    It also satisfies the ``Cache`` protocol itself (plain delegation), so it can be passed
    wherever a cache is expected; wrapping a ``ContentCache`` again returns the same object
    (:meth:`of`).

    Concurrency: as safe as the wrapped cache (which the protocol requires to be thread-safe);
    the wrapper's own state (which operations have logged a WARNING, the write-behind queue) is
    safe from any thread.
    """

    __slots__ = (
        "_cache",
        "_cond",
        "_limit",
        "_max_pending",
        "_no_whole",
        "_pending",
        "_pending_bytes",
        "_pins",
        "_queue",
        "_stuck_at",
        "_warned",
        "_writer",
        "_writing",
        "_written",
        "dropped",
    )

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        self._warned: set[str] = set()
        self._limit: int | None = None  # max_bytes(), asked once: it is configuration
        self._cond = threading.Condition()
        # digest -> verified content queued and not stored yet, for lookups (write-behind only;
        # the order of writing is the queue's)
        self._pending: dict[bytes, bytes | memoryview] = {}
        self._pending_bytes = 0  # the size of every buffer in self._pins
        self._pins: dict[int, list[int]] = {}  # buffer key -> [size, queued entries using it]
        # what the writer thread is to do, in order: puts (also in _pending) and stream ops
        self._queue: deque[_Op] = deque()
        self._max_pending = 0  # 0: put_bytes stores in the calling thread
        self._writer: threading.Thread | None = None
        self._writing = False  # the writer thread runs (it drains the queue before it ends)
        self._written = 0  # operations the writer thread finished
        self._stuck_at = -1  # _written when a waiting put last saw the writer make no progress
        # files seen without a whole-file entry -> when that was seen (time.monotonic())
        self._no_whole: dict[bytes, float] = {}
        self.dropped = 0  # puts not stored because the write-behind queue was full

    @classmethod
    def of(cls, cache: Cache | None) -> ContentCache | None:
        if cache is None or isinstance(cache, ContentCache):
            return cache
        return cls(cache)

    @property
    def cache(self) -> Cache:
        """The wrapped cache."""
        return self._cache

    # ------------------------------------------------------------------ error containment

    def _failed(self, op: str, digest: bytes, e: BaseException) -> None:
        level = logging.DEBUG if op in self._warned else logging.WARNING
        self._warned.add(op)
        suffix = "" if level == logging.DEBUG else " (further such errors are logged at DEBUG)"
        logger.log(level, "content cache %s of %s failed: %r%s", op, digest.hex(), e, suffix)

    def _open(self, digest: bytes) -> BinaryIO | None:
        try:
            return self._cache.get(digest)
        except Exception as e:
            self._failed("get", digest, e)
            return None

    def _reject(self, digest: bytes, path: str, what: str, why: str) -> None:
        """Drop a cached entry that failed verification (one WARNING per bad entry)."""
        logger.warning(
            "content cache entry %s (%s of %s) is corrupt: %s; deleted, refetching from the source",
            digest.hex(),
            what,
            path,
            why,
        )
        self.delete(digest)

    # ------------------------------------------------------------------ verified reads

    def get_bytes(self, digest: bytes, size: int, path: str, what: str = "content") -> bytes | None:
        """The cached content for ``digest`` if it is exactly ``size`` bytes hashing to it.

        None on a miss or any failure (a corrupt entry is deleted first). ``path``/``what`` only
        name the content in the log.
        """
        pending = self._pending_content(digest, size)
        if pending is not None:
            return pending
        return self._read_verified(self._open(digest), digest, size, path, what)

    def get_many(
        self,
        wanted: list[tuple[bytes, int, str, str]],
        each: Callable[[int, Buffer | None], object] | None = None,
    ) -> list[Buffer | None]:
        """:meth:`get_bytes` of each ``(digest, size, path, what)``, in order. The entries are
        all opened first and the kernel told to read them (``POSIX_FADV_WILLNEED``), so their
        disk reads overlap instead of following one another: a readahead group or a batch of
        small files from a cold page cache costs about one disk latency, not one per entry.
        ``each(i, result)`` is called as each one is done (a reader may take it at once).

        Entries found on disk are read into one buffer (:func:`~._buffers.new_buffer`) and
        returned as read-only views of it, once verified: a warm readahead group then costs no
        allocation per entry (fresh 1 MiB ``bytes`` cost a page fault per 4 KiB: an eighth of
        the daemon's CPU on a warm sequential read)."""
        found: list[bytes | BinaryIO | None] = []
        for digest, size, _, _ in wanted:
            pending = self._pending_content(digest, size)
            found.append(pending if pending is not None else self._open(digest))
        on_disk = 0
        for f, (_, size, _, _) in zip(found, wanted, strict=True):
            if f is not None and not isinstance(f, bytes):
                _will_need(f)
                on_disk += size
        shared = new_buffer(on_disk) if on_disk >= MAPPED_MIN else None
        at = 0
        results: list[Buffer | None] = []
        for i, (f, item) in enumerate(zip(found, wanted, strict=True)):
            data: Buffer | None
            if f is None or isinstance(f, bytes):
                data = f
            elif shared is None:
                data = self._read_verified(f, *item)
            else:
                data = self._read_verified_into(f, shared[at : at + item[1]], *item)
                at += item[1]
            results.append(data)
            if each is not None:
                each(i, data)
        return results

    def _read_verified_into(
        self, f: BinaryIO, out: memoryview, digest: bytes, size: int, path: str, what: str
    ) -> memoryview | None:
        """:meth:`_read_verified`, reading into ``out`` (``size`` bytes): a read-only view of
        it once verified, else None (what ``out`` holds is then garbage nobody may use)."""
        readinto = getattr(f, "readinto", None)
        if readinto is None:  # a user's cache may hand out a minimal file object
            data = self._read_verified(f, digest, size, path, what)
            if data is None:
                return None
            out[:] = data
            return out.toreadonly()
        try:
            with f:
                got = 0
                while got < size:
                    n = readinto(out[got:])
                    if not n:
                        break
                    got += n
                extra = f.read(1) if got == size else b""  # an overlong entry is corrupt too
        except Exception as e:
            self._reject(digest, path, what, f"read failed: {e!r}")
            return None
        if extra:
            got += len(extra)
        if got != size:
            self._reject(digest, path, what, _size_problem(got, size))
            return None
        actual = hashlib.sha256(out).digest()
        if actual != digest:
            self._reject(digest, path, what, f"SHA-256 is {actual.hex()}")
            return None
        return out.toreadonly()

    def _read_verified(
        self, f: BinaryIO | None, digest: bytes, size: int, path: str, what: str
    ) -> bytes | None:
        """The content of the cache entry open as ``f`` (closed here) if it is exactly
        ``size`` bytes hashing to ``digest``; else None, and a corrupt entry is deleted."""
        if f is None:
            return None
        try:
            with f:
                parts: list[bytes] = []
                got = 0
                # Read one byte past the expected size: an overlong entry is corrupt too.
                while got <= size:
                    piece = f.read(size + 1 - got)
                    if not piece:
                        break
                    parts.append(piece)
                    got += len(piece)
        except Exception as e:
            self._reject(digest, path, what, f"read failed: {e!r}")
            return None
        if got != size:
            self._reject(digest, path, what, _size_problem(got, size))
            return None
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            self._reject(digest, path, what, f"SHA-256 is {actual.hex()}")
            return None
        return data

    def copy_verified(
        self, digest: bytes, size: int, path: str, sink: Callable[[bytes], object]
    ) -> bool:
        """Stream the cached content for ``digest`` into ``sink`` while hashing it.

        Returns True when the entry existed and was exactly ``size`` bytes hashing to
        ``digest``. On False, whatever reached ``sink`` is **unverified garbage** the caller must
        discard (a corrupt entry has been deleted). For whole files too large to hold in memory:
        the caller's sink is its spool.
        """
        pending = self._pending_content(digest, size)
        if pending is not None:
            sink(pending)
            return True
        f = self._open(digest)
        if f is None:
            return False
        hasher = hashlib.sha256()
        got = 0
        try:
            with f:
                while got <= size:
                    piece = f.read(min(_COPY_PIECE, size + 1 - got))
                    if not piece:
                        break
                    got += len(piece)
                    if got > size:
                        break
                    hasher.update(piece)
                    sink(piece)
        except Exception as e:
            self._reject(digest, path, "content", f"read failed: {e!r}")
            return False
        if got != size:
            self._reject(digest, path, "content", _size_problem(got, size))
            return False
        actual = hasher.digest()
        if actual != digest:
            self._reject(digest, path, "content", f"SHA-256 is {actual.hex()}")
            return False
        return True

    def has(self, digest: bytes) -> bool:
        """Whether the cache claims an entry for ``digest`` (not verified: reading it will be)."""
        if digest in self._pending:
            return True
        f = self._open(digest)
        if f is None:
            return False
        try:
            f.close()
        except Exception as e:
            self._failed("get", digest, e)
        return True

    def get_chunk(self, entry: Entry, k: int) -> bytes | None:
        """Chunk ``k`` of ``entry`` from the cache, verified against the chunk table."""
        start, end = entry.chunk_bounds(k)
        return self.get_bytes(entry.chunk_hash(k), end - start, entry.path, f"chunk {k}")

    def get_chunks(
        self,
        entry: Entry,
        first: int,
        end: int,
        each: Callable[[int, Buffer | None], object] | None = None,
    ) -> list[Buffer | None]:
        """Chunks ``first .. end - 1`` of ``entry`` (each as :meth:`get_chunk`), their disk
        reads overlapping (:meth:`get_many`; ``each(i, chunk)`` as each is done). A whole-file
        entry of ``entry`` (``_whole.py``) serves them when there is one, each chunk verified
        against the chunk table."""
        whole = self._whole_chunks(entry, first, end, each)
        if whole is not None:
            return whole
        wanted = []
        for k in range(first, end):
            lo, hi = entry.chunk_bounds(k)
            wanted.append((entry.chunk_hash(k), hi - lo, entry.path, f"chunk {k}"))
        return self.get_many(wanted, each)

    def _whole_chunks(
        self,
        entry: Entry,
        first: int,
        end: int,
        each: Callable[[int, Buffer | None], object] | None,
    ) -> list[Buffer | None] | None:
        """Chunks ``first .. end - 1`` read from the whole-file entry of ``entry``, or None
        without a usable one (the caller looks the chunks up one by one). A chunk failing its
        hash is None and the whole entry is deleted; a wrong-sized entry is deleted unread."""
        digest = entry.hash
        if entry.num_chunks < 2 or self._known_without_whole(digest):
            return None
        f = self._open(digest)
        if f is None:
            self._note_no_whole(digest)
            return None
        lo, _ = entry.chunk_bounds(first)
        _, hi = entry.chunk_bounds(end - 1)
        out = new_buffer(hi - lo)
        results: list[Buffer | None] = []
        with f:
            try:
                size = f.seek(0, os.SEEK_END)
                if size != entry.original_size:
                    why = _size_problem(size, entry.original_size)
                    self._reject(digest, entry.path, "content", why)
                    return None
                fd = _fileno(f)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(fd, lo, hi - lo, os.POSIX_FADV_WILLNEED)
            except Exception as e:
                self._reject(digest, entry.path, "content", f"read failed: {e!r}")
                return None
            bad = ""
            for k in range(first, end):
                a, b = entry.chunk_bounds(k)
                view = out[a - lo : b - lo]
                chunk: Buffer | None = None
                try:
                    got = _read_at(f, fd, view, a)
                except Exception as e:
                    bad = bad or f"read failed: {e!r}"
                else:
                    if got != b - a:
                        bad = bad or _size_problem(got, b - a)
                    elif hashlib.sha256(view).digest() != entry.chunk_hash(k):
                        bad = bad or f"chunk {k} does not match the chunk table"
                    else:
                        chunk = view.toreadonly()
                results.append(chunk)
                if each is not None:
                    each(k - first, chunk)
        if bad:
            self._reject(digest, entry.path, "content", bad)
        return results

    def stream_whole(self, entry: Entry) -> WholeFileStream | None:
        """A stream storing ``entry`` as one whole-file entry as it is read front to back
        (``_whole.py``), or None: write-behind is off, the cache cannot write entries in pieces,
        the file has fewer than two chunks, is more than half of a bounded cache, or has a
        whole-file entry already (its readers then read that)."""
        if (
            not self._max_pending
            or entry.num_chunks < 2
            or not self.fits(entry.original_size)
            or (self._limit and entry.original_size > self._limit // 2)
            or getattr(self._cache, "open_writer", None) is None
        ):
            return None
        if not self._known_without_whole(entry.hash):
            f = self._open(entry.hash)
            if f is not None:
                with contextlib.suppress(Exception):
                    f.close()
                return None
            self._note_no_whole(entry.hash)
        return WholeFileStream(self, entry)

    def _known_without_whole(self, digest: bytes) -> bool:
        """Whether ``digest`` was looked up without a whole-file entry in the last
        :data:`_NO_WHOLE_SECONDS` (so it is not probed for every readahead group)."""
        seen = self._no_whole.get(digest)
        return seen is not None and time.monotonic() - seen < _NO_WHOLE_SECONDS

    def _note_no_whole(self, digest: bytes) -> None:
        with self._cond:
            if len(self._no_whole) >= _NO_WHOLE_MAX:
                self._no_whole.clear()
            self._no_whole[digest] = time.monotonic()

    def open_writer(self, digest: bytes) -> _EntryWriter | None:
        """The wrapped cache's writer for an entry written in pieces (None on failure, logged)."""
        open_writer = getattr(self._cache, "open_writer", None)
        if open_writer is None:
            return None
        try:
            return cast("_EntryWriter | None", open_writer(digest))
        except Exception as e:
            self._failed("put", digest, e)
            return None

    def found_whole(self, digest: bytes) -> None:
        """A whole-file entry for ``digest`` was stored: look it up again."""
        with self._cond:
            self._no_whole.pop(digest, None)

    # ------------------------------------------------------------------ best-effort writes

    def fits(self, size: int) -> bool:
        """Whether content of ``size`` bytes is worth offering (skips copying what a bounded
        cache would refuse anyway; empty content is never cached)."""
        if size <= 0:
            return False
        if self._limit is None:
            try:
                self._limit = self._cache.max_bytes()
            except Exception as e:
                self._failed("max_bytes", b"", e)
                self._limit = 0
        return self._limit <= 0 or size <= self._limit

    def put_bytes(
        self,
        digest: bytes,
        data: bytes | memoryview,
        wait: float = 0.0,
        credit: QueueCredit | None = None,
    ) -> None:
        """Store verified ``data`` under ``digest``; failures are logged, never raised. With
        write-behind on, the writer thread stores it (see the module docstring); a view must
        then stay unchanged until it is stored (the read path's views are of buffers nothing
        writes again). ``wait``: while the queue is over half its bound, wait for room as long
        as the writer finishes an operation every ``wait`` seconds (loaders working ahead of
        the reads; a reader's own thread passes 0 and never waits). ``credit``: room set aside
        for it (:meth:`reserve`), used before the queue's bound."""
        if not self.fits(len(data)):
            return
        if self._max_pending:
            with self._cond:
                if self._enqueue_locked(digest, data, wait, credit):
                    return
        self._store(digest, data)

    def store_now(self, digest: bytes, data: bytes | memoryview) -> None:
        """Store ``data`` in the calling thread, whatever write-behind does; failures logged."""
        self._store(digest, data)

    def _store(self, digest: bytes, data: bytes | memoryview) -> None:
        # A cache taking bytes directly (DiskCache) saves copying them through a file object.
        put_bytes = getattr(self._cache, "put_bytes", None)
        if put_bytes is None:
            self.put_file(digest, io.BytesIO(data))
            return
        try:
            put_bytes(digest, data)
        except Exception as e:
            self._failed("put", digest, e)

    def put_file(self, digest: bytes, f: IO[bytes]) -> None:
        """Store the verified content of ``f`` (read from its position to EOF)."""
        try:
            self._cache.put(digest, cast(BinaryIO, f))
        except Exception as e:
            self._failed("put", digest, e)

    # ------------------------------------------------------------------ write-behind

    def write_behind(self, max_pending: int = WRITE_BEHIND_BYTES) -> None:
        """From now on ``put_bytes`` queues content for a writer thread (started here) instead
        of storing it in the calling thread; at most ``max_pending`` bytes wait, content that
        does not fit is dropped. Idempotent."""
        if max_pending <= 0:
            raise ValueError("max_pending must be positive")
        with self._cond:
            self._max_pending = max_pending
            if self._writer is None:
                self._writing = True
                self._writer = threading.Thread(
                    target=self._write_loop, name="blobfs-cache-writer", daemon=True
                )
                self._writer.start()

    def reserve(self, credit: QueueCredit, nbytes: int, wait: float) -> None:
        """Set ``nbytes`` of room aside in the write-behind queue for ``credit`` (a readahead
        group about to load that much content, see the module docstring). While the queue has
        no room, wait as long as the writer finishes an operation every ``wait`` seconds; when
        it does not, when the queue is idle (the room is held by other credits, given back as
        their readers move on) or without write-behind, nothing is set aside and the group's
        content meets the queue's bound as any other. A no-op once ``credit`` was released."""
        with self._cond:
            while not credit.closed and 0 < nbytes <= self._max_pending:
                if self._pending_bytes + nbytes <= self._max_pending:
                    credit.left += nbytes
                    self._pending_bytes += nbytes
                    return
                if not self._queue or not self._await_writer_locked(wait):
                    return

    def release(self, credit: QueueCredit) -> None:
        """The group of ``credit`` is done with: the room it did not use goes back to the
        queue, and nothing more is set aside for it. Idempotent."""
        with self._cond:
            credit.closed = True
            if credit.left:
                self._pending_bytes -= credit.left
                credit.left = 0
                self._cond.notify_all()

    def _await_writer_locked(self, wait: float) -> bool:
        """Wait up to ``wait`` seconds for the writer thread to finish an operation: True if it
        did. False when it did not (remembered: nobody waits on it again before it progresses),
        was seen stuck before, or is gone."""
        if wait <= 0 or not self._writing or self._written == self._stuck_at:
            return False
        done, deadline = self._written, time.monotonic() + wait
        while self._written == done and self._writing:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._cond.wait(left)
        if self._written != done:
            return True
        self._stuck_at = done
        return False

    def _pending_content(self, digest: bytes, size: int) -> bytes | None:
        if not self._pending:  # no lock: a miss here only means reading the cache itself
            return None
        with self._cond:
            data = self._pending.get(digest)
        if data is None or len(data) != size:
            return None
        return data if isinstance(data, bytes) else bytes(data)

    def _pin_locked(
        self,
        data: bytes | memoryview,
        limit: int | None = None,
        credit: QueueCredit | None = None,
    ) -> bool:
        """Count the buffer ``data`` keeps alive against ``credit`` when it has room left, else
        in the queue's bound (``limit``, else the queue's); False (and nothing counted) when it
        does not fit."""
        key, size = _pinned(data)
        pin = self._pins.get(key)
        if pin is not None:
            pin[1] += 1
            return True
        if credit is not None and credit.left >= size:
            credit.left -= size  # counted in _pending_bytes already
        else:
            bound = self._max_pending if limit is None else limit
            if self._queue and self._pending_bytes + size > bound:
                return False
            self._pending_bytes += size
        self._pins[key] = [size, 1]
        return True

    def _unpin_locked(self, data: bytes | memoryview) -> None:
        key, _ = _pinned(data)
        pin = self._pins[key]
        pin[1] -= 1
        if not pin[1]:
            del self._pins[key]
            self._pending_bytes -= pin[0]

    def _enqueue_locked(
        self,
        digest: bytes,
        data: bytes | memoryview,
        wait: float = 0.0,
        credit: QueueCredit | None = None,
    ) -> bool:
        """Queue ``data`` (or drop it when the queue is full and stays full: see the module
        docstring); False when write-behind is off, so the caller stores it."""
        if not self._max_pending:
            return False
        if digest in self._pending:
            return True
        limit = self._max_pending // 2 if wait > 0 else self._max_pending
        while not self._pin_locked(data, limit, credit):
            if self._await_writer_locked(wait):
                if not self._max_pending:
                    return False  # write-behind stopped meanwhile: the caller stores it
                if digest in self._pending:
                    return True
                continue  # progress: try again
            self.dropped += 1
            if self.dropped == 1:
                logger.info(
                    "content cache: the disk is slower than the reads; content that does not "
                    "fit the write queue is not cached (read again from the source next time)"
                )
            return True
        self._pending[digest] = data
        self._queue.append(_Op(None, digest, data, -1))
        self._cond.notify_all()
        return True

    def queue_stream_op(
        self,
        stream: WholeFileStream,
        op: StreamOp,
        data: bytes | memoryview | None = None,
        k: int = -1,
        credit: QueueCredit | None = None,
    ) -> bool:
        """Queue ``op`` of ``stream`` for the writer thread. An append that does not fit the
        queue (``credit`` first, as in :meth:`put_bytes`), or comes when write-behind is off,
        is refused: False. A commit or an abort is always taken; once the writer thread is gone
        it runs in the calling thread."""
        with self._cond:
            queued = data is not None or self._writing
            if data is not None and (
                not self._max_pending or not self._pin_locked(data, credit=credit)
            ):
                return False
            if queued:
                self._queue.append(_Op(stream, op, data, k))
                self._cond.notify_all()
        if not queued:
            stream.run(op, None, k)
        return True

    def _write_loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and self._max_pending:
                    cond.wait()
                if not self._queue:
                    self._writing = False
                    return  # closed and drained
                item = self._queue[0]
            # A put is stored before it leaves the queue: lookups keep finding it meanwhile.
            if item.stream is None:
                self._store(cast(bytes, item.what), cast("bytes | memoryview", item.data))
            else:
                try:
                    item.stream.run(cast(StreamOp, item.what), item.data, item.k)
                except Exception:  # a bug: the writer thread must go on
                    logger.exception(
                        "content cache: whole-file entry of %s", item.stream.entry.path
                    )
            with cond:
                self._queue.popleft()
                self._written += 1
                if item.stream is None:
                    self._pending.pop(cast(bytes, item.what), None)
                if item.data is not None:
                    self._unpin_locked(item.data)
                cond.notify_all()

    def flush(self) -> None:
        """Wait until everything queued has been written (no-op without write-behind)."""
        with self._cond:
            while self._queue and self._writing:
                self._cond.wait()

    def stop_write_behind(self) -> None:
        """Store what is queued and stop the writer thread; ``put_bytes`` stores in the calling
        thread afterwards. Idempotent. The wrapped cache stays open (its owner closes it)."""
        with self._cond:
            self._max_pending = 0
            writer, self._writer = self._writer, None
            self._cond.notify_all()
        if writer is not None:
            writer.join()

    # ------------------------------------------------------------------ the Cache protocol

    def get(self, digest: bytes) -> BinaryIO | None:
        """Raw delegation (unverified, errors propagate): the protocol's ``get``."""
        return self._cache.get(digest)

    def put(self, digest: bytes, f: BinaryIO) -> None:
        self._cache.put(digest, f)

    def delete(self, digest: bytes) -> None:
        """Delete ``digest``; failures are logged, never raised."""
        try:
            self._cache.delete(digest)
        except Exception as e:
            self._failed("delete", digest, e)

    def max_bytes(self) -> int:
        return self._cache.max_bytes()

    def size_bytes(self) -> int:
        return self._cache.size_bytes()

    def prune(self, target_bytes: int) -> int:
        return self._cache.prune(target_bytes)

    def __repr__(self) -> str:
        return f"ContentCache({self._cache!r})"
