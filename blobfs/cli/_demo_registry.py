"""A throwaway loopback OCI registry for the demo: Debian's ``docker-registry`` on a free port.

It stores into a directory the caller owns, listens on ``127.0.0.1`` only, and is stopped (and
waited for) when the context exits, whatever happened inside.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RegistryUnavailable", "loopback_registry"]

START_TIMEOUT = 20.0
"""Seconds for the registry to answer ``/v2/``; it starts in well under a second."""


class RegistryUnavailable(Exception):
    """``docker-registry`` is not installed, or did not start (the message says which)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def loopback_registry(workdir: Path) -> Iterator[str]:
    """Run a registry storing under ``workdir``; yields its ``127.0.0.1:PORT``."""
    exe = shutil.which("docker-registry")
    if exe is None:
        raise RegistryUnavailable("docker-registry is not installed (run `make setup`)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = workdir / "registry.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log_path = workdir / "registry.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(f"http://127.0.0.1:{port}/v2/"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RegistryUnavailable(
                    f"docker-registry did not start: {log_path.read_text().strip()[-500:]}"
                )
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
