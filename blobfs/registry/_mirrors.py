"""Registry mirrors: parsing containers-registries.conf style tables and building mirror URLs.

A mirror serves the same repository paths as the registry it mirrors (pull-through cache
semantics, e.g. docker-registry in proxy mode). Configuration, TOML::

    [[registry]]
    location = "registry.example.com:5000"

    [[registry.mirror]]
    location = "mirror.site.local:5000"
    insecure = true            # plain HTTP to this mirror

:func:`parse_mirrors` turns that into ``{"registry.example.com:5000": [("mirror.site.local:5000",
True)]}``, which ``Registry(mirrors=...)`` accepts. Other keys of registries.conf (``prefix``,
``blocked``, ``pull-from-mirror``, ...) are ignored.
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Sequence
from typing import Any

from ._reference import scheme_for

__all__ = ["MirrorSpec", "mirror_base_url", "parse_mirrors"]

MirrorSpec = str | tuple[str, bool]
"""A mirror as ``Registry(mirrors=...)`` takes it: a base URL (``http://m:5000``), a
``host[:port]``, or a ``(location, insecure)`` pair as :func:`parse_mirrors` gives."""


def parse_mirrors(text: str) -> dict[str, list[tuple[str, bool]]]:
    """The mirrors of a containers-registries.conf style TOML text: registry location → list of
    ``(mirror location, insecure)`` in the order given.

    Registries without mirrors are left out. Raises ValueError naming the problem on invalid
    TOML or wrongly typed entries.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"mirror configuration: invalid TOML: {exc}") from None
    registries = doc.get("registry", [])
    if not isinstance(registries, list):
        raise ValueError("mirror configuration: 'registry' must be an array of tables")
    out: dict[str, list[tuple[str, bool]]] = {}
    for i, entry in enumerate(registries):
        where = f"mirror configuration: registry #{i + 1}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not a table")
        location = _location(entry, where)
        mirrors = entry.get("mirror", [])
        if not isinstance(mirrors, list):
            raise ValueError(f"{where}: 'mirror' must be an array of tables")
        for j, m in enumerate(mirrors):
            mwhere = f"{where} ({location}): mirror #{j + 1}"
            if not isinstance(m, dict):
                raise ValueError(f"{mwhere}: not a table")
            insecure = m.get("insecure", False)
            if not isinstance(insecure, bool):
                raise ValueError(f"{mwhere}: 'insecure' must be true or false")
            out.setdefault(location, []).append((_location(m, mwhere), insecure))
    return out


def _location(entry: dict[str, Any], where: str) -> str:
    loc = entry.get("location")
    if not isinstance(loc, str) or not loc.strip():
        raise ValueError(f"{where}: 'location' must be a non-empty string")
    return loc.strip().rstrip("/")


def mirror_base_url(
    spec: MirrorSpec, plain_http: bool | None, insecure_hosts: Collection[str] = ()
) -> str:
    """The base URL (``scheme://host[:port][/path]``, no trailing slash) of a mirror.

    A location with a scheme is used as it is. Otherwise the scheme is ``http`` when the entry
    is marked insecure, when ``plain_http`` is True, or (``plain_http`` None) for loopback hosts
    and ``insecure_hosts``; else ``https``.
    """
    location, insecure = (spec, False) if isinstance(spec, str) else spec
    location = location.strip().rstrip("/")
    if "://" in location:
        return location
    if insecure or plain_http:
        scheme = "http"
    elif plain_http is None:
        scheme = scheme_for(location.split("/", 1)[0], insecure_hosts)
    else:
        scheme = "https"
    return f"{scheme}://{location}"


def normalize_mirrors(
    mirrors: Any, plain_http: bool | None, insecure_hosts: Collection[str]
) -> dict[str, tuple[str, ...]]:
    """``Registry(mirrors=...)`` as registry → tuple of base URLs (validated)."""
    out: dict[str, tuple[str, ...]] = {}
    for host, specs in (mirrors or {}).items():
        if isinstance(specs, str | tuple):
            raise TypeError(f"mirrors[{host!r}] must be a sequence of mirrors, not one mirror")
        seq: Sequence[MirrorSpec] = specs
        out[host] = tuple(mirror_base_url(s, plain_http, insecure_hosts) for s in seq)
    return out
