"""Interop: archives written by the Go reference (meigma/blob 1.1.2) read back exactly.

The fixtures are copied into the repository (``tests/fixtures/reference-v1``, from
``shared/fixtures/reference-v1``) so a clean checkout tests them. Their entries are in Go's
directory-walk order, not bytewise order (FORMAT.md "Order"): every file must still be found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blobfs.core import BlobFile, Entry, open_file

FIXTURES = Path(__file__).parent / "fixtures" / "reference-v1"

ARCHIVES = {
    "mixed-none": "mixed-expected.json",
    "mixed-zstd": "mixed-expected.json",
    "mixed-allzstd": "mixed-expected.json",
    "wide-zstd": "wide-expected.json",
}

# Odd, coprime read sizes so pieces straddle every kind of boundary.
PIECES = (1, 3, 4093, 65_537, 17, 1 << 20, 999)


@dataclass(frozen=True)
class Expected:
    path: str
    size: int
    sha256: str
    mode: int
    mtime_ns: int
    uid: int
    gid: int


def expected_files(name: str) -> list[Expected]:
    with open(FIXTURES / ARCHIVES[name], encoding="utf-8") as f:
        doc = json.load(f)
    return [Expected(**item) for item in doc["files"]]


@pytest.fixture(params=sorted(ARCHIVES))
def fixture_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def archive(fixture_name: str) -> Iterator[BlobFile]:
    d = FIXTURES / fixture_name
    with open_file(d / "index.blob", d / "data.blob") as a:
        yield a


def test_walk_lists_exactly_the_expected_paths(archive: BlobFile, fixture_name: str) -> None:
    expected = sorted(e.path.encode("utf-8") for e in expected_files(fixture_name))
    got = [e.path.encode("utf-8") for e in archive.walk()]
    assert got == expected  # walk is bytewise-sorted whatever the order on the wire


def test_stat_matches(archive: BlobFile, fixture_name: str) -> None:
    listings: dict[str, set[str]] = {}
    for exp in expected_files(fixture_name):
        st = archive.stat(exp.path)
        assert isinstance(st, Entry), exp.path
        assert (st.size, st.mode, st.mtime_ns, st.uid, st.gid) == (
            exp.size,
            exp.mode,
            exp.mtime_ns,
            exp.uid,
            exp.gid,
        ), exp.path
        assert archive.is_file(exp.path)
        parent = exp.path.rpartition("/")[0]
        assert archive.is_dir(parent)
        if parent not in listings:
            listings[parent] = {d.name for d in archive.listdir(parent)}
        assert st.name in listings[parent]


def test_read_file_hashes_match(archive: BlobFile, fixture_name: str) -> None:
    for exp in expected_files(fixture_name):
        data = archive.read_file(exp.path)
        assert len(data) == exp.size, exp.path
        assert hashlib.sha256(data).hexdigest() == exp.sha256, exp.path


def test_open_and_read_in_pieces_equals_read_file(archive: BlobFile, fixture_name: str) -> None:
    for exp in expected_files(fixture_name):
        whole = archive.read_file(exp.path)
        parts: list[bytes] = []
        with archive.open(exp.path) as f:
            i = 0
            while piece := f.read(PIECES[i % len(PIECES)]):
                parts.append(piece)
                i += 1
        assert b"".join(parts) == whole, exp.path


def test_verify_ok(archive: BlobFile, fixture_name: str) -> None:
    report = archive.verify()
    assert report.ok, (report.data_error, report.failures[:5])
    assert report.files == len(expected_files(fixture_name))
    assert report.content_bytes == sum(e.size for e in expected_files(fixture_name))


def test_go_order_files_are_found() -> None:
    # Go's own reader misses these two in the mixed fixtures (FORMAT.md "Order").
    d = FIXTURES / "mixed-zstd"
    with open_file(d / "index.blob", d / "data.blob") as a:
        assert not a.index.sorted_on_wire
        assert a.read_file("a-b/f")
        assert a.read_file("a.txt")
