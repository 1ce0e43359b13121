"""Registry faults: real docker-registry outages, token expiry and storage corruption; a
malicious/broken registry (a small threaded fake: wrong digests, huge and endless bodies, wrong
media types, redirect loops, 429 storms). Every failure must be a clear error, never a hang or
wrong bytes, and leave no partial file (pull) and no poisoned cache behind.

Already covered elsewhere (not repeated here): a swapped index blob behind a scripted proxy and
5xx retries (test_registry_client.py), a token the registry rejects right away
(test_registry_auth.py), a corrupt data blob in storage through ``blobfs pull``
(test_cli_registry.py), the data source's own faults (test_http.py).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from blobfs.core import Compression, create_blob
from blobfs.core.cache.disk import BlockCache, DiskCache
from blobfs.core.http import HttpSource
from blobfs.errors import (
    DigestMismatch,
    HttpError,
    IntegrityError,
    InvalidManifest,
    RegistryError,
    SourceError,
)
from blobfs.registry import (
    DATA_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    Credentials,
    CredentialStore,
    Descriptor,
    Registry,
    RegistryAuth,
    RegistryCaches,
    _failover,
    build_manifest,
)
from blobfs.registry._failover import FailoverSource
from blobfs.registry._manifest import digest_of
from blobfs.registry._transport import MAX_RETRY_AFTER, retry_delay
from tests._cli import Capture, run
from tests._registry import LocalRegistry, local_registry
from tests._servers import Fault as ServerFault
from tests._servers import RangeServer, serve_blobs
from tests._token_server import TokenServer
from tests._trees import write_tree

FILES = {
    "a.txt": b"first file\n" * 50,
    "b.txt": b"second file, read after the fault\n" * 40,
    "c.txt": b"third\n" * 30,
    "dir/victim.txt": b"this file gets corrupted in storage\n" * 20,
    "dir/big.bin": os.urandom(3 << 20),
}
"""Small uncompressed files (locatable in the data blob) and a 3 MiB multi-chunk one."""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src", FILES)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path / "origin") as reg:
        yield reg


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated CLI environment; returns the cache root."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("BLOBFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BLOBFS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "cache"


def _push(reg: LocalRegistry, tree: Path, repo: str = "team/app") -> str:
    with Registry(retries=0) as client:
        m = client.push(f"{reg.host}/{repo}:v1", tree, compression=Compression.NONE)
        return m.digest


def _blob_file(reg_dir: Path, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return next(reg_dir.rglob(f"blobs/sha256/{hexd[:2]}/{hexd}/data"))


# ------------------------------------------------------------------ real registry: outages


def test_registry_restarted_mid_read(tmp_path: Path, origin: LocalRegistry, tree: Path) -> None:
    """Stopped: reads and API calls fail with a clear error (no hang); restarted on the same
    port with the same storage: the same open archive reads on."""
    _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    with Registry(timeout=5, retries=1, backoff=0.05) as reg, reg.pull(ref) as archive:
        assert archive.read_file("a.txt") == FILES["a.txt"]
        origin.stop()
        with pytest.raises(HttpError) as info:
            archive.read_file("b.txt")
        message = str(info.value)
        assert origin.host in message
        assert "attempts" in message
        with pytest.raises(RegistryError, match=r"ConnectError.*after 2 attempts"):
            reg.fetch(ref)
        origin.restart()
        assert archive.read_file("b.txt") == FILES["b.txt"]
        assert archive.read_file("dir/big.bin") == FILES["dir/big.bin"]
        assert reg.fetch(ref).digest == archive.manifest.digest


@pytest.mark.timeout(120)
def test_hung_registry_fails_at_the_deadline_then_recovers(
    origin: LocalRegistry, tree: Path
) -> None:
    """A frozen registry accepts connections and never answers: each request ends at its read
    deadline, the read fails after its retries with an error naming the URL, no hang."""
    _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    with Registry(timeout=1, retries=0) as reg, reg.pull(ref) as archive:
        assert archive.read_file("a.txt") == FILES["a.txt"]
        origin.pause()
        try:
            with pytest.raises(RegistryError, match="ReadTimeout"):
                reg.fetch(ref)
            with pytest.raises(HttpError, match="attempts") as info:
                archive.read_file("c.txt")
            assert "/blobs/sha256:" in str(info.value)
        finally:
            origin.resume()
        assert archive.read_file("c.txt") == FILES["c.txt"]


def test_token_expiry_mid_read_is_refreshed(
    tmp_path: Path, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Real short-lived tokens on a token-auth registry: a long-lived pull outlives its cached
    token (the client still believes it valid); the registry's 401 makes the flow fetch a new
    one and every read goes on."""
    with (
        TokenServer(tmp_path / "tokens", users={"alice": "pw-Secret1"}) as ts,
        local_registry(tmp_path / "reg", token=ts) as reg,
    ):
        store = CredentialStore(
            {reg.host: Credentials("alice", "pw-Secret1")}, docker_config=False, auth_file=False
        )
        auth = RegistryAuth(store)
        ref = f"{reg.host}/team/tok:v1"
        other = f"{reg.host}/team/other:v1"
        ts.real_lifetime = 3  # announced: 300 s
        with Registry(auth=auth, retries=0) as client:
            client.push(ref, tree, compression=Compression.NONE)
            client.push(other, tree, compression=Compression.NONE)
            caplog.set_level(logging.DEBUG)
            with client.pull(ref) as archive:
                assert archive.read_file("a.txt") == FILES["a.txt"]
                other_digest = client.fetch(other).digest  # an API call's token, too
                hits = ts.hits
                time.sleep(4.5)  # both cached pull tokens are now refused by the registry
                assert archive.read_file("b.txt") == FILES["b.txt"]
                assert ts.hits == hits + 1  # one new token, transparently
                assert archive.read_file("c.txt") == FILES["c.txt"]
                assert ts.hits == hits + 1  # and it is reused
                assert client.fetch(other).digest == other_digest
                assert ts.hits == hits + 2
        for token in ts.issued:
            assert token not in caplog.text


def test_token_expiry_mid_push_is_refreshed_for_the_commit(tmp_path: Path) -> None:
    """A streamed upload outlives its token: the PATCH was let in while the token was good, the
    commit (PUT) that follows is refused with 401, so the flow fetches a new token and commits;
    the registry's digest check of the finished upload proves the bytes are whole. (A 401 on
    the PATCH itself, which makes the flow send the whole body again, is in
    test_registry_client.py.)"""
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(3 << 20))
    with (
        TokenServer(tmp_path / "tokens", users={"alice": "pw-Secret1"}) as ts,
        local_registry(tmp_path / "reg", token=ts) as reg,
    ):
        store = CredentialStore(
            {reg.host: Credentials("alice", "pw-Secret1")}, docker_config=False, auth_file=False
        )
        ts.real_lifetime = 2  # announced: 300 s
        slept: list[int] = []

        def progress(digest: str, done: int, total: int) -> None:
            if 0 < done < total and not slept:  # inside the data blob's PATCH
                slept.append(done)
                time.sleep(3)  # the cached token is now refused by the registry

        with Registry(auth=RegistryAuth(store), retries=0, chunk_size=1 << 20) as client:
            hits = ts.hits
            pushed = client.push(
                f"{reg.host}/team/up:v1", src, compression=Compression.NONE, progress=progress
            )
            assert slept
            assert ts.hits > hits + 1  # a token was fetched again mid-upload
            with client.pull(f"{reg.host}/team/up:v1") as archive:
                assert archive.manifest.digest == pushed.digest
                assert archive.read_file("big.bin") == (src / "big.bin").read_bytes()


def test_registry_restarted_mid_push_starts_the_upload_again(
    origin: LocalRegistry, tmp_path: Path
) -> None:
    """The registry dies in the middle of the data blob's streamed PATCH and comes back on the
    same port: the broken upload is started again from the file's first byte (a new upload),
    and the push succeeds."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(4 << 20)
    (src / "big.bin").write_bytes(data)
    starts: list[int] = []
    restarted: list[int] = []

    def progress(digest: str, done: int, total: int) -> None:
        if total != len(data):
            return
        if done == 0:
            starts.append(done)
        elif done < total and not restarted:
            restarted.append(done)
            origin.restart()  # the connection carrying the PATCH dies with the old process

    with Registry(retries=2, backoff=0.05, chunk_size=1 << 20) as client:
        pushed = client.push(
            f"{origin.host}/team/restart:v1", src, compression=Compression.NONE, progress=progress
        )
        assert restarted
        assert len(starts) == 2  # the data blob was sent twice, from its first byte
        with client.pull(f"{origin.host}/team/restart:v1") as archive:
            assert archive.manifest.digest == pushed.digest
            assert archive.read_file("big.bin") == data


# ------------------------------------------------------------------ real registry: storage


def test_data_blob_swapped_under_its_digest(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    """Bytes changed in the registry's storage: the file they belong to fails, the others read,
    and the caches keep nothing wrong (a repaired blob reads fine through the same caches)."""
    _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    with Registry() as reg:
        manifest = reg.fetch(ref)
    blob = _blob_file(tmp_path / "origin", manifest.data_descriptor.digest)
    good = blob.read_bytes()
    at = good.index(FILES["dir/victim.txt"])
    bad = bytearray(good)
    bad[at + 7] ^= 0x20
    blob.write_bytes(bytes(bad))
    content, blocks = DiskCache(tmp_path / "content"), BlockCache(tmp_path / "blocks")
    try:
        with Registry() as reg:
            with reg.pull(ref, cache=content, block_cache=blocks) as archive:
                with pytest.raises(IntegrityError, match=r"dir/victim\.txt"):
                    archive.read_file("dir/victim.txt")
                for name in ("a.txt", "b.txt", "dir/big.bin"):
                    assert archive.read_file(name) == FILES[name]
                report = archive.verify()
                assert [path for path, _ in report.failures] == ["dir/victim.txt"]
                assert report.data_error is not None  # the blob as a whole is wrong too
            blob.write_bytes(good)  # repaired: the caches did not keep the bad bytes
            with reg.pull(ref, cache=content, block_cache=blocks) as archive:
                assert archive.read_file("dir/victim.txt") == FILES["dir/victim.txt"]
                assert archive.verify().ok
    finally:
        content.close()
        blocks.close()


def test_index_blob_swapped_under_its_digest(
    tmp_path: Path, origin: LocalRegistry, tree: Path
) -> None:
    _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    caches = RegistryCaches(tmp_path / "cache")
    with Registry(caches=caches) as reg:
        manifest = reg.fetch(ref)
        blob = _blob_file(tmp_path / "origin", manifest.index_descriptor.digest)
        good = blob.read_bytes()
        blob.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        with pytest.raises(DigestMismatch, match="index blob"):
            reg.pull(ref)
        assert caches.indexes.get(manifest.index_descriptor.digest) is None
        assert not list((tmp_path / "cache" / "indexes").glob("*"))
        blob.write_bytes(good)
        with reg.pull(ref) as archive:
            assert archive.read_file("a.txt") == FILES["a.txt"]


# ------------------------------------------------------------------ a malicious registry

Fault = Callable[["FakeRegistry", BaseHTTPRequestHandler, str], bool]
"""``fault(fake, handler, kind)`` answers the request itself (True) or leaves it to the fake;
``kind`` is ``manifest``, ``index``, ``data`` or ``other``."""


class FakeRegistry:
    """Just enough of the distribution API to serve one archive (tag ``v1`` or by digest,
    single ranges on blobs), plus an optional :data:`Fault`. Threaded, on loopback."""

    def __init__(self, manifest: bytes, blobs: dict[str, bytes]) -> None:
        self.manifest = manifest
        self.digest = digest_of(manifest)
        self.blobs = blobs
        self.kinds = {_desc_of(manifest, 0): "index", _desc_of(manifest, 1): "data"}
        self.fault: Fault | None = None
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r == kind)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._route()

            def do_GET(self) -> None:
                self._route()

            def _route(self) -> None:
                parts = self.path.split("?")[0].split("/")
                kind = "other"
                if len(parts) > 3 and parts[-2] == "manifests":
                    kind = "manifest"
                elif len(parts) > 3 and parts[-2] == "blobs":
                    kind = fake.kinds.get(parts[-1], "other")
                with fake._lock:
                    fake.requests.append(kind)
                try:
                    if fake.fault is not None and fake.fault(fake, self, kind):
                        return
                    if kind == "manifest" and parts[-1] in ("v1", fake.digest):
                        send(
                            self,
                            200,
                            fake.manifest,
                            {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": fake.digest},
                        )
                    elif kind in ("index", "data"):
                        self._blob(fake.blobs[parts[-1]])
                    elif self.path == "/v2/":
                        send(self, 200, b"{}", {"Content-Type": "application/json"})
                    else:
                        send(self, 404, b'{"errors":[{"code":"NOT_FOUND"}]}', {})
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up (on purpose, in the endless-body faults)

            def _blob(self, data: bytes) -> None:
                rng = self.headers.get("Range")
                if rng is None:
                    send(self, 200, data, {"Content-Type": "application/octet-stream"})
                    return
                first, _, last = rng.removeprefix("bytes=").partition("-")
                start = int(first)
                end = min(int(last) if last else len(data) - 1, len(data) - 1)
                send(
                    self,
                    206,
                    data[start : end + 1],
                    {"Content-Range": f"bytes {start}-{end}/{len(data)}"},
                )

        return H


def send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    if "Content-Length" not in headers:
        h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def endless(h: BaseHTTPRequestHandler, status: int = 200, ctype: str = OCI_MANIFEST) -> None:
    """A chunked body that never ends (until the client hangs up)."""
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = b" " * 65536
    while True:
        h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))


def _desc_of(manifest: bytes, i: int) -> str:
    return str(json.loads(manifest)["layers"][i]["digest"])


@dataclass
class Served:
    fake: FakeRegistry
    ref: str
    index: bytes
    data: bytes


@pytest.fixture
def served(tmp_path: Path, tree: Path) -> Iterator[Served]:
    out = tmp_path / "archive"
    create_blob(tree, out).close()
    index = (out / "index.blob").read_bytes()
    data = (out / "data.blob").read_bytes()
    manifest = build_manifest(
        Descriptor(INDEX_MEDIA_TYPE, digest_of(index), len(index)),
        Descriptor(DATA_MEDIA_TYPE, digest_of(data), len(data)),
        created="2024-01-01T00:00:00Z",
    )
    fake = FakeRegistry(manifest, {digest_of(index): index, digest_of(data): data})
    try:
        yield Served(fake, f"{fake.host}/team/app:v1", index, data)
    finally:
        fake.close()


def _doc(fake: FakeRegistry, **changes: object) -> bytes:
    """The fake's manifest with ``changes`` (valid JSON, another digest)."""
    doc = json.loads(fake.manifest)
    doc.update(changes)
    return json.dumps(doc).encode()


def _on(kind_wanted: str, act: Callable[[FakeRegistry, BaseHTTPRequestHandler], None]) -> Fault:
    """A fault answering every ``kind_wanted`` request with ``act``."""

    def fault(fake: FakeRegistry, h: BaseHTTPRequestHandler, kind: str) -> bool:
        if kind != kind_wanted:
            return False
        act(fake, h)
        return True

    return fault


def _manifest_answer(body: Callable[[FakeRegistry], bytes], ctype: str = OCI_MANIFEST) -> Fault:
    return _on("manifest", lambda fake, h: send(h, 200, body(fake), {"Content-Type": ctype}))


def _redirect_to_self(fake: FakeRegistry, h: BaseHTTPRequestHandler) -> None:
    send(h, 307, b"", {"Location": h.path})


def _wrong_digest_header(fake: FakeRegistry, h: BaseHTTPRequestHandler) -> None:
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": "sha256:" + "0" * 64}
    send(h, 200, fake.manifest, headers)


def _huge(fake: FakeRegistry, h: BaseHTTPRequestHandler) -> None:
    send(h, 200, b" " * (5 << 20), {"Content-Type": OCI_MANIFEST})


def _index(fake: FakeRegistry) -> bytes:
    return fake.blobs[_desc_of(fake.manifest, 0)]


def _index_flipped(fake: FakeRegistry, h: BaseHTTPRequestHandler) -> None:
    index = _index(fake)
    send(h, 200, bytes([index[0] ^ 1]) + index[1:], {})


def _index_short(fake: FakeRegistry, h: BaseHTTPRequestHandler) -> None:
    send(h, 200, _index(fake)[:-10], {})


def _endless(status: int, ctype: str) -> Callable[[FakeRegistry, BaseHTTPRequestHandler], None]:
    return lambda fake, h: endless(h, status, ctype)


def _bad_layers(fake: FakeRegistry) -> bytes:
    layer = json.loads(fake.manifest)["layers"][0]
    return _doc(fake, layers=[{**layer, "mediaType": "x/y"}, layer])


DOCKER_V2 = "application/vnd.docker.distribution.manifest.v2+json"

FAULTS: dict[str, tuple[Fault, type[Exception], str]] = {
    "manifest digest header lies": (
        _on("manifest", _wrong_digest_header),
        DigestMismatch,
        "manifest: digest mismatch",
    ),
    "huge manifest": (_on("manifest", _huge), RegistryError, "over the limit of 4194304 bytes"),
    "endless manifest": (
        _on("manifest", _endless(200, OCI_MANIFEST)),
        RegistryError,
        "over the limit of 4194304",
    ),
    "endless error body": (_on("manifest", _endless(500, "text/plain")), RegistryError, "HTTP 500"),
    "manifest is an index": (
        _manifest_answer(lambda f: b'{"schemaVersion":2,"manifests":[]}', OCI_INDEX),
        InvalidManifest,
        "image index",
    ),
    "docker manifest": (
        _manifest_answer(lambda f: _doc(f, mediaType=DOCKER_V2)),
        InvalidManifest,
        "mediaType",
    ),
    "wrong artifact type": (
        _manifest_answer(lambda f: _doc(f, artifactType="application/x-other")),
        InvalidManifest,
        "artifactType",
    ),
    "wrong layer media type": (_manifest_answer(_bad_layers), InvalidManifest, "layer media type"),
    "not JSON": (_manifest_answer(lambda f: b"<html>hello</html>"), InvalidManifest, "not JSON"),
    "manifest redirect loop": (_on("manifest", _redirect_to_self), RegistryError, "redirects"),
    "index redirect loop": (_on("index", _redirect_to_self), RegistryError, "redirects"),
    "endless index": (
        _on("index", _endless(200, "application/octet-stream")),
        RegistryError,
        "over the limit of",
    ),
    "index bytes swapped": (_on("index", _index_flipped), DigestMismatch, "index blob"),
    "index short": (_on("index", _index_short), DigestMismatch, "index blob"),
}


def _assert_clean(cache: Path, s: Served) -> None:
    """Nothing but genuine content in the registry caches (none at all is fine)."""
    genuine = {
        "manifests": {s.fake.manifest},
        "indexes": {s.index},
        "refs": {s.fake.digest.encode()},
    }
    for sub, allowed in genuine.items():
        for f in (cache / sub).glob("*") if (cache / sub).is_dir() else ():
            assert f.read_bytes() in allowed, f"poisoned {sub} cache entry {f.name}"


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_malicious_registry_library(name: str, served: Served, tmp_path: Path) -> None:
    fault, error, match = FAULTS[name]
    served.fake.fault = fault
    cache = tmp_path / "regcache"
    with (
        Registry(caches=RegistryCaches(cache), retries=0, timeout=10) as reg,
        pytest.raises(error, match=match) as info,
    ):
        reg.pull(served.ref)
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 600
    _assert_clean(cache, served)
    # The same registry healed: the same caches serve the genuine archive.
    served.fake.fault = None
    with Registry(caches=RegistryCaches(cache), retries=0) as reg, reg.pull(served.ref) as ar:
        assert ar.read_file("a.txt") == FILES["a.txt"]


@pytest.mark.parametrize(
    "name",
    [
        "manifest digest header lies",
        "endless manifest",
        "index redirect loop",
        "endless index",
        "wrong artifact type",
    ],
)
def test_malicious_registry_cli_pull(
    name: str, served: Served, tmp_path: Path, cli_env: Path, capsysbinary: Capture
) -> None:
    served.fake.fault = FAULTS[name][0]
    dest = tmp_path / "dest"
    rc, _, err = run(capsysbinary, "pull", served.ref, str(dest))
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert not dest.exists() or not any(dest.rglob("*"))
    _assert_clean(cli_env, served)


def test_wrong_data_bytes_fail_the_file_and_leave_no_partial_file(
    served: Served, tmp_path: Path, cli_env: Path, capsysbinary: Capture
) -> None:
    """The data blob answered with other bytes (same length): every file fails its hash, the
    pull leaves nothing behind, the content cache stays empty."""

    def lying(fake: FakeRegistry, h: BaseHTTPRequestHandler, kind: str) -> bool:
        if kind != "data":
            return False
        rng = h.headers.get("Range", "bytes=0-")
        first, _, last = rng.removeprefix("bytes=").partition("-")
        start, end = int(first), int(last) if last else len(served.data) - 1
        end = min(end, len(served.data) - 1)
        rng_header = {"Content-Range": f"bytes {start}-{end}/{len(served.data)}"}
        send(h, 206, bytes(end - start + 1), rng_header)
        return True

    served.fake.fault = lying
    with (
        Registry(retries=0) as reg,
        reg.pull(served.ref) as archive,
        pytest.raises(IntegrityError),
    ):
        archive.read_file("a.txt")
    dest = tmp_path / "dest"
    rc, _, err = run(capsysbinary, "pull", served.ref, str(dest))
    assert rc == 1
    assert "Traceback" not in err
    assert not dest.exists() or not [p for p in dest.rglob("*") if p.is_file()]
    assert _entries(cli_env / "content") == []
    assert _entries(cli_env / "blocks") == []  # wrong blocks were dropped, not kept
    _assert_clean(cli_env, served)


def _entries(cache: Path) -> list[Path]:
    """The entry files of a disk cache (bookkeeping under dot names left out)."""
    if not cache.exists():
        return []
    return [
        p
        for p in cache.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(cache).parts)
    ]


# ------------------------------------------------------------------ 429 storms


def test_retry_delay_honours_and_caps_retry_after() -> None:
    assert retry_delay(0.2, 0, None) == pytest.approx(0.2)
    assert retry_delay(0.2, 2, None) == pytest.approx(0.8)
    assert retry_delay(0.2, 0, "3") == 3.0
    assert retry_delay(0.2, 0, "0") == 0.0
    assert retry_delay(0.2, 0, "3600") == MAX_RETRY_AFTER
    assert retry_delay(0.2, 1, "-5") == 0.0
    assert retry_delay(0.2, 1, "nan") == pytest.approx(0.4)
    assert retry_delay(0.2, 1, "Wed, 21 Oct 2015 07:28:00 GMT") == pytest.approx(0.4)


def _storm(limit: int, retry_after: str) -> Fault:
    """429 with ``Retry-After`` for the first ``limit`` requests of each kind."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def fault(fake: FakeRegistry, h: BaseHTTPRequestHandler, kind: str) -> bool:
        with lock:
            seen[kind] = seen.get(kind, 0) + 1
            storm = seen[kind] <= limit
        if storm:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
            send(h, 429, body, {"Retry-After": retry_after})
        return storm

    return fault


def test_429_storm_is_ridden_out_with_retry_after(served: Served) -> None:
    served.fake.fault = _storm(2, "1")
    start = time.monotonic()
    with Registry(retries=2, backoff=0.01) as reg:
        manifest = reg.fetch(served.ref)
        assert manifest.digest == served.fake.digest
        # The server asked for 1 s twice: obeyed, not the 0.01 s backoff (a lower bound only).
        assert time.monotonic() - start >= 2.0
        assert served.fake.count("manifest") == 3
    # The data range reads of a pulled archive ride out their own storm (Retry-After: 0).
    served.fake.fault = _storm(3, "0")
    with Registry(retries=3, backoff=0.01) as reg, reg.pull(served.ref) as archive:
        for name, data in FILES.items():
            assert archive.read_file(name) == data
        assert served.fake.count("data") >= 4


def test_endless_429_storm_is_a_clear_error(served: Served) -> None:
    served.fake.fault = _storm(1000, "0")
    with Registry(retries=2, backoff=0.01) as reg:
        expected = r"HTTP 429 \(TOOMANYREQUESTS: slow down\), after 3 attempts"
        with pytest.raises(RegistryError, match=expected) as info:
            reg.fetch(served.ref)
        assert info.value.status == 429
    assert served.fake.count("manifest") == 3


# ------------------------------------------------------------------ data-source failover


def test_mirror_dies_mid_read_and_reads_fail_over_to_the_origin(
    tmp_path: Path,
    origin: LocalRegistry,
    tree: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Origin + proxy-mode mirror: an archive pulled through the mirror keeps reading (right
    bytes, no error) when the mirror is killed while a reader thread is busy, and goes back to
    the mirror once it is up again (after the retry pause)."""
    monkeypatch.setattr(_failover, "RETRY_AFTER", 1.0)
    digest = _push(origin, tree)
    ref = f"{origin.host}/team/app:v1"
    with (
        local_registry(tmp_path / "mirror", proxy_of=origin.base_url) as mirror,
        Registry(mirrors={origin.host: [mirror.host]}, timeout=5) as reg,
    ):
        manifest = reg.fetch(ref)
        assert manifest.digest == digest
        data = manifest.data_descriptor.digest
        # Let the mirror cache the whole data blob (a pull-through cache fills on a full GET).
        assert len(httpx.get(f"{mirror.base_url}/v2/team/app/blobs/{data}").content) > 0
        with reg.pull(ref) as archive:
            mirror_url = f"{mirror.base_url}/v2/team/app/blobs/{data}"
            origin_url = f"{origin.base_url}/v2/team/app/blobs/{data}"
            assert archive.data_urls == (mirror_url, origin_url)
            assert archive.data_url == mirror_url
            rounds = 0
            errors: list[BaseException] = []
            first_round = threading.Event()
            stop = threading.Event()

            def reader() -> None:
                nonlocal rounds
                try:
                    while not stop.is_set():
                        for name, content in FILES.items():
                            assert archive.read_file(name) == content
                        rounds += 1
                        first_round.set()
                except BaseException as exc:
                    errors.append(exc)
                    first_round.set()

            caplog.set_level(logging.WARNING, logger="blobfs.registry._failover")
            thread = threading.Thread(target=reader)
            thread.start()
            assert first_round.wait(60)
            mirror.stop()  # while the reader is busy
            time.sleep(0.5)
            done = rounds
            while rounds < done + 2 and thread.is_alive():
                time.sleep(0.05)
            stop.set()
            thread.join(60)
            assert not errors, errors
            assert rounds >= done + 2
            assert f"{mirror_url} failed" in caplog.text
            assert f"reading from {origin_url}" in caplog.text
            # The mirror is back and the origin gone: after the pause, reads use the mirror.
            mirror.restart()
            origin.stop()
            time.sleep(1.1)
            assert archive.data_url == mirror_url
            assert archive.read_file("dir/victim.txt") == FILES["dir/victim.txt"]


def _source(url: str, size: int, client: httpx.Client | None = None) -> HttpSource:
    """One candidate of a FailoverSource: one attempt, the blob's shared id."""
    return HttpSource(url, size=size, source_id="sha256:blob", client=client, retries=0)


def test_failover_source_order_pause_and_last_error(
    range_server: RangeServer, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    now = [0.0]
    with serve_blobs({"blob": data}) as second, httpx.Client() as http:
        range_server.put("blob", data)
        first = HttpSource(
            range_server.url("blob"), size=len(data), source_id="x", client=http, retries=0
        )
        other = HttpSource(
            second.url("blob"), size=len(data), source_id="x", client=http, retries=0
        )
        src = FailoverSource([first, other], clock=lambda: now[0])
        assert src.read_at(0, 10) == data[:10]
        assert range_server.stats.requests_for("blob") == 1
        range_server.faults.add("blob", ServerFault("status", status=503), times=None)
        assert src.read_at(10, 10) == data[10:20]  # 503 from the first: the second answers
        assert src.url == second.url("blob")
        n = range_server.stats.requests_for("blob")
        assert src.read_at(20, 10) == data[20:30]
        assert range_server.stats.requests_for("blob") == n  # skipped while marked down
        range_server.faults.clear("blob")
        now[0] += _failover.RETRY_AFTER + 1
        assert src.url == range_server.url("blob")
        assert src.read_at(30, 10) == data[30:40]
        assert range_server.stats.requests_for("blob") == n + 1  # back on the first
        # The last candidate's failure is the read's error; a range outside the blob is not a
        # reason to fail over (the same for every candidate).
        range_server.faults.add("blob", ServerFault("status", status=503), times=None)
        second.faults.add("blob", ServerFault("status", status=404), times=None)
        with pytest.raises(HttpError, match="404"):
            src.read_at(0, 10)
        with pytest.raises(SourceError, match="outside"):
            src.read_at(len(data), 10)
        with pytest.raises(ValueError, match="not one blob"):
            FailoverSource(
                [first, HttpSource(second.url("blob"), size=5, source_id="x", client=http)]
            )
        src.close()


@pytest.mark.trio
async def test_failover_source_async_reads(range_server: RangeServer) -> None:
    data = os.urandom(50_000)
    range_server.put("blob", data)
    with serve_blobs({"blob": data}) as second:
        src = FailoverSource(
            [_source(range_server.url("blob"), len(data)), _source(second.url("blob"), len(data))]
        )
        range_server.faults.add("blob", ServerFault("drop"), times=None)
        assert await src.aread_at(100, 1000) == data[100:1100]
        assert second.stats.requests_for("blob") == 1
        await src.aclose()


def test_a_mirror_serving_wrong_bytes_is_passed_over(
    tmp_path: Path, tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes from a mirror failing verification make the read ask the next candidate (the
    mirror is marked down, as after a failure); wrong bytes from the last candidate are the
    read's IntegrityError. Nothing wrong is ever returned."""
    from blobfs.core import Archive
    from blobfs.errors import IntegrityError

    out = tmp_path / "archive"
    create_blob(tree, out).close()
    index = (out / "index.blob").read_bytes()
    data = (out / "data.blob").read_bytes()
    with serve_blobs({"blob": data}) as liar, serve_blobs({"blob": data}) as honest:
        liar.faults.add("blob", ServerFault("flip_byte", at=7), times=None)
        src = FailoverSource(
            [_source(liar.url("blob"), len(data)), _source(honest.url("blob"), len(data))]
        )
        caplog.set_level(logging.WARNING, logger="blobfs")
        with src, Archive(index, src) as archive:
            for name, content in FILES.items():
                assert archive.read_file(name) == content
            assert "served bytes that failed verification" in caplog.text
            assert src.url == honest.url("blob")  # marked down for the pause
            liar_requests = liar.stats.requests_for("blob")
            assert liar_requests >= 1
            assert archive.read_file("a.txt") == FILES["a.txt"]
            assert liar.stats.requests_for("blob") == liar_requests
        only = FailoverSource([_source(liar.url("blob"), len(data))])
        with only, Archive(index, only) as archive, pytest.raises(IntegrityError):
            archive.read_file("a.txt")
