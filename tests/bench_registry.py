"""Benchmarks of the registry client (part of ``make bench``; ``python -m tests.bench --only
registry``).

A local ``docker-registry`` (tests/_registry.py) is started here and serves one archive of
10,000 files holding 1 GiB of random bytes (``--quick``: 1,250 files, 128 MiB), stored
uncompressed (random bytes do not compress, and skopeo then moves exactly the bytes blobfs
does). Measured, medians of :data:`RUNS`:

- **cold read**: in a fresh child process (no caches, no connection, nothing resolved), the time
  from ``Registry()`` through ``pull`` (manifest, index) to ``read_file`` of one 64 KiB file, and
  the data-blob bytes the registry sent for it, counted in the registry's access log (bytes
  written per request; the manifest and index are not counted);
- **push**: ``Registry.push`` of the local archive directory to a new repository each run (so
  every blob is uploaded), in a child process whose peak RSS is its own;
- **pull**: ``blobfs pull REF DEST`` (the installed CLI as users run it: extract every file,
  verified, with an empty cache directory, and again with ``--no-cache``) next to ``skopeo copy
  docker://REF dir:DEST`` (downloads and digest-checks the blobs, extracts nothing), in turns
  within each run so both see the same machine.

Interpreter start-up and imports are outside the cold-read figure (they are inside the pull
figures, as skopeo's own start-up is).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

Row = tuple[str, str, str]
RUNS = 3
KiB, MiB = 1 << 10, 1 << 20
PROBE_SIZE = 64 * KiB
REPO_ROOT = Path(__file__).resolve().parent.parent
BLOBFS = [os.path.join(os.path.dirname(sys.executable), "blobfs")]
"""The installed console script, as users run it."""

_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d+) (?P<bytes>\d+)'
)
"""A line of docker-registry's access log (combined format): method, path, status, bytes."""


# ------------------------------------------------------------------------------- the archive


@dataclass(frozen=True)
class Shape:
    files: int
    total: int

    @property
    def label(self) -> str:
        size = f"{self.total >> 30} GiB" if self.total >= 1 << 30 else f"{self.total >> 20} MiB"
        return f"{size}, {self.files:,} files"

    @property
    def probe(self) -> str:
        """A 64 KiB file in the middle of the archive (every fifth file is one)."""
        i = (self.files // 2) // 5 * 5
        return _path(i)


FULL = Shape(10_000, 1 << 30)
QUICK = Shape(1_250, 128 << 20)


def _path(i: int) -> str:
    return f"d{i // 100:03d}/f{i:05d}.bin"


def _sizes(shape: Shape) -> list[int]:
    """Every fifth file 64 KiB, the others 115 KiB; the last one takes the remainder so the
    files hold exactly ``shape.total`` bytes."""
    sizes = [PROBE_SIZE if i % 5 == 0 else 115 * KiB for i in range(shape.files)]
    sizes[-1] += shape.total - sum(sizes)
    assert sizes[-1] > 0
    return sizes


def archive(base: Path, shape: Shape) -> Path:
    """The benchmark archive (index.blob + data.blob), built once into ``base``."""
    from blobfs.core import Compression, create_blob

    out = base / f"registry-{shape.files}-{shape.total >> 20}M"
    if (out / "index.blob").exists():
        return out
    src = base / (out.name + "-src")
    shutil.rmtree(src, ignore_errors=True)
    for i, size in enumerate(_sizes(shape)):
        p = src / _path(i)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))
    tmp = base / (out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    create_blob(src, tmp, compression=Compression.NONE).close()
    shutil.rmtree(src)
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------- children


def _child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench", "--child-registry", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def child(args: list[str]) -> None:
    """Runs in a child process (``tests.bench --child-registry KIND ...``); prints one JSON
    line. ``read REF PATH``: cold read of one file; ``push REF DIR``: push an archive."""
    from blobfs.registry import Registry
    from tests.bench import peak_rss_mb

    kind, ref, arg = args
    if kind == "read":
        t0 = time.perf_counter()
        with Registry() as reg, reg.pull(ref) as ar:
            t1 = time.perf_counter()
            data = ar.read_file(arg)
            t2 = time.perf_counter()
        print(
            json.dumps(
                {"open_s": t1 - t0, "read_s": t2 - t1, "total_s": t2 - t0, "size": len(data)}
            )
        )
    elif kind == "push":
        t0 = time.perf_counter()
        with Registry() as reg:
            manifest = reg.push(ref, arg)
        seconds = time.perf_counter() - t0
        size = manifest.data_descriptor.size + manifest.index_descriptor.size
        print(json.dumps({"seconds": seconds, "bytes": size, "rss_mb": peak_rss_mb()}))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")


# ------------------------------------------------------------------------------- the registry


class _AccessLog:
    """Bytes the registry sent, per request, from its access log (appended as it serves)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def since_mark(self, method: str, path_part: str) -> tuple[int, int]:
        """(requests, bytes) of ``method`` requests whose path contains ``path_part`` since
        :meth:`mark`."""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            text = f.read().decode(errors="replace")
        n = total = 0
        for m in _ACCESS.finditer(text):
            if m["method"] == method and path_part in m["path"]:
                n += 1
                total += int(m["bytes"])
        return n, total


@contextmanager
def _registry(base: Path) -> Iterator[tuple[str, _AccessLog]]:
    from tests._registry import local_registry

    with (
        tempfile.TemporaryDirectory(dir=base, prefix="registry-") as tmp,
        local_registry(Path(tmp)) as reg,
    ):
        yield reg.host, _AccessLog(Path(tmp) / "registry.log")


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


# ------------------------------------------------------------------------------- benchmarks


def _cold_read_rows(log: _AccessLog, ref: str, shape: Shape, digest: str) -> list[Row]:
    runs = []
    for _ in range(RUNS):
        log.mark()
        r = _child("read", ref, shape.probe)
        assert r["size"] == PROBE_SIZE
        time.sleep(0.2)  # the access line is written after the response
        r["requests"], r["bytes"] = log.since_mark("GET", f"/blobs/{digest}")
        runs.append(r)
    label = f"cold read of one 64 KiB file ({shape.label})"
    moved = _median(runs, "bytes")
    return [
        (
            f"{label}: time",
            f"{_median(runs, 'total_s') * 1e3:.0f} ms (manifest + index "
            f"{_median(runs, 'open_s') * 1e3:.0f} ms, file {_median(runs, 'read_s') * 1e3:.0f} ms)",
            "< 100 ms",
        ),
        (
            f"{label}: data-blob traffic",
            f"{moved / KiB:.0f} KiB in {_median(runs, 'requests'):.0f} request(s) "
            f"({moved / PROBE_SIZE:.2f}x)",
            "<= 2x the file (128 KiB)",
        ),
    ]


def _push_rows(base: Path, ref: str, arch: Path, shape: Shape) -> list[Row]:
    """blobfs pushes in a child process; skopeo pushes the same artifact from a ``dir:`` copy
    (made once, untimed) as the peer. Each run starts a fresh registry, so nothing is there
    yet (skopeo would otherwise mount blobs it knows from another repository instead of
    uploading them); the two take turns going first."""
    skopeo = shutil.which("skopeo")
    runs: list[dict[str, float]] = []
    peer: list[float] = []
    with tempfile.TemporaryDirectory(dir=base, prefix="push-") as tmp:
        layout = Path(tmp) / "dir"
        if skopeo is not None:
            copy = [skopeo, "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}"]
            _timed([*copy, f"dir:{layout}"])
        for run in range(RUNS):
            with _registry(base) as (host, log):
                jobs = ["blobfs"] + (["skopeo"] if skopeo is not None else [])
                for job in jobs[run % len(jobs) :] + jobs[: run % len(jobs)]:
                    target = f"{host}/bench/{job}:v1"
                    if job == "skopeo":
                        assert skopeo is not None
                        argv = [skopeo, "copy", "--quiet", "--dest-tls-verify=false"]
                        peer.append(_timed([*argv, f"dir:{layout}", f"docker://{target}"]))
                        continue
                    log.mark()
                    runs.append(_child("push", target, str(arch)))
                    time.sleep(0.2)  # the access line is written after the response
                    patches, _ = log.since_mark("PATCH", "/blobs/uploads/")
                    assert patches > 0, "nothing was uploaded: the blobs were skipped"
    data_size = (arch / "data.blob").stat().st_size
    assert all(r["bytes"] >= data_size for r in runs)
    rate = statistics.median(r["bytes"] / r["seconds"] for r in runs)
    label = f"push of the archive ({shape.label})"
    out: list[Row] = [
        (label, f"{rate / 1e6:.0f} MB/s ({_median(runs, 'seconds'):.2f} s)", ">= 200 MB/s"),
        (f"{label}: peak RSS", f"{_median(runs, 'rss_mb'):.0f} MB", "< 200 MB"),
    ]
    if peer:
        t = statistics.median(peer)
        size = runs[0]["bytes"]
        out.append(
            (f"{label}: skopeo copy dir: -> registry", f"{size / t / 1e6:.0f} MB/s ({t:.2f} s)", "")
        )
    return out


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])}... failed: {p.stderr.strip()}")
    return seconds


def _pull_rows(base: Path, ref: str, shape: Shape) -> list[Row]:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return [("pull vs skopeo copy", "skipped: skopeo is not installed (make setup)", "")]
    times: dict[str, list[float]] = {"skopeo": [], "blobfs": [], "blobfs-nocache": []}
    order = list(times)
    for run in range(RUNS):
        for kind in order[run % len(order) :] + order[: run % len(order)]:  # each goes first once
            with tempfile.TemporaryDirectory(dir=base, prefix="pull-") as tmp:
                dest = Path(tmp) / "out"
                env = {
                    **os.environ,
                    "BLOBFS_CACHE_DIR": str(Path(tmp) / "cache"),
                    "DOCKER_CONFIG": str(Path(tmp) / "docker"),
                    "XDG_CONFIG_HOME": str(Path(tmp) / "config"),
                }
                env.pop("BLOBFS_CONFIG", None)
                if kind == "skopeo":
                    argv = [skopeo, "copy", "--quiet", "--src-tls-verify=false"]
                    argv += [f"docker://{ref}", f"dir:{dest}"]
                else:
                    argv = [*BLOBFS, "pull", ref, str(dest), "-q"]
                    argv += ["--no-cache"] if kind == "blobfs-nocache" else []
                times[kind].append(_timed(argv, env))
                if kind != "skopeo":
                    files = sum(len(fs) for _, _, fs in os.walk(dest))
                    assert files == shape.files, (kind, files)
    sk = statistics.median(times["skopeo"])
    rows: list[Row] = [
        (
            f"skopeo copy registry -> dir: ({shape.label})",
            f"{sk:.2f} s ({shape.total / sk / 1e6:.0f} MB/s)",
            "",
        )
    ]
    for kind, label in (("blobfs", "empty cache dir"), ("blobfs-nocache", "--no-cache")):
        t = statistics.median(times[kind])
        rows.append(
            (
                f"blobfs pull, extract all, verified ({label})",
                f"{t:.2f} s = {t / sk:.2f}x skopeo ({shape.total / t / 1e6:.0f} MB/s)",
                "<= 1.5x skopeo",
            )
        )
    return rows


def step(what: str) -> None:
    print(f"... {what}", file=sys.stderr, flush=True)


def rows(base: Path, quick: bool) -> list[Row]:
    if shutil.which("docker-registry") is None:
        return [("registry benchmarks", "skipped: docker-registry is not installed", "")]
    from blobfs.registry import Registry

    shape = QUICK if quick else FULL
    step(f"registry: archive of {shape.label}")
    arch = archive(base, shape)
    out: list[Row] = []
    with _registry(base) as (host, log):
        ref = f"{host}/bench/archive:v1"
        with Registry() as reg:
            manifest = reg.push(ref, arch)
        step("registry: cold read of one 64 KiB file")
        out += _cold_read_rows(log, ref, shape, manifest.data_descriptor.digest)
        step("registry: push")
        out += _push_rows(base, ref, arch, shape)
        step("registry: blobfs pull vs skopeo copy")
        out += _pull_rows(base, ref, shape)
    return out
