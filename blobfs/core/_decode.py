"""Sans-IO planning, decoding and verification of payloads: the one read mechanism.

Nothing here does I/O. :func:`plan` says which bytes of the data blob serve a read,
:func:`decode_chunks` turns fetched chunk payloads into verified content, and
:class:`PayloadDecoder` decodes and verifies a whole payload pushed in pieces. The sync and async
archive APIs (and the FUSE daemon) all fetch through their own I/O and then call these.

Every decoder is bounded: it never produces more bytes than the index says the content has, so a
hostile payload (a "zstd bomb") costs at most one output buffer before it is refused. zstd is
always decoded in streaming mode across frames: Go's frames may lack the content-size header and
v1 payloads of chunked entries hold one frame per chunk (FORMAT.md section 3).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Final, TypeAlias, cast

import zstandard

from ..errors import HashMismatch, IntegrityError
from ._types import Compression, Entry

__all__ = [
    "MAX_FETCH",
    "Buffer",
    "PayloadDecoder",
    "ReadPlan",
    "check_extent",
    "decode_chunk",
    "decode_chunk_view",
    "decode_chunks",
    "plan",
    "split_range",
]

logger = logging.getLogger(__name__)

Buffer: TypeAlias = bytes | memoryview
"""Verified content as the read path passes it on: ``bytes``, or a read-only view of a buffer
its loader owns and never writes again (no copy; see :func:`decode_chunk_view`)."""

MAX_FETCH: Final = 8 << 20
"""Most payload bytes fetched in one request when streaming: a registry range request costs about
5 ms whatever its size (FIELD-NOTES.md), so 8 MiB amortises it to a few per cent at network speed,
while a read holds at most this much undecoded payload in memory."""

_OUT_BUFFER_MAX: Final = 4 << 20
"""zstd output buffer cap: a chunk up to 4 MiB decodes into one piece (no join copy); whole-file
streams are handed on in pieces of at most this size."""


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What to fetch from the data blob to serve content bytes of one entry.

    The payload range ``[offset, offset + length)`` (absolute data-blob offsets) decodes to the
    content range ``[content_start, content_end)``. ``whole`` plans (entries without a chunk
    table) cover the whole payload and must be decoded with :class:`PayloadDecoder`; chunk plans
    cover chunks ``first_chunk .. end_chunk - 1`` and are decoded with :func:`decode_chunks`.
    An empty plan (``length == 0`` and ``content_start == content_end``) needs no fetch.
    """

    offset: int
    length: int
    content_start: int
    content_end: int
    whole: bool
    first_chunk: int = 0
    end_chunk: int = 0

    @property
    def empty(self) -> bool:
        return self.content_start >= self.content_end


def plan(entry: Entry, offset: int, length: int) -> ReadPlan:
    """The payload range serving content bytes ``[offset, offset + length)`` of ``entry``.

    The range is clipped to the file. Chunked entries get the one contiguous payload range
    covering just the chunks touched; entries without a chunk table get the whole payload (a v1
    hash can only be checked over the whole file). A range that is empty after clipping gives an
    empty plan.
    """
    if offset < 0 or length < 0:
        raise ValueError(f"negative offset or length ({offset}, {length})")
    size = entry.original_size
    end = min(offset + length, size)
    if offset >= end:
        return ReadPlan(entry.data_offset, 0, offset, offset, whole=False)
    if not entry.chunked:
        return ReadPlan(entry.data_offset, entry.data_size, 0, size, whole=True)
    cs = entry.chunk_size
    first, last = offset // cs, (end - 1) // cs
    start_off, _ = entry.chunk_payload(first)
    last_off, last_len = entry.chunk_payload(last)
    return ReadPlan(
        offset=start_off,
        length=last_off + last_len - start_off,
        content_start=first * cs,
        content_end=min((last + 1) * cs, size),
        whole=False,
        first_chunk=first,
        end_chunk=last + 1,
    )


def check_extent(entry: Entry, source_size: int) -> None:
    """Raise :class:`IntegrityError` unless the entry's payload lies inside the data blob.

    The index is validated against the ``data_size`` it records, but the blob actually read may
    be shorter (a truncated download) or the index may record no size at all.
    """
    end = entry.data_offset + entry.data_size
    if end > source_size:
        raise IntegrityError(
            entry.path,
            f"payload [{entry.data_offset}, {end}) lies outside the data blob "
            f"({source_size} bytes)",
        )


def split_range(offset: int, length: int, piece: int = MAX_FETCH) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` pieces of at most ``piece`` bytes covering the range, in order."""
    end = offset + length
    while offset < end:
        n = min(piece, end - offset)
        yield offset, n
        offset += n


class _Out:
    """The file-like sink zstd's stream writer writes decoded pieces to."""

    __slots__ = ("_dec",)

    def __init__(self, dec: PayloadDecoder) -> None:
        self._dec = dec

    def write(self, data: bytes) -> int:
        self._dec._take(data)
        return len(data)


class PayloadDecoder:
    """Decode and verify one payload (a whole file, or one chunk) pushed in pieces.

    :meth:`feed` payload pieces in order; decoded content goes to ``sink`` as it is produced and is
    **unverified until** :meth:`finish` **returns** (the caller must hold it back until then, e.g.
    in a spool file). :meth:`finish` checks the size and the SHA-256. Output is bounded by
    ``size``: a payload decoding to more raises :class:`IntegrityError` before the excess is
    passed on; fewer bytes, a corrupt zstd stream or a different digest also raise (naming
    ``path``). After an error the decoder is unusable.

    Concurrency: one decoder is used by one thread at a time (it may move between threads).
    """

    __slots__ = (
        "_digest",
        "_failed",
        "_hasher",
        "_path",
        "_produced",
        "_sink",
        "_size",
        "_what",
        "_writer",
    )

    def __init__(
        self,
        path: str,
        compression: Compression,
        size: int,
        digest: bytes,
        *,
        what: str = "content",
        sink: Callable[[bytes], object] | None = None,
    ) -> None:
        self._path = path
        self._size = size
        self._digest = digest
        self._what = what
        self._sink = sink
        self._hasher = hashlib.sha256()
        self._produced = 0
        self._failed = False
        self._writer: zstandard.ZstdDecompressionWriter | None = None
        if compression == Compression.ZSTD:
            # A fresh decompressor per payload: creating one costs ~3 us, and a shared one
            # could not be moved between the worker threads an async read hops across. Its
            # default window limit (128 MiB) bounds what a hostile frame header can allocate.
            self._writer = zstandard.ZstdDecompressor().stream_writer(
                cast("IO[bytes]", _Out(self)),
                write_size=max(1, min(size + 1, _OUT_BUFFER_MAX)),
                closefd=False,
            )

    @classmethod
    def for_entry(
        cls, entry: Entry, sink: Callable[[bytes], object] | None = None
    ) -> PayloadDecoder:
        """A decoder for the whole payload of ``entry``, verified against its ``hash``."""
        if entry.compression == Compression.NONE and entry.data_size != entry.original_size:
            raise IntegrityError(
                entry.path,
                f"uncompressed payload is {entry.data_size} bytes but original_size is "
                f"{entry.original_size}",
            )
        return cls(entry.path, entry.compression, entry.original_size, entry.hash, sink=sink)

    @property
    def produced(self) -> int:
        """Content bytes decoded so far."""
        return self._produced

    def _take(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self._produced + n > self._size:
            self._failed = True
            kind = "decompressed data" if self._writer is not None else "payload"
            limit = "original_size" if self._what == "content" else f"the length of {self._what}"
            raise IntegrityError(self._path, f"{kind} exceeds {limit} ({self._size} bytes)")
        self._produced += n
        self._hasher.update(data)
        if self._sink is not None:
            self._sink(data if isinstance(data, bytes) else bytes(data))

    def feed(self, piece: bytes | memoryview) -> None:
        """Decode the next payload piece."""
        if self._failed:
            raise RuntimeError("PayloadDecoder used after an error")
        if self._writer is None:
            self._take(piece)
            return
        try:
            self._writer.write(piece)
        except zstandard.ZstdError as e:
            self._failed = True
            raise IntegrityError(self._path, f"corrupt zstd payload ({self._what}): {e}") from e
        except BaseException:
            self._failed = True
            raise

    def finish(self) -> None:
        """Check size and digest: after this returns, everything passed to the sink is verified."""
        if self._failed:
            raise RuntimeError("PayloadDecoder used after an error")
        self._failed = True  # one use only
        if self._produced < self._size:
            raise IntegrityError(
                self._path,
                f"{self._what} decoded to {self._produced} bytes, expected {self._size} "
                "(truncated payload)",
            )
        actual = self._hasher.digest()
        if actual != self._digest:
            raise HashMismatch(self._path, self._digest.hex(), actual.hex(), what=self._what)


def _one_frame(payload: bytes | memoryview, size: int) -> bytes | None:
    """``payload`` decoded in one shot if it is exactly one zstd frame whose header declares
    ``size`` bytes (what blobfs writes for every chunk), else None.

    About twice as fast as the streaming decoder (no output pieces, no stream bookkeeping: the
    difference between 300 and 500 MB/s per core for 1 MiB chunks). The declared size is
    checked before anything is allocated, so a hostile header cannot make it allocate more than
    the chunk table allows. Anything else (several frames, no size in the header, trailing or
    corrupt data) returns None: the streaming decoder then decodes it or reports precisely what
    is wrong.
    """
    if size <= 0:
        return None
    try:
        if zstandard.frame_content_size(payload) != size:
            return None
        data = zstandard.ZstdDecompressor().decompress(
            payload, max_output_size=size, allow_extra_data=False
        )
    except zstandard.ZstdError:
        return None
    return data if len(data) == size else None


def decode_chunk_view(entry: Entry, k: int, payload: memoryview) -> Buffer:
    """:func:`decode_chunk` that answers an uncompressed chunk with a read-only view of
    ``payload`` instead of a copy: for loaders that own the buffer behind ``payload`` and never
    write it again (a readahead group), so the verified chunk costs no memory or copy of its
    own."""
    if entry.compression != Compression.NONE:
        return decode_chunk(entry, k, payload)
    _check_raw_chunk(entry, k, payload)
    return payload.toreadonly()


def _check_raw_chunk(entry: Entry, k: int, payload: bytes | memoryview) -> None:
    start, end = entry.chunk_bounds(k)
    what = f"chunk {k}"
    if len(payload) != end - start:
        raise IntegrityError(
            entry.path, f"{what} payload is {len(payload)} bytes, expected {end - start}"
        )
    actual = hashlib.sha256(payload).digest()
    expected = entry.chunk_hash(k)
    if actual != expected:
        raise HashMismatch(entry.path, expected.hex(), actual.hex(), what=what)


def decode_chunk(entry: Entry, k: int, payload: bytes | memoryview) -> bytes:
    """Chunk ``k`` of ``entry`` decoded from its payload and verified against the chunk table."""
    if entry.compression == Compression.NONE:
        _check_raw_chunk(entry, k, payload)
        return payload if isinstance(payload, bytes) else bytes(payload)
    start, end = entry.chunk_bounds(k)
    what = f"chunk {k}"
    size, digest = end - start, entry.chunk_hash(k)
    data = _one_frame(payload, size)
    if data is not None:
        actual = hashlib.sha256(data).digest()
        if actual != digest:
            raise HashMismatch(entry.path, digest.hex(), actual.hex(), what=what)
        return data
    parts: list[bytes] = []
    dec = PayloadDecoder(entry.path, entry.compression, size, digest, what=what, sink=parts.append)
    dec.feed(payload)
    dec.finish()
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decode_chunks(entry: Entry, first_chunk: int, payload: bytes | memoryview) -> list[bytes]:
    """Decode and verify consecutive chunks from one coalesced payload range.

    ``payload`` must be exactly the payload of chunks ``first_chunk, first_chunk + 1, ...`` (what
    a chunk :func:`plan` fetches). Returns one verified ``bytes`` per chunk; the first bad chunk
    raises :class:`~blobfs.errors.HashMismatch` (or :class:`IntegrityError`) naming it.
    """
    if not entry.chunked:
        raise ValueError(f"{entry.path}: entry has no chunk table")
    mv = memoryview(payload)
    base, _ = entry.chunk_payload(first_chunk)
    out: list[bytes] = []
    k = first_chunk
    pos = 0
    while pos < len(mv):
        if k >= entry.num_chunks:
            raise ValueError(f"{entry.path}: payload runs past the last chunk")
        off, n = entry.chunk_payload(k)
        rel = off - base
        if rel != pos or rel + n > len(mv):
            raise ValueError(f"{entry.path}: payload does not end on a chunk boundary")
        piece = payload if n == len(mv) and isinstance(payload, bytes) else mv[rel : rel + n]
        out.append(decode_chunk(entry, k, piece))
        pos = rel + n
        k += 1
    return out
