"""The data blob as ``create`` writes it, and payloads whose fate is decided after writing.

blobfs stores a zstd payload only when it is smaller than the file (FORMAT.md section 3). A
file too big to compress in memory is compressed while it streams, so its bytes must go
somewhere until the sizes are known:

* a **seekable** data writer (``create_blob``'s temporary file, a ``BytesIO``) takes the
  compressed bytes directly; if they did not shrink the file they are rolled back in place
  (seek, truncate, restore the data hash) - no copy, no extra disk;
* any other writer gets them through a ``SpooledTemporaryFile`` (memory up to
  ``SPOOL_MEMORY``, then the system temporary directory), copied out once the file shrank.
"""

from __future__ import annotations

import abc
import hashlib
import tempfile
from typing import Protocol, cast

from ..errors import CreateError

__all__ = ["BinaryWriter", "DataOut", "Payload", "write_all"]

SPOOL_MEMORY = 16 << 20
"""Compressed bytes a spool keeps in memory before it moves to a temporary file: covers the
compressed form of typical large files without touching disk, and bounds memory for huge ones."""

_COPY_BLOCK = 1 << 20
_WRITE_BLOCK = 1 << 20


class BinaryWriter(Protocol):
    """Anything with ``write(bytes)``: a file opened ``"wb"``, ``BytesIO``, a socket wrapper.

    ``write`` may return the number of bytes written (short writes are completed) or ``None``
    (taken as "all written").
    """

    def write(self, data: bytes, /) -> object: ...


class _SeekableWriter(BinaryWriter, Protocol):
    def tell(self) -> int: ...
    def seek(self, pos: int, /) -> object: ...
    def truncate(self) -> object: ...


def write_all(writer: BinaryWriter, data: bytes, what: str) -> None:
    """Write all of ``data``; ``OSError`` becomes :class:`CreateError` naming ``what``."""
    try:
        while data:
            n = writer.write(data)
            if not isinstance(n, int) or n >= len(data):
                return
            if n <= 0:
                raise CreateError(f"writing the {what} failed: the writer accepted no bytes")
            data = data[n:]  # a short write: rare (raw files, pipes), a copy is fine
    except OSError as exc:
        raise CreateError(f"writing the {what} failed: {exc}") from exc


def _seekable(writer: BinaryWriter) -> bool:
    try:
        check = getattr(writer, "seekable", None)
        return bool(
            callable(check)
            and check()
            and callable(getattr(writer, "tell", None))
            and callable(getattr(writer, "truncate", None))
            and callable(getattr(writer, "seek", None))
        )
    except (OSError, ValueError):
        return False


class DataOut:
    """The data blob being written: running offset and SHA-256 over every byte written.

    Small writes are gathered into blocks of ``_WRITE_BLOCK``: one ``write`` and one hash update
    per block instead of per file. Besides syscalls this saves GIL hand-offs: hashlib releases
    the GIL for every update over 2 KiB, and each release lets a busy worker hold it for a while.
    """

    def __init__(self, writer: BinaryWriter) -> None:
        self._writer = writer
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self.offset = 0
        self._seekable = cast(_SeekableWriter, writer) if _seekable(writer) else None

    def write(self, data: bytes) -> None:
        self.offset += len(data)
        if len(data) >= _WRITE_BLOCK:  # a whole chunk: no copy through the buffer
            self.flush()
            self._emit(data)
            return
        buf = self._buf
        buf += data
        if len(buf) >= _WRITE_BLOCK:
            self.flush()

    def _emit(self, data: bytes) -> None:
        write_all(self._writer, data, "data blob")
        self._hash.update(data)

    def flush(self) -> None:
        """Hand buffered bytes to the writer (does not flush the writer itself)."""
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def digest(self) -> bytes:
        self.flush()
        return self._hash.digest()

    def payload(self) -> Payload:
        """A pending payload starting at the current offset; exactly one may be open."""
        self.flush()
        if self._seekable is not None:
            return _InPlace(self, self._seekable)
        return _Spool(self)


class Payload(abc.ABC):
    """Bytes of one entry whose fate is decided after writing: ``commit`` or ``discard``.

    ``size`` counts the bytes written so far. ``close`` releases resources (idempotent) and
    discards what was not committed.
    """

    size: int

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def discard(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _InPlace(Payload):
    def __init__(self, out: DataOut, writer: _SeekableWriter) -> None:
        self._out = out
        self._writer = writer
        self.size = 0
        self._open = True
        try:
            self._pos = writer.tell()
        except OSError as exc:
            raise CreateError(f"writing the data blob failed: {exc}") from exc
        self._hash = out._hash.copy()
        self._offset = out.offset

    def write(self, data: bytes) -> None:
        self._out.write(data)
        self.size += len(data)

    def commit(self) -> None:
        self._open = False

    def discard(self) -> None:
        if not self._open:
            return
        self._open = False
        self._out._buf.clear()
        try:
            self._writer.seek(self._pos)
            self._writer.truncate()
        except OSError as exc:
            raise CreateError(f"writing the data blob failed: {exc}") from exc
        self._out._hash = self._hash
        self._out.offset = self._offset
        self.size = 0

    def close(self) -> None:
        # An in-place payload left open belongs to a failed creation: the writer's content is
        # garbage either way, so there is nothing to undo.
        self._open = False


class _Spool(Payload):
    def __init__(self, out: DataOut) -> None:
        self._out = out
        self.size = 0
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        try:
            self._spool.write(data)
        except OSError as exc:
            raise CreateError(f"writing the temporary spool failed: {exc}") from exc
        self.size += len(data)

    def commit(self) -> None:
        try:
            self._spool.seek(0)
            while block := self._spool.read(_COPY_BLOCK):
                self._out.write(block)
        except OSError as exc:
            raise CreateError(f"reading the temporary spool failed: {exc}") from exc
        self.close()

    def discard(self) -> None:
        self.close()

    def close(self) -> None:
        self._spool.close()
