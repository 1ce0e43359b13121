"""Registry auth: challenge parsing, credential sources, and the flow against real registries.

The real-registry tests run docker-registry with htpasswd (Basic) auth and with token auth backed
by tests/_token_server.py, and drive plain httpx clients with :class:`RegistryAuth`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from blobfs.errors import AuthError, RegistryError
from blobfs.registry import (
    Challenge,
    Credentials,
    CredentialStore,
    RegistryAuth,
    normalize_host,
    parse_challenges,
)
from tests._registry import LocalRegistry, local_registry
from tests._token_server import TokenServer

USER, PASSWORD = "alice", "s3cret-Pa55word"

# -- challenges ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        (
            'Bearer realm="https://auth.io/token",service="reg.io",'
            'scope="repository:a/b:pull,push"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.io/token",
                        "service": "reg.io",
                        "scope": "repository:a/b:pull,push",
                    },
                )
            ],
        ),
        (
            'Bearer realm="r", error="insufficient_scope", Basic realm="x\\"y"',
            [
                Challenge("bearer", {"realm": "r", "error": "insufficient_scope"}),
                Challenge("basic", {"realm": 'x"y'}),
            ],
        ),
        (
            "Negotiate abc123==, Basic realm=plain",
            [
                Challenge("negotiate", {}),
                Challenge("basic", {"realm": "plain"}),
            ],
        ),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges([header]) == expected


# -- credential sources ---------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_credentials_hide_secrets_from_repr() -> None:
    creds = Credentials("bob", "hunter2", identity_token="tok-xyz")
    assert "hunter2" not in repr(creds)
    assert "tok-xyz" not in repr(creds)
    assert "bob" in repr(creds)


def test_normalize_host() -> None:
    assert normalize_host("https://index.docker.io/v1/") == "docker.io"
    assert normalize_host("registry-1.docker.io") == "docker.io"
    assert normalize_host("http://127.0.0.1:5000/") == "127.0.0.1:5000"
    assert normalize_host("GHCR.io") == "ghcr.io"


def test_docker_config_auths(tmp_path: Path) -> None:
    _write_json(
        tmp_path / "docker" / "config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"auth": _b64("hub:hubpw")},
                "http://127.0.0.1:5000": {"auth": _b64("me:pw:with:colons")},
                "ghcr.io": {"username": "u", "password": "p"},
                "idp.example.com": {"auth": _b64("x:"), "identitytoken": "refresh-1"},
                "empty.example.com": {},
            }
        },
    )
    store = CredentialStore(env={"DOCKER_CONFIG": str(tmp_path / "docker")})
    assert store.get("docker.io") == Credentials("hub", "hubpw")
    assert store.get("registry-1.docker.io") == Credentials("hub", "hubpw")
    assert store.get("127.0.0.1:5000") == Credentials("me", "pw:with:colons")
    assert store.get("ghcr.io") == Credentials("u", "p")
    assert store.get("idp.example.com") == Credentials("x", "", identity_token="refresh-1")
    assert store.get("empty.example.com") is None
    assert store.get("other.example.com") is None


def test_home_docker_config_is_the_fallback(tmp_path: Path) -> None:
    _write_json(tmp_path / ".docker" / "config.json", {"auths": {"r.io": {"auth": _b64("a:b")}}})
    assert CredentialStore(env={"HOME": str(tmp_path)}).get("r.io") == Credentials("a", "b")


def test_order_explicit_then_auth_json_then_docker(tmp_path: Path) -> None:
    docker = _write_json(
        tmp_path / "d" / "config.json",
        {"auths": {"a.io": {"auth": _b64("docker:1")}, "b.io": {"auth": _b64("docker:2")}}},
    )
    authfile = _write_json(
        tmp_path / "auth.json",
        {"auths": {"a.io": {"auth": _b64("podman:1")}, "c.io": {"auth": _b64("podman:3")}}},
    )
    env = {"DOCKER_CONFIG": str(docker.parent), "REGISTRY_AUTH_FILE": str(authfile)}
    store = CredentialStore({"https://c.io": Credentials("explicit", "x")}, env=env)
    assert store.get("a.io") == Credentials("podman", "1")
    assert store.get("b.io") == Credentials("docker", "2")
    assert store.get("c.io") == Credentials("explicit", "x")
    off = CredentialStore(env=env, docker_config=False, auth_file=False)
    assert off.get("a.io") is None


def test_namespaced_keys_most_specific_wins(tmp_path: Path) -> None:
    """containers-auth.json(5): host/namespace/repo keys, the most specific one wins."""
    authfile = _write_json(
        tmp_path / "auth.json",
        {
            "auths": {
                "quay.io": {"auth": _b64("registry:0")},
                "quay.io/org": {"auth": _b64("org:1")},
                "quay.io/org/app": {"auth": _b64("app:2")},
                "quay.io/org/app/sub": {},  # holds nothing: not a match
                "https://ghcr.io/v1/": {"auth": _b64("legacy:3")},
            }
        },
    )
    docker = _write_json(
        tmp_path / "d" / "config.json",
        {
            "auths": {
                "ghcr.io/team": {"auth": _b64("docker-team:4")},
                "docker.io/library": {"auth": _b64("hub-lib:5")},
                "index.docker.io": {"auth": _b64("hub:6")},
            }
        },
    )
    env = {"REGISTRY_AUTH_FILE": str(authfile), "DOCKER_CONFIG": str(docker.parent)}
    store = CredentialStore(env=env)
    assert store.get("quay.io", "org/app") == Credentials("app", "2")
    assert store.get("quay.io", "org/app/deeper") == Credentials("app", "2")
    assert store.get("quay.io", "org/app/sub") == Credentials("app", "2")  # empty: passed over
    assert store.get("quay.io", "org/other") == Credentials("org", "1")
    assert store.get("quay.io", "orgx/app") == Credentials("registry", "0")  # no prefix match
    assert store.get("quay.io", "other") == Credentials("registry", "0")
    assert store.get("QUAY.io") == Credentials("registry", "0")
    # auth.json answers ghcr.io (a registry key, legacy URL form) before the docker config's
    # namespaced key: the first file with a match wins, as in containers/image.
    assert store.get("ghcr.io", "team/x") == Credentials("legacy", "3")
    docker_only = CredentialStore(env={"DOCKER_CONFIG": str(docker.parent)})
    assert docker_only.get("ghcr.io", "team/x") == Credentials("docker-team", "4")
    assert docker_only.get("ghcr.io", "other/x") is None
    assert docker_only.get("docker.io", "library/busybox") == Credentials("hub-lib", "5")
    assert docker_only.get("registry-1.docker.io", "someone/app") == Credentials("hub", "6")
    explicit = CredentialStore(
        {"r.io/ns": Credentials("ns", "x"), "https://r.io": Credentials("r", "y")},
        docker_config=False,
        auth_file=False,
    )
    assert explicit.get("r.io", "ns/app") == Credentials("ns", "x")
    assert explicit.get("r.io", "nsx/app") == Credentials("r", "y")
    assert explicit.get("r.io") == Credentials("r", "y")


def test_broken_config_is_a_clear_error_without_contents(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"auths": {"r.io": {"auth": "%%%not-base64-secret%%%"}}}')
    with pytest.raises(AuthError, match="not base64") as info:
        CredentialStore(env={"DOCKER_CONFIG": str(tmp_path)}).get("r.io")
    assert "secret" not in str(info.value)
    config.write_text("{nope")
    with pytest.raises(AuthError, match=r"config\.json is not valid JSON"):
        CredentialStore(env={"DOCKER_CONFIG": str(tmp_path)}).get("r.io")


HELPER = """#!/bin/sh
read -r server
echo "$server" >> "{log}"
case "$server" in
  reg.example.com) echo '{{"ServerURL":"r","Username":"helper-user","Secret":"helper-pw"}}' ;;
  tok.example.com) echo '{{"ServerURL":"t","Username":"<token>","Secret":"idt"}}' ;;
  https://index.docker.io/v1/) echo '{{"ServerURL":"x","Username":"hub","Secret":"hubpw"}}' ;;
  broken.example.com) echo "helper-pw leaked" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper_env(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-test"
    script.write_text(HELPER.format(log=tmp_path / "helper.log"))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}", "DOCKER_CONFIG": str(tmp_path)}


def test_cred_helpers_and_creds_store(tmp_path: Path, helper_env: dict[str, str]) -> None:
    _write_json(
        tmp_path / "config.json",
        {
            "credHelpers": {"reg.example.com": "test", "missing.example.com": "nosuch"},
            "credsStore": "test",
            "auths": {"plain.example.com": {"auth": _b64("p:q")}},
        },
    )
    store = CredentialStore(env=helper_env)
    assert store.get("reg.example.com") == Credentials("helper-user", "helper-pw")
    assert store.get("reg.example.com") == Credentials("helper-user", "helper-pw")  # cached
    assert store.get("tok.example.com") == Credentials(identity_token="idt")
    assert store.get("docker.io") == Credentials("hub", "hubpw")
    assert store.get("plain.example.com") == Credentials("p", "q")
    assert store.get("unknown.example.com") is None
    with pytest.raises(AuthError, match=r"docker-credential-nosuch .* is not on PATH"):
        store.get("missing.example.com")
    with pytest.raises(AuthError, match=r"failed \(exit 3\)") as info:
        store.get("broken.example.com")
    assert "helper-pw" not in str(info.value)
    calls = (tmp_path / "helper.log").read_text().split()
    assert calls.count("reg.example.com") == 1
    assert "https://index.docker.io/v1/" in calls


# -- real registries ---------------------------------------------------------------------------


def _upload(client: httpx.Client, base: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location = httpx.URL(base).join(r.headers["Location"]).copy_add_param("digest", digest)
    r = client.put(location, content=data, headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    return digest


def _store(creds: Credentials | None, host: str) -> CredentialStore:
    explicit = {host: creds} if creds is not None else {}
    return CredentialStore(explicit, docker_config=False, auth_file=False)


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("basic"), htpasswd={USER: PASSWORD}) as reg:
        yield reg


@pytest.fixture(scope="module")
def token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    with TokenServer(
        tmp_path_factory.mktemp("tokens"),
        users={USER: PASSWORD},
        refresh_tokens={"refresh-abc": USER},
    ) as ts:
        yield ts


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_server: TokenServer
) -> Iterator[LocalRegistry]:
    with local_registry(tmp_path_factory.mktemp("tokenreg"), token=token_server) as reg:
        yield reg


@pytest.fixture
def ts(token_server: TokenServer) -> Iterator[TokenServer]:
    token_server.expired = False
    token_server.expires_in = 300
    token_server.delay = 0.0
    yield token_server
    token_server.expired = False
    token_server.expires_in = 300
    token_server.delay = 0.0


def _host(reg: LocalRegistry) -> str:
    return httpx.URL(reg.base_url).netloc.decode()


def test_basic_auth(basic_registry: LocalRegistry, caplog: pytest.LogCaptureFixture) -> None:
    base, host = basic_registry.base_url, _host(basic_registry)
    caplog.set_level(logging.DEBUG)
    assert httpx.get(f"{base}/v2/basic/tags/list").status_code == 401
    with httpx.Client(auth=RegistryAuth()) as anon:
        with pytest.raises(AuthError, match="no credentials are configured") as info:
            anon.get(f"{base}/v2/basic/tags/list")
        assert info.value.status == 401
    with httpx.Client(auth=RegistryAuth(_store(Credentials(USER, PASSWORD), host))) as client:
        digest = _upload(client, base, "basic", b"hello basic")
        r = client.get(f"{base}/v2/basic/blobs/{digest}")
        assert r.status_code == 200
        assert r.content == b"hello basic"
        assert client.get(f"{base}/v2/basic/tags/list").status_code == 404  # no manifests yet
    wrong = RegistryAuth(_store(Credentials(USER, "wrong-Pa55"), host))
    with httpx.Client(auth=wrong) as client, pytest.raises(AuthError) as info:
        client.get(f"{base}/v2/basic/blobs/{digest}")
    message = str(info.value)
    assert "refused the credentials of user 'alice'" in message
    assert "wrong-Pa55" not in message
    assert isinstance(info.value, RegistryError)
    assert PASSWORD not in caplog.text
    assert "wrong-Pa55" not in caplog.text


def test_bearer_tokens_are_cached_per_scope(
    token_registry: LocalRegistry, ts: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    caplog.set_level(logging.DEBUG)
    assert httpx.get(f"{base}/v2/one/tags/list").status_code == 401
    start = ts.hits
    with httpx.Client(auth=RegistryAuth(_store(Credentials(USER, PASSWORD), host))) as client:
        digest = _upload(client, base, "one", b"hello token")
        # POST and PUT share one push token.
        assert [r.scopes for r in ts.requests[start:]] == [["repository:one:pull,push"]]
        assert ts.requests[-1].user == USER
        for _ in range(3):
            assert client.get(f"{base}/v2/one/blobs/{digest}").content == b"hello token"
        assert ts.hits == start + 2  # one pull token for three reads
        assert ts.requests[-1].scopes == ["repository:one:pull"]
        assert ts.requests[-1].params["service"] == [ts.service]
        _upload(client, base, "two", b"second repository")
        assert client.head(f"{base}/v2/two/blobs/{digest}").status_code == 404
        assert [r.scopes for r in ts.requests[start + 2 :]] == [
            ["repository:two:pull,push"],
            ["repository:two:pull"],
        ]
    assert ts.issued
    for token in ts.issued:
        assert token not in caplog.text
    assert PASSWORD not in caplog.text


def test_token_lifetime_and_refresh_on_401(token_registry: LocalRegistry, ts: TokenServer) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    now = [1000.0]
    auth = RegistryAuth(_store(Credentials(USER, PASSWORD), host), clock=lambda: now[0])
    ts.expires_in = 30
    with httpx.Client(auth=auth) as client:
        digest = _upload(client, base, "life", b"lifetime")
        start = ts.hits
        assert client.get(f"{base}/v2/life/blobs/{digest}").status_code == 200
        now[0] += 20  # within the lifetime minus the refresh margin
        assert client.get(f"{base}/v2/life/blobs/{digest}").status_code == 200
        assert ts.hits == start + 1
        now[0] += 8  # 28 s: inside the early-refresh margin of a 30 s token
        assert client.get(f"{base}/v2/life/blobs/{digest}").status_code == 200
        assert ts.hits == start + 2

        # The registry rejects a token the client still believes valid: refreshed on 401.
        ts.expires_in = 300
        ts.expired = True
        with pytest.raises(AuthError, match="refused a fresh token for repository:exp:pull"):
            client.get(f"{base}/v2/exp/blobs/{digest}")
        ts.expired = False
        before = ts.hits
        assert client.get(f"{base}/v2/exp/blobs/{digest}").status_code == 404  # authorized
        assert ts.hits == before + 1


def test_token_errors_hide_secrets(
    token_registry: LocalRegistry, ts: TokenServer, caplog: pytest.LogCaptureFixture
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    caplog.set_level(logging.DEBUG)
    bad = RegistryAuth(_store(Credentials(USER, "bad-Pa55"), host))
    with (
        httpx.Client(auth=bad) as client,
        pytest.raises(AuthError, match=r"token server .* refused user 'alice'") as info,
    ):
        client.get(f"{base}/v2/x/tags/list")
    assert info.value.status == 401
    assert "bad-Pa55" not in str(info.value)
    assert "bad-Pa55" not in caplog.text
    with (
        httpx.Client(auth=RegistryAuth()) as anon,
        pytest.raises(AuthError, match=r"fresh token for repository:x:pull \(anonymous access\)"),
    ):
        anon.get(f"{base}/v2/x/tags/list")


def test_identity_token_uses_the_refresh_grant(
    token_registry: LocalRegistry, ts: TokenServer
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    auth = RegistryAuth(_store(Credentials(identity_token="refresh-abc"), host))
    with httpx.Client(auth=auth) as client:
        _upload(client, base, "idt", b"identity token")
    last = ts.requests[-1]
    assert last.method == "POST"
    assert last.user == USER
    assert last.scopes == ["repository:idt:pull,push"]
    assert last.params["grant_type"] == ["refresh_token"]


@pytest.mark.trio
async def test_async_client_shares_the_flow(token_registry: LocalRegistry, ts: TokenServer) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    auth = RegistryAuth(_store(Credentials(USER, PASSWORD), host))
    with httpx.Client(auth=auth) as client:
        digest = _upload(client, base, "async", b"async read")
    start = ts.hits
    async with httpx.AsyncClient(auth=auth) as aclient:
        for _ in range(2):
            r = await aclient.get(f"{base}/v2/async/blobs/{digest}")
            assert r.content == b"async read"
    assert ts.hits == start + 1


def test_scope_actions_are_canonical() -> None:
    """distribution lists actions in map order; one grant must be one cache key."""
    from blobfs.registry._challenges import canonical_scope

    assert canonical_scope("repository:a/b:push,pull") == "repository:a/b:pull,push"
    assert canonical_scope("repository:a:pull,push") == "repository:a:pull,push"
    assert canonical_scope("repository:x:push registry:catalog:*") == (
        "repository:x:push registry:catalog:*"
    )
    assert canonical_scope("") == ""


def test_concurrent_threads_fetch_one_token(token_registry: LocalRegistry, ts: TokenServer) -> None:
    """Eight threads meet the same challenge at once: one token request serves them all."""
    base, host = token_registry.base_url, _host(token_registry)
    with httpx.Client(auth=RegistryAuth(_store(Credentials(USER, PASSWORD), host))) as client:
        digest = _upload(client, base, "flight", b"single flight")
    ts.delay = 0.3  # every thread is waiting while the first token is being made
    auth = RegistryAuth(_store(Credentials(USER, PASSWORD), host))
    start = ts.hits
    results: list[bytes] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def read() -> None:
        try:
            with httpx.Client(auth=auth) as c:
                barrier.wait()
                results.append(c.get(f"{base}/v2/flight/blobs/{digest}").content)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [b"single flight"] * 8
    assert ts.hits == start + 1
    assert ts.requests[-1].scopes == ["repository:flight:pull"]


@pytest.mark.trio
async def test_concurrent_tasks_fetch_one_token(
    token_registry: LocalRegistry, ts: TokenServer
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    with httpx.Client(auth=RegistryAuth(_store(Credentials(USER, PASSWORD), host))) as client:
        digest = _upload(client, base, "aflight", b"async single flight")
    ts.delay = 0.3
    auth = RegistryAuth(_store(Credentials(USER, PASSWORD), host))
    start = ts.hits
    results: list[bytes] = []
    async with httpx.AsyncClient(auth=auth) as aclient:

        async def read() -> None:
            r = await aclient.get(f"{base}/v2/aflight/blobs/{digest}")
            results.append(r.content)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(read)
    assert results == [b"async single flight"] * 8
    assert ts.hits == start + 1


def test_a_failed_token_fetch_fails_every_waiter_clearly(
    token_registry: LocalRegistry, ts: TokenServer
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    ts.delay = 0.2
    auth = RegistryAuth(_store(Credentials(USER, "wrong-Pa55"), host))
    errors: list[BaseException] = []

    def read() -> None:
        try:
            with httpx.Client(auth=auth) as c:
                c.get(f"{base}/v2/fail/tags/list")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 4
    assert all(isinstance(e, AuthError) and "refused user 'alice'" in str(e) for e in errors)
    assert all("wrong-Pa55" not in str(e) for e in errors)


def test_namespaced_credentials_in_real_requests(
    basic_registry: LocalRegistry, tmp_path: Path
) -> None:
    """The flow asks the store per repository: a namespace entry with a wrong password fails
    only the repositories under it."""
    base, host = basic_registry.base_url, _host(basic_registry)
    authfile = _write_json(
        tmp_path / "auth.json",
        {
            "auths": {
                host: {"auth": _b64(f"{USER}:{PASSWORD}")},
                f"{host}/locked": {"auth": _b64(f"{USER}:wrong-Pa55")},
            }
        },
    )
    store = CredentialStore(env={"REGISTRY_AUTH_FILE": str(authfile)}, docker_config=False)
    with httpx.Client(auth=RegistryAuth(store)) as client:
        digest = _upload(client, base, "open/app", b"namespaced")
        assert client.get(f"{base}/v2/open/app/blobs/{digest}").content == b"namespaced"
        with pytest.raises(AuthError, match="refused the credentials"):
            client.get(f"{base}/v2/locked/app/blobs/{digest}")
        assert client.get(f"{base}/v2/open/app/blobs/{digest}").status_code == 200


def test_namespaced_credentials_pick_the_token_user(
    token_registry: LocalRegistry, ts: TokenServer, tmp_path: Path
) -> None:
    base, host = token_registry.base_url, _host(token_registry)
    ts.users["bob"] = "bob-Pa55"
    authfile = _write_json(
        tmp_path / "auth.json",
        {
            "auths": {
                host: {"auth": _b64(f"{USER}:{PASSWORD}")},
                f"{host}/bobs": {"auth": _b64("bob:bob-Pa55")},
            }
        },
    )
    store = CredentialStore(env={"REGISTRY_AUTH_FILE": str(authfile)}, docker_config=False)
    with httpx.Client(auth=RegistryAuth(store)) as client:
        _upload(client, base, "alices/app", b"a")
        assert ts.requests[-1].user == USER
        _upload(client, base, "bobs/app", b"b")
        assert ts.requests[-1].user == "bob"
        assert ts.requests[-1].scopes == ["repository:bobs/app:pull,push"]
