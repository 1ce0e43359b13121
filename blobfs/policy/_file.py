"""Policy files: which trust rules apply to which references (TOML or YAML).

::

    version = 1
    unmatched = "deny"              # or "allow": references that no rule matches

    [[rules]]
    match = ["registry.example.com/team/*"]   # globs on host[:port]/repository
    [rules.signature]               # one accepted signature must verify
    keys = ["keys/release.pub"]
    [rules.signature.keyless]
    trusted_root = "trusted_root.json"
    identities = [
      { issuer = "https://accounts.example.com", subject = "dev@example.com" },
      { github = "owner/repo", workflow = "release.yml", branches = ["main"], tags = ["v*"] },
    ]
    [rules.provenance]              # signed SLSA provenance about this manifest
    keys = ["keys/builder.pub"]
    builder = "https://github.com/actions/runner/github-hosted"
    source = { repository = "https://github.com/owner/repo", branches = ["main"] }
    github = { repository = "owner/repo", workflow = "release.yml", tags = ["v*"] }
    [rules.rego]                    # data.blob.policy must allow it
    file = "policy.rego"
    keys = ["keys/builder.pub"]     # attestations passed to the Rego input

YAML files (``.yaml``/``.yml``) have the same structure. Every rule whose pattern matches the
reference applies, each requiring all of its sections; relative paths are relative to the
policy file. Every mistake (syntax, unknown key, wrong type, unreadable key or trusted root,
invalid Rego) is a :class:`~blobfs.errors.PolicyError` ``FILE: where: problem``.
"""

from __future__ import annotations

import logging
import os
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import PolicyError, PolicyViolation
from ._compose import Policy, require_all, require_any
from ._glob import glob_match
from ._keyless import Identity, KeylessPolicy, github_actions_identity
from ._keypair import KeyPairPolicy
from ._opa import OPAPolicy
from ._provenance import (
    Validator,
    github_actions_workflow,
    require_build_type,
    require_builder,
    require_source,
)
from ._referrers import evaluation_scope
from ._slsa import SLSAPolicy

if TYPE_CHECKING:
    from ..registry import PolicyRequest

__all__ = ["PolicyFile", "Rule", "load_policy"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Bad(Exception):
    """A mistake in the file; the message says where (``rules[1].signature``) and what."""


class _Table:
    """A mapping of the file being checked: typed getters, unknown keys refused."""

    def __init__(self, obj: object, where: str, known: Sequence[str]) -> None:
        if not isinstance(obj, dict):
            raise _Bad(f"{where}: must be a table/mapping, not {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in known)
        if unknown:
            raise _Bad(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        self.obj: dict[str, Any] = obj
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.obj

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self.obj.get(key, default)
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise _Bad(f"{self.where}.{key}: must be a non-empty string")
        return v

    def texts(self, key: str) -> list[str]:
        v = self.obj.get(key, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) and s.strip() for s in v):
            raise _Bad(f"{self.where}.{key}: must be a string or a list of strings")
        return list(v)

    def table(self, key: str, known: Sequence[str]) -> _Table | None:
        return _Table(self.obj[key], f"{self.where}.{key}", known) if key in self.obj else None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: the globs it applies to and the policy its sections make."""

    patterns: tuple[str, ...]
    policy: Policy
    sections: tuple[str, ...]
    """Names of the sections present (``signature``, ``provenance``, ``rego``)."""

    def matches(self, repository: str) -> bool:
        return any(glob_match(p, repository) for p in self.patterns)


class PolicyFile:
    """The policy of a policy file: the rules matching a reference's ``host/repository`` all
    apply; a reference no rule matches is refused (``unmatched = "deny"``, the default) or
    accepted (``"allow"``, logged at WARNING)."""

    name = "policy-file"

    def __init__(self, path: str, rules: Sequence[Rule], unmatched_allow: bool) -> None:
        self.path = path
        self.rules = tuple(rules)
        self.unmatched_allow = unmatched_allow

    def rules_for(self, registry: str, repository: str) -> list[Rule]:
        name = f"{registry}/{repository}"
        return [r for r in self.rules if r.matches(name)]

    def evaluate(self, request: PolicyRequest) -> None:
        ref = request.reference
        rules = self.rules_for(ref.registry, ref.repository)
        if not rules:
            if self.unmatched_allow:
                log.warning(
                    "%s: no rule of %s matches; allowed (unmatched = allow)", ref, self.path
                )
                return
            raise PolicyViolation(
                self.name,
                f"no rule of {self.path} matches {ref.registry}/{ref.repository} "
                "(unmatched = deny)",
                reference=str(ref),
            )
        with evaluation_scope():
            for rule in rules:
                rule.policy.evaluate(request)

    def __repr__(self) -> str:
        return f"PolicyFile({self.path!r}, {len(self.rules)} rule(s))"


def _parse_text(path: Path, text: str) -> object:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover - pyyaml is a dependency
            raise _Bad("YAML policy files need PyYAML (pip install pyyaml)") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise _Bad(f"invalid YAML: {' '.join(str(e).split())}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise _Bad(f"invalid TOML: {e}") from None


def load_policy(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and check the policy file ``path`` (TOML, or YAML for ``.yaml``/``.yml``), load
    every key, trusted root and Rego file it names, and return its :class:`PolicyFile`.
    Raises :class:`PolicyError` ``FILE: where: problem`` for any mistake."""
    p = Path(path).expanduser()
    where = os.fspath(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PolicyError(f"{where}: cannot read the policy file: {reason}") from None
    try:
        doc = _parse_text(p, text)
        if doc is None:
            raise _Bad("the policy file is empty")
        top = _Table(doc, "policy", ("version", "unmatched", "rules"))
        version = top.obj.get("version", 1)
        if version != 1 or isinstance(version, bool):
            raise _Bad(f"version {version!r} is not supported (only 1)")
        unmatched = top.text("unmatched", "deny")
        if unmatched not in ("deny", "allow"):
            raise _Bad(f"unmatched: must be 'deny' or 'allow', not {unmatched!r}")
        raw_rules = top.obj.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise _Bad("no rules: add at least one [[rules]] entry")
        rules = [_rule(r, f"rules[{i}]", p.parent) for i, r in enumerate(raw_rules)]
    except _Bad as e:
        raise PolicyError(f"{where}: {e}") from None
    except PolicyError as e:  # a key, trusted root or Rego file named by the policy file
        raise PolicyError(f"{where}: {e}") from None
    except ValueError as e:  # a pattern or identity the policy constructors refused
        raise PolicyError(f"{where}: {e}") from None
    return PolicyFile(where, rules, unmatched == "allow")


def _path(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


_SIGNATURE = ("keys", "keyless")
_KEYLESS = ("trusted_root", "identities")
_IDENTITY = ("issuer", "subject", "subject_regex", "github", "workflow", "branches", "tags", "refs")
_PROVENANCE = ("keys", "builder", "build_type", "source", "github", "predicate_types")
_SOURCE = ("repository", "refs", "branches", "tags")
_GITHUB = ("repository", "workflow", "refs", "branches", "tags")
_REGO = ("file", "keys", "predicate_types")


def _rule(obj: object, where: str, base: Path) -> Rule:
    t = _Table(obj, where, ("match", "signature", "provenance", "rego"))
    patterns = t.texts("match")
    if not patterns:
        raise _Bad(f"{where}.match: give at least one host/repository glob")
    parts: list[Policy] = []
    names: list[str] = []
    sig = t.table("signature", _SIGNATURE)
    if sig is not None:
        parts.append(_signature(sig, base))
        names.append("signature")
    prov = t.table("provenance", _PROVENANCE)
    if prov is not None:
        parts.append(_provenance(prov, base))
        names.append("provenance")
    rego = t.table("rego", _REGO)
    if rego is not None:
        file = rego.text("file")
        if file is None:
            raise _Bad(f"{rego.where}.file: the Rego file is required")
        keys = [_path(base, k) for k in rego.texts("keys")]
        ptypes = rego.texts("predicate_types") if rego.has("predicate_types") else None
        parts.append(OPAPolicy(_path(base, file), public_keys=keys, predicate_types=ptypes))
        names.append("rego")
    if not parts:
        raise _Bad(f"{where}: no signature, provenance or rego section: the rule checks nothing")
    policy = parts[0] if len(parts) == 1 else require_all(*parts)
    return Rule(tuple(patterns), policy, tuple(names))


def _signature(t: _Table, base: Path) -> Policy:
    options: list[Policy] = [KeyPairPolicy(_path(base, k)) for k in t.texts("keys")]
    keyless = t.table("keyless", _KEYLESS)
    if keyless is not None:
        root = keyless.text("trusted_root")
        if root is None:
            raise _Bad(f"{keyless.where}.trusted_root: required (a sigstore trusted_root.json)")
        ids = keyless.obj.get("identities")
        if not isinstance(ids, list) or not ids:
            raise _Bad(f"{keyless.where}.identities: give at least one identity")
        identities = [_identity(o, f"{keyless.where}.identities[{i}]") for i, o in enumerate(ids)]
        options.append(KeylessPolicy(_path(base, root), identities))
    if not options:
        raise _Bad(f"{t.where}: give keys or keyless")
    return options[0] if len(options) == 1 else require_any(*options)


def _github(t: _Table, make: Callable[..., T], repository: str) -> T:
    """``make(repository, workflow=, branches=, tags=, refs=)`` from table ``t``."""
    try:
        return make(
            repository,
            workflow=t.text("workflow"),
            branches=t.texts("branches"),
            tags=t.texts("tags"),
            refs=t.texts("refs"),
        )
    except ValueError as e:
        raise _Bad(f"{t.where}: {e}") from None


def _identity(obj: object, where: str) -> Identity:
    t = _Table(obj, where, _IDENTITY)
    repo = t.text("github")
    if repo is not None:
        for k in ("issuer", "subject", "subject_regex"):
            if t.has(k):
                raise _Bad(f"{where}: {k!r} does not go with 'github'")
        return _github(t, github_actions_identity, repo)
    for k in ("workflow", "branches", "tags", "refs"):
        if t.has(k):
            raise _Bad(f"{where}: {k!r} goes with 'github' only")
    issuer = t.text("issuer")
    if issuer is None:
        raise _Bad(f"{where}: needs 'issuer' (with 'subject' or 'subject_regex') or 'github'")
    try:
        return Identity(issuer, subject=t.text("subject"), subject_regex=t.text("subject_regex"))
    except ValueError as e:
        raise _Bad(f"{where}: {e}") from None


def _provenance(t: _Table, base: Path) -> Policy:
    keys = [_path(base, k) for k in t.texts("keys")]
    if not keys:
        raise _Bad(f"{t.where}.keys: give the public key(s) that sign the provenance")
    validators: list[Validator] = []
    builder = t.text("builder")
    if builder is not None:
        validators.append(require_builder(builder))
    build_type = t.text("build_type")
    if build_type is not None:
        validators.append(require_build_type(build_type))
    src = t.table("source", _SOURCE)
    if src is not None:
        repo = src.text("repository")
        if repo is None:
            raise _Bad(f"{src.where}.repository: required")
        validators.append(
            require_source(
                repo, refs=src.texts("refs"), branches=src.texts("branches"), tags=src.texts("tags")
            )
        )
    gh = t.table("github", _GITHUB)
    if gh is not None:
        repo = gh.text("repository")
        if repo is None:
            raise _Bad(f"{gh.where}.repository: required (owner/name)")
        validators.append(_github(gh, github_actions_workflow, repo))
    if t.has("predicate_types"):
        return SLSAPolicy(keys, validators, predicate_types=t.texts("predicate_types"))
    return SLSAPolicy(keys, validators)
