"""Full verification of an archive against its index: the algorithm behind ``Archive.verify``.

Two passes over the data source:

1. when the index records ``data_hash``: the whole blob through SHA-256, and its size checked
   against ``data_size`` (the data layer's digest: it covers bytes no file points at, too);
2. every file: entries without a chunk table are decoded and checked against their whole-file
   hash (small adjacent payloads batched into one fetch), chunked entries chunk by chunk against
   the chunk table, with the whole-file hash computed over the verified chunks (so the table,
   the frame offsets and the whole-file hash are all checked, and must agree).

A failing file is recorded and the walk goes on; the report lists every failure.

Only the source is read: a content cache is neither consulted nor filled, because verification
checks the archive itself (a cache holding good copies must not hide a damaged data blob).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import HashMismatch, IntegrityError, SourceError
from ._decode import MAX_FETCH, PayloadDecoder, check_extent, decode_chunks, plan, split_range
from ._index import Index
from ._steps import Steps, VerifyProgress, fetch
from ._types import Entry

__all__ = ["VerifyReport", "verify_steps"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of :meth:`Archive.verify`.

    ``files``: files checked; ``content_bytes``: their total uncompressed size;
    ``data_error``: why the data blob does not match ``data_size``/``data_hash`` (None when it
    does or the index records neither); ``failures``: ``(path, error message)`` for every file
    that failed, in path order.
    """

    files: int
    content_bytes: int
    data_error: str | None
    failures: tuple[tuple[str, str], ...]

    @property
    def ok(self) -> bool:
        return self.data_error is None and not self.failures


def _data_blob_steps(index: Index, source_size: int) -> Steps[str | None]:
    """Pass 1: the error message for the data blob, or None."""
    if not index.data_hash:
        return None
    if source_size != index.data_size:
        return f"data blob is {source_size} bytes, the index records data_size {index.data_size}"
    hasher = hashlib.sha256()
    for off, n in split_range(0, source_size):
        try:
            hasher.update((yield from fetch(off, n)))
        except SourceError as e:
            return f"reading the data blob failed: {e}"
        yield VerifyProgress("data", off + n, source_size)
    actual = hasher.digest()
    if actual != index.data_hash:
        return str(HashMismatch("data blob", index.data_hash.hex(), actual.hex(), what="data_hash"))
    return None


def _group_steps(group: list[Entry], failures: list[tuple[str, str]]) -> Steps[None]:
    """Verify small v1 entries whose payloads are adjacent, with one fetch."""
    start = group[0].data_offset
    end = group[-1].data_offset + group[-1].data_size
    try:
        payload = (yield from fetch(start, end - start)) if end > start else b""
    except SourceError as e:
        failures.extend((entry.path, str(e)) for entry in group)
        return
    view = memoryview(payload)
    for entry in group:
        try:
            dec = PayloadDecoder.for_entry(entry)
            lo = entry.data_offset - start
            dec.feed(view[lo : lo + entry.data_size])
            dec.finish()
        except IntegrityError as e:
            failures.append((entry.path, str(e)))


def _stream_steps(entry: Entry) -> Steps[None]:
    """Verify one large v1 entry, streaming its payload."""
    dec = PayloadDecoder.for_entry(entry)
    for off, n in split_range(entry.data_offset, entry.data_size):
        dec.feed((yield from fetch(off, n)))
    dec.finish()


def _chunked_steps(entry: Entry) -> Steps[None]:
    """Verify every chunk of a chunked entry, and the whole-file hash over them."""
    hasher = hashlib.sha256()
    window = max(MAX_FETCH, entry.chunk_size)
    for pos in range(0, entry.original_size, window):
        p = plan(entry, pos, window)
        for chunk in decode_chunks(entry, p.first_chunk, (yield from fetch(p.offset, p.length))):
            hasher.update(chunk)
    actual = hasher.digest()
    if actual != entry.hash:
        raise HashMismatch(entry.path, entry.hash.hex(), actual.hex())


def _batches(entries: Iterator[Entry]) -> Iterator[tuple[str, list[Entry]]]:
    """Split the walk into ("group", adjacent small v1 entries) and ("one", [entry]) items."""
    group: list[Entry] = []
    start = end = 0
    for entry in entries:
        small = not entry.chunked and entry.data_size <= MAX_FETCH
        adjacent = bool(group) and entry.data_offset == end
        if small and adjacent and end + entry.data_size - start <= MAX_FETCH:
            group.append(entry)
            end += entry.data_size
            continue
        if group:
            yield "group", group
            group = []
        if small:
            group = [entry]
            start, end = entry.data_offset, entry.data_offset + entry.data_size
        else:
            yield "one", [entry]
    if group:
        yield "group", group


def verify_steps(index: Index, source_size: int) -> Steps[VerifyReport]:
    """The whole verification (see the module docstring) as a step generator."""
    data_error = yield from _data_blob_steps(index, source_size)
    failures: list[tuple[str, str]] = []
    total = len(index)
    done = content = 0

    def in_range(entries: Iterator[Entry]) -> Iterator[Entry]:
        # A payload outside the blob fails alone, before anything is fetched for it.
        nonlocal done, content
        for entry in entries:
            try:
                check_extent(entry, source_size)
            except IntegrityError as e:
                failures.append((entry.path, str(e)))
                done += 1
                content += entry.original_size
            else:
                yield entry

    for kind, batch in _batches(in_range(index.walk())):
        if kind == "group":
            yield from _group_steps(batch, failures)
        else:
            entry = batch[0]
            try:
                if entry.chunked:
                    yield from _chunked_steps(entry)
                else:
                    yield from _stream_steps(entry)
            except (IntegrityError, SourceError) as e:
                failures.append((entry.path, str(e)))
        done += len(batch)
        content += sum(e.original_size for e in batch)
        yield VerifyProgress("files", done, total)
    failures.sort(key=lambda f: f[0].encode("utf-8"))
    return VerifyReport(total, content, data_error, tuple(failures))
