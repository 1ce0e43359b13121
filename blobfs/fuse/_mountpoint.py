"""Mount points: is something mounted here, is it alive, clean up a dead FUSE mount, unmount.

Everything reads ``/proc/self/mountinfo`` (proc(5)): it names the mounts of *our* mount
namespace, with the per-mount and the superblock options, and it escapes space, tab, newline
and backslash in paths as ``\\040`` ``\\011`` ``\\012`` ``\\134``, which :func:`parse_mountinfo`
decodes. Paths are compared after making them absolute and resolving symbolic links in their
parent only: resolving the last component would ``lstat`` the mount point itself, which hangs
on a wedged FUSE daemon.

A FUSE mount whose daemon died stays in the mount table, and accesses to it fail with
``ENOTCONN`` ("Transport endpoint is not connected") until someone unmounts it. Not every
access: ``stat`` of the mount point is answered from the kernel's attribute cache for as long
as the daemon's ``attr_timeout`` (pyfuse3: 300 s by default, longer for immutable blobfs
data), so liveness is probed with ``statfs`` as well, which always goes to the daemon
(:func:`stat_answers`). :func:`check_mountpoint` recognises a dead mount and unmounts it
lazily, with a WARNING; a live mount is never touched. The probe runs in a helper thread with
a deadline, so a daemon that does not answer is reported, not waited for.

Errors are :class:`blobfs.errors.MountError` with a one-line message naming the path, what is
mounted there, and the command that fixes it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from blobfs.errors import MountError

__all__ = [
    "MOUNTINFO",
    "MountInfo",
    "check_mountpoint",
    "enclosing_mount",
    "is_mounted",
    "lazy_unmount",
    "mount_info",
    "normalize_mountpoint",
    "parse_mountinfo",
    "read_mountinfo",
    "stat_answers",
    "unmount",
    "wait_until_mounted",
]

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"

#: How long a ``stat`` of a mount point may take before the mount counts as not answering.
#: A live blobfs mount answers the root ``getattr`` from memory in microseconds; the margin is
#: for a machine under heavy load.
STAT_TIMEOUT = 10.0

#: How long ``fusermount3`` / ``umount`` may run. They only issue umount2(2), which does not
#: wait for the file system; a longer run means something is badly wrong.
UNMOUNT_TIMEOUT = 30.0

#: Poll interval of :func:`wait_until_mounted`: short against the < 1 s mount-ready target.
POLL_INTERVAL = 0.01

# errno values by which the kernel says "this FUSE mount has no daemon any more".
_DEAD = frozenset({errno.ENOTCONN, errno.ECONNABORTED})

_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo``, with escapes decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    #: The path inside the file system that is mounted (``/`` unless a bind mount of a subtree).
    root: str
    mountpoint: str
    #: Per-mount options: ``ro``, ``nosuid``, ``nodev``, ``relatime``.
    options: tuple[str, ...]
    #: ``fuse.blobfs``, ``tmpfs``, ``ext4``...
    fstype: str
    #: What was mounted: for FUSE, the SOURCE argument (a reference, a path).
    source: str
    #: Superblock options: for FUSE, ``user_id=0,group_id=0,allow_other``...
    super_options: tuple[str, ...]

    @property
    def dev(self) -> str:
        """``major:minor``, as in ``/sys/class/bdi`` and ``os.stat().st_dev``."""
        return f"{self.major}:{self.minor}"

    @property
    def is_fuse(self) -> bool:
        """True for FUSE file systems (``fuse``, ``fuse.NAME``, ``fuseblk``)."""
        return self.fstype in ("fuse", "fuseblk") or self.fstype.startswith("fuse.")

    def describe(self) -> str:
        """``fuse.blobfs 'registry/repo:tag' (ro,nosuid,nodev)``: for messages."""
        return f"{self.fstype} {self.source!r} ({','.join(self.options)})"


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), field))


def _parse_line(line: bytes) -> MountInfo:
    fields = line.split(b" ")
    sep = fields.index(b"-", 6)  # optional fields (shared:N, master:N) end with "-"
    major, minor = fields[2].split(b":")
    fstype, source, super_options = fields[sep + 1 : sep + 4]
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major=int(major),
        minor=int(minor),
        root=_unescape(fields[3]),
        mountpoint=_unescape(fields[4]),
        options=tuple(_unescape(fields[5]).split(",")),
        fstype=_unescape(fstype),
        source=_unescape(source),
        super_options=tuple(_unescape(super_options).split(",")),
    )


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Parse the bytes of a mountinfo file; malformed lines are skipped (logged at DEBUG)."""
    mounts = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            mounts.append(_parse_line(line))
        except (ValueError, IndexError):
            log.debug("skipping a malformed mountinfo line: %r", line)
    return mounts


def read_mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """The mounts of this process's mount namespace, in mount order (stacked mounts last)."""
    try:
        with open(path, "rb") as f:
            return parse_mountinfo(f.read())
    except OSError as e:
        raise MountError(f"cannot read the mount table {path}: {e.strerror}") from e


def normalize_mountpoint(path: str) -> str:
    """``path`` made absolute, symbolic links resolved in its parent directories only."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    if not name:
        return absolute  # "/"
    return os.path.join(os.path.realpath(parent), name)


def _find(path: str, mounts: Iterable[MountInfo]) -> MountInfo | None:
    found = None
    for info in mounts:
        if info.mountpoint == path:
            found = info  # the last one is on top
    return found


def mount_info(path: str) -> MountInfo | None:
    """What is mounted at ``path`` (the top-most mount if several are stacked), or None."""
    return _find(normalize_mountpoint(path), read_mountinfo())


def is_mounted(path: str) -> bool:
    """True when something is mounted exactly at ``path`` (not merely inside a mount)."""
    return mount_info(path) is not None


def enclosing_mount(path: str) -> MountInfo | None:
    """The mount that holds ``path``: the one with the longest mount point prefix."""
    target = normalize_mountpoint(path)
    best: MountInfo | None = None
    for info in read_mountinfo():
        mp = info.mountpoint
        inside = target == mp or target.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = info
    return best


def _stat_and_statfs(path: str) -> os.stat_result:
    st = os.stat(path)
    try:
        os.statvfs(path)
    except OSError as e:
        # Any answer but "no daemon" proves the file system alive (a FUSE daemon without a
        # statfs handler answers ENOSYS).
        if e.errno in _DEAD:
            raise
    return st


def stat_answers(path: str, timeout: float = STAT_TIMEOUT) -> os.stat_result:
    """``os.stat(path)`` after checking that the file system answers; given up after ``timeout``.

    Also calls ``statfs``, which, unlike ``stat``, is never answered from a kernel cache: a dead
    FUSE mount raises ``OSError(ENOTCONN)`` here even while its attributes are cached. Raises
    what ``os.stat`` raises, or ``TimeoutError`` when the file system does not answer in time.
    The calls run in a daemon thread, which stays blocked in the kernel until the FUSE daemon
    answers or dies; it never keeps the process alive.
    """
    result: list[os.stat_result | OSError] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(_stat_and_statfs(path))
        except OSError as e:
            result.append(e)
        done.set()

    threading.Thread(target=run, name=f"stat {path}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(errno.ETIMEDOUT, f"no answer after {timeout:g} s", path)
    answer = result[0]
    if isinstance(answer, OSError):
        raise answer
    return answer


def _run(argv: list[str]) -> str | None:
    """Run an unmount command; None on success, else a one-line reason."""
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=UNMOUNT_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return f"{argv[0]} is not installed"
    except subprocess.TimeoutExpired:
        return f"{argv[0]} did not finish within {UNMOUNT_TIMEOUT:g} s"
    except OSError as e:
        return f"{argv[0]}: {e.strerror}"
    if done.returncode == 0:
        log.debug("%s: done", " ".join(argv))
        return None
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"{argv[0]} exited with status {done.returncode}"


def _unmount_with(path: str, commands: list[list[str]]) -> None:
    reasons = []
    for argv in commands:
        reason = _run([*argv, path])
        if reason is None:
            return
        reasons.append(reason)
        if "busy" in reason.lower():
            # The fallback would fail the same way; say what to do instead.
            raise MountError(
                f"cannot unmount {path}: {reason} (a program has a file or its working "
                "directory there: close it, or unmount lazily)"
            )
    raise MountError(f"cannot unmount {path}: {'; '.join(reasons)}")


def lazy_unmount(path: str) -> None:
    """Detach the mount at ``path`` now (``fusermount3 -u -z``, else ``umount -l``).

    The mount disappears from the name space at once; the file system is released once the
    last open file in it is closed. Raises MountError naming both commands' failures.
    """
    _unmount_with(normalize_mountpoint(path), [["fusermount3", "-u", "-z"], ["umount", "-l"]])


def unmount(path: str, lazy: bool = False) -> None:
    """Unmount the FUSE mount at ``path`` (``fusermount3 -u``, else ``umount``).

    Refuses, with MountError, when nothing is mounted there or the mount is not a FUSE file
    system (``blobfs umount /home`` must not unmount /home). Without ``lazy``, a busy mount
    (open files, a working directory inside) is a MountError that says so.
    """
    target = normalize_mountpoint(path)
    info = _find(target, read_mountinfo())
    if info is None:
        raise MountError(f"{target} is not mounted")
    if not info.is_fuse:
        raise MountError(f"{target} is not a FUSE mount: {info.describe()}")
    if lazy:
        lazy_unmount(target)
    else:
        _unmount_with(target, [["fusermount3", "-u"], ["umount"]])


def _clean_stale(path: str, info: MountInfo) -> None:
    log.warning(
        "%s: stale FUSE mount (%s): transport endpoint is not connected, its daemon is gone; "
        "unmounting it lazily",
        path,
        info.describe(),
    )
    try:
        lazy_unmount(path)
    except MountError as e:
        raise MountError(
            f"{path} holds a dead FUSE mount ({info.describe()}) that blobfs could not remove "
            f"({e}); run as root: fusermount3 -u -z {path} (or: umount -l {path})"
        ) from e


def _check_busy(path: str, info: MountInfo, timeout: float) -> bool:
    """Raise unless the mount at ``path`` is a dead FUSE mount; True after cleaning it up."""
    try:
        stat_answers(path, timeout)
    except TimeoutError as e:
        raise MountError(
            f"{path} is already mounted ({info.describe()}) and does not answer; "
            f"unmount it with: fusermount3 -u -z {path}"
        ) from e
    except OSError as e:
        if e.errno in _DEAD and info.is_fuse:
            _clean_stale(path, info)
            return True
        raise MountError(f"{path} is already mounted ({info.describe()}): {e.strerror}") from e
    raise MountError(
        f"{path} is already mounted: {info.describe()}; unmount it first (blobfs umount {path})"
    )


def check_mountpoint(path: str, *, stat_timeout: float = STAT_TIMEOUT) -> None:
    """Make sure blobfs can mount on ``path``, or raise MountError saying why not.

    Refused: a path that does not exist or is not a directory, and a path where something is
    mounted and answering (the message names it). A dead FUSE mount (``ENOTCONN``) at
    ``path`` is unmounted lazily with a WARNING, then ``path`` is checked again; if it cannot
    be unmounted, the message gives the command to run. A dead mount *above* ``path`` is only
    reported: it is not ours to remove.
    """
    target = normalize_mountpoint(path)
    # Several dead mounts may be stacked on one directory (crash, restart, crash): peel them.
    for _ in range(8):
        info = _find(target, read_mountinfo())
        if info is None or not _check_busy(target, info, stat_timeout):
            break
    try:
        st = stat_answers(target, stat_timeout)
    except FileNotFoundError as e:
        raise MountError(f"mountpoint {target} does not exist") from e
    except NotADirectoryError as e:
        raise MountError(f"mountpoint {target} does not exist (a parent is not a directory)") from e
    except TimeoutError as e:
        raise MountError(f"mountpoint {target} does not answer: {e.strerror}") from e
    except OSError as e:
        outer = enclosing_mount(target)
        if e.errno in _DEAD and outer is not None and outer.mountpoint != target:
            raise MountError(
                f"mountpoint {target} lies inside a dead FUSE mount at {outer.mountpoint} "
                f"({outer.describe()}); run: fusermount3 -u -z {outer.mountpoint}"
            ) from e
        raise MountError(f"mountpoint {target}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {target} is not a directory")


def wait_until_mounted(
    path: str,
    timeout: float,
    alive: Callable[[], bool],
    *,
    fstype: str | None = None,
) -> None:
    """Block until a mount at ``path`` answers ``stat``; MountError on timeout or death.

    ``alive()`` is polled between checks: once it returns False (the daemon process exited)
    this raises at once instead of waiting out ``timeout``. With ``fstype``
    (``"fuse.blobfs"``), only a mount of that type counts. Blocking: call it from a thread or
    process other than the one that serves the mount, or the ``stat`` waits for itself.
    """
    target = normalize_mountpoint(path)
    deadline = time.monotonic() + timeout
    while True:
        if not alive():
            raise MountError(f"the daemon exited before the mount at {target} was ready")
        info = _find(target, read_mountinfo())
        if info is not None and (fstype is None or info.fstype == fstype):
            try:
                stat_answers(target, max(deadline - time.monotonic(), POLL_INTERVAL))
            except TimeoutError:
                pass  # reported below, as any other timeout
            except OSError as e:
                if not alive():
                    raise MountError(
                        f"the daemon exited before the mount at {target} was ready"
                    ) from e
                raise MountError(f"the mount at {target} does not answer: {e.strerror}") from e
            else:
                return
        if time.monotonic() >= deadline:
            raise MountError(f"the mount at {target} was not ready after {timeout:g} s")
        time.sleep(POLL_INTERVAL)
