"""blobfs.policy: trust policies evaluated before a pulled archive is used.

A policy's ``evaluate(request)`` returns or raises :class:`~blobfs.errors.PolicyViolation`;
the registry client calls it on every fetch, pull, inspect and mount (cache hits included),
with the verified manifest digest and its exact raw bytes, before the index is used::

    from blobfs.policy import require_all, require_any, load_policy
    from blobfs.policy.sigstore import KeyPairPolicy, KeylessPolicy, Identity
    from blobfs.policy.slsa import SLSAPolicy, require_builder, require_source
    from blobfs.policy.opa import OPAPolicy

    policy = require_all(
        require_any(KeyPairPolicy("release.pub"),
                    KeylessPolicy("trusted_root.json", [github_actions_identity("o/r")])),
        SLSAPolicy("builder.pub", [require_source("https://github.com/o/r", branches=["main"])]),
    )
    Registry(policy=policy)          # or load_policy("policy.toml")

Signatures and attestations are OCI referrers of the manifest (FORMAT.md 5), signed with
ECDSA P-256 keys (:func:`blobfs.policy.sigstore.generate_keypair`); see ``docs/policy.md``.

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._compose import Policy as Policy
    from ._compose import RequireAll as RequireAll
    from ._compose import RequireAny as RequireAny
    from ._compose import policy_name as policy_name
    from ._compose import require_all as require_all
    from ._compose import require_any as require_any
    from ._file import PolicyFile as PolicyFile
    from ._file import Rule as Rule
    from ._file import load_policy as load_policy

_NAMES: dict[str, str] = {
    "Policy": "._compose",
    "RequireAll": "._compose",
    "RequireAny": "._compose",
    "policy_name": "._compose",
    "require_all": "._compose",
    "require_any": "._compose",
    "PolicyFile": "._file",
    "Rule": "._file",
    "load_policy": "._file",
}
"""Each public name, by the module defining it."""

__all__ = [
    "Policy",
    "PolicyFile",
    "RequireAll",
    "RequireAny",
    "Rule",
    "load_policy",
    "policy_name",
    "require_all",
    "require_any",
]


__getattr__, __dir__ = lazy_exports(__name__, _NAMES, __all__)
