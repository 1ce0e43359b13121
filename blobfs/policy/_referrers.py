"""Gathering the evidence attached to a manifest: referrer manifests and their payload blobs.

Everything read here comes from the registry and is untrusted: the referrers list (from the
OCI 1.1 API or the tag-schema fallback index, which anyone with push access can rewrite) is only
a hint. Each referrer manifest is fetched by digest (verified), must name the manifest being
evaluated as its ``subject`` and carry the expected ``artifactType``; each payload blob is
fetched by digest (verified) with a size limit. A referrer that fails any of this is reported as
a reason, never used, and never stops the others from being examined.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PolicyViolation, RegistryError
from ..registry import OCI_MANIFEST

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = [
    "MAX_PAYLOAD_SIZE",
    "MAX_REFERRERS",
    "Evidence",
    "collect_evidence",
    "evaluation_scope",
    "first_accepted",
]

log = logging.getLogger(__name__)

MAX_REFERRERS = 64
"""Referrers of one artifact type examined per evaluation: years of re-signing fit, and a
registry stuffed with junk referrers cannot make a pull fetch without end (the newest-first
order of registries is not guaranteed, so this is a bound, not a selection)."""

MAX_PAYLOAD_SIZE = 4 << 20
"""Largest bundle or envelope read: a signature bundle is a few KiB, a provenance statement
rarely over 100 KiB; a bigger blob is refused unread."""


CONTENT_CACHE_BYTES = 16 << 20
"""Bytes of referrer manifests and payload blobs kept in memory, by digest: content-addressed
and checked against its digest when fetched, so a hit is as good as a fetch, and repeated pulls
of a signed archive cost only the referrers listing (measured: a fetch is 2-5 ms here)."""


class _ContentCache:
    """A thread-safe LRU of verified bytes by digest, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, digest: str) -> bytes | None:
        with self._lock:
            data = self._items.get(digest)
            if data is not None:
                self._items.move_to_end(digest)
            return data

    def put(self, digest: str, data: bytes) -> None:
        if len(data) > self._max // 4:
            return
        with self._lock:
            if digest in self._items:
                return
            self._items[digest] = data
            self._size += len(data)
            while self._size > self._max:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


_content = _ContentCache(CONTENT_CACHE_BYTES)

_scope: contextvars.ContextVar[dict[tuple[int, str], list[Any]] | None] = contextvars.ContextVar(
    "blobfs_policy_scope", default=None
)
"""Referrers listings of the evaluation in progress, by (registry, digest): the policies of one
``require_all``/``require_any``/policy file share one listing instead of asking per policy.
Listings are never kept beyond an evaluation (a signature added later must be seen)."""


@contextlib.contextmanager
def evaluation_scope() -> Iterator[None]:
    """Share referrers listings among the policies evaluated inside (nested scopes join the
    outer one)."""
    if _scope.get() is not None:
        yield
        return
    token = _scope.set({})
    try:
        yield
    finally:
        _scope.reset(token)


def _list(registry: Any, subject: Any, digest: str) -> list[Any]:
    memo = _scope.get()
    key = (id(registry), digest)
    if memo is not None and key in memo:
        return memo[key]
    listing: list[Any] = registry.referrers(subject)
    if memo is not None:
        memo[key] = listing
    return listing


@dataclass(frozen=True, slots=True)
class Evidence:
    """One payload blob of a verified referrer manifest."""

    referrer: str
    """Digest of the referrer manifest."""
    layer: str
    """Digest of the payload blob."""
    media_type: str
    data: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)


def _subject_ref(request: PolicyRequest) -> Any:
    # Pinned to the verified digest: a tag moved since the manifest was fetched must not make
    # us look at another manifest's signatures.
    return request.reference.with_digest(request.digest)


def collect_evidence(
    request: PolicyRequest,
    artifact_type: str,
    layer_types: Collection[str],
    policy: str,
) -> tuple[list[Evidence], list[str]]:
    """Payloads of ``request``'s referrers of ``artifact_type`` whose layers have one of
    ``layer_types``, and the reasons the other referrers were not usable.

    Raises :class:`PolicyViolation` (``policy``) when the referrers cannot be listed at all.
    """
    subject = _subject_ref(request)
    registry = request.registry
    try:
        descriptors = [
            d for d in _list(registry, subject, request.digest) if d.artifact_type == artifact_type
        ]
    except RegistryError as e:
        raise PolicyViolation(
            policy, f"cannot list the referrers of {request.digest}: {e}", reference=str(subject)
        ) from None
    found: list[Evidence] = []
    problems: list[str] = []
    if len(descriptors) > MAX_REFERRERS:
        problems.append(f"{len(descriptors)} referrers, only the first {MAX_REFERRERS} examined")
        descriptors = descriptors[:MAX_REFERRERS]
    for desc in descriptors:
        try:
            found.extend(_payloads(request, subject, desc.digest, artifact_type, layer_types))
        except _Unusable as e:
            problems.append(f"referrer {desc.digest}: {e}")
        except RegistryError as e:
            problems.append(f"referrer {desc.digest}: {e}")
    return found, problems


def first_accepted(
    request: PolicyRequest,
    policy: str,
    artifact_type: str,
    layer_types: Collection[str],
    check: Callable[[Evidence, str], str | None],
    *,
    noun: str,
    none_attached: str,
    refused: str,
) -> None:
    """Return once ``check(evidence, where)`` accepts one payload (returns None; ``where`` is
    ``"<noun> <layer digest>"`` for its messages, which it returns when refusing); else raise
    :class:`PolicyViolation` ``policy``: ``none_attached`` when nothing is attached, otherwise
    ``refused`` followed by every reason (``check``'s answers and the unusable referrers)."""
    evidence, problems = collect_evidence(request, artifact_type, layer_types, policy)
    for ev in evidence:
        why = check(ev, f"{noun} {ev.layer}")
        if why is None:
            log.debug("%s: %s accepted %s", request.reference, policy, ev.layer)
            return
        problems.append(why)
    if not evidence and not problems:
        reason = f"{none_attached} {request.digest}"
    else:
        reason = f"{refused}: " + "; ".join(problems)
    raise PolicyViolation(policy, reason, reference=str(request.reference))


class _Unusable(Exception):
    """A referrer that cannot be used; the message says why."""


def _payloads(
    request: PolicyRequest,
    subject: Any,
    digest: str,
    artifact_type: str,
    layer_types: Collection[str],
) -> list[Evidence]:
    registry = request.registry
    raw = _content.get(digest)
    if raw is None:
        raw, _media_type, _ = registry.fetch_manifest_bytes(
            subject.with_digest(digest), accept=(OCI_MANIFEST,)
        )
        if "sha256:" + hashlib.sha256(raw).hexdigest() != digest:  # defence in depth
            raise _Unusable("manifest bytes differ from the digest")
        _content.put(digest, raw)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _Unusable("the referrer manifest is not JSON") from None
    if not isinstance(doc, dict) or doc.get("mediaType") != OCI_MANIFEST:
        raise _Unusable("not an OCI image manifest")
    sub = doc.get("subject")
    if not isinstance(sub, dict) or sub.get("digest") != request.digest:
        named = sub.get("digest") if isinstance(sub, dict) else None
        raise _Unusable(f"its subject is {named!r}, not {request.digest}")
    config = doc.get("config")
    kind = doc.get("artifactType") or (
        config.get("mediaType") if isinstance(config, dict) else None
    )
    if kind != artifact_type:
        raise _Unusable(f"artifactType {kind!r}, expected {artifact_type}")
    layers = doc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _Unusable("no layers")
    notes = doc.get("annotations")
    annotations = (
        {k: v for k, v in notes.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(notes, dict)
        else {}
    )
    out: list[Evidence] = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or layer.get("mediaType") not in layer_types:
            continue
        blob_digest, size = layer.get("digest"), layer.get("size")
        if not isinstance(blob_digest, str) or not isinstance(size, int) or size < 0:
            raise _Unusable(f"layer {i}: malformed descriptor")
        if size > MAX_PAYLOAD_SIZE:
            raise _Unusable(f"layer {i}: {size} bytes, over the limit of {MAX_PAYLOAD_SIZE}")
        data = _content.get(blob_digest)
        if data is None:
            data = registry.fetch_blob(subject, blob_digest, max_size=MAX_PAYLOAD_SIZE)
            if "sha256:" + hashlib.sha256(data).hexdigest() != blob_digest:  # defence in depth
                raise _Unusable(f"layer {i}: blob bytes differ from the digest")
            _content.put(blob_digest, data)
        out.append(Evidence(digest, blob_digest, str(layer["mediaType"]), data, annotations))
    if not out:
        raise _Unusable(f"no layer of type {' or '.join(sorted(layer_types))}")
    return out
