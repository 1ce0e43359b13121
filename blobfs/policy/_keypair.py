"""Key-pair signatures: sign a manifest into a referrer bundle, and :class:`KeyPairPolicy`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import PolicyError
from ._bundle import (
    BUNDLE_MEDIA_TYPE,
    BUNDLE_MEDIA_TYPES,
    build_key_bundle,
    parse_message_bundle,
    verify_message,
)
from ._keys import PublicKeyLike, key_hint, load_public_key
from ._referrers import Evidence, first_accepted

if TYPE_CHECKING:
    from ..registry import PolicyRequest, Reference, Registry

__all__ = ["KeyPairPolicy", "Signed", "attach_signed", "sign_manifest"]

log = logging.getLogger(__name__)

ANNOTATION_CREATED = "org.opencontainers.image.created"


class Signed:
    """What :func:`sign_manifest` / ``attest`` did: the subject and the referrer pushed."""

    __slots__ = ("payload", "reference", "referrer", "subject")

    def __init__(self, reference: str, subject: str, referrer: str, payload: bytes) -> None:
        self.reference = reference
        """The reference as given."""
        self.subject = subject
        """Digest of the manifest signed."""
        self.referrer = referrer
        """Digest of the referrer manifest holding the bundle or envelope."""
        self.payload = payload
        """The bundle or envelope bytes attached."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def attach_signed(
    registry: Registry,
    ref: Reference | str,
    make_payload: Any,
    artifact_type: str,
    annotations: Mapping[str, str] | None = None,
) -> Signed:
    """Fetch ``ref``'s manifest (exact raw bytes, digest verified), build the payload with
    ``make_payload(raw_manifest, digest)`` and attach it as a referrer of that digest (not of
    the tag, which may move meanwhile)."""
    from ..registry import Reference as _Reference

    r = _Reference.parse(ref, default_tag="latest") if isinstance(ref, str) else ref
    manifest = registry.fetch(r)
    payload: bytes = make_payload(manifest.raw, manifest.digest)
    notes = {ANNOTATION_CREATED: _now(), **(annotations or {})}
    referrer = registry.attach(
        r.with_digest(manifest.digest),
        artifact_type=artifact_type,
        payload=payload,
        payload_media_type=artifact_type,
        annotations=notes,
    )
    log.info("%s: attached %s %s to %s", r, artifact_type, referrer, manifest.digest)
    return Signed(str(r), manifest.digest, referrer, payload)


def sign_manifest(
    registry: Registry,
    ref: Reference | str,
    key: ec.EllipticCurvePrivateKey,
    *,
    annotations: Mapping[str, str] | None = None,
) -> Signed:
    """Sign the exact raw manifest bytes of ``ref`` with ``key`` and attach the sigstore bundle
    (v0.3, public-key material) as a referrer of the manifest digest."""
    return attach_signed(
        registry,
        ref,
        lambda raw, _digest: build_key_bundle(raw, key),
        BUNDLE_MEDIA_TYPE,
        annotations,
    )


class KeyPairPolicy:
    """Accepts a manifest carrying a sigstore bundle whose message signature over the exact raw
    manifest bytes verifies with ``public_key`` (ECDSA P-256), checked offline.

    ``public_key``: a key object, PEM bytes or a PEM file path (read now: :class:`PolicyError`
    naming the file when it is unusable). Unsigned manifests, signatures by other keys, over
    other manifests, or malformed bundles are refused with the reasons of every candidate.
    """

    name = "keypair"

    def __init__(self, public_key: PublicKeyLike) -> None:
        self.public_key = load_public_key(public_key)
        self.key_id = key_hint(self.public_key)

    def evaluate(self, request: PolicyRequest) -> None:
        def check(ev: Evidence, where: str) -> str | None:
            try:
                bundle = parse_message_bundle(ev.data, where)
            except PolicyError as e:
                return str(e)
            why = verify_message(bundle, request.manifest_bytes, self.public_key)
            return None if why is None else f"{where}: {why}"

        first_accepted(
            request,
            self.name,
            BUNDLE_MEDIA_TYPE,
            BUNDLE_MEDIA_TYPES,
            check,
            noun="bundle",
            none_attached="no signature is attached to",
            refused=f"no signature verifies with key {self.key_id}",
        )

    def __repr__(self) -> str:
        return f"KeyPairPolicy(key {self.key_id})"
