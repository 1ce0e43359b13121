"""What every ``blobfs`` subcommand shares: the run context and how ARCHIVE arguments resolve.

An archive is named either by a directory holding ``index.blob`` and ``data.blob`` (positional
``ARCHIVE``), or by ``--index FILE|URL --data FILE|URL``; in the second form the positional
``ARCHIVE`` is left out, so ``blobfs ls --index i.blob --data d.blob some/dir`` works. An
``http://`` or ``https://`` blob is read with range requests (``--header 'K: V'`` adds request
headers), through the content and block caches under the cache directory unless ``--no-cache``.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..core import Archive, FileSource, Index, open_file
from ..core.cache.disk import BlockCache, DiskCache
from ..core.http import HttpSource
from ._output import CliError, Output

__all__ = [
    "DEFAULT_DATA_NAME",
    "DEFAULT_INDEX_NAME",
    "ArchiveSpec",
    "Ctx",
    "add_archive_options",
    "archive_and_rest",
    "cache_root",
    "display_path",
    "is_url",
    "open_archive",
    "usage_error",
]

CONTENT_CACHE_BYTES = 1 << 30
"""Content cache bound: 1 GiB of verified files and chunks, the working set of a few datasets."""

MAX_INDEX_BYTES = 1 << 31
"""FlatBuffers offsets are 32-bit: no valid index is larger, so a bigger one is refused unread."""

DEFAULT_INDEX_NAME = "index.blob"
DEFAULT_DATA_NAME = "data.blob"


@dataclass(slots=True)
class Ctx:
    """Per-invocation settings the handlers need besides their own arguments."""

    out: Output
    max_file_size: int
    """Whole-file read limit in bytes; 0 = unlimited."""
    verbose: int = 0
    cache_dir: Path | None = None
    """Root of the caches for remote archives (``None``: the default, see :func:`cache_root`)."""
    use_cache: bool = True


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """Where an archive's two blobs are, and how to name the archive in output."""

    index: str
    data: str
    label: str
    directory: Path | None = None
    """The ARCHIVE directory, when the archive was named by one."""
    headers: tuple[tuple[str, str], ...] = ()
    """Request headers for ``http(s)://`` blobs."""

    @property
    def remote(self) -> bool:
        return is_url(self.index) or is_url(self.data)


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Report a usage mistake the way argparse does (usage line + message, exit 2)."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "archive files (instead of an ARCHIVE directory; then ARCHIVE is left out)"
    )
    group.add_argument("--index", metavar="FILE|URL", help="the index blob of the archive")
    group.add_argument("--data", metavar="FILE|URL", help="the data blob of the archive")
    group.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP request header for URL blobs (repeatable)",
    )


def archive_and_rest(
    args: argparse.Namespace, positionals: list[str], *, min_rest: int, max_rest: int | None
) -> tuple[ArchiveSpec, list[str]]:
    """Split ``[ARCHIVE] REST...`` into the archive and the remaining arguments."""
    index: str | None = args.index
    data: str | None = args.data
    rest = list(positionals)
    if (index is None) != (data is None):
        usage_error(args, "--index and --data go together (or give an ARCHIVE directory)")
    headers = tuple(_parse_header(args, h) for h in args.header)
    if index is not None and data is not None:
        spec = ArchiveSpec(index, data, label=f"{index} + {data}", headers=headers)
    else:
        if not rest:
            usage_error(args, "missing ARCHIVE (a directory, or --index FILE --data FILE)")
        directory = rest.pop(0)
        d = Path(directory)
        spec = ArchiveSpec(
            str(d / DEFAULT_INDEX_NAME), str(d / DEFAULT_DATA_NAME), directory, d, headers
        )
    if len(rest) < min_rest:
        usage_error(args, "missing PATH argument")
    if max_rest is not None and len(rest) > max_rest:
        usage_error(args, f"unexpected extra arguments: {' '.join(rest[max_rest:])}")
    return spec, rest


def is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def _parse_header(args: argparse.Namespace, text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        usage_error(args, f"--header wants 'NAME: VALUE', got {text.split(':')[0]!r}...")
    return name.strip(), value.strip()


def cache_root(ctx: Ctx) -> Path:
    """``--cache-dir``, else ``$BLOBFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/blobfs``, else
    ``~/.cache/blobfs``."""
    if ctx.cache_dir is not None:
        return ctx.cache_dir
    if os.environ.get("BLOBFS_CACHE_DIR"):
        return Path(os.environ["BLOBFS_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "blobfs"


def open_caches(ctx: Ctx) -> tuple[DiskCache, BlockCache]:
    root = cache_root(ctx)
    return (
        DiskCache(root / "content", max_bytes=CONTENT_CACHE_BYTES),
        BlockCache(root / "blocks"),
    )


def check_archive_files(spec: ArchiveSpec) -> None:
    """Turn a missing or misnamed archive into a one-line explanation."""
    directory = spec.directory
    for what, name in (("index", spec.index), ("data", spec.data)):
        path = Path(name)
        if is_url(name) or path.is_file():
            continue
        if directory is not None and not directory.is_dir():
            if directory.exists():
                raise CliError(
                    f"{spec.label}: not a directory (an ARCHIVE is a directory holding "
                    f"{DEFAULT_INDEX_NAME} and {DEFAULT_DATA_NAME}; for single files use "
                    "--index FILE --data FILE)"
                )
            raise CliError(f"{spec.label}: no such archive directory")
        if path.exists():
            raise CliError(f"{path}: the {what} blob is not a regular file")
        raise CliError(f"{path}: {what} blob not found")


def open_archive(spec: ArchiveSpec, ctx: Ctx) -> Archive:
    """Open the archive for reading (index validated, data source opened); close it after use."""
    check_archive_files(spec)
    if not spec.remote:
        return open_file(spec.index, spec.data, max_file_size=ctx.max_file_size)
    return _RemoteArchive.connect(spec, ctx)


class _RemoteArchive(Archive):
    """An archive with at least one blob behind a URL; owns its sources and caches."""

    __slots__ = ("_owned",)
    _owned: list[FileSource | HttpSource | DiskCache | BlockCache]

    @classmethod
    def connect(cls, spec: ArchiveSpec, ctx: Ctx) -> _RemoteArchive:
        headers = dict(spec.headers)
        owned: list[FileSource | HttpSource | DiskCache | BlockCache] = []
        try:
            index_src = _source(spec.index, headers)
            owned.append(index_src)
            if index_src.size > MAX_INDEX_BYTES:
                raise CliError(f"{spec.index}: {index_src.size} bytes is too large for an index")
            index = Index(index_src.read_at(0, index_src.size))
            data_src = _source(spec.data, headers, index.data_hash, index.data_size)
            owned.append(data_src)
            cache = block_cache = None
            if ctx.use_cache:
                cache, block_cache = open_caches(ctx)
                owned += (cache, block_cache)
            archive = cls(
                index,
                data_src,
                cache=cache,
                block_cache=block_cache,
                max_file_size=ctx.max_file_size,
            )
        except BaseException:
            for thing in reversed(owned):
                thing.close()
            raise
        archive._owned = owned
        return archive

    def close(self) -> None:
        super().close()
        for thing in reversed(self._owned):
            thing.close()


def _source(
    name: str, headers: dict[str, str], digest: bytes = b"", size: int = 0
) -> FileSource | HttpSource:
    if not is_url(name):
        return FileSource(name, data_hash=digest or None)
    if not digest:
        return HttpSource(name, headers=headers)
    # With the data digest known, the block cache keys on content, not on the URL (the same
    # archive served from another address reuses its blocks), and the size the index records
    # saves the probe request; a server whose blob differs fails verification, not silently.
    return HttpSource(name, headers=headers, source_id="sha256:" + digest.hex(), size=size)


def display_path(norm: str) -> str:
    """An archive path as shown to people: ``/`` for the root, ``/a/b`` otherwise."""
    return "/" + norm
