"""Sequential readahead for chunked entries: big ranges, several in flight, bounded memory.

A file object reading a chunked entry front to back in small pieces (the FUSE daemon's 128 KiB
to 1 MiB requests, ``shutil.copyfileobj``'s 64 KiB) would otherwise pay one range request per
chunk and decode on one core. Once a :class:`Readahead` sees :data:`SEQUENTIAL_READS` reads in a
row each starting where the previous one ended, the next read needing a chunk that is not in
memory opens a *window*: consecutive *groups* of chunks (each at most :data:`GROUP_BYTES` of
content and payload, so one range request each) are loaded ahead of the reader by the
archive's :class:`ReadaheadPool`, up to :data:`READAHEAD_BYTES` of content. Groups start small
and double (:data:`RAMP_BYTES`, 2x, 4x, ...): the reader waits for the first group of a
window, and big requests only pay off once they are ahead of it. The first read of a file at
its start already opens a short window (:data:`START_BYTES`): most programs reading the start
of a large file read on, and the second request is then on its way before they ask. A single
read spanning more than one group uses the same window up to its own end (it pipelines
itself), without reading ahead past it.

Each group is loaded by :func:`load_group` in a pool thread: content-cache lookups (their disk
reads overlapping), one fetch per run of missing chunks through the blocking ``source``,
decoding and SHA-256 verification, cache stores. Each chunk has its own future, resolved as soon
as that chunk is verified: with a source that reports progress (``read_into``, an HTTP source),
chunk 0 of a 12 MiB range is handed to the reader while the rest of the range still arrives, so
large requests cost no waiting. zstd and hashlib release the GIL, so groups decode on all cores
while the reader consumes earlier ones. The sync and the async file use this one mechanism: the
read algorithm yields :class:`~blobfs.core._steps.Wait` for a chunk's future, which the sync
driver blocks on and the async driver awaits (``_steps.wait_done``), so no event loop ever
blocks.

Rules:

- Only verified chunks are ever handed out (a chunk's future is resolved after it was verified,
  and the bytes behind it are never written again).
- Errors stay with the chunk they concern: a group records a per-chunk exception instead of
  failing. A reader reaching a failed chunk drops the window and reads that chunk directly, so
  the error (or a successful retry) comes from the ordinary read path; a failure in a chunk the
  reader never reaches is never seen.
- A read outside the window (a seek elsewhere) drops it: pending groups are cancelled, running
  ones finish in their thread and their results are discarded. Random reads keep fetching just
  the chunks they touch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar, TypeVarTuple

from ._content import STORE_PATIENCE, ContentCache, QueueCredit
from ._decode import Buffer, decode_chunk_view
from ._source import ByteSource
from ._steps import chunk_runs, new_buffer, read_buffer
from ._types import Entry
from ._whole import WholeFileStream

__all__ = [
    "GROUP_BYTES",
    "PREFETCH_THREADS",
    "RAMP_BYTES",
    "READAHEAD_BYTES",
    "SEQUENTIAL_READS",
    "START_BYTES",
    "Readahead",
    "ReadaheadPool",
    "load_group",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

PREFETCH_THREADS: Final = 4
"""Pool threads per archive, so up to four groups load at once: FIELD-NOTES.md measured 4
connections best for 8-16 MiB ranges against a local registry (435-571 MB/s, vs 338-490 with
one), and four threads keep both cores busy with zstd/SHA-256 while others wait on the network."""

GROUP_BYTES: Final = 12 << 20
"""Most content (and payload) per group: one 12 MiB range request. A request costs the registry
about 5 ms of CPU whatever its size (measured: 1.6 ms of CPU per MiB in 8 MiB ranges, 1.1 in
32 MiB ranges), and on two cores its CPU is the reader's too; FIELD-NOTES.md measured 16 MiB
ranges faster than 4 MiB ones on every connection count. 12 MiB (with a 24 MiB window) read a
cold 1 GiB file as fast as 16 (with 32) here (medians 315 vs 283 MB/s, interleaved) and took
the daemon's peak from 112 to 96-100 MB."""

RAMP_BYTES: Final = 1 << 20
"""Content of a window's first group (at least one chunk); each next group doubles, up to
:data:`GROUP_BYTES`. The reader waits for the first group of a window, so it is small: a 1 MiB
range answers in a few milliseconds, where a 16 MiB one takes tens."""

START_BYTES: Final = 4 << 20
"""How far the first read of a file at offset 0 reads ahead (past its own end): a cold
``cat`` gets its second and third requests' data on the way at once, while a program reading
just the header of a large file (``file``, ``head``) fetches a few MiB it did not need."""

READAHEAD_BYTES: Final = 24 << 20
"""Most content a window holds, counting the group being read: two full groups in flight. A
group is scheduled only when all of it fits (the first of a window always is), so an open file
holds at most this much, buffers freed as soon as the reader has passed them. (Topping up while
under the bound let the ramp's small groups plus two full ones reach half as much again.)"""

SEQUENTIAL_READS: Final = 2
"""Reads in a row, each starting where the previous one ended (the first read of a file counts
when it starts at 0), before readahead starts: one continuing read may be chance, two are a
stream, and starting after the second costs a streaming reader at most two small fetches."""


class ReadaheadPool:
    """The thread pool an archive's files load readahead groups in; created on first use.

    Concurrency: :meth:`submit` may be called from any thread. After :meth:`close` it returns
    None (the file then reads without readahead); ``close`` cancels queued groups and waits for
    running ones, so it must not be called from a pool thread.
    """

    __slots__ = ("_closed", "_executor", "_lock", "_threads")

    def __init__(self, threads: int = PREFETCH_THREADS) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[[*Ts], T], *args: *Ts) -> Future[T] | None:
        """Run ``fn(*args)`` in a pool thread; None once the pool is closed."""
        with self._lock:
            if self._closed:
                return None
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._threads, thread_name_prefix="blobfs-readahead"
                )
            try:
                return self._executor.submit(fn, *args)
            except RuntimeError:  # interpreter shutdown
                return None

    def close(self) -> None:
        """Cancel queued work, wait for running work, refuse new work; idempotent."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


ChunkResult = bytes | memoryview | Exception
"""A group's answer for one chunk: its verified content (a read-only view of the group's
buffer for an uncompressed chunk: no copy), or why it could not be had."""


def _settle(fut: Future[ChunkResult], value: ChunkResult) -> None:
    """Resolve ``fut`` unless it is already done (cancelled by a dropped window)."""
    if not fut.done():
        with contextlib.suppress(InvalidStateError):  # cancelled meanwhile
            fut.set_result(value)


def load_group(
    entry: Entry,
    first: int,
    source: ByteSource,
    content: ContentCache | None,
    chunks: list[Future[ChunkResult]],
    store: bool = True,
    credit: QueueCredit | None = None,
    patience: float = 0.0,
) -> None:
    """Resolve ``chunks[i]`` with chunk ``first + i`` of ``entry``, verified, or its error.

    Runs in a pool thread (blocking I/O): cache lookups, then room set aside in the content
    cache's write queue for the chunks missing (``credit``, waiting up to ``patience`` seconds
    for each of the writer's operations: see ``_content.py``), one fetch per run of missing
    chunks (:func:`~blobfs.core._steps.chunk_runs`), each chunk decoded, verified and resolved
    as soon as its payload is in (:func:`_fetch_run`), cache stores. Never raises for a bad
    chunk or a failed fetch: the error is the result of the chunks it concerns; no future is
    left pending.
    """
    end = first + len(chunks)
    try:

        def hit(i: int, chunk: Buffer | None) -> None:
            if chunk is not None:  # handed over at once: a warm group is read chunk by chunk
                _settle(chunks[i], chunk)

        found: list[Buffer | None] = (
            [None] * len(chunks) if content is None else content.get_chunks(entry, first, end, hit)
        )
        if content is not None and credit is not None:
            missing = 0
            for k, chunk in enumerate(found, first):
                if chunk is None:
                    lo, hi = entry.chunk_bounds(k)
                    missing += hi - lo
            content.reserve(credit, missing, patience)
        for a, b in chunk_runs(entry, first, found, GROUP_BYTES):
            _fetch_run(
                entry,
                a,
                b,
                source,
                content if store else None,
                chunks[a - first : b - first],
                credit,
            )
    finally:
        for fut in chunks:  # a bug or interpreter shutdown: no reader may wait forever
            _settle(fut, RuntimeError("readahead ended without loading this chunk"))


def _fetch_run(
    entry: Entry,
    a: int,
    b: int,
    source: ByteSource,
    content: ContentCache | None,
    chunks: list[Future[ChunkResult]],
    credit: QueueCredit | None = None,
) -> None:
    """Fetch chunks ``a .. b - 1`` with one request and resolve ``chunks`` (theirs) one by one
    as their payloads arrive, when the source reports progress; else once it is all in. Each
    chunk is stored in ``content`` (when given) against ``credit`` first."""
    off, _ = entry.chunk_payload(a)
    last_off, last_n = entry.chunk_payload(b - 1)
    length = last_off + last_n - off
    k = a  # the next chunk to resolve

    def resolve(view: memoryview, filled: int) -> None:
        nonlocal k
        while k < b:
            k_off, k_n = entry.chunk_payload(k)
            if k_off - off + k_n > filled:
                return
            try:
                chunk: ChunkResult = decode_chunk_view(
                    entry, k, view[k_off - off : k_off - off + k_n]
                )
            except Exception as e:
                chunk = e
            # Stored first: a read right after this one finds it (with write-behind, the
            # mount's, storing is only queueing).
            if content is not None and not isinstance(chunk, Exception):
                content.put_bytes(entry.chunk_hash(k), chunk, credit=credit)
            _settle(chunks[k - a], chunk)
            k += 1

    read_into = getattr(source, "read_into", None)
    try:
        if read_into is None:
            resolve(memoryview(read_buffer(source, off, length)), length)
            return
        view = new_buffer(length)
        read_into(off, view, lambda filled: resolve(view, filled))
        resolve(view, length)
    except Exception as e:
        for fut in chunks[k - a :]:
            _settle(fut, e)


@dataclass(slots=True)
class Group:
    """Chunks ``first .. end - 1`` (``size`` content bytes) loading in the pool job ``job``,
    each resolved in ``chunks`` as soon as it is verified."""

    first: int
    end: int
    size: int
    job: Future[None]
    chunks: list[Future[ChunkResult]]
    credit: QueueCredit | None


class Readahead:
    """The readahead window of one open file of a chunked entry (see the module docstring).

    The file's read algorithm calls :meth:`begin` at the start of every read, :meth:`group_for`
    for each chunk it does not hold, :meth:`take` once that group is done, and :meth:`finish`
    after a successful read. Window invariant: ``groups`` are consecutive and end at ``_next``.

    Concurrency: not thread-safe; used by one file object, which serialises its reads. Group
    loads run in pool threads and touch none of this state.
    """

    __slots__ = (
        "_content",
        "_entry",
        "_groups",
        "_horizon",
        "_last_end",
        "_next",
        "_pool",
        "_ramp",
        "_source",
        "_streak",
        "_whole",
    )

    def __init__(
        self,
        entry: Entry,
        source: ByteSource,
        content: ContentCache | None,
        pool: ReadaheadPool,
    ) -> None:
        if not entry.chunked:
            raise ValueError(f"{entry.path}: readahead needs a chunk table")
        self._entry = entry
        self._source = source
        self._content = content
        self._pool = pool
        self._groups: collections.deque[Group] = collections.deque()
        self._next = 0  # first chunk not scheduled
        self._horizon = 0  # schedule groups below this chunk only
        self._last_end = 0  # where the last successful read ended
        self._streak = 0  # consecutive reads continuing the previous one
        self._ramp = RAMP_BYTES  # content limit of the next group scheduled
        # The whole-file entry being written while the file is read from its start (_whole.py):
        # its groups store nothing themselves, the chunks go to it as they are taken.
        self._whole: WholeFileStream | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """``(first_chunk, end_chunk)`` scheduled, or None without a window (for tests)."""
        return (self._groups[0].first, self._next) if self._groups else None

    def begin(self, start: int, end: int) -> None:
        """A read of content ``[start, end)`` (not empty) begins."""
        cs = self._entry.chunk_size
        self._streak = self._streak + 1 if start == self._last_end else 0
        first, last = start // cs, (end - 1) // cs
        groups = self._groups
        if groups and not groups[0].first <= first <= self._next:
            self.discard()  # a seek elsewhere: the window is of no use
        if self._streak >= SEQUENTIAL_READS:
            self._horizon = self._entry.num_chunks
        elif start == 0 and self._streak == 1:
            self._horizon = min(self._entry.num_chunks, last + 1 + -(-START_BYTES // cs))
        elif (last + 1 - first) * cs > GROUP_BYTES:
            self._horizon = last + 1  # a big read pipelines itself, but reads nothing beyond
        else:
            self._horizon = 0

    def finish(self, end: int) -> None:
        """The read succeeded and ended at content offset ``end``."""
        self._last_end = end

    def group_for(self, k: int) -> Group | None:
        """The group holding chunk ``k`` (scheduling groups as the window allows), or None when
        ``k`` is to be read directly."""
        groups = self._groups
        while groups and groups[0].end <= k:
            self._release(groups.popleft())  # passed: the reader is done with it
        if groups and k < groups[0].first:
            self.discard()
        if not groups:
            if k >= self._horizon:
                return None
            if k != self._next:
                self._ramp = RAMP_BYTES  # a new window, not the old one running on
            self._next = k
            if k == 0 and self._whole is None and self._content is not None:
                self._whole = self._content.stream_whole(self._entry)
        self._top_up()
        if groups and groups[0].first <= k < groups[0].end:
            return groups[0]
        return None

    def _top_up(self) -> None:
        entry, groups = self._entry, self._groups
        held = sum(g.size for g in groups)
        while len(groups) < PREFETCH_THREADS and self._next < self._horizon:
            limit = self._ramp
            if groups and held + limit > READAHEAD_BYTES:
                break  # a whole next group must fit: the window never holds more than the bound
            first = end = self._next
            size = 0
            start_off, _ = entry.chunk_payload(first)
            while end < self._horizon:
                lo, hi = entry.chunk_bounds(end)
                off, n = entry.chunk_payload(end)
                if end > first and (size + hi - lo > limit or off + n - start_off > limit):
                    break
                size += hi - lo
                end += 1
            chunks: list[Future[ChunkResult]] = [Future() for _ in range(first, end)]
            # Groups behind the first of the window are ahead of the reader: they may wait for
            # the cache's writer. The reader waits for the first one: it never does.
            credit = None if self._content is None else QueueCredit()
            job = self._pool.submit(
                load_group,
                entry,
                first,
                self._source,
                self._content,
                chunks,
                self._whole is None,
                credit,
                STORE_PATIENCE if groups else 0.0,
            )
            if job is None:  # the archive was closed: read without readahead
                self._horizon = 0
                return
            groups.append(Group(first, end, size, job, chunks, credit))
            self._next = end
            self._ramp = min(GROUP_BYTES, 2 * max(limit, size))
            held += size

    def take(self, group: Group, k: int) -> bytes | memoryview | None:
        """Chunk ``k`` of ``group`` once its future is done; None (and the window dropped) if
        it failed."""
        fut = group.chunks[k - group.first]
        try:
            item = fut.result(timeout=0)
        except Exception as e:  # cancelled by Archive.close() or a dropped window
            logger.debug("%s: readahead of chunk %d failed: %r", self._entry.path, k, e)
            self.discard()
            return None
        if not isinstance(item, Exception):
            if self._whole is not None:
                self._whole.feed(k, item, group.credit)
            return item
        logger.debug("%s: readahead of chunk %d failed: %r", self._entry.path, k, item)
        self.discard()
        return None

    def ready(self, k: int) -> bool:
        """Whether chunk ``k`` is loaded and verified, so reading it neither fetches nor waits."""
        for g in self._groups:
            if g.first <= k < g.end:
                fut = g.chunks[k - g.first]
                if not fut.done() or fut.cancelled():
                    return False
                return not isinstance(fut.result(), Exception)
        return False

    def _release(self, group: Group) -> None:
        """Give back the write-queue room ``group`` set aside and did not use."""
        if group.credit is not None and self._content is not None:
            self._content.release(group.credit)

    def discard(self) -> None:
        """Drop the window: queued groups are cancelled, running ones finish unused; a
        whole-file entry being written is abandoned (its chunks stored one by one)."""
        if self._whole is not None:
            self._whole.abandon()
            self._whole = None
        for g in self._groups:
            g.job.cancel()
            for fut in g.chunks:  # nobody may wait for a group that will not run
                fut.cancel()
            self._release(g)
        self._groups.clear()
        self._ramp = RAMP_BYTES
