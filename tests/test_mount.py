"""Real FUSE mounts: the daemon in a subprocess (tests/_mount.py), read with ordinary programs.

Every file of the Go reference archives reads back byte-identical through the mount, from a
local archive and from a real registry; find, ls, du, stat, cat, pread, mmap and many
concurrent readers see the archive; writes are refused; a tampered data blob and a dead
registry give EIO for what they concern while the mount stays up; signals, umount, mount(8) and
status behave. Needs root and /dev/fuse (skipped loudly otherwise, failed under CI).
"""

from __future__ import annotations

import errno
import hashlib
import json
import mmap
import os
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from blobfs.core import Compression, Index, create_blob
from blobfs.registry import Registry
from tests._mount import (
    BLOBFS,
    daemon_exited,
    is_mounted,
    lazy_unmount,
    mounted,
    require_fuse,
    wait_until,
)
from tests._registry import LocalRegistry, local_registry

FIXTURES = Path(__file__).parent / "fixtures" / "reference-v1"
MiB = 1 << 20


def _expected(kind: str) -> list[dict[str, Any]]:
    files: list[dict[str, Any]] = json.loads((FIXTURES / f"{kind}-expected.json").read_text())[
        "files"
    ]
    return files


def _check_tree(root: Path, files: list[dict[str, Any]]) -> None:
    """Every file under ``root`` is the expected one: content, size, mode, mtime, nothing else."""
    seen = set()
    for dirpath, _, names in os.walk(root):
        for name in names:
            seen.add(os.path.relpath(os.path.join(dirpath, name), root))
    assert seen == {f["path"] for f in files}
    for f in files:
        p = root / f["path"]
        st = os.stat(p)
        assert st.st_size == f["size"], f["path"]
        assert stat.S_IMODE(st.st_mode) == f["mode"] & 0o777, f["path"]
        assert st.st_mtime_ns == f["mtime_ns"], f["path"]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == f["sha256"], f["path"]


def _errno_of(fn: Callable[[], object]) -> int:
    """The errno ``fn()`` fails with (AssertionError when it does not fail)."""
    try:
        fn()
    except OSError as e:
        return e.errno or 0
    raise AssertionError("expected an OSError")


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


# ------------------------------------------------------------------------------ local archives


@pytest.mark.parametrize("name", ["mixed-zstd", "mixed-none", "mixed-allzstd", "wide-zstd"])
def test_reference_archives_read_back_identical(tmp_path: Path, name: str) -> None:
    with mounted([os.fspath(FIXTURES / name)], tmp_path / "mnt") as m:
        _check_tree(m.path, _expected(name.split("-")[0]))
        assert m.stats()["errors"] == 0


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, bytes]]:
    """An archive with a chunked 6 MiB file, v1 files, a directory of 300 small files."""
    src = tmp_path_factory.mktemp("src")
    rng = random.Random(1)
    files = {
        "big/chunked.bin": rng.randbytes(6 * MiB),
        "big/v1.bin": rng.randbytes(300_000),  # under the chunk size: a v1 entry
        "text/hello.txt": b"hello, world\n",
        "text/empty": b"",
        "deep/a/b/c/d.txt": b"deep\n",
    }
    for i in range(300):
        files[f"many/file{i:04d}.txt"] = f"file {i}\n".encode() * (i % 7)
    for name, data in files.items():
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    out = tmp_path_factory.mktemp("archive")
    create_blob(src, out, compression=Compression.ZSTD, chunk_size=1 * MiB).close()
    return out, files


def test_tools_see_the_archive(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, files = sample
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        mnt = os.fspath(m.path)
        found = subprocess.run(
            ["find", mnt, "-type", "f"], check=True, capture_output=True, text=True
        ).stdout.split("\n")
        assert sorted(os.path.relpath(p, mnt) for p in found if p) == sorted(files)
        dirs = subprocess.run(
            ["find", mnt, "-mindepth", "1", "-type", "d"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert len(dirs) == 7  # big, text, deep, deep/a, .../b, .../c, many
        ls = subprocess.run(["ls", "-lR", mnt], check=True, capture_output=True, text=True)
        assert "chunked.bin" in ls.stdout
        assert "file0299.txt" in ls.stdout
        assert "dr-xr-xr-x" in ls.stdout
        du = subprocess.run(["du", "-sb", mnt], check=True, capture_output=True, text=True)
        assert int(du.stdout.split()[0]) == sum(len(d) for d in files.values())
        st = subprocess.run(
            ["stat", "-c", "%s %a %h %F", f"{mnt}/big/chunked.bin", f"{mnt}/deep/a"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        assert st == [f"{6 * MiB} 644 1 regular file", "0 555 3 directory"]
        cat = subprocess.run(["cat", f"{mnt}/text/hello.txt"], check=True, capture_output=True)
        assert cat.stdout == b"hello, world\n"
        sums = subprocess.run(
            ["sha256sum", f"{mnt}/big/chunked.bin", f"{mnt}/big/v1.bin"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        assert sums[0] == hashlib.sha256(files["big/chunked.bin"]).hexdigest()
        assert sums[2] == hashlib.sha256(files["big/v1.bin"]).hexdigest()
        df = subprocess.run(["df", mnt], check=True, capture_output=True, text=True)
        assert mnt in df.stdout
        assert m.stats()["errors"] == 0


def test_pread_mmap_and_concurrent_readers(
    tmp_path: Path, sample: tuple[Path, dict[str, bytes]]
) -> None:
    archive, files = sample
    big = files["big/chunked.bin"]
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        rng = random.Random(3)
        for name in ("big/chunked.bin", "big/v1.bin", "text/hello.txt", "text/empty"):
            data = files[name]
            fd = os.open(m.path / name, os.O_RDONLY)
            try:
                for _ in range(40):
                    off = rng.randrange(0, len(data) + 10)
                    size = rng.choice([1, 7, 4095, 4097, 65537, 1_000_003])
                    assert os.pread(fd, size, off) == data[off : off + size]
                assert os.pread(fd, 10, len(data) + 1_000_000) == b""
                if data:
                    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mm:
                        assert mm[:] == data
                        assert (
                            mm[len(data) // 3 : len(data) // 3 + 99]
                            == data[len(data) // 3 : len(data) // 3 + 99]
                        )
            finally:
                os.close(fd)

        # Threads: random ranges of every file at once.
        names = sorted(files)

        def reader(seed: int) -> int:
            r = random.Random(seed)
            bad = 0
            for _ in range(30):
                name = r.choice(names)
                data = files[name]
                with open(m.path / name, "rb") as f:
                    off = r.randrange(0, len(data) + 1)
                    f.seek(off)
                    size = r.randrange(1, 300_000)
                    if f.read(size) != data[off : off + size]:
                        bad += 1
            return bad

        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(reader, range(32))) == 0

        # Processes: sha256sum of every file, eight at a time, twice over the big one.
        paths = [os.fspath(m.path / n) for n in names] + [os.fspath(m.path / "big/chunked.bin")] * 4
        out = subprocess.run(
            ["xargs", "-0", "-P", "8", "-n", "4", "sha256sum"],
            input="\0".join(paths),
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        got: dict[str, set[str]] = {}
        for line in out.splitlines():
            digest, path = line.split(None, 1)
            got.setdefault(os.path.relpath(path, m.path), set()).add(digest)
        for name in names:
            assert got[name] == {hashlib.sha256(files[name]).hexdigest()}, name
        assert hashlib.sha256(big).hexdigest() in got["big/chunked.bin"]
        assert m.stats()["errors"] == 0


def test_writes_are_refused(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, _ = sample
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        attempts = [
            lambda: os.open(m.path / "text/hello.txt", os.O_RDWR),
            lambda: os.open(m.path / "text/hello.txt", os.O_WRONLY | os.O_APPEND),
            lambda: os.open(m.path / "new.txt", os.O_WRONLY | os.O_CREAT),
            lambda: os.mkdir(m.path / "newdir"),
            lambda: os.unlink(m.path / "text/hello.txt"),
            lambda: os.rmdir(m.path / "deep/a/b/c"),
            lambda: os.rename(m.path / "text/hello.txt", m.path / "text/x"),
            lambda: os.symlink("x", m.path / "link"),
            lambda: os.link(m.path / "text/hello.txt", m.path / "hard"),
            lambda: os.chmod(m.path / "text/hello.txt", 0o777),
            lambda: os.truncate(m.path / "text/hello.txt", 0),
            lambda: os.utime(m.path / "text/hello.txt"),
            lambda: os.setxattr(m.path / "text/hello.txt", "user.x", b"1"),
        ]
        for attempt in attempts:
            assert _errno_of(attempt) == errno.EROFS
        assert (m.path / "text/hello.txt").read_bytes() == b"hello, world\n"
        mounts = Path("/proc/self/mountinfo").read_text()
        line = next(x for x in mounts.splitlines() if f" {m.path} " in x)
        assert " ro," in line
        assert "nosuid" in line
        assert "nodev" in line


def test_xattrs_and_status(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, files = sample
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        digest = os.getxattr(m.path / "text/hello.txt", "user.blobfs.digest")
        assert digest == b"sha256:" + hashlib.sha256(b"hello, world\n").hexdigest().encode()
        assert os.getxattr(m.path, "user.blobfs.source") == os.fsencode(archive)
        assert set(os.listxattr(m.path)) == {"user.blobfs.source", "user.blobfs.stats"}
        assert "user.blobfs.digest" in os.listxattr(m.path / "big/v1.bin")
        assert _errno_of(lambda: os.getxattr(m.path / "text", "user.blobfs.digest")) == (
            errno.ENODATA
        )
        (m.path / "big/v1.bin").read_bytes()
        out = subprocess.run(
            [*BLOBFS, "status", os.fspath(m.path)], check=True, capture_output=True, text=True
        ).stdout
        assert f"reference:      {archive}" in out
        assert f"files:          {len(files)}" in out
        assert "not cached:" in out
        doc = json.loads(
            subprocess.run(
                [*BLOBFS, "status", os.fspath(m.path), "--output", "json"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        assert doc["reference"] == os.fspath(archive)
        assert doc["bytes_read"] >= 300_000
        assert doc["pid"] == m.proc.pid
        bad = subprocess.run(
            [*BLOBFS, "status", os.fspath(m.path / "text")], capture_output=True, text=True
        )
        assert bad.returncode == 1
        assert "not the root of a blobfs mount" in bad.stderr


def test_owner_and_umask_options(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, _ = sample
    with mounted(
        [os.fspath(archive)], tmp_path / "mnt", options=["uid=4321,gid=8765", "umask=027"]
    ) as m:
        for p in (m.path, m.path / "text", m.path / "text/hello.txt"):
            st = os.stat(p)
            assert (st.st_uid, st.st_gid) == (4321, 8765)
            assert stat.S_IMODE(st.st_mode) & 0o027 == 0


# ------------------------------------------------------------------------------ failures


def test_tampered_data_blob_gives_eio_on_that_file_only(
    tmp_path: Path, sample: tuple[Path, dict[str, bytes]]
) -> None:
    archive, files = sample
    bad = tmp_path / "bad"
    shutil.copytree(archive, bad)
    index = Index((bad / "index.blob").read_bytes())
    with open(bad / "data.blob", "r+b") as f:
        for name in ("text/hello.txt", "big/chunked.bin"):
            e = index.entry(name)
            off = e.data_offset + (e.chunk_payload(3)[0] - e.data_offset if e.chunked else 0)
            f.seek(off)
            byte = f.read(1)
            f.seek(off)
            f.write(bytes([byte[0] ^ 0xFF]))
    with mounted([os.fspath(bad)], tmp_path / "mnt") as m:
        assert _errno_of((m.path / "text/hello.txt").read_bytes) == errno.EIO
        big = files["big/chunked.bin"]
        with open(m.path / "big/chunked.bin", "rb") as f:
            assert f.read(MiB) == big[:MiB]  # chunk 0 is fine
            f.seek(3 * MiB + 5)
            assert _errno_of(lambda: f.read(10)) == errno.EIO
            f.seek(4 * MiB)
            assert f.read(MiB) == big[4 * MiB : 5 * MiB]  # and so is chunk 4
        for name in ("big/v1.bin", "many/file0005.txt", "deep/a/b/c/d.txt"):
            assert (m.path / name).read_bytes() == files[name]
        assert m.stats()["errors"] >= 2
        log = m.log()
        assert "/text/hello.txt: read failed" in log
        assert "hash mismatch" in log
        assert m.proc.poll() is None


def test_sigterm_leaves_no_mount_behind(
    tmp_path: Path, sample: tuple[Path, dict[str, bytes]]
) -> None:
    archive, _ = sample
    for sig in (signal.SIGTERM, signal.SIGINT):
        with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
            # Busy: an open file and a process whose working directory is in the mount.
            f = open(m.path / "big/v1.bin", "rb")  # noqa: SIM115 - closed below
            shell = subprocess.Popen(["sleep", "30"], cwd=m.path / "text")
            try:
                assert m.stop(sig) == 0
                assert not is_mounted(m.path)
            finally:
                shell.kill()
                shell.wait()
                f.close()
            assert "unmounting" in m.log()


def test_sighup_keeps_serving(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, files = sample
    with mounted([os.fspath(archive)], tmp_path / "mnt") as m:
        m.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP" in m.log(), 10, "the SIGHUP log line")
        assert (m.path / "text/hello.txt").read_bytes() == files["text/hello.txt"]


def test_start_errors_are_one_line(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, _ = sample
    (tmp_path / "mnt").mkdir()
    cases = [
        ([os.fspath(archive), os.fspath(tmp_path / "missing")], "does not exist"),
        ([os.fspath(tmp_path / "nope"), os.fspath(tmp_path / "mnt")], "no such archive"),
        ([os.fspath(archive), os.fspath(tmp_path / "mnt"), "-o", "rw"], "read-only"),
        ([os.fspath(archive), os.fspath(tmp_path / "mnt"), "-o", "bogus"], "unknown mount option"),
    ]
    for args, words in cases:
        r = subprocess.run([*BLOBFS, "mount", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1, r
        assert words in r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
        assert "Traceback" not in r.stderr
    assert not is_mounted(tmp_path / "mnt")


def test_stale_mount_is_cleaned_at_start(
    tmp_path: Path, sample: tuple[Path, dict[str, bytes]]
) -> None:
    archive, files = sample
    mnt = tmp_path / "mnt"
    with mounted([os.fspath(archive)], mnt) as m:
        m.stop(signal.SIGKILL)  # a crash: the mount stays, dead
        assert _errno_of(lambda: os.stat(mnt / "text")) == errno.ENOTCONN
        with mounted([os.fspath(archive)], mnt) as again:
            assert (again.path / "text/hello.txt").read_bytes() == files["text/hello.txt"]
            assert "stale FUSE mount" in again.log()


# ------------------------------------------------------------------------------ detached, mount(8)


def _daemon_pid(mnt: Path) -> int:
    pid = json.loads(os.getxattr(mnt, "user.blobfs.stats"))["pid"]
    assert isinstance(pid, int)
    return pid


def test_detached_mount_and_umount(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    archive, files = sample
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(
            [*BLOBFS, "mount", os.fspath(archive), os.fspath(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"mounted {archive} at {mnt}\n"
        assert r.stderr == ""
        # Ready means answering: no wait needed.
        assert (mnt / "text/hello.txt").read_bytes() == files["text/hello.txt"]
        pid = _daemon_pid(mnt)
        r = subprocess.run([*BLOBFS, "umount", os.fspath(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        wait_until(lambda: daemon_exited(pid), 30, "the daemon to exit")
        r = subprocess.run([*BLOBFS, "umount", os.fspath(mnt)], capture_output=True, text=True)
        assert r.returncode == 1
        assert "not mounted" in r.stderr
    finally:
        lazy_unmount(mnt)


def test_mount_8_end_to_end(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    if shutil.which("blobfs", path="/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin") is None:
        pytest.fail("mount(8) needs a blobfs executable on root's PATH: run make setup")
    archive, files = sample
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        r = subprocess.run(
            [
                "mount",
                "-t",
                "fuse.blobfs",
                os.fspath(archive),
                os.fspath(mnt),
                "-o",
                "uid=77,_netdev,nofail",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert os.stat(mnt / "text/hello.txt").st_uid == 77
        assert (mnt / "big/chunked.bin").read_bytes() == files["big/chunked.bin"]
        line = next(
            x for x in Path("/proc/self/mountinfo").read_text().splitlines() if f" {mnt} " in x
        )
        assert "fuse.blobfs" in line
        assert " ro," in line
        assert "nosuid" in line
        assert "nodev" in line
        pid = _daemon_pid(mnt)
        r = subprocess.run(["umount", os.fspath(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: daemon_exited(pid), 30, "the daemon to exit")
        # A failure is the helper's exit status, with the reason.
        r = subprocess.run(
            ["mount", "-t", "fuse.blobfs", os.fspath(tmp_path / "nope"), os.fspath(mnt)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
        assert "no such archive directory" in r.stderr
        assert not is_mounted(mnt)
    finally:
        lazy_unmount(mnt)


# ------------------------------------------------------------------------------ registry


def _restart(reg: LocalRegistry, workdir: Path) -> subprocess.Popen[bytes]:
    """Start the registry again on its port, over its storage (its config file is kept)."""
    exe = shutil.which("docker-registry")
    assert exe is not None
    proc = subprocess.Popen(
        [exe, "serve", os.fspath(workdir / "registry.yml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import httpx

    def up() -> bool:
        try:
            return httpx.get(f"{reg.base_url}/v2/", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, 20, "the registry to come back")
    return proc


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[LocalRegistry, Path]]:
    workdir = tmp_path / "reg"
    workdir.mkdir()
    with local_registry(workdir) as reg:
        yield reg, workdir


def test_registry_archives_read_back_identical(
    tmp_path: Path, registry: tuple[LocalRegistry, Path]
) -> None:
    reg, _ = registry
    with Registry() as client:
        for name in ("mixed-zstd", "wide-zstd"):
            manifest = client.push(f"{reg.host}/fixtures/{name}:v1", FIXTURES / name)
            ref = f"{reg.host}/fixtures/{name}:v1"
            with mounted([ref], tmp_path / f"mnt-{name}") as m:
                assert m.ready_line == f"mounted {ref}@{manifest.digest} at {m.path}"
                _check_tree(m.path, _expected(name.split("-")[0]))
                stats = m.stats()
                assert stats["digest"] == manifest.digest
                assert stats["bytes_fetched"] > 0
                assert os.getxattr(m.path, "user.blobfs.source") == (
                    f"{ref}@{manifest.digest}".encode()
                )
                # The tag moves on; the mount keeps serving what it pinned.
                client.push(ref, FIXTURES / "mixed-none")
                _check_tree(m.path, _expected(name.split("-")[0]))


def test_registry_outage_gives_eio_then_reads_resume(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    reg, workdir = registry
    archive, files = sample
    big = files["big/chunked.bin"]
    ref = f"{reg.host}/sample/data:v1"
    with Registry() as client:
        client.push(ref, archive)
    again: subprocess.Popen[bytes] | None = None
    try:
        with mounted([ref], tmp_path / "mnt") as m:
            fd = os.open(m.path / "big/chunked.bin", os.O_RDONLY)
            try:
                assert os.pread(fd, 4096, 0) == big[:4096]
                reg.stop()
                t0 = time.monotonic()
                assert _errno_of(lambda: os.pread(fd, 4096, 5 * MiB + 7)) == errno.EIO
                assert time.monotonic() - t0 < 60  # a deadline, not a hang
                assert m.proc.poll() is None
                assert (m.path / "text").is_dir()  # metadata never needs the registry
                again = _restart(reg, workdir)
                assert os.pread(fd, 4096, 5 * MiB + 7) == big[5 * MiB + 7 : 5 * MiB + 7 + 4096]
            finally:
                os.close(fd)
            assert "read failed" in m.log()
    finally:
        if again is not None:
            again.terminate()
            again.wait()


def _pushed_sample(
    registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> tuple[str, dict[str, bytes], list[str]]:
    """The sample pushed to the registry: its reference, its files, the names under many/."""
    reg, _ = registry
    archive, files = sample
    ref = f"{reg.host}/sample/data:v1"
    with Registry() as client:
        client.push(ref, archive)
    return ref, files, sorted(n for n in files if n.startswith("many/"))


def test_files_held_by_the_page_cache_load_nothing_ahead(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    """Reading ``many/`` in order loads its files ahead in batches (``_scan.py``). Reading it
    again through the same mount, the kernel's page cache answers (``keep_cache``): the files
    are opened but never read, so nothing may be loaded ahead either (the daemon used to load
    and verify batches of cached content on every open, a quarter of its time in a hot
    ``find | xargs cat``)."""
    ref, files, names = _pushed_sample(registry, sample)
    with mounted([ref], tmp_path / "mnt") as m:
        for name in names:
            assert (m.path / name).read_bytes() == files[name]
        first = m.stats()
        assert first["fetch_requests"] < len(names) // 4  # batches, not a request per file
        # Files loaded ahead before their open went to the page cache at the open: the kernel
        # answered their reads (and the content above is right).
        assert first["pushes"] > 0
        assert first["reads"] < len(names)
        for name in names:
            assert (m.path / name).read_bytes() == files[name]
        again = m.stats()
        assert again["opens"] == first["opens"] + len(names)
        assert again["reads"] == first["reads"]  # the page cache answered (keep_cache)
        for key in ("cache_hits", "cache_misses", "fetch_requests", "bytes_fetched", "pushes"):
            assert again[key] == first[key], key


def test_concurrent_readers_while_files_are_stored_ahead(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    """Programs reading ``many/`` in order (so files loaded ahead are stored in the page cache
    at their opens) while threads open and read the same files at random: no wrong byte, no
    error, no hang."""
    ref, files, names = _pushed_sample(registry, sample)
    with mounted([ref], tmp_path / "mnt") as m:
        stop = threading.Event()

        def reader(seed: int) -> int:
            r = random.Random(seed)
            bad = 0
            while not stop.is_set():
                name = r.choice(names)
                with open(m.path / name, "rb") as f:
                    if f.read() != files[name]:
                        bad += 1
            return bad

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(reader, seed) for seed in range(4)]
            try:
                out = subprocess.run(
                    ["xargs", "-0", "-P", "4", "-n", "75", "sha256sum"],
                    input="\0".join(os.fspath(m.path / n) for n in names),
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=120,
                ).stdout
            finally:
                stop.set()
            assert sum(f.result() for f in futures) == 0
        got = {path: digest for digest, path in (line.split(None, 1) for line in out.splitlines())}
        assert got == {os.fspath(m.path / n): hashlib.sha256(files[n]).hexdigest() for n in names}
        doc = m.stats()
        assert doc["pushes"] > 0
        assert doc["errors"] == 0


def test_registry_with_credentials(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    """A registry that wants a password: the mount reads the docker config, for the manifest,
    the index and every range request of the data blob (chunked and v1 files)."""
    import base64

    from blobfs.registry import Credentials, CredentialStore, RegistryAuth

    archive, files = sample
    workdir = tmp_path / "reg"
    workdir.mkdir()
    with local_registry(workdir, htpasswd={"alice": "s3cret"}) as reg:
        store = CredentialStore({reg.host: Credentials("alice", "s3cret")}, docker_config=False)
        ref = f"{reg.host}/private/data:v1"
        with Registry(auth=RegistryAuth(store)) as client:
            client.push(ref, archive)
        config = tmp_path / "docker"
        config.mkdir()
        token = base64.b64encode(b"alice:s3cret").decode()
        (config / "config.json").write_text(json.dumps({"auths": {reg.host: {"auth": token}}}))
        with mounted([ref], tmp_path / "mnt", env={"DOCKER_CONFIG": os.fspath(config)}) as m:
            for name in ("big/chunked.bin", "big/v1.bin", "text/hello.txt"):
                assert (m.path / name).read_bytes() == files[name]
            m.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "credentials for" in m.log(), 10, "the SIGHUP reload")
            assert "re-read (found)" in m.log()
        bad = subprocess.run(
            [*BLOBFS, "mount", ref, os.fspath(tmp_path / "mnt")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DOCKER_CONFIG": os.fspath(tmp_path / "nothing")},
        )
        assert bad.returncode == 1
        assert bad.stderr.startswith("blobfs: error: ")
        assert bad.stderr.count("\n") == 1


def test_cold_reads_fetch_only_what_they_need(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    """A cold small file costs its payload and nothing more; a second mount over the same
    cache directory fetches nothing for it (the verified content is cached)."""
    ref, files, _ = _pushed_sample(registry, sample)
    payload = Index((sample[0] / "index.blob").read_bytes()).entry("text/hello.txt").data_size
    cache = ["cache_dir=" + os.fspath(tmp_path / "shared-cache")]
    with mounted([ref], tmp_path / "mnt1", options=cache) as m:
        assert m.stats()["bytes_fetched"] == 0
        assert (m.path / "text/hello.txt").read_bytes() == files["text/hello.txt"]
        stats = m.stats()
        assert (stats["bytes_fetched"], stats["fetch_requests"]) == (payload, 1)
        assert stats["cache_hits"] == 0
        assert stats["cache_dropped"] == 0
    with mounted([ref], tmp_path / "mnt2", options=cache) as m:
        assert (m.path / "text/hello.txt").read_bytes() == files["text/hello.txt"]
        stats = m.stats()
        assert stats["bytes_fetched"] == 0
        assert stats["cache_hits"] >= 1
        assert stats["cache_hit_rate"] > 0


def test_a_file_read_through_is_cached_as_one_entry(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    """``cat`` of a chunked file leaves one content-cache entry, the whole file under its
    SHA-256 (not one per chunk); a later mount reads the file from it, fetching nothing."""
    ref, files, _ = _pushed_sample(registry, sample)
    entry = Index((sample[0] / "index.blob").read_bytes()).entry("big/chunked.bin")
    assert entry.chunked
    cache_dir = tmp_path / "shared-cache"
    cache = ["cache_dir=" + os.fspath(cache_dir)]
    with mounted([ref], tmp_path / "mnt1", options=cache) as m:
        subprocess.run(
            ["cat", os.fspath(m.path / "big/chunked.bin")], check=True, stdout=subprocess.DEVNULL
        )
    stored = {p.name: p for p in cache_dir.rglob("*") if p.is_file() and len(p.name) == 64}
    assert entry.hash.hex() in stored
    assert hashlib.sha256(stored[entry.hash.hex()].read_bytes()).digest() == entry.hash
    assert not {entry.chunk_hash(k).hex() for k in range(entry.num_chunks)} & set(stored)
    with mounted([ref], tmp_path / "mnt2", options=cache) as m:
        assert (m.path / "big/chunked.bin").read_bytes() == files["big/chunked.bin"]
        assert m.stats()["bytes_fetched"] == 0


def test_stops_after_the_unmount_let_the_cache_writer_finish(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    """A program reads the start of a chunked file and stops; the mount is removed from
    outside and SIGTERM follows at once, again and again (a second ``systemctl stop``,
    ``umount`` then ``kill``). Closing the file hands the chunks it read to the cache's writer
    (the whole-file entry it began is given up), and the daemon stores them before it exits:
    the signals used to kill it while its writer was at it, so the next mount fetched them
    again."""
    ref, files, _ = _pushed_sample(registry, sample)
    entry = Index((sample[0] / "index.blob").read_bytes()).entry("big/chunked.bin")
    assert entry.num_chunks > 3
    taken = entry.chunk_bounds(2)[1]
    cache_dir = tmp_path / "shared-cache"
    with mounted([ref], tmp_path / "mnt", options=["cache_dir=" + os.fspath(cache_dir)]) as m:
        with open(m.path / "big/chunked.bin", "rb") as f:
            assert f.read(taken) == files["big/chunked.bin"][:taken]
        lazy_unmount(m.path)
        for _ in range(40):
            if m.proc.poll() is not None:
                break
            m.proc.send_signal(signal.SIGTERM)
            time.sleep(0.005)
        # 0, or killed by a signal that came once everything was closed and stored.
        assert m.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    stored = {p.name for p in cache_dir.rglob("*") if p.is_file()}
    assert {entry.chunk_hash(k).hex() for k in range(3)} <= stored


def test_kernel_tuning_is_applied(tmp_path: Path, sample: tuple[Path, dict[str, bytes]]) -> None:
    from blobfs.fuse._sysfs import mount_tuning

    archive, _ = sample
    with mounted([os.fspath(archive)], tmp_path / "mnt", options=["read_ahead_kb=2048"]) as m:
        tuning = mount_tuning(os.fspath(m.path))
        assert tuning is not None
        assert tuning.read_ahead_kb == 2048
        assert tuning.max_background == 64


def test_blobs_by_url(tmp_path: Path) -> None:
    """``--index URL --data URL``: range requests to a plain HTTP server, through the content
    cache only, as a registry mount: no block cache writing every byte a second time (it also
    doubled the daemon's memory on a large read), and a second mount over the same cache reads
    the whole tree without a range request."""
    from tests._servers import serve_blobs

    fixture = FIXTURES / "mixed-zstd"
    blobs = {n: (fixture / n).read_bytes() for n in ("index.blob", "data.blob")}
    cache = tmp_path / "cache"  # mounted()'s BLOBFS_CACHE_DIR for a mount at tmp_path / "mnt"
    with serve_blobs(blobs) as server:
        source = ["--index", server.url("index.blob"), "--data", server.url("data.blob")]
        with mounted(source, tmp_path / "mnt") as m:
            _check_tree(m.path, _expected("mixed"))
            stats = m.stats()
            assert stats["reference"] == f"{server.url('index.blob')} + {server.url('data.blob')}"
            assert stats["bytes_fetched"] > 0
            assert stats["errors"] == 0
        entries = [p for p in (cache / "content").rglob("*") if p.is_file() and len(p.name) == 64]
        assert entries
        assert not [p for p in cache.rglob("*") if p.is_file() and "blocks" in p.parts]
        data_requests = server.stats.requests_for("data.blob")
        with mounted(source, tmp_path / "mnt") as m:
            _check_tree(m.path, _expected("mixed"))
            assert m.stats()["bytes_fetched"] == 0
        assert server.stats.requests_for("data.blob") == data_requests


def test_trust_policy_is_checked_before_anything_is_served(
    tmp_path: Path, registry: tuple[LocalRegistry, Path], sample: tuple[Path, dict[str, bytes]]
) -> None:
    reg, _ = registry
    archive, files = sample
    ref = f"{reg.host}/sample/data:v1"
    with Registry() as client:
        client.push(ref, archive)
    subprocess.run(
        [*BLOBFS, "keygen", os.fspath(tmp_path / "release")],
        check=True,
        capture_output=True,
        env={**os.environ, "BLOBFS_KEY_PASSWORD": ""},
    )
    rule = f'[[rules]]\nmatch = ["{reg.host}/sample/*"]\n'
    rule += f'[rules.signature]\nkeys = ["{tmp_path / "release.pub"}"]\n'
    deny = tmp_path / "deny.toml"
    deny.write_text("version = 1\n" + rule)  # wants a signature the archive does not have
    allow = tmp_path / "allow.toml"
    allow.write_text('version = 1\nunmatched = "allow"\n' + rule.replace("sample/*", "other/*"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(
        [*BLOBFS, "mount", ref, os.fspath(mnt), "-o", f"policy={deny}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "refused" in r.stderr
    assert r.stderr.count("\n") == 1
    assert not is_mounted(mnt)
    with mounted([ref], mnt, options=[f"policy={allow}"]) as m:
        assert (m.path / "text/hello.txt").read_bytes() == files["text/hello.txt"]


def test_log_file_keeps_a_detached_daemons_log(
    tmp_path: Path, sample: tuple[Path, dict[str, bytes]]
) -> None:
    """``-o log_file=`` gets the detached daemon's log (a host without syslog would lose it);
    a log file that cannot be written is a one-line error before anything is mounted."""
    archive, _ = sample
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "blobfs.log"
    try:
        r = subprocess.run(
            [*BLOBFS, "mount", os.fspath(archive), os.fspath(mnt), "-o", f"log_file={log}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        pid = _daemon_pid(mnt)
        r = subprocess.run([*BLOBFS, "umount", os.fspath(mnt)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: daemon_exited(pid), 30, "the daemon to exit")
        text = log.read_text()
        assert f"blobfs[{pid}] INFO blobfs.fuse: serving {archive} at {mnt}" in text
        assert f"{mnt}: unmounted" in text
        bad = tmp_path / "no-such-dir" / "blobfs.log"
        r = subprocess.run(
            [*BLOBFS, "mount", os.fspath(archive), os.fspath(mnt), "-o", f"log_file={bad}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1
        assert f"log_file={bad}: cannot write it" in r.stderr
        assert not is_mounted(mnt)
    finally:
        lazy_unmount(mnt)
