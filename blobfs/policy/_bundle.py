"""Sigstore bundles (v0.3, protobuf JSON) carrying a message signature over raw manifest bytes.

Written for key-pair signatures::

    {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
     "verificationMaterial": {"publicKey": {"hint": "<base64 sha256 of the DER public key>"},
                              "tlogEntries": []},
     "messageSignature": {"messageDigest": {"algorithm": "SHA2_256", "digest": "<base64>"},
                          "signature": "<base64 DER ECDSA P-256 / SHA-256>"}}

The signature is over the **exact raw manifest bytes** (FORMAT.md 5), so the manifest digest
and the signed digest are the same SHA-256. Parsing is strict and every problem is a
:class:`~blobfs.errors.PolicyError` naming what was parsed; keyless bundles (a certificate as
verification material) parse too, for the key check ignores the material and uses its own key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import PolicyError
from ._keys import key_hint, sign_bytes

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "BUNDLE_MEDIA_TYPES",
    "MessageSignature",
    "b64decode",
    "build_key_bundle",
    "parse_json_object",
    "parse_message_bundle",
    "verify_message",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
"""Media type of the bundles blobfs writes: the referrer's artifactType and its layer type."""

BUNDLE_MEDIA_TYPES = frozenset(
    {BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"}
)
"""Bundle media types accepted when reading (v0.3 and its alternative spelling)."""


@dataclass(frozen=True, slots=True)
class MessageSignature:
    """The parts of a message-signature bundle the key check needs."""

    digest: bytes
    """The SHA-256 the bundle says was signed."""
    signature: bytes
    """DER ECDSA signature."""
    hint: str | None
    """``verificationMaterial.publicKey.hint`` (None for certificate bundles)."""
    keyless: bool
    """True when the verification material is a certificate (Fulcio, keyless)."""


def b64decode(value: object, what: str) -> bytes:
    """Base64 (standard or URL-safe, as protobuf JSON allows) or :class:`PolicyError`."""
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{what}: missing or not a base64 string")
    text = value.replace("-", "+").replace("_", "/")  # URL-safe spelling
    text += "=" * (-len(text) % 4)  # protobuf JSON may drop the padding
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError(f"{what}: not valid base64") from None


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or :class:`PolicyError` naming ``what``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise PolicyError(f"{what}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{what}: not a JSON object")
    return doc


def build_key_bundle(message: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A v0.3 bundle with ``key``'s ECDSA signature over ``message`` (compact JSON, UTF-8)."""
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": key_hint(key.public_key())},
            "tlogEntries": [],
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": base64.b64encode(hashlib.sha256(message).digest()).decode(),
            },
            "signature": base64.b64encode(sign_bytes(key, message)).decode(),
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_message_bundle(data: bytes, what: str) -> MessageSignature:
    """Parse a sigstore bundle holding a message signature (:class:`PolicyError` otherwise)."""
    doc = parse_json_object(data, what)
    media_type = doc.get("mediaType")
    if media_type not in BUNDLE_MEDIA_TYPES:
        raise PolicyError(f"{what}: mediaType {media_type!r} is not a sigstore bundle v0.3")
    material = doc.get("verificationMaterial")
    if not isinstance(material, dict):
        raise PolicyError(f"{what}: no verificationMaterial")
    hint: str | None = None
    keyless = False
    if isinstance(material.get("publicKey"), dict):
        raw_hint = material["publicKey"].get("hint")
        hint = raw_hint if isinstance(raw_hint, str) else None
    elif isinstance(material.get("certificate"), dict) or isinstance(
        material.get("x509CertificateChain"), dict
    ):
        keyless = True
    else:
        raise PolicyError(f"{what}: verificationMaterial has neither publicKey nor certificate")
    if "dsseEnvelope" in doc and "messageSignature" not in doc:
        raise PolicyError(f"{what}: a DSSE bundle (an attestation), not a message signature")
    sig = doc.get("messageSignature")
    if not isinstance(sig, dict):
        raise PolicyError(f"{what}: no messageSignature")
    md = sig.get("messageDigest")
    if not isinstance(md, dict):
        raise PolicyError(f"{what}: messageSignature has no messageDigest")
    if md.get("algorithm") != "SHA2_256":
        raise PolicyError(f"{what}: messageDigest algorithm {md.get('algorithm')!r}, need SHA2_256")
    digest = b64decode(md.get("digest"), f"{what}: messageDigest.digest")
    if len(digest) != 32:
        raise PolicyError(f"{what}: messageDigest.digest is {len(digest)} bytes, not 32")
    signature = b64decode(sig.get("signature"), f"{what}: messageSignature.signature")
    return MessageSignature(digest, signature, hint, keyless)


def verify_message(
    bundle: MessageSignature, message: bytes, key: ec.EllipticCurvePublicKey
) -> str | None:
    """None when ``bundle`` is ``key``'s valid signature over ``message``, else why not."""
    if bundle.digest != hashlib.sha256(message).digest():
        return f"it signs another manifest (sha256:{bundle.digest.hex()})"
    try:
        key.verify(bundle.signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return f"the signature does not verify with key {key_hint(key)}"
    return None
