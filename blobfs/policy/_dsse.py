"""DSSE envelopes (``payloadType``, base64 ``payload``, ``signatures``) signed with P-256.

The signature covers the pre-authentication encoding
``PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body`` (lengths in ASCII
decimal), never the JSON around it, so re-serialising an envelope cannot change what was signed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import PolicyError
from ._bundle import b64decode, parse_json_object
from ._keys import key_hint, sign_bytes

__all__ = ["Envelope", "pae", "parse_envelope", "sign_envelope", "verify_envelope"]

MAX_SIGNATURES = 16
"""Signatures examined per envelope: more is not a real envelope, only work for a verifier."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """The DSSE v1 pre-authentication encoding of ``payload`` of type ``payload_type``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str | None, bytes], ...]
    """``(keyid, signature)`` pairs, keyid None when absent or empty."""


def sign_envelope(payload: bytes, payload_type: str, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DSSE envelope (compact JSON) over ``payload`` with one signature by ``key``."""
    sig = sign_bytes(key, pae(payload_type, payload))
    doc = {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [
            {"keyid": key_hint(key.public_key()), "sig": base64.b64encode(sig).decode()}
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_envelope(data: bytes, what: str) -> Envelope:
    """Parse a DSSE envelope strictly (:class:`PolicyError` naming ``what``)."""
    doc = parse_json_object(data, what)
    payload_type = doc.get("payloadType")
    if not isinstance(payload_type, str) or not payload_type:
        raise PolicyError(f"{what}: not a DSSE envelope (no payloadType)")
    payload = b64decode(doc.get("payload"), f"{what}: payload")
    sigs = doc.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        raise PolicyError(f"{what}: the envelope has no signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise PolicyError(f"{what}: {len(sigs)} signatures, more than {MAX_SIGNATURES}")
    out: list[tuple[str | None, bytes]] = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict):
            raise PolicyError(f"{what}: signature {i} is not an object")
        keyid = s.get("keyid")
        out.append(
            (
                keyid if isinstance(keyid, str) and keyid else None,
                b64decode(s.get("sig"), f"{what}: signature {i}"),
            )
        )
    return Envelope(payload_type, payload, tuple(out))


def verify_envelope(
    envelope: Envelope, keys: Sequence[ec.EllipticCurvePublicKey]
) -> ec.EllipticCurvePublicKey | None:
    """The first of ``keys`` that made one of the envelope's signatures, or None."""
    message = pae(envelope.payload_type, envelope.payload)
    for key in keys:
        for _keyid, sig in envelope.signatures:  # keyids are unauthenticated hints: try all
            try:
                key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            return key
    return None
