"""in-toto statements and SLSA provenance: build, parse, and the provenance validators.

A statement (``https://in-toto.io/Statement/v1``, v0.1 read too) names its subjects by
digest; :func:`provenance_of` pulls out of an SLSA v1 or v0.2 predicate what policies check:
builder id, build type, source repository / ref / commit and, for GitHub Actions build types,
the workflow file. Validators are small callables returning None (satisfied) or the reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import PolicyError
from ._glob import glob_match

__all__ = [
    "GITHUB_BUILD_TYPES",
    "SLSA_PROVENANCE_V02",
    "SLSA_PROVENANCE_V1",
    "STATEMENT_V1",
    "Provenance",
    "Statement",
    "Validator",
    "build_statement",
    "github_actions_workflow",
    "parse_statement",
    "provenance_of",
    "require_build_type",
    "require_builder",
    "require_source",
]

STATEMENT_V1 = "https://in-toto.io/Statement/v1"
_STATEMENT_TYPES = frozenset({STATEMENT_V1, "https://in-toto.io/Statement/v0.1"})
SLSA_PROVENANCE_V1 = "https://slsa.dev/provenance/v1"
SLSA_PROVENANCE_V02 = "https://slsa.dev/provenance/v0.2"

GITHUB_BUILD_TYPES = frozenset(
    {
        # actions/attest-build-provenance
        "https://actions.github.io/buildtypes/workflow/v1",
        # slsa-framework/slsa-github-generator
        "https://slsa-framework.github.io/github-actions-buildtypes/workflow/v1",
    }
)
"""SLSA v1 build types whose ``externalParameters.workflow`` names a GitHub Actions workflow."""


@dataclass(frozen=True, slots=True)
class Statement:
    """A parsed in-toto statement."""

    type: str
    predicate_type: str
    subjects: tuple[tuple[str, Mapping[str, str]], ...]
    """``(name, {algorithm: hex digest})`` per subject."""
    predicate: Mapping[str, Any]

    def covers(self, digest: str) -> bool:
        """True when a subject has ``digest`` (``sha256:<hex>``)."""
        algo, _, hexdigest = digest.partition(":")
        return any(d.get(algo, "").lower() == hexdigest for _, d in self.subjects)

    def subject_digests(self) -> list[str]:
        return [f"{a}:{h}" for _, d in self.subjects for a, h in sorted(d.items())]

    def to_json(self) -> dict[str, Any]:
        """The statement as the OPA input's ``attestations`` items show it."""
        return {
            "_type": self.type,
            "predicateType": self.predicate_type,
            "subject": [{"name": n, "digest": dict(d)} for n, d in self.subjects],
            "predicate": dict(self.predicate),
        }


def build_statement(
    subject_name: str, digest: str, predicate_type: str, predicate: Mapping[str, Any]
) -> bytes:
    """An in-toto v1 statement (compact JSON) about the manifest ``digest``."""
    algo, _, hexdigest = digest.partition(":")
    doc = {
        "_type": STATEMENT_V1,
        "subject": [{"name": subject_name, "digest": {algo: hexdigest}}],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def parse_statement(payload: bytes, what: str) -> Statement:
    """Parse an in-toto statement strictly (:class:`PolicyError` naming ``what``)."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise PolicyError(f"{what}: the payload is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{what}: the payload is not a JSON object")
    kind = doc.get("_type")
    if kind not in _STATEMENT_TYPES:
        raise PolicyError(f"{what}: _type {kind!r} is not an in-toto statement")
    ptype = doc.get("predicateType")
    if not isinstance(ptype, str) or not ptype:
        raise PolicyError(f"{what}: no predicateType")
    subjects = doc.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise PolicyError(f"{what}: no subject")
    parsed: list[tuple[str, Mapping[str, str]]] = []
    for i, s in enumerate(subjects):
        digests = s.get("digest") if isinstance(s, dict) else None
        if not isinstance(digests, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in digests.items()
        ):
            raise PolicyError(f"{what}: subject {i} has no digest map")
        name = s.get("name", "")
        parsed.append((name if isinstance(name, str) else "", dict(digests)))
    predicate = doc.get("predicate", {})
    if not isinstance(predicate, dict):
        raise PolicyError(f"{what}: predicate is not an object")
    return Statement(kind, ptype, tuple(parsed), predicate)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What the validators look at, from an SLSA v1 or v0.2 predicate ("" when absent)."""

    predicate_type: str
    builder_id: str = ""
    build_type: str = ""
    source_uri: str = ""
    source_ref: str = ""
    source_digest: Mapping[str, str] = field(default_factory=dict)
    workflow_repository: str = ""
    workflow_path: str = ""
    workflow_ref: str = ""


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _split_uri_ref(uri: str) -> tuple[str, str]:
    """``git+https://h/o/r@refs/heads/main`` -> (``git+https://h/o/r``, ``refs/heads/main``)."""
    base, at, ref = uri.rpartition("@")
    if at and ref.startswith("refs/"):
        return base, ref
    return uri, ""


def provenance_of(statement: Statement) -> Provenance:
    """The checked fields of ``statement``'s SLSA predicate (v1 or v0.2)."""
    p = statement.predicate
    if statement.predicate_type == SLSA_PROVENANCE_V02:
        uri, ref = _split_uri_ref(_text(_get(p, "invocation", "configSource", "uri")))
        digest = _get(p, "invocation", "configSource", "digest")
        return Provenance(
            statement.predicate_type,
            builder_id=_text(_get(p, "builder", "id")),
            build_type=_text(p.get("buildType")),
            source_uri=uri,
            source_ref=ref,
            source_digest=dict(digest) if isinstance(digest, dict) else {},
            workflow_repository=uri,
            workflow_path=_text(_get(p, "invocation", "configSource", "entryPoint")),
            workflow_ref=ref,
        )
    build_type = _text(_get(p, "buildDefinition", "buildType"))
    workflow = _get(p, "buildDefinition", "externalParameters", "workflow")
    wf_repo = _text(_get(workflow, "repository"))
    wf_path = _text(_get(workflow, "path"))
    wf_ref = _text(_get(workflow, "ref"))
    source_uri, source_ref, digest = wf_repo, wf_ref, {}
    deps = _get(p, "buildDefinition", "resolvedDependencies")
    if isinstance(deps, list) and deps and isinstance(deps[0], dict):
        uri, ref = _split_uri_ref(_text(deps[0].get("uri")))
        d = deps[0].get("digest")
        if uri and not source_uri:
            source_uri, source_ref = uri, ref
        if isinstance(d, dict) and (not wf_repo or _same_repo(uri, wf_repo)):
            digest = dict(d)
    source = _get(p, "buildDefinition", "externalParameters", "source")
    if not source_uri and isinstance(source, str):
        source_uri, source_ref = _split_uri_ref(source)
    return Provenance(
        statement.predicate_type,
        builder_id=_text(_get(p, "runDetails", "builder", "id")),
        build_type=build_type,
        source_uri=source_uri,
        source_ref=source_ref,
        source_digest=digest,
        workflow_repository=wf_repo,
        workflow_path=wf_path,
        workflow_ref=wf_ref,
    )


def _norm_repo(uri: str) -> str:
    """A repository URI without ``git+``, scheme, ``.git`` and trailing ``/``; host lower-cased."""
    text = re.sub(r"^(?:git\+)?[A-Za-z][A-Za-z0-9+.-]*://", "", uri.strip()).rstrip("/")
    text = text.removesuffix(".git")
    host, slash, rest = text.partition("/")
    return host.lower() + slash + rest


def _same_repo(a: str, b: str) -> bool:
    return bool(a) and bool(b) and _norm_repo(a) == _norm_repo(b)


class Validator(Protocol):
    """A provenance check: None when ``provenance`` satisfies it, else the reason."""

    def __call__(self, provenance: Provenance, /) -> str | None: ...


def _ref_globs(branches: Sequence[str], tags: Sequence[str], refs: Sequence[str]) -> list[str]:
    return [f"refs/heads/{b}" for b in branches] + [f"refs/tags/{t}" for t in tags] + list(refs)


@dataclass(frozen=True, slots=True)
class _RequireBuilder:
    builder_id: str

    def __call__(self, p: Provenance) -> str | None:
        if p.builder_id == self.builder_id:
            return None
        return f"builder {p.builder_id or '(none)'!r} is not {self.builder_id!r}"


@dataclass(frozen=True, slots=True)
class _RequireBuildType:
    build_type: str

    def __call__(self, p: Provenance) -> str | None:
        if p.build_type == self.build_type:
            return None
        return f"build type {p.build_type or '(none)'!r} is not {self.build_type!r}"


@dataclass(frozen=True, slots=True)
class _RequireSource:
    repository: str
    refs: tuple[str, ...]

    def __call__(self, p: Provenance) -> str | None:
        if not _same_repo(p.source_uri, self.repository):
            return f"source {p.source_uri or '(none)'!r} is not {self.repository!r}"
        if self.refs and not any(glob_match(g, p.source_ref) for g in self.refs):
            return f"source ref {p.source_ref or '(none)'!r} matches none of {list(self.refs)}"
        return None


@dataclass(frozen=True, slots=True)
class _GitHubWorkflow:
    repository: str
    workflow: str | None
    refs: tuple[str, ...]

    def __call__(self, p: Provenance) -> str | None:
        if p.predicate_type == SLSA_PROVENANCE_V1 and p.build_type not in GITHUB_BUILD_TYPES:
            return f"build type {p.build_type or '(none)'!r} is not a GitHub Actions workflow"
        if not _same_repo(p.workflow_repository, f"github.com/{self.repository}"):
            return (
                f"workflow repository {p.workflow_repository or '(none)'!r} is not "
                f"github.com/{self.repository}"
            )
        if self.workflow is not None and not glob_match(
            f".github/workflows/{self.workflow}", p.workflow_path
        ):
            return (
                f"workflow {p.workflow_path or '(none)'!r} is not .github/workflows/{self.workflow}"
            )
        if self.refs and not any(glob_match(g, p.workflow_ref) for g in self.refs):
            return f"workflow ref {p.workflow_ref or '(none)'!r} matches none of {list(self.refs)}"
        return None


def require_builder(builder_id: str) -> Validator:
    """The builder id must be exactly ``builder_id``."""
    if not builder_id:
        raise ValueError("require_builder needs a builder id")
    return _RequireBuilder(builder_id)


def require_build_type(build_type: str) -> Validator:
    """The build type must be exactly ``build_type``."""
    if not build_type:
        raise ValueError("require_build_type needs a build type")
    return _RequireBuildType(build_type)


def require_source(
    repository: str,
    *,
    refs: Sequence[str] = (),
    branches: Sequence[str] = (),
    tags: Sequence[str] = (),
) -> Validator:
    """The source repository must be ``repository`` (``git+``, scheme and ``.git`` ignored:
    ``https://github.com/o/r`` equals ``git+https://github.com/o/r.git``), and, when any are
    given, its ref must match one of the globs ``refs``, ``refs/heads/<branches>``,
    ``refs/tags/<tags>``."""
    if not repository:
        raise ValueError("require_source needs a repository")
    return _RequireSource(repository, tuple(_ref_globs(branches, tags, refs)))


def github_actions_workflow(
    repository: str,
    *,
    workflow: str | None = None,
    branches: Sequence[str] = (),
    tags: Sequence[str] = (),
    refs: Sequence[str] = (),
) -> Validator:
    """The build must be a GitHub Actions workflow run of ``repository`` (``owner/name``):
    a GitHub workflow build type (SLSA v1), the workflow repository ``github.com/<repository>``,
    the workflow file ``.github/workflows/<workflow glob>`` when given, and its ref one of the
    branch/tag/ref globs when given."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repository):
        raise ValueError(f"repository {repository!r}: want owner/name")
    return _GitHubWorkflow(repository, workflow, tuple(_ref_globs(branches, tags, refs)))
