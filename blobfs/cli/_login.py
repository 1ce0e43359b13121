"""``blobfs login REGISTRY`` and ``blobfs logout REGISTRY``: the docker config's ``auths``.

``login`` checks the credentials against the registry's ``/v2/`` (Basic or the Bearer token
flow, through :class:`~blobfs.registry.RegistryAuth`) before anything is written, then stores
``auths[REGISTRY].auth = base64(user:password)`` in ``$DOCKER_CONFIG/config.json`` (else
``~/.docker/config.json``): other keys and entries are kept, the file is replaced atomically and
is mode ``0600`` (its directory is created ``0700``). The password comes from stdin
(``--password-stdin``) or ``-p`` (visible to other users in the process list: warned about); it
never appears in output or errors. The check honours the global ``--ca-file`` (a missing or
invalid bundle is a one-line error before the password is read). ``logout`` removes the
registry's entries (any key spelling that names the same host).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx

from ..errors import AuthError
from ..registry import (
    Credentials,
    CredentialStore,
    RegistryAuth,
    normalize_host,
    scheme_for,
    split_host_port,
)
from ._common import Ctx, usage_error
from ._output import CliError

__all__ = ["cmd_login", "cmd_logout"]

LOGIN_TIMEOUT = 30.0


def _registry_arg(args: argparse.Namespace, text: str) -> str:
    host = text.strip()
    for prefix in ("https://", "http://"):
        if host.lower().startswith(prefix):
            host = host[len(prefix) :]
    host = host.rstrip("/")
    if not host or "/" in host:
        usage_error(args, f"REGISTRY is host[:port], not {text!r}")
    try:
        split_host_port(host)
    except ValueError as e:
        raise CliError(f"{text}: not a registry host: {e}") from None
    return host


def _config_path() -> Path:
    return CredentialStore().docker_config_path()


def _load(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(text) if text.strip() else {}
    except ValueError:
        raise CliError(f"{path}: not valid JSON; not touching it") from None
    if not isinstance(doc, dict):
        raise CliError(f"{path}: not a JSON object; not touching it")
    auths = doc.get("auths")
    if auths is not None and not isinstance(auths, dict):
        raise CliError(f"{path}: 'auths' is not an object; not touching it")
    return doc


def _save(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.blobfs-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent="\t")
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _same_host_keys(auths: dict[str, Any], host: str) -> list[str]:
    want = normalize_host(host)
    return [k for k in auths if normalize_host(k) == want]


def _tls_verify(ctx: Ctx) -> ssl.SSLContext | bool:
    """What the login check verifies TLS with: a context over ``--ca-file`` when given (as
    :func:`~blobfs.cli._common.make_client` does), else the system's (True); CliError when the
    bundle cannot be read or parsed."""
    if ctx.ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=os.fspath(ctx.ca_file))
    except OSError as e:  # FileNotFoundError, ssl.SSLError (not PEM), ...
        reason = e.strerror or " ".join(str(e).split()) or type(e).__name__
        raise CliError(f"{ctx.ca_file}: --ca-file: {reason}") from None


def _check(host: str, creds: Credentials, ctx: Ctx, verify: ssl.SSLContext | bool) -> None:
    """GET /v2/ with the credentials, TLS checked with ``verify``; AuthError/CliError unless
    the registry accepts them."""
    scheme = "http" if ctx.plain_http else scheme_for(host, ctx.insecure_hosts)
    store = CredentialStore({host: creds}, docker_config=False, auth_file=False)
    url = f"{scheme}://{host}/v2/"
    try:
        with httpx.Client(auth=RegistryAuth(store), timeout=LOGIN_TIMEOUT, verify=verify) as http:
            r = http.get(url)
    except httpx.HTTPError as e:
        raise CliError(f"{host}: cannot reach the registry at {url}: {e}") from None
    if r.status_code in (401, 403):
        raise AuthError(host, "the registry refused the credentials", status=r.status_code)
    if r.status_code != 200:
        raise CliError(f"{host}: {url} answered HTTP {r.status_code}; is it an OCI registry?")


def cmd_login(args: argparse.Namespace, ctx: Ctx) -> int:
    host = _registry_arg(args, args.registry)
    username: str | None = args.username
    if not username:
        usage_error(args, "login needs -u/--username")
    if args.password_stdin and args.password is not None:
        usage_error(args, "-p/--password and --password-stdin exclude each other")
    if not args.password_stdin and args.password is None:
        usage_error(args, "give the password with --password-stdin (or -p/--password)")
    verify = _tls_verify(ctx)
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        ctx.out.warn(
            "-p/--password is visible to other users of this machine; use --password-stdin"
        )
        password = args.password
    if not password:
        raise CliError("empty password")
    _check(host, Credentials(username, password), ctx, verify)
    path = _config_path()
    doc = _load(path)
    auths: dict[str, Any] = doc.setdefault("auths", {})
    for key in _same_host_keys(auths, host):
        del auths[key]
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    auths[host] = {"auth": token}
    _save(path, doc)
    helper = (doc.get("credHelpers") or {}).get(host) or doc.get("credsStore")
    if helper:
        ctx.out.warn(f"{path} names the credential helper {helper!r}, which may take precedence")
    if ctx.out.json:
        ctx.out.emit_json(
            {"registry": host, "username": username, "config": str(path), "status": "logged_in"}
        )
    else:
        ctx.out.line("Login Succeeded")
    return 0


def cmd_logout(args: argparse.Namespace, ctx: Ctx) -> int:
    host = _registry_arg(args, args.registry)
    path = _config_path()
    doc = _load(path)
    auths: dict[str, Any] = doc.get("auths") or {}
    keys = _same_host_keys(auths, host)
    for key in keys:
        del auths[key]
    if keys:
        _save(path, doc)
    if ctx.out.json:
        ctx.out.emit_json({"registry": host, "config": str(path), "removed": bool(keys)})
        return 0
    if keys:
        ctx.out.line(f"Removed login credentials for {host}")
    else:
        ctx.out.warn(f"not logged in to {host}")
    return 0
