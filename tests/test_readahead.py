"""Readahead groups hand over each chunk as soon as it is verified (``blobfs/core/_prefetch.py``).

A source with ``read_into`` reporting progress (an HTTP source) lets a sequential reader take the
first chunks of a 16 MiB range while the rest is still arriving; a failure part way fails only
the chunks not in yet, and bytes already handed over are never written again.
"""

from __future__ import annotations

import threading

import pytest

from blobfs.core import Archive, BytesSource, Index
from blobfs.core._prefetch import ReadaheadPool
from blobfs.core._steps import Progress, WritableBuffer
from blobfs.errors import IntegrityError, SourceError
from tests.test_archive_cache import Built, build, incompressible

MiB = 1 << 20


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(
        tmp_path_factory.mktemp("ra"), {"big.bin": incompressible(40 * MiB, 3)}, chunk_size=MiB
    )


class Trickle(BytesSource):
    """``read_into`` in 1 MiB steps reporting progress; after ``hold_after`` bytes of a read it
    waits for ``gate``; ``fail_after`` makes the rest of that read fail, ``corrupt_at`` flips a
    byte of the data blob."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.gate = threading.Event()
        self.gate.set()
        self.hold_after: int | None = None
        self.held_at: list[int] = []  # offsets of reads that stalled
        self.fail_after: int | None = None
        self.corrupt_at: int | None = None
        self.requests: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        data = super().read_at(offset, length)
        at = self.corrupt_at
        if at is not None and offset <= at < offset + length:
            data = data[: at - offset] + bytes([data[at - offset] ^ 0xFF]) + data[at - offset + 1 :]
        return data

    def read_into(
        self, offset: int, buffer: WritableBuffer, progress: Progress | None = None
    ) -> None:
        view = memoryview(buffer)
        self.requests.append((offset, len(view)))
        data = self.read_at(offset, len(view))
        for pos in range(0, len(view), MiB):
            if self.hold_after is not None and pos >= self.hold_after and not self.gate.is_set():
                self.held_at.append(offset)
                if not self.gate.wait(10):
                    raise SourceError("the test never opened the gate")
            if self.fail_after is not None and pos >= self.fail_after:
                raise SourceError("injected failure part way")
            end = min(pos + MiB, len(view))
            view[pos:end] = data[pos:end]
            if progress is not None:
                progress(end)


def stream(archive: Archive, n: int) -> bytes:
    with archive.open("big.bin") as f:
        return b"".join(f.read(MiB) for _ in range(n))


def test_chunks_are_handed_over_while_the_range_still_arrives(big: Built) -> None:
    src = Trickle(big.data)
    content = big.contents["big.bin"]
    with Archive(big.index, src) as archive:
        # One loader thread: ranges are requested in order, so the first held is the lowest.
        archive._pool = ReadaheadPool(1)
        f = archive.open("big.bin")
        for i in range(4):  # the window is open, groups growing ahead
            assert f.read(MiB) == content[i * MiB : (i + 1) * MiB]
        src.gate.clear()
        src.hold_after = 2 * MiB  # every range starting from now stalls after 2 MiB
        pos = 4
        while not src.held_at or pos < min(src.held_at) // MiB + 2:
            assert pos < 40, "no range was held"
            assert f.read(MiB) == content[pos * MiB : (pos + 1) * MiB]
            pos += 1
        # The reader got the first two chunks of a range whose rest has not arrived.
        first = min(src.held_at) // MiB
        assert pos == first + 2
        assert src.gate.is_set() is False
        src.hold_after = None
        src.gate.set()
        assert f.read(-1) == content[pos * MiB :]
        f.close()
        archive._pool.close()


def test_failure_part_way_fails_only_the_rest_and_reads_go_on(big: Built) -> None:
    src = Trickle(big.data)
    content = big.contents["big.bin"]
    with Archive(big.index, src) as archive:
        assert stream(archive, 3) == content[: 3 * MiB]
        src.fail_after = 3 * MiB  # later ranges fail after 3 MiB; the reader falls back
        assert stream(archive, 40) == content


def test_a_corrupt_chunk_in_a_group_fails_that_chunk_only(big: Built) -> None:
    e = Index(big.index).entry("big.bin")
    src = Trickle(big.data)
    src.corrupt_at = e.chunk_payload(20)[0] + 77
    content = big.contents["big.bin"]
    with Archive(big.index, src) as archive, archive.open("big.bin") as f:
        for i in range(20):
            assert f.read(MiB) == content[i * MiB : (i + 1) * MiB]
        with pytest.raises(IntegrityError, match="chunk 20"):
            f.read(MiB)
        f.seek(21 * MiB)
        assert f.read(-1) == content[21 * MiB :]
