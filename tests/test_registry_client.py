"""blobfs.registry.Registry against a real docker-registry 2.8, and the manifest rules."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from blobfs.core import Compression
from blobfs.core.http import HttpSource
from blobfs.errors import (
    DigestMismatch,
    HttpError,
    InvalidManifest,
    RegistryError,
    RegistryNotFound,
)
from blobfs.registry._client import Registry
from blobfs.registry._manifest import (
    ARTIFACT_TYPE,
    DATA_MEDIA_TYPE,
    EMPTY_CONFIG_DIGEST,
    EMPTY_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
    build_manifest,
    digest_of,
)
from blobfs.registry._reference import Reference
from tests._registry import LocalRegistry, local_registry

CHUNK = 4 << 20
"""Monolithic-upload limit used here: the 20 MiB+ data blob is streamed in one PATCH, the config
and index go up in one PUT each."""


class CountingTransport(httpx.BaseTransport):
    """Counts requests by (method, kind) where kind is the last-but-one path element."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.calls: Counter[tuple[str, str]] = Counter()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.rstrip("/").split("/")
        kind = "uploads" if "uploads" in parts else parts[-2]
        self.calls[(request.method, kind)] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Env:
    reg: LocalRegistry
    host: str
    tree: Path
    files: dict[str, bytes]
    transport: CountingTransport
    client: Registry
    pushed: Manifest


def _make_tree(root: Path) -> dict[str, bytes]:
    rnd = hashlib.sha256(b"seed").digest()
    files = {
        "a.txt": b"hello registry\n",
        "dir/b.json": json.dumps({"k": list(range(200))}).encode(),
        "dir/sub/c.bin": os.urandom(3000),
        "big/three.bin": (rnd * 100_000)[: 3 << 20],  # 3 MiB, compressible, chunked
        "big/random.bin": os.urandom(20 << 20),  # 20 MiB incompressible: a multi-PATCH upload
    }
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    work = tmp_path_factory.mktemp("registry")
    tree = work / "tree"
    files = _make_tree(tree)
    with local_registry(work) as reg:
        transport = CountingTransport()
        http = httpx.Client(transport=transport, timeout=30)
        client = Registry(client=http, chunk_size=CHUNK, backoff=0.01)
        host = reg.base_url.removeprefix("http://")
        pushed = client.push(f"{host}/test/tree:v1", tree, compression=Compression.ZSTD)
        try:
            yield Env(reg, host, tree, files, transport, client, pushed)
        finally:
            client.close()
            http.close()


def _put_manifest(env: Env, repo: str, target: str, doc: dict[str, Any], mt: str) -> str:
    raw = json.dumps(doc).encode()
    r = httpx.put(
        f"{env.reg.base_url}/v2/{repo}/manifests/{target}",
        content=raw,
        headers={"Content-Type": mt},
    )
    assert r.status_code == 201, r.text
    return digest_of(raw)


# ---------------------------------------------------------------- push / pull / fetch


def test_push_streams_the_data_blob_in_one_patch_and_pull_reads_everything(env: Env) -> None:
    # The first push (in the fixture): config, index and data each opened an upload; the
    # 20 MiB+ data blob went up in one PATCH, then a PUT committed it; the small blobs in one
    # PUT each.
    calls = env.transport.calls
    assert calls[("POST", "uploads")] == 3
    assert calls[("PATCH", "uploads")] == 1
    assert calls[("PUT", "uploads")] == 3
    m = env.pushed
    assert m.artifact_type == ARTIFACT_TYPE
    assert m.annotations["org.opencontainers.image.created"].endswith("Z")
    with env.client.pull(f"{env.host}/test/tree:v1") as archive:
        assert archive.manifest.digest == m.digest
        assert sorted(archive.index.paths()) == sorted(env.files)
        for name, data in env.files.items():
            assert archive.read_file(name) == data


def test_fetch_returns_the_pushed_bytes(env: Env) -> None:
    fetched = env.client.fetch(f"{env.host}/test/tree:v1")
    assert fetched.raw == env.pushed.raw
    assert fetched.digest == env.pushed.digest == digest_of(fetched.raw)
    by_digest = env.client.fetch(f"{env.host}/test/tree@{env.pushed.digest}")
    assert by_digest.raw == env.pushed.raw
    assert fetched.index_descriptor.media_type == INDEX_MEDIA_TYPE
    assert fetched.data_descriptor.media_type == DATA_MEDIA_TYPE


def test_second_push_skips_existing_blobs_and_applies_tags(env: Env) -> None:
    env.transport.calls.clear()
    m = env.client.push(
        f"{env.host}/test/tree:v2",
        env.tree,
        tags=["extra1", "extra2"],
        annotations={"org.example.note": "<again> & again"},
        created="2026-01-25T10:30:00Z",
    )
    calls = env.transport.calls
    assert calls[("HEAD", "blobs")] == 3  # config, index, data: all present
    assert calls[("POST", "uploads")] == 0
    assert calls[("PATCH", "uploads")] == 0
    assert calls[("PUT", "manifests")] == 3
    assert b"\\u003cagain\\u003e \\u0026 again" in m.raw  # Go's encoding/json escaping
    assert m.created == "2026-01-25T10:30:00Z"
    for tag in ("v2", "extra1", "extra2"):
        assert env.client.fetch(f"{env.host}/test/tree:{tag}").raw == m.raw
    # Same tree and creation time: the same manifest (deterministic archive and JSON).
    again = env.client.push(f"{env.host}/test/tree:v3", env.tree, created="2026-01-25T10:30:00Z")
    assert again.index_descriptor == m.index_descriptor
    assert again.data_descriptor == m.data_descriptor


def test_push_of_a_local_archive_directory(env: Env, tmp_path: Path) -> None:
    from blobfs.core import create_blob

    create_blob(env.tree / "dir", tmp_path / "arch").close()
    m = env.client.push(f"{env.host}/test/local:1", tmp_path / "arch")
    assert m.index_descriptor.digest == digest_of((tmp_path / "arch/index.blob").read_bytes())
    with env.client.pull(f"{env.host}/test/local:1") as archive:
        assert archive.read_file("b.json") == env.files["dir/b.json"]


def test_tag_keeps_the_digest(env: Env) -> None:
    digest = env.client.tag(f"{env.host}/test/tree:retagged", env.pushed.digest)
    assert digest == env.pushed.digest
    fetched = env.client.fetch(f"{env.host}/test/tree:retagged")
    assert fetched.digest == env.pushed.digest
    assert fetched.raw == env.pushed.raw
    assert env.client.resolve(f"{env.host}/test/tree:retagged") == env.pushed.digest


def test_list_tags(env: Env) -> None:
    env.client.tag(f"{env.host}/test/tree:zz-listed", env.pushed.digest)
    tags = env.client.list_tags(f"{env.host}/test/tree")
    assert {"v1", "zz-listed"} <= set(tags)


def test_list_tags_follows_link_pagination() -> None:
    # docker-registry 2.8 ignores ?n= and answers in one page: a scripted registry pages.
    pages = {
        None: (["a", "b"], '</v2/r/tags/list?last=b&n=2>; rel="next"'),
        "b": (["c", "d"], '</v2/r/tags/list?last=d&n=2>; rel="next"'),
        "d": (["e"], None),
    }
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        tags, link = pages[request.url.params.get("last")]
        headers = {"Link": link} if link else {}
        return httpx.Response(200, json={"name": "r", "tags": tags}, headers=headers)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        Registry(client=http) as client,
    ):
        assert client.list_tags("127.0.0.1:5999/r") == ["a", "b", "c", "d", "e"]
    assert len(seen) == 3
    assert seen[0].startswith("http://127.0.0.1:5999/v2/r/tags/list?n=")


def test_inspect(env: Env) -> None:
    info = env.client.inspect(f"{env.host}/test/tree:v1")
    assert info.digest == env.pushed.digest
    assert info.file_count == len(env.files)
    assert info.data_size == env.pushed.data_descriptor.size
    assert info.index.data_hash.hex() == env.pushed.data_descriptor.digest[7:]


def test_pull_reads_one_small_file_with_little_traffic(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    transferred: list[int] = []
    original = HttpSource.read_at

    def counting(self: HttpSource, offset: int, length: int) -> bytes:
        data = original(self, offset, length)
        transferred.append(len(data))
        return data

    monkeypatch.setattr(HttpSource, "read_at", counting)
    with env.client.pull(f"{env.host}/test/tree:v1") as archive:
        assert archive.read_file("a.txt") == env.files["a.txt"]
    assert 0 < sum(transferred) < 64 << 10
    assert sum(transferred) < env.pushed.data_descriptor.size // 100


# ---------------------------------------------------------------- errors


def test_missing_tag_is_a_clear_error(env: Env) -> None:
    with pytest.raises(RegistryNotFound) as exc:
        env.client.pull(f"{env.host}/test/tree:nope")
    assert "test/tree:nope" in str(exc.value)
    assert "404" in str(exc.value)
    with pytest.raises(RegistryNotFound):
        env.client.list_tags(f"{env.host}/no/such-repo")


def test_foreign_manifests_are_rejected(env: Env) -> None:
    m = env.pushed
    base: dict[str, Any] = json.loads(m.raw)
    wrong_type = {**base, "artifactType": "application/vnd.example.other"}
    _put_manifest(env, "test/tree", "wrong-type", wrong_type, OCI_MANIFEST)
    with pytest.raises(InvalidManifest, match="artifactType"):
        env.client.fetch(f"{env.host}/test/tree:wrong-type")
    no_data = {**base, "layers": base["layers"][:1]}
    _put_manifest(env, "test/tree", "no-data", no_data, OCI_MANIFEST)
    with pytest.raises(InvalidManifest, match="missing data layer"):
        env.client.pull(f"{env.host}/test/tree:no-data")
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": m.digest, "size": len(m.raw)}],
    }
    _put_manifest(env, "test/tree", "an-index", index_doc, OCI_INDEX)
    with pytest.raises(InvalidManifest, match="image index"):
        env.client.fetch(f"{env.host}/test/tree:an-index")


def test_push_needs_a_tag(env: Env) -> None:
    with pytest.raises(ValueError, match="tag"):
        env.client.push(f"{env.host}/test/tree@{env.pushed.digest}", env.tree)


def test_unreachable_registry_is_retried_then_named(tmp_path: Path) -> None:
    with (
        Registry(retries=1, backoff=0.01, timeout=2) as client,
        pytest.raises(RegistryError) as exc,
    ):
        client.fetch("127.0.0.1:1/test/x:v1")
    text = str(exc.value)
    assert "127.0.0.1:1" in text
    assert "after 2 attempts" in text


# ---------------------------------------------------------------- referrers


def test_referrers_fallback(env: Env) -> None:
    ref = f"{env.host}/test/tree:v1"
    assert env.client.referrers(ref) == []  # registry 2.8: no referrers API, no fallback tag
    subject = env.pushed
    sig = b'{"signature": "not really"}'
    sig_digest = env.reg.push_blob("test/tree", sig)
    sig_type = "application/vnd.example.signature"
    referrer = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": sig_type,
        "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": EMPTY_CONFIG_DIGEST, "size": 2},
        "layers": [{"mediaType": sig_type, "digest": sig_digest, "size": len(sig)}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": len(subject.raw)},
    }
    raw = json.dumps(referrer).encode()
    ref_digest = _put_manifest(env, "test/tree", digest_of(raw), referrer, OCI_MANIFEST)
    fallback = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": ref_digest,
                "size": len(raw),
                "artifactType": sig_type,
            }
        ],
    }
    _put_manifest(env, "test/tree", "sha256-" + subject.digest[7:], fallback, OCI_INDEX)
    found = env.client.referrers(ref)
    assert [(d.digest, d.artifact_type) for d in found] == [(ref_digest, sig_type)]
    assert env.client.referrers(ref, artifact_type=sig_type) == found
    assert env.client.referrers(ref, artifact_type="application/other") == []


# ---------------------------------------------------------------- oras-py as another client


def test_oras_reads_what_blobfs_pushed(env: Env, tmp_path: Path) -> None:
    oras_client = pytest.importorskip("oras.client")
    client = oras_client.OrasClient(hostname=env.host, insecure=True)
    container = f"{env.host}/test/tree:v1"
    manifest = client.get_manifest(container)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert [layer["digest"] for layer in manifest["layers"]] == [
        env.pushed.index_descriptor.digest,
        env.pushed.data_descriptor.digest,
    ]
    out = tmp_path / "index.blob"
    client.download_blob(container, env.pushed.index_descriptor.digest, str(out))
    assert digest_of(out.read_bytes()) == env.pushed.index_descriptor.digest


# ---------------------------------------------------------------- Manifest rules (no registry)

_INDEX = Descriptor(INDEX_MEDIA_TYPE, "sha256:" + "1" * 64, 10)
_DATA = Descriptor(DATA_MEDIA_TYPE, "sha256:" + "2" * 64, 20)


def _doc(**changes: Any) -> bytes:
    doc = json.loads(build_manifest(_INDEX, _DATA, created="2026-01-01T00:00:00Z"))
    doc.update(changes)
    return json.dumps(doc).encode()


def test_manifest_round_trip_and_layer_order() -> None:
    raw = build_manifest(_INDEX, _DATA, {"b": "2", "a": "1"}, created="2026-01-01T00:00:00Z")
    assert raw == build_manifest(
        _INDEX, _DATA, {"a": "1", "b": "2"}, created="2026-01-01T00:00:00Z"
    )
    m = Manifest.parse(raw, expected_digest=digest_of(raw))
    assert m.raw == raw
    assert (m.index_descriptor, m.data_descriptor) == (_INDEX, _DATA)
    assert list(json.loads(raw)) == [
        "schemaVersion",
        "mediaType",
        "artifactType",
        "config",
        "layers",
        "annotations",
    ]
    swapped = _doc(layers=[_DATA.to_json(), _INDEX.to_json()])
    assert Manifest.parse(swapped).index_descriptor == _INDEX


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (_doc(schemaVersion=1), "schemaVersion"),
        (_doc(mediaType="application/vnd.docker.distribution.manifest.v2+json"), "mediaType"),
        (_doc(mediaType=OCI_INDEX), "image index"),
        (_doc(artifactType="application/x"), "artifactType"),
        (_doc(layers=[_INDEX.to_json(), _INDEX.to_json(), _DATA.to_json()]), "duplicate index"),
        (_doc(layers=[_INDEX.to_json(), _DATA.to_json(), _DATA.to_json()]), "duplicate data"),
        (_doc(layers=[_DATA.to_json()]), "missing index"),
        (_doc(layers=[_INDEX.to_json()]), "missing data"),
        (_doc(layers=[{**_DATA.to_json(), "digest": "md5:x"}]), "invalid digest"),
    ],
)
def test_manifest_rejections(raw: bytes, match: str) -> None:
    with pytest.raises(InvalidManifest, match=match):
        Manifest.parse(raw)


def test_manifest_digest_mismatch() -> None:
    raw = _doc()
    with pytest.raises(DigestMismatch) as exc:
        Manifest.parse(raw, expected_digest="sha256:" + "0" * 64)
    assert exc.value.actual == digest_of(raw)


def test_reference_objects_are_accepted(env: Env) -> None:
    ref = Reference.parse(f"{env.host}/test/tree:v1")
    assert env.client.fetch(ref).digest == env.pushed.digest


def test_5xx_is_retried_and_a_swapped_index_blob_is_detected(env: Env) -> None:
    # A scripted registry in front of the real one: the first manifest GET fails with 503,
    # and the index blob comes back with one byte changed.
    upstream = httpx.Client()
    failures = {"manifest": 1}
    index_digest = env.pushed.index_descriptor.digest

    def handler(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path and failures["manifest"]:
            failures["manifest"] -= 1
            return httpx.Response(503)
        real = upstream.send(
            upstream.build_request(
                request.method,
                request.url.copy_with(host="127.0.0.1", port=int(env.host.split(":")[1])),
                headers=request.headers,
            )
        )
        body = real.read()
        if request.url.path.endswith(index_digest):
            body = bytes([body[0] ^ 1]) + body[1:]
        return httpx.Response(real.status_code, headers=real.headers, content=body)

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        Registry(client=http, backoff=0.01) as client,
    ):
        assert client.fetch(f"{env.host}/test/tree:v1").digest == env.pushed.digest
        assert failures["manifest"] == 0
        with pytest.raises(DigestMismatch, match="index blob"):
            client.inspect(f"{env.host}/test/tree:v1")
    upstream.close()


class _Recorded(httpx.SyncByteStream):
    """A request body passed on as it is sent, a copy kept in ``seen``."""

    def __init__(self, inner: Any, seen: bytearray) -> None:
        self.inner = inner
        self._seen = seen

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.inner:
            self._seen += piece
            yield piece


class _Scripted(httpx.BaseTransport):
    """Sends requests to the real registry, except where ``script(request)`` answers first.

    Unlike ``httpx.MockTransport`` it does not read request bodies into memory (which would
    make httpx send the cached bytes again instead of iterating the body a second time): a
    script consumes a streamed body itself, as a server would. ``bodies`` records the body of
    every PATCH as it was sent.
    """

    def __init__(self, script: Any) -> None:
        self.inner = httpx.HTTPTransport()
        self.script = script
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            seen = bytearray()
            self.bodies.append(seen)
            inner = request.stream
            if isinstance(inner, _Recorded):  # the same request sent again (auth flow)
                inner = inner.inner
            request.stream = _Recorded(inner, seen)
        answer: httpx.Response | None = self.script(request)
        if answer is not None:
            return answer
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _drain(request: httpx.Request, limit: int | None = None) -> None:
    """Read a streamed request body (all of it, or about ``limit`` bytes) as a server would."""
    got = 0
    assert isinstance(request.stream, httpx.SyncByteStream)
    for piece in request.stream:
        got += len(piece)
        if limit is not None and got >= limit:
            return


def _random_src(tmp_path: Path) -> tuple[Path, bytes]:
    """A directory holding one 3 MiB random file (stored raw: a data blob over 1 MiB)."""
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(3 << 20)
    (src / "r.bin").write_bytes(data)
    return src, data


@pytest.mark.parametrize("fault", ["502", "connection dropped"])
def test_a_failed_upload_starts_again(env: Env, tmp_path: Path, fault: str) -> None:
    """The streamed PATCH of the data blob fails (a 502 once the body is in, or the connection
    breaks while the body is being sent): the whole upload starts again with a new POST, from
    the file's start, and succeeds; the registry's digest check of the commit proves the
    bytes are whole."""
    posts: list[str] = []

    def script(request: httpx.Request) -> httpx.Response | None:
        if request.method == "POST":
            posts.append(request.url.path)
        if request.method == "PATCH" and len(transport.bodies) == 1:
            if fault == "502":
                _drain(request)
                return httpx.Response(502)
            _drain(request, 1 << 20)
            raise httpx.WriteError("connection reset by peer", request=request)
        return None

    transport = _Scripted(script)
    src, data = _random_src(tmp_path)
    with (
        httpx.Client(transport=transport) as http,
        Registry(client=http, backoff=0.01, chunk_size=1 << 20) as client,
    ):
        ref = f"{env.host}/test/retry-{fault.split()[0]}:1"  # a new repository: no blob there
        m = client.push(ref, src, compression=Compression.NONE)
        with client.pull(ref) as archive:
            assert archive.read_file("r.bin") == data
    assert m.data_descriptor.size == 3 << 20  # stored raw, so over chunk_size: streamed
    sizes = [len(b) for b in transport.bodies]
    assert sizes == [3 << 20 if fault == "502" else 1 << 20, 3 << 20], sizes
    assert len(posts) == 4  # config, index, data, data again


def test_401_on_the_streamed_patch_sends_the_whole_body_again(env: Env, tmp_path: Path) -> None:
    """A token that expires just before the PATCH: the registry answers 401 with a Bearer
    challenge, the auth flow fetches a token and sends the same request again, so the body
    must be re-iterable (not a one-shot stream) and start over from the file's first byte."""
    from blobfs.registry import RegistryAuth

    tokens: list[str] = []
    challenge = 'Bearer realm="http://tokens.invalid/token",service="reg"'

    def script(request: httpx.Request) -> httpx.Response | None:
        if request.url.host == "tokens.invalid":
            tokens.append(str(request.url.params.get("scope")))
            return httpx.Response(200, json={"token": f"t{len(tokens)}", "expires_in": 300})
        if request.method == "PATCH":
            if len(transport.bodies) == 1:
                _drain(request)
                return httpx.Response(401, headers={"WWW-Authenticate": challenge})
            assert request.headers["Authorization"] == "Bearer t1"
        return None

    transport = _Scripted(script)
    src, _ = _random_src(tmp_path)
    seen: list[int] = []
    with (
        httpx.Client(transport=transport) as http,
        Registry(client=http, auth=RegistryAuth(), backoff=0.01, chunk_size=1 << 20) as client,
    ):
        m = client.push(
            f"{env.host}/test/reauth:1",
            src,
            compression=Compression.NONE,
            progress=lambda d, done, total: seen.append(done) if total == 3 << 20 else None,
        )
    assert m.data_descriptor.size == 3 << 20
    assert len(transport.bodies) == 2
    for body in transport.bodies:  # both sendings: the whole blob from its first byte
        assert digest_of(bytes(body)) == m.data_descriptor.digest
    assert tokens == ["repository:test/reauth:pull,push"]
    # Progress started over for the second sending: 0, 1 MiB, 2 MiB, twice; then complete.
    assert seen == [0, 1 << 20, 2 << 20, 0, 1 << 20, 2 << 20, 3 << 20]


def test_a_local_file_that_changed_is_not_committed(env: Env, tmp_path: Path) -> None:
    """A local archive whose data blob changed after it was made (same size): the upload is
    hashed on the way, so the push fails with DigestMismatch before the commit, and the
    registry never stores the blob."""
    from blobfs.core import create_blob

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "r.bin").write_bytes(os.urandom(2 << 20))
    create_blob(tree, tmp_path / "arch", compression=Compression.NONE).close()
    blob = tmp_path / "arch" / "data.blob"
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 1
    blob.write_bytes(bytes(raw))
    with Registry(chunk_size=1 << 20, retries=0) as client:
        with pytest.raises(DigestMismatch, match="local file") as info:
            client.push(f"{env.host}/test/changed:1", tmp_path / "arch")
        with pytest.raises(RegistryNotFound):
            client.fetch(f"{env.host}/test/changed:1")
    assert info.value.actual == "sha256:" + hashlib.sha256(bytes(raw)).hexdigest()
    for digest in (info.value.expected, info.value.actual):  # neither was committed
        r = httpx.head(f"{env.reg.base_url}/v2/test/changed/blobs/{digest}")
        assert r.status_code == 404


def test_a_streamed_upload_holds_a_few_pieces_in_memory(env: Env, tmp_path: Path) -> None:
    """24 MiB streamed from its file: Python allocations peak at a few 1 MiB pieces, never the
    blob (tracemalloc sees every bytes object the upload makes)."""
    import tracemalloc

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big.bin").write_bytes(os.urandom(24 << 20))
    from blobfs.core import create_blob

    create_blob(tree, tmp_path / "arch", compression=Compression.NONE).close()
    with Registry(chunk_size=1 << 20) as client:
        tracemalloc.start()
        try:
            client.push(f"{env.host}/test/memory:1", tmp_path / "arch")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def test_tls_certificate_failures_are_not_retried(tmp_path: Path) -> None:
    """A registry whose certificate does not verify: one handshake, one clear error, for a
    fetch, a push (no upload restarts either) and a data-blob range read."""
    import socket
    import ssl
    import threading

    from tests.test_registry_tls import _write_ca  # a self-signed CA certificate suffices

    key, _ = _write_ca(tmp_path / "cert.pem", "127.0.0.1")
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Registry(plain_http=False, retries=3, backoff=0.01) as client:
            with pytest.raises(RegistryError, match="certificate verify failed") as info:
                client.fetch(f"127.0.0.1:{port}/team/app:v1")
            assert "attempts" not in str(info.value)
            assert len(accepted) == 1
            (tmp_path / "src").mkdir()
            (tmp_path / "src" / "a.txt").write_bytes(b"a")
            with pytest.raises(RegistryError, match="certificate verify failed"):
                client.push(f"127.0.0.1:{port}/team/app:v1", tmp_path / "src")
            assert len(accepted) == 2
        # The data blob's range reads (a pulled archive's source) do not retry it either.
        url = f"https://127.0.0.1:{port}/v2/team/app/blobs/sha256:{'0' * 64}"
        with (
            HttpSource(url, size=100, retries=5, backoff=0.01) as source,
            pytest.raises(HttpError, match="certificate verify failed"),
        ):
            source.read_at(0, 10)
        assert len(accepted) == 3
    finally:
        server.close()
        thread.join(5)
