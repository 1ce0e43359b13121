"""What every ``blobfs`` subcommand shares: the run context and how ARCHIVE arguments resolve.

An archive on disk is named either by a directory holding ``index.blob`` and ``data.blob``
(positional ``ARCHIVE``), or by ``--index FILE --data FILE``; in the second form the positional
``ARCHIVE`` is left out, so ``blobfs ls --index i.blob --data d.blob some/dir`` works.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from ..core import BlobFile, open_file
from ._output import CliError, Output

__all__ = [
    "DEFAULT_DATA_NAME",
    "DEFAULT_INDEX_NAME",
    "ArchiveSpec",
    "Ctx",
    "add_archive_options",
    "archive_and_rest",
    "display_path",
    "open_archive",
    "usage_error",
]

DEFAULT_INDEX_NAME = "index.blob"
DEFAULT_DATA_NAME = "data.blob"


@dataclass(slots=True)
class Ctx:
    """Per-invocation settings the handlers need besides their own arguments."""

    out: Output
    max_file_size: int
    """Whole-file read limit in bytes; 0 = unlimited."""
    verbose: int = 0


@dataclass(frozen=True, slots=True)
class ArchiveSpec:
    """Where an archive's two blobs are, and how to name the archive in output."""

    index: Path
    data: Path
    label: str
    directory: Path | None = None
    """The ARCHIVE directory, when the archive was named by one."""


def usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Report a usage mistake the way argparse does (usage line + message, exit 2)."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def add_archive_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "archive files (instead of an ARCHIVE directory; then ARCHIVE is left out)"
    )
    group.add_argument("--index", metavar="FILE", help="the index blob of the archive")
    group.add_argument("--data", metavar="FILE", help="the data blob of the archive")


def archive_and_rest(
    args: argparse.Namespace, positionals: list[str], *, min_rest: int, max_rest: int | None
) -> tuple[ArchiveSpec, list[str]]:
    """Split ``[ARCHIVE] REST...`` into the archive and the remaining arguments."""
    index: str | None = args.index
    data: str | None = args.data
    rest = list(positionals)
    if (index is None) != (data is None):
        usage_error(args, "--index and --data go together (or give an ARCHIVE directory)")
    if index is not None and data is not None:
        spec = ArchiveSpec(Path(index), Path(data), label=f"{index} + {data}")
    else:
        if not rest:
            usage_error(args, "missing ARCHIVE (a directory, or --index FILE --data FILE)")
        directory = rest.pop(0)
        d = Path(directory)
        spec = ArchiveSpec(d / DEFAULT_INDEX_NAME, d / DEFAULT_DATA_NAME, directory, d)
    if len(rest) < min_rest:
        usage_error(args, "missing PATH argument")
    if max_rest is not None and len(rest) > max_rest:
        usage_error(args, f"unexpected extra arguments: {' '.join(rest[max_rest:])}")
    return spec, rest


def check_archive_files(spec: ArchiveSpec) -> None:
    """Turn a missing or misnamed archive into a one-line explanation."""
    directory = spec.directory
    for what, path in (("index", spec.index), ("data", spec.data)):
        if path.is_file():
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


def open_archive(spec: ArchiveSpec, ctx: Ctx) -> BlobFile:
    """Open the archive for reading (index validated, data file opened)."""
    check_archive_files(spec)
    return open_file(os.fspath(spec.index), os.fspath(spec.data), max_file_size=ctx.max_file_size)


def display_path(norm: str) -> str:
    """An archive path as shown to people: ``/`` for the root, ``/a/b`` otherwise."""
    return "/" + norm
