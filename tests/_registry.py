"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback.

Usage::

    from tests._registry import local_registry

    with local_registry(tmp_path) as reg:
        digest = reg.push_blob("repo/name", data)      # monolithic upload, returns sha256:...
        url = reg.blob_url("repo/name", digest)         # GET answers ranges

The registry listens on ``127.0.0.1`` on a free port, stores into a temporary directory, and is
stopped (and waited for) when the context exits. ``htpasswd={"user": "pass"}`` turns on Basic auth
(bcrypt htpasswd file); ``token=TokenServer(...)`` (tests/_token_server.py) turns on Bearer token
auth. ``proxy_of="http://127.0.0.1:PORT"`` runs it as a pull-through cache of that origin
(distribution's proxy mode: read-only; a Range request for a blob not cached yet is answered
200 with the whole body). ``tls=(cert_path, key_path)`` serves HTTPS with that PEM certificate
(chain) and key: ``base_url`` is then ``https://...`` and the fixture's own requests (start-up
probe, ``push_blob``) do not verify the certificate, the clients under test must.
``bind="127.0.1.1"`` listens on another loopback address (default ``127.0.0.1``), for a host
name that resolves there. ``reg.stop()`` stops the registry early (to simulate an outage);
``reg.restart()`` starts it again on the same port with the same storage; ``reg.pause()`` /
``reg.resume()`` freeze and thaw it (a hung server). ``push_blob`` is for
registries without auth. ``docker-registry`` comes from the project's
set-up (``scripts/setup.sh``); without it the fixture skips.
"""

from __future__ import annotations

import hashlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests._token_server import TokenServer

__all__ = ["LocalRegistry", "local_registry"]

_START_TIMEOUT = 20.0
"""Seconds for the registry to answer /v2/; it starts in well under a second here."""


def _free_port(bind: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


class LocalRegistry:
    def __init__(
        self, base_url: str, proc: subprocess.Popen[bytes] | None = None, *, verify: bool = True
    ) -> None:
        self.base_url = base_url
        self._http = httpx.Client(timeout=30, verify=verify)
        self._proc = proc
        self._restart_with: tuple[list[str], Any] = ([], None)

    @property
    def host(self) -> str:
        """``host:port`` of the registry, as references name it."""
        return self.base_url.split("://", 1)[1]

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def stop(self) -> None:
        """Stop the registry process now (and wait for it); idempotent."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self.resume()  # a frozen process would not act on SIGTERM
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def pause(self) -> None:
        """Freeze the registry process (SIGSTOP): connections are accepted by the kernel but
        never answered, as with a hung server. :meth:`resume` (SIGCONT) thaws it."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGSTOP)
        # The stop lands asynchronously (each thread of the Go runtime stops on its next trip
        # through the kernel): wait until /proc says the process is stopped.
        stat = Path(f"/proc/{self._proc.pid}/stat")
        deadline = time.monotonic() + _START_TIMEOUT
        while stat.read_text().rsplit(")", 1)[1].split()[0] not in ("T", "t"):
            if time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not stop on SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start the registry again after :meth:`stop`: same port, same storage, same config
        (a registry restarted under its clients); waits until it answers."""
        argv, log = self._restart_with
        self.stop()
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                if self._http.get(f"{self.base_url}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not restart (port taken?)")
            time.sleep(0.05)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` as a blob of ``repo`` (POST then one PUT); return its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = self._http.post(f"{self.base_url}/v2/{repo}/blobs/uploads/")
        r.raise_for_status()
        location = httpx.URL(self.base_url).join(r.headers["Location"])
        r = self._http.put(
            location.copy_add_param("digest", digest),
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
        return digest

    def blob_url(self, repo: str, digest: str) -> str:
        return f"{self.base_url}/v2/{repo}/blobs/{digest}"

    def close(self) -> None:
        self._http.close()


def _auth_config(
    workdir: Path, htpasswd: Mapping[str, str] | None, token: TokenServer | None
) -> str:
    if htpasswd is not None and token is not None:
        raise ValueError("choose htpasswd or token auth, not both")
    if htpasswd is not None:
        import bcrypt

        path = workdir / "registry.htpasswd"
        path.write_text(
            "".join(
                f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                for user, pw in htpasswd.items()
            )
        )
        return f"auth:\n  htpasswd:\n    realm: blobfs-test\n    path: {path}\n"
    if token is not None:
        return (
            "auth:\n  token:\n"
            f"    realm: {token.realm}\n"
            f"    service: {token.service}\n"
            f"    issuer: {token.issuer}\n"
            f"    rootcertbundle: {token.cert_path}\n"
        )
    return ""


@contextmanager
def local_registry(
    workdir: Path,
    *,
    htpasswd: Mapping[str, str] | None = None,
    token: TokenServer | None = None,
    proxy_of: str | None = None,
    tls: tuple[Path, Path] | None = None,
    bind: str = "127.0.0.1",
) -> Iterator[LocalRegistry]:
    exe = shutil.which("docker-registry")
    if exe is None:
        pytest.skip("docker-registry is not installed (run make setup)")
    port = _free_port(bind)
    storage = workdir / "registry-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {storage}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {bind}:{port}\n"
        + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls is not None else "")
        + _auth_config(workdir, htpasswd, token)
        + (f"proxy:\n  remoteurl: {proxy_of}\n" if proxy_of is not None else "")
    )
    log = open(workdir / "registry.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    base = f"{'https' if tls is not None else 'http'}://{bind}:{port}"
    reg = LocalRegistry(base, proc, verify=tls is None)
    reg._restart_with = ([exe, "serve", str(config)], log)
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                # 401 is the healthy answer of a registry with auth.
                probe = httpx.get(f"{base}/v2/", timeout=1, verify=tls is None)
                if probe.status_code in (200, 401):
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not start: {(workdir / 'registry.log').read_text()}"
                )
            time.sleep(0.05)
        yield reg
    finally:
        reg.close()
        reg.stop()
        log.close()
