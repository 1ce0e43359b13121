"""Detach the mount daemon from the command that started it, reporting success or failure.

``mount -t fuse.blobfs`` runs ``/sbin/mount.fuse3``, which runs ``blobfs SOURCE MOUNTPOINT -o
...`` and waits for it to exit: the mount must exist and answer when it does, and a failure
must show as a non-zero exit status with the reason on stderr. :func:`detach` gives that::

    ready = detach()                # from here on we are the daemon (the grandchild)
    try:
        ... mount, serve until the mount answers ...
    except MountError as e:
        ready.fail(str(e))          # the original process prints it and exits 1
        sys.exit(1)
    ready.ready()                   # the original process exits 0; stdio -> /dev/null
    ... serve until unmounted ...

How: a pipe, then a double fork. The original process keeps the read end and blocks on it;
the intermediate child calls ``setsid()`` (a new session without a controlling terminal:
no SIGHUP when the terminal closes, no job-control signals) and forks the daemon, then exits
at once and is reaped by the original process (PID 1 on some machines does not reap orphans,
so nobody else would). The grandchild can never reacquire a terminal (it is not a session
leader) and is adopted by init or the nearest subreaper.

The original process exits with status 0 once the daemon calls :meth:`ReadyPipe.ready`; with
status 1 and ``blobfs: error: MESSAGE`` on stderr after :meth:`ReadyPipe.fail`; and with
status 1 and "daemon exited before the mount was ready" when the daemon dies without either
(its own stderr, still the caller's, carries any traceback).

Rules for the caller: call :func:`detach` before starting threads, trio, or opening
``/dev/fuse`` (``fork`` copies one thread only), and resolve relative paths first: the daemon
changes its working directory to ``/`` so it does not keep the caller's directory busy (it
could not be unmounted while the mount lives).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import NoReturn

__all__ = ["ReadyPipe", "detach"]

log = logging.getLogger(__name__)

_READY = b"ready\n"
_FAIL = b"fail "
#: The pipe carries one short line; a message longer than PIPE_BUF could interleave with
#: nothing (one writer) but is clipped anyway to keep the error one readable line.
_MAX_MESSAGE = 2000

#: Exit status of an interrupted (Ctrl-C) original process, as a shell reports SIGINT.
_INTERRUPTED = 130


class ReadyPipe:
    """The daemon's end of the pipe to the waiting original process.

    Exactly one of :meth:`ready` or :meth:`fail` reports; later calls do nothing. Not
    thread-safe: call it from the thread that runs the daemon's start-up.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def reported(self) -> bool:
        """True once :meth:`ready` or :meth:`fail` was called."""
        return self._fd is None

    def _send(self, line: bytes) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            log.debug("detach: already reported; ignoring %r", line)
            return
        try:
            os.write(fd, line)
        except OSError as e:
            # The original process is gone (killed while waiting): nobody to tell.
            log.debug("detach: cannot report to the starting process: %s", e)
        finally:
            os.close(fd)

    def ready(self, log_path: str | None = None) -> None:
        """Report success: the original process exits 0.

        Before that, stdout and stderr are pointed at ``/dev/null``, or appended to
        ``log_path`` when given (logging to stderr then lands in that file), so that a caller
        capturing the command's output sees it end when the command exits. Raises OSError when
        ``log_path`` cannot be opened; nothing is reported then, so the caller can still
        :meth:`fail`.
        """
        if self._fd is None:
            return
        _redirect_stdio(log_path)
        self._send(_READY)

    def fail(self, message: str) -> None:
        """Report failure: the original process prints ``blobfs: error: MESSAGE``, exits 1.

        Do not also log the message to stderr: the caller's terminal would show it twice.
        """
        line = " ".join(message.split()) or "the daemon failed to start"
        self._send(_FAIL + line[:_MAX_MESSAGE].encode("utf-8", "replace") + b"\n")


def _redirect_stdio(log_path: str | None) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    flags = os.O_WRONLY | os.O_CLOEXEC
    if log_path is None:
        target = os.open(os.devnull, flags)
    else:
        target = os.open(log_path, flags | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
    finally:
        os.close(target)


def _read_report(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _wait_and_exit(read_fd: int, child: int) -> NoReturn:
    """The original process: reap the intermediate child, wait for the report, exit."""
    status = 1
    try:
        try:
            os.waitpid(child, 0)
            report = _read_report(read_fd)
        except KeyboardInterrupt:
            sys.stderr.write(
                "blobfs: error: interrupted; the daemon may still be starting in the background\n"
            )
            status = _INTERRUPTED
        else:
            if report == _READY:
                status = 0
            elif report.startswith(_FAIL):
                message = report[len(_FAIL) :].decode("utf-8", "replace").strip()
                sys.stderr.write(f"blobfs: error: {message}\n")
            else:
                sys.stderr.write("blobfs: error: daemon exited before the mount was ready\n")
        sys.stderr.flush()
    finally:
        # Never return into the caller's code: that is the daemon's job, in the grandchild.
        os._exit(status)


def _become_daemon_session(read_fd: int, write_fd: int) -> None:
    """The intermediate child: new session, fork the daemon, exit. Returns in the daemon."""
    try:
        os.close(read_fd)
        os.setsid()
        pid = os.fork()
    except OSError as e:
        with contextlib.suppress(OSError):
            os.write(write_fd, _FAIL + f"cannot start the daemon: {e.strerror}\n".encode())
        os._exit(1)
    if pid > 0:
        os._exit(0)
    # The daemon.
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def detach() -> ReadyPipe:
    """Fork into the background; returns in the daemon process only (see the module docs).

    The calling process never returns from this call: it exits with the daemon's report.
    Raises OSError only when the first ``fork`` or the pipe fails (still in the caller).
    """
    with contextlib.suppress(Exception):
        # Buffered output would otherwise be written by both processes.
        sys.stdout.flush()
        sys.stderr.flush()
    read_fd, write_fd = os.pipe()  # not inherited by programs the daemon executes
    try:
        child = os.fork()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if child > 0:
        os.close(write_fd)
        _wait_and_exit(read_fd, child)
    _become_daemon_session(read_fd, write_fd)
    return ReadyPipe(write_fd)
