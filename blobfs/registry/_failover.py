"""A data-blob source that fails over between mirrors and the registry itself.

A pulled archive reads its data blob with range requests from the first place that served its
metadata: a mirror (pull-through cache) when one answered, else the registry. If that mirror
dies while the archive is open (a long-lived mount outlives many mirror restarts), reads must
continue from the next mirror or from the registry, and come back to the mirror once it is up
again, so a fleet does not stay on the origin after one hiccup.

:class:`FailoverSource` holds one :class:`~blobfs.core.http.HttpSource` per candidate URL, all for
the same blob (same digest, size, content-addressed ``source_id``). A read goes to the first
candidate not marked down; an :class:`~blobfs.errors.HttpError` from it (connection refused,
deadline, 5xx after its retries, 404, a malformed answer) marks it down for
:data:`RETRY_AFTER` seconds and the read moves on to the next. The last candidate, the registry
itself, is never skipped: its error is the read's error. Bytes are not verified here (the
ByteSource contract): the archive reader verifies whatever any candidate served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..core._closing import AsyncClosing, Closing
from ..core._steps import Progress, WritableBuffer
from ..core.http import HttpSource
from ..errors import HttpError

__all__ = ["RETRY_AFTER", "FailoverSource"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_AFTER = 30.0
"""Seconds a failed mirror is skipped before reads try it again: long enough that a dead mirror
costs one failed request per half minute, short enough that a restarted one takes its load back
soon."""


class FailoverSource(Closing, AsyncClosing):
    """A :class:`~blobfs.core.ByteSource` over several :class:`HttpSource` of one blob.

    ``sources`` are in order of preference; the last is the registry itself. They must share
    ``size`` and ``source_id`` (checked). Owns the sources: :meth:`close`/:meth:`aclose` close
    them all. ``clock`` is for tests.

    Concurrency: as :class:`HttpSource` (any number of threads, and tasks of one event loop);
    which candidate is down is shared under a lock, so one failure moves every reader on.
    """

    __slots__ = ("_clock", "_down_until", "_lock", "_sources")

    def __init__(
        self, sources: Sequence[HttpSource], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not sources:
            raise ValueError("FailoverSource needs at least one source")
        first = sources[0]
        for s in sources[1:]:
            if s.size != first.size or s.source_id != first.source_id:
                raise ValueError("FailoverSource: the sources are not one blob")
        self._sources = tuple(sources)
        self._down_until = [0.0] * len(sources)
        self._lock = threading.Lock()
        self._clock = clock

    @property
    def size(self) -> int:
        return self._sources[0].size

    @property
    def source_id(self) -> str:
        return self._sources[0].source_id

    @property
    def url(self) -> str:
        """The URL reads go to now (the first candidate not marked down)."""
        return self._sources[self._pick(0)].url

    @property
    def urls(self) -> tuple[str, ...]:
        """Every candidate URL, in order of preference."""
        return tuple(s.url for s in self._sources)

    def _pick(self, start: int) -> int:
        """The first candidate from ``start`` on not marked down (the last one always)."""
        now = self._clock()
        last = len(self._sources) - 1
        with self._lock:
            for i in range(start, last):
                if self._down_until[i] <= now:
                    return i
        return last

    def _failed(self, i: int, exc: HttpError) -> None:
        with self._lock:
            self._down_until[i] = self._clock() + RETRY_AFTER
        log.warning(
            "data blob %s: %s failed (%s); reading from %s for the next %g s",
            self.source_id,
            self._sources[i].url,
            exc,
            self._sources[i + 1].url,
            RETRY_AFTER,
        )

    def invalidate(self, offset: int, length: int) -> bool:
        """The reader found bytes of ``[offset, offset + length)`` failing verification: the
        candidate reads go to now is marked down (as after a failure), so reading again asks
        the next one (a mirror serving wrong bytes is passed over, not trusted twice). False
        when that candidate is the last (the registry itself): there is nobody else to ask."""
        i = self._pick(0)
        if i == len(self._sources) - 1:
            return False
        with self._lock:
            self._down_until[i] = self._clock() + RETRY_AFTER
        log.warning(
            "data blob %s: %s served bytes that failed verification (range %d+%d); reading from "
            "%s for the next %g s",
            self.source_id,
            self._sources[i].url,
            offset,
            length,
            self._sources[self._pick(i + 1)].url,
            RETRY_AFTER,
        )
        return True

    def _first(self, read: Callable[[HttpSource], T]) -> T:
        """``read(candidate)`` on the first candidate that answers (see the class docstring)."""
        i = self._pick(0)
        while True:
            try:
                return read(self._sources[i])
            except HttpError as exc:
                if i == len(self._sources) - 1:
                    raise
                self._failed(i, exc)
                i = self._pick(i + 1)

    def read_at(self, offset: int, length: int) -> bytes:
        return self._first(lambda s: s.read_at(offset, length))

    def read_into(
        self, offset: int, buffer: WritableBuffer, progress: Progress | None = None
    ) -> None:
        """``HttpSource.read_into`` with the same failover as :meth:`read_at`; after a
        candidate failed part way, the next one continues after the bytes already reported
        through ``progress`` (they are final: never written again)."""
        view = memoryview(buffer).cast("B")
        done = 0

        def report(n: int, base: int) -> None:
            nonlocal done
            done = base + n
            if progress is not None:
                progress(done)

        def read(s: HttpSource) -> None:
            base = done
            s.read_into(offset + base, view[base:], lambda n: report(n, base))

        self._first(read)

    async def aread_at(self, offset: int, length: int) -> bytes:
        i = self._pick(0)
        while True:
            try:
                return await self._sources[i].aread_at(offset, length)
            except HttpError as exc:
                if i == len(self._sources) - 1:
                    raise
                self._failed(i, exc)
                i = self._pick(i + 1)

    def close(self) -> None:
        for s in self._sources:
            s.close()

    async def aclose(self) -> None:
        for s in self._sources:
            await s.aclose()

    def __repr__(self) -> str:
        return f"FailoverSource({', '.join(self.urls)})"
