"""Read algorithms written once, run by a sync or an async driver.

Each read algorithm (whole file, chunk range, verification) is a generator that *yields* what it
needs from the outside world and gets the answer sent back:

- ``yield Fetch(offset, length)`` receives the raw bytes of that data-blob range (or has the
  source's :class:`~blobfs.errors.SourceError` thrown in, so it can record it and go on);
- ``yield VerifyProgress(...)`` is passed to the caller's progress callback;
- ``yield Wait(future)`` returns (answer None) once a ``concurrent.futures.Future`` is done (a
  readahead group, see ``_prefetch.py``): the sync driver blocks on it, the async driver awaits
  it without blocking the event loop or a thread, so a cancelled read stops waiting at once.

:func:`run_steps` drives one with ``source.read_at`` in the calling thread; :func:`arun_steps`
drives the same generator with ``await source.aread_at`` and runs every step between two fetches
(the CPU work: zstd, SHA-256, spool writes) in a worker thread. So there is one algorithm per
operation, and an async network source plugs in through ``aread_at`` alone.

Content-cache I/O (``_content.py``) happens inside the steps, so under the async driver it runs
in worker threads too and never blocks the event loop.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, cast

import sniffio

from ..errors import HashMismatch, IntegrityError, SourceError
from ._aio import run_sync_in_thread
from ._buffers import new_buffer
from ._content import ContentCache
from ._decode import (
    MAX_FETCH,
    Buffer,
    PayloadDecoder,
    check_extent,
    decode_chunks,
    split_range,
)
from ._source import ByteSource
from ._types import Entry

if TYPE_CHECKING:
    from ._prefetch import ReadaheadPool

__all__ = [
    "Fetch",
    "Progress",
    "Steps",
    "VerifyProgress",
    "Wait",
    "WritableBuffer",
    "arun_steps",
    "chunk_runs",
    "chunk_steps",
    "fetch",
    "new_buffer",
    "read_buffer",
    "read_whole_steps",
    "refetch_once",
    "run_steps",
    "stream_payload",
    "wait_done",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def _drop_cached_payload(source: ByteSource, entry: Entry) -> bool:
    """Tell ``source`` that ``entry``'s payload failed verification; True when reading again
    may give other bytes: a caching source (``CachedSource.invalidate``) dropped its copies, or
    a failover source (``FailoverSource.invalidate``) moved on to its next candidate. For any
    other source the answer is the origin's and reading again would not help.
    """
    invalidate = getattr(source, "invalidate", None)
    if invalidate is None:
        return False
    try:
        return bool(invalidate(entry.data_offset, entry.data_size))
    except Exception as e:  # a cache error never fails a read; the first failure stands
        logger.warning("%s: could not drop cached blocks: %s", entry.path, e)
        return False


def refetch_once(source: ByteSource, entry: Entry, make: Callable[[], Steps[T]]) -> Steps[T]:
    """Run ``make()``; after an integrity failure, drop the cached blocks of the entry and run
    it once more from the origin (ARCHITECTURE.md: a bad cache entry is dropped and refetched
    once, a second mismatch is reported).

    The block cache checks each block against damage on disk, but a block that arrived wrong
    from the network is stored with a matching checksum: only the reader's SHA-256 catches it.
    """
    try:
        return (yield from make())
    except IntegrityError as e:
        if not _drop_cached_payload(source, entry):
            raise
        logger.warning("%s; reading it again from the source", e)
    try:
        return (yield from make())
    except IntegrityError:
        _drop_cached_payload(source, entry)  # leave the cache clean of what the origin sent
        raise


@dataclass(frozen=True, slots=True)
class Fetch:
    """Request for the raw bytes ``[offset, offset + length)`` of the data blob."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    """Progress of :meth:`Archive.verify`.

    ``phase`` is ``"data"`` while the data blob is hashed (``done``/``total`` in bytes), then
    ``"files"`` while each file is checked (``done``/``total`` in files).
    """

    phase: Literal["data", "files"]
    done: int
    total: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Request to wait until ``future`` is done; the answer is None, after which the algorithm
    calls ``future.result()`` itself (no longer blocking), so its errors surface in the
    algorithm, where they belong."""

    future: concurrent.futures.Future[Any]


Request: TypeAlias = Fetch | VerifyProgress | Wait
Steps: TypeAlias = Generator[Request, bytes | None, T]
"""A read algorithm: yields requests, receives fetched bytes, returns its result."""

ProgressCallback: TypeAlias = Callable[[VerifyProgress], object]


def fetch(offset: int, length: int) -> Steps[bytes]:
    """``data = yield from fetch(offset, length)`` inside a read algorithm."""
    data = yield Fetch(offset, length)
    if data is None:  # a driver bug, not bad input
        raise RuntimeError("driver answered a Fetch with no data")
    return data


WritableBuffer: TypeAlias = bytearray | memoryview
"""What ``read_into`` fills (a ``bytearray`` or a writable view of one)."""

Progress: TypeAlias = Callable[[int], object]
"""``read_into``'s progress callback: the first ``n`` bytes of the buffer are in and final."""


def read_buffer(source: ByteSource, offset: int, length: int) -> bytes | memoryview:
    """The raw bytes ``[offset, offset + length)`` of the data blob, in the calling thread
    (blocking): through ``source.read_into`` into a fresh buffer (:func:`new_buffer`) when the
    source has one (an HTTP source then reads a large body without copying it around,
    ``_http_raw.py``), else ``source.read_at``; checked for length either way. For the loaders
    running in pool threads (readahead groups, batches of small files)."""
    read_into = getattr(source, "read_into", None)
    if read_into is None:
        return _checked(Fetch(offset, length), source.read_at(offset, length), source)
    buf = new_buffer(length)
    read_into(offset, buf)
    return buf


def _checked(req: Fetch, data: bytes, source: ByteSource) -> bytes:
    # Sources promise exact lengths; a short answer (say a truncated HTTP body) must not be
    # mistaken for payload, so it is checked here once for every source.
    if len(data) != req.length:
        raise SourceError(
            f"{source.source_id}: read of {req.length} bytes at offset {req.offset} "
            f"returned {len(data)} bytes"
        )
    return data


def _advance(
    steps: Steps[T], reply: bytes | None, error: SourceError | None
) -> tuple[bool, object]:
    """One step: ``(True, result)`` when the algorithm finished, else ``(False, request)``.

    StopIteration is caught here, in the thread that ran the step, because it must not cross an
    ``await`` (inside a coroutine it would turn into a RuntimeError).
    """
    try:
        req = steps.send(reply) if error is None else steps.throw(error)
    except StopIteration as stop:
        return True, stop.value
    return False, req


def run_steps(steps: Steps[T], source: ByteSource, progress: ProgressCallback | None = None) -> T:
    """Run a read algorithm to completion with blocking ``source.read_at`` calls."""
    reply: bytes | None = None
    error: SourceError | None = None
    try:
        while True:
            done, value = _advance(steps, reply, error)
            if done:
                return cast(T, value)
            reply, error = None, None
            if isinstance(value, Fetch):
                try:
                    reply = _checked(value, source.read_at(value.offset, value.length), source)
                except SourceError as e:
                    error = e
            elif isinstance(value, Wait):
                concurrent.futures.wait([value.future])
            elif progress is not None:
                progress(cast(VerifyProgress, value))
    finally:
        steps.close()


async def wait_done(fut: concurrent.futures.Future[Any]) -> None:
    """Return once ``fut`` is done, under trio or asyncio, without occupying a thread.

    Cancellation returns at once; the future is left alone (its result is then unused).
    """
    if fut.done():
        return
    if sniffio.current_async_library() == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        event = trio.Event()

        def wake_trio(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(event.set)

        fut.add_done_callback(wake_trio)
        await event.wait()
        return
    import asyncio  # here only: trio programs (the mount) never load it

    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def wake_asyncio(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(resolve)

    fut.add_done_callback(wake_asyncio)
    await waiter


async def arun_steps(
    steps: Steps[T], source: ByteSource, progress: ProgressCallback | None = None
) -> T:
    """Run a read algorithm with ``await source.aread_at``; its CPU steps run in worker threads.

    On cancellation the step in progress finishes first (see
    :func:`~blobfs.core._aio.run_sync_in_thread`), then the generator is closed so it can release
    what it holds (spool files).
    """
    reply: bytes | None = None
    error: SourceError | None = None
    try:
        while True:
            done, value = await run_sync_in_thread(_advance, steps, reply, error)
            if done:
                return cast(T, value)
            reply, error = None, None
            if isinstance(value, Fetch):
                try:
                    data = await source.aread_at(value.offset, value.length)
                    reply = _checked(value, data, source)
                except SourceError as e:
                    error = e
            elif isinstance(value, Wait):
                await wait_done(value.future)
            elif progress is not None:
                progress(cast(VerifyProgress, value))
    finally:
        steps.close()


def chunk_runs(
    entry: Entry, first: int, present: Sequence[object | None], max_fetch: int = MAX_FETCH
) -> Iterator[tuple[int, int]]:
    """``(first_chunk, end_chunk)`` runs of the chunks missing from ``present``.

    ``present[i]`` describes chunk ``first + i`` (None = missing). Adjacent missing chunks form
    one run, so each run is one fetch; a run is split where its payload would exceed
    ``max_fetch`` (a run holds at least one chunk).
    """
    k, end = first, first + len(present)
    while k < end:
        if present[k - first] is not None:
            k += 1
            continue
        a = k
        start_off, _ = entry.chunk_payload(k)
        k += 1
        while k < end and present[k - first] is None:
            off, n = entry.chunk_payload(k)
            if off + n - start_off > max_fetch:
                break
            k += 1
        yield a, k


def chunk_steps(
    entry: Entry, first: int, end: int, content: ContentCache | None
) -> Steps[list[Buffer]]:
    """Verified content of chunks ``first .. end - 1`` of a chunked ``entry``.

    With a content cache each chunk is looked up by ``entry.chunk_hash(k)`` (and verified); the
    misses are fetched as one coalesced range per run of adjacent misses (:func:`chunk_runs`),
    decoded, verified against the chunk table, and only then stored in the cache. The caller
    checks the payload extent (:func:`~blobfs.core._decode.check_extent`) and bounds the range
    (everything returned is held in memory).
    """
    found: list[Buffer | None] = (
        [None] * (end - first) if content is None else content.get_chunks(entry, first, end)
    )
    for a, b in chunk_runs(entry, first, found):
        off, _ = entry.chunk_payload(a)
        last_off, last_n = entry.chunk_payload(b - 1)
        chunks = decode_chunks(entry, a, (yield from fetch(off, last_off + last_n - off)))
        found[a - first : b - first] = chunks
        if content is not None:
            for i, chunk in enumerate(chunks):
                content.put_bytes(entry.chunk_hash(a + i), chunk)
    return cast(list[Buffer], found)


def _whole_from_chunks(entry: Entry, content: ContentCache) -> Steps[bytes]:
    """A chunked entry read whole chunk by chunk (so cached chunks serve it), checked against
    the chunk table and then the whole-file hash (FORMAT.md: the two must agree)."""
    cs = entry.chunk_size
    per_window = max(1, MAX_FETCH // cs)
    hasher = hashlib.sha256()
    parts: list[Buffer] = []
    for first in range(0, entry.num_chunks, per_window):
        end = min(first + per_window, entry.num_chunks)
        for chunk in (yield from chunk_steps(entry, first, end, content)):
            hasher.update(chunk)
            parts.append(chunk)
    actual = hasher.digest()
    if actual != entry.hash:
        raise HashMismatch(entry.path, entry.hash.hex(), actual.hex())
    return b"".join(parts)


def stream_payload(
    entry: Entry,
    feed: Callable[[bytes], object],
    pool: ReadaheadPool | None = None,
    source: ByteSource | None = None,
) -> Steps[None]:
    """Pass the whole payload of ``entry`` to ``feed`` in :data:`~blobfs.core._decode.MAX_FETCH`
    pieces, in order.

    With a readahead ``pool`` (and the ``source`` it should read) and more than one piece, the
    next piece is fetched in a pool thread (blocking ``source.read_at``) while the current one
    is decoded, so network and CPU overlap for large v1 files; one extra piece is held in memory.
    A piece the pool could not fetch (the archive was closed) is fetched the ordinary way;
    errors surface in order, when their piece is reached.
    """
    pieces = list(split_range(entry.data_offset, entry.data_size))
    if pool is None or source is None or len(pieces) < 2:
        for off, n in pieces:
            feed((yield from fetch(off, n)))
        return

    def submit(i: int) -> concurrent.futures.Future[bytes] | None:
        if i >= len(pieces):
            return None
        return pool.submit(run_steps, fetch(*pieces[i]), source)

    ahead = submit(0)
    try:
        for i, piece in enumerate(pieces):
            current, ahead = ahead, submit(i + 1)
            data: bytes | None = None
            if current is not None:
                yield Wait(current)
                if not current.cancelled():
                    data = current.result()  # raises the fetch's error, now that it is reached
            if data is None:
                data = yield from fetch(*piece)
            feed(data)
    finally:
        if ahead is not None:
            ahead.cancel()


def read_whole_steps(
    entry: Entry,
    source_size: int,
    content: ContentCache | None = None,
    pool: ReadaheadPool | None = None,
    source: ByteSource | None = None,
) -> Steps[bytes]:
    """The whole content of ``entry``, verified; nothing is returned before its hash matched.

    Without a content cache the payload is streamed through the verifying decoder in
    :data:`~blobfs.core._decode.MAX_FETCH` pieces (:func:`stream_payload`: with ``pool`` and
    ``source``, the next piece is fetched while one is decoded) and checked against the
    whole-file hash.

    With one, the cache keys are the ones every read path uses, so whole-file and random reads
    share entries: an entry without a chunk table is looked up (and, after a miss, stored) under
    its whole-file ``hash``; a chunked entry chunk by chunk under its chunk hashes (see
    :func:`chunk_steps`), then checked against the whole-file hash as well.
    """
    check_extent(entry, source_size)
    if content is not None and entry.original_size > 0:
        if entry.chunked:
            return (yield from _whole_from_chunks(entry, content))
        hit = content.get_bytes(entry.hash, entry.original_size, entry.path)
        if hit is not None:
            return hit
    parts: list[bytes] = []
    dec = PayloadDecoder.for_entry(entry, sink=parts.append)
    yield from stream_payload(entry, dec.feed, pool, source)
    dec.finish()
    data = b"".join(parts)
    if content is not None:
        content.put_bytes(entry.hash, data)
    return data
