"""Registry references: ``host[:port]/repo[/more][:tag][@sha256:<hex>]``.

The registry host is always explicit (no ``docker.io`` defaulting, as in the Go system): the first
component must contain a dot or a port, or be ``localhost``. Plain HTTP is chosen only for
loopback hosts or hosts the caller marks insecure (:func:`scheme_for`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from ..errors import InvalidReference

__all__ = ["Reference", "is_loopback", "scheme_for", "split_host_port"]

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
"""One repository path component, as the distribution spec allows (``a__b`` and ``a--b`` too)."""

_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""The OCI distribution spec's tag grammar (at most 128 characters)."""

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
"""Only sha256 digests: what blobfs writes and every registry accepts."""

_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
)

_MAX_NAME = 255
"""distribution's limit on the repository name (NameTotalLengthMax)."""


def split_host_port(registry: str) -> tuple[str, int | None]:
    """``"[::1]:5000"`` -> ``("::1", 5000)``; ``"example.com"`` -> ``("example.com", None)``.

    Raises ValueError for a malformed host or port.
    """
    if registry.startswith("["):
        end = registry.find("]")
        if end < 0:
            raise ValueError("unclosed '[' in IPv6 host")
        host, rest = registry[1:end], registry[end + 1 :]
        ipaddress.IPv6Address(host)  # raises ValueError
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("unexpected text after ']'")
        port_text = rest[1:]
    else:
        host, sep, port_text = registry.partition(":")
        if not sep:
            port_text = ""
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a valid host name")
        if not sep:
            return host, None
    if not port_text.isdecimal() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def is_loopback(registry: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``, with or without a port."""
    try:
        host, _ = split_host_port(registry)
    except ValueError:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scheme_for(
    ref: Reference | str, insecure_hosts: Collection[str] = ()
) -> Literal["http", "https"]:
    """The scheme to talk to a registry with: ``http`` only for loopback or insecure hosts.

    ``insecure_hosts`` may name ``host:port`` or just ``host`` (then every port of it).
    """
    registry = ref.registry if isinstance(ref, Reference) else ref
    if is_loopback(registry) or registry in insecure_hosts:
        return "http"
    try:
        host, _ = split_host_port(registry)
    except ValueError:
        return "https"
    return "http" if host in insecure_hosts else "https"


def _check_registry(text: str, registry: str) -> None:
    try:
        split_host_port(registry)
    except ValueError as e:
        raise InvalidReference(text, f"bad registry host {registry!r}: {e}") from None


def _check_repository(text: str, repository: str) -> None:
    if not repository:
        raise InvalidReference(text, "missing repository name after the registry host")
    if len(repository) > _MAX_NAME:
        raise InvalidReference(text, f"repository name is longer than {_MAX_NAME} characters")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise InvalidReference(
                text,
                f"repository component {component!r} must be lowercase letters and digits, "
                "separated by '.', '_', '__' or '-'",
            )


def _check_tag(text: str, tag: str) -> None:
    if not _TAG.fullmatch(tag):
        raise InvalidReference(
            text,
            f"tag {tag!r} must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
        )


def _check_digest(text: str, digest: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise InvalidReference(text, f"digest {digest!r} is not sha256: and 64 lowercase hex")


@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed registry reference. Immutable; validated on construction.

    ``tag`` and ``digest`` may both be set (``repo:tag@sha256:...``: the digest wins when
    resolving), or both be None for a repository-level reference (listing tags).
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        text = str(self)
        _check_registry(text, self.registry)
        _check_repository(text, self.repository)
        if self.tag is not None:
            _check_tag(text, self.tag)
        if self.digest is not None:
            _check_digest(text, self.digest)

    @classmethod
    def parse(cls, text: str, *, default_tag: str | None = None) -> Reference:
        """Parse ``host[:port]/repo[/more]`` with ``:tag``, ``@sha256:<hex>`` or both.

        Without tag and digest the reference gets ``default_tag``; when that is None too the text
        is rejected (say ``:latest`` or a digest). Raises :class:`InvalidReference` naming the
        problem.
        """
        if not text or text != text.strip() or any(c.isspace() for c in text):
            raise InvalidReference(text, "empty or contains whitespace")
        if "://" in text:
            raise InvalidReference(text, "no URL scheme allowed: write host[:port]/repository")
        name, at, digest = text.partition("@")
        if at:
            _check_digest(text, digest)
        registry, slash, rest = name.partition("/")
        if not slash:
            raise InvalidReference(
                text, "missing registry host: write host[:port]/repository[:tag]"
            )
        _check_registry(text, registry)
        if not ("." in registry or ":" in registry or registry.lower() == "localhost"):
            raise InvalidReference(
                text,
                f"{registry!r} is not a registry host (needs a dot, a port, or 'localhost'); "
                "blobfs does not default to docker.io",
            )
        repository, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if colon:
            _check_tag(text, tag)
        _check_repository(text, repository)
        tag_or_none: str | None = tag if colon else None
        digest_or_none = digest if at else None
        if tag_or_none is None and digest_or_none is None:
            if default_tag is None:
                raise InvalidReference(text, "no tag or digest (add :tag or @sha256:...)")
            tag_or_none = default_tag
        return cls(registry, repository, tag_or_none, digest_or_none)

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def target(self) -> str:
        """What to ask ``/manifests/`` for: the digest if known, else the tag."""
        target = self.digest or self.tag
        if target is None:
            raise InvalidReference(str(self), "no tag or digest to resolve")
        return target

    @property
    def repository_ref(self) -> Reference:
        """The same repository without tag and digest."""
        return Reference(self.registry, self.repository)

    def with_digest(self, digest: str) -> Reference:
        """A copy pinned to ``digest`` (the tag is kept for display)."""
        return dataclasses.replace(self, digest=digest)

    def with_tag(self, tag: str) -> Reference:
        """A copy naming ``tag`` and no digest."""
        return dataclasses.replace(self, tag=tag, digest=None)

    def api_base(self, plain_http: bool = False) -> str:
        """``http(s)://host[:port]/v2/<repository>`` (no trailing slash)."""
        scheme = "http" if plain_http else "https"
        return f"{scheme}://{self.registry}/v2/{self.repository}"
