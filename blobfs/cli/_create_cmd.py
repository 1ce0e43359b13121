"""``blobfs create SRC DEST``: archive a directory tree into ``DEST/index.blob`` + ``data.blob``.

Both blobs are written to temporary names in DEST and renamed into place only when ``create``
succeeded, so a failed or interrupted run never leaves a half-written archive (nor clobbers the
previous one). DEST may not lie inside SRC: the archive would try to contain itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

from ..core import ChangeDetection, Compression, CreateProgress, CreateResult, create
from ._common import Ctx, usage_error
from ._output import CliError, human_size
from ._progress import ProgressBar

__all__ = ["cmd_create"]


def _check_name(args: argparse.Namespace, option: str, name: str) -> None:
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        usage_error(args, f"{option} must be a plain file name, not {name!r}")


def cmd_create(args: argparse.Namespace, ctx: Ctx) -> int:
    src = Path(args.src)
    dest = Path(args.dest)
    index_name: str = args.index_name
    data_name: str = args.data_name
    _check_name(args, "--index-name", index_name)
    _check_name(args, "--data-name", data_name)
    if index_name == data_name:
        usage_error(args, "--index-name and --data-name must differ")
    if not src.exists():
        raise CliError(f"{src}: no such directory")
    if not src.is_dir():
        raise CliError(f"{src}: not a directory")
    if dest.exists() and not dest.is_dir():
        raise CliError(f"{dest}: exists and is not a directory")
    real_src, real_dest = src.resolve(), dest.resolve()
    if real_dest == real_src or real_src in real_dest.parents:
        raise CliError(f"{dest}: the destination is inside the source tree {src}")
    index_path, data_path = dest / index_name, dest / data_name
    if not args.force:
        for p in (index_path, data_path):
            if p.exists() or p.is_symlink():
                raise CliError(f"{p}: already exists (use -f/--force to replace the archive)")

    compression = Compression.ZSTD if args.compression == "zstd" else Compression.NONE
    options: dict[str, Any] = {}
    if args.no_skip_compressed:
        options["skip_compression"] = ()
    if args.chunk_size is not None:
        options["chunk_size"] = args.chunk_size
    if args.zstd_level is not None:
        options["zstd_level"] = args.zstd_level

    dest.mkdir(parents=True, exist_ok=True)
    tag = secrets.token_hex(4)
    tmp_index = dest / f".{index_name}.blobfs-{tag}"
    tmp_data = dest / f".{data_name}.blobfs-{tag}"
    out = ctx.out
    try:
        with (
            ProgressBar(0, "archiving", quiet=out.quiet) as bar,
            open(tmp_index, "xb") as fi,
            open(tmp_data, "xb") as fd,
        ):

            def progress(p: CreateProgress) -> None:
                bar.update(p.bytes_done, label=p.path or p.stage, total=p.bytes_total)

            result: CreateResult = create(
                src,
                fi,
                fd,
                compression=compression,
                change_detection=ChangeDetection.STRICT if args.strict else ChangeDetection.NONE,
                max_files=args.max_files or -1,  # CLI: 0 = no limit; core: negative
                progress=progress,
                **options,
            )
            # Durable before visible, as create_blob: a crash never leaves a renamed but
            # empty blob. Data first, index last: the index is the commit point.
            fd.flush()
            os.fsync(fd.fileno())
            fi.flush()
            os.fsync(fi.fileno())
        os.replace(tmp_data, data_path)
        os.replace(tmp_index, index_path)
    except BaseException:
        for tmp in (tmp_index, tmp_data):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise

    skipped = [{"path": s.path, "reason": s.reason} for s in result.skipped]
    digest = "sha256:" + result.data_hash.hex()
    if out.json:
        out.emit_json(
            {
                "archive": str(dest),
                "index": str(index_path),
                "data": str(data_path),
                "file_count": result.file_count,
                "data_size": result.data_size,
                "index_size": result.index_size,
                "data_digest": digest,
                "skipped": skipped,
            }
        )
        return 0
    for s in skipped:
        out.warn(f"skipped {s['path']}: {s['reason']}")
    out.info(f"Created {dest} ({index_name} + {data_name})")
    out.info(f"Files:       {result.file_count}")
    out.info(f"Data size:   {human_size(result.data_size)} ({result.data_size} bytes)")
    out.info(f"Index size:  {human_size(result.index_size)} ({result.index_size} bytes)")
    out.info(f"Data digest: {digest}")
    if skipped:
        out.info(f"Skipped:     {len(skipped)} (see warnings above)")
    return 0
