"""The mount's life: check the mountpoint, detach, open the archive, mount, serve, unmount.

:func:`mount` runs it all (the CLI's ``blobfs mount`` and the mount(8) helper form call it)::

    mountpoint checked (a stale "Transport endpoint is not connected" mount is cleaned)
    -> detach (unless foreground): the starting process waits for the daemon's report
    -> open_archive()        (after the fork: HTTP clients and thread pools are never forked)
    -> pyfuse3.init          (the kernel mount: ro,nodev,nosuid)
    -> serve; once a stat of the mountpoint is answered: readahead tuned through sysfs,
       on_ready(), sd_notify READY=1, the starting process told (it exits 0)
    -> SIGTERM/SIGINT: STOPPING=1, the FUSE loop ends, the mount is removed (lazily when busy)
       SIGHUP: reload() (credentials re-read), or a log line that there is nothing to reload
       an unmount from outside (blobfs umount, fusermount3 -u, umount) ends the loop too
    -> open files, the archive and its sources closed, what waits for the content cache
       written (a SIGTERM or SIGINT now is noted, not acted on: SIGKILL still works); exit 0

A failure before ready is reported to the starting process (one line, exit status 1) or, in
the foreground, raised as :class:`~blobfs.errors.MountError`. The resources live in one
``AsyncExitStack`` inside the trio run; each registers its own cleanup (STYLE.md rule 8).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import pyfuse3
import trio

from ..core import Archive
from ..core._decode import Buffer
from ..errors import BlobfsError, MountError
from ._detach import ReadyPipe, detach
from ._fs import ArchiveFS
from ._log import setup_daemon_logging, use_log_file, use_syslog
from ._mountpoint import check_mountpoint, is_mounted
from ._notify import notify_ready, notify_status, notify_stopping
from ._ops import Operations
from ._options import MountOptions, check_allow_other
from ._stats import SourceInfo
from ._sysfs import ensure_fusectl, tune_mount

__all__ = ["READY_TIMEOUT", "mount"]

logger = logging.getLogger("blobfs.fuse")

READY_TIMEOUT: Final = 30.0
"""Seconds for the new mount to answer its first stat; it takes milliseconds, so running out
means the kernel or the FUSE loop is stuck, and starting anyway would hand out a dead mount."""

MAX_TASKS: Final = 128
"""Concurrent requests pyfuse3 may hand us (one trio task each): more than the kernel's
``max_background`` (64, ``_options.py``) plus a few dozen synchronous readers, so a slow fetch
never stops other requests from being read off /dev/fuse."""

OnReady = Callable[[SourceInfo, str], None]
Reload = Callable[[], str]


def _pinned(archive: Archive, source: SourceInfo) -> SourceInfo:
    """``source`` with the manifest digest of a registry archive (the mount serves exactly the
    manifest it resolved, whatever its tag points to later)."""
    manifest = getattr(archive, "manifest", None)
    digest = getattr(manifest, "digest", None)
    if source.digest is None and isinstance(digest, str):
        return SourceInfo(source.reference, digest)
    return source


def mount(
    open_archive: Callable[[], Archive],
    mountpoint: str,
    *,
    source: SourceInfo,
    options: MountOptions,
    foreground: bool = False,
    on_ready: OnReady | None = None,
    reload: Reload | None = None,
) -> int:
    """Mount the archive ``open_archive()`` builds at ``mountpoint`` and serve it until
    unmounted or signalled; return the exit status (0 after a clean unmount).

    ``source`` names what is mounted (its digest is filled from a registry archive's manifest);
    ``on_ready(source, mountpoint)`` runs once the mount answers, before the starting process
    is released (stdout still reaches the user then); ``reload()`` runs on SIGHUP (in a worker
    thread) and returns what it did, for the log.

    Without ``foreground`` the calling process forks and waits: it exits 0 once the mount
    answers, or 1 with the error on stderr; only the daemon returns from this call. Raises
    :class:`~blobfs.errors.MountError` (before forking) for an unusable mountpoint or a
    refused ``allow_other``; in the foreground also for any failure before ready.
    """
    mountpoint = os.path.abspath(mountpoint)
    if options.allow_other:
        check_allow_other()
    # Logging first: check_mountpoint warns when it removes a dead mount left at the place.
    setup_daemon_logging(options.log_level, debug=options.debug)
    if options.log_file is not None:
        use_log_file(options.log_file)
    check_mountpoint(mountpoint)
    pipe = None if foreground else detach()
    try:
        archive = open_archive()
    except Exception as e:
        if pipe is None:
            raise  # in the foreground the caller reports it as it reports any error
        if not isinstance(e, BlobfsError | OSError | ValueError) and not _is_user_error(e):
            logger.exception("opening %s failed", source.reference)
        pipe.fail(_reason(e))
        return 1
    stops = _StopsNoted()
    try:
        # Reads answer before their content reached the cache on disk (a writer thread stores
        # it); the archive's close stores what is left.
        archive.write_cache_behind()
        source = _pinned(archive, source)
        fs = ArchiveFS(
            archive,
            source,
            uid=options.uid,
            gid=options.gid,
            umask=options.umask,
            mountpoint=mountpoint,
            push=_store_in_page_cache,
        )
        daemon = _Daemon(fs, mountpoint, options, pipe, on_ready, reload, stops)
        # What exists now (modules, the index) lives as long as the mount: out of the cyclic
        # GC's sight, whose full collections would otherwise walk it again and again while a
        # listing of 100,000 files makes their attributes (~60 ms of every such listing).
        gc.freeze()
        stops.install()
        try:
            return trio.run(daemon.run)
        finally:
            stops.install()
            gc.unfreeze()
    finally:
        try:
            archive.close()
        finally:
            stops.restore()


def _store_in_page_cache(ino: int, content: Buffer) -> None:
    """The whole verified content of file ``ino`` into the kernel's page cache (it is open, so
    the kernel knows the inode); the GIL is released while the kernel copies it."""
    # Any contiguous buffer (PyObject_GetBuffer), not only the bytes its stub says: a view of
    # verified content goes to the kernel without a copy (as read replies do, _ops.py).
    pyfuse3.notify_store(ino, 0, content)  # type: ignore[arg-type]


def _is_user_error(e: BaseException) -> bool:
    """An error the CLI raises for a user's mistake (it has an exit code): just its message."""
    return hasattr(e, "exit_code")


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return str(e) or type(e).__name__


def _failed(pipe: ReadyPipe | None, message: str) -> int:
    if pipe is None:
        raise MountError(message)
    pipe.fail(message)
    return 1


class _StopsNoted:
    """SIGTERM, SIGINT and SIGHUP outside the serving loop, noted instead of acted on.

    Installed just before ``trio.run`` (whose own receiver takes the signals while it runs and
    puts these handlers back after; they are ignored while trio tears down, :meth:`ignore`),
    and again after it, until the archive is closed: a stop arriving after the loop ended (a
    second ``systemctl stop``, ``umount`` followed by ``kill``) would otherwise kill the process
    while the content cache's writer stores what the reads left it, and that content would be
    fetched again by the next mount. SIGKILL still ends the process. A stop noted before the
    loop took over makes the daemon stop before it mounts.
    """

    SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: list[int] = []  # SIGTERM and SIGINT noted, in order
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            return  # nothing to reload outside the loop
        if not self.received:
            logger.info("%s: writing the content cache first", signal.Signals(signum).name)
        self.received.append(signum)

    def install(self) -> None:
        """Note the signals from now on (again after :meth:`ignore`); the handlers found the
        first time are the ones :meth:`restore` puts back."""
        for signum in self.SIGNALS:
            self._previous.setdefault(signum, signal.signal(signum, self._note))

    def ignore(self) -> None:
        """Drop the signals while trio tears its run down: its signal wakeup socket is closed
        before the wakeup fd is reset, and a handled signal in between writes to the closed
        socket (Python prints that error, with a traceback, to the log). The daemon is stopping
        then anyway; :meth:`install` notes them again once ``trio.run`` returned."""
        for signum in self.SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


class _Daemon:
    """One serving run (inside ``trio.run``)."""

    def __init__(
        self,
        fs: ArchiveFS,
        mountpoint: str,
        options: MountOptions,
        pipe: ReadyPipe | None,
        on_ready: OnReady | None,
        reload: Reload | None,
        stops: _StopsNoted | None = None,
    ) -> None:
        self.fs = fs
        self.stops = stops
        self.mountpoint = mountpoint
        self.options = options
        self.pipe = pipe
        self.on_ready = on_ready
        self.reload = reload
        self.ready = False
        self.stopping = False

    async def run(self) -> int:
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        async with contextlib.AsyncExitStack() as stack:
            # Signals are ours before the mount exists: a SIGTERM in between would otherwise
            # kill the process and leave a dead mount behind.
            if self.stops is not None:
                # Registered first, so run last: after the receiver put the handlers back.
                stack.callback(self.stops.ignore)
            receiver = stack.enter_context(trio.open_signal_receiver(*signals))
            if self.stops is not None and self.stops.received:
                self.stopping = True  # a stop came before the receiver: do not mount
                name = signal.Signals(self.stops.received[0]).name
                return _failed(self.pipe, f"{name} before {self.mountpoint} was mounted")
            stack.push_async_callback(_close_sources, self.fs.archive)
            stack.push_async_callback(self.fs.aclose)
            try:
                pyfuse3.init(
                    Operations(self.fs),
                    self.mountpoint,
                    self.options.kernel_options(self.fs.source.reference),
                )
            except RuntimeError as e:
                return _failed(self.pipe, f"cannot mount {self.mountpoint}: {e}")
            stack.callback(self._unmount)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._signals, receiver, nursery.cancel_scope)
                nursery.start_soon(self._announce, nursery.cancel_scope)
                try:
                    await pyfuse3.main(min_tasks=1, max_tasks=MAX_TASKS)
                except Exception:
                    logger.exception("%s: the FUSE loop failed", self.mountpoint)
                    if not self.ready:
                        nursery.cancel_scope.cancel()
                        return _failed(self.pipe, f"{self.mountpoint}: the FUSE loop failed")
                    return 1
                finally:
                    nursery.cancel_scope.cancel()
            if not self.ready and not self.stopping:
                return _failed(self.pipe, f"{self.mountpoint}: unmounted before it was ready")
            logger.info("%s: unmounted", self.mountpoint)
            return 0
        return 1  # not reached: AsyncExitStack does not swallow exceptions

    async def _announce(self, scope: trio.CancelScope) -> None:
        """Wait until the mount answers, then tune it and tell everyone it is ready."""
        source = self.fs.source
        with trio.move_on_after(READY_TIMEOUT) as timer:
            try:
                # From a worker thread: the stat is answered by this very event loop.
                await trio.to_thread.run_sync(os.stat, self.mountpoint, abandon_on_cancel=True)
            except OSError as e:
                _failed(self.pipe, f"the mount at {self.mountpoint} does not answer: {e}")
                self.stopping = True
                pyfuse3.terminate()
                return
        if timer.cancelled_caught:
            _failed(self.pipe, f"the mount at {self.mountpoint} did not answer in time")
            self.stopping = True
            pyfuse3.terminate()
            return
        opts = self.options
        if os.geteuid() == 0:
            # The per-connection limits live in fusectl, which systemd mounts at boot; where
            # nothing did (containers, this kind of test machine), mount it (a child process).
            await trio.to_thread.run_sync(ensure_fusectl)
        tune_mount(self.mountpoint, opts.read_ahead_kb, opts.max_background)
        if self.on_ready is not None:
            try:
                self.on_ready(source, self.mountpoint)
            except Exception as e:  # e.g. stdout closed: the mount itself is fine
                logger.warning("%s: could not announce the mount: %s", self.mountpoint, e)
        notify_ready(f"serving {source.pinned} at {self.mountpoint}")
        self.ready = True
        if self.pipe is not None:
            self.pipe.ready()  # the starting process exits 0; our stdio is /dev/null now
            if opts.log_file is None:
                use_syslog()
        logger.info("serving %s at %s", source.pinned, self.mountpoint)

    async def _signals(self, receiver: AsyncIterator[int], scope: trio.CancelScope) -> None:
        async for signum in receiver:
            if signum == signal.SIGHUP:
                await self._reload()
                continue
            logger.info("%s: %s, unmounting", self.mountpoint, signal.Signals(signum).name)
            notify_stopping()
            self.stopping = True
            pyfuse3.terminate()
            return

    async def _reload(self) -> None:
        if self.reload is None:
            logger.info(
                "SIGHUP: nothing to reload (%s has no credentials)", self.fs.source.reference
            )
            return
        try:
            what = await trio.to_thread.run_sync(self.reload)
        except Exception as e:
            logger.error("SIGHUP: reloading failed: %s", e)
            return
        logger.info("SIGHUP: %s", what)
        notify_status(f"serving {self.fs.source.pinned} at {self.mountpoint}; {what}")

    def _unmount(self) -> None:
        """End the FUSE session; remove the mount unless someone already did (``umount``).

        As root libfuse detaches lazily (``umount2(MNT_DETACH)``), otherwise it runs
        ``fusermount3 -u -z``: a busy mount (a shell inside it) disappears at once and is
        released when the last user leaves, so no dead mount is left behind.
        """
        try:
            pyfuse3.close(unmount=is_mounted(self.mountpoint))
        except Exception:
            logger.exception("%s: unmounting failed", self.mountpoint)


async def _close_sources(archive: Archive) -> None:
    """Close the async side of the archive's sources in the loop that used it (an async HTTP
    client cannot be closed from sync code); ``archive.close()`` does the rest later."""
    source: object = archive.source
    for _ in range(4):  # a block-cache wrapper around an HTTP source, at most a few layers
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception as e:
                logger.debug("closing %r: %s", source, e)
        source = getattr(source, "source", None)
        if source is None:
            break
