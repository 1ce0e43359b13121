"""Wire-level helpers of the HTTP source, without I/O: header parsing, backoff, body capping.

Split from ``_http_proto`` (the request/response state machines) to keep both small; nothing
here knows about redirects or retry budgets, only about one header or one body.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Literal

import httpx

__all__ = [
    "BACKOFF_CAP",
    "RETRY_AFTER_CAP",
    "BodyCollector",
    "Problem",
    "ProblemKind",
    "Take",
    "backoff_delay",
    "origin",
    "parse_content_range",
    "parse_retry_after",
    "redact_url",
]

# Exponential backoff is capped so a long outage is retried at a steady pace, not ever more
# slowly: with base 0.1 s, five retries wait at most 0.1+0.2+0.4+0.8+1.6 s before the cap matters.
BACKOFF_CAP = 10.0

# A server asking for a longer pause (Retry-After) is obeyed up to this; beyond it we would rather
# fail and let the caller decide than block a read (a FUSE request) for minutes.
RETRY_AFTER_CAP = 30.0


def redact_url(url: str | httpx.URL) -> str:
    """``url`` for messages: user info and query string replaced by ``…`` (they hold secrets)."""
    u = httpx.URL(url)
    netloc = u.netloc.decode("ascii", "replace")
    if u.userinfo:
        netloc = "…@" + netloc.rsplit("@", 1)[-1]
    text = f"{u.scheme}://{netloc}{u.path}"
    if u.query:
        text += "?…"
    return text


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    """Scheme, host and effective port: two URLs with the same origin may share credentials."""
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port if url.port is not None else default


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT; a zone-less date is taken as such
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def backoff_delay(failures: int, base: float, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(cap, base * 2**(failures-1))]``.

    Full jitter (rather than a fixed exponential step) spreads the retries of many concurrent
    reads that failed together, so they do not hit the recovering server in one burst.
    """
    ceiling = min(BACKOFF_CAP, base * (2 ** max(0, failures - 1)))
    return (rng or random).uniform(0.0, ceiling)


def parse_content_range(value: str | None) -> tuple[int | None, int | None, int | None] | None:
    """``bytes a-b/total`` -> ``(a, b, total)``; ``bytes */total`` -> ``(None, None, total)``.

    ``total`` is None for ``*`` (unknown). None when the header is missing or malformed.
    """
    if value is None:
        return None
    unit, _, rest = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, slash, total_text = rest.strip().partition("/")
    if not slash:
        return None
    total: int | None
    if total_text == "*":
        total = None
    elif total_text.isdigit():
        total = int(total_text)
    else:
        return None
    if span == "*":
        return None, None, total
    first, dash, last = span.partition("-")
    if not dash or not first.isdigit() or not last.isdigit():
        return None
    return int(first), int(last), total


@dataclass(frozen=True, slots=True)
class Take:
    """Read the body: discard ``skip`` bytes, keep ``take``; ``exact`` if it must end there."""

    skip: int
    take: int
    exact: bool


ProblemKind = Literal["retry", "malformed", "reresolve", "fatal"]


class Problem(Exception):
    """Why a request failed, raised inside the exchange and decided on by :meth:`failed`."""

    def __init__(
        self,
        kind: ProblemKind,
        reason: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class BodyCollector:
    """Keeps the wanted bytes of a streamed body, and stops the stream as soon as it can.

    ``feed`` returns True when no more body should be read: all wanted bytes are in (a 200 to a
    range request: the rest of the blob is not downloaded), or one byte beyond an exact body
    arrived (overlong: reading on would only waste bandwidth). So at most ``take + 1`` body bytes
    are kept, and at most ``skip + take + 1`` read.

    With ``into`` (a buffer of ``take`` bytes) the wanted bytes are copied there as they come,
    instead of being kept as pieces and joined: :meth:`result` then checks the length and
    returns ``b""``; :meth:`filled` records bytes a caller put there itself.
    """

    __slots__ = ("_chunks", "_got", "_into", "_limit", "_skip", "_streamed", "take")

    def __init__(self, take: Take, into: bytearray | memoryview | None = None) -> None:
        if into is not None and len(into) != take.take:
            raise ValueError("the buffer must hold exactly the bytes to take")
        self.take = take
        self._skip = take.skip
        self._limit = take.take + 1 if take.exact else take.take
        self._chunks: list[bytes] = []
        self._into = None if into is None else memoryview(into)
        self._got = 0
        self._streamed = 0

    @property
    def kept(self) -> int:
        return self._got

    @property
    def streamed(self) -> int:
        """Body bytes received from the stream, skipped ones included."""
        return self._streamed

    def feed(self, chunk: bytes) -> bool:
        self._streamed += len(chunk)
        if self._skip:
            if len(chunk) <= self._skip:
                self._skip -= len(chunk)
                return False
            chunk = chunk[self._skip :]
            self._skip = 0
        room = self._limit - self._got
        if len(chunk) > room:
            chunk = chunk[:room]
        if chunk:
            into = self._into
            if into is None:
                self._chunks.append(chunk)
            else:  # the byte past an exact body only counts (it makes the body overlong)
                n = min(len(chunk), len(into) - self._got)
                into[self._got : self._got + n] = chunk[:n]
            self._got += len(chunk)
        return self._got >= self._limit

    def filled(self, n: int) -> None:
        """``n`` more bytes were put into the buffer directly (no ``feed``)."""
        self._streamed += n
        self._got += n

    def result(self) -> bytes:
        """Exactly ``take`` bytes (``b""`` with a buffer: they are there), or :class:`Problem`
        (malformed) for a short/overlong body."""
        want = self.take.take
        if self._got < want:
            raise Problem(
                "malformed",
                f"body ended after {self._got} of {want} bytes"
                + (f" (after skipping {self.take.skip})" if self.take.skip else ""),
            )
        if self._got > want:
            raise Problem("malformed", f"body is longer than the {want} bytes asked for")
        if self._into is not None:
            return b""
        chunks = self._chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
