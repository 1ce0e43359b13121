"""Read algorithms written once, run by a sync or an async driver.

Each read algorithm (whole file, chunk range, verification) is a generator that *yields* what it
needs from the outside world and gets the answer sent back:

- ``yield Fetch(offset, length)`` receives the raw bytes of that data-blob range (or has the
  source's :class:`~blobfs.errors.SourceError` thrown in, so it can record it and go on);
- ``yield VerifyProgress(...)`` is passed to the caller's progress callback.

:func:`run_steps` drives one with ``source.read_at`` in the calling thread; :func:`arun_steps`
drives the same generator with ``await source.aread_at`` and runs every step between two fetches
(the CPU work: zstd, SHA-256, spool writes) in a worker thread. So there is one algorithm per
operation, and an async network source plugs in through ``aread_at`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal, TypeAlias, TypeVar, cast

from ..errors import SourceError
from ._aio import run_sync_in_thread
from ._decode import PayloadDecoder, check_extent, split_range
from ._source import ByteSource
from ._types import Entry

__all__ = [
    "Fetch",
    "Steps",
    "VerifyProgress",
    "arun_steps",
    "fetch",
    "read_whole_steps",
    "run_steps",
]

T = TypeVar("T")


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


Request: TypeAlias = Fetch | VerifyProgress
Steps: TypeAlias = Generator[Request, bytes | None, T]
"""A read algorithm: yields requests, receives fetched bytes, returns its result."""

ProgressCallback: TypeAlias = Callable[[VerifyProgress], object]


def fetch(offset: int, length: int) -> Steps[bytes]:
    """``data = yield from fetch(offset, length)`` inside a read algorithm."""
    data = yield Fetch(offset, length)
    if data is None:  # a driver bug, not bad input
        raise RuntimeError("driver answered a Fetch with no data")
    return data


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
            elif progress is not None:
                progress(cast(VerifyProgress, value))
    finally:
        steps.close()


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
            elif progress is not None:
                progress(cast(VerifyProgress, value))
    finally:
        steps.close()


def read_whole_steps(entry: Entry, source_size: int) -> Steps[bytes]:
    """The whole content of ``entry``, streamed through the verifying decoder.

    The payload is fetched in :data:`~blobfs.core._decode.MAX_FETCH` pieces; nothing is returned
    before the SHA-256 of the whole content matched.
    """
    check_extent(entry, source_size)
    parts: list[bytes] = []
    dec = PayloadDecoder.for_entry(entry, sink=parts.append)
    for off, n in split_range(entry.data_offset, entry.data_size):
        dec.feed((yield from fetch(off, n)))
    dec.finish()
    return b"".join(parts)
