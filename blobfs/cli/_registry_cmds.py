"""Registry commands: ``push``, ``pull``, ``tag``, and ``inspect`` of a reference.

* ``push REF DIR``: archive DIR (``-c zstd|none``) into a temporary directory and push it as REF,
  then under each ``--tag``; ``--annotation k=v`` adds manifest annotations. A DIR that is an
  archive already (``index.blob`` + ``data.blob``) is pushed as it is. On a terminal a progress
  bar follows the archiving, then each blob's upload.
* ``pull REF [DEST]``: extract every file into DEST (default ``.``, created ``0750``) with the
  ``cp`` machinery: verified, confined to DEST (no symlink followed), atomic per file, archived
  mode bits and mtimes applied, existing files skipped unless ``-f``. Files are written by
  :data:`PULL_WORKERS` threads; with a content cache the small files are prefetched first (few
  range requests). The first failing file stops the pull (exit 1, one line) once the files
  already running finish; no temporary file is left.
* ``tag SRC DST``: give SRC's manifest (same bytes, same digest) the tag of DST; both in one
  repository.
* ``inspect REF``: manifest digest, sizes, files, compression, created, annotations (index and
  manifest only, no data-blob traffic; through the registry caches unless ``--no-cache``). A
  local ARCHIVE goes to the local ``inspect``.

``pull`` and ``inspect`` (and ``ls``/``cat``/... of a REF) use the registry caches under the
cache root (tags within the configured TTL, manifests and indexes by digest), so ``--offline``
works for them; ``push`` and ``tag`` always ask the registry (``tag`` must not tag a digest
remembered from an older answer).
"""

from __future__ import annotations

import argparse
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Final

from ..core import Archive, Compression, CreateProgress, Entry
from ._archive_cmds import cmd_inspect
from ._common import Ctx, make_client, parse_reference, reference_arg, usage_error
from ._cp import _Jail, _write_one
from ._output import CliError, human_size
from ._progress import ProgressBar
from ._trust_cmds import referrer_lines, referrer_listing

__all__ = ["cmd_inspect_any", "cmd_pull", "cmd_push", "cmd_tag"]


def _annotations(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in args.annotation:
        key, sep, value = text.partition("=")
        if not sep or not key:
            usage_error(args, f"--annotation wants KEY=VALUE, got {text!r}")
        out[key] = value
    return out


PULL_WORKERS: Final = 4
"""Files extracted at once by ``pull``: enough to overlap the registry's round trips (range
requests of files not prefetched, big files' readahead) and local writes, few enough not to
flood the registry or the disk; each worker holds one file open and its directory chain."""

PREFETCH_SMALL_FILE: Final = 1 << 20
"""``pull`` prefetches the files under 1 MiB: those are the ones a request each would cost most."""

PREFETCH_MAX_BYTES: Final = 256 << 20
"""Prefetch only when the small files total at most 256 MiB: the content cache holds them until
they are written, and a cache that size is what a user may reasonably expect to be filled."""


class _LockedBar(ProgressBar):
    """A :class:`ProgressBar` whose ``advance`` may be called from the extraction threads."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            super().advance(n)


def _prefetch_small_files(ar: Archive, entries: list[Entry]) -> None:
    """Load the small files into the content cache with few range requests, when there is a
    content cache and the small files total at most :data:`PREFETCH_MAX_BYTES`.

    A hint: a file that fails to prefetch is fetched (and its failure reported) when written.
    """
    if ar.cache is None:
        return
    small = sum(e.size for e in entries if e.size < PREFETCH_SMALL_FILE)
    if 0 < small <= PREFETCH_MAX_BYTES:
        ar.prefetch("")


def _extract_parallel(
    ar: Archive,
    dest: Path,
    entries: list[Entry],
    *,
    force: bool,
    bar: ProgressBar,
) -> Iterator[tuple[Entry, bool]]:
    """Write ``entries`` below ``dest`` in :data:`PULL_WORKERS` threads, each file through the
    ``cp`` machinery (jailed, atomic, verified; archived modes and mtimes applied).

    Yields ``(entry, written)`` as files finish (``written`` False: it existed and ``force`` is
    off), in completion order. At most twice :data:`PULL_WORKERS` files are in flight. The
    first failure stops submitting files, waits for the ones running, and is raised; a failed
    file leaves no temporary file behind (``_write_one`` removes it). Each thread has its own
    :class:`_Jail` (a jail is single-threaded); all are closed before returning.
    """
    local = threading.local()
    jails: list[_Jail] = []
    jails_lock = threading.Lock()

    def write(e: Entry) -> bool:
        jail: _Jail | None = getattr(local, "jail", None)
        if jail is None:
            jail = _Jail(dest)
            local.jail = jail
            with jails_lock:
                jails.append(jail)
        parts = tuple(e.path.split("/"))
        return _write_one(ar, jail, parts, e, force=force, preserve=True, bar=bar)

    pending: dict[Future[bool], Entry] = {}
    failure: BaseException | None = None
    try:
        with ThreadPoolExecutor(PULL_WORKERS, thread_name_prefix="blobfs-pull") as pool:
            todo = iter(entries)
            try:
                while True:
                    while failure is None and len(pending) < 2 * PULL_WORKERS:
                        e = next(todo, None)
                        if e is None:
                            break
                        pending[pool.submit(write, e)] = e
                    if not pending:
                        break
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        e = pending.pop(fut)
                        exc = fut.exception()
                        if exc is not None:
                            if failure is None:
                                failure = exc
                        elif failure is None:
                            yield e, fut.result()
            finally:  # interrupted (^C, a consumer's error): drop what has not started
                for fut in pending:
                    fut.cancel()
    finally:
        for jail in jails:
            jail.close()
    if failure is not None:
        raise failure


def cmd_push(args: argparse.Namespace, ctx: Ctx) -> int:
    ref = parse_reference(args.ref, allow_digest=False)
    src = Path(args.dir)
    if not src.is_dir():
        raise CliError(f"{src}: no such directory")
    annotations = _annotations(args)
    tags: list[str] = list(args.tag)
    for t in tags:
        try:
            ref.with_tag(t)
        except ValueError as e:
            raise CliError(f"--tag {t!r}: {e}") from None
    out = ctx.out
    with (
        make_client(ctx, caches=False) as client,
        ProgressBar(0, "archiving", quiet=out.quiet) as bar,
    ):

        def progress(p: CreateProgress) -> None:
            bar.update(p.bytes_done, label=p.path or p.stage, total=p.bytes_total)

        def upload_progress(digest: str, done: int, total: int) -> None:
            # One blob at a time (config, index, data): the bar follows the current one.
            bar.update(done, label=f"uploading {digest[:19]}", total=total)

        manifest = client.push(
            ref,
            src,
            compression=Compression.ZSTD if args.compression == "zstd" else Compression.NONE,
            tags=tags,
            annotations=annotations or None,
            progress=progress,
            upload_progress=upload_progress,
        )
    if out.json:
        out.emit_json(
            {"ref": str(ref), "digest": manifest.digest, "status": "pushed", "tags": tags}
        )
        return 0
    out.line(f"Pushed {ref}")
    out.info(f"Digest: {manifest.digest}")
    for t in tags:
        out.info(f"Tagged: {ref.with_tag(t)}")
    return 0


def cmd_pull(args: argparse.Namespace, ctx: Ctx) -> int:
    ref = parse_reference(args.ref)
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise CliError(f"{dest}: exists and is not a directory")
    out = ctx.out
    copied = 0
    copied_bytes = 0
    skipped: list[str] = []
    with make_client(ctx) as client, client.pull(ref, max_file_size=0) as ar:
        resolved = f"{ref.registry}/{ref.repository}@{ar.manifest.digest}"
        entries = sorted(ar.walk(""), key=lambda e: e.path.split("/"))
        total = sum(e.size for e in entries)
        dest.mkdir(mode=0o750, parents=True, exist_ok=True)
        _prefetch_small_files(ar, entries)
        with _LockedBar(total, "pulling", quiet=out.quiet) as bar:
            for e, written in _extract_parallel(ar, dest, entries, force=args.force, bar=bar):
                if written:
                    copied += 1
                    copied_bytes += e.size
                else:
                    skipped.append(str(dest.joinpath(*e.path.split("/"))))
                    bar.advance(e.size)
    skipped.sort()
    if out.json:
        result: dict[str, Any] = {
            "ref": str(ref),
            "resolved_ref": resolved,
            "destination": str(dest),
            "file_count": copied,
            "total_size": copied_bytes,
            "total_size_human": human_size(copied_bytes),
            "verified": True,
            "skipped": skipped,
        }
        out.emit_json(result)
        return 0
    for s in skipped:
        out.warn(f"{s}: exists, skipped (use -f to overwrite)")
    rows = [
        ("Pulled", str(ref)),
        ("Resolved", resolved),
        ("Destination", str(dest)),
        ("Files", str(copied)),
        ("Size", human_size(copied_bytes)),
        ("Verified", "yes"),
    ]
    if skipped:
        rows.append(("Skipped", f"{len(skipped)} existing file(s)"))
    out.lines(f"{k + ':':<13}{v}" for k, v in rows)
    return 0


def cmd_tag(args: argparse.Namespace, ctx: Ctx) -> int:
    src = parse_reference(args.src)
    dst = parse_reference(args.dst, allow_digest=False)
    if (src.registry, src.repository) != (dst.registry, dst.repository):
        raise CliError(
            f"{dst}: tag within one repository ({src.registry}/{src.repository}); "
            "copying between repositories is not supported"
        )
    with make_client(ctx, caches=False) as client:
        digest = src.digest or client.registry.fetch(src).digest
        client.registry.tag(dst, digest)
    out = ctx.out
    if out.json:
        out.emit_json({"ref": str(dst), "source": str(src), "digest": digest, "status": "tagged"})
        return 0
    out.lines([f"Tagged: {dst}", f"Source: {src}", f"Digest: {digest}"])
    return 0


def cmd_inspect_any(args: argparse.Namespace, ctx: Ctx) -> int:
    """``inspect``: a reference goes to the registry; anything else to the local inspect."""
    positionals: list[str] = args.positionals
    if args.index is not None or args.data is not None or len(positionals) != 1:
        return cmd_inspect(args, ctx)
    ref = reference_arg(positionals[0])
    if ref is None:
        return cmd_inspect(args, ctx)
    with make_client(ctx) as client:  # the registry caches answer (or, --offline, alone)
        info = client.registry.inspect(ref)
        # Signatures and attestations of this very digest (listed, not verified).
        referrers = referrer_listing(client.registry, ref.with_digest(info.manifest.digest))
    index = info.index
    total = 0
    by_comp: Counter[str] = Counter({"none": 0, "zstd": 0})
    for e in index.walk():
        total += e.original_size
        by_comp["zstd" if e.compression == Compression.ZSTD else "none"] += 1
    m = info.manifest
    doc: dict[str, Any] = {
        "ref": str(ref),
        "resolved_ref": f"{ref.registry}/{ref.repository}@{m.digest}",
        "digest": m.digest,
        "media_type": m.media_type,
        "artifact_type": m.artifact_type,
        "index_digest": m.index_descriptor.digest,
        "index_size": info.index_size,
        "data_digest": m.data_descriptor.digest,
        "data_size": info.data_size,
        "file_count": info.file_count,
        "directory_count": index.dir_count,
        "total_size": total,
        "compressed_size": info.total_size,
        "compression": "zstd" if by_comp["zstd"] else "none",
        "entries": dict(by_comp),
        "created": m.created,
        "annotations": dict(m.annotations),
        **referrers,
    }
    out = ctx.out
    if out.json:
        out.emit_json(doc)
        return 0
    rows = [
        ("Reference", doc["ref"]),
        ("Resolved", doc["resolved_ref"]),
        ("Digest", m.digest),
        ("Files", str(info.file_count)),
        ("Size", f"{human_size(info.total_size)} ({human_size(total)} uncompressed)"),
        ("Compression", doc["compression"]),
        ("Created", m.created or "-"),
        ("Index", f"{m.index_descriptor.digest} ({human_size(info.index_size)})"),
        ("Data", f"{m.data_descriptor.digest} ({human_size(info.data_size)})"),
    ]
    width = max(len(k) for k, _ in rows) + 2
    out.lines(f"{k + ':':<{width}}{v}" for k, v in rows)
    out.lines(referrer_lines(referrers))
    if m.annotations:
        out.line("Annotations:")
        out.lines(f"  {k}={v}" for k, v in sorted(m.annotations.items()))
    return 0
