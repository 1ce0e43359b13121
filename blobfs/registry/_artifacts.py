"""Tags, referrers and arbitrary artifacts of :class:`~blobfs.registry.Registry`.

``tag``, ``list_tags`` and ``referrers`` work on any manifest; ``fetch_manifest_bytes`` and
``fetch_blob`` read manifests and blobs that are not archives (signatures, attestations), always
verified against their digest and size-capped; ``attach`` pushes such an artifact with a
``subject`` and, for registries without the referrers API (docker-registry 2.8), records it in
the tag-schema fallback index (tag ``sha256-<hex>`` of the subject), so ``referrers`` finds it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..errors import DigestMismatch, RegistryError
from ._manifest import (
    EMPTY_CONFIG,
    EMPTY_CONFIG_DIGEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    build_artifact_manifest,
    digest_of,
    go_json,
)
from ._reads import Reads
from ._reference import Reference
from ._transport import MANIFEST_ACCEPT, MAX_MANIFEST_SIZE, ReferenceLike, parse_ref, rebase
from ._upload import Uploads, bytes_opener

__all__ = ["Artifacts"]

log = logging.getLogger(__name__)

TAGS_PAGE = 1000
"""Tags asked per page of ``/tags/list``; the ``Link`` header drives further pages."""

_MAX_PAGES = 10_000
"""Safety stop for ``Link`` pagination loops (10 million tags)."""

_FALLBACK_WRITES = 3
"""Attempts at the read-modify-write of a fallback index: the registry has no conditional PUT,
so another process's attach can overwrite ours; we read back and add ours again a few times."""

_fallback_locks: dict[tuple[str, str, str], threading.Lock] = {}
_fallback_locks_guard = threading.Lock()


def _fallback_lock(registry: str, repository: str, subject: str) -> threading.Lock:
    """One lock per fallback index in this process: attaches from several threads (or
    Registry instances) to one subject take turns, so none loses another's entry."""
    with _fallback_locks_guard:
        return _fallback_locks.setdefault((registry, repository, subject), threading.Lock())


def _fallback_tag(digest: str) -> str:
    """The referrers tag schema: ``sha256:<hex>`` -> ``sha256-<hex>``."""
    return digest.replace(":", "-", 1)


class Artifacts(Uploads, Reads):
    """tag, list_tags, referrers, fetch_manifest_bytes, fetch_blob, attach (module docstring)."""

    def tag(self, ref: ReferenceLike | str, digest: str) -> str:
        """Tag manifest ``digest`` of ``ref``'s repository as ``ref``'s tag; return the digest.

        The exact raw bytes are fetched by digest (verified) and put again under the tag, so
        the digest does not change (checked against the registry's answer). Any manifest type
        may be tagged, not only archives.
        """
        r = parse_ref(ref)
        if not r.tag:
            raise ValueError(f"tag needs a reference with a tag, got {r}")
        by_digest = Reference(r.registry, r.repository, None, digest)
        raw, ctype, _ = self._get_manifest_raw(by_digest, str(by_digest))
        self._put_manifest(r, r.tag, raw, ctype or OCI_MANIFEST)
        return digest

    def list_tags(self, ref: ReferenceLike | str) -> list[str]:
        """All tags of ``ref``'s repository (tag/digest of ``ref`` ignored), following ``Link``
        pagination. ``ref`` may be a bare ``host/repository``."""
        r = parse_ref(ref, default_tag="latest")
        what = f"{r.registry}/{r.repository}"
        upstream = self._base(r)
        url: httpx.URL | None = httpx.URL(f"{upstream}/tags/list").copy_add_param(
            "n", str(TAGS_PAGE)
        )
        tags: list[str] = []
        pages = 0
        while url is not None and pages < _MAX_PAGES:
            pages += 1

            def get(b: str, retry: bool, page: httpx.URL = url) -> tuple[httpx.Response, bytes]:
                target = rebase(page, b, upstream)
                return self._get_limited(what, target, MAX_MANIFEST_SIZE, retry=retry)

            resp, body = self._read(r, what, get)[0]
            try:
                doc = json.loads(body)
                names = doc.get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{what}: malformed tag list") from None
            if not isinstance(names, list) or not all(isinstance(t, str) for t in names):
                raise RegistryError(f"{what}: malformed tag list")
            tags.extend(names)
            nxt = resp.links.get("next", {}).get("url")
            url = url.join(nxt) if nxt else None
        return tags

    def referrers(
        self, ref: ReferenceLike | str, artifact_type: str | None = None
    ) -> list[Descriptor]:
        """Descriptors of the manifests whose ``subject`` is ``ref``'s manifest.

        Uses the OCI 1.1 referrers API; when the registry lacks it (404), the tag-schema
        fallback (tag ``sha256-<hex>`` holding an image index; none → empty list). Filtered by
        ``artifact_type`` when given (also when the registry ignored the filter). The
        descriptors say where to look, not what is true: fetch each by digest (verified).
        """
        r = parse_ref(ref)
        digest = r.digest or self._resolve(r)
        what = f"{r.registry}/{r.repository}@{digest}: referrers"
        url = httpx.URL(f"{self._base(r)}/referrers/{digest}")
        if artifact_type:
            url = url.copy_add_param("artifactType", artifact_type)
        resp, body = self._get_limited(
            what, str(url), MAX_MANIFEST_SIZE, {"Accept": OCI_INDEX}, allow=(404,)
        )
        ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if resp.status_code == 404 or ctype != OCI_INDEX:
            fallback = self._fallback_index(r, digest, what)
            if fallback is None:
                return []
            body = fallback
        items = self._index_entries(body, what)
        out = [Descriptor.from_json(m, f"{what}: entry {i}") for i, m in enumerate(items)]
        if artifact_type:
            out = [d for d in out if d.artifact_type == artifact_type]
        return out

    def _fallback_index(self, r: ReferenceLike, digest: str, what: str) -> bytes | None:
        """The raw tag-schema fallback index of ``digest`` (None when the tag is absent)."""
        url = f"{self._base(r)}/manifests/{_fallback_tag(digest)}"
        resp, body = self._get_limited(
            what, url, MAX_MANIFEST_SIZE, {"Accept": OCI_INDEX}, allow=(404,)
        )
        return None if resp.status_code == 404 else body

    @staticmethod
    def _index_entries(body: bytes, what: str) -> list[Any]:
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError(f"{what}: the referrers index is not JSON") from None
        items = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise RegistryError(f"{what}: the referrers answer is not an image index")
        return items

    # ------------------------------------------------------------------ arbitrary content

    def fetch_manifest_bytes(
        self,
        ref: ReferenceLike | str,
        digest: str | None = None,
        *,
        accept: str | Sequence[str] = MANIFEST_ACCEPT,
        max_size: int = MAX_MANIFEST_SIZE,
    ) -> tuple[bytes, str, str]:
        """Any manifest (a signature or attestation manifest, an index, an archive):
        ``(raw bytes, media type, digest)``.

        ``ref`` names it by tag or digest; ``digest``, when given, replaces ``ref``'s tag and
        digest (a referrer of ``ref``'s repository found by :meth:`referrers`). By digest, the
        bytes are verified against it, and served from (and stored in) the registry's manifest
        cache; by tag, against the registry's ``Docker-Content-Digest`` when sent. At most
        ``max_size`` bytes are read (more: :class:`~blobfs.errors.RegistryError`). The media
        type is the answer's ``Content-Type``, else the document's ``mediaType``.
        """
        r = parse_ref(ref)
        if digest is not None:
            r = Reference(r.registry, r.repository, None, digest)
        what = str(r)
        accept_header = accept if isinstance(accept, str) else ", ".join(accept)
        if r.digest is not None and self._caches is not None:
            cached = self._caches.manifests.get(r.digest)
            if cached is not None and len(cached) <= max_size:
                return cached, _media_type(cached, ""), r.digest
        (raw, ctype, _), _ = self._read(
            r,
            what,
            lambda b, retry: self._get_manifest_raw(r, what, b, retry, accept_header, max_size),
        )
        actual = digest_of(raw)
        if r.digest is not None and self._caches is not None:
            self._caches.manifests.put(actual, raw)
        return raw, _media_type(raw, ctype), actual

    def fetch_blob(self, ref: ReferenceLike | str, digest: str, *, max_size: int) -> bytes:
        """Blob ``digest`` of ``ref``'s repository, verified, at most ``max_size`` bytes
        (a larger or endless body: :class:`~blobfs.errors.RegistryError` once past the cap;
        other content: :class:`~blobfs.errors.DigestMismatch`). Mirrors are tried first."""
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size!r}")
        r = parse_ref(ref)
        what = f"{r.registry}/{r.repository}: blob {digest}"

        def get(b: str, retry: bool) -> bytes:
            _, raw = self._get_limited(what, f"{b}/blobs/{digest}", max_size, retry=retry)
            actual = digest_of(raw)
            if actual != digest:
                raise DigestMismatch(what, digest, actual)
            return raw

        return self._read(r, what, get)[0]

    def attach(
        self,
        subject_ref: ReferenceLike | str,
        *,
        artifact_type: str,
        payload: bytes,
        payload_media_type: str,
        annotations: Mapping[str, str] | None = None,
    ) -> str:
        """Attach ``payload`` (a signature, an attestation) to ``subject_ref``'s manifest;
        return the digest of the referrer manifest pushed.

        Pushes the payload blob and the empty config (``{}``), then an OCI image manifest with
        ``artifactType``, one layer (the payload, ``payload_media_type``), ``subject`` = the
        subject manifest's descriptor and ``annotations``, by digest (no tag). Unless the
        registry says it indexed the subject itself (``OCI-Subject`` answer header, OCI 1.1),
        the referrer is then added to the fallback index tagged ``sha256-<hex>`` (created when
        absent; its other entries are kept as they are), with its ``artifactType`` and
        ``annotations``, so :meth:`referrers` finds it. The fallback update is a
        read-modify-write without a lock on the registry side; it is read back and redone
        (a few times) if a concurrent writer dropped our entry; attaches within one process
        take turns per subject, attaches from several processes at once may still lose an
        entry (the registry offers no compare-and-swap).
        """
        r = parse_ref(subject_ref)
        subject_digest = self._resolve(r)
        by_digest = Reference(r.registry, r.repository, None, subject_digest)
        raw, ctype, _ = self._get_manifest_raw(by_digest, f"{by_digest}: subject")
        subject = Descriptor(_media_type(raw, ctype) or OCI_MANIFEST, subject_digest, len(raw))
        layer = Descriptor(payload_media_type, digest_of(payload), len(payload))
        self._upload(r, layer.digest, layer.size, bytes_opener(payload))
        self._upload(r, EMPTY_CONFIG_DIGEST, len(EMPTY_CONFIG), bytes_opener(EMPTY_CONFIG))
        manifest = build_artifact_manifest(artifact_type, layer, subject, annotations)
        digest = digest_of(manifest)
        resp = self._put_manifest(r, digest, manifest, OCI_MANIFEST)
        if resp.headers.get("OCI-Subject") == subject_digest:
            log.debug("%s: the registry indexed referrer %s itself", by_digest, digest)
            return digest
        entry = Descriptor(OCI_MANIFEST, digest, len(manifest), annotations or {}, artifact_type)
        self._add_to_fallback(r, subject_digest, entry)
        return digest

    def _add_to_fallback(self, r: Reference, subject: str, entry: Descriptor) -> None:
        what = f"{r.registry}/{r.repository}@{subject}: referrers fallback"
        with _fallback_lock(r.registry, r.repository, subject):
            self._update_fallback(r, subject, entry, what)

    def _update_fallback(self, r: Reference, subject: str, entry: Descriptor, what: str) -> None:
        for attempt in range(_FALLBACK_WRITES + 1):
            body = self._fallback_index(r, subject, what)
            items = [] if body is None else self._index_entries(body, what)
            if any(isinstance(m, dict) and m.get("digest") == entry.digest for m in items):
                return
            if attempt == _FALLBACK_WRITES:
                break
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [*items, entry.to_json()],
            }
            self._put_manifest(r, _fallback_tag(subject), go_json(doc), OCI_INDEX)
        raise RegistryError(f"{what}: concurrent writers keep replacing the index")


def _media_type(raw: bytes, ctype: str) -> str:
    """``ctype`` if set, else the ``mediaType`` field of the JSON document ``raw`` (or "")."""
    if ctype and ctype != "application/octet-stream":
        return ctype
    try:
        doc = json.loads(raw)
    except ValueError:
        return ""
    value = doc.get("mediaType") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else ""
