"""Benchmarks of reads over HTTP (part of ``make bench``; see ``tests/bench.py``).

The archives are served by ``tests/_servers.py``. Transfer counts use a server thread in this
process (its statistics are exact); throughput uses a server in a child process, so the server
does not compete with the reader for this interpreter's GIL.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from blobfs.core import Archive, Compression, Index, create_blob
from blobfs.core.cache.disk import BlockCache, DiskCache
from blobfs.core.http import HttpSource
from tests._servers import serve_blobs

Row = tuple[str, str, str]
RUNS = 3


def _archive(base: Path, name: str, build: Callable[[Path], None]) -> Path:
    out = base / name
    if (out / "index.blob").exists():
        return out
    src = base / (name + "-src")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    build(src)
    tmp = base / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    create_blob(src, tmp, compression=Compression.NONE).close()
    shutil.rmtree(src)
    tmp.rename(out)
    return out


def _many_64k(src: Path) -> None:
    """1 GiB of 64 KiB files: 16,384 files in 64 directories."""
    block = os.urandom(1 << 16)
    for i in range(16384):
        d = src / f"d{i // 256:02d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.bin").write_bytes(block[i % 64 :] + block[: i % 64])


def _small_dir(src: Path) -> None:
    """A directory of 1,000 files of 1 KiB, next to a 16 MiB neighbour."""
    d = src / "small"
    d.mkdir()
    for i in range(1000):
        (d / f"f{i:04d}.txt").write_bytes(os.urandom(1024))
    (src / "big.bin").write_bytes(os.urandom(16 << 20))


def _one_big(size: int) -> Callable[[Path], None]:
    def build(src: Path) -> None:
        # Every MiB distinct: identical chunks would be served by the content cache after the
        # first one, and the "cold" figure would measure the cache.
        with open(src / "big.bin", "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))

    return build


@contextmanager
def _child_server(directory: Path) -> Iterator[str]:
    code = (
        "import sys, time\n"
        "from pathlib import Path\nfrom tests._servers import serve_blobs\n"
        "with serve_blobs(directory=Path(sys.argv[1])) as s:\n"
        "    print(s.url(''), flush=True)\n"
        "    sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip().rstrip("/")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _open(base_url: str, cache_root: Path | None) -> Archive:
    index_src = HttpSource(base_url + "/index.blob")
    index = Index(index_src.read_at(0, index_src.size))
    index_src.close()
    data = HttpSource(
        base_url + "/data.blob", size=index.data_size, source_id="sha256:" + index.data_hash.hex()
    )
    if cache_root is None:
        return Archive(index, data)
    return Archive(
        index,
        data,
        cache=DiskCache(cache_root / "content", max_bytes=4 << 30),
        block_cache=BlockCache(cache_root / "blocks"),
    )


def transfer_rows(base: Path) -> list[Row]:
    rows: list[Row] = []
    arch = _archive(base, "http-many-64k", _many_64k)
    small = _archive(base, "http-small-dir", _small_dir)
    with serve_blobs(directory=arch) as srv, tempfile.TemporaryDirectory(dir=base) as cache:
        ar = _open(srv.url("").rstrip("/"), Path(cache))
        before = srv.stats.bytes_sent_for("data.blob")
        data = ar.read_file("d31/f08000.bin")
        moved = srv.stats.bytes_sent_for("data.blob") - before
        assert len(data) == 65536
        ar.close()
        rows.append(
            (
                "one 64 KiB file of a 1 GiB archive",
                f"{moved / 1024:.0f} KiB of data blob",
                "<= 64 KiB + one block (128 KiB)",
            )
        )
    with serve_blobs(directory=small) as srv, tempfile.TemporaryDirectory(dir=base) as cache:
        ar = _open(srv.url("").rstrip("/"), Path(cache))
        before = srv.stats.requests_for("data.blob")
        ar.prefetch("small")
        for entry in ar.walk("small"):
            ar.read_file(entry.path)
        requests = srv.stats.requests_for("data.blob") - before
        ar.close()
        rows.append(("directory of 1,000 small files, cold", f"{requests} range requests", "<= 2"))
    return rows


def _read_all(ar: Archive, path: str, piece: int = 1 << 20) -> int:
    n = 0
    with ar.open(path) as f:
        while chunk := f.read(piece):
            n += len(chunk)
    return n


def throughput_rows(base: Path, size: int) -> list[Row]:
    arch = _archive(base, f"http-big-random-{size >> 20}M", _one_big(size))
    cold: list[float] = []
    filling: list[float] = []
    warm: list[float] = []

    def timed(ar: Archive) -> float:
        t0 = time.perf_counter()
        assert _read_all(ar, "big.bin") == size
        return size / (time.perf_counter() - t0)

    with _child_server(arch) as url:
        for _ in range(RUNS):
            with _open(url, None) as ar:
                cold.append(timed(ar))
            with tempfile.TemporaryDirectory(dir=base) as cache, _open(url, Path(cache)) as ar:
                filling.append(timed(ar))
                warm.append(timed(ar))
    label = f"{size >> 20} MiB chunked file, 1 MiB reads"

    def mbs(xs: list[float]) -> str:
        return f"{statistics.median(xs) / 1e6:.0f} MB/s"

    return [
        (f"{label}, cold over HTTP, no caches", mbs(cold), ">= 400 MB/s"),
        (f"{label}, cold over HTTP, filling caches", mbs(filling), ""),
        (f"{label}, warm (content cache)", mbs(warm), ">= 1 GB/s"),
    ]


def child_stream(url: str, path: str) -> None:
    """Runs in a child: stream one file without caches, print the peak RSS in MB."""
    from tests.bench import peak_rss_mb

    ar = _open(url, None)
    _read_all(ar, path)
    ar.close()
    print(f"{peak_rss_mb():.0f}")


def memory_rows(base: Path, size: int) -> list[Row]:
    def build(src: Path) -> None:
        with open(src / "huge.bin", "wb") as f:
            f.truncate(size)  # sparse: zstd shrinks it to almost nothing

    out = base / f"http-huge-{size >> 30}G"
    if not (out / "index.blob").exists():
        src = base / "http-huge-src"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        build(src)
        tmp = base / "http-huge.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        create_blob(src, tmp, compression=Compression.ZSTD).close()
        shutil.rmtree(src)
        tmp.rename(out)
    with _child_server(out) as url:
        rss = subprocess.run(
            [sys.executable, "-m", "tests.bench", "--child-stream", url, "huge.bin"],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout.split()[-1]
    return [(f"streaming a {size >> 30} GiB file: peak RSS", f"{rss} MB", "< 200 MB")]
