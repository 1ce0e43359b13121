"""The SLSA provenance policy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import PolicyViolation
from ._attestations import load_keys, verified_statements
from ._keys import PublicKeyLike
from ._provenance import SLSA_PROVENANCE_V02, SLSA_PROVENANCE_V1, Validator, provenance_of

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = ["SLSAPolicy"]

log = logging.getLogger(__name__)


class SLSAPolicy:
    """Accepts a manifest with an SLSA provenance attestation that (1) is a DSSE envelope
    signed by one of ``public_keys``, (2) is a statement whose subject is the manifest digest
    being pulled, (3) has one of ``predicate_types`` and (4) satisfies every validator
    (:func:`require_builder`, :func:`require_source`, :func:`github_actions_workflow`, ...).

    One attestation must satisfy everything; when none does, the violation lists why each was
    refused. Keys are read at construction (:class:`~blobfs.errors.PolicyError` naming the
    file); at least one is required: unsigned provenance proves nothing.
    """

    name = "slsa"

    def __init__(
        self,
        public_keys: PublicKeyLike | Sequence[PublicKeyLike],
        validators: Sequence[Validator] = (),
        *,
        predicate_types: Sequence[str] = (SLSA_PROVENANCE_V1, SLSA_PROVENANCE_V02),
    ) -> None:
        self.keys = load_keys(public_keys)
        for v in validators:
            if not callable(v):
                raise TypeError(f"not a validator: {v!r}")
        self.validators = tuple(validators)
        if not predicate_types:
            raise ValueError("SLSAPolicy needs at least one predicate type")
        self.predicate_types = frozenset(predicate_types)

    def evaluate(self, request: PolicyRequest) -> None:
        found, problems = verified_statements(request, self.keys, self.name)
        for vs in found:
            st = vs.statement
            where = f"attestation {vs.layer}"
            if st.predicate_type not in self.predicate_types:
                problems.append(f"{where}: predicate type {st.predicate_type} is not accepted")
                continue
            prov = provenance_of(st)
            failed = [why for v in self.validators if (why := v(prov)) is not None]
            if not failed:
                log.debug("%s: provenance %s accepted", request.reference, vs.layer)
                return
            problems.append(f"{where}: " + ", ".join(failed))
        if not found and not problems:
            reason = f"no provenance attestation is attached to {request.digest}"
        else:
            reason = "no acceptable provenance: " + "; ".join(problems)
        raise PolicyViolation(self.name, reason, reference=str(request.reference))

    def __repr__(self) -> str:
        return f"SLSAPolicy({len(self.keys)} key(s), {len(self.validators)} validator(s))"
