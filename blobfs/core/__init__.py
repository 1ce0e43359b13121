"""Archive format, creation and verified reading (no network, no FUSE).

- :class:`Index`: the validated FlatBuffers index, read in place; :func:`encode_index` writes one.
- :func:`create` / :func:`create_blob`: archive a directory tree (streamed, deterministic).
- :class:`Archive` over any :class:`ByteSource`, :func:`open_file` for a local archive: listings,
  verified whole-file reads, random-access file objects, ``verify()``, and async twins.
- :func:`extract`: write many files out at once, reading the data blob once in large ranges
  (verified, jailed, atomic).
- :func:`plan`, :func:`decode_chunks`, :class:`PayloadDecoder`: the sans-IO read mechanism the
  archive, the CLI and (later) the mount share.

Names are imported on first use (PEP 562): ``from blobfs.core import CHUNK_SIZE_MAX`` loads
only ``_types``, and a mount never loads the archive-creation code or asyncio. Every name of
``__all__`` resolves as before (``tests/test_cli_startup.py`` checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._archive import DEFAULT_MAX_FILE_SIZE as DEFAULT_MAX_FILE_SIZE
    from ._archive import Archive as Archive
    from ._archive import BlobFile as BlobFile
    from ._archive import open_file as open_file
    from ._create import DEFAULT_MAX_FILES as DEFAULT_MAX_FILES
    from ._create import DEFAULT_SKIP_COMPRESSION as DEFAULT_SKIP_COMPRESSION
    from ._create import BinaryWriter as BinaryWriter
    from ._create import CreateProgress as CreateProgress
    from ._create import CreateResult as CreateResult
    from ._create import SkippedPath as SkippedPath
    from ._create import SkipPredicate as SkipPredicate
    from ._create import create as create
    from ._create import create_blob as create_blob
    from ._create import default_skip_compression as default_skip_compression
    from ._decode import PayloadDecoder as PayloadDecoder
    from ._decode import ReadPlan as ReadPlan
    from ._decode import decode_chunks as decode_chunks
    from ._decode import plan as plan
    from ._extract import ExtractReport as ExtractReport
    from ._extract import extract as extract
    from ._file import ArchiveFile as ArchiveFile
    from ._file import AsyncArchiveFile as AsyncArchiveFile
    from ._index import Index as Index
    from ._index_writer import encode_index as encode_index
    from ._paths import normalize_path as normalize_path
    from ._source import ByteSource as ByteSource
    from ._source import BytesSource as BytesSource
    from ._source import FileSource as FileSource
    from ._steps import VerifyProgress as VerifyProgress
    from ._types import CHUNK_SIZE_MAX as CHUNK_SIZE_MAX
    from ._types import CHUNK_SIZE_MIN as CHUNK_SIZE_MIN
    from ._types import DEFAULT_CHUNK_SIZE as DEFAULT_CHUNK_SIZE
    from ._types import FEATURE_CHUNKS as FEATURE_CHUNKS
    from ._types import ChangeDetection as ChangeDetection
    from ._types import Compression as Compression
    from ._types import DirEntry as DirEntry
    from ._types import DirInfo as DirInfo
    from ._types import Entry as Entry
    from ._verify import VerifyReport as VerifyReport

_NAMES: dict[str, str] = {
    "DEFAULT_MAX_FILE_SIZE": "._archive",
    "Archive": "._archive",
    "BlobFile": "._archive",
    "open_file": "._archive",
    "DEFAULT_MAX_FILES": "._create",
    "DEFAULT_SKIP_COMPRESSION": "._create",
    "BinaryWriter": "._create",
    "CreateProgress": "._create",
    "CreateResult": "._create",
    "SkippedPath": "._create",
    "SkipPredicate": "._create",
    "create": "._create",
    "create_blob": "._create",
    "default_skip_compression": "._create",
    "PayloadDecoder": "._decode",
    "ReadPlan": "._decode",
    "decode_chunks": "._decode",
    "plan": "._decode",
    "ExtractReport": "._extract",
    "extract": "._extract",
    "ArchiveFile": "._file",
    "AsyncArchiveFile": "._file",
    "Index": "._index",
    "encode_index": "._index_writer",
    "normalize_path": "._paths",
    "ByteSource": "._source",
    "BytesSource": "._source",
    "FileSource": "._source",
    "VerifyProgress": "._steps",
    "CHUNK_SIZE_MAX": "._types",
    "CHUNK_SIZE_MIN": "._types",
    "DEFAULT_CHUNK_SIZE": "._types",
    "FEATURE_CHUNKS": "._types",
    "ChangeDetection": "._types",
    "Compression": "._types",
    "DirEntry": "._types",
    "DirInfo": "._types",
    "Entry": "._types",
    "VerifyReport": "._verify",
}
"""Each public name, by the private module defining it."""

__all__ = [
    "CHUNK_SIZE_MAX",
    "CHUNK_SIZE_MIN",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_FILE_SIZE",
    "DEFAULT_SKIP_COMPRESSION",
    "FEATURE_CHUNKS",
    "Archive",
    "ArchiveFile",
    "AsyncArchiveFile",
    "BinaryWriter",
    "BlobFile",
    "ByteSource",
    "BytesSource",
    "ChangeDetection",
    "Compression",
    "CreateProgress",
    "CreateResult",
    "DirEntry",
    "DirInfo",
    "Entry",
    "ExtractReport",
    "FileSource",
    "Index",
    "PayloadDecoder",
    "ReadPlan",
    "SkipPredicate",
    "SkippedPath",
    "VerifyProgress",
    "VerifyReport",
    "create",
    "create_blob",
    "decode_chunks",
    "default_skip_compression",
    "encode_index",
    "extract",
    "normalize_path",
    "open_file",
    "plan",
]


__getattr__, __dir__ = lazy_exports(__name__, _NAMES, __all__)
