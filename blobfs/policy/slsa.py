"""SLSA provenance: attach signed in-toto statements, and :class:`SLSAPolicy` to require them.

::

    attest(registry, ref, predicate, load_private_key("builder.key"))   # DSSE, P-256
    SLSAPolicy("builder.pub", [
        require_builder("https://github.com/actions/runner/github-hosted"),
        require_source("https://github.com/owner/repo", branches=["main"], tags=["v*"]),
        github_actions_workflow("owner/repo", workflow="release.yml"),
    ])

The statement's subject is the manifest digest; the policy checks the envelope signature
(PAE), that the subject is the manifest being pulled, the predicate type (SLSA v1 or v0.2) and
the validators. Attestations are referrers with artifactType :data:`ATTESTATION_ARTIFACT_TYPE`.
"""

from __future__ import annotations

from ._attestations import IN_TOTO_MEDIA_TYPE as ATTESTATION_ARTIFACT_TYPE
from ._attestations import VerifiedStatement as VerifiedStatement
from ._attestations import attest as attest
from ._attestations import load_predicate as load_predicate
from ._attestations import verified_statements as verified_statements
from ._dsse import pae as pae
from ._dsse import parse_envelope as parse_envelope
from ._dsse import sign_envelope as sign_envelope
from ._provenance import GITHUB_BUILD_TYPES as GITHUB_BUILD_TYPES
from ._provenance import SLSA_PROVENANCE_V02 as SLSA_PROVENANCE_V02
from ._provenance import SLSA_PROVENANCE_V1 as SLSA_PROVENANCE_V1
from ._provenance import STATEMENT_V1 as STATEMENT_V1
from ._provenance import Provenance as Provenance
from ._provenance import Statement as Statement
from ._provenance import Validator as Validator
from ._provenance import build_statement as build_statement
from ._provenance import github_actions_workflow as github_actions_workflow
from ._provenance import parse_statement as parse_statement
from ._provenance import provenance_of as provenance_of
from ._provenance import require_build_type as require_build_type
from ._provenance import require_builder as require_builder
from ._provenance import require_source as require_source
from ._slsa import SLSAPolicy as SLSAPolicy

__all__ = [
    "ATTESTATION_ARTIFACT_TYPE",
    "GITHUB_BUILD_TYPES",
    "SLSA_PROVENANCE_V02",
    "SLSA_PROVENANCE_V1",
    "STATEMENT_V1",
    "Provenance",
    "SLSAPolicy",
    "Statement",
    "Validator",
    "VerifiedStatement",
    "attest",
    "build_statement",
    "github_actions_workflow",
    "load_predicate",
    "pae",
    "parse_envelope",
    "parse_statement",
    "provenance_of",
    "require_build_type",
    "require_builder",
    "require_source",
    "sign_envelope",
    "verified_statements",
]
