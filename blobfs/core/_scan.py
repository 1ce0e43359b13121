"""Reading ahead across files: small files loaded in batches ahead of a program reading a tree.

A program reading many small files in archive order (``find | xargs cat``, ``cp -r``, ``tar``,
a data loader walking a directory) would otherwise pay one range request per file, and a
request costs far more than its bytes: about 5 ms of the registry's CPU whatever its size
(1 MiB ranges cost it 6.5 ms per MiB, 8 MiB ranges 1.6 ms per MiB, measured here). So
:class:`ScanAhead` watches which files are opened and, once a program is seen reading files in
order, loads the files after the one it opened in *batches*: files that lie back to back in the
data blob, fetched with one request per batch, each file decoded and verified on its own.

Detection: :meth:`ScanAhead.opened` gets the index position of every file opened. An open within
:data:`GAP` positions after the previous open of a *stream* makes it a scan; a scan keeps
:data:`AHEAD_BYTES` of payload scheduled past its last open, as the program advances, once
readers took :data:`PROOF` files from the stream's first (small) batch: files opened in order
that the kernel's page cache answers are never read, and stray reads among them must not each
set off megabytes of loading (the mount reports a file at its first read, not at its open,
unless the open itself takes the file's loaded content: :meth:`ScanAhead.take`).
Up to :data:`STREAMS` streams are followed (programs reading different subtrees at once); a new
one replaces the least recently advanced. One file opened alone starts nothing: a cold read of one
file fetches that file only.

Batches (planned on the caller's thread from the index alone, no I/O): consecutive files whose
payloads are adjacent, without a chunk table (chunked files read ahead by themselves), at most
:data:`FILE_MAX` each and :data:`BATCH_BYTES` together; a stream's first batch is small because
the program waits for it. A batch loads in the archive's readahead pool: content-cache hits are
read and verified there (so a warm tree read hashes on every core), the other files are fetched
with one request per run of adjacent payloads, decoded and verified, and stored in the content
cache. Nothing unverified is kept.

Hand-over: the reader of a file (``_file.py``) calls :meth:`ScanAhead.claim` before anything
else: the verified content when its batch is done (handed over once; a second reader finds it in
the content cache), the batch's future while it loads (the reader waits for it instead of
fetching the file a second time), or None: not in a batch, or its load failed (the reader then
reads the file the ordinary way, which reports the error).

Memory is bounded: at most :data:`STREAMS` x (:data:`AHEAD_BYTES` + :data:`BATCH_BYTES`) of
content is held, and files a stream passed without reading them are dropped.

Concurrency: every method may be called from any thread (one lock); loads run in pool threads.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from ..errors import HashMismatch, IntegrityError
from ._content import STORE_PATIENCE, ContentCache
from ._decode import MAX_FETCH, Buffer, PayloadDecoder
from ._source import ByteSource
from ._steps import read_buffer
from ._types import Compression, Entry

if TYPE_CHECKING:
    from ._index import Index
    from ._prefetch import ReadaheadPool

__all__ = ["AHEAD_BYTES", "BATCH_BYTES", "FILE_MAX", "GAP", "STREAMS", "ScanAhead"]

logger = logging.getLogger(__name__)

BATCH_BYTES: Final = MAX_FETCH
"""Most payload per batch (8 MiB, one request): the ~5 ms a request costs the registry is then a
few per cent of the transfer, and a batch's content (what a reader waits for) arrives in tens
of milliseconds."""

FIRST_BATCH_BYTES: Final = 1 << 20
"""A stream's first batch: the program is waiting for its first file in it, so it is small (a
few files); the batches after it are loaded while the program reads."""

AHEAD_BYTES: Final = 8 << 20
"""Payload a stream keeps scheduled past its last open: a full batch loading while the program
reads the one before (a batch loads in tens of milliseconds, a program reading files one at a
time takes longer to read it), and little memory: 16 MiB read the 10,000-file tree no faster
(102-103 vs 97-106 MB/s) and put the daemon's peak at 109 MB instead of 101-102."""

FILE_MAX: Final = 4 << 20
"""Files bigger than this are not batched: reading one is a transfer of its own, not dominated by
the cost of a request."""

GAP: Final = 16
"""An open up to this many positions past a stream's last one continues it: programs skip files
(a ``find -name`` pattern, empty files); anything farther is another stream."""

STREAMS: Final = 4
"""Scans followed at once (``xargs -P4``, parallel loaders)."""

PAUSE: Final = 256
"""Positions a stream stops loading ahead for once a batch was passed without any of its files
read through it (the kernel's page cache answers them, or the program opens without
reading): then it starts again with a small batch, to see whether reads came back."""

PROOF: Final = 2
"""Files readers must take from a stream's first batch before more is loaded for it: the file
whose read started the batch, and one more."""

PLAN_STEP: Final = 32
"""Index positions decoded at a time while planning a batch."""

PLAN_SPAN: Final = 512
"""Index positions decoded per planning step: bounds the time one open spends planning (a few
hundred microseconds) when many files in a row are not batchable."""


@dataclass(eq=False, slots=True)
class _Batch:
    entries: list[Entry]
    size: int  # payload bytes
    end: int  # the position after its last file
    future: Future[None] = field(default_factory=Future)
    results: dict[bytes, Buffer] = field(default_factory=dict)  # file hash -> verified content
    retired: bool = False
    claimed: int = 0  # files handed over


@dataclass(eq=False, slots=True)
class _Stream:
    last: int  # position of the latest open
    next: int  # first position not planned yet
    scanning: bool = False
    planned: int = 0  # batches planned so far (the first ones are smaller)
    taken: int = 0  # files readers took from batches it passed (since it last paused)
    proven: bool = False  # readers took PROOF files from its batches
    paused_until: int = -1  # no loading ahead before this position (see PAUSE)
    batches: collections.deque[_Batch] = field(default_factory=collections.deque)


class ScanAhead:
    """Batches of small files loaded ahead of programs reading an archive in order (see the
    module docstring). ``pool`` is the archive's readahead pool: without one nothing is
    loaded ahead."""

    __slots__ = ("_by_hash", "_content", "_index", "_lock", "_pool", "_source", "_streams")

    def __init__(
        self,
        index: Index,
        source: ByteSource,
        content: ContentCache | None,
        pool: ReadaheadPool | None,
    ) -> None:
        self._index = index
        self._source = source
        self._content = content
        self._pool = pool
        self._lock = threading.Lock()
        self._streams: list[_Stream] = []  # least recently advanced first
        self._by_hash: dict[bytes, _Batch] = {}  # files of live batches

    # ------------------------------------------------------------------ the reader's side

    def opened(self, pos: int) -> None:
        """A program opened the file at index position ``pos``: continue or start a stream."""
        if self._pool is None or self._pool.closed:
            return
        with self._lock:
            stream = self._stream_for(pos)
            if stream is None:
                self._streams.append(_Stream(last=pos, next=pos + 1))
                if len(self._streams) > STREAMS:
                    self._drop(self._streams.pop(0))
                return
            if pos <= stream.last:
                return  # opened again (or an earlier file): no progress
            self._streams.remove(stream)
            self._streams.append(stream)
            if not stream.scanning:
                stream.scanning = True
                stream.next = pos  # the file just opened is the first one to load
            stream.last = pos
            wasted = False
            while stream.batches and stream.batches[0].end <= pos:
                batch = stream.batches.popleft()  # passed: unclaimed files are dropped
                wasted = wasted or not batch.claimed
                stream.taken += batch.claimed
                self._retire(batch)
            if wasted:
                stream.paused_until = pos + PAUSE
                stream.planned = 0
                stream.taken = 0
                stream.proven = False
            if pos < stream.paused_until:
                return
            stream.next = max(stream.next, pos)
            self._plan(stream)

    def claim(self, entry: Entry) -> Buffer | Future[None] | None:
        """The verified content of ``entry`` if a batch loaded it (handed over once), the
        future of the batch loading it, or None (see the module docstring)."""
        if not self._by_hash:
            return None
        with self._lock:
            batch = self._by_hash.get(entry.hash)
            if batch is None:
                return None
            if not batch.future.done():
                return batch.future
            return self._hand_over_locked(batch, entry)

    def take(self, entry: Entry) -> Buffer | None:
        """The verified content of ``entry`` if a batch has it loaded now, handed over as
        :meth:`claim` hands it over; None otherwise (never a future: the caller does not wait)."""
        if not self._by_hash:
            return None
        with self._lock:
            batch = self._by_hash.get(entry.hash)
            if batch is None or not batch.future.done() or entry.hash not in batch.results:
                return None
            return self._hand_over_locked(batch, entry)

    def _hand_over_locked(self, batch: _Batch, entry: Entry) -> Buffer | None:
        """The content ``batch`` loaded for ``entry``, once (None if it has none of the
        entry's size); the entry is no longer found loading."""
        del self._by_hash[entry.hash]
        batch.claimed += 1
        data = batch.results.pop(entry.hash, None)
        return data if data is not None and len(data) == entry.original_size else None

    def ready(self, entry: Entry) -> bool:
        """Whether :meth:`claim` would hand over the content of ``entry`` now (no waiting)."""
        if not self._by_hash:
            return False
        with self._lock:
            batch = self._by_hash.get(entry.hash)
            return batch is not None and batch.future.done() and entry.hash in batch.results

    def close(self) -> None:
        """Drop every stream and what it holds (queued loads are cancelled)."""
        with self._lock:
            streams, self._streams = self._streams, []
            for s in streams:
                self._drop(s)

    # ------------------------------------------------------------------ planning (locked)

    def _stream_for(self, pos: int) -> _Stream | None:
        for s in reversed(self._streams):
            if s.last <= pos <= max(s.last, s.next - 1) + GAP:
                return s
        return None

    def _plan(self, stream: _Stream) -> None:
        if not stream.proven:
            # Until readers took PROOF files from its batches, a stream has one small batch
            # loading at a time: files opened in order but answered by the page cache are
            # never read, and a few stray reads among them must not set off megabytes of
            # loading each.
            if stream.taken + sum(b.claimed for b in stream.batches) >= PROOF:
                stream.proven = True
            elif stream.batches:
                return
        ahead = sum(b.size for b in stream.batches)
        count = len(self._index)
        while ahead < AHEAD_BYTES and stream.next < count:
            ramp = stream.planned if stream.proven else 0
            limit = min(BATCH_BYTES, FIRST_BATCH_BYTES << (2 * ramp))
            batch = self._next_batch(stream, limit, count)
            if batch is None:
                return  # nothing batchable within PLAN_SPAN: look again at the next open
            assert self._pool is not None
            fut = self._pool.submit(self._load, batch)
            if fut is None:  # the archive was closed
                return
            stream.planned += 1
            stream.batches.append(batch)
            for e in batch.entries:
                self._by_hash[e.hash] = batch
            ahead += batch.size
            if not stream.proven:
                return  # one small batch at a time (see above)

    def _next_batch(self, stream: _Stream, limit: int, count: int) -> _Batch | None:
        """The batch starting at ``stream.next`` (decoding the index a step at a time: a batch
        of a few dozen files must not decode hundreds), or None if nothing batchable follows
        within :data:`PLAN_SPAN` positions; advances ``stream.next`` past what it looked at."""
        start = stream.next
        span_end = min(count, start + PLAN_SPAN)
        source_size = self._source.size
        chosen: list[Entry] = []
        size = end_off = 0
        pos = start
        while pos < span_end:
            step_end = min(span_end, pos + PLAN_STEP)
            for e in self._index.entries_at(list(range(pos, step_end))):
                batchable = (
                    not e.chunked
                    and 0 < e.data_size <= FILE_MAX
                    and e.original_size > 0
                    and e.data_offset + e.data_size <= source_size
                    and e.hash not in self._by_hash
                )
                if chosen and (
                    not batchable or e.data_offset != end_off or size + e.data_size > limit
                ):
                    stream.next = pos
                    return _Batch(chosen, size, pos)
                if batchable:
                    chosen.append(e)
                    size += e.data_size
                    end_off = e.data_offset + e.data_size
                pos += 1
        stream.next = pos
        return _Batch(chosen, size, pos) if chosen else None

    def _retire(self, batch: _Batch) -> None:
        batch.retired = True
        batch.future.cancel()  # only if it has not started
        for e in batch.entries:
            if self._by_hash.get(e.hash) is batch:
                del self._by_hash[e.hash]
        batch.results.clear()

    def _drop(self, stream: _Stream) -> None:
        while stream.batches:
            self._retire(stream.batches.popleft())

    # ------------------------------------------------------------------ loading (pool threads)

    def _load(self, batch: _Batch) -> None:
        if not batch.future.set_running_or_notify_cancel():
            return  # retired before it started
        results: dict[bytes, Buffer] = {}
        try:
            results = self._load_entries(batch.entries)
        except Exception as e:  # a hint only: the readers read their files themselves
            logger.debug("loading a batch of %d files failed: %r", len(batch.entries), e)
        finally:
            with self._lock:
                if not batch.retired:
                    batch.results = results
            batch.future.set_result(None)

    def _load_entries(self, entries: list[Entry]) -> dict[bytes, Buffer]:
        content = self._content
        results: dict[bytes, Buffer] = {}
        todo: list[Entry] = []
        hits = (
            [None] * len(entries)
            if content is None
            else content.get_many([(e.hash, e.original_size, e.path, "content") for e in entries])
        )
        for e, hit in zip(entries, hits, strict=True):
            if hit is None:
                todo.append(e)
            else:
                results[e.hash] = hit
        for run in _adjacent_runs(todo):
            start = run[0].data_offset
            end = run[-1].data_offset + run[-1].data_size
            try:
                payload = read_buffer(self._source, start, end - start)
            except Exception as err:
                logger.debug("batch of %d files at [%d, %d): %r", len(run), start, end, err)
                continue
            view = memoryview(payload)
            for e in run:
                piece = view[e.data_offset - start : e.data_offset - start + e.data_size]
                try:
                    data = _decode_whole(e, piece)
                except (IntegrityError, ValueError) as err:
                    logger.debug("%s: not loaded ahead: %s", e.path, err)
                    continue
                results[e.hash] = data
                if content is not None:
                    content.put_bytes(e.hash, data, wait=STORE_PATIENCE)
        return results


def _adjacent_runs(entries: list[Entry]) -> list[list[Entry]]:
    """``entries`` (in data order) split where their payloads are not back to back."""
    runs: list[list[Entry]] = []
    end = -1
    for e in entries:
        if runs and e.data_offset == end:
            runs[-1].append(e)
        else:
            runs.append([e])
        end = e.data_offset + e.data_size
    return runs


def _decode_whole(entry: Entry, payload: memoryview) -> Buffer:
    """The content of a file without a chunk table from its whole payload, verified: for an
    uncompressed file a read-only view of the batch's buffer (no copy; the buffer is never
    written again), else the decoded bytes."""
    if entry.compression == Compression.NONE:
        if len(payload) != entry.original_size:
            raise IntegrityError(
                entry.path,
                f"uncompressed payload is {len(payload)} bytes but original_size is "
                f"{entry.original_size}",
            )
        actual = hashlib.sha256(payload).digest()
        if actual != entry.hash:
            raise HashMismatch(entry.path, entry.hash.hex(), actual.hex())
        return payload.toreadonly()
    parts: list[bytes] = []
    dec = PayloadDecoder.for_entry(entry, sink=parts.append)
    dec.feed(payload)
    dec.finish()
    return parts[0] if len(parts) == 1 else b"".join(parts)
