"""Trust policies against a real registry: key-pair signatures, composition, referrers fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from blobfs.errors import PolicyError, PolicyViolation
from blobfs.policy import Policy, require_all, require_any
from blobfs.policy.sigstore import (
    SIGNATURE_ARTIFACT_TYPE,
    KeyPairPolicy,
    build_key_bundle,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
    write_keypair,
)
from blobfs.registry import Manifest, PolicyRequest, Reference, Registry, RegistryCaches
from tests._registry import LocalRegistry, local_registry
from tests._trust import push_archive

FILES = {"a.txt": b"alpha\n", "dir/b.bin": bytes(range(256)) * 16}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_keypair(tmp_path / "release")


_counter = iter(range(1_000_000))


def fresh(reg: LocalRegistry, registry: Registry, tmp_path: Path, note: str = "") -> str:
    """Push a new archive (its own repository and content) and return its reference."""
    n = next(_counter)
    ref = f"{reg.host}/trust/app{n}:v1"
    push_archive(registry, ref, tmp_path / f"src{n}", {**FILES, "note.txt": f"{n}{note}".encode()})
    return ref


def check(registry: Registry, ref: str, policy: Policy) -> Manifest:
    """Fetch ``ref`` through a registry client enforcing ``policy`` (the registry's hook)."""
    with Registry(policy=policy) as guarded:
        return guarded.fetch(ref)


def test_signed_archive_passes_and_unsigned_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    policy = KeyPairPolicy(pub)
    with pytest.raises(PolicyViolation, match="no signature is attached") as ei:
        check(registry, ref, policy)
    assert ei.value.policy == "keypair"
    assert ei.value.reference == ref
    assert ei.value.reason.endswith(registry.fetch(ref).digest)
    signed = sign_manifest(registry, ref, load_private_key(key))
    manifest = check(registry, ref, policy)
    assert manifest.digest == signed.subject
    with Registry(policy=policy) as guarded, guarded.pull(ref) as archive:
        assert archive.read_file("a.txt") == b"alpha\n"


def test_bundle_is_a_sigstore_v03_message_signature_over_the_raw_manifest(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    signed = sign_manifest(registry, ref, load_private_key(key))
    doc = json.loads(signed.payload)
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert "hint" in doc["verificationMaterial"]["publicKey"]
    assert doc["messageSignature"]["messageDigest"]["algorithm"] == "SHA2_256"
    # The referrer manifest: artifactType and single layer of the bundle type, subject = us.
    raw, _, _ = registry.fetch_manifest_bytes(ref, signed.referrer)
    m = json.loads(raw)
    assert m["artifactType"] == SIGNATURE_ARTIFACT_TYPE
    assert [layer["mediaType"] for layer in m["layers"]] == [SIGNATURE_ARTIFACT_TYPE]
    assert m["subject"]["digest"] == signed.subject
    # An independent check with cryptography: the signature is over the exact raw bytes.
    from base64 import b64decode

    from cryptography.hazmat.primitives import hashes

    raw_manifest = registry.fetch(ref).raw
    public = load_public_key(pub)
    public.verify(
        b64decode(doc["messageSignature"]["signature"]), raw_manifest, ec.ECDSA(hashes.SHA256())
    )


def test_referrers_use_the_tag_schema_fallback(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    signed = sign_manifest(registry, ref, load_private_key(key))
    repo = Reference.parse(ref)
    hexd = signed.subject.removeprefix("sha256:")
    api = httpx.get(f"{reg.base_url}/v2/{repo.repository}/referrers/{signed.subject}")
    assert api.status_code == 404  # docker-registry 2.8: no referrers API
    assert f"sha256-{hexd}" in registry.list_tags(ref)
    index = httpx.get(
        f"{reg.base_url}/v2/{repo.repository}/manifests/sha256-{hexd}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    ).json()
    assert [m["digest"] for m in index["manifests"]] == [signed.referrer]
    check(registry, ref, KeyPairPolicy(pub))


def test_wrong_key_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, _ = keys
    ref = fresh(reg, registry, tmp_path)
    sign_manifest(registry, ref, load_private_key(key))
    other = generate_keypair()
    with pytest.raises(PolicyViolation, match="does not verify with key"):
        check(registry, ref, KeyPairPolicy(other.public_pem))


def test_signature_over_another_manifest_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref_a = fresh(reg, registry, tmp_path)
    ref_b = fresh(reg, registry, tmp_path)
    raw_a = registry.fetch(ref_a).raw
    bundle = build_key_bundle(raw_a, load_private_key(key))
    registry.attach(
        ref_b,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        payload=bundle,
        payload_media_type=SIGNATURE_ARTIFACT_TYPE,
    )
    with pytest.raises(PolicyViolation, match="signs another manifest"):
        check(registry, ref_b, KeyPairPolicy(pub))


def test_tampered_manifest_under_a_signed_tag_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """The tag is moved to other manifest bytes, and the attacker copies the signed manifest's
    referrers index to the new digest's fallback tag: the referrer names another subject."""
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    good = sign_manifest(registry, ref, load_private_key(key))
    r = Reference.parse(ref)
    tampered = push_archive(registry, ref, tmp_path / "evil", {**FILES, "evil.sh": b"rm -rf /\n"})
    assert tampered.digest != good.subject
    old_tag = good.subject.replace(":", "-")
    index = httpx.get(
        f"{reg.base_url}/v2/{r.repository}/manifests/{old_tag}",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
    ).content
    put = httpx.put(
        f"{reg.base_url}/v2/{r.repository}/manifests/{tampered.digest.replace(':', '-')}",
        content=index,
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert put.status_code == 201
    with pytest.raises(PolicyViolation, match=f"its subject is '{good.subject}'"):
        check(registry, ref, KeyPairPolicy(pub))
    # The signed manifest itself, pinned by digest, still passes.
    check(registry, f"{r.registry}/{r.repository}@{good.subject}", KeyPairPolicy(pub))


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (
            json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.1+json"}).encode(),
            "is not a sigstore bundle v0.3",
        ),
        (
            json.dumps(
                {
                    "mediaType": SIGNATURE_ARTIFACT_TYPE,
                    "verificationMaterial": {"publicKey": {"hint": "x"}},
                    "messageSignature": {
                        "messageDigest": {"algorithm": "SHA2_256", "digest": "!!"},
                        "signature": "AAAA",
                    },
                }
            ).encode(),
            "not valid base64",
        ),
        (
            json.dumps(
                {
                    "mediaType": SIGNATURE_ARTIFACT_TYPE,
                    "verificationMaterial": {"publicKey": {}},
                    "dsseEnvelope": {},
                }
            ).encode(),
            "a DSSE bundle",
        ),
    ],
)
def test_malformed_bundles_are_refused_with_the_reason(
    reg: LocalRegistry,
    registry: Registry,
    tmp_path: Path,
    keys: tuple[Path, Path],
    payload: bytes,
    problem: str,
) -> None:
    _, pub = keys
    ref = fresh(reg, registry, tmp_path)
    registry.attach(
        ref,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        payload=payload,
        payload_media_type=SIGNATURE_ARTIFACT_TYPE,
    )
    with pytest.raises(PolicyViolation, match=problem):
        check(registry, ref, KeyPairPolicy(pub))


def test_a_malformed_bundle_does_not_hide_a_valid_one(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    registry.attach(
        ref,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        payload=b"{garbage",
        payload_media_type=SIGNATURE_ARTIFACT_TYPE,
    )
    sign_manifest(registry, ref, load_private_key(key))
    check(registry, ref, KeyPairPolicy(pub))


def test_policy_runs_on_cache_hits(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    sign_manifest(registry, ref, load_private_key(key))
    caches = RegistryCaches(tmp_path / "caches")
    with Registry(caches=caches, policy=KeyPairPolicy(pub)) as r:
        r.fetch(ref)  # fills the caches
    other = generate_keypair().public_pem
    with (
        Registry(caches=RegistryCaches(tmp_path / "caches"), policy=KeyPairPolicy(other)) as r,
        pytest.raises(PolicyViolation),
    ):
        r.fetch(ref)


class Counting:
    """A policy recording its calls, accepting or refusing as told."""

    def __init__(self, name: str, accept: bool) -> None:
        self.name = name
        self.accept = accept
        self.calls = 0

    def evaluate(self, request: PolicyRequest) -> None:
        self.calls += 1
        if not self.accept:
            raise PolicyViolation(
                self.name, f"{self.name} says no", reference=str(request.reference)
            )


def test_require_all_and_any(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    ref = fresh(reg, registry, tmp_path)
    sign_manifest(registry, ref, load_private_key(key))
    right = KeyPairPolicy(pub)
    wrong = KeyPairPolicy(generate_keypair().public_pem)
    check(registry, ref, require_any(wrong, right))
    check(registry, ref, require_all(right, require_any(wrong, right)))
    with pytest.raises(PolicyViolation, match="does not verify") as ei:
        check(registry, ref, require_all(right, wrong))
    assert ei.value.policy == "keypair"
    yes, no1, no2 = Counting("yes", True), Counting("no1", False), Counting("no2", False)
    with pytest.raises(PolicyViolation) as ei:
        check(registry, ref, require_any(no1, no2))
    assert ei.value.policy == "require_any"
    assert "no1: no1 says no" in ei.value.reason
    assert "no2: no2 says no" in ei.value.reason
    check(registry, ref, require_any(yes, no1))
    assert no1.calls == 1  # first success wins: not asked again
    with pytest.raises(PolicyViolation, match="no1 says no"):
        check(registry, ref, require_all(yes, no1, no2))
    assert no2.calls == 1  # stopped at the first refusal
    with pytest.raises(ValueError, match="at least one policy"):
        require_all()
    with pytest.raises(ValueError, match="at least one policy"):
        require_any()
    with pytest.raises(TypeError, match="not a policy"):
        require_any(right, "nope")  # type: ignore[arg-type]


def test_unreachable_registry_is_a_violation_not_a_pass(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    _, pub = keys
    with local_registry(tmp_path / "short") as short, Registry() as registry:
        ref = fresh(short, registry, tmp_path)
        manifest = registry.fetch(ref)
        short.stop()
        request = PolicyRequest(
            Reference.parse(ref), manifest.digest, manifest.raw, manifest, registry
        )
        with pytest.raises(PolicyViolation, match="cannot list the referrers"):
            KeyPairPolicy(pub).evaluate(request)


# ------------------------------------------------------------------------------------ keys


def test_keypair_files(tmp_path: Path) -> None:
    key, pub = write_keypair(tmp_path / "k", "s3cret")
    assert key.name == "k.key"
    assert pub.name == "k.pub"
    assert key.stat().st_mode & 0o777 == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    private = load_private_key(key, "s3cret")
    assert private.public_key().public_numbers() == load_public_key(pub).public_numbers()
    with pytest.raises(FileExistsError):
        write_keypair(tmp_path / "k")
    with pytest.raises(PolicyError, match=r"k\.key: wrong password"):
        load_private_key(key, "nope")
    with pytest.raises(PolicyError, match="a password is needed"):
        load_private_key(key)
    plain, _ = write_keypair(tmp_path / "plain")
    with pytest.raises(PolicyError, match="not encrypted"):
        load_private_key(plain, "pw")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "not a PEM public key"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "malformed public key"),
        (b"-----BEGIN PRIVATE KEY-----\n...", "this is a private key"),
    ],
)
def test_bad_public_keys(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.pub"
    path.write_bytes(content)
    with pytest.raises(PolicyError, match=f"bad.pub: {problem}"):
        KeyPairPolicy(path)


def test_other_curves_and_missing_files_are_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "p384.pub").write_bytes(pem)
    with pytest.raises(PolicyError, match=r"p384\.pub: ECDSA key on curve secp384r1"):
        KeyPairPolicy(tmp_path / "p384.pub")
    with pytest.raises(PolicyError, match=r"missing\.pub: cannot read the public key"):
        KeyPairPolicy(tmp_path / "missing.pub")
    (tmp_path / "garbage.key").write_bytes(b"garbage")
    with pytest.raises(PolicyError, match=r"garbage\.key: not a PEM private key"):
        load_private_key(tmp_path / "garbage.key")
