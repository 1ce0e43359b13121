"""Prefetching many files into the content cache with few range requests.

Reading a directory of 1,000 small files one by one costs 1,000 range requests (about 5 ms each
against a registry, FIELD-NOTES.md). :func:`plan_batches` groups the files that are not cached
yet by where their payloads lie: payloads that follow each other in the data blob (as ``create``
writes a directory's files) form one batch of at most :data:`~blobfs.core._decode.MAX_FETCH`
bytes, fetched with one request. :func:`load_batch` fetches a batch, decodes and verifies every
file in it, and stores the verified content in the content cache under the keys every read
uses (whole-file hash for v1 entries, chunk hashes for chunked ones), so the reads that follow
are served from the cache. The Go reference's batch copy (``core/internal/batch``) groups the
same way.

Prefetching is a hint: a file that fails (bad bytes, a source error) is skipped and logged at
DEBUG; reading it later reports the error through the ordinary path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import Future

from ..errors import IntegrityError
from ._aio import run_sync_in_thread
from ._content import ContentCache
from ._decode import MAX_FETCH, PayloadDecoder, check_extent, decode_chunks
from ._prefetch import ReadaheadPool
from ._source import ByteSource
from ._steps import read_buffer, wait_done
from ._types import Entry

__all__ = ["aprefetch", "load_batch", "plan_batches", "prefetch"]

logger = logging.getLogger(__name__)


def _cached(entry: Entry, content: ContentCache) -> bool:
    if entry.chunked:
        return all(content.has(entry.chunk_hash(k)) for k in range(entry.num_chunks))
    return content.has(entry.hash)


def plan_batches(
    entries: Iterable[Entry], content: ContentCache, source_size: int
) -> list[list[Entry]]:
    """The files among ``entries`` worth prefetching, in batches of adjacent payloads.

    Skipped: empty files, files already in the cache, payloads larger than ``MAX_FETCH`` (those
    stream with readahead anyway) and payloads outside the data blob. Does cache I/O (one
    ``get`` per key): call it from a worker thread in async code.
    """
    todo = [
        e
        for e in entries
        if e.original_size > 0
        and e.data_size <= MAX_FETCH
        and e.data_offset + e.data_size <= source_size
    ]
    todo = [e for e in todo if content.fits(e.original_size) and not _cached(e, content)]
    todo.sort(key=lambda e: e.data_offset)
    batches: list[list[Entry]] = []
    start = end = 0
    for e in todo:
        if batches and e.data_offset == end and end + e.data_size - start <= MAX_FETCH:
            batches[-1].append(e)
        else:
            batches.append([e])
            start = e.data_offset
        end = e.data_offset + e.data_size
    return batches


def load_batch(batch: list[Entry], source: ByteSource, content: ContentCache) -> int:
    """Fetch one batch with one request, verify and store each file; the number stored.

    Blocking I/O: runs in a pool or worker thread. Never raises for a bad file or a failed fetch.
    """
    start = batch[0].data_offset
    end = batch[-1].data_offset + batch[-1].data_size
    try:
        payload = read_buffer(source, start, end - start)
    except Exception as e:
        logger.debug("prefetch of %d files at [%d, %d) failed: %r", len(batch), start, end, e)
        return 0
    view = memoryview(payload)
    stored = 0
    for entry in batch:
        piece = view[entry.data_offset - start : entry.data_offset - start + entry.data_size]
        try:
            check_extent(entry, source.size)
            if entry.chunked:
                for k, chunk in enumerate(decode_chunks(entry, 0, piece)):
                    content.put_bytes(entry.chunk_hash(k), chunk)
            else:
                parts: list[bytes] = []
                dec = PayloadDecoder.for_entry(entry, sink=parts.append)
                dec.feed(piece)
                dec.finish()
                content.put_bytes(entry.hash, b"".join(parts))
        except (IntegrityError, ValueError) as e:
            logger.debug("prefetch of %s failed: %s", entry.path, e)
            continue
        stored += 1
    return stored


def prefetch(
    batches: list[list[Entry]],
    source: ByteSource,
    content: ContentCache,
    pool: ReadaheadPool | None,
) -> int:
    """Load ``batches``: in the pool (several at once) when there is one, else one by one."""
    futures: list[Future[int]] = []
    stored = 0
    try:
        for batch in batches:
            fut = pool.submit(load_batch, batch, source, content) if pool is not None else None
            if fut is None:
                stored += load_batch(batch, source, content)
            else:
                futures.append(fut)
        for fut in futures:
            stored += fut.result()
    finally:
        for fut in futures:
            fut.cancel()
    return stored


async def aprefetch(
    batches: list[list[Entry]],
    source: ByteSource,
    content: ContentCache,
    pool: ReadaheadPool | None,
) -> int:
    """Async twin of :func:`prefetch`: waits without blocking the event loop; on cancellation
    the batches not started yet are dropped."""
    if pool is None:
        return await run_sync_in_thread(prefetch, batches, source, content, None)
    futures: list[Future[int]] = []
    rest: list[list[Entry]] = []
    stored = 0
    try:
        for i, batch in enumerate(batches):
            fut = pool.submit(load_batch, batch, source, content)
            if fut is None:  # the archive was closed meanwhile: the rest in a worker thread
                rest = batches[i:]
                break
            futures.append(fut)
        for fut in futures:
            await wait_done(fut)
            stored += fut.result()
        if rest:
            stored += await run_sync_in_thread(prefetch, rest, source, content, None)
    finally:
        for fut in futures:
            fut.cancel()
    return stored
