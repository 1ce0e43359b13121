"""Registry caches, offline mode, mirrors and proxy environment variables, against real
docker-registry instances (an origin and a proxy-mode pull-through mirror)."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blobfs.core import Compression
from blobfs.errors import RegistryError
from blobfs.registry._client import Registry
from blobfs.registry._manifest import digest_of
from blobfs.registry._mirrors import mirror_base_url, parse_mirrors
from blobfs.registry.cache import IndexCache, ManifestCache, RefCache, RegistryCaches
from tests._cli import Capture, run, run_json
from tests._registry import LocalRegistry, local_registry
from tests._trees import write_tree

FILES = {
    "a.txt": b"hello mirrors\n",
    "dir/b.bin": os.urandom(3000),
    "dir/c.txt": b"x" * 70_000,
}
"""A small tree: a text file, random bytes and a compressible file (two blocks' worth)."""


def _closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Counting:
    """An httpx client whose requests are counted (event hook)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.hosts: list[str] = []
        self.client = httpx.Client(event_hooks={"request": [self._hook]}, timeout=10)

    def _hook(self, request: httpx.Request) -> None:
        self.requests.append(f"{request.method} {request.url.path}")
        self.hosts.append(f"{request.url.host}:{request.url.port}")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src", FILES)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[LocalRegistry]:
    (tmp_path / "origin").mkdir()
    with local_registry(tmp_path / "origin") as reg:
        yield reg


def _push(origin: LocalRegistry, tree: Path, repo: str = "team/app", tag: str = "v1") -> str:
    with Registry(retries=0) as reg:
        return reg.push(f"{origin.host}/{repo}:{tag}", tree, compression=Compression.ZSTD).digest


def _read_all(archive: object) -> None:
    for name, data in FILES.items():
        assert archive.read_file(name) == data  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------- cache units


def test_ref_cache_ttl_and_invalid_entries(tmp_path: Path) -> None:
    d = "sha256:" + "ab" * 32
    fresh = RefCache(tmp_path / "r", ttl=300)
    fresh.put("h/r:t", d)
    assert fresh.get("h/r:t") == d
    name = hashlib.sha256(b"h/r:t").hexdigest()
    assert (tmp_path / "r" / name).read_bytes() == d.encode()
    never = RefCache(tmp_path / "r", ttl=0)
    assert never.get("h/r:t") is None  # ttl 0: never served...
    entry = never.lookup("h/r:t")
    assert entry is not None  # ...but kept
    assert entry.digest == d
    assert not entry.fresh
    past = os.stat(tmp_path / "r" / name).st_mtime - 600
    os.utime(tmp_path / "r" / name, (past, past))
    assert fresh.get("h/r:t") is None  # expired
    (tmp_path / "r" / name).write_text("garbage")
    assert fresh.lookup("h/r:t") is None
    assert not (tmp_path / "r" / name).exists()
    fresh.put("h/r:t", "../../etc/passwd")  # not a digest: ignored
    assert fresh.get("h/r:t") is None
    with pytest.raises(ValueError, match="ttl"):
        RefCache(tmp_path, ttl=-1)


def test_digest_caches_verify_on_read(tmp_path: Path) -> None:
    raw = b'{"b": 1,  "a": 2}'  # odd spacing: must come back byte for byte
    digest = digest_of(raw)
    cache = ManifestCache(tmp_path / "m")
    cache.put(digest, raw)
    assert cache.get(digest) == raw
    cache.put(digest_of(b"other"), raw)  # content not matching its digest: refused
    assert cache.get(digest_of(b"other")) is None
    path = tmp_path / "m" / digest.removeprefix("sha256:")
    path.write_bytes(raw + b" ")
    assert cache.get(digest) is None
    assert not path.exists()
    assert cache.get("sha256:../../x") is None
    idx = IndexCache(tmp_path / "i")
    idx.put(digest_of(b"index"), b"index")
    assert idx.get(digest_of(b"index")) == b"index"


def test_unwritable_cache_is_only_a_miss(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    caches = RegistryCaches(blocker)
    caches.refs.put("h/r:t", "sha256:" + "00" * 32)
    caches.manifests.put(digest_of(b"x"), b"x")
    assert caches.refs.get("h/r:t") is None
    assert caches.manifests.get(digest_of(b"x")) is None


def _age(path: Path, seconds: float) -> None:
    """Make ``path`` look last used ``seconds`` ago (access and modification time)."""
    t = os.stat(path).st_mtime - seconds
    os.utime(path, (t, t))


def test_caches_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    caches = RegistryCaches(tmp_path / "c", max_bytes=10_000)
    blobs = [os.urandom(1500) for _ in range(6)]  # 9,000 bytes: fits
    for i, data in enumerate(blobs):
        caches.manifests.put(digest_of(data), data)
        _age(tmp_path / "c" / "manifests" / digest_of(data).removeprefix("sha256:"), 100 - i)
    caches.refs.put("h/r:t", digest_of(blobs[0]))
    assert caches.size_bytes() == 9000 + 71
    assert caches.entry_count() == 7
    # blobs[0] is the oldest written, but used now: it survives the prune a new put triggers.
    ref_path = next((tmp_path / "c" / "refs").iterdir())
    resolved = os.stat(ref_path).st_mtime
    assert caches.manifests.get(digest_of(blobs[0])) == blobs[0]
    extra = os.urandom(1500)
    caches.indexes.put(digest_of(extra), extra)  # 10,571 > 10,000: prune to 8,000
    assert caches.size_bytes() <= 8000
    assert caches.indexes.get(digest_of(extra)) == extra
    assert caches.manifests.get(digest_of(blobs[0])) == blobs[0]
    assert caches.manifests.get(digest_of(blobs[1])) is None  # least recently used: gone
    assert caches.manifests.get(digest_of(blobs[2])) is None
    # A lookup marks the ref used without changing when it was resolved (the TTL's clock).
    entry = caches.refs.lookup("h/r:t")
    assert entry is not None
    assert entry.resolved_at == resolved
    assert os.stat(ref_path).st_mtime == resolved
    # An entry larger than the bound is not stored at all.
    huge = os.urandom(10_001)
    caches.indexes.put(digest_of(huge), huge)
    assert caches.indexes.get(digest_of(huge)) is None
    # Explicit prune and clear; leftover temporary files of dead writers go too.
    before = caches.size_bytes()
    assert caches.prune(3000) == before - caches.size_bytes()
    assert caches.size_bytes() <= 3000
    tmp = tmp_path / "c" / "manifests" / ".tmp-dead"
    tmp.write_bytes(b"x" * 100)
    _age(tmp, 7200)
    assert caches.clear() > 0
    assert caches.size_bytes() == 0
    assert caches.entry_count() == 0
    assert not tmp.exists()
    unbounded = RegistryCaches(tmp_path / "u", max_bytes=0)
    unbounded.indexes.put(digest_of(huge), huge)
    assert unbounded.indexes.get(digest_of(huge)) == huge
    assert unbounded.prune() == 0
    with pytest.raises(ValueError, match="max_bytes"):
        RegistryCaches(tmp_path, max_bytes=-1)


def test_a_second_process_count_starts_from_a_scan(tmp_path: Path) -> None:
    """A new RegistryCaches (another process) sees what is on disk before it writes."""
    first = RegistryCaches(tmp_path / "c", max_bytes=0)
    for _ in range(8):
        data = os.urandom(1000)
        first.manifests.put(digest_of(data), data)
    second = RegistryCaches(tmp_path / "c", max_bytes=5000)
    data = os.urandom(1000)
    second.manifests.put(digest_of(data), data)
    assert second.size_bytes() <= 4000
    assert second.manifests.get(digest_of(data)) == data


def test_cli_cache_commands_cover_the_registry_caches(
    tmp_path: Path, origin: LocalRegistry, tree: Path, capsysbinary: Capture
) -> None:
    _push(origin, tree)
    cache = tmp_path / "cache"
    ref = f"{origin.host}/team/app:v1"
    assert run(capsysbinary, "inspect", ref, "--cache-dir", str(cache))[0] == 0
    doc = run_json(capsysbinary, "cache", "status", "--cache-dir", str(cache))
    reg = doc["caches"]["registry"]
    assert reg["files"] == 3  # the tag, the manifest, the index
    assert reg["size_bytes"] > 0
    assert reg["max_bytes"] == 256 << 20
    assert reg["path"] == f"{cache}/{{refs,manifests,indexes}}"
    doc = run_json(
        capsysbinary, "cache", "prune", "registry", "--max-size", "100", "--cache-dir", str(cache)
    )
    assert set(doc["caches"]) == {"registry"}
    assert doc["caches"]["registry"]["size_bytes"] <= 100
    assert doc["caches"]["registry"]["freed_bytes"] > 0
    doc = run_json(capsysbinary, "cache", "clear", "--cache-dir", str(cache))
    assert doc["caches"]["registry"] == {**doc["caches"]["registry"], "size_bytes": 0, "files": 0}
    rc, out, _ = run(capsysbinary, "cache", "status", "--cache-dir", str(cache))
    assert rc == 0
    assert "registry" in out
    # Offline now has nothing to serve: a clear error, not a stale answer.
    rc, _, err = run(capsysbinary, "inspect", ref, "--offline", "--cache-dir", str(cache))
    assert rc != 0
    assert "offline" in err


def test_parse_mirrors() -> None:
    text = """
[[registry]]
location = "origin.example:5000"

[[registry.mirror]]
location = "mirror1.local:5000"
insecure = true

[[registry.mirror]]
location = "mirror2.local"

[[registry]]
location = "nomirrors.example"
"""
    assert parse_mirrors(text) == {
        "origin.example:5000": [("mirror1.local:5000", True), ("mirror2.local", False)]
    }
    assert parse_mirrors("") == {}
    with pytest.raises(ValueError, match="invalid TOML"):
        parse_mirrors("[[registry]\n")
    with pytest.raises(ValueError, match="location"):
        parse_mirrors("[[registry]]\nlocation = 5\n")
    with pytest.raises(ValueError, match="insecure"):
        parse_mirrors(
            '[[registry]]\nlocation = "a"\n[[registry.mirror]]\nlocation = "b"\ninsecure = 1'
        )
    assert mirror_base_url(("m.local:5000", True), None) == "http://m.local:5000"
    assert mirror_base_url("m.local", None) == "https://m.local"
    assert mirror_base_url("127.0.0.1:9", None) == "http://127.0.0.1:9"
    assert mirror_base_url("https://m.local/", True) == "https://m.local"


# ---------------------------------------------------------------------------- client + caches


def test_ref_cache_ttl_controls_requests(tmp_path: Path, origin: LocalRegistry, tree: Path) -> None:
    digest = _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    counting = Counting()
    caches = RegistryCaches(tmp_path / "cache", ref_ttl=0)
    with Registry(client=counting.client, caches=caches) as reg:
        assert reg.fetch(ref).digest == digest
        first = len(counting.requests)
        assert first >= 1
        assert reg.fetch(ref).digest == digest  # ttl 0: the tag is asked again
        assert len(counting.requests) == 2 * first
    caches = RegistryCaches(tmp_path / "cache", ref_ttl=3600)
    with Registry(client=counting.client, caches=caches) as reg:
        counting.requests.clear()
        assert reg.fetch(ref).digest == digest
        assert reg.inspect(ref).file_count == len(FILES)
        by_digest = f"{origin.host}/team/app@{digest}"
        assert reg.fetch(by_digest).digest == digest
        # Only the index was downloaded (the ref and manifest came from the caches).
        assert counting.requests == [f"GET /v2/team/app/blobs/{_index_digest(reg, ref)}"]
        counting.requests.clear()
        with reg.pull(ref) as archive:
            assert counting.requests == []
            _read_all(archive)
    counting.client.close()


def _index_digest(reg: Registry, ref: str) -> str:
    return reg.fetch(ref).index_descriptor.digest


def test_manifest_cache_raw_bytes_and_tamper_detection(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    digest = _push(origin, tree)
    raw = httpx.get(
        f"{origin.base_url}/v2/team/app/manifests/v1",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    ).content
    caches = RegistryCaches(tmp_path / "cache")
    counting = Counting()
    with Registry(client=counting.client, caches=caches) as reg:
        ref = f"{origin.host}/team/app@{digest}"
        assert reg.fetch(ref).raw == raw
        cached = tmp_path / "cache" / "manifests" / digest.removeprefix("sha256:")
        assert cached.read_bytes() == raw
        counting.requests.clear()
        assert reg.fetch(ref).raw == raw
        assert counting.requests == []
        cached.write_bytes(raw.replace(b"{", b"{ ", 1))  # tampered (still valid JSON)
        assert reg.fetch(ref).raw == raw  # detected, dropped, fetched again
        assert counting.requests == [f"GET /v2/team/app/manifests/{digest}"]
        assert cached.read_bytes() == raw
    counting.client.close()


def test_offline_serves_from_cache_without_network(
    tmp_path: Path, origin: LocalRegistry, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    digest = _push(origin, tree)
    caches = RegistryCaches(tmp_path / "cache", ref_ttl=0)
    with Registry(caches=caches) as reg:
        reg.inspect(f"{origin.host}/team/app:v1")
    # The same cache, the references now naming a port nobody listens on: nothing may be sent.
    dead = f"127.0.0.1:{_closed_port()}"
    refs = tmp_path / "cache" / "refs"
    (name,) = os.listdir(refs)
    os.rename(refs / name, refs / hashlib.sha256(f"{dead}/team/app:v1".encode()).hexdigest())
    with Registry(caches=caches, offline=True, retries=0) as reg, caplog.at_level(logging.WARNING):
        assert reg.fetch(f"{dead}/team/app:v1").digest == digest
        info = reg.inspect(f"{dead}/team/app@{digest}")
        assert info.file_count == len(FILES)
        assert "offline mode: serving" in caplog.text
        assert "may be stale" in caplog.text  # ttl 0: the tag is past its TTL
        with pytest.raises(RegistryError, match="offline"):
            reg.fetch(f"{dead}/team/app:other")
        with pytest.raises(RegistryError, match="offline"):
            reg.list_tags(f"{dead}/team/app")


def test_origin_down_falls_back_to_cache_with_warning(
    tmp_path: Path, origin: LocalRegistry, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    digest = _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    caches = RegistryCaches(tmp_path / "cache", ref_ttl=0)  # always resolve while online
    with Registry(caches=caches, retries=0) as reg:
        with reg.pull(ref, cache=None) as archive:
            _read_all(archive)
        origin.stop()
        with caplog.at_level(logging.WARNING):
            assert reg.fetch(ref).digest == digest
            assert reg.inspect(ref).file_count == len(FILES)
        assert f"registry unreachable: serving {ref} from cache (resolved {digest} at" in (
            caplog.text
        )
        assert "may be stale" in caplog.text  # ttl 0: past the TTL, used anyway
        with pytest.raises(RegistryError):
            reg.fetch(f"{origin.host}/team/app:never-seen")


# ---------------------------------------------------------------------------- mirrors


def test_pull_through_proxy_mirror_survives_origin_outage(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    digest = _push(origin, tree)
    (tmp_path / "mirror").mkdir()
    with local_registry(tmp_path / "mirror", proxy_of=origin.base_url) as mirror:
        counting = Counting()
        mirrors = {origin.host: [mirror.host]}
        with Registry(client=counting.client, mirrors=mirrors, retries=0) as reg:
            ref = f"{origin.host}/team/app:v1"
            with reg.pull(ref) as archive:
                assert archive.manifest.digest == digest
                assert archive.data_url.startswith(mirror.base_url)
                _read_all(archive)
            assert reg.list_tags(ref) == ["v1"]
            # Every registry request of the client went to the mirror, none to the origin.
            assert counting.hosts
            assert set(counting.hosts) == {mirror.host}
            # Our range reads hang up early; a full GET lets the mirror finish caching the
            # data blob before its upstream goes away (else it answers 500 for it).
            data = archive.manifest.data_descriptor.digest
            assert httpx.get(f"{mirror.base_url}/v2/team/app/blobs/{data}").status_code == 200
            origin.stop()
            with reg.pull(ref) as archive:
                assert archive.manifest.digest == digest
                _read_all(archive)
            with reg.pull(f"{origin.host}/team/app@{digest}") as archive:
                _read_all(archive)
        counting.client.close()


def test_dead_mirror_falls_through_to_origin(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    digest = _push(origin, tree)
    dead = f"http://127.0.0.1:{_closed_port()}"
    missing = tmp_path / "empty"
    missing.mkdir()
    with (
        local_registry(missing) as empty,  # a mirror that answers 404 for everything
        Registry(mirrors={origin.host: [dead, empty.base_url]}) as reg,
    ):
        ref = f"{origin.host}/team/app:v1"
        assert reg.fetch(ref).digest == digest
        with reg.pull(ref) as archive:
            assert archive.data_url.startswith(origin.base_url)
            _read_all(archive)
        assert reg.list_tags(ref) == ["v1"]
        # Pushes ignore mirrors: they go to the origin.
        reg.push(f"{origin.host}/team/app:v2", tree)
        assert sorted(reg.list_tags(ref)) == ["v1", "v2"]


# ---------------------------------------------------------------------------- proxy env


def test_proxy_environment_variables_are_honoured(
    origin: LocalRegistry, tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    with Registry(retries=0) as reg, pytest.raises(RegistryError):
        reg.fetch(ref)  # sent to the (dead) proxy: proves the variable is used
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with Registry(retries=0) as reg:
        reg.fetch(ref)
        with reg.pull(ref) as archive:
            _read_all(archive)


def test_cached_pull_reads_data_from_first_mirror_with_the_blob(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    digest = _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    caches = RegistryCaches(tmp_path / "cache", ref_ttl=3600)
    (tmp_path / "mirror").mkdir()
    with local_registry(tmp_path / "mirror", proxy_of=origin.base_url) as mirror:
        with (
            Registry(caches=caches, mirrors={origin.host: [mirror.host]}) as reg,
            reg.pull(ref) as archive,
        ):
            _read_all(archive)  # the mirror now holds every blob
        counting = Counting()
        dead = f"http://127.0.0.1:{_closed_port()}"
        mirrors = {origin.host: [dead, mirror.base_url]}
        with Registry(client=counting.client, caches=caches, mirrors=mirrors) as reg:
            manifest = reg.fetch(ref)
            assert manifest.digest == digest
            with reg.pull(ref) as archive:
                # Manifest and index from the caches; a HEAD to the dead mirror (failed), then
                # one to the live mirror, which has the data blob.
                data = manifest.data_descriptor.digest
                assert counting.requests == [f"HEAD /v2/team/app/blobs/{data}"] * 2
                assert counting.hosts[-1] == mirror.host
                assert archive.data_url == f"{mirror.base_url}/v2/team/app/blobs/{data}"
                _read_all(archive)
        counting.client.close()
