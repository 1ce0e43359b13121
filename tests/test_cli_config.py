"""The CLI's configuration file, --offline, --ca-file and registry mirrors, on real registries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from blobfs.cli import main
from blobfs.cli._common import load_config, parse_duration
from blobfs.registry import DEFAULT_REF_TTL
from tests._cli import Capture, run, run_json
from tests._registry import LocalRegistry, local_registry

FILES = {
    "docs/readme.md": b"# hello\n" * 300,
    "data/big.bin": bytes(range(256)) * 8192,
    "top.txt": b"top\n",
}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("BLOBFS_CONFIG", raising=False)
    monkeypatch.delenv("BLOBFS_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path / "origin") as reg:
        yield reg


def push(capsys: Capture, ref: str, src: Path) -> str:
    doc = run_json(capsys, "push", ref, str(src))
    return str(doc["digest"])


# ------------------------------------------------------------------------------ the file itself


@pytest.mark.parametrize(
    ("value", "seconds"),
    [('"5m"', 300.0), ('"30s"', 30.0), ("0", 0.0), ("45", 45.0), ('"1h"', 3600.0), ("1.5", 1.5)],
)
def test_ref_ttl_values(tmp_path: Path, value: str, seconds: float) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[cache]\nref_ttl = {value}\n")
    assert load_config(str(path)).ref_ttl == seconds


def test_parse_duration_rejects() -> None:
    for bad in ("5 parsecs", "-1", "", "m", True, [1]):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="0 or more"):
        parse_duration(-5)


def test_defaults_without_a_file(tmp_path: Path) -> None:
    cfg = load_config()
    assert cfg.path is None
    assert cfg.ref_ttl == DEFAULT_REF_TTL
    assert cfg.mirrors == {}
    assert cfg.insecure_hosts == ()


def test_full_file_from_xdg_config_home(tmp_path: Path) -> None:
    path = tmp_path / "xdg-config" / "blobfs" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        '[cache]\ndir = "caches/here"\nref_ttl = "2m"\n\n'
        '[[registry]]\nlocation = "reg.example.com:5000"\ninsecure = true\n\n'
        '[[registry]]\nlocation = "quay.example.com"\n'
        '[[registry.mirror]]\nlocation = "mirror.local:5000"\ninsecure = true\n'
        '[[registry.mirror]]\nlocation = "https://mirror2.example.com/sub"\n'
    )
    cfg = load_config()
    assert cfg.path == path
    assert cfg.cache_dir == path.parent / "caches/here"
    assert cfg.ref_ttl == 120.0
    assert cfg.insecure_hosts == ("reg.example.com:5000",)
    assert cfg.mirrors == {
        "quay.example.com": [
            ("mirror.local:5000", True),
            ("https://mirror2.example.com/sub", False),
        ]
    }


def test_cache_dir_from_config_and_precedence(
    tmp_path: Path, capsysbinary: Capture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[cache]\ndir = "{tmp_path / "cfg-cache"}"\n')
    monkeypatch.setenv("BLOBFS_CONFIG", str(path))
    rc, out, err = run(capsysbinary, "cache", "path")
    assert rc == 0, err
    assert out.splitlines()[0].endswith(str(tmp_path / "cfg-cache")), out
    monkeypatch.setenv("BLOBFS_CACHE_DIR", str(tmp_path / "env-cache"))
    rc, out, err = run(capsysbinary, "cache", "path")
    assert out.splitlines()[0].endswith(str(tmp_path / "env-cache")), out
    # --config wins over $BLOBFS_CONFIG.
    other = tmp_path / "other.toml"
    other.write_text("[cache\n")
    rc, out, err = run(capsysbinary, "--config", str(other), "cache", "path")
    assert rc == 1
    assert str(other) in err


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[cache\n", "invalid TOML"),
        ('[cache]\nref_ttl = "5 parsecs"\n', "ref_ttl"),
        ("[cache]\nref_ttl = -3\n", "ref_ttl"),
        ("[cache]\ndirr = 'x'\n", "unknown key 'dirr'"),
        ("[caches]\n", "unknown setting 'caches'"),
        ("cache = 3\n", "must be a table"),
        ('[[registry]]\nlocation = "r.example.com"\ninsecure = "yes"\n', "insecure"),
        ("[[registry]]\ninsecure = true\n", "location"),
        ('[[registry]]\nlocation = "r"\n[[registry.mirror]]\ninsecure = 1\n', "insecure"),
    ],
)
def test_malformed_config_is_one_line_error(
    tmp_path: Path, capsysbinary: Capture, text: str, problem: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    rc, out, err = run(capsysbinary, "--config", str(path), "ls", "127.0.0.1:1/x/y:v1")
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"blobfs: error: {path}: "), err
    assert problem in err


def test_missing_named_config_is_an_error(tmp_path: Path, capsysbinary: Capture) -> None:
    rc, _, err = run(capsysbinary, "ls", "127.0.0.1:1/x/y:v1", "--config", str(tmp_path / "no"))
    assert rc == 1
    assert err == f"blobfs: error: {tmp_path / 'no'}: configuration file not found\n"


# --------------------------------------------------------------------------- against registries


def test_mirror_from_config_serves_when_origin_is_down(
    tmp_path: Path, origin: LocalRegistry, src: Path, capsysbinary: Capture
) -> None:
    ref = f"{origin.host}/team/data:v1"
    digest = push(capsysbinary, ref, src)
    with local_registry(tmp_path / "mirror", proxy_of=origin.base_url) as mirror:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[[registry]]\nlocation = "{origin.host}"\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n'
        )
        base = ("--config", str(config), "--no-cache")
        # First pass through the mirror (it fills its storage from the origin).
        doc = run_json(capsysbinary, *base, "ls", ref, "docs")
        assert [e["name"] for e in doc["entries"]] == ["readme.md"]
        assert main([*base, "cat", ref, "top.txt", "data/big.bin"]) == 0
        assert capsysbinary.readouterr().out == FILES["top.txt"] + FILES["data/big.bin"]
        origin.stop()
        # Origin gone, no local caches: the mirror alone answers tag, manifest, index, data.
        doc = run_json(capsysbinary, *base, "ls", ref)
        assert sorted(e["name"] for e in doc["entries"]) == ["data", "docs", "top.txt"]
        assert main([*base, "cat", ref, "data/big.bin"]) == 0
        assert capsysbinary.readouterr().out == FILES["data/big.bin"]
        pinned = f"{origin.host}/team/data@{digest}"
        assert main([*base, "cat", pinned, "top.txt"]) == 0
        assert capsysbinary.readouterr().out == FILES["top.txt"]
        # Without the configuration file the origin is asked, and it is down.
        rc, _, err = run(capsysbinary, "--no-cache", "ls", ref)
        assert rc == 1
        assert err.startswith("blobfs: error: ")


def test_offline_serves_inspect_and_ls_from_caches(
    tmp_path: Path, origin: LocalRegistry, src: Path, capsysbinary: Capture
) -> None:
    ref = f"{origin.host}/team/data:v1"
    digest = push(capsysbinary, ref, src)
    cache = tmp_path / "cache"
    doc = run_json(capsysbinary, "--cache-dir", str(cache), "ls", ref)
    assert sorted(e["name"] for e in doc["entries"]) == ["data", "docs", "top.txt"]
    for sub in ("refs", "manifests", "indexes"):
        assert any((cache / sub).iterdir()), sub
    origin.stop()
    doc = run_json(capsysbinary, "--cache-dir", str(cache), "--offline", "inspect", ref)
    assert doc["digest"] == digest
    assert doc["file_count"] == 3
    doc = run_json(capsysbinary, "ls", ref, "docs", "--offline", "--cache-dir", str(cache))
    assert [e["name"] for e in doc["entries"]] == ["readme.md"]
    # A reference never seen is a one-line error offline, as is --offline without caches.
    rc, _, err = run(capsysbinary, "--cache-dir", str(cache), "--offline", "ls", ref + "x")
    assert rc == 1
    assert err.startswith("blobfs: error: "), err
    assert err.count("\n") == 1, err
    rc, _, err = run(capsysbinary, "--offline", "--no-cache", "ls", ref)
    assert rc == 1
    assert "--no-cache" in err
    assert err.count("\n") == 1


def test_ca_file_errors_are_one_line(tmp_path: Path, capsysbinary: Capture) -> None:
    missing = tmp_path / "missing.pem"
    rc, out, err = run(capsysbinary, "--ca-file", str(missing), "ls", "127.0.0.1:1/x/y:v1")
    assert rc == 1
    assert out == ""
    assert err.startswith(f"blobfs: error: {missing}: --ca-file: "), err
    assert err.count("\n") == 1, err
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    rc, out, err = run(capsysbinary, "inspect", "127.0.0.1:1/x/y:v1", "--ca-file", str(junk))
    assert rc == 1
    assert err.startswith(f"blobfs: error: {junk}: --ca-file: "), err
    assert err.count("\n") == 1, err
