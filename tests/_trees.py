"""Source trees for archive tests: files with set contents, permission bits and mtimes."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_tree"]


def write_tree(
    root: Path,
    files: dict[str, bytes],
    *,
    mtime_ns: int | None = None,
    exec_every: int | None = None,
) -> Path:
    """Write ``files`` (archive path -> content) below ``root`` and return ``root``.

    With ``exec_every``, in path order every ``exec_every``-th file is ``0755``, the others
    ``0640``; with ``mtime_ns``, the n-th file has mtime ``mtime_ns + n``. Without them, modes
    and times are whatever the file system gives."""
    for n, (name, data) in enumerate(sorted(files.items())):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if exec_every is not None:
            p.chmod(0o755 if n % exec_every == 0 else 0o640)
        if mtime_ns is not None:
            os.utime(p, ns=(mtime_ns + n, mtime_ns + n))
    return root
