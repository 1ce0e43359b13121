"""Registry request vocabulary for the auth flow: ``WWW-Authenticate`` challenges and scopes.

:func:`parse_challenges` reads challenges (RFC 7235); :func:`infer_scope` and
:func:`repository_of` say what a registry API request is about, from its method and path;
:func:`canonical_scope` makes one token-cache key of one grant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httpx

__all__ = ["Challenge", "canonical_scope", "infer_scope", "parse_challenges", "repository_of"]

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf"\s*({_TOKEN})\s*=\s*(\"(?:[^\"\\]|\\.)*\"|{_TOKEN})\s*")
_SCHEME = re.compile(rf"\s*({_TOKEN})")
_TOKEN68 = re.compile(r"\s*[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")
_REPO_PATH = re.compile(r"^/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: lowercase ``scheme`` and parameters (lowercase keys)."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235; several challenges per value allowed).

    Malformed trailing text is ignored; what parsed before it is returned.
    """
    challenges: list[Challenge] = []
    for text in values:
        pos = 0
        while pos < len(text):
            while pos < len(text) and text[pos] in " \t,":
                pos += 1
            m = _SCHEME.match(text, pos)
            if m is None:
                break
            scheme, pos = m.group(1).lower(), m.end()
            params: dict[str, str] = {}
            t68 = _TOKEN68.match(text, pos)
            if t68 is not None and _PARAM.match(text, pos) is None:
                pos = t68.end()
            while True:
                p = _PARAM.match(text, pos)
                if p is None:
                    break
                value = p.group(2)
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                params[p.group(1).lower()] = value
                pos = p.end()
                if pos < len(text) and text[pos] == ",":
                    pos += 1
            challenges.append(Challenge(scheme, params))
    return challenges


def canonical_scope(scope: str) -> str:
    """``scope`` with each resource's actions sorted: registries list them in any order
    (distribution 2.8 iterates a Go map: ``push,pull`` or ``pull,push``), and the token cache
    must see one key for one grant."""
    parts = []
    for item in scope.split():
        kind, sep, actions = item.rpartition(":")
        parts.append(f"{kind}{sep}{','.join(sorted(actions.split(',')))}" if sep else item)
    return " ".join(parts)


def repository_of(request: httpx.Request) -> str | None:
    """The repository a registry API request is about (``/v2/<repo>/...``), None if none."""
    m = _REPO_PATH.match(request.url.path)
    return m.group(1) if m else None


def infer_scope(request: httpx.Request) -> str | None:
    """The token scope a registry request needs, from its method and path; None if unknown."""
    m = _REPO_PATH.match(request.url.path)
    if m is None:
        return None
    if request.method in ("GET", "HEAD"):
        actions = "pull"
    elif request.method in ("POST", "PUT", "PATCH"):
        actions = "pull,push"
    else:
        return None
    return f"repository:{m.group(1)}:{actions}"
