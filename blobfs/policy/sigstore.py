"""Signatures as sigstore bundles: key pairs (sign and verify) and keyless (verify offline).

::

    pair = generate_keypair(password=None)               # ECDSA P-256, PEM
    write_keypair("release", password)                    # release.key (0600) + release.pub
    sign_manifest(registry, ref, load_private_key("release.key", password))
    KeyPairPolicy("release.pub")                          # offline, with cryptography
    KeylessPolicy("trusted_root.json", [Identity(issuer, subject=...),
                                        github_actions_identity("owner/repo", tags=["v*"])])

A bundle signs the exact raw manifest bytes; it is attached as a referrer of the manifest
with artifactType and layer type :data:`SIGNATURE_ARTIFACT_TYPE`. Keyless *signing* needs an
OIDC token and the public Fulcio and Rekor services and is not offered: see
:data:`KEYLESS_SIGNING_UNSUPPORTED`.
"""

from __future__ import annotations

from ._bundle import BUNDLE_MEDIA_TYPE as SIGNATURE_ARTIFACT_TYPE
from ._bundle import build_key_bundle as build_key_bundle
from ._bundle import parse_message_bundle as parse_message_bundle
from ._keyless import GITHUB_ACTIONS_ISSUER as GITHUB_ACTIONS_ISSUER
from ._keyless import Identity as Identity
from ._keyless import KeylessPolicy as KeylessPolicy
from ._keyless import github_actions_identity as github_actions_identity
from ._keypair import KeyPairPolicy as KeyPairPolicy
from ._keypair import Signed as Signed
from ._keypair import sign_manifest as sign_manifest
from ._keys import KeyPair as KeyPair
from ._keys import generate_keypair as generate_keypair
from ._keys import key_hint as key_hint
from ._keys import load_private_key as load_private_key
from ._keys import load_public_key as load_public_key
from ._keys import write_keypair as write_keypair

__all__ = [
    "GITHUB_ACTIONS_ISSUER",
    "KEYLESS_SIGNING_UNSUPPORTED",
    "SIGNATURE_ARTIFACT_TYPE",
    "Identity",
    "KeyPair",
    "KeyPairPolicy",
    "KeylessPolicy",
    "Signed",
    "build_key_bundle",
    "generate_keypair",
    "github_actions_identity",
    "key_hint",
    "load_private_key",
    "load_public_key",
    "parse_message_bundle",
    "sign_manifest",
    "write_keypair",
]

KEYLESS_SIGNING_UNSUPPORTED = (
    "keyless signing needs an OIDC identity token and the public Fulcio and Rekor services, "
    "which blobfs does not contact; sign with a key pair instead (blobfs keygen, then "
    "blobfs sign REF --key KEY)"
)
"""Why keyless signing is refused (keyless bundles made by cosign or sigstore-python verify)."""
