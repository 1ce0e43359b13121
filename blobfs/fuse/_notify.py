"""sd_notify(3) for the mount daemon: tell systemd when the mount is ready, stopping, or busy.

The protocol is one datagram per call on the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``
(a path, or an abstract name written with a leading ``@``), holding newline-separated
``KEY=VALUE`` assignments: ``READY=1``, ``STOPPING=1``, ``STATUS=...``, ``MAINPID=...``.

Contract:

- Outside systemd (``$NOTIFY_SOCKET`` unset) every call is a no-op that returns ``False``.
- Notification is best effort: a missing, refusing or full socket is logged at DEBUG and
  answered ``False``; nothing here raises for it, and nothing blocks for longer than
  :data:`SEND_TIMEOUT`. Malformed states (no ``=``, a newline) are programming errors:
  ``ValueError``.
- **MAINPID.** systemd accepts notifications from the service's main process only
  (``NotifyAccess=main``). The ``blobfs@.service`` unit runs ``blobfs mount --foreground``, so
  the process systemd started is the one that notifies and nothing more is needed. When the
  daemon double-forks anyway (``mount`` without ``--foreground`` under ``Type=notify``, which
  needs ``NotifyAccess=all``), the notifying process is no longer the one systemd started
  (``$SYSTEMD_EXEC_PID``, set by systemd 248 and later): every message then carries
  ``MAINPID=<our pid>`` so systemd tracks and signals the daemon, not the exited parent.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = [
    "SEND_TIMEOUT",
    "notify",
    "notify_ready",
    "notify_reloading",
    "notify_status",
    "notify_stopping",
]

log = logging.getLogger(__name__)

#: Seconds one send may block. A datagram to systemd's socket returns at once; the bound only
#: matters when a wedged receiver lets its queue fill, and then a lost status line is better
#: than a stalled daemon.
SEND_TIMEOUT = 1.0

#: systemd reads at most PIPE_BUF (4096) bytes of one notification; longer STATUS texts are
#: clipped so the message still parses.
_MAX_STATUS = 1024


def _address(value: str) -> str | None:
    """The socket address for ``$NOTIFY_SOCKET``, or None for a kind we cannot use."""
    if value.startswith("@"):
        # Abstract namespace: Python spells the leading NUL as "\0".
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    # systemd 253+ also allows "vsock:CID:PORT"; a FUSE daemon never runs in such a VM guest.
    return None


def _with_main_pid(states: tuple[str, ...]) -> tuple[str, ...]:
    """Add ``MAINPID=`` when we are not the process systemd started (see the module docs)."""
    exec_pid = os.environ.get("SYSTEMD_EXEC_PID", "")
    pid = os.getpid()
    if not exec_pid.isdigit() or int(exec_pid) == pid:
        return states
    if any(s.startswith("MAINPID=") for s in states):
        return states
    return (f"MAINPID={pid}", *states)


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) to systemd in one datagram.

    Returns True when the datagram was sent, False when ``$NOTIFY_SOCKET`` is unset or the
    send failed (logged at DEBUG). Raises ``ValueError`` for a state without ``=`` or with a
    newline, and when no state is given.
    """
    if not states:
        raise ValueError("notify() needs at least one KEY=VALUE state")
    for state in states:
        if "=" not in state or "\n" in state:
            raise ValueError(f"not a KEY=VALUE notification without newlines: {state!r}")
    value = os.environ.get("NOTIFY_SOCKET")
    if not value:
        return False
    address = _address(value)
    if address is None:
        log.debug("NOTIFY_SOCKET=%r is not a socket path or @abstract name; not notifying", value)
        return False
    message = "\n".join(_with_main_pid(states)).encode("utf-8", "surrogateescape")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendto(message, address)
    except OSError as e:
        log.debug("sd_notify to %s failed: %s", value, e)
        return False
    log.debug("sd_notify: %s", message.decode("utf-8", "replace").replace("\n", " "))
    return True


def _status(text: str) -> str:
    # One line: systemd splits the datagram at newlines, so a newline would end STATUS= early
    # and turn the rest into bogus assignments.
    line = " ".join(text.split())
    if len(line) > _MAX_STATUS:
        line = line[: _MAX_STATUS - 3] + "..."
    return f"STATUS={line}"


def notify_ready(status: str | None = None) -> bool:
    """``READY=1`` (with ``STATUS=`` when given): send only once the mount answers."""
    if status is None:
        return notify("READY=1")
    return notify("READY=1", _status(status))


def notify_stopping() -> bool:
    """``STOPPING=1``: the daemon is unmounting and about to exit."""
    return notify("STOPPING=1")


def notify_status(text: str) -> bool:
    """``STATUS=text`` (newlines folded to spaces, clipped to 1,024 characters)."""
    return notify(_status(text))


def notify_reloading(status: str | None = None) -> bool:
    """``RELOADING=1`` with ``MONOTONIC_USEC=`` (what ``Type=notify-reload`` expects).

    Send it when re-reading credentials on SIGHUP, and :func:`notify_ready` when done.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    states = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
    if status is not None:
        states.append(_status(status))
    return notify(*states)
