"""The OCI manifest of a blobfs archive (FORMAT.md section 5): parse, verify, build.

A :class:`Manifest` keeps the raw bytes exactly as received or built: its digest is the SHA-256
of those bytes, signatures are made over them, and caches store them. Nothing here re-serialises
a manifest that came from a registry.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import DigestMismatch, InvalidManifest

__all__ = [
    "ANNOTATION_CREATED",
    "ARTIFACT_TYPE",
    "DATA_MEDIA_TYPE",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_MANIFEST_V2",
    "EMPTY_CONFIG",
    "EMPTY_CONFIG_DIGEST",
    "EMPTY_MEDIA_TYPE",
    "INDEX_MEDIA_TYPE",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "Manifest",
    "build_artifact_manifest",
    "build_manifest",
    "digest_of",
    "go_json",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
"""The only manifest media type a blobfs archive uses (FORMAT.md 5)."""
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
"""An image index: rejected as an archive manifest; the referrers answers are indexes."""
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
"""Docker's image manifest: recognised only to reject it by name."""
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
"""Docker's manifest list: recognised only to reject it by name."""

ARTIFACT_TYPE = "application/vnd.meigma.blob.v1"
"""``artifactType`` of every blobfs/blob archive manifest."""
INDEX_MEDIA_TYPE = "application/vnd.meigma.blob.index.v1+flatbuffers"
"""Layer media type of the index blob (digest = SHA-256 of the index bytes)."""
DATA_MEDIA_TYPE = "application/vnd.meigma.blob.data.v1"
"""Layer media type of the data blob (digest = ``sha256:`` + hex(index data_hash))."""

EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
"""The OCI empty descriptor's media type, used as the config of artifact manifests."""
EMPTY_CONFIG = b"{}"
"""The bytes of the empty config blob."""
EMPTY_CONFIG_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
"""SHA-256 of :data:`EMPTY_CONFIG` (fixed by the OCI image spec)."""

ANNOTATION_CREATED = "org.opencontainers.image.created"
"""Annotation set on push to the creation time (RFC 3339, UTC, seconds) unless given."""

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
"""The only digest algorithm blobfs produces and accepts (lower-case hex, as OCI requires)."""


def digest_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def go_json(obj: object) -> bytes:
    """Compact JSON as Go's ``encoding/json`` writes it (``<``, ``>``, ``&``, U+2028/9 escaped).

    Dict order is kept as given (callers order struct fields as Go does and sort map keys).
    These characters only occur inside JSON strings, so replacing them is safe.
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor. ``digest`` is ``sha256:<64 lower-case hex>``."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as an OCI JSON object, fields in Go's struct order."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(sorted(self.annotations.items()))
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        """Parse one descriptor object; :class:`InvalidManifest` naming ``what`` if malformed."""
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{what} is not a JSON object")
        media_type = obj.get("mediaType")
        digest = obj.get("digest")
        size = obj.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifest(f"{what} has no mediaType")
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
            raise InvalidManifest(f"{what} has an invalid digest {digest!r} (need sha256:<hex>)")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidManifest(f"{what} has an invalid size {size!r}")
        artifact_type = obj.get("artifactType")
        if artifact_type is not None and not isinstance(artifact_type, str):
            raise InvalidManifest(f"{what} has a non-string artifactType")
        return cls(
            media_type, digest, size, _annotations(obj.get("annotations"), what), artifact_type
        )


def _annotations(obj: object, what: str) -> dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in obj.items()
    ):
        raise InvalidManifest(f"{what}: annotations must map strings to strings")
    return dict(obj)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed blobfs archive manifest together with its exact raw bytes.

    ``digest`` is ``sha256:`` of ``raw``; ``index_descriptor``/``data_descriptor`` are the two
    layers (whatever their order in ``raw``); ``subject`` is set only for referrer-style
    manifests. Build one with :meth:`parse`, never field by field.
    """

    raw: bytes
    digest: str
    media_type: str
    artifact_type: str
    config: Descriptor
    index_descriptor: Descriptor
    data_descriptor: Descriptor
    annotations: Mapping[str, str]
    subject: Descriptor | None = None

    @property
    def created(self) -> str | None:
        """The ``org.opencontainers.image.created`` annotation, if any."""
        return self.annotations.get(ANNOTATION_CREATED)

    @classmethod
    def parse(cls, raw: bytes, expected_digest: str | None = None) -> Manifest:
        """Validate ``raw`` as a blobfs archive manifest and keep it byte for byte.

        With ``expected_digest`` the SHA-256 of ``raw`` must equal it (:class:`DigestMismatch`
        otherwise), checked before anything is parsed. Raises :class:`InvalidManifest` for: not
        a JSON object, ``schemaVersion`` other than 2, an image index or Docker manifest, a
        ``mediaType`` other than the OCI manifest, an ``artifactType`` other than
        :data:`ARTIFACT_TYPE`, layers other than exactly one index and one data layer (either
        order accepted; missing or duplicate ones named), malformed descriptors/annotations.
        """
        raw = bytes(raw)
        digest = digest_of(raw)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatch("manifest", expected_digest, digest)
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidManifest(f"manifest {digest} is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise InvalidManifest(f"manifest {digest} is not a JSON object")
        media_type = doc.get("mediaType")
        if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) or (
            media_type is None and "manifests" in doc
        ):
            raise InvalidManifest(
                f"{digest} is an image index ({media_type}), not a blobfs archive manifest"
            )
        if doc.get("schemaVersion") != 2:
            raise InvalidManifest(
                f"manifest {digest}: schemaVersion {doc.get('schemaVersion')!r}, expected 2"
            )
        if media_type != OCI_MANIFEST:
            raise InvalidManifest(
                f"manifest {digest}: mediaType {media_type!r}, expected {OCI_MANIFEST}"
            )
        artifact_type = doc.get("artifactType")
        if artifact_type != ARTIFACT_TYPE:
            raise InvalidManifest(
                f"manifest {digest}: artifactType {artifact_type!r}, expected {ARTIFACT_TYPE} "
                "(not a blobfs archive)"
            )
        config = Descriptor.from_json(doc.get("config"), f"manifest {digest}: config")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidManifest(f"manifest {digest}: layers is not a list")
        index: Descriptor | None = None
        data: Descriptor | None = None
        for i, obj in enumerate(layers):
            desc = Descriptor.from_json(obj, f"manifest {digest}: layer {i}")
            if desc.media_type == INDEX_MEDIA_TYPE:
                if index is not None:
                    raise InvalidManifest(f"manifest {digest}: duplicate index layer")
                index = desc
            elif desc.media_type == DATA_MEDIA_TYPE:
                if data is not None:
                    raise InvalidManifest(f"manifest {digest}: duplicate data layer")
                data = desc
            else:
                raise InvalidManifest(
                    f"manifest {digest}: unexpected layer media type {desc.media_type!r}"
                )
        if index is None:
            raise InvalidManifest(f"manifest {digest}: missing index layer ({INDEX_MEDIA_TYPE})")
        if data is None:
            raise InvalidManifest(f"manifest {digest}: missing data layer ({DATA_MEDIA_TYPE})")
        subject_obj = doc.get("subject")
        subject = (
            None
            if subject_obj is None
            else Descriptor.from_json(subject_obj, f"manifest {digest}: subject")
        )
        return cls(
            raw=raw,
            digest=digest,
            media_type=media_type,
            artifact_type=artifact_type,
            config=config,
            index_descriptor=index,
            data_descriptor=data,
            annotations=_annotations(doc.get("annotations"), f"manifest {digest}"),
            subject=subject,
        )


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_manifest(
    index_desc: Descriptor,
    data_desc: Descriptor,
    annotations: Mapping[str, str] | None = None,
    *,
    created: str | None = None,
    subject: Descriptor | None = None,
) -> bytes:
    """The raw manifest bytes of an archive, deterministic for equal inputs.

    Compact JSON in Go's field order (schemaVersion, mediaType, artifactType, config, layers
    [index, data], subject, annotations), annotation keys sorted. ``org.opencontainers.image
    .created`` is ``annotations``'s value if present, else ``created``, else now (RFC 3339 UTC,
    seconds). The result parses with :meth:`Manifest.parse`.
    """
    if index_desc.media_type != INDEX_MEDIA_TYPE or data_desc.media_type != DATA_MEDIA_TYPE:
        raise ValueError("build_manifest needs an index and a data layer descriptor, in order")
    notes = dict(annotations or {})
    if ANNOTATION_CREATED not in notes:
        notes[ANNOTATION_CREATED] = created if created is not None else _now_rfc3339()
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": Descriptor(EMPTY_MEDIA_TYPE, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG)).to_json(),
        "layers": [index_desc.to_json(), data_desc.to_json()],
    }
    if subject is not None:
        doc["subject"] = subject.to_json()
    doc["annotations"] = dict(sorted(notes.items()))
    return go_json(doc)


def build_artifact_manifest(
    artifact_type: str,
    layer: Descriptor,
    subject: Descriptor,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The raw bytes of an OCI 1.1 artifact manifest referring to ``subject`` (a signature, an
    attestation): the empty config, one ``layer`` (the payload), ``artifactType``, ``subject``
    and the ``annotations`` (keys sorted; none when empty), compact JSON in Go's field order."""
    if not artifact_type:
        raise ValueError("an artifact manifest needs an artifact type")
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": Descriptor(EMPTY_MEDIA_TYPE, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG)).to_json(),
        "layers": [layer.to_json()],
        "subject": subject.to_json(),
    }
    if annotations:
        doc["annotations"] = dict(sorted(annotations.items()))
    return go_json(doc)
