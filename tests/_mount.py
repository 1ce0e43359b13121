"""Real FUSE mounts for tests: the ``blobfs mount`` command in a subprocess, always cleaned up.

Usage::

    from tests._mount import mounted, require_fuse

    require_fuse()                                   # skip loudly (fail under CI) without FUSE
    with mounted([str(archive_dir)], tmp_path / "mnt", options=["uid=0"]) as m:
        (m.path / "a.txt").read_bytes()
        m.stats()                                    # the user.blobfs.stats document
    # here: unmounted lazily, the daemon reaped, its stderr checked for tracebacks

:func:`mounted` runs ``python -m blobfs.cli mount SOURCE... MNT --foreground -o ...`` with
stderr going to a file, waits for the ``mounted ...`` line the command prints once the mount
answers, and on the way out always: lazily unmounts (``fusermount3 -u -z``), stops the daemon
(SIGTERM, then SIGKILL), waits for it, and fails the test if the daemon's stderr holds a
Python traceback, the sign of a handler that let an exception escape.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "BLOBFS",
    "Mount",
    "daemon_exited",
    "is_mounted",
    "lazy_unmount",
    "mounted",
    "require_fuse",
    "wait_until",
]

BLOBFS = [sys.executable, "-m", "blobfs.cli"]
"""The command, run from this interpreter (the venv's)."""

READY_TIMEOUT = 60.0
"""Seconds for a mount to answer; generous for a loaded 2-core machine (it takes about 1 s)."""


def require_fuse() -> None:
    """Skip (with the reason) unless real mounts are possible; under CI, fail instead."""
    reason = None
    if not sys.platform.startswith("linux"):
        reason = "FUSE mounts need Linux"
    elif os.geteuid() != 0:
        reason = "real FUSE mounts need root in these tests"
    elif not os.path.exists("/dev/fuse"):
        reason = "/dev/fuse is missing"
    if reason is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"mount tests cannot run: {reason}")
    pytest.skip(f"MOUNT TESTS SKIPPED: {reason}")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            mp = fields[4].decode().replace("\\040", " ")
            if mp == target:
                return True
    return False


def lazy_unmount(path: Path) -> None:
    for _ in range(4):  # stacked mounts after a failed test
        if not is_mounted(path):
            return
        subprocess.run(
            ["fusermount3", "-u", "-z", os.fspath(path)], check=False, capture_output=True
        )


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def daemon_exited(pid: int) -> bool:
    """Whether ``pid`` is gone or a zombie (a detached daemon is nobody's child here: PID 1
    on these machines does not reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in (b"Z", b"X")


def check_log(text: str) -> None:
    if "Traceback (most recent call last)" in text:
        pytest.fail(f"the daemon logged a traceback:\n{text}")


class Mount:
    """A running mount: its path, the daemon process, its stderr so far."""

    def __init__(self, path: Path, proc: subprocess.Popen[bytes], log: Path, line: str) -> None:
        self.path = path
        self.proc = proc
        self.log_path = log
        self.ready_line = line

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        doc = json.loads(os.getxattr(self.path, "user.blobfs.stats"))
        assert isinstance(doc, dict)
        return doc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the daemon and wait for it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return buf.decode(errors="replace")
            buf += chunk
        elif proc.poll() is not None:
            return buf.decode(errors="replace")
    return buf.split(b"\n", 1)[0].decode(errors="replace")


@contextlib.contextmanager
def mounted(
    source: Sequence[str],
    mnt: Path,
    *,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
    check_traceback: bool = True,
) -> Iterator[Mount]:
    """Mount ``source`` (the arguments naming the archive) at ``mnt`` in a foreground daemon."""
    require_fuse()
    mnt.mkdir(parents=True, exist_ok=True)
    log = mnt.parent / f"{mnt.name}.daemon.log"
    argv = [*BLOBFS, "mount", *source, os.fspath(mnt), "--foreground"]
    for opt in options:
        argv += ["-o", opt]
    full_env = {**os.environ, "BLOBFS_CACHE_DIR": os.fspath(mnt.parent / "cache"), **(env or {})}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, env=full_env
        )
    try:
        line = _read_line(proc, READY_TIMEOUT)
        if not line.startswith("mounted "):
            proc.kill()
            proc.wait()
            pytest.fail(f"mount did not become ready ({line!r}):\n{log.read_text()}")
        m = Mount(mnt, proc, log, line)
        yield m
    finally:
        lazy_unmount(mnt)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if check_traceback:
            check_log(log.read_text(errors="replace"))
