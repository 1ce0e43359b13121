"""The engine of ``create``: opens, reads, hashes, compresses and writes the walked files.

Concurrency contract: the calling thread takes the files in path order, reports progress for
each before it is opened, opens directories, applies the skip predicates and writes every byte.
A thread pool works ahead of it: it opens, reads, hashes and compresses batches of small files,
or compresses the chunks of one large file that the calling thread reads. zstd, hashlib and
system calls release the GIL, so two cores stream a compressible file at a few hundred MB/s.
Nothing user-supplied (predicates, progress, writers) runs off the calling thread.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import zstandard

from ..errors import CreateError, FileChanged
from ._create_sink import DataOut, Payload
from ._create_walk import FILE_FLAGS, SYMLINK, FileRef, SkippedPath, TreeOpener
from ._types import Compression, Entry

__all__ = ["CreateProgress", "Creator", "Options", "SkipPredicate"]

logger = logging.getLogger(__name__)


_READ_BLOCK = 1 << 20
"""Read size when a file streams without chunks: large enough for few syscalls, small enough
that a streamed file costs 1 MiB of memory."""

_WHOLE_FILE_LIMIT = 4 << 20
"""Files without a chunk table up to this size are read whole and compressed in one call by a
worker (fastest); larger ones stream through the calling thread so memory stays bounded."""

_BATCH_FILES = 64
_BATCH_BYTES = 4 << 20
"""Small files per worker job: one job costs ~10 us of executor overhead, so batching keeps a
tree of 4 KiB files from being bound by the thread pool instead of by I/O and zstd."""

_MAX_PENDING = 4
"""Jobs (batches or large files) queued ahead of the writer: keeps two workers busy while
bounding memory (~4 x 8 MiB of payloads) and the directory descriptors kept for them."""

_CHUNK_BUDGET = 32 << 20
"""Uncompressed bytes of one file's chunks in flight; at least 2, at most 8 chunks."""

SkipPredicate = Callable[[str, int], bool]
"""``(archive path, size) -> True`` to store the file raw even when zstd is chosen. Called from
the calling thread, before the file is opened: ``size`` is the one the walk saw."""


@dataclass(frozen=True, slots=True)
class CreateProgress:
    """One progress report. ``enumerating`` comes once, before the walk (all counts 0); then
    ``writing`` comes once per file, from the calling thread, *before* the file is opened, and
    a last time with ``path=""`` when every payload is written. ``files_done``/``bytes_done``
    count files completely written and their uncompressed sizes (they lag the file named: files
    are read ahead of the writer); ``bytes_total`` sums the sizes seen by the walk. An exception
    raised by the callback aborts the creation."""

    stage: Literal["enumerating", "writing"]
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    path: str


@dataclass(frozen=True, slots=True)
class Options:
    compression: Compression
    skip: tuple[SkipPredicate, ...]
    strict: bool
    max_files: int
    chunk_size: int
    zstd_level: int
    progress: Callable[[CreateProgress], object] | None


# Test seam: called with (path, fd) right after a file was opened and checked, before any byte of
# it is read (from a worker thread for small files). Lets tests change a file at that moment.
_test_after_open: Callable[[str, int], None] | None = None


@dataclass(slots=True)
class _Todo:
    """A file queued for reading: its directory descriptor, its name, whether to compress."""

    ref: FileRef
    dir_fd: int
    name: bytes
    compress: bool


@dataclass(slots=True)
class _Opened:
    todo: _Todo
    fd: int
    st: os.stat_result


@dataclass(slots=True)
class _Encoded:
    st: os.stat_result
    payload: bytes
    digest: bytes
    compression: Compression


# A worker's answer for one small file: its payload, "skip" (it became a symlink), or "big" (it
# grew past the in-memory limit since the walk: the calling thread streams it instead).
_Result = _Encoded | Literal["skip", "big"]


@dataclass(slots=True)
class _Job:
    """A batch of small files for the pool, or (``future is None``) one large file for the
    calling thread. ``retired`` directory descriptors are closed once the job is done: no job
    from this one on uses them, and the jobs before it are finished by then."""

    todos: list[_Todo]
    future: Future[list[_Result]] | None
    retired: list[int]


def _read_exact(fd: int, n: int, path: str) -> bytes:
    """Up to ``n`` bytes from ``fd``; fewer only at end of file."""
    try:
        data = os.read(fd, n)
        if len(data) == n or not data:
            return data
        parts = [data]
        got = len(data)
        while got < n:
            more = os.read(fd, n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)
    except OSError as exc:
        raise CreateError(f"cannot read {path}: {exc.strerror}") from exc


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _shrank(path: str, got: int, size: int) -> FileChanged:
    return FileChanged(path, f"file shrank while being read: {got} of {size} bytes")


def _check_unchanged(fd: int, before: os.stat_result, path: str) -> None:
    """Strict change detection after reading: size, mtime and mode as at open."""
    try:
        now = os.fstat(fd)
    except OSError as exc:
        raise CreateError(f"cannot stat {path}: {exc.strerror}") from exc
    if now.st_size != before.st_size:
        raise FileChanged(path, f"size changed from {before.st_size} to {now.st_size}")
    if now.st_mtime_ns != before.st_mtime_ns:
        raise FileChanged(path, "modification time changed")
    if now.st_mode != before.st_mode:
        raise FileChanged(path, "mode changed")


class Creator:
    """One run of ``create`` over an enumerated tree (see the module docstring for threads)."""

    def __init__(self, opts: Options, out: DataOut, opener: TreeOpener, pool: ThreadPoolExecutor):
        self._o = opts
        self._out = out
        self._opener = opener
        self._pool = pool
        self._local = threading.local()
        self._chunk_window = max(2, min(8, _CHUNK_BUDGET // max(opts.chunk_size, 1)))
        self.entries: list[Entry] = []
        self.skipped: list[SkippedPath] = []
        self._files_total = 0
        self._bytes_total = 0
        self._bytes_done = 0
        self._unclosed: list[int] = []

    def _zstd(self) -> zstandard.ZstdCompressor:
        # Compressors are not thread-safe: one per thread. Fixed parameters, no threads inside
        # zstd, no checksum: the frames depend only on the input, so output is reproducible.
        c: zstandard.ZstdCompressor | None = getattr(self._local, "zstd", None)
        if c is None:
            c = zstandard.ZstdCompressor(
                level=self._o.zstd_level, write_checksum=False, write_content_size=True, threads=0
            )
            self._local.zstd = c
        return c

    def _report(self, path: str) -> None:
        if self._o.progress is not None:
            self._o.progress(
                CreateProgress(
                    "writing",
                    len(self.entries),
                    self._files_total,
                    self._bytes_done,
                    self._bytes_total,
                    path,
                )
            )

    def _small(self, size: int) -> bool:
        cs = self._o.chunk_size
        return size <= _WHOLE_FILE_LIMIT and (cs == 0 or size <= cs)

    # ---------------------------------------------------------------- the calling thread

    def run(self, files: list[FileRef]) -> None:
        """Archive ``files`` (sorted) in order. Call :meth:`close` after the pool shut down."""
        self._files_total = len(files)
        self._bytes_total = sum(f.size for f in files)
        # Hot loop for trees of small files (tens of microseconds of Python per file matter):
        # attribute lookups hoisted, no helper calls on the common path.
        progress = self._o.progress
        skips = self._o.skip
        zstd = self._o.compression == Compression.ZSTD
        parent = self._opener.parent
        small = self._small
        out = self._out
        pending: deque[_Job] = deque()
        nxt = 0
        try:
            while nxt < len(files) or pending:
                batch: list[_Todo] = []
                batch_bytes = 0
                while nxt < len(files) and len(pending) < _MAX_PENDING:
                    ref = files[nxt]
                    nxt += 1
                    if progress is not None:
                        self._report(ref.path)
                    dir_fd, name = parent(ref.raw)
                    compress = zstd and not any(skip(ref.path, ref.size) for skip in skips)
                    todo = _Todo(ref, dir_fd, name, compress)
                    if small(ref.size):
                        batch.append(todo)
                        batch_bytes += ref.size
                        if len(batch) >= _BATCH_FILES or batch_bytes >= _BATCH_BYTES:
                            pending.append(self._submit(batch))
                            batch, batch_bytes = [], 0
                    else:
                        if batch:
                            pending.append(self._submit(batch))
                            batch, batch_bytes = [], 0
                        pending.append(_Job([todo], None, self._opener.retire()))
                if batch:
                    pending.append(self._submit(batch))
                job = pending[0]
                if job.future is None:
                    self._big(job.todos[0])
                else:
                    for todo, res in zip(job.todos, job.future.result(), strict=True):
                        if isinstance(res, _Encoded):
                            offset = out.offset
                            out.write(res.payload)
                            size = len(res.payload)
                            self._entry(todo, res.st, offset, size, res.digest, res.compression)
                        elif res == "big":
                            self._big(todo)
                        else:
                            self._skip(todo)
                pending.popleft()
                for fd in job.retired:
                    os.close(fd)
        finally:
            # After an error, jobs may still run: their directories close in close().
            for job in pending:
                if job.future is not None:
                    job.future.cancel()
                self._unclosed.extend(job.retired)
        self._report("")

    def close(self) -> None:
        for fd in self._unclosed:
            os.close(fd)
        self._unclosed.clear()

    def _submit(self, batch: list[_Todo]) -> _Job:
        return _Job(batch, self._pool.submit(self._encode_batch, batch), self._opener.retire())

    def _skip(self, todo: _Todo) -> None:
        logger.debug("skipping %s: it became a symlink", todo.ref.path)
        self.skipped.append(SkippedPath(todo.ref.path, SYMLINK))

    def _entry(
        self,
        todo: _Todo,
        st: os.stat_result,
        offset: int,
        data_size: int,
        digest: bytes,
        compression: Compression,
        chunk_hashes: bytes = b"",
        frame_offsets: tuple[int, ...] = (),
    ) -> None:
        self.entries.append(
            Entry(
                path=todo.ref.path,
                data_offset=offset,
                data_size=data_size,
                original_size=st.st_size,
                hash=digest,
                mode=st.st_mode & 0o777,
                uid=st.st_uid,
                gid=st.st_gid,
                mtime_ns=st.st_mtime_ns,
                compression=compression,
                chunk_size=self._o.chunk_size if chunk_hashes else 0,
                chunk_hashes=chunk_hashes,
                frame_offsets=frame_offsets,
            )
        )
        self._bytes_done += st.st_size

    def _big(self, todo: _Todo) -> None:
        opened = self._open(todo)
        if opened is None:
            self._skip(todo)
            return
        try:
            self._encode_big(_Opened(todo, *opened))
        finally:
            os.close(opened[0])

    def _encode_big(self, op: _Opened) -> None:
        """A chunked or large file, streamed by the calling thread (chunks compressed by the
        pool). A zstd payload that does not shrink the file is discarded and the file is
        re-read raw; the second read must hash the same, or the file changed."""
        size = op.st.st_size
        chunked = 0 < self._o.chunk_size < size
        offset = self._out.offset
        if not (op.todo.compress and size > 0):
            digest, chunks = self._copy_raw(op, chunked)
            self._finish(op)
            self._entry(op.todo, op.st, offset, size, digest, Compression.NONE, chunks)
            return
        payload = self._out.payload()
        try:
            frames: tuple[int, ...] = ()
            chunks = b""
            if chunked:
                digest, chunks, frames = self._compress_chunks(op, payload)
            else:
                digest = self._compress_stream(op, payload)
            if payload.size < size:
                self._finish(op)
                data_size = payload.size
                payload.commit()
                zstd = Compression.ZSTD
                self._entry(op.todo, op.st, offset, data_size, digest, zstd, chunks, frames)
                return
            payload.discard()
        finally:
            payload.close()
        try:
            os.lseek(op.fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise CreateError(f"cannot read {op.todo.ref.path}: {exc.strerror}") from exc
        again, _ = self._copy_raw(op, False)
        if again != digest:
            raise FileChanged(op.todo.ref.path, "content changed between two reads")
        self._finish(op)
        self._entry(op.todo, op.st, offset, size, digest, Compression.NONE, chunks)

    def _finish(self, op: _Opened) -> None:
        if self._o.strict:
            _check_unchanged(op.fd, op.st, op.todo.ref.path)

    def _copy_raw(self, op: _Opened, chunked: bool) -> tuple[bytes, bytes]:
        """Stream the file raw to the data blob: ``(file hash, chunk hashes or b"")``.

        Chunk hashes are computed by the pool while this thread hashes the file and the data
        blob: three SHA-256 passes over every byte, spread over two cores."""
        size = op.st.st_size
        path = op.todo.ref.path
        block = self._o.chunk_size if chunked else _READ_BLOCK
        whole = hashlib.sha256()
        inflight: deque[Future[bytes]] = deque()
        chunk_hashes: list[bytes] = []
        done = 0
        while done < size:
            n = min(block, size - done)
            data = _read_exact(op.fd, n, path)
            if len(data) < n:
                raise _shrank(path, done + len(data), size)
            if chunked:
                inflight.append(self._pool.submit(_sha256, data))
                if len(inflight) >= self._chunk_window:
                    chunk_hashes.append(inflight.popleft().result())
            whole.update(data)
            self._out.write(data)
            done += n
        chunk_hashes.extend(f.result() for f in inflight)
        return whole.digest(), b"".join(chunk_hashes)

    def _compress_chunks(
        self, op: _Opened, payload: Payload
    ) -> tuple[bytes, bytes, tuple[int, ...]]:
        """One independent zstd frame per chunk, compressed in parallel, written in order."""
        size = op.st.st_size
        path = op.todo.ref.path
        cs = self._o.chunk_size
        whole = hashlib.sha256()
        inflight: deque[Future[tuple[bytes, bytes]]] = deque()
        chunk_hashes: list[bytes] = []
        frames: list[int] = []

        def drain() -> None:
            digest, frame = inflight.popleft().result()
            frames.append(payload.size)
            chunk_hashes.append(digest)
            payload.write(frame)

        done = 0
        while done < size:
            n = min(cs, size - done)
            data = _read_exact(op.fd, n, path)
            if len(data) < n:
                raise _shrank(path, done + len(data), size)
            inflight.append(self._pool.submit(self._hash_and_compress, data))
            whole.update(data)  # after submitting, so a worker starts on the chunk meanwhile
            done += n
            if len(inflight) >= self._chunk_window:
                drain()
        while inflight:
            drain()
        return whole.digest(), b"".join(chunk_hashes), tuple(frames)

    def _compress_stream(self, op: _Opened, payload: Payload) -> bytes:
        """One zstd frame (with content size) for a large file without a chunk table."""
        size = op.st.st_size
        path = op.todo.ref.path
        whole = hashlib.sha256()
        cobj = self._zstd().compressobj(size=size)
        done = 0
        while done < size:
            n = min(_READ_BLOCK, size - done)
            data = _read_exact(op.fd, n, path)
            if len(data) < n:
                raise _shrank(path, done + len(data), size)
            whole.update(data)
            out = cobj.compress(data)
            if out:
                payload.write(out)
            done += n
        payload.write(cobj.flush())
        return whole.digest()

    # ---------------------------------------------------------------- any thread

    def _open(self, todo: _Todo) -> tuple[int, os.stat_result] | None:
        """Open and check one file; ``None`` when it became a symlink (skipped, as in Go)."""
        path = todo.ref.path
        try:
            fd = os.open(todo.name, FILE_FLAGS, dir_fd=todo.dir_fd)
        except FileNotFoundError:
            raise FileChanged(path, "file disappeared") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink, which O_NOFOLLOW refuses
                if self._o.strict:
                    raise FileChanged(path, "replaced by a symbolic link") from None
                return None
            raise CreateError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FileChanged(path, "no longer a regular file")
            if self._o.strict and (st.st_dev, st.st_ino) != (todo.ref.dev, todo.ref.ino):
                raise FileChanged(path, "replaced by another file")
            if _test_after_open is not None:
                _test_after_open(path, fd)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    # ---------------------------------------------------------------- worker threads

    def _hash_and_compress(self, chunk: bytes) -> tuple[bytes, bytes]:
        return hashlib.sha256(chunk).digest(), self._zstd().compress(chunk)

    def _encode_batch(self, todos: list[_Todo]) -> list[_Result]:
        return [self._encode_small(todo) for todo in todos]

    def _encode_small(self, todo: _Todo) -> _Result:
        """Open, read whole, hash and (if that shrinks it) compress one small file."""
        opened = self._open(todo)
        if opened is None:
            return "skip"
        fd, st = opened
        path = todo.ref.path
        try:
            size = st.st_size
            if not self._small(size):
                return "big"
            data = _read_exact(fd, size, path)
            if len(data) < size:
                raise _shrank(path, len(data), size)
            if self._o.strict:
                _check_unchanged(fd, st, path)
        finally:
            os.close(fd)
        digest = hashlib.sha256(data).digest()
        if todo.compress and size:
            packed = self._zstd().compress(data)
            if len(packed) < size:
                return _Encoded(st, packed, digest, Compression.ZSTD)
        return _Encoded(st, data, digest, Compression.NONE)
