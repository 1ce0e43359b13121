"""Running blocking calls from async code, under trio or asyncio.

blobfs's async API works under both event loops: the running one is detected with ``sniffio``
and blocking work (file I/O, SHA-256, zstd) goes to a worker thread of that loop. This is the one
place that knows how; everything else calls :func:`run_sync_in_thread`.

asyncio is imported only where asyncio is the running loop (so it is loaded already): a trio
program (the mount) never pays the ~40 ms of importing it.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import sniffio

__all__ = ["checkpoint", "run_sync_in_thread"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


async def run_sync_in_thread(fn: Callable[[*Ts], T], *args: *Ts) -> T:
    """Run ``fn(*args)`` in a worker thread of the running event loop and return its result.

    Cancellation contract (the same under both loops): a started call is never abandoned. If the
    calling task is cancelled, the cancellation is raised only once ``fn`` has returned, so state
    that ``fn`` mutates (a decoder, a generator) is never used by two threads at once and may be
    cleaned up right after. This is trio's ``to_thread.run_sync`` default; asyncio's
    ``to_thread`` would return at once and leave the thread running, so it is shielded here.
    """
    library = sniffio.current_async_library()
    if library == "trio":
        import trio  # imported lazily: asyncio users need not pay for it

        return await trio.to_thread.run_sync(fn, *args)
    if library == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        fut = loop.run_in_executor(None, functools.partial(ctx.run, fn, *args))
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            # Wait for the thread before letting the cancellation through (see docstring).
            while not fut.done():
                try:
                    await asyncio.wait([fut])
                except asyncio.CancelledError:
                    continue
            if not fut.cancelled():
                fut.exception()  # mark it retrieved: the cancellation is what the caller sees
            raise
    raise RuntimeError(f"blobfs does not support the async library {library!r}")


async def checkpoint() -> None:
    """Yield to the event loop once (a cancellation point), under trio or asyncio.

    For async functions that finish without awaiting anything else: callers may rely on every
    blobfs async call being a checkpoint, as trio's own functions are.
    """
    if sniffio.current_async_library() == "trio":
        import trio

        await trio.lowlevel.checkpoint()
    else:
        import asyncio

        await asyncio.sleep(0)
