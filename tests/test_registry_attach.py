"""Attached artifacts (signatures, attestations) and the trust-policy hook, against a real
docker-registry 2.8 (no referrers API: the tag-schema fallback index is what finds them)."""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from blobfs.client import Client
from blobfs.errors import DigestMismatch, PolicyViolation, RegistryError, RegistryNotFound
from blobfs.registry import (
    OCI_INDEX,
    OCI_MANIFEST,
    PolicyRequest,
    Reference,
    Registry,
    RegistryCaches,
)
from tests._registry import LocalRegistry, local_registry

SIG_TYPE = "application/vnd.example.signature.v1"
ATT_TYPE = "application/vnd.in-toto+json"
FILES = {"a.txt": b"attached\n", "d/b.bin": os.urandom(5000)}


@dataclass
class Env:
    reg: LocalRegistry
    ref: str
    digest: str


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("attach")
    src = root / "src"
    for name, data in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with local_registry(root / "reg") as reg, Registry() as client:
        ref = f"{reg.host}/team/signed:v1"
        digest = client.push(ref, src).digest
        yield Env(reg, ref, digest)


class Counting:
    """An httpx client recording ``METHOD path`` of every request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.client = httpx.Client(event_hooks={"request": [self._hook]}, timeout=10)

    def _hook(self, request: httpx.Request) -> None:
        self.requests.append(f"{request.method} {request.url.path}")

    def blobs(self) -> list[str]:
        return [r for r in self.requests if "/blobs/" in r]


def test_attach_two_referrers_list_filter_and_fetch_back(env: Env) -> None:
    with Registry() as reg:
        sig = reg.attach(
            env.ref,
            artifact_type=SIG_TYPE,
            payload=b"signature bytes",
            payload_media_type="application/vnd.example.sig",
            annotations={"org.example.signer": "alice"},
        )
        att = reg.attach(
            env.ref,
            artifact_type=ATT_TYPE,
            payload=b'{"_type": "https://in-toto.io/Statement/v1"}',
            payload_media_type="application/vnd.in-toto+json",
        )
        assert sig != att
        found = reg.referrers(env.ref)
        assert {d.digest for d in found} == {sig, att}
        by_digest = {d.digest: d for d in found}
        assert by_digest[sig].artifact_type == SIG_TYPE
        assert by_digest[sig].annotations == {"org.example.signer": "alice"}
        assert by_digest[att].artifact_type == ATT_TYPE
        assert by_digest[att].media_type == OCI_MANIFEST
        assert [d.digest for d in reg.referrers(env.ref, SIG_TYPE)] == [sig]
        assert [d.digest for d in reg.referrers(env.ref, ATT_TYPE)] == [att]
        assert reg.referrers(env.ref, "application/none") == []

        # Fetch each back by digest: exact bytes, verified, an OCI manifest with the subject.
        raw, media_type, digest = reg.fetch_manifest_bytes(env.ref, sig)
        assert digest == sig
        assert media_type == OCI_MANIFEST
        doc = json.loads(raw)
        assert doc["artifactType"] == SIG_TYPE
        assert doc["subject"]["digest"] == env.digest
        assert doc["subject"]["mediaType"] == OCI_MANIFEST
        assert doc["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
        assert doc["annotations"] == {"org.example.signer": "alice"}
        (layer,) = doc["layers"]
        payload = reg.fetch_blob(env.ref, layer["digest"], max_size=1024)
        assert payload == b"signature bytes"
        assert by_digest[sig].size == len(raw)

        # Attaching the same artifact again changes nothing (same digest, one entry).
        again = reg.attach(
            env.ref,
            artifact_type=SIG_TYPE,
            payload=b"signature bytes",
            payload_media_type="application/vnd.example.sig",
            annotations={"org.example.signer": "alice"},
        )
        assert again == sig
        assert len(reg.referrers(env.ref)) == 2
        # The fallback index is an OCI image index under the sha256-<hex> tag.
        ref = Reference.parse(env.ref)
        index, mt, _ = reg.fetch_manifest_bytes(
            ref.with_tag("sha256-" + env.digest.removeprefix("sha256:")), accept=OCI_INDEX
        )
        assert mt == OCI_INDEX
        assert len(json.loads(index)["manifests"]) == 2


def test_concurrent_attaches_all_land(env: Env) -> None:
    """The fallback update is a read-modify-write: concurrent writers read back and redo."""
    with Registry() as reg:
        sub = env.ref.replace(":v1", ":concurrent")
        reg.tag(sub, env.digest)
        errors: list[BaseException] = []
        digests: list[str] = []

        def one(i: int) -> None:
            try:
                digests.append(
                    reg.attach(
                        sub,
                        artifact_type=SIG_TYPE,
                        payload=f"sig {i}".encode(),
                        payload_media_type="text/plain",
                    )
                )
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert {d.digest for d in reg.referrers(sub)} >= set(digests)


def test_fetch_blob_and_manifest_bytes_are_verified_and_capped(env: Env) -> None:
    with Registry() as reg:
        manifest = reg.fetch(env.ref)
        index = manifest.index_descriptor
        with pytest.raises(RegistryError, match="over the limit of 10 bytes"):
            reg.fetch_blob(env.ref, index.digest, max_size=10)
        assert len(reg.fetch_blob(env.ref, index.digest, max_size=index.size)) == index.size
        with pytest.raises(RegistryNotFound):
            reg.fetch_blob(env.ref, "sha256:" + "0" * 64, max_size=100)
        with pytest.raises(RegistryError, match="over the limit of 100 bytes"):
            reg.fetch_manifest_bytes(env.ref, max_size=100)
        raw, mt, digest = reg.fetch_manifest_bytes(env.ref)
        assert (raw, mt, digest) == (manifest.raw, OCI_MANIFEST, manifest.digest)

    # A registry answering other bytes for a digest: DigestMismatch, nothing returned.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"not the blob")

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        Registry(client=http, retries=0) as reg,
    ):
        with pytest.raises(DigestMismatch):
            reg.fetch_blob(env.ref, index.digest, max_size=1 << 20)
        with pytest.raises(DigestMismatch):
            reg.fetch_manifest_bytes(env.ref, manifest.digest)


def test_fetch_manifest_bytes_by_digest_uses_the_manifest_cache(env: Env, tmp_path: Path) -> None:
    caches = RegistryCaches(tmp_path / "cache")
    with Registry() as reg:
        sig = reg.attach(
            env.ref, artifact_type=SIG_TYPE, payload=b"cached sig", payload_media_type="text/plain"
        )
    counting = Counting()
    with Registry(client=counting.client, caches=caches) as reg:
        first = reg.fetch_manifest_bytes(env.ref, sig)
        n = len(counting.requests)
        assert reg.fetch_manifest_bytes(env.ref, sig) == first
        assert len(counting.requests) == n  # served from the cache
        # A cached signature manifest asked for as an archive is refused, not deleted.
        with pytest.raises(RegistryError, match="artifactType"):
            reg.fetch(Reference.parse(env.ref).with_digest(sig))
        assert caches.manifests.get(sig) == first[0]
    with Registry(caches=caches, offline=True) as reg:
        assert reg.fetch_manifest_bytes(env.ref, sig) == first
    counting.client.close()


# ------------------------------------------------------------------------------ policy hook


class Recording:
    def __init__(self, refuse: bool = False) -> None:
        self.requests: list[PolicyRequest] = []
        self.refuse = refuse
        self.lock = threading.Lock()

    def evaluate(self, request: PolicyRequest) -> None:
        with self.lock:
            self.requests.append(request)
        if self.refuse:
            raise PolicyViolation("test", "refused on purpose", reference=str(request.reference))


class RequireSignature:
    """A policy of the kind blobfs.policy builds: the manifest must have a referrer of
    ``SIG_TYPE`` whose payload says ``ok:<digest>``."""

    def evaluate(self, request: PolicyRequest) -> None:
        reg = request.registry
        subject = request.reference.with_digest(request.digest)
        for desc in reg.referrers(subject, SIG_TYPE):
            raw, _, _ = reg.fetch_manifest_bytes(subject, desc.digest)
            layer = json.loads(raw)["layers"][0]
            payload = reg.fetch_blob(subject, layer["digest"], max_size=1024)
            if payload == f"ok:{request.digest}".encode():
                return
        raise PolicyViolation("signature", "no valid signature", reference=str(request.reference))


def test_policy_sees_the_verified_manifest_on_every_path(env: Env, tmp_path: Path) -> None:
    policy = Recording()
    caches = RegistryCaches(tmp_path / "cache")
    with Registry(policy=policy, caches=caches) as reg:
        ref = Reference.parse(env.ref)
        manifest = reg.fetch(ref)
        (req,) = policy.requests
        assert req.reference is ref
        assert req.digest == env.digest == manifest.digest
        assert req.manifest_bytes == manifest.raw
        assert req.manifest == manifest
        assert req.registry is reg
        assert reg.policy is policy
        reg.fetch(env.ref)  # a cache hit: evaluated again
        with reg.pull(env.ref) as archive:
            assert archive.read_file("a.txt") == FILES["a.txt"]
        reg.inspect(env.ref)
        assert len(policy.requests) == 4
    with Registry(policy=policy, caches=caches, offline=True) as reg:
        reg.fetch(env.ref)
        assert len(policy.requests) == 5
        assert str(policy.requests[-1].reference) == env.ref


def test_policy_refusal_propagates_before_any_index_is_used(env: Env, tmp_path: Path) -> None:
    policy = Recording(refuse=True)
    counting = Counting()
    caches = RegistryCaches(tmp_path / "cache")
    with Registry(policy=policy, client=counting.client, caches=caches) as reg:
        for call in (reg.fetch, reg.pull, reg.inspect):
            with pytest.raises(PolicyViolation, match="refused on purpose") as info:
                call(env.ref)
            assert type(info.value) is PolicyViolation
        assert counting.blobs() == []  # no index (or data) request at all
        assert not (tmp_path / "cache" / "indexes").exists()
        # Nothing was cached on the refusal's behalf either.
        assert caches.manifests.get(env.digest) is None
    # Cached by a run without policy, then refused from the cache and offline.
    with Registry(caches=caches) as reg:
        reg.inspect(env.ref)
    with (
        Registry(policy=policy, caches=caches, offline=True) as reg,
        pytest.raises(PolicyViolation),
    ):
        reg.pull(env.ref)
    assert len(policy.requests) == 4
    counting.client.close()


def test_a_signature_policy_through_the_client(env: Env, tmp_path: Path) -> None:
    ref = env.ref.replace(":v1", ":policy")
    with Registry() as reg:
        reg.tag(ref, env.digest)
    with Client(docker_config=False, policy=RequireSignature()) as c:
        assert isinstance(c.policy, RequireSignature)
        with pytest.raises(PolicyViolation, match="no valid signature"):
            c.pull(ref)
        c.registry.attach(
            ref, artifact_type=SIG_TYPE, payload=b"ok:wrong", payload_media_type="text/plain"
        )
        with pytest.raises(PolicyViolation):
            c.pull(ref)
        c.registry.attach(
            ref,
            artifact_type=SIG_TYPE,
            payload=f"ok:{env.digest}".encode(),
            payload_media_type="text/plain",
        )
        with c.pull(ref) as archive:
            assert archive.read_file("a.txt") == FILES["a.txt"]
    with Registry() as reg, pytest.raises(ValueError, match="policy"):
        Client(registry=reg, policy=RequireSignature())


def test_policy_runs_from_many_threads(env: Env) -> None:
    policy = Recording()
    with Registry(policy=policy) as reg:
        threads = [threading.Thread(target=reg.fetch, args=(env.ref,)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert Counter(r.digest for r in policy.requests) == Counter({env.digest: 6})
