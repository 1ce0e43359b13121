"""Extracting many files at once: the data blob read once, in order, in large ranges.

Extracting file by file costs one range request per file: 10,000 requests for a 10,000-file
archive, each costing a registry a few milliseconds, so a 1 GiB pull took 80 to 100 s where
``skopeo copy`` downloads the same blob in 9 s (docs/benchmarks.md). :func:`extract` instead
cuts the payloads of the files out of the data blob in offset order:

- **Plan** (calling thread): every file's payload is split into pieces of at most
  ``range_size`` bytes (at chunk boundaries for chunked entries, when chunks are that small);
  pieces that follow each other in the blob (or overlap: files sharing one payload) are grouped
  into ranges of at most ``range_size`` bytes. Files that exist already are skipped here (unless
  ``force``), before anything is fetched.
- **Fetch and write** (``workers`` threads): each range is one ``source.read_at`` (``workers``
  of them in flight, in blob order), then each of its pieces is decoded, verified and written to
  its file's temporary file in the same thread, off the calling thread and in parallel with the
  other ranges' transfers (SHA-256, zstd and file writes release the GIL). The pieces of one
  file that spans ranges are applied in order (a later range waits for the earlier one's piece
  of that file; ranges start in blob order, so the wait always ends).
- **Verify, then rename**: a file is renamed into place only after its last piece verified
  (v1 entries: the whole-file SHA-256 by :class:`~blobfs.core._decode.PayloadDecoder`; chunked
  entries: each chunk against the chunk table before it is written). Its archived mode bits
  and mtime are applied first (``preserve``). Until then it is a ``.blobfs-<hex>`` temporary
  file (``_dest.py``: jailed, atomic).

The first failure (a source error, a file that does not verify, a file-system error) stops the
extraction: no new range starts, the ranges after the failed one stop at their next piece, the
ones before it finish (so the files written are all those that end before the failure in blob
order, whatever the timing), every temporary file is removed, and the error of the earliest
failed range is raised. Memory: about ``workers`` ranges of payload plus zstd output buffers.

Byte sources serve raw, unverified bytes; nothing unverified is ever renamed into place. The
content cache is not used (a full extraction writes every file out anyway).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from ..errors import IntegrityError
from ._decode import PayloadDecoder, check_extent, decode_chunk
from ._dest import Jail, PendingFile
from ._source import ByteSource
from ._steps import read_buffer
from ._types import Compression, Entry

__all__ = ["EXTRACT_RANGE", "EXTRACT_WORKERS", "ExtractReport", "extract"]

logger = logging.getLogger(__name__)

EXTRACT_RANGE: Final = 16 << 20
"""Bytes per range request: a registry range request costs a few milliseconds whatever its size,
and 16 MiB ranges over a few connections carry 500+ MB/s where 4 MiB ones carry about 400
(FIELD-NOTES.md), while ``workers`` of them bound the memory held."""

EXTRACT_WORKERS: Final = 4
"""Ranges in flight: one connection waits on the network while the others hash and write; 4
beat 1 and 8 for 8-16 MiB ranges against a registry (FIELD-NOTES.md)."""

_GAP: Final = 64 << 10
"""Unused bytes between two payloads read rather than starting a new range: less than a
request costs (blobfs writes payloads back to back; other writers may pad)."""

_NEVER: Final = 1 << 62  # "no task failed" for _Extraction.stop_after

_EMPTY_BATCH: Final = 512
"""Empty files created per task (they need no bytes, only a verified empty hash)."""


@dataclass(slots=True)
class ExtractReport:
    """What :func:`extract` did: files written, and files skipped because they existed."""

    written: list[Entry] = field(default_factory=list)
    skipped: list[Entry] = field(default_factory=list)

    @property
    def written_bytes(self) -> int:
        return sum(e.original_size for e in self.written)


class _Stop(Exception):
    """An earlier task failed: this one stops (its error is not the one reported)."""


class _Job:
    """One file being extracted: its temporary file and verification state.

    Pieces arrive in order (``next_piece``, guarded by the extraction's condition); the
    thread applying a piece owns the job until it bumps ``next_piece``.
    """

    __slots__ = ("_buf", "_chunk", "_dec", "entry", "next_piece", "out", "parts")

    def __init__(self, entry: Entry, parts: tuple[str, ...]) -> None:
        self.entry = entry
        self.parts = parts
        self.next_piece = 0
        self.out: PendingFile | None = None
        self._dec: PayloadDecoder | None = None
        self._chunk = 0  # chunked entries: the next chunk to verify
        self._buf = bytearray()  # chunked entries: a chunk's payload split across pieces

    def begin(self, jail: Jail, private: bool) -> None:
        self.out = PendingFile(jail, self.parts, private=private)
        entry = self.entry
        if not entry.chunked:
            out = self.out
            # Raw payloads are hashed in place and written from the fetched buffer; zstd ones
            # are decoded into the file as they come (unverified until finish, like any
            # content of the temporary file).
            sink = None if entry.compression == Compression.NONE else out.write
            self._dec = PayloadDecoder.for_entry(entry, sink=sink)

    def feed(self, piece: memoryview) -> int:
        """Apply the next piece of the payload; the content bytes written."""
        out = self.out
        assert out is not None
        dec = self._dec
        if dec is not None:
            before = dec.produced
            dec.feed(piece)
            if self.entry.compression == Compression.NONE:
                out.write(piece)
            return dec.produced - before
        return self._feed_chunks(piece, out)

    def _feed_chunks(self, piece: memoryview, out: PendingFile) -> int:
        entry = self.entry
        written = 0
        if self._buf:
            self._buf += piece
            piece = memoryview(bytes(self._buf))
            self._buf.clear()
        pos = 0
        while self._chunk < entry.num_chunks:
            _, n = entry.chunk_payload(self._chunk)
            if len(piece) - pos < n:
                break
            content = decode_chunk(entry, self._chunk, piece[pos : pos + n])
            out.write(content)
            written += len(content)
            pos += n
            self._chunk += 1
        if pos < len(piece):
            if self._chunk >= entry.num_chunks:
                raise IntegrityError(entry.path, "payload runs past the last chunk")
            self._buf += piece[pos:]
        return written

    def finish(self, preserve: bool) -> None:
        """Verify what remains to verify and rename the file into place (with its archived
        mode bits and mtime when ``preserve``)."""
        entry = self.entry
        if self._dec is not None:
            self._dec.finish()
        elif self._buf or self._chunk != entry.num_chunks:
            raise IntegrityError(entry.path, "payload ends inside a chunk")
        out = self.out
        assert out is not None
        if preserve:
            out.commit(entry.mode, entry.mtime_ns)
        else:
            out.commit()

    def abort(self) -> None:
        if self.out is not None:
            self.out.abort()


@dataclass(slots=True)
class _Piece:
    """Payload bytes ``[start, end)`` of the data blob: piece ``index`` of ``job``'s file."""

    job: _Job
    start: int
    end: int
    index: int
    last: bool


@dataclass(slots=True)
class _Task:
    """One range request (``length`` 0: none) and the pieces it serves, in blob order, or a
    batch of empty files (``empties``)."""

    offset: int
    length: int
    pieces: list[_Piece] = field(default_factory=list)
    empties: list[_Job] = field(default_factory=list)
    seq: int = 0
    """Position in the task list (set by :func:`plan_tasks`)."""


def _cuts(entry: Entry, range_size: int) -> list[tuple[int, int]]:
    """``entry``'s payload as ``[start, end)`` pieces of at most ``range_size`` bytes, cut at
    chunk boundaries for chunked entries (a chunk larger than ``range_size`` is one piece; the
    index guarantees increasing frame offsets)."""
    start, end = entry.data_offset, entry.data_offset + entry.data_size
    if entry.data_size <= range_size:
        return [(start, end)]
    if not entry.chunked:
        return [(o, min(o + range_size, end)) for o in range(start, end, range_size)]
    out = []
    for k in range(1, entry.num_chunks):
        at, length = entry.chunk_payload(k)
        if at + length - start > range_size:
            out.append((start, at))
            start = at
    out.append((start, end))
    return out


def plan_tasks(
    jobs: Iterable[_Job], source_size: int, range_size: int = EXTRACT_RANGE
) -> list[_Task]:
    """The tasks serving ``jobs``: the empty files in batches, then the range requests in blob
    order."""
    pieces: list[_Piece] = []
    empties: list[_Job] = []
    for job in jobs:
        entry = job.entry
        if entry.data_size == 0:
            empties.append(job)
            continue
        check_extent(entry, source_size)
        cuts = _cuts(entry, range_size)
        for i, (start, end) in enumerate(cuts):
            pieces.append(_Piece(job, start, end, i, i == len(cuts) - 1))
    pieces.sort(key=lambda p: (p.start, p.end))
    tasks: list[_Task] = []
    task: _Task | None = None
    end = 0
    for p in pieces:
        if (
            task is not None
            and p.start <= end + _GAP
            and max(end, p.end) - task.offset <= range_size
        ):
            end = max(end, p.end)
            task.length = end - task.offset
        else:
            task = _Task(p.start, p.end - p.start)
            tasks.append(task)
            end = p.end
        task.pieces.append(p)
    # Empty files first: they need no bytes, so they are never held up behind a failed range.
    batches = [
        _Task(0, 0, empties=empties[i : i + _EMPTY_BATCH])
        for i in range(0, len(empties), _EMPTY_BATCH)
    ]
    tasks = batches + tasks
    for seq, task in enumerate(tasks):
        task.seq = seq
    return tasks


class _Extraction:
    """The shared state of one :func:`extract` run (see the module docstring)."""

    def __init__(self, source: ByteSource, root: str | os.PathLike[str], preserve: bool) -> None:
        self.source = source
        self.root = root
        self.preserve = preserve
        self.cond = threading.Condition()
        self.stop_after = _NEVER
        """Tasks after this one stop (one failed; -1: all stop)."""
        self._local = threading.local()
        self._jails: list[Jail] = []

    def jail(self) -> Jail:
        jail: Jail | None = getattr(self._local, "jail", None)
        if jail is None:
            jail = Jail(self.root)
            self._local.jail = jail
            with self.cond:
                self._jails.append(jail)
        return jail

    def close_jails(self) -> None:
        for jail in self._jails:
            jail.close()
        self._jails.clear()

    def fail(self, seq: int = -1) -> None:
        """Task ``seq`` failed: the tasks after it stop, the ones before finish (so what is
        written is everything before the failure, whatever the timing); -1 stops all."""
        with self.cond:
            self.stop_after = min(self.stop_after, seq)
            self.cond.notify_all()

    def _check(self, task: _Task) -> None:
        if task.seq > self.stop_after:
            raise _Stop

    def run(self, task: _Task) -> tuple[int, list[Entry]]:
        """Fetch and apply one task (a worker thread); the content bytes written and the files
        renamed into place."""
        try:
            return self._run(task)
        except _Stop:
            raise
        except BaseException:
            self.fail(task.seq)
            raise

    def _wait_turn(self, task: _Task, job: _Job, index: int) -> None:
        """Wait until piece ``index - 1`` of ``job`` was applied (by an earlier task)."""
        with self.cond:
            while job.next_piece != index and task.seq <= self.stop_after:
                self.cond.wait()
            self._check(task)

    def _run(self, task: _Task) -> tuple[int, list[Entry]]:
        self._check(task)
        done: list[Entry] = []
        jail = self.jail()
        for job in task.empties:
            job.begin(jail, self.preserve)
            job.finish(self.preserve)
            done.append(job.entry)
        if not task.pieces:
            return 0, done
        # Into one fresh buffer, with no copy on the way when the source can (an HTTP source
        # reads a large body straight from the socket: _http_raw.py).
        data = memoryview(read_buffer(self.source, task.offset, task.length))
        written = 0
        for p in task.pieces:
            job = p.job
            if p.index:
                self._wait_turn(task, job, p.index)
            else:
                self._check(task)
                job.begin(jail, self.preserve)
            written += job.feed(data[p.start - task.offset : p.end - task.offset])
            if p.last:
                job.finish(self.preserve)
                done.append(job.entry)
            else:
                with self.cond:
                    job.next_piece = p.index + 1
                    self.cond.notify_all()
        return written, done


def extract(
    entries: Iterable[Entry],
    source: ByteSource,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    preserve: bool = True,
    progress: Callable[[int], object] | None = None,
    workers: int = EXTRACT_WORKERS,
    range_size: int = EXTRACT_RANGE,
) -> ExtractReport:
    """Write ``entries`` (files of the archive whose data blob ``source`` reads) below the
    existing directory ``dest``, each at its archive path: verified, jailed, atomic.

    See the module docstring for how. A file that exists is skipped (reported in
    ``skipped``) unless ``force``; a directory where a file goes is an error. With
    ``preserve`` the archived mode bits and mtime are applied, else files are ``0644`` less
    the umask with the current time. ``progress(n)`` is called in the calling thread with the
    content bytes written since the last call. Raises the first failure (see the module
    docstring: :class:`~blobfs.errors.IntegrityError`, :class:`~blobfs.errors.SourceError`,
    ``OSError``); the files renamed into place before it stay, no temporary file does. Runs in
    the calling thread plus ``workers`` threads, all joined before it returns or raises.
    """
    if workers < 1 or range_size < 1:
        raise ValueError("workers and range_size must be >= 1")
    report = ExtractReport()
    jobs: list[_Job] = []
    with Jail(dest) as jail:
        for e in entries:
            parts = tuple(e.path.split("/"))
            if jail.exists(parts) and not force:
                report.skipped.append(e)
            else:
                jobs.append(_Job(e, parts))
    tasks = plan_tasks(jobs, source.size, range_size)
    run = _Extraction(source, dest, preserve)
    first: Exception | None = None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="blobfs-extract")
    pending: deque[Future[tuple[int, list[Entry]]]] = deque()
    try:
        todo = iter(tasks)
        while True:
            # At most two tasks per worker queued: bounded memory, and ranges start in order.
            while (
                first is None
                and len(pending) < 2 * workers
                and (task := next(todo, None)) is not None
            ):
                pending.append(pool.submit(run.run, task))
            if not pending:
                break
            try:
                written, done = pending.popleft().result()
            except _Stop:
                continue
            except Exception as exc:
                first = first or exc
                continue
            report.written += done
            if progress is not None and written:
                progress(written)
    except BaseException:
        run.fail()  # ^C in the calling thread: the workers stop at their next piece
        raise
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)
        for job in jobs:
            job.abort()  # a no-op for the files renamed into place
        run.close_jails()
    if first is not None:
        raise first
    return report
