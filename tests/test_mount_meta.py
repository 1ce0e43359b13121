"""The metadata path through a real kernel mount: listings with bare files, then with
attributes once a program stats a file.

A fresh mount lists the files of small directories by name, inode number and type only (the
kernel makes no inode for them, ``find -type f`` needs nothing more); the first lookup of a file
turns listings back to full attributes. Whatever the order, programs see the same tree.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from blobfs.core import Compression, create_blob
from tests._mount import mounted, require_fuse


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    src = tmp_path_factory.mktemp("src")
    files: dict[str, bytes] = {}
    for d in range(4):
        for f in range(30):
            files[f"d{d}/f{f:02d}.txt"] = b"x" * (d * 100 + f)
    files["d1/sub/deeper/g.bin"] = b"deep"
    files["top.txt"] = b"top"
    for name, data in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(src / "d2/f07.txt", 0o751)
    out = tmp_path_factory.mktemp("archive")
    create_blob(src, out, compression=Compression.ZSTD).close()
    return out, files


def _find(mnt: Path, kind: str) -> list[str]:
    out = subprocess.run(
        ["find", os.fspath(mnt), "-mindepth", "1", "-type", kind],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(os.path.relpath(p, mnt) for p in out.splitlines())


def test_find_walks_without_looking_files_up(
    tmp_path: Path, tree: tuple[Path, dict[str, bytes]]
) -> None:
    archive, files = tree
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        before = m.stats()["lookups"]
        assert _find(m.path, "f") == sorted(files)
        assert _find(m.path, "d") == ["d0", "d1", "d1/sub", "d1/sub/deeper", "d2", "d3"]
        assert m.stats()["lookups"] == before  # directories came with attributes, files by type
        # d_ino and d_type of bare entries agree with what stat says.
        with os.scandir(m.path / "d0") as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            assert e.is_file(follow_symlinks=False)
            st = os.lstat(e.path)  # a lookup: from here on listings carry attributes
            assert e.inode() == st.st_ino
            assert st.st_size == len(files[f"d0/{e.name}"])
        assert m.stats()["lookups"] == before + len(entries)
        # Now listing then statting another directory costs no lookups (readdirplus).
        looked = m.stats()["lookups"]
        for e in os.scandir(m.path / "d3"):
            assert os.lstat(e.path).st_size == len(files[f"d3/{e.name}"])
        assert m.stats()["lookups"] == looked


def test_ls_l_after_find_shows_every_attribute(
    tmp_path: Path, tree: tuple[Path, dict[str, bytes]]
) -> None:
    """Files listed bare first (find), stat'ed later (ls -l): modes, sizes, inode numbers right,
    the same as on a mount that never listed bare."""
    archive, files = tree
    seen: list[dict[str, tuple[int, int, int]]] = []
    for bare_first in (True, False):
        with mounted([os.fspath(archive)], tmp_path / f"mnt{bare_first}") as m:
            if bare_first:
                _find(m.path, "f")
            else:
                os.lstat(m.path / "top.txt")  # a file looked up first: listings with attributes
            out = subprocess.run(
                ["ls", "-lRi", "--time-style=+%s", os.fspath(m.path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert "?" not in out  # nothing ls could not stat
            got = {}
            for root, _, names in os.walk(m.path):
                for name in names:
                    p = Path(root, name)
                    st = os.lstat(p)
                    got[os.path.relpath(p, m.path)] = (st.st_ino, st.st_mode, st.st_size)
            assert {k: v[2] for k, v in got.items()} == {k: len(v) for k, v in files.items()}
            assert stat.S_IMODE(got["d2/f07.txt"][1]) == 0o751
            seen.append(got)
    assert seen[0] == seen[1]
