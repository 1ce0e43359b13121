"""The ``blobfs`` command, run in-process through ``main([...])`` (one subprocess run checks the
entry point): create, ls, tree, cat, cp, verify, inspect in text and JSON, the Go reference
fixtures, extraction jail and atomicity, and the one-line error policy."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from blobfs.cli import main
from blobfs.cli._output import format_mode, human_size, parse_size
from blobfs.cli._progress import ProgressBar
from blobfs.core import Index

REPO = Path(__file__).resolve().parent.parent
MTIME_NS = 1_700_000_000_123_456_789
BIG_SIZE = (2 << 20) + 12345  # over the default 1 MiB chunk size: gets a chunk table

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> Run:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    rc, out, err = run(capsys, *args, "--output", "json")
    assert rc == 0, err
    return json.loads(out)


def assert_one_line_error(err: str) -> None:
    assert err.startswith("blobfs: error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------- fixtures


def _content() -> dict[str, bytes]:
    rnd = bytes((i * 7919 + (i >> 8) * 31) & 0xFF for i in range(100_000))
    return {
        "hello.txt": b"hello, blobfs\n",
        "empty.txt": b"",
        "docs/guide.md": b"# Guide\n" + b"words and more words\n" * 400,
        "docs/deep/er/leaf.txt": b"leaf\n",
        "bin/tool.sh": b"#!/bin/sh\necho hi\n",
        "bin/random.dat": rnd,
        "media/pic.jpg": b"\xff\xd8\xff" + rnd[:5000],
        "big/blob.bin": (b"0123456789abcdef" * (BIG_SIZE // 16 + 1))[:BIG_SIZE],
    }


@pytest.fixture
def content() -> dict[str, bytes]:
    return _content()


@pytest.fixture
def src_tree(tmp_path: Path, content: dict[str, bytes]) -> Path:
    root = tmp_path / "src"
    for rel, data in content.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(0o755 if rel.endswith(".sh") else 0o644)
        os.utime(p, ns=(MTIME_NS, MTIME_NS))
    (root / "docs/guide.md").chmod(0o600)
    return root


@pytest.fixture
def archive(tmp_path: Path, src_tree: Path) -> Path:
    dest = tmp_path / "arch"
    assert main(["create", "-q", str(src_tree), str(dest)]) == 0
    return dest


@pytest.fixture
def reference() -> Path:
    """The Go reference's archives (copied into the repository)."""
    return REPO / "tests/fixtures/reference-v1"


def expected_files(reference: Path, name: str) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = json.loads((reference / name).read_text())["files"]
    return files


def corrupt_copy(src: Path, dest: Path, path: str) -> None:
    shutil.copytree(src, dest)
    (dest / "data.blob").chmod(0o644)
    entry = Index((dest / "index.blob").read_bytes()).entry(path)
    with open(dest / "data.blob", "r+b") as f:
        at = entry.data_offset + entry.data_size // 2
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x55]))


# ------------------------------------------------------------------------------------- create


def test_create_text_summary(
    tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out"
    rc, out, err = run(capsys, "create", str(src_tree), str(dest))
    assert rc == 0, err
    assert f"Created {dest}" in out
    assert "Files:       8" in out
    assert "Data digest: sha256:" in out
    assert sorted(p.name for p in dest.iterdir()) == ["data.blob", "index.blob"]


def test_create_json(tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "out"
    doc = run_json(capsys, "create", str(src_tree), str(dest))
    data = (dest / "data.blob").read_bytes()
    assert doc["archive"] == str(dest)
    assert doc["index"] == str(dest / "index.blob")
    assert doc["data"] == str(dest / "data.blob")
    assert doc["file_count"] == 8
    assert doc["data_size"] == len(data)
    assert doc["index_size"] == (dest / "index.blob").stat().st_size
    assert doc["data_digest"] == "sha256:" + sha256(data)
    assert doc["skipped"] == []


def test_create_reports_skipped_entries(
    tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (src_tree / "link").symlink_to("hello.txt")
    rc, _out, err = run(capsys, "create", str(src_tree), str(tmp_path / "out"))
    assert rc == 0
    assert "blobfs: warning: skipped link:" in err
    doc = run_json(capsys, "create", str(src_tree), str(tmp_path / "out2"))
    assert [s["path"] for s in doc["skipped"]] == ["link"]
    assert doc["skipped"][0]["reason"]


def test_create_refuses_existing_archive_without_force(
    archive: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (archive / "data.blob").read_bytes()
    rc, _, err = run(capsys, "create", str(src_tree), str(archive))
    assert rc == 1
    assert_one_line_error(err)
    assert "--force" in err
    assert (archive / "data.blob").read_bytes() == before
    rc, _, err = run(capsys, "create", "-f", "--compression", "none", str(src_tree), str(archive))
    assert rc == 0, err
    assert (archive / "data.blob").read_bytes() != before
    assert sorted(p.name for p in archive.iterdir()) == ["data.blob", "index.blob"]


def test_create_refuses_dest_inside_src(src_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "create", str(src_tree), str(src_tree / "arch"))
    assert rc == 1
    assert_one_line_error(err)
    assert not (src_tree / "arch").exists()


def test_create_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "create", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert rc == 1
    assert_one_line_error(err)


def test_create_options(tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "custom"
    rc, _, err = run(
        capsys,
        "create",
        "--compression",
        "none",
        "--chunk-size",
        "0",
        "--index-name",
        "i.blob",
        "--data-name",
        "d.blob",
        str(src_tree),
        str(dest),
    )
    assert rc == 0, err
    doc = run_json(
        capsys, "inspect", "--index", str(dest / "i.blob"), "--data", str(dest / "d.blob")
    )
    assert doc["compression"] == {"none": 8, "zstd": 0}
    assert doc["chunked_entries"] == 0
    assert doc["features"] == 0


@pytest.mark.parametrize("size", ["3K", "1.5M", "128M", "lots"])
def test_create_bad_chunk_size_is_a_usage_error(
    tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    rc, _, err = run(capsys, "create", "--chunk-size", size, str(src_tree), str(tmp_path / "o"))
    assert rc == 2
    assert "chunk" in err or "size" in err


def test_create_max_files(
    tmp_path: Path, src_tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "create", "--max-files", "3", str(src_tree), str(tmp_path / "o"))
    assert rc == 1
    assert_one_line_error(err)
    assert not (tmp_path / "o" / "index.blob").exists()
    assert not (tmp_path / "o" / "data.blob").exists()
    assert not any((tmp_path / "o").glob(".*"))  # temporary blobs removed


# ------------------------------------------------------------------------------------- ls


def test_ls_root(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "ls", str(archive))
    assert rc == 0
    assert out.splitlines() == ["big/", "bin/", "docs/", "empty.txt", "hello.txt", "media/"]


def test_ls_long(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "ls", "-l", str(archive), "/bin")
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 2
    mode, size, _date, _time, name = lines[0].split()
    assert (mode, size, name) == ("-rw-r--r--", "100000", "random.dat")
    mode, size, _date, _time, name = lines[1].split()
    assert (mode, size, name) == ("-rwxr-xr-x", "18", "tool.sh")
    rc, out, _ = run(capsys, "ls", "-l", "-h", str(archive))
    assert rc == 0
    rows = {line.split()[-1]: line for line in out.splitlines()}
    assert rows["docs/"].startswith("drwxr-xr-x")
    assert "14 B" in rows["hello.txt"]
    rc, out, _ = run(capsys, "ls", "-lh", str(archive), "big")
    assert "2.0 MiB" in out


def test_ls_file_and_digest(
    archive: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "ls", str(archive), "docs/guide.md")
    assert (rc, out) == (0, "docs/guide.md\n")
    rc, out, _ = run(capsys, "ls", "-l", "--digest", str(archive), "docs/guide.md")
    assert out.startswith("-rw-------")
    assert "sha256:" + sha256(content["docs/guide.md"])[:12] in out


def test_ls_json(
    archive: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "ls", str(archive), "bin")
    assert doc["archive"] == str(archive)
    assert doc["path"] == "bin"
    entries = {e["name"]: e for e in doc["entries"]}
    assert list(entries) == ["random.dat", "tool.sh"]
    tool = entries["tool.sh"]
    assert tool == {
        "name": "tool.sh",
        "path": "bin/tool.sh",
        "is_dir": False,
        "size": len(content["bin/tool.sh"]),
        "mode": "-rwxr-xr-x",
        "mtime_ns": MTIME_NS,
        "uid": os.getuid(),
        "gid": os.getgid(),
        "digest": "sha256:" + sha256(content["bin/tool.sh"]),
    }
    doc = run_json(capsys, "ls", str(archive))
    assert {e["name"]: e["is_dir"] for e in doc["entries"]}["docs"] is True


def test_ls_with_index_and_data_options(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx, dat = str(archive / "index.blob"), str(archive / "data.blob")
    rc, out, _ = run(capsys, "ls", "--index", idx, "--data", dat, "docs")
    assert (rc, out) == (0, "deep/\nguide.md\n")
    rc, out, _ = run(capsys, "ls", "docs", "--index", idx, "--data", dat)
    assert (rc, out) == (0, "deep/\nguide.md\n")


def test_ls_global_options_before_and_after(
    archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "--output", "json", "ls", str(archive), "bin")
    assert rc == 0
    assert json.loads(out)["path"] == "bin"
    rc, out, _ = run(capsys, "-q", "ls", str(archive), "bin", "-q", "--output=json")
    assert json.loads(out)["path"] == "bin"


@pytest.mark.parametrize(
    ("path", "word"),
    [("nope", "no such"), ("docs/nope", "no such"), ("../etc", "'..'"), ("a/../b", "'..'")],
)
def test_ls_bad_paths_are_one_line_errors(
    archive: Path, capsys: pytest.CaptureFixture[str], path: str, word: str
) -> None:
    rc, out, err = run(capsys, "ls", str(archive), path)
    assert rc == 1
    assert out == ""
    assert_one_line_error(err)
    assert word in err


# ------------------------------------------------------------------------------------- tree


def test_tree_text(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "tree", str(archive), "docs")
    assert rc == 0
    assert out == (
        "/docs\n"
        "├── deep\n"
        "│   └── er\n"
        "│       └── leaf.txt\n"
        "└── guide.md\n"
        "\n"
        "2 directories, 2 files\n"
    )
    rc, out, _ = run(capsys, "tree", str(archive))
    assert out.splitlines()[0] == "/"
    assert out.splitlines()[-1] == "6 directories, 8 files"


def test_tree_level_and_dirsfirst(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "tree", "-L", "1", str(archive))
    assert rc == 0
    assert out.splitlines()[1:7] == [
        "├── big",
        "├── bin",
        "├── docs",
        "├── empty.txt",
        "├── hello.txt",
        "└── media",
    ]
    assert out.splitlines()[-1] == "4 directories, 2 files"
    rc, out, _ = run(capsys, "tree", "-L", "1", "--dirsfirst", str(archive))
    names = [line[4:] for line in out.splitlines()[1:7]]
    assert names == ["big", "bin", "docs", "media", "empty.txt", "hello.txt"]


def test_tree_json(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "tree", str(archive), "docs")
    assert doc["path"] == "docs"
    assert doc["directory_count"] == 2
    assert doc["file_count"] == 2
    root = doc["root"]
    assert (root["name"], root["path"], root["is_dir"]) == ("docs", "docs", True)
    deep = root["children"][0]
    assert deep["name"] == "deep"
    assert deep["children"][0]["children"][0] == {
        "name": "leaf.txt",
        "path": "docs/deep/er/leaf.txt",
        "is_dir": False,
        "size": 5,
    }


def test_tree_missing_path(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "tree", str(archive), "missing")
    assert rc == 1
    assert_one_line_error(err)


# ------------------------------------------------------------------------------------- cat


def test_cat(
    archive: Path, content: dict[str, bytes], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    for path, data in content.items():
        assert main(["cat", str(archive), path]) == 0
        assert capsysbinary.readouterr().out == data
    assert main(["cat", str(archive), "hello.txt", "/docs/deep/er/leaf.txt", "hello.txt"]) == 0
    assert capsysbinary.readouterr().out == b"hello, blobfs\nleaf\nhello, blobfs\n"


def test_cat_checks_every_path_first(
    archive: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    assert main(["cat", str(archive), "hello.txt", "missing.txt"]) == 1
    cap = capsysbinary.readouterr()
    assert cap.out == b""
    assert_one_line_error(cap.err.decode())
    assert main(["cat", str(archive), "hello.txt", "docs"]) == 1
    cap = capsysbinary.readouterr()
    assert cap.out == b""
    assert b"cannot cat a directory" in cap.err


def test_cat_needs_a_path(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "cat", str(archive))
    assert rc == 2
    assert "PATH" in err


def test_cat_broken_pipe_exits_quietly(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Closed(io.BytesIO):
        def write(self, b: Any, /) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    class Stdout(io.StringIO):
        buffer = Closed()

    err = io.StringIO()
    monkeypatch.setattr(sys, "stdout", Stdout())
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["cat", str(archive), "big/blob.bin"]) == 141
    assert err.getvalue() == ""


# ------------------------------------------------------------------------------------- cp


def test_cp_file_into_dir_and_to_name(
    archive: Path, tmp_path: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    rc, out, err = run(capsys, "cp", f"{archive}:/hello.txt", str(out_dir))
    assert rc == 0, err
    assert out == "Copied 1 file (14 B)\n"
    assert (out_dir / "hello.txt").read_bytes() == content["hello.txt"]
    rc, _, err = run(capsys, "cp", f"{archive}:/bin/tool.sh", str(out_dir / "renamed.sh"))
    assert rc == 0, err
    assert (out_dir / "renamed.sh").read_bytes() == content["bin/tool.sh"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out_dir / "renamed.sh").stat().st_mode & 0o777 == 0o644 & ~umask
    assert sorted(p.name for p in out_dir.iterdir()) == ["hello.txt", "renamed.sh"]


def test_cp_directory_needs_r(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run(capsys, "cp", f"{archive}:/docs", str(tmp_path / "out"))
    assert rc == 1
    assert_one_line_error(err)
    assert "-r" in err
    assert not (tmp_path / "out").exists()


def test_cp_recursive_layout(
    archive: Path, tmp_path: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    # Missing DEST: the directory becomes DEST.
    rc, out, err = run(capsys, "cp", "-r", f"{archive}:/docs", str(tmp_path / "d1"))
    assert rc == 0, err
    assert out == f"Copied 2 files ({human_size(len(content['docs/guide.md']) + 5)})\n"
    assert (tmp_path / "d1/deep/er/leaf.txt").read_bytes() == b"leaf\n"
    assert (tmp_path / "d1/guide.md").read_bytes() == content["docs/guide.md"]
    # Existing DEST: the directory goes inside it.
    rc, _, err = run(capsys, "cp", "-r", f"{archive}:/docs", str(tmp_path / "d1"))
    assert rc == 0, err
    assert (tmp_path / "d1/docs/deep/er/leaf.txt").read_bytes() == b"leaf\n"
    # The root: the whole archive into DEST.
    rc, _, err = run(capsys, "cp", "-r", f"{archive}:/", str(tmp_path / "all"))
    assert rc == 0, err
    for path, data in content.items():
        assert (tmp_path / "all" / path).read_bytes() == data
    leftovers = [p for p in (tmp_path / "all").rglob(".blobfs-*")]
    assert leftovers == []


def test_cp_several_sources_and_index_data_form(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "many"
    rc, _, err = run(
        capsys, "cp", "-r", f"{archive}:/hello.txt", f"{archive}:/docs/deep", str(dest)
    )
    assert rc == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["deep", "hello.txt"]
    assert (dest / "deep/er/leaf.txt").read_bytes() == b"leaf\n"
    dest2 = tmp_path / "viaopts"
    dest2.mkdir()
    rc, _, err = run(
        capsys,
        "cp",
        "--index",
        str(archive / "index.blob"),
        "--data",
        str(archive / "data.blob"),
        "/bin/tool.sh",
        "media/pic.jpg",
        str(dest2),
    )
    assert rc == 0, err
    assert sorted(p.name for p in dest2.iterdir()) == ["pic.jpg", "tool.sh"]


def test_cp_json(
    archive: Path, tmp_path: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "cp", "-r", f"{archive}:/bin", str(tmp_path / "o"))
    size = len(content["bin/random.dat"]) + len(content["bin/tool.sh"])
    assert doc == {
        "sources": [{"archive": str(archive), "path": "bin"}],
        "destination": str(tmp_path / "o"),
        "file_count": 2,
        "total_size": size,
        "size_human": human_size(size),
        "skipped": [],
    }


def test_cp_existing_files_are_skipped_without_force(
    archive: Path, tmp_path: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "hello.txt").write_bytes(b"mine")
    rc, out, err = run(capsys, "cp", f"{archive}:/hello.txt", f"{archive}:/empty.txt", str(dest))
    assert rc == 0
    assert (dest / "hello.txt").read_bytes() == b"mine"
    assert "hello.txt: exists, skipped (use -f to overwrite)" in err
    assert "Copied 1 file (0 B)" in out
    rc, out, err = run(capsys, "cp", "-f", f"{archive}:/hello.txt", str(dest))
    assert rc == 0, err
    assert (dest / "hello.txt").read_bytes() == content["hello.txt"]


def test_cp_preserve(archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "cp", "-r", "--preserve", f"{archive}:/", str(tmp_path / "p"))
    assert rc == 0, err
    guide = (tmp_path / "p/docs/guide.md").stat()
    assert guide.st_mode & 0o777 == 0o600
    assert guide.st_mtime_ns == MTIME_NS
    assert (tmp_path / "p/bin/tool.sh").stat().st_mode & 0o777 == 0o755


def test_cp_does_not_follow_symlinked_directory_in_dest(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "jail"
    dest.mkdir()
    (dest / "docs").symlink_to(outside)
    rc, _, err = run(capsys, "cp", "-r", "-f", f"{archive}:/", str(dest))
    assert rc == 1
    assert_one_line_error(err)
    assert "symlink" in err
    assert list(outside.iterdir()) == []


def test_cp_replaces_symlinked_file_instead_of_writing_through(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    dest = tmp_path / "jail"
    dest.mkdir()
    (dest / "hello.txt").symlink_to(victim)
    rc, _, err = run(capsys, "cp", f"{archive}:/hello.txt", str(dest))
    assert rc == 0, err  # exists: skipped
    assert (dest / "hello.txt").is_symlink()
    rc, _, err = run(capsys, "cp", "-f", f"{archive}:/hello.txt", str(dest))
    assert rc == 0, err
    assert not (dest / "hello.txt").is_symlink()
    assert (dest / "hello.txt").read_bytes() == b"hello, blobfs\n"
    assert victim.read_bytes() == b"precious"


def test_cp_corrupt_file_leaves_nothing_behind(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    corrupt_copy(archive, bad, "docs/guide.md")
    dest = tmp_path / "o"
    dest.mkdir()
    rc, _, err = run(capsys, "cp", f"{bad}:/docs/guide.md", str(dest))
    assert rc == 1
    assert_one_line_error(err)
    assert "guide.md" in err
    assert list(dest.iterdir()) == []  # neither the file nor a temporary


@pytest.mark.parametrize(
    "args",
    [
        ["cp"],
        ["cp", "only-dest"],
        ["cp", "no-colon-slash", "dest"],
        ["cp", "--index", "i.blob", "x", "dest"],
    ],
)
def test_cp_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, *args)
    assert rc == 2
    assert "usage:" in err


# ------------------------------------------------------------------------------------- verify


def test_verify_ok(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digest = sha256((archive / "data.blob").read_bytes())
    rc, out, _ = run(capsys, "verify", str(archive))
    assert (rc, out) == (0, f"OK: 8 files verified, data blob sha256:{digest}\n")
    doc = run_json(capsys, "verify", str(archive))
    assert doc["verified"] is True
    assert doc["file_count"] == 8
    assert doc["failures"] == []
    assert doc["data_digest"] == "sha256:" + digest


def test_verify_and_cat_corrupted_archive(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    corrupt_copy(archive, bad, "bin/random.dat")
    rc, out, err = run(capsys, "verify", str(bad))
    assert rc == 1
    assert "bin/random.dat" in err
    assert "Traceback" not in err
    rc, out, _ = run(capsys, "verify", str(bad), "--output", "json")
    assert rc == 1
    doc = json.loads(out)
    assert doc["verified"] is False
    assert "bin/random.dat" in [f["path"] for f in doc["failures"]]
    rc, out, err = run(capsys, "cat", str(bad), "bin/random.dat")
    assert rc == 1
    assert_one_line_error(err)
    assert "random.dat" in err
    rc, out, err = run(capsys, "cat", str(bad), "hello.txt")
    assert (rc, out) == (0, "hello, blobfs\n")


# ------------------------------------------------------------------------------------- inspect


def test_inspect(
    archive: Path, content: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = run_json(capsys, "inspect", str(archive))
    data = (archive / "data.blob").read_bytes()
    assert doc["file_count"] == 8
    assert doc["directory_count"] == 6
    assert doc["total_size"] == sum(len(v) for v in content.values())
    assert doc["data_size"] == len(data)
    assert doc["data_digest"] == "sha256:" + sha256(data)
    assert doc["index_size"] == (archive / "index.blob").stat().st_size
    assert doc["compression"]["zstd"] >= 2  # guide.md, random.dat, blob.bin at least
    assert doc["compression"]["none"] >= 3  # the small files and pic.jpg are stored raw
    assert doc["chunked_entries"] == 1
    assert doc["chunk_sizes"] == [1 << 20]
    assert doc["feature_names"] == ["chunks"]
    assert doc["sorted_on_wire"] is True
    assert doc["compression_ratio"] > 1
    rc, out, _ = run(capsys, "inspect", str(archive))
    assert rc == 0
    assert "Files:" in out
    assert "Entry order:" in out
    assert "bytewise-sorted" in out


# ------------------------------------------------------------------------------------- reference


@pytest.mark.parametrize("name", ["mixed-none", "mixed-zstd", "mixed-allzstd"])
def test_reference_cat_every_file(
    reference: Path, name: str, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    arch = reference / name
    for f in expected_files(reference, "mixed-expected.json"):
        assert main(["cat", str(arch), f["path"]]) == 0, f["path"]
        data = capsysbinary.readouterr().out
        assert len(data) == f["size"]
        assert sha256(data) == f["sha256"], f["path"]


@pytest.mark.parametrize("name", ["mixed-none", "mixed-zstd", "mixed-allzstd", "wide-zstd"])
def test_reference_verify_and_inspect(
    reference: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = expected_files(reference, name.split("-")[0] + "-expected.json")
    doc = run_json(capsys, "verify", str(reference / name))
    assert doc["verified"] is True
    assert doc["file_count"] == len(expected)
    doc = run_json(capsys, "inspect", str(reference / name))
    assert doc["file_count"] == len(expected)
    assert doc["total_size"] == sum(f["size"] for f in expected)
    assert doc["chunked_entries"] == 0


def test_reference_cp_preserve(
    reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "x"
    rc, _out, err = run(
        capsys, "cp", "-r", "--preserve", f"{reference / 'mixed-zstd'}:/", str(dest)
    )
    assert rc == 0, err
    for f in expected_files(reference, "mixed-expected.json"):
        p = dest / f["path"]
        assert sha256(p.read_bytes()) == f["sha256"], f["path"]
        st = p.stat()
        assert st.st_mode & 0o777 == f["mode"] & 0o777
        assert st.st_mtime_ns == f["mtime_ns"]


@pytest.mark.parametrize("name", ["mixed-none", "mixed-zstd", "mixed-allzstd"])
def test_reference_metadata_through_ls(
    reference: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every expected file is listed by its directory with its size, mode, mtime, owner, digest."""
    expected = expected_files(reference, "mixed-expected.json")
    listed: dict[str, dict[str, Any]] = {}
    for parent in sorted({f["path"].rpartition("/")[0] for f in expected}):
        doc = run_json(capsys, "ls", "-l", str(reference / name), parent or "/")
        listed.update({e["path"]: e for e in doc["entries"] if not e["is_dir"]})
    assert sorted(listed) == sorted(f["path"] for f in expected)
    for f in expected:
        e = listed[f["path"]]
        assert e["size"] == f["size"]
        assert e["mode"] == format_mode(0o100000 | f["mode"])
        assert (e["mtime_ns"], e["uid"], e["gid"]) == (f["mtime_ns"], f["uid"], f["gid"])
        assert e["digest"] == "sha256:" + f["sha256"]


def test_reference_wide_ls_and_tree(reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = expected_files(reference, "wide-expected.json")
    top = sorted({f["path"].split("/")[0] + ("/" if "/" in f["path"] else "") for f in expected})
    rc, out, _ = run(capsys, "ls", str(reference / "wide-zstd"))
    assert rc == 0
    assert out.splitlines() == top
    doc = run_json(capsys, "tree", str(reference / "wide-zstd"))
    assert doc["file_count"] == len(expected)


# ------------------------------------------------------------------------------------- errors


def test_missing_archive_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "ls", str(tmp_path / "nope"))
    assert (rc, out) == (1, "")
    assert_one_line_error(err)
    assert "no such archive directory" in err
    rc, _, err = run(capsys, "verify", str(tmp_path))
    assert rc == 1
    assert_one_line_error(err)
    assert "index.blob" in err


def test_archive_that_is_a_file(archive: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "ls", str(archive / "index.blob"))
    assert rc == 1
    assert_one_line_error(err)
    assert "--index" in err


def test_corrupt_index_is_one_line(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(archive, bad)
    (bad / "index.blob").write_bytes(b"\x07" * 40)
    rc, _, err = run(capsys, "ls", str(bad))
    assert rc == 1
    assert_one_line_error(err)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["ls"],
        ["ls", "--index", "x"],
        ["tree", "-L", "-1", "a"],
        ["verify", "a", "b"],
    ],
)
def test_usage_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, *args)
    assert rc == 2
    assert "Traceback" not in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--version")
    assert rc == 0
    assert out.startswith("blobfs ")
    rc, out, _ = run(capsys, "ls", "--help")
    assert rc == 0
    assert "--human" in out


def test_traceback_only_when_debugging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, _, err = run(capsys, "ls", "-vv", str(tmp_path / "nope"))
    assert rc == 1
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("blobfs: error: ")
    monkeypatch.setenv("BLOBFS_DEBUG", "1")
    rc, _, err = run(capsys, "ls", str(tmp_path / "nope"))
    assert "Traceback" in err


def test_keyboard_interrupt_exits_130(
    archive: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*_: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("blobfs.cli._main.cmd_ls", interrupted)
    rc, _, err = run(capsys, "ls", str(archive))
    assert rc == 130
    assert err == ""


def test_entry_point_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BLOBFS_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "blobfs.cli", "cat", str(tmp_path / "none"), "x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("blobfs: error: ")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------- helpers


def test_parse_size() -> None:
    assert parse_size("0") == 0
    assert parse_size("4096") == 4096
    assert parse_size("64K") == 64 << 10
    assert parse_size("1M") == 1 << 20
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("2g") == 2 << 30
    for bad in ("", "K", "1.5M", "-1", "12Q"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 << 20) == "3.0 MiB"


def test_progress_bar_draws_and_clears() -> None:
    stream = io.StringIO()
    with ProgressBar(100 << 20, "copying", enabled=True, stream=stream) as bar:
        bar.update(50 << 20)
        bar.update(100 << 20)
    text = stream.getvalue()
    assert "copying" in text
    assert "100%" in text
    assert text.endswith("\r\x1b[K")
    quiet = io.StringIO()
    with ProgressBar(100 << 20, "x", stream=quiet) as bar:  # not a TTY: never drawn
        bar.update(1 << 20)
    assert quiet.getvalue() == ""


def test_demo(capfd: pytest.CaptureFixture[str]) -> None:
    """The whole demo: registry push and mount (when root with /dev/fuse), then local archives."""
    from blobfs.cli import demo

    if not demo.sample_dir().is_dir():
        pytest.skip("blobfs/_sample is not there yet")
    cwd = os.getcwd()
    assert demo.main([]) == 0
    assert os.getcwd() == cwd
    out = capfd.readouterr().out
    steps = ["push", "inspect", "create", "ls -l -h", "tree", "cat", "verify", "cp -r"]
    if os.geteuid() == 0 and os.path.exists("/dev/fuse"):
        steps += ["mount", "status", "umount"]
        assert "$ ls -lR" in out
        # The README of the sample tree, read through the mount.
        readme = (demo.sample_dir() / "README.txt").read_text()
        assert out.count(readme.splitlines()[0]) >= 2
        assert "blobfs-demo-" not in Path("/proc/self/mountinfo").read_text()
    for step in steps:
        assert f"$ blobfs {step}" in out
    assert "Registry stopped" in out
    assert "Demo finished" in out
