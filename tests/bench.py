"""blobfs benchmarks: ``make bench`` prints a table of medians (never asserted in tests).

Each index measurement runs in a fresh child process, so its peak RSS is its own. Inputs are
generated deterministically and kept in ``$BLOBFS_BENCH_DIR`` (default: a ``blobfs-bench``
folder in the system temp dir) so repeated runs skip the slow generation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RUNS = 3


def bench_dir() -> Path:
    d = Path(os.environ.get("BLOBFS_BENCH_DIR", Path(tempfile.gettempdir()) / "blobfs-bench"))
    d.mkdir(parents=True, exist_ok=True)
    return d


# ------------------------------------------------------------------ index


def index_file(n: int) -> Path:
    """A synthetic n-entry index: ``dirNNNN/fileNNNNNNN.dat``, 1,000 files per directory."""
    path = bench_dir() / f"index-{n}.blob"
    if path.exists():
        return path
    from blobfs.core import Compression, Entry, encode_index

    digest = hashlib.sha256(b"bench").digest()
    entries = [
        Entry(
            f"dir{i // 1000:04d}/file{i:07d}.dat",
            i * 4096,
            4096,
            4096,
            digest,
            0o644,
            1000,
            1000,
            1_700_000_000_000_000_000 + i,
            Compression.NONE,
        )
        for i in range(n)
    ]
    data = encode_index(entries, data_size=n * 4096, data_hash=digest)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def peak_rss_mb() -> float:
    """This process's peak RSS. ``VmHWM`` rather than ``ru_maxrss``, which Linux carries over
    from the parent across fork and exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_index(path: str, n: int) -> None:
    """Runs in a child: open the index and time the operations; prints one JSON line."""
    from blobfs.core import Index

    data = Path(path).read_bytes()
    t0 = time.perf_counter()
    idx = Index(data)
    open_s = time.perf_counter() - t0
    rss_mb = peak_rss_mb()
    picks = [(i * 7919) % n for i in range(2000)]
    probes = [f"dir{j // 1000:04d}/file{j:07d}.dat" for j in picks]
    t0 = time.perf_counter()
    for p in probes:
        idx.lookup(p)
    lookup_us = (time.perf_counter() - t0) / len(probes) * 1e6
    d = f"dir{(n // 1000) // 2:04d}"
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        listing = idx.listdir(d)
        times.append(time.perf_counter() - t0)
    assert len(listing) == 1000
    assert all(idx.lookup(p) is not None for p in probes[:10])
    t0 = time.perf_counter()
    count = sum(1 for _ in idx.walk())
    walk_s = time.perf_counter() - t0
    assert count == n
    print(
        json.dumps(
            {
                "open_s": open_s,
                "rss_mb": rss_mb,
                "lookup_us": lookup_us,
                "listdir_ms": statistics.median(times) * 1e3,
                "walk_s": walk_s,
                "index_mb": len(data) / 1e6,
            }
        )
    )


def run_index(n: int) -> dict[str, float]:
    path = index_file(n)
    runs = []
    for _ in range(RUNS):
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench", "--child-index", str(path), str(n)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


# ------------------------------------------------------------------ create


def small_tree(root: Path, files: int, size: int) -> None:
    if root.exists():
        return
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(files):
        d = tmp / f"d{i // 500:03d}"
        d.mkdir(parents=True, exist_ok=True)
        line = f"record {i} value {i * 31 % 977} status ok\n".encode()
        (d / f"f{i:06d}.txt").write_bytes((line * (size // len(line) + 1))[:size])
    tmp.rename(root)


def large_file(root: Path, size: int) -> None:
    if root.exists():
        return
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "big.csv", "wb") as f:
        written, i = 0, 0
        while written < size:
            block = "".join(
                f"{i + k},sensor-{(i + k) % 97},{(i + k) * 0.37:.3f},ok\n" for k in range(20000)
            ).encode()
            f.write(block[: size - written])
            written += len(block[: size - written])
            i += 20000
    tmp.rename(root)


def time_create(src: Path, **options: object) -> tuple[float, int]:
    from blobfs.core import create

    durations = []
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    for _ in range(RUNS):
        with (
            tempfile.TemporaryDirectory(dir=bench_dir()) as out,
            open(Path(out) / "index", "wb") as ix,
            open(Path(out) / "data", "wb") as dx,
        ):
            t0 = time.perf_counter()
            create(src, ix, dx, **options)  # type: ignore[arg-type]
            durations.append(time.perf_counter() - t0)
    return statistics.median(durations), total


# ------------------------------------------------------------------ table


def table(rows: list[tuple[str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--child-index", nargs=2, metavar=("PATH", "N"))
    parser.add_argument("--child-stream", nargs=2, metavar=("URL", "PATH"))
    parser.add_argument("--child-registry", nargs=3, metavar=("KIND", "REF", "ARG"))
    parser.add_argument(
        "--only", choices=["index", "create", "http", "registry", "policy", "mount"]
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs")
    args = parser.parse_args(argv)
    if args.child_index:
        child_index(args.child_index[0], int(args.child_index[1]))
        return 0
    if args.child_stream:
        from tests.bench_http import child_stream

        child_stream(*args.child_stream)
        return 0
    if args.child_registry:
        from tests.bench_registry import child

        child(args.child_registry)
        return 0

    rows: list[tuple[str, str, str]] = [("benchmark", "median of 3", "target")]
    step: Callable[[str], None] = lambda s: print(f"... {s}", file=sys.stderr, flush=True)  # noqa: E731
    if args.only in (None, "index"):
        for n in (100_000,) if args.quick else (100_000, 1_000_000):
            step(f"index of {n:,} entries")
            r = run_index(n)
            million = n == 1_000_000
            limit = 1.5 * r["index_mb"] + 60
            rows += [
                (f"index {n:,}: size", f"{r['index_mb']:.1f} MB", ""),
                (
                    f"index {n:,}: open + validate",
                    f"{r['open_s']:.2f} s",
                    "< 2 s" if million else "",
                ),
                (
                    f"index {n:,}: peak RSS",
                    f"{r['rss_mb']:.0f} MB",
                    f"< {limit:.0f} MB (1.5x + 60)" if million else "",
                ),
                (
                    f"index {n:,}: lookup",
                    f"{r['lookup_us']:.1f} µs",
                    "< 20 µs" if million else "",
                ),
                (
                    f"index {n:,}: listdir 1,000 entries",
                    f"{r['listdir_ms']:.2f} ms",
                    "< 5 ms" if million else "",
                ),
                (f"index {n:,}: walk all", f"{r['walk_s']:.2f} s", "< 3 s" if million else ""),
            ]
    if args.only in (None, "create"):
        base = bench_dir()
        files = 5_000 if args.quick else 20_000
        small = base / f"tree-small-{files}"
        step(f"tree of {files:,} x 4 KiB files")
        small_tree(small, files, 4096)
        big_size = (128 if args.quick else 512) << 20
        big = base / f"tree-large-{big_size >> 20}M"
        step(f"{big_size >> 20} MiB compressible file")
        large_file(big, big_size)
        from blobfs.core import Compression

        for label, src, comp, target in (
            (f"create {files:,} x 4 KiB, zstd", small, Compression.ZSTD, ""),
            (f"create {files:,} x 4 KiB, none", small, Compression.NONE, ""),
            (f"create 1 x {big_size >> 20} MiB, zstd", big, Compression.ZSTD, ">= 150 MB/s"),
            (f"create 1 x {big_size >> 20} MiB, none", big, Compression.NONE, ""),
        ):
            step(label)
            secs, total = time_create(src, compression=comp)
            rows.append((label, f"{total / secs / 1e6:.0f} MB/s ({secs:.2f} s)", target))
    if args.only in (None, "http"):
        from tests import bench_http

        step("reads over HTTP: transfer counts")
        rows += bench_http.transfer_rows(bench_dir())
        seq_size = (256 if args.quick else 1024) << 20
        step(f"reads over HTTP: {seq_size >> 20} MiB sequential, cold and warm")
        rows += bench_http.throughput_rows(bench_dir(), seq_size)
        step("reads over HTTP: memory while streaming")
        rows += bench_http.memory_rows(bench_dir(), (1 if args.quick else 4) << 30)
    if args.only in (None, "registry"):
        from tests import bench_registry

        rows += bench_registry.rows(bench_dir(), args.quick)
    if args.only in (None, "policy"):
        from tests import bench_policy

        step("trust policies: evaluation added to a pull")
        for name, ms in bench_policy.rows():
            target = "< 50 ms" if name.startswith("+ all four") else ""
            rows.append(
                (
                    f"policy: {name.replace(' (ms)', '').replace(' (ms added)', '')}",
                    f"{ms:.1f} ms" + (" added" if "added" in name else ""),
                    target,
                )
            )
    if args.only in (None, "mount"):
        from tests import bench_mount

        rows += bench_mount.run(bench_dir(), args.quick, step)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
