"""Read-only commands on a local archive: ``ls``, ``tree``, ``cat``, ``verify``, ``inspect``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from ..core import (
    FEATURE_CHUNKS,
    Archive,
    Compression,
    DirInfo,
    Entry,
    VerifyProgress,
    normalize_path,
)
from ._common import Ctx, archive_and_rest, display_path, open_archive, requested_policy
from ._output import CliError, format_mode, format_mtime, human_size
from ._progress import MIN_PROGRESS_BYTES, ProgressBar

__all__ = ["cmd_cat", "cmd_inspect", "cmd_ls", "cmd_tree", "cmd_verify"]

log = logging.getLogger(__name__)

CAT_PIECE: Final = 1 << 20
"""``cat`` streams in 1 MiB pieces: one chunk of a chunked entry, and few syscalls per file."""


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _digest(e: Entry, short: bool) -> str:
    h = e.hash.hex()
    return "sha256:" + (h[:12] if short else h)


# ------------------------------------------------------------------------------------- ls


@dataclass(frozen=True, slots=True)
class _Row:
    name: str
    path: str
    item: Entry | DirInfo


def cmd_ls(args: argparse.Namespace, ctx: Ctx) -> int:
    spec, rest = archive_and_rest(args, args.positionals, min_rest=0, max_rest=1)
    with open_archive(spec, ctx, requested_policy(args, [spec])) as ar:
        norm = normalize_path(rest[0] if rest else "")
        st = ar.stat(norm)
        rows: list[_Row] = []
        if isinstance(st, DirInfo):
            for d in ar.listdir(norm):
                path = _join(norm, d.name)
                if d.is_dir:
                    rows.append(_Row(d.name + "/", path, DirInfo(path)))
                else:
                    assert d.entry is not None
                    rows.append(_Row(d.name, path, d.entry))
        else:
            rows.append(_Row(norm, norm, st))
    out = ctx.out
    if out.json:
        out.emit_json(
            {
                "archive": spec.label,
                "path": norm,
                "entries": [_ls_json(r) for r in rows],
            }
        )
        return 0
    if not args.long:
        out.lines(r.name for r in rows)
        return 0

    def size_of(r: _Row) -> str:
        if isinstance(r.item, DirInfo):
            return "-"
        return human_size(r.item.size) if args.human else str(r.item.size)

    sizes = [size_of(r) for r in rows]
    width = max((len(s) for s in sizes), default=0)
    for r, size in zip(rows, sizes, strict=True):
        item = r.item
        if isinstance(item, DirInfo):
            mtime = "-".ljust(16)
            digest = "-".ljust(19)
        else:
            mtime = format_mtime(item.mtime_ns)
            digest = _digest(item, short=True)
        cols = [format_mode(item.st_mode), size.rjust(width), mtime]
        if args.digest:
            cols.append(digest)
        cols.append(r.name)
        out.line("  ".join(cols))
    return 0


def _ls_json(r: _Row) -> dict[str, Any]:
    item = r.item
    if isinstance(item, DirInfo):
        return {
            "name": r.name.rstrip("/"),
            "path": r.path,
            "is_dir": True,
            "size": 0,
            "mode": format_mode(item.st_mode),
            "mtime_ns": None,
            "uid": None,
            "gid": None,
            "digest": None,
        }
    return {
        "name": item.name,
        "path": r.path,
        "is_dir": False,
        "size": item.size,
        "mode": format_mode(item.st_mode),
        "mtime_ns": item.mtime_ns,
        "uid": item.uid,
        "gid": item.gid,
        "digest": _digest(item, short=False),
    }


# ------------------------------------------------------------------------------------- tree


@dataclass(slots=True)
class _TreeCounts:
    dirs: int = 0
    files: int = 0
    lines: list[str] = field(default_factory=list)


def _children(ar: Archive, path: str, dirsfirst: bool) -> list[tuple[str, bool, Entry | None]]:
    kids = [(d.name, d.is_dir, d.entry) for d in ar.listdir(path)]
    if dirsfirst:
        kids.sort(key=lambda k: not k[1])  # stable: keeps name order within each group
    return kids


def _tree_text(
    ar: Archive, path: str, prefix: str, depth: int, level: int, dirsfirst: bool, acc: _TreeCounts
) -> None:
    kids = _children(ar, path, dirsfirst)
    for i, (name, is_dir, _entry) in enumerate(kids):
        last = i == len(kids) - 1
        acc.lines.append(prefix + ("└── " if last else "├── ") + name)
        if is_dir:
            acc.dirs += 1
            if level == 0 or depth < level:
                sub = prefix + ("    " if last else "│   ")
                _tree_text(ar, _join(path, name), sub, depth + 1, level, dirsfirst, acc)
        else:
            acc.files += 1


def _tree_json(
    ar: Archive, path: str, depth: int, level: int, dirsfirst: bool, acc: _TreeCounts
) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = []
    for name, is_dir, entry in _children(ar, path, dirsfirst):
        child = _join(path, name)
        node: dict[str, Any] = {"name": name, "path": child, "is_dir": is_dir}
        if is_dir:
            acc.dirs += 1
            if level == 0 or depth < level:
                node["children"] = _tree_json(ar, child, depth + 1, level, dirsfirst, acc)
        else:
            acc.files += 1
            assert entry is not None
            node["size"] = entry.size
        nodes.append(node)
    return nodes


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def cmd_tree(args: argparse.Namespace, ctx: Ctx) -> int:
    spec, rest = archive_and_rest(args, args.positionals, min_rest=0, max_rest=1)
    level: int = args.level
    if level < 0:
        raise CliError("-L/--level must be 0 (unlimited) or more")
    acc = _TreeCounts()
    with open_archive(spec, ctx, requested_policy(args, [spec])) as ar:
        norm = normalize_path(rest[0] if rest else "")
        st = ar.stat(norm)
        is_dir = isinstance(st, DirInfo)
        if ctx.out.json:
            root: dict[str, Any] = {
                "name": st.name if norm else "/",
                "path": norm,
                "is_dir": is_dir,
            }
            if is_dir:
                root["children"] = _tree_json(ar, norm, 1, level, args.dirsfirst, acc)
            else:
                acc.files += 1
                root["size"] = st.size
            ctx.out.emit_json(
                {
                    "archive": spec.label,
                    "path": norm,
                    "root": root,
                    "directory_count": acc.dirs,
                    "file_count": acc.files,
                }
            )
            return 0
        acc.lines.append(display_path(norm))
        if is_dir:
            _tree_text(ar, norm, "", 1, level, args.dirsfirst, acc)
        else:
            acc.files += 1
    ctx.out.lines(acc.lines)
    ctx.out.line()
    ctx.out.line(
        f"{_plural(acc.dirs, 'directory', 'directories')}, {_plural(acc.files, 'file', 'files')}"
    )
    return 0


# ------------------------------------------------------------------------------------- cat


def cmd_cat(args: argparse.Namespace, ctx: Ctx) -> int:
    spec, rest = archive_and_rest(args, args.positionals, min_rest=1, max_rest=None)
    with open_archive(spec, ctx, requested_policy(args, [spec])) as ar:
        # Every path is checked before the first byte goes out, so a typo in the third name
        # does not leave two files' worth of output in a pipe.
        paths: list[str] = []
        for p in rest:
            norm = normalize_path(p)
            st = ar.stat(norm)
            if isinstance(st, DirInfo):
                raise CliError(f"{p}: cannot cat a directory")
            paths.append(norm)
        sys.stdout.flush()
        sink = sys.stdout.buffer
        for norm in paths:
            log.debug("cat %s", norm)
            with ar.open(norm) as f:
                while piece := f.read(CAT_PIECE):
                    sink.write(piece)
        sink.flush()
    return 0


# ------------------------------------------------------------------------------------- verify


def cmd_verify(args: argparse.Namespace, ctx: Ctx) -> int:
    spec, _ = archive_and_rest(args, args.positionals, min_rest=0, max_rest=0)
    out = ctx.out
    with open_archive(spec, ctx) as ar:
        index = ar.index
        file_count = len(index)
        digest = "sha256:" + index.data_hash.hex() if index.data_hash else None
        # Drawn for the whole run (both phases) when the data blob is big enough.
        big = index.data_size > MIN_PROGRESS_BYTES
        with ProgressBar(
            index.data_size, quiet=out.quiet, enabled=None if big else False, min_total=0
        ) as bar:

            def progress(p: VerifyProgress) -> None:
                if p.phase == "data":
                    bar.update(p.done, "data blob", p.total, "bytes")
                else:
                    bar.update(p.done, "files", p.total, "files")

            report = ar.verify(progress=progress)
    failures = [{"path": path, "error": message} for path, message in report.failures]
    if out.json:
        out.emit_json(
            {
                "archive": spec.label,
                "verified": report.ok,
                "file_count": file_count,
                "data_digest": digest,
                "data_error": report.data_error,
                "failures": failures,
            }
        )
        return 0 if report.ok else 1
    if report.ok:
        tail = f", data blob {digest}" if digest else ""
        out.info(f"OK: {_plural(file_count, 'file', 'files')} verified{tail}")
        return 0
    problems = [("data blob", report.data_error)] if report.data_error else []
    problems += [(f["path"], f["error"]) for f in failures]
    for what, message in problems:
        # The core's messages usually start with the path already: say it once.
        message = message.removeprefix(f"{what}: ")
        sys.stderr.write(f"FAILED: {what}: {message}\n")
    sys.stderr.write(
        f"blobfs: error: verification failed: {_plural(len(problems), 'problem', 'problems')}"
        f" in {spec.label}\n"
    )
    return 1


# ------------------------------------------------------------------------------------- inspect

_FEATURE_NAMES: Final = {FEATURE_CHUNKS: "chunks"}


def _feature_names(features: int) -> list[str]:
    names = []
    bit = 0
    while features >> bit:
        if features >> bit & 1:
            names.append(_FEATURE_NAMES.get(1 << bit, f"bit{bit}"))
        bit += 1
    return names


def cmd_inspect(args: argparse.Namespace, ctx: Ctx) -> int:
    spec, _ = archive_and_rest(args, args.positionals, min_rest=0, max_rest=0)
    with open_archive(spec, ctx) as ar:
        index = ar.index
        total = 0
        stored = 0
        by_comp: Counter[str] = Counter({"none": 0, "zstd": 0})
        chunked = 0
        chunk_sizes: set[int] = set()
        for e in index.walk():
            total += e.original_size
            stored += e.data_size
            by_comp["zstd" if e.compression == Compression.ZSTD else "none"] += 1
            if e.chunked:
                chunked += 1
                chunk_sizes.add(e.chunk_size)
        info: dict[str, Any] = {
            "archive": spec.label,
            "index_path": str(spec.index),
            "data_path": str(spec.data),
            "file_count": len(index),
            "directory_count": index.dir_count,
            "total_size": total,
            "data_size": index.data_size if index.data_hash else ar.source.size,
            "stored_size": stored,
            "compression_ratio": round(total / stored, 3) if stored else None,
            "compression": dict(by_comp),
            "chunked_entries": chunked,
            "chunk_sizes": sorted(chunk_sizes),
            "features": index.features,
            "feature_names": _feature_names(index.features),
            "index_size": len(index.raw),
            "data_digest": "sha256:" + index.data_hash.hex() if index.data_hash else None,
            "sorted_on_wire": index.sorted_on_wire,
        }
    out = ctx.out
    if out.json:
        out.emit_json(info)
        return 0

    def size(n: int) -> str:
        return f"{human_size(n)} ({n} bytes)" if n >= 1024 else f"{n} bytes"

    ratio = info["compression_ratio"]
    feats = ", ".join(info["feature_names"]) or "none"
    sizes = ", ".join(human_size(n) for n in info["chunk_sizes"])
    rows = [
        ("Archive", spec.label),
        ("Files", str(info["file_count"])),
        ("Directories", str(info["directory_count"])),
        ("Total size", size(total)),
        ("Data size", size(info["data_size"])),
        ("Compression", f"{ratio:.2f}x" if ratio is not None else "-"),
        ("Entries", f"{by_comp['none']} uncompressed, {by_comp['zstd']} zstd"),
        ("Chunked", f"{chunked} entries" + (f" (chunk size {sizes})" if chunked else "")),
        ("Features", f"{index.features:#x} ({feats})"),
        ("Index size", size(info["index_size"])),
        ("Data digest", info["data_digest"] or "(not recorded)"),
        (
            "Entry order",
            "bytewise-sorted"
            if info["sorted_on_wire"]
            else "not bytewise-sorted (directory-walk order, as the Go reference writes)",
        ),
    ]
    width = max(len(k) for k, _ in rows) + 2
    out.lines(f"{k + ':':<{width}}{v}" for k, v in rows)
    return 0
