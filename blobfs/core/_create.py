"""Creating archives: the Python twin of Go's ``core.Create`` and ``core.CreateBlob``.

``create`` walks the source tree without following symlinks (``_create_walk``), sorts the
regular files bytewise by path, and streams their payloads in that order (``_create_engine``),
so ``data_offset`` is a running sum and the index is what Go's binary search expects
(FORMAT.md section 2). Output depends only on the tree and the options: same tree, same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zstandard

from ..errors import CreateError
from ._create_engine import CreateProgress, Creator, Options, SkipPredicate
from ._create_sink import BinaryWriter, DataOut, write_all
from ._create_walk import SkippedPath, TreeOpener, walk_tree
from ._index_writer import encode_index
from ._types import CHUNK_SIZE_MAX, CHUNK_SIZE_MIN, DEFAULT_CHUNK_SIZE, ChangeDetection, Compression

if TYPE_CHECKING:
    from ._archive import BlobFile

__all__ = [
    "DEFAULT_MAX_FILES",
    "DEFAULT_SKIP_COMPRESSION",
    "BinaryWriter",
    "CreateProgress",
    "CreateResult",
    "SkipPredicate",
    "SkippedPath",
    "create",
    "create_blob",
    "default_skip_compression",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILES = 200_000
"""Go's ``DefaultMaxFiles``: ``max_files=0`` means this; a negative value means no limit."""


# Go's list of already-compressed formats (31 extensions), kept identical for compatibility.
_GO_SKIP_EXTENSIONS = (
    ".7z .aac .avif .br .bz2 .flac .gif .gz .heic .ico .jpeg .jpg .m4v .mkv .mov .mp3 .mp4 "
    ".ogg .opus .pdf .png .rar .tgz .wav .webm .webp .woff .woff2 .xz .zip .zst"
)
_INCOMPRESSIBLE_EXTENSIONS = frozenset(_GO_SKIP_EXTENSIONS.split())


def default_skip_compression(min_size: int) -> SkipPredicate:
    """Go's ``DefaultSkipCompression``: skip files under ``min_size`` bytes (when > 0) and
    already-compressed formats, by lower-cased extension of the last path element."""

    def skip(path: str, size: int) -> bool:
        if min_size > 0 and size < min_size:
            return True
        name = path.rsplit("/", 1)[-1]
        dot = name.rfind(".")  # Go's filepath.Ext: from the last dot, ".png" included
        return dot >= 0 and name[dot:].lower() in _INCOMPRESSIBLE_EXTENSIONS

    return skip


DEFAULT_SKIP_COMPRESSION: tuple[SkipPredicate, ...] = (default_skip_compression(1024),)
"""What the CLI uses: files under 1 KiB and known compressed formats stay raw."""


@dataclass(frozen=True, slots=True)
class CreateResult:
    """What ``create`` wrote: ``data_hash`` is SHA-256 of the data blob (its OCI digest)."""

    file_count: int
    data_size: int
    data_hash: bytes
    index_size: int
    skipped: tuple[SkippedPath, ...]


def _options(
    compression: Compression,
    skip_compression: Sequence[SkipPredicate],
    change_detection: ChangeDetection,
    max_files: int,
    chunk_size: int,
    zstd_level: int,
    progress: Callable[[CreateProgress], object] | None,
) -> Options:
    if chunk_size != 0 and not (
        CHUNK_SIZE_MIN <= chunk_size <= CHUNK_SIZE_MAX and chunk_size & (chunk_size - 1) == 0
    ):
        raise ValueError(
            f"chunk_size must be 0 or a power of two in [{CHUNK_SIZE_MIN}, {CHUNK_SIZE_MAX}], "
            f"got {chunk_size}"
        )
    if not 1 <= zstd_level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise ValueError(
            f"zstd_level must be in [1, {zstandard.MAX_COMPRESSION_LEVEL}], got {zstd_level}"
        )
    return Options(
        compression=Compression(compression),
        skip=tuple(skip_compression),
        strict=ChangeDetection(change_detection) is ChangeDetection.STRICT,
        max_files=DEFAULT_MAX_FILES if max_files == 0 else max_files,
        chunk_size=chunk_size,
        zstd_level=zstd_level,
        progress=progress,
    )


def _open_source(src: str | os.PathLike[str]) -> int:
    """A descriptor of the source directory (the root itself may be a symlink, as in Go)."""
    try:
        return os.open(src, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CreateError(f"source directory {os.fspath(src)} does not exist") from None
    except NotADirectoryError:
        raise CreateError(f"source {os.fspath(src)} is not a directory") from None
    except OSError as exc:
        raise CreateError(f"cannot open source directory {os.fspath(src)}: {exc.strerror}") from exc


def create(
    src: str | os.PathLike[str],
    index_writer: BinaryWriter,
    data_writer: BinaryWriter,
    *,
    compression: Compression = Compression.NONE,
    skip_compression: Sequence[SkipPredicate] = DEFAULT_SKIP_COMPRESSION,
    change_detection: ChangeDetection = ChangeDetection.NONE,
    max_files: int = DEFAULT_MAX_FILES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    zstd_level: int = 3,
    progress: Callable[[CreateProgress], object] | None = None,
) -> CreateResult:
    """Archive the regular files below directory ``src``: data blob to ``data_writer``, then
    the index to ``index_writer``.

    Symlinks, FIFOs, sockets, devices, empty directories and names that are not UTF-8 are
    skipped and listed in ``CreateResult.skipped``. With ``Compression.ZSTD`` a file is
    compressed (level ``zstd_level``) unless a ``skip_compression`` predicate says so, and
    stored raw when zstd does not shrink it. Files over ``chunk_size`` get a chunk table
    (FORMAT.md section 4); ``chunk_size=0`` writes plain v1 entries only. ``max_files``: 0 is
    the default limit, negative is unlimited; the limit is checked before anything is written.

    Files are taken in bytewise path order; ``progress`` (see :class:`CreateProgress`) and the
    predicates are called from the calling thread before a file is opened, while a small thread
    pool reads, hashes and compresses ahead. Memory stays bounded whatever the file sizes (a few
    chunks in flight, plus the entries of the index). A seekable ``data_writer`` takes large
    payloads in place and is rolled back (seek, truncate) when zstd did not shrink one; with any
    other writer such payloads pass through a spool (memory, then the system temp directory).

    Errors: :class:`CreateError` (source missing or unreadable, a writer failed),
    :class:`TooManyFiles`, :class:`FileChanged` (a file shrank or disappeared; with
    ``ChangeDetection.STRICT`` also replaced, or changed size, mtime or mode while read),
    ``ValueError`` for bad options. An exception from ``progress`` aborts. After an error the
    writers hold a partial, unusable archive: ``create_blob`` removes its files.
    """
    opts = _options(
        compression,
        skip_compression,
        change_detection,
        max_files,
        chunk_size,
        zstd_level,
        progress,
    )
    root = _open_source(src)
    try:
        if progress is not None:
            progress(CreateProgress("enumerating", 0, 0, 0, 0, ""))
        files, skipped = walk_tree(root, opts.max_files)
        out = DataOut(data_writer)
        opener = TreeOpener(root)
        creator: Creator | None = None
        try:
            # zstd and hashlib scale with cores; 2 is the floor (one reads ahead while one
            # compresses), 8 a ceiling past which the calling thread cannot keep up anyway.
            workers = max(2, min(8, os.cpu_count() or 2))
            with ThreadPoolExecutor(workers, thread_name_prefix="blobfs-create") as pool:
                creator = Creator(opts, out, opener, pool)
                creator.run(files)
        finally:
            # Only now, with every worker finished, may directory descriptors close.
            if creator is not None:
                creator.close()
            opener.close()
    finally:
        os.close(root)
    index = encode_index(creator.entries, data_size=out.offset, data_hash=out.digest())
    write_all(index_writer, index, "index")
    all_skipped = sorted([*skipped, *creator.skipped], key=lambda s: os.fsencode(s.path))
    logger.debug(
        "archived %d files (%d data bytes, %d index bytes), skipped %d paths",
        len(creator.entries),
        out.offset,
        len(index),
        len(all_skipped),
    )
    return CreateResult(
        file_count=len(creator.entries),
        data_size=out.offset,
        data_hash=out.digest(),
        index_size=len(index),
        skipped=tuple(all_skipped),
    )


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} must be a plain file name, got {name!r}")


def _temp_file(dest: str, name: str) -> tuple[str, int]:
    # Our own O_EXCL name rather than mkstemp: mode 0o666 minus the umask, like the final files
    # of Go's CreateBlob (mkstemp would leave them 0o600).
    for _ in range(100):
        path = os.path.join(dest, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            return path, os.open(path, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise CreateError(f"cannot create a file in {dest}: {exc.strerror}") from exc
    raise CreateError(f"cannot create a temporary file in {dest}")  # pragma: no cover


def create_blob(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    index_name: str = "index.blob",
    data_name: str = "data.blob",
    compression: Compression = Compression.NONE,
    skip_compression: Sequence[SkipPredicate] = DEFAULT_SKIP_COMPRESSION,
    change_detection: ChangeDetection = ChangeDetection.NONE,
    max_files: int = DEFAULT_MAX_FILES,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    zstd_level: int = 3,
    progress: Callable[[CreateProgress], object] | None = None,
) -> BlobFile:
    """Archive ``src`` into ``dest/index_name`` and ``dest/data_name`` and open the result.

    ``dest`` is created (mode 0o750, parents too). Both files are written under temporary
    names in ``dest``, synced, and renamed into place, data first and the index last (the
    index is the commit point). On any failure the temporary files are removed and an existing
    archive of the same names is left untouched. ``dest`` may not lie inside ``src`` (the
    archive would contain itself). Options and errors are those of :func:`create`.
    """
    # Imported here, not at module level: creating needs no reader until the very end.
    from ._archive import open_file

    _check_name(index_name, "index_name")
    _check_name(data_name, "data_name")
    if index_name == data_name:
        raise ValueError(f"index_name and data_name are both {index_name!r}")
    os.close(_open_source(src))
    dest_s = os.fspath(dest)
    real_src, real_dest = os.path.realpath(src), os.path.realpath(dest_s)
    if os.path.commonpath([real_src, real_dest]) == real_src:
        raise CreateError(f"destination {dest_s} is inside the source tree {os.fspath(src)}")
    try:
        os.makedirs(dest_s, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise CreateError(f"cannot create destination directory {dest_s}: {exc}") from exc
    index_path = os.path.join(dest_s, index_name)
    data_path = os.path.join(dest_s, data_name)
    temps: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            index_tmp, fd = _temp_file(dest_s, index_name)
            temps.append(index_tmp)
            index_w = stack.enter_context(open(fd, "wb"))
            data_tmp, fd = _temp_file(dest_s, data_name)
            temps.append(data_tmp)
            data_w = stack.enter_context(open(fd, "wb"))
            create(
                src,
                index_w,
                data_w,
                compression=compression,
                skip_compression=skip_compression,
                change_detection=change_detection,
                max_files=max_files,
                chunk_size=chunk_size,
                zstd_level=zstd_level,
                progress=progress,
            )
            try:
                for w in (index_w, data_w):
                    w.flush()
                    os.fsync(w.fileno())
            except OSError as exc:
                raise CreateError(f"writing the archive in {dest_s} failed: {exc}") from exc
        try:
            os.replace(data_tmp, data_path)
            os.replace(index_tmp, index_path)
        except OSError as exc:
            raise CreateError(f"cannot move the archive into place in {dest_s}: {exc}") from exc
        temps.clear()
        _sync_dir(dest_s)
    except BaseException:
        for path in temps:
            try:
                os.unlink(path)
            except OSError as exc:
                logger.warning("cannot remove temporary file %s: %s", path, exc)
        raise
    return open_file(index_path, data_path)


def _sync_dir(path: str) -> None:
    """Persist the renames; best effort (some file systems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
