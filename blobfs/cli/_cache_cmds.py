"""``blobfs cache``: where the caches of remote archives live, how full they are, emptying them.

Three caches sit under the cache root (:func:`~blobfs.cli._common.cache_root`): ``content/``
(verified files and chunks, keyed by SHA-256, shared by every archive), ``blocks/`` (raw
blocks of data blobs) and the registry caches (``refs/``, ``manifests/``, ``indexes/``: tag ->
digest answers, manifests and indexes; one bound for the three). All are safe to clear at any
time, even while another blobfs process reads through them: a missing entry is a miss (but
``--offline`` has nothing left to serve from a cleared registry cache).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..core.cache.disk import BlockCache, DiskCache
from ..registry.cache import RegistryCaches
from ._common import Ctx, cache_root, open_caches
from ._output import human_size

__all__ = ["cmd_cache"]

_KINDS = ("content", "blocks", "registry")
_PATH_KINDS = ("content", "blocks")
"""``cache path`` names these; the registry caches live in the root itself."""


class _Registry:
    """The registry caches with the interface of the two disk caches (``cache_root`` given)."""

    def __init__(self, root: Path) -> None:
        self._caches = RegistryCaches(root)
        self.path = f"{root}/{{refs,manifests,indexes}}"

    def prune(self, target: int) -> int:
        return self._caches.prune(target)

    def max_bytes(self) -> int:
        return self._caches.max_bytes

    def size_bytes(self) -> int:
        return self._caches.size_bytes()

    def files(self) -> int:
        return self._caches.entry_count()


def _count_files(directory: Path) -> int:
    """Cached entries: files in the shard directories (dot names are bookkeeping and temp files)."""
    n = 0
    for _, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if not f.startswith("."))
    return n


def cmd_cache(args: argparse.Namespace, ctx: Ctx) -> int:
    action: str = args.action
    root = cache_root(ctx)
    kinds = _KINDS if args.kind in (None, "all") else (args.kind,)
    if action == "path":
        doc: dict[str, Any] = {"root": str(root), **{k: str(root / k) for k in _PATH_KINDS}}
        if ctx.out.json:
            ctx.out.emit_json(doc)
        else:
            ctx.out.lines([str(root), *(f"{k}: {root / k}" for k in _PATH_KINDS)])
        return 0
    content, blocks = open_caches(ctx)
    registry = _Registry(root)
    caches: dict[str, DiskCache | BlockCache | _Registry] = {
        "content": content,
        "blocks": blocks,
        "registry": registry,
    }
    paths = {
        "content": str(root / "content"),
        "blocks": str(root / "blocks"),
        "registry": registry.path,
    }

    def files(k: str) -> int:
        if k == "registry":
            return registry.files()
        return _count_files(root / k) if (root / k).is_dir() else 0

    try:
        if action == "clear":
            freed = {k: caches[k].prune(0) for k in kinds}
        elif action == "prune":
            freed = {}
            for k in kinds:
                target = args.max_size if args.max_size is not None else caches[k].max_bytes()
                freed[k] = caches[k].prune(target) if target else 0
        else:
            freed = {}
        report: dict[str, dict[str, Any]] = {
            k: {
                "path": paths[k],
                "size_bytes": caches[k].size_bytes(),
                "max_bytes": caches[k].max_bytes(),
                "files": files(k),
                **({"freed_bytes": freed[k]} if k in freed else {}),
            }
            for k in kinds
        }
    finally:
        content.close()
        blocks.close()
    if ctx.out.json:
        ctx.out.emit_json({"root": str(root), "caches": report})
        return 0
    for k, r in report.items():
        limit = human_size(r["max_bytes"]) if r["max_bytes"] else "unlimited"
        line = f"{k:8} {human_size(r['size_bytes']):>10} of {limit:>10}  {r['files']:>7} files"
        if "freed_bytes" in r:
            line += f"  (freed {human_size(r['freed_bytes'])})"
        ctx.out.line(f"{line}  {r['path']}")
    return 0
