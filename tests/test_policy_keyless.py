"""Keyless signatures verified offline with ``sigstore`` against a test trusted root."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from blobfs.errors import PolicyError, PolicyViolation
from blobfs.policy import require_any
from blobfs.policy.sigstore import (
    SIGNATURE_ARTIFACT_TYPE,
    Identity,
    KeylessPolicy,
    KeyPairPolicy,
    generate_keypair,
    github_actions_identity,
    load_private_key,
    sign_manifest,
)
from blobfs.registry import Registry
from tests._registry import LocalRegistry, local_registry
from tests._trust import GITHUB_ISSUER, WORKFLOW_SAN, MiniSigstore, push_archive


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture(scope="module")
def sigstore_() -> MiniSigstore:
    return MiniSigstore()


@pytest.fixture
def root(tmp_path: Path, sigstore_: MiniSigstore) -> Path:
    return sigstore_.write_trusted_root(tmp_path / "trusted_root.json")


@pytest.fixture
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


_n = iter(range(1_000_000))


def signed_archive(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, bundle_of: object = None, **kw: object
) -> str:
    """Push an archive and attach a keyless bundle over its manifest (``kw`` to MiniSigstore)."""
    n = next(_n)
    ref = f"{reg.host}/keyless/app{n}:v1"
    manifest = push_archive(registry, ref, tmp_path / f"s{n}", {"f.txt": f"{n}".encode()})
    assert isinstance(bundle_of, MiniSigstore)
    bundle = bundle_of.bundle(manifest.raw, **kw)  # type: ignore[arg-type]
    registry.attach(
        ref,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        payload=bundle,
        payload_media_type=SIGNATURE_ARTIFACT_TYPE,
    )
    return ref


def fetch(ref: str, policy: KeylessPolicy) -> None:
    with Registry(policy=policy) as r:
        r.fetch(ref)


EXACT = Identity(GITHUB_ISSUER, subject=WORKFLOW_SAN)


def test_keyless_bundle_verifies_with_exact_and_workflow_identities(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, sigstore_: MiniSigstore, root: Path
) -> None:
    ref = signed_archive(reg, registry, tmp_path, sigstore_)
    fetch(ref, KeylessPolicy(root, [EXACT]))
    fetch(ref, KeylessPolicy(root, [github_actions_identity("acme/tools", branches=["main"])]))
    fetch(ref, KeylessPolicy(root, [github_actions_identity("acme/tools", workflow="rel*.yml")]))
    fetch(
        ref,
        KeylessPolicy(
            root, [Identity(GITHUB_ISSUER, subject_regex=r"https://github\.com/acme/.*")]
        ),
    )


@pytest.mark.parametrize(
    "identity",
    [
        Identity(
            GITHUB_ISSUER,
            subject="https://github.com/acme/other/.github/workflows/x@refs/heads/main",
        ),
        Identity("https://accounts.google.com", subject=WORKFLOW_SAN),
        github_actions_identity("acme/tools", tags=["v*"]),
        github_actions_identity("acme/tools", workflow="ci.yml"),
        github_actions_identity("acme/tool", branches=["main"]),
    ],
)
def test_unknown_identity_is_refused(
    reg: LocalRegistry,
    registry: Registry,
    tmp_path: Path,
    sigstore_: MiniSigstore,
    root: Path,
    identity: Identity,
) -> None:
    ref = signed_archive(reg, registry, tmp_path, sigstore_)
    with pytest.raises(PolicyViolation, match="is not an accepted identity") as ei:
        fetch(ref, KeylessPolicy(root, [identity]))
    assert ei.value.policy == "keyless"


def test_expired_certificate_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, sigstore_: MiniSigstore, root: Path
) -> None:
    """The log recorded the signature an hour after the 10-minute certificate expired."""
    signed_at = datetime.now(UTC) - timedelta(hours=2)
    ref = signed_archive(
        reg,
        registry,
        tmp_path,
        sigstore_,
        signed_at=signed_at,
        logged_at=signed_at + timedelta(hours=1),
    )
    with pytest.raises(PolicyViolation, match="keyless"):
        fetch(ref, KeylessPolicy(root, [EXACT]))


def test_untrusted_instance_and_wrong_message_are_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, sigstore_: MiniSigstore, root: Path
) -> None:
    stranger = MiniSigstore("stranger")
    ref = signed_archive(reg, registry, tmp_path, stranger)
    with pytest.raises(PolicyViolation, match="no valid keyless signature"):
        fetch(ref, KeylessPolicy(root, [EXACT]))
    ref = signed_archive(reg, registry, tmp_path, sigstore_, signed_message=b"other bytes")
    with pytest.raises(PolicyViolation, match="no valid keyless signature"):
        fetch(ref, KeylessPolicy(root, [EXACT]))


def test_bundle_of_another_manifest_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, sigstore_: MiniSigstore, root: Path
) -> None:
    n = next(_n)
    a = push_archive(registry, f"{reg.host}/keyless/a{n}:v1", tmp_path / "a", {"a": b"a"})
    ref_b = f"{reg.host}/keyless/b{n}:v1"
    push_archive(registry, ref_b, tmp_path / "b", {"b": b"b"})
    registry.attach(
        ref_b,
        artifact_type=SIGNATURE_ARTIFACT_TYPE,
        payload=sigstore_.bundle(a.raw),
        payload_media_type=SIGNATURE_ARTIFACT_TYPE,
    )
    with pytest.raises(PolicyViolation, match="no valid keyless signature"):
        fetch(ref_b, KeylessPolicy(root, [EXACT]))


def test_key_pair_bundles_and_keyless_combine(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, sigstore_: MiniSigstore, root: Path
) -> None:
    """A key-pair bundle does not satisfy the keyless policy, and vice versa; require_any of
    both accepts either."""
    n = next(_n)
    ref = f"{reg.host}/keyless/kp{n}:v1"
    push_archive(registry, ref, tmp_path / "kp", {"x": b"x"})
    pair = generate_keypair()
    sign_manifest(registry, ref, load_private_key(pair.private_pem))
    with pytest.raises(PolicyViolation, match="expected certificate in bundle"):
        fetch(ref, KeylessPolicy(root, [EXACT]))
    keyless_ref = signed_archive(reg, registry, tmp_path, sigstore_)
    with (
        pytest.raises(PolicyViolation, match="keypair"),
        Registry(policy=KeyPairPolicy(pair.public_pem)) as r,
    ):
        r.fetch(keyless_ref)
    either = require_any(KeyPairPolicy(pair.public_pem), KeylessPolicy(root, [EXACT]))
    for target in (ref, keyless_ref):
        with Registry(policy=either) as r:
            r.fetch(target)


def test_trusted_root_and_identity_errors(tmp_path: Path, root: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.json: cannot read the trusted root"):
        KeylessPolicy(tmp_path / "nope.json", [EXACT])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PolicyError, match=r"bad\.json: not a usable sigstore trusted root"):
        KeylessPolicy(bad, [EXACT])
    empty = tmp_path / "empty.json"
    doc = json.loads(root.read_text())
    doc["certificateAuthorities"] = []
    empty.write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match=r"empty\.json: not a usable"):
        KeylessPolicy(empty, [EXACT])
    with pytest.raises(ValueError, match="at least one identity"):
        KeylessPolicy(root, [])
    with pytest.raises(ValueError, match="exactly one of subject and subject_regex"):
        Identity(GITHUB_ISSUER)
    with pytest.raises(ValueError, match="subject_regex"):
        Identity(GITHUB_ISSUER, subject_regex="(")
    with pytest.raises(ValueError, match="owner/name"):
        github_actions_identity("not a repo")
