"""Benchmarks of the mount (part of ``make bench``; ``python -m tests.bench --only mount``).

Everything goes through the real product: archives are pushed to a local ``docker-registry``
(started here), mounted with the ``blobfs mount`` command (detached: it returns once the mount
answers) and read with ordinary programs (``find``, ``ls -lR``, ``cat``, ``dd``). Needs root,
``/dev/fuse`` and ``docker-registry``; a missing piece is reported and the rows are skipped.

The trees are the kinds the issue's peer figures were measured on: 10,000 files / about
1.78 GB (sizes spread from 1 KiB to 1 MiB, plus a 23 KB and a 50 MB file), 100,000 small files
in 1,000 directories, and one 1 GiB file (chunked, as ``create`` makes every large file).
Content is random (incompressible), so compression plays no part.

Cold means a fresh mount with a new, empty cache directory; warm a fresh mount over the filled
cache directory with the page cache dropped (``/proc/sys/vm/drop_caches``); hot a second read
through the same mount (kernel page cache, ``keep_cache``). Medians of ``RUNS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

Row = tuple[str, str, str]
RUNS = 3
BLOBFS = [os.path.join(os.path.dirname(sys.executable), "blobfs")]
"""The installed console script, as users run it (its start-up time is part of "mount ready")."""
MiB = 1 << 20
FLOOR = "floor: a pyfuse3 fs serving the same from memory"
"""The rows of the floor file system (``tests/_floor_fs.py``), printed under each figure they
bound: what is left of the figure once everything blobfs does (fetching, verifying, caching)
is taken away."""


# ------------------------------------------------------------------------------- the trees


def _tree_10k(src: Path, scale: int) -> None:
    """``10,000 // scale`` files, ~178 KB average, 100 directories, plus the named probes."""
    rng = random.Random(10_000)
    pool = os.urandom(2 * MiB)
    n = 10_000 // scale
    for i in range(n):
        d = src / f"dir{i % 100:03d}"
        d.mkdir(exist_ok=True)
        size = rng.randint(1024, 340_000)
        at = rng.randrange(0, len(pool) - size)
        # A distinct 8-byte prefix keeps every file distinct for the content cache.
        (d / f"file{i:05d}.bin").write_bytes(i.to_bytes(8, "little") + pool[at : at + size])
    (src / "probe-23k.bin").write_bytes(os.urandom(23_000))
    (src / "probe-50m.bin").write_bytes(os.urandom(50 * MiB // scale))


def _tree_100k(src: Path, scale: int) -> None:
    n = 100_000 // scale
    for i in range(n):
        d = src / f"d{i % 1000:04d}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:06d}.txt").write_bytes(b"%d\n" % i + os.urandom(500))


def _tree_1g(src: Path, scale: int) -> None:
    with open(src / "big.bin", "wb") as f:
        for _ in range(1024 // scale):
            f.write(os.urandom(MiB))


# ------------------------------------------------------------------------------- mounting


def _drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _daemon_pid(mnt: Path) -> int | None:
    """The PID of the daemon serving ``mnt`` (its command line names the mountpoint)."""
    needle = os.fsencode(mnt)
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv and any(a.endswith(b"blobfs") or a == b"mount" for a in argv):
            return int(d.name)
    return None


def _peak_rss(pid: int) -> float:
    """The daemon's peak resident memory in bytes (``VmHWM``, which ``/proc`` gives in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return float("nan")


def _stats(mnt: Path) -> dict[str, object]:
    try:
        raw = os.getxattr(mnt, "user.blobfs.stats")
    except OSError:
        return {}
    value = json.loads(raw)
    return value if isinstance(value, dict) else {}


def _fetched(stats: dict[str, object]) -> int:
    """Bytes of data blob fetched from the network, as the mount counts them."""
    for key in ("bytes_fetched", "fetched_bytes", "fetched"):
        v = stats.get(key)
        if isinstance(v, int):
            return v
    return -1


class Mount:
    """One ``blobfs mount`` of ``source`` (a reference, or the ``--index URL --data URL``
    arguments) at a fresh mountpoint; unmounted (and waited for) on exit."""

    def __init__(self, source: str | list[str], base: Path, cache_dir: Path) -> None:
        self.source = [source] if isinstance(source, str) else source
        self.mnt = Path(tempfile.mkdtemp(prefix="mnt-", dir=base))
        self.cache_dir = cache_dir
        self.ready_s = 0.0
        self.pid: int | None = None

    def __enter__(self) -> Mount:
        t0 = time.perf_counter()
        subprocess.run(
            [
                *BLOBFS,
                "mount",
                *self.source,
                os.fspath(self.mnt),
                "-o",
                f"cache_dir={self.cache_dir}",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        try:
            os.stat(self.mnt)  # the first stat answered by the daemon
            self.ready_s = time.perf_counter() - t0
            self.pid = _daemon_pid(self.mnt)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        pid = self.pid
        subprocess.run([*BLOBFS, "umount", os.fspath(self.mnt)], check=False)
        deadline = time.monotonic() + 20
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            self.mnt.rmdir()


@contextlib.contextmanager
def _floor_mount(index: Path, base: Path) -> Iterator[Path]:
    """The tree of ``index`` mounted by the floor file system (``tests/_floor_fs.py``: the same
    paths and sizes, contents from memory, nothing verified or cached) at a fresh mountpoint;
    unmounted and reaped on exit."""
    mnt = Path(tempfile.mkdtemp(prefix="floor-", dir=base))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._floor_fs", os.fspath(index), os.fspath(mnt)],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the floor file system did not mount at {mnt}")
            time.sleep(0.02)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", "-z", os.fspath(mnt)], check=False)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _fresh_cache(base: Path) -> Path:
    """A new, empty cache directory. The previous runs' are deleted only when the benchmark
    ends (:func:`_drop_cache_dirs`): on ext4 without a journal (these machines), creating a
    file within about 30 s of many deletions scans the recently deleted inodes, which made a
    cold read right after deleting the previous run's 10,000 cached files pay several times
    the usual cost per cache entry, a cost a first mount does not pay."""
    root = base / "mount-caches"
    root.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=root))


def _drop_cache_dirs(base: Path) -> None:
    shutil.rmtree(base / "mount-caches", ignore_errors=True)
    shutil.rmtree(base / "mount-cache", ignore_errors=True)  # the layout of earlier versions


def _timed(argv: list[str], cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _read_all(path: Path) -> float:
    """Seconds to read ``path`` sequentially with ``dd bs=1M`` (what ``cat`` does, measurably)."""
    return _timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"])


@contextlib.contextmanager
def _registry(base: Path) -> Iterator[object]:
    from tests._registry import local_registry

    with local_registry(base / "registry") as reg:
        yield reg


# ------------------------------------------------------------------------------- the runs


def _mb_s(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:,.0f} MB/s"


def run(base: Path, quick: bool, step: Callable[[str], None]) -> list[Row]:
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        return [("mount benchmarks", "skipped: needs root and /dev/fuse", "")]
    if shutil.which("docker-registry") is None:
        return [("mount benchmarks", "skipped: docker-registry missing (make setup)", "")]
    _drop_cache_dirs(base)
    try:
        return _run(base, quick, step)
    finally:
        _drop_cache_dirs(base)


def _run(base: Path, quick: bool, step: Callable[[str], None]) -> list[Row]:
    from blobfs.registry import Registry
    from tests.bench_http import _archive

    scale = 10 if quick else 1
    step("building the trees (kept in the bench directory)")
    a10k = _archive(base, f"mount-10k-s{scale}", lambda p: _tree_10k(p, scale))
    a100k = _archive(base, f"mount-100k-s{scale}", lambda p: _tree_100k(p, scale))
    a1g = _archive(base, f"mount-1g-s{scale}", lambda p: _tree_1g(p, scale))
    rows: list[Row] = []
    with _registry(base) as reg:
        host = reg.host  # type: ignore[attr-defined]
        refs = {}
        step("pushing the archives to a local registry")
        with Registry() as registry:
            for name, path in (("10k", a10k), ("100k", a100k), ("1g", a1g)):
                ref = f"{host}/bench/{name}:v1"
                registry.push(ref, path)
                refs[name] = ref
        n10k, n100k = 10_000 // scale, 100_000 // scale

        step("mount ready")
        for name, n, target in (("10k", n10k, "< 0.75 s"), ("100k", n100k, "< 1.5 s")):
            times = []
            for _ in range(RUNS):
                with Mount(refs[name], base, _fresh_cache(base)) as m:
                    times.append(m.ready_s)
            rows.append((f"mount ready, {n:,} files, first mount", _s(times), target))

        step("find and ls -lR")
        finds, lsrs = [], []
        for _ in range(RUNS):
            with Mount(refs["100k"], base, _fresh_cache(base)) as m:
                finds.append(_timed(["sh", "-c", f"find {m.mnt} -type f | wc -l"]))
            with Mount(refs["100k"], base, _fresh_cache(base)) as m:
                lsrs.append(_timed(["ls", "-lR", os.fspath(m.mnt)]))
        rows.append((f"find -type f | wc -l, {n100k:,} files, cold", _s(finds), "< 0.5 s"))
        floor_finds = []
        for _ in range(RUNS):
            with _floor_mount(a100k / "index.blob", base) as mnt:
                floor_finds.append(_timed(["sh", "-c", f"find {mnt} -type f | wc -l"]))
        rows.append((f"  {FLOOR}", _s(floor_finds), ""))
        rows.append((f"ls -lR, {n100k:,} files, cold", _s(lsrs), "< 2 s"))

        step("cold read of a 23 KB file")
        rows += _small_read_rows(base, refs["10k"], "")
        step("sequential reads: 50 MB and 1 GiB, cold / warm / hot")
        rows += _sequential_rows(base, {"10k": refs["10k"], "1g": refs["1g"]}, scale, "")

        step("find | xargs cat over the 10,000-file archive, and daemon memory")
        total = sum(p.stat().st_size for p in [a10k / "data.blob"])
        times, hot_times, rss = [], [], []
        read_tree = ["sh", "-c", "find . -type f -print0 | xargs -0 cat >/dev/null"]
        for _ in range(RUNS):
            with Mount(refs["10k"], base, _fresh_cache(base)) as m:
                times.append(_timed(read_tree, cwd=m.mnt))
                if m.pid is not None:
                    rss.append(_peak_rss(m.pid))
                hot_times.append(_timed(read_tree, cwd=m.mnt))
        rows.append((f"find | xargs cat, {n10k:,} files, cold", _rate(total, times), ">= 400 MB/s"))
        rows.append(
            ("  the same, hot (page cache: FUSE open/release only)", _rate(total, hot_times), "")
        )
        floor_times, floor_hot = [], []
        for _ in range(RUNS):
            with _floor_mount(a10k / "index.blob", base) as mnt:
                floor_times.append(_timed(read_tree, cwd=mnt))
                floor_hot.append(_timed(read_tree, cwd=mnt))
        rows.append((f"  {FLOOR}, first pass", _rate(total, floor_times), ""))
        rows.append((f"  {FLOOR}, hot", _rate(total, floor_hot), ""))
        index_mb = (a10k / "index.blob").stat().st_size / 1e6
        peak = statistics.median(rss) if rss else float("nan")
        rows.append(
            (
                "daemon peak RSS during the full read",
                f"{peak / 1e6:.1f} MB ({peak / MiB:.1f} MiB)",
                f"< {100 + 1.5 * index_mb:.1f} MB",
            )
        )

    # The targets hold "over a local registry or range server": the same reads with the
    # archive's two blobs behind a plain HTTP/1.1 range server (tests/_servers.py, sendfile)
    # and mounted with --index URL --data URL. The registry costs ~5 ms and ~1.5 ns of CPU per
    # byte of a range request on these two cores; this server much less.
    step("the same reads over a plain HTTP range server (--index/--data URLs)")
    from tests._servers import serve_blobs

    with serve_blobs(directory=base) as srv:
        urls = {
            name: [
                "--index",
                srv.url(f"{a.name}/index.blob"),
                "--data",
                srv.url(f"{a.name}/data.blob"),
            ]
            for name, a in (("10k", a10k), ("1g", a1g))
        }
        rows += _small_read_rows(base, urls["10k"], " (range server)")
        rows += _sequential_rows(base, urls, scale, " (range server)", hot=False)
    return rows


def _small_read_rows(base: Path, source: str | list[str], where: str) -> list[Row]:
    """The cold read of the 23 KB file right after mounting ``source``, and what it fetched."""
    times, fetched = [], []
    for _ in range(RUNS):
        with Mount(source, base, _fresh_cache(base)) as m:
            t0 = time.perf_counter()
            data = (m.mnt / "probe-23k.bin").read_bytes()
            times.append(time.perf_counter() - t0)
            fetched.append(_fetched(_stats(m.mnt)))
            assert len(data) == 23_000
    return [
        (f"cold read, 23 KB file, right after mount{where}", _ms(times), "< 12 ms"),
        ("  bytes fetched for it", f"{statistics.median(fetched):,.0f} B", "<= 46,000"),
    ]


def _sequential_rows(
    base: Path, sources: Mapping[str, str | list[str]], scale: int, where: str, *, hot: bool = True
) -> list[Row]:
    """``cat`` of the 50 MB file (of the 10k archive) and of the 1 GiB file: cold (new cache),
    hot (the same mount again), warm (a new mount over the filled cache, page cache dropped)."""
    rows: list[Row] = []
    size50 = 50 * MiB // scale
    size1g = 1024 * MiB // scale
    for label, source, rel, size, target in (
        (f"{size50 / 1e6:.0f} MB file", sources["10k"], "probe-50m.bin", size50, ">= 500 MB/s"),
        (f"{size1g >> 20} MiB chunked file", sources["1g"], "big.bin", size1g, ">= 400 MB/s"),
    ):
        cold, warm, hots = [], [], []
        for _ in range(RUNS):
            cache = _fresh_cache(base)
            with Mount(source, base, cache) as m:
                cold.append(_read_all(m.mnt / rel))
                hots.append(_read_all(m.mnt / rel))
            _drop_caches()
            with Mount(source, base, cache) as m:
                warm.append(_read_all(m.mnt / rel))
        rows.append((f"cat {label}, cold{where}", _rate(size, cold), target))
        rows.append((f"cat {label}, warm (disk cache){where}", _rate(size, warm), ">= 1 GB/s"))
        if hot:
            rows.append((f"cat {label}, hot (page cache){where}", _rate(size, hots), ">= 2 GB/s"))
    return rows


def _s(times: list[float]) -> str:
    return f"{statistics.median(times):.3f} s"


def _ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:.1f} ms"


def _rate(size: int, times: list[float]) -> str:
    return _mb_s(size, statistics.median(times))


def main() -> int:
    from tests.bench import bench_dir, table

    quick = "--quick" in sys.argv
    rows: list[Row] = [("benchmark", "median of 3", "target")]
    rows += run(bench_dir(), quick, lambda s: print(f"... {s}", file=sys.stderr, flush=True))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
