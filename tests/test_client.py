"""blobfs.Client against a real registry: push a directory, pull it back lazily."""

from __future__ import annotations

from pathlib import Path

import pytest

import blobfs
from blobfs.client import Client
from blobfs.core import Compression
from blobfs.registry import Credentials, RemoteArchive
from tests._registry import local_registry

FILES = {
    "a/one.txt": b"one\n" * 100,
    "a/b/two.bin": bytes(range(256)) * 4096,
    "top.txt": b"top\n",
}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for name, data in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_client_is_exported() -> None:
    assert blobfs.Client is Client


def test_push_pull_round_trip_with_caches(tmp_path: Path, src: Path) -> None:
    with local_registry(tmp_path / "reg") as reg:
        ref = reg.base_url.removeprefix("http://") + "/client/test:v1"
        with Client(docker_config=False, cache_dir=tmp_path / "cache") as c:
            manifest = c.push(
                ref, src, compression=Compression.NONE, tags=["v1.0"], annotations={"k": "v"}
            )
            assert manifest.annotations["k"] == "v"
            with c.pull(ref) as ar:
                assert isinstance(ar, RemoteArchive)
                assert ar.manifest.digest == manifest.digest
                for name, data in FILES.items():
                    assert ar.read_file(name) == data
                assert ar.verify().ok
            with c.pull(ref.replace(":v1", ":v1.0")) as ar:
                assert ar.manifest.digest == manifest.digest
        assert (tmp_path / "cache" / "content").is_dir()
        assert (tmp_path / "cache" / "blocks").is_dir()


def test_push_without_tag_means_latest_and_no_caches(tmp_path: Path, src: Path) -> None:
    with local_registry(tmp_path / "reg") as reg:
        repo = reg.base_url.removeprefix("http://") + "/client/latest"
        with Client(docker_config=False) as c:
            c.push(repo, src)
            with c.pull(repo + ":latest") as ar:
                assert ar.read_file("top.txt") == FILES["top.txt"]
                assert ar.cache is None


def test_explicit_credentials(tmp_path: Path, src: Path) -> None:
    with local_registry(tmp_path / "reg", htpasswd={"u": "pw"}) as reg:
        host = reg.base_url.removeprefix("http://")
        creds = {host: Credentials("u", "pw")}
        with Client(docker_config=False, credentials=creds) as c:
            c.push(f"{host}/r/x:v1", src)
            with c.pull(f"{host}/r/x:v1") as ar:
                assert ar.read_file("a/one.txt") == FILES["a/one.txt"]


def test_bad_arguments(tmp_path: Path) -> None:
    with Client(docker_config=False) as c:
        with pytest.raises(ValueError, match="not a directory"):
            c.push("127.0.0.1:1/r/x:v1", tmp_path / "missing")
        with pytest.raises(ValueError, match="digest"):
            c.push("127.0.0.1:1/r/x@sha256:" + "0" * 64, tmp_path)
        with pytest.raises(ValueError, match="invalid reference"):
            c.pull("not a ref")


def test_registry_caches_offline_and_ref_ttl(tmp_path: Path, src: Path) -> None:
    cache = tmp_path / "cache"
    with local_registry(tmp_path / "reg") as reg:
        ref = reg.host + "/client/offline:v1"
        with Client(docker_config=False, cache_dir=cache, ref_ttl=0) as c:
            assert c.registry.caches is not None
            assert c.registry.caches.refs.ttl == 0
            digest = c.push(ref, src).digest
            with c.pull(ref) as ar:
                assert ar.read_file("top.txt") == FILES["top.txt"]
        for sub in ("refs", "manifests", "indexes", "content", "blocks"):
            assert (cache / sub).is_dir(), sub
        reg.stop()
        # Origin down: offline serves tag, manifest and index from the registry caches, and
        # the files read before from the content cache.
        with Client(docker_config=False, cache_dir=cache, offline=True) as c:
            assert c.registry.inspect(ref).digest == digest
            with c.pull(ref) as ar:
                assert ar.manifest.digest == digest
                assert ar.read_file("top.txt") == FILES["top.txt"]


def test_ca_file_and_ref_ttl_checked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Client(docker_config=False, ca_file=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="ref_ttl"):
        Client(docker_config=False, ref_ttl=-1)
