"""Registry references: the parsing table, round trips, and the plain-HTTP policy."""

from __future__ import annotations

import pytest

from blobfs.errors import InvalidReference, RegistryError
from blobfs.registry import Reference, is_loopback, scheme_for

D = "sha256:" + "ab" * 32

VALID = [
    ("127.0.0.1:5000/repo:v1", ("127.0.0.1:5000", "repo", "v1", None)),
    ("localhost/a/b/c:latest", ("localhost", "a/b/c", "latest", None)),
    ("localhost:5000/repo@" + D, ("localhost:5000", "repo", None, D)),
    ("ghcr.io/org/app:1.0-rc_1@" + D, ("ghcr.io", "org/app", "1.0-rc_1", D)),
    ("[::1]:5000/x.y/z__w/a-b--c:_T", ("[::1]:5000", "x.y/z__w/a-b--c", "_T", None)),
    ("registry.example.com/r:" + "t" * 128, ("registry.example.com", "r", "t" * 128, None)),
]


@pytest.mark.parametrize(("text", "parts"), VALID)
def test_valid_references_parse_and_round_trip(
    text: str, parts: tuple[str, str, str | None, str | None]
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == parts
    assert str(ref) == text
    assert Reference.parse(str(ref)) == ref


INVALID = [
    ("", "empty"),
    (" localhost/r:t", "whitespace"),
    ("https://ghcr.io/r:t", "no URL scheme"),
    ("repo:tag", "missing registry host"),
    ("library/repo:tag", "'library' is not a registry host"),
    ("ghcr.io/:t", "missing repository"),
    ("ghcr.io/Repo:t", "repository component 'Repo'"),
    ("ghcr.io/a//b:t", "repository component ''"),
    ("ghcr.io/a-:t", "repository component 'a-'"),
    ("ghcr.io/r:.t", "tag '.t'"),
    ("ghcr.io/r:" + "t" * 129, "tag"),
    ("ghcr.io/r:", "tag ''"),
    ("ghcr.io/r@sha256:abc", "digest 'sha256:abc'"),
    ("ghcr.io/r@md5:" + "ab" * 16, "digest"),
    ("ghcr.io/r@" + D.upper(), "digest"),
    ("ghcr.io:99999/r:t", "port '99999'"),
    ("ghcr.io:/r:t", "port ''"),
    ("bad_host.io/r:t", "not a valid host name"),
    ("[::1/r:t", "unclosed '['"),
    ("ghcr.io/r", "no tag or digest"),
    ("ghcr.io/" + "a" * 256 + ":t", "longer than 255"),
]


@pytest.mark.parametrize(("text", "problem"), INVALID)
def test_invalid_references_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(InvalidReference) as info:
        Reference.parse(text)
    assert problem in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RegistryError)
    assert info.value.text == text


def test_default_tag_and_helpers() -> None:
    ref = Reference.parse("localhost:5000/team/app", default_tag="latest")
    assert ref.tag == "latest"
    assert ref.target == "latest"
    pinned = ref.with_digest(D)
    assert str(pinned) == f"localhost:5000/team/app:latest@{D}"
    assert pinned.target == D
    assert str(pinned.with_tag("v2")) == "localhost:5000/team/app:v2"
    assert str(ref.repository_ref) == "localhost:5000/team/app"
    assert ref.api_base(plain_http=True) == "http://localhost:5000/v2/team/app"
    assert ref.api_base() == "https://localhost:5000/v2/team/app"
    with pytest.raises(InvalidReference, match="no tag or digest"):
        _ = ref.repository_ref.target


def test_direct_construction_is_validated() -> None:
    with pytest.raises(InvalidReference, match="component 'UP'"):
        Reference("ghcr.io", "UP", "t")
    with pytest.raises(InvalidReference, match="digest"):
        Reference("ghcr.io", "r", digest="sha256:0")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST:5000", True),
        ("127.0.0.1:5000", True),
        ("127.8.9.10", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("ghcr.io", False),
        ("localhost.example.com", False),
        ("not a host", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_scheme_for_allows_plain_http_only_for_loopback_or_insecure_hosts() -> None:
    assert scheme_for(Reference.parse("127.0.0.1:5000/r:t")) == "http"
    assert scheme_for(Reference.parse("[::1]:5000/r:t")) == "http"
    remote = Reference.parse("reg.lan:5000/r:t")
    assert scheme_for(remote) == "https"
    assert scheme_for(remote, {"reg.lan:5000"}) == "http"
    assert scheme_for(remote, ["reg.lan"]) == "http"
    assert scheme_for(remote, {"reg.lan:6000"}) == "https"
    assert scheme_for("ghcr.io") == "https"
