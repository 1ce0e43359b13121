"""``blobfs mount``, ``blobfs umount``, ``blobfs status``, and the mount(8) helper form.

``mount -t fuse.blobfs SOURCE MOUNTPOINT -o opts`` runs ``/sbin/mount.fuse3``, which runs
``blobfs SOURCE MOUNTPOINT -o rw,dev,suid,opts`` (no subcommand) and waits for it to exit:
:func:`helper_argv` turns that form into ``blobfs mount --helper ...``. The daemon itself lives
in :mod:`blobfs.fuse`; this module builds what it mounts (the CLI is the only layer that reads
configuration and credentials): a factory that opens the archive after the daemon detached,
the source's name, the credential reload for SIGHUP, and the policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import gc
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import MountError
from ..fuse import MountOptions, SourceInfo, parse_options, unmount
from ..registry import CredentialStore, Reference
from ._common import (
    CONTENT_CACHE_BYTES,
    ArchiveSpec,
    Ctx,
    archive_and_rest,
    cache_root,
    check_archive_files,
    is_url,
    make_client,
    open_archive,
)
from ._output import CliError, human_size

if TYPE_CHECKING:
    from ..core import Archive
    from ..core.cache import Cache
    from ..fuse._counting import CountingCache, FetchCounter
    from ..registry import ManifestPolicy

__all__ = ["add_mount_commands", "cmd_mount", "cmd_status", "cmd_umount", "helper_argv"]

STATS_XATTR = "user.blobfs.stats"

MOUNT_HELP = """\
mount options (-o, comma-separated, repeatable):
  cache_dir=DIR     cache root for remote archives (default: as --cache-dir)
  cache_size=SIZE   bound of the content cache (default 4G), e.g. 10G
  uid=N|USER        show every file as owned by this user (default: as archived)
  gid=N|GROUP       ... and this group
  umask=OCTAL       clear these permission bits, e.g. 022 or 077
  allow_other       let other users in (root, or user_allow_other in /etc/fuse.conf)
  policy=FILE       trust policy the manifest must satisfy before anything is served
  offline           registry metadata only from the caches
  log_level=LEVEL   debug, info (default), warning, error
  log_file=PATH     log to PATH (appended) instead of stderr, or syslog once detached
  debug             log everything, pyfuse3 and httpx included
  read_ahead_kb=N   kernel readahead of the mount (default 1024)
  max_background=N  kernel requests in flight to the daemon (default 64)
  noexec            no program may be executed from the mount
  ro,nodev,nosuid are always in force; rw is refused. mount(8) options (_netdev, nofail,
  noauto, x-systemd.*, defaults, dev, suid, exec, user, ...) are accepted and ignored.

The command returns once the mount answers (or fails with the reason); the daemon keeps
serving until `blobfs umount MOUNTPOINT`, SIGTERM or SIGINT. SIGHUP re-reads credentials."""

Add = Callable[..., argparse.ArgumentParser]


def add_mount_commands(add: Add) -> None:
    """Register ``mount``, ``umount`` and ``status`` with ``build_parser``'s ``add``."""
    p = add(
        "mount",
        cmd_mount,
        "mount an archive (REF, ARCHIVE directory, or --index/--data) read-only at MOUNTPOINT",
        "[-o OPTIONS] [--foreground] (REF | ARCHIVE | --index F|URL --data F|URL) MOUNTPOINT",
    )
    p.epilog = f"{MOUNT_HELP}\n\n{p.epilog or ''}".rstrip()
    p.add_argument(
        "positionals", nargs="*", metavar="[SOURCE] MOUNTPOINT", help="what to mount, and where"
    )
    p.add_argument(
        "-o",
        dest="mount_options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="mount options, comma-separated (see below)",
    )
    p.add_argument(
        "-f",
        "--foreground",
        action="store_true",
        help="serve in this process (for systemd Type=notify and debugging)",
    )
    p.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)

    p = add(
        "umount",
        cmd_umount,
        "unmount a blobfs (or any FUSE) mount",
        "[--lazy] MOUNTPOINT",
        archive=False,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument(
        "-z",
        "--lazy",
        action="store_true",
        help="detach now even if busy; released when the last user leaves",
    )

    p = add(
        "status",
        cmd_status,
        "what a mount serves and its counters (fetched bytes, cache hit rate, errors)",
        "[--output json] MOUNTPOINT",
        archive=False,
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")


def helper_argv(argv: Sequence[str], commands: Sequence[str]) -> list[str]:
    """``argv`` with the mount(8) helper form ``SOURCE MOUNTPOINT [-o OPTS]...`` rewritten to
    ``mount --helper SOURCE MOUNTPOINT [-o OPTS]...``; any other ``argv`` unchanged.

    The form is recognised strictly, so a mistyped subcommand still gets argparse's message:
    the first argument is no subcommand or option, the second an existing directory, and the
    rest only ``-o`` options.
    """
    args = list(argv)
    if len(args) < 2 or args[0].startswith("-") or args[0] in commands:
        return args
    if not os.path.isdir(args[1]):
        return args
    rest = args[2:]
    i = 0
    while i < len(rest):
        if rest[i] == "-o" and i + 1 < len(rest):
            i += 2
        elif rest[i].startswith("-o") and len(rest[i]) > 2:
            i += 1
        else:
            return args
    return ["mount", "--helper", *args]


# ------------------------------------------------------------------------------------- mount


def _load_policy(path: str) -> ManifestPolicy:
    try:
        from ..policy import load_policy
    except ImportError:
        raise CliError(f"-o policy={path}: trust policies are not supported yet") from None
    policy: ManifestPolicy = load_policy(path)
    return policy


class _OpeningCache:
    """A content cache opened in a thread of its own: creating a new cache directory's SQLite
    ledger takes 15-50 ms, which then overlaps the manifest and index fetch of a first mount.
    Every use waits for the opening; :meth:`opened` raises what the opening raised."""

    def __init__(self, open_cache: Callable[[], Cache]) -> None:
        self._done = threading.Event()
        self._cache: Cache | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._cache = open_cache()
            except BaseException as e:  # handed to the thread that uses the cache
                self._error = e
            finally:
                self._done.set()

        threading.Thread(target=run, name="blobfs-cache-open", daemon=True).start()

    def opened(self) -> Cache:
        """The cache, once open (waits for it)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._cache is not None
        return self._cache

    def get(self, digest: bytes) -> BinaryIO | None:
        return self.opened().get(digest)

    def put(self, digest: bytes, f: BinaryIO) -> None:
        self.opened().put(digest, f)

    def delete(self, digest: bytes) -> None:
        self.opened().delete(digest)

    def max_bytes(self) -> int:
        return self.opened().max_bytes()

    def size_bytes(self) -> int:
        return self.opened().size_bytes()

    def prune(self, target_bytes: int) -> int:
        return self.opened().prune(target_bytes)

    def __getattr__(self, name: str) -> Any:
        # The cache's optional methods (put_bytes, open_writer, ...), as it has them.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.opened(), name)

    def close(self) -> None:
        """Close the cache once open; nothing to close when opening failed."""
        self._done.wait()
        close = getattr(self._cache, "close", None)
        if close is not None:
            close()


def _mount_caches(ctx: Ctx) -> tuple[CountingCache, FetchCounter]:
    """The caches of a mounted remote archive (registry or URL): a counting content cache,
    opened in a thread meanwhile, and no block cache. The mount keeps verified files and
    chunks, which is all it ever reads (see blobfs.fuse._counting): blocks would write every
    byte to disk a second time. ``-o cache_size`` bounds the content cache."""
    from ..core.cache.disk import DiskCache
    from ..fuse._counting import CountingCache, FetchCounter

    root, limit = cache_root(ctx), ctx.cache_bytes or CONTENT_CACHE_BYTES
    return CountingCache(
        _OpeningCache(lambda: DiskCache(root / "content", max_bytes=limit))
    ), FetchCounter()


def _registry_archive(
    ref: str, ctx: Ctx, store: CredentialStore, policy: ManifestPolicy | None
) -> Archive:
    """A registry archive owning its client and content cache (:func:`_mount_caches`)."""
    from ..fuse._counting import FetchCounter

    client = make_client(ctx, credentials=store, policy=policy)
    cache: CountingCache | None = None
    try:
        cache, counter = _mount_caches(ctx) if ctx.use_cache else (None, FetchCounter())
        archive = client.registry.pull(
            Reference.parse(ref, default_tag="latest"),
            max_file_size=ctx.max_file_size,
            cache=cache,
            block_cache=counter,
        )
        if cache is not None:
            cache.max_bytes()  # waits for the opening: a cache that cannot open fails the mount
    except BaseException:
        if cache is not None:
            cache.close()
        client.close()
        raise
    archive.own(client)
    if cache is not None:
        archive.own(cache)
    return archive


def _opener(
    spec: ArchiveSpec,
    ctx: Ctx,
    store: CredentialStore | None,
    policy: ManifestPolicy | None,
    *,
    resume_gc: bool,
) -> Callable[[], Archive]:
    """The daemon's archive factory; it turns the cyclic GC back on (``resume_gc``) once the
    archive is open, opened or not (see :func:`cmd_mount`)."""

    def open_it() -> Archive:
        try:
            if spec.reference is not None and store is not None:
                return _registry_archive(spec.reference, ctx, store, policy)
            return open_archive(spec, ctx, caches=_mount_caches)
        finally:
            if resume_gc:
                gc.enable()

    return open_it


def _reloader(store: CredentialStore, ref: str) -> Callable[[], str]:
    host = Reference.parse(ref, default_tag="latest").registry

    def reload() -> str:
        store.forget(host)
        found = store.get(host)  # read now: a broken config is reported at once, not later
        return f"credentials for {host} re-read ({'found' if found else 'anonymous'})"

    return reload


def cmd_mount(args: argparse.Namespace, ctx: Ctx) -> int:
    # Start-up allocates a few hundred thousand objects (the modules of trio, pyfuse3, numpy,
    # httpx; the index) and no garbage worth collecting: without the cyclic GC's passes over
    # them (~100 of them, ~25 ms) until the archive is open. The daemon then freezes what
    # exists (blobfs.fuse._daemon) and collects as usual.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _mount(args, ctx, resume_gc=collecting)
    finally:
        if collecting:
            gc.enable()


def _mount(args: argparse.Namespace, ctx: Ctx, *, resume_gc: bool) -> int:
    from ..fuse import mount  # pyfuse3 and trio: only for this command

    helper = bool(args.helper)
    options: MountOptions = parse_options(args.mount_options, helper=helper)
    spec, rest = archive_and_rest(args, args.positionals, min_rest=1, max_rest=1)
    mountpoint = os.path.abspath(rest[0])
    if options.cache_dir is not None:
        ctx.cache_dir = Path(options.cache_dir)
    ctx.cache_bytes = options.cache_size
    ctx.offline = ctx.offline or options.offline
    check_archive_files(spec)
    spec = _absolute(spec)  # the daemon works from "/"
    if spec.reference is None and options.policy is not None:
        raise CliError(f"-o policy={options.policy}: policies apply to registry references only")
    policy = _load_policy(options.policy) if options.policy is not None else None
    store = CredentialStore() if spec.reference is not None else None
    source = SourceInfo(spec.reference or spec.label)
    quiet = helper or ctx.out.quiet or ctx.out.json

    def on_ready(src: SourceInfo, where: str) -> None:
        if not quiet:
            sys.stdout.write(f"mounted {src.pinned} at {where}\n")
            sys.stdout.flush()

    _hand_logging_to_daemon()
    return mount(
        _opener(spec, ctx, store, policy, resume_gc=resume_gc),
        mountpoint,
        source=source,
        options=options,
        foreground=bool(args.foreground),
        on_ready=on_ready,
        reload=_reloader(store, spec.reference) if store and spec.reference else None,
    )


def _absolute(spec: ArchiveSpec) -> ArchiveSpec:
    """``spec`` with local paths made absolute, so they still mean the same from the daemon's
    working directory (``/``)."""
    if spec.reference is not None:
        return spec
    directory = spec.directory.absolute() if spec.directory is not None else None
    return dataclasses.replace(
        spec,
        index=spec.index if is_url(spec.index) else os.path.abspath(spec.index),
        data=spec.data if is_url(spec.data) else os.path.abspath(spec.data),
        directory=directory,
        label=str(directory) if directory is not None else spec.label,
    )


def _hand_logging_to_daemon() -> None:
    """The daemon logs through its own handler (``blobfs.fuse._log``); drop the command's, or
    every line would show twice."""
    import logging

    logger = logging.getLogger("blobfs")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)


# ------------------------------------------------------------------------------- umount, status


def cmd_umount(args: argparse.Namespace, ctx: Ctx) -> int:
    unmount(args.mountpoint, lazy=bool(args.lazy))
    return 0


def read_stats(mountpoint: str) -> dict[str, Any]:
    """The ``user.blobfs.stats`` document of the mount at ``mountpoint``."""
    try:
        raw = os.getxattr(mountpoint, STATS_XATTR)
    except OSError as e:
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            raise MountError(f"{mountpoint}: not the root of a blobfs mount") from None
        raise MountError(f"{mountpoint}: {e.strerror}") from None
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise MountError(f"{mountpoint}: unreadable {STATS_XATTR}")
    return doc


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if d or h:
        parts.append(f"{h}h")
    if d or h or m:
        parts.append(f"{m}m")
    return " ".join([*parts, f"{s}s"])


def _not_cached(dropped: object) -> str:
    if not isinstance(dropped, int):
        return "-"
    if not dropped:
        return "0"
    return f"{dropped} files or chunks (the cache's disk was slower than the reads)"


def cmd_status(args: argparse.Namespace, ctx: Ctx) -> int:
    doc = read_stats(args.mountpoint)
    out = ctx.out
    if out.json:
        out.emit_json(doc)
        return 0
    fetched = doc.get("bytes_fetched")
    rate = doc.get("cache_hit_rate")
    lines = [
        ("reference", doc.get("reference")),
        ("digest", doc.get("digest") or "-"),
        ("mountpoint", doc.get("mountpoint")),
        ("pid", doc.get("pid")),
        ("uptime", _duration(float(doc.get("uptime_s") or 0))),
        ("files", f"{doc.get('files')} in {doc.get('directories')} directories"),
        ("read", f"{human_size(int(doc.get('bytes_read') or 0))} in {doc.get('reads')} reads"),
        (
            "stored ahead",
            f"{human_size(int(doc.get('bytes_pushed') or 0))} in {doc.get('pushes') or 0} files",
        ),
        (
            "fetched",
            "-"
            if fetched is None
            else f"{human_size(int(fetched))} in {doc.get('fetch_requests')} requests",
        ),
        ("cache hit rate", "-" if rate is None else f"{float(rate) * 100:.1f}%"),
        ("not cached", _not_cached(doc.get("cache_dropped"))),
        ("errors", doc.get("errors")),
    ]
    out.lines(f"{k + ':':<16}{v}" for k, v in lines)
    return 0
