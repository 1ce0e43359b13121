"""The :class:`Policy` protocol and its combinators :func:`require_all` / :func:`require_any`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import PolicyViolation
from ._referrers import evaluation_scope

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = ["Policy", "RequireAll", "RequireAny", "policy_name", "require_all", "require_any"]

log = logging.getLogger(__name__)


@runtime_checkable
class Policy(Protocol):
    """A trust policy: ``evaluate(request)`` returns when the manifest is acceptable and raises
    :class:`~blobfs.errors.PolicyViolation` (naming the policy and the reason) when not.

    The registry client calls it on every fetch, pull, inspect and mount, cache hits included,
    after the manifest digest was verified and before the index is used. ``request.digest``
    and ``request.manifest_bytes`` are the verified manifest; ``request.registry`` reaches the
    referrers (signatures, attestations) of that digest. Implementations must never pass on
    missing, malformed or unverifiable evidence, and must be safe to call from several
    threads (all of blobfs's are: they hold only immutable state).
    """

    def evaluate(self, request: PolicyRequest) -> None: ...


def policy_name(policy: object) -> str:
    """The name a policy reports in violations (its ``name`` attribute, else its class)."""
    name = getattr(policy, "name", None)
    return name if isinstance(name, str) and name else type(policy).__name__


def _check(policies: Sequence[Policy], what: str) -> tuple[Policy, ...]:
    if not policies:
        # An empty combination passing everything is an easy mistake to make and to miss.
        raise ValueError(f"{what} needs at least one policy")
    for p in policies:
        if not callable(getattr(p, "evaluate", None)):
            raise TypeError(f"{what}: {p!r} is not a policy (no evaluate method)")
    return tuple(policies)


class RequireAll:
    """Every policy must pass, evaluated in order; the first violation is raised as it is (it
    names the policy that refused)."""

    name = "require_all"

    def __init__(self, *policies: Policy) -> None:
        self.policies = _check(policies, "require_all")

    def evaluate(self, request: PolicyRequest) -> None:
        with evaluation_scope():
            for p in self.policies:
                p.evaluate(request)

    def __repr__(self) -> str:
        return f"require_all({', '.join(map(repr, self.policies))})"


class RequireAny:
    """At least one policy must pass, tried in order; when all refuse, one violation lists each
    policy's reason."""

    name = "require_any"

    def __init__(self, *policies: Policy) -> None:
        self.policies = _check(policies, "require_any")

    def evaluate(self, request: PolicyRequest) -> None:
        reasons: list[str] = []
        with evaluation_scope():
            for p in self.policies:
                try:
                    p.evaluate(request)
                except PolicyViolation as e:
                    reasons.append(f"{e.policy}: {e.reason}")
                    continue
                log.debug("%s: accepted by %s", request.reference, policy_name(p))
                return
        raise PolicyViolation(
            self.name,
            f"none of {len(reasons)} policies accepted it ({'; '.join(reasons)})",
            reference=str(request.reference),
        )

    def __repr__(self) -> str:
        return f"require_any({', '.join(map(repr, self.policies))})"


def require_all(*policies: Policy) -> RequireAll:
    """A policy that passes when every one of ``policies`` passes (ValueError when empty)."""
    return RequireAll(*policies)


def require_any(*policies: Policy) -> RequireAny:
    """A policy that passes when one of ``policies`` passes (ValueError when empty)."""
    return RequireAny(*policies)
