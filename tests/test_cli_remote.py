"""The CLI over archives served by HTTP (``--index URL --data URL``) and ``blobfs cache``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from blobfs.cli import main
from blobfs.core import Compression, create_blob
from tests._cli import Capture, run, run_json
from tests._servers import Fault, RangeServer

FIXTURES = Path(__file__).parent / "fixtures" / "reference-v1"


@pytest.fixture
def served(range_server: RangeServer, tmp_path: Path) -> tuple[RangeServer, dict[str, bytes]]:
    src = tmp_path / "src"
    files = {
        "docs/readme.md": b"# hello\n" * 300,
        "data/big.bin": bytes(range(256)) * 8192,  # 2 MiB: chunked
        "data/small.txt": b"small\n",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    create_blob(src, tmp_path / "arch", compression=Compression.ZSTD).close()
    range_server.put("index.blob", (tmp_path / "arch" / "index.blob").read_bytes())
    range_server.put("data.blob", (tmp_path / "arch" / "data.blob").read_bytes())
    return range_server, files


def remote(srv: RangeServer, cache: Path) -> list[str]:
    return [
        "--index",
        srv.url("index.blob"),
        "--data",
        srv.url("data.blob"),
        "--cache-dir",
        str(cache),
    ]


def test_ls_cat_verify_over_http(
    served: tuple[RangeServer, dict[str, bytes]],
    tmp_path: Path,
    capsysbinary: Capture,
) -> None:
    srv, files = served
    args = remote(srv, tmp_path / "cache")
    doc = run_json(capsysbinary, "ls", *args, "data")
    assert [e["name"] for e in doc["entries"]] == ["big.bin", "small.txt"]
    assert main(["cat", *args, "docs/readme.md"]) == 0
    assert capsysbinary.readouterr().out == files["docs/readme.md"]
    doc = run_json(capsysbinary, "verify", *args)
    assert doc["verified"] is True
    assert doc["file_count"] == 3


def test_second_cat_is_served_by_the_cache(
    served: tuple[RangeServer, dict[str, bytes]],
    tmp_path: Path,
    capsysbinary: Capture,
) -> None:
    srv, files = served
    args = remote(srv, tmp_path / "cache")
    assert main(["cat", *args, "data/big.bin"]) == 0
    assert capsysbinary.readouterr().out == files["data/big.bin"]
    data_bytes = srv.stats.bytes_sent_for("data.blob")
    assert data_bytes > 0
    assert main(["cat", *args, "data/big.bin"]) == 0
    assert capsysbinary.readouterr().out == files["data/big.bin"]
    assert srv.stats.bytes_sent_for("data.blob") == data_bytes  # nothing new fetched
    # --no-cache reads the source again.
    assert main(["cat", *args, "--no-cache", "data/big.bin"]) == 0
    assert capsysbinary.readouterr().out == files["data/big.bin"]
    assert srv.stats.bytes_sent_for("data.blob") > data_bytes


def test_headers_are_sent(
    served: tuple[RangeServer, dict[str, bytes]],
    tmp_path: Path,
    capsysbinary: Capture,
) -> None:
    srv, _ = served
    args = remote(srv, tmp_path / "cache")
    rc, _out, err = run(capsysbinary, "ls", *args, "--header", "Authorization: Bearer s3cret")
    assert rc == 0, err
    assert srv.stats.records
    for record in srv.stats.records:
        assert record.headers.get("authorization") == "Bearer s3cret"
    rc, _out, err = run(capsysbinary, "ls", *args, "--header", "no colon")
    assert rc == 2
    assert "s3cret" not in err


def test_lying_server_gives_a_one_line_error_and_no_bytes(
    served: tuple[RangeServer, dict[str, bytes]],
    tmp_path: Path,
    capsysbinary: Capture,
) -> None:
    srv, _ = served
    args = remote(srv, tmp_path / "cache")
    srv.faults.add("data.blob", Fault("flip_byte", at=0), times=None)
    rc = main(["cat", *args, "--no-cache", "data/small.txt"])
    captured = capsysbinary.readouterr()
    assert rc == 1
    assert captured.out == b""
    err = captured.err.decode()
    assert err.count("\n") == 1
    assert "data/small.txt" in err
    assert "hash mismatch" in err


def test_unreachable_url_is_one_line(tmp_path: Path, capsysbinary: Capture) -> None:
    rc, _out, err = run(
        capsysbinary,
        "ls",
        "--index",
        "http://127.0.0.1:9/index.blob",
        "--data",
        "http://127.0.0.1:9/data.blob",
        "--cache-dir",
        str(tmp_path),
    )
    assert rc == 1
    # Retries are logged as warnings; the error itself is the one last line.
    last = err.splitlines()[-1]
    assert last.startswith("blobfs: error:")
    assert "127.0.0.1:9" in last
    assert "Traceback" not in err


def test_reference_fixture_over_http(
    range_server: RangeServer, tmp_path: Path, capsysbinary: Capture
) -> None:
    expected = json.loads((FIXTURES / "mixed-expected.json").read_text())["files"]
    for blob in ("index.blob", "data.blob"):
        range_server.put(blob, (FIXTURES / "mixed-zstd" / blob).read_bytes())
    args = remote(range_server, tmp_path / "cache")
    for f in expected:
        assert main(["cat", *args, f["path"]]) == 0
        assert hashlib.sha256(capsysbinary.readouterr().out).hexdigest() == f["sha256"]


def test_cache_commands(
    served: tuple[RangeServer, dict[str, bytes]],
    tmp_path: Path,
    capsysbinary: Capture,
) -> None:
    srv, _ = served
    cache = tmp_path / "cache"
    doc = run_json(capsysbinary, "cache", "path", "--cache-dir", str(cache))
    assert doc == {
        "root": str(cache),
        "content": str(cache / "content"),
        "blocks": str(cache / "blocks"),
    }
    assert main(["cat", *remote(srv, cache), "data/big.bin", "docs/readme.md"]) == 0
    capsysbinary.readouterr()
    doc = run_json(capsysbinary, "cache", "status", "--cache-dir", str(cache))
    assert doc["caches"]["content"]["size_bytes"] > 0
    assert doc["caches"]["content"]["files"] > 0
    doc = run_json(
        capsysbinary, "cache", "prune", "content", "--max-size", "1K", "--cache-dir", str(cache)
    )
    assert doc["caches"]["content"]["size_bytes"] <= 1024
    doc = run_json(capsysbinary, "cache", "clear", "--cache-dir", str(cache))
    for kind in ("content", "blocks"):
        assert doc["caches"][kind]["size_bytes"] == 0
        assert doc["caches"][kind]["files"] == 0
    rc, out, _ = run(capsysbinary, "cache", "status", "--cache-dir", str(cache))
    assert rc == 0
    assert "content" in out
    assert "blocks" in out
