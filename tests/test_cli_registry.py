"""The CLI against a real registry: push, pull, tag, ls/tree/cat/cp/verify/inspect by REF, login."""

from __future__ import annotations

import io
import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from blobfs.cli import main
from tests._cli import Capture, run, run_json
from tests._registry import LocalRegistry, local_registry
from tests._trees import write_tree

FILES = {
    "docs/readme.md": b"# hello\n" * 300,
    "docs/guide/intro.txt": b"intro\n",
    "data/big.bin": bytes(range(256)) * 8192,  # 2 MiB: chunked
    "run.sh": b"#!/bin/sh\necho hi\n",
}
MTIME_NS = 1_700_000_000_000_000_000


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    docker = tmp_path / "docker"
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("BLOBFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BLOBFS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no user config file
    return docker


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for name, data in FILES.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, ns=(MTIME_NS, MTIME_NS))
    (root / "run.sh").chmod(0o755)
    return root


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path / "reg") as reg:
        yield reg


def host_of(reg: LocalRegistry) -> str:
    return reg.base_url.removeprefix("http://")


@pytest.fixture
def pushed(registry: LocalRegistry, src: Path, capsysbinary: Capture) -> str:
    ref = f"{host_of(registry)}/team/data:v1"
    doc = run_json(
        capsysbinary,
        "push",
        ref,
        str(src),
        "--tag",
        "latest",
        "--tag",
        "stable",
        "--annotation",
        "org.example.owner=team-a",
    )
    assert doc["ref"] == ref
    assert doc["status"] == "pushed"
    assert doc["tags"] == ["latest", "stable"]
    assert doc["digest"].startswith("sha256:")
    return ref


def test_push_text_output(registry: LocalRegistry, src: Path, capsysbinary: Capture) -> None:
    ref = f"{host_of(registry)}/team/text:v1"
    rc, out, err = run(capsysbinary, "push", ref, str(src), "-c", "none")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Pushed {ref}"
    assert lines[1].startswith("Digest: sha256:")


def test_read_commands_by_reference(pushed: str, capsysbinary: Capture) -> None:
    doc = run_json(capsysbinary, "ls", pushed, "docs")
    assert [e["name"] for e in doc["entries"]] == ["guide", "readme.md"]
    assert doc["archive"] == pushed
    rc, out, err = run(capsysbinary, "tree", pushed)
    assert rc == 0, err
    assert "readme.md" in out
    assert "2 directories" not in out
    assert out.rstrip().endswith("3 directories, 4 files")
    assert main(["cat", pushed, "docs/readme.md", "run.sh"]) == 0
    assert capsysbinary.readouterr().out == FILES["docs/readme.md"] + FILES["run.sh"]
    doc = run_json(capsysbinary, "verify", pushed)
    assert doc["verified"] is True
    assert doc["file_count"] == 4
    # Other tags point at the same manifest.
    host_repo = pushed.rsplit(":", 1)[0]
    assert main(["cat", host_repo + ":stable", "docs/guide/intro.txt"]) == 0
    assert capsysbinary.readouterr().out == FILES["docs/guide/intro.txt"]
    # No tag means latest.
    doc = run_json(capsysbinary, "ls", host_repo)
    assert [e["name"] for e in doc["entries"]] == ["data", "docs", "run.sh"]


def test_inspect_reference(pushed: str, capsysbinary: Capture) -> None:
    doc = run_json(capsysbinary, "inspect", pushed)
    assert doc["ref"] == pushed
    assert doc["digest"].startswith("sha256:")
    assert doc["resolved_ref"].endswith("@" + doc["digest"])
    assert doc["file_count"] == 4
    assert doc["total_size"] == sum(len(v) for v in FILES.values())
    assert doc["compression"] == "zstd"
    assert doc["annotations"]["org.example.owner"] == "team-a"
    assert doc["created"]
    by_digest = doc["resolved_ref"]
    doc2 = run_json(capsysbinary, "inspect", by_digest)
    assert doc2["digest"] == doc["digest"]
    rc, out, err = run(capsysbinary, "inspect", pushed)
    assert rc == 0, err
    assert "Digest:" in out
    assert doc["digest"] in out
    assert "org.example.owner=team-a" in out


def test_cp_reference_path(pushed: str, tmp_path: Path, capsysbinary: Capture) -> None:
    dest = tmp_path / "out"
    doc = run_json(capsysbinary, "cp", "-r", pushed + ":/docs", str(dest))
    assert doc["file_count"] == 2
    assert doc["sources"] == [{"archive": pushed, "path": "docs"}]
    assert (dest / "readme.md").read_bytes() == FILES["docs/readme.md"]
    assert (dest / "guide" / "intro.txt").read_bytes() == FILES["docs/guide/intro.txt"]
    rc, _, err = run(capsysbinary, "cp", pushed + ":/run.sh", str(tmp_path / "one.sh"))
    assert rc == 0, err
    assert (tmp_path / "one.sh").read_bytes() == FILES["run.sh"]


def test_pull_extracts_with_modes_and_times(
    pushed: str, tmp_path: Path, capsysbinary: Capture
) -> None:
    dest = tmp_path / "pulled"
    doc = run_json(capsysbinary, "pull", pushed, str(dest))
    assert doc["ref"] == pushed
    assert doc["file_count"] == 4
    assert doc["total_size"] == sum(len(v) for v in FILES.values())
    assert doc["verified"] is True
    assert "@sha256:" in doc["resolved_ref"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750 & ~_umask()
    for name, data in FILES.items():
        p = dest / name
        assert p.read_bytes() == data
        assert p.stat().st_mtime_ns == MTIME_NS
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert not [p for p in dest.rglob(".blobfs-*")]
    # Existing files are skipped unless -f.
    (dest / "run.sh").write_bytes(b"local change")
    rc, out, err = run(capsysbinary, "pull", pushed, str(dest))
    assert rc == 0, err
    assert "Files:" in out
    assert "Verified:" in out
    assert (dest / "run.sh").read_bytes() == b"local change"
    assert "exists, skipped" in err
    rc, _, err = run(capsysbinary, "pull", "-f", pushed, str(dest))
    assert rc == 0, err
    assert (dest / "run.sh").read_bytes() == FILES["run.sh"]


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_tag(pushed: str, capsysbinary: Capture) -> None:
    repo = pushed.rsplit(":", 1)[0]
    rc, out, err = run(capsysbinary, "tag", pushed, repo + ":v2")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"Tagged: {repo}:v2"
    assert lines[1] == f"Source: {pushed}"
    digest = lines[2].removeprefix("Digest: ")
    assert run_json(capsysbinary, "inspect", repo + ":v2")["digest"] == digest
    rc, _, err = run(capsysbinary, "tag", pushed, repo + "-other:v2")
    assert rc == 1
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["pull", "127.0.0.1:5/Bad Ref:v1"], 1),
        (["pull", "no-host/repo:v1"], 1),
        (["push", "127.0.0.1:5/repo@sha256:" + "0" * 64, "."], 1),
        (["ls", "127.0.0.1:5/UPPER:v1"], 1),
        (["pull"], 2),
    ],
)
def test_bad_references_are_one_line_errors(
    argv: list[str], code: int, capsysbinary: Capture
) -> None:
    rc, out, err = run(capsysbinary, *argv)
    assert rc == code
    assert out == ""
    if code == 1:
        assert len(err.strip().splitlines()) == 1
        assert err.startswith("blobfs: error: ")


def test_missing_tag_is_one_line_error(registry: LocalRegistry, capsysbinary: Capture) -> None:
    rc, _, err = run(capsysbinary, "ls", f"{host_of(registry)}/nothing/here:v9")
    assert rc == 1
    assert len(err.strip().splitlines()) == 1


def test_login_push_pull_logout(
    tmp_path: Path,
    src: Path,
    isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: Capture,
) -> None:
    config = isolated_env / "config.json"
    isolated_env.mkdir()
    config.write_text(json.dumps({"auths": {"other.example": {"auth": "eDp5"}}, "x": 1}))
    with local_registry(tmp_path / "auth-reg", htpasswd={"u": "p4ss-w0rd"}) as reg:
        host = host_of(reg)
        ref = f"{host}/secure/app:v1"
        # Without credentials: one-line auth error.
        rc, _, err = run(capsysbinary, "push", ref, str(src))
        assert rc == 1
        assert len(err.strip().splitlines()) == 1
        # Wrong password: exit 1, one line, the password never shown, nothing written.
        monkeypatch.setattr(sys, "stdin", io.StringIO("wrong-secret\n"))
        rc, out, err = run(capsysbinary, "login", host, "-u", "u", "--password-stdin")
        assert rc == 1
        assert len(err.strip().splitlines()) == 1
        assert "wrong-secret" not in err + out
        assert host not in json.loads(config.read_text())["auths"]
        # Right password.
        monkeypatch.setattr(sys, "stdin", io.StringIO("p4ss-w0rd\n"))
        rc, out, err = run(capsysbinary, "login", host, "-u", "u", "--password-stdin")
        assert rc == 0, err
        assert out.strip() == "Login Succeeded"
        assert "p4ss-w0rd" not in out + err
        doc = json.loads(config.read_text())
        assert doc["x"] == 1
        assert "other.example" in doc["auths"]
        assert doc["auths"][host] == {"auth": "dTpwNHNzLXcwcmQ="}
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        # Push and pull with the stored credentials.
        rc, _, err = run(capsysbinary, "push", ref, str(src))
        assert rc == 0, err
        dest = tmp_path / "out"
        rc, _, err = run(capsysbinary, "pull", ref, str(dest))
        assert rc == 0, err
        assert (dest / "docs" / "readme.md").read_bytes() == FILES["docs/readme.md"]
        # -p works too, with a warning.
        rc, _, err = run(capsysbinary, "login", host, "-u", "u", "-p", "p4ss-w0rd")
        assert rc == 0
        assert "warning" in err
        assert "p4ss-w0rd" not in err
        # Logout removes the entry and keeps the rest.
        doc = run_json(capsysbinary, "logout", host)
        assert doc["removed"] is True
        doc = json.loads(config.read_text())
        assert host not in doc["auths"]
        assert "other.example" in doc["auths"]
        rc, _, err = run(capsysbinary, "--no-cache", "ls", ref)
        assert rc == 1
        rc, _, err = run(capsysbinary, "logout", host)
        assert rc == 0
        assert "not logged in" in err


def test_login_usage_errors(capsysbinary: Capture) -> None:
    rc, _, _ = run(capsysbinary, "login", "127.0.0.1:5000", "--password-stdin")
    assert rc == 2
    rc, _, _ = run(capsysbinary, "login", "127.0.0.1:5000", "-u", "u")
    assert rc == 2


def test_plain_http_options_parse(capsysbinary: Capture) -> None:
    # An unreachable registry named by --insecure-host: a one-line connection error.
    rc, _, err = run(
        capsysbinary,
        "--insecure-host",
        "reg.invalid:5000",
        "--plain-http",
        "ls",
        "reg.invalid:5000/a/b:v1",
        "--no-cache",
    )
    assert rc == 1
    assert len(err.strip().splitlines()) == 1


def test_reference_commands_fill_registry_caches(pushed: str, capsysbinary: Capture) -> None:
    cache = Path(os.environ["BLOBFS_CACHE_DIR"])
    doc = run_json(capsysbinary, "inspect", pushed)
    for sub in ("refs", "manifests", "indexes"):
        assert any((cache / sub).iterdir()), sub
    # Offline, inspect is answered from those caches.
    assert run_json(capsysbinary, "inspect", pushed, "--offline")["digest"] == doc["digest"]


def _many_files_tree(root: Path) -> dict[str, bytes]:
    files = {f"d{i % 7}/f{i:03d}.txt": f"file {i}\n".encode() * (i + 1) for i in range(200)}
    files["big/blob.bin"] = bytes(range(251)) * (3 * 4096 + 17)  # ~3 MiB: chunked, readahead
    write_tree(root, files, mtime_ns=MTIME_NS, exec_every=5)
    return files


def test_pull_parallel_many_files(
    registry: LocalRegistry, tmp_path: Path, capsysbinary: Capture
) -> None:
    src = tmp_path / "many"
    files = _many_files_tree(src)
    ref = f"{host_of(registry)}/team/many:v1"
    rc, _, err = run(capsysbinary, "--plain-http", "push", ref, str(src))
    assert rc == 0, err
    dest = tmp_path / "pulled"
    doc = run_json(capsysbinary, "--plain-http", "pull", ref, str(dest))
    assert doc["file_count"] == len(files)
    assert doc["skipped"] == []
    for name, data in files.items():
        got, want = dest / name, src / name
        assert got.read_bytes() == data
        assert stat.S_IMODE(got.stat().st_mode) == stat.S_IMODE(want.stat().st_mode)
        assert got.stat().st_mtime_ns == want.stat().st_mtime_ns
    assert not list(dest.rglob(".blobfs-*"))
    # Again: every file exists, all skipped (reported in path order), nothing changed.
    doc = run_json(capsysbinary, "--plain-http", "pull", ref, str(dest))
    assert doc["file_count"] == 0
    assert doc["skipped"] == sorted(doc["skipped"])
    assert len(doc["skipped"]) == len(files)


def test_pull_corrupt_blob_fails_cleanly(
    registry: LocalRegistry, tmp_path: Path, capsysbinary: Capture
) -> None:
    src = tmp_path / "many"
    files = _many_files_tree(src)
    ref = f"{host_of(registry)}/team/bad:v1"
    doc = run_json(capsysbinary, "--plain-http", "push", ref, str(src), "-c", "none")
    rc, out, err = run(capsysbinary, "--plain-http", "inspect", ref, "--no-cache")
    assert rc == 0, err
    data_digest = next(line.split()[1] for line in out.splitlines() if line.startswith("Data:"))
    assert doc["digest"] != data_digest
    # Flip one byte of the data blob in the registry's own storage (same size, wrong content).
    hexd = data_digest.removeprefix("sha256:")
    blob = next((tmp_path / "reg").rglob(f"blobs/sha256/{hexd[:2]}/{hexd}/data"))
    raw = bytearray(blob.read_bytes())
    victim = files["d3/f010.txt"]
    at = raw.index(victim)  # an uncompressed small file
    raw[at] ^= 0xFF
    blob.write_bytes(bytes(raw))
    dest = tmp_path / "pulled"
    rc, out, err = run(capsysbinary, "--plain-http", "pull", ref, str(dest))
    assert rc == 1
    # One error line (the library also warns once that it refetched from the origin).
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert "d3/f010.txt" in errors[0]
    assert "Traceback" not in err
    assert not list(dest.rglob(".blobfs-*"))
    assert not (dest / "d3" / "f010.txt").exists()


def test_pull_never_follows_a_symlink_in_dest(
    pushed: str, tmp_path: Path, capsysbinary: Capture
) -> None:
    """A symlink planted where an archive directory goes: the pull refuses it in one line,
    writes nothing through it, and leaves no temporary file."""
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "pulled"
    dest.mkdir()
    (dest / "docs").symlink_to(outside)
    rc, out, err = run(capsysbinary, "pull", pushed, str(dest))
    assert rc == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert "symlink" in err
    assert f"{dest / 'docs'}" in err
    assert not list(outside.iterdir())
    assert not list(dest.rglob(".blobfs-*"))


def test_pull_progress_bar_and_quiet(
    registry: LocalRegistry, tmp_path: Path, capsysbinary: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal a pull over 8 MiB draws a bar on stderr and erases it before the summary;
    with ``-q`` a successful pull prints nothing at all."""
    from blobfs.cli import _progress

    src = tmp_path / "big"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(9 << 20))
    (src / "small.txt").write_bytes(b"small\n")
    ref = f"{host_of(registry)}/team/bar:v1"
    rc, _, err = run(capsysbinary, "push", ref, str(src), "-c", "none")
    assert rc == 0, err
    monkeypatch.setattr(_progress, "_isatty", lambda stream: True)
    rc, out, err = run(capsysbinary, "pull", ref, str(tmp_path / "a"))
    assert rc == 0, err
    assert "pulling" in err
    assert "100%" in err
    assert err.endswith("\r\x1b[K")
    assert "Files:       2" in out
    rc, out, err = run(capsysbinary, "pull", "-q", ref, str(tmp_path / "b"))
    assert (rc, out, err) == (0, "", "")
    assert (tmp_path / "b" / "random.bin").read_bytes() == (src / "random.bin").read_bytes()


def test_login_missing_ca_file_is_one_line_error(tmp_path: Path, capsysbinary: Capture) -> None:
    missing = tmp_path / "nope.pem"
    for argv in (
        ("--ca-file", str(missing), "login", "reg.invalid:5000", "-u", "u", "--password-stdin"),
        ("login", "reg.invalid:5000", "-u", "u", "--password-stdin", "--ca-file", str(missing)),
    ):
        rc, out, err = run(capsysbinary, *argv)
        assert rc == 1
        assert out == ""
        assert len(err.strip().splitlines()) == 1, err
        assert str(missing) in err
        assert "--ca-file" in err


def test_registry_push_reports_upload_progress(registry: LocalRegistry, tmp_path: Path) -> None:
    import httpx

    from blobfs.registry import Registry

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "random.bin").write_bytes(os.urandom(3 << 20))  # incompressible: a 3 MiB data blob
    calls: list[tuple[str, int, int]] = []
    with httpx.Client(timeout=30) as http, Registry(client=http, chunk_size=1 << 20) as reg:
        m = reg.push(
            f"{host_of(registry)}/team/progress:v1",
            tree,
            progress=lambda d, done, total: calls.append((d, done, total)),
        )
        data = m.data_descriptor
        seen = [(done, total) for d, done, total in calls if d == data.digest]
        assert len(seen) >= 3  # 0 when it starts, then one per MiB sent
        dones = [done for done, _ in seen]
        assert dones == sorted(dones)
        assert len(set(dones)) == len(dones)
        assert all(total == data.size for _, total in seen)
        assert dones[-1] == data.size
        # Every blob ends complete: config, index, data.
        finals = {d: done for d, done, total in calls if done == total}
        assert {m.index_descriptor.digest, data.digest} <= set(finals)
        # Pushed again: every blob is present, reported complete at once.
        calls.clear()
        reg.push(
            f"{host_of(registry)}/team/progress:v2",
            tree,
            progress=lambda d, done, total: calls.append((d, done, total)),
        )
        assert len(calls) == 3
        assert all(done == total for _, done, total in calls)
