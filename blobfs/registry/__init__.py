"""blobfs.registry: archives in OCI registries: references, credentials, auth, the client.

Public API::

    ref = Reference.parse("127.0.0.1:5000/team/app:v1")  # host[:port]/repo[:tag][@sha256:..]
    scheme_for(ref, insecure_hosts)       # "http" only for loopback or insecure hosts
    store = CredentialStore()             # explicit, $REGISTRY_AUTH_FILE, docker config
    reg = Registry(auth=RegistryAuth(store))
    manifest = reg.push(ref, "src/", tags=["latest"])   # chunked uploads, manifest last
    with reg.pull(ref) as archive: ...    # index verified; data read lazily by ranges
    reg.fetch(ref), reg.tag(ref, digest), reg.inspect(ref), reg.list_tags(ref),
    reg.referrers(ref, artifact_type)
    reg.attach(ref, artifact_type=..., payload=b"...", payload_media_type=...)  # -> digest
    reg.fetch_manifest_bytes(ref, digest), reg.fetch_blob(ref, digest, max_size=...)
    Registry(caches=RegistryCaches(root), offline=True, mirrors=parse_mirrors(toml_text))
    Registry(policy=my_policy)   # my_policy.evaluate(PolicyRequest) in fetch/pull/inspect

Names are imported on first use (PEP 562): ``Reference`` or the credential store do not
load httpx; ``Registry`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._auth import RegistryAuth as RegistryAuth
    from ._challenges import Challenge as Challenge
    from ._challenges import parse_challenges as parse_challenges
    from ._client import Inspection as Inspection
    from ._client import Registry as Registry
    from ._client import RemoteArchive as RemoteArchive
    from ._credentials import Credentials as Credentials
    from ._credentials import CredentialStore as CredentialStore
    from ._credentials import normalize_host as normalize_host
    from ._manifest import ARTIFACT_TYPE as ARTIFACT_TYPE
    from ._manifest import DATA_MEDIA_TYPE as DATA_MEDIA_TYPE
    from ._manifest import INDEX_MEDIA_TYPE as INDEX_MEDIA_TYPE
    from ._manifest import OCI_INDEX as OCI_INDEX
    from ._manifest import OCI_MANIFEST as OCI_MANIFEST
    from ._manifest import Descriptor as Descriptor
    from ._manifest import Manifest as Manifest
    from ._manifest import build_manifest as build_manifest
    from ._mirrors import MirrorSpec as MirrorSpec
    from ._mirrors import parse_mirrors as parse_mirrors
    from ._policy_hook import ManifestPolicy as ManifestPolicy
    from ._policy_hook import PolicyRequest as PolicyRequest
    from ._reference import Reference as Reference
    from ._reference import is_loopback as is_loopback
    from ._reference import scheme_for as scheme_for
    from ._reference import split_host_port as split_host_port
    from .cache import DEFAULT_REF_TTL as DEFAULT_REF_TTL
    from .cache import RegistryCaches as RegistryCaches

_NAMES: dict[str, str] = {
    "RegistryAuth": "._auth",
    "Challenge": "._challenges",
    "parse_challenges": "._challenges",
    "Inspection": "._client",
    "Registry": "._client",
    "RemoteArchive": "._client",
    "Credentials": "._credentials",
    "CredentialStore": "._credentials",
    "normalize_host": "._credentials",
    "ARTIFACT_TYPE": "._manifest",
    "DATA_MEDIA_TYPE": "._manifest",
    "INDEX_MEDIA_TYPE": "._manifest",
    "OCI_INDEX": "._manifest",
    "OCI_MANIFEST": "._manifest",
    "Descriptor": "._manifest",
    "Manifest": "._manifest",
    "build_manifest": "._manifest",
    "MirrorSpec": "._mirrors",
    "parse_mirrors": "._mirrors",
    "ManifestPolicy": "._policy_hook",
    "PolicyRequest": "._policy_hook",
    "Reference": "._reference",
    "is_loopback": "._reference",
    "scheme_for": "._reference",
    "split_host_port": "._reference",
    "DEFAULT_REF_TTL": ".cache",
    "RegistryCaches": ".cache",
}
"""Each public name, by the module defining it."""

__all__ = [
    "ARTIFACT_TYPE",
    "DATA_MEDIA_TYPE",
    "DEFAULT_REF_TTL",
    "INDEX_MEDIA_TYPE",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Challenge",
    "CredentialStore",
    "Credentials",
    "Descriptor",
    "Inspection",
    "Manifest",
    "ManifestPolicy",
    "MirrorSpec",
    "PolicyRequest",
    "Reference",
    "Registry",
    "RegistryAuth",
    "RegistryCaches",
    "RemoteArchive",
    "build_manifest",
    "is_loopback",
    "normalize_host",
    "parse_challenges",
    "parse_mirrors",
    "scheme_for",
    "split_host_port",
]


__getattr__, __dir__ = lazy_exports(__name__, _NAMES, __all__)
