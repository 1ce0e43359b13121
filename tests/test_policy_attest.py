"""SLSA provenance attestations and Rego policies against a real registry."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from blobfs.errors import PolicyError, PolicyViolation
from blobfs.policy import Policy
from blobfs.policy.opa import OPAPolicy
from blobfs.policy.sigstore import generate_keypair, load_private_key
from blobfs.policy.slsa import (
    ATTESTATION_ARTIFACT_TYPE,
    SLSA_PROVENANCE_V02,
    SLSAPolicy,
    attest,
    build_statement,
    github_actions_workflow,
    load_predicate,
    pae,
    require_build_type,
    require_builder,
    require_source,
    sign_envelope,
)
from blobfs.registry import Registry
from tests._registry import LocalRegistry, local_registry
from tests._trust import BUILDER, github_predicate, push_archive

PREDICATE = github_predicate("refs/tags/v1.2.0")


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


@pytest.fixture
def registry() -> Iterator[Registry]:
    with Registry() as r:
        yield r


@pytest.fixture(scope="module")
def builder_key() -> Any:
    return generate_keypair()


_n = iter(range(1_000_000))


def archive(reg: LocalRegistry, registry: Registry, tmp_path: Path) -> str:
    n = next(_n)
    ref = f"{reg.host}/attest/app{n}:v1"
    push_archive(registry, ref, tmp_path / f"s{n}", {"f.txt": f"{n}".encode()})
    return ref


def fetch(ref: str, policy: Policy) -> None:
    with Registry(policy=policy) as r:
        r.fetch(ref)


def attach_envelope(registry: Registry, ref: str, envelope: bytes) -> None:
    registry.attach(
        ref,
        artifact_type=ATTESTATION_ARTIFACT_TYPE,
        payload=envelope,
        payload_media_type=ATTESTATION_ARTIFACT_TYPE,
    )


def test_attested_archive_passes_the_validators(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    key = load_private_key(builder_key.private_pem)
    with pytest.raises(PolicyViolation, match="no provenance attestation is attached"):
        fetch(ref, SLSAPolicy(builder_key.public_pem))
    signed = attest(registry, ref, PREDICATE, key)
    env = json.loads(signed.payload)
    assert env["payloadType"] == "application/vnd.in-toto+json"
    statement = json.loads(base64.b64decode(env["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"][0]["digest"] == {"sha256": signed.subject.removeprefix("sha256:")}
    fetch(
        ref,
        SLSAPolicy(
            builder_key.public_pem,
            [
                require_builder(BUILDER),
                require_build_type("https://actions.github.io/buildtypes/workflow/v1"),
                require_source("https://github.com/acme/tools.git", tags=["v1.*"]),
                github_actions_workflow("acme/tools", workflow="release.yml", tags=["v*"]),
            ],
        ),
    )


@pytest.mark.parametrize(
    ("validator", "reason"),
    [
        (require_builder("https://evil.example/builder"), "is not 'https://evil.example/builder'"),
        (require_source("https://github.com/acme/other"), "is not 'https://github.com/acme/other'"),
        (require_source("https://github.com/acme/tools", branches=["main"]), "matches none of"),
        (
            github_actions_workflow("acme/tools", workflow="ci.yml"),
            "is not .github/workflows/ci.yml",
        ),
        (github_actions_workflow("acme/tools", branches=["main"]), "matches none of"),
        (github_actions_workflow("evil/tools"), "is not github.com/evil/tools"),
    ],
)
def test_validators_refuse_with_the_reason(
    reg: LocalRegistry,
    registry: Registry,
    tmp_path: Path,
    builder_key: Any,
    validator: Any,
    reason: str,
) -> None:
    ref = archive(reg, registry, tmp_path)
    attest(registry, ref, PREDICATE, load_private_key(builder_key.private_pem))
    with pytest.raises(PolicyViolation, match="no acceptable provenance") as ei:
        fetch(ref, SLSAPolicy(builder_key.public_pem, [validator]))
    assert reason in ei.value.reason
    assert ei.value.policy == "slsa"


def test_attestation_about_another_digest_is_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    other = "sha256:" + "b" * 64
    statement = build_statement("x/y", other, "https://slsa.dev/provenance/v1", PREDICATE)
    key = load_private_key(builder_key.private_pem)
    attach_envelope(registry, ref, sign_envelope(statement, "application/vnd.in-toto+json", key))
    with pytest.raises(PolicyViolation, match=f"its subject is {other}, not sha256:"):
        fetch(ref, SLSAPolicy(builder_key.public_pem))


def test_unsigned_or_foreign_attestations_are_refused(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    stranger = load_private_key(generate_keypair().private_pem)
    attest(registry, ref, PREDICATE, stranger)
    with pytest.raises(PolicyViolation, match="verifies with no trusted key"):
        fetch(ref, SLSAPolicy(builder_key.public_pem))
    # The payload replaced after signing: PAE covers it, the signature no longer matches.
    digest = registry.fetch(ref).digest
    real = json.loads(
        sign_envelope(
            build_statement("x", digest, "https://slsa.dev/provenance/v1", PREDICATE),
            "application/vnd.in-toto+json",
            load_private_key(builder_key.private_pem),
        )
    )
    forged = dict(PREDICATE, runDetails={"builder": {"id": "https://evil.example"}})
    real["payload"] = base64.b64encode(
        build_statement("x", digest, "https://slsa.dev/provenance/v1", forged)
    ).decode()
    attach_envelope(registry, ref, json.dumps(real).encode())
    with pytest.raises(PolicyViolation, match="verifies with no trusted key"):
        fetch(ref, SLSAPolicy(builder_key.public_pem))


@pytest.mark.parametrize(
    ("envelope", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b'{"payload": "e30="}', "no payloadType"),
        (
            b'{"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}',
            "has no signatures",
        ),
        (
            b'{"payloadType": "text/plain", "payload": "e30=", "signatures": [{"sig": "AA=="}]}',
            "is not in-toto",
        ),
    ],
)
def test_malformed_envelopes_are_refused(
    reg: LocalRegistry,
    registry: Registry,
    tmp_path: Path,
    builder_key: Any,
    envelope: bytes,
    problem: str,
) -> None:
    ref = archive(reg, registry, tmp_path)
    attach_envelope(registry, ref, envelope)
    with pytest.raises(PolicyViolation, match=problem):
        fetch(ref, SLSAPolicy(builder_key.public_pem))


def test_slsa_v02_provenance_and_predicate_type_filter(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    v02 = {
        "builder": {"id": BUILDER},
        "buildType": "https://github.com/slsa-framework/slsa-github-generator/generic@v1",
        "invocation": {
            "configSource": {
                "uri": "git+https://github.com/acme/tools@refs/heads/main",
                "digest": {"sha1": "c" * 40},
                "entryPoint": ".github/workflows/build.yml",
            }
        },
    }
    key = load_private_key(builder_key.private_pem)
    attest(registry, ref, v02, key, predicate_type=SLSA_PROVENANCE_V02)
    fetch(
        ref,
        SLSAPolicy(
            builder_key.public_pem,
            [
                require_source("github.com/acme/tools", branches=["main"]),
                github_actions_workflow("acme/tools", workflow="build.yml", branches=["main"]),
            ],
        ),
    )
    with pytest.raises(PolicyViolation, match="is not accepted"):
        fetch(
            ref,
            SLSAPolicy(builder_key.public_pem, predicate_types=["https://slsa.dev/provenance/v1"]),
        )


def test_load_predicate(tmp_path: Path) -> None:
    bare = tmp_path / "p.json"
    bare.write_text(json.dumps(PREDICATE))
    assert load_predicate(bare) == (None, PREDICATE)
    st = tmp_path / "st.json"
    st.write_text(
        json.dumps({"_type": "x", "predicateType": "t", "predicate": {"a": 1}, "subject": []})
    )
    assert load_predicate(st) == ("t", {"a": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(PolicyError, match=r"bad\.json: the predicate is not a JSON object"):
        load_predicate(bad)
    with pytest.raises(PolicyError, match=r"none\.json: cannot read the predicate"):
        load_predicate(tmp_path / "none.json")


def test_pae_is_the_dsse_v1_encoding() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


# ------------------------------------------------------------------------------------ Rego

REGO = """
package blob.policy

import rego.v1

default allow := false

allow if {
    some a in input.attestations
    a.predicate.runDetails.builder.id == "https://github.com/actions/runner/github-hosted"
}

deny contains msg if {
    not startswith(input.manifest.digest, "sha256:")
    msg := "not a sha256 digest"
}

deny contains msg if {
    input.manifest.annotations["org.example.quarantine"] == "true"
    msg := sprintf("%s is quarantined", [input.manifest.reference])
}
"""


def test_rego_allow_and_deny(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    policy = OPAPolicy(REGO, public_keys=[builder_key.public_pem])
    with pytest.raises(PolicyViolation, match="allow is not true") as ei:
        fetch(ref, policy)  # no attestation yet
    assert ei.value.policy == "opa"
    attest(registry, ref, PREDICATE, load_private_key(builder_key.private_pem))
    fetch(ref, policy)
    # Without keys the attestations are not verified, so not passed: allow stays false.
    with pytest.raises(PolicyViolation, match="allow is not true"):
        fetch(ref, OPAPolicy(REGO))
    n = next(_n)
    quarantined = f"{reg.host}/attest/q{n}:v1"
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "f").write_bytes(b"q")
    from blobfs.registry import Reference

    registry.push(
        Reference.parse(quarantined), tmp_path / "q", annotations={"org.example.quarantine": "true"}
    )
    attest(registry, quarantined, PREDICATE, load_private_key(builder_key.private_pem))
    with pytest.raises(PolicyViolation, match=f"denied: {quarantined} is quarantined"):
        fetch(quarantined, policy)


def test_rego_input_document(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, builder_key: Any
) -> None:
    ref = archive(reg, registry, tmp_path)
    signed = attest(registry, ref, PREDICATE, load_private_key(builder_key.private_pem))
    manifest = registry.fetch(ref)
    from blobfs.registry import PolicyRequest, Reference

    req = PolicyRequest(Reference.parse(ref), manifest.digest, manifest.raw, manifest, registry)
    doc = OPAPolicy(REGO, public_keys=builder_key.public_pem).input_document(req)
    assert doc["manifest"]["reference"] == ref
    assert doc["manifest"]["digest"] == signed.subject
    assert doc["manifest"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    [att] = doc["attestations"]
    assert att["predicateType"] == "https://slsa.dev/provenance/v1"
    assert att["predicate"] == PREDICATE
    assert att["subject"][0]["digest"]["sha256"] == signed.subject.removeprefix("sha256:")


@pytest.mark.parametrize(
    ("rego", "reason"),
    [
        ("package other\nallow := true\n", "is undefined"),
        ("package blob.policy\nallow := 1\n", "allow is not true"),
        ('package blob.policy\nallow := true\ndeny contains "x" if true\n', "denied: x"),
        ("package blob.policy\nallow if { 1 / 0 > 0 }\n", "Rego evaluation failed"),
    ],
)
def test_rego_decisions(
    reg: LocalRegistry, registry: Registry, tmp_path: Path, rego: str, reason: str
) -> None:
    ref = archive(reg, registry, tmp_path)
    with pytest.raises(PolicyViolation, match=reason):
        fetch(ref, OPAPolicy(rego))


def test_rego_file_and_errors(reg: LocalRegistry, registry: Registry, tmp_path: Path) -> None:
    ref = archive(reg, registry, tmp_path)
    good = tmp_path / "ok.rego"
    good.write_text("package blob.policy\nallow := true\n")
    fetch(ref, OPAPolicy(good))
    broken = tmp_path / "broken.rego"
    broken.write_text("package blob.policy\nallow if {{{\n")
    with pytest.raises(PolicyError, match=r"broken\.rego: invalid Rego: .*unclosed"):
        OPAPolicy(broken)
    with pytest.raises(PolicyError, match=r"missing\.rego: cannot read the Rego"):
        OPAPolicy(tmp_path / "missing.rego")
    with pytest.raises(PolicyError, match="the Rego policy is empty"):
        OPAPolicy("  \n")
