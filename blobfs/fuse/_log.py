"""Logging set-up of the mount daemon: stderr, journald priorities, or syslog once detached.

Three destinations, one handler at a time on the root logger:

- **journald** (run by systemd with stderr connected to the journal): systemd sets
  ``$JOURNAL_STREAM`` to ``DEVICE:INODE`` of that stream (systemd.exec(5)). When it matches
  stderr, each line is written as ``<N>logger: message`` with the syslog priority ``N``
  (sd-daemon(3)); the journal adds the time, and ``journalctl -p err`` filters on ``N``. Every
  line of a multi-line record (a traceback) carries the prefix, or the journal would file the
  continuation lines at the default priority.
- **stderr** otherwise: ``2024-05-01 12:00:00,123 blobfs[PID] LEVEL logger: message``.
- **syslog** (:func:`use_syslog`): for the detached daemon, whose stderr is ``/dev/null``
  after it reported ready; ``/dev/log`` with ident ``blobfs[PID]``, facility ``daemon``. Where
  there is no ``/dev/log``, logging is dropped (there is nobody to read it).
- **a file** (:func:`use_log_file`, ``-o log_file=PATH``): instead of stderr and syslog, in the
  foreground and once detached; the stderr format, appended, reopened when logrotate moves it.

The level applies to blobfs's own loggers; ``debug=True`` lowers everything, pyfuse3's and
httpx's loggers included, to DEBUG, which is what a user asking for ``-o debug`` wants.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

from ..errors import MountError

__all__ = [
    "LEVELS",
    "parse_level",
    "setup_daemon_logging",
    "syslog_priority",
    "use_log_file",
    "use_syslog",
]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Where syslog listens on Linux.
SYSLOG_SOCKET = "/dev/log"

#: Marks the handler this module installed, so a second set-up replaces it.
_MARK = "_blobfs_daemon_handler"

_STDERR_FORMAT = "%(asctime)s blobfs[%(process)d] %(levelname)s %(name)s: %(message)s"


def parse_level(level: str) -> int:
    """The ``logging`` level of a ``log_level`` option value; ValueError names the choices."""
    try:
        return LEVELS[level.strip().lower()]
    except KeyError:
        choices = ", ".join(LEVELS)
        raise ValueError(f"invalid log level {level!r}: choose one of {choices}") from None


def syslog_priority(levelno: int) -> int:
    """The syslog(3) priority of a ``logging`` level (DEBUG 7, INFO 6, WARNING 4, ERROR 3...)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``, the prefix repeated on every line of the record."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def stderr_is_journal() -> bool:
    """True when ``$JOURNAL_STREAM`` names the file stderr is connected to."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False  # stderr closed or replaced by an object without a descriptor
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def _install(handler: logging.Handler) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _MARK, False):
            root.removeHandler(old)
            old.close()
    setattr(handler, _MARK, True)
    root.addHandler(handler)


def setup_daemon_logging(level: str, *, debug: bool) -> None:
    """Log to stderr (journald-style when stderr is the journal) at ``level``.

    ``level`` is one of :data:`LEVELS` (case-insensitive), else ValueError. Calling again
    replaces the handler installed before.
    """
    blobfs_level = logging.DEBUG if debug else parse_level(level)
    handler = logging.StreamHandler(sys.stderr)
    if stderr_is_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    _install(handler)
    # Other libraries (httpx logs every request at INFO) speak at WARNING unless debugging.
    logging.getLogger().setLevel(logging.DEBUG if debug else max(blobfs_level, logging.WARNING))
    logging.getLogger("blobfs").setLevel(blobfs_level)


def _listening(address: str) -> bool:
    # SysLogHandler swallows a failed connect (Python 3.11+) and would then drop every record
    # through handleError: find out first. /dev/log is a datagram socket under journald and
    # rsyslog, a stream socket under some other syslogs.
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(address)
            except OSError:
                continue
            return True
    return False


def use_syslog(address: str = SYSLOG_SOCKET) -> bool:
    """Send the daemon's logs to syslog from now on (after detaching); False if unavailable.

    Levels set by :func:`setup_daemon_logging` stay. Without a syslog socket, logging goes
    nowhere: after detaching, stderr is ``/dev/null``.
    """
    if not _listening(address):
        _install(logging.NullHandler())
        return False
    try:
        syslog = logging.handlers.SysLogHandler(
            address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
    except OSError:
        _install(logging.NullHandler())
        return False
    # syslog(3) style "blobfs[PID]: ", taken now: after the fork, in the daemon.
    syslog.ident = f"blobfs[{os.getpid()}]: "
    syslog.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    _install(syslog)
    return True


def use_log_file(path: str) -> None:
    """Log to ``path`` from now on (appending; levels set by :func:`setup_daemon_logging` stay).

    The file is opened here, so a path that cannot be written is a one-line
    :class:`~blobfs.errors.MountError` before anything is mounted. It is reopened when it was
    moved or deleted (``logging.handlers.WatchedFileHandler``), as logrotate expects.
    """
    try:
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    except OSError as e:
        raise MountError(f"-o log_file={path}: cannot write it: {e.strerror or e}") from None
    handler.setFormatter(logging.Formatter(_STDERR_FORMAT))
    _install(handler)
