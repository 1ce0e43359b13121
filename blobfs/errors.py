"""The blobfs exception tree.

Every error blobfs raises on purpose derives from :class:`BlobfsError`; foreign exceptions
(``OSError`` from the file system, ``zstandard.ZstdError``) are translated where they enter.
Each error carries what a user needs to act on it: the path, the expected and actual digest.

::

    BlobfsError
    ├── CorruptIndex            the index bytes are malformed or break the format contract
    ├── ArchivePathError        a path argument is unusable (also a ValueError)
    │   ├── InvalidPath         not a valid archive path ("..", NUL, absolute, ...)
    │   ├── NotFound            no file or directory of that name (also FileNotFoundError)
    │   ├── IsADirectory        a file was expected (also IsADirectoryError)
    │   └── NotADirectory       a directory was expected (also NotADirectoryError)
    ├── IntegrityError          content did not match its digest, or payload sizes lie
    │   └── HashMismatch        SHA-256 of a file or chunk differs from the index
    ├── FileTooLarge            a whole-file read exceeds ``max_file_size``
    ├── SourceError             the data source failed (I/O error, short read, out of range)
    │   └── HttpError           an HTTP source failed: status, malformed answer, network
    ├── CreateError             creating an archive failed
    │   ├── TooManyFiles        more regular files than ``max_files``
    │   └── FileChanged         a source file changed while it was archived
    └── RegistryError           an OCI registry operation failed (reference, URL, status)
        ├── RegistryNotFound    the registry answered 404 for a manifest, blob or repository
        ├── InvalidManifest     a manifest is not a blobfs archive manifest (or not JSON)
        ├── DigestMismatch      content fetched from a registry differs from its digest
        ├── InvalidReference    not ``host[:port]/repo[:tag][@digest]`` (also a ValueError)
        └── AuthError           credentials missing, unreadable or refused; token exchange failed
    PolicyViolation             a trust policy refused a manifest (signature, provenance, Rego)
    PolicyError                 a policy file, key, bundle or envelope is malformed or unreadable
    MountError                  a mount could not be made or served (mountpoint, options, FUSE)
"""

from __future__ import annotations

__all__ = [
    "ArchivePathError",
    "AuthError",
    "BlobfsError",
    "CorruptIndex",
    "CreateError",
    "DigestMismatch",
    "FileChanged",
    "FileTooLarge",
    "HashMismatch",
    "HttpError",
    "IntegrityError",
    "InvalidManifest",
    "InvalidPath",
    "InvalidReference",
    "IsADirectory",
    "MountError",
    "NotADirectory",
    "NotFound",
    "PolicyError",
    "PolicyViolation",
    "RegistryError",
    "RegistryNotFound",
    "SourceError",
    "TooManyFiles",
]


class BlobfsError(Exception):
    """Base of every error blobfs raises on purpose."""


class CorruptIndex(BlobfsError):
    """The index is malformed: bad offsets, bad paths, duplicates, inconsistent fields."""


class ArchivePathError(BlobfsError):
    """A path given to an archive operation is unusable."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path!r}: {message}")
        self.path = path


class InvalidPath(ArchivePathError, ValueError):
    """Not a valid archive path."""


class NotFound(ArchivePathError, FileNotFoundError):
    """No file or directory of that name in the archive."""


class IsADirectory(ArchivePathError, IsADirectoryError):
    """The path names a directory where a file was expected."""


class NotADirectory(ArchivePathError, NotADirectoryError):
    """The path names a file where a directory was expected."""


class IntegrityError(BlobfsError):
    """Content read from a source does not match the index (digest or size)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class HashMismatch(IntegrityError):
    """SHA-256 of a file (or one chunk of it) differs from the digest in the index."""

    def __init__(self, path: str, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(
            path, f"{what} hash mismatch: expected sha256:{expected}, got sha256:{actual}"
        )
        self.expected = expected
        self.actual = actual


class FileTooLarge(BlobfsError):
    """A whole-file read exceeds the configured ``max_file_size``."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(
            f"{path}: file is {size} bytes, over the whole-file read limit of {limit} bytes "
            "(raise max_file_size, or stream it with open())"
        )
        self.path = path
        self.size = size
        self.limit = limit


class SourceError(BlobfsError):
    """Reading the data blob failed: I/O error, short read, range outside the blob."""


class HttpError(SourceError):
    """An HTTP byte source failed: an error status, a malformed answer, or the network.

    ``url`` is the URL as given to the source with any query string and user info replaced by
    ``…`` (presigned URLs carry credentials there); header values never appear in the message.
    ``status`` is the last HTTP status (None for a network failure or a malformed answer to a
    good status), ``attempts`` how many requests were made before giving up.
    """

    def __init__(
        self, url: str, message: str, *, status: int | None = None, attempts: int = 1
    ) -> None:
        text = f"{url}: {message}"
        if status is not None:
            text += f" (HTTP {status})"
        if attempts > 1:
            text += f", after {attempts} attempts"
        super().__init__(text)
        self.url = url
        self.status = status
        self.attempts = attempts


class CreateError(BlobfsError):
    """Creating an archive failed; no partial archive is left behind."""


class TooManyFiles(CreateError):
    """The source tree holds more regular files than ``max_files`` allows."""


class FileChanged(CreateError):
    """A source file was replaced or modified while it was being archived."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"file changed during archive creation: {path} ({what})")
        self.path = path


class RegistryError(BlobfsError):
    """An OCI registry operation failed.

    The message names the reference and, for HTTP failures, the URL (query string redacted) and
    the status; credentials never appear. ``status`` is the last HTTP status or None.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RegistryNotFound(RegistryError):
    """The registry has no such manifest, tag, blob or repository (HTTP 404)."""


class InvalidManifest(RegistryError):
    """A manifest is not a blobfs archive manifest: not JSON, wrong schema or media type, another
    artifactType, missing or duplicate index/data layers, or an image index."""


class DigestMismatch(RegistryError):
    """Content fetched from (or acknowledged by) a registry does not match its digest."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class InvalidReference(RegistryError, ValueError):
    """Text is not a valid registry reference; the message names the offending part."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"invalid reference {text!r}: {problem}")
        self.text = text
        self.problem = problem


class AuthError(RegistryError):
    """Authentication failed: no or unreadable credentials, refused credentials, token exchange.

    ``registry`` is the registry host (``host[:port]``) and ``status`` the HTTP status that ended
    the attempt (None when no request was involved, e.g. a broken docker config).
    """

    def __init__(self, registry: str, message: str, *, status: int | None = None) -> None:
        text = f"{registry}: {message}"
        if status is not None:
            text += f" (HTTP {status})"
        super().__init__(text, status=status)
        self.registry = registry


class PolicyViolation(BlobfsError):
    """A trust policy refused a manifest; nothing of the archive was used.

    ``policy`` names the policy (``"keypair"``, ``"slsa"``, ``"opa"``, ``"require_all"``, ...),
    ``reason`` says why, ``reference`` is the reference being pulled (``""`` if none).
    The CLI exits with status 5 on this error, as blob-cli does.
    """

    def __init__(self, policy: str, reason: str, *, reference: str = "") -> None:
        where = f"{reference}: " if reference else ""
        super().__init__(f"{where}policy {policy} refused: {reason}")
        self.policy = policy
        self.reason = reason
        self.reference = reference


class PolicyError(BlobfsError):
    """A policy input is unusable: a malformed policy file, key, bundle or envelope.

    The message names the file (or what was parsed) and the problem; it is never a pass.
    """


class MountError(BlobfsError):
    """A mount could not be made or served: bad mountpoint, bad options, a stale or busy mount."""
