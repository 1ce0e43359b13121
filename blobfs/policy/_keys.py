"""ECDSA P-256 key pairs: generate, write (private key 0600, no overwrite), load, identify.

Keys are PEM: the private key PKCS#8 (encrypted with the best available scheme when a password
is given; SEC1 ``EC PRIVATE KEY`` is also read), the public key SubjectPublicKeyInfo. Only
P-256 is accepted: it is what cosign and the sigstore bundle's ``PKIX_ECDSA_P256_SHA_256`` key
details name, and one algorithm means no algorithm-confusion questions on verification.
Every problem becomes a :class:`~blobfs.errors.PolicyError` naming the file and what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import PolicyError

__all__ = [
    "KeyPair",
    "PublicKeyLike",
    "generate_keypair",
    "key_hint",
    "load_private_key",
    "load_public_key",
    "sign_bytes",
    "write_keypair",
]

log = logging.getLogger(__name__)

PublicKeyLike = ec.EllipticCurvePublicKey | bytes | str | os.PathLike[str]
"""A public key: a key object, PEM bytes, or the path of a PEM file (``str`` or path-like)."""

_PEM_PUBLIC = b"-----BEGIN PUBLIC KEY-----"


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A generated key pair as PEM bytes (``private_pem`` encrypted when a password was given)."""

    private_pem: bytes
    public_pem: bytes
    encrypted: bool


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None:
        return None
    pw = password.encode() if isinstance(password, str) else bytes(password)
    if not pw:
        raise ValueError("an empty password would not protect the key: give none or a real one")
    return pw


def generate_keypair(password: str | bytes | None = None) -> KeyPair:
    """A fresh ECDSA P-256 key pair; the private key PKCS#8 PEM, encrypted with ``password``."""
    pw = _password_bytes(password)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    return KeyPair(private_pem, public_pem(key.public_key()), pw is not None)


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_keypair(
    prefix: str | os.PathLike[str], password: str | bytes | None = None
) -> tuple[Path, Path]:
    """Generate a key pair into ``PREFIX.key`` (mode 0600) and ``PREFIX.pub`` (0644).

    Refuses to overwrite either file (:class:`FileExistsError` naming it): losing a signing key
    to a typo is not recoverable. Both files are created exclusively; if the second cannot be
    written the first is removed again. Returns the two paths.
    """
    base = Path(prefix)
    key_path, pub_path = base.with_name(base.name + ".key"), base.with_name(base.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists() or p.is_symlink():
            raise FileExistsError(17, "refusing to overwrite an existing key file", str(p))
    pair = generate_keypair(password)
    _write_exclusive(key_path, pair.private_pem, 0o600)
    try:
        _write_exclusive(pub_path, pair.public_pem, 0o644)
    except BaseException:
        key_path.unlink(missing_ok=True)
        raise
    log.info("wrote %s and %s", key_path, pub_path)
    return key_path, pub_path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: a file (or symlink) that appeared since the check is not overwritten or followed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read(source: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise PolicyError(f"{source}: cannot read the {what}: {e.strerror or e}") from None


def _check_p256(key: object, where: str) -> None:
    curve = getattr(key, "curve", None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise PolicyError(f"{where}: not an ECDSA key ({type(key).__name__}); blobfs uses P-256")
    if not isinstance(curve, ec.SECP256R1):
        name = getattr(curve, "name", "?")
        raise PolicyError(f"{where}: ECDSA key on curve {name}, blobfs uses P-256 (secp256r1)")


def load_private_key(
    source: str | os.PathLike[str] | bytes,
    password: str | bytes | None = None,
    *,
    name: str | None = None,
) -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in PEM ``source`` (a path, or the PEM bytes named ``name``).

    :class:`PolicyError` naming the file: unreadable, not PEM, encrypted but no password, wrong
    password, unencrypted but a password was given (a sign that the wrong file was named),
    cosign's own encrypted format, another algorithm or curve.
    """
    if isinstance(source, bytes):
        data, where = source, name or "private key"
    else:
        data, where = _read(source, "private key"), name or os.fspath(source)
    if b"ENCRYPTED SIGSTORE PRIVATE KEY" in data or b"ENCRYPTED COSIGN PRIVATE KEY" in data:
        raise PolicyError(
            f"{where}: cosign's encrypted key format is not supported; use a PKCS#8 PEM key "
            "(blobfs keygen, or openssl pkcs8)"
        )
    pw = _password_bytes(password) if password else None
    try:
        key = serialization.load_pem_private_key(data, pw)
    except TypeError as e:  # encrypted without a password, or a password for a plain key
        if "not encrypted" in str(e):
            raise PolicyError(
                f"{where}: the key is not encrypted, but a password was given"
            ) from None
        raise PolicyError(f"{where}: the key is encrypted: a password is needed") from None
    except ValueError as e:
        text = str(e).lower()
        if "password" in text or "decrypt" in text or "bad decrypt" in text:
            raise PolicyError(f"{where}: wrong password for the encrypted key") from None
        raise PolicyError(f"{where}: not a PEM private key ({_first_line(e)})") from None
    except UnsupportedAlgorithm as e:
        raise PolicyError(f"{where}: unsupported key: {_first_line(e)}") from None
    _check_p256(key, where)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def load_public_key(source: PublicKeyLike, *, name: str | None = None) -> ec.EllipticCurvePublicKey:
    """The P-256 public key ``source``: a key object, PEM bytes (named ``name`` in errors) or
    the path of a PEM file. :class:`PolicyError` naming the file for anything else (a private
    key or a certificate given by mistake included)."""
    if isinstance(source, ec.EllipticCurvePublicKey):
        _check_p256(source, name or "public key")
        return source
    if isinstance(source, bytes):
        data, where = source, name or "public key"
    else:
        data, where = _read(source, "public key"), name or os.fspath(source)
    if b"PRIVATE KEY-----" in data:
        raise PolicyError(f"{where}: this is a private key; give the public key (.pub)")
    if _PEM_PUBLIC not in data:
        raise PolicyError(f"{where}: not a PEM public key (no '-----BEGIN PUBLIC KEY-----')")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise PolicyError(f"{where}: malformed public key ({_first_line(e)})") from None
    _check_p256(key, where)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """A stable name of ``key``: base64 of the SHA-256 of its DER SubjectPublicKeyInfo (the
    ``publicKey.hint`` of bundles and the ``keyid`` of DSSE signatures)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def sign_bytes(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """DER ECDSA signature of SHA-256(``data``)."""
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
