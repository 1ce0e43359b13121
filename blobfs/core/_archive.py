"""The archive reader: an index plus a byte source, every byte verified before it is returned.

:class:`Archive` answers metadata from the in-memory :class:`~blobfs.core.Index` and reads
content through the step algorithms of ``_steps.py``/``_file.py``/``_verify.py``, driven by
``source.read_at`` (sync API) or ``await source.aread_at`` (async API, trio or asyncio). The
sync and async methods are twins over the same algorithms, not two implementations.

Two optional caches sit on the read path (ARCHITECTURE.md section 3): a block cache wraps the
source (raw, still unverified blob bytes), and a content cache holds verified content keyed by
its SHA-256 (``_content.py``), consulted and filled by every content read except
:meth:`Archive.verify`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from ..errors import FileTooLarge, SourceError
from ._aio import checkpoint, run_sync_in_thread
from ._batch import aprefetch, plan_batches, prefetch
from ._closing import Closing, SupportsClose
from ._content import ContentCache
from ._decode import Buffer
from ._file import ArchiveFile, AsyncArchiveFile
from ._index import Index
from ._prefetch import ReadaheadPool
from ._scan import ScanAhead
from ._source import ByteSource, FileSource
from ._steps import VerifyProgress, arun_steps, read_whole_steps, refetch_once, run_steps
from ._types import DirEntry, DirInfo, Entry
from ._verify import VerifyReport, verify_steps

if TYPE_CHECKING:
    from .cache import BlockCache, Cache

__all__ = ["DEFAULT_MAX_FILE_SIZE", "Archive", "BlobFile", "open_file"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_SIZE: Final = 256 << 20
"""Whole-file reads hold the file in memory; 256 MiB is the Go reference's default limit
(``file.DefaultMaxFileSize``). Streaming through :meth:`Archive.open` has no limit."""


class Archive(Closing):
    """A read-only archive: a validated index and the data blob's byte source.

    Metadata calls (``stat``, ``listdir``, ``walk``, ...) never touch the source. Content calls
    fetch only what they need and verify it: :meth:`read_file` checks the whole-file SHA-256,
    :meth:`open` verifies per chunk (chunked entries) or the whole file on first read (v1
    entries). Integrity failures raise :class:`~blobfs.errors.IntegrityError` (or its subclass
    :class:`~blobfs.errors.HashMismatch`) naming the path; source failures raise
    :class:`~blobfs.errors.SourceError`.

    Options:

    - ``cache``: a content cache (:class:`~blobfs.core.cache.Cache`, any implementation). Every
      content read looks there first and stores what it verified: v1 entries under their
      whole-file ``hash``, chunked entries chunk by chunk under their chunk hashes (whole-file
      reads too, so they share entries with random reads). Cached content is verified again
      before use; a corrupt entry is deleted (WARNING) and the content refetched from the
      source. Cache failures never fail a read. Keys are content digests, so archives sharing
      a cache share identical files.
    - ``block_cache``: the source is read through ``block_cache.wrap(source)`` (default block
      size and ``max_blocks_per_read``); :attr:`source` is then the wrapped source.
    - ``readahead``: sequential readers of chunked entries get large ranges loaded and verified
      ahead of them in a small thread pool (``_prefetch.py``), created on first use and shut
      down by :meth:`close`; so do programs opening small files in order, once they tell the
      archive with :meth:`note_open` (``_scan.py``; the mount does). False reads only what each
      call asks for.
    - ``max_file_size``: the default limit of :meth:`read_file`.

    The archive does not own ``source``: closing it is the caller's business (:class:`BlobFile`
    owns its file). :meth:`close` (or ``with``) stops the readahead threads; an archive used
    after it still reads, without readahead.

    Concurrency: an archive may be used from any number of threads and tasks at once (provided
    its source allows concurrent reads, as every blobfs source must, including from the
    readahead threads). File objects from :meth:`open`/:meth:`aopen` are single-user.
    :meth:`close` must not race reads.
    """

    __slots__ = ("_cache", "_index", "_max_file_size", "_owned", "_pool", "_scan", "_source")

    def __init__(
        self,
        index: Index | bytes,
        source: ByteSource,
        *,
        cache: Cache | None = None,
        block_cache: BlockCache | None = None,
        readahead: bool = True,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> None:
        if max_file_size < 0:
            raise ValueError("max_file_size must be >= 0 (0 means unlimited)")
        self._index = index if isinstance(index, Index) else Index(index)
        self._source = source if block_cache is None else block_cache.wrap(source)
        self._cache = ContentCache.of(cache)
        self._pool = ReadaheadPool() if readahead else None
        self._scan = ScanAhead(self._index, self._source, self._cache, self._pool)
        self._max_file_size = max_file_size
        self._owned: list[SupportsClose] = []
        if self._index.data_hash and source.size != self._index.data_size:
            # Not fatal: files whose payload is present still read (and verify); verify()
            # reports it.
            logger.warning(
                "data source %s is %d bytes, the index records data_size %d",
                source.source_id,
                source.size,
                self._index.data_size,
            )

    # ------------------------------------------------------------------ metadata

    @property
    def index(self) -> Index:
        return self._index

    @property
    def source(self) -> ByteSource:
        """The source reads go through (the block-cache wrapper when one is configured)."""
        return self._source

    @property
    def cache(self) -> Cache | None:
        """The content cache, or None."""
        return None if self._cache is None else self._cache.cache

    @property
    def cache_dropped(self) -> int | None:
        """Verified content the cache did not store because the write-behind queue was full
        (:meth:`write_cache_behind`: the cache's disk was slower than the reads); None without
        a content cache."""
        return None if self._cache is None else self._cache.dropped

    def own(self, resource: SupportsClose) -> None:
        """Close ``resource`` (a source, a cache, a client) when the archive closes, the last
        owned first. Whoever builds an archive over resources it opened hands them over here."""
        self._owned.append(resource)

    def note_open(self, position: int) -> None:
        """Tell the archive a program opened the file at ``position`` (an
        :meth:`Index.position`): a program opening files in that order gets the files after
        them loaded in batches ahead of it (``_scan.py``), each verified, and handed to
        :meth:`open`'s file objects. Cheap, no I/O; a hint, never an error."""
        self._scan.opened(position)

    def loaded_ahead(self, entry: Entry) -> Buffer | None:
        """The verified content of ``entry`` (from this archive's index) if loading ahead
        (:meth:`note_open`) has it in memory now, handed over: a later read of the file no
        longer finds it there. None when it is not loaded (yet); never waits, no I/O. The mount
        gives such content to the kernel's page cache when the file is opened."""
        return self._scan.take(entry)

    def write_cache_behind(self) -> None:
        """Store content in the content cache from a writer thread instead of the reading
        thread (``ContentCache.write_behind``): reads answer before their content reached the
        disk, and lookups see what is waiting. :meth:`close` stores what is left. For
        long-lived readers (the mount); no-op without a content cache."""
        if self._cache is not None:
            self._cache.write_behind()

    def close(self) -> None:
        """Stop the readahead threads (queued groups are dropped), store what waits for the
        content cache, and close what the archive owns (:meth:`own`); idempotent. The source is
        closed only if it was handed over. Reads afterwards still work, without readahead, when
        the source is still open."""
        self._scan.close()
        if self._pool is not None:
            self._pool.close()
        if self._cache is not None:
            self._cache.stop_write_behind()
        owned, self._owned = self._owned, []
        for resource in reversed(owned):
            resource.close()

    @property
    def max_file_size(self) -> int:
        """Default limit of :meth:`read_file` (0 = unlimited)."""
        return self._max_file_size

    def __len__(self) -> int:
        """Number of files."""
        return len(self._index)

    def lookup(self, path: str) -> Entry | None:
        """The file at ``path``, or None (also for directories)."""
        return self._index.lookup(path)

    def entry(self, path: str) -> Entry:
        """The file at ``path``; :class:`~blobfs.errors.NotFound` / ``IsADirectory`` otherwise."""
        return self._index.entry(path)

    def stat(self, path: str) -> Entry | DirInfo:
        return self._index.stat(path)

    def listdir(self, path: str = "") -> list[DirEntry]:
        return self._index.listdir(path)

    def walk(self, path: str = "") -> Iterator[Entry]:
        return self._index.walk(path)

    def exists(self, path: str) -> bool:
        return self._index.exists(path)

    def is_dir(self, path: str) -> bool:
        return self._index.is_dir(path)

    def is_file(self, path: str) -> bool:
        return self._index.lookup(path) is not None

    # ------------------------------------------------------------------ content, sync

    def _whole_file_entry(self, path: str, max_file_size: int | None) -> Entry:
        entry = self._index.entry(path)
        limit = self._max_file_size if max_file_size is None else max_file_size
        if limit:
            size = max(entry.original_size, entry.data_size)
            if size > limit:
                raise FileTooLarge(entry.path, size, limit)
        return entry

    def read_file(self, path: str, *, max_file_size: int | None = None) -> bytes:
        """The whole content of file ``path``, verified against its SHA-256.

        Raises :class:`~blobfs.errors.FileTooLarge` when the content or its payload exceeds
        ``max_file_size`` (default: the archive's; 0 = unlimited), before fetching anything.
        With a content cache, cached content serves the read (after verification) and fetched
        content is stored (see the class docstring for the keys).
        """
        entry = self._whole_file_entry(path, max_file_size)
        steps = refetch_once(
            self._source,
            entry,
            lambda: read_whole_steps(
                entry, self._source.size, self._cache, self._pool, self._source
            ),
        )
        return run_steps(steps, self._source)

    def open(self, path: str) -> ArchiveFile:
        """A seekable binary file object over file ``path`` (no size limit)."""
        return self.open_entry(self._index.entry(path))

    def open_entry(self, entry: Entry) -> ArchiveFile:
        """:meth:`open` of a file whose entry the caller has (from this archive's index): no
        lookup by path."""
        return ArchiveFile(entry, self._source, cache=self._cache, pool=self._pool, scan=self._scan)

    def prefetch(self, path: str = "") -> int:
        """Load the files at or below ``path`` into the content cache, with few range requests.

        Files not cached yet whose payloads are adjacent in the data blob (as a directory's
        files are) are fetched together, up to 8 MiB per request, several requests at once;
        each file is verified before it is stored. For directories of small files: reading
        them afterwards costs no request. Skipped: files already cached, empty files and
        payloads over 8 MiB (large files stream with readahead). A hint, never an error for
        content: a file that fails is left out (reading it reports why). Returns the number of
        files stored; 0 without a content cache (there is nowhere to keep them).
        ``NotFound`` if ``path`` does not exist.
        """
        self._index.stat(path)  # NotFound now, whatever happens next
        if self._cache is None:
            return 0
        batches = plan_batches(self._index.walk(path), self._cache, self._source.size)
        return prefetch(batches, self._source, self._cache, self._pool)

    def verify(self, progress: Callable[[VerifyProgress], object] | None = None) -> VerifyReport:
        """Check the data blob against ``data_size``/``data_hash`` and every file against its
        hashes, collecting failures instead of stopping at the first (see ``_verify.py``).

        Always reads the source, never the content cache: it checks the archive, not the cache
        (which is neither consulted nor filled). ``progress`` is called (in the calling thread)
        with a :class:`VerifyProgress` as the work advances.
        """
        return run_steps(verify_steps(self._index, self._source.size), self._source, progress)

    # ------------------------------------------------------------------ content, async

    async def aread_file(self, path: str, *, max_file_size: int | None = None) -> bytes:
        """Async twin of :meth:`read_file`."""
        entry = self._whole_file_entry(path, max_file_size)
        steps = refetch_once(
            self._source,
            entry,
            lambda: read_whole_steps(
                entry, self._source.size, self._cache, self._pool, self._source
            ),
        )
        return await arun_steps(steps, self._source)

    async def aopen(self, path: str) -> AsyncArchiveFile:
        """Async twin of :meth:`open`.

        ``async with await archive.aopen(path) as f: data = await f.read()``
        """
        entry = self._index.entry(path)
        return AsyncArchiveFile(
            entry, self._source, cache=self._cache, pool=self._pool, scan=self._scan
        )

    async def aprefetch(self, path: str = "") -> int:
        """Async twin of :meth:`prefetch` (cache I/O and fetches off the event loop)."""
        self._index.stat(path)
        if self._cache is None:
            await checkpoint()
            return 0
        entries = self._index.walk(path)  # walked in the worker thread, with the cache lookups
        batches = await run_sync_in_thread(plan_batches, entries, self._cache, self._source.size)
        return await aprefetch(batches, self._source, self._cache, self._pool)

    async def averify(
        self, progress: Callable[[VerifyProgress], object] | None = None
    ) -> VerifyReport:
        """Async twin of :meth:`verify` (source only, never the cache); ``progress`` is called
        in the calling task."""
        steps = verify_steps(self._index, self._source.size)
        return await arun_steps(steps, self._source, progress)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} files={len(self._index)} source={self._source!r}>"


class BlobFile(Archive):
    """An archive read from local ``index`` and ``data`` files; owns (and closes) the data file.

    Options as for :class:`Archive`. Concurrency: as :class:`Archive`; :meth:`close` must not
    race reads.
    """

    __slots__ = ("_file_source",)

    def __init__(
        self,
        index: Index | bytes,
        source: FileSource,
        *,
        cache: Cache | None = None,
        block_cache: BlockCache | None = None,
        readahead: bool = True,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> None:
        super().__init__(
            index,
            source,
            cache=cache,
            block_cache=block_cache,
            readahead=readahead,
            max_file_size=max_file_size,
        )
        self._file_source = source
        self.own(source)

    @property
    def data_path(self) -> str:
        return self._file_source.path


def open_file(
    index_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    *,
    cache: Cache | None = None,
    block_cache: BlockCache | None = None,
    readahead: bool = True,
    max_file_size: int = DEFAULT_MAX_FILE_SIZE,
) -> BlobFile:
    """Open a local archive (``index.blob`` + ``data.blob``).

    The index is validated on open (:class:`~blobfs.errors.CorruptIndex`); a missing or
    unreadable file raises :class:`~blobfs.errors.SourceError` naming it. The data source's id is
    ``"sha256:<data_hash>"`` when the index records the data hash, like the Go reference.
    ``cache``, ``block_cache``, ``readahead``, ``max_file_size``: as for :class:`Archive`.
    """
    path = os.path.abspath(os.fspath(index_path))
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise SourceError(f"{path}: cannot read index file: {e.strerror or e}") from e
    index = Index(raw)
    source = FileSource(data_path, data_hash=index.data_hash or None)
    try:
        return BlobFile(
            index,
            source,
            cache=cache,
            block_cache=block_cache,
            readahead=readahead,
            max_file_size=max_file_size,
        )
    except BaseException:
        source.close()
        raise
