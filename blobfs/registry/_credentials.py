"""Registry credentials: passed explicitly, from containers ``auth.json`` or the docker config.

Resolution order for a registry host and repository (first source with a hit wins):

1. credentials passed to :class:`CredentialStore` explicitly;
2. ``$REGISTRY_AUTH_FILE`` (containers ``auth.json``: ``auths``);
3. the docker config (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``):
   ``credHelpers[host]``, then an ``auths`` entry carrying ``auth``/``username``/
   ``identitytoken``, then ``credsStore`` (docker itself ignores ``auths`` contents once a
   ``credsStore`` is set; here a concrete entry in ``auths`` still wins, so a config written by
   ``blobfs login`` works next to a desktop credential store).

Keys, as containers-auth.json(5) has them (and containers/image applies to the docker config
too): a key is a registry (``quay.io``) or a namespace or repository in it (``quay.io/org``,
``quay.io/org/app``). For ``quay.io/org/app/sub`` the keys ``quay.io/org/app/sub``,
``quay.io/org/app``, ``quay.io/org`` and ``quay.io`` are tried in that order: the most specific
entry holding credentials wins (an empty entry is passed over). Namespace keys match exactly;
registry keys also match in docker's looser forms (with ``https://``/``http://`` and a path,
such as Docker Hub's ``https://index.docker.io/v1/``). ``index.docker.io``,
``registry-1.docker.io`` and ``docker.io`` are one registry. Credential helpers are per
registry (``credHelpers`` keys are hosts), as in docker.

Secrets never appear in a message or a log line; :class:`Credentials` hides them from ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError

__all__ = ["CredentialStore", "Credentials", "normalize_host"]

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 30.0
"""Seconds a ``docker-credential-*`` helper may take; desktop keychains can prompt the user."""

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_DOCKER_HUB_HELPER_KEY = "https://index.docker.io/v1/"
"""The server URL docker hands credential helpers for Docker Hub."""

_TOKEN_USERNAME = "<token>"
"""A helper answering this username returns an identity (refresh) token as its secret."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password, or an identity (refresh) token for the Bearer token flow.

    ``password`` and ``identity_token`` are left out of ``repr``.
    """

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)

    @property
    def has_password(self) -> bool:
        return bool(self.username or self.password)


def normalize_host(key: str) -> str:
    """A registry key as the host to match on: no scheme, no path, lowercase, hub aliases merged."""
    host = key.strip()
    for prefix in ("https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix) :]
            break
    host = host.split("/", 1)[0].lower()
    return _DOCKER_HUB if host in _DOCKER_HUB_ALIASES else host


def _normalize_key(key: str) -> str:
    """An ``auths`` key as ``host[/namespace...]``: a key with a scheme is a URL of the registry
    (docker's legacy form, ``https://index.docker.io/v1/``) and names the host only; the host
    part is lower-cased and Docker Hub's aliases merged; a namespace path is kept as it is."""
    text = key.strip()
    for prefix in ("https://", "http://"):
        if text.lower().startswith(prefix):
            return normalize_host(text)
    host, sep, path = text.partition("/")
    host = normalize_host(host)
    path = path.strip("/")
    return f"{host}/{path}" if sep and path else host


def _candidate_keys(host: str, repository: str | None) -> list[str]:
    """``host/a/b/c``, ``host/a/b``, ``host/a``, ``host``: most specific first."""
    keys = [host]
    if repository:
        parts = repository.strip("/").split("/")
        keys = [f"{host}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)] + keys
    return keys


def _decode_entry(entry: Mapping[str, Any], host: str, path: Path) -> Credentials | None:
    """One ``auths`` value -> Credentials, or None when it holds nothing usable."""
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    auth = entry.get("auth")
    if auth:
        try:
            decoded = base64.b64decode(str(auth), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(host, f"the 'auth' value for it in {path} is not base64") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise AuthError(host, f"the 'auth' value for it in {path} is not user:password")
    token = entry.get("identitytoken") or None
    if not (username or password or token):
        return None
    if not isinstance(username, str) or not isinstance(password, str):
        raise AuthError(host, f"username/password for it in {path} are not strings")
    return Credentials(username, password, str(token) if token else None)


def _load_json(path: Path, host: str) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(host, f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise AuthError(host, f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise AuthError(host, f"{path} is not a JSON object")
    return data


def _matches(mapping: Any, keys: list[str]) -> list[tuple[str, Any]]:
    """The entries of ``mapping`` for ``keys`` (as :func:`_candidate_keys` gives), most specific
    first: ``(key as written, value)``. Each key matches exactly, else in its normalized form
    (so ``https://host/v1/`` and ``HOST`` match ``host``)."""
    if not isinstance(mapping, dict):
        return []
    normalized: dict[str, tuple[str, Any]] = {}
    for raw_key, value in mapping.items():
        if isinstance(raw_key, str):
            normalized.setdefault(_normalize_key(raw_key), (raw_key, value))
    out = []
    for key in keys:
        if key in mapping:
            out.append((key, mapping[key]))
        elif key in normalized:
            out.append(normalized[key])
    return out


class CredentialStore:
    """Resolves credentials per registry host; see the module docstring for the order.

    Thread-safe. Answers are cached per host and repository (credential helpers are slow, and
    may prompt); :meth:`forget` drops a host's, e.g. after the registry refused them.

    ``explicit`` maps registries or namespaces (any key form of the files) to credentials.
    ``docker_config=False`` and ``auth_file=False`` switch those sources off; ``env`` replaces
    ``os.environ`` (tests).
    """

    def __init__(
        self,
        explicit: Mapping[str, Credentials] | None = None,
        *,
        docker_config: bool = True,
        auth_file: bool = True,
        env: Mapping[str, str] | None = None,
        helper_timeout: float = HELPER_TIMEOUT,
    ) -> None:
        self._explicit = {_normalize_key(k): v for k, v in (explicit or {}).items()}
        self._docker_config = docker_config
        self._auth_file = auth_file
        self._env = env
        self._helper_timeout = helper_timeout
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], Credentials | None] = {}

    @property
    def _environ(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    def docker_config_path(self) -> Path:
        """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``."""
        env = self._environ
        if env.get("DOCKER_CONFIG"):
            return Path(env["DOCKER_CONFIG"]) / "config.json"
        home = env.get("HOME")
        return (Path(home) if home else Path.home()) / ".docker" / "config.json"

    def get(self, registry: str, repository: str | None = None) -> Credentials | None:
        """Credentials for ``repository`` (None: the registry as a whole) on ``registry``
        (``host[:port]``), or None for anonymous access.

        Raises :class:`AuthError` for an unreadable config or a failing credential helper.
        """
        host = normalize_host(registry)
        cache_key = (host, (repository or "").strip("/"))
        with self._lock:
            if cache_key in self._cache:
                return self._cache[cache_key]
        creds = self._resolve(host, _candidate_keys(host, repository))
        with self._lock:
            self._cache[cache_key] = creds
        return creds

    def forget(self, registry: str) -> None:
        """Drop the cached answers for ``registry`` (every repository); the next :meth:`get`
        resolves again."""
        host = normalize_host(registry)
        with self._lock:
            for key in [k for k in self._cache if k[0] == host]:
                del self._cache[key]

    def _resolve(self, host: str, keys: list[str]) -> Credentials | None:
        for key in keys:
            if key in self._explicit:
                return self._explicit[key]
        env = self._environ
        if self._auth_file and env.get("REGISTRY_AUTH_FILE"):
            path = Path(env["REGISTRY_AUTH_FILE"])
            creds = self._from_auths(_load_json(path, host), keys, host, path)
            if creds is not None:
                return creds
        if not self._docker_config:
            return None
        path = self.docker_config_path()
        data = _load_json(path, host)
        if data is None:
            return None
        helpers = _matches(data.get("credHelpers"), [host])
        if helpers and isinstance(helpers[0][1], str) and helpers[0][1]:
            return self._run_helper(helpers[0][1], host, path, "credHelpers")
        creds = self._from_auths(data, keys, host, path)
        if creds is not None:
            return creds
        store = data.get("credsStore")
        if isinstance(store, str) and store:
            return self._run_helper(store, host, path, "credsStore")
        return None

    @staticmethod
    def _from_auths(
        data: dict[str, Any] | None, keys: list[str], host: str, path: Path
    ) -> Credentials | None:
        """The credentials of the most specific ``auths`` entry of ``data`` (read from
        ``path``) for ``keys`` that holds any (an empty entry is passed over)."""
        if data is None:
            return None
        for key, entry in _matches(data.get("auths"), keys):
            creds = _decode_entry(entry, host, path) if isinstance(entry, dict) else None
            if creds is not None:
                # The key is not secret, and says which entry won (a namespace or the registry).
                log.debug("credentials for %s from %s (entry %s)", host, path, key)
                return creds
        return None

    def _run_helper(self, name: str, host: str, config: Path, origin: str) -> Credentials | None:
        """Run ``docker-credential-<name> get`` with the server URL on stdin."""
        program = f"docker-credential-{name}"
        exe = shutil.which(program, path=self._environ.get("PATH"))
        if exe is None:
            raise AuthError(
                host,
                f"credential helper {program} (named by {origin} in {config}) is not on PATH",
            )
        server = _DOCKER_HUB_HELPER_KEY if host == _DOCKER_HUB else host
        try:
            proc = subprocess.run(
                [exe, "get"],
                input=server.encode(),
                capture_output=True,
                timeout=self._helper_timeout,
                check=False,
                env=dict(self._environ),
            )
        except subprocess.TimeoutExpired:
            raise AuthError(
                host, f"credential helper {program} did not answer in {self._helper_timeout:g} s"
            ) from None
        except OSError as e:
            raise AuthError(host, f"cannot run credential helper {program}: {e.strerror}") from None
        if proc.returncode != 0:
            # The helper protocol's "not found" answer; anything else is a failure. The helper's
            # output is not quoted: a misbehaving helper could echo a secret.
            if b"credentials not found" in (proc.stdout + proc.stderr).lower():
                return None
            raise AuthError(host, f"credential helper {program} failed (exit {proc.returncode})")
        try:
            answer = json.loads(proc.stdout)
            username = answer["Username"]
            secret = answer["Secret"]
        except (ValueError, KeyError, TypeError):
            raise AuthError(host, f"credential helper {program} gave a malformed answer") from None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise AuthError(host, f"credential helper {program} gave a malformed answer")
        log.debug("credentials for %s from credential helper %s", host, program)
        if username == _TOKEN_USERNAME:
            return Credentials(identity_token=secret)
        return Credentials(username, secret)
