"""Attestations of a manifest whose DSSE signature verifies and whose subject is that manifest.

Shared by the SLSA and OPA policies: an attestation counts only when its envelope is signed by
one of the trusted keys (PAE, P-256) **and** one of its statement subjects is the digest being
pulled. Both checks are what the reference's SLSA and OPA policies skip (its section 10.14).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import PolicyError
from ._dsse import parse_envelope, sign_envelope, verify_envelope
from ._keypair import Signed, attach_signed
from ._keys import PublicKeyLike, key_hint, load_public_key
from ._provenance import SLSA_PROVENANCE_V1, Statement, build_statement, parse_statement
from ._referrers import collect_evidence

if TYPE_CHECKING:
    from ..registry import PolicyRequest, Reference, Registry

__all__ = [
    "DSSE_MEDIA_TYPE",
    "IN_TOTO_MEDIA_TYPE",
    "VerifiedStatement",
    "attest",
    "load_keys",
    "load_predicate",
    "verified_statements",
]

log = logging.getLogger(__name__)

IN_TOTO_MEDIA_TYPE = "application/vnd.in-toto+json"
"""The referrer artifactType and layer type of attestations (FORMAT.md 5), and the DSSE
payloadType of in-toto statements."""
DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
"""Layer type some tools give DSSE envelopes; read as well."""


@dataclass(frozen=True, slots=True)
class VerifiedStatement:
    statement: Statement
    referrer: str
    layer: str
    key_id: str


def load_keys(
    keys: PublicKeyLike | Sequence[PublicKeyLike],
) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """One key or several (objects, PEM bytes, PEM paths) loaded; ValueError when none."""
    items: Sequence[PublicKeyLike]
    if isinstance(keys, ec.EllipticCurvePublicKey | bytes | str | os.PathLike):
        items = [keys]
    else:
        items = list(keys)
    if not items:
        raise ValueError("at least one public key is needed to verify attestations")
    return tuple(load_public_key(k) for k in items)


def verified_statements(
    request: PolicyRequest,
    keys: Sequence[ec.EllipticCurvePublicKey],
    policy: str,
) -> tuple[list[VerifiedStatement], list[str]]:
    """The statements about ``request.digest`` signed by one of ``keys``, and the reasons the
    other attestations were not used."""
    evidence, problems = collect_evidence(
        request, IN_TOTO_MEDIA_TYPE, {IN_TOTO_MEDIA_TYPE, DSSE_MEDIA_TYPE}, policy
    )
    out: list[VerifiedStatement] = []
    for ev in evidence:
        where = f"attestation {ev.layer}"
        try:
            env = parse_envelope(ev.data, where)
            if env.payload_type != IN_TOTO_MEDIA_TYPE:
                raise PolicyError(f"{where}: payloadType {env.payload_type!r} is not in-toto")
            key = verify_envelope(env, keys)
            if key is None:
                raise PolicyError(f"{where}: the envelope signature verifies with no trusted key")
            st = parse_statement(env.payload, where)
        except PolicyError as e:
            problems.append(str(e))
            continue
        if not st.covers(request.digest):
            problems.append(
                f"{where}: its subject is {', '.join(st.subject_digests())}, not {request.digest}"
            )
            continue
        out.append(VerifiedStatement(st, ev.referrer, ev.layer, key_hint(key)))
    return out, problems


def load_predicate(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any]]:
    """The predicate in JSON file ``path``: a bare predicate (type None: the caller's default),
    or a whole in-toto statement, whose ``predicateType`` and ``predicate`` are taken (its
    subject is replaced by the manifest). :class:`PolicyError` naming the file otherwise."""
    where = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"{where}: cannot read the predicate: {e.strerror or e}") from None
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise PolicyError(f"{where}: the predicate is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{where}: the predicate is not a JSON object")
    if "_type" in doc and "predicate" in doc:
        ptype, predicate = doc.get("predicateType"), doc.get("predicate")
        if not isinstance(ptype, str) or not ptype or not isinstance(predicate, dict):
            raise PolicyError(f"{where}: a statement without predicateType or predicate object")
        return ptype, predicate
    return None, doc


def attest(
    registry: Registry,
    ref: Reference | str,
    predicate: Mapping[str, Any],
    key: ec.EllipticCurvePrivateKey,
    *,
    predicate_type: str = SLSA_PROVENANCE_V1,
    annotations: Mapping[str, str] | None = None,
) -> Signed:
    """Attach an in-toto v1 statement about ``ref``'s manifest digest (subject name
    ``host/repository``) with ``predicate``, in a DSSE envelope signed by ``key``."""

    def make(_raw: bytes, digest: str) -> bytes:
        from ..registry import Reference as _Reference

        r = _Reference.parse(ref, default_tag="latest") if isinstance(ref, str) else ref
        statement = build_statement(
            f"{r.registry}/{r.repository}", digest, predicate_type, predicate
        )
        return sign_envelope(statement, IN_TOTO_MEDIA_TYPE, key)

    return attach_signed(
        registry,
        ref,
        make,
        IN_TOTO_MEDIA_TYPE,
        {"in-toto.io/predicate-type": predicate_type, **(annotations or {})},
    )
