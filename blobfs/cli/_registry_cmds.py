"""Registry commands: ``push``, ``pull``, ``tag``, and ``inspect`` of a reference.

* ``push REF DIR``: archive DIR (``-c zstd|none``) into a temporary directory and push it as REF,
  then under each ``--tag``; ``--annotation k=v`` adds manifest annotations. A DIR that is an
  archive already (``index.blob`` + ``data.blob``) is pushed as it is. On a terminal a progress
  bar follows the archiving, then each blob's upload.
* ``pull REF [DEST]``: extract every file into DEST (default ``.``, created ``0750``) with
  :func:`blobfs.core.extract`: the data blob read once, in order, in large ranges a few at a
  time, each file verified before it is renamed into place, confined to DEST (no symlink
  followed), archived mode bits and mtimes applied, existing files skipped unless ``-f``. The
  first failure stops the pull (exit 1, one line); no temporary file is left. The content and
  block caches are not used for the data (every byte is written out anyway); the registry
  caches are.
* ``tag SRC DST``: give SRC's manifest (same bytes, same digest) the tag of DST; both in one
  repository.
* ``inspect REF``: manifest digest, sizes, files, compression, created, annotations (index and
  manifest only, no data-blob traffic; through the registry caches unless ``--no-cache``). A
  local ARCHIVE goes to the local ``inspect``.

``pull`` and ``inspect`` (and ``ls``/``cat``/... of a REF) use the registry caches under the
cache root (tags within the configured TTL, manifests and indexes by digest), so ``--offline``
works for them; ``push`` and ``tag`` always ask the registry (``tag`` must not tag a digest
remembered from an older answer).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from ..core import Compression, CreateProgress, extract
from ._archive_cmds import cmd_inspect
from ._common import (
    Ctx,
    make_client,
    parse_reference,
    reference_arg,
    requested_trust,
    usage_error,
)
from ._output import CliError, human_size
from ._progress import ProgressBar

__all__ = ["cmd_inspect_any", "cmd_pull", "cmd_push", "cmd_tag"]


def _annotations(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in args.annotation:
        key, sep, value = text.partition("=")
        if not sep or not key:
            usage_error(args, f"--annotation wants KEY=VALUE, got {text!r}")
        out[key] = value
    return out


def cmd_push(args: argparse.Namespace, ctx: Ctx) -> int:
    ref = parse_reference(args.ref, allow_digest=False)
    src = Path(args.dir)
    if not src.is_dir():
        raise CliError(f"{src}: no such directory")
    annotations = _annotations(args)
    tags: list[str] = list(args.tag)
    for t in tags:
        try:
            ref.with_tag(t)
        except ValueError as e:
            raise CliError(f"--tag {t!r}: {e}") from None
    out = ctx.out
    with (
        make_client(ctx, caches=False) as client,
        ProgressBar(0, "archiving", quiet=out.quiet) as bar,
    ):

        def progress(p: CreateProgress) -> None:
            bar.update(p.bytes_done, label=p.path or p.stage, total=p.bytes_total)

        def upload_progress(digest: str, done: int, total: int) -> None:
            # One blob at a time (config, index, data): the bar follows the current one.
            bar.update(done, label=f"uploading {digest[:19]}", total=total)

        manifest = client.push(
            ref,
            src,
            compression=Compression.ZSTD if args.compression == "zstd" else Compression.NONE,
            tags=tags,
            annotations=annotations or None,
            progress=progress,
            upload_progress=upload_progress,
        )
    if out.json:
        out.emit_json(
            {"ref": str(ref), "digest": manifest.digest, "status": "pushed", "tags": tags}
        )
        return 0
    out.line(f"Pushed {ref}")
    out.info(f"Digest: {manifest.digest}")
    for t in tags:
        out.info(f"Tagged: {ref.with_tag(t)}")
    return 0


def cmd_pull(args: argparse.Namespace, ctx: Ctx) -> int:
    ref = parse_reference(args.ref)
    dest = Path(args.dest)
    if dest.exists() and not dest.is_dir():
        raise CliError(f"{dest}: exists and is not a directory")
    out = ctx.out
    policy, policies = requested_trust(args)
    # The registry alone (its manifest/index caches and policy), not the client's content and
    # block caches: a full extraction reads each byte once and writes it out, so storing it in
    # a cache too would double the disk writes for nothing. A policy refuses the manifest before
    # anything is fetched or written (PolicyViolation: exit 5).
    with (
        make_client(ctx, policy=policy) as client,
        client.registry.pull(ref, max_file_size=0) as ar,
    ):
        resolved = f"{ref.registry}/{ref.repository}@{ar.manifest.digest}"
        entries = list(ar.walk(""))
        dest.mkdir(mode=0o750, parents=True, exist_ok=True)
        with ProgressBar(sum(e.size for e in entries), "pulling", quiet=out.quiet) as bar:
            report = extract(entries, ar.source, dest, force=args.force, progress=bar.advance)
    skipped = sorted(str(dest.joinpath(*e.path.split("/"))) for e in report.skipped)
    copied, copied_bytes = len(report.written), report.written_bytes
    if out.json:
        result: dict[str, Any] = {
            "ref": str(ref),
            "resolved_ref": resolved,
            "destination": str(dest),
            "file_count": copied,
            "total_size": copied_bytes,
            "total_size_human": human_size(copied_bytes),
            "verified": True,
            "skipped": skipped,
            "policies_applied": policies,
        }
        out.emit_json(result)
        return 0
    for s in skipped:
        out.warn(f"{s}: exists, skipped (use -f to overwrite)")
    if out.quiet:
        return 0
    rows = [
        ("Pulled", str(ref)),
        ("Resolved", resolved),
        ("Destination", str(dest)),
        ("Files", str(copied)),
        ("Size", human_size(copied_bytes)),
        ("Verified", "yes"),
    ]
    if policies:
        rows.append(("Trusted", ", ".join(policies)))
    if skipped:
        rows.append(("Skipped", f"{len(skipped)} existing file(s)"))
    out.lines(f"{k + ':':<13}{v}" for k, v in rows)
    return 0


def cmd_tag(args: argparse.Namespace, ctx: Ctx) -> int:
    src = parse_reference(args.src)
    dst = parse_reference(args.dst, allow_digest=False)
    if (src.registry, src.repository) != (dst.registry, dst.repository):
        raise CliError(
            f"{dst}: tag within one repository ({src.registry}/{src.repository}); "
            "copying between repositories is not supported"
        )
    with make_client(ctx, caches=False) as client:
        digest = src.digest or client.registry.fetch(src).digest
        client.registry.tag(dst, digest)
    out = ctx.out
    if out.json:
        out.emit_json({"ref": str(dst), "source": str(src), "digest": digest, "status": "tagged"})
        return 0
    out.lines([f"Tagged: {dst}", f"Source: {src}", f"Digest: {digest}"])
    return 0


def cmd_inspect_any(args: argparse.Namespace, ctx: Ctx) -> int:
    """``inspect``: a reference goes to the registry; anything else to the local inspect."""
    positionals: list[str] = args.positionals
    if args.index is not None or args.data is not None or len(positionals) != 1:
        return cmd_inspect(args, ctx)
    ref = reference_arg(positionals[0])
    if ref is None:
        return cmd_inspect(args, ctx)
    # Here, not at the top: the trust modules (policy, cryptography) cost push and pull about
    # 130 ms of start-up for nothing.
    from ._trust_cmds import referrer_lines, referrer_listing

    with make_client(ctx) as client:  # the registry caches answer (or, --offline, alone)
        info = client.registry.inspect(ref)
        # Signatures and attestations of this very digest (listed, not verified).
        referrers = referrer_listing(client.registry, ref.with_digest(info.manifest.digest))
    index = info.index
    total = 0
    by_comp: Counter[str] = Counter({"none": 0, "zstd": 0})
    for e in index.walk():
        total += e.original_size
        by_comp["zstd" if e.compression == Compression.ZSTD else "none"] += 1
    m = info.manifest
    doc: dict[str, Any] = {
        "ref": str(ref),
        "resolved_ref": f"{ref.registry}/{ref.repository}@{m.digest}",
        "digest": m.digest,
        "media_type": m.media_type,
        "artifact_type": m.artifact_type,
        "index_digest": m.index_descriptor.digest,
        "index_size": info.index_size,
        "data_digest": m.data_descriptor.digest,
        "data_size": info.data_size,
        "file_count": info.file_count,
        "directory_count": index.dir_count,
        "total_size": total,
        "compressed_size": info.total_size,
        "compression": "zstd" if by_comp["zstd"] else "none",
        "entries": dict(by_comp),
        "created": m.created,
        "annotations": dict(m.annotations),
        **referrers,
    }
    out = ctx.out
    if out.json:
        out.emit_json(doc)
        return 0
    rows = [
        ("Reference", doc["ref"]),
        ("Resolved", doc["resolved_ref"]),
        ("Digest", m.digest),
        ("Files", str(info.file_count)),
        ("Size", f"{human_size(info.total_size)} ({human_size(total)} uncompressed)"),
        ("Compression", doc["compression"]),
        ("Created", m.created or "-"),
        ("Index", f"{m.index_descriptor.digest} ({human_size(info.index_size)})"),
        ("Data", f"{m.data_descriptor.digest} ({human_size(info.data_size)})"),
    ]
    width = max(len(k) for k, _ in rows) + 2
    out.lines(f"{k + ':':<{width}}{v}" for k, v in rows)
    out.lines(referrer_lines(referrers))
    if m.annotations:
        out.line("Annotations:")
        out.lines(f"  {k}={v}" for k, v in sorted(m.annotations.items()))
    return 0
