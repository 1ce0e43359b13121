"""Test helpers for trust policies: a private sigstore (CA, CT log, Rekor) and registry pushes.

:class:`MiniSigstore` plays Fulcio, a CT log and Rekor offline with its own keys: it writes a
``trusted_root.json`` naming them and makes keyless bundles (v0.3) the ``sigstore`` package
verifies end to end: a Fulcio-style leaf certificate (code signing, OIDC issuer extensions, a
SAN identity, an embedded precertificate SCT), a ``hashedrekord`` transparency-log entry with an
inclusion proof (a one-leaf tree), a signed checkpoint and a signed entry timestamp. Knobs make
the bad cases: another identity or issuer, a log time outside the certificate's validity, a
signature over other bytes, another (untrusted) instance.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from blobfs.registry import Manifest, Reference, Registry

__all__ = [
    "BUILDER",
    "GITHUB_ISSUER",
    "WORKFLOW_SAN",
    "MiniSigstore",
    "github_predicate",
    "push_archive",
]

GITHUB_ISSUER = "https://token.actions.githubusercontent.com"
WORKFLOW_SAN = "https://github.com/acme/tools/.github/workflows/release.yml@refs/heads/main"

BUILDER = "https://github.com/actions/runner/github-hosted"
"""The builder id of GitHub-hosted runners in actions/attest-build-provenance statements."""


def github_predicate(ref: str = "refs/heads/main") -> dict[str, Any]:
    """An SLSA v1 predicate as GitHub Actions writes it for acme/tools' release.yml at ``ref``."""
    return {
        "buildDefinition": {
            "buildType": "https://actions.github.io/buildtypes/workflow/v1",
            "externalParameters": {
                "workflow": {
                    "ref": ref,
                    "repository": "https://github.com/acme/tools",
                    "path": ".github/workflows/release.yml",
                }
            },
            "resolvedDependencies": [
                {
                    "uri": f"git+https://github.com/acme/tools@{ref}",
                    "digest": {"gitCommit": "a" * 40},
                }
            ],
        },
        "runDetails": {"builder": {"id": BUILDER}, "metadata": {"invocationId": "1"}},
    }


_SCT_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_ISSUER_V1 = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
_VALID_FROM = "2020-01-01T00:00:00Z"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(body)) + body


def _spki(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


def _sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """Certificate signing for the CA, digital signatures for leaves (Fulcio's profile)."""
    flags = dict.fromkeys(
        ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement"), False
    )
    return x509.KeyUsage(
        digital_signature=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
        **flags,
    )


def _canonical(obj: object) -> bytes:
    # RFC 8785 for what is used here (ASCII strings, integers): sorted keys, no blanks.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class MiniSigstore:
    """A self-contained Fulcio + CT log + Rekor with fresh P-256 keys (see the module doc)."""

    def __init__(self, name: str = "blobfs-test") -> None:
        self.name = name
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{name} fulcio"),
            ]
        )
        ca_pub = self.ca_key.public_key()
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(ca_pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                _key_usage(ca=True),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_pub), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    # ------------------------------------------------------------------ trusted root

    def _log_key(self, key: ec.EllipticCurvePrivateKey) -> dict[str, object]:
        pub = key.public_key()
        return {
            "baseUrl": f"https://{self.name}.invalid",
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(_spki(pub)),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": _VALID_FROM},
            },
            "logId": {"keyId": _b64(_key_id(pub))},
        }

    def trusted_root(self) -> dict[str, object]:
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [self._log_key(self.rekor_key)],
            "certificateAuthorities": [
                {
                    "subject": {"organization": self.name, "commonName": f"{self.name} fulcio"},
                    "uri": f"https://fulcio.{self.name}.invalid",
                    "certChain": {
                        "certificates": [
                            {
                                "rawBytes": _b64(
                                    self.ca_cert.public_bytes(serialization.Encoding.DER)
                                )
                            }
                        ]
                    },
                    "validFor": {"start": _VALID_FROM},
                }
            ],
            "ctlogs": [self._log_key(self.ct_key)],
            "timestampAuthorities": [],
        }

    def write_trusted_root(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trusted_root(), indent=2))
        return path

    # ------------------------------------------------------------------ certificates

    def _leaf(
        self,
        pub: ec.EllipticCurvePublicKey,
        identity: str,
        issuer: str,
        not_before: datetime,
        validity: timedelta,
        sct: bytes,
        serial: int,
    ) -> x509.Certificate:
        issuer_utf8 = _der(0x0C, issuer.encode())
        san: x509.GeneralName = (
            x509.RFC822Name(identity)
            if "@" in identity and "://" not in identity
            else x509.UniformResourceIdentifier(identity)
        )
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(pub)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_before + validity)
            .add_extension(
                _key_usage(ca=False),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(x509.UnrecognizedExtension(_ISSUER_V1, issuer.encode()), False)
            .add_extension(x509.UnrecognizedExtension(_ISSUER_V2, issuer_utf8), False)
            .add_extension(x509.UnrecognizedExtension(_SCT_OID, sct), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )

    def _sct_ext(self, timestamp_ms: int, signature: bytes) -> bytes:
        """The SCT list extension value (DER OCTET STRING around the TLS SCT list)."""
        sct = (
            b"\x00"
            + _key_id(self.ct_key.public_key())
            + struct.pack("!Q", timestamp_ms)
            + b"\x00\x00"  # no extensions
            + b"\x04\x03"  # sha256, ecdsa
            + struct.pack("!H", len(signature))
            + signature
        )
        entry = struct.pack("!H", len(sct)) + sct
        return _der(0x04, struct.pack("!H", len(entry)) + entry)

    def certificate(
        self,
        pub: ec.EllipticCurvePublicKey,
        *,
        identity: str = WORKFLOW_SAN,
        issuer: str = GITHUB_ISSUER,
        not_before: datetime,
        validity: timedelta = timedelta(minutes=10),
    ) -> x509.Certificate:
        """A Fulcio-style certificate for ``pub`` with an embedded precertificate SCT."""
        serial = x509.random_serial_number()
        ts = int(not_before.timestamp()) * 1000
        draft = self._leaf(
            pub, identity, issuer, not_before, validity, self._sct_ext(ts, b"\x30\x00"), serial
        )
        tbs = draft.tbs_precertificate_bytes
        issuer_key_hash = _key_id(self.ca_key.public_key())
        signed = (
            struct.pack("!BBQH", 0, 0, ts, 1)
            + issuer_key_hash
            + struct.pack("!I", len(tbs))[1:]
            + tbs
            + b"\x00\x00"
        )
        sig = _sign(self.ct_key, signed)
        cert = self._leaf(
            pub, identity, issuer, not_before, validity, self._sct_ext(ts, sig), serial
        )
        assert cert.tbs_precertificate_bytes == tbs
        return cert

    # ------------------------------------------------------------------ bundles

    def bundle(
        self,
        message: bytes,
        *,
        identity: str = WORKFLOW_SAN,
        issuer: str = GITHUB_ISSUER,
        signed_message: bytes | None = None,
        signed_at: datetime | None = None,
        logged_at: datetime | None = None,
        validity: timedelta = timedelta(minutes=10),
    ) -> bytes:
        """A keyless v0.3 bundle over ``message`` (the signature covers ``signed_message``
        when given: a signature over other bytes). The certificate is valid from ``signed_at``
        (default now) for ``validity``; Rekor records the entry at ``logged_at`` (default
        ``signed_at``)."""
        signed_at = (signed_at or datetime.now(UTC)).replace(microsecond=0)
        logged_at = logged_at or signed_at
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.certificate(
            key.public_key(),
            identity=identity,
            issuer=issuer,
            not_before=signed_at,
            validity=validity,
        )
        payload = message if signed_message is None else signed_message
        sig = _sign(key, payload)
        digest = hashlib.sha256(message).digest()
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        body = _canonical(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": digest.hex()}},
                    "signature": {"content": _b64(sig), "publicKey": {"content": _b64(cert_pem)}},
                },
            }
        )
        log_id = _key_id(self.rekor_key.public_key())
        integrated = int(logged_at.timestamp())
        set_sig = _sign(
            self.rekor_key,
            _canonical(
                {
                    "body": _b64(body),
                    "integratedTime": integrated,
                    "logID": log_id.hex(),
                    "logIndex": 0,
                }
            ),
        )
        root = hashlib.sha256(b"\x00" + body).digest()  # a one-leaf tree: the leaf hash
        note = f"{self.name}.invalid - 1\n1\n{_b64(root)}\n"
        note_sig = _sign(self.rekor_key, note.encode())
        checkpoint = note + "\n" + f"\u2014 {self.name}.invalid {_b64(log_id[:4] + note_sig)}\n"
        doc = {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [
                    {
                        "logIndex": "0",
                        "logId": {"keyId": _b64(log_id)},
                        "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
                        "integratedTime": str(integrated),
                        "inclusionPromise": {"signedEntryTimestamp": _b64(set_sig)},
                        "inclusionProof": {
                            "logIndex": "0",
                            "rootHash": _b64(root),
                            "treeSize": "1",
                            "hashes": [],
                            "checkpoint": {"envelope": checkpoint},
                        },
                        "canonicalizedBody": _b64(body),
                    }
                ],
            },
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(digest)},
                "signature": _b64(sig),
            },
        }
        return json.dumps(doc).encode()


def push_archive(registry: Registry, ref: str, src: Path, files: dict[str, bytes]) -> Manifest:
    """Write ``files`` under ``src`` and push them as ``ref``."""
    for name, data in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return registry.push(Reference.parse(ref), src)
