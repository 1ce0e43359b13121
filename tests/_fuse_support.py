"""Helpers of tests/test_fuse_support.py and tests/test_systemd.py: a stand-in for systemd's
notification socket, mount clean-up, and reaping the orphans a detached daemon leaves.

Usage::

    from tests._fuse_support import NotifyListener, needs_fuse, reap, subreaper, umount_all

    listener = NotifyListener()                    # $NOTIFY_SOCKET = listener.address
    states, pid = listener.receive()               # (["READY=1", "STATUS=..."], sender PID)
    with subreaper():                              # orphans of our children become ours
        ...; assert reap(daemon_pid) == 0
    umount_all(path)                               # lazily unmount whatever is left there
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobfs.fuse._mountpoint import is_mounted

__all__ = ["NotifyListener", "needs_fuse", "needs_root", "reap", "subreaper", "umount_all"]


def _cannot(what: str, needs_fuse: bool) -> str | None:
    if os.geteuid() != 0:
        return f"{what} need root"
    if needs_fuse and not os.path.exists("/dev/fuse"):
        return f"{what} need /dev/fuse"
    return None


def _mark(what: str, needs_fuse: bool) -> pytest.MarkDecorator:
    """Skip loudly without root (and /dev/fuse); under CI (``$CI`` set) run, and so fail."""
    reason = _cannot(what, needs_fuse)
    return pytest.mark.skipif(
        reason is not None and not os.environ.get("CI"), reason=f"LOUD SKIP: {reason}"
    )


needs_root = _mark("tmpfs mounts for the mount-table tests", needs_fuse=False)
needs_fuse = _mark("real FUSE mounts", needs_fuse=True)


class NotifyListener:
    """A stand-in for systemd's notification socket: a real AF_UNIX datagram socket.

    ``address`` is what goes into ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
    namespace). Credentials are on (``SO_PASSCRED``) as systemd has them, so each message
    comes with the sender's PID, which is how systemd applies ``NotifyAccess=main``.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if path is None:
            name = f"blobfs-test-notify-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(10)

    def receive(self) -> tuple[list[str], int]:
        """The next message's assignments and the sender's PID (from SCM_CREDENTIALS)."""
        data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(3 * 4))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = int.from_bytes(payload[:4], sys.byteorder)
        return data.decode().split("\n"), pid

    def pending(self, timeout: float = 0) -> bool:
        """True when a message is waiting (or arrives within ``timeout`` seconds)."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def close(self) -> None:
        self.sock.close()


def umount_all(path: Path) -> None:
    """Test clean-up: lazily unmount whatever is still mounted at ``path`` (stacked too)."""
    for _ in range(8):
        if not is_mounted(str(path)):
            return
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


_PR_SET_CHILD_SUBREAPER = 36


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """Orphans of our descendants (a detached daemon) become our children, for :func:`reap`:
    PID 1 on these machines does not reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def reap(pid: int, timeout: float = 60) -> int:
    """Wait for our child ``pid`` and return its exit code; SIGKILL it and fail on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"process {pid} did not exit within {timeout} s")
