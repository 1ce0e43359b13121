"""The one context-manager mixin of blobfs resources (sources, caches, archives)."""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, Self

__all__ = ["AsyncClosing", "Closing", "SupportsClose"]


class SupportsClose(Protocol):
    """Anything with ``close()``: sources, caches, HTTP clients, registry clients."""

    def close(self) -> None: ...


class Closing:
    """``with resource:`` calls ``resource.close()`` on the way out; subclasses define it."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClosing:
    """``async with resource:`` awaits ``resource.aclose()`` on the way out."""

    __slots__ = ()

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
