"""Rego policies evaluated in process with ``regopy`` (rego-cpp): :class:`OPAPolicy`."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PolicyError, PolicyViolation
from ._attestations import load_keys, verified_statements
from ._keys import PublicKeyLike

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = ["QUERY", "OPAPolicy"]

log = logging.getLogger(__name__)

QUERY = "data.blob.policy"
"""The document queried, as in the reference: ``package blob.policy`` with ``allow`` / ``deny``."""


def _interpreter() -> Any:
    import regopy

    interp = regopy.Interpreter()
    # rego-cpp prints parse errors to stdout at its default level; a library must not print.
    interp.log_level = regopy.LogLevel.NONE
    # A built-in failing (division by zero, bad regex) is an error, not a silently undefined
    # (or, worse, true) rule.
    interp.strict_built_in_errors = True
    return interp


def _rego_errors(text: str) -> str:
    """The ``errormsg`` texts of a rego-cpp error sequence, joined on one line."""
    msgs = re.findall(r"\(errormsg \d+:([^)\n]*)\)", text)
    if msgs:
        return "; ".join(dict.fromkeys(m.strip() for m in msgs))
    return " ".join(text.split())[:300]


class OPAPolicy:
    """Accepts a manifest when the Rego policy says so: query ``data.blob.policy``; a
    non-empty ``deny`` set refuses with its messages, else ``allow == true`` accepts, anything
    else (undefined, false, an evaluation error) refuses.

    ``rego``: the policy text (``str``), or a path-like naming a ``.rego`` file (read and
    parsed now: :class:`~blobfs.errors.PolicyError` naming the file and the parse error).
    ``public_keys``: keys whose DSSE-signed in-toto attestations about this very manifest
    are passed in ``input.attestations`` (none given: the list is empty; unsigned or
    unverified attestations are never passed). ``predicate_types`` filters them (None: all).

    The input document, as the reference's plus ``annotations``::

        {"manifest": {"reference": ..., "digest": "sha256:...", "mediaType": ...,
                      "annotations": {...}},
         "attestations": [{"_type", "predicateType", "subject": [...], "predicate": {...}}]}
    """

    name = "opa"

    def __init__(
        self,
        rego: str | os.PathLike[str],
        *,
        public_keys: PublicKeyLike | Sequence[PublicKeyLike] = (),
        predicate_types: Sequence[str] | None = None,
    ) -> None:
        if isinstance(rego, os.PathLike):
            self.source_name = os.fspath(rego)
            try:
                self.rego = Path(rego).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise PolicyError(
                    f"{self.source_name}: cannot read the Rego policy: {reason}"
                ) from None
        else:
            self.source_name = "policy.rego"
            self.rego = rego
        if not self.rego.strip():
            raise PolicyError(f"{self.source_name}: the Rego policy is empty")
        no_keys = isinstance(public_keys, list | tuple) and not public_keys
        self.keys = () if no_keys else load_keys(public_keys)
        self.predicate_types = frozenset(predicate_types) if predicate_types is not None else None
        self._load()  # parse errors now, not at the first pull

    def _load(self) -> Any:
        import regopy

        interp = _interpreter()
        try:
            interp.add_module(self.source_name, self.rego)
        except regopy.RegoError as e:
            raise PolicyError(f"{self.source_name}: invalid Rego: {_rego_errors(str(e))}") from None
        return interp

    def input_document(self, request: PolicyRequest) -> dict[str, Any]:
        """The ``input`` the policy sees for ``request`` (verifies the attestations)."""
        attestations: list[dict[str, Any]] = []
        if self.keys:
            found, problems = verified_statements(request, self.keys, self.name)
            for p in problems:
                log.info("%s: attestation not used: %s", request.reference, p)
            attestations = [
                vs.statement.to_json()
                for vs in found
                if self.predicate_types is None
                or vs.statement.predicate_type in self.predicate_types
            ]
        m = request.manifest
        return {
            "manifest": {
                "reference": str(request.reference),
                "digest": request.digest,
                "mediaType": m.media_type,
                "annotations": dict(m.annotations),
            },
            "attestations": attestations,
        }

    def evaluate(self, request: PolicyRequest) -> None:
        import regopy

        doc = self.input_document(request)
        # A fresh interpreter per evaluation: rego-cpp interpreters are not thread-safe, and
        # one costs a few milliseconds (measured: about 5 ms with a small policy).
        interp = self._load()
        ref = str(request.reference)
        try:
            interp.set_input(doc)
            out = interp.query(QUERY)
        except regopy.RegoError as e:
            raise PolicyViolation(
                self.name, f"Rego evaluation failed: {_rego_errors(str(e))}", reference=ref
            ) from None
        if not out.ok():
            raise PolicyViolation(
                self.name, f"Rego evaluation failed: {_rego_errors(str(out))}", reference=ref
            )
        value = (
            out.results[0].expressions[0] if out.results and out.results[0].expressions else None
        )
        if not isinstance(value, dict):
            raise PolicyViolation(
                self.name,
                f"{QUERY} is undefined (does {self.source_name} declare package blob.policy?)",
                reference=ref,
            )
        deny = value.get("deny")
        if deny:
            items = deny if isinstance(deny, list) else [deny]
            reasons = sorted(str(d) for d in items)
            raise PolicyViolation(self.name, "denied: " + "; ".join(reasons), reference=ref)
        if value.get("allow") is not True:
            raise PolicyViolation(self.name, "allow is not true", reference=ref)
        log.debug("%s: allowed by %s", ref, self.source_name)

    def __repr__(self) -> str:
        return f"OPAPolicy({self.source_name!r}, {len(self.keys)} key(s))"
