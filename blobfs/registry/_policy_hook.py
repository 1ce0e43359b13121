"""The hook trust policies plug into: :class:`ManifestPolicy` and :class:`PolicyRequest`.

``Registry(policy=...)`` calls ``policy.evaluate(request)`` in :meth:`Registry.fetch` (so in
``pull``, ``inspect`` and mounts too) once the manifest's digest is verified and before its
index is fetched or used, also when the manifest came from the registry caches or offline. A
policy refuses by raising :class:`~blobfs.errors.PolicyViolation`, which reaches the caller
unchanged; returning means accepted. Policies live in ``blobfs.policy`` (a layer above this
one); this module only defines the interface, so the registry does not import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ._manifest import Manifest
from ._reference import Reference

if TYPE_CHECKING:
    from ._client import Registry

__all__ = ["ManifestPolicy", "PolicyRequest"]


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """What a policy decides on.

    - ``reference``: the reference as the caller gave it (tag and/or digest);
    - ``digest``: the verified manifest digest, ``sha256:<hex>``;
    - ``manifest_bytes``: the exact raw manifest bytes (what signatures are made over);
    - ``manifest``: the parsed blobfs archive manifest;
    - ``registry``: the registry client, for :meth:`~Registry.referrers`,
      :meth:`~Registry.fetch_blob` and :meth:`~Registry.fetch_manifest_bytes` (in offline mode
      these raise :class:`~blobfs.errors.RegistryError`).
    """

    reference: Reference
    digest: str
    manifest_bytes: bytes
    manifest: Manifest
    registry: Registry


class ManifestPolicy(Protocol):
    """A trust policy: ``evaluate`` returns to accept and raises
    :class:`~blobfs.errors.PolicyViolation` to refuse. It may be called from several threads at
    once (as the registry's methods may)."""

    def evaluate(self, request: PolicyRequest) -> None: ...
