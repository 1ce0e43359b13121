"""``-o`` options of a mount: parsed into :class:`MountOptions`, checked, explained when wrong.

Options come from ``blobfs mount ... -o a,b=c`` (repeatable) and from mount(8): ``mount -t
fuse.blobfs SRC MNT -o opts`` runs ``/sbin/mount.fuse3``, which runs ``blobfs SRC MNT -o
rw,dev,suid,opts`` (as root). So the generic mount options mount(8) and mount.fuse3 add or pass
through are accepted and ignored (the mount is always ``ro,nodev,nosuid``), and ``rw`` is refused
only when a user asked for it on ``blobfs mount``: mount(8) adds it by default.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from ..errors import MountError

__all__ = [
    "DEFAULT_MAX_BACKGROUND",
    "DEFAULT_READ_AHEAD_KB",
    "LOG_LEVELS",
    "MountOptions",
    "check_allow_other",
    "parse_options",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")

DEFAULT_READ_AHEAD_KB: Final = 1024
"""Per-mount kernel readahead: FIELD-NOTES measured 2.3 GB/s with the default 128 KiB and
3.0 GB/s with 1 MiB for a trivial pyfuse3 file system; the archive's own readahead (32 MiB
windows) keeps the network side of a sequential reader busy."""

DEFAULT_MAX_BACKGROUND: Final = 64
"""Kernel requests in flight on the connection (the kernel's default is 12): readahead and
several readers issue asynchronous reads that the daemon answers concurrently."""

# Options mount(8), mount.fuse3 or fstab pass along that mean nothing to a read-only daemon, or
# that the daemon enforces anyway (nodev, nosuid, noexec is left to the caller: see below).
_IGNORED: Final = frozenset(
    {
        "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "defaults", "auto", "noauto",
        "user", "users", "nouser", "owner", "group", "_netdev", "nofail", "async", "sync",
        "atime", "noatime", "relatime", "norelatime", "strictatime", "nodiratime", "lazytime",
        "nolazytime", "silent", "loud", "default_permissions",
    }
)  # fmt: skip
_IGNORED_PREFIXES: Final = ("x-", "comment=", "fsname=", "subtype=")

_SIZE: Final = re.compile(r"(\d+)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True, slots=True)
class MountOptions:
    """Typed mount options (see docs/mount.md for each).

    ``uid``/``gid``/``umask`` present every file and directory as owned by that user/group,
    and clear those permission bits; None keeps the archived owners and modes. ``noexec``
    records whether mount(8) asked for it (passed on to the kernel).
    """

    cache_dir: str | None = None
    cache_size: int | None = None
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None
    allow_other: bool = False
    policy: str | None = None
    offline: bool = False
    log_level: str = "info"
    log_file: str | None = None
    debug: bool = False
    noexec: bool = False
    read_ahead_kb: int = DEFAULT_READ_AHEAD_KB
    max_background: int = DEFAULT_MAX_BACKGROUND

    def kernel_options(self, fsname: str) -> set[str]:
        """The option set for ``pyfuse3.init``: always read-only, no devices, no set-uid, the
        kernel checking permissions against the modes served (``default_permissions``)."""
        # libfuse splits options on "," (a "\\," escape is unreliable across versions).
        name = fsname.replace(",", "_").replace("\\", "_") or "blobfs"
        opts = {"ro", "nodev", "nosuid", "default_permissions", f"fsname={name}", "subtype=blobfs"}
        if self.allow_other:
            opts.add("allow_other")
        if self.noexec:
            opts.add("noexec")
        return opts


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _size(key: str, text: str) -> int:
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise MountError(f"-o {key}={text}: not a size (use bytes or K/M/G/T, e.g. 10G)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _count(key: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise MountError(f"-o {key}={text}: want a whole number from {low} to {high}")
    return int(text)


def _user(key: str, text: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if key == "uid" else grp.getgrnam(text).gr_gid
    except KeyError:
        what = "user" if key == "uid" else "group"
        raise MountError(f"-o {key}={text}: no such {what} (give a name or a number)") from None


def parse_options(values: Iterable[str], *, helper: bool = False) -> MountOptions:
    """Parse ``-o`` values (each a comma-separated list) into :class:`MountOptions`.

    ``helper`` is True when mount(8)/mount.fuse3 ran us (``blobfs SRC MNT -o ...``): then
    ``rw``, which mount(8) adds by default, is ignored. :class:`~blobfs.errors.MountError`
    names an unknown option, a bad value, or ``rw`` asked for explicitly.
    """
    fields: dict[str, object] = {}
    for opt in _split(values):
        key, eq, value = opt.partition("=")
        key = key.strip()
        if key == "rw" and not eq:
            if helper:
                continue
            raise MountError("-o rw: blobfs mounts are read-only (archives are immutable)")
        if key == "noexec" and not eq:
            fields["noexec"] = True
            continue
        if (opt in _IGNORED) or opt.startswith(_IGNORED_PREFIXES):
            continue
        flag = key in ("allow_other", "offline", "debug")
        if flag:
            if eq:
                raise MountError(f"-o {opt}: {key} takes no value")
            fields[key] = True
            continue
        if not eq or not value:
            if key in _VALUED:
                raise MountError(f"-o {key}: needs a value ({key}=...)")
            raise MountError(f"-o {opt}: unknown mount option (see blobfs mount --help)")
        if key == "cache_dir":
            fields[key] = os.path.abspath(os.path.expanduser(value))
        elif key == "cache_size":
            fields[key] = _size(key, value)
        elif key in ("uid", "gid"):
            fields[key] = _user(key, value)
        elif key == "umask":
            if not re.fullmatch(r"[0-7]{1,4}", value):
                raise MountError(f"-o umask={value}: want octal permission bits, e.g. 022")
            fields[key] = int(value, 8) & 0o7777
        elif key in ("policy", "log_file"):
            fields[key] = os.path.abspath(os.path.expanduser(value))
        elif key == "log_level":
            if value.lower() not in LOG_LEVELS:
                raise MountError(f"-o log_level={value}: want one of {', '.join(LOG_LEVELS)}")
            fields[key] = value.lower()
        elif key == "read_ahead_kb":
            fields[key] = _count(key, value, 0, 1 << 20)
        elif key == "max_background":
            fields[key] = _count(key, value, 1, 65535)
        else:
            raise MountError(f"-o {opt}: unknown mount option (see blobfs mount --help)")
    return MountOptions(**fields)  # type: ignore[arg-type]


_VALUED: Final = frozenset(
    {"cache_dir", "cache_size", "uid", "gid", "umask", "policy", "log_level", "log_file",
     "read_ahead_kb", "max_background"}
)  # fmt: skip


def check_allow_other(*, fuse_conf: str = "/etc/fuse.conf") -> None:
    """Raise :class:`~blobfs.errors.MountError` unless ``allow_other`` is permitted: always for
    root, for other users only with ``user_allow_other`` in ``fuse_conf`` (what fusermount3
    checks too, with a worse message)."""
    if os.geteuid() == 0:
        return
    try:
        with open(fuse_conf, encoding="utf-8", errors="replace") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except OSError:
        lines = []
    if "user_allow_other" not in lines:
        raise MountError(
            f"-o allow_other: only root may use it unless {fuse_conf} contains the line "
            "'user_allow_other'"
        )
