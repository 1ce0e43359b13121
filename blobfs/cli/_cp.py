"""``blobfs cp ARCHIVE:/PATH... DEST``: extract files and directories, jailed and atomic.

Rules (``docs/cli.md`` has the user's version):

* A source is ``ARCHIVE:/PATH`` (split at the first ``:/``, as blob-cli does), or a plain archive
  path when ``--index FILE --data FILE`` name the archive. Directories need ``-r``.
* Layout follows ``cp -r``: a file goes to DEST if DEST is not a directory, else into it; a
  directory goes into an existing DEST as ``DEST/NAME``, or becomes DEST when DEST does not exist
  (the archive root always becomes DEST). Several sources need DEST to be a directory (created
  when missing).
* Jail: every directory below the destination root is opened with ``O_NOFOLLOW`` relative to
  its parent's descriptor (``openat``), so a symlink planted inside DEST is never followed, not
  even by a race; the final name is replaced with ``rename``, which replaces a symlink itself
  (``blobfs.core._dest``, shared with ``pull``).
* Atomic: content goes to ``.blobfs-<hex>`` in the target directory and is renamed over the name
  only after the archive verified it; any failure removes the temporary file.
* Existing files are skipped (a warning each) unless ``-f/--force``; an existing *directory* in
  the way of a file is an error.
* Files are created ``0644 & ~umask``; ``--preserve`` applies the archived mode bits and mtime.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ..core import Archive, DirInfo, Entry, normalize_path
from ..core._dest import Jail, PendingFile
from ._common import (
    ArchiveSpec,
    Ctx,
    archive_and_rest,
    open_archive,
    requested_policy,
    usage_error,
)
from ._output import CliError, human_size
from ._progress import ProgressBar

__all__ = ["cmd_cp"]

COPY_PIECE: Final = 1 << 20
"""Extraction copies 1 MiB at a time: one chunk of a chunked entry, bounded memory per file."""


@dataclass(frozen=True, slots=True)
class _Source:
    text: str
    spec: ArchiveSpec
    path: str


@dataclass(slots=True)
class _Plan:
    """The files of one source, each with its path below a destination root."""

    source: _Source
    root: Path
    files: list[tuple[tuple[str, ...], Entry]] = field(default_factory=list)


def _parse_sources(args: argparse.Namespace, texts: list[str]) -> list[_Source]:
    if args.index is not None or args.data is not None:
        spec, rest = archive_and_rest(args, texts, min_rest=0, max_rest=None)
        return [_Source(t, spec, normalize_path(t)) for t in rest]
    sources = []
    for t in texts:
        archive, sep, path = t.partition(":/")
        if not sep or not archive:
            usage_error(args, f"source {t!r} is not ARCHIVE:/PATH (or use --index/--data)")
        spec, _ = archive_and_rest(args, [archive], min_rest=0, max_rest=0)
        sources.append(_Source(t, spec, normalize_path(path)))
    return sources


def _plan(args: argparse.Namespace, ar: Archive, src: _Source, dest: Path, many: bool) -> _Plan:
    st = ar.stat(src.path)
    dest_is_dir = dest.is_dir()
    if isinstance(st, DirInfo):
        if not args.recursive:
            raise CliError(f"{src.text}: is a directory (use -r to copy directories)")
        # cp -r: into an existing directory as DEST/NAME, else the directory becomes DEST.
        prefix: tuple[str, ...] = (st.name,) if src.path and (dest_is_dir or many) else ()
        plan = _Plan(src, dest)
        cut = len(src.path) + 1 if src.path else 0
        for e in ar.walk(src.path):
            plan.files.append(((*prefix, *e.path[cut:].split("/")), e))
        return plan
    if dest_is_dir or many or args.positionals[-1].endswith("/"):
        return _Plan(src, dest, [((st.name,), st)])
    return _Plan(src, dest.parent, [((dest.name,), st)])


def _write_one(
    ar: Archive,
    jail: Jail,
    parts: tuple[str, ...],
    entry: Entry,
    *,
    force: bool,
    preserve: bool,
    bar: ProgressBar,
) -> bool:
    """Extract one file; False when it was skipped because it exists."""
    if jail.exists(parts) and not force:
        return False
    out = PendingFile(jail, parts, private=preserve)
    try:
        with ar.open(entry.path) as src:
            while piece := src.read(COPY_PIECE):
                out.write(piece)
                bar.advance(len(piece))
        if preserve:
            out.commit(entry.mode, entry.mtime_ns)
        else:
            out.commit()
    except BaseException:
        out.abort()
        raise
    return True


def cmd_cp(args: argparse.Namespace, ctx: Ctx) -> int:
    texts: list[str] = args.positionals
    if len(texts) < 2:
        usage_error(args, "need at least one SOURCE and a DEST")
    dest = Path(texts[-1])
    sources = _parse_sources(args, texts[:-1])
    many = len(sources) > 1
    if dest.exists() and not dest.is_dir() and many:
        raise CliError(f"{dest}: copying several sources needs DEST to be a directory")

    policy = requested_policy(args, [src.spec for src in sources])
    out = ctx.out
    copied = 0
    copied_bytes = 0
    skipped: list[str] = []
    with contextlib.ExitStack() as stack:
        archives: dict[ArchiveSpec, Archive] = {}
        plans: list[_Plan] = []
        for src in sources:
            if src.spec not in archives:
                archives[src.spec] = stack.enter_context(open_archive(src.spec, ctx, policy))
            plans.append(_plan(args, archives[src.spec], src, dest, many))
        total = sum(e.size for p in plans for _, e in p.files)
        bar = stack.enter_context(ProgressBar(total, "copying", quiet=out.quiet))
        for plan in plans:
            ar = archives[plan.source.spec]
            root = plan.root
            if root == dest:
                if dest.exists() and not dest.is_dir():
                    raise CliError(f"{dest}: exists and is not a directory")
                dest.mkdir(parents=True, exist_ok=True)
            elif not root.is_dir():
                raise CliError(f"{root}: no such directory")
            with Jail(root) as jail:
                for parts, entry in sorted(plan.files, key=lambda pe: pe[0]):
                    if _write_one(
                        ar, jail, parts, entry, force=args.force, preserve=args.preserve, bar=bar
                    ):
                        copied += 1
                        copied_bytes += entry.size
                    else:
                        skipped.append(str(root.joinpath(*parts)))
                        bar.advance(entry.size)

    if out.json:
        result: dict[str, Any] = {
            "sources": [{"archive": s.spec.label, "path": s.path} for s in sources],
            "destination": str(dest),
            "file_count": copied,
            "total_size": copied_bytes,
            "size_human": human_size(copied_bytes),
            "skipped": skipped,
        }
        out.emit_json(result)
        return 0
    for s in skipped:
        out.warn(f"{s}: exists, skipped (use -f to overwrite)")
    noun = "file" if copied == 1 else "files"
    out.info(f"Copied {copied} {noun} ({human_size(copied_bytes)})")
    if skipped:
        out.info(f"Skipped {len(skipped)} existing file(s)")
    return 0
